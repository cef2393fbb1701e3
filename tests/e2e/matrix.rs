//! The fault-injection matrix (issue 10, "## Tests"): every request of every command,
//! spoiled in every way, one at a time.
//!
//! The faults are injected by request position, which only the API stand-in can do: the
//! matrix runs there (real helm 4.1.4). What it found that a real server can show for real
//! (a Lease the identity may not read) is proven on the real API server.
//!
//! For each command (`upgrade --install` of 1.1.0 over an installed 1.0.0, `check`, `lock`,
//! `lock --hard`, `unlock` of a hard lock, `status`) one stand-in is set up once with real
//! helm 4, its release records and its mutex Lease (none; for `check`/`status` one held by
//! another pipeline for a day) are snapshotted, and the
//! command is run once with the request log on: its N requests (those with the
//! guarded-upgrade User-Agent; helm's own requests are helm's business) are the indices of
//! the matrix. Then, for every index k < N and every fault of [`FAULTS`] (500, 503, 409,
//! 403, dropped connection, truncated body, wrong-shaped body), the records are reset from
//! the snapshot through the stand-in API (no helm install per case), the fault is armed on
//! the k-th guarded-upgrade request only, the command runs, and the invariants are checked:
//!
//! 1. bounded: every run ends within [`RUN_BOUND`];
//! 2. fail closed: exit 3 means helm did not run (no request without the guarded-upgrade
//!    User-Agent), and helm ran only if the command printed the same decision as the
//!    fault-free run (the state it acted on was fully known); read-only commands (`check`,
//!    `status`) write nothing, and when they succeed print the fault-free output (relative
//!    times aside), except that a Lease that could not be read is shown as unknown;
//! 3. no record lost: every snapshot record still exists;
//! 4. the mutex Lease is free after the run, or a `warning:` line names it;
//! 5. every `error:` line names the release and the namespace, once;
//! 6. convergence: for the writing commands, a plain re-run without faults exits 0 and
//!    leaves the state of the fault-free run (all records carry the same lock, or none; the
//!    new version deployed).
//!
//! Cases: 7 faults × the guarded-upgrade requests of each command (each test prints them
//! with --nocapture): upgrade 8 → 56 (twice: without a Lease, and over a released one),
//! check 3 → 21, lock 3 → 21, lock --hard 4 → 28, unlock 6 → 42, status 3 → 21; **245
//! cases**, plus a fault-free re-run for each of the 203 cases of the writing commands.
//! Each command is its own test (they run in parallel): about a minute for the module on
//! 2 cores, the longest (upgrade, one real helm 4 run per case) 30–40 s each.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::{bed, chart, grant_role, wait_allowed, Bed, Run};
use kube_standin::{ArmedFault, Fault, FaultAction};
use serde_json::Value;

const NS: &str = "shared";
const REL: &str = "db";
const PREFIX: &str = "guarded-upgrade.io/";
const AGENT: &str = "guarded-upgrade/";
const LEASE: &str = "helm-lock-db";

/// No single run may take longer (the retry policy's 10 s deadline plus slack).
const RUN_BOUND: Duration = Duration::from_secs(15);

/// What is injected at each index.
const FAULTS: [(&str, FaultAction); 7] = [
    ("500", FaultAction::Status(500)),
    ("503", FaultAction::Status(503)),
    ("409", FaultAction::Status(409)),
    ("403", FaultAction::Status(403)),
    ("drop", FaultAction::Drop),
    ("truncate", FaultAction::Truncate),
    ("wrong-shape", FaultAction::WrongShape),
];

/// What the command is expected to leave when it succeeds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Goal {
    /// Reads only: nothing written, output equal to the fault-free run's.
    ReadOnly,
    /// 1.1.0 deployed by helm.
    Upgraded,
    /// Every record carries the same lock; `hard`: the latest one is pending-upgrade.
    Locked { hard: bool },
    /// No record carries a lock; the latest one is deployed again.
    Unlocked,
}

struct Matrix {
    b: Bed,
    args: Vec<String>,
    goal: Goal,
    /// The release's records (Secrets) before every run.
    snapshot: Vec<Value>,
    /// The mutex Lease before every run, if any.
    lease: Option<Value>,
    /// The fault-free run.
    baseline: Run,
    /// Its guarded-upgrade requests.
    requests: usize,
}

/// Installs `db` 1.0.0 and upgrades it to 1.0.0 again on the stand-in: two records,
/// revision 2 deployed.
fn installed() -> Bed {
    installed_on("standin-helm4")
}

