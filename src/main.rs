//! The `guarded-upgrade` binary: parse, run one command, print at most one error, exit.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use guarded_upgrade::cli::{Cli, Command, HELP_FLAGS};
use guarded_upgrade::exit::Failure;

fn main() -> ExitCode {
    let code = match run() {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("guarded-upgrade: error: {}", failure.message);
            failure.code
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn run() -> Result<i32, Failure> {
    let cli = Cli::parse();
    guarded_upgrade::retry::set_observer(|n| eprintln!("guarded-upgrade: {n}"));
    // Subcommands that pass helm's argv through parse their own help flag.
    if let Some((name, args)) = cli.command.passthrough_args() {
        if wants_help(args) {
            let mut cmd = Cli::command();
            if let Some(sub) = cmd.find_subcommand_mut(name) {
                sub.print_long_help()
                    .map_err(|e| Failure::usage(e.to_string()))?;
            }
            return Ok(0);
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::refused(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(dispatch(cli.command))
}

fn wants_help(args: &[String]) -> bool {
    args.iter()
        .take_while(|a| a.as_str() != "--")
        .any(|a| HELP_FLAGS.contains(&a.as_str()))
}

async fn dispatch(command: Command) -> Result<i32, Failure> {
    guarded_upgrade::cli::dispatch(command).await
}
