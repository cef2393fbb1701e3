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
//! The record-writing commands also get 410 and 422 ([`WRITE_FAULTS`]), and a failure
//! after the records changed must say how to finish (the same command again) and, when it
//! says whether the lock is in force, say what the latest record shows (issue 25).
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
pub(crate) const LEASE: &str = "helm-lock-db";

/// No single run may take longer (the retry policy's 10 s deadline plus slack).
const RUN_BOUND: Duration = Duration::from_secs(15);

/// What is injected at each index.
pub(crate) const FAULTS: [(&str, FaultAction); 8] = [
    ("500", FaultAction::Status(500)),
    ("503", FaultAction::Status(503)),
    ("409", FaultAction::Status(409)),
    ("403", FaultAction::Status(403)),
    // Issue 20: a 404 on a record that is there (a proxy, a wrong API server).
    ("404", FaultAction::Status(404)),
    ("drop", FaultAction::Drop),
    ("truncate", FaultAction::Truncate),
    ("wrong-shape", FaultAction::WrongShape),
];

/// Also injected for the record-writing commands (`lock`, `lock --hard`, `unlock`): what a
/// record write may be answered besides [`FAULTS`] (issue 25: every failure after a
/// partial write says what it left).
const WRITE_FAULTS: [(&str, FaultAction); 2] = [
    ("410", FaultAction::Status(410)),
    ("422", FaultAction::Status(422)),
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

/// [`installed`] with the helm of `label` (a stand-in label for faults, `helm4` for the real
/// API server) and the driver of this thread.
fn installed_on(label: &str) -> Bed {
    let b = bed(label);
    b.api.create_namespace(NS);
    let c = chart("demo-1.0.0");
    helm(&b, &["install", REL, &c, "-n", NS]).expect_code(0, "helm install");
    helm(&b, &["upgrade", REL, &c, "-n", NS]).expect_code(0, "helm upgrade");
    b
}

thread_local! {
    /// The helm storage driver of the test running on this thread (`secret`, `configmap`).
    static DRIVER: std::cell::Cell<&'static str> = const { std::cell::Cell::new("secret") };
}

/// `HELM_DRIVER` for this thread's driver (nothing for Secrets, helm's default).
fn driver_env() -> Vec<(&'static str, &'static str)> {
    match DRIVER.get() {
        "configmap" => vec![("HELM_DRIVER", "configmap")],
        _ => Vec::new(),
    }
}

/// The resource holding the release records with this thread's driver.
fn resource() -> &'static str {
    match DRIVER.get() {
        "configmap" => "configmaps",
        _ => "secrets",
    }
}

fn guard(b: &Bed, args: &[&str]) -> Run {
    b.guard_env(args, &driver_env())
}

fn helm(b: &Bed, args: &[&str]) -> Run {
    b.helm_env(args, &driver_env())
}

/// Deployed chart version per `helm get metadata` (through this thread's driver).
fn deployed_version(b: &Bed) -> String {
    let run = helm(b, &["get", "metadata", REL, "-n", NS, "-o", "json"]);
    run.expect_code(0, "helm get metadata");
    let m: Value = serde_json::from_str(&run.stdout).expect("helm get metadata json");
    m["version"].as_str().unwrap_or_default().to_string()
}

