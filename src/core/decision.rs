//! The pure upgrade decision: cluster state and target in, [`Decision`] out.
//!
//! No I/O and no clock: the caller passes the current time. Order of the
//! checks, first match wins:
//!
//! 1. Locks. An unexpired soft or hard lock skips (`locked`), also for a
//!    release that is not installed, because a lock means "hands off". An
//!    expired lock is ignored with a note, except an expired *hard* lock
//!    whose `pending-upgrade` record is still in place: helm would fail on
//!    it, so we refuse and point at `guarded-upgrade unlock`. An unexpired
//!    pin lock only restricts the target (step 5).
//! 2. No records, or the latest is `uninstalled`: install (pin permitting).
//! 3. Latest record `pending-*`: refuse (`pending`), like helm.
//! 4. Baseline = the last `deployed` record. Later failed revisions do not
//!    count as deployed (noted). With no deployed record helm upgrades from
//!    a `failed`/`superseded` latest record, so that record becomes the
//!    baseline, and re-applying the version of a failed baseline is allowed
//!    (`no-deployed-revision`) because nothing is running successfully. Any
//!    other latest status without a deployed record makes helm fail with
//!    "has no deployed releases", so we refuse.
//! 5. Chart name change (refuse unless allowed), pin, then version policy.

use std::fmt;

use serde::Serialize;

use crate::core::release::{ReleaseStatus, ReleaseSummary};
use crate::core::version::{ChartVersion, Constraint};

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

/// Minimum-version policy (`--min-version-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
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
pub struct PolicyError(pub String);

impl Policy {
    /// Every policy's flag text, in help order; [`Policy::parse`] accepts exactly these.
    pub const NAMES: &'static [&'static str] =
        &["newer", "newer-or-equal", "newer-or-changed", "off"];

    /// Parses `newer`, `newer-or-equal`, `newer-or-changed` or `off`.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        match text {
            "newer" => Ok(Policy::Newer),
            "newer-or-equal" => Ok(Policy::NewerOrEqual),
            "newer-or-changed" => Ok(Policy::NewerOrChanged),
            "off" => Ok(Policy::Off),
            other => Err(PolicyError(other.to_string())),
        }
    }

    /// The flag text of this policy.
    pub fn as_str(&self) -> &'static str {
        match self {
            Policy::Newer => "newer",
            Policy::NewerOrEqual => "newer-or-equal",
            Policy::NewerOrChanged => "newer-or-changed",
            Policy::Off => "off",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Policy {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Policy::parse(s)
    }
}

/// The key whose version order guards against downgrades (`--compare`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum CompareKey {
    /// The chart's `version` (default).
    #[default]
    ChartVersion,
    /// The chart's `appVersion`.
    AppVersion,
    /// A value at a dotted path of the release's values, e.g. `image.tag`.
    Value(String),
}

/// An unusable `--compare` (or pin key) text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown compare key {0:?}: use chart-version, app-version or value:PATH (e.g. value:image.tag)")]
pub struct CompareKeyError(pub String);

impl CompareKey {
    /// Parses `chart-version`, `app-version` or `value:PATH` (dot-separated, no empty
    /// segment).
    pub fn parse(text: &str) -> Result<CompareKey, CompareKeyError> {
        match text {
            "chart-version" => Ok(CompareKey::ChartVersion),
            "app-version" => Ok(CompareKey::AppVersion),
            _ => match text.strip_prefix("value:") {
                Some(path) if !path.is_empty() && path.split('.').all(|s| !s.is_empty()) => {
                    Ok(CompareKey::Value(path.to_string()))
                }
                _ => Err(CompareKeyError(text.to_string())),
            },
        }
    }
}

impl fmt::Display for CompareKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompareKey::ChartVersion => f.write_str("chart-version"),
            CompareKey::AppVersion => f.write_str("app-version"),
            CompareKey::Value(path) => write!(f, "value:{path}"),
        }
    }
}

impl Serialize for CompareKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
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
pub fn keys_needed(compare: &CompareKey, lock: Option<&LockState>) -> Vec<CompareKey> {
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
    /// The release lock, if one is set.
    pub lock: Option<LockState>,
}

/// Kind of a release lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LockKind {
    /// Our tool skips the release; plain helm is not blocked.
    Soft,
    /// The latest record is set to `pending-upgrade`, which also blocks
    /// plain `helm upgrade`.
    Hard,
    /// Only target versions matching `pin` are allowed.
    Pin,
}

impl LockKind {
    /// `soft`, `hard` or `pin`, as stored in the lock label.
    pub fn parse(text: &str) -> Option<LockKind> {
        match text {
            "soft" => Some(LockKind::Soft),
            "hard" => Some(LockKind::Hard),
            "pin" => Some(LockKind::Pin),
            _ => None,
        }
    }

    /// The label/JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LockKind::Soft => "soft",
            LockKind::Hard => "hard",
            LockKind::Pin => "pin",
        }
    }
}

/// A release lock as stored on the release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockState {
    /// Soft, hard or pin.
    pub kind: LockKind,
    /// Why the release is locked.
    pub reason: Option<String>,
    /// Who set the lock.
    pub by: Option<String>,
    /// When the lock was set (RFC 3339).
    pub since: Option<String>,
    /// When the lock stops applying (unix seconds); `None` = never.
    pub expires_at: Option<i64>,
    /// Constraint text target versions must match (pin locks).
    pub pin: Option<String>,
    /// The compare key the pin constrains (`value:image.tag`...); `None` = chart version.
    pub pin_key: Option<String>,
    /// For hard locks: the latest record's status before locking.
    pub hard_original_status: Option<String>,
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
    /// Version policy.
    pub policy: Policy,
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
    /// Policy `off`: no version comparison.
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

/// Decides whether to install, upgrade, skip or refuse. Pure: see the
/// module docs for the order of checks.
pub fn decide(input: &DecisionInput) -> Decision {
    let mut d = Decider::new(input);
    let outcome = match d.gate() {
        Step::Done(outcome) => outcome,
        Step::Install(reason) => d.install(reason),
        Step::Compare { failed_baseline } => d.compare(failed_baseline),
    };
    d.finish(outcome)
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
        /// Remarks (a later failed revision, a hard lock not in force, …).
        notes: Vec<String>,
    },
}

/// The checks of [`decide`] that do not need a target (locks, pending and missing
/// revisions), so `status` says what `upgrade` would do from the same rules.
pub fn gate(input: &DecisionInput) -> Gate {
    let mut d = Decider::new(input);
    match d.gate() {
        Step::Done(outcome) => Gate::Decided(d.finish(outcome)),
        Step::Install(reason) => Gate::Install {
            reason,
            pin: d.pin_lock.and_then(|l| l.pin.clone()),
            notes: d.notes.iter().map(|n| one_line(n)).collect(),
        },
        Step::Compare { .. } => Gate::Upgrade {
            baseline_revision: d.baseline.map_or(0, |b| b.revision),
            baseline_version: d.baseline.and_then(|b| b.chart_version.clone()),
            pin: d.pin_lock.and_then(|l| l.pin.clone()),
            notes: d.notes.iter().map(|n| one_line(n)).collect(),
        },
    }
}

type Outcome = (Action, Reason, String);

/// Where the target-less checks leave a decision.
enum Step {
    /// Decided without looking at the target version.
    Done(Outcome),
    /// Install (the pin still applies).
    Install(Reason),
    /// Compare the target with the baseline.
    Compare {
        /// The baseline is a failed revision with nothing deployed.
        failed_baseline: bool,
    },
}

struct Decider<'i, 'a> {
    input: &'i DecisionInput<'a>,
    notes: Vec<String>,
    /// The record versions are compared with.
    baseline: Option<&'i ReleaseSummary>,
    /// An unexpired pin lock.
    pin_lock: Option<&'i LockState>,
    /// Compared key values (keys other than chart-version), for the decision.
    deployed_key: Option<String>,
    target_key: Option<String>,
    /// `value:image.tag 1.2.0`: the deployed value of the key a message compares, when it
    /// is not the chart version; skip lines then say the release is at that, not at its
    /// chart version.
    deployed_at: Option<String>,
    differences: Option<Vec<Part>>,
    /// Set when the outcome waits for [`ChangeFacts`].
    needs_facts: bool,
}

impl<'i, 'a> Decider<'i, 'a> {
    fn new(input: &'i DecisionInput<'a>) -> Self {
        let mut notes = Vec::new();
        if let Some(n) = input.target.and_then(|t| t.note.as_ref()) {
            notes.push(n.clone());
        }
        Decider {
            input,
            notes,
            baseline: None,
            pin_lock: None,
            deployed_key: None,
            target_key: None,
            deployed_at: None,
            differences: None,
            needs_facts: false,
        }
    }

    fn finish(&self, (action, reason, message): Outcome) -> Decision {
        Decision {
            action,
            reason,
            message: one_line(&message),
            notes: self.notes.iter().map(|n| one_line(n)).collect(),
            deployed_version: self.baseline.and_then(|b| b.chart_version.clone()),
            deployed_revision: self.baseline.map(|b| b.revision),
            target_version: self.target_version().to_string(),
            compare: self.input.compare.clone(),
            deployed_key: self.deployed_key.clone(),
            target_key: self.target_key.clone(),
            differences: self.differences.clone(),
            needs_facts: self.needs_facts,
        }
    }

    /// The target version text; empty for a target-less [`gate`].
    fn target_version(&self) -> &str {
        self.input.target.map_or("", |t| t.version.as_str())
    }

