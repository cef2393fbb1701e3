//! Reading what is deployed: list record metadata, decode only the records a decision
//! needs, and check every one of them against what was asked.
//!
//! This is the one place a hard lock's `pending-upgrade` record is recognised as the
//! deployed revision it really is (see [`read_release`]).

use std::sync::Arc;

use crate::adapters::storage::{
    InvalidRecord, RecordHeader, RecordsVersion, ReleaseStore, StoreError, StoredRecord,
};
use crate::core::decision::{rollback_target, DeployedState, RecordMeta};
use crate::core::lock;
use crate::core::release::{decode_release, DecodeError, ReleaseStatus, ReleaseSummary};

/// The release as found in storage, with the headers the state was built from.
#[derive(Clone, Debug)]
pub(crate) struct ReleaseView {
    /// Input for the decision.
    pub state: DeployedState,
    /// Every record header, sorted by revision (metadata only).
    pub headers: Vec<RecordHeader>,
    /// Where the read stands: a wait for changes starts from here.
    pub version: RecordsVersion,
    /// The records decoded for this view, by name and resourceVersion, so a re-read that
    /// lists the same record at the same resourceVersion does not fetch it again.
    decoded: Vec<Decoded>,
}

/// One record this view fetched (or reused from the view before it). Its `Debug` leaves
/// the record out: the payload holds the release's values.
#[derive(Clone)]
struct Decoded {
    name: String,
    version: String,
    summary: ReleaseSummary,
    /// The record as fetched, for a reader that needs all of it (the dry run's baseline).
    record: Arc<StoredRecord>,
}

impl std::fmt::Debug for Decoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoded")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

impl ReleaseView {
    /// The highest revision's header.
    pub fn latest(&self) -> Option<&RecordHeader> {
        self.headers.last()
    }

    /// The record under `header` as this read fetched it, when it did and the header names
    /// it at the same resourceVersion (then it is the same object, byte for byte).
    pub fn fetched(&self, header: &RecordHeader) -> Option<Arc<StoredRecord>> {
        let version = header.write_token.as_deref()?;
        self.decoded
            .iter()
            .find(|d| d.name == header.name && d.version == version)
            .map(|d| Arc::clone(&d.record))
    }
}

/// Why the deployed state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Listing or fetching records failed, or an answer could not be trusted.
    #[error("{step}: {source}")]
    Store {
        /// What was being done.
        step: String,
        /// The failure.
        #[source]
        source: StoreError,
    },
    /// A record could not be decoded.
    #[error("cannot decode {kind} {name:?}: {source}")]
    Decode {
        /// `Secret` or `ConfigMap`.
        kind: &'static str,
        /// The record name.
        name: String,
        /// Why.
        #[source]
        source: DecodeError,
    },
    /// A record's body disagrees with its labels or with what was asked.
    #[error("inconsistent record: {0}")]
    Inconsistent(#[source] InvalidRecord),
}

/// True when a hard lock turned this deployed record `pending-upgrade` on purpose: it still
/// is what runs, so it counts as deployed.
fn is_hard_locked_deployed(header: &RecordHeader) -> bool {
    header.status == ReleaseStatus::PendingUpgrade
        && lock::hard_lock(&header.labels) == Some("deployed")
}

/// Reads the release: one metadata list, then one GET + decode of the last deployed record
/// (or, without one, of the latest record helm would upgrade from).
pub(crate) async fn read_release<S: ReleaseStore>(
    store: &S,
    release: &str,
) -> Result<ReleaseView, ReadError> {
    read_release_again(store, release, None).await
}

