//! Splitting a `helm upgrade` command line into our flags and helm's.
//!
//! `guarded-upgrade upgrade ARGS...` must accept exactly what
//! `helm upgrade ARGS...` accepts, plus a few flags of its own. [`split`]
//! removes our flags, leaves every other argument unchanged and in order
//! for helm, and reads the helm flags our decision needs (namespace,
//! context, chart source...). Parsing follows spf13/pflag as helm uses it:
//! `--flag value`, `--flag=value`, `-f value`, `-fvalue`, `-f=value`;
//! optional-value flags (`--dry-run`, Helm 4 `--wait`) take a value only
//! with `=`; `--` ends flag parsing. A flag that neither helm's `upgrade`
//! (3.17.3 or 4.1.4, global flags included) nor the guard knows is a usage
//! error before any I/O, with a "did you mean" suggestion, so a misspelt guard
//! flag never reaches helm after the mutex is taken.

use crate::core::decision::VersionRuleError;
use crate::core::flags::{
    self, guard_flag, guard_flags, helm_flag, helm_short, Arity, BadValue, ClusterValues,
    GuardFlag, Takes, HELM_FLAGS,
};

pub use crate::core::flags::{GuardOptions, Mode};

/// The helm flags our decision needs; everything stays in `helm_args` too.
/// Repeated flags: the last one wins, as in pflag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HelmFlags {
    /// The cluster flags (`-n`, `--kube-context`, `--kubeconfig`, …, `--debug`, which also
    /// turns on our debug output), one field per cluster row of the flag table.
    pub cluster: ClusterValues,
    /// `--version`.
    pub version: Option<String>,
    /// `--repo`.
    pub repo: Option<String>,
    /// `--username`.
    pub username: Option<String>,
    /// `--password`.
    pub password: Option<String>,
    /// `--ca-file`.
    pub ca_file: Option<String>,
    /// `--cert-file`.
    pub cert_file: Option<String>,
    /// `--key-file`.
    pub key_file: Option<String>,
    /// `--keyring`.
    pub keyring: Option<String>,
    /// `--registry-config`.
    pub registry_config: Option<String>,
    /// `--repository-config`.
    pub repository_config: Option<String>,
    /// `--repository-cache`.
    pub repository_cache: Option<String>,
    /// `--devel`.
    pub devel: bool,
    /// `--insecure-skip-tls-verify`.
    pub insecure_skip_tls_verify: bool,
    /// `--plain-http`.
    pub plain_http: bool,
    /// `--pass-credentials`.
    pub pass_credentials: bool,
    /// `--create-namespace`.
    pub create_namespace: bool,
    /// `--install/-i`.
    pub install: bool,
    /// `--dry-run[=MODE]`: `Some("client")` for a bare `--dry-run` (helm's
    /// default), `Some(value)` for `--dry-run=value`, `None` when absent.
    pub dry_run: Option<String>,
    /// What helm reads values from, in order, each with its flag as written: `-f`/`--values`
    /// (a comma list of files) and `--set-file` (a comma list of `key=path`).
    pub value_inputs: Vec<(String, String)>,
    /// Every `--labels/-l` value, in order (comma lists of `key=value`).
    pub labels: Vec<String>,
    /// `--post-renderer`.
    pub post_renderer: Option<String>,
    /// `--dependency-update`.
    pub dependency_update: bool,
}

impl HelmFlags {
    /// True when helm will only simulate (`--dry-run`, `=client`, `=server`,
    /// `=true`); false when absent or `=none`/`=false`.
    pub fn is_dry_run(&self) -> bool {
        match self.dry_run.as_deref() {
            None => false,
            Some(v) => !matches!(v, "none" | "false" | "False" | "FALSE" | "f" | "F" | "0"),
        }
    }
}

/// A split command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitArgv {
    /// Our flags.
    pub guard: GuardOptions,
    /// Everything else, unchanged and in order, including RELEASE and CHART.
    pub helm_args: Vec<String>,
    /// First positional.
    pub release: String,
    /// Second positional.
    pub chart: String,
    /// The helm flags we read.
    pub helm: HelmFlags,
}

/// A command line we cannot pass on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgvError {
    /// A flag that needs a value was last.
    #[error("flag {flag} needs a value, e.g. {flag} VALUE or {flag}=VALUE")]
    MissingValue {
        /// The flag as written.
        flag: String,
    },
    /// A value we check is not allowed.
    #[error("invalid value {value:?} for {flag}: expected {expected}")]
    InvalidValue {
        /// The flag as written.
        flag: String,
        /// The rejected value.
        value: String,
        /// What is allowed.
        expected: &'static str,
    },
    /// An unknown version policy.
    #[error("{flag}: {source}")]
    VersionRule {
        /// The flag (or shim variable) as written.
        flag: String,
        /// The refused policy.
        source: VersionRuleError,
    },
    /// RELEASE and/or CHART missing.
    #[error("missing {missing}: usage is `{verb} [flags] RELEASE CHART`")]
    MissingPositional {
        /// `RELEASE and CHART` or `CHART`.
        missing: &'static str,
        /// `upgrade` or `check`: the command the usage is shown for.
        verb: &'static str,
    },
    /// More than two positionals. Only their positions are shown: a stray value may be a
    /// secret (`--pasword s3cr3t`).
    #[error(
        "too many arguments: expected RELEASE CHART, got {} more at position{} {} (counting \
         from 1 after the subcommand; values not shown); quote values that contain spaces and \
         check for a misspelt flag or one missing its `--`",
        .positions.len(),
        if .positions.len() == 1 { "" } else { "s" },
        .positions.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    )]
    TooManyPositionals {
        /// 1-based positions (among the arguments after the subcommand) of the arguments
        /// after RELEASE and CHART.
        positions: Vec<usize>,
    },
    /// A long flag neither helm upgrade nor the guard knows.
    #[error(
        "unknown flag {flag}: neither `helm upgrade` (helm 3 or 4) nor guarded-upgrade has it{}",
        .suggestion.as_ref().map(|s| format!("; did you mean {s}?")).unwrap_or_default()
    )]
    UnknownFlag {
        /// The flag as written, without any `=value`.
        flag: String,
        /// The closest known flag, if one is close.
        suggestion: Option<String>,
    },
    /// A short flag neither helm upgrade nor the guard knows.
    #[error(
        "unknown shorthand flag -{shorthand} in argument {position} (counting from 1 after the \
         subcommand); known shorthands: {known}"
    )]
    UnknownShorthand {
        /// The unknown letter.
        shorthand: char,
        /// 1-based position of the argument.
        position: usize,
        /// The shorthands the command line takes, `-f, -h, …`.
        known: String,
    },
    /// Two guard flags that contradict each other.
    #[error("{flag} cannot be combined with {other}: {why}")]
    Conflict {
        /// The first flag.
        flag: &'static str,
        /// The flag it contradicts, as it was written (a former name stays as written).
        other: String,
        /// Why.
        why: &'static str,
    },
    /// `--labels`/`-l` names a key of guarded-upgrade's locks: helm would write it into the
    /// new record, moving a pin or lifting a lock without `lock`/`unlock`.
    #[error(
        "{flag} sets the label {key:?}: keys under `guarded-upgrade.io/` hold the release's \
         lock and are not set through helm; change a lock with `guarded-upgrade lock` and lift \
         it with `guarded-upgrade unlock`"
    )]
    ReservedLabel {
        /// The flag as written (`--labels`, `-l`).
        flag: String,
        /// The reserved key, as helm would read it.
        key: String,
    },
    /// Our `-o` was combined with other short flags (`-io json`).
    #[error("write -o separately in {arg:?} (e.g. `-i -o json`); it cannot be combined with other short flags")]
    CombinedShortGuard {
        /// The argument as written.
        arg: String,
    },
}

