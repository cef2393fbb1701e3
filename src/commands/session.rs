//! What the verbs share: the connected session, the release's mutex around record
//! rewrites, and the hard-lock enforcer's steps as commands say them.

use crate::adapters::cluster;
use crate::adapters::enforce::{Described, Enforcement, Enforcer, HardLock};
use crate::adapters::inputs::Captured;
use crate::adapters::mutex::{self, MutexError};
use crate::adapters::storage::Store;
use crate::error::Error;
use crate::output::{self, report::LockReport};
use crate::plan::ClusterPlan;

/// A connected command: the release store and what else the cluster told us.
pub(super) struct Session {
    /// Helm's release records, through the driver `HELM_DRIVER` names.
    pub store: Store,
    /// For objects other than release records (the mutex Lease, namespaces).
    pub client: kube::Client,
    /// The release namespace, resolved as helm resolves it.
    pub namespace: String,
    /// The kubeconfig user, default "who" of a lock.
    pub user: Option<String>,
    /// What the client's connections speak (for reads run side by side).
    pub connections: cluster::Connections,
}

/// Connects as helm would for these flags and opens the release store. `deciding_for`
/// names the release in errors of `upgrade` and `check`.
pub(super) async fn connect(
    plan: &ClusterPlan,
    deciding_for: Option<&str>,
) -> Result<Session, Error> {
    connect_with(plan, deciding_for, &Captured::default()).await
}

/// [`connect`] reading the kubeconfig and CA files a capture holds from it (the guarded
/// commands, whose helm must read the same bytes).
pub(super) async fn connect_with(
    plan: &ClusterPlan,
    deciding_for: Option<&str>,
    captured: &Captured,
) -> Result<Session, Error> {
    let target = cluster::connect_with(&plan.flags, &plan.env, captured)
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
        connections: target.connections,
    })
}

/// Takes the release's mutex, saying what it waits for and whom it took over from.
pub(super) async fn acquire_mutex(
    session: &Session,
    release: &str,
    options: &mutex::AcquireOptions,
) -> Result<mutex::Held, MutexError> {
    match acquire_mutex_or(session, release, options, &mut mutex::LeaseOnly).await? {
        mutex::Acquired::Held(held) => Ok(*held),
        mutex::Acquired::Done(never) => match never {},
    }
}

/// Takes the release's mutex, or ends without it when `waiter` (which re-reads the
/// release when its records change) says the wait answered its question.
pub(super) async fn acquire_mutex_or<W: mutex::Waiter>(
    session: &Session,
    release: &str,
    options: &mutex::AcquireOptions,
    waiter: &mut W,
) -> Result<mutex::Acquired<W::Done>, MutexError> {
    let namespace = session.namespace.as_str();
    let lease = mutex::lease_name(release);
    let acquired = mutex::acquire_or(
        &session.client,
        namespace,
        release,
        options,
        waiter,
        |wait| match wait {
            mutex::MutexWait::Polling { reason } => output::note(&format!(
                "cannot watch the mutex Lease {lease:?} in {namespace:?} ({reason}); reading it \
                 every 0.5-1s while waiting instead (grant `watch` on leases to hand over at once)"
            )),
            wait => output::waiting(&format!(
                "mutex {lease} for release {release:?} in {namespace:?} {wait}"
            )),
        },
    )
    .await?;
    if let mutex::Acquired::Held(held) = &acquired {
        if let Some(previous) = &held.took_over_from {
            output::note(&format!(
                "took over the mutex from {previous}, which stopped renewing it"
            ));
        }
    }
    Ok(acquired)
}

/// Gives the mutex back, warning when it was lost while held or could not be released.
pub(super) async fn release_mutex(held: mutex::Held, release: &str, namespace: &str) {
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
pub(super) async fn serialized<T>(
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

impl Session {
    /// Runs `first` (which opens the connection) and `second` side by side once the
    /// connection `first` opened multiplexes requests (HTTP/2): then both share it. Where it
    /// does not (HTTP/1.1, or `first` reads another server: `HELM_DRIVER=sql`), `second` is
    /// not run (None) and the caller runs it after `first`, on the same connection, when it
    /// still needs it: a second request in flight would cost a second connection.
    pub(super) async fn side_by_side<A, B>(
        &self,
        first: impl std::future::Future<Output = A>,
        second: impl std::future::Future<Output = B>,
    ) -> (A, Option<B>) {
        let first = std::pin::pin!(first);
        let mut first = first;
        tokio::select! {
            a = &mut first => (a, None),
            () = self.connections.multiplexed() => {
                let (a, b) = tokio::join!(first, second);
                (a, Some(b))
            }
        }
    }

    /// The hard-lock enforcer of this session's store.
    pub(super) fn enforcer(&self) -> Enforcer<'_> {
        Enforcer::of(&self.store, &self.client)
    }

    /// Lifts the enforcement of `release` before its records are rewritten, saying its
    /// notes. True when it was in place. `hard`: the labels say hard.
    pub(super) async fn lift_enforcement(
        &self,
        release: &str,
        hard: bool,
        latest: Option<&str>,
    ) -> Result<bool, Error> {
        match self.enforcer().lift(release, hard, latest).await {
            Ok(lift) => {
                for note in &lift.notes {
                    output::note(note);
                }
                Ok(lift.lifted)
            }
            Err(message) => Err(Error::Refused {
                release: release.to_string(),
                namespace: self.namespace.clone(),
                message,
            }),
        }
    }

    /// Fills in how each lock is enforced (`status`, `locks`): soft and pin locks are
    /// labels only; hard locks as the enforcer finds them. `namespace`: the one read, None
    /// for all.
    pub(super) async fn describe_enforcement(
        &self,
        namespace: Option<&str>,
        locks: &mut [(&str, &str, &str, &mut LockReport)],
    ) {
        let hard: Vec<HardLock> = locks
            .iter()
            .filter(|(_, _, _, l)| l.kind == "hard")
            .map(|(namespace, release, record, l)| HardLock {
                namespace,
                release,
                record,
                reason: l.reason.as_deref(),
                by: l.by.as_deref(),
                since: l.since.as_deref(),
            })
            .collect();
        let mut described = self.enforcer().describe(namespace, &hard).await.into_iter();
        for (_, _, _, lock) in locks.iter_mut() {
            let labels_only = Described {
                enforcement: Enforcement::LabelsOnly,
                note: None,
                not_frozen: Vec::new(),
            };
            let Described {
                enforcement,
                note,
                not_frozen,
            } = match lock.kind == "hard" {
                true => described.next().unwrap_or(labels_only),
                false => labels_only,
            };
            lock.enforcement = Some(enforcement);
            lock.enforcement_note = note;
            lock.not_frozen = not_frozen;
        }
    }
}
