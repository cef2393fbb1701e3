//! The error of a command, named after the operation that failed (kube-rs style), and the
//! one mapping from outcomes and errors to exit codes.

use std::path::PathBuf;

use crate::adapters::cluster::ClusterError;
use crate::adapters::helm::HelmError;
use crate::adapters::mutex::MutexError;
use crate::adapters::state::ReadError;
use crate::adapters::storage::StoreError;
use crate::adapters::target::TargetError;

/// How the process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done: helm ran and succeeded, or the upgrade was skipped.
    Success,
    /// Malformed arguments (2).
    Usage,
    /// Refused, or the deployed state could not be known safely; helm was not run (3).
    Refused,
    /// With `--detailed-exitcode`: nothing changed (10).
    DetailedSkip,
    /// With `--detailed-exitcode`: helm ran and succeeded, or `check`: it would (11).
    DetailedChange,
    /// helm's own exit code.
    Helm(i32),
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Usage => 2,
            Exit::Refused => 3,
            Exit::DetailedSkip => 10,
            Exit::DetailedChange => 11,
            Exit::Helm(code) => u8::try_from(code).unwrap_or(1),
        }
    }
}

/// A malformed command line (exit 2), found before any cluster or helm I/O.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub(crate) String);

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line is malformed.
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// helm could not be found or started.
    #[error(transparent)]
    Helm(#[from] HelmError),
    /// The cluster could not be chosen or connected to.
    #[error("{}{source}", deciding_for(.release))]
    Connect {
        /// The release a guarded command was deciding for.
        release: Option<String>,
        /// Why.
        #[source]
        source: Box<ClusterError>,
    },
    /// The release storage could not be opened (the SQL driver's database).
    #[error("{}{source}", deciding_for(.release))]
    OpenStore {
        /// The release a guarded command was deciding for.
        release: Option<String>,
        /// Why.
        #[source]
        source: Box<crate::adapters::storage::sql::SqlConnectError>,
    },
    /// The deployed release could not be read or trusted.
    #[error(
        "release {release:?} in namespace {namespace:?}: reading the deployed release: {source}"
    )]
    ReadRelease {
        /// Release name.
        release: String,
        /// Namespace.
        namespace: String,
        /// Why.
        #[source]
        source: Box<ReadError>,
    },
    /// The target chart version could not be resolved.
    #[error("release {release:?} in namespace {namespace:?}: resolving the target chart version: {source}")]
    ResolveTarget {
        /// Release name.
        release: String,
        /// Namespace.
        namespace: String,
        /// Why.
        #[source]
        source: Box<TargetError>,
    },
    /// The release helm would write (its dry run) could not be examined.
    #[error("release {release:?} in namespace {namespace:?}: examining the release helm would write: {source}")]
    ExamineRelease {
        /// Release name.
        release: String,
        /// Namespace.
        namespace: String,
        /// Why.
        #[source]
        source: Box<crate::adapters::change::ChangeError>,
    },
    /// A call to the API (other than reading the release) failed.
    #[error("release {release:?} in namespace {namespace:?}: {step}: {source}")]
    Api {
        /// Release name.
        release: String,
        /// Namespace.
        namespace: String,
        /// What was being done, e.g. `creating the namespace`.
        step: String,
        /// Why (a store or an API error).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The per-release mutex could not be taken.
    #[error("release {release:?} in namespace {namespace:?}: {source}")]
    Mutex {
        /// Release name.
        release: String,
        /// Namespace.
        namespace: String,
        /// Why.
        #[source]
        source: Box<MutexError>,
    },
    /// A stale pending revision could not be marked failed.
    #[error("release {release:?} in namespace {namespace:?}: {source}")]
    Recover {
        /// Release name.
        release: String,
        /// Namespace.
        namespace: String,
        /// Which step failed.
        #[source]
        source: Box<crate::adapters::recovery::RecoveryError>,
    },
    /// Reading, decoding or rewriting one release record failed.
    #[error("release {release:?} in namespace {namespace:?}: {step} {record}: {source}")]
    Record {
        /// Release name.
        release: String,
        /// Namespace.
        namespace: String,
        /// What was being done: `reading`, `decoding`, `updating`, …
        step: &'static str,
        /// The record's name.
        record: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// `locks` could not list helm's records.
    #[error("listing helm records in {scope}: {source}")]
    ListRecords {
        /// `namespace "x"` or `all namespaces`.
        scope: String,
        /// Why.
        #[source]
        source: Box<StoreError>,
    },
    /// The release has no records in the namespace.
    #[error(
        "release {release:?} not found in namespace {namespace:?} ({kind} records); nothing \
         changed. Check the name, -n/--namespace and HELM_DRIVER"
    )]
    NotFound {
        /// Release name.
        release: String,
        /// Namespace.
        namespace: String,
        /// `Secret`, `ConfigMap`.
        kind: &'static str,
    },
    /// The command cannot go on safely; the message says why and what to do.
    #[error("release {release:?} in namespace {namespace:?}: {message}")]
    Refused {
        /// Release name.
        release: String,
        /// Namespace.
        namespace: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// An input helm reads once (standard input, a `/dev/fd` pipe) could not be captured
    /// before anything read it: not closed in time, too large, unreadable.
    #[error("release {release:?}: {message}")]
    Inputs {
        /// Release name.
        release: String,
        /// Which input and why.
        message: String,
    },
    /// `policy install`/`uninstall` failed; the message names the object and what to do.
    #[error("{0}")]
    Policy(String),
    /// The decision file could not be written.
    #[error("cannot write the decision to {path:?}: {source}")]
    WriteDecision {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `man --dir` could not write the pages.
    #[error("cannot write man pages to {dir:?}: {source}; check that the directory exists and is writable")]
    WriteManPages {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A guarded command failed before helm ran.
    #[error("{0}; helm was not run")]
    HelmNotRun(#[source] Box<Error>),
}

impl From<ClusterError> for Error {
    fn from(e: ClusterError) -> Error {
        Error::Connect {
            release: None,
            source: Box::new(e),
        }
    }
}

/// `cannot decide for release "db": ` when a guarded command was deciding for it.
fn deciding_for(release: &Option<String>) -> String {
    release
        .as_ref()
        .map(|r| format!("cannot decide for release {r:?}: "))
        .unwrap_or_default()
}

impl Error {
    /// The exit code this error ends the process with.
    pub fn exit(&self) -> Exit {
        match self {
            Error::Usage(_) => Exit::Usage,
            // Configuration that no retry can fix, found before any request.
            Error::Connect { source, .. }
                if matches!(**source, ClusterError::InvalidNamespace { .. }) =>
            {
                Exit::Usage
            }
            Error::Helm(e) if e.is_usage() => Exit::Usage,
            Error::HelmNotRun(inner) => inner.exit(),
            _ => Exit::Refused,
        }
    }

    /// Marks a failure of a guarded command as fail-closed: helm was not run. The one
    /// place that says so.
    pub(crate) fn before_helm(self) -> Error {
        match self {
            Error::Usage(_) | Error::HelmNotRun(_) => self,
            other => Error::HelmNotRun(Box::new(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mutex_error(source: MutexError) -> Error {
        Error::Mutex {
            release: "db".into(),
            namespace: "shared".into(),
            source: Box::new(source),
        }
    }

    #[test]
    fn helm_was_not_run_is_said_once() {
        let e = Error::Refused {
            release: "db".into(),
            namespace: "shared".into(),
            message: "pending".into(),
        }
        .before_helm()
        .before_helm();
        assert_eq!(
            e.to_string(),
            "release \"db\" in namespace \"shared\": pending; helm was not run"
        );
        assert_eq!(e.exit(), Exit::Refused);
        // No inner error says it by hand: every fail-closed message ends with it once.
        let inner = [
            Error::from(ClusterError::BadApiServer("https://[".into())),
            mutex_error(MutexError::Interrupted),
            mutex_error(MutexError::Timeout {
                lease: "helm-lock-db".into(),
                waiting_for: "is held by pipeline-42".into(),
                waited: "2s".into(),
            }),
            mutex_error(MutexError::Forbidden {
                lease: "helm-lock-db".into(),
                namespace: "shared".into(),
                verb: "get",
                message: "forbidden".into(),
            }),
        ];
        for e in inner {
            let text = e.before_helm().to_string();
            assert_eq!(text.matches("helm was not run").count(), 1, "{text}");
            assert!(text.ends_with("; helm was not run"), "{text}");
        }
        let usage = Error::from(UsageError("bad".into())).before_helm();
        assert_eq!(usage.to_string(), "bad");
        assert_eq!(usage.exit(), Exit::Usage);
    }
}
