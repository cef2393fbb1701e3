//! Transient API errors: bounded, reported retries that fail closed (issue 10). The
//! server errors (503, 429, 504) are injected by the API stand-in; an API server that is
//! not there at all is real (nothing listens where the kubeconfig points).

use std::time::{Duration, Instant};

use crate::common::{
    bed, chart, dead_port, kubeconfig_with_server, per_helm, per_helm_standin, Bed, Run,
};
use kube_standin::{Fault, FaultAction};

const NS: &str = "shared";

per_helm_standin!(persistent_503_on_the_list_fails_closed_within_seconds);
per_helm!(refused_connections_are_retried_within_seconds);

/// `db` installed at 1.0.0 by real helm; the test then tries to upgrade it to 1.1.0.
fn installed(label: &str) -> Bed {
    let b = bed(label);
    b.api.create_namespace(NS);
    b.helm(&["install", "db", &chart("demo-1.0.0"), "-n", NS])
        .expect_code(0, "helm install");
    b
}

fn fail_list(b: &Bed, action: FaultAction) {
    b.api.inject(Fault {
        verb: Some("list".into()),
        resource: Some("secrets".into()),
        name: None,
        action,
        times: None,
    });
}

/// The retry lines on stderr, whole.
fn retry_lines(run: &Run) -> Vec<&str> {
    run.stderr
        .lines()
        .filter(|l| {
            l.starts_with("guarded-upgrade: retrying ")
                || l.starts_with("guarded-upgrade: giving up ")
        })
        .collect()
}

/// Nothing was written to the release: helm did not run.
fn assert_untouched(b: &Bed) {
    let secret_writes: Vec<String> = b
        .writes()
        .into_iter()
        .filter(|w| w.contains("/secrets"))
        .collect();
    assert!(secret_writes.is_empty(), "{secret_writes:?}");
    if !b.api.is_real() {
        b.api.clear_faults();
    }
    assert_eq!(b.deployed("db", NS), ("1.0.0".into(), 1));
}

const LIST: &str = r#"listing Secrets (name=db,owner=helm) in namespace "shared""#;
const E503: &str =
    "the API server answered 503 ServiceUnavailable: the server is currently unable to handle the request";

fn persistent_503_on_the_list_fails_closed_within_seconds(label: &str) {
    let b = installed(label);
    fail_list(&b, FaultAction::Status(503));
    b.api.clear_requests();
    let started = Instant::now();
    let run = b.guard(&["upgrade", "--install", "db", &chart("demo-1.1.0"), "-n", NS]);
    let took = started.elapsed();
    run.expect_code(3, "persistent 503");
    // The stand-in asks for 1 s (retryAfterSeconds) like an API server; 4 attempts.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let lines = retry_lines(&run);
    assert_eq!(lines.len(), 4, "{}", run.stderr);
    for (i, line) in lines[..3].iter().enumerate() {
        // The wait is the server's 1 s, or our jittered backoff when longer (<= 1.2 s).
        let ok = ["1s", "1.1s", "1.2s"].iter().any(|w| {
            *line
                == format!(
                    "guarded-upgrade: retrying {LIST} in {w} (attempt {} of 4 failed: {E503}); \
                     the server asked to wait 1s",
                    i + 1
                )
        });
        assert!(ok, "line {i}: {line}");
    }
    let give_up = format!("guarded-upgrade: giving up {LIST} after 4 attempts in ");
    assert!(
        lines[3].starts_with(&give_up) && lines[3].ends_with(&format!("s: {E503}")),
        "{}",
        lines[3]
    );
    let lists = b
        .api
        .requests()
        .into_iter()
        .filter(|r| r.verb == "list" && r.resource.as_deref() == Some("secrets"))
        .count();
    assert_eq!(
        lists, 4,
        "one request per attempt, no hidden client retries"
    );
    assert_untouched(&b);
}

