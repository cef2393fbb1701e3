//! The documentation names only files that exist: every repository path in `README.md`
//! and `docs/*.md` (`src/storage/sql.rs`, `tests/e2e/guard.rs`, `docs/shim.md`, a bare
//! `mutex.rs`, a brace list `commands/{lock,unlock}.rs`, a folder `src/cluster/`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The repository's top-level folders: a word starting with one of these is a path.
const TOP_LEVEL: &[&str] = &[
    "src/",
    "tests/",
    "docs/",
    "scripts/",
    "benches/",
    "fixtures/",
    "standin/",
    "testbed/",
    ".ci/",
];

/// Extensions of the files the docs name.
const EXTENSIONS: &[&str] = &[".rs", ".md", ".sh", ".yaml", ".toml", ".json"];

/// Files the docs name that are the user's, not the repository's.
/// (and the release artifacts scripts/release.sh writes into dist/).
const USER_FILES: &[&str] = &["helmfile.yaml", "INSTALL.md", ".cdx.json"];

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_./{},-".contains(c)
}

/// `commands/{lock,unlock}.rs` -> `commands/lock.rs`, `commands/unlock.rs`.
fn expand_braces(word: &str) -> Vec<String> {
    match (word.find('{'), word.find('}')) {
        (Some(open), Some(close)) if open < close => word[open + 1..close]
            .split(',')
            .map(|part| format!("{}{part}{}", &word[..open], &word[close + 1..]))
            .collect(),
        _ => vec![word.to_string()],
    }
}

/// The path-like words of `text`: rooted in a top-level folder, or ending in a known
/// extension (`./scripts/test.sh` is `scripts/test.sh`). Absolute words and words right
/// after `~`, `$` or `:` (home, variable, URL) are not repository paths.
fn named_paths(text: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut previous = ' ';
    let mut word = String::new();
    let mut word_follows = ' ';
    for c in text.chars().chain(std::iter::once(' ')) {
        if is_path_char(c) {
            if word.is_empty() {
                word_follows = previous;
            }
            word.push(c);
        } else if !word.is_empty() {
            let trimmed = word.trim_end_matches(['.', ',']).trim_start_matches(',');
            let trimmed = trimmed.strip_prefix("./").unwrap_or(trimmed);
            let absolute = trimmed.starts_with('/');
            let rooted = TOP_LEVEL.iter().any(|dir| trimmed.starts_with(dir));
            // A stem before the extension: `<verb>.rs` is a pattern, not a file.
            let named_file = EXTENSIONS.iter().any(|ext| {
                trimmed.strip_suffix(ext).is_some_and(|stem| {
                    stem.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '}')
                })
            });
            if !absolute && !"~$:".contains(word_follows) && (rooted || named_file) {
                paths.extend(expand_braces(trimmed));
            }
            word.clear();
        }
        previous = c;
    }
    paths
}

/// Every file and folder of the repository, as paths relative to its root.
fn repository_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy();
        if name == ".git" || name == "target" {
            continue;
        }
        found.push(path.strip_prefix(ROOT).unwrap().to_path_buf());
        if path.is_dir() {
            repository_files(&path, found);
        }
    }
}

fn exists(named: &str, files: &[PathBuf]) -> bool {
    let named = named.trim_end_matches('/');
    if named.contains('/') {
        // Rooted, or relative to `src/` as the architecture doc writes module paths.
        files
            .iter()
            .any(|f| f == Path::new(named) || f == &Path::new("src").join(named))
    } else {
        USER_FILES.contains(&named)
            || files
                .iter()
                .any(|f| f.file_name().is_some_and(|n| n == named))
    }
}

