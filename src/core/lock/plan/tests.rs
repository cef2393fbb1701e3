//! The planners' table: every request (soft, pin, hard lock; unlock) × every record state a
//! release can be in (unlocked, locked each way, each lock interrupted half-way, a
//! rollback's revision, a helm operation pending) → the writes, in order; then, for every
//! row, the command stopped before each of its writes and run again: the re-run plans the
//! rest and ends where the uninterrupted run ends.

use std::collections::BTreeMap;

use super::*;
use crate::core::lock::{Lock, LockKind};
use crate::core::release::ReleaseStatus as S;

fn lock(kind: LockKind) -> Lock {
    Lock {
        kind,
        reason: Some("freeze".into()),
        by: Some("alice".into()),
        since: 1_700_000_000,
        expires_at: None,
        pin: (kind == LockKind::Pin).then(|| "1.x".to_string()),
        pin_key: None,
    }
}

fn record(revision: u64, status: S) -> Record {
    let mut labels = BTreeMap::new();
    labels.insert("status".to_string(), status.as_str().to_string());
    Record {
        name: format!("sh.helm.release.v1.db.v{revision}"),
        revision,
        status,
        labels,
    }
}

/// Three revisions, the latest deployed: what `helm upgrade` twice leaves.
fn plain() -> Vec<Record> {
    vec![
        record(1, S::Superseded),
        record(2, S::Superseded),
        record(3, S::Deployed),
    ]
}

/// `records` with `write` applied to the revisions named.
fn with(mut records: Vec<Record>, writes: &[Write]) -> Vec<Record> {
    for w in writes {
        apply(&mut records, w);
    }
    records
}

fn labels_write(revision: u64, lock: &Lock) -> Write {
    Write::Labels {
        record: format!("sh.helm.release.v1.db.v{revision}"),
        revision,
        labels: lock.labels(),
        on_conflict: OnConflict::Reread,
    }
}

fn hard_write(revision: u64, lock: &Lock) -> Write {
    Write::HardLock {
        record: format!("sh.helm.release.v1.db.v{revision}"),
        revision,
        labels: lock.labels(),
    }
}

fn restore(revision: u64) -> Write {
    Write::Restore {
        record: format!("sh.helm.release.v1.db.v{revision}"),
        revision,
        superseded_since: false,
    }
}

/// The record states of the table, by name.
fn states() -> Vec<(&'static str, Vec<Record>)> {
    let soft = lock(LockKind::Soft);
    let hard = lock(LockKind::Hard);
    let pin = lock(LockKind::Pin);
    let all = |w: fn(u64, &Lock) -> Write, l: &Lock| -> Vec<Write> {
        vec![w(3, l), labels_write(1, l), labels_write(2, l)]
    };
    let mut pending = plain();
    pending[2] = record(3, S::PendingUpgrade);
    vec![
        ("unlocked", plain()),
        (
            "soft on every record",
            with(plain(), &all(labels_write, &soft)),
        ),
        (
            "pin on every record",
            with(plain(), &all(labels_write, &pin)),
        ),
        (
            "hard on every record",
            with(plain(), &all(hard_write, &hard)),
        ),
        // `lock` stopped after the latest record.
        (
            "soft on the latest only",
            with(plain(), &[labels_write(3, &soft)]),
        ),
        (
            "hard on the latest only",
            with(plain(), &[hard_write(3, &hard)]),
        ),
        // `unlock` stopped after restoring the status / after the older records; a
        // rollback's new revision carrying the labels without the pending status.
        (
            "hard labels, status restored",
            with(
                plain(),
                &[all(hard_write, &hard), vec![restore(3)]].concat(),
            ),
        ),
        (
            "hard labels on the latest only, status restored",
            with(plain(), &[hard_write(3, &hard), restore(3)]),
        ),
        // A helm operation running or interrupted.
        ("pending-upgrade by helm", pending),
    ]
}

