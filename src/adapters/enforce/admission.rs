//! Enforced hard locks: the cluster itself refuses changes to a hard-locked release.
//!
//! A cluster admin installs three ValidatingAdmissionPolicies with their bindings
//! (`guarded-upgrade policy install`, or `deploy/hard-lock-policy.yaml`, generated from
//! [`manifest_yaml`]). `lock --hard` switches them on for one release with two ConfigMaps,
//! its parameters; `unlock` deletes them first, before any record is rewritten:
//! - [`POLICY_NAME`], parameter `guarded-upgrade-lock-<release>` in the release's namespace
//!   (looked up in the request's namespace): in that namespace it refuses changes to the
//!   release's records, to every object carrying its annotations, the `scale` subresource
//!   of its scalable objects, the objects its workloads control, deleting the owners of its
//!   objects, autoscalers aimed at it, and edits of the parameter itself
//!   ([`super::scope`] finds the objects that carry no annotations);
//! - [`WIDE_POLICY_NAME`], parameter `guarded-upgrade-lock-<namespace>.<release>` in the
//!   namespace [`LOCKS_NAMESPACE`]: everywhere else (cluster-scoped objects, other
//!   namespaces) it refuses changes to objects carrying the release's annotations, and the
//!   deletion of the release's namespace — a per-namespace parameter cannot be looked up
//!   for a cluster-scoped request;
//! - [`PARAMS_POLICY_NAME`], no parameter: in [`LOCKS_NAMESPACE`], which every user may
//!   write to, only well-formed parameters may be created, by someone who may create
//!   ConfigMaps in the namespace they name (and deleted by someone who may delete them
//!   there); none may be changed.
//!
//! Each acts only through parameters carrying the tool's labels whose name matches the
//! release they name, so it cannot lock a release nobody locked with the tool; Kubernetes'
//! own components are exempt, so the cluster keeps running a frozen release.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Api, Client};
use serde_json::{json, Value};

pub use super::scope::{freeze_scope_of, Frozen};
use crate::adapters::cluster::ApiError;
use crate::core::chain::error_chain;
use crate::core::lock::Lock;
use crate::core::time::format_rfc3339;

/// Name of the policy (and its binding) acting in the release's namespace.
pub const POLICY_NAME: &str = "guarded-upgrade-hard-lock";
/// Name of the policy (and its binding) acting outside the release's namespace.
pub const WIDE_POLICY_NAME: &str = "guarded-upgrade-hard-lock-wide";
/// Name of the policy (and its binding) guarding the cluster-wide parameters.
pub const PARAMS_POLICY_NAME: &str = "guarded-upgrade-hard-lock-params";
/// The three policies, in the order they are installed.
pub const POLICY_NAMES: [&str; 3] = [POLICY_NAME, WIDE_POLICY_NAME, PARAMS_POLICY_NAME];
/// ClusterRole (and binding) that lets every authenticated user read the policies, so that
/// `lock --hard` and `status` can tell whether the cluster enforces locks.
pub const READER_NAME: &str = "guarded-upgrade-hard-lock-reader";
/// The namespace of the cluster-wide parameters (made by `policy install`).
pub const LOCKS_NAMESPACE: &str = "guarded-upgrade";
/// Role (and binding) in [`LOCKS_NAMESPACE`] that lets every authenticated user create,
/// read and delete parameters there ([`PARAMS_POLICY_NAME`] narrows it to their own).
pub const LOCKS_ROLE: &str = "guarded-upgrade-locks";
/// Version of the policies' rules; an installed policy older than this is re-installed.
pub const POLICY_VERSION: u32 = 3;
/// Annotation carrying [`POLICY_VERSION`] on the installed policies.
const VERSION_ANNOTATION: &str = "guarded-upgrade.io/policy-version";
/// Prefix of the parameters' names: `guarded-upgrade-lock-<release>` in the release's
/// namespace, `guarded-upgrade-lock-<namespace>.<release>` in [`LOCKS_NAMESPACE`].
pub const PARAM_PREFIX: &str = "guarded-upgrade-lock-";
/// Labels every parameter carries; the bindings select parameters by them.
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "guarded-upgrade");
const PARAM_LABEL: (&str, &str) = ("guarded-upgrade.io/hard-lock", "true");
const WIDE_LABEL: (&str, &str) = ("guarded-upgrade.io/hard-lock-wide", "true");
/// The data keys of the cluster-wide parameter (nothing else is allowed there).
pub const WIDE_KEYS: [&str; 5] = ["by", "namespace", "reason", "release", "since"];
/// Field manager of the tool's writes.
const FIELD_MANAGER: &str = "guarded-upgrade";

/// The parameter ConfigMap's name for `release` (in its namespace).
pub fn param_name(release: &str) -> String {
    format!("{PARAM_PREFIX}{release}")
}

/// The cluster-wide parameter's name for `release` in `namespace` (in [`LOCKS_NAMESPACE`]).
/// Namespace names have no dot, so the name is unambiguous.
pub fn wide_param_name(namespace: &str, release: &str) -> String {
    format!("{PARAM_PREFIX}{namespace}.{release}")
}

/// How a lock is enforced, as `status` and `locks` say it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Enforcement {
    /// The API server refuses changes (ValidatingAdmissionPolicy).
    #[serde(rename = "cluster policy")]
    ClusterPolicy,
    /// PostgreSQL refuses changes to the release's rows (`HELM_DRIVER=sql`: a trigger on
    /// `releases_v1`).
    #[serde(rename = "database trigger")]
    DatabaseTrigger,
    /// Only the labels (and, for a hard lock, helm's pending status) stand in the way.
    #[serde(rename = "labels only")]
    LabelsOnly,
}

impl Enforcement {
    /// The words used in text output and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Enforcement::ClusterPolicy => "cluster policy",
            Enforcement::DatabaseTrigger => "database trigger",
            Enforcement::LabelsOnly => "labels only",
        }
    }
}

// ---------------------------------------------------------------------------------------
// The manifest: one source for `policy install`, `policy manifest` and the committed file.
// ---------------------------------------------------------------------------------------

/// Identities the policy leaves alone: Kubernetes' own components, so that the cluster keeps
/// running a frozen release (docs/locks.md, "Who is exempt"). Users: kube-controller-manager
/// without `--use-service-account-credentials`, the scheduler, and kube-apiserver's own
/// loopback client.
pub const EXEMPT_USERS: &[&str] = &[
    "system:kube-controller-manager",
    "system:kube-scheduler",
    "system:apiserver",
];
/// Groups the policy leaves alone: the kubelets (`system:node:<name>`).
pub const EXEMPT_GROUPS: &[&str] = &["system:nodes"];
/// kube-controller-manager's controllers with `--use-service-account-credentials`: each runs
/// as `system:serviceaccount:kube-system:<name>` (the names of upstream's bootstrap RBAC
/// policy, `system:controller:<name>`). A service account of another namespace, or another
/// name in kube-system, is not exempt.
pub const EXEMPT_CONTROLLERS: &[&str] = &[
    "attachdetach-controller",
    "certificate-controller",
    "clusterrole-aggregation-controller",
    "cronjob-controller",
    "daemon-set-controller",
    "deployment-controller",
    "disruption-controller",
    "endpoint-controller",
    "endpointslice-controller",
    "endpointslicemirroring-controller",
    "ephemeral-volume-controller",
    "expand-controller",
    "generic-garbage-collector",
    "horizontal-pod-autoscaler",
    "job-controller",
    "namespace-controller",
    "node-controller",
    "persistent-volume-binder",
    "pod-garbage-collector",
    "pv-protection-controller",
    "pvc-protection-controller",
    "replicaset-controller",
    "replication-controller",
    "resourcequota-controller",
    "root-ca-cert-publisher",
    "route-controller",
    "service-account-controller",
    "service-controller",
    "statefulset-controller",
    "ttl-after-finished-controller",
    "ttl-controller",
];

