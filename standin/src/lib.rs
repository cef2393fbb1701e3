//! Kubernetes API stand-in.
