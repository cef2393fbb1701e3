//! `man [--dir DIR]`: the man pages generated from the clap definitions.

use std::path::PathBuf;

use crate::error::{Error, Exit};

/// Prints the main page, or writes every page into `dir`.
pub(super) fn run(dir: Option<PathBuf>) -> Result<Exit, Error> {
    crate::output::man(dir.as_deref())?;
    Ok(Exit::Success)
}
