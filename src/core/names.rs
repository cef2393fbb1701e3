//! Release names and namespaces, validated exactly as helm and Kubernetes do, before any
//! request is made with them.
//!
//! Release names follow helm's `ValidateReleaseName` (`pkg/chartutil/validate_name.go` in
//! 3.17.3, `pkg/chart/v2/util/validate_name.go` in 4.1.4, identical): not empty, at most 53
//! bytes, and a full match of
//! `^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$` (dot-separated
//! DNS-1123 labels). Namespaces are Kubernetes DNS-1123 labels
//! (`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`, at most 63).
//!
//! `validate_namespace` judges the namespace that will be used: `-n ''` (or an empty
//! `HELM_NAMESPACE`) means "the kubeconfig context's namespace", as in helm, and is
//! resolved before validation (`cluster::connect`).

use std::fmt;

/// Longest release name helm accepts (63 minus room for suffixes charts add).
pub const MAX_RELEASE_NAME: usize = 53;
/// Longest DNS-1123 label, hence namespace.
pub const MAX_NAMESPACE: usize = 63;

/// Which name was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameKind {
    /// The RELEASE argument.
    Release,
    /// The namespace (`-n/--namespace`, `HELM_NAMESPACE` or the kubeconfig context).
    Namespace,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Release => "release name",
            NameKind::Namespace => "namespace",
        })
    }
}

/// Why a name is invalid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// Nothing at all.
    Empty,
    /// Longer than allowed (bytes, as helm's `len`).
    TooLong {
        /// Length in bytes.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// A character outside `a-z`, `0-9`, `-` (and `.` for releases).
    BadChar {
        /// The character.
        ch: char,
        /// 1-based character position.
        position: usize,
    },
    /// A label starts or ends with `-`, or a release has an empty `.`-separated part
    /// (leading, trailing or doubled `.`).
    BadEdge {
        /// The character at the edge (`-` or `.`).
        ch: char,
        /// 1-based character position.
        position: usize,
    },
}

/// A rejected release name or namespace. The message is one line naming the value, what is
/// wrong with it and what is allowed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct NameError {
    /// Which name.
    pub kind: NameKind,
    /// The value as given.
    pub value: String,
    /// What is wrong.
    pub problem: Problem,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, value) = (self.kind, &self.value);
        match &self.problem {
            Problem::Empty => write!(f, "{kind} is empty")?,
            Problem::TooLong { len, max } => {
                write!(f, "{kind} {value:?} is {len} characters long, more than {max}")?
            }
            Problem::BadChar { ch, position } => write!(
                f,
                "{kind} {value:?} contains {ch:?} at position {position}"
            )?,
            Problem::BadEdge { ch, position } => write!(
                f,
                "{kind} {value:?} has {ch:?} at position {position}, where a letter or digit must be"
            )?,
        }
        match self.kind {
            NameKind::Release => write!(
                f,
                "; helm allows lowercase letters, digits, '-' and '.', starting and ending each \
                 '.'-separated part with a letter or digit, at most {MAX_RELEASE_NAME} characters"
            ),
            NameKind::Namespace => write!(
                f,
                "; a namespace is a DNS-1123 label: lowercase letters, digits and '-', starting \
                 and ending with a letter or digit, at most {MAX_NAMESPACE} characters"
            ),
        }
    }
}

/// Validates a release name as helm's `ValidateReleaseName` does.
pub fn validate_release_name(name: &str) -> Result<(), NameError> {
    check(name, NameKind::Release, MAX_RELEASE_NAME, true)
}

/// Validates a namespace as a Kubernetes DNS-1123 label.
pub fn validate_namespace(namespace: &str) -> Result<(), NameError> {
    check(namespace, NameKind::Namespace, MAX_NAMESPACE, false)
}