/// Every exempt user name: [`EXEMPT_USERS`] and the controllers' service accounts.
pub fn exempt_usernames() -> Vec<String> {
    EXEMPT_USERS
        .iter()
        .map(|u| u.to_string())
        .chain(
            EXEMPT_CONTROLLERS
                .iter()
                .map(|c| format!("system:serviceaccount:kube-system:{c}")),
        )
        .collect()
}

/// A CEL list literal of strings.
fn cel_list<S: AsRef<str>>(items: &[S]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("'{}'", s.as_ref())).collect();
    format!("[{}]", quoted.join(", "))
}

/// The policies' match condition: the request is not by a Kubernetes system component.
fn not_a_system_component() -> Value {
    json!({
        "name": "not-a-system-component",
        "expression": format!(
            "!((has(request.userInfo.username) && request.userInfo.username in {}) || \
             (has(request.userInfo.groups) && request.userInfo.groups.exists(g, g in {})))",
            cel_list(&exempt_usernames()),
            cel_list(EXEMPT_GROUPS)
        ),
    })
}

/// `obj` is a record (Secret/ConfigMap) whose labels name the locked release.
fn record_of(obj: &str) -> String {
    format!(
        "variables.recordKind && {obj} != null && has({obj}.metadata.labels) && \
         'owner' in {obj}.metadata.labels && {obj}.metadata.labels['owner'] == 'helm' && \
         'name' in {obj}.metadata.labels && {obj}.metadata.labels['name'] == variables.release"
    )
}

/// `obj` carries the locked release's ownership annotations (helm's
/// `meta.helm.sh/release-name` and `…/release-namespace`; `home`: the CEL expression of the
/// release's namespace).
fn release_object(obj: &str, home: &str) -> String {
    format!(
        "{obj} != null && has({obj}.metadata) && has({obj}.metadata.annotations) && \
         'meta.helm.sh/release-name' in {obj}.metadata.annotations && \
         {obj}.metadata.annotations['meta.helm.sh/release-name'] == variables.release && \
         'meta.helm.sh/release-namespace' in {obj}.metadata.annotations && \
         {obj}.metadata.annotations['meta.helm.sh/release-namespace'] == {home}"
    )
}

/// `obj`'s uid is listed under `prefix` in the parameter ([`super::scope`]).
fn uid_listed(obj: &str, prefix: &str) -> String {
    format!(
        "{obj} != null && has({obj}.metadata) && has({obj}.metadata.uid) && \
         ('{prefix}' + {obj}.metadata.uid) in params.data"
    )
}

/// `obj` is controlled (owner reference with `controller: true`) by an object the parameter
/// lists under [`super::scope::OWNER`].
fn controlled(obj: &str) -> String {
    format!(
        "{obj} != null && has({obj}.metadata) && has({obj}.metadata.ownerReferences) && \
         {obj}.metadata.ownerReferences.exists(r, has(r.controller) && r.controller && \
         ('{}' + r.uid) in params.data)",
        super::scope::OWNER
    )
}

/// Metadata fields an update may change and still count as "finalizers only".
const FINALIZER_ONLY_FIELDS: &[&str] = &["finalizers", "managedFields", "resourceVersion"];

/// The update changes the object's finalizers and nothing else (an operator adding or
/// removing its finalizer): every top-level field but `metadata` equal, every metadata field
/// but the finalizers (and the server's bookkeeping) equal, the finalizers not.
fn finalizers_only() -> String {
    let skip = cel_list(FINALIZER_ONLY_FIELDS);
    format!(
        "request.operation == 'UPDATE' && variables.subresource == '' && \
         object != null && oldObject != null && \
         (has(object.metadata.finalizers) ? object.metadata.finalizers : []) != \
         (has(oldObject.metadata.finalizers) ? oldObject.metadata.finalizers : []) && \
         dyn(object).all(k, k == 'metadata' || (k in dyn(oldObject) && dyn(object)[k] == dyn(oldObject)[k])) && \
         dyn(oldObject).all(k, k == 'metadata' || k in dyn(object)) && \
         dyn(object.metadata).all(k, k in {skip} || (k in dyn(oldObject.metadata) && \
         dyn(object.metadata)[k] == dyn(oldObject.metadata)[k])) && \
         dyn(oldObject.metadata).all(k, k in {skip} || k in dyn(object.metadata))"
    )
}

/// A CEL variable.
fn var(name: &str, expression: impl Into<String>) -> Value {
    json!({ "name": name, "expression": expression.into() })
}

/// The variables every policy acting through a parameter shares: `name`, `subresource`,
/// `mine` (the parameter is the tool's and names the release it is named for; `named`: the
/// CEL expression of the name it must have) and `finalizersOnly`.
fn common_variables(named: &str, label: (&str, &str)) -> Vec<Value> {
    let (mk, mv) = MANAGED_BY;
    let (pk, pv) = label;
    vec![
        var(
            "mine",
            format!(
                "variables.release != '' && params.metadata.name == {named} && \
                 has(params.metadata.labels) && '{mk}' in params.metadata.labels && \
                 params.metadata.labels['{mk}'] == '{mv}' && '{pk}' in params.metadata.labels && \
                 params.metadata.labels['{pk}'] == '{pv}'"
            ),
        ),
        var("name", "has(request.name) ? request.name : ''"),
        var(
            "subresource",
            "has(request.subResource) ? request.subResource : ''",
        ),
        var("finalizersOnly", finalizers_only()),
    ]
}

/// The denial's message (`home`: the CEL expression of the release's namespace).
fn message(home: &str) -> String {
    let what = "request.operation.lowerAscii() + ' of ' + request.resource.resource + \
                (variables.subresource != '' ? '/' + variables.subresource : '') + ' \"' + variables.name + '\"'";
    [
        format!("'release \"' + variables.release + '\" in namespace \"' + {home} + '\" is hard-locked'"),
        "(has(params.data.reason) && params.data.reason != '' ? ': ' + params.data.reason : '')".to_string(),
        "' (locked by ' + (has(params.data.by) && params.data.by != '' ? params.data.by : 'unknown') + ' since ' + (has(params.data.since) ? params.data.since : 'unknown') + ')'".to_string(),
        format!("'; ' + {what} + variables.why + ' refused by guarded-upgrade'"),
        format!(
            "(variables.lockParam ? '. The lock\\'s ConfigMap cannot be changed, only deleted, which lifts the enforcement; to change the lock run: guarded-upgrade lock ' + variables.release + ' --hard -n ' + {home} \
             : '. To change the release, first run: guarded-upgrade unlock ' + variables.release + ' -n ' + {home})"
        ),
    ]
    .join(" + ")
}

/// `lockParam`: an update of the parameter itself (data, labels).
fn lock_param() -> Value {
    var(
        "lockParam",
        "request.operation == 'UPDATE' && request.resource.group == '' && \
         request.resource.resource == 'configmaps' && variables.subresource == '' && \
         request.namespace == params.metadata.namespace && variables.name == params.metadata.name",
    )
}

/// A policy acting through ConfigMap parameters.
fn param_policy(
    name: &str,
    rules: Value,
    variables: Vec<Value>,
    validation: &str,
    home: &str,
) -> Value {
    let (mk, mv) = MANAGED_BY;
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {
            "name": name,
            "labels": { mk: mv },
            "annotations": { VERSION_ANNOTATION: POLICY_VERSION.to_string() },
        },
        "spec": {
            "failurePolicy": "Fail",
            "paramKind": { "apiVersion": "v1", "kind": "ConfigMap" },
            "matchConstraints": { "resourceRules": rules },
            "matchConditions": [not_a_system_component()],
            "variables": variables,
            "validations": [
                {
                    "expression": validation,
                    "messageExpression": message(home),
                    "message": "the release is hard-locked by guarded-upgrade; run `guarded-upgrade unlock RELEASE -n NAMESPACE` first",
                    "reason": "Forbidden",
                },
            ],
        },
    })
}

