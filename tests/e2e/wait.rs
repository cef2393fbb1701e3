//! End to end on a real API server whose controllers run (kube-controller-manager,
//! kube-scheduler, kwok with one fake node): what a pipeline really runs — `helm upgrade
//! --install --wait --timeout`, `--atomic` (helm 3) / `--rollback-on-failure` (helm 4),
//! `--wait-for-jobs` with hook Jobs, helm 4's `--wait=watcher` — through the guard, a
//! rollout that never becomes Ready (kwok stage), and the mutex across a long wait and a
//! guard killed during helm's wait.

use std::time::Duration;

use crate::common::{bed_with_controllers, finish, Bed, Run};
use kube_testbed::{FAIL_LABEL, NEVER_READY_LABEL};
use serde_json::Value;

const NS: &str = "shared";

/// Long enough for a rollout on a busy 2-core machine; a successful wait ends as soon as
/// the rollout is done.
const LONG: &str = "3m";

/// helm's whole wait for a rollout that never becomes Ready: it always runs out, so it is
/// kept short. Enough for helm to write the new ReplicaSet's template, and for the
/// rollback of `--atomic`/`--rollback-on-failure` (same timeout), which is quick: the old
/// pods never stopped serving (`maxUnavailable` 0 of 2 replicas).
const NEVER: &str = "6s";

fn setup(label: &str) -> Bed {
    let b = bed_with_controllers(label);
    b.api.create_namespace(NS);
    b
}

/// How the label's helm waits: helm 3's `--wait` (it polls), helm 4's `--wait=watcher`
/// (kstatus, its default strategy).
fn wait_flag(label: &str) -> &'static str {
    if crate::common::helm_major(label) == 3 {
        "--wait"
    } else {
        "--wait=watcher"
    }
}

/// Roll back when the upgrade fails: `--atomic` (helm 3), `--rollback-on-failure` (helm 4).
fn rollback_flag(label: &str) -> &'static str {
    if crate::common::helm_major(label) == 3 {
        "--atomic"
    } else {
        "--rollback-on-failure"
    }
}

/// What a test chart holds besides its two-replica Deployment.
#[derive(Clone, Copy, PartialEq)]
enum Extra {
    /// The pods run but never become Ready (kwok stage of the test bed).
    NeverReady,
    /// A pre-upgrade and a post-upgrade hook Job (they complete).
    Hooks,
    /// A pre-upgrade hook Job whose pod fails (kwok chaos stage), `backoffLimit: 0`.
    FailingPreHook,
    /// A Job of the release itself (`--wait-for-jobs` waits for it), completing.
    Job,
}

