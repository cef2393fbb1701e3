//! Enforced hard locks: the cluster itself refuses changes to a hard-locked release.
//!
//! A cluster admin installs one ValidatingAdmissionPolicy (`guarded-upgrade policy
//! install`, or `deploy/hard-lock-policy.yaml`, generated from [`manifest_yaml`]). Its
//! parameters are ConfigMaps named `guarded-upgrade-lock-<release>` in the release's
//! namespace, created by `lock --hard` and deleted by `unlock` (first, before any record is
//! rewritten, so an interrupted unlock is re-run without being refused by the policy). For
//! each such ConfigMap the API server denies, in that namespace:
//! - CREATE of a record of the release (Secret or ConfigMap labelled `owner=helm`,
//!   `name=<release>`): helm upgrade/install/rollback;
//! - UPDATE or DELETE of such a record (`kubectl edit/label/delete secret`, helm uninstall);
//! - DELETE of any namespaced object annotated `meta.helm.sh/release-name=<release>` and
//!   `meta.helm.sh/release-namespace=<namespace>` (helm uninstall, `kubectl delete`).
//!
//! The policy only acts through parameters carrying the tool's labels whose name matches
//! the release they name, so it cannot lock a release nobody locked with the tool.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::{ApiCapabilities, Scope};
use kube::{Api, Client};
use serde_json::{json, Value};

use crate::adapters::storage::StoreError;
use crate::core::chain::error_chain;
use crate::core::lock::Lock;
use crate::core::release::ManifestObject;
use crate::core::time::format_rfc3339;

/// Name of the ValidatingAdmissionPolicy, its binding, and the reader ClusterRole(Binding).
pub const POLICY_NAME: &str = "guarded-upgrade-hard-lock";
/// ClusterRole (and binding) that lets every authenticated user read the policy, so that
/// `lock --hard` and `status` can tell whether the cluster enforces locks.
pub const READER_NAME: &str = "guarded-upgrade-hard-lock-reader";
/// Version of the policy's rules; an installed policy older than this is re-installed.
pub const POLICY_VERSION: u32 = 2;
/// Annotation carrying [`POLICY_VERSION`] on the installed policy.
const VERSION_ANNOTATION: &str = "guarded-upgrade.io/policy-version";
/// Prefix of the parameter ConfigMap's name: `guarded-upgrade-lock-<release>`.
pub const PARAM_PREFIX: &str = "guarded-upgrade-lock-";
/// Labels every parameter carries; the binding selects parameters by them.
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "guarded-upgrade");
const PARAM_LABEL: (&str, &str) = ("guarded-upgrade.io/hard-lock", "true");
/// Field manager of the tool's writes.
const FIELD_MANAGER: &str = "guarded-upgrade";