fn check(value: &str, kind: NameKind, max: usize, dots: bool) -> Result<(), NameError> {
    let fail = |problem| {
        Err(NameError {
            kind,
            value: value.to_string(),
            problem,
        })
    };
    if value.is_empty() {
        return fail(Problem::Empty);
    }
    // Characters first: a non-ASCII name is reported for its character, not its length.
    let chars: Vec<char> = value.chars().collect();
    for (i, &ch) in chars.iter().enumerate() {
        let ok = ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-' || (dots && ch == '.');
        if !ok {
            return fail(Problem::BadChar {
                ch,
                position: i + 1,
            });
        }
    }
    // Every '.'-separated part (the whole value without dots) is a DNS-1123 label:
    // starts and ends with [a-z0-9]; an empty part shows up as a '.' at an edge.
    for (i, &ch) in chars.iter().enumerate() {
        let at_start = i == 0 || chars[i - 1] == '.';
        let at_end = i + 1 == chars.len() || chars[i + 1] == '.';
        if (ch == '-' || ch == '.') && (at_start || at_end) {
            return fail(Problem::BadEdge {
                ch,
                position: i + 1,
            });
        }
    }
    if value.len() > max {
        return fail(Problem::TooLong {
            len: value.len(),
            max,
        });
    }
    Ok(())
}

