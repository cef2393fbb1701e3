//! What an enforced hard lock freezes of a release besides its records and the objects
//! carrying its annotations, found from the release's manifest and the objects themselves
//! when the lock is set (and found again by `status`, to check the lock's ConfigMap still
//! says it).
//!
//! A request the policy sees does not always carry the release's annotations:
//! - a `scale` request carries a Scale object (name, namespace, **the scaled object's
//!   uid**): the lock's ConfigMap lists `scale.UID` of every object of the release with a
//!   `scale` subresource, and of the ReplicaSets its Deployments control;
//! - the objects Kubernetes' workload controllers make for the release (a Deployment's
//!   ReplicaSets, their pods, a StatefulSet's pods and ControllerRevisions, a Job's pods, a
//!   CronJob's Jobs) carry an owner reference with `controller: true`: `owner.UID` of the
//!   release's workloads and of those ReplicaSets and Jobs;
//! - deleting an owner of the release's objects has the garbage collector (exempt) delete
//!   them: `owns.UID` of their owners, transitively;
//! - an autoscaler the user creates has the HPA controller (exempt) scale the release:
//!   `target.KIND.NAME` of everything with a `scale` subresource;
//! - an eviction carries an Eviction object: `evict.NAME` of the release's own Pods.
//!
//! UIDs are unique in the cluster, but the keys live in the lock's ConfigMap in the
//! release's namespace, which the policy only consults for requests in that namespace: they
//! cannot freeze anything elsewhere. The release's objects outside its namespace are frozen
//! by their annotations only (the lock's cluster-wide ConfigMap, [`super::admission`]).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::{ApiCapabilities, Scope};
use kube::{Api, Client};

use crate::adapters::cluster::ApiError;
use crate::adapters::storage::ReleaseStore;
use crate::core::chain::error_chain;
use crate::core::release::ManifestObject;

/// Key prefix: the `scale` subresource of the object with this uid is refused.
pub const SCALE: &str = "scale.";
/// Key prefix: the objects this uid controls (owner reference with `controller: true`)
/// cannot be created, changed or (but for pods) deleted.
pub const OWNER: &str = "owner.";
/// Key prefix: the object with this uid owns an object of the release: it cannot be
/// deleted.
pub const OWNS: &str = "owns.";
/// Key prefix: `target.KIND.NAME`; no HorizontalPodAutoscaler may be created or changed to
/// scale it.
pub const TARGET: &str = "target.";
/// Key prefix: `evict.NAME`; the release's own (bare) Pod NAME cannot be evicted (an
/// Eviction carries no annotations, and no controller would bring the pod back).
pub const EVICT: &str = "evict.";
/// Every key prefix of the lock's ConfigMap that names an object.
pub const PREFIXES: &[&str] = &[SCALE, OWNER, OWNS, TARGET, EVICT];
/// The key prefixes that name an object by its name, not its uid.
const BY_NAME: &[&str] = &[TARGET, EVICT];

/// Workload kinds whose children only Kubernetes' own controllers (exempt) write:
/// `(group, kind)`.
const WORKLOADS: &[(&str, &str)] = &[
    ("apps", "Deployment"),
    ("apps", "ReplicaSet"),
    ("apps", "StatefulSet"),
    ("apps", "DaemonSet"),
    ("batch", "Job"),
    ("batch", "CronJob"),
    ("", "ReplicationController"),
];

/// How deep owner references are followed (owner of an owner …).
const OWNER_DEPTH: usize = 8;

/// What the policy freezes of a release beyond its records and its annotated objects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frozen {
    /// Keys of the lock's ConfigMap (`scale.UID`, `owner.UID`, `owns.UID`,
    /// `target.KIND.NAME`) → the object (`API_VERSION/KIND/NAME`).
    pub keys: BTreeMap<String, String>,
    /// When the object of a key was created (Unix seconds): one created after the lock was
    /// set is not in its ConfigMap, which `status` says.
    pub created: BTreeMap<String, i64>,
    /// The release's objects outside its namespace (`KIND NAME`, `cluster-scoped` or `in
    /// namespace "x"`): frozen by their annotations through the lock's cluster-wide
    /// ConfigMap, when that is in force.
    pub wide: Vec<(String, String)>,
    /// What is not frozen: `KIND NAME (why)`.
    pub not_frozen: Vec<String>,
}

