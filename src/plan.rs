//! From argv and environment to typed plans, before any I/O.
//!
//! Every usage error (exit 2) is found here: malformed durations, output formats, pins,
//! expiries, names, missing RELEASE or CHART, unknown or conflicting guard flags. Nothing in
//! this module reads a kubeconfig, talks to the cluster or runs helm; the commands get
//! values that are already valid (ripgrep's low-args/high-args split).

use std::path::PathBuf;
use std::time::Duration;

use crate::adapters::cluster::{ClusterFlags, HelmEnv};
use crate::adapters::mutex;
use crate::adapters::shim::{self, Route, ShimEnv};
use crate::adapters::storage::DriverKind;
use crate::adapters::target;
use crate::cli::{
    Command, Expiry, LockArgs, LocksArgs, OutputFormat, PolicyCommand, StatusArgs, UnlockArgs,
};
use crate::core::argv::HelmFlags;
use crate::core::argv::{self, Mode, SplitArgv};
use crate::core::decision::{CompareKey, LockKind, VersionRule};
use crate::core::lock::{self, Lock};
use crate::core::names;
use crate::core::time::format_rfc3339;
use crate::error::{Error, UsageError};
use crate::output::ci::CiPlan;
use crate::output::DecisionFile;

/// Where and how to reach the release storage.
#[derive(Debug, Clone)]
pub(crate) struct ClusterPlan {
    /// helm's cluster flags.
    pub flags: ClusterFlags,
    /// helm's environment variables.
    pub env: HelmEnv,
    /// `HELM_DRIVER`.
    pub driver: DriverKind,
}

/// The per-release mutex settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MutexPlan {
    /// How long to wait for another run to release the mutex (`--mutex-timeout`).
    pub wait: Duration,
    /// `--lease-duration`.
    pub lease_duration: Duration,
}

/// Everything a plan reads from the process environment.
#[derive(Debug, Clone, Default)]
pub(crate) struct Env {
    /// helm's variables.
    pub helm: HelmEnv,
    /// The shim's `GUARDED_UPGRADE_*` settings.
    pub shim: ShimEnv,
    /// CI detection.
    pub ci: CiPlan,
    /// `HELM_DEBUG` is true (helm sets it for plugins from its `--debug`).
    pub debug: bool,
    /// The other variables a plan reads.
    pub host: HostEnv,
}

/// The variables a plan reads besides helm's cluster settings, the shim's and CI's: the
/// one place they are read (the core reads no environment).
#[derive(Debug, Clone, Default)]
pub(crate) struct HostEnv {
    /// `HELM_BIN`: the helm that runs this binary as a plugin.
    pub helm_bin: Option<String>,
    /// `HELM_DRIVER_SQL_CONNECTION_STRING`, checked before any I/O.
    pub sql_connection: Option<String>,
    /// The user who started the CI job ([`lock::CI_USER_VARS`], the first set).
    pub ci_user: Option<String>,
    /// `$USER`.
    pub login_user: Option<String>,
}

