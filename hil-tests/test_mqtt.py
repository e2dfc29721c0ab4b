"""MQTT ingest: devices publish with `mosquitto_pub` (Mosquitto's client) and
paho-mqtt into the gateway's embedded broker, in every payload format the
rules decode (plain, JSON flat and by pointer, SenML); the stored readings
must be the published values, with the payload's timestamps and units.

Bad input (malformed JSON and SenML, nested values, a message over the
size limit, topics no rule matches) is counted per topic and reason,
the broker and the gateway stay up, and good messages after it are stored.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from conftest import run_cli, run_query
from test_modbus_tcp import free_port, wait_until

T0_MS = 1_700_000_000_123


def gateway_config(port: int) -> str:
    return f"""
[store]
commit_max_delay = "20ms"

[profiles.meter.points.power]
unit = "kW"
scale = 0.001

[drivers.mqtt.broker]
listen = "127.0.0.1:{port}"
max_payload = 4096

[[drivers.mqtt.rules]]
topic = "plant/{{device}}/telemetry/{{point}}"
format = "plain"

[[drivers.mqtt.rules]]
topic = "plant/{{device}}/json"
format = "json"
timestamp = "/ts"
timestamp_unit = "ms"
profile = "meter"

[[drivers.mqtt.rules]]
topic = "lab/{{device}}/state"
format = "json"
points = {{ temp = "/sensors/0/t", door = "/door/open" }}

[[drivers.mqtt.rules]]
topic = "senml/#"
format = "senml"

