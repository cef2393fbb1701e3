//! The helm shim: this binary on PATH under the name `helm`, driven by a helmfile-style
//! sequence, on the real API server with the newest and oldest helm 3 and 4 (the
//! compatibility subset). Pass-through commands must match direct helm byte for byte
//! (stdout, stderr, exit code); `helm upgrade` is guarded without adding `--install`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{bed, chart, guard_bin, helm_major, lines, run, serve_dir, Bed, Run};

const NS: &str = "shared";

struct Shim {
    b: Bed,
    /// The directory holding the `helm` symlink to this binary.
    shim_dir: PathBuf,
    /// shim dir, then real helm's dir, then the system.
    path: String,
}

impl Shim {
    fn new(label: &str) -> Shim {
        let b = bed(label);
        b.api.create_namespace(NS);
        let shim_dir = b.home().join("shim");
        std::fs::create_dir_all(&shim_dir).unwrap();
        std::os::unix::fs::symlink(guard_bin(), shim_dir.join("helm")).unwrap();
        let real_dir = b.helm_bin.parent().unwrap().to_path_buf();
        let path = format!(
            "{}:{}:{}",
            shim_dir.display(),
            real_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Shim { b, shim_dir, path }
    }

    fn with_path(&self, mut cmd: Command) -> Command {
        cmd.env("PATH", &self.path)
            // The shim finds helm on PATH; HELM_BIN is not what it goes by.
            .env_remove("HELM_BIN");
        cmd
    }

    /// `helm ARGS` through the shim, in the bed's helm home.
    fn shim(&self, args: &[&str]) -> Run {
        let mut cmd = self.with_path(self.b.command(self.shim_dir.join("helm")));
        run(cmd.args(args))
    }

    /// Direct helm in a second, private helm home (so stateful commands such as
    /// `repo add` do the same work twice).
    fn direct(&self, args: &[&str]) -> Run {
        let home = self.b.home().join("direct");
        let mut cmd = self.with_path(self.b.command(&self.b.helm_bin));
        run(cmd
            .args(args)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data")))
    }

    /// Runs a pass-through command both ways and demands identical results.
    fn same(&self, shim_args: &[&str], direct_args: &[&str]) -> Run {
        let s = self.shim(shim_args);
        let d = self.direct(direct_args);
        assert_eq!(
            (s.code, &s.stdout, &s.stderr),
            (d.code, &d.stdout, &d.stderr),
            "shim vs direct helm for {shim_args:?}"
        );
        s
    }
}

/// A chart repository with demo 1.0.0 and 1.1.0, served on loopback.
pub(crate) fn chart_repo(b: &Bed) -> String {
    let dir = b.home().join("repo");
    for v in ["1.0.0", "1.1.0"] {
        b.helm(&[
            "package",
            &chart(&format!("demo-{v}")),
            "-d",
            dir.to_str().unwrap(),
        ])
        .expect_code(0, "helm package");
    }
    let url = serve_dir(dir.clone());
    b.helm(&["repo", "index", dir.to_str().unwrap(), "--url", &url])
        .expect_code(0, "helm repo index");
    url
}

/// An umbrella chart depending on demo from the repository `local`, under `parent`.
fn umbrella(parent: &Path) -> String {
    let dir = parent.join("umbrella");
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(
        dir.join("Chart.yaml"),
        "apiVersion: v2\nname: umbrella\nversion: 0.1.0\ndependencies:\n- name: demo\n  \
         version: 1.1.0\n  repository: \"@local\"\n",
    )
    .unwrap();
    dir.to_string_lossy().into_owned()
}

fn helmfile_sequence(label: &str) {
    let s = Shim::new(label);
    let b = &s.b;
    let url = chart_repo(b);

    let v = s.same(&["version"], &["version"]);
    v.expect_code(0, "helm version");
    s.same(
        &["repo", "add", "local", &url],
        &["repo", "add", "local", &url],
    )
    .expect_code(0, "helm repo add");
    s.same(&["repo", "update"], &["repo", "update"])
        .expect_code(0, "helm repo update");
    let (a, c) = (umbrella(&b.home().join("a")), umbrella(&b.home().join("b")));
    s.same(&["dependency", "build", &a], &["dependency", "build", &c])
        .expect_code(0, "helm dependency build");
    s.same(
        &["template", "web", &a, "-n", NS],
        &["template", "web", &c, "-n", NS],
    )
    .expect_code(0, "helm template");

    // helmfile's upgrade: guarded, helm's argv untouched (--debug reaches helm).
    let values = b.home().join("values.yaml");
    std::fs::write(&values, "replicaCount: 1\n").unwrap();
    let values = values.to_str().unwrap();
    let upgrade = |version: &str| {
        s.shim(&[
            "upgrade",
            "--install",
            "app",
            "local/demo",
            "--version",
            version,
            "--namespace",
            NS,
            "--reset-values",
            "--history-max",
            "10",
            "--values",
            values,
            "--debug",
        ])
    };
    let install = upgrade("1.1.0");
    install.expect_code(0, "shim upgrade --install");
    // Under --debug the guard's debug lines come first, then the decision line, then the
    // line saying helm runs.
    let stderr = lines(&install.stderr);
    let decided = stderr
        .iter()
        .position(|l| *l == "install: \"app\" in \"shared\" 1.1.0 (not installed yet)")
        .unwrap_or_else(|| panic!("no install line:\n{}", install.stderr));
    assert!(stderr[..decided].iter().all(|l| l.starts_with("debug: ")));
    assert_eq!(
        stderr[decided + 1],
        format!(
            "debug: running {} upgrade with 13 arguments",
            b.helm_bin.display()
        )
    );
    let marker = if helm_major(label) == 3 {
        "[debug]"
    } else {
        "level=DEBUG"
    };
    assert!(install.stderr.contains(marker), "{}", install.stderr);
    // helm's --debug also turns on the guard's debug lines, and still reaches helm.
    let helm_path = b.helm_bin.display().to_string();
    for line in [
        format!("debug: helm {helm_path}"),
        "debug: release \"app\" in namespace \"shared\", secret records".to_string(),
        format!("debug: running {helm_path} upgrade with 13 arguments"),
    ] {
        assert!(
            lines(&install.stderr).contains(&line.as_str()),
            "{line}\n{}",
            install.stderr
        );
    }
    assert_eq!(b.deployed("app", NS), ("1.1.0".into(), 1));

    s.same(
        &["list", "-n", NS, "-o", "json"],
        &["list", "-n", NS, "-o", "json"],
    )
    .expect_code(0, "helm list");
    if helm_major(label) == 3 {
        s.same(&["status", "app", "-n", NS], &["status", "app", "-n", NS])
            .expect_code(0, "helm status");
    } else {
        // helm 4 lists the release's resources in map order, with ages, and sizes the
        // table to whichever kind comes first: compare everything before the resources
        // exactly, and the resource kinds as a set.
        let (x, y) = (
            s.shim(&["status", "app", "-n", NS]),
            s.direct(&["status", "app", "-n", NS]),
        );
        let parts = |r: &Run| {
            let (head, tail) = r.stdout.split_once("RESOURCES:\n").expect("RESOURCES:");
            let mut kinds: Vec<String> = tail
                .lines()
                .filter(|l| l.starts_with("==> "))
                .map(str::to_string)
                .collect();
            kinds.sort();
            (r.code, head.to_string(), kinds, r.stderr.clone())
        };
        assert_eq!(parts(&x), parts(&y), "helm status");
        x.expect_code(0, "helm status");
    }
    s.same(&["status", "nope", "-n", NS], &["status", "nope", "-n", NS])
        .expect_code(1, "helm status of a missing release");

    // A downgrade through the shim: skipped, helm not run, exit 0.
    let down = upgrade("1.0.0");
    down.expect_code(0, "shim downgrade");
    // Debug lines (this run has helm's --debug), then the one skip line, last.
    let down_lines = lines(&down.stderr);
    let (skip, debug) = down_lines.split_last().expect("stderr lines");
    assert_eq!(
        *skip,
        "skip: release \"app\" in \"shared\" is at 1.1.0 (revision 1); target 1.0.0 would be a \
         downgrade"
    );
    assert!(
        debug.iter().all(|l| l.starts_with("debug: ")),
        "{down_lines:?}"
    );
    for line in [
        format!("debug: helm {}", b.helm_bin.display()),
        "debug: release \"app\" in namespace \"shared\", secret records".to_string(),
    ] {
        assert!(debug.contains(&line.as_str()), "{line}: {down_lines:?}");
    }
    assert_eq!(down.stdout, "");
    assert_eq!(b.deployed("app", NS), ("1.1.0".into(), 1));

    // Issue 25, item 8: a flag before the subcommand, and a value that looks like help,
    // do not hide the downgrade (helm's cobra runs `upgrade` for both).
    let values = b.home().join("values.yaml");
    std::fs::write(&values, "a: 1\n").unwrap();
    let values = values.to_str().unwrap();
    for argv in [
        &[
            "-f",
            values,
            "--namespace",
            NS,
            "upgrade",
            "app",
            "local/demo",
            "--version",
            "1.0.0",
        ][..],
        &[
            "upgrade",
            "app",
            "local/demo",
            "--version",
            "1.0.0",
            "-n",
            NS,
            "--description",
            "-h",
        ],
    ] {
        let down = s.shim(argv);
        down.expect_code(0, &format!("{argv:?}"));
        down.assert_stderr(&[
            "skip: release \"app\" in \"shared\" is at 1.1.0 (revision 1); target 1.0.0 would \
             be a downgrade",
        ]);
        assert_eq!(b.deployed("app", NS), ("1.1.0".into(), 1), "{argv:?}");
    }

    // Without --install, a missing release fails exactly as helm's own upgrade does.
    s.same(
        &["upgrade", "missing", "local/demo", "-n", NS],
        &["upgrade", "missing", "local/demo", "-n", NS],
    )
    .expect_code(1, "upgrade of a missing release");

    // The explicit form, and GUARDED_UPGRADE_HELM.
    let explicit = run(s
        .with_path(b.command(guard_bin()))
        .args(["helm", "--", "list", "-n", NS, "-q"]));
    assert_eq!((explicit.code, lines(&explicit.stdout)), (0, vec!["app"]));
    let pinned = run(s
        .with_path(b.command(s.shim_dir.join("helm")))
        .args(["version", "--short"])
        .env("PATH", "/usr/bin:/bin")
        .env("GUARDED_UPGRADE_HELM", &b.helm_bin));
    assert_eq!(pinned.stdout, s.direct(&["version", "--short"]).stdout);
}

/// With only the shim on PATH, it refuses to recurse into itself.
fn shim_without_real_helm(label: &str) {
    let s = Shim::new(label);
    let run = run(s
        .with_path(s.b.command(s.shim_dir.join("helm")))
        .arg("version")
        .env("PATH", format!("{}:/usr/bin:/bin", s.shim_dir.display())));
    // Exit 2 naming the refused path (issue 17): a configuration no retry fixes.
    run.expect_code(2, "no real helm");
    let shim = s.shim_dir.join("helm");
    assert_eq!(
        lines(&run.stderr),
        [format!(
            "guarded-upgrade: error: refusing to run {shim:?} (from PATH) as helm: it is this \
             guarded-upgrade binary (the same path); guarded-upgrade never runs itself as helm. \
             Put the real helm on PATH after the shim, or name it with GUARDED_UPGRADE_HELM \
             (shim) or --helm/HELM_BIN"
        )]
    );
    // Shim settings are checked before any I/O: a typo is a usage error.
    let typo = s.shim_env(
        &["upgrade", "-i", "db", &chart("demo-1.0.0"), "-n", NS],
        &[("GUARDED_UPGRADE_LOCK_TIMEOUT", "soon")],
    );
    typo.expect_code(2, "bad setting");
    assert_eq!(
        lines(&typo.stderr),
        [
            "guarded-upgrade: error: invalid value \"soon\" for GUARDED_UPGRADE_LOCK_TIMEOUT: \
             expected a duration such as 90s, 5m, 2h or 1d"
        ]
    );
    assert!(s.b.writes().is_empty(), "{:?}", s.b.writes());
}

impl Shim {
    fn shim_env(&self, args: &[&str], extra: &[(&str, &str)]) -> Run {
        let mut cmd = self.with_path(self.b.command(self.shim_dir.join("helm")));
        run(cmd.args(args).envs(extra.iter().copied()))
    }
}

crate::common::per_helm_compat!(helmfile_sequence, shim_without_real_helm);
