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
        duct::cmd(&self.program, &self.args).env(STARTED_AS_HELM_VAR, mark("spawn"))
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
    /// The binary named as helm is guarded-upgrade itself (a symlink, hard link or copy).
    #[error(
        "refusing to run {path:?} (from {from}) as helm: it {why}; guarded-upgrade never runs \
         itself as helm. Put the real helm on PATH after the shim, or name it with \
         GUARDED_UPGRADE_HELM (shim) or --helm/HELM_BIN"
    )]
    IsSelf {
        /// The binary refused.
        path: PathBuf,
        /// Where its name came from.
        from: &'static str,
        /// How it was recognised.
        why: &'static str,
    },
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

/// Finds helm: the binary asked for (`--helm`, else `HELM_BIN`), else the first `helm` on
/// PATH that is not this binary (the shim may be first on PATH, as the README installs it).
pub(crate) fn locate(requested: Option<&str>) -> Result<PathBuf, HelmError> {
    find(requested, "--helm/HELM_BIN", HelmError::NotFound)
}

/// The helm binary `given` names (reported as coming from `from`), else the first `helm`
/// on PATH that is not this binary. Never this binary, a hard link, a symlink or a copy of
/// it: running ourselves as helm recurses (the shim) or waits on our own mutex.
pub(crate) fn find(
    given: Option<&str>,
    from: &'static str,
    not_found: fn(String) -> HelmError,
) -> Result<PathBuf, HelmError> {
    let me = SelfIdentity::current();
    if let Some(given) = given.filter(|s| !s.is_empty()) {
        let path = which::which(given).map_err(|e| {
            not_found(match from {
                // That message already says "pass --helm PATH (or set HELM_BIN)".
                "--helm/HELM_BIN" => format!("{given:?} ({e})"),
                _ => format!("{from}={given:?} ({e})"),
            })
        })?;
        if let Some(why) = me.as_ref().and_then(|me| me.matches(&path)) {
            return Err(HelmError::IsSelf { path, from, why });
        }
        return Ok(path);
    }
    let mut refused = None;
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    for candidate in std::env::split_paths(&path_var).map(|dir| dir.join("helm")) {
        if !is_executable_file(&candidate) {
            continue;
        }
        match me.as_ref().and_then(|me| me.matches(&candidate)) {
            Some(why) => {
                refused.get_or_insert((candidate, why));
            }
            None => return Ok(candidate),
        }
    }
    Err(match refused {
        Some((path, why)) => HelmError::IsSelf {
            path,
            from: "PATH",
            why,
        },
        None => not_found("no `helm` on PATH other than guarded-upgrade itself".into()),
    })
}

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// How this binary recognises itself: by canonical path, by (device, inode) for hard
/// links, and by content for copies (an old and a new install of the same build).
pub(crate) struct SelfIdentity {
    canonical: PathBuf,
    file: (u64, u64),
    len: u64,
}

impl SelfIdentity {
    /// This process's executable, or None when it cannot be inspected.
    pub(crate) fn current() -> Option<SelfIdentity> {
        use std::os::unix::fs::MetadataExt;
        // /proc/self/exe stays readable even when the file was replaced since we started.
        let meta = std::fs::metadata(SELF_EXE).ok()?;
        let canonical = std::env::current_exe()
            .and_then(std::fs::canonicalize)
            .unwrap_or_else(|_| PathBuf::from(SELF_EXE));
        Some(SelfIdentity {
            canonical,
            file: (meta.dev(), meta.ino()),
            len: meta.len(),
        })
    }

