//! End to end (issue 25): an enforced hard lock is a freeze. On the real kube-apiserver
//! with the policy of `guarded-upgrade policy install`, every identity that is not a
//! Kubernetes system component (the admin in system:masters, a namespace editor, a CI
//! ServiceAccount of another namespace) is refused every change to the release's objects,
//! its records and the lock's own ConfigMap; status and finalizer writes, the system
//! components and other releases are left alone; `lock --hard` and `status` list what the
//! cluster cannot freeze, and claim `cluster policy` only after a dry-run probe.

use std::path::PathBuf;
use std::process::Command;

use crate::common::{bed, chart, per_helm, run, Bed, Run};
use serde_json::{json, Value};

const NS: &str = "shared";
/// The namespace of the CI ServiceAccount (not exempt).
const CI: &str = "ci";
/// Where the wide chart puts one ConfigMap (another namespace than the release's).
const OTHER: &str = "elsewhere";

/// Who runs a kubectl command.
#[derive(Clone)]
enum Who {
    /// The test bed's admin (system:masters).
    Admin,
    /// A bearer token (the CI ServiceAccount's).
    Token(String),
    /// The admin impersonating a user in groups (`--as`, `--as-group`).
    As(&'static str, &'static [&'static str]),
}

fn kubectl(b: &Bed, who: &Who, args: &[&str]) -> Run {
    let mut cmd = Command::new(kube_testbed::kubectl());
    cmd.env_clear()
        .env("HOME", b.home())
        .env("KUBECONFIG", b.api.kubeconfig());
    match who {
        Who::Admin => {}
        Who::Token(t) => {
            cmd.arg(format!("--token={t}"));
        }
        Who::As(user, groups) => {
            cmd.arg(format!("--as={user}"));
            for g in *groups {
                cmd.arg(format!("--as-group={g}"));
            }
        }
    }
    cmd.args(args);
    run(&mut cmd)
}

/// A chart whose release spreads wider than its namespace: a Deployment and a StatefulSet
/// (both with `scale`; the StatefulSet with a volumeClaimTemplate), a suspended CronJob, a
/// bare Pod and its ServiceAccount, a ConfigMap and a Service in the release namespace; cluster-scoped
/// a ClusterRole and its ClusterRoleBinding, a CustomResourceDefinition, a
/// ValidatingWebhookConfiguration (for the CRD's group only, failing open) and a
/// PersistentVolume, all named for the release's namespace and name, so that the same
/// chart installs as release `db` in two namespaces; a ConfigMap in another namespace; and
/// a hook ConfigMap (helm keeps it: no delete policy).
pub(crate) fn wide_chart(b: &Bed, version: &str, message: &str) -> PathBuf {
    let dir = b.home().join("charts").join(format!("wide-{version}"));
    let templates = dir.join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::write(
        dir.join("Chart.yaml"),
        format!("apiVersion: v2\nname: wide\nversion: {version}\nappVersion: \"{version}\"\n"),
    )
    .unwrap();
    std::fs::write(dir.join("values.yaml"), format!("message: {message}\n")).unwrap();
    std::fs::write(
        templates.join("objects.yaml"),
        format!(
            r#"{{{{- $id := printf "%s-%s" .Release.Namespace .Release.Name }}}}
{{{{- $group := printf "%s.%s.example.com" .Release.Name .Release.Namespace }}}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{{{ .Release.Name }}}}-app
spec:
  replicas: 1
  selector:
    matchLabels: {{app: {{{{ .Release.Name }}}}}}
  template:
    metadata:
      labels: {{app: {{{{ .Release.Name }}}}}}
    spec:
      containers:
        - name: app
          image: registry.invalid/wide:1
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {{{{ .Release.Name }}}}-db
spec:
  replicas: 1
  serviceName: {{{{ .Release.Name }}}}-svc
  selector:
    matchLabels: {{sts: {{{{ .Release.Name }}}}}}
  template:
    metadata:
      labels: {{sts: {{{{ .Release.Name }}}}}}
    spec:
      containers:
        - name: db
          image: registry.invalid/wide-db:1
  volumeClaimTemplates:
    - metadata: {{name: data}}
      spec:
        accessModes: [ReadWriteOnce]
        resources: {{requests: {{storage: 1Gi}}}}
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: {{{{ .Release.Name }}}}-nightly
spec:
  schedule: "0 3 * * *"
  suspend: true
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
            - name: nightly
              image: registry.invalid/wide-nightly:1
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{{{ .Release.Name }}}}-sa
---
apiVersion: v1
kind: Pod
metadata:
  name: {{{{ .Release.Name }}}}-pod
spec:
  serviceAccountName: {{{{ .Release.Name }}}}-sa
  containers:
    - name: bare
      image: registry.invalid/wide-bare:1
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{{{ .Release.Name }}}}-config
data:
  message: {{{{ .Values.message | quote }}}}
---
apiVersion: v1
kind: Service
metadata:
  name: {{{{ .Release.Name }}}}-svc
spec:
  selector: {{app: {{{{ .Release.Name }}}}}}
  ports: [{{port: 80}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {{{{ $id }}}}-reader
rules: []
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {{{{ $id }}}}-reader
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {{{{ $id }}}}-reader}}
subjects: [{{kind: ServiceAccount, name: {{{{ .Release.Name }}}}-sa, namespace: {{{{ .Release.Namespace }}}}}}]
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.{{{{ $group }}}}
spec:
  group: {{{{ $group }}}}
  scope: Namespaced
  names: {{plural: widgets, singular: widget, kind: Widget}}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata:
  name: {{{{ $id }}}}-webhook
webhooks:
  - name: widgets.{{{{ $group }}}}
    rules:
      - apiGroups: [{{{{ $group | quote }}}}]
        apiVersions: ["v1"]
        resources: ["widgets"]
        operations: ["CREATE"]
    clientConfig: {{url: "https://127.0.0.1:9/{{{{ $id }}}}"}}
    failurePolicy: Ignore
    sideEffects: None
    admissionReviewVersions: ["v1"]
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: {{{{ $id }}}}-pv
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  hostPath: {{path: /tmp/{{{{ $id }}}}}}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{{{ $id }}}}-remote
  namespace: {OTHER}
data: {{}}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{{{ .Release.Name }}}}-hook
  annotations:
    helm.sh/hook: pre-install
data: {{}}
"#
        ),
    )
    .unwrap();
    dir
}

fn setup(label: &str) -> Bed {
    let b = bed(label);
    for ns in [NS, CI, OTHER] {
        b.api.create_namespace(ns);
    }
    b.guard(&["policy", "install"])
        .expect_code(0, "policy install");
    b
}

/// A ServiceAccount `deployer` in the CI namespace, bound to cluster-admin, and its token.
fn ci_token(b: &Bed) -> String {
    b.api.put_object(
        "serviceaccounts",
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": "deployer", "namespace": CI}}),
    );
    b.api.put_object(
        "clusterrolebindings",
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": "ci-deployer"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                           "name": "cluster-admin"},
               "subjects": [{"kind": "ServiceAccount", "name": "deployer", "namespace": CI}]}),
    );
    let run = kubectl(b, &Who::Admin, &["-n", CI, "create", "token", "deployer"]);
    run.expect_code(0, "kubectl create token");
    run.stdout.trim().to_string()
}

/// The denial kubectl prints for `op` of `what` (`deployments/scale "db-app"`), for the lock
/// `--reason freeze` by the admin, by the policy acting in the release's namespace.
fn denied(run: &Run, op_what: &str) {
    denied_by(run, "guarded-upgrade-hard-lock", op_what)
}

/// [`denied`], by the policy acting outside the release's namespace.
fn denied_wide(run: &Run, op_what: &str) {
    denied_by(run, "guarded-upgrade-hard-lock-wide", op_what)
}

fn denied_by(run: &Run, policy: &str, op_what: &str) {
    assert_eq!(run.code, 1, "{op_what} must be refused:\n{}", run.stderr);
    let wanted = format!(
        "is forbidden: ValidatingAdmissionPolicy '{policy}' with binding '{policy}' denied \
         request: release \"db\" in namespace \"shared\" is hard-locked: freeze (locked by \
         admin since "
    );
    let tail = format!(
        "; {op_what} refused by guarded-upgrade. To change the release, first run: \
         guarded-upgrade unlock db -n shared"
    );
    assert!(
        run.stderr
            .lines()
            .any(|l| l.contains(&wanted) && l.ends_with(&tail)),
        "{op_what}: wanted a Forbidden line with\n{wanted}…{tail}\n--- stderr\n{}",
        run.stderr
    );
}

