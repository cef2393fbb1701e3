//! The helm process: finding the binary and running it with the user's argv.
//!
//! Commands are plain data ([`HelmCommand`]) so argv handling is tested without spawning.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A helm invocation: the binary and its arguments, exactly as they will be passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HelmCommand {
    /// The helm binary.
    pub program: PathBuf,
    /// Arguments after the program name.
    pub args: Vec<String>,
}

impl HelmCommand {
    /// `helm upgrade --install? <user argv>`: the user's arguments untouched and in order.
    /// `--install` is added only when the user did not pass `--install`/`-i` themselves,
    /// since the guarded upgrade always has install semantics.
    pub(crate) fn upgrade(
        program: &Path,
        helm_args: &[String],
        user_gave_install: bool,
    ) -> HelmCommand {
        let mut args = vec!["upgrade".to_string()];
        if !user_gave_install {
            args.push("--install".to_string());
        }
        args.extend(helm_args.iter().cloned());
        HelmCommand {
            program: program.to_path_buf(),
            args,
        }
    }

    /// A duct expression for this command.
    pub(crate) fn to_expression(&self) -> duct::Expression {
        duct::cmd(&self.program, &self.args)
    }
}

/// Failures finding or running helm.
#[derive(Debug, thiserror::Error)]
pub enum HelmError {
    /// No helm binary found.
    #[error(
        "helm not found: {0}; install helm, put it on PATH, or pass --helm PATH (or set HELM_BIN)"
    )]
    NotFound(String),
    /// The shim found no real helm to hand commands to.
    #[error(
        "real helm not found: {0}; set GUARDED_UPGRADE_HELM to the real helm binary, or put it \
         on PATH after the shim"
    )]
    ShimNotFound(String),
    /// helm could not be started.
    #[error("cannot start helm {program:?}: {source}")]
    Spawn {
        /// The binary.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Finds helm: the binary asked for (`--helm`, else `HELM_BIN`), else `helm` on PATH.
pub(crate) fn locate(requested: Option<&str>) -> Result<PathBuf, HelmError> {
    match requested.filter(|s| !s.is_empty()) {
        Some(given) => {
            which::which(given).map_err(|e| HelmError::NotFound(format!("{given:?} ({e})")))
        }
        None => which::which("helm").map_err(|_| HelmError::NotFound("no `helm` on PATH".into())),
    }
}

/// Replaces this process with helm (the shim's pass-through): stdin, stdout, stderr, the
/// environment and the exit code are helm's own. Returns only when helm cannot be started.
pub(crate) fn exec(program: &Path, args: &[std::ffi::OsString]) -> HelmError {
    use std::os::unix::process::CommandExt;
    let source = std::process::Command::new(program).args(args).exec();
    HelmError::Spawn {
        program: program.to_path_buf(),
        source,
    }
}

/// Runs helm with inherited stdio, forwarding SIGINT/SIGTERM to it, and returns its exit
/// code (128 + signal number when helm was killed by a signal, as shells report it).
pub(crate) async fn run_inherited(command: &HelmCommand) -> Result<i32, HelmError> {
    let handle = command
        .to_expression()
        .unchecked()
        .start()
        .map_err(|source| HelmError::Spawn {
            program: command.program.clone(),
            source,
        })?;
    let handle = Arc::new(handle);
    let waiter = {
        let handle = Arc::clone(&handle);
        tokio::task::spawn_blocking(move || handle.wait().map(|o| o.status))
    };
    tokio::pin!(waiter);
    let mut interrupt = signal(tokio::signal::unix::SignalKind::interrupt());
    let mut terminate = signal(tokio::signal::unix::SignalKind::terminate());
    loop {
        tokio::select! {
            status = &mut waiter => {
                let status = status
                    .map_err(|e| HelmError::Spawn { program: command.program.clone(), source: std::io::Error::other(e) })?
                    .map_err(|source| HelmError::Spawn { program: command.program.clone(), source })?;
                return Ok(exit_code(status));
            }
            Some(()) = recv(&mut interrupt) => forward(&handle, libc::SIGINT),
            Some(()) = recv(&mut terminate) => forward(&handle, libc::SIGTERM),
        }
    }
}

fn signal(kind: tokio::signal::unix::SignalKind) -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(kind).ok()
}

async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Passes a signal on to helm so it can mark its release and exit; we keep waiting for it.
fn forward(handle: &duct::Handle, signal: libc::c_int) {
    for pid in handle.pids() {
        // SAFETY: kill(2) with a pid we spawned and still wait for; no memory involved.
        unsafe {
            libc::kill(pid as libc::pid_t, signal);
        }
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn upgrade_keeps_user_args_in_order() {
        let args = strings(&["db", "./chart", "-f", "v.yaml", "--set", "a=b", "--wait"]);
        let cmd = HelmCommand::upgrade(Path::new("/usr/bin/helm"), &args, false);
        assert_eq!(
            cmd.args,
            strings(&[
                "upgrade",
                "--install",
                "db",
                "./chart",
                "-f",
                "v.yaml",
                "--set",
                "a=b",
                "--wait"
            ])
        );
        let with_install = strings(&["-i", "db", "./chart"]);
        let cmd = HelmCommand::upgrade(Path::new("/usr/bin/helm"), &with_install, true);
        assert_eq!(cmd.args, strings(&["upgrade", "-i", "db", "./chart"]));
    }

    #[test]
    fn missing_helm_is_a_clear_error() {
        let err = locate(Some("/nonexistent/helm")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("helm not found"), "{text}");
        assert!(text.contains("--helm PATH"), "{text}");
    }

    #[tokio::test]
    async fn exit_code_is_helms() {
        let cmd = HelmCommand {
            program: PathBuf::from("/bin/sh"),
            args: strings(&["-c", "exit 7"]),
        };
        assert_eq!(run_inherited(&cmd).await.unwrap(), 7);
    }
}