/// [`read_release`], reusing what `previous` decoded: a record the new list shows under the
/// same name and resourceVersion is the same object, byte for byte, so it is not fetched
/// again (its body was checked against its labels when it was).
pub(crate) async fn read_release_again<S: ReleaseStore>(
    store: &S,
    release: &str,
    previous: Option<&ReleaseView>,
) -> Result<ReleaseView, ReadError> {
    let (headers, version) = store
        .list_headers_versioned(release)
        .await
        .map_err(|source| ReadError::Store {
            step: format!("listing {} records", store.kind()),
            source,
        })?;
    let mut decoded = Vec::new();
    let latest = headers.last().map(|h| RecordMeta {
        revision: h.revision,
        status: h.status.clone(),
    });
    let last_deployed_header = headers
        .iter()
        .rev()
        .find(|h| h.status == ReleaseStatus::Deployed || is_hard_locked_deployed(h));
    let last_deployed = match last_deployed_header {
        Some(h) => {
            let mut summary = decode_or_reuse(store, h, previous, &mut decoded).await?;
            if is_hard_locked_deployed(h) {
                summary.status = ReleaseStatus::Deployed;
            }
            Some(summary)
        }
        None => None,
    };
    // Without a deployed record helm upgrades from the latest one (failed, superseded),
    // and a hard-locked release shows it: the decision needs its chart version then.
    let latest_summary = match headers.last() {
        Some(h)
            if last_deployed_header.is_none()
                && matches!(h.status, ReleaseStatus::Failed | ReleaseStatus::Superseded) =>
        {
            Some(decode_or_reuse(store, h, previous, &mut decoded).await?)
        }
        _ => None,
    };
    // A deployed revision that is helm's rollback from the revision right below it: from a
    // failed one (an upgrade with --atomic/--rollback-on-failure that failed, or `helm
    // rollback` after a failure) or from a superseded one, which had deployed (`helm
    // rollback` asked for). The decision needs that revision's chart: not to apply a failed
    // version again by itself, and not to undo a rollback asked for.
    let rolled_back_from = match (&last_deployed, last_deployed_header) {
        (Some(d), Some(h)) if rollback_target(d.description.as_deref()).is_some() => {
            match headers.iter().find(|f| f.revision + 1 == h.revision) {
                Some(f)
                    if matches!(f.status, ReleaseStatus::Failed | ReleaseStatus::Superseded) =>
                {
                    Some(decode_or_reuse(store, f, previous, &mut decoded).await?)
                }
                _ => None,
            }
        }
        _ => None,
    };
    // A lock that cannot be read in full is never "no lock": the read fails, naming it.
    let lock = match headers.last() {
        Some(h) => lock::from_labels(&h.labels).map_err(|e| {
            ReadError::Inconsistent(InvalidRecord::new(
                store.kind(),
                &h.name,
                &format!("label {}", e.label),
                &format!(
                    "{}; fix the label, or remove the lock with `guarded-upgrade unlock {release} \
                     -n {}`",
                    e.problem,
                    store.namespace()
                ),
            ))
        })?,
        None => None,
    };
    Ok(ReleaseView {
        state: DeployedState {
            latest,
            last_deployed,
            latest_summary,
            rolled_back_from,
            lock,
        },
        headers,
        version,
        decoded,
    })
}

/// The record's summary from `previous` when it decoded the same name at the same
/// resourceVersion, else fetched and decoded; kept in `decoded` either way.
async fn decode_or_reuse<S: ReleaseStore>(
    store: &S,
    header: &RecordHeader,
    previous: Option<&ReleaseView>,
    decoded: &mut Vec<Decoded>,
) -> Result<ReleaseSummary, ReadError> {
    let reused = header.write_token.as_deref().and_then(|rv| {
        previous?
            .decoded
            .iter()
            .find(|d| d.name == header.name && d.version == rv)
            .map(|d| (d.summary.clone(), Arc::clone(&d.record)))
    });
    let (summary, record) = match reused {
        Some(reused) => reused,
        None => {
            let (summary, record) = fetch_record(store, header).await?;
            (summary, Arc::new(record))
        }
    };
    if let Some(rv) = &header.write_token {
        decoded.push(Decoded {
            name: header.name.clone(),
            version: rv.clone(),
            summary: summary.clone(),
            record,
        });
    }
    Ok(summary)
}

/// Fetches and decodes one record's release metadata (never its values), and checks that
/// the body is the release, namespace, revision and status its labels say.
/// Returns the summary and the record as fetched.
async fn fetch_record<S: ReleaseStore>(
    store: &S,
    header: &RecordHeader,
) -> Result<(ReleaseSummary, StoredRecord), ReadError> {
    let name = header.name.as_str();
    let record = store.get(name).await.map_err(|source| ReadError::Store {
        step: format!("reading {} {name:?}", store.kind()),
        source,
    })?;
    let summary = decode_release(&record.payload).map_err(|source| ReadError::Decode {
        kind: store.kind(),
        name: name.to_string(),
        source,
    })?;
    check_body(store.kind(), &record.header, header, &summary).map_err(ReadError::Inconsistent)?;
    Ok((summary, record))
}

