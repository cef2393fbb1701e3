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
use kube::api::PostParams;
use kube::{Api, Client};

pub use self::driver::DriverKind;
use self::kube_store::KubeStore;
use crate::adapters::retry::{Retryable, Verdict};
use crate::core::chain::error_chain;
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
    /// refused ([`Failure::Conflict`]) when the record changed since. Opaque: the
    /// Kubernetes drivers put the object's resourceVersion here, the SQL driver the row's
    /// `xmin`.
    pub write_token: Option<String>,
    /// `metadata.creationTimestamp` as RFC 3339, if the server set one.
    pub created: Option<String>,
}

/// Where one read of a release's records stands, for waiting on changes from there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordsVersion {
    /// The list's `resourceVersion` (Secrets, ConfigMaps): a watch resumes from it.
    pub list: Option<String>,
    /// The records' names and versions, hashed: what a store that can only be polled
    /// (PostgreSQL) compares.
    pub fingerprint: u64,
}

impl RecordsVersion {
    /// The version of a read that returned `headers` (`list`: the list's resourceVersion).
    pub fn of(headers: &[RecordHeader], list: Option<String>) -> RecordsVersion {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for h in headers {
            (&h.namespace, &h.name, &h.write_token, &h.labels).hash(&mut hasher);
        }
        RecordsVersion {
            list,
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

/// A record with its encoded release (the once-base64 text Helm produces).
#[derive(Clone, Debug)]
pub struct StoredRecord {
    /// Labels, name, revision, status.
    pub header: RecordHeader,
    /// `base64(gzip(json))` as Helm wrote it.
    pub payload: Vec<u8>,
}

/// What a failed store request means to the commands, whichever driver said it and how
/// (an HTTP status, a SQLSTATE, a broken connection): each driver maps its own errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The record changed since it was read (its write token is stale).
    Conflict,
    /// No such record (any more).
    NotFound,
    /// Not permitted.
    Forbidden,
    /// Worth retrying: the server is busy, restarting or unreachable.
    Transient,
    /// Anything else: a refused request, a wrong answer, an invalid record.
    Other,
}

impl Failure {
    /// The Kubernetes drivers' mapping of an HTTP status.
    fn of_http(code: u16) -> Failure {
        match code {
            409 => Failure::Conflict,
            404 => Failure::NotFound,
            401 | 403 => Failure::Forbidden,
            429 | 500.. => Failure::Transient,
            _ => Failure::Other,
        }
    }
}

/// Failures talking to the release storage. Messages never include record payloads.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The API answered with a Status error.
    #[error("the API server answered {}: {message}", status_line(*code, reason))]
    Api {
        /// HTTP code.
        code: u16,
        /// Status reason, e.g. `Forbidden`.
        reason: String,
        /// Status message.
        message: String,
        /// `details.retryAfterSeconds`: when the server asked us to retry.
        retry_after: Option<Duration>,
    },
    /// The server could not be reached or the connection broke.
    #[error("cannot reach the API server: {0}")]
    Transport(String),
    /// A classified connection or identity failure naming the server and context
    /// (DNS, refused, TLS, 401, 403, timeout; see `cluster::classify`).
    #[error("{0}")]
    Connection(crate::adapters::cluster::ConnectionFailure),
    /// PostgreSQL (`HELM_DRIVER=sql`) refused a statement, found no row or a changed one,
    /// or could not be reached. Named after the database, never "the API server".
    #[error("PostgreSQL at {server}: {message}")]
    Database {
        /// `host:port/dbname`, without credentials.
        server: String,
        /// What it means (the SQL driver's mapping): no privilege, no such row, the row
        /// changed since it was read, transient (operator intervention, serialization
        /// failure, resources, a connection that broke or could not be opened), or other.
        failure: Failure,
        /// What happened, with the SQLSTATE when the server answered one.
        message: String,
    },
    /// A record that does not look like one helm wrote.
    #[error("{0}")]
    Invalid(#[from] InvalidRecord),
    /// An answer of the wrong shape (e.g. a list without `items`).
    #[error("{0}; refusing to read it as an empty or partial release")]
    Malformed(String),
}

/// `500 InternalError`, or `500` when the Status gave no reason (an etcd failure does not).
fn status_line(code: u16, reason: &str) -> String {
    match reason.trim() {
        "" => code.to_string(),
        reason => format!("{code} {reason}"),
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

impl StoreError {
    /// True for errors worth retrying: server errors, throttling and broken connections.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Api { code, .. } => *code >= 500 || *code == 429,
            StoreError::Transport(_) => true,
            StoreError::Database { failure, .. } => *failure == Failure::Transient,
            StoreError::Connection(f) => f.is_transient(),
            StoreError::Invalid(_) | StoreError::Malformed(_) => false,
        }
    }

    /// The HTTP code of a Kubernetes API error (None for PostgreSQL and the rest: what the
    /// commands act on is [`StoreError::failure`]).
    pub fn code(&self) -> Option<u16> {
        match self {
            StoreError::Api { code, .. } => Some(*code),
            StoreError::Connection(f) => f.code(),
            _ => None,
        }
    }

    /// What the failure means, whichever driver it came from.
    pub fn failure(&self) -> Failure {
        match self {
            StoreError::Api { code, .. } => Failure::of_http(*code),
            StoreError::Connection(f) => match f.code() {
                Some(code) => Failure::of_http(code),
                None if f.is_transient() => Failure::Transient,
                None => Failure::Other,
            },
            StoreError::Database { failure, .. } => *failure,
            StoreError::Transport(_) => Failure::Transient,
            StoreError::Invalid(_) | StoreError::Malformed(_) => Failure::Other,
        }
    }
}

impl From<kube::Error> for StoreError {
    fn from(e: kube::Error) -> StoreError {
        if let Some(failure) = crate::adapters::cluster::classify(&e) {
            return StoreError::Connection(failure);
        }
        match e {
            kube::Error::Api(status) => StoreError::Api {
                code: status.code,
                reason: status.reason.clone(),
                message: status.message.clone(),
                retry_after: status
                    .details
                    .as_ref()
                    .map(|d| d.retry_after_seconds)
                    .filter(|s| *s > 0)
                    .map(|s| Duration::from_secs(u64::from(s))),
            },
            other => StoreError::Transport(error_chain(&other)),
        }
    }
}

impl Retryable for StoreError {
    fn verdict(&self) -> Verdict {
        match self {
            // 409: the object moved on; retrying the same write blindly is wrong.
            StoreError::Api { code: 409, .. } => Verdict::Final,
            StoreError::Api {
                code, retry_after, ..
            } if *code >= 500 || *code == 429 => Verdict::Retry {
                server_hint: *retry_after,
            },
            StoreError::Transport(_) => Verdict::Retry { server_hint: None },
            StoreError::Database { .. } if self.is_transient() => {
                Verdict::Retry { server_hint: None }
            }
            // Refused or broken connections; TLS, DNS, 401/403 and timeouts are final.
            StoreError::Connection(f) if f.is_transient() => Verdict::Retry { server_hint: None },
            _ => Verdict::Final,
        }
    }
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
pub(crate) async fn with_retry<T, F, Fut>(what: &str, op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    crate::adapters::retry::run(what, op).await
}

/// The driver interface every store implements (static dispatch only).
#[allow(async_fn_in_trait)]
pub(crate) trait ReleaseStore {
    /// Namespace the store reads.
    fn namespace(&self) -> &str;
    /// `Secret` or `ConfigMap`.
    fn kind(&self) -> &'static str;
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

/// Creates `namespace` if it does not exist (what `helm --create-namespace` does).
pub(crate) async fn ensure_namespace(client: &Client, namespace: &str) -> Result<bool, StoreError> {
    use k8s_openapi::api::core::v1::Namespace;
    let api: Api<Namespace> = Api::all(client.clone());
    if with_retry(&format!("reading namespace {namespace:?}"), || async {
        Ok(api.get_opt(namespace).await?)
    })
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
    fn selector_follows_helm() {
        assert_eq!(release_selector("db"), "name=db,owner=helm");
    }

    #[test]
    fn transient_errors() {
        let api = |code| StoreError::Api {
            code,
            reason: String::new(),
            message: String::new(),
            retry_after: None,
        };
        assert!(api(500).is_transient());
        assert!(api(503).is_transient());
        assert!(api(429).is_transient());
        assert!(!api(403).is_transient());
        assert!(!api(404).is_transient());
        assert!(!api(409).is_transient());
        assert!(StoreError::Transport("reset".into()).is_transient());
        assert!(!StoreError::Malformed("x".into()).is_transient());
    }

    #[test]
    fn api_errors_without_a_reason_read_cleanly() {
        let api = |reason: &str| StoreError::Api {
            code: 500,
            reason: reason.into(),
            message: "rpc error: code = Unavailable".into(),
            retry_after: None,
        };
        assert_eq!(
            api("").to_string(),
            "the API server answered 500: rpc error: code = Unavailable"
        );
        assert_eq!(
            api("InternalError").to_string(),
            "the API server answered 500 InternalError: rpc error: code = Unavailable"
        );
    }

    #[test]
    fn database_errors_name_the_database_and_keep_the_api_classes() {
        let db = |failure| StoreError::Database {
            server: "db.example:5432/helm".into(),
            failure,
            message: "terminating connection due to administrator command (SQLSTATE 57P01)".into(),
        };
        assert_eq!(
            db(Failure::Transient).to_string(),
            "PostgreSQL at db.example:5432/helm: terminating connection due to administrator \
             command (SQLSTATE 57P01)"
        );
        for (code, transient) in [
            (Failure::Transient, true),
            (Failure::Other, false),
            (Failure::Forbidden, false),
            (Failure::NotFound, false),
            (Failure::Conflict, false),
        ] {
            let e = db(code);
            assert_eq!(e.failure(), code);
            assert_eq!(e.code(), None, "PostgreSQL has no HTTP codes");
            assert_eq!(e.is_transient(), transient, "{code:?}");
            assert_eq!(
                e.verdict(),
                if transient {
                    Verdict::Retry { server_hint: None }
                } else {
                    Verdict::Final
                },
                "{code:?}"
            );
        }
    }
}
