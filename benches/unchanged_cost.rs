//! Benchmark (run with `cargo bench --bench unchanged_cost`): what an `unchanged` decision
//! under `--min-version-policy newer-or-changed` costs, against the plain
//! `helm upgrade --install` it saves, for releases with 10 and 100 revisions, with real
//! helm 3 and helm 4 against the API stand-in, without and with an injected API latency
//! (every request delayed, as with a remote API server). Prints wall times, request counts
//! and the ratio (goal of issue 11: at most 0.5). No assertions on time.

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use guarded_upgrade::release::{decode_release_json, encode_release_json, set_release_status};
use kube_standin::testbed::{self, Helm};
use kube_standin::{Fault, FaultAction, StandIn};

const NS: &str = "bench";

/// Turns the one real revision helm wrote into `revisions` revisions (all superseded but
/// the last), as a long-lived release has them.
fn grow_history(api: &StandIn, revisions: u64) {
    let first = api
        .get("secrets", Some(NS), "sh.helm.release.v1.rel.v1")
        .expect("revision 1");
    let wire = first["data"]["release"].as_str().expect("release data");
    let once = base64::engine::general_purpose::STANDARD
        .decode(wire)
        .expect("base64");
    let release = decode_release_json(&once).expect("decode");
    for rev in 1..=revisions {
        let status = if rev == revisions {
            "deployed"
        } else {
            "superseded"
        };
        let mut r = release.clone();
        r["version"] = serde_json::json!(rev);
        set_release_status(&mut r, status).expect("status");
        let encoded = encode_release_json(&r).expect("encode");
        let wire = base64::engine::general_purpose::STANDARD.encode(encoded.as_bytes());
        api.put_object(
            "secrets",
            serde_json::json!({
                "apiVersion": "v1", "kind": "Secret", "type": "helm.sh/release.v1",
                "metadata": {
                    "name": format!("sh.helm.release.v1.rel.v{rev}"), "namespace": NS,
                    "labels": { "name": "rel", "owner": "helm", "status": status,
                                "version": rev.to_string() }
                },
                "data": { "release": wire }
            }),
        );
    }
}

fn time(iterations: u32, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..iterations {
        f();
    }
    start.elapsed() / iterations
}

fn main() {
    // `cargo test --benches` runs benches once in test mode; keep that quick.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let chart = testbed::fixtures_dir().join("charts").join("tagged-0.1.0");
    let chart = chart.to_string_lossy().into_owned();
    let values = ["--set", "message=bench", "--set", "image.tag=1.2.3"];
    println!(
        "{:<6} {:>5} {:>8} {:>26} {:>30} {:>6}",
        "helm",
        "revs",
        "latency",
        "unchanged decision (req)",
        "helm upgrade --install (req)",
        "ratio"
    );
    let cases = [(10u64, 0u64), (100, 0), (10, 10), (100, 10)];
    for (label, bin) in testbed::helms() {
        for (revisions, latency_ms) in cases {
            let api = StandIn::start().expect("stand-in");
            api.create_namespace(NS);
            let helm = Helm::new(&bin, &api);
            let mut install = vec!["upgrade", "--install", "rel", chart.as_str(), "-n", NS];
            install.extend(values);
            helm.run(&install).ok();
            grow_history(&api, revisions);
            if latency_ms > 0 {
                api.inject(Fault {
                    verb: None,
                    resource: None,
                    name: None,
                    action: FaultAction::Delay(Duration::from_millis(latency_ms)),
                    times: None,
                });
            }
            api.clear_requests();

            let guard_args = {
                let mut a = vec![
                    "upgrade",
                    "rel",
                    chart.as_str(),
                    "-n",
                    NS,
                    "--min-version-policy",
                    "newer-or-changed",
                ];
                a.extend(values);
                a
            };
            let iterations = 3;
            let unchanged = time(iterations, || {
                let mut cmd = helm.command(&[]);
                cmd.env("HELM_BIN", &bin);
                let out = Command::new(env!("CARGO_BIN_EXE_guarded-upgrade"))
                    .args(&guard_args)
                    .envs(cmd.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
                    .env("HELM_BIN", &bin)
                    .output()
                    .expect("run guarded-upgrade");
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert!(
                    out.status.success() && stderr.contains("is unchanged"),
                    "not an unchanged skip: {stderr}"
                );
            });
            let count = |api: &StandIn| {
                let reqs = api.requests();
                let writes = reqs.iter().filter(|r| r.is_write()).count();
                api.clear_requests();
                (
                    reqs.len() / iterations as usize,
                    writes / iterations as usize,
                )
            };
            let (u_reqs, u_writes) = count(&api);
            // helm prunes to 10 revisions by default; keep the history as measured.
            let mut plain = install.clone();
            plain.extend(["--history-max", "0"]);
            let upgrade = time(iterations, || {
                helm.run(&plain).ok();
            });
            let (h_reqs, h_writes) = count(&api);
            println!(
                "{label:<6} {revisions:>5} {:>6}ms {:>14.1?} ({u_reqs:>3}, {u_writes} writes) \
                 {:>14.1?} ({h_reqs:>3}, {h_writes} writes) {:>6.2}",
                latency_ms,
                unchanged,
                upgrade,
                unchanged.as_secs_f64() / upgrade.as_secs_f64()
            );
        }
    }
}
