//! `unlock`: lifts the store's enforcer, then restores a hard lock's record and removes
//! the lock labels, as `core::lock::plan` plans it (older records first, the latest last,
//! so an interrupted unlock leaves the lock in force and a re-run finishes it).

use crate::adapters::signals::Interrupts;
use crate::adapters::storage::Store;
use crate::core::lock::plan::{plan_unlock, unlock_shortfall};
use crate::error::{Error, Exit};
use crate::output;
use crate::plan::UnlockPlan;

use super::records::{records_of, Scope};
use super::session;

/// Runs `unlock`.
pub(super) async fn run(plan: UnlockPlan) -> Result<Exit, Error> {
    let session = session::connect(&plan.cluster, None).await?;
    let (release, namespace) = (&plan.release, &session.namespace);
    let scope = Scope {
        store: &session.store,
        release,
        interrupts: Interrupts::default(),
    };
    let planned = plan_unlock(&records_of(&scope.existing_release().await?));
    // The enforcement goes first: it refuses every record write while it is in place. An
    // unlock stopped after this step leaves a labels-only lock that a re-run removes.
    let latest = planned.records.last().map(|r| r.name.as_str());
    let lifted = session
        .lift_enforcement(release, planned.lift, latest)
        .await?;
    // No guarded-upgrade label anywhere: nothing to write, not even the mutex.
    let had_lock = if planned.had_lock {
        let interrupts = Interrupts::listen();
        let who = lifted.then(|| session.enforcer().who());
        session::serialized(
            &session,
            release,
            unlock_release(&session.store, release, plan.force, interrupts, who),
        )
        .await?
    } else {
        lifted
    };
    output::progress(&if had_lock {
        format!("unlocked: release {release:?} in {namespace:?}")
    } else {
        format!("unlocked: release {release:?} in {namespace:?} was not locked")
    });
    Ok(Exit::Success)
}

