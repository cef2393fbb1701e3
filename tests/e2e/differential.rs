//! The stand-in stays honest: the main flows (guarded-upgrade install, skip, downgrade
//! refused, upgrade, lock/unlock, hard lock, status, `locks -A`; plain helm install,
//! upgrade, history, rollback, uninstall) run against the real API server and against the
//! stand-in with the same helm binary (3.17.3 or 4.1.4), and the two are compared:
//!
//! - per command, the exit code and what it printed (server URLs and ages normalised);
//! - per command, request by request: method, normalised path and query, status code (the
//!   real server's audit log against the stand-in's request log). Helm fetches discovery
//!   documents concurrently, so requests are compared as a sorted list; the writes, which
//!   are sequential, also in order;
//! - after each command, the key structure (field names and JSON types, not values) of
//!   every object the flows store: release Secrets, the mutex Lease, the namespace and the
//!   chart's ConfigMap, Service and Deployment.
//!
//! Every difference is either fixed in the stand-in or listed in [`KNOWN`] (and in
//! docs/standin.md, "Differences from kube-apiserver", with why it does not matter); a new
//! difference fails the test.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::common::{bed, chart, Bed, Run};

const NS: &str = "diff";

/// A known difference: its id (named in docs/standin.md, "Differences from
/// kube-apiserver", which says why it does not matter) and substrings of the difference
/// lines it covers.
struct Known {
    id: &'static str,
    patterns: &'static [&'static str],
}

/// The allow-list. A difference no entry covers fails the test, and so does an entry that
/// covers nothing (the stand-in was fixed: remove the entry and its paragraph).
const KNOWN: &[Known] = &[
    // The stand-in serves no ValidatingAdmissionPolicy API (it has no admission at all), so
    // an enforced hard lock cannot exist there: `lock --hard` and `status` say the lock is
    // labels only because the API is not served, where the real server says the policy is
    // not installed. Enforcement is proven on the real server only (tests/e2e/enforce.rs).
    Known {
        id: "admission-policies",
        patterns: &[
            "stderr: only the real server: warning: the hard lock is not enforced by the cluster: the ValidatingAdmissionPolicy guarded-upgrade-hard-lock is not installed",
            "stderr: only the stand-in: warning: the hard lock is not enforced by the cluster: this API server does not serve ValidatingAdmissionPolicy",
            "stdout: only the real server: enforced labels only (not enforced by the cluster: the ValidatingAdmissionPolicy guarded-upgrade-hard-lock is not installed",
            "stdout: only the stand-in: enforced labels only (not enforced by the cluster: this API server does not serve ValidatingAdmissionPolicy",
            "request: only the real server: GET /apis/admissionregistration.k8s.io/v1 -> 200",
            "request: only the stand-in: GET /apis/admissionregistration.k8s.io/v1 -> 404",
        ],
    },
    // client-go asks for aggregated discovery; the stand-in answers the legacy documents
    // (without ETags), so helm fetches each group-version and gets 200 where the real
    // server answers 304 Not Modified from helm's discovery cache.
    Known {
        id: "discovery",
        patterns: &[
            "request: only the stand-in: GET /api?timeout=32s -> 200",
            "request: only the stand-in: GET /apis?timeout=32s -> 200",
            "request: only the real server: GET /api?timeout=32s -> 304",
            "request: only the real server: GET /apis?timeout=32s -> 304",
            "request: only the stand-in: GET /api/v1?timeout=32s -> 200",
            "request: only the stand-in: GET /apis/apps/v1?timeout=32s -> 200",
            "request: only the stand-in: GET /apis/batch/v1?timeout=32s -> 200",
            "request: only the stand-in: GET /apis/coordination.k8s.io/v1?timeout=32s -> 200",
            "request: only the stand-in: GET /apis/events.k8s.io/v1?timeout=32s -> 200",
            "request: only the stand-in: GET /apis/rbac.authorization.k8s.io/v1?timeout=32s -> 200",
        ],
    },
    // The real server's OpenAPI v3 documents are addressed by hash and cacheable (and its
    // index has an ETag), so helm's HTTP cache keeps them between runs; the stand-in's are
    // not cacheable, so helm fetches them again (and the index is 200, not 304).
    Known {
        id: "openapi-caching",
        patterns: &[
            "request: only the real server: GET /openapi/v3?timeout=32s -> 304",
            "request: only the stand-in: GET /openapi/v3?timeout=32s -> 200",
            "request: only the stand-in: GET /openapi/v3/api/v1?hash=*&timeout=32s -> 200",
            "request: only the stand-in: GET /openapi/v3/apis/apps/v1?hash=*&timeout=32s -> 200",
        ],
    },
    // The field sets inside managedFields: the stand-in derives them by field name, not
    // schema (no `.` entry for maps, `ports` keyed by containerPort alone, its own defaults
    // owned by the writer).
    Known {
        id: "managed-fields-sets",
        patterns: &[".metadata.managedFields[].fieldsV1."],
    },
    // The harness creates the namespace: on the real server with a POST (managedFields
    // recorded), in the stand-in directly in its store.
    Known {
        id: "harness-namespace",
        patterns: &["namespaces/diff: only the real server: .metadata.managedFields[]"],
    },
    // Type-aware defaulting of workload and Service specs (imagePullPolicy, dnsPolicy,
    // ipFamilies, ...), which the stand-in does not do.
    Known {
        id: "defaulting",
        patterns: &[
            "-app: only the real server: .spec.",
            "-svc: only the real server: .spec.",
        ],
    },
    // The stand-in's fake controller makes Deployments ready; no controller runs with the
    // real test server.
    Known {
        id: "deployment-status",
        patterns: &[
            "-app: only the stand-in: .status.",
            "-app: only the real server: .status: {}",
        ],
    },
];