/// name → resourceVersion of every object of the release in its namespace and its
/// records.
fn versions(b: &Bed) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for resource in ["secrets", "configmaps", "deployments", "services"] {
        for o in b.api.list(resource, Some(NS)) {
            out.push((
                format!("{resource}/{}", o["metadata"]["name"].as_str().unwrap()),
                o["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            ));
        }
    }
    out.sort();
    out
}

/// An autoscaling/v2 HorizontalPodAutoscaler `name` aimed at `kind`/`target` (3 to 5
/// replicas), written to a file for `kubectl create -f`.
fn hpa_file(b: &Bed, name: &str, kind: &str, target: &str) -> String {
    write_file(
        b,
        &format!("hpa-{name}.json"),
        &json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": name, "namespace": NS},
                "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": kind, "name": target},
                         "minReplicas": 3, "maxReplicas": 5}})
        .to_string(),
    )
}

fn write_file(b: &Bed, name: &str, text: &str) -> String {
    let path = b.home().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

fn status_json(b: &Bed, env: &[(&str, &str)]) -> Value {
    let run = b.guard_env(&["status", "db", "-n", NS, "-o", "json"], env);
    run.expect_code(0, "status -o json");
    serde_json::from_str(run.stdout.trim()).expect("status JSON")
}

/// What the cluster cannot freeze of release `db` of the wide chart in `shared`.
const NOT_FROZEN: [&str; 4] = [
    "ConfigMap db-hook (a helm hook: helm does not mark hooks as the release's)",
    "CronJob db-nightly (the Jobs it starts after the lock was set, and their pods)",
    "Namespace elsewhere (deleting it deletes the release's objects there)",
    "StatefulSet db-db (the PersistentVolumeClaims of its volumeClaimTemplates: they carry \
     neither the release's annotations nor an owner reference)",
];

/// The `enforced:` line of `lock --hard db --hard -n shared`, both parts in force.
const ENFORCED: &str = "enforced: the cluster refuses changes to release \"db\" in \"shared\" \
     (ValidatingAdmissionPolicy guarded-upgrade-hard-lock, ConfigMap guarded-upgrade-lock-db; \
     outside the namespace ValidatingAdmissionPolicy guarded-upgrade-hard-lock-wide, ConfigMap \
     guarded-upgrade-lock-shared.db in namespace guarded-upgrade)";

/// Every way around the freeze, tried by the admin (system:masters), a CI ServiceAccount
/// of another namespace with cluster-admin, and a user impersonated without exemption:
/// patch, scale, rollout restart, stripping and adding the release's annotations and
/// labels, server-side apply, replace, create and delete (dry-run too), the records and
/// the lock's own ConfigMap: all refused, nothing changed. Left alone: status and
/// finalizer writes, Kubernetes' own components (impersonated here; real ones in
/// `controllers`), other releases and unrelated objects. `lock --hard` and `status` list
/// what the cluster cannot freeze (cluster-scoped, another namespace, hooks), and those
/// stay changeable. After `unlock` the release changes again.
fn frozen_release_refuses_every_change(label: &str) {
    let b = setup(label);
    let ci = Who::Token(ci_token(&b));
    let wide = wide_chart(&b, "1.0.0", "one");
    b.helm(&["install", "db", wide.to_str().unwrap(), "-n", NS])
        .expect_code(0, "helm install db");
    b.helm(&["install", "other", &chart("demo-1.0.0"), "-n", NS])
        .expect_code(0, "helm install other");
    kubectl(
        &b,
        &Who::Admin,
        &["-n", NS, "create", "configmap", "foreign"],
    )
    .expect_code(0, "an unrelated ConfigMap");

    let lock = b.guard(&["lock", "db", "--hard", "--reason", "freeze", "-n", NS]);
    lock.expect_code(0, "lock --hard");
    let mut expected = vec![
        r#"locked: release "db" in "shared" (hard): freeze"#.to_string(),
        ENFORCED.to_string(),
    ];
    expected.extend(
        NOT_FROZEN
            .iter()
            .map(|o| format!("note: not frozen by the cluster: {o}")),
    );
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    lock.assert_stderr(&expected);
    let status = status_json(&b, &[]);
    assert_eq!(status["lock"]["enforcement"], "cluster policy", "{status}");
    assert_eq!(status["lock"]["not_frozen"], json!(NOT_FROZEN), "{status}");
    let text = b.guard(&["status", "db", "-n", NS]);
    text.expect_code(0, "status")
        .assert_stdout_line("  enforced cluster policy");
    for o in NOT_FROZEN {
        text.assert_stdout_line(&format!("  not frozen {o}"));
    }

    let before = versions(&b);
    let not_exempt = Who::As(
        "system:serviceaccount:kube-system:ci-bot",
        &["system:masters"],
    );
    let patched = write_file(
        &b,
        "apply.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: db-config\n  namespace: shared\n\
         data:\n  message: changed\n",
    );
    let adopted = write_file(
        &b,
        "adopt.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: smuggled\n  namespace: shared\n  \
         annotations:\n    meta.helm.sh/release-name: db\n    meta.helm.sh/release-namespace: \
         shared\n  labels:\n    app.kubernetes.io/managed-by: Helm\n",
    );
    let eviction = write_file(
        &b,
        "eviction.json",
        &json!({"apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": "db-pod", "namespace": NS}})
        .to_string(),
    );
    let hpa = hpa_file(&b, "db-db", "StatefulSet", "db-db");
    let replaced = {
        let mut cm = b.api.get("configmaps", Some(NS), "db-config").unwrap();
        cm["data"]["message"] = json!("replaced");
        write_file(&b, "replace.json", &cm.to_string())
    };
    for who in [&Who::Admin, &ci, &not_exempt] {
        for (args, op_what) in [
            (
                vec![
                    "patch",
                    "deploy/db-app",
                    "--type=merge",
                    "-p",
                    r#"{"spec":{"replicas":3}}"#,
                ],
                r#"update of deployments "db-app""#,
            ),
            (
                vec!["scale", "deploy/db-app", "--replicas=2"],
                r#"update of deployments/scale "db-app""#,
            ),
            (
                vec!["scale", "sts/db-db", "--replicas=3"],
                r#"update of statefulsets/scale "db-db""#,
            ),
            (
                vec![
                    "create",
                    "--raw",
                    "/api/v1/namespaces/shared/pods/db-pod/eviction",
                    "-f",
                    &eviction,
                ],
                r#"create of pods/eviction "db-pod""#,
            ),
            (
                vec!["create", "-f", &hpa],
                r#"create of horizontalpodautoscalers "db-db" (it would scale an object of the release)"#,
            ),
            (
                vec!["rollout", "restart", "deploy/db-app"],
                r#"update of deployments "db-app""#,
            ),
            (
                vec!["annotate", "cm/db-config", "meta.helm.sh/release-name-"],
                r#"update of configmaps "db-config""#,
            ),
            (
                vec![
                    "annotate",
                    "--overwrite",
                    "svc/db-svc",
                    "meta.helm.sh/release-name=evil",
                ],
                r#"update of services "db-svc""#,
            ),
            (
                vec!["label", "svc/db-svc", "app.kubernetes.io/managed-by-"],
                r#"update of services "db-svc""#,
            ),
            (
                vec![
                    "apply",
                    "--server-side",
                    "--force-conflicts",
                    "-f",
                    &patched,
                ],
                r#"update of configmaps "db-config""#,
            ),
            (
                vec!["replace", "-f", &replaced],
                r#"update of configmaps "db-config""#,
            ),
            (
                vec!["create", "-f", &adopted],
                r#"create of configmaps "smuggled""#,
            ),
            (
                vec![
                    "annotate",
                    "cm/foreign",
                    "meta.helm.sh/release-name=db",
                    "meta.helm.sh/release-namespace=shared",
                ],
                r#"update of configmaps "foreign""#,
            ),
            (
                vec!["delete", "cm/db-config"],
                r#"delete of configmaps "db-config""#,
            ),
            (
                vec!["delete", "deploy/db-app", "--dry-run=server"],
                r#"delete of deployments "db-app""#,
            ),
            (
                vec!["label", "secret/sh.helm.release.v1.db.v1", "x=y"],
                r#"update of secrets "sh.helm.release.v1.db.v1""#,
            ),
            (
                vec!["delete", "secret/sh.helm.release.v1.db.v1"],
                r#"delete of secrets "sh.helm.release.v1.db.v1""#,
            ),
        ] {
            let mut full = vec!["-n", NS];
            full.extend(args.iter().copied());
            denied(&kubectl(&b, who, &full), op_what);
        }
        // The lock's own ConfigMap: no edit, no stripping of its labels.
        for args in [
            vec![
                "patch",
                "cm/guarded-upgrade-lock-db",
                "--type=merge",
                "-p",
                r#"{"data":{"release":"x"}}"#,
            ],
            vec![
                "label",
                "cm/guarded-upgrade-lock-db",
                "guarded-upgrade.io/hard-lock-",
            ],
        ] {
            let mut full = vec!["-n", NS];
            full.extend(args.iter().copied());
            let run = kubectl(&b, who, &full);
            assert_eq!(run.code, 1, "{args:?}: {}", run.stderr);
            assert!(
                run.stderr.contains(
                    "; update of configmaps \"guarded-upgrade-lock-db\" refused by \
                     guarded-upgrade. The lock's ConfigMap cannot be changed, only deleted, \
                     which lifts the enforcement; to change the lock run: guarded-upgrade \
                     lock db --hard -n shared"
                ),
                "{args:?}: {}",
                run.stderr
            );
        }
    }
    assert_eq!(versions(&b), before, "nothing may change under the freeze");
    assert!(b.api.get("configmaps", Some(NS), "smuggled").is_none());
    assert!(
        b.api.get("pods", Some(NS), "db-pod").is_some(),
        "not evicted"
    );
    assert!(b.api.list("horizontalpodautoscalers", Some(NS)).is_empty());

    // What is not frozen is said, and stays changeable.
    kubectl(&b, &ci, &["-n", NS, "label", "cm/db-hook", "x=y"]).expect_code(0, "hook");

    // Left alone: status writes and finalizer-only writes, by anyone (operators) …
    kubectl(
        &b,
        &ci,
        &[
            "-n",
            NS,
            "patch",
            "deploy/db-app",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"observedGeneration":7}}"#,
        ],
    )
    .expect_code(0, "status subresource");
    for finalizers in [r#"["example.com/keep"]"#, "null"] {
        kubectl(
            &b,
            &ci,
            &[
                "-n",
                NS,
                "patch",
                "cm/db-config",
                "--type=merge",
                "-p",
                &format!(r#"{{"metadata":{{"finalizers":{finalizers}}}}}"#),
            ],
        )
        .expect_code(0, "finalizers only");
    }
    // … a finalizer change that also changes anything else is not.
    denied(
        &kubectl(
            &b,
            &ci,
            &[
                "-n",
                NS,
                "patch",
                "cm/db-config",
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":["example.com/keep"]},"data":{"message":"x"}}"#,
            ],
        ),
        r#"update of configmaps "db-config""#,
    );
    // Kubernetes' own components (impersonated; the real ones run in `controllers`).
    for (who, args) in [
        (
            Who::As("system:kube-controller-manager", &["system:masters"]),
            vec!["scale", "deploy/db-app", "--replicas=2"],
        ),
        (
            Who::As(
                "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
                &["system:masters"],
            ),
            vec!["scale", "deploy/db-app", "--replicas=1"],
        ),
        (
            Who::As(
                "system:serviceaccount:kube-system:deployment-controller",
                &["system:masters"],
            ),
            vec![
                "annotate",
                "deploy/db-app",
                "deployment.kubernetes.io/revision=1",
            ],
        ),
        (
            Who::As(
                "system:node:kwok-node-0",
                &["system:nodes", "system:masters"],
            ),
            vec!["label", "svc/db-svc", "touched-by=node"],
        ),
    ] {
        let mut full = vec!["-n", NS];
        full.extend(args.iter().copied());
        kubectl(&b, &who, &full).expect_code(0, &format!("{args:?} as a system component"));
    }
    // Other releases and unrelated objects are not frozen.
    kubectl(&b, &ci, &["-n", NS, "annotate", "deploy/other-app", "x=y"])
        .expect_code(0, "another release");
    let other_hpa = hpa_file(&b, "other-app", "Deployment", "other-app");
    kubectl(&b, &ci, &["-n", NS, "create", "-f", &other_hpa])
        .expect_code(0, "an autoscaler aimed at another release");
    b.helm(&["upgrade", "other", &chart("demo-1.1.0"), "-n", NS])
        .expect_code(0, "helm upgrade of another release");
    kubectl(&b, &ci, &["-n", NS, "delete", "cm/foreign"]).expect_code(0, "unrelated object");

    // The lock's ConfigMap can be deleted (that is unlocking); `unlock` finishes the job.
    b.guard(&["unlock", "db", "-n", NS])
        .expect_code(0, "unlock")
        .assert_stderr(&[r#"unlocked: release "db" in "shared""#]);
    kubectl(&b, &ci, &["-n", NS, "annotate", "cm/db-config", "x=y"])
        .expect_code(0, "annotate after unlock");
    b.helm(&["uninstall", "db", "-n", NS])
        .expect_code(0, "helm uninstall after unlock");
    assert!(b.api.get("deployments", Some(NS), "db-app").is_none());
}

/// helm itself cannot get around the freeze: `HELM_DRIVER=memory` (no record to refuse)
/// cannot adopt and rewrite the release's objects, `--take-ownership` by another release
/// cannot re-annotate them, and uninstalling that release cannot delete them; helm
/// rollback and uninstall are refused. Nothing of the release changes.
fn helm_cannot_take_over_a_frozen_release(label: &str) {
    let b = setup(label);
    b.helm(&["install", "db", &chart("demo-1.0.0"), "-n", NS])
        .expect_code(0, "helm install");
    b.helm(&["upgrade", "db", &chart("demo-1.1.0"), "-n", NS])
        .expect_code(0, "helm upgrade");
    b.guard(&["lock", "db", "--hard", "--reason", "freeze", "-n", NS])
        .expect_code(0, "lock --hard");
    let before = versions(&b);
    let c12 = chart("demo-1.2.0");
    let run = b.helm_env(
        &["upgrade", "--install", "db", &c12, "-n", NS],
        &[("HELM_DRIVER", "memory")],
    );
    assert_ne!(
        run.code, 0,
        "HELM_DRIVER=memory adoption must fail: {}",
        run.stdout
    );
    // helm exits 1 without saying why (the refused writes are in its --debug log); the
    // objects are unchanged (checked below).
    // A chart of release "evil" with the same objects, taking them over.
    let same = b.home().join("charts").join("same");
    std::fs::create_dir_all(same.join("templates")).unwrap();
    std::fs::write(
        same.join("Chart.yaml"),
        "apiVersion: v2\nname: same\nversion: 0.1.0\n",
    )
    .unwrap();
    std::fs::write(
        same.join("templates").join("cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: db-config\ndata:\n  message: evil\n",
    )
    .unwrap();
    let same = same.to_string_lossy().into_owned();
    let run = b.helm(&["install", "evil", &same, "-n", NS, "--take-ownership"]);
    assert_ne!(run.code, 0, "--take-ownership must fail: {}", run.stdout);
    assert!(
        run.stderr.contains("refused by guarded-upgrade"),
        "--take-ownership: {}",
        run.stderr
    );
    // Whatever evil's record says, uninstalling it cannot delete db's objects.
    b.helm(&["uninstall", "evil", "-n", NS]);
    let run = b.helm(&["rollback", "db", "1", "-n", NS]);
    assert_ne!(run.code, 0, "helm rollback must fail");
    let run = b.helm(&["uninstall", "db", "-n", NS]);
    assert_ne!(run.code, 0, "helm uninstall must fail");
    let cm = b.api.get("configmaps", Some(NS), "db-config").unwrap();
    assert_eq!(
        cm["metadata"]["annotations"]["meta.helm.sh/release-name"], "db",
        "{cm}"
    );
    assert_eq!(cm["data"]["chartVersion"], "1.1.0", "{cm}");
    let after: Vec<(String, String)> = versions(&b)
        .into_iter()
        .filter(|(n, _)| !n.starts_with("secrets/sh.helm.release.v1.evil."))
        .collect();
    assert_eq!(after, before, "the release's objects and records changed");
    assert_eq!(b.deployed("db", NS), ("1.1.0".to_string(), 2));
}

/// `status` and `locks` say `cluster policy` only when a dry-run change by the caller is
/// refused now and the lock's ConfigMaps still say what the records' lock and the
/// release's objects call for: an exempt identity (or anyone while the policy did not
/// apply) that changes the lock's fields, drops or adds a key of the ConfigMap, or changes
/// the cluster-wide one, is found out and said, and `lock --hard` restores them. With the
/// binding narrowed by an admin (records no longer matched), and for a reader who may not
/// even try a change, they say `labels only` and why.
fn enforcement_is_claimed_only_after_a_probe(label: &str) {
    let b = setup(label);
    b.helm(&["install", "db", &chart("demo-1.0.0"), "-n", NS])
        .expect_code(0, "helm install");
    kubectl(
        &b,
        &Who::Admin,
        &["-n", NS, "create", "configmap", "foreign"],
    )
    .expect_code(0, "an unrelated ConfigMap");
    // The release's objects are older than the lock's ConfigMap by a second at least (an
    // object of the same second could have been made after the lock read them).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let relock = || {
        b.guard(&["lock", "db", "--hard", "--reason", "freeze", "-n", NS])
            .expect_code(0, "lock --hard");
        let status = status_json(&b, &[]);
        assert_eq!(status["lock"]["enforcement"], "cluster policy", "{status}");
        assert!(status["lock"]["not_frozen"].is_null(), "{status}");
    };
    relock();

    // Changed by an identity the policy exempts: found out by status and locks.
    let system = Who::As("system:kube-controller-manager", &["system:masters"]);
    let restore = "run the same `guarded-upgrade lock db --hard -n shared` (with the lock's \
                   reason) again to restore it";
    let param = || {
        b.api
            .get("configmaps", Some(NS), "guarded-upgrade-lock-db")
            .expect("the lock's ConfigMap")
    };
    let deployment_uid = b.api.get("deployments", Some(NS), "db-app").unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        param()["data"][format!("scale.{deployment_uid}")],
        "apps/v1/Deployment/db-app"
    );
    let foreign_uid = b.api.get("configmaps", Some(NS), "foreign").unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    for (patch, why) in [
        (
            json!({"data": {"reason": "x"}}),
            "its reason is \"x\", the records say \"freeze\"".to_string(),
        ),
        (
            json!({"data": {format!("scale.{deployment_uid}"): null}}),
            "it no longer freezes Deployment db-app".to_string(),
        ),
        (
            json!({"data": {format!("owns.{foreign_uid}"): "v1/ConfigMap/foreign"}}),
            "it freezes ConfigMap foreign, which the release does not own".to_string(),
        ),
    ] {
        kubectl(
            &b,
            &system,
            &[
                "-n",
                NS,
                "patch",
                "cm/guarded-upgrade-lock-db",
                "--type=merge",
                "-p",
                &patch.to_string(),
            ],
        )
        .expect_code(0, "an exempt identity changes the lock's ConfigMap");
        let note = format!(
            "not enforced by the cluster: the lock's ConfigMap guarded-upgrade-lock-db was \
             changed after the lock was set ({why}); {restore}"
        );
        let status = status_json(&b, &[]);
        assert_eq!(status["lock"]["enforcement"], "labels only", "{status}");
        assert_eq!(status["lock"]["enforcement_note"], note, "{status}");
        let run = b.guard(&["locks", "-n", NS, "-o", "json"]);
        run.expect_code(0, "locks");
        let rows: Value = serde_json::from_str(run.stdout.trim()).unwrap();
        assert_eq!(rows[0]["enforcement"], "labels only", "{rows}");
        assert_eq!(rows[0]["enforcement_note"], note, "{rows}");
        relock();
    }
    // A ReplicaSet the deployment controller makes after the lock (a rollout in flight
    // when the lock was set) is not in the lock's ConfigMap: said, not taken for a change;
    // `lock --hard` again freezes it.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let late = write_file(
        &b,
        "late-rs.json",
        &json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": "db-app-late", "namespace": NS,
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                                  "name": "db-app", "uid": deployment_uid,
                                                  "controller": true}]},
                "spec": {"replicas": 0, "selector": {"matchLabels": {"late": "yes"}},
                         "template": {"metadata": {"labels": {"late": "yes"}},
                                      "spec": {"containers": [{"name": "c",
                                                               "image": "registry.invalid/x:1"}]}}}})
        .to_string(),
    );
    kubectl(
        &b,
        &Who::As(
            "system:serviceaccount:kube-system:deployment-controller",
            &["system:masters"],
        ),
        &["create", "-f", &late],
    )
    .expect_code(0, "a ReplicaSet made by the deployment controller");
    let status = status_json(&b, &[]);
    assert_eq!(status["lock"]["enforcement"], "cluster policy", "{status}");
    assert_eq!(
        status["lock"]["not_frozen"],
        json!([
            "ReplicaSet db-app-late (created after the lock was set; run `lock --hard` \
                again to freeze it)"
        ]),
        "{status}"
    );
    kubectl(
        &b,
        &Who::Admin,
        &["-n", NS, "scale", "rs/db-app-late", "--replicas=0"],
    )
    .expect_code(0, "not frozen yet");
    relock();
    denied(
        &kubectl(
            &b,
            &Who::Admin,
            &["-n", NS, "scale", "rs/db-app-late", "--replicas=1"],
        ),
        r#"update of replicasets/scale "db-app-late""#,
    );

    // The cluster-wide ConfigMap changed: the namespace stays frozen, deleting it does not.
    kubectl(
        &b,
        &system,
        &[
            "-n",
            "guarded-upgrade",
            "patch",
            "cm/guarded-upgrade-lock-shared.db",
            "--type=merge",
            "-p",
            r#"{"data":{"release":"other"}}"#,
        ],
    )
    .expect_code(0, "an exempt identity changes the cluster-wide ConfigMap");
    let status = status_json(&b, &[]);
    assert_eq!(status["lock"]["enforcement"], "cluster policy", "{status}");
    assert_eq!(
        status["lock"]["not_frozen"],
        json!([format!(
            "Namespace shared (deleting it deletes the release: the ConfigMap \
             guarded-upgrade-lock-shared.db in namespace guarded-upgrade was changed after the \
             lock was set (its release is \"other\", the records say \"db\"); {restore})"
        )]),
        "{status}"
    );
    kubectl(
        &b,
        &Who::Admin,
        &["delete", "namespace", NS, "--dry-run=server"],
    )
    .expect_code(0, "the namespace is not frozen now");
    relock();

    // A reader (get/list on secrets, configmaps) cannot probe: not claimed.
    crate::common::grant(
        &b,
        NS,
        "carol",
        &[
            json!({"apiGroups": [""], "resources": ["secrets", "configmaps"], "verbs": ["get", "list"]}),
        ],
    );
    crate::common::wait_allowed(&b, "carol", NS, "list", "secrets");
    let carol = b.api.real().kubeconfig_for("carol", Some(NS));
    let status = status_json(&b, &[("KUBECONFIG", carol.to_str().unwrap())]);
    assert_eq!(status["lock"]["enforcement"], "labels only", "{status}");
    let note = status["lock"]["enforcement_note"].as_str().unwrap();
    assert!(
        note.starts_with(
            "not enforced by the cluster: cannot check it with a dry-run patch of Secret \
             sh.helm.release.v1.db.v1 ("
        ) && note.contains("User \"carol\" cannot patch resource \"secrets\""),
        "{status}"
    );

    // An admin narrows the binding: the policy is installed, the ConfigMap is there, but
    // the server no longer refuses a change of the record.
    let mut binding = b
        .api
        .get(
            "validatingadmissionpolicybindings",
            None,
            "guarded-upgrade-hard-lock",
        )
        .unwrap();
    binding["spec"]["matchResources"] = json!({"excludeResourceRules": [{
        "apiGroups": [""], "apiVersions": ["v1"], "resources": ["secrets"],
        "operations": ["*"]}]});
    b.api
        .put_object("validatingadmissionpolicybindings", binding);
    let accepted = "not enforced by the cluster: the API server accepted a dry-run change of \
                    Secret sh.helm.release.v1.db.v1 (the policy does not refuse it now)";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        let status = status_json(&b, &[]);
        if status["lock"]["enforcement"] == "labels only" || std::time::Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(status["lock"]["enforcement"], "labels only", "{status}");
    assert_eq!(status["lock"]["enforcement_note"], accepted, "{status}");
    let run = b.guard(&["locks", "-n", NS, "-o", "json"]);
    run.expect_code(0, "locks");
    let rows: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(rows[0]["enforcement"], "labels only", "{rows}");
    assert_eq!(rows[0]["enforcement_note"], accepted, "{rows}");
}

