//! The helm plugin: `helm plugin install` of this repository's manifest with real helm 3
//! and 4 into a private plugin directory, then `helm guard …` against the stand-in.

use std::path::{Path, PathBuf};

use crate::common::{bed, chart, guard_bin, lines, run, Bed, Run};

const NS: &str = "shared";

/// The plugin's files, copied from the repository root as `helm plugin install <repo>`
/// would see them (a copy: the install hook writes `bin/` into the plugin directory).
const PLUGIN_FILES: &[&str] = &[
    "plugin.yaml",
    "completion.yaml",
    "scripts/helm-plugin-install.sh",
];

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Copies the plugin into the bed's home and returns its directory.
fn plugin_source(b: &Bed) -> PathBuf {
    let dir = b.home().join("src").join("guarded-upgrade");
    for file in PLUGIN_FILES {
        let to = dir.join(file);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(repo_root().join(file), &to).expect("copy plugin file");
    }
    dir
}

/// Plugin environment: helm 4.1.4 installs into `$HELM_DATA_HOME/plugins` whatever
/// HELM_PLUGINS says, so the private plugin directory is exactly that.
fn plugins_dir(b: &Bed) -> PathBuf {
    b.home().join("data").join("plugins")
}

fn helm(b: &Bed, args: &[&str], extra: &[(&str, &str)]) -> Run {
    run(b
        .command(&b.helm_bin)
        .args(args)
        .env("HELM_PLUGINS", plugins_dir(b))
        .envs(extra.iter().copied()))
}

