//! What guarded-upgrade costs against the helm command a user would otherwise run, measured
//! side by side in one run, on the real control plane (etcd with fsync + kube-apiserver,
//! from `scripts/install-kube.sh`) and on the API stand-in, with the newest helm 3 and 4.
//! Run it with `scripts/bench.sh` (or `cargo bench --bench cost`). It prints a table and
//! writes SVG charts to `docs/perf/`. It measures; it asserts only that each run did what
//! it is measured for (an upgrade upgraded, a skip skipped), never on time.
//!
//! Each row also shows the measured **floor**: what the guard cannot avoid for that
//! measurement, timed in the same run (a `guarded-upgrade locks -n NS` run: process start,
//! kubeconfig, one TLS handshake and the same record list; helm's own dry run for an
//! unchanged `newer-or-changed`; the helm phases of the pipelines), and its ratio to the
//! same baseline, so a missed target says whether it was missed at the floor.
//!
//! `GU_BENCH_QUICK=1` shrinks the sizes; `GU_BENCH_SMOKE=1` runs every measurement once,
//! at the smallest sizes, with helm 3 only, and writes its charts to a temporary
//! directory (for checking that the bench runs; its figures mean nothing).

#[path = "support/svg.rs"]
mod svg;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use guarded_upgrade::release::{decode_release_json, encode_release_json, set_release_status};
use kube_standin::testbed::{self, copy_dir};
use kube_standin::StandIn;
use serde_json::{json, Value};

const GUARD: &str = env!("CARGO_BIN_EXE_guarded-upgrade");

enum Server {
    Real(kube_testbed::Cluster),
    StandIn(StandIn),
}

impl Server {
    fn name(&self) -> &'static str {
        match self {
            Server::Real(_) => "kube-apiserver",
            Server::StandIn(_) => "stand-in",
        }
    }
    fn kubeconfig(&self) -> &Path {
        match self {
            Server::Real(c) => c.kubeconfig(),
            Server::StandIn(s) => s.kubeconfig(),
        }
    }
    fn create_namespace(&self, ns: &str) {
        match self {
            Server::Real(c) => c.create_namespace(ns),
            Server::StandIn(s) => s.create_namespace(ns),
        }
    }
    fn get(&self, resource: &str, ns: &str, name: &str) -> Option<Value> {
        match self {
            Server::Real(c) => c.get(resource, Some(ns), name),
            Server::StandIn(s) => s.get(resource, Some(ns), name),
        }
    }
    /// Creates an object that does not exist yet (one request on the real server).
    fn create(&self, resource: &str, obj: Value) {
        match self {
            Server::Real(c) => {
                let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default");
                let (code, v) = c.request(
                    "POST",
                    &format!("/api/v1/namespaces/{ns}/{resource}"),
                    Some(&obj),
                );
                assert!(code == 201 || code == 409, "create {resource}: {code} {v}");
            }
            Server::StandIn(s) => {
                s.put_object(resource, obj);
            }
        }
    }
    /// (requests, writes) since the last call.
    fn take_requests(&self) -> (usize, usize) {
        match self {
            Server::Real(c) => {
                let r = c.requests();
                c.clear_requests();
                (r.len(), r.iter().filter(|e| e.is_write()).count())
            }
            Server::StandIn(s) => {
                let r = s.requests();
                s.clear_requests();
                (r.len(), r.iter().filter(|e| e.is_write()).count())
            }
        }
    }
}

struct Ctx {
    server: Server,
    home: tempfile::TempDir,
    helm: PathBuf,
    helm_label: &'static str,
    quick: bool,
    smoke: bool,
}

impl Ctx {
    fn command(&self, program: &Path, args: &[&str]) -> Command {
        let home = self.home.path();
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", home)
            .env("KUBECONFIG", self.server.kubeconfig())
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .env("HELM_BIN", &self.helm)
            .args(args);
        cmd
    }
    fn helm(&self, args: &[&str]) -> Command {
        self.command(&self.helm, args)
    }
    fn guard(&self, args: &[&str]) -> Command {
        self.command(Path::new(GUARD), args)
    }

    /// Runs per median: 1 in smoke mode.
    fn runs(&self, n: usize) -> usize {
        if self.smoke {
            1
        } else {
            n
        }
    }

