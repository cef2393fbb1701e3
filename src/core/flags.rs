//! The command line's two tables: the guard's own flags of `upgrade`/`check`, and helm's
//! flags of `helm upgrade`.
//!
//! Every surface that names a guard flag is derived from [`GUARD_FLAGS`]: the argv
//! splitter and its "did you mean" suggestions (`argv.rs`), `--help`, the man page and the
//! shell completions (`cli::command`), the helm plugin's `completion.yaml`, and the shim's
//! `GUARDED_UPGRADE_*` settings (`shim.rs`). Adding a flag is one row here; tests fail
//! when a derived surface (or the README's table) disagrees. [`HELM_FLAGS`] is shared the
//! same way by the splitter and the shim's router (with the helm versions of each flag);
//! its cluster rows ([`ClusterFlag`]: `-n`, `--kube-context`, `--kubeconfig`, …, `--debug`)
//! are the one definition of each cluster flag: the splitter fills [`ClusterValues`] from
//! helm's argv, clap from the lock commands' argv (`adapters/cluster`), and `HelmEnv` from
//! the row's `HELM_*` variable.

use std::time::Duration;

use crate::core::decision::{CompareKey, VersionRule, VersionRuleError};

/// Which subcommand the arguments belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `guarded-upgrade upgrade`: `-o/--output` belong to helm.
    Upgrade,
    /// `guarded-upgrade check`: `-o/--output` select our decision format.
    Check,
}

impl Mode {
    /// The subcommand's name.
    pub(crate) fn verb(self) -> &'static str {
        match self {
            Mode::Upgrade => "upgrade",
            Mode::Check => "check",
        }
    }
}

/// Our own flags, removed from the helm command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuardOptions {
    /// `--min-version-policy newer|newer-or-equal|newer-or-changed|off`.
    pub version_rule: VersionRule,
    /// `--allow-chart-change`.
    pub allow_chart_change: bool,
    /// `--helm PATH`: the helm binary to run.
    pub helm: Option<String>,
    /// Decision format `text` or `json`: `--decision-output` (both modes) or
    /// `-o/--output` (check mode only).
    pub output: Option<String>,
    /// `--decision-file PATH`: also write the decision there.
    pub decision_file: Option<String>,
    /// `--detailed-exitcode`: distinct exit codes for skip outcomes.
    pub detailed_exitcode: bool,
    /// `--no-serialize`: do not take the per-release lease.
    pub no_serialize: bool,
    /// `--mutex-timeout DURATION` (formerly `--lock-timeout`).
    pub mutex_timeout: Option<Duration>,
    /// `--recover-pending-after DURATION`.
    pub recover_pending_after: Option<Duration>,
    /// `--lease-duration D`: duration of the mutex Lease.
    pub lease_duration: Option<Duration>,
    /// `--no-annotations`: no CI annotations, step summary or log sections.
    pub no_annotations: bool,
    /// `--input-timeout DURATION`: how long a read-once input's writer may take.
    pub input_timeout: Option<Duration>,
    /// `--compare chart-version|app-version|value:PATH`.
    pub compare: CompareKey,
}

/// Why a value was refused, without the flag or variable it was given to (the caller
/// names that).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BadValue {
    /// The value is not one of these.
    Expected(&'static str),
    /// An unknown version policy.
    VersionRule(VersionRuleError),
}

/// What a guard flag takes after its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Takes {
    /// Nothing; `=true|false` is optional (pflag booleans).
    Switch,
    /// A value: the next argument or `=value`.
    Value {
        /// How help and man pages name it.
        name: &'static str,
        /// The closed set of values, when there is one (help and completions list them).
        choices: &'static [&'static str],
    },
}

/// One guard flag: everything each surface needs to know about it.
#[derive(Debug)]
pub(crate) struct GuardFlag {
    /// The long name, without `--`.
    pub long: &'static str,
    /// The one-letter name, if any.
    pub short: Option<char>,
    /// What follows the flag.
    pub takes: Takes,
    /// The shim's environment variable for it (the shim reads no guard flags).
    pub env: Option<&'static str>,
    /// `check` only (otherwise `upgrade` and `check`).
    pub check_only: bool,
    /// One sentence for `--help`, the man page and completions.
    pub help: &'static str,
    /// Stores the value (`None`: a switch given without `=value`).
    pub apply: fn(&mut GuardOptions, Option<&str>) -> Result<(), BadValue>,
}

