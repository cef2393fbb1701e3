//! The only place that prints. Commands decide what happened; this module says it: text or
//! JSON, stdout or stderr.
//!
//! Conventions: stdout carries a command's result (`status`, `locks`, `check -o json`);
//! everything else (decision lines, notes, waits, warnings) goes to stderr, because under
//! `upgrade` stdout belongs to helm.

pub(crate) mod ci;
pub(crate) mod report;

use std::io::Write;
use std::path::PathBuf;

use crate::cli::OutputFormat;
use crate::core::decision::Decision;
use crate::error::Error;
use report::{DecisionReport, LockReport, LockRow, StatusReport};

/// Where the decision JSON goes besides the normal output (`--decision-file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DecisionFile {
    /// `-`: standard error.
    Stderr,
    /// A file.
    Path(PathBuf),
}

/// A line on stderr, as is.
fn line(text: &str) {
    eprintln!("{text}");
}

/// `note: …` on stderr.
pub(crate) fn note(text: &str) {
    line(&format!("note: {text}"));
}

/// `warning: …` on stderr.
pub(crate) fn warning(text: &str) {
    line(&format!("warning: {text}"));
}

/// `debug: …` on stderr when debug output is on (`--debug`, `HELM_DEBUG`): one event of
/// the same `tracing` output the cluster adapter writes its request log to.
pub(crate) fn debug(text: &str) {
    tracing::debug!("{text}");
}

/// `waiting: …` on stderr: what a wait is for.
pub(crate) fn waiting(text: &str) {
    line(&format!("waiting: {text}"));
}

/// A retry of an API request, or giving up on one (`guarded-upgrade: retrying …`).
pub(crate) fn retry(notice: &crate::adapters::retry::RetryNotice) {
    line(&format!("guarded-upgrade: {notice}"));
}

/// A progress line (`locked: …`, `recovered: …`) on stderr.
pub(crate) fn progress(text: &str) {
    line(text);
}

/// A result on stdout, as is (`policy show`'s lines, `policy manifest`'s YAML).
pub(crate) fn result(text: &str) {
    print!("{text}");
}

/// The decision for people: its one line (`skip: …`, `upgrade: …`) and its notes.
pub(crate) fn decision(decision: &Decision, mutex_note: Option<&str>) {
    line(&decision.message);
    for note in &decision.notes {
        line(&format!("  note: {note}"));
    }
    if let Some(m) = mutex_note {
        line(&format!("  note: mutex {m}"));
    }
}

/// Where the decision JSON goes as the command's own output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JsonTo {
    /// `check -o json`: the JSON is the output.
    Stdout,
    /// `upgrade --decision-output json`: stdout belongs to helm.
    Stderr,
}