/// resourceVersion of each of the release's objects outside its namespace.
fn wide_versions(b: &Bed, ns: &str) -> Vec<(String, String)> {
    let id = format!("{ns}-db");
    let mut out: Vec<(String, String)> = [
        ("clusterroles", None, format!("{id}-reader")),
        ("clusterrolebindings", None, format!("{id}-reader")),
        (
            "customresourcedefinitions",
            None,
            format!("widgets.db.{ns}.example.com"),
        ),
        (
            "validatingwebhookconfigurations",
            None,
            format!("{id}-webhook"),
        ),
        ("persistentvolumes", None, format!("{id}-pv")),
        ("configmaps", Some(OTHER), format!("{id}-remote")),
        ("namespaces", None, ns.to_string()),
    ]
    .into_iter()
    .map(|(resource, in_ns, name)| {
        let o = b
            .api
            .get(resource, in_ns, &name)
            .unwrap_or_else(|| panic!("{resource}/{name} is gone"));
        (
            format!("{resource}/{name}"),
            o["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .to_string(),
        )
    })
    .collect();
    out.sort();
    out
}

/// Issue 25: the release's objects outside its namespace are frozen too. Cluster-scoped (a
/// ClusterRole and its binding, a CRD, a webhook configuration, a PersistentVolume) and in
/// another namespace (a ConfigMap): update, patch, annotation and label strips, server-side
/// apply and delete are refused for the admin, a CI ServiceAccount with cluster-admin and a
/// service account of kube-system that is not a controller, and so is deleting the
/// release's namespace; Kubernetes' components (impersonated) still write them. Nothing of
/// release `db` in another namespace (same chart, similar names), no unrelated object is
/// frozen; a foreign object cannot be given the release's annotations. The lock's
/// cluster-wide ConfigMap cannot be changed, nor created or deleted by someone without
/// rights in the release's namespace; deleting it (as allowed) shows in `status` as the
/// objects not being frozen, and `lock --hard` restores it. `unlock` lifts it all.
fn frozen_release_beyond_its_namespace(label: &str) {
    let b = setup(label);
    let ci = Who::Token(ci_token(&b));
    let wide = wide_chart(&b, "1.0.0", "one");
    let wide = wide.to_str().unwrap();
    b.helm(&["install", "db", wide, "-n", NS])
        .expect_code(0, "helm install db");
    // Release `db` of namespace `elsewhere`: the same chart, the same release name.
    b.helm(&["install", "db", wide, "-n", OTHER])
        .expect_code(0, "helm install db in elsewhere");
    for name in ["foreign-role", "shared-db-reader-2"] {
        kubectl(
            &b,
            &Who::Admin,
            &[
                "create",
                "clusterrole",
                name,
                "--verb=get",
                "--resource=pods",
            ],
        )
        .expect_code(0, "an unrelated ClusterRole");
    }

    let lock = b.guard(&["lock", "db", "--hard", "--reason", "freeze", "-n", NS]);
    lock.expect_code(0, "lock --hard");
    let mut expected = vec![
        r#"locked: release "db" in "shared" (hard): freeze"#.to_string(),
        ENFORCED.to_string(),
    ];
    expected.extend(
        NOT_FROZEN
            .iter()
            .map(|o| format!("note: not frozen by the cluster: {o}")),
    );
    lock.assert_stderr(&expected.iter().map(String::as_str).collect::<Vec<_>>());
    let status = status_json(&b, &[]);
    assert_eq!(status["lock"]["enforcement"], "cluster policy", "{status}");
    assert_eq!(status["lock"]["not_frozen"], json!(NOT_FROZEN), "{status}");
    b.guard(&["policy", "show"])
        .expect_code(0, "policy show")
        .assert_stdout_line(
            "policy:    installed (ValidatingAdmissionPolicies guarded-upgrade-hard-lock, \
             guarded-upgrade-hard-lock-wide, guarded-upgrade-hard-lock-params version 3, each \
             with its binding)",
        )
        .assert_stdout_line("locks:     db in shared")
        .assert_stdout_line("wide:      db in shared (its objects outside the namespace)");

    let before = wide_versions(&b, NS);
    let others = wide_versions(&b, OTHER);
    let not_exempt = Who::As(
        "system:serviceaccount:kube-system:ci-bot",
        &["system:masters"],
    );
    let applied = write_file(
        &b,
        "clusterrole.yaml",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: \
         shared-db-reader\nrules:\n- apiGroups: [\"\"]\n  resources: [secrets]\n  verbs: [get]\n",
    );
    for who in [&Who::Admin, &ci, &not_exempt] {
        for (args, op_what) in [
            (
                vec![
                    "patch",
                    "clusterrole/shared-db-reader",
                    "--type=merge",
                    "-p",
                    r#"{"rules":[{"apiGroups":[""],"resources":["secrets"],"verbs":["get"]}]}"#,
                ],
                r#"update of clusterroles "shared-db-reader""#,
            ),
            (
                vec![
                    "apply",
                    "--server-side",
                    "--force-conflicts",
                    "-f",
                    &applied,
                ],
                r#"update of clusterroles "shared-db-reader""#,
            ),
            (
                vec![
                    "annotate",
                    "clusterrole/shared-db-reader",
                    "meta.helm.sh/release-name-",
                ],
                r#"update of clusterroles "shared-db-reader""#,
            ),
            (
                vec!["delete", "clusterrolebinding/shared-db-reader"],
                r#"delete of clusterrolebindings "shared-db-reader""#,
            ),
            (
                vec!["label", "crd/widgets.db.shared.example.com", "x=y"],
                r#"update of customresourcedefinitions "widgets.db.shared.example.com""#,
            ),
            (
                vec!["delete", "crd/widgets.db.shared.example.com"],
                r#"delete of customresourcedefinitions "widgets.db.shared.example.com""#,
            ),
            (
                vec![
                    "patch",
                    "validatingwebhookconfiguration/shared-db-webhook",
                    "--type=json",
                    "-p",
                    r#"[{"op":"replace","path":"/webhooks/0/failurePolicy","value":"Fail"}]"#,
                ],
                r#"update of validatingwebhookconfigurations "shared-db-webhook""#,
            ),
            (
                vec![
                    "delete",
                    "validatingwebhookconfiguration/shared-db-webhook",
                    "--dry-run=server",
                ],
                r#"delete of validatingwebhookconfigurations "shared-db-webhook""#,
            ),
            (
                vec![
                    "label",
                    "--overwrite",
                    "pv/shared-db-pv",
                    "app.kubernetes.io/managed-by=other",
                ],
                r#"update of persistentvolumes "shared-db-pv""#,
            ),
            (
                vec!["delete", "pv/shared-db-pv", "--wait=false"],
                r#"delete of persistentvolumes "shared-db-pv""#,
            ),
            (
                vec![
                    "-n",
                    OTHER,
                    "patch",
                    "cm/shared-db-remote",
                    "--type=merge",
                    "-p",
                    r#"{"data":{"x":"y"}}"#,
                ],
                r#"update of configmaps "shared-db-remote""#,
            ),
            (
                vec!["-n", OTHER, "delete", "cm/shared-db-remote"],
                r#"delete of configmaps "shared-db-remote""#,
            ),
            (
                vec![
                    "annotate",
                    "clusterrole/foreign-role",
                    "meta.helm.sh/release-name=db",
                    "meta.helm.sh/release-namespace=shared",
                ],
                r#"update of clusterroles "foreign-role""#,
            ),
            (
                vec!["delete", "namespace", NS, "--wait=false"],
                r#"delete of namespaces "shared" (the release lives there)"#,
            ),
        ] {
            denied_wide(&kubectl(&b, who, &args), op_what);
        }
    }
    let smuggled = write_file(
        &b,
        "smuggled.yaml",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: \
         smuggled\n  annotations:\n    meta.helm.sh/release-name: db\n    \
         meta.helm.sh/release-namespace: shared\nrules: []\n",
    );
    denied_wide(
        &kubectl(&b, &ci, &["create", "-f", &smuggled]),
        r#"create of clusterroles "smuggled""#,
    );
    assert_eq!(
        wide_versions(&b, NS),
        before,
        "nothing may change under the freeze"
    );
    assert!(b.api.get("clusterroles", None, "smuggled").is_none());

    // Kubernetes' own components still write them (impersonated, as in the namespace).
    for (who, args) in [
        (
            "system:serviceaccount:kube-system:clusterrole-aggregation-controller",
            vec!["label", "clusterrole/shared-db-reader", "aggregated=yes"],
        ),
        (
            "system:serviceaccount:kube-system:persistent-volume-binder",
            vec![
                "annotate",
                "pv/shared-db-pv",
                "pv.kubernetes.io/bound-by-controller=yes",
            ],
        ),
        (
            "system:apiserver",
            vec![
                "annotate",
                "crd/widgets.db.shared.example.com",
                "checked=yes",
            ],
        ),
        (
            "system:serviceaccount:kube-system:namespace-controller",
            vec!["-n", OTHER, "annotate", "cm/shared-db-remote", "seen=yes"],
        ),
    ] {
        kubectl(&b, &Who::As(who, &["system:masters"]), &args)
            .expect_code(0, &format!("{args:?} as {who}"));
    }

    // Not the release's: release db of namespace elsewhere (same chart, same release
    // name), an unrelated ClusterRole with a similar name, a foreign object given another
    // release's annotations; deleting another namespace stays possible (listed above).
    for args in [
        vec!["label", "clusterrole/elsewhere-db-reader", "x=y"],
        vec!["label", "crd/widgets.db.elsewhere.example.com", "x=y"],
        vec!["label", "pv/elsewhere-db-pv", "x=y"],
        vec!["-n", OTHER, "label", "cm/elsewhere-db-remote", "x=y"],
        vec!["-n", OTHER, "label", "deploy/db-app", "x=y"],
        vec!["label", "clusterrole/shared-db-reader-2", "x=y"],
        vec![
            "annotate",
            "clusterrole/foreign-role",
            "meta.helm.sh/release-name=db",
            "meta.helm.sh/release-namespace=elsewhere",
        ],
        vec!["delete", "namespace", OTHER, "--dry-run=server"],
    ] {
        kubectl(&b, &ci, &args).expect_code(0, &format!("{args:?} (not the release's)"));
    }
    assert_ne!(wide_versions(&b, OTHER), others);

    // The lock's cluster-wide ConfigMap: no change by anyone; created and deleted only by
    // someone who may do so with ConfigMaps in the namespace it names.
    let param = "cm/guarded-upgrade-lock-shared.db";
    for who in [&Who::Admin, &ci, &not_exempt] {
        let run = kubectl(
            &b,
            who,
            &[
                "-n",
                "guarded-upgrade",
                "patch",
                param,
                "--type=merge",
                "-p",
                r#"{"data":{"release":"x"}}"#,
            ],
        );
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(
            run.stderr.contains("cannot be changed, only deleted"),
            "{}",
            run.stderr
        );
    }
    crate::common::grant(
        &b,
        CI,
        "carol",
        &[json!({"apiGroups": [""], "resources": ["configmaps"], "verbs": ["*"]})],
    );
    crate::common::wait_allowed(&b, "carol", CI, "create", "configmaps");
    let carol = Who::As("carol", &[]);
    let run = kubectl(&b, &carol, &["-n", "guarded-upgrade", "delete", param]);
    assert!(
        run.code == 1
            && run.stderr.contains(
                "deleting the cluster-wide part of the hard lock on release \"db\" in namespace \
                 \"shared\" needs the right to delete ConfigMaps in namespace \"shared\""
            ),
        "carol may not delete it: {}",
        run.stderr
    );
    let forged = |ns: &str, name: &str| {
        write_file(
            &b,
            "forged.yaml",
            &format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: \
                 guarded-upgrade\n  labels:\n    app.kubernetes.io/managed-by: guarded-upgrade\n    \
                 guarded-upgrade.io/hard-lock-wide: \"true\"\ndata:\n  namespace: {ns}\n  \
                 release: x\n  reason: \"\"\n  by: carol\n  since: \"2026-12-01T00:00:00Z\"\n"
            ),
        )
    };
    let run = kubectl(
        &b,
        &carol,
        &["create", "-f", &forged(NS, "guarded-upgrade-lock-shared.x")],
    );
    assert!(
        run.code == 1
            && run
                .stderr
                .contains("only `guarded-upgrade lock --hard` creates"),
        "carol may not create one for shared: {}",
        run.stderr
    );
    let run = kubectl(
        &b,
        &carol,
        &["create", "-f", &forged(CI, "guarded-upgrade-lock-shared.x")],
    );
    assert!(
        run.code == 1
            && run
                .stderr
                .contains("only `guarded-upgrade lock --hard` creates"),
        "a misnamed one is refused: {}",
        run.stderr
    );
    let own = forged(CI, "guarded-upgrade-lock-ci.x");
    kubectl(&b, &carol, &["create", "-f", &own]).expect_code(0, "carol's own, well-formed");
    kubectl(
        &b,
        &carol,
        &[
            "-n",
            "guarded-upgrade",
            "delete",
            "cm/guarded-upgrade-lock-ci.x",
        ],
    )
    .expect_code(0, "carol deletes her own");

    // Deleting it is allowed to those who may (that is unlock's first step): status then
    // says what is no longer frozen, and why; re-running lock --hard restores it.
    kubectl(&b, &ci, &["-n", "guarded-upgrade", "delete", param]).expect_code(0, "delete");
    let why = "no ConfigMap guarded-upgrade-lock-shared.db in namespace guarded-upgrade; run the \
               same `guarded-upgrade lock db --hard -n shared` (with the lock's reason) again to \
               restore it";
    let mut listed: Vec<String> = NOT_FROZEN.iter().map(|s| s.to_string()).collect();
    for (object, place) in [
        ("ClusterRole shared-db-reader", "cluster-scoped"),
        ("ClusterRoleBinding shared-db-reader", "cluster-scoped"),
        ("ConfigMap shared-db-remote", "in namespace \"elsewhere\""),
        (
            "CustomResourceDefinition widgets.db.shared.example.com",
            "cluster-scoped",
        ),
        ("PersistentVolume shared-db-pv", "cluster-scoped"),
        (
            "ValidatingWebhookConfiguration shared-db-webhook",
            "cluster-scoped",
        ),
    ] {
        listed.push(format!("{object} ({place}: {why})"));
    }
    listed.push(format!(
        "Namespace shared (deleting it deletes the release: {why})"
    ));
    listed.sort();
    let status = status_json(&b, &[]);
    assert_eq!(status["lock"]["enforcement"], "cluster policy", "{status}");
    assert_eq!(status["lock"]["not_frozen"], json!(listed), "{status}");
    let text = b.guard(&["status", "db", "-n", NS]);
    text.expect_code(0, "status");
    for o in &listed {
        text.assert_stdout_line(&format!("  not frozen {o}"));
    }
    kubectl(&b, &ci, &["label", "clusterrole/shared-db-reader", "x=y"])
        .expect_code(0, "not frozen without its ConfigMap");
    b.guard(&["lock", "db", "--hard", "--reason", "freeze", "-n", NS])
        .expect_code(0, "lock --hard again")
        .assert_stderr_line(ENFORCED);
    assert_eq!(
        status_json(&b, &[])["lock"]["not_frozen"],
        json!(NOT_FROZEN)
    );
    denied_wide(
        &kubectl(
            &b,
            &ci,
            &[
                "label",
                "--overwrite",
                "clusterrole/shared-db-reader",
                "x=z",
            ],
        ),
        r#"update of clusterroles "shared-db-reader""#,
    );

    // Unlocked, all of it changes again.
    b.guard(&["unlock", "db", "-n", NS])
        .expect_code(0, "unlock")
        .assert_stderr(&[r#"unlocked: release "db" in "shared""#]);
    assert!(b
        .api
        .get(
            "configmaps",
            Some("guarded-upgrade"),
            "guarded-upgrade-lock-shared.db"
        )
        .is_none());
    for args in [
        vec![
            "label",
            "--overwrite",
            "clusterrole/shared-db-reader",
            "x=z",
        ],
        vec!["label", "crd/widgets.db.shared.example.com", "x=y"],
        vec!["-n", OTHER, "label", "cm/shared-db-remote", "x=y"],
        vec!["delete", "namespace", NS, "--dry-run=server"],
    ] {
        kubectl(&b, &ci, &args).expect_code(0, &format!("{args:?} after unlock"));
    }
}

per_helm!(
    frozen_release_refuses_every_change,
    frozen_release_beyond_its_namespace,
    enforcement_is_claimed_only_after_a_probe,
);

/// helm's own ways around touch helm's behaviour: the oldest supported helm 3 and 4 too.
mod takeover {
    use super::helm_cannot_take_over_a_frozen_release;
    crate::common::per_helm_compat!(helm_cannot_take_over_a_frozen_release);
}

/// A two-replica Deployment `{release}-app` (pods labelled with the release and the chart
/// version), a ConfigMap `{release}-cache` and a one-replica StatefulSet `{release}-db`
/// (its pod labelled apart), chart `app` at `version`.
fn app_chart(b: &Bed, version: &str) -> String {
    let dir = b.home().join("charts").join(format!("app-{version}"));
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(
        dir.join("Chart.yaml"),
        format!("apiVersion: v2\nname: app\nversion: {version}\nappVersion: \"{version}\"\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("templates/objects.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ .Release.Name }}-app\n\
         spec:\n  replicas: 2\n  selector:\n    matchLabels:\n      \
         app.kubernetes.io/instance: {{ .Release.Name }}\n  template:\n    metadata:\n      \
         labels:\n        app.kubernetes.io/instance: {{ .Release.Name }}\n        \
         app.kubernetes.io/version: {{ .Chart.Version | quote }}\n    spec:\n      \
         terminationGracePeriodSeconds: 0\n      containers:\n        - name: app\n          \
         image: \"registry.invalid/app:{{ .Chart.Version }}\"\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cache\n\
         data:\n  version: {{ .Chart.Version | quote }}\n---\n\
         apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: {{ .Release.Name }}-db\n\
         spec:\n  replicas: 1\n  serviceName: {{ .Release.Name }}-db\n  selector:\n    \
         matchLabels:\n      app.kubernetes.io/component: {{ .Release.Name }}-db\n  \
         template:\n    metadata:\n      labels:\n        app.kubernetes.io/component: \
         {{ .Release.Name }}-db\n    spec:\n      terminationGracePeriodSeconds: 0\n      \
         containers:\n        - name: db\n          \
         image: \"registry.invalid/db:{{ .Chart.Version }}\"\n",
    )
    .unwrap();
    dir.to_string_lossy().into_owned()
}

/// Bounded waits of the running cluster (a rollout on a busy 2-core machine).
const ROLLOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// A guarded `upgrade --install --wait` of `release` to chart `app` `version`, succeeding.
fn guarded_upgrade(b: &Bed, label: &str, release: &str, version: &str) -> Run {
    let chart = app_chart(b, version);
    let wait = if crate::common::helm_major(label) == 3 {
        "--wait"
    } else {
        "--wait=watcher"
    };
    let run = b.guard(&[
        "upgrade",
        "--install",
        release,
        &chart,
        "-n",
        NS,
        wait,
        "--timeout",
        "3m",
    ]);
    run.expect_code(0, &format!("guarded upgrade --install {release} {version}"));
    run
}

/// Ready, not deleted pods of `release` (any version).
fn ready_pods(b: &Bed, release: &str) -> Vec<Value> {
    b.api
        .real()
        .pods(NS, &[("app.kubernetes.io/instance", release)])
        .into_iter()
        .filter(|p| {
            kube_testbed::Cluster::pod_ready(p) && p["metadata"]["deletionTimestamp"].is_null()
        })
        .collect()
}

fn name_of(o: &Value) -> String {
    o["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The ReplicaSets of Deployment `db-app` (owned by it).
fn replica_sets(b: &Bed) -> Vec<Value> {
    b.api
        .list("replicasets", Some(NS))
        .into_iter()
        .filter(|rs| {
            rs["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|o| o.iter().any(|r| r["name"] == "db-app"))
        })
        .collect()
}

/// Issue 25/26: a frozen release in a cluster whose controllers run
/// (kube-controller-manager, kube-scheduler, kwok). The freeze refuses people, not
/// Kubernetes: a deleted pod is replaced by the ReplicaSet controller and becomes Ready;
/// `kubectl scale` by the admin and by a CI ServiceAccount with edit rights is refused with
/// the policy's message while the same scale by the HPA controller's identity is allowed and
/// the deployment controller makes the (release-annotated) ReplicaSet follow; the garbage
/// collector deletes a release object whose owner was deleted; another release upgrades;
/// after `unlock` the release upgrades again.
fn frozen_release_in_a_running_cluster(label: &str) {
    let b = crate::common::bed_with_controllers(label);
    for ns in [NS, CI] {
        b.api.create_namespace(ns);
    }
    b.guard(&["policy", "install"])
        .expect_code(0, "policy install");
    guarded_upgrade(&b, label, "db", "1.0.0");
    guarded_upgrade(&b, label, "other", "1.0.0");
    let real = b.api.real();
    real.wait_rollout(NS, "db-app", ROLLOUT);
    real.wait_rollout(NS, "other-app", ROLLOUT);

    // A CI ServiceAccount of another namespace with edit rights in the release's namespace.
    b.api.put_object(
        "serviceaccounts",
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": "deployer", "namespace": CI}}),
    );
    b.api.put_object(
        "rolebindings",
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "ci-edit", "namespace": NS},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                           "name": "edit"},
               "subjects": [{"kind": "ServiceAccount", "name": "deployer", "namespace": CI}]}),
    );
    crate::common::wait_allowed(
        &b,
        "system:serviceaccount:ci:deployer",
        NS,
        "update",
        "apps/deployments",
    );
    let token = kubectl(&b, &Who::Admin, &["-n", CI, "create", "token", "deployer"]);
    token.expect_code(0, "kubectl create token");
    let ci = Who::Token(token.stdout.trim().to_string());

    // Before the lock: the release's ConfigMap gets an owner that is not the release's.
    kubectl(&b, &Who::Admin, &["-n", NS, "create", "configmap", "owner"])
        .expect_code(0, "owner ConfigMap");
    let owner = b.api.get("configmaps", Some(NS), "owner").unwrap();
    kubectl(
        &b,
        &Who::Admin,
        &[
            "-n",
            NS,
            "patch",
            "cm/db-cache",
            "--type=merge",
            "-p",
            &json!({"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap",
                "name": "owner", "uid": owner["metadata"]["uid"]}]}})
            .to_string(),
        ],
    )
    .expect_code(0, "owner reference");

    let lock = b.guard(&["lock", "db", "--hard", "--reason", "freeze", "-n", NS]);
    lock.expect_code(0, "lock --hard");
    lock.assert_stderr(&[
        r#"locked: release "db" in "shared" (hard): freeze"#,
        ENFORCED,
    ]);

    // (a) Pods carry no release annotations; a deleted one is replaced by the ReplicaSet
    // controller and becomes Ready.
    let pods = ready_pods(&b, "db");
    assert_eq!(pods.len(), 2, "{pods:?}");
    for p in &pods {
        let annotations = p["metadata"]["annotations"].as_object();
        assert!(
            annotations.is_none_or(|a| a.keys().all(|k| !k.starts_with("meta.helm.sh/"))),
            "a pod carries release annotations: {p}"
        );
    }
    let rs = replica_sets(&b);
    assert_eq!(rs.len(), 1, "{rs:?}");
    assert_eq!(
        rs[0]["metadata"]["annotations"]["meta.helm.sh/release-name"], "db",
        "the ReplicaSet carries the release's annotations (the freeze covers it): {}",
        rs[0]
    );
    let gone = name_of(&pods[0]);
    kubectl(
        &b,
        &Who::Admin,
        &["-n", NS, "delete", "pod", &gone, "--wait=false"],
    )
    .expect_code(0, "delete a pod of the frozen release");
    real.wait_until("a new Ready pod replacing the deleted one", ROLLOUT, || {
        let ready = ready_pods(&b, "db");
        ready.len() == 2 && ready.iter().all(|p| name_of(p) != gone)
    });

    // (a2) What the release's workloads control is frozen too, though it carries no
    // annotations: the ReplicaSet's scale (the deployment controller would put it back, but
    // a pod of it would run meanwhile), its pods, the StatefulSet's scale and pod, an
    // autoscaler aimed at the Deployment. Deleting a pod stays allowed (above).
    let rs = name_of(&replica_sets(&b)[0]);
    let pod = name_of(&ready_pods(&b, "db")[0]);
    let controlled = " (an object of the release controls it)";
    let (rs_arg, pod_arg) = (format!("rs/{rs}"), format!("pod/{pod}"));
    let hpa = hpa_file(&b, "db-app", "Deployment", "db-app");
    for who in [&Who::Admin, &ci] {
        for (args, op_what) in [
            (
                vec!["scale", rs_arg.as_str(), "--replicas=5"],
                format!(r#"update of replicasets/scale "{rs}""#),
            ),
            (
                vec!["label", pod_arg.as_str(), "x=y"],
                format!(r#"update of pods "{pod}"{controlled}"#),
            ),
            (
                vec![
                    "set",
                    "image",
                    pod_arg.as_str(),
                    "app=registry.invalid/evil:1",
                ],
                format!(r#"update of pods "{pod}"{controlled}"#),
            ),
            (
                vec!["scale", "sts/db-db", "--replicas=3"],
                r#"update of statefulsets/scale "db-db""#.to_string(),
            ),
            (
                vec!["annotate", "pod/db-db-0", "x=y"],
                format!(r#"update of pods "db-db-0"{controlled}"#),
            ),
            (
                vec!["create", "-f", hpa.as_str()],
                r#"create of horizontalpodautoscalers "db-app" (it would scale an object of the release)"#
                    .to_string(),
            ),
        ] {
            let mut full = vec!["-n", NS];
            full.extend(args.iter().copied());
            denied(&kubectl(&b, who, &full), &op_what);
        }
    }
    let rs_now = b.api.get("replicasets", Some(NS), &rs).unwrap();
    assert_eq!(rs_now["spec"]["replicas"], 2, "{rs_now}");
    assert!(b.api.list("horizontalpodautoscalers", Some(NS)).is_empty());

    // (b) Scaling: refused for people, allowed for the HPA controller's identity.
    let scale = |who: &Who, replicas: u32| {
        kubectl(
            &b,
            who,
            &[
                "-n",
                NS,
                "patch",
                "deployment/db-app",
                "--subresource=scale",
                "--type=merge",
                "-p",
                &format!(r#"{{"spec":{{"replicas":{replicas}}}}}"#),
            ],
        )
    };
    for who in [&Who::Admin, &ci] {
        denied(
            &kubectl(
                &b,
                who,
                &["-n", NS, "scale", "deployment/db-app", "--replicas=3"],
            ),
            r#"update of deployments/scale "db-app""#,
        );
        denied(&scale(who, 3), r#"update of deployments/scale "db-app""#);
    }
    assert_eq!(
        b.api.get("deployments", Some(NS), "db-app").unwrap()["spec"]["replicas"],
        2
    );
    // The HPA controller updates the scale subresource (its role may get and update
    // `*/scale`, not patch): a PUT of the Scale, the same request refused for the admin.
    let put_scale = |who: &Who, replicas: u64| {
        let file = write_file(
            &b,
            "scale.json",
            &json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
                    "metadata": {"name": "db-app", "namespace": NS},
                    "spec": {"replicas": replicas}})
            .to_string(),
        );
        kubectl(
            &b,
            who,
            &[
                "replace",
                "--raw",
                "/apis/apps/v1/namespaces/shared/deployments/db-app/scale",
                "-f",
                &file,
            ],
        )
    };
    let refused = put_scale(&Who::Admin, 3);
    assert!(
        refused.code != 0 && refused.stderr.contains("is hard-locked: freeze"),
        "the admin's PUT of the scale must be refused by the policy:\n{}",
        refused.stderr
    );
    let hpa = Who::As(
        "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
        &[],
    );
    for replicas in [3u64, 2] {
        put_scale(&hpa, replicas).expect_code(0, "scale by the HPA controller's identity");
        real.wait_until(
            &format!("the ReplicaSet and the Deployment's status at {replicas} Ready replicas"),
            ROLLOUT,
            || {
                let d = b.api.get("deployments", Some(NS), "db-app").unwrap();
                let rs = replica_sets(&b);
                rs.len() == 1
                    && rs[0]["spec"]["replicas"] == replicas
                    && rs[0]["status"]["readyReplicas"] == replicas
                    && d["status"]["readyReplicas"] == replicas
                    && d["status"]["replicas"] == replicas
                    && ready_pods(&b, "db").len() == replicas as usize
            },
        );
    }

    // (c) Garbage collection: deleting the owner (not the release's) of the release's
    // ConfigMap would have the collector delete it, so a person may not; deleted by a
    // system component, the collector deletes the ConfigMap it owned.
    denied(
        &kubectl(&b, &Who::Admin, &["-n", NS, "delete", "cm/db-cache"]),
        r#"delete of configmaps "db-cache""#,
    );
    for who in [&Who::Admin, &ci] {
        denied(
            &kubectl(&b, who, &["-n", NS, "delete", "cm/owner"]),
            r#"delete of configmaps "owner" (it owns an object of the release)"#,
        );
    }
    kubectl(
        &b,
        &Who::As(
            "system:serviceaccount:kube-system:generic-garbage-collector",
            &["system:masters"],
        ),
        &["-n", NS, "delete", "cm/owner"],
    )
    .expect_code(0, "delete owner");
    real.wait_until(
        "the garbage collector to delete ConfigMap db-cache",
        ROLLOUT,
        || b.api.get("configmaps", Some(NS), "db-cache").is_none(),
    );

    // (d) Another release in the namespace upgrades through the guard.
    guarded_upgrade(&b, label, "other", "1.1.0")
        .assert_stderr_line(r#"upgrade: "other" in "shared" 1.0.0 -> 1.1.0"#);
    assert_eq!(b.deployed("other", NS), ("1.1.0".to_string(), 2));
    real.wait_rollout(NS, "other-app", ROLLOUT);
    assert_eq!(b.deployed("db", NS), ("1.0.0".to_string(), 1));
    // Pods replaced, scaled by the HPA controller, an object collected: still the lock's
    // ConfigMap says what the release calls for, nothing unfrozen.
    let run = b.guard(&["status", "db", "-n", NS, "-o", "json"]);
    run.expect_code(0, "status");
    let status: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(status["lock"]["enforcement"], "cluster policy", "{status}");
    assert!(status["lock"]["not_frozen"].is_null(), "{status}");

    // Unlocked, the release upgrades normally again.
    b.guard(&["unlock", "db", "-n", NS])
        .expect_code(0, "unlock");
    guarded_upgrade(&b, label, "db", "1.1.0")
        .assert_stderr_line(r#"upgrade: "db" in "shared" 1.0.0 -> 1.1.0"#);
    assert_eq!(b.deployed("db", NS), ("1.1.0".to_string(), 2));
    real.wait_rollout(NS, "db-app", ROLLOUT);
    let ready = real.pods(
        NS,
        &[
            ("app.kubernetes.io/instance", "db"),
            ("app.kubernetes.io/version", "1.1.0"),
        ],
    );
    assert_eq!(
        ready
            .iter()
            .filter(|p| kube_testbed::Cluster::pod_ready(p))
            .count(),
        2,
        "{ready:?}"
    );
    assert!(b.api.get("configmaps", Some(NS), "db-cache").is_some());
}

/// The frozen release in a cluster whose controllers run (helm 3.21.4 and 4.3.2).
mod cluster {
    use super::frozen_release_in_a_running_cluster;
    crate::common::per_helm!(frozen_release_in_a_running_cluster);
}
