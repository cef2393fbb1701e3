//! Release records stored as Secrets or ConfigMaps (helm's `secret` and `configmap`
//! drivers). Every request is built here with percent-encoded path segments and every
//! answer is checked against what was asked before anything is trusted.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::ByteString;
use kube::api::{GetParams, ListParams, ObjectMeta, Patch, PatchParams, WatchEvent, WatchParams};
use kube::core::Request;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

use super::{
    release_selector, with_retry, DriverError, ErrorKind, InvalidRecord, RecordHeader,
    RecordsChange, RecordsVersion, ReleaseStore, StoreError, StoredRecord, LABEL_NAME, LABEL_OWNER,
    LABEL_STATUS, LABEL_VERSION,
};
use crate::adapters::cluster::{ApiError, WATCH_SECONDS};
use crate::core::release::ReleaseStatus;

/// How a Kubernetes kind carries Helm's encoded release.
pub(crate) trait RecordKind:
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

/// Percent-encodes one URL path segment (RFC 3986 unreserved characters stay as they are),
/// so no name or namespace can add path segments or a query.
pub(crate) fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The Kubernetes drivers' mapping of a failed API request into the store's error kinds,
/// worded as the API server answered (`the API server answered 409 Conflict: …`), with the
/// HTTP status as the answer in brief.
impl From<ApiError> for StoreError {
    fn from(e: ApiError) -> StoreError {
        let kind = match e.code() {
            Some(409) => ErrorKind::Conflict,
            Some(404) => ErrorKind::NotFound,
            Some(401 | 403) => ErrorKind::Forbidden,
            Some(_) if e.is_transient() => ErrorKind::Transient {
                retry_after: e.retry_after(),
            },
            None if e.is_transient() => ErrorKind::ConnectionLost,
            Some(_) => ErrorKind::Refused,
            None => ErrorKind::Unreachable,
        };
        let status = e.code().map(|code| {
            match http::StatusCode::from_u16(code)
                .ok()
                .and_then(|c| c.canonical_reason())
            {
                Some(reason) => format!("{code} {reason}"),
                None => code.to_string(),
            }
        });
        StoreError::Driver(DriverError {
            kind,
            text: e.to_string(),
            status,
            detail: Some(e.cause()),
        })
    }
}

/// `kubectl get secret NAME -n NAMESPACE --show-labels`.
pub(crate) fn show_command(kind: &str, record: &str, namespace: &str) -> String {
    format!(
        "kubectl get {} {record} -n {namespace} --show-labels",
        kind.to_lowercase()
    )
}

/// A failed request of this driver (kube's error, classified).
fn failed(e: kube::Error) -> StoreError {
    ApiError::from(e).into()
}

/// Release records of one kind in one namespace.
pub(crate) struct KubeStore<K> {
    client: Client,
    namespace: String,
    _kind: std::marker::PhantomData<K>,
}

impl<K: RecordKind> KubeStore<K> {
    /// A store reading `namespace`.
    pub(crate) fn new(client: Client, namespace: &str) -> KubeStore<K> {
        KubeStore {
            client,
            namespace: namespace.to_string(),
            _kind: std::marker::PhantomData,
        }
    }

    /// `/api/v1/namespaces/<ns>/secrets`, or the cluster-wide collection.
    fn collection(&self, all_namespaces: bool) -> Request {
        let plural = K::plural(&());
        let path = if all_namespaces {
            format!("/api/v1/{plural}")
        } else {
            format!(
                "/api/v1/namespaces/{}/{plural}",
                path_segment(&self.namespace)
            )
        };
        Request::new(path)
    }

    /// Headers of records matching `selector` and the list's resourceVersion, read in
    /// pages of `page`.
    async fn list(
        &self,
        selector: &str,
        all_namespaces: bool,
        page: u32,
    ) -> Result<(Vec<RecordHeader>, Option<String>), StoreError> {
        let mut headers = Vec::new();
        let version = self
            .visit(selector, all_namespaces, page, &mut |h| {
                headers.push(h);
                Ok(())
            })
            .await?;
        headers.sort_by(|a, b| (&a.namespace, a.revision).cmp(&(&b.namespace, b.revision)));
        Ok((headers, version))
    }

