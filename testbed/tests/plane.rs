//! The test bed itself, against the real binaries: startup, leases, reset, audit, RBAC.

use std::process::Command;

use kube_testbed::{cluster, kubectl};

fn kubectl_as(kubeconfig: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(kubectl())
        .env_clear()
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", std::env::temp_dir())
        .args(args)
        .output()
        .expect("run kubectl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_lease_starts_empty_audits_the_tests_users_and_enforces_rbac() {
    let c = cluster();
    c.create_namespace("plane-ns");
    let (code, _, err) = kubectl_as(
        c.kubeconfig(),
        &[
            "create",
            "configmap",
            "cm1",
            "-n",
            "plane-ns",
            "--from-literal=a=b",
        ],
    );
    assert_eq!(code, 0, "admin kubectl: {err}");
    let writes: Vec<_> = c.requests().into_iter().filter(|e| e.is_write()).collect();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(writes[0].resource.as_deref(), Some("configmaps"));
    assert_eq!(writes[0].user, "admin");
    assert_eq!(writes[0].code, 201);

    // A restricted user is denied by RBAC, in the server's own words.
    let alice = c.kubeconfig_for("alice", Some("plane-ns"));
    let (code, _, err) = kubectl_as(&alice, &["get", "configmaps"]);
    assert_ne!(code, 0);
    assert!(
        err.contains(r#"User "alice" cannot list resource "configmaps" in API group "" in the namespace "plane-ns""#),
        "{err}"
    );

    // A client certificate authenticates as its CN.
    let cert = c.client_cert("carl", &["system:masters"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.crt"), &cert.cert_pem).unwrap();
    std::fs::write(dir.path().join("c.key"), &cert.key_pem).unwrap();
    let (code, out, err) = kubectl_as(
        c.kubeconfig(),
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
            "--token=",
            &format!(
                "--client-certificate={}",
                dir.path().join("c.crt").display()
            ),
            &format!("--client-key={}", dir.path().join("c.key").display()),
        ],
    );
    assert_eq!((code, out.as_str()), (0, "carl"), "{err}");

    c.reset();
    assert!(c.get("namespaces", None, "plane-ns").is_none());
    assert!(c.get("namespaces", None, "default").is_some());
    assert!(c.get("services", Some("default"), "kubernetes").is_some());
}

#[test]
fn a_released_server_comes_back_empty() {
    let port;
    {
        let c = cluster();
        port = c.port();
        c.create_namespace("leftover");
        c.put_object(
            "secrets",
            serde_json::json!({"apiVersion":"v1","kind":"Secret","metadata":{"name":"s","namespace":"default"}}),
        );
    }
    // Lease every server until the same one comes back.
    let mut held = Vec::new();
    loop {
        let c = cluster();
        if c.port() == port {
            assert!(c.get("namespaces", None, "leftover").is_none());
            assert!(c.get("secrets", Some("default"), "s").is_none());
            break;
        }
        held.push(c);
    }
}
