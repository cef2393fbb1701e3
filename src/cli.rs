//! The command line as clap types, and nothing else. `upgrade` and `check` take helm's argv
//! verbatim (split later by the plan step); the lock commands are ordinary clap commands
//! whose values are typed here.

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::cluster::ClusterFlags;
use crate::decision::CompareKey;
use crate::time::parse_duration;
use crate::version::{ChartVersion, Constraint};

/// The guard's own long flags of `upgrade`/`check` (the rest of their argv is helm's).
pub const GUARD_LONG_FLAGS: &[&str] = &[
    "min-version-policy",
    "allow-chart-change",
    "helm",
    "decision-file",
    "decision-output",
    "detailed-exitcode",
    "no-serialize",
    "lock-timeout",
    "recover-pending-after",
    "lease-duration",
    "no-annotations",
];

/// Flags that ask for help in a pass-through command.
pub(crate) const HELP_FLAGS: [&str; 2] = ["-h", "--help"];

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
      --no-annotations             no GitHub Actions annotations or step summary, no GitLab
                                   log sections (see docs/ci.md)
  -h, --help                       this help
";

const CHECK_FLAGS: &str = "\
Usage: guarded-upgrade check RELEASE CHART [helm upgrade flags...] [guard flags...]

Makes exactly the decision `upgrade` would, prints it, and never runs `helm upgrade` nor
writes to the cluster. Takes the same flags as `upgrade`, plus:
  -o, --output text|json           json: print the decision as one JSON object on stdout
";

/// `--version`: the crate version and the git commit it was built from (`build.rs`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("GU_GIT_COMMIT"),
    ")"
);

/// A drop-in `helm upgrade --install` that never downgrades a release and honours locks.
#[derive(Debug, Parser)]
#[command(name = "guarded-upgrade", version = VERSION, after_long_help = EXIT_CODES)]
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
    /// Cluster-enforced hard locks: install, remove, show or print the admission policy
    /// (installing and removing it is a cluster admin's job; see docs/locks.md)
    #[command(subcommand, after_long_help = EXIT_CODES)]
    Policy(PolicyCommand),
    /// Act as helm: guard `helm upgrade`, hand every other command to the real helm
    /// unchanged (also what the binary does when started under the name `helm`)
    #[command(
        disable_help_flag = true,
        override_usage = "guarded-upgrade helm -- HELM_ARGS...",
        after_long_help = SHIM_HELP
    )]
    Helm {
        /// helm's own command line
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            num_args = 0..,
            value_name = "HELM_ARGS",
            value_parser = clap::value_parser!(std::ffi::OsString)
        )]
        args: Vec<std::ffi::OsString>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell), or the helm
    /// plugin's completion.yaml (helm-plugin)
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: CompletionTarget,
    },
    /// Print the man page (roff) on stdout, or write one page per command into --dir
    Man {
        /// Write guarded-upgrade.1 and guarded-upgrade-COMMAND.1 pages into this directory
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
}

const SHIM_HELP: &str = "\
The argv is helm's: `--install` is not added, guard flags are not read. `helm upgrade` is
guarded (skips print a `skip:` line and exit 0); every other command runs the real helm
with stdin, stdout, stderr and exit code untouched. The real helm is $GUARDED_UPGRADE_HELM,
else the next `helm` on PATH that is not this binary.

Guard settings (environment):
  GUARDED_UPGRADE_POLICY                 newer (default), newer-or-equal, newer-or-changed, off
  GUARDED_UPGRADE_ALLOW_CHART_CHANGE     true/false
  GUARDED_UPGRADE_DECISION_FILE          path, or - for stderr
  GUARDED_UPGRADE_DECISION_OUTPUT        text (default) or json (on stderr)
  GUARDED_UPGRADE_DETAILED_EXITCODE      true/false
  GUARDED_UPGRADE_NO_SERIALIZE           true/false
  GUARDED_UPGRADE_LOCK_TIMEOUT           duration (default 5m)
  GUARDED_UPGRADE_LEASE_DURATION         duration (default 15s)
  GUARDED_UPGRADE_RECOVER_PENDING_AFTER  duration
  GUARDED_UPGRADE_NO_ANNOTATIONS         true/false
  GUARDED_UPGRADE_COMPARE                chart-version (default), app-version, value:PATH
  GUARDED_UPGRADE_HELM                   the real helm binary
Any other GUARDED_UPGRADE_* variable is a usage error (exit 2).";