    /// Hands each header matching `selector` to `visit` as its page (of `page` records)
    /// arrives; returns the list's resourceVersion.
    async fn visit(
        &self,
        selector: &str,
        all_namespaces: bool,
        page: u32,
        visit: &mut dyn FnMut(RecordHeader) -> Result<(), StoreError>,
    ) -> Result<Option<String>, StoreError> {
        let scope = if all_namespaces {
            "all namespaces".to_string()
        } else {
            format!("namespace {:?}", self.namespace)
        };
        let what = format!("listing {}s ({selector}) in {scope}", K::KIND);
        let expected_ns = (!all_namespaces).then_some(self.namespace.as_str());
        let (_, version) = list_pages_versioned(
            K::KIND,
            &what,
            page,
            |token| {
                let mut params = ListParams::default().labels(selector).limit(page);
                if let Some(token) = token {
                    params = params.continue_token(&token);
                }
                let what = what.clone();
                async move {
                    with_retry(&what, || async {
                        let request = self
                            .collection(all_namespaces)
                            .list_metadata(&params)
                            .map_err(|e| ApiError::Transport(e.to_string()))?;
                        Page::parse(K::KIND, &self.client.request_text(request).await?)
                    })
                    .await
                }
            },
            |meta| visit(header_from_meta(K::KIND, meta, expected_ns)?),
        )
        .await?;
        Ok(version)
    }

    /// Watches the metadata of `release`'s records from `version` for up to `max` (one
    /// watch, at most [`WATCH_SECONDS`]): the first event is a change; a version the
    /// server no longer keeps (410) is one too (read again); the watch ending is quiet.
    async fn watch_from(
        &self,
        release: &str,
        version: &str,
        max: Duration,
    ) -> Result<RecordsChange, StoreError> {
        let api: kube::Api<K> = kube::Api::namespaced(self.client.clone(), &self.namespace);
        let seconds = (max.as_secs() as u32).clamp(1, WATCH_SECONDS);
        let params = WatchParams::default()
            .labels(&release_selector(release))
            .timeout(seconds);
        let stream = api.watch_metadata(&params, version).await.map_err(failed)?;
        let mut stream = std::pin::pin!(stream);
        loop {
            match stream.next().await {
                Some(Ok(WatchEvent::Bookmark(_))) => continue,
                Some(Ok(WatchEvent::Error(status))) if status.code == 410 => {
                    return Ok(RecordsChange::Changed)
                }
                Some(Ok(WatchEvent::Error(status))) => {
                    return Err(ApiError::Status {
                        code: status.code,
                        reason: status.reason,
                        message: status.message,
                        retry_after: None,
                    }
                    .into())
                }
                Some(Ok(_)) => return Ok(RecordsChange::Changed),
                Some(Err(e)) => return Err(failed(e)),
                None => return Ok(RecordsChange::Quiet),
            }
        }
    }

    async fn patch_merge(
        &self,
        name: &str,
        patch: serde_json::Value,
    ) -> Result<Option<String>, StoreError> {
        // A resourceVersion inside a merge patch is a precondition: 409 if it moved on.
        let request = self
            .collection(false)
            .patch(
                &path_segment(name),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .map_err(|e| StoreError::from(ApiError::Transport(e.to_string())))?;
        let updated: K = self.client.request(request).await.map_err(failed)?;
        let meta = updated.meta();
        if meta.name.as_deref() != Some(name) {
            return Err(StoreError::Invalid(InvalidRecord::new(
                K::KIND,
                name,
                "metadata.name",
                "the answer to the update names another object",
            )));
        }
        Ok(meta.resource_version.clone())
    }
}

/// Reads a record's header from its metadata, failing on anything helm would not have
/// written: a missing or non-numeric `version` label, a missing `name` or `status` label,
/// a status that is not one of helm's, another namespace than the one asked for.
pub(crate) fn header_from_meta(
    kind: &'static str,
    meta: &ObjectMeta,
    namespace: Option<&str>,
) -> Result<RecordHeader, InvalidRecord> {
    let name = meta.name.clone().unwrap_or_default();
    let invalid = |field: &str, problem: &str| InvalidRecord::new(kind, &name, field, problem);
    if name.is_empty() {
        return Err(invalid("metadata.name", "is missing"));
    }
    let record_ns = meta.namespace.clone().unwrap_or_default();
    if let Some(expected) = namespace {
        if record_ns != expected {
            return Err(invalid(
                "metadata.namespace",
                &format!("is {record_ns:?}, not the namespace that was read ({expected:?})"),
            ));
        }
    }
    let labels = meta
        .labels
        .clone()
        .ok_or_else(|| invalid("metadata.labels", "are missing"))?;
    let label = |key: &str| {
        labels
            .get(key)
            .ok_or_else(|| invalid(&format!("label {key}"), "is missing"))
    };
    let release = label(LABEL_NAME)?;
    if release.is_empty() {
        return Err(invalid("label name", "is empty"));
    }
    if label(LABEL_OWNER)? != "helm" {
        return Err(invalid("label owner", "is not helm"));
    }
    let revision = parse_revision(label(LABEL_VERSION)?)
        .ok_or_else(|| invalid("label version", "is not a revision number"))?;
    let status = ReleaseStatus::parse(label(LABEL_STATUS)?);
    if matches!(status, ReleaseStatus::Other(_)) {
        return Err(invalid("label status", "is not a helm release status"));
    }
    Ok(RecordHeader {
        name,
        namespace: record_ns,
        release: release.clone(),
        revision,
        status,
        labels,
        write_token: meta.resource_version.clone(),
        created: meta.creation_timestamp.as_ref().map(|t| t.0.to_string()),
    })
}

/// A revision as helm writes it: a positive decimal number without sign or spaces.
pub(crate) fn parse_revision(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|&n| n > 0)
}

