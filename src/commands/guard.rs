//! What `upgrade` and `check` share: finding helm, resolving the target, reading the
//! release and deciding.

use std::path::{Path, PathBuf};

use crate::adapters::change;
use crate::adapters::helm;
use crate::adapters::inputs::{self, Captured, Source};
use crate::adapters::mutex::MutexState;
use crate::adapters::state::{self, ReleaseView};
use crate::adapters::storage::{ReleaseStore, Store};
use crate::adapters::target::{self, ResolvedTarget};
use crate::core::decision::{self, Action, Decision, DecisionInput, Target};
use crate::core::time::now_unix;
use crate::error::{Error, Exit, UsageError};
use crate::output::report::DecisionReport;
use crate::plan::GuardPlan;

/// One read-and-decide pass.
pub(super) struct Pass {
    /// What was read.
    pub view: ReleaseView,
    /// What the rules say.
    pub decision: Decision,
    /// When, Unix seconds.
    pub now: i64,
}

/// The helm binary: `--helm`, `HELM_BIN`, else `helm` on PATH; in shim mode the real helm
/// (never the shim itself).
pub(super) fn locate_helm(plan: &GuardPlan) -> Result<PathBuf, Error> {
    match &plan.shim {
        Some(shim) => Ok(crate::adapters::shim::real_helm(shim.explicit.as_deref())?),
        None => Ok(helm::locate(plan.helm_bin.as_deref())?),
    }
}

/// The chart version helm would install.
pub(super) fn resolve_target(
    plan: &GuardPlan,
    helm: Option<&Path>,
    namespace: &str,
    captured: &Captured,
) -> Result<ResolvedTarget, Error> {
    target::resolve(&plan.chart, &plan.helm, helm, captured).map_err(|source| {
        Error::ResolveTarget {
            release: plan.release.clone(),
            namespace: namespace.to_string(),
            source: Box::new(source),
        }
    })
}

/// The inputs helm can read only once (standard input, `/dev/fd` pipes named by the
/// kubeconfig, CA, repository and values flags, `KUBECONFIG` and CHART), found before anything
/// else; one that cannot be offered again under its name is a usage error.
pub(super) fn input_sources(plan: &GuardPlan) -> Result<Vec<Source>, Error> {
    let kubeconfig_env = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty());
    let files = inputs::files(
        &plan.helm,
        Some(&plan.chart),
        kubeconfig_env.as_deref(),
        plan.cluster.env.cluster.kube_ca_file.as_deref(),
    );
    inputs::sources(&files).map_err(|message| Error::Usage(UsageError(message)))
}

/// Captures `sources` before anything reads them: the guard's own reads, `helm show
/// chart`, the dry run and the real run all use the capture.
pub(super) async fn capture_inputs(
    plan: &GuardPlan,
    sources: &[Source],
) -> Result<Captured, Error> {
    inputs::capture(sources, plan.input_timeout)
        .await
        .map_err(|message| Error::Inputs {
            release: plan.release.clone(),
            message,
        })
}

/// Reads the release and decides.
pub(super) async fn decide_once(
    plan: &GuardPlan,
    store: &Store,
    target: &ResolvedTarget,
    helm: Option<&Path>,
    captured: &Captured,
) -> Result<Pass, Error> {
    decide_again(plan, store, target, helm, captured, None).await
}

/// Reads the release again and decides, reusing the records `previous` decoded where the
/// list shows them unchanged (same resourceVersion).
pub(super) async fn decide_again(
    plan: &GuardPlan,
    store: &Store,
    target: &ResolvedTarget,
    helm: Option<&Path>,
    captured: &Captured,
    previous: Option<&Pass>,
) -> Result<Pass, Error> {
    let view = state::read_release_again(store, &plan.release, previous.map(|p| &p.view))
        .await
        .map_err(|source| Error::ReadRelease {
            release: plan.release.clone(),
            namespace: store.namespace().to_string(),
            source: Box::new(source),
        })?;
    let now = now_unix();
    let decision_target = Target {
        chart_name: target.chart_name.clone(),
        version: target.version.clone(),
        note: target.note.clone(),
    };
    let input = DecisionInput {
        release: &plan.release,
        namespace: store.namespace(),
        state: &view.state,
        target: Some(&decision_target),
        version_rule: plan.version_rule,
        allow_chart_change: plan.allow_chart_change,
        now_unix: now,
        compare: &plan.compare,
        facts: None,
    };
    let mut decision = decision::decide(&input);
    // Some rules (newer-or-changed with equal versions, --compare keys, pins on keys) need
    // the release helm would write: one dry run, then the same decision with its facts.
    if decision.needs_facts {
        let records = change::Records {
            baseline: decision
                .deployed_revision
                .and_then(|rev| view.headers.iter().find(|h| h.revision == rev)),
            latest: view.headers.iter().max_by_key(|h| h.revision),
            read: Some(&view),
        };
        let dry_run = change::DryRun {
            compare: &plan.compare,
            helm_args: &plan.helm_args,
            helm: &plan.helm,
            has_install: plan.has_install(),
            captured,
        };
        let facts = change::gather(store, helm, &dry_run, records, view.state.lock.as_ref())
            .await
            .map_err(|source| Error::ExamineRelease {
                release: plan.release.clone(),
                namespace: store.namespace().to_string(),
                source: Box::new(source),
            })?;
        decision = decision::decide(&DecisionInput {
            facts: Some(&facts),
            ..input
        });
    }
    Ok(Pass {
        view,
        decision,
        now,
    })
}

/// The JSON form of a pass.
pub(super) fn report(
    plan: &GuardPlan,
    store: &Store,
    pass: &Pass,
    target: &ResolvedTarget,
    serialized: Option<bool>,
    mutex: Option<MutexState>,
) -> DecisionReport {
    let mut report = DecisionReport::new(
        &plan.release,
        store.namespace(),
        &pass.decision,
        plan.version_rule,
        &pass.view.state,
        target,
        store.driver_name(),
        pass.now,
    );
    report.serialized = serialized;
    report.mutex = mutex;
    report
}

/// How a decision that does not run helm ends the process.
pub(super) fn exit_without_helm(plan: &GuardPlan, decision: &Decision) -> Exit {
    match decision.action {
        Action::Refuse => Exit::Refused,
        Action::Skip if plan.detailed_exitcode => Exit::DetailedSkip,
        Action::Install | Action::Upgrade if plan.detailed_exitcode => Exit::DetailedChange,
        _ => Exit::Success,
    }
}
