//! Orchestration of `upgrade` and `check`: argv -> target -> deployed state -> decision ->
//! (maybe) helm. Every I/O step is an adapter call; the decision itself is pure.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};

use crate::argv::{self, Mode, SplitArgv};
use crate::cluster::{self, ClusterFlags, DriverKind, HelmEnv};
use crate::decision::{self, Action, DecisionInput, Target};
use crate::exit::{Failure, EXIT_DETAILED_CHANGE, EXIT_DETAILED_SKIP, EXIT_OK, EXIT_REFUSED};
use crate::helm::{self, HelmCommand};
use crate::report::DecisionReport;
use crate::state::{self, ReleaseView};
use crate::storage::{KubeStore, ReleaseStore};
use crate::target;
use crate::time::now_unix;

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
    match driver {
        DriverKind::Secret => {
            let store = KubeStore::<Secret>::new(cluster.client.clone(), &cluster.namespace);
            guarded(&split, mode, &store, helm_path, driver).await
        }
        DriverKind::ConfigMap => {
            let store = KubeStore::<ConfigMap>::new(cluster.client.clone(), &cluster.namespace);
            guarded(&split, mode, &store, helm_path, driver).await
        }
    }
}

async fn guarded<S: ReleaseStore>(
    split: &SplitArgv,
    mode: Mode,
    store: &S,
    helm_path: Option<PathBuf>,
    driver: DriverKind,
) -> Result<i32, Failure> {
    let release = split.release.as_str();
    let namespace = store.namespace().to_string();
    let context = |step: &str, cause: &dyn std::fmt::Display| {
        Failure::refused(format!(
            "release {release:?} in namespace {namespace:?}: {step}: {cause}; helm was not run"
        ))
    };

    let target = target::resolve(&split.chart, &split.helm, helm_path.as_deref())
        .map_err(|e| context("resolving the target chart version", &e))?;
    let view: ReleaseView = state::read_release(store, release)
        .await
        .map_err(|e| context("reading the deployed release", &e))?;

    let now = now_unix();
    let decision_target = Target {
        chart_name: target.chart_name.clone(),
        version: target.version.clone(),
        note: target.note.clone(),
    };
    let decision = decision::decide(&DecisionInput {
        release,
        namespace: &namespace,
        state: &view.state,
        target: &decision_target,
        policy: split.guard.policy,
        allow_chart_change: split.guard.allow_chart_change,
        now_unix: now,
    });
    let report = DecisionReport::new(
        release,
        &namespace,
        &decision,
        split.guard.policy,
        &view.state,
        &target,
        driver_name(driver),
        now,
    );
    emit_report(split, mode, &report)?;

    // The one human line (skip/refuse/proceed) goes to stderr, never mixed into helm's stdout.
    let json_on_stdout = mode == Mode::Check && split.guard.output.as_deref() == Some("json");
    if !json_on_stdout || decision.action == Action::Refuse {
        eprintln!("{}", decision.message);
        for note in &decision.notes {
            eprintln!("  note: {note}");
        }
    }
    let detailed = split.guard.detailed_exitcode;
    match decision.action {
        Action::Refuse => Ok(EXIT_REFUSED),
        Action::Skip => Ok(if detailed {
            EXIT_DETAILED_SKIP
        } else {
            EXIT_OK
        }),
        Action::Install | Action::Upgrade if mode == Mode::Check => Ok(if detailed {
            EXIT_DETAILED_CHANGE
        } else {
            EXIT_OK
        }),
        Action::Install | Action::Upgrade => {
            let helm_path = helm_path.expect("upgrade mode always locates helm");
            let command = HelmCommand::upgrade(&helm_path, &split.helm_args, split.helm.install);
            let code = helm::run_inherited(&command)
                .await
                .map_err(|e| Failure::refused(e.to_string()))?;
            Ok(if code == 0 && detailed {
                EXIT_DETAILED_CHANGE
            } else {
                code
            })
        }
    }
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
    if mode == Mode::Check && split.guard.output.as_deref() == Some("json") {
        println!("{json}");
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
