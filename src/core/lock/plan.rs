//! The record writes of `lock` and `unlock`, planned from the release's record headers
//! (pure: `commands/records.rs` executes them, with conflict retries, read-backs and
//! interrupts).
//!
//! The rules, in one place:
//! - **Order**, so the latest record (the one every decision reads) always says what the
//!   user asked for last: `lock` writes the latest record first (the lock is in force at
//!   once), then the older ones (so a later rollback keeps it); `unlock` restores the
//!   records a hard lock marked, clears the older records, and the latest one last (until
//!   then the lock is still in force).
//! - **Convergence**: a lock already on every record (up to the time it was set), with a
//!   hard lock in force exactly when one is asked for, plans no write at all; the same lock
//!   on the latest record (an interrupted run, or a rollback's revision) is what every
//!   record gets, its since-time included, so a re-run writes what the first run wrote.
//! - **Hard-lock bookkeeping**: a hard lock marks the latest record `pending-upgrade` and
//!   keeps its original status, a digest and its revision in labels; label rewrites keep
//!   that bookkeeping; switching a hard lock off restores the record first. A hard lock is
//!   in force only on a record it marked: after a `helm rollback` the new revision carries
//!   the labels but not the status, and `lock --hard` marks it again.
//! - **Stale pending**: a latest record that is `pending-*` without the hard lock's
//!   bookkeeping belongs to a running or interrupted helm operation: `lock` refuses it.
//! - **What a stop leaves**: [`Planned::stopped`] says, from the writes done, which
//!   records carry the lock, whether it is in force, and that a re-run completes it.

use std::collections::BTreeMap;

use super::{
    from_labels, hard_lock, label_changes, Lock, LockKind, KEY_HARD_DIGEST, KEY_HARD_REVISION,
    KEY_HARD_STATUS, KEY_LOCK, PREFIX,
};
use crate::core::release::ReleaseStatus;

/// A record as the planners see it: its header (labels carry the lock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Object name (`sh.helm.release.v1.<release>.v<revision>`).
    pub name: String,
    /// Revision.
    pub revision: u64,
    /// Status from its labels.
    pub status: ReleaseStatus,
    /// Every label.
    pub labels: BTreeMap<String, String>,
}

/// What to do when a label write finds the record changed since it was read (409).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnConflict {
    /// Re-read the record and write again (older records, and `unlock`'s latest one).
    Reread,
    /// Stop: someone else changed the latest record `lock` is about to write.
    Refuse,
}

/// One record write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// Marks the record `pending-upgrade` (its status label and inside the encoded
    /// release), records the original status, a digest and the revision, and sets exactly
    /// `labels` as its lock labels.
    HardLock {
        /// The record.
        record: String,
        /// Its revision.
        revision: u64,
        /// The lock labels.
        labels: BTreeMap<String, String>,
    },
    /// Restores a record a hard lock marked: its original status comes back (as
    /// `superseded` when it was `deployed` and a newer revision was deployed since, as helm
    /// would have marked it) and the bookkeeping goes; the lock labels stay, so the lock is
    /// still in force until the latest record loses them.
    Restore {
        /// The record.
        record: String,
        /// Its revision.
        revision: u64,
        /// A newer revision was deployed since the record was marked.
        superseded_since: bool,
    },
    /// Sets exactly `labels` as the record's lock labels (none: removes the lock), keeping
    /// the hard-lock bookkeeping.
    Labels {
        /// The record.
        record: String,
        /// Its revision.
        revision: u64,
        /// The lock labels.
        labels: BTreeMap<String, String>,
        /// On a 409.
        on_conflict: OnConflict,
    },
}

impl Write {
    /// The record written.
    pub fn record(&self) -> &str {
        match self {
            Write::HardLock { record, .. }
            | Write::Restore { record, .. }
            | Write::Labels { record, .. } => record,
        }
    }

    /// The revision written.
    pub fn revision(&self) -> u64 {
        match self {
            Write::HardLock { revision, .. }
            | Write::Restore { revision, .. }
            | Write::Labels { revision, .. } => *revision,
        }
    }

