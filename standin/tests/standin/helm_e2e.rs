//! End-to-end: the real helm v3.17.3 and v4.1.4 binaries against the stand-in.
//! Each helm version runs as its own #[test] (in parallel), each with its own stand-in.

use kube_standin::testbed::{self, chart, Helm, HelmOutput};
use kube_standin::StandIn;
use serde_json::{json, Value};
use std::path::Path;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn release_secret(standin: &StandIn, ns: &str, rel: &str, rev: u32) -> Option<Value> {
    standin.get(
        "secrets",
        Some(ns),
        &format!("sh.helm.release.v1.{rel}.v{rev}"),
    )
}

#[track_caller]
fn assert_record(obj: &Option<Value>, rel: &str, rev: u32, status: &str, what: &str) {
    let obj = obj
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: record v{rev} of {rel} missing"));
    let labels = &obj["metadata"]["labels"];
    assert_eq!(labels["name"], rel, "{what}: {obj}");
    assert_eq!(labels["owner"], "helm", "{what}: {obj}");
    assert_eq!(labels["status"], status, "{what}: {labels}");
    assert_eq!(labels["version"], rev.to_string(), "{what}: {labels}");
    assert!(
        obj["data"]["release"]
            .as_str()
            .is_some_and(|r| r.len() > 100),
        "{what}: release data missing"
    );
    if obj["kind"] == "Secret" {
        assert_eq!(obj["type"], "helm.sh/release.v1", "{what}");
    }
}

