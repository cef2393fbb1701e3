//! The `guarded-upgrade` binary: parse, plan, run, print at most one error, exit.

use std::process::ExitCode;

use clap::Parser;

use guarded_upgrade::cli::{self, Cli};
use guarded_upgrade::{Error, Exit, Plan};

fn main() -> ExitCode {
    if let Some(error) = guarded_upgrade::started_as_helm() {
        guarded_upgrade::print_error(&error);
        return ExitCode::from(error.exit().code());
    }
    // Started as `helm` (the shim): the whole argv is helm's, clap never sees it.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match Plan::shim_command(&argv) {
        Some(command) => Cli { command },
        None => match Cli::try_parse_from(&argv) {
            Ok(cli) => cli,
            // Help (`--help`, `help upgrade`) is rendered from the full command line, the
            // guard flags of `upgrade` and `check` included.
            Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => cli::command()
                .try_get_matches_from(&argv)
                .err()
                .unwrap_or(e)
                .exit(),
            Err(e) => e.exit(),
        },
    };
    // `upgrade`/`check` take helm's argv verbatim, so they answer their own help flag.
    if let Some(name) = cli.command.help_requested() {
        let mut cmd = cli::command();
        if let Some(sub) = cmd.find_subcommand_mut(name) {
            let _ = sub.print_long_help();
        }
        return ExitCode::SUCCESS;
    }
    let now = jiff::Timestamp::now().as_second();
    let result: Result<Exit, Error> = Plan::new(cli.command, now).and_then(Plan::run);
    match result {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(error) => {
            guarded_upgrade::print_error(&error);
            ExitCode::from(error.exit().code())
        }
    }
}
