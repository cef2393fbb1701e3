//! The in-memory object store: one map keyed by (resource, namespace, name), a global
//! resourceVersion counter, an event history for watches and a tiny Deployment "controller".

use crate::discovery::{find, find_kind, ResourceType};
use crate::fields;
use crate::patch::{json_patch, merge_patch, strategic_merge_patch, strip_directives};
use crate::selector::{FieldSelector, LabelSelector};
use crate::util::{
    is_dns_label, is_dns_subdomain, new_uid, now_rfc3339, random_suffix, short_hash, ApiError,
};
use crate::{ArmedFault, Fault, RequestRecord};
use base64::Engine;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use tokio::sync::broadcast;

/// Storage key of a resource type: `secrets`, `deployments.apps`, ...
pub fn res_key(rt: &ResourceType) -> String {
    if rt.group.is_empty() {
        rt.plural.to_string()
    } else {
        format!("{}.{}", rt.plural, rt.group)
    }
}

/// One change, as watches stream it.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub etype: &'static str,
    pub res: String,
    pub namespace: String,
    pub rv: u64,
    pub object: Value,
}

const HISTORY: usize = 10_000;

/// All mutable state behind one mutex.
pub struct State {
    objects: BTreeMap<(String, String, String), Value>,
    rv: u64,
    history: VecDeque<Arc<WatchEvent>>,
    events: broadcast::Sender<Arc<WatchEvent>>,
    /// The request log.
    pub log: Vec<RequestRecord>,
    /// Active faults.
    pub faults: Vec<Fault>,
    /// Faults waiting for their turn (`StandIn::inject_after`).
    pub armed: Vec<ArmedFault>,
    next_ip: u32,
}

/// How a PATCH body is to be interpreted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PatchType {
    Merge,
    Strategic,
    Json,
    Apply,
}

impl State {
    /// A fresh store with the given namespaces.
    pub fn new(events: broadcast::Sender<Arc<WatchEvent>>) -> State {
        State {
            objects: BTreeMap::new(),
            rv: 1,
            history: VecDeque::new(),
            events,
            log: Vec::new(),
            faults: Vec::new(),
            armed: Vec::new(),
            next_ip: 10,
        }
    }

