//! Exit codes and the one error type `main` prints.

/// Done: helm succeeded, or the upgrade was skipped.
pub const EXIT_OK: i32 = 0;
/// Malformed arguments.
pub const EXIT_USAGE: i32 = 2;
/// Refused, or the deployed state could not be known safely; helm was not run.
pub const EXIT_REFUSED: i32 = 3;
/// With `--detailed-exitcode`: nothing changed (skipped).
pub const EXIT_DETAILED_SKIP: i32 = 10;
/// With `--detailed-exitcode`: helm ran and succeeded (or `check`: it would run).
pub const EXIT_DETAILED_CHANGE: i32 = 11;

/// A failure that ends the command with a message and an exit code.
#[derive(Debug)]
pub struct Failure {
    /// Process exit code.
    pub code: i32,
    /// One or more lines for stderr, without the `error:` prefix.
    pub message: String,
}

impl Failure {
    /// Usage error (exit 2).
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }

    /// Refused / cannot decide safely (exit 3).
    pub fn refused(message: impl Into<String>) -> Failure {
        Failure {
            code: EXIT_REFUSED,
            message: message.into(),
        }
    }
}
