//! What an upgrade would change: helm's own view of the would-be release, compared with
//! the deployed release part by part, by digest only.
//!
//! helm renders the would-be release with the user's exact argv plus
//! `--dry-run=server -o json` (see docs/unchanged.md for what helm 3 and 4 print). We
//! hash four parts of it and of the deployed record: `values` (the user-supplied config),
//! `manifest`, `hooks` and `chart` (templates, default values, schema, files, lock,
//! metadata). Only the names of the parts that differ leave this module; values,
//! manifests and digests themselves are never printed. The same dry run also gives the
//! target side of a `--compare value:PATH` / `app-version` key.
//!
//! A template generating random data renders differently on every run, so such a release
//! always counts as changed (as `helm diff` shows it).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::adapters::helm::HelmCommand;
use crate::adapters::inputs::{Captured, Feed, ReadOnce};
use crate::core::argv::HelmFlags;
use crate::core::decision::{ChangeFacts, CompareKey, KeySide, KeyText, Part};

/// SHA-256 digests of the compared parts of one release. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct PartDigests {
    parts: [(Part, [u8; 32]); 4],
    /// The chart with its default values replaced by the coalesced values (defaults +
    /// config): what `--reuse-values` makes helm store as the chart's values.
    chart_reused: [u8; 32],
}

impl std::fmt::Debug for PartDigests {
    // Digests of low-entropy values could be guessed back: keep them out of debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PartDigests(..)")
    }
}

impl PartDigests {
    /// Digests of a release JSON (a decoded record or helm's dry-run output).
    pub fn of(release: &Value) -> PartDigests {
        let empty = Value::Object(Map::new());
        let config = match release.get("config") {
            None | Some(Value::Null) => &empty,
            Some(v) => v,
        };
        let manifest = release.get("manifest").cloned().unwrap_or(Value::Null);
        let hooks = match release.get("hooks") {
            Some(Value::Array(hooks)) => Value::Array(
                hooks
                    .iter()
                    .map(|h| without(h, &["last_run"]))
                    .collect::<Vec<_>>(),
            ),
            _ => Value::Array(Vec::new()),
        };
        let chart = chart_content(release.get("chart"));
        let mut reused = chart.clone();
        if let Value::Object(map) = &mut reused {
            map.insert("values".into(), effective_values(release));
        }
        PartDigests {
            parts: [
                (Part::Values, digest(config)),
                (Part::Manifest, digest(&manifest)),
                (Part::Hooks, digest(&hooks)),
                (Part::Chart, digest(&chart)),
            ],
            chart_reused: digest(&reused),
        }
    }

    /// The parts of `self` (the would-be release) that differ from `deployed`, in the
    /// order values, manifest, hooks, chart.
    ///
    /// `--reuse-values` makes helm store the chart with the deployed release's coalesced
    /// values as its defaults (helm's `reuseValues` sets `chart.Values` to them), which
    /// changes nothing it renders: a chart equal to the deployed one with that
    /// replacement is not a change.
    pub fn differences(&self, deployed: &PartDigests) -> Vec<Part> {
        self.parts
            .iter()
            .zip(deployed.parts.iter())
            .filter(|(a, b)| a.1 != b.1 && !(a.0 == Part::Chart && a.1 == deployed.chart_reused))
            .map(|(a, _)| a.0)
            .collect()
    }
}

/// The chart without helm 4's modification times: a `touch` or a fresh checkout changes
/// nothing helm applies. Null/absent lists and maps count as empty.
fn chart_content(chart: Option<&Value>) -> Value {
    let Some(Value::Object(chart)) = chart else {
        return Value::Null;
    };
    let mut out = Map::new();
    for (key, value) in chart {
        match key.as_str() {
            "modtime" | "schemamodtime" => {}
            "templates" | "files" => {
                let items = match value {
                    Value::Array(items) => items.iter().map(|i| without(i, &["modtime"])).collect(),
                    _ => Vec::new(),
                };
                out.insert(key.clone(), Value::Array(items));
            }
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    Value::Object(out)
}

fn without(value: &Value, keys: &[&str]) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !keys.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// SHA-256 of the canonical JSON of `value` (object keys sorted, no whitespace), so key
/// order (helm 3 vs 4 struct order, our preserved order) does not matter.
fn digest(value: &Value) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    canonical(value, &mut ctx);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn canonical(value: &Value, ctx: &mut ring::digest::Context) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            ctx.update(b"{");
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    ctx.update(b",");
                }
                ctx.update(Value::String(k.clone()).to_string().as_bytes());
                ctx.update(b":");
                canonical(&map[k], ctx);
            }
            ctx.update(b"}");
        }
        Value::Array(items) => {
            ctx.update(b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    ctx.update(b",");
                }
                canonical(item, ctx);
            }
            ctx.update(b"]");
        }
        scalar => ctx.update(scalar.to_string().as_bytes()),
    }
}

