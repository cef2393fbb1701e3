//! The per-release cluster mutex that serializes concurrent guarded upgrades.
//!
//! A `coordination.k8s.io/v1` Lease named `helm-lock-<release>` in the release namespace,
//! with client-go leader-election field semantics (`holderIdentity`,
//! `leaseDurationSeconds`, `acquireTime`, `renewTime`, `leaseTransitions`; released by
//! clearing the holder). The name and semantics are those of the `helm-lock` plugin
//! (sergelogvinov/helm-lock), so the two tools exclude each other.
//!
//! Liveness follows client-go: a holder is live while its record keeps changing; a record
//! that has not changed for `leaseDurationSeconds` *as observed locally* is expired. This
//! does not trust the holder's clock. One-shot readers (`check`, `status`) have nothing to
//! observe over time and use `renewTime + leaseDurationSeconds` against the local clock.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use serde::Serialize;
use tokio::sync::watch;

use crate::storage::{with_retry, StoreError};
use crate::time::{format_duration, format_rfc3339, now_unix};

/// Default lease duration: as helm-lock's 15 s, renewed every third of it.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// Default `--lock-timeout`.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(300);

/// The Lease name for a release (shared with the helm-lock plugin).
pub fn lease_name(release: &str) -> String {
    format!("helm-lock-{release}")
}

/// Who we are: host, pid and CI job when present, so a waiting pipeline can say who it
/// waits for.
pub fn holder_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into());
    let mut id = format!("guarded-upgrade@{host}/pid-{}", std::process::id());
    let job = [
        ("CI_JOB_URL", ""),
        ("GITHUB_RUN_ID", "github-run-"),
        ("CI_JOB_ID", "job-"),
        ("BUILD_BUILDID", "build-"),
        ("BUILDKITE_JOB_ID", "buildkite-"),
        ("CIRCLE_BUILD_NUM", "circle-"),
    ]
    .iter()
    .find_map(|(var, prefix)| {
        std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty())
            .map(|v| format!("{prefix}{v}"))
    });
    if let Some(job) = job {
        id.push(' ');
        id.push_str(&job);
    }
    id
}

/// A Lease as the mutex sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MutexState {
    /// Current holder; None or empty when released.
    pub holder: Option<String>,
    /// When the holder acquired it (Unix seconds; RFC 3339 in JSON).
    #[serde(serialize_with = "rfc3339")]
    pub since: Option<i64>,
    /// Last renewal (Unix seconds; RFC 3339 in JSON).
    #[serde(serialize_with = "rfc3339")]
    pub renewed: Option<i64>,
    /// Lease duration in seconds.
    pub duration_seconds: i64,
    /// `renewTime + leaseDurationSeconds` (Unix seconds; RFC 3339 in JSON).
    #[serde(serialize_with = "rfc3339")]
    pub expires: Option<i64>,
    #[serde(skip)]
    resource_version: Option<String>,
    #[serde(skip)]
    transitions: i32,
}

fn rfc3339<S: serde::Serializer>(t: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&format_rfc3339(*t)),
        None => s.serialize_none(),
    }
}

impl MutexState {
    fn from_lease(lease: &Lease) -> MutexState {
        let spec = lease.spec.clone().unwrap_or_default();
        let secs = |t: &Option<MicroTime>| t.as_ref().map(|t| t.0.as_second());
        let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0));
        let renewed = secs(&spec.renew_time).or(secs(&spec.acquire_time));
        MutexState {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            since: secs(&spec.acquire_time),
            renewed,
            duration_seconds: duration,
            expires: renewed.map(|r| r + duration),
            resource_version: lease.metadata.resource_version.clone(),
            transitions: spec.lease_transitions.unwrap_or(0),
        }
    }

    /// Held by someone, judged by the local clock (for one-shot readers).
    pub fn is_held_at(&self, now_unix: i64) -> bool {
        self.holder.is_some() && self.expires.is_some_and(|e| e > now_unix)
    }

    /// One line for humans: `held by X since T (expires in 12s)`.
    pub fn describe(&self, now_unix: i64) -> String {
        let holder = self.holder.as_deref().unwrap_or("nobody");
        let since = self
            .since
            .map(|s| format!(" since {}", format_rfc3339(s)))
            .unwrap_or_default();
        let expiry = match self.expires {
            Some(e) if e > now_unix => {
                format!(
                    ", expires in {} unless renewed",
                    format_duration(e - now_unix)
                )
            }
            Some(e) => format!(", expired {} ago", format_duration(now_unix - e)),
            None => String::new(),
        };
        format!("{holder}{since}{expiry}")
    }

    fn same_record(&self, other: &MutexState) -> bool {
        self.resource_version == other.resource_version
    }
}

