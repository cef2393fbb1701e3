//! Reading and rewriting Helm's release records in the cluster.
//!
//! Modelled on Helm's `pkg/storage/driver`: one interface ([`ReleaseStore`]) and one
//! implementation per backing kind. Secrets and ConfigMaps differ only in how the encoded
//! release sits in `data.release`, so [`KubeStore`] is generic over [`RecordKind`].
//!
//! Reads never grow with release history: records are listed as metadata only (labels carry
//! revision and status) and only the records a decision needs are fetched and decoded.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::ByteString;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use crate::release::ReleaseStatus;

/// Label Helm puts the release name in.
pub const LABEL_NAME: &str = "name";
/// Label Helm puts `helm` in.
pub const LABEL_OWNER: &str = "owner";
/// Label Helm puts the revision status in.
pub const LABEL_STATUS: &str = "status";
/// Label Helm puts the revision number in.
pub const LABEL_VERSION: &str = "version";

/// The record name Helm uses for a revision (`pkg/storage/storage.go`, makeKey).
pub fn record_name(release: &str, revision: u64) -> String {
    format!("sh.helm.release.v1.{release}.v{revision}")
}

/// The label selector Helm uses to find a release's records.
pub fn release_selector(release: &str) -> String {
    format!("{LABEL_NAME}={release},{LABEL_OWNER}=helm")
}

/// One record as seen through a metadata-only list: everything but the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Object name, `sh.helm.release.v1.<release>.v<revision>`.
    pub name: String,
    /// Namespace of the record.
    pub namespace: String,
    /// Revision from the `version` label.
    pub revision: u64,
    /// Status from the `status` label.
    pub status: ReleaseStatus,
    /// All labels, system and custom.
    pub labels: BTreeMap<String, String>,
    /// For optimistic concurrency on rewrites.
    pub resource_version: Option<String>,
    /// `metadata.creationTimestamp` as RFC 3339, if the server set one.
    pub created: Option<String>,
}

/// A record with its encoded release (the once-base64 text Helm produces).
#[derive(Clone, Debug)]
pub struct StoredRecord {
    /// Labels, name, revision, status.
    pub header: RecordHeader,
    /// `base64(gzip(json))` as Helm wrote it.
    pub payload: Vec<u8>,
}

/// Failures talking to the release storage. Messages never include record payloads.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The API answered with a Status error.
    #[error("the API server answered {code} {reason}: {message}")]
    Api {
        /// HTTP code.
        code: u16,
        /// Status reason, e.g. `Forbidden`.
        reason: String,
        /// Status message.
        message: String,
    },
    /// The server could not be reached or the connection broke.
    #[error("cannot reach the API server: {0}")]
    Transport(String),
    /// A classified connection or identity failure naming the server and context
    /// (DNS, refused, TLS, 401, 403, timeout; see `cluster::classify`).
    #[error("{0}")]
    Connection(crate::cluster::ConnectionFailure),
    /// A record exists but has no `release` data key.
    #[error("{kind} {name:?} has no `release` data key; it is not a helm release record")]
    NoPayload {
        /// Kind of the record.
        kind: &'static str,
        /// Object name.
        name: String,
    },
}

impl StoreError {
    /// True for errors worth retrying: server errors, throttling and broken connections.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Api { code, .. } => *code >= 500 || *code == 429,
            StoreError::Transport(_) => true,
            StoreError::Connection(f) => f.is_transient(),
            StoreError::NoPayload { .. } => false,
        }
    }

    /// The HTTP code of an API error.
    pub fn code(&self) -> Option<u16> {
        match self {
            StoreError::Api { code, .. } => Some(*code),
            StoreError::Connection(f) => f.code(),
            _ => None,
        }
    }
}

impl From<kube::Error> for StoreError {
    fn from(e: kube::Error) -> StoreError {
        if let Some(failure) = crate::cluster::classify(&e) {
            return StoreError::Connection(failure);
        }
        match e {
            kube::Error::Api(status) => StoreError::Api {
                code: status.code,
                reason: status.reason.clone(),
                message: status.message.clone(),
            },
            other => StoreError::Transport(error_chain(&other)),
        }
    }
}