/// The values a release renders with: the chart's defaults coalesced with its config
/// (config wins; a null in config deletes the default, as in helm).
pub fn effective_values(release: &Value) -> Value {
    let defaults = release
        .get("chart")
        .and_then(|c| c.get("values"))
        .cloned()
        .unwrap_or(Value::Null);
    let config = release.get("config").cloned().unwrap_or(Value::Null);
    coalesce(defaults, config)
}

fn coalesce(base: Value, over: Value) -> Value {
    match (base, over) {
        (Value::Object(mut base), Value::Object(over)) => {
            for (k, v) in over {
                if v.is_null() {
                    base.remove(&k);
                    continue;
                }
                let merged = match base.remove(&k) {
                    Some(b) => coalesce(b, v),
                    None => v,
                };
                base.insert(k, merged);
            }
            Value::Object(base)
        }
        (base, Value::Null) => base,
        (_, over) => over,
    }
}

/// The text of a dotted `path` (`image.tag`) in `values`.
pub fn value_at(values: &Value, path: &str) -> KeyText {
    let mut here = values;
    for segment in path.split('.') {
        match here.get(segment) {
            Some(v) => here = v,
            None => return KeyText::Missing,
        }
    }
    match here {
        Value::Null => KeyText::Missing,
        Value::String(s) => KeyText::Scalar(s.clone()),
        Value::Number(n) => KeyText::Scalar(n.to_string()),
        Value::Bool(b) => KeyText::Scalar(b.to_string()),
        Value::Array(_) => KeyText::NotScalar("a list"),
        Value::Object(_) => KeyText::NotScalar("a map"),
    }
}

/// The values of the keys `keys` in one release JSON.
pub fn key_side(release: &Value, keys: &[&CompareKey]) -> KeySide {
    let mut side = KeySide::default();
    let values = effective_values(release);
    for key in keys {
        let text = match key {
            CompareKey::ChartVersion => text_at(release, &["chart", "metadata", "version"]),
            CompareKey::AppVersion => text_at(release, &["chart", "metadata", "appVersion"]),
            CompareKey::Value(path) => value_at(&values, path),
        };
        side.keys.insert((*key).clone(), text);
    }
    side
}

fn text_at(value: &Value, path: &[&str]) -> KeyText {
    let mut here = value;
    for p in path {
        match here.get(p) {
            Some(v) => here = v,
            None => return KeyText::Missing,
        }
    }
    match here {
        Value::String(s) if !s.is_empty() => KeyText::Scalar(s.clone()),
        _ => KeyText::Missing,
    }
}

/// `helm upgrade [--install] <user argv> --dry-run=server -o json`. The user's arguments
/// stay untouched and in order; our two flags go after the user's flags (pflag keeps the
/// last value, so they win over a user's `-o`/`--dry-run`) but before a `--`, after
/// which they would be positional arguments.
pub fn dry_run_command(
    program: &Path,
    helm_args: &[String],
    user_gave_install: bool,
) -> HelmCommand {
    let mut command = HelmCommand::upgrade(program, helm_args, user_gave_install);
    let ours = ["--dry-run=server".to_string(), "-o".into(), "json".into()];
    let at = command
        .args
        .iter()
        .position(|a| a == "--")
        .unwrap_or(command.args.len());
    command.args.splice(at..at, ours);
    command
}