/// Failures of the mutex.
#[derive(Debug, thiserror::Error)]
pub enum MutexError {
    /// Another run kept the mutex past `--lock-timeout`.
    #[error(
        "timed out after {waited} waiting for the mutex (Lease {lease:?}) held by {holder}; \
         helm was not run. Retry later, raise --lock-timeout, or if that run is gone wait \
         for the lease to expire"
    )]
    Timeout {
        /// Lease name.
        lease: String,
        /// Holder description.
        holder: String,
        /// How long we waited.
        waited: String,
    },
    /// Leases may not be used by this identity.
    #[error(
        "cannot take the per-release mutex: the API forbids {verb} on Lease {lease:?} in \
         namespace {namespace:?} ({message}). Grant the rule `apiGroups: [coordination.k8s.io], \
         resources: [leases], verbs: [get, create, update]` in that namespace, or pass \
         --no-serialize to run unserialized; helm was not run"
    )]
    Forbidden {
        /// Lease name.
        lease: String,
        /// Namespace.
        namespace: String,
        /// The verb refused.
        verb: &'static str,
        /// The API's message.
        message: String,
    },
    /// The namespace does not exist (helm will report it).
    #[error("namespace {0:?} does not exist")]
    NamespaceMissing(String),
    /// Any other API failure.
    #[error("mutex Lease {lease:?}: {source}")]
    Api {
        /// Lease name.
        lease: String,
        /// Cause.
        #[source]
        source: StoreError,
    },
    /// Interrupted while waiting.
    #[error("interrupted while waiting for the mutex; helm was not run")]
    Interrupted,
}

/// Reads the mutex without taking it (for `check` and `status`).
pub async fn peek(
    client: &Client,
    namespace: &str,
    release: &str,
) -> Result<Option<MutexState>, StoreError> {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let name = lease_name(release);
    let lease = with_retry(|| async { Ok(api.get_opt(&name).await?) }).await?;
    Ok(lease.as_ref().map(MutexState::from_lease))
}

fn micro_now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// How a held mutex ended.
#[derive(Debug, Default, Clone)]
pub struct HoldReport {
    /// Set when the Lease was lost while held (taken by another holder, or not renewed in
    /// time); the text says how.
    pub lost: Option<String>,
}

/// A held mutex; renewed in the background until [`Held::release`].
pub struct Held {
    api: Api<Lease>,
    name: String,
    identity: String,
    stop: watch::Sender<bool>,
    renewer: tokio::task::JoinHandle<HoldReport>,
    /// Holder we took over from after it expired, if any.
    pub took_over_from: Option<String>,
}

/// Options for acquiring.
#[derive(Clone, Debug)]
pub struct AcquireOptions {
    /// Give up after this long while a live holder keeps it.
    pub timeout: Duration,
    /// Lease duration to write.
    pub lease_duration: Duration,
}

