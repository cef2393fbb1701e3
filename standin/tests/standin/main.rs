//! The stand-in's tests in one binary, one module per area: the API itself, real helm
//! against it, and the capture of helm-written records used as fixtures.

mod common;

mod api;
mod capture;
mod faults;
mod helm_e2e;
mod tls;
