//! The pure core: no I/O, no printing. The shared vocabulary and rules ([`decision`]), chart
//! versions ([`version`]), the release codec ([`release`]), release and namespace names
//! ([`names`]), the release-lock model ([`lock`]), times and durations ([`time`]), the
//! command-line tables ([`flags`], [`argv`]) and error chains on one line ([`chain`]).
//!
//! Everything here imports only `crate::core`; every other layer may import it.

pub(crate) mod argv;
pub(crate) mod chain;
pub mod decision;
pub(crate) mod flags;
pub(crate) mod lock;
pub(crate) mod names;
pub mod release;
pub(crate) mod time;
pub mod version;
