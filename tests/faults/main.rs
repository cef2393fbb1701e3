//! Issue 20: real process faults on the real control plane. etcd and kube-apiserver are
//! SIGKILLed and restarted (or stopped for longer than `--lock-timeout`) at points of
//! `upgrade` (before, during and after helm's own writes, and while the mutex is renewed),
//! `lock`, `lock --hard` and `unlock`; afterwards no record is lost or unreadable, no
//! downgrade was applied, every run that could not finish failed closed (exit 3, or helm's
//! own failure) within its bound with a message naming the API server, and one re-run of
//! the same command converges. Plus a seeded soak ([`soak`]).
//!
//! Killing etcd affects every API server sharing it, so this binary has a control plane
//! of its own with one API server (`kube_testbed::use_servers(1)`): its tests lease it one
//! after another.

#[path = "../e2e/common.rs"]
mod common;
mod soak;

use std::io::Write as _;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{chart, finish, Bed, Run};
use serde_json::Value;

pub(crate) const NS: &str = "shared";
pub(crate) const REL: &str = "db";
pub(crate) const LEASE: &str = "helm-lock-db";
const PREFIX: &str = "guarded-upgrade.io/";
const AGENT: &str = "guarded-upgrade/";

/// No faulted run may take longer: `--lock-timeout` (at most 20 s here) plus one retried
/// operation (10 s) plus one read timeout (30 s), plus slack for helm.
pub(crate) const RUN_BOUND: Duration = Duration::from_secs(75);

/// A bed on this binary's one-server plane.
pub(crate) fn bed(label: &str) -> Bed {
    kube_testbed::use_servers(1);
    common::bed(label)
}

pub(crate) fn plane() -> &'static kube_testbed::Plane {
    kube_testbed::plane()
}

/// Starts whatever a test stopped, also when it fails (drop it before the bed).
pub(crate) struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        plane().resume("etcd", 0);
        plane().resume("kube-apiserver", 0);
    }
}

/// A process of the control plane to fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Component {
    Etcd,
    ApiServer,
}

impl Component {
    fn name(self) -> &'static str {
        match self {
            Component::Etcd => "etcd",
            Component::ApiServer => "kube-apiserver",
        }
    }

    pub(crate) fn kill(self) {
        plane().stop(self.name(), 0);
    }

    pub(crate) fn start(self) {
        plane().resume(self.name(), 0);
    }
}

/// A `HELM_BIN` that holds helm's `upgrade` before it starts or after it ends until the
/// test says go: a clean way to fault the control plane at a known point of a guarded run.
pub(crate) struct Hold {
    dir: PathBuf,
}

