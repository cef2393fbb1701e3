//! `status`: the deployed release, its lock, the mutex, and what `upgrade` would do, from
//! the same rules `upgrade` uses ([`decision::gate`]).

use crate::adapters::mutex;
use crate::adapters::state::{self, ReleaseView};
use crate::adapters::storage::{ReleaseStore, Store};
use crate::core::decision::{self, Action, CompareKey, DecisionInput, Gate, VersionRule};
use crate::core::time::now_unix;
use crate::error::{Error, Exit};
use crate::output::{self, report::*};
use crate::plan::StatusPlan;

/// Runs `status`.
pub(super) async fn run(plan: StatusPlan) -> Result<Exit, Error> {
    let session = super::session::connect(&plan.cluster, None).await?;
    let now = now_unix();
    // The mutex Lease is read while the release is (on the one HTTP/2 connection), else
    // after it.
    let lease = || mutex::read(&session.client, &session.namespace, &plan.release);
    let reported = status_report(&session.store, &plan.release, now);
    let (report, lease_read) = session.side_by_side(reported, lease()).await;
    let mut report = report?;
    let namespace = session.namespace.clone();
    let record = report
        .latest
        .as_ref()
        .map(|l| crate::core::names::record_name(&plan.release, l.revision))
        .unwrap_or_default();
    if let Some(lock) = report.lock.as_mut() {
        session
            .describe_enforcement(
                Some(&namespace),
                &mut [(&namespace, &plan.release, &record, lock)],
            )
            .await;
    }
    // Informational: a status without Lease RBAC still shows the release, and says the
    // mutex is unknown rather than free.
    let lease_read = match lease_read {
        Some(read) => read,
        None => lease().await,
    };
    match lease_read.judge(now) {
        mutex::Observed::Free => {}
        mutex::Observed::Held(m) => report.mutex = Some(m),
        mutex::Observed::Unknown(e) => report.mutex_error = Some(e),
    }
    output::status(
        &report,
        session.store.kind(),
        &mutex::lease_name(&plan.release),
        now,
        plan.format,
    );
    Ok(Exit::Success)
}

/// Reads the release and says what `upgrade` would do with it (without the mutex).
pub(super) async fn status_report(
    store: &Store,
    release: &str,
    now: i64,
) -> Result<StatusReport, Error> {
    let namespace = store.namespace().to_string();
    let view: ReleaseView = state::read_release(store, release)
        .await
        .map_err(|source| Error::ReadRelease {
            release: release.to_string(),
            namespace: namespace.clone(),
            source: Box::new(source),
        })?;
    let Some(latest) = view.latest() else {
        return Err(Error::NotFound {
            release: release.to_string(),
            namespace,
            kind: store.kind(),
        });
    };
    let (upgrade, upgrade_message) = upgrade_verdict(release, &namespace, &view, now);
    Ok(StatusReport {
        release: release.to_string(),
        namespace,
        driver: store.driver_name(),
        deployed: view.state.last_deployed.as_ref().map(DeployedReport::from),
        latest: Some(LatestReport {
            revision: latest.revision,
            status: latest.status.as_str().to_string(),
        }),
        rollback: view.state.rollback(),
        lock: view.state.lock.as_ref().map(|l| LockReport::new(l, now)),
        upgrade,
        upgrade_message,
        mutex: None,
        mutex_error: None,
    })
}

/// What the decision's target-less gate says: `blocked`, `refuse`, `install` or
/// `upgrade-if-newer`, and the line explaining it (with the decision's notes).
fn upgrade_verdict(
    release: &str,
    namespace: &str,
    view: &ReleaseView,
    now: i64,
) -> (&'static str, String) {
    let gate = decision::gate(&DecisionInput {
        release,
        namespace,
        state: &view.state,
        target: None,
        version_rule: VersionRule::default(),
        allow_chart_change: false,
        now_unix: now,
        compare: &CompareKey::default(),
        facts: None,
    });
    // A pin names the key it constrains when that is not the chart version.
    let pin_text = |pin: String| match view.state.lock.as_ref().and_then(|l| l.pin_key.as_ref()) {
        Some(key) => format!("{pin} on {key}"),
        None => pin,
    };
    let with_notes = |line: String, notes: &[String]| {
        std::iter::once(line)
            .chain(notes.iter().map(|n| format!("note: {n}")))
            .collect::<Vec<_>>()
            .join("; ")
    };
    match gate {
        Gate::Decided(d) => {
            let verdict = match d.action {
                Action::Skip => "blocked",
                _ => "refuse",
            };
            (verdict, with_notes(d.message, &d.notes))
        }
        Gate::Install { pin, notes, .. } => (
            "install",
            with_notes(
                match pin.map(pin_text) {
                    Some(p) => format!("installs a target matching {p}"),
                    None => "installs any target".to_string(),
                },
                &notes,
            ),
        ),
        Gate::Upgrade {
            pin,
            rollback_rule,
            notes,
            ..
        } => {
            let line = match pin.map(pin_text) {
                Some(p) => format!("upgrades only to newer versions matching {p}"),
                None => "upgrades when the target chart version is newer".to_string(),
            };
            let line = match rollback_rule {
                Some(rule) => format!("{line}, but {rule}"),
                None => line,
            };
            ("upgrade-if-newer", with_notes(line, &notes))
        }
    }
}

