//! One retry policy for transient API errors.
//!
//! Every request to the API server that may fail transiently (5xx, 429, a broken
//! connection) goes through [`run`]: a few attempts, capped exponential backoff with
//! jitter, the server's `Retry-After` honoured up to a bound, and an overall deadline, so a
//! persistent outage fails closed within seconds. A 409 Conflict is never retried here: it
//! means "re-read and re-decide", which only the caller can do.
//!
//! Where the server's hint comes from: kube-client turns an error answer into a
//! `Status` and drops the HTTP headers, so the hint we can see is the Status field
//! `details.retryAfterSeconds`, which the API server sets together with the `Retry-After`
//! header on 429 (and on 503 from some aggregated servers). A plain-text 429 without that
//! field (e.g. from a proxy) is retried on our own backoff. kube-client's own retry layer
//! (15 silent retries, delays up to 1000 s) is switched off in `cluster::connect`, so this
//! module is the only place that retries.
//!
//! Library code never prints: each wait and the final give-up are reported as a
//! [`RetryNotice`] to the observer the binary installs with [`set_observer`].

use std::fmt;
use std::future::Future;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How often and how long to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// Backoff before the second attempt; doubled for each further one.
    pub base: Duration,
    /// Largest backoff of our own.
    pub cap: Duration,
    /// Largest server-requested wait we honour; a longer `Retry-After` is cut to this.
    pub max_server_wait: Duration,
    /// No wait may end later than this after the first attempt started.
    pub deadline: Duration,
}

impl RetryPolicy {
    /// The policy for every API request: at most 4 attempts, waits of our own at most
    /// 0.3 s + 0.6 s + 1.2 s, a server's `Retry-After` honoured up to 5 s, and never
    /// waiting past 10 s after the first attempt.
    pub const API: RetryPolicy = RetryPolicy {
        attempts: 4,
        base: Duration::from_millis(300),
        cap: Duration::from_secs(2),
        max_server_wait: Duration::from_secs(5),
        deadline: Duration::from_secs(10),
    };

    /// Largest total time spent waiting between attempts (request time not included).
    #[cfg(test)]
    pub fn worst_case_wait(&self) -> Duration {
        let mut total = Duration::ZERO;
        for retry in 1..self.attempts {
            total += self.backoff(retry).max(self.max_server_wait);
        }
        total.min(self.deadline)
    }

    /// Our own backoff before retry number `retry` (1-based), before jitter:
    /// `base * 2^(retry-1)`, at most `cap`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = 1u32
            .checked_shl(retry.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The wait before retry number `retry`: "equal jitter" (half the backoff fixed, half
    /// random, so concurrent clients spread out without ever retrying at once), or the
    /// server's hint cut to `max_server_wait` when that is longer. `unit` is a random
    /// number in [0, 1).
    pub fn wait(&self, retry: u32, server_hint: Option<Duration>, unit: f64) -> Duration {
        let backoff = self.backoff(retry);
        let half = backoff / 2;
        let jittered = half + half.mul_f64(unit.clamp(0.0, 1.0));
        match server_hint {
            Some(hint) => hint.min(self.max_server_wait).max(jittered),
            None => jittered,
        }
    }
}

/// What the retry loop should do with an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Worth another attempt; the server may have said when.
    Retry {
        /// The server's `Retry-After`, if it gave one.
        server_hint: Option<Duration>,
    },
    /// Final: retrying cannot help (or, for 409, the caller must re-read first).
    Final,
}

/// Errors the retry loop can judge.
pub trait Retryable: fmt::Display {
    /// Whether (and when) to retry.
    fn verdict(&self) -> Verdict;
}

/// One wait, or the decision to stop, reported to the observer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryNotice {
    /// What was being done, e.g. `listing Secrets of release "db" in namespace "prod"`.
    pub what: String,
    /// The error of the attempt that just failed (never contains payloads).
    pub error: String,
    /// The attempt that failed (1-based).
    pub attempt: u32,
    /// Attempts allowed.
    pub attempts: u32,
    /// How long we now wait; `None` when giving up.
    pub wait: Option<Duration>,
    /// What the server asked for, when it did.
    pub server_hint: Option<Duration>,
    /// Time since the first attempt started.
    pub elapsed: Duration,
}