    /// The current (latest) resourceVersion.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    fn key(rt: &ResourceType, ns: &str, name: &str) -> (String, String, String) {
        let ns = if rt.namespaced { ns } else { "" };
        (res_key(rt), ns.to_string(), name.to_string())
    }

    fn emit(&mut self, etype: &'static str, rt: &ResourceType, obj: &Value) {
        let ev = Arc::new(WatchEvent {
            etype,
            res: res_key(rt),
            namespace: obj
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            rv: self.rv,
            object: obj.clone(),
        });
        if self.history.len() >= HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(ev.clone());
        let _ = self.events.send(ev);
    }

    /// Subscribes to live events (call under the lock to avoid gaps with a snapshot).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<WatchEvent>> {
        self.events.subscribe()
    }

    /// Events after `rv` for a resource, from the history (for watches resuming from a list).
    pub fn history_since(&self, res: &str, rv: u64) -> Result<Vec<Arc<WatchEvent>>, ApiError> {
        if let Some(first) = self.history.front() {
            if rv + 1 < first.rv {
                return Err(ApiError::new(
                    410,
                    "Expired",
                    format!("too old resource version: {rv} ({})", first.rv),
                ));
            }
        }
        Ok(self
            .history
            .iter()
            .filter(|e| e.rv > rv && e.res == res)
            .cloned()
            .collect())
    }

    /// Reads one object.
    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Option<&Value> {
        self.objects.get(&Self::key(rt, ns, name))
    }

    /// Lists objects (all namespaces when `ns` is None), filtered by selectors.
    pub fn list(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> Vec<Value> {
        let rk = res_key(rt);
        self.objects
            .iter()
            .filter(|((r, n, _), _)| *r == rk && ns.is_none_or(|ns| !rt.namespaced || n == ns))
            .map(|(_, v)| v)
            .filter(|v| labels.matches(v) && fields.matches(v))
            .cloned()
            .collect()
    }

    fn require_namespace(&self, rt: &ResourceType, ns: &str) -> Result<(), ApiError> {
        if rt.namespaced
            && !self.objects.contains_key(&(
                "namespaces".to_string(),
                String::new(),
                ns.to_string(),
            ))
        {
            return Err(ApiError::not_found("namespaces", "", ns));
        }
        Ok(())
    }

    /// Validates, defaults and stamps an object about to be stored; `old` is the stored version.
    fn prepare(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        let Some(m) = obj.as_object_mut() else {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        };
        // apiVersion/kind: must match the endpoint when given.
        if let (Some(av), Some(kind)) = (
            m.get("apiVersion").and_then(Value::as_str),
            m.get("kind").and_then(Value::as_str),
        ) {
            if find_kind(av, kind).is_none_or(|t| t.kind != rt.kind) {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({av}) does not match the expected API version ({})", rt.api_version()
                )));
            }
        }
        m.insert("apiVersion".into(), json!(rt.api_version()));
        m.insert("kind".into(), json!(rt.kind));
        let meta = m.entry("metadata").or_insert_with(|| json!({}));
        let Some(meta) = meta.as_object_mut() else {
            return Err(ApiError::bad_request("metadata must be an object"));
        };
        meta.insert("name".into(), json!(name));
        if rt.namespaced {
            meta.insert("namespace".into(), json!(ns));
        } else {
            meta.remove("namespace");
        }
        let valid = if matches!(rt.plural, "namespaces" | "services") {
            is_dns_label(name)
        } else {
            is_dns_subdomain(name)
        };
        if !valid {
            let what = if matches!(rt.plural, "namespaces" | "services") {
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
            } else {
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
            };
            return Err(ApiError::invalid(
                rt.kind,
                rt.group,
                name,
                vec![(
                    "metadata.name".into(),
                    format!("Invalid value: \"{name}\": {what}"),
                )],
            ));
        }
        for k in ["labels", "annotations"] {
            if let Some(v) = meta.get(k) {
                if !v.is_null()
                    && !v
                        .as_object()
                        .is_some_and(|o| o.values().all(Value::is_string))
                {
                    return Err(ApiError::bad_request(format!(
                        "metadata.{k} must be a map of strings"
                    )));
                }
            }
        }
        // Labels are validated like the real API does (422 Invalid).
        if let Some(labels) = meta.get("labels").and_then(Value::as_object) {
            let causes: Vec<(String, String)> = labels
                .iter()
                .filter_map(|(k, v)| {
                    crate::util::label_error(k, v.as_str().unwrap_or_default())
                        .map(|msg| ("metadata.labels".to_string(), msg))
                })
                .collect();
            if !causes.is_empty() {
                return Err(ApiError::invalid(rt.kind, rt.group, name, causes));
            }
        }
        match old {
            Some(o) => {
                for k in ["uid", "creationTimestamp"] {
                    if let Some(v) = o.pointer(&format!("/metadata/{k}")) {
                        meta.insert(k.into(), v.clone());
                    }
                }
            }
            None => {
                meta.insert("uid".into(), json!(new_uid()));
                meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
            }
        }
        meta.remove("selfLink");
        // Status is only written through the status subresource (the controller writes it directly).
        if rt.has_status {
            match old.and_then(|o| o.get("status")) {
                Some(s) => drop(m.insert("status".into(), s.clone())),
                None => drop(m.remove("status")),
            }
        }
        match rt.plural {
            "secrets" => fold_string_data(m)?,
            "deployments" => default_deployment(m),
            "services" => {
                let ip = format!("10.96.{}.{}", self.next_ip / 250, self.next_ip % 250 + 1);
                self.next_ip += 1;
                default_service(m, old, ip);
            }
            "namespaces" => {
                m.entry("spec")
                    .or_insert_with(|| json!({"finalizers": ["kubernetes"]}));
                m.insert("status".into(), json!({"phase": "Active"}));
                if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
                    let labels = meta.entry("labels").or_insert_with(|| json!({}));
                    if let Some(l) = labels.as_object_mut() {
                        l.insert("kubernetes.io/metadata.name".into(), json!(name));
                    }
                }
            }
            _ => {}
        }
        // generation: bumped when anything but metadata/status changes.
        let spec_of = |v: &Value| {
            let mut c = v.clone();
            if let Some(o) = c.as_object_mut() {
                o.remove("metadata");
                o.remove("status");
            }
            c
        };
        let generation = match old {
            None => 1,
            Some(o) => {
                let g = o
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                if spec_of(o) != spec_of(obj) {
                    g + 1
                } else {
                    g
                }
            }
        };
        self.rv += 1;
        let rv = self.rv;
        let meta = obj["metadata"]
            .as_object_mut()
            .expect("metadata is an object");
        meta.insert("generation".into(), json!(generation));
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        if rt.plural != "deployments"
            && rt.plural != "replicasets"
            && rt.plural != "statefulsets"
            && rt.plural != "daemonsets"
            && rt.plural != "jobs"
        {
            meta.remove("generation");
        }
        Ok(())
    }

    fn store(&mut self, rt: &ResourceType, obj: Value, created: bool) -> Value {
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        self.objects.insert(Self::key(rt, &ns, &name), obj.clone());
        self.emit(if created { "ADDED" } else { "MODIFIED" }, rt, &obj);
        if rt.plural == "deployments" {
            self.reconcile_deployment(&obj);
        }
        obj
    }

    /// Create (POST). `generateName` is honoured when no name is given.
    pub fn create(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        mut obj: Value,
        manager: &str,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        self.require_namespace(rt, ns)?;
        if let Some(body_ns) = obj.pointer("/metadata/namespace").and_then(Value::as_str) {
            if rt.namespaced && !body_ns.is_empty() && body_ns != ns {
                return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
            }
        }
        let mut name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if name.is_empty() {
            match obj
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
            {
                Some(g) if !g.is_empty() => name = format!("{g}{}", random_suffix(5)),
                _ => {
                    return Err(ApiError::invalid(
                        rt.kind,
                        rt.group,
                        "",
                        vec![(
                            "metadata.name".into(),
                            "Required value: name or generateName is required".into(),
                        )],
                    ))
                }
            }
        }
        if self.get(rt, ns, &name).is_some() {
            return Err(ApiError::already_exists(rt.plural, rt.group, &name));
        }
        let requested = obj.pointer("/metadata/managedFields").cloned();
        self.prepare(rt, ns, &name, &mut obj, None)?;
        fields::record_update(rt, manager, None, &mut obj, requested.as_ref());
        Ok(self.store(rt, obj, true))
    }

    /// Update (PUT), with optimistic concurrency when the body carries a resourceVersion.
    pub fn update(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        mut obj: Value,
        manager: &str,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        if let Some(n) = obj.pointer("/metadata/name").and_then(Value::as_str) {
            if n != name {
                return Err(ApiError::bad_request(
                    "the name of the object does not match the name on the URL",
                ));
            }
        }
        let old = self
            .get(rt, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt.plural, rt.group, name))?;
        if let Some(rv) = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
        {
            if !rv.is_empty()
                && Some(rv)
                    != old
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
            {
                return Err(ApiError::conflict(rt.plural, rt.group, name));
            }
        }
        let requested = obj.pointer("/metadata/managedFields").cloned();
        self.prepare(rt, ns, name, &mut obj, Some(&old))?;
        fields::record_update(rt, manager, Some(&old), &mut obj, requested.as_ref());
        Ok(self.store(rt, obj, false))
    }

    /// Patch of any type; apply creates the object when absent.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        ptype: PatchType,
        body: &Value,
        manager: &str,
        force: bool,
    ) -> Result<Value, ApiError> {
        let old = self.get(rt, ns, name).cloned();
        if ptype == PatchType::Apply {
            self.require_namespace(rt, ns)?;
            if !body.is_object() {
                return Err(ApiError::bad_request("apply patch must be an object"));
            }
            for k in ["apiVersion", "kind"] {
                if body
                    .get(k)
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    return Err(ApiError::bad_request(format!(
                        "invalid object type: {k} must be set in an apply patch"
                    )));
                }
            }
            if body
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .is_some_and(|n| n != name)
            {
                return Err(ApiError::bad_request(
                    "the name of the object does not match the name on the URL",
                ));
            }
            let mut obj = fields::apply(rt, manager, force, old.as_ref(), body)?;
            if let Some(m) = obj.pointer_mut("/metadata").and_then(Value::as_object_mut) {
                if let Some(o) = &old {
                    m.insert(
                        "resourceVersion".into(),
                        o["metadata"]["resourceVersion"].clone(),
                    );
                }
            }
            let managed = obj.pointer("/metadata/managedFields").cloned();
            self.prepare(rt, ns, name, &mut obj, old.as_ref())?;
            if let (Some(m), Some(meta)) = (
                managed,
                obj.get_mut("metadata").and_then(Value::as_object_mut),
            ) {
                meta.insert("managedFields".into(), m);
            }
            return Ok(self.store(rt, obj, old.is_none()));
        }
        let old = old.ok_or_else(|| ApiError::not_found(rt.plural, rt.group, name))?;
        let mut obj = old.clone();
        match ptype {
            PatchType::Merge => {
                if !body.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                merge_patch(&mut obj, body);
            }
            PatchType::Strategic => {
                if !body.is_object() {
                    return Err(ApiError::bad_request(
                        "a strategic merge patch must be a JSON object",
                    ));
                }
                strategic_merge_patch(&mut obj, body);
                strip_directives(&mut obj);
            }
            PatchType::Json => {
                json_patch(&mut obj, body).map_err(|e| ApiError::new(422, "Invalid", e))?
            }
            PatchType::Apply => unreachable!("handled above"),
        }
        // A patch that sets resourceVersion is a precondition, like PUT.
        let want_rv = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
        let have_rv = old
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
        if want_rv.is_some() && want_rv != have_rv {
            return Err(ApiError::conflict(rt.plural, rt.group, name));
        }
        let requested = obj.pointer("/metadata/managedFields").cloned();
        let requested = if requested.as_ref() == old.pointer("/metadata/managedFields") {
            None
        } else {
            requested
        };
        self.prepare(rt, ns, name, &mut obj, Some(&old))?;
        fields::record_update(
            rt,
            manager,
            Some(&old),
            &mut obj,
            requested
                .as_ref()
                .or(old.pointer("/metadata/managedFields")),
        );
        Ok(self.store(rt, obj, false))
    }

    /// Delete; cascades to namespaced objects of a namespace and to owned objects.
    pub fn delete(&mut self, rt: &ResourceType, ns: &str, name: &str) -> Result<Value, ApiError> {
        let key = Self::key(rt, ns, name);
        let mut obj = self
            .objects
            .remove(&key)
            .ok_or_else(|| ApiError::not_found(rt.plural, rt.group, name))?;
        self.rv += 1;
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("resourceVersion".into(), json!(self.rv.to_string()));
        }
        self.emit("DELETED", rt, &obj);
        if rt.plural == "namespaces" {
            let doomed: Vec<_> = self
                .objects
                .keys()
                .filter(|(r, n, _)| n == name && r != "namespaces")
                .cloned()
                .collect();
            for k in doomed {
                if let Some(o) = self.objects.remove(&k) {
                    self.rv += 1;
                    if let Some(t) = crate::discovery::RESOURCES
                        .iter()
                        .find(|t| res_key(t) == k.0)
                    {
                        self.emit("DELETED", t, &o);
                    }
                }
            }
        }
        // Garbage collection of dependents (ReplicaSets and Pods of a Deployment).
        if let Some(uid) = obj
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .map(str::to_string)
        {
            let owned: Vec<_> = self
                .objects
                .iter()
                .filter(|((_, n, _), v)| {
                    n == ns
                        && v.pointer("/metadata/ownerReferences")
                            .and_then(Value::as_array)
                            .is_some_and(|refs| {
                                refs.iter().any(|r| {
                                    r.get("uid").and_then(Value::as_str) == Some(uid.as_str())
                                })
                            })
                })
                .map(|(k, _)| k.clone())
                .collect();
            for (r, n, nm) in owned {
                if let Some(t) = crate::discovery::RESOURCES.iter().find(|t| res_key(t) == r) {
                    let _ = self.delete(t, &n, &nm);
                }
            }
        }
        Ok(obj)
    }

    /// Stores an object directly (test setup): create-or-replace, no conflict checks.
    pub fn put_direct(&mut self, rt: &ResourceType, mut obj: Value) -> Result<Value, ApiError> {
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let old = self.get(rt, &ns, &name).cloned();
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        let status = obj.get("status").cloned();
        self.prepare(rt, &ns, &name, &mut obj, old.as_ref())?;
        if let (Some(s), Some(m)) = (status, obj.as_object_mut()) {
            m.insert("status".into(), s);
        }
        Ok(self.store(rt, obj, old.is_none()))
    }

    /// Names of the pods in `ns` whose first owner has uid `owner_uid`.
    fn pods_owned_by(
        &self,
        pod_t: &'static ResourceType,
        ns: &str,
        owner_uid: &Value,
    ) -> Vec<String> {
        self.list(
            pod_t,
            Some(ns),
            &LabelSelector::default(),
            &FieldSelector::default(),
        )
        .into_iter()
        .filter(|p| p.pointer("/metadata/ownerReferences/0/uid") == Some(owner_uid))
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect()
    }

    /// The stand-in's controller: makes a Deployment look rolled out and ready, with a
    /// ReplicaSet (same template + pod-template-hash) and Running, Ready Pods.
    fn reconcile_deployment(&mut self, dep: &Value) {
        let (Some(rs_t), Some(pod_t), Some(dep_t)) = (
            find("apps", "v1", "replicasets"),
            find("", "v1", "pods"),
            find("apps", "v1", "deployments"),
        ) else {
            return;
        };
        let ns = dep["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = dep["metadata"]["name"].as_str().unwrap_or("").to_string();
        let uid = dep["metadata"]["uid"].clone();
        let replicas = dep
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let template = dep
            .pointer("/spec/template")
            .cloned()
            .unwrap_or_else(|| json!({}));
        let hash = short_hash(&template.to_string());
        let hash = hash[..hash.len().min(10)].to_string();
        let rs_name = format!("{name}-{hash}");
        let owner = json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": uid, "controller": true, "blockOwnerDeletion": true}]);
        let mut pod_labels = template
            .pointer("/metadata/labels")
            .cloned()
            .unwrap_or_else(|| json!({}));
        if let Some(l) = pod_labels.as_object_mut() {
            l.insert("pod-template-hash".into(), json!(hash));
        }
        let mut rs_template = template.clone();
        if let Some(t) = rs_template.as_object_mut() {
            t.entry("metadata").or_insert_with(|| json!({}))["labels"] = pod_labels.clone();
        }
        let mut selector = dep
            .pointer("/spec/selector")
            .cloned()
            .unwrap_or_else(|| json!({"matchLabels": {}}));
        if let Some(ml) = selector
            .get_mut("matchLabels")
            .and_then(Value::as_object_mut)
        {
            ml.insert("pod-template-hash".into(), json!(hash));
        }
        let now = now_rfc3339();
        // Scale down ReplicaSets of older templates, drop their pods.
        let others: Vec<(String, Value)> = self
            .list(
                rs_t,
                Some(&ns),
                &LabelSelector::default(),
                &FieldSelector::default(),
            )
            .into_iter()
            .filter(|rs| {
                rs.pointer("/metadata/ownerReferences/0/uid") == Some(&uid)
                    && rs["metadata"]["name"] != json!(rs_name)
            })
            .map(|rs| {
                (
                    rs["metadata"]["name"].as_str().unwrap_or("").to_string(),
                    rs,
                )
            })
            .collect();
        for (rs_name_old, mut rs) in others {
            if rs.pointer("/spec/replicas").and_then(Value::as_i64) != Some(0) {
                rs["spec"]["replicas"] = json!(0);
                rs["status"] =
                    json!({"replicas": 0, "observedGeneration": rs["metadata"]["generation"]});
                self.rv += 1;
                rs["metadata"]["resourceVersion"] = json!(self.rv.to_string());
                self.objects
                    .insert(Self::key(rs_t, &ns, &rs_name_old), rs.clone());
                self.emit("MODIFIED", rs_t, &rs);
            }
            let rs_uid = rs["metadata"]["uid"].clone();
            for p in self.pods_owned_by(pod_t, &ns, &rs_uid) {
                let _ = self.delete(pod_t, &ns, &p);
            }
        }
        let existing = self.get(rs_t, &ns, &rs_name).cloned();
        let rs = json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": rs_name, "namespace": ns, "labels": pod_labels, "ownerReferences": owner,
                         "annotations": {"deployment.kubernetes.io/revision": "1", "deployment.kubernetes.io/desired-replicas": replicas.to_string()}},
            "spec": {"replicas": replicas, "selector": selector, "template": rs_template},
        });
        let mut rs = rs;
        if self
            .prepare(rs_t, &ns, &rs_name, &mut rs, existing.as_ref())
            .is_err()
        {
            return;
        }
        rs["status"] = json!({"replicas": replicas, "fullyLabeledReplicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas, "observedGeneration": rs["metadata"]["generation"]});
        let rs_uid = rs["metadata"]["uid"].clone();
        self.objects
            .insert(Self::key(rs_t, &ns, &rs_name), rs.clone());
        self.emit(
            if existing.is_some() {
                "MODIFIED"
            } else {
                "ADDED"
            },
            rs_t,
            &rs,
        );
        // Pods: exactly `replicas` Running + Ready pods for the current ReplicaSet.
        let have = self.pods_owned_by(pod_t, &ns, &rs_uid);
        for extra in have.iter().skip(replicas.max(0) as usize) {
            let _ = self.delete(pod_t, &ns, extra);
        }
        let containers: Vec<Value> = template
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for _ in have.len()..replicas.max(0) as usize {
            let pod_name = format!("{rs_name}-{}", random_suffix(5));
            let statuses: Vec<Value> = containers
                .iter()
                .map(|c| json!({"name": c["name"], "image": c["image"], "imageID": "", "ready": true, "started": true, "restartCount": 0, "state": {"running": {"startedAt": now}}}))
                .collect();
            let mut pod = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod_name, "namespace": ns, "labels": rs["metadata"]["labels"],
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs_name, "uid": rs_uid, "controller": true, "blockOwnerDeletion": true}]},
                "spec": template.get("spec").cloned().unwrap_or_else(|| json!({})),
            });
            if self.prepare(pod_t, &ns, &pod_name, &mut pod, None).is_err() {
                return;
            }
            pod["spec"]["nodeName"] = json!("standin-node");
            pod["status"] = json!({
                "phase": "Running", "hostIP": "10.0.0.1", "podIP": "10.244.0.10", "startTime": now, "qosClass": "BestEffort",
                "conditions": [
                    {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                    {"type": "Ready", "status": "True", "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now}
                ],
                "containerStatuses": statuses
            });
            self.objects
                .insert(Self::key(pod_t, &ns, &pod_name), pod.clone());
            self.emit("ADDED", pod_t, &pod);
        }
        // Finally the Deployment's own status.
        if let Some(mut d) = self.get(dep_t, &ns, &name).cloned() {
            let generation = d["metadata"]["generation"].clone();
            d["status"] = json!({
                "observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
                "readyReplicas": replicas, "availableReplicas": replicas,
                "conditions": [
                    {"type": "Available", "status": "True", "lastUpdateTime": now, "lastTransitionTime": now,
                     "reason": "MinimumReplicasAvailable", "message": "Deployment has minimum availability."},
                    {"type": "Progressing", "status": "True", "lastUpdateTime": now, "lastTransitionTime": now,
                     "reason": "NewReplicaSetAvailable", "message": format!("ReplicaSet \"{rs_name}\" has successfully progressed.")}
                ]
            });
            if replicas == 0 {
                for k in [
                    "replicas",
                    "updatedReplicas",
                    "readyReplicas",
                    "availableReplicas",
                ] {
                    d["status"].as_object_mut().map(|s| s.remove(k));
                }
            }
            self.rv += 1;
            d["metadata"]["resourceVersion"] = json!(self.rv.to_string());
            self.objects.insert(Self::key(dep_t, &ns, &name), d.clone());
            self.emit("MODIFIED", dep_t, &d);
        }
    }
}