/// Takes the mutex, waiting (polling with jitter) while a live holder has it.
/// `on_wait` is called with a description of the holder whenever it changes.
pub async fn acquire(
    client: &Client,
    namespace: &str,
    release: &str,
    options: &AcquireOptions,
    mut on_wait: impl FnMut(&str),
) -> Result<Held, MutexError> {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let name = lease_name(release);
    let identity = holder_identity();
    let started = Instant::now();
    let api_err = |source: StoreError| classify(source, &name, namespace);
    // client-go semantics: the record we saw and when we first saw it.
    let mut observed: Option<(MutexState, Instant)> = None;
    let mut last_reported: Option<String> = None;
    loop {
        let current = with_retry(|| async { Ok(api.get_opt(&name).await?) })
            .await
            .map_err(&api_err)?;
        let duration_secs = options.lease_duration.as_secs().max(1) as i32;
        match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(namespace.to_string()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(identity.clone()),
                        lease_duration_seconds: Some(duration_secs),
                        acquire_time: Some(micro_now()),
                        renew_time: Some(micro_now()),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                match api.create(&PostParams::default(), &lease).await {
                    Ok(created) => {
                        return Ok(start_renewing(api, name, identity, created, options, None))
                    }
                    Err(e) => {
                        let e = StoreError::from(e);
                        // Lost the race to create it: look again.
                        if e.code() != Some(409) && !e.is_transient() {
                            return Err(api_err(e));
                        }
                    }
                }
            }
            Some(lease) => {
                let state = MutexState::from_lease(&lease);
                let now = Instant::now();
                let changed = observed
                    .as_ref()
                    .is_none_or(|(seen, _)| !seen.same_record(&state));
                if changed {
                    observed = Some((state.clone(), now));
                }
                let observed_at = observed.as_ref().map(|(_, at)| *at).unwrap_or(now);
                let local_expired = now.duration_since(observed_at)
                    >= Duration::from_secs(state.duration_seconds.max(0) as u64);
                let free = state.holder.is_none() || state.holder.as_deref() == Some(&identity);
                if free || local_expired {
                    let took_over = (!free).then(|| state.holder.clone()).flatten();
                    let mut updated = lease.clone();
                    let spec = updated.spec.get_or_insert_with(Default::default);
                    spec.holder_identity = Some(identity.clone());
                    spec.lease_duration_seconds = Some(duration_secs);
                    spec.acquire_time = Some(micro_now());
                    spec.renew_time = Some(micro_now());
                    spec.lease_transitions =
                        Some(state.transitions + i32::from(state.holder.is_some()));
                    // replace() carries the resourceVersion we read: 409 if someone moved first.
                    match api.replace(&name, &PostParams::default(), &updated).await {
                        Ok(replaced) => {
                            return Ok(start_renewing(
                                api, name, identity, replaced, options, took_over,
                            ))
                        }
                        Err(e) => {
                            let e = StoreError::from(e);
                            if e.code() != Some(409) && !e.is_transient() {
                                return Err(api_err(e));
                            }
                        }
                    }
                    continue;
                }
                let description = state.describe(now_unix());
                let holder_key = state.holder.clone().unwrap_or_default();
                if last_reported.as_deref() != Some(holder_key.as_str()) {
                    on_wait(&description);
                    last_reported = Some(holder_key);
                }
                if started.elapsed() >= options.timeout {
                    return Err(MutexError::Timeout {
                        lease: name,
                        holder: description,
                        waited: format_duration(started.elapsed().as_secs() as i64),
                    });
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(poll_interval()) => {}
            _ = interrupted() => return Err(MutexError::Interrupted),
        }
    }
}

async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

/// 500 ms to 1 s: frequent enough that serialized pipelines follow each other quickly,
/// jittered so waiting runs do not hit the API in lockstep.
fn poll_interval() -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let jitter = u64::from(nanos ^ std::process::id().wrapping_mul(2_654_435_761)) % 500;
    Duration::from_millis(500 + jitter)
}

fn classify(e: StoreError, lease: &str, namespace: &str) -> MutexError {
    match &e {
        // A 403 arrives classified (cluster::classify); its cause is the API's message.
        StoreError::Connection(f) if f.code() == Some(403) => MutexError::Forbidden {
            lease: lease.to_string(),
            namespace: namespace.to_string(),
            verb: "get/create/update",
            message: f.cause.clone(),
        },
        StoreError::Api {
            code: 404, message, ..
        } if message.contains("namespaces") => MutexError::NamespaceMissing(namespace.to_string()),
        _ => MutexError::Api {
            lease: lease.to_string(),
            source: e,
        },
    }
}

