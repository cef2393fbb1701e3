//! CI integration: the recipes of docs/ci.md, extracted verbatim and run against the
//! stand-in with the CI's variables set; GitHub annotations and step summary, GitLab
//! sections, `--no-annotations`.

use std::path::{Path, PathBuf};

use crate::common::{bed, chart, guard_bin, lines, run, Bed, Run};

const NS: &str = "shared";
const DOC: &str = include_str!("../../docs/ci.md");

/// The fenced block after `<!-- recipe: NAME -->`.
fn recipe_block(name: &str) -> Vec<&'static str> {
    let marker = format!("<!-- recipe: {name} -->");
    let mut doc = DOC.lines().skip_while(|l| *l != marker).skip(1);
    let fence = doc
        .next()
        .unwrap_or_else(|| panic!("no recipe {name} in docs/ci.md"));
    assert!(fence.starts_with("```"), "{fence}");
    doc.take_while(|l| !l.starts_with("```")).collect()
}

/// GitHub: the `run:` scripts (block or single line), minus the network install step
/// (`Install guarded-upgrade`: README.md's recipe, run by tests/e2e/release.rs).
fn github_script() -> String {
    let block = recipe_block("github");
    let mut script = Vec::new();
    let mut i = 0;
    let mut installing = false;
    while i < block.len() {
        let line = block[i];
        let indent = line.len() - line.trim_start().len();
        if let Some(name) = line.trim_start().strip_prefix("- name:") {
            installing = name.trim() == "Install guarded-upgrade";
        }
        if installing {
            i += 1;
            continue;
        }
        if let Some(rest) = line.trim_start().strip_prefix("run:") {
            if rest.trim() == "|" {
                i += 1;
                while i < block.len() && indent_of(block[i]) > indent {
                    script.push(block[i].trim_start().to_string());
                    i += 1;
                }
                continue;
            }
            script.push(rest.trim().to_string());
        }
        i += 1;
    }
    assert!(!script.is_empty(), "no run: steps in the github recipe");
    script.join("\n")
}

fn indent_of(line: &str) -> usize {
    if line.trim().is_empty() {
        usize::MAX
    } else {
        line.len() - line.trim_start().len()
    }
}

/// GitLab: the `script:` items.
fn gitlab_script() -> String {
    let block = recipe_block("gitlab");
    let at = block
        .iter()
        .position(|l| l.trim() == "script:")
        .expect("script:");
    let items: Vec<String> = block[at + 1..]
        .iter()
        .map_while(|l| l.trim_start().strip_prefix("- ").map(str::to_string))
        .collect();
    assert!(!items.is_empty());
    items.join("\n")
}

/// A CI workspace: ./chart, values.yaml (with a secret-looking value), and PATH with the
/// binary under test and the real helm.
struct Job {
    b: Bed,
    dir: PathBuf,
    path: String,
}

impl Job {
    fn new(label: &str) -> Job {
        let b = bed(label);
        b.api.create_namespace(NS);
        let dir = b.home().join("job");
        let bin = b.home().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(guard_bin(), bin.join("guarded-upgrade")).unwrap();
        copy_chart(&chart("demo-1.0.0"), &dir.join("chart"));
        std::fs::write(dir.join("values.yaml"), "password: s3cr3t-in-values\n").unwrap();
        let path = format!(
            "{}:{}:/usr/bin:/bin",
            bin.display(),
            b.helm_bin.parent().unwrap().display()
        );
        Job { b, dir, path }
    }

    fn bash(&self, script: &str, env: &[(&str, &str)]) -> Run {
        run(self
            .b
            .command("bash")
            .args(["-eo", "pipefail", "-c", script])
            .current_dir(&self.dir)
            .env("PATH", &self.path)
            .env_remove("HELM_BIN")
            .envs(env.iter().copied()))
    }

    fn replace_chart(&self, from: &str) {
        std::fs::remove_dir_all(self.dir.join("chart")).unwrap();
        copy_chart(from, &self.dir.join("chart"));
    }
}

