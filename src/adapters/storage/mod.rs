//! Reading and rewriting Helm's release records.
//!
//! Modelled on Helm's `pkg/storage/driver`: one interface ([`ReleaseStore`]) and one
//! implementation per backing store ([`kube_store::KubeStore`] for Secrets and ConfigMaps,
//! [`memory::MemoryStore`] for tests). Commands use [`Store`], which picks the driver at run
//! time from `HELM_DRIVER`.
//!
//! Reads never grow with release history: records are listed as metadata only (labels carry
//! revision and status) and only the records a decision needs are fetched and decoded.
//! Nothing read is trusted blindly: a record that does not look like one helm wrote fails
//! the read ([`InvalidRecord`]), so decisions are never made from a partial picture.

mod driver;
pub(crate) mod kube_store;
#[cfg(test)]
pub(crate) mod memory;
pub(crate) mod sql;
mod sql_conn;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;

pub use self::driver::DriverKind;
use self::kube_store::KubeStore;
use crate::adapters::retry::{Retryable, Verdict};
use crate::core::release::ReleaseStatus;

/// Label Helm puts the release name in.
pub const LABEL_NAME: &str = "name";
/// Label Helm puts `helm` in.
pub const LABEL_OWNER: &str = "owner";
/// Label Helm puts the revision status in.
pub const LABEL_STATUS: &str = "status";
/// Label Helm puts the revision number in.
pub const LABEL_VERSION: &str = "version";

/// The label selector Helm uses to find a release's records.
pub(crate) fn release_selector(release: &str) -> String {
    format!("{LABEL_NAME}={release},{LABEL_OWNER}=helm")
}

/// One record as seen through a metadata-only list: everything but the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Object name, `sh.helm.release.v1.<release>.v<revision>`.
    pub name: String,
    /// Namespace of the record.
    pub namespace: String,
    /// Release name from the `name` label.
    pub release: String,
    /// Revision from the `version` label.
    pub revision: u64,
    /// Status from the `status` label.
    pub status: ReleaseStatus,
    /// All labels, system and custom.
    pub labels: BTreeMap<String, String>,
    /// The record as read, for optimistic concurrency: a rewrite hands it back and is
    /// refused ([`ErrorKind::Conflict`]) when the record changed since. Opaque: the
    /// Kubernetes drivers put the object's resourceVersion here, the SQL driver the row's
    /// `xmin`.
    pub write_token: Option<String>,
    /// When the record was created, RFC 3339, if the store says (a Secret's
    /// `creationTimestamp`, the row's `createdAt`).
    pub created: Option<String>,
}

/// Where one read of a release's records stands, for waiting on changes from there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordsVersion {
    /// Where a watch of the records resumes, opaque (the Kubernetes drivers: the list's
    /// resourceVersion); None where the store cannot watch and is polled instead.
    pub watch_from: Option<String>,
    /// The records' names and versions, hashed: what a store that can only be polled
    /// (PostgreSQL) compares.
    pub fingerprint: u64,
}

impl RecordsVersion {
    /// The version of a read that returned `headers` (`watch_from`: where a watch resumes).
    pub fn of(headers: &[RecordHeader], watch_from: Option<String>) -> RecordsVersion {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for h in headers {
            (&h.namespace, &h.name, &h.write_token, &h.labels).hash(&mut hasher);
        }
        RecordsVersion {
            watch_from,
            fingerprint: hasher.finish(),
        }
    }
}

/// How a wait on a release's records ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordsChange {
    /// Something changed (or the version expired): read again.
    Changed,
    /// Nothing changed within the wait.
    Quiet,
}

/// A record with its encoded release (the once-base64 text Helm produces). Its `Debug`
/// shows the payload's size only: the payload holds the release's values (secrets).
#[derive(Clone)]
pub struct StoredRecord {
    /// Labels, name, revision, status.
    pub header: RecordHeader,
    /// `base64(gzip(json))` as Helm wrote it.
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for StoredRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredRecord")
            .field("header", &self.header)
            .field("payload", &format_args!("<{} bytes>", self.payload.len()))
            .finish()
    }
}