/// `API_VERSION/KIND/NAME`, the value of a key.
fn object_ref(api_version: &str, kind: &str, name: &str) -> String {
    format!("{api_version}/{kind}/{name}")
}

/// `KIND NAME` of a key's value.
pub fn kind_and_name(value: &str) -> String {
    let mut parts = value.rsplitn(3, '/');
    let name = parts.next().unwrap_or_default();
    let kind = parts.next().unwrap_or_default();
    format!("{kind} {name}")
}

/// A failed request, said in one line.
fn said(e: kube::Error) -> String {
    error_chain(&ApiError::from(e))
}

/// The API server's discovery, asked once per kind.
#[derive(Default)]
struct Kinds(BTreeMap<(String, String), Result<(ApiResource, ApiCapabilities), String>>);

impl Kinds {
    async fn find(
        &mut self,
        client: &Client,
        api_version: &str,
        kind: &str,
    ) -> Result<(ApiResource, ApiCapabilities), String> {
        let key = (api_version.to_string(), kind.to_string());
        if !self.0.contains_key(&key) {
            let (group, version) = match api_version.split_once('/') {
                Some((g, v)) => (g.to_string(), v.to_string()),
                None => (String::new(), api_version.to_string()),
            };
            let gvk = GroupVersionKind::gvk(&group, &version, kind);
            let found = kube::discovery::pinned_kind(client, &gvk)
                .await
                .map_err(said);
            self.0.insert(key.clone(), found);
        }
        self.0[&key].clone()
    }
}

/// A release object's uid and creation time, read from the API server.
fn uid_of(meta: &ObjectMeta) -> Option<(String, Option<i64>)> {
    let uid = meta.uid.clone()?;
    let created = meta.creation_timestamp.as_ref().map(|t| t.0.as_second());
    Some((uid, created))
}

fn controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == uid)
}

impl Frozen {
    /// What is not frozen when the lock's cluster-wide part is not in force (`why`): the
    /// release's objects outside `namespace`, and deleting `namespace` itself.
    pub fn wide_not_frozen(&self, namespace: &str, why: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .wide
            .iter()
            .map(|(object, place)| format!("{object} ({place}: {why})"))
            .collect();
        out.push(format!(
            "Namespace {namespace} (deleting it deletes the release: {why})"
        ));
        out
    }

    fn key(&mut self, prefix: &str, id: &str, value: String, created: Option<i64>) {
        let key = format!("{prefix}{id}");
        if let Some(t) = created {
            self.created.insert(key.clone(), t);
        }
        self.keys.insert(key, value);
    }
}

/// Lists of one namespace's ReplicaSets and Jobs, read once.
#[derive(Default)]
struct Children {
    replica_sets: Option<Result<Vec<ReplicaSet>, String>>,
    jobs: Option<Result<Vec<Job>, String>>,
}

