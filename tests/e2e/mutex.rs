//! End to end: the per-release mutex (issue 5) with real helm against the real API server;
//! faults by request position and delays on the API stand-in (`standin::`).

use std::time::{Duration, Instant};

use crate::common::{bed, chart, finish, grant, helm_rules, hooked_chart, Bed};
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
            .strftime("%Y-%m-%dT%H:%M:%S.000000Z")
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
    // Keep helm busy once it has written its pending record: a pre-upgrade hook Job that
    // never completes (no controllers run on the real server).
    let hooked = hooked_chart(&b, "1.1.0");
    let child = b.guard_spawn(&["upgrade", "db", &hooked, "-n", NS, "--lease-duration", "3s"]);
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
    // alice may do everything helm needs here, but nothing on Leases.
    grant(&b, NS, "alice", &helm_rules());
    let kc = b.api.real().kubeconfig_for("alice", Some(NS));
    let env = [("KUBECONFIG", kc.to_str().unwrap())];
    b.api.clear_requests();
    let run = b.guard_env(&["upgrade", "db", &chart("demo-1.0.0"), "-n", NS], &env);
    run.expect_code(3, "forbidden");
    assert!(run.stderr.contains("coordination.k8s.io"), "{}", run.stderr);
    assert!(run.stderr.contains("--no-serialize"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains(r#"User "alice" cannot get resource "leases""#)
            || run
                .stderr
                .contains(r#"User "alice" cannot create resource "leases""#),
        "the real server's denial: {}",
        run.stderr
    );
    assert_eq!(b.writes(), Vec::<String>::new(), "helm was not run");
    let decision = b.home().join("decision.json");
    let run = b.guard_env(
        &[
            "upgrade",
            "db",
            &chart("demo-1.0.0"),
            "-n",
            NS,
            "--no-serialize",
            "--decision-file",
            decision.to_str().unwrap(),
        ],
        &env,
    );
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
    // The decision ran unserialized, and says why (issue 17: never silently).
    run.assert_stderr_line(
        "note: running unserialized: namespace \"missing\" does not exist, so the mutex (a \
         Lease in it) cannot be taken",
    );
}

/// SIGTERM to guarded-upgrade reaches helm (which marks its release failed and exits), and
/// the mutex is released afterwards: nothing is left orphaned or held.
fn sigterm_is_forwarded(label: &str) {
    let b = setup(label);
    b.guard(&["upgrade", "db", &chart("demo-1.0.0"), "-n", NS])
        .expect_code(0, "install");
    let hooked = hooked_chart(&b, "1.1.0");
    let child = b.guard_spawn(&["upgrade", "db", &hooked, "-n", NS]);
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

const E500: &str = "the API server answered 500 InternalError: an error on the server \
                    (\"injected fault\") has prevented the request from succeeding";

/// The `waiting:` lines on stderr, whole.
fn waiting_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("waiting: "))
        .collect()
}

fn lease_requests(b: &Bed, verb: &str) -> Vec<u16> {
    b.api
        .requests()
        .iter()
        .filter(|r| r.resource.as_deref() == Some("leases") && r.verb == verb)
        .map(|r| r.status)
        .collect()
}

/// A released Lease (holder cleared), as a finished run leaves it.
fn released_lease(b: &Bed) {
    foreign_lease(b, "db", "", 1);
}

/// Whether a `waiting:` line matches `prefix … retrying in <wait>` / `re-reading in <wait>`.
fn is_wait_line(line: &str, prefix: &str, suffix_word: &str) -> bool {
    let Some(rest) = line.strip_prefix(prefix) else {
        return false;
    };
    let Some(wait) = rest.strip_prefix(suffix_word) else {
        return false;
    };
    let wait = wait.strip_suffix('s').unwrap_or("x");
    wait.parse::<f64>().is_ok_and(|w| (0.0..=5.0).contains(&w))
}

const WAITING: &str = r#"waiting: mutex helm-lock-db for release "db" in "shared" "#;

/// A Lease that cannot be created (persistent 500) or taken (dropped connections): a few
/// reported, backed-off attempts, then exit 3 well within --lock-timeout; helm not run.
#[test]
fn failing_lease_writes_give_up_after_a_few_attempts() {
    let b = setup("standin-helm4");
    let cases: [(&str, FaultAction, &str, &str); 2] = [
        (
            "create",
            FaultAction::Status(500),
            "creating the Lease",
            E500,
        ),
        ("update", FaultAction::Drop, "taking the Lease", ""),
    ];
    for (verb, action, doing, error) in cases {
        b.api.clear_faults();
        if verb == "update" {
            released_lease(&b);
        }
        b.api.inject(fault(Some(verb), "leases", action, None));
        b.api.clear_requests();
        let started = Instant::now();
        let run = b.guard(&[
            "upgrade",
            "db",
            &chart("demo-1.0.0"),
            "-n",
            NS,
            "--lock-timeout",
            "60s",
        ]);
        let took = started.elapsed();
        run.expect_code(3, verb);
        assert!(took < Duration::from_secs(8), "{verb}: took {took:?}");
        assert_eq!(lease_requests(&b, verb).len(), 4, "{verb}: {}", run.stderr);
        let lines = waiting_lines(&run.stderr);
        assert_eq!(lines.len(), 3, "{verb}: {}", run.stderr);
        for (n, line) in lines.iter().enumerate() {
            let prefix = format!(
                "{WAITING}is unavailable: {doing} failed (failure {} of 4: ",
                n + 1
            );
            assert!(line.starts_with(&prefix), "{verb}: {line}");
            assert!(line.contains(error), "{verb}: {line}");
            let tail = line.rsplit_once("); ").map(|(_, t)| t).unwrap_or_default();
            assert!(is_wait_line(tail, "", "retrying in "), "{verb}: {line}");
        }
        let last = run.stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with(r#"guarded-upgrade: error: release "db" in namespace "shared": mutex Lease "helm-lock-db": "#),
            "{verb}: {last}"
        );
        assert!(b
            .api
            .get("secrets", Some(NS), "sh.helm.release.v1.db.v1")
            .is_none());
    }
}

/// Someone keeps winning the race for the Lease (persistent 409 on create): re-read with
/// backoff, each race reported, and --lock-timeout ends it; helm not run.
#[test]
fn conflicts_on_the_lease_are_bounded_by_the_lock_timeout() {
    let b = setup("standin-helm4");
    b.api.inject(fault(
        Some("create"),
        "leases",
        FaultAction::Status(409),
        None,
    ));
    let started = Instant::now();
    let run = b.guard(&[
        "upgrade",
        "db",
        &chart("demo-1.0.0"),
        "-n",
        NS,
        "--lock-timeout",
        "3s",
    ]);
    let took = started.elapsed();
    run.expect_code(3, "persistent 409");
    assert!(took >= Duration::from_secs(3), "took {took:?}");
    assert!(took < Duration::from_secs(6), "took {took:?}");
    let creates = lease_requests(&b, "create").len();
    // Backoff 0.15, 0.3, 0.6, 1.2, 2 s …: a handful of attempts, not 22 per second.
    assert!((3..=10).contains(&creates), "{creates} creates");
    let lines = waiting_lines(&run.stderr);
    assert_eq!(lines.len(), creates, "{}", run.stderr);
    for line in &lines {
        let prefix = format!(
            "{WAITING}was written by someone else while creating the Lease (409 Conflict); "
        );
        assert!(is_wait_line(line, &prefix, "re-reading in "), "{line}");
    }
    let last = run.stderr.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        "guarded-upgrade: error: release \"db\" in namespace \"shared\": timed out after 3s \
         waiting for the mutex (Lease \"helm-lock-db\"), which was written by someone else while \
         creating the Lease (409 Conflict). Retry later, raise --mutex-timeout, or if that run is \
         gone wait for the lease to expire; helm was not run"
    );
}