/// What a failed store request means, whichever driver said it and how (an HTTP status,
/// a SQLSTATE, a broken connection): each driver maps its own errors into these kinds, and
/// callers act on the kind only ([`StoreError::kind`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The record changed since it was read (its write token is stale): re-read and decide
    /// again; never retried blindly.
    Conflict,
    /// No such record (any more).
    NotFound,
    /// Not permitted for this identity (or its credentials were rejected).
    Forbidden,
    /// The store refused the request as it stands (invalid, unsupported, expired):
    /// retrying it cannot help.
    Refused,
    /// The store is busy or failing for a moment (overloaded, restarting, a serialization
    /// failure, no answer in time): worth retrying, not before `retry_after` when it said.
    Transient {
        /// When the store asked to be asked again, if it did.
        retry_after: Option<Duration>,
    },
    /// The connection could not be opened or broke: worth retrying.
    ConnectionLost,
    /// The store cannot be reached in a way retrying does not fix (DNS, TLS, a timeout,
    /// credentials that cannot be used).
    Unreachable,
    /// An answer or record that is not what helm or the store writes: never acted on.
    Invalid,
}

/// A request a driver's store refused or could not make, in the driver's own words (it
/// names the store: the API server, `PostgreSQL at host:port/db`). Built by the drivers
/// only; callers act on [`ErrorKind`] and use the words for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverError {
    kind: ErrorKind,
    /// The whole sentence.
    text: String,
    /// The answer in brief, for parentheses after a sentence that says what it means
    /// (`409 Conflict`); None: nothing shorter than `text`.
    status: Option<String>,
    /// The store's own words without who said them (the API's message); None: `text`.
    detail: Option<String>,
}

impl std::fmt::Display for DriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for DriverError {}

/// Failures talking to the release storage. Messages never include record payloads.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store refused the request or could not be asked.
    #[error(transparent)]
    Driver(DriverError),
    /// A record that does not look like one helm wrote.
    #[error(transparent)]
    Invalid(#[from] InvalidRecord),
    /// An answer of the wrong shape (e.g. a list without `items`).
    #[error("{0}; refusing to read it as an empty or partial release")]
    Malformed(String),
}

impl StoreError {
    /// What the failure means, whichever driver it came from.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Driver(d) => d.kind,
            StoreError::Invalid(_) | StoreError::Malformed(_) => ErrorKind::Invalid,
        }
    }

    /// The answer in brief, for parentheses after a sentence that already says what it
    /// means: `409 Conflict` from the Kubernetes drivers; the whole text where the driver
    /// has nothing shorter (PostgreSQL names itself).
    pub fn status(&self) -> String {
        match self {
            StoreError::Driver(DriverError {
                status: Some(status),
                ..
            }) => status.clone(),
            other => other.to_string(),
        }
    }

    /// The store's own words without who said them (the API's message), for a note that
    /// already names the store; the whole text where the driver keeps no such part.
    pub fn detail(&self) -> String {
        match self {
            StoreError::Driver(DriverError {
                detail: Some(detail),
                ..
            }) => detail.clone(),
            other => other.to_string(),
        }
    }
}

impl Retryable for StoreError {
    fn verdict(&self) -> Verdict {
        match self.kind() {
            ErrorKind::Transient { retry_after } => Verdict::Retry {
                server_hint: retry_after,
            },
            ErrorKind::ConnectionLost => Verdict::Retry { server_hint: None },
            // A conflict is the caller's to resolve (re-read); the rest cannot pass.
            _ => Verdict::Final,
        }
    }
}

