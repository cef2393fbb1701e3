//! End to end, real API server only: what only a real server shows. Label syntax and
//! length are validated there, Secrets are limited to 1 MiB, lists are paged with
//! `limit`/`continue`, Lease times are MicroTime, and a conflicting write gets its 409.

use std::io::Write;

use crate::common::{bed, chart, with_interposer, Bed, Run};
use serde_json::{json, Value};

const NS: &str = "shared";

fn setup(label: &str) -> Bed {
    let b = bed(label);
    b.api.create_namespace(NS);
    b.guard(&["upgrade", "--install", "db", &chart("demo-1.0.0"), "-n", NS])
        .expect_code(0, "install");
    b
}

fn status(b: &Bed) -> Value {
    let run = b.guard(&["status", "db", "-n", NS, "-o", "json"]);
    run.expect_code(0, "status -o json");
    serde_json::from_str(run.stdout.trim()).expect("status json")
}

fn record(name: &str, rev: u64) -> String {
    format!("sh.helm.release.v1.{name}.v{rev}")
}

/// The longest reason, `--by` and pin the tool accepts (256 bytes, not label values) are
/// stored by the real server, which validates every label, and read back whole; one
/// byte more is refused by the tool before anything is written.
fn longest_lock_texts_are_stored(label: &str) {
    let b = setup(label);
    let text = |seed: &str| -> String {
        let mut t = String::new();
        while t.len() < 256 {
            t.push_str(seed);
        }
        while t.len() > 256 {
            t.pop();
        }
        t
    };
    let reason = text("Freeze — \"close\" <db> ");
    let by = text("Ops Team <ops@example.com>; ");
    let mut pin = String::from("1.0.0");
    let mut n = 1;
    while pin.len() + format!(" || 1.0.{n}").len() <= 256 {
        pin.push_str(&format!(" || 1.0.{n}"));
        n += 1;
    }
    for t in [&reason, &by] {
        assert_eq!(t.len(), 256, "{t:?}");
    }
    assert!(pin.len() > 250, "{pin:?}");
    b.guard(&[
        "lock", "db", "-n", NS, "--reason", &reason, "--by", &by, "--pin", &pin,
    ])
    .expect_code(0, "the longest lock");
    let s = status(&b);
    assert_eq!(s["lock"]["reason"], reason.as_str(), "{s}");
    assert_eq!(s["lock"]["by"], by.as_str(), "{s}");
    assert_eq!(s["lock"]["pin"], pin.as_str(), "{s}");
    let labels =
        b.api.get("secrets", Some(NS), &record("db", 1)).unwrap()["metadata"]["labels"].clone();
    let ours = labels
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("guarded-upgrade.io/"))
        .count();
    assert!(ours > 10, "split over many labels: {labels}");
    // Helm carries them on a plain upgrade (the server validated them once more).
    b.helm(&["upgrade", "db", &chart("demo-1.0.0"), "-n", NS])
        .expect_code(0, "plain upgrade");
    assert_eq!(status(&b)["lock"]["by"], by.as_str());
    let long = format!("{reason}x");
    let run = b.guard(&["lock", "db", "-n", NS, "--reason", &long]);
    run.expect_code(2, "257 bytes");
    assert_eq!(status(&b)["lock"]["reason"], reason.as_str());
}

/// Random printable text that gzip cannot shrink much.
fn incompressible(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut seed = 0x2545_f491_4f6c_dd1d_u64 ^ u64::from(std::process::id());
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ALPHABET[(seed % 64) as usize] as char
        })
        .collect()
}

/// The size in bytes of a record's `data.release` as the server stores it.
fn payload_size(b: &Bed, name: &str) -> usize {
    let s = b.api.get("secrets", Some(NS), name).expect("record");
    let text = s["data"]["release"].as_str().expect("data.release");
    text.len() / 4 * 3
}