/// Secret `stringData` is write-only: folded into base64 `data`, then dropped.
fn fold_string_data(m: &mut Map<String, Value>) -> Result<(), ApiError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    if let Some(Value::Object(data)) = m.get("data") {
        for (k, v) in data {
            let ok = v.as_str().is_some_and(|s| b64.decode(s).is_ok());
            if !ok {
                return Err(ApiError::bad_request(format!("Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data in data[{k:?}]")));
            }
        }
    }
    if let Some(sd) = m.remove("stringData") {
        let Value::Object(sd) = sd else {
            return Err(ApiError::bad_request("stringData must be a map of strings"));
        };
        let data = m.entry("data").or_insert_with(|| json!({}));
        if !data.is_object() {
            *data = json!({});
        }
        for (k, v) in sd {
            let s = v
                .as_str()
                .ok_or_else(|| ApiError::bad_request("stringData must be a map of strings"))?;
            data[k.as_str()] = json!(b64.encode(s));
        }
    }
    m.entry("type").or_insert_with(|| json!("Opaque"));
    Ok(())
}

fn default_deployment(m: &mut Map<String, Value>) {
    let spec = m.entry("spec").or_insert_with(|| json!({}));
    let Some(spec) = spec.as_object_mut() else {
        return;
    };
    spec.entry("replicas").or_insert(json!(1));
    spec.entry("revisionHistoryLimit").or_insert(json!(10));
    spec.entry("progressDeadlineSeconds").or_insert(json!(600));
    spec.entry("strategy")
        .or_insert_with(|| json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}));
}

fn default_service(m: &mut Map<String, Value>, old: Option<&Value>, ip: String) {
    let spec = m.entry("spec").or_insert_with(|| json!({}));
    let Some(spec) = spec.as_object_mut() else {
        return;
    };
    spec.entry("type").or_insert(json!("ClusterIP"));
    spec.entry("sessionAffinity").or_insert(json!("None"));
    let external = spec.get("type").and_then(Value::as_str) == Some("ExternalName");
    if !external
        && spec
            .get("clusterIP")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        let ip = old
            .and_then(|o| o.pointer("/spec/clusterIP"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or(ip);
        spec.insert("clusterIP".into(), json!(ip));
        spec.insert("clusterIPs".into(), json!([ip]));
    }
    if let Some(Value::Array(ports)) = spec.get_mut("ports") {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            p.entry("protocol").or_insert(json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                p.entry("targetPort").or_insert(port);
            }
        }
    }
    m.entry("status")
        .or_insert_with(|| json!({"loadBalancer": {}}));
}