impl GuardFlag {
    /// Whether `mode`'s command line takes this flag.
    pub(crate) fn applies_to(&self, mode: Mode) -> bool {
        !self.check_only || mode == Mode::Check
    }
}

/// Every guard flag, in the order help and completions list them.
pub(crate) const GUARD_FLAGS: &[GuardFlag] = &[
    GuardFlag {
        long: "min-version-policy",
        short: None,
        takes: Takes::Value {
            name: "POLICY",
            choices: VersionRule::NAMES,
        },
        env: Some("GUARDED_UPGRADE_POLICY"),
        check_only: false,
        help: "newer (default): the target must be greater than the deployed version; \
               newer-or-equal: also re-apply the same version; newer-or-changed: re-apply the \
               same version only when the release helm would write differs; off: no version \
               guard (locks still apply)",
        apply: |o, v| {
            o.version_rule =
                VersionRule::parse(v.unwrap_or_default()).map_err(BadValue::VersionRule)?;
            Ok(())
        },
    },
    GuardFlag {
        long: "compare",
        short: None,
        takes: Takes::Value {
            name: "KEY",
            choices: &[],
        },
        env: Some("GUARDED_UPGRADE_COMPARE"),
        check_only: false,
        help: "the key whose version order is guarded: chart-version (default), app-version, \
               or value:PATH (e.g. value:image.tag, from the values helm would use)",
        apply: |o, v| {
            o.compare = CompareKey::parse(v.unwrap_or_default()).map_err(|_| {
                BadValue::Expected(
                    "chart-version, app-version or value:PATH (e.g. value:image.tag)",
                )
            })?;
            Ok(())
        },
    },
    GuardFlag {
        long: "allow-chart-change",
        short: None,
        takes: Takes::Switch,
        env: Some("GUARDED_UPGRADE_ALLOW_CHART_CHANGE"),
        check_only: false,
        help: "permit a different chart name than the deployed one",
        apply: |o, v| {
            o.allow_chart_change = switch(v)?;
            Ok(())
        },
    },
    GuardFlag {
        long: "helm",
        short: None,
        takes: Takes::Value {
            name: "PATH",
            choices: &[],
        },
        env: Some("GUARDED_UPGRADE_HELM"),
        check_only: false,
        help: "the helm binary (default: $HELM_BIN, else `helm` on PATH; the shim: the next \
               `helm` on PATH that is not the shim)",
        apply: |o, v| {
            o.helm = v.map(str::to_string);
            Ok(())
        },
    },
    GuardFlag {
        long: "decision-file",
        short: None,
        takes: Takes::Value {
            name: "PATH",
            choices: &[],
        },
        env: Some("GUARDED_UPGRADE_DECISION_FILE"),
        check_only: false,
        help: "also write the decision as one JSON object to PATH (`-`: stderr)",
        apply: |o, v| {
            o.decision_file = v.map(str::to_string);
            Ok(())
        },
    },
    GuardFlag {
        long: "decision-output",
        short: None,
        takes: Takes::Value {
            name: "FORMAT",
            choices: OUTPUT_FORMATS,
        },
        env: Some("GUARDED_UPGRADE_DECISION_OUTPUT"),
        check_only: false,
        help: "json: also print the decision JSON on stderr (helm owns stdout)",
        apply: output_format,
    },
    GuardFlag {
        long: "output",
        short: Some('o'),
        takes: Takes::Value {
            name: "FORMAT",
            choices: OUTPUT_FORMATS,
        },
        env: None,
        check_only: true,
        help: "json: print the decision as one JSON object on stdout",
        apply: output_format,
    },
    GuardFlag {
        long: "detailed-exitcode",
        short: None,
        takes: Takes::Switch,
        env: Some("GUARDED_UPGRADE_DETAILED_EXITCODE"),
        check_only: false,
        help: "distinct exit codes for skipped (10) and changed (11)",
        apply: |o, v| {
            o.detailed_exitcode = switch(v)?;
            Ok(())
        },
    },
    GuardFlag {
        long: "no-serialize",
        short: None,
        takes: Takes::Switch,
        env: Some("GUARDED_UPGRADE_NO_SERIALIZE"),
        check_only: false,
        help: "do not take the per-release cluster mutex",
        apply: |o, v| {
            o.no_serialize = switch(v)?;
            Ok(())
        },
    },
    GuardFlag {
        long: "mutex-timeout",
        short: None,
        takes: Takes::Value {
            name: "DURATION",
            choices: &[],
        },
        env: Some("GUARDED_UPGRADE_MUTEX_TIMEOUT"),
        check_only: false,
        help: "how long to wait for another run's mutex (default 5m)",
        apply: |o, v| {
            o.mutex_timeout = Some(duration(v, DurationKind::Wait)?);
            Ok(())
        },
    },
    GuardFlag {
        long: "lease-duration",
        short: None,
        takes: Takes::Value {
            name: "DURATION",
            choices: &[],
        },
        env: Some("GUARDED_UPGRADE_LEASE_DURATION"),
        check_only: false,
        help: "duration of the mutex Lease, renewed every third of it (default 15s; a crashed \
               holder is taken over after it)",
        apply: |o, v| {
            o.lease_duration = Some(duration(v, DurationKind::Lease)?);
            Ok(())
        },
    },
    GuardFlag {
        long: "recover-pending-after",
        short: None,
        takes: Takes::Value {
            name: "DURATION",
            choices: &[],
        },
        env: Some("GUARDED_UPGRADE_RECOVER_PENDING_AFTER"),
        check_only: false,
        help: "mark a stale pending-* record failed when no live run holds the mutex and the \
               record is older than this",
        apply: |o, v| {
            o.recover_pending_after = Some(duration(v, DurationKind::Wait)?);
            Ok(())
        },
    },
    GuardFlag {
        long: "input-timeout",
        short: None,
        takes: Takes::Value {
            name: "DURATION",
            choices: &[],
        },
        env: Some("GUARDED_UPGRADE_INPUT_TIMEOUT"),
        check_only: false,
        help: "how long the writer of an input read once (standard input, a /dev/fd pipe or \
               process substitution) may take to close it (default 2m)",
        apply: |o, v| {
            o.input_timeout = Some(duration(v, DurationKind::Wait)?);
            Ok(())
        },
    },
    GuardFlag {
        long: "no-annotations",
        short: None,
        takes: Takes::Switch,
        env: Some("GUARDED_UPGRADE_NO_ANNOTATIONS"),
        check_only: false,
        help: "no GitHub Actions annotations or step summary, no GitLab log sections \
               (docs/ci.md)",
        apply: |o, v| {
            o.no_annotations = switch(v)?;
            Ok(())
        },
    },
];