/// One page of a metadata list answer, read from its text straight into what a record
/// header needs of each item (name, namespace, labels, resourceVersion, creation time).
/// Everything else, `managedFields` above all, is skipped unread rather than built into a
/// JSON tree and copied: at 1,000 records that tree was 107 M of the 119 M instructions a
/// whole `check` took (callgrind, issue 29).
pub(crate) struct Page {
    kind: Option<String>,
    metadata: Option<PageMeta>,
    items: Items,
}

#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PageMeta {
    #[serde(default)]
    resource_version: Option<String>,
    #[serde(default, rename = "continue")]
    next: Option<String>,
}

/// The `items` field as it came: absent, `null`, a list, or anything else; or the page was
/// JSON of the wrong types (the parser's message).
#[derive(Default)]
enum Items {
    #[default]
    Missing,
    Null,
    List(Vec<Item>),
    NotAList,
    Unreadable(String),
}

/// One item: its metadata, or none (absent, or not an object).
enum Item {
    Meta(LeanMeta),
    NoMetadata,
}

/// What a record header reads of an item's metadata; the rest is skipped.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeanMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    resource_version: Option<String>,
    #[serde(default)]
    creation_timestamp: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

impl LeanMeta {
    fn into_object_meta(self) -> ObjectMeta {
        ObjectMeta {
            name: self.name,
            namespace: self.namespace,
            labels: self.labels,
            resource_version: self.resource_version,
            creation_timestamp: self.creation_timestamp,
            ..ObjectMeta::default()
        }
    }
}

/// Skips the rest of a JSON value the visitor was handed.
macro_rules! skip_scalars {
    ($out:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($out)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($out)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($out)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($out)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok($out)
        }
    };
}

fn drain_seq<'de, A: serde::de::SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
    Ok(())
}

fn drain_map<'de, A: serde::de::MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map
        .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
        .is_some()
    {}
    Ok(())
}

impl<'de> serde::Deserialize<'de> for Items {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Items, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Items;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of items")
            }
            fn visit_unit<E>(self) -> Result<Items, E> {
                Ok(Items::Null)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Items, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(item) = seq.next_element::<Item>()? {
                    items.push(item);
                }
                Ok(Items::List(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Items, A::Error> {
                drain_map(map).map(|()| Items::NotAList)
            }
            skip_scalars!(Items::NotAList);
        }
        d.deserialize_any(V)
    }
}

