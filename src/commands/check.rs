//! `check`: the decision `upgrade` would make, printed; never runs helm, never writes.

use crate::adapters::mutex;
use crate::cli::OutputFormat;
use crate::core::decision::Action;
use crate::error::{Error, Exit};
use crate::output::{self, JsonTo};
use crate::plan::GuardPlan;

use super::guard;

/// Runs `check`.
pub(super) async fn run(plan: GuardPlan) -> Result<Exit, Error> {
    // helm is needed only to resolve remote charts, so a missing one is not an error yet.
    let sources = guard::input_sources(&plan)?;
    let helm = guard::locate_helm(&plan).ok();
    let captured = guard::capture_inputs(&plan, &sources).await?;
    let session =
        super::session::connect_with(&plan.cluster, Some(&plan.release), &captured).await?;
    let target = guard::resolve_target(&plan, helm.as_deref(), &session.namespace, &captured)?;
    // The mutex Lease is read while the release is (on the one HTTP/2 connection), else
    // after it.
    let lease = || mutex::read(&session.client, &session.namespace, &plan.release);
    let decided = guard::decide_once(&plan, &session.store, &target, helm.as_deref(), &captured);
    let (pass, lease_read) = session.side_by_side(decided, lease()).await;
    let pass = pass?;
    let lease_read = match lease_read {
        Some(read) => read,
        None => lease().await,
    };
    // Informational: a held mutex is shown; a Lease we may not read is not an error, but
    // is said to be unknown rather than passed off as free.
    let (held, mutex_error) = match lease_read.judge(pass.now) {
        mutex::Observed::Free => (None, None),
        mutex::Observed::Held(m) => (Some(m), None),
        mutex::Observed::Unknown(e) => (None, Some(e)),
    };
    let mutex_note = match (&held, &mutex_error) {
        (Some(m), _) => Some(m.describe(pass.now)),
        (None, Some(e)) => Some(mutex::unknown_note(&plan.release, e)),
        (None, None) => None,
    };
    let mut report = guard::report(&plan, &session.store, &pass, &target, None, held);
    report.mutex_error = mutex_error;
    output::decision_json(
        &report,
        plan.format,
        JsonTo::Stdout,
        plan.decision_file.as_ref(),
    )?;
    if plan.format == OutputFormat::Text || pass.decision.action == Action::Refuse {
        output::decision(&pass.decision, mutex_note.as_deref());
    }
    Ok(guard::exit_without_helm(&plan, &pass.decision))
}