/// The parameter ConfigMap's name for `release`.
pub fn param_name(release: &str) -> String {
    format!("{PARAM_PREFIX}{release}")
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

/// The policy's match condition: the request is not by a Kubernetes system component.
fn not_a_system_component() -> String {
    format!(
        "!((has(request.userInfo.username) && request.userInfo.username in {}) || (has(request.userInfo.groups) && \
         request.userInfo.groups.exists(g, g in {})))",
        cel_list(&exempt_usernames()),
        cel_list(EXEMPT_GROUPS)
    )
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
/// `meta.helm.sh/release-name` and `…/release-namespace`).
fn release_object(obj: &str) -> String {
    format!(
        "{obj} != null && has({obj}.metadata) && has({obj}.metadata.annotations) && \
         'meta.helm.sh/release-name' in {obj}.metadata.annotations && \
         {obj}.metadata.annotations['meta.helm.sh/release-name'] == variables.release && \
         'meta.helm.sh/release-namespace' in {obj}.metadata.annotations && \
         {obj}.metadata.annotations['meta.helm.sh/release-namespace'] == request.namespace"
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

/// The data key of the parameter listing the release's objects in its namespace whose
/// `scale` subresource the policy refuses (`GROUP/RESOURCE/NAME` lines; a `scale` request
/// carries a Scale object, without the release's annotations).
pub const PARAM_SCALABLE: &str = "scalable";
/// The data key listing the release's objects the policy cannot freeze (`KIND NAME (why)`
/// lines), for `status`.
pub const PARAM_NOT_FROZEN: &str = "not-frozen";

/// The ValidatingAdmissionPolicy.
fn policy_object() -> Value {
    let (mk, mv) = MANAGED_BY;
    let (pk, pv) = PARAM_LABEL;
    let what = "request.operation.lowerAscii() + ' of ' + request.resource.resource + \
                (variables.subresource != '' ? '/' + variables.subresource : '') + ' \"' + variables.name + '\"'";
    let message = [
        "'release \"' + variables.release + '\" in namespace \"' + request.namespace + '\" is hard-locked'",
        "(params.data.reason != '' ? ': ' + params.data.reason : '')",
        "' (locked by ' + (params.data.by != '' ? params.data.by : 'unknown') + ' since ' + params.data.since + ')'",
        &format!("'; ' + {what} + ' refused by guarded-upgrade'"),
        "(variables.lockParam ? '. The lock\\'s ConfigMap cannot be changed, only deleted, which lifts the enforcement; to change the lock run: guarded-upgrade lock ' + variables.release + ' --hard -n ' + request.namespace \
          : '. To change the release, first run: guarded-upgrade unlock ' + variables.release + ' -n ' + request.namespace)",
    ]
    .join(" + ");
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {
            "name": POLICY_NAME,
            "labels": { mk: mv },
            "annotations": { VERSION_ANNOTATION: POLICY_VERSION.to_string() },
        },
        "spec": {
            "failurePolicy": "Fail",
            "paramKind": { "apiVersion": "v1", "kind": "ConfigMap" },
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["*"],
                        "apiVersions": ["*"],
                        "resources": ["*", "*/scale"],
                        "operations": ["CREATE", "UPDATE", "DELETE"],
                        "scope": "Namespaced",
                    },
                ],
            },
            "matchConditions": [
                {
                    "name": "not-a-system-component",
                    "expression": not_a_system_component(),
                },
            ],
            "variables": [
                {
                    "name": "release",
                    "expression": "has(params.data) && 'release' in params.data ? params.data.release : ''",
                },
                {
                    "name": "mine",
                    "expression": format!(
                        "variables.release != '' && params.metadata.name == '{PARAM_PREFIX}' + variables.release && \
                         has(params.metadata.labels) && '{mk}' in params.metadata.labels && \
                         params.metadata.labels['{mk}'] == '{mv}' && '{pk}' in params.metadata.labels && \
                         params.metadata.labels['{pk}'] == '{pv}'"
                    ),
                },
                {
                    "name": "name",
                    "expression": "has(request.name) ? request.name : ''",
                },
                {
                    "name": "subresource",
                    "expression": "has(request.subResource) ? request.subResource : ''",
                },
                {
                    "name": "recordKind",
                    "expression": "request.resource.group == '' && variables.subresource == '' && \
                         (request.resource.resource == 'secrets' || request.resource.resource == 'configmaps')",
                },
                {
                    "name": "newRecord",
                    "expression": format!("request.operation != 'DELETE' && {}", record_of("object")),
                },
                {
                    "name": "oldRecord",
                    "expression": format!("request.operation != 'CREATE' && {}", record_of("oldObject")),
                },
                {
                    "name": "newOwned",
                    "expression": format!("request.operation != 'DELETE' && {}", release_object("object")),
                },
                {
                    "name": "oldOwned",
                    "expression": format!("request.operation != 'CREATE' && {}", release_object("oldObject")),
                },
                {
                    "name": "scaled",
                    "expression": format!(
                        "variables.subresource == 'scale' && '{PARAM_SCALABLE}' in params.data && \
                         ('\\n' + params.data['{PARAM_SCALABLE}'] + '\\n').contains('\\n' + \
                         request.resource.group + '/' + request.resource.resource + '/' + variables.name + '\\n')"
                    ),
                },
                {
                    "name": "lockParam",
                    "expression": "request.operation == 'UPDATE' && request.resource.group == '' && \
                         request.resource.resource == 'configmaps' && variables.subresource == '' && \
                         variables.name == params.metadata.name",
                },
                {
                    "name": "finalizersOnly",
                    "expression": finalizers_only(),
                },
            ],
            "validations": [
                {
                    "expression": "!variables.mine || !(variables.newRecord || variables.oldRecord || \
                         variables.newOwned || variables.oldOwned || variables.scaled || \
                         variables.lockParam) || (!variables.lockParam && variables.finalizersOnly)",
                    "messageExpression": message,
                    "message": "the release is hard-locked by guarded-upgrade; run `guarded-upgrade unlock RELEASE -n NAMESPACE` first",
                    "reason": "Forbidden",
                },
            ],
        },
    })
}

