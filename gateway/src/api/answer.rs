//! Large answers written a chunk at a time as the client reads them.
//!
//! A query's rows are kept typed (a bucket is 56 bytes, a reading about
//! 100) and turned into JSON or CSV only as the body is sent, 64 KiB at a
//! time, so an answer never exists whole as text, let alone as a tree of
//! `serde_json::Value`s (which made four 100,000-bucket answers take the
//! gateway from 27 to 860 MiB). The answer holds its heavy-query permit
//! (`ApiState::query_rows`) until it is sent, so the permits bound how many
//! such answers exist at once.

use std::collections::VecDeque;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::OwnedSemaphorePermit;

/// Bytes a chunk of the body holds at least (but for the last).
const CHUNK: usize = 64 * 1024;

/// Writes one row.
pub type WriteRow<T> = fn(&T, &mut Vec<u8>);

/// An answer: `prefix`, the rows separated by `separator`, `suffix`.
pub struct Streamed<T> {
    pub content_type: &'static str,
    pub prefix: Vec<u8>,
    pub rows: Vec<T>,
    pub separator: &'static [u8],
    pub write_row: WriteRow<T>,
    pub suffix: Vec<u8>,
    pub permit: OwnedSemaphorePermit,
}

struct State<T> {
    prefix: Option<Vec<u8>>,
    rows: VecDeque<T>,
    first: bool,
    separator: &'static [u8],
    write_row: WriteRow<T>,
    suffix: Option<Vec<u8>>,
    _permit: OwnedSemaphorePermit,
}

impl<T: Send + 'static> Streamed<T> {
    /// A JSON body for rows that serialize themselves.
    pub fn json(
        prefix: Vec<u8>,
        rows: Vec<T>,
        suffix: Vec<u8>,
        permit: OwnedSemaphorePermit,
    ) -> Self
    where
        T: serde::Serialize,
    {
        Self {
            content_type: "application/json",
            prefix,
            rows,
            separator: b",",
            write_row: |row, out| {
                // Serializing typed rows into a Vec cannot fail.
                let _ = serde_json::to_writer(out, row);
            },
            suffix,
            permit,
        }
    }

    pub fn into_response(self) -> Response {
        let content_type = self.content_type;
        let state = State {
            prefix: Some(self.prefix),
            rows: self.rows.into(),
            first: true,
            separator: self.separator,
            write_row: self.write_row,
            suffix: Some(self.suffix),
            _permit: self.permit,
        };
        let stream = futures_util::stream::unfold(state, |mut state| async move {
            let mut chunk = state.prefix.take().unwrap_or_default();
            while chunk.len() < CHUNK {
                let Some(row) = state.rows.pop_front() else {
                    break;
                };
                if !state.first {
                    chunk.extend_from_slice(state.separator);
                }
                state.first = false;
                (state.write_row)(&row, &mut chunk);
            }
            if state.rows.is_empty()
                && let Some(suffix) = state.suffix.take()
            {
                chunk.extend_from_slice(&suffix);
            }
            if chunk.is_empty() {
                return None;
            }
            Some((Ok::<_, std::convert::Infallible>(Bytes::from(chunk)), state))
        });
        let mut response = Body::from_stream(stream).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
    }
}

/// `"text"` as a JSON string.
pub fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn rows_are_written_in_chunks_that_join_to_the_whole_answer() {
        let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
        let permit = permits.clone().try_acquire_owned().expect("permit");
        let rows: Vec<u64> = (0..50_000).collect();
        let answer =
            Streamed::json(br#"{"rows":["#.to_vec(), rows, b"]}".to_vec(), permit).into_response();
        assert_eq!(
            permits.available_permits(),
            0,
            "the answer holds its permit"
        );
        let mut body = answer.into_body();
        let mut text = Vec::new();
        let mut chunks = 0;
        while let Some(frame) = body.frame().await {
            let data = frame.expect("frame").into_data().expect("data");
            chunks += 1;
            text.extend_from_slice(&data);
        }
        assert!(chunks > 2, "{chunks} chunks");
        let value: serde_json::Value = serde_json::from_slice(&text).expect("JSON");
        assert_eq!(value["rows"].as_array().map(Vec::len), Some(50_000));
        assert_eq!(value["rows"][49_999], 49_999);
        assert_eq!(permits.available_permits(), 1, "sent: the permit is back");
        // No rows: the prefix and the suffix.
        let permit = permits.clone().try_acquire_owned().expect("permit");
        let empty = Streamed::<u64>::json(b"[".to_vec(), Vec::new(), b"]".to_vec(), permit);
        let bytes = empty
            .into_response()
            .into_body()
            .collect()
            .await
            .expect("body");
        assert_eq!(&bytes.to_bytes()[..], b"[]");
    }
}