    /// What the write does, for messages: `restoring the status of revision 3`.
    pub fn describe(&self) -> String {
        match self {
            Write::HardLock { revision, .. } => {
                format!("marking revision {revision} pending-upgrade for the hard lock")
            }
            Write::Restore { revision, .. } => {
                format!("restoring the status of revision {revision}")
            }
            Write::Labels {
                revision, labels, ..
            } if labels.is_empty() => format!("removing the lock from revision {revision}"),
            Write::Labels { revision, .. } => format!("writing the lock onto revision {revision}"),
        }
    }
}

/// `lock` or `unlock`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// `lock`.
    Lock,
    /// `unlock`.
    Unlock,
}

impl Verb {
    /// `lock`, `unlock`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Lock => "lock",
            Verb::Unlock => "unlock",
        }
    }
}

/// Why `lock` writes nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The latest revision is `pending-*` and not by our hard lock: a helm operation is
    /// running or was interrupted.
    Pending {
        /// Its revision.
        revision: u64,
        /// Its status.
        status: ReleaseStatus,
    },
}

/// The writes of one `lock` or `unlock`, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    /// `lock` or `unlock`.
    pub verb: Verb,
    /// The records as read, oldest first.
    pub records: Vec<Record>,
    /// The store's enforcer must be lifted before the first write (the labels say hard:
    /// an enforced lock refuses every record write).
    pub lift: bool,
    /// The writes.
    pub writes: Vec<Write>,
    /// `unlock`: some record carries a lock (or its bookkeeping).
    pub had_lock: bool,
}

impl Planned {
    /// Nothing to write: the command is done without the mutex.
    pub fn converged(&self) -> bool {
        self.writes.is_empty()
    }

    /// The latest revision.
    pub fn latest(&self) -> u64 {
        self.records.last().map_or(0, |r| r.revision)
    }

    /// Whether write `at` is one of the bulk writes of the older records (between which
    /// SIGINT/SIGTERM stop the command).
    pub fn is_older(&self, at: usize) -> bool {
        matches!(self.writes.get(at), Some(Write::Labels { revision, .. }) if *revision != self.latest())
    }

    /// The records as they are after the first `done` writes.
    pub fn after(&self, done: usize) -> Vec<Record> {
        let mut records = self.records.clone();
        for write in &self.writes[..done.min(self.writes.len())] {
            apply(&mut records, write);
        }
        records
    }

    /// What to say when the command stopped before write `at` (it and those after it not
    /// done), `cause` being why: which records carry the lock, whether it is in force, and
    /// that the same command completes it. `lifted`: who no longer enforces the lock
    /// because this run lifted it (`the cluster`, `the database`). None when nothing was
    /// changed (the cause alone is the message).
    pub fn stopped(&self, at: usize, cause: &str, lifted: Option<&str>) -> Option<String> {
        if at == 0 && lifted.is_none() {
            return None;
        }
        let latest = self.latest();
        let older_total = self.records.len().saturating_sub(1);
        let older_done = (0..at).filter(|&i| self.is_older(i)).count();
        let lifted_clause = lifted
            .map(|who| format!("; {who} no longer enforces it (this run lifted it)"))
            .unwrap_or_default();
        let again = "Run the same command again to complete it";
        let after = self.after(at);
        let latest_carries = after
            .last()
            .is_some_and(|r| r.labels.contains_key(KEY_LOCK));
        let restored = self.writes[..at]
            .iter()
            .any(|w| matches!(w, Write::Restore { .. }));
        // The wording earlier releases printed (and scripts match), where it fits.
        if self.is_older(at) && latest_carries {
            let left = match self.verb {
                Verb::Lock => format!(
                    "the lock is in force on the latest revision {latest}, but until every \
                     older record carries it a rollback to one of them drops it"
                ),
                Verb::Unlock => format!(
                    "the latest revision {latest} still carries the lock, so it is still in force"
                ),
            };
            return Some(format!(
                "{} stopped after {older_done} of {older_total} older records ({cause}); \
                 {left}{lifted_clause}. {again}",
                self.verb.as_str()
            ));
        }
        if self.verb == Verb::Unlock
            && latest_carries
            && matches!(self.writes.get(at), Some(w) if w.revision() == latest && at + 1 == self.writes.len())
            && older_done == older_total
            && (older_total > 0 || restored)
        {
            let done = match (restored, older_total) {
                (true, 0) => "restoring its status".to_string(),
                (true, _) => "restoring its status and unlocking the older records".to_string(),
                (false, _) => "unlocking the older records".to_string(),
            };
            return Some(format!(
                "unlock stopped at the latest revision {latest} ({cause}) after {done}; the \
                 latest revision {latest} still carries the lock, so it is still in \
                 force{lifted_clause}. {again}"
            ));
        }
        let mut done: Vec<String> = Vec::new();
        if let Some(who) = lifted {
            done.push(format!("lifting {who}'s enforcement"));
        }
        done.extend(self.writes[..at].iter().map(Write::describe));
        let what = self
            .writes
            .get(at)
            .map_or_else(|| "the end".to_string(), Write::describe);
        Some(format!(
            "{} stopped at {what} ({cause}) after {}; {}{lifted_clause}. {again}",
            self.verb.as_str(),
            done.join(", "),
            state(&after)
        ))
    }
}

