//! The command line as clap types, and nothing else. `upgrade` and `check` take helm's argv
//! verbatim (split later by the plan step); the lock commands are ordinary clap commands
//! whose values are typed here.

use clap::builder::PossibleValuesParser;
use clap::{Arg, ArgAction, Args, Parser, Subcommand, ValueEnum};

use crate::adapters::cluster::ClusterFlags;
use crate::core::decision::CompareKey;
use crate::core::flags::{guard_flags, Mode, Takes};
use crate::core::time::parse_duration;
use crate::core::version::{ChartVersion, Constraint};

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

/// What `upgrade --help` says besides its flags (which come from the guard flag table).
const UPGRADE_HELP: &str = "\
Every helm flag is passed to `helm upgrade --install` unchanged and in order (see
`helm upgrade --help`); only the guard flags above are removed. The target version comes
from the local chart (directory or .tgz), an exact --version, or what helm would pick
(`helm show chart` with your repo/--version/--devel flags). Cluster, namespace and storage
follow helm: -n/--namespace, --kube-context, --kubeconfig, HELM_NAMESPACE,
HELM_KUBECONTEXT, KUBECONFIG, HELM_DRIVER (secret, configmap, or sql with
HELM_DRIVER_SQL_CONNECTION_STRING).
";

/// What `check --help` adds.
const CHECK_HELP: &str = "\
Makes exactly the decision `upgrade` would, prints it, and never runs `helm upgrade` nor
writes to the cluster. Takes the same flags as `upgrade`, plus -o/--output.
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
        after_long_help = format!("{UPGRADE_HELP}\n{EXIT_CODES}")
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
        after_long_help = format!("{CHECK_HELP}\n{UPGRADE_HELP}\n{EXIT_CODES}")
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
        after_long_help = shim_help()
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

/// `helm --help`: the routing, and the settings from the guard flag table.
fn shim_help() -> String {
    use std::fmt::Write as _;
    let mut help = String::from(
        "\
The argv is helm's: `--install` is not added, guard flags are not read. `helm upgrade` is
guarded (skips print a `skip:` line and exit 0); every other command runs the real helm
with stdin, stdout, stderr and exit code untouched.

Guard settings (environment), one per guard flag of `upgrade`:
",
    );
    let settings: Vec<_> = crate::adapters::shim::settings().collect();
    let width = settings.iter().map(|(var, _)| var.len()).max().unwrap_or(0);
    for (var, flag) in settings {
        let value = match flag.takes {
            Takes::Switch => "true/false".to_string(),
            Takes::Value { name, choices: [] } => name.to_string(),
            Takes::Value { choices, .. } => choices.join("|"),
        };
        let _ = writeln!(help, "  {var:<width$}  {value}: as --{}", flag.long);
    }
    help.push_str("Any other GUARDED_UPGRADE_* variable is a usage error (exit 2).");
    help
}

/// The whole command line for help, man pages and completions: the clap definitions, with
/// the guard flags of `upgrade` and `check` added from their table. Parsing uses
/// [`Cli`] alone, because those two take helm's argv verbatim and split it by pflag's rules
/// (`argv::split`), which clap cannot do.
pub fn command() -> clap::Command {
    // `mut_subcommands` keeps the subcommands in place (`mut_subcommand` moves them last).
    <Cli as clap::CommandFactory>::command().mut_subcommands(|c| match c.get_name() {
        "upgrade" => with_guard_flags(c, Mode::Upgrade),
        "check" => with_guard_flags(c, Mode::Check),
        _ => c,
    })
}

