//! SIGINT and SIGTERM while `lock` and `unlock` rewrite records: the writes finish the
//! record in flight, then stop and say what state they left (`records.rs`).

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

/// SIGINT/SIGTERM seen while records are being written: bulk writes finish the record in
/// flight, then stop and say what state they left.
#[derive(Clone, Default)]
pub(super) struct Interrupts(Arc<AtomicI32>);

impl Interrupts {
    /// Starts listening for SIGINT and SIGTERM (from now until the process ends).
    pub(super) fn listen() -> Interrupts {
        use tokio::signal::unix::{signal, SignalKind};
        let seen = Interrupts::default();
        for (kind, number) in [
            (SignalKind::interrupt(), libc::SIGINT),
            (SignalKind::terminate(), libc::SIGTERM),
        ] {
            if let Ok(mut stream) = signal(kind) {
                let flag = Arc::clone(&seen.0);
                tokio::spawn(async move {
                    if stream.recv().await.is_some() {
                        flag.store(number, Ordering::SeqCst);
                    }
                });
            }
        }
        seen
    }

    /// As if `signal` had been received (tests).
    #[cfg(test)]
    pub(super) fn raised(signal: i32) -> Interrupts {
        Interrupts(Arc::new(AtomicI32::new(signal)))
    }

    /// The signal received, if any.
    pub(super) fn received(&self) -> Option<i32> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            n => Some(n),
        }
    }
}

/// `SIGINT`, `SIGTERM`.
pub(super) fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGINT => "SIGINT".to_string(),
        libc::SIGTERM => "SIGTERM".to_string(),
        other => format!("signal {other}"),
    }
}