/// Which records carry the lock, and whether it is in force, in words.
pub fn state(records: &[Record]) -> String {
    let Some(latest) = records.last() else {
        return "the release has no records".to_string();
    };
    let carriers: Vec<String> = records
        .iter()
        .filter(|r| r.labels.contains_key(KEY_LOCK))
        .map(|r| r.revision.to_string())
        .collect();
    let carry = match carriers.len() {
        0 => "no revision carries the lock".to_string(),
        n if n == records.len() => {
            format!("every revision ({}) carries the lock", carriers.join(", "))
        }
        1 => format!("only revision {} carries the lock", carriers[0]),
        _ => format!("revisions {} carry the lock", carriers.join(", ")),
    };
    let in_force = match (
        latest.labels.contains_key(KEY_LOCK),
        hard_lock(&latest.labels).is_some(),
        latest.labels.get(KEY_LOCK).map(String::as_str),
    ) {
        (false, _, _) => format!(
            "the lock is not in force (the latest revision {} carries none)",
            latest.revision
        ),
        (true, true, _) => format!(
            "the lock is in force, hard: the latest revision {} is pending-upgrade, so plain \
             helm upgrade is refused",
            latest.revision
        ),
        (true, false, Some("hard")) => format!(
            "the lock is in force for guarded upgrades (the latest revision {} carries it), \
             but its record is no longer pending-upgrade, so plain helm upgrade is not refused",
            latest.revision
        ),
        (true, false, _) => format!(
            "the lock is in force (the latest revision {} carries it)",
            latest.revision
        ),
    };
    format!("{carry}; {in_force}")
}

/// Applies `write` to the records (what it does to their labels and status).
pub fn apply(records: &mut [Record], write: &Write) {
    let Some(record) = records.iter_mut().find(|r| r.name == write.record()) else {
        return;
    };
    match write {
        Write::HardLock { labels, .. } => {
            let original = record.status.as_str().to_string();
            let mut want = labels.clone();
            want.insert(KEY_HARD_STATUS.to_string(), original);
            want.insert(KEY_HARD_DIGEST.to_string(), String::new());
            want.insert(KEY_HARD_REVISION.to_string(), record.revision.to_string());
            set_exactly(&mut record.labels, &want);
            record.status = ReleaseStatus::PendingUpgrade;
        }
        Write::Restore {
            superseded_since, ..
        } => {
            let mut original = hard_lock(&record.labels)
                .map(ReleaseStatus::parse)
                .unwrap_or_else(|| record.status.clone());
            if *superseded_since && original == ReleaseStatus::Deployed {
                original = ReleaseStatus::Superseded;
            }
            record.labels.retain(|k, _| !is_hard_bookkeeping(k));
            record.status = original;
        }
        Write::Labels { labels, .. } => {
            let mut want = labels.clone();
            keep_hard_labels(&record.labels, &mut want);
            set_exactly(&mut record.labels, &want);
        }
    }
}

