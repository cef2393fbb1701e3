//! OCI chart sources against a real distribution registry (Debian's docker-registry):
//! charts pushed with `helm push`, versions resolved by the helm under test, anonymous and
//! htpasswd-authenticated registries, and a registry that is down.

use crate::common::{bed, chart, Bed, Run};
use crate::servers::{
    auth_registry, dead_address, registry, tls_registry, Registry, REGISTRY_PASSWORD, REGISTRY_USER,
};

const NS: &str = "shared";

/// Packages the demo fixtures and a pre-release, and pushes them to
/// `oci://<registry>/<repo>`; returns the chart reference `oci://<registry>/<repo>/demo`
/// and the digest helm reported for 1.1.0. `login` is the registry config to push with,
/// `how` the transport flags (`--plain-http`, `--ca-file F`).
fn push_demo(
    b: &Bed,
    reg: &Registry,
    repo: &str,
    login: &[(&str, &str)],
    how: &[&str],
) -> (String, String) {
    let dir = b.home().join("packages");
    let mut charts: Vec<String> = ["0.9.0", "1.0.0", "1.1.0", "1.2.0"]
        .iter()
        .map(|v| chart(&format!("demo-{v}")))
        .collect();
    charts.push(b.versioned_chart("1.3.0-rc.1"));
    let mut digest_110 = String::new();
    for c in &charts {
        let run = b.helm(&["package", c, "-d", dir.to_str().unwrap()]);
        run.expect_code(0, "helm package");
        let tgz = run
            .stdout
            .trim()
            .rsplit(": ")
            .next()
            .unwrap_or_default()
            .to_string();
        let target = format!("oci://{}/{repo}", reg.host);
        let mut args = vec!["push", tgz.as_str(), target.as_str()];
        args.extend_from_slice(how);
        let run = b.helm_env(&args, login);
        run.expect_code(0, "helm push");
        let pushed = format!("{}{}", run.stdout, run.stderr);
        if tgz.ends_with("demo-1.1.0.tgz") {
            digest_110 = pushed
                .lines()
                .find_map(|l| l.strip_prefix("Digest: "))
                .expect("helm push prints the digest")
                .trim()
                .to_string();
        }
    }
    (format!("oci://{}/{repo}/demo", reg.host), digest_110)
}

