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
            Ok(()) => Availability::Ready,
            Err(why) => Availability::Unavailable(why),
        }
    }

    /// Installs the trigger (if it is not already this version's); where the cluster's
    /// policy is installed, also writes the release's parameter (best effort).
    pub(super) async fn switch_on(&self, release: &str, spec: &Lock) -> Result<SwitchedOn, String> {
        self.sql.install_trigger(true).await?;
        let mut notes = Vec::new();
        let namespace = self.namespace;
        if admission::availability(self.client, namespace, release).await == Availability::Ready {
            if let Err(why) = admission::put_param(self.client, namespace, release, spec).await {
                notes.push(format!(
                    "the cluster does not guard the release's objects against deletion: {why}"
                ));
            }
        }
        Ok(SwitchedOn {
            how: format!("trigger {TRIGGER_NAME} on releases_v1"),
            notes,
        })
    }

    /// The trigger is installed, enabled and current.
    pub(super) async fn probe(&self, release: &str) -> Result<(), String> {
        match self.sql.trigger_installed().await {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!(
                "the trigger {TRIGGER_NAME} is not installed on releases_v1; run \
                 `guarded-upgrade lock {release} --hard -n {}` again to install it",
                self.namespace
            )),
            Err(why) => Err(why),
        }
    }

    /// The trigger lets the tool's own writes pass; only the cluster's parameter for the
    /// release's objects is removed.
    pub(super) async fn lift(&self, release: &str, hard: bool) -> Result<Lift, String> {
        ClusterEnforcer::in_namespace(self.client, self.namespace, "Secret")
            .lift(release, hard, None)
            .await
    }

    pub(super) async fn describe(&self, hard_locks: &[(&str, &str)]) -> Vec<Described> {
        let installed = self.sql.trigger_installed().await;
        hard_locks
            .iter()
            .map(|(ns, release)| match &installed {
                Ok(true) => Described {
                    enforcement: Enforcement::DatabaseTrigger,
                    note: None,
                },
                Ok(false) => Described {
                    enforcement: Enforcement::LabelsOnly,
                    note: Some(admission::not_enforced_by_database(&format!(
                        "the trigger {TRIGGER_NAME} is not installed on releases_v1; run \
                         `guarded-upgrade lock {release} --hard -n {ns}` again to install it"
                    ))),
                },
                Err(why) => Described {
                    enforcement: Enforcement::LabelsOnly,
                    note: Some(admission::not_enforced_by_database(why)),
                },
            })
            .collect()
    }
}
