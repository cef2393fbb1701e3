//! End to end (issue 11): `--min-version-policy newer-or-changed` skips a re-run that would
//! write the same release, and `--compare` guards app versions and values such as the image
//! tag. Real helm 3.21.4 and 4.3.2 against the real API server; the main unchanged-skip
//! case also with helm 3.17.3 and 4.1.4.

use std::path::Path;

use kube_standin::testbed::copy_dir;

use crate::common::{chart, guard_bin, per_helm, Bed, Run};

const NS: &str = "apps";
const POLICY: [&str; 2] = ["--min-version-policy", "newer-or-changed"];

fn setup(label: &str) -> Bed {
    let b = crate::common::bed(label);
    b.api.create_namespace(NS);
    b
}

fn args<'a>(head: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    head.iter().chain(extra.iter()).copied().collect()
}

/// `guarded-upgrade upgrade REL CHART -n apps --min-version-policy newer-or-changed EXTRA`.
fn up(b: &Bed, chart: &str, extra: &[&str]) -> Run {
    let head = ["upgrade", "rel", chart, "-n", NS, POLICY[0], POLICY[1]];
    b.guard(&args(&head, extra))
}

/// `guarded-upgrade check ... -o json`, parsed.
fn check(b: &Bed, chart: &str, extra: &[&str]) -> serde_json::Value {
    let head = [
        "check", "rel", chart, "-n", NS, POLICY[0], POLICY[1], "-o", "json",
    ];
    let run = b.guard(&args(&head, extra));
    run.expect_code(0, "check");
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

/// The `differences` of a check, or None when the decision did not compute any.
fn differences(b: &Bed, chart: &str, extra: &[&str]) -> Option<Vec<String>> {
    let json = check(b, chart, extra);
    json.get("differences").map(|d| {
        d.as_array()
            .expect("differences array")
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect()
    })
}

fn has_line(run: &Run, line: &str) {
    assert!(
        run.stderr.lines().any(|l| l == line),
        "no line {line:?} in stderr:\n{}",
        run.stderr
    );
}

fn has_line_in(run: &Run, line: &str, what: &str) {
    assert!(
        run.stderr.lines().any(|l| l == line),
        "{what}: no line {line:?} in stderr:\n{}",
        run.stderr
    );
}

fn revision(b: &Bed) -> u64 {
    b.deployed("rel", NS).1
}

fn skip_unchanged_line(version: &str, revision: u64) -> String {
    format!(
        "skip: release \"rel\" in \"apps\" is at {version} (revision {revision}); target {version} \
         is unchanged: the release helm would write equals revision {revision} (policy \
         newer-or-changed)"
    )
}

/// Expects a skip with reason `unchanged`: no write request at all, same revision.
fn expect_unchanged(b: &Bed, chart: &str, extra: &[&str], what: &str) {
    let before = revision(b);
    b.api.clear_requests();
    let run = up(b, chart, extra);
    run.expect_code(0, what);
    has_line_in(&run, &skip_unchanged_line("0.1.0", before), what);
    assert_eq!(
        b.writes(),
        Vec::<String>::new(),
        "{what}: an unchanged skip wrote"
    );
    assert_eq!(revision(b), before, "{what}");
}

/// Expects an upgrade listing exactly `parts`, and a new revision.
fn expect_changed(b: &Bed, chart: &str, extra: &[&str], parts: &[&str], what: &str) {
    assert_eq!(
        differences(b, chart, extra),
        Some(parts.iter().map(|p| p.to_string()).collect()),
        "{what}"
    );
    let before = revision(b);
    let run = up(b, chart, extra);
    run.expect_code(0, what);
    has_line_in(
        &run,
        &format!(
            "upgrade: \"rel\" in \"apps\" 0.1.0 (same version, changed: {}; policy \
             newer-or-changed)",
            parts.join(", ")
        ),
        what,
    );
    assert_eq!(revision(b), before + 1, "{what}");
}

fn write(b: &Bed, name: &str, text: &str) -> String {
    let path = b.home().join(name);
    std::fs::write(&path, text).expect("write file");
    path.to_string_lossy().into_owned()
}

/// A private copy of the `tagged` chart that a test may edit.
fn chart_copy(b: &Bed) -> String {
    let dir = b.home().join("tagged");
    copy_dir(Path::new(&chart("tagged-0.1.0")), &dir);
    dir.to_string_lossy().into_owned()
}

fn edit(path: &str, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).expect("read");
    assert!(text.contains(from), "{path} has no {from:?}");
    std::fs::write(path, text.replace(from, to)).expect("write");
}

