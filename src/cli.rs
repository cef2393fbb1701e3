//! The command line (clap). `upgrade` and `check` take helm's argv verbatim and split it
//! themselves ([`crate::argv`]); the lock commands are ordinary clap commands.

use clap::{Args, Parser, Subcommand};

use crate::argv::Mode;
use crate::cluster::ClusterFlags;
use crate::exit::Failure;

/// Flags that ask for help in a pass-through command.
pub const HELP_FLAGS: [&str; 2] = ["-h", "--help"];

const EXIT_CODES: &str = "\
Exit codes:
  0   done: helm ran and succeeded, or the upgrade was skipped (skips print a `skip:` line)
  2   usage error (malformed arguments, bad pin or expiry)
  3   refused or cannot decide safely (release pending or locked for real, cluster
      unreachable or forbidden, undecodable record, unresolvable target); helm was not run
  *   any other code is helm's own exit code
With --detailed-exitcode: 10 = skipped (nothing changed), 11 = helm ran and succeeded
(`check`: would install or upgrade); 2, 3 and helm's codes are unchanged.";

const GUARD_FLAGS: &str = "\
Usage: guarded-upgrade upgrade [--install|-i] RELEASE CHART [helm upgrade flags...] [guard flags...]

Every helm flag is passed to `helm upgrade --install` unchanged and in order (see
`helm upgrade --help`); only the guard flags below are removed. The target version comes
from the local chart (directory or .tgz), an exact --version, or what helm would pick
(`helm show chart` with your repo/--version/--devel flags). Cluster, namespace and storage
follow helm: -n/--namespace, --kube-context, --kubeconfig, HELM_NAMESPACE,
HELM_KUBECONTEXT, KUBECONFIG, HELM_DRIVER (secret or configmap).

Guard flags:
      --min-version-policy POLICY  newer (default): target must be greater than the deployed
                                   chart version; newer-or-equal: also re-apply the same
                                   version; off: no version guard (locks still apply)
      --allow-chart-change         permit a different chart name than the deployed one
      --helm PATH                  helm binary (default: $HELM_BIN, else `helm` on PATH)
      --decision-file PATH         write the decision as one JSON object to PATH (`-`: stderr)
      --decision-output text|json  json: also print the decision JSON on stderr (helm owns
                                   stdout); `check` prints it on stdout
      --detailed-exitcode          distinct exit codes for skipped (10) and changed (11)
      --no-serialize               do not take the per-release cluster mutex
      --lock-timeout DURATION      how long to wait for another run's mutex (default 5m)
      --recover-pending-after D    mark a stale pending-* record failed when no live run
                                   holds the mutex and the record is older than D
      --lease-duration D           duration of the mutex Lease, renewed every third of it
                                   (default 15s; a crashed holder is taken over after it)
  -h, --help                       this help
";

const CHECK_FLAGS: &str = "\
Usage: guarded-upgrade check RELEASE CHART [helm upgrade flags...] [guard flags...]

Makes exactly the decision `upgrade` would, prints it, and never runs `helm upgrade` nor
writes to the cluster. Takes the same flags as `upgrade`, plus:
  -o, --output text|json           json: print the decision as one JSON object on stdout
";

/// A drop-in `helm upgrade --install` that never downgrades a release and honours locks.
#[derive(Debug, Parser)]
#[command(name = "guarded-upgrade", version, after_long_help = EXIT_CODES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Guarded `helm upgrade --install`: runs helm only when the target is newer and the
    /// release is not locked
    #[command(
        disable_help_flag = true,
        override_usage = "guarded-upgrade upgrade [--install|-i] RELEASE CHART [helm flags...] [guard flags...]",
        after_long_help = format!("{GUARD_FLAGS}\n{EXIT_CODES}")
    )]
    Upgrade {
        /// RELEASE CHART and helm/guard flags, passed through
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0.., value_name = "ARGS")]
        args: Vec<String>,
    },
    /// Show what `upgrade` would decide, without running helm or writing anything
    #[command(
        disable_help_flag = true,
        override_usage = "guarded-upgrade check RELEASE CHART [helm flags...] [guard flags...] [-o json]",
        after_long_help = format!("{CHECK_FLAGS}\n{GUARD_FLAGS}\n{EXIT_CODES}")
    )]
    Check {
        /// RELEASE CHART and helm/guard flags
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0.., value_name = "ARGS")]
        args: Vec<String>,
    },
    /// Lock a release: guarded upgrades skip it (or, with --pin, only move within the pin)
    #[command(after_long_help = EXIT_CODES)]
    Lock(LockArgs),
    /// Remove a release's lock (restoring the original status of a hard lock)
    #[command(after_long_help = EXIT_CODES)]
    Unlock(UnlockArgs),
    /// Show the deployed release, its lock and what `upgrade` would do
    #[command(after_long_help = EXIT_CODES)]
    Status(StatusArgs),
    /// List locked releases in the namespace, or everywhere with -A
    #[command(after_long_help = EXIT_CODES)]
    Locks(LocksArgs),
}