fn set_exactly(labels: &mut BTreeMap<String, String>, want: &BTreeMap<String, String>) {
    for (k, v) in label_changes(labels, want) {
        match v {
            Some(v) => labels.insert(k, v),
            None => labels.remove(&k),
        };
    }
}

/// Plans `lock` of `wanted` onto the records (oldest first, at least one).
pub fn plan_lock(records: &[Record], wanted: &Lock) -> Result<Planned, Refusal> {
    let mut planned = Planned {
        verb: Verb::Lock,
        records: records.to_vec(),
        lift: false,
        writes: Vec::new(),
        had_lock: false,
    };
    let Some(latest) = records.last() else {
        return Ok(planned);
    };
    if latest.status.is_pending() && hard_lock(&latest.labels).is_none() {
        return Err(Refusal::Pending {
            revision: latest.revision,
            status: latest.status.clone(),
        });
    }
    let labels_say_hard = latest.labels.get(KEY_LOCK).map(String::as_str) == Some("hard");
    if lock_shortfall(records, wanted).is_none() {
        return Ok(planned);
    }
    planned.lift = labels_say_hard;
    let mut now = records.to_vec();
    let mut push = |now: &mut Vec<Record>, write: Write| {
        apply(now, &write);
        planned.writes.push(write);
    };
    // Switching a hard lock off restores the record before the soft labels go on.
    if hard_lock(&latest.labels).is_some() && wanted.kind != LockKind::Hard {
        push(
            &mut now,
            Write::Restore {
                record: latest.name.clone(),
                revision: latest.revision,
                superseded_since: false,
            },
        );
    }
    let latest = now.last().expect("not empty").clone();
    // The same lock already on the latest record: its labels (with their since-time) are
    // what every record gets.
    let existing = from_labels(&latest.labels)
        .ok()
        .flatten()
        .filter(|l| l.same_as(wanted));
    let labels = match &existing {
        Some(existing) => existing.labels(),
        None => wanted.labels(),
    };
    if wanted.kind == LockKind::Hard && hard_lock(&latest.labels).is_none() {
        push(
            &mut now,
            Write::HardLock {
                record: latest.name.clone(),
                revision: latest.revision,
                labels: labels.clone(),
            },
        );
    } else if existing.is_none() {
        push(
            &mut now,
            Write::Labels {
                record: latest.name.clone(),
                revision: latest.revision,
                labels: labels.clone(),
                on_conflict: OnConflict::Refuse,
            },
        );
    }
    for older in &records[..records.len() - 1] {
        push(
            &mut now,
            Write::Labels {
                record: older.name.clone(),
                revision: older.revision,
                labels: labels.clone(),
                on_conflict: OnConflict::Reread,
            },
        );
    }
    Ok(planned)
}

/// Plans `unlock` of the records (oldest first, at least one).
pub fn plan_unlock(records: &[Record]) -> Planned {
    let mut planned = Planned {
        verb: Verb::Unlock,
        records: records.to_vec(),
        lift: records
            .last()
            .is_some_and(|r| r.labels.get(KEY_LOCK).map(String::as_str) == Some("hard")),
        writes: Vec::new(),
        had_lock: records
            .iter()
            .any(|r| r.labels.keys().any(|k| k.starts_with(PREFIX))),
    };
    let Some(latest) = records.last() else {
        return planned;
    };
    if !planned.had_lock {
        return planned;
    }
    // Restore every record a hard lock marked (normally only the latest one), newest first.
    for (i, record) in records.iter().enumerate().rev() {
        if hard_lock(&record.labels).is_some() {
            let superseded_since = records[i + 1..].iter().any(|newer| {
                let status = hard_lock(&newer.labels)
                    .map(ReleaseStatus::parse)
                    .unwrap_or_else(|| newer.status.clone());
                matches!(status, ReleaseStatus::Deployed | ReleaseStatus::Superseded)
            });
            planned.writes.push(Write::Restore {
                record: record.name.clone(),
                revision: record.revision,
                superseded_since,
            });
        }
    }
    for record in records {
        if record.revision != latest.revision {
            planned.writes.push(Write::Labels {
                record: record.name.clone(),
                revision: record.revision,
                labels: BTreeMap::new(),
                on_conflict: OnConflict::Reread,
            });
        }
    }
    planned.writes.push(Write::Labels {
        record: latest.name.clone(),
        revision: latest.revision,
        labels: BTreeMap::new(),
        on_conflict: OnConflict::Reread,
    });
    planned
}