/// A 429 asking for 30 s is honoured only up to the 5 s bound, and the 10 s deadline stops
/// the run after two attempts (a second 5 s wait would end past it). Helm never runs, so
/// one helm version suffices.
#[test]
fn too_many_requests_with_a_long_retry_after_is_bounded() {
    let b = installed("standin-helm4");
    fail_list(&b, FaultAction::StatusRetryAfter(429, 30));
    b.api.clear_requests();
    let started = Instant::now();
    let run = b.guard(&["upgrade", "--install", "db", &chart("demo-1.1.0"), "-n", NS]);
    let took = started.elapsed();
    run.expect_code(3, "persistent 429");
    assert!(took >= Duration::from_secs(5), "took {took:?}");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    let e429 = "the API server answered 429 TooManyRequests: the server has received too many \
                requests and has asked us to try again later";
    let lines = retry_lines(&run);
    assert_eq!(lines.len(), 2, "{}", run.stderr);
    assert_eq!(
        lines[0],
        format!(
            "guarded-upgrade: retrying {LIST} in 5s (attempt 1 of 4 failed: {e429}); the \
             server asked to wait 30s"
        )
    );
    let give_up = format!("guarded-upgrade: giving up {LIST} after 2 attempts in ");
    assert!(lines[1].starts_with(&give_up), "{}", lines[1]);
    assert!(lines[1].ends_with(&format!("s: {e429}")), "{}", lines[1]);
    assert_untouched(&b);
}

/// A persistent 504 on a lock's record write is retried a bounded number of times, each
/// wait naming the record, and the command fails within seconds.
#[test]
fn persistent_504_on_a_lock_write_is_bounded() {
    let b = installed("standin-helm3");
    b.api.inject(Fault {
        verb: Some("patch".into()),
        resource: Some("secrets".into()),
        name: None,
        action: FaultAction::Status(504),
        times: None,
    });
    b.api.clear_requests();
    let started = Instant::now();
    let run = b.guard(&["lock", "db", "-n", NS, "--reason", "freeze"]);
    let took = started.elapsed();
    run.expect_code(3, "persistent 504 on the lock write");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    let lines = retry_lines(&run);
    assert_eq!(lines.len(), 4, "{}", run.stderr);
    let what = r#"labelling Secret "sh.helm.release.v1.db.v1" in namespace "shared""#;
    let e504 = "the API server answered 504 Timeout: the server was unable to return a response \
                in the time allotted";
    for (i, line) in lines[..3].iter().enumerate() {
        let prefix = format!("guarded-upgrade: retrying {what} in ");
        let suffix = format!(" (attempt {} of 4 failed: {e504})", i + 1);
        assert!(
            line.starts_with(&prefix) && line.ends_with(&suffix),
            "{line}"
        );
    }
    assert!(
        lines[3].starts_with(&format!(
            "guarded-upgrade: giving up {what} after 4 attempts in "
        )),
        "{}",
        lines[3]
    );
    let patches = b
        .api
        .requests()
        .into_iter()
        .filter(|r| r.verb == "patch")
        .count();
    assert_eq!(patches, 4);
}

/// The real API server with nothing listening where the kubeconfig points (an API server
/// that is down): every attempt is refused at once, the retries are reported, bounded
/// (4 attempts, within seconds), and the run fails closed with helm not run.
fn refused_connections_are_retried_within_seconds(label: &str) {
    let b = installed(label);
    let dead = format!("https://127.0.0.1:{}", dead_port());
    let kubeconfig = kubeconfig_with_server(&b, &dead);
    b.api.clear_requests();
    let started = Instant::now();
    let run = b.guard_env(
        &["upgrade", "--install", "db", &chart("demo-1.1.0"), "-n", NS],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    );
    let took = started.elapsed();
    run.expect_code(3, "API server down");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let refused = format!(
        "API server {dead} (context \"testbed\"): connection refused; check that the API \
         server is up and the address and port are right"
    );
    let lines = retry_lines(&run);
    assert_eq!(lines.len(), 4, "{}", run.stderr);
    for (i, line) in lines[..3].iter().enumerate() {
        let prefix = format!("guarded-upgrade: retrying {LIST} in ");
        let suffix = format!(" (attempt {} of 4 failed: {refused})", i + 1);
        assert!(
            line.starts_with(&prefix) && line.ends_with(&suffix),
            "line {i}: {line}"
        );
    }
    let give_up = format!("guarded-upgrade: giving up {LIST} after 4 attempts in ");
    assert!(
        lines[3].starts_with(&give_up) && lines[3].ends_with(&format!("s: {refused}")),
        "{}",
        lines[3]
    );
    run.assert_stderr_line(&format!(
        "guarded-upgrade: error: release \"db\" in namespace \"{NS}\": reading the deployed \
         release: listing Secret records: API server {dead} (context \"testbed\"): connection \
         refused; check that the API server is up and the address and port are right; helm \
         was not run"
    ));
    assert!(b.api.requests().is_empty(), "{:?}", b.api.requests());
    assert_untouched(&b);
}
