//! Inputs helm can read only once — standard input (`-f -`, `--set-file k=-`) and inherited
//! pipes or sockets named `/dev/fd/N` or `/proc/self/fd/N` (process substitution, `sops -d`)
//! — captured once, in memory, before anything reads them, so that the guard (the
//! kubeconfig, `--kube-ca-file`), `helm show chart`, the dry run and the real helm run all
//! read the same bytes with the user's argv unchanged: each helm child gets a fresh pipe
//! holding the captured bytes on the same standard input or descriptor number. Captured
//! bytes are never printed nor written to disk, and are bounded in size and in the time
//! their writer may take (`--input-timeout`).
//!
//! The capture is a value ([`Captured`]) the command holds and hands to every reader; no
//! process-wide state.

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::core::argv::HelmFlags;

/// Largest input captured: values files are kilobytes; more is refused, not truncated.
pub(crate) const MAX_CAPTURE: usize = 16 << 20;

/// Longest we wait for a captured input's writer to finish (a terminal, a slow `sops -d`)
/// unless `--input-timeout` says otherwise.
pub(crate) const DEFAULT_CAPTURE_TIMEOUT: Duration = Duration::from_secs(120);

/// Where a read-once input comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Source {
    /// Standard input (`-`, `/dev/stdin`, `/dev/fd/0`).
    Stdin,
    /// An inherited descriptor (`/dev/fd/N`, `/proc/self/fd/N`) that is a pipe or socket.
    Fd(RawFd),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Stdin => f.write_str("standard input"),
            Source::Fd(n) => write!(f, "descriptor {n}"),
        }
    }
}

/// A path helm would read only once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadOnce {
    /// Standard input or an inherited pipe: captured and offered again on the same number.
    Replay(Source),
    /// Something else that is used up by reading (what it is).
    Refuse(&'static str),
}

/// Whether `path` can be read only once, and if so whether it can be replayed. `-` is
/// standard input (helm's `-f -`, `--set-file k=-`) when `dash_is_stdin`.
pub(crate) fn read_once(path: &str, dash_is_stdin: bool) -> Option<ReadOnce> {
    use std::os::unix::fs::FileTypeExt;
    if (path == "-" && dash_is_stdin) || path == "/dev/stdin" {
        return Some(ReadOnce::Replay(Source::Stdin));
    }
    if path.is_empty() || path.contains("://") {
        return None;
    }
    let fd_number = path
        .strip_prefix("/dev/fd/")
        .or_else(|| path.strip_prefix("/proc/self/fd/"))
        .and_then(|n| n.parse::<RawFd>().ok());
    let kind = std::fs::metadata(path).ok()?.file_type();
    let used_up = kind.is_fifo() || kind.is_socket();
    match fd_number {
        Some(0) if used_up => Some(ReadOnce::Replay(Source::Stdin)),
        Some(n) if used_up => Some(ReadOnce::Replay(Source::Fd(n))),
        _ if kind.is_fifo() => Some(ReadOnce::Refuse("a named pipe")),
        _ if kind.is_socket() => Some(ReadOnce::Refuse("a socket")),
        _ if kind.is_char_device() || kind.is_block_device() => Some(ReadOnce::Refuse("a device")),
        _ => None,
    }
}

