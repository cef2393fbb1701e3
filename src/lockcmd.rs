//! `lock`, `unlock`, `status` and `locks`: the lock lifecycle on Helm's own records.
//!
//! Every write is a merge patch carrying the record's resourceVersion (a precondition:
//! the API answers 409 if the record changed since it was read). The latest record is
//! written first; it is the one every reader trusts, so a concurrent change there aborts
//! the command before anything else is touched.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use serde::Serialize;

use crate::cli::{LockArgs, LocksArgs, StatusArgs, UnlockArgs};
use crate::cluster::{self, ClusterFlags, DriverKind, HelmEnv};
use crate::decision::LockKind;
use crate::exit::{Failure, EXIT_OK};
use crate::lock::{self, LockSpec};
use crate::release::{self, ReleaseStatus};
use crate::report::LockReport;
use crate::state::{self, ReleaseView};
use crate::storage::{KubeStore, RecordHeader, ReleaseStore, StoreError, LABEL_STATUS};
use crate::time::{format_rfc3339, now_unix, parse_duration, parse_rfc3339};
use crate::version::{ChartVersion, Constraint};

/// How many times a record write is retried after a 409 on a non-latest record.
const CONFLICT_RETRIES: usize = 5;

async fn with_store<T>(cluster_args: &ClusterFlags, f: impl AsyncStoreFn<T>) -> Result<T, Failure> {
    let env = HelmEnv::from_process();
    let driver = DriverKind::from_helm_driver(env.driver.as_deref())
        .map_err(|e| Failure::refused(e.to_string()))?;
    let cluster = cluster::connect(cluster_args, &env)
        .await
        .map_err(|e| Failure::refused(e.to_string()))?;
    let ctx = CommandContext {
        kube_user: cluster.user.clone(),
        client: cluster.client.clone(),
    };
    match driver {
        DriverKind::Secret => {
            f.call(
                &KubeStore::<Secret>::new(cluster.client, &cluster.namespace),
                &ctx,
            )
            .await
        }
        DriverKind::ConfigMap => {
            f.call(
                &KubeStore::<ConfigMap>::new(cluster.client, &cluster.namespace),
                &ctx,
            )
            .await
        }
    }
}

/// What a command body gets besides the store.
struct CommandContext {
    /// The kubeconfig user, default "who" of a lock.
    kube_user: Option<String>,
    /// For objects other than release records (the mutex Lease).
    client: kube::Client,
}

/// A command body generic over the store (closures cannot be generic, so a trait).
#[allow(async_fn_in_trait)]
trait AsyncStoreFn<T> {
    async fn call<S: ReleaseStore>(self, store: &S, ctx: &CommandContext) -> Result<T, Failure>;
}

fn store_failure(release: &str, namespace: &str, step: &str, e: &dyn std::fmt::Display) -> Failure {
    Failure::refused(format!(
        "release {release:?} in namespace {namespace:?}: {step}: {e}"
    ))
}

/// Validated `lock` inputs (malformed ones are usage errors, exit 2).
fn lock_spec(args: &LockArgs, by: Option<String>, now: i64) -> Result<LockSpec, Failure> {
    if let Some(pin) = &args.pin {
        if ChartVersion::parse(pin).is_err() && Constraint::parse(pin).is_err() {
            return Err(Failure::usage(format!(
                "--pin {pin:?} is neither a version nor a version constraint \
                 (examples: 1.4.3, 1.4.x, \">=1.4 <2\", ^1.4)"
            )));
        }
    }
    // The key a pin constrains (issue 11); chart-version is stored as no key.
    let pin_key = crate::change::pin_key(args.compare.as_deref()).map_err(Failure::usage)?;
    let expires_at = match &args.expires {
        None => None,
        Some(text) => {
            let at = match parse_duration(text) {
                Some(d) => now + d.as_secs() as i64,
                None => parse_rfc3339(text).ok_or_else(|| {
                    Failure::usage(format!(
                        "--expires {text:?} is neither a duration (90s, 30m, 4h, 7d) nor an \
                         RFC 3339 timestamp (2026-12-01T00:00:00Z)"
                    ))
                })?,
            };
            if at <= now {
                return Err(Failure::usage(format!(
                    "--expires {text:?} is not in the future ({}); a lock must expire later \
                     than now",
                    format_rfc3339(at)
                )));
            }
            Some(at)
        }
    };
    for (flag, text) in [
        ("--reason", &args.reason),
        ("--by", &by),
        ("--pin", &args.pin),
    ] {
        if let Some(text) = text {
            if text.len() > lock::MAX_TEXT_BYTES {
                return Err(Failure::usage(format!(
                    "{flag} is {} bytes long; at most {} are kept with the release",
                    text.len(),
                    lock::MAX_TEXT_BYTES
                )));
            }
        }
    }
    let kind = if args.hard {
        LockKind::Hard
    } else if args.pin.is_some() {
        LockKind::Pin
    } else {
        LockKind::Soft
    };
    Ok(LockSpec {
        kind,
        reason: args.reason.clone(),
        by,
        since: now,
        expires_at,
        pin: args.pin.clone(),
        pin_key,
    })
}

