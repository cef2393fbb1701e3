//! End to end, real API server only: the RBAC `docs/locks.md` and `docs/mutex.md` document,
//! proven. A restricted user (alice) with exactly the documented Role can run every
//! command; without any one rule the commands that need it fail closed (exit 3, helm not
//! run, nothing written to the release records) naming the verb and resource the real
//! server refused.

use crate::common::{bed, chart, grant, Bed, Run};
use serde_json::{json, Value};

const NS: &str = "team";

/// One documented rule: API group, resource, verb.
type Rule = (&'static str, &'static str, &'static str);

/// What the tool itself needs (docs/locks.md, docs/mutex.md), one verb per rule so each
/// can be taken away alone.
const TOOL_RULES: &[Rule] = &[
    ("", "secrets", "list"),
    ("", "secrets", "get"),
    ("", "secrets", "patch"),
    ("coordination.k8s.io", "leases", "get"),
    ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases", "update"),
    // Waiting for the mutex: hand-over by watch (without them: polled, with a note).
    ("coordination.k8s.io", "leases", "watch"),
    ("", "secrets", "watch"),
];

/// The rules for waiting by watch rather than by poll.
const WATCH_RULES: [Rule; 2] = [
    ("coordination.k8s.io", "leases", "watch"),
    ("", "secrets", "watch"),
];

/// What helm needs to install and upgrade the demo chart (records and chart objects).
fn helm_own_rules() -> Vec<Value> {
    vec![
        json!({"apiGroups": [""], "resources": ["secrets"],
               "verbs": ["create", "update", "delete"]}),
        json!({"apiGroups": [""], "resources": ["configmaps", "services"], "verbs": ["*"]}),
        json!({"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["*"]}),
    ]
}

/// The documented Role, without `missing` (if any).
fn role(missing: Option<Rule>) -> Vec<Value> {
    role_without(&missing.into_iter().collect::<Vec<_>>())
}

/// The documented Role, without the rules in `missing`.
fn role_without(missing: &[Rule]) -> Vec<Value> {
    let mut rules = helm_own_rules();
    for rule in TOOL_RULES.iter().filter(|r| !missing.contains(r)) {
        rules.push(json!({"apiGroups": [rule.0], "resources": [rule.1], "verbs": [rule.2]}));
    }
    rules
}

/// `locks -A`: a ClusterRole with `list` on Secrets in every namespace.
fn grant_cluster_list(b: &Bed) {
    b.api.put_object(
        "clusterroles",
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "alice-list-secrets"},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}],
        }),
    );
    b.api.put_object(
        "clusterrolebindings",
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "alice-list-secrets"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "alice-list-secrets"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                          "name": "alice"}],
        }),
    );
}

/// A namespace with release `db` at 1.0.0 installed by the admin (so its Lease exists,
/// released), and alice's kubeconfig.
fn setup(label: &str) -> (Bed, String) {
    let b = bed(label);
    b.api.create_namespace(NS);
    b.guard(&["upgrade", "--install", "db", &chart("demo-1.0.0"), "-n", NS])
        .expect_code(0, "admin installs db");
    let kc = b.api.real().kubeconfig_for("alice", Some(NS));
    (b, kc.to_string_lossy().into_owned())
}

fn as_alice(b: &Bed, kc: &str, args: &[&str]) -> Run {
    b.guard_env(args, &[("KUBECONFIG", kc)])
}

/// The commands, by name: argv and whether a success writes release records.
fn command(name: &str) -> Vec<String> {
    let c100 = chart("demo-1.0.0");
    let c110 = chart("demo-1.1.0");
    let v: Vec<&str> = match name {
        "check" => vec!["check", "db", &c110, "-n", NS],
        "status" => vec!["status", "db", "-n", NS],
        "upgrade (skip)" => vec!["upgrade", "db", &c100, "-n", NS],
        "upgrade" => vec!["upgrade", "db", &c110, "-n", NS],
        "lock" => vec!["lock", "db", "-n", NS, "--reason", "freeze"],
        "lock --hard" => vec!["lock", "db", "-n", NS, "--hard"],
        "unlock" | "unlock (hard)" => vec!["unlock", "db", "-n", NS],
        "locks" => vec!["locks", "-n", NS],
        "locks -A" => vec!["locks", "-A"],
        other => panic!("no command {other}"),
    };
    v.into_iter().map(String::from).collect()
}

fn release_records(b: &Bed) -> Vec<String> {
    let mut names: Vec<String> = b
        .api
        .list("secrets", Some(NS))
        .iter()
        .filter_map(|s| s["metadata"]["name"].as_str().map(String::from))
        .filter(|n| n.starts_with("sh.helm.release.v1."))
        .collect();
    names.sort();
    names
}