/// Every file the guard or more than one helm run reads for a guarded upgrade, with what
/// names it (the flag as helm spells it, or the variable): `--kubeconfig`, else each
/// `KUBECONFIG` entry; `--kube-ca-file`/`HELM_KUBECAFILE`; the repository files
/// `--ca-file`, `--cert-file`, `--key-file`, `--keyring`, `--repository-config`,
/// `--registry-config`;
/// values (`-f`/`--values`, comma lists) and `--set-file` (`key=path` lists); and the
/// CHART argument when given (`helm show chart` and helm each read a packaged chart).
pub(crate) fn files(
    helm: &HelmFlags,
    chart: Option<&str>,
    kubeconfig_env: Option<&OsStr>,
    kube_ca_file_env: Option<&str>,
) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut one = |what: &str, path: Option<&str>| {
        if let Some(path) = path.filter(|p| !p.is_empty()) {
            files.push((what.to_string(), path.to_string()));
        }
    };
    // A chart from a repository (`--repo`) is a name, not a path.
    if helm.repo.is_none() {
        one("CHART", chart);
    }
    match (&helm.cluster.kubeconfig, kubeconfig_env) {
        (Some(path), _) => one("--kubeconfig", Some(path)),
        (None, Some(list)) => {
            for entry in std::env::split_paths(list) {
                one("KUBECONFIG", entry.to_str());
            }
        }
        (None, None) => {}
    }
    match &helm.cluster.kube_ca_file {
        Some(path) => one("--kube-ca-file", Some(path)),
        None => one("HELM_KUBECAFILE", kube_ca_file_env),
    }
    one("--ca-file", helm.ca_file.as_deref());
    one("--cert-file", helm.cert_file.as_deref());
    one("--key-file", helm.key_file.as_deref());
    one("--keyring", helm.keyring.as_deref());
    one("--repository-config", helm.repository_config.as_deref());
    one("--registry-config", helm.registry_config.as_deref());
    for (flag, value) in &helm.value_inputs {
        for item in value.split(',') {
            let path = match flag.as_str() {
                "--set-file" => item.split_once('=').map_or("", |(_, p)| p),
                _ => item,
            };
            one(flag, Some(path));
        }
    }
    files
}

/// Whether `what` (a flag or variable of [`files`]) is a values input: helm alone reads
/// it, and a second reading is needed only by a dry run (which checks it then).
fn is_values(what: &str) -> bool {
    matches!(what, "-f" | "--values" | "--set-file")
}

/// The read-once inputs among `files`, to be captured before anything reads them; or the
/// usage error for one that cannot be offered again under its own name (a named pipe or
/// socket the guard or two helm runs would each read). Values given that way are left to
/// helm unless a dry run needs them (`change::dry_run_inputs` refuses them then).
pub(crate) fn sources(files: &[(String, String)]) -> Result<Vec<Source>, String> {
    let mut sources = Vec::new();
    for (what, path) in files {
        match read_once(path, is_values(what)) {
            Some(ReadOnce::Replay(source)) => sources.push(source),
            Some(ReadOnce::Refuse(kind)) if !is_values(what) && kind != "a device" => {
                return Err(format!(
                    "{what} {path} is {kind}: the guard and helm would each read it, and \
                     the second reader would get nothing. Pass a regular file, or an \
                     inherited descriptor (/dev/fd/N, process substitution), which is \
                     captured once and handed to helm on the same number"
                ))
            }
            _ => {}
        }
    }
    sources.sort();
    sources.dedup();
    Ok(sources)
}

/// The captured bytes of every read-once input. Its `Debug` shows sizes only.
#[derive(Clone, Default)]
pub(crate) struct Captured {
    inputs: Vec<(Source, Arc<Vec<u8>>)>,
}

impl std::fmt::Debug for Captured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sizes: Vec<String> = self
            .inputs
            .iter()
            .map(|(s, b)| format!("{s}: {} bytes", b.len()))
            .collect();
        write!(f, "Captured({})", sizes.join(", "))
    }
}

/// Reads `sources` once each, on a thread of its own: a writer that never closes is given
/// up on after `timeout` (the thread stays blocked in its read, and ends with the
/// process, which does not wait for it). Errors name the input and why (too large, not
/// closed in time, unreadable).
pub(crate) async fn capture(sources: &[Source], timeout: Duration) -> Result<Captured, String> {
    if sources.is_empty() {
        return Ok(Captured::default());
    }
    let sources = sources.to_vec();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("capture-inputs".into())
        .spawn(move || {
            let _ = tx.send(read_all(&sources));
        })
        .map_err(|e| format!("reading the inputs failed: {e}"))?;
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err("reading the inputs failed: the reading thread ended".into()),
        Err(_) => Err(format!(
            "the inputs read once (standard input, /dev/fd pipes) were not closed by their \
             writer within {} (--input-timeout)",
            crate::core::time::format_duration(timeout.as_secs() as i64)
        )),
    }
}