fn lifecycle(label: &str, bin: &Path) {
    let standin = StandIn::start().expect("stand-in starts");
    standin.create_namespace("apps");
    let helm = Helm::new(bin, &standin);
    let ctx = |what: &str, out: &HelmOutput| format!("{label}: {what}: {}", out.describe());
    let run = |what: &str, args: &[&str]| {
        let out = helm.run(args);
        assert!(out.success, "{}", ctx(what, &out));
        out
    };
    let (c090, c100, c110, c120) = (
        chart("demo", "0.9.0"),
        chart("demo", "1.0.0"),
        chart("demo", "1.1.0"),
        chart("demo", "1.2.0"),
    );

    // A neighbour release in the same namespace: selectors must keep the two apart.
    run(
        "install neighbour",
        &["install", "other", s(&c090), "-n", "apps"],
    );
    let out = run("install", &["install", "rel", s(&c100), "-n", "apps"]);
    assert!(
        out.stdout.contains("STATUS: deployed"),
        "{}",
        ctx("install", &out)
    );
    assert_record(
        &release_secret(&standin, "apps", "rel", 1),
        "rel",
        1,
        "deployed",
        label,
    );
    let cm = standin
        .get("configmaps", Some("apps"), "rel-config")
        .expect("chart ConfigMap");
    assert_eq!(cm["data"]["chartVersion"], "1.0.0");
    assert_eq!(
        cm["metadata"]["annotations"]["meta.helm.sh/release-name"],
        "rel"
    );
    assert!(
        standin.get("services", Some("apps"), "rel-svc").is_some(),
        "{label}: Service"
    );
    let dep = standin
        .get("deployments", Some("apps"), "rel-app")
        .expect("Deployment");
    assert_eq!(
        dep["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.invalid/demo:1.0.0"
    );
    // Release records travel as protobuf; chart objects as JSON.
    let reqs = standin.requests();
    assert!(
        reqs.iter().any(|r| r.verb == "create"
            && r.resource.as_deref() == Some("secrets")
            && r.content_type.as_deref() == Some("application/vnd.kubernetes.protobuf")),
        "{label}: protobuf release create"
    );

    let out = run("upgrade", &["upgrade", "rel", s(&c110), "-n", "apps"]);
    assert!(
        out.stdout.contains("REVISION: 2"),
        "{}",
        ctx("upgrade", &out)
    );
    assert_record(
        &release_secret(&standin, "apps", "rel", 1),
        "rel",
        1,
        "superseded",
        label,
    );
    assert_record(
        &release_secret(&standin, "apps", "rel", 2),
        "rel",
        2,
        "deployed",
        label,
    );
    assert_eq!(
        standin
            .get("configmaps", Some("apps"), "rel-config")
            .unwrap()["data"]["chartVersion"],
        "1.1.0"
    );
    let dep = standin.get("deployments", Some("apps"), "rel-app").unwrap();
    assert_eq!(
        dep["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.invalid/demo:1.1.0"
    );
    assert_eq!(dep["metadata"]["generation"], 2);

    let hist = run("history", &["history", "rel", "-n", "apps", "-o", "json"]).json();
    let h: Vec<(i64, String, String)> = hist
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["revision"].as_i64().unwrap(),
                e["status"].as_str().unwrap().into(),
                e["chart"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        h,
        vec![
            (1, "superseded".into(), "demo-1.0.0".into()),
            (2, "deployed".into(), "demo-1.1.0".into())
        ],
        "{label}: {hist}"
    );

    let st = run("status", &["status", "rel", "-n", "apps", "-o", "json"]).json();
    assert_eq!(
        (
            st["name"].clone(),
            st["version"].clone(),
            st["info"]["status"].clone(),
            st["namespace"].clone()
        ),
        (json!("rel"), json!(2), json!("deployed"), json!("apps")),
        "{label}"
    );

    let list = run("list", &["list", "-n", "apps", "-o", "json"]).json();
    let mut l: Vec<(String, String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().into(),
                e["revision"].as_str().unwrap().into(),
                e["chart"].as_str().unwrap().into(),
            )
        })
        .collect();
    l.sort();
    assert_eq!(
        l,
        vec![
            ("other".into(), "1".into(), "demo-0.9.0".into()),
            ("rel".into(), "2".into(), "demo-1.1.0".into())
        ],
        "{label}: {list}"
    );

    let meta = run(
        "get metadata",
        &["get", "metadata", "rel", "-n", "apps", "-o", "json"],
    )
    .json();
    assert_eq!(
        (
            meta["chart"].clone(),
            meta["version"].clone(),
            meta["revision"].clone()
        ),
        (json!("demo"), json!("1.1.0"), json!(2)),
        "{label}: {meta}"
    );

    run("rollback", &["rollback", "rel", "1", "-n", "apps"]);
    assert_record(
        &release_secret(&standin, "apps", "rel", 2),
        "rel",
        2,
        "superseded",
        label,
    );
    assert_record(
        &release_secret(&standin, "apps", "rel", 3),
        "rel",
        3,
        "deployed",
        label,
    );
    assert_eq!(
        standin
            .get("configmaps", Some("apps"), "rel-config")
            .unwrap()["data"]["chartVersion"],
        "1.0.0"
    );
    let meta = run(
        "get metadata",
        &["get", "metadata", "rel", "-n", "apps", "-o", "json"],
    )
    .json();
    assert_eq!(
        (meta["version"].clone(), meta["revision"].clone()),
        (json!("1.0.0"), json!(3)),
        "{label}: {meta}"
    );

    // ConfigMap driver.
    let out = helm.run_env(
        &["upgrade", "--install", "cmrel", s(&c120), "-n", "apps"],
        &[("HELM_DRIVER", "configmap")],
    );
    assert!(
        out.success,
        "{}",
        ctx("upgrade --install (configmap driver)", &out)
    );
    let rec = standin.get("configmaps", Some("apps"), "sh.helm.release.v1.cmrel.v1");
    assert_record(&rec, "cmrel", 1, "deployed", label);
    assert!(
        release_secret(&standin, "apps", "cmrel", 1).is_none(),
        "{label}: configmap driver wrote a Secret"
    );
    let out = helm.run_env(
        &["upgrade", "--install", "cmrel", s(&c120), "-n", "apps"],
        &[("HELM_DRIVER", "configmap")],
    );
    assert!(
        out.success,
        "{}",
        ctx("second upgrade --install (configmap driver)", &out)
    );
    assert_record(
        &standin.get("configmaps", Some("apps"), "sh.helm.release.v1.cmrel.v2"),
        "cmrel",
        2,
        "deployed",
        label,
    );
    let all = run("list -A", &["list", "-A", "-o", "json"]).json();
    assert_eq!(
        all.as_array().unwrap().len(),
        2,
        "{label}: secret-driver releases across namespaces: {all}"
    );

    run("uninstall", &["uninstall", "rel", "-n", "apps"]);
    for rev in 1..=3 {
        assert!(
            release_secret(&standin, "apps", "rel", rev).is_none(),
            "{label}: record v{rev} left after uninstall"
        );
    }
    assert!(
        standin
            .get("configmaps", Some("apps"), "rel-config")
            .is_none(),
        "{label}"
    );
    assert!(
        standin.get("services", Some("apps"), "rel-svc").is_none(),
        "{label}"
    );
    assert!(
        standin
            .get("deployments", Some("apps"), "rel-app")
            .is_none(),
        "{label}"
    );
    assert!(
        release_secret(&standin, "apps", "other", 1).is_some(),
        "{label}: neighbour's record survives"
    );
    assert!(
        standin
            .get("configmaps", Some("apps"), "other-config")
            .is_some(),
        "{label}: neighbour's objects survive"
    );
    let out = helm.run_env(
        &["uninstall", "cmrel", "-n", "apps"],
        &[("HELM_DRIVER", "configmap")],
    );
    assert!(out.success, "{}", ctx("uninstall (configmap driver)", &out));
    assert!(
        standin
            .get("configmaps", Some("apps"), "sh.helm.release.v1.cmrel.v1")
            .is_none(),
        "{label}"
    );
    let list = run("list", &["list", "-n", "apps", "-o", "json"]).json();
    assert_eq!(list.as_array().unwrap().len(), 1, "{label}: {list}");
}

