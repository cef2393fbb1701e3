//! `upgrade`: decide read-only, take the release mutex, decide again under it, then run
//! `helm upgrade --install` with the user's argv only when the rules allow it.

use std::path::Path;
use std::time::Duration;

use crate::adapters::cluster::{self, WATCH_SECONDS};
use crate::adapters::helm::{self, HelmCommand};
use crate::adapters::inputs::Captured;
use crate::adapters::mutex::{self, MutexError};
use crate::adapters::recovery::{self, Recovery};
use crate::adapters::signals;
use crate::adapters::storage::{self, RecordsChange, ReleaseStore, Store};
use crate::core::decision::{Action, Decision, Reason};
use crate::core::time::format_duration;
use crate::error::{Error, Exit};
use crate::output::report::DecisionReport;
use crate::output::{self, JsonTo};
use crate::plan::GuardPlan;

use super::guard::{self, Pass};

/// Runs `upgrade`.
pub(super) async fn run(plan: GuardPlan) -> Result<Exit, Error> {
    // Inputs that cannot be offered twice are usage errors; a missing helm is reported
    // before anything else.
    let sources = guard::input_sources(&plan)?;
    let helm = guard::locate_helm(&plan)?;
    output::debug(&format!("helm {}", helm.display()));
    // Before anything reads them: the kubeconfig helm reads must be the one read here.
    let captured = guard::capture_inputs(&plan, &sources).await?;
    let session =
        super::session::connect_with(&plan.cluster, Some(&plan.release), &captured).await?;
    output::debug(&format!(
        "release {:?} in namespace {:?}, {} records",
        plan.release,
        session.namespace,
        session.store.driver_name()
    ));
    let store = &session.store;
    let namespace = session.namespace.as_str();
    let release = plan.release.as_str();
    let target = guard::resolve_target(&plan, Some(&helm), namespace, &captured)?;

    // 1. Read-only decision: skips end here and write nothing.
    let first = guard::decide_once(&plan, store, &target, Some(&helm), &captured).await?;
    let pending = first.decision.reason == Reason::Pending;
    let ends_here = match first.decision.action {
        Action::Skip => true,
        Action::Refuse => !pending,
        Action::Install | Action::Upgrade => false,
    };
    if ends_here {
        let report = guard::report(&plan, store, &first, &target, None, None);
        return finish_without_helm(&plan, &first.decision, &report);
    }
    // A dry run writes nothing, so it neither needs nor holds up the mutex.
    let dry_run = plan.helm.is_dry_run();
    let Some(serialize) = plan.mutex.filter(|_| !dry_run) else {
        let report = guard::report(&plan, store, &first, &target, Some(false), None);
        if first.decision.action == Action::Refuse {
            return finish_without_helm(&plan, &first.decision, &report);
        }
        if !dry_run {
            output::note("running unserialized (--no-serialize): concurrent runs may race");
        }
        return run_helm(&plan, &helm, &first.decision, &report, &captured).await;
    };

    // 2. Serialize: the namespace must exist for the Lease to live there.
    if plan.helm.create_namespace {
        cluster::ensure_namespace(&session.client, namespace)
            .await
            .map_err(|source| Error::Api {
                release: release.to_string(),
                namespace: namespace.to_string(),
                step: "creating the namespace".to_string(),
                source: Box::new(source),
            })?;
    }
    let options = mutex::AcquireOptions {
        timeout: serialize.wait,
        lease_duration: serialize.lease_duration,
    };
    // While waiting, the release's records are watched and re-read when they change: a
    // re-read that says skip ends the run without taking the mutex.
    let mut waiter = Recheck {
        plan: &plan,
        store,
        target: &target,
        helm: &helm,
        captured: &captured,
        last: first,
        polling: false,
    };
    let acquired = super::session::acquire_mutex_or(&session, release, &options, &mut waiter).await;
    let latest = waiter.last;
    let held = match acquired {
        Ok(mutex::Acquired::Held(held)) => held,
        Ok(mutex::Acquired::Done(pass)) => {
            output::note(&format!(
                "release {release:?} in {namespace:?} changed while this run waited for the \
                 mutex, and the re-read decides skip: the mutex was not taken"
            ));
            let report = guard::report(&plan, store, &pass, &target, None, None);
            return finish_without_helm(&plan, &pass.decision, &report);
        }
        Err(MutexError::NamespaceMissing(_)) => {
            // The Lease cannot live in a namespace that does not exist. The first decision
            // stands, refusals included (with HELM_DRIVER=sql the records live elsewhere and
            // may be pending or locked); helm runs unserialized only with a reason printed.
            let report = guard::report(&plan, store, &latest, &target, Some(false), None);
            if !latest.decision.action.proceeds() {
                return finish_without_helm(&plan, &latest.decision, &report);
            }
            output::note(&format!(
                "running unserialized: namespace {namespace:?} does not exist, so the mutex \
                 (a Lease in it) cannot be taken"
            ));
            return run_helm(&plan, &helm, &latest.decision, &report, &captured).await;
        }
        Err(source) => {
            return Err(Error::Mutex {
                release: release.to_string(),
                namespace: namespace.to_string(),
                source: Box::new(source),
            })
        }
    };

    // 3. Decide again under the mutex; recover a stale pending record if asked to. The
    // signal handlers the mutex wait installed replace the default action, so SIGINT and
    // SIGTERM are watched here until helm starts (then helm gets them).
    let outcome = async {
        let decided = async {
            // The records the last read decoded are not fetched again if the list shows
            // them at the same resourceVersion.
            let mut pass =
                guard::decide_again(&plan, store, &target, Some(&helm), &captured, Some(&latest))
                    .await?;
            if pass.decision.reason == Reason::Pending {
                if let Some(after) = plan.recover_pending_after {
                    if recover(&plan, store, &pass, after).await? {
                        pass = guard::decide_once(&plan, store, &target, Some(&helm), &captured)
                            .await?;
                    }
                }
            }
            Ok::<Pass, Error>(pass)
        };
        let pass = tokio::select! {
            pass = decided => pass?,
            (name, number) = interrupted() => {
                output::note(&format!(
                    "interrupted by {name} before helm started: release {release:?} in \
                     {namespace:?} was not upgraded; helm was not run"
                ));
                // The shell's code for death by this signal: 130 (SIGINT), 143 (SIGTERM).
                return Ok(Exit::Helm(128 + number));
            }
        };
        let report = guard::report(&plan, store, &pass, &target, Some(true), None);
        if pass.decision.action.proceeds() {
            run_helm(&plan, &helm, &pass.decision, &report, &captured).await
        } else {
            finish_without_helm(&plan, &pass.decision, &report)
        }
    }
    .await;
    super::session::release_mutex(*held, release, namespace).await;
    outcome
}

