//! End to end: the per-release mutex (issue 5) with real helm against the API stand-in.

use std::time::{Duration, Instant};

use crate::common::{bed, chart, finish, Bed};
use kube_standin::{Fault, FaultAction};

const NS: &str = "shared";

fn setup(label: &str) -> Bed {
    let b = bed(label);
    b.api.create_namespace(NS);
    b
}

fn fault(verb: Option<&str>, resource: &str, action: FaultAction, times: Option<u32>) -> Fault {
    Fault {
        verb: verb.map(str::to_string),
        resource: Some(resource.to_string()),
        name: None,
        action,
        times,
    }
}

/// Polls `done` every 50 ms; fails the test after `limit`.
fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A Lease held by someone else, renewed just now.
fn foreign_lease(b: &Bed, release: &str, holder: &str, duration: i64) {
    let now = jiff::Timestamp::now().as_second();
    let ts = |secs: i64| {
        jiff::Timestamp::from_second(secs)
            .unwrap()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    b.api.put_object(
        "leases",
        serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": { "name": format!("helm-lock-{release}"), "namespace": NS },
            "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": duration,
                "acquireTime": ts(now - 5),
                "renewTime": ts(now),
                "leaseTransitions": 0
            }
        }),
    );
}

fn record_status(b: &Bed, release: &str, revision: u64) -> Option<String> {
    let obj = b.api.get(
        "secrets",
        Some(NS),
        &format!("sh.helm.release.v1.{release}.v{revision}"),
    )?;
    obj["metadata"]["labels"]["status"]
        .as_str()
        .map(str::to_string)
}

/// N concurrent pipelines with shuffled targets: the end state is the newest version,
/// deployed versions never go down, nobody hits helm's "another operation" error.
fn concurrent_pipelines(label: &str) {
    let b = setup(label);
    let mut versions: Vec<String> = (0..8).map(|i| format!("1.{i}.0")).collect();
    // Deterministic shuffle that differs per run.
    let mut seed = std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    for i in (1..versions.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        versions.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    let charts: Vec<String> = versions.iter().map(|v| b.versioned_chart(v)).collect();
    let children: Vec<_> = charts
        .iter()
        .map(|c| b.guard_spawn(&["upgrade", "--install", "db", c, "-n", NS]))
        .collect();
    let runs: Vec<_> = children.into_iter().map(finish).collect();
    for (v, run) in versions.iter().zip(&runs) {
        run.expect_code(0, &format!("pipeline targeting {v}"));
        assert!(
            !run.stderr.contains("another operation"),
            "{v}: {}",
            run.stderr
        );
    }
    assert_eq!(b.deployed("db", NS).0, "1.7.0", "order was {versions:?}");
    let history = b.history("db", NS);
    let mut previous = (0, 0, 0);
    for rev in &history {
        let status = rev["status"].as_str().unwrap_or_default();
        assert!(!status.starts_with("pending"), "{history:?}");
        if status == "deployed" || status == "superseded" {
            let chart = rev["chart"].as_str().unwrap_or_default();
            let v: Vec<u64> = chart
                .trim_start_matches("demo-")
                .split('.')
                .map(|p| p.parse().unwrap())
                .collect();
            let v = (v[0], v[1], v[2]);
            assert!(v > previous, "version went down at {rev}: {history:?}");
            previous = v;
        }
    }
}

/// A holder killed with SIGKILL mid-upgrade: the next run waits, takes over after expiry,
/// reports the interrupted pending record (exit 3); with --recover-pending-after it marks
/// that record failed and proceeds.
fn killed_holder(label: &str) {
    let b = setup(label);
    b.guard(&["upgrade", "db", &chart("demo-1.0.0"), "-n", NS])
        .expect_code(0, "install");
    // Keep helm busy once it has written its pending record.
    b.api.inject(fault(
        None,
        "deployments",
        FaultAction::Delay(Duration::from_secs(60)),
        None,
    ));
    let child = b.guard_spawn(&[
        "upgrade",
        "db",
        &chart("demo-1.1.0"),
        "-n",
        NS,
        "--lease-duration",
        "3s",
    ]);
    wait_until(
        "helm to write its pending record",
        Duration::from_secs(30),
        || record_status(&b, "db", 2).as_deref() == Some("pending-upgrade"),
    );
    // SAFETY: kill(2) on the process group we created; no memory involved.
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGKILL);
    }
    let killed = finish(child);
    assert_ne!(killed.code, 0);
    b.api.clear_faults();

    let run = b.guard(&[
        "upgrade",
        "db",
        &chart("demo-1.2.0"),
        "-n",
        NS,
        "--lease-duration",
        "3s",
    ]);
    run.expect_code(3, "pending after takeover");
    assert!(
        run.stderr.contains("waiting: mutex helm-lock-db"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("took over the mutex"), "{}", run.stderr);
    assert!(run.stderr.contains("pending-upgrade"), "{}", run.stderr);
    assert_eq!(
        record_status(&b, "db", 2).as_deref(),
        Some("pending-upgrade")
    );

    let run = b.guard(&[
        "upgrade",
        "db",
        &chart("demo-1.2.0"),
        "-n",
        NS,
        "--recover-pending-after",
        "1s",
    ]);
    run.expect_code(0, "recovered");
    assert!(
        run.stderr.contains("recovered: revision 2"),
        "{}",
        run.stderr
    );
    assert_eq!(b.deployed("db", NS).0, "1.2.0");
    let history = b.history("db", NS);
    assert_eq!(history[1]["status"], "failed", "{history:?}");
    assert!(
        history[1]["description"]
            .as_str()
            .unwrap_or_default()
            .contains("marked failed by guarded-upgrade"),
        "{history:?}"
    );
}