/// The policy acting in the release's namespace ([`POLICY_NAME`]).
fn policy_object() -> Value {
    use super::scope::{EVICT, OWNS, SCALE, TARGET};
    let mut variables = vec![var(
        "release",
        "has(params.data) && 'release' in params.data ? params.data.release : ''",
    )];
    variables.extend(common_variables(
        &format!("'{PARAM_PREFIX}' + variables.release"),
        PARAM_LABEL,
    ));
    variables.extend([
        var(
            "recordKind",
            "request.resource.group == '' && variables.subresource == '' && \
             (request.resource.resource == 'secrets' || request.resource.resource == 'configmaps')",
        ),
        var(
            "newRecord",
            format!("request.operation != 'DELETE' && {}", record_of("object")),
        ),
        var(
            "oldRecord",
            format!("request.operation != 'CREATE' && {}", record_of("oldObject")),
        ),
        var(
            "newOwned",
            format!(
                "request.operation != 'DELETE' && {}",
                release_object("object", "request.namespace")
            ),
        ),
        var(
            "oldOwned",
            format!(
                "request.operation != 'CREATE' && {}",
                release_object("oldObject", "request.namespace")
            ),
        ),
        var(
            "scaled",
            format!(
                "variables.subresource == 'scale' && (({}) || ({}))",
                uid_listed("object", SCALE),
                uid_listed("oldObject", SCALE)
            ),
        ),
        var(
            "child",
            format!(
                "((request.operation != 'DELETE' && {}) || (request.operation != 'CREATE' && {})) && \
                 !(request.operation == 'DELETE' && request.resource.group == '' && \
                 request.resource.resource == 'pods')",
                controlled("object"),
                controlled("oldObject")
            ),
        ),
        var(
            "ownerDeleted",
            format!(
                "request.operation == 'DELETE' && variables.subresource == '' && {}",
                uid_listed("oldObject", OWNS)
            ),
        ),
        var(
            "autoscaler",
            format!(
                "request.operation != 'DELETE' && request.resource.group == 'autoscaling' && \
                 request.resource.resource == 'horizontalpodautoscalers' && \
                 variables.subresource == '' && object != null && has(object.spec) && \
                 has(object.spec.scaleTargetRef) && ('{TARGET}' + object.spec.scaleTargetRef.kind + \
                 '.' + object.spec.scaleTargetRef.name) in params.data"
            ),
        ),
        var(
            "evicted",
            format!(
                "request.operation == 'CREATE' && request.resource.group == '' && \
                 request.resource.resource == 'pods' && variables.subresource == 'eviction' && \
                 ('{EVICT}' + variables.name) in params.data"
            ),
        ),
        lock_param(),
        var(
            "why",
            "variables.newRecord || variables.oldRecord || variables.newOwned || \
             variables.oldOwned || variables.scaled || variables.evicted || variables.lockParam ? '' : \
             variables.ownerDeleted ? ' (it owns an object of the release)' : \
             variables.autoscaler ? ' (it would scale an object of the release)' : \
             ' (an object of the release controls it)'",
        ),
    ]);
    param_policy(
        POLICY_NAME,
        json!([{
            "apiGroups": ["*"],
            "apiVersions": ["*"],
            "resources": ["*", "*/scale", "pods/resize", "pods/eviction"],
            "operations": ["CREATE", "UPDATE", "DELETE"],
            "scope": "Namespaced",
        }]),
        variables,
        "!variables.mine || !(variables.newRecord || variables.oldRecord || \
         variables.newOwned || variables.oldOwned || variables.scaled || variables.child || \
         variables.ownerDeleted || variables.autoscaler || variables.evicted || \
         variables.lockParam) || \
         (!variables.lockParam && variables.finalizersOnly)",
        "request.namespace",
    )
}

/// The policy acting outside the release's namespace ([`WIDE_POLICY_NAME`]): its
/// parameters live in [`LOCKS_NAMESPACE`] and name the release's namespace.
fn wide_policy_object() -> Value {
    let mut variables = vec![
        var(
            "release",
            "has(params.data) && 'release' in params.data ? params.data.release : ''",
        ),
        var(
            "home",
            "has(params.data) && 'namespace' in params.data ? params.data['namespace'] : ''",
        ),
    ];
    variables.extend(common_variables(
        &format!("'{PARAM_PREFIX}' + variables.home + '.' + variables.release"),
        WIDE_LABEL,
    ));
    variables.extend([
        var(
            "elsewhere",
            "variables.home != '' && (!has(request.namespace) || request.namespace != variables.home)",
        ),
        var(
            "newOwned",
            format!(
                "request.operation != 'DELETE' && {}",
                release_object("object", "variables.home")
            ),
        ),
        var(
            "oldOwned",
            format!(
                "request.operation != 'CREATE' && {}",
                release_object("oldObject", "variables.home")
            ),
        ),
        var(
            "homeDeleted",
            "request.operation == 'DELETE' && request.resource.group == '' && \
             request.resource.resource == 'namespaces' && variables.subresource == '' && \
             variables.name == variables.home",
        ),
        lock_param(),
        var(
            "why",
            "variables.homeDeleted ? ' (the release lives there)' : ''",
        ),
    ]);
    param_policy(
        WIDE_POLICY_NAME,
        json!([{
            "apiGroups": ["*"],
            "apiVersions": ["*"],
            "resources": ["*"],
            "operations": ["CREATE", "UPDATE", "DELETE"],
            "scope": "*",
        }]),
        variables,
        "!variables.mine || !((variables.elsewhere && (variables.newOwned || variables.oldOwned)) || \
         variables.homeDeleted || variables.lockParam) || \
         (!variables.lockParam && !variables.homeDeleted && variables.finalizersOnly)",
        "variables.home",
    )
}

/// The policy guarding the cluster-wide parameters ([`PARAMS_POLICY_NAME`]): no parameter.
fn params_policy_object() -> Value {
    let (mk, mv) = MANAGED_BY;
    let (wk, wv) = WIDE_LABEL;
    let keys = cel_list(&WIDE_KEYS);
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {
            "name": PARAMS_POLICY_NAME,
            "labels": { mk: mv },
            "annotations": { VERSION_ANNOTATION: POLICY_VERSION.to_string() },
        },
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "namespaceSelector": {
                    "matchLabels": { "kubernetes.io/metadata.name": LOCKS_NAMESPACE },
                },
                "resourceRules": [{
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "resources": ["configmaps"],
                    "operations": ["CREATE", "UPDATE", "DELETE"],
                    "scope": "Namespaced",
                }],
            },
            "matchConditions": [not_a_system_component()],
            "variables": [
                var("obj", "request.operation == 'DELETE' ? oldObject : object"),
                var(
                    "home",
                    "has(variables.obj.data) && 'namespace' in variables.obj.data ? variables.obj.data['namespace'] : ''",
                ),
                var(
                    "release",
                    "has(variables.obj.data) && 'release' in variables.obj.data ? variables.obj.data['release'] : ''",
                ),
                var(
                    "wellFormed",
                    format!(
                        "variables.home != '' && variables.release != '' && \
                         variables.obj.metadata.name == '{PARAM_PREFIX}' + variables.home + '.' + variables.release && \
                         has(variables.obj.metadata.labels) && \
                         '{mk}' in variables.obj.metadata.labels && variables.obj.metadata.labels['{mk}'] == '{mv}' && \
                         '{wk}' in variables.obj.metadata.labels && variables.obj.metadata.labels['{wk}'] == '{wv}' && \
                         variables.obj.data.all(k, k in {keys}) && !has(variables.obj.binaryData)"
                    ),
                ),
            ],
            "validations": [
                {
                    "expression": "request.operation != 'CREATE' || (variables.wellFormed && \
                         authorizer.group('').resource('configmaps').namespace(variables.home).check('create').allowed())",
                    "message": format!(
                        "only `guarded-upgrade lock --hard` creates ConfigMaps in namespace {LOCKS_NAMESPACE}: \
                         {PARAM_PREFIX}NAMESPACE.RELEASE with the tool's labels and data {}, by someone who \
                         may create ConfigMaps in NAMESPACE",
                        WIDE_KEYS.join(", ")
                    ),
                    "reason": "Forbidden",
                },
                {
                    "expression": "request.operation != 'DELETE' || !variables.wellFormed || \
                         authorizer.group('').resource('configmaps').namespace(variables.home).check('delete').allowed()",
                    "messageExpression": "'deleting the cluster-wide part of the hard lock on release \"' + variables.release + \
                         '\" in namespace \"' + variables.home + '\" needs the right to delete ConfigMaps in namespace \"' + \
                         variables.home + '\"; run: guarded-upgrade unlock ' + variables.release + ' -n ' + variables.home",
                    "message": "deleting a hard lock's cluster-wide ConfigMap needs the right to delete ConfigMaps in the release's namespace",
                    "reason": "Forbidden",
                },
                {
                    "expression": "request.operation != 'UPDATE' || (has(request.dryRun) && request.dryRun)",
                    "message": "a hard lock's cluster-wide ConfigMap cannot be changed, only deleted (guarded-upgrade unlock)",
                    "reason": "Forbidden",
                },
            ],
        },
    })
}