/// The same on the server of a helm label (`helm4`: the real API server).
fn installed_on(label: &str) -> Bed {
    let b = bed(label);
    b.api.create_namespace(NS);
    let c = chart("demo-1.0.0");
    b.helm(&["install", REL, &c, "-n", NS])
        .expect_code(0, "helm install");
    b.helm(&["upgrade", REL, &c, "-n", NS])
        .expect_code(0, "helm upgrade");
    b
}

fn records(b: &Bed) -> Vec<Value> {
    b.api
        .list("secrets", Some(NS))
        .into_iter()
        .filter(|o| o["metadata"]["labels"]["owner"] == "helm")
        .collect()
}

fn name_of(o: &Value) -> String {
    o["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// An object as it can be created again: without the metadata the server assigns.
fn without_server_fields(mut o: Value) -> Value {
    if let Some(m) = o["metadata"].as_object_mut() {
        for k in [
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "managedFields",
        ] {
            m.remove(k);
        }
    }
    o
}

/// Puts the records back as they were in `snapshot`, and the mutex Lease as in `lease`.
fn reset(b: &Bed, snapshot: &[Value], lease: Option<&Value>) {
    for o in records(b) {
        b.api.delete_object("secrets", Some(NS), &name_of(&o));
    }
    for o in snapshot {
        b.api
            .put_object("secrets", without_server_fields(o.clone()));
    }
    b.api.delete_object("leases", Some(NS), LEASE);
    if let Some(l) = lease {
        b.api.put_object("leases", l.clone());
    }
}

/// A Lease held by another pipeline for a day (so `check`/`status` have a holder to
/// report, and a run that could not read it cannot pass for one that did).
fn held_lease(b: &Bed) {
    let now = jiff::Timestamp::now();
    let micro = now.strftime("%Y-%m-%dT%H:%M:%S.000000Z").to_string();
    b.api.put_object(
        "leases",
        serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": LEASE, "namespace": NS},
            "spec": {
                "holderIdentity": "other-pipeline",
                "leaseDurationSeconds": 86400,
                "acquireTime": micro,
                "renewTime": micro,
                "leaseTransitions": 0
            }
        }),
    );
}

/// The Lease as a run leaves it after releasing it: no holder, expired.
fn released_lease(b: &Bed) {
    b.api.put_object(
        "leases",
        serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": LEASE, "namespace": NS},
            "spec": {
                "leaseDurationSeconds": 15,
                "acquireTime": "2026-01-01T00:00:00.000000Z",
                "renewTime": "2026-01-01T00:00:00.000000Z",
                "leaseTransitions": 1
            }
        }),
    );
}

/// Output with relative times (`expires in 12s`, `1d`) and every number replaced by `N`.
fn without_numbers(text: &str) -> String {
    let text: String = text
        .lines()
        .map(|l| match (l.find("expires in "), l.find(" unless")) {
            (Some(a), Some(b)) if a < b => format!("{}expires in T{}\n", &l[..a], &l[b..]),
            _ => format!("{l}\n"),
        })
        .collect();
    let mut out = String::new();
    let mut in_number = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                out.push('N');
            }
            in_number = true;
        } else {
            in_number = false;
            out.push(c);
        }
    }
    out
}

fn guard_requests(b: &Bed) -> usize {
    b.api
        .requests()
        .iter()
        .filter(|r| {
            r.user_agent
                .as_deref()
                .is_some_and(|u| u.starts_with(AGENT))
        })
        .count()
}

fn helm_ran(b: &Bed) -> bool {
    b.api.requests().iter().any(|r| {
        !r.user_agent
            .as_deref()
            .is_some_and(|u| u.starts_with(AGENT))
    })
}

/// The lock labels of every record (hard-lock bookkeeping excluded), by record name.
fn locks(b: &Bed) -> BTreeMap<String, BTreeMap<String, String>> {
    records(b)
        .iter()
        .map(|o| {
            let labels: BTreeMap<String, String> =
                serde_json::from_value(o["metadata"]["labels"].clone()).unwrap_or_default();
            let lock = labels
                .into_iter()
                .filter(|(k, _)| k.starts_with(PREFIX) && !k.starts_with(&format!("{PREFIX}hard")))
                .collect();
            (name_of(o), lock)
        })
        .collect()
}