impl Command {
    /// The raw argv of `upgrade`/`check`, with the subcommand name.
    pub fn passthrough_args(&self) -> Option<(&'static str, &[String])> {
        match self {
            Command::Upgrade { args } => Some(("upgrade", args)),
            Command::Check { args } => Some(("check", args)),
            _ => None,
        }
    }
}

/// `lock` arguments.
#[derive(Debug, Args)]
pub struct LockArgs {
    /// Release to lock
    pub release: String,
    /// Why it is locked (shown in skip messages and `status`)
    #[arg(long)]
    pub reason: Option<String>,
    /// Only allow versions matching this version or constraint (e.g. 1.4.x, ">=1.4 <2")
    #[arg(long, value_name = "VERSION|CONSTRAINT")]
    pub pin: Option<String>,
    /// The key the pin constrains: chart-version (default), app-version or value:PATH
    #[arg(long, value_name = "KEY", requires = "pin")]
    pub compare: Option<String>,
    /// Lock expiry: a duration (90s, 30m, 4h, 7d) or an RFC 3339 timestamp
    #[arg(long, value_name = "DURATION|TIMESTAMP")]
    pub expires: Option<String>,
    /// Also stop plain `helm upgrade` (marks the latest revision pending-upgrade)
    #[arg(long)]
    pub hard: bool,
    /// Who locks it (default: $GITHUB_ACTOR, $GITLAB_USER_LOGIN, …, kubeconfig user, $USER)
    #[arg(long)]
    pub by: Option<String>,
    /// Output format
    #[arg(short = 'o', long, value_parser = ["text", "json"], default_value = "text")]
    pub output: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub cluster: ClusterFlags,
}

/// `unlock` arguments.
#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// Release to unlock
    pub release: String,
    /// Remove the lock labels even if a hard-locked record changed underneath (the
    /// record's status is then left as it is)
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub cluster: ClusterFlags,
}

/// `status` arguments.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Release to show
    pub release: String,
    /// Output format
    #[arg(short = 'o', long, value_parser = ["text", "json"], default_value = "text")]
    pub output: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub cluster: ClusterFlags,
}

/// `locks` arguments.
#[derive(Debug, Args)]
pub struct LocksArgs {
    /// List locks in every namespace
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Output format
    #[arg(short = 'o', long, value_parser = ["text", "json"], default_value = "text")]
    pub output: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub cluster: ClusterFlags,
}

/// Runs one parsed command.
pub async fn dispatch(command: Command) -> Result<i32, Failure> {
    match command {
        Command::Upgrade { args } => crate::app::run(&args, Mode::Upgrade).await,
        Command::Check { args } => crate::app::run(&args, Mode::Check).await,
        Command::Lock(args) => crate::lockcmd::lock(args).await,
        Command::Unlock(args) => crate::lockcmd::unlock(args).await,
        Command::Status(args) => crate::lockcmd::status(args).await,
        Command::Locks(args) => crate::lockcmd::locks(args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn upgrade_takes_helm_flags_verbatim() {
        let cli = Cli::try_parse_from([
            "guarded-upgrade",
            "upgrade",
            "--install",
            "db",
            "./chart",
            "-n",
            "shared",
            "--set",
            "a=b",
            "--frobnicate",
        ])
        .unwrap();
        let (name, args) = cli.command.passthrough_args().unwrap();
        assert_eq!(name, "upgrade");
        assert_eq!(
            args,
            [
                "--install",
                "db",
                "./chart",
                "-n",
                "shared",
                "--set",
                "a=b",
                "--frobnicate"
            ]
        );
    }

    #[test]
    fn help_documents_every_guard_flag_and_exit_code() {
        let help = Cli::command()
            .find_subcommand_mut("upgrade")
            .unwrap()
            .render_long_help()
            .to_string();
        for flag in [
            "--min-version-policy",
            "--allow-chart-change",
            "--helm",
            "--decision-file",
            "--decision-output",
            "--detailed-exitcode",
            "--no-serialize",
            "--lock-timeout",
            "--recover-pending-after",
            "--lease-duration",
        ] {
            assert!(help.contains(flag), "{flag} missing from upgrade --help");
        }
        for code in ["  0 ", "  2 ", "  3 ", "10 = skipped", "11 = helm ran"] {
            assert!(help.contains(code), "{code:?} missing from upgrade --help");
        }
    }
}
