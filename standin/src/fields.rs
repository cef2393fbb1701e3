//! `metadata.managedFields` bookkeeping and server-side apply, in the spirit of
//! sigs.k8s.io/structured-merge-diff but much smaller.
//!
//! A field set is a set of *leaf* paths. A path element is written as in `fieldsV1`:
//! `f:<field>` for a map key, `k:{"name":"x"}` for an item of an associative list (lists named
//! in [`crate::patch::merge_keys`]), `v:<json>` for set items. Every other list is atomic and
//! owned as a whole. Top-level `apiVersion`/`kind`, the identity parts of `metadata`
//! (name, namespace, uid, resourceVersion, …) and, for kinds with a status subresource,
//! `status` are never owned, as in the real API server.

use crate::discovery::ResourceType;
use crate::patch::{merge_keys, strategic_merge_patch, strip_directives};
use crate::util::{now_rfc3339, ApiError};
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;

/// A set of leaf paths.
pub type FieldSet = BTreeSet<Vec<String>>;

const OWNED_METADATA: &[&str] = &["labels", "annotations", "finalizers", "ownerReferences"];

fn list_key(field: &str, item: &Value) -> Option<String> {
    let keys = merge_keys(field)?;
    let obj = item.as_object()?;
    let mut m = Map::new();
    for k in keys {
        if let Some(v) = obj.get(*k) {
            m.insert((*k).to_string(), v.clone());
        }
    }
    if m.is_empty() {
        None
    } else {
        Some(format!("k:{}", Value::Object(m)))
    }
}

fn walk(v: &Value, field: &str, path: &mut Vec<String>, out: &mut FieldSet) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                path.push(format!("f:{k}"));
                walk(child, k, path, out);
                path.pop();
            }
        }
        Value::Array(items)
            if !items.is_empty() && items.iter().all(|i| list_key(field, i).is_some()) =>
        {
            for item in items {
                let key = list_key(field, item).expect("checked");
                path.push(key);
                walk(item, "", path, out);
                path.pop();
            }
        }
        _ => {
            out.insert(path.clone());
        }
    }
}

/// The leaf paths an object sets, excluding the fields nobody can own.
pub fn field_set(obj: &Value, rt: &ResourceType) -> FieldSet {
    let mut out = FieldSet::new();
    let Some(m) = obj.as_object() else {
        return out;
    };
    for (k, v) in m {
        match k.as_str() {
            "apiVersion" | "kind" => {}
            "status" if rt.has_status => {}
            "metadata" => {
                if let Some(meta) = v.as_object() {
                    for mk in OWNED_METADATA {
                        if let Some(mv) = meta.get(*mk) {
                            let mut path = vec!["f:metadata".to_string(), format!("f:{mk}")];
                            walk(mv, mk, &mut path, &mut out);
                        }
                    }
                }
            }
            _ => {
                let mut path = vec![format!("f:{k}")];
                walk(v, k, &mut path, &mut out);
            }
        }
    }
    out
}

/// Renders a field set in the `fieldsV1` JSON format.
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut cur = &mut root;
        for el in path {
            let is_item = el.starts_with("k:") || el.starts_with("v:");
            let node = cur
                .entry(el.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            let obj = node.as_object_mut().expect("fieldsV1 nodes are objects");
            if is_item && path.last() != Some(el) {
                obj.entry(".").or_insert_with(|| json!({}));
            }
            cur = obj;
        }
    }
    Value::Object(root)
}

/// Parses `fieldsV1` JSON into a field set.
pub fn from_fields_v1(v: &Value) -> FieldSet {
    fn rec(v: &Value, path: &mut Vec<String>, out: &mut FieldSet) {
        let Some(m) = v.as_object() else { return };
        let children: Vec<_> = m.iter().filter(|(k, _)| k.as_str() != ".").collect();
        if children.is_empty() {
            if !path.is_empty() {
                out.insert(path.clone());
            }
            return;
        }
        for (k, child) in children {
            path.push(k.clone());
            rec(child, path, out);
            path.pop();
        }
    }
    let mut out = FieldSet::new();
    rec(v, &mut Vec::new(), &mut out);
    out
}

fn item_matches(el: &str, item: &Value) -> bool {
    if let Some(k) = el.strip_prefix("k:") {
        match serde_json::from_str::<Map<String, Value>>(k) {
            Ok(keys) => keys.iter().all(|(kk, kv)| item.get(kk) == Some(kv)),
            Err(_) => false,
        }
    } else if let Some(v) = el.strip_prefix("v:") {
        serde_json::from_str::<Value>(v).is_ok_and(|want| want == *item)
    } else {
        false
    }
}

