//! End-to-end tests: guarded-upgrade with real helm 3.17.3 and 4.1.4 against the API
//! stand-in. One test binary, one module per area (fd's `tests/testenv` model).

mod common;

mod guard;
mod lock;
mod mutex;
mod records;
mod repo;
mod unchanged;