    /// The guard's fixed cost where it reads `ns`: a `locks -n NS` run (process start,
    /// kubeconfig, one TLS handshake, the metadata list of the namespace's helm records,
    /// nothing else), median.
    fn fixed_cost(&self, ns: &str) -> Duration {
        let n = self.runs(5);
        let t = median(n, || measure(self.guard(&["locks", "-n", ns])).0);
        self.server.take_requests();
        t
    }

    /// A copy of chart `demo` (templates of demo-1.2.0) at `version`.
    fn chart(&self, version: &str) -> String {
        let dir = self
            .home
            .path()
            .join("charts")
            .join(format!("demo-{version}"));
        if !dir.exists() {
            copy_dir(&testbed::chart("demo", "1.2.0"), &dir);
            let path = dir.join("Chart.yaml");
            let text = std::fs::read_to_string(&path).expect("Chart.yaml");
            let text: Vec<String> = text
                .lines()
                .map(|l| {
                    if l.starts_with("version:") {
                        format!("version: {version}")
                    } else {
                        l.to_string()
                    }
                })
                .collect();
            std::fs::write(&path, text.join("\n") + "\n").expect("write Chart.yaml");
        }
        dir.to_string_lossy().into_owned()
    }
}

/// Runs to completion; panics with the output unless it exited 0 and `check` accepts stderr.
fn run(mut cmd: Command, what: &str, check: impl Fn(&str) -> bool) {
    let out = cmd.output().expect("spawn");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && check(&stderr),
        "{what}: exit {:?}\n--- stdout\n{}\n--- stderr\n{stderr}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout)
    );
}

fn ok(_: &str) -> bool {
    true
}

/// Wall time and peak resident memory (KiB) of one run, output discarded.
fn measure(mut cmd: Command) -> (Duration, i64) {
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let start = Instant::now();
    // Reaped below by wait4, which also reports its peak memory.
    #[allow(clippy::zombie_processes)]
    let child = cmd.spawn().expect("spawn");
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; its Child handle is never waited on again.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let elapsed = start.elapsed();
    assert!(
        pid > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "a measured run failed (status {status})"
    );
    (elapsed, usage.ru_maxrss)
}

/// Median of `n` measurements.
fn median(n: usize, mut f: impl FnMut() -> Duration) -> Duration {
    let mut v: Vec<Duration> = (0..n).map(|_| f()).collect();
    v.sort();
    v[n / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Turns the release's one real revision into `revisions` revisions (all superseded but the
/// last), as a long-lived release has them, written directly to the server.
fn grow_history(ctx: &Ctx, ns: &str, release: &str, revisions: u64) {
    grow_history_sized(ctx, ns, release, revisions, 0)
}

/// Text of `len` characters that gzip cannot shrink much (a manifest of that size makes a
/// record near its encoded size).
fn incompressible(len: usize, seed: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x = seed | 1;
    (0..len)
        .map(|i| {
            if i % 77 == 76 {
                return '\n';
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % 64) as usize] as char
        })
        .collect()
}

/// [`grow_history`], every revision's manifest padded with `pad` incompressible bytes (a
/// large record: `pad` near 900 KB makes each Secret near 1 MiB).
fn grow_history_sized(ctx: &Ctx, ns: &str, release: &str, revisions: u64, pad: usize) {
    let first = ctx
        .server
        .get("secrets", ns, &format!("sh.helm.release.v1.{release}.v1"))
        .expect("revision 1");
    let wire = first["data"]["release"].as_str().expect("release data");
    let once = base64::engine::general_purpose::STANDARD
        .decode(wire)
        .expect("base64");
    let mut rel = decode_release_json(&once).expect("decode");
    if pad > 0 {
        let manifest = rel["manifest"].as_str().unwrap_or_default().to_string();
        rel["manifest"] = json!(format!("{manifest}\n# padding\n{}", incompressible(pad, 7)));
    }
    // Revision 1 stays as helm wrote it (unless padded); the rest are new objects.
    for rev in 2..=revisions {
        let status = if rev == revisions {
            "deployed"
        } else {
            "superseded"
        };
        let mut r = rel.clone();
        r["version"] = json!(rev);
        set_release_status(&mut r, status).expect("status");
        ctx.server
            .create("secrets", record(ns, release, rev, status, &r));
    }
    if revisions > 1 || pad > 0 {
        let mut r = rel.clone();
        set_release_status(&mut r, "superseded").expect("status");
        let obj = record(ns, release, 1, "superseded", &r);
        match &ctx.server {
            Server::Real(c) => {
                c.put_object("secrets", obj);
            }
            Server::StandIn(s) => {
                s.put_object("secrets", obj);
            }
        }
    }
}

fn record(ns: &str, release: &str, rev: u64, status: &str, rel: &Value) -> Value {
    let encoded = encode_release_json(rel).expect("encode");
    let wire = base64::engine::general_purpose::STANDARD.encode(encoded.as_bytes());
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": "helm.sh/release.v1",
        "metadata": {
            "name": format!("sh.helm.release.v1.{release}.v{rev}"), "namespace": ns,
            "labels": { "name": release, "owner": "helm", "status": status,
                        "version": rev.to_string() }
        },
        "data": { "release": wire }
    })
}

