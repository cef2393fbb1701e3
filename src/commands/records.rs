//! Executes the record writes `core::lock::plan` planned for `lock` and `unlock` (the
//! order, convergence and hard-lock rules are there): conflict retries, read-backs, and
//! SIGINT/SIGTERM between the older records (`adapters/signals.rs`). A stop after a write says
//! what it left ([`core::lock::plan::Planned::stopped`]).
//!
//! Every write carries the record's write token (a precondition: the store refuses it as a
//! conflict if the record changed since it was read).

use std::collections::BTreeMap;

use crate::adapters::signals::{signal_name, Interrupts};
use crate::adapters::storage::{
    ErrorKind, RecordHeader, ReleaseStore, Store, StoreError, StoredRecord, LABEL_STATUS,
};
use crate::core::lock;
use crate::core::lock::plan::{
    has_labels, is_hard_bookkeeping, keep_hard_labels, OnConflict, Planned, Record, Write,
};
use crate::core::release::{self, ReleaseStatus};
use crate::error::Error;

/// How many times a record write is retried after a conflict on a non-latest record.
const CONFLICT_RETRIES: usize = 5;

/// Who and where a rewrite is for, to name them in errors.
pub(super) struct Scope<'a> {
    /// The store.
    pub store: &'a Store,
    /// Release name.
    pub release: &'a str,
    /// Signals that stop bulk writes between records.
    pub interrupts: Interrupts,
}

