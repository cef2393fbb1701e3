//! The helm shim: invoked as `helm` (argv[0]) or as `guarded-upgrade helm -- ARGS`, the
//! binary guards `helm upgrade` and hands every other helm command to the real helm.
//!
//! In shim mode the argv belongs to helm, so guard settings come from `GUARDED_UPGRADE_*`
//! environment variables ([`ShimEnv`]), validated by the plan step like flags are. This
//! module is pure except for [`real_helm`], which the commands call at run time.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use crate::argv::{DurationKind, GuardOptions};
use crate::decision::{CompareKey, Policy};
use crate::helm::HelmError;

/// Prefix of every shim setting.
pub(crate) const PREFIX: &str = "GUARDED_UPGRADE_";

/// The real helm binary (otherwise: the next `helm` on PATH that is not this binary).
pub(crate) const HELM_VAR: &str = "GUARDED_UPGRADE_HELM";
/// `--min-version-policy`.
pub(crate) const POLICY_VAR: &str = "GUARDED_UPGRADE_POLICY";
/// `--allow-chart-change`.
pub(crate) const ALLOW_CHART_CHANGE_VAR: &str = "GUARDED_UPGRADE_ALLOW_CHART_CHANGE";
/// `--decision-file`.
pub(crate) const DECISION_FILE_VAR: &str = "GUARDED_UPGRADE_DECISION_FILE";
/// `--decision-output`.
pub(crate) const DECISION_OUTPUT_VAR: &str = "GUARDED_UPGRADE_DECISION_OUTPUT";
/// `--detailed-exitcode`.
pub(crate) const DETAILED_EXITCODE_VAR: &str = "GUARDED_UPGRADE_DETAILED_EXITCODE";
/// `--no-serialize`.
pub(crate) const NO_SERIALIZE_VAR: &str = "GUARDED_UPGRADE_NO_SERIALIZE";
/// `--lock-timeout`.
pub(crate) const LOCK_TIMEOUT_VAR: &str = "GUARDED_UPGRADE_LOCK_TIMEOUT";
/// `--lease-duration`.
pub(crate) const LEASE_DURATION_VAR: &str = "GUARDED_UPGRADE_LEASE_DURATION";
/// `--recover-pending-after`.
pub(crate) const RECOVER_PENDING_AFTER_VAR: &str = "GUARDED_UPGRADE_RECOVER_PENDING_AFTER";
/// `--no-annotations`.
pub(crate) const NO_ANNOTATIONS_VAR: &str = "GUARDED_UPGRADE_NO_ANNOTATIONS";
/// `--compare`.
pub(crate) const COMPARE_VAR: &str = "GUARDED_UPGRADE_COMPARE";

/// Every setting the shim reads. Other `GUARDED_UPGRADE_*` names are usage errors, so a
/// typo cannot silently drop a guard setting. `GUARDED_UPGRADE_BINARY` belongs to the helm
/// plugin's install hook and is allowed (and ignored) here.
const KNOWN: &[&str] = &[
    HELM_VAR,
    POLICY_VAR,
    ALLOW_CHART_CHANGE_VAR,
    DECISION_FILE_VAR,
    DECISION_OUTPUT_VAR,
    DETAILED_EXITCODE_VAR,
    NO_SERIALIZE_VAR,
    LOCK_TIMEOUT_VAR,
    LEASE_DURATION_VAR,
    RECOVER_PENDING_AFTER_VAR,
    NO_ANNOTATIONS_VAR,
    COMPARE_VAR,
    "GUARDED_UPGRADE_BINARY",
];

/// helm's global flags that take a value (helm 3 and 4), for finding the subcommand.
const GLOBAL_VALUE_FLAGS: &[&str] = &[
    "burst-limit",
    "color",
    "colour",
    "content-cache",
    "kube-apiserver",
    "kube-as-group",
    "kube-as-user",
    "kube-ca-file",
    "kube-context",
    "kube-tls-server-name",
    "kube-token",
    "kubeconfig",
    "namespace",
    "qps",
    "registry-config",
    "repository-cache",
    "repository-config",
];

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

    /// The guard options the variables set. Durations stay text: the plan step parses them
    /// and names the variable in its message.
    /// A duration variable, checked as the matching guard flag is.
    fn duration(
        &self,
        name: &str,
        kind: DurationKind,
    ) -> Result<Option<std::time::Duration>, String> {
        self.get(name)
            .map(|text| crate::argv::guard_duration(name, text, kind))
            .transpose()
            .map_err(|e| e.to_string())
    }

    pub(crate) fn guard_options(&self) -> Result<GuardOptions, String> {
        if let Some((name, _)) = self.vars.iter().find(|(k, _)| !KNOWN.contains(&k.as_str())) {
            return Err(format!(
                "unknown setting {name}; the shim reads {} (see docs/shim.md)",
                KNOWN[..KNOWN.len() - 1].join(", ")
            ));
        }
        let flag = |name: &str| -> Result<bool, String> {
            match self.get(name) {
                None => Ok(false),
                Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
                Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
                Some(other) => Err(format!("{name}={other:?} is not true or false")),
            }
        };
        let policy = match self.get(POLICY_VAR) {
            None => Policy::default(),
            Some(text) => Policy::parse(text).map_err(|e| format!("{POLICY_VAR}: {e}"))?,
        };
        let output = match self.get(DECISION_OUTPUT_VAR) {
            None => None,
            Some(v @ ("text" | "json")) => Some(v.to_string()),
            Some(other) => {
                return Err(format!(
                    "{DECISION_OUTPUT_VAR}={other:?} is not text or json"
                ))
            }
        };
        Ok(GuardOptions {
            policy,
            allow_chart_change: flag(ALLOW_CHART_CHANGE_VAR)?,
            helm: None,
            output,
            decision_file: self.get(DECISION_FILE_VAR).map(str::to_string),
            detailed_exitcode: flag(DETAILED_EXITCODE_VAR)?,
            no_serialize: flag(NO_SERIALIZE_VAR)?,
            lock_timeout: self.duration(LOCK_TIMEOUT_VAR, DurationKind::Wait)?,
            recover_pending_after: self.duration(RECOVER_PENDING_AFTER_VAR, DurationKind::Wait)?,
            lease_duration: self.duration(LEASE_DURATION_VAR, DurationKind::Lease)?,
            no_annotations: flag(NO_ANNOTATIONS_VAR)?,
            compare: match self.get(COMPARE_VAR) {
                None => CompareKey::default(),
                Some(text) => CompareKey::parse(text).map_err(|e| format!("{COMPARE_VAR}: {e}"))?,
            },
        })
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
            if !body.contains('=') && GLOBAL_VALUE_FLAGS.contains(&body) {
                i += 1;
            }
        } else if arg == "-n" {
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
    crate::helm::find(explicit, HELM_VAR, HelmError::ShimNotFound)
}

