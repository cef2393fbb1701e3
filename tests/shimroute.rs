//! The shim routes helm's argv exactly as helm does (issue 25, item 8): a differential test
//! against helm's own command trees. `scripts/install-helmroute.sh` builds two small Go
//! programs (`testbed/helmroute`) on helm 3.21.4's and helm 4.3.2's command trees that
//! answer, per argv, which command cobra finds (`Find`, as helm's `main` runs it) and
//! whether it runs, shows its help or fails on its flags or arguments. Every global flag of
//! each helm (and every flag of `upgrade`) placed before `upgrade`, and a generated corpus
//! of argvs, go through both programs and through the shim's router
//! (`guarded_upgrade::helm_outcome`, `routes_to_guard`), which must agree:
//!
//! - helm runs `upgrade` → the shim says so, and guards it;
//! - helm shows `upgrade`'s help → the shim says so;
//! - helm finds another command, shows the root's help or finds no command → the shim
//!   says "not upgrade", and passes the argv through to helm when neither helm runs it;
//! - helm fails on `upgrade`'s flags or arguments → the shim may say "runs" (flag values
//!   are not type-checked) or "fails" (it guards, fail closed) or "help";
//! - helm fails before parsing (helm 4: a bad `--color`) → anything.
//!
//! The same flag table decides both: `core/flags.rs`'s `HELM_FLAGS`, which this test also
//! holds against each helm's own flags (name, shorthand, whether a value follows).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use guarded_upgrade::{helm_outcome, routes_to_guard, HelmOutcome};

/// helm's versions and where their programs are.
const HELMS: [(u8, &str); 2] = [(3, "v3.21.4"), (4, "v4.3.2")];