impl Scope<'_> {
    fn namespace(&self) -> &str {
        self.store.namespace()
    }

    /// A failed step on one record.
    pub(super) fn record_error(
        &self,
        step: &'static str,
        record: &str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        Error::Record {
            release: self.release.to_string(),
            namespace: self.namespace().to_string(),
            step,
            record: record.to_string(),
            source: source.into(),
        }
    }

    /// An error's text without the leading `release "db" in namespace "shared": `, for
    /// use inside a message that already names them (each layer's text once).
    pub(super) fn unscoped(&self, e: &Error) -> String {
        let text = e.to_string();
        let scope = format!(
            "release {:?} in namespace {:?}: ",
            self.release,
            self.namespace()
        );
        match text.strip_prefix(&scope) {
            Some(rest) => rest.to_string(),
            None => text,
        }
    }

    /// `e`, which stopped a command before its first record write, said together with the
    /// one change the run did make: it lifted `lifted`'s enforcement.
    pub(super) fn after_lift(&self, e: Error, lifted: Option<&str>) -> Error {
        match lifted {
            Some(who) => self.refused(format!(
                "{}; {who} no longer enforces the lock (this run lifted it), the records are as \
                 they were. Run the same command again to complete it",
                self.unscoped(&e)
            )),
            None => e,
        }
    }

    /// A refusal with its explanation.
    pub(super) fn refused(&self, message: String) -> Error {
        Error::Refused {
            release: self.release.to_string(),
            namespace: self.namespace().to_string(),
            message,
        }
    }

    /// After a failed write: the record as it is now, when it already holds what the
    /// write wanted (the answer was lost after the write succeeded), means success.
    async fn already_written(
        &self,
        record: &str,
        done: impl Fn(&StoredRecord) -> bool,
    ) -> Option<bool> {
        self.store.get(record).await.ok().map(|r| done(&r))
    }

    /// A failed write, said as it is: a conflict means someone else changed the record and
    /// nothing of ours is on it; a lost answer means the outcome is not known.
    async fn write_failed(
        &self,
        e: StoreError,
        record: &str,
        done: impl Fn(&StoredRecord) -> bool,
    ) -> Result<(), Error> {
        match self.already_written(record, done).await {
            Some(true) => return Ok(()),
            Some(false) if e.kind() == ErrorKind::Conflict => {
                return Err(self.refused(format!(
                    "record {record} was changed by someone else while locking/unlocking ({}); \
                     nothing was changed on it. Run the command again",
                    e.status()
                )))
            }
            // A lost connection with the record unchanged: the write did not happen.
            Some(false) => {}
            None => {
                return Err(self.refused(format!(
                    "updating record {record} failed ({}) and the record could not be read \
                     back, so whether the change was made is not known. Run the command \
                     again: it completes or confirms it",
                    crate::core::chain::error_chain(&e)
                )))
            }
        }
        Err(self.record_error("updating", record, e))
    }

    /// The release's record headers; refuses a release that is not there or uninstalled.
    pub(super) async fn existing_release(&self) -> Result<Vec<RecordHeader>, Error> {
        let headers = self
            .store
            .list_headers(self.release)
            .await
            .map_err(|source| Error::Api {
                release: self.release.to_string(),
                namespace: self.namespace().to_string(),
                step: "listing records".to_string(),
                source: Box::new(source),
            })?;
        match headers.last() {
            None => Err(Error::NotFound {
                release: self.release.to_string(),
                namespace: self.namespace().to_string(),
                kind: self.store.kind(),
            }),
            Some(latest) if latest.status == ReleaseStatus::Uninstalled => {
                Err(self.refused(format!(
                    "the release is uninstalled (revision {}); nothing to lock",
                    latest.revision
                )))
            }
            Some(_) => Ok(headers),
        }
    }

    /// Reads the release's records back before a command claims what it did (`locked:`,
    /// `unlocked:`): `wrong` says what the records show instead, None when the claim holds.
    /// A claim that cannot be confirmed is not made: the command fails (exit 3) saying
    /// what is known.
    pub(super) async fn confirm(
        &self,
        verb: &str,
        claim: &str,
        wrong: impl Fn(&[Record]) -> Option<String>,
    ) -> Result<(), Error> {
        let headers = self.existing_release().await.map_err(|e| {
            self.refused(format!(
                "{verb} wrote its records, but reading them back to confirm failed ({}), so \
                 whether the release is {claim} is not known. Run the same command again: it \
                 completes or confirms it",
                self.unscoped(&e)
            ))
        })?;
        match wrong(&records_of(&headers)) {
            None => Ok(()),
            Some(shown) => Err(self.refused(format!(
                "{verb} wrote its records, but reading them back shows {shown}, so the release \
                 is not {claim}. Run the same command again to complete it"
            ))),
        }
    }

    /// Sets exactly the `wanted` lock labels on one record (keeping hard-lock bookkeeping).
    pub(super) async fn set_labels(
        &self,
        header: &RecordHeader,
        wanted: &BTreeMap<String, String>,
    ) -> Result<(), Error> {
        let mut want = wanted.clone();
        keep_hard_labels(&header.labels, &mut want);
        let changes = lock::label_changes(&header.labels, &want);
        if changes.is_empty() {
            return Ok(());
        }
        let rv = header.write_token.clone().unwrap_or_default();
        match self.store.patch_labels(&header.name, &rv, &changes).await {
            Ok(_) => Ok(()),
            Err(e) => {
                self.write_failed(e, &header.name, |r| has_labels(&r.header.labels, &want))
                    .await
            }
        }
    }

    /// Runs the planned writes in order. `force`: `unlock --force` (a hard-locked record
    /// changed underneath loses the lock labels only). `lifted`: who no longer enforces
    /// the lock because this run lifted it, for what a stop says it left.
    pub(super) async fn execute(
        &self,
        planned: &Planned,
        force: bool,
        lifted: Option<&str>,
    ) -> Result<(), Error> {
        // A failure before write `at` (its cause `e`): what the writes done left, or `e`
        // itself when nothing changed.
        let stop = |at: usize, e: Error| match planned.stopped(at, &self.unscoped(&e), lifted) {
            Some(message) => self.refused(message),
            None => e,
        };
        let mut headers = self.existing_release().await.map_err(|e| stop(0, e))?;
        for (at, write) in planned.writes.iter().enumerate() {
            let stopped = |cause: String| match planned.stopped(at, &cause, lifted) {
                Some(message) => self.refused(message),
                None => self.refused(cause),
            };
            if planned.is_older(at) {
                if let Some(signal) = self.interrupts.received() {
                    return Err(stopped(format!("interrupted by {}", signal_name(signal))));
                }
            }
            let Some(header) = headers.iter().find(|h| h.name == write.record()).cloned() else {
                // Pruned by helm since the plan was made: nothing of it to write.
                continue;
            };
            let done = match write {
                Write::HardLock { labels, .. } => self.hard_lock_record(&header, labels).await,
                Write::Restore {
                    superseded_since, ..
                } => {
                    self.release_hard_lock(&header, force, *superseded_since)
                        .await
                }
                Write::Labels {
                    labels,
                    on_conflict: OnConflict::Refuse,
                    ..
                } => self.set_labels(&header, labels).await,
                Write::Labels {
                    labels,
                    on_conflict: OnConflict::Reread,
                    ..
                } => self.label_record(&header, labels).await,
            };
            if let Err(e) = done {
                // A write whose outcome is not known says so and how to find out; one
                // that changed nothing before any other write is said as it is.
                let text = self.unscoped(&e);
                let unknown = text.contains("is not known") && !planned.is_older(at);
                if unknown || planned.stopped(at, "", lifted).is_none() {
                    return Err(e);
                }
                return Err(stopped(text));
            }
            // A record written again later in the plan (a restored hard lock) is read
            // again first: its write token moved on.
            if planned.writes[at + 1..]
                .iter()
                .any(|w| w.record() == write.record())
            {
                headers = self.existing_release().await.map_err(|e| stop(at + 1, e))?;
            }
        }
        Ok(())
    }

    /// Puts `wanted` on one record, re-reading it and trying again when it moved on (a
    /// conflict), and taking a record deleted meanwhile (not found) as done.
    pub(super) async fn label_record(
        &self,
        header: &RecordHeader,
        wanted: &BTreeMap<String, String>,
    ) -> Result<(), Error> {
        let mut header = header.clone();
        for attempt in 0..=CONFLICT_RETRIES {
            let mut want = wanted.clone();
            keep_hard_labels(&header.labels, &mut want);
            let changes = lock::label_changes(&header.labels, &want);
            if changes.is_empty() {
                break;
            }
            let rv = header.write_token.clone().unwrap_or_default();
            match self.store.patch_labels(&header.name, &rv, &changes).await {
                Ok(_) => break,
                Err(e) if e.kind() == ErrorKind::Conflict && attempt < CONFLICT_RETRIES => {
                    header = self
                        .store
                        .get(&header.name)
                        .await
                        .map_err(|e| self.record_error("re-reading", &header.name, e))?
                        .header;
                }
                // Not found is taken as "pruned by helm meanwhile" only once a read confirms
                // the record is gone; a record still there (a proxy or an API server answering
                // 404 wrongly) is re-read and written again, like after a conflict.
                Err(e) if e.kind() == ErrorKind::NotFound && attempt < CONFLICT_RETRIES => {
                    match self.store.get(&header.name).await {
                        Ok(current) => header = current.header,
                        Err(gone) if gone.kind() == ErrorKind::NotFound => break,
                        Err(unreadable) => {
                            return Err(self.refused(format!(
                                "updating record {} found no such record ({}) and the record \
                                 could not be read back ({}), so whether it still carries a \
                                 lock is not known. Run the command again: it completes or \
                                 confirms it",
                                header.name,
                                e.status(),
                                crate::core::chain::error_chain(&unreadable)
                            )))
                        }
                    }
                }
                Err(e) => {
                    return self
                        .write_failed(e, &header.name, |r| has_labels(&r.header.labels, &want))
                        .await
                }
            }
        }
        Ok(())
    }

    /// Makes the latest record `pending-upgrade` (label and encoded release) and records
    /// what it was, so plain `helm upgrade` refuses and `unlock` can restore it exactly.
    pub(super) async fn hard_lock_record(
        &self,
        latest: &RecordHeader,
        wanted: &BTreeMap<String, String>,
    ) -> Result<(), Error> {
        let name = latest.name.as_str();
        let record = self
            .store
            .get(name)
            .await
            .map_err(|e| self.record_error("reading", name, e))?;
        let mut json = release::decode_release_json(&record.payload)
            .map_err(|e| self.record_error("decoding", name, e))?;
        let original = json
            .pointer("/info/status")
            .and_then(|s| s.as_str())
            .unwrap_or(record.header.status.as_str())
            .to_string();
        release::set_release_status(&mut json, ReleaseStatus::PendingUpgrade.as_str())
            .map_err(|e| self.record_error("changing the status of", name, e))?;
        let payload = release::encode_release_json(&json)
            .map_err(|e| self.record_error("encoding", name, e))?;
        let mut want = wanted.clone();
        want.insert(
            LABEL_STATUS.to_string(),
            ReleaseStatus::PendingUpgrade.as_str().to_string(),
        );
        want.insert(lock::KEY_HARD_STATUS.to_string(), original);
        want.insert(
            lock::KEY_HARD_DIGEST.to_string(),
            lock::payload_digest(payload.as_bytes()),
        );
        want.insert(
            lock::KEY_HARD_REVISION.to_string(),
            latest.revision.to_string(),
        );
        let changes = lock::label_changes(&record.header.labels, &want);
        let rv = record.header.write_token.clone().unwrap_or_default();
        match self.store.rewrite(name, &rv, &payload, &changes).await {
            Ok(_) => Ok(()),
            Err(e) => {
                self.write_failed(e, name, |r| {
                    r.payload == payload.as_bytes() && has_labels(&r.header.labels, &want)
                })
                .await
            }
        }
    }

    /// Restores a hard-locked record's original status; refuses when it changed underneath
    /// unless `force` (then only the labels are cleaned, the status left as found).
    /// `superseded_since`: a newer revision was deployed meanwhile (a `helm rollback` under
    /// the lock); a `deployed` original then comes back as `superseded`, as helm would have
    /// marked it, instead of leaving two deployed revisions.
    pub(super) async fn release_hard_lock(
        &self,
        header: &RecordHeader,
        force: bool,
        superseded_since: bool,
    ) -> Result<(), Error> {
        let name = header.name.as_str();
        let ns = self.namespace();
        let release = self.release;
        let record = self
            .store
            .get(name)
            .await
            .map_err(|e| self.record_error("reading", name, e))?;
        let labels = &record.header.labels;
        let mut original = lock::hard_lock(labels)
            .map(str::to_string)
            .unwrap_or_default();
        let digest_ok = labels.get(lock::KEY_HARD_DIGEST).map(String::as_str)
            == Some(lock::payload_digest(&record.payload).as_str());
        let summary = release::decode_release(&record.payload).ok();
        let still_pending = record.header.status == ReleaseStatus::PendingUpgrade
            && summary.as_ref().map(|s| &s.status) == Some(&ReleaseStatus::PendingUpgrade);
        let rv = record.header.write_token.clone().unwrap_or_default();
        // Only the hard lock's bookkeeping goes: the lock labels stay on the latest record
        // until the older records are cleared (the caller clears it last), so an
        // interrupted unlock leaves the lock in force, as its message says, and a re-run
        // finishes it.
        let mut unlabel: BTreeMap<String, String> = labels
            .iter()
            .filter(|(k, _)| !is_hard_bookkeeping(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !(digest_ok
            && still_pending
            && ReleaseStatus::parse(&original) != ReleaseStatus::PendingUpgrade)
        {
            if !force {
                return Err(self.refused(format!(
                    "the hard-locked record {name} was changed by someone else (status now {}; \
                     expected pending-upgrade as guarded-upgrade left it); not guessing, nothing \
                     changed. Inspect with `helm history {release} -n {ns}` and `{}`, then run \
                     `guarded-upgrade unlock {release} -n {ns} --force` to drop the lock and \
                     leave the status as it is",
                    record.header.status,
                    self.store.show_command(name),
                )));
            }
            let changes = lock::label_changes(labels, &unlabel);
            return match self.store.patch_labels(name, &rv, &changes).await {
                Ok(_) => Ok(()),
                Err(e) => {
                    self.write_failed(e, name, |r| has_labels(&r.header.labels, &unlabel))
                        .await
                }
            };
        }
        if superseded_since && ReleaseStatus::parse(&original) == ReleaseStatus::Deployed {
            original = ReleaseStatus::Superseded.as_str().to_string();
        }
        let mut json = release::decode_release_json(&record.payload)
            .map_err(|e| self.record_error("decoding", name, e))?;
        release::set_release_status(&mut json, &original)
            .map_err(|e| self.record_error("restoring the status of", name, e))?;
        let payload = release::encode_release_json(&json)
            .map_err(|e| self.record_error("encoding", name, e))?;
        unlabel.insert(LABEL_STATUS.to_string(), original);
        let changes = lock::label_changes(labels, &unlabel);
        match self.store.rewrite(name, &rv, &payload, &changes).await {
            Ok(_) => Ok(()),
            Err(e) => {
                self.write_failed(e, name, |r| {
                    r.payload == payload.as_bytes() && has_labels(&r.header.labels, &unlabel)
                })
                .await
            }
        }
    }
}

/// The planners' view of a record header.
pub(super) fn record_of(header: &RecordHeader) -> Record {
    Record {
        name: header.name.clone(),
        revision: header.revision,
        status: header.status.clone(),
        labels: header.labels.clone(),
    }
}

/// The planners' view of the release's records.
pub(super) fn records_of(headers: &[RecordHeader]) -> Vec<Record> {
    headers.iter().map(record_of).collect()
}