/// Every command works with exactly the documented Role (and, for `locks -A`, the
/// documented ClusterRole), with no warning.
fn documented_role_is_enough(label: &str) {
    let (b, kc) = setup(label);
    grant(&b, NS, "alice", &role(None));
    grant_cluster_list(&b);
    for name in [
        "check",
        "status",
        "upgrade (skip)",
        "upgrade",
        "lock",
        "locks",
        "locks -A",
        "unlock",
        "lock --hard",
        "unlock",
    ] {
        let args = command(name);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = as_alice(&b, &kc, &args);
        run.expect_code(0, name);
        // Without the hard-lock policy installed (it also grants every user `get` on it),
        // a hard lock is labels only and says so: the one warning allowed.
        const NOT_ENFORCED: &str = "warning: the hard lock is not enforced by the cluster: ";
        let rest: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| !(name == "lock --hard" && l.starts_with(NOT_ENFORCED)))
            .collect();
        assert!(
            !rest
                .iter()
                .any(|l| l.contains("warning") || l.contains("forbidden")),
            "{name}: {}",
            run.stderr
        );
        if name == "lock --hard" {
            assert!(
                run.stderr.lines().any(|l| l.starts_with(NOT_ENFORCED)),
                "{name}: {}",
                run.stderr
            );
        }
    }
    assert_eq!(b.deployed("db", NS), ("1.1.0".into(), 2));
    let denied: Vec<String> = b
        .api
        .requests()
        .into_iter()
        .filter(|r| r.user.as_deref() == Some("alice") && r.status == 403)
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    // The two refusals: with the hard-lock policy not installed, the ClusterRole that lets
    // everyone read it is not there either, and `lock --hard` reports labels only; nor is
    // the Role that lets everyone read the locks' cluster-wide ConfigMaps, which `unlock`
    // of a hard lock looks for (and finds none to lift; a soft lock has none).
    assert_eq!(
        denied,
        vec![
            "GET /apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/guarded-upgrade-hard-lock".to_string(),
            "GET /api/v1/namespaces/guarded-upgrade/configmaps/guarded-upgrade-lock-team.db".to_string(),
        ],
        "nothing else alice did was refused"
    );
}

/// Without each rule, every command that needs it fails closed naming what was refused.
fn each_rule_is_needed(label: &str) {
    let (b, kc) = setup(label);
    // (rule taken away, commands that need it)
    let table: &[(Rule, &[&str])] = &[
        (
            ("", "secrets", "list"),
            &[
                "check",
                "status",
                "upgrade (skip)",
                "upgrade",
                "lock",
                "unlock",
                "locks",
            ],
        ),
        (
            ("", "secrets", "get"),
            &[
                "check",
                "status",
                "upgrade (skip)",
                "upgrade",
                "lock --hard",
                "unlock (hard)",
            ],
        ),
        (
            ("", "secrets", "patch"),
            &["lock", "lock --hard", "unlock", "unlock (hard)"],
        ),
        (("coordination.k8s.io", "leases", "get"), &["upgrade"]),
        (("coordination.k8s.io", "leases", "create"), &["upgrade"]),
        (("coordination.k8s.io", "leases", "update"), &["upgrade"]),
    ];
    for (rule, commands) in table {
        let (group, resource, verb) = *rule;
        grant(&b, NS, "alice", &role(Some(*rule)));
        for name in *commands {
            // `unlock` needs a lock to remove; `leases create` a release without a Lease.
            if *name == "unlock" {
                b.guard(&["lock", "db", "-n", NS, "--reason", "x"])
                    .expect_code(0, "admin locks");
            }
            if *name == "unlock (hard)" {
                b.guard(&["lock", "db", "-n", NS, "--hard"])
                    .expect_code(0, "admin locks hard");
            }
            if verb == "create" {
                b.api.delete_object("leases", Some(NS), "helm-lock-db");
            } else if b.api.get("leases", Some(NS), "helm-lock-db").is_none() {
                b.guard(&["unlock", "db", "-n", NS])
                    .expect_code(0, "a released Lease");
                b.guard(&["lock", "db", "-n", NS]).expect_code(0, "Lease");
                b.guard(&["unlock", "db", "-n", NS]).expect_code(0, "Lease");
            }
            let before = release_records(&b);
            let labels_before: Vec<Value> = b
                .api
                .list("secrets", Some(NS))
                .into_iter()
                .map(|s| s["metadata"]["labels"].clone())
                .collect();
            b.api.clear_requests();
            let args = command(name);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let run = as_alice(&b, &kc, &args);
            let what = format!("{name} without {verb} on {resource}");
            run.expect_code(3, &what);
            let refused = if group.is_empty() {
                format!(
                    "User \"alice\" cannot {verb} resource \"{resource}\" in API group \"\" in \
                     the namespace \"{NS}\""
                )
            } else {
                format!(
                    "User \"alice\" cannot {verb} resource \"{resource}\" in API group \
                     \"{group}\" in the namespace \"{NS}\""
                )
            };
            assert!(
                run.stderr.contains(&refused),
                "{what}: the error must name what the server refused ({refused})\n{}",
                run.stderr
            );
            assert!(
                !run.stdout.contains("has been upgraded"),
                "{what}: helm ran"
            );
            assert_eq!(release_records(&b), before, "{what}: no new release record");
            let writes: Vec<String> = b
                .api
                .requests()
                .into_iter()
                .filter(|r| {
                    r.user.as_deref() == Some("alice")
                        && r.is_write()
                        && r.resource.as_deref() != Some("leases")
                        && (200..300).contains(&r.status)
                })
                .map(|r| format!("{} {} -> {}", r.method, r.path, r.status))
                .collect();
            assert_eq!(writes, Vec::<String>::new(), "{what}: nothing written");
            let labels_after: Vec<Value> = b
                .api
                .list("secrets", Some(NS))
                .into_iter()
                .map(|s| s["metadata"]["labels"].clone())
                .collect();
            assert_eq!(labels_after, labels_before, "{what}: records unchanged");
            if name.starts_with("unlock") {
                b.guard(&["unlock", "db", "-n", NS])
                    .expect_code(0, "admin unlocks");
            }
        }
    }
    // `locks -A` without the ClusterRole: the cluster-wide list is refused.
    grant(&b, NS, "alice", &role(None));
    let args = command("locks -A");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = as_alice(&b, &kc, &args);
    run.expect_code(3, "locks -A without the ClusterRole");
    assert!(
        run.stderr.contains(
            "User \"alice\" cannot list resource \"secrets\" in API group \"\" at the cluster scope"
        ),
        "{}",
        run.stderr
    );
}