/// The binding: every namespace, parameters found by the tool's labels in the request's
/// namespace, no parameter = nothing locked there.
fn binding_object() -> Value {
    let (mk, mv) = MANAGED_BY;
    let (pk, pv) = PARAM_LABEL;
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": { "name": POLICY_NAME, "labels": { mk: mv } },
        "spec": {
            "policyName": POLICY_NAME,
            "validationActions": ["Deny"],
            "paramRef": {
                "selector": { "matchLabels": { mk: mv, pk: pv } },
                "parameterNotFoundAction": "Allow",
            },
        },
    })
}

/// Read access to the policy and its binding for every authenticated user.
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
                "resourceNames": [POLICY_NAME],
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

/// Every object `policy install` applies, in order.
pub fn manifest_objects() -> Vec<Value> {
    let [role, role_binding] = reader_objects();
    vec![policy_object(), binding_object(), role, role_binding]
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
// What the cluster offers: the policy installed, and the right to create parameters.
// ---------------------------------------------------------------------------------------

/// Whether this cluster can enforce a hard lock in a namespace, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Availability {
    /// The policy is installed and the user may create and delete parameters.
    Ready,
    /// Not possible; the text says why and what to do.
    Unavailable(String),
}

/// A failed request, said in one line.
fn said(e: kube::Error) -> (Option<u16>, String) {
    let e = StoreError::from(e);
    (e.code(), error_chain(&e))
}

/// Checks the policy and its binding are installed and current (no writes).
pub async fn policy_state(client: &Client) -> Result<(), String> {
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let install =
        "a cluster admin installs it with `guarded-upgrade policy install` (see docs/locks.md)";
    let policy = match policies.get_opt(POLICY_NAME).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return Err(match served(client).await {
                Some(false) => "this API server does not serve ValidatingAdmissionPolicy \
                     (admissionregistration.k8s.io/v1, Kubernetes 1.30 or later)"
                    .to_string(),
                _ => format!(
                    "the ValidatingAdmissionPolicy {POLICY_NAME} is not installed; {install}"
                ),
            })
        }
        Err(e) => {
            let (code, text) = said(e);
            return Err(match code {
                Some(404) => "this API server does not serve ValidatingAdmissionPolicy \
                     (admissionregistration.k8s.io/v1, Kubernetes 1.30 or later)"
                    .to_string(),
                _ => format!("cannot read the ValidatingAdmissionPolicy {POLICY_NAME} ({text}); {install}, which also lets every user read it"),
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
            "the installed ValidatingAdmissionPolicy {POLICY_NAME} is version {version}, this \
             guarded-upgrade needs version {POLICY_VERSION}; a cluster admin re-runs \
             `guarded-upgrade policy install`"
        ));
    }
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    match bindings.get_opt(POLICY_NAME).await {
        Ok(Some(b)) => {
            let denies = b
                .spec
                .as_ref()
                .and_then(|s| s.validation_actions.as_ref())
                .is_some_and(|a| a.iter().any(|x| x == "Deny"));
            if denies {
                Ok(())
            } else {
                Err(format!(
                    "the ValidatingAdmissionPolicyBinding {POLICY_NAME} does not deny; {install}"
                ))
            }
        }
        Ok(None) => Err(format!(
            "the ValidatingAdmissionPolicyBinding {POLICY_NAME} is not installed; {install}"
        )),
        Err(e) => Err(format!(
            "cannot read the ValidatingAdmissionPolicyBinding {POLICY_NAME} ({}); {install}",
            said(e).1
        )),
    }
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
/// Reads only (the policy, its binding, two access reviews).
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
// The parameter ConfigMap of one release.
// ---------------------------------------------------------------------------------------

/// What the policy freezes of a release beyond its records, found from its manifest when
/// the lock is set, and kept in the lock's ConfigMap (which cannot be edited).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frozen {
    /// `GROUP/RESOURCE/NAME` of the release's objects in its namespace that have a `scale`
    /// subresource.
    pub scalable: Vec<String>,
    /// `KIND NAME (why)` of the release's objects the policy cannot freeze.
    pub not_frozen: Vec<String>,
}