/// Whether the record with the highest revision carries a lock.
fn latest_locked(b: &Bed) -> bool {
    records(b)
        .iter()
        .max_by_key(|o| {
            o["metadata"]["labels"]["version"]
                .as_str()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .is_some_and(|o| o["metadata"]["labels"][format!("{PREFIX}lock")].is_string())
}

/// Status label of the record with the highest revision.
fn latest_status(b: &Bed) -> String {
    records(b)
        .iter()
        .max_by_key(|o| {
            o["metadata"]["labels"]["version"]
                .as_str()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .map(|o| {
            o["metadata"]["labels"]["status"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}

/// The decision lines: what the command said it would do (`upgrade: …`, `install: …`,
/// `skip: …`, `refuse: …`).
fn decisions(run: &Run) -> Vec<String> {
    run.stderr
        .lines()
        .filter(|l| {
            ["upgrade:", "install:", "skip:", "refuse:"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .map(str::to_string)
        .collect()
}

const MUTEX_UNKNOWN_STATUS: &str =
    "mutex:     unknown: the Lease \"helm-lock-db\" could not be read (";
const MUTEX_UNKNOWN_NOTE: &str =
    "  note: mutex unknown: the Lease \"helm-lock-db\" could not be read (";

/// Text without its mutex line (`mutex:` of `status`, the mutex note of `check`).
fn without_mutex(text: &str) -> String {
    text.lines()
        .filter(|l| !(l.starts_with("mutex:") || l.starts_with("  note: mutex ")))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// stderr without retry notices (what `check` said, to compare with the fault-free run).
fn decision_text(run: &Run) -> String {
    // Retry notices and mutex waits report a retried transient fault, and a forbidden Lease
    // lets lock/unlock run unserialized with a warning; the rest must match.
    run.stderr
        .lines()
        .filter(|l| {
            !l.starts_with("guarded-upgrade: ")
                && !l.starts_with("waiting: mutex ")
                && !l.starts_with("warning: running without the release mutex: ")
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

impl Matrix {
    fn new(b: Bed, args: &[&str], goal: Goal) -> Matrix {
        let snapshot = records(&b);
        assert!(snapshot.len() >= 2, "{snapshot:?}");
        let lease = b
            .api
            .get("leases", Some(NS), LEASE)
            .map(without_server_fields);
        b.api.clear_requests();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let baseline = b.guard(&argv);
        baseline.expect_code(0, "fault-free run");
        let requests = guard_requests(&b);
        assert!(requests > 0);
        // Shown with --nocapture: the indices of the matrix.
        for (i, r) in b
            .api
            .requests()
            .iter()
            .filter(|r| {
                r.user_agent
                    .as_deref()
                    .is_some_and(|u| u.starts_with(AGENT))
            })
            .enumerate()
        {
            eprintln!(
                "  request {i}: {} {} {}",
                r.verb,
                r.resource.as_deref().unwrap_or(""),
                r.name.as_deref().unwrap_or("")
            );
        }
        let m = Matrix {
            b,
            args,
            goal,
            snapshot,
            lease,
            baseline,
            requests,
        };
        m.assert_goal("fault-free run");
        m
    }

    fn argv(&self) -> Vec<&str> {
        self.args.iter().map(String::as_str).collect()
    }

    /// Runs every case; returns the number of cases.
    fn run_all(&self) -> usize {
        let started = Instant::now();
        let mut cases = 0;
        let mut failures = Vec::new();
        for k in 0..self.requests {
            for (fault, action) in FAULTS.iter() {
                cases += 1;
                if let Err(why) = self.case(k, action) {
                    failures.push(format!("request {k}, fault {fault}: {why}"));
                }
            }
        }
        eprintln!(
            "matrix {:?}: {} requests, {cases} cases in {:.1?}",
            self.args.first(),
            self.requests,
            started.elapsed()
        );
        assert!(
            failures.is_empty(),
            "{} of {cases} cases failed:\n{}",
            failures.len(),
            failures.join("\n\n")
        );
        cases
    }

    fn case(&self, k: usize, action: &FaultAction) -> Result<(), String> {
        let b = &self.b;
        reset(b, &self.snapshot, self.lease.as_ref());
        b.api.clear_requests();
        b.api.arm(ArmedFault {
            skip: k as u32,
            fault: Fault {
                verb: None,
                resource: None,
                name: None,
                action: action.clone(),
                times: Some(1),
            },
            user_agent: Some(AGENT.into()),
        });
        let started = Instant::now();
        let run = b.guard(&self.argv());
        let took = started.elapsed();
        b.api.clear_faults();
        // Shown with --nocapture: what each case did.
        eprintln!(
            "  #{k} {action:?}: exit {} in {took:.1?}: {}",
            run.code,
            run.stderr.lines().last().unwrap_or("")
        );
        let shown = format!(
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            run.code, run.stdout, run.stderr
        );
        if took > RUN_BOUND {
            return Err(format!("took {took:?}\n{shown}"));
        }
        if ![0, 1, 3, 4].contains(&run.code) {
            return Err(format!("unexpected exit code\n{shown}"));
        }
        // Fail closed: helm ran only on the decision of the fault-free run.
        if helm_ran(b) && decisions(&run) != decisions(&self.baseline) {
            return Err(format!(
                "helm ran on another decision than the fault-free run's {:?}\n{shown}",
                decisions(&self.baseline)
            ));
        }
        if run.code == 3 && helm_ran(b) {
            return Err(format!("exit 3 but helm ran\n{shown}"));
        }
        // No record lost.
        let now: Vec<String> = records(b).iter().map(name_of).collect();
        for o in &self.snapshot {
            if !now.contains(&name_of(o)) {
                return Err(format!("record {} lost\n{shown}", name_of(o)));
            }
        }
        // The Lease free or reported (or, for check/status, the other pipeline's).
        let other_holder = self
            .lease
            .as_ref()
            .is_some_and(|l| l["spec"]["holderIdentity"].is_string());
        if let Some(lease) = b
            .api
            .get("leases", Some(NS), LEASE)
            .filter(|_| !other_holder)
        {
            let holder = lease["spec"]["holderIdentity"].as_str().unwrap_or("");
            let reported = run.stderr.lines().any(|l| {
                l.starts_with(&format!(
                    "warning: could not release the mutex Lease \"{LEASE}\" in namespace \"{NS}\""
                ))
            });
            if !holder.is_empty() && !reported {
                return Err(format!(
                    "Lease still held by {holder}, not reported\n{shown}"
                ));
            }
        }
        // Errors name the release and the namespace, once.
        for line in run.stderr.lines().filter(|l| l.contains("error: ")) {
            if !(line.contains(&format!("\"{REL}\"")) && line.contains(&format!("\"{NS}\""))) {
                return Err(format!("error line without release and namespace\n{shown}"));
            }
            let scope = format!("release \"{REL}\" in namespace \"{NS}\"");
            if line.matches(&scope).count() > 1 {
                return Err(format!("error line names {scope} more than once\n{shown}"));
            }
        }
        match self.goal {
            Goal::ReadOnly => {
                let writes = b.writes();
                if !writes.is_empty() {
                    return Err(format!("a read-only command wrote {writes:?}\n{shown}"));
                }
                // The one allowed difference: a Lease that could not be read is reported
                // as unknown (never as free) in place of the holder.
                let unknown = run.stdout.contains(MUTEX_UNKNOWN_STATUS)
                    || run.stderr.contains(MUTEX_UNKNOWN_NOTE);
                let same = |a: &str, b: &str| {
                    let (a, b) = if unknown {
                        (without_mutex(a), without_mutex(b))
                    } else {
                        (a.to_string(), b.to_string())
                    };
                    without_numbers(&a) == without_numbers(&b)
                };
                if run.code == 0
                    && !(same(&run.stdout, &self.baseline.stdout)
                        && same(&decision_text(&run), &decision_text(&self.baseline)))
                {
                    return Err(format!(
                        "succeeded with another answer than the fault-free run's:\n{}\n{shown}",
                        self.baseline.stdout
                    ));
                }
                Ok(())
            }
            _ => {
                // What a failed lock/unlock says it left must be so.
                let claims_lock = run
                    .stderr
                    .contains("still carries the lock, so it is still in force")
                    || run
                        .stderr
                        .contains("the lock is in force on the latest revision");
                if run.code != 0 && claims_lock && !latest_locked(b) {
                    return Err(format!(
                        "the error says the lock is in force on the latest record, which carries none: {:#?}\n{shown}",
                        locks(b)
                    ));
                }
                // "nothing was changed on it": the record named is as it was.
                for line in run
                    .stderr
                    .lines()
                    .filter(|l| l.contains("nothing was changed on it"))
                {
                    let named = line
                        .split("record ")
                        .nth(1)
                        .and_then(|r| r.split_whitespace().next())
                        .unwrap_or("");
                    let before = self.snapshot.iter().find(|o| name_of(o) == named);
                    let now = b.api.get("secrets", Some(NS), named);
                    let same = match (before, &now) {
                        (Some(a), Some(n)) => {
                            a["metadata"]["labels"] == n["metadata"]["labels"]
                                && a["data"] == n["data"]
                        }
                        _ => false,
                    };
                    if !same {
                        return Err(format!(
                            "says nothing was changed on {named:?}, which changed\n{shown}"
                        ));
                    }
                }
                // A lock/unlock that succeeds says what the fault-free one said.
                if run.code == 0
                    && self.goal != Goal::Upgraded
                    && without_numbers(&decision_text(&run))
                        != without_numbers(&decision_text(&self.baseline))
                {
                    return Err(format!(
                        "succeeded with other lines than the fault-free run's:\n{}\n{shown}",
                        self.baseline.stderr
                    ));
                }
                if run.code == 0 {
                    self.goal_reached()
                        .map_err(|e| format!("exit 0 but {e}\n{shown}"))?;
                }
                // Convergence: a plain re-run completes whatever was interrupted.
                b.api.clear_requests();
                let again = b.guard(&self.argv());
                if again.code != 0 {
                    return Err(format!(
                        "the re-run failed: exit {}\n{}\n--- the faulted run: {shown}",
                        again.code, again.stderr
                    ));
                }
                self.goal_reached()
                    .map_err(|e| format!("after a re-run, {e}\n--- the faulted run: {shown}"))
            }
        }
    }

    fn assert_goal(&self, what: &str) {
        if let Err(e) = self.goal_reached() {
            panic!("{what}: {e}");
        }
    }

    fn goal_reached(&self) -> Result<(), String> {
        let b = &self.b;
        let locks = locks(b);
        let distinct: Vec<&BTreeMap<String, String>> = {
            let mut v: Vec<_> = locks.values().collect();
            v.dedup();
            v
        };
        match self.goal {
            Goal::ReadOnly => Ok(()),
            Goal::Upgraded => {
                let deployed: Vec<Value> = records(b)
                    .into_iter()
                    .filter(|o| o["metadata"]["labels"]["status"] == "deployed")
                    .collect();
                if deployed.len() != 1 {
                    return Err(format!("{} deployed records", deployed.len()));
                }
                if b.deployed(REL, NS).0 != "1.1.0" {
                    return Err(format!("deployed is {:?}", b.deployed(REL, NS)));
                }
                Ok(())
            }
            Goal::Locked { hard } => {
                if distinct.len() != 1 || distinct[0].is_empty() {
                    return Err(format!("records carry different locks: {locks:#?}"));
                }
                let status = latest_status(b);
                if hard != (status == "pending-upgrade") {
                    return Err(format!("latest record is {status}"));
                }
                Ok(())
            }
            Goal::Unlocked => {
                if locks.values().any(|l| !l.is_empty()) {
                    return Err(format!("records still carry a lock: {locks:#?}"));
                }
                let status = latest_status(b);
                if status != "deployed" {
                    return Err(format!("latest record is {status}"));
                }
                Ok(())
            }
        }
    }
}

#[test]
fn upgrade() {
    let b = installed();
    let c = chart("demo-1.1.0");
    let m = Matrix::new(
        b,
        &["upgrade", "--install", REL, &c, "-n", NS],
        Goal::Upgraded,
    );
    m.run_all();
}

/// The same over the Lease an earlier run released (the usual case after the first
/// upgrade): the takeover `update` instead of `create`, and a Lease read that returns an
/// object (which wrong-shape then renames).
#[test]
fn upgrade_over_a_released_lease() {
    let b = installed();
    released_lease(&b);
    let c = chart("demo-1.1.0");
    let m = Matrix::new(
        b,
        &["upgrade", "--install", REL, &c, "-n", NS],
        Goal::Upgraded,
    );
    m.run_all();
    // What the matrix found here: a Lease read answered with another Lease was acted on
    // (a takeover of the wrong name, refused by the API with a 400). Now, whole:
    reset(&m.b, &m.snapshot, m.lease.as_ref());
    m.b.api.inject(Fault {
        verb: Some("get".into()),
        resource: Some("leases".into()),
        name: None,
        action: FaultAction::WrongShape,
        times: Some(1),
    });
    let run = m.b.guard(&m.argv());
    m.b.api.clear_faults();
    run.expect_code(3, "wrong Lease answered");
    run.assert_error(&format!(
        "release \"{REL}\" in namespace \"{NS}\": cannot take the per-release mutex: Lease \
         \"{LEASE}\": metadata.name the answer is \"{LEASE}-other\", another object; helm was \
         not run"
    ));
}

#[test]
fn check() {
    let b = installed();
    let c = chart("demo-1.1.0");
    held_lease(&b);
    let m = Matrix::new(b, &["check", REL, &c, "-n", NS], Goal::ReadOnly);
    m.run_all();
}

#[test]
fn lock() {
    let b = installed();
    let m = Matrix::new(
        b,
        &["lock", REL, "--reason", "matrix", "-n", NS],
        Goal::Locked { hard: false },
    );
    m.run_all();
}

#[test]
fn lock_hard() {
    let b = installed();
    let m = Matrix::new(
        b,
        &["lock", REL, "--hard", "--reason", "matrix", "-n", NS],
        Goal::Locked { hard: true },
    );
    m.run_all();
}

#[test]
fn unlock_hard() {
    let b = installed();
    b.guard(&["lock", REL, "--hard", "--reason", "matrix", "-n", NS])
        .expect_code(0, "lock --hard");
    let m = Matrix::new(b, &["unlock", REL, "-n", NS], Goal::Unlocked);
    m.run_all();
}

#[test]
fn status() {
    let b = installed();
    b.guard(&["lock", REL, "--reason", "matrix", "-n", NS])
        .expect_code(0, "lock");
    held_lease(&b);
    let m = Matrix::new(b, &["status", REL, "-n", NS], Goal::ReadOnly);
    m.run_all();
}

/// What the matrix found: a Lease that cannot be read (403 here) was shown as `mutex:
/// free` by `status` and left out of `check`. Now both say it is unknown, in whole lines. On
/// the real API server: a user who may read the release records but not the Lease.
#[test]
fn unreadable_lease_is_unknown_not_free() {
    let b = installed_on("helm4");
    held_lease(&b);
    grant_role(
        &b,
        "alice",
        NS,
        "read-records",
        serde_json::json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}]),
    );
    wait_allowed(&b, "alice", NS, "list", "secrets");
    let alice = b.api.real().kubeconfig_for("alice", Some(NS));
    let as_alice = [("KUBECONFIG", alice.to_str().unwrap())];
    let guard = |args: &[&str]| b.guard_env(args, &as_alice);
    let cause = format!(
        "API server {} (context \"testbed\"): 403 Forbidden: leases.coordination.k8s.io \
         \"{LEASE}\" is forbidden: User \"alice\" cannot get resource \"leases\" in API group \
         \"coordination.k8s.io\" in the namespace \"{NS}\"; grant this identity the \
         permission (RBAC), or use a context/--kube-as-user that has it",
        b.api.url()
    );
    let run = guard(&["status", REL, "-n", NS]);
    run.expect_code(0, "status");
    assert_eq!(
        run.stdout.lines().last(),
        Some(
            format!("mutex:     unknown: the Lease \"{LEASE}\" could not be read ({cause})")
                .as_str()
        ),
        "{}",
        run.stdout
    );
    let run = guard(&["status", REL, "-n", NS, "-o", "json"]);
    run.expect_code(0, "status json");
    let json: Value = serde_json::from_str(run.stdout.trim()).expect("status json");
    assert_eq!(json["mutex"], Value::Null);
    assert_eq!(json["mutex_error"], cause.as_str());
    let run = guard(&["check", REL, &chart("demo-1.1.0"), "-n", NS]);
    run.expect_code(0, "check");
    run.assert_stderr(&[
        "upgrade: \"db\" in \"shared\" 1.0.0 -> 1.1.0",
        &format!("  note: mutex unknown: the Lease \"{LEASE}\" could not be read ({cause})"),
    ]);
    let run = guard(&["check", REL, &chart("demo-1.1.0"), "-n", NS, "-o", "json"]);
    run.expect_code(0, "check json");
    let json: Value = serde_json::from_str(run.stdout.trim()).expect("check json");
    assert_eq!(json["mutex_error"], cause.as_str());
    assert!(json.get("mutex").is_none(), "{json}");
    // Readable again (the admin): the holder, and no error field.
    let run = b.guard(&["status", REL, "-n", NS, "-o", "json"]);
    let json: Value = serde_json::from_str(run.stdout.trim()).expect("status json");
    assert_eq!(json["mutex"]["holder"], "other-pipeline");
    assert!(json.get("mutex_error").is_none(), "{json}");
}
