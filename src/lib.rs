//! guarded-upgrade library.

pub mod release;
pub mod version;
