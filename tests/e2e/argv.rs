//! The command line is checked against what real helm accepts, before any I/O (issue 10).
//! Usage errors and the empty namespace are proven against the real API server (its audit
//! log shows no request, or the requests' paths).

use crate::common::{bed, chart};
use guarded_upgrade::helm_long_flags;
use kube_standin::testbed;
use std::process::Command;

/// Long flags (without `--`) that `helm upgrade --help` lists, global flags included.
fn listed_flags(helm: &std::path::Path) -> Vec<String> {
    let out = Command::new(helm)
        .args(["upgrade", "--help"])
        .output()
        .expect("helm upgrade --help");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut flags: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l
                .strip_prefix("-")
                .filter(|r| r.as_bytes().get(1) == Some(&b','))
                .map(|r| r[2..].trim_start())
                .unwrap_or(l);
            let name = l.strip_prefix("--")?;
            Some(name.split([' ', '=']).next()?.to_string())
        })
        .collect();
    flags.dedup();
    flags
}

/// Every flag any supported helm lists is known to the splitter, and every flag the splitter
/// passes on is accepted by at least one of them (none invented, none missing). The oldest
/// and the newest of each major version: newer ones add flags (klog's
/// `--alsologtostderrthreshold` first appears in 3.21.4/4.3.2).
#[test]
fn flag_tables_match_every_supported_helm() {
    let mut helms = testbed::helms();
    helms.push(("helm3-newest", testbed::helm_newest3()));
    helms.push(("helm4-newest", testbed::helm_newest4()));
    let ours: Vec<&str> = helm_long_flags().collect();
    let mut listed_anywhere = Vec::new();
    for (label, bin) in &helms {
        let listed = listed_flags(bin);
        assert!(listed.len() > 40, "{label}: parsed only {listed:?}");
        for flag in &listed {
            assert!(
                ours.contains(&flag.as_str()),
                "{label} lists --{flag}, the splitter does not know it"
            );
        }
        listed_anywhere.extend(listed);
    }
    // Hidden ones (klog's, helm 3's deprecated --recreate-pods) are not listed: ask helm.
    for flag in ours
        .iter()
        .filter(|f| !listed_anywhere.iter().any(|l| l == *f))
    {
        let accepted = helms.iter().any(|(_, bin)| {
            let out = Command::new(bin)
                .args(["upgrade", &format!("--{flag}=1"), "r", "/nonexistent-chart"])
                .env("KUBECONFIG", "/nonexistent")
                .output()
                .expect("run helm");
            !String::from_utf8_lossy(&out.stderr).contains("unknown flag")
        });
        assert!(accepted, "--{flag} is accepted by neither helm");
    }
}

/// A misspelt guard flag is a usage error before any request, with a suggestion; an
/// unexpected extra argument is named by position, not echoed.
#[test]
fn unknown_flags_and_stray_arguments_fail_before_any_io() {
    let b = bed("helm4");
    let cases: &[(&[&str], &str)] = &[
        (
            &["--no-serialise"],
            "guarded-upgrade: error: unknown flag --no-serialise: neither `helm upgrade` (helm 3 \
             or 4) nor guarded-upgrade has it; did you mean --no-serialize?",
        ),
        (
            &["--pasword", "s3cr3t"],
            "guarded-upgrade: error: unknown flag --pasword: neither `helm upgrade` (helm 3 or 4) \
             nor guarded-upgrade has it; did you mean --password?",
        ),
        (
            &["s3cr3t"],
            "guarded-upgrade: error: too many arguments: expected RELEASE CHART, got 1 more at \
             position 3 (counting from 1 after the subcommand; values not shown); quote values \
             that contain spaces and check for a misspelt flag or one missing its `--`",
        ),
        (
            &["--no-serialize", "--lock-timeout", "1m"],
            "guarded-upgrade: error: --no-serialize cannot be combined with --lock-timeout: \
             without the mutex there is nothing to wait for",
        ),
    ];
    let c = chart("demo-1.0.0");
    for (extra, want) in cases {
        for sub in ["upgrade", "check"] {
            b.api.clear_requests();
            let mut args = vec![sub, "db", c.as_str()];
            args.extend_from_slice(extra);
            let run = b.guard(&args);
            run.expect_code(2, &format!("{args:?}"));
            assert_eq!(run.stderr.lines().collect::<Vec<_>>(), [*want], "{args:?}");
            assert!(!run.stderr.contains("s3cr3t"));
            assert!(
                b.api.requests().is_empty(),
                "{args:?}: {:?}",
                b.api.requests()
            );
        }
    }
}

/// `-n ''` means the kubeconfig context's namespace, as in helm; never `/namespaces//`.
fn empty_namespace_means_the_context_namespace(label: &str) {
    let b = bed(label);
    b.guard(&["upgrade", "--install", "db", &chart("demo-1.0.0"), "-n", ""])
        .expect_code(0, "install with -n ''");
    let paths: Vec<String> = b.api.requests().into_iter().map(|r| r.path).collect();
    assert!(
        paths.iter().all(|p| !p.contains("/namespaces//")),
        "{paths:?}"
    );
    assert!(
        paths
            .iter()
            .any(|p| p.contains("/namespaces/default/secrets")),
        "{paths:?}"
    );
    assert_eq!(b.deployed("db", "default"), ("1.0.0".into(), 1));
}

crate::common::per_helm!(empty_namespace_means_the_context_namespace);
