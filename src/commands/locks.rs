//! `locks`: every locked release in the namespace, or everywhere with `-A`.

use std::collections::BTreeMap;

use crate::adapters::storage::{RecordHeader, ReleaseStore};
use crate::core::lock;
use crate::core::release::ReleaseStatus;
use crate::core::time::now_unix;
use crate::error::{Error, Exit};
use crate::output::{self, report::LockReport, report::LockRow};
use crate::plan::LocksPlan;

/// Runs `locks`.
pub(super) async fn run(plan: LocksPlan) -> Result<Exit, Error> {
    let session = super::session::connect(&plan.cluster, None).await?;
    let scope = if plan.all_namespaces {
        "all namespaces".to_string()
    } else {
        format!("namespace {:?}", session.namespace)
    };
    // One metadata list of every helm record, read page by page and folded as it arrives
    // into the latest record of each release (memory grows with releases, not records);
    // a release is locked when its latest record carries the lock label.
    let mut latest: BTreeMap<(String, String), RecordHeader> = BTreeMap::new();
    session
        .store
        .visit_headers_matching("owner=helm", plan.all_namespaces, &mut |h| {
            let key = (h.namespace.clone(), h.release.clone());
            if latest.get(&key).is_none_or(|cur| cur.revision < h.revision) {
                latest.insert(key, h);
            }
            Ok(())
        })
        .await
        .map_err(|source| Error::ListRecords {
            scope: scope.clone(),
            source: Box::new(source),
        })?;
    let headers: Vec<RecordHeader> = latest.into_values().collect();
    // A lock that cannot be read is not listed as "no lock": the command fails naming it.
    let mut rows = lock_rows(&headers, now_unix(), session.store.kind()).map_err(|invalid| {
        Error::ListRecords {
            scope: scope.clone(),
            source: Box::new(crate::adapters::storage::StoreError::Invalid(invalid)),
        }
    })?;
    let records: Vec<String> = rows.iter().map(|r| r.record.clone()).collect();
    let mut locks: Vec<_> = rows
        .iter_mut()
        .zip(&records)
        .map(|(r, record)| {
            (
                r.namespace.as_str(),
                r.release.as_str(),
                record.as_str(),
                &mut r.lock,
            )
        })
        .collect();
    let namespace = (!plan.all_namespaces).then_some(session.namespace.as_str());
    session.describe_enforcement(namespace, &mut locks).await;
    output::locks(&rows, &scope, plan.format);
    Ok(Exit::Success)
}

/// The locked releases among these records, by namespace and release.
fn lock_rows(
    headers: &[RecordHeader],
    now: i64,
    kind: &'static str,
) -> Result<Vec<LockRow>, crate::adapters::storage::InvalidRecord> {
    let mut latest: BTreeMap<(&str, &str), &RecordHeader> = BTreeMap::new();
    for h in headers {
        let key = (h.namespace.as_str(), h.release.as_str());
        if latest.get(&key).is_none_or(|cur| cur.revision < h.revision) {
            latest.insert(key, h);
        }
    }
    latest
        .into_iter()
        .filter(|(_, h)| h.status != ReleaseStatus::Uninstalled)
        .filter_map(|((namespace, release), h)| {
            let state = match lock::from_labels(&h.labels) {
                Ok(state) => state?,
                Err(e) => {
                    let field = format!("label {}", e.label);
                    return Some(Err(crate::adapters::storage::InvalidRecord::new(
                        kind, &h.name, &field, &e.problem,
                    )));
                }
            };
            Some(Ok(LockRow {
                record: h.name.clone(),
                release: release.to_string(),
                namespace: namespace.to_string(),
                lock: LockReport::new(&state, now),
            }))
        })
        .collect()
}
