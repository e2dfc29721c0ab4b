"""Sparkplug B ingest: an edge node built with Eclipse Tahu's Python core
(the `tahutils` package ships it unmodified, with the protobuf classes
generated from Tahu's sparkplug_b.proto) publishes through paho-mqtt into
the gateway's embedded broker, the way a real edge node does: NDEATH as
its will, NBIRTH and DBIRTH declaring metrics with aliases, then NDATA and
DDATA carrying aliases only.

The stored readings must be the published values (every datatype,
negative small integers in both the Python and the Java encoding), with
the metrics' timestamps and engUnit; a DDEATH and the NDEATH (delivered by
the broker when the node's connection drops) mark the last stored values
bad (test_sparkplug_death.py goes further). A metric timestamp that is no
instant (past int64 nanoseconds) is distrusted like an implausible clock.
Bad input (an unknown alias, a malformed payload, a topic outside the
namespace, a DataSet, a sequence gap) is counted per topic and reason, and
commands and host state are ignored.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from tahutils.tahu import sparkplug_b as tahu
from tahutils.tahu.sparkplug_b_pb2 import Payload

from conftest import run_cli, run_query
from test_modbus_tcp import free_port, wait_until
from test_mqtt import checked_gateway

T = tahu.MetricDataType
T0_MS = 1_700_000_000_123
GROUP, NODE, DEVICE = "plant-1", "edge-1", "pump-1"
NODE_ID = f"{GROUP}:{NODE}"
DEVICE_ID = f"{GROUP}:{NODE}:{DEVICE}"


def topic(kind: str, device: str | None = None) -> str:
    return f"spBv1.0/{GROUP}/{kind}/{NODE}" + (f"/{device}" if device else "")


def gateway_config(port: int) -> str:
    return f"""
[store]
commit_max_delay = "20ms"

[drivers.mqtt.broker]
listen = "127.0.0.1:{port}"