#[test]
fn every_path_named_in_the_docs_exists() {
    let mut files = Vec::new();
    repository_files(Path::new(ROOT), &mut files);
    let mut docs: Vec<PathBuf> = vec![PathBuf::from("README.md")];
    docs.extend(
        std::fs::read_dir(Path::new(ROOT).join("docs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "md"))
            .map(|p| p.strip_prefix(ROOT).unwrap().to_path_buf()),
    );
    let mut missing = BTreeSet::new();
    for doc in &docs {
        let text = std::fs::read_to_string(Path::new(ROOT).join(doc)).unwrap();
        for named in named_paths(&text) {
            if !exists(&named, &files) {
                missing.insert(format!("{}: {named}", doc.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the docs name files that do not exist:\n{}",
        missing.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn path_words_are_found_and_urls_are_not() {
    assert_eq!(
        named_paths(
            "see `src/storage/sql.rs`, `commands/{lock,unlock}.rs` and cluster.rs; \
             https://example.com/x.md ~/.cache/a.sh $HOME/b.rs /etc/c.yaml <verb>.rs docs/."
        ),
        [
            "src/storage/sql.rs",
            "commands/lock.rs",
            "commands/unlock.rs",
            "cluster.rs",
            "docs/"
        ]
    );
    let files = [
        PathBuf::from("src/cluster/mod.rs"),
        PathBuf::from("src/cluster"),
    ];
    assert!(exists("cluster/mod.rs", &files));
    assert!(exists("src/cluster/", &files));
    assert!(!exists("cluster.rs", &files));
    assert!(!exists("src/sql_conn.rs", &files));
}

/// The e2e test names of a table: backticked `module::…::name` paths in its last column
/// (`freeze::helm3::frozen_release_refuses_every_change`), with the rows that name none.
fn table_tests(text: &str, heading: &str) -> (Vec<String>, Vec<String>) {
    let start = text
        .find(heading)
        .unwrap_or_else(|| panic!("no heading {heading:?}"));
    let mut names = Vec::new();
    let mut without = Vec::new();
    let rows = text[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2);
    for row in rows {
        let last = row
            .trim_end_matches('|')
            .rsplit('|')
            .next()
            .unwrap_or_default();
        let found: Vec<String> = last
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|w| {
                w.contains("::")
                    && w.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            })
            .map(String::from)
            .collect();
        if found.is_empty() {
            without.push(row.to_string());
        }
        names.extend(found);
    }
    (names, without)
}

/// The helm modules the e2e macros make (`per_helm!`, `per_helm_compat!`).
const HELM_MODULES: &[&str] = &["helm3", "helm4", "helm3_17", "helm4_1"];

/// Whether `tests/e2e/<module>.rs` has the test `path` names: the scenario function, run by
/// a `per_helm!`/`per_helm_compat!` (the compat one for `helm3_17`/`helm4_1`) inside every
/// named module.
fn e2e_test_exists(path: &str) -> Result<(), String> {
    let parts: Vec<&str> = path.split("::").collect();
    let (file, rest) = parts.split_first().ok_or("empty")?;
    let (name, modules) = rest.split_last().ok_or("no test name")?;
    let source = std::fs::read_to_string(Path::new(ROOT).join(format!("tests/e2e/{file}.rs")))
        .map_err(|e| format!("tests/e2e/{file}.rs: {e}"))?;
    if !source.contains(&format!("fn {name}(label: &str)")) {
        return Err(format!("tests/e2e/{file}.rs has no scenario fn {name}"));
    }
    let helm = modules
        .last()
        .filter(|m| HELM_MODULES.contains(m))
        .ok_or_else(|| format!("{path}: the last module is not one of {HELM_MODULES:?}"))?;
    for m in &modules[..modules.len() - 1] {
        if !source.contains(&format!("mod {m} {{")) {
            return Err(format!("tests/e2e/{file}.rs has no mod {m}"));
        }
    }
    let macro_name = if ["helm3_17", "helm4_1"].contains(helm) {
        "per_helm_compat!("
    } else {
        "per_helm"
    };
    let run = source.match_indices(macro_name).any(|(at, _)| {
        let args = &source[at..];
        let args = &args[..args.find(')').unwrap_or(args.len())];
        args.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|w| w == *name)
    });
    if !run {
        return Err(format!(
            "tests/e2e/{file}.rs does not run {name} with {macro_name}"
        ));
    }
    Ok(())
}

/// docs/locks.md's table of what an enforced hard lock refuses: every row names a test,
/// and every named test exists.
#[test]
fn every_row_of_the_freeze_table_names_an_existing_test() {
    let text = std::fs::read_to_string(Path::new(ROOT).join("docs/locks.md")).unwrap();
    let (names, without) = table_tests(
        &text,
        "#### What an enforced hard lock refuses, for whom, and what it leaves alone",
    );
    assert!(
        without.is_empty(),
        "rows without a test:\n{}",
        without.join("\n")
    );
    assert!(names.len() >= 10, "{names:?}");
    let missing: Vec<String> = names
        .iter()
        .filter_map(|n| e2e_test_exists(n).err())
        .collect();
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn table_tests_are_read_from_the_last_column() {
    let text =
        "#### T\n\n| a | test |\n|---|---|\n| x `a::b` | `freeze::helm3::f` (and `helm4`) |\n\
                | y | — |\n\nafter\n";
    let (names, without) = table_tests(text, "#### T");
    assert_eq!(names, ["freeze::helm3::f"]);
    assert_eq!(without, ["| y | — |"]);
    assert!(e2e_test_exists("freeze::helm3::frozen_release_refuses_every_change").is_ok());
    assert!(e2e_test_exists("freeze::helm3::no_such_test").is_err());
    assert!(e2e_test_exists("freeze::nomod::helm3::frozen_release_refuses_every_change").is_err());
    assert!(e2e_test_exists("freeze::helm3_17::frozen_release_refuses_every_change").is_err());
}

/// The end-to-end test paths a doc names in backticks, anywhere (not only the freeze
/// table): `::`-joined words whose module before the last is a helm module or `*` (any of
/// them), e.g. `wait::*::long_wait_keeps_the_mutex`, `wait::compat::*::rollout_never_ready`,
/// `freeze::cluster::helm3::frozen_release_in_a_running_cluster`. `*` reads as `helm3`,
/// which every `per_helm!` makes.
fn named_tests(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for span in text.split('`').skip(1).step_by(2) {
        let parts: Vec<&str> = span.split("::").collect();
        let word = |p: &&str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '*')
        };
        if parts.len() < 3 || !parts.iter().all(word) {
            continue;
        }
        let module = parts[parts.len() - 2];
        let last = parts[parts.len() - 1];
        if (module == "*" || HELM_MODULES.contains(&module)) && !last.contains('*') {
            found.push(span.replace('*', "helm3"));
        }
    }
    found
}

/// The docs' proofs are tests that exist: every test path any doc names is a scenario of
/// that `tests/e2e/` file, run by its helm macro ([`e2e_test_exists`]).
#[test]
fn every_e2e_test_named_in_the_docs_exists() {
    let mut docs = vec![Path::new(ROOT).join("README.md")];
    docs.extend(
        std::fs::read_dir(Path::new(ROOT).join("docs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "md")),
    );
    let mut missing = BTreeSet::new();
    let mut checked = 0;
    for doc in &docs {
        let text = std::fs::read_to_string(doc).unwrap();
        for path in named_tests(&text) {
            checked += 1;
            if let Err(e) = e2e_test_exists(&path) {
                let name = doc.strip_prefix(ROOT).unwrap().display();
                missing.insert(format!("{name}: {path}: {e}"));
            }
        }
    }
    assert!(checked > 10, "only {checked} test paths found in the docs");
    assert!(
        missing.is_empty(),
        "the docs name tests that do not exist (or are not run) in tests/e2e/:\n{}",
        missing.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn test_paths_are_found_and_code_paths_are_not() {
    assert_eq!(
        named_tests(
            "`wait::*::long_wait_keeps_the_mutex`, `freeze::cluster::helm3::frozen`, \
             `mutex::observe`, `state::read_release`, `freeze::…`, `a::*::*`, \
             `proptests::the_guard_never_runs_helm`, `wait::compat::*::rollout_never_ready`"
        ),
        [
            "wait::helm3::long_wait_keeps_the_mutex",
            "freeze::cluster::helm3::frozen",
            "wait::compat::helm3::rollout_never_ready",
        ]
    );
    assert!(e2e_test_exists("wait::compat::helm3::rollout_never_ready").is_ok());
    assert!(e2e_test_exists("wait::helm3::no_such_test").is_err());
}
