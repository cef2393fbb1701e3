//! Decoding and re-encoding Helm release records.
//!
//! A record's `release` data value is `base64(gzip(JSON))` (Helm's
//! `encodeRelease`). For a ConfigMap that string is the data value itself;
//! for a Secret the API adds another base64 layer, which kube-rs already
//! removes, so every decoder here takes the once-encoded text.
//!
//! Release JSON carries the user's values (`config`), often credentials.
//! Nothing in this module puts decoded content into an error message, and
//! [`ReleaseSummary`] never holds values, manifests or chart files.

/// The labels helm sets on every record itself (`pkg/storage/driver/util.go`,
/// systemLabels); every other label of a record is a custom label of the release.
pub(crate) const HELM_SYSTEM_LABELS: [&str; 6] = [
    "name",
    "owner",
    "status",
    "version",
    "createdAt",
    "modifiedAt",
];

use std::fmt;
use std::io::{Read, Write};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Largest decompressed release JSON we accept (64 MiB). Helm's own records
/// are below ~1 MiB compressed; anything inflating beyond this is corrupt or
/// a decompression bomb and is refused instead of exhausting memory.
pub const MAX_DECODED_RELEASE_BYTES: usize = 64 * 1024 * 1024;

/// Gzip magic plus the deflate method byte, as checked by Helm's decoder.
const GZIP_MAGIC: [u8; 3] = [0x1f, 0x8b, 0x08];

/// Why a release record could not be decoded or encoded. Messages never
/// include decoded content because release values may hold secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The record's `release` value is empty.
    #[error(
        "release record is empty: the `release` data key holds nothing; the record is corrupt, \
         inspect it with `helm history`"
    )]
    Empty,
    /// The text is not standard padded base64.
    #[error(
        "release record is not valid base64{}: expected the base64(gzip(JSON)) text Helm writes; \
         the record may be corrupt or not written by Helm",
        .offset.map(|o| format!(" (bad input at byte {o})")).unwrap_or_default()
    )]
    BadBase64 {
        /// Byte offset of the first bad symbol, when known.
        offset: Option<usize>,
    },
    /// The bytes start like gzip but are not a valid gzip stream.
    #[error(
        "release record is not a valid gzip stream ({0}); the record is corrupt, inspect it with \
         `helm history`"
    )]
    BadGzip(String),
    /// The gzip stream ends early.
    #[error(
        "release record's gzip stream is truncated; the record is incomplete or corrupt, inspect \
         it with `helm history`"
    )]
    TruncatedGzip,
    /// Decompressing would exceed the size cap.
    #[error(
        "release record decompresses to more than {limit} bytes, the safety cap; refusing to \
         decode it (corrupt record or decompression bomb)"
    )]
    TooLarge {
        /// The cap that was hit, in bytes.
        limit: usize,
    },
    /// The payload is not the JSON shape we expect.
    #[error(
        "release record is not valid release JSON ({category} error at line {line}, column \
         {column}); the record may be corrupt or from an unsupported Helm version"
    )]
    BadJson {
        /// `syntax`, `data` (wrong type), `eof` or `io`.
        category: &'static str,
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column of the problem.
        column: usize,
    },
    /// A field Helm always writes is absent.
    #[error(
        "release record has no `{0}` field; the record is corrupt or not a Helm release, inspect \
         it with `helm history`"
    )]
    MissingField(&'static str),
    /// Re-encoding failed.
    #[error("could not encode the release record: {0}")]
    Encode(String),
}

/// Helm release status (`info.status`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReleaseStatus {
    /// `unknown`
    Unknown,
    /// `deployed`
    Deployed,
    /// `uninstalled`
    Uninstalled,
    /// `superseded`
    Superseded,
    /// `failed`
    Failed,
    /// `uninstalling`
    Uninstalling,
    /// `pending-install`
    PendingInstall,
    /// `pending-upgrade`
    PendingUpgrade,
    /// `pending-rollback`
    PendingRollback,
    /// Any status this tool does not know, kept verbatim.
    Other(String),
}

