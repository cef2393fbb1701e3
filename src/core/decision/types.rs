//! The shared vocabulary of the decision: policies, compare keys, compared parts, the
//! state of a release as the rules see it, locks, targets, and what the rules answer
//! ([`Decision`], [`Gate`]). Types only; the rules are in the parent module.

use std::fmt;

use serde::Serialize;

pub use crate::core::lock::{Lock, LockKind};
use crate::core::release::{ReleaseStatus, ReleaseSummary};
pub use crate::core::version::{CompareKey, CompareKeyError};

/// A part of a release whose content is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Part {
    /// The user-supplied values (`config`).
    Values,
    /// The rendered manifest.
    Manifest,
    /// The rendered hooks.
    Hooks,
    /// The chart: templates, default values, schema, files, lock, metadata.
    Chart,
    /// The release's custom labels (`--labels`), which helm's `-o json` does not show.
    Labels,
}

impl Part {
    /// The JSON/message spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Part::Values => "values",
            Part::Manifest => "manifest",
            Part::Hooks => "hooks",
            Part::Chart => "chart",
            Part::Labels => "labels",
        }
    }
}

/// The minimum-version rule (`--min-version-policy`): which chart versions may replace the
/// deployed one. Named apart from the `policy` command (the hard lock's admission policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VersionRule {
    /// Only strictly newer chart versions are applied (default).
    #[default]
    Newer,
    /// Newer or equal versions are applied (equal re-applies values).
    NewerOrEqual,
    /// Newer versions are applied; an equal one only when the release helm would write
    /// differs from the deployed one (values, manifest, hooks or chart content).
    NewerOrChanged,
    /// No version comparison; locks and pins still apply.
    Off,
}

/// An unknown `--min-version-policy` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown version policy {0:?}: use one of newer, newer-or-equal, newer-or-changed, off")]
pub struct VersionRuleError(pub String);

impl VersionRule {
    /// Every policy's flag text, in help order; [`VersionRule::parse`] accepts exactly these.
    pub const NAMES: &'static [&'static str] =
        &["newer", "newer-or-equal", "newer-or-changed", "off"];

    /// Parses `newer`, `newer-or-equal`, `newer-or-changed` or `off`.
    pub fn parse(text: &str) -> Result<VersionRule, VersionRuleError> {
        match text {
            "newer" => Ok(VersionRule::Newer),
            "newer-or-equal" => Ok(VersionRule::NewerOrEqual),
            "newer-or-changed" => Ok(VersionRule::NewerOrChanged),
            "off" => Ok(VersionRule::Off),
            other => Err(VersionRuleError(other.to_string())),
        }
    }

    /// The flag text of this policy.
    pub fn as_str(&self) -> &'static str {
        match self {
            VersionRule::Newer => "newer",
            VersionRule::NewerOrEqual => "newer-or-equal",
            VersionRule::NewerOrChanged => "newer-or-changed",
            VersionRule::Off => "off",
        }
    }
}

impl fmt::Display for VersionRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for VersionRule {
    type Err = VersionRuleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        VersionRule::parse(s)
    }
}

/// The text of a compare key in one release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyText {
    /// Not set (or null).
    Missing,
    /// A string, number or boolean, as text.
    Scalar(String),
    /// A map or list: never a version (what it is, not its content).
    NotScalar(&'static str),
}

/// Compare-key texts of one side (deployed baseline or would-be release).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySide {
    /// Key -> its text; keys not gathered read as missing.
    pub keys: std::collections::BTreeMap<CompareKey, KeyText>,
}

impl KeySide {
    /// The text of `key`, [`KeyText::Missing`] when absent.
    pub fn get(&self, key: &CompareKey) -> KeyText {
        self.keys.get(key).cloned().unwrap_or(KeyText::Missing)
    }
}

/// What only helm's dry run and the fully decoded baseline record tell (see
/// [`crate::adapters::change`]). Gathered only when a decision asks for it
/// ([`Decision::needs_facts`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeFacts {
    /// Keys of the deployed baseline record (empty when nothing is deployed).
    pub deployed: KeySide,
    /// Keys of the would-be release.
    pub target: KeySide,
    /// Parts that differ between would-be and baseline; `None` when there is no baseline.
    pub differences: Option<Vec<Part>>,
}

/// The compare keys whose values a decision may need: the `--compare` key and the key a
/// pin lock constrains (chart-version when the pin names none or an unusable one).
pub fn keys_needed(compare: &CompareKey, lock: Option<&Lock>) -> Vec<CompareKey> {
    let mut keys = vec![compare.clone()];
    if let Some(key) = lock
        .and_then(|l| l.pin_key.as_deref())
        .and_then(|k| CompareKey::parse(k).ok())
    {
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys
}

/// Revision and status of a record, read from its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMeta {
    /// Revision number (label `version`).
    pub revision: u64,
    /// Status (label `status`).
    pub status: ReleaseStatus,
}

