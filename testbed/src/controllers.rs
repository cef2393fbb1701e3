//! The cluster's controllers for one API server of the plane: kube-controller-manager and
//! kube-scheduler (built from the same `k8s.io/kubernetes` module as kube-apiserver) and
//! kwok, which plays the kubelet of one fake node, so that Deployments roll out, pods
//! become Ready, Jobs complete, and a pod can be made to fail on purpose.
//!
//! Each runs with an identity of its own, never the admin's:
//!
//! | process | authenticates as | rights |
//! |---|---|---|
//! | kube-controller-manager | client certificate `system:kube-controller-manager` | the bootstrap ClusterRole `system:kube-controller-manager`; with `--use-service-account-credentials` each controller acts as `system:serviceaccount:kube-system:<name>-controller` (bootstrap `system:controller:*` roles) |
//! | kube-scheduler | client certificate `system:kube-scheduler` | the bootstrap ClusterRoles `system:kube-scheduler`, `system:volume-scheduler` |
//! | kwok | client certificate `system:node:kwok-node-0` in group `system:nodes` (a kubelet's identity) | only the ClusterRole `kube-testbed:kwok` ([`kwok_rbac`]) |
//!
//! Started on demand, per API server ([`crate::cluster_with_controllers`]), and stopped
//! again when a test leases that server without them ([`crate::cluster`]).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::admin::Admin;
use crate::{bin_dir, Plane};

/// The fake node kwok manages on every server with controllers.
pub const NODE_NAME: &str = "kwok-node-0";

/// Pod label (on a pod template) that makes kwok's chaos stage
/// `pod-container-running-failed` fail the pod's containers (phase `Failed`, exit code 1)
/// about a second after it runs: a Job's pod fails, a Deployment's pods keep failing.
pub const FAIL_LABEL: &str = "pod-container-running-failed.stage.kwok.x-k8s.io";

/// Pod label (on a pod template) that makes the test bed's own kwok stage
/// `kube-testbed-pod-never-ready` run the pod without ever making it Ready (its containers
/// wait in `CrashLoopBackOff`): a rollout that never completes.
pub const NEVER_READY_LABEL: &str = "kube-testbed.guarded-upgrade.test/never-ready";

/// The label that keeps the test bed's own cluster-scoped objects (kwok's ClusterRole and
/// binding) through a reset.
pub(crate) const OWN_LABEL: (&str, &str) = ("app.kubernetes.io/managed-by", "kube-testbed");

/// The processes, in start order.
pub(crate) const PROCESSES: &[&str] = &["kube-controller-manager", "kube-scheduler", "kwok"];

/// How long the controllers may take to start (node Ready, a probe pod scheduled and
/// Ready, the `default` ServiceAccount made) on a busy 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// kwok's stage files (copied by `scripts/install-kube.sh` from kwok's module source), in
/// the order they are loaded.
const KWOK_STAGES: &[&str] = &[
    "node-initialize.yaml",
    "node-heartbeat.yaml",
    "pod-ready.yaml",
    "pod-complete.yaml",
    "pod-delete.yaml",
    "pod-container-running-failed.yaml",
];

