//! The enforced hard lock, behind one interface: whatever refuses changes to a
//! hard-locked release besides helm's own pending check.
//!
//! Each release store hands out its enforcer ([`Enforcer::of`], the one place that looks
//! at the driver): Secrets and ConfigMaps get the cluster's admission policy
//! ([`cluster`], the policy itself in [`admission`]); `HELM_DRIVER=sql` gets the database
//! trigger on `releases_v1` ([`database`]). Commands only speak to [`Enforcer`]:
//!
//! - [`Enforcer::availability`]: before anything is written, can it enforce a hard lock
//!   here, for this user? (reads only, or a transaction rolled back);
//! - [`Enforcer::install`]: after the records carry the hard lock, turn enforcement on
//!   and say so only once [`Enforcer::probe`] shows a change is refused;
//! - [`Enforcer::probe`]: is a change of the release refused now?
//! - [`Enforcer::lift`]: turn it off before the records are rewritten;
//! - [`Enforcer::describe`]: how each hard lock is enforced (`status`, `locks`).
//!
//! Adapters never print: notes come back as text for the command to have said.

pub(crate) mod admission;
mod cluster;
mod database;
mod scope;

use kube::Client;

pub(crate) use self::admission::{Availability, Enforcement};
use crate::adapters::storage::Store;
use crate::core::lock::Lock;

/// The hard-lock enforcer of one release store.
pub(crate) enum Enforcer<'a> {
    /// Secrets and ConfigMaps: the cluster's ValidatingAdmissionPolicy.
    Cluster(cluster::ClusterEnforcer<'a>),
    /// `HELM_DRIVER=sql`: PostgreSQL's trigger on `releases_v1` (and, where the cluster's
    /// policy is installed, its parameter for the release's objects).
    Database(database::DatabaseEnforcer<'a>),
}

/// What turning enforcement on did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Installed {
    /// In force, proven by a probe.
    Enforced {
        /// What refuses, e.g. `ValidatingAdmissionPolicy …, ConfigMap …`.
        how: String,
        /// Things to say next to it (what it does not cover).
        notes: Vec<String>,
    },
    /// Not enforced (labels and the pending status only).
    NotEnforced {
        /// Why, and what to do.
        why: String,
    },
}

/// What switching enforcement on did, before the probe.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SwitchedOn {
    /// What refuses, e.g. `trigger … on releases_v1`.
    how: String,
    /// Things to say next to it.
    notes: Vec<String>,
}

/// What lifting enforcement did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Lift {
    /// True when enforcement was in place and is off now.
    pub lifted: bool,
    /// Things to say (e.g. that whether it was in place is not known).
    pub notes: Vec<String>,
}

/// One hard lock `status`/`locks` ask about: where it is, its latest record (probed), and
/// the records' lock as the enforcement's parameters must hold it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HardLock<'a> {
    pub namespace: &'a str,
    pub release: &'a str,
    /// The latest record.
    pub record: &'a str,
    pub reason: Option<&'a str>,
    pub by: Option<&'a str>,
    /// When it was set (RFC 3339).
    pub since: Option<&'a str>,
}

/// How one hard lock is enforced (`status`, `locks`), and why not when it is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Described {
    /// `cluster policy`, `database trigger` or `labels only`.
    pub enforcement: Enforcement,
    /// `not enforced by …: WHY` when a hard lock is not enforced.
    pub note: Option<String>,
    /// An enforced lock: the release's objects it does not freeze (`KIND NAME (why)`).
    pub not_frozen: Vec<String>,
}