    /// Steps 1-4: locks, not installed, pending, baseline.
    fn gate(&mut self) -> Step {
        let state = self.input.state;
        let latest = state.latest.as_ref();

        // 1. Locks.
        if let Some(lock) = &state.lock {
            let expired = lock.expires_at.is_some_and(|t| self.input.now_unix >= t);
            let hard_record = latest.is_some_and(|m| m.status == ReleaseStatus::PendingUpgrade);
            match (lock.kind, expired) {
                (LockKind::Hard, true) if hard_record => {
                    return Step::Done(self.refuse_expired_hard(lock))
                }
                (_, true) => self.notes.push(format!(
                    "ignored expired lock set by {} ({} lock, expired at {})",
                    lock.by.as_deref().unwrap_or("unknown"),
                    lock.kind.as_str(),
                    lock.expires_at
                        .map(crate::core::time::format_rfc3339)
                        .unwrap_or_default()
                )),
                (LockKind::Pin, false) => self.pin_lock = Some(lock),
                (LockKind::Soft | LockKind::Hard, false) => {
                    if lock.kind == LockKind::Hard && !hard_record {
                        if let Some(m) = latest {
                            self.notes.push(format!(
                                "hard lock is set but latest revision {} is {}, not \
                                 pending-upgrade, so plain `helm upgrade` is NOT blocked; re-run \
                                 \"guarded-upgrade lock {} -n {} --hard\"",
                                m.revision, m.status, self.input.release, self.input.namespace
                            ));
                        }
                    }
                    self.baseline = state.last_deployed.as_ref();
                    return Step::Done(self.skip_locked(lock));
                }
            }
        }

        // 2. Not installed.
        let latest = match latest {
            None => return Step::Install(Reason::NotInstalled),
            Some(m) if m.status == ReleaseStatus::Uninstalled => {
                return Step::Install(Reason::ReinstallAfterUninstall)
            }
            Some(m) => m,
        };

        // 3. Interrupted or concurrent operation.
        if latest.status.is_pending() {
            self.baseline = state.last_deployed.as_ref();
            return Step::Done(self.refuse_pending(latest));
        }

        // 4. Baseline.
        let mut failed_baseline = false;
        match (&latest.status, &state.last_deployed) {
            (ReleaseStatus::Deployed, Some(d)) => self.baseline = Some(d),
            (ReleaseStatus::Deployed, None) => {
                return Step::Done(self.refuse(
                    Reason::UnknownState,
                    format!(
                        "{} has revision {} marked deployed but its record could not be read; \
                         retry, and if this persists inspect it with {}",
                        self.subject(),
                        latest.revision,
                        self.history_cmd()
                    ),
                ))
            }
            (status, Some(d)) => {
                self.baseline = Some(d);
                if latest.revision > d.revision {
                    let chart = state
                        .latest_summary
                        .as_ref()
                        .filter(|s| s.revision == latest.revision)
                        .and_then(|s| s.chart_version.as_deref())
                        .map(|v| format!(" (chart version {v})"))
                        .unwrap_or_default();
                    self.notes.push(format!(
                        "later revision {}{chart} is {status} and is not counted as deployed; \
                         comparing with deployed revision {}",
                        latest.revision, d.revision
                    ));
                }
            }
            (ReleaseStatus::Failed | ReleaseStatus::Superseded, None) => {
                let Some(s) = state
                    .latest_summary
                    .as_ref()
                    .filter(|s| s.revision == latest.revision)
                else {
                    return Step::Done(self.refuse(
                        Reason::UnknownState,
                        format!(
                            "{} has no deployed revision and its latest revision {} ({}) could \
                             not be read; retry, and if this persists inspect it with {}",
                            self.subject(),
                            latest.revision,
                            latest.status,
                            self.history_cmd()
                        ),
                    ));
                };
                self.baseline = Some(s);
                failed_baseline = latest.status == ReleaseStatus::Failed;
                self.notes.push(format!(
                    "no revision is deployed; comparing with latest revision {} ({}), which helm \
                     upgrades from",
                    latest.revision, latest.status
                ));
            }
            (status, None) => {
                return Step::Done(self.refuse(
                    Reason::NoDeployedRevision,
                    format!(
                        "{} has no deployed revision and its latest revision {} is {status}, so \
                         helm cannot upgrade it; inspect it with {} and roll back to a good \
                         revision or uninstall it",
                        self.subject(),
                        latest.revision,
                        self.history_cmd()
                    ),
                ))
            }
        }
        Step::Compare { failed_baseline }
    }

    /// Step 5: chart identity, pin, version policy.
    fn compare(&mut self, failed_baseline: bool) -> Outcome {
        let Some(baseline) = self.baseline else {
            return self.refuse(Reason::UnknownState, "no baseline".to_string());
        };
        let Some(target_input) = self.input.target else {
            return self.refuse(Reason::UnknownState, "no target".to_string());
        };

        // 5a. Chart identity.
        if let (Some(want), Some(have)) = (&target_input.chart_name, &baseline.chart_name) {
            if want != have {
                if !self.input.allow_chart_change {
                    return self.refuse(
                        Reason::ChartChanged,
                        format!(
                            "{} runs chart {have:?} {} but the target chart is {want:?}; pass \
                             --allow-chart-change if replacing the chart is intended",
                            self.subject(),
                            self.at()
                        ),
                    );
                }
                self.notes.push(format!(
                    "chart changes from {have:?} to {want:?} (allowed by --allow-chart-change)"
                ));
            }
        }

        // 5b. Pin.
        if let Some(outcome) = self.check_pin() {
            return outcome;
        }

        // 5c. Version policy.
        let target_text = target_input.version.as_str();
        let deployed_text = baseline.chart_version.as_deref().unwrap_or("");
        if self.input.policy == Policy::Off {
            return self.proceed(
                Reason::PolicyOff,
                format!("{deployed_text} -> {target_text} (version policy off)"),
            );
        }
        let (ordering, deployed_text, target_text, key_label) =
            if *self.input.compare == CompareKey::ChartVersion {
                let deployed = match ChartVersion::parse_stored(deployed_text) {
                    Ok(v) => v,
                    Err(e) => {
                        let what = if deployed_text.is_empty() {
                            "has no chart version".to_string()
                        } else {
                            format!("has chart version {deployed_text:?}, which is not valid ({e})")
                        };
                        return self.refuse(
                            Reason::InvalidVersion,
                            format!(
                                "{} revision {} {what}, so versions cannot be compared; use \
                                 --min-version-policy off to upgrade without comparing",
                                self.subject(),
                                baseline.revision
                            ),
                        );
                    }
                };
                let target = match ChartVersion::parse(target_text) {
                    Ok(v) => v,
                    Err(e) => return self.refuse_invalid_target(e),
                };
                (
                    target.cmp(&deployed),
                    deployed_text.to_string(),
                    target_text.to_string(),
                    String::new(),
                )
            } else {
                match self.compare_key(baseline) {
                    Ok((ordering, d, t)) => (ordering, d, t, format!("{} ", self.input.compare)),
                    Err(outcome) => return outcome,
                }
            };
        let (deployed_text, target_text) = (deployed_text.as_str(), target_text.as_str());
        match ordering {
            std::cmp::Ordering::Greater => self.proceed(
                Reason::Newer,
                format!("{key_label}{deployed_text} -> {target_text}"),
            ),
            std::cmp::Ordering::Equal if failed_baseline => self.proceed(
                Reason::NoDeployedRevision,
                format!(
                    "{key_label}{deployed_text} -> {target_text} (retry: revision {} failed and \
                     nothing is deployed)",
                    baseline.revision
                ),
            ),
            std::cmp::Ordering::Equal if self.input.policy == Policy::NewerOrEqual => self.proceed(
                Reason::EqualReapply,
                format!(
                    "{key_label}{deployed_text} -> {target_text} (re-apply, policy newer-or-equal)"
                ),
            ),
            std::cmp::Ordering::Equal if self.input.policy == Policy::NewerOrChanged => {
                self.equal_under_newer_or_changed(baseline, &key_label, target_text)
            }
            std::cmp::Ordering::Equal => self.skip(
                Reason::NotNewer,
                format!(
                    "target {key_label}{target_text} is not newer (policy newer; use \
                     --min-version-policy newer-or-equal to re-apply)"
                ),
            ),
            std::cmp::Ordering::Less => self.skip(
                Reason::Downgrade,
                format!("target {key_label}{target_text} would be a downgrade"),
            ),
        }
    }

    /// Placeholder outcome of a decision that waits for [`ChangeFacts`].
    fn need_facts(&mut self) -> Outcome {
        self.needs_facts = true;
        self.refuse(
            Reason::UnknownState,
            format!(
                "{}: the release helm would write was not examined",
                self.subject()
            ),
        )
    }

    /// Equal versions under `newer-or-changed`: upgrade only when a part differs.
    fn equal_under_newer_or_changed(
        &mut self,
        baseline: &ReleaseSummary,
        key_label: &str,
        target_text: &str,
    ) -> Outcome {
        let Some(facts) = self.input.facts else {
            return self.need_facts();
        };
        let Some(parts) = facts.differences.clone() else {
            return self.need_facts();
        };
        self.differences = Some(parts.clone());
        if parts.is_empty() {
            return self.skip(
                Reason::Unchanged,
                format!(
                    "target {key_label}{target_text} is unchanged: the release helm would write \
                     equals revision {} (policy newer-or-changed)",
                    baseline.revision
                ),
            );
        }
        let names: Vec<&str> = parts.iter().map(|p| p.as_str()).collect();
        self.proceed(
            Reason::Changed,
            format!(
                "{key_label}{target_text} (same version, changed: {}; policy newer-or-changed)",
                names.join(", ")
            ),
        )
    }