impl ReleaseStatus {
    /// Maps Helm's status text; unknown text becomes [`ReleaseStatus::Other`].
    pub fn parse(text: &str) -> ReleaseStatus {
        match text {
            "unknown" => ReleaseStatus::Unknown,
            "deployed" => ReleaseStatus::Deployed,
            "uninstalled" => ReleaseStatus::Uninstalled,
            "superseded" => ReleaseStatus::Superseded,
            "failed" => ReleaseStatus::Failed,
            "uninstalling" => ReleaseStatus::Uninstalling,
            "pending-install" => ReleaseStatus::PendingInstall,
            "pending-upgrade" => ReleaseStatus::PendingUpgrade,
            "pending-rollback" => ReleaseStatus::PendingRollback,
            other => ReleaseStatus::Other(other.to_string()),
        }
    }

    /// Helm's text for this status, e.g. `pending-upgrade`.
    pub fn as_str(&self) -> &str {
        match self {
            ReleaseStatus::Unknown => "unknown",
            ReleaseStatus::Deployed => "deployed",
            ReleaseStatus::Uninstalled => "uninstalled",
            ReleaseStatus::Superseded => "superseded",
            ReleaseStatus::Failed => "failed",
            ReleaseStatus::Uninstalling => "uninstalling",
            ReleaseStatus::PendingInstall => "pending-install",
            ReleaseStatus::PendingUpgrade => "pending-upgrade",
            ReleaseStatus::PendingRollback => "pending-rollback",
            ReleaseStatus::Other(s) => s,
        }
    }

    /// True for `pending-install`, `pending-upgrade` and `pending-rollback`,
    /// the statuses that make `helm upgrade` refuse (Helm's `IsPending`).
    pub fn is_pending(&self) -> bool {
        matches!(
            self,
            ReleaseStatus::PendingInstall
                | ReleaseStatus::PendingUpgrade
                | ReleaseStatus::PendingRollback
        )
    }
}

impl fmt::Display for ReleaseStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ReleaseStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ReleaseStatus {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(ReleaseStatus::parse(&text))
    }
}

/// The metadata of one release record that decisions need. Never contains
/// values (`config`), manifests, hooks or chart files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseSummary {
    /// Release name.
    pub name: String,
    /// Release namespace (empty if the record omits it).
    pub namespace: String,
    /// Revision number (`version` in Helm's JSON).
    pub revision: u64,
    /// `info.status`.
    pub status: ReleaseStatus,
    /// `chart.metadata.name`.
    pub chart_name: Option<String>,
    /// `chart.metadata.version`, the chart version we compare.
    pub chart_version: Option<String>,
    /// `chart.metadata.appVersion`.
    pub app_version: Option<String>,
    /// `info.description`.
    pub description: Option<String>,
    /// `info.first_deployed` (RFC 3339 text as Helm wrote it).
    pub first_deployed: Option<String>,
    /// `info.last_deployed` (RFC 3339 text as Helm wrote it).
    pub last_deployed: Option<String>,
    /// `apply_method` (Helm 4: `ssa` or `csa`; absent means client-side).
    pub apply_method: Option<String>,
}

// Only the fields we need are declared: serde skips every other key
// (`config`, `manifest`, `hooks`, `chart.templates`, `chart.files`,
// `chart.values`, ...) with `IgnoredAny`, which walks the JSON without
// building values, so secrets are never materialized.
#[derive(Deserialize)]
struct RawRelease {
    name: Option<String>,
    namespace: Option<String>,
    version: Option<u64>,
    info: Option<RawInfo>,
    chart: Option<RawChart>,
    apply_method: Option<String>,
}

#[derive(Deserialize)]
struct RawInfo {
    status: Option<String>,
    description: Option<String>,
    first_deployed: Option<String>,
    last_deployed: Option<String>,
}

#[derive(Deserialize)]
struct RawChart {
    metadata: Option<RawMetadata>,
}

#[derive(Deserialize)]
struct RawMetadata {
    name: Option<String>,
    version: Option<String>,
    #[serde(rename = "appVersion")]
    app_version: Option<String>,
}