/// `guarded-upgrade lock`.
pub async fn lock(args: LockArgs) -> Result<i32, Failure> {
    // Validate before touching the cluster.
    lock_spec(&args, args.by.clone(), now_unix())?;
    struct Body(LockArgs);
    impl AsyncStoreFn<i32> for Body {
        async fn call<S: ReleaseStore>(
            self,
            store: &S,
            ctx: &CommandContext,
        ) -> Result<i32, Failure> {
            let args = self.0;
            let by = args
                .by
                .clone()
                .or_else(|| lock::default_by(ctx.kube_user.as_deref()));
            let spec = lock_spec(&args, by, now_unix())?;
            lock_release(store, &args.release, &spec).await?;
            let mut line = format!(
                "locked: release {:?} in {:?} ({})",
                args.release,
                store.namespace(),
                spec.kind.as_str()
            );
            if let Some(pin) = &spec.pin {
                line.push_str(&format!(", pinned to {pin}"));
                if let Some(key) = &spec.pin_key {
                    line.push_str(&format!(" on {key}"));
                }
            }
            if let Some(t) = spec.expires_at {
                line.push_str(&format!(", expires {}", format_rfc3339(t)));
            }
            if let Some(r) = &spec.reason {
                line.push_str(&format!(": {r}"));
            }
            if args.output == "json" {
                let report = LockReport::new(&to_state(&spec, None), now_unix());
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
            }
            eprintln!("{line}");
            Ok(EXIT_OK)
        }
    }
    with_store(&args.cluster.clone(), Body(args)).await
}

fn to_state(spec: &LockSpec, hard_original: Option<String>) -> crate::decision::LockState {
    crate::decision::LockState {
        kind: spec.kind,
        reason: spec.reason.clone(),
        by: spec.by.clone(),
        since: Some(format_rfc3339(spec.since)),
        expires_at: spec.expires_at,
        pin: spec.pin.clone(),
        pin_key: spec.pin_key.clone(),
        hard_original_status: hard_original,
    }
}

async fn existing_release<S: ReleaseStore>(
    store: &S,
    release: &str,
) -> Result<Vec<RecordHeader>, Failure> {
    let ns = store.namespace();
    let headers = store
        .list_headers(release)
        .await
        .map_err(|e| store_failure(release, ns, "listing records", &e))?;
    match headers.last() {
        None => Err(Failure::refused(format!(
            "release {release:?} not found in namespace {ns:?} ({} records); nothing changed. \
             Check the name, -n/--namespace and HELM_DRIVER",
            store.kind()
        ))),
        Some(latest) if latest.status == ReleaseStatus::Uninstalled => {
            Err(Failure::refused(format!(
                "release {release:?} in namespace {ns:?} is uninstalled (revision {}); nothing \
             to lock",
                latest.revision
            )))
        }
        Some(_) => Ok(headers),
    }
}

