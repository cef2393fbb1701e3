//! Decoding of Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`).
//!
//! Helm's typed clients (release storage, namespace creation) send Secrets, ConfigMaps and
//! Namespaces as protobuf and never retry with JSON, so the stand-in decodes the few message
//! types it needs into the JSON form the store keeps. The field numbers follow
//! `k8s.io/api/core/v1/generated.proto` and `k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto`.
//! The envelope is the 4-byte magic `k8s\0` followed by a `runtime.Unknown`.

use crate::util::format_rfc3339;
use base64::Engine;
use serde_json::{json, Map, Value};

/// The magic prefix of every Kubernetes protobuf payload.
pub const MAGIC: &[u8] = b"k8s\x00";

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    fn varint(&mut self) -> Result<u64, String> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }
    /// Next (field number, value), or None at the end.
    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (num, wt) = (key >> 3, key & 7);
        let f = match wt {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.skip(8)?;
                Field::Fixed
            }
            2 => {
                let len = self.varint()? as usize;
                let end = self.pos.checked_add(len).ok_or("length overflow")?;
                let s = self.buf.get(self.pos..end).ok_or("truncated bytes")?;
                self.pos = end;
                Field::Bytes(s)
            }
            5 => {
                self.skip(4)?;
                Field::Fixed
            }
            _ => return Err(format!("unsupported wire type {wt}")),
        };
        Ok(Some((num, f)))
    }
    fn skip(&mut self, n: usize) -> Result<(), String> {
        if self.pos + n > self.buf.len() {
            return Err("truncated fixed field".into());
        }
        self.pos += n;
        Ok(())
    }
}

fn string(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "invalid utf-8 in string field".to_string())
}

fn bytes_of(f: Field<'_>) -> Result<&[u8], String> {
    match f {
        Field::Bytes(b) => Ok(b),
        _ => Err("expected a length-delimited field".into()),
    }
}

fn int_of(f: Field<'_>) -> Result<u64, String> {
    match f {
        Field::Varint(v) => Ok(v),
        _ => Err("expected a varint field".into()),
    }
}

/// Decodes a map entry message (key=1, value=2).
fn map_entry(b: &[u8]) -> Result<(String, Vec<u8>), String> {
    let mut r = Reader::new(b);
    let (mut k, mut v) = (String::new(), Vec::new());
    while let Some((n, f)) = r.next()? {
        match n {
            1 => k = string(bytes_of(f)?)?,
            2 => v = bytes_of(f)?.to_vec(),
            _ => {}
        }
    }
    Ok((k, v))
}

fn time(b: &[u8]) -> Result<Value, String> {
    let mut r = Reader::new(b);
    let mut secs = 0i64;
    while let Some((n, f)) = r.next()? {
        if n == 1 {
            secs = int_of(f)? as i64;
        }
    }
    Ok(json!(format_rfc3339(secs)))
}

fn owner_ref(b: &[u8]) -> Result<Value, String> {
    let mut r = Reader::new(b);
    let mut m = Map::new();
    while let Some((n, f)) = r.next()? {
        match n {
            1 => drop(m.insert("kind".into(), json!(string(bytes_of(f)?)?))),
            3 => drop(m.insert("name".into(), json!(string(bytes_of(f)?)?))),
            4 => drop(m.insert("uid".into(), json!(string(bytes_of(f)?)?))),
            5 => drop(m.insert("apiVersion".into(), json!(string(bytes_of(f)?)?))),
            6 => drop(m.insert("controller".into(), json!(int_of(f)? != 0))),
            7 => drop(m.insert("blockOwnerDeletion".into(), json!(int_of(f)? != 0))),
            _ => {}
        }
    }
    Ok(Value::Object(m))
}

