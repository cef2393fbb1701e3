//! Helm-compatible chart versions and version constraints.
//!
//! Helm parses chart versions and `--version` constraints with
//! Masterminds/semver v3. Its version parser is lenient (`v1.2` is `1.2.0`)
//! and its constraint language has a few quirks (partial versions act as
//! wildcards, pre-releases are excluded unless asked for). This module
//! reproduces those rules so our decisions agree with what helm would pick.
//!
//! Constraint semantics follow Masterminds/semver v3.4 (the line Helm 4
//! uses): a pre-release version can only match an AND group in which at
//! least one comparator names a pre-release. v3.3 (Helm 3.17) applied that
//! test per comparator, so `>=1.0.0-0 <2.0.0` matches `1.5.0-beta` here but
//! not in Helm 3.17; the two agree whenever every comparator of a group has
//! a pre-release or none has.

use std::cmp::Ordering;
use std::fmt;

use semver::{BuildMetadata, Prerelease};

/// Why a chart version or a version constraint could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// The text was empty (or only whitespace).
    #[error("empty version: give a chart version such as 1.2.3")]
    Empty,
    /// The text is not a chart version.
    #[error(
        "invalid chart version {text:?}: {why}; expected MAJOR[.MINOR[.PATCH]][-PRERELEASE][+BUILD], \
         for example 1.2.3, v1.2 or 1.2.3-rc.1"
    )]
    InvalidVersion {
        /// The rejected text.
        text: String,
        /// What is wrong with it.
        why: String,
    },
    /// The text is not a version constraint.
    #[error(
        "invalid version constraint {text:?}: {why}; expected for example \"1.2.3\", \">=1.2.0 <2.0.0\", \
         \"^1.2\", \"~1.2.3\", \"1.2.x\", \"1.2 - 1.4.5\" or \"^1 || ^2\""
    )]
    InvalidConstraint {
        /// The rejected text.
        text: String,
        /// What is wrong with it.
        why: String,
    },
}

/// A chart version, parsed leniently like Helm (Masterminds `NewVersion`).
///
/// Equality and ordering follow SemVer 2 precedence and ignore build
/// metadata, so `1.0.0+a == 1.0.0+b`. `Display` prints the original text.
#[derive(Debug, Clone)]
pub struct ChartVersion {
    original: String,
    version: semver::Version,
}

impl ChartVersion {
    /// Parses a chart version: optional leading `v`, missing minor/patch
    /// filled with 0, optional pre-release and build metadata (also on
    /// partial versions, e.g. `1.2-beta` = `1.2.0-beta`). Surrounding
    /// whitespace is trimmed; anything else that is not a version is an error.
    pub fn parse(text: &str) -> Result<ChartVersion, VersionError> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(VersionError::Empty);
        }
        let invalid = |why: &str| VersionError::InvalidVersion {
            text: trimmed.to_string(),
            why: why.to_string(),
        };
        let (parts, rest) = scan_version(trimmed, false).map_err(invalid)?;
        if !rest.is_empty() {
            return Err(invalid("unexpected characters after the version"));
        }
        let version = parts.to_semver(false).map_err(invalid)?;
        Ok(ChartVersion {
            original: trimmed.to_string(),
            version,
        })
    }

    /// Parses a version as helm stored it in a release: like [`ChartVersion::parse`], but
    /// surrounding whitespace is an error (Masterminds/semver rejects it; only a hand-edited
    /// record carries it).
    pub fn parse_stored(text: &str) -> Result<ChartVersion, VersionError> {
        if !text.is_empty() && text.trim() != text {
            return Err(VersionError::InvalidVersion {
                text: text.to_string(),
                why: "surrounding whitespace".to_string(),
            });
        }
        ChartVersion::parse(text)
    }
}

/// The key whose version order guards against downgrades (`--compare`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum CompareKey {
    /// The chart's `version` (default).
    #[default]
    ChartVersion,
    /// The chart's `appVersion`.
    AppVersion,
    /// A value at a dotted path of the release's values, e.g. `image.tag`.
    Value(String),
}

/// An unusable `--compare` (or pin key) text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown compare key {0:?}: use chart-version, app-version or value:PATH (e.g. value:image.tag)")]
pub struct CompareKeyError(pub String);

impl CompareKey {
    /// Parses `chart-version`, `app-version` or `value:PATH` (dot-separated, no empty
    /// segment).
    pub fn parse(text: &str) -> Result<CompareKey, CompareKeyError> {
        match text {
            "chart-version" => Ok(CompareKey::ChartVersion),
            "app-version" => Ok(CompareKey::AppVersion),
            _ => match text.strip_prefix("value:") {
                Some(path) if !path.is_empty() && path.split('.').all(|s| !s.is_empty()) => {
                    Ok(CompareKey::Value(path.to_string()))
                }
                _ => Err(CompareKeyError(text.to_string())),
            },
        }
    }
}