impl Captured {
    /// The bytes captured for `path` (as [`read_once`] names a source), if any.
    pub(crate) fn bytes_of(&self, path: &str, dash_is_stdin: bool) -> Option<Arc<Vec<u8>>> {
        let Some(ReadOnce::Replay(source)) = read_once(path, dash_is_stdin) else {
            return None;
        };
        self.inputs
            .iter()
            .find(|(s, _)| *s == source)
            .map(|(_, b)| Arc::clone(b))
    }

    /// The file at `path` as the guard reads it: the captured bytes when `path` names a
    /// captured input, else the file itself.
    pub(crate) fn read(&self, path: &str) -> std::io::Result<Vec<u8>> {
        match self.bytes_of(path, false) {
            Some(bytes) => Ok(bytes.as_slice().to_vec()),
            None => std::fs::read(path),
        }
    }

    /// Whether `path` names a captured input.
    pub(crate) fn holds(&self, path: &str) -> bool {
        self.bytes_of(path, false).is_some()
    }
}

fn read_all(sources: &[Source]) -> Result<Captured, String> {
    let mut inputs = Vec::new();
    for &source in sources {
        if inputs.iter().any(|(s, _)| *s == source) {
            continue;
        }
        let bytes = match source {
            Source::Stdin => read_bounded(std::io::stdin().lock(), source)?,
            Source::Fd(n) => {
                // A duplicate, so our own descriptor N stays open (and its number taken).
                // SAFETY: dup(2) of a descriptor number; the result is owned below.
                let dup = unsafe { libc::fcntl(n, libc::F_DUPFD_CLOEXEC, 3) };
                if dup < 0 {
                    return Err(format!(
                        "{source} cannot be read: {}",
                        std::io::Error::last_os_error()
                    ));
                }
                // SAFETY: `dup` is a fresh descriptor we own.
                let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(dup) });
                read_bounded(file, source)?
            }
        };
        inputs.push((source, Arc::new(bytes)));
    }
    Ok(Captured { inputs })
}

fn read_bounded(reader: impl Read, source: Source) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    reader
        .take(MAX_CAPTURE as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{source} cannot be read: {e}"))?;
    if bytes.len() > MAX_CAPTURE {
        return Err(format!(
            "{source} holds more than {} MiB; pass it as a regular file",
            MAX_CAPTURE >> 20
        ));
    }
    Ok(bytes)
}

/// Bytes a helm child reads on descriptor `fd` (standard input when 0).
#[derive(Clone)]
pub(crate) struct Feed {
    /// The child's descriptor number.
    pub fd: RawFd,
    /// What it reads there.
    pub bytes: Arc<Vec<u8>>,
}

impl Captured {
    /// One feed per captured input, on the descriptor the user's argv names.
    pub(crate) fn feeds(&self) -> Vec<Feed> {
        self.inputs
            .iter()
            .map(|(s, b)| Feed {
                fd: match s {
                    Source::Stdin => 0,
                    Source::Fd(n) => *n,
                },
                bytes: Arc::clone(b),
            })
            .collect()
    }
}

/// A descriptor number of at least 3 that is open neither here nor in `taken`: a child can
/// be given it without shadowing anything it inherits.
pub(crate) fn free_fd(taken: &[RawFd]) -> RawFd {
    (3..)
        .find(|&n| {
            // SAFETY: F_GETFD only asks whether the number is open.
            !taken.contains(&n) && unsafe { libc::fcntl(n, libc::F_GETFD) } < 0
        })
        .expect("a free descriptor number")
}

