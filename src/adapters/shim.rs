//! The helm shim: invoked as `helm` (argv[0]) or as `guarded-upgrade helm -- ARGS`, the
//! binary guards `helm upgrade` and hands every other helm command to the real helm.
//!
//! In shim mode the argv belongs to helm, so guard settings come from `GUARDED_UPGRADE_*`
//! environment variables ([`ShimEnv`]), validated by the plan step like flags are. This
//! module is pure except for [`real_helm`], which the commands call at run time.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use crate::adapters::helm::HelmError;
use crate::core::argv::invalid_value;
use crate::core::flags::{
    guard_flags, helm_flag, helm_short, Arity, GuardFlag, GuardOptions, HelmFlag, Mode,
    FORMER_NAMES, HELM_FLAGS,
};

/// Prefix of every shim setting.
pub(crate) const PREFIX: &str = "GUARDED_UPGRADE_";

/// The real helm binary (otherwise: the next `helm` on PATH that is not this binary): the
/// `--helm` row of the guard flag table.
pub(crate) const HELM_VAR: &str = "GUARDED_UPGRADE_HELM";

/// Belongs to the helm plugin's install hook; allowed (and ignored) here.
const PLUGIN_BINARY_VAR: &str = "GUARDED_UPGRADE_BINARY";

/// Every setting the shim reads: the variables of the guard flag table, in its order.
/// Other `GUARDED_UPGRADE_*` names are usage errors, so a typo cannot silently drop a
/// guard setting.
pub(crate) fn settings() -> impl Iterator<Item = (&'static str, &'static GuardFlag)> {
    guard_flags(Mode::Upgrade).filter_map(|f| Some((f.env?, f)))
}

/// The `GUARDED_UPGRADE_*` variables of the process, non-empty ones only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ShimEnv {
    vars: Vec<(String, String)>,
}

impl ShimEnv {
    /// Reads the process environment.
    pub(crate) fn from_process() -> ShimEnv {
        ShimEnv::from_pairs(std::env::vars_os().filter_map(|(k, v)| {
            let k = k.into_string().ok()?;
            k.starts_with(PREFIX)
                .then(|| (k, v.to_string_lossy().into_owned()))
        }))
    }

    /// From explicit pairs (tests).
    pub(crate) fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> ShimEnv {
        let mut vars: Vec<(String, String)> = pairs
            .into_iter()
            .filter(|(k, v)| k.starts_with(PREFIX) && !v.is_empty())
            .collect();
        vars.sort();
        ShimEnv { vars }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `GUARDED_UPGRADE_HELM`.
    pub(crate) fn helm(&self) -> Option<String> {
        self.get(HELM_VAR).map(str::to_string)
    }

    /// The guard options the variables set, each parsed as its flag is and named in the
    /// message when refused.
    pub(crate) fn guard_options(&self) -> Result<GuardOptions, String> {
        let known = |name: &str| {
            name == PLUGIN_BINARY_VAR
                || settings().any(|(var, _)| var == name)
                || FORMER_NAMES.iter().any(|f| f.env == name)
        };
        if let Some((name, _)) = self.vars.iter().find(|(k, _)| !known(k)) {
            let names: Vec<&str> = settings().map(|(var, _)| var).collect();
            return Err(format!(
                "unknown setting {name}; the shim reads {} (see docs/shim.md)",
                names.join(", ")
            ));
        }
        let mut options = GuardOptions::default();
        for (var, flag) in settings() {
            let former = FORMER_NAMES
                .iter()
                .filter(|f| f.now == flag.long)
                .map(|f| f.env)
                .find(|former| self.get(former).is_some());
            let var = match (self.get(var), former) {
                (Some(_), Some(former)) => {
                    return Err(format!(
                        "{former} is the former name of {var}; set only {var} (see docs/shim.md)"
                    ))
                }
                (None, Some(former)) => former,
                _ => var,
            };
            if let Some(text) = self.get(var) {
                (flag.apply)(&mut options, Some(text))
                    .map_err(|bad| invalid_value(var, text, bad).to_string())?;
            }
        }
        Ok(options)
    }
}

/// True when the process was started under the name `helm` (a symlink or copy of this
/// binary earlier on PATH).
pub(crate) fn invoked_as_helm(argv0: &OsStr) -> bool {
    Path::new(argv0).file_name() == Some(OsStr::new("helm"))
}

/// What the shim does with a helm command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// `helm upgrade …`: guarded. helm's argv without the `upgrade` word, global flags
    /// included (helm accepts them after the subcommand too).
    Upgrade(Vec<String>),
    /// Anything else: handed to the real helm unchanged.
    Passthrough,
}

