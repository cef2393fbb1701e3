//! The adapters: everything that talks to the world outside the process, on top of the
//! pure [`crate::core`]. The cluster connection ([`cluster`]), helm's release records
//! ([`storage`], read and validated by [`state`]), the one retry policy ([`retry`]), the
//! per-release mutex Lease ([`mutex`]), the enforced hard lock's enforcer of each store
//! ([`enforce`]), stale pending records ([`recovery`]), the helm process ([`helm`], with
//! its stdin feeds [`inputs`]) and its dry run ([`change`]), charts ([`target`]) and the
//! helm shim's routing ([`shim`]).
//!
//! Adapters import the core and each other (never in a circle), never a layer above.

pub(crate) mod change;
pub(crate) mod cluster;
pub(crate) mod enforce;
pub(crate) mod helm;
pub(crate) mod inputs;
pub(crate) mod mutex;
pub(crate) mod recovery;
pub(crate) mod retry;
pub(crate) mod shim;
pub(crate) mod signals;
pub(crate) mod state;
pub(crate) mod storage;
pub(crate) mod target;