/// A write in short: `H3` hard-lock revision 3, `R3` restore, `L1` lock labels, `U1`
/// remove the lock; `!` a write that refuses on a conflict.
fn short(w: &Write) -> String {
    match w {
        Write::HardLock { revision, .. } => format!("H{revision}"),
        Write::Restore { revision, .. } => format!("R{revision}"),
        Write::Labels {
            revision,
            labels,
            on_conflict,
            ..
        } => format!(
            "{}{revision}{}",
            if labels.is_empty() { "U" } else { "L" },
            if *on_conflict == OnConflict::Refuse {
                "!"
            } else {
                ""
            }
        ),
    }
}

/// `lift? writes`, or `refused`.
fn planned(request: Option<LockKind>, records: &[Record]) -> String {
    let p = match request {
        Some(kind) => match plan_lock(records, &lock(kind)) {
            Ok(p) => p,
            Err(Refusal::Pending { revision, status }) => {
                return format!("refused: {revision} {status}")
            }
        },
        None => plan_unlock(records),
    };
    let writes: Vec<String> = p.writes.iter().map(short).collect();
    format!(
        "{}{}",
        if p.lift { "lift " } else { "" },
        if writes.is_empty() {
            "-".to_string()
        } else {
            writes.join(" ")
        }
    )
}

#[test]
fn the_table() {
    use LockKind::{Hard, Pin, Soft};
    // (state, request: Some(lock kind) or None for unlock, planned writes)
    let rows: &[(&str, Option<LockKind>, &str)] = &[
        ("unlocked", Some(Soft), "L3! L1 L2"),
        ("unlocked", Some(Pin), "L3! L1 L2"),
        ("unlocked", Some(Hard), "H3 L1 L2"),
        ("unlocked", None, "-"),
        ("soft on every record", Some(Soft), "-"),
        ("soft on every record", Some(Pin), "L3! L1 L2"),
        ("soft on every record", Some(Hard), "H3 L1 L2"),
        ("soft on every record", None, "U1 U2 U3"),
        ("pin on every record", Some(Pin), "-"),
        ("pin on every record", Some(Soft), "L3! L1 L2"),
        ("pin on every record", None, "U1 U2 U3"),
        ("hard on every record", Some(Hard), "-"),
        ("hard on every record", Some(Soft), "lift R3 L3! L1 L2"),
        ("hard on every record", Some(Pin), "lift R3 L3! L1 L2"),
        ("hard on every record", None, "lift R3 U1 U2 U3"),
        // A re-run after an interruption writes the rest only (the latest is skipped).
        ("soft on the latest only", Some(Soft), "L1 L2"),
        ("soft on the latest only", Some(Hard), "H3 L1 L2"),
        ("soft on the latest only", None, "U1 U2 U3"),
        ("hard on the latest only", Some(Hard), "lift L1 L2"),
        ("hard on the latest only", Some(Soft), "lift R3 L3! L1 L2"),
        ("hard on the latest only", None, "lift R3 U1 U2 U3"),
        // The hard lock is marked again (a rollback's revision, an interrupted unlock).
        ("hard labels, status restored", Some(Hard), "lift H3 L1 L2"),
        ("hard labels, status restored", Some(Soft), "lift L3! L1 L2"),
        ("hard labels, status restored", None, "lift U1 U2 U3"),
        (
            "hard labels on the latest only, status restored",
            Some(Hard),
            "lift H3 L1 L2",
        ),
        (
            "hard labels on the latest only, status restored",
            None,
            "lift U1 U2 U3",
        ),
        // Stale pending: not our hard lock, so not ours to lock; unlock has nothing to do.
        (
            "pending-upgrade by helm",
            Some(Soft),
            "refused: 3 pending-upgrade",
        ),
        (
            "pending-upgrade by helm",
            Some(Hard),
            "refused: 3 pending-upgrade",
        ),
        ("pending-upgrade by helm", None, "-"),
    ];
    let states = states();
    for (state, request, want) in rows {
        let records = &states.iter().find(|(n, _)| n == state).unwrap().1;
        assert_eq!(&planned(*request, records), want, "{state}, {request:?}");
    }
}