/// While `upgrade` waits for the mutex: the release's records, watched from the last read
/// (polled every 0.5–1 s where they cannot be watched: `HELM_DRIVER=sql`, or `watch`
/// refused), and re-read when they change.
struct Recheck<'a> {
    plan: &'a GuardPlan,
    store: &'a Store,
    target: &'a crate::adapters::target::ResolvedTarget,
    helm: &'a Path,
    captured: &'a Captured,
    /// The latest read: the first decision, then each re-read.
    last: Pass,
    /// Whether the records are polled rather than watched.
    polling: bool,
}

impl mutex::Waiter for Recheck<'_> {
    type Done = Pass;

    async fn records_changed(&mut self) {
        let release = self.plan.release.as_str();
        let max = Duration::from_secs(u64::from(WATCH_SECONDS));
        loop {
            if !self.polling {
                match self
                    .store
                    .watch_records(release, &self.last.view.version, max)
                    .await
                {
                    Some(Ok(RecordsChange::Changed)) => return,
                    Some(Ok(RecordsChange::Quiet)) => continue,
                    Some(Err(e)) if e.kind() == storage::ErrorKind::Forbidden => {
                        self.polling = true;
                        output::note(&format!(
                            "cannot watch the {} records of release {release:?} in {:?} ({}); \
                             reading them every 0.5-1s while waiting instead (grant `watch` on \
                             them to hand over at once)",
                            self.store.kind(),
                            self.store.namespace(),
                            e.detail()
                        ));
                    }
                    Some(Err(e)) => {
                        output::debug(&format!("watching the release records: {e}"));
                        tokio::time::sleep(mutex::poll_interval()).await;
                        return;
                    }
                    None => {
                        output::debug(&format!(
                            "{} records cannot be watched: polled every 0.5-1s",
                            self.store.driver_name()
                        ));
                        self.polling = true;
                    }
                }
            } else {
                tokio::time::sleep(mutex::poll_interval()).await;
                match self.store.list_headers_versioned(release).await {
                    Ok((_, version))
                        if version.fingerprint == self.last.view.version.fingerprint => {}
                    _ => return,
                }
            }
        }
    }

    async fn recheck(&mut self) -> Option<Pass> {
        let again = guard::decide_again(
            self.plan,
            self.store,
            self.target,
            Some(self.helm),
            self.captured,
            Some(&self.last),
        )
        .await;
        match again {
            Ok(pass) if pass.decision.action == Action::Skip => Some(pass),
            Ok(pass) => {
                self.last = pass;
                None
            }
            Err(e) => {
                // Not an answer: the run re-reads under the mutex, failing closed there. Back
                // off so that a record that cannot be read is not re-read in a tight loop.
                output::debug(&format!("re-reading while waiting for the mutex: {e}"));
                tokio::time::sleep(mutex::poll_interval()).await;
                None
            }
        }
    }
}

