//! The shim's pass-through: every helm command but `upgrade` becomes the real helm, with
//! this process's stdin, stdout, stderr, environment and exit code.

use crate::error::{Error, Exit};
use crate::plan::PassthroughPlan;

/// Replaces the process with the real helm; returns only when it cannot be found or run.
pub(super) fn run(plan: PassthroughPlan) -> Result<Exit, Error> {
    let helm = crate::adapters::shim::real_helm(plan.helm.explicit.as_deref())?;
    Err(crate::adapters::helm::exec(&helm, &plan.args).into())
}