/// Sorts the release's objects into what the policy freezes and what it cannot, asking
/// the API server (discovery) for each kind's scope, resource name and subresources.
pub async fn freeze_scope(client: &Client, namespace: &str, objects: &[ManifestObject]) -> Frozen {
    let mut frozen = Frozen::default();
    let mut kinds: BTreeMap<(String, String), Result<(ApiResource, ApiCapabilities), String>> =
        BTreeMap::new();
    for o in objects {
        if o.hook {
            frozen.not_frozen.push(format!(
                "{} {} (a helm hook: helm does not mark hooks as the release's)",
                o.kind, o.name
            ));
            continue;
        }
        let key = (o.api_version.clone(), o.kind.clone());
        if !kinds.contains_key(&key) {
            let (group, version) = match o.api_version.split_once('/') {
                Some((g, v)) => (g.to_string(), v.to_string()),
                None => (String::new(), o.api_version.clone()),
            };
            let gvk = GroupVersionKind::gvk(&group, &version, &o.kind);
            let found = kube::discovery::pinned_kind(client, &gvk)
                .await
                .map_err(|e| said(e).1);
            kinds.insert(key.clone(), found);
        }
        match &kinds[&key] {
            Err(why) => frozen.not_frozen.push(format!(
                "{} {} (its kind {} is not served: {why})",
                o.kind, o.name, o.api_version
            )),
            Ok((_, caps)) if caps.scope == Scope::Cluster => frozen
                .not_frozen
                .push(format!("{} {} (cluster-scoped)", o.kind, o.name)),
            Ok(_) if o.namespace.as_deref().is_some_and(|n| n != namespace) => {
                frozen.not_frozen.push(format!(
                    "{} {} (in namespace {:?})",
                    o.kind,
                    o.name,
                    o.namespace.as_deref().unwrap_or_default()
                ))
            }
            Ok((resource, caps)) => {
                if caps.subresources.iter().any(|(r, _)| r.plural == "scale") {
                    frozen
                        .scalable
                        .push(format!("{}/{}/{}", resource.group, resource.plural, o.name));
                }
            }
        }
    }
    frozen.scalable.sort();
    frozen.scalable.dedup();
    frozen.not_frozen.sort();
    frozen.not_frozen.dedup();
    frozen
}

/// The parameter for a hard lock `spec` on `release`.
pub fn param_object(release: &str, namespace: &str, spec: &Lock, frozen: &Frozen) -> ConfigMap {
    let (mk, mv) = MANAGED_BY;
    let (pk, pv) = PARAM_LABEL;
    let mut data = BTreeMap::from([
        ("release".to_string(), release.to_string()),
        (
            "reason".to_string(),
            spec.reason.clone().unwrap_or_default(),
        ),
        ("by".to_string(), spec.by.clone().unwrap_or_default()),
        ("since".to_string(), format_rfc3339(spec.since)),
    ]);
    if !frozen.scalable.is_empty() {
        data.insert(PARAM_SCALABLE.to_string(), frozen.scalable.join("\n"));
    }
    if !frozen.not_frozen.is_empty() {
        data.insert(PARAM_NOT_FROZEN.to_string(), frozen.not_frozen.join("\n"));
    }
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(param_name(release)),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([
                (mk.to_string(), mv.to_string()),
                (pk.to_string(), pv.to_string()),
            ])),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    }
}

/// Reads the parameter of `release`: Some when present.
pub async fn read_param(
    client: &Client,
    namespace: &str,
    release: &str,
) -> Result<Option<ConfigMap>, String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let name = param_name(release);
    api.get_opt(&name).await.map_err(|e| {
        format!(
            "cannot read the ConfigMap {name} in namespace {namespace:?} ({})",
            said(e).1
        )
    })
}