impl Env {
    fn from_process() -> Env {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Env {
            helm: HelmEnv::from_process(),
            shim: ShimEnv::from_process(),
            ci: CiPlan::from_process(),
            debug: std::env::var("HELM_DEBUG")
                .is_ok_and(|v| matches!(v.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True")),
            host: HostEnv {
                helm_bin: var("HELM_BIN"),
                sql_connection: std::env::var(crate::adapters::storage::sql::CONNECTION_ENV).ok(),
                ci_user: lock::CI_USER_VARS.iter().find_map(|name| var(name)),
                login_user: var("USER"),
            },
        }
    }
}

/// The shim's real helm, located at run time (never this binary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShimHelm {
    /// `GUARDED_UPGRADE_HELM`.
    pub explicit: Option<String>,
}

/// A helm command the shim hands to the real helm unchanged.
#[derive(Debug, Clone)]
pub(crate) struct PassthroughPlan {
    /// Which helm.
    pub helm: ShimHelm,
    /// helm's argv, as given.
    pub args: Vec<std::ffi::OsString>,
}

/// `upgrade` or `check`.
#[derive(Debug, Clone)]
pub(crate) struct GuardPlan {
    /// Which of the two.
    pub mode: Mode,
    /// RELEASE.
    pub release: String,
    /// CHART.
    pub chart: String,
    /// helm's argv (RELEASE, CHART and every helm flag), unchanged and in order.
    pub helm_args: Vec<String>,
    /// The helm flags the guard reads.
    pub helm: HelmFlags,
    /// `--helm`, else `HELM_BIN`.
    pub helm_bin: Option<String>,
    /// The cluster.
    pub cluster: ClusterPlan,
    /// `--min-version-policy`.
    pub version_rule: VersionRule,
    /// `--allow-chart-change`.
    pub allow_chart_change: bool,
    /// `--compare`: the key whose order guards against downgrades.
    pub compare: CompareKey,
    /// `--decision-output` / `check -o`.
    pub format: OutputFormat,
    /// `--decision-file`.
    pub decision_file: Option<DecisionFile>,
    /// `--detailed-exitcode`.
    pub detailed_exitcode: bool,
    /// The mutex, unless `--no-serialize`.
    pub mutex: Option<MutexPlan>,
    /// `--recover-pending-after`.
    pub recover_pending_after: Option<Duration>,
    /// `--input-timeout`: how long a read-once input's writer may take.
    pub input_timeout: Duration,
    /// Shim mode: helm's argv as is (no `--install` added), the real helm found at run
    /// time.
    pub shim: Option<ShimHelm>,
    /// CI annotations.
    pub ci: CiPlan,
    /// `HELM_DEBUG`, or helm's `--debug` in the argv (which still reaches helm): `debug:`
    /// lines about what the guard read and runs (never argv values).
    pub debug: bool,
}

impl GuardPlan {
    /// Whether helm's argv already says `--install` or must not get it: the user gave it,
    /// or the shim runs helm's own argv (where a missing `--install` is the caller's).
    pub(crate) fn has_install(&self) -> bool {
        self.helm.install || self.shim.is_some()
    }
}

/// `lock`.
#[derive(Debug, Clone)]
pub(crate) struct LockPlan {
    /// Release to lock.
    pub release: String,
    /// The lock; `by` is completed at run time when not given ([`lock::default_by`]).
    pub spec: Lock,
    /// Who started the CI job, and the login user: `by`'s defaults around the kubeconfig
    /// user, which is known only once connected.
    pub ci_user: Option<String>,
    /// `$USER`.
    pub login_user: Option<String>,
    /// `-o`.
    pub format: OutputFormat,
    /// `--enforce`: a hard lock the cluster cannot enforce is an error, nothing written.
    pub enforce: bool,
    /// The cluster.
    pub cluster: ClusterPlan,
}

/// `policy` (issue 18).
#[derive(Debug, Clone)]
pub(crate) enum PolicyPlan {
    /// `policy install`.
    Install(ClusterPlan),
    /// `policy uninstall`.
    Uninstall(ClusterPlan),
    /// `policy show`.
    Show(ClusterPlan),
    /// `policy manifest`.
    Manifest,
}

/// `unlock`.
#[derive(Debug, Clone)]
pub(crate) struct UnlockPlan {
    /// Release to unlock.
    pub release: String,
    /// `--force`.
    pub force: bool,
    /// The cluster.
    pub cluster: ClusterPlan,
}

/// `status`.
#[derive(Debug, Clone)]
pub(crate) struct StatusPlan {
    /// Release to show.
    pub release: String,
    /// `-o`.
    pub format: OutputFormat,
    /// The cluster.
    pub cluster: ClusterPlan,
}

/// `locks`.
#[derive(Debug, Clone)]
pub(crate) struct LocksPlan {
    /// `-A`.
    pub all_namespaces: bool,
    /// `-o`.
    pub format: OutputFormat,
    /// The cluster.
    pub cluster: ClusterPlan,
}

/// One validated command, ready to run.
#[derive(Debug, Clone)]
pub(crate) enum PlanKind {
    /// `upgrade` / `check`.
    Guard(Box<GuardPlan>),
    /// `lock`.
    Lock(LockPlan),
    /// `unlock`.
    Unlock(UnlockPlan),
    /// `status`.
    Status(StatusPlan),
    /// `locks`.
    Locks(LocksPlan),
    /// `policy …`.
    Policy(PolicyPlan),
    /// The shim, for any helm command but `upgrade`.
    Passthrough(PassthroughPlan),
    /// `completions SHELL`.
    Completions(crate::cli::CompletionTarget),
    /// `man [--dir DIR]`.
    Man(Option<PathBuf>),
}

/// A validated command line: build it with [`Plan::new`], run it with [`Plan::run`].
#[derive(Debug, Clone)]
pub struct Plan(pub(crate) PlanKind);

fn usage(message: String) -> Error {
    Error::Usage(UsageError(message))
}

impl Plan {
    /// Validates a parsed command line against the process environment; `now` is the
    /// current Unix time (for lock expiries).
    pub fn new(command: Command, now: i64) -> Result<Plan, Error> {
        plan(command, Env::from_process(), now)
    }