[[drivers.mqtt.rules]]
topic = "line/press-7/pack"
format = "senml"
device = "press-7"
"""


def pub(port: int, topic: str, payload: str | bytes, *extra: str) -> subprocess.CompletedProcess:
    cmd = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", topic, *extra]
    if isinstance(payload, bytes):
        return subprocess.run(cmd + ["-s"], input=payload, capture_output=True, timeout=30)
    return subprocess.run(cmd + ["-m", payload], capture_output=True, text=True, timeout=30)


def latest(binary: Path, db: Path, device: str) -> dict[str, dict]:
    out = run_query(binary, db, "latest", "--device", device)
    return {r["point"]: r for r in json.loads(out.stdout)}


def status(binary: Path, state_dir: Path) -> dict:
    out = run_cli(binary, "devices", "--state-dir", str(state_dir), "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def checked_gateway(gateway_bin, spawn, write_config, state_dir, text: str):
    """The body of a gateway fixture: a config `check-config` accepts, the
    gateway ready on it; afterwards it must still run and stop cleanly."""
    config = write_config(text)
    check = run_cli(gateway_bin, "check-config", str(config))
    assert check.returncode == 0, check.stderr
    gw = spawn(gateway_bin, config, state_dir)
    gw.wait_ready(timeout=30)
    yield gw
    assert gw.alive(), gw.stderr()
    assert gw.stop() == 0


@pytest.fixture
def gateway(gateway_bin, spawn, write_config, state_dir):
    port = free_port()
    for gw in checked_gateway(gateway_bin, spawn, write_config, state_dir, gateway_config(port)):
        yield gw, port, state_dir / "gateway.db"


def test_every_payload_format_from_mosquitto_pub_and_paho(gateway_bin, gateway, state_dir):
    gw, port, db = gateway
    # READY means the broker listens: the first publish succeeds.
    assert pub(port, "plant/pump-1/telemetry/speed", "1450").returncode == 0
    pub(port, "plant/pump-1/telemetry/running", "true")
    pub(port, "plant/pump-1/telemetry/mode", "AUTO")
    pub(port, "plant/pump-1/telemetry/flow", "-12.75")
    pub(port, "plant/meter-3/json", json.dumps({"ts": T0_MS, "power": 4200, "on": True}))
    pub(port, "lab/oven-2/state", json.dumps({"sensors": [{"t": 181.5}], "door": {"open": False}, "x": 1}))
    senml = [
        {"bn": "urn:dev:mac:0024befffe804ff1:", "bt": 1_700_000_100, "bu": "Cel", "n": "temp", "v": 23.5},
        {"n": "humidity", "u": "%RH", "v": 41, "t": 1},
        {"n": "label", "vs": "north wall"},
    ]
    pub(port, "senml/room-1", json.dumps(senml))

    # paho-mqtt, QoS 1, acknowledged by the broker.
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-test")
    client.connect("127.0.0.1", port)
    client.loop_start()
    pack = [{"bn": "", "bt": 1_700_000_200, "n": "force", "u": "kN", "v": 812.25}, {"n": "strokes", "s": 1042}]
    for topic, payload in [
        ("line/press-7/pack", json.dumps(pack)),
        ("plant/pump-2/telemetry/speed", "990"),
        ("plant/meter-4/json", json.dumps({"ts": T0_MS + 1, "power": 1500})),
    ]:
        info = client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=10)
        assert info.is_published()
    client.loop_stop()
    client.disconnect()

    pump = wait_until(
        lambda: (r := latest(gateway_bin, db, "pump-1")) and len(r) == 4 and r,
        timeout=10,
        what="pump-1's four points",
    )
    assert pump["speed"]["value"] == 1450 and pump["speed"]["kind"] == "i64"
    assert pump["running"]["value"] is True
    assert pump["mode"]["value"] == "AUTO"
    assert pump["flow"]["value"] == -12.75
    assert pump["speed"]["source"] == f"mqtt://127.0.0.1:{port}/plant/pump-1/telemetry/speed"
    assert pump["speed"]["quality"] == "good"

    meter = wait_until(lambda: latest(gateway_bin, db, "meter-3"), 10, "meter-3")
    # The payload's own timestamp (ms), the profile's scale and unit.
    assert meter["power"]["ts"] == T0_MS * 1_000_000
    assert meter["power"]["value"] == 4.2 and meter["power"]["unit"] == "kW"
    assert meter["on"]["value"] is True and "ts" not in meter

    oven = wait_until(lambda: latest(gateway_bin, db, "oven-2"), 10, "oven-2")
    assert set(oven) == {"temp", "door"}
    assert oven["temp"]["value"] == 181.5 and oven["door"]["value"] is False

    room = wait_until(
        lambda: (r := latest(gateway_bin, db, "urn:dev:mac:0024befffe804ff1")) and len(r) == 3 and r,
        10,
        "the SenML device named by its base name",
    )
    assert room["temp"]["value"] == 23.5 and room["temp"]["unit"] == "Cel"
    assert room["temp"]["ts"] == 1_700_000_100 * 1_000_000_000
    assert room["humidity"]["unit"] == "%RH" and room["humidity"]["ts"] == 1_700_000_101 * 1_000_000_000
    assert room["label"]["value"] == "north wall"

    press = wait_until(lambda: latest(gateway_bin, db, "press-7"), 10, "press-7 (fixed device)")
    assert press["force"]["value"] == 812.25 and press["force"]["unit"] == "kN"
    assert press["strokes"]["value"] == 1042.0
    assert wait_until(lambda: latest(gateway_bin, db, "pump-2"), 10, "pump-2")["speed"]["value"] == 990
    meter4 = wait_until(lambda: latest(gateway_bin, db, "meter-4"), 10, "meter-4 (JSON from paho)")
    assert meter4["power"]["value"] == 1.5 and meter4["power"]["ts"] == (T0_MS + 1) * 1_000_000

    mq = status(gateway_bin, state_dir)["mqtt"]
    assert mq["messages"] == 10 and mq["unmatched"] == 0 and mq["rejected"] == [], mq


def test_bad_input_is_counted_and_nothing_stops(gateway_bin, gateway, state_dir):
    gw, port, db = gateway
    bad = [
        ("plant/meter-9/json", "{not json"),
        ("plant/meter-9/json", json.dumps({"power": 1})),  # no timestamp
        ("plant/meter-9/json", json.dumps({"ts": "yesterday", "power": 1})),
        ("plant/meter-9/json", json.dumps({"ts": T0_MS, "nested": {"a": 1}, "power": 5})),
        ("senml/room-9", json.dumps({"n": "x"})),
        ("senml/room-9", json.dumps([{"n": "x"}, {"bn": "room-9:", "n": "t", "v": 1}])),
        ("plant/pump-9/telemetry/speed", ""),
        ("nobody/listens/here", "1"),
        ("lab/oven-9/state", json.dumps({"door": {"open": True}})),
    ]
    for topic, payload in bad:
        assert pub(port, topic, payload).returncode == 0, topic
    # Over max_payload (4096): the broker drops the client, not the gateway.
    pub(port, "plant/pump-9/telemetry/blob", b"x" * 10_000)
    assert gw.alive()
    # Good data still flows.
    pub(port, "plant/pump-9/telemetry/speed", "7")
    assert wait_until(lambda: latest(gateway_bin, db, "pump-9"), 10, "pump-9")["speed"]["value"] == 7

    mq = status(gateway_bin, state_dir)["mqtt"]
    counts = {(r["topic"], r["reason"]): r["count"] for r in mq["rejected"]}
    assert counts[("plant/meter-9/json", "malformed_json")] == 1
    assert counts[("plant/meter-9/json", "no_timestamp")] == 1
    assert counts[("plant/meter-9/json", "bad_timestamp")] == 1
    assert counts[("plant/meter-9/json", "unsupported_value")] == 1
    assert counts[("senml/room-9", "malformed_senml")] == 2
    assert counts[("plant/pump-9/telemetry/speed", "empty")] == 1
    assert counts[("lab/oven-9/state", "missing_point")] == 1
    assert mq["unmatched"] == 1 and counts[("nobody/listens/here", "no_rule")] == 1
    # The good members of partly bad payloads were kept.
    assert latest(gateway_bin, db, "meter-9")["power"]["value"] == 5 / 1000
    assert latest(gateway_bin, db, "room-9")["t"]["value"] == 1.0
    assert latest(gateway_bin, db, "oven-9")["door"]["value"] is True
    # The oversized message never reached the rules.
    assert "blob" not in latest(gateway_bin, db, "pump-9")
    assert "MQTT message rejected" in gw.stderr()


def test_a_json_timestamp_that_is_no_instant_is_uncertain_at_ingest_time(gateway_bin, gateway):
    """A numeric timestamp past int64 nanoseconds (1e300 ms) is a number,
    so not `bad_timestamp`, but no instant either: like an implausible
    device clock (docs/cdm.md) it gives the ingest time and quality
    uncertain (issue #14, item 15: the JSON decoder had dropped the whole
    payload as `bad_timestamp`)."""
    gw, port, db = gateway
    before = time.time_ns()
    assert pub(port, "plant/meter-8/json", json.dumps({"ts": 1e300, "power": 2000})).returncode == 0
    rows = wait_until(lambda: latest(gateway_bin, db, "meter-8"), 10, "meter-8")
    after = time.time_ns()
    power = rows["power"]
    assert power["value"] == 2.0 and power["unit"] == "kW", power
    assert before <= power["ts"] <= after and power["quality"] == "uncertain", power


def test_a_taken_port_fails_the_start_with_a_clear_error(gateway_bin, spawn, write_config, state_dir):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        gw = spawn(gateway_bin, write_config(gateway_config(port)), state_dir)
        code = gw.wait_exit(timeout=30)
    assert code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in gw.stderr()


def test_users_and_the_connection_limit(gateway_bin, spawn, write_config, state_dir):
    port = free_port()
    text = gateway_config(port).replace(
        "max_payload = 4096", 'max_payload = 4096\nmax_connections = 2\nusers = { dev = "s3cret" }'
    )
    gw = spawn(gateway_bin, write_config(text), state_dir)
    gw.wait_ready(timeout=30)
    db = state_dir / "gateway.db"
    # No login, a wrong password: refused; the right one: stored.
    assert pub(port, "plant/a-1/telemetry/x", "1").returncode != 0
    assert pub(port, "plant/a-1/telemetry/x", "2", "-u", "dev", "-P", "nope").returncode != 0
    assert pub(port, "plant/a-1/telemetry/x", "3", "-u", "dev", "-P", "s3cret").returncode == 0
    assert wait_until(lambda: latest(gateway_bin, db, "a-1"), 10, "a-1")["x"]["value"] == 3

    # Two clients may stay connected; a third is not served.
    clients = []
    for i in range(3):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"limit-{i}")
        c.username_pw_set("dev", "s3cret")
        c.connect("127.0.0.1", port)
        c.loop_start()
        clients.append(c)
    time.sleep(1)
    connected = [c.is_connected() for c in clients]
    for c in clients:
        c.loop_stop()
        c.disconnect()
    assert connected.count(True) == 2, connected
    assert gw.alive()
    assert gw.stop() == 0
