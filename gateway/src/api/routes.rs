//! The data endpoints: health, readiness, status, devices and points,
//! latest values, ranges (JSON or CSV, cursor paging), aggregates,
//! writes (through [`CommandBus`](crate::command::CommandBus)) and the
//! live stream of committed readings (Server-Sent Events).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use biota_drivers::RawValue;
use serde_json::{Value as Json, json};

use super::{ApiState, Authorized, HttpError, Read, Write};
use crate::cdm::{Reading, ReadingJson};
use crate::command::WriteCommand;
use crate::export::{
    BUCKET_COLUMNS, READING_COLUMNS, bucket_cells, bucket_json, reading_cells, write_csv,
};
use crate::live::Next;
use crate::store::Cursor;
use biota_common::time::{now_ns, parse_duration, parse_time_arg};

/// Most buckets one aggregate request may ask for.
const MAX_BUCKETS: i64 = 100_000;
/// Range page size when `limit` is not given.
const DEFAULT_LIMIT: usize = 1000;

/// The query string, checked against the parameters a route knows.
pub struct Params(Vec<(String, String)>);

#[axum::async_trait]
impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, HttpError> {
        Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map(|Query(pairs)| Params(pairs))
            .map_err(|e| HttpError::bad_parameter("query", format!("unreadable query: {e}")))
    }
}

impl Params {
    /// Refuses parameters not in `known` (a typo must not silently mean
    /// "no filter") and repeated ones.
    pub fn only(&self, known: &[&str]) -> Result<(), HttpError> {
        for (i, (name, _)) in self.0.iter().enumerate() {
            if !known.contains(&name.as_str()) {
                let known = if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                };
                return Err(HttpError::bad_parameter(
                    name,
                    format!("unknown parameter `{name}` (known: {known})"),
                ));
            }
            if self.0[..i].iter().any(|(n, _)| n == name) {
                return Err(HttpError::bad_parameter(
                    name,
                    format!("`{name}` is given twice"),
                ));
            }
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn time(&self, name: &str, default: i64, now: i64) -> Result<i64, HttpError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => parse_time_arg(v, now).map_err(|e| HttpError::bad_parameter(name, e)),
        }
    }

    pub fn number(&self, name: &str, default: usize, max: usize) -> Result<usize, HttpError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(HttpError::bad_parameter(
                    name,
                    format!("`{v}` is not a number in 1..={max}"),
                )),
            },
        }
    }

    /// `format=json|csv`, else the `Accept` header (`text/csv`), else JSON.
    fn csv(&self, headers: &HeaderMap) -> Result<bool, HttpError> {
        match self.get("format") {
            Some("csv") => Ok(true),
            Some("json") => Ok(false),
            Some(other) => Err(HttpError::bad_parameter(
                "format",
                format!("`{other}` is not a format (json, csv)"),
            )),
            None => Ok(headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("text/csv"))),
        }
    }

    /// `from` and `to` (defaults: `to` = now, `from` = `to` - `span`).
    fn window(&self, span: i64) -> Result<(i64, i64), HttpError> {
        let now = now_ns();
        let to = self.time("to", now, now)?;
        let from = self.time("from", to.saturating_sub(span), now)?;
        if from > to {
            return Err(HttpError::bad_parameter("from", "`from` is after `to`"));
        }
        Ok((from, to))
    }
}

pub(super) fn json_response(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn csv_response(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response()
}

fn csv_body<R: AsRef<[String]>>(
    header: &[&str],
    rows: impl IntoIterator<Item = R>,
) -> Result<Vec<u8>, HttpError> {
    let mut out = Vec::new();
    write_csv(&mut out, header, rows).map_err(|e| HttpError::internal("writing CSV", &e))?;
    Ok(out)
}

/// Readings as a JSON array, serialized without an intermediate `Value`.
fn readings_json(readings: &[Reading]) -> Vec<ReadingJson<'_>> {
    readings.iter().map(Reading::json_view).collect()
}

/// Encodes an answer.
pub(super) fn encode(value: &impl serde::Serialize) -> Result<Vec<u8>, HttpError> {
    serde_json::to_vec(value).map_err(|e| HttpError::internal("encoding an answer", &e))
}

/// `GET /v1/health`: the process answers (liveness). No token needed.
pub async fn health(
    State(state): State<Arc<ApiState>>,
    params: Params,
) -> Result<Response, HttpError> {
    params.only(&[])?;
    Ok(axum::Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": state.status.metrics.uptime_ms() / 1000,
    }))
    .into_response())
}

