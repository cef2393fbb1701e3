//! Orchestration of `upgrade` and `check`: argv -> target -> deployed state -> decision ->
//! (maybe) helm. Every I/O step is an adapter call; the decision itself is pure.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};

use crate::argv::{self, Mode, SplitArgv};
use crate::cluster::{self, ClusterFlags, DriverKind, HelmEnv};
use crate::decision::{self, Action, Decision, DecisionInput, Reason, Target};
use crate::exit::{Failure, EXIT_DETAILED_CHANGE, EXIT_DETAILED_SKIP, EXIT_OK, EXIT_REFUSED};
use crate::helm::{self, HelmCommand};
use crate::mutex;
use crate::recovery;
use crate::report::DecisionReport;
use crate::state::{self, ReleaseView};
use crate::storage::{self, KubeStore, ReleaseStore};
use crate::target::{self, ResolvedTarget};
use crate::time::{now_unix, parse_duration};

/// Runs `upgrade` (mode Upgrade) or `check` (mode Check) with the raw argv after the
/// subcommand name. Returns the process exit code.
pub async fn run(raw: &[String], mode: Mode) -> Result<i32, Failure> {
    let split = argv::split(raw, mode).map_err(|e| Failure::usage(e.to_string()))?;
    let env = HelmEnv::from_process();
    let helm_bin_env = std::env::var("HELM_BIN").ok();

    // A missing helm is reported before anything else; `check` needs it only to resolve
    // remote charts, so there it is looked up lazily.
    let helm_path: Option<PathBuf> = match mode {
        Mode::Upgrade => Some(
            helm::locate(split.guard.helm.as_deref(), helm_bin_env.as_deref())
                .map_err(|e| Failure::refused(e.to_string()))?,
        ),
        Mode::Check => helm::locate(split.guard.helm.as_deref(), helm_bin_env.as_deref()).ok(),
    };
    let driver = DriverKind::from_helm_driver(env.driver.as_deref())
        .map_err(|e| Failure::refused(e.to_string()))?;
    let cluster_flags = ClusterFlags::from(&split.helm);
    let cluster = cluster::connect(&cluster_flags, &env).await.map_err(|e| {
        Failure::refused(format!(
            "cannot decide for release {:?}: {e}; helm was not run",
            split.release
        ))
    })?;
    let ctx = Context {
        split: &split,
        mode,
        helm_path,
        driver,
        client: cluster.client.clone(),
    };
    match driver {
        DriverKind::Secret => {
            let store = KubeStore::<Secret>::new(cluster.client.clone(), &cluster.namespace);
            guarded(ctx, &store).await
        }
        DriverKind::ConfigMap => {
            let store = KubeStore::<ConfigMap>::new(cluster.client.clone(), &cluster.namespace);
            guarded(ctx, &store).await
        }
    }
}

/// Everything one command run needs besides the store.
struct Context<'a> {
    split: &'a SplitArgv,
    mode: Mode,
    helm_path: Option<PathBuf>,
    driver: DriverKind,
    client: kube::Client,
}

/// One read-and-decide pass.
struct Pass {
    view: ReleaseView,
    decision: Decision,
    now: i64,
}