/// The test bed's own stage: a pod labelled [`NEVER_READY_LABEL`] runs but never becomes
/// Ready. Weight 10000 beats `pod-ready` (weight 0), which matches the same pending pods.
const NEVER_READY_STAGE: &str = r#"apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: kube-testbed-pod-never-ready
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.labels["kube-testbed.guarded-upgrade.test/never-ready"]'
      operator: 'In'
      values:
      - 'true'
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values:
      - 'Pending'
  weight: 10000
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Initialized
      - lastTransitionTime: {{ $now | Quote }}
        status: "False"
        reason: ContainersNotReady
        type: Ready
      - lastTransitionTime: {{ $now | Quote }}
        status: "False"
        reason: ContainersNotReady
        type: ContainersReady
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: false
        restartCount: 0
        started: false
        state:
          waiting:
            reason: CrashLoopBackOff
            message: "kube-testbed: never ready (pod label kube-testbed.guarded-upgrade.test/never-ready)"
      {{ end }}
      hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
      podIP: {{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}
      phase: Running
      startTime: {{ $now | Quote }}
"#;

/// The binaries the controllers need, next to kube-apiserver: panics naming the install
/// script when one is missing.
fn check_binaries() -> PathBuf {
    let dir = bin_dir();
    for bin in PROCESSES {
        assert!(
            dir.join(bin).is_file(),
            "{bin} not found in {}; run scripts/install-kube.sh (it builds the controllers \
             from testbed/kube/go.mod and kwok from testbed/kwok/go.mod)",
            dir.display()
        );
    }
    for stage in KWOK_STAGES {
        assert!(
            dir.join("kwok-stages").join(stage).is_file(),
            "kwok stage {stage} not found in {}; run scripts/install-kube.sh",
            dir.join("kwok-stages").display()
        );
    }
    dir
}

/// kwok's RBAC: what a kubelet of one node does, nothing more (kwok's own deployment
/// grants a ServiceAccount the same core rules plus its CRDs, unused here).
pub(crate) fn kwok_rbac() -> (Value, Value) {
    let meta = |name: &str| json!({"name": name, "labels": {OWN_LABEL.0: OWN_LABEL.1}});
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": meta("kube-testbed:kwok"),
        "rules": [
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch", "patch", "update"]},
            {"apiGroups": [""], "resources": ["nodes/status", "pods/status"], "verbs": ["patch", "update"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "delete"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch", "update"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "list", "watch", "create", "update", "patch"]},
        ],
    });
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": meta("kube-testbed:kwok"),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kube-testbed:kwok"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": kwok_user()}],
    });
    (role, binding)
}

fn kwok_user() -> String {
    format!("system:node:{NODE_NAME}")
}

/// The fake node, as kwok expects it (kwok's own examples).
fn node() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE_NAME,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": NODE_NAME,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
        },
        "spec": {"providerID": format!("kwok://{NODE_NAME}")},
        "status": {
            "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
            "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
            "nodeInfo": {"kubeletVersion": "fake", "operatingSystem": "linux", "architecture": "amd64"},
            "phase": "Running",
        },
    })
}