[[drivers.mqtt.rules]]
topic = "spBv1.0/#"
format = "sparkplug"
"""


def latest(binary: Path, db: Path, device: str) -> dict[str, dict]:
    out = run_query(binary, db, "latest", "--device", device)
    return {r["point"]: r for r in json.loads(out.stdout)}


def status(binary: Path, state_dir: Path) -> dict:
    out = run_cli(binary, "devices", "--state-dir", str(state_dir), "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


class EdgeNode:
    """A paho-mqtt client whose will is the NDEATH."""

    def __init__(self, port: int, death: bytes) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tahu-edge-1")
        self.client.will_set(topic("NDEATH"), death, qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes | Payload) -> None:
        if isinstance(payload, Payload):
            payload = payload.SerializeToString()
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=10)
        assert info.is_published(), topic

    def drop_connection(self) -> None:
        """The connection breaks without a DISCONNECT: the broker sends the will."""
        self.client.loop_stop()
        sock = self.client.socket()
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()


def with_unit(metric, unit: str):
    metric.properties.keys.append("engUnit")
    value = metric.properties.values.add()
    value.type = T.String
    value.string_value = unit
    return metric


@pytest.fixture
def gateway(gateway_bin, spawn, write_config, state_dir):
    port = free_port()
    for gw in checked_gateway(gateway_bin, spawn, write_config, state_dir, gateway_config(port)):
        yield gw, port, state_dir / "gateway.db"


def test_tahu_edge_node_births_data_aliases_and_deaths(gateway_bin, gateway, state_dir):
    gw, port, db = gateway
    # Tahu's order: the death payload first (it takes the bdSeq), then the birth.
    death = tahu.getNodeDeathPayload()
    node = EdgeNode(port, death.SerializeToString())

    birth = tahu.getNodeBirthPayload()
    tahu.addMetric(birth, "Node Control/Rebirth", 1, T.Boolean, False)
    with_unit(tahu.addMetric(birth, "cpu", 2, T.Float, 21.5, timestamp=T0_MS), "%")
    tahu.addMetric(birth, "i8", 3, T.Int8, -1)  # Tahu Python sends 255
    tahu.addMetric(birth, "i16", 4, T.Int16, -300)
    tahu.addMetric(birth, "i32", 5, T.Int32, -70000)
    tahu.addMetric(birth, "i64", 6, T.Int64, -5)
    tahu.addMetric(birth, "u8", 7, T.UInt8, 250)
    tahu.addMetric(birth, "u16", 8, T.UInt16, 65000)
    tahu.addMetric(birth, "u32", 9, T.UInt32, 4_000_000_000)
    tahu.addMetric(birth, "u64", 10, T.UInt64, 2**40)
    tahu.addMetric(birth, "ratio", 11, T.Double, 0.125)
    tahu.addMetric(birth, "label", 12, T.String, "north")
    tahu.addMetric(birth, "note", 13, T.Text, "a longer text")
    tahu.addMetric(birth, "uuid", 14, T.UUID, "6f1c0e34-8f4e-4d8e-a8a4-7c1c2a9b3d55")
    tahu.addMetric(birth, "booted", 15, T.DateTime, T0_MS)
    tahu.addMetric(birth, "blob", 16, T.Bytes, b"\x00\x01\xfe")
    # Java's encoding of Int8 -1: sign-extended to 32 bits.
    java = birth.metrics.add()
    java.name, java.alias, java.datatype, java.int_value = "i8_java", 17, T.Int8, 4_294_967_295
    tahu.initDatasetMetric(birth, "table", 18, ["a"], [T.Int32])
    node.publish(topic("NBIRTH"), birth)

    dbirth = tahu.getDeviceBirthPayload()
    tahu.addMetric(dbirth, "speed", 1, T.Int16, 1450)
    tahu.addMetric(dbirth, "state", 2, T.String, "RUN")
    node.publish(topic("DBIRTH", DEVICE), dbirth)

    # Data: aliases only, as Tahu's examples send them.
    ndata = tahu.getDdataPayload()
    tahu.addMetric(ndata, None, 2, T.Float, 22.25)
    tahu.addMetric(ndata, None, 3, T.Int8, -128)
    node.publish(topic("NDATA"), ndata)
    ddata = tahu.getDdataPayload()
    tahu.addMetric(ddata, None, 1, T.Int16, -12)
    tahu.addMetric(ddata, None, 99, T.Int16, 5)  # declared by no birth
    node.publish(topic("DDATA", DEVICE), ddata)

    # Ignored: commands to the node and a host's state.
    node.publish(topic("NCMD"), b"\x00")
    node.publish("spBv1.0/STATE/scada-host", b'{"online": true}')

    n = wait_until(
        lambda: (r := latest(gateway_bin, db, NODE_ID)) and r.get("cpu", {}).get("value") == 22.25 and r,
        timeout=10,
        what="the node's NDATA",
    )
    want = {
        "Node_Control/Rebirth": False,
        "i8": -128,
        "i8_java": -1,
        "i16": -300,
        "i32": -70000,
        "i64": -5,
        "u8": 250,
        "u16": 65000,
        "u32": 4_000_000_000,
        "u64": 2**40,
        "ratio": 0.125,
        "label": "north",
        "note": "a longer text",
        "uuid": "6f1c0e34-8f4e-4d8e-a8a4-7c1c2a9b3d55",
        "booted": T0_MS,
        "cpu": 22.25,
        "bdSeq": 0,
    }
    assert {p: r["value"] for p, r in n.items() if p != "blob"} == want
    assert n["blob"]["kind"] == "bytes"
    assert n["i8"]["kind"] == "i64" and n["cpu"]["kind"] == "f64" and n["label"]["kind"] == "text"
    assert n["cpu"]["unit"] == "%"  # the birth's engUnit carries over to the data
    assert all(r["quality"] == "good" for r in n.values())
    assert n["i16"]["source"] == f"mqtt://127.0.0.1:{port}/{topic('NBIRTH')}"
    # The metric's own timestamp (ms) in the birth, the payload's otherwise.
    first_cpu = run_query(gateway_bin, db, "range", "--device", NODE_ID, "--point", "cpu", "--from", "0")
    assert T0_MS * 1_000_000 in [r["ts"] for r in json.loads(first_cpu.stdout)]
    label = next(m for m in birth.metrics if m.name == "label")
    assert n["label"]["ts"] == label.timestamp * 1_000_000

    d = wait_until(lambda: latest(gateway_bin, db, DEVICE_ID), 10, "the device's readings")
    assert {p: (r["value"], r["quality"]) for p, r in d.items()} == {
        "speed": (-12, "good"),
        "state": ("RUN", "good"),
    }

    # Bad input, each counted once.
    node.publish(topic("NDATA"), b"\xff\xff\xff\xff")  # not protobuf
    node.publish(f"spBv1.0/{GROUP}/NDATA", b"")  # no edge node level

    # DDEATH: the device's last values, bad.
    ddeath = tahu.getDdataPayload()
    node.publish(topic("DDEATH", DEVICE), ddeath)
    wait_until(
        lambda: all(r["quality"] == "bad" for r in latest(gateway_bin, db, DEVICE_ID).values()),
        10,
        "the device's bad readings",
    )
    d = latest(gateway_bin, db, DEVICE_ID)
    assert {p: r["value"] for p, r in d.items()} == {"speed": -12, "state": "RUN"}
    assert all(r["quality"] == "good" for r in latest(gateway_bin, db, NODE_ID).values())

    # A sequence gap: counted, the data kept.
    gap = tahu.getDdataPayload()
    gap.seq = (gap.seq + 10) % 256
    tahu.addMetric(gap, None, 11, T.Double, 0.5)
    node.publish(topic("NDATA"), gap)
    wait_until(lambda: latest(gateway_bin, db, NODE_ID)["ratio"]["value"] == 0.5, 10, "the data after the gap")

    # The connection drops: the broker publishes the will, the NDEATH.
    node.drop_connection()
    wait_until(
        lambda: all(r["quality"] == "bad" for r in latest(gateway_bin, db, NODE_ID).values()),
        10,
        "the node's bad readings after its NDEATH",
    )
    n = latest(gateway_bin, db, NODE_ID)
    assert n["cpu"]["value"] == 22.25 and n["ratio"]["value"] == 0.5 and n["i8"]["value"] == -128

    mq = status(gateway_bin, state_dir)["mqtt"]
    counts = {(r["topic"], r["reason"]): r["count"] for r in mq["rejected"]}
    assert counts == {
        (topic("NBIRTH"), "unsupported_datatype"): 1,
        (topic("DDATA", DEVICE), "unknown_alias"): 1,
        (topic("NDATA"), "malformed_sparkplug"): 1,
        (topic("NDATA"), "seq_gap"): 1,
        (f"spBv1.0/{GROUP}/NDATA", "bad_topic"): 1,
    }, mq
    assert mq["unmatched"] == 0

    # The gateway is up, and a new session of the node is stored again.
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tahu-edge-1b")
    client.connect("127.0.0.1", port)
    client.loop_start()
    rebirth = tahu.getNodeBirthPayload()
    tahu.addMetric(rebirth, "cpu", 2, T.Float, 5.0)
    info = client.publish(topic("NBIRTH"), rebirth.SerializeToString(), qos=1)
    info.wait_for_publish(timeout=10)
    client.loop_stop()
    client.disconnect()
    wait_until(
        lambda: (r := latest(gateway_bin, db, NODE_ID)["cpu"]) and r["quality"] == "good" and r["value"] == 5.0,
        10,
        "the node's rebirth",
    )
    assert "panicked" not in gw.stderr()


def test_a_metric_timestamp_past_int64_nanoseconds_is_uncertain_at_ingest_time(gateway_bin, gateway):
    """Issue #14 (item 15, for Sparkplug): a timestamp after 2262 cannot be
    held in int64 nanoseconds. It is no plausible instant, so it is treated
    like any implausible device clock (docs/cdm.md): stored at the ingest
    time with quality uncertain, never as a good reading as if the node had
    sent no time."""
    gw, port, db = gateway
    node = EdgeNode(port, tahu.getNodeDeathPayload().SerializeToString())
    now_ms = int(time.time() * 1000)
    # 2^63 ns is 9223372036854.775807 ms: one ms more does not fit.
    past_int64 = 2**63 // 10**6 + 1
    birth = tahu.getNodeBirthPayload()
    tahu.addMetric(birth, "late", 1, T.Int32, 1, timestamp=past_int64)
    tahu.addMetric(birth, "u64_max", 2, T.Int32, 2, timestamp=2**64 - 1)
    # Controls: 2100 is representable but implausible; now is good.
    tahu.addMetric(birth, "y2100", 3, T.Int32, 3, timestamp=4_102_444_800_000)
    tahu.addMetric(birth, "now", 4, T.Int32, 4, timestamp=now_ms)
    points = {"late", "u64_max", "y2100", "now"}
    try:
        before = time.time_ns()
        node.publish(topic("NBIRTH"), birth)
        rows = wait_until(
            lambda: (r := latest(gateway_bin, db, NODE_ID)) and points <= set(r) and r,
            30,
            "the NBIRTH's metrics",
        )
        after = time.time_ns()
    finally:
        node.client.loop_stop()
        node.client.disconnect()
    assert (rows["now"]["ts"], rows["now"]["quality"]) == (now_ms * 1_000_000, "good")
    for point in ("late", "u64_max", "y2100"):
        r = rows[point]
        assert before <= r["ts"] <= after and r["quality"] == "uncertain", (
            f"{point}: a timestamp that is no plausible instant must give the ingest time "
            f"[{before}, {after}] and quality uncertain, got ts {r['ts']} ({r['time']}), "
            f"quality {r['quality']}"
        )
    assert gw.alive()
