//! Time formats every crate reads and writes: human durations (`500ms`,
//! `10s`, `5m`, `2h`, `30d`) in configuration and on the command line,
//! RFC 3339 UTC timestamps in nanoseconds, and the clock in nanoseconds.
//! Written here instead of pulling a date library: the gateway only ever
//! needs UTC.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const NS_PER_SEC: i64 = 1_000_000_000;

/// Current UTC time in nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        // A clock before 1970 is a broken clock; 0 makes that visible.
        Err(_) => 0,
    }
}

/// Parses `500ms`, `10s`, `5m`, `2h`, `30d`, `1w`, `250us`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "`{s}` is not a duration like 500ms, 10s, 5m, 2h or 30d"
            ));
        }
        let n: u128 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{s}`: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_ns: u128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" | "min" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            "w" => 604_800_000_000_000,
            "" => return Err(format!("`{s}` needs a unit (ns, us, ms, s, m, h, d, w)")),
            other => {
                return Err(format!(
                    "`{s}`: unknown unit `{other}` (ns, us, ms, s, m, h, d, w)"
                ));
            }
        };
        total = total
            .checked_add(
                n.checked_mul(unit_ns)
                    .ok_or_else(|| format!("`{s}` is too long"))?,
            )
            .ok_or_else(|| format!("`{s}` is too long"))?;
        rest = &rest[unit_len..];
    }
    u64::try_from(total)
        .map(Duration::from_nanos)
        .map_err(|_| format!("`{s}` is too long"))
}

/// serde adapter for duration strings in configuration.
pub mod serde_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }

    pub mod option {
        use super::*;
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            super::deserialize(d).map(Some)
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `2026-11-23T21:07:06.123456789Z` (fraction trimmed of trailing zeros).
pub fn format_rfc3339(ts_ns: i64) -> String {
    let secs = ts_ns.div_euclid(NS_PER_SEC);
    let nanos = ts_ns.rem_euclid(NS_PER_SEC);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let mut s = format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    );
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` into UTC nanoseconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &s[start..i];
        if digits.is_empty() || digits.len() > 9 {
            return None;
        }
        nanos = digits.parse::<i64>().ok()? * 10i64.pow(9 - digits.len() as u32);
    }
    let offset = match &s[i..] {
        "Z" | "z" => 0,
        tz if tz.len() == 6
            && matches!(tz.as_bytes()[0], b'+' | b'-')
            && tz.as_bytes()[3] == b':' =>
        {
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            sign * (num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60)
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo as u32, d as u32);
    let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset;
    secs.checked_mul(NS_PER_SEC)?.checked_add(nanos)
}

/// `1.5s`, `250ms`, `3m20s` — for humans reading logs and summaries.
pub fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 1_000_000 {
        format!("{:.0}us", ns as f64 / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.1}ms", ns as f64 / 1e6)
    } else if ns < 60_000_000_000 {
        format!("{:.2}s", ns as f64 / 1e9)
    } else {
        let s = d.as_secs();
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// A point in time on the command line: `now`, `-15m` (ago), RFC 3339, or
/// integer nanoseconds since the epoch.
pub fn parse_time_arg(s: &str, now: i64) -> Result<i64, String> {
    if s == "now" {
        return Ok(now);
    }
    if let Some(ago) = s.strip_prefix('-') {
        let d = parse_duration(ago)?;
        return Ok(now.saturating_sub(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)));
    }
    if let Ok(ns) = s.parse::<i64>() {
        return Ok(ns);
    }
    parse_rfc3339(s).ok_or_else(|| {
        format!("`{s}` is not a time: use now, -15m (ago), 2026-11-23T10:00:00Z or nanoseconds")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_reject_clearly() {
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert!(parse_duration("10").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999w").is_err());
    }

    #[test]
    fn rfc3339_round_trips() {
        for ts in [
            0,
            1_767_225_600_000_000_000,
            1_767_225_600_123_456_789,
            -1_000_000_001,
            4_102_444_800_000_000_000,
        ] {
            let s = format_rfc3339(ts);
            assert_eq!(parse_rfc3339(&s), Some(ts), "{s}");
        }
        assert_eq!(
            format_rfc3339(1_767_225_600_500_000_000),
            "2026-01-01T00:00:00.5Z"
        );
        assert_eq!(
            parse_rfc3339("2026-01-01T01:00:00+01:00"),
            Some(1_767_225_600_000_000_000)
        );
        assert_eq!(parse_rfc3339("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn time_args() {
        assert_eq!(parse_time_arg("-1m", 120_000_000_000), Ok(60_000_000_000));
        assert_eq!(parse_time_arg("now", 7), Ok(7));
        assert_eq!(parse_time_arg("42", 7), Ok(42));
        assert!(parse_time_arg("soon", 7).is_err());
    }
}