/// Sorts the release's objects into what the policy freezes and what it cannot, asking the
/// API server (discovery) for each kind's scope and subresources and reading each object of
/// the release namespace (its uid, its owners, what it controls). The caller's reads only.
pub async fn freeze_scope(client: &Client, namespace: &str, objects: &[ManifestObject]) -> Frozen {
    let mut frozen = Frozen::default();
    let mut kinds = Kinds::default();
    let mut children = Children::default();
    let mut elsewhere: BTreeSet<String> = BTreeSet::new();
    let mut owners_seen: BTreeSet<String> = BTreeSet::new();
    for o in objects {
        if o.hook {
            frozen.not_frozen.push(format!(
                "{} {} (a helm hook: helm does not mark hooks as the release's)",
                o.kind, o.name
            ));
            continue;
        }
        let (resource, caps) = match kinds.find(client, &o.api_version, &o.kind).await {
            Ok(found) => found,
            Err(why) => {
                frozen.not_frozen.push(format!(
                    "{} {} (its kind {} is not served: {why})",
                    o.kind, o.name, o.api_version
                ));
                continue;
            }
        };
        let scalable = caps.subresources.iter().any(|(r, _)| r.plural == "scale");
        let workload = WORKLOADS
            .iter()
            .any(|(g, k)| *g == resource.group && *k == o.kind);
        if caps.scope == Scope::Cluster {
            frozen.wide.push((
                format!("{} {}", o.kind, o.name),
                "cluster-scoped".to_string(),
            ));
            continue;
        }
        let ns = o.namespace.as_deref().unwrap_or(namespace);
        if ns != namespace {
            frozen.wide.push((
                format!("{} {}", o.kind, o.name),
                format!("in namespace {ns:?}"),
            ));
            elsewhere.insert(ns.to_string());
            if scalable || workload {
                frozen.not_frozen.push(format!(
                    "{} {} (in namespace {ns:?}: its scale subresource and the objects it \
                     controls; outside the release's namespace only objects carrying its \
                     annotations are frozen)",
                    o.kind, o.name
                ));
            }
            continue;
        }
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
        let object = match api.get_opt(&o.name).await {
            // Absent: nothing to key; creating it is refused by its annotations.
            Ok(None) => continue,
            Ok(Some(object)) => object,
            Err(e) => {
                frozen.not_frozen.push(format!(
                    "{} {} (cannot read it: {}; its scale subresource, the objects it \
                     controls and its owners are not frozen)",
                    o.kind,
                    o.name,
                    said(e)
                ));
                continue;
            }
        };
        let Some((uid, created)) = uid_of(&object.metadata) else {
            continue;
        };
        let me = object_ref(&o.api_version, &o.kind, &o.name);
        if scalable {
            frozen.key(SCALE, &uid, me.clone(), created);
            frozen.key(TARGET, &format!("{}.{}", o.kind, o.name), me.clone(), None);
        }
        if resource.group.is_empty() && o.kind == "Pod" {
            frozen.key(EVICT, &o.name, me.clone(), None);
        }
        if workload {
            frozen.key(OWNER, &uid, me.clone(), created);
            match (resource.group.as_str(), o.kind.as_str()) {
                ("apps", "Deployment") => {
                    replica_sets_of(client, namespace, &uid, o, &mut children, &mut frozen).await
                }
                ("batch", "CronJob") => {
                    jobs_of(client, namespace, &uid, o, &mut children, &mut frozen).await;
                    frozen.not_frozen.push(format!(
                        "{} {} (the Jobs it starts after the lock was set, and their pods)",
                        o.kind, o.name
                    ));
                }
                ("apps", "StatefulSet") if unowned_claims(&object.data) => {
                    frozen.not_frozen.push(format!(
                        "{} {} (the PersistentVolumeClaims of its volumeClaimTemplates: they \
                         carry neither the release's annotations nor an owner reference)",
                        o.kind, o.name
                    ))
                }
                _ => {}
            }
        }
        let described = format!("{} {}", o.kind, o.name);
        owners_of(
            client,
            namespace,
            &object.metadata.owner_references.unwrap_or_default(),
            &described,
            &mut kinds,
            &mut owners_seen,
            &mut frozen,
        )
        .await;
    }
    for ns in elsewhere {
        frozen.not_frozen.push(format!(
            "Namespace {ns} (deleting it deletes the release's objects there)"
        ));
    }
    frozen.wide.sort();
    frozen.wide.dedup();
    frozen.not_frozen.sort();
    frozen.not_frozen.dedup();
    frozen
}