    /// The command a process started under the name `helm` runs (the shim), or `None`
    /// when argv[0] is any other name.
    pub fn shim_command(argv: &[std::ffi::OsString]) -> Option<Command> {
        let (argv0, rest) = argv.split_first()?;
        shim::invoked_as_helm(argv0).then(|| Command::Helm {
            args: rest.to_vec(),
        })
    }
}

impl PlanKind {
    /// Whether debug output was asked for (`--debug`, `HELM_DEBUG=true`).
    pub(crate) fn debug(&self) -> bool {
        let cluster = |c: &ClusterPlan| c.flags.debug || c.env.cluster.debug;
        match self {
            PlanKind::Guard(p) => p.debug || cluster(&p.cluster),
            PlanKind::Lock(p) => cluster(&p.cluster),
            PlanKind::Unlock(p) => cluster(&p.cluster),
            PlanKind::Status(p) => cluster(&p.cluster),
            PlanKind::Locks(p) => cluster(&p.cluster),
            PlanKind::Policy(
                PolicyPlan::Install(c) | PolicyPlan::Uninstall(c) | PolicyPlan::Show(c),
            ) => cluster(c),
            PlanKind::Policy(PolicyPlan::Manifest) => false,
            PlanKind::Passthrough(_) | PlanKind::Completions(_) | PlanKind::Man(_) => false,
        }
    }
}

/// [`Plan::new`] with the environment given.
pub(crate) fn plan(command: Command, env: Env, now: i64) -> Result<Plan, Error> {
    let Env {
        helm: env,
        shim,
        ci,
        debug,
        host,
    } = env;
    let kind = match command {
        // Non-usage failures of a guarded command (an unsupported HELM_DRIVER) are
        // fail-closed like those of `commands::run`: "helm was not run" is added once.
        Command::Upgrade { args } => PlanKind::Guard(Box::new(
            guard(&args, Mode::Upgrade, env, None, ci, debug, &host).map_err(Error::before_helm)?,
        )),
        Command::Check { args } => PlanKind::Guard(Box::new(guard(
            &args,
            Mode::Check,
            env,
            None,
            ci,
            debug,
            &host,
        )?)),
        Command::Helm { args } => {
            let helm = ShimHelm {
                explicit: shim.helm(),
            };
            match shim::route(&args).map_err(usage)? {
                Route::Passthrough => PlanKind::Passthrough(PassthroughPlan { helm, args }),
                Route::Upgrade(args) => PlanKind::Guard(Box::new(
                    guard(
                        &args,
                        Mode::Upgrade,
                        env,
                        Some((&shim, helm)),
                        ci,
                        debug,
                        &host,
                    )
                    .map_err(Error::before_helm)?,
                )),
            }
        }
        Command::Completions { shell } => PlanKind::Completions(shell),
        Command::Man { dir } => PlanKind::Man(dir),
        Command::Lock(args) => PlanKind::Lock(lock_plan(args, env, &host, now)?),
        Command::Policy(command) => PlanKind::Policy(match command {
            PolicyCommand::Install { cluster } => {
                PolicyPlan::Install(cluster_plan(cluster, env, &host)?)
            }
            PolicyCommand::Uninstall { cluster } => {
                PolicyPlan::Uninstall(cluster_plan(cluster, env, &host)?)
            }
            PolicyCommand::Show { cluster } => PolicyPlan::Show(cluster_plan(cluster, env, &host)?),
            PolicyCommand::Manifest => PolicyPlan::Manifest,
        }),
        Command::Unlock(UnlockArgs {
            release,
            force,
            cluster,
        }) => PlanKind::Unlock(UnlockPlan {
            release: release_name(release)?,
            force,
            cluster: cluster_plan(cluster, env, &host)?,
        }),
        Command::Status(StatusArgs {
            release,
            output,
            cluster,
        }) => PlanKind::Status(StatusPlan {
            release: release_name(release)?,
            format: output,
            cluster: cluster_plan(cluster, env, &host)?,
        }),
        Command::Locks(LocksArgs {
            all_namespaces,
            output,
            cluster,
        }) => PlanKind::Locks(LocksPlan {
            all_namespaces,
            format: output,
            cluster: cluster_plan(cluster, env, &host)?,
        }),
    };
    Ok(Plan(kind))
}

/// A release name as helm accepts it.
fn release_name(release: String) -> Result<String, Error> {
    names::validate_release_name(&release).map_err(|e| usage(e.to_string()))?;
    Ok(release)
}

fn cluster_plan(
    mut flags: ClusterFlags,
    env: HelmEnv,
    host: &HostEnv,
) -> Result<ClusterPlan, Error> {
    // `-n ''` means what no `-n` means to helm: the context's namespace.
    if flags.namespace.as_deref() == Some("") {
        flags.namespace = None;
    }
    // The namespace is spliced into API paths: only a valid DNS-1123 label gets there.
    if let Some(ns) = flags
        .namespace
        .as_deref()
        .or(env.cluster.namespace.as_deref())
    {
        names::validate_namespace(ns).map_err(|e| usage(e.to_string()))?;
    }
    // The environment is configuration like argv: a bad HELM_DRIVER or connection string is
    // a usage error found here, before any I/O.
    let driver =
        DriverKind::from_helm_driver(env.driver.as_deref()).map_err(|e| usage(e.to_string()))?;
    if driver == DriverKind::Sql {
        crate::adapters::storage::sql::check_connection_string(host.sql_connection.as_deref())
            .map_err(|e| usage(e.to_string()))?;
    }
    Ok(ClusterPlan { flags, env, driver })
}

fn guard(
    args: &[String],
    mode: Mode,
    env: HelmEnv,
    shim_mode: Option<(&ShimEnv, ShimHelm)>,
    ci: CiPlan,
    debug: bool,
    host: &HostEnv,
) -> Result<GuardPlan, Error> {
    let SplitArgv {
        guard,
        helm_args,
        release,
        chart,
        helm,
    } = argv::split(args, mode).map_err(|e| usage(e.to_string()))?;
    target::check_usage(&chart, &helm).map_err(usage)?;
    let (guard, shim_helm) = match shim_mode {
        None => (guard, None),
        Some((shim_env, shim_helm)) => {
            // helm's argv carries no guard flags: helm would reject them, and silently
            // taking them would change what the caller's helm command means.
            let removed = shim::removed_words(args, &helm_args);
            if let Some(first) = removed.first() {
                return Err(usage(format!(
                    "{first:?} is a guarded-upgrade flag, not a helm upgrade flag; in shim mode \
                     set guard options through GUARDED_UPGRADE_* variables (see docs/shim.md)"
                )));
            }
            (shim_env.guard_options().map_err(usage)?, Some(shim_helm))
        }
    };
    let in_shim = shim_helm.is_some();
    let serialize = (!guard.no_serialize).then(|| MutexPlan {
        wait: guard.mutex_timeout.unwrap_or(mutex::DEFAULT_WAIT),
        lease_duration: guard
            .lease_duration
            .unwrap_or(mutex::DEFAULT_LEASE_DURATION),
    });
    let format = match guard.output.as_deref() {
        Some("json") => OutputFormat::Json,
        _ => OutputFormat::Text,
    };
    let decision_file = guard.decision_file.map(|path| match path.as_str() {
        "-" => DecisionFile::Stderr,
        _ => DecisionFile::Path(PathBuf::from(path)),
    });
    let cluster = cluster_plan(helm.cluster.clone(), env, host)?;
    let debug = debug || helm.cluster.debug;
    Ok(GuardPlan {
        mode,
        release: release_name(release)?,
        chart,
        helm_args,
        // The shim never reads HELM_BIN: under a helm plugin it may name the shim itself.
        helm_bin: match in_shim {
            true => None,
            false => guard
                .helm
                .or_else(|| host.helm_bin.clone())
                .filter(|s| !s.is_empty()),
        },
        helm,
        cluster,
        version_rule: guard.version_rule,
        allow_chart_change: guard.allow_chart_change,
        compare: guard.compare,
        format,
        decision_file,
        detailed_exitcode: guard.detailed_exitcode,
        mutex: serialize,
        recover_pending_after: guard.recover_pending_after,
        input_timeout: guard
            .input_timeout
            .unwrap_or(crate::adapters::inputs::DEFAULT_CAPTURE_TIMEOUT),
        debug,
        shim: shim_helm,
        ci: if guard.no_annotations {
            CiPlan::default()
        } else {
            ci
        },
    })
}

fn lock_plan(args: LockArgs, env: HelmEnv, host: &HostEnv, now: i64) -> Result<LockPlan, Error> {
    let expires_at = match args.expires {
        None => None,
        Some(Expiry::After(d)) => Some(now.saturating_add(d.as_secs() as i64)),
        Some(Expiry::At(t)) => Some(t),
    };
    if let Some(at) = expires_at.filter(|&at| at <= now) {
        return Err(usage(format!(
            "--expires is not in the future ({}); a lock must expire later than now",
            format_rfc3339(at)
        )));
    }
    for (flag, text) in [
        ("--reason", &args.reason),
        ("--by", &args.by),
        ("--pin", &args.pin),
    ] {
        if let Some(text) = text.as_ref().filter(|t| t.len() > lock::MAX_TEXT_BYTES) {
            return Err(usage(format!(
                "{flag} is {} bytes long; at most {} are kept with the release",
                text.len(),
                lock::MAX_TEXT_BYTES
            )));
        }
    }
    let kind = if args.hard {
        LockKind::Hard
    } else if args.pin.is_some() {
        LockKind::Pin
    } else {
        LockKind::Soft
    };
    Ok(LockPlan {
        release: release_name(args.release)?,
        spec: Lock {
            kind,
            reason: args.reason,
            by: args.by,
            since: now,
            expires_at,
            pin: args.pin,
            // The chart version is the default key: a pin on it stores no key.
            pin_key: args
                .compare
                .filter(|key| *key != CompareKey::ChartVersion)
                .map(|key| key.to_string()),
        },
        format: args.output,
        enforce: args.enforce,
        ci_user: host.ci_user.clone(),
        login_user: host.login_user.clone(),
        cluster: cluster_plan(args.cluster, env, host)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::ci::GithubCi;
    use clap::Parser;

    const NOW: i64 = 1_700_000_000;

    fn plan_of(argv: &[&str]) -> Result<Plan, Error> {
        let cli = crate::cli::Cli::try_parse_from(
            std::iter::once("guarded-upgrade").chain(argv.iter().copied()),
        )
        .map_err(|e| usage(e.to_string()))?;
        plan(cli.command, Env::default(), NOW)
    }

    fn usage_error(argv: &[&str]) -> String {
        match plan_of(argv) {
            Err(Error::Usage(e)) => e.to_string(),
            Err(other) => panic!("{argv:?}: not a usage error: {other}"),
            Ok(p) => panic!("{argv:?}: accepted: {p:?}"),
        }
    }

    #[test]
    fn malformed_guard_flags_are_usage_errors() {
        for (argv, line) in [
            (
                &["upgrade", "db", "./c", "--lock-timeout", "bogus"][..],
                "invalid value \"bogus\" for --lock-timeout: expected a duration such as 90s, 5m, \
                 2h or 1d",
            ),
            (
                &["check", "db", "./c", "--lease-duration", "5x"][..],
                "invalid value \"5x\" for --lease-duration: expected a duration such as 90s, 5m, \
                 2h or 1d",
            ),
            (
                &["upgrade", "db", "./c", "--recover-pending-after", "soon"][..],
                "invalid value \"soon\" for --recover-pending-after: expected a duration such as \
                 90s, 5m, 2h or 1d",
            ),
        ] {
            assert_eq!(usage_error(argv), line);
        }
    }

    /// `HELM_DRIVER` is configuration like a flag: a value we cannot use is a usage error
    /// for every command that reads releases.
    #[test]
    fn helm_driver_is_validated_before_io() {
        let with_driver = |argv: &[&str], driver: &str| {
            let cli = crate::cli::Cli::try_parse_from(
                std::iter::once("guarded-upgrade").chain(argv.iter().copied()),
            )
            .unwrap();
            let mut env = Env::default();
            env.helm.driver = Some(driver.to_string());
            match plan(cli.command, env, NOW) {
                Err(Error::Usage(e)) => e.to_string(),
                Err(other) => panic!("{argv:?} {driver}: not a usage error: {other}"),
                Ok(p) => panic!("{argv:?} {driver}: accepted: {p:?}"),
            }
        };
        for argv in [
            &["upgrade", "db", "./c"][..],
            &["check", "db", "./c"],
            &["lock", "db"],
            &["unlock", "db"],
            &["status", "db"],
            &["locks"],
        ] {
            assert_eq!(
                with_driver(argv, "bogus"),
                "HELM_DRIVER=\"bogus\" is not a helm storage driver (use secret, configmap, sql \
                 or memory)"
            );
            assert_eq!(
                with_driver(argv, "memory"),
                "HELM_DRIVER=memory is not supported: helm keeps such releases only inside its \
                 own process; guarded-upgrade reads releases from Secrets (default), ConfigMaps \
                 (HELM_DRIVER=configmap) or PostgreSQL (HELM_DRIVER=sql)"
            );
        }
    }

    #[test]
    fn lock_expiry_must_be_in_the_future() {
        assert_eq!(
            usage_error(&["lock", "db", "--expires", "2001-01-01T00:00:00Z"]),
            "--expires is not in the future (2001-01-01T00:00:00Z); a lock must expire later \
             than now"
        );
        let Plan(PlanKind::Lock(p)) =
            plan_of(&["lock", "db", "--expires", "4h", "--pin", "1.4.x"]).unwrap()
        else {
            panic!("not a lock plan")
        };
        assert_eq!(p.spec.expires_at, Some(NOW + 4 * 3600));
        assert_eq!(p.spec.kind, LockKind::Pin);
        let long = "x".repeat(1000);
        assert_eq!(
            usage_error(&["lock", "db", "--reason", &long]),
            "--reason is 1000 bytes long; at most 256 are kept with the release"
        );
    }

    fn shim_plan(argv: &[&str], vars: &[(&str, &str)]) -> Result<Plan, Error> {
        let env = Env {
            shim: ShimEnv::from_pairs(vars.iter().map(|(k, v)| (k.to_string(), v.to_string()))),
            ..Env::default()
        };
        let command = Plan::shim_command(
            &std::iter::once("/usr/local/bin/helm")
                .chain(argv.iter().copied())
                .map(std::ffi::OsString::from)
                .collect::<Vec<_>>(),
        )
        .expect("argv[0] helm is the shim");
        plan(command, env, NOW)
    }

    #[test]
    fn shim_keeps_helms_argv_and_reads_settings_from_the_environment() {
        let Plan(PlanKind::Guard(p)) = shim_plan(
            &[
                "-n",
                "x",
                "upgrade",
                "db",
                "./c",
                "--debug",
                "--history-max",
                "10",
            ],
            &[
                ("GUARDED_UPGRADE_POLICY", "newer-or-equal"),
                ("GUARDED_UPGRADE_LOCK_TIMEOUT", "10s"),
                ("GUARDED_UPGRADE_HELM", "/opt/helm"),
            ],
        )
        .unwrap() else {
            panic!("not a guard plan")
        };
        assert_eq!(
            p.helm_args,
            ["-n", "x", "db", "./c", "--debug", "--history-max", "10"]
        );
        assert!(!p.helm.install, "no --install added in shim mode");
        assert_eq!(p.version_rule, VersionRule::NewerOrEqual);
        assert_eq!(p.mutex.unwrap().wait, Duration::from_secs(10));
        assert_eq!(
            p.shim,
            Some(ShimHelm {
                explicit: Some("/opt/helm".into())
            })
        );
        let Plan(PlanKind::Passthrough(p)) = shim_plan(&["list", "-o", "json"], &[]).unwrap()
        else {
            panic!("not a pass-through")
        };
        assert_eq!(p.args, ["list", "-o", "json"]);
    }

    #[test]
    fn shim_usage_errors_come_before_io() {
        for (argv, vars, line) in [
            (
                &["upgrade", "db", "./c", "--no-serialize"][..],
                &[][..],
                "\"--no-serialize\" is a guarded-upgrade flag, not a helm upgrade flag; in shim \
                 mode set guard options through GUARDED_UPGRADE_* variables (see docs/shim.md)",
            ),
            (
                &["upgrade", "db", "./c"][..],
                &[("GUARDED_UPGRADE_LOCK_TIMEOUT", "soon")][..],
                "invalid value \"soon\" for GUARDED_UPGRADE_LOCK_TIMEOUT: expected a duration such \
                 as 90s, 5m, 2h or 1d",
            ),
            (
                &["upgrade", "db"][..],
                &[][..],
                "missing CHART: usage is `upgrade [flags] RELEASE CHART`",
            ),
        ] {
            match shim_plan(argv, vars) {
                Err(Error::Usage(e)) => assert_eq!(e.to_string(), line),
                other => panic!("{argv:?}: {other:?}"),
            }
        }
        // Other helm commands are helm's to judge, even with bad guard settings.
        assert!(shim_plan(&["version"], &[("GUARDED_UPGRADE_POLICY", "x")]).is_ok());
    }

    #[test]
    fn no_annotations_turns_ci_off() {
        let ci = CiPlan {
            github: Some(GithubCi::default()),
            gitlab: true,
        };
        let env = Env {
            ci: ci.clone(),
            ..Env::default()
        };
        let cli = crate::cli::Cli::try_parse_from(["g", "upgrade", "db", "./c"]).unwrap();
        let Plan(PlanKind::Guard(p)) = plan(cli.command, env.clone(), NOW).unwrap() else {
            panic!()
        };
        assert_eq!(p.ci, ci);
        let cli =
            crate::cli::Cli::try_parse_from(["g", "upgrade", "db", "./c", "--no-annotations"])
                .unwrap();
        let Plan(PlanKind::Guard(p)) = plan(cli.command, env, NOW).unwrap() else {
            panic!()
        };
        assert_eq!(p.ci, CiPlan::default());
        assert_eq!(p.helm_args, ["db", "./c"]);
    }

    #[test]
    fn pins_store_their_key_unless_it_is_the_chart_version() {
        for (compare, key) in [
            (None, None),
            (Some("chart-version"), None),
            (Some("app-version"), Some("app-version")),
            (Some("value:image.tag"), Some("value:image.tag")),
        ] {
            let mut argv = vec!["lock", "db", "--pin", "1.x"];
            argv.extend(compare.iter().flat_map(|c| ["--compare", c]));
            let Plan(PlanKind::Lock(p)) = plan_of(&argv).unwrap() else {
                panic!("not a lock plan")
            };
            assert_eq!(p.spec.pin_key.as_deref(), key, "{compare:?}");
        }
        assert!(
            usage_error(&["lock", "db", "--pin", "1.x", "--compare", "value:"])
                .starts_with("error: invalid value 'value:' for '--compare <KEY>'")
        );
        assert!(usage_error(&["lock", "db", "--compare", "app-version"]).contains("--pin"));
    }

    #[test]
    fn guard_plan_is_typed() {
        let Plan(PlanKind::Guard(p)) = plan_of(&[
            "upgrade",
            "db",
            "./c",
            "-n",
            "",
            "--mutex-timeout",
            "10s",
            "--decision-output",
            "json",
            "--decision-file",
            "-",
        ])
        .unwrap() else {
            panic!("not a guard plan")
        };
        assert_eq!(p.mutex.unwrap().wait, Duration::from_secs(10));
        assert_eq!(p.format, OutputFormat::Json);
        assert_eq!(p.decision_file, Some(DecisionFile::Stderr));
        assert_eq!(
            p.cluster.flags.namespace, None,
            "-n '' is the context's namespace"
        );
        assert_eq!(p.helm_args, ["db", "./c", "-n", ""]);
    }
}