/// A binding of `policy`, denying.
fn binding(policy: &str, param_ref: Option<Value>) -> Value {
    let (mk, mv) = MANAGED_BY;
    let mut spec = json!({ "policyName": policy, "validationActions": ["Deny"] });
    if let Some(param_ref) = param_ref {
        spec["paramRef"] = param_ref;
    }
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": { "name": policy, "labels": { mk: mv } },
        "spec": spec,
    })
}

/// The binding of [`POLICY_NAME`]: every namespace, parameters found by the tool's labels
/// in the request's namespace, no parameter = nothing locked there.
fn binding_object() -> Value {
    let (mk, mv) = MANAGED_BY;
    let (pk, pv) = PARAM_LABEL;
    binding(
        POLICY_NAME,
        Some(json!({
            "selector": { "matchLabels": { mk: mv, pk: pv } },
            "parameterNotFoundAction": "Allow",
        })),
    )
}

/// The binding of [`WIDE_POLICY_NAME`]: every request, each cluster-wide parameter.
fn wide_binding_object() -> Value {
    let (mk, mv) = MANAGED_BY;
    let (wk, wv) = WIDE_LABEL;
    binding(
        WIDE_POLICY_NAME,
        Some(json!({
            "namespace": LOCKS_NAMESPACE,
            "selector": { "matchLabels": { mk: mv, wk: wv } },
            "parameterNotFoundAction": "Allow",
        })),
    )
}

/// Read access to the policies and their bindings for every authenticated user.
fn reader_objects() -> [Value; 2] {
    let (mk, mv) = MANAGED_BY;
    [
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": { "name": READER_NAME, "labels": { mk: mv } },
            "rules": [{
                "apiGroups": ["admissionregistration.k8s.io"],
                "resources": ["validatingadmissionpolicies", "validatingadmissionpolicybindings"],
                "resourceNames": POLICY_NAMES,
                "verbs": ["get"],
            }],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": { "name": READER_NAME, "labels": { mk: mv } },
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": READER_NAME,
            },
            "subjects": [{
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Group",
                "name": "system:authenticated",
            }],
        }),
    ]
}

/// The namespace of the cluster-wide parameters, and the Role that lets every
/// authenticated user create, read and delete ConfigMaps there (`patch` only for the
/// dry-run probe; [`PARAMS_POLICY_NAME`] refuses real changes).
fn locks_namespace_objects() -> [Value; 3] {
    let (mk, mv) = MANAGED_BY;
    [
        json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": { "name": LOCKS_NAMESPACE, "labels": { mk: mv } },
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": { "name": LOCKS_ROLE, "namespace": LOCKS_NAMESPACE, "labels": { mk: mv } },
            "rules": [{
                "apiGroups": [""],
                "resources": ["configmaps"],
                "verbs": ["get", "create", "delete", "patch"],
            }],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": { "name": LOCKS_ROLE, "namespace": LOCKS_NAMESPACE, "labels": { mk: mv } },
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": LOCKS_ROLE,
            },
            "subjects": [{
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Group",
                "name": "system:authenticated",
            }],
        }),
    ]
}

/// Every object `policy install` applies, in order: the namespace, then the policy that
/// guards the parameters in it before the Role that lets every user write there (else,
/// for a moment, anyone could create a well-formed-looking parameter freezing any
/// namespace, and it would stay: the guard checks creations only), then the other roles,
/// each policy right before its binding.
pub fn manifest_objects() -> Vec<Value> {
    let [namespace, role, role_binding] = locks_namespace_objects();
    let [reader, reader_binding] = reader_objects();
    vec![
        namespace,
        params_policy_object(),
        binding(PARAMS_POLICY_NAME, None),
        role,
        role_binding,
        reader,
        reader_binding,
        policy_object(),
        binding_object(),
        wide_policy_object(),
        wide_binding_object(),
    ]
}

/// The manifest as YAML: what `policy manifest` prints and `deploy/hard-lock-policy.yaml`
/// holds.
pub fn manifest_yaml() -> String {
    let mut out = String::from(
        "# guarded-upgrade: enforced hard locks (docs/locks.md).\n\
         # Generated by `guarded-upgrade policy manifest`; `guarded-upgrade policy install`\n\
         # applies exactly these objects. Needs Kubernetes >= 1.30 (admissionregistration.k8s.io/v1).\n",
    );
    for object in manifest_objects() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&object).expect("the manifest serialises"));
    }
    out
}

// ---------------------------------------------------------------------------------------
// What the cluster offers: the policies installed, and the right to create parameters.
// ---------------------------------------------------------------------------------------

/// Whether this cluster can enforce a hard lock in a namespace, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Availability {
    /// The policies are installed and the user may create and delete parameters.
    Ready,
    /// Not possible; the text says why and what to do.
    Unavailable(String),
}

/// A failed request, said in one line.
fn said(e: kube::Error) -> (Option<u16>, String) {
    let e = ApiError::from(e);
    (e.code(), error_chain(&e))
}

const NOT_SERVED: &str = "this API server does not serve ValidatingAdmissionPolicy \
                          (admissionregistration.k8s.io/v1, Kubernetes 1.30 or later)";

/// Checks the policies and their bindings are installed and current (no writes).
pub async fn policy_state(client: &Client) -> Result<(), String> {
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    let install =
        "a cluster admin installs it with `guarded-upgrade policy install` (see docs/locks.md)";
    for name in POLICY_NAMES {
        let policy = match policies.get_opt(name).await {
            Ok(Some(p)) => p,
            Ok(None) => {
                return Err(match served(client).await {
                    Some(false) => NOT_SERVED.to_string(),
                    _ => {
                        format!("the ValidatingAdmissionPolicy {name} is not installed; {install}")
                    }
                })
            }
            Err(e) => {
                let (code, text) = said(e);
                return Err(match code {
                    Some(404) => NOT_SERVED.to_string(),
                    _ => format!(
                        "cannot read the ValidatingAdmissionPolicy {name} ({text}); {install}, \
                         which also lets every user read it"
                    ),
                });
            }
        };
        let version = policy
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(VERSION_ANNOTATION))
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0);
        if version < POLICY_VERSION {
            return Err(format!(
                "the installed ValidatingAdmissionPolicy {name} is version {version}, this \
                 guarded-upgrade needs version {POLICY_VERSION}; a cluster admin re-runs \
                 `guarded-upgrade policy install`"
            ));
        }
        match bindings.get_opt(name).await {
            Ok(Some(b)) => {
                let denies = b
                    .spec
                    .as_ref()
                    .and_then(|s| s.validation_actions.as_ref())
                    .is_some_and(|a| a.iter().any(|x| x == "Deny"));
                if !denies {
                    return Err(format!(
                        "the ValidatingAdmissionPolicyBinding {name} does not deny; {install}"
                    ));
                }
            }
            Ok(None) => {
                return Err(format!(
                    "the ValidatingAdmissionPolicyBinding {name} is not installed; {install}"
                ))
            }
            Err(e) => {
                return Err(format!(
                    "cannot read the ValidatingAdmissionPolicyBinding {name} ({}); {install}",
                    said(e).1
                ))
            }
        }
    }
    Ok(())
}