async fn decide_once<S: ReleaseStore>(
    ctx: &Context<'_>,
    store: &S,
    target: &ResolvedTarget,
) -> Result<Pass, Failure> {
    let release = ctx.split.release.as_str();
    let view: ReleaseView = state::read_release(store, release).await.map_err(|e| {
        step_failure(
            release,
            store.namespace(),
            "reading the deployed release",
            &e,
        )
    })?;
    let now = now_unix();
    let decision_target = Target {
        chart_name: target.chart_name.clone(),
        version: target.version.clone(),
        note: target.note.clone(),
    };
    let input = DecisionInput {
        release,
        namespace: store.namespace(),
        state: &view.state,
        target: &decision_target,
        policy: ctx.split.guard.policy,
        allow_chart_change: ctx.split.guard.allow_chart_change,
        now_unix: now,
        compare: &ctx.split.guard.compare,
        facts: None,
    };
    let mut decision = decision::decide(&input);
    // Issue 11: a decision that needs the would-be release (dry run) asks for it.
    if decision.needs_facts {
        let helm = ctx.helm_path.as_deref();
        let lock = view.state.lock.as_ref();
        let facts = crate::change::gather(store, release, helm, ctx.split, &decision, lock)
            .await
            .map_err(|e| {
                step_failure(
                    release,
                    store.namespace(),
                    "examining the release helm would write",
                    &e,
                )
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

fn step_failure(
    release: &str,
    namespace: &str,
    step: &str,
    cause: &dyn std::fmt::Display,
) -> Failure {
    Failure::refused(format!(
        "release {release:?} in namespace {namespace:?}: {step}: {cause}; helm was not run"
    ))
}

fn parse_guard_duration(flag: &str, value: &Option<String>) -> Result<Option<Duration>, Failure> {
    value
        .as_deref()
        .map(|text| {
            parse_duration(text).ok_or_else(|| {
                Failure::usage(format!(
                    "{flag} {text:?} is not a duration (examples: 90s, 5m, 2h, 1d)"
                ))
            })
        })
        .transpose()
}

async fn guarded<S: ReleaseStore>(ctx: Context<'_>, store: &S) -> Result<i32, Failure> {
    let split = ctx.split;
    let release = split.release.as_str();
    let namespace = store.namespace().to_string();
    let lock_timeout = parse_guard_duration("--lock-timeout", &split.guard.lock_timeout)?
        .unwrap_or(mutex::DEFAULT_LOCK_TIMEOUT);
    let lease_duration = parse_guard_duration("--lease-duration", &split.guard.lease_duration)?
        .unwrap_or(mutex::DEFAULT_LEASE_DURATION)
        .max(Duration::from_secs(3));
    let recover_after = parse_guard_duration(
        "--recover-pending-after",
        &split.guard.recover_pending_after,
    )?;

    let target =
        target::resolve(&split.chart, &split.helm, ctx.helm_path.as_deref()).map_err(|e| {
            step_failure(
                release,
                &namespace,
                "resolving the target chart version",
                &e,
            )
        })?;

    // 1. Read-only decision: skips end here and write nothing.
    let first = decide_once(&ctx, store, &target).await?;
    let pending = first.decision.reason == Reason::Pending;
    let early_end = match first.decision.action {
        Action::Skip => true,
        Action::Refuse => !pending,
        Action::Install | Action::Upgrade => false,
    };
    if ctx.mode == Mode::Check || early_end {
        let mutex_state = if ctx.mode == Mode::Check {
            // `check` reports a held mutex but never takes it; a 403 here is not fatal.
            mutex::peek(&ctx.client, &namespace, release)
                .await
                .ok()
                .flatten()
                .filter(|m| m.is_held_at(first.now))
        } else {
            None
        };
        let report = build_report(&ctx, &namespace, &first, &target, None, mutex_state);
        return finish_without_helm(&ctx, &first.decision, &report);
    }
    if split.guard.no_serialize {
        let report = build_report(&ctx, &namespace, &first, &target, Some(false), None);
        if first.decision.action == Action::Refuse {
            return finish_without_helm(&ctx, &first.decision, &report);
        }
        eprintln!("note: running unserialized (--no-serialize): concurrent runs may race");
        return run_helm(&ctx, &first.decision, &report).await;
    }

    // 2. Serialize: the namespace must exist for the Lease to live there.
    if split.helm.create_namespace {
        storage::ensure_namespace(&ctx.client, &namespace)
            .await
            .map_err(|e| step_failure(release, &namespace, "creating the namespace", &e))?;
    }
    let options = mutex::AcquireOptions {
        timeout: lock_timeout,
        lease_duration,
    };
    let held = match mutex::acquire(&ctx.client, &namespace, release, &options, |holder| {
        eprintln!(
            "waiting: mutex {} for release {release:?} in {namespace:?} is held by {holder}",
            mutex::lease_name(release)
        );
    })
    .await
    {
        Ok(held) => held,
        Err(mutex::MutexError::NamespaceMissing(_)) => {
            // Nothing to race on in a namespace that does not exist: let helm report it.
            let report = build_report(&ctx, &namespace, &first, &target, Some(false), None);
            return run_helm(&ctx, &first.decision, &report).await;
        }
        Err(e) => {
            return Err(Failure::refused(format!(
                "release {release:?} in namespace {namespace:?}: {e}"
            )))
        }
    };
    if let Some(previous) = &held.took_over_from {
        eprintln!("note: took over the mutex from {previous}, which stopped renewing it");
    }

    // 3. Decide again under the mutex; recover a stale pending record if asked to.
    let outcome = async {
        let mut pass = decide_once(&ctx, store, &target).await?;
        if pass.decision.reason == Reason::Pending {
            if let Some(after) = recover_after {
                if recovery::recover_stale_pending(store, release, &pass.view, after, pass.now)
                    .await?
                {
                    pass = decide_once(&ctx, store, &target).await?;
                }
            }
        }
        let report = build_report(&ctx, &namespace, &pass, &target, Some(true), None);
        if pass.decision.action.proceeds() {
            run_helm(&ctx, &pass.decision, &report).await
        } else {
            finish_without_helm(&ctx, &pass.decision, &report)
        }
    }
    .await;
    let hold = held.release().await;
    if let Some(how) = hold.lost {
        eprintln!(
            "warning: lost the mutex {} for release {release:?} in {namespace:?} while holding              it ({how}); another run may have overlapped with this one, check `helm history              {release} -n {namespace}`",
            mutex::lease_name(release)
        );
    }
    outcome
}

fn build_report(
    ctx: &Context<'_>,
    namespace: &str,
    pass: &Pass,
    target: &ResolvedTarget,
    serialized: Option<bool>,
    mutex_state: Option<mutex::MutexState>,
) -> DecisionReport {
    let mut report = DecisionReport::new(
        &ctx.split.release,
        namespace,
        &pass.decision,
        ctx.split.guard.policy,
        &pass.view.state,
        target,
        driver_name(ctx.driver),
        pass.now,
    );
    report.serialized = serialized;
    report.mutex = mutex_state;
    report
}

/// Prints the decision (skip/refuse, or `check`'s verdict) and picks the exit code.
fn finish_without_helm(
    ctx: &Context<'_>,
    decision: &Decision,
    report: &DecisionReport,
) -> Result<i32, Failure> {
    emit_report(ctx.split, ctx.mode, report)?;
    let json_on_stdout =
        ctx.mode == Mode::Check && ctx.split.guard.output.as_deref() == Some("json");
    if !json_on_stdout || decision.action == Action::Refuse {
        print_decision(decision);
        if let Some(m) = &report.mutex {
            eprintln!("  note: mutex {}", m.describe(now_unix()));
        }
    }
    let detailed = ctx.split.guard.detailed_exitcode;
    Ok(match decision.action {
        Action::Refuse => EXIT_REFUSED,
        Action::Skip if detailed => EXIT_DETAILED_SKIP,
        Action::Install | Action::Upgrade if detailed => EXIT_DETAILED_CHANGE,
        _ => EXIT_OK,
    })
}

fn print_decision(decision: &Decision) {
    eprintln!("{}", decision.message);
    for note in &decision.notes {
        eprintln!("  note: {note}");
    }
}

async fn run_helm(
    ctx: &Context<'_>,
    decision: &Decision,
    report: &DecisionReport,
) -> Result<i32, Failure> {
    emit_report(ctx.split, ctx.mode, report)?;
    print_decision(decision);
    let helm_path = ctx
        .helm_path
        .clone()
        .ok_or_else(|| Failure::refused("no helm binary"))?;
    let command = HelmCommand::upgrade(&helm_path, &ctx.split.helm_args, ctx.split.helm.install);
    let code = helm::run_inherited(&command)
        .await
        .map_err(|e| Failure::refused(e.to_string()))?;
    Ok(if code == 0 && ctx.split.guard.detailed_exitcode {
        EXIT_DETAILED_CHANGE
    } else {
        code
    })
}

fn driver_name(driver: DriverKind) -> &'static str {
    match driver {
        DriverKind::Secret => "secret",
        DriverKind::ConfigMap => "configmap",
    }
}

/// Writes the JSON decision where it was asked for: stdout for `check --output json`,
/// a file (or `-` for stderr) for `--decision-file`.
fn emit_report(split: &SplitArgv, mode: Mode, report: &DecisionReport) -> Result<(), Failure> {
    let json = serde_json::to_string(report)
        .map_err(|e| Failure::refused(format!("cannot serialise the decision: {e}")))?;
    if split.guard.output.as_deref() == Some("json") {
        // `check`: the JSON is the output. `upgrade`: stdout belongs to helm, so stderr.
        match mode {
            Mode::Check => println!("{json}"),
            Mode::Upgrade => eprintln!("{json}"),
        }
    }
    if let Some(path) = &split.guard.decision_file {
        if path == "-" {
            eprintln!("{json}");
        } else {
            std::fs::write(path, format!("{json}\n")).map_err(|e| {
                Failure::refused(format!(
                    "cannot write the decision to {path:?}: {e}; helm was not run"
                ))
            })?;
        }
    }
    Ok(())
}