/// A release record close to the 1 MiB Secret limit can be hard-locked (its payload
/// re-encoded and written back) and unlocked, and helm reads it throughout.
fn record_near_the_size_limit(label: &str) {
    let b = bed(label);
    b.api.create_namespace(NS);
    let values = b.home().join("big.yaml");
    let mut f = std::fs::File::create(&values).unwrap();
    writeln!(f, "blob: {}", incompressible(1_000_000)).unwrap();
    drop(f);
    b.guard(&[
        "upgrade",
        "--install",
        "db",
        &chart("demo-1.0.0"),
        "-n",
        NS,
        "-f",
        values.to_str().unwrap(),
    ])
    .expect_code(0, "install a big release");
    let size = payload_size(&b, &record("db", 1));
    assert!(
        (950_000..1_048_576).contains(&size),
        "record payload {size} bytes, wanted close to 1 MiB"
    );
    b.guard(&["lock", "db", "-n", NS, "--hard", "--reason", "big"])
        .expect_code(0, "hard lock a big record");
    let locked = payload_size(&b, &record("db", 1));
    assert!(locked > 950_000, "{locked}");
    let run = b.helm(&["status", "db", "-n", NS]);
    run.expect_code(0, "helm status");
    assert!(run.stdout.contains("pending-upgrade"), "{}", run.stdout);
    b.guard(&["unlock", "db", "-n", NS])
        .expect_code(0, "unlock a big record")
        .assert_stderr(&[r#"unlocked: release "db" in "shared""#]);
    assert_eq!(b.history("db", NS)[0]["status"], "deployed");
    // Re-encoded by guarded-upgrade (gzip at best compression, like helm, but not
    // byte-identical to Go's compressor): within 1 % of helm's own size.
    let after = payload_size(&b, &record("db", 1));
    assert!(after.abs_diff(size) * 100 < size, "{size} -> {after}");
}

/// `locks -A` over 1,050 release records in 50 namespaces reads them in pages
/// (`limit=500`, then `continue`), as the audit log shows, and lists every lock.
fn locks_pages_through_many_records(label: &str) {
    let b = setup(label);
    b.guard(&["lock", "db", "-n", NS, "--reason", "frozen", "--by", "ops"])
        .expect_code(0, "lock");
    let mut template = b.api.get("secrets", Some(NS), &record("db", 1)).unwrap();
    for key in [
        "resourceVersion",
        "uid",
        "creationTimestamp",
        "managedFields",
    ] {
        template["metadata"].as_object_mut().unwrap().remove(key);
    }
    let (namespaces, per_ns) = (50, 21);
    std::thread::scope(|scope| {
        for n in 0..namespaces {
            let (b, template) = (&b, &template);
            scope.spawn(move || {
                let ns = format!("team-{n:02}");
                b.api.create_namespace(&ns);
                for r in 0..per_ns {
                    let rel = format!("app{r:02}");
                    let mut obj = template.clone();
                    obj["metadata"]["name"] = json!(record(&rel, 1));
                    obj["metadata"]["namespace"] = json!(ns);
                    obj["metadata"]["labels"]["name"] = json!(rel);
                    b.api.put_object("secrets", obj);
                }
            });
        }
    });
    let total = namespaces * per_ns + 1;
    b.api.clear_requests();
    let run = b.guard(&["locks", "-A", "-o", "json"]);
    run.expect_code(0, "locks -A");
    let rows: Vec<Value> = serde_json::from_str(run.stdout.trim()).expect("json");
    assert_eq!(rows.len(), total);
    assert!(rows
        .iter()
        .all(|r| r["reason"] == "frozen" && r["by"] == "ops"));
    let lists: Vec<String> = b
        .api
        .requests()
        .into_iter()
        .filter(|r| r.verb == "list" && r.path == "/api/v1/secrets")
        .map(|r| r.query)
        .collect();
    assert_eq!(lists.len(), total.div_ceil(500), "{lists:#?}");
    assert!(lists.iter().all(|q| q.contains("limit=500")), "{lists:#?}");
    assert!(!lists[0].contains("continue="), "{lists:#?}");
    assert!(
        lists[1..].iter().all(|q| q.contains("continue=")),
        "{lists:#?}"
    );
}

fn is_micro_time(v: &Value) -> bool {
    let s = v.as_str().unwrap_or_default();
    let b = s.as_bytes();
    s.len() == 27
        && b[19] == b'.'
        && b[26] == b'Z'
        && b[20..26].iter().all(u8::is_ascii_digit)
        && s.parse::<jiff::Timestamp>().is_ok()
}

/// Lease times in the server's MicroTime format: the tool reads a Lease kubectl wrote
/// (holder, times with microseconds) and the Lease it writes is accepted and reads back
/// with microsecond times.
fn lease_times_round_trip(label: &str) {
    let b = setup(label);
    let lease = b
        .api
        .get("leases", Some(NS), "helm-lock-db")
        .expect("lease");
    for field in ["acquireTime", "renewTime"] {
        assert!(is_micro_time(&lease["spec"][field]), "{field}: {lease}");
    }
    // kubectl writes a live foreign holder with microsecond times.
    let now = jiff::Timestamp::now();
    let micro = |t: jiff::Timestamp| t.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string();
    let file = b.home().join("lease.json");
    let acquired = now - jiff::SignedDuration::from_secs(5);
    std::fs::write(
        &file,
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "helm-lock-db", "namespace": NS},
            "spec": {"holderIdentity": "kubectl-pipeline", "leaseDurationSeconds": 3600,
                     "acquireTime": micro(acquired), "renewTime": micro(now),
                     "leaseTransitions": 4}
        })
        .to_string(),
    )
    .unwrap();
    let out = b
        .command(kube_testbed::kubectl())
        .args(["replace", "-f", file.to_str().unwrap()])
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored = b.api.get("leases", Some(NS), "helm-lock-db").unwrap();
    assert_eq!(stored["spec"]["renewTime"], micro(now).as_str(), "{stored}");
    let s = status(&b);
    assert_eq!(s["mutex"]["holder"], "kubectl-pipeline", "{s}");
    let since = acquired.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    assert_eq!(s["mutex"]["since"], since.as_str(), "{s}");
    // An expired holder (renewed long ago, 1 s duration) is taken over; the tool's write
    // is accepted and keeps MicroTime.
    let mut old = stored.clone();
    old["spec"]["leaseDurationSeconds"] = json!(1);
    old["spec"]["renewTime"] = json!(micro(now - jiff::SignedDuration::from_secs(600)));
    b.api.put_object("leases", old);
    let run = b.guard(&["upgrade", "db", &chart("demo-1.1.0"), "-n", NS]);
    run.expect_code(0, "take over an expired Lease");
    let lease = b.api.get("leases", Some(NS), "helm-lock-db").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "", "released: {lease}");
    assert_eq!(lease["spec"]["leaseTransitions"], 5, "{lease}");
    for field in ["acquireTime", "renewTime"] {
        assert!(is_micro_time(&lease["spec"][field]), "{field}: {lease}");
    }
}