/// The name helm gives the record of `release` at `revision` (Secret, ConfigMap or SQL row
/// key): `sh.helm.release.v1.<release>.v<revision>`.
pub fn record_name(release: &str, revision: u64) -> String {
    format!("sh.helm.release.v1.{release}.v{revision}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// helm's regex, as a reference implementation independent of `check`: a full match of
    /// `label(\.label)*` with `label = [a-z0-9]([-a-z0-9]*[a-z0-9])?`.
    fn helm_regex_matches(s: &str, dots: bool) -> bool {
        let label = |l: &str| {
            let b = l.as_bytes();
            let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
            !b.is_empty()
                && alnum(b[0])
                && alnum(b[b.len() - 1])
                && b.iter().all(|&c| alnum(c) || c == b'-')
        };
        if dots {
            s.split('.').all(label)
        } else {
            label(s)
        }
    }

    #[test]
    fn release_names() {
        let ok = [
            "db",
            "a",
            "0",
            "my-app",
            "a.b",
            "a-b.c-d",
            "1.2.3",
            "x9",
            &"a".repeat(53),
        ];
        for name in ok {
            assert_eq!(validate_release_name(name), Ok(()), "{name}");
            assert!(helm_regex_matches(name, true), "{name}");
        }
        let bad: &[(&str, Problem)] = &[
            ("", Problem::Empty),
            (
                "Db",
                Problem::BadChar {
                    ch: 'D',
                    position: 1,
                },
            ),
            (
                "my_app",
                Problem::BadChar {
                    ch: '_',
                    position: 3,
                },
            ),
            (
                "app-",
                Problem::BadEdge {
                    ch: '-',
                    position: 4,
                },
            ),
            (
                "-app",
                Problem::BadEdge {
                    ch: '-',
                    position: 1,
                },
            ),
            (
                "a..b",
                Problem::BadEdge {
                    ch: '.',
                    position: 2,
                },
            ),
            (
                ".a",
                Problem::BadEdge {
                    ch: '.',
                    position: 1,
                },
            ),
            (
                "a.",
                Problem::BadEdge {
                    ch: '.',
                    position: 2,
                },
            ),
            (
                "a.-b",
                Problem::BadEdge {
                    ch: '-',
                    position: 3,
                },
            ),
            (
                "a/b",
                Problem::BadChar {
                    ch: '/',
                    position: 2,
                },
            ),
            (
                "a b",
                Problem::BadChar {
                    ch: ' ',
                    position: 2,
                },
            ),
            (
                "dé",
                Problem::BadChar {
                    ch: 'é',
                    position: 2,
                },
            ),
            (
                "a?x=1",
                Problem::BadChar {
                    ch: '?',
                    position: 2,
                },
            ),
            (
                "a\n",
                Problem::BadChar {
                    ch: '\n',
                    position: 2,
                },
            ),
            (&"a".repeat(54), Problem::TooLong { len: 54, max: 53 }),
        ];
        for (name, problem) in bad {
            let err = validate_release_name(name).expect_err(name);
            assert_eq!(&err.problem, problem, "{name:?}");
            assert_eq!(err.kind, NameKind::Release);
            assert!(
                !helm_regex_matches(name, true) || name.len() > 53,
                "{name:?}"
            );
        }
    }

    #[test]
    fn namespaces() {
        for ns in [
            "default",
            "kube-system",
            "a",
            "0",
            "team-1",
            &"n".repeat(63),
        ] {
            assert_eq!(validate_namespace(ns), Ok(()), "{ns}");
        }
        let bad: &[(&str, Problem)] = &[
            ("", Problem::Empty),
            (
                "Prod",
                Problem::BadChar {
                    ch: 'P',
                    position: 1,
                },
            ),
            (
                "my_ns",
                Problem::BadChar {
                    ch: '_',
                    position: 3,
                },
            ),
            (
                "a.b",
                Problem::BadChar {
                    ch: '.',
                    position: 2,
                },
            ),
            (
                "..",
                Problem::BadChar {
                    ch: '.',
                    position: 1,
                },
            ),
            (
                "a/secrets",
                Problem::BadChar {
                    ch: '/',
                    position: 2,
                },
            ),
            (
                "a?watch=1",
                Problem::BadChar {
                    ch: '?',
                    position: 2,
                },
            ),
            (
                "my ns",
                Problem::BadChar {
                    ch: ' ',
                    position: 3,
                },
            ),
            (
                "ns-",
                Problem::BadEdge {
                    ch: '-',
                    position: 3,
                },
            ),
            (
                "-ns",
                Problem::BadEdge {
                    ch: '-',
                    position: 1,
                },
            ),
            (&"n".repeat(64), Problem::TooLong { len: 64, max: 63 }),
        ];
        for (ns, problem) in bad {
            let err = validate_namespace(ns).expect_err(ns);
            assert_eq!(&err.problem, problem, "{ns:?}");
        }
    }

    #[test]
    fn agrees_with_helms_regex_on_every_short_string() {
        // Every string up to 3 characters over an alphabet with each kind of character.
        let alphabet = ['a', 'z', '0', '-', '.', 'A', '_'];
        let mut strings = vec![String::new()];
        for _ in 0..3 {
            let longer: Vec<String> = strings
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            strings.extend(longer);
        }
        for s in &strings {
            assert_eq!(
                validate_release_name(s).is_ok(),
                helm_regex_matches(s, true),
                "{s:?}"
            );
            assert_eq!(
                validate_namespace(s).is_ok(),
                helm_regex_matches(s, false),
                "{s:?}"
            );
        }
    }

    #[test]
    fn messages_are_whole_lines() {
        let cases = [
            (
                validate_release_name("My_App"),
                "release name \"My_App\" contains 'M' at position 1; helm allows lowercase \
                 letters, digits, '-' and '.', starting and ending each '.'-separated part with a \
                 letter or digit, at most 53 characters",
            ),
            (
                validate_release_name(""),
                "release name is empty; helm allows lowercase letters, digits, '-' and '.', \
                 starting and ending each '.'-separated part with a letter or digit, at most 53 \
                 characters",
            ),
            (
                validate_namespace("team-"),
                "namespace \"team-\" has '-' at position 5, where a letter or digit must be; a \
                 namespace is a DNS-1123 label: lowercase letters, digits and '-', starting and \
                 ending with a letter or digit, at most 63 characters",
            ),
            (
                validate_namespace(&"n".repeat(64)),
                &format!(
                    "namespace {:?} is 64 characters long, more than 63; a namespace is a \
                     DNS-1123 label: lowercase letters, digits and '-', starting and ending with \
                     a letter or digit, at most 63 characters",
                    "n".repeat(64)
                ),
            ),
        ];
        for (result, want) in cases {
            assert_eq!(result.unwrap_err().to_string(), want);
        }
    }
}
