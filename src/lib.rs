//! guarded-upgrade: a drop-in `helm upgrade --install` that never downgrades a release,
//! honours release locks and fails closed when the deployed state is unknown.
//!
//! Layers (see `docs/architecture.md`), top to bottom, each importing only the ones below:
//! `commands` (one file per verb; `Plan::run`) → `plan` (argv and environment to validated
//! plans, every usage error before any I/O) → `output` (the only module that prints, CI
//! annotations included) → `error` and [`cli`] (clap types) → `adapters` (the cluster
//! connection, Helm's release records, the per-release mutex Lease, the helm process,
//! charts, the helm shim) → `core` (pure: the [`decision`] rules and shared vocabulary,
//! [`version`], the [`release`] codec, names, the lock model, the flag tables).
//!
//! The library API is deliberately small: the decision core, the release codec and the
//! version rules, plus what the binary needs to run a command line.

mod adapters;
pub mod cli;
mod core;
pub use crate::core::{decision, release, version};

mod commands;
mod error;
mod output;
mod plan;
#[cfg(test)]
mod proptests;

pub use crate::core::argv::helm_long_flags;
/// The shim's routing, public so `tests/shimroute.rs` can hold it against helm's own
/// command trees.
pub use adapters::shim::{helm_outcome, routes_to_guard, HelmOutcome};
pub use error::{Error, Exit};
pub use output::error as print_error;
pub use plan::Plan;

/// When a guarded-upgrade started this process in place of helm: the refusal (exit 2).
/// Checked first, before anything else runs, so two builds on PATH cannot loop.
pub fn started_as_helm() -> Option<Error> {
    adapters::helm::started_as_helm().map(Error::Helm)
}