fn copy_chart(from: &str, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_chart(entry.path().to_str().unwrap(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn no_secrets(run: &Run) {
    for text in [&run.stdout, &run.stderr] {
        assert!(!text.contains("s3cr3t"), "values leaked: {text}");
        assert!(!text.contains("hunter2"), "values leaked: {text}");
    }
}

const INSTALL: &str = "install: \"db\" in \"shared\" 1.0.0 (not installed yet)";
const SKIP: &str = "skip: release \"db\" in \"shared\" is at 1.0.0 (revision 1); target 1.0.0 is \
                    not newer (policy newer; use --min-version-policy newer-or-equal to re-apply)";

fn github_recipe(label: &str) {
    let job = Job::new(label);
    let script = github_script();
    let summary = job.b.home().join("summary.md");
    let summary_s = summary.to_str().unwrap();
    let env = [
        ("GITHUB_ACTIONS", "true"),
        ("GITHUB_STEP_SUMMARY", summary_s),
    ];

    let first = job.bash(&script, &env);
    first.expect_code(0, "first deploy");
    assert_eq!(
        lines(&first.stderr)[0],
        INSTALL,
        "installs make no annotation"
    );

    let again = job.bash(&script, &env);
    again.expect_code(0, "redeploy");
    assert_eq!(
        lines(&again.stderr),
        [
            SKIP.to_string(),
            format!("::notice title=guarded-upgrade skipped db in shared::{SKIP}"),
        ]
    );

    // A chart change is refused: an error annotation, exit 3, helm not run.
    job.replace_chart(&chart("empty-0.1.0"));
    let refused = job.bash(&script, &env);
    refused.expect_code(3, "chart change");
    let refusal = lines(&refused.stderr)[0].to_string();
    assert!(refusal.starts_with("refused: "), "{}", refused.stderr);
    assert_eq!(
        lines(&refused.stderr)[1],
        format!("::error title=guarded-upgrade refused db in shared::{refusal}")
    );
    for run in [&first, &again, &refused] {
        no_secrets(run);
    }

    let table = std::fs::read_to_string(&summary).unwrap();
    assert_eq!(
        lines(&table),
        [
            "| release | namespace | deployed | target | action | reason |",
            "|---|---|---|---|---|---|",
            "| db | shared | - | demo 1.0.0 | install | not-installed |",
            "| db | shared | demo 1.0.0 (revision 1) | demo 1.0.0 | skip | not-newer |",
            "| db | shared | demo 1.0.0 (revision 1) | empty 0.1.0 | refuse | chart-changed |",
        ]
    );
    // The example row in docs/ci.md is what a redeploy really writes.
    assert!(
        lines(DOC).contains(&lines(&table)[3]),
        "docs/ci.md example row is stale"
    );
    assert!(!table.contains("s3cr3t"));

    // A step summary that cannot be written is a warning, not a failure.
    let unwritable = job.bash(
        &script,
        &[
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_STEP_SUMMARY", "/nonexistent/summary.md"),
        ],
    );
    unwritable.expect_code(3, "refused, summary unwritable");
    assert_eq!(
        lines(&unwritable.stderr)[2],
        "warning: cannot append the decision to GITHUB_STEP_SUMMARY /nonexistent/summary.md: \
         No such file or directory (os error 2)"
    );

    // Failing closed (the cluster cannot be read) is an error annotation too; the summary
    // gets no row, as there was no decision.
    let closed = job.bash(
        &script,
        &[
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_STEP_SUMMARY", summary_s),
            ("KUBECONFIG", "/nonexistent/kubeconfig"),
        ],
    );
    closed.expect_code(3, "fail closed");
    let err = lines(&closed.stderr);
    assert_eq!(err.len(), 2, "{}", closed.stderr);
    let message = err[1]
        .strip_prefix("guarded-upgrade: error: ")
        .unwrap_or_else(|| panic!("{}", closed.stderr));
    assert!(message.ends_with("; helm was not run"), "{message}");
    assert_eq!(
        err[0],
        format!(
            "::error title=guarded-upgrade refused db::{}",
            message.replace('%', "%25")
        )
    );

    // --no-annotations: no workflow commands, no summary rows.
    let quiet = job.bash(&format!("{script} --no-annotations"), &env);
    quiet.expect_code(3, "refused, quietly");
    assert!(!quiet.stderr.contains("::"), "{}", quiet.stderr);
    assert_eq!(std::fs::read_to_string(&summary).unwrap(), table);
}

fn gitlab_recipe(label: &str) {
    let job = Job::new(label);
    let before = jiff::Timestamp::now().as_second();
    let first = job.bash(&gitlab_script(), &[("GITLAB_CI", "true")]);
    let after = jiff::Timestamp::now().as_second();
    first.expect_code(0, "gitlab deploy");
    no_secrets(&first);
    let err = lines(&first.stderr);
    assert_eq!(err[0], INSTALL);
    let stamp = |line: &str, prefix: &str| -> i64 {
        let ts: i64 = line
            .strip_prefix(prefix)
            .and_then(|r| r.split(':').next())
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("not a section marker: {line:?}"));
        assert!(
            (before..=after).contains(&ts),
            "{ts} not in {before}..={after}"
        );
        ts
    };
    let start = stamp(err[1], "\x1b[0Ksection_start:");
    assert_eq!(
        err[1],
        format!(
            "\x1b[0Ksection_start:{start}:guarded_upgrade_helm[collapsed=true]\r\x1b[0Khelm \
             upgrade db in shared"
        )
    );
    let last = err[err.len() - 1];
    let end = stamp(last, "\x1b[0Ksection_end:");
    assert_eq!(
        last,
        format!("\x1b[0Ksection_end:{end}:guarded_upgrade_helm\r\x1b[0K")
    );
    assert!(first
        .stdout
        .contains("Release \"db\" does not exist. Installing it now."));
    // No section when helm does not run.
    let again = job.bash(&gitlab_script(), &[("GITLAB_CI", "true")]);
    assert_eq!(lines(&again.stderr), [SKIP]);
    // None with --no-annotations either.
    job.replace_chart(&chart("demo-1.1.0"));
    let quiet = job.bash(
        &format!("{} --no-annotations", gitlab_script()),
        &[("GITLAB_CI", "true")],
    );
    quiet.expect_code(0, "quiet upgrade");
    assert!(!quiet.stderr.contains("section_"), "{}", quiet.stderr);
    assert_eq!(job.b.deployed("db", NS), ("1.1.0".into(), 2));
}

fn helmfile_recipe(label: &str) {
    let job = Job::new(label);
    // helmfile itself is not installed here: a stand-in runs the helm commands
    // `helmfile sync` runs for the recipe's helmfile.yaml, through whatever `helm` is on
    // PATH, exactly as helmfile does.
    let standin = job.b.home().join("bin").join("helmfile");
    std::fs::write(
        &standin,
        "#!/bin/sh\nset -e\n[ \"$1\" = sync ]\nhelm version --short >/dev/null\nhelm upgrade \
         --install db ./chart --namespace shared --values values.yaml --reset-values \
         --history-max 10\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&standin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = recipe_block("helmfile").join("\n");
    let summary = job.b.home().join("summary.md");
    let env = [
        ("GITHUB_ACTIONS", "true"),
        ("GITHUB_STEP_SUMMARY", summary.to_str().unwrap()),
    ];
    job.bash(&script, &env).expect_code(0, "helmfile sync");
    assert_eq!(job.b.deployed("db", NS), ("1.0.0".into(), 1));
    let again = job.bash(&script, &env);
    again.expect_code(0, "helmfile sync again");
    assert_eq!(lines(&again.stderr)[0], SKIP);
    assert!(lines(&again.stderr)[1].starts_with("::notice title=guarded-upgrade skipped"));
    // The shim's own switch.
    let quiet = job.bash(
        &script,
        &[
            ("GITHUB_ACTIONS", "true"),
            ("GUARDED_UPGRADE_NO_ANNOTATIONS", "true"),
        ],
    );
    assert_eq!(lines(&quiet.stderr), [SKIP]);
    no_secrets(&again);
}

crate::common::per_helm!(github_recipe, gitlab_recipe, helmfile_recipe);