/// Decodes a record's `release` value (base64, then gunzip when the bytes
/// start with the gzip magic, else plain JSON) into its summary.
pub fn decode_release(encoded: &[u8]) -> Result<ReleaseSummary, DecodeError> {
    let json = decode_to_json_bytes(encoded, MAX_DECODED_RELEASE_BYTES)?;
    let raw: RawRelease = serde_json::from_slice(&json).map_err(json_error)?;
    let info = raw.info.ok_or(DecodeError::MissingField("info"))?;
    let metadata = raw.chart.and_then(|c| c.metadata);
    let (chart_name, chart_version, app_version) = match metadata {
        Some(m) => (m.name, m.version, m.app_version),
        None => (None, None, None),
    };
    Ok(ReleaseSummary {
        name: raw.name.ok_or(DecodeError::MissingField("name"))?,
        namespace: raw.namespace.unwrap_or_default(),
        revision: raw.version.ok_or(DecodeError::MissingField("version"))?,
        status: ReleaseStatus::parse(
            &info
                .status
                .ok_or(DecodeError::MissingField("info.status"))?,
        ),
        chart_name,
        chart_version,
        app_version,
        description: info.description,
        first_deployed: info.first_deployed,
        last_deployed: info.last_deployed,
        apply_method: raw.apply_method,
    })
}

/// Decodes a record's `release` value into the full release JSON, keeping
/// key order, for rewriting with [`set_release_status`] and
/// [`encode_release_json`]. The result contains the user's values: never
/// print it.
pub fn decode_release_json(encoded: &[u8]) -> Result<serde_json::Value, DecodeError> {
    let json = decode_to_json_bytes(encoded, MAX_DECODED_RELEASE_BYTES)?;
    let value: serde_json::Value = serde_json::from_slice(&json).map_err(json_error)?;
    if !value.is_object() {
        return Err(DecodeError::BadJson {
            category: "data",
            line: 1,
            column: 1,
        });
    }
    Ok(value)
}

/// Encodes release JSON like Helm: JSON, gzip at best compression, standard
/// base64. The result is the ConfigMap value / the Secret's decoded value.
pub fn encode_release_json(value: &serde_json::Value) -> Result<String, DecodeError> {
    let json = serde_json::to_vec(value).map_err(|e| DecodeError::Encode(e.to_string()))?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&json)
        .map_err(|e| DecodeError::Encode(e.to_string()))?;
    let compressed = gz
        .finish()
        .map_err(|e| DecodeError::Encode(e.to_string()))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(compressed))
}

/// Sets `info.status` in release JSON, leaving everything else untouched.
pub fn set_release_status(value: &mut serde_json::Value, status: &str) -> Result<(), DecodeError> {
    let info = value
        .get_mut("info")
        .and_then(serde_json::Value::as_object_mut)
        .ok_or(DecodeError::MissingField("info"))?;
    info.insert(
        "status".to_string(),
        serde_json::Value::String(status.to_string()),
    );
    Ok(())
}

/// base64 -> (gunzip) -> JSON bytes, refusing output larger than `limit`.
fn decode_to_json_bytes(encoded: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    let text = encoded.trim_ascii();
    if text.is_empty() {
        return Err(DecodeError::Empty);
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| DecodeError::BadBase64 {
            offset: match e {
                base64::DecodeError::InvalidByte(o, _)
                | base64::DecodeError::InvalidLastSymbol(o, _) => Some(o),
                _ => None,
            },
        })?;
    if raw.is_empty() {
        return Err(DecodeError::Empty);
    }
    if !raw.starts_with(&GZIP_MAGIC) {
        // Records written before Helm compressed them are plain JSON.
        if raw.len() > limit {
            return Err(DecodeError::TooLarge { limit });
        }
        return Ok(raw);
    }
    gunzip_capped(&raw, limit)
}