    /// Why `path` is this binary, or None when it is another program.
    pub(crate) fn matches(&self, path: &Path) -> Option<&'static str> {
        use std::os::unix::fs::MetadataExt;
        let canonical = std::fs::canonicalize(path).ok()?;
        if canonical == self.canonical {
            return Some("is this guarded-upgrade binary (the same path)");
        }
        let meta = std::fs::metadata(&canonical).ok()?;
        if (meta.dev(), meta.ino()) == self.file {
            return Some("is this guarded-upgrade binary (the same file)");
        }
        if meta.len() == self.len && same_content(&canonical, Path::new(SELF_EXE)) {
            return Some("is a copy of this guarded-upgrade binary (the same content)");
        }
        None
    }
}

const SELF_EXE: &str = "/proc/self/exe";

/// Byte-for-byte equality of two files of equal length; false when either cannot be read.
fn same_content(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (Ok(mut a), Ok(mut b)) = (std::fs::File::open(a), std::fs::File::open(b)) else {
        return false;
    };
    let (mut buf_a, mut buf_b) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = match a.read(&mut buf_a) {
            Ok(n) => n,
            Err(_) => return false,
        };
        if n == 0 {
            return matches!(b.read(&mut buf_b[..1]), Ok(0));
        }
        if b.read_exact(&mut buf_b[..n]).is_err() || buf_a[..n] != buf_b[..n] {
            return false;
        }
    }
}

/// Set on every helm guarded-upgrade starts: `exec:PID` when the shim replaced itself with
/// helm (same pid), `spawn:PID` when helm is a child of PID. A guarded-upgrade that finds
/// itself so started was taken for helm: a different build (an old install) earlier on
/// PATH or named as helm, which content comparison cannot recognise. Without the mark two
/// shims hand `helm version` back and forth forever.
pub(crate) const STARTED_AS_HELM_VAR: &str = "_GUARDED_UPGRADE_STARTED_AS_HELM";

/// When this process was started as helm by a guarded-upgrade: the refusal, naming the
/// binary that was taken for helm.
pub fn started_as_helm() -> Option<HelmError> {
    let mark = std::env::var(STARTED_AS_HELM_VAR).ok()?;
    let (how, pid) = mark.split_once(':')?;
    let pid: u32 = pid.parse().ok()?;
    let started_by_it = match how {
        "exec" => std::process::id() == pid,
        "spawn" => std::os::unix::process::parent_id() == pid,
        _ => false,
    };
    started_by_it.then(|| HelmError::IsSelf {
        path: std::env::current_exe().unwrap_or_else(|_| PathBuf::from(SELF_EXE)),
        from: "the guarded-upgrade that started it",
        why: "is a guarded-upgrade binary, not helm",
    })
}

fn mark(how: &str) -> String {
    format!("{how}:{}", std::process::id())
}

impl HelmError {
    /// A configuration error no retry fixes (exit 2).
    pub(crate) fn is_usage(&self) -> bool {
        matches!(self, HelmError::IsSelf { .. })
    }
}

/// Replaces this process with helm (the shim's pass-through): stdin, stdout, stderr, the
/// environment and the exit code are helm's own. Returns only when helm cannot be started.
pub(crate) fn exec(program: &Path, args: &[std::ffi::OsString]) -> HelmError {
    use std::os::unix::process::CommandExt;
    let source = std::process::Command::new(program)
        .args(args)
        .env(STARTED_AS_HELM_VAR, mark("exec"))
        .exec();
    HelmError::Spawn {
        program: program.to_path_buf(),
        source,
    }
}

/// Waits for a captured helm run (`helm show chart`, the dry run) to finish, at most
/// `limit`: its output, or `None` after killing it when the limit passed. The wait is the
/// child's exit itself (a thread blocked in `waitid`), not a poll: a poll every 20 ms cost
/// 10 ms on average after helm had already exited.
pub(crate) fn wait_bounded(
    handle: &Arc<duct::Handle>,
    limit: std::time::Duration,
) -> std::io::Result<Option<std::process::Output>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let waiting = Arc::clone(handle);
    std::thread::spawn(move || {
        let _ = tx.send(waiting.wait().cloned());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.map(Some),
        Err(_) => {
            let _ = handle.kill();
            Ok(None)
        }
    }
}

