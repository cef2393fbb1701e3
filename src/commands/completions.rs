//! `completions SHELL`: a completion script generated from the clap definitions.

use crate::error::{Error, Exit};

/// Prints the script for `shell`.
pub(super) fn run(shell: crate::cli::CompletionTarget) -> Result<Exit, Error> {
    crate::output::completions(shell);
    Ok(Exit::Success)
}