/// Every long flag (without `--`) passed through to helm: the union of helm 3.17.3's and
/// 4.1.4's `helm upgrade` flags, global and hidden ones included. Public so tests can
/// compare it with what the real helm binaries accept.
pub fn helm_long_flags() -> impl Iterator<Item = &'static str> {
    HELM_FLAGS.iter().map(|f| f.long)
}

/// The known long flag of `mode` closest to `name`, when it is close enough to be a typo.
fn suggest(name: &str, mode: Mode) -> Option<String> {
    let limit = if name.chars().count() >= 8 { 3 } else { 2 };
    helm_long_flags()
        .chain(guard_flags(mode).map(|f| f.long))
        .chain(flags::FORMER_NAMES.iter().map(|f| f.long))
        .map(|known| (edit_distance(name, known), known))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, known)| format!("--{known}"))
}

/// Optimal-string-alignment distance: insertions, deletions, substitutions and adjacent
/// transpositions (`--verison`) each cost 1. Case-insensitive, so `--Namespace` finds
/// `--namespace`.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// A switch's `=value` given to helm's `flag`, read as pflag reads it.
fn parse_bool(flag: &str, value: &str) -> Result<bool, ArgvError> {
    flags::parse_bool(value).map_err(|bad| invalid_value(flag, value, bad))
}

/// The usage error for `value` refused by the guard flag, helm flag or shim variable `flag`.
pub(crate) fn invalid_value(flag: &str, value: &str, bad: BadValue) -> ArgvError {
    match bad {
        BadValue::Expected(expected) => ArgvError::InvalidValue {
            flag: flag.to_string(),
            value: value.to_string(),
            expected,
        },
        BadValue::VersionRule(source) => ArgvError::VersionRule {
            flag: flag.to_string(),
            source,
        },
    }
}

/// Splits the arguments after `guarded-upgrade upgrade|check`.
pub fn split(args: &[String], mode: Mode) -> Result<SplitArgv, ArgvError> {
    let mut guard = GuardOptions::default();
    let mut helm = HelmFlags::default();
    let mut helm_args = Vec::with_capacity(args.len());
    // (1-based position, value)
    let mut positionals: Vec<(usize, String)> = Vec::new();
    // The guard flags' long names as written (a former name included), for messages.
    let mut written: Vec<String> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            // Everything after `--` is positional; helm still needs the marker.
            helm_args.push(arg.clone());
            for (offset, rest) in args[i..].iter().enumerate() {
                positionals.push((i + offset + 1, rest.clone()));
                helm_args.push(rest.clone());
            }
            break;
        }
        if let Some(body) = arg.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let flag = format!("--{name}");
            if let Some(guard_flag) = guard_flag(name, mode) {
                let value = match guard_flag.takes {
                    Takes::Value { .. } => Some(take_value(&flag, inline, args, &mut i)?),
                    Takes::Switch => inline.map(str::to_string),
                };
                apply_guard(&mut guard, guard_flag, &flag, value)?;
                written.push(name.to_string());
                continue;
            }
            let Some(arity) = helm_flag(name).map(|f| f.arity) else {
                return Err(ArgvError::UnknownFlag {
                    suggestion: suggest(name, mode),
                    flag,
                });
            };
            helm_args.push(arg.clone());
            match arity {
                Arity::Value => {
                    let value = take_value(&flag, inline, args, &mut i)?;
                    if inline.is_none() {
                        helm_args.push(value.clone());
                    }
                    record_helm_value(&mut helm, name, &flag, value)?;
                }
                Arity::Optional => {
                    if name == "dry-run" {
                        helm.dry_run = Some(inline.unwrap_or("client").to_string());
                    }
                }
                Arity::Bool => record_helm_bool(&mut helm, name, &flag, inline)?,
            }
            continue;
        }
        if arg.len() > 1 && arg.starts_with('-') {
            split_shorts(
                i,
                arg,
                args,
                &mut i,
                mode,
                &mut guard,
                &mut helm,
                &mut helm_args,
            )?;
            continue;
        }
        // A positional (a lone `-` is one too, as in pflag).
        positionals.push((i, arg.clone()));
        helm_args.push(arg.clone());
    }

    let mut positionals = positionals.into_iter();
    let release = positionals.next().map(|(_, v)| v);
    let chart = positionals.next().map(|(_, v)| v);
    let extra: Vec<usize> = positionals.map(|(pos, _)| pos).collect();
    if !extra.is_empty() {
        return Err(ArgvError::TooManyPositionals { positions: extra });
    }
    check_guard(&guard, &written)?;
    let (release, chart) = match (release, chart) {
        (Some(r), Some(c)) => (r, c),
        (Some(_), None) => {
            return Err(ArgvError::MissingPositional {
                missing: "CHART",
                verb: mode.verb(),
            })
        }
        _ => {
            return Err(ArgvError::MissingPositional {
                missing: "RELEASE and CHART",
                verb: mode.verb(),
            })
        }
    };
    Ok(SplitArgv {
        guard,
        helm_args,
        release,
        chart,
        helm,
    })
}