impl Command {
    /// The raw argv of `upgrade`/`check`, with the subcommand name.
    pub fn passthrough_args(&self) -> Option<(&'static str, &[String])> {
        match self {
            Command::Upgrade { args } => Some(("upgrade", args)),
            Command::Check { args } => Some(("check", args)),
            _ => None,
        }
    }

    /// The subcommand whose help a pass-through argv asks for (`-h`/`--help` before `--`).
    pub fn help_requested(&self) -> Option<&'static str> {
        let (name, args) = self.passthrough_args()?;
        args.iter()
            .take_while(|a| a.as_str() != "--")
            .any(|a| HELP_FLAGS.contains(&a.as_str()))
            .then_some(name)
    }
}

/// What `completions` generates for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionTarget {
    /// bash.
    Bash,
    /// zsh.
    Zsh,
    /// fish.
    Fish,
    /// elvish.
    Elvish,
    /// PowerShell.
    Powershell,
    /// helm's static plugin completion file (`completion.yaml`).
    HelmPlugin,
}

/// How a command prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum OutputFormat {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON document.
    Json,
}

/// When a lock stops applying, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expiry {
    /// A duration from now (`4h`).
    After(std::time::Duration),
    /// A point in time, Unix seconds (`2026-12-01T00:00:00Z`).
    At(i64),
}

/// Parses `--expires`: a duration or an RFC 3339 timestamp.
fn parse_expiry(text: &str) -> Result<Expiry, String> {
    if let Some(d) = parse_duration(text) {
        return Ok(Expiry::After(d));
    }
    crate::time::parse_rfc3339(text)
        .map(Expiry::At)
        .ok_or_else(|| {
            "neither a duration (90s, 30m, 4h, 7d) nor an RFC 3339 timestamp \
         (2026-12-01T00:00:00Z)"
                .to_string()
        })
}

/// Parses `--pin`: an exact version or a constraint.
fn parse_pin(text: &str) -> Result<String, String> {
    if ChartVersion::parse(text).is_ok() || Constraint::parse(text).is_ok() {
        Ok(text.to_string())
    } else {
        Err(
            "neither a version nor a version constraint (examples: 1.4.3, 1.4.x, \">=1.4 <2\", \
             ^1.4)"
                .to_string(),
        )
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
    #[arg(long, value_name = "VERSION|CONSTRAINT", value_parser = parse_pin)]
    pub pin: Option<String>,
    /// The key the pin constrains: chart-version (default), app-version or value:PATH
    #[arg(long, value_name = "KEY", requires = "pin", value_parser = CompareKey::parse)]
    pub compare: Option<CompareKey>,
    /// Lock expiry: a duration (90s, 30m, 4h, 7d) or an RFC 3339 timestamp
    #[arg(long, value_name = "DURATION|TIMESTAMP", value_parser = parse_expiry)]
    pub expires: Option<Expiry>,
    /// Also stop plain `helm upgrade` (marks the latest revision pending-upgrade)
    #[arg(long)]
    pub hard: bool,
    /// With --hard: fail (exit 3, nothing written) unless the cluster can enforce the lock
    #[arg(long, requires = "hard")]
    pub enforce: bool,
    /// Who locks it (default: $GITHUB_ACTOR, $GITLAB_USER_LOGIN, …, kubeconfig user, $USER)
    #[arg(long)]
    pub by: Option<String>,
    /// Output format
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: OutputFormat,
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
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: OutputFormat,
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
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: OutputFormat,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub cluster: ClusterFlags,
}

// ---- `policy` (issue 18: cluster-enforced hard locks) ----

/// `policy` subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Apply the ValidatingAdmissionPolicy, its binding and a reader ClusterRole (cluster
    /// admin)
    Install {
        #[command(flatten)]
        #[allow(missing_docs)]
        cluster: ClusterFlags,
    },
    /// Delete them: hard locks are no longer enforced by the cluster (cluster admin)
    Uninstall {
        #[command(flatten)]
        #[allow(missing_docs)]
        cluster: ClusterFlags,
    },
    /// Say whether the policy is installed and current, and which releases it locks
    Show {
        #[command(flatten)]
        #[allow(missing_docs)]
        cluster: ClusterFlags,
    },
    /// Print the manifest `install` applies (for GitOps), without talking to a cluster
    Manifest,
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
        for flag in GUARD_LONG_FLAGS {
            assert!(
                help.contains(&format!("--{flag} ")),
                "--{flag} missing from upgrade --help"
            );
        }
        for code in ["  0 ", "  2 ", "  3 ", "10 = skipped", "11 = helm ran"] {
            assert!(help.contains(code), "{code:?} missing from upgrade --help");
        }
    }
}