/// A guard flag's former name: still accepted on the command line and in the shim's
/// environment, never shown (help, man pages and completions name the flag's row only).
#[derive(Debug)]
pub(crate) struct FormerName {
    /// The former long name, without `--`.
    pub long: &'static str,
    /// The former shim variable.
    pub env: &'static str,
    /// The long name of the row it now names.
    pub now: &'static str,
}

/// Renamed guard flags. `--lock-timeout` became `--mutex-timeout`: "lock" is the release
/// lock only, the per-release Lease is the mutex.
pub(crate) const FORMER_NAMES: &[FormerName] = &[FormerName {
    long: "lock-timeout",
    env: "GUARDED_UPGRADE_LOCK_TIMEOUT",
    now: "mutex-timeout",
}];

/// The decision formats of `--decision-output` and `check -o`.
const OUTPUT_FORMATS: &[&str] = &["text", "json"];

/// The guard flag `long` (or a former name of it) of `mode`'s command line.
pub(crate) fn guard_flag(long: &str, mode: Mode) -> Option<&'static GuardFlag> {
    let long = FORMER_NAMES
        .iter()
        .find(|f| f.long == long)
        .map_or(long, |f| f.now);
    GUARD_FLAGS
        .iter()
        .find(|f| f.long == long && f.applies_to(mode))
}

/// The guard flags of `mode`'s command line.
pub(crate) fn guard_flags(mode: Mode) -> impl Iterator<Item = &'static GuardFlag> {
    GUARD_FLAGS.iter().filter(move |f| f.applies_to(mode))
}

fn output_format(o: &mut GuardOptions, v: Option<&str>) -> Result<(), BadValue> {
    match v.unwrap_or_default() {
        v @ ("text" | "json") => {
            o.output = Some(v.to_string());
            Ok(())
        }
        _ => Err(BadValue::Expected("text or json")),
    }
}