/// `GET /v1/ready`: 200 while the pipeline moves (the writer's heartbeat is
/// fresh) and the gateway is not stopping; 503 with the reasons otherwise.
pub async fn ready(
    State(state): State<Arc<ApiState>>,
    params: Params,
) -> Result<Response, HttpError> {
    params.only(&[])?;
    let metrics = &state.status.metrics;
    let heartbeat_age = metrics
        .uptime_ms()
        .saturating_sub(metrics.writer_heartbeat_ms.load(Relaxed));
    let mut reasons = Vec::new();
    if heartbeat_age > 2_000 {
        reasons.push(format!(
            "the store writer has not reported for {heartbeat_age} ms"
        ));
    }
    if state.shutdown.is_cancelled() {
        reasons.push("the gateway is stopping".to_owned());
    }
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({ "ready": reasons.is_empty(), "reasons": reasons });
    Ok((status, axum::Json(body)).into_response())
}

/// `GET /v1/status`: the control socket's status (devices, each component),
/// the pipeline's counters, the store's size and the live streams.
pub async fn status(
    _: Authorized<Read>,
    State(state): State<Arc<ApiState>>,
    params: Params,
) -> Result<Response, HttpError> {
    params.only(&[])?;
    let mut body = state.status.json();
    body["pipeline"] = state.status.pipeline_json();
    body["store"] = json!({ "size_bytes": super::prometheus::db_size(&state.db) });
    body["stream_subscribers"] = json!(state.live.subscribers());
    if body.get("anchoring").is_none() {
        // Sealing is off.
        body["anchoring"] = Json::Null;
    }
    Ok(axum::Json(body).into_response())
}

/// What the API knows of a device: its configuration and live counters.
fn device_entry(state: &ApiState, device: &str, points: u64, status: &Json) -> Json {
    let binding = state.bindings.iter().find(|b| b.device == device);
    let driver = binding
        .as_ref()
        .and_then(|b| b.key_path.split('.').nth(1).map(str::to_owned));
    let counters = status["devices"]
        .as_array()
        .and_then(|all| all.iter().find(|d| d["device"] == device))
        .cloned();
    json!({
        "device": device,
        "configured": binding.is_some(),
        "driver": driver,
        "profile": binding.as_ref().and_then(|b| b.profile.clone()),
        "writable": state.commands.takes_writes(device),
        "points": points,
        "status": counters,
    })
}

/// `GET /v1/devices`: configured devices and devices that sent readings.
pub async fn devices(
    _: Authorized<Read>,
    State(state): State<Arc<ApiState>>,
    params: Params,
) -> Result<Response, HttpError> {
    params.only(&[])?;
    let mut known = state.query(|r| Ok(r.devices()?)).await?;
    for binding in &state.bindings {
        if !known.iter().any(|(d, _)| *d == binding.device) {
            known.push((binding.device.clone(), 0));
        }
    }
    known.sort();
    let status = state.status.json();
    let list: Vec<Json> = known
        .iter()
        .map(|(d, n)| device_entry(&state, d, *n, &status))
        .collect();
    Ok(axum::Json(json!({ "devices": list })).into_response())
}

/// `GET /v1/devices/{device}`: the device and each point's latest reading
/// and profile (unit, type).
pub async fn device(
    _: Authorized<Read>,
    State(state): State<Arc<ApiState>>,
    Path(device): Path<String>,
    params: Params,
) -> Result<Response, HttpError> {
    params.only(&[])?;
    let name = device.clone();
    let latest = state.query(move |r| Ok(r.latest(Some(&name))?)).await?;
    let entry = device_entry(&state, &device, latest.len() as u64, &state.status.json());
    if latest.is_empty() && entry["configured"] == false {
        return Err(HttpError::not_found(format!("no device `{device}`")));
    }
    let points: Vec<Json> = latest
        .iter()
        .map(|r| json!({ "point": &*r.point, "unit": r.unit.as_deref(), "kind": r.value.kind().as_str(), "latest": r.to_json() }))
        .collect();
    let mut body = entry;
    body["points"] = json!(points.len());
    body["point_list"] = Json::Array(points);
    Ok(axum::Json(body).into_response())
}