/// Guard flags that contradict each other, and guard values that cannot work. `written`:
/// the long names as the user wrote them, so a former name is named as written.
fn check_guard(guard: &GuardOptions, written: &[String]) -> Result<(), ArgvError> {
    if guard.no_serialize {
        let mutex_flags = [
            (
                "mutex-timeout",
                &guard.mutex_timeout,
                "without the mutex there is nothing to wait for",
            ),
            (
                "lease-duration",
                &guard.lease_duration,
                "without the mutex no Lease is written",
            ),
            (
                "recover-pending-after",
                &guard.recover_pending_after,
                "recovering a pending release is only safe while holding the mutex",
            ),
        ];
        for (long, value, why) in mutex_flags {
            if value.is_some() {
                let row = guard_flag(long, Mode::Upgrade);
                let as_written = written
                    .iter()
                    .rev()
                    .find(|w| {
                        guard_flag(w, Mode::Upgrade)
                            .is_some_and(|f| row.is_some_and(|r| std::ptr::eq(f, r)))
                    })
                    .map_or(long, String::as_str);
                return Err(ArgvError::Conflict {
                    flag: "--no-serialize",
                    other: format!("--{as_written}"),
                    why,
                });
            }
        }
    }
    Ok(())
}

/// Value of a value flag: inline `=value`, else the next argument whatever
/// it looks like (pflag takes `--set -x` as the value `-x`).
fn take_value(
    flag: &str,
    inline: Option<&str>,
    args: &[String],
    i: &mut usize,
) -> Result<String, ArgvError> {
    if let Some(v) = inline {
        return Ok(v.to_string());
    }
    match args.get(*i) {
        Some(v) => {
            *i += 1;
            Ok(v.clone())
        }
        None => Err(ArgvError::MissingValue {
            flag: flag.to_string(),
        }),
    }
}

/// The value glued to a short flag, as pflag reads it: `-nfoo` and `-n=foo` give `foo`,
/// `-n=` gives `=` (only a `=` followed by something is a separator), `-n` gives none.
fn short_inline(rest: &str) -> Option<&str> {
    match rest.strip_prefix('=') {
        Some(value) if !value.is_empty() => Some(value),
        _ if !rest.is_empty() => Some(rest),
        _ => None,
    }
}

/// Handles a group of short flags such as `-i`, `-nfoo`, `-n=foo`, `-if x`.
#[allow(clippy::too_many_arguments)]
fn split_shorts(
    position: usize,
    arg: &str,
    args: &[String],
    i: &mut usize,
    mode: Mode,
    guard: &mut GuardOptions,
    helm: &mut HelmFlags,
    helm_args: &mut Vec<String>,
) -> Result<(), ArgvError> {
    let shorts = &arg[1..];
    let guard_short = |c: char| guard_flags(mode).find(|f| f.short == Some(c));
    if let Some(flag) = shorts.chars().next().and_then(guard_short) {
        // Ours, written alone: `-o json`, `-ojson` or `-o=json`.
        let written = format!("-{}", &shorts[..1]);
        let value = match flag.takes {
            Takes::Value { .. } => Some(take_value(&written, short_inline(&shorts[1..]), args, i)?),
            Takes::Switch => None,
        };
        return apply_guard(guard, flag, &written, value);
    }
    helm_args.push(arg.to_string());
    for (pos, c) in shorts.char_indices() {
        let rest = &shorts[pos + c.len_utf8()..];
        if guard_short(c).is_some() {
            return Err(ArgvError::CombinedShortGuard {
                arg: arg.to_string(),
            });
        }
        let Some(helm_flag) = helm_short(c) else {
            return Err(ArgvError::UnknownShorthand {
                shorthand: c,
                position,
                known: known_shorthands(mode),
            });
        };
        let written = format!("-{c}");
        match helm_flag.arity {
            Arity::Value | Arity::Optional => {
                let inline = short_inline(rest);
                let value = take_value(&written, inline, args, i)?;
                if inline.is_none() {
                    helm_args.push(value.clone());
                }
                return record_helm_value(helm, helm_flag.long, &written, value);
            }
            Arity::Bool => {
                // `-i=false` sets the value; `-ih` is two booleans.
                if let Some(v) = rest.strip_prefix('=') {
                    return record_helm_bool(helm, helm_flag.long, &written, Some(v));
                }
                record_helm_bool(helm, helm_flag.long, &written, None)?;
            }
        }
    }
    Ok(())
}

/// `-f, -h, -i, …`: every one-letter flag of `mode`'s command line, helm's and ours.
fn known_shorthands(mode: Mode) -> String {
    let mut shorts: Vec<char> = HELM_FLAGS
        .iter()
        .filter_map(|f| f.short)
        .chain(guard_flags(mode).filter_map(|f| f.short))
        .collect();
    shorts.sort_unstable();
    shorts.dedup();
    let shorts: Vec<String> = shorts.iter().map(|c| format!("-{c}")).collect();
    shorts.join(", ")
}

/// Stores a guard flag's value; a switch given without `=value` has none.
fn apply_guard(
    guard: &mut GuardOptions,
    flag: &GuardFlag,
    written: &str,
    value: Option<String>,
) -> Result<(), ArgvError> {
    (flag.apply)(guard, value.as_deref())
        .map_err(|bad| invalid_value(written, value.as_deref().unwrap_or_default(), bad))
}