/// The value at a path, if the object has it.
pub fn get_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for el in path {
        cur = if let Some(f) = el.strip_prefix("f:") {
            cur.get(f)?
        } else if let Some(i) = el.strip_prefix("i:") {
            cur.get(i.parse::<usize>().ok()?)?
        } else {
            cur.as_array()?.iter().find(|it| item_matches(el, it))?
        };
    }
    Some(cur)
}

/// Removes the value at a path; containers emptied by the removal are removed too.
/// Returns whether `obj` itself became empty because of it.
pub fn remove_at(obj: &mut Value, path: &[String]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    match obj {
        Value::Object(m) => {
            let Some(f) = first.strip_prefix("f:") else {
                return false;
            };
            let remove_child = if rest.is_empty() {
                true
            } else {
                m.get_mut(f).is_some_and(|c| remove_at(c, rest))
            };
            if remove_child && m.remove(f).is_some() {
                return m.is_empty();
            }
            false
        }
        Value::Array(items) => {
            let Some(pos) = items.iter().position(|it| item_matches(first, it)) else {
                return false;
            };
            let remove_child = rest.is_empty() || remove_at(&mut items[pos], rest);
            if remove_child {
                items.remove(pos);
                return items.is_empty();
            }
            false
        }
        _ => false,
    }
}

/// `.spec.template.spec.containers[name="app"].image`, as conflict messages print paths.
pub fn path_string(path: &[String]) -> String {
    let mut s = String::new();
    for el in path {
        if let Some(f) = el.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = el.strip_prefix("k:") {
            let keys: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = el.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        } else if let Some(i) = el.strip_prefix("i:") {
            s.push_str(&format!("[{i}]"));
        }
    }
    s
}

/// One `managedFields` entry, parsed.
#[derive(Debug, Clone)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: Option<String>,
    pub fields: FieldSet,
}

/// Parses an object's `metadata.managedFields`.
pub fn entries_of(obj: &Value) -> Vec<Entry> {
    let Some(list) = obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
    else {
        return vec![];
    };
    list.iter()
        .filter_map(|e| {
            Some(Entry {
                manager: e.get("manager")?.as_str()?.to_string(),
                operation: e
                    .get("operation")
                    .and_then(Value::as_str)
                    .unwrap_or("Update")
                    .to_string(),
                api_version: e
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                time: e
                    .get("time")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(now_rfc3339),
                subresource: e
                    .get("subresource")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                fields: e.get("fieldsV1").map(from_fields_v1).unwrap_or_default(),
            })
        })
        .collect()
}

/// Writes entries back into `metadata.managedFields` (dropping empty ones).
pub fn store_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager, "operation": e.operation, "apiVersion": e.api_version,
                "time": e.time, "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(&e.fields),
            });
            if let Some(s) = &e.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

fn owns(set: &FieldSet, path: &[String]) -> bool {
    // Owning a leaf that is a prefix of `path` (an atomic parent) also counts.
    (1..=path.len()).any(|n| set.contains(&path[..n]))
}

/// Records a non-apply write (create/update/patch) by `manager`: the fields it changed
/// move to its `Update` entry and are taken from everybody else.
///
/// `requested` is the managedFields the client sent, if it sent any: a client may replace
/// them wholesale (Helm 4 does so with a JSON patch before switching a release to SSA);
/// `[{}]` clears them.
pub fn record_update(
    rt: &ResourceType,
    manager: &str,
    old: Option<&Value>,
    new: &mut Value,
    requested: Option<&Value>,
) {
    let null = Value::Null;
    let old_v = old.unwrap_or(&null);
    let mut entries = match requested {
        Some(Value::Array(a)) if a.len() == 1 && a[0].as_object().is_some_and(Map::is_empty) => {
            vec![]
        }
        Some(Value::Array(a)) if !a.is_empty() => {
            entries_of(&json!({"metadata": {"managedFields": a}}))
        }
        _ => entries_of(old_v),
    };
    let new_set = field_set(new, rt);
    let old_set = field_set(old_v, rt);
    let changed: FieldSet = new_set
        .iter()
        .filter(|p| get_at(old_v, p) != get_at(new, p))
        .chain(old_set.difference(&new_set))
        .cloned()
        .collect();
    for e in entries.iter_mut() {
        e.fields.retain(|p| !changed.contains(p));
    }
    let mine: FieldSet = changed.intersection(&new_set).cloned().collect();
    if !mine.is_empty() {
        let api_version = new
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        match entries
            .iter_mut()
            .find(|e| e.manager == manager && e.operation == "Update" && e.subresource.is_none())
        {
            Some(e) => {
                e.fields.extend(mine);
                e.time = now_rfc3339();
            }
            None => entries.push(Entry {
                manager: manager.to_string(),
                operation: "Update".into(),
                api_version,
                time: now_rfc3339(),
                subresource: None,
                fields: mine,
            }),
        }
    }
    store_entries(new, &entries);
}

