//! One file per verb. Each takes its validated plan, does its I/O through the adapters
//! (storage, mutex, helm), has [`crate::output`] say what happened, and returns how the
//! process ends.

mod check;
mod completions;
mod guard;
mod helm;
mod lock;
mod locks;
mod man;
mod records;
mod status;
mod unlock;
mod upgrade;

use crate::cluster;
use crate::error::{Error, Exit};
use crate::plan::{ClusterPlan, PlanKind};
use crate::storage::Store;

/// Runs one plan.
pub(crate) async fn run(plan: PlanKind) -> Result<Exit, Error> {
    match plan {
        PlanKind::Guard(p) if p.mode == crate::argv::Mode::Check => check::run(*p).await,
        PlanKind::Guard(p) => {
            let (ci, release) = (p.ci.clone(), p.release.clone());
            let result = upgrade::run(*p).await.map_err(Error::before_helm);
            if let Err(error) = &result {
                crate::output::ci::failure(&ci, &release, error);
            }
            result
        }
        PlanKind::Lock(p) => lock::run(p).await,
        PlanKind::Unlock(p) => unlock::run(p).await,
        PlanKind::Status(p) => status::run(p).await,
        PlanKind::Locks(p) => locks::run(p).await,
        PlanKind::Passthrough(p) => helm::run(p),
        PlanKind::Completions(shell) => completions::run(shell),
        PlanKind::Man(dir) => man::run(dir),
    }
}

/// A connected command: the release store and what else the cluster told us.
pub(crate) struct Session {
    /// Helm's release records, through the driver `HELM_DRIVER` names.
    pub store: Store,
    /// For objects other than release records (the mutex Lease, namespaces).
    pub client: kube::Client,
    /// The release namespace, resolved as helm resolves it.
    pub namespace: String,
    /// The kubeconfig user, default "who" of a lock.
    pub user: Option<String>,
}

/// Connects as helm would for these flags and opens the release store. `deciding_for`
/// names the release in errors of `upgrade` and `check`.
pub(crate) async fn connect(
    plan: &ClusterPlan,
    deciding_for: Option<&str>,
) -> Result<Session, Error> {
    let target = cluster::connect(&plan.flags, &plan.env)
        .await
        .map_err(|source| Error::Connect {
            release: deciding_for.map(str::to_string),
            source: Box::new(source),
        })?;
    let store = Store::open(plan.driver, target.client.clone(), &target.namespace)
        .await
        .map_err(|source| Error::OpenStore {
            release: deciding_for.map(str::to_string),
            source: Box::new(source),
        })?;
    Ok(Session {
        store,
        client: target.client,
        namespace: target.namespace,
        user: target.user,
    })
}