fn with_guard_flags(command: clap::Command, mode: Mode) -> clap::Command {
    let flags = guard_flags(mode).map(|flag| {
        let arg = Arg::new(flag.long).long(flag.long).help(flag.help);
        let arg = match flag.short {
            Some(c) => arg.short(c),
            None => arg,
        };
        match flag.takes {
            Takes::Switch => arg.action(ArgAction::SetTrue),
            Takes::Value { name, choices } => {
                let arg = arg.value_name(name).action(ArgAction::Set);
                match choices {
                    [] => arg,
                    _ => arg.value_parser(PossibleValuesParser::new(choices)),
                }
            }
        }
    });
    command.args(flags).arg(
        Arg::new("help")
            .short('h')
            .long("help")
            .help("Print help")
            .action(ArgAction::Help),
    )
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
    crate::core::time::parse_rfc3339(text)
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

    fn long_help(verb: &str) -> String {
        command()
            .find_subcommand_mut(verb)
            .unwrap()
            .render_long_help()
            .to_string()
    }

    #[test]
    fn documented_command_is_well_formed() {
        command().debug_assert();
    }

    /// `upgrade --help` and `check --help` name every guard flag of the table with its
    /// value and every choice, every storage driver, and the exit codes; `Usage:` once.
    #[test]
    fn help_documents_every_guard_flag_policy_driver_and_exit_code() {
        for mode in [Mode::Upgrade, Mode::Check] {
            let verb = mode.verb();
            let help = long_help(verb);
            let lines: Vec<&str> = help.lines().map(str::trim).collect();
            for flag in guard_flags(mode) {
                let mut want = match flag.short {
                    Some(c) => format!("-{c}, --{}", flag.long),
                    None => format!("--{}", flag.long),
                };
                if let Takes::Value { name, choices } = flag.takes {
                    want.push_str(&format!(" <{name}>"));
                    let listed = format!("[possible values: {}]", choices.join(", "));
                    assert!(
                        choices.is_empty() || lines.contains(&listed.as_str()),
                        "{verb} --help: {listed} missing"
                    );
                }
                assert!(
                    lines.contains(&want.as_str()),
                    "{verb} --help: {want:?} missing"
                );
                assert!(
                    lines.contains(&flag.help),
                    "{verb} --help: help of --{}",
                    flag.long
                );
            }
            for driver in [
                "secret",
                "configmap",
                "sql",
                "HELM_DRIVER_SQL_CONNECTION_STRING",
            ] {
                assert!(help.contains(driver), "{verb} --help: {driver} missing");
            }
            for code in [
                "0   done",
                "2   usage error",
                "3   refused",
                "10 = skipped",
                "11 = helm ran",
            ] {
                assert!(help.contains(code), "{code:?} missing from {verb} --help");
            }
            assert_eq!(help.matches("Usage:").count(), 1, "{verb} --help:\n{help}");
        }
        assert!(
            !long_help("upgrade").contains("--output"),
            "-o is helm's in upgrade"
        );
    }

    /// `helm --help` (the shim) lists exactly the table's variables, each once.
    #[test]
    fn shim_help_lists_every_setting() {
        let help = long_help("helm");
        for flag in guard_flags(Mode::Upgrade) {
            let var = flag.env.expect("every upgrade flag has a shim variable");
            let line = help
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{var} ")))
                .unwrap_or_else(|| panic!("{var} missing from helm --help"));
            assert!(line.ends_with(&format!(": as --{}", flag.long)), "{line}");
        }
        assert_eq!(
            help.matches("GUARDED_UPGRADE_").count(),
            guard_flags(Mode::Upgrade).count() + 1,
            "{help}"
        );
    }

    /// The guard flags of `mode` as a sorted set of long names: what each surface must offer.
    fn table(mode: Mode) -> std::collections::BTreeSet<String> {
        guard_flags(mode).map(|f| f.long.to_string()).collect()
    }

    /// Long names after `--` in `text` (`--min-version-policy=[` gives `min-version-policy`).
    fn longs_in(text: &str) -> std::collections::BTreeSet<String> {
        text.split("--")
            .skip(1)
            .map(|rest| {
                rest.chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '-')
                    .collect::<String>()
            })
            .filter(|long| !long.is_empty() && long != "help")
            .collect()
    }

    #[test]
    fn help_and_completions_name_the_mutex_timeout_not_its_former_name() {
        use crate::output::completion_script;
        let help = command()
            .find_subcommand_mut("upgrade")
            .unwrap()
            .render_long_help()
            .to_string();
        let bash = completion_script(CompletionTarget::Bash);
        for surface in [&help, &bash, &shim_help()] {
            assert!(surface.contains("mutex-timeout") || surface.contains("MUTEX_TIMEOUT"));
            assert!(!surface.contains("lock-timeout") && !surface.contains("LOCK_TIMEOUT"));
        }
    }

    #[test]
    fn shell_completions_offer_exactly_the_guard_flags() {
        use crate::output::completion_script;
        let bash = completion_script(CompletionTarget::Bash);
        let zsh = completion_script(CompletionTarget::Zsh);
        let fish = completion_script(CompletionTarget::Fish);
        for mode in [Mode::Upgrade, Mode::Check] {
            let verb = mode.verb();
            let state = format!("guarded__upgrade__subcmd__{verb})");
            let opts = bash
                .split(&state)
                .nth(1)
                .and_then(|rest| rest.lines().find(|l| l.trim_start().starts_with("opts=")))
                .unwrap_or_else(|| panic!("bash: no {state}"));
            assert_eq!(longs_in(opts), table(mode), "bash {verb}");
            // zsh: the first `(verb)` block is the command's own (later ones: `help verb`).
            let block = zsh
                .split(&format!("({verb})\n"))
                .nth(1)
                .and_then(|rest| rest.split(";;").next())
                .unwrap_or_else(|| panic!("zsh: no ({verb})"));
            assert_eq!(longs_in(block), table(mode), "zsh {verb}");
            let condition = format!("__fish_guarded_upgrade_using_subcommand {verb}\"");
            let fish_longs: std::collections::BTreeSet<String> = fish
                .lines()
                .filter(|l| l.contains(&condition))
                .filter_map(|l| l.split(" -l ").nth(1)?.split(' ').next())
                .filter(|long| *long != "help")
                .map(str::to_string)
                .collect();
            assert_eq!(fish_longs, table(mode), "fish {verb}");
        }
    }

    #[test]
    fn man_pages_document_every_guard_flag_and_choice() {
        for mode in [Mode::Upgrade, Mode::Check] {
            let page = command().find_subcommand(mode.verb()).unwrap().clone();
            let mut roff = Vec::new();
            clap_mangen::Man::new(page).render(&mut roff).unwrap();
            let roff = String::from_utf8(roff).unwrap().replace("\\-", "-");
            assert_eq!(
                longs_in(&roff).intersection(&table(Mode::Check)).count(),
                table(mode).len()
            );
            for flag in guard_flags(mode) {
                if let Takes::Value { choices, .. } = flag.takes {
                    for choice in choices {
                        assert!(roff.contains(choice), "man {}: {choice}", mode.verb());
                    }
                }
            }
        }
    }

    /// The README's guard flag table names exactly the flags of `upgrade`, and every
    /// choice of a flag with a closed set of values.
    #[test]
    fn readme_guard_flag_table_matches_the_table() {
        let readme = include_str!("../README.md");
        let rows: Vec<&str> = readme
            .split("Guard flags (removed before helm sees the argv")
            .nth(1)
            .expect("README: guard flag section")
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .skip(2)
            .collect();
        let first_column = |row: &str| row.split(" | ").next().unwrap_or_default().to_string();
        let named: std::collections::BTreeSet<String> = rows
            .iter()
            .flat_map(|r| longs_in(&first_column(r)))
            .collect();
        assert_eq!(named, table(Mode::Upgrade), "README guard flag table");
        for flag in guard_flags(Mode::Upgrade) {
            if let Takes::Value { choices, .. } = flag.takes {
                let row = rows
                    .iter()
                    .map(|r| first_column(r))
                    .find(|c| longs_in(c).contains(flag.long))
                    .unwrap();
                for choice in choices {
                    assert!(
                        row.contains(choice),
                        "README --{}: {choice} missing",
                        flag.long
                    );
                }
            }
        }
    }

    /// docs/shim.md's settings table pairs each variable with its flag as the table does.
    #[test]
    fn shim_doc_lists_every_setting_with_its_flag() {
        let doc = include_str!("../docs/shim.md");
        let rows: std::collections::BTreeSet<(String, String)> = doc
            .lines()
            .filter(|l| l.starts_with("| `GUARDED_UPGRADE_"))
            .map(|l| {
                let cells: Vec<&str> = l.split(" | ").collect();
                (
                    cells[0]
                        .trim_start_matches("| ")
                        .trim_matches('`')
                        .to_string(),
                    cells[1]
                        .trim_matches('`')
                        .trim_start_matches("--")
                        .to_string(),
                )
            })
            .collect();
        let want: std::collections::BTreeSet<(String, String)> = crate::adapters::shim::settings()
            .map(|(var, flag)| (var.to_string(), flag.long.to_string()))
            .collect();
        assert_eq!(rows, want, "docs/shim.md settings table");
    }
}