/// A chart `app` at `version`: Deployment `db-app` (2 replicas, pods labelled with the
/// chart version), plus `extras`.
fn app_chart(b: &Bed, version: &str, extras: &[Extra]) -> String {
    let tag: String = extras
        .iter()
        .map(|e| match e {
            Extra::NeverReady => "-never-ready",
            Extra::Hooks => "-hooks",
            Extra::FailingPreHook => "-failing-hook",
            Extra::Job => "-job",
        })
        .collect();
    let dir = b.home().join("charts").join(format!("app-{version}{tag}"));
    let templates = dir.join("templates");
    std::fs::create_dir_all(&templates).expect("chart dir");
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).expect("write chart file");
    };
    write(
        "Chart.yaml",
        format!("apiVersion: v2\nname: app\nversion: {version}\nappVersion: \"{version}\"\n"),
    );
    write("values.yaml", "replicas: 2\n".to_string());
    // The label is in every version, "true" or "false": after a failed upgrade helm 3
    // patches from the last deployed release, so a label only the failed one added would
    // stay on the pod template of the next version.
    let never_ready = format!(
        "\n        {NEVER_READY_LABEL}: \"{}\"",
        extras.contains(&Extra::NeverReady)
    );
    write(
        "templates/deployment.yaml",
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{{{ .Release.Name }}}}-app\n\
             spec:\n  replicas: {{{{ .Values.replicas }}}}\n  selector:\n    matchLabels:\n      \
             app.kubernetes.io/instance: {{{{ .Release.Name }}}}\n  template:\n    metadata:\n      \
             labels:\n        app.kubernetes.io/instance: {{{{ .Release.Name }}}}\n        \
             app.kubernetes.io/version: {{{{ .Chart.Version | quote }}}}{never_ready}\n    spec:\n      \
             terminationGracePeriodSeconds: 5\n      containers:\n        - name: app\n          \
             image: \"registry.invalid/app:{{{{ .Chart.Version }}}}\"\n"
        ),
    );
    let job = |name: &str, hook: Option<&str>, fails: bool| -> String {
        let annotations = hook
            .map(|h| {
                format!(
                    "\n  annotations:\n    helm.sh/hook: {h}\n    \
                     helm.sh/hook-delete-policy: before-hook-creation"
                )
            })
            .unwrap_or_default();
        let fail = format!("\n        {FAIL_LABEL}: \"{fails}\"");
        format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {{{{ .Release.Name }}}}-{name}{annotations}\n\
             spec:\n  backoffLimit: 0\n  template:\n    metadata:\n      labels:\n        \
             job: {name}{fail}\n    spec:\n      restartPolicy: Never\n      containers:\n        \
             - name: {name}\n          image: registry.invalid/{name}:1\n"
        )
    };
    if extras.contains(&Extra::Hooks) {
        write(
            "templates/pre-upgrade.yaml",
            job("pre-upgrade", Some("pre-upgrade"), false),
        );
        write(
            "templates/post-upgrade.yaml",
            job("post-upgrade", Some("post-upgrade"), false),
        );
    }
    if extras.contains(&Extra::FailingPreHook) {
        write(
            "templates/pre-upgrade.yaml",
            job("pre-upgrade", Some("pre-upgrade"), true),
        );
    }
    if extras.contains(&Extra::Job) {
        // Jobs are immutable: one per chart version.
        let name = format!("migrate-{}", version.replace('.', "-"));
        write("templates/job.yaml", job(&name, None, false));
    }
    dir.to_string_lossy().into_owned()
}

/// Ready pods of release `db` running chart version `version`.
fn ready_pods(b: &Bed, version: &str) -> usize {
    b.api
        .real()
        .pods(
            NS,
            &[
                ("app.kubernetes.io/instance", "db"),
                ("app.kubernetes.io/version", version),
            ],
        )
        .iter()
        .filter(|p| {
            kube_testbed::Cluster::pod_ready(p) && p["metadata"]["deletionTimestamp"].is_null()
        })
        .count()
}

/// (revision, status, chart, description) of every revision, per `helm history`.
fn history(b: &Bed) -> Vec<(u64, String, String, String)> {
    b.history("db", NS)
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (
                r["revision"].as_u64().unwrap_or(0),
                s("status"),
                s("chart"),
                s("description"),
            )
        })
        .collect()
}

