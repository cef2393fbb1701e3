//! guarded-upgrade library.