struct Row {
    #[allow(dead_code)]
    server: &'static str,
    helm: &'static str,
    what: String,
    ours: String,
    theirs: String,
    ratio: f64,
    goal: String,
    /// What the guard cannot avoid for this measurement, and its ratio to the same baseline.
    floor: Option<(String, f64)>,
}

#[allow(clippy::too_many_arguments)]
fn row(
    ctx: &Ctx,
    what: String,
    ours: String,
    theirs: String,
    ratio: f64,
    goal: &str,
    floor: Option<(String, f64)>,
) -> Row {
    let r = Row {
        server: ctx.server.name(),
        helm: ctx.helm_label,
        what,
        ours,
        theirs,
        ratio,
        goal: goal.to_string(),
        floor,
    };
    let floor = match &r.floor {
        Some((what, ratio)) => format!("{what}: {ratio:.3}"),
        None => "-".into(),
    };
    println!(
        "| {} | {} | {} | {} | {} | {:.3} | {} | {} | {} |",
        r.server,
        r.helm,
        r.what,
        r.ours,
        r.theirs,
        r.ratio,
        r.goal,
        verdict(r.ratio, &r.goal, r.floor.as_ref().map(|f| f.1)),
        floor
    );
    r
}

/// `met` or `missed`: the ratio against the goal's number (`≤ 0.1, flat` → 0.1); a miss
/// whose floor alone is over the goal says so.
fn verdict(ratio: f64, goal: &str, floor: Option<f64>) -> &'static str {
    let limit: f64 = goal
        .trim_start_matches('≤')
        .trim()
        .split(|c: char| c == ',' || c.is_whitespace())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(f64::NAN);
    match floor {
        _ if ratio <= limit => "met",
        Some(f) if f > limit => "missed (the floor is over the goal)",
        _ => "missed",
    }
}

/// Manifest padding for the large-record curve: each record's Secret near 1 MiB.
const LARGE_PAD: usize = 880_000;

/// `check` vs `helm status -o json` as history grows (`pad`: large records, see
/// [`grow_history_sized`]). Returns the curve.
fn history_curve(ctx: &Ctx, rows: &mut Vec<Row>, pad: usize) -> Vec<(f64, f64, f64)> {
    let sizes: &[u64] = if ctx.smoke {
        &[10]
    } else if ctx.quick || pad > 0 {
        &[10, 100]
    } else {
        &[10, 100, 1000]
    };
    let size = if pad > 0 { ", records near 1 MiB" } else { "" };
    let mut curve = Vec::new();
    for &revs in sizes {
        let ns = if pad > 0 {
            format!("hist-large-{revs}")
        } else {
            format!("hist-{revs}")
        };
        ctx.server.create_namespace(&ns);
        run(
            ctx.helm(&[
                "upgrade",
                "--install",
                "rel",
                &ctx.chart("1.0.0"),
                "-n",
                &ns,
            ]),
            "install",
            ok,
        );
        grow_history_sized(ctx, &ns, "rel", revs, pad);
        let target = ctx.chart("1.1.0");
        let check = ["check", "rel", target.as_str(), "-n", ns.as_str()];
        let status = ["status", "rel", "-n", ns.as_str(), "-o", "json"];
        run(ctx.guard(&check), "check", |e| {
            e.is_empty() || !e.contains("error")
        });
        ctx.server.take_requests();
        let n = ctx.runs(5);
        let ours = median(n, || measure(ctx.guard(&check)).0);
        let (our_req, _) = ctx.server.take_requests();
        let theirs = median(n, || measure(ctx.helm(&status)).0);
        let (their_req, _) = ctx.server.take_requests();
        let fixed = ctx.fixed_cost(&ns);
        curve.push((revs as f64, ms(ours), ms(theirs)));
        if pad > 0 {
            // Large records out again: later measurements (`helm list -A`) and the test bed's
            // reset (one list of the namespace) must not carry them.
            for rev in 1..=revs {
                let name = format!("sh.helm.release.v1.rel.v{rev}");
                match &ctx.server {
                    Server::Real(c) => {
                        c.delete_object("secrets", Some(&ns), &name);
                    }
                    Server::StandIn(s) => {
                        s.delete_object("secrets", Some(&ns), &name);
                    }
                }
            }
        }
        rows.push(row(
            ctx,
            format!("`check` vs `helm status -o json`, {revs} revisions{size}"),
            format!("{:.1} ms ({} req)", ms(ours), our_req / n),
            format!("{:.1} ms ({} req)", ms(theirs), their_req / n),
            ours.as_secs_f64() / theirs.as_secs_f64(),
            "≤ 0.1, flat",
            Some((
                format!(
                    "{:.1} ms (process, TLS handshake, the list; `locks -n`)",
                    ms(fixed)
                ),
                fixed.as_secs_f64() / theirs.as_secs_f64(),
            )),
        ));
    }
    curve
}