impl fmt::Display for CompareKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompareKey::ChartVersion => f.write_str("chart-version"),
            CompareKey::AppVersion => f.write_str("app-version"),
            CompareKey::Value(path) => write!(f, "value:{path}"),
        }
    }
}

impl serde::Serialize for CompareKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
impl ChartVersion {
    /// True when the version has a pre-release part (tests).
    pub(crate) fn is_prerelease(&self) -> bool {
        !self.version.pre.is_empty()
    }
}

impl fmt::Display for ChartVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

impl std::str::FromStr for ChartVersion {
    type Err = VersionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ChartVersion::parse(s)
    }
}

impl PartialEq for ChartVersion {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for ChartVersion {}

impl PartialOrd for ChartVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ChartVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        precedence(&self.version, &other.version)
    }
}

/// SemVer 2 precedence without build metadata.
fn precedence(a: &semver::Version, b: &semver::Version) -> Ordering {
    a.major
        .cmp(&b.major)
        .then(a.minor.cmp(&b.minor))
        .then(a.patch.cmp(&b.patch))
        .then_with(|| match (a.pre.is_empty(), b.pre.is_empty()) {
            (true, true) => Ordering::Equal,
            // A release ranks above any of its pre-releases.
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            // semver::Prerelease implements SemVer identifier precedence.
            (false, false) => a.pre.cmp(&b.pre),
        })
}

/// True when `--version` text names one exact chart version, so the target
/// version is known without asking helm or a repository.
///
/// Helm hands `--version` to the repository index / OCI tag lookup, which
/// tries an exact string match and otherwise treats the text as a
/// constraint. A partial version such as `1.2` is therefore *not* exact (as
/// a constraint it means `1.2.x`, so helm may pick 1.2.7); neither is
/// anything with an operator, wildcard, space, comma or `||`. A full
/// `[v]MAJOR.MINOR.PATCH[-PRE][+BUILD]` is exact.
pub fn is_exact_version(text: &str) -> bool {
    let trimmed = text.trim();
    match scan_version(trimmed, false) {
        Ok((parts, rest)) => {
            rest.is_empty()
                && parts.minor.is_some()
                && parts.patch.is_some()
                && parts.to_semver(false).is_ok()
        }
        Err(_) => false,
    }
}

/// One numeric part of a version-ish string in a constraint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Num(u64),
    /// `x`, `X` or `*`.
    Wild,
}

/// A scanned `v?MAJOR(.MINOR)?(.PATCH)?(-PRE)?(+BUILD)?`, not yet validated.
#[derive(Debug, Clone)]
struct Parts<'a> {
    major: Part,
    minor: Option<Part>,
    patch: Option<Part>,
    pre: &'a str,
    build: &'a str,
}

impl Parts<'_> {
    /// Builds the version, filling missing parts with 0. Wildcards must have
    /// been resolved by the caller unless `allow_wild` (then they become 0).
    fn to_semver(&self, allow_wild: bool) -> Result<semver::Version, &'static str> {
        let num = |p: Option<Part>| match p {
            None => Ok(0),
            Some(Part::Num(n)) => Ok(n),
            Some(Part::Wild) if allow_wild => Ok(0),
            Some(Part::Wild) => Err("wildcards (x, X, *) are only allowed in constraints"),
        };
        let mut v =
            semver::Version::new(num(Some(self.major))?, num(self.minor)?, num(self.patch)?);
        if !self.pre.is_empty() {
            v.pre = Prerelease::new(self.pre).map_err(|_| {
                "invalid pre-release: identifiers must be non-empty [0-9A-Za-z-] \
                 and numeric ones must not have leading zeros"
            })?;
        }
        if !self.build.is_empty() {
            v.build = BuildMetadata::new(self.build).map_err(|_| {
                "invalid build metadata: identifiers must be non-empty [0-9A-Za-z-]"
            })?;
        }
        Ok(v)
    }
}

