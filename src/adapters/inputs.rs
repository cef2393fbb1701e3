//! Inputs helm can read only once — standard input (`-f -`, `--set-file k=-`) and inherited
//! pipes or sockets named `/dev/fd/N` (process substitution, `sops -d`) — captured once, in
//! memory, so that a dry run and the real helm run read the same bytes with the user's argv
//! unchanged: each helm child gets a fresh pipe holding the captured bytes on the same
//! standard input or descriptor number. Captured bytes are never printed nor written to
//! disk, and are bounded in size and in the time their writer may take.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Largest input captured: values files are kilobytes; more is refused, not truncated.
pub(crate) const MAX_CAPTURE: usize = 16 << 20;

/// Longest we wait for a captured input's writer to finish (a terminal, a slow `sops -d`).
pub(crate) const CAPTURE_TIMEOUT: Duration = Duration::from_secs(120);

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

/// The captured bytes of every read-once input. Its `Debug` shows sizes only.
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

static CAPTURED: OnceLock<Result<Arc<Captured>, String>> = OnceLock::new();

/// Captures `sources` the first time it is called in this process (standard input and
/// inherited descriptors are the process's own, read once); later calls return the same
/// capture. Errors name the input and why (too large, not closed in time, unreadable).
pub(crate) async fn capture(sources: &[Source]) -> Result<Arc<Captured>, String> {
    if let Some(done) = CAPTURED.get() {
        return done.clone();
    }
    let sources = sources.to_vec();
    let read = tokio::task::spawn_blocking(move || read_all(&sources));
    let result = match tokio::time::timeout(CAPTURE_TIMEOUT, read).await {
        Ok(Ok(result)) => result.map(Arc::new),
        Ok(Err(e)) => Err(format!("reading the inputs failed: {e}")),
        Err(_) => Err(format!(
            "the inputs read once (standard input, /dev/fd pipes) were not closed by their \
             writer within {CAPTURE_TIMEOUT:?}"
        )),
    };
    CAPTURED.get_or_init(|| result).clone()
}

/// The capture made in this process, if any: the real helm run must get the same bytes.
pub(crate) fn captured() -> Option<Arc<Captured>> {
    CAPTURED.get().and_then(|r| r.as_ref().ok()).cloned()
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

/// `expression` with each feed on its descriptor: a fresh pipe per child, written by a
/// thread of ours and read by the child at its own pace.
pub(crate) fn feed(expression: duct::Expression, feeds: Vec<Feed>) -> duct::Expression {
    if feeds.is_empty() {
        return expression;
    }
    let (stdin, others): (Vec<Feed>, Vec<Feed>) = feeds.into_iter().partition(|f| f.fd == 0);
    let mut expression = expression;
    if let Some(stdin) = stdin.into_iter().next() {
        expression = expression.stdin_bytes(stdin.bytes.as_slice().to_vec());
    }
    if others.is_empty() {
        return expression;
    }
    // The read ends handed to the last child, closed here when the next one is prepared
    // (or when the expression is dropped): the writer threads see EPIPE once the child
    // exits without reading.
    let held: Arc<Mutex<Vec<OwnedFd>>> = Arc::new(Mutex::new(Vec::new()));
    expression.before_spawn(move |cmd| {
        let mut pairs = Vec::new();
        let mut held = held.lock().unwrap_or_else(|p| p.into_inner());
        held.clear();
        for f in &others {
            let (read, write) = pipe()?;
            let bytes = Arc::clone(&f.bytes);
            std::thread::spawn(move || {
                let mut file = std::fs::File::from(write);
                let _ = std::io::Write::write_all(&mut file, &bytes);
            });
            pairs.push((read.as_raw_fd(), f.fd));
            held.push(read);
        }
        // SAFETY: only dup2(2), async-signal-safe, between fork and exec. The read ends are
        // not any target number (those are open in this process, so pipe(2) skips them).
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

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2(2) fills two descriptors we then own; O_CLOEXEC keeps them out of
    // other children (a write end held by one would keep the pipe from ending).
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both are fresh descriptors from pipe2.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
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
        let script = format!("cat; cat /dev/fd/{fd}; cat /dev/fd/{fd}");
        let expression = feed(duct::cmd!("sh", "-c", script), feeds);
        // Twice, as the dry run and the real run: each child reads the same bytes.
        for _ in 0..2 {
            let out = expression.read().unwrap();
            assert_eq!(out, "from stdin\nfrom a pipe");
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