/// A record, or the part of one, that helm would not have written: the field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name:?}: {field} {problem}")]
pub struct InvalidRecord {
    /// `Secret`, `ConfigMap`.
    pub kind: &'static str,
    /// Object name.
    pub name: String,
    /// The field at fault, e.g. `label version`.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

impl InvalidRecord {
    pub(crate) fn new(kind: &'static str, name: &str, field: &str, problem: &str) -> Self {
        InvalidRecord {
            kind,
            name: name.to_string(),
            field: field.to_string(),
            problem: problem.to_string(),
        }
    }
}

/// Two records of one release claiming the same revision: helm never writes that, and which
/// one counts cannot be known.
pub(crate) fn check_unique_revisions(
    kind: &'static str,
    headers: &[RecordHeader],
) -> Result<(), InvalidRecord> {
    for pair in headers.windows(2) {
        if pair[0].namespace == pair[1].namespace && pair[0].revision == pair[1].revision {
            return Err(InvalidRecord::new(
                kind,
                &pair[1].name,
                "label version",
                &format!(
                    "repeats revision {} of {:?}",
                    pair[0].revision, pair[0].name
                ),
            ));
        }
    }
    Ok(())
}

/// Equality terms of a label selector (`name=db,owner=helm`); a bare key requires the
/// label to exist. Only what the commands use.
pub(crate) fn parse_selector(selector: &str) -> Vec<(String, Option<String>)> {
    selector
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| match t.split_once('=') {
            Some((k, v)) => (
                k.trim_end_matches('=').trim().to_string(),
                Some(v.trim_start_matches('=').trim().to_string()),
            ),
            None => (t.to_string(), None),
        })
        .collect()
}

/// Retries `op` on transient errors under [`crate::adapters::retry::RetryPolicy::API`]; `what` names
/// the request in the retry notices.
pub(crate) async fn with_retry<T, E, F, Fut>(what: &str, op: F) -> Result<T, E>
where
    E: Retryable,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    crate::adapters::retry::run(what, op).await
}

/// The driver interface every store implements (static dispatch only).
#[allow(async_fn_in_trait)]
pub(crate) trait ReleaseStore {
    /// Namespace the store reads.
    fn namespace(&self) -> &str;
    /// What a record is in this store: `Secret`, `ConfigMap`, `releases_v1` (a row).
    fn kind(&self) -> &'static str;
    /// A command that shows `record` with its labels, for messages that send the user to
    /// look (`kubectl get secret … --show-labels`, a `SELECT` for PostgreSQL).
    fn show_command(&self, record: &str) -> String;
    /// Headers of every record of `release`, metadata only, sorted by revision.
    async fn list_headers(&self, release: &str) -> Result<Vec<RecordHeader>, StoreError>;
    /// [`ReleaseStore::list_headers`] with where the read stands, to wait for changes from.
    async fn list_headers_versioned(
        &self,
        release: &str,
    ) -> Result<(Vec<RecordHeader>, RecordsVersion), StoreError> {
        let headers = self.list_headers(release).await?;
        let version = RecordsVersion::of(&headers, None);
        Ok((headers, version))
    }
    /// Waits up to `max` (at most one watch, [`crate::adapters::cluster::WATCH_SECONDS`])
    /// for `release`'s records to change after `since`, by watching their metadata; `None`
    /// when this store has no watch (PostgreSQL) or the read gave no version to resume
    /// from: such records are polled ([`RecordsVersion::fingerprint`]).
    async fn watch_records(
        &self,
        release: &str,
        since: &RecordsVersion,
        max: Duration,
    ) -> Option<Result<RecordsChange, StoreError>> {
        let _ = (release, since, max);
        None
    }
    /// Headers of records matching `selector` in this namespace or, with `all`, everywhere.
    async fn list_headers_matching(
        &self,
        selector: &str,
        all_namespaces: bool,
    ) -> Result<Vec<RecordHeader>, StoreError>;
    /// Hands every header matching `selector` to `visit` as it is read (page by page where
    /// the store pages), keeping none: memory stays flat however many records match.
    async fn visit_headers_matching(
        &self,
        selector: &str,
        all_namespaces: bool,
        visit: &mut dyn FnMut(RecordHeader) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for header in self.list_headers_matching(selector, all_namespaces).await? {
            visit(header)?;
        }
        Ok(())
    }
    /// One record with its payload.
    async fn get(&self, name: &str) -> Result<StoredRecord, StoreError>;
    /// Sets (Some) or removes (None) labels, only if the record is still at
    /// `write_token`. Returns the new token.
    async fn patch_labels(
        &self,
        name: &str,
        write_token: &str,
        labels: &BTreeMap<String, Option<String>>,
    ) -> Result<Option<String>, StoreError>;
    /// Replaces the payload and label changes together, only if the record is still at
    /// `write_token`.
    async fn rewrite(
        &self,
        name: &str,
        write_token: &str,
        payload: &str,
        labels: &BTreeMap<String, Option<String>>,
    ) -> Result<Option<String>, StoreError>;
}

