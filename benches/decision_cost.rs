//! Benchmarks (run with `cargo bench --bench decision_cost`): what a decision costs.
//!
//! 1. Decoding a release record: the summary decoder that skips `manifest`, `config`,
//!    templates unread, against decoding the full JSON.
//! 2. `guarded-upgrade check` against the API stand-in for releases with 10 and 200
//!    revisions: wall time and request count must not grow with history.
//!
//! A plain `harness = false` bench: no timing assertions, it prints its measurements.

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use guarded_upgrade::release::{decode_release, decode_release_json, encode_release_json};
use kube_standin::StandIn;

fn synthetic_release(revision: u64, status: &str, manifest_bytes: usize) -> serde_json::Value {
    serde_json::json!({
        "name": "db", "namespace": "bench", "version": revision,
        "info": { "status": status, "description": "bench" },
        "chart": {
            "metadata": { "name": "demo", "version": format!("1.{revision}.0") },
            "templates": (0..20).map(|i| serde_json::json!({
                "name": format!("templates/t{i}.yaml"), "data": "eA==".repeat(2000)
            })).collect::<Vec<_>>(),
        },
        "config": { "password": "not-a-real-password", "replicas": 3 },
        "manifest": "kind: ConfigMap\n".repeat(manifest_bytes / 16),
    })
}

fn time<T>(label: &str, iterations: u32, mut f: impl FnMut() -> T) -> Duration {
    let start = Instant::now();
    for _ in 0..iterations {
        std::hint::black_box(f());
    }
    let per = start.elapsed() / iterations;
    println!("{label:<55} {per:>12.2?} per iteration ({iterations} iterations)");
    per
}

fn decode_benches() {
    for size in [64 * 1024, 1024 * 1024] {
        let encoded = encode_release_json(&synthetic_release(1, "deployed", size)).unwrap();
        let bytes = encoded.as_bytes();
        time(
            &format!("decode_release (summary), manifest {} KiB", size / 1024),
            50,
            || decode_release(bytes).unwrap(),
        );
        time(
            &format!("decode_release_json (full), manifest {} KiB", size / 1024),
            50,
            || decode_release_json(bytes).unwrap(),
        );
    }
}

fn put_history(api: &StandIn, revisions: u64) {
    for rev in 1..=revisions {
        let status = if rev == revisions {
            "deployed"
        } else {
            "superseded"
        };
        let encoded = encode_release_json(&synthetic_release(rev, status, 64 * 1024)).unwrap();
        let wire = base64::engine::general_purpose::STANDARD.encode(encoded.as_bytes());
        api.put_object(
            "secrets",
            serde_json::json!({
                "apiVersion": "v1", "kind": "Secret", "type": "helm.sh/release.v1",
                "metadata": {
                    "name": format!("sh.helm.release.v1.db.v{rev}"), "namespace": "bench",
                    "labels": { "name": "db", "owner": "helm", "status": status,
                                "version": rev.to_string() }
                },
                "data": { "release": wire }
            }),
        );
    }
}

fn check_benches() {
    let chart = format!("{}/fixtures/charts/demo-1.0.0", env!("CARGO_MANIFEST_DIR"));
    for revisions in [10u64, 200] {
        let api = StandIn::start().expect("stand-in");
        api.create_namespace("bench");
        put_history(&api, revisions);
        api.clear_requests();
        let iterations = 10;
        time(
            &format!("guarded-upgrade check, {revisions} revisions"),
            iterations,
            || {
                let out = Command::new(env!("CARGO_BIN_EXE_guarded-upgrade"))
                    .args(["check", "db", &chart, "-n", "bench", "-o", "json"])
                    .env("KUBECONFIG", api.kubeconfig())
                    .env("HELM_BIN", "/bin/true")
                    .output()
                    .expect("run check");
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            },
        );
        let requests = api
            .requests()
            .iter()
            .filter(|r| r.resource.as_deref() == Some("secrets"))
            .count();
        println!(
            "{:<55} {:>12} secret requests per check",
            format!("  requests, {revisions} revisions"),
            requests / iterations as usize
        );
    }
}

fn main() {
    // `cargo test --benches` runs benches once in test mode; keep that quick.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    decode_benches();
    check_benches();
}
