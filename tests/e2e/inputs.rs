//! Inputs read once (issue 25, items 9 and 10), with real helm on the real API server:
//! the kubeconfig, `--kube-ca-file` and values given as inherited pipes (what `<(…)`
//! process substitution gives: `/dev/fd/N`) are captured once and reach helm with the same
//! bytes, so helm talks to the server the guard read; a named pipe the guard would drain is
//! refused (exit 2) naming the flag; a standard input whose writer never closes ends the
//! run at `--input-timeout` with exit 3, and the process exits.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{bed, chart, guard_bin, Bed, Run};

const NS: &str = "shared";

/// Descriptor numbers the child inherits the pipes on (bash's `<(…)` uses 63 and down).
const KUBECONFIG_FD: RawFd = 63;
const VALUES_FD: RawFd = 62;
const CA_FD: RawFd = 61;
const CHART_FD: RawFd = 60;

/// A pipe: the read end for the child, the write end for the test.
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2(2) fills two descriptors we then own.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // Move both above the numbers the child gets, so dup2 never meets its own target.
    let high = |fd: RawFd| {
        // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor we own; the original is closed.
        let moved = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100) };
        assert!(moved >= 100);
        // SAFETY: closing the original we own; `moved` is owned below.
        unsafe {
            libc::close(fd);
            OwnedFd::from_raw_fd(moved)
        }
    };
    (high(fds[0]), high(fds[1]))
}

/// Spawns `cmd` with each `(fd, bytes)` on a pipe the child inherits as descriptor `fd`;
/// the bytes are written and the pipe closed by a thread of the test (the way a shell's
/// process substitution feeds it).
fn spawn_with_pipes(cmd: &mut Command, pipes: &[(RawFd, Vec<u8>)]) -> Child {
    let mut pairs = Vec::new();
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for (fd, bytes) in pipes {
        let (read, write) = pipe();
        pairs.push((read.as_raw_fd(), *fd));
        readers.push(read);
        writers.push((write, bytes.clone()));
    }
    // SAFETY: only dup2(2), async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for &(from, to) in &pairs {
                if libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(readers);
    for (write, bytes) in writers {
        std::thread::spawn(move || {
            let mut file = std::fs::File::from(write);
            let _ = file.write_all(&bytes);
        });
    }
    child
}

