//! End-to-end tests: guarded-upgrade with real helm 3.17.3 and 4.1.4 against the API
//! stand-in. One test binary, one module per area (fd's `tests/testenv` model).

mod common;
mod servers;

mod connect;

mod argv;
mod ci;
mod completions;
mod differential;
mod enforce;
mod failopen;
mod freeze;
mod guard;
mod helmfile;
mod inputs;
mod lock;
mod matrix;
mod mutex;
mod oci;
mod plugin;
mod rbac;
mod realonly;
mod records;
mod release;
mod repo;
mod retry;
mod shim;
mod sql;
mod sqlfaults;
mod unchanged;
mod usage;
mod wait;
