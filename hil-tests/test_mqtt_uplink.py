"""The uplink's store-and-forward against a real broker: Mosquitto, started
by the test, is the northbound broker; `mosquitto_sub` with a
persistent session on it collects what the gateway publishes.

While simulated data flows, Mosquitto is stopped for 30 s and the gateway
is restarted once during the outage. Afterwards the subscriber must have
received every reading at least once, the first arrival of each seq in seq
order, with no gap over the whole acknowledged range; the values must be
the stored ones.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import open_db_ro, run_cli
from test_modbus_tcp import free_port, wait_until


class Mosquitto:
    def __init__(self, tmp: Path, port: int) -> None:
        self.port = port
        self.conf = tmp / "mosquitto.conf"
        (tmp / "mosq-data").mkdir()
        self.conf.write_text(
            f"""listener {port} 127.0.0.1
allow_anonymous true
persistence true
persistence_location {tmp / "mosq-data"}/
max_queued_messages 0
log_dest stderr
# As root, mosquitto would switch to its own user, who cannot write the test's directory.
user root
"""
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(lambda: self._listening(), 10, "mosquitto listening")

    def _listening(self) -> bool:
        import socket

        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # saves its persistence file
            self.proc.wait(timeout=20)


class Collector:
    """`mosquitto_sub` with a persistent session (`-c`, fixed id, QoS 1): it
    gets what was queued for it while it was away, once it is back. It
    exits when the broker goes; `connect()` starts it again."""

    def __init__(self, port: int, out: Path) -> None:
        self.port, self.out = port, out
        self.proc: subprocess.Popen | None = None
        self.connect()

    def connect(self) -> None:
        self.close()
        log = open(self.out, "ab")
        self.proc = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(self.port), "-i", "uplink-collector",
             "-c", "-q", "1", "-t", "biota/#"],
            stdout=log, stderr=subprocess.DEVNULL,
        )
        log.close()

    def messages(self) -> list[dict]:
        out = []
        for line in self.out.read_bytes().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass  # a line being written
        return out

    def snapshot(self) -> list[int]:
        return [r["seq"] for m in self.messages() for r in m["readings"]]

    def values(self) -> dict[int, object]:
        values: dict[int, object] = {}
        for m in self.messages():
            for r in m["readings"]:
                values.setdefault(r["seq"], r["value"])
        return values

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def config(port: int) -> str:
    return f"""
[store]
commit_max_delay = "50ms"

[uplink]
broker = "127.0.0.1:{port}"
client_id = "gw-test"
topic = "biota/{{gateway}}/{{device}}"
batch = 40
inflight = 4
reconnect_min = "200ms"
reconnect_max = "1s"

[[drivers.sim.devices]]
id = "line-1"
points = [
  {{ name = "temp", waveform = "sine", rate = 20, min = 10, max = 30, period = 10 }},
  {{ name = "count", waveform = "counter", rate = 20 }},
]
"""


def uplink_status(binary: Path, state_dir: Path) -> dict:
    out = run_cli(binary, "devices", "--state-dir", str(state_dir), "--json")
    return json.loads(out.stdout)["uplink"] if out.returncode == 0 else {}


def test_outage_and_restart_lose_nothing(gateway_bin, spawn, write_config, state_dir, tmp_path):
    port = free_port()
    broker = Mosquitto(tmp_path, port)
    broker.start()
    collector = Collector(port, tmp_path / "collected.jsonl")
    cfg = write_config(config(port))
    db = state_dir / "gateway.db"
    try:
        gw = spawn(gateway_bin, cfg, state_dir)
        gw.wait_ready(timeout=30)
        wait_until(lambda: len(collector.snapshot()) > 100, 20, "readings arriving through the uplink")
        status = uplink_status(gateway_bin, state_dir)
        assert status["connected"] is True and status["acked_seq"] > 0, status

        # Outage: 30 s without the broker; the gateway restarts during it.
        broker.stop()
        outage_started = time.monotonic()
        time.sleep(10)
        assert uplink_status(gateway_bin, state_dir)["connected"] is False
        assert gw.stop() == 0
        acked_before_restart = int((state_dir / "gateway.db.uplink-acked").read_text())
        gw = spawn(gateway_bin, cfg, state_dir)
        gw.wait_ready(timeout=30)
        time.sleep(max(0.0, 30 - (time.monotonic() - outage_started)))
        backlog = uplink_status(gateway_bin, state_dir)["backlog"]
        assert backlog > 500, f"the outage should have built a backlog, got {backlog}"
        broker.start()
        # The collector comes back under the same id: its session (and what
        # was queued or unacknowledged for it) survived the broker's restart.
        collector.close()
        collector.connect()

        # Catch up: everything acknowledged, then stop.
        wait_until(
            lambda: (s := uplink_status(gateway_bin, state_dir)) and s["connected"] and s["backlog"] < 100,
            60,
            "the uplink catching up after the outage",
        )
        assert gw.stop() == 0
        acked = int((state_dir / "gateway.db.uplink-acked").read_text())
        assert acked > acked_before_restart
        wait_until(
            lambda: max(collector.snapshot(), default=0) >= acked,
            20,
            f"the collector receiving up to the acked seq {acked} (has {len(collector.snapshot())}, max {max(collector.snapshot(), default=0)})",
        )
    finally:
        collector.close()
        broker.stop()

    seqs = collector.snapshot()
    first_seen: list[int] = []
    seen: set[int] = set()
    for s in seqs:
        if s not in seen:
            seen.add(s)
            first_seen.append(s)
    missing = sorted(set(range(1, acked + 1)) - seen)
    assert not missing, f"{len(missing)} acknowledged readings never arrived, first {missing[:10]}"
    assert first_seen[: len(first_seen)] == sorted(first_seen), "first arrivals out of seq order"
    duplicates = len(seqs) - len(seen)
    print(f"uplink: {acked} readings acknowledged, {len(seqs)} received ({duplicates} resent)")

    # The values are the stored ones.
    conn = open_db_ro(db)
    stored = dict(conn.execute("SELECT seq, value FROM readings WHERE seq <= ?", (acked,)).fetchall())
    conn.close()
    values = collector.values()
    for seq in range(1, acked + 1, 97):
        assert values[seq] == pytest.approx(stored[seq]), seq


def test_bad_uplink_config_is_named(gateway_bin, write_config):
    cfg = write_config(
        """