/// 409 and 503 on Lease renewals are retried; the run finishes without losing the mutex.
fn renew_faults_are_retried(label: &str) {
    let b = setup(label);
    b.api.inject(fault(
        None,
        "deployments",
        FaultAction::Delay(Duration::from_secs(5)),
        None,
    ));
    b.api.inject(fault(
        Some("update"),
        "leases",
        FaultAction::Status(409),
        Some(1),
    ));
    b.api.inject(fault(
        Some("update"),
        "leases",
        FaultAction::Status(503),
        Some(1),
    ));
    let run = b.guard(&[
        "upgrade",
        "db",
        &chart("demo-1.0.0"),
        "-n",
        NS,
        "--lease-duration",
        "6s",
    ]);
    run.expect_code(0, "install with renew faults");
    assert!(!run.stderr.contains("lost the mutex"), "{}", run.stderr);
    let lease_updates: Vec<u16> = b
        .api
        .requests()
        .iter()
        .filter(|r| r.resource.as_deref() == Some("leases") && r.verb == "update")
        .map(|r| r.status)
        .collect();
    assert!(lease_updates.contains(&409), "{lease_updates:?}");
    assert!(lease_updates.contains(&503), "{lease_updates:?}");
    assert!(lease_updates.contains(&200), "{lease_updates:?}");
    let lease = b
        .api
        .get("leases", Some(NS), "helm-lock-db")
        .expect("lease");
    assert_eq!(lease["spec"]["holderIdentity"], "", "released: {lease}");
}