/// Waits for `child`, at most `limit` (a liveness bound, not a timing assertion: the run
/// must end on its own; the test fails instead of hanging when it does not).
fn wait_bounded(mut child: Child, limit: Duration, what: &str) -> Run {
    let started = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return Run::from(child.wait_with_output().expect("output"));
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{what}: still running after {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn setup(label: &str) -> Bed {
    let b = bed(label);
    b.api.create_namespace(NS);
    b
}

/// Item 9: `--kubeconfig`, `--kube-ca-file` and `-f` given as inherited pipes (no
/// `KUBECONFIG`), through `upgrade` and through the shim (a `KUBECONFIG` list entry): the
/// guard reads each once, helm gets the same bytes on the same numbers, installs against
/// the server the guard read, with the piped values; the same pipes again under
/// `newer-or-changed` (a dry run reads them too) skip as unchanged, writing nothing.
fn pipes_reach_helm_with_the_bytes_the_guard_read(label: &str) {
    let b = setup(label);
    let real = b.api.real();
    let kubeconfig = std::fs::read(real.kubeconfig()).expect("kubeconfig");
    let ca = std::fs::read(real.ca_file()).expect("ca file");
    let values = b"marker: from-a-pipe\n".to_vec();
    let demo = chart("demo-1.0.0");
    let dev = |fd: RawFd| format!("/dev/fd/{fd}");
    let (kc, vf, cf) = (dev(KUBECONFIG_FD), dev(VALUES_FD), dev(CA_FD));
    let pipes = [
        (KUBECONFIG_FD, kubeconfig.clone()),
        (VALUES_FD, values.clone()),
        (CA_FD, ca.clone()),
    ];
    let guarded = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = b.command(guard_bin());
        cmd.env_remove("KUBECONFIG")
            .args(args)
            .envs(env.iter().copied());
        wait_bounded(
            spawn_with_pipes(&mut cmd, &pipes),
            Duration::from_secs(300),
            &format!("{args:?}"),
        )
    };
    let argv = [
        "upgrade",
        "--install",
        "db",
        demo.as_str(),
        "-n",
        NS,
        "--kubeconfig",
        kc.as_str(),
        "--kube-ca-file",
        cf.as_str(),
        "-f",
        vf.as_str(),
    ];
    let run = guarded(&argv, &[]);
    run.expect_code(0, "install with piped kubeconfig, CA and values");
    run.assert_stderr_line(r#"install: "db" in "shared" 1.0.0 (not installed yet)"#);
    assert_eq!(b.deployed("db", NS), ("1.0.0".into(), 1));
    let got = b.helm(&["get", "values", "db", "-n", NS, "-o", "json"]);
    got.expect_code(0, "helm get values");
    assert_eq!(got.stdout.trim(), r#"{"marker":"from-a-pipe"}"#);

    // A decision that needs helm's dry run reads the same pipes once more (from the capture).
    let mut again = argv.to_vec();
    again.extend(["--min-version-policy", "newer-or-changed"]);
    b.api.clear_requests();
    let run = guarded(&again, &[]);
    run.expect_code(0, "the same piped inputs again");
    assert!(
        run.stderr.contains("unchanged"),
        "a re-run with the same piped values is a skip: {}",
        run.stderr
    );
    assert_eq!(b.writes(), Vec::<String>::new(), "a skip writes nothing");

    // The shim, with the kubeconfig as a KUBECONFIG entry and helm's global flags first.
    let list = format!("/nonexistent/config:{kc}");
    let helm = b.helm_bin.to_str().unwrap();
    let shim = [
        "helm",
        "--",
        "--namespace",
        NS,
        "upgrade",
        "--install",
        "db2",
        demo.as_str(),
        "-f",
        vf.as_str(),
    ];
    let run = guarded(
        &shim,
        &[
            ("KUBECONFIG", list.as_str()),
            ("GUARDED_UPGRADE_HELM", helm),
        ],
    );
    run.expect_code(0, "shim install with KUBECONFIG and values on pipes");
    assert_eq!(b.deployed("db2", NS), ("1.0.0".into(), 1));
    let got = b.helm(&["get", "values", "db2", "-n", NS, "-o", "json"]);
    assert_eq!(got.stdout.trim(), r#"{"marker":"from-a-pipe"}"#);

    // A packaged chart on a pipe (`helm upgrade db <(curl …/db-1.1.0.tgz)`): `helm show
    // chart` (the guard resolving the version) and helm each read it, from the capture.
    let out = b.home().join("packaged");
    b.helm(&["package", &chart("demo-1.1.0"), "-d", out.to_str().unwrap()])
        .expect_code(0, "helm package");
    let tgz = std::fs::read(out.join("demo-1.1.0.tgz")).expect("packaged chart");
    let chart_fd = dev(CHART_FD);
    for (round, (decision, revision)) in [
        (r#"upgrade: "db" in "shared" 1.0.0 -> 1.1.0"#, 2),
        (
            r#"skip: release "db" in "shared" is at 1.1.0 (revision 2); target 1.1.0"#,
            2,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let mut cmd = b.command(guard_bin());
        cmd.args(["upgrade", "--install", "db", chart_fd.as_str(), "-n", NS]);
        let run = wait_bounded(
            spawn_with_pipes(&mut cmd, &[(CHART_FD, tgz.clone())]),
            Duration::from_secs(300),
            "upgrade with the chart on a pipe",
        );
        run.expect_code(0, &format!("chart on a pipe, run {}", round + 1));
        assert!(
            run.stderr.lines().any(|l| l.starts_with(decision)),
            "run {}: expected a line starting {decision:?}: {}",
            round + 1,
            run.stderr
        );
        assert_eq!(b.deployed("db", NS), ("1.1.0".into(), revision));
    }
}

/// Item 9: a repository's `--ca-file` given as an inherited pipe is read by `helm show
/// chart` (the guard resolving `--version >=1.0.0`) and again by the real upgrade: both get
/// the captured bytes, so the upgrade installs what the guard resolved.
fn repository_files_on_pipes_reach_both_helm_runs(label: &str) {
    let b = setup(label);
    let url = crate::shim::chart_repo(&b);
    let ca = std::fs::read(b.api.real().ca_file()).expect("ca file");
    let cf = format!("/dev/fd/{CA_FD}");
    let argv = [
        "upgrade",
        "--install",
        "app",
        "demo",
        "--repo",
        url.as_str(),
        "--version",
        ">=1.0.0",
        "-n",
        NS,
        "--ca-file",
        cf.as_str(),
    ];
    let mut cmd = b.command(guard_bin());
    cmd.args(argv);
    let run = wait_bounded(
        spawn_with_pipes(&mut cmd, &[(CA_FD, ca)]),
        Duration::from_secs(300),
        "upgrade from a repository with --ca-file on a pipe",
    );
    run.expect_code(0, "install from the repository");
    run.assert_stderr_line(r#"install: "app" in "shared" 1.1.0 (not installed yet)"#);
    assert_eq!(b.deployed("app", NS), ("1.1.0".into(), 1));
}

/// Item 9: what cannot be offered again under its name — a named pipe the guard would
/// drain before helm — is refused before any request, naming the flag or variable.
fn named_pipes_the_guard_would_drain_are_refused(label: &str) {
    let b = setup(label);
    let fifo = b.home().join("kubeconfig.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let fifo = fifo.to_str().unwrap();
    let demo = chart("demo-1.0.0");
    let why = "is a named pipe: the guard and helm would each read it, and the second reader \
               would get nothing. Pass a regular file, or an inherited descriptor (/dev/fd/N, \
               process substitution), which is captured once and handed to helm on the same \
               number";
    for (args, env, named) in [
        (
            vec![
                "upgrade",
                "db",
                demo.as_str(),
                "-n",
                NS,
                "--kubeconfig",
                fifo,
            ],
            vec![],
            "--kubeconfig",
        ),
        (
            vec!["check", "db", demo.as_str(), "-n", NS],
            vec![("KUBECONFIG", fifo)],
            "KUBECONFIG",
        ),
        (
            vec![
                "helm",
                "--",
                "upgrade",
                "db",
                demo.as_str(),
                "--kube-ca-file",
                fifo,
            ],
            vec![],
            "--kube-ca-file",
        ),
        (
            vec!["upgrade", "--install", "db", fifo, "-n", NS],
            vec![],
            "CHART",
        ),
    ] {
        b.api.clear_requests();
        let run = b.guard_env(&args, &env);
        run.expect_code(2, &format!("{args:?}"));
        run.assert_error(&format!("{named} {fifo} {why}"));
        assert!(b.api.requests().is_empty(), "{args:?}: nothing was asked");
    }
}

/// Item 10: standard input whose writer never closes (`-f -` from a pipe held open) ends
/// the run at `--input-timeout` (here 2s; `GUARDED_UPGRADE_INPUT_TIMEOUT` in the shim) with
/// exit 3 and the documented line, before any request; and the process exits, its runtime
/// not waiting on the blocked read.
fn stdin_that_never_closes_ends_at_the_bound(label: &str) {
    let b = setup(label);
    let demo = chart("demo-1.0.0");
    let helm = b.helm_bin.to_str().unwrap();
    for (args, env) in [
        (
            vec![
                "upgrade",
                "--install",
                "db",
                demo.as_str(),
                "-n",
                NS,
                "-f",
                "-",
                "--input-timeout",
                "2s",
            ],
            vec![],
        ),
        (
            vec![
                "helm",
                "--",
                "upgrade",
                "-i",
                "db",
                demo.as_str(),
                "-n",
                NS,
                "--values=-",
            ],
            vec![
                ("GUARDED_UPGRADE_INPUT_TIMEOUT", "2s"),
                ("GUARDED_UPGRADE_HELM", helm),
            ],
        ),
    ] {
        b.api.clear_requests();
        let mut cmd = b.command(guard_bin());
        cmd.args(&args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn");
        // The writer: held open until the run has ended.
        let writer = child.stdin.take();
        let run = wait_bounded(child, Duration::from_secs(120), &format!("{args:?}"));
        drop(writer);
        run.expect_code(3, &format!("{args:?}"));
        run.assert_error(
            "release \"db\": the inputs read once (standard input, /dev/fd pipes) were not \
             closed by their writer within 2s (--input-timeout); helm was not run",
        );
        assert!(b.api.requests().is_empty(), "{args:?}: nothing was asked");
    }
    assert_ne!(
        b.helm(&["status", "db", "-n", NS]).code,
        0,
        "nothing was installed"
    );
}

crate::common::per_helm!(
    pipes_reach_helm_with_the_bytes_the_guard_read,
    repository_files_on_pipes_reach_both_helm_runs,
    named_pipes_the_guard_would_drain_are_refused,
    stdin_that_never_closes_ends_at_the_bound,
);