    /// Orders the deployed and target values of a key other than chart-version. Equal
    /// texts are equal even when they are not versions; other non-versions are refused,
    /// naming the key and the value.
    fn compare_key(
        &mut self,
        baseline: &ReleaseSummary,
    ) -> Result<(std::cmp::Ordering, String, String), Outcome> {
        let key = self.input.compare;
        let Some(facts) = self.input.facts else {
            return Err(self.need_facts());
        };
        let deployed = Self::deployed_key_text(key, baseline, facts);
        let target = facts.target.get(key);
        let deployed_what = format!("revision {}", baseline.revision);
        let d = self.key_scalar(key, &deployed, &deployed_what)?;
        let t = self.key_scalar(key, &target, "the target")?;
        self.deployed_at = Some(format!("{key} {d}"));
        self.deployed_key = Some(d.clone());
        self.target_key = Some(t.clone());
        if d == t {
            return Ok((std::cmp::Ordering::Equal, d, t));
        }
        let dv = self.key_version(key, &d, &deployed_what)?;
        let tv = self.key_version(key, &t, "the target")?;
        Ok((tv.cmp(&dv), d, t))
    }

    /// The baseline's value of `key` (not the chart version).
    fn deployed_key_text(
        key: &CompareKey,
        baseline: &ReleaseSummary,
        facts: &ChangeFacts,
    ) -> KeyText {
        match key {
            // The summary carries appVersion: no need for the full record.
            CompareKey::AppVersion => match baseline.app_version.as_deref() {
                Some(v) if !v.is_empty() => KeyText::Scalar(v.to_string()),
                _ => KeyText::Missing,
            },
            _ => facts.deployed.get(key),
        }
    }

    fn key_scalar(&self, key: &CompareKey, text: &KeyText, whose: &str) -> Result<String, Outcome> {
        match text {
            KeyText::Scalar(s) => Ok(s.clone()),
            KeyText::Missing => Err(self.refuse(
                Reason::InvalidVersion,
                format!(
                    "{}: {whose} has no {key}, so versions cannot be compared; set it, or use \
                     --min-version-policy off to upgrade without comparing",
                    self.subject()
                ),
            )),
            KeyText::NotScalar(what) => Err(self.refuse(
                Reason::InvalidVersion,
                format!(
                    "{}: {key} of {whose} is {what}, not a version; compare a key that holds \
                     a version",
                    self.subject()
                ),
            )),
        }
    }

    fn key_version(
        &self,
        key: &CompareKey,
        text: &str,
        whose: &str,
    ) -> Result<ChartVersion, Outcome> {
        ChartVersion::parse(text).map_err(|e| {
            self.refuse(
                Reason::InvalidVersion,
                format!(
                    "{}: {key} {text:?} of {whose} is not a version ({e}), so versions cannot be \
                     compared; use --min-version-policy off to upgrade without comparing",
                    self.subject()
                ),
            )
        })
    }

    /// `release "db" in "shared"`
    fn subject(&self) -> String {
        format!(
            "release {:?} in {:?}",
            self.input.release, self.input.namespace
        )
    }

    fn history_cmd(&self) -> String {
        format!(
            "\"helm history {} -n {}\"",
            self.input.release, self.input.namespace
        )
    }

    /// `is at 1.4.0 (revision 7)`, `is at value:image.tag 1.2.0 (revision 7)` when a key
    /// was compared, or a description of what is there instead.
    fn at(&self) -> String {
        if let Some(b) = self.baseline {
            let version = self.deployed_at.as_deref().unwrap_or_else(|| {
                b.chart_version
                    .as_deref()
                    .unwrap_or("an unknown chart version")
            });
            let status = if b.status == ReleaseStatus::Deployed {
                String::new()
            } else {
                format!(", {}", b.status)
            };
            return format!("is at {version} (revision {}{status})", b.revision);
        }
        match &self.input.state.latest {
            None => "is not installed".to_string(),
            Some(m) if m.status == ReleaseStatus::Uninstalled => {
                format!("is not installed (revision {} was uninstalled)", m.revision)
            }
            Some(m) => format!(
                "has no deployed revision (latest revision {} is {})",
                m.revision, m.status
            ),
        }
    }

    fn proceed(&self, reason: Reason, detail: String) -> Outcome {
        (
            Action::Upgrade,
            reason,
            format!(
                "upgrade: {:?} in {:?} {detail}",
                self.input.release, self.input.namespace
            ),
        )
    }

    fn skip(&self, reason: Reason, why: String) -> Outcome {
        (
            Action::Skip,
            reason,
            format!("skip: {} {}; {why}", self.subject(), self.at()),
        )
    }

    fn refuse(&self, reason: Reason, text: String) -> Outcome {
        (Action::Refuse, reason, format!("refused: {text}"))
    }

    fn lock_description(lock: &LockState) -> String {
        let mut s = format!(
            "{} lock by {}",
            lock.kind.as_str(),
            lock.by.as_deref().unwrap_or("unknown")
        );
        if let Some(since) = &lock.since {
            s.push_str(&format!(" since {since}"));
        }
        if let Some(t) = lock.expires_at {
            s.push_str(&format!(" until {}", crate::core::time::format_rfc3339(t)));
        }
        if let Some(reason) = lock.reason.as_deref().filter(|r| !r.is_empty()) {
            s.push_str(&format!(": {reason:?}"));
        }
        s
    }

    fn skip_locked(&self, lock: &LockState) -> Outcome {
        let what = match self.input.target {
            Some(t) => format!("target {} not applied", t.version),
            None => "upgrades are not applied".to_string(),
        };
        self.skip(
            Reason::Locked,
            format!("{what}: {}", Self::lock_description(lock)),
        )
    }

    fn refuse_expired_hard(&self, lock: &LockState) -> Outcome {
        let revision = self
            .input
            .state
            .latest
            .as_ref()
            .map(|m| m.revision.to_string())
            .unwrap_or_default();
        self.refuse(
            Reason::Locked,
            format!(
                "{} has an expired {}; its revision {revision} is still marked pending-upgrade by \
                 the lock, so helm would refuse to upgrade. Run \"guarded-upgrade unlock {} -n {}\" \
                 to restore the revision's status, then retry",
                self.subject(),
                Self::lock_description(lock),
                self.input.release,
                self.input.namespace
            ),
        )
    }

    fn refuse_pending(&self, latest: &RecordMeta) -> Outcome {
        let rollback_to = self
            .baseline
            .map(|b| b.revision.to_string())
            .unwrap_or_else(|| "<REVISION>".to_string());
        self.refuse(
            Reason::Pending,
            format!(
                "{}: latest revision {} is {}, so another helm operation is in progress or was \
                 interrupted. Wait for it to finish and retry; if it was interrupted, check {} \
                 and recover with \"helm rollback {} {rollback_to} -n {}\" (rollback works while \
                 a revision is pending)",
                self.subject(),
                latest.revision,
                latest.status,
                self.history_cmd(),
                self.input.release,
                self.input.namespace
            ),
        )
    }

    fn refuse_invalid_target(&self, e: crate::core::version::VersionError) -> Outcome {
        self.refuse(
            Reason::InvalidVersion,
            format!(
                "target version {:?} for {} is not a valid chart version ({e})",
                self.target_version(),
                self.subject()
            ),
        )
    }

    /// Skips or refuses when a pin lock rejects the target.
    fn check_pin(&mut self) -> Option<Outcome> {
        let lock = self.pin_lock?;
        let pin_text = lock.pin.as_deref()?;
        let pin = match Constraint::parse(pin_text) {
            Ok(c) => c,
            Err(e) => {
                return Some(self.refuse(
                    Reason::InvalidVersion,
                    format!(
                        "{} is pinned to {pin_text:?}, which is not a valid constraint ({e}); fix \
                         or remove the pin with \"guarded-upgrade unlock {} -n {}\"",
                        self.subject(),
                        self.input.release,
                        self.input.namespace
                    ),
                ))
            }
        };
        let key = match lock.pin_key.as_deref().map(CompareKey::parse) {
            None => CompareKey::ChartVersion,
            Some(Ok(key)) => key,
            Some(Err(e)) => {
                return Some(self.refuse(
                    Reason::InvalidVersion,
                    format!(
                        "{} is pinned with an unusable key ({e}); fix or remove the pin with \
                         \"guarded-upgrade unlock {} -n {}\"",
                        self.subject(),
                        self.input.release,
                        self.input.namespace
                    ),
                ))
            }
        };
        let (target_text, label) = if key == CompareKey::ChartVersion {
            let target = match ChartVersion::parse(self.target_version()) {
                Ok(v) => v,
                Err(e) => return Some(self.refuse_invalid_target(e)),
            };
            if pin.matches(&target) {
                return None;
            }
            (self.target_version().to_string(), String::new())
        } else {
            let Some(facts) = self.input.facts else {
                return Some(self.need_facts());
            };
            let text = match self.key_scalar(&key, &facts.target.get(&key), "the target") {
                Ok(t) => t,
                Err(outcome) => return Some(outcome),
            };
            let target = match self.key_version(&key, &text, "the target") {
                Ok(v) => v,
                Err(outcome) => return Some(outcome),
            };
            if pin.matches(&target) {
                return None;
            }
            // The skip line names the deployed value of the pinned key, as it names the
            // target's (the chart version says nothing about it).
            if let Some(baseline) = self.baseline {
                if let KeyText::Scalar(d) = Self::deployed_key_text(&key, baseline, facts) {
                    self.deployed_at = Some(format!("{key} {d}"));
                }
            }
            (text, format!("{key} "))
        };
        Some(self.skip(
            Reason::Pinned,
            format!(
                "target {label}{target_text} does not match the pin {pin_text:?} ({})",
                Self::lock_description(lock)
            ),
        ))
    }