fn target_version(run: &Run) -> String {
    let json: serde_json::Value = serde_json::from_str(run.stdout.trim())
        .unwrap_or_else(|e| panic!("check -o json: {e}: {}", run.stdout));
    json["target"]["version"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn check(b: &Bed, reference: &str, extra: &[&str], env: &[(&str, &str)]) -> Run {
    let mut args = vec![
        "check",
        "db",
        reference,
        "-n",
        NS,
        "--plain-http",
        "-o",
        "json",
    ];
    args.extend_from_slice(extra);
    b.guard_env(&args, env)
}

fn last_line(run: &Run) -> &str {
    run.stderr.lines().last().unwrap_or_default()
}

/// Anonymous registry: exact versions, constraints, --devel, digests and tags.
fn oci_anonymous(label: &str) {
    let b = bed(label);
    b.api.create_namespace(NS);
    let reg = registry();
    let (demo, digest) = push_demo(&b, reg, &format!("anon-{label}"), &[], &["--plain-http"]);

    let run = b.guard(&[
        "upgrade",
        "--install",
        "db",
        &demo,
        "--version",
        "1.0.0",
        "--plain-http",
        "-n",
        NS,
    ]);
    run.expect_code(0, "install exact 1.0.0");
    assert!(
        run.stderr.contains(r#"install: "db" in "shared" 1.0.0"#),
        "{}",
        run.stderr
    );
    assert_eq!(b.deployed("db", NS), ("1.0.0".into(), 1));

    // The same exact version again: skipped, helm not run.
    let run = b.guard(&[
        "upgrade",
        "db",
        &demo,
        "--version",
        "1.0.0",
        "--plain-http",
        "-n",
        NS,
    ]);
    run.expect_code(0, "same version");
    assert!(run.stderr.starts_with("skip: "), "{}", run.stderr);

    // Constraints, resolved by helm against the registry's tags.
    for (constraint, want) in [
        ("^1", "1.2.0"),
        ("~1.1", "1.1.0"),
        (">=1.0.0 <2.0.0", "1.2.0"),
        ("1.1.x", "1.1.0"),
    ] {
        let run = check(&b, &demo, &["--version", constraint], &[]);
        run.expect_code(0, constraint);
        assert_eq!(target_version(&run), want, "{constraint}");
    }
    // No --version: the highest release; --devel: pre-releases count.
    let run = check(&b, &demo, &[], &[]);
    run.expect_code(0, "latest");
    assert_eq!(target_version(&run), "1.2.0");
    let run = check(&b, &demo, &["--devel"], &[]);
    run.expect_code(0, "--devel");
    assert_eq!(target_version(&run), "1.3.0-rc.1");

    // A pre-release range: the helm that runs decides. Helm 4 and helm 3.21 pick the
    // pre-release 1.3.0-rc.1; helm 3.17 passes over pre-release tags on OCI and picks
    // 1.2.0. Each is what that helm will install, so each is the target.
    let run = check(&b, &demo, &["--version", ">=1.2.0-0 <2.0.0"], &[]);
    run.expect_code(0, "pre-release range");
    let want = if matches!(label, "helm3.17" | "standin-helm3") {
        "1.2.0"
    } else {
        "1.3.0-rc.1"
    };
    assert_eq!(target_version(&run), want);

    // A tag or a digest in the reference: helm resolves it, so do we.
    let run = check(&b, &format!("{demo}:1.1.0"), &[], &[]);
    run.expect_code(0, "tag");
    assert_eq!(target_version(&run), "1.1.0");
    let run = check(&b, &format!("{demo}@{digest}"), &[], &[]);
    run.expect_code(0, "digest");
    assert_eq!(target_version(&run), "1.1.0");

    // A digest in --version is refused before any I/O, saying where it belongs.
    let run = b.guard(&[
        "upgrade",
        "db",
        &demo,
        "--version",
        &digest,
        "--plain-http",
        "-n",
        NS,
    ]);
    run.expect_code(2, "digest in --version");
    assert_eq!(
        last_line(&run),
        format!(
            "guarded-upgrade: error: --version {digest:?} contains a digest; helm accepts only \
             a version or a version constraint there: put the digest in the chart reference \
             instead ({demo}@{digest})"
        )
    );

    // A downgrade through a constraint is skipped; an upgrade through one runs helm.
    let run = b.guard(&[
        "upgrade",
        "db",
        &demo,
        "--version",
        "~0.9",
        "--plain-http",
        "-n",
        NS,
    ]);
    run.expect_code(0, "~0.9");
    assert!(run.stderr.contains("downgrade"), "{}", run.stderr);
    let run = b.guard(&[
        "upgrade",
        "db",
        &demo,
        "--version",
        "^1",
        "--plain-http",
        "-n",
        NS,
    ]);
    run.expect_code(0, "^1");
    assert_eq!(b.deployed("db", NS), ("1.2.0".into(), 2));

    // A version the registry does not have: exit 3, helm not run.
    let run = check(&b, &demo, &["--version", "9.9.9"], &[]);
    run.expect_code(3, "missing version");
    assert!(
        last_line(&run).contains("resolving the target chart version: `helm show chart"),
        "{}",
        run.stderr
    );
}

/// htpasswd registry: refused without credentials (exit 3 naming the registry), resolved
/// with helm's registry config from `helm registry login`, HELM_REGISTRY_CONFIG or
/// --registry-config.
fn oci_authenticated(label: &str) {
    let b = bed(label);
    b.api.create_namespace(NS);
    let reg = auth_registry();
    let config = b.home().join("registry-login.json");
    let config_s = config.to_str().unwrap().to_string();
    let login = [("HELM_REGISTRY_CONFIG", config_s.as_str())];
    let mut args = vec![
        "registry",
        "login",
        reg.host.as_str(),
        "-u",
        REGISTRY_USER,
        "--password-stdin",
    ];
    if label == "helm4" {
        args.push("--plain-http");
    } else {
        args.push("--insecure");
    }
    let run = helm_stdin(&b, &args, &login, REGISTRY_PASSWORD);
    run.expect_code(0, "helm registry login");
    let (demo, _) = push_demo(&b, reg, &format!("auth-{label}"), &login, &["--plain-http"]);

    // No credentials: the registry answers 401; exit 3 naming it, helm not run.
    let run = b.guard(&[
        "upgrade",
        "db",
        &demo,
        "--version",
        "1.0.0",
        "--plain-http",
        "-n",
        NS,
    ]);
    run.expect_code(3, "no credentials");
    let line = last_line(&run);
    let prefix = format!(
        "guarded-upgrade: error: release \"db\" in namespace \"shared\": resolving the target \
         chart version: OCI registry {} refused access (`helm show chart {demo}` exit 1: ",
        reg.host
    );
    let suffix = format!(
        "); log in with `helm registry login {}` (helm's registry config: --registry-config \
         or HELM_REGISTRY_CONFIG), or pass --username/--password; helm was not run",
        reg.host
    );
    assert!(
        line.starts_with(&prefix) && line.ends_with(&suffix),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(REGISTRY_PASSWORD));
    let history = b.helm(&["history", "db", "-n", NS]);
    assert_ne!(
        history.code, 0,
        "helm must not have run: {}",
        history.stdout
    );

    // --username/--password reach helm show chart; the password is never printed.
    let run = check(
        &b,
        &demo,
        &[
            "--version",
            "^1",
            "--username",
            REGISTRY_USER,
            "--password",
            REGISTRY_PASSWORD,
        ],
        &[],
    );
    run.expect_code(0, "check with --username/--password");
    assert_eq!(target_version(&run), "1.2.0");
    assert!(!run.stdout.contains(REGISTRY_PASSWORD) && !run.stderr.contains(REGISTRY_PASSWORD));

    // HELM_REGISTRY_CONFIG from `helm registry login`: exact install, then a constraint.
    let run = b.guard_env(
        &[
            "upgrade",
            "db",
            &demo,
            "--version",
            "1.0.0",
            "--plain-http",
            "-n",
            NS,
        ],
        &login,
    );
    run.expect_code(0, "install with HELM_REGISTRY_CONFIG");
    assert_eq!(b.deployed("db", NS), ("1.0.0".into(), 1));
    let run = check(&b, &demo, &["--version", "~1.1"], &login);
    run.expect_code(0, "constraint with HELM_REGISTRY_CONFIG");
    assert_eq!(target_version(&run), "1.1.0");

    // --registry-config: passed to helm show chart and to helm upgrade alike.
    let run = b.guard(&[
        "upgrade",
        "db",
        &demo,
        "--version",
        ">=1.0.0 <2.0.0",
        "--plain-http",
        "--registry-config",
        &config_s,
        "-n",
        NS,
    ]);
    run.expect_code(0, "upgrade with --registry-config");
    assert_eq!(b.deployed("db", NS), ("1.2.0".into(), 2));
}

/// A registry that is down: exit 3 naming it, helm not run, nothing written.
fn oci_registry_down(label: &str) {
    let b = bed(label);
    b.api.create_namespace(NS);
    let host = dead_address();
    let demo = format!("oci://{host}/charts/demo");
    for version in ["1.0.0", "^1"] {
        b.api.clear_requests();
        let run = b.guard(&[
            "upgrade",
            "--install",
            "db",
            &demo,
            "--version",
            version,
            "--plain-http",
            "-n",
            NS,
        ]);
        run.expect_code(3, version);
        let line = last_line(&run);
        let prefix = format!(
            "guarded-upgrade: error: release \"db\" in namespace \"shared\": resolving the \
             target chart version: OCI registry {host} cannot be reached (`helm show chart \
             {demo}` exit 1: "
        );
        let suffix = "); check the address, that the registry is up, and --plain-http / \
                      --ca-file / --insecure-skip-tls-verify for how it serves; helm was not run";
        assert!(
            line.starts_with(&prefix) && line.ends_with(suffix),
            "{}",
            run.stderr
        );
        assert!(line.contains("connection refused"), "{line}");
        assert_eq!(b.writes(), Vec::<String>::new(), "nothing may be written");
    }
}

/// A registry serving HTTPS with a certificate from a private CA: resolved with --ca-file
/// or --insecure-skip-tls-verify, as helm does; without either, exit 3 naming the registry.
/// Helm 4 only (see `helm4_only`).
fn oci_tls(label: &str) {
    let b = bed(label);
    b.api.create_namespace(NS);
    let reg = tls_registry();
    let ca = reg
        .ca_file
        .as_ref()
        .expect("TLS registry CA")
        .display()
        .to_string();
    let (demo, _) = push_demo(&b, reg, &format!("tls-{label}"), &[], &["--ca-file", &ca]);

    let run = b.guard(&[
        "check",
        "db",
        &demo,
        "--version",
        "^1",
        "--ca-file",
        &ca,
        "-n",
        NS,
        "-o",
        "json",
    ]);
    run.expect_code(0, "check with --ca-file");
    assert_eq!(target_version(&run), "1.2.0");
    b.guard(&[
        "upgrade",
        "--install",
        "db",
        &demo,
        "--version",
        "1.0.0",
        "--ca-file",
        &ca,
        "-n",
        NS,
    ])
    .expect_code(0, "install with --ca-file");
    assert_eq!(b.deployed("db", NS), ("1.0.0".into(), 1));

    // Without the CA the certificate is unknown: exit 3 naming the registry, helm not run.
    let run = b.guard(&["upgrade", "db", &demo, "--version", "~1.1", "-n", NS]);
    run.expect_code(3, "unknown CA");
    let line = last_line(&run);
    assert!(
        line.starts_with(&format!(
            "guarded-upgrade: error: release \"db\" in namespace \"shared\": resolving the \
             target chart version: OCI registry {} cannot be reached (`helm show chart {demo}` \
             exit 1: ",
            reg.host
        )) && line.contains("x509")
            && line.ends_with(
                "--ca-file / --insecure-skip-tls-verify for how it serves; helm was not run"
            ),
        "{}",
        run.stderr
    );
    assert_eq!(b.deployed("db", NS), ("1.0.0".into(), 1));

    // --insecure-skip-tls-verify: helm skips verification, so resolution and upgrade work.
    b.guard(&[
        "upgrade",
        "db",
        &demo,
        "--version",
        "~1.1",
        "--insecure-skip-tls-verify",
        "-n",
        NS,
    ])
    .expect_code(0, "upgrade with --insecure-skip-tls-verify");
    assert_eq!(b.deployed("db", NS), ("1.1.0".into(), 2));
}

/// Runs helm with `input` on stdin.
fn helm_stdin(b: &Bed, args: &[&str], env: &[(&str, &str)], input: &str) -> Run {
    use std::io::Write;
    let mut cmd = std::process::Command::new(&b.helm_bin);
    cmd.env("HOME", b.home())
        .env("HELM_CONFIG_HOME", b.home().join("config"))
        .env("HELM_CACHE_HOME", b.home().join("cache"))
        .env("HELM_DATA_HOME", b.home().join("data"))
        .envs(env.iter().copied())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn helm");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("helm");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

crate::common::per_helm!(oci_anonymous, oci_authenticated, oci_registry_down);

/// Helm 3.17 (oras-go v1 on containerd's resolver) always speaks plain HTTP to a registry
/// on a loopback address, so a TLS registry on loopback can only be used with helm 4.
mod helm4_only {
    #[test]
    fn oci_tls() {
        super::oci_tls("helm4");
    }
}
