//! Human durations in configuration and on the command line: `500ms`,
//! `10s`, `5m`, `2h`, `30d`, `1w`, `250us`, `1h30m`. Shared by the drivers'
//! configurations and the gateway's.

use std::time::Duration;

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
}
