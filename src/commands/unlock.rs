//! `unlock`: restores a hard lock's record, then removes the lock labels (older records
//! first, the latest last, so an interrupted unlock leaves the lock in force and a re-run
//! finishes it).

use std::collections::BTreeMap;

use crate::adapters::storage::Store;
use crate::core::lock;
use crate::core::release::ReleaseStatus;
use crate::error::{Error, Exit};
use crate::output;
use crate::plan::UnlockPlan;

use super::interrupts::Interrupts;
use super::records::Scope;
use super::session;

/// Runs `unlock`.
pub(super) async fn run(plan: UnlockPlan) -> Result<Exit, Error> {
    let session = session::connect(&plan.cluster, None).await?;
    // No guarded-upgrade label anywhere: nothing to write, not even the mutex.
    let scope = Scope {
        store: &session.store,
        release: &plan.release,
        interrupts: Interrupts::default(),
    };
    let headers = scope.existing_release().await?;
    // The cluster's enforcement goes first: the policy refuses every record write while
    // it is in place. An unlock stopped after this step leaves a labels-only lock that a
    // re-run removes.
    let hard = headers
        .last()
        .is_some_and(|h| h.labels.get(lock::KEY_LOCK).map(String::as_str) == Some("hard"));
    let latest = headers.last().map(|h| h.name.as_str());
    let lifted = session
        .lift_enforcement(&plan.release, hard, latest)
        .await?;
    let had_lock = if headers
        .iter()
        .any(|h| h.labels.keys().any(|k| k.starts_with(lock::PREFIX)))
    {
        let interrupts = Interrupts::listen();
        session::serialized(
            &session,
            &plan.release,
            unlock_release(&session.store, &plan.release, plan.force, interrupts),
        )
        .await?
    } else {
        lifted
    };
    let release = &plan.release;
    let namespace = &session.namespace;
    output::progress(&if had_lock {
        format!("unlocked: release {release:?} in {namespace:?}")
    } else {
        format!("unlocked: release {release:?} in {namespace:?} was not locked")
    });
    Ok(Exit::Success)
}

