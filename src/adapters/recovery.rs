//! Stale pending recovery: a `pending-*` latest record left by an interrupted helm, with no
//! live holder of the mutex, is marked `failed` exactly as Helm marks an interrupted
//! operation, so the guarded decision can continue.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::adapters::state::ReleaseView;
use crate::adapters::storage::{ReleaseStore, LABEL_STATUS};
use crate::core::lock;
use crate::core::release::{self, ReleaseStatus};
use crate::core::time::format_duration;

/// When the record was last written: Helm's `modifiedAt`/`createdAt` labels (Unix seconds),
/// else the object's creation time.
pub(crate) fn record_age_secs(
    labels: &BTreeMap<String, String>,
    created: Option<&str>,
    now: i64,
) -> Option<i64> {
    let written = ["modifiedAt", "createdAt"]
        .iter()
        .find_map(|k| labels.get(*k).and_then(|v| v.parse::<i64>().ok()))
        .or_else(|| created.and_then(crate::core::time::parse_rfc3339))?;
    Some(now - written)
}

/// The description Helm writes when it fails an operation of this kind.
fn failed_description(status: &ReleaseStatus, release: &str, why: &str) -> String {
    match status {
        ReleaseStatus::PendingInstall => format!("Release {release:?} failed: {why}"),
        ReleaseStatus::PendingRollback => format!("Rollback {release:?} failed: {why}"),
        _ => format!("Upgrade {release:?} failed: {why}"),
    }
}

/// What [`recover_stale_pending`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Recovery {
    /// The latest record is not an interrupted operation (or is a hard lock).
    NotPending,
    /// The record's age cannot be told; left alone.
    AgeUnknown {
        /// Its revision.
        revision: u64,
    },
    /// Younger than `--recover-pending-after`; left alone.
    TooRecent {
        /// Its revision.
        revision: u64,
        /// Seconds since it was written.
        age: i64,
    },
    /// Marked `failed`, as helm marks an interrupted operation.
    MarkedFailed {
        /// Its revision.
        revision: u64,
        /// The pending status it had.
        was: ReleaseStatus,
        /// Seconds since it was written.
        age: i64,
    },
}

/// A failed recovery step: what was being done and why it failed.
#[derive(Debug, thiserror::Error)]
#[error("recovering pending revision {revision}: {step}: {source}")]
pub struct RecoveryError {
    /// The pending revision.
    pub revision: u64,
    /// `reading`, `decoding`, `writing`, …
    pub step: &'static str,
    /// Why.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Marks the stale pending latest record `failed` when it is older than `after`.
/// Must only be called while holding the mutex (so no live run owns the record).
pub(crate) async fn recover_stale_pending<S: ReleaseStore>(
    store: &S,
    release: &str,
    view: &ReleaseView,
    after: Duration,
    now: i64,
) -> Result<Recovery, RecoveryError> {
    let Some(latest) = view.latest() else {
        return Ok(Recovery::NotPending);
    };
    // A guarded-upgrade hard lock is not an interrupted operation.
    if !latest.status.is_pending() || lock::hard_lock(&latest.labels).is_some() {
        return Ok(Recovery::NotPending);
    }
    let revision = latest.revision;
    let Some(age) = record_age_secs(&latest.labels, latest.created.as_deref(), now) else {
        return Ok(Recovery::AgeUnknown { revision });
    };
    if age < after.as_secs() as i64 {
        return Ok(Recovery::TooRecent { revision, age });
    }
    let fail = |step: &'static str| {
        move |e: Box<dyn std::error::Error + Send + Sync>| RecoveryError {
            revision,
            step,
            source: e,
        }
    };
    let record = store
        .get(&latest.name)
        .await
        .map_err(|e| fail("reading")(e.into()))?;
    let mut json =
        release::decode_release_json(&record.payload).map_err(|e| fail("decoding")(e.into()))?;
    let why = format!(
        "interrupted: revision {revision} was {} for {} with no live holder of mutex {}; marked \
         failed by guarded-upgrade",
        latest.status,
        format_duration(age),
        crate::adapters::mutex::lease_name(release)
    );
    release::set_release_status(&mut json, ReleaseStatus::Failed.as_str())
        .map_err(|e| fail("changing the status")(e.into()))?;
    if let Some(info) = json.get_mut("info").and_then(|i| i.as_object_mut()) {
        info.insert(
            "description".into(),
            serde_json::Value::String(failed_description(&latest.status, release, &why)),
        );
    }
    let payload = release::encode_release_json(&json).map_err(|e| fail("encoding")(e.into()))?;
    let labels = BTreeMap::from([
        (
            LABEL_STATUS.to_string(),
            Some(ReleaseStatus::Failed.as_str().to_string()),
        ),
        ("modifiedAt".to_string(), Some(now.to_string())),
    ]);
    let rv = record.header.write_token.clone().unwrap_or_default();
    store
        .rewrite(&latest.name, &rv, &payload, &labels)
        .await
        .map_err(|e| fail("writing")(e.into()))?;
    Ok(Recovery::MarkedFailed {
        revision,
        was: latest.status.clone(),
        age,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_prefers_helm_labels() {
        let labels = BTreeMap::from([
            ("createdAt".to_string(), "1000".to_string()),
            ("modifiedAt".to_string(), "1500".to_string()),
        ]);
        assert_eq!(record_age_secs(&labels, None, 2000), Some(500));
        let created = BTreeMap::from([("createdAt".to_string(), "1000".to_string())]);
        assert_eq!(record_age_secs(&created, None, 2000), Some(1000));
        assert_eq!(
            record_age_secs(&BTreeMap::new(), Some("1970-01-01T00:16:40Z"), 2000),
            Some(1000)
        );
        assert_eq!(record_age_secs(&BTreeMap::new(), None, 2000), None);
    }

    #[test]
    fn descriptions_follow_helm() {
        assert_eq!(
            failed_description(&ReleaseStatus::PendingUpgrade, "db", "x"),
            "Upgrade \"db\" failed: x"
        );
        assert_eq!(
            failed_description(&ReleaseStatus::PendingInstall, "db", "x"),
            "Release \"db\" failed: x"
        );
    }
}
