//! Wall-clock helpers: RFC 3339 timestamps (with `jiff`) and the tool's human durations
//! (`90s`, `30m`, `4h`, `7d`).

use std::time::Duration;

use jiff::Timestamp;

/// Seconds since the Unix epoch, now.
pub(crate) fn now_unix() -> i64 {
    Timestamp::now().as_second()
}

/// `2026-11-21T06:10:00Z` for a Unix timestamp (whole seconds, UTC).
pub(crate) fn format_rfc3339(unix: i64) -> String {
    match Timestamp::from_second(unix) {
        Ok(t) => t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        // Outside jiff's range (years -9999..=9999): never written by this tool.
        Err(_) => unix.to_string(),
    }
}

/// Parses an RFC 3339 timestamp (`Z` or `±hh:mm` offset, optional fraction) to Unix seconds.
pub(crate) fn parse_rfc3339(text: &str) -> Option<i64> {
    let text = text.trim();
    // jiff also accepts RFC 9557 suffixes and lowercase forms; keep to RFC 3339's shape.
    let b = text.as_bytes();
    let offset_ok = text.ends_with(['Z', 'z'])
        || (b.len() > 6 && matches!(b[b.len() - 6], b'+' | b'-') && b[b.len() - 3] == b':');
    if !offset_ok || text.contains('[') {
        return None;
    }
    text.parse::<Timestamp>().ok().map(|t| t.as_second())
}

/// Parses `90s`, `30m`, `4h`, `7d` (also combined, `1h30m`) into a duration.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return None,
        };
        let n: u64 = digits.parse().ok()?;
        total = total.checked_add(n.checked_mul(unit)?)?;
        digits.clear();
    }
    if !digits.is_empty() {
        return None;
    }
    Some(Duration::from_secs(total))
}

/// Short human form of a duration (`3m20s`, `2h`, `4d1h`).
pub(crate) fn format_duration(secs: i64) -> String {
    let secs = secs.max(0);
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (n, u) in [(d, "d"), (h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            out.push_str(&format!("{n}{u}"));
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        for t in [
            0,
            1_700_000_000,
            951_782_400, /* 2000-02-29 */
            4_102_444_800,
        ] {
            assert_eq!(parse_rfc3339(&format_rfc3339(t)), Some(t), "{t}");
        }
        assert_eq!(format_rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn rfc3339_offsets_and_fractions() {
        let z = parse_rfc3339("2026-11-21T06:10:00Z").unwrap();
        assert_eq!(parse_rfc3339("2026-11-21T07:10:00+01:00"), Some(z));
        assert_eq!(parse_rfc3339("2026-11-21T05:10:00-01:00"), Some(z));
        assert_eq!(parse_rfc3339("2026-11-21T06:10:00.123456Z"), Some(z));
        for bad in [
            "",
            "2026-11-21",
            "2026-13-01T00:00:00Z",
            "2026-11-21T06:10:00",
            "2026-11-21T06:10:00+0100",
            "2026-11-21T06:10:00.Z",
            "yesterday",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_duration("4h"), Some(Duration::from_secs(14_400)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        for bad in ["", "5", "m", "1y", "-1h", "1.5h", "99999999999999999999d"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert_eq!(format_duration(200), "3m20s");
        assert_eq!(format_duration(0), "0s");
    }
}
