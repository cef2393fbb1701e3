//! Issue 17: fail-open paths closed. The binary never runs itself as helm (symlinks, hard
//! links, copies, another build), and a namespace from the configuration is validated as
//! `-n` is.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::{bed, chart, guard_bin, run, Run};

/// Runs `cmd`, killing it after `limit` (a loop of shims would never end).
fn bounded(cmd: &mut Command, limit: Duration) -> Run {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    // Output is read while waiting, so a chatty child never blocks on a full pipe.
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => {
            let out = out.expect("output");
            Run {
                code: out.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        }
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("still running after {limit:?} (a loop?)");
        }
    }
}

fn path_of(dirs: &[&Path]) -> String {
    let mut parts: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    parts.push(std::env::var("PATH").unwrap_or_default());
    parts.join(":")
}

/// Two copies of the binary named `helm` ahead of the real helm (an old and a new install
/// of one build): `helm version` through either is real helm's, not an endless loop.
fn shim_copies_are_never_taken_for_helm(label: &str) {
    let b = bed(label);
    let (one, two) = (b.home().join("one"), b.home().join("two"));
    for dir in [&one, &two] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::copy(guard_bin(), dir.join("helm")).unwrap();
    }
    let real_dir = b.helm_bin.parent().unwrap().to_path_buf();
    let path = path_of(&[&one, &two, &real_dir]);
    let shim = bounded(
        b.command(one.join("helm"))
            .arg("version")
            .env("PATH", &path)
            .env_remove("HELM_BIN"),
        Duration::from_secs(20),
    );
    let direct = run(b.command(&b.helm_bin).arg("version"));
    assert_eq!(
        (shim.code, &shim.stdout),
        (0, &direct.stdout),
        "{}",
        shim.stderr
    );
}