/// The record fetched must be the one listed, and its body must agree with its labels.
fn check_body(
    kind: &'static str,
    fetched: &RecordHeader,
    listed: &RecordHeader,
    body: &ReleaseSummary,
) -> Result<(), InvalidRecord> {
    let bad =
        |field: &str, problem: String| InvalidRecord::new(kind, &listed.name, field, &problem);
    if fetched.release != listed.release || fetched.revision != listed.revision {
        return Err(bad(
            "labels",
            format!(
                "changed between list and read (release {:?} revision {} became {:?} revision {})",
                listed.release, listed.revision, fetched.release, fetched.revision
            ),
        ));
    }
    if body.name != fetched.release {
        return Err(bad(
            "release name",
            format!(
                "in the body is {:?}, the name label {:?}",
                body.name, fetched.release
            ),
        ));
    }
    if !body.namespace.is_empty() && body.namespace != fetched.namespace {
        return Err(bad(
            "namespace",
            format!(
                "in the body is {:?}, the record is in {:?}",
                body.namespace, fetched.namespace
            ),
        ));
    }
    if body.revision != fetched.revision {
        return Err(bad(
            "revision",
            format!(
                "in the body is {}, the version label {}",
                body.revision, fetched.revision
            ),
        ));
    }
    if body.status != fetched.status {
        return Err(bad(
            "status",
            format!(
                "in the body is {}, the status label {}",
                body.status, fetched.status
            ),
        ));
    }
    Ok(())
}

/// Records for tests, written the way helm writes them and read through [`read_release`].
#[cfg(test)]
pub(crate) mod testkit {
    use super::*;
    use crate::adapters::storage::memory::MemoryStore;
    use crate::adapters::storage::Store;
    use crate::core::release::encode_release_json;