/// Scans a version-ish prefix of `s`; returns the parts and the unconsumed
/// rest. Numeric parts may have leading zeros (Masterminds coerces them).
fn scan_version(s: &str, allow_wild: bool) -> Result<(Parts<'_>, &str), &'static str> {
    let s = s.strip_prefix('v').unwrap_or(s);
    let (major, mut rest) = scan_part(s, allow_wild)?;
    let mut minor = None;
    let mut patch = None;
    if let Some(r) = rest.strip_prefix('.') {
        let (p, r) = scan_part(r, allow_wild)?;
        minor = Some(p);
        rest = r;
        if let Some(r) = rest.strip_prefix('.') {
            let (p, r) = scan_part(r, allow_wild)?;
            patch = Some(p);
            rest = r;
        }
    }
    let ident_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
    let mut pre = "";
    if let Some(r) = rest.strip_prefix('-') {
        let end = r.find(|c: char| !ident_char(c)).unwrap_or(r.len());
        pre = &r[..end];
        if pre.is_empty() {
            return Err("empty pre-release after '-'");
        }
        rest = &r[end..];
    }
    let mut build = "";
    if let Some(r) = rest.strip_prefix('+') {
        let end = r.find(|c: char| !ident_char(c)).unwrap_or(r.len());
        build = &r[..end];
        if build.is_empty() {
            return Err("empty build metadata after '+'");
        }
        rest = &r[end..];
    }
    Ok((
        Parts {
            major,
            minor,
            patch,
            pre,
            build,
        },
        rest,
    ))
}

fn scan_part(s: &str, allow_wild: bool) -> Result<(Part, &str), &'static str> {
    let first = s.chars().next();
    if allow_wild && matches!(first, Some('x' | 'X' | '*')) {
        return Ok((Part::Wild, &s[1..]));
    }
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if end == 0 {
        return Err(if allow_wild {
            "expected a number or x, X, * for a version part"
        } else {
            "expected a number for a version part"
        });
    }
    let n = s[..end]
        .parse::<u64>()
        .map_err(|_| "version number is too large")?;
    Ok((Part::Num(n), &s[end..]))
}

/// Comparison operator of one comparator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// No operator or `=`: equality, or `~` semantics for partial versions.
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    /// `~` or `~>`.
    Tilde,
    /// `^`.
    Caret,
}

/// Longest operator first so `>=` is not read as `>`.
const OPS: &[(&str, Op)] = &[
    ("!=", Op::Ne),
    (">=", Op::Ge),
    ("=>", Op::Ge),
    ("<=", Op::Le),
    ("=<", Op::Le),
    ("~>", Op::Tilde),
    (">", Op::Gt),
    ("<", Op::Lt),
    ("=", Op::Eq),
    ("~", Op::Tilde),
    ("^", Op::Caret),
];

/// One comparator such as `>=1.2` with Masterminds' "dirty" flags: a
/// missing or wildcard part makes the comparator a range over that part.
#[derive(Debug, Clone)]
struct Comparator {
    op: Op,
    con: semver::Version,
    /// Some part was missing or a wildcard.
    dirty: bool,
    /// Minor (and so patch) was missing or a wildcard.
    minor_dirty: bool,
    /// Patch was missing or a wildcard.
    patch_dirty: bool,
}

