//! End to end (issue 18): a hard lock the cluster enforces. The ValidatingAdmissionPolicy
//! of `guarded-upgrade policy install` on the real kube-apiserver, real helm 3 and 4 and the
//! built kubectl: every command that would change a hard-locked release is refused by the
//! API server itself and changes nothing; after `unlock` they all work again.

use std::path::Path;
use std::process::Command;

use crate::common::{bed, chart, guard_bin, per_helm, run, Bed, Run};
use serde_json::{json, Value};

const NS: &str = "shared";

fn setup(label: &str) -> Bed {
    let b = bed(label);
    b.api.create_namespace(NS);
    b
}

fn record(revision: u64) -> String {
    format!("sh.helm.release.v1.db.v{revision}")
}

fn kubectl(b: &Bed, kubeconfig: &Path, args: &[&str]) -> Run {
    let mut cmd = Command::new(kube_testbed::kubectl());
    cmd.env_clear()
        .env("HOME", b.home())
        .env("KUBECONFIG", kubeconfig)
        .args(args);
    run(&mut cmd)
}

fn install_policy(b: &Bed) {
    b.guard(&["policy", "install"])
        .expect_code(0, "policy install")
        .assert_stderr(&[
            "applied: Namespace guarded-upgrade",
            "applied: ValidatingAdmissionPolicy guarded-upgrade-hard-lock-params",
            "applied: ValidatingAdmissionPolicyBinding guarded-upgrade-hard-lock-params",
            "applied: Role guarded-upgrade-locks",
            "applied: RoleBinding guarded-upgrade-locks",
            "applied: ClusterRole guarded-upgrade-hard-lock-reader",
            "applied: ClusterRoleBinding guarded-upgrade-hard-lock-reader",
            "applied: ValidatingAdmissionPolicy guarded-upgrade-hard-lock",
            "applied: ValidatingAdmissionPolicyBinding guarded-upgrade-hard-lock",
            "applied: ValidatingAdmissionPolicy guarded-upgrade-hard-lock-wide",
            "applied: ValidatingAdmissionPolicyBinding guarded-upgrade-hard-lock-wide",
            "installed: ValidatingAdmissionPolicies guarded-upgrade-hard-lock, \
             guarded-upgrade-hard-lock-wide, guarded-upgrade-hard-lock-params version 3; \
             `guarded-upgrade lock RELEASE --hard` is now enforced by the cluster",
        ]);
}

fn install_db(b: &Bed) {
    b.helm(&["install", "db", &chart("demo-1.0.0"), "-n", NS])
        .expect_code(0, "helm install");
}

