//! CI integration: GitHub Actions workflow commands and step summary, GitLab CI log
//! sections. Everything here goes to stderr (under `upgrade`, stdout belongs to helm) or to
//! the step summary file, and is built from the decision report only: release metadata,
//! never values or credentials.

use std::io::Write;
use std::path::PathBuf;

use crate::core::decision::Action;

use super::report::DecisionReport;

/// CI integration for a guarded command (docs/ci.md); all off with `--no-annotations`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CiPlan {
    /// GitHub Actions (`GITHUB_ACTIONS=true`): annotations, and the step summary file
    /// (`GITHUB_STEP_SUMMARY`) when set.
    pub github: Option<GithubCi>,
    /// GitLab CI (`GITLAB_CI=true`): a collapsible log section around the helm run.
    pub gitlab: bool,
}

/// GitHub Actions settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct GithubCi {
    /// `GITHUB_STEP_SUMMARY`: one markdown row per decision is appended there.
    pub step_summary: Option<PathBuf>,
}

impl CiPlan {
    /// Reads the CI variables of the process.
    pub(crate) fn from_process() -> CiPlan {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        CiPlan {
            github: (var("GITHUB_ACTIONS").as_deref() == Some("true".as_ref())).then(|| GithubCi {
                step_summary: var("GITHUB_STEP_SUMMARY").map(PathBuf::from),
            }),
            gitlab: var("GITLAB_CI").as_deref() == Some("true".as_ref()),
        }
    }
}

/// Escapes the message of a workflow command (GitHub's `escapeData`).
pub(crate) fn escape_data(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Escapes a workflow command property value (GitHub's `escapeProperty`).
pub(crate) fn escape_property(text: &str) -> String {
    escape_data(text).replace(':', "%3A").replace(',', "%2C")
}

/// The annotation for a decision: skips are notices, refusals errors, the rest none.
pub(crate) fn annotation(report: &DecisionReport) -> Option<String> {
    let (level, what) = match report.action {
        Action::Skip => ("notice", "skipped"),
        Action::Refuse => ("error", "refused"),
        Action::Install | Action::Upgrade => return None,
    };
    let title = format!(
        "guarded-upgrade {what} {} in {}",
        report.release, report.namespace
    );
    Some(format!(
        "::{level} title={}::{}",
        escape_property(&title),
        escape_data(&report.message)
    ))
}

/// The annotation for an upgrade that failed closed (exit 3: the deployed state could not
/// be known safely, helm was not run). Usage errors and helm's own failures get none.
pub(crate) fn failure_annotation(release: &str, error: &crate::error::Error) -> Option<String> {
    (error.exit() == crate::error::Exit::Refused).then(|| {
        format!(
            "::error title={}::{}",
            escape_property(&format!("guarded-upgrade refused {release}")),
            escape_data(&error.to_string())
        )
    })
}

/// Says a fail-closed error the CI's way (GitHub: an error annotation).
pub(crate) fn failure(ci: &CiPlan, release: &str, error: &crate::error::Error) {
    if ci.github.is_some() {
        if let Some(line) = failure_annotation(release, error) {
            eprintln!("{line}");
        }
    }
}

/// The step summary's table header.
pub(crate) const SUMMARY_HEADER: &str =
    "| release | namespace | deployed | target | action | reason |\n|---|---|---|---|---|---|\n";

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\r', '\n'], " ")
}

fn word<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// One markdown row of the step summary.
pub(crate) fn summary_row(report: &DecisionReport) -> String {
    let deployed = match &report.deployed {
        Some(d) => format!(
            "{} {} (revision {})",
            d.chart.as_deref().unwrap_or("?"),
            d.version.as_deref().unwrap_or("?"),
            d.revision
        ),
        None => "-".to_string(),
    };
    let target = match &report.target.chart {
        Some(chart) => format!("{chart} {}", report.target.version),
        None => report.target.version.clone(),
    };
    format!(
        "| {} | {} | {} | {} | {} | {} |\n",
        cell(&report.release),
        cell(&report.namespace),
        cell(&deployed),
        cell(&target),
        word(&report.action),
        word(&report.reason)
    )
}

/// Says a decision the CI's way: a GitHub annotation and a step summary row.
pub(crate) fn decision(ci: &CiPlan, report: &DecisionReport) {
    let Some(github) = &ci.github else {
        return;
    };
    if let Some(line) = annotation(report) {
        eprintln!("{line}");
    }
    let Some(path) = &github.step_summary else {
        return;
    };
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| {
            let mut text = String::new();
            if file.metadata()?.len() == 0 {
                text.push_str(SUMMARY_HEADER);
            }
            text.push_str(&summary_row(report));
            file.write_all(text.as_bytes())
        });
    if let Err(e) = written {
        super::warning(&format!(
            "cannot append the decision to GITHUB_STEP_SUMMARY {}: {e}",
            path.display()
        ));
    }
}

/// GitLab's section name for the helm run (letters, digits, `_`, `.`, `-` only).
const SECTION: &str = "guarded_upgrade_helm";

/// Opens a collapsible GitLab log section before helm runs.
pub(crate) fn helm_started(ci: &CiPlan, release: &str, namespace: &str, now: i64) {
    if ci.gitlab {
        eprintln!("{}", section_start(now, release, namespace));
    }
}

/// Closes it after helm exits.
pub(crate) fn helm_finished(ci: &CiPlan, now: i64) {
    if ci.gitlab {
        eprintln!("{}", section_end(now));
    }
}

/// `\e[0Ksection_start:TS:NAME[collapsed=true]\r\e[0KHEADER`.
pub(crate) fn section_start(now: i64, release: &str, namespace: &str) -> String {
    format!(
        "\x1b[0Ksection_start:{now}:{SECTION}[collapsed=true]\r\x1b[0Khelm upgrade {} in {}",
        release.replace(['\r', '\n'], " "),
        namespace.replace(['\r', '\n'], " ")
    )
}

/// `\e[0Ksection_end:TS:NAME\r\e[0K`.
pub(crate) fn section_end(now: i64) -> String {
    format!("\x1b[0Ksection_end:{now}:{SECTION}\r\x1b[0K")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_follows_github() {
        assert_eq!(escape_data("50% a\r\nb:c,d"), "50%25 a%0D%0Ab:c,d");
        assert_eq!(escape_property("50% a\r\nb:c,d"), "50%25 a%0D%0Ab%3Ac%2Cd");
    }

    #[test]
    fn sections_follow_gitlab() {
        assert_eq!(
            section_start(1700000000, "db", "shared"),
            "\x1b[0Ksection_start:1700000000:guarded_upgrade_helm[collapsed=true]\r\x1b[0Khelm \
             upgrade db in shared"
        );
        assert_eq!(
            section_end(1700000001),
            "\x1b[0Ksection_end:1700000001:guarded_upgrade_helm\r\x1b[0K"
        );
    }

    #[test]
    fn cells_cannot_break_the_table() {
        assert_eq!(cell("a|b\nc"), "a\\|b c");
    }
}