/// Whether the server lists validatingadmissionpolicies in admissionregistration.k8s.io/v1
/// (None: cannot tell).
async fn served(client: &Client) -> Option<bool> {
    let request = http::Request::get("/apis/admissionregistration.k8s.io/v1")
        .body(Vec::new())
        .ok()?;
    match client.request::<Value>(request).await {
        Ok(list) => Some(
            list["resources"]
                .as_array()
                .is_some_and(|r| r.iter().any(|x| x["name"] == "validatingadmissionpolicies")),
        ),
        Err(e) => match said(e).0 {
            Some(404) => Some(false),
            _ => None,
        },
    }
}

/// Whether the user may `verb` configmaps in `namespace` (SelfSubjectAccessReview).
async fn may(client: &Client, namespace: &str, verb: &str) -> Result<bool, String> {
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.to_string()),
                verb: Some(verb.to_string()),
                resource: Some("configmaps".to_string()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    match reviews.create(&PostParams::default(), &review).await {
        Ok(r) => Ok(r.status.is_some_and(|s| s.allowed)),
        Err(e) => Err(said(e).1),
    }
}

/// Can a hard lock on `release` in `namespace` be enforced by this cluster, for this user?
/// Reads only (the policies, their bindings, two access reviews). The cluster-wide part
/// (objects outside the namespace) is checked when it is written: without it the lock is
/// still enforced in the namespace, and says what is not frozen.
pub async fn availability(client: &Client, namespace: &str, release: &str) -> Availability {
    if let Err(why) = policy_state(client).await {
        return Availability::Unavailable(why);
    }
    let param = param_name(release);
    for verb in ["create", "delete"] {
        match may(client, namespace, verb).await {
            Ok(true) => {}
            Ok(false) => {
                return Availability::Unavailable(format!(
                    "you may not {verb} configmaps in namespace {namespace:?}, which the lock's \
                     ConfigMap {param} needs (see docs/locks.md for the Role)"
                ))
            }
            Err(e) => {
                return Availability::Unavailable(format!(
                    "cannot check whether you may {verb} configmaps in namespace \
                     {namespace:?} ({e})"
                ))
            }
        }
    }
    Availability::Ready
}

// ---------------------------------------------------------------------------------------
// The parameters of one release.
// ---------------------------------------------------------------------------------------

/// The lock's own fields, as both parameters hold them.
fn lock_data(release: &str, spec: &Lock) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("release".to_string(), release.to_string()),
        (
            "reason".to_string(),
            spec.reason.clone().unwrap_or_default(),
        ),
        ("by".to_string(), spec.by.clone().unwrap_or_default()),
        ("since".to_string(), format_rfc3339(spec.since)),
    ])
}

fn labels(label: (&str, &str)) -> BTreeMap<String, String> {
    let (mk, mv) = MANAGED_BY;
    let (pk, pv) = label;
    BTreeMap::from([
        (mk.to_string(), mv.to_string()),
        (pk.to_string(), pv.to_string()),
    ])
}

/// The parameter in the release's namespace for a hard lock `spec` on `release`, with the
/// keys of what the policy freezes beyond the annotated objects ([`super::scope`]).
pub fn param_object(release: &str, namespace: &str, spec: &Lock, frozen: &Frozen) -> ConfigMap {
    let mut data = lock_data(release, spec);
    data.extend(frozen.keys.clone());
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(param_name(release)),
            namespace: Some(namespace.to_string()),
            labels: Some(labels(PARAM_LABEL)),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    }
}

/// The cluster-wide parameter (in [`LOCKS_NAMESPACE`]) for a hard lock `spec` on `release`
/// in `namespace`.
pub fn wide_param_object(release: &str, namespace: &str, spec: &Lock) -> ConfigMap {
    let mut data = lock_data(release, spec);
    data.insert("namespace".to_string(), namespace.to_string());
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(wide_param_name(namespace, release)),
            namespace: Some(LOCKS_NAMESPACE.to_string()),
            labels: Some(labels(WIDE_LABEL)),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    }
}

/// Reads the ConfigMap `name` in `namespace`: Some when present.
async fn read_configmap(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<ConfigMap>, String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    api.get_opt(name).await.map_err(|e| {
        format!(
            "cannot read the ConfigMap {name} in namespace {namespace:?} ({})",
            said(e).1
        )
    })
}

/// Reads the cluster-wide parameter of `release` in `namespace`: Some when present.
pub async fn read_wide_param(
    client: &Client,
    namespace: &str,
    release: &str,
) -> Result<Option<ConfigMap>, String> {
    read_configmap(
        client,
        LOCKS_NAMESPACE,
        &wide_param_name(namespace, release),
    )
    .await
}