/// What the cluster says about the release.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeployedState {
    /// The highest-revision record; `None` when the release has no records.
    pub latest: Option<RecordMeta>,
    /// The decoded highest-revision `deployed` record, if any.
    pub last_deployed: Option<ReleaseSummary>,
    /// The decoded latest record when it is not the deployed one. Needed
    /// when there is no deployed record (it becomes the baseline); used for
    /// notes otherwise.
    pub latest_summary: Option<ReleaseSummary>,
    /// When the deployed record is helm's rollback (`Rollback to N`) and the revision just
    /// before it is `failed` or `superseded`: that revision, decoded (see [`Rollback`]). A
    /// failed one was tried and rolled back, and is not applied again by itself; a
    /// superseded one had deployed and was rolled back on request, which is kept.
    pub rolled_back_from: Option<ReleaseSummary>,
    /// The release lock, if one is set.
    pub lock: Option<Lock>,
}

/// How a deployed revision that is helm's rollback came about, told by the revision right
/// below it (the one rolled back from).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RollbackKind {
    /// The revision rolled back from is `failed`: helm's own rollback of a failed upgrade
    /// (`--atomic`, `--rollback-on-failure`), or `helm rollback` after a failure.
    AfterFailure,
    /// The revision rolled back from is `superseded`: it had deployed, and helm rolls a
    /// deployed revision back only when asked to (`helm rollback`), never by itself.
    OnRequest,
}

/// The deployed revision is helm's rollback (`Rollback to N`) from the revision right below
/// it, as the records show it ([`DeployedState::rollback`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rollback {
    /// Failed or deployed revision rolled back from.
    pub kind: RollbackKind,
    /// The deployed revision helm wrote by rolling back.
    pub revision: u64,
    /// The revision it rolled back to (its description `Rollback to N`).
    pub to_revision: u64,
    /// The revision right below it, rolled back from.
    pub from_revision: u64,
    /// That revision's chart name.
    pub from_chart: Option<String>,
    /// That revision's chart version.
    pub from_version: Option<String>,
}

impl Rollback {
    /// `revision 3 is a rollback to revision 1 after revision 2 (app 1.1.0) failed`, or, on
    /// request, `… of revision 2 (app 1.1.0), which had deployed: asked for (helm
    /// rollback), not forced by a failure`.
    pub fn describe(&self) -> String {
        let chart = [self.from_chart.as_deref(), self.from_version.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        let chart = if chart.is_empty() {
            String::new()
        } else {
            format!(" ({chart})")
        };
        match self.kind {
            RollbackKind::AfterFailure => format!(
                "revision {} is a rollback to revision {} after revision {}{chart} failed",
                self.revision, self.to_revision, self.from_revision
            ),
            RollbackKind::OnRequest => format!(
                "revision {} is a rollback to revision {} of revision {}{chart}, which had \
                 deployed: asked for (helm rollback), not forced by a failure",
                self.revision, self.to_revision, self.from_revision
            ),
        }
    }
}

impl DeployedState {
    /// The deployed revision as helm's rollback from a failed or superseded revision right
    /// below it, when the records show one.
    pub fn rollback(&self) -> Option<Rollback> {
        let deployed = self.last_deployed.as_ref()?;
        let from = self.rolled_back_from.as_ref()?;
        let to_revision = rollback_target(deployed.description.as_deref())?;
        if from.revision + 1 != deployed.revision {
            return None;
        }
        let kind = match from.status {
            ReleaseStatus::Failed => RollbackKind::AfterFailure,
            ReleaseStatus::Superseded => RollbackKind::OnRequest,
            _ => return None,
        };
        Some(Rollback {
            kind,
            revision: deployed.revision,
            to_revision,
            from_revision: from.revision,
            from_chart: from.chart_name.clone(),
            from_version: from.chart_version.clone(),
        })
    }
}

/// The revision a rollback record rolled back to, from helm's description
/// (`Rollback to 3`, the same in helm 3 and 4).
pub fn rollback_target(description: Option<&str>) -> Option<u64> {
    description?
        .strip_prefix("Rollback to ")?
        .trim()
        .parse()
        .ok()
}

/// What we are asked to deploy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Chart name, when known (from the chart's metadata).
    pub chart_name: Option<String>,
    /// The resolved chart version (raw text).
    pub version: String,
    /// Something worth telling the user, e.g. "--version ignored for a local chart".
    pub note: Option<String>,
}

