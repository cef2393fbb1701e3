//! The decision table tests: every rule of [`super::decide`] and [`super::gate`].

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

fn lock(kind: LockKind, expires_at: Option<i64>, pin: Option<&str>) -> Lock {
    Lock {
        kind,
        reason: Some("db migration\nrunning".into()),
        by: Some("alice".into()),
        since: 1_699_920_000,
        expires_at,
        pin: pin.map(str::to_string),
        pin_key: None,
    }
}

fn target(version: &str) -> Target {
    Target {
        chart_name: Some("postgresql".into()),
        version: version.into(),
        note: None,
    }
}

fn run(state: &DeployedState, target: &Target, policy: VersionRule) -> Decision {
    decide(&DecisionInput {
        release: "db",
        namespace: "shared",
        state,
        target: Some(target),
        version_rule: policy,
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
    use Reason as R;
    use VersionRule::*;
    let cases: &[(&str, &str, VersionRule, Action, Reason)] = &[
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
    let d = run(&deployed("1.4.0"), &target("1.3.2"), VersionRule::Newer);
    assert_eq!(
        d.message,
        "skip: release \"db\" in \"shared\" is at 1.4.0 (revision 7); target 1.3.2 would be a downgrade"
    );
    let d = run(&deployed("1.4.0"), &target("1.5.0"), VersionRule::Newer);
    assert_eq!(d.message, "upgrade: \"db\" in \"shared\" 1.4.0 -> 1.5.0");
    let d = run(
        &DeployedState::default(),
        &target("1.0.0"),
        VersionRule::Newer,
    );
    assert_eq!(
        d.message,
        "install: \"db\" in \"shared\" 1.0.0 (not installed yet)"
    );
    let d = run(&deployed("1.4.0"), &target("1.4.0"), VersionRule::Newer);
    assert!(d.message.contains("is not newer"), "{}", d.message);
    let d = run(&deployed("banana"), &target("1.4.0"), VersionRule::Newer);
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
            rolled_back_from: None,
            lock: None,
        };
        let d = run(&state, &target(want), VersionRule::Newer);
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
        rolled_back_from: None,
        lock: None,
    };
    let d = run(&state, &target("1.5.0"), VersionRule::Newer);
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
    let d = run(&state, &target("1.5.0"), VersionRule::Off);
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
    let cases: Vec<(DeployedState, Lock, &str, VersionRule, Action, Reason, bool)> = vec![
        (
            deployed("1.4.0"),
            lock(Soft, None, None),
            "1.5.0",
            VersionRule::Newer,
            Action::Skip,
            Reason::Locked,
            false,
        ),
        (
            deployed("1.4.0"),
            lock(Soft, future, None),
            "1.5.0",
            VersionRule::Off,
            Action::Skip,
            Reason::Locked,
            false,
        ),
        (
            deployed("1.4.0"),
            lock(Soft, past, None),
            "1.5.0",
            VersionRule::Newer,
            Action::Upgrade,
            Reason::Newer,
            true,
        ),
        (
            deployed("1.4.0"),
            lock(Soft, past, None),
            "1.3.0",
            VersionRule::Newer,
            Action::Skip,
            Reason::Downgrade,
            true,
        ),
        (
            deployed("1.4.0"),
            lock(Soft, Some(NOW), None),
            "1.5.0",
            VersionRule::Newer,
            Action::Upgrade,
            Reason::Newer,
            true,
        ),
        (
            hard_latest.clone(),
            lock(Hard, None, None),
            "1.5.0",
            VersionRule::Newer,
            Action::Skip,
            Reason::Locked,
            false,
        ),
        (
            hard_latest.clone(),
            lock(Hard, future, None),
            "1.5.0",
            VersionRule::Off,
            Action::Skip,
            Reason::Locked,
            false,
        ),
        (
            hard_latest.clone(),
            lock(Hard, past, None),
            "1.5.0",
            VersionRule::Newer,
            Action::Refuse,
            Reason::Locked,
            false,
        ),
        // hard lock whose record was changed by someone: still honoured
        (
            deployed("1.4.0"),
            lock(Hard, None, None),
            "1.5.0",
            VersionRule::Newer,
            Action::Skip,
            Reason::Locked,
            true,
        ),
        (
            deployed("1.4.0"),
            lock(Hard, past, None),
            "1.5.0",
            VersionRule::Newer,
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
            VersionRule::Newer,
            Action::Refuse,
            Reason::Pending,
            true,
        ),
        // locks also hold off an install
        (
            DeployedState::default(),
            lock(Soft, None, None),
            "1.0.0",
            VersionRule::Newer,
            Action::Skip,
            Reason::Locked,
            false,
        ),
        (
            DeployedState::default(),
            lock(Soft, past, None),
            "1.0.0",
            VersionRule::Newer,
            Action::Install,
            Reason::NotInstalled,
            true,
        ),
        // pins
        (
            deployed("1.4.0"),
            lock(Pin, None, Some("~1.4")),
            "1.4.5",
            VersionRule::Newer,
            Action::Upgrade,
            Reason::Newer,
            false,
        ),
        (
            deployed("1.4.0"),
            lock(Pin, None, Some("~1.4")),
            "1.5.0",
            VersionRule::Newer,
            Action::Skip,
            Reason::Pinned,
            false,
        ),
        (
            deployed("1.4.0"),
            lock(Pin, None, Some("~1.4")),
            "1.5.0",
            VersionRule::Off,
            Action::Skip,
            Reason::Pinned,
            false,
        ),
        (
            deployed("1.4.0"),
            lock(Pin, None, Some("~1.4")),
            "1.4.0",
            VersionRule::Off,
            Action::Upgrade,
            Reason::PolicyOff,
            false,
        ),
        (
            deployed("1.4.0"),
            lock(Pin, None, Some("~1.4")),
            "1.3.0",
            VersionRule::Newer,
            Action::Skip,
            Reason::Pinned,
            false,
        ),
        (
            deployed("1.4.0"),
            lock(Pin, None, Some("~1.4")),
            "1.4.0",
            VersionRule::Newer,
            Action::Skip,
            Reason::NotNewer,
            false,
        ),
        (
            deployed("1.4.0"),
            lock(Pin, past, Some("~1.4")),
            "1.5.0",
            VersionRule::Newer,
            Action::Upgrade,
            Reason::Newer,
            true,
        ),
        (
            deployed("1.4.0"),
            lock(Pin, future, Some(">=1.4 <2")),
            "1.9.0",
            VersionRule::Newer,
            Action::Upgrade,
            Reason::Newer,
            false,
        ),
        (
            deployed("1.4.0"),
            lock(Pin, None, Some("not a pin")),
            "1.5.0",
            VersionRule::Off,
            Action::Refuse,
            Reason::InvalidVersion,
            false,
        ),
        (
            deployed("1.4.0"),
            lock(Pin, None, Some("~1.4")),
            "latest",
            VersionRule::Off,
            Action::Refuse,
            Reason::InvalidVersion,
            false,
        ),
        (
            deployed("1.4.0"),
            lock(Pin, None, None),
            "9.0.0",
            VersionRule::Newer,
            Action::Upgrade,
            Reason::Newer,
            false,
        ),
        (
            DeployedState::default(),
            lock(Pin, None, Some("1.x")),
            "2.0.0",
            VersionRule::Newer,
            Action::Skip,
            Reason::Pinned,
            false,
        ),
        (
            DeployedState::default(),
            lock(Pin, None, Some("1.x")),
            "1.2.0",
            VersionRule::Newer,
            Action::Install,
            Reason::NotInstalled,
            false,
        ),
    ];
    for (i, (mut state, lock, want, policy, action, reason, noted)) in cases.into_iter().enumerate()
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
    let d = run(&state, &target("1.5.0"), VersionRule::Newer);
    assert_eq!(
        d.message,
        "skip: release \"db\" in \"shared\" is at 1.4.0 (revision 7); target 1.5.0 not \
         applied: soft lock by alice since 2023-11-14T00:00:00Z until \
         2023-11-14T22:14:20Z: \"db migration\\nrunning\""
    );
    state.lock = Some(lock(LockKind::Soft, Some(NOW - 60), None));
    let d = run(&state, &target("1.5.0"), VersionRule::Newer);
    assert_eq!(
        d.notes,
        ["ignored expired lock set by alice (soft lock, expired at 2023-11-14T22:12:20Z)"]
    );
    state.latest = meta(7, ReleaseStatus::PendingUpgrade);
    state.lock = Some(lock(LockKind::Hard, Some(NOW - 60), None));
    let d = run(&state, &target("1.5.0"), VersionRule::Newer);
    assert!(
        d.message.contains("guarded-upgrade unlock db -n shared"),
        "{}",
        d.message
    );
    state.lock = Some(lock(LockKind::Pin, None, Some("~1.4")));
    state.latest = meta(7, ReleaseStatus::Deployed);
    let d = run(&state, &target("2.0.0"), VersionRule::Newer);
    assert!(
        d.message.contains("does not match the pin \"~1.4\""),
        "{}",
        d.message
    );
    assert!(d
        .message
        .starts_with("skip: release \"db\" in \"shared\" is at 1.4.0 (revision 7); target 2.0.0"));
    // A lock with no details still reads well.
    state.lock = Some(Lock {
        kind: LockKind::Soft,
        reason: None,
        by: None,
        since: 0,
        expires_at: None,
        pin: None,
        pin_key: None,
    });
    let d = run(&state, &target("2.0.0"), VersionRule::Newer);
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
    let d = run(&state, &t, VersionRule::Newer);
    check(&d, Action::Refuse, Reason::ChartChanged);
    assert!(d.message.contains("--allow-chart-change"), "{}", d.message);
    // Chart change is checked even with policy off.
    check(
        &run(&state, &t, VersionRule::Off),
        Action::Refuse,
        Reason::ChartChanged,
    );
    let allowed = decide(&DecisionInput {
        release: "db",
        namespace: "shared",
        state: &state,
        target: Some(&t),
        version_rule: VersionRule::Newer,
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
        version_rule: VersionRule::Newer,
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
        &run(&state, &t, VersionRule::Newer),
        Action::Upgrade,
        Reason::Newer,
    );
}

#[test]
fn target_note_is_kept() {
    let mut t = target("1.5.0");
    t.note = Some("--version 2.0.0 ignored for a local chart".into());
    let d = run(&deployed("1.4.0"), &t, VersionRule::Newer);
    assert_eq!(d.notes, ["--version 2.0.0 ignored for a local chart"]);
}

#[test]
fn serializes_kebab_case() {
    let d = run(&deployed("1.4.0"), &target("1.4.0"), VersionRule::Newer);
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
        serde_json::to_value(VersionRule::NewerOrEqual).unwrap(),
        "newer-or-equal"
    );
    assert_eq!(serde_json::to_value(LockKind::Pin).unwrap(), "pin");
}

#[test]
fn policy_parse() {
    for p in [
        VersionRule::Newer,
        VersionRule::NewerOrEqual,
        VersionRule::NewerOrChanged,
        VersionRule::Off,
    ] {
        assert_eq!(VersionRule::parse(p.as_str()), Ok(p));
        assert_eq!(p.to_string(), p.as_str());
    }
    let names: Vec<&str> = [
        VersionRule::Newer,
        VersionRule::NewerOrEqual,
        VersionRule::NewerOrChanged,
        VersionRule::Off,
    ]
    .iter()
    .map(VersionRule::as_str)
    .collect();
    assert_eq!(
        VersionRule::NAMES,
        names,
        "NAMES feeds help and completions"
    );
    assert_eq!(
        VersionRuleError("x".into()).to_string(),
        format!(
            "unknown version policy \"x\": use one of {}",
            VersionRule::NAMES.join(", ")
        )
    );
    assert_eq!(VersionRule::default(), VersionRule::Newer);
    let err = VersionRule::parse("Newer").unwrap_err().to_string();
    assert!(err.contains("newer-or-equal"), "{err}");
    assert!(VersionRule::parse("").is_err());
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
    policy: VersionRule,
    compare: &CompareKey,
    facts: Option<&ChangeFacts>,
) -> Decision {
    decide(&DecisionInput {
        release: "db",
        namespace: "shared",
        state,
        target: Some(target),
        version_rule: policy,
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
        rolled_back_from: None,
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
    for (i, (state, want, facts, action, reason, needs, diffs)) in cases.into_iter().enumerate() {
        let d = run_with(
            &state,
            &target(want),
            VersionRule::NewerOrChanged,
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
    for policy in [
        VersionRule::Newer,
        VersionRule::NewerOrEqual,
        VersionRule::Off,
    ] {
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
        VersionRule::NewerOrChanged,
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
        VersionRule::NewerOrChanged,
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
        VersionRule,
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
            VersionRule::Newer,
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
            VersionRule::Newer,
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
            VersionRule::Newer,
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
            VersionRule::Newer,
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
            VersionRule::Newer,
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
            VersionRule::NewerOrChanged,
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
            VersionRule::NewerOrChanged,
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
            VersionRule::NewerOrChanged,
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
            VersionRule::Newer,
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
            VersionRule::Newer,
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
            VersionRule::Newer,
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
            VersionRule::Newer,
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
            VersionRule::Off,
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
            VersionRule::Newer,
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
            VersionRule::Newer,
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
            VersionRule::Newer,
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
            VersionRule::Newer,
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
            VersionRule::Newer,
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
            VersionRule::NewerOrChanged,
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
            VersionRule::Newer,
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
    let pin = |key: Option<&str>| Lock {
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
            VersionRule::Newer,
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
        VersionRule::Newer,
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
        VersionRule::Newer,
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
    let pinned = Lock {
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
        VersionRule::parse("newer-or-changed"),
        Ok(VersionRule::NewerOrChanged)
    );
    assert_eq!(
        serde_json::to_value(Reason::Unchanged).unwrap(),
        "unchanged"
    );
    assert_eq!(serde_json::to_value(Reason::Changed).unwrap(), "changed");
    let d = run_with(
        &deployed("1.4.0"),
        &target("1.4.0"),
        VersionRule::NewerOrChanged,
        &CompareKey::ChartVersion,
        Some(&changed(&[Part::Values])),
    );
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(json["differences"], serde_json::json!(["values"]));
    assert_eq!(json["compare"], "chart-version");
    assert!(json.get("needs_facts").is_none() && json.get("target_key").is_none());
}

/// A failed upgrade helm rolled back (`--atomic`, `--rollback-on-failure`, or `helm
/// rollback` after a failure): a target of the failed version is refused — neither applied
/// again by itself on every run nor taken as deployed — while other targets decide as
/// usual, and policy `off` re-applies it on purpose. Read by the program's own reader.
#[test]
fn a_version_helm_rolled_back_from_is_not_applied_again() {
    use crate::adapters::state::testkit::{rev, rollback, state};
    use ReleaseStatus as S;
    let atomic = state(&[
        rev(1, S::Superseded, "1.0.0"),
        rev(2, S::Failed, "1.1.0"),
        rollback(3, S::Deployed, "1.0.0", 1),
    ]);
    let retried_again = state(&[
        rev(1, S::Superseded, "1.0.0"),
        rev(2, S::Failed, "1.1.0"),
        rollback(3, S::Deployed, "1.0.0", 1),
        rev(4, S::Failed, "1.1.0"),
    ]);
    let good_one_rolled_back = state(&[
        rev(1, S::Superseded, "1.0.0"),
        rev(2, S::Superseded, "1.1.0"),
        rollback(3, S::Deployed, "1.0.0", 1),
    ]);
    let failed_not_rolled_back = state(&[rev(1, S::Deployed, "1.0.0"), rev(2, S::Failed, "1.1.0")]);
    let cases = [
        (
            &atomic,
            "1.1.0",
            VersionRule::Newer,
            Action::Refuse,
            Reason::RolledBack,
        ),
        (
            &atomic,
            "v1.1.0",
            VersionRule::Newer,
            Action::Refuse,
            Reason::RolledBack,
        ),
        (
            &atomic,
            "1.1.0+rebuilt",
            VersionRule::Newer,
            Action::Refuse,
            Reason::RolledBack,
        ),
        (
            &atomic,
            "1.1.0",
            VersionRule::NewerOrEqual,
            Action::Refuse,
            Reason::RolledBack,
        ),
        (
            &atomic,
            "1.1.1",
            VersionRule::Newer,
            Action::Upgrade,
            Reason::Newer,
        ),
        (
            &atomic,
            "1.0.0",
            VersionRule::Newer,
            Action::Skip,
            Reason::NotNewer,
        ),
        (
            &atomic,
            "0.9.0",
            VersionRule::Newer,
            Action::Skip,
            Reason::Downgrade,
        ),
        (
            &atomic,
            "1.1.0",
            VersionRule::Off,
            Action::Upgrade,
            Reason::PolicyOff,
        ),
        (
            &retried_again,
            "1.1.0",
            VersionRule::Newer,
            Action::Refuse,
            Reason::RolledBack,
        ),
        (
            &retried_again,
            "1.2.0",
            VersionRule::Newer,
            Action::Upgrade,
            Reason::Newer,
        ),
        // A rollback of a revision that had deployed was asked for: kept, not refused
        // (`a_rollback_asked_for_is_kept`).
        (
            &good_one_rolled_back,
            "1.1.0",
            VersionRule::Newer,
            Action::Skip,
            Reason::RollbackKept,
        ),
        (
            &failed_not_rolled_back,
            "1.1.0",
            VersionRule::Newer,
            Action::Upgrade,
            Reason::Newer,
        ),
    ];
    for (i, (state, want, policy, action, reason)) in cases.into_iter().enumerate() {
        let d = run(state, &target(want), policy);
        assert_eq!((d.action, d.reason), (action, reason), "case {i}: {d:#?}");
        check(&d, action, reason);
    }
    let d = run(&atomic, &target("1.1.0"), VersionRule::Newer);
    assert_eq!(
        d.message,
        "refused: release \"db\" in \"shared\" was rolled back from chart version 1.1.0: \
         revision 2 failed and revision 3 rolled back to revision 1 (1.0.0); not applying \
         1.1.0 again by itself. Publish a fixed chart version, or re-apply this one on \
         purpose with --min-version-policy off"
    );
    assert_eq!(
        (d.deployed_version.as_deref(), d.deployed_revision),
        (Some("1.0.0"), Some(3))
    );
    // Another chart of the same version is not the one that failed.
    let mut other = target("1.1.0");
    other.chart_name = Some("mysql".into());
    let d = decide(&DecisionInput {
        release: "db",
        namespace: "shared",
        state: &atomic,
        target: Some(&other),
        version_rule: VersionRule::Newer,
        allow_chart_change: true,
        now_unix: NOW,
        compare: &CompareKey::ChartVersion,
        facts: None,
    });
    check(&d, Action::Upgrade, Reason::Newer);
}

/// `helm rollback` of a revision that had deployed (it is `superseded` below the rollback,
/// not `failed`): the rollback was asked for, and a pipeline run again does not undo it. A
/// target newer than the deployed version but not newer than the one rolled back from is
/// skipped (`rollback-kept`, exit 0); newer targets upgrade, older or equal ones decide as
/// usual, policy `off` applies anything on purpose. Read by the program's own reader.
#[test]
fn a_rollback_asked_for_is_kept() {
    use crate::adapters::state::testkit::{rev, rollback, state};
    use Action::*;
    use Reason as R;
    use ReleaseStatus as S;
    use VersionRule::*;
    let on_request = state(&[
        rev(1, S::Superseded, "1.0.0"),
        rev(2, S::Superseded, "1.1.0"),
        rollback(3, S::Deployed, "1.0.0", 1),
    ]);
    let two_back = state(&[
        rev(1, S::Superseded, "1.0.0"),
        rev(2, S::Superseded, "1.1.0"),
        rev(3, S::Superseded, "1.2.0"),
        rollback(4, S::Deployed, "1.0.0", 1),
    ]);
    // Rolled back, then forward again to revision 2: nothing is held back.
    let forward_again = state(&[
        rev(1, S::Superseded, "1.0.0"),
        rev(2, S::Superseded, "1.1.0"),
        rollback(3, S::Superseded, "1.0.0", 1),
        rollback(4, S::Deployed, "1.1.0", 2),
    ]);
    // `helm rollback db 2` onto revision 2 itself (a redeploy): same version both sides.
    let redeploy = state(&[
        rev(1, S::Superseded, "1.0.0"),
        rev(2, S::Superseded, "1.1.0"),
        rollback(3, S::Deployed, "1.1.0", 2),
    ]);
    // Someone tried the version again with plain helm, and it failed.
    let failed_above = state(&[
        rev(1, S::Superseded, "1.0.0"),
        rev(2, S::Superseded, "1.1.0"),
        rollback(3, S::Deployed, "1.0.0", 1),
        rev(4, S::Failed, "1.1.0"),
    ]);
    // An interrupted upgrade recovered with `helm rollback`, as `pending` advises: helm
    // leaves the pending revision as it was, and the next run applies the target again.
    let pending_below = state(&[
        rev(1, S::Superseded, "1.0.0"),
        rev(2, S::PendingUpgrade, "1.1.0"),
        rollback(3, S::Deployed, "1.0.0", 1),
    ]);
    let cases = [
        (&on_request, "1.1.0", Newer, Skip, R::RollbackKept),
        (&on_request, "v1.1", Newer, Skip, R::RollbackKept),
        (&on_request, "1.1.0+rebuilt", Newer, Skip, R::RollbackKept),
        (&on_request, "1.0.5", Newer, Skip, R::RollbackKept),
        (&on_request, "1.1.0-rc.1", Newer, Skip, R::RollbackKept),
        (&on_request, "1.1.0", NewerOrEqual, Skip, R::RollbackKept),
        (&on_request, "1.1.0", NewerOrChanged, Skip, R::RollbackKept),
        (&on_request, "1.1.1", Newer, Upgrade, R::Newer),
        (&on_request, "1.0.0", Newer, Skip, R::NotNewer),
        (&on_request, "1.0.0", NewerOrEqual, Upgrade, R::EqualReapply),
        (&on_request, "0.9.0", Newer, Skip, R::Downgrade),
        (&on_request, "1.1.0", Off, Upgrade, R::PolicyOff),
        (&two_back, "1.2.0", Newer, Skip, R::RollbackKept),
        (&two_back, "1.1.0", Newer, Skip, R::RollbackKept),
        (&two_back, "1.2.1", Newer, Upgrade, R::Newer),
        (&forward_again, "1.1.0", Newer, Skip, R::NotNewer),
        (
            &forward_again,
            "1.1.0",
            NewerOrEqual,
            Upgrade,
            R::EqualReapply,
        ),
        (&forward_again, "1.0.5", Newer, Skip, R::Downgrade),
        (&forward_again, "1.2.0", Newer, Upgrade, R::Newer),
        (&redeploy, "1.1.0", NewerOrEqual, Upgrade, R::EqualReapply),
        (&redeploy, "1.2.0", Newer, Upgrade, R::Newer),
        (&failed_above, "1.1.0", Newer, Skip, R::RollbackKept),
        (&failed_above, "1.2.0", Newer, Upgrade, R::Newer),
        (&pending_below, "1.1.0", Newer, Upgrade, R::Newer),
    ];
    for (i, (state, want, policy, action, reason)) in cases.into_iter().enumerate() {
        let d = run(state, &target(want), policy);
        assert_eq!((d.action, d.reason), (action, reason), "case {i}: {d:#?}");
        check(&d, action, reason);
        assert!(!d.needs_facts, "case {i}: {d:#?}");
    }

    let kept = "revision 3 is a rollback to revision 1 of revision 2 (postgresql 1.1.0), \
                which had deployed: asked for (helm rollback), not forced by a failure";
    let d = run(&on_request, &target("1.1.0"), Newer);
    assert_eq!(
        d.message,
        format!(
            "skip: release \"db\" in \"shared\" is at 1.0.0 (revision 3); {kept}, and target \
             1.1.0 is not newer than 1.1.0, so the rollback is kept. Publish a version newer \
             than 1.1.0, or apply this one on purpose with --min-version-policy off"
        )
    );
    assert_eq!(d.notes, Vec::<String>::new());
    assert_eq!(
        (d.deployed_version.as_deref(), d.deployed_revision),
        (Some("1.0.0"), Some(3))
    );
    // A target the rollback does not hold back decides as usual, naming the rollback.
    for (want, policy) in [("1.1.1", Newer), ("1.1.0", Off), ("1.0.0", Newer)] {
        let d = run(&on_request, &target(want), policy);
        assert_eq!(d.notes, vec![kept.to_string()], "{want}: {d:#?}");
    }
    // Another chart of the same version is not the one rolled back from.
    let mut other = target("1.1.0");
    other.chart_name = Some("mysql".into());
    let d = decide(&DecisionInput {
        release: "db",
        namespace: "shared",
        state: &on_request,
        target: Some(&other),
        version_rule: Newer,
        allow_chart_change: true,
        now_unix: NOW,
        compare: &CompareKey::ChartVersion,
        facts: None,
    });
    check(&d, Upgrade, R::Newer);
}

/// What the rollback rule holds back, said without a target (`status`), for both kinds of
/// rollback; nothing when it holds nothing back.
#[test]
fn the_gate_says_which_targets_a_rollback_holds_back() {
    use crate::adapters::state::testkit::{rev, rollback, state};
    use ReleaseStatus as S;
    let rule = |state: &DeployedState| match gate(&DecisionInput {
        release: "db",
        namespace: "shared",
        state,
        target: None,
        version_rule: VersionRule::Newer,
        allow_chart_change: false,
        now_unix: NOW,
        compare: &CompareKey::ChartVersion,
        facts: None,
    }) {
        Gate::Upgrade { rollback_rule, .. } => rollback_rule,
        other => panic!("{other:?}"),
    };
    let after_failure = state(&[
        rev(1, S::Superseded, "1.0.0"),
        rev(2, S::Failed, "1.1.0"),
        rollback(3, S::Deployed, "1.0.0", 1),
    ]);
    assert_eq!(
        rule(&after_failure).as_deref(),
        Some(
            "a target of postgresql 1.1.0, the version rolled back from, is refused \
             (rolled-back, exit 3): publish a fixed version, or re-apply it on purpose with \
             --min-version-policy off"
        )
    );
    let on_request = state(&[
        rev(1, S::Superseded, "1.0.0"),
        rev(2, S::Superseded, "1.1.0"),
        rollback(3, S::Deployed, "1.0.0", 1),
    ]);
    assert_eq!(
        rule(&on_request).as_deref(),
        Some(
            "a target of postgresql newer than 1.0.0 up to 1.1.0, the version rolled back \
             from, is skipped (rollback-kept): the rollback is kept until a version newer \
             than 1.1.0, or one applied on purpose with --min-version-policy off"
        )
    );
    for quiet in [
        state(&[
            rev(1, S::Superseded, "1.0.0"),
            rev(2, S::Superseded, "1.1.0"),
            rollback(3, S::Deployed, "1.1.0", 2),
        ]),
        state(&[rev(1, S::Superseded, "1.0.0"), rev(2, S::Deployed, "1.1.0")]),
    ] {
        assert_eq!(rule(&quiet), None);
    }
}
