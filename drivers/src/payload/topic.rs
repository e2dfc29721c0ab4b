//! Topic patterns with captures: `plant/{device}/telemetry/{point}`.
//!
//! A pattern is MQTT topic levels separated by `/`. A level is a literal,
//! a capture `{name}` (exactly one level; `device` and `point` are the
//! ones the rules use), `+` (any one level, not captured) or, last, `#`
//! (any number of levels, also none). The broker subscription for a
//! pattern replaces captures with `+`.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    Capture(String),
    Any,
    Rest,
}

/// A compiled topic pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    levels: Vec<Level>,
}

/// Why a pattern is not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError(pub String);

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TopicPattern {
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        if pattern.is_empty() {
            return Err(PatternError("a topic pattern cannot be empty".into()));
        }
        let parts: Vec<&str> = pattern.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        let mut names: Vec<&str> = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let level = match *part {
                "#" if i + 1 == parts.len() => Level::Rest,
                "#" => return Err(PatternError("`#` may only be the last level".into())),
                "+" => Level::Any,
                p if p.starts_with('{') && p.ends_with('}') && p.len() > 2 => {
                    let name = &p[1..p.len() - 1];
                    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        return Err(PatternError(format!(
                            "capture `{p}`: a name is letters, digits and `_`"
                        )));
                    }
                    if names.contains(&name) {
                        return Err(PatternError(format!("capture `{p}` appears twice")));
                    }
                    names.push(name);
                    Level::Capture(name.to_owned())
                }
                p if p.contains(['{', '}', '+', '#']) => {
                    return Err(PatternError(format!(
                        "level `{p}`: `{{name}}`, `+` and `#` must be a whole level"
                    )));
                }
                p => Level::Literal(p.to_owned()),
            };
            levels.push(level);
        }
        Ok(Self { levels })
    }

    /// The MQTT subscription filter: captures become `+`.
    pub fn filter(&self) -> String {
        let levels: Vec<&str> = self
            .levels
            .iter()
            .map(|l| match l {
                Level::Literal(s) => s.as_str(),
                Level::Capture(_) | Level::Any => "+",
                Level::Rest => "#",
            })
            .collect();
        levels.join("/")
    }

    /// Whether the pattern captures `name`.
    pub fn captures(&self, name: &str) -> bool {
        self.levels
            .iter()
            .any(|l| matches!(l, Level::Capture(n) if n == name))
    }

    /// Matches `topic`, returning the captured levels by name.
    pub fn matches<'t>(&self, topic: &'t str) -> Option<Vec<(&str, &'t str)>> {
        let mut parts = topic.split('/');
        let mut captured = Vec::new();
        for level in &self.levels {
            match level {
                Level::Rest => return Some(captured),
                _ => {
                    let part = parts.next()?;
                    match level {
                        Level::Literal(s) if s != part => return None,
                        Level::Capture(name) => {
                            if part.is_empty() {
                                return None;
                            }
                            captured.push((name.as_str(), part));
                        }
                        _ => {}
                    }
                }
            }
        }
        parts.next().is_none().then_some(captured)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_levels_and_builds_the_filter() {
        let p = TopicPattern::parse("plant/{device}/telemetry/{point}").unwrap();
        assert_eq!(p.filter(), "plant/+/telemetry/+");
        assert_eq!(
            p.matches("plant/press-1/telemetry/temp"),
            Some(vec![("device", "press-1"), ("point", "temp")])
        );
        assert_eq!(p.matches("plant/press-1/telemetry"), None);
        assert_eq!(p.matches("plant/press-1/telemetry/temp/x"), None);
        assert_eq!(p.matches("plant//telemetry/temp"), None);
        assert_eq!(p.matches("other/press-1/telemetry/temp"), None);
        assert!(p.captures("device") && !p.captures("unit"));
    }

    #[test]
    fn wildcards() {
        let p = TopicPattern::parse("spBv1.0/{group}/+/{node}/#").unwrap();
        assert_eq!(p.filter(), "spBv1.0/+/+/+/#");
        assert_eq!(
            p.matches("spBv1.0/g/DDATA/n/dev"),
            Some(vec![("group", "g"), ("node", "n")])
        );
        assert_eq!(
            p.matches("spBv1.0/g/NDATA/n"),
            Some(vec![("group", "g"), ("node", "n")])
        );
    }

    #[test]
    fn bad_patterns_say_why() {
        for (bad, why) in [
            ("", "empty"),
            ("a/#/b", "last level"),
            ("a/{x}/{x}", "twice"),
            ("a/b{x}", "whole level"),
            ("a/{x-y}", "letters"),
        ] {
            let e = TopicPattern::parse(bad).expect_err(bad).0;
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