impl Comparator {
    fn new(op: Op, parts: &Parts<'_>) -> Result<Comparator, &'static str> {
        let is_wild = |p: Option<Part>| matches!(p, None | Some(Part::Wild));
        // The first missing/wildcard part zeroes everything after it.
        let (major, minor, patch, dirty, minor_dirty, patch_dirty) = if parts.major == Part::Wild {
            (None, None, None, true, false, false)
        } else if is_wild(parts.minor) {
            (Some(parts.major), None, None, true, true, false)
        } else if is_wild(parts.patch) {
            (Some(parts.major), parts.minor, None, true, false, true)
        } else {
            (
                Some(parts.major),
                parts.minor,
                parts.patch,
                false,
                false,
                false,
            )
        };
        let normalized = Parts {
            major: major.unwrap_or(Part::Num(0)),
            minor,
            patch,
            pre: parts.pre,
            // Build metadata never affects matching.
            build: "",
        };
        Ok(Comparator {
            op,
            con: normalized.to_semver(true)?,
            dirty,
            minor_dirty,
            patch_dirty,
        })
    }

    fn check(&self, v: &semver::Version, include_pre: bool) -> bool {
        if !v.pre.is_empty() && !include_pre {
            return false;
        }
        let c = &self.con;
        let cmp = precedence(v, c);
        match self.op {
            Op::Eq => {
                if self.dirty {
                    self.tilde(v)
                } else {
                    cmp == Ordering::Equal
                }
            }
            Op::Ne => {
                if self.dirty {
                    if c.major != v.major {
                        return true;
                    }
                    if self.minor_dirty {
                        return false;
                    }
                    if c.minor != v.minor {
                        return true;
                    }
                    if self.patch_dirty {
                        // Same major.minor: differs only if the pre-releases do.
                        return (!v.pre.is_empty() || !c.pre.is_empty()) && v.pre != c.pre;
                    }
                    if c.patch != v.patch {
                        return true;
                    }
                }
                cmp != Ordering::Equal
            }
            Op::Gt => {
                if !self.dirty {
                    return cmp == Ordering::Greater;
                }
                if v.major != c.major {
                    return v.major > c.major;
                }
                if self.minor_dirty {
                    // `>1` needs 2.0.0 or higher.
                    return false;
                }
                if self.patch_dirty {
                    // `>1.1` needs 1.2.0 or higher.
                    return v.minor > c.minor;
                }
                cmp == Ordering::Greater
            }
            Op::Lt => cmp == Ordering::Less,
            Op::Ge => cmp != Ordering::Less,
            Op::Le => {
                if !self.dirty {
                    return cmp != Ordering::Greater;
                }
                // `<=1.1` means anything up to 1.1.x; `<=1` up to 1.x.x.
                if v.major > c.major {
                    return false;
                }
                !(v.major == c.major && v.minor > c.minor && !self.minor_dirty)
            }
            Op::Tilde => self.tilde(v),
            Op::Caret => self.caret(v),
        }
    }

    /// `~1.2.3` = >=1.2.3 <1.3.0, `~1.2` = >=1.2.0 <1.3.0, `~1` = >=1.0.0 <2.0.0.
    fn tilde(&self, v: &semver::Version) -> bool {
        let c = &self.con;
        if precedence(v, c) == Ordering::Less {
            return false;
        }
        // `~0.0.0` and `~*` accept everything.
        if c.major == 0 && c.minor == 0 && c.patch == 0 && !self.minor_dirty && !self.patch_dirty {
            return true;
        }
        if v.major != c.major {
            return false;
        }
        self.minor_dirty || v.minor == c.minor
    }

    /// `^1.2.3` = >=1.2.3 <2.0.0, `^0.2.3` = >=0.2.3 <0.3.0,
    /// `^0.0.3` = >=0.0.3 <0.0.4, `^0.0` = <0.1.0, `^0` = <1.0.0.
    fn caret(&self, v: &semver::Version) -> bool {
        let c = &self.con;
        if precedence(v, c) == Ordering::Less {
            return false;
        }
        if c.major > 0 || self.minor_dirty {
            return v.major == c.major;
        }
        if v.major > 0 {
            return false;
        }
        if c.minor > 0 || self.patch_dirty {
            return v.minor == c.minor;
        }
        if v.minor > 0 {
            return false;
        }
        // Masterminds quirk kept on purpose: `^*` ends up here and only
        // matches 0.0.0, because helm behaves that way.
        v.patch == c.patch
    }
}

/// A comma/space separated AND group of comparators.
#[derive(Debug, Clone)]
struct AndGroup {
    comparators: Vec<Comparator>,
    /// Some comparator names a pre-release, so pre-release versions may match.
    include_pre: bool,
}

/// A Helm `--version` constraint or a lock pin, e.g. `>=1.2 <2 || ^3.1`.
///
/// Follows Masterminds/semver v3 `NewConstraint`: operators `=`, `!=`, `>`,
/// `<`, `>=`/`=>`, `<=`/`=<`, `~`/`~>`, `^`; wildcards `x`, `X`, `*`;
/// partial versions act as wildcards (`1.2` = `1.2.x` = `>=1.2.0 <1.3.0`);
/// hyphen ranges `A - B` (= `>=A <=B`, spaces around `-` required); AND by
/// comma or whitespace; OR by `||`. Pre-release versions only match an AND
/// group that mentions a pre-release. `Display` prints the original text.
#[derive(Debug, Clone)]
pub struct Constraint {
    original: String,
    groups: Vec<AndGroup>,
}

impl Constraint {
    /// Parses a constraint; surrounding whitespace is ignored.
    pub fn parse(text: &str) -> Result<Constraint, VersionError> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(VersionError::Empty);
        }
        let mut groups = Vec::new();
        for group in trimmed.split("||") {
            let comparators =
                parse_and_group(group).map_err(|why| VersionError::InvalidConstraint {
                    text: trimmed.to_string(),
                    why,
                })?;
            let include_pre = comparators.iter().any(|c| !c.con.pre.is_empty());
            groups.push(AndGroup {
                comparators,
                include_pre,
            });
        }
        Ok(Constraint {
            original: trimmed.to_string(),
            groups,
        })
    }

    /// True when `version` satisfies the constraint.
    pub fn matches(&self, version: &ChartVersion) -> bool {
        self.groups.iter().any(|g| {
            g.comparators
                .iter()
                .all(|c| c.check(&version.version, g.include_pre))
        })
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

impl std::str::FromStr for Constraint {
    type Err = VersionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Constraint::parse(s)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Token<'a> {
    Word(&'a str),
    Comma,
}

fn tokenize(group: &str) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    let mut start: Option<usize> = None;
    for (i, ch) in group.char_indices() {
        if ch.is_whitespace() || ch == ',' {
            if let Some(s) = start.take() {
                tokens.push(Token::Word(&group[s..i]));
            }
            if ch == ',' {
                tokens.push(Token::Comma);
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        tokens.push(Token::Word(&group[s..]));
    }
    tokens
}

fn split_op(word: &str) -> (Op, &str, bool) {
    for (text, op) in OPS {
        if let Some(rest) = word.strip_prefix(text) {
            return (*op, rest, true);
        }
    }
    (Op::Eq, word, false)
}

fn parse_version_word(word: &str) -> Result<Parts<'_>, String> {
    let (parts, rest) = scan_version(word, true).map_err(|e| format!("{e} in {word:?}"))?;
    if !rest.is_empty() {
        return Err(format!("unexpected {rest:?} after a version in {word:?}"));
    }
    Ok(parts)
}

/// Parses one AND group: comparators separated by whitespace or one comma.
fn parse_and_group(group: &str) -> Result<Vec<Comparator>, String> {
    let tokens = tokenize(group);
    if tokens.is_empty() {
        return Err("empty alternative around \"||\"".to_string());
    }
    let mut out = Vec::new();
    let mut i = 0;
    // A separator (whitespace or comma) must precede every comparator but the first.
    let mut comma_pending = false;
    while i < tokens.len() {
        let word = match tokens[i] {
            Token::Comma => {
                if out.is_empty() || comma_pending {
                    return Err("misplaced comma".to_string());
                }
                comma_pending = true;
                i += 1;
                continue;
            }
            Token::Word(w) => w,
        };
        comma_pending = false;
        i += 1;
        let (op, mut version_text, has_op) = split_op(word);
        if version_text.is_empty() {
            // Operator separated from its version by whitespace: `>= 1.2`.
            match tokens.get(i) {
                Some(Token::Word(w)) => {
                    version_text = w;
                    i += 1;
                }
                _ => return Err(format!("operator {word:?} is missing its version")),
            }
        }
        let parts = parse_version_word(version_text)?;
        // Hyphen range `A - B` means `>=A <=B`.
        if tokens.get(i) == Some(&Token::Word("-")) {
            if has_op {
                return Err("a hyphen range cannot start with an operator".to_string());
            }
            let upper = match tokens.get(i + 1) {
                Some(Token::Word(w)) => *w,
                _ => return Err("hyphen range is missing its upper version".to_string()),
            };
            let upper_parts = parse_version_word(upper)?;
            out.push(Comparator::new(Op::Ge, &parts).map_err(str::to_string)?);
            out.push(Comparator::new(Op::Le, &upper_parts).map_err(str::to_string)?);
            i += 2;
            continue;
        }
        out.push(Comparator::new(op, &parts).map_err(str::to_string)?);
    }
    if comma_pending {
        return Err("trailing comma".to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> ChartVersion {
        ChartVersion::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_lenient_versions() {
        let cases = [
            ("1.2.3", "1.2.3"),
            ("v1.2.3", "1.2.3"),
            ("1.2", "1.2.0"),
            ("v1.2", "1.2.0"),
            ("2", "2.0.0"),
            ("v2", "2.0.0"),
            ("0.0.0", "0.0.0"),
            ("1.2.3-rc.1", "1.2.3-rc.1"),
            ("v1.2.3-rc.1+b", "1.2.3-rc.1+b"),
            ("1.2-beta", "1.2.0-beta"),
            ("1-alpha.1", "1.0.0-alpha.1"),
            ("1.2+build.5", "1.2.0+build.5"),
            ("1.2.3+001", "1.2.3+001"),
            ("01.02.03", "1.2.3"),
            ("1.2.3-x-y-z.--", "1.2.3-x-y-z.--"),
            ("  1.2.3 ", "1.2.3"),
            ("18446744073709551615.0.0", "18446744073709551615.0.0"),
        ];
        for (input, want) in cases {
            let got = v(input);
            assert_eq!(got.version.to_string(), want, "{input}");
            assert_eq!(got.to_string(), input.trim(), "{input}");
        }
    }

    #[test]
    fn rejects_invalid_versions() {
        let cases = [
            "",
            "   ",
            "x",
            "1.x",
            "1.2.*",
            "v",
            "V1.2.3",
            "1.2.3.4",
            "1.2.3-",
            "1.2.3+",
            "1.2.3-01",
            "1.2.3-a..b",
            "1.2.3+a..b",
            "1.2.3-a_b",
            "1.2.3 4",
            ">=1.2.3",
            "~1.2",
            "1.2.3,",
            "1.2.3 || 2",
            "-1.2.3",
            ".1.2",
            "1..2",
            "1.2.",
            "abc",
            "18446744073709551616.0.0",
            "１.2.3",
        ];
        for input in cases {
            assert!(ChartVersion::parse(input).is_err(), "{input:?} parsed");
        }
        assert_eq!(ChartVersion::parse(" "), Err(VersionError::Empty));
        let msg = ChartVersion::parse("1.2.3-01").unwrap_err().to_string();
        assert!(
            msg.contains("1.2.3-01") && msg.contains("expected"),
            "{msg}"
        );
    }

    #[test]
    fn orders_per_semver_2() {
        let ascending = [
            "0.0.1",
            "0.1.0",
            "1.0.0-0",
            "1.0.0-1",
            "1.0.0-2",
            "1.0.0-10",
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.1",
            "1.1.0",
            "1.9.0",
            "1.10.0",
            "2.0.0-rc.1",
            "v2",
            "10.0.0",
        ];
        for (i, a) in ascending.iter().enumerate() {
            for (j, b) in ascending.iter().enumerate() {
                assert_eq!(v(a).cmp(&v(b)), i.cmp(&j), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn equality_ignores_build_metadata_and_spelling() {
        let equal = [
            ("1.0.0+a", "1.0.0+b"),
            ("1.0.0", "1.0.0+b"),
            ("v1.2", "1.2.0"),
            ("2", "2.0.0+x.y"),
            ("1.0.0-rc.1+a", "1.0.0-rc.1+b"),
            ("01.2.3", "1.2.3"),
        ];
        for (a, b) in equal {
            assert_eq!(v(a), v(b), "{a} == {b}");
            assert_eq!(v(a).cmp(&v(b)), Ordering::Equal);
        }
        assert_ne!(v("1.0.0-rc.1"), v("1.0.0"));
        assert!(v("1.0.0+zzz") < v("1.0.1+aaa"));
    }

    #[test]
    fn exact_versions() {
        let cases = [
            ("1.2.3", true),
            ("v1.2.3", true),
            ("1.2.3-rc.1", true),
            ("1.2.3+build", true),
            (" 1.2.3 ", true),
            ("1.2", false),
            ("1", false),
            ("v1.2", false),
            ("1.2.x", false),
            ("1.x", false),
            ("*", false),
            ("=1.2.3", false),
            (">=1.2.3", false),
            ("^1.2.3", false),
            ("~1.2.3", false),
            ("1.2.3 - 1.4.0", false),
            ("1.2.3, 1.2.4", false),
            ("1.2.3 || 1.2.4", false),
            ("1.2.3 1.2.4", false),
            ("", false),
            ("latest", false),
            ("1.2.3-01", false),
        ];
        for (input, want) in cases {
            assert_eq!(is_exact_version(input), want, "{input:?}");
        }
    }

    /// Vectors mirror Masterminds/semver v3.4 behaviour (Helm's constraint engine).
    #[test]
    fn constraint_matching() {
        let cases: &[(&str, &str, bool)] = &[
            // exact and `=`
            ("1.2.3", "1.2.3", true),
            ("1.2.3", "1.2.4", false),
            ("=1.2.3", "1.2.3", true),
            ("= 2.0", "1.2.3", false),
            ("= 2.0", "2.0.0", true),
            ("v1.2.3", "1.2.3", true),
            ("1.2.3+a", "1.2.3+b", true),
            ("0.0.0", "1.2.3", false),
            // partial versions are wildcards
            ("4.1", "4.1.0", true),
            ("4.1", "4.1.9", true),
            ("4.1", "4.2.0", false),
            ("=1.2", "1.2.5", true),
            ("1", "1.9.9", true),
            ("1", "2.0.0", false),
            ("4.1.x", "4.1.3", true),
            ("1.x", "1.4", true),
            ("1.X", "1.4.0", true),
            ("1.*", "1.4.0", true),
            ("1.x", "2.0.0", false),
            ("0.x.x", "1.2.3", false),
            ("0.0.x", "1.2.3", false),
            ("*", "1.2.3", true),
            ("x", "0.0.1", true),
            ("*", "1.2.3-alpha.1", false),
            // !=
            ("!=4.1", "4.1.0", false),
            ("!=4.1", "5.1.0", true),
            ("!=4.1-alpha", "4.1.0-alpha", false),
            ("!=4.1-alpha", "4.1.1-alpha", false),
            ("!=4.1-alpha", "4.1.0", true),
            ("!=4.x", "5.1.0", true),
            ("!=4.x", "4.1.0", false),
            ("!=4.1.x", "4.2.0", true),
            ("!=4.2.x", "4.2.3", false),
            ("!=1.2.3", "1.2.3", false),
            ("!=1.2.3", "1.2.4", true),
            ("!=1.2.3", "1.2.3+b", false),
            // >
            (">1.1", "4.1.0", true),
            (">1.1", "1.1.0", false),
            (">1.1", "1.1.9", false),
            (">1.1", "1.2.0", true),
            (">1", "1.9.0", false),
            (">1", "2.0.0", true),
            (">1.2.3", "1.2.4", true),
            (">1.2.3", "1.2.3", false),
            (">1.2.3", "1.3.0-beta", false),
            // <
            ("<1.1", "0.1.0", true),
            ("<1.1", "1.1.0", false),
            ("<1.1", "1.1.1", false),
            ("<1.x", "1.1.1", false),
            ("<1.x", "0.1.1", true),
            ("<1.x", "2.0.0", false),
            ("<1.1.x", "1.2.1", false),
            ("<1.1.x", "1.1.500", false),
            ("<1.1.x", "1.0.500", true),
            ("<1.2.x", "1.1.1", true),
            ("<2.0.0", "2.0.0-rc.1", false),
            // >=
            (">=1.1", "4.1.0", true),
            (">=1.1", "4.1.0-beta", false),
            (">=1.1", "1.1.0", true),
            (">=1.1", "0.0.9", false),
            ("=>1.1", "1.1.0", true),
            (">= 1.2.3", "1.2.3", true),
            // <= and =<
            ("<=1.1", "0.1.0", true),
            ("<=1.1", "0.1.0-alpha", false),
            ("<=1.1-a", "0.1.0-alpha", true),
            ("<=1.1", "1.1.0", true),
            ("<=1.x", "1.1.0", true),
            ("<=2.x", "3.0.0", false),
            ("<=1.1", "1.1.1", true),
            ("<=1.1.x", "1.2.500", false),
            ("<=4.5", "3.4.0", true),
            ("<=4.5", "3.7.0", true),
            ("<=4.5", "4.6.3", false),
            ("=<4.5", "4.5.9", true),
            ("=<1.2.3", "1.2.4", false),
            // AND by comma / space
            (">1.1, <2", "1.1.1", false),
            (">1.1, <2", "1.2.1", true),
            (">1.1, <3", "4.3.2", false),
            (">=1.1, <2, !=1.2.3", "1.2.3", false),
            (">1.1 <2", "1.2.1", true),
            (">1.1    <3", "4.3.2", false),
            (">=1.1,<2", "1.5.0", true),
            (">=1.1 ,<2", "1.5.0", true),
            ("> 1.1, <     2", "1.1.1", false),
            (">   1.1, <2", "1.2.1", true),
            (">=1.1    < 2    != 1.2.3", "1.2.3", false),
            // OR
            (">=1.1, <2, !=1.2.3 || > 3", "4.1.2", true),
            (">=1.1, <2, !=1.2.3 || > 3", "3.1.2", false),
            (">=1.1, <2, !=1.2.3 || >= 3", "3.0.0", true),
            (">=1.1, <2, !=1.2.3 || > 3", "3.0.0", false),
            (">=1.1, <2, !=1.2.3 || > 3", "1.2.3", false),
            (">=1.1 <2 !=1.2.3 || > 3", "4.1.2", true),
            ("^1 || ^3", "2.0.0", false),
            ("^1 || ^3", "3.4.0", true),
            ("1.2.3||1.2.4", "1.2.4", true),
            // pre-releases need a pre-release in the same AND group (v3.4)
            (">= 1.0.0  <= 2.0.0-beta", "1.0.1-beta", true),
            (">= 1.0.0  <= 2.0.0-beta", "1.0.1", true),
            (">= 1.0.0  <= 2.0.0-beta", "3.0.0", false),
            (">= 1.0.0  <= 2.0.0-beta || > 3", "1.0.1-beta", true),
            (">= 1.0.0  <= 2.0.0-beta || > 3", "3.0.1-beta", false),
            (
                ">= 1.0.0  <= 2.0.0-beta != 1.0.1 || > 3",
                "1.0.1-beta",
                true,
            ),
            (
                ">= 1.0.0  <= 2.0.0-beta != 1.0.1-beta || > 3",
                "1.0.1-beta",
                false,
            ),
            (">= 1.0.0-0  <= 2.0.0", "1.0.1-beta", true),
            (">=1.0.0-0 <2.0.0", "1.5.0-beta", true),
            (">0.0.0-0", "0.1.0-alpha", true),
            (">0.0.0-0", "5.0.0", true),
            ("1.2.3-rc.1", "1.2.3-rc.1", true),
            ("1.2.3-rc.1", "1.2.3-rc.2", false),
            (">=1.2.3-rc.1", "1.2.3-rc.2", true),
            (">=1.2.3-rc.1", "1.2.3-rc.0", false),
            (">=1.2.3-rc.1", "1.2.3", true),
            ("1.2.3", "1.2.3-rc.1", false),
            // hyphen ranges
            ("1.1 - 2", "1.1.1", true),
            ("1.1 - 2", "2.9.9", true),
            ("1.1 - 2", "3.0.0", false),
            ("1.5.0 - 4.5", "3.7.0", true),
            ("1.2 - 1.4.5", "1.2.0", true),
            ("1.2 - 1.4.5", "1.4.5", true),
            ("1.2 - 1.4.5", "1.4.6", false),
            ("1.2 - 1.4.5", "1.1.9", false),
            ("1.2 - 1.4", "1.4.9", true),
            ("1.2 - 1.4", "1.5.0", false),
            ("1.1-3", "4.3.2", false),
            ("1.1-3", "1.1.0-3", true),
            ("1.0.0 - 2.0.0 <=2.0.0", "1.5.0", true),
            ("1.0.0 - 2.0.0, <=2.0.0", "1.5.0", true),
            ("1.0.0 - 2.0.0 || 3.0.0 - 4.0.0", "3.5.0", true),
            ("1.0.0 - 2.0.0 || 3.0.0 - 4.0.0", "2.5.0", false),
            // caret
            ("^1.1", "1.1.1", true),
            ("^1.1", "4.3.2", false),
            ("^1.2.3", "1.2.3", true),
            ("^1.2.3", "1.9.0", true),
            ("^1.2.3", "2.0.0", false),
            ("^1.2.3", "1.2.2", false),
            ("^0.2.3", "0.2.3", true),
            ("^0.2.3", "0.2.9", true),
            ("^0.2.3", "0.3.0", false),
            ("^0.2", "0.2.9", true),
            ("^0.2", "0.3.0", false),
            ("^0.0.3", "0.0.3", true),
            ("^0.0.3", "0.0.4", false),
            ("^0.0", "0.0.9", true),
            ("^0.0", "0.1.0", false),
            ("^0", "0.9.9", true),
            ("^0", "1.0.0", false),
            ("^0.0.0", "1.2.3", false),
            ("^1.x", "1.1.1", true),
            ("^2.x", "1.1.1", false),
            ("^1.x", "2.1.1", false),
            ("^1.x", "1.1.1-beta1", false),
            ("^1.1.2-alpha", "1.2.1-beta1", true),
            ("^1.2.x-alpha", "1.1.1-beta1", false),
            ("^0.0.1", "0.0.1", true),
            ("^0.0.1", "0.3.1", false),
            ("^*", "0.0.0", true),
            ("^*", "1.0.0", false),
            // tilde
            ("~*", "2.1.1", true),
            ("~0.0.0", "1.2.3", true),
            ("~1", "2.1.1", false),
            ("~1", "1.3.5", true),
            ("~1", "1.4", true),
            ("~1", "0.9.0", false),
            ("~1.x", "2.1.1", false),
            ("~1.x", "1.3.5", true),
            ("~1.1", "1.1.1", true),
            ("~1.1", "1.1.1-alpha", false),
            ("~1.1-alpha", "1.1.1-beta", true),
            ("~1.1.1-beta", "1.1.1-alpha", false),
            ("~1.1.1-beta", "1.1.1", true),
            ("~1.2.3", "1.2.5", true),
            ("~1.2.3", "1.2.2", false),
            ("~1.2.3", "1.3.2", false),
            ("~1.2", "1.2.0", true),
            ("~1.2", "1.3.0", false),
            ("~1.1", "1.2.3", false),
            ("~1.3", "2.4.5", false),
            ("~>1.2", "1.2.7", true),
            ("~> 1.2.3", "1.2.9", true),
            ("~0", "0.5.0", true),
            ("~0", "1.0.0", false),
        ];
        for (constraint, version, want) in cases {
            let c = Constraint::parse(constraint).unwrap_or_else(|e| panic!("{constraint}: {e}"));
            assert_eq!(
                c.matches(&v(version)),
                *want,
                "constraint {constraint:?} with {version:?}"
            );
        }
    }

    #[test]
    fn invalid_constraints() {
        let cases = [
            "",
            "   ",
            "||",
            "1.2.3 ||",
            "|| 1.2.3",
            ">=",
            ">= , 1.2",
            ",1.2",
            "1.2,",
            "1.2,,1.3",
            "1.2, ,1.3",
            ">=1.0.0<2.0.0",
            "1.2.3.4",
            "abc",
            "1.2 -",
            "1.2 - ",
            "- 1.2",
            ">=1.2 - 1.4",
            "1.2 - >=1.4",
            "1.2 -1.4",
            "1.2- 1.4",
            ">>1",
            "!1",
            "1.2.3-01",
            "1.xx",
            "1x",
            "=>=1",
            "v",
            "1.2.3 | 1.2.4",
            "latest",
        ];
        for input in cases {
            assert!(
                Constraint::parse(input).is_err(),
                "{input:?} parsed as a constraint"
            );
        }
        let err = Constraint::parse(">=1.0.0<2.0.0").unwrap_err().to_string();
        assert!(
            err.contains(">=1.0.0<2.0.0") && err.contains("expected"),
            "{err}"
        );
    }

    #[test]
    fn constraint_display_is_original() {
        for text in [">= 1.2, <2", "^1.2 || ~3", "1.2 - 1.4.5", "*"] {
            assert_eq!(Constraint::parse(text).unwrap().to_string(), text);
        }
    }
}
