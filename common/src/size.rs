//! Sizes in configuration: `2GiB`, `500MB`, `64KiB`, a plain number of
//! bytes, and (where a limit can be switched off) `off`.

use std::fmt;

/// Parses a size like `2GiB`, `500MB`, `64KiB` or `1024`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..split]
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 2GiB, 500MB or 1048576"))?;
    let mult: u64 = match s[split..].trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "`{s}`: unknown size unit `{other}` (B, KB, MB, GB, KiB, MiB, GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// serde: a size or `off` (`None`), for `#[serde(deserialize_with = ...)]`.
pub fn deserialize_optional<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<u64>, D::Error> {
    struct SizeVisitor;
    impl serde::de::Visitor<'_> for SizeVisitor {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a size like \"2GiB\" or \"500MB\", a number of bytes, or \"off\"")
        }
        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Self::Value, E> {
            Ok(Some(n))
        }
        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Self::Value, E> {
            u64::try_from(n)
                .map(Some)
                .map_err(|_| E::custom(format!("a size cannot be negative, got {n}")))
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
            if s == "off" {
                Ok(None)
            } else {
                parse_size(s).map(Some).map_err(E::custom)
            }
        }
    }
    d.deserialize_any(SizeVisitor)
}

/// serde: a size that cannot be `off`.
pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    deserialize_optional(d)?.ok_or_else(|| serde::de::Error::custom("must be a size, not off"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }
}