/// Runs helm with inherited stdio, forwarding SIGINT/SIGTERM to it, and returns its exit
/// code (128 + signal number when helm was killed by a signal, as shells report it).
/// Inputs captured for a dry run (`feeds`) are given to helm again, on the same numbers.
pub(crate) async fn run_inherited(
    command: &HelmCommand,
    feeds: Vec<crate::adapters::inputs::Feed>,
) -> Result<i32, HelmError> {
    // Listening starts before helm does: a SIGTERM that arrives once helm runs must reach
    // it, never kill us by the default action (helm would then die of PR_SET_PDEATHSIG
    // with its record pending) nor be dropped before a listener exists.
    let mut signals = crate::adapters::signals::Signals::listen();
    let handle = crate::adapters::inputs::feed(command.to_expression(), feeds)
        .before_spawn(die_with_us)
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
    loop {
        tokio::select! {
            status = &mut waiter => {
                let status = status
                    .map_err(|e| HelmError::Spawn { program: command.program.clone(), source: std::io::Error::other(e) })?
                    .map_err(|source| HelmError::Spawn { program: command.program.clone(), source })?;
                return Ok(exit_code(status));
            }
            number = signals.next() => forward(&handle, number),
        }
    }
}

/// Helm never outlives guarded-upgrade: killed with it (`PR_SET_PDEATHSIG`, SIGKILL), so
/// no helm keeps writing a release after the run that held its mutex is gone (a Lease
/// nobody renews expires, and a later run may then take over and recover the pending
/// record). The signal follows the thread that started helm: the runtime's threads live
/// until the command ends, after helm has been waited for.
fn die_with_us(cmd: &mut std::process::Command) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork and
    // exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Died between fork and prctl: no signal will come, so do not start at all.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other(
                    "guarded-upgrade exited before helm started",
                ));
            }
            Ok(())
        });
    }
    Ok(())
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

    /// A symlink, a hard link and a copy of this binary are each recognised, whichever
    /// way they are named (issue 17); another program is not.
    #[test]
    fn links_and_copies_of_this_binary_are_refused() {
        let me = std::env::current_exe().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (symlink, hard, copy, other) = (
            dir.path().join("symlink"),
            dir.path().join("hard"),
            dir.path().join("copy"),
            dir.path().join("other"),
        );
        std::os::unix::fs::symlink(&me, &symlink).unwrap();
        // A hard link needs the same filesystem as the test binary; skipped when it is not.
        let hard_made = std::fs::hard_link(&me, &hard).is_ok();
        std::fs::copy(&me, &copy).unwrap();
        std::fs::write(&other, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o755)).unwrap();
        let identity = SelfIdentity::current().unwrap();
        assert_eq!(
            identity.matches(&symlink),
            Some("is this guarded-upgrade binary (the same path)")
        );
        if hard_made {
            assert_eq!(
                identity.matches(&hard),
                Some("is this guarded-upgrade binary (the same file)")
            );
        }
        assert_eq!(
            identity.matches(&copy),
            Some("is a copy of this guarded-upgrade binary (the same content)")
        );
        assert_eq!(identity.matches(&other), None);
        for path in [&symlink, &copy] {
            let err = locate(Some(path.to_str().unwrap())).unwrap_err();
            assert!(
                matches!(
                    err,
                    HelmError::IsSelf {
                        from: "--helm/HELM_BIN",
                        ..
                    }
                ),
                "{err}"
            );
            assert!(err.is_usage());
        }
        assert_eq!(locate(Some(other.to_str().unwrap())).unwrap(), other);
    }

    #[tokio::test]
    async fn exit_code_is_helms() {
        let cmd = HelmCommand {
            program: PathBuf::from("/bin/sh"),
            args: strings(&["-c", "exit 7"]),
        };
        assert_eq!(run_inherited(&cmd, Vec::new()).await.unwrap(), 7);
    }
}
