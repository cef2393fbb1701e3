//! SIGINT and SIGTERM, in one place. What each command does with them: `upgrade` gives
//! the mutex back and stops before helm; a running helm gets them forwarded
//! (`helm.rs`) and is waited for; a waiting mutex acquisition stops (`mutex.rs`); `lock`
//! and `unlock` let the record in flight finish, then stop and say what they left
//! ([`Interrupts`], read between records by `commands/records.rs`).

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// SIGINT and SIGTERM as they arrive, from [`Signals::listen`] on.
pub(crate) struct Signals {
    int: Option<Signal>,
    term: Option<Signal>,
}

impl Signals {
    /// Starts listening (a handler that cannot be installed never fires).
    pub(crate) fn listen() -> Signals {
        Signals {
            int: signal(SignalKind::interrupt()).ok(),
            term: signal(SignalKind::terminate()).ok(),
        }
    }

    /// The next SIGINT or SIGTERM: its number.
    pub(crate) async fn next(&mut self) -> i32 {
        async fn recv(signal: &mut Option<Signal>) -> Option<()> {
            match signal {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        }
        loop {
            tokio::select! {
                Some(()) = recv(&mut self.int) => return libc::SIGINT,
                Some(()) = recv(&mut self.term) => return libc::SIGTERM,
                else => std::future::pending::<()>().await,
            }
        }
    }
}

/// The first SIGINT or SIGTERM from now on: its number.
pub(crate) async fn first() -> i32 {
    Signals::listen().next().await
}

/// SIGINT/SIGTERM seen while records are being written: bulk writes finish the record in
/// flight, then stop and say what state they left.
#[derive(Clone, Default)]
pub(crate) struct Interrupts(Arc<AtomicI32>);

impl Interrupts {
    /// Starts listening for SIGINT and SIGTERM (from now until the process ends).
    pub(crate) fn listen() -> Interrupts {
        let seen = Interrupts::default();
        let flag = Arc::clone(&seen.0);
        let mut signals = Signals::listen();
        tokio::spawn(async move {
            let number = signals.next().await;
            flag.store(number, Ordering::SeqCst);
        });
        seen
    }

    /// As if `signal` had been received (tests).
    #[cfg(test)]
    pub(crate) fn raised(signal: i32) -> Interrupts {
        Interrupts(Arc::new(AtomicI32::new(signal)))
    }

    /// The signal received, if any.
    pub(crate) fn received(&self) -> Option<i32> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            n => Some(n),
        }
    }
}

/// `SIGINT`, `SIGTERM`.
pub(crate) fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGINT => "SIGINT".to_string(),
        libc::SIGTERM => "SIGTERM".to_string(),
        other => format!("signal {other}"),
    }
}