/// An error and its sources on one line, so "connection refused" is not hidden.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// Retries `op` on transient errors with exponential backoff (4 attempts, ~1.5 s in all).
pub async fn with_retry<T, F, Fut>(mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    const ATTEMPTS: u32 = 4;
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match op().await {
            Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The storage interface the commands use. Only used with static dispatch.
#[allow(async_fn_in_trait)]
pub trait ReleaseStore {
    /// Namespace the store reads.
    fn namespace(&self) -> &str;
    /// `Secret` or `ConfigMap`.
    fn kind(&self) -> &'static str;
    /// Headers of every record of `release`, metadata only, sorted by revision.
    async fn list_headers(&self, release: &str) -> Result<Vec<RecordHeader>, StoreError>;
    /// Headers of records matching `selector` in this namespace or, with `all`, everywhere.
    async fn list_headers_matching(
        &self,
        selector: &str,
        all_namespaces: bool,
    ) -> Result<Vec<RecordHeader>, StoreError>;
    /// One record with its payload.
    async fn get(&self, name: &str) -> Result<StoredRecord, StoreError>;
    /// Sets (Some) or removes (None) labels, only if the record is still at
    /// `resource_version`. Returns the new resourceVersion.
    async fn patch_labels(
        &self,
        name: &str,
        resource_version: &str,
        labels: &BTreeMap<String, Option<String>>,
    ) -> Result<Option<String>, StoreError>;
    /// Replaces the payload and label changes together, only if the record is still at
    /// `resource_version`.
    async fn rewrite(
        &self,
        name: &str,
        resource_version: &str,
        payload: &str,
        labels: &BTreeMap<String, Option<String>>,
    ) -> Result<Option<String>, StoreError>;
}

/// How a Kubernetes kind carries Helm's encoded release.
pub trait RecordKind:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + serde::Serialize
    + std::fmt::Debug
{
    /// Kind name for messages.
    const KIND: &'static str;
    /// The once-base64 encoded release text.
    fn payload(&self) -> Option<Vec<u8>>;
    /// A merge-patch `data` object setting the payload.
    fn payload_patch(payload: &str) -> serde_json::Value;
}

impl RecordKind for Secret {
    const KIND: &'static str = "Secret";
    fn payload(&self) -> Option<Vec<u8>> {
        // The API's own base64 layer is already undone by deserialisation.
        self.data.as_ref()?.get("release").map(|b| b.0.clone())
    }
    fn payload_patch(payload: &str) -> serde_json::Value {
        let wire = ByteString(payload.as_bytes().to_vec());
        serde_json::json!({ "release": wire })
    }
}

impl RecordKind for ConfigMap {
    const KIND: &'static str = "ConfigMap";
    fn payload(&self) -> Option<Vec<u8>> {
        self.data
            .as_ref()?
            .get("release")
            .map(|s| s.as_bytes().to_vec())
    }
    fn payload_patch(payload: &str) -> serde_json::Value {
        serde_json::json!({ "release": payload })
    }
}

/// Release records stored as Secrets or ConfigMaps in one namespace.
pub struct KubeStore<K> {
    client: Client,
    namespace: String,
    api: Api<K>,
}

impl<K: RecordKind> KubeStore<K> {
    /// A store reading `namespace`.
    pub fn new(client: Client, namespace: &str) -> KubeStore<K> {
        KubeStore {
            api: Api::namespaced(client.clone(), namespace),
            client,
            namespace: namespace.to_string(),
        }
    }

    async fn patch_merge(
        &self,
        name: &str,
        patch: serde_json::Value,
    ) -> Result<Option<String>, StoreError> {
        // A resourceVersion inside a merge patch is a precondition: 409 if it moved on.
        let params = PatchParams::default();
        let updated = self.api.patch(name, &params, &Patch::Merge(&patch)).await?;
        Ok(updated.meta().resource_version.clone())
    }
}

fn header_from_meta(meta: &kube::api::ObjectMeta, fallback_ns: &str) -> Option<RecordHeader> {
    let labels: BTreeMap<String, String> = meta.labels.clone().unwrap_or_default();
    let revision = labels.get(LABEL_VERSION)?.parse().ok()?;
    let status = ReleaseStatus::parse(labels.get(LABEL_STATUS).map(String::as_str).unwrap_or(""));
    Some(RecordHeader {
        name: meta.name.clone().unwrap_or_default(),
        namespace: meta
            .namespace
            .clone()
            .unwrap_or_else(|| fallback_ns.to_string()),
        revision,
        status,
        labels,
        resource_version: meta.resource_version.clone(),
        created: meta.creation_timestamp.as_ref().map(|t| t.0.to_string()),
    })
}

fn label_patch(labels: &BTreeMap<String, Option<String>>) -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|(k, v)| {
            let value = match v {
                Some(v) => serde_json::Value::String(v.clone()),
                None => serde_json::Value::Null,
            };
            (k.clone(), value)
        })
        .collect();
    serde_json::Value::Object(map)
}