/// Creates `obj` at `collection`, or replaces it when it exists.
fn apply(admin: &Admin, collection: &str, obj: &Value) -> Result<(), String> {
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    match admin.try_send("POST", collection, Some(obj)) {
        Ok((201, _)) => Ok(()),
        Ok((409, _)) => {
            let one = format!("{collection}/{name}");
            let current = admin.get(&one).unwrap_or(Value::Null);
            let mut obj = obj.clone();
            obj["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
            match admin.try_send("PUT", &one, Some(&obj)) {
                Ok((200, _)) => Ok(()),
                Ok((code, v)) => Err(format!("PUT {one}: {code} {v}")),
                Err(e) => Err(format!("PUT {one}: {e}")),
            }
        }
        Ok((code, v)) => Err(format!("POST {collection} ({name}): {code} {v}")),
        Err(e) => Err(format!("POST {collection} ({name}): {e}")),
    }
}

impl Plane {
    /// Writes the files every server's controllers share (kwok's stages) and the per-server
    /// kubeconfigs (client certificates of the three identities).
    fn controller_files(&self, i: usize) -> Result<(), String> {
        let dir = check_binaries();
        let d = self.dir.path();
        let stages = d.join("kwok-stages.yaml");
        if !stages.exists() {
            let mut text = String::new();
            for stage in KWOK_STAGES {
                let path = dir.join("kwok-stages").join(stage);
                let body = std::fs::read_to_string(&path)
                    .map_err(|e| format!("kube-testbed: read {}: {e}", path.display()))?;
                text.push_str("---\n");
                text.push_str(&body);
                if !body.ends_with('\n') {
                    text.push('\n');
                }
            }
            text.push_str("---\n");
            text.push_str(NEVER_READY_STAGE);
            std::fs::write(&stages, text)
                .map_err(|e| format!("kube-testbed: write {}: {e}", stages.display()))?;
        }
        for (name, user, groups) in [
            (
                "kube-controller-manager",
                "system:kube-controller-manager".to_string(),
                vec![],
            ),
            (
                "kube-scheduler",
                "system:kube-scheduler".to_string(),
                vec![],
            ),
            ("kwok", kwok_user(), vec!["system:nodes"]),
        ] {
            let path = controller_kubeconfig(self, name, i);
            if path.exists() {
                continue;
            }
            let cert = self.pki.client_cert(&user, &groups);
            std::fs::write(&path, self.kubeconfig_cert_text(i, &user, &cert))
                .map_err(|e| format!("kube-testbed: write {}: {e}", path.display()))?;
        }
        Ok(())
    }

    /// Starts the controllers of API server `i` and waits until they work: the fake node
    /// Ready and schedulable, a probe pod scheduled onto it and Ready (scheduler and kwok),
    /// the `default` ServiceAccount of `default` made (kube-controller-manager, through its
    /// own ServiceAccount credentials). On failure everything started is stopped again and
    /// the error names the binary and shows its last log lines.
    pub(crate) fn start_controllers(&self, i: usize) -> Result<(), String> {
        self.controller_files(i)?;
        let admin = self.testbed_admin(i);
        let (role, binding) = kwok_rbac();
        apply(
            &admin,
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            &role,
        )?;
        apply(
            &admin,
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            &binding,
        )?;
        match admin.try_send("POST", "/api/v1/nodes", Some(&node())) {
            Ok((201 | 409, _)) => {}
            Ok((code, v)) => {
                return Err(format!("kube-testbed: create node {NODE_NAME}: {code} {v}"))
            }
            Err(e) => return Err(format!("kube-testbed: create node {NODE_NAME}: {e}")),
        }
        let result = self
            .launch("kube-controller-manager", controller_manager_command, i)
            .and_then(|()| self.launch("kube-scheduler", scheduler_command, i))
            .and_then(|()| self.launch("kwok", kwok_command, i))
            .and_then(|()| self.wait_controllers(i, &admin));
        if result.is_err() {
            self.stop_controllers(i);
        }
        result
    }

    /// Stops the controllers of API server `i` (SIGKILL); what they made stays.
    pub(crate) fn stop_controllers(&self, i: usize) {
        for name in PROCESSES {
            self.kill(name, i);
        }
    }

    fn wait_controllers(&self, i: usize, admin: &Admin) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let probe_path = "/api/v1/namespaces/kube-system/pods/kube-testbed-probe";
        // A probe left by an earlier start would prove nothing.
        let _ = admin.try_send(
            "DELETE",
            &format!("{probe_path}?gracePeriodSeconds=0"),
            None,
        );
        let mut step = Step::NodeReady;
        loop {
            for name in PROCESSES {
                if self.exited(name, i) {
                    return Err(self.startup_failure(name, i, "exited while starting"));
                }
            }
            match step {
                Step::NodeReady => {
                    let node = admin.try_send("GET", &format!("/api/v1/nodes/{NODE_NAME}"), None);
                    if let Ok((200, n)) = node {
                        if node_schedulable(&n) {
                            step = Step::ProbeCreated;
                            continue;
                        }
                    }
                }
                Step::ProbeCreated => {
                    let probe = json!({
                        "apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": "kube-testbed-probe", "namespace": "kube-system"},
                        "spec": {
                            "automountServiceAccountToken": false,
                            "terminationGracePeriodSeconds": 0,
                            "containers": [{"name": "probe", "image": "registry.invalid/probe:1"}],
                        },
                    });
                    // Refused until kube-controller-manager made kube-system's ServiceAccount.
                    if let Ok((201 | 409, _)) =
                        admin.try_send("POST", "/api/v1/namespaces/kube-system/pods", Some(&probe))
                    {
                        step = Step::ProbeReady;
                        continue;
                    }
                }
                Step::ProbeReady => {
                    if let Ok((200, p)) = admin.try_send("GET", probe_path, None) {
                        if pod_ready(&p) {
                            let _ = admin.try_send(
                                "DELETE",
                                &format!("{probe_path}?gracePeriodSeconds=0"),
                                None,
                            );
                            step = Step::ServiceAccount;
                            continue;
                        }
                    }
                }
                Step::ServiceAccount => {
                    if let Ok((200, _)) = admin.try_send(
                        "GET",
                        "/api/v1/namespaces/default/serviceaccounts/default",
                        None,
                    ) {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                let (name, what) = step.blame();
                return Err(self.startup_failure(
                    name,
                    i,
                    &format!("{what} within {START_TIMEOUT:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[derive(Clone, Copy)]
enum Step {
    NodeReady,
    ProbeCreated,
    ProbeReady,
    ServiceAccount,
}

impl Step {
    /// The process whose log explains a step that never completed, and what did not happen.
    fn blame(self) -> (&'static str, String) {
        match self {
            Step::NodeReady => (
                "kwok",
                format!("did not make node {NODE_NAME} Ready and schedulable (kube-controller-manager removes the not-ready taint)"),
            ),
            Step::ProbeCreated => (
                "kube-controller-manager",
                "did not make the ServiceAccount kube-system/default (a probe pod was refused)".to_string(),
            ),
            Step::ProbeReady => (
                "kube-scheduler",
                format!("did not get the probe pod kube-system/kube-testbed-probe scheduled onto {NODE_NAME} and Ready (kwok)"),
            ),
            Step::ServiceAccount => (
                "kube-controller-manager",
                "did not make the ServiceAccount default/default".to_string(),
            ),
        }
    }
}

/// Ready, and without the taints that keep pods off a node that is not ready.
fn node_schedulable(node: &Value) -> bool {
    let ready = node["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    });
    let tainted = node["spec"]["taints"].as_array().is_some_and(|t| {
        t.iter().any(|t| {
            t["key"]
                .as_str()
                .is_some_and(|k| k.starts_with("node.kubernetes.io/"))
        })
    });
    ready && !tainted && node["spec"]["unschedulable"] != true
}

/// Whether a pod's `Ready` condition is `True`.
pub(crate) fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

fn controller_kubeconfig(plane: &Plane, name: &str, i: usize) -> PathBuf {
    plane.dir.path().join(format!("kubeconfig-{name}-{i}"))
}

fn controller_manager_command(plane: &Plane, i: usize) -> Command {
    let d = plane.dir.path();
    let mut cmd = Command::new(bin_dir().join("kube-controller-manager"));
    cmd.arg(format!(
        "--kubeconfig={}",
        controller_kubeconfig(plane, "kube-controller-manager", i).display()
    ))
    .arg("--leader-elect=false")
    .arg("--secure-port=0")
    // Each controller acts as its own ServiceAccount in kube-system, as in a real cluster.
    .arg("--use-service-account-credentials=true")
    .arg(format!(
        "--service-account-private-key-file={}",
        d.join("sa.key").display()
    ))
    .arg(format!("--root-ca-file={}", d.join("ca.crt").display()))
    // nodeipam needs a cluster CIDR; kwok gives pods their addresses itself.
    .arg("--controllers=*,-nodeipam")
    // kwok's heartbeat comes every 20-45 s; a node is never marked unknown in a test.
    .arg("--node-monitor-grace-period=10m")
    .arg("--profiling=false")
    .arg("--v=1");
    cmd
}

fn scheduler_command(plane: &Plane, i: usize) -> Command {
    let mut cmd = Command::new(bin_dir().join("kube-scheduler"));
    cmd.arg(format!(
        "--kubeconfig={}",
        controller_kubeconfig(plane, "kube-scheduler", i).display()
    ))
    .arg("--leader-elect=false")
    .arg("--secure-port=0")
    .arg("--profiling=false")
    .arg("--v=1");
    cmd
}

fn kwok_command(plane: &Plane, i: usize) -> Command {
    let mut cmd = Command::new(bin_dir().join("kwok"));
    cmd.arg(format!(
        "--kubeconfig={}",
        controller_kubeconfig(plane, "kwok", i).display()
    ))
    .arg(format!(
        "--config={}",
        plane.dir.path().join("kwok-stages.yaml").display()
    ))
    .arg("--manage-all-nodes=true")
    .arg("--cidr=10.244.0.0/16")
    .arg("--node-ip=127.0.0.1");
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_schedulable_only_when_ready_and_untainted() {
        let ready = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        assert!(node_schedulable(&ready));
        let mut tainted = ready.clone();
        tainted["spec"]["taints"] =
            json!([{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}]);
        assert!(!node_schedulable(&tainted));
        let not_ready = json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}});
        assert!(!node_schedulable(&not_ready));
    }

    #[test]
    fn kwok_is_bound_to_its_own_role_as_a_node() {
        let (role, binding) = kwok_rbac();
        assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
        assert_eq!(binding["subjects"][0]["name"], "system:node:kwok-node-0");
        let text = role.to_string();
        assert!(!text.contains("\"*\""), "no wildcard rights: {text}");
        assert!(!text.contains("secrets"), "{text}");
    }
}