/// One failed Lease create (500, 409, dropped connection) is retried, reported, and the
/// run goes on.
fn one_failed_create_is_retried(label: &str) {
    let b = setup(label);
    let cases = [
        ("r500", FaultAction::Status(500)),
        ("r409", FaultAction::Status(409)),
        ("rdrop", FaultAction::Drop),
    ];
    for (release, action) in cases {
        b.api.clear_faults();
        b.api.clear_requests();
        b.api
            .inject(fault(Some("create"), "leases", action.clone(), Some(1)));
        let run = b.guard(&[
            "upgrade",
            "--install",
            release,
            &chart("demo-1.0.0"),
            "-n",
            NS,
        ]);
        run.expect_code(0, &format!("{action:?}"));
        let waiting =
            format!(r#"waiting: mutex helm-lock-{release} for release "{release}" in "shared" "#);
        let lines = waiting_lines(&run.stderr);
        assert_eq!(lines.len(), 1, "{action:?}: {}", run.stderr);
        let raced = format!(
            "{waiting}was written by someone else while creating the Lease (409 Conflict); "
        );
        let failed =
            format!("{waiting}is unavailable: creating the Lease failed (failure 1 of 4: ");
        let ok = match action {
            FaultAction::Status(409) => is_wait_line(lines[0], &raced, "re-reading in "),
            _ => {
                lines[0].starts_with(&failed)
                    && is_wait_line(
                        lines[0].rsplit_once("); ").map_or("", |(_, t)| t),
                        "",
                        "retrying in ",
                    )
            }
        };
        assert!(ok, "{action:?}: {}", lines[0]);
        assert_eq!(lease_requests(&b, "create").len(), 2, "{action:?}");
        assert_eq!(b.deployed(release, NS).0, "1.0.0");
        let lease = b
            .api
            .get("leases", Some(NS), &format!("helm-lock-{release}"))
            .expect("lease");
        assert_eq!(lease["spec"]["holderIdentity"], "", "released: {lease}");
    }
}

/// One failed release (each class: 500, 409, 403, 404, 410, 422, dropped connection) is
/// retried after a fresh read: the Lease ends free and nothing is reported.
fn one_failed_release_is_retried(label: &str) {
    let b = setup(label);
    let c = chart("demo-1.0.0");
    let actions = [
        FaultAction::Status(500),
        FaultAction::Status(409),
        FaultAction::Status(403),
        FaultAction::Status(404),
        FaultAction::Status(410),
        FaultAction::Status(422),
        FaultAction::Drop,
    ];
    for action in actions {
        b.api.clear_faults();
        b.api.clear_requests();
        // The run below creates the Lease (or takes the released one) and renews nothing
        // (helm takes less than a third of 15 s): its only Lease update is the release.
        b.api
            .inject(fault(Some("update"), "leases", action.clone(), Some(1)));
        let first = b.api.get("leases", Some(NS), "helm-lock-db").is_none();
        if !first {
            // Taking a released Lease is an update too: let that one through.
            b.api.clear_faults();
            b.api.inject(Fault {
                times: Some(1),
                ..fault(
                    Some("update"),
                    "leases",
                    FaultAction::Delay(Duration::ZERO),
                    None,
                )
            });
            b.api
                .inject(fault(Some("update"), "leases", action.clone(), Some(1)));
        }
        let run = b.guard(&[
            "upgrade",
            "--install",
            "db",
            &c,
            "-n",
            NS,
            "--min-version-policy",
            "newer-or-equal",
        ]);
        run.expect_code(0, &format!("{action:?}"));
        assert!(
            !run.stderr.contains("warning"),
            "{action:?}: {}",
            run.stderr
        );
        let lease = b
            .api
            .get("leases", Some(NS), "helm-lock-db")
            .expect("lease");
        assert_eq!(
            lease["spec"]["holderIdentity"], "",
            "{action:?}: released: {lease}"
        );
        let updates = lease_requests(&b, "update");
        assert_eq!(updates.last(), Some(&200), "{action:?}: {updates:?}");
        if let FaultAction::Status(code) = action {
            assert!(updates.contains(&code), "{action:?}: {updates:?}");
        }
        assert!(updates.len() >= 2, "{action:?}: {updates:?}");
    }
}

/// A Lease that cannot be released at all is reported: which Lease, how long others wait.
fn unreleasable_lease_is_reported(label: &str) {
    let b = setup(label);
    b.api.inject(fault(
        Some("update"),
        "leases",
        FaultAction::Status(500),
        None,
    ));
    let started = Instant::now();
    let run = b.guard(&["upgrade", "--install", "db", &chart("demo-1.0.0"), "-n", NS]);
    run.expect_code(0, "helm ran; only the release failed");
    assert!(started.elapsed() < Duration::from_secs(20));
    let warnings: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(
        warnings,
        [format!(
            r#"warning: could not release the mutex Lease "helm-lock-db" in namespace "shared" ({E500}); other runs wait up to 15s for it to expire"#
        )],
        "{}",
        run.stderr
    );
    assert_eq!(lease_requests(&b, "update").len(), 4);
    let lease = b
        .api
        .get("leases", Some(NS), "helm-lock-db")
        .expect("lease");
    assert_ne!(lease["spec"]["holderIdentity"], "", "{lease}");
}

/// `--dry-run` writes nothing, so it neither waits for nor takes the mutex: it runs at
/// once while another run holds it, and leaves the Lease and the records as they were.
fn dry_run_needs_no_mutex(label: &str) {
    let b = setup(label);
    foreign_lease(&b, "db", "pipeline-42", 3600);
    b.api.clear_requests();
    let run = b.guard(&[
        "upgrade",
        "--install",
        "db",
        &chart("demo-1.0.0"),
        "-n",
        NS,
        "--dry-run",
        "--lock-timeout",
        "2s",
    ]);
    run.expect_code(0, "dry run under a held mutex");
    run.assert_stderr_line(r#"install: "db" in "shared" 1.0.0 (not installed yet)"#);
    assert!(waiting_lines(&run.stderr).is_empty(), "{}", run.stderr);
    assert_eq!(b.writes(), Vec::<String>::new());
    assert!(b
        .api
        .get("secrets", Some(NS), "sh.helm.release.v1.db.v1")
        .is_none());
}

/// The requests guarded-upgrade itself made (helm's and the test bed's left out).
fn guard_requests(b: &Bed) -> Vec<kube_standin::RequestRecord> {
    b.api
        .requests()
        .into_iter()
        .filter(|r| {
            r.user_agent
                .as_deref()
                .is_some_and(|a| a.starts_with("guarded-upgrade/"))
        })
        .collect()
}

/// guarded-upgrade's requests on the release's Lease with this verb.
fn guard_lease_requests(b: &Bed, verb: &str) -> usize {
    guard_requests(b)
        .iter()
        .filter(|r| r.resource.as_deref() == Some("leases") && r.verb == verb)
        .count()
}

/// Hand-over by watch (issue 29): a waiter reads the Lease once, watches it, and takes it
/// when it is released; no poll in between, however long the wait.
fn waiter_wakes_on_release_without_polling(label: &str) {
    let b = setup(label);
    foreign_lease(&b, "db", "pipeline-42", 3600);
    b.api.clear_requests();
    let child = b.guard_spawn(&["upgrade", "--install", "db", &chart("demo-1.0.0"), "-n", NS]);
    wait_until(
        "the waiter to read the Lease",
        Duration::from_secs(30),
        || guard_lease_requests(&b, "get") >= 1,
    );
    // Long enough for a poller (every 0.5–1 s) to have read the Lease twice more.
    std::thread::sleep(Duration::from_millis(2500));
    released_lease(&b);
    let run = finish(child);
    run.expect_code(0, "the waiter installs once the Lease is released");
    assert!(
        run.stderr
            .lines()
            .any(|l| l.starts_with(WAITING) && l.contains("is held by pipeline-42")),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("note: cannot watch"), "{}", run.stderr);
    assert_eq!(b.deployed("db", NS).0, "1.0.0");
    // One read before waiting; the wait was a watch, the take used the Lease the watch
    // delivered, and the release writes the Lease as the run last wrote it.
    assert_eq!(
        guard_lease_requests(&b, "get"),
        1,
        "{:?}",
        guard_requests(&b)
    );
    // The real server audits a watch when it ends (the waiter closed it on taking the Lease).
    wait_until(
        "the Lease watch to be audited",
        Duration::from_secs(10),
        || guard_lease_requests(&b, "watch") >= 1,
    );
    // Taken, then released: the only Lease writes.
    assert_eq!(
        guard_lease_requests(&b, "update"),
        2,
        "{:?}",
        guard_requests(&b)
    );
    let lease = b
        .api
        .get("leases", Some(NS), "helm-lock-db")
        .expect("lease");
    assert_eq!(lease["spec"]["holderIdentity"], "", "released: {lease}");
}

/// A waiter whose re-read while waiting decides skip (the revision it waited for is in)
/// exits 0 without taking the mutex: no Lease write, no new revision.
fn skipping_waiter_never_takes_the_mutex(label: &str) {
    let b = setup(label);
    b.guard(&["upgrade", "--install", "db", &chart("demo-1.0.0"), "-n", NS])
        .expect_code(0, "install");
    foreign_lease(&b, "db", "pipeline-42", 3600);
    b.api.clear_requests();
    let child = b.guard_spawn(&[
        "upgrade",
        "db",
        &chart("demo-1.1.0"),
        "-n",
        NS,
        "--mutex-timeout",
        "40s",
    ]);
    wait_until(
        "the waiter to read the Lease",
        Duration::from_secs(30),
        || guard_lease_requests(&b, "get") >= 1,
    );
    // The run it waits for puts 1.1.0 in (the holder, as far as the waiter can tell).
    b.helm(&["upgrade", "db", &chart("demo-1.1.0"), "-n", NS])
        .expect_code(0, "the holder's upgrade");
    let run = finish(child);
    run.expect_code(0, "the waiter skips");
    run.assert_stderr_line(
        "note: release \"db\" in \"shared\" changed while this run waited for the mutex, and \
         the re-read decides skip: the mutex was not taken",
    );
    run.assert_stderr_line(
        "skip: release \"db\" in \"shared\" is at 1.1.0 (revision 2); target 1.1.0 is not \
         newer (policy newer; use --min-version-policy newer-or-equal to re-apply)",
    );
    let writes: Vec<String> = guard_requests(&b)
        .iter()
        .filter(|r| r.is_write())
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(writes, Vec::<String>::new(), "a skip never writes");
    let lease = b
        .api
        .get("leases", Some(NS), "helm-lock-db")
        .expect("lease");
    assert_eq!(lease["spec"]["holderIdentity"], "pipeline-42", "{lease}");
    assert_eq!(b.history("db", NS).len(), 2);
}

/// SIGINT while waiting: exit at once, nothing written (the Lease stays the holder's), and
/// the watches end with the process.
fn interrupted_waiter_writes_nothing(label: &str) {
    let b = setup(label);
    foreign_lease(&b, "db", "pipeline-42", 3600);
    b.api.clear_requests();
    let child = b.guard_spawn(&["upgrade", "--install", "db", &chart("demo-1.0.0"), "-n", NS]);
    wait_until(
        "the waiter to read the Lease",
        Duration::from_secs(30),
        || guard_lease_requests(&b, "get") >= 1,
    );
    // Into its wait (the watches open right after the read).
    std::thread::sleep(Duration::from_millis(1000));
    // SAFETY: kill(2) on our child's pid only.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let run = finish(child);
    run.expect_code(3, "interrupted while waiting");
    assert!(
        run.stderr
            .contains("interrupted while waiting for the mutex"),
        "{}",
        run.stderr
    );
    let writes: Vec<String> = guard_requests(&b)
        .iter()
        .filter(|r| r.is_write())
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        writes,
        Vec::<String>::new(),
        "nothing released that was not held"
    );
    let lease = b
        .api
        .get("leases", Some(NS), "helm-lock-db")
        .expect("lease");
    assert_eq!(lease["spec"]["holderIdentity"], "pipeline-42", "{lease}");
    // The watches ended with the process (the server audits a watch when it ends).
    wait_until("the watches to end", Duration::from_secs(10), || {
        guard_lease_requests(&b, "watch") >= 1
    });
}

/// Issue 29: what a guarded upgrade that upgrades adds to helm's requests, in order: the
/// metadata list and the deployed record (the decision), the Lease read and its take (a
/// create the first time, an update over a released Lease), the list again under the
/// mutex, which shows the deployed record at the same resourceVersion, so it is not
/// fetched again; then helm runs, and the release writes the Lease as last written, with
/// no read.
fn upgrade_adds_only_the_mutex_and_one_list(label: &str) {
    let b = setup(label);
    let asked = |b: &Bed| -> Vec<String> {
        guard_requests(b)
            .iter()
            .map(|r| {
                format!(
                    "{} {} {}",
                    r.verb,
                    r.resource.as_deref().unwrap_or(""),
                    r.name.as_deref().unwrap_or("")
                )
            })
            .collect()
    };
    b.api.clear_requests();
    b.guard(&["upgrade", "db", &chart("demo-1.0.0"), "-n", NS])
        .expect_code(0, "install");
    assert_eq!(
        asked(&b),
        [
            "list secrets ",
            "get leases helm-lock-db",
            "create leases helm-lock-db",
            "list secrets ",
            "update leases helm-lock-db",
        ],
    );
    b.api.clear_requests();
    b.guard(&["upgrade", "db", &chart("demo-1.1.0"), "-n", NS])
        .expect_code(0, "upgrade");
    assert_eq!(
        asked(&b),
        [
            "list secrets ",
            "get secrets sh.helm.release.v1.db.v1",
            "get leases helm-lock-db",
            "update leases helm-lock-db",
            "list secrets ",
            "update leases helm-lock-db",
        ],
    );
    assert_eq!(b.deployed("db", NS), ("1.1.0".into(), 2));
}

/// Hand-over by watch (issue 29).
mod handover {
    use super::*;
    crate::common::per_helm!(
        waiter_wakes_on_release_without_polling,
        skipping_waiter_never_takes_the_mutex,
        interrupted_waiter_writes_nothing,
    );
}

crate::common::per_helm!(
    dry_run_needs_no_mutex,
    upgrade_adds_only_the_mutex_and_one_list,
    concurrent_pipelines,
    killed_holder,
    lock_timeout_names_holder,
    forbidden_leases,
    namespaces,
    sigterm_is_forwarded,
);

/// Faults by request position and delays only the stand-in can produce.
mod standin {
    use super::*;
    crate::common::per_helm_standin!(
        renew_faults_are_retried,
        lost_lease_is_reported,
        one_failed_create_is_retried,
        one_failed_release_is_retried,
        unreleasable_lease_is_reported,
    );
}