/// Creates (or brings up to date) the parameter: from now on the cluster enforces the lock.
/// The policy refuses updates of a parameter, so one that differs is deleted (lifting the
/// enforcement for a moment, as changing a lock does) and created again.
pub async fn put_param(
    client: &Client,
    namespace: &str,
    release: &str,
    spec: &Lock,
    frozen: &Frozen,
) -> Result<(), String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let wanted = param_object(release, namespace, spec, frozen);
    let name = param_name(release);
    let failed = |e: kube::Error| {
        format!(
            "cannot write the ConfigMap {name} in namespace {namespace:?} ({})",
            said(e).1
        )
    };
    for _ in 0..3 {
        match api.create(&PostParams::default(), &wanted).await {
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

/// Deletes the parameter (enforcement off). Reads first, so an unlocked release costs no
/// write.
pub async fn remove_param(
    client: &Client,
    namespace: &str,
    release: &str,
) -> Result<Lifted, String> {
    let current = match read_param(client, namespace, release).await {
        Ok(Some(current)) => current,
        Ok(None) => return Ok(Lifted::Absent),
        Err(why) => return Ok(Lifted::Unknown(why)),
    };
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let name = param_name(release);
    let params = DeleteParams {
        preconditions: current.metadata.uid.map(|uid| kube::api::Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => Ok(Lifted::Deleted),
        Err(e) if said_code(&e) == Some(404) => Ok(Lifted::Absent),
        Err(e) => Err(format!(
            "cannot delete the ConfigMap {name} in namespace {namespace:?} ({})",
            said(e).1
        )),
    }
}

/// The parameters, by (namespace, release), in `namespace` or everywhere (`None`).
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

/// How the hard locks of a namespace (or all) are enforced, read once for `status`/`locks`.
pub struct Observed {
    policy: Result<(), String>,
    params: Result<BTreeMap<(String, String), ConfigMap>, String>,
}

/// What the cluster says about one hard lock before the probe.
pub struct ParamView {
    /// Whether the policy and the lock's parameter are in place; else why not.
    pub present: Result<(), String>,
    /// The objects the parameter lists as not frozen.
    pub not_frozen: Vec<String>,
}

impl Observed {
    /// Reads the policy and the parameters.
    pub async fn read(client: &Client, namespace: Option<&str>) -> Observed {
        Observed {
            policy: policy_state(client).await,
            params: params_in(client, namespace).await,
        }
    }

    /// The policy and parameter of a hard lock on `release` in `namespace`.
    pub fn hard_lock(&self, namespace: &str, release: &str) -> ParamView {
        let absent = |why: String| ParamView {
            present: Err(why),
            not_frozen: Vec::new(),
        };
        if let Err(why) = &self.policy {
            return absent(why.clone());
        }
        let params = match &self.params {
            Err(why) => return absent(why.clone()),
            Ok(params) => params,
        };
        let Some(param) = params.get(&(namespace.to_string(), release.to_string())) else {
            return absent(format!(
                "no ConfigMap {} in namespace {namespace:?}; run `guarded-upgrade lock \
                 {release} --hard -n {namespace}` again to enforce it",
                param_name(release)
            ));
        };
        let not_frozen = param
            .data
            .as_ref()
            .and_then(|d| d.get(PARAM_NOT_FROZEN))
            .map(|t| t.lines().map(String::from).collect())
            .unwrap_or_default();
        ParamView {
            present: Ok(()),
            not_frozen,
        }
    }
}

/// What the policy freezes of the release whose latest record is `latest` in `store`: its
/// objects, from the record's manifest, sorted by the API server's discovery. A manifest
/// that cannot be read is said in the list (nothing is claimed about the objects).
pub async fn freeze_scope_of<S: crate::adapters::storage::ReleaseStore>(
    client: &Client,
    store: &S,
    latest: &str,
) -> Frozen {
    let objects = match store.get(latest).await {
        Ok(record) => crate::core::release::decode_release_json(&record.payload)
            .map_err(|e| e.to_string())
            .and_then(|json| crate::core::release::manifest_objects(&json)),
        Err(e) => Err(error_chain(&e)),
    };
    match objects {
        Ok(objects) => freeze_scope(client, store.namespace(), &objects).await,
        Err(why) => Frozen {
            scalable: Vec::new(),
            not_frozen: vec![format!(
                "every object of the release (cannot read the manifest of {latest}: {why})"
            )],
        },
    }
}

/// How long the API server may take to start (or stop) enforcing after the parameter is
/// created (or deleted): admission policies and their parameters reach the server through
/// informers, so there is a short window.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Asks the API server, as the caller, whether it refuses a change of the record `record`
/// (`kind` `Secret` or `ConfigMap`) now: a dry-run no-op patch (nothing is written; needs
/// `patch` on it). True when the policy refused it, false when the server accepted it.
pub async fn probe(
    client: &Client,
    namespace: &str,
    kind: &str,
    record: &str,
) -> Result<bool, String> {
    let plural = if kind == "ConfigMap" {
        "configmaps"
    } else {
        "secrets"
    };
    let path = format!("/api/v1/namespaces/{namespace}/{plural}/{record}?dryRun=All");
    let request = http::Request::patch(path.as_str())
        .header("Content-Type", "application/merge-patch+json")
        .body(b"{}".to_vec())
        .map_err(|e| e.to_string())?;
    match client.request::<Value>(request).await {
        Ok(_) => Ok(false),
        Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains(POLICY_NAME) => Ok(true),
        Err(e) => Err(format!(
            "cannot check it with a dry-run patch of {kind} {record} ({})",
            said(e).1
        )),
    }
}

/// The sentence for a probe the server accepted.
pub fn accepted(kind: &str, record: &str) -> String {
    format!(
        "the API server accepted a dry-run change of {kind} {record} (the policy does not \
         refuse it now)"
    )
}

/// Waits until the API server enforces (`want_denied`) or no longer enforces the lock on
/// the record `record`, probing with [`probe`].
pub async fn settle(
    client: &Client,
    namespace: &str,
    kind: &str,
    record: &str,
    want_denied: bool,
) -> Result<(), String> {
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let denied = probe(client, namespace, kind, record).await?;
        if denied == want_denied {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!(
                "the API server still {} a dry-run change of {kind} {record} after {}s",
                if want_denied { "accepts" } else { "refuses" },
                SETTLE.as_secs()
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
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

/// Applies every object of the manifest (server-side apply, forced: the manifest wins).
pub async fn install(client: &Client) -> Result<Vec<String>, String> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut done = Vec::new();
    for object in manifest_objects() {
        let kind = object["kind"].as_str().unwrap_or_default().to_string();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let patch = Patch::Apply(&object);
        let result = match kind.as_str() {
            "ValidatingAdmissionPolicy" => Api::<ValidatingAdmissionPolicy>::all(client.clone())
                .patch(&name, &params, &patch)
                .await
                .map(|_| ()),
            "ValidatingAdmissionPolicyBinding" => {
                Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
                    .patch(&name, &params, &patch)
                    .await
                    .map(|_| ())
            }
            "ClusterRole" => Api::<ClusterRole>::all(client.clone())
                .patch(&name, &params, &patch)
                .await
                .map(|_| ()),
            _ => Api::<ClusterRoleBinding>::all(client.clone())
                .patch(&name, &params, &patch)
                .await
                .map(|_| ()),
        };
        result.map_err(|e| {
            let applied = if done.is_empty() {
                "nothing was applied".to_string()
            } else {
                format!("applied so far: {}", done.join(", "))
            };
            format!(
                "cannot apply {kind} {name} ({}); {applied}. Installing the policy needs a \
                 cluster admin (create/patch on validatingadmissionpolicies, \
                 validatingadmissionpolicybindings, clusterroles, clusterrolebindings)",
                said(e).1
            )
        })?;
        done.push(format!("{kind} {name}"));
    }
    Ok(done)
}

/// Deletes the policy objects (binding first: enforcement stops at once). Returns what was
/// deleted.
pub async fn uninstall(client: &Client) -> Result<Vec<String>, String> {
    let dp = DeleteParams::default();
    let mut done = Vec::new();
    let mut step = |kind: &str, name: &str, r: Result<(), kube::Error>| match r {
        Ok(()) => {
            done.push(format!("{kind} {name}"));
            Ok(())
        }
        Err(e) if said_code(&e) == Some(404) => Ok(()),
        Err(e) => Err(format!("cannot delete {kind} {name} ({})", said(e).1)),
    };
    step(
        "ValidatingAdmissionPolicyBinding",
        POLICY_NAME,
        Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
            .delete(POLICY_NAME, &dp)
            .await
            .map(|_| ()),
    )?;
    step(
        "ValidatingAdmissionPolicy",
        POLICY_NAME,
        Api::<ValidatingAdmissionPolicy>::all(client.clone())
            .delete(POLICY_NAME, &dp)
            .await
            .map(|_| ()),
    )?;
    step(
        "ClusterRoleBinding",
        READER_NAME,
        Api::<ClusterRoleBinding>::all(client.clone())
            .delete(READER_NAME, &dp)
            .await
            .map(|_| ()),
    )?;
    step(
        "ClusterRole",
        READER_NAME,
        Api::<ClusterRole>::all(client.clone())
            .delete(READER_NAME, &dp)
            .await
            .map(|_| ()),
    )?;
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
        assert_eq!(objects[0]["metadata"]["name"], POLICY_NAME);
        assert_eq!(
            objects[1]["spec"]["paramRef"]["parameterNotFoundAction"],
            "Allow"
        );
    }

    #[test]
    fn param_names_the_release_and_carries_the_selector_labels() {
        let spec = Lock {
            kind: crate::core::decision::LockKind::Hard,
            reason: Some("freeze".into()),
            by: None,
            since: 1_700_000_000,
            expires_at: None,
            pin: None,
            pin_key: None,
        };
        let frozen = Frozen {
            scalable: vec![
                "apps/deployments/db-app".into(),
                "apps/statefulsets/db-db".into(),
            ],
            not_frozen: vec!["ClusterRole db-reader (cluster-scoped)".into()],
        };
        let p = param_object("db", "shared", &spec, &frozen);
        assert_eq!(p.metadata.name.as_deref(), Some("guarded-upgrade-lock-db"));
        let data = p.data.unwrap();
        assert_eq!(data["release"], "db");
        assert_eq!(data["reason"], "freeze");
        assert_eq!(data["by"], "");
        assert_eq!(data["since"], "2023-11-14T22:13:20Z");
        assert_eq!(
            data[PARAM_SCALABLE],
            "apps/deployments/db-app\napps/statefulsets/db-db"
        );
        assert_eq!(
            data[PARAM_NOT_FROZEN],
            "ClusterRole db-reader (cluster-scoped)"
        );
        let bare = param_object("db", "shared", &spec, &Frozen::default());
        assert_eq!(
            bare.data.unwrap().keys().collect::<Vec<_>>(),
            ["by", "reason", "release", "since"]
        );
        let selector = &binding_object()["spec"]["paramRef"]["selector"]["matchLabels"];
        for (k, v) in p.metadata.labels.unwrap() {
            assert_eq!(selector[&k], v.as_str());
        }
    }

    /// The policy matches every namespaced resource and its `scale` subresource for create,
    /// update and delete, and leaves out exactly the system components.
    #[test]
    fn policy_matches_everything_namespaced_but_exempts_the_system() {
        let policy = policy_object();
        let rules = &policy["spec"]["matchConstraints"]["resourceRules"];
        assert_eq!(
            rules,
            &json!([{
                "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*", "*/scale"],
                "operations": ["CREATE", "UPDATE", "DELETE"], "scope": "Namespaced",
            }])
        );
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
        assert_eq!(
            exempt_usernames().len(),
            EXEMPT_USERS.len() + EXEMPT_CONTROLLERS.len()
        );
    }

    /// What the validation refuses: the records, objects annotated for the release before
    /// or after, `scale` of the listed objects, and updates of the parameter itself; what it
    /// lets through: finalizer-only updates of anything but the parameter.
    #[test]
    fn validation_names_every_refused_change() {
        let policy = policy_object();
        let names: Vec<&str> = policy["spec"]["variables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "release",
                "mine",
                "name",
                "subresource",
                "recordKind",
                "newRecord",
                "oldRecord",
                "newOwned",
                "oldOwned",
                "scaled",
                "lockParam",
                "finalizersOnly"
            ]
        );
        let validation = policy["spec"]["validations"][0]["expression"]
            .as_str()
            .unwrap();
        for name in &names[5..11] {
            assert!(validation.contains(&format!("variables.{name}")), "{name}");
        }
        assert!(validation.contains("(!variables.lockParam && variables.finalizersOnly)"));
        let owned = release_object("oldObject");
        assert!(owned.contains("['meta.helm.sh/release-name'] == variables.release"));
        assert!(owned.contains("['meta.helm.sh/release-namespace'] == request.namespace"));
        assert!(finalizers_only().contains("'finalizers', 'managedFields', 'resourceVersion'"));
    }
}