/// A switch: given alone it is on; with a value, pflag's `strconv.ParseBool`.
fn switch(value: Option<&str>) -> Result<bool, BadValue> {
    value.map_or(Ok(true), parse_bool)
}

/// pflag's `strconv.ParseBool`.
pub(crate) fn parse_bool(value: &str) -> Result<bool, BadValue> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(BadValue::Expected("true or false")),
    }
}

/// The shortest Lease: it is renewed every third of its duration, and a renewal must fit
/// in that time even on a loaded API server.
const MIN_LEASE_DURATION: Duration = Duration::from_secs(3);

/// Which guard duration a value is for: the mutex Lease has a lower bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DurationKind {
    /// `--mutex-timeout`, `--recover-pending-after`, `--input-timeout`.
    Wait,
    /// `--lease-duration`: at least [`MIN_LEASE_DURATION`].
    Lease,
}

/// A guard duration (`90s`, `5m`, `2h`, `1d`).
fn duration(value: Option<&str>, kind: DurationKind) -> Result<Duration, BadValue> {
    let d = crate::core::time::parse_duration(value.unwrap_or_default())
        .ok_or(BadValue::Expected("a duration such as 90s, 5m, 2h or 1d"))?;
    if kind == DurationKind::Lease && d < MIN_LEASE_DURATION {
        return Err(BadValue::Expected(
            "a duration of at least 3s (the Lease is renewed every third of it)",
        ));
    }
    Ok(d)
}

/// What a helm flag takes after its name (pflag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arity {
    /// Next argument or `=value`.
    Value,
    /// Boolean; `=true|false` optional.
    Bool,
    /// Value only with `=`.
    Optional,
}

/// One flag of `helm upgrade` (helm 3.17.3 to 3.21.4, 4.1.4 to 4.3.2), global and hidden
/// ones included.
#[derive(Debug)]
pub(crate) struct HelmFlag {
    /// The long name, without `--`.
    pub long: &'static str,
    /// The one-letter name, if any.
    pub short: Option<char>,
    /// What follows it (in helm 4, and in helm 3 unless [`HelmFlag::arity3`] says else).
    pub arity: Arity,
    /// A global flag: helm accepts it before the subcommand too, so the shim must skip its
    /// value to find the subcommand.
    pub global: bool,
    /// The one helm major version that has it (`None`: both).
    pub only: Option<u8>,
    /// What follows it in helm 3 when that differs (`--wait`: a boolean there).
    pub arity3: Option<Arity>,
    /// A flag that selects the cluster: the rest of its one definition.
    pub cluster: Option<ClusterFlag>,
}

/// The cluster a command talks to, as helm's cluster flags (or their `HELM_*` variables)
/// set it: one field per row of [`HELM_FLAGS`] with a [`ClusterFlag`]. Parsed from helm's
/// argv by the splitter (`upgrade`, `check`, the shim), by clap for the lock commands, and
/// from the environment for [`HelmFlag::cluster`]'s variables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterValues {
    /// `-n/--namespace`.
    pub namespace: Option<String>,
    /// `--kube-context`.
    pub kube_context: Option<String>,
    /// `--kubeconfig`.
    pub kubeconfig: Option<String>,
    /// `--kube-apiserver`.
    pub kube_apiserver: Option<String>,
    /// `--kube-token`.
    pub kube_token: Option<String>,
    /// `--kube-insecure-skip-tls-verify`.
    pub kube_insecure_skip_tls_verify: bool,
    /// `--kube-as-user`.
    pub kube_as_user: Option<String>,
    /// `--kube-as-group` (repeatable; the variable is a comma list).
    pub kube_as_group: Vec<String>,
    /// `--kube-ca-file`.
    pub kube_ca_file: Option<String>,
    /// `--kube-tls-server-name`.
    pub kube_tls_server_name: Option<String>,
    /// `--debug`.
    pub debug: bool,
}

/// Where a cluster flag's value goes in [`ClusterValues`].
#[derive(Clone, Copy)]
pub(crate) enum Slot {
    /// One value; the last one given wins.
    Text(fn(&mut ClusterValues) -> &mut Option<String>),
    /// Repeatable.
    List(fn(&mut ClusterValues) -> &mut Vec<String>),
    /// A boolean.
    Switch(fn(&mut ClusterValues) -> &mut bool),
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Slot::Text(_) => "Text",
            Slot::List(_) => "List",
            Slot::Switch(_) => "Switch",
        })
    }
}