/// What helm's own command tree does with an argv, as far as the shim needs to know:
/// cobra's `Find` on helm's root (as helm's `main` runs it), then pflag's parse of
/// `upgrade`'s flags and cobra's checks in `execute`'s order (help before arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelmOutcome {
    /// `helm upgrade` runs.
    RunUpgrade,
    /// `upgrade` is found and shows its help (`-h`/`--help` parsed as a flag of it).
    HelpUpgrade,
    /// `upgrade` is found, then its flags or arguments fail (or might: flag values are
    /// not type-checked here).
    ErrorUpgrade,
    /// Anything but `upgrade`: another command, the root's help, an unknown command.
    Other,
}

/// What helm `major` (3 or 4) does with `args` (helm's argv after the program name), and
/// where the `upgrade` word is when it finds it.
pub fn helm_outcome(args: &[OsString], major: u8) -> (HelmOutcome, Option<usize>) {
    use std::os::unix::ffi::OsStrExt;
    let words: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    match find_subcommand(&words, major) {
        Some(at) if words[at] == b"upgrade" => {
            let rest: Vec<&[u8]> = words
                .iter()
                .enumerate()
                .filter(|&(n, _)| n != at)
                .map(|(_, w)| *w)
                .collect();
            (parse_upgrade(&rest, major), Some(at))
        }
        _ => (HelmOutcome::Other, None),
    }
}

/// The position of the word cobra's `Find` takes for helm's subcommand (its `stripFlags`
/// on the root command): words that are flags, and the word after a flag that is not
/// known to take no value (an unknown flag counts as taking one), are skipped; `--` ends
/// the search. At that point the root has only helm's global flags (`-h`/`--help` are
/// added later), each with its arity in helm `major`.
fn find_subcommand(words: &[&[u8]], major: u8) -> Option<usize> {
    let no_value = |flag: Option<&HelmFlag>| {
        flag.is_some_and(|f| f.global && f.in_helm(major) && f.arity_in(major) != Arity::Value)
    };
    let mut i = 0;
    while i < words.len() {
        let word = words[i];
        i += 1;
        let has_eq = word.contains(&b'=');
        let long = word.strip_prefix(b"--");
        let takes_next = match long {
            _ if word == b"--" => return None,
            Some(name) if !has_eq => !no_value(std::str::from_utf8(name).ok().and_then(helm_flag)),
            _ if word.len() == 2 && word[0] == b'-' && !has_eq => {
                !no_value(char::from_u32(u32::from(word[1])).and_then(helm_short))
            }
            _ => {
                if !word.is_empty() && word[0] != b'-' {
                    return Some(i - 1);
                }
                false
            }
        };
        if takes_next {
            // cobra stops looking when the flag's value would be the last word.
            if words.len() - i <= 1 {
                return None;
            }
            i += 1;
        }
    }
    None
}

