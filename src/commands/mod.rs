//! One file per verb. Each takes its validated plan, does its I/O through the adapters
//! (storage, mutex, helm), has [`crate::output`] say what happened, and returns how the
//! process ends.

mod check;
mod completions;
mod guard;
mod helm;
mod interrupts;
mod lock;
mod locks;
mod man;
mod policy;
mod records;
mod status;
mod unlock;
mod upgrade;

use crate::adapters::cluster;
use crate::adapters::mutex::{self, MutexError};
use crate::adapters::storage::Store;
use crate::error::{Error, Exit};
use crate::output;
use crate::plan::{ClusterPlan, Plan, PlanKind};

impl Plan {
    /// Runs the plan on a fresh async runtime and says how the process should end.
    pub fn run(self) -> Result<Exit, Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        crate::adapters::retry::set_observer(crate::output::retry);
        if self.0.debug() {
            crate::adapters::cluster::init_debug();
        }
        runtime.block_on(run(self.0))
    }
}

/// Runs one plan.
pub(crate) async fn run(plan: PlanKind) -> Result<Exit, Error> {
    match plan {
        PlanKind::Guard(p) if p.mode == crate::core::argv::Mode::Check => check::run(*p).await,
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
        PlanKind::Policy(p) => policy::run(p).await,
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

impl Session {
    /// `Secret` or `ConfigMap`: the kind of the release records.
    pub(crate) fn store_kind(&self) -> &'static str {
        use crate::adapters::storage::ReleaseStore;
        self.store.kind()
    }
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

/// Takes the release's mutex, saying what it waits for and whom it took over from.
pub(crate) async fn acquire_mutex(
    session: &Session,
    release: &str,
    options: &mutex::AcquireOptions,
) -> Result<mutex::Held, MutexError> {
    let namespace = session.namespace.as_str();
    let lease = mutex::lease_name(release);
    let held = mutex::acquire(&session.client, namespace, release, options, |wait| {
        output::waiting(&format!(
            "mutex {lease} for release {release:?} in {namespace:?} {wait}"
        ));
    })
    .await?;
    if let Some(previous) = &held.took_over_from {
        output::note(&format!(
            "took over the mutex from {previous}, which stopped renewing it"
        ));
    }
    Ok(held)
}

/// Gives the mutex back, warning when it was lost while held or could not be released.
pub(crate) async fn release_mutex(held: mutex::Held, release: &str, namespace: &str) {
    let lease = mutex::lease_name(release);
    let hold = held.release().await;
    if let Some(unreleased) = &hold.unreleased {
        output::warning(&unreleased.to_string());
    }
    if let Some(how) = hold.lost {
        output::warning(&format!(
            "lost the mutex {lease} for release {release:?} in {namespace:?} while holding it \
             ({how}); another run may have overlapped with this one, check `helm history \
             {release} -n {namespace}`"
        ));
    }
}

/// Runs a record rewrite (`lock`, `unlock`) under the release's mutex, so concurrent
/// lock, unlock and upgrade runs never interleave their writes. Where the mutex cannot be
/// used (Leases forbidden, no namespace) the rewrite runs unserialized, with a warning:
/// its writes still carry resourceVersion preconditions.
pub(crate) async fn serialized<T>(
    session: &Session,
    release: &str,
    body: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let options = mutex::AcquireOptions {
        timeout: mutex::DEFAULT_WAIT,
        lease_duration: mutex::DEFAULT_LEASE_DURATION,
    };
    let held = match acquire_mutex(session, release, &options).await {
        Ok(held) => held,
        Err(MutexError::NamespaceMissing(_)) => return body.await,
        Err(MutexError::Forbidden {
            lease,
            namespace,
            verb,
            message,
        }) => {
            output::warning(&format!(
                "running without the release mutex: the API forbids {verb} on Lease {lease:?} \
                 in namespace {namespace:?} ({message}); a concurrent lock, unlock or upgrade \
                 may interleave with this one"
            ));
            return body.await;
        }
        Err(source) => {
            return Err(Error::Mutex {
                release: release.to_string(),
                namespace: session.namespace.clone(),
                source: Box::new(source),
            })
        }
    };
    let outcome = body.await;
    release_mutex(held, release, &session.namespace).await;
    outcome
}