/// What a cluster flag is beyond its helm row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClusterFlag {
    /// helm's variable for it, read when the flag is not given.
    pub env: Option<&'static str>,
    /// One sentence for the lock commands' `--help`, man page and completions.
    pub help: &'static str,
    /// How help names its value (switches: none).
    pub value_name: &'static str,
    /// Where its value goes.
    pub slot: Slot,
}

impl ClusterFlag {
    /// Stores a flag's value: its text, or for a switch `true`/`false` already parsed.
    pub(crate) fn set(&self, values: &mut ClusterValues, text: &str) {
        match self.slot {
            Slot::Text(field) => *field(values) = Some(text.to_string()),
            Slot::List(field) => field(values).push(text.to_string()),
            Slot::Switch(field) => *field(values) = text == "true",
        }
    }
}

/// The cluster flags: each helm row with its [`ClusterFlag`].
pub(crate) fn cluster_flags() -> impl Iterator<Item = (&'static HelmFlag, &'static ClusterFlag)> {
    HELM_FLAGS
        .iter()
        .filter_map(|f| f.cluster.as_ref().map(|c| (f, c)))
}

/// The cluster values helm's variables give (`env`: a variable's value, `None` or empty when
/// unset): text as is, a list split at commas, a switch on for `true` or `1`.
pub(crate) fn cluster_env(env: impl Fn(&str) -> Option<String>) -> ClusterValues {
    let mut values = ClusterValues::default();
    for (_, flag) in cluster_flags() {
        let Some(text) = flag.env.and_then(&env).filter(|v| !v.is_empty()) else {
            continue;
        };
        match flag.slot {
            Slot::Text(field) => *field(&mut values) = Some(text),
            Slot::List(field) => {
                *field(&mut values) = text
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
            }
            Slot::Switch(field) => *field(&mut values) = text == "true" || text == "1",
        }
    }
    values
}

impl HelmFlag {
    /// Whether helm `major` (3 or 4) has the flag.
    pub(crate) fn in_helm(&self, major: u8) -> bool {
        self.only.is_none_or(|only| only == major)
    }

    /// What follows the flag in helm `major`.
    pub(crate) fn arity_in(&self, major: u8) -> Arity {
        match (major, self.arity3) {
            (3, Some(arity)) => arity,
            _ => self.arity,
        }
    }
}

const fn helm(long: &'static str, arity: Arity) -> HelmFlag {
    HelmFlag {
        long,
        short: None,
        arity,
        global: false,
        only: None,
        arity3: None,
        cluster: None,
    }
}

const fn global(long: &'static str, arity: Arity) -> HelmFlag {
    HelmFlag {
        global: true,
        ..helm(long, arity)
    }
}

const fn with_short(flag: HelmFlag, short: char) -> HelmFlag {
    HelmFlag {
        short: Some(short),
        ..flag
    }
}

/// A flag only helm `major` has.
const fn only(major: u8, flag: HelmFlag) -> HelmFlag {
    HelmFlag {
        only: Some(major),
        ..flag
    }
}

/// A cluster flag: helm's row, its variable, its help, and its field.
const fn cluster(
    flag: HelmFlag,
    env: Option<&'static str>,
    help: &'static str,
    value_name: &'static str,
    slot: Slot,
) -> HelmFlag {
    HelmFlag {
        cluster: Some(ClusterFlag {
            env,
            help,
            value_name,
            slot,
        }),
        ..flag
    }
}

/// A flag helm 3 reads as `arity`.
const fn in3_as(arity: Arity, flag: HelmFlag) -> HelmFlag {
    HelmFlag {
        arity3: Some(arity),
        ..flag
    }
}

