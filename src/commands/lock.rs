//! `lock`: writes the lock onto every record of the release (the writes are planned by
//! `core::lock::plan`, executed by `records.rs`), and for a hard lock has the store's
//! enforcer refuse changes.

use crate::adapters::enforce::{Availability, Installed};
use crate::adapters::signals::Interrupts;
use crate::adapters::storage::{ReleaseStore, Store};
use crate::cli::OutputFormat;
use crate::core::lock::plan::{self as lock_plan, Planned, Refusal};
use crate::core::lock::{self, Lock, LockKind};
use crate::core::time::{format_rfc3339, now_unix};
use crate::error::{Error, Exit};
use crate::output::{self, report::LockReport};
use crate::plan::LockPlan;

use super::records::{records_of, Scope};
use super::session;

/// Runs `lock`.
pub(super) async fn run(plan: LockPlan) -> Result<Exit, Error> {
    let session = session::connect(&plan.cluster, None).await?;
    let mut spec = plan.spec;
    if spec.by.is_none() {
        spec.by = lock::default_by(
            plan.ci_user.as_deref(),
            session.user.as_deref(),
            plan.login_user.as_deref(),
        );
    }
    let (release, namespace) = (&plan.release, &session.namespace);
    let scope = Scope {
        store: &session.store,
        release,
        interrupts: Interrupts::default(),
    };
    // Refused, or already in place on every record (nothing to write, not even the
    // mutex), before anything else.
    let planned = planned(&scope, &spec).await?;
    // Whether the store's enforcer can enforce a hard lock is known before anything is
    // written (`--enforce` stops here when it cannot).
    let enforcer = session.enforcer();
    let available = match spec.kind {
        LockKind::Hard => Some(enforcer.availability(release).await),
        _ => None,
    };
    if let (true, Some(Availability::Unavailable(why))) = (plan.enforce, &available) {
        return Err(scope.refused(format!(
            "--enforce: the hard lock cannot be enforced by {}: {why}; nothing changed \
             (without --enforce the lock is set, labels only)",
            enforcer.who()
        )));
    }
    let latest = planned
        .records
        .last()
        .map(|r| r.name.clone())
        .unwrap_or_default();
    if !planned.converged() {
        let interrupts = Interrupts::listen();
        session::serialized(&session, release, async {
            // An enforced lock refuses every record write: lift it first (`install` below
            // puts it back for a hard lock).
            let lifted = planned.lift
                && session
                    .lift_enforcement(release, true, Some(&latest))
                    .await?;
            let lifted = lifted.then(|| enforcer.who());
            lock_release(&session.store, release, &spec, interrupts, lifted).await
        })
        .await?;
    }
    // The lock the records carry now: the same lock already there kept its since-time,
    // and the enforcement's parameters must say what the records say (`status` compares).
    let on_records = planned
        .records
        .last()
        .and_then(|r| lock::from_labels(&r.labels).ok().flatten())
        .filter(|l| l.same_as(&spec))
        .unwrap_or_else(|| spec.clone());
    let installed = match &available {
        Some(available) => Some(
            enforcer
                .install(release, &latest, &on_records, available)
                .await,
        ),
        None => None,
    };
    if let (true, Some(Installed::NotEnforced { why })) = (plan.enforce, &installed) {
        return Err(scope.refused(format!(
            "--enforce: the hard lock is set (labels only) but {} does not enforce it: {why}. \
             Run the same command again, or `guarded-upgrade unlock {release} -n {namespace}`",
            enforcer.who(),
        )));
    }
    if plan.format == OutputFormat::Json {
        output::lock_json(&LockReport::new(&spec, now_unix()));
    }
    output::progress(&locked_line(release, namespace, &spec));
    match installed {
        Some(Installed::Enforced { how, notes }) => {
            output::progress(&format!(
                "enforced: {} refuses changes to release {release:?} in {namespace:?} ({how})",
                enforcer.who()
            ));
            for note in notes {
                output::note(&note);
            }
        }
        Some(Installed::NotEnforced { why }) => output::warning(&format!(
            "the hard lock is {}; plain helm upgrade and install are refused (pending record), \
             but helm rollback, helm uninstall and {} are not",
            enforcer.not_enforced(&why),
            enforcer.bypass()
        )),
        None => {}
    }
    Ok(Exit::Success)
}

/// The release's records read now, and the writes that lock them with `spec`; a refusal
/// when a helm operation holds the latest record.
async fn planned(scope: &Scope<'_>, spec: &Lock) -> Result<Planned, Error> {
    let headers = scope.existing_release().await?;
    lock_plan::plan_lock(&records_of(&headers), spec).map_err(|refusal| match refusal {
        Refusal::Pending { revision, status } => scope.refused(format!(
            "the latest revision {revision} is {status} (an install/upgrade/rollback is in \
             progress or was interrupted); nothing changed. Wait for it, or inspect with `helm \
             history {} -n {}`",
            scope.release,
            scope.store.namespace()
        )),
    })
}