/// A StatefulSet (its JSON) whose volumeClaimTemplates make PersistentVolumeClaims without
/// an owner reference: unless `persistentVolumeClaimRetentionPolicy.whenDeleted` is `Delete`,
/// the StatefulSet controller does not make itself their owner.
fn unowned_claims(statefulset: &serde_json::Value) -> bool {
    let spec = &statefulset["spec"];
    spec["volumeClaimTemplates"]
        .as_array()
        .is_some_and(|t| !t.is_empty())
        && spec["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] != "Delete"
}

/// The ReplicaSets Deployment `o` (uid `uid`) controls: their scale, their pods.
async fn replica_sets_of(
    client: &Client,
    namespace: &str,
    uid: &str,
    o: &ManifestObject,
    children: &mut Children,
    frozen: &mut Frozen,
) {
    if children.replica_sets.is_none() {
        let api: Api<ReplicaSet> = Api::namespaced(client.clone(), namespace);
        children.replica_sets = Some(
            api.list(&ListParams::default())
                .await
                .map(|l| l.items)
                .map_err(said),
        );
    }
    match children.replica_sets.as_ref().expect("listed above") {
        Ok(list) => {
            for rs in list.iter().filter(|rs| controlled_by(&rs.metadata, uid)) {
                let (Some((rs_uid, created)), Some(name)) =
                    (uid_of(&rs.metadata), rs.metadata.name.as_deref())
                else {
                    continue;
                };
                let value = object_ref("apps/v1", "ReplicaSet", name);
                frozen.key(SCALE, &rs_uid, value.clone(), created);
                frozen.key(OWNER, &rs_uid, value.clone(), created);
                frozen.key(TARGET, &format!("ReplicaSet.{name}"), value, created);
            }
        }
        Err(why) => frozen.not_frozen.push(format!(
            "{} {} (cannot list its ReplicaSets: {why}; their scale subresource and their \
             pods are not frozen)",
            o.kind, o.name
        )),
    }
}

/// The Jobs CronJob `o` (uid `uid`) controls: their pods.
async fn jobs_of(
    client: &Client,
    namespace: &str,
    uid: &str,
    o: &ManifestObject,
    children: &mut Children,
    frozen: &mut Frozen,
) {
    if children.jobs.is_none() {
        let api: Api<Job> = Api::namespaced(client.clone(), namespace);
        children.jobs = Some(
            api.list(&ListParams::default())
                .await
                .map(|l| l.items)
                .map_err(said),
        );
    }
    match children.jobs.as_ref().expect("listed above") {
        Ok(list) => {
            for job in list.iter().filter(|j| controlled_by(&j.metadata, uid)) {
                let (Some((job_uid, created)), Some(name)) =
                    (uid_of(&job.metadata), job.metadata.name.as_deref())
                else {
                    continue;
                };
                frozen.key(
                    OWNER,
                    &job_uid,
                    object_ref("batch/v1", "Job", name),
                    created,
                );
            }
        }
        Err(why) => frozen.not_frozen.push(format!(
            "{} {} (cannot list its Jobs: {why}; their pods are not frozen)",
            o.kind, o.name
        )),
    }
}

/// The owners (transitively) of an object of the release (`described`: `KIND NAME`):
/// deleting one would have the garbage collector delete the release's object.
async fn owners_of(
    client: &Client,
    namespace: &str,
    refs: &[OwnerReference],
    described: &str,
    kinds: &mut Kinds,
    seen: &mut BTreeSet<String>,
    frozen: &mut Frozen,
) {
    let mut queue: Vec<(OwnerReference, String, usize)> = refs
        .iter()
        .map(|r| (r.clone(), described.to_string(), 1))
        .collect();
    while let Some((r, owned, depth)) = queue.pop() {
        if !seen.insert(r.uid.clone()) {
            continue;
        }
        let who = format!("{} {}", r.kind, r.name);
        let found = kinds.find(client, &r.api_version, &r.kind).await;
        let resource = match found {
            Ok((_, caps)) if caps.scope == Scope::Cluster => {
                frozen.not_frozen.push(format!(
                    "{who} (cluster-scoped owner of {owned}: deleting it has the garbage \
                     collector delete {owned})"
                ));
                continue;
            }
            Ok((resource, _)) => resource,
            Err(why) => {
                frozen.not_frozen.push(format!(
                    "{who} (owner of {owned}; its kind {} is not served: {why})",
                    r.api_version
                ));
                continue;
            }
        };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
        match api.get_opt(&r.name).await {
            Ok(Some(owner)) if owner.metadata.uid.as_deref() == Some(r.uid.as_str()) => {
                let created = uid_of(&owner.metadata).and_then(|(_, c)| c);
                frozen.key(
                    OWNS,
                    &r.uid,
                    object_ref(&r.api_version, &r.kind, &r.name),
                    created,
                );
                if depth < OWNER_DEPTH {
                    for next in owner.metadata.owner_references.iter().flatten() {
                        queue.push((next.clone(), who.clone(), depth + 1));
                    }
                }
            }
            // Gone (or another object of that name): nothing left to delete.
            Ok(_) => {}
            Err(e) => frozen.not_frozen.push(format!(
                "{who} (owner of {owned}; cannot read it: {}; deleting it is not refused)",
                said(e)
            )),
        }
    }
}

/// What the policy freezes of the release whose latest record is `latest` in `store`: its
/// objects, from the record's manifest. A manifest that cannot be read is said in the list
/// (nothing is claimed about the objects).
pub async fn freeze_scope_of<S: ReleaseStore>(client: &Client, store: &S, latest: &str) -> Frozen {
    let objects = match store.get(latest).await {
        Ok(record) => crate::core::release::decode_release_json(&record.payload)
            .map_err(|e| e.to_string())
            .and_then(|json| crate::core::release::manifest_objects(&json)),
        Err(e) => Err(error_chain(&e)),
    };
    match objects {
        Ok(objects) => freeze_scope(client, store.namespace(), &objects).await,
        Err(why) => Frozen {
            not_frozen: vec![format!(
                "every object of the release (cannot read the manifest of {latest}: {why})"
            )],
            ..Frozen::default()
        },
    }
}

/// How the keys of a lock's ConfigMap (`have`) compare with what the release's objects
/// call for now (`want`), for a ConfigMap created at `written` (Unix seconds).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KeysCompared {
    /// Keys the ConfigMap should hold for objects that existed when it was written: it was
    /// changed (`KIND NAME`).
    pub missing: Vec<String>,
    /// Objects created after the ConfigMap was written, not in it: not frozen (`KIND NAME
    /// (why)`).
    pub later: Vec<String>,
    /// Keys the ConfigMap holds that the release does not call for: the object is gone, or
    /// the ConfigMap was changed (checked by [`foreign`]).
    pub extra: Vec<(String, String)>,
}