fn managed_fields_entry(b: &[u8]) -> Result<Value, String> {
    let mut r = Reader::new(b);
    let mut m = Map::new();
    while let Some((n, f)) = r.next()? {
        match n {
            1 => drop(m.insert("manager".into(), json!(string(bytes_of(f)?)?))),
            2 => drop(m.insert("operation".into(), json!(string(bytes_of(f)?)?))),
            3 => drop(m.insert("apiVersion".into(), json!(string(bytes_of(f)?)?))),
            4 => drop(m.insert("time".into(), time(bytes_of(f)?)?)),
            6 => drop(m.insert("fieldsType".into(), json!(string(bytes_of(f)?)?))),
            7 => {
                // FieldsV1{Raw=1}: the raw JSON of the field set.
                let mut inner = Reader::new(bytes_of(f)?);
                while let Some((n2, f2)) = inner.next()? {
                    if n2 == 1 {
                        let raw: Value = serde_json::from_slice(bytes_of(f2)?)
                            .map_err(|e| format!("fieldsV1 is not JSON: {e}"))?;
                        m.insert("fieldsV1".into(), raw);
                    }
                }
            }
            8 => drop(m.insert("subresource".into(), json!(string(bytes_of(f)?)?))),
            _ => {}
        }
    }
    Ok(Value::Object(m))
}

fn object_meta(b: &[u8]) -> Result<Value, String> {
    let mut r = Reader::new(b);
    let mut m = Map::new();
    let mut labels = Map::new();
    let mut annotations = Map::new();
    let mut owners = Vec::new();
    let mut finalizers = Vec::new();
    let mut managed = Vec::new();
    while let Some((n, f)) = r.next()? {
        match n {
            1 => drop(m.insert("name".into(), json!(string(bytes_of(f)?)?))),
            2 => drop(m.insert("generateName".into(), json!(string(bytes_of(f)?)?))),
            3 => drop(m.insert("namespace".into(), json!(string(bytes_of(f)?)?))),
            4 => drop(m.insert("selfLink".into(), json!(string(bytes_of(f)?)?))),
            5 => drop(m.insert("uid".into(), json!(string(bytes_of(f)?)?))),
            6 => drop(m.insert("resourceVersion".into(), json!(string(bytes_of(f)?)?))),
            7 => drop(m.insert("generation".into(), json!(int_of(f)? as i64))),
            8 => drop(m.insert("creationTimestamp".into(), time(bytes_of(f)?)?)),
            9 => drop(m.insert("deletionTimestamp".into(), time(bytes_of(f)?)?)),
            10 => drop(m.insert(
                "deletionGracePeriodSeconds".into(),
                json!(int_of(f)? as i64),
            )),
            11 => {
                let (k, v) = map_entry(bytes_of(f)?)?;
                labels.insert(k, json!(string(&v)?));
            }
            12 => {
                let (k, v) = map_entry(bytes_of(f)?)?;
                annotations.insert(k, json!(string(&v)?));
            }
            13 => owners.push(owner_ref(bytes_of(f)?)?),
            14 => finalizers.push(json!(string(bytes_of(f)?)?)),
            17 => managed.push(managed_fields_entry(bytes_of(f)?)?),
            _ => {}
        }
    }
    // Empty strings are proto3 defaults: drop them like the JSON omitempty form would.
    m.retain(|_, v| v.as_str() != Some(""));
    if !labels.is_empty() {
        m.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        m.insert("annotations".into(), Value::Object(annotations));
    }
    if !owners.is_empty() {
        m.insert("ownerReferences".into(), Value::Array(owners));
    }
    if !finalizers.is_empty() {
        m.insert("finalizers".into(), Value::Array(finalizers));
    }
    if !managed.is_empty() {
        m.insert("managedFields".into(), Value::Array(managed));
    }
    Ok(Value::Object(m))
}

fn secret(b: &[u8]) -> Result<Map<String, Value>, String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut r = Reader::new(b);
    let mut m = Map::new();
    let (mut data, mut string_data) = (Map::new(), Map::new());
    while let Some((n, f)) = r.next()? {
        match n {
            1 => drop(m.insert("metadata".into(), object_meta(bytes_of(f)?)?)),
            2 => {
                let (k, v) = map_entry(bytes_of(f)?)?;
                data.insert(k, json!(b64.encode(v)));
            }
            3 => drop(m.insert("type".into(), json!(string(bytes_of(f)?)?))),
            4 => {
                let (k, v) = map_entry(bytes_of(f)?)?;
                string_data.insert(k, json!(string(&v)?));
            }
            5 => drop(m.insert("immutable".into(), json!(int_of(f)? != 0))),
            _ => {}
        }
    }
    if !data.is_empty() {
        m.insert("data".into(), Value::Object(data));
    }
    if !string_data.is_empty() {
        m.insert("stringData".into(), Value::Object(string_data));
    }
    Ok(m)
}

