//! The database's enforcer (`HELM_DRIVER=sql`): the trigger on `releases_v1` refuses
//! changes to a hard-locked release's rows (its SQL is in the driver,
//! [`crate::adapters::storage::sql`]). Where the cluster's admission policy is installed,
//! its parameter also guards the release's objects (best effort: the records are what the
//! trigger protects).

use kube::Client;

use super::admission::{self, Availability};
use super::cluster::ClusterEnforcer;
use super::{Described, Enforcement, Lift, SwitchedOn};
use crate::adapters::storage::sql::{SqlStore, TRIGGER_NAME};
use crate::core::lock::Lock;

/// The trigger's side of a hard lock, and the cluster's for the release's objects.
pub(crate) struct DatabaseEnforcer<'a> {
    sql: &'a SqlStore,
    client: &'a Client,
    namespace: &'a str,
}

impl<'a> DatabaseEnforcer<'a> {
    pub(super) fn new(sql: &'a SqlStore, client: &'a Client) -> DatabaseEnforcer<'a> {
        use crate::adapters::storage::ReleaseStore;
        DatabaseEnforcer {
            sql,
            client,
            namespace: sql.namespace(),
        }
    }

    /// The trigger can be installed: checked in a transaction that is rolled back.
    pub(super) async fn availability(&self) -> Availability {
        match self.sql.install_trigger(false).await {
            Ok(_) => Availability::Ready,
            Err(why) => Availability::Unavailable(why),
        }
    }

    /// Installs the triggers (if they are not already this version's) and revokes
    /// TRUNCATE and TRIGGER from PUBLIC; where the cluster's policy is installed, also
    /// writes the release's parameter (best effort).
    pub(super) async fn switch_on(
        &self,
        release: &str,
        latest: &str,
        spec: &Lock,
    ) -> Result<SwitchedOn, String> {
        let weaker = self.sql.install_trigger(true).await?;
        let mut notes: Vec<String> = weaker
            .into_iter()
            .map(|g| format!("the database lock is weaker: {g}"))
            .collect();
        let namespace = self.namespace;
        if admission::availability(self.client, namespace, release).await == Availability::Ready {
            let frozen = admission::freeze_scope_of(self.client, self.sql, latest).await;
            if let Err(why) =
                admission::put_param(self.client, namespace, release, spec, &frozen).await
            {
                notes.push(format!(
                    "the cluster does not freeze the release's objects: {why}"
                ));
            }
        }
        Ok(SwitchedOn {
            how: format!("trigger {TRIGGER_NAME} on releases_v1"),
            notes,
        })
    }

    /// The triggers are in force and an update of the latest row, in a transaction that
    /// is rolled back, is refused.
    pub(super) async fn probe(&self, release: &str, record: &str) -> Result<(), String> {
        self.sql
            .probe_trigger(release, self.namespace, record)
            .await
    }

    /// The trigger lets the tool's own writes pass; only the cluster's parameter for the
    /// release's objects is removed.
    pub(super) async fn lift(&self, release: &str, hard: bool) -> Result<Lift, String> {
        ClusterEnforcer::in_namespace(self.client, self.namespace, "Secret")
            .lift(release, hard, None)
            .await
    }

    pub(super) async fn describe(&self, hard_locks: &[(&str, &str, &str)]) -> Vec<Described> {
        let mut out = Vec::new();
        for (ns, release, record) in hard_locks {
            out.push(match self.sql.probe_trigger(release, ns, record).await {
                Ok(()) => Described {
                    enforcement: Enforcement::DatabaseTrigger,
                    note: None,
                    not_frozen: Vec::new(),
                },
                Err(why) => Described {
                    enforcement: Enforcement::LabelsOnly,
                    note: Some(admission::not_enforced_by_database(&why)),
                    not_frozen: Vec::new(),
                },
            });
        }
        out
    }
}
