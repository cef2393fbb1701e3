//! Usage errors: every malformed command line exits 2 with a line naming the flag and value,
//! before any I/O. Each runs with no kubeconfig at all (no `KUBECONFIG`, an empty `HOME`)
//! and `HELM_KUBEAPISERVER` pointing at the real API server (with `HELM_KUBECAFILE` and
//! `HELM_KUBETOKEN`, so a request would be served), whose audit log must stay empty. A
//! well-formed command in the same environment does reach the server, so the empty log is
//! not an accident of the environment.

use crate::common::{bed, guard_bin, run, Bed, Run};

/// How the expected error is checked.
enum Expect {
    /// Our own usage error: stderr is exactly `guarded-upgrade: error: {0}`.
    Ours(&'static str),
    /// clap's error: its first line exactly (the rest is clap's usage hint).
    Clap(&'static str),
}

/// Malformed command lines and the line each must print. The chart path does not exist:
/// a usage error must not look at it either.
const CASES: &[(&[&str], Expect)] = &[
    (
        &["upgrade", "db", "./no-chart", "--lock-timeout", "bogus"],
        Expect::Ours(
            "invalid value \"bogus\" for --lock-timeout: expected a duration such as 90s, 5m, \
             2h or 1d",
        ),
    ),
    (
        &["check", "db", "./no-chart", "--lease-duration=5x"],
        Expect::Ours(
            "invalid value \"5x\" for --lease-duration: expected a duration such as 90s, 5m, \
             2h or 1d",
        ),
    ),
    (
        &[
            "upgrade",
            "db",
            "./no-chart",
            "--recover-pending-after",
            "soon",
        ],
        Expect::Ours(
            "invalid value \"soon\" for --recover-pending-after: expected a duration such as \
             90s, 5m, 2h or 1d",
        ),
    ),
    (
        &[
            "upgrade",
            "db",
            "./no-chart",
            "--min-version-policy",
            "older",
        ],
        Expect::Ours(
            "--min-version-policy: unknown version policy \"older\": use one of newer, \
             newer-or-equal, newer-or-changed, off",
        ),
    ),
    (
        &["check", "db", "./no-chart", "-o", "yaml"],
        Expect::Ours("invalid value \"yaml\" for -o: expected text or json"),
    ),
    (
        &["check", "db", "./no-chart", "--output=xml"],
        Expect::Ours("invalid value \"xml\" for --output: expected text or json"),
    ),
    (
        &["upgrade", "db", "./no-chart", "--decision-output", "yaml"],
        Expect::Ours("invalid value \"yaml\" for --decision-output: expected text or json"),
    ),
    (
        &["status", "db", "-o", "yaml"],
        Expect::Clap("error: invalid value 'yaml' for '--output <OUTPUT>'"),
    ),
    (
        &["locks", "-A", "--output", "table"],
        Expect::Clap("error: invalid value 'table' for '--output <OUTPUT>'"),
    ),
    (
        &["lock", "db", "--pin", "not a version"],
        Expect::Clap(
            "error: invalid value 'not a version' for '--pin <VERSION|CONSTRAINT>': neither a \
             version nor a version constraint (examples: 1.4.3, 1.4.x, \">=1.4 <2\", ^1.4)",
        ),
    ),
    (
        &["lock", "db", "--expires", "soon"],
        Expect::Clap(
            "error: invalid value 'soon' for '--expires <DURATION|TIMESTAMP>': neither a \
             duration (90s, 30m, 4h, 7d) nor an RFC 3339 timestamp (2026-12-01T00:00:00Z)",
        ),
    ),
    (
        &["lock", "db", "--expires", "2001-01-01T00:00:00Z"],
        Expect::Ours(
            "--expires is not in the future (2001-01-01T00:00:00Z); a lock must expire later \
             than now",
        ),
    ),
    (
        &["upgrade", "--install"],
        Expect::Ours("missing RELEASE and CHART: usage is `upgrade [flags] RELEASE CHART`"),
    ),
    (
        &["upgrade", "db", "-n", "shared"],
        Expect::Ours("missing CHART: usage is `upgrade [flags] RELEASE CHART`"),
    ),
    (
        &["check", "db"],
        Expect::Ours("missing CHART: usage is `check [flags] RELEASE CHART`"),
    ),
    (
        &["upgrade", "db", "./no-chart", "extra"],
        Expect::Ours(
            "too many arguments: expected RELEASE CHART, got 1 more at position 3 (counting \
             from 1 after the subcommand; values not shown); quote values that contain spaces \
             and check for a misspelt flag or one missing its `--`",
        ),
    ),
    (
        &["upgrade", "db", "./no-chart", "--no-serialise"],
        Expect::Ours(
            "unknown flag --no-serialise: neither `helm upgrade` (helm 3 or 4) nor \
             guarded-upgrade has it; did you mean --no-serialize?",
        ),
    ),
    (
        // A misspelt flag's value is never echoed.
        &["upgrade", "db", "./no-chart", "--pasword", "s3cr3t"],
        Expect::Ours(
            "unknown flag --pasword: neither `helm upgrade` (helm 3 or 4) nor guarded-upgrade \
             has it; did you mean --password?",
        ),
    ),
    (
        &[
            "upgrade",
            "db",
            "./no-chart",
            "--no-serialize",
            "--lock-timeout",
            "5s",
        ],
        Expect::Ours(
            "--no-serialize cannot be combined with --lock-timeout: without the mutex there is \
             nothing to wait for",
        ),
    ),
    (
        &["upgrade", "DB_1", "./no-chart"],
        Expect::Ours(
            "release name \"DB_1\" contains 'D' at position 1; helm allows lowercase letters, \
             digits, '-' and '.', starting and ending each '.'-separated part with a letter or \
             digit, at most 53 characters",
        ),
    ),
    (
        &["lock", "db", "-n", "a/b?x"],
        Expect::Ours(
            "namespace \"a/b?x\" contains '/' at position 2; a namespace is a DNS-1123 label: \
             lowercase letters, digits and '-', starting and ending with a letter or digit, at \
             most 63 characters",
        ),
    ),
    (
        &[
            "upgrade",
            "db",
            "./no-chart",
            "-l",
            "guarded-upgrade.io/pin=2.x",
        ],
        Expect::Ours(
            "-l sets the label \"guarded-upgrade.io/pin\": keys under `guarded-upgrade.io/` \
             hold the release's lock and are not set through helm; change a lock with \
             `guarded-upgrade lock` and lift it with `guarded-upgrade unlock`",
        ),
    ),
    (
        // The shim (`helm -n x upgrade …` as `guarded-upgrade helm -- …`), a deletion.
        &[
            "helm",
            "--",
            "-n",
            "shared",
            "upgrade",
            "db",
            "./no-chart",
            "--labels=guarded-upgrade.io/lock=null",
        ],
        Expect::Ours(
            "--labels sets the label \"guarded-upgrade.io/lock\": keys under \
             `guarded-upgrade.io/` hold the release's lock and are not set through helm; change \
             a lock with `guarded-upgrade lock` and lift it with `guarded-upgrade unlock`",
        ),
    ),
    (
        &["status", "db", "extra"],
        Expect::Clap("error: unexpected argument 'extra' found"),
    ),
    (
        &["lock", "db", "--frobnicate"],
        Expect::Clap("error: unexpected argument '--frobnicate' found"),
    ),
];

/// Requests the stand-in logged, one line each, for failure messages.
fn logged(b: &Bed) -> Vec<String> {
    b.api
        .requests()
        .iter()
        .map(|r| format!("{} {}?{} -> {}", r.method, r.path, r.query, r.status))
        .collect()
}

/// guarded-upgrade with no kubeconfig anywhere (no `KUBECONFIG`, an empty `HOME`), only
/// `HELM_KUBEAPISERVER` (plus, on the real server, its CA file and the admin's token).
fn no_kubeconfig(b: &Bed, argv: &[&str]) -> Run {
    if !b.api.is_real() {
        return b.guard_no_kubeconfig(argv);
    }
    let real = b.api.real();
    let home = tempfile::tempdir().expect("tempdir");
    let ca = real.ca_file();
    run(std::process::Command::new(guard_bin())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("HELM_KUBEAPISERVER", real.url())
        .env("HELM_KUBECAFILE", &ca)
        .env("HELM_KUBETOKEN", real.admin_token())
        .env("HELM_BIN", &b.helm_bin)
        .args(argv))
}

fn check_case(b: &Bed, argv: &[&str], expect: &Expect) -> Run {
    b.api.clear_requests();
    let run = no_kubeconfig(b, argv);
    run.expect_code(2, &format!("{argv:?}"));
    match expect {
        Expect::Ours(message) => run.assert_error(message),
        Expect::Clap(line) => run.assert_first_stderr_line(line),
    };
    assert!(
        run.stdout.is_empty(),
        "{argv:?}: nothing on stdout: {}",
        run.stdout
    );
    assert_eq!(
        logged(b),
        Vec::<String>::new(),
        "{argv:?}: a usage error must not reach the API"
    );
    run
}

/// Every malformed command line: exit 2, its line, zero API requests.
fn malformed_command_lines(label: &str) {
    let b = bed(label);
    assert!(CASES.len() >= 10);
    for (argv, expect) in CASES {
        check_case(&b, argv, expect);
    }
    // clap names a missing RELEASE on the line after its first.
    for verb in ["lock", "unlock", "status"] {
        let run = check_case(
            &b,
            &[verb],
            &Expect::Clap("error: the following required arguments were not provided:"),
        );
        run.assert_stderr_line("  <RELEASE>");
    }
}

/// The same environment is enough to reach the server: a well-formed `status` makes API
/// requests (here: the release is not in the default namespace).
fn well_formed_command_reaches_the_api(label: &str) {
    let b = bed(label);
    b.api.clear_requests();
    let run = no_kubeconfig(&b, &["status", "db"]);
    assert!(
        !b.api.requests().is_empty(),
        "status made no API request; stderr:\n{}",
        run.stderr
    );
    run.expect_code(3, "status of a release that is not there");
    run.assert_error(
        "release \"db\" not found in namespace \"default\" (Secret records); nothing changed. \
         Check the name, -n/--namespace and HELM_DRIVER",
    );
}

crate::common::per_helm!(malformed_command_lines, well_formed_command_reaches_the_api);