/// pflag's parse of `upgrade`'s argv (the `upgrade` word removed) with helm `major`'s
/// flags, then cobra's order: a parse error, else help, else exactly RELEASE and CHART.
fn parse_upgrade(words: &[&[u8]], major: u8) -> HelmOutcome {
    let known = |f: &&HelmFlag| f.in_helm(major);
    let long = |name: &[u8]| {
        HELM_FLAGS
            .iter()
            .filter(known)
            .find(|f| f.long.as_bytes() == name)
    };
    let short = |c: u8| {
        HELM_FLAGS
            .iter()
            .filter(known)
            .find(|f| f.short.is_some_and(|s| u32::from(s) == u32::from(c)))
    };
    // A value pflag sets: booleans must parse (`--install=maybe` fails).
    let set = |flag: &HelmFlag, value: &[u8], help: &mut bool| -> Result<(), ()> {
        if flag.arity_in(major) != Arity::Bool {
            return Ok(());
        }
        let on = std::str::from_utf8(value)
            .ok()
            .and_then(|v| crate::core::flags::parse_bool(v).ok())
            .ok_or(())?;
        if flag.long == "help" {
            *help = on;
        }
        Ok(())
    };
    let (mut help, mut positionals, mut i) = (false, 0usize, 0usize);
    let outcome = loop {
        let Some(&word) = words.get(i) else {
            break Ok(());
        };
        i += 1;
        if word.len() < 2 || word[0] != b'-' {
            positionals += 1;
            continue;
        }
        if word == b"--" {
            positionals += words.len() - i;
            break Ok(());
        }
        if let Some(body) = word.strip_prefix(b"--") {
            if body.is_empty() || body[0] == b'-' || body[0] == b'=' {
                break Err(());
            }
            let (name, value) = match body.iter().position(|&b| b == b'=') {
                Some(eq) => (&body[..eq], Some(&body[eq + 1..])),
                None => (body, None),
            };
            let Some(flag) = long(name) else {
                break Err(());
            };
            let value: &[u8] = match (value, flag.arity_in(major)) {
                (Some(v), _) => v,
                (None, Arity::Bool) => b"true",
                (None, Arity::Optional) => b"",
                (None, Arity::Value) => match words.get(i) {
                    Some(v) => {
                        i += 1;
                        v
                    }
                    None => break Err(()),
                },
            };
            if set(flag, value, &mut help).is_err() {
                break Err(());
            }
            continue;
        }
        // One or more shorthands: `-i`, `-ih`, `-nfoo`, `-n=foo`, `-n foo`.
        let mut shorts = &word[1..];
        // pflag ignores `-test.…` (go test's flags).
        if shorts.starts_with(b"test.") {
            continue;
        }
        let mut failed = false;
        while let Some(&c) = shorts.first() {
            let Some(flag) = short(c) else {
                failed = true;
                break;
            };
            let value: &[u8] = if shorts.len() > 2 && shorts[1] == b'=' {
                let v = &shorts[2..];
                shorts = b"";
                v
            } else if flag.arity_in(major) != Arity::Value {
                shorts = &shorts[1..];
                if flag.arity_in(major) == Arity::Bool {
                    b"true"
                } else {
                    b""
                }
            } else if shorts.len() > 1 {
                let v = &shorts[1..];
                shorts = b"";
                v
            } else if let Some(v) = words.get(i) {
                i += 1;
                shorts = b"";
                v
            } else {
                failed = true;
                break;
            };
            if set(flag, value, &mut help).is_err() {
                failed = true;
                break;
            }
        }
        if failed {
            break Err(());
        }
    };
    match outcome {
        Err(()) => HelmOutcome::ErrorUpgrade,
        Ok(()) if help => HelmOutcome::HelpUpgrade,
        Ok(()) if positionals != 2 => HelmOutcome::ErrorUpgrade,
        Ok(()) => HelmOutcome::RunUpgrade,
    }
}

/// Whether the shim guards `args`: when helm 3 or helm 4 would run `upgrade` with them, or
/// find `upgrade` and fail on its flags or arguments (fail closed: the guard refuses or
/// runs it guarded). Only what neither helm runs as `upgrade` (other commands, help)
/// reaches the real helm unguarded.
pub fn routes_to_guard(args: &[OsString]) -> bool {
    upgrade_word(args).is_some()
}

/// The position of the `upgrade` word when the shim guards `args`.
fn upgrade_word(args: &[OsString]) -> Option<usize> {
    [3, 4]
        .into_iter()
        .find_map(|major| match helm_outcome(args, major) {
            (HelmOutcome::RunUpgrade | HelmOutcome::ErrorUpgrade, at) => at,
            _ => None,
        })
}