/// Someone creates the Lease between the tool's read and its create: the real server
/// answers 409, the tool says so, re-reads, finds it free and goes on. (`lock` takes the
/// mutex as `upgrade` does; helm, which speaks protobuf, is not run through the
/// interposer.)
fn lease_conflict_is_reread(label: &str) {
    let b = setup(label);
    b.api.delete_object("leases", Some(NS), "helm-lock-db");
    let created = std::sync::atomic::AtomicBool::new(false);
    let api = &b.api;
    let (run, seen): (Run, Vec<String>) = with_interposer(
        &b,
        |method, path| {
            if method == "POST"
                && path.starts_with(&format!(
                    "/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
                ))
                && !created.swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                api.put_object(
                    "leases",
                    json!({
                        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": "helm-lock-db", "namespace": NS},
                        "spec": {"holderIdentity": "", "leaseDurationSeconds": 1}
                    }),
                );
            }
        },
        |kc| {
            b.guard_env(
                &["lock", "db", "-n", NS, "--reason", "raced"],
                &[("KUBECONFIG", kc.to_str().unwrap())],
            )
        },
    );
    run.expect_code(0, "lock after a lost create race");
    assert!(
        seen.iter().any(|l| l
            .starts_with("POST /apis/coordination.k8s.io/v1/namespaces/shared/leases")
            && l.ends_with("-> 409")),
        "{seen:#?}"
    );
    let waiting: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("waiting: "))
        .collect();
    assert_eq!(waiting.len(), 1, "{}", run.stderr);
    assert!(
        waiting[0].starts_with(
            "waiting: mutex helm-lock-db for release \"db\" in \"shared\" was written by \
             someone else while creating the Lease (409 Conflict); re-reading in "
        ),
        "{}",
        run.stderr
    );
    assert_eq!(status(&b)["lock"]["reason"], "raced");
    let lease = b.api.get("leases", Some(NS), "helm-lock-db").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "", "released: {lease}");
}

crate::common::per_helm!(
    longest_lock_texts_are_stored,
    record_near_the_size_limit,
    locks_pages_through_many_records,
    lease_times_round_trip,
    lease_conflict_is_reread,
);