/// Gunzips (all members, like Go's reader) into at most `limit` bytes; reads
/// one byte past the cap to detect overflow without inflating the rest.
fn gunzip_capped(compressed: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    let decoder = flate2::read::MultiGzDecoder::new(compressed);
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    decoder
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => DecodeError::TruncatedGzip,
            // flate2's messages describe the stream ("corrupt deflate
            // stream", "invalid gzip header"), never its content.
            _ => DecodeError::BadGzip(e.to_string()),
        })?;
    if out.len() > limit {
        return Err(DecodeError::TooLarge { limit });
    }
    Ok(out)
}

/// Converts a serde error without its message, which may quote input text.
fn json_error(e: serde_json::Error) -> DecodeError {
    use serde_json::error::Category;
    DecodeError::BadJson {
        category: match e.classify() {
            Category::Io => "io",
            Category::Syntax => "syntax",
            Category::Data => "data",
            Category::Eof => "eof",
        },
        line: e.line(),
        column: e.column(),
    }
}

/// One object of a release, as its manifest names it (no content kept: manifests hold
/// secrets).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ManifestObject {
    /// `apiVersion` (`apps/v1`, `v1`).
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, when the manifest sets one.
    pub namespace: Option<String>,
    /// A helm hook (`helm.sh/hook` annotation, or listed under `hooks`): helm does not give
    /// hooks its ownership annotations.
    pub hook: bool,
}

