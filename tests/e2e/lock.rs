//! End to end: release locks (`lock`, `unlock`, `status`, `locks`) with real helm against
//! the real API server (newest helm 3 and 4; the oldest too for lock and hard lock). The
//! lock lives in labels on Helm's own records, so every scenario also checks what helm
//! itself does with those records.

use std::collections::BTreeMap;

use crate::common::{bed, chart, with_interposer, Bed, Run};
use serde_json::Value;

const NS: &str = "shared";
const PREFIX: &str = "guarded-upgrade.io/";
/// What `lock --hard` adds where the enforcement policy is not installed (issue 18).
const NOT_ENFORCED: &str = "warning: the hard lock is not enforced by the cluster: the \
     ValidatingAdmissionPolicy guarded-upgrade-hard-lock is not installed; a cluster admin \
     installs it with `guarded-upgrade policy install` (see docs/locks.md); plain helm upgrade \
     and install are refused (pending record), but helm rollback, helm uninstall and kubectl are \
     not";

/// The user the admin kubeconfig authenticates as: the default `--by` of a lock.
fn who(b: &Bed) -> &'static str {
    if b.api.is_real() {
        "admin"
    } else {
        "standin"
    }
}

fn setup(label: &str) -> Bed {
    let b = bed(label);
    b.api.create_namespace(NS);
    b
}

fn json(run: &Run, what: &str) -> Value {
    serde_json::from_str(run.stdout.trim())
        .unwrap_or_else(|e| panic!("{what}: stdout is not JSON ({e}): {}", run.stdout))
}

fn record(release: &str, revision: u64) -> String {
    format!("sh.helm.release.v1.{release}.v{revision}")
}

/// All labels of a record (`secrets` or `configmaps`).
fn labels_of(b: &Bed, resource: &str, ns: &str, name: &str) -> BTreeMap<String, String> {
    let obj = b
        .api
        .get(resource, Some(ns), name)
        .unwrap_or_else(|| panic!("{resource} {ns}/{name} missing"));
    serde_json::from_value(obj["metadata"]["labels"].clone()).unwrap_or_default()
}

/// Only guarded-upgrade's labels of a record.
fn lock_labels(b: &Bed, resource: &str, ns: &str, name: &str) -> BTreeMap<String, String> {
    labels_of(b, resource, ns, name)
        .into_iter()
        .filter(|(k, _)| k.starts_with(PREFIX))
        .collect()
}

/// Labels of every record of the release in the namespace, by record name.
fn all_labels(
    b: &Bed,
    resource: &str,
    ns: &str,
    release: &str,
) -> BTreeMap<String, BTreeMap<String, String>> {
    b.api
        .list(resource, Some(ns))
        .into_iter()
        .filter(|o| o["metadata"]["labels"]["name"] == release)
        .map(|o| {
            (
                o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                serde_json::from_value(o["metadata"]["labels"].clone()).unwrap_or_default(),
            )
        })
        .collect()
}