impl fmt::Display for RetryNotice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.wait {
            Some(wait) => {
                write!(
                    f,
                    "retrying {} in {} (attempt {} of {} failed: {})",
                    self.what,
                    secs(wait),
                    self.attempt,
                    self.attempts,
                    self.error
                )?;
                if let Some(hint) = self.server_hint {
                    write!(f, "; the server asked to wait {}", secs(hint))?;
                }
                Ok(())
            }
            None => write!(
                f,
                "giving up {} after {} attempt{} in {}: {}",
                self.what,
                self.attempt,
                if self.attempt == 1 { "" } else { "s" },
                secs(self.elapsed),
                self.error
            ),
        }
    }
}

/// `1.2s`, `5s`: one decimal below a minute.
fn secs(d: Duration) -> String {
    let tenths = (d.as_millis() + 50) / 100;
    if tenths.is_multiple_of(10) {
        format!("{}s", tenths / 10)
    } else {
        format!("{}.{}s", tenths / 10, tenths % 10)
    }
}

/// Time and sleeping, replaceable in tests.
pub trait Clock {
    /// Time since an arbitrary fixed point.
    fn now(&self) -> Duration;
    /// Waits `d`.
    fn sleep(&self, d: Duration) -> impl Future<Output = ()>;
    /// A random number in [0, 1) for jitter.
    fn unit(&self) -> f64;
}

/// The real clock: tokio sleeps, monotonic time, cheap non-cryptographic jitter.
pub struct SystemClock {
    start: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock {
            start: Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }
    fn sleep(&self, d: Duration) -> impl Future<Output = ()> {
        tokio::time::sleep(d)
    }
    fn unit(&self) -> f64 {
        jitter_unit()
    }
}

/// A number in [0, 1) that differs between processes and calls (splitmix64 of the time
/// and pid); jitter only needs spread, not secrecy.
pub fn jitter_unit() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut z = nanos ^ (u64::from(std::process::id()) << 32);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

type Observer = Box<dyn Fn(&RetryNotice) + Send + Sync>;
/// Process-wide on purpose: retries happen deep inside every store, Lease and cluster
/// request, and the only receiver is the output layer, which adapters may not import.
/// Threading a callback through every request would carry one constant value along
/// dozens of paths; it is set once, in `Plan::run` (`commands/mod.rs`), to
/// `output::retry`, and carries no data other than the notice itself.
static OBSERVER: OnceLock<Observer> = OnceLock::new();

/// Installs the process-wide receiver of [`RetryNotice`]s (the binary prints them on
/// stderr). The first call wins; without one, notices are dropped.
pub fn set_observer(observer: impl Fn(&RetryNotice) + Send + Sync + 'static) {
    let _ = OBSERVER.set(Box::new(observer));
}

fn notify(notice: &RetryNotice) {
    if let Some(observer) = OBSERVER.get() {
        observer(notice);
    }
}

/// Runs `op` under [`RetryPolicy::API`] with the real clock, reporting to the installed
/// observer. `what` names the operation for the notices.
pub async fn run<T, E, F, Fut>(what: &str, op: F) -> Result<T, E>
where
    E: Retryable,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    run_with(&RetryPolicy::API, &SystemClock::default(), what, op, notify).await
}

