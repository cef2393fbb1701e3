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
//! 5. Chart name change (refuse unless allowed), pin, then version policy. Before the
//!    versions are compared (policy `off` aside), when the deployed revision is helm's
//!    rollback (`Rollback to N`) from the revision right below it: if that one failed, a
//!    target of its chart and version is refused (`rolled-back`), so a pipeline run again
//!    neither re-applies a version that failed for ever nor claims it is deployed; if it
//!    had deployed (superseded: the rollback was asked for), a target newer than the
//!    deployed version but not newer than the one rolled back from is skipped
//!    (`rollback-kept`), so a pipeline run again does not undo the rollback.

use crate::core::release::{ReleaseStatus, ReleaseSummary};
use crate::core::version::{ChartVersion, Constraint};

mod types;

pub use types::*;

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
            rollback_rule: d
                .baseline
                .and_then(|b| rollback_rule(&input.state.rollback()?, b)),
            notes: d.notes.iter().map(|n| one_line(n)).collect(),
        },
    }
}

/// What the rollback rule of step 5 does to targets while the deployed revision `baseline`
/// is this rollback, said without a target (for `status`); `None` when no target is held.
fn rollback_rule(rollback: &Rollback, baseline: &ReleaseSummary) -> Option<String> {
    let from = rollback.from_version.as_deref()?;
    let chart = rollback
        .from_chart
        .as_deref()
        .map(|c| format!("{c} "))
        .unwrap_or_default();
    match rollback.kind {
        RollbackKind::AfterFailure => Some(format!(
            "a target of {chart}{from}, the version rolled back from, is refused (rolled-back, \
             exit 3): publish a fixed version, or re-apply it on purpose with \
             --min-version-policy off"
        )),
        RollbackKind::OnRequest => {
            let deployed = baseline.chart_version.as_deref()?;
            let kept = match (
                ChartVersion::parse_stored(deployed),
                ChartVersion::parse_stored(from),
            ) {
                (Ok(d), Ok(f)) => d < f,
                _ => deployed != from,
            };
            kept.then(|| {
                format!(
                    "a target of {chart}newer than {deployed} up to {from}, the version rolled \
                     back from, is skipped (rollback-kept): the rollback is kept until a version \
                     newer than {from}, or one applied on purpose with --min-version-policy off"
                )
            })
        }
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
    pin_lock: Option<&'i Lock>,
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
        if self.input.version_rule == VersionRule::Off {
            if let Some(rollback) = self.input.state.rollback() {
                self.notes.push(rollback.describe());
            }
            return self.proceed(
                Reason::PolicyOff,
                format!("{deployed_text} -> {target_text} (version policy off)"),
            );
        }
        if let Some(outcome) = self.check_rolled_back(baseline, target_input) {
            return outcome;
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
            std::cmp::Ordering::Equal if self.input.version_rule == VersionRule::NewerOrEqual => {
                self.proceed(
                    Reason::EqualReapply,
                    format!(
                    "{key_label}{deployed_text} -> {target_text} (re-apply, policy newer-or-equal)"
                ),
                )
            }
            std::cmp::Ordering::Equal if self.input.version_rule == VersionRule::NewerOrChanged => {
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

    /// A deployed revision that is helm's rollback from the revision right below it
    /// ([`Rollback`]): after a failure, a target of the chart and version rolled back from
    /// is refused (`rolled-back`); on request, a target newer than the deployed version but
    /// not newer than the one rolled back from is skipped (`rollback-kept`), since applying
    /// it would undo the rollback. Any other target decides as usual, with a note naming
    /// the rollback.
    fn check_rolled_back(&mut self, baseline: &ReleaseSummary, target: &Target) -> Option<Outcome> {
        let rollback = self.input.state.rollback()?;
        let Some(from_text) = rollback.from_version.as_deref() else {
            self.notes.push(rollback.describe());
            return None;
        };
        let same_chart = match (&target.chart_name, &rollback.from_chart) {
            (Some(want), Some(had)) => want == had,
            _ => true,
        };
        let from = ChartVersion::parse_stored(from_text).ok();
        let wanted = ChartVersion::parse(&target.version).ok();
        let same_version = match (&from, &wanted) {
            (Some(f), Some(t)) => f == t,
            _ => from_text == target.version,
        };
        let deployed_text = baseline.chart_version.as_deref().unwrap_or("");
        let applies = same_chart
            && match rollback.kind {
                RollbackKind::AfterFailure => same_version,
                RollbackKind::OnRequest => {
                    let deployed = ChartVersion::parse_stored(deployed_text).ok();
                    match (deployed, &from, &wanted) {
                        (Some(d), Some(f), Some(t)) => d < *t && t <= f,
                        // Not all versions: only the very version rolled back from.
                        _ => same_version && deployed_text != target.version,
                    }
                }
            };
        if !applies {
            self.notes.push(rollback.describe());
            return None;
        }
        Some(match rollback.kind {
            RollbackKind::AfterFailure => self.refuse(
                Reason::RolledBack,
                format!(
                    "{} was rolled back from chart version {from_text}: revision {} failed and \
                     revision {} rolled back to revision {} ({}); not applying {} again by \
                     itself. Publish a fixed chart version, or re-apply this one on purpose with \
                     --min-version-policy off",
                    self.subject(),
                    rollback.from_revision,
                    rollback.revision,
                    rollback.to_revision,
                    baseline
                        .chart_version
                        .as_deref()
                        .unwrap_or("unknown chart version"),
                    target.version
                ),
            ),
            RollbackKind::OnRequest => self.skip(
                Reason::RollbackKept,
                format!(
                    "{}, and target {} is not newer than {from_text}, so the rollback is kept. \
                     Publish a version newer than {from_text}, or apply this one on purpose \
                     with --min-version-policy off",
                    rollback.describe(),
                    target.version
                ),
            ),
        })
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

    fn lock_description(lock: &Lock) -> String {
        let mut s = format!(
            "{} lock by {}",
            lock.kind.as_str(),
            lock.by.as_deref().unwrap_or("unknown")
        );
        if let Some(since) = lock.since_text() {
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

    fn skip_locked(&self, lock: &Lock) -> Outcome {
        let what = match self.input.target {
            Some(t) => format!("target {} not applied", t.version),
            None => "upgrades are not applied".to_string(),
        };
        self.skip(
            Reason::Locked,
            format!("{what}: {}", Self::lock_description(lock)),
        )
    }

    fn refuse_expired_hard(&self, lock: &Lock) -> Outcome {
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
mod tests;
