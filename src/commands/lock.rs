//! `lock`: writes the lock onto every record of the release.

use crate::adapters::enforce::{Availability, Installed};
use crate::adapters::storage::{RecordHeader, ReleaseStore, Store};
use crate::cli::OutputFormat;
use crate::core::decision::{LockKind, LockState};
use crate::core::lock::{self, LockSpec};
use crate::core::time::{format_rfc3339, now_unix};
use crate::error::{Error, Exit};
use crate::output::{self, report::LockReport};
use crate::plan::LockPlan;

use super::interrupts::Interrupts;
use super::records::{needs_labels, Scope};
use super::session;

/// Runs `lock`.
pub(super) async fn run(plan: LockPlan) -> Result<Exit, Error> {
    let session = session::connect(&plan.cluster, None).await?;
    let mut spec = plan.spec;
    if spec.by.is_none() {
        spec.by = lock::default_by(session.user.as_deref());
    }
    // Already in place on every record: nothing to write, not even the mutex.
    let scope = Scope {
        store: &session.store,
        release: &plan.release,
        interrupts: Interrupts::default(),
    };
    let headers = scope.existing_release().await?;
    if let Some(latest) = headers.last() {
        refuse_pending(&scope, latest)?;
    }
    // Whether the store's enforcer can enforce a hard lock is known before anything is
    // written (`--enforce` stops here when it cannot).
    let enforcer = session.enforcer();
    let available = match spec.kind {
        LockKind::Hard => Some(enforcer.availability(&plan.release).await),
        _ => None,
    };
    if let (true, Some(Availability::Unavailable(why))) = (plan.enforce, &available) {
        return Err(scope.refused(format!(
            "--enforce: the hard lock cannot be enforced by {}: {why}; nothing changed \
             (without --enforce the lock is set, labels only)",
            enforcer.who()
        )));
    }
    let was_hard = headers
        .last()
        .is_some_and(|h| h.labels.get(lock::KEY_LOCK).map(String::as_str) == Some("hard"));
    let latest = headers.last().map(|h| h.name.clone()).unwrap_or_default();
    if !converged(&headers, &spec) {
        let interrupts = Interrupts::listen();
        session::serialized(&session, &plan.release, async {
            // An enforced lock refuses every record write: lift it first (the labels
            // still say hard; `install` below puts it back for a hard lock).
            if was_hard {
                session
                    .lift_enforcement(&plan.release, true, Some(&latest))
                    .await?;
            }
            lock_release(&session.store, &plan.release, &spec, interrupts).await
        })
        .await?;
    } else if was_hard && spec.kind != LockKind::Hard {
        session
            .lift_enforcement(&plan.release, true, Some(&latest))
            .await?;
    }
    let installed = match &available {
        Some(available) => Some(
            enforcer
                .install(&plan.release, &latest, &spec, available)
                .await,
        ),
        None => None,
    };
    if let (true, Some(Installed::NotEnforced { why })) = (plan.enforce, &installed) {
        return Err(scope.refused(format!(
            "--enforce: the hard lock is set (labels only) but {} does not enforce it: {why}. \
             Run the same command again, or `guarded-upgrade unlock {} -n {}`",
            enforcer.who(),
            plan.release,
            session.namespace
        )));
    }
    if plan.format == OutputFormat::Json {
        output::lock_json(&LockReport::new(&state_of(&spec), now_unix()));
    }
    output::progress(&locked_line(&plan.release, &session.namespace, &spec));
    let (release, namespace) = (&plan.release, &session.namespace);
    match installed {
        Some(Installed::Enforced { how, notes }) => {
            output::progress(&format!(
                "enforced: {} refuses changes to release {release:?} in {namespace:?} ({how})",
                enforcer.who()
            ));
            for note in notes {
                output::note(&note);
            }
        }
        Some(Installed::NotEnforced { why }) => output::warning(&format!(
            "the hard lock is {}; plain helm upgrade and install are refused (pending record), \
             but helm rollback, helm uninstall and {} are not",
            enforcer.not_enforced(&why),
            enforcer.bypass()
        )),
        None => {}
    }
    Ok(Exit::Success)
}