/// One step of the flows: a program and its arguments (`demo-X.Y.Z` stands for the path
/// of that fixture chart).
#[derive(Clone, Copy)]
enum Step {
    Guard(&'static [&'static str]),
    Helm(&'static [&'static str]),
}

fn steps() -> Vec<(&'static str, Step)> {
    use Step::*;
    vec![
        (
            "install",
            Guard(&["upgrade", "--install", "db", "demo-1.0.0", "-n", NS]),
        ),
        (
            "skip (same version)",
            Guard(&["upgrade", "--install", "db", "demo-1.0.0", "-n", NS]),
        ),
        (
            "downgrade refused",
            Guard(&["upgrade", "--install", "db", "demo-0.9.0", "-n", NS]),
        ),
        (
            "upgrade",
            Guard(&["upgrade", "--install", "db", "demo-1.1.0", "-n", NS]),
        ),
        (
            "lock",
            Guard(&["lock", "db", "-n", NS, "--reason", "freeze", "--by", "ops"]),
        ),
        (
            "upgrade while locked",
            Guard(&["upgrade", "--install", "db", "demo-1.2.0", "-n", NS]),
        ),
        ("status", Guard(&["status", "db", "-n", NS])),
        ("locks -A", Guard(&["locks", "-A"])),
        ("unlock", Guard(&["unlock", "db", "-n", NS])),
        (
            "hard lock",
            Guard(&["lock", "db", "-n", NS, "--hard", "--reason", "incident"]),
        ),
        (
            "plain helm upgrade under a hard lock",
            Helm(&["upgrade", "db", "demo-1.2.0", "-n", NS]),
        ),
        ("status (hard)", Guard(&["status", "db", "-n", NS])),
        ("unlock (hard)", Guard(&["unlock", "db", "-n", NS])),
        (
            "upgrade after unlock",
            Guard(&["upgrade", "--install", "db", "demo-1.2.0", "-n", NS]),
        ),
        (
            "helm install",
            Helm(&["install", "app", "demo-1.0.0", "-n", NS]),
        ),
        (
            "helm upgrade",
            Helm(&["upgrade", "app", "demo-1.1.0", "-n", NS]),
        ),
        ("helm history", Helm(&["history", "app", "-n", NS])),
        ("helm rollback", Helm(&["rollback", "app", "1", "-n", NS])),
        ("helm list", Helm(&["list", "-n", NS])),
        ("helm uninstall", Helm(&["uninstall", "app", "-n", NS])),
    ]
}

/// What one side did for one step.
struct Observed {
    code: i32,
    stdout: String,
    stderr: String,
    /// Normalised `METHOD path?query -> status`, sorted.
    requests: Vec<String>,
    /// The writes, in order.
    writes: Vec<String>,
    /// `resource/name: key structure paths`.
    shapes: BTreeMap<String, BTreeSet<String>>,
}

fn run_step(b: &Bed, step: Step) -> Run {
    let with_charts = |args: &[&str]| -> Vec<String> {
        args.iter()
            .map(|a| {
                if a.starts_with("demo-") {
                    chart(a)
                } else {
                    a.to_string()
                }
            })
            .collect()
    };
    match step {
        Step::Guard(args) => {
            let args = with_charts(args);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            b.guard(&args)
        }
        Step::Helm(args) => {
            let args = with_charts(args);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            b.helm(&args)
        }
    }
}

/// Query parameters whose values are server state or time: their names are kept.
const VOLATILE_PARAMS: &[&str] = &["resourceVersion", "continue", "timeoutSeconds", "hash"];