/// Every flag `helm upgrade` accepts in helm 3 or 4 (3.17.3 to 3.21.4, 4.1.4 to 4.3.2):
/// the union, global and hidden ones included (helm 3's deprecated `--recreate-pods`, the
/// klog flags helm registers as persistent, hence global, flags), each with the versions
/// that have it. `tests/shimroute.rs` compares it with helm 3.21.4's and 4.3.2's own
/// command trees.
pub(crate) const HELM_FLAGS: &[HelmFlag] = {
    use Arity::{Bool, Optional, Value};
    &[
        // `helm upgrade`'s own flags.
        helm("atomic", Bool),
        helm("ca-file", Value),
        helm("cert-file", Value),
        helm("cleanup-on-fail", Bool),
        helm("create-namespace", Bool),
        helm("dependency-update", Bool),
        helm("description", Value),
        helm("devel", Bool),
        helm("disable-openapi-validation", Bool),
        helm("dry-run", Optional),
        helm("enable-dns", Bool),
        helm("force", Bool),
        only(4, helm("force-conflicts", Bool)),
        only(4, helm("force-replace", Bool)),
        with_short(helm("help", Bool), 'h'),
        helm("hide-notes", Bool),
        helm("hide-secret", Bool),
        helm("history-max", Value),
        helm("insecure-skip-tls-verify", Bool),
        with_short(helm("install", Bool), 'i'),
        helm("key-file", Value),
        helm("keyring", Value),
        with_short(helm("labels", Value), 'l'),
        helm("no-hooks", Bool),
        with_short(helm("output", Value), 'o'),
        helm("pass-credentials", Bool),
        helm("password", Value),
        helm("plain-http", Bool),
        helm("post-renderer", Value),
        helm("post-renderer-args", Value),
        only(3, helm("recreate-pods", Bool)),
        helm("render-subchart-notes", Bool),
        helm("repo", Value),
        helm("reset-then-reuse-values", Bool),
        helm("reset-values", Bool),
        helm("reuse-values", Bool),
        only(4, helm("rollback-on-failure", Bool)),
        only(4, helm("server-side", Value)),
        helm("set", Value),
        helm("set-file", Value),
        helm("set-json", Value),
        helm("set-literal", Value),
        helm("set-string", Value),
        helm("skip-crds", Bool),
        helm("skip-schema-validation", Bool),
        helm("take-ownership", Bool),
        helm("timeout", Value),
        helm("username", Value),
        with_short(helm("values", Value), 'f'),
        helm("verify", Bool),
        helm("version", Value),
        in3_as(Bool, helm("wait", Optional)),
        helm("wait-for-jobs", Bool),
        // helm's global flags: first the ones that select the cluster, in the order the
        // lock commands' help lists them.
        cluster(
            with_short(global("namespace", Value), 'n'),
            Some("HELM_NAMESPACE"),
            "Namespace of the release (default: $HELM_NAMESPACE, the context's namespace, `default`)",
            "NAMESPACE",
            Slot::Text(|v| &mut v.namespace),
        ),
        cluster(
            global("kube-context", Value),
            Some("HELM_KUBECONTEXT"),
            "Kubeconfig context (default: $HELM_KUBECONTEXT, the current context)",
            "KUBE_CONTEXT",
            Slot::Text(|v| &mut v.kube_context),
        ),
        cluster(
            global("kubeconfig", Value),
            None,
            "Kubeconfig file (default: $KUBECONFIG, ~/.kube/config)",
            "KUBECONFIG",
            Slot::Text(|v| &mut v.kubeconfig),
        ),
        cluster(
            global("kube-apiserver", Value),
            Some("HELM_KUBEAPISERVER"),
            "API server address (default: $HELM_KUBEAPISERVER)",
            "KUBE_APISERVER",
            Slot::Text(|v| &mut v.kube_apiserver),
        ),
        cluster(
            global("kube-token", Value),
            Some("HELM_KUBETOKEN"),
            "Bearer token (default: $HELM_KUBETOKEN)",
            "KUBE_TOKEN",
            Slot::Text(|v| &mut v.kube_token),
        ),
        cluster(
            global("kube-insecure-skip-tls-verify", Bool),
            Some("HELM_KUBEINSECURE_SKIP_TLS_VERIFY"),
            "Skip TLS verification of the API server",
            "",
            Slot::Switch(|v| &mut v.kube_insecure_skip_tls_verify),
        ),
        cluster(
            global("kube-as-user", Value),
            Some("HELM_KUBEASUSER"),
            "Impersonate this user (default: $HELM_KUBEASUSER)",
            "KUBE_AS_USER",
            Slot::Text(|v| &mut v.kube_as_user),
        ),
        cluster(
            global("kube-as-group", Value),
            Some("HELM_KUBEASGROUPS"),
            "Impersonate this group; repeatable (default: $HELM_KUBEASGROUPS)",
            "KUBE_AS_GROUP",
            Slot::List(|v| &mut v.kube_as_group),
        ),
        cluster(
            global("kube-ca-file", Value),
            Some("HELM_KUBECAFILE"),
            "CA bundle (PEM) of the API server (default: $HELM_KUBECAFILE)",
            "KUBE_CA_FILE",
            Slot::Text(|v| &mut v.kube_ca_file),
        ),
        cluster(
            global("kube-tls-server-name", Value),
            Some("HELM_KUBETLS_SERVER_NAME"),
            "Server name for TLS verification (default: $HELM_KUBETLS_SERVER_NAME)",
            "KUBE_TLS_SERVER_NAME",
            Slot::Text(|v| &mut v.kube_tls_server_name),
        ),
        cluster(
            global("debug", Bool),
            Some("HELM_DEBUG"),
            "Print what the tool does (kubeconfig, context, server, each request) on stderr, secrets redacted (default: $HELM_DEBUG)",
            "",
            Slot::Switch(|v| &mut v.debug),
        ),
        global("burst-limit", Value),
        only(4, global("color", Value)),
        only(4, global("colour", Value)),
        only(4, global("content-cache", Value)),
        global("qps", Value),
        global("registry-config", Value),
        global("repository-cache", Value),
        global("repository-config", Value),
        // Hidden klog flags helm registers as global flags (`v`, a Go flag, also as `-v`).
        global("add-dir-header", Bool),
        global("alsologtostderr", Bool),
        global("alsologtostderrthreshold", Value),
        global("legacy-stderr-threshold-behavior", Bool),
        global("log-backtrace-at", Value),
        global("log-dir", Value),
        global("log-file", Value),
        global("log-file-max-size", Value),
        global("logtostderr", Bool),
        global("one-output", Bool),
        global("skip-headers", Bool),
        global("skip-log-headers", Bool),
        global("stderrthreshold", Value),
        with_short(global("v", Value), 'v'),
        global("vmodule", Value),
    ]
};