    fn install(&mut self, reason: Reason) -> Outcome {
        if let Some(outcome) = self.check_pin() {
            return outcome;
        }
        let why = match (&self.input.state.latest, reason) {
            (Some(m), Reason::ReinstallAfterUninstall) => {
                format!("reinstall; revision {} was uninstalled", m.revision)
            }
            _ => "not installed yet".to_string(),
        };
        (
            Action::Install,
            reason,
            format!(
                "install: {:?} in {:?} {} ({why})",
                self.input.release,
                self.input.namespace,
                self.target_version()
            ),
        )
    }
}

/// Replaces control characters (newlines in lock reasons...) with spaces so
/// every message stays on one line.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000; // 2023-11-14T22:13:20Z

    fn summary(revision: u64, status: ReleaseStatus, chart: &str, version: &str) -> ReleaseSummary {
        ReleaseSummary {
            name: "db".into(),
            namespace: "shared".into(),
            revision,
            status,
            chart_name: Some(chart.into()),
            chart_version: if version.is_empty() {
                None
            } else {
                Some(version.into())
            },
            app_version: None,
            description: None,
            first_deployed: None,
            last_deployed: None,
            apply_method: None,
        }
    }

    fn meta(revision: u64, status: ReleaseStatus) -> Option<RecordMeta> {
        Some(RecordMeta { revision, status })
    }

    /// Deployed at `version` (revision 7), latest = revision 7 deployed, as the program
    /// reads it.
    fn deployed(version: &str) -> DeployedState {
        crate::adapters::state::testkit::state(&[crate::adapters::state::testkit::rev(
            7,
            ReleaseStatus::Deployed,
            version,
        )])
    }

    fn lock(kind: LockKind, expires_at: Option<i64>, pin: Option<&str>) -> LockState {
        LockState {
            kind,
            reason: Some("db migration\nrunning".into()),
            by: Some("alice".into()),
            since: Some("2023-11-14T00:00:00Z".into()),
            expires_at,
            pin: pin.map(str::to_string),
            pin_key: None,
            hard_original_status: Some("deployed".into()),
        }
    }

    fn target(version: &str) -> Target {
        Target {
            chart_name: Some("postgresql".into()),
            version: version.into(),
            note: None,
        }
    }

    fn run(state: &DeployedState, target: &Target, policy: Policy) -> Decision {
        decide(&DecisionInput {
            release: "db",
            namespace: "shared",
            state,
            target: Some(target),
            policy,
            allow_chart_change: false,
            now_unix: NOW,
            compare: &CompareKey::ChartVersion,
            facts: None,
        })
    }

    fn check(d: &Decision, action: Action, reason: Reason) {
        assert_eq!((d.action, d.reason), (action, reason), "{d:#?}");
        let prefix = match action {
            Action::Install => "install: ",
            Action::Upgrade => "upgrade: ",
            Action::Skip => "skip: ",
            Action::Refuse => "refused: ",
        };
        assert!(d.message.starts_with(prefix), "{}", d.message);
        assert!(!d.message.contains('\n'), "{}", d.message);
        assert!(d.message.contains("\"db\""), "{}", d.message);
        assert!(d.message.contains("\"shared\""), "{}", d.message);
    }

    #[test]
    fn version_relation_by_policy() {
        use Action::*;
        use Policy::*;
        use Reason as R;
        let cases: &[(&str, &str, Policy, Action, Reason)] = &[
            ("1.4.0", "1.5.0", Newer, Upgrade, R::Newer),
            ("1.4.0", "1.4.0", Newer, Skip, R::NotNewer),
            ("1.4.0", "1.3.2", Newer, Skip, R::Downgrade),
            ("1.4.0", "1.5.0", NewerOrEqual, Upgrade, R::Newer),
            ("1.4.0", "1.4.0", NewerOrEqual, Upgrade, R::EqualReapply),
            ("1.4.0", "1.3.2", NewerOrEqual, Skip, R::Downgrade),
            ("1.4.0", "1.5.0", Off, Upgrade, R::PolicyOff),
            ("1.4.0", "1.4.0", Off, Upgrade, R::PolicyOff),
            ("1.4.0", "1.3.2", Off, Upgrade, R::PolicyOff),
            // lenient parsing and build metadata
            ("v1.4", "1.4.0", Newer, Skip, R::NotNewer),
            ("1.4.0+a", "1.4.0+b", Newer, Skip, R::NotNewer),
            ("1.4.0+a", "1.4.0+b", NewerOrEqual, Upgrade, R::EqualReapply),
            ("1.4.0", "v1.4.1", Newer, Upgrade, R::Newer),
            ("1.9.0", "1.10.0", Newer, Upgrade, R::Newer),
            // pre-releases
            ("1.5.0-rc.1", "1.5.0", Newer, Upgrade, R::Newer),
            ("1.5.0", "1.5.0-rc.1", Newer, Skip, R::Downgrade),
            ("1.5.0-beta.2", "1.5.0-beta.11", Newer, Upgrade, R::Newer),
            // invalid versions
            ("1.4.0", "latest", Newer, Refuse, R::InvalidVersion),
            ("1.4.0", "", NewerOrEqual, Refuse, R::InvalidVersion),
            ("banana", "1.5.0", Newer, Refuse, R::InvalidVersion),
            ("", "1.5.0", Newer, Refuse, R::InvalidVersion),
            ("banana", "1.5.0", Off, Upgrade, R::PolicyOff),
            ("1.4.0", "latest", Off, Upgrade, R::PolicyOff),
        ];
        for (have, want, policy, action, reason) in cases {
            let d = run(&deployed(have), &target(want), *policy);
            check(&d, *action, *reason);
            assert_eq!(d.deployed_revision, Some(7));
            assert_eq!(d.target_version, *want);
        }
    }

    #[test]
    fn exact_messages() {
        let d = run(&deployed("1.4.0"), &target("1.3.2"), Policy::Newer);
        assert_eq!(
            d.message,
            "skip: release \"db\" in \"shared\" is at 1.4.0 (revision 7); target 1.3.2 would be a downgrade"
        );
        let d = run(&deployed("1.4.0"), &target("1.5.0"), Policy::Newer);
        assert_eq!(d.message, "upgrade: \"db\" in \"shared\" 1.4.0 -> 1.5.0");
        let d = run(&DeployedState::default(), &target("1.0.0"), Policy::Newer);
        assert_eq!(
            d.message,
            "install: \"db\" in \"shared\" 1.0.0 (not installed yet)"
        );
        let d = run(&deployed("1.4.0"), &target("1.4.0"), Policy::Newer);
        assert!(d.message.contains("is not newer"), "{}", d.message);
        let d = run(&deployed("banana"), &target("1.4.0"), Policy::Newer);
        assert!(d.message.contains("\"banana\""), "{}", d.message);
        assert!(
            d.message.contains("--min-version-policy off"),
            "{}",
            d.message
        );
    }

    #[test]
    fn statuses_of_latest_record() {
        use ReleaseStatus as S;
        let dep = |rev| Some(summary(rev, S::Deployed, "postgresql", "1.4.0"));
        let lat = |rev, st, v: &str| Some(summary(rev, st, "postgresql", v));
        // (latest meta, last deployed, latest summary, target, action, reason)
        #[allow(clippy::type_complexity)]
        let cases: Vec<(
            Option<RecordMeta>,
            Option<ReleaseSummary>,
            Option<ReleaseSummary>,
            &str,
            Action,
            Reason,
        )> = vec![
            (
                None,
                None,
                None,
                "1.0.0",
                Action::Install,
                Reason::NotInstalled,
            ),
            (
                meta(3, S::Uninstalled),
                None,
                None,
                "1.0.0",
                Action::Install,
                Reason::ReinstallAfterUninstall,
            ),
            (
                meta(7, S::Deployed),
                dep(7),
                None,
                "1.5.0",
                Action::Upgrade,
                Reason::Newer,
            ),
            (
                meta(7, S::Deployed),
                None,
                None,
                "1.5.0",
                Action::Refuse,
                Reason::UnknownState,
            ),
            // later failed revision is not counted
            (
                meta(8, S::Failed),
                dep(7),
                lat(8, S::Failed, "1.5.0"),
                "1.5.0",
                Action::Upgrade,
                Reason::Newer,
            ),
            (
                meta(8, S::Failed),
                dep(7),
                None,
                "1.3.0",
                Action::Skip,
                Reason::Downgrade,
            ),
            (
                meta(8, S::Unknown),
                dep(7),
                None,
                "1.5.0",
                Action::Upgrade,
                Reason::Newer,
            ),
            (
                meta(8, S::Superseded),
                dep(7),
                None,
                "1.4.0",
                Action::Skip,
                Reason::NotNewer,
            ),
            // pending
            (
                meta(8, S::PendingUpgrade),
                dep(7),
                None,
                "1.5.0",
                Action::Refuse,
                Reason::Pending,
            ),
            (
                meta(1, S::PendingInstall),
                None,
                None,
                "1.5.0",
                Action::Refuse,
                Reason::Pending,
            ),
            (
                meta(9, S::PendingRollback),
                dep(7),
                None,
                "1.5.0",
                Action::Refuse,
                Reason::Pending,
            ),
            // nothing deployed, latest failed: helm upgrades from it
            (
                meta(2, S::Failed),
                None,
                lat(2, S::Failed, "1.0.0"),
                "1.0.0",
                Action::Upgrade,
                Reason::NoDeployedRevision,
            ),
            (
                meta(2, S::Failed),
                None,
                lat(2, S::Failed, "1.0.0"),
                "1.1.0",
                Action::Upgrade,
                Reason::Newer,
            ),
            (
                meta(2, S::Failed),
                None,
                lat(2, S::Failed, "2.0.0"),
                "1.0.0",
                Action::Skip,
                Reason::Downgrade,
            ),
            (
                meta(2, S::Failed),
                None,
                None,
                "1.0.0",
                Action::Refuse,
                Reason::UnknownState,
            ),
            (
                meta(2, S::Failed),
                None,
                lat(1, S::Failed, "1.0.0"),
                "1.0.0",
                Action::Refuse,
                Reason::UnknownState,
            ),
            (
                meta(4, S::Superseded),
                None,
                lat(4, S::Superseded, "1.4.0"),
                "1.4.0",
                Action::Skip,
                Reason::NotNewer,
            ),
            // helm itself cannot upgrade these
            (
                meta(4, S::Uninstalling),
                None,
                None,
                "1.5.0",
                Action::Refuse,
                Reason::NoDeployedRevision,
            ),
            (
                meta(4, S::Unknown),
                None,
                None,
                "1.5.0",
                Action::Refuse,
                Reason::NoDeployedRevision,
            ),
            (
                meta(4, S::Other("odd".into())),
                None,
                None,
                "1.5.0",
                Action::Refuse,
                Reason::NoDeployedRevision,
            ),
        ];
        for (i, (latest, last_deployed, latest_summary, want, action, reason)) in
            cases.into_iter().enumerate()
        {
            let state = DeployedState {
                latest,
                last_deployed,
                latest_summary,
                lock: None,
            };
            let d = run(&state, &target(want), Policy::Newer);
            assert_eq!((d.action, d.reason), (action, reason), "case {i}: {d:#?}");
            check(&d, action, reason);
        }
    }

    #[test]
    fn failed_later_revision_is_noted() {
        let state = DeployedState {
            latest: meta(8, ReleaseStatus::Failed),
            last_deployed: Some(summary(7, ReleaseStatus::Deployed, "postgresql", "1.4.0")),
            latest_summary: Some(summary(8, ReleaseStatus::Failed, "postgresql", "1.6.0")),
            lock: None,
        };
        let d = run(&state, &target("1.5.0"), Policy::Newer);
        check(&d, Action::Upgrade, Reason::Newer);
        assert_eq!(d.message, "upgrade: \"db\" in \"shared\" 1.4.0 -> 1.5.0");
        assert_eq!(d.notes.len(), 1);
        assert!(
            d.notes[0].contains("revision 8 (chart version 1.6.0) is failed"),
            "{:?}",
            d.notes
        );
        assert_eq!(d.deployed_version.as_deref(), Some("1.4.0"));
    }

    #[test]
    fn pending_message_explains_recovery() {
        let state = DeployedState {
            latest: meta(8, ReleaseStatus::PendingUpgrade),
            last_deployed: Some(summary(7, ReleaseStatus::Deployed, "postgresql", "1.4.0")),
            ..Default::default()
        };
        let d = run(&state, &target("1.5.0"), Policy::Off);
        check(&d, Action::Refuse, Reason::Pending);
        for part in [
            "pending-upgrade",
            "helm history db -n shared",
            "helm rollback db 7 -n shared",
        ] {
            assert!(d.message.contains(part), "{part}: {}", d.message);
        }
    }

    #[test]
    fn locks() {
        use LockKind::*;
        use ReleaseStatus as S;
        let past = Some(NOW - 1);
        let future = Some(NOW + 3600);
        // Revision 7 deployed at 1.4.0, then hard-locked (pending-upgrade), as read.
        let mut locked = crate::adapters::state::testkit::rev(7, S::PendingUpgrade, "1.4.0");
        locked.labels = crate::adapters::state::tests::hard_lock_labels();
        let hard_latest = crate::adapters::state::testkit::state(&[locked]);
        // (state, lock, target, policy, action, reason, note expected)
        #[allow(clippy::type_complexity)]
        let cases: Vec<(DeployedState, LockState, &str, Policy, Action, Reason, bool)> = vec![
            (
                deployed("1.4.0"),
                lock(Soft, None, None),
                "1.5.0",
                Policy::Newer,
                Action::Skip,
                Reason::Locked,
                false,
            ),
            (
                deployed("1.4.0"),
                lock(Soft, future, None),
                "1.5.0",
                Policy::Off,
                Action::Skip,
                Reason::Locked,
                false,
            ),
            (
                deployed("1.4.0"),
                lock(Soft, past, None),
                "1.5.0",
                Policy::Newer,
                Action::Upgrade,
                Reason::Newer,
                true,
            ),
            (
                deployed("1.4.0"),
                lock(Soft, past, None),
                "1.3.0",
                Policy::Newer,
                Action::Skip,
                Reason::Downgrade,
                true,
            ),
            (
                deployed("1.4.0"),
                lock(Soft, Some(NOW), None),
                "1.5.0",
                Policy::Newer,
                Action::Upgrade,
                Reason::Newer,
                true,
            ),
            (
                hard_latest.clone(),
                lock(Hard, None, None),
                "1.5.0",
                Policy::Newer,
                Action::Skip,
                Reason::Locked,
                false,
            ),
            (
                hard_latest.clone(),
                lock(Hard, future, None),
                "1.5.0",
                Policy::Off,
                Action::Skip,
                Reason::Locked,
                false,
            ),
            (
                hard_latest.clone(),
                lock(Hard, past, None),
                "1.5.0",
                Policy::Newer,
                Action::Refuse,
                Reason::Locked,
                false,
            ),
            // hard lock whose record was changed by someone: still honoured
            (
                deployed("1.4.0"),
                lock(Hard, None, None),
                "1.5.0",
                Policy::Newer,
                Action::Skip,
                Reason::Locked,
                true,
            ),
            (
                deployed("1.4.0"),
                lock(Hard, past, None),
                "1.5.0",
                Policy::Newer,
                Action::Upgrade,
                Reason::Newer,
                true,
            ),
            // expired hard lock with a foreign pending record: pending wins
            (
                DeployedState {
                    latest: meta(8, S::PendingInstall),
                    ..deployed("1.4.0")
                },
                lock(Hard, past, None),
                "1.5.0",
                Policy::Newer,
                Action::Refuse,
                Reason::Pending,
                true,
            ),
            // locks also hold off an install
            (
                DeployedState::default(),
                lock(Soft, None, None),
                "1.0.0",
                Policy::Newer,
                Action::Skip,
                Reason::Locked,
                false,
            ),
            (
                DeployedState::default(),
                lock(Soft, past, None),
                "1.0.0",
                Policy::Newer,
                Action::Install,
                Reason::NotInstalled,
                true,
            ),
            // pins
            (
                deployed("1.4.0"),
                lock(Pin, None, Some("~1.4")),
                "1.4.5",
                Policy::Newer,
                Action::Upgrade,
                Reason::Newer,
                false,
            ),
            (
                deployed("1.4.0"),
                lock(Pin, None, Some("~1.4")),
                "1.5.0",
                Policy::Newer,
                Action::Skip,
                Reason::Pinned,
                false,
            ),
            (
                deployed("1.4.0"),
                lock(Pin, None, Some("~1.4")),
                "1.5.0",
                Policy::Off,
                Action::Skip,
                Reason::Pinned,
                false,
            ),
            (
                deployed("1.4.0"),
                lock(Pin, None, Some("~1.4")),
                "1.4.0",
                Policy::Off,
                Action::Upgrade,
                Reason::PolicyOff,
                false,
            ),
            (
                deployed("1.4.0"),
                lock(Pin, None, Some("~1.4")),
                "1.3.0",
                Policy::Newer,
                Action::Skip,
                Reason::Pinned,
                false,
            ),
            (
                deployed("1.4.0"),
                lock(Pin, None, Some("~1.4")),
                "1.4.0",
                Policy::Newer,
                Action::Skip,
                Reason::NotNewer,
                false,
            ),
            (
                deployed("1.4.0"),
                lock(Pin, past, Some("~1.4")),
                "1.5.0",
                Policy::Newer,
                Action::Upgrade,
                Reason::Newer,
                true,
            ),
            (
                deployed("1.4.0"),
                lock(Pin, future, Some(">=1.4 <2")),
                "1.9.0",
                Policy::Newer,
                Action::Upgrade,
                Reason::Newer,
                false,
            ),
            (
                deployed("1.4.0"),
                lock(Pin, None, Some("not a pin")),
                "1.5.0",
                Policy::Off,
                Action::Refuse,
                Reason::InvalidVersion,
                false,
            ),
            (
                deployed("1.4.0"),
                lock(Pin, None, Some("~1.4")),
                "latest",
                Policy::Off,
                Action::Refuse,
                Reason::InvalidVersion,
                false,
            ),
            (
                deployed("1.4.0"),
                lock(Pin, None, None),
                "9.0.0",
                Policy::Newer,
                Action::Upgrade,
                Reason::Newer,
                false,
            ),
            (
                DeployedState::default(),
                lock(Pin, None, Some("1.x")),
                "2.0.0",
                Policy::Newer,
                Action::Skip,
                Reason::Pinned,
                false,
            ),
            (
                DeployedState::default(),
                lock(Pin, None, Some("1.x")),
                "1.2.0",
                Policy::Newer,
                Action::Install,
                Reason::NotInstalled,
                false,
            ),
        ];
        for (i, (mut state, lock, want, policy, action, reason, noted)) in
            cases.into_iter().enumerate()
        {
            state.lock = Some(lock);
            let d = run(&state, &target(want), policy);
            assert_eq!((d.action, d.reason), (action, reason), "case {i}: {d:#?}");
            check(&d, action, reason);
            assert_eq!(!d.notes.is_empty(), noted, "case {i}: {:?}", d.notes);
        }
    }

    #[test]
    fn lock_messages() {
        let mut state = deployed("1.4.0");
        state.lock = Some(lock(LockKind::Soft, Some(NOW + 60), None));
        let d = run(&state, &target("1.5.0"), Policy::Newer);
        assert_eq!(
            d.message,
            "skip: release \"db\" in \"shared\" is at 1.4.0 (revision 7); target 1.5.0 not \
             applied: soft lock by alice since 2023-11-14T00:00:00Z until \
             2023-11-14T22:14:20Z: \"db migration\\nrunning\""
        );
        state.lock = Some(lock(LockKind::Soft, Some(NOW - 60), None));
        let d = run(&state, &target("1.5.0"), Policy::Newer);
        assert_eq!(
            d.notes,
            ["ignored expired lock set by alice (soft lock, expired at 2023-11-14T22:12:20Z)"]
        );
        state.latest = meta(7, ReleaseStatus::PendingUpgrade);
        state.lock = Some(lock(LockKind::Hard, Some(NOW - 60), None));
        let d = run(&state, &target("1.5.0"), Policy::Newer);
        assert!(
            d.message.contains("guarded-upgrade unlock db -n shared"),
            "{}",
            d.message
        );
        state.lock = Some(lock(LockKind::Pin, None, Some("~1.4")));
        state.latest = meta(7, ReleaseStatus::Deployed);
        let d = run(&state, &target("2.0.0"), Policy::Newer);
        assert!(
            d.message.contains("does not match the pin \"~1.4\""),
            "{}",
            d.message
        );
        assert!(d.message.starts_with(
            "skip: release \"db\" in \"shared\" is at 1.4.0 (revision 7); target 2.0.0"
        ));
        // A lock with no details still reads well.
        state.lock = Some(LockState {
            kind: LockKind::Soft,
            reason: None,
            by: None,
            since: None,
            expires_at: None,
            pin: None,
            pin_key: None,
            hard_original_status: None,
        });
        let d = run(&state, &target("2.0.0"), Policy::Newer);
        assert!(
            d.message.ends_with("not applied: soft lock by unknown"),
            "{}",
            d.message
        );
    }

    #[test]
    fn chart_change() {
        let state = deployed("1.4.0");
        let mut t = target("1.5.0");
        t.chart_name = Some("mysql".into());
        let d = run(&state, &t, Policy::Newer);
        check(&d, Action::Refuse, Reason::ChartChanged);
        assert!(d.message.contains("--allow-chart-change"), "{}", d.message);
        // Chart change is checked even with policy off.
        check(
            &run(&state, &t, Policy::Off),
            Action::Refuse,
            Reason::ChartChanged,
        );
        let allowed = decide(&DecisionInput {
            release: "db",
            namespace: "shared",
            state: &state,
            target: Some(&t),
            policy: Policy::Newer,
            allow_chart_change: true,
            now_unix: NOW,
            compare: &CompareKey::ChartVersion,
            facts: None,
        });
        check(&allowed, Action::Upgrade, Reason::Newer);
        assert!(allowed.notes[0].contains("\"postgresql\" to \"mysql\""));
        // Version policy still applies after an allowed chart change.
        t.version = "1.0.0".into();
        let allowed = decide(&DecisionInput {
            release: "db",
            namespace: "shared",
            state: &state,
            target: Some(&t),
            policy: Policy::Newer,
            allow_chart_change: true,
            now_unix: NOW,
            compare: &CompareKey::ChartVersion,
            facts: None,
        });
        check(&allowed, Action::Skip, Reason::Downgrade);
        // Unknown target chart name: not checked.
        t.chart_name = None;
        t.version = "1.5.0".into();
        check(
            &run(&state, &t, Policy::Newer),
            Action::Upgrade,
            Reason::Newer,
        );
    }

    #[test]
    fn target_note_is_kept() {
        let mut t = target("1.5.0");
        t.note = Some("--version 2.0.0 ignored for a local chart".into());
        let d = run(&deployed("1.4.0"), &t, Policy::Newer);
        assert_eq!(d.notes, ["--version 2.0.0 ignored for a local chart"]);
    }

    #[test]
    fn serializes_kebab_case() {
        let d = run(&deployed("1.4.0"), &target("1.4.0"), Policy::Newer);
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["action"], "skip");
        assert_eq!(json["reason"], "not-newer");
        assert_eq!(json["deployed_version"], "1.4.0");
        let reasons = [
            (Reason::NotInstalled, "not-installed"),
            (Reason::ReinstallAfterUninstall, "reinstall-after-uninstall"),
            (Reason::EqualReapply, "equal-reapply"),
            (Reason::PolicyOff, "policy-off"),
            (Reason::ChartChanged, "chart-changed"),
            (Reason::InvalidVersion, "invalid-version"),
            (Reason::NoDeployedRevision, "no-deployed-revision"),
            (Reason::UnknownState, "unknown-state"),
        ];
        for (r, s) in reasons {
            assert_eq!(serde_json::to_value(r).unwrap(), s);
        }
        assert_eq!(
            serde_json::to_value(Policy::NewerOrEqual).unwrap(),
            "newer-or-equal"
        );
        assert_eq!(serde_json::to_value(LockKind::Pin).unwrap(), "pin");
    }

    #[test]
    fn policy_parse() {
        for p in [
            Policy::Newer,
            Policy::NewerOrEqual,
            Policy::NewerOrChanged,
            Policy::Off,
        ] {
            assert_eq!(Policy::parse(p.as_str()), Ok(p));
            assert_eq!(p.to_string(), p.as_str());
        }
        let names: Vec<&str> = [
            Policy::Newer,
            Policy::NewerOrEqual,
            Policy::NewerOrChanged,
            Policy::Off,
        ]
        .iter()
        .map(Policy::as_str)
        .collect();
        assert_eq!(Policy::NAMES, names, "NAMES feeds help and completions");
        assert_eq!(
            PolicyError("x".into()).to_string(),
            format!(
                "unknown version policy \"x\": use one of {}",
                Policy::NAMES.join(", ")
            )
        );
        assert_eq!(Policy::default(), Policy::Newer);
        let err = Policy::parse("Newer").unwrap_err().to_string();
        assert!(err.contains("newer-or-equal"), "{err}");
        assert!(Policy::parse("").is_err());
    }

    #[test]
    fn formats_unix_time() {
        let cases = [
            (0, "1970-01-01T00:00:00Z"),
            (NOW, "2023-11-14T22:13:20Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (4_107_542_399, "2100-02-28T23:59:59Z"),
            (-1, "1969-12-31T23:59:59Z"),
        ];
        for (secs, want) in cases {
            assert_eq!(crate::core::time::format_rfc3339(secs), want);
        }
    }

    // ---- issue 11: newer-or-changed, --compare keys, pins on keys ----

    fn side(pairs: &[(&CompareKey, KeyText)]) -> KeySide {
        KeySide {
            keys: pairs
                .iter()
                .map(|(k, t)| ((*k).clone(), t.clone()))
                .collect(),
        }
    }

    fn scalar(text: &str) -> KeyText {
        KeyText::Scalar(text.into())
    }

    fn run_with(
        state: &DeployedState,
        target: &Target,
        policy: Policy,
        compare: &CompareKey,
        facts: Option<&ChangeFacts>,
    ) -> Decision {
        decide(&DecisionInput {
            release: "db",
            namespace: "shared",
            state,
            target: Some(target),
            policy,
            allow_chart_change: false,
            now_unix: NOW,
            compare,
            facts,
        })
    }

    fn changed(parts: &[Part]) -> ChangeFacts {
        ChangeFacts {
            differences: Some(parts.to_vec()),
            ..ChangeFacts::default()
        }
    }

    #[test]
    fn newer_or_changed() {
        use ReleaseStatus as S;
        let failed = DeployedState {
            latest: meta(8, S::Failed),
            last_deployed: None,
            latest_summary: Some(summary(8, S::Failed, "postgresql", "1.4.0")),
            lock: None,
        };
        let mut soft = deployed("1.4.0");
        soft.lock = Some(lock(LockKind::Soft, None, None));
        let none = changed(&[]);
        let vals = changed(&[Part::Values, Part::Chart]);
        let unknown = ChangeFacts::default();
        // (state, target, facts, action, reason, needs facts, differences)
        #[allow(clippy::type_complexity)]
        let cases: Vec<(
            DeployedState,
            &str,
            Option<&ChangeFacts>,
            Action,
            Reason,
            bool,
            Option<Vec<Part>>,
        )> = vec![
            // Versions differ: decided without facts (no dry run).
            (
                deployed("1.4.0"),
                "1.5.0",
                None,
                Action::Upgrade,
                Reason::Newer,
                false,
                None,
            ),
            (
                deployed("1.4.0"),
                "1.3.0",
                None,
                Action::Skip,
                Reason::Downgrade,
                false,
                None,
            ),
            // Equal: facts needed, then unchanged or changed.
            (
                deployed("1.4.0"),
                "1.4.0",
                None,
                Action::Refuse,
                Reason::UnknownState,
                true,
                None,
            ),
            (
                deployed("1.4.0"),
                "1.4.0",
                Some(&unknown),
                Action::Refuse,
                Reason::UnknownState,
                true,
                None,
            ),
            (
                deployed("1.4.0"),
                "1.4.0",
                Some(&none),
                Action::Skip,
                Reason::Unchanged,
                false,
                Some(vec![]),
            ),
            (
                deployed("1.4.0"),
                "1.4.0",
                Some(&vals),
                Action::Upgrade,
                Reason::Changed,
                false,
                Some(vec![Part::Values, Part::Chart]),
            ),
            // Equal with build metadata is equal.
            (
                deployed("1.4.0+a"),
                "1.4.0+b",
                Some(&none),
                Action::Skip,
                Reason::Unchanged,
                false,
                Some(vec![]),
            ),
            // Retrying a failed version stays allowed without facts.
            (
                failed,
                "1.4.0",
                None,
                Action::Upgrade,
                Reason::NoDeployedRevision,
                false,
                None,
            ),
            // Locks come first.
            (
                soft,
                "1.4.0",
                None,
                Action::Skip,
                Reason::Locked,
                false,
                None,
            ),
            // Install needs no facts.
            (
                DeployedState::default(),
                "1.4.0",
                None,
                Action::Install,
                Reason::NotInstalled,
                false,
                None,
            ),
        ];
        for (i, (state, want, facts, action, reason, needs, diffs)) in cases.into_iter().enumerate()
        {
            let d = run_with(
                &state,
                &target(want),
                Policy::NewerOrChanged,
                &CompareKey::ChartVersion,
                facts,
            );
            assert_eq!(
                (d.action, d.reason, d.needs_facts),
                (action, reason, needs),
                "case {i}: {d:#?}"
            );
            assert_eq!(d.differences, diffs, "case {i}");
            if !needs {
                check(&d, action, reason);
            }
        }
        // Other policies never ask for facts.
        for policy in [Policy::Newer, Policy::NewerOrEqual, Policy::Off] {
            let d = run_with(
                &deployed("1.4.0"),
                &target("1.4.0"),
                policy,
                &CompareKey::ChartVersion,
                None,
            );
            assert!(
                !d.needs_facts && d.differences.is_none(),
                "{policy}: {d:#?}"
            );
        }
    }

    #[test]
    fn newer_or_changed_messages() {
        let d = run_with(
            &deployed("1.4.0"),
            &target("1.4.0"),
            Policy::NewerOrChanged,
            &CompareKey::ChartVersion,
            Some(&changed(&[])),
        );
        assert_eq!(
            d.message,
            "skip: release \"db\" in \"shared\" is at 1.4.0 (revision 7); target 1.4.0 is \
             unchanged: the release helm would write equals revision 7 (policy newer-or-changed)"
        );
        let d = run_with(
            &deployed("1.4.0"),
            &target("1.4.0"),
            Policy::NewerOrChanged,
            &CompareKey::ChartVersion,
            Some(&changed(&[Part::Manifest, Part::Hooks])),
        );
        assert_eq!(
            d.message,
            "upgrade: \"db\" in \"shared\" 1.4.0 (same version, changed: manifest, hooks; policy \
             newer-or-changed)"
        );
    }

    #[test]
    fn compare_keys() {
        let tag = CompareKey::Value("image.tag".into());
        let app = CompareKey::AppVersion;
        let facts = |d: KeyText, t: KeyText, diffs: Option<Vec<Part>>| ChangeFacts {
            deployed: side(&[(&tag, d)]),
            target: side(&[(&tag, t.clone()), (&app, t)]),
            differences: diffs,
        };
        let mut app_state = deployed("1.4.0");
        if let Some(s) = app_state.last_deployed.as_mut() {
            s.app_version = Some("2.0.0".into());
        }
        // (key, state, facts, policy, action, reason, needs, deployed_key, target_key)
        #[allow(clippy::type_complexity)]
        let cases: Vec<(
            &CompareKey,
            DeployedState,
            Option<ChangeFacts>,
            Policy,
            Action,
            Reason,
            bool,
            Option<&str>,
            Option<&str>,
        )> = vec![
            (
                &tag,
                deployed("1.4.0"),
                None,
                Policy::Newer,
                Action::Refuse,
                Reason::UnknownState,
                true,
                None,
                None,
            ),
            (
                &tag,
                deployed("1.4.0"),
                Some(facts(scalar("1.0.0"), scalar("1.1.0"), None)),
                Policy::Newer,
                Action::Upgrade,
                Reason::Newer,
                false,
                Some("1.0.0"),
                Some("1.1.0"),
            ),
            (
                &tag,
                deployed("1.4.0"),
                Some(facts(scalar("1.1.0"), scalar("1.0.0"), None)),
                Policy::Newer,
                Action::Skip,
                Reason::Downgrade,
                false,
                Some("1.1.0"),
                Some("1.0.0"),
            ),
            // chart version ignored: only the key counts
            (
                &tag,
                deployed("9.0.0"),
                Some(facts(scalar("1.0.0"), scalar("1.1.0"), None)),
                Policy::Newer,
                Action::Upgrade,
                Reason::Newer,
                false,
                Some("1.0.0"),
                Some("1.1.0"),
            ),
            (
                &tag,
                deployed("1.4.0"),
                Some(facts(scalar("1.0.0"), scalar("1.0.0"), None)),
                Policy::Newer,
                Action::Skip,
                Reason::NotNewer,
                false,
                Some("1.0.0"),
                Some("1.0.0"),
            ),
            // equal non-version strings are equal
            (
                &tag,
                deployed("1.4.0"),
                Some(facts(scalar("latest"), scalar("latest"), Some(vec![]))),
                Policy::NewerOrChanged,
                Action::Skip,
                Reason::Unchanged,
                false,
                Some("latest"),
                Some("latest"),
            ),
            (
                &tag,
                deployed("1.4.0"),
                Some(facts(
                    scalar("latest"),
                    scalar("latest"),
                    Some(vec![Part::Values]),
                )),
                Policy::NewerOrChanged,
                Action::Upgrade,
                Reason::Changed,
                false,
                Some("latest"),
                Some("latest"),
            ),
            (
                &tag,
                deployed("1.4.0"),
                Some(facts(scalar("latest"), scalar("latest"), None)),
                Policy::NewerOrChanged,
                Action::Refuse,
                Reason::UnknownState,
                true,
                Some("latest"),
                Some("latest"),
            ),
            // different non-versions, missing or non-scalar values: refused
            (
                &tag,
                deployed("1.4.0"),
                Some(facts(scalar("latest"), scalar("1.0.0"), None)),
                Policy::Newer,
                Action::Refuse,
                Reason::InvalidVersion,
                false,
                Some("latest"),
                Some("1.0.0"),
            ),
            (
                &tag,
                deployed("1.4.0"),
                Some(facts(scalar("1.0.0"), scalar("sha-abc"), None)),
                Policy::Newer,
                Action::Refuse,
                Reason::InvalidVersion,
                false,
                Some("1.0.0"),
                Some("sha-abc"),
            ),
            (
                &tag,
                deployed("1.4.0"),
                Some(facts(KeyText::Missing, scalar("1.0.0"), None)),
                Policy::Newer,
                Action::Refuse,
                Reason::InvalidVersion,
                false,
                None,
                None,
            ),
            (
                &tag,
                deployed("1.4.0"),
                Some(facts(scalar("1.0.0"), KeyText::NotScalar("a map"), None)),
                Policy::Newer,
                Action::Refuse,
                Reason::InvalidVersion,
                false,
                None,
                None,
            ),
            // policy off: no comparison, no facts
            (
                &tag,
                deployed("1.4.0"),
                None,
                Policy::Off,
                Action::Upgrade,
                Reason::PolicyOff,
                false,
                None,
                None,
            ),
            // app-version: deployed side from the summary
            (
                &app,
                app_state.clone(),
                None,
                Policy::Newer,
                Action::Refuse,
                Reason::UnknownState,
                true,
                None,
                None,
            ),
            (
                &app,
                app_state.clone(),
                Some(facts(KeyText::Missing, scalar("2.1.0"), None)),
                Policy::Newer,
                Action::Upgrade,
                Reason::Newer,
                false,
                Some("2.0.0"),
                Some("2.1.0"),
            ),
            (
                &app,
                app_state.clone(),
                Some(facts(KeyText::Missing, scalar("1.9.0"), None)),
                Policy::Newer,
                Action::Skip,
                Reason::Downgrade,
                false,
                Some("2.0.0"),
                Some("1.9.0"),
            ),
            (
                &app,
                deployed("1.4.0"),
                Some(facts(KeyText::Missing, scalar("1.9.0"), None)),
                Policy::Newer,
                Action::Refuse,
                Reason::InvalidVersion,
                false,
                None,
                None,
            ),
        ];
        for (i, (key, state, facts, policy, action, reason, needs, dk, tk)) in
            cases.into_iter().enumerate()
        {
            let d = run_with(&state, &target("1.4.0"), policy, key, facts.as_ref());
            assert_eq!(
                (d.action, d.reason, d.needs_facts),
                (action, reason, needs),
                "case {i}: {d:#?}"
            );
            assert_eq!(
                (d.deployed_key.as_deref(), d.target_key.as_deref()),
                (dk, tk),
                "case {i}"
            );
            if !needs {
                check(&d, action, reason);
            }
        }
    }

    #[test]
    fn compare_key_messages_name_only_the_key_value() {
        let tag = CompareKey::Value("image.tag".into());
        let run_tag = |d: KeyText, t: KeyText| {
            let facts = ChangeFacts {
                deployed: side(&[(&tag, d)]),
                target: side(&[(&tag, t)]),
                differences: None,
            };
            run_with(
                &deployed("1.4.0"),
                &target("1.4.0"),
                Policy::Newer,
                &tag,
                Some(&facts),
            )
            .message
        };
        assert_eq!(
            run_tag(scalar("1.0.0"), scalar("1.1.0")),
            "upgrade: \"db\" in \"shared\" value:image.tag 1.0.0 -> 1.1.0"
        );
        // Skip lines name the compared key's deployed value, not the chart version (1.4.0).
        assert_eq!(
            run_tag(scalar("1.1.0"), scalar("1.0.0")),
            "skip: release \"db\" in \"shared\" is at value:image.tag 1.1.0 (revision 7); target \
             value:image.tag 1.0.0 would be a downgrade"
        );
        assert_eq!(
            run_tag(scalar("1.1.0"), scalar("1.1.0")),
            "skip: release \"db\" in \"shared\" is at value:image.tag 1.1.0 (revision 7); target \
             value:image.tag 1.1.0 is not newer (policy newer; use --min-version-policy \
             newer-or-equal to re-apply)"
        );
        let unchanged = ChangeFacts {
            deployed: side(&[(&tag, scalar("1.1.0"))]),
            target: side(&[(&tag, scalar("1.1.0"))]),
            differences: Some(vec![]),
        };
        assert_eq!(
            run_with(
                &deployed("1.4.0"),
                &target("1.4.0"),
                Policy::NewerOrChanged,
                &tag,
                Some(&unchanged),
            )
            .message,
            "skip: release \"db\" in \"shared\" is at value:image.tag 1.1.0 (revision 7); target \
             value:image.tag 1.1.0 is unchanged: the release helm would write equals revision 7 \
             (policy newer-or-changed)"
        );
        let app = CompareKey::AppVersion;
        let mut app_state = deployed("1.4.0");
        if let Some(d) = app_state.last_deployed.as_mut() {
            d.app_version = Some("2.0.0".into());
        }
        let app_facts = ChangeFacts {
            deployed: KeySide::default(),
            target: side(&[(&app, scalar("1.9.0"))]),
            differences: None,
        };
        assert_eq!(
            run_with(
                &app_state,
                &target("1.5.0"),
                Policy::Newer,
                &app,
                Some(&app_facts)
            )
            .message,
            "skip: release \"db\" in \"shared\" is at app-version 2.0.0 (revision 7); target \
             app-version 1.9.0 would be a downgrade"
        );
        assert_eq!(
            run_tag(scalar("1.0.0"), scalar("sha-abc")),
            "refused: release \"db\" in \"shared\": value:image.tag \"sha-abc\" of the target is \
             not a version (invalid chart version \"sha-abc\": expected a number for a version \
             part; expected MAJOR[.MINOR[.PATCH]][-PRERELEASE][+BUILD], for example 1.2.3, v1.2 \
             or 1.2.3-rc.1), so versions cannot be compared; use --min-version-policy off to upgrade without comparing"
        );
        assert_eq!(
            run_tag(KeyText::Missing, scalar("1.0.0")),
            "refused: release \"db\" in \"shared\": revision 7 has no value:image.tag, so \
             versions cannot be compared; set it, or use --min-version-policy off to upgrade \
             without comparing"
        );
        assert_eq!(
            run_tag(scalar("1.0.0"), KeyText::NotScalar("a map")),
            "refused: release \"db\" in \"shared\": value:image.tag of the target is a map, not \
             a version; compare a key that holds a version"
        );
    }

    #[test]
    fn pins_on_keys() {
        let tag = CompareKey::Value("image.tag".into());
        let pin = |key: Option<&str>| LockState {
            pin_key: key.map(str::to_string),
            ..lock(LockKind::Pin, None, Some("~1.4"))
        };
        let target_tag = |t: &str| ChangeFacts {
            deployed: side(&[(&tag, scalar("1.4.0"))]),
            target: side(&[(&tag, scalar(t))]),
            differences: Some(vec![]),
        };
        // (state, pin key, --compare, facts, action, reason, needs)
        #[allow(clippy::type_complexity)]
        let cases: Vec<(
            DeployedState,
            Option<&str>,
            &CompareKey,
            Option<ChangeFacts>,
            Action,
            Reason,
            bool,
        )> = vec![
            // The pin constrains its own key even when --compare is the chart version.
            (
                deployed("1.0.0"),
                Some("value:image.tag"),
                &CompareKey::ChartVersion,
                None,
                Action::Refuse,
                Reason::UnknownState,
                true,
            ),
            (
                deployed("1.0.0"),
                Some("value:image.tag"),
                &CompareKey::ChartVersion,
                Some(target_tag("1.4.7")),
                Action::Upgrade,
                Reason::Newer,
                false,
            ),
            (
                deployed("1.0.0"),
                Some("value:image.tag"),
                &CompareKey::ChartVersion,
                Some(target_tag("1.5.0")),
                Action::Skip,
                Reason::Pinned,
                false,
            ),
            (
                deployed("1.0.0"),
                Some("value:image.tag"),
                &tag,
                Some(target_tag("1.4.7")),
                Action::Upgrade,
                Reason::Newer,
                false,
            ),
            (
                deployed("1.0.0"),
                Some("value:image.tag"),
                &tag,
                Some(target_tag("1.5.0")),
                Action::Skip,
                Reason::Pinned,
                false,
            ),
            (
                deployed("1.0.0"),
                Some("value:image.tag"),
                &tag,
                Some(target_tag("latest")),
                Action::Refuse,
                Reason::InvalidVersion,
                false,
            ),
            // Install: the pin still applies to its key.
            (
                DeployedState::default(),
                Some("value:image.tag"),
                &CompareKey::ChartVersion,
                Some(target_tag("2.0.0")),
                Action::Skip,
                Reason::Pinned,
                false,
            ),
            (
                DeployedState::default(),
                Some("value:image.tag"),
                &CompareKey::ChartVersion,
                Some(target_tag("1.4.1")),
                Action::Install,
                Reason::NotInstalled,
                false,
            ),
            // A pin without key is on the chart version (target 1.4.0 matches ~1.4).
            (
                deployed("1.0.0"),
                None,
                &tag,
                Some(target_tag("1.5.0")),
                Action::Upgrade,
                Reason::Newer,
                false,
            ),
            (
                deployed("1.0.0"),
                Some("chart-version"),
                &tag,
                Some(target_tag("1.5.0")),
                Action::Upgrade,
                Reason::Newer,
                false,
            ),
            (
                deployed("1.0.0"),
                Some("bogus"),
                &CompareKey::ChartVersion,
                None,
                Action::Refuse,
                Reason::InvalidVersion,
                false,
            ),
        ];
        for (i, (mut state, key, compare, facts, action, reason, needs)) in
            cases.into_iter().enumerate()
        {
            state.lock = Some(pin(key));
            let d = run_with(
                &state,
                &target("1.4.0"),
                Policy::Newer,
                compare,
                facts.as_ref(),
            );
            assert_eq!(
                (d.action, d.reason, d.needs_facts),
                (action, reason, needs),
                "case {i}: {d:#?}"
            );
        }
        let mut state = deployed("1.0.0");
        state.lock = Some(pin(Some("value:image.tag")));
        let d = run_with(
            &state,
            &target("1.4.0"),
            Policy::Newer,
            &tag,
            Some(&target_tag("1.5.0")),
        );
        assert_eq!(
            d.message,
            "skip: release \"db\" in \"shared\" is at value:image.tag 1.4.0 (revision 7); target \
             value:image.tag 1.5.0 does not match the pin \"~1.4\" (pin lock by alice since \
             2023-11-14T00:00:00Z: \"db migration\\nrunning\")"
        );
        // A pin on a key with --compare chart-version: the line names the pinned key on both
        // sides too.
        let d = run_with(
            &state,
            &target("1.4.0"),
            Policy::Newer,
            &CompareKey::ChartVersion,
            Some(&target_tag("1.5.0")),
        );
        assert!(
            d.message.starts_with(
                "skip: release \"db\" in \"shared\" is at value:image.tag 1.4.0 (revision 7); \
                 target value:image.tag 1.5.0 does not match the pin"
            ),
            "{}",
            d.message
        );
    }

    #[test]
    fn compare_key_parse_and_needed_keys() {
        let ok = [
            ("chart-version", CompareKey::ChartVersion),
            ("app-version", CompareKey::AppVersion),
            ("value:image.tag", CompareKey::Value("image.tag".into())),
            ("value:v", CompareKey::Value("v".into())),
        ];
        for (text, key) in ok {
            assert_eq!(CompareKey::parse(text), Ok(key.clone()));
            assert_eq!(key.to_string(), text);
            assert_eq!(serde_json::to_value(&key).unwrap(), text);
        }
        for bad in [
            "",
            "value:",
            "value:a..b",
            "value:.a",
            "chart",
            "Value:a",
            "app_version",
        ] {
            let err = CompareKey::parse(bad).unwrap_err().to_string();
            assert_eq!(
                err,
                format!(
                    "unknown compare key {bad:?}: use chart-version, app-version or value:PATH \
                     (e.g. value:image.tag)"
                )
            );
        }
        let tag = CompareKey::Value("image.tag".into());
        let pinned = LockState {
            pin_key: Some("app-version".into()),
            ..lock(LockKind::Pin, None, Some("1.x"))
        };
        assert_eq!(keys_needed(&tag, None), vec![tag.clone()]);
        assert_eq!(
            keys_needed(&tag, Some(&pinned)),
            vec![tag.clone(), CompareKey::AppVersion]
        );
        assert_eq!(
            keys_needed(&CompareKey::AppVersion, Some(&pinned)),
            vec![CompareKey::AppVersion]
        );
        assert_eq!(
            Policy::parse("newer-or-changed"),
            Ok(Policy::NewerOrChanged)
        );
        assert_eq!(
            serde_json::to_value(Reason::Unchanged).unwrap(),
            "unchanged"
        );
        assert_eq!(serde_json::to_value(Reason::Changed).unwrap(), "changed");
        let d = run_with(
            &deployed("1.4.0"),
            &target("1.4.0"),
            Policy::NewerOrChanged,
            &CompareKey::ChartVersion,
            Some(&changed(&[Part::Values])),
        );
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["differences"], serde_json::json!(["values"]));
        assert_eq!(json["compare"], "chart-version");
        assert!(json.get("needs_facts").is_none() && json.get("target_key").is_none());
    }
}