impl<'a> Enforcer<'a> {
    /// The enforcer of `store` (`client`: the cluster the command is connected to).
    pub(crate) fn of(store: &'a Store, client: &'a Client) -> Enforcer<'a> {
        match store {
            Store::Sql(sql) => Enforcer::Database(database::DatabaseEnforcer::new(sql, client)),
            other => Enforcer::Cluster(cluster::ClusterEnforcer::new(other, client)),
        }
    }

    /// Who refuses changes: `the cluster`, `the database`.
    pub(crate) fn who(&self) -> &'static str {
        match self {
            Enforcer::Cluster(_) => "the cluster",
            Enforcer::Database(_) => "the database",
        }
    }

    /// What a hard lock that is not enforced still lets through, besides `helm rollback`
    /// and `helm uninstall`: `kubectl`, `direct SQL`.
    pub(crate) fn bypass(&self) -> &'static str {
        match self {
            Enforcer::Cluster(_) => "kubectl",
            Enforcer::Database(_) => "direct SQL",
        }
    }

    /// `not enforced by the cluster: WHY`, `not enforced by the database: WHY`.
    pub(crate) fn not_enforced(&self, why: &str) -> String {
        format!("not enforced by {}: {why}", self.who())
    }

    /// Before anything is written: can a hard lock on `release` be enforced here, for
    /// this user? Writes nothing.
    pub(crate) async fn availability(&self, release: &str) -> Availability {
        match self {
            Enforcer::Cluster(e) => e.availability(release).await,
            Enforcer::Database(e) => e.availability().await,
        }
    }

    /// After the records carry the hard lock `spec` (the latest record: `latest`): turns
    /// enforcement on where `available`, and says it is enforced only once
    /// [`Enforcer::probe`] shows a change of the latest record is refused.
    pub(crate) async fn install(
        &self,
        release: &str,
        latest: &str,
        spec: &Lock,
        available: &Availability,
    ) -> Installed {
        if let Availability::Unavailable(why) = available {
            return Installed::NotEnforced { why: why.clone() };
        }
        let on = match self {
            Enforcer::Cluster(e) => e.switch_on(release, latest, spec).await,
            Enforcer::Database(e) => e.switch_on(release, latest, spec).await,
        };
        match on {
            Ok(on) => match self.probe(release, latest).await {
                Ok(()) => Installed::Enforced {
                    how: on.how,
                    notes: on.notes,
                },
                Err(why) => Installed::NotEnforced { why },
            },
            Err(why) => Installed::NotEnforced { why },
        }
    }

    /// Is a change of `record` (of `release`) refused now? Err says why not.
    pub(crate) async fn probe(&self, release: &str, record: &str) -> Result<(), String> {
        match self {
            Enforcer::Cluster(e) => e.probe(record).await,
            Enforcer::Database(e) => e.probe(release, record).await,
        }
    }

    /// Turns enforcement of `release` off before its records are rewritten (it would
    /// refuse those writes). `hard`: the labels say hard (notes matter then); `latest`:
    /// the latest record, to wait until writes to it pass. Err: it is in place and could
    /// not be lifted; the text says why and what is needed.
    pub(crate) async fn lift(
        &self,
        release: &str,
        hard: bool,
        latest: Option<&str>,
    ) -> Result<Lift, String> {
        match self {
            Enforcer::Cluster(e) => e.lift(release, hard, latest).await,
            Enforcer::Database(e) => e.lift(release, hard).await,
        }
    }

    /// How each hard lock is enforced, in order: enforced only when a probe (a dry-run
    /// change by the caller, a rolled-back transaction) is refused now, and (the cluster)
    /// the lock's parameters still say what the records' lock says. `namespace`: the
    /// namespace read, or None for all.
    pub(crate) async fn describe(
        &self,
        namespace: Option<&str>,
        hard_locks: &[HardLock<'_>],
    ) -> Vec<Described> {
        if hard_locks.is_empty() {
            return Vec::new();
        }
        match self {
            Enforcer::Cluster(e) => e.describe(namespace, hard_locks).await,
            Enforcer::Database(e) => {
                let plain: Vec<(&str, &str, &str)> = hard_locks
                    .iter()
                    .map(|l| (l.namespace, l.release, l.record))
                    .collect();
                e.describe(&plain).await
            }
        }
    }
}