    /// One revision: status and chart version (empty = no version), plus extra labels and
    /// helm's description (`Rollback to N` on a rollback).
    pub(crate) struct Rev<'a> {
        pub revision: u64,
        pub status: ReleaseStatus,
        pub version: &'a str,
        pub labels: Vec<(String, String)>,
        pub description: String,
    }

    /// A revision of chart `postgresql`.
    pub(crate) fn rev(revision: u64, status: ReleaseStatus, version: &str) -> Rev<'_> {
        Rev {
            revision,
            status,
            version,
            labels: Vec::new(),
            description: "test".into(),
        }
    }

    /// A revision helm wrote by rolling back to revision `to` (`helm rollback`, or an
    /// upgrade with `--atomic`/`--rollback-on-failure` that failed).
    pub(crate) fn rollback(
        revision: u64,
        status: ReleaseStatus,
        version: &str,
        to: u64,
    ) -> Rev<'_> {
        Rev {
            description: format!("Rollback to {to}"),
            ..rev(revision, status, version)
        }
    }

    /// The helm release JSON of a revision of release `db` in `shared`.
    pub(crate) fn release_json(
        revision: u64,
        status: &ReleaseStatus,
        version: &str,
        description: &str,
    ) -> String {
        let mut metadata = serde_json::json!({ "name": "postgresql" });
        if !version.is_empty() {
            metadata["version"] = version.into();
        }
        let json = serde_json::json!({
            "name": "db", "namespace": "shared", "version": revision,
            "info": { "status": status.as_str(), "description": description },
            "chart": { "metadata": metadata },
            "config": { "password": "canary-secret-value" },
            "manifest": "",
        });
        encode_release_json(&json).expect("encode")
    }

    /// A store holding release `db` in `shared` with these revisions.
    pub(crate) fn store(revs: &[Rev]) -> Store {
        let memory = MemoryStore::new("shared");
        for r in revs {
            let labels: Vec<(&str, &str)> = r
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            // A hard lock changes the body's status together with the label.
            memory.insert(
                "db",
                r.revision,
                r.status.clone(),
                &labels,
                release_json(r.revision, &r.status, r.version, &r.description),
            );
        }
        Store::Memory(memory)
    }

    /// The state the program would read for these revisions.
    pub(crate) fn state(revs: &[Rev]) -> DeployedState {
        read(&store(revs)).state
    }

    /// Reads release `db` from a store (blocking: the memory store never waits).
    pub(crate) fn read(store: &Store) -> ReleaseView {
        block_on(read_release(store, "db")).expect("read_release")
    }

    /// Runs a future that never really waits (memory store) to completion.
    pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::testkit::*;
    use super::*;
    use ReleaseStatus as S;

    #[test]
    fn a_rollback_reads_the_revision_it_rolled_back_from_only() {
        use crate::core::decision::{Rollback, RollbackKind};
        // helm's rollback of a failed upgrade, and `helm rollback` of a deployed revision.
        for (from, kind) in [
            (S::Failed, RollbackKind::AfterFailure),
            (S::Superseded, RollbackKind::OnRequest),
        ] {
            let view = read(&store(&[
                rev(1, S::Superseded, "1.0.0"),
                rev(2, from.clone(), "1.1.0"),
                rollback(3, S::Deployed, "1.0.0", 1),
            ]));
            let below = view.state.rolled_back_from.clone().expect("revision 2");
            assert_eq!(
                (below.revision, below.status, below.chart_version.as_deref()),
                (2, from, Some("1.1.0"))
            );
            assert_eq!(
                view.state.rollback(),
                Some(Rollback {
                    kind,
                    revision: 3,
                    to_revision: 1,
                    from_revision: 2,
                    from_chart: Some("postgresql".into()),
                    from_version: Some("1.1.0".into()),
                })
            );
        }
        // A rollback right above an interrupted upgrade (recovered by `helm rollback`, which
        // leaves the pending revision as it is), and a failure without rollback.
        for revs in [
            vec![
                rev(1, S::Superseded, "1.0.0"),
                rev(2, S::PendingUpgrade, "1.1.0"),
                rollback(3, S::Deployed, "1.0.0", 1),
            ],
            vec![rev(1, S::Deployed, "1.0.0"), rev(2, S::Failed, "1.1.0")],
        ] {
            let state = read(&store(&revs)).state;
            assert_eq!(state.rolled_back_from, None);
            assert_eq!(state.rollback(), None);
        }
        assert_eq!(rollback_target(Some("Rollback to 12")), Some(12));
        assert_eq!(rollback_target(Some("Upgrade complete")), None);
        assert_eq!(rollback_target(None), None);
    }

    #[test]
    fn deployed_record_is_decoded_once() {
        let view = read(&store(&[
            rev(1, S::Superseded, "1.0.0"),
            rev(2, S::Deployed, "1.1.0"),
        ]));
        let deployed = view.state.last_deployed.unwrap();
        assert_eq!(
            (deployed.revision, deployed.chart_version.as_deref()),
            (2, Some("1.1.0"))
        );
        assert!(view.state.latest_summary.is_none());
    }

    /// The labels `lock --hard` leaves on the record it marked.
    pub(crate) fn hard_lock_labels() -> Vec<(String, String)> {
        let spec = lock::Lock {
            kind: crate::core::decision::LockKind::Hard,
            reason: None,
            by: None,
            since: 1_700_000_000,
            expires_at: None,
            pin: None,
            pin_key: None,
        };
        let mut labels: Vec<(String, String)> = spec.labels().into_iter().collect();
        labels.push((lock::KEY_HARD_STATUS.to_string(), "deployed".to_string()));
        labels
    }

    #[test]
    fn a_hard_locked_record_counts_as_deployed() {
        let mut locked = rev(2, S::PendingUpgrade, "1.1.0");
        locked.labels = hard_lock_labels();
        let view = read(&store(&[rev(1, S::Superseded, "1.0.0"), locked]));
        let deployed = view.state.last_deployed.unwrap();
        assert_eq!((deployed.revision, deployed.status), (2, S::Deployed));
        assert_eq!(view.state.latest.unwrap().status, S::PendingUpgrade);
    }

    #[test]
    fn a_body_that_disagrees_with_its_labels_fails_the_read() {
        use crate::adapters::storage::memory::MemoryStore;
        // (label status, body revision, body status) against label revision 2.
        for (body_revision, body_status, field) in
            [(1, S::Deployed, "revision"), (2, S::Superseded, "status")]
        {
            let memory = MemoryStore::new("shared");
            memory.insert(
                "db",
                2,
                S::Deployed,
                &[],
                release_json(body_revision, &body_status, "1.0.0", "test"),
            );
            let err = block_on(read_release(
                &crate::adapters::storage::Store::Memory(memory),
                "db",
            ))
            .unwrap_err();
            match err {
                ReadError::Inconsistent(e) => assert_eq!(e.field, field, "{e}"),
                other => panic!("{other}"),
            }
        }
    }
}