fn config_map(b: &[u8]) -> Result<Map<String, Value>, String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut r = Reader::new(b);
    let mut m = Map::new();
    let (mut data, mut binary) = (Map::new(), Map::new());
    while let Some((n, f)) = r.next()? {
        match n {
            1 => drop(m.insert("metadata".into(), object_meta(bytes_of(f)?)?)),
            2 => {
                let (k, v) = map_entry(bytes_of(f)?)?;
                data.insert(k, json!(string(&v)?));
            }
            3 => {
                let (k, v) = map_entry(bytes_of(f)?)?;
                binary.insert(k, json!(b64.encode(v)));
            }
            4 => drop(m.insert("immutable".into(), json!(int_of(f)? != 0))),
            _ => {}
        }
    }
    if !data.is_empty() {
        m.insert("data".into(), Value::Object(data));
    }
    if !binary.is_empty() {
        m.insert("binaryData".into(), Value::Object(binary));
    }
    Ok(m)
}

fn namespace(b: &[u8]) -> Result<Map<String, Value>, String> {
    let mut r = Reader::new(b);
    let mut m = Map::new();
    while let Some((n, f)) = r.next()? {
        match n {
            1 => drop(m.insert("metadata".into(), object_meta(bytes_of(f)?)?)),
            2 => {
                let mut fins = Vec::new();
                let mut sr = Reader::new(bytes_of(f)?);
                while let Some((n2, f2)) = sr.next()? {
                    if n2 == 1 {
                        fins.push(json!(string(bytes_of(f2)?)?));
                    }
                }
                m.insert("spec".into(), json!({"finalizers": fins}));
            }
            3 => {
                let mut sr = Reader::new(bytes_of(f)?);
                while let Some((n2, f2)) = sr.next()? {
                    if n2 == 1 {
                        m.insert("status".into(), json!({"phase": string(bytes_of(f2)?)?}));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(m)
}

/// Decodes a protobuf body (magic + `runtime.Unknown`) into the object's JSON form.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or("protobuf body lacks the k8s\\0 magic prefix")?;
    let mut r = Reader::new(rest);
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    while let Some((n, f)) = r.next()? {
        match n {
            1 => {
                let mut tr = Reader::new(bytes_of(f)?);
                while let Some((n2, f2)) = tr.next()? {
                    match n2 {
                        1 => api_version = string(bytes_of(f2)?)?,
                        2 => kind = string(bytes_of(f2)?)?,
                        _ => {}
                    }
                }
            }
            2 => raw = bytes_of(f)?,
            _ => {}
        }
    }
    let mut obj = match kind.as_str() {
        "Secret" => secret(raw)?,
        "ConfigMap" => config_map(raw)?,
        "Namespace" => namespace(raw)?,
        other => {
            return Err(format!(
                "protobuf decoding of kind {other:?} is not supported by the stand-in"
            ))
        }
    };
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(num: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![((num << 3) | 2) as u8, payload.len() as u8];
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn decodes_secret() {
        let meta = [
            field(1, b"s1"),
            field(11, &[field(1, b"owner"), field(2, b"helm")].concat()),
        ]
        .concat();
        let secret = [
            field(1, &meta),
            field(2, &[field(1, b"release"), field(2, b"abc")].concat()),
            field(3, b"helm.sh/release.v1"),
        ]
        .concat();
        let unknown = [
            field(1, &[field(1, b"v1"), field(2, b"Secret")].concat()),
            field(2, &secret),
        ]
        .concat();
        let body = [MAGIC, &unknown].concat();
        let v = decode(&body).unwrap();
        assert_eq!(v["kind"], "Secret");
        assert_eq!(v["metadata"]["name"], "s1");
        assert_eq!(v["metadata"]["labels"]["owner"], "helm");
        assert_eq!(v["data"]["release"], "YWJj");
        assert_eq!(v["type"], "helm.sh/release.v1");
        assert!(decode(b"junk").is_err());
        assert!(decode(&[MAGIC, &[0x0a, 0x7f][..]].concat()).is_err());
    }
}
