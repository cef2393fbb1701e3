//! The release lock: one [`Lock`] for what `lock` writes and what every reader reads, its
//! label codec (this file), and the pure planners of the record writes of `lock` and
//! `unlock` ([`plan`]).
//!
//! "Lock" means the release lock only (soft, pin, hard). The per-release Lease is the mutex
//! (`adapters/mutex.rs`); what refuses changes to a hard-locked release besides helm is the
//! store's enforcer (`adapters/enforce/`).
//!
//! Why labels: Helm keeps every non-system label of a record when it rewrites it (e.g. to
//! mark it `superseded`), merges the previous revision's custom labels into a new revision
//! on upgrade, and copies the rolled-back-to revision's labels on rollback. Annotations are
//! dropped on every rewrite. So the whole lock (kind, who, when, expiry, pin and reason) is
//! kept in labels on **every** record of the release. Free text that is not a valid label
//! value is stored base32-encoded, split over numbered keys.

use std::collections::BTreeMap;

pub mod plan;

/// Kind of a release lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LockKind {
    /// Our tool skips the release; plain helm is not blocked.
    Soft,
    /// The latest record is set to `pending-upgrade`, which also blocks
    /// plain `helm upgrade`.
    Hard,
    /// Only target versions matching `pin` are allowed.
    Pin,
}

impl LockKind {
    /// `soft`, `hard` or `pin`, as stored in the lock label.
    pub fn parse(text: &str) -> Option<LockKind> {
        match text {
            "soft" => Some(LockKind::Soft),
            "hard" => Some(LockKind::Hard),
            "pin" => Some(LockKind::Pin),
            _ => None,
        }
    }

    /// The label/JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LockKind::Soft => "soft",
            LockKind::Hard => "hard",
            LockKind::Pin => "pin",
        }
    }
}

/// Prefix of every label guarded-upgrade writes.
pub const PREFIX: &str = "guarded-upgrade.io/";
/// `soft`, `hard` or `pin`: presence marks a locked release.
pub const KEY_LOCK: &str = "guarded-upgrade.io/lock";
const KEY_BY: &str = "guarded-upgrade.io/by";
const KEY_REASON: &str = "guarded-upgrade.io/reason";
const KEY_PIN: &str = "guarded-upgrade.io/pin";
/// The compare key a pin constrains (`app-version`, `value:image.tag`); absent = chart
/// version, as for pins written before keys existed.
const KEY_PIN_KEY: &str = "guarded-upgrade.io/pin-key";
const KEY_SINCE: &str = "guarded-upgrade.io/since";
const KEY_EXPIRES: &str = "guarded-upgrade.io/expires";
/// On the record a hard lock turned `pending-upgrade`: the status it had before.
pub const KEY_HARD_STATUS: &str = "guarded-upgrade.io/hard-original-status";

/// The one test of "a hard lock is in force on this record": the status the hard lock
/// saved before it marked the record `pending-upgrade` (None: no hard lock in force).
pub fn hard_lock(labels: &std::collections::BTreeMap<String, String>) -> Option<&str> {
    labels.get(KEY_HARD_STATUS).map(String::as_str)
}
/// On that record: CRC-32 (hex) of the payload guarded-upgrade wrote, to detect changes.
pub const KEY_HARD_DIGEST: &str = "guarded-upgrade.io/hard-digest";
/// On that record: the revision it locked.
pub const KEY_HARD_REVISION: &str = "guarded-upgrade.io/hard-revision";

/// Marker that a label value holds base32 text rather than the text itself.
const B32_MARK: &str = "b32.";
/// Kubernetes label values are at most 63 characters.
const MAX_LABEL_VALUE: usize = 63;
/// Longest accepted reason/by/pin text, in bytes.
pub const MAX_TEXT_BYTES: usize = 256;

