//! One file per verb. Each takes its validated plan, does its I/O through the adapters
//! (storage, mutex, helm, the hard-lock enforcer), has [`crate::output`] say what
//! happened, and returns how the process ends.
//!
//! Verbs share only `session.rs` (connect, the mutex, the enforcer's steps), `records.rs`
//! (executing planned record writes) and `guard.rs` (upgrade and check); no verb imports another, and this file only hands each plan to its verb
//! (`tests/architecture.rs` checks both).

mod check;
mod completions;
mod guard;
mod helm;
mod lock;
mod locks;
mod man;
mod policy;
mod records;
mod session;
mod status;
mod unlock;
mod upgrade;

use crate::error::{Error, Exit};
use crate::plan::{Plan, PlanKind};

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
