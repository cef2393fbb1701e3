//! `man`: the man page generated from the clap definitions.

use crate::error::{Error, Exit};

/// Prints the page.
pub(super) fn run() -> Result<Exit, Error> {
    crate::output::man();
    Ok(Exit::Success)
}
