//! What every configuration section shares: the error a section's own
//! validation reports ([`ConfigError`], a key path and a reason), the
//! [`Validate`] trait each section implements, and values typed at load
//! ([`HostPort`]). The gateway's `config` module composes the sections
//! and adds the file name and line to every error.

use std::fmt;

use serde::Deserialize;

/// A configuration error found by a section's own validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key_path}: {reason}")]
pub struct ConfigError {
    /// Where in the TOML file, e.g. `drivers.sim.devices[2].points[0].rate`.
    pub key_path: String,
    pub reason: String,
}

/// A configuration section that checks what serde's types cannot express.
pub trait Validate {
    /// Appends every problem to `errors`; `path` is where the section sits
    /// in the file (e.g. `store` or `drivers.modbus`), and each error's key
    /// path starts with it.
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>);
}

/// Collects a section's problems under its key path.
pub struct Problems<'a> {
    path: &'a str,
    errors: &'a mut Vec<ConfigError>,
}

impl<'a> Problems<'a> {
    pub fn new(path: &'a str, errors: &'a mut Vec<ConfigError>) -> Self {
        Self { path, errors }
    }

    /// The key path of `key` in this section.
    pub fn key(&self, key: &str) -> String {
        key_path(self.path, key)
    }

    /// Reports `reason` for `key` (relative to the section).
    pub fn add(&mut self, key: &str, reason: impl Into<String>) {
        let key_path = self.key(key);
        self.errors.push(ConfigError {
            key_path,
            reason: reason.into(),
        });
    }

    /// Reports `key` unless `min <= value <= max`.
    pub fn range<T: PartialOrd + fmt::Display>(&mut self, key: &str, value: T, min: T, max: T) {
        if !(min <= value && value <= max) {
            self.add(key, format!("must be {min}..={max}, got {value}"));
        }
    }
}

/// `prefix.name`, or `name` at the top level.
pub fn key_path(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// A type read from configuration text.
pub trait FromText: Sized {
    /// The value of `text`, or why it is not one (naming the text).
    fn from_text(text: &str) -> Result<Self, String>;
}

/// A value parsed from its text when the file is read. A text that does
/// not parse is kept with its reason, for the section's validation to
/// report ([`Problems::parsed`]) together with every other problem,
/// rather than stopping at the first as a serde error would.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed<T> {
    text: String,
    value: Result<T, String>,
}

impl<T: FromText> Parsed<T> {
    /// Parses `text`.
    pub fn new(text: &str) -> Self {
        Self {
            text: text.to_owned(),
            value: T::from_text(text),
        }
    }
}

impl<T: fmt::Display> From<T> for Parsed<T> {
    fn from(value: T) -> Self {
        Self {
            text: value.to_string(),
            value: Ok(value),
        }
    }
}

impl<T> Parsed<T> {
    /// The value, when the text parsed (always, once validation passed).
    pub fn value(&self) -> Option<&T> {
        self.value.as_ref().ok()
    }

    /// The text as written.
    pub fn text(&self) -> &str {
        &self.text
    }
}

impl<T> fmt::Display for Parsed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de, T: FromText> Deserialize<'de> for Parsed<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Ok(Self::new(&text))
    }
}

impl Problems<'_> {
    /// Reports `key` if its text did not parse.
    pub fn parsed<T>(&mut self, key: &str, value: &Parsed<T>) {
        if let Err(reason) = &value.value {
            self.add(key, reason.clone());
        }
    }
}

/// A `host:port` network endpoint, checked when the file is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl std::str::FromStr for HostPort {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not host:port (e.g. 10.0.0.5:502)");
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad());
        }
        let port = port.parse().map_err(|_| bad())?;
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromText for HostPort {
    fn from_text(text: &str) -> Result<Self, String> {
        text.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_parses_and_prints() {
        let hp: HostPort = "10.0.0.5:502".parse().expect("valid");
        assert_eq!((hp.host.as_str(), hp.port), ("10.0.0.5", 502));
        assert_eq!(hp.to_string(), "10.0.0.5:502");
        let v6: HostPort = "[::1]:1883".parse().expect("valid");
        assert_eq!(
            (v6.host.as_str(), v6.to_string()),
            ("::1", "[::1]:1883".into())
        );
        for bad in ["", "host", ":502", "host:", "host:99999", "host:port"] {
            let e = bad.parse::<HostPort>().expect_err(bad);
            assert!(e.contains("is not host:port"), "{e}");
        }
    }

    #[test]
    fn a_bad_text_is_kept_and_reported_by_validation() {
        #[derive(Deserialize)]
        struct Section {
            a: Parsed<HostPort>,
            b: Parsed<HostPort>,
        }
        let section: Section = serde_json::from_str(r#"{"a": "h:1", "b": "nohost"}"#)
            .expect("a bad text does not stop the reading");
        assert_eq!(section.a.value().map(|v| v.port), Some(1));
        assert_eq!(section.b.value(), None);
        assert_eq!(section.b.text(), "nohost");
        let mut errors = Vec::new();
        let mut p = Problems::new("up", &mut errors);
        p.parsed("a", &section.a);
        p.parsed("b", &section.b);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].key_path, "up.b");
        assert!(errors[0].reason.contains("`nohost` is not host:port"));
    }

    #[test]
    fn problems_name_the_key_path() {
        let mut errors = Vec::new();
        let mut p = Problems::new("store", &mut errors);
        p.range("cache_mib", 0, 1, 4096);
        p.range("commit_max_readings", 5, 1, 10);
        p.add("path", "must not be empty");
        assert_eq!(
            errors,
            [
                ConfigError {
                    key_path: "store.cache_mib".into(),
                    reason: "must be 1..=4096, got 0".into()
                },
                ConfigError {
                    key_path: "store.path".into(),
                    reason: "must not be empty".into()
                },
            ]
        );
    }
}