/// An `upgrade --install` that upgrades vs a plain `helm upgrade --install` that upgrades.
fn upgrades(ctx: &Ctx, rows: &mut Vec<Row>) -> Duration {
    let ns = "up";
    ctx.server.create_namespace(ns);
    run(
        ctx.helm(&["upgrade", "--install", "rel", &ctx.chart("2.0.0"), "-n", ns]),
        "install",
        ok,
    );
    let n = ctx.runs(if ctx.quick { 3 } else { 5 });
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    ctx.server.take_requests();
    let (mut our_req, mut their_req) = ((0, 0), (0, 0));
    for i in 0..n {
        // Alternate so both see the same server state and history length.
        let a = ctx.chart(&format!("2.0.{}", 2 * i + 1));
        let b = ctx.chart(&format!("2.0.{}", 2 * i + 2));
        ours.push(measure(ctx.guard(&["upgrade", "--install", "rel", &a, "-n", ns])).0);
        let r = ctx.server.take_requests();
        our_req = (our_req.0 + r.0, our_req.1 + r.1);
        theirs.push(measure(ctx.helm(&["upgrade", "--install", "rel", &b, "-n", ns])).0);
        let r = ctx.server.take_requests();
        their_req = (their_req.0 + r.0, their_req.1 + r.1);
    }
    ours.sort();
    theirs.sort();
    let (o, t) = (ours[n / 2], theirs[n / 2]);
    let fixed = ctx.fixed_cost(ns);
    rows.push(row(
        ctx,
        "`upgrade --install` that upgrades vs `helm upgrade --install`".into(),
        format!(
            "{:.1} ms ({} req, {} writes)",
            ms(o),
            our_req.0 / n,
            our_req.1 / n
        ),
        format!(
            "{:.1} ms ({} req, {} writes)",
            ms(t),
            their_req.0 / n,
            their_req.1 / n
        ),
        o.as_secs_f64() / t.as_secs_f64(),
        "≤ 1.05",
        Some((
            format!(
                "helm + {:.1} ms (process, TLS handshake, a list; then the Lease writes)",
                ms(fixed)
            ),
            (t + fixed).as_secs_f64() / t.as_secs_f64(),
        )),
    ));
    t
}