/// Creates (or brings up to date) the ConfigMap `wanted`. The policies refuse updates of a
/// parameter, so one that differs is deleted (lifting the enforcement for a moment, as
/// changing a lock does) and created again.
async fn put_configmap(client: &Client, wanted: &ConfigMap) -> Result<(), String> {
    let namespace = wanted.metadata.namespace.clone().unwrap_or_default();
    let name = wanted.metadata.name.clone().unwrap_or_default();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let failed = |e: kube::Error| {
        format!(
            "cannot write the ConfigMap {name} in namespace {namespace:?} ({})",
            said(e).1
        )
    };
    for _ in 0..3 {
        match api.create(&PostParams::default(), wanted).await {
            Ok(_) => return Ok(()),
            Err(e) if said_code(&e) == Some(409) => {
                let Some(current) = api.get_opt(&name).await.map_err(failed)? else {
                    continue;
                };
                if current.data == wanted.data && current.metadata.labels == wanted.metadata.labels
                {
                    return Ok(());
                }
                let params = DeleteParams {
                    preconditions: current.metadata.uid.map(|uid| kube::api::Preconditions {
                        uid: Some(uid),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                match api.delete(&name, &params).await {
                    Ok(_) => {}
                    Err(e) if matches!(said_code(&e), Some(404 | 409)) => {}
                    Err(e) => return Err(failed(e)),
                }
            }
            Err(e) => return Err(failed(e)),
        }
    }
    Err(format!(
        "cannot write the ConfigMap {name} in namespace {namespace:?}: it kept changing while \
         it was replaced"
    ))
}

/// Creates (or brings up to date) the parameter in the release's namespace: from now on
/// the cluster enforces the lock there.
pub async fn put_param(
    client: &Client,
    namespace: &str,
    release: &str,
    spec: &Lock,
    frozen: &Frozen,
) -> Result<(), String> {
    put_configmap(client, &param_object(release, namespace, spec, frozen)).await
}

/// Creates (or brings up to date) the cluster-wide parameter: from now on the cluster
/// enforces the lock outside the release's namespace too.
pub async fn put_wide_param(
    client: &Client,
    namespace: &str,
    release: &str,
    spec: &Lock,
) -> Result<(), String> {
    put_configmap(client, &wide_param_object(release, namespace, spec)).await
}

fn said_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// What removing a parameter did.
#[derive(Debug, PartialEq, Eq)]
pub enum Lifted {
    /// There was one; it is gone: the cluster no longer enforces the lock.
    Deleted,
    /// There was none.
    Absent,
    /// It could not be read (e.g. no `get` on configmaps): not known whether there is one.
    Unknown(String),
}

/// Deletes the ConfigMap `name` in `namespace`. Reads first, so an unlocked release costs
/// no write.
async fn remove_configmap(client: &Client, namespace: &str, name: &str) -> Result<Lifted, String> {
    let current = match read_configmap(client, namespace, name).await {
        Ok(Some(current)) => current,
        Ok(None) => return Ok(Lifted::Absent),
        Err(why) => return Ok(Lifted::Unknown(why)),
    };
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let params = DeleteParams {
        preconditions: current.metadata.uid.map(|uid| kube::api::Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(Lifted::Deleted),
        Err(e) if said_code(&e) == Some(404) => Ok(Lifted::Absent),
        Err(e) => Err(format!(
            "cannot delete the ConfigMap {name} in namespace {namespace:?} ({})",
            said(e).1
        )),
    }
}

/// Deletes the parameter in the release's namespace (enforcement off there).
pub async fn remove_param(
    client: &Client,
    namespace: &str,
    release: &str,
) -> Result<Lifted, String> {
    remove_configmap(client, namespace, &param_name(release)).await
}

/// Deletes the cluster-wide parameter (enforcement off outside the release's namespace).
pub async fn remove_wide_param(
    client: &Client,
    namespace: &str,
    release: &str,
) -> Result<Lifted, String> {
    remove_configmap(
        client,
        LOCKS_NAMESPACE,
        &wide_param_name(namespace, release),
    )
    .await
}

/// The parameters in the release namespaces, by (namespace, release), in `namespace` or
/// everywhere (`None`).
pub async fn params_in(
    client: &Client,
    namespace: Option<&str>,
) -> Result<BTreeMap<(String, String), ConfigMap>, String> {
    let api: Api<ConfigMap> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (mk, mv) = MANAGED_BY;
    let (pk, pv) = PARAM_LABEL;
    let list = api
        .list(&ListParams::default().labels(&format!("{mk}={mv},{pk}={pv}")))
        .await
        .map_err(|e| {
            let scope =
                namespace.map_or("all namespaces".to_string(), |n| format!("namespace {n:?}"));
            format!("cannot list lock ConfigMaps in {scope} ({})", said(e).1)
        })?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|m| {
            let name = m.metadata.name.clone()?;
            let release = name.strip_prefix(PARAM_PREFIX)?.to_string();
            Some((
                (m.metadata.namespace.clone().unwrap_or_default(), release),
                m,
            ))
        })
        .collect())
}

/// The cluster-wide parameters, by (namespace, release) (`policy show`; needs `list` in
/// [`LOCKS_NAMESPACE`]).
pub async fn wide_params(client: &Client) -> Result<Vec<(String, String)>, String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), LOCKS_NAMESPACE);
    let (mk, mv) = MANAGED_BY;
    let (wk, wv) = WIDE_LABEL;
    let list = api
        .list(&ListParams::default().labels(&format!("{mk}={mv},{wk}={wv}")))
        .await
        .map_err(|e| {
            format!(
                "cannot list lock ConfigMaps in namespace {LOCKS_NAMESPACE:?} ({})",
                said(e).1
            )
        })?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|m| {
            let data = m.data?;
            Some((data.get("namespace")?.clone(), data.get("release")?.clone()))
        })
        .collect())
}

/// How the hard locks of a namespace (or all) are enforced, read once for `status`/`locks`:
/// the policies' state and the parameters in the release namespaces.
pub struct Observed {
    policy: Result<(), String>,
    params: Result<BTreeMap<(String, String), ConfigMap>, String>,
}

impl Observed {
    /// Reads the policies and the parameters.
    pub async fn read(client: &Client, namespace: Option<&str>) -> Observed {
        Observed {
            policy: policy_state(client).await,
            params: params_in(client, namespace).await,
        }
    }

    /// The parameter of a hard lock on `release` in `namespace`, or why there is none.
    pub fn hard_lock(&self, namespace: &str, release: &str) -> Result<&ConfigMap, String> {
        if let Err(why) = &self.policy {
            return Err(why.clone());
        }
        let params = self.params.as_ref().map_err(Clone::clone)?;
        params
            .get(&(namespace.to_string(), release.to_string()))
            .ok_or_else(|| {
                format!(
                    "no ConfigMap {} in namespace {namespace:?}; run `guarded-upgrade lock \
                     {release} --hard -n {namespace}` again to enforce it",
                    param_name(release)
                )
            })
    }
}

/// How the lock's fields in a parameter differ from the records' lock (`want`, as
/// [`lock_data`] makes them): `its reason is "x", the records say "y"`, one per field.
pub fn lock_fields_differ(
    have: &BTreeMap<String, String>,
    want: &BTreeMap<String, String>,
) -> Vec<String> {
    want.iter()
        .filter(|(k, v)| have.get(*k) != Some(*v))
        .map(|(k, v)| match have.get(k) {
            Some(h) => format!("its {k} is {h:?}, the records say {v:?}"),
            None => format!("it has no {k} (the records say {v:?})"),
        })
        .collect()
}

/// The lock's fields a parameter should hold for the records' lock (`reason`, `by`,
/// `since` as RFC 3339 text).
pub fn expected_lock_data(
    release: &str,
    reason: Option<&str>,
    by: Option<&str>,
    since: Option<&str>,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("release".to_string(), release.to_string()),
        ("reason".to_string(), reason.unwrap_or_default().to_string()),
        ("by".to_string(), by.unwrap_or_default().to_string()),
        (
            "since".to_string(),
            since.map(String::from).unwrap_or_else(|| format_rfc3339(0)),
        ),
    ])
}

/// How long the API server may take to start (or stop) enforcing after a parameter is
/// created (or deleted): admission policies and their parameters reach the server through
/// informers, so there is a short window.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(30);

/// What a probe tries: a dry-run no-op patch (nothing is written) of a release's record, or
/// of the cluster-wide parameter itself.
#[derive(Clone, Copy, Debug)]
pub enum Probe<'a> {
    /// The record `record` (`kind` `Secret` or `ConfigMap`) in `namespace`: refused by
    /// [`POLICY_NAME`] when the lock is enforced in the release's namespace. Needs `patch`
    /// on it, as `lock` does.
    Record {
        namespace: &'a str,
        kind: &'a str,
        record: &'a str,
    },
    /// The cluster-wide parameter of `release` in `namespace`: refused by
    /// [`WIDE_POLICY_NAME`] when the lock is enforced outside the release's namespace
    /// (the Role of `policy install` grants every user `patch` there for this).
    Wide {
        namespace: &'a str,
        release: &'a str,
    },
}

