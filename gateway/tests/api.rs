//! The HTTP API end to end: a real gateway (sim devices and a simulated
//! Modbus PLC that takes writes) with its API on 127.0.0.1:0, spoken to
//! over HTTP/1.1. Every endpoint, every error code, the stream.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use biota_devkit::http_client::Client;
use biota_devkit::modbus_plc::SimulatedPlc;
use biota_gateway::api::auth::hash;
use biota_gateway::{Gateway, GatewayConfig, Paths};
use http_body_util::BodyExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const READ: &str = "bgw_test_read";
const WRITE: &str = "bgw_test_write";
const ADMIN: &str = "bgw_test_admin";

struct Harness {
    address: SocketAddr,
    shutdown: CancellationToken,
    gateway: Option<Gateway>,
    _plc: SimulatedPlc,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start(api_extra: &str) -> Self {
        let plc = SimulatedPlc::start(1..=1, 200).expect("simulated PLC");
        let text = format!(
            r#"
[store]
commit_max_delay = "20ms"

[profiles.press.points.temp_raw]
name = "oil_temperature"
type = "f64"
scale = 0.1
unit = "Cel"

[[drivers.sim.devices]]
id = "press-1"
profile = "press"
points = [
  {{ name = "temp_raw", waveform = "sine", rate = 200, min = 350, max = 650, period = 20 }},
  {{ name = "count", waveform = "counter", rate = 50 }},
]

[profiles.plc.points.speed_sp_raw]
name = "speed_setpoint"
scale = 0.1
unit = "m/min"

[drivers.modbus.maps.plc]
[[drivers.modbus.maps.plc.groups]]
name = "process"
interval = "100ms"
points = [{{ name = "parts", area = "holding_register", address = 0, type = "u16" }}]
[[drivers.modbus.maps.plc.groups]]
name = "setpoints"
interval = "200ms"
points = [{{ name = "speed_sp_raw", area = "holding_register", address = 10, type = "u16", writable = true, verify = true }}]

[[drivers.modbus.tcp]]
address = "{plc}"
devices = [{{ id = "plc-1", unit = 1, map = "plc", profile = "plc" }}]

[api]
listen = "127.0.0.1:0"
max_body = "2KiB"
sse_max_subscribers = 2
tokens = [
  {{ name = "reader", scopes = ["read"], sha256 = "{read}" }},
  {{ name = "writer", scopes = ["read", "write"], sha256 = "{write}" }},
  {{ name = "ops", scopes = ["admin"], sha256 = "{admin}" }},
]
{api_extra}
"#,
            plc = plc.address,
            read = hash(READ),
            write = hash(WRITE),
            admin = hash(ADMIN),
        );
        let config = GatewayConfig::from_toml(Path::new("api-test.toml"), &text).expect("config");
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("gateway.db");
        let shutdown = CancellationToken::new();
        let gateway = Gateway::start(&config, &Paths::for_db(&db), shutdown.clone())
            .await
            .expect("start");
        let address = gateway.api_address().expect("configured");
        let harness = Self {
            address,
            shutdown,
            gateway: Some(gateway),
            _plc: plc,
            _dir: dir,
        };
        // Until both devices have readings.
        let mut client = harness.client(Some(READ)).await;
        for _ in 0..100 {
            let latest = client.get("/v1/latest").await.expect("latest").json();
            let devices: Vec<_> = latest["readings"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| r["device"].as_str().unwrap_or_default().to_owned())
                .collect();
            if devices.iter().any(|d| d == "plc-1") && devices.iter().any(|d| d == "press-1") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        harness
    }

    async fn client(&self, token: Option<&str>) -> Client {
        Client::connect(self.address, token).await.expect("connect")
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        let report = self.gateway.take().expect("running").stopped().await;
        assert!(!report.timed_out, "the API does not hold the shutdown up");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_openapi_and_the_console_need_no_token() {
    let h = Harness::start("").await;
    let mut c = h.client(None).await;
    let health = c.get("/v1/health").await.unwrap();
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
    let ready = c.get("/v1/ready").await.unwrap();
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["ready"], true);
    let doc = c.get("/v1/openapi.json").await.unwrap();
    assert_eq!(doc.status, 200);
    assert_eq!(doc.json()["openapi"], "3.0.3");
    let console = c.get("/").await.unwrap();
    assert_eq!(console.status, 200);
    assert!(
        console.headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'self'")
    );
    for asset in ["/console.js", "/console.css"] {
        assert_eq!(c.get(asset).await.unwrap().status, 200, "{asset}");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required_and_scopes_checked() {
    let h = Harness::start("").await;
    let mut anonymous = h.client(None).await;
    let denied = anonymous.get("/v1/devices").await.unwrap();
    assert_eq!(denied.status, 401);
    assert_eq!(denied.json()["error"], "unauthorized");
    assert!(
        denied.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let mut wrong = h.client(Some("bgw_not_a_token")).await;
    let denied = wrong.get("/v1/latest").await.unwrap();
    assert_eq!(denied.status, 401);
    assert!(
        !denied.text().contains("bgw_not_a_token"),
        "errors do not echo tokens"
    );
    let basic = anonymous
        .request(
            axum::http::Method::GET,
            "/v1/latest",
            &[("authorization", "Basic dXNlcjpwYXNz")],
            None,
        )
        .await
        .unwrap();
    assert_eq!(basic.status, 401);

    let mut reader = h.client(Some(READ)).await;
    let forbidden = reader
        .post(
            "/v1/devices/plc-1/points/speed_setpoint/write",
            &json!({"value": 1}),
        )
        .await
        .unwrap();
    assert_eq!(forbidden.status, 403);
    assert_eq!(forbidden.json()["error"], "forbidden");
    // admin grants every scope
    let mut admin = h.client(Some(ADMIN)).await;
    assert_eq!(admin.get("/v1/status").await.unwrap().status, 200);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_status_and_latest() {
    let h = Harness::start("").await;
    let mut c = h.client(Some(READ)).await;
    let devices = c.get("/v1/devices").await.unwrap();
    assert_eq!(devices.status, 200);
    let list = devices.json()["devices"].as_array().unwrap().clone();
    let plc = list.iter().find(|d| d["device"] == "plc-1").expect("plc-1");
    assert_eq!(plc["driver"], "modbus");
    assert_eq!(plc["writable"], true);
    assert_eq!(plc["status"]["state"], "online", "{plc}");
    let press = list
        .iter()
        .find(|d| d["device"] == "press-1")
        .expect("press-1");
    assert_eq!(press["driver"], "sim");
    assert_eq!(press["points"], 2);

    let one = c.get("/v1/devices/press-1").await.unwrap();
    assert_eq!(one.status, 200);
    let points = one.json()["point_list"].as_array().unwrap().clone();
    let temp = points
        .iter()
        .find(|p| p["point"] == "oil_temperature")
        .unwrap();
    assert_eq!(temp["unit"], "Cel");
    assert_eq!(temp["latest"]["quality"], "good");
    let missing = c.get("/v1/devices/no-such-device").await.unwrap();
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"], "not_found");

    let latest = c.get("/v1/latest?device=press-1").await.unwrap().json();
    let readings = latest["readings"].as_array().unwrap();
    assert_eq!(readings.len(), 2);
    assert!(readings.iter().all(|r| r["device"] == "press-1"));
    let status = c.get("/v1/status").await.unwrap().json();
    assert!(status["pipeline"]["committed"].as_u64().unwrap() > 0);
    assert!(status["store"]["size_bytes"].as_u64().unwrap() > 0);
    assert!(
        status["devices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["device"] == "plc-1")
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_page_with_cursors_in_json_and_csv_and_aggregates_bucket() {
    let h = Harness::start("").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c = h.client(Some(READ)).await;
    let base = "/v1/devices/press-1/points/count/range?from=-1h";
    let first = c.get(&format!("{base}&limit=3")).await.unwrap();
    assert_eq!(first.status, 200);
    let first = first.json();
    let page: Vec<u64> = first["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(page.len(), 3);
    let next = first["next"].as_str().expect("a next cursor");
    let second = c
        .get(&format!("{base}&limit=3&cursor={next}"))
        .await
        .unwrap()
        .json();
    let values = |page: &serde_json::Value| -> Vec<i64> {
        page["readings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["value"].as_i64().unwrap())
            .collect()
    };
    // The counter counts up: the second page continues the first.
    assert_eq!(values(&first), vec![0, 1, 2]);
    assert_eq!(values(&second), vec![3, 4, 5]);

    let csv = c
        .request(
            axum::http::Method::GET,
            &format!("{base}&limit=2"),
            &[("accept", "text/csv")],
            None,
        )
        .await
        .unwrap();
    assert_eq!(csv.status, 200);
    assert!(
        csv.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let text = csv.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "device,point,time,value,unit,quality,seq,source");
    assert_eq!(lines.len(), 3);
    assert!(lines[1].starts_with("press-1,count,"));
    assert!(csv.headers.contains_key("x-next-cursor"));
    let csv = c.get(&format!("{base}&limit=2&format=csv")).await.unwrap();
    assert_eq!(csv.text(), text);

    let agg = c
        .get("/v1/devices/press-1/points/oil_temperature/aggregate?from=-1m&bucket=100ms")
        .await
        .unwrap();
    assert_eq!(agg.status, 200);
    let agg = agg.json();
    let buckets = agg["buckets"].as_array().unwrap();
    assert!(!buckets.is_empty());
    for b in buckets {
        assert!(b["min"].as_f64() <= b["avg"].as_f64() && b["avg"].as_f64() <= b["max"].as_f64());
        assert_eq!(b["start"].as_i64().unwrap() % 100_000_000, 0);
    }
    let csv = c
        .get("/v1/devices/press-1/points/oil_temperature/aggregate?from=-1m&bucket=1s&format=csv")
        .await
        .unwrap();
    assert!(
        csv.text()
            .starts_with("start,count,min,max,avg,first,last\n")
    );
    // An unknown series is an empty page, not an error.
    let empty = c
        .get("/v1/devices/press-1/points/nothing/range")
        .await
        .unwrap()
        .json();
    assert_eq!(empty["readings"], json!([]));
    assert_eq!(empty["next"], json!(null));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_400_naming_the_parameter() {
    let h = Harness::start("").await;
    let mut c = h.client(Some(WRITE)).await;
    let range = "/v1/devices/press-1/points/count/range";
    let aggregate = "/v1/devices/press-1/points/count/aggregate";
    let cases = [
        (format!("{range}?limit=abc"), "limit"),
        (format!("{range}?limit=0"), "limit"),
        (format!("{range}?limit=999999999"), "limit"),
        (format!("{range}?cursor=nope"), "cursor"),
        (format!("{range}?from=yesterday"), "from"),
        (format!("{range}?from=now&to=-1h"), "from"),
        (format!("{range}?format=xml"), "format"),
        (format!("{range}?devise=x"), "devise"),
        (format!("{range}?limit=1&limit=2"), "limit"),
        (format!("{aggregate}?bucket=0s"), "bucket"),
        (format!("{aggregate}?bucket=1ms&from=-30d"), "bucket"),
        ("/v1/latest?devices=x".to_owned(), "devices"),
        ("/v1/batches?limit=0".to_owned(), "limit"),
        ("/v1/batches/minus-one".to_owned(), "index"),
        ("/v1/proofs/x".to_owned(), "seq"),
        ("/v1/stream?dev=x".to_owned(), "dev"),
    ];
    for (path, parameter) in cases {
        let answer = c.get(&path).await.unwrap();
        assert_eq!(answer.status, 400, "{path}: {}", answer.text());
        let body = answer.json();
        assert_eq!(body["error"], "bad_parameter", "{path}");
        assert_eq!(body["parameter"], parameter, "{path}");
    }
    let write = "/v1/devices/plc-1/points/speed_setpoint/write";
    for (body, parameter) in [
        ("not json", "body"),
        ("[1]", "body"),
        ("{}", "value"),
        (r#"{"value": [1]}"#, "value"),
        (r#"{"value": 1, "verify": "yes"}"#, "verify"),
        (r#"{"value": 1, "force": true}"#, "force"),
    ] {
        let answer = c
            .request(
                axum::http::Method::POST,
                write,
                &[],
                Some(body.as_bytes().to_vec()),
            )
            .await
            .unwrap();
        assert_eq!(answer.status, 400, "{body}: {}", answer.text());
        assert_eq!(answer.json()["parameter"], parameter, "{body}");
    }
    let huge = format!(r#"{{"value": "{}"}}"#, "x".repeat(4096));
    let answer = c
        .request(
            axum::http::Method::POST,
            write,
            &[],
            Some(huge.into_bytes()),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 413, "{}", answer.text());
    assert_eq!(answer.json()["error"], "bad_body");

    let unknown = c.get("/v2/nothing").await.unwrap();
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"], "not_found");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_through_the_command_bus_and_errors_keep_their_kind() {
    let h = Harness::start("").await;
    let mut c = h.client(Some(WRITE)).await;
    let ok = c
        .post(
            "/v1/devices/plc-1/points/speed_setpoint/write",
            &json!({"value": 12.5, "verify": true}),
        )
        .await
        .unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
    let write = &ok.json()["write"];
    assert_eq!(write["raw_point"], "speed_sp_raw");
    assert_eq!(write["raw_value"], "125");
    assert_eq!(write["verified"], true);
    for (device, point, value, status, kind) in [
        ("press-1", "count", json!(1), 409, "read_only_device"),
        ("nope", "x", json!(1), 404, "unknown_device"),
        ("plc-1", "no_such_point", json!(1), 404, "unknown_point"),
        ("plc-1", "parts", json!(1), 409, "not_writable"),
        ("plc-1", "speed_setpoint", json!("fast"), 422, "bad_value"),
        ("plc-1", "speed_setpoint", json!(1e9), 422, "bad_value"),
    ] {
        let answer = c
            .post(
                &format!("/v1/devices/{device}/points/{point}/write"),
                &json!({ "value": value }),
            )
            .await
            .unwrap();
        assert_eq!(answer.status, status, "{device}/{point}: {}", answer.text());
        assert_eq!(answer.json()["error"], kind, "{device}/{point}");
    }
    let metrics = c.get("/metrics").await.unwrap().text();
    assert!(
        metrics.contains("biota_device_writes_ok_total 1"),
        "{metrics}"
    );
    h.stop().await;
}

/// Reads SSE events from a stream body until `want` `readings` events arrived.
async fn events(body: &mut hyper::body::Incoming, want: usize) -> Vec<(String, String)> {
    let mut text = String::new();
    let mut out = Vec::new();
    while out.len() < want {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("an event within 10 s")
            .expect("the stream goes on")
            .expect("a frame");
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let mut event = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = e.to_owned();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            if !event.is_empty() {
                out.push((event, data));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_sends_committed_readings_filtered_and_is_limited() {
    let h = Harness::start("").await;
    let (status, mut body) = h
        .client(Some(READ))
        .await
        .stream("/v1/stream?device=press-1&point=count")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let received = events(&mut body, 3).await;
    let mut last_seq = 0;
    let mut last_value: Option<i64> = None;
    for (event, data) in &received {
        assert_eq!(event, "readings");
        let readings: Vec<serde_json::Value> = serde_json::from_str(data).unwrap();
        for r in readings {
            assert_eq!(r["device"], "press-1");
            assert_eq!(r["point"], "count");
            let seq = r["seq"].as_u64().unwrap();
            assert!(seq > last_seq, "in seq order");
            last_seq = seq;
            let value = r["value"].as_i64().unwrap();
            if let Some(last) = last_value {
                assert_eq!(value, last + 1, "no reading of the series is skipped");
            }
            last_value = Some(value);
        }
    }
    // Committed: the store has it.
    let mut c = h.client(Some(READ)).await;
    let stored = c
        .get("/v1/devices/press-1/points/count/range?from=-1h&limit=10000")
        .await
        .unwrap()
        .json();
    assert!(
        stored["readings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["seq"] == last_seq)
    );

    // sse_max_subscribers = 2: a second fits, a third is refused.
    let (second, _body2) = h
        .client(Some(READ))
        .await
        .stream("/v1/stream")
        .await
        .unwrap();
    assert_eq!(second, 200);
    let third = c.get("/v1/stream").await.unwrap();
    assert_eq!(third.status, 503);
    assert_eq!(third.json()["error"], "too_many_streams");
    // Shutdown ends open streams instead of waiting for them.
    h.stop().await;
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
    assert!(end.is_ok(), "the stream ended with the gateway");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text_and_can_require_a_token() {
    let h = Harness::start("").await;
    let mut c = h.client(None).await;
    let metrics = c.get("/metrics").await.unwrap();
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = metrics.text();
    for family in [
        "biota_readings_committed_total",
        "biota_samples_rejected_total{source=\"normalizer\",reason=\"non_finite\"} 0",
        "biota_commit_duration_seconds_bucket{le=\"+Inf\"}",
        "biota_commit_duration_seconds_count",
        "biota_queue_depth{queue=\"writer\"}",
        "biota_device_requests_total{device=\"plc-1\"}",
        "biota_device_poll_latency_seconds{device=\"plc-1\"}",
        "biota_device_readings_committed_total{device=\"press-1\"}",
        "biota_store_size_bytes",
        "biota_process_resident_memory_bytes",
    ] {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }
    // Every sample line is `name{labels} value` with a number.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
    assert!(
        text.contains("biota_anchoring_lag_seq") && text.contains("biota_anchoring_lag_seconds"),
        "sealing runs by default"
    );
    h.stop().await;

    let h = Harness::start("metrics_public = false").await;
    let denied = h.client(None).await.get("/metrics").await.unwrap();
    assert_eq!(denied.status, 401);
    let allowed = h.client(Some(READ)).await.get("/metrics").await.unwrap();
    assert_eq!(allowed.status, 200);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_and_proof_bundles_are_served() {
    let h = Harness::start("[anchor]\nbatch_max_readings = 100\nbatch_max_age = \"200ms\"").await;
    let mut c = h.client(Some(READ)).await;
    let mut batches = Vec::new();
    for _ in 0..200 {
        let answer = c.get("/v1/batches").await.unwrap();
        assert_eq!(answer.status, 200);
        batches = answer.json()["batches"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if batches.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(batches.len() >= 3, "batches are sealed");
    // Newest first, chained, each as /v1/batches/{index} gives it.
    for pair in batches.windows(2) {
        assert_eq!(
            pair[0]["index"].as_u64().unwrap(),
            pair[1]["index"].as_u64().unwrap() + 1
        );
        assert_eq!(pair[0]["prev_hash"], pair[1]["hash"]);
    }
    let newest = &batches[0];
    let index = newest["index"].as_u64().unwrap();
    let one = c.get(&format!("/v1/batches/{index}")).await.unwrap();
    assert_eq!(one.status, 200);
    assert_eq!(&one.json(), newest);
    let page = c
        .get(&format!("/v1/batches?before={index}&limit=1"))
        .await
        .unwrap();
    assert_eq!(page.json()["batches"][0]["index"], index - 1);
    let missing = c.get("/v1/batches/0").await.unwrap();
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"], json!("not_found"));
    // A proof bundle of a sealed reading checks offline, as `verify` does.
    let seq = newest["first_seq"].as_u64().unwrap() + 1;
    let answer = c.get(&format!("/v1/proofs/{seq}")).await.unwrap();
    assert_eq!(answer.status, 200);
    let bundle: biota_gateway::anchor::proof::ProofBundle =
        serde_json::from_value(answer.json()).unwrap();
    assert_eq!(bundle.reading.seq, seq);
    let checks = biota_gateway::anchor::proof::check_offline(&bundle);
    assert!(checks.iter().all(|c| c.ok), "{checks:?}");
    let unsealed = c.get("/v1/proofs/999999999").await.unwrap();
    assert_eq!(unsealed.status, 404);
    let status = c.get("/v1/status").await.unwrap().json();
    assert!(status["anchoring"]["batches"].as_u64().unwrap() >= 3);
    assert!(status["anchoring"]["lag_seq"].is_u64());
    assert_eq!(
        h.client(None)
            .await
            .get("/v1/batches")
            .await
            .unwrap()
            .status,
        401
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anchoring_routes_say_when_sealing_is_off() {
    let h = Harness::start("[anchor]\nenabled = false").await;
    let mut c = h.client(Some(READ)).await;
    for path in ["/v1/batches", "/v1/batches/1", "/v1/proofs/1"] {
        let answer = c.get(path).await.unwrap();
        assert_eq!(answer.status, 503, "{path}");
        assert_eq!(answer.json()["error"], "anchoring_disabled");
    }
    h.stop().await;
}

#[test]
fn plain_http_on_the_network_needs_tls_or_an_explicit_opt_in() {
    let load = |api: &str| GatewayConfig::from_toml(Path::new("t.toml"), &format!("[api]\n{api}"));
    let refused = load("listen = \"0.0.0.0:8080\"").unwrap_err().to_string();
    assert!(refused.contains("api.listen"), "{refused}");
    assert!(refused.contains("insecure_listen"), "{refused}");
    load("listen = \"0.0.0.0:8080\"\ninsecure_listen = true").expect("explicit opt-in");
    load("listen = \"[::1]:8080\"").expect("loopback");
    let bad = load("tokens = [{ name = \"x\", scopes = [], sha256 = \"00\" }]")
        .unwrap_err()
        .to_string();
    assert!(bad.contains("api.tokens[0]"), "{bad}");
    let bad = load("sse_max_subscribers = 100000")
        .unwrap_err()
        .to_string();
    assert!(bad.contains("api.sse_max_subscribers"), "{bad}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_fails_the_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = GatewayConfig::from_toml(
        Path::new("t.toml"),
        &format!("[api]\nlisten = \"{}\"", taken.local_addr().unwrap()),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("gateway.db");
    let shutdown = CancellationToken::new();
    let err = match Gateway::start(&config, &Paths::for_db(&db), shutdown.clone()).await {
        Ok(_) => panic!("a taken API port must fail the start"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("cannot listen"), "{err}");
}