/// A Lease taken away while helm runs is reported when helm finishes.
fn lost_lease_is_reported(label: &str) {
    let b = setup(label);
    b.api.inject(fault(
        None,
        "deployments",
        FaultAction::Delay(Duration::from_secs(5)),
        None,
    ));
    let child = b.guard_spawn(&[
        "upgrade",
        "db",
        &chart("demo-1.0.0"),
        "-n",
        NS,
        "--lease-duration",
        "3s",
    ]);
    wait_until(
        "the mutex Lease to be taken",
        Duration::from_secs(20),
        || b.api.get("leases", Some(NS), "helm-lock-db").is_some(),
    );
    foreign_lease(&b, "db", "intruder", 3600);
    let run = finish(child);
    run.expect_code(0, "helm itself succeeds");
    assert!(
        run.stderr.contains("lost the mutex helm-lock-db"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("intruder"), "{}", run.stderr);
}

/// A live foreign holder past --lock-timeout: exit 3 naming it; `check` reports it.
fn lock_timeout_names_holder(label: &str) {
    let b = setup(label);
    foreign_lease(&b, "db", "pipeline-42", 3600);
    let run = b.guard(&[
        "upgrade",
        "db",
        &chart("demo-1.0.0"),
        "-n",
        NS,
        "--lock-timeout",
        "2s",
    ]);
    run.expect_code(3, "lock timeout");
    assert!(run.stderr.contains("timed out"), "{}", run.stderr);
    assert!(run.stderr.contains("pipeline-42"), "{}", run.stderr);
    assert!(b
        .api
        .get("secrets", Some(NS), "sh.helm.release.v1.db.v1")
        .is_none());
    let run = b.guard(&["check", "db", &chart("demo-1.0.0"), "-n", NS, "-o", "json"]);
    let json: serde_json::Value = serde_json::from_str(run.stdout.trim()).expect(&run.stdout);
    assert_eq!(json["mutex"]["holder"], "pipeline-42", "{json}");
    // `status` shows the held mutex too (once the release exists).
    b.guard(&[
        "upgrade",
        "db",
        &chart("demo-1.0.0"),
        "-n",
        NS,
        "--no-serialize",
    ])
    .expect_code(0, "install unserialized");
    let run = b.guard(&["status", "db", "-n", NS, "-o", "json"]);
    run.expect_code(0, "status");
    let json: serde_json::Value = serde_json::from_str(run.stdout.trim()).expect(&run.stdout);
    assert_eq!(json["mutex"]["holder"], "pipeline-42", "{json}");
    assert!(
        json["mutex"]["since"].as_str().unwrap().ends_with('Z'),
        "{json}"
    );
    assert!(
        json["mutex"]["expires"].as_str().unwrap().ends_with('Z'),
        "{json}"
    );
    let run = b.guard(&["status", "db", "-n", NS]);
    assert!(
        run.stdout
            .contains("mutex:     helm-lock-db held by pipeline-42"),
        "{}",
        run.stdout
    );
}

/// No Lease RBAC: fail closed naming the rule; --no-serialize runs unserialized.
fn forbidden_leases(label: &str) {
    let b = setup(label);
    b.api
        .inject(fault(None, "leases", FaultAction::Status(403), None));
    let run = b.guard(&["upgrade", "db", &chart("demo-1.0.0"), "-n", NS]);
    run.expect_code(3, "forbidden");
    assert!(run.stderr.contains("coordination.k8s.io"), "{}", run.stderr);
    assert!(run.stderr.contains("--no-serialize"), "{}", run.stderr);
    let decision = b.home().join("decision.json");
    let run = b.guard(&[
        "upgrade",
        "db",
        &chart("demo-1.0.0"),
        "-n",
        NS,
        "--no-serialize",
        "--decision-file",
        decision.to_str().unwrap(),
    ]);
    run.expect_code(0, "unserialized");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&decision).unwrap()).unwrap();
    assert_eq!(json["serialized"], false, "{json}");
    assert_eq!(b.deployed("db", NS).0, "1.0.0");
}

/// --create-namespace creates the namespace first so the mutex can live there; without it
/// helm's own error about the missing namespace is reported.
fn namespaces(label: &str) {
    let b = bed(label);
    b.guard(&[
        "upgrade",
        "db",
        &chart("demo-1.0.0"),
        "-n",
        "fresh",
        "--create-namespace",
    ])
    .expect_code(0, "create namespace");
    assert!(b.api.get("namespaces", None, "fresh").is_some());
    assert!(b.api.get("leases", Some("fresh"), "helm-lock-db").is_some());
    let run = b.guard(&["upgrade", "db", &chart("demo-1.0.0"), "-n", "missing"]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains(r#"namespaces "missing" not found"#),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("mutex"), "{}", run.stderr);
}

/// SIGTERM to guarded-upgrade reaches helm (which marks its release failed and exits), and
/// the mutex is released afterwards: nothing is left orphaned or held.
fn sigterm_is_forwarded(label: &str) {
    let b = setup(label);
    b.guard(&["upgrade", "db", &chart("demo-1.0.0"), "-n", NS])
        .expect_code(0, "install");
    b.api.inject(fault(
        None,
        "deployments",
        FaultAction::Delay(Duration::from_secs(30)),
        None,
    ));
    let child = b.guard_spawn(&["upgrade", "db", &chart("demo-1.1.0"), "-n", NS]);
    let start = Instant::now();
    wait_until(
        "helm to write its pending record",
        Duration::from_secs(30),
        || record_status(&b, "db", 2).as_deref() == Some("pending-upgrade"),
    );
    // SAFETY: kill(2) on our child's pid only (not its group): helm must get it from us.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let run = finish(child);
    b.api.clear_faults();
    assert!(
        start.elapsed() < Duration::from_secs(25),
        "helm did not stop on SIGTERM"
    );
    assert_ne!(run.code, 0, "{}", run.stderr);
    let status = record_status(&b, "db", 2);
    assert_eq!(
        status.as_deref(),
        Some("failed"),
        "helm marks an interrupted upgrade failed"
    );
    let lease = b
        .api
        .get("leases", Some(NS), "helm-lock-db")
        .expect("lease");
    assert_eq!(lease["spec"]["holderIdentity"], "", "released: {lease}");
}

crate::common::per_helm!(
    concurrent_pipelines,
    killed_holder,
    renew_faults_are_retried,
    lost_lease_is_reported,
    lock_timeout_names_holder,
    forbidden_leases,
    namespaces,
    sigterm_is_forwarded,
);