impl<'de> serde::Deserialize<'de> for Item {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Item, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(field_identifier, rename_all = "lowercase")]
        enum Field {
            Metadata,
            #[serde(other)]
            Other,
        }
        /// The `metadata` value: an object, or anything else.
        struct MetaValue(Option<LeanMeta>);
        impl<'de> serde::Deserialize<'de> for MetaValue {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<MetaValue, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = MetaValue;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("an object's metadata")
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        map: A,
                    ) -> Result<MetaValue, A::Error> {
                        use serde::Deserialize;
                        LeanMeta::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                            .map(|m| MetaValue(Some(m)))
                    }
                    fn visit_unit<E>(self) -> Result<MetaValue, E> {
                        Ok(MetaValue(None))
                    }
                    fn visit_seq<A: serde::de::SeqAccess<'de>>(
                        self,
                        seq: A,
                    ) -> Result<MetaValue, A::Error> {
                        drain_seq(seq).map(|()| MetaValue(None))
                    }
                    skip_scalars!(MetaValue(None));
                }
                d.deserialize_any(V)
            }
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Item;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list item")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Item, A::Error> {
                let mut meta = None;
                while let Some(field) = map.next_key::<Field>()? {
                    match field {
                        Field::Metadata => meta = map.next_value::<MetaValue>()?.0,
                        Field::Other => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(meta.map_or(Item::NoMetadata, Item::Meta))
            }
            fn visit_unit<E>(self) -> Result<Item, E> {
                Ok(Item::NoMetadata)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Item, A::Error> {
                drain_seq(seq).map(|()| Item::NoMetadata)
            }
            skip_scalars!(Item::NoMetadata);
        }
        d.deserialize_any(V)
    }
}

impl Page {
    /// Reads a page from the answer's text. Text that is not JSON is a transport failure
    /// (retried, as a cut-off body is); JSON of the wrong types is a malformed answer,
    /// refused by [`list_items`].
    pub(crate) fn parse(kind: &'static str, text: &str) -> Result<Page, ApiError> {
        #[derive(serde::Deserialize)]
        struct Raw {
            #[serde(default)]
            kind: Option<String>,
            #[serde(default)]
            metadata: Option<PageMeta>,
            #[serde(default)]
            items: Items,
        }
        match serde_json::from_str::<Raw>(text) {
            Ok(raw) => Ok(Page {
                kind: raw.kind,
                metadata: raw.metadata,
                items: raw.items,
            }),
            // Refused by `list_items`, never retried.
            Err(e) if e.classify() == serde_json::error::Category::Data => Ok(Page {
                kind: None,
                metadata: None,
                items: Items::Unreadable(e.to_string()),
            }),
            Err(e) => Err(ApiError::Transport(format!(
                "the {kind} list answer is not JSON ({e})"
            ))),
        }
    }

    /// The list's resourceVersion, if it has one.
    fn version(&self) -> Option<&str> {
        self.metadata
            .as_ref()
            .and_then(|m| m.resource_version.as_deref())
            .filter(|v| !v.is_empty())
    }

    /// The token of the next page, if there is one.
    fn next(&self) -> Option<&str> {
        self.metadata
            .as_ref()
            .and_then(|m| m.next.as_deref())
            .filter(|c| !c.is_empty())
    }
}

/// The items of a metadata list answer, refusing answers of the wrong shape (another kind
/// of list, no `items`, an item without `metadata`): an empty-looking list must really be
/// empty. kube-apiserver encodes an empty `PartialObjectMetadataList` as `"items": null` (a
/// nil Go slice); that, and only that, is an empty list.
fn list_items(kind: &'static str, answer: Page) -> Result<Vec<ObjectMeta>, StoreError> {
    let malformed = |what: &str| StoreError::Malformed(format!("the {kind} list answer {what}"));
    let items = match answer.items {
        Items::Unreadable(e) => return Err(malformed(&format!("has an unreadable item ({e})"))),
        items => items,
    };
    let list_kind = answer.kind.as_deref().unwrap_or("");
    let metadata_list = list_kind == "PartialObjectMetadataList";
    if !metadata_list && list_kind != format!("{kind}List") {
        return Err(malformed(&format!(
            "is of kind {list_kind:?}, not a PartialObjectMetadataList"
        )));
    }
    let items = match items {
        Items::List(items) => items,
        Items::Null if metadata_list => Vec::new(),
        Items::Null | Items::NotAList | Items::Unreadable(_) => {
            return Err(malformed("has an items field that is not a list"))
        }
        Items::Missing => return Err(malformed("has no items")),
    };
    items
        .into_iter()
        .map(|item| match item {
            Item::Meta(meta) => Ok(meta.into_object_meta()),
            Item::NoMetadata => Err(malformed("has an item without metadata")),
        })
        .collect()
}

/// Records asked for per list request: a cluster with thousands of releases is read in
/// pages (`limit`/`continue`), each page turned into headers before the next is fetched,
/// so no single answer holds every record's metadata.
pub(crate) const LIST_PAGE_SIZE: u32 = 500;