/// `newer-or-changed` on an unchanged release vs the `helm upgrade --install` it saves.
fn unchanged(ctx: &Ctx, rows: &mut Vec<Row>) {
    let chart = testbed::chart("tagged", "0.1.0")
        .to_string_lossy()
        .into_owned();
    let values = ["--set", "message=bench", "--set", "image.tag=1.2.3"];
    let sizes: &[u64] = if ctx.smoke { &[100] } else { &[10, 100] };
    for &revs in sizes {
        let ns = format!("same-{revs}");
        ctx.server.create_namespace(&ns);
        let mut install = vec![
            "upgrade",
            "--install",
            "rel",
            chart.as_str(),
            "-n",
            ns.as_str(),
        ];
        install.extend(values);
        run(ctx.helm(&install), "install", ok);
        grow_history(ctx, &ns, "rel", revs);
        let mut guard = vec![
            "upgrade",
            "--install",
            "rel",
            chart.as_str(),
            "-n",
            ns.as_str(),
            "--min-version-policy",
            "newer-or-changed",
        ];
        guard.extend(values);
        run(ctx.guard(&guard), "unchanged", |e| {
            e.contains("is unchanged")
        });
        ctx.server.take_requests();
        let n = ctx.runs(3);
        let ours = median(n, || measure(ctx.guard(&guard)).0);
        let (our_req, our_w) = ctx.server.take_requests();
        // helm would prune to 10 revisions by default; keep the history as measured.
        let mut plain = install.clone();
        plain.extend(["--history-max", "0"]);
        let theirs = median(n, || measure(ctx.helm(&plain)).0);
        let (their_req, their_w) = ctx.server.take_requests();
        // The floor: helm's own dry run as the guard asks it (history from helm's memory
        // driver, here none), plus the guard's fixed cost.
        let mut dry = install.clone();
        dry.extend(["--dry-run=server", "-o", "json"]);
        let no_history = ctx.home.path().join("no-history.json");
        std::fs::write(&no_history, "[]").expect("write no-history.json");
        let dry_run = median(n, || {
            let mut cmd = ctx.helm(&dry);
            cmd.env("HELM_DRIVER", "memory")
                .env("HELM_MEMORY_DRIVER_DATA", &no_history);
            measure(cmd).0
        });
        ctx.server.take_requests();
        let fixed = ctx.fixed_cost(&ns);
        rows.push(row(
            ctx,
            format!("`newer-or-changed`, unchanged, {revs} revisions, vs the upgrade it saves"),
            format!(
                "{:.1} ms ({} req, {} writes)",
                ms(ours),
                our_req / n,
                our_w / n
            ),
            format!(
                "{:.1} ms ({} req, {} writes)",
                ms(theirs),
                their_req / n,
                their_w / n
            ),
            ours.as_secs_f64() / theirs.as_secs_f64(),
            if revs == 10 { "≤ 0.5" } else { "≤ 0.2" },
            Some((
                format!(
                    "helm's dry run {:.1} ms + {:.1} ms (process, TLS handshake, the list)",
                    ms(dry_run),
                    ms(fixed)
                ),
                (dry_run + fixed).as_secs_f64() / theirs.as_secs_f64(),
            )),
        ));
    }
}