/// `locked: release "db" in "shared" (pin), pinned to 1.4.x, expires …: reason`.
fn locked_line(release: &str, namespace: &str, spec: &LockSpec) -> String {
    let mut line = format!(
        "locked: release {release:?} in {namespace:?} ({})",
        spec.kind.as_str()
    );
    if let Some(pin) = &spec.pin {
        line.push_str(&format!(", pinned to {pin}"));
        if let Some(key) = &spec.pin_key {
            line.push_str(&format!(" on {key}"));
        }
    }
    if let Some(t) = spec.expires_at {
        line.push_str(&format!(", expires {}", format_rfc3339(t)));
    }
    // An empty reason (`--reason ''`) adds nothing: no dangling `: `.
    if let Some(r) = spec.reason.as_deref().filter(|r| !r.is_empty()) {
        line.push_str(&format!(": {r}"));
    }
    line
}

fn state_of(spec: &LockSpec) -> LockState {
    LockState {
        kind: spec.kind,
        reason: spec.reason.clone(),
        by: spec.by.clone(),
        since: Some(format_rfc3339(spec.since)),
        expires_at: spec.expires_at,
        pin: spec.pin.clone(),
        pin_key: spec.pin_key.clone(),
        hard_original_status: None,
    }
}

/// A pending latest revision that is not our hard lock belongs to a running (or
/// interrupted) helm operation: locking it would race with helm.
fn refuse_pending(scope: &Scope, latest: &RecordHeader) -> Result<(), Error> {
    if latest.status.is_pending() && lock::hard_lock(&latest.labels).is_none() {
        return Err(scope.refused(format!(
            "the latest revision {} is {} (an install/upgrade/rollback is in progress or was \
             interrupted); nothing changed. Wait for it, or inspect with `helm history {} -n {}`",
            latest.revision,
            latest.status,
            scope.release,
            scope.store.namespace()
        )));
    }
    Ok(())
}

/// True when every record already carries `spec` (up to the time it was set) and a hard
/// lock is in force exactly when `spec` asks for one: locking again would write nothing.
fn converged(headers: &[RecordHeader], spec: &LockSpec) -> bool {
    let Some((latest, others)) = headers.split_last() else {
        return false;
    };
    let hard_in_force = lock::hard_lock(&latest.labels).is_some();
    let Some(existing) = lock::spec_from_labels(&latest.labels)
        .ok()
        .flatten()
        .filter(|l| l.same_as(spec))
    else {
        return false;
    };
    if hard_in_force != (spec.kind == LockKind::Hard) {
        return false;
    }
    let wanted = existing.labels();
    others.iter().all(|h| !needs_labels(h, &wanted))
}