impl Probe<'_> {
    fn target(&self) -> (String, String, &'static str) {
        match self {
            Probe::Record {
                namespace,
                kind,
                record,
            } => {
                let plural = if *kind == "ConfigMap" {
                    "configmaps"
                } else {
                    "secrets"
                };
                (
                    format!("/api/v1/namespaces/{namespace}/{plural}/{record}"),
                    format!("{kind} {record}"),
                    POLICY_NAME,
                )
            }
            Probe::Wide { namespace, release } => {
                let name = wide_param_name(namespace, release);
                (
                    format!("/api/v1/namespaces/{LOCKS_NAMESPACE}/configmaps/{name}"),
                    format!("ConfigMap {name} in namespace {LOCKS_NAMESPACE}"),
                    WIDE_POLICY_NAME,
                )
            }
        }
    }

    /// What was probed, for messages: `Secret sh.helm.release.v1.db.v1`.
    pub fn what(&self) -> String {
        self.target().1
    }

    /// Asks the API server, as the caller, whether it refuses the change now. True when
    /// the policy refused it, false when the server accepted it.
    pub async fn run(&self, client: &Client) -> Result<bool, String> {
        let (path, what, policy) = self.target();
        let request = http::Request::patch(format!("{path}?dryRun=All").as_str())
            .header("Content-Type", "application/merge-patch+json")
            .body(b"{}".to_vec())
            .map_err(|e| e.to_string())?;
        let by = format!("ValidatingAdmissionPolicy '{policy}'");
        match client.request::<Value>(request).await {
            Ok(_) => Ok(false),
            Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains(&by) => Ok(true),
            Err(e) => Err(format!(
                "cannot check it with a dry-run patch of {what} ({})",
                said(e).1
            )),
        }
    }

    /// The sentence for a probe the server accepted.
    pub fn accepted(&self) -> String {
        format!(
            "the API server accepted a dry-run change of {} (the policy does not refuse it now)",
            self.what()
        )
    }

    /// Waits until the API server enforces (`want_denied`) or no longer enforces the lock,
    /// probing with [`Probe::run`].
    pub async fn settle(&self, client: &Client, want_denied: bool) -> Result<(), String> {
        let deadline = std::time::Instant::now() + SETTLE;
        loop {
            let denied = self.run(client).await?;
            if denied == want_denied {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(format!(
                    "the API server still {} a dry-run change of {} after {}s",
                    if want_denied { "accepts" } else { "refuses" },
                    self.what(),
                    SETTLE.as_secs()
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

/// `not enforced by the cluster: WHY`.
pub fn not_enforced(why: &str) -> String {
    format!("not enforced by the cluster: {why}")
}

/// `not enforced by the database: WHY` (`HELM_DRIVER=sql`).
pub fn not_enforced_by_database(why: &str) -> String {
    format!("not enforced by the database: {why}")
}

// ---------------------------------------------------------------------------------------
// `policy install` / `uninstall`.
// ---------------------------------------------------------------------------------------

/// The API of one of the manifest's objects.
fn api_of(object: &Value, client: &Client) -> Api<DynamicObject> {
    let kind = object["kind"].as_str().unwrap_or_default();
    let resource = match kind {
        "ValidatingAdmissionPolicy" => ApiResource::erase::<ValidatingAdmissionPolicy>(&()),
        "ValidatingAdmissionPolicyBinding" => {
            ApiResource::erase::<ValidatingAdmissionPolicyBinding>(&())
        }
        "ClusterRole" => ApiResource::erase::<ClusterRole>(&()),
        "ClusterRoleBinding" => ApiResource::erase::<ClusterRoleBinding>(&()),
        "Namespace" => ApiResource::erase::<Namespace>(&()),
        "Role" => ApiResource::erase::<Role>(&()),
        "RoleBinding" => ApiResource::erase::<RoleBinding>(&()),
        other => unreachable!("the manifest holds no {other}"),
    };
    match object["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    }
}

/// `KIND NAME` of one of the manifest's objects.
fn described(object: &Value) -> String {
    format!(
        "{} {}",
        object["kind"].as_str().unwrap_or_default(),
        object["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// Applies every object of the manifest (server-side apply, forced: the manifest wins).
pub async fn install(client: &Client) -> Result<Vec<String>, String> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut done = Vec::new();
    for object in manifest_objects() {
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let result = api_of(&object, client)
            .patch(&name, &params, &Patch::Apply(&object))
            .await;
        result.map_err(|e| {
            let applied = if done.is_empty() {
                "nothing was applied".to_string()
            } else {
                format!("applied so far: {}", done.join(", "))
            };
            format!(
                "cannot apply {} ({}); {applied}. Installing the policy needs a cluster \
                 admin (create/patch on validatingadmissionpolicies, \
                 validatingadmissionpolicybindings, clusterroles, clusterrolebindings, \
                 namespaces, and roles, rolebindings in namespace {LOCKS_NAMESPACE})",
                described(&object),
                said(e).1
            )
        })?;
        done.push(described(&object));
    }
    Ok(done)
}

/// Deletes the manifest's objects, bindings first (enforcement stops at once; the
/// parameters' guard last of them), the namespace of the cluster-wide parameters last.
/// Returns what was deleted.
pub async fn uninstall(client: &Client) -> Result<Vec<String>, String> {
    let objects = manifest_objects();
    let bindings = objects
        .iter()
        .rev()
        .filter(|o| o["kind"] == "ValidatingAdmissionPolicyBinding");
    let policies = objects
        .iter()
        .filter(|o| o["kind"] == "ValidatingAdmissionPolicy");
    let rest = objects.iter().rev().filter(|o| {
        !matches!(
            o["kind"].as_str(),
            Some("ValidatingAdmissionPolicyBinding" | "ValidatingAdmissionPolicy")
        )
    });
    let mut done = Vec::new();
    for object in bindings.chain(policies).chain(rest) {
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        match api_of(object, client)
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => done.push(described(object)),
            Err(e) if said_code(&e) == Some(404) => {}
            Err(e) => {
                return Err(format!(
                    "cannot delete {} ({})",
                    described(object),
                    said(e).1
                ))
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One source of truth: the committed manifest is what `policy install` applies.
    #[test]
    fn committed_manifest_is_generated() {
        let committed = include_str!("../../../deploy/hard-lock-policy.yaml");
        assert!(
            committed == manifest_yaml(),
            "deploy/hard-lock-policy.yaml differs from `guarded-upgrade policy manifest`; \
             regenerate it with `cargo run -q -- policy manifest > deploy/hard-lock-policy.yaml`"
        );
    }

    #[test]
    fn manifest_round_trips_as_yaml_documents() {
        let docs: Vec<Value> = manifest_yaml()
            .split("\n---\n")
            .skip(1)
            .map(|d| serde_yaml::from_str(d).unwrap())
            .collect();
        let objects = manifest_objects();
        // The header comment comes before the first `---`.
        assert_eq!(docs, objects);
        let kinds: Vec<String> = objects.iter().map(described).collect();
        assert_eq!(
            kinds,
            [
                "Namespace guarded-upgrade",
                "ValidatingAdmissionPolicy guarded-upgrade-hard-lock-params",
                "ValidatingAdmissionPolicyBinding guarded-upgrade-hard-lock-params",
                "Role guarded-upgrade-locks",
                "RoleBinding guarded-upgrade-locks",
                "ClusterRole guarded-upgrade-hard-lock-reader",
                "ClusterRoleBinding guarded-upgrade-hard-lock-reader",
                "ValidatingAdmissionPolicy guarded-upgrade-hard-lock",
                "ValidatingAdmissionPolicyBinding guarded-upgrade-hard-lock",
                "ValidatingAdmissionPolicy guarded-upgrade-hard-lock-wide",
                "ValidatingAdmissionPolicyBinding guarded-upgrade-hard-lock-wide",
            ]
        );
        assert_eq!(
            objects[8]["spec"]["paramRef"]["parameterNotFoundAction"],
            "Allow"
        );
        // The per-namespace binding looks parameters up in the request's namespace; the
        // cluster-wide one in the locks namespace only; the parameters' guard has none.
        assert!(objects[8]["spec"]["paramRef"]["namespace"].is_null());
        assert_eq!(
            objects[10]["spec"]["paramRef"]["namespace"],
            LOCKS_NAMESPACE
        );
        assert!(objects[2]["spec"]["paramRef"].is_null());
    }

    fn spec() -> Lock {
        Lock {
            kind: crate::core::decision::LockKind::Hard,
            reason: Some("freeze".into()),
            by: None,
            since: 1_700_000_000,
            expires_at: None,
            pin: None,
            pin_key: None,
        }
    }

    #[test]
    fn param_names_the_release_and_carries_the_selector_labels() {
        let mut frozen = Frozen::default();
        frozen
            .keys
            .insert("scale.u1".into(), "apps/v1/Deployment/db-app".into());
        frozen
            .keys
            .insert("owner.u1".into(), "apps/v1/Deployment/db-app".into());
        let p = param_object("db", "shared", &spec(), &frozen);
        assert_eq!(p.metadata.name.as_deref(), Some("guarded-upgrade-lock-db"));
        let data = p.data.unwrap();
        assert_eq!(data["release"], "db");
        assert_eq!(data["reason"], "freeze");
        assert_eq!(data["by"], "");
        assert_eq!(data["since"], "2023-11-14T22:13:20Z");
        assert_eq!(data["scale.u1"], "apps/v1/Deployment/db-app");
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            ["by", "owner.u1", "reason", "release", "scale.u1", "since"]
        );
        let selector = &binding_object()["spec"]["paramRef"]["selector"]["matchLabels"];
        for (k, v) in p.metadata.labels.unwrap() {
            assert_eq!(selector[&k], v.as_str());
        }
        // The cluster-wide parameter: in the locks namespace, named for namespace and
        // release, exactly the keys the params policy allows, the wide binding's labels.
        let w = wide_param_object("db", "shared", &spec());
        assert_eq!(
            w.metadata.name.as_deref(),
            Some("guarded-upgrade-lock-shared.db")
        );
        assert_eq!(w.metadata.namespace.as_deref(), Some(LOCKS_NAMESPACE));
        let data = w.data.unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), WIDE_KEYS);
        assert_eq!(data["namespace"], "shared");
        let selector = &wide_binding_object()["spec"]["paramRef"]["selector"]["matchLabels"];
        for (k, v) in w.metadata.labels.unwrap() {
            assert_eq!(selector[&k], v.as_str());
        }
        // What status compares: the records' lock as the parameters hold it.
        let want = expected_lock_data("db", Some("freeze"), None, Some("2023-11-14T22:13:20Z"));
        assert_eq!(want, lock_data("db", &spec()));
        let mut changed = lock_data("db", &spec());
        changed.insert("reason".into(), "x".into());
        changed.remove("by");
        assert_eq!(
            lock_fields_differ(&changed, &want),
            [
                "it has no by (the records say \"\")",
                "its reason is \"x\", the records say \"freeze\""
            ]
        );
    }

    /// The policies match what they must and leave out exactly the system components.
    #[test]
    fn policies_match_everything_but_exempt_the_system() {
        let rules = |p: &Value| p["spec"]["matchConstraints"]["resourceRules"].clone();
        assert_eq!(
            rules(&policy_object()),
            json!([{
                "apiGroups": ["*"], "apiVersions": ["*"],
                "resources": ["*", "*/scale", "pods/resize", "pods/eviction"],
                "operations": ["CREATE", "UPDATE", "DELETE"], "scope": "Namespaced",
            }])
        );
        // Cluster-scoped requests too: the wide binding names its parameters' namespace.
        assert_eq!(
            rules(&wide_policy_object()),
            json!([{
                "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"],
                "operations": ["CREATE", "UPDATE", "DELETE"], "scope": "*",
            }])
        );
        let params = params_policy_object();
        assert_eq!(
            params["spec"]["matchConstraints"]["namespaceSelector"]["matchLabels"]
                ["kubernetes.io/metadata.name"],
            LOCKS_NAMESPACE
        );
        for policy in [policy_object(), wide_policy_object(), params] {
            let condition = policy["spec"]["matchConditions"][0]["expression"]
                .as_str()
                .unwrap();
            for user in [
                "'system:kube-controller-manager'",
                "'system:kube-scheduler'",
                "'system:apiserver'",
                "'system:serviceaccount:kube-system:deployment-controller'",
                "'system:serviceaccount:kube-system:replicaset-controller'",
                "'system:serviceaccount:kube-system:statefulset-controller'",
                "'system:serviceaccount:kube-system:generic-garbage-collector'",
                "'system:serviceaccount:kube-system:endpointslice-controller'",
                "'system:serviceaccount:kube-system:horizontal-pod-autoscaler'",
                "'system:nodes'",
            ] {
                assert!(condition.contains(user), "{user} is not exempt");
            }
            // Exact names only: no prefix, no wildcard, no whole namespace.
            assert!(!condition.contains("startsWith"));
            assert!(!condition.contains("'system:serviceaccounts"));
            assert!(!condition.contains("'system:masters'"));
        }
        assert_eq!(
            exempt_usernames().len(),
            EXEMPT_USERS.len() + EXEMPT_CONTROLLERS.len()
        );
    }

    fn variable_names(policy: &Value) -> Vec<String> {
        policy["spec"]["variables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// What the validations refuse: the records, objects annotated for the release before
    /// or after, `scale` of listed uids, children of listed owners (their pods may be
    /// deleted), deleting listed owners, autoscalers aimed at listed targets, updates of the
    /// parameter itself; outside the namespace the annotated objects and the release's
    /// namespace; what they let through: finalizer-only updates of anything but the
    /// parameter.
    #[test]
    fn validations_name_every_refused_change() {
        let policy = policy_object();
        let names = variable_names(&policy);
        let validation = policy["spec"]["validations"][0]["expression"]
            .as_str()
            .unwrap();
        for name in [
            "newRecord",
            "oldRecord",
            "newOwned",
            "oldOwned",
            "scaled",
            "child",
            "ownerDeleted",
            "autoscaler",
            "evicted",
            "lockParam",
        ] {
            assert!(names.iter().any(|n| n == name), "{name}");
            assert!(validation.contains(&format!("variables.{name}")), "{name}");
        }
        assert!(validation.contains("(!variables.lockParam && variables.finalizersOnly)"));
        let var = |p: &Value, n: &str| {
            p["spec"]["variables"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == n)
                .unwrap()["expression"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert!(var(&policy, "scaled").contains("('scale.' + object.metadata.uid) in params.data"));
        let child = var(&policy, "child");
        assert!(child.contains("r.controller && ('owner.' + r.uid) in params.data"));
        assert!(child.contains("request.resource.resource == 'pods'"));
        assert!(var(&policy, "ownerDeleted").contains("('owns.' + oldObject.metadata.uid)"));
        assert!(var(&policy, "autoscaler").contains("object.spec.scaleTargetRef.kind"));
        let owned = release_object("oldObject", "request.namespace");
        assert!(owned.contains("['meta.helm.sh/release-name'] == variables.release"));
        assert!(owned.contains("['meta.helm.sh/release-namespace'] == request.namespace"));
        assert!(finalizers_only().contains("'finalizers', 'managedFields', 'resourceVersion'"));

        let wide = wide_policy_object();
        let validation = wide["spec"]["validations"][0]["expression"]
            .as_str()
            .unwrap();
        assert!(validation.contains(
            "(variables.elsewhere && (variables.newOwned || variables.oldOwned)) || \
             variables.homeDeleted || variables.lockParam"
        ));
        assert_eq!(
            var(&wide, "elsewhere"),
            "variables.home != '' && (!has(request.namespace) || request.namespace != variables.home)"
        );
        assert!(var(&wide, "mine").contains(
            "params.metadata.name == 'guarded-upgrade-lock-' + variables.home + '.' + variables.release"
        ));
        assert!(
            var(&wide, "newOwned").contains("['meta.helm.sh/release-namespace'] == variables.home")
        );
        assert!(var(&wide, "homeDeleted").contains("request.resource.resource == 'namespaces'"));

        // The params policy: creates and deletes only by someone with the rights in the
        // namespace named, well-formed parameters only, no updates but dry runs.
        let params = params_policy_object();
        let validations: Vec<&str> = params["spec"]["validations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["expression"].as_str().unwrap())
            .collect();
        assert!(validations[0].contains("variables.wellFormed"));
        assert!(validations[0].contains("namespace(variables.home).check('create').allowed()"));
        assert!(validations[1].contains("namespace(variables.home).check('delete').allowed()"));
        assert_eq!(
            validations[2],
            "request.operation != 'UPDATE' || (has(request.dryRun) && request.dryRun)"
        );
        assert!(var(&params, "wellFormed").contains(
            "variables.obj.data.all(k, k in ['by', 'namespace', 'reason', 'release', 'since'])"
        ));
    }
}
