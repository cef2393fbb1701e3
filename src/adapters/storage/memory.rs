//! Release records in memory, so command logic (locking, unlocking, status) is tested
//! without a server. Behaves like the API where commands depend on it: label selectors on
//! `name`/`owner`, resourceVersion preconditions (409), and 404 for missing records; its
//! failures are worded and mapped as the Kubernetes drivers word and map the API's.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{RecordHeader, ReleaseStore, StoreError, StoredRecord};
use crate::adapters::cluster::ApiError;
use crate::core::release::ReleaseStatus;

/// An in-memory store of one namespace.
pub(crate) struct MemoryStore {
    namespace: String,
    records: Mutex<BTreeMap<String, StoredRecord>>,
    next_version: Mutex<u64>,
    /// Records whose writes are answered 403 (tests of failures part-way).
    forbidden: Mutex<Vec<String>>,
    /// A fault armed on a later write: (writes to let through first, the answer: an HTTP
    /// code, or None for a dropped connection).
    fault: Mutex<Option<(usize, Option<u16>)>>,
}

impl MemoryStore {
    /// An empty store for `namespace`.
    pub(crate) fn new(namespace: &str) -> MemoryStore {
        MemoryStore {
            namespace: namespace.to_string(),
            records: Mutex::new(BTreeMap::new()),
            next_version: Mutex::new(1),
            forbidden: Mutex::new(Vec::new()),
            fault: Mutex::new(None),
        }
    }

    /// The write after the next `skip` writes fails, nothing changed: answered `code`
    /// (409, 500, …), or the connection drops (None). Once.
    pub(crate) fn fail_write(&self, skip: usize, code: Option<u16>) {
        *self.fault.lock().expect("memory store") = Some((skip, code));
    }

    /// Writes succeed again (undoes [`Self::forbid_writes`]).
    pub(crate) fn allow_writes(&self) {
        self.forbidden.lock().expect("memory store").clear();
    }

    /// From the first write after the next payload rewrite of `name` on, writes to it fail
    /// with 403 Forbidden (the rewrite itself succeeds).
    pub(crate) fn forbid_after_rewrite(&self, name: &str) {
        self.forbidden
            .lock()
            .expect("memory store")
            .push(format!("after-rewrite:{name}"));
    }

    /// From now on, writes to the record `name` fail with 403 Forbidden.
    pub(crate) fn forbid_writes(&self, name: &str) {
        self.forbidden
            .lock()
            .expect("memory store")
            .push(name.to_string());
    }

    /// The next write to `name` is answered 404 Not Found although the record exists (a
    /// proxy or API server answering wrongly), nothing changed.
    pub(crate) fn answer_404_once(&self, name: &str) {
        self.forbidden
            .lock()
            .expect("memory store")
            .push(format!("404-once:{name}"));
    }

    fn bump(&self) -> String {
        let mut next = self.next_version.lock().expect("memory store");
        *next += 1;
        next.to_string()
    }

