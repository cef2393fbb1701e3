//! The JSON documents the tool prints: the decision (`check -o json`, `--decision-file`,
//! `--decision-output json`), `status -o json`, `locks -o json` and `lock -o json`.
//!
//! Built from release *metadata* only: the decoded release's values never reach it.

use serde::Serialize;

use crate::adapters::mutex::MutexState;
use crate::adapters::target::ResolvedTarget;
use crate::core::decision::Part;
use crate::core::decision::{
    Action, CompareKey, Decision, DeployedState, Lock, Reason, Rollback, VersionRule,
};
use crate::core::release::ReleaseSummary;

/// Schema version of the JSON report; bumped on incompatible changes.
pub(crate) const REPORT_SCHEMA: u32 = 1;

/// One decision, as printed for machines.
#[derive(Debug, Serialize)]
pub(crate) struct DecisionReport {
    /// Always [`REPORT_SCHEMA`].
    pub schema: u32,
    /// Release name.
    pub release: String,
    /// Release namespace.
    pub namespace: String,
    /// `install`, `upgrade`, `skip` or `refuse`.
    pub action: Action,
    /// Stable machine code, e.g. `not-newer`, `downgrade`, `locked`.
    pub reason: Reason,
    /// The human line that was printed.
    pub message: String,
    /// The version policy in force.
    pub policy: VersionRule,
    /// The last deployed revision, or null.
    pub deployed: Option<DeployedReport>,
    /// The highest revision and its status, or null when there are no records.
    pub latest: Option<LatestReport>,
    /// When the deployed revision is helm's rollback from the revision right below it
    /// (after a failure, or on request): which, or null.
    pub rollback: Option<Rollback>,
    /// What would be installed.
    pub target: TargetReport,
    /// The lock on the release, if any (expired locks included, flagged).
    pub lock: Option<LockReport>,
    /// Extra remarks (ignored expired lock, later failed revision, …).
    pub notes: Vec<String>,
    /// The `--compare` key.
    pub compare: CompareKey,
    /// The compared key's deployed value (keys other than chart-version only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployed_key: Option<String>,
    /// The compared key's target value (keys other than chart-version only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_key: Option<String>,
    /// Parts that differ under `newer-or-changed` with equal versions (names only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub differences: Option<Vec<Part>>,
    /// Storage driver (`secret`, `configmap`, `sql`).
    pub driver: &'static str,
    /// Whether the final decision was made under the per-release mutex (`upgrade` only;
    /// false with `--no-serialize`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serialized: Option<bool>,
    /// A mutex held by another run (`check` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mutex: Option<MutexState>,
    /// Why the mutex state is not known (`check` only: the Lease could not be read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mutex_error: Option<String>,
}

/// The deployed revision's chart metadata.
#[derive(Debug, Serialize)]
pub(crate) struct DeployedReport {
    /// Chart name.
    pub chart: Option<String>,
    /// Chart version.
    pub version: Option<String>,
    /// Chart appVersion.
    pub app_version: Option<String>,
    /// Revision number.
    pub revision: u64,
    /// Status (always `deployed` here, kept for symmetry with helm).
    pub status: String,
}

impl From<&ReleaseSummary> for DeployedReport {
    fn from(d: &ReleaseSummary) -> DeployedReport {
        DeployedReport {
            chart: d.chart_name.clone(),
            version: d.chart_version.clone(),
            app_version: d.app_version.clone(),
            revision: d.revision,
            status: d.status.as_str().to_string(),
        }
    }
}

/// The highest revision.
#[derive(Debug, Serialize)]
pub(crate) struct LatestReport {
    /// Revision number.
    pub revision: u64,
    /// Its status.
    pub status: String,
}

/// The target chart.
#[derive(Debug, Serialize)]
pub(crate) struct TargetReport {
    /// Chart name, when known.
    pub chart: Option<String>,
    /// Chart version.
    pub version: String,
    /// `directory`, `archive` or `remote`.
    pub source: &'static str,
}