[uplink]
broker = "nohost"
topic = "biota/{site}/#"
batch = 0
"""
    )
    out = run_cli(gateway_bin, "check-config", str(cfg))
    assert out.returncode == 78
    for key in ["uplink.broker", "uplink.topic", "uplink.batch"]:
        assert key in out.stderr, out.stderr


def test_upstream_subscription_maps_and_survives_a_broker_restart(gateway_bin, spawn, write_config, state_dir, tmp_path):
    """Mosquitto as the source: the gateway subscribes to it (no embedded
    broker), maps by the rules, and resubscribes after Mosquitto restarts."""
    from test_mqtt import latest, pub

    port = free_port()
    broker = Mosquitto(tmp_path, port)
    broker.start()
    cfg = write_config(
        f"""
[store]
commit_max_delay = "20ms"

[drivers.mqtt.broker]
enabled = false

[[drivers.mqtt.upstream]]
broker = "127.0.0.1:{port}"
client_id = "gw-upstream"
topics = ["plant/#"]
reconnect_min = "200ms"
reconnect_max = "500ms"

[[drivers.mqtt.rules]]
topic = "plant/{{device}}/telemetry/{{point}}"
format = "plain"
"""
    )
    db = state_dir / "gateway.db"
    try:
        gw = spawn(gateway_bin, cfg, state_dir)
        gw.wait_ready(timeout=30)

        def published(value: str) -> bool:
            pub(port, "plant/kiln-1/telemetry/temp", value)
            rows = latest(gateway_bin, db, "kiln-1") if db.exists() else {}
            return rows.get("temp", {}).get("value") == float(value)

        # The subscription may take a moment after READY: publish until it lands.
        wait_until(lambda: published("850.5"), 15, "a reading from the upstream broker")
        row = latest(gateway_bin, db, "kiln-1")["temp"]
        assert row["source"] == f"mqtt://127.0.0.1:{port}/plant/kiln-1/telemetry/temp"

        broker.stop()
        time.sleep(1)
        broker.start()
        wait_until(lambda: published("851.25"), 15, "readings again after the broker restarted")
        assert gw.alive()
        assert gw.stop() == 0
    finally:
        broker.stop()


def test_the_data_budget_holds_the_uplink_back(gateway_bin, spawn, write_config, state_dir, tmp_path):
    port = free_port()
    broker = Mosquitto(tmp_path, port)
    broker.start()
    text = config(port).replace("batch = 40", 'batch = 40\nbudget_per_hour = "4KB"')
    try:
        gw = spawn(gateway_bin, write_config(text), state_dir)
        gw.wait_ready(timeout=30)
        status = wait_until(
            lambda: (s := uplink_status(gateway_bin, state_dir)) and s.get("over_budget") and s,
            20,
            "the uplink stopping at its hourly budget",
        )
        # About 4 KB went out (a message may straddle the limit), then nothing more.
        assert 0 < status["bytes"] <= 4000 + 20_000, status
        sent = status["messages"]
        time.sleep(2)
        later = uplink_status(gateway_bin, state_dir)
        assert later["messages"] == sent and later["backlog"] > status["backlog"], later
        assert "data budget or rate limit reached" in gw.stderr()
        assert gw.stop() == 0
    finally:
        broker.stop()