/// The store a command works with, chosen at run time from `HELM_DRIVER`.
pub(crate) enum Store {
    /// `HELM_DRIVER=secret` (default).
    Secrets(KubeStore<Secret>),
    /// `HELM_DRIVER=configmap`.
    ConfigMaps(KubeStore<ConfigMap>),
    /// `HELM_DRIVER=sql`: helm's PostgreSQL tables.
    Sql(sql::SqlStore),
    /// Records in memory, for command tests without a server.
    #[cfg(test)]
    Memory(memory::MemoryStore),
}

/// Runs `$body` with `$store` bound to whichever driver `$self` holds.
macro_rules! each_driver {
    ($self:expr, $store:ident => $body:expr) => {
        match $self {
            Store::Secrets($store) => $body,
            Store::ConfigMaps($store) => $body,
            Store::Sql($store) => $body,
            #[cfg(test)]
            Store::Memory($store) => $body,
        }
    };
}

impl Store {
    /// The store helm would use for `driver` in `namespace` (the SQL driver connects to
    /// PostgreSQL here, as helm does).
    pub(crate) async fn open(
        driver: DriverKind,
        client: Client,
        namespace: &str,
    ) -> Result<Store, sql::SqlConnectError> {
        Ok(match driver {
            DriverKind::Secret => Store::Secrets(KubeStore::new(client, namespace)),
            DriverKind::ConfigMap => Store::ConfigMaps(KubeStore::new(client, namespace)),
            DriverKind::Sql => Store::Sql(sql::SqlStore::connect_from_env(namespace).await?),
        })
    }

    /// `secret` or `configmap`, as `HELM_DRIVER` spells it.
    pub(crate) fn driver_name(&self) -> &'static str {
        match self {
            Store::Secrets(_) => "secret",
            Store::ConfigMaps(_) => "configmap",
            Store::Sql(_) => "sql",
            #[cfg(test)]
            Store::Memory(_) => "memory",
        }
    }
}

impl ReleaseStore for Store {
    fn namespace(&self) -> &str {
        each_driver!(self, s => s.namespace())
    }