/// Everything that must not change under an enforced lock: the release's records and
/// objects (name → resourceVersion), and helm's history.
fn snapshot(b: &Bed) -> (Vec<(String, String)>, Vec<Value>) {
    let mut objects = Vec::new();
    for resource in ["secrets", "configmaps", "deployments", "services"] {
        for o in b.api.list(resource, Some(NS)) {
            objects.push((
                format!("{resource}/{}", o["metadata"]["name"].as_str().unwrap()),
                o["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            ));
        }
    }
    objects.sort();
    (objects, b.history("db", NS))
}

fn status_json(b: &Bed) -> Value {
    let run = b.guard(&["status", "db", "-n", NS, "-o", "json"]);
    run.expect_code(0, "status -o json");
    serde_json::from_str(run.stdout.trim()).expect("status JSON")
}

/// The API server's denial of `op` on `resource` `name`, for the lock `lock --hard
/// --reason freeze` set by the test bed's admin.
fn denial(b: &Bed, op: &str, resource: &str, name: &str) -> String {
    let since = status_json(b)["lock"]["since"]
        .as_str()
        .unwrap()
        .to_string();
    let kind = resource.split('.').next().unwrap();
    format!(
        "{resource} \"{name}\" is forbidden: ValidatingAdmissionPolicy 'guarded-upgrade-hard-lock' \
         with binding 'guarded-upgrade-hard-lock' denied request: release \"db\" in namespace \
         \"shared\" is hard-locked: freeze (locked by admin since {since}); {op} of {kind} \
         \"{name}\" refused by guarded-upgrade. To change the release, first run: \
         guarded-upgrade unlock db -n shared"
    )
}

const ENFORCED: &str = "enforced: the cluster refuses changes to release \"db\" in \"shared\" \
                        (ValidatingAdmissionPolicy guarded-upgrade-hard-lock, ConfigMap \
                        guarded-upgrade-lock-db; outside the namespace ValidatingAdmissionPolicy \
                        guarded-upgrade-hard-lock-wide, ConfigMap guarded-upgrade-lock-shared.db \
                        in namespace guarded-upgrade)";

fn lock_enforced(b: &Bed) {
    b.guard(&["lock", "db", "--hard", "--reason", "freeze", "-n", NS])
        .expect_code(0, "lock --hard")
        .assert_stderr(&[
            r#"locked: release "db" in "shared" (hard): freeze"#,
            ENFORCED,
        ]);
}

/// With the policy installed and a hard lock: helm upgrade, upgrade --install, rollback,
/// uninstall, and kubectl delete/label/annotate of a record and delete of a release object
/// are all refused, naming the lock; nothing changes. After `unlock` all of them work.
fn enforced_lock_refuses_every_change(label: &str) {
    let b = setup(label);
    install_policy(&b);
    install_db(&b);
    b.helm(&["upgrade", "db", &chart("demo-1.1.0"), "-n", NS])
        .expect_code(0, "helm upgrade to 1.1.0");
    lock_enforced(&b);
    let status = status_json(&b);
    assert_eq!(status["lock"]["enforcement"], "cluster policy", "{status}");
    assert!(status["lock"]["enforcement_note"].is_null(), "{status}");
    let text = b.guard(&["status", "db", "-n", NS]);
    text.expect_code(0, "status")
        .assert_stdout_line("  enforced cluster policy");
    let run = b.guard(&["locks", "-n", NS, "-o", "json"]);
    let rows: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(rows[0]["enforcement"], "cluster policy", "{rows}");
    let before = snapshot(&b);

    let admin = b.api.kubeconfig().to_path_buf();
    let c120 = chart("demo-1.2.0");
    for args in [
        vec!["upgrade", "db", c120.as_str(), "-n", NS],
        vec!["upgrade", "--install", "db", c120.as_str(), "-n", NS],
    ] {
        let run = b.helm(&args);
        assert_ne!(run.code, 0, "{args:?} must fail: {}", run.stdout);
        run.assert_stderr_line(
            "Error: UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress",
        );
    }
    let run = b.helm(&["rollback", "db", "1", "-n", NS]);
    assert_ne!(run.code, 0, "helm rollback must fail: {}", run.stdout);
    let create = denial(&b, "create", "secrets", &record(3));
    assert!(
        run.stderr.lines().any(|l| l.ends_with(&create)),
        "helm rollback: wanted a line ending in\n{create}\n--- stderr\n{}",
        run.stderr
    );
    let run = b.helm(&["uninstall", "db", "-n", NS]);
    assert_ne!(run.code, 0, "helm uninstall must fail: {}", run.stdout);
    run.assert_stderr_line("Error: failed to delete release: db");
    let run = b.helm(&["uninstall", "db", "-n", NS, "--debug"]);
    assert_ne!(run.code, 0, "helm uninstall --debug must fail");
    // helm logs the denials (its own quoting differs between helm 3 and 4).
    assert!(
        run.stderr.contains(
            "refused by guarded-upgrade. To change the release, first run: guarded-upgrade \
             unlock db -n shared"
        ),
        "helm uninstall --debug: no denial in\n{}",
        run.stderr
    );
    let object = denial(&b, "delete", "deployments.apps", "db-app");

    let secret = format!("secret/{}", record(2));
    kubectl(&b, &admin, &["-n", NS, "delete", &secret])
        .expect_code(1, "kubectl delete secret")
        .assert_stderr(&[&format!(
            "Error from server (Forbidden): {}",
            denial(&b, "delete", "secrets", &record(2))
        )]);
    for (verb, arg) in [("label", "x=y"), ("annotate", "x=y")] {
        kubectl(&b, &admin, &["-n", NS, verb, &secret, arg])
            .expect_code(1, verb)
            .assert_stderr(&[&format!(
                "Error from server (Forbidden): {}",
                denial(&b, "update", "secrets", &record(2))
            )]);
    }
    kubectl(&b, &admin, &["-n", NS, "delete", "deploy/db-app"])
        .expect_code(1, "kubectl delete deploy")
        .assert_stderr(&[&format!("Error from server (Forbidden): {object}")]);
    kubectl(&b, &admin, &["-n", NS, "delete", "svc/db-svc"])
        .expect_code(1, "kubectl delete svc")
        .assert_stderr(&[&format!(
            "Error from server (Forbidden): {}",
            denial(&b, "delete", "services", "db-svc")
        )]);
    assert_eq!(
        snapshot(&b),
        before,
        "nothing may change under an enforced lock"
    );

    // Unrelated objects in the namespace are not affected.
    kubectl(&b, &admin, &["-n", NS, "create", "configmap", "other"]).expect_code(0, "create cm");
    kubectl(&b, &admin, &["-n", NS, "delete", "configmap", "other"]).expect_code(0, "delete cm");

    b.guard(&["unlock", "db", "-n", NS])
        .expect_code(0, "unlock")
        .assert_stderr(&[r#"unlocked: release "db" in "shared""#]);
    assert!(b
        .api
        .get("configmaps", Some(NS), "guarded-upgrade-lock-db")
        .is_none());
    kubectl(&b, &admin, &["-n", NS, "label", &secret, "x=y"]).expect_code(0, "label");
    b.helm(&["rollback", "db", "1", "-n", NS])
        .expect_code(0, "helm rollback after unlock");
    b.helm(&["upgrade", "--install", "db", &c120, "-n", NS])
        .expect_code(0, "helm upgrade --install after unlock");
    assert_eq!(b.deployed("db", NS), ("1.2.0".to_string(), 4));
    kubectl(&b, &admin, &["-n", NS, "delete", "svc/db-svc"]).expect_code(0, "delete svc");
    b.helm(&["uninstall", "db", "-n", NS])
        .expect_code(0, "helm uninstall after unlock");
    assert!(b.api.get("deployments", Some(NS), "db-app").is_none());
}

/// Without the policy: `lock --hard` is today's labels-only lock and says so, `status`
/// says why; `--enforce` refuses (exit 3) and writes nothing.
fn not_installed_is_labels_only(label: &str) {
    let b = setup(label);
    install_db(&b);
    let before = snapshot(&b);
    let why = "the ValidatingAdmissionPolicy guarded-upgrade-hard-lock is not installed; a \
               cluster admin installs it with `guarded-upgrade policy install` (see docs/locks.md)";
    b.guard(&["lock", "db", "--hard", "--enforce", "-n", NS])
        .expect_code(3, "lock --hard --enforce")
        .assert_stderr(&[&format!(
            "guarded-upgrade: error: release \"db\" in namespace \"shared\": --enforce: the hard lock cannot be \
             enforced by the cluster: {why}; nothing changed (without --enforce the lock is set, \
             labels only)"
        )]);
    assert_eq!(snapshot(&b), before, "--enforce must write nothing");
    b.guard(&["lock", "db", "--hard", "-n", NS])
        .expect_code(0, "lock --hard")
        .assert_stderr(&[
            r#"locked: release "db" in "shared" (hard)"#,
            &format!(
                "warning: the hard lock is not enforced by the cluster: {why}; plain helm \
                 upgrade and install are refused (pending record), but helm rollback, helm \
                 uninstall and kubectl are not"
            ),
        ]);
    let status = status_json(&b);
    assert_eq!(status["lock"]["enforcement"], "labels only", "{status}");
    assert_eq!(
        status["lock"]["enforcement_note"],
        format!("not enforced by the cluster: {why}"),
        "{status}"
    );
    b.guard(&["status", "db", "-n", NS])
        .expect_code(0, "status")
        .assert_stdout_line(&format!(
            "  enforced labels only (not enforced by the cluster: {why})"
        ));
    let run = b.guard(&["locks", "-n", NS]);
    run.expect_code(0, "locks").assert_stdout(&[
        "NAMESPACE            RELEASE          KIND  BY                   EXPIRES                PIN          ENFORCED         REASON",
        "shared               db               hard  admin                -                      -            labels only",
    ]);
    // Labels only: kubectl still deletes.
    let admin = b.api.kubeconfig().to_path_buf();
    kubectl(&b, &admin, &["-n", NS, "delete", "deploy/db-app"]).expect_code(0, "delete deploy");
    b.guard(&["unlock", "db", "-n", NS])
        .expect_code(0, "unlock");
}

/// A team member with namespace rights on Secrets and Leases but none on ConfigMaps: the
/// policy is installed, yet the lock cannot be enforced for them; they are told why, and
/// `--enforce` refuses. With `create`/`delete`/`get` on ConfigMaps added, it is enforced.
fn restricted_user_without_configmap_rights(label: &str) {
    let b = setup(label);
    install_policy(&b);
    install_db(&b);
    let role = |name: &str, rules: Value| {
        b.api.put_object(
            "roles",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                   "metadata": {"name": name, "namespace": NS}, "rules": rules}),
        );
        b.api.put_object(
            "rolebindings",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": name, "namespace": NS},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                   "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]}),
        );
    };
    role(
        "records",
        json!([
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "patch"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
             "verbs": ["get", "create", "update"]},
        ]),
    );
    let alice = b.api.real().kubeconfig_for("alice", Some(NS));
    let alice_env = [("KUBECONFIG", alice.to_str().unwrap())];
    let why = "you may not create configmaps in namespace \"shared\", which the lock's \
               ConfigMap guarded-upgrade-lock-db needs (see docs/locks.md for the Role)";
    let before = snapshot(&b);
    b.guard_env(&["lock", "db", "--hard", "--enforce"], &alice_env)
        .expect_code(3, "lock --hard --enforce as alice")
        .assert_stderr(&[&format!(
            "guarded-upgrade: error: release \"db\" in namespace \"shared\": --enforce: the hard lock cannot be \
             enforced by the cluster: {why}; nothing changed (without --enforce the lock is set, \
             labels only)"
        )]);
    assert_eq!(snapshot(&b), before, "--enforce must write nothing");
    b.guard_env(&["lock", "db", "--hard"], &alice_env)
        .expect_code(0, "lock --hard as alice")
        .assert_stderr(&[
            r#"locked: release "db" in "shared" (hard)"#,
            &format!(
                "warning: the hard lock is not enforced by the cluster: {why}; plain helm \
                 upgrade and install are refused (pending record), but helm rollback, helm \
                 uninstall and kubectl are not"
            ),
        ]);
    assert!(b
        .api
        .get("configmaps", Some(NS), "guarded-upgrade-lock-db")
        .is_none());
    // The labels-only lock is unlocked by the same user (the ConfigMap cannot even be read).
    b.guard_env(&["unlock", "db"], &alice_env)
        .expect_code(0, "unlock as alice")
        .assert_stderr(&[
            &format!(
                "note: cannot read the ConfigMap guarded-upgrade-lock-db in namespace \"shared\" \
                 (API server {} (context \"testbed\"): 403 Forbidden: configmaps \
                 \"guarded-upgrade-lock-db\" is forbidden: User \"alice\" cannot get resource \
                 \"configmaps\" in API group \"\" in the namespace \"shared\"; grant this \
                 identity the permission (RBAC), or use a context/--kube-as-user that has it): \
                 if the cluster enforces this hard lock, the record writes are refused; lifting \
                 it needs get and delete on configmaps (docs/locks.md)",
                b.api.url()
            ),
            r#"unlocked: release "db" in "shared""#,
        ]);
    // Exactly the documented Role: enforced.
    role(
        "lock-params",
        json!([{"apiGroups": [""], "resources": ["configmaps"],
                "verbs": ["get", "create", "update", "delete"]},
               {"apiGroups": ["", "apps"], "resources": ["services", "deployments", "replicasets"],
                "verbs": ["get", "list"]}]),
    );
    b.guard_env(&["lock", "db", "--hard", "--enforce"], &alice_env)
        .expect_code(0, "lock --hard --enforce as alice with the Role")
        .assert_stderr(&[r#"locked: release "db" in "shared" (hard)"#, ENFORCED]);
    b.guard_env(&["unlock", "db"], &alice_env)
        .expect_code(0, "unlock as alice")
        .assert_stderr(&[r#"unlocked: release "db" in "shared""#]);
}

/// `unlock` lifts the enforcement before it rewrites a record: an unlock stopped right after
/// that step (simulated by deleting the lock's ConfigMap) leaves a labels-only lock that
/// `status` reports, and a re-run of `unlock` finishes; a re-run of `lock --hard` instead
/// enforces it again.
fn interrupted_unlock_converges(label: &str) {
    let b = setup(label);
    install_policy(&b);
    install_db(&b);
    lock_enforced(&b);
    assert!(b
        .api
        .delete_object("configmaps", Some(NS), "guarded-upgrade-lock-db"));
    let status = status_json(&b);
    assert_eq!(status["lock"]["kind"], "hard", "{status}");
    assert_eq!(status["lock"]["enforcement"], "labels only", "{status}");
    assert_eq!(
        status["lock"]["enforcement_note"],
        "not enforced by the cluster: no ConfigMap guarded-upgrade-lock-db in namespace \
         \"shared\"; run `guarded-upgrade lock db --hard -n shared` again to enforce it",
        "{status}"
    );
    // Re-running the lock converges on the enforced lock (no record is rewritten).
    let records = b.api.list("secrets", Some(NS));
    lock_enforced(&b);
    assert_eq!(b.api.list("secrets", Some(NS)), records);
    assert_eq!(status_json(&b)["lock"]["enforcement"], "cluster policy");
    // Interrupted unlock, then the re-run.
    b.api
        .delete_object("configmaps", Some(NS), "guarded-upgrade-lock-db");
    b.guard(&["unlock", "db", "-n", NS])
        .expect_code(0, "unlock re-run")
        .assert_stderr(&[r#"unlocked: release "db" in "shared""#]);
    let status = status_json(&b);
    assert!(status["lock"].is_null(), "{status}");
    assert_eq!(status["latest"]["status"], "deployed", "{status}");
    b.helm(&["upgrade", "db", &chart("demo-1.1.0"), "-n", NS])
        .expect_code(0, "helm upgrade after unlock");
}

/// Changing an enforced lock (a new reason) lifts and re-imposes the enforcement around
/// the record writes; switching it to a soft lock removes the enforcement.
fn relock_while_enforced(label: &str) {
    let b = setup(label);
    install_policy(&b);
    install_db(&b);
    lock_enforced(&b);
    b.guard(&["lock", "db", "--hard", "--reason", "incident", "-n", NS])
        .expect_code(0, "relock")
        .assert_stderr(&[
            r#"locked: release "db" in "shared" (hard): incident"#,
            ENFORCED,
        ]);
    let param = b
        .api
        .get("configmaps", Some(NS), "guarded-upgrade-lock-db")
        .unwrap();
    assert_eq!(param["data"]["reason"], "incident", "{param}");
    b.guard(&["lock", "db", "--reason", "soft now", "-n", NS])
        .expect_code(0, "soft lock")
        .assert_stderr(&[r#"locked: release "db" in "shared" (soft): soft now"#]);
    assert!(b
        .api
        .get("configmaps", Some(NS), "guarded-upgrade-lock-db")
        .is_none());
    let status = status_json(&b);
    assert_eq!(status["lock"]["enforcement"], "labels only", "{status}");
    assert_eq!(status["latest"]["status"], "deployed", "{status}");
    b.guard(&["policy", "uninstall"])
        .expect_code(0, "policy uninstall")
        .assert_stderr(&[
            "deleted: ValidatingAdmissionPolicyBinding guarded-upgrade-hard-lock-wide",
            "deleted: ValidatingAdmissionPolicyBinding guarded-upgrade-hard-lock",
            "deleted: ValidatingAdmissionPolicyBinding guarded-upgrade-hard-lock-params",
            "deleted: ValidatingAdmissionPolicy guarded-upgrade-hard-lock-params",
            "deleted: ValidatingAdmissionPolicy guarded-upgrade-hard-lock",
            "deleted: ValidatingAdmissionPolicy guarded-upgrade-hard-lock-wide",
            "deleted: ClusterRoleBinding guarded-upgrade-hard-lock-reader",
            "deleted: ClusterRole guarded-upgrade-hard-lock-reader",
            "deleted: RoleBinding guarded-upgrade-locks",
            "deleted: Role guarded-upgrade-locks",
            "deleted: Namespace guarded-upgrade",
            "uninstalled: hard locks are no longer enforced by the cluster (labels only)",
            "note: kube-apiserver stops reading ConfigMap parameters of an admission policy \
             once its binding is gone (kubernetes/kubernetes#130887): after a later `guarded-upgrade \
             policy install`, restart each kube-apiserver, or `lock --hard` will report the lock \
             as not enforced",
        ]);
}

per_helm!(
    enforced_lock_refuses_every_change,
    not_installed_is_labels_only,
    restricted_user_without_configmap_rights,
    interrupted_unlock_converges,
    relock_while_enforced,
);

/// `policy manifest` prints the committed manifest byte for byte, without a cluster.
#[test]
fn manifest_is_the_committed_file() {
    let run = run(Command::new(guard_bin())
        .env_clear()
        .env("KUBECONFIG", "/nonexistent")
        .args(["policy", "manifest"]));
    run.expect_code(0, "policy manifest");
    let committed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/hard-lock-policy.yaml"),
    )
    .unwrap();
    assert_eq!(run.stdout, committed);
}