/// Writes `spec` onto every record of the release (latest first, atomically per record).
async fn lock_release<S: ReleaseStore>(
    store: &S,
    release: &str,
    spec: &LockSpec,
) -> Result<(), Failure> {
    let ns = store.namespace().to_string();
    let headers = existing_release(store, release).await?;
    let latest = headers
        .last()
        .cloned()
        .expect("existing_release has records");
    let current_hard = latest.labels.contains_key(lock::KEY_HARD_STATUS);
    if latest.status.is_pending() && !current_hard {
        return Err(Failure::refused(format!(
            "release {release:?} in namespace {ns:?}: the latest revision {} is {} (an \
             install/upgrade/rollback is in progress or was interrupted); nothing changed. \
             Wait for it, or inspect with `helm history {release} -n {ns}`",
            latest.revision, latest.status
        )));
    }
    if let Some(existing) = lock::spec_from_labels(&latest.labels) {
        // A hard lock is only in force on a record it marked pending-upgrade: after a
        // `helm rollback` the new revision carries the labels but not the status, and
        // re-running `lock --hard` (as docs/locks.md advises) must mark it again.
        if existing.same_as(spec) && (spec.kind != LockKind::Hard || current_hard) {
            return Ok(());
        }
    }
    let wanted = spec.labels();
    // Switching a hard lock off restores the record before the soft labels go on.
    if current_hard && spec.kind != LockKind::Hard {
        release_hard_lock(store, release, &latest, false, false).await?;
        return Box::pin(lock_release(store, release, spec)).await;
    }
    if spec.kind == LockKind::Hard && !current_hard {
        hard_lock_record(store, release, &latest, &wanted).await?;
    } else {
        let mut want = wanted.clone();
        keep_hard_labels(&latest.labels, &mut want);
        let changes = lock::label_changes(&latest.labels, &want);
        if !changes.is_empty() {
            let rv = latest.resource_version.clone().unwrap_or_default();
            store
                .patch_labels(&latest.name, &rv, &changes)
                .await
                .map_err(|e| conflict_or(e, release, &ns, &latest.name))?;
        }
    }
    label_other_records(store, release, &headers[..headers.len() - 1], &wanted).await
}

fn keep_hard_labels(current: &BTreeMap<String, String>, wanted: &mut BTreeMap<String, String>) {
    for key in [
        lock::KEY_HARD_STATUS,
        lock::KEY_HARD_DIGEST,
        lock::KEY_HARD_REVISION,
    ] {
        if let Some(v) = current.get(key) {
            wanted.insert(key.to_string(), v.clone());
        }
    }
}

fn conflict_or(e: StoreError, release: &str, ns: &str, record: &str) -> Failure {
    if e.code() == Some(409) {
        Failure::refused(format!(
            "release {release:?} in namespace {ns:?}: record {record} was changed by someone \
             else while locking/unlocking (409 Conflict); nothing was changed on it. Run the \
             command again"
        ))
    } else {
        store_failure(release, ns, &format!("updating {record}"), &e)
    }
}

/// Puts `wanted` on the older records, re-reading a record when it moved on (409).
async fn label_other_records<S: ReleaseStore>(
    store: &S,
    release: &str,
    others: &[RecordHeader],
    wanted: &BTreeMap<String, String>,
) -> Result<(), Failure> {
    let ns = store.namespace().to_string();
    for header in others {
        let mut header = header.clone();
        for attempt in 0..=CONFLICT_RETRIES {
            let mut want = wanted.clone();
            keep_hard_labels(&header.labels, &mut want);
            let changes = lock::label_changes(&header.labels, &want);
            if changes.is_empty() {
                break;
            }
            let rv = header.resource_version.clone().unwrap_or_default();
            match store.patch_labels(&header.name, &rv, &changes).await {
                Ok(_) => break,
                Err(e) if e.code() == Some(409) && attempt < CONFLICT_RETRIES => {
                    header = store
                        .get(&header.name)
                        .await
                        .map_err(|e| store_failure(release, &ns, "re-reading a record", &e))?
                        .header;
                }
                // Pruned by helm meanwhile: nothing to label.
                Err(e) if e.code() == Some(404) => break,
                Err(e) => return Err(conflict_or(e, release, &ns, &header.name)),
            }
        }
    }
    Ok(())
}

