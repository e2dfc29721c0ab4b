"""Sparkplug B deaths mark every point of the device bad (issue #16).

An edge node built with Eclipse Tahu's Python core (shipped unmodified by
the `tahutils` package) publishes through paho-mqtt into the gateway's
embedded broker, with its NDEATH as the MQTT will, as in
test_mqtt_sparkplug.py.

docs/drivers/mqtt.md: "NDEATH and DDEATH. Every metric of the node and all
its devices (NDEATH), or of the device (DDEATH), gets one more reading: its
last value, with quality `bad`, at the time the death arrives." The last
value a death re-stamps is the point's last STORED value: what the store
(and every reader of it) holds as the point's current reading. A value
the gateway rejected (a UInt64 above i64::MAX: `out_of_range`; a NaN:
`non_finite`; a value a profile cannot convert) was never stored, so it is
not the last value; re-sending it at the death only makes it rejected (and
counted) again while the point keeps a `good` reading of a dead device.

What these tests require, after a birth stored a value and later data
carried a value the gateway rejected:
- the death stores one reading per such point: the last stored value
  (same kind, same unit), quality `bad`, stamped with the time the death
  arrived;
- a point that never had a value stored gets no reading from the death;
- the death adds nothing to the rejection counters (the device sent one
  bad value, and it was counted once).

Ordering: a message published after the death on the same connection (a
marker NDATA) is stored after it, so when the marker is visible the death
has been fully processed and the assertions can run at once.
"""

from __future__ import annotations

import json
import math
import re
import socket
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from tahutils.tahu import sparkplug_b as tahu
from tahutils.tahu.sparkplug_b_pb2 import Payload

from conftest import run_query
from test_modbus_tcp import free_port, wait_until
from test_mqtt import checked_gateway

T = tahu.MetricDataType
U64_MAX = 2**64 - 1
I64_MAX = 2**63 - 1


def gateway_config(mqtt_port: int, api_port: int) -> str:
    return f"""
[store]
commit_max_delay = "20ms"

[store.retention]
max_size = "off"

[api]
listen = "127.0.0.1:{api_port}"

# The profile of test_a_death_restamps_the_stored_value_when_a_profile_rejected_the_last:
# `flow` is stored as i64 under the name `flow_rate`.
[profiles.edge.points.flow]
name = "flow_rate"
type = "i64"

[drivers.mqtt.broker]
listen = "127.0.0.1:{mqtt_port}"

[[drivers.mqtt.rules]]
topic = "spBv1.0/#"
format = "sparkplug"
profile = "edge"
"""


class Edge:
    """One Sparkplug edge node: a paho-mqtt client whose will is the NDEATH."""

    def __init__(self, gateway, group: str, node: str = "edge-1") -> None:
        gw, self.mqtt_port, self.api_port, self.db, self.binary = gateway
        self.group, self.node = group, node
        self.node_id = f"{group}:{node}"
        self.markers = 0
        # Tahu's order: the death payload first (it takes the bdSeq), then the birth.
        death = tahu.getNodeDeathPayload()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"tahu-{group}")
        self.client.will_set(self.topic("NDEATH"), death.SerializeToString(), qos=1)
        self.client.connect("127.0.0.1", self.mqtt_port)
        self.client.loop_start()

    def topic(self, kind: str, device: str | None = None) -> str:
        return f"spBv1.0/{self.group}/{kind}/{self.node}" + (f"/{device}" if device else "")

    def device_id(self, device: str) -> str:
        return f"{self.node_id}:{device}"

    def publish(self, topic: str, payload: Payload) -> None:
        info = self.client.publish(topic, payload.SerializeToString(), qos=1)
        info.wait_for_publish(timeout=20)
        assert info.is_published(), topic

    def birth(self, *metrics) -> None:
        """NBIRTH with `marker` (alias 1000) and the given (name, alias, type, value)."""
        payload = tahu.getNodeBirthPayload()
        tahu.addMetric(payload, "marker", 1000, T.Int64, 0)
        for name, alias, datatype, value in metrics:
            tahu.addMetric(payload, name, alias, datatype, value)
        self.publish(self.topic("NBIRTH"), payload)

    def device_birth(self, device: str, *metrics, unit: dict[str, str] | None = None) -> None:
        payload = tahu.getDeviceBirthPayload()
        for name, alias, datatype, value in metrics:
            metric = tahu.addMetric(payload, name, alias, datatype, value)
            if unit and name in unit:
                metric.properties.keys.append("engUnit")
                prop = metric.properties.values.add()
                prop.type = T.String
                prop.string_value = unit[name]
        self.publish(self.topic("DBIRTH", device), payload)

    def data(self, device: str | None, *metrics) -> None:
        """NDATA or DDATA with (alias, type, value), aliases only as Tahu sends them."""
        payload = tahu.getDdataPayload()
        for alias, datatype, value in metrics:
            tahu.addMetric(payload, None, alias, datatype, value)
        self.publish(self.topic("DDATA", device) if device else self.topic("NDATA"), payload)

    def device_death(self, device: str) -> None:
        self.publish(self.topic("DDEATH", device), tahu.getDdataPayload())

    def settle(self) -> None:
        """A marker NDATA after everything published so far; returns once it
        is stored, so everything before it has been processed."""
        self.markers += 1
        self.data(None, (1000, T.Int64, self.markers))
        wait_until(
            lambda: latest(self.binary, self.db, self.node_id).get("marker", {}).get("value") == self.markers,
            30,
            f"marker {self.markers} of {self.node_id}",
        )

    def drop_connection(self) -> None:
        """The connection breaks without a DISCONNECT: the broker sends the will."""
        self.client.loop_stop()
        sock = self.client.socket()
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def close(self) -> None:
        self.client.loop_stop()
        try:
            self.client.disconnect()
        except Exception:
            pass


