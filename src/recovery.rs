//! Stale pending recovery: a `pending-*` latest record left by an interrupted helm, with no
//! live holder of the mutex, is marked `failed` exactly as Helm marks an interrupted
//! operation, so the guarded decision can continue.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::exit::Failure;
use crate::lock;
use crate::release::{self, ReleaseStatus};
use crate::state::ReleaseView;
use crate::storage::{ReleaseStore, LABEL_STATUS};
use crate::time::format_duration;

/// When the record was last written: Helm's `modifiedAt`/`createdAt` labels (Unix seconds),
/// else the object's creation time.
pub fn record_age_secs(
    labels: &BTreeMap<String, String>,
    created: Option<&str>,
    now: i64,
) -> Option<i64> {
    let written = ["modifiedAt", "createdAt"]
        .iter()
        .find_map(|k| labels.get(*k).and_then(|v| v.parse::<i64>().ok()))
        .or_else(|| created.and_then(crate::time::parse_rfc3339))?;
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

/// Marks the stale pending latest record `failed` when it is older than `after`.
/// Must only be called while holding the mutex (so no live run owns the record).
/// Returns true when it changed the record.
pub async fn recover_stale_pending<S: ReleaseStore>(
    store: &S,
    release: &str,
    view: &ReleaseView,
    after: Duration,
    now: i64,
) -> Result<bool, Failure> {
    let ns = store.namespace().to_string();
    let Some(latest) = view.latest() else {
        return Ok(false);
    };
    // A guarded-upgrade hard lock is not an interrupted operation.
    if !latest.status.is_pending() || latest.labels.contains_key(lock::KEY_HARD_STATUS) {
        return Ok(false);
    }
    let Some(age) = record_age_secs(&latest.labels, latest.created.as_deref(), now) else {
        eprintln!(
            "note: cannot tell how old pending revision {} is; not recovering it",
            latest.revision
        );
        return Ok(false);
    };
    if age < after.as_secs() as i64 {
        eprintln!(
            "note: pending revision {} was written {} ago, less than --recover-pending-after {}; \
             not recovering it",
            latest.revision,
            format_duration(age),
            format_duration(after.as_secs() as i64)
        );
        return Ok(false);
    }
    let fail = |step: &str, e: &dyn std::fmt::Display| {
        Failure::refused(format!(
            "release {release:?} in namespace {ns:?}: recovering pending revision {}: {step}: \
             {e}; helm was not run",
            latest.revision
        ))
    };
    let record = store
        .get(&latest.name)
        .await
        .map_err(|e| fail("reading", &e))?;
    let mut json =
        release::decode_release_json(&record.payload).map_err(|e| fail("decoding", &e))?;
    let why = format!(
        "interrupted: revision {} was {} for {} with no live holder of mutex {}; marked failed \
         by guarded-upgrade",
        latest.revision,
        latest.status,
        format_duration(age),
        crate::mutex::lease_name(release)
    );
    release::set_release_status(&mut json, ReleaseStatus::Failed.as_str())
        .map_err(|e| fail("changing the status", &e))?;
    if let Some(info) = json.get_mut("info").and_then(|i| i.as_object_mut()) {
        info.insert(
            "description".into(),
            serde_json::Value::String(failed_description(&latest.status, release, &why)),
        );
    }
    let payload = release::encode_release_json(&json).map_err(|e| fail("encoding", &e))?;
    let labels = BTreeMap::from([
        (
            LABEL_STATUS.to_string(),
            Some(ReleaseStatus::Failed.as_str().to_string()),
        ),
        ("modifiedAt".to_string(), Some(now.to_string())),
    ]);
    let rv = record.header.resource_version.clone().unwrap_or_default();
    store
        .rewrite(&latest.name, &rv, &payload, &labels)
        .await
        .map_err(|e| fail("writing", &e))?;
    eprintln!(
        "recovered: revision {} of release {release:?} in {ns:?} was {} for {} with no live \
         holder; marked it failed as helm does for an interrupted operation",
        latest.revision,
        latest.status,
        format_duration(age)
    );
    Ok(true)
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