fn record_helm_value(
    helm: &mut HelmFlags,
    name: &str,
    written: &str,
    value: String,
) -> Result<(), ArgvError> {
    if let Some(cluster) = helm_flag(name).and_then(|f| f.cluster.as_ref()) {
        cluster.set(&mut helm.cluster, &value);
        return Ok(());
    }
    match name {
        "values" | "set-file" => {
            helm.value_inputs.push((written.to_string(), value));
            return Ok(());
        }
        "labels" => {
            if let Some(key) = reserved_label(&value) {
                return Err(ArgvError::ReservedLabel {
                    flag: written.to_string(),
                    key,
                });
            }
            helm.labels.push(value);
            return Ok(());
        }
        _ => {}
    }
    let slot = match name {
        "version" => &mut helm.version,
        "repo" => &mut helm.repo,
        "username" => &mut helm.username,
        "password" => &mut helm.password,
        "ca-file" => &mut helm.ca_file,
        "cert-file" => &mut helm.cert_file,
        "key-file" => &mut helm.key_file,
        "keyring" => &mut helm.keyring,
        "registry-config" => &mut helm.registry_config,
        "repository-config" => &mut helm.repository_config,
        "repository-cache" => &mut helm.repository_cache,
        "post-renderer" => &mut helm.post_renderer,
        _ => return Ok(()),
    };
    *slot = Some(value);
    Ok(())
}

/// The first key of a `--labels` value that lies under [`crate::core::lock::PREFIX`], as
/// helm reads the value ([`string_to_string`]). When helm would refuse the value, any
/// comma- or line-separated part that looks like such a key counts (fail closed).
pub(crate) fn reserved_label(value: &str) -> Option<String> {
    let reserved = |key: &str| key.trim().starts_with(crate::core::lock::PREFIX);
    match string_to_string(value) {
        Some(pairs) => pairs.into_iter().map(|(k, _)| k).find(|k| reserved(k)),
        None => value
            .split([',', '\n'])
            .map(|part| part.split('=').next().unwrap_or_default())
            .map(|key| key.trim().trim_matches('"').to_string())
            .find(|k| reserved(k)),
    }
}

/// A `key=value,…` value as pflag's `StringToString` (helm's `--labels`) reads it, pairs
/// in order; `None` when pflag refuses it. One `=` in the whole value: the value without
/// surrounding quotes is one pair (commas included); more: the first CSV record of it
/// (Go's `encoding/csv`), each field split at its first `=`.
pub(crate) fn string_to_string(value: &str) -> Option<Vec<(String, String)>> {
    let fields = match value.matches('=').count() {
        0 => return None,
        1 => vec![value.trim_matches('"').to_string()],
        _ => first_csv_record(value)?,
    };
    fields
        .into_iter()
        .map(|field| {
            field
                .split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// The first record of CSV text as Go's `csv.Reader` with its defaults reads it: empty
/// lines skipped, `\r\n` read as `\n`, quoted fields (`""` is a quote, line breaks kept),
/// a bare quote in an unquoted field or text after a closing quote refused (`None`).
fn first_csv_record(text: &str) -> Option<Vec<String>> {
    let text = text.replace("\r\n", "\n");
    let mut chars = text.trim_start_matches('\n').chars().peekable();
    chars.peek()?;
    let mut fields = Vec::new();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    '"' => break,
                    c => field.push(c),
                }
            }
            match chars.next() {
                Some(',') => fields.push(field),
                None | Some('\n') => {
                    fields.push(field);
                    return Some(fields);
                }
                Some(_) => return None,
            }
        } else {
            loop {
                match chars.next() {
                    Some(',') => {
                        fields.push(field);
                        break;
                    }
                    None | Some('\n') => {
                        fields.push(field);
                        return Some(fields);
                    }
                    Some('"') => return None,
                    Some(c) => field.push(c),
                }
            }
        }
    }
}