/// Everything [`decide`] looks at.
#[derive(Debug, Clone)]
pub struct DecisionInput<'a> {
    /// Release name.
    pub release: &'a str,
    /// Release namespace.
    pub namespace: &'a str,
    /// Cluster state.
    pub state: &'a DeployedState,
    /// The target chart; `None` asks only what the rules say before a target is compared
    /// ([`gate`], used by `status`).
    pub target: Option<&'a Target>,
    /// The minimum-version rule (`--min-version-policy`).
    pub version_rule: VersionRule,
    /// `--allow-chart-change`.
    pub allow_chart_change: bool,
    /// Current time, unix seconds (for lock expiry).
    pub now_unix: i64,
    /// `--compare`: the key whose version order is guarded.
    pub compare: &'a CompareKey,
    /// Dry-run facts, once gathered for a decision that asked for them.
    pub facts: Option<&'a ChangeFacts>,
}

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Run helm; the release does not exist yet.
    Install,
    /// Run helm; the release exists.
    Upgrade,
    /// Do not run helm; this is an expected outcome (exit 0 by default).
    Skip,
    /// Do not run helm; something needs a human (non-zero exit).
    Refuse,
}

impl Action {
    /// True for [`Action::Install`] and [`Action::Upgrade`].
    pub fn proceeds(&self) -> bool {
        matches!(self, Action::Install | Action::Upgrade)
    }
}

/// Why, in machine-readable form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// No records: install.
    NotInstalled,
    /// Latest record is `uninstalled`: install again.
    ReinstallAfterUninstall,
    /// Target is newer than the deployed version.
    Newer,
    /// Target equals the deployed version under `newer-or-equal`.
    EqualReapply,
    /// `VersionRule::Off`: no version comparison.
    PolicyOff,
    /// Target equals the deployed version under `newer`.
    NotNewer,
    /// Target equals the deployed version under `newer-or-changed` and the release helm
    /// would write equals the deployed one.
    Unchanged,
    /// Target equals the deployed version under `newer-or-changed` and the release helm
    /// would write differs (see `differences`).
    Changed,
    /// Target is older than the deployed version.
    Downgrade,
    /// A soft or hard lock is in force (or an expired hard lock blocks helm).
    Locked,
    /// The target does not match the lock's pin.
    Pinned,
    /// The latest revision is `pending-*`.
    Pending,
    /// The chart name differs from the deployed chart.
    ChartChanged,
    /// A version (deployed, target or pin) is not valid.
    InvalidVersion,
    /// No revision is deployed: retrying a failed version (upgrade), or helm
    /// has nothing to upgrade from (refuse).
    NoDeployedRevision,
    /// The state is contradictory (e.g. latest says deployed but no deployed
    /// record was read).
    UnknownState,
    /// The target's chart version failed and helm rolled the release back from it
    /// (`--atomic`, `--rollback-on-failure`, or `helm rollback` after the failure): not
    /// re-applied by itself.
    RolledBack,
    /// The deployed revision is a rollback asked for (`helm rollback`) from a revision that
    /// had deployed, and the target is newer than the deployed version but not newer than
    /// the one rolled back from: applying it would undo the rollback, which is kept.
    RollbackKept,
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// What to do.
    pub action: Action,
    /// Why.
    pub reason: Reason,
    /// One line for humans: `install: `, `upgrade: `, `skip: ` or `refused: `.
    pub message: String,
    /// Extra remarks worth showing (expired locks ignored, failed revisions...).
    pub notes: Vec<String>,
    /// Chart version of the baseline (deployed) revision, if any.
    pub deployed_version: Option<String>,
    /// Revision number of the baseline (deployed) revision, if any.
    pub deployed_revision: Option<u64>,
    /// The target version text.
    pub target_version: String,
    /// The `--compare` key.
    pub compare: CompareKey,
    /// The compared key's deployed value (only for keys other than chart-version).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployed_key: Option<String>,
    /// The compared key's target value (only for keys other than chart-version).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_key: Option<String>,
    /// Parts of the release that differ (`newer-or-changed` with equal versions): names
    /// only, never content.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub differences: Option<Vec<Part>>,
    /// True when this decision could not be made without [`ChangeFacts`]: gather them
    /// (dry run, full baseline record) and decide again. Never final.
    #[serde(skip)]
    pub needs_facts: bool,
}

/// What the rules say about a release before any target is looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// The rules decide whatever the target: skip (locked) or refuse.
    Decided(Decision),
    /// The release would be installed (not installed, or uninstalled), pin permitting.
    Install {
        /// `not-installed` or `reinstall-after-uninstall`.
        reason: Reason,
        /// An unexpired pin the target must match.
        pin: Option<String>,
        /// Remarks (an expired lock ignored, …).
        notes: Vec<String>,
    },
    /// The release would be upgraded from the baseline when the target passes the chart,
    /// pin and version checks.
    Upgrade {
        /// The revision versions are compared with.
        baseline_revision: u64,
        /// Its chart version.
        baseline_version: Option<String>,
        /// An unexpired pin the target must match.
        pin: Option<String>,
        /// When the baseline is helm's rollback ([`DeployedState::rollback`]): which targets
        /// the rollback rule refuses or skips, said without a target.
        rollback_rule: Option<String>,
        /// Remarks (a later failed revision, a hard lock not in force, …).
        notes: Vec<String>,
    },
}
