//! guarded-upgrade: a drop-in `helm upgrade --install` that never downgrades a release,
//! honours release locks and fails closed when the deployed state is unknown.
//!
//! The decision ([`decision::decide`]) is pure; everything around it is a thin adapter:
//! [`storage`] for Helm's release records, [`mutex`] for the per-release Lease, [`helm`]
//! for the helm process, [`app`], [`lockcmd`] and [`cli`] for the command line.

pub mod app;
pub mod argv;
pub mod change;
pub mod cli;
pub mod cluster;
pub mod decision;
pub mod exit;
pub mod helm;
pub mod lock;
pub mod lockcmd;
pub mod mutex;
pub mod recovery;
pub mod release;
pub mod report;
pub mod state;
pub mod storage;
pub mod target;
pub mod time;
pub mod version;