/// Writes the decision JSON where it was asked for: the format's stream and/or the
/// `--decision-file`.
pub(crate) fn decision_json(
    report: &DecisionReport,
    format: OutputFormat,
    to: JsonTo,
    file: Option<&DecisionFile>,
) -> Result<(), Error> {
    let json = serde_json::to_string(report).expect("the decision report serialises");
    if format == OutputFormat::Json {
        match to {
            JsonTo::Stdout => println!("{json}"),
            JsonTo::Stderr => line(&json),
        }
    }
    match file {
        None => {}
        Some(DecisionFile::Stderr) => line(&json),
        Some(DecisionFile::Path(path)) => {
            std::fs::write(path, format!("{json}\n")).map_err(|source| Error::WriteDecision {
                path: path.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

/// `lock -o json`.
pub(crate) fn lock_json(report: &LockReport) {
    println!(
        "{}",
        serde_json::to_string(report).expect("the lock report serialises")
    );
}

/// `status`.
pub(crate) fn status(
    report: &StatusReport,
    kind: &str,
    mutex_lease: &str,
    now: i64,
    format: OutputFormat,
) {
    if format == OutputFormat::Json {
        println!(
            "{}",
            serde_json::to_string(report).expect("the status report serialises")
        );
        return;
    }
    let mut out = std::io::stdout().lock();
    let mut put = |text: String| {
        let _ = writeln!(out, "{text}");
    };
    put(format!(
        "release:   {} (namespace {}, {kind} records)",
        report.release, report.namespace
    ));
    match &report.deployed {
        Some(d) => put(format!(
            "deployed:  {} {} (app {}) revision {}",
            d.chart.as_deref().unwrap_or("?"),
            d.version.as_deref().unwrap_or("?"),
            d.app_version.as_deref().unwrap_or("-"),
            d.revision
        )),
        None => put("deployed:  none".to_string()),
    }
    if let Some(l) = &report.latest {
        put(format!("latest:    revision {} {}", l.revision, l.status));
    }
    if let Some(r) = &report.rollback {
        put(format!("rollback:  {}", r.describe()));
    }
    match &report.lock {
        None => put("lock:      none".to_string()),
        Some(l) => {
            let state = match (l.expired, report.upgrade) {
                (false, _) => "",
                (true, "refuse") => " (expired, record still pending-upgrade)",
                (true, _) => " (expired, ignored)",
            };
            put(format!("lock:      {}{state}", l.kind));
            for (name, value) in [
                ("reason", &l.reason),
                ("by", &l.by),
                ("since", &l.since),
                ("expires", &l.expires),
                ("pin", &l.pin),
                ("pin-key", &l.pin_key),
            ] {
                if let Some(v) = value {
                    put(format!("  {name:<8} {v}"));
                }
            }
            if let Some(how) = l.enforcement {
                put(match &l.enforcement_note {
                    Some(note) => format!("  enforced {} ({note})", how.as_str()),
                    None => format!("  enforced {}", how.as_str()),
                });
            }
            for object in &l.not_frozen {
                put(format!("  not frozen {object}"));
            }
        }
    }
    put(format!("upgrade:   {}", report.upgrade_message));
    match &report.mutex {
        Some(m) => put(format!(
            "mutex:     {mutex_lease} held by {}",
            m.describe(now)
        )),
        None => match &report.mutex_error {
            Some(e) => put(format!(
                "mutex:     {}",
                crate::adapters::mutex::unknown_note(&report.release, e)
            )),
            None => put("mutex:     free".to_string()),
        },
    }
}

/// `locks`.
pub(crate) fn locks(rows: &[LockRow], scope: &str, format: OutputFormat) {
    if format == OutputFormat::Json {
        println!(
            "{}",
            serde_json::to_string(rows).expect("the lock rows serialise")
        );
        return;
    }
    if rows.is_empty() {
        line(&format!("no locked releases in {scope}"));
        return;
    }
    println!(
        "{:<20} {:<16} {:<5} {:<20} {:<22} {:<12} {:<16} REASON",
        "NAMESPACE", "RELEASE", "KIND", "BY", "EXPIRES", "PIN", "ENFORCED"
    );
    for r in rows {
        let expires = match (&r.lock.expires, r.lock.expired) {
            (Some(t), true) => format!("{t} (expired)"),
            (Some(t), false) => t.clone(),
            (None, _) => "-".into(),
        };
        // Padded columns, but no trailing spaces when the last ones are empty.
        let row = format!(
            "{:<20} {:<16} {:<5} {:<20} {:<22} {:<12} {:<16} {}",
            r.namespace,
            r.release,
            r.lock.kind,
            r.lock.by.as_deref().unwrap_or("-"),
            expires,
            r.lock.pin.as_deref().unwrap_or("-"),
            r.lock.enforcement.map_or("-", |e| e.as_str()),
            r.lock.reason.as_deref().unwrap_or("")
        );
        println!("{}", row.trim_end());
    }
}

/// `completions SHELL`: the script, generated from the clap definitions.
pub(crate) fn completions(target: crate::cli::CompletionTarget) {
    print!("{}", completion_script(target));
}

/// The completion script (or `completion.yaml`) for `target`.
pub(crate) fn completion_script(target: crate::cli::CompletionTarget) -> String {
    use crate::cli::CompletionTarget as T;
    use clap_complete::Shell;
    let shell = match target {
        T::Bash => Shell::Bash,
        T::Zsh => Shell::Zsh,
        T::Fish => Shell::Fish,
        T::Elvish => Shell::Elvish,
        T::Powershell => Shell::PowerShell,
        T::HelmPlugin => return helm_plugin_completion(),
    };
    let mut cmd = crate::cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "guarded-upgrade", &mut script);
    let mut script = String::from_utf8_lossy(&script).into_owned();
    if shell == Shell::Bash {
        // clap_complete spells the subcommand states of a hyphenated binary two ways, so
        // nothing after the subcommand completes (clap-rs/clap#6421, #6529); align the case
        // arms with the loop. A no-op once clap_complete is fixed; e2e-tested.
        script = script.replace("guarded__subcmd__upgrade", "guarded__upgrade");
    }
    script
}

/// `man`: the roff page, generated from the clap definitions, on stdout; with `dir`, one
/// page per command written there.
pub(crate) fn man(dir: Option<&std::path::Path>) -> Result<(), Error> {
    let cmd = crate::cli::command();
    let Some(dir) = dir else {
        // A closed stdout (`| head`) is not worth an error.
        let _ = clap_mangen::Man::new(cmd).render(&mut std::io::stdout());
        return Ok(());
    };
    clap_mangen::generate_to(cmd, dir).map_err(|source| Error::WriteManPages {
        dir: dir.to_path_buf(),
        source,
    })?;
    line(&format!("wrote man pages to {}", dir.display()));
    Ok(())
}

/// The helm plugin's `completion.yaml` (helm's static plugin completion), generated from
/// the clap definitions: subcommands, their long flags, and positional values. `upgrade`
/// and `check` list the guard flags (from their table); helm's own flags there are helm's
/// to complete.
pub(crate) fn helm_plugin_completion() -> String {
    use std::fmt::Write as _;
    let cmd = crate::cli::command();
    let mut out = String::from(
        "# Generated from the clap definitions by `guarded-upgrade completions helm-plugin`;\n\
         # a unit test keeps it current.\nname: guard\ncommands:\n",
    );
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let _ = writeln!(out, "- name: {}", sub.get_name());
        let flags: Vec<String> = sub
            .get_arguments()
            .filter(|a| !a.is_hide_set() && !a.is_positional())
            .filter_map(|a| a.get_long().map(str::to_string))
            .filter(|l| l != "help")
            .collect();
        if !flags.is_empty() {
            let _ = writeln!(out, "  flags: [{}]", flags.join(", "));
        }
        let values: Vec<String> = sub
            .get_positionals()
            .flat_map(|a| a.get_possible_values())
            .filter(|v| !v.is_hide_set())
            .map(|v| v.get_name().to_string())
            .collect();
        if !values.is_empty() {
            let _ = writeln!(out, "  validArgs: [{}]", values.join(", "));
        }
    }
    out
}

/// The one error line a failed command prints.
pub fn error(e: &Error) {
    line(&format!("guarded-upgrade: error: {e}"));
}

#[cfg(test)]
mod completion_tests {
    /// The committed `completion.yaml` is what the clap definitions generate.
    #[test]
    fn helm_plugin_completion_file_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/completion.yaml");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert_eq!(
            committed,
            super::helm_plugin_completion(),
            "completion.yaml is stale: run `cargo run -- completions helm-plugin > completion.yaml`"
        );
    }

    /// `helm guard upgrade|check <TAB>` offers exactly the guard flags of the table.
    #[test]
    fn helm_plugin_completion_offers_every_guard_flag() {
        use crate::core::flags::{guard_flags, Mode};
        let yaml: serde_yaml::Value =
            serde_yaml::from_str(include_str!("../../completion.yaml")).unwrap();
        for mode in [Mode::Upgrade, Mode::Check] {
            let command = yaml["commands"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|c| c["name"].as_str() == Some(mode.verb()))
                .unwrap();
            let offered: Vec<&str> = command["flags"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap())
                .collect();
            let table: Vec<&str> = guard_flags(mode).map(|f| f.long).collect();
            assert_eq!(offered, table, "completion.yaml, {}", mode.verb());
        }
    }

    /// The plugin manifest's version is the crate's.
    #[test]
    fn plugin_manifest_version_is_the_crate_version() {
        let manifest = include_str!("../../plugin.yaml");
        let want = format!("version: {}", env!("CARGO_PKG_VERSION"));
        assert!(
            manifest.lines().any(|l| l == want),
            "plugin.yaml must carry `{want}`"
        );
    }
}