/// alice's requests on `resource` with `verb`, by answer.
fn alice_requests(b: &Bed, resource: &str, verb: &str) -> Vec<u16> {
    b.api
        .requests()
        .into_iter()
        .filter(|r| {
            r.user.as_deref() == Some("alice")
                && r.resource.as_deref() == Some(resource)
                && r.verb == verb
        })
        .map(|r| r.status)
        .collect()
}

/// Polls `done` every 50 ms for up to 30 s.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Waiting for the mutex with and without `watch`: with the documented Role the waiter
/// reads the Lease once and is woken by the watch; without `watch` (on leases and on
/// secrets) the real server refuses the watches, the run says so in notes and reads the
/// Lease every 0.5–1 s instead, and still takes the mutex once it is released.
fn hand_over_with_and_without_watch(label: &str) {
    let (b, kc) = setup(label);
    for (missing, upgrade_to) in [(&[][..], "demo-1.1.0"), (&WATCH_RULES[..], "demo-1.2.0")] {
        grant(&b, NS, "alice", &role_without(missing));
        let holder = b
            .api
            .get("leases", Some(NS), "helm-lock-db")
            .expect("lease");
        let mut held = holder.clone();
        held["spec"]["holderIdentity"] = "pipeline-42".into();
        held["spec"]["leaseDurationSeconds"] = 3600.into();
        held["spec"]["renewTime"] = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%S.000000Z")
            .to_string()
            .into();
        held["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("resourceVersion");
        b.api.put_object("leases", held.clone());
        b.api.clear_requests();
        let chart = chart(upgrade_to);
        let child = b.guard_spawn_env(&["upgrade", "db", &chart, "-n", NS], &[("KUBECONFIG", &kc)]);
        wait_until("alice to read the Lease", || {
            !alice_requests(&b, "leases", "get").is_empty()
        });
        if missing.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(2000));
        } else {
            wait_until("the Lease watch to be refused", || {
                alice_requests(&b, "leases", "watch").contains(&403)
            });
            wait_until("alice to poll the Lease", || {
                alice_requests(&b, "leases", "get").len() >= 2
            });
        }
        held["spec"]["holderIdentity"] = "".into();
        held["spec"]["leaseDurationSeconds"] = 1.into();
        b.api.put_object("leases", held);
        let run = crate::common::finish(child);
        let what = format!("waiting without {missing:?}");
        run.expect_code(0, &what);
        assert_eq!(
            b.deployed("db", NS).0,
            upgrade_to.trim_start_matches("demo-"),
            "{what}"
        );
        let gets = alice_requests(&b, "leases", "get");
        if missing.is_empty() {
            assert!(
                !run.stderr.contains("cannot watch"),
                "{what}: {}",
                run.stderr
            );
            // The read before waiting; the wait was a watch (the release needs no read).
            assert_eq!(gets, vec![200], "{what}: {}", run.stderr);
        } else {
            let note = run
                .stderr
                .lines()
                .find(|l| l.starts_with("note: cannot watch the mutex Lease "))
                .unwrap_or_default();
            assert!(
                note.starts_with(
                    "note: cannot watch the mutex Lease \"helm-lock-db\" in \"team\" ("
                ) && note.contains("User \"alice\" cannot watch resource \"leases\"")
                    && note.ends_with(
                        "); reading it every 0.5-1s while waiting instead (grant `watch` on \
                         leases to hand over at once)"
                    ),
                "{what}: {}",
                run.stderr
            );
            assert!(
                run.stderr.contains(
                    "note: cannot watch the Secret records of release \"db\" in \"team\" ("
                ),
                "{what}: {}",
                run.stderr
            );
            assert!(gets.len() >= 3, "{what}: polled: {gets:?}");
        }
    }
}

crate::common::per_helm!(
    documented_role_is_enough,
    each_rule_is_needed,
    hand_over_with_and_without_watch
);