/// The objects of release JSON (from [`decode_release_json`]): every document of
/// `manifest`, then every hook. Documents without a kind or name (empty, comments) are
/// skipped. A document that is not YAML ends the reading with an error naming where (never
/// its content): the objects after it are unknown, so nothing may be claimed about them —
/// and serde_yaml's document iterator does not advance past a syntax error.
pub fn manifest_objects(release: &serde_json::Value) -> Result<Vec<ManifestObject>, String> {
    let mut out = Vec::new();
    let mut documents = |text: &str, hook: bool, place: &str| -> Result<(), String> {
        for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value = serde_yaml::Value::deserialize(document).map_err(|e| {
                let at = e
                    .location()
                    .map(|l| format!(", line {}", l.line()))
                    .unwrap_or_default();
                format!("{place}: document {} is not YAML{at}", index + 1)
            })?;
            let field = |v: &serde_yaml::Value, k: &str| {
                v.get(k).and_then(|x| x.as_str()).map(String::from)
            };
            let metadata = value.get("metadata").cloned().unwrap_or_default();
            let (Some(kind), Some(name)) = (field(&value, "kind"), field(&metadata, "name")) else {
                continue;
            };
            let annotated_hook = metadata
                .get("annotations")
                .and_then(|a| a.get("helm.sh/hook"))
                .is_some();
            out.push(ManifestObject {
                api_version: field(&value, "apiVersion").unwrap_or_default(),
                kind,
                name,
                namespace: field(&metadata, "namespace"),
                hook: hook || annotated_hook,
            });
        }
        Ok(())
    };
    if let Some(manifest) = release.get("manifest").and_then(|m| m.as_str()) {
        documents(manifest, false, "the manifest")?;
    }
    for (index, hook) in release
        .get("hooks")
        .and_then(|h| h.as_array())
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Some(manifest) = hook.get("manifest").and_then(|m| m.as_str()) {
            documents(manifest, true, &format!("hook {}", index + 1))?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use serde_json::json;

    const SECRET: &str = "hunter2";

    fn sample_json() -> serde_json::Value {
        json!({
            "name": "db",
            "info": {
                "first_deployed": "2024-01-02T03:04:05.123456789Z",
                "last_deployed": "2024-02-03T04:05:06Z",
                "deleted": "",
                "description": "Upgrade complete",
                "status": "deployed",
                "notes": "some notes"
            },
            "chart": {
                "metadata": {
                    "name": "postgresql",
                    "version": "12.1.2",
                    "description": "A chart",
                    "apiVersion": "v2",
                    "appVersion": "15.1.0",
                    "type": "application"
                },
                "lock": null,
                "templates": [{"name": "templates/secret.yaml", "data": "c2VjcmV0"}],
                "values": {"auth": {"password": SECRET}},
                "schema": null,
                "files": [{"name": "README.md", "data": "aGk="}]
            },
            "config": {"auth": {"password": SECRET}, "replicas": 3, "ratio": 0.1, "big": 12345678901234567890u64},
            "manifest": "---\napiVersion: v1\nkind: Secret\nstringData:\n  password: hunter2\n",
            "hooks": [{"name": "migrate", "manifest": "kind: Job"}],
            "version": 7,
            "namespace": "shared",
            "labels": {"team": "data"},
            "apply_method": "ssa"
        })
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap()
    }

    fn encode_plain(value: &serde_json::Value) -> String {
        STANDARD.encode(gzip(&serde_json::to_vec(value).unwrap()))
    }

    fn assert_no_secret(err: &DecodeError) {
        let msg = err.to_string();
        assert!(!msg.contains(SECRET), "error leaks content: {msg}");
        assert!(!format!("{err:?}").contains(SECRET), "debug leaks: {err:?}");
    }

    #[test]
    fn decodes_gzipped_record() {
        let encoded = encode_plain(&sample_json());
        let s = decode_release(encoded.as_bytes()).unwrap();
        assert_eq!(
            s,
            ReleaseSummary {
                name: "db".into(),
                namespace: "shared".into(),
                revision: 7,
                status: ReleaseStatus::Deployed,
                chart_name: Some("postgresql".into()),
                chart_version: Some("12.1.2".into()),
                app_version: Some("15.1.0".into()),
                description: Some("Upgrade complete".into()),
                first_deployed: Some("2024-01-02T03:04:05.123456789Z".into()),
                last_deployed: Some("2024-02-03T04:05:06Z".into()),
                apply_method: Some("ssa".into()),
            }
        );
        let out = serde_json::to_string(&s).unwrap();
        assert!(!out.contains(SECRET));
        assert!(out.contains("\"status\":\"deployed\""), "{out}");
    }

    #[test]
    fn decodes_plain_json_record_and_trims_whitespace() {
        let encoded = STANDARD.encode(serde_json::to_vec(&sample_json()).unwrap());
        let s = decode_release(format!("{encoded}\n").as_bytes()).unwrap();
        assert_eq!(s.revision, 7);
        assert_eq!(s.chart_version.as_deref(), Some("12.1.2"));
    }

    #[test]
    fn optional_fields_may_be_absent() {
        let v = json!({"name": "a", "version": 1, "info": {"status": "pending-install"}});
        let s = decode_release(encode_plain(&v).as_bytes()).unwrap();
        assert_eq!(s.status, ReleaseStatus::PendingInstall);
        assert_eq!(s.namespace, "");
        assert_eq!(s.chart_name, None);
        assert_eq!(s.chart_version, None);
        assert_eq!(s.apply_method, None);
        let v = json!({"name": "a", "version": 1, "info": {"status": "failed"}, "chart": {"metadata": null}});
        assert_eq!(
            decode_release(encode_plain(&v).as_bytes()).unwrap().status,
            ReleaseStatus::Failed
        );
    }

    #[test]
    fn corrupt_inputs_fail_without_leaking() {
        let good = encode_plain(&sample_json());
        let gz = gzip(&serde_json::to_vec(&sample_json()).unwrap());
        let truncated = STANDARD.encode(&gz[..gz.len() / 2]);
        let mut flipped = gz.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0xff;
        let mut bad_crc = gz.clone();
        let n = bad_crc.len();
        bad_crc[n - 6] ^= 0xff;
        let not_json = STANDARD.encode(gzip(format!("password: {SECRET} {{").as_bytes()));
        let plain_not_json = STANDARD.encode(format!("{SECRET} is not json"));
        let wrong_type = encode_plain(
            &json!({"name": SECRET, "version": SECRET, "info": {"status": "deployed"}}),
        );
        let status_type =
            encode_plain(&json!({"name": "a", "version": 1, "info": {"status": [SECRET]}}));
        let top_array = STANDARD.encode(gzip(format!("[\"{SECRET}\"]").as_bytes()));
        let mut trailing = gz.clone();
        trailing.extend_from_slice(b"garbage");
        type Check = fn(&DecodeError) -> bool;
        let cases: Vec<(&str, String, Check)> = vec![
            ("empty", String::new(), |e| *e == DecodeError::Empty),
            ("blank", " \n".into(), |e| *e == DecodeError::Empty),
            ("bad base64 char", format!("{}!", &good[..8]), |e| {
                matches!(e, DecodeError::BadBase64 { offset: Some(8) })
            }),
            (
                "bad base64 length",
                good[..good.len() - 1].to_string(),
                |e| matches!(e, DecodeError::BadBase64 { .. }),
            ),
            ("double base64", STANDARD.encode(good.as_bytes()), |e| {
                matches!(e, DecodeError::BadJson { .. })
            }),
            ("truncated gzip", truncated, |e| {
                *e == DecodeError::TruncatedGzip
            }),
            ("corrupt gzip", STANDARD.encode(&flipped), |e| {
                matches!(e, DecodeError::BadGzip(_) | DecodeError::TruncatedGzip)
            }),
            ("bad crc", STANDARD.encode(&bad_crc), |e| {
                matches!(e, DecodeError::BadGzip(_))
            }),
            ("trailing garbage", STANDARD.encode(&trailing), |e| {
                matches!(e, DecodeError::BadGzip(_) | DecodeError::TruncatedGzip)
            }),
            ("gzip magic only", STANDARD.encode(GZIP_MAGIC), |e| {
                matches!(e, DecodeError::BadGzip(_) | DecodeError::TruncatedGzip)
            }),
            ("gzipped non-json", not_json, |e| {
                matches!(
                    e,
                    DecodeError::BadJson {
                        category: "syntax",
                        ..
                    }
                )
            }),
            ("plain non-json", plain_not_json, |e| {
                matches!(e, DecodeError::BadJson { .. })
            }),
            ("wrong field type", wrong_type, |e| {
                matches!(
                    e,
                    DecodeError::BadJson {
                        category: "data",
                        ..
                    }
                )
            }),
            ("status not a string", status_type, |e| {
                matches!(
                    e,
                    DecodeError::BadJson {
                        category: "data",
                        ..
                    }
                )
            }),
            ("top-level array", top_array, |e| {
                matches!(e, DecodeError::BadJson { .. })
            }),
            (
                "missing name",
                encode_plain(
                    &json!({"version": 1, "info": {"status": "deployed"}, "config": {"p": SECRET}}),
                ),
                |e| *e == DecodeError::MissingField("name"),
            ),
            (
                "missing version",
                encode_plain(&json!({"name": "a", "info": {"status": "deployed"}})),
                |e| *e == DecodeError::MissingField("version"),
            ),
            (
                "missing info",
                encode_plain(&json!({"name": "a", "version": 1})),
                |e| *e == DecodeError::MissingField("info"),
            ),
            (
                "missing status",
                encode_plain(&json!({"name": "a", "version": 1, "info": {}})),
                |e| *e == DecodeError::MissingField("info.status"),
            ),
        ];
        for (name, input, check) in cases {
            let err = decode_release(input.as_bytes()).expect_err(name);
            assert!(check(&err), "{name}: unexpected {err:?}");
            assert_no_secret(&err);
            if let Err(e) = decode_release_json(input.as_bytes()) {
                assert_no_secret(&e);
            }
        }
    }

    #[test]
    fn decompression_bomb_is_refused() {
        // 100 MiB of zeros compresses to ~100 KiB; decoding must stop at the cap.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let chunk = vec![0u8; 1024 * 1024];
        for _ in 0..100 {
            gz.write_all(&chunk).unwrap();
        }
        let bomb = STANDARD.encode(gz.finish().unwrap());
        assert!(bomb.len() < 1024 * 1024);
        let limit = MAX_DECODED_RELEASE_BYTES;
        assert_eq!(
            decode_release(bomb.as_bytes()),
            Err(DecodeError::TooLarge { limit })
        );
        let msg = DecodeError::TooLarge { limit }.to_string();
        assert!(
            msg.contains("cap") && msg.contains(&limit.to_string()),
            "{msg}"
        );
        // Exactly at the cap is fine, one byte over is not.
        let exact = gzip(&[b' '; 64]);
        assert_eq!(gunzip_capped(&exact, 64).unwrap().len(), 64);
        assert_eq!(
            gunzip_capped(&exact, 63),
            Err(DecodeError::TooLarge { limit: 63 })
        );
        let plain = STANDARD.encode([b' '; 64]);
        assert_eq!(
            decode_to_json_bytes(plain.as_bytes(), 63),
            Err(DecodeError::TooLarge { limit: 63 })
        );
    }

    #[test]
    fn round_trip_changes_only_status() {
        let original = sample_json();
        let encoded = encode_plain(&original);
        let mut value = decode_release_json(encoded.as_bytes()).unwrap();
        assert_eq!(value, original);
        set_release_status(&mut value, "pending-upgrade").unwrap();
        let re = encode_release_json(&value).unwrap();
        let back = decode_release_json(re.as_bytes()).unwrap();
        let mut expected = original.clone();
        expected["info"]["status"] = json!("pending-upgrade");
        assert_eq!(back, expected);
        // Key order is preserved (serde_json `preserve_order`).
        let keys: Vec<_> = back.as_object().unwrap().keys().cloned().collect();
        let orig_keys: Vec<_> = original.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, orig_keys);
        let info_keys: Vec<_> = back["info"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            info_keys,
            [
                "first_deployed",
                "last_deployed",
                "deleted",
                "description",
                "status",
                "notes"
            ]
        );
        assert_eq!(
            decode_release(re.as_bytes()).unwrap().status,
            ReleaseStatus::PendingUpgrade
        );
        // Our output is gzip, like Helm's.
        assert!(STANDARD.decode(&re).unwrap().starts_with(&GZIP_MAGIC));
    }

    #[test]
    fn set_status_requires_info() {
        let mut v = json!({"name": "a"});
        assert_eq!(
            set_release_status(&mut v, "deployed"),
            Err(DecodeError::MissingField("info"))
        );
        let mut v = json!({"info": "x"});
        assert!(set_release_status(&mut v, "deployed").is_err());
        let mut v = json!({"info": {}});
        set_release_status(&mut v, "deployed").unwrap();
        assert_eq!(v["info"]["status"], "deployed");
    }

    #[test]
    fn status_text_round_trips() {
        let cases = [
            ("unknown", ReleaseStatus::Unknown, false),
            ("deployed", ReleaseStatus::Deployed, false),
            ("uninstalled", ReleaseStatus::Uninstalled, false),
            ("superseded", ReleaseStatus::Superseded, false),
            ("failed", ReleaseStatus::Failed, false),
            ("uninstalling", ReleaseStatus::Uninstalling, false),
            ("pending-install", ReleaseStatus::PendingInstall, true),
            ("pending-upgrade", ReleaseStatus::PendingUpgrade, true),
            ("pending-rollback", ReleaseStatus::PendingRollback, true),
            ("weird", ReleaseStatus::Other("weird".into()), false),
            ("Deployed", ReleaseStatus::Other("Deployed".into()), false),
        ];
        for (text, status, pending) in cases {
            assert_eq!(ReleaseStatus::parse(text), status);
            assert_eq!(status.as_str(), text);
            assert_eq!(status.to_string(), text);
            assert_eq!(status.is_pending(), pending, "{text}");
            assert_eq!(
                serde_json::to_string(&status).unwrap(),
                format!("\"{text}\"")
            );
            let back: ReleaseStatus = serde_json::from_str(&format!("\"{text}\"")).unwrap();
            assert_eq!(back, status);
        }
    }

    /// Decodes every captured record under fixtures/records and round-trips it.
    #[test]
    fn captured_fixture_records() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/records");
        let Ok(helm_dirs) = std::fs::read_dir(&root) else {
            return; // no fixtures captured yet
        };
        let mut seen = 0;
        for helm_dir in helm_dirs.flatten() {
            for kind in ["secret", "configmap"] {
                let Ok(files) = std::fs::read_dir(helm_dir.path().join(kind)) else {
                    continue;
                };
                for file in files.flatten() {
                    let path = file.path();
                    if path.extension().and_then(|e| e.to_str()) != Some("json") {
                        continue;
                    }
                    let text = std::fs::read_to_string(&path).unwrap();
                    let object: serde_json::Value = serde_json::from_str(&text).unwrap();
                    let data = object["data"]["release"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{}: no data.release", path.display()));
                    // Secret data is base64 on the wire; kube-rs would hand us the decoded bytes.
                    let encoded = if kind == "secret" {
                        STANDARD.decode(data).unwrap()
                    } else {
                        data.as_bytes().to_vec()
                    };
                    let summary = decode_release(&encoded)
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    let labels = &object["metadata"]["labels"];
                    assert_eq!(labels["name"].as_str(), Some(summary.name.as_str()));
                    assert_eq!(
                        labels["version"].as_str(),
                        Some(summary.revision.to_string().as_str()),
                        "{}",
                        path.display()
                    );
                    assert_eq!(
                        labels["status"].as_str(),
                        Some(summary.status.as_str()),
                        "{}",
                        path.display()
                    );
                    assert!(summary.chart_version.is_some(), "{}", path.display());
                    let value = decode_release_json(&encoded).unwrap();
                    let re = encode_release_json(&value).unwrap();
                    assert_eq!(decode_release_json(re.as_bytes()).unwrap(), value);
                    assert_eq!(decode_release(re.as_bytes()).unwrap(), summary);
                    seen += 1;
                }
            }
        }
        eprintln!("decoded {seen} captured records");
    }

    #[test]
    fn manifest_objects_name_kinds_namespaces_and_hooks() {
        let release = serde_json::json!({
            "manifest": "---\n# Source: x/templates/a.yaml\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: db-app\nspec: {}\n---\n# only a comment\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: db-remote\n  namespace: elsewhere\ndata:\n  password: hunter2\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: db-reader\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: annotated-hook\n  annotations:\n    helm.sh/hook: post-install\n",
            "hooks": [{"name": "db-hook", "manifest": "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: db-hook\n"}],
        });
        let objects = manifest_objects(&release).expect("a readable manifest");
        let seen: Vec<(&str, &str, &str, Option<&str>, bool)> = objects
            .iter()
            .map(|o| {
                (
                    o.api_version.as_str(),
                    o.kind.as_str(),
                    o.name.as_str(),
                    o.namespace.as_deref(),
                    o.hook,
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("apps/v1", "Deployment", "db-app", None, false),
                ("v1", "ConfigMap", "db-remote", Some("elsewhere"), false),
                (
                    "rbac.authorization.k8s.io/v1",
                    "ClusterRole",
                    "db-reader",
                    None,
                    false
                ),
                ("v1", "ConfigMap", "annotated-hook", None, true),
                ("batch/v1", "Job", "db-hook", None, true),
            ]
        );
        // Nothing of the content is kept.
        assert!(!format!("{objects:?}").contains("hunter2"));
        assert_eq!(manifest_objects(&serde_json::json!({})), Ok(Vec::new()));
    }

    /// A document that is not YAML ends the reading with an error naming where, never the
    /// content, and never a partial list (nor a hang: serde_yaml's iterator does not
    /// advance past a syntax error).
    #[test]
    fn a_manifest_that_is_not_yaml_is_an_error_not_a_shorter_list() {
        for (release, place) in [
            (
                json!({"manifest": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\n: hunter2: [\n---\napiVersion: v1\nkind: ClusterRole\nmetadata:\n  name: b\n"}),
                "the manifest: document 2 is not YAML",
            ),
            (
                json!({"manifest": "", "hooks": [{"manifest": "kind: Job\nmetadata: {name: ok}\n"}, {"manifest": "kind: [hunter2\n"}]}),
                "hook 2: document 1 is not YAML",
            ),
        ] {
            let err = manifest_objects(&release).expect_err("not YAML");
            assert!(err.starts_with(place), "{err}");
            assert!(!err.contains(SECRET), "{err}");
        }
    }
}