/// `GET /v1/latest?device=`: the latest reading of every point.
pub async fn latest(
    _: Authorized<Read>,
    State(state): State<Arc<ApiState>>,
    params: Params,
) -> Result<Response, HttpError> {
    params.only(&["device"])?;
    let device = params.get("device").map(str::to_owned);
    let body = state
        .query(move |r| {
            let readings = r.latest(device.as_deref())?;
            #[derive(serde::Serialize)]
            struct Latest<'a> {
                readings: Vec<ReadingJson<'a>>,
            }
            encode(&Latest {
                readings: readings_json(&readings),
            })
        })
        .await?;
    Ok(json_response(body))
}

/// `GET .../range?from&to&limit&cursor&format`: one page of a point's
/// readings in time order; `next` (or the `X-Next-Cursor` header for CSV)
/// continues it.
pub async fn range(
    _: Authorized<Read>,
    State(state): State<Arc<ApiState>>,
    Path((device, point)): Path<(String, String)>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, HttpError> {
    params.only(&["from", "to", "limit", "cursor", "format"])?;
    let (from, to) = params.window(3_600_000_000_000)?;
    let limit = params.number(
        "limit",
        DEFAULT_LIMIT.min(state.api.max_page),
        state.api.max_page,
    )?;
    let cursor = match params.get("cursor") {
        None => None,
        Some(c) => Some(
            c.parse::<Cursor>()
                .map_err(|e| HttpError::bad_parameter("cursor", e))?,
        ),
    };
    let csv = params.csv(&headers)?;
    let (body, next) = state
        .query(move |r| {
            let page = r.range(&device, &point, from, to, limit, cursor)?;
            let next = page.next.map(|c| c.to_string());
            let body = if csv {
                csv_body(&READING_COLUMNS, page.readings.iter().map(reading_cells))?
            } else {
                #[derive(serde::Serialize)]
                struct PageJson<'a> {
                    device: &'a str,
                    point: &'a str,
                    readings: Vec<ReadingJson<'a>>,
                    next: &'a Option<String>,
                }
                encode(&PageJson {
                    device: &device,
                    point: &point,
                    readings: readings_json(&page.readings),
                    next: &next,
                })?
            };
            Ok((body, next))
        })
        .await?;
    if !csv {
        return Ok(json_response(body));
    }
    let mut response = csv_response(body);
    if let Some(next) = next.and_then(|n| HeaderValue::from_str(&n).ok()) {
        response.headers_mut().insert("x-next-cursor", next);
    }
    Ok(response)
}