fn version_line() -> String {
    let out = std::process::Command::new(guard_bin())
        .arg("--version")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn install(b: &Bed) {
    let src = plugin_source(b);
    let run = helm(
        b,
        &["plugin", "install", src.to_str().unwrap()],
        &[("GUARDED_UPGRADE_BINARY", guard_bin().to_str().unwrap())],
    );
    run.expect_code(0, "helm plugin install");
    let mut want = vec![];
    if b.label == "helm4" {
        // helm 4 verifies plugins by default; a local directory is "development mode".
        want.push("Installing plugin from local directory (development mode)");
    }
    want.push("Installed plugin: guard");
    assert_eq!(lines(&run.stdout), want, "{}", run.stderr);
    assert_eq!(
        lines(&run.stderr),
        [format!(
            "guarded-upgrade plugin: installed {}",
            version_line()
        )]
    );
}

fn plugin_install_and_run(label: &str) {
    let b = bed(label);
    b.api.create_namespace(NS);
    install(&b);

    let listed = helm(&b, &["plugin", "list"], &[]);
    listed.expect_code(0, "helm plugin list");
    assert!(
        listed.stdout.lines().any(|l| l.starts_with("guard")),
        "{}",
        listed.stdout
    );

    // helm takes -n out of the plugin's argv and hands it over as HELM_NAMESPACE; HELM_BIN
    // is helm itself, whatever the caller's environment said.
    let bogus = [("HELM_BIN", "/nonexistent/helm")];
    let c100 = chart("demo-1.0.0");
    let first = helm(
        &b,
        &["guard", "upgrade", "--install", "db", &c100, "-n", NS],
        &bogus,
    );
    first.expect_code(0, "helm guard upgrade --install");
    assert_eq!(b.deployed("db", NS), ("1.0.0".into(), 1));

    // Same decision, same output, same exit code as the binary itself.
    let check = ["check", "db", &chart("demo-0.9.0"), "-o", "json"];
    let mut via_plugin = vec!["guard"];
    via_plugin.extend(check);
    via_plugin.extend(["-n", NS]);
    let p = helm(&b, &via_plugin, &[]);
    let mut direct = check.to_vec();
    direct.extend(["-n", NS]);
    let d = b.guard(&direct);
    p.expect_code(0, "plugin check");
    assert_eq!(p.stdout, d.stdout, "plugin vs binary");
    assert_eq!(p.code, d.code);

    // A downgrade through the plugin is skipped with the binary's skip line.
    let skip = helm(
        &b,
        &[
            "guard",
            "upgrade",
            "-i",
            "db",
            &chart("demo-0.9.0"),
            "-n",
            NS,
        ],
        &bogus,
    );
    skip.expect_code(0, "plugin downgrade");
    let direct_skip = b.guard(&["upgrade", "-i", "db", &chart("demo-0.9.0"), "-n", NS]);
    assert_eq!(skip.stderr, direct_skip.stderr);
    assert_eq!(
        lines(&skip.stderr)[0],
        "skip: release \"db\" in \"shared\" is at 1.0.0 (revision 1); target 0.9.0 would be a \
         downgrade"
    );
    assert_eq!(b.deployed("db", NS), ("1.0.0".into(), 1));

    // Exit codes pass through helm: 10 (detailed skip), 2 (usage), 3 (refused).
    helm(
        &b,
        &["guard", "lock", "db", "-n", NS, "--reason", "freeze"],
        &[],
    )
    .expect_code(0, "plugin lock");
    let locked = helm(
        &b,
        &[
            "guard",
            "upgrade",
            "db",
            &chart("demo-1.1.0"),
            "-n",
            NS,
            "--detailed-exitcode",
        ],
        &[],
    );
    locked.expect_code(10, "locked skip, detailed");
    let usage = helm(&b, &["guard", "upgrade", "db"], &[]);
    usage.expect_code(2, "usage error");
    assert_eq!(
        lines(&usage.stderr),
        [
            "guarded-upgrade: error: missing CHART: usage is `upgrade [flags] RELEASE CHART`",
            "Error: plugin \"guard\" exited with error",
        ]
    );
    // --kube-context reaches us as HELM_KUBECONTEXT: an unknown context is refused.
    let context = helm(
        &b,
        &["guard", "status", "db", "--kube-context", "nope", "-n", NS],
        &[],
    );
    context.expect_code(3, "unknown context");
    assert!(context.stderr.contains("nope"), "{}", context.stderr);
    // --kube-apiserver reaches us as HELM_KUBEAPISERVER: a dead server fails closed.
    let server = helm(
        &b,
        &[
            "guard",
            "status",
            "db",
            "--kube-apiserver",
            "https://127.0.0.1:9",
            "-n",
            NS,
        ],
        &[],
    );
    server.expect_code(3, "dead API server");
    server.assert_stderr_line(&format!(
        "guarded-upgrade: error: release \"db\" in namespace \"shared\": reading the deployed \
         release: listing Secret records: API server https://127.0.0.1:9 (context \"{}\"): \
         connection refused; check that the API server is up and the address and port are right",
        b.api.context()
    ));
    let status = helm(&b, &["guard", "status", "db", "-n", NS, "-o", "json"], &[]);
    status.expect_code(0, "plugin status");
    let json: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(json["lock"]["reason"], "freeze");
    helm(&b, &["guard", "unlock", "db", "-n", NS], &[]).expect_code(0, "plugin unlock");

    // HELM_DEBUG (from helm's --debug) reaches the helm that upgrades.
    let debug = helm(
        &b,
        &[
            "guard",
            "upgrade",
            "db",
            &chart("demo-1.1.0"),
            "-n",
            NS,
            "--debug",
        ],
        &[],
    );
    debug.expect_code(0, "plugin upgrade --debug");
    let marker = if label == "helm3" {
        "[debug]"
    } else {
        "level=DEBUG"
    };
    assert!(debug.stderr.contains(marker), "{}", debug.stderr);
    // The guard's own debug lines (helm took --debug out and set HELM_DEBUG=true).
    let helm_path = b.helm_bin.display().to_string();
    for line in [
        format!("debug: helm {helm_path}"),
        "debug: release \"db\" in namespace \"shared\", secret records".to_string(),
        format!("debug: running {helm_path} upgrade with 2 arguments"),
    ] {
        assert!(
            lines(&debug.stderr).contains(&line.as_str()),
            "{line}\n{}",
            debug.stderr
        );
    }
    assert!(!lines(&first.stderr).iter().any(|l| l.starts_with("debug:")));
    assert_eq!(b.deployed("db", NS), ("1.1.0".into(), 2));

    // HELM_DRIVER: the plugin reads and the helm it runs write ConfigMap records.
    let cm = [("HELM_DRIVER", "configmap")];
    helm(&b, &["guard", "upgrade", "cm", &c100, "-n", NS], &cm).expect_code(0, "configmap install");
    let again = helm(&b, &["guard", "upgrade", "cm", &c100, "-n", NS], &cm);
    again.expect_code(0, "configmap same version");
    assert!(
        lines(&again.stderr)[0].starts_with("skip: release \"cm\" in \"shared\" is at 1.0.0"),
        "{}",
        again.stderr
    );
    let listed = b.helm_env(&["list", "-n", NS, "-q"], &cm);
    assert_eq!(lines(&listed.stdout), ["cm"]);

    // Completion from completion.yaml.
    let complete = helm(&b, &["__complete", "guard", ""], &[]);
    complete.expect_code(0, "helm __complete guard");
    assert_eq!(
        lines(&complete.stdout)[..10],
        [
            "check",
            "completions",
            "helm",
            "lock",
            "locks",
            "man",
            "policy",
            "status",
            "unlock",
            "upgrade"
        ]
    );
    let complete = helm(&b, &["__complete", "guard", "upgrade", "--"], &[]);
    assert!(
        lines(&complete.stdout).contains(&"--min-version-policy"),
        "{}",
        complete.stdout
    );
}

/// Without GUARDED_UPGRADE_BINARY and without cargo, the hook says what to do.
fn plugin_install_needs_cargo_or_binary(label: &str) {
    let b = bed(label);
    let src = plugin_source(&b);
    let run = helm(
        &b,
        &["plugin", "install", src.to_str().unwrap()],
        &[("PATH", "/usr/bin:/bin")],
    );
    assert_ne!(run.code, 0, "{}", run.stdout);
    let b2 = bed(label);
    let bad = helm(
        &b2,
        &["plugin", "install", plugin_source(&b2).to_str().unwrap()],
        &[("GUARDED_UPGRADE_BINARY", "/nonexistent/guarded-upgrade")],
    );
    assert_ne!(bad.code, 0, "{}", bad.stdout);
    assert!(
        lines(&bad.stderr).contains(
            &"guarded-upgrade plugin: GUARDED_UPGRADE_BINARY=/nonexistent/guarded-upgrade is \
              not an executable file"
        ),
        "{}",
        bad.stderr
    );
    assert!(
        lines(&run.stderr).contains(
            &"guarded-upgrade plugin: cargo is not on PATH and GUARDED_UPGRADE_BINARY is not \
              set; install Rust (https://rustup.rs) or set \
              GUARDED_UPGRADE_BINARY=/path/to/guarded-upgrade, then run: helm plugin uninstall \
              guard; helm plugin install ..."
        ),
        "{}",
        run.stderr
    );
}

/// Without GUARDED_UPGRADE_BINARY but with cargo on PATH, the hook builds the checkout.
/// A recording `cargo` stands in for the (minutes-long) release build: it checks the hook's
/// cargo command line and where the hook takes the binary from.
fn plugin_install_builds_with_cargo(label: &str) {
    let b = bed(label);
    let src = plugin_source(&b);
    let tools = b.home().join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    let record = b.home().join("cargo-args");
    let fake = format!(
        "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{record}'\nwhile [ \"$1\" != --target-dir ]; do shift; \
         done\nmkdir -p \"$2/release\"\ncp '{bin}' \"$2/release/guarded-upgrade\"\n",
        record = record.display(),
        bin = guard_bin().display()
    );
    std::fs::write(tools.join("cargo"), fake).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tools.join("cargo"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = helm(
        &b,
        &["plugin", "install", src.to_str().unwrap()],
        &[("PATH", &format!("{}:/usr/bin:/bin", tools.display()))],
    );
    run.expect_code(0, "install with cargo");
    let dir = plugins_dir(&b).join("guarded-upgrade");
    let target = dir.join("target");
    assert_eq!(
        lines(&run.stderr),
        [
            format!(
                "guarded-upgrade plugin: building with cargo (release) in {}; set \
                 GUARDED_UPGRADE_BINARY to skip",
                target.display()
            ),
            format!("guarded-upgrade plugin: installed {}", version_line()),
        ]
    );
    let args = std::fs::read_to_string(&record).unwrap();
    let manifest = dir.join("Cargo.toml");
    assert_eq!(
        lines(&args),
        [
            "build",
            "--release",
            "--locked",
            "--bin",
            "guarded-upgrade",
            "--manifest-path",
            manifest.to_str().unwrap(),
            "--target-dir",
            target.to_str().unwrap(),
        ]
    );
    helm(&b, &["guard", "--version"], &[]).expect_code(0, "helm guard --version");
}

/// From a git URL (a `file://` repository here): helm 4 refuses unverifiable sources
/// unless told `--verify=false`, as docs/plugin.md says; helm 3 does not verify.
fn plugin_install_from_git(label: &str) {
    let b = bed(label);
    let src = plugin_source(&b);
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t", "-C"])
            .arg(&src)
            .args(args)
            .output()
            .expect("git");
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "plugin"]);
    let url = format!("file://{}", src.display());
    let binary = [("GUARDED_UPGRADE_BINARY", guard_bin().to_str().unwrap())];
    if label == "helm4" {
        let refused = helm(&b, &["plugin", "install", &url], &binary);
        refused.expect_code(1, "unverifiable source");
        assert_eq!(
            lines(&refused.stderr),
            [
                "Error: plugin source does not support verification. Use --verify=false to skip \
              verification"
            ]
        );
    }
    let mut args = vec!["plugin", "install"];
    if label == "helm4" {
        args.push("--verify=false");
    }
    args.push(&url);
    let run = helm(&b, &args, &binary);
    run.expect_code(0, "install from git");
    assert_eq!(lines(&run.stdout).last(), Some(&"Installed plugin: guard"));
    helm(&b, &["guard", "--version"], &[]).expect_code(0, "helm guard --version");
}

crate::common::per_helm!(
    plugin_install_and_run,
    plugin_install_needs_cargo_or_binary,
    plugin_install_from_git,
    plugin_install_builds_with_cargo
);