    /// Adds a record as helm would write it: `payload` is helm's once-encoded release.
    pub(crate) fn insert(
        &self,
        release: &str,
        revision: u64,
        status: ReleaseStatus,
        extra_labels: &[(&str, &str)],
        payload: String,
    ) {
        let name = format!("sh.helm.release.v1.{release}.v{revision}");
        let mut labels = BTreeMap::from([
            ("name".to_string(), release.to_string()),
            ("owner".to_string(), "helm".to_string()),
            ("status".to_string(), status.as_str().to_string()),
            ("version".to_string(), revision.to_string()),
        ]);
        labels.extend(
            extra_labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let header = RecordHeader {
            name: name.clone(),
            namespace: self.namespace.clone(),
            release: release.to_string(),
            revision,
            status,
            labels,
            write_token: Some(self.bump()),
            created: None,
        };
        let record = StoredRecord {
            header,
            payload: payload.into_bytes(),
        };
        self.records
            .lock()
            .expect("memory store")
            .insert(name, record);
    }

    /// Every record, by name.
    pub(crate) fn records(&self) -> BTreeMap<String, StoredRecord> {
        self.records.lock().expect("memory store").clone()
    }

    fn update(
        &self,
        name: &str,
        write_token: &str,
        payload: Option<&str>,
        labels: &BTreeMap<String, Option<String>>,
    ) -> Result<Option<String>, StoreError> {
        {
            let mut fault = self.fault.lock().expect("memory store");
            match *fault {
                Some((0, code)) => {
                    *fault = None;
                    return Err(match code {
                        None => ApiError::Transport("connection reset by peer".into()),
                        Some(code) => ApiError::Status {
                            code,
                            reason: String::new(),
                            message: format!("fault on writing {name:?}"),
                            retry_after: None,
                        },
                    }
                    .into());
                }
                Some((n, code)) => *fault = Some((n - 1, code)),
                None => {}
            }
        }
        if self
            .forbidden
            .lock()
            .expect("memory store")
            .iter()
            .any(|n| n == name)
        {
            return Err(ApiError::Status {
                code: 403,
                reason: "Forbidden".into(),
                message: format!("writing {name:?} is forbidden"),
                retry_after: None,
            }
            .into());
        }
        {
            let mut forbidden = self.forbidden.lock().expect("memory store");
            let once = format!("404-once:{name}");
            if let Some(i) = forbidden.iter().position(|n| *n == once) {
                forbidden.remove(i);
                return Err(not_found(name));
            }
        }
        if payload.is_some() {
            let mut forbidden = self.forbidden.lock().expect("memory store");
            let armed = format!("after-rewrite:{name}");
            if let Some(i) = forbidden.iter().position(|n| *n == armed) {
                forbidden[i] = name.to_string();
            }
        }
        let version = self.bump();
        let mut records = self.records.lock().expect("memory store");
        let record = records.get_mut(name).ok_or_else(|| not_found(name))?;
        if record.header.write_token.as_deref() != Some(write_token) {
            return Err(ApiError::Status {
                code: 409,
                reason: "Conflict".into(),
                message: format!("the object {name:?} has been modified"),
                retry_after: None,
            }
            .into());
        }
        for (k, v) in labels {
            match v {
                Some(v) => record.header.labels.insert(k.clone(), v.clone()),
                None => record.header.labels.remove(k),
            };
        }
        if let Some(status) = record.header.labels.get("status") {
            record.header.status = ReleaseStatus::parse(status);
        }
        if let Some(p) = payload {
            record.payload = p.as_bytes().to_vec();
        }
        record.header.write_token = Some(version.clone());
        Ok(Some(version))
    }
}

fn not_found(name: &str) -> StoreError {
    ApiError::Status {
        code: 404,
        reason: "NotFound".into(),
        message: format!("{name:?} not found"),
        retry_after: None,
    }
    .into()
}

/// Whether `labels` satisfy every term of an equality selector.
fn matches(selector: &str, labels: &BTreeMap<String, String>) -> bool {
    super::parse_selector(selector)
        .iter()
        .all(|(k, v)| match v {
            Some(v) => labels.get(k) == Some(v),
            None => labels.contains_key(k),
        })
}

impl ReleaseStore for MemoryStore {
    fn namespace(&self) -> &str {
        &self.namespace
    }

    fn kind(&self) -> &'static str {
        "Secret"
    }

    fn show_command(&self, record: &str) -> String {
        super::kube_store::show_command(self.kind(), record, &self.namespace)
    }

    async fn list_headers(&self, release: &str) -> Result<Vec<RecordHeader>, StoreError> {
        self.list_headers_matching(&super::release_selector(release), false)
            .await
    }

    async fn list_headers_matching(
        &self,
        selector: &str,
        _all_namespaces: bool,
    ) -> Result<Vec<RecordHeader>, StoreError> {
        let mut headers: Vec<RecordHeader> = self
            .records
            .lock()
            .expect("memory store")
            .values()
            .filter(|r| matches(selector, &r.header.labels))
            .map(|r| r.header.clone())
            .collect();
        headers.sort_by_key(|h| h.revision);
        Ok(headers)
    }

    async fn get(&self, name: &str) -> Result<StoredRecord, StoreError> {
        self.records
            .lock()
            .expect("memory store")
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))
    }

    async fn patch_labels(
        &self,
        name: &str,
        write_token: &str,
        labels: &BTreeMap<String, Option<String>>,
    ) -> Result<Option<String>, StoreError> {
        self.update(name, write_token, None, labels)
    }

    async fn rewrite(
        &self,
        name: &str,
        write_token: &str,
        payload: &str,
        labels: &BTreeMap<String, Option<String>>,
    ) -> Result<Option<String>, StoreError> {
        self.update(name, write_token, Some(payload), labels)
    }
}