/// Failures getting helm's view of the would-be release.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// helm could not be started or waited for.
    #[error("cannot run helm {program:?} for the dry run: {message}")]
    Spawn {
        /// The binary.
        program: std::path::PathBuf,
        /// Why.
        message: String,
    },
    /// The dry run did not finish in time.
    #[error("the helm dry run (helm upgrade --dry-run=server) did not finish within {0:?}")]
    Timeout(Duration),
    /// helm failed; its own error output (which never contains the rendered release).
    #[error("the helm dry run (helm upgrade --dry-run=server) failed (exit {code}): {stderr}")]
    Failed {
        /// helm's exit code.
        code: i32,
        /// helm's error output, trimmed.
        stderr: String,
    },
    /// helm printed something that is not a release JSON. The text is not repeated: it
    /// may contain values.
    #[error("the helm dry run printed no release JSON ({0})")]
    Output(String),
    /// The dry run would read an input helm can read only once, or run a side-effecting
    /// flag again: the decision cannot be made without changing what helm gets.
    #[error(
        "the decision needs a helm dry run (helm upgrade --dry-run=server) before the real \
         run, and {0}; use --min-version-policy newer or newer-or-equal with --compare \
         chart-version, or pass the input as a regular file"
    )]
    NotTwice(String),
    /// An input read once could not be captured for the dry run and the real run.
    #[error(
        "{0}; helm would have read it once, so it was captured for the dry run and the real run"
    )]
    Input(String),
    /// The deployed record could not be read in full.
    #[error("{0}")]
    Deployed(String),
}

/// Gathers what `decision` asked for ([`crate::core::decision::Decision::needs_facts`]): one
/// helm dry run with the user's argv and, when a baseline revision exists, its record
/// decoded in full. Nothing of either is kept beyond key texts and part names.
///
/// The dry run reads no release history: helm gets the baseline and the latest record
/// through its memory driver (`HELM_DRIVER=memory`, `HELM_MEMORY_DRIVER_DATA` on a pipe),
/// and still renders against the cluster (`--dry-run=server`: `lookup`, capabilities),
/// so its answer is the one a storage-backed dry run gives, at a cost that does not grow
/// with history. Should that run fail, the storage-backed dry run decides.
pub(crate) async fn gather<S: crate::adapters::storage::ReleaseStore>(
    store: &S,
    helm: Option<&Path>,
    dry_run: &DryRun<'_>,
    records: Records<'_>,
    lock: Option<&crate::core::decision::Lock>,
) -> Result<ChangeFacts, ChangeError> {
    let helm = helm.ok_or_else(|| ChangeError::Spawn {
        program: "helm".into(),
        message: "no helm binary found (pass --helm PATH or set HELM_BIN)".into(),
    })?;
    dry_run_inputs(dry_run.helm).map_err(ChangeError::NotTwice)?;
    let keys = crate::core::decision::keys_needed(dry_run.compare, lock);
    let keys: Vec<&CompareKey> = keys.iter().collect();
    let mut deployed = None;
    let mut memory = Vec::new();
    for header in [records.baseline, records.latest].into_iter().flatten() {
        if memory.iter().any(|(rev, _)| *rev == header.revision) {
            continue;
        }
        let name = header.name.as_str();
        // The read before the decision fetched it already, at this resourceVersion.
        let record = match records.read.and_then(|view| view.fetched(header)) {
            Some(record) => record,
            None => std::sync::Arc::new(store.get(name).await.map_err(|e| {
                ChangeError::Deployed(format!("reading {} {name:?}: {e}", store.kind()))
            })?),
        };
        let release = crate::core::release::decode_release_json(&record.payload).map_err(|e| {
            ChangeError::Deployed(format!("decoding {} {name:?}: {e}", store.kind()))
        })?;
        if Some(header.revision) == records.baseline.map(|b| b.revision) {
            deployed = Some((release.clone(), record.header.labels.clone()));
        }
        memory.push((header.revision, release));
    }
    let command = dry_run_command(helm, dry_run.helm_args, dry_run.has_install);
    let feeds = dry_run.captured.feeds();
    let history: Vec<&Value> = memory.iter().map(|(_, r)| r).collect();
    let would_be = match would_be_release_from_memory(&command, &feeds, &history).await {
        Ok(v) => v,
        Err(e) => {
            tracing::debug!(
                "the dry run from helm's memory driver failed ({e}); running it against the \
                 release storage"
            );
            would_be_release(&command, &feeds, &[], DRY_RUN_TIMEOUT).await?
        }
    };
    let mut facts = ChangeFacts {
        target: key_side(&would_be, &keys),
        ..ChangeFacts::default()
    };
    if let Some((deployed, labels)) = deployed {
        facts.deployed = key_side(&deployed, &keys);
        let mut differences = PartDigests::of(&would_be).differences(&PartDigests::of(&deployed));
        if labels_would_change(&labels, &dry_run.helm.labels) {
            differences.push(Part::Labels);
            differences.sort();
        }
        facts.differences = Some(differences);
    }
    Ok(facts)
}