def latest(binary: Path, db: Path, device: str) -> dict[str, dict]:
    out = run_query(binary, db, "latest", "--device", device)
    return {r["point"]: r for r in json.loads(out.stdout)}


def series(binary: Path, db: Path, device: str, point: str) -> list[dict]:
    out = run_query(binary, db, "range", "--device", device, "--point", point,
                    "--from", "0", "--to", str(I64_MAX), "--limit", "1000")
    return json.loads(out.stdout)


REJECTED = re.compile(r'^biota_samples_rejected_total\{source="normalizer",reason="([a-z_]+)"\} (\d+)$', re.M)


def rejected(api_port: int) -> dict[str, int]:
    """The normalizer's rejection counters, from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {reason: int(n) for reason, n in REJECTED.findall(text)}


def wait_rejected(api_port: int, at_least: dict[str, int]) -> dict[str, int]:
    return wait_until(
        lambda: (r := rejected(api_port)) and all(r.get(k, 0) >= n for k, n in at_least.items()) and r,
        30,
        f"rejection counters {at_least}",
    )


def point_state(rows: dict[str, dict]) -> dict[str, tuple]:
    return {p: (r["value"], r["quality"]) for p, r in rows.items()}


def assert_death_readings(rows: dict[str, dict], window: tuple[int, int], what: str) -> None:
    for point, r in rows.items():
        assert window[0] <= r["ts"] <= window[1], (
            f"{what}: {point}'s death reading must carry the time the death arrived, "
            f"window {window}, got {r['ts']} ({r['time']})"
        )


@pytest.fixture
def gateway(gateway_bin, spawn, write_config, state_dir):
    mqtt_port, api_port = free_port(), free_port()
    for gw in checked_gateway(gateway_bin, spawn, write_config, state_dir, gateway_config(mqtt_port, api_port)):
        wait_until(lambda: rejected(api_port) is not None, 30, "/metrics")
        yield gw, mqtt_port, api_port, state_dir / "gateway.db", gateway_bin


def test_ddeath_marks_points_whose_last_value_was_rejected(gateway):
    gw, _, api_port, db, binary = gateway
    edge = Edge(gateway, "death-d")
    try:
        edge.birth(("uptime", 1, T.Int64, 1))
        edge.device_birth(
            "pump-1",
            ("count", 1, T.UInt64, 5),
            ("temp", 2, T.Double, 20.5),
            ("state", 3, T.String, "RUN"),
            ("never", 4, T.Double, math.nan),  # rejected from the start: never stored
            unit={"temp": "Cel"},
        )
        device = edge.device_id("pump-1")
        # The data the gateway rejects: above i64::MAX, and NaN.
        edge.data("pump-1", (1, T.UInt64, U64_MAX), (2, T.Double, math.nan))
        edge.settle()
        before = wait_rejected(api_port, {"out_of_range": 1, "non_finite": 2})
        assert point_state(latest(binary, db, device)) == {
            "count": (5, "good"),
            "temp": (20.5, "good"),
            "state": ("RUN", "good"),
        }, "the rejected values were not stored: the last stored ones are the birth's"

        t0 = time.time_ns()
        edge.device_death("pump-1")
        edge.settle()
        t1 = time.time_ns()

        rows = latest(binary, db, device)
        assert point_state(rows) == {
            "count": (5, "bad"),
            "temp": (20.5, "bad"),
            "state": ("RUN", "bad"),
        }, (
            "a DDEATH marks every point of the device bad, re-stamping its last stored value "
            f"(count's last stored value is 5, temp's 20.5); after the DDEATH: {point_state(rows)}"
        )
        assert_death_readings(rows, (t0, t1), "DDEATH")
        assert rows["count"]["kind"] == "i64" and rows["temp"]["unit"] == "Cel"
        for point, value in (("count", 5), ("temp", 20.5)):
            history = [(r["value"], r["quality"]) for r in series(binary, db, device, point)]
            assert history == [(value, "good"), (value, "bad")], (point, history)
        after = rejected(api_port)
        assert (after["out_of_range"], after["non_finite"]) == (before["out_of_range"], before["non_finite"]), (
            f"the death re-sent values that were rejected already: counters before {before}, after {after}"
        )
        # The node lives on.
        assert all(r["quality"] == "good" for r in latest(binary, db, edge.node_id).values())
    finally:
        edge.close()
    assert gw.alive()


def test_ndeath_marks_node_and_device_points_whose_last_value_was_rejected(gateway):
    gw, _, api_port, db, binary = gateway
    edge = Edge(gateway, "death-n")
    try:
        edge.birth(
            ("ratio", 1, T.Double, 0.5),
            ("big", 2, T.UInt64, 2**40),
            ("status", 3, T.String, "ok"),
        )
        edge.device_birth("valve-1", ("level", 1, T.UInt64, 9))
        device = edge.device_id("valve-1")
        # 2^63 is one above i64::MAX: the smallest UInt64 the gateway rejects.
        edge.data(None, (1, T.Double, math.nan), (2, T.UInt64, I64_MAX + 1))
        edge.data("valve-1", (1, T.UInt64, U64_MAX))
        edge.settle()
        before = wait_rejected(api_port, {"out_of_range": 2, "non_finite": 1})
        node_before = point_state(latest(binary, db, edge.node_id))
        assert {p: node_before[p] for p in ("ratio", "big", "status")} == {
            "ratio": (0.5, "good"),
            "big": (2**40, "good"),
            "status": ("ok", "good"),
        }, node_before

        t0 = time.time_ns()
        edge.drop_connection()  # the broker publishes the will: the NDEATH
        # `status` (a string, never rejected) is marked by the same death
        # today. A death's readings may straddle two group commits: once it
        # shows, give the rest a moment (not waited for in full: today they
        # never come).
        wait_until(
            lambda: latest(binary, db, edge.node_id)["status"]["quality"] == "bad",
            30,
            "the NDEATH",
        )
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not (
            all(r["quality"] == "bad" for r in latest(binary, db, edge.node_id).values())
            and all(r["quality"] == "bad" for r in latest(binary, db, device).values())
        ):
            time.sleep(0.1)
        t1 = time.time_ns()

        node = latest(binary, db, edge.node_id)
        dev = latest(binary, db, device)
        got = {**{f"node/{p}": s for p, s in point_state(node).items() if p in ("ratio", "big", "status")},
               **{f"device/{p}": s for p, s in point_state(dev).items()}}
        assert got == {
            "node/ratio": (0.5, "bad"),
            "node/big": (2**40, "bad"),
            "node/status": ("ok", "bad"),
            "device/level": (9, "bad"),
        }, (
            "an NDEATH marks every point of the node and of its devices bad, re-stamping its last "
            f"stored value; after the NDEATH: {got}"
        )
        assert all(r["quality"] == "bad" for r in node.values()), point_state(node)
        assert_death_readings(node, (t0, t1), "NDEATH")
        assert_death_readings(dev, (t0, t1), "NDEATH")
        after = rejected(api_port)
        assert (after["out_of_range"], after["non_finite"]) == (before["out_of_range"], before["non_finite"]), (
            f"the death re-sent values that were rejected already: counters before {before}, after {after}"
        )
    finally:
        edge.close()
    assert gw.alive()


def test_a_death_restamps_the_stored_value_when_a_profile_rejected_the_last(gateway):
    """The rejection need not be visible to the Sparkplug decoder: here the
    gateway's profile (`flow` → i64 `flow_rate`) rejects 1e300 as out of
    range. The death still re-stamps what is stored: flow_rate = 12."""
    gw, _, api_port, db, binary = gateway
    edge = Edge(gateway, "death-p")
    try:
        edge.birth()
        edge.device_birth("meter-1", ("flow", 1, T.Double, 12.0), ("other", 2, T.Double, 1.5))
        device = edge.device_id("meter-1")
        edge.settle()
        rows = latest(binary, db, device)
        assert point_state(rows) == {"flow_rate": (12, "good"), "other": (1.5, "good")}, point_state(rows)
        assert rows["flow_rate"]["kind"] == "i64"

        edge.data("meter-1", (1, T.Double, 1e300), (2, T.Double, 2.5))
        edge.settle()
        before = wait_rejected(api_port, {"out_of_range": 1})

        t0 = time.time_ns()
        edge.device_death("meter-1")
        edge.settle()
        t1 = time.time_ns()

        rows = latest(binary, db, device)
        assert point_state(rows) == {"flow_rate": (12, "bad"), "other": (2.5, "bad")}, (
            "a DDEATH marks every point bad with its last stored value, whatever rejected the "
            f"value sent after it; after the DDEATH: {point_state(rows)}"
        )
        assert rows["flow_rate"]["kind"] == "i64"
        assert_death_readings(rows, (t0, t1), "DDEATH")
        after = rejected(api_port)
        assert after["out_of_range"] == before["out_of_range"], (
            f"the death re-sent a value that was rejected already: counters before {before}, after {after}"
        )
    finally:
        edge.close()
    assert gw.alive()