fn start_renewing(
    api: Api<Lease>,
    name: String,
    identity: String,
    lease: Lease,
    options: &AcquireOptions,
    took_over_from: Option<String>,
) -> Held {
    let (stop, mut stopped) = watch::channel(false);
    let period = options.lease_duration / 3;
    let deadline = options.lease_duration;
    let renewer = {
        let api = api.clone();
        let name = name.clone();
        let identity = identity.clone();
        tokio::spawn(async move {
            let mut lease = lease;
            let mut last_ok = Instant::now();
            let mut report = HoldReport::default();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = stopped.changed() => return report,
                }
                if report.lost.is_some() {
                    continue;
                }
                let mut renewed = lease.clone();
                if let Some(spec) = renewed.spec.as_mut() {
                    spec.renew_time = Some(micro_now());
                }
                match api.replace(&name, &PostParams::default(), &renewed).await {
                    Ok(l) => {
                        lease = l;
                        last_ok = Instant::now();
                    }
                    Err(e) => {
                        let e = StoreError::from(e);
                        if e.code() == Some(409) {
                            // Someone wrote the Lease: still ours? Then renew from it.
                            match api.get_opt(&name).await {
                                Ok(Some(l))
                                    if l.spec
                                        .as_ref()
                                        .and_then(|s| s.holder_identity.as_deref())
                                        == Some(identity.as_str()) =>
                                {
                                    lease = l;
                                }
                                Ok(Some(l)) => {
                                    let state = MutexState::from_lease(&l);
                                    report.lost = Some(format!(
                                        "taken over by {}",
                                        state.holder.unwrap_or_else(|| "nobody (released)".into())
                                    ));
                                }
                                Ok(None) => report.lost = Some("the Lease was deleted".into()),
                                Err(_) => {}
                            }
                        }
                        if report.lost.is_none() && last_ok.elapsed() >= deadline {
                            report.lost = Some(format!(
                                "not renewed for {} ({e})",
                                format_duration(last_ok.elapsed().as_secs() as i64)
                            ));
                        }
                    }
                }
            }
        })
    };
    Held {
        api,
        name,
        identity,
        stop,
        renewer,
        took_over_from,
    }
}

impl Held {
    /// Stops renewing and releases the Lease the way client-go does (holder cleared,
    /// duration 1 s) so the next waiter proceeds at once. Returns how the hold went.
    pub async fn release(self) -> HoldReport {
        let _ = self.stop.send(true);
        let report = self.renewer.await.unwrap_or_default();
        if report.lost.is_some() {
            return report;
        }
        for _ in 0..4 {
            let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
                break;
            };
            let ours = lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(self.identity.as_str());
            if !ours {
                break;
            }
            if let Some(spec) = lease.spec.as_mut() {
                spec.holder_identity = Some(String::new());
                spec.lease_duration_seconds = Some(1);
                spec.renew_time = Some(micro_now());
                spec.acquire_time = Some(micro_now());
            }
            match self
                .api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renew: i64, duration: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                resource_version: Some("7".into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(duration),
                acquire_time: Some(MicroTime(Timestamp::from_second(renew - 30).unwrap())),
                renew_time: Some(MicroTime(Timestamp::from_second(renew).unwrap())),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn names_match_helm_lock() {
        assert_eq!(lease_name("db"), "helm-lock-db");
    }

    #[test]
    fn liveness_for_one_shot_readers() {
        let s = MutexState::from_lease(&lease("ci-1", 1000, 15));
        assert!(s.is_held_at(1010));
        assert!(!s.is_held_at(1015));
        assert!(s.describe(1010).contains("ci-1 since"));
        assert!(s.describe(1010).contains("expires in 5s"));
        assert!(s.describe(1020).contains("expired 5s ago"));
        let released = MutexState::from_lease(&lease("", 1000, 1));
        assert!(released.holder.is_none());
        assert!(!released.is_held_at(1000));
    }

    #[test]
    fn identity_names_the_process() {
        let id = holder_identity();
        assert!(id.starts_with("guarded-upgrade@"), "{id}");
        assert!(id.contains(&format!("pid-{}", std::process::id())), "{id}");
    }
}
