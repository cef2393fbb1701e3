//! Target resolution for repository charts: a real chart repository (`helm repo index`)
//! served over loopback, with helm picking the version for constraints.

use crate::common::{bed, chart, serve_dir, Bed};

const NS: &str = "shared";

fn repo(b: &Bed) -> String {
    let dir = b.home().join("repo");
    for v in ["0.9.0", "1.0.0", "1.1.0", "1.2.0"] {
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
    b.helm(&["repo", "add", "local", &url])
        .expect_code(0, "helm repo add");
    url
}

fn repo_constraints(label: &str) {
    let b = bed(label);
    b.api.create_namespace(NS);
    let url = repo(&b);
    b.guard(&[
        "upgrade",
        "db",
        "local/demo",
        "--version",
        "1.0.0",
        "-n",
        NS,
    ])
    .expect_code(0, "install exact 1.0.0");
    assert_eq!(b.deployed("db", NS).0, "1.0.0");

    // `^1` resolves (through helm) to the highest 1.x: 1.2.0.
    let run = b.guard(&[
        "check",
        "db",
        "local/demo",
        "--version",
        "^1",
        "-n",
        NS,
        "-o",
        "json",
    ]);
    run.expect_code(0, "check ^1");
    let json: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(json["target"]["version"], "1.2.0", "{json}");
    assert_eq!(json["action"], "upgrade");

    // `~0.9` is older than what runs: a downgrade, skipped.
    let run = b.guard(&["upgrade", "db", "local/demo", "--version", "~0.9", "-n", NS]);
    run.expect_code(0, "~0.9");
    assert!(run.stderr.contains("downgrade"), "{}", run.stderr);

    // No --version: helm picks the latest, 1.2.0; also via --repo URL.
    let run = b.guard(&["upgrade", "db", "demo", "--repo", &url, "-n", NS]);
    run.expect_code(0, "--repo latest");
    assert!(run.stderr.contains("1.0.0 -> 1.2.0"), "{}", run.stderr);
    assert_eq!(b.deployed("db", NS).0, "1.2.0");

    // A constraint nothing satisfies: helm cannot resolve it, we refuse (exit 3).
    let run = b.guard(&["upgrade", "db", "local/demo", "--version", ">=5", "-n", NS]);
    run.expect_code(3, "unresolvable");
    assert!(
        run.stderr.contains("resolving the target chart version"),
        "{}",
        run.stderr
    );
}

crate::common::per_helm!(repo_constraints);