/// Records asked for per list request of one release's history: a history up to 1,000
/// revisions (helm keeps 10 by default) is one request, so a decision needs no second page
/// (issue 29); one page of that size is about 600 KB of metadata text, read lean (see
/// [`Page`]).
pub(crate) const RELEASE_PAGE_SIZE: u32 = 1000;

/// Pages through a list: `fetch(None)` is the first page, `fetch(Some(token))` the page
/// after the one whose `metadata.continue` was `token`, until a page has no token. Every
/// item's metadata is converted by `convert` as its page arrives. A continue token the
/// server no longer knows (410 Expired: the list took longer than etcd keeps its
/// snapshot) fails closed rather than returning a partial list.
/// Returns the items and the list's `metadata.resourceVersion` (the snapshot every page was
/// read from, from which a watch resumes).
pub(crate) async fn list_pages_versioned<T, F, Fut>(
    kind: &'static str,
    what: &str,
    page_size: u32,
    mut fetch: F,
    mut convert: impl FnMut(&ObjectMeta) -> Result<T, StoreError>,
) -> Result<(Vec<T>, Option<String>), StoreError>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<Page, ApiError>>,
{
    let mut out = Vec::new();
    let mut version: Option<String> = None;
    let mut token: Option<String> = None;
    let mut pages = 0u32;
    loop {
        let answer = match fetch(token.clone()).await {
            Err(e) if e.code() == Some(410) && token.is_some() => {
                return Err(StoreError::Malformed(format!(
                    "{what}: the list changed too much while it was read in pages of \
                     {page_size} (the server expired the continue token after page \
                     {pages}: 410 Expired); run the command again"
                )));
            }
            other => other?,
        };
        if let Some(rv) = answer.version() {
            version = Some(rv.to_string());
        }
        let next = answer.next().map(str::to_string);
        for meta in list_items(kind, answer)? {
            out.push(convert(&meta)?);
        }
        pages += 1;
        match next {
            Some(next) if Some(&next) == token.as_ref() => {
                return Err(StoreError::Malformed(format!(
                    "the {kind} list answer repeats the continue token of the page before"
                )));
            }
            Some(next) => token = Some(next),
            None => return Ok((out, version)),
        }
    }
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

    fn show_command(&self, record: &str) -> String {
        show_command(K::KIND, record, &self.namespace)
    }

    async fn list_headers(&self, release: &str) -> Result<Vec<RecordHeader>, StoreError> {
        Ok(self.list_headers_versioned(release).await?.0)
    }

    async fn list_headers_versioned(
        &self,
        release: &str,
    ) -> Result<(Vec<RecordHeader>, RecordsVersion), StoreError> {
        let (headers, list) = self
            .list(&release_selector(release), false, RELEASE_PAGE_SIZE)
            .await?;
        // The server filtered by label; a record that does not belong is an answer we
        // cannot trust.
        if let Some(h) = headers.iter().find(|h| h.release != release) {
            return Err(StoreError::Invalid(InvalidRecord::new(
                K::KIND,
                &h.name,
                "label name",
                &format!("is {:?}, not the release that was asked for", h.release),
            )));
        }
        super::check_unique_revisions(K::KIND, &headers)?;
        let version = RecordsVersion::of(&headers, list);
        Ok((headers, version))
    }

    async fn list_headers_matching(
        &self,
        selector: &str,
        all_namespaces: bool,
    ) -> Result<Vec<RecordHeader>, StoreError> {
        Ok(self.list(selector, all_namespaces, LIST_PAGE_SIZE).await?.0)
    }

    async fn visit_headers_matching(
        &self,
        selector: &str,
        all_namespaces: bool,
        visit: &mut dyn FnMut(RecordHeader) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.visit(selector, all_namespaces, LIST_PAGE_SIZE, visit)
            .await?;
        Ok(())
    }

    async fn watch_records(
        &self,
        release: &str,
        since: &RecordsVersion,
        max: Duration,
    ) -> Option<Result<RecordsChange, StoreError>> {
        let version = since.watch_from.as_deref()?;
        Some(self.watch_from(release, version, max).await)
    }

    async fn get(&self, name: &str) -> Result<StoredRecord, StoreError> {
        let what = format!(
            "reading {} {name:?} in namespace {:?}",
            K::KIND,
            self.namespace
        );
        let object: K = with_retry(&what, || async {
            let request = self
                .collection(false)
                .get(&path_segment(name), &GetParams::default())
                .map_err(|e| ApiError::Transport(e.to_string()))?;
            Ok::<_, ApiError>(self.client.request(request).await?)
        })
        .await?;
        let header = header_from_meta(K::KIND, object.meta(), Some(&self.namespace))?;
        if header.name != name {
            return Err(StoreError::Invalid(InvalidRecord::new(
                K::KIND,
                name,
                "metadata.name",
                &format!("the answer is {:?}, another object", header.name),
            )));
        }
        let payload = object.payload().ok_or_else(|| {
            StoreError::Invalid(InvalidRecord::new(
                K::KIND,
                name,
                "data.release",
                "is missing; it is not a helm release record",
            ))
        })?;
        Ok(StoredRecord { header, payload })
    }

    async fn patch_labels(
        &self,
        name: &str,
        write_token: &str,
        labels: &BTreeMap<String, Option<String>>,
    ) -> Result<Option<String>, StoreError> {
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": write_token, "labels": label_patch(labels) }
        });
        let what = format!(
            "labelling {} {name:?} in namespace {:?}",
            K::KIND,
            self.namespace
        );
        with_retry(&what, || self.patch_merge(name, patch.clone())).await
    }

    async fn rewrite(
        &self,
        name: &str,
        write_token: &str,
        payload: &str,
        labels: &BTreeMap<String, Option<String>>,
    ) -> Result<Option<String>, StoreError> {
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": write_token, "labels": label_patch(labels) },
            "data": K::payload_patch(payload),
        });
        let what = format!(
            "rewriting {} {name:?} in namespace {:?}",
            K::KIND,
            self.namespace
        );
        with_retry(&what, || self.patch_merge(name, patch.clone())).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(labels: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            name: Some("sh.helm.release.v1.db.v3".into()),
            namespace: Some("shared".into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    const GOOD: &[(&str, &str)] = &[
        ("name", "db"),
        ("owner", "helm"),
        ("status", "deployed"),
        ("version", "3"),
    ];

    fn with(key: &str, value: Option<&str>) -> ObjectMeta {
        let mut m = meta(GOOD);
        let labels = m.labels.as_mut().unwrap();
        match value {
            Some(v) => labels.insert(key.into(), v.into()),
            None => labels.remove(key),
        };
        m
    }

    /// The Kubernetes drivers keep the API server's words and quote the HTTP status in
    /// brief; callers see only the kind.
    #[test]
    fn api_errors_map_into_the_store_kinds() {
        let status = |code, retry_after| ApiError::Status {
            code,
            reason: String::new(),
            message: "msg".into(),
            retry_after,
        };
        let hint = Some(Duration::from_secs(3));
        for (error, kind, brief) in [
            (status(409, None), ErrorKind::Conflict, "409 Conflict"),
            (status(404, None), ErrorKind::NotFound, "404 Not Found"),
            (status(403, None), ErrorKind::Forbidden, "403 Forbidden"),
            (status(401, None), ErrorKind::Forbidden, "401 Unauthorized"),
            (
                status(503, None),
                ErrorKind::Transient { retry_after: None },
                "503 Service Unavailable",
            ),
            (
                status(429, hint),
                ErrorKind::Transient { retry_after: hint },
                "429 Too Many Requests",
            ),
            (
                status(422, None),
                ErrorKind::Refused,
                "422 Unprocessable Entity",
            ),
            (status(410, None), ErrorKind::Refused, "410 Gone"),
        ] {
            let text = error.to_string();
            let e = StoreError::from(error);
            assert_eq!(e.kind(), kind, "{text}");
            assert_eq!(e.to_string(), text);
            assert_eq!(e.status(), brief);
        }
        let reset = StoreError::from(ApiError::Transport("reset".into()));
        assert_eq!(reset.kind(), ErrorKind::ConnectionLost);
        assert_eq!(reset.to_string(), "cannot reach the API server: reset");
        assert_eq!(reset.status(), reset.to_string());
        // A 403 arrives classified, naming the server; its detail is the API's own message.
        let refused = kube::Error::Api(Box::new(kube::core::Status {
            code: 403,
            message: "secrets is forbidden: User \"bob\" cannot watch".into(),
            ..Default::default()
        }));
        let e = failed(refused);
        assert_eq!(e.kind(), ErrorKind::Forbidden);
        assert_eq!(
            e.detail(),
            "secrets is forbidden: User \"bob\" cannot watch"
        );
        assert_eq!(e.status(), "403 Forbidden");
    }

    #[test]
    fn a_well_formed_header() {
        let header = header_from_meta("Secret", &meta(GOOD), Some("shared")).unwrap();
        assert_eq!(header.revision, 3);
        assert_eq!(header.release, "db");
        assert_eq!(header.namespace, "shared");
        assert_eq!(header.status, ReleaseStatus::Deployed);
    }

    #[test]
    fn every_malformed_header_is_refused_with_the_field() {
        let cases: Vec<(ObjectMeta, &str)> = vec![
            (with("version", None), "label version"),
            (with("version", Some("abc")), "label version"),
            (with("version", Some("-1")), "label version"),
            (with("version", Some("+3")), "label version"),
            (with("version", Some(" 3")), "label version"),
            (with("version", Some("0")), "label version"),
            (
                with("version", Some("99999999999999999999999")),
                "label version",
            ),
            (with("name", None), "label name"),
            (with("name", Some("")), "label name"),
            (with("owner", Some("someone")), "label owner"),
            (with("status", None), "label status"),
            (with("status", Some("frozen")), "label status"),
            (
                ObjectMeta {
                    labels: None,
                    ..meta(GOOD)
                },
                "metadata.labels",
            ),
            (
                ObjectMeta {
                    namespace: Some("other".into()),
                    ..meta(GOOD)
                },
                "metadata.namespace",
            ),
        ];
        for (m, field) in cases {
            let err = header_from_meta("Secret", &m, Some("shared")).unwrap_err();
            assert_eq!(err.field, field, "{err}");
            assert!(
                err.to_string()
                    .starts_with("Secret \"sh.helm.release.v1.db.v3\": "),
                "{err}"
            );
        }
    }

    #[test]
    fn list_answers_of_the_wrong_shape_are_refused() {
        let meta = |items: serde_json::Value| serde_json::json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "items": items});
        for answer in [
            serde_json::json!({"kind": "PartialObjectMetadataList"}),
            serde_json::json!({}),
            serde_json::json!({"kind": "SecretList", "items": null}),
            serde_json::json!({"kind": "ConfigMapList", "items": []}),
            meta(serde_json::json!({})),
            meta(serde_json::json!([{"kind": "x"}])),
            meta(serde_json::json!([{"metadata": null}])),
        ] {
            assert!(
                matches!(
                    list_items("Secret", parsed(&answer)),
                    Err(StoreError::Malformed(_))
                ),
                "accepted {answer}"
            );
        }
        // Metadata of the wrong types is malformed; text that is not JSON is a transport
        // failure (retried, as a cut-off body is).
        let bad_labels = meta(serde_json::json!([{"metadata": {"name": "a", "labels": 5}}]));
        assert!(matches!(
            list_items("Secret", parsed(&bad_labels)),
            Err(StoreError::Malformed(_))
        ));
        assert!(matches!(
            Page::parse(
                "Secret",
                "{\"kind\": \"PartialObjectMetadataList\", \"items\": ["
            ),
            Err(ApiError::Transport(_))
        ));
        // Empty, as kube-apiserver and as a full list answer it.
        assert!(list_items("Secret", parsed(&meta(serde_json::Value::Null)))
            .unwrap()
            .is_empty());
        assert!(list_items("Secret", parsed(&meta(serde_json::json!([]))))
            .unwrap()
            .is_empty());
        assert!(list_items(
            "Secret",
            parsed(&serde_json::json!({"kind": "SecretList", "items": []}))
        )
        .unwrap()
        .is_empty());
    }

    fn parsed(answer: &serde_json::Value) -> Page {
        Page::parse("Secret", &answer.to_string()).unwrap()
    }

    /// An item as kube-apiserver sends it: what a header needs is read, the rest (managed
    /// fields, annotations, owner references, whatever their shape) skipped.
    #[test]
    fn items_keep_what_headers_need_and_skip_the_rest() {
        let answer = serde_json::json!({
            "kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": "42", "continue": "t1", "remainingItemCount": 3},
            "items": [{
                "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                "metadata": {
                    "name": "sh.helm.release.v1.db.v3", "namespace": "shared", "uid": "u",
                    "resourceVersion": "41", "creationTimestamp": "2026-01-02T03:04:05Z",
                    "labels": {"name": "db", "owner": "helm", "status": "deployed", "version": "3"},
                    "annotations": {"a": "b"},
                    "managedFields": [{"manager": "helm", "fieldsV1": {"f:data": {".": {}}}}],
                    "ownerReferences": [], "finalizers": null
                }
            }]
        });
        let page = parsed(&answer);
        assert_eq!(page.version(), Some("42"));
        assert_eq!(page.next(), Some("t1"));
        let items = list_items("Secret", page).unwrap();
        let header = header_from_meta("Secret", &items[0], Some("shared")).unwrap();
        assert_eq!(header.name, "sh.helm.release.v1.db.v3");
        assert_eq!(header.revision, 3);
        assert_eq!(header.status, ReleaseStatus::Deployed);
        assert_eq!(header.write_token.as_deref(), Some("41"));
        assert_eq!(header.created.as_deref(), Some("2026-01-02T03:04:05Z"));
        assert_eq!(items[0].annotations, None);
        assert_eq!(items[0].managed_fields, None);
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(path_segment("shared"), "shared");
        assert_eq!(path_segment("a/b?c"), "a%2Fb%3Fc");
        assert_eq!(
            path_segment("sh.helm.release.v1.db.v3"),
            "sh.helm.release.v1.db.v3"
        );
        assert_eq!(path_segment(""), "");
    }

    fn page(names: &[&str], next: Option<&str>) -> Page {
        let items: Vec<serde_json::Value> = names
            .iter()
            .map(|n| serde_json::json!({"metadata": {"name": n}}))
            .collect();
        let mut meta = serde_json::json!({});
        if let Some(next) = next {
            meta["continue"] = next.into();
        }
        parsed(
            &serde_json::json!({"kind": "PartialObjectMetadataList", "metadata": meta, "items": items}),
        )
    }

    fn name(meta: &ObjectMeta) -> Result<String, StoreError> {
        Ok(meta.name.clone().unwrap_or_default())
    }

    #[tokio::test]
    async fn lists_follow_continue_tokens_page_by_page() {
        let asked = std::cell::RefCell::new(Vec::new());
        let (got, _) = list_pages_versioned(
            "Secret",
            "listing",
            LIST_PAGE_SIZE,
            |token| {
                asked.borrow_mut().push(token.clone());
                let answer = match token.as_deref() {
                    None => page(&["a", "b"], Some("t1")),
                    Some("t1") => page(&["c"], Some("t2")),
                    Some("t2") => page(&[], Some("")),
                    Some(other) => panic!("unexpected token {other}"),
                };
                async move { Ok(answer) }
            },
            name,
        )
        .await
        .unwrap();
        assert_eq!(got, ["a", "b", "c"]);
        assert_eq!(
            *asked.borrow(),
            [None, Some("t1".to_string()), Some("t2".to_string())]
        );
        assert_eq!(LIST_PAGE_SIZE, 500);
    }

    #[tokio::test]
    async fn an_expired_continue_token_fails_closed() {
        let err = list_pages_versioned(
            "Secret",
            "listing Secrets (owner=helm) in all namespaces",
            LIST_PAGE_SIZE,
            |token| async move {
                match token {
                    None => Ok(page(&["a"], Some("t1"))),
                    Some(_) => Err(ApiError::Status {
                        code: 410,
                        reason: "Expired".into(),
                        message: "too old resource version".into(),
                        retry_after: None,
                    }),
                }
            },
            name,
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "listing Secrets (owner=helm) in all namespaces: the list changed too much while \
             it was read in pages of 500 (the server expired the continue token after page 1: \
             410 Expired); run the command again; refusing to read it as an empty or partial \
             release"
        );
        // A 410 on the first page is the server's own answer, passed on as it is.
        let err = list_pages_versioned(
            "Secret",
            "listing",
            LIST_PAGE_SIZE,
            |_| async {
                Err::<Page, _>(ApiError::Status {
                    code: 410,
                    reason: "Gone".into(),
                    message: "gone".into(),
                    retry_after: None,
                })
            },
            name,
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Refused);
        assert_eq!(err.to_string(), "the API server answered 410 Gone: gone");
        assert_eq!(err.status(), "410 Gone");
    }

    #[tokio::test]
    async fn a_repeated_continue_token_is_refused() {
        let err = list_pages_versioned(
            "Secret",
            "listing",
            LIST_PAGE_SIZE,
            |_| async { Ok(page(&["a"], Some("same"))) },
            name,
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains("repeats the continue token"),
            "{err}"
        );
    }
}