/// The first SIGINT or SIGTERM: its name and number.
async fn interrupted() -> (String, i32) {
    let number = signals::first().await;
    (signals::signal_name(number), number)
}

/// Marks a stale pending record failed (under the mutex) and says what it did.
async fn recover(
    plan: &GuardPlan,
    store: &Store,
    pass: &Pass,
    after: std::time::Duration,
) -> Result<bool, Error> {
    let release = plan.release.as_str();
    let recovery = recovery::recover_stale_pending(store, release, &pass.view, after, pass.now)
        .await
        .map_err(|source| Error::Recover {
            release: release.to_string(),
            namespace: store.namespace().to_string(),
            source: Box::new(source),
        })?;
    match recovery {
        Recovery::NotPending => Ok(false),
        Recovery::AgeUnknown { revision } => {
            output::note(&format!(
                "cannot tell how old pending revision {revision} is; not recovering it"
            ));
            Ok(false)
        }
        Recovery::TooRecent { revision, age } => {
            output::note(&format!(
                "pending revision {revision} was written {} ago, less than \
                 --recover-pending-after {}; not recovering it",
                format_duration(age),
                format_duration(after.as_secs() as i64)
            ));
            Ok(false)
        }
        Recovery::MarkedFailed { revision, was, age } => {
            output::progress(&format!(
                "recovered: revision {revision} of release {release:?} in {:?} was {was} for \
                 {} with no live holder; marked it failed as helm does for an interrupted \
                 operation",
                store.namespace(),
                format_duration(age)
            ));
            Ok(true)
        }
    }
}

/// Prints a decision that does not run helm and picks the exit code.
fn finish_without_helm(
    plan: &GuardPlan,
    decision: &Decision,
    report: &DecisionReport,
) -> Result<Exit, Error> {
    announce(plan, decision, report)?;
    Ok(guard::exit_without_helm(plan, decision))
}

/// Says the decision: the JSON where it was asked for, the line for people, the CI
/// annotation.
fn announce(plan: &GuardPlan, decision: &Decision, report: &DecisionReport) -> Result<(), Error> {
    output::decision_json(
        report,
        plan.format,
        JsonTo::Stderr,
        plan.decision_file.as_ref(),
    )?;
    output::decision(decision, None);
    output::ci::decision(&plan.ci, report);
    Ok(())
}

/// Prints the decision and runs helm with the user's argv.
async fn run_helm(
    plan: &GuardPlan,
    helm: &Path,
    decision: &Decision,
    report: &DecisionReport,
    captured: &Captured,
) -> Result<Exit, Error> {
    // The shim keeps helm's argv as is: a `helm upgrade` of a missing release without
    // --install fails in helm, exactly as without the shim, so no install line is said.
    let helm_reports_it =
        plan.shim.is_some() && !plan.helm.install && decision.action == Action::Install;
    if helm_reports_it {
        output::decision_json(
            report,
            plan.format,
            JsonTo::Stderr,
            plan.decision_file.as_ref(),
        )?;
    } else {
        announce(plan, decision, report)?;
    }
    output::debug(&format!(
        "running {} upgrade with {} arguments",
        helm.display(),
        plan.helm_args.len()
    ));
    let command = HelmCommand::upgrade(helm, &plan.helm_args, plan.has_install());
    output::ci::helm_started(
        &plan.ci,
        &plan.release,
        &report.namespace,
        crate::core::time::now_unix(),
    );
    // What was captured (standard input, /dev/fd pipes) helm reads now: the same bytes the
    // guard, `helm show chart` and the dry run read, on the same numbers.
    let code = helm::run_inherited(&command, captured.feeds()).await;
    output::ci::helm_finished(&plan.ci, crate::core::time::now_unix());
    let code = code?;
    Ok(match code {
        0 if plan.detailed_exitcode => Exit::DetailedChange,
        0 => Exit::Success,
        // Where the decision was left unsaid (helm reports it), so is its failure.
        code if helm_reports_it => Exit::Helm(code),
        code => {
            output::progress(&format!(
                "helm failed (exit {code}) after the decision to {} release {:?} in {:?}; the \
                 next run decides from the revisions helm left (\"helm history {} -n {}\")",
                if decision.action == Action::Install {
                    "install"
                } else {
                    "upgrade"
                },
                plan.release,
                report.namespace,
                plan.release,
                report.namespace
            ));
            Exit::Helm(code)
        }
    })
}
