//! The `guarded-upgrade` binary: parse, plan, run, print at most one error, exit.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use guarded_upgrade::cli::Cli;
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
        None => Cli::parse_from(argv),
    };
    // `upgrade`/`check` take helm's argv verbatim, so they answer their own help flag.
    if let Some(name) = cli.command.help_requested() {
        let mut cmd = Cli::command();
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