/// Compares the keys of the lock's ConfigMap with the keys the release's objects call for.
pub fn compare_keys(
    have: &BTreeMap<String, String>,
    want: &Frozen,
    written: Option<i64>,
) -> KeysCompared {
    let mut out = KeysCompared::default();
    for (key, value) in &want.keys {
        if have.contains_key(key) {
            continue;
        }
        // The ConfigMap's creation time cannot be changed. The same second counts as after
        // it: the objects were read just before it was written, and one may have been made
        // meanwhile.
        let later = match (want.created.get(key), written) {
            (Some(created), Some(written)) => *created >= written,
            _ => false,
        };
        let what = kind_and_name(value);
        if later {
            out.later.push(format!(
                "{what} (created after the lock was set; run `lock --hard` again to freeze \
                 it)"
            ));
        } else {
            out.missing.push(what);
        }
    }
    for (key, value) in have {
        if PREFIXES.iter().any(|p| key.starts_with(p)) && !want.keys.contains_key(key) {
            out.extra.push((key.clone(), value.clone()));
        }
    }
    out.later.sort();
    out.later.dedup();
    out.missing.sort();
    out.missing.dedup();
    out
}

/// Of the extra keys of a lock's ConfigMap (`KEY`, `API_VERSION/KIND/NAME`), those naming
/// an object that exists now (with that uid, for uid keys) in `namespace`: the ConfigMap
/// freezes something that is not the release's (`KIND NAME`). An object that is gone, or
/// whose kind is not served, freezes nothing.
pub async fn foreign(client: &Client, namespace: &str, extra: &[(String, String)]) -> Vec<String> {
    let mut kinds = Kinds::default();
    let mut out = Vec::new();
    for (key, value) in extra {
        let mut parts = value.rsplitn(3, '/');
        let (Some(name), Some(kind), Some(api_version)) =
            (parts.next(), parts.next(), parts.next())
        else {
            out.push(format!("{key} ({value})"));
            continue;
        };
        let Ok((resource, caps)) = kinds.find(client, api_version, kind).await else {
            continue;
        };
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Cluster => Api::all_with(client.clone(), &resource),
            Scope::Namespaced => Api::namespaced_with(client.clone(), namespace, &resource),
        };
        let uid = PREFIXES
            .iter()
            .filter(|p| !BY_NAME.contains(p))
            .find_map(|p| key.strip_prefix(p));
        match api.get_opt(name).await {
            Ok(Some(o)) if uid.is_none() || o.metadata.uid.as_deref() == uid => {
                out.push(format!("{kind} {name}"))
            }
            Ok(_) => {}
            Err(e) => out.push(format!("{kind} {name} (cannot read it: {})", said(e))),
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frozen(keys: &[(&str, &str, Option<i64>)]) -> Frozen {
        let mut f = Frozen::default();
        for (k, v, c) in keys {
            f.keys.insert(k.to_string(), v.to_string());
            if let Some(c) = c {
                f.created.insert(k.to_string(), *c);
            }
        }
        f
    }

    #[test]
    fn statefulset_claims_without_owner() {
        let sts = |policy: serde_json::Value| {
            serde_json::json!({"spec": {"volumeClaimTemplates": [{"metadata": {"name": "data"}}],
                                        "persistentVolumeClaimRetentionPolicy": policy}})
        };
        assert!(unowned_claims(&sts(serde_json::json!(null))));
        assert!(unowned_claims(&sts(
            serde_json::json!({"whenDeleted": "Retain"})
        )));
        assert!(!unowned_claims(&sts(
            serde_json::json!({"whenDeleted": "Delete"})
        )));
        assert!(!unowned_claims(
            &serde_json::json!({"spec": {"replicas": 1}})
        ));
    }

    #[test]
    fn values_name_the_object() {
        assert_eq!(
            kind_and_name(&object_ref("apps/v1", "ReplicaSet", "db-app-7c9")),
            "ReplicaSet db-app-7c9"
        );
        assert_eq!(
            kind_and_name(&object_ref("v1", "ConfigMap", "x")),
            "ConfigMap x"
        );
    }

    /// A ConfigMap that lacks a key of an object that existed when the lock was set was
    /// changed; an object created later is only not frozen; extra keys are checked apart.
    #[test]
    fn keys_compare_by_creation_time() {
        let want = frozen(&[
            ("scale.u1", "apps/v1/Deployment/db-app", Some(100)),
            ("owner.u1", "apps/v1/Deployment/db-app", Some(100)),
            ("owner.u2", "apps/v1/ReplicaSet/db-app-new", Some(300)),
            (
                "target.Deployment.db-app",
                "apps/v1/Deployment/db-app",
                None,
            ),
        ]);
        let have: BTreeMap<String, String> = [
            ("release", "db"),
            ("scale.u1", "apps/v1/Deployment/db-app"),
            ("target.Deployment.db-app", "apps/v1/Deployment/db-app"),
            ("owns.u9", "v1/ConfigMap/owner"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let c = compare_keys(&have, &want, Some(200));
        assert_eq!(c.missing, ["Deployment db-app"]);
        assert_eq!(
            compare_keys(&have, &want, Some(100)).missing,
            Vec::<String>::new()
        );
        assert_eq!(
            c.later,
            [
                "ReplicaSet db-app-new (created after the lock was set; run `lock --hard` again \
              to freeze it)"
            ]
        );
        assert_eq!(
            c.extra,
            [("owns.u9".to_string(), "v1/ConfigMap/owner".to_string())]
        );
        let all: BTreeMap<String, String> = want.keys.clone();
        assert_eq!(
            compare_keys(&all, &want, Some(200)),
            KeysCompared::default()
        );
    }
}