/// Server-side apply of `applied` by `manager` onto `live` (None: create).
/// Returns the merged object (managedFields updated) or a 409 Conflict Status.
pub fn apply(
    rt: &ResourceType,
    manager: &str,
    force: bool,
    live: Option<&Value>,
    applied: &Value,
) -> Result<Value, ApiError> {
    let mut applied = applied.clone();
    strip_directives(&mut applied);
    let mut result = live.cloned().unwrap_or_else(|| {
        json!({"apiVersion": applied.get("apiVersion"), "kind": applied.get("kind"), "metadata": {}})
    });
    let mut entries = entries_of(&result);
    let applied_set = field_set(&applied, rt);
    let is_mine =
        |e: &Entry| e.manager == manager && e.operation == "Apply" && e.subresource.is_none();

    // Conflicts: fields another manager owns with a different value than the one applied.
    let mut conflicts: Vec<(String, String, String)> = Vec::new();
    for p in &applied_set {
        for e in entries.iter().filter(|e| !is_mine(e)) {
            if owns(&e.fields, p) && get_at(&result, p) != get_at(&applied, p) {
                conflicts.push((e.manager.clone(), e.api_version.clone(), path_string(p)));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(m, av, f)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\" using {av}"), "field": f}))
            .collect();
        let lines: Vec<String> = conflicts
            .iter()
            .map(|(m, av, f)| format!("- conflict with \"{m}\" using {av}: {f}"))
            .collect();
        let n = conflicts.len();
        let message = if n == 1 {
            format!("Apply failed with 1 conflict: {}", &lines[0][2..])
        } else {
            format!("Apply failed with {n} conflicts: {}", lines.join("\n"))
        };
        return Err(ApiError::new(409, "Conflict", message).with_details(json!({"causes": causes})));
    }
    if force {
        for e in entries.iter_mut().filter(|e| !is_mine(e)) {
            e.fields.retain(|p| {
                !applied_set
                    .iter()
                    .any(|a| a.starts_with(p) || p.starts_with(a))
            });
        }
    }

    // Fields this manager applied before, no longer applies, and nobody else owns: removed.
    let previous: FieldSet = entries
        .iter()
        .filter(|e| is_mine(e))
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    for p in previous.difference(&applied_set) {
        let owned_elsewhere = entries
            .iter()
            .filter(|e| !is_mine(e))
            .any(|e| owns(&e.fields, p));
        if !owned_elsewhere {
            remove_at(&mut result, p);
        }
    }

    let mut body = applied.clone();
    if let Some(m) = body.as_object_mut() {
        // Identity and bookkeeping stay the server's; status is not applied through the main resource.
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.retain(|k, _| {
                OWNED_METADATA.contains(&k.as_str()) || k == "name" || k == "namespace"
            });
        }
        if rt.has_status {
            m.remove("status");
        }
    }
    strategic_merge_patch(&mut result, &body);

    let api_version = applied
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    entries.retain(|e| !is_mine(e));
    entries.push(Entry {
        manager: manager.to_string(),
        operation: "Apply".into(),
        api_version,
        time: now_rfc3339(),
        subresource: None,
        fields: applied_set,
    });
    store_entries(&mut result, &entries);
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::find_plural;

    #[test]
    fn fields_v1_round_trip() {
        let rt = find_plural("deployments").unwrap();
        let obj = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "labels": {"a": "1"}},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "app", "image": "x", "args": ["a"]}]}}},
            "status": {"replicas": 1}});
        let set = field_set(&obj, rt);
        let v1 = to_fields_v1(&set);
        assert_eq!(
            v1,
            json!({"f:metadata": {"f:labels": {"f:a": {}}},
                   "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {".": {}, "f:args": {}, "f:image": {}, "f:name": {}}}}}}})
        );
        assert_eq!(from_fields_v1(&v1), set);
        let p: Vec<String> = vec![
            "f:spec".into(),
            "f:template".into(),
            "f:spec".into(),
            "f:containers".into(),
            "k:{\"name\":\"app\"}".into(),
            "f:image".into(),
        ];
        assert_eq!(get_at(&obj, &p), Some(&json!("x")));
        assert_eq!(
            path_string(&p),
            ".spec.template.spec.containers[name=\"app\"].image"
        );
    }
}
