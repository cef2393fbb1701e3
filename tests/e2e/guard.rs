//! End to end: guarded-upgrade with real helm against the real API server (helm 3.21.4 and
//! 4.3.2; the main flow also with 3.17.3 and 4.1.4), and against the API stand-in where a
//! fault is injected by request position (503, dropped connections).

use std::time::{Duration, Instant};

use crate::common::{bed, chart, dead_port, grant_role, kubeconfig_with_server, wait_allowed, Bed};
use kube_standin::{Fault, FaultAction};

const NS: &str = "shared";

/// The skip line for re-running 1.0.0 over revision 1 under the default policy.
const SKIP_NOT_NEWER_100: &str = "skip: release \"db\" in \"shared\" is at 1.0.0 (revision 1); \
     target 1.0.0 is not newer (policy newer; use --min-version-policy newer-or-equal to re-apply)";

fn setup(label: &str) -> Bed {
    let b = bed(label);
    b.api.create_namespace(NS);
    b
}

/// install 1.0.0 -> same skipped (no helm, no write) -> 0.9.0 downgrade skipped -> 1.1.0.
fn main_flow(label: &str) {
    let b = setup(label);
    let c100 = chart("demo-1.0.0");
    let run = b.guard(&["upgrade", "--install", "db", &c100, "-n", NS]);
    run.expect_code(0, "first install");
    run.assert_stderr_line(r#"install: "db" in "shared" 1.0.0 (not installed yet)"#);
    assert_eq!(b.deployed("db", NS), ("1.0.0".into(), 1));

    b.api.clear_requests();
    let run = b.guard(&["upgrade", "--install", "db", &c100, "-n", NS]);
    run.expect_code(0, "same version");
    run.assert_stderr(&[SKIP_NOT_NEWER_100]);
    assert!(
        !run.stdout.contains("Release \"db\""),
        "helm ran: {}",
        run.stdout
    );
    assert_eq!(b.writes(), Vec::<String>::new(), "a skip must not write");

    let run = b.guard(&["upgrade", "-i", "db", &chart("demo-0.9.0"), "-n", NS]);
    run.expect_code(0, "downgrade");
    run.assert_stderr(&[
        r#"skip: release "db" in "shared" is at 1.0.0 (revision 1); target 0.9.0 would be a downgrade"#,
    ]);
    assert_eq!(b.deployed("db", NS), ("1.0.0".into(), 1));

    let run = b.guard(&["upgrade", "db", &chart("demo-1.1.0"), "-n", NS]);
    run.expect_code(0, "upgrade");
    run.assert_stderr_line(r#"upgrade: "db" in "shared" 1.0.0 -> 1.1.0"#);
    assert_eq!(b.deployed("db", NS), ("1.1.0".into(), 2));
    // Values never leak into our own output.
    assert!(!run.stderr.contains("hunter2"));
}

/// Policies: newer-or-equal re-applies, off allows a downgrade.
fn policies(label: &str) {
    let b = setup(label);
    b.guard(&["upgrade", "db", &chart("demo-1.1.0"), "-n", NS])
        .expect_code(0, "install");
    b.guard(&[
        "upgrade",
        "db",
        &chart("demo-1.1.0"),
        "-n",
        NS,
        "--min-version-policy",
        "newer-or-equal",
    ])
    .expect_code(0, "re-apply")
    .assert_stderr_line(
        r#"upgrade: "db" in "shared" 1.1.0 -> 1.1.0 (re-apply, policy newer-or-equal)"#,
    );
    assert_eq!(b.deployed("db", NS), ("1.1.0".into(), 2));
    b.guard(&[
        "upgrade",
        "db",
        &chart("demo-1.0.0"),
        "--min-version-policy=off",
        "-n",
        NS,
    ])
    .expect_code(0, "downgrade with off")
    .assert_stderr_line(r#"upgrade: "db" in "shared" 1.1.0 -> 1.0.0 (version policy off)"#);
    assert_eq!(b.deployed("db", NS), ("1.0.0".into(), 3));

    // `upgrade --decision-output json`: the decision goes to stderr, stdout stays helm's.
    let run = b.guard(&[
        "upgrade",
        "db",
        &chart("demo-1.2.0"),
        "-n",
        NS,
        "--decision-output",
        "json",
        "-o",
        "json",
    ]);
    run.expect_code(0, "upgrade with JSON decision");
    let decision_line = run
        .stderr
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON on stderr: {}", run.stderr));
    let json: serde_json::Value = serde_json::from_str(decision_line).unwrap();
    assert_eq!(json["action"], "upgrade");
    assert_eq!(
        json["message"],
        r#"upgrade: "db" in "shared" 1.0.0 -> 1.2.0"#
    );
    run.assert_stderr_line(r#"upgrade: "db" in "shared" 1.0.0 -> 1.2.0"#);
    assert_eq!(json["serialized"], true);
    assert_eq!(json["deployed"]["version"], "1.0.0");
    // helm's own `-o json` reached helm untouched: its stdout is helm's release JSON.
    let helm_json: serde_json::Value = serde_json::from_str(run.stdout.trim())
        .unwrap_or_else(|e| panic!("helm stdout is not JSON ({e}): {}", run.stdout));
    assert_eq!(helm_json["name"], "db");
}

/// `check` decides like `upgrade` but never writes; JSON carries metadata only.
fn check_is_read_only(label: &str) {
    let b = setup(label);
    b.guard(&[
        "upgrade",
        "db",
        &chart("demo-1.0.0"),
        "-n",
        NS,
        "--set",
        "password=s3cr3t-value",
    ])
    .expect_code(0, "install");
    b.api.clear_requests();
    let run = b.guard(&["check", "db", &chart("demo-1.1.0"), "-n", NS, "-o", "json"]);
    run.expect_code(0, "check");
    let json: serde_json::Value = serde_json::from_str(run.stdout.trim()).expect(&run.stdout);
    assert_eq!(json["action"], "upgrade");
    assert_eq!(json["reason"], "newer");
    assert_eq!(json["release"], "db");
    assert_eq!(json["namespace"], NS);
    assert_eq!(json["deployed"]["version"], "1.0.0");
    assert_eq!(json["deployed"]["revision"], 1);
    assert_eq!(json["deployed"]["chart"], "demo");
    assert_eq!(json["target"]["version"], "1.1.0");
    assert_eq!(json["policy"], "newer");
    let run2 = b.guard(&[
        "check",
        "db",
        &chart("demo-0.9.0"),
        "-n",
        NS,
        "--output=json",
    ]);
    let json2: serde_json::Value = serde_json::from_str(run2.stdout.trim()).expect(&run2.stdout);
    assert_eq!(json2["action"], "skip");
    assert_eq!(json2["reason"], "downgrade");
    for out in [&run.stdout, &run.stderr, &run2.stdout, &run2.stderr] {
        assert!(
            !out.contains("s3cr3t-value") && !out.contains("hunter2"),
            "{out}"
        );
    }
    assert_eq!(b.writes(), Vec::<String>::new(), "check must not write");
    assert_eq!(b.deployed("db", NS), ("1.0.0".into(), 1));
}

/// A failed upgrade does not count as deployed: the retry compares with the last deployed.
fn failed_upgrade_then_retry(label: &str) {
    let b = setup(label);
    b.guard(&["upgrade", "db", &chart("demo-1.0.0"), "-n", NS])
        .expect_code(0, "install");
    // Make the chart's Deployment update fail so helm records a failed revision: an
    // admission policy of the real server refuses it.
    freeze_deployments(&b, true);
    let run = b.guard(&["upgrade", "db", &chart("demo-1.1.0"), "-n", NS]);
    assert_ne!(run.code, 0, "helm should fail: {}", run.stderr);
    assert!(
        run.stderr
            .contains("deployment updates are frozen by the test"),
        "helm failed for another reason: {}",
        run.stderr
    );
    freeze_deployments(&b, false);
    let history = b.history("db", NS);
    assert_eq!(history.last().unwrap()["status"], "failed", "{history:?}");
    let run = b.guard(&["upgrade", "db", &chart("demo-1.1.0"), "-n", NS]);
    run.expect_code(0, "retry after failure");
    run.assert_stderr_line(r#"upgrade: "db" in "shared" 1.0.0 -> 1.1.0"#);
    // The note about the failed revision.
    run.assert_stderr_line(
        "  note: later revision 2 is failed and is not counted as deployed; comparing with \
         deployed revision 1",
    );
    assert_eq!(b.deployed("db", NS).0, "1.1.0");
}

const FREEZE: &str = "freeze-deployments";

/// Turns on or off a ValidatingAdmissionPolicy (bound to namespace `shared`) that denies
/// every update of a Deployment, and waits until the server enforces (or no longer
/// enforces) it: an admin dry-run update of `db-app` is refused (or accepted).
fn freeze_deployments(b: &Bed, on: bool) {
    if on {
        b.api.put_object(
            "validatingadmissionpolicies",
            serde_json::json!({
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicy",
                "metadata": {"name": FREEZE},
                "spec": {
                    "failurePolicy": "Fail",
                    "matchConstraints": {"resourceRules": [{
                        "apiGroups": ["apps"], "apiVersions": ["v1"],
                        "operations": ["UPDATE"], "resources": ["deployments"]}]},
                    "validations": [{"expression": "false",
                                     "message": "deployment updates are frozen by the test"}],
                },
            }),
        );
        b.api.put_object(
            "validatingadmissionpolicybindings",
            serde_json::json!({
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicyBinding",
                "metadata": {"name": FREEZE},
                "spec": {
                    "policyName": FREEZE,
                    "validationActions": ["Deny"],
                    "matchResources": {"namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": NS}}},
                },
            }),
        );
    } else {
        b.api
            .delete_object("validatingadmissionpolicybindings", None, FREEZE);
        b.api
            .delete_object("validatingadmissionpolicies", None, FREEZE);
    }
    let real = b.api.real();
    let path = format!("/apis/apps/v1/namespaces/{NS}/deployments/db-app");
    let started = Instant::now();
    loop {
        let current = b
            .api
            .get("deployments", Some(NS), "db-app")
            .expect("the release's Deployment");
        let (code, answer) = real.request("PUT", &format!("{path}?dryRun=All"), Some(&current));
        if (code == 200) != on {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the freeze policy is not {} after 30 s: {code} {answer}",
            if on { "enforced" } else { "gone" }
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The ConfigMap driver.
fn configmap_driver(label: &str) {
    let b = setup(label);
    let env = [("HELM_DRIVER", "configmap")];
    b.guard_env(&["upgrade", "db", &chart("demo-1.0.0"), "-n", NS], &env)
        .expect_code(0, "install");
    assert!(b
        .api
        .get("configmaps", Some(NS), "sh.helm.release.v1.db.v1")
        .is_some());
    assert!(b
        .api
        .get("secrets", Some(NS), "sh.helm.release.v1.db.v1")
        .is_none());
    let run = b.guard_env(&["upgrade", "db", &chart("demo-1.0.0"), "-n", NS], &env);
    run.expect_code(0, "skip");
    run.assert_stderr(&[SKIP_NOT_NEWER_100]);
    b.guard_env(&["upgrade", "db", &chart("demo-1.1.0"), "-n", NS], &env)
        .expect_code(0, "upgrade");
    // Without the env var the secret driver sees nothing: a fresh install would be tried.
    let run = b.guard(&["check", "db", &chart("demo-1.1.0"), "-n", NS, "-o", "json"]);
    let json: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(json["reason"], "not-installed");
}

/// A packaged chart (.tgz) is read without unpacking.
fn packaged_chart(label: &str) {
    let b = setup(label);
    let out = b.home().join("pkg");
    b.helm(&["package", &chart("demo-1.2.0"), "-d", out.to_str().unwrap()])
        .expect_code(0, "helm package");
    let tgz = out.join("demo-1.2.0.tgz");
    b.guard(&["upgrade", "db", &chart("demo-1.1.0"), "-n", NS])
        .expect_code(0, "install 1.1.0");
    let run = b.guard(&["upgrade", "db", tgz.to_str().unwrap(), "-n", NS]);
    run.expect_code(0, "upgrade from tgz");
    run.assert_stderr_line(r#"upgrade: "db" in "shared" 1.1.0 -> 1.2.0"#);
    assert_eq!(b.deployed("db", NS).0, "1.2.0");
}

/// API down (nothing listening where the kubeconfig points): exit 3 after bounded
/// retries, helm not run, the message names release, namespace and step.
fn api_down_fails_closed(label: &str) {
    let b = setup(label);
    let dead = format!("https://127.0.0.1:{}", dead_port());
    let kubeconfig = kubeconfig_with_server(&b, &dead);
    let run = b.guard_env(
        &["upgrade", "db", &chart("demo-1.0.0"), "-n", NS],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    );
    run.expect_code(3, "api down");
    run.assert_error_after_retries(
        "listing Secrets (name=db,owner=helm) in namespace \"shared\"",
        3,
        &format!(
            "release \"db\" in namespace \"shared\": reading the deployed release: listing \
             Secret records: API server {dead} (context \"{}\"): connection refused; check that \
             the API server is up and the address and port are right; helm was not run",
            b.api.context()
        ),
    );
    assert!(b
        .api
        .get("secrets", Some(NS), "sh.helm.release.v1.db.v1")
        .is_none());
}

/// A connection the server drops (stand-in: every request): the same, naming the break.
fn api_drops_connections_fails_closed(label: &str) {
    let b = setup(label);
    b.api.inject(Fault {
        verb: None,
        resource: None,
        name: None,
        action: FaultAction::Drop,
        times: None,
    });
    let run = b.guard(&["upgrade", "db", &chart("demo-1.0.0"), "-n", NS]);
    run.expect_code(3, "api down");
    run.assert_error_after_retries(
        "listing Secrets (name=db,owner=helm) in namespace \"shared\"",
        3,
        &format!(
            "release \"db\" in namespace \"shared\": reading the deployed release: listing \
             Secret records: API server {} (context \"standin\"): the connection broke \
             (ServiceError: client error (SendRequest): connection closed before message \
             completed); retry; if this persists, check the network path to the server; helm \
             was not run",
            b.api.url()
        ),
    );
    b.api.clear_faults();
    assert!(b
        .api
        .get("secrets", Some(NS), "sh.helm.release.v1.db.v1")
        .is_none());
}

/// Transient API errors (503, a dropped connection) are retried; the run succeeds.
fn transient_errors_are_retried(label: &str) {
    let b = setup(label);
    b.api.inject(Fault {
        verb: Some("list".into()),
        resource: Some("secrets".into()),
        name: None,
        action: FaultAction::Status(503),
        times: Some(2),
    });
    b.api.inject(Fault {
        verb: Some("get".into()),
        resource: Some("leases".into()),
        name: None,
        action: FaultAction::Drop,
        times: Some(1),
    });
    b.guard(&["upgrade", "db", &chart("demo-1.0.0"), "-n", NS])
        .expect_code(0, "install despite transient errors");
    assert_eq!(b.deployed("db", NS).0, "1.0.0");
}

/// Forbidden reads fail closed with the step named; helm is not run. A restricted user has
/// everything an upgrade needs before helm runs except `list` on Secrets: the real server
/// refuses that list, in its own words.
fn forbidden_fails_closed(label: &str) {
    let b = setup(label);
    grant_role(
        &b,
        "alice",
        NS,
        "upgrade-but-list",
        serde_json::json!([
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
             "verbs": ["get", "create", "update"]},
        ]),
    );
    wait_allowed(&b, "alice", NS, "update", "coordination.k8s.io/leases");
    let kubeconfig = b.api.real().kubeconfig_for("alice", Some(NS));
    let run = b.guard_env(
        &["upgrade", "db", &chart("demo-1.0.0"), "-n", NS],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    );
    run.expect_code(3, "forbidden");
    run.assert_error(&format!(
        "release \"db\" in namespace \"shared\": reading the deployed release: listing Secret \
         records: API server {} (context \"testbed\"): 403 Forbidden: secrets is forbidden: \
         User \"alice\" cannot list resource \"secrets\" in API group \"\" in the \
         namespace \"shared\"; grant this identity the permission (RBAC), or use a \
         context/--kube-as-user that has it; helm was not run",
        b.api.url()
    ));
    assert!(b
        .api
        .get("secrets", Some(NS), "sh.helm.release.v1.db.v1")
        .is_none());
    // Nothing was written, and the mutex is not left held.
    assert_eq!(
        b.writes().iter().filter(|w| !w.contains("/leases")).count(),
        0
    );
    if let Some(lease) = b.api.get("leases", Some(NS), "helm-lock-db") {
        let holder = &lease["spec"]["holderIdentity"];
        assert!(
            holder.is_null() || holder == "",
            "the mutex is still held: {lease}"
        );
    }
}

fn synthetic_record(b: &Bed, revision: u64, status: &str, version: &str, payload: Option<&str>) {
    let release = serde_json::json!({
        "name": "db", "namespace": NS, "version": revision,
        "info": { "status": status, "description": "synthetic" },
        "chart": { "metadata": { "name": "demo", "version": version } },
        "config": { "password": "hunter2-synthetic" },
        "manifest": "x".repeat(2000),
    });
    let encoded = match payload {
        Some(p) => p.to_string(),
        None => guarded_upgrade::release::encode_release_json(&release).unwrap(),
    };
    use base64::Engine;
    let wire = base64::engine::general_purpose::STANDARD.encode(encoded.as_bytes());
    b.api.put_object(
        "secrets",
        serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "type": "helm.sh/release.v1",
            "metadata": {
                "name": format!("sh.helm.release.v1.db.v{revision}"), "namespace": NS,
                "labels": { "name": "db", "owner": "helm", "status": status,
                            "version": revision.to_string() }
            },
            "data": { "release": wire }
        }),
    );
}

/// An undecodable deployed record: exit 3 naming the record; values never printed.
fn corrupt_record_fails_closed(label: &str) {
    let b = setup(label);
    synthetic_record(&b, 1, "deployed", "1.0.0", Some("H4sI-not-base64!"));
    let run = b.guard(&["upgrade", "db", &chart("demo-1.1.0"), "-n", NS]);
    run.expect_code(3, "corrupt record");
    run.assert_error(
        "release \"db\" in namespace \"shared\": reading the deployed release: cannot decode \
         Secret \"sh.helm.release.v1.db.v1\": release record is not valid base64 (bad input at \
         byte 4): expected the base64(gzip(JSON)) text Helm writes; the record may be corrupt \
         or not written by Helm; helm was not run",
    );
}

/// Reads do not grow with history: one metadata list and one GET for 40 revisions.
fn reads_do_not_grow_with_history(label: &str) {
    let b = setup(label);
    for rev in 1..=40u64 {
        let status = if rev == 40 { "deployed" } else { "superseded" };
        synthetic_record(&b, rev, status, &format!("1.{rev}.0"), None);
    }
    b.api.clear_requests();
    let run = b.guard(&["check", "db", &chart("demo-1.0.0"), "-n", NS, "-o", "json"]);
    run.expect_code(0, "check");
    let json: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(json["deployed"]["version"], "1.40.0");
    assert_eq!(json["deployed"]["revision"], 40);
    assert_eq!(json["reason"], "downgrade");
    // Exactly two requests for the release records, whatever the history: the list (of
    // metadata only, as the stand-in's log shows; the audit log has no Accept header) and
    // the one GET of the latest deployed record. (The query starts with `&`: the kube
    // client writes list queries so; both servers accept it.)
    let secret_requests: Vec<String> = b
        .api
        .requests()
        .iter()
        .filter(|r| r.resource.as_deref() == Some("secrets"))
        .map(|r| format!("{} {}?{} -> {}", r.verb, r.path, r.query, r.status))
        .collect();
    assert_eq!(
        secret_requests,
        [
            format!("list /api/v1/namespaces/{NS}/secrets?&labelSelector=name%3Ddb%2Cowner%3Dhelm&limit=1000 -> 200"),
            format!("get /api/v1/namespaces/{NS}/secrets/sh.helm.release.v1.db.v40? -> 200"),
        ],
    );
    if !b.api.is_real() {
        let accepts: Vec<Option<String>> = b
            .api
            .requests()
            .into_iter()
            .filter(|r| r.resource.as_deref() == Some("secrets"))
            .map(|r| r.accept)
            .collect();
        assert!(
            accepts[0]
                .as_deref()
                .is_some_and(|a| a.contains("PartialObjectMetadataList")),
            "the list must be metadata-only: {accepts:#?}"
        );
    }
    assert!(!run.stdout.contains("hunter2") && !run.stderr.contains("hunter2"));
}

/// Issue 29: `check` and `status` read on one connection for the whole run, and ask only
/// what their answer needs: the metadata list, the deployed record and the mutex Lease.
/// The Lease is read while the release is over HTTP/2 (kube-apiserver offers it), after
/// it over HTTP/1.1 (the stand-in); either way one connection. A Lease that is not there
/// is read once: the server's 404 names it.
fn one_connection_and_only_the_needed_reads(label: &str) {
    let b = setup(label);
    b.guard(&["upgrade", "db", &chart("demo-1.0.0"), "-n", NS])
        .expect_code(0, "install");
    let front = crate::common::Front::of(&b);
    let kubeconfig = kubeconfig_with_server(&b, &front.url(&b));
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    let protocol = if b.api.is_real() {
        "HTTP/2"
    } else {
        "HTTP/1.1"
    };
    let c110 = chart("demo-1.1.0");
    let check = ["check", "db", c110.as_str(), "-n", NS, "--debug"];
    let status = ["status", "db", "-n", NS, "--debug"];
    for lease in ["released", "absent"] {
        if lease == "absent" {
            assert!(b.api.delete_object("leases", Some(NS), "helm-lock-db"));
        }
        for args in [&check[..], &status[..]] {
            front.take_connections();
            b.api.clear_requests();
            let run = b.guard_env(args, &[("KUBECONFIG", kubeconfig.as_str())]);
            run.expect_code(0, args[0]);
            let mut asked: Vec<String> = b
                .api
                .requests()
                .iter()
                .filter(|r| {
                    r.user_agent
                        .as_deref()
                        .is_some_and(|a| a.starts_with("guarded-upgrade/"))
                })
                .map(|r| {
                    format!(
                        "{} {} {} -> {}",
                        r.verb,
                        r.resource.as_deref().unwrap_or(""),
                        r.name.as_deref().unwrap_or(""),
                        r.status
                    )
                })
                .collect();
            asked.sort();
            let lease_code = if lease == "absent" { 404 } else { 200 };
            assert_eq!(
                asked,
                [
                    format!("get leases helm-lock-db -> {lease_code}"),
                    "get secrets sh.helm.release.v1.db.v1 -> 200".to_string(),
                    "list secrets  -> 200".to_string(),
                ],
                "{} with the Lease {lease}:\n{}",
                args[0],
                run.stderr
            );
            let connected: Vec<&str> = run
                .stderr
                .lines()
                .filter(|l| l.starts_with("debug: connected to "))
                .collect();
            assert_eq!(
                connected,
                [format!(
                    "debug: connected to {} ({protocol})",
                    front.url(&b)
                )],
                "{}",
                run.stderr
            );
            assert_eq!(front.take_connections(), 1, "{}", run.stderr);
        }
    }
}

/// Helm's environment chooses namespace and driver; unsupported drivers fail before helm.
fn helm_environment(label: &str) {
    let b = setup(label);
    b.guard_env(
        &["upgrade", "db", &chart("demo-1.0.0")],
        &[("HELM_NAMESPACE", NS)],
    )
    .expect_code(0, "HELM_NAMESPACE");
    assert_eq!(b.deployed("db", NS).0, "1.0.0");
    let memory = "HELM_DRIVER=memory is not supported: helm keeps such releases only inside \
                  its own process; guarded-upgrade reads releases from Secrets (default), \
                  ConfigMaps (HELM_DRIVER=configmap) or PostgreSQL (HELM_DRIVER=sql)";
    let sql = "HELM_DRIVER=sql needs HELM_DRIVER_SQL_CONNECTION_STRING (the PostgreSQL \
               connection string helm uses)";
    let bogus = "HELM_DRIVER=\"bogus\" is not a helm storage driver (use secret, configmap, sql \
                 or memory)";
    // The environment is configuration: usage errors (exit 2) before any request.
    let requests_before = b.api.requests().len();
    for (driver, message) in [("sql", sql), ("memory", memory), ("bogus", bogus)] {
        let run = b.guard_env(
            &["upgrade", "db", &chart("demo-1.1.0"), "-n", NS],
            &[("HELM_DRIVER", driver)],
        );
        run.expect_code(2, driver);
        run.assert_error(message);
    }
    let run = b.guard_env(&["lock", "db", "-n", NS], &[("HELM_DRIVER", "memory")]);
    run.expect_code(2, "lock with HELM_DRIVER=memory");
    run.assert_error(memory);
    assert_eq!(
        b.api.requests().len(),
        requests_before,
        "no request was made"
    );
    assert_eq!(b.deployed("db", NS).0, "1.0.0");
}

/// Usage errors exit 2; a missing helm is reported before anything else (exit 3).
fn usage_and_missing_helm(label: &str) {
    let b = setup(label);
    let run = b.guard(&["upgrade", "db"]);
    run.expect_code(2, "missing chart");
    run.assert_error("missing CHART: usage is `upgrade [flags] RELEASE CHART`");
    let run = b.guard(&[
        "upgrade",
        "db",
        &chart("demo-1.0.0"),
        "--min-version-policy",
        "older",
    ]);
    run.expect_code(2, "bad policy");
    run.assert_error(
        "--min-version-policy: unknown version policy \"older\": use one of newer, \
         newer-or-equal, newer-or-changed, off",
    );
    b.api.clear_requests();
    let run = b.guard(&[
        "upgrade",
        "db",
        &chart("demo-1.0.0"),
        "-n",
        NS,
        "--helm",
        "/nonexistent/helm",
    ]);
    run.expect_code(3, "missing helm");
    run.assert_error(
        "helm not found: \"/nonexistent/helm\" (cannot find binary path); install helm, put it \
         on PATH, or pass --helm PATH (or set HELM_BIN); helm was not run",
    );
    assert!(
        b.api.requests().is_empty(),
        "nothing may happen before the helm check"
    );
    let run = b.guard(&[
        "upgrade",
        "db",
        &chart("demo-1.0.0"),
        "-n",
        NS,
        "--detailed-exitcode",
    ]);
    run.expect_code(11, "detailed: changed");
    run.assert_stderr_line(r#"install: "db" in "shared" 1.0.0 (not installed yet)"#);
    let run = b.guard(&[
        "upgrade",
        "db",
        &chart("demo-1.0.0"),
        "-n",
        NS,
        "--detailed-exitcode",
    ]);
    run.expect_code(10, "detailed: skipped");
    run.assert_stderr(&[SKIP_NOT_NEWER_100]);
}

/// `--kubeconfig` and `--kube-context` choose the cluster as they do for helm, and reach
/// helm unchanged; the context's namespace is the default namespace.
fn kube_selection(label: &str) {
    use base64::Engine;
    let b = setup(label);
    let url = b.api.url();
    let real = b.api.real();
    let ca = base64::engine::general_purpose::STANDARD.encode(real.ca_pem());
    let token = real.admin_token();
    let kubeconfig = b.home().join("two-contexts.yaml");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: real\n  cluster:\n    server: {url}\n\
             \x20   certificate-authority-data: {ca}\n\
             - name: dead\n  cluster:\n    server: http://127.0.0.1:9\ncontexts:\n\
             - name: good\n  context:\n    cluster: real\n    user: u\n    namespace: {NS}\n\
             - name: broken\n  context:\n    cluster: dead\n    user: u\n\
             current-context: broken\nusers:\n- name: u\n  user:\n    token: {token}\n"
        ),
    )
    .unwrap();
    let kc = kubeconfig.to_str().unwrap();
    let missing = [("KUBECONFIG", "/nonexistent/kubeconfig")];
    let run = b.guard_env(
        &[
            "upgrade",
            "db",
            &chart("demo-1.0.0"),
            "--kubeconfig",
            kc,
            "--kube-context",
            "good",
        ],
        &missing,
    );
    run.expect_code(0, "--kubeconfig + --kube-context");
    run.assert_stderr_line(r#"install: "db" in "shared" 1.0.0 (not installed yet)"#);
    assert_eq!(b.deployed("db", NS).0, "1.0.0");
    // HELM_KUBECONTEXT does the same; the broken current context is never used.
    let run = b.guard_env(
        &[
            "check",
            "db",
            &chart("demo-1.0.0"),
            "--kubeconfig",
            kc,
            "-o",
            "json",
        ],
        &[("HELM_KUBECONTEXT", "good")],
    );
    run.expect_code(0, "HELM_KUBECONTEXT");
    let json: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(json["reason"], "not-newer");
    // The broken current context: unreachable, fail closed.
    let run = b.guard_env(
        &["check", "db", &chart("demo-1.0.0"), "--kubeconfig", kc],
        &[],
    );
    run.expect_code(3, "broken context");
    run.assert_error_after_retries(
        "listing Secrets (name=db,owner=helm) in namespace \"default\"",
        3,
        "release \"db\" in namespace \"default\": reading the deployed release: listing Secret \
         records: API server http://127.0.0.1:9 (context \"broken\"): connection refused; check \
         that the API server is up and the address and port are right",
    );
}

mod compat {
    use super::main_flow;
    crate::common::per_helm_compat!(main_flow);
}

crate::common::per_helm_standin!(
    api_drops_connections_fails_closed,
    transient_errors_are_retried,
    reads_do_not_grow_with_history,
    one_connection_and_only_the_needed_reads,
);

crate::common::per_helm!(
    policies,
    check_is_read_only,
    failed_upgrade_then_retry,
    configmap_driver,
    packaged_chart,
    api_down_fails_closed,
    forbidden_fails_closed,
    corrupt_record_fails_closed,
    reads_do_not_grow_with_history,
    one_connection_and_only_the_needed_reads,
    helm_environment,
    usage_and_missing_helm,
    kube_selection,
);
