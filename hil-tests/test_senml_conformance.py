"""SenML (RFC 8428) names and times, the same over MQTT and CoAP, in SenML
JSON and SenML CBOR: paho-mqtt publishes (QoS 1) into the embedded broker,
libcoap's `coap-client-notls` POSTs (confirmable, so a 2.04 means the
readings are committed), the CBOR is made by Python's cbor2. One gateway
serves the whole module; every test uses its own devices.

Names (issue #14). RFC 8428 §4.5.1: "The Name value is concatenated to
the Base Name value to yield the name of the sensor. The resulting
concatenated name needs to uniquely identify and differentiate the sensor
from all others." §4.6 resolves a record the same way (Name and Base Name
are concatenated). The rule these tests hold the gateway to:

- When the topic or path names the device ({device} capture, a rule's or
  resource's `device`), the point is the record's resolved name, bn + n,
  unchanged. Records whose resolved names differ never share a series;
  records whose resolved names are equal do (they are the same sensor).
- When nothing but the pack names the device, the device is the base name
  without its trailing separator and the point is n (as documented, and
  unchanged: covered here as a control).

Times (issue #15). RFC 8428 §4.5.3: "Values greater than or equal to
2**28 represent an absolute time relative to the Unix epoch. Values less
than 2**28 represent time relative to the current time", "A negative
value indicates seconds in the past from roughly 'now'", and the time of a
record is Base Time + Time. So every resolved time below 2^28, however
negative, is relative to the time the gateway received the pack. The
gateway already replaces an implausible device time (before 2000, or more
than 24 h ahead: docs/cdm.md) with the ingest time and lowers the quality
to `uncertain`; a time that is not a usable instant at all (1e300, -1e300,
beyond the int64 nanosecond range, NaN, infinity) is at least as
implausible and must be treated exactly that way, never stored as a good
reading at ingest time as if the device had sent no time.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import cbor2
import paho.mqtt.client as mqtt
import pytest

from conftest import Gateway, assert_no_panic, run_cli, run_query
from test_coap import free_udp_port
from test_modbus_tcp import free_port, wait_until

NS = 1_000_000_000
TWO_28 = 268_435_456
DAY_S = 86_400

# RFC 8428 table 4: SenML CBOR labels.
CBOR_LABELS = {"bver": -1, "bn": -2, "bt": -3, "bu": -4, "bv": -5, "bs": -6,
               "n": 0, "u": 1, "v": 2, "vs": 3, "vb": 4, "s": 5, "t": 6, "ut": 7}

# How a pack reaches the gateway, and how the device is named.
#   mqtt-topic: topic "senml/{device}" (a capture names the device)
#   mqtt-rule:  topic "fixed/<device>", a rule with `device = "<device>"`
#   coap-json, coap-cbor: POST /v1/devices/{device}, Content-Format 110 / 112
NAMING_TRANSPORTS = ["mqtt-topic", "mqtt-rule", "coap-json", "coap-cbor"]
TIME_TRANSPORTS = ["mqtt-topic", "coap-json", "coap-cbor"]
MARKER = "zz_marker"
SHORT = {"mqtt-topic": "mt", "mqtt-rule": "mr", "coap-json": "cj", "coap-cbor": "cc"}

# Tests that send to a device named by an MQTT rule's `device` key: the
# configuration has one rule per device.
NAMING_TESTS = ["collide", "resolved", "same"]


def device_for(test: str, transport: str) -> str:
    return f"{test}-{SHORT[transport]}"


def gateway_config(mqtt_port: int, coap_port: int) -> str:
    fixed = "".join(
        f'\n[[drivers.mqtt.rules]]\ntopic = "fixed/{d}"\nformat = "senml"\ndevice = "{d}"\n'
        for d in (device_for(t, "mqtt-rule") for t in NAMING_TESTS)
    )
    return f"""
[store]
commit_max_delay = "20ms"

[store.retention]
max_size = "off"

[drivers.mqtt.broker]
listen = "127.0.0.1:{mqtt_port}"
{fixed}
[[drivers.mqtt.rules]]
topic = "senml/{{device}}"
format = "senml"