/// `guarded-upgrade upgrade ...` through `bash -c`, with `stdin` on standard input (so a
/// test can use `-f -` and process substitution `-f <(...)`).
fn up_shell(b: &Bed, script_args: &str, stdin: &str) -> Run {
    use std::io::Write;
    let script = format!("exec {} upgrade rel {script_args}", guard_bin().display());
    let mut cmd = b.command("bash");
    cmd.args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn bash");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The value of `image.tag` helm stored for the release.
fn stored_tag(b: &Bed) -> String {
    let run = b.helm(&["get", "values", "rel", "-n", NS, "-o", "json"]);
    run.expect_code(0, "helm get values");
    let v: serde_json::Value = serde_json::from_str(&run.stdout).expect("values json");
    v["image"]["tag"].as_str().unwrap_or_default().to_string()
}

/// Issue 17: values helm can read only once (standard input, a `/dev/fd` pipe from process
/// substitution) are read once by the tool, judged by the dry run and applied by helm;
/// `--labels` changes count as changes; the dry run reads no release history (issue 19).
fn read_once_inputs_and_labels(label: &str) {
    let b = setup(label);
    let c = chart("tagged-0.1.0");
    up(&b, &c, &["--set", "image.tag=1.0.0"]).expect_code(0, "install");
    let common = format!("{c} -n {NS} --compare value:image.tag");

    let run = up_shell(&b, &format!("{common} -f -"), "image:\n  tag: \"2.0.0\"\n");
    run.expect_code(0, "values on stdin");
    has_line(
        &run,
        "upgrade: \"rel\" in \"apps\" value:image.tag 1.0.0 -> 2.0.0",
    );
    assert_eq!(stored_tag(&b), "2.0.0", "helm applied the piped values");

    let run = up_shell(
        &b,
        &format!("{common} -f <(printf 'image:\\n  tag: \"3.0.0\"\\n')"),
        "",
    );
    run.expect_code(0, "values from process substitution");
    has_line(
        &run,
        "upgrade: \"rel\" in \"apps\" value:image.tag 2.0.0 -> 3.0.0",
    );
    assert_eq!(stored_tag(&b), "3.0.0", "helm applied the /dev/fd values");

    // The same piped values again: unchanged, nothing written, and helm's dry run asked
    // the server for no release record (its history came from the memory driver).
    let before = revision(&b);
    b.api.clear_requests();
    let run = up_shell(
        &b,
        &format!("{c} -n {NS} {} {} -f -", POLICY[0], POLICY[1]),
        "image:\n  tag: \"3.0.0\"\n",
    );
    run.expect_code(0, "same piped values");
    has_line(&run, &skip_unchanged_line("0.1.0", before));
    assert_eq!(b.writes(), Vec::<String>::new(), "an unchanged skip wrote");
    let helm_reads: Vec<String> = b
        .api
        .requests()
        .into_iter()
        .filter(|r| {
            r.user_agent
                .as_deref()
                .is_some_and(|ua| ua.starts_with("helm"))
                && r.resource.as_deref() == Some("secrets")
        })
        .map(|r| format!("{} {}?{}", r.verb, r.path, r.query))
        .collect();
    assert_eq!(
        helm_reads,
        Vec::<String>::new(),
        "helm read release records"
    );
    // The guard's own reads: the list and the deployed record, fetched once for the
    // decision and the dry run both (issue 29).
    let guard_reads: Vec<String> = b
        .api
        .requests()
        .into_iter()
        .filter(|r| {
            r.user_agent
                .as_deref()
                .is_some_and(|ua| ua.starts_with("guarded-upgrade/"))
        })
        .map(|r| {
            format!(
                "{} {} {}",
                r.verb,
                r.resource.as_deref().unwrap_or(""),
                r.name.as_deref().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        guard_reads,
        [
            "list secrets ".to_string(),
            format!("get secrets sh.helm.release.v1.rel.v{before}"),
        ]
    );

    // A label change alone is a change; the same labels again are not.
    let tag = ["--set", "image.tag=3.0.0"];
    expect_changed(
        &b,
        &c,
        &[tag[0], tag[1], "--labels", "team=db"],
        &["labels"],
        "a new label",
    );
    expect_unchanged(
        &b,
        &c,
        &[tag[0], tag[1], "--labels", "team=db"],
        "same label",
    );
}

/// Re-run → skip without writes; a --set change → upgrade; the same values from a file → skip.
fn rerun_skips_and_value_change_upgrades(label: &str) {
    let b = setup(label);
    let c = chart("tagged-0.1.0");
    let run = up(&b, &c, &["--set", "message=one"]);
    run.expect_code(0, "install");
    has_line(
        &run,
        "install: \"rel\" in \"apps\" 0.1.0 (not installed yet)",
    );
    assert_eq!(revision(&b), 1);
    expect_unchanged(&b, &c, &["--set", "message=one"], "same --set");
    let file = write(&b, "one.yaml", "message: one\n");
    expect_unchanged(&b, &c, &["-f", &file], "same values from a file");
    expect_changed(
        &b,
        &c,
        &["--set", "message=two"],
        &["values", "manifest"],
        "--set change",
    );
    expect_unchanged(&b, &c, &["--set", "message=two"], "after the change");
    // Other policies are unaffected: `newer` still says not newer, without a dry run.
    let run = b.guard(&["upgrade", "rel", &c, "-n", NS, "--set", "message=three"]);
    run.expect_code(0, "policy newer");
    has_line(
        &run,
        "skip: release \"rel\" in \"apps\" is at 0.1.0 (revision 2); target 0.1.0 is not newer \
         (policy newer; use --min-version-policy newer-or-equal to re-apply)",
    );
}

/// Every way of giving values is judged by what helm would store.
fn value_flags(label: &str) {
    let b = setup(label);
    let c = chart("tagged-0.1.0");
    let a = write(&b, "a.yaml", "message: a\nextra:\n  k: 1\n");
    let bb = write(&b, "b.yaml", "message: b\n");
    let msg = write(&b, "msg.txt", "a");
    up(&b, &c, &["-f", &a, "-f", &bb]).expect_code(0, "install");
    expect_unchanged(&b, &c, &["-f", &a, "-f", &bb], "same files, same order");
    // Order matters: the later file wins.
    expect_changed(
        &b,
        &c,
        &["-f", &bb, "-f", &a],
        &["values", "manifest"],
        "-f order",
    );
    // Now config = {message: a, extra: {k: 1}}, however it is spelled.
    expect_unchanged(
        &b,
        &c,
        &["--set", "message=a", "--set-json", r#"extra={"k":1}"#],
        "--set + --set-json",
    );
    expect_unchanged(
        &b,
        &c,
        &["--set-string", "message=a", "--set", "extra.k=1"],
        "--set-string",
    );
    expect_unchanged(
        &b,
        &c,
        &["--set-file", &format!("message={msg}"), "-f", &a],
        "--set-file",
    );
    expect_unchanged(&b, &c, &["--reuse-values"], "--reuse-values");
    expect_unchanged(
        &b,
        &c,
        &["--reset-then-reuse-values"],
        "--reset-then-reuse-values",
    );
    // A string "1" is not the number 1.
    expect_changed(
        &b,
        &c,
        &["--reuse-values", "--set-string", "extra.k=1"],
        &["values", "manifest"],
        "--set-string type change",
    );
    // The last upgrade re-used values, so helm stored the coalesced values as the chart's
    // defaults; --reset-values stores the chart's own defaults again.
    expect_changed(
        &b,
        &c,
        &["--reset-values"],
        &["values", "manifest", "chart"],
        "--reset-values",
    );
    expect_unchanged(&b, &c, &[], "no values after a reset");
}

/// Chart content counts without a version bump: templates, hooks; a touch does not.
fn chart_edits(label: &str) {
    let b = setup(label);
    let c = chart_copy(&b);
    up(&b, &c, &[]).expect_code(0, "install");
    // Only modification times change: not a change.
    let now = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    for f in ["Chart.yaml", "values.yaml", "templates/configmap.yaml"] {
        let file = std::fs::File::options()
            .append(true)
            .open(Path::new(&c).join(f))
            .expect("open");
        file.set_modified(now).expect("touch");
    }
    expect_unchanged(&b, &c, &[], "touched chart");
    edit(
        &format!("{c}/templates/configmap.yaml"),
        "  message: {{ .Values.message | quote }}",
        "  message: {{ .Values.message | upper | quote }}",
    );
    expect_changed(&b, &c, &[], &["manifest", "chart"], "template edit");
    edit(
        &format!("{c}/templates/hook.yaml"),
        "migrate-v1",
        "migrate-v2",
    );
    expect_changed(&b, &c, &[], &["hooks", "chart"], "hook edit");
    // A default value nothing renders still changes the chart helm stores.
    edit(
        &format!("{c}/values.yaml"),
        "random: false",
        "random: false\nunused: 1",
    );
    expect_changed(&b, &c, &[], &["chart"], "default values edit");
    expect_unchanged(&b, &c, &[], "after the chart edits");
}

/// `lookup` sees the cluster (dry run on the server); random data is always a change.
fn lookup_and_random(label: &str) {
    let b = setup(label);
    let c = chart("tagged-0.1.0");
    up(&b, &c, &[]).expect_code(0, "install");
    expect_unchanged(&b, &c, &[], "nothing looked up changed");
    b.api.put_object(
        "configmaps",
        serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "probe", "namespace": NS}, "data": {}
        }),
    );
    expect_changed(&b, &c, &[], &["manifest"], "lookup result changed");
    expect_unchanged(&b, &c, &[], "lookup result stable");
    expect_changed(
        &b,
        &c,
        &["--set", "random=true"],
        &["values", "manifest"],
        "random on",
    );
    // Rendered anew on every run: always changed.
    expect_changed(
        &b,
        &c,
        &["--set", "random=true"],
        &["manifest"],
        "random again",
    );
    expect_changed(
        &b,
        &c,
        &["--set", "random=true"],
        &["manifest"],
        "random once more",
    );
}

/// `--compare value:image.tag` and `--compare app-version` guard what the chart version
/// does not show.
fn compare_keys(label: &str) {
    let b = setup(label);
    let c = chart_copy(&b);
    let tag = ["--compare", "value:image.tag"];
    up(&b, &c, &args(&tag, &["--set", "image.tag=1.1.0"])).expect_code(0, "install");
    let run = up(&b, &c, &args(&tag, &["--set", "image.tag=1.0.5"]));
    run.expect_code(0, "tag downgrade");
    has_line(
        &run,
        "skip: release \"rel\" in \"apps\" is at value:image.tag 1.1.0 (revision 1); target \
         value:image.tag 1.0.5 would be a downgrade",
    );
    assert_eq!(revision(&b), 1);
    let json = check(&b, &c, &args(&tag, &["--set", "image.tag=1.0.5"]));
    assert_eq!(json["reason"], "downgrade");
    assert_eq!(json["compare"], "value:image.tag");
    assert_eq!(json["deployed_key"], "1.1.0");
    assert_eq!(json["target_key"], "1.0.5");
    // Without any values helm re-uses the deployed ones (1.1.0), not the chart default
    // (1.0.0): asking helm gets this right.
    let json = check(&b, &c, &tag);
    assert_eq!(json["reason"], "unchanged");
    assert_eq!(json["target_key"], "1.1.0");
    let run = up(&b, &c, &args(&tag, &["--set", "image.tag=1.2.0"]));
    run.expect_code(0, "tag upgrade");
    has_line(
        &run,
        "upgrade: \"rel\" in \"apps\" value:image.tag 1.1.0 -> 1.2.0",
    );
    assert_eq!(revision(&b), 2);
    // Same tag, other values: newer-or-changed applies on the key.
    let run = up(
        &b,
        &c,
        &args(&tag, &["--set", "image.tag=1.2.0", "--set", "message=m"]),
    );
    run.expect_code(0, "same tag, changed");
    has_line(
        &run,
        "upgrade: \"rel\" in \"apps\" value:image.tag 1.2.0 (same version, changed: values, \
         manifest; policy newer-or-changed)",
    );
    // Non-versions are refused, naming the key and the value; helm is not run.
    let run = up(&b, &c, &args(&tag, &["--set", "image.tag=latest"]));
    run.expect_code(3, "non-semver tag");
    has_line(
        &run,
        "refused: release \"rel\" in \"apps\": value:image.tag \"latest\" of the target is not \
         a version (invalid chart version \"latest\": expected a number for a version part; \
         expected MAJOR[.MINOR[.PATCH]][-PRERELEASE][+BUILD], for example 1.2.3, v1.2 or \
         1.2.3-rc.1), so versions cannot be compared; use --min-version-policy off to upgrade \
         without comparing",
    );
    assert_eq!(revision(&b), 3);

    // app-version: the chart version stays 0.1.0, appVersion moves.
    let app = ["--compare", "app-version"];
    let chart_yaml = format!("{c}/Chart.yaml");
    edit(
        &chart_yaml,
        "appVersion: \"2.0.0\"",
        "appVersion: \"1.9.0\"",
    );
    let keep = ["--reuse-values"];
    let run = up(&b, &c, &args(&app, &keep));
    run.expect_code(0, "app downgrade");
    has_line(
        &run,
        "skip: release \"rel\" in \"apps\" is at app-version 2.0.0 (revision 3); target \
         app-version 1.9.0 would be a downgrade",
    );
    edit(
        &chart_yaml,
        "appVersion: \"1.9.0\"",
        "appVersion: \"2.1.0\"",
    );
    let run = up(&b, &c, &args(&app, &keep));
    run.expect_code(0, "app upgrade");
    has_line(
        &run,
        "upgrade: \"rel\" in \"apps\" app-version 2.0.0 -> 2.1.0",
    );
    assert_eq!(b.deployed("rel", NS), ("0.1.0".into(), 4));
    // Unknown keys are usage errors before any I/O.
    let run = up(&b, &c, &["--compare", "value:"]);
    run.expect_code(2, "bad key");
}

/// `lock --pin --compare value:image.tag` pins the tag, not the chart version.
fn pin_on_value(label: &str) {
    let b = setup(label);
    let c = chart("tagged-0.1.0");
    up(&b, &c, &["--set", "image.tag=1.1.0"]).expect_code(0, "install");
    let run = b.guard(&[
        "lock",
        "rel",
        "-n",
        NS,
        "--pin",
        "~1.1",
        "--compare",
        "value:image.tag",
        "--by",
        "ops",
    ]);
    run.expect_code(0, "lock");
    assert!(
        run.stdout.contains("pinned to ~1.1 on value:image.tag")
            || run.stderr.contains("pinned to ~1.1 on value:image.tag"),
        "{}{}",
        run.stdout,
        run.stderr
    );
    let run = up(&b, &c, &["--set", "image.tag=1.2.0"]);
    run.expect_code(0, "outside the pin");
    assert!(
        run.stderr.lines().any(|l| l.starts_with(
            "skip: release \"rel\" in \"apps\" is at value:image.tag 1.1.0 (revision 1); \
             target value:image.tag 1.2.0 does not match the pin \"~1.1\" (pin lock by ops since "
        )),
        "{}",
        run.stderr
    );
    assert_eq!(revision(&b), 1);
    let status = b.guard(&["status", "rel", "-n", NS]);
    status.expect_code(0, "status");
    for line in [
        "  pin      ~1.1",
        "  pin-key  value:image.tag",
        "upgrade:   upgrades only to newer versions matching ~1.1 on value:image.tag",
    ] {
        assert!(
            status.stdout.lines().any(|l| l == line),
            "no line {line:?} in status:\n{}",
            status.stdout
        );
    }
    let json = check(&b, &c, &["--set", "image.tag=1.2.0"]);
    assert_eq!(json["reason"], "pinned");
    assert_eq!(json["lock"]["pin_key"], "value:image.tag");
    let run = up(&b, &c, &["--set", "image.tag=1.1.7"]);
    run.expect_code(0, "inside the pin");
    has_line(
        &run,
        "upgrade: \"rel\" in \"apps\" 0.1.0 (same version, changed: values, manifest; policy \
         newer-or-changed)",
    );
    assert_eq!(revision(&b), 2);
}

/// A canary in the values never reaches any output or decision JSON of these paths.
fn canary_never_printed(label: &str) {
    const CANARY: &str = "canary-5f1d2e-secret";
    let b = setup(label);
    let c = chart("tagged-0.1.0");
    let decision = b.home().join("decision.json");
    let decision = decision.to_string_lossy().into_owned();
    let values = write(&b, "v.yaml", &format!("password: {CANARY}\n"));
    let runs = [
        vec!["-f", values.as_str()],
        vec!["-f", values.as_str()],
        vec!["-f", values.as_str(), "--set", "message=x"],
        vec!["-f", values.as_str(), "--compare", "value:image.tag"],
        vec!["--set", "password=other", "--compare", "value:image.tag"],
    ];
    for extra in &runs {
        let mut all = extra.clone();
        all.extend([
            "--decision-file",
            decision.as_str(),
            "--decision-output",
            "json",
        ]);
        let run = up(&b, &c, &all);
        let check_run = b.guard(&args(
            &[
                "check", "rel", &c, "-n", NS, POLICY[0], POLICY[1], "-o", "json",
            ],
            extra,
        ));
        let file = std::fs::read_to_string(&decision).unwrap_or_default();
        for (what, text) in [
            ("upgrade stdout", &run.stdout),
            ("upgrade stderr", &run.stderr),
            ("check stdout", &check_run.stdout),
            ("check stderr", &check_run.stderr),
            ("decision file", &file),
        ] {
            assert!(
                !text.contains(CANARY),
                "{extra:?}: {what} leaks the canary:\n{text}"
            );
            assert!(
                !text.contains("hunter2"),
                "{extra:?}: {what} leaks a value:\n{text}"
            );
        }
    }
}

/// A dry run helm refuses fails closed: exit 3, helm's reason, nothing written.
fn dry_run_failure_fails_closed(label: &str) {
    let b = setup(label);
    let c = chart("tagged-0.1.0");
    up(&b, &c, &[]).expect_code(0, "install");
    b.api.clear_requests();
    let run = up(&b, &c, &["--set-json", "extra={bad"]);
    run.expect_code(3, "bad --set-json");
    has_line(
        &run,
        "guarded-upgrade: error: release \"rel\" in namespace \"apps\": examining the release \
         helm would write: the helm dry run (helm upgrade --dry-run=server) failed (exit 1): \
         Error: failed parsing --set-json data extra={bad; helm was not run",
    );
    assert_eq!(b.writes(), Vec::<String>::new());
    assert_eq!(revision(&b), 1);
}

mod compat {
    use super::rerun_skips_and_value_change_upgrades;
    crate::common::per_helm_compat!(rerun_skips_and_value_change_upgrades);
}

per_helm!(
    read_once_inputs_and_labels,
    dry_run_failure_fails_closed,
    value_flags,
    chart_edits,
    lookup_and_random,
    compare_keys,
    pin_on_value,
    canary_never_printed,
);
