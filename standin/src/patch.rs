//! PATCH bodies: JSON merge patch (RFC 7386), a strategic-merge approximation and JSON patch (RFC 6902).

use serde_json::{Map, Value};

/// RFC 7386 JSON merge patch: objects merge recursively, `null` deletes, everything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// The merge keys of the associative lists the stand-in knows (by field name), as in the
/// `patchMergeKey` tags of k8s.io/api. Lists not named here are atomic (replaced).
pub fn merge_keys(field: &str) -> Option<&'static [&'static str]> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "secrets" => &["name"],
        "volumeMounts" | "volumeDevices" => &["mountPath"],
        "ports" => &["containerPort", "port", "protocol"],
        "conditions" => &["type"],
        "ownerReferences" => &["uid"],
        "hostAliases" => &["ip"],
        "tolerations" | "args" | "command" => return None,
        _ => return None,
    })
}

/// Identity of an associative-list item: the values of whichever merge keys it carries.
pub fn item_key(keys: &[&str], item: &Value) -> Option<Map<String, Value>> {
    let mut m = Map::new();
    for k in keys {
        if let Some(v) = item.get(*k) {
            if *k == "protocol" {
                continue; // defaulted by the real server; matching on it would split TCP/unset items
            }
            m.insert((*k).to_string(), v.clone());
        }
    }
    if m.is_empty() {
        None
    } else {
        Some(m)
    }
}

/// Strategic merge patch, simplified: JSON-merge semantics, except that lists of objects
/// named in [`merge_keys`] merge item-by-item on their key, `$patch: delete|replace` directives
/// are honoured, and the bookkeeping directives (`$retainKeys`, `$setElementOrder/…`,
/// `$deleteFromPrimitiveList/…`) are applied loosely and never stored.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut clean = patch.clone();
        strip_directives(&mut clean);
        *target = clean;
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("object");
    if let Some(Value::Array(retain)) = p.get("$retainKeys") {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        t.retain(|k, _| keep.contains(&k.as_str()) || p.contains_key(k));
    }
    for (k, v) in p {
        if k.starts_with('$') {
            if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
                if let (Some(Value::Array(cur)), Value::Array(del)) = (t.get_mut(field), v) {
                    cur.retain(|x| !del.contains(x));
                }
            }
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        if v.get("$patch").and_then(Value::as_str) == Some("delete") {
            t.remove(k);
            continue;
        }
        match (t.get_mut(k), v, merge_keys(k)) {
            (Some(Value::Array(cur)), Value::Array(items), Some(keys))
                if items.iter().all(Value::is_object) && cur.iter().all(Value::is_object) =>
            {
                merge_list(cur, items, keys);
            }
            (Some(cur), Value::Object(_), _) if cur.is_object() => {
                strategic_merge_patch(cur, v);
            }
            _ => {
                let mut clean = v.clone();
                strip_directives(&mut clean);
                t.insert(k.clone(), clean);
            }
        }
    }
}

fn merge_list(cur: &mut Vec<Value>, items: &[Value], keys: &[&str]) {
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *cur = items
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .cloned()
            .collect();
        cur.iter_mut().for_each(strip_directives);
        return;
    }
    for item in items {
        let key = item_key(keys, item);
        let pos = key.as_ref().and_then(|k| {
            cur.iter()
                .position(|c| item_key(keys, c).as_ref() == Some(k))
        });
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                cur.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic_merge_patch(&mut cur[i], item),
            (None, false) => {
                let mut clean = item.clone();
                strip_directives(&mut clean);
                cur.push(clean);
            }
        }
    }
}

/// Removes every `$…` directive key, recursively.
pub fn strip_directives(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !k.starts_with('$'));
            m.values_mut().for_each(strip_directives);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_directives),
        _ => {}
    }
}

fn unescape(tok: &str) -> String {
    tok.replace("~1", "/").replace("~0", "~")
}

fn split_pointer(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Ok(vec![]);
    }
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| format!("invalid JSON pointer {path:?}"))?;
    Ok(rest.split('/').map(unescape).collect())
}

fn parent_mut<'a>(doc: &'a mut Value, toks: &[String]) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for t in toks {
        cur = match cur {
            Value::Object(m) => m
                .get_mut(t)
                .ok_or_else(|| format!("path element {t:?} not found"))?,
            Value::Array(a) => {
                let i: usize = t
                    .parse()
                    .map_err(|_| format!("invalid array index {t:?}"))?;
                a.get_mut(i)
                    .ok_or_else(|| format!("array index {i} out of range"))?
            }
            _ => return Err(format!("cannot descend into a scalar at {t:?}")),
        };
    }
    Ok(cur)
}

