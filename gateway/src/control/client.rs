//! The control socket's client side: one blocking request per call (for
//! the command line and the demo), and how answers are shown to people.
//! The `devices` answer is printed without knowing any driver: the device
//! table, then each component's section as it reports it.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value as Json, json};

/// Why the command line could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the gateway at {path}: {source} (is it running, with this state directory? Use --state-dir)"
    )]
    Unreachable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the gateway's answer could not be read: {0}")]
    Answer(String),
}

/// Sends one request and returns the answer (blocking: for the CLI).
pub fn request(path: &Path, request: &Json, timeout: Duration) -> Result<Json, ClientError> {
    let unreachable = |source| ClientError::Unreachable {
        path: path.to_owned(),
        source,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(unreachable)?;
    let mut text = request.to_string();
    text.push('\n');
    stream.write_all(text.as_bytes()).map_err(unreachable)?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| ClientError::Answer(e.to_string()))?;
    serde_json::from_str(&line).map_err(|e| ClientError::Answer(format!("{e}: {line:?}")))
}

/// The body of a successful answer (its `key`), or the gateway's error
/// as `kind: message`.
pub fn body<'a>(answer: &'a Json, key: &str) -> Result<&'a Json, String> {
    if answer["ok"] == json!(true) {
        return Ok(&answer[key]);
    }
    let error = &answer["error"];
    Err(format!(
        "error ({}): {}",
        error["kind"].as_str().unwrap_or("unknown"),
        error["message"]
            .as_str()
            .unwrap_or("the gateway gave no reason")
    ))
}

/// One line for a write's outcome.
pub fn write_summary(w: &Json) -> String {
    let text = |k: &str| w[k].as_str().unwrap_or_default().to_owned();
    let raw = if text("raw_point") == text("point") && text("raw_value") == text("value") {
        String::new()
    } else {
        format!(" (device: {} = {})", text("raw_point"), text("raw_value"))
    };
    let sent = match w["sent"].as_object().and_then(|o| o.iter().next()) {
        Some((unit, values)) => format!(", sent {unit} {values}"),
        None => String::new(),
    };
    format!(
        "{}/{} = {}{raw}: {} at {}{sent}{}",
        text("device"),
        text("point"),
        text("value"),
        text("operation"),
        text("target"),
        if w["verified"] == json!(true) {
            ", read back and verified"
        } else {
            ""
        }
    )
}

/// The `devices` answer as a table of devices and a block per component.
pub fn devices_report(answer: &Json) -> String {
    let mut out = String::new();
    // (heading, field): counters since the gateway started.
    let columns = [
        ("REQUESTS", "requests"),
        ("ANSWERS", "answers"),
        ("TIMEOUTS", "timeouts"),
        ("CRC", "crc_errors"),
        ("EXCEPT", "exceptions"),
        ("LINK", "link_errors"),
        ("WRITES", "writes"),
        ("W.FAIL", "write_errors"),
        ("RTT_US", "latency_us"),
    ];
    let list = answer["devices"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if !list.is_empty() {
        let _ = write!(out, "{:<20} {:<8}", "DEVICE", "STATE");
        for (heading, _) in columns {
            let _ = write!(out, " {heading:>9}");
        }
        out.push_str("  SOURCE\n");
    }
    for d in list {
        let _ = write!(
            out,
            "{:<20} {:<8}",
            d["device"].as_str().unwrap_or("?"),
            d["state"].as_str().unwrap_or("?")
        );
        for (_, field) in columns {
            let _ = write!(out, " {:>9}", d[field].as_u64().unwrap_or(0));
        }
        let _ = writeln!(out, "  {}", d["source"].as_str().unwrap_or(""));
    }
    for (name, section) in answer.as_object().into_iter().flatten() {
        if matches!(name.as_str(), "ok" | "devices") || !section.is_object() {
            continue;
        }
        let _ = write!(out, "\n{name}:");
        let mut lists = Vec::new();
        for (key, value) in section.as_object().into_iter().flatten() {
            match value {
                Json::Array(items) if items.iter().all(Json::is_object) && !items.is_empty() => {
                    lists.push((key, items));
                }
                Json::Object(map) if map.is_empty() => {}
                Json::Array(items) if items.is_empty() => {}
                Json::String(s) => {
                    let _ = write!(out, " {key} {s},");
                }
                other => {
                    let _ = write!(out, " {key} {other},");
                }
            }
        }
        if out.ends_with(',') {
            out.pop();
        }
        out.push('\n');
        for (key, items) in lists {
            let _ = writeln!(out, "  {key}:");
            for item in items {
                let fields: Vec<String> = item
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| match v {
                        Json::String(s) => format!("{k} {s}"),
                        other => format!("{k} {other}"),
                    })
                    .collect();
                let _ = writeln!(out, "    {}", fields.join(", "));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_devices_answer_reads_without_knowing_the_drivers() {
        let answer = json!({
            "ok": true,
            "devices": [{"device": "plc-1", "state": "online", "requests": 5, "source": "x://1"}],
            "radio": {"frames": 3, "rejected": [{"reason": "bad_crc", "count": 2}]},
            "uplink": {"connected": true, "backlog": 0},
        });
        let text = devices_report(&answer);
        assert!(text.contains("plc-1"), "{text}");
        assert!(text.contains("radio: frames 3"), "{text}");
        assert!(text.contains("count 2, reason bad_crc"), "{text}");
        assert!(text.contains("uplink: backlog 0, connected true"), "{text}");
    }

    #[test]
    fn a_write_names_what_was_sent() {
        let w = json!({"device": "d", "point": "p", "value": "1.5", "raw_point": "p_raw",
            "raw_value": "15", "operation": "write_single_register (6)",
            "target": "holding_register 4", "sent": {"registers": [15]}, "verified": true});
        assert_eq!(
            write_summary(&w),
            "d/p = 1.5 (device: p_raw = 15): write_single_register (6) at holding_register 4, \
             sent registers [15], read back and verified"
        );
    }
}