fn normalise_query(query: &str) -> String {
    let mut params: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, _)) if VOLATILE_PARAMS.contains(&k) => format!("{k}=*"),
            _ => p.to_string(),
        })
        .collect();
    params.sort();
    params.join("&")
}

fn observe(b: &Bed, step: Step) -> Observed {
    b.api.clear_requests();
    let run = run_step(b, step);
    let records = b.api.requests();
    let line = |r: &kube_standin::RequestRecord| {
        let q = normalise_query(&r.query);
        if q.is_empty() {
            format!("{} {} -> {}", r.method, r.path, r.status)
        } else {
            format!("{} {}?{} -> {}", r.method, r.path, q, r.status)
        }
    };
    let mut requests: Vec<String> = records.iter().map(line).collect();
    requests.sort();
    let writes = records.iter().filter(|r| r.is_write()).map(line).collect();
    let mut shapes = BTreeMap::new();
    for (resource, ns) in [
        ("secrets", Some(NS)),
        ("leases", Some(NS)),
        ("configmaps", Some(NS)),
        ("services", Some(NS)),
        ("deployments", Some(NS)),
    ] {
        for obj in b.api.list(resource, ns) {
            let name = obj["metadata"]["name"].as_str().unwrap_or("?").to_string();
            // Fetched one by one, as a client reads them.
            let one = b.api.get(resource, ns, &name).unwrap_or(obj);
            let mut paths = BTreeSet::new();
            shape(&one, "", &mut paths);
            shapes.insert(format!("{resource}/{name}"), paths);
        }
    }
    if let Some(n) = b.api.get("namespaces", None, NS) {
        let mut paths = BTreeSet::new();
        shape(&n, "", &mut paths);
        shapes.insert(format!("namespaces/{NS}"), paths);
    }
    // Values that differ by harness, not by server: the URL, the kubeconfig's context and
    // user names (`lock` records the kubeconfig user as "by"); runs of blanks (helm's
    // tables pad to the width of times whose digits differ).
    let url = b.api.url();
    let user = if b.api.is_real() { "admin" } else { "standin" };
    let clean = |s: &str| {
        s.replace(&url, "<server>")
            .lines()
            .map(|l| {
                l.split_whitespace()
                    .map(|w| {
                        if w == user {
                            "<user>"
                        } else if w == b.api.context() {
                            "<ctx>"
                        } else {
                            w
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    Observed {
        code: run.code,
        stdout: clean(&run.stdout),
        stderr: clean(&run.stderr),
        requests,
        writes,
        shapes,
    }
}

/// The key structure of a JSON value: one line per leaf, `path: type`. Arrays contribute
/// the union of their elements' structure under `path[]`.
fn shape(v: &Value, path: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            if m.is_empty() {
                out.insert(format!("{path}: {{}}"));
            }
            for (k, v) in m {
                shape(v, &format!("{path}.{k}"), out);
            }
        }
        Value::Array(a) => {
            if a.is_empty() {
                out.insert(format!("{path}: []"));
            }
            for v in a {
                shape(v, &format!("{path}[]"), out);
            }
        }
        Value::String(_) => {
            out.insert(format!("{path}: string"));
        }
        Value::Number(_) => {
            out.insert(format!("{path}: number"));
        }
        Value::Bool(_) => {
            out.insert(format!("{path}: bool"));
        }
        Value::Null => {
            out.insert(format!("{path}: null"));
        }
    }
}

/// Lines only one side has, as `WHAT: only the real server: …` / `WHAT: only the stand-in: …`.
fn diff_sets<'a>(
    what: &str,
    real: impl IntoIterator<Item = &'a String>,
    standin: impl IntoIterator<Item = &'a String>,
) -> Vec<String> {
    let real: BTreeSet<&String> = real.into_iter().collect();
    let standin: BTreeSet<&String> = standin.into_iter().collect();
    let mut out = Vec::new();
    for r in real.difference(&standin) {
        out.push(format!("{what}: only the real server: {r}"));
    }
    for s in standin.difference(&real) {
        out.push(format!("{what}: only the stand-in: {s}"));
    }
    out
}

fn compare(step: &str, real: &Observed, standin: &Observed) -> Vec<String> {
    let mut diffs = Vec::new();
    if real.code != standin.code {
        diffs.push(format!(
            "{step}: exit code: real {} / stand-in {}",
            real.code, standin.code
        ));
    }
    for (what, r, s) in [
        ("stdout", &real.stdout, &standin.stdout),
        ("stderr", &real.stderr, &standin.stderr),
    ] {
        let rl: Vec<String> = r.lines().map(normalise_output).collect();
        let sl: Vec<String> = s.lines().map(normalise_output).collect();
        diffs.extend(diff_sets(&format!("{step}: {what}"), &rl, &sl));
    }
    diffs.extend(diff_sets(
        &format!("{step}: request"),
        &real.requests,
        &standin.requests,
    ));
    if real.writes != standin.writes && diff_sets("", &real.writes, &standin.writes).is_empty() {
        diffs.push(format!(
            "{step}: write order: real {:?} / stand-in {:?}",
            real.writes, standin.writes
        ));
    }
    let keys: BTreeSet<&String> = real.shapes.keys().chain(standin.shapes.keys()).collect();
    for key in keys {
        match (real.shapes.get(key), standin.shapes.get(key)) {
            (Some(r), Some(s)) => diffs.extend(diff_sets(&format!("{step}: {key}"), r, s)),
            (Some(_), None) => diffs.push(format!("{step}: object only on the real server: {key}")),
            (None, Some(_)) => diffs.push(format!("{step}: object only on the stand-in: {key}")),
            (None, None) => {}
        }
    }
    diffs
}

/// Output lines with times and ages blanked (`LAST DEPLOYED: …`, `2s ago`, dates).
fn normalise_output(line: &str) -> String {
    let mut out = String::new();
    let mut digits = false;
    for c in line.chars() {
        if c.is_ascii_digit() {
            if !digits {
                out.push('#');
            }
            digits = true;
        } else {
            digits = false;
            out.push(c);
        }
    }
    out
}

fn differential(real_label: &str, standin_label: &str) {
    let real = bed(real_label);
    let standin = bed(standin_label);
    for b in [&real, &standin] {
        b.api.create_namespace(NS);
    }
    let mut all = Vec::new();
    let mut transcript = String::new();
    let mut compared: BTreeSet<String> = BTreeSet::new();
    for (name, step) in steps() {
        let r = observe(&real, step);
        let s = observe(&standin, step);
        transcript.push_str(&format!(
            "== {name}: exit {} / {}\n-- real requests\n{}\n-- stand-in requests\n{}\n",
            r.code,
            s.code,
            r.requests.join("\n"),
            s.requests.join("\n")
        ));
        compared.extend(
            r.shapes
                .keys()
                .filter(|k| s.shapes.contains_key(*k))
                .cloned(),
        );
        all.extend(compare(name, &r, &s));
    }
    // The comparison saw what the flows store, on both sides.
    for key in [
        "secrets/sh.helm.release.v1.db.v1",
        "secrets/sh.helm.release.v1.db.v2",
        "secrets/sh.helm.release.v1.app.v3",
        "leases/helm-lock-db",
        "namespaces/diff",
        "configmaps/db-config",
        "deployments/db-app",
        "services/db-svc",
    ] {
        assert!(
            compared.contains(key),
            "{real_label}: {key} was never compared; compared: {compared:?}"
        );
    }
    let covers = |k: &Known, d: &str| k.patterns.iter().any(|p| d.contains(p));
    let unknown: Vec<&String> = all
        .iter()
        .filter(|d| !KNOWN.iter().any(|k| covers(k, d)))
        .collect();
    let stale: Vec<&str> = KNOWN
        .iter()
        .filter(|k| !all.iter().any(|d| covers(k, d)))
        .map(|k| k.id)
        .collect();
    if let Ok(path) = std::env::var("GU_DIFF_DUMP") {
        let _ = std::fs::write(
            format!("{path}.{real_label}"),
            format!("{}\n\n{transcript}", all.join("\n")),
        );
    }
    assert!(
        unknown.is_empty(),
        "{real_label} vs {standin_label}: {} difference(s) between the real API server and the \
         stand-in that are neither fixed nor documented:\n{}",
        unknown.len(),
        unknown
            .iter()
            .map(|d| format!("  {d}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        stale.is_empty(),
        "{real_label} vs {standin_label}: known differences that no longer occur (remove them \
         here and in docs/standin.md): {stale:?}"
    );
}

/// Every known difference is explained in docs/standin.md.
#[test]
fn known_differences_are_documented() {
    let doc = include_str!("../../docs/standin.md");
    let section = doc
        .split_once("## Differences from kube-apiserver")
        .map(|(_, rest)| rest)
        .expect("docs/standin.md has a section \"Differences from kube-apiserver\"");
    for k in KNOWN {
        assert!(
            section.contains(&format!("`{}`", k.id)),
            "docs/standin.md does not explain the known difference `{}`",
            k.id
        );
    }
}

#[test]
fn helm3() {
    differential("helm3.17", "standin-helm3");
}

#[test]
fn helm4() {
    differential("helm4.1", "standin-helm4");
}