/// A different build (here: a stand-in that, like an old shim, hands `helm` back to the
/// first one on PATH) is stopped by the mark on the process, with exit 2 naming it.
fn another_build_as_helm_stops_with_exit_2(label: &str) {
    let b = bed(label);
    let (new, old) = (b.home().join("new"), b.home().join("old"));
    std::fs::create_dir_all(&new).unwrap();
    std::fs::create_dir_all(&old).unwrap();
    std::os::unix::fs::symlink(guard_bin(), new.join("helm")).unwrap();
    let old_helm = old.join("helm");
    std::fs::write(
        &old_helm,
        format!("#!/bin/sh\nexec {} \"$@\"\n", new.join("helm").display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&old_helm, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = path_of(&[&new, &old]);
    let shim = bounded(
        b.command(new.join("helm"))
            .arg("version")
            .env("PATH", &path)
            .env_remove("HELM_BIN"),
        Duration::from_secs(20),
    );
    shim.expect_code(2, "another build taken for helm");
    let me = guard_bin().canonicalize().unwrap();
    shim.assert_error(&format!(
        "refusing to run {me:?} (from the guarded-upgrade that started it) as helm: it is a \
         guarded-upgrade binary, not helm; guarded-upgrade never runs itself as helm. Put the \
         real helm on PATH after the shim, or name it with GUARDED_UPGRADE_HELM (shim) or \
         --helm/HELM_BIN"
    ));
}

/// `guarded-upgrade upgrade` with the shim first on PATH (the README's install) finds the
/// real helm after it; `--helm`, `HELM_BIN` and `GUARDED_UPGRADE_HELM` naming a symlink, a
/// hard link or a copy are refused with exit 2 before any request.
fn guard_never_runs_the_shim_as_helm(label: &str) {
    let b = bed(label);
    b.api.create_namespace("shared");
    let shim_dir = b.home().join("shim");
    std::fs::create_dir_all(&shim_dir).unwrap();
    std::os::unix::fs::symlink(guard_bin(), shim_dir.join("helm")).unwrap();
    let real_dir = b.helm_bin.parent().unwrap().to_path_buf();
    let path = path_of(&[&shim_dir, &real_dir]);
    let c = chart("demo-1.0.0");
    let args = [
        "upgrade",
        "--install",
        "db",
        &c,
        "-n",
        "shared",
        "--lock-timeout",
        "5s",
    ];
    let installed = bounded(
        b.command(guard_bin())
            .args(args)
            .env("PATH", &path)
            .env_remove("HELM_BIN"),
        Duration::from_secs(60),
    );
    installed.expect_code(0, "upgrade with the shim first on PATH");
    assert_eq!(b.deployed("db", "shared"), ("1.0.0".into(), 1));

    let copy = b.home().join("copy-helm");
    std::fs::copy(guard_bin(), &copy).unwrap();
    let hard = b.home().join("hard-helm");
    let hard = std::fs::hard_link(guard_bin(), &hard).map(|_| hard).ok();
    let symlink = shim_dir.join("helm");
    let mut named: Vec<(&Path, &str)> = vec![(&copy, "copy"), (&symlink, "path")];
    if let Some(hard) = &hard {
        named.push((hard, "file"));
    }
    for (path, how) in named {
        let why = match how {
            "copy" => "is a copy of this guarded-upgrade binary (the same content)",
            "path" => "is this guarded-upgrade binary (the same path)",
            _ => "is this guarded-upgrade binary (the same file)",
        };
        let p = path.to_str().unwrap();
        let shown = path.to_path_buf();
        b.api.clear_requests();
        let r = b.guard(&["upgrade", "db", &c, "-n", "shared", "--helm", p]);
        r.expect_code(2, "--helm naming this binary")
            .assert_error(&format!(
                "refusing to run {shown:?} (from --helm/HELM_BIN) as helm: it {why}; \
             guarded-upgrade never runs itself as helm. Put the real helm on PATH after the \
             shim, or name it with GUARDED_UPGRADE_HELM (shim) or --helm/HELM_BIN; helm was not \
             run"
            ));
        let r = bounded(
            b.command(&symlink)
                .args(["upgrade", "db", &c, "-n", "shared"])
                .env("GUARDED_UPGRADE_HELM", p),
            Duration::from_secs(20),
        );
        r.expect_code(2, "GUARDED_UPGRADE_HELM naming this binary")
            .assert_error(&format!(
                "refusing to run {shown:?} (from GUARDED_UPGRADE_HELM) as helm: it {why}; \
                 guarded-upgrade never runs itself as helm. Put the real helm on PATH after \
                 the shim, or name it with GUARDED_UPGRADE_HELM (shim) or --helm/HELM_BIN; helm was not \
             run"
            ));
        assert!(
            b.api.requests().is_empty(),
            "requests before refusing {how}"
        );
    }
}

/// A namespace from the kubeconfig context is validated as `-n` is: exit 2, no request.
fn kubeconfig_namespace_is_validated(label: &str) {
    let b = bed(label);
    let text = std::fs::read_to_string(b.api.kubeconfig()).unwrap();
    let context = format!("    cluster: {}\n", b.api.context());
    let bad = text.replace(&context, &format!("{context}    namespace: ../../apis/x\n"));
    assert_ne!(bad, text, "kubeconfig shape changed");
    let kubeconfig = b.home().join("bad-namespace.yaml");
    std::fs::write(&kubeconfig, bad).unwrap();
    b.api.clear_requests();
    let c = chart("demo-1.0.0");
    let r = b.guard_env(
        &["upgrade", "--install", "db", &c],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    );
    r.expect_code(2, "invalid context namespace")
        .assert_error(&format!(
            "cannot decide for release \"db\": the namespace from kubeconfig context {:?} is \
         unusable: namespace \"../../apis/x\" contains '.' at position 1; a namespace is a \
         DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter \
         or digit, at most 63 characters; fix it there, or pass -n NAMESPACE; helm was not run",
            b.api.context()
        ));
    assert!(b.api.requests().is_empty(), "a request was sent");
}

/// Item 5: SIGTERM while the decision under the mutex waits for helm's dry run ends the
/// run there: the dry run is stopped, helm's upgrade never starts, the Lease is released,
/// exit 143 with a note saying so.
fn signal_during_the_dry_run_under_the_mutex(label: &str) {
    let b = bed(label);
    b.api.create_namespace("shared");
    let c = chart("tagged-0.1.0");
    b.helm(&[
        "upgrade",
        "--install",
        "rel",
        &c,
        "-n",
        "shared",
        "--set",
        "image.tag=1.0.0",
    ])
    .expect_code(0, "install");
    // A helm that is slow in its second dry run (the one under the mutex).
    let home = b.home();
    let started = home.join("dry-run-under-mutex");
    let wrapper = home.join("slow-helm");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \" $* \" in *\" --dry-run=server \"*)\n  n=$(cat {count} 2>/dev/null || echo 0)\n  \
             n=$((n+1)); echo $n > {count}\n  if [ $n -ge 2 ]; then touch {started}; sleep 30; fi;;\nesac\n\
             exec {real} \"$@\"\n",
            count = home.join("dry-runs").display(),
            started = started.display(),
            real = b.helm_bin.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let wrapper = wrapper.to_string_lossy().into_owned();
    let child = b.guard_spawn(&[
        "upgrade",
        "rel",
        &c,
        "-n",
        "shared",
        "--compare",
        "value:image.tag",
        "--set",
        "image.tag=2.0.0",
        "--helm",
        &wrapper,
    ]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !started.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the second dry run never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) of the child we spawned (its own pid, not the group: the signal is
    // the user's Ctrl-C or a CI runner's SIGTERM to guarded-upgrade).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let run = crate::common::finish(child);
    run.expect_code(143, "SIGTERM under the mutex")
        .assert_stderr_line(
            "note: interrupted by SIGTERM before helm started: release \"rel\" in \"shared\" \
             was not upgraded; helm was not run",
        );
    assert_eq!(b.deployed("rel", "shared").1, 1, "helm's upgrade ran");
    let lease = b.api.get("leases", Some("shared"), "helm-lock-rel");
    assert!(
        lease.as_ref().is_none_or(|l| l["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or("")
            .is_empty()),
        "the Lease is still held: {lease:?}"
    );
}

crate::common::per_helm!(
    signal_during_the_dry_run_under_the_mutex,
    shim_copies_are_never_taken_for_helm,
    another_build_as_helm_stops_with_exit_2,
    guard_never_runs_the_shim_as_helm,
    kubeconfig_namespace_is_validated,
);