/// `locks -A` and `status` among many releases vs `helm list -A`, with peak memory.
fn many_releases(ctx: &Ctx, rows: &mut Vec<Row>) {
    let (namespaces, per_ns) = if ctx.smoke {
        (2, 5)
    } else if ctx.quick {
        (5, 20)
    } else {
        (50, 20)
    };
    // One real record as the template of all.
    ctx.server.create_namespace("many-0");
    run(
        ctx.helm(&[
            "upgrade",
            "--install",
            "r0",
            &ctx.chart("1.0.0"),
            "-n",
            "many-0",
        ]),
        "install",
        ok,
    );
    let first = ctx
        .server
        .get("secrets", "many-0", "sh.helm.release.v1.r0.v1")
        .expect("r0");
    let once = base64::engine::general_purpose::STANDARD
        .decode(first["data"]["release"].as_str().expect("data"))
        .expect("base64");
    let template = decode_release_json(&once).expect("decode");
    let mut memory = Vec::new();
    let mut created = 1;
    let first = (namespaces / 10).max(1);
    for (step, upto) in [(0, first), (1, namespaces)] {
        let from = if step == 0 { 0 } else { first };
        for n in from..upto {
            let ns = format!("many-{n}");
            ctx.server.create_namespace(&ns);
            for i in 0..per_ns {
                let name = format!("r{i}");
                if n == 0 && i == 0 {
                    continue;
                }
                let mut r = template.clone();
                r["name"] = json!(name);
                r["namespace"] = json!(ns);
                ctx.server
                    .create("secrets", record(&ns, &name, 1, "deployed", &r));
                created += 1;
            }
        }
        // A few locked releases, so `locks -A` has something to print.
        run(
            ctx.guard(&[
                "lock",
                "r1",
                "-n",
                &format!("many-{}", upto - 1),
                "--reason",
                "bench",
            ]),
            "lock",
            ok,
        );
        ctx.server.take_requests();
        let n = ctx.runs(3);
        let mut peak = 0;
        let ours = median(n, || {
            let (t, rss) = measure(ctx.guard(&["locks", "-A"]));
            peak = peak.max(rss);
            t
        });
        let (our_req, _) = ctx.server.take_requests();
        let mut status_peak = 0;
        let status = median(n, || {
            let (t, rss) = measure(ctx.guard(&["status", "r1", "-n", "many-0"]));
            status_peak = status_peak.max(rss);
            t
        });
        ctx.server.take_requests();
        let mut their_peak = 0;
        let theirs = median(n, || {
            let (t, rss) = measure(ctx.helm(&["list", "-A", "--max", "0"]));
            their_peak = their_peak.max(rss);
            t
        });
        let (their_req, _) = ctx.server.take_requests();
        // The fixed part: the same process reading one namespace with no release.
        ctx.server.create_namespace("many-empty");
        let fixed = ctx.fixed_cost("many-empty");
        memory.push((created, peak, their_peak));
        rows.push(row(
            ctx,
            format!("`locks -A` vs `helm list -A`, {created} releases in {upto} namespaces"),
            format!(
                "{:.1} ms ({} req), {} MiB peak",
                ms(ours),
                our_req / n,
                peak / 1024
            ),
            format!(
                "{:.1} ms ({} req), {} MiB peak",
                ms(theirs),
                their_req / n,
                their_peak / 1024
            ),
            ours.as_secs_f64() / theirs.as_secs_f64(),
            "≤ 0.2, memory flat",
            Some((
                format!(
                    "{:.1} ms (process, TLS handshake, an empty list) + the server's list",
                    ms(fixed)
                ),
                fixed.as_secs_f64() / theirs.as_secs_f64(),
            )),
        ));
        rows.push(row(
            ctx,
            format!("`status` vs `helm list -A`, {created} releases"),
            format!("{:.1} ms, {} MiB peak", ms(status), status_peak / 1024),
            format!("{:.1} ms", ms(theirs)),
            status.as_secs_f64() / theirs.as_secs_f64(),
            "≤ 0.2",
            None,
        ));
    }
}

/// One pipeline's bar, split into phases from the times its stderr lines arrived: deciding
/// (start to the first `waiting:` line or the decision), waiting for the mutex (to the
/// decision line or the note that ends a skipping waiter), helm running (from the
/// `upgrade:` line to the process's end).
type Phases = Vec<svg::Phase>;

fn phases(began: f64, lines: &[(f64, String)], ended: f64) -> (Phases, bool) {
    let at = |pred: &dyn Fn(&str) -> bool| lines.iter().find(|(_, l)| pred(l)).map(|(t, _)| *t);
    let waiting = at(&|l| l.starts_with("waiting: "));
    let decided = at(&|l| {
        l.starts_with("upgrade:")
            || l.starts_with("install:")
            || l.starts_with("skip:")
            || l.starts_with("note: release ")
    })
    .unwrap_or(ended);
    let upgraded = lines
        .iter()
        .any(|(_, l)| l.starts_with("upgrade:") || l.starts_with("install:"));
    let mut out = Vec::new();
    let first_end = waiting.unwrap_or(decided).min(decided);
    out.push((began, first_end, "deciding".to_string()));
    if let Some(w) = waiting.filter(|w| *w < decided) {
        out.push((w, decided, "waiting for the mutex".to_string()));
    }
    if upgraded {
        out.push((decided, ended, "helm running".to_string()));
    } else {
        out.push((decided, ended, "deciding".to_string()));
    }
    (out, upgraded)
}