#[cfg(test)]
mod tests {
    //! `status` and `check` must agree: for every state the reader can produce, the
    //! target-less verdict of `status` is what `check` decides for a newer target.
    use super::*;
    use crate::adapters::state::testkit::{block_on, read, rev, rollback, store, Rev};
    use crate::core::decision::{LockKind, Reason, Target};
    use crate::core::lock::Lock;
    use crate::core::release::ReleaseStatus as S;

    const NOW: i64 = 1_700_000_000;

    fn lock_labels(
        kind: LockKind,
        expires_at: Option<i64>,
        pin: Option<&str>,
    ) -> Vec<(String, String)> {
        Lock {
            kind,
            reason: Some("freeze".into()),
            by: Some("alice".into()),
            since: NOW - 60,
            expires_at,
            pin: pin.map(str::to_string),
            pin_key: None,
        }
        .labels()
        .into_iter()
        .collect()
    }

    fn hard<'a>(mut r: Rev<'a>, original: &str, expires_at: Option<i64>) -> Rev<'a> {
        r.labels = lock_labels(LockKind::Hard, expires_at, None);
        r.labels
            .push((crate::core::lock::KEY_HARD_STATUS.into(), original.into()));
        r
    }

    fn with_lock<'a>(
        mut r: Rev<'a>,
        kind: LockKind,
        expires_at: Option<i64>,
        pin: Option<&str>,
    ) -> Rev<'a> {
        r.labels = lock_labels(kind, expires_at, pin);
        r
    }

    #[test]
    fn status_and_check_agree_on_every_state() {
        let future = Some(NOW + 3600);
        let past = Some(NOW - 1);
        let cases: Vec<(&str, Vec<Rev>, &str, Action)> = vec![
            (
                "deployed",
                vec![rev(1, S::Deployed, "1.0.0")],
                "upgrade-if-newer",
                Action::Upgrade,
            ),
            (
                "uninstalled",
                vec![rev(1, S::Uninstalled, "1.0.0")],
                "install",
                Action::Install,
            ),
            (
                "failed only",
                vec![rev(1, S::Failed, "1.0.0")],
                "upgrade-if-newer",
                Action::Upgrade,
            ),
            (
                "failed after deployed",
                vec![rev(1, S::Deployed, "1.0.0"), rev(2, S::Failed, "1.1.0")],
                "upgrade-if-newer",
                Action::Upgrade,
            ),
            (
                "pending-install",
                vec![rev(1, S::PendingInstall, "1.0.0")],
                "refuse",
                Action::Refuse,
            ),
            (
                "pending-upgrade",
                vec![
                    rev(1, S::Deployed, "1.0.0"),
                    rev(2, S::PendingUpgrade, "1.1.0"),
                ],
                "refuse",
                Action::Refuse,
            ),
            (
                "pending-rollback",
                vec![
                    rev(1, S::Deployed, "1.0.0"),
                    rev(2, S::PendingRollback, "1.0.0"),
                ],
                "refuse",
                Action::Refuse,
            ),
            (
                "unknown",
                vec![rev(1, S::Unknown, "1.0.0")],
                "refuse",
                Action::Refuse,
            ),
            (
                "soft lock",
                vec![with_lock(
                    rev(1, S::Deployed, "1.0.0"),
                    LockKind::Soft,
                    future,
                    None,
                )],
                "blocked",
                Action::Skip,
            ),
            (
                "expired soft lock",
                vec![with_lock(
                    rev(1, S::Deployed, "1.0.0"),
                    LockKind::Soft,
                    past,
                    None,
                )],
                "upgrade-if-newer",
                Action::Upgrade,
            ),
            (
                "soft lock on an uninstalled release",
                vec![with_lock(
                    rev(1, S::Uninstalled, "1.0.0"),
                    LockKind::Soft,
                    None,
                    None,
                )],
                "blocked",
                Action::Skip,
            ),
            (
                "pin lock",
                vec![with_lock(
                    rev(1, S::Deployed, "1.0.0"),
                    LockKind::Pin,
                    None,
                    Some("1.x"),
                )],
                "upgrade-if-newer",
                Action::Upgrade,
            ),
            (
                "hard lock",
                vec![hard(rev(1, S::PendingUpgrade, "1.0.0"), "deployed", None)],
                "blocked",
                Action::Skip,
            ),
            (
                "expired hard lock still pending",
                vec![hard(rev(1, S::PendingUpgrade, "1.0.0"), "deployed", past)],
                "refuse",
                Action::Refuse,
            ),
            (
                "rolled back after a failure",
                vec![
                    rev(1, S::Superseded, "1.0.0"),
                    rev(2, S::Failed, "1.1.0"),
                    rollback(3, S::Deployed, "1.0.0", 1),
                ],
                "upgrade-if-newer",
                Action::Upgrade,
            ),
            (
                "rolled back on request",
                vec![
                    rev(1, S::Superseded, "1.0.0"),
                    rev(2, S::Superseded, "1.1.0"),
                    rollback(3, S::Deployed, "1.0.0", 1),
                ],
                "upgrade-if-newer",
                Action::Upgrade,
            ),
            (
                "hard lock after a rollback",
                vec![
                    hard(rev(1, S::Superseded, "1.0.0"), "deployed", None),
                    with_lock(rev(2, S::Deployed, "1.0.0"), LockKind::Hard, None, None),
                ],
                "blocked",
                Action::Skip,
            ),
        ];
        for (what, revs, verdict, action) in cases {
            let s = store(&revs);
            let view = read(&s);
            let (got, message) = upgrade_verdict("db", "shared", &view, NOW);
            assert_eq!(got, verdict, "{what}: status says {message}");
            let target = Target {
                chart_name: Some("postgresql".into()),
                version: "1.5.0".into(),
                note: None,
            };
            let d = decision::decide(&DecisionInput {
                release: "db",
                namespace: "shared",
                state: &view.state,
                target: Some(&target),
                version_rule: VersionRule::Newer,
                allow_chart_change: false,
                now_unix: NOW,
                compare: &CompareKey::default(),
                facts: None,
            });
            assert_eq!(d.action, action, "{what}: check decides {}", d.message);
            if matches!(verdict, "blocked" | "refuse") {
                // Decided without a target: the same rule, the same reason.
                let Gate::Decided(g) = decision::gate(&DecisionInput {
                    release: "db",
                    namespace: "shared",
                    state: &view.state,
                    target: None,
                    version_rule: VersionRule::Newer,
                    allow_chart_change: false,
                    now_unix: NOW,
                    compare: &CompareKey::default(),
                    facts: None,
                }) else {
                    panic!("{what}: gate not decided");
                };
                assert_eq!((g.action, g.reason), (d.action, d.reason), "{what}");
                assert_ne!(d.reason, Reason::Newer, "{what}");
            }
        }
    }

    /// `status` names a rollback from what the records show (after a failure, or asked
    /// for), and says what the next guarded run does with the version rolled back from;
    /// the JSON carries the same facts.
    #[test]
    fn status_names_a_rollback_and_what_the_next_run_does() {
        use crate::core::decision::{Rollback, RollbackKind};
        for (from, kind, rule) in [
            (
                S::Failed,
                RollbackKind::AfterFailure,
                "a target of postgresql 1.1.0, the version rolled back from, is refused \
                 (rolled-back, exit 3): publish a fixed version, or re-apply it on purpose \
                 with --min-version-policy off",
            ),
            (
                S::Superseded,
                RollbackKind::OnRequest,
                "a target of postgresql newer than 1.0.0 up to 1.1.0, the version rolled \
                 back from, is skipped (rollback-kept): the rollback is kept until a version \
                 newer than 1.1.0, or one applied on purpose with --min-version-policy off",
            ),
        ] {
            let s = store(&[
                rev(1, S::Superseded, "1.0.0"),
                rev(2, from, "1.1.0"),
                rollback(3, S::Deployed, "1.0.0", 1),
            ]);
            let report = block_on(status_report(&s, "db", NOW)).expect("status");
            assert_eq!(
                report.rollback,
                Some(Rollback {
                    kind,
                    revision: 3,
                    to_revision: 1,
                    from_revision: 2,
                    from_chart: Some("postgresql".into()),
                    from_version: Some("1.1.0".into()),
                })
            );
            assert_eq!(report.upgrade, "upgrade-if-newer");
            assert_eq!(
                report.upgrade_message,
                format!("upgrades when the target chart version is newer, but {rule}")
            );
            let json = serde_json::to_value(&report).expect("json");
            assert_eq!(
                json["rollback"]["kind"],
                serde_json::to_value(kind).unwrap()
            );
            assert_eq!(json["rollback"]["from_version"], "1.1.0");
        }
        let s = store(&[rev(1, S::Superseded, "1.0.0"), rev(2, S::Deployed, "1.1.0")]);
        let report = block_on(status_report(&s, "db", NOW)).expect("status");
        assert_eq!(report.rollback, None);
        assert_eq!(
            serde_json::to_value(&report).expect("json")["rollback"],
            serde_json::Value::Null
        );
    }
}
