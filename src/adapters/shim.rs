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
    guard_flags, helm_flag, helm_short, Arity, GuardFlag, GuardOptions, Mode, FORMER_NAMES,
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

/// Finds helm's subcommand the way cobra does (skipping global flags and their values)
/// and routes the command line.
pub(crate) fn route(args: &[OsString]) -> Result<Route, String> {
    let mut i = 0;
    let mut sub = None;
    while i < args.len() {
        let Some(arg) = args[i].to_str() else {
            // A non-UTF-8 word before the subcommand is no flag we know: not an upgrade
            // unless a later word is. Keep looking as cobra would.
            i += 1;
            continue;
        };
        if arg == "--" {
            break;
        }
        if let Some(body) = arg.strip_prefix("--") {
            if !body.contains('=') && takes_separate_value(helm_flag(body)) {
                i += 1;
            }
        } else if arg.chars().count() == 2
            && takes_separate_value(arg.chars().nth(1).and_then(helm_short))
        {
            i += 1;
        } else if !arg.starts_with('-') || arg == "-" {
            sub = Some(i);
            break;
        }
        i += 1;
    }
    let Some(at) = sub.filter(|&at| args[at] == "upgrade") else {
        return Ok(Route::Passthrough);
    };
    let asks_help = args
        .iter()
        .take_while(|a| a.as_os_str() != "--")
        .any(|a| a == "-h" || a == "--help");
    if asks_help {
        return Ok(Route::Passthrough);
    }
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

/// A global helm flag whose value is the next word (`--namespace x`, `-n x`): the shim
/// skips that word to find the subcommand, as cobra does.
fn takes_separate_value(flag: Option<&crate::core::flags::HelmFlag>) -> bool {
    flag.is_some_and(|f| f.global && f.arity == Arity::Value)
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