/// Removes the lock from every record; true when there was one.
pub(super) async fn unlock_release(
    store: &Store,
    release: &str,
    force: bool,
    interrupts: Interrupts,
) -> Result<bool, Error> {
    let scope = Scope {
        store,
        release,
        interrupts,
    };
    let headers = scope.existing_release().await?;
    // Restore every record a hard lock marked (normally only the latest one).
    let mut had_lock = false;
    let mut restored = false;
    for (i, header) in headers.iter().enumerate().rev() {
        if lock::hard_lock(&header.labels).is_some() {
            had_lock = true;
            restored = true;
            let superseded_since = headers[i + 1..].iter().any(|h| {
                let status = lock::hard_lock(&h.labels)
                    .map(ReleaseStatus::parse)
                    .unwrap_or_else(|| h.status.clone());
                matches!(status, ReleaseStatus::Deployed | ReleaseStatus::Superseded)
            });
            scope
                .release_hard_lock(header, force, superseded_since)
                .await?;
        }
    }
    let headers = scope.existing_release().await?;
    had_lock |= headers
        .iter()
        .any(|h| h.labels.keys().any(|k| k.starts_with(lock::PREFIX)));
    let (latest, others) = headers.split_last().expect("existing_release has records");
    let none = BTreeMap::new();
    let left = format!(
        "the latest revision {} still carries the lock, so it is still in force",
        latest.revision
    );
    scope.label_records("unlock", others, &none, &left).await?;
    // The latest record last; a conflict there is re-read and retried like the others.
    if let Err(e) = scope.label_record(latest, &none).await {
        if !restored
            || e.to_string()
                .contains("whether the change was made is not known")
        {
            return Err(e);
        }
        // The run already changed the record (status restored): say so, not only why
        // the last write failed.
        return Err(scope.refused(format!(
            "unlock stopped at the latest revision {} ({}) after restoring its status and \
             unlocking the older records; {left}. Run the same command again to complete it",
            latest.revision,
            scope.unscoped(&e)
        )));
    }
    // `unlocked:` is said only of what the records show (a 404 or a lost answer on the
    // last write must not pass for success).
    scope
        .confirm("unlock", "unlocked", |headers| {
            let locked: Vec<String> = headers
                .iter()
                .filter(|h| h.labels.keys().any(|k| k.starts_with(lock::PREFIX)))
                .map(|h| h.revision.to_string())
                .collect();
            (!locked.is_empty())
                .then(|| format!("revisions {} still carrying the lock", locked.join(", ")))
        })
        .await?;
    Ok(had_lock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::state::testkit::{block_on, read, rev, store};
    use crate::commands::lock::lock_release;
    use crate::core::decision::LockKind;
    use crate::core::lock::LockSpec;
    use crate::core::release::ReleaseStatus as S;

    /// Hard-locks release `db` the way `lock --hard` does.
    fn hard_lock(s: &Store) {
        let spec = LockSpec {
            kind: LockKind::Hard,
            reason: None,
            by: None,
            since: 1,
            expires_at: None,
            pin: None,
            pin_key: None,
        };
        block_on(lock_release(s, "db", &spec, Interrupts::default())).unwrap();
    }

    #[test]
    fn hard_lock_round_trip_restores_the_record() {
        let s = store(&[rev(1, S::Superseded, "1.0.0"), rev(2, S::Deployed, "1.1.0")]);
        hard_lock(&s);
        let view = read(&s);
        assert_eq!(view.state.latest.unwrap().status, S::PendingUpgrade);
        assert_eq!(view.state.last_deployed.unwrap().revision, 2);
        assert!(block_on(unlock_release(&s, "db", false, Interrupts::default())).unwrap());
        let view = read(&s);
        assert_eq!(view.state.latest.unwrap().status, S::Deployed);
        assert!(view.state.lock.is_none());
        assert!(view
            .headers
            .iter()
            .all(|h| !h.labels.keys().any(|k| k.starts_with(lock::PREFIX))));
        assert!(!block_on(unlock_release(&s, "db", false, Interrupts::default())).unwrap());
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
        let err = block_on(unlock_release(&s, "db", false, Interrupts::default())).unwrap_err();
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
        assert!(block_on(unlock_release(&s, "db", false, Interrupts::default())).unwrap());
        assert!(read(&s).state.lock.is_none());
    }

    /// Issue 20: the last write of `unlock` (the latest record) answered 404 although the
    /// record was there was taken as "pruned meanwhile", and `unlock` claimed success with
    /// the lock still in force. The 404 is now checked by reading the record back (it is
    /// there: written again), and the claim by reading every record back.
    #[test]
    fn a_404_on_the_latest_record_is_read_back_not_taken_as_done() {
        let s = store(&[rev(1, S::Superseded, "1.0.0"), rev(2, S::Deployed, "1.1.0")]);
        let spec = LockSpec {
            kind: LockKind::Soft,
            reason: Some("freeze".into()),
            by: None,
            since: 1,
            expires_at: None,
            pin: None,
            pin_key: None,
        };
        block_on(lock_release(&s, "db", &spec, Interrupts::default())).unwrap();
        let Store::Memory(m) = &s else { unreachable!() };
        m.answer_404_once("sh.helm.release.v1.db.v2");
        assert!(block_on(unlock_release(&s, "db", false, Interrupts::default())).unwrap());
        let view = read(&s);
        assert!(view.state.lock.is_none());
        assert!(view
            .headers
            .iter()
            .all(|h| !h.labels.keys().any(|k| k.starts_with(lock::PREFIX))));
        // The same for an older record: a 404 there is read back too.
        block_on(lock_release(&s, "db", &spec, Interrupts::default())).unwrap();
        m.answer_404_once("sh.helm.release.v1.db.v1");
        assert!(block_on(unlock_release(&s, "db", false, Interrupts::default())).unwrap());
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
        let spec = LockSpec {
            kind: LockKind::Hard,
            reason: Some("freeze".into()),
            by: None,
            since: 1,
            expires_at: None,
            pin: None,
            pin_key: None,
        };
        block_on(lock_release(&s, "db", &spec, Interrupts::default())).unwrap();
        let Store::Memory(m) = &s else { unreachable!() };
        m.forbid_writes("sh.helm.release.v1.db.v2");
        let err = block_on(unlock_release(&s, "db", false, Interrupts::default())).unwrap_err();
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
        assert!(block_on(unlock_release(&s, "db", false, Interrupts::default())).unwrap());
        let view = read(&s);
        assert_eq!(view.state.latest.unwrap().status, S::Deployed);
        assert!(view.state.lock.is_none());
        assert!(view
            .headers
            .iter()
            .all(|h| !h.labels.keys().any(|k| k.starts_with(lock::PREFIX))));
    }
}