#[cfg(test)]
mod tests {
    use super::*;
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
        ] {
            let got = route(&os(line)).unwrap();
            let want = want.map_or(Route::Passthrough, |w| Route::Upgrade(words(w)));
            assert_eq!(got, want, "{line}");
        }
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
            (POLICY_VAR, "newer-or-equal"),
            (ALLOW_CHART_CHANGE_VAR, "true"),
            (DECISION_FILE_VAR, "/tmp/d.json"),
            (DECISION_OUTPUT_VAR, "json"),
            (DETAILED_EXITCODE_VAR, "1"),
            (NO_SERIALIZE_VAR, "false"),
            (LOCK_TIMEOUT_VAR, "30s"),
            (LEASE_DURATION_VAR, "20s"),
            (RECOVER_PENDING_AFTER_VAR, "1h"),
            (NO_ANNOTATIONS_VAR, "True"),
            (COMPARE_VAR, "value:image.tag"),
            (HELM_VAR, "/usr/bin/helm"),
            ("GUARDED_UPGRADE_BINARY", "/x"),
            ("OTHER", "ignored"),
        ])
        .guard_options()
        .unwrap();
        assert_eq!(
            o,
            GuardOptions {
                policy: Policy::NewerOrEqual,
                allow_chart_change: true,
                helm: None,
                output: Some("json".into()),
                decision_file: Some("/tmp/d.json".into()),
                detailed_exitcode: true,
                no_serialize: false,
                lock_timeout: Some(Duration::from_secs(30)),
                recover_pending_after: Some(Duration::from_secs(3600)),
                lease_duration: Some(Duration::from_secs(20)),
                no_annotations: true,
                compare: CompareKey::Value("image.tag".into()),
            }
        );
        assert_eq!(env(&[]).guard_options().unwrap(), GuardOptions::default());
        assert_eq!(
            env(&[(POLICY_VAR, "")]).guard_options().unwrap(),
            GuardOptions::default(),
            "empty is unset"
        );
    }

    #[test]
    fn bad_settings_are_named() {
        for (pairs, line) in [
            (
                &[(POLICY_VAR, "newest")][..],
                "GUARDED_UPGRADE_POLICY: unknown version policy \"newest\": use one of newer, \
                 newer-or-equal, newer-or-changed, off",
            ),
            (
                &[(NO_SERIALIZE_VAR, "yes")][..],
                "GUARDED_UPGRADE_NO_SERIALIZE=\"yes\" is not true or false",
            ),
            (
                &[(DECISION_OUTPUT_VAR, "yaml")][..],
                "GUARDED_UPGRADE_DECISION_OUTPUT=\"yaml\" is not text or json",
            ),
            (
                &[("GUARDED_UPGRADE_POLICIY", "off")][..],
                "unknown setting GUARDED_UPGRADE_POLICIY; the shim reads GUARDED_UPGRADE_HELM, \
                 GUARDED_UPGRADE_POLICY, GUARDED_UPGRADE_ALLOW_CHART_CHANGE, \
                 GUARDED_UPGRADE_DECISION_FILE, GUARDED_UPGRADE_DECISION_OUTPUT, \
                 GUARDED_UPGRADE_DETAILED_EXITCODE, GUARDED_UPGRADE_NO_SERIALIZE, \
                 GUARDED_UPGRADE_LOCK_TIMEOUT, GUARDED_UPGRADE_LEASE_DURATION, \
                 GUARDED_UPGRADE_RECOVER_PENDING_AFTER, GUARDED_UPGRADE_NO_ANNOTATIONS, \
                 GUARDED_UPGRADE_COMPARE (see \
                 docs/shim.md)",
            ),
        ] {
            assert_eq!(env(pairs).guard_options().unwrap_err(), line);
        }
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