/// (status, chart) of every revision.
fn statuses(b: &Bed) -> Vec<(String, String)> {
    history(b).into_iter().map(|(_, s, c, _)| (s, c)).collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// The mutex is free: its Lease has no holder (released the client-go way).
#[track_caller]
fn assert_mutex_released(b: &Bed) {
    let lease = b
        .api
        .get("leases", Some(NS), "helm-lock-db")
        .expect("the mutex's Lease exists after a serialized run");
    let holder = lease["spec"]["holderIdentity"].as_str().unwrap_or_default();
    assert_eq!(holder, "", "the mutex is still held: {lease}");
}

/// The guard's last line after helm failed.
fn helm_failed_line(code: i32) -> String {
    format!(
        "helm failed (exit {code}) after the decision to upgrade release \"db\" in \"shared\"; \
         the next run decides from the revisions helm left (\"helm history db -n shared\")"
    )
}

/// Index of the first stderr line for which `f` holds; panics showing stderr.
#[track_caller]
fn line_index(run: &Run, what: &str, f: impl Fn(&str) -> bool) -> usize {
    run.stderr
        .lines()
        .position(f)
        .unwrap_or_else(|| panic!("no stderr line {what}\n--- stderr\n{}", run.stderr))
}

/// `status` of release `db`: its text and its JSON.
fn status(b: &Bed) -> (String, Value) {
    let text = b.guard(&["status", "db", "-n", NS]);
    text.expect_code(0, "status");
    let json = b.guard(&["status", "db", "-n", NS, "-o", "json"]);
    json.expect_code(0, "status -o json");
    let value = serde_json::from_str(json.stdout.trim())
        .unwrap_or_else(|e| panic!("status -o json: {e}\n{}", json.stdout));
    (text.stdout.clone(), value)
}

/// `check -o json` of release `db` with `chart`.
fn check_json(b: &Bed, chart: &str) -> (i32, Value) {
    let run = b.guard(&["check", "db", chart, "-n", NS, "-o", "json"]);
    let value = serde_json::from_str(run.stdout.trim())
        .unwrap_or_else(|e| panic!("check -o json: {e}\n{}\n{}", run.stdout, run.stderr));
    (run.code, value)
}

#[track_caller]
fn assert_line(text: &str, expected: &str) {
    assert!(
        text.lines().any(|l| l == expected),
        "no line is exactly\n{expected}\n--- in\n{text}"
    );
}

fn install(b: &Bed, label: &str) {
    let c = app_chart(b, "1.0.0", &[]);
    let run = b.guard(&[
        "upgrade",
        "--install",
        "db",
        &c,
        "-n",
        NS,
        wait_flag(label),
        "--timeout",
        LONG,
    ]);
    run.expect_code(0, "install --wait");
    run.assert_stderr_line(r#"install: "db" in "shared" 1.0.0 (not installed yet)"#);
}

/// `upgrade --install --wait --timeout` returns once the rollout is Ready: both replicas of
/// the chart's version are Ready when the guard returns, for the install and the upgrade.
fn wait_rolls_out(label: &str) {
    let b = setup(label);
    install(&b, label);
    assert!(
        ready_pods(&b, "1.0.0") >= 2,
        "helm returned before 2 pods were Ready"
    );
    let c110 = app_chart(&b, "1.1.0", &[]);
    let run = b.guard(&[
        "upgrade",
        "--install",
        "db",
        &c110,
        "-n",
        NS,
        wait_flag(label),
        "--timeout",
        LONG,
    ]);
    run.expect_code(0, "upgrade --wait");
    run.assert_stderr_line(r#"upgrade: "db" in "shared" 1.0.0 -> 1.1.0"#);
    assert!(
        ready_pods(&b, "1.1.0") >= 2,
        "helm returned before 2 new pods were Ready"
    );
    assert_eq!(
        statuses(&b),
        pairs(&[("superseded", "app-1.0.0"), ("deployed", "app-1.1.0")])
    );
    assert_mutex_released(&b);
    // The controllers finish the rollout: no pod of 1.0.0 is left.
    b.api
        .real()
        .wait_rollout(NS, "db-app", Duration::from_secs(120));
}

/// A rollout that never becomes Ready: the guard's exit code is helm's, its output says
/// helm failed after the decision, the mutex is released, and the next run sees the
/// failed revision (not counted as deployed) and converges with a fixed version.
fn rollout_never_ready(label: &str) {
    let b = setup(label);
    install(&b, label);
    let broken = app_chart(&b, "1.1.0", &[Extra::NeverReady]);
    let run = b.guard(&[
        "upgrade",
        "db",
        &broken,
        "-n",
        NS,
        wait_flag(label),
        "--timeout",
        NEVER,
    ]);
    run.expect_code(1, "a rollout that never becomes Ready");
    let decided = line_index(&run, "with the decision", |l| {
        l == r#"upgrade: "db" in "shared" 1.0.0 -> 1.1.0"#
    });
    let helm_error = line_index(&run, "with helm's error", |l| {
        l.starts_with("Error: UPGRADE FAILED")
    });
    let failed = line_index(&run, "saying helm failed", |l| l == helm_failed_line(1));
    assert!(
        decided < helm_error && helm_error < failed,
        "{}",
        run.stderr
    );
    assert_eq!(
        run.stderr.lines().last(),
        Some(helm_failed_line(1).as_str())
    );
    assert_eq!(
        statuses(&b),
        pairs(&[("deployed", "app-1.0.0"), ("failed", "app-1.1.0")])
    );
    assert_mutex_released(&b);
    assert_eq!(ready_pods(&b, "1.1.0"), 0);
    assert!(ready_pods(&b, "1.0.0") >= 1, "the old pods keep serving");

    // The next run compares with the deployed revision and retries (docs/decision.md); a
    // fixed version converges.
    let fixed = app_chart(&b, "1.1.1", &[]);
    let run = b.guard(&[
        "upgrade",
        "db",
        &fixed,
        "-n",
        NS,
        wait_flag(label),
        "--timeout",
        LONG,
    ]);
    run.expect_code(0, "a fixed version");
    run.assert_stderr_line(r#"upgrade: "db" in "shared" 1.0.0 -> 1.1.1"#);
    run.assert_stderr_line(
        "  note: later revision 2 is failed and is not counted as deployed; comparing with \
         deployed revision 1",
    );
    assert!(ready_pods(&b, "1.1.1") >= 2);
    assert_eq!(
        statuses(&b),
        pairs(&[
            ("superseded", "app-1.0.0"),
            ("failed", "app-1.1.0"),
            ("deployed", "app-1.1.1")
        ])
    );
    assert_mutex_released(&b);
}

/// `--atomic` (helm 3) / `--rollback-on-failure` (helm 4) rolls a failed rollout back; the
/// next run with the same target is refused (`rolled-back`, exit 3, helm not run) instead
/// of re-applying it on every run or taking the rolled-back release as the target; a fixed
/// version upgrades.
fn rollback_on_failure(label: &str) {
    let b = setup(label);
    install(&b, label);
    let broken = app_chart(&b, "1.1.0", &[Extra::NeverReady]);
    let run = b.guard(&[
        "upgrade",
        "db",
        &broken,
        "-n",
        NS,
        wait_flag(label),
        rollback_flag(label),
        "--timeout",
        NEVER,
    ]);
    run.expect_code(1, "a failed upgrade rolled back");
    assert_eq!(
        run.stderr.lines().last(),
        Some(helm_failed_line(1).as_str())
    );
    let h = history(&b);
    assert_eq!(
        h.iter()
            .map(|(r, s, c, d)| (*r, s.as_str(), c.as_str(), d.starts_with("Rollback to 1")))
            .collect::<Vec<_>>(),
        vec![
            (1, "superseded", "app-1.0.0", false),
            (2, "failed", "app-1.1.0", false),
            (3, "deployed", "app-1.0.0", true)
        ],
        "{h:?}"
    );
    assert_mutex_released(&b);
    b.api
        .real()
        .wait_rollout(NS, "db-app", Duration::from_secs(120));
    assert!(ready_pods(&b, "1.0.0") >= 2);

    // The same target again: refused, helm not run, nothing written.
    b.api.clear_requests();
    let run = b.guard(&[
        "upgrade",
        "db",
        &broken,
        "-n",
        NS,
        wait_flag(label),
        rollback_flag(label),
        "--timeout",
        NEVER,
    ]);
    run.expect_code(3, "the version rolled back from");
    run.assert_stderr(&[
        "refused: release \"db\" in \"shared\" was rolled back from chart version 1.1.0: \
         revision 2 failed and revision 3 rolled back to revision 1 (1.0.0); not applying \
         1.1.0 again by itself. Publish a fixed chart version, or re-apply this one on \
         purpose with --min-version-policy off",
    ]);
    assert_eq!(b.writes(), Vec::<String>::new(), "a refusal writes nothing");
    assert_eq!(history(&b).len(), 3);

    // `status` and `check` name the rollback and what the next run does.
    let (text, json) = status(&b);
    assert_line(&text, "latest:    revision 3 deployed");
    assert_line(
        &text,
        "rollback:  revision 3 is a rollback to revision 1 after revision 2 (app 1.1.0) failed",
    );
    assert_line(
        &text,
        "upgrade:   upgrades when the target chart version is newer, but a target of app \
         1.1.0, the version rolled back from, is refused (rolled-back, exit 3): publish a \
         fixed version, or re-apply it on purpose with --min-version-policy off",
    );
    assert_eq!(json["upgrade"], "upgrade-if-newer", "{json}");
    assert_eq!(
        json["rollback"],
        serde_json::json!({"kind": "after-failure", "revision": 3, "to_revision": 1,
            "from_revision": 2, "from_chart": "app", "from_version": "1.1.0"}),
        "{json}"
    );
    let (code, check) = check_json(&b, &broken);
    assert_eq!(code, 3, "{check}");
    assert_eq!(
        (&check["action"], &check["reason"]),
        (&"refuse".into(), &"rolled-back".into()),
        "{check}"
    );
    assert_eq!(check["rollback"], json["rollback"], "{check}");

    // A fixed version upgrades from the rolled-back release.
    let fixed = app_chart(&b, "1.1.1", &[]);
    let run = b.guard(&[
        "upgrade",
        "db",
        &fixed,
        "-n",
        NS,
        wait_flag(label),
        rollback_flag(label),
        "--timeout",
        LONG,
    ]);
    run.expect_code(0, "a fixed version");
    run.assert_stderr_line(r#"upgrade: "db" in "shared" 1.0.0 -> 1.1.1"#);
    assert_eq!(b.deployed("db", NS), ("1.1.1".into(), 4));
    assert!(ready_pods(&b, "1.1.1") >= 2);
}

/// An operator rolls a healthy release back on purpose (`helm rollback db 1 --wait`: 1.1.0
/// deployed and Ready, back to 1.0.0). The records show it was asked for (revision 2
/// `superseded`, not `failed`); `status` says so and what the next run does; the pipeline
/// of 1.1.0 run again is skipped (`rollback-kept`, exit 0, nothing written, the 1.0.0 pods
/// keep running) instead of undoing the rollback; a newer version upgrades, with a note.
fn rollback_asked_for_is_kept(label: &str) {
    let b = setup(label);
    install(&b, label);
    let c110 = app_chart(&b, "1.1.0", &[]);
    let upgrade = |chart: &str| {
        b.guard(&[
            "upgrade",
            "db",
            chart,
            "-n",
            NS,
            wait_flag(label),
            "--timeout",
            LONG,
        ])
    };
    upgrade(&c110).expect_code(0, "1.1.0");
    assert!(ready_pods(&b, "1.1.0") >= 2);
    b.helm(&[
        "rollback",
        "db",
        "1",
        "-n",
        NS,
        wait_flag(label),
        "--timeout",
        LONG,
    ])
    .expect_code(0, "helm rollback db 1");
    let h = history(&b);
    assert_eq!(
        h.iter()
            .map(|(r, s, c, d)| (*r, s.as_str(), c.as_str(), d == "Rollback to 1"))
            .collect::<Vec<_>>(),
        vec![
            (1, "superseded", "app-1.0.0", false),
            (2, "superseded", "app-1.1.0", false),
            (3, "deployed", "app-1.0.0", true)
        ],
        "{h:?}"
    );
    b.api
        .real()
        .wait_rollout(NS, "db-app", Duration::from_secs(120));
    assert!(ready_pods(&b, "1.0.0") >= 2);

    let kept = "revision 3 is a rollback to revision 1 of revision 2 (app 1.1.0), which had \
                deployed: asked for (helm rollback), not forced by a failure";
    let (text, json) = status(&b);
    assert_line(&text, &format!("rollback:  {kept}"));
    assert_line(
        &text,
        "upgrade:   upgrades when the target chart version is newer, but a target of app \
         newer than 1.0.0 up to 1.1.0, the version rolled back from, is skipped \
         (rollback-kept): the rollback is kept until a version newer than 1.1.0, or one \
         applied on purpose with --min-version-policy off",
    );
    assert_eq!(
        json["rollback"],
        serde_json::json!({"kind": "on-request", "revision": 3, "to_revision": 1,
            "from_revision": 2, "from_chart": "app", "from_version": "1.1.0"}),
        "{json}"
    );

    // The pipeline of 1.1.0 runs again: skipped, nothing written, the rollback stays.
    b.api.clear_requests();
    let run = upgrade(&c110);
    run.expect_code(0, "the version rolled back from, again");
    run.assert_stderr(&[&format!(
        "skip: release \"db\" in \"shared\" is at 1.0.0 (revision 3); {kept}, and target \
         1.1.0 is not newer than 1.1.0, so the rollback is kept. Publish a version newer than \
         1.1.0, or apply this one on purpose with --min-version-policy off"
    )]);
    assert_eq!(b.writes(), Vec::<String>::new(), "a skip writes nothing");
    let (code, check) = check_json(&b, &c110);
    assert_eq!(code, 0, "{check}");
    assert_eq!(
        (&check["action"], &check["reason"]),
        (&"skip".into(), &"rollback-kept".into()),
        "{check}"
    );
    assert_eq!(check["rollback"], json["rollback"], "{check}");
    assert_eq!(history(&b).len(), 3);
    assert!(ready_pods(&b, "1.0.0") >= 2);
    assert_eq!(ready_pods(&b, "1.1.0"), 0);

    // The fix the rollback waits for upgrades, naming the rollback.
    let c111 = app_chart(&b, "1.1.1", &[]);
    let run = upgrade(&c111);
    run.expect_code(0, "a newer version");
    run.assert_stderr_line(r#"upgrade: "db" in "shared" 1.0.0 -> 1.1.1"#);
    run.assert_stderr_line(&format!("  note: {kept}"));
    assert_eq!(b.deployed("db", NS), ("1.1.1".into(), 4));
    assert!(ready_pods(&b, "1.1.1") >= 2);
    assert_mutex_released(&b);
}

/// A Job's status field as a timestamp (RFC 3339, seconds).
fn job_time(job: &Value, field: &str) -> jiff::Timestamp {
    let text = job["status"][field]
        .as_str()
        .or_else(|| job["metadata"][field].as_str())
        .unwrap_or_else(|| panic!("no {field} in {job}"));
    text.parse()
        .unwrap_or_else(|e| panic!("{field} {text:?}: {e}"))
}

fn job(b: &Bed, name: &str) -> Value {
    b.api
        .get("jobs", Some(NS), name)
        .unwrap_or_else(|| panic!("Job {name} is missing"))
}

/// `--wait --wait-for-jobs` with a pre-upgrade and a post-upgrade hook Job and a Job of the
/// release: the pre-upgrade Job completed before helm changed the Deployment, the
/// post-upgrade one after, and the release's Job has completed when the guard returns.
fn wait_for_jobs_and_hooks(label: &str) {
    let b = setup(label);
    install(&b, label);
    let chart = app_chart(&b, "1.1.0", &[Extra::Hooks, Extra::Job]);
    let run = b.guard(&[
        "upgrade",
        "db",
        &chart,
        "-n",
        NS,
        wait_flag(label),
        "--wait-for-jobs",
        "--timeout",
        LONG,
    ]);
    run.expect_code(0, "upgrade --wait-for-jobs with hooks");
    run.assert_stderr_line(r#"upgrade: "db" in "shared" 1.0.0 -> 1.1.0"#);
    let migrate = job(&b, "db-migrate-1-1-0");
    assert_eq!(migrate["status"]["succeeded"], 1, "{migrate}");
    let pre = job(&b, "db-pre-upgrade");
    let post = job(&b, "db-post-upgrade");
    assert_eq!(pre["status"]["succeeded"], 1, "{pre}");
    assert_eq!(post["status"]["succeeded"], 1, "{post}");
    // The new ReplicaSet (of the 1.1.0 template) was made after the pre-upgrade hook
    // completed; the post-upgrade hook was created after that (whole seconds: not before).
    let replicasets = b.api.list("replicasets", Some(NS));
    let new_rs = replicasets
        .iter()
        .find(|rs| {
            rs["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/version"] == "1.1.0"
        })
        .expect("the ReplicaSet of 1.1.0");
    let rs_made = job_time(new_rs, "creationTimestamp");
    assert!(
        job_time(&pre, "completionTime") <= rs_made,
        "{pre}\n{new_rs}"
    );
    assert!(
        rs_made <= job_time(&post, "creationTimestamp"),
        "{post}\n{new_rs}"
    );
    assert!(ready_pods(&b, "1.1.0") >= 2);
    assert_eq!(
        statuses(&b),
        pairs(&[("superseded", "app-1.0.0"), ("deployed", "app-1.1.0")])
    );
    assert_mutex_released(&b);
}

/// A pre-upgrade hook Job whose pod fails (kwok's chaos stage): helm fails the upgrade
/// before touching the Deployment, the guard says so after its decision, the revision is
/// `failed`, and the mutex is released.
fn failing_hook(label: &str) {
    let b = setup(label);
    install(&b, label);
    let chart = app_chart(&b, "1.1.0", &[Extra::FailingPreHook]);
    let run = b.guard(&[
        "upgrade",
        "db",
        &chart,
        "-n",
        NS,
        wait_flag(label),
        "--wait-for-jobs",
        "--timeout",
        LONG,
    ]);
    run.expect_code(1, "a failing pre-upgrade hook");
    assert!(
        run.stderr.contains("pre-upgrade hooks failed"),
        "{}",
        run.stderr
    );
    assert_eq!(
        run.stderr.lines().last(),
        Some(helm_failed_line(1).as_str())
    );
    let pre = job(&b, "db-pre-upgrade");
    assert_eq!(pre["status"]["failed"], 1, "{pre}");
    assert_eq!(
        statuses(&b),
        pairs(&[("deployed", "app-1.0.0"), ("failed", "app-1.1.0")])
    );
    assert_eq!(
        b.api
            .real()
            .pods(NS, &[("app.kubernetes.io/version", "1.1.0")])
            .len(),
        0,
        "helm changed the Deployment after its hook failed"
    );
    assert_mutex_released(&b);
}

/// Whether `pid` is gone (exited and reaped, or a zombie nobody reaped yet).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

/// The children of a process (every thread's).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    out
}

fn lease(b: &Bed) -> Option<(String, String)> {
    let l = b.api.get("leases", Some(NS), "helm-lock-db")?;
    Some((
        l["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        l["spec"]["renewTime"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    ))
}

fn record_status(b: &Bed, revision: u64) -> Option<String> {
    let obj = b.api.get(
        "secrets",
        Some(NS),
        &format!("sh.helm.release.v1.db.v{revision}"),
    )?;
    obj["metadata"]["labels"]["status"]
        .as_str()
        .map(str::to_string)
}

/// Starts a guarded upgrade to a never-Ready 1.1.0 with a 3 s Lease (the shortest) and waits until helm
/// is in its wait (revision 2 pending, a pod of 1.1.0 running but not Ready).
fn start_held_rollout(b: &Bed, label: &str, chart: &str) -> std::process::Child {
    let child = b.guard_spawn(&[
        "upgrade",
        "db",
        chart,
        "-n",
        NS,
        wait_flag(label),
        "--timeout",
        LONG,
        "--lease-duration",
        "3s",
    ]);
    b.api.real().wait_until(
        "helm to wait for pods of 1.1.0 (revision 2 pending-upgrade)",
        Duration::from_secs(120),
        || {
            record_status(b, 2).as_deref() == Some("pending-upgrade")
                && b.api
                    .real()
                    .pods(NS, &[("app.kubernetes.io/version", "1.1.0")])
                    .iter()
                    .any(|p| p["status"]["phase"] == "Running")
        },
    );
    child
}

/// A wait longer than the Lease duration keeps the mutex: the Lease is renewed by the same
/// holder throughout, a second pipeline waits for it, and once the rollout completes (the
/// test lets the pods become Ready only after several Lease durations) the second decides
/// on the new state: 1.1.0 is deployed, so its 1.1.0 is not newer.
fn long_wait_keeps_the_mutex(label: &str) {
    let b = setup(label);
    install(&b, label);
    let held = app_chart(&b, "1.1.0", &[Extra::NeverReady]);
    let mut first = start_held_rollout(&b, label, &held);
    let (holder, _) = lease(&b).expect("the first run holds the mutex");
    assert!(holder.starts_with("guarded-upgrade@"), "{holder}");
    let second = b.guard_spawn(&[
        "upgrade",
        "db",
        &held,
        "-n",
        NS,
        wait_flag(label),
        "--timeout",
        LONG,
        "--lease-duration",
        "3s",
    ]);
    // Ten renewals by the same holder (one a second): more than three Lease durations.
    let mut renewals = Vec::new();
    b.api.real().wait_until(
        "ten renewals of the mutex during helm's wait",
        Duration::from_secs(60),
        || {
            let (h, renewed) = lease(&b).expect("the Lease");
            assert_eq!(h, holder, "the mutex changed hands during the wait");
            if renewals.last() != Some(&renewed) {
                renewals.push(renewed);
            }
            renewals.len() > 10
        },
    );
    assert!(
        first.try_wait().expect("poll").is_none(),
        "the first run ended early"
    );
    // The rollout may now finish: its pods pass their readiness check.
    let selector = [("app.kubernetes.io/version", "1.1.0")];
    b.api.real().wait_until(
        "the first run to finish once its pods are Ready",
        Duration::from_secs(180),
        || {
            b.api.real().make_pods_ready(NS, &selector);
            first.try_wait().expect("poll").is_some()
        },
    );
    let first = finish(first);
    first.expect_code(0, "the long wait");
    first.assert_stderr_line(r#"upgrade: "db" in "shared" 1.0.0 -> 1.1.0"#);
    let second = finish(second);
    second.expect_code(0, "the second pipeline");
    assert!(
        second
            .stderr
            .lines()
            .any(|l| l.starts_with("waiting: mutex helm-lock-db")),
        "{}",
        second.stderr
    );
    second.assert_stderr_line(
        "skip: release \"db\" in \"shared\" is at 1.1.0 (revision 2); target 1.1.0 is not \
         newer (policy newer; use --min-version-policy newer-or-equal to re-apply)",
    );
    assert_eq!(
        statuses(&b),
        pairs(&[("superseded", "app-1.0.0"), ("deployed", "app-1.1.0")])
    );
    assert_mutex_released(&b);
}

/// SIGKILL of the guard (only the guard) during helm's wait: helm dies with it, `status`
/// says what is left (revision 2 pending-upgrade, the dead run's mutex), and a re-run with
/// `--recover-pending-after` takes the mutex over once it expired, marks the revision
/// failed and converges.
fn killed_during_wait(label: &str) {
    let b = setup(label);
    install(&b, label);
    let held = app_chart(&b, "1.1.0", &[Extra::NeverReady]);
    let guard = start_held_rollout(&b, label, &held);
    let helm: Vec<u32> = children(guard.id());
    assert_eq!(helm.len(), 1, "the guard runs one helm: {helm:?}");
    // SAFETY: kill(2) on the child we spawned; no memory involved.
    unsafe {
        libc::kill(guard.id() as i32, libc::SIGKILL);
    }
    let killed = finish(guard);
    assert_eq!(killed.code, -1, "killed by a signal");
    b.api.real().wait_until(
        "helm to die with the guard",
        Duration::from_secs(10),
        || process_gone(helm[0]),
    );
    assert_eq!(record_status(&b, 2).as_deref(), Some("pending-upgrade"));

    let status = b.guard(&["status", "db", "-n", NS]);
    status.expect_code(0, "status");
    let out = &status.stdout;
    assert!(
        out.lines()
            .any(|l| l == "latest:    revision 2 pending-upgrade"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("deployed:  app 1.0.0 ") && l.ends_with("revision 1")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("mutex:     helm-lock-db held by guarded-upgrade@")),
        "the dead run's Lease is shown, not free: {out}"
    );

    let fixed = app_chart(&b, "1.1.1", &[]);
    let run = b.guard(&[
        "upgrade",
        "db",
        &fixed,
        "-n",
        NS,
        wait_flag(label),
        "--timeout",
        LONG,
        "--lease-duration",
        "3s",
        "--recover-pending-after",
        "1s",
    ]);
    run.expect_code(0, "the re-run");
    assert!(run.stderr.contains("took over the mutex"), "{}", run.stderr);
    assert!(
        run.stderr.contains("recovered: revision 2"),
        "{}",
        run.stderr
    );
    run.assert_stderr_line(r#"upgrade: "db" in "shared" 1.0.0 -> 1.1.1"#);
    assert!(ready_pods(&b, "1.1.1") >= 2);
    assert_eq!(
        statuses(&b),
        pairs(&[
            ("superseded", "app-1.0.0"),
            ("failed", "app-1.1.0"),
            ("deployed", "app-1.1.1")
        ])
    );
    assert_mutex_released(&b);
}

mod compat {
    use super::{rollback_on_failure, rollout_never_ready, wait_rolls_out};
    crate::common::per_helm_compat!(wait_rolls_out, rollout_never_ready, rollback_on_failure);
}

crate::common::per_helm!(
    rollback_asked_for_is_kept,
    wait_for_jobs_and_hooks,
    failing_hook,
    long_wait_keeps_the_mutex,
    killed_during_wait
);