/// `locked: release "db" in "shared" (pin), pinned to 1.4.x, expires …: reason`.
fn locked_line(release: &str, namespace: &str, spec: &Lock) -> String {
    let mut line = format!(
        "locked: release {release:?} in {namespace:?} ({})",
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
    // An empty reason (`--reason ''`) adds nothing: no dangling `: `.
    if let Some(r) = spec.reason.as_deref().filter(|r| !r.is_empty()) {
        line.push_str(&format!(": {r}"));
    }
    line
}

/// Writes `spec` onto every record of the release, as planned now (under the mutex), and
/// confirms it by reading the records back. A re-run of an interrupted lock completes it.
/// `lifted`: who no longer enforces the lock because this run lifted it.
pub(super) async fn lock_release(
    store: &Store,
    release: &str,
    spec: &Lock,
    interrupts: Interrupts,
    lifted: Option<&str>,
) -> Result<(), Error> {
    let scope = Scope {
        store,
        release,
        interrupts,
    };
    let planned = planned(&scope, spec)
        .await
        .map_err(|e| scope.after_lift(e, lifted))?;
    scope.execute(&planned, false, lifted).await?;
    // `locked:` is said only of what the records show.
    scope
        .confirm("lock", "locked as asked", |records| {
            lock_plan::lock_shortfall(records, spec)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::state::testkit::{block_on, rev, store};
    use crate::core::release::ReleaseStatus as S;

    fn spec(kind: LockKind, reason: &str) -> Lock {
        Lock {
            kind,
            reason: Some(reason.into()),
            by: Some("alice".into()),
            since: 1_700_000_000,
            expires_at: None,
            pin: None,
            pin_key: None,
        }
    }

    fn locked_revisions(store: &Store) -> Vec<(u64, Option<String>)> {
        let Store::Memory(m) = store else {
            unreachable!()
        };
        m.records()
            .values()
            .map(|r| {
                (
                    r.header.revision,
                    lock::from_labels(&r.header.labels)
                        .unwrap()
                        .and_then(|s| s.reason),
                )
            })
            .collect()
    }

    #[test]
    fn a_rerun_completes_an_interrupted_lock() {
        let s = store(&[
            rev(1, S::Superseded, "1.0.0"),
            rev(2, S::Superseded, "1.1.0"),
            rev(3, S::Deployed, "1.2.0"),
        ]);
        // SIGTERM arrives while the latest record is written: the run stops before the
        // older records and says what it left.
        let err = block_on(lock_release(
            &s,
            "db",
            &spec(LockKind::Soft, "freeze"),
            Interrupts::raised(libc::SIGTERM),
            None,
        ))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "release \"db\" in namespace \"shared\": lock stopped after 0 of 2 older records \
             (interrupted by SIGTERM); the lock is in force on the latest revision 3, but until \
             every older record carries it a rollback to one of them drops it. Run the same \
             command again to complete it"
        );
        assert_eq!(
            locked_revisions(&s),
            [(1, None), (2, None), (3, Some("freeze".into()))]
        );
        let mut rerun = spec(LockKind::Soft, "freeze");
        rerun.since += 60;
        block_on(lock_release(&s, "db", &rerun, Interrupts::default(), None)).unwrap();
        let all: Vec<_> = locked_revisions(&s).into_iter().map(|(_, r)| r).collect();
        assert_eq!(all, vec![Some("freeze".to_string()); 3]);
    }

    #[test]
    fn a_failed_older_record_names_release_and_namespace_once() {
        let s = store(&[
            rev(1, S::Superseded, "1.0.0"),
            rev(2, S::Superseded, "1.1.0"),
            rev(3, S::Deployed, "1.2.0"),
        ]);
        let Store::Memory(m) = &s else { unreachable!() };
        m.forbid_writes("sh.helm.release.v1.db.v1");
        let err = block_on(lock_release(
            &s,
            "db",
            &spec(LockKind::Soft, "freeze"),
            Interrupts::default(),
            None,
        ))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "release \"db\" in namespace \"shared\": lock stopped after 0 of 2 older records \
             (updating sh.helm.release.v1.db.v1: the API server answered 403 Forbidden: writing \
             \"sh.helm.release.v1.db.v1\" is forbidden); the lock is in force on the latest \
             revision 3, but until every older record carries it a rollback to one of them drops \
             it. Run the same command again to complete it"
        );
    }

    #[test]
    fn locked_line_is_whole() {
        let mut s = spec(LockKind::Pin, "freeze");
        s.pin = Some("1.4.x".into());
        s.expires_at = Some(1_700_003_600);
        assert_eq!(
            locked_line("db", "shared", &s),
            "locked: release \"db\" in \"shared\" (pin), pinned to 1.4.x, expires \
             2023-11-14T23:13:20Z: freeze"
        );
        s.reason = Some(String::new());
        assert_eq!(
            locked_line("db", "shared", &s),
            "locked: release \"db\" in \"shared\" (pin), pinned to 1.4.x, expires \
             2023-11-14T23:13:20Z"
        );
    }
}