impl<K: RecordKind> ReleaseStore for KubeStore<K> {
    fn namespace(&self) -> &str {
        &self.namespace
    }

    fn kind(&self) -> &'static str {
        K::KIND
    }

    async fn list_headers(&self, release: &str) -> Result<Vec<RecordHeader>, StoreError> {
        self.list_headers_matching(&release_selector(release), false)
            .await
    }

    async fn list_headers_matching(
        &self,
        selector: &str,
        all_namespaces: bool,
    ) -> Result<Vec<RecordHeader>, StoreError> {
        let params = ListParams::default().labels(selector);
        let api: Api<K> = if all_namespaces {
            Api::all(self.client.clone())
        } else {
            self.api.clone()
        };
        let list = with_retry(|| async { Ok(api.list_metadata(&params).await?) }).await?;
        let mut headers: Vec<RecordHeader> = list
            .items
            .iter()
            .filter_map(|item| header_from_meta(&item.metadata, &self.namespace))
            .collect();
        headers.sort_by(|a, b| (&a.namespace, a.revision).cmp(&(&b.namespace, b.revision)));
        Ok(headers)
    }

    async fn get(&self, name: &str) -> Result<StoredRecord, StoreError> {
        let object = with_retry(|| async { Ok(self.api.get(name).await?) }).await?;
        let header = header_from_meta(object.meta(), &self.namespace).ok_or_else(|| {
            StoreError::NoPayload {
                kind: K::KIND,
                name: name.to_string(),
            }
        })?;
        let payload = object.payload().ok_or_else(|| StoreError::NoPayload {
            kind: K::KIND,
            name: name.to_string(),
        })?;
        Ok(StoredRecord { header, payload })
    }

    async fn patch_labels(
        &self,
        name: &str,
        resource_version: &str,
        labels: &BTreeMap<String, Option<String>>,
    ) -> Result<Option<String>, StoreError> {
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": resource_version, "labels": label_patch(labels) }
        });
        with_retry(|| self.patch_merge(name, patch.clone())).await
    }

    async fn rewrite(
        &self,
        name: &str,
        resource_version: &str,
        payload: &str,
        labels: &BTreeMap<String, Option<String>>,
    ) -> Result<Option<String>, StoreError> {
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": resource_version, "labels": label_patch(labels) },
            "data": K::payload_patch(payload),
        });
        with_retry(|| self.patch_merge(name, patch.clone())).await
    }
}

/// Creates `namespace` if it does not exist (what `helm --create-namespace` does).
pub async fn ensure_namespace(client: &Client, namespace: &str) -> Result<bool, StoreError> {
    use k8s_openapi::api::core::v1::Namespace;
    let api: Api<Namespace> = Api::all(client.clone());
    if with_retry(|| async { Ok(api.get_opt(namespace).await?) })
        .await?
        .is_some()
    {
        return Ok(false);
    }
    let ns = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(namespace.to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(true),
        Err(e) => {
            let e = StoreError::from(e);
            // Someone else (a concurrent pipeline) created it first: fine.
            if e.code() == Some(409) {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_names_and_selector_follow_helm() {
        assert_eq!(record_name("db", 7), "sh.helm.release.v1.db.v7");
        assert_eq!(release_selector("db"), "name=db,owner=helm");
    }

    #[test]
    fn transient_errors() {
        let api = |code| StoreError::Api {
            code,
            reason: String::new(),
            message: String::new(),
        };
        assert!(api(500).is_transient());
        assert!(api(503).is_transient());
        assert!(api(429).is_transient());
        assert!(!api(403).is_transient());
        assert!(!api(404).is_transient());
        assert!(!api(409).is_transient());
        assert!(StoreError::Transport("reset".into()).is_transient());
    }

    #[test]
    fn header_requires_a_numeric_version_label() {
        let mut meta = kube::api::ObjectMeta {
            name: Some("sh.helm.release.v1.db.v3".into()),
            labels: Some(BTreeMap::from([
                ("name".to_string(), "db".to_string()),
                ("owner".to_string(), "helm".to_string()),
                ("status".to_string(), "deployed".to_string()),
                ("version".to_string(), "3".to_string()),
            ])),
            ..Default::default()
        };
        let header = header_from_meta(&meta, "shared").unwrap();
        assert_eq!(header.revision, 3);
        assert_eq!(header.namespace, "shared");
        assert_eq!(header.status, ReleaseStatus::Deployed);
        meta.labels
            .as_mut()
            .unwrap()
            .insert("version".into(), "x".into());
        assert!(header_from_meta(&meta, "shared").is_none());
    }
}