/// Every request × state, stopped before each write and run again: the re-run ends where
/// the uninterrupted run ends, converged, and a third run writes nothing.
#[test]
fn every_interrupted_run_converges_on_a_rerun() {
    for (state, records) in states() {
        for request in [
            Some(LockKind::Soft),
            Some(LockKind::Pin),
            Some(LockKind::Hard),
            None,
        ] {
            let plan = |records: &[Record]| match request {
                Some(kind) => plan_lock(records, &lock(kind)).ok(),
                None => Some(plan_unlock(records)),
            };
            let Some(full) = plan(&records) else {
                continue;
            };
            let end = full.after(full.writes.len());
            let shortfall = |records: &[Record]| match request {
                Some(kind) => lock_shortfall(records, &lock(kind)),
                None => unlock_shortfall(records),
            };
            assert_eq!(shortfall(&end), None, "{state}, {request:?}: {end:#?}");
            for at in 0..=full.writes.len() {
                let stopped = full.after(at);
                let rerun = plan(&stopped).expect("a re-run is not refused");
                let again = rerun.after(rerun.writes.len());
                let without_digest = |r: &[Record]| -> Vec<(u64, S, BTreeMap<String, String>)> {
                    r.iter()
                        .map(|r| (r.revision, r.status.clone(), r.labels.clone()))
                        .collect()
                };
                assert_eq!(
                    without_digest(&again),
                    without_digest(&end),
                    "{state}, {request:?}, stopped before write {at}"
                );
                let third = plan(&again).unwrap();
                assert!(
                    third.converged() || request.is_none() && !third.had_lock,
                    "{state}, {request:?}, stopped before write {at}: a third run writes {:?}",
                    third.writes
                );
            }
        }
    }
}

#[test]
fn what_a_stop_leaves_is_said_from_the_writes_done() {
    let hard_everywhere = states().remove(3).1;
    let unlock = plan_unlock(&hard_everywhere);
    // Stopped at the first write, nothing lifted: the cause alone.
    assert_eq!(unlock.stopped(0, "boom", None), None);
    // The enforcement was lifted, then the restore failed.
    assert_eq!(
        unlock
            .stopped(0, "updating x: 500", Some("the cluster"))
            .unwrap(),
        "unlock stopped at restoring the status of revision 3 (updating x: 500) after \
         lifting the cluster's enforcement; every revision (1, 2, 3) carries the lock; the \
         lock is in force, hard: the latest revision 3 is pending-upgrade, so plain helm \
         upgrade is refused; the cluster no longer enforces it (this run lifted it). Run the \
         same command again to complete it"
    );
    // Between the older records: the wording of earlier releases.
    assert_eq!(
        unlock.stopped(2, "interrupted by SIGTERM", None).unwrap(),
        "unlock stopped after 1 of 2 older records (interrupted by SIGTERM); the latest \
         revision 3 still carries the lock, so it is still in force. Run the same command \
         again to complete it"
    );
    assert_eq!(
        unlock.stopped(3, "403", None).unwrap(),
        "unlock stopped at the latest revision 3 (403) after restoring its status and \
         unlocking the older records; the latest revision 3 still carries the lock, so it is \
         still in force. Run the same command again to complete it"
    );
    // Switching a hard lock to soft, stopped after the restore.
    let to_soft = plan_lock(&hard_everywhere, &lock(LockKind::Soft)).unwrap();
    assert_eq!(
        to_soft.stopped(1, "409", Some("the database")).unwrap(),
        "lock stopped at writing the lock onto revision 3 (409) after lifting the database's \
         enforcement, restoring the status of revision 3; every revision (1, 2, 3) carries the \
         lock; the lock is in force for guarded upgrades (the latest revision 3 carries it), \
         but its record is no longer pending-upgrade, so plain helm upgrade is not refused; \
         the database no longer enforces it (this run lifted it). Run the same command again \
         to complete it"
    );
    let fresh = plan_lock(&plain(), &lock(LockKind::Hard)).unwrap();
    assert_eq!(
        fresh.stopped(1, "interrupted by SIGINT", None).unwrap(),
        "lock stopped after 0 of 2 older records (interrupted by SIGINT); the lock is in force \
         on the latest revision 3, but until every older record carries it a rollback to one \
         of them drops it. Run the same command again to complete it"
    );
}