fn record_helm_bool(
    helm: &mut HelmFlags,
    name: &str,
    flag: &str,
    inline: Option<&str>,
) -> Result<(), ArgvError> {
    let on = |inline: Option<&str>| match inline {
        None => Ok(true),
        Some(v) => parse_bool(flag, v),
    };
    if let Some(cluster) = helm_flag(name).and_then(|f| f.cluster.as_ref()) {
        let text = if on(inline)? { "true" } else { "false" };
        cluster.set(&mut helm.cluster, text);
        return Ok(());
    }
    let slot = match name {
        "install" => &mut helm.install,
        "devel" => &mut helm.devel,
        "insecure-skip-tls-verify" => &mut helm.insecure_skip_tls_verify,
        "plain-http" => &mut helm.plain_http,
        "pass-credentials" => &mut helm.pass_credentials,
        "create-namespace" => &mut helm.create_namespace,
        "dependency-update" => &mut helm.dependency_update,
        // Other booleans and unknown flags: helm validates them.
        _ => return Ok(()),
    };
    *slot = on(inline)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::decision::VersionRule;
    use std::time::Duration;

    fn argv(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_string).collect()
    }

    fn ok(line: &str, mode: Mode) -> SplitArgv {
        split(&argv(line), mode).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    /// (input, mode, expected helm args, release, chart)
    #[test]
    fn helm_args_are_input_minus_guard_flags() {
        use Mode::*;
        let cases: &[(&str, Mode, &str, &str, &str)] = &[
            (
                "--install db bitnami/postgresql --version 12.1.2 -n shared -f values.yaml --set auth.password=x --wait --timeout 10m --min-version-policy newer-or-equal",
                Upgrade,
                "--install db bitnami/postgresql --version 12.1.2 -n shared -f values.yaml --set auth.password=x --wait --timeout 10m",
                "db",
                "bitnami/postgresql",
            ),
            ("db ./chart --values=a.yaml", Upgrade, "db ./chart --values=a.yaml", "db", "./chart"),
            ("--dry-run db ./chart", Upgrade, "--dry-run db ./chart", "db", "./chart"),
            ("--dry-run=server db ./chart", Upgrade, "--dry-run=server db ./chart", "db", "./chart"),
            ("--wait db ./chart", Upgrade, "--wait db ./chart", "db", "./chart"),
            ("--wait=watcher db ./chart", Upgrade, "--wait=watcher db ./chart", "db", "./chart"),
            ("-i -- rel chart", Upgrade, "-i -- rel chart", "rel", "chart"),
            ("-- -rel -chart", Upgrade, "-- -rel -chart", "-rel", "-chart"),
            ("--namespace=x db chart", Upgrade, "--namespace=x db chart", "db", "chart"),
            ("-nfoo db chart", Upgrade, "-nfoo db chart", "db", "chart"),
            ("-n=foo db chart", Upgrade, "-n=foo db chart", "db", "chart"),
            ("-if v.yaml db chart", Upgrade, "-if v.yaml db chart", "db", "chart"),
            (
                "--allow-chart-change db --helm /usr/bin/helm3 chart --no-serialize -i --detailed-exitcode",
                Upgrade,
                "db chart -i",
                "db",
                "chart",
            ),
            (
                "db chart --decision-output json --decision-file /tmp/d.json --lock-timeout 5m --recover-pending-after=1h",
                Upgrade,
                "db chart",
                "db",
                "chart",
            ),
            ("db chart -o json", Upgrade, "db chart -o json", "db", "chart"),
            ("db chart --output=yaml", Upgrade, "db chart --output=yaml", "db", "chart"),
            ("db chart -o json", Check, "db chart", "db", "chart"),
            ("db chart -ojson", Check, "db chart", "db", "chart"),
            ("--output text db chart", Check, "db chart", "db", "chart"),
            ("--set -x db chart", Upgrade, "--set -x db chart", "db", "chart"),
            ("--set --wait db chart", Upgrade, "--set --wait db chart", "db", "chart"),
            ("db oci://reg/charts/app --version ^1.2 --kube-context prod", Upgrade, "db oci://reg/charts/app --version ^1.2 --kube-context prod", "db", "oci://reg/charts/app"),
            ("--server-side true --color never db chart", Upgrade, "--server-side true --color never db chart", "db", "chart"),
            ("--history-max 3 --description up db chart -l a=b", Upgrade, "--history-max 3 --description up db chart -l a=b", "db", "chart"),
            ("--install=false db chart", Upgrade, "--install=false db chart", "db", "chart"),
            ("db - ", Upgrade, "db -", "db", "-"),
            ("--kube-token t --qps 5 --burst-limit 10 --v 3 db chart", Upgrade, "--kube-token t --qps 5 --burst-limit 10 --v 3 db chart", "db", "chart"),
            ("-v 3 db chart --atomic --recreate-pods --logtostderr=false", Upgrade, "-v 3 db chart --atomic --recreate-pods --logtostderr=false", "db", "chart"),
            ("db chart --force-replace --rollback-on-failure --take-ownership --hide-secret", Upgrade, "db chart --force-replace --rollback-on-failure --take-ownership --hide-secret", "db", "chart"),
        ];
        for (line, mode, want, release, chart) in cases {
            let s = ok(line, *mode);
            assert_eq!(s.helm_args, argv(want), "{line}");
            assert_eq!(s.release, *release, "{line}");
            assert_eq!(s.chart, *chart, "{line}");
        }
    }

    #[test]
    fn reads_helm_flags() {
        let s = ok(
            "upgrade-me bitnami/postgresql -i --version 12.1.2 -n shared --kube-context prod \
             --kubeconfig /k --repo https://r --username u --password p --ca-file ca \
             --cert-file c --key-file k --keyring kr --registry-config rc \
             --repository-config rpc --repository-cache rca --devel --insecure-skip-tls-verify \
             --plain-http --pass-credentials --create-namespace --dry-run=server \
             --kube-apiserver https://k:6443 --kube-token=t --kube-insecure-skip-tls-verify \
             --kube-as-user bob --kube-as-group g1 --kube-as-group=g2 --kube-ca-file ca.pem \
             --kube-tls-server-name api.internal -f a.yaml --values=b.yaml,c.yaml \
             --set-file k=p -fd.yaml -l team=x --labels=tier=db --post-renderer ./pr \
             --dependency-update",
            Mode::Upgrade,
        );
        let want = HelmFlags {
            cluster: ClusterValues {
                namespace: Some("shared".into()),
                kube_context: Some("prod".into()),
                kubeconfig: Some("/k".into()),
                kube_apiserver: Some("https://k:6443".into()),
                kube_token: Some("t".into()),
                kube_insecure_skip_tls_verify: true,
                kube_as_user: Some("bob".into()),
                kube_as_group: vec!["g1".into(), "g2".into()],
                kube_ca_file: Some("ca.pem".into()),
                kube_tls_server_name: Some("api.internal".into()),
                debug: false,
            },
            version: Some("12.1.2".into()),
            repo: Some("https://r".into()),
            username: Some("u".into()),
            password: Some("p".into()),
            ca_file: Some("ca".into()),
            cert_file: Some("c".into()),
            key_file: Some("k".into()),
            keyring: Some("kr".into()),
            registry_config: Some("rc".into()),
            repository_config: Some("rpc".into()),
            repository_cache: Some("rca".into()),
            devel: true,
            insecure_skip_tls_verify: true,
            plain_http: true,
            pass_credentials: true,
            create_namespace: true,
            install: true,
            dry_run: Some("server".into()),
            value_inputs: [
                ("-f", "a.yaml"),
                ("--values", "b.yaml,c.yaml"),
                ("--set-file", "k=p"),
                ("-f", "d.yaml"),
            ]
            .iter()
            .map(|(f, v)| (f.to_string(), v.to_string()))
            .collect(),
            labels: vec!["team=x".into(), "tier=db".into()],
            post_renderer: Some("./pr".into()),
            dependency_update: true,
        };
        assert_eq!(s.helm, want);
        assert!(s.helm.is_dry_run());
    }

    #[test]
    fn helm_flag_variants() {
        let cases: &[(&str, Option<&str>, bool, Option<&str>)] = &[
            // (line, namespace, install, dry_run)
            ("db c -n a", Some("a"), false, None),
            ("db c -na", Some("a"), false, None),
            ("db c -n=a", Some("a"), false, None),
            // pflag: `-n=` is the value `=`, not a missing value.
            ("db c -n=", Some("="), false, None),
            ("db c --namespace a", Some("a"), false, None),
            ("db c --namespace=a", Some("a"), false, None),
            ("db c -n a -n b", Some("b"), false, None),
            ("db c -i", None, true, None),
            ("db c --install", None, true, None),
            ("db c --install=true", None, true, None),
            ("db c --install=false", None, false, None),
            ("db c -i=false", None, false, None),
            ("db c -in x", Some("x"), true, None),
            ("db c --dry-run", None, false, Some("client")),
            ("db c --dry-run=none", None, false, Some("none")),
            ("-n y -- db c", Some("y"), false, None),
        ];
        for (line, ns, install, dry) in cases {
            let s = ok(line, Mode::Upgrade);
            assert_eq!(s.helm.cluster.namespace.as_deref(), *ns, "{line}");
            assert_eq!(s.helm.install, *install, "{line}");
            assert_eq!(s.helm.dry_run.as_deref(), *dry, "{line}");
        }
        assert!(!ok("db c --dry-run=none", Mode::Upgrade).helm.is_dry_run());
        assert!(!ok("db c", Mode::Upgrade).helm.is_dry_run());
        assert!(ok("db c --dry-run", Mode::Upgrade).helm.is_dry_run());
    }

    #[test]
    fn reads_guard_flags() {
        let s = ok(
            "--min-version-policy=off db --allow-chart-change c --helm=/h --decision-output text \
             --decision-file f --detailed-exitcode --no-serialize=false --lock-timeout 30s \
             --recover-pending-after 2h --lease-duration=20s --compare value:image.tag",
            Mode::Upgrade,
        );
        assert_eq!(
            s.guard,
            GuardOptions {
                version_rule: VersionRule::Off,
                allow_chart_change: true,
                helm: Some("/h".into()),
                output: Some("text".into()),
                decision_file: Some("f".into()),
                detailed_exitcode: true,
                no_serialize: false,
                mutex_timeout: Some(Duration::from_secs(30)),
                recover_pending_after: Some(Duration::from_secs(7200)),
                lease_duration: Some(Duration::from_secs(20)),
                no_annotations: false,
                input_timeout: None,
                compare: crate::core::decision::CompareKey::Value("image.tag".into()),
            }
        );
        assert_eq!(
            split(&argv("db c --compare=value:"), Mode::Upgrade),
            Err(ArgvError::InvalidValue {
                flag: "--compare".into(),
                value: "value:".into(),
                expected: "chart-version, app-version or value:PATH (e.g. value:image.tag)",
            })
        );
        assert_eq!(s.helm_args, argv("db c"));
        assert!(ok("db c --no-serialize", Mode::Upgrade).guard.no_serialize);
        assert!(
            ok("db c --no-serialize=true", Mode::Upgrade)
                .guard
                .no_serialize
        );
        let s = ok("db c --detailed-exitcode=false", Mode::Upgrade);
        assert!(!s.guard.detailed_exitcode);
        assert_eq!(ok("db c", Mode::Upgrade).guard, GuardOptions::default());
        assert_eq!(
            ok("db c -o json", Mode::Check).guard.output.as_deref(),
            Some("json")
        );
        assert_eq!(ok("db c -o json", Mode::Upgrade).guard.output, None);
        assert_eq!(
            ok("db c -o=json", Mode::Check).guard.output.as_deref(),
            Some("json")
        );
    }

    #[test]
    fn errors() {
        let cases: &[(&str, Mode, ArgvError)] = &[
            (
                "",
                Mode::Upgrade,
                ArgvError::MissingPositional {
                    missing: "RELEASE and CHART",
                    verb: "upgrade",
                },
            ),
            (
                "-i",
                Mode::Upgrade,
                ArgvError::MissingPositional {
                    missing: "RELEASE and CHART",
                    verb: "upgrade",
                },
            ),
            (
                "db",
                Mode::Upgrade,
                ArgvError::MissingPositional {
                    missing: "CHART",
                    verb: "upgrade",
                },
            ),
            (
                "db --dry-run",
                Mode::Upgrade,
                ArgvError::MissingPositional {
                    missing: "CHART",
                    verb: "upgrade",
                },
            ),
            (
                "db --version 1.2.3",
                Mode::Upgrade,
                ArgvError::MissingPositional {
                    missing: "CHART",
                    verb: "upgrade",
                },
            ),
            (
                "db chart extra more",
                Mode::Upgrade,
                ArgvError::TooManyPositionals {
                    positions: vec![3, 4],
                },
            ),
            (
                "--dry-run server db chart",
                Mode::Upgrade,
                ArgvError::TooManyPositionals { positions: vec![4] },
            ),
            (
                "db chart --version",
                Mode::Upgrade,
                ArgvError::MissingValue {
                    flag: "--version".into(),
                },
            ),
            (
                "db chart -n",
                Mode::Upgrade,
                ArgvError::MissingValue { flag: "-n".into() },
            ),
            (
                "db chart --helm",
                Mode::Upgrade,
                ArgvError::MissingValue {
                    flag: "--helm".into(),
                },
            ),
            (
                "db chart -o",
                Mode::Check,
                ArgvError::MissingValue { flag: "-o".into() },
            ),
            (
                "db chart --min-version-policy newest",
                Mode::Upgrade,
                ArgvError::VersionRule {
                    flag: "--min-version-policy".into(),
                    source: VersionRuleError("newest".into()),
                },
            ),
            (
                "db chart --decision-output yaml",
                Mode::Upgrade,
                ArgvError::InvalidValue {
                    flag: "--decision-output".into(),
                    value: "yaml".into(),
                    expected: "text or json",
                },
            ),
            (
                "db chart -o yaml",
                Mode::Check,
                ArgvError::InvalidValue {
                    flag: "-o".into(),
                    value: "yaml".into(),
                    expected: "text or json",
                },
            ),
            (
                "db chart --install=maybe",
                Mode::Upgrade,
                ArgvError::InvalidValue {
                    flag: "--install".into(),
                    value: "maybe".into(),
                    expected: "true or false",
                },
            ),
            (
                "db chart --no-serialize=yes",
                Mode::Upgrade,
                ArgvError::InvalidValue {
                    flag: "--no-serialize".into(),
                    value: "yes".into(),
                    expected: "true or false",
                },
            ),
            (
                "db chart -io json",
                Mode::Check,
                ArgvError::CombinedShortGuard { arg: "-io".into() },
            ),
        ];
        for (line, mode, want) in cases {
            let got = split(&argv(line), *mode).expect_err(line);
            assert_eq!(&got, want, "{line}");
            assert!(!got.to_string().is_empty());
        }
        // After `--` even flag-looking words are positionals.
        assert_eq!(
            split(&argv("-- db c -n x"), Mode::Upgrade),
            Err(ArgvError::TooManyPositionals {
                positions: vec![4, 5]
            })
        );
    }

    fn message(line: &str) -> String {
        split(&argv(line), Mode::Upgrade)
            .expect_err(line)
            .to_string()
    }

    #[test]
    fn unknown_flags_are_usage_errors_with_a_suggestion() {
        let cases: &[(&str, &str)] = &[
            (
                "db chart --no-serialise",
                "unknown flag --no-serialise: neither `helm upgrade` (helm 3 or 4) nor \
                 guarded-upgrade has it; did you mean --no-serialize?",
            ),
            (
                "db chart --verison 1.2.3",
                "unknown flag --verison: neither `helm upgrade` (helm 3 or 4) nor \
                 guarded-upgrade has it; did you mean --version?",
            ),
            (
                "db chart --Namespace=x",
                "unknown flag --Namespace: neither `helm upgrade` (helm 3 or 4) nor \
                 guarded-upgrade has it; did you mean --namespace?",
            ),
            (
                "db chart --lock-timout=5m",
                "unknown flag --lock-timout: neither `helm upgrade` (helm 3 or 4) nor \
                 guarded-upgrade has it; did you mean --lock-timeout?",
            ),
            (
                "db chart --frobnicate",
                "unknown flag --frobnicate: neither `helm upgrade` (helm 3 or 4) nor \
                 guarded-upgrade has it",
            ),
            // Removed before helm 4 / never upgrade flags.
            (
                "db chart --max-chart-size=3",
                "unknown flag --max-chart-size: neither `helm upgrade` (helm 3 or 4) nor \
                 guarded-upgrade has it",
            ),
            (
                "db chart -x",
                "unknown shorthand flag -x in argument 3 (counting from 1 after the subcommand); \
                 known shorthands: -f, -h, -i, -l, -n, -o, -v",
            ),
            (
                "db chart -iq",
                "unknown shorthand flag -q in argument 3 (counting from 1 after the subcommand); \
                 known shorthands: -f, -h, -i, -l, -n, -o, -v",
            ),
        ];
        for (line, want) in cases {
            assert_eq!(message(line), *want, "{line}");
        }
    }

    #[test]
    fn stray_values_are_named_by_position_never_echoed() {
        // `--pasword s3cr3t`: the misspelt flag is refused first, without its value.
        let msg = message("db chart --pasword s3cr3t");
        assert_eq!(
            msg,
            "unknown flag --pasword: neither `helm upgrade` (helm 3 or 4) nor guarded-upgrade \
             has it; did you mean --password?"
        );
        let msg = message("db chart --pasword=s3cr3t");
        assert!(!msg.contains("s3cr3t"), "{msg}");
        assert_eq!(
            message("db chart s3cr3t"),
            "too many arguments: expected RELEASE CHART, got 1 more at position 3 (counting from \
             1 after the subcommand; values not shown); quote values that contain spaces and \
             check for a misspelt flag or one missing its `--`"
        );
        assert_eq!(
            message("-i db chart s3cr3t -n x again"),
            "too many arguments: expected RELEASE CHART, got 2 more at positions 4, 7 (counting \
             from 1 after the subcommand; values not shown); quote values that contain spaces \
             and check for a misspelt flag or one missing its `--`"
        );
    }

    #[test]
    fn conflicting_guard_flags() {
        let conflict = |other: &str, why: &str| {
            format!("--no-serialize cannot be combined with {other}: {why}")
        };
        let cases: &[(&str, String)] = &[
            (
                "db chart --no-serialize --lock-timeout 5m",
                conflict(
                    "--lock-timeout",
                    "without the mutex there is nothing to wait for",
                ),
            ),
            (
                "db chart --no-serialize --mutex-timeout=5m",
                conflict(
                    "--mutex-timeout",
                    "without the mutex there is nothing to wait for",
                ),
            ),
            (
                "db chart --lease-duration=20s --no-serialize",
                conflict("--lease-duration", "without the mutex no Lease is written"),
            ),
            (
                "db chart --no-serialize --recover-pending-after 1h",
                conflict(
                    "--recover-pending-after",
                    "recovering a pending release is only safe while holding the mutex",
                ),
            ),
            (
                "db chart --lease-duration 0",
                "invalid value \"0\" for --lease-duration: expected a duration such as 90s, 5m, \
                 2h or 1d"
                    .into(),
            ),
            (
                "db chart --lease-duration 0s",
                "invalid value \"0s\" for --lease-duration: expected a duration of at least 3s \
                 (the Lease is renewed every third of it)"
                    .into(),
            ),
            (
                "db chart --lock-timeout soon",
                "invalid value \"soon\" for --lock-timeout: expected a duration such as 90s, 5m, \
                 2h or 1d"
                    .into(),
            ),
        ];
        for (line, want) in cases {
            assert_eq!(&message(line), want, "{line}");
        }
        // Without --no-serialize, or with it turned off, the same flags are fine.
        ok(
            "db chart --lock-timeout 5m --lease-duration 3s",
            Mode::Upgrade,
        );
        ok(
            "db chart --no-serialize=false --lock-timeout 5m",
            Mode::Upgrade,
        );
        ok("db chart --lock-timeout 0s", Mode::Upgrade);
    }

    /// Every spelling pflag accepts for `--labels` (issue 25, item 7): a key under
    /// `guarded-upgrade.io/` is refused, deletions (`=null`) included; other keys pass.
    #[test]
    fn reserved_labels_are_refused_in_every_spelling() {
        let refused: &[(&[&str], &str, &str)] = &[
            (
                &["--labels", "guarded-upgrade.io/pin=2.x"],
                "--labels",
                "guarded-upgrade.io/pin",
            ),
            (
                &["--labels=guarded-upgrade.io/lock=null"],
                "--labels",
                "guarded-upgrade.io/lock",
            ),
            (
                &["-l", "a=b,guarded-upgrade.io/pin=2.x"],
                "-l",
                "guarded-upgrade.io/pin",
            ),
            (
                &["-lguarded-upgrade.io/pin=2.x"],
                "-l",
                "guarded-upgrade.io/pin",
            ),
            (
                &["-l=guarded-upgrade.io/pin=2.x"],
                "-l",
                "guarded-upgrade.io/pin",
            ),
            (
                &["-il", "guarded-upgrade.io/by=x"],
                "-l",
                "guarded-upgrade.io/by",
            ),
            (
                &["-l", "a=b", "--labels", "c=d,guarded-upgrade.io/x=1"],
                "--labels",
                "guarded-upgrade.io/x",
            ),
            // One `=`: pflag strips the quotes around the whole value.
            (
                &["-l", "\"guarded-upgrade.io/pin=2.x\""],
                "-l",
                "guarded-upgrade.io/pin",
            ),
            // CSV quoting, as pflag reads two or more pairs.
            (
                &["-l", "a=b,\"guarded-upgrade.io/pin=1,2\""],
                "-l",
                "guarded-upgrade.io/pin",
            ),
            // A value helm would refuse (a bare quote) still names the key (fail closed).
            (
                &["-l", "a=b\"c,guarded-upgrade.io/pin=2"],
                "-l",
                "guarded-upgrade.io/pin",
            ),
        ];
        for (extra, flag, key) in refused {
            let mut args = argv("db c");
            args.extend(extra.iter().map(|s| s.to_string()));
            let err = split(&args, Mode::Upgrade).expect_err(&format!("{extra:?}"));
            assert_eq!(
                err,
                ArgvError::ReservedLabel {
                    flag: flag.to_string(),
                    key: key.to_string()
                },
                "{extra:?}"
            );
            assert!(err.to_string().contains("guarded-upgrade unlock"), "{err}");
            assert!(split(&args, Mode::Check).is_err());
        }
        for extra in [
            &["-l", "team=db,tier=guarded-upgrade.io/x"][..],
            // One `=` in all: helm reads one key `a,guarded-upgrade.io/pin`.
            &["-l", "a,guarded-upgrade.io/pin=1"],
            &["--labels", "x=guarded-upgrade.io/pin"],
            &["--", "db2", "c2"],
        ] {
            let mut args = argv("db c");
            args.extend(extra.iter().map(|s| s.to_string()));
            if extra[0] == "--" {
                continue;
            }
            split(&args, Mode::Upgrade).unwrap_or_else(|e| panic!("{extra:?}: {e}"));
        }
    }

    #[test]
    fn string_to_string_reads_as_pflag() {
        let pairs = |v: &str| {
            string_to_string(v).map(|p| {
                p.into_iter()
                    .map(|(k, v)| format!("{k}:{v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
        };
        assert_eq!(pairs("a=b").as_deref(), Some("a:b"));
        assert_eq!(pairs("\"a=b\"").as_deref(), Some("a:b"));
        assert_eq!(pairs("a=b,c").as_deref(), Some("a:b,c"));
        assert_eq!(pairs("a=b,c=d").as_deref(), Some("a:b c:d"));
        assert_eq!(pairs("a=b,\"c=d,e\"").as_deref(), Some("a:b c:d,e"));
        assert_eq!(pairs("a=b,\"c=\"\"q\"\"\"").as_deref(), Some("a:b c:\"q\""));
        assert_eq!(pairs("\n\na=b,c=d\ne=f").as_deref(), Some("a:b c:d"));
        assert_eq!(pairs("a=b,c=d=e").as_deref(), Some("a:b c:d=e"));
        assert_eq!(pairs("ab"), None);
        assert_eq!(pairs("a=b,c"), Some("a:b,c".into()));
        assert_eq!(pairs("a=b,c,d=e"), None);
        assert_eq!(pairs("a=b,c\"d=e"), None);
        assert_eq!(pairs("a=b,\"c=d\"x"), None);
        assert_eq!(pairs("a=b,\"c=d"), None);
    }

    #[test]
    fn the_former_lock_timeout_is_the_mutex_timeout() {
        let timeout = |line: &str| {
            split(&argv(line), Mode::Upgrade)
                .unwrap()
                .guard
                .mutex_timeout
        };
        assert_eq!(
            timeout("db chart --mutex-timeout 2m"),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            timeout("db chart --lock-timeout=2m"),
            Some(Duration::from_secs(120))
        );
        // One flag under two names: the last one written wins, as pflag does.
        assert_eq!(
            timeout("db chart --lock-timeout 2m --mutex-timeout 3m"),
            Some(Duration::from_secs(180))
        );
        assert_eq!(
            split(&argv("db chart --lock-timeout 2m"), Mode::Upgrade)
                .unwrap()
                .helm_args,
            argv("db chart"),
            "the former name is a guard flag, not passed to helm"
        );
        assert_eq!(
            message("db chart --mutex-timeout soon"),
            "invalid value \"soon\" for --mutex-timeout: expected a duration such as 90s, 5m, \
             2h or 1d"
        );
    }

    #[test]
    fn values_with_spaces_and_equals_are_untouched() {
        let args: Vec<String> = [
            "db",
            "chart",
            "--set",
            "a=b c",
            "--description=x=y z",
            "-f",
            "my values.yaml",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let s = split(&args, Mode::Upgrade).unwrap();
        assert_eq!(s.helm_args, args);
    }
}