/// A lock as reported.
#[derive(Debug, Serialize)]
pub(crate) struct LockReport {
    /// `soft`, `hard` or `pin`.
    pub kind: String,
    /// Why it was locked.
    pub reason: Option<String>,
    /// Who locked it.
    pub by: Option<String>,
    /// When (RFC 3339).
    pub since: Option<String>,
    /// Expiry (RFC 3339), if any.
    pub expires: Option<String>,
    /// True when the expiry has passed.
    pub expired: bool,
    /// Version pin, if any.
    pub pin: Option<String>,
    /// The key the pin constrains, when not the chart version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin_key: Option<String>,
    /// `status`/`locks`: how the lock is enforced (`cluster policy`, `database trigger`,
    /// `labels only`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enforcement: Option<crate::adapters::enforce::Enforcement>,
    /// Why a hard lock is not enforced by the cluster (`not enforced by the cluster: …`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enforcement_note: Option<String>,
    /// An enforced hard lock: the release's objects the cluster does not freeze
    /// (`KIND NAME (why)`), as the lock's ConfigMap lists them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_frozen: Vec<String>,
}

impl LockReport {
    /// Report form of a lock, judged at `now_unix`.
    pub(crate) fn new(lock: &Lock, now_unix: i64) -> LockReport {
        LockReport {
            kind: lock.kind.as_str().to_string(),
            reason: lock.reason.clone(),
            by: lock.by.clone(),
            since: lock.since_text(),
            expires: lock.expires_at.map(crate::core::time::format_rfc3339),
            expired: lock.expires_at.is_some_and(|t| t <= now_unix),
            pin: lock.pin.clone(),
            pin_key: lock.pin_key.clone(),
            enforcement: None,
            enforcement_note: None,
            not_frozen: Vec::new(),
        }
    }
}

impl DecisionReport {
    /// Assembles the report for one decision.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        release: &str,
        namespace: &str,
        decision: &Decision,
        policy: VersionRule,
        state: &DeployedState,
        target: &ResolvedTarget,
        driver: &'static str,
        now_unix: i64,
    ) -> DecisionReport {
        DecisionReport {
            schema: REPORT_SCHEMA,
            release: release.to_string(),
            namespace: namespace.to_string(),
            action: decision.action,
            reason: decision.reason,
            message: decision.message.clone(),
            policy,
            deployed: state.last_deployed.as_ref().map(DeployedReport::from),
            latest: state.latest.as_ref().map(|l| LatestReport {
                revision: l.revision,
                status: l.status.as_str().to_string(),
            }),
            rollback: state.rollback(),
            target: TargetReport {
                chart: target.chart_name.clone(),
                version: target.version.clone(),
                source: target.source.describe(),
            },
            lock: state.lock.as_ref().map(|l| LockReport::new(l, now_unix)),
            notes: decision.notes.clone(),
            compare: decision.compare.clone(),
            deployed_key: decision.deployed_key.clone(),
            target_key: decision.target_key.clone(),
            differences: decision.differences.clone(),
            driver,
            serialized: None,
            mutex: None,
            mutex_error: None,
        }
    }
}

/// `status -o json`.
#[derive(Debug, Serialize)]
pub(crate) struct StatusReport {
    /// Release name.
    pub release: String,
    /// Namespace.
    pub namespace: String,
    /// Storage driver.
    pub driver: &'static str,
    /// The last deployed revision, or null.
    pub deployed: Option<DeployedReport>,
    /// The highest revision.
    pub latest: Option<LatestReport>,
    /// When the deployed revision is helm's rollback from the revision right below it
    /// (after a failure, or on request): which, or null.
    pub rollback: Option<Rollback>,
    /// The lock, if any.
    pub lock: Option<LockReport>,
    /// What `upgrade` would do, before a target is known: `blocked` (skipped), `refuse`,
    /// `install` or `upgrade-if-newer`.
    pub upgrade: &'static str,
    /// The decision's message and notes, one line.
    pub upgrade_message: String,
    /// The per-release mutex when a run holds it (null otherwise).
    pub mutex: Option<MutexState>,
    /// Why the mutex state is not known (the Lease could not be read); absent when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mutex_error: Option<String>,
}

/// One row of `locks -o json`.
#[derive(Debug, Serialize)]
pub(crate) struct LockRow {
    /// The latest record's name (not printed: what the enforcement probe asks about).
    #[serde(skip)]
    pub record: String,
    /// Release name.
    pub release: String,
    /// Namespace.
    pub namespace: String,
    /// The lock.
    #[serde(flatten)]
    pub lock: LockReport,
}