/// What the records show instead of `wanted` on every record (with a hard lock in force
/// exactly when one is asked for); None when locking again would write nothing.
pub fn lock_shortfall(records: &[Record], wanted: &Lock) -> Option<String> {
    let (latest, others) = records.split_last()?;
    let existing = from_labels(&latest.labels)
        .ok()
        .flatten()
        .filter(|l| l.same_as(wanted));
    let hard_in_force = hard_lock(&latest.labels).is_some();
    let converged = existing.as_ref().is_some_and(|existing| {
        let labels = existing.labels();
        hard_in_force == (wanted.kind == LockKind::Hard)
            && others.iter().all(|r| !needs_labels(&r.labels, &labels))
    });
    if converged {
        return None;
    }
    let missing: Vec<String> = records
        .iter()
        .filter(|r| {
            from_labels(&r.labels)
                .ok()
                .flatten()
                .is_none_or(|l| !l.same_as(wanted))
                || needs_labels(&r.labels, &wanted.labels())
        })
        .map(|r| r.revision.to_string())
        .collect();
    Some(match missing.is_empty() {
        false => format!("revisions {} without this lock", missing.join(", ")),
        true if wanted.kind == LockKind::Hard => format!(
            "the latest revision {} not marked pending-upgrade by the hard lock",
            latest.revision
        ),
        true => format!(
            "the latest revision {} still marked pending-upgrade by a hard lock",
            latest.revision
        ),
    })
}

/// What the records show instead of no lock anywhere; None when unlocked.
pub fn unlock_shortfall(records: &[Record]) -> Option<String> {
    let locked: Vec<String> = records
        .iter()
        .filter(|r| r.labels.keys().any(|k| k.starts_with(PREFIX)))
        .map(|r| r.revision.to_string())
        .collect();
    (!locked.is_empty()).then(|| format!("revisions {} still carrying the lock", locked.join(", ")))
}

/// True when writing `wanted` lock labels onto a record with `labels` would change it
/// (hard-lock bookkeeping kept as it is).
pub fn needs_labels(labels: &BTreeMap<String, String>, wanted: &BTreeMap<String, String>) -> bool {
    let mut want = wanted.clone();
    keep_hard_labels(labels, &mut want);
    !label_changes(labels, &want).is_empty()
}

/// True when `labels` carry exactly the guarded-upgrade labels of `wanted` (and its other
/// labels, such as a restored status).
pub fn has_labels(labels: &BTreeMap<String, String>, wanted: &BTreeMap<String, String>) -> bool {
    label_changes(labels, wanted).is_empty()
}

/// A hard lock's own labels (original status, digest, revision), as opposed to the lock.
pub fn is_hard_bookkeeping(key: &str) -> bool {
    [KEY_HARD_STATUS, KEY_HARD_DIGEST, KEY_HARD_REVISION].contains(&key)
}

/// Keeps a hard lock's bookkeeping labels through label rewrites.
pub fn keep_hard_labels(current: &BTreeMap<String, String>, wanted: &mut BTreeMap<String, String>) {
    for key in [KEY_HARD_STATUS, KEY_HARD_DIGEST, KEY_HARD_REVISION] {
        if let Some(v) = current.get(key) {
            wanted.insert(key.to_string(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests;