/// Removes the lock from every record, as planned now (under the mutex), and confirms it
/// by reading the records back; true when there was one. `lifted`: who no longer
/// enforces the lock because this run lifted it.
pub(super) async fn unlock_release(
    store: &Store,
    release: &str,
    force: bool,
    interrupts: Interrupts,
    lifted: Option<&str>,
) -> Result<bool, Error> {
    let scope = Scope {
        store,
        release,
        interrupts,
    };
    let headers = scope
        .existing_release()
        .await
        .map_err(|e| scope.after_lift(e, lifted))?;
    let planned = plan_unlock(&records_of(&headers));
    scope.execute(&planned, force, lifted).await?;
    // `unlocked:` is said only of what the records show (a 404 or a lost answer on the
    // last write must not pass for success).
    scope
        .confirm("unlock", "unlocked", unlock_shortfall)
        .await?;
    Ok(planned.had_lock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::state::testkit::{block_on, read, rev, store};
    use crate::commands::lock::lock_release;
    use crate::core::lock::{self, Lock, LockKind};
    use crate::core::release::ReleaseStatus as S;

    /// Hard-locks release `db` the way `lock --hard` does.
    fn hard_lock(s: &Store) {
        let spec = Lock {
            kind: LockKind::Hard,
            reason: None,
            by: None,
            since: 1,
            expires_at: None,
            pin: None,
            pin_key: None,
        };
        block_on(lock_release(s, "db", &spec, Interrupts::default(), None)).unwrap();
    }

    #[test]
    fn hard_lock_round_trip_restores_the_record() {
        let s = store(&[rev(1, S::Superseded, "1.0.0"), rev(2, S::Deployed, "1.1.0")]);
        hard_lock(&s);
        let view = read(&s);
        assert_eq!(view.state.latest.unwrap().status, S::PendingUpgrade);
        assert_eq!(view.state.last_deployed.unwrap().revision, 2);
        assert!(block_on(unlock_release(&s, "db", false, Interrupts::default(), None)).unwrap());
        let view = read(&s);
        assert_eq!(view.state.latest.unwrap().status, S::Deployed);
        assert!(view.state.lock.is_none());
        assert!(view
            .headers
            .iter()
            .all(|h| !h.labels.keys().any(|k| k.starts_with(lock::PREFIX))));
        assert!(!block_on(unlock_release(&s, "db", false, Interrupts::default(), None)).unwrap());
    }

    /// Found by the fault matrix: when the last write of a hard unlock (clearing the lock
    /// from the latest record) failed, the error said only "nothing was changed on it",
    /// although the run had restored that record's status; a conflict there was not
    /// re-read either.
    #[test]
    fn a_hard_unlock_failing_on_the_latest_record_says_what_it_did() {
        let s = store(&[rev(1, S::Superseded, "1.0.0"), rev(2, S::Deployed, "1.1.0")]);
        hard_lock(&s);
        let Store::Memory(m) = &s else { unreachable!() };
        m.forbid_after_rewrite("sh.helm.release.v1.db.v2");
        let err =
            block_on(unlock_release(&s, "db", false, Interrupts::default(), None)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "release \"db\" in namespace \"shared\": unlock stopped at the latest revision 2 \
             (updating sh.helm.release.v1.db.v2: the API server answered 403 Forbidden: writing \
             \"sh.helm.release.v1.db.v2\" is forbidden) after restoring its status and \
             unlocking the older records; the latest revision 2 still carries the lock, so it is \
             still in force. Run the same command again to complete it"
        );
        let view = read(&s);
        assert_eq!(view.state.latest.as_ref().unwrap().status, S::Deployed);
        assert!(view.state.lock.is_some());
        m.allow_writes();
        assert!(block_on(unlock_release(&s, "db", false, Interrupts::default(), None)).unwrap());
        assert!(read(&s).state.lock.is_none());
    }

    /// Issue 20: the last write of `unlock` (the latest record) answered 404 although the
    /// record was there was taken as "pruned meanwhile", and `unlock` claimed success with
    /// the lock still in force. The 404 is now checked by reading the record back (it is
    /// there: written again), and the claim by reading every record back.
    #[test]
    fn a_404_on_the_latest_record_is_read_back_not_taken_as_done() {
        let s = store(&[rev(1, S::Superseded, "1.0.0"), rev(2, S::Deployed, "1.1.0")]);
        let spec = Lock {
            kind: LockKind::Soft,
            reason: Some("freeze".into()),
            by: None,
            since: 1,
            expires_at: None,
            pin: None,
            pin_key: None,
        };
        block_on(lock_release(&s, "db", &spec, Interrupts::default(), None)).unwrap();
        let Store::Memory(m) = &s else { unreachable!() };
        m.answer_404_once("sh.helm.release.v1.db.v2");
        assert!(block_on(unlock_release(&s, "db", false, Interrupts::default(), None)).unwrap());
        let view = read(&s);
        assert!(view.state.lock.is_none());
        assert!(view
            .headers
            .iter()
            .all(|h| !h.labels.keys().any(|k| k.starts_with(lock::PREFIX))));
        // The same for an older record: a 404 there is read back too.
        block_on(lock_release(&s, "db", &spec, Interrupts::default(), None)).unwrap();
        m.answer_404_once("sh.helm.release.v1.db.v1");
        assert!(block_on(unlock_release(&s, "db", false, Interrupts::default(), None)).unwrap());
        assert!(read(&s)
            .headers
            .iter()
            .all(|h| !h.labels.keys().any(|k| k.starts_with(lock::PREFIX))));
    }

    /// Found by the fault matrix: a hard unlock that failed on an older record said "the
    /// latest revision still carries the lock" after it had already stripped the lock from
    /// the latest record, leaving the older ones locked (a rollback to them re-locked).
    #[test]
    fn an_interrupted_hard_unlock_leaves_the_lock_in_force_and_a_rerun_ends_it() {
        let s = store(&[
            rev(1, S::Superseded, "1.0.0"),
            rev(2, S::Superseded, "1.1.0"),
            rev(3, S::Deployed, "1.2.0"),
        ]);
        let spec = Lock {
            kind: LockKind::Hard,
            reason: Some("freeze".into()),
            by: None,
            since: 1,
            expires_at: None,
            pin: None,
            pin_key: None,
        };
        block_on(lock_release(&s, "db", &spec, Interrupts::default(), None)).unwrap();
        let Store::Memory(m) = &s else { unreachable!() };
        m.forbid_writes("sh.helm.release.v1.db.v2");
        let err =
            block_on(unlock_release(&s, "db", false, Interrupts::default(), None)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "release \"db\" in namespace \"shared\": unlock stopped after 1 of 2 older records \
             (updating sh.helm.release.v1.db.v2: the API server answered 403 Forbidden: writing \
             \"sh.helm.release.v1.db.v2\" is forbidden); the latest revision 3 still carries the \
             lock, so it is still in force. Run the same command again to complete it"
        );
        // As said: the status is restored, the lock still on the latest record.
        let view = read(&s);
        assert_eq!(view.state.latest.as_ref().unwrap().status, S::Deployed);
        assert!(view.state.lock.is_some());
        let latest = &view.headers[2];
        assert_eq!(
            latest.labels.get(lock::KEY_LOCK).map(String::as_str),
            Some("hard")
        );
        assert!(!latest.labels.contains_key(lock::KEY_HARD_STATUS));
        m.allow_writes();
        assert!(block_on(unlock_release(&s, "db", false, Interrupts::default(), None)).unwrap());
        let view = read(&s);
        assert_eq!(view.state.latest.unwrap().status, S::Deployed);
        assert!(view.state.lock.is_none());
        assert!(view
            .headers
            .iter()
            .all(|h| !h.labels.keys().any(|k| k.starts_with(lock::PREFIX))));
    }

    /// Issue 25: every failure after a write says which records carry the lock, whether it
    /// is in force, and that the same command completes it; and it does. Each write of
    /// `lock`, `lock --hard`, switching a hard lock to soft, and `unlock` of each, failed
    /// each way, with the enforcement lifted by the run or not.
    #[test]
    fn every_failure_after_a_write_says_what_it_left() {
        use crate::core::lock::plan::{lock_shortfall, unlock_shortfall};
        use crate::core::lock::KEY_LOCK;
        let spec = |kind: LockKind| Lock {
            kind,
            reason: Some("freeze".into()),
            by: Some("alice".into()),
            since: 1,
            expires_at: None,
            pin: None,
            pin_key: None,
        };
        let faults = [
            Some(500),
            Some(409),
            Some(403),
            Some(404),
            Some(410),
            Some(422),
            None,
        ];
        // (what, locked before: none/soft/hard, the command: Some(lock kind) or unlock)
        let cases: [(&str, Option<LockKind>, Option<LockKind>); 6] = [
            ("lock", None, Some(LockKind::Soft)),
            ("lock --hard", None, Some(LockKind::Hard)),
            (
                "lock over a hard lock",
                Some(LockKind::Hard),
                Some(LockKind::Soft),
            ),
            (
                "lock --hard over a soft lock",
                Some(LockKind::Soft),
                Some(LockKind::Hard),
            ),
            ("unlock of a hard lock", Some(LockKind::Hard), None),
            ("unlock of a soft lock", Some(LockKind::Soft), None),
        ];
        let mut stopped_after_a_write = 0;
        for (what, before, command) in cases {
            for fault in faults {
                for lifted in [None, Some("the cluster")] {
                    for at in 0..6 {
                        let s = store(&[
                            rev(1, S::Superseded, "1.0.0"),
                            rev(2, S::Superseded, "1.1.0"),
                            rev(3, S::Deployed, "1.2.0"),
                        ]);
                        if let Some(kind) = before {
                            let lock = spec(kind);
                            block_on(lock_release(&s, "db", &lock, Interrupts::default(), None))
                                .unwrap();
                        }
                        let Store::Memory(m) = &s else { unreachable!() };
                        m.fail_write(at, fault);
                        let run = |lifted| match command {
                            Some(kind) => block_on(lock_release(
                                &s,
                                "db",
                                &spec(kind),
                                Interrupts::default(),
                                lifted,
                            )),
                            None => block_on(unlock_release(
                                &s,
                                "db",
                                false,
                                Interrupts::default(),
                                lifted,
                            ))
                            .map(|_| ()),
                        };
                        let case =
                            format!("{what}, fault {fault:?} at write {at}, lifted {lifted:?}");
                        if let Err(e) = run(lifted) {
                            let text = e.to_string();
                            let records = read(&s).headers;
                            let carries = |r: &crate::adapters::storage::RecordHeader| {
                                r.labels.contains_key(KEY_LOCK)
                            };
                            let latest = records.last().unwrap();
                            let wrote = at > 0 || lifted.is_some();
                            if wrote {
                                stopped_after_a_write += 1;
                                assert!(
                                    text.ends_with("Run the same command again to complete it"),
                                    "{case}: {text}"
                                );
                                // Whether the lock is in force, as the records show.
                                let in_force = text.contains("so it is still in force")
                                    || text.contains("the lock is in force");
                                let not_in_force = text.contains("the lock is not in force");
                                assert!(in_force != not_in_force, "{case}: {text}");
                                assert_eq!(in_force, carries(latest), "{case}: {text}");
                                // Which records carry it, when said.
                                let carriers: Vec<String> = records
                                    .iter()
                                    .filter(|r| carries(r))
                                    .map(|r| r.revision.to_string())
                                    .collect();
                                if text.contains("carries the lock;")
                                    || text.contains("carry the lock;")
                                {
                                    let said = match carriers.len() {
                                        0 => "no revision carries the lock".to_string(),
                                        3 => format!(
                                            "every revision ({}) carries the lock",
                                            carriers.join(", ")
                                        ),
                                        1 => format!(
                                            "only revision {} carries the lock",
                                            carriers[0]
                                        ),
                                        _ => format!(
                                            "revisions {} carry the lock",
                                            carriers.join(", ")
                                        ),
                                    };
                                    assert!(
                                        text.contains(&said),
                                        "{case}: says not {said:?}: {text}"
                                    );
                                }
                                if let Some(who) = lifted {
                                    assert!(
                                        text.contains(&format!("{who} no longer enforces it")),
                                        "{case}: {text}"
                                    );
                                }
                            } else {
                                assert!(
                                    !text.contains("complete it"),
                                    "{case}: nothing was written: {text}"
                                );
                            }
                        }
                        // The same command, run again, finishes the job.
                        m.fail_write(usize::MAX, None);
                        run(None).unwrap_or_else(|e| panic!("{case}: the re-run failed: {e}"));
                        let records: Vec<_> = read(&s)
                            .headers
                            .iter()
                            .map(crate::commands::records::record_of)
                            .collect();
                        let short = match command {
                            Some(kind) => lock_shortfall(&records, &spec(kind)),
                            None => unlock_shortfall(&records),
                        };
                        assert_eq!(short, None, "{case}: after the re-run");
                    }
                }
            }
        }
        assert!(stopped_after_a_write > 100, "{stopped_after_a_write}");
    }
}
