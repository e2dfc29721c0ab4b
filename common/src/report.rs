//! Errors as people read them: an error and its causes on one line, each
//! cause once. Errors here often say their cause in their own message
//! already (`cannot open database X: disk full`), so printing the chain
//! naively (`{:#}`) repeats it.

use std::error::Error;

/// `e`, then each cause whose text its predecessors do not already
/// contain, joined by `: `.
pub fn chain(e: &(dyn Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let line = c.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot start anchoring: {0}")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("key file a.key: missing")]
    struct Inner;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot start")]
    struct Terse(#[source] Inner);

    #[test]
    fn each_cause_is_said_once() {
        assert_eq!(
            chain(&Outer(Inner)),
            "cannot start anchoring: key file a.key: missing"
        );
        assert_eq!(
            chain(&Terse(Inner)),
            "cannot start: key file a.key: missing"
        );
    }
}