/// Makes the latest record `pending-upgrade` (label and encoded release) and records what
/// it was, so plain `helm upgrade` refuses and `unlock` can restore it exactly.
async fn hard_lock_record<S: ReleaseStore>(
    store: &S,
    release: &str,
    latest: &RecordHeader,
    wanted: &BTreeMap<String, String>,
) -> Result<(), Failure> {
    let ns = store.namespace().to_string();
    let record = store
        .get(&latest.name)
        .await
        .map_err(|e| store_failure(release, &ns, &format!("reading {}", latest.name), &e))?;
    let mut json = release::decode_release_json(&record.payload)
        .map_err(|e| store_failure(release, &ns, &format!("decoding {}", latest.name), &e))?;
    let original = json
        .pointer("/info/status")
        .and_then(|s| s.as_str())
        .unwrap_or(record.header.status.as_str())
        .to_string();
    release::set_release_status(&mut json, ReleaseStatus::PendingUpgrade.as_str())
        .map_err(|e| store_failure(release, &ns, "changing the status", &e))?;
    let payload = release::encode_release_json(&json)
        .map_err(|e| store_failure(release, &ns, "encoding the release", &e))?;
    let mut want = wanted.clone();
    want.insert(
        LABEL_STATUS.to_string(),
        ReleaseStatus::PendingUpgrade.as_str().to_string(),
    );
    want.insert(lock::KEY_HARD_STATUS.to_string(), original);
    want.insert(
        lock::KEY_HARD_DIGEST.to_string(),
        lock::payload_digest(payload.as_bytes()),
    );
    want.insert(
        lock::KEY_HARD_REVISION.to_string(),
        latest.revision.to_string(),
    );
    let changes = lock::label_changes(&record.header.labels, &want);
    let rv = record.header.resource_version.clone().unwrap_or_default();
    store
        .rewrite(&latest.name, &rv, &payload, &changes)
        .await
        .map_err(|e| conflict_or(e, release, &ns, &latest.name))?;
    Ok(())
}

