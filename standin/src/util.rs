//! Small helpers: timestamps, uids, `Status` objects, name validation.

use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// RFC3339 UTC timestamp with second precision (`2024-01-02T03:04:05Z`), like `metav1.Time`.
pub fn now_rfc3339() -> String {
    format_timestamp(jiff::Timestamp::now())
}

/// Formats unix seconds as RFC3339 `Z` (out-of-range values clamp to the epoch).
pub fn format_rfc3339(secs: i64) -> String {
    format_timestamp(jiff::Timestamp::from_second(secs).unwrap_or(jiff::Timestamp::UNIX_EPOCH))
}

fn format_timestamp(t: jiff::Timestamp) -> String {
    // Second precision, `Z` suffix: what metav1.Time serialises to.
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

static UID_COUNTER: AtomicU64 = AtomicU64::new(1);

/// A fresh UUID-shaped uid (v4 layout; unique per process via time + counter mixing).
pub fn new_uid() -> String {
    let n = UID_COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let a = splitmix(t ^ n.rotate_left(32) ^ (std::process::id() as u64));
    let b = splitmix(a ^ n);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        (a >> 32) as u32,
        (a >> 16) as u16,
        (a & 0xfff) as u16,
        ((b >> 48) as u16 & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

/// Random-ish lowercase alphanumeric suffix (for generateName and pod-template-hash).
pub fn random_suffix(len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut x = splitmix(UID_COUNTER.fetch_add(1, Ordering::Relaxed) ^ 0x5eed);
    (0..len)
        .map(|_| {
            x = splitmix(x);
            ALPHABET[(x % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

/// Stable short hash of a string (used for pod-template-hash).
pub fn short_hash(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    format!("{:x}", splitmix(h) & 0xff_ffff_ffff)
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// An API error, rendered as a `metav1.Status`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }
    /// `<resource> "<name>" not found`.
    pub fn not_found(resource: &str, group: &str, name: &str) -> Self {
        let qualified = qualified(resource, group);
        ApiError::new(404, "NotFound", format!("{qualified} \"{name}\" not found"))
            .with_details(json!({"name": name, "group": group, "kind": resource}))
    }
    pub fn already_exists(resource: &str, group: &str, name: &str) -> Self {
        let qualified = qualified(resource, group);
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{qualified} \"{name}\" already exists"),
        )
        .with_details(json!({"name": name, "group": group, "kind": resource}))
    }
    pub fn conflict(resource: &str, group: &str, name: &str) -> Self {
        let qualified = qualified(resource, group);
        ApiError::new(409, "Conflict", format!("Operation cannot be fulfilled on {qualified} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"))
            .with_details(json!({"name": name, "group": group, "kind": resource}))
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message)
    }
    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<(String, String)>) -> Self {
        let msgs: Vec<String> = causes.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        let causes_json: Vec<Value> = causes
            .iter()
            .map(|(f, m)| json!({"reason": "FieldValueInvalid", "message": m, "field": f}))
            .collect();
        let qualified = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        ApiError::new(
            422,
            "Invalid",
            format!("{qualified} \"{name}\" is invalid: {}", msgs.join(", ")),
        )
        .with_details(json!({"name": name, "group": group, "kind": kind, "causes": causes_json}))
    }
    /// For a status injected by a fault: a reason that fits the code.
    pub fn for_code(code: u16) -> Self {
        let (reason, message) = match code {
            400 => ("BadRequest", "the server rejected our request for an unknown reason"),
            401 => ("Unauthorized", "Unauthorized"),
            403 => ("Forbidden", "forbidden: injected fault"),
            404 => ("NotFound", "the server could not find the requested resource"),
            405 => ("MethodNotAllowed", "the server does not allow this method on the requested resource"),
            409 => ("Conflict", "the object has been modified; please apply your changes to the latest version and try again"),
            410 => ("Expired", "too old resource version"),
            415 => ("UnsupportedMediaType", "the body of the request was in an unknown format"),
            422 => ("Invalid", "the object is invalid"),
            429 => ("TooManyRequests", "the server has received too many requests and has asked us to try again later"),
            503 => ("ServiceUnavailable", "the server is currently unable to handle the request"),
            504 => ("Timeout", "the server was unable to return a response in the time allotted"),
            _ => ("InternalError", "an error on the server (\"injected fault\") has prevented the request from succeeding"),
        };
        ApiError::new(code, reason, message)
    }
    pub fn to_status(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        if (self.code == 429 || self.code == 503) && v["details"]["retryAfterSeconds"].is_null() {
            let d = v.get("details").cloned().unwrap_or_else(|| json!({}));
            let mut d = d;
            d["retryAfterSeconds"] = json!(1);
            v["details"] = d;
        }
        v
    }
}

fn qualified(resource: &str, group: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

/// DNS-1123 subdomain check (what most resource names must satisfy).
pub fn is_dns_subdomain(s: &str) -> bool {
    if s.is_empty() || s.len() > 253 {
        return false;
    }
    s.split('.').all(|label| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    })
}

/// A qualified name (label value, or the name part of a label key): at most 63
/// characters of `[A-Za-z0-9-_.]`, starting and ending with an alphanumeric.
fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Why a label key/value pair is invalid, as the API words it; None when valid.
pub fn label_error(key: &str, value: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let key_ok = is_qualified_name_part(name)
        && prefix.is_none_or(|p| p.len() <= 253 && is_dns_subdomain(p));
    if !key_ok {
        return Some(format!(
            "Invalid value: \"{key}\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        ));
    }
    if !value.is_empty() && !is_qualified_name_part(value) {
        return Some(format!(
            "Invalid value: \"{value}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (max 63 characters)"
        ));
    }
    None
}

/// DNS-1123 label check (namespaces, services).
pub fn is_dns_label(s: &str) -> bool {
    !s.contains('.') && s.len() <= 63 && is_dns_subdomain(s)
}

/// Percent-decoding for query strings (`+` means space).
pub fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a query string into decoded key/value pairs (in order).
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (url_decode(k), url_decode(v)),
            None => (url_decode(p), String::new()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn rfc3339() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
    #[test]
    fn names() {
        assert!(is_dns_subdomain("sh.helm.release.v1.demo.v1"));
        assert!(!is_dns_subdomain("Bad_Name"));
        assert_eq!(label_error("guarded-upgrade.io/lock", "soft"), None);
        assert_eq!(label_error("name", ""), None);
        assert!(label_error("guarded-upgrade.io/reason", "b32.").is_some());
        assert!(label_error("a/b/c", "x").is_some());
        assert!(label_error("k", &"x".repeat(64)).is_some());
        assert!(label_error("k", "has space").is_some());
        assert!(!is_dns_label("a.b"));
    }
    #[test]
    fn decode() {
        assert_eq!(url_decode("a%3Db%2Cc+d"), "a=b,c d");
        assert_eq!(url_decode("50%"), "50%");
    }
}