/// Routes a helm command line as helm's own cobra parse would ([`helm_outcome`] for helm
/// 3 and 4; [`routes_to_guard`]).
pub(crate) fn route(args: &[OsString]) -> Result<Route, String> {
    let Some(at) = upgrade_word(args) else {
        return Ok(Route::Passthrough);
    };
    let mut rest = Vec::with_capacity(args.len() - 1);
    for (n, arg) in args.iter().enumerate().filter(|&(n, _)| n != at) {
        match arg.to_str() {
            Some(text) => rest.push(text.to_string()),
            None => {
                return Err(format!(
                    "helm upgrade argument {} ({arg:?}) is not valid UTF-8; the guard cannot \
                     read it",
                    n + 1
                ))
            }
        }
    }
    Ok(Route::Upgrade(rest))
}

/// Words the guard flag parser removed from helm's argv (shim mode reads no guard flags).
pub(crate) fn removed_words(input: &[String], kept: &[String]) -> Vec<String> {
    let mut kept = kept.iter().peekable();
    let mut removed = Vec::new();
    for word in input {
        if kept.peek() == Some(&word) {
            kept.next();
        } else {
            removed.push(word.clone());
        }
    }
    removed
}

/// The real helm: `GUARDED_UPGRADE_HELM` when set, else the first `helm` on PATH that is
/// not this binary. Never this binary: that would recurse.
pub(crate) fn real_helm(explicit: Option<&str>) -> Result<PathBuf, HelmError> {
    crate::adapters::helm::find(explicit, HELM_VAR, HelmError::ShimNotFound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::decision::{CompareKey, VersionRule};
    use std::time::Duration;

    fn os(line: &str) -> Vec<OsString> {
        line.split_whitespace().map(OsString::from).collect()
    }

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn routes_upgrade_and_passes_everything_else() {
        for (line, want) in [
            ("upgrade db ./c", Some("db ./c")),
            (
                "upgrade --install db ./c -n x",
                Some("--install db ./c -n x"),
            ),
            ("-n x upgrade db c", Some("-n x db c")),
            (
                "--namespace x --debug upgrade db c",
                Some("--namespace x --debug db c"),
            ),
            (
                "--kube-context upgrade upgrade db c",
                Some("--kube-context upgrade db c"),
            ),
            ("--kubeconfig=/k upgrade db c", Some("--kubeconfig=/k db c")),
            ("-nupgrade list", None),
            ("-n upgrade list", None),
            ("list", None),
            ("version", None),
            ("", None),
            ("repo add upgrade http://x", None),
            ("template upgrade ./c", None),
            ("help upgrade", None),
            ("upgrade --help", None),
            ("upgrade db c -h", None),
            ("-- upgrade db c", None),
            ("upgrade db c -- -h", Some("db c -- -h")),
            // Every global value flag of the helm table is skipped with its value, klog's
            // hidden `--v`/`-v` included.
            ("--v 5 upgrade db c", Some("--v 5 db c")),
            ("-v 5 upgrade db c", Some("-v 5 db c")),
            (
                "--log-dir upgrade upgrade db c",
                Some("--log-dir upgrade db c"),
            ),
            ("--burst-limit 5 upgrade db c", Some("--burst-limit 5 db c")),
            // Issue 25, item 8: cobra skips an unknown flag's value (`-f` is no global
            // flag), pflag gives `--description` the value `-h`, an empty word is no
            // command, and klog's newer flags are global flags too.
            ("-f v.yaml upgrade db ./old", Some("-f v.yaml db ./old")),
            (
                "upgrade db ./old --description -h",
                Some("db ./old --description -h"),
            ),
            (
                "--legacy-stderr-threshold-behavior upgrade db c",
                Some("--legacy-stderr-threshold-behavior db c"),
            ),
            ("-i upgrade db c", None),
            ("-h upgrade db c", None),
            ("upgrade db c -ih", None),
            ("upgrade db c -h=false", Some("db c -h=false")),
        ] {
            let got = route(&os(line)).unwrap();
            let want = want.map_or(Route::Passthrough, |w| Route::Upgrade(words(w)));
            assert_eq!(got, want, "{line}");
        }
    }

    #[test]
    fn the_real_helm_variable_is_the_helm_flags_row() {
        assert_eq!(
            crate::core::flags::guard_flag("helm", Mode::Upgrade).and_then(|f| f.env),
            Some(HELM_VAR)
        );
    }

    #[test]
    fn non_utf8_upgrade_argument_is_an_error() {
        use std::os::unix::ffi::OsStringExt;
        let args = vec![
            OsString::from("upgrade"),
            OsString::from("db"),
            OsString::from_vec(vec![b'c', 0xff]),
        ];
        assert_eq!(
            route(&args).unwrap_err(),
            "helm upgrade argument 3 (\"c\\xFF\") is not valid UTF-8; the guard cannot read it"
        );
    }

    #[test]
    fn argv0_helm_is_the_shim() {
        assert!(invoked_as_helm(OsStr::new("helm")));
        assert!(invoked_as_helm(OsStr::new("/usr/local/bin/helm")));
        assert!(!invoked_as_helm(OsStr::new("guarded-upgrade")));
        assert!(!invoked_as_helm(OsStr::new("/opt/helm/guarded-upgrade")));
        assert!(!invoked_as_helm(OsStr::new("helm3")));
    }

    fn env(pairs: &[(&str, &str)]) -> ShimEnv {
        ShimEnv::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn settings_come_from_the_environment() {
        let o = env(&[
            ("GUARDED_UPGRADE_POLICY", "newer-or-equal"),
            ("GUARDED_UPGRADE_ALLOW_CHART_CHANGE", "true"),
            ("GUARDED_UPGRADE_DECISION_FILE", "/tmp/d.json"),
            ("GUARDED_UPGRADE_DECISION_OUTPUT", "json"),
            ("GUARDED_UPGRADE_DETAILED_EXITCODE", "1"),
            ("GUARDED_UPGRADE_NO_SERIALIZE", "false"),
            ("GUARDED_UPGRADE_MUTEX_TIMEOUT", "30s"),
            ("GUARDED_UPGRADE_LEASE_DURATION", "20s"),
            ("GUARDED_UPGRADE_RECOVER_PENDING_AFTER", "1h"),
            ("GUARDED_UPGRADE_NO_ANNOTATIONS", "True"),
            ("GUARDED_UPGRADE_INPUT_TIMEOUT", "5s"),
            ("GUARDED_UPGRADE_COMPARE", "value:image.tag"),
            (HELM_VAR, "/usr/bin/helm"),
            ("GUARDED_UPGRADE_BINARY", "/x"),
            ("OTHER", "ignored"),
        ])
        .guard_options()
        .unwrap();
        assert_eq!(
            o,
            GuardOptions {
                version_rule: VersionRule::NewerOrEqual,
                allow_chart_change: true,
                helm: Some("/usr/bin/helm".into()),
                output: Some("json".into()),
                decision_file: Some("/tmp/d.json".into()),
                detailed_exitcode: true,
                no_serialize: false,
                mutex_timeout: Some(Duration::from_secs(30)),
                recover_pending_after: Some(Duration::from_secs(3600)),
                lease_duration: Some(Duration::from_secs(20)),
                no_annotations: true,
                input_timeout: Some(Duration::from_secs(5)),
                compare: CompareKey::Value("image.tag".into()),
            }
        );
        assert_eq!(env(&[]).guard_options().unwrap(), GuardOptions::default());
        assert_eq!(
            env(&[("GUARDED_UPGRADE_POLICY", "")])
                .guard_options()
                .unwrap(),
            GuardOptions::default(),
            "empty is unset"
        );
    }

    #[test]
    fn bad_settings_are_named() {
        for (pairs, line) in [
            (
                &[("GUARDED_UPGRADE_POLICY", "newest")][..],
                "GUARDED_UPGRADE_POLICY: unknown version policy \"newest\": use one of newer, \
                 newer-or-equal, newer-or-changed, off",
            ),
            (
                &[("GUARDED_UPGRADE_NO_SERIALIZE", "yes")][..],
                "invalid value \"yes\" for GUARDED_UPGRADE_NO_SERIALIZE: expected true or false",
            ),
            (
                &[("GUARDED_UPGRADE_DECISION_OUTPUT", "yaml")][..],
                "invalid value \"yaml\" for GUARDED_UPGRADE_DECISION_OUTPUT: expected text or json",
            ),
            (
                &[("GUARDED_UPGRADE_POLICIY", "off")][..],
                "unknown setting GUARDED_UPGRADE_POLICIY; the shim reads GUARDED_UPGRADE_POLICY, \
                 GUARDED_UPGRADE_COMPARE, GUARDED_UPGRADE_ALLOW_CHART_CHANGE, \
                 GUARDED_UPGRADE_HELM, GUARDED_UPGRADE_DECISION_FILE, \
                 GUARDED_UPGRADE_DECISION_OUTPUT, GUARDED_UPGRADE_DETAILED_EXITCODE, \
                 GUARDED_UPGRADE_NO_SERIALIZE, GUARDED_UPGRADE_MUTEX_TIMEOUT, \
                 GUARDED_UPGRADE_LEASE_DURATION, GUARDED_UPGRADE_RECOVER_PENDING_AFTER, \
                 GUARDED_UPGRADE_INPUT_TIMEOUT, GUARDED_UPGRADE_NO_ANNOTATIONS (see \
                 docs/shim.md)",
            ),
        ] {
            assert_eq!(env(pairs).guard_options().unwrap_err(), line);
        }
    }

    #[test]
    fn the_former_lock_timeout_variable_is_the_mutex_timeout() {
        let timeout = |pairs: &[(&str, &str)]| env(pairs).guard_options().map(|o| o.mutex_timeout);
        assert_eq!(
            timeout(&[("GUARDED_UPGRADE_LOCK_TIMEOUT", "2m")]),
            Ok(Some(Duration::from_secs(120)))
        );
        assert_eq!(
            timeout(&[("GUARDED_UPGRADE_MUTEX_TIMEOUT", "2m")]),
            Ok(Some(Duration::from_secs(120)))
        );
        assert_eq!(
            timeout(&[("GUARDED_UPGRADE_LOCK_TIMEOUT", "soon")]),
            Err(
                "invalid value \"soon\" for GUARDED_UPGRADE_LOCK_TIMEOUT: expected a duration \
                 such as 90s, 5m, 2h or 1d"
                    .to_string()
            )
        );
        assert_eq!(
            timeout(&[
                ("GUARDED_UPGRADE_LOCK_TIMEOUT", "2m"),
                ("GUARDED_UPGRADE_MUTEX_TIMEOUT", "2m")
            ]),
            Err("GUARDED_UPGRADE_LOCK_TIMEOUT is the former name of \
                 GUARDED_UPGRADE_MUTEX_TIMEOUT; set only GUARDED_UPGRADE_MUTEX_TIMEOUT (see \
                 docs/shim.md)"
                .to_string())
        );
    }

    #[test]
    fn removed_words_are_the_difference() {
        assert_eq!(
            removed_words(
                &words("db c --no-serialize -n x --lock-timeout 5s"),
                &words("db c -n x")
            ),
            words("--no-serialize --lock-timeout 5s")
        );
        assert!(removed_words(&words("db c"), &words("db c")).is_empty());
    }

    #[test]
    fn real_helm_is_never_this_binary() {
        let me = std::env::current_exe().unwrap();
        let err = real_helm(Some(me.to_str().unwrap())).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "refusing to run {:?} (from GUARDED_UPGRADE_HELM) as helm: it is this \
                 guarded-upgrade binary (the same path); guarded-upgrade never runs itself as \
                 helm. Put the real helm on PATH after the shim, or name it with \
                 GUARDED_UPGRADE_HELM (shim) or --helm/HELM_BIN",
                me.canonicalize().unwrap()
            )
        );
        assert!(err.is_usage());
    }
}