/// A release lock: what `lock` writes onto every record, and what `status`, `locks` and
/// the decision read back from the latest one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lock {
    /// Soft, hard or pin.
    pub kind: LockKind,
    /// Why.
    pub reason: Option<String>,
    /// Who.
    pub by: Option<String>,
    /// When, Unix seconds (0: not known).
    pub since: i64,
    /// Expiry, Unix seconds.
    pub expires_at: Option<i64>,
    /// Version pin text.
    pub pin: Option<String>,
    /// The compare key the pin constrains; `None` = chart version.
    pub pin_key: Option<String>,
}

/// True when `value` is a valid Kubernetes label value.
pub fn is_label_value(value: &str) -> bool {
    let b = value.as_bytes();
    if b.is_empty() {
        return true;
    }
    b.len() <= MAX_LABEL_VALUE
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

const B32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

fn base32_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len() * 8 / 5 + 1);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in data {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(B32[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(B32[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = B32.iter().position(|&b| b == c)? as u32;
        buffer = (buffer << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Some(out)
}

/// Labels holding `text` under `key`: the text itself when it is a valid label value,
/// else `b32.<base32>` split over `key`, `key-1`, `key-2`, …
fn text_labels(key: &str, text: &str) -> Vec<(String, String)> {
    // An empty text is a valid (empty) label value; encoded it would be the bare marker
    // `b32.`, which ends in `.` and is rejected by the API server.
    if is_label_value(text) && !text.starts_with(B32_MARK) {
        return vec![(key.to_string(), text.to_string())];
    }
    let encoded = format!("{B32_MARK}{}", base32_encode(text.as_bytes()));
    encoded
        .as_bytes()
        .chunks(MAX_LABEL_VALUE)
        .enumerate()
        .map(|(i, chunk)| {
            let k = if i == 0 {
                key.to_string()
            } else {
                format!("{key}-{i}")
            };
            (k, String::from_utf8_lossy(chunk).into_owned())
        })
        .collect()
}

/// The text under `key` (see [`text_labels`]), marking every label it used in `used`.
fn read_text(
    labels: &BTreeMap<String, String>,
    key: &str,
    used: &mut Vec<String>,
) -> Result<Option<String>, UnreadableLock> {
    let Some(first) = labels.get(key) else {
        return Ok(None);
    };
    used.push(key.to_string());
    let Some(rest) = first.strip_prefix(B32_MARK) else {
        return Ok(Some(first.clone()));
    };
    let mut encoded = rest.to_string();
    for i in 1.. {
        let part_key = format!("{key}-{i}");
        match labels.get(&part_key) {
            Some(part) => encoded.push_str(part),
            None => break,
        }
        used.push(part_key);
    }
    let bytes = base32_decode(&encoded)
        .ok_or_else(|| UnreadableLock::new(key, "is not valid base32 text"))?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| UnreadableLock::new(key, "does not decode to UTF-8 text"))
}

/// A lock label that cannot be read: the label and why. A lock that cannot be read in
/// full is never taken for "no lock" or a weaker one: the caller refuses (exit 3).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("label {label} {problem}")]
pub struct UnreadableLock {
    /// The label at fault.
    pub label: String,
    /// What is wrong with it.
    pub problem: String,
}

impl UnreadableLock {
    fn new(label: &str, problem: impl Into<String>) -> UnreadableLock {
        UnreadableLock {
            label: label.to_string(),
            problem: problem.into(),
        }
    }
}

/// The hard-lock bookkeeping labels (read by `unlock`, not part of the lock itself).
const HARD_KEYS: [&str; 3] = [KEY_HARD_STATUS, KEY_HARD_DIGEST, KEY_HARD_REVISION];

impl Lock {
    /// Every label of this lock (not the hard-lock bookkeeping labels).
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        out.insert(KEY_LOCK.to_string(), self.kind.as_str().to_string());
        out.insert(KEY_SINCE.to_string(), self.since.to_string());
        if let Some(t) = self.expires_at {
            out.insert(KEY_EXPIRES.to_string(), t.to_string());
        }
        for (key, text) in [
            (KEY_BY, &self.by),
            (KEY_REASON, &self.reason),
            (KEY_PIN, &self.pin),
            (KEY_PIN_KEY, &self.pin_key),
        ] {
            if let Some(text) = text {
                out.extend(text_labels(key, text));
            }
        }
        out
    }

    /// When it was set, RFC 3339 (None when not known).
    pub fn since_text(&self) -> Option<String> {
        (self.since > 0).then(|| crate::core::time::format_rfc3339(self.since))
    }

    /// Same lock apart from the time it was set.
    pub fn same_as(&self, other: &Lock) -> bool {
        Lock {
            since: other.since,
            ..self.clone()
        } == *other
    }
}

/// The label changes that turn `current` labels into exactly `wanted` lock labels:
/// sets what differs and removes every other guarded-upgrade label (None).
pub fn label_changes(
    current: &BTreeMap<String, String>,
    wanted: &BTreeMap<String, String>,
) -> BTreeMap<String, Option<String>> {
    let mut changes = BTreeMap::new();
    for (k, v) in wanted {
        if current.get(k) != Some(v) {
            changes.insert(k.clone(), Some(v.clone()));
        }
    }
    for k in current.keys() {
        if k.starts_with(PREFIX) && !wanted.contains_key(k) {
            changes.insert(k.clone(), None);
        }
    }
    changes
}

/// Reads the lock from a record's labels: None when no guarded-upgrade label is there, an
/// error when any of them cannot be read in full (unknown kind, missing or undecodable pin,
/// pin key or time, a label guarded-upgrade does not write).
pub fn from_labels(labels: &BTreeMap<String, String>) -> Result<Option<Lock>, UnreadableLock> {
    let ours: Vec<&String> = labels.keys().filter(|k| k.starts_with(PREFIX)).collect();
    if ours.is_empty() {
        return Ok(None);
    }
    let Some(kind_text) = labels.get(KEY_LOCK) else {
        return Err(UnreadableLock::new(
            ours[0],
            format!("is set but {KEY_LOCK} is missing"),
        ));
    };
    let kind = LockKind::parse(kind_text)
        .ok_or_else(|| UnreadableLock::new(KEY_LOCK, "is not soft, hard or pin"))?;
    let time = |key: &str| -> Result<Option<i64>, UnreadableLock> {
        labels
            .get(key)
            .map(|t| {
                t.parse::<i64>()
                    .map_err(|_| UnreadableLock::new(key, "is not a Unix time in seconds"))
            })
            .transpose()
    };
    let since = time(KEY_SINCE)?.ok_or_else(|| UnreadableLock::new(KEY_SINCE, "is missing"))?;
    let expires_at = time(KEY_EXPIRES)?;
    let mut used: Vec<String> = vec![KEY_LOCK.into(), KEY_SINCE.into(), KEY_EXPIRES.into()];
    used.extend(HARD_KEYS.iter().map(|k| k.to_string()));
    let reason = read_text(labels, KEY_REASON, &mut used)?;
    let by = read_text(labels, KEY_BY, &mut used)?;
    let pin = read_text(labels, KEY_PIN, &mut used)?;
    let pin_key = read_text(labels, KEY_PIN_KEY, &mut used)?;
    if let Some(unknown) = ours.iter().find(|k| !used.contains(k)) {
        return Err(UnreadableLock::new(
            unknown,
            "is not a label guarded-upgrade writes (a newer version's, or edited by hand)",
        ));
    }
    if kind == LockKind::Pin && pin.is_none() {
        return Err(UnreadableLock::new(KEY_PIN, "is missing on a pin lock"));
    }
    if let Some(key) = &pin_key {
        crate::core::version::CompareKey::parse(key)
            .map_err(|e| UnreadableLock::new(KEY_PIN_KEY, format!("is not a compare key ({e})")))?;
    }
    Ok(Some(Lock {
        kind,
        reason,
        by,
        since,
        expires_at,
        pin,
        pin_key,
    }))
}

/// CRC-32 of a payload as lowercase hex: detects a hard-locked record rewritten by others.
pub fn payload_digest(payload: &[u8]) -> String {
    let mut crc = flate2::Crc::new();
    crc.update(payload);
    format!("{:08x}", crc.sum())
}

/// The variables naming the user who started a CI job, in the order they are tried
/// (GitHub Actions, GitLab, Azure Pipelines, Bitbucket, Buildkite, CircleCI). The plan
/// reads them; the core reads no environment.
pub const CI_USER_VARS: [&str; 6] = [
    "GITHUB_ACTOR",
    "GITLAB_USER_LOGIN",
    "BUILD_REQUESTEDFOREMAIL",
    "BITBUCKET_STEP_TRIGGERER_UUID",
    "BUILDKITE_BUILD_CREATOR",
    "CIRCLE_USERNAME",
];

/// Who is locking when `--by` is not given: the CI's user, else the kubeconfig user, else
/// the login user (`$USER`).
pub fn default_by(
    ci_user: Option<&str>,
    kube_user: Option<&str>,
    login_user: Option<&str>,
) -> Option<String> {
    [ci_user, kube_user, login_user]
        .into_iter()
        .flatten()
        .find(|u| !u.trim().is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(reason: Option<&str>, by: Option<&str>, pin: Option<&str>) -> Lock {
        Lock {
            kind: LockKind::Soft,
            reason: reason.map(str::to_string),
            by: by.map(str::to_string),
            since: 1_700_000_000,
            expires_at: Some(1_800_000_000),
            pin: pin.map(str::to_string),
            pin_key: None,
        }
    }

    #[test]
    fn base32_round_trip() {
        for text in [
            "",
            "a",
            "ab",
            "abc",
            "incident 4711: db migration ✓",
            "b32.x",
        ] {
            let enc = base32_encode(text.as_bytes());
            assert!(enc.bytes().all(|c| c.is_ascii_alphanumeric()));
            assert_eq!(base32_decode(&enc).unwrap(), text.as_bytes());
        }
        assert!(base32_decode("ABC!").is_none());
    }

    #[test]
    fn labels_round_trip_any_text() {
        let long = "x".repeat(200) + " with spaces & symbols: >=1.4 <2 || 3.x";
        for s in [
            spec(None, None, None),
            spec(Some("incident"), Some("alice"), Some("1.4.x")),
            spec(Some(&long), Some("alice@example.com"), Some(">=1.4 <2")),
            spec(Some("b32.looks-encoded"), Some("-dash"), Some("^1")),
            spec(Some(""), Some(""), None),
            Lock {
                pin_key: Some("value:image.tag".into()),
                ..spec(None, Some("ops"), Some("~1.1"))
            },
            Lock {
                pin_key: Some("app-version".into()),
                ..spec(None, None, Some("2.x"))
            },
        ] {
            let labels = s.labels();
            for (k, v) in &labels {
                assert!(is_label_value(v), "{k}={v:?} is not a label value");
                assert!(k.len() - PREFIX.len() <= 63, "{k}");
            }
            assert_eq!(from_labels(&labels).unwrap().unwrap(), s);
        }
    }

    #[test]
    fn readable_values_stay_readable() {
        let labels = spec(Some("freeze"), Some("alice"), Some("1.4.x")).labels();
        assert_eq!(labels[KEY_BY], "alice");
        assert_eq!(labels[KEY_REASON], "freeze");
        assert_eq!(labels[KEY_PIN], "1.4.x");
        assert_eq!(labels[KEY_LOCK], "soft");
    }

    #[test]
    fn changes_set_and_remove_only_our_labels() {
        let mut current: BTreeMap<String, String> = BTreeMap::from([
            ("name".into(), "db".into()),
            ("status".into(), "deployed".into()),
            ("team".into(), "data".into()),
        ]);
        current.extend(spec(Some(&"y".repeat(300)), None, None).labels());
        let wanted = spec(Some("short"), None, None).labels();
        let changes = label_changes(&current, &wanted);
        assert_eq!(changes[KEY_REASON], Some("short".into()));
        assert!(changes
            .iter()
            .any(|(k, v)| k.starts_with(KEY_REASON) && k != KEY_REASON && v.is_none()));
        assert!(!changes.contains_key("name"));
        assert!(!changes.contains_key("team"));
        let unlock = label_changes(&current, &BTreeMap::new());
        assert!(unlock.keys().all(|k| k.starts_with(PREFIX)));
        assert!(unlock.values().all(Option::is_none));
    }

    #[test]
    fn no_lock_label_means_unlocked() {
        let labels = BTreeMap::from([("name".to_string(), "db".to_string())]);
        assert!(from_labels(&labels).unwrap().is_none());
    }

    /// Every way a lock label can be unreadable refuses, naming the label; none of them
    /// reads as "no lock" or as a weaker lock (issue 17).
    #[test]
    fn unreadable_lock_labels_are_errors_naming_the_label() {
        let base = || spec(Some("freeze"), Some("alice"), None).labels();
        let pin = || {
            Lock {
                kind: LockKind::Pin,
                pin: Some("~1.4".into()),
                ..spec(None, None, None)
            }
            .labels()
        };
        let with = |mut labels: BTreeMap<String, String>, k: &str, v: Option<&str>| {
            match v {
                Some(v) => labels.insert(k.to_string(), v.to_string()),
                None => labels.remove(k),
            };
            labels
        };
        let cases = [
            (
                with(base(), KEY_LOCK, Some("bogus")),
                KEY_LOCK,
                "is not soft, hard or pin",
            ),
            (
                with(base(), KEY_LOCK, Some("")),
                KEY_LOCK,
                "is not soft, hard or pin",
            ),
            (
                with(base(), KEY_LOCK, None),
                KEY_BY,
                "is set but guarded-upgrade.io/lock is missing",
            ),
            (
                with(pin(), KEY_PIN, None),
                KEY_PIN,
                "is missing on a pin lock",
            ),
            (
                with(pin(), KEY_PIN, Some("b32.!!")),
                KEY_PIN,
                "is not valid base32 text",
            ),
            (
                with(pin(), KEY_PIN_KEY, Some("b32.1")),
                KEY_PIN_KEY,
                "is not valid base32 text",
            ),
            (
                with(pin(), KEY_PIN, Some("b32.74")),
                KEY_PIN,
                "does not decode to UTF-8 text",
            ),
            (with(base(), KEY_SINCE, None), KEY_SINCE, "is missing"),
            (
                with(base(), KEY_SINCE, Some("yesterday")),
                KEY_SINCE,
                "is not a Unix time in seconds",
            ),
            (
                with(base(), KEY_EXPIRES, Some("1e9")),
                KEY_EXPIRES,
                "is not a Unix time in seconds",
            ),
            (
                with(base(), "guarded-upgrade.io/reason-1", Some("x")),
                "guarded-upgrade.io/reason-1",
                "is not a label guarded-upgrade writes (a newer version's, or edited by hand)",
            ),
            (
                with(base(), "guarded-upgrade.io/owner", Some("x")),
                "guarded-upgrade.io/owner",
                "is not a label guarded-upgrade writes (a newer version's, or edited by hand)",
            ),
        ];
        for (labels, label, problem) in cases {
            let err = from_labels(&labels).unwrap_err();
            assert_eq!(
                (err.label.as_str(), err.problem.as_str()),
                (label, problem),
                "{labels:?}"
            );
            assert!(from_labels(&labels).is_err());
        }
        let bad_key = with(pin(), KEY_PIN_KEY, Some("image.tag"));
        let err = from_labels(&bad_key).unwrap_err();
        assert_eq!(err.label, KEY_PIN_KEY);
        assert!(err.problem.starts_with("is not a compare key ("), "{err}");
    }
}