fn add(doc: &mut Value, path: &str, value: Value, replace_only: bool) -> Result<(), String> {
    let toks = split_pointer(path)?;
    let Some((last, parents)) = toks.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent_mut(doc, parents)? {
        Value::Object(m) => {
            if replace_only && !m.contains_key(last) {
                return Err(format!(
                    "replace operation does not apply: doc is missing key: {path}"
                ));
            }
            m.insert(last.clone(), value);
        }
        Value::Array(a) => {
            if last == "-" && !replace_only {
                a.push(value);
            } else {
                let i: usize = last
                    .parse()
                    .map_err(|_| format!("invalid array index {last:?}"))?;
                if replace_only {
                    *a.get_mut(i)
                        .ok_or_else(|| format!("array index {i} out of range"))? = value;
                } else if i <= a.len() {
                    a.insert(i, value);
                } else {
                    return Err(format!("array index {i} out of range"));
                }
            }
        }
        _ => return Err(format!("cannot add to a scalar at {path}")),
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let toks = split_pointer(path)?;
    let (last, parents) = toks.split_last().ok_or("cannot remove the document root")?;
    match parent_mut(doc, parents)? {
        Value::Object(m) => m
            .remove(last)
            .ok_or_else(|| format!("remove operation does not apply: doc is missing path: {path}")),
        Value::Array(a) => {
            let i: usize = last
                .parse()
                .map_err(|_| format!("invalid array index {last:?}"))?;
            if i < a.len() {
                Ok(a.remove(i))
            } else {
                Err(format!("array index {i} out of range"))
            }
        }
        _ => Err(format!("cannot remove from a scalar at {path}")),
    }
}

fn get<'a>(doc: &'a Value, path: &str) -> Result<&'a Value, String> {
    let toks = split_pointer(path)?;
    let ptr: String = toks
        .iter()
        .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
        .collect();
    doc.pointer(&ptr)
        .ok_or_else(|| format!("path {path:?} not found"))
}

/// Applies an RFC 6902 JSON patch (add, remove, replace, move, copy, test).
pub fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops
        .as_array()
        .ok_or("a JSON patch must be an array of operations")?;
    for op in ops {
        let kind = op
            .get("op")
            .and_then(Value::as_str)
            .ok_or("operation lacks \"op\"")?;
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or("operation lacks \"path\"")?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| format!("{kind} operation lacks \"value\""))
        };
        let from = || {
            op.get("from")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{kind} operation lacks \"from\""))
        };
        match kind {
            "add" => add(doc, path, value()?, false)?,
            "replace" => add(doc, path, value()?, true)?,
            "remove" => {
                remove(doc, path)?;
            }
            "move" => {
                let v = remove(doc, from()?)?;
                add(doc, path, v, false)?;
            }
            "copy" => {
                let v = get(doc, from()?)?.clone();
                add(doc, path, v, false)?;
            }
            "test" => {
                let want = value()?;
                let got = get(doc, path)?;
                if *got != want {
                    return Err(format!("testing value {path} failed"));
                }
            }
            other => return Err(format!("unknown JSON patch operation {other:?}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge() {
        let mut t = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge_patch(&mut t, &json!({"a": {"b": null, "d": 3}, "l": [3]}));
        assert_eq!(t, json!({"a": {"c": 2, "d": 3}, "l": [3]}));
    }

    #[test]
    fn strategic() {
        let mut t = json!({"spec": {"containers": [{"name": "a", "image": "x", "ports": [{"containerPort": 80}]}, {"name": "b", "image": "y"}]}});
        strategic_merge_patch(
            &mut t,
            &json!({"spec": {"$setElementOrder/containers": [{"name": "a"}], "containers": [{"name": "a", "image": "z"}, {"name": "b", "$patch": "delete"}]}}),
        );
        assert_eq!(
            t,
            json!({"spec": {"containers": [{"name": "a", "image": "z", "ports": [{"containerPort": 80}]}]}})
        );
    }

    #[test]
    fn jsonpatch() {
        let mut d = json!({"a": [1, 2], "b": {"c": "d"}});
        json_patch(
            &mut d,
            &json!([
                {"op": "test", "path": "/b/c", "value": "d"},
                {"op": "add", "path": "/a/-", "value": 3},
                {"op": "replace", "path": "/b/c", "value": "e"},
                {"op": "copy", "from": "/b", "path": "/f"},
                {"op": "move", "from": "/f", "path": "/g"},
                {"op": "remove", "path": "/a/0"}
            ]),
        )
        .unwrap();
        assert_eq!(d, json!({"a": [2, 3], "b": {"c": "e"}, "g": {"c": "e"}}));
        assert!(json_patch(
            &mut d,
            &json!([{"op": "test", "path": "/b/c", "value": "x"}])
        )
        .is_err());
    }
}