fn program(version: &str) -> PathBuf {
    let cache = std::env::var_os("GU_HELMROUTE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
            base.join("guarded-upgrade").join("helmroute")
        });
    let path = cache.join(version).join("helmroute");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/install-helmroute.sh (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Runs a helmroute program with `extra` args and `input` on stdin, in an empty helm home
/// (no plugins, no repositories).
fn ask(version: &str, extra: &[&str], input: &str) -> String {
    let home = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(program(version))
        .args(extra)
        .env_clear()
        .env("HOME", home.path())
        .env("HELM_PLUGINS", home.path().join("plugins"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start helmroute");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("helmroute");
    writer.join().unwrap().expect("write argvs");
    assert!(
        out.status.success(),
        "helmroute {version}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// One flag as helm's pflag holds it.
#[derive(serde::Deserialize, Debug, Clone)]
struct Flag {
    name: String,
    shorthand: String,
    no_opt_def_val: String,
    #[serde(rename = "type")]
    kind: String,
}

fn flags(version: &str) -> Vec<Flag> {
    serde_json::from_str(&ask(version, &["--flags"], "")).expect("flags JSON")
}

/// helm's answer for each argv.
fn outcomes(version: &str, argvs: &[Vec<String>]) -> Vec<String> {
    let input: String = argvs
        .iter()
        .map(|a| serde_json::to_string(a).unwrap() + "\n")
        .collect();
    let answers: Vec<String> = ask(version, &[], &input)
        .lines()
        .map(|l| serde_json::from_str(l).expect("answer JSON"))
        .collect();
    assert_eq!(answers.len(), argvs.len(), "one answer per argv");
    answers
}

/// A value helm accepts for a flag of this type.
fn sample_value(flag: &Flag) -> &'static str {
    match (flag.name.as_str(), flag.kind.as_str()) {
        ("color" | "colour", _) => "auto",
        (_, "int" | "int32" | "int64" | "uint" | "float32" | "float64" | "Level") => "5",
        (_, "duration") => "5m",
        (_, "severity") => "ERROR",
        (_, "traceLocation") => "x.go:1",
        (_, "moduleSpec") => "x=1",
        (_, "stringToString") => "a=b",
        _ => "x",
    }
}

/// Every spelling of one flag before `upgrade db ./chart`.
fn spellings(flag: &Flag) -> Vec<Vec<String>> {
    let takes_value = flag.no_opt_def_val.is_empty();
    let value = sample_value(flag);
    let mut out: Vec<Vec<&str>> = Vec::new();
    let long = format!("--{}", flag.name);
    let long_eq = format!(
        "--{}={}",
        flag.name,
        if takes_value { value } else { "true" }
    );
    let short = format!("-{}", flag.shorthand);
    let short_glued = format!("-{}{value}", flag.shorthand);
    let short_eq = format!("-{}={value}", flag.shorthand);
    if takes_value {
        out.push(vec![&long, value]);
        out.push(vec![&long_eq]);
        if !flag.shorthand.is_empty() {
            out.push(vec![&short, value]);
            out.push(vec![&short_glued]);
            out.push(vec![&short_eq]);
        }
        // The value is `upgrade` itself: cobra takes it as the value, not the command.
        out.push(vec![&long, "upgrade"]);
    } else {
        out.push(vec![&long]);
        out.push(vec![&long_eq]);
        if !flag.shorthand.is_empty() {
            out.push(vec![&short]);
        }
    }
    out.into_iter()
        .map(|words| {
            words
                .into_iter()
                .map(str::to_string)
                .chain(["upgrade", "db", "./chart"].map(String::from))
                .collect()
        })
        .collect()
}

/// Short argvs from a small alphabet, every one of length up to 3, and seeded random
/// ones from a larger alphabet up to length 8.
fn corpus() -> Vec<Vec<String>> {
    let small = [
        "upgrade",
        "db",
        "./c",
        "-h",
        "--help",
        "-f",
        "--",
        "-n",
        "--debug",
        "",
        "-",
        "list",
        "-i",
        "--description",
    ];
    let mut argvs: Vec<Vec<String>> = vec![vec![]];
    let mut frontier: Vec<Vec<String>> = vec![vec![]];
    for _ in 0..3 {
        let mut next = Vec::new();
        for argv in &frontier {
            for word in small {
                let mut longer = argv.clone();
                longer.push(word.to_string());
                next.push(longer);
            }
        }
        argvs.extend(next.iter().cloned());
        frontier = next;
    }
    let large = [
        "upgrade",
        "upgrade",
        "upgrade",
        "db",
        "./c",
        "./old",
        "-h",
        "--help",
        "--help=false",
        "-h=false",
        "-h=true",
        "-ih",
        "-hi",
        "-f",
        "v.yaml",
        "-fv.yaml",
        "-f=v.yaml",
        "--values",
        "--",
        "-n",
        "-nx",
        "-n=",
        "--namespace",
        "--namespace=x",
        "x",
        "--kube-context=c",
        "--kube-context",
        "--kubeconfig",
        "--debug",
        "--debug=false",
        "-i",
        "--install",
        "--install=maybe",
        "--wait",
        "--wait=watcher",
        "--wait=true",
        "--dry-run",
        "--dry-run=server",
        "--description",
        "--set",
        "a=b",
        "-l",
        "--labels=a=b",
        "-v",
        "3",
        "--v=3",
        "--color",
        "auto",
        "--colour=never",
        "--content-cache",
        "--unknown",
        "--unknown=1",
        "-x",
        "-",
        "",
        "list",
        "help",
        "template",
        "status",
        "-test.v",
        "--history-max",
        "5",
        "--timeout",
        "5m",
        "--server-side",
        "--force",
        "--atomic",
        "--rollback-on-failure",
        "--recreate-pods",
        "--logtostderr",
        "--add-dir-header",
        "--legacy-stderr-threshold-behavior",
        "--alsologtostderrthreshold",
        "-o",
        "json",
        "---x",
        "--=x",
        "-nupgrade",
        "--kube-insecure-skip-tls-verify",
    ];
    // A fixed-seed generator: the same corpus on every run.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..4000 {
        let len = 1 + (next() % 8) as usize;
        argvs.push(
            (0..len)
                .map(|_| large[(next() % large.len() as u64) as usize].to_string())
                .collect(),
        );
    }
    argvs
}

/// helm's answer as the router's class.
fn class(answer: &str) -> Option<HelmOutcome> {
    match answer {
        "run upgrade" => Some(HelmOutcome::RunUpgrade),
        "help upgrade" => Some(HelmOutcome::HelpUpgrade),
        "error flags upgrade" | "error args upgrade" => Some(HelmOutcome::ErrorUpgrade),
        // helm failed before parsing anything (helm 4's --color check): no class.
        "error root" => None,
        _ => Some(HelmOutcome::Other),
    }
}

/// Whether the router's answer `ours` agrees with helm's `theirs` (see the module doc).
fn agrees(theirs: Option<HelmOutcome>, ours: HelmOutcome) -> bool {
    use HelmOutcome::*;
    match theirs {
        None => true,
        Some(ErrorUpgrade) => ours != Other,
        Some(theirs) => theirs == ours,
    }
}

fn check(argvs: &[Vec<String>]) -> (usize, Vec<String>) {
    let answers: Vec<(u8, Vec<String>)> = HELMS
        .iter()
        .map(|&(major, version)| (major, outcomes(version, argvs)))
        .collect();
    let mut failures = Vec::new();
    let mut guarded = 0;
    for (n, argv) in argvs.iter().enumerate() {
        let os: Vec<OsString> = argv.iter().map(OsString::from).collect();
        let mut any_runs = false;
        for (major, answers) in &answers {
            let theirs = class(&answers[n]);
            let (ours, _) = helm_outcome(&os, *major);
            any_runs |= theirs == Some(HelmOutcome::RunUpgrade);
            if !agrees(theirs, ours) {
                failures.push(format!(
                    "{argv:?}: helm {major} says {:?}, the shim {ours:?}",
                    answers[n]
                ));
            }
        }
        let guards = routes_to_guard(&os);
        guarded += usize::from(guards);
        if any_runs && !guards {
            failures.push(format!(
                "{argv:?}: helm runs upgrade, the shim passes it through"
            ));
        }
        let anyone_finds_upgrade = answers
            .iter()
            .any(|(_, a)| a[n].ends_with(" upgrade") || a[n] == "error root");
        if guards && !anyone_finds_upgrade {
            failures.push(format!(
                "{argv:?}: helm runs {:?}, the shim guards it as upgrade",
                answers
                    .iter()
                    .map(|(_, a)| a[n].as_str())
                    .collect::<Vec<_>>()
            ));
        }
    }
    (guarded, failures)
}

fn report(what: &str, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{what}: {} disagreements, the first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(25)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Every global flag of helm 3.21.4 and 4.3.2, in every spelling, before `upgrade`; and
/// every flag of `upgrade` itself placed before it (where cobra reads it as unknown,
/// taking the next word as its value).
#[test]
fn every_flag_before_upgrade_routes_as_helm_does() {
    let mut argvs = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (_, version) in HELMS {
        for flag in flags(version) {
            if !seen.insert(flag.name.clone()) {
                continue;
            }
            argvs.extend(spellings(&flag));
        }
    }
    // Each global flag with a valid value runs upgrade in the helm that has it.
    let (guarded, failures) = check(&argvs);
    report("flags before upgrade", &failures);
    assert!(guarded > 100, "only {guarded} of {} guarded", argvs.len());
}

/// The generated corpus: every argv of up to three words from a small alphabet, and 4000
/// seeded ones of up to eight from a larger one.
#[test]
fn a_generated_corpus_routes_as_helm_does() {
    let argvs = corpus();
    let (guarded, failures) = check(&argvs);
    report("generated corpus", &failures);
    // Both routes occur: the corpus is not all one kind.
    assert!(guarded > 100 && guarded < argvs.len() - 100, "{guarded}");
}

/// The argvs of the issue, by name: flags before the subcommand, values that look like
/// flags, help placement.
#[test]
fn the_issue_cases_route_as_helm_does() {
    let cases: &[(&[&str], bool)] = &[
        (&["-f", "v.yaml", "upgrade", "db", "./old-chart"], true),
        (&["--namespace", "x", "upgrade", "db", "./c"], true),
        (&["--kube-context=c", "upgrade", "db", "./c"], true),
        (
            &["upgrade", "db", "./old-chart", "--description", "-h"],
            true,
        ),
        (&["upgrade", "db", "./c", "-h"], false),
        (&["upgrade", "db", "./c", "--", "-h"], true),
        (&["help", "upgrade"], false),
        (&["", "upgrade", "db", "./c"], true),
        (&["list"], false),
    ];
    let argvs: Vec<Vec<String>> = cases
        .iter()
        .map(|(a, _)| a.iter().map(|s| s.to_string()).collect())
        .collect();
    let (_, failures) = check(&argvs);
    report("issue cases", &failures);
    for (argv, guards) in cases {
        let os: Vec<OsString> = argv.iter().map(OsString::from).collect();
        assert_eq!(routes_to_guard(&os), *guards, "{argv:?}");
    }
}

/// `HELM_FLAGS` (through the router) against each helm's own flags: every flag helm has
/// is known to the router with helm's shorthand and arity, and the router knows no flag
/// of `upgrade` that helm lacks. Checked through routing: `--NAME` then `-h` shows help
/// exactly when helm reads `--NAME` as taking no value.
#[test]
fn the_flag_table_is_each_helms_own() {
    let mut failures = Vec::new();
    for (major, version) in HELMS {
        let helm: BTreeMap<String, Flag> = flags(version)
            .into_iter()
            .map(|f| (f.name.clone(), f))
            .collect();
        for flag in helm.values() {
            let takes_value = flag.no_opt_def_val.is_empty();
            let probe = |first: &str| -> Vec<OsString> {
                ["upgrade", "db", "./c", first, "-h"]
                    .iter()
                    .map(OsString::from)
                    .collect()
            };
            let (ours, _) = helm_outcome(&probe(&format!("--{}", flag.name)), major);
            // A value flag takes `-h` as its value (RELEASE and CHART remain: it runs);
            // a flag that takes none leaves `-h` to ask for help.
            let want = if takes_value {
                HelmOutcome::RunUpgrade
            } else {
                HelmOutcome::HelpUpgrade
            };
            if ours != want {
                failures.push(format!(
                    "helm {major}: --{} ({flag:?}): {ours:?}",
                    flag.name
                ));
            }
            if !flag.shorthand.is_empty() {
                let (ours, _) = helm_outcome(&probe(&format!("-{}", flag.shorthand)), major);
                if ours != want {
                    failures.push(format!(
                        "helm {major}: -{} ({flag:?}): {ours:?}",
                        flag.shorthand
                    ));
                }
            }
        }
        // A flag of the table helm lacks: the router would read a word helm calls unknown.
        for name in guarded_upgrade::helm_long_flags() {
            if name == "help" || helm.contains_key(name) {
                continue;
            }
            let argv: Vec<OsString> = ["upgrade", "db", "./c", &format!("--{name}=1")]
                .iter()
                .map(OsString::from)
                .collect();
            let (ours, _) = helm_outcome(&argv, major);
            if ours != HelmOutcome::ErrorUpgrade {
                failures.push(format!(
                    "helm {major} has no --{name}; the router: {ours:?}"
                ));
            }
        }
    }
    report("flag table", &failures);
}
