//! Reading what is deployed: list record metadata, decode only the records a decision needs.

use crate::decision::{DeployedState, RecordMeta};
use crate::lock;
use crate::release::{decode_release, DecodeError, ReleaseStatus, ReleaseSummary};
use crate::storage::{RecordHeader, ReleaseStore, StoreError};

/// The release as found in storage, with the headers the state was built from.
#[derive(Clone, Debug)]
pub struct ReleaseView {
    /// Input for the decision.
    pub state: DeployedState,
    /// Every record header, sorted by revision (metadata only).
    pub headers: Vec<RecordHeader>,
}

impl ReleaseView {
    /// The highest revision's header.
    pub fn latest(&self) -> Option<&RecordHeader> {
        self.headers.last()
    }
}

/// Why the deployed state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Listing or fetching records failed.
    #[error("{step}: {source}")]
    Store {
        /// What was being done.
        step: String,
        /// The API failure.
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
}

/// Reads the release: one metadata list, then one GET + decode of the last deployed record.
pub async fn read_release<S: ReleaseStore>(
    store: &S,
    release: &str,
) -> Result<ReleaseView, ReadError> {
    let headers = store
        .list_headers(release)
        .await
        .map_err(|source| ReadError::Store {
            step: format!("listing {} records", store.kind()),
            source,
        })?;
    let latest = headers.last().map(|h| RecordMeta {
        revision: h.revision,
        status: h.status.clone(),
    });
    // A hard lock turned the deployed record `pending-upgrade` on purpose: it still is
    // what runs, so it counts as deployed when its recorded original status says so.
    let last_deployed_header = headers.iter().rev().find(|h| {
        h.status == ReleaseStatus::Deployed
            || (h.status == ReleaseStatus::PendingUpgrade
                && h.labels.get(lock::KEY_HARD_STATUS).map(String::as_str) == Some("deployed"))
    });
    let last_deployed = match last_deployed_header {
        Some(h) => {
            let mut summary = decode_record(store, &h.name).await?;
            if h.status != ReleaseStatus::Deployed {
                summary.status = ReleaseStatus::Deployed;
            }
            Some(summary)
        }
        None => None,
    };
    // Without a deployed record helm upgrades from the latest one (failed, superseded):
    // the decision needs its chart version then.
    let latest_summary = match headers.last() {
        Some(h)
            if last_deployed_header.is_none()
                && matches!(h.status, ReleaseStatus::Failed | ReleaseStatus::Superseded) =>
        {
            Some(decode_record(store, &h.name).await?)
        }
        _ => None,
    };
    let lock = headers.last().and_then(|h| lock::from_labels(&h.labels));
    Ok(ReleaseView {
        state: DeployedState {
            latest,
            last_deployed,
            latest_summary,
            lock,
        },
        headers,
    })
}

/// Fetches and decodes one record's release metadata (never its values).
pub async fn decode_record<S: ReleaseStore>(
    store: &S,
    name: &str,
) -> Result<ReleaseSummary, ReadError> {
    let record = store.get(name).await.map_err(|source| ReadError::Store {
        step: format!("reading {} {name:?}", store.kind()),
        source,
    })?;
    decode_release(&record.payload).map_err(|source| ReadError::Decode {
        kind: store.kind(),
        name: name.to_string(),
        source,
    })
}