/// The records a dry run needs: the baseline it compares with and the latest revision
/// (helm numbers the new revision after it).
#[derive(Clone, Copy, Default)]
pub(crate) struct Records<'a> {
    /// The revision compared with (the deployed one), if any.
    pub baseline: Option<&'a crate::adapters::storage::RecordHeader>,
    /// The highest revision, if any.
    pub latest: Option<&'a crate::adapters::storage::RecordHeader>,
    /// The read these headers come from: a record it fetched is not fetched again.
    pub read: Option<&'a crate::adapters::state::ReleaseView>,
}

/// The release's custom labels as helm keeps them: every label but helm's own and ours.
fn custom_labels(
    labels: &std::collections::BTreeMap<String, String>,
) -> std::collections::BTreeMap<String, String> {
    labels
        .iter()
        .filter(|(k, _)| {
            !crate::core::release::HELM_SYSTEM_LABELS.contains(&k.as_str())
                && !k.starts_with(crate::core::lock::PREFIX)
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Whether `--labels`/`-l` (`labels`, as the argv splitter read them) would change the
/// release's custom labels: helm merges them into the previous revision's (a value `null`
/// removes a key), and its `-o json` does not show them, so they are compared here.
fn labels_would_change(
    record_labels: &std::collections::BTreeMap<String, String>,
    labels: &[String],
) -> bool {
    let current = custom_labels(record_labels);
    let mut merged = current.clone();
    // As helm's pflag reads each value; a value it refuses fails helm before any write.
    let pairs = labels
        .iter()
        .flat_map(|l| crate::core::argv::string_to_string(l).unwrap_or_default());
    for (key, value) in pairs {
        if value == "null" {
            merged.remove(&key);
        } else {
            merged.insert(key, value);
        }
    }
    merged != current
}

/// Why the dry run cannot run with these helm flags (as the argv splitter read them), if
/// it cannot: a values input that is a named pipe, socket or device cannot be offered
/// twice under its own name (standard input and inherited pipes were captured before the
/// command read anything, see `inputs`), and `--post-renderer` and `--dependency-update`
/// would run more often than plain helm runs them.
pub(crate) fn dry_run_inputs(helm: &HelmFlags) -> Result<(), String> {
    if helm.post_renderer.is_some() {
        return Err("--post-renderer would run once more for it than helm runs it".into());
    }
    if helm.dependency_update {
        return Err(
            "--dependency-update would update the chart's dependencies once more for it".into(),
        );
    }
    for (flag, path) in crate::adapters::inputs::files(helm, None, None, None) {
        if !matches!(flag.as_str(), "-f" | "--values" | "--set-file") {
            continue;
        }
        if let Some(ReadOnce::Refuse(kind)) = crate::adapters::inputs::read_once(&path, true) {
            return Err(format!(
                "{flag} {path} is {kind}, which can be read only once"
            ));
        }
    }
    Ok(())
}

/// What the dry run needs of the command line.
pub(crate) struct DryRun<'a> {
    /// The `--compare` key.
    pub compare: &'a CompareKey,
    /// helm's argv (RELEASE, CHART, helm flags), untouched.
    pub helm_args: &'a [String],
    /// The helm flags the splitter read from it.
    pub helm: &'a HelmFlags,
    /// `--install` is already in it (given by the user), or must not be added (shim mode).
    pub has_install: bool,
    /// The read-once inputs, captured before the command read anything.
    pub captured: &'a Captured,
}

/// Longest we wait for the dry run; helm's own network calls have their own timeouts.
pub const DRY_RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// The dry run with the release's history given to helm's memory driver instead of read
/// from storage (see [`gather`]). `history` holds decoded releases (values: never printed;
/// they travel on a pipe, never through a file).
pub(crate) async fn would_be_release_from_memory(
    command: &HelmCommand,
    feeds: &[Feed],
    history: &[&Value],
) -> Result<Value, ChangeError> {
    let data = serde_json::to_vec(history).map_err(|e| ChangeError::Output(e.to_string()))?;
    let taken: Vec<_> = feeds.iter().map(|f| f.fd).collect();
    let fd = crate::adapters::inputs::free_fd(&taken);
    let mut feeds = feeds.to_vec();
    feeds.push(Feed {
        fd,
        bytes: std::sync::Arc::new(data),
    });
    let path = format!("/dev/fd/{fd}");
    let env = [
        ("HELM_DRIVER", "memory"),
        ("HELM_MEMORY_DRIVER_DATA", path.as_str()),
    ];
    would_be_release(command, &feeds, &env, DRY_RUN_TIMEOUT).await
}

/// Runs the dry run and returns helm's would-be release JSON (contains values: never
/// print it). `feeds` are the captured read-once inputs; `env` is set for helm only.
pub async fn would_be_release(
    command: &HelmCommand,
    feeds: &[Feed],
    env: &[(&str, &str)],
    limit: Duration,
) -> Result<Value, ChangeError> {
    let spawn_err = |e: std::io::Error| ChangeError::Spawn {
        program: command.program.clone(),
        message: e.to_string(),
    };
    let mut expression = crate::adapters::inputs::feed(command.to_expression(), feeds.to_vec());
    for (k, v) in env {
        expression = expression.env(k, v);
    }
    let handle = expression
        .stdout_capture()
        .stderr_capture()
        .unchecked()
        .start()
        .map_err(spawn_err)?;
    let handle = Arc::new(handle);
    // Dropped before it finished (the run was interrupted): the dry run goes too.
    struct KillOnDrop(Arc<duct::Handle>);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
        }
    }
    let _kill = KillOnDrop(Arc::clone(&handle));
    let waiting = Arc::clone(&handle);
    let output =
        tokio::task::spawn_blocking(move || crate::adapters::helm::wait_bounded(&waiting, limit))
            .await
            .map_err(|e| spawn_err(std::io::Error::other(e)))?
            .map_err(spawn_err)?
            .ok_or(ChangeError::Timeout(limit))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        // One line: helm may log warnings before its error.
        let stderr: Vec<&str> = stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        return Err(ChangeError::Failed {
            code: output.status.code().unwrap_or(-1),
            stderr: stderr.join("; "),
        });
    }
    let value: Value = serde_json::from_slice(&output.stdout).map_err(|e| {
        ChangeError::Output(format!(
            "{} at line {} column {}",
            match e.classify() {
                serde_json::error::Category::Eof => "truncated JSON",
                serde_json::error::Category::Syntax => "invalid JSON",
                _ => "unexpected JSON",
            },
            e.line(),
            e.column()
        ))
    })?;
    if !value.is_object() || value.get("manifest").is_none() && value.get("chart").is_none() {
        return Err(ChangeError::Output("not a release object".into()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::argv::{split, Mode};
    use serde_json::json;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn release() -> Value {
        json!({
            "name": "db",
            "config": {"image": {"tag": "1.2.0"}, "password": "canary"},
            "manifest": "---\nkind: ConfigMap\n",
            "hooks": [{"name": "h", "manifest": "x", "last_run": {"phase": "Succeeded"}}],
            "chart": {
                "metadata": {"name": "demo", "version": "1.0.0", "appVersion": "2.0.0"},
                "templates": [{"name": "templates/cm.yaml", "data": "YQ==", "modtime": "t1"}],
                "values": {"image": {"tag": "1.0.0", "repo": "r"}, "replicas": 1, "gone": 1},
                "modtime": "t1",
                "files": null
            }
        })
    }

    /// Issue 17: standard input and inherited pipes are captured and offered again; every
    /// other read-once input and side-effecting flag stops the dry run before it starts,
    /// however it is spelt; regular files and other flags do neither.
    #[test]
    fn read_once_inputs_are_replayed_or_named() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("values.fifo");
        let fifo_c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo_c.as_ptr(), 0o600) }, 0);
        let fifo = fifo.to_str().unwrap().to_string();
        let file = dir.path().join("v.yaml");
        std::fs::write(&file, "a: 1\n").unwrap();
        let file = file.to_str().unwrap().to_string();
        let list = format!("{file},-");
        // An inherited pipe, as `<(sops -d values.yaml)` gives one.
        let mut fds = [0; 2];
        // SAFETY: pipe(2) fills two descriptors, closed at the end of the test.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let dev_fd = format!("/dev/fd/{}", fds[0]);
        use crate::adapters::inputs::{files, sources, Source};
        let stdin = (Ok(vec![Source::Stdin]), Ok(()));
        let none = (Ok(vec![]), Ok(()));
        let refused = |why: String| (Ok(vec![]), Err(why));
        // (argv, (what is captured before anything reads it, whether the dry run may run))
        type Want = (Result<Vec<Source>, String>, Result<(), String>);
        type Case<'a> = (Vec<&'a str>, Want);
        let cases: Vec<Case> =
            vec![
            (vec!["db", "c", "-f", "-"], stdin.clone()),
            (vec!["db", "c", "--values=-"], stdin.clone()),
            (vec!["db", "c", "-f-"], stdin.clone()),
            (vec!["db", "c", "-f", &list], stdin.clone()),
            (vec!["db", "c", "--set-file", "k=-"], stdin.clone()),
            (vec!["db", "c", "-f", "/dev/stdin", "-f", "-"], stdin.clone()),
            (
                vec!["db", "c", "-f", &dev_fd],
                (Ok(vec![Source::Fd(fds[0])]), Ok(())),
            ),
            (
                vec!["db", "c", "-f", &fifo],
                refused(format!("-f {fifo} is a named pipe, which can be read only once")),
            ),
            (
                vec!["db", "c", "-f", "/dev/null"],
                refused("-f /dev/null is a device, which can be read only once".into()),
            ),
            (
                vec!["db", "c", "--post-renderer", "./kustomize"],
                refused("--post-renderer would run once more for it than helm runs it".into()),
            ),
            (
                vec!["db", "c", "--dependency-update"],
                refused(
                    "--dependency-update would update the chart's dependencies once more for it"
                        .into(),
                ),
            ),
            (vec!["db", "c", "--dependency-update=false"], none.clone()),
            (vec!["db", "c", "-f", &file, "--set", "a=-"], none.clone()),
            // Values of other flags are not flags (pflag's reading, from the splitter).
            (vec!["db", "c", "--description", "-f=/dev/null"], none.clone()),
            // The kubeconfig and repository files the guard or `helm show chart` read too.
            (
                vec!["db", "c", "--kubeconfig", &dev_fd, "--ca-file=/dev/stdin"],
                (Ok(vec![Source::Stdin, Source::Fd(fds[0])]), Ok(())),
            ),
            (
                vec!["db", "c", "--kube-ca-file", &fifo],
                (
                    Err(format!(
                        "--kube-ca-file {fifo} is a named pipe: the guard and helm would each \
                         read it, and the second reader would get nothing. Pass a regular \
                         file, or an inherited descriptor (/dev/fd/N, process substitution), \
                         which is captured once and handed to helm on the same number"
                    )),
                    Ok(()),
                ),
            ),
            (
                vec!["db", "c", "--keyring", &dev_fd, "--cert-file", &dev_fd],
                (Ok(vec![Source::Fd(fds[0])]), Ok(())),
            ),
            // `-` is standard input for values only; /dev/null is read again as often as asked.
            (vec!["db", "c", "--kubeconfig", "-"], none.clone()),
            (vec!["db", "c", "--repository-config", "/dev/null"], none.clone()),
        ];
        for (args, want) in cases {
            let flags = helm_flags(&args);
            let got = (
                sources(&files(&flags, None, None, None)),
                dry_run_inputs(&flags),
            );
            assert_eq!(got, want, "{args:?}");
        }
        // Each `KUBECONFIG` entry counts when --kubeconfig is not given.
        let list = std::ffi::OsString::from(format!("/nonexistent:{dev_fd}"));
        let flags = helm_flags(&["db", "c"]);
        assert_eq!(
            sources(&files(&flags, None, Some(&list), None)),
            Ok(vec![Source::Fd(fds[0])])
        );
        let flags = helm_flags(&["db", "c", "--kubeconfig", &file]);
        assert_eq!(sources(&files(&flags, None, Some(&list), None)), Ok(vec![]));
        // CHART on a pipe is read by `helm show chart` and by helm; with --repo it is a name.
        let flags = helm_flags(&["db", &dev_fd]);
        assert_eq!(
            sources(&files(&flags, Some(&dev_fd), None, None)),
            Ok(vec![Source::Fd(fds[0])])
        );
        let flags = helm_flags(&["db", &dev_fd, "--repo", "https://charts.example"]);
        assert_eq!(
            sources(&files(&flags, Some(&dev_fd), None, None)),
            Ok(vec![])
        );
        // Nothing after `--` is a flag: such a command line is refused before any dry run.
        assert!(split(&strings(&["db", "c", "--", "-f", "-"]), Mode::Upgrade).is_err());
        // SAFETY: closing the two descriptors pipe(2) gave us.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }

    /// `--labels` changes count as changes: helm merges them into the previous labels.
    #[test]
    fn label_changes_are_seen() {
        let record: std::collections::BTreeMap<String, String> = [
            ("name", "db"),
            ("owner", "helm"),
            ("status", "deployed"),
            ("version", "3"),
            ("team", "a"),
            ("guarded-upgrade.io/lock", "soft"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let changes = |args: &[&str]| labels_would_change(&record, &helm_flags(args).labels);
        assert!(!changes(&["db", "c"]));
        assert!(!changes(&["db", "c", "--labels", "team=a"]));
        assert!(!changes(&["db", "c", "-l", "gone=null"]));
        assert!(changes(&["db", "c", "--labels", "team=b"]));
        assert!(changes(&["db", "c", "--labels=team=a,tier=db"]));
        assert!(changes(&["db", "c", "-lteam=null"]));
        assert!(!changes(&["db", "c", "--description", "-lteam=b"]));
        assert!(split(
            &strings(&["db", "c", "--", "--labels", "team=b"]),
            Mode::Upgrade
        )
        .is_err());
    }

    /// The helm flags of a valid `upgrade` command line, as the splitter reads them.
    fn helm_flags(args: &[&str]) -> HelmFlags {
        split(&strings(args), Mode::Upgrade)
            .expect("a valid command line")
            .helm
    }

    #[test]
    fn dry_run_command_adds_only_our_flags() {
        let p = Path::new("/h");
        let cmd = dry_run_command(
            p,
            &strings(&["db", "./c", "-o", "yaml", "--set", "a=b"]),
            false,
        );
        assert_eq!(
            cmd.args,
            strings(&[
                "upgrade",
                "--install",
                "db",
                "./c",
                "-o",
                "yaml",
                "--set",
                "a=b",
                "--dry-run=server",
                "-o",
                "json"
            ])
        );
        let cmd = dry_run_command(p, &strings(&["-i", "db", "--", "./c"]), true);
        assert_eq!(
            cmd.args,
            strings(&[
                "upgrade",
                "-i",
                "db",
                "--dry-run=server",
                "-o",
                "json",
                "--",
                "./c"
            ])
        );
    }

    #[test]
    fn identical_releases_have_no_differences() {
        let a = PartDigests::of(&release());
        assert_eq!(
            a.differences(&PartDigests::of(&release())),
            Vec::<Part>::new()
        );
    }

    #[test]
    fn each_part_is_detected_alone() {
        let base = PartDigests::of(&release());
        type Edit = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(Edit, Vec<Part>)> = vec![
            (
                Box::new(|r| r["config"]["password"] = json!("other")),
                vec![Part::Values],
            ),
            (
                Box::new(|r| r["manifest"] = json!("---\nkind: Secret\n")),
                vec![Part::Manifest],
            ),
            (
                Box::new(|r| r["hooks"][0]["manifest"] = json!("y")),
                vec![Part::Hooks],
            ),
            (
                Box::new(|r| r["chart"]["templates"][0]["data"] = json!("Yg==")),
                vec![Part::Chart],
            ),
            (
                Box::new(|r| r["chart"]["values"]["replicas"] = json!(2)),
                vec![Part::Chart],
            ),
            (
                Box::new(|r| r["chart"]["metadata"]["description"] = json!("d")),
                vec![Part::Chart],
            ),
            (
                Box::new(|r| r["chart"]["lock"] = json!({"digest": "x"})),
                vec![Part::Chart],
            ),
            // Not changes: run times of hooks, helm 4 modtimes, key order, empty config.
            (Box::new(|r| r["hooks"][0]["last_run"] = json!({})), vec![]),
            (Box::new(|r| r["chart"]["modtime"] = json!("t2")), vec![]),
            (
                Box::new(|r| r["chart"]["templates"][0]["modtime"] = json!("t2")),
                vec![],
            ),
            (
                Box::new(|r| {
                    let c = r["chart"]["values"].as_object_mut().unwrap();
                    let v = c.shift_remove("image").unwrap();
                    c.insert("image".into(), v);
                }),
                vec![],
            ),
            (
                Box::new(|r| {
                    r["config"] = json!({});
                    r["manifest"] = json!("m2");
                }),
                vec![Part::Values, Part::Manifest],
            ),
        ];
        for (i, (edit, want)) in cases.into_iter().enumerate() {
            let mut r = release();
            edit(&mut r);
            assert_eq!(PartDigests::of(&r).differences(&base), want, "case {i}");
        }
        // --reuse-values: helm stores the deployed coalesced values as chart defaults.
        let deployed = release();
        let mut reused = release();
        reused["chart"]["values"] = effective_values(&deployed);
        assert_eq!(
            PartDigests::of(&reused).differences(&base),
            Vec::<Part>::new()
        );
        // ... but only that exact replacement, and only in that direction.
        reused["chart"]["values"]["replicas"] = json!(3);
        assert_eq!(
            PartDigests::of(&reused).differences(&base),
            vec![Part::Chart]
        );
        // Absent and null config are the same as empty.
        let mut a = release();
        a["config"] = json!({});
        let mut b = release();
        b.as_object_mut().unwrap().remove("config");
        let mut c = release();
        c["config"] = Value::Null;
        let (a, b, c) = (
            PartDigests::of(&a),
            PartDigests::of(&b),
            PartDigests::of(&c),
        );
        assert!(a.differences(&b).is_empty() && b.differences(&c).is_empty());
    }

    #[test]
    fn digests_never_show_in_debug_output() {
        assert_eq!(
            format!("{:?}", PartDigests::of(&release())),
            "PartDigests(..)"
        );
    }

    #[test]
    fn effective_values_coalesce_like_helm() {
        let mut r = release();
        r["config"]["gone"] = Value::Null;
        let v = effective_values(&r);
        assert_eq!(
            v,
            json!({"image": {"tag": "1.2.0", "repo": "r"}, "replicas": 1, "password": "canary"})
        );
        assert_eq!(value_at(&v, "image.tag"), KeyText::Scalar("1.2.0".into()));
        assert_eq!(value_at(&v, "replicas"), KeyText::Scalar("1".into()));
        assert_eq!(value_at(&v, "image"), KeyText::NotScalar("a map"));
        assert_eq!(value_at(&v, "image.nope"), KeyText::Missing);
        assert_eq!(value_at(&v, "gone"), KeyText::Missing);
        let bare = json!({"chart": {"values": {"image": {"tag": "0.1"}}}});
        assert_eq!(
            value_at(&effective_values(&bare), "image.tag"),
            KeyText::Scalar("0.1".into())
        );
    }

    #[test]
    fn key_side_reads_each_kind_of_key() {
        let keys = [
            CompareKey::ChartVersion,
            CompareKey::AppVersion,
            CompareKey::Value("image.tag".into()),
        ];
        let side = key_side(&release(), &keys.iter().collect::<Vec<_>>());
        assert_eq!(side.get(&keys[0]), KeyText::Scalar("1.0.0".into()));
        assert_eq!(side.get(&keys[1]), KeyText::Scalar("2.0.0".into()));
        assert_eq!(side.get(&keys[2]), KeyText::Scalar("1.2.0".into()));
        assert_eq!(side.get(&CompareKey::Value("x".into())), KeyText::Missing);
    }

    #[tokio::test]
    async fn dry_run_failures_are_reported_without_output() {
        let sh = |script: &str| HelmCommand {
            program: "/bin/sh".into(),
            args: strings(&["-c", script]),
        };
        let limit = Duration::from_secs(10);
        let err = would_be_release(
            &sh("echo '{\"config\":{\"p\":\"canary\"'; exit 0"),
            &[],
            &[],
            limit,
        )
        .await
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "the helm dry run printed no release JSON (truncated JSON at line 2 column 0)"
        );
        let err = would_be_release(
            &sh("printf 'WARN x\\n\\nError: boom\\n' >&2; exit 1"),
            &[],
            &[],
            limit,
        )
        .await
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "the helm dry run (helm upgrade --dry-run=server) failed (exit 1): WARN x; Error: boom"
        );
        let err = would_be_release(&sh("sleep 5"), &[], &[], Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, ChangeError::Timeout(_)), "{err}");
        let ok = would_be_release(&sh("echo '{\"manifest\":\"m\"}'"), &[], &[], limit)
            .await
            .unwrap();
        assert_eq!(ok["manifest"], "m");
    }
}