/// Eight pipelines on one release (newer, equal and older targets) launched at once, and
/// 50 pipelines on 50 releases launched at once vs 50 plain helm runs launched at once.
fn concurrency(ctx: &Ctx, rows: &mut Vec<Row>, one_upgrade: Duration) -> Vec<(String, Phases)> {
    let ns = "conc";
    ctx.server.create_namespace(ns);
    run(
        ctx.helm(&["upgrade", "--install", "rel", &ctx.chart("3.0.0"), "-n", ns]),
        "install",
        ok,
    );
    let targets = [
        "3.0.1", "3.0.3", "3.0.2", "3.0.3", "3.0.0", "3.0.4", "3.0.2", "3.0.4",
    ];
    let charts: Vec<String> = targets.iter().map(|v| ctx.chart(v)).collect();
    let start = Instant::now();
    let children: Vec<_> = charts
        .iter()
        .map(|c| {
            let mut cmd = ctx.guard(&[
                "upgrade",
                "--install",
                "rel",
                c,
                "-n",
                ns,
                "--mutex-timeout",
                "5m",
            ]);
            cmd.stdout(Stdio::null()).stderr(Stdio::piped());
            let began = start.elapsed().as_secs_f64();
            let mut child = cmd.spawn().expect("spawn");
            let stderr = child.stderr.take().expect("stderr");
            // Each line with the time it arrived; the end is when stderr closes (exit).
            let reader = std::thread::spawn(move || {
                use std::io::BufRead;
                let mut lines = Vec::new();
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    lines.push((start.elapsed().as_secs_f64(), line));
                }
                (lines, start.elapsed().as_secs_f64())
            });
            (began, child, reader)
        })
        .collect();
    let mut bars = Vec::new();
    let mut upgrades = 0;
    // The floor: the upgrades themselves, as long as helm ran in this run (under the
    // contention of the other pipelines), end to end.
    let mut helm_running = 0.0;
    for ((began, mut child, reader), target) in children.into_iter().zip(targets) {
        let status = child.wait().expect("wait");
        let (lines, ended) = reader.join().expect("reader");
        let text: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
        assert!(status.success(), "pipeline {target}: {}", text.join("\n"));
        let (bar, upgraded) = phases(began, &lines, ended);
        if upgraded {
            upgrades += 1;
            helm_running += bar
                .iter()
                .filter(|(_, _, what)| what == "helm running")
                .map(|(from, to, _)| to - from)
                .sum::<f64>();
        }
        let outcome = if upgraded { "upgrade" } else { "skip" };
        bars.push((format!("{target} ({outcome})"), bar));
    }
    let total = start.elapsed();
    let budget = one_upgrade.mul_f64(upgrades as f64 * 1.1);
    rows.push(row(
        ctx,
        format!("8 pipelines on one release: {upgrades} upgrades performed, all done"),
        format!("{:.1} ms", ms(total)),
        format!(
            "{upgrades} × {:.1} ms + 10% = {:.1} ms",
            ms(one_upgrade),
            ms(budget)
        ),
        total.as_secs_f64() / budget.as_secs_f64(),
        "≤ 1.0",
        Some((
            format!(
                "the {upgrades} upgrades' helm runs, one after the other: {:.1} ms",
                helm_running * 1000.0
            ),
            helm_running / budget.as_secs_f64(),
        )),
    ));

    let count = if ctx.smoke {
        4
    } else if ctx.quick {
        10
    } else {
        50
    };
    let launch = |guarded: bool, round: usize| {
        let start = Instant::now();
        let children: Vec<_> = (0..count)
            .map(|i| {
                let ns = format!("fifty-{i}");
                let rel = format!("r{round}");
                let chart = ctx.chart("1.0.0");
                let args = [
                    "upgrade",
                    "--install",
                    rel.as_str(),
                    chart.as_str(),
                    "-n",
                    ns.as_str(),
                ];
                let mut cmd = if guarded {
                    ctx.guard(&args)
                } else {
                    ctx.helm(&args)
                };
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
                cmd.spawn().expect("spawn")
            })
            .collect();
        for mut c in children {
            assert!(
                c.wait().expect("wait").success(),
                "a parallel install failed"
            );
        }
        start.elapsed()
    };
    for i in 0..count {
        ctx.server.create_namespace(&format!("fifty-{i}"));
    }
    let theirs = launch(false, 0);
    let ours = launch(true, 1);
    rows.push(row(
        ctx,
        format!("{count} pipelines on {count} releases launched at once"),
        format!("{:.1} ms", ms(ours)),
        format!("{:.1} ms", ms(theirs)),
        ours.as_secs_f64() / theirs.as_secs_f64(),
        "≤ 1.1",
        None,
    ));
    bars
}