impl Hold {
    /// The wrapper and the environment that makes guarded-upgrade use it.
    pub(crate) fn new(b: &Bed, phase: &str) -> (Hold, Vec<(String, String)>) {
        let dir = b.home().join(format!("hold-{phase}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir hold");
        let script = dir.join("helm");
        let text = format!(
            "#!/bin/sh\n\
             hold() {{ : > '{d}/held'; while [ ! -e '{d}/go' ]; do sleep 0.05; done; }}\n\
             case \"$1\" in upgrade|install) ;; *) exec '{helm}' \"$@\" ;; esac\n\
             [ '{phase}' = before ] && hold\n\
             '{helm}' \"$@\"; rc=$?\n\
             [ '{phase}' = after ] && hold\n\
             exit $rc\n",
            d = dir.display(),
            helm = b.helm_bin.display(),
        );
        let mut f = std::fs::File::create(&script).expect("create wrapper");
        f.write_all(text.as_bytes()).expect("write wrapper");
        drop(f);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .expect("chmod wrapper");
        let env = vec![("HELM_BIN".to_string(), script.display().to_string())];
        (Hold { dir }, env)
    }

    /// Waits (bounded) until helm is held; false when the run ended first.
    pub(crate) fn wait_held(&self, child: &mut Child) -> bool {
        let deadline = Instant::now() + Duration::from_secs(40);
        while !self.dir.join("held").exists() {
            if matches!(child.try_wait(), Ok(Some(_))) || Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    pub(crate) fn release(&self) {
        std::fs::write(self.dir.join("go"), b"").expect("release the hold");
    }
}

/// Starts guarded-upgrade in its own process group with extra environment.
pub(crate) fn spawn(b: &Bed, args: &[&str], env: &[(String, String)]) -> Child {
    let mut cmd = b.command(common::guard_bin());
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    cmd.spawn().expect("spawn guarded-upgrade")
}

/// Waits for a spawned run within [`RUN_BOUND`] of `started`; kills it and fails the test
/// when it takes longer.
pub(crate) fn finish_within(mut child: Child, started: Instant, what: &str) -> Run {
    while matches!(child.try_wait(), Ok(None)) {
        if started.elapsed() > RUN_BOUND {
            // SAFETY: kill(2) on the process group the child leads.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let run = finish(child);
            panic!(
                "{what}: still running after {RUN_BOUND:?}\n--- stderr\n{}",
                run.stderr
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    finish(child)
}

/// Waits (bounded) until the audit log shows a record write by a program other than
/// guarded-upgrade (helm), or by guarded-upgrade when `ours`.
pub(crate) fn wait_write(b: &Bed, child: &mut Child, ours: bool) -> bool {
    wait_writes(b, child, ours, 1)
}

/// Waits (bounded) until the audit log shows `count` record writes (as [`wait_write`]).
pub(crate) fn wait_writes(b: &Bed, child: &mut Child, ours: bool, count: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let seen = b
            .api
            .requests()
            .iter()
            .filter(|r| {
                r.is_write()
                    && r.resource.as_deref() != Some("leases")
                    && r.user_agent
                        .as_deref()
                        .is_some_and(|u| u.starts_with(AGENT))
                        == ours
            })
            .count();
        if seen >= count {
            return true;
        }
        if matches!(child.try_wait(), Ok(Some(_))) || Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The release records (Secrets), by name.
pub(crate) fn records(b: &Bed) -> Vec<Value> {
    b.api
        .list("secrets", Some(NS))
        .into_iter()
        .filter(|o| o["metadata"]["labels"]["owner"] == "helm")
        .collect()
}

pub(crate) fn names(b: &Bed) -> Vec<String> {
    records(b)
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect()
}

fn revision(o: &Value) -> u64 {
    o["metadata"]["labels"]["version"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// (revision, status label, carries a lock, hard-lock bookkeeping) of every record.
pub(crate) fn shape(b: &Bed) -> Vec<(u64, String, bool, bool)> {
    let mut v: Vec<_> = records(b)
        .iter()
        .map(|o| {
            let l = &o["metadata"]["labels"];
            (
                revision(o),
                l["status"].as_str().unwrap_or("").to_string(),
                l[format!("{PREFIX}lock")].is_string(),
                l[format!("{PREFIX}hard-original-status")].is_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// A chart version as a comparable triple.
pub(crate) fn semver(v: &str) -> (u64, u64, u64) {
    let mut it = v.split('.').map(|p| p.parse().unwrap_or(0));
    (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    )
}

/// What must hold after any faulted run: no record lost, every record readable by helm,
/// at most one deployed revision, and the deployed version never below `floor`.
/// Returns the deployed version.
pub(crate) fn invariants(b: &Bed, before: &[String], floor: &str) -> Result<String, String> {
    let now = names(b);
    for n in before {
        if !now.contains(n) {
            return Err(format!("record {n} lost; records now {now:?}"));
        }
    }
    let run = b.helm(&["history", REL, "-n", NS, "-o", "json", "--max", "1000"]);
    if run.code != 0 {
        return Err(format!("helm cannot read the records: {}", run.stderr));
    }
    let history: Vec<Value> = serde_json::from_str(&run.stdout).map_err(|e| e.to_string())?;
    let deployed: Vec<&Value> = history
        .iter()
        .filter(|h| h["status"] == "deployed")
        .collect();
    if deployed.len() > 1 {
        return Err(format!(
            "{} deployed revisions: {history:?}",
            deployed.len()
        ));
    }
    let version = deployed
        .first()
        .and_then(|h| h["chart"].as_str())
        .and_then(|c| c.rsplit('-').next())
        .unwrap_or("")
        .to_string();
    if !version.is_empty() && semver(&version) < semver(floor) {
        return Err(format!("downgraded: {version} deployed, {floor} was"));
    }
    Ok(version)
}

/// Every `error:` line of a run that failed because the control plane did names the API
/// server (its URL), so the reader knows what was unreachable.
pub(crate) fn errors_name_the_server(b: &Bed, run: &Run) -> Result<(), String> {
    let url = b.api.url();
    for line in run
        .stderr
        .lines()
        .filter(|l| l.starts_with("guarded-upgrade: error: "))
    {
        if !line.contains(&url) && !line.contains("helm") {
            return Err(format!("error line names neither {url} nor helm: {line:?}"));
        }
    }
    Ok(())
}

fn shown(run: &Run) -> String {
    format!(
        "exit {}\n--- stdout\n{}--- stderr\n{}",
        run.code, run.stdout, run.stderr
    )
}

/// Installs `db` 1.0.0 (two records: installed, then upgraded to 1.0.0 again).
pub(crate) fn installed(label: &str) -> Bed {
    let b = bed(label);
    b.api.create_namespace(NS);
    let c = chart("demo-1.0.0");
    b.helm(&["install", REL, &c, "-n", NS])
        .expect_code(0, "helm install");
    b.helm(&["upgrade", REL, &c, "-n", NS])
        .expect_code(0, "helm upgrade");
    b
}

/// Where in a guarded upgrade the fault strikes.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Under the mutex, after the decision, before helm starts (helm then runs against
    /// the faulted plane; the Lease is renewed meanwhile).
    BeforeHelm,
    /// At helm's first write (the new revision's record).
    DuringHelm,
    /// After helm ended, before the mutex is released.
    AfterHelm,
    /// Under the mutex before helm starts, and helm held until the process is back: the
    /// Lease's renewals meet the fault, helm does not.
    RenewalOnly,
}

/// `upgrade --install db 1.1.0` over 1.0.0 with `component` SIGKILLed at `phase` and
/// restarted `down` later; then the invariants, and a re-run that converges.
fn upgrade_with(label: &str, component: Component, phase: Phase, down: Duration) {
    let b = installed(label);
    let _restore = Restore;
    let before = names(&b);
    let c = chart("demo-1.1.0");
    let args = [
        "upgrade",
        "--install",
        REL,
        &c,
        "-n",
        NS,
        "--lease-duration",
        "3s",
        "--lock-timeout",
        "20s",
        "--recover-pending-after",
        "1s",
    ];
    let (hold, env) = Hold::new(
        &b,
        match phase {
            Phase::AfterHelm => "after",
            _ => "before",
        },
    );
    b.api.clear_requests();
    let started = Instant::now();
    let mut child = spawn(&b, &args, &env);
    assert!(hold.wait_held(&mut child), "helm was never started");
    let mut started_again = false;
    match phase {
        Phase::BeforeHelm | Phase::AfterHelm => {
            component.kill();
            hold.release();
        }
        Phase::RenewalOnly => {
            component.kill();
            std::thread::sleep(down);
            component.start();
            started_again = true;
            hold.release();
        }
        Phase::DuringHelm => {
            hold.release();
            let seen = wait_write(&b, &mut child, false);
            component.kill();
            assert!(seen, "helm wrote nothing");
        }
    }
    if !started_again {
        std::thread::sleep(down);
        component.start();
    }
    let run = finish_within(child, started, "faulted upgrade");
    let took = started.elapsed();
    eprintln!(
        "{component:?} {phase:?}: exit {} in {took:.1?}\n{}",
        run.code, run.stderr
    );
    let deployed =
        invariants(&b, &before, "1.0.0").unwrap_or_else(|e| panic!("{e}\n{}", shown(&run)));
    assert!([0, 1, 3].contains(&run.code), "{}", shown(&run));
    errors_name_the_server(&b, &run).unwrap_or_else(|e| panic!("{e}\n{}", shown(&run)));
    if run.code == 0 {
        assert_eq!(
            deployed,
            "1.1.0",
            "exit 0 but {deployed} deployed\n{}",
            shown(&run)
        );
    }
    if let Phase::RenewalOnly = phase {
        // Renewals failed for longer than the Lease's duration: as documented
        // (docs/mutex.md), helm is not interrupted and the run says afterwards that the
        // mutex was lost, naming the unreachable server.
        run.expect_code(0, "upgrade whose renewals met the fault");
        let lost = format!(
            "warning: lost the mutex {LEASE} for release \"{REL}\" in \"{NS}\" while holding \
             it (not renewed for 3s (API server {} (context \"testbed\"): ",
            b.api.url()
        );
        // (With etcd away the API server holds the renewals until etcd is back: no loss.)
        assert!(
            component == Component::Etcd || run.stderr.lines().any(|l| l.starts_with(&lost)),
            "{}",
            shown(&run)
        );
    }
    // One re-run converges: a stale pending revision is recovered (--recover-pending-after
    // 1s), a Lease left held is taken over after its 3 s.
    if shape(&b)
        .last()
        .is_some_and(|s| s.1.starts_with("pending-"))
    {
        std::thread::sleep(Duration::from_millis(2100));
    }
    let again = b.guard(&args);
    again.expect_code(0, "re-run after the fault");
    assert_eq!(b.deployed(REL, NS).0, "1.1.0", "{}", again.stderr);
    invariants(&b, &before, "1.1.0").unwrap_or_else(|e| panic!("after the re-run: {e}"));
    let lease = b.api.get("leases", Some(NS), LEASE).unwrap_or_default();
    assert!(
        lease["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or("")
            .is_empty(),
        "Lease held after the re-run: {lease}"
    );
}

#[test]
fn etcd_killed_around_helm() {
    for phase in [Phase::BeforeHelm, Phase::DuringHelm, Phase::AfterHelm] {
        upgrade_with("helm4", Component::Etcd, phase, Duration::from_secs(2));
    }
}

#[test]
fn apiserver_killed_around_helm() {
    for phase in [Phase::BeforeHelm, Phase::DuringHelm, Phase::AfterHelm] {
        upgrade_with("helm3", Component::ApiServer, phase, Duration::from_secs(1));
    }
}

/// The mutex's renewal while helm is held: the API server is away for longer than the
/// Lease's duration (3 s); renewals fail, then succeed again (nobody took it over), and
/// helm runs once the server is back.
#[test]
fn apiserver_down_longer_than_the_lease_while_held() {
    upgrade_with(
        "helm4",
        Component::ApiServer,
        Phase::RenewalOnly,
        Duration::from_secs(4),
    );
    upgrade_with(
        "helm4",
        Component::Etcd,
        Phase::RenewalOnly,
        Duration::from_secs(4),
    );
}

/// `lock`, `lock --hard` or `unlock` with `component` SIGKILLed at its `nth` record write
/// (the first, or the second: one record already written) and restarted a second later:
/// the invariants, what it claims is so, and a re-run converges (waiting out a Lease it
/// could not release).
fn record_write_with(component: Component, args: &[&str], hard_first: bool, nth: usize) {
    let b = installed("helm4");
    let _restore = Restore;
    if hard_first {
        b.guard(&["lock", REL, "--hard", "-n", NS])
            .expect_code(0, "lock --hard");
    }
    let before = names(&b);
    b.api.clear_requests();
    let started = Instant::now();
    let mut child = spawn(&b, args, &[]);
    let seen = wait_writes(&b, &mut child, true, nth);
    component.kill();
    std::thread::sleep(Duration::from_secs(1));
    component.start();
    let run = finish_within(child, started, args[0]);
    eprintln!(
        "{component:?} {args:?} (write {nth} seen {seen}): exit {} in {:.1?}\n{}",
        run.code,
        started.elapsed(),
        run.stderr
    );
    invariants(&b, &before, "1.0.0").unwrap_or_else(|e| panic!("{e}\n{}", shown(&run)));
    assert!([0, 3].contains(&run.code), "{}", shown(&run));
    errors_name_the_server(&b, &run).unwrap_or_else(|e| panic!("{e}\n{}", shown(&run)));
    check_claims(&b, &run).unwrap_or_else(|e| panic!("{e}\n{}", shown(&run)));
    let again = b.guard(args);
    again.expect_code(0, "re-run after the fault");
    converged(&b, args).unwrap_or_else(|e| panic!("after the re-run: {e}\n{}", again.stderr));
}

/// What `lock`/`unlock` printed is what the records show.
pub(crate) fn check_claims(b: &Bed, run: &Run) -> Result<(), String> {
    let s = shape(b);
    let latest_locked = s.last().is_some_and(|r| r.2);
    let any_locked = s.iter().any(|r| r.2);
    let all_locked = s.iter().all(|r| r.2);
    for line in run.stderr.lines() {
        if run.code == 0 && line.starts_with("unlocked: ") && any_locked {
            return Err(format!("says {line:?}, records {s:?}"));
        }
        if run.code == 0 && line.starts_with("locked: ") && !all_locked {
            return Err(format!("says {line:?}, records {s:?}"));
        }
        if (line.contains("so it is still in force")
            || line.contains("the lock is in force on the latest revision"))
            && !latest_locked
        {
            return Err(format!("says the lock is in force, records {s:?}: {line}"));
        }
    }
    Ok(())
}

/// The result the command asks for is there.
pub(crate) fn converged(b: &Bed, args: &[&str]) -> Result<(), String> {
    let s = shape(b);
    let ok = match args[0] {
        "unlock" => s.iter().all(|r| !r.2) && s.last().is_some_and(|r| r.1 == "deployed"),
        "lock" => {
            let hard = args.contains(&"--hard");
            s.iter().all(|r| r.2)
                && s.last()
                    .is_some_and(|r| (r.1 == "pending-upgrade") == hard && r.3 == hard)
        }
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{args:?} did not converge: {s:?}"))
    }
}

#[test]
fn etcd_killed_at_record_writes() {
    for nth in [1, 2] {
        record_write_with(
            Component::Etcd,
            &["lock", REL, "-n", NS, "--reason", "f"],
            false,
            nth,
        );
        record_write_with(
            Component::Etcd,
            &["lock", REL, "--hard", "-n", NS],
            false,
            nth,
        );
        record_write_with(Component::Etcd, &["unlock", REL, "-n", NS], true, nth);
    }
}

#[test]
fn apiserver_killed_at_record_writes() {
    for nth in [1, 2] {
        record_write_with(
            Component::ApiServer,
            &["lock", REL, "--hard", "-n", NS],
            false,
            nth,
        );
        record_write_with(Component::ApiServer, &["unlock", REL, "-n", NS], true, nth);
    }
}

/// etcd and the API server both stopped for longer than `--lock-timeout`: `upgrade`
/// waiting for a held mutex, `lock`, `lock --hard` and `unlock` all fail closed (exit 3)
/// within their bounds with a message naming the API server; once both are back, a held
/// Lease is taken over after its duration and a re-run of each converges.
#[test]
fn both_stopped_longer_than_the_lock_timeout() {
    let b = installed("helm4");
    let _restore = Restore;
    let before = names(&b);
    let url = b.api.url();
    // A pipeline killed while holding the mutex: its Lease (5 s) is never renewed.
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.000000Z")
        .to_string();
    b.api.put_object(
        "leases",
        serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": LEASE, "namespace": NS},
            "spec": {"holderIdentity": "killed-pipeline", "leaseDurationSeconds": 5,
                     "acquireTime": now, "renewTime": now, "leaseTransitions": 0}
        }),
    );
    let c = chart("demo-1.1.0");
    let upgrade = [
        "upgrade",
        "--install",
        REL,
        &c,
        "-n",
        NS,
        "--lock-timeout",
        "4s",
        "--lease-duration",
        "3s",
    ];
    let started = Instant::now();
    let mut child = spawn(&b, &upgrade, &[]);
    // Waiting for the held mutex, then the plane goes away.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        matches!(child.try_wait(), Ok(None)),
        "upgrade did not wait for the held mutex"
    );
    Component::ApiServer.kill();
    Component::Etcd.kill();
    let run = finish_within(child, started, "upgrade with the plane stopped");
    let took = started.elapsed();
    eprintln!(
        "upgrade, plane stopped: exit {} in {took:.1?}\n{}",
        run.code, run.stderr
    );
    run.expect_code(3, "upgrade with the plane stopped");
    assert!(took < Duration::from_secs(4 + 10 + 5), "took {took:?}");
    let last = run.stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with(&format!(
            "guarded-upgrade: error: release \"{REL}\" in namespace \"{NS}\": "
        )) && last.contains(&url)
            && last.contains("helm was not run"),
        "{}",
        shown(&run)
    );
    for args in [
        vec!["lock", REL, "-n", NS, "--reason", "f"],
        vec!["lock", REL, "--hard", "-n", NS],
        vec!["unlock", REL, "-n", NS],
    ] {
        let started = Instant::now();
        let run = b.guard(&args);
        let took = started.elapsed();
        eprintln!(
            "{args:?}, plane stopped: exit {} in {took:.1?}\n{}",
            run.code, run.stderr
        );
        run.expect_code(3, "plane stopped");
        assert!(took < Duration::from_secs(10 + 5), "{args:?} took {took:?}");
        let last = run.stderr.lines().last().unwrap_or("");
        assert!(
            last.starts_with("guarded-upgrade: error: ") && last.contains(&url),
            "{}",
            shown(&run)
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    Component::Etcd.start();
    Component::ApiServer.start();
    invariants(&b, &before, "1.0.0").unwrap_or_else(|e| panic!("{e}"));
    // The killed pipeline's Lease is taken over after its 5 s, as observed by the run
    // (never by comparing clocks): the re-run's --lock-timeout must be longer than that.
    let mut upgrade = upgrade.to_vec();
    upgrade[7] = "20s";
    let run = b.guard(&upgrade);
    run.expect_code(0, "re-run of upgrade");
    run.assert_stderr_line(
        "note: took over the mutex from killed-pipeline, which stopped renewing it",
    );
    assert_eq!(b.deployed(REL, NS).0, "1.1.0");
    for args in [
        vec!["lock", REL, "--hard", "-n", NS],
        vec!["unlock", REL, "-n", NS],
    ] {
        b.guard(&args).expect_code(0, "re-run");
        converged(&b, &args).unwrap_or_else(|e| panic!("{e}"));
    }
}