/// Writes `spec` onto every record of the release: the latest first, then the others.
/// A re-run of an interrupted lock completes it (records already labelled are skipped).
pub(super) async fn lock_release(
    store: &Store,
    release: &str,
    spec: &LockSpec,
    interrupts: Interrupts,
) -> Result<(), Error> {
    let scope = Scope {
        store,
        release,
        interrupts: interrupts.clone(),
    };
    let headers = scope.existing_release().await?;
    let (latest, others) = headers.split_last().expect("existing_release has records");
    let current_hard = lock::hard_lock(&latest.labels).is_some();
    refuse_pending(&scope, latest)?;
    // Switching a hard lock off restores the record before the soft labels go on.
    if current_hard && spec.kind != LockKind::Hard {
        scope.release_hard_lock(latest, false, false).await?;
        return Box::pin(lock_release(store, release, spec, interrupts)).await;
    }
    // The same lock already on the latest record may be an interrupted run, or a rollback's
    // revision that carries the labels but not the hard status: its labels (with their
    // since-time) are what every record gets, so a re-run writes what the first run wrote
    // and the records agree with each other.
    let existing = lock::spec_from_labels(&latest.labels)
        .ok()
        .flatten()
        .filter(|l| l.same_as(spec));
    let same_lock = existing.is_some();
    let wanted = match existing {
        Some(existing) => existing.labels(),
        None => spec.labels(),
    };
    // A hard lock is only in force on a record it marked pending-upgrade: after a `helm
    // rollback` the new revision carries the labels but not the status, and re-running
    // `lock --hard` (as docs/locks.md advises) must mark it again.
    if spec.kind == LockKind::Hard && !current_hard {
        scope.hard_lock_record(latest, &wanted).await?;
    } else if !same_lock {
        scope.set_labels(latest, &wanted).await?;
    }
    let left = format!(
        "the lock is in force on the latest revision {}, but until every older record \
         carries it a rollback to one of them drops it",
        latest.revision
    );
    scope.label_records("lock", others, &wanted, &left).await?;
    // `locked:` is said only of what the records show.
    scope
        .confirm("lock", "locked as asked", |headers| {
            (!converged(headers, spec)).then(|| {
                let missing: Vec<String> = headers
                    .iter()
                    .filter(|h| {
                        lock::spec_from_labels(&h.labels)
                            .ok()
                            .flatten()
                            .is_none_or(|l| !l.same_as(spec))
                            || needs_labels(h, &spec.labels())
                    })
                    .map(|h| h.revision.to_string())
                    .collect();
                match (missing.is_empty(), headers.last()) {
                    (false, _) => format!("revisions {} without this lock", missing.join(", ")),
                    (true, Some(latest)) if spec.kind == LockKind::Hard => format!(
                        "the latest revision {} not marked pending-upgrade by the hard lock",
                        latest.revision
                    ),
                    (true, latest) => format!(
                        "the latest revision {} still marked pending-upgrade by a hard lock",
                        latest.map(|l| l.revision).unwrap_or_default()
                    ),
                }
            })
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::state::testkit::{block_on, rev, store};
    use crate::core::release::ReleaseStatus as S;

    fn spec(kind: LockKind, reason: &str) -> LockSpec {
        LockSpec {
            kind,
            reason: Some(reason.into()),
            by: Some("alice".into()),
            since: 1_700_000_000,
            expires_at: None,
            pin: None,
            pin_key: None,
        }
    }

    fn locked_revisions(store: &Store) -> Vec<(u64, Option<String>)> {
        let Store::Memory(m) = store else {
            unreachable!()
        };
        m.records()
            .values()
            .map(|r| {
                (
                    r.header.revision,
                    lock::spec_from_labels(&r.header.labels)
                        .unwrap()
                        .and_then(|s| s.reason),
                )
            })
            .collect()
    }

    #[test]
    fn a_rerun_completes_an_interrupted_lock() {
        let s = store(&[
            rev(1, S::Superseded, "1.0.0"),
            rev(2, S::Superseded, "1.1.0"),
            rev(3, S::Deployed, "1.2.0"),
        ]);
        // SIGTERM arrives while the latest record is written: the run stops before the
        // older records and says what it left.
        let err = block_on(lock_release(
            &s,
            "db",
            &spec(LockKind::Soft, "freeze"),
            Interrupts::raised(libc::SIGTERM),
        ))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "release \"db\" in namespace \"shared\": lock stopped after 0 of 2 older records \
             (interrupted by SIGTERM); the lock is in force on the latest revision 3, but until \
             every older record carries it a rollback to one of them drops it. Run the same \
             command again to complete it"
        );
        assert_eq!(
            locked_revisions(&s),
            [(1, None), (2, None), (3, Some("freeze".into()))]
        );
        let mut rerun = spec(LockKind::Soft, "freeze");
        rerun.since += 60;
        block_on(lock_release(&s, "db", &rerun, Interrupts::default())).unwrap();
        let all: Vec<_> = locked_revisions(&s).into_iter().map(|(_, r)| r).collect();
        assert_eq!(all, vec![Some("freeze".to_string()); 3]);
    }

    #[test]
    fn a_failed_older_record_names_release_and_namespace_once() {
        let s = store(&[
            rev(1, S::Superseded, "1.0.0"),
            rev(2, S::Superseded, "1.1.0"),
            rev(3, S::Deployed, "1.2.0"),
        ]);
        let Store::Memory(m) = &s else { unreachable!() };
        m.forbid_writes("sh.helm.release.v1.db.v1");
        let err = block_on(lock_release(
            &s,
            "db",
            &spec(LockKind::Soft, "freeze"),
            Interrupts::default(),
        ))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "release \"db\" in namespace \"shared\": lock stopped after 0 of 2 older records \
             (updating sh.helm.release.v1.db.v1: the API server answered 403 Forbidden: writing \
             \"sh.helm.release.v1.db.v1\" is forbidden); the lock is in force on the latest \
             revision 3, but until every older record carries it a rollback to one of them drops \
             it. Run the same command again to complete it"
        );
    }

    #[test]
    fn locked_line_is_whole() {
        let mut s = spec(LockKind::Pin, "freeze");
        s.pin = Some("1.4.x".into());
        s.expires_at = Some(1_700_003_600);
        assert_eq!(
            locked_line("db", "shared", &s),
            "locked: release \"db\" in \"shared\" (pin), pinned to 1.4.x, expires \
             2023-11-14T23:13:20Z: freeze"
        );
        s.reason = Some(String::new());
        assert_eq!(
            locked_line("db", "shared", &s),
            "locked: release \"db\" in \"shared\" (pin), pinned to 1.4.x, expires \
             2023-11-14T23:13:20Z"
        );
    }
}
