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

/// The tests that lease every server until one comes back run one at a time: two of them
/// each holding what the other waits for would never end.
static EVERY_SERVER: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_released_server_comes_back_empty() {
    let _one_at_a_time = EVERY_SERVER.lock().unwrap_or_else(|p| p.into_inner());
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

fn deployment(ns: &str, name: &str, replicas: u32) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
            },
        },
    })
}

/// With controllers a Deployment rolls out onto the fake node (scheduler, controllers and
/// kwok acting under their own identities), a labelled pod template never becomes Ready
/// until the test says so, a reset removes a namespace full of pods for good, and a plain
/// lease of the same server stops them again (a new Deployment gets no ReplicaSet).
#[test]
fn controllers_roll_out_fail_on_purpose_and_stop_for_a_plain_lease() {
    use kube_testbed::{cluster_with_controllers, NEVER_READY_LABEL, NODE_NAME};
    use std::time::Duration;
    let _one_at_a_time = EVERY_SERVER.lock().unwrap_or_else(|p| p.into_inner());
    let port;
    {
        let c = cluster_with_controllers();
        port = c.port();
        assert!(c.has_controllers());
        // The controllers are not the admin: kwok, as its node, may update pod status but
        // not read Secrets; the ReplicaSet controller's ServiceAccount may create pods.
        let may = |user: &str, groups: &[&str], verb: &str, resource: &str, sub: &str| {
            let review = serde_json::json!({
                "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": {"user": user, "groups": groups, "resourceAttributes": {
                    "namespace": "rollout", "verb": verb, "resource": resource,
                    "subresource": sub}},
            });
            let (code, v) = c.request(
                "POST",
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                Some(&review),
            );
            assert_eq!(code, 201, "{v}");
            v["status"]["allowed"] == true
        };
        let kwok = format!("system:node:{NODE_NAME}");
        assert!(may(&kwok, &["system:nodes"], "patch", "pods", "status"));
        assert!(!may(&kwok, &["system:nodes"], "get", "secrets", ""));
        assert!(!may(&kwok, &["system:nodes"], "create", "pods", ""));
        let rs = "system:serviceaccount:kube-system:replicaset-controller";
        assert!(may(rs, &["system:serviceaccounts"], "create", "pods", ""));
        let node = c.get("nodes", None, NODE_NAME).expect("the fake node");
        assert_eq!(
            node["metadata"]["annotations"]["kwok.x-k8s.io/node"],
            "fake"
        );
        c.create_namespace("rollout");
        c.put_object("deployments", deployment("rollout", "web", 2));
        let d = c.wait_rollout("rollout", "web", Duration::from_secs(120));
        assert_eq!(d["status"]["readyReplicas"], 2, "{d}");
        let pods = c.pods("rollout", &[("app", "web")]);
        assert!(
            pods.iter().all(|p| p["spec"]["nodeName"] == NODE_NAME),
            "{pods:?}"
        );

        c.break_deployment("rollout", "web", NEVER_READY_LABEL);
        let broken = [(NEVER_READY_LABEL, "true")];
        c.wait_until("a never-ready pod to run", Duration::from_secs(60), || {
            c.pods("rollout", &broken)
                .iter()
                .any(|p| p["status"]["phase"] == "Running")
        });
        let p = &c.pods("rollout", &broken)[0];
        assert!(!kube_testbed::Cluster::pod_ready(p), "{p}");
        assert_eq!(
            p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"], "CrashLoopBackOff",
            "{p}"
        );
        // Let the rollout finish: the test plays the kubelet's readiness probe.
        c.wait_until("the rollout to finish", Duration::from_secs(120), || {
            c.make_pods_ready("rollout", &broken);
            c.get("deployments", Some("rollout"), "web")
                .is_some_and(|d| {
                    d["status"]["updatedReplicas"] == 2
                        && d["status"]["availableReplicas"] == 2
                        && d["status"]["replicas"] == 2
                })
        });

        // An object of a kind the test bed has no name for, which no controller removes
        // when its namespace goes: a reset must remove it too.
        let policies = "/apis/networking.k8s.io/v1/namespaces/rollout/networkpolicies";
        let policy = serde_json::json!({"apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy", "metadata": {"name": "deny", "namespace": "rollout"},
            "spec": {"podSelector": {}}});
        let (code, v) = c.request("POST", policies, Some(&policy));
        assert_eq!(code, 201, "{v}");
        let count = |path: &str| {
            let (code, v) = c.request("GET", path, None);
            assert_eq!(code, 200, "{v}");
            v["items"].as_array().map_or(0, Vec::len)
        };

        // A reset while the controllers run: gone for good, of every kind, nothing comes
        // back in a namespace of the same name.
        c.reset();
        assert!(c.get("namespaces", None, "rollout").is_none());
        c.create_namespace("rollout");
        assert_eq!(
            c.list("pods", Some("rollout")),
            Vec::<serde_json::Value>::new()
        );
        for kind in ["deployments", "replicasets", "events"] {
            assert!(c.list(kind, Some("rollout")).is_empty(), "{kind}");
        }
        assert_eq!(count(policies), 0, "the NetworkPolicy of the old namespace");
    }
    // A plain lease of the same server: nothing reconciles any more.
    let mut held = Vec::new();
    loop {
        let c = cluster();
        if c.port() != port {
            held.push(c);
            continue;
        }
        // The processes are gone (has_controllers looks at them).
        assert!(!c.has_controllers());
        break;
    }
}