[[drivers.mqtt.rules]]
topic = "anon/#"
format = "senml"

[drivers.coap]
listen = ["127.0.0.1:{coap_port}"]

[[drivers.coap.resources]]
path = "/v1/devices/{{device}}"

[[drivers.coap.resources]]
path = "/v1/packs"
"""


@dataclass
class Peer:
    binary: Path
    gw: Gateway
    db: Path
    state_dir: Path
    mqtt_port: int
    coap_port: int
    client: mqtt.Client
    work: Path
    sent: int = 0

    # -- sending -------------------------------------------------------------

    def publish(self, topic: str, pack: list[dict]) -> None:
        info = self.client.publish(topic, json.dumps(pack), qos=1)
        info.wait_for_publish(timeout=20)
        assert info.is_published(), f"the broker did not acknowledge {topic}"

    def coap_post(self, path: str, payload: bytes, fmt: int) -> str:
        """A confirmable POST; returns the answer (payload of a 2.04, else
        the error code libcoap prints)."""
        self.sent += 1
        body = self.work / f"pack-{self.sent}.bin"
        body.write_bytes(payload)
        out = subprocess.run(
            ["coap-client-notls", "-m", "post", "-t", str(fmt), "-f", str(body),
             f"coap://127.0.0.1:{self.coap_port}{path}"],
            capture_output=True, text=True, timeout=60,
        )
        return (out.stdout + out.stderr).strip()

    def send(self, transport: str, device: str, pack: list[dict]) -> str:
        """Sends a pack for `device`; returns the CoAP answer ("" for MQTT)."""
        if transport == "mqtt-topic":
            self.publish(f"senml/{device}", pack)
            return ""
        if transport == "mqtt-rule":
            self.publish(f"fixed/{device}", pack)
            return ""
        if transport == "coap-json":
            return self.coap_post(f"/v1/devices/{device}", json.dumps(pack).encode(), 110)
        if transport == "coap-cbor":
            return self.coap_post(f"/v1/devices/{device}", to_cbor(pack), 112)
        raise AssertionError(transport)

    # -- reading -------------------------------------------------------------

    def latest(self, device: str) -> dict[str, dict]:
        out = run_query(self.binary, self.db, "latest", "--device", device)
        return {r["point"]: r for r in json.loads(out.stdout)}

    def series(self, device: str, point: str) -> list[dict]:
        out = run_query(self.binary, self.db, "range", "--device", device, "--point", point,
                        "--from", "0", "--to", str(2**63 - 1), "--limit", "1000")
        return json.loads(out.stdout)

    def settle(self, transport: str, device: str) -> dict[str, dict]:
        """The device's latest readings once everything sent for it is
        stored, without the marker. A CoAP 2.04 already means committed; an
        MQTT PUBACK comes from the broker, so a marker pack follows on the
        same topic and connection (the driver, the normalizer and the writer
        keep their order) and is waited for."""
        if transport.startswith("mqtt"):
            self.sent += 1
            marker = self.sent
            topic = f"senml/{device}" if transport == "mqtt-topic" else f"fixed/{device}"
            self.publish(topic, [{"n": MARKER, "v": marker}])
            wait_until(
                lambda: self.latest(device).get(MARKER, {}).get("value") == float(marker),
                timeout=30,
                what=f"the marker pack on {topic}",
            )
        rows = self.latest(device)
        rows.pop(MARKER, None)
        return rows


def to_cbor(pack: list[dict]) -> bytes:
    """A SenML JSON pack as SenML CBOR (RFC 8428 §6), numbers as given."""
    return cbor2.dumps([{CBOR_LABELS[k]: v for k, v in record.items()} for record in pack])


@pytest.fixture(scope="module")
def peer(gateway_bin, tmp_path_factory):
    work = tmp_path_factory.mktemp("senml")
    state_dir = work / "state"
    state_dir.mkdir()
    mqtt_port, coap_port = free_port(), free_udp_port()
    config = work / "gateway.toml"
    config.write_text(gateway_config(mqtt_port, coap_port))
    check = run_cli(gateway_bin, "check-config", str(config))
    assert check.returncode == 0, check.stderr
    gw = Gateway(gateway_bin, config, state_dir, log_dir=work)
    client = None
    try:
        gw.wait_ready(timeout=60)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="senml-conformance")
        client.connect("127.0.0.1", mqtt_port)
        client.loop_start()
        yield Peer(gateway_bin, gw, state_dir / "gateway.db", state_dir, mqtt_port, coap_port, client, work)
        assert gw.alive(), f"the gateway died:\n{gw.stderr()}"
        assert_no_panic(gw.stderr())
    finally:
        if client is not None:
            client.loop_stop()
            client.disconnect()
        gw.kill()


def values(rows: dict[str, dict]) -> dict[str, object]:
    return {point: r["value"] for point, r in rows.items()}


# ---------------------------------------------------------------------------
# Names (#14)
# ---------------------------------------------------------------------------

TWO_SENSORS = [{"bn": "s1:", "n": "temp", "v": 1}, {"bn": "s2:", "n": "temp", "v": 2}]


@pytest.mark.parametrize("transport", NAMING_TRANSPORTS)
def test_records_whose_resolved_names_differ_never_share_a_series(peer, transport):
    """The issue as reported: two sensors of one device, told apart only by
    their base names, must not be merged into one series `temp`."""
    device = device_for("collide", transport)
    answer = peer.send(transport, device, TWO_SENSORS)
    if transport.startswith("coap"):
        assert "stored 2" in answer, answer
    rows = peer.settle(transport, device)
    assert values(rows) == {"s1:temp": 1.0, "s2:temp": 2.0}, (
        f"the point must be the resolved name bn + n (RFC 8428 §4.5.1): s1:temp and s2:temp "
        f"are two sensors; stored series of {device}: {values(rows)}"
    )
    for point in ("s1:temp", "s2:temp"):
        history = peer.series(device, point)
        assert [r["value"] for r in history] == [float(point[1])], (point, history)
        assert history[0]["quality"] == "good"


RESOLVED = [
    # A base name applies to later records until the next one (§4.5.1, §4.6);
    # a base unit too.
    {"bn": "urn:dev:ow:10e2073a01080063:", "bu": "A", "n": "voltage", "u": "V", "v": 120.1},
    {"n": "current", "v": 1.2},
    # An empty base name ends it.
    {"bn": "", "n": "plain", "v": 3},
    # A record without n is named by its base name alone.
    {"bn": "whole/name", "vb": True},
]


@pytest.mark.parametrize("transport", NAMING_TRANSPORTS)
def test_the_point_is_the_resolved_name_bn_plus_n(peer, transport):
    device = device_for("resolved", transport)
    answer = peer.send(transport, device, RESOLVED)
    if transport.startswith("coap"):
        assert "stored 4" in answer, answer
    rows = peer.settle(transport, device)
    assert values(rows) == {
        "urn:dev:ow:10e2073a01080063:voltage": 120.1,
        "urn:dev:ow:10e2073a01080063:current": 1.2,
        "plain": 3.0,
        "whole/name": True,
    }, f"points must be the resolved names (bn + n); stored: {values(rows)}"
    assert rows["urn:dev:ow:10e2073a01080063:voltage"]["unit"] == "V"
    assert rows["urn:dev:ow:10e2073a01080063:current"]["unit"] == "A"


# "a:" + "b:c" and "a:b:" + "c" both resolve to "a:b:c": one sensor.
SAME_SENSOR = [{"bn": "a:", "n": "b:c", "v": 1}, {"bn": "a:b:", "n": "c", "v": 2}]


@pytest.mark.parametrize("transport", NAMING_TRANSPORTS)
def test_records_with_equal_resolved_names_are_one_series(peer, transport):
    device = device_for("same", transport)
    answer = peer.send(transport, device, SAME_SENSOR)
    if transport.startswith("coap"):
        assert "stored 2" in answer, answer
    rows = peer.settle(transport, device)
    assert set(rows) == {"a:b:c"}, f"both records are the sensor a:b:c; stored series: {values(rows)}"
    assert [r["value"] for r in peer.series(device, "a:b:c")] == [1.0, 2.0]


@pytest.mark.parametrize("transport", ["mqtt", "coap-json", "coap-cbor"])
def test_control_without_a_device_in_topic_or_path_the_base_name_names_it(peer, transport):
    """Unchanged rule (passes today): when only the pack names the device,
    the device is the base name without its trailing separator and the
    point is n, so the two sensors are two devices."""
    tag = SHORT.get(transport, "m")
    pack = [{"bn": f"anon-{tag}-s1:", "n": "temp", "v": 1}, {"bn": f"anon-{tag}-s2:", "n": "temp", "v": 2}]
    if transport == "mqtt":
        peer.publish("anon/pack", pack)
    else:
        payload = json.dumps(pack).encode() if transport == "coap-json" else to_cbor(pack)
        answer = peer.coap_post("/v1/packs", payload, 110 if transport == "coap-json" else 112)
        assert "stored 2" in answer, answer
    for sensor, value in ((1, 1.0), (2, 2.0)):
        rows = wait_until(lambda: peer.latest(f"anon-{tag}-s{sensor}"), 30, f"device anon-{tag}-s{sensor}")
        assert values(rows) == {"temp": value}


# ---------------------------------------------------------------------------
# Times (#15)
# ---------------------------------------------------------------------------

# What a record's stored time must be:
#   ("at", ns)          exactly the device's absolute time, quality good
#   ("relative", s)     the ingest time + s seconds, quality good
#   ("fallback",)       the ingest time, quality uncertain (an implausible time)


@dataclass(frozen=True)
class TimeCase:
    point: str
    record: dict  # the record's time fields (t, bt)
    expect: tuple
    why: str


def time_cases(now_s: int) -> list[TimeCase]:
    """Cases every encoding can carry (cbor2 encodes these numbers as they
    are: integers as CBOR integers, floats as floats)."""
    return [
        TimeCase("now", {}, ("relative", 0), "no time: now (control)"),
        TimeCase("absolute", {"t": 1_700_000_000}, ("at", 1_700_000_000 * NS), "absolute time (control)"),
        TimeCase("rel_60", {"t": -60}, ("relative", -60), "t = -60 is 60 s before now (control)"),
        TimeCase("rel_future", {"t": TWO_28 - 1}, ("fallback",),
                 "2^28 - 1 is relative: 8.5 years ahead, implausible (control)"),
        TimeCase("future_2d", {"t": now_s + 2 * DAY_S}, ("fallback",), "now + 2 days (control)"),
        TimeCase("y1990", {"t": 631_152_000}, ("fallback",), "1990-01-01 (control)"),
        TimeCase("rel_minus_2p28", {"t": -TWO_28}, ("relative", -TWO_28),
                 "-2^28 is below 2^28, so relative (§4.5.3: negative values are seconds before now): "
                 "about 8.5 years ago, a plausible time"),
        TimeCase("huge", {"t": 1e300}, ("fallback",), "t = 1e300 is no plausible time"),
        TimeCase("neg_huge", {"t": -1e300}, ("fallback",), "t = -1e300 is no plausible time"),
        TimeCase("ns_overflow", {"t": 9_223_372_037}, ("fallback",),
                 "9223372037 s is past 2^63 ns (year 2262): not representable, implausible"),
        TimeCase("u64_max", {"t": 2**64 - 1}, ("fallback",), "t = 2^64 - 1 overflows int64 ns"),
        TimeCase("i64_min", {"t": -(2**63)}, ("fallback",), "t = -2^63: relative, and 2^63 s before now overflows"),
        # bt applies to later records: the last one.
        TimeCase("bt_overflow", {"bt": 9_000_000_000, "t": 300_000_000}, ("fallback",),
                 "bt + t = 9.3e9 s is past 2^63 ns"),
    ]


# Only SenML CBOR can carry NaN and infinities (JSON has no such numbers);
# -2^64 is a CBOR negative integer (major type 1) an int64 does not hold.
CBOR_ONLY_CASES = [
    TimeCase("nan", {"t": float("nan")}, ("fallback",), "t = NaN is no time"),
    TimeCase("inf", {"t": float("inf")}, ("fallback",), "t = +Infinity is no time"),
    TimeCase("neg_inf", {"t": float("-inf")}, ("fallback",), "t = -Infinity is no time"),
]
BEYOND_INT64_CASES = [
    TimeCase("neg_2p64", {"t": -(2**64)}, ("fallback",), "t = -2^64: relative, overflows"),
]


@dataclass
class Sent:
    before_ns: int
    after_ns: int
    answers: dict[str, str]  # point -> the answer to the pack that carried it (CoAP)
    values: dict[str, float]  # point -> the value its record carried
    rows: dict[str, dict]
    cases: dict[str, TimeCase]


@pytest.fixture(scope="module")
def sent_times(peer):
    """Per transport, once: one pack of the main cases, then each case
    beyond them in a pack of its own (so one such record cannot cost the
    others their answer), with the ingest window around it all."""
    cache: dict[str, Sent] = {}

    def send(transport: str) -> Sent:
        if transport in cache:
            return cache[transport]
        device = f"clock-{SHORT[transport]}"
        main = time_cases(int(time.time()))
        extra = BEYOND_INT64_CASES + (CBOR_ONLY_CASES if transport == "coap-cbor" else [])
        answers, numbers = {}, {}
        before = time.time_ns()
        pack = [{"n": c.point, "v": i + 1, **c.record} for i, c in enumerate(main)]
        answer = peer.send(transport, device, pack)
        for i, c in enumerate(main):
            answers[c.point], numbers[c.point] = answer, float(i + 1)
        for i, c in enumerate(extra):
            answers[c.point] = peer.send(transport, device, [{"n": c.point, "v": 100 + i, **c.record}])
            numbers[c.point] = float(100 + i)
        rows = peer.settle(transport, device)
        after = time.time_ns()
        cache[transport] = Sent(before, after, answers, numbers, rows, {c.point: c for c in main + extra})
        return cache[transport]

    return send


def all_cases(transport: str) -> list[str]:
    names = [c.point for c in time_cases(0)] + [c.point for c in BEYOND_INT64_CASES]
    if transport == "coap-cbor":
        names += [c.point for c in CBOR_ONLY_CASES]
    return names


@pytest.mark.parametrize(
    "transport,point",
    [(t, p) for t in TIME_TRANSPORTS for p in all_cases(t)],
)
def test_senml_time(sent_times, transport, point):
    """One record's time, stored as RFC 8428 §4.5.3 and docs/cdm.md say."""
    sent = sent_times(transport)
    case = sent.cases[point]
    row = sent.rows.get(point)
    assert row is not None, (
        f"{point} ({case.why}) was not stored; the gateway answered its pack: "
        f"{sent.answers[point]!r}; stored points: {sorted(sent.rows)}"
    )
    assert row["value"] == sent.values[point], row
    window = f"ingest window [{sent.before_ns}, {sent.after_ns}]"
    kind = case.expect[0]
    if kind == "at":
        assert (row["ts"], row["quality"]) == (case.expect[1], "good"), (case.why, row)
    elif kind == "relative":
        offset = case.expect[1] * NS
        assert sent.before_ns <= row["ts"] - offset <= sent.after_ns and row["quality"] == "good", (
            f"{case.why}: expected the ingest time {case.expect[1]:+} s and quality good, "
            f"got ts {row['ts']} ({row['time']}), quality {row['quality']}; {window}"
        )
    else:
        assert sent.before_ns <= row["ts"] <= sent.after_ns and row["quality"] == "uncertain", (
            f"{case.why}: an implausible time must be replaced by the ingest time with quality "
            f"uncertain (as for 1990 and now + 2 days), got ts {row['ts']} ({row['time']}), "
            f"quality {row['quality']}; {window}"
        )