fn records(b: &Bed) -> Vec<Value> {
    b.api
        .list(resource(), Some(NS))
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
        b.api.delete_object(resource(), Some(NS), &name_of(&o));
    }
    for o in snapshot {
        b.api
            .put_object(resource(), without_server_fields(o.clone()));
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

/// Arms `action` once, on the k-th (0-based) guarded-upgrade request to the stand-in.
pub(crate) fn arm_guard_fault(b: &Bed, k: usize, action: &FaultAction) {
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
}

pub(crate) fn guard_requests(b: &Bed) -> usize {
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
    // lets lock/unlock run unserialized with a warning; the rest must match. A fault while
    // the tool looks for the hard-lock policy changes only the reason the lock is not
    // enforced by the cluster (the claim itself stays: labels only), and a fault reading the
    // enforcement's ConfigMap during unlock is a note (the server refuses the record writes
    // if the lock is enforced).
    const NOT_ENFORCED: &str = "warning: the hard lock is not enforced by the cluster: ";
    run.stderr
        .lines()
        .filter(|l| {
            !l.starts_with("guarded-upgrade: ")
                && !l.starts_with("waiting: mutex ")
                && !l.starts_with("warning: running without the release mutex: ")
                && !l.starts_with("note: cannot read the ConfigMap guarded-upgrade-lock-")
        })
        .map(|l| match l.starts_with(NOT_ENFORCED) {
            true => format!("{NOT_ENFORCED}…\n"),
            false => format!("{l}\n"),
        })
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
        let baseline = guard(&b, &argv);
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
        let writes = matches!(self.goal, Goal::Locked { .. } | Goal::Unlocked);
        let extra: &[(&str, FaultAction)] = if writes { &WRITE_FAULTS } else { &[] };
        for k in 0..self.requests {
            for (fault, action) in FAULTS.iter().chain(extra) {
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
        self.case_with(&[(k, action.clone())])
    }

    /// One run with each fault armed on the k-th guarded-upgrade request of its pair
    /// (several faults: one run meets them all), then the invariants.
    fn case_with(&self, faults: &[(usize, FaultAction)]) -> Result<(), String> {
        let b = &self.b;
        reset(b, &self.snapshot, self.lease.as_ref());
        b.api.clear_requests();
        for (k, action) in faults {
            arm_guard_fault(b, *k, action);
        }
        let started = Instant::now();
        let run = guard(b, &self.argv());
        let took = started.elapsed();
        b.api.clear_faults();
        // Shown with --nocapture: what each case did.
        eprintln!(
            "  {faults:?}: exit {} in {took:.1?}: {}",
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
                // Issue 25: a failure after the records changed says what it left and how
                // to finish: whether the lock is in force (as the records show) and that
                // the same command completes it.
                let changed = self.snapshot.iter().any(|before| {
                    b.api
                        .get(resource(), Some(NS), &name_of(before))
                        .is_none_or(|now| {
                            now["metadata"]["labels"] != before["metadata"]["labels"]
                                || now["data"] != before["data"]
                        })
                });
                let last = run.stderr.lines().last().unwrap_or_default();
                if run.code != 0 && changed {
                    let finish = [
                        "Run the same command again to complete it",
                        "Run the command again: it completes or confirms it",
                        "Run the same command again: it completes or confirms it",
                    ];
                    if !finish.iter().any(|f| last.contains(f)) {
                        return Err(format!(
                            "records changed, but the error does not say how to finish: {:#?}\n{shown}",
                            locks(b)
                        ));
                    }
                }
                let says_not_in_force = last.contains("the lock is not in force");
                let says_in_force = last.contains("the lock is in force")
                    || last.contains("so it is still in force");
                if run.code != 0
                    && ((says_in_force && !latest_locked(b))
                        || (says_not_in_force && latest_locked(b)))
                {
                    return Err(format!(
                        "what the error says of the lock being in force is not what the latest \
                         record shows: {:#?}\n{shown}",
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
                    let now = b.api.get(resource(), Some(NS), named);
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
                let again = guard(b, &self.argv());
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
                if deployed_version(b) != "1.1.0" {
                    return Err(format!("deployed is {:?}", deployed_version(b)));
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
    let run = guard(&m.b, &m.argv());
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

// ---- Issue 20: helm 3, the ConfigMap driver, pairs of faults (a seeded sample), and
// SIGKILL of guarded-upgrade itself at every request index.

/// splitmix64: a small generator whose sample is reproducible from its seed.
pub(crate) struct Rng(pub u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The seed in `var`, else one from the clock (printed by the caller, so a failure
/// reproduces with `var=SEED`).
pub(crate) fn seed_from(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// Runs per command of a seeded matrix sample: `GU_MATRIX_SAMPLES`, default 3.
pub(crate) fn matrix_samples() -> usize {
    std::env::var("GU_MATRIX_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// The writing commands of the matrix, each with what it needs installed first.
fn writing_commands(c110: &str) -> Vec<(Vec<String>, Goal, bool)> {
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        (
            v(&["upgrade", "--install", REL, c110, "-n", NS]),
            Goal::Upgraded,
            false,
        ),
        (
            v(&["lock", REL, "--reason", "matrix", "-n", NS]),
            Goal::Locked { hard: false },
            false,
        ),
        (
            v(&["lock", REL, "--hard", "--reason", "matrix", "-n", NS]),
            Goal::Locked { hard: true },
            false,
        ),
        // `true`: hard-locked first.
        (v(&["unlock", REL, "-n", NS]), Goal::Unlocked, true),
    ]
}

/// A seeded sample of the matrix for one helm and one driver: per writing command
/// `GU_MATRIX_SAMPLES` (default 3) runs, each with one or two faults (a pair meets both in
/// one run) at random guarded-upgrade requests, checked with every invariant of the
/// full matrix. Prints its seed; `GU_MATRIX_SEED=N` reproduces a failure.
fn sampled(label: &'static str, driver: &'static str) {
    DRIVER.set(driver);
    let seed = seed_from("GU_MATRIX_SEED");
    let samples = matrix_samples();
    eprintln!("matrix sample {label} {driver}: GU_MATRIX_SEED={seed} GU_MATRIX_SAMPLES={samples}");
    let mut rng = Rng(seed);
    let mut failures = Vec::new();
    let mut cases = 0;
    for (args, goal, hard_first) in writing_commands(&chart("demo-1.1.0")) {
        let b = installed_on(label);
        if hard_first {
            guard(&b, &["lock", REL, "--hard", "--reason", "matrix", "-n", NS])
                .expect_code(0, "lock --hard");
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let m = Matrix::new(b, &argv, goal);
        for _ in 0..samples {
            let faults: Vec<(usize, FaultAction)> = (0..1 + rng.below(2))
                .map(|_| {
                    (
                        rng.below(m.requests),
                        FAULTS[rng.below(FAULTS.len())].1.clone(),
                    )
                })
                .collect();
            cases += 1;
            if let Err(why) = m.case_with(&faults) {
                failures.push(format!("{} with {faults:?}: {why}", args.join(" ")));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} sampled cases failed ({label}, {driver}); reproduce with \
         GU_MATRIX_SEED={seed} GU_MATRIX_SAMPLES={samples}:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn sample_helm3_secret() {
    sampled("standin-helm3", "secret");
}

#[test]
fn sample_helm3_configmap() {
    sampled("standin-helm3", "configmap");
}

#[test]
fn sample_helm4_configmap() {
    sampled("standin-helm4", "configmap");
}

#[test]
fn sample_helm4_secret_pairs() {
    sampled("standin-helm4", "secret");
}

/// Issue 20's defect, whole: a 404 on the final patch of `unlock` (the latest record,
/// which is there) was taken as "pruned meanwhile" and `unlock` printed `unlocked:` with
/// the lock still on the latest record. Now the record is read back and written again.
#[test]
fn unlock_404_on_the_latest_record_is_not_success() {
    let b = installed();
    guard(&b, &["lock", REL, "--reason", "matrix", "-n", NS]).expect_code(0, "lock");
    b.api.inject(Fault {
        verb: Some("patch".into()),
        resource: Some("secrets".into()),
        name: Some(format!("sh.helm.release.v1.{REL}.v2")),
        action: FaultAction::Status(404),
        times: Some(1),
    });
    let run = guard(&b, &["unlock", REL, "-n", NS]);
    b.api.clear_faults();
    run.expect_code(0, "unlock");
    run.assert_stderr(&[&format!("unlocked: release \"{REL}\" in \"{NS}\"")]);
    assert!(!latest_locked(&b), "{:#?}", locks(&b));
    assert!(locks(&b).values().all(|l| l.is_empty()), "{:#?}", locks(&b));
}

/// Whether `pid` still runs (not reaped, not a zombie we waited for).
fn alive(child: &mut std::process::Child) -> bool {
    matches!(child.try_wait(), Ok(None))
}

/// SIGKILL of guarded-upgrade itself (a cancelled CI job, an OOM kill) at every request
/// index of a command: request k is held by the stand-in (a long delay), the process
/// group (guarded-upgrade and any helm it started) is killed while it waits, and then:
/// every record is still there; the state is one the documented write order allows
/// (`lock`: older records carry the lock only when the latest does; `unlock`: the latest
/// drops it only when no older record still carries it; a hard lock's pending status only
/// with its bookkeeping); `status` describes it truthfully (lock shown exactly when the
/// latest record carries one, the latest revision's status as stored); and a re-run
/// converges once the killed run's Lease is past its duration (emulated here by releasing
/// it; `lease_of_a_killed_lock_is_taken_over_after_its_duration` waits for real).
fn sigkill_sweep(args: &[&str], goal: Goal, hard_first: bool) {
    let b = installed();
    if hard_first {
        guard(&b, &["lock", REL, "--hard", "--reason", "matrix", "-n", NS])
            .expect_code(0, "lock --hard");
    }
    let m = Matrix::new(b, args, goal);
    let b = &m.b;
    let mut failures = Vec::new();
    for k in 0..m.requests {
        reset(b, &m.snapshot, m.lease.as_ref());
        b.api.clear_requests();
        arm_guard_fault(b, k, &FaultAction::Delay(Duration::from_secs(30)));
        let mut child = b.guard_spawn(args);
        // The k requests before it are answered (and logged); request k is then sent and
        // held. A run that ends first (it needed fewer requests this time) is no case.
        let deadline = Instant::now() + RUN_BOUND;
        while guard_requests(b) < k && alive(&mut child) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(300));
        let killed = alive(&mut child);
        // SAFETY: kill(2) on the process group the child leads.
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        let run = crate::common::finish(child);
        b.api.clear_faults();
        eprintln!("  SIGKILL at request {k}: killed {killed}, {:?}", locks(b));
        if let Err(why) = allowed_after_kill(&m) {
            failures.push(format!(
                "SIGKILL at request {k}: {why}\n--- stderr\n{}",
                run.stderr
            ));
            continue;
        }
        // The killed run's Lease, past its duration.
        if b.api
            .get("leases", Some(NS), LEASE)
            .is_some_and(|l| l["spec"]["holderIdentity"].is_string())
        {
            released_lease(b);
        }
        // A helm killed mid-run leaves its record pending: the re-run recovers it as
        // documented once it is older than --recover-pending-after (1s).
        if latest_status(b).starts_with("pending-") && m.goal == Goal::Upgraded {
            std::thread::sleep(Duration::from_millis(2100));
        }
        let again = guard(b, &m.argv());
        if again.code != 0 {
            failures.push(format!(
                "SIGKILL at request {k}: the re-run failed: exit {}\n{}",
                again.code, again.stderr
            ));
            continue;
        }
        if let Err(e) = m.goal_reached() {
            failures.push(format!("SIGKILL at request {k}: after a re-run, {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} kills failed:\n{}",
        failures.len(),
        m.requests,
        failures.join("\n\n")
    );
}

/// The state a killed run may leave, and what `status` says of it.
fn allowed_after_kill(m: &Matrix) -> Result<(), String> {
    let b = &m.b;
    let now: Vec<String> = records(b).iter().map(name_of).collect();
    for o in &m.snapshot {
        if !now.contains(&name_of(o)) {
            return Err(format!("record {} lost", name_of(o)));
        }
    }
    let locks = locks(b);
    let latest = latest_locked(b);
    let older_locked = {
        let mut by_rev: Vec<(u64, bool)> = records(b)
            .iter()
            .map(|o| {
                (
                    o["metadata"]["labels"]["version"]
                        .as_str()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                    o["metadata"]["labels"][format!("{PREFIX}lock")].is_string(),
                )
            })
            .collect();
        by_rev.sort();
        by_rev.pop();
        by_rev.iter().any(|(_, l)| *l)
    };
    match m.goal {
        Goal::Locked { .. } if older_locked && !latest => {
            return Err(format!(
                "an older record carries the lock, the latest not: {locks:#?}"
            ))
        }
        Goal::Unlocked if older_locked && !latest => {
            return Err(format!(
                "the latest record lost the lock before an older one: {locks:#?}"
            ))
        }
        _ => {}
    }
    let status = latest_status(b);
    let latest_labels = records(b)
        .into_iter()
        .max_by_key(|o| {
            o["metadata"]["labels"]["version"]
                .as_str()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .map(|o| o["metadata"]["labels"].clone())
        .unwrap_or_default();
    if m.goal != Goal::Upgraded
        && status == "pending-upgrade"
        && !latest_labels[format!("{PREFIX}hard-original-status")].is_string()
    {
        return Err(format!(
            "pending-upgrade without a hard lock's bookkeeping: {latest_labels}"
        ));
    }
    // `status` says what is there.
    let run = guard(b, &["status", REL, "-n", NS, "-o", "json"]);
    if run.code != 0 {
        return Err(format!("status failed: exit {}\n{}", run.code, run.stderr));
    }
    let json: Value = serde_json::from_str(run.stdout.trim()).map_err(|e| format!("{e}"))?;
    if json["lock"].is_null() == latest {
        return Err(format!(
            "status shows lock {} but the latest record: {locks:#?}",
            json["lock"]
        ));
    }
    if json["latest"]["status"] != status.as_str() {
        return Err(format!(
            "status shows latest {} but the record is {status}",
            json["latest"]
        ));
    }
    Ok(())
}

#[test]
fn sigkill_lock() {
    sigkill_sweep(
        &["lock", REL, "--reason", "matrix", "-n", NS],
        Goal::Locked { hard: false },
        false,
    );
}

#[test]
fn sigkill_lock_hard() {
    sigkill_sweep(
        &["lock", REL, "--hard", "--reason", "matrix", "-n", NS],
        Goal::Locked { hard: true },
        false,
    );
}

#[test]
fn sigkill_unlock() {
    sigkill_sweep(&["unlock", REL, "-n", NS], Goal::Unlocked, true);
}

#[test]
fn sigkill_upgrade() {
    let c = chart("demo-1.1.0");
    sigkill_sweep(
        &[
            "upgrade",
            "--install",
            REL,
            &c,
            "-n",
            NS,
            "--recover-pending-after",
            "1s",
        ],
        Goal::Upgraded,
        false,
    );
}