/// The helm flag `long`.
pub(crate) fn helm_flag(long: &str) -> Option<&'static HelmFlag> {
    HELM_FLAGS.iter().find(|f| f.long == long)
}

/// The helm flag with the one-letter name `short`.
pub(crate) fn helm_short(short: char) -> Option<&'static HelmFlag> {
    HELM_FLAGS.iter().find(|f| f.short == Some(short))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_guard_flags_never_shadow_helm_flags() {
        let mut seen = std::collections::BTreeSet::new();
        for long in HELM_FLAGS.iter().map(|f| f.long) {
            assert!(seen.insert(long), "helm flag --{long} listed twice");
        }
        for flag in GUARD_FLAGS {
            let shadows = helm_flag(flag.long).is_some();
            // `check -o/--output` is the one deliberate overlap: it belongs to helm in
            // `upgrade`, where `check` runs no helm.
            assert_eq!(shadows, flag.check_only, "--{}", flag.long);
            assert!(
                GUARD_FLAGS.iter().filter(|f| f.long == flag.long).count() == 1,
                "--{} listed twice",
                flag.long
            );
        }
        let vars: Vec<&str> = GUARD_FLAGS.iter().filter_map(|f| f.env).collect();
        let unique: std::collections::BTreeSet<&str> = vars.iter().copied().collect();
        assert_eq!(vars.len(), unique.len(), "{vars:?}");
    }

    /// Issue 27: one row per cluster flag. Each is a global helm flag whose arity fits its
    /// field, named by helm's variable where helm has one, and the argv splitter, the
    /// environment and (in `cluster::tests`) clap fill the same field from it.
    #[test]
    fn each_cluster_flag_is_one_row() {
        let mut names = Vec::new();
        for (flag, cluster) in cluster_flags() {
            names.push(flag.long);
            assert!(flag.global && flag.only.is_none(), "--{}", flag.long);
            let fits = match cluster.slot {
                Slot::Text(_) | Slot::List(_) => flag.arity == Arity::Value,
                Slot::Switch(_) => flag.arity == Arity::Bool,
            };
            assert!(fits, "--{}", flag.long);
            assert_eq!(
                cluster.value_name.is_empty(),
                matches!(cluster.slot, Slot::Switch(_)),
                "--{}",
                flag.long
            );
        }
        assert_eq!(
            names,
            [
                "namespace",
                "kube-context",
                "kubeconfig",
                "kube-apiserver",
                "kube-token",
                "kube-insecure-skip-tls-verify",
                "kube-as-user",
                "kube-as-group",
                "kube-ca-file",
                "kube-tls-server-name",
                "debug"
            ]
        );
        let env = |name: &str| {
            Some(
                match name {
                    "HELM_NAMESPACE" => "ns",
                    "HELM_KUBECONTEXT" => "ctx",
                    "HELM_KUBEAPISERVER" => "https://k",
                    "HELM_KUBETOKEN" => "t",
                    "HELM_KUBEINSECURE_SKIP_TLS_VERIFY" => "true",
                    "HELM_KUBEASUSER" => "u",
                    "HELM_KUBEASGROUPS" => "a, b,,c",
                    "HELM_KUBECAFILE" => "ca",
                    "HELM_KUBETLS_SERVER_NAME" => "api",
                    "HELM_DEBUG" => "1",
                    other => panic!("no cluster row reads {other}"),
                }
                .to_string(),
            )
        };
        assert_eq!(
            cluster_env(env),
            ClusterValues {
                namespace: Some("ns".into()),
                kube_context: Some("ctx".into()),
                kubeconfig: None,
                kube_apiserver: Some("https://k".into()),
                kube_token: Some("t".into()),
                kube_insecure_skip_tls_verify: true,
                kube_as_user: Some("u".into()),
                kube_as_group: vec!["a".into(), "b".into(), "c".into()],
                kube_ca_file: Some("ca".into()),
                kube_tls_server_name: Some("api".into()),
                debug: true,
            }
        );
        assert_eq!(cluster_env(|_| None), ClusterValues::default());
    }

    #[test]
    fn every_upgrade_flag_has_a_shim_variable() {
        // The shim runs `upgrade` only; its argv is helm's, so the variable is the only
        // way to set an `upgrade` guard flag there.
        for flag in guard_flags(Mode::Upgrade) {
            let want = format!(
                "GUARDED_UPGRADE_{}",
                flag.long.to_uppercase().replace('-', "_")
            );
            let want = match flag.long {
                "min-version-policy" => "GUARDED_UPGRADE_POLICY".to_string(),
                _ => want,
            };
            assert_eq!(flag.env, Some(want.as_str()), "--{}", flag.long);
        }
    }

    #[test]
    fn each_flag_parses_its_own_values() {
        let apply = |long: &str, value: Option<&str>| {
            let mut o = GuardOptions::default();
            (guard_flag(long, Mode::Check).unwrap().apply)(&mut o, value).map(|()| o)
        };
        assert!(apply("no-serialize", None).unwrap().no_serialize);
        assert!(!apply("no-serialize", Some("False")).unwrap().no_serialize);
        assert_eq!(
            apply("no-serialize", Some("yes")),
            Err(BadValue::Expected("true or false"))
        );
        assert_eq!(
            apply("min-version-policy", Some("newer-or-changed"))
                .unwrap()
                .version_rule,
            VersionRule::NewerOrChanged
        );
        assert_eq!(
            apply("lease-duration", Some("2s")),
            Err(BadValue::Expected(
                "a duration of at least 3s (the Lease is renewed every third of it)"
            ))
        );
        assert_eq!(
            apply("output", Some("json")).unwrap().output.as_deref(),
            Some("json")
        );
        assert!(guard_flag("output", Mode::Upgrade).is_none());
    }

    #[test]
    fn former_names_reach_the_renamed_row() {
        for former in FORMER_NAMES {
            let now = guard_flag(former.now, Mode::Upgrade).expect(former.now);
            let via = guard_flag(former.long, Mode::Upgrade).expect(former.long);
            assert!(
                std::ptr::eq(now, via),
                "--{} is --{}",
                former.long,
                former.now
            );
            assert!(
                GUARD_FLAGS.iter().all(|f| f.long != former.long),
                "--{} is a row of its own",
                former.long
            );
            assert!(now.env.is_some_and(|env| env != former.env));
        }
        let mut o = GuardOptions::default();
        (guard_flag("lock-timeout", Mode::Check).unwrap().apply)(&mut o, Some("2m")).unwrap();
        assert_eq!(o.mutex_timeout, Some(Duration::from_secs(120)));
    }
}