fn wait(label: &str, bin: &Path) {
    let standin = StandIn::start().expect("stand-in starts");
    let helm = Helm::new(bin, &standin);
    let out = helm.run(&[
        "install",
        "w",
        s(&chart("demo", "1.0.0")),
        "-n",
        "waitns",
        "--create-namespace",
        "--wait",
        "--timeout",
        "60s",
    ]);
    assert!(out.success, "{label}: install --wait: {}", out.describe());
    assert!(standin.get("namespaces", None, "waitns").is_some());
    let out = helm.run(&[
        "upgrade",
        "w",
        s(&chart("demo", "1.1.0")),
        "-n",
        "waitns",
        "--wait",
        "--timeout",
        "60s",
    ]);
    assert!(out.success, "{label}: upgrade --wait: {}", out.describe());
    let d = standin.get("deployments", Some("waitns"), "w-app").unwrap();
    assert_eq!(d["status"]["updatedReplicas"], 1);
    let rs = standin.list("replicasets", Some("waitns"));
    assert_eq!(rs.len(), 2, "{label}: old and new ReplicaSet");
    assert_eq!(
        standin.list("pods", Some("waitns")).len(),
        1,
        "{label}: one pod of the new template"
    );
    // Which API the waiting used: helm 4 watches, helm 3 polls.
    let watched = standin.requests().iter().any(|r| r.verb == "watch");
    assert_eq!(watched, label == "helm4", "{label}: watch use");
}

#[test]
fn helm3_lifecycle() {
    lifecycle("helm3", &testbed::helm3());
}

#[test]
fn helm4_lifecycle() {
    lifecycle("helm4", &testbed::helm4());
}

#[test]
fn helm3_wait() {
    wait("helm3", &testbed::helm3());
}

#[test]
fn helm4_wait() {
    wait("helm4", &testbed::helm4());
}

/// Helm 4 `--server-side=true` on a release installed by Helm 3 (client-side apply): Helm 4
/// first rewrites managedFields with a JSON patch, then applies; a field later taken by another
/// manager conflicts until `--force-conflicts`.
#[test]
fn helm4_server_side_takes_over_helm3_release() {
    let standin = StandIn::start().expect("stand-in starts");
    let h3 = Helm::new(&testbed::helm3(), &standin);
    let h4 = Helm::new(&testbed::helm4(), &standin);
    let out = h3.run(&[
        "install",
        "mix",
        s(&chart("demo", "1.0.0")),
        "-n",
        "default",
    ]);
    assert!(out.success, "{}", out.describe());
    let out = h4.run(&[
        "upgrade",
        "mix",
        s(&chart("demo", "1.1.0")),
        "-n",
        "default",
        "--server-side=true",
    ]);
    assert!(out.success, "{}", out.describe());
    assert!(standin
        .requests()
        .iter()
        .any(|r| r.verb == "patch"
            && r.content_type.as_deref() == Some("application/json-patch+json")));
    let cm = standin
        .get("configmaps", Some("default"), "mix-config")
        .unwrap();
    let mf = cm["metadata"]["managedFields"].as_array().unwrap();
    assert!(
        mf.iter()
            .any(|e| e["manager"] == "helm" && e["operation"] == "Apply"),
        "{cm}"
    );
    assert_eq!(cm["data"]["chartVersion"], "1.1.0");
    // Someone else takes data.message.
    let r = crate::common::patch(&standin.url(), "/api/v1/namespaces/default/configmaps/mix-config?fieldManager=intruder&force=true", "application/apply-patch+yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: mix-config\ndata:\n  message: hijacked\n");
    assert_eq!(r.status, 200);
    let out = h4.run(&[
        "upgrade",
        "mix",
        s(&chart("demo", "1.2.0")),
        "-n",
        "default",
        "--server-side=true",
    ]);
    assert!(!out.success, "conflict expected: {}", out.describe());
    assert!(out.stderr.contains("conflict"), "{}", out.describe());
    let out = h4.run(&[
        "upgrade",
        "mix",
        s(&chart("demo", "1.2.0")),
        "-n",
        "default",
        "--server-side=true",
        "--force-conflicts",
    ]);
    assert!(out.success, "{}", out.describe());
    let cm = standin
        .get("configmaps", Some("default"), "mix-config")
        .unwrap();
    assert_eq!(cm["data"]["message"], "hello from demo 1.2.0");
}
