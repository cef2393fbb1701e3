//! A seeded soak against the real control plane: `GU_SOAK_OPS` (default 30; a few hundred
//! for a real soak) operations — guarded upgrades to newer, equal and older versions,
//! `lock`, `lock --hard`, `unlock`, and two pipelines upgrading at once — with etcd or the
//! API server SIGKILLed at a random moment during about half of them (and restarted a
//! random while later). After every step: no record lost or unreadable, at most one
//! deployed revision, the deployed version never goes down, what `lock`/`unlock` printed
//! is what the records show, an upgrade that said `upgrade:` and exited 0 deployed its
//! target, and a step that failed under a fault converges when run again. It prints its
//! seed; `GU_SOAK_SEED=N` (with the same `GU_SOAK_OPS`) replays the same operations and
//! faults.

use std::time::{Duration, Instant};

use super::{
    check_claims, converged, errors_name_the_server, finish_within, installed, invariants, names,
    semver, shape, spawn, Component, Restore, NS, REL,
};

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const VERSIONS: [&str; 5] = ["1.0.0", "1.0.5", "1.1.0", "1.2.0", "1.3.0"];

#[test]
fn soak() {
    let seed: u64 = std::env::var("GU_SOAK_SEED")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let ops: usize = std::env::var("GU_SOAK_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    eprintln!("soak: GU_SOAK_SEED={seed} GU_SOAK_OPS={ops}");
    let replay = format!("replay with GU_SOAK_SEED={seed} GU_SOAK_OPS={ops}");
    let mut rng = Rng(seed);
    let b = installed("helm4");
    let _restore = Restore;
    let charts: Vec<String> = VERSIONS.iter().map(|v| b.versioned_chart(v)).collect();
    let mut floor = "1.0.0".to_string();
    let started_all = Instant::now();
    for step in 0..ops {
        let target = rng.below(VERSIONS.len() as u64) as usize;
        let upgrade: Vec<String> = [
            "upgrade",
            "--install",
            REL,
            &charts[target],
            "-n",
            NS,
            "--lease-duration",
            "3s",
            "--lock-timeout",
            "20s",
            "--recover-pending-after",
            "1s",
            "--history-max",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (what, runs): (String, Vec<Vec<String>>) = match rng.below(10) {
            0..=3 => (
                format!("upgrade to {}", VERSIONS[target]),
                vec![upgrade.clone()],
            ),
            4 => (
                "lock".into(),
                vec![svec(&["lock", REL, "-n", NS, "--reason", "soak"])],
            ),
            5 => (
                "lock --hard".into(),
                vec![svec(&["lock", REL, "--hard", "-n", NS])],
            ),
            6 | 7 => ("unlock".into(), vec![svec(&["unlock", REL, "-n", NS])]),
            _ => {
                let other = rng.below(VERSIONS.len() as u64) as usize;
                let mut second = upgrade.clone();
                second[3] = charts[other].clone();
                (
                    format!(
                        "concurrent upgrades to {} and {}",
                        VERSIONS[target], VERSIONS[other]
                    ),
                    vec![upgrade.clone(), second],
                )
            }
        };
        let fault = match rng.below(4) {
            0 => Some(Component::Etcd),
            1 => Some(Component::ApiServer),
            _ => None,
        };
        let at = Duration::from_millis(rng.below(1500));
        let down = Duration::from_millis(300 + rng.below(1200));
        let before = names(&b);
        let started = Instant::now();
        let children: Vec<_> = runs
            .iter()
            .map(|a| {
                let argv: Vec<&str> = a.iter().map(String::as_str).collect();
                spawn(&b, &argv, &[])
            })
            .collect();
        if let Some(c) = fault {
            std::thread::sleep(at);
            c.kill();
            std::thread::sleep(down);
            c.start();
        }
        let results: Vec<_> = children
            .into_iter()
            .map(|c| finish_within(c, started, &what))
            .collect();
        let label = format!("step {step}: {what}, fault {fault:?} at {at:?} for {down:?}");
        let fail = |why: String| -> ! {
            let out: Vec<String> = results
                .iter()
                .map(|r| format!("exit {}\n{}", r.code, r.stderr))
                .collect();
            panic!("{label}: {why}; {replay}\n{}", out.join("\n---\n"))
        };
        eprintln!(
            "{label}: exits {:?} in {:.1?}",
            results.iter().map(|r| r.code).collect::<Vec<_>>(),
            started.elapsed()
        );
        let deployed = invariants(&b, &before, &floor).unwrap_or_else(|e| fail(e));
        for (run, args) in results.iter().zip(&runs) {
            check_claims(&b, run).unwrap_or_else(|e| fail(e));
            if fault.is_some() {
                errors_name_the_server(&b, run).unwrap_or_else(|e| fail(e));
            } else if run.code != 0 {
                fail(format!("{args:?} failed without a fault"));
            }
            if run.code == 0
                && args[0] == "upgrade"
                && run.stderr.lines().any(|l| l.starts_with("upgrade: "))
                && runs.len() == 1
                && deployed != VERSIONS[target]
            {
                fail(format!("said upgrade, exit 0, {deployed} deployed"));
            }
        }
        // A step that failed under a fault converges when run again.
        for (run, args) in results.iter().zip(&runs) {
            if run.code == 0 {
                continue;
            }
            if shape(&b)
                .last()
                .is_some_and(|s| s.1.starts_with("pending-") && !s.3)
            {
                std::thread::sleep(Duration::from_millis(2100));
                // An interrupted upgrade's pending revision: recovered by the next guarded
                // upgrade (of the deployed version: it then skips).
                let recover = upgrade.clone();
                let argv: Vec<&str> = recover.iter().map(String::as_str).collect();
                let r = b.guard(&argv);
                if r.code != 0 {
                    fail(format!(
                        "recovering the pending revision failed: {}",
                        r.stderr
                    ));
                }
            }
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let again = b.guard(&argv);
            if again.code != 0 {
                fail(format!("the re-run of {args:?} failed: {}", again.stderr));
            }
            converged(&b, &argv).unwrap_or_else(|e| fail(e));
        }
        if !deployed.is_empty() && semver(&deployed) > semver(&floor) {
            floor = deployed;
        }
        let _ = shape(&b);
    }
    eprintln!(
        "soak: {ops} steps in {:.1?}; {replay}",
        started_all.elapsed()
    );
}

fn svec(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}