fn main() {
    // `cargo test --benches` runs benches once in test mode; keep that instant.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let quick = std::env::var("GU_BENCH_QUICK").as_deref() == Ok("1");
    let smoke = std::env::var("GU_BENCH_SMOKE").as_deref() == Ok("1");
    // One API server, etcd with fsync: realistic write costs.
    if std::env::var_os("GU_KUBE_SERVERS").is_none() {
        std::env::set_var("GU_KUBE_SERVERS", "1");
    }
    if std::env::var_os("GU_KUBE_FSYNC").is_none() {
        std::env::set_var("GU_KUBE_FSYNC", "1");
    }
    // A smoke run's figures mean nothing: its charts never replace the documented ones.
    let smoke_dir = tempfile::tempdir().expect("tempdir");
    let out_dir = if smoke {
        smoke_dir.path().to_path_buf()
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/perf")
    };
    std::fs::create_dir_all(&out_dir).expect("docs/perf");
    println!(
        "| server | helm | measurement | guarded-upgrade | helm | ratio | goal | target | floor: \
         what the guard cannot avoid, and its ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    let mut curves = Vec::new();
    let mut helms = vec![
        ("3.21.4", testbed::helm_newest3()),
        ("4.3.2", testbed::helm_newest4()),
    ];
    if smoke {
        // One helm; helm 3, whose `status` reads the large records (see below).
        helms.truncate(1);
    }
    // The stand-in rows are for comparison only (writes cost nothing there): opt in.
    let servers: &[bool] = if std::env::var("GU_BENCH_STANDIN").as_deref() == Ok("1") {
        &[true, false]
    } else {
        &[true]
    };
    let mut large_curves = Vec::new();
    for &real in servers {
        for (label, bin) in &helms {
            let server = if real {
                Server::Real(kube_testbed::cluster())
            } else {
                Server::StandIn(StandIn::start().expect("stand-in"))
            };
            let ctx = Ctx {
                server,
                home: tempfile::tempdir().expect("tempdir"),
                helm: bin.clone(),
                helm_label: label,
                quick,
                smoke,
            };
            let curve = history_curve(&ctx, &mut rows, 0);
            curves.push((format!("{} helm {label}", ctx.server.name()), curve));
            // helm 4.3.2's `helm status -o json` exited 1 on these records (not examined
            // yet): the large-record curve is measured with helm 3.21.4.
            if real && label.starts_with('3') {
                let curve = history_curve(&ctx, &mut rows, LARGE_PAD);
                large_curves.push((format!("helm {label}, records near 1 MiB"), curve));
            }
            let one = upgrades(&ctx, &mut rows);
            unchanged(&ctx, &mut rows);
            many_releases(&ctx, &mut rows);
            if real {
                let bars = concurrency(&ctx, &mut rows, one);
                let chart = svg::timeline(
                    &format!(
                        "8 pipelines on one release, helm {label}, kube-apiserver (hand-over by \
                         watch)"
                    ),
                    "seconds since launch",
                    &bars,
                );
                std::fs::write(
                    out_dir.join(format!("pipelines-helm{}.svg", &label[..1])),
                    chart,
                )
                .expect("write svg");
            }
        }
    }
    let mut series = Vec::new();
    for (name, curve) in &curves {
        series.push((
            format!("check, {name}"),
            curve.iter().map(|c| (c.0, c.1)).collect(),
        ));
        series.push((
            format!("helm status, {name}"),
            curve.iter().map(|c| (c.0, c.2)).collect(),
        ));
    }
    let real_only: Vec<_> = series
        .iter()
        .filter(|(n, _)| n.contains("kube-apiserver"))
        .cloned()
        .collect();
    let mut large = Vec::new();
    for (name, curve) in &large_curves {
        large.push((
            format!("check, {name}"),
            curve.iter().map(|c| (c.0, c.1)).collect(),
        ));
        large.push((
            format!("helm status, {name}"),
            curve.iter().map(|c| (c.0, c.2)).collect(),
        ));
    }
    std::fs::write(
        out_dir.join("history-large.svg"),
        svg::line_chart(
            "check vs helm status, records near 1 MiB (kube-apiserver)",
            "revisions",
            "milliseconds",
            &large,
        ),
    )
    .expect("write svg");
    std::fs::write(
        out_dir.join("history.svg"),
        svg::line_chart(
            "check vs helm status as history grows (kube-apiserver)",
            "revisions",
            "milliseconds",
            &real_only,
        ),
    )
    .expect("write svg");
    println!(
        "\n{} measurements; charts in {}",
        rows.len(),
        out_dir.display()
    );
}