    fn kind(&self) -> &'static str {
        each_driver!(self, s => s.kind())
    }

    fn show_command(&self, record: &str) -> String {
        each_driver!(self, s => s.show_command(record))
    }

    async fn list_headers(&self, release: &str) -> Result<Vec<RecordHeader>, StoreError> {
        each_driver!(self, s => s.list_headers(release).await)
    }

    async fn list_headers_versioned(
        &self,
        release: &str,
    ) -> Result<(Vec<RecordHeader>, RecordsVersion), StoreError> {
        each_driver!(self, s => s.list_headers_versioned(release).await)
    }

    async fn watch_records(
        &self,
        release: &str,
        since: &RecordsVersion,
        max: Duration,
    ) -> Option<Result<RecordsChange, StoreError>> {
        each_driver!(self, s => s.watch_records(release, since, max).await)
    }

    async fn list_headers_matching(
        &self,
        selector: &str,
        all_namespaces: bool,
    ) -> Result<Vec<RecordHeader>, StoreError> {
        each_driver!(self, s => s.list_headers_matching(selector, all_namespaces).await)
    }

    async fn visit_headers_matching(
        &self,
        selector: &str,
        all_namespaces: bool,
        visit: &mut dyn FnMut(RecordHeader) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        each_driver!(self, s => s.visit_headers_matching(selector, all_namespaces, visit).await)
    }

    async fn get(&self, name: &str) -> Result<StoredRecord, StoreError> {
        each_driver!(self, s => s.get(name).await)
    }

    async fn patch_labels(
        &self,
        name: &str,
        write_token: &str,
        labels: &BTreeMap<String, Option<String>>,
    ) -> Result<Option<String>, StoreError> {
        each_driver!(self, s => s.patch_labels(name, write_token, labels).await)
    }

    async fn rewrite(
        &self,
        name: &str,
        write_token: &str,
        payload: &str,
        labels: &BTreeMap<String, Option<String>>,
    ) -> Result<Option<String>, StoreError> {
        each_driver!(self, s => s.rewrite(name, write_token, payload, labels).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record's Debug never shows its payload (the release's values).
    #[test]
    fn a_records_debug_hides_its_payload() {
        let record = StoredRecord {
            header: RecordHeader {
                name: "sh.helm.release.v1.db.v1".into(),
                namespace: "shared".into(),
                release: "db".into(),
                revision: 1,
                status: ReleaseStatus::Deployed,
                labels: BTreeMap::new(),
                write_token: None,
                created: None,
            },
            payload: b"password: hunter2".to_vec(),
        };
        let shown = format!("{record:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("104, 117"),
            "{shown}"
        );
        assert!(shown.contains("<17 bytes>"), "{shown}");
    }

    /// A driver's failure with nothing but its kind and sentence.
    fn driver(kind: ErrorKind, text: &str) -> StoreError {
        StoreError::Driver(DriverError {
            kind,
            text: text.into(),
            status: None,
            detail: None,
        })
    }

    #[test]
    fn selector_follows_helm() {
        assert_eq!(release_selector("db"), "name=db,owner=helm");
    }

    #[test]
    fn kinds_decide_the_retry() {
        let transient = |retry_after| ErrorKind::Transient { retry_after };
        let hint = Some(Duration::from_secs(2));
        for (kind, verdict) in [
            (transient(None), Verdict::Retry { server_hint: None }),
            (transient(hint), Verdict::Retry { server_hint: hint }),
            (
                ErrorKind::ConnectionLost,
                Verdict::Retry { server_hint: None },
            ),
            (ErrorKind::Conflict, Verdict::Final),
            (ErrorKind::NotFound, Verdict::Final),
            (ErrorKind::Forbidden, Verdict::Final),
            (ErrorKind::Refused, Verdict::Final),
            (ErrorKind::Unreachable, Verdict::Final),
        ] {
            let e = driver(kind, "the store said no");
            assert_eq!(e.kind(), kind);
            assert_eq!(e.verdict(), verdict, "{kind:?}");
        }
        let malformed = StoreError::Malformed("x".into());
        assert_eq!(malformed.kind(), ErrorKind::Invalid);
        assert_eq!(malformed.verdict(), Verdict::Final);
    }

    #[test]
    fn a_driver_without_a_brief_form_is_quoted_whole() {
        let e = driver(
            ErrorKind::Conflict,
            "PostgreSQL at db:5432/helm: row changed",
        );
        assert_eq!(e.to_string(), "PostgreSQL at db:5432/helm: row changed");
        assert_eq!(e.status(), e.to_string());
        assert_eq!(e.detail(), e.to_string());
    }
}