/// Kubernetes' rule for label values (the stand-in does not enforce it; a real API does).
fn assert_label_values_valid(labels: &BTreeMap<String, String>) {
    for (k, v) in labels {
        let b = v.as_bytes();
        let ok = b.is_empty()
            || (b.len() <= 63
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')));
        assert!(ok, "label {k}={v:?} is not a valid label value");
    }
}

fn status_json(b: &Bed, release: &str, ns: &str, env: &[(&str, &str)]) -> Value {
    let run = b.guard_env(&["status", release, "-n", ns, "-o", "json"], env);
    run.expect_code(0, "status -o json");
    json(&run, "status")
}

fn check_json(b: &Bed, release: &str, chart: &str, ns: &str, env: &[(&str, &str)]) -> Value {
    let run = b.guard_env(&["check", release, chart, "-n", ns, "-o", "json"], env);
    json(&run, "check")
}

/// A string field of the lock as `status -o json` reports it (`since`, `expires`, …).
fn lock_field(b: &Bed, env: &[(&str, &str)], field: &str) -> String {
    let status = status_json(b, "db", NS, env);
    status["lock"][field]
        .as_str()
        .unwrap_or_else(|| panic!("no lock.{field} in {status}"))
        .to_string()
}

/// The one error line of a release that is not in `shared` as a Secret record.
fn not_found(release: &str) -> String {
    format!(
        "release {release:?} not found in namespace \"shared\" (Secret records); nothing \
         changed. Check the name, -n/--namespace and HELM_DRIVER"
    )
}

fn install(b: &Bed, release: &str, chart: &str, ns: &str) {
    b.guard(&["upgrade", "--install", release, chart, "-n", ns])
        .expect_code(0, "install");
}

/// 1. Soft lock: the guarded upgrade skips without writing anything; unlock lets it through.
fn soft_lock_skips_without_writes(label: &str) {
    let b = setup(label);
    install(&b, "db", &chart("demo-1.0.0"), NS);
    let run = b.guard(&[
        "lock",
        "db",
        "-n",
        NS,
        "--reason",
        "db migration 4711",
        "--by",
        "alice",
    ]);
    run.expect_code(0, "lock");
    run.assert_stderr(&[r#"locked: release "db" in "shared" (soft): db migration 4711"#]);
    let since = lock_field(&b, &[], "since");

    b.api.clear_requests();
    let c110 = chart("demo-1.1.0");
    let run = b.guard(&["upgrade", "--install", "db", &c110, "-n", NS]);
    run.expect_code(0, "locked upgrade");
    run.assert_stderr(&[&format!(
        "skip: release \"db\" in \"shared\" is at 1.0.0 (revision 1); target 1.1.0 not \
         applied: soft lock by alice since {since}: \"db migration 4711\""
    )]);
    assert!(
        !run.stdout.contains("has been upgraded"),
        "helm ran: {}",
        run.stdout
    );
    assert_eq!(
        b.writes(),
        Vec::<String>::new(),
        "a locked skip must not write"
    );

    let check = check_json(&b, "db", &c110, NS, &[]);
    assert_eq!(check["action"], "skip", "{check}");
    assert_eq!(check["reason"], "locked", "{check}");
    assert_eq!(check["lock"]["kind"], "soft", "{check}");
    assert_eq!(check["lock"]["by"], "alice", "{check}");
    assert_eq!(b.deployed("db", NS), ("1.0.0".into(), 1));

    let run = b.guard(&["unlock", "db", "-n", NS]);
    run.expect_code(0, "unlock");
    run.assert_stderr(&[r#"unlocked: release "db" in "shared""#]);
    assert!(lock_labels(&b, "secrets", NS, &record("db", 1)).is_empty());
    let run = b.guard(&["upgrade", "--install", "db", &c110, "-n", NS]);
    run.expect_code(0, "upgrade after unlock");
    run.assert_stderr_line(r#"upgrade: "db" in "shared" 1.0.0 -> 1.1.0"#);
    assert_eq!(b.deployed("db", NS), ("1.1.0".into(), 2));
    // Unlocking an unlocked release succeeds and says so.
    let run = b.guard(&["unlock", "db", "-n", NS]);
    run.expect_code(0, "unlock again");
    run.assert_stderr(&[r#"unlocked: release "db" in "shared" was not locked"#]);
}

/// 2. Pin 1.4.x: 1.4.3 upgrades, 1.5.0 is skipped as `pinned`.
fn pin_allows_only_matching(label: &str) {
    let b = setup(label);
    let who = who(&b);
    install(&b, "db", &b.versioned_chart("1.4.0"), NS);
    b.guard(&["lock", "db", "--pin", "1.4.x", "-n", NS])
        .expect_code(0, "lock --pin")
        .assert_stderr(&[r#"locked: release "db" in "shared" (pin), pinned to 1.4.x"#]);
    let c150 = b.versioned_chart("1.5.0");
    let check = check_json(&b, "db", &c150, NS, &[]);
    assert_eq!(check["action"], "skip", "{check}");
    assert_eq!(check["reason"], "pinned", "{check}");
    assert_eq!(check["lock"]["kind"], "pin", "{check}");
    assert_eq!(check["lock"]["pin"], "1.4.x", "{check}");
    let since = check["lock"]["since"]
        .as_str()
        .expect("lock.since")
        .to_string();

    let c143 = b.versioned_chart("1.4.3");
    let check = check_json(&b, "db", &c143, NS, &[]);
    assert_eq!(check["action"], "upgrade", "{check}");
    let run = b.guard(&["upgrade", "db", &c143, "-n", NS]);
    run.expect_code(0, "upgrade within the pin");
    run.assert_stderr_line(r#"upgrade: "db" in "shared" 1.4.0 -> 1.4.3"#);
    assert_eq!(b.deployed("db", NS), ("1.4.3".into(), 2));

    // The pin followed the upgrade onto revision 2.
    b.api.clear_requests();
    let run = b.guard(&["upgrade", "db", &c150, "-n", NS]);
    run.expect_code(0, "upgrade outside the pin");
    run.assert_stderr(&[&format!(
        "skip: release \"db\" in \"shared\" is at 1.4.3 (revision 2); target 1.5.0 does not \
         match the pin \"1.4.x\" (pin lock by {who} since {since})"
    )]);
    assert_eq!(
        b.writes(),
        Vec::<String>::new(),
        "a pinned skip must not write"
    );
    assert_eq!(b.deployed("db", NS), ("1.4.3".into(), 2));
    let status = status_json(&b, "db", NS, &[]);
    assert_eq!(status["lock"]["pin"], "1.4.x", "{status}");
    assert_eq!(status["upgrade"], "upgrade-if-newer", "{status}");
}

/// `--labels`/`-l` cannot touch the lock's labels (issue 25, item 7): helm merges user
/// labels into the new record, so `guarded-upgrade.io/pin=2.x` on an upgrade the pin allows
/// would move the pin, and `guarded-upgrade.io/lock=null` would lift the lock. Both are
/// refused before any request, by the CLI and by the shim; the pin then still holds.
fn labels_cannot_move_or_lift_a_lock(label: &str) {
    let b = setup(label);
    install(&b, "db", &b.versioned_chart("1.4.0"), NS);
    b.guard(&["lock", "db", "--pin", "1.4.x", "-n", NS])
        .expect_code(0, "lock --pin");
    let pinned = lock_labels(&b, "secrets", NS, &record("db", 1));
    let c143 = b.versioned_chart("1.4.3");
    let refusal = |key: &str, flag: &str| {
        format!(
            "{flag} sets the label \"{key}\": keys under `guarded-upgrade.io/` hold the \
             release's lock and are not set through helm; change a lock with `guarded-upgrade \
             lock` and lift it with `guarded-upgrade unlock`"
        )
    };
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["--labels", "guarded-upgrade.io/pin=2.x"],
            "--labels",
            "guarded-upgrade.io/pin",
        ),
        (
            &["--labels=team=db,guarded-upgrade.io/pin=2.x"],
            "--labels",
            "guarded-upgrade.io/pin",
        ),
        (
            &["-l", "guarded-upgrade.io/lock=null"],
            "-l",
            "guarded-upgrade.io/lock",
        ),
        (
            &["-l", "a=b", "-l", "guarded-upgrade.io/pin=null,c=d"],
            "-l",
            "guarded-upgrade.io/pin",
        ),
    ];
    for (extra, flag, key) in cases {
        for shim in [false, true] {
            let mut argv: Vec<&str> = Vec::new();
            if shim {
                argv.extend(["helm", "--"]);
            }
            argv.extend(["upgrade", "db", c143.as_str(), "-n", NS]);
            argv.extend(extra.iter().copied());
            b.api.clear_requests();
            let run = b.guard(&argv);
            run.expect_code(2, &format!("{argv:?}"));
            run.assert_error(&refusal(key, flag));
            assert!(
                b.api.requests().is_empty(),
                "{argv:?}: a usage error reads nothing"
            );
        }
    }
    assert_eq!(b.deployed("db", NS), ("1.4.0".into(), 1));
    assert_eq!(lock_labels(&b, "secrets", NS, &record("db", 1)), pinned);
    // Other labels pass, and the pin stays where `lock` put it: 1.4.3 upgrades, 2.0.0 does not.
    b.guard(&["upgrade", "db", &c143, "-n", NS, "-l", "team=db"])
        .expect_code(0, "upgrade within the pin, another label");
    assert_eq!(b.deployed("db", NS), ("1.4.3".into(), 2));
    assert_eq!(labels_of(&b, "secrets", NS, &record("db", 2))["team"], "db");
    let c200 = b.versioned_chart("2.0.0");
    let check = check_json(&b, "db", &c200, NS, &[]);
    assert_eq!(check["action"], "skip", "{check}");
    assert_eq!(check["reason"], "pinned", "{check}");
    assert_eq!(status_json(&b, "db", NS, &[])["lock"]["pin"], "1.4.x");
}

/// 3. An expired lock is ignored with a note; `status` flags it as expired.
fn expired_lock_is_ignored(label: &str) {
    let b = setup(label);
    let who = who(&b);
    install(&b, "db", &chart("demo-1.0.0"), NS);
    b.guard(&[
        "lock",
        "db",
        "--expires",
        "2s",
        "--reason",
        "short",
        "-n",
        NS,
    ])
    .expect_code(0, "lock --expires 2s");
    let status = status_json(&b, "db", NS, &[]);
    assert_eq!(status["lock"]["expired"], false, "{status}");
    assert_eq!(status["upgrade"], "blocked", "{status}");
    std::thread::sleep(std::time::Duration::from_millis(3100));
    let status = status_json(&b, "db", NS, &[]);
    assert_eq!(status["lock"]["expired"], true, "{status}");
    assert_eq!(status["lock"]["kind"], "soft", "{status}");
    assert!(status["lock"]["expires"].is_string(), "{status}");
    let expires = status["lock"]["expires"].as_str().unwrap().to_string();
    assert_eq!(status["upgrade"], "upgrade-if-newer", "{status}");

    let run = b.guard(&["upgrade", "db", &chart("demo-1.1.0"), "-n", NS]);
    run.expect_code(0, "upgrade past an expired lock");
    run.assert_stderr_line(r#"upgrade: "db" in "shared" 1.0.0 -> 1.1.0"#);
    run.assert_stderr_line(&format!(
        "  note: ignored expired lock set by {who} (soft lock, expired at {expires})"
    ));
    assert_eq!(b.deployed("db", NS), ("1.1.0".into(), 2));
    // The (expired) lock followed helm's upgrade; it is still shown until unlocked.
    let status = status_json(&b, "db", NS, &[]);
    assert_eq!(status["lock"]["expired"], true, "{status}");
    b.guard(&["unlock", "db", "-n", NS])
        .expect_code(0, "unlock");
    let status = status_json(&b, "db", NS, &[]);
    assert!(status["lock"].is_null(), "{status}");
}

/// 4. Hard lock: plain helm refuses, helm can still read the record, unlock restores it.
fn hard_lock_blocks_plain_helm(label: &str) {
    let b = setup(label);
    let who = who(&b);
    install(&b, "db", &chart("demo-1.0.0"), NS);
    let before = b.history("db", NS);
    b.guard(&["lock", "db", "--hard", "--reason", "freeze", "-n", NS])
        .expect_code(0, "lock --hard")
        .assert_stderr(&[
            r#"locked: release "db" in "shared" (hard): freeze"#,
            NOT_ENFORCED,
        ]);
    let labels = labels_of(&b, "secrets", NS, &record("db", 1));
    assert_eq!(labels["status"], "pending-upgrade", "{labels:?}");
    assert_eq!(labels["guarded-upgrade.io/lock"], "hard", "{labels:?}");
    assert_eq!(
        labels["guarded-upgrade.io/hard-original-status"], "deployed",
        "{labels:?}"
    );

    let c110 = chart("demo-1.1.0");
    let run = b.helm(&["upgrade", "db", &c110, "-n", NS]);
    assert_ne!(run.code, 0, "plain helm must refuse: {}", run.stdout);
    assert!(
        run.stderr
            .contains("another operation (install/upgrade/rollback) is in progress"),
        "{}",
        run.stderr
    );

    b.api.clear_requests();
    let run = b.guard(&["upgrade", "db", &c110, "-n", NS]);
    run.expect_code(0, "guarded upgrade of a hard-locked release");
    run.assert_stderr(&[&format!(
        "skip: release \"db\" in \"shared\" is at 1.0.0 (revision 1); target 1.1.0 not \
         applied: hard lock by {who} since {}: \"freeze\"",
        lock_field(&b, &[], "since")
    )]);
    assert_eq!(
        b.writes(),
        Vec::<String>::new(),
        "a locked skip must not write"
    );
    let check = check_json(&b, "db", &c110, NS, &[]);
    assert_eq!(check["reason"], "locked", "{check}");
    assert_eq!(check["deployed"]["version"], "1.0.0", "{check}");
    let status = status_json(&b, "db", NS, &[]);
    assert_eq!(status["lock"]["kind"], "hard", "{status}");
    assert_eq!(status["latest"]["status"], "pending-upgrade", "{status}");
    assert_eq!(status["deployed"]["version"], "1.0.0", "{status}");

    // Both helm versions read the re-encoded record.
    let run = b.helm(&["status", "db", "-n", NS]);
    run.expect_code(0, "helm status");
    assert!(run.stdout.contains("pending-upgrade"), "{}", run.stdout);
    let history = b.history("db", NS);
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0]["status"], "pending-upgrade", "{history:?}");
    assert_eq!(history[0]["chart"], "demo-1.0.0", "{history:?}");
    let meta = b.metadata("db", NS);
    assert_eq!(meta["version"], "1.0.0", "{meta}");

    b.guard(&["unlock", "db", "-n", NS])
        .expect_code(0, "unlock")
        .assert_stderr(&[r#"unlocked: release "db" in "shared""#]);
    assert_eq!(b.history("db", NS), before, "unlock restores the record");
    let labels = labels_of(&b, "secrets", NS, &record("db", 1));
    assert_eq!(labels["status"], "deployed", "{labels:?}");
    assert!(!labels.keys().any(|k| k.starts_with(PREFIX)), "{labels:?}");
    b.helm(&["upgrade", "db", &c110, "-n", NS])
        .expect_code(0, "plain helm upgrade after unlock");
    assert_eq!(b.deployed("db", NS), ("1.1.0".into(), 2));
}

/// 5. A soft lock survives a plain `helm upgrade` and a `helm rollback` by someone else.
fn lock_survives_plain_upgrade_and_rollback(label: &str) {
    let b = setup(label);
    install(&b, "db", &chart("demo-1.0.0"), NS);
    b.guard(&[
        "lock",
        "db",
        "--reason",
        "hands off",
        "--by",
        "bob",
        "-n",
        NS,
    ])
    .expect_code(0, "lock");
    let v1 = lock_labels(&b, "secrets", NS, &record("db", 1));
    assert_eq!(v1["guarded-upgrade.io/lock"], "soft", "{v1:?}");

    b.helm(&["upgrade", "db", &chart("demo-1.1.0"), "-n", NS])
        .expect_code(0, "plain helm upgrade");
    assert_eq!(b.deployed("db", NS), ("1.1.0".into(), 2));
    assert_eq!(lock_labels(&b, "secrets", NS, &record("db", 2)), v1);
    assert_eq!(
        lock_labels(&b, "secrets", NS, &record("db", 1)),
        v1,
        "superseded record"
    );
    let c120 = chart("demo-1.2.0");
    let run = b.guard(&["upgrade", "db", &c120, "-n", NS]);
    run.expect_code(0, "guarded upgrade after plain upgrade");
    run.assert_stderr(&[&format!(
        "skip: release \"db\" in \"shared\" is at 1.1.0 (revision 2); target 1.2.0 not \
         applied: soft lock by bob since {}: \"hands off\"",
        lock_field(&b, &[], "since")
    )]);
    assert_eq!(check_json(&b, "db", &c120, NS, &[])["reason"], "locked");

    b.helm(&["rollback", "db", "1", "-n", NS])
        .expect_code(0, "helm rollback");
    assert_eq!(b.deployed("db", NS), ("1.0.0".into(), 3));
    assert_eq!(lock_labels(&b, "secrets", NS, &record("db", 3)), v1);
    let status = status_json(&b, "db", NS, &[]);
    assert_eq!(status["lock"]["kind"], "soft", "{status}");
    assert_eq!(status["lock"]["reason"], "hands off", "{status}");
    assert_eq!(status["lock"]["by"], "bob", "{status}");
    assert_eq!(status["latest"]["revision"], 3, "{status}");
    assert_eq!(status["upgrade"], "blocked", "{status}");
    assert_eq!(check_json(&b, "db", &c120, NS, &[])["reason"], "locked");

    // unlock clears every revision.
    b.guard(&["unlock", "db", "-n", NS])
        .expect_code(0, "unlock");
    for rev in 1..=3 {
        assert!(lock_labels(&b, "secrets", NS, &record("db", rev)).is_empty());
    }
}

/// 6. `locks -A -o json` lists exactly the locked releases of every namespace.
fn locks_lists_all_namespaces(label: &str) {
    let b = setup(label);
    b.api.create_namespace("other");
    let c100 = chart("demo-1.0.0");
    install(&b, "db", &c100, NS);
    install(&b, "web", &c100, NS);
    install(&b, "cache", &c100, "other");
    b.guard(&[
        "lock",
        "db",
        "--reason",
        "migration",
        "--by",
        "alice",
        "-n",
        NS,
    ])
    .expect_code(0, "lock db");
    b.guard(&[
        "lock",
        "cache",
        "--pin",
        "1.0.x",
        "--by",
        "bob",
        "--expires",
        "4h",
        "-n",
        "other",
    ])
    .expect_code(0, "lock cache");

    let run = b.guard(&["locks", "-A", "-o", "json"]);
    run.expect_code(0, "locks -A");
    let rows = json(&run, "locks -A");
    let rows = rows.as_array().expect("an array");
    let mut found: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["namespace"].as_str().unwrap().to_string(),
                r["release"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            ("other".to_string(), "cache".to_string()),
            (NS.to_string(), "db".to_string())
        ],
        "{rows:?}"
    );
    for r in rows {
        for key in [
            "release",
            "namespace",
            "kind",
            "reason",
            "by",
            "since",
            "expires",
            "expired",
            "pin",
        ] {
            assert!(r.get(key).is_some(), "{key} missing in {r}");
        }
        assert!(r["since"].as_str().is_some_and(|s| s.ends_with('Z')), "{r}");
    }
    let db = rows.iter().find(|r| r["release"] == "db").unwrap();
    assert_eq!(db["kind"], "soft");
    assert_eq!(db["reason"], "migration");
    assert_eq!(db["by"], "alice");
    assert!(db["expires"].is_null() && db["pin"].is_null(), "{db}");
    assert_eq!(db["expired"], false);
    let cache = rows.iter().find(|r| r["release"] == "cache").unwrap();
    assert_eq!(cache["kind"], "pin");
    assert_eq!(cache["pin"], "1.0.x");
    assert_eq!(cache["by"], "bob");
    assert!(cache["reason"].is_null(), "{cache}");
    assert!(cache["expires"].is_string(), "{cache}");
    assert_eq!(cache["expired"], false);

    // One namespace only without -A.
    let run = b.guard(&["locks", "-n", "other", "-o", "json"]);
    run.expect_code(0, "locks -n other");
    let rows = json(&run, "locks -n other");
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    assert_eq!(rows[0]["release"], "cache");
    // Text output names both.
    let run = b.guard(&["locks", "-A"]);
    run.expect_code(0, "locks -A text");
    // Both locked releases, not `web`; padded columns without trailing spaces.
    let expires = cache["expires"].as_str().unwrap();
    run.assert_stdout(&[
        "NAMESPACE            RELEASE          KIND  BY                   EXPIRES                PIN          ENFORCED         REASON",
        &format!("other                cache            pin   bob                  {expires}   1.0.x        labels only"),
        "shared               db               soft  alice                -                      -            labels only      migration",
    ]);
}

/// 7. Bad inputs: clear errors, nothing changed; a concurrent change aborts cleanly.
fn bad_inputs_change_nothing(label: &str) {
    let b = setup(label);
    install(&b, "db", &chart("demo-1.0.0"), NS);
    b.helm(&["upgrade", "db", &chart("demo-1.1.0"), "-n", NS])
        .expect_code(0, "second revision");
    let before = all_labels(&b, "secrets", NS, "db");
    assert_eq!(before.len(), 2);

    let run = b.guard(&["lock", "nope", "-n", NS, "--reason", "x"]);
    run.expect_code(3, "unknown release");
    run.assert_error(&not_found("nope"));
    let run = b.guard(&["unlock", "nope", "-n", NS]);
    run.expect_code(3, "unlock unknown release");
    run.assert_error(&not_found("nope"));
    let run = b.guard(&["status", "nope", "-n", NS]);
    run.expect_code(3, "status of an unknown release");
    run.assert_error(&not_found("nope"));

    let run = b.guard(&["lock", "db", "--pin", "not a version", "-n", NS]);
    run.expect_code(2, "malformed pin");
    run.assert_first_stderr_line(
        "error: invalid value 'not a version' for '--pin <VERSION|CONSTRAINT>': neither a \
         version nor a version constraint (examples: 1.4.3, 1.4.x, \">=1.4 <2\", ^1.4)",
    );
    let run = b.guard(&["lock", "db", "--expires", "2001-01-01T00:00:00Z", "-n", NS]);
    run.expect_code(2, "past expiry");
    run.assert_error(
        "--expires is not in the future (2001-01-01T00:00:00Z); a lock must expire later than now",
    );
    let run = b.guard(&["lock", "db", "--expires", "soon", "-n", NS]);
    run.expect_code(2, "unparseable expiry");
    run.assert_first_stderr_line(
        "error: invalid value 'soon' for '--expires <DURATION|TIMESTAMP>': neither a duration \
         (90s, 30m, 4h, 7d) nor an RFC 3339 timestamp (2026-12-01T00:00:00Z)",
    );
    assert_eq!(all_labels(&b, "secrets", NS, "db"), before);

    b.api.clear_requests();
    // A real conflicting write: someone changes the latest record just before our
    // write reaches the server, which answers our stale resourceVersion with 409.
    let touched = std::sync::atomic::AtomicUsize::new(0);
    let (touched, api) = (&touched, &b.api);
    let touch = |target: &'static str, rev: u64| {
        let name = record("db", rev);
        move |method: &str, path: &str| {
            if method == "PATCH"
                && path.starts_with(&format!("/api/v1/namespaces/{NS}/secrets/{name}"))
                && touched.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0
            {
                let (code, v) = api.real().request(
                    "PATCH",
                    &format!("/api/v1/namespaces/{NS}/secrets/{name}"),
                    Some(&serde_json::json!({"metadata": {"annotations": {"touched": target}}})),
                );
                assert_eq!(code, 200, "{v}");
            }
        }
    };
    let (run, seen) = with_interposer(&b, touch("latest", 2), |kc| {
        b.guard_env(
            &["lock", "db", "--reason", "conflict", "-n", NS],
            &[("KUBECONFIG", kc.to_str().unwrap())],
        )
    });
    run.expect_code(3, "conflicting change");
    run.assert_error(
        "release \"db\" in namespace \"shared\": record sh.helm.release.v1.db.v2 was changed \
         by someone else while locking/unlocking (409 Conflict); nothing was changed on it. Run \
         the command again",
    );
    let conflicts: Vec<&String> = seen.iter().filter(|l| l.ends_with("-> 409")).collect();
    assert_eq!(
        conflicts,
        [&format!(
            "PATCH /api/v1/namespaces/{NS}/secrets/{}? -> 409",
            record("db", 2)
        )],
        "the real server's 409: {seen:#?}"
    );
    assert_eq!(all_labels(&b, "secrets", NS, "db"), before);
    for labels in all_labels(&b, "secrets", NS, "db").values() {
        assert!(!labels.keys().any(|k| k.starts_with(PREFIX)), "{labels:?}");
    }

    // A conflict on an older record is retried after re-reading it.
    touched.store(0, std::sync::atomic::Ordering::SeqCst);
    with_interposer(&b, touch("older", 1), |kc| {
        b.guard_env(
            &["lock", "db", "--reason", "retried", "-n", NS],
            &[("KUBECONFIG", kc.to_str().unwrap())],
        )
    })
    .0
    .expect_code(0, "lock with a conflict on an older record");
    assert_eq!(
        touched.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "retried once"
    );
    let v1 = lock_labels(&b, "secrets", NS, &record("db", 1));
    assert_eq!(v1, lock_labels(&b, "secrets", NS, &record("db", 2)));
    assert_eq!(v1["guarded-upgrade.io/reason"], "retried", "{v1:?}");
    let v1 = b.api.get("secrets", Some(NS), &record("db", 1)).unwrap();
    assert_eq!(v1["metadata"]["annotations"]["touched"], "older", "{v1}");
}

/// 8. `HELM_DRIVER=configmap`: the lock lives on the ConfigMap records.
fn configmap_driver(label: &str) {
    let b = setup(label);
    let who = who(&b);
    let env = [("HELM_DRIVER", "configmap")];
    let c110 = chart("demo-1.1.0");
    b.guard_env(
        &["upgrade", "--install", "db", &chart("demo-1.0.0"), "-n", NS],
        &env,
    )
    .expect_code(0, "install");
    b.guard_env(&["lock", "db", "--reason", "cm", "-n", NS], &env)
        .expect_code(0, "lock");
    let cm = lock_labels(&b, "configmaps", NS, &record("db", 1));
    assert_eq!(cm["guarded-upgrade.io/lock"], "soft", "{cm:?}");
    assert!(b.api.get("secrets", Some(NS), &record("db", 1)).is_none());
    // The secret driver sees no release at all.
    b.guard(&["lock", "db", "-n", NS])
        .expect_code(3, "secret driver");

    b.api.clear_requests();
    let run = b.guard_env(&["upgrade", "db", &c110, "-n", NS], &env);
    run.expect_code(0, "skip");
    assert_eq!(b.writes(), Vec::<String>::new());
    run.assert_stderr(&[&format!(
        "skip: release \"db\" in \"shared\" is at 1.0.0 (revision 1); target 1.1.0 not \
         applied: soft lock by {who} since {}: \"cm\"",
        lock_field(&b, &env, "since")
    )]);
    assert_eq!(check_json(&b, "db", &c110, NS, &env)["driver"], "configmap");

    // A hard lock on a ConfigMap record: helm reads the re-encoded payload and refuses.
    b.guard_env(&["lock", "db", "--hard", "-n", NS], &env)
        .expect_code(0, "lock --hard");
    let run = b.helm_env(&["upgrade", "db", &c110, "-n", NS], &env);
    assert!(
        run.stderr
            .contains("another operation (install/upgrade/rollback) is in progress"),
        "{}",
        run.stderr
    );
    b.guard_env(&["unlock", "db", "-n", NS], &env)
        .expect_code(0, "unlock");
    let run = b.helm_env(&["history", "db", "-n", NS, "-o", "json"], &env);
    run.expect_code(0, "helm history");
    let history = json(&run, "history");
    assert_eq!(history[0]["status"], "deployed", "{history}");
    assert!(lock_labels(&b, "configmaps", NS, &record("db", 1)).is_empty());
    b.guard_env(&["upgrade", "db", &c110, "-n", NS], &env)
        .expect_code(0, "upgrade after unlock");
    let run = b.helm_env(&["history", "db", "-n", NS, "-o", "json"], &env);
    assert_eq!(json(&run, "history")[1]["status"], "deployed");
}

/// 9. `--by` and the CI user as the default.
fn lock_owner(label: &str) {
    let b = setup(label);
    install(&b, "db", &chart("demo-1.0.0"), NS);
    b.guard(&["lock", "db", "--by", "alice", "-n", NS])
        .expect_code(0, "lock --by");
    assert_eq!(status_json(&b, "db", NS, &[])["lock"]["by"], "alice");
    let since = lock_field(&b, &[], "since");
    let run = b.guard(&["status", "db", "-n", NS]);
    run.expect_code(0, "status text");
    run.assert_stdout(&[
        "release:   db (namespace shared, Secret records)",
        "deployed:  demo 1.0.0 (app 1.0.0) revision 1",
        "latest:    revision 1 deployed",
        "lock:      soft",
        "  by       alice",
        &format!("  since    {since}"),
        "  enforced labels only",
        &format!(
            "upgrade:   skip: release \"db\" in \"shared\" is at 1.0.0 (revision 1); upgrades \
             are not applied: soft lock by alice since {since}"
        ),
        "mutex:     free",
    ]);

    // Locking again with another owner replaces it; the same settings again is a no-op.
    let ci = [("GITHUB_ACTOR", "octocat")];
    b.guard_env(&["lock", "db", "-n", NS], &ci)
        .expect_code(0, "lock by GITHUB_ACTOR");
    let status = status_json(&b, "db", NS, &[]);
    assert_eq!(status["lock"]["by"], "octocat", "{status}");
    b.api.clear_requests();
    b.guard_env(&["lock", "db", "-n", NS], &ci)
        .expect_code(0, "same lock again");
    assert_eq!(
        b.writes(),
        Vec::<String>::new(),
        "identical lock is a no-op"
    );

    // A user name that is not a valid label value round-trips too.
    b.guard(&[
        "lock",
        "db",
        "--by",
        "Alice Example <alice@example.com>",
        "-n",
        NS,
    ])
    .expect_code(0, "lock --by email");
    assert_eq!(
        status_json(&b, "db", NS, &[])["lock"]["by"],
        "Alice Example <alice@example.com>"
    );
}

/// 10. A long reason with spaces and symbols round-trips exactly through labels.
fn long_reason_round_trips(label: &str) {
    let b = setup(label);
    let who = who(&b);
    install(&b, "db", &chart("demo-1.0.0"), NS);
    let mut reason = String::from(
        "Freeze: \"quarterly close\" — DB schema v42 <-> v43; ask #team-db @alice & ops (50%)! ",
    );
    while reason.chars().count() < 200 {
        reason.push_str("blah/*?$ ");
    }
    let reason: String = reason.chars().take(200).collect();
    assert!(reason.len() <= 256, "{} bytes", reason.len());
    b.guard(&["lock", "db", "--reason", &reason, "-n", NS])
        .expect_code(0, "lock with a long reason");
    let labels = lock_labels(&b, "secrets", NS, &record("db", 1));
    assert_label_values_valid(&labels);
    assert!(labels.len() > 3, "{labels:?}");
    assert_eq!(status_json(&b, "db", NS, &[])["lock"]["reason"], reason);
    let run = b.guard(&["upgrade", "db", &chart("demo-1.1.0"), "-n", NS]);
    run.expect_code(0, "skip");
    // The reason is shown quoted (escaped as a Rust/Go string), whole.
    run.assert_stderr(&[&format!(
        "skip: release \"db\" in \"shared\" is at 1.0.0 (revision 1); target 1.1.0 not \
         applied: soft lock by {who} since {}: {reason:?}",
        lock_field(&b, &[], "since")
    )]);
    // Helm carries every part of it to a new revision.
    b.helm(&["upgrade", "db", &chart("demo-1.1.0"), "-n", NS])
        .expect_code(0, "plain helm upgrade");
    assert_eq!(lock_labels(&b, "secrets", NS, &record("db", 2)), labels);
    assert_eq!(status_json(&b, "db", NS, &[])["lock"]["reason"], reason);
    // A shorter reason replaces it, leaving no stale parts behind.
    b.guard(&["lock", "db", "--reason", "short", "-n", NS])
        .expect_code(0, "relock");
    for rev in [1, 2] {
        let l = lock_labels(&b, "secrets", NS, &record("db", rev));
        assert!(
            !l.keys()
                .any(|k| k.starts_with("guarded-upgrade.io/reason-")),
            "{l:?}"
        );
        assert_eq!(l["guarded-upgrade.io/reason"], "short");
    }
    // An empty reason is stored as an empty (valid) label value, not as a bare `b32.`.
    b.guard(&["lock", "db", "--reason", "", "-n", NS])
        .expect_code(0, "empty reason")
        .assert_stderr(&[r#"locked: release "db" in "shared" (soft)"#]);
    let l = lock_labels(&b, "secrets", NS, &record("db", 2));
    assert_label_values_valid(&l);
    assert_eq!(status_json(&b, "db", NS, &[])["lock"]["reason"], "");
}

/// Statuses of every revision per `helm history`.
fn statuses(b: &Bed, release: &str) -> Vec<String> {
    b.history(release, NS)
        .iter()
        .map(|h| h["status"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Scenario 11: `helm rollback` under a hard lock (helm never checks pending records on rollback):
/// guarded upgrades keep skipping, re-running `lock --hard` blocks plain helm again, and
/// `unlock` leaves exactly one deployed revision.
fn hard_lock_then_rollback(label: &str) {
    let b = setup(label);
    let who = who(&b);
    install(&b, "db", &chart("demo-1.0.0"), NS);
    b.helm(&["upgrade", "db", &chart("demo-1.1.0"), "-n", NS])
        .expect_code(0, "revision 2");
    b.guard(&["lock", "db", "--hard", "--reason", "freeze", "-n", NS])
        .expect_code(0, "lock --hard");
    b.helm(&["rollback", "db", "1", "-n", NS])
        .expect_code(0, "helm rollback under a hard lock");
    assert_eq!(
        statuses(&b, "db"),
        ["superseded", "pending-upgrade", "deployed"]
    );
    let c120 = chart("demo-1.2.0");
    let run = b.guard(&["upgrade", "db", &c120, "-n", NS]);
    run.expect_code(0, "guarded upgrade after rollback");
    let status = status_json(&b, "db", NS, &[]);
    let since = status["lock"]["since"].as_str().expect("lock.since");
    let note = "hard lock is set but latest revision 3 is deployed, not pending-upgrade, so \
                plain `helm upgrade` is NOT blocked; re-run \"guarded-upgrade lock db -n shared \
                --hard\"";
    run.assert_stderr(&[
        &format!(
            "skip: release \"db\" in \"shared\" is at 1.0.0 (revision 3); target 1.2.0 not \
             applied: hard lock by {who} since {since}: \"freeze\""
        ),
        &format!("  note: {note}"),
    ]);
    assert_eq!(status["upgrade"], "blocked", "{status}");
    assert_eq!(
        status["upgrade_message"],
        format!(
            "skip: release \"db\" in \"shared\" is at 1.0.0 (revision 3); upgrades are not \
             applied: hard lock by {who} since {since}: \"freeze\"; note: {note}"
        ),
        "{status}"
    );

    // Re-locking marks the rollback's revision (it used to be a silent no-op), a second
    // later so that a re-lock's since-time differs from the first lock's: all records must
    // still agree (they keep the first lock's labels).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    b.guard(&["lock", "db", "--hard", "--reason", "freeze", "-n", NS])
        .expect_code(0, "re-lock --hard");
    let v3 = labels_of(&b, "secrets", NS, &record("db", 3));
    assert_eq!(v3["status"], "pending-upgrade", "{v3:?}");
    let run = b.helm(&["upgrade", "db", &c120, "-n", NS]);
    assert!(
        run.stderr
            .contains("another operation (install/upgrade/rollback) is in progress"),
        "plain helm must be blocked again: {} {}",
        run.stdout,
        run.stderr
    );

    // Revision 2 was deployed when locked, but revision 3 replaced it: it comes back as
    // superseded, never as a second deployed revision.
    b.guard(&["unlock", "db", "-n", NS])
        .expect_code(0, "unlock");
    assert_eq!(statuses(&b, "db"), ["superseded", "superseded", "deployed"]);
    for rev in 1..=3 {
        let l = labels_of(&b, "secrets", NS, &record("db", rev));
        assert!(!l.keys().any(|k| k.starts_with(PREFIX)), "{l:?}");
    }
    assert_eq!(b.deployed("db", NS), ("1.0.0".into(), 3));
    b.helm(&["upgrade", "db", &c120, "-n", NS])
        .expect_code(0, "plain upgrade after unlock");
    assert_eq!(
        statuses(&b, "db"),
        ["superseded", "superseded", "superseded", "deployed"]
    );
}

/// Scenario 12: hard -> soft restores the record; an expired hard lock is refused (the record stays
/// pending); a record changed underneath makes `unlock` refuse until `--force`.
fn hard_lock_expiry_and_tampering(label: &str) {
    let b = setup(label);
    let who = who(&b);
    install(&b, "db", &chart("demo-1.0.0"), NS);
    b.guard(&["lock", "db", "--hard", "-n", NS])
        .expect_code(0, "lock --hard");
    b.guard(&["lock", "db", "--reason", "now soft", "-n", NS])
        .expect_code(0, "hard -> soft");
    assert_eq!(statuses(&b, "db"), ["deployed"]);
    let l = lock_labels(&b, "secrets", NS, &record("db", 1));
    assert_eq!(l["guarded-upgrade.io/lock"], "soft", "{l:?}");
    assert!(
        !l.contains_key("guarded-upgrade.io/hard-original-status"),
        "{l:?}"
    );

    let run = b.guard(&["lock", "db", "--hard", "--expires", "2s", "-n", NS]);
    run.expect_code(0, "lock --hard --expires 2s");
    run.assert_stderr(&[
        &format!(
            "locked: release \"db\" in \"shared\" (hard), expires {}",
            lock_field(&b, &[], "expires")
        ),
        NOT_ENFORCED,
    ]);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let run = b.guard(&["upgrade", "db", &chart("demo-1.1.0"), "-n", NS]);
    run.expect_code(3, "expired hard lock");
    run.assert_stderr(&[&format!(
        "refused: release \"db\" in \"shared\" has an expired hard lock by {who} since {} \
         until {}; its revision 1 is still marked pending-upgrade by the lock, so helm would \
         refuse to upgrade. Run \"guarded-upgrade unlock db -n shared\" to restore the \
         revision's status, then retry",
        lock_field(&b, &[], "since"),
        lock_field(&b, &[], "expires")
    )]);
    let status = status_json(&b, "db", NS, &[]);
    assert_eq!(status["lock"]["expired"], true, "{status}");
    assert_eq!(status["upgrade"], "refuse", "{status}");

    // Someone edits the record.
    let mut obj = b.api.get("secrets", Some(NS), &record("db", 1)).unwrap();
    obj["metadata"]["labels"]["status"] = "failed".into();
    b.api.put_object("secrets", obj);
    let run = b.guard(&["unlock", "db", "-n", NS]);
    run.expect_code(3, "unlock of a changed record");
    run.assert_error(
        "release \"db\" in namespace \"shared\": the hard-locked record \
         sh.helm.release.v1.db.v1 was changed by someone else (status now failed; expected \
         pending-upgrade as guarded-upgrade left it); not guessing, nothing changed. Inspect \
         with `helm history db -n shared` and `kubectl get secret sh.helm.release.v1.db.v1 -n \
         shared --show-labels`, then run `guarded-upgrade unlock db -n shared --force` to drop \
         the lock and leave the status as it is",
    );
    assert_eq!(
        lock_labels(&b, "secrets", NS, &record("db", 1))["guarded-upgrade.io/lock"],
        "hard"
    );
    b.guard(&["unlock", "db", "-n", NS, "--force"])
        .expect_code(0, "unlock --force")
        .assert_stderr(&[r#"unlocked: release "db" in "shared""#]);
    let l = labels_of(&b, "secrets", NS, &record("db", 1));
    assert!(!l.keys().any(|k| k.starts_with(PREFIX)), "{l:?}");
    assert_eq!(l["status"], "failed", "left as found");
}

/// A release whose latest record is pending for a real reason (an operation in progress
/// or interrupted) is not locked: refused with an explanation, nothing written.
fn pending_release_is_not_locked(label: &str) {
    let b = setup(label);
    install(&b, "db", &chart("demo-1.0.0"), NS);
    // A second revision left pending-upgrade, as an interrupted helm leaves it.
    let mut v2 = b.api.get("secrets", Some(NS), &record("db", 1)).unwrap();
    v2["metadata"]["name"] = Value::String(record("db", 2));
    v2["metadata"]["labels"]["version"] = Value::String("2".into());
    v2["metadata"]["labels"]["status"] = Value::String("pending-upgrade".into());
    for key in [
        "resourceVersion",
        "uid",
        "creationTimestamp",
        "managedFields",
    ] {
        v2["metadata"].as_object_mut().unwrap().remove(key);
    }
    b.api.put_object("secrets", v2);
    b.api.clear_requests();
    let run = b.guard(&["lock", "db", "-n", NS, "--reason", "freeze"]);
    run.expect_code(3, "lock on a pending release");
    run.assert_error(
        "release \"db\" in namespace \"shared\": the latest revision 2 is pending-upgrade (an \
         install/upgrade/rollback is in progress or was interrupted); nothing changed. Wait for \
         it, or inspect with `helm history db -n shared`",
    );
    assert!(b.writes().is_empty(), "{:?}", b.writes());
}

/// Eight concurrent `lock --reason` runs on one release serialize on the release mutex:
/// every run succeeds, and the release ends with exactly one lock on every record (the
/// last run's), never a mix.
fn concurrent_locks_serialize(label: &str) {
    let b = setup(label);
    install(&b, "db", &chart("demo-1.0.0"), NS);
    install(&b, "db", &chart("demo-1.1.0"), NS);
    install(&b, "db", &chart("demo-1.2.0"), NS);
    let reasons: Vec<String> = (1..=8).map(|i| format!("reason-{i}")).collect();
    let children: Vec<_> = reasons
        .iter()
        .map(|r| b.guard_spawn(&["lock", "db", "-n", NS, "--reason", r, "--by", "ci"]))
        .collect();
    for (child, reason) in children.into_iter().zip(&reasons) {
        let run = crate::common::finish(child);
        run.expect_code(0, reason);
        run.assert_stderr_line(&format!(
            "locked: release \"db\" in \"shared\" (soft): {reason}"
        ));
    }
    let labels = all_labels(&b, "secrets", NS, "db");
    assert_eq!(labels.len(), 3, "{labels:?}");
    let reasons_seen: std::collections::BTreeSet<&str> = labels
        .values()
        .map(|l| l.get(&format!("{PREFIX}reason")).map_or("", String::as_str))
        .collect();
    assert_eq!(reasons_seen.len(), 1, "mixed locks: {labels:#?}");
    let reason = reasons_seen.into_iter().next().unwrap();
    assert!(reasons.iter().any(|r| r == reason), "{reason:?}");
    assert!(b
        .api
        .get("leases", Some(NS), "helm-lock-db")
        .is_some_and(|l| {
            l["spec"]["holderIdentity"]
                .as_str()
                .unwrap_or_default()
                .is_empty()
        }));
}

// The compatibility subset (lock, hard lock): also with the oldest helm 3 and 4.
crate::common::per_helm_compat!(soft_lock_skips_without_writes, hard_lock_blocks_plain_helm);

/// Every other behaviour case, on the real server with the newest helm 3 and 4.
mod behaviour {
    use super::*;
    crate::common::per_helm!(
        pin_allows_only_matching,
        labels_cannot_move_or_lift_a_lock,
        expired_lock_is_ignored,
        lock_survives_plain_upgrade_and_rollback,
        locks_lists_all_namespaces,
        bad_inputs_change_nothing,
        configmap_driver,
        lock_owner,
        long_reason_round_trips,
        hard_lock_then_rollback,
        hard_lock_expiry_and_tampering,
        pending_release_is_not_locked,
        concurrent_locks_serialize,
    );
}