/// Restores a hard-locked record's original status; refuses when it changed underneath
/// unless `force` (then only the labels are cleaned, the status left as found).
/// `superseded_since`: a newer revision was deployed meanwhile (a `helm rollback` under the
/// lock); a `deployed` original then comes back as `superseded`, as helm would have marked
/// it, instead of leaving two deployed revisions.
async fn release_hard_lock<S: ReleaseStore>(
    store: &S,
    release: &str,
    header: &RecordHeader,
    force: bool,
    superseded_since: bool,
) -> Result<(), Failure> {
    let ns = store.namespace().to_string();
    let record = store
        .get(&header.name)
        .await
        .map_err(|e| store_failure(release, &ns, &format!("reading {}", header.name), &e))?;
    let labels = &record.header.labels;
    let mut original = labels
        .get(lock::KEY_HARD_STATUS)
        .cloned()
        .unwrap_or_default();
    let digest_ok = labels.get(lock::KEY_HARD_DIGEST).map(String::as_str)
        == Some(lock::payload_digest(&record.payload).as_str());
    let summary = release::decode_release(&record.payload).ok();
    let still_pending = record.header.status == ReleaseStatus::PendingUpgrade
        && summary.as_ref().map(|s| &s.status) == Some(&ReleaseStatus::PendingUpgrade);
    let rv = record.header.resource_version.clone().unwrap_or_default();
    let mut unlabel: BTreeMap<String, String> = labels
        .iter()
        .filter(|(k, _)| !k.starts_with(lock::PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !(digest_ok
        && still_pending
        && ReleaseStatus::parse(&original) != ReleaseStatus::PendingUpgrade)
    {
        if !force {
            return Err(Failure::refused(format!(
                "release {release:?} in namespace {ns:?}: the hard-locked record {} was \
                 changed by someone else (status now {}; expected pending-upgrade as \
                 guarded-upgrade left it); not guessing, nothing changed. Inspect with \
                 `helm history {release} -n {ns}` and `kubectl get {} {} -n {ns} \
                 --show-labels`, then run `guarded-upgrade unlock {release} -n {ns} --force` to \
                 drop the lock and leave the status as it is",
                header.name,
                record.header.status,
                store.kind().to_lowercase(),
                header.name,
            )));
        }
        let changes = lock::label_changes(labels, &unlabel);
        return store
            .patch_labels(&header.name, &rv, &changes)
            .await
            .map(|_| ())
            .map_err(|e| conflict_or(e, release, &ns, &header.name));
    }
    if superseded_since && ReleaseStatus::parse(&original) == ReleaseStatus::Deployed {
        original = ReleaseStatus::Superseded.as_str().to_string();
    }
    let mut json = release::decode_release_json(&record.payload)
        .map_err(|e| store_failure(release, &ns, &format!("decoding {}", header.name), &e))?;
    release::set_release_status(&mut json, &original)
        .map_err(|e| store_failure(release, &ns, "restoring the status", &e))?;
    let payload = release::encode_release_json(&json)
        .map_err(|e| store_failure(release, &ns, "encoding the release", &e))?;
    unlabel.insert(LABEL_STATUS.to_string(), original);
    let changes = lock::label_changes(labels, &unlabel);
    store
        .rewrite(&header.name, &rv, &payload, &changes)
        .await
        .map(|_| ())
        .map_err(|e| conflict_or(e, release, &ns, &header.name))
}

/// `guarded-upgrade unlock`.
pub async fn unlock(args: UnlockArgs) -> Result<i32, Failure> {
    struct Body(UnlockArgs);
    impl AsyncStoreFn<i32> for Body {
        async fn call<S: ReleaseStore>(
            self,
            store: &S,
            _ctx: &CommandContext,
        ) -> Result<i32, Failure> {
            let args = self.0;
            let release = args.release.as_str();
            let headers = existing_release(store, release).await?;
            // Restore every record a hard lock marked (normally only the latest one).
            let mut had_lock = false;
            for (i, header) in headers.iter().enumerate().rev() {
                if header.labels.contains_key(lock::KEY_HARD_STATUS) {
                    had_lock = true;
                    let superseded_since = headers[i + 1..].iter().any(|h| {
                        let status = h
                            .labels
                            .get(lock::KEY_HARD_STATUS)
                            .map(|s| ReleaseStatus::parse(s))
                            .unwrap_or_else(|| h.status.clone());
                        matches!(status, ReleaseStatus::Deployed | ReleaseStatus::Superseded)
                    });
                    release_hard_lock(store, release, header, args.force, superseded_since).await?;
                }
            }
            let headers = existing_release(store, release).await?;
            had_lock |= headers
                .iter()
                .any(|h| h.labels.keys().any(|k| k.starts_with(lock::PREFIX)));
            let (latest, others) = headers.split_last().expect("records exist");
            let changes = lock::label_changes(&latest.labels, &BTreeMap::new());
            if !changes.is_empty() {
                let rv = latest.resource_version.clone().unwrap_or_default();
                store
                    .patch_labels(&latest.name, &rv, &changes)
                    .await
                    .map_err(|e| conflict_or(e, release, store.namespace(), &latest.name))?;
            }
            label_other_records(store, release, others, &BTreeMap::new()).await?;
            if had_lock {
                eprintln!("unlocked: release {release:?} in {:?}", store.namespace());
            } else {
                eprintln!(
                    "unlocked: release {release:?} in {:?} was not locked",
                    store.namespace()
                );
            }
            Ok(EXIT_OK)
        }
    }
    with_store(&args.cluster.clone(), Body(args)).await
}

/// JSON form of `status`.
#[derive(Debug, Serialize)]
struct StatusReport {
    release: String,
    namespace: String,
    deployed: Option<crate::report::DeployedReport>,
    latest: Option<crate::report::LatestReport>,
    lock: Option<LockReport>,
    /// What `upgrade` would do, without a target: `blocked`, `refuse` or `upgrade-if-newer`.
    upgrade: String,
    upgrade_message: String,
    /// The per-release mutex when a run holds it (null otherwise).
    mutex: Option<crate::mutex::MutexState>,
}

/// `guarded-upgrade status`.
pub async fn status(args: StatusArgs) -> Result<i32, Failure> {
    struct Body(StatusArgs);
    impl AsyncStoreFn<i32> for Body {
        async fn call<S: ReleaseStore>(
            self,
            store: &S,
            ctx: &CommandContext,
        ) -> Result<i32, Failure> {
            let args = self.0;
            let release = args.release.as_str();
            let ns = store.namespace().to_string();
            let view: ReleaseView = state::read_release(store, release)
                .await
                .map_err(|e| store_failure(release, &ns, "reading the release", &e))?;
            let Some(latest) = view.latest() else {
                return Err(Failure::refused(format!(
                    "release {release:?} not found in namespace {ns:?} ({} records)",
                    store.kind()
                )));
            };
            let now = now_unix();
            let lock_state = view.state.lock.as_ref();
            let expired = lock_state
                .and_then(|l| l.expires_at)
                .is_some_and(|t| t <= now);
            // As the decision sees it: a hard lock is in force while the latest record is
            // pending-upgrade (a rollback under the lock ends that).
            let hard_record = latest.status == ReleaseStatus::PendingUpgrade;
            let (upgrade, message) = match lock_state {
                Some(l) if l.kind == LockKind::Hard && hard_record && expired => (
                    "refuse",
                    format!(
                        "the hard lock expired but revision {} is still pending-upgrade: \
                         guarded upgrades refuse and plain `helm upgrade` fails until \
                         `guarded-upgrade unlock {release} -n {ns}`",
                        latest.revision
                    ),
                ),
                Some(l) if l.kind == LockKind::Hard && hard_record => (
                    "blocked",
                    "guarded upgrades skip it (locked); plain `helm upgrade` fails while the \
                     record is pending-upgrade"
                        .to_string(),
                ),
                Some(l) if l.kind == LockKind::Hard && !expired => (
                    "blocked",
                    format!(
                        "guarded upgrades skip it (locked); plain `helm upgrade` is NOT blocked: \
                         latest revision {} is {}, not pending-upgrade (re-run `guarded-upgrade \
                         lock {release} -n {ns} --hard`)",
                        latest.revision, latest.status
                    ),
                ),
                Some(l) if !expired && l.kind == LockKind::Soft => {
                    ("blocked", "guarded upgrades skip it (locked)".to_string())
                }
                _ if latest.status.is_pending() => (
                    "refuse",
                    format!(
                        "revision {} is {}: an operation is in progress or was interrupted",
                        latest.revision, latest.status
                    ),
                ),
                Some(l) if !expired && l.kind == LockKind::Pin => (
                    "upgrade-if-newer",
                    format!(
                        "upgrades only to newer versions matching {}{}",
                        l.pin.clone().unwrap_or_default(),
                        l.pin_key
                            .as_deref()
                            .map(|k| format!(" on {k}"))
                            .unwrap_or_default()
                    ),
                ),
                _ => (
                    "upgrade-if-newer",
                    "upgrades when the target chart version is newer".to_string(),
                ),
            };
            let report = StatusReport {
                release: release.to_string(),
                namespace: ns.clone(),
                deployed: view
                    .state
                    .last_deployed
                    .as_ref()
                    .map(crate::report::DeployedReport::from),
                latest: Some(crate::report::LatestReport {
                    revision: latest.revision,
                    status: latest.status.as_str().to_string(),
                }),
                lock: lock_state.map(|l| LockReport::new(l, now)),
                upgrade: upgrade.to_string(),
                upgrade_message: message,
                // Informational: a status without Lease RBAC still shows the release.
                mutex: crate::mutex::peek(&ctx.client, &ns, release)
                    .await
                    .ok()
                    .flatten()
                    .filter(|m| m.is_held_at(now)),
            };
            if args.output == "json" {
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
                return Ok(EXIT_OK);
            }
            println!(
                "release:   {release} (namespace {ns}, {} records)",
                store.kind()
            );
            match &report.deployed {
                Some(d) => println!(
                    "deployed:  {} {} (app {}) revision {}",
                    d.chart.as_deref().unwrap_or("?"),
                    d.version.as_deref().unwrap_or("?"),
                    d.app_version.as_deref().unwrap_or("-"),
                    d.revision
                ),
                None => println!("deployed:  none"),
            }
            println!("latest:    revision {} {}", latest.revision, latest.status);
            match &report.lock {
                None => println!("lock:      none"),
                Some(l) => {
                    println!(
                        "lock:      {}{}",
                        l.kind,
                        match (l.expired, report.upgrade.as_str()) {
                            (false, _) => "",
                            (true, "refuse") => " (expired, record still pending-upgrade)",
                            (true, _) => " (expired, ignored)",
                        }
                    );
                    for (name, value) in [
                        ("reason", &l.reason),
                        ("by", &l.by),
                        ("since", &l.since),
                        ("expires", &l.expires),
                        ("pin", &l.pin),
                        ("pin-key", &l.pin_key),
                    ] {
                        if let Some(v) = value {
                            println!("  {name:<8} {v}");
                        }
                    }
                }
            }
            println!("upgrade:   {}", report.upgrade_message);
            match &report.mutex {
                Some(m) => println!(
                    "mutex:     {} held by {}",
                    crate::mutex::lease_name(release),
                    m.describe(now)
                ),
                None => println!("mutex:     free"),
            }
            Ok(EXIT_OK)
        }
    }
    with_store(&args.cluster.clone(), Body(args)).await
}

/// One row of `locks`.
#[derive(Debug, Serialize)]
struct LockRow {
    release: String,
    namespace: String,
    #[serde(flatten)]
    lock: LockReport,
}

/// `guarded-upgrade locks`.
pub async fn locks(args: LocksArgs) -> Result<i32, Failure> {
    struct Body(LocksArgs);
    impl AsyncStoreFn<i32> for Body {
        async fn call<S: ReleaseStore>(
            self,
            store: &S,
            _ctx: &CommandContext,
        ) -> Result<i32, Failure> {
            let args = self.0;
            let scope = if args.all_namespaces {
                "all namespaces".to_string()
            } else {
                format!("namespace {:?}", store.namespace())
            };
            // One metadata list of every helm record; a release is locked when its latest
            // record carries the lock label.
            let headers = store
                .list_headers_matching("owner=helm", args.all_namespaces)
                .await
                .map_err(|e| Failure::refused(format!("listing helm records in {scope}: {e}")))?;
            let mut latest: BTreeMap<(String, String), &RecordHeader> = BTreeMap::new();
            for h in &headers {
                let Some(name) = h.labels.get("name") else {
                    continue;
                };
                let key = (h.namespace.clone(), name.clone());
                if latest.get(&key).is_none_or(|cur| cur.revision < h.revision) {
                    latest.insert(key, h);
                }
            }
            let now = now_unix();
            let rows: Vec<LockRow> = latest
                .into_iter()
                .filter(|(_, h)| h.status != ReleaseStatus::Uninstalled)
                .filter_map(|((namespace, release), h)| {
                    let state = lock::from_labels(&h.labels)?;
                    Some(LockRow {
                        release,
                        namespace,
                        lock: LockReport::new(&state, now),
                    })
                })
                .collect();
            if args.output == "json" {
                println!(
                    "{}",
                    serde_json::to_string(&rows).unwrap_or_else(|_| "[]".into())
                );
                return Ok(EXIT_OK);
            }
            if rows.is_empty() {
                eprintln!("no locked releases in {scope}");
                return Ok(EXIT_OK);
            }
            println!(
                "{:<20} {:<16} {:<5} {:<20} {:<22} {:<12} REASON",
                "NAMESPACE", "RELEASE", "KIND", "BY", "EXPIRES", "PIN"
            );
            for r in rows {
                let expires = match (&r.lock.expires, r.lock.expired) {
                    (Some(t), true) => format!("{t} (expired)"),
                    (Some(t), false) => t.clone(),
                    (None, _) => "-".into(),
                };
                println!(
                    "{:<20} {:<16} {:<5} {:<20} {:<22} {:<12} {}",
                    r.namespace,
                    r.release,
                    r.lock.kind,
                    r.lock.by.as_deref().unwrap_or("-"),
                    expires,
                    r.lock.pin.as_deref().unwrap_or("-"),
                    r.lock.reason.as_deref().unwrap_or("")
                );
            }
            Ok(EXIT_OK)
        }
    }
    with_store(&args.cluster.clone(), Body(args)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pin: Option<&str>, expires: Option<&str>, hard: bool) -> LockArgs {
        LockArgs {
            release: "db".into(),
            reason: Some("incident".into()),
            pin: pin.map(str::to_string),
            compare: None,
            expires: expires.map(str::to_string),
            hard,
            by: None,
            output: "text".into(),
            cluster: ClusterFlags::default(),
        }
    }

    #[test]
    fn lock_inputs_are_validated_before_any_io() {
        let now = 1_700_000_000;
        let s = lock_spec(&args(Some("1.4.x"), Some("4h"), false), None, now).unwrap();
        assert_eq!(s.kind, LockKind::Pin);
        assert_eq!(s.expires_at, Some(now + 4 * 3600));
        let s = lock_spec(&args(None, Some("2030-01-01T00:00:00Z"), true), None, now).unwrap();
        assert_eq!(s.kind, LockKind::Hard);
        for (pin, expires, needle) in [
            (Some("not a version"), None, "--pin"),
            (None, Some("soon"), "--expires"),
            (None, Some("2001-01-01T00:00:00Z"), "not in the future"),
        ] {
            let err = lock_spec(&args(pin, expires, false), None, now).unwrap_err();
            assert_eq!(err.code, crate::exit::EXIT_USAGE);
            assert!(err.message.contains(needle), "{}", err.message);
        }
        let mut long = args(None, None, false);
        long.reason = Some("x".repeat(1000));
        assert!(lock_spec(&long, None, now)
            .unwrap_err()
            .message
            .contains("--reason"));
    }
}
