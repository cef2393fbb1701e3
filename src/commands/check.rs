//! `check`: the decision `upgrade` would make, printed; never runs helm, never writes.

use crate::cli::OutputFormat;
use crate::decision::Action;
use crate::error::{Error, Exit};
use crate::mutex;
use crate::output::{self, JsonTo};
use crate::plan::GuardPlan;

use super::guard;

/// Runs `check`.
pub(super) async fn run(plan: GuardPlan) -> Result<Exit, Error> {
    // helm is needed only to resolve remote charts, so a missing one is not an error yet.
    let helm = guard::locate_helm(&plan).ok();
    let session = super::connect(&plan.cluster, Some(&plan.release)).await?;
    let target = guard::resolve_target(&plan, helm.as_deref(), &session.namespace)?;
    let pass = guard::decide_once(&plan, &session.store, &target, helm.as_deref()).await?;
    // Informational: a held mutex is shown, a Lease we may not read is not an error.
    let held = mutex::peek(&session.client, &session.namespace, &plan.release)
        .await
        .ok()
        .flatten()
        .filter(|m| m.is_held_at(pass.now));
    let mutex_note = held.as_ref().map(|m| m.describe(pass.now));
    let report = guard::report(&plan, &session.store, &pass, &target, None, held);
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