/// `expression` with each feed on its descriptor: a fresh sealed memfd per child holding
/// the captured bytes, on the same standard input or descriptor number. Unlike a pipe, a
/// memfd named `/dev/fd/N` can be opened and read as often as helm likes (client-go reads
/// a kubeconfig more than once), and the seals keep every reader on the bytes the guard
/// read.
pub(crate) fn feed(expression: duct::Expression, feeds: Vec<Feed>) -> duct::Expression {
    if feeds.is_empty() {
        return expression;
    }
    // The memfds handed to the last child, closed here when the next one is prepared (or
    // when the expression is dropped).
    let held: Arc<Mutex<Vec<OwnedFd>>> = Arc::new(Mutex::new(Vec::new()));
    expression.before_spawn(move |cmd| {
        let mut pairs = Vec::new();
        let mut held = held.lock().unwrap_or_else(|p| p.into_inner());
        held.clear();
        // Above every target number, so no dup2 below overwrites a source still to come.
        let floor = feeds.iter().map(|f| f.fd).max().unwrap_or(0) + 1;
        for f in &feeds {
            let fd = sealed_memfd(&f.bytes, floor)?;
            pairs.push((fd.as_raw_fd(), f.fd));
            held.push(fd);
        }
        // SAFETY: only dup2(2), async-signal-safe, between fork and exec; the sources are
        // above every target, so they are distinct from them.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(cmd, move || {
                for &(from, to) in &pairs {
                    if libc::dup2(from, to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Ok(())
    })
}

/// An anonymous in-memory file (never on disk) holding `bytes`, read position at the
/// start, sealed against any change, close-on-exec, numbered at least `floor`.
fn sealed_memfd(bytes: &[u8], floor: RawFd) -> std::io::Result<OwnedFd> {
    use std::io::{Seek, Write};
    // SAFETY: memfd_create(2) with a NUL-terminated name; the result is owned below.
    let fd = unsafe {
        libc::memfd_create(
            c"guarded-upgrade-input".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.write_all(bytes)?;
    file.rewind()?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    // SAFETY: fcntl(2) on a descriptor we own.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: F_DUPFD_CLOEXEC duplicates our descriptor; the copy is owned below.
    let moved = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD_CLOEXEC, floor) };
    if moved < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `moved` is a fresh descriptor we own; `file` closes the original.
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feeds_reach_the_child_on_stdin_and_on_their_descriptor() {
        let taken = [0];
        let fd = free_fd(&taken);
        let feeds = vec![
            Feed {
                fd: 0,
                bytes: Arc::new(b"from stdin\n".to_vec()),
            },
            Feed {
                fd,
                bytes: Arc::new(b"from a pipe\n".to_vec()),
            },
        ];
        // The descriptor is read twice by name (client-go reads a kubeconfig more than
        // once), and a write to it is refused (the bytes stay the ones the guard read).
        let script = format!(
            "cat; cat /dev/fd/{fd}; cat /dev/fd/{fd}; echo x >> /dev/fd/{fd} || echo sealed"
        );
        let expression = feed(duct::cmd!("sh", "-c", script), feeds);
        // Twice, as the dry run and the real run: each child reads the same bytes.
        for _ in 0..2 {
            let out = expression.stderr_null().read().unwrap();
            assert_eq!(out, "from stdin\nfrom a pipe\nfrom a pipe\nsealed");
        }
    }

    #[test]
    fn a_free_descriptor_is_neither_open_nor_taken() {
        let first = free_fd(&[]);
        assert!(first >= 3);
        let next = free_fd(&[first]);
        assert_ne!(next, first);
        // SAFETY: asking whether the numbers are open.
        assert!(unsafe { libc::fcntl(next, libc::F_GETFD) } < 0);
    }

    #[test]
    fn oversized_inputs_are_refused_not_truncated() {
        let big = vec![b'x'; MAX_CAPTURE + 1];
        let err = read_bounded(&big[..], Source::Stdin).unwrap_err();
        assert_eq!(
            err,
            "standard input holds more than 16 MiB; pass it as a regular file"
        );
        let ok = read_bounded(&big[..MAX_CAPTURE], Source::Fd(5)).unwrap();
        assert_eq!(ok.len(), MAX_CAPTURE);
    }

    #[test]
    fn debug_shows_sizes_only() {
        let c = Captured {
            inputs: vec![(Source::Stdin, Arc::new(b"password: hunter2".to_vec()))],
        };
        assert_eq!(format!("{c:?}"), "Captured(standard input: 17 bytes)");
    }
}