/// `GET .../aggregate?from&to&bucket&format`: min, max, avg, count, first,
/// last per time bucket (numeric points; empty buckets omitted).
pub async fn aggregate(
    _: Authorized<Read>,
    State(state): State<Arc<ApiState>>,
    Path((device, point)): Path<(String, String)>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, HttpError> {
    params.only(&["from", "to", "bucket", "format"])?;
    let (from, to) = params.window(86_400_000_000_000)?;
    let bucket = match params.get("bucket") {
        None => 60_000_000_000,
        Some(b) => parse_duration(b)
            .ok()
            .and_then(|d| i64::try_from(d.as_nanos()).ok())
            .filter(|&ns| ns >= 1_000_000)
            .ok_or_else(|| {
                HttpError::bad_parameter(
                    "bucket",
                    format!("`{b}` is not a duration of at least 1ms, like 1m or 10s"),
                )
            })?,
    };
    if (to - from) / bucket > MAX_BUCKETS {
        return Err(HttpError::bad_parameter(
            "bucket",
            format!("more than {MAX_BUCKETS} buckets: choose a wider bucket or a shorter range"),
        ));
    }
    let csv = params.csv(&headers)?;
    let body = state
        .query(move |r| {
            let buckets = r.aggregate(&device, &point, from, to, bucket)?;
            if csv {
                return csv_body(&BUCKET_COLUMNS, buckets.iter().map(bucket_cells));
            }
            let list: Vec<Json> = buckets.iter().map(bucket_json).collect();
            encode(
                &json!({ "device": device, "point": point, "bucket_ns": bucket, "buckets": list }),
            )
        })
        .await?;
    Ok(if csv {
        csv_response(body)
    } else {
        json_response(body)
    })
}

/// `POST .../write` with `{"value": <bool|number|string>, "verify": bool}`:
/// through the command bus, answered once the device answered.
pub async fn write(
    Authorized(token, _): Authorized<Write>,
    State(state): State<Arc<ApiState>>,
    Path((device, point)): Path<(String, String)>,
    params: Params,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    params.only(&[])?;
    let body = body.map_err(|e| {
        HttpError::new(
            e.status(),
            "bad_body",
            format!("the request body: {}", e.body_text()),
        )
    })?;
    let request: Json = serde_json::from_slice(&body)
        .map_err(|e| HttpError::bad_parameter("body", format!("not JSON: {e}")))?;
    let Some(fields) = request.as_object() else {
        return Err(HttpError::bad_parameter(
            "body",
            "must be an object like {\"value\": 21.5}",
        ));
    };
    if let Some(unknown) = fields
        .keys()
        .find(|k| !["value", "verify"].contains(&k.as_str()))
    {
        return Err(HttpError::bad_parameter(
            unknown,
            format!("unknown field `{unknown}` (known: value, verify)"),
        ));
    }
    let value = match fields.get("value") {
        Some(Json::Bool(b)) => RawValue::Bool(*b),
        Some(Json::Number(n)) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => RawValue::I64(i),
            (None, Some(u), _) => RawValue::U64(u),
            (_, _, Some(f)) => RawValue::F64(f),
            _ => {
                return Err(HttpError::bad_parameter(
                    "value",
                    "not a representable number",
                ));
            }
        },
        Some(Json::String(s)) => RawValue::Text(s.clone()),
        Some(_) => {
            return Err(HttpError::bad_parameter(
                "value",
                "must be a boolean, a number or a string",
            ));
        }
        None => {
            return Err(HttpError::bad_parameter(
                "value",
                "missing: {\"value\": ...}",
            ));
        }
    };
    let verify = match fields.get("verify") {
        None => false,
        Some(Json::Bool(b)) => *b,
        Some(_) => return Err(HttpError::bad_parameter("verify", "must be true or false")),
    };
    tracing::info!(token, device, point, "API write");
    let outcome = state
        .commands
        .write(WriteCommand {
            device,
            point,
            value,
            verify,
        })
        .await?;
    Ok(axum::Json(json!({ "write": outcome })).into_response())
}

/// `GET /v1/stream?device=&point=`: committed readings as Server-Sent
/// Events, one `readings` event (a JSON array, `id` = its last seq) per
/// group commit that holds matching readings. A subscriber that falls
/// behind gets a `lagged` event and the stream ends; so does every stream
/// when the gateway stops.
pub async fn stream(
    _: Authorized<Read>,
    State(state): State<Arc<ApiState>>,
    params: Params,
) -> Result<Response, HttpError> {
    params.only(&["device", "point"])?;
    let device = params.get("device").map(str::to_owned);
    let point = params.get("point").map(str::to_owned);
    let Some(subscription) = state.live.subscribe(state.api.sse_max_subscribers) else {
        return Err(HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            format!(
                "{} live streams are open, the most [api] sse_max_subscribers allows",
                state.api.sse_max_subscribers
            ),
        ));
    };
    let shutdown = state.shutdown.clone();
    let events = futures_util::stream::unfold((subscription, false), move |(mut sub, done)| {
        let (device, point, shutdown) = (device.clone(), point.clone(), shutdown.clone());
        async move {
            if done {
                return None;
            }
            loop {
                let next = tokio::select! {
                    () = shutdown.cancelled() => return None,
                    next = sub.next() => next,
                };
                match next {
                    Next::Closed => return None,
                    Next::Lagged { missed } => {
                        let event = Event::default()
                            .event("lagged")
                            .data(json!({ "missed_commits": missed }).to_string());
                        return Some((Ok::<_, Infallible>(event), (sub, true)));
                    }
                    Next::Readings(commit) => {
                        // The commit's JSON is encoded once for all subscribers.
                        let mut data = String::from("[");
                        let mut last = None;
                        for (r, json) in commit.readings.iter().zip(commit.json()) {
                            if device.as_deref().is_some_and(|d| *r.device != *d)
                                || point.as_deref().is_some_and(|p| *r.point != *p)
                            {
                                continue;
                            }
                            if last.is_some() {
                                data.push(',');
                            }
                            data.push_str(json);
                            last = Some(r.seq);
                        }
                        let Some(last) = last else { continue };
                        data.push(']');
                        let event = Event::default()
                            .event("readings")
                            .id(last.to_string())
                            .data(data);
                        return Some((Ok(event), (sub, false)));
                    }
                }
            }
        }
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
