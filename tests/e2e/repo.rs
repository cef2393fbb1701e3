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
    run.assert_stderr(&[
        r#"skip: release "db" in "shared" is at 1.0.0 (revision 1); target 0.9.0 would be a downgrade"#,
    ]);

    // No --version: helm picks the latest, 1.2.0; also via --repo URL.
    let run = b.guard(&["upgrade", "db", "demo", "--repo", &url, "-n", NS]);
    run.expect_code(0, "--repo latest");
    run.assert_stderr_line(r#"upgrade: "db" in "shared" 1.0.0 -> 1.2.0"#);
    assert_eq!(b.deployed("db", NS).0, "1.2.0");

    // A constraint nothing satisfies: helm cannot resolve it, we refuse (exit 3).
    let run = b.guard(&["upgrade", "db", "local/demo", "--version", ">=5", "-n", NS]);
    run.expect_code(3, "unresolvable");
    // helm's own reason is part of the line; both helm versions word it the same.
    run.assert_error(
        "release \"db\" in namespace \"shared\": resolving the target chart version: `helm show \
         chart local/demo` failed (exit 1): Error: chart \"demo\" matching >=5 not found in \
         local index. (try 'helm repo update'): no chart version found for demo->=5; helm was \
         not run",
    );
}

crate::common::per_helm!(repo_constraints);