/// Runs `op` until it succeeds, fails finally, runs out of attempts, or the next wait
/// would end past the deadline. Each wait and a give-up after a transient error are
/// passed to `on_notice` before they happen. Returns the last result.
pub async fn run_with<T, E, F, Fut>(
    policy: &RetryPolicy,
    clock: &impl Clock,
    what: &str,
    mut op: F,
    mut on_notice: impl FnMut(&RetryNotice),
) -> Result<T, E>
where
    E: Retryable,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = clock.now();
    let mut attempt = 1;
    loop {
        let error = match op().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let Verdict::Retry { server_hint } = error.verdict() else {
            return Err(error);
        };
        let elapsed = clock.now().saturating_sub(started);
        let wait = policy.wait(attempt, server_hint, clock.unit());
        let mut notice = RetryNotice {
            what: what.to_string(),
            error: error.to_string(),
            attempt,
            attempts: policy.attempts,
            wait: Some(wait),
            server_hint,
            elapsed,
        };
        if attempt >= policy.attempts || elapsed + wait > policy.deadline {
            notice.wait = None;
            on_notice(&notice);
            return Err(error);
        }
        on_notice(&notice);
        clock.sleep(wait).await;
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::cluster::ApiError;
    use std::cell::{Cell, RefCell};

    /// Time moves only when we sleep; jitter is fixed.
    struct FakeClock {
        now: Cell<Duration>,
        slept: RefCell<Vec<Duration>>,
        unit: f64,
    }

    impl FakeClock {
        fn new(unit: f64) -> FakeClock {
            FakeClock {
                now: Cell::new(Duration::ZERO),
                slept: RefCell::new(Vec::new()),
                unit,
            }
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> Duration {
            self.now.get()
        }
        fn sleep(&self, d: Duration) -> impl Future<Output = ()> {
            self.now.set(self.now.get() + d);
            self.slept.borrow_mut().push(d);
            std::future::ready(())
        }
        fn unit(&self) -> f64 {
            self.unit
        }
    }

    fn api(code: u16, retry_after: Option<u64>) -> ApiError {
        ApiError::Status {
            code,
            reason: "Reason".into(),
            message: "msg".into(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    /// Runs against a script of answers (`None` = success); each attempt costs `cost`.
    fn script(
        policy: &RetryPolicy,
        clock: &FakeClock,
        answers: Vec<Option<ApiError>>,
        cost: Duration,
    ) -> (Result<u32, ApiError>, u32, Vec<RetryNotice>) {
        let calls = Cell::new(0u32);
        let answers = RefCell::new(answers.into_iter());
        let mut notices = Vec::new();
        let result = block_on(run_with(
            policy,
            clock,
            "listing Secrets",
            || {
                calls.set(calls.get() + 1);
                clock.now.set(clock.now.get() + cost);
                let next = answers
                    .borrow_mut()
                    .next()
                    .expect("more calls than answers");
                std::future::ready(match next {
                    None => Ok(calls.get()),
                    Some(e) => Err(e),
                })
            },
            |n| notices.push(n.clone()),
        ));
        (result, calls.get(), notices)
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy::API;
        assert_eq!(p.backoff(1), Duration::from_millis(300));
        assert_eq!(p.backoff(2), Duration::from_millis(600));
        assert_eq!(p.backoff(3), Duration::from_millis(1200));
        assert_eq!(p.backoff(4), Duration::from_secs(2));
        assert_eq!(p.backoff(40), Duration::from_secs(2));
        assert_eq!(p.backoff(u32::MAX), Duration::from_secs(2));
    }

    #[test]
    fn jitter_stays_within_half_and_full_backoff() {
        let p = RetryPolicy::API;
        assert_eq!(p.wait(2, None, 0.0), Duration::from_millis(300));
        assert_eq!(p.wait(2, None, 0.5), Duration::from_millis(450));
        assert!(p.wait(2, None, 0.999_999) <= Duration::from_millis(600));
        // Out-of-range randomness cannot break the bound.
        assert_eq!(p.wait(2, None, 7.0), Duration::from_millis(600));
        assert_eq!(p.wait(2, None, -1.0), Duration::from_millis(300));
    }

    #[test]
    fn server_hint_is_honoured_within_the_bound() {
        let p = RetryPolicy::API;
        let s = Duration::from_secs;
        assert_eq!(p.wait(1, Some(s(3)), 0.0), s(3));
        assert_eq!(p.wait(1, Some(s(600)), 0.0), s(5));
        // A hint shorter than our backoff does not make us hammer the server.
        assert_eq!(
            p.wait(3, Some(Duration::ZERO), 0.0),
            Duration::from_millis(600)
        );
    }

    #[test]
    fn verdicts() {
        let retry = |h: Option<u64>| Verdict::Retry {
            server_hint: h.map(Duration::from_secs),
        };
        assert_eq!(api(503, None).verdict(), retry(None));
        assert_eq!(api(504, None).verdict(), retry(None));
        assert_eq!(api(500, None).verdict(), retry(None));
        assert_eq!(api(429, Some(2)).verdict(), retry(Some(2)));
        assert_eq!(ApiError::Transport("reset".into()).verdict(), retry(None));
        for code in [400, 403, 404, 409, 410, 422] {
            assert_eq!(api(code, None).verdict(), Verdict::Final, "{code}");
        }
        // Even with a hint, a conflict is the caller's to resolve.
        assert_eq!(api(409, Some(1)).verdict(), Verdict::Final);
    }

    #[test]
    fn persistent_503_gives_up_after_the_attempts() {
        let clock = FakeClock::new(0.0);
        let answers = (0..4).map(|_| Some(api(503, None))).collect();
        let (result, calls, notices) = script(
            &RetryPolicy::API,
            &clock,
            answers,
            Duration::from_millis(10),
        );
        assert_eq!(result.unwrap_err().code(), Some(503));
        assert_eq!(calls, 4);
        assert_eq!(
            *clock.slept.borrow(),
            vec![
                Duration::from_millis(150),
                Duration::from_millis(300),
                Duration::from_millis(600)
            ]
        );
        let lines: Vec<String> = notices.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            vec![
                "retrying listing Secrets in 0.2s (attempt 1 of 4 failed: the API server answered 503 Reason: msg)",
                "retrying listing Secrets in 0.3s (attempt 2 of 4 failed: the API server answered 503 Reason: msg)",
                "retrying listing Secrets in 0.6s (attempt 3 of 4 failed: the API server answered 503 Reason: msg)",
                "giving up listing Secrets after 4 attempts in 1.1s: the API server answered 503 Reason: msg",
            ]
        );
    }

    #[test]
    fn retry_after_is_honoured_and_the_deadline_holds() {
        let clock = FakeClock::new(0.0);
        // The server asks for 4 s each time: 4 + 4 fits in 10 s, a third 4 s does not.
        let answers = (0..4).map(|_| Some(api(429, Some(4)))).collect();
        let (result, calls, notices) = script(&RetryPolicy::API, &clock, answers, Duration::ZERO);
        assert_eq!(result.unwrap_err().code(), Some(429));
        assert_eq!(calls, 3);
        assert_eq!(*clock.slept.borrow(), vec![Duration::from_secs(4); 2]);
        assert_eq!(
            notices[0].to_string(),
            "retrying listing Secrets in 4s (attempt 1 of 4 failed: the API server answered 429 \
             Reason: msg); the server asked to wait 4s"
        );
        assert_eq!(notices.last().unwrap().wait, None);
        assert!(clock.now() <= RetryPolicy::API.deadline);
    }

    #[test]
    fn huge_retry_after_is_cut_to_the_bound() {
        let clock = FakeClock::new(0.5);
        let answers = vec![Some(api(429, Some(3600))), None];
        let (result, calls, _) = script(&RetryPolicy::API, &clock, answers, Duration::ZERO);
        assert_eq!(result.unwrap(), 2);
        assert_eq!(calls, 2);
        assert_eq!(*clock.slept.borrow(), vec![Duration::from_secs(5)]);
    }

    #[test]
    fn slow_requests_count_against_the_deadline() {
        let clock = FakeClock::new(0.0);
        // Each failing request itself takes 6 s: after the first, a wait would pass 10 s
        // only after the second.
        let answers = (0..4).map(|_| Some(api(504, None))).collect();
        let (result, calls, notices) =
            script(&RetryPolicy::API, &clock, answers, Duration::from_secs(6));
        assert!(result.is_err());
        assert_eq!(calls, 2);
        assert_eq!(notices.len(), 2);
        assert_eq!(
            notices[1].to_string(),
            "giving up listing Secrets after 2 attempts in 12.2s: the API server answered 504 \
             Reason: msg"
        );
    }

    #[test]
    fn final_errors_and_successes_are_not_retried() {
        for e in [api(409, None), api(403, None), api(404, None)] {
            let clock = FakeClock::new(0.0);
            let (result, calls, notices) =
                script(&RetryPolicy::API, &clock, vec![Some(e)], Duration::ZERO);
            assert!(result.is_err());
            assert_eq!(calls, 1);
            assert!(notices.is_empty());
            assert!(clock.slept.borrow().is_empty());
        }
        let clock = FakeClock::new(0.0);
        let answers = vec![Some(ApiError::Transport("reset".into())), None];
        let (result, calls, notices) = script(&RetryPolicy::API, &clock, answers, Duration::ZERO);
        assert_eq!(result.unwrap(), 2);
        assert_eq!(calls, 2);
        assert_eq!(notices.len(), 1);
    }

    #[test]
    fn worst_case_wait_is_bounded_by_the_deadline() {
        assert_eq!(RetryPolicy::API.worst_case_wait(), Duration::from_secs(10));
        let no_hints = RetryPolicy {
            max_server_wait: Duration::ZERO,
            ..RetryPolicy::API
        };
        assert_eq!(no_hints.worst_case_wait(), Duration::from_millis(2100));
    }

    #[test]
    fn jitter_unit_is_in_range() {
        for _ in 0..1000 {
            let u = jitter_unit();
            assert!((0.0..1.0).contains(&u), "{u}");
        }
    }
}
