"""Modbus RTU against a real peer: pymodbus as the slaves on one end of a
socat pty pair, the gateway on the other. Three slave ids on one bus, one
of them silent: the two that answer keep their poll rate within 10% of
the configured rate, and their values are the ones pymodbus serves.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import open_db_ro

SERVER = Path(__file__).parent / "peers" / "modbus_rtu_server.py"
BAUD = 38400
INTERVAL_S = 0.1
WINDOW_S = 6.0


@pytest.fixture
def serial_pair(tmp_path: Path):
    gateway_end, device_end = tmp_path / "ttyGW", tmp_path / "ttyDEV"
    socat = subprocess.Popen(
        ["socat", f"pty,raw,echo=0,link={gateway_end}", f"pty,raw,echo=0,link={device_end}"],
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 10
    while not (gateway_end.exists() and device_end.exists()):
        assert socat.poll() is None, socat.stderr.read()
        assert time.monotonic() < deadline, "socat made no pty pair"
        time.sleep(0.05)
    yield gateway_end, device_end
    socat.kill()
    socat.wait(timeout=10)


def start_slaves(device_end: Path, *units: str) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, str(SERVER), str(device_end), str(BAUD), *units],
        stdout=subprocess.PIPE,
        # pymodbus logs every frame: a pipe nobody reads would fill and stall it.
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert server.stdout.readline().strip() == "listening", "the pymodbus RTU server did not start"
    time.sleep(0.5)  # the serial server opens the port after printing
    return server


@pytest.fixture
def rtu_slaves(serial_pair):
    gateway_end, device_end = serial_pair
    server = start_slaves(device_end, "1", "2")
    yield gateway_end
    server.kill()
    server.wait(timeout=10)


def config(path: Path) -> str:
    return f"""
[store]
commit_max_delay = "20ms"

[[drivers.modbus.rtu]]
path = "{path}"
baud = {BAUD}
parity = "none"
timeout = "100ms"
backoff = "5s"
devices = [
  {{ id = "slave-1", unit = 1, map = "meter" }},
  {{ id = "slave-2", unit = 2, map = "meter" }},
  {{ id = "slave-3", unit = 3, map = "meter" }},
]

[drivers.modbus.maps.meter]
[[drivers.modbus.maps.meter.groups]]
name = "fast"
interval = "{int(INTERVAL_S * 1000)}ms"
points = [
  {{ name = "r0", area = "holding_register", address = 0, type = "u16" }},
  {{ name = "r7", area = "holding_register", address = 7, type = "u16" }},
]
"""


def test_three_slaves_one_silent_keep_their_rate(gateway_bin, rtu_slaves, spawn, write_config, state_dir):
    gw = spawn(gateway_bin, write_config(config(rtu_slaves)), state_dir)
    gw.wait_ready(timeout=30)
    time.sleep(1.0)  # the first timeout of slave 3 and the back-off start
    db = state_dir / "gateway.db"

    def counts() -> dict[str, int]:
        conn = open_db_ro(db)
        try:
            rows = conn.execute(
                "SELECT s.device, count(*) FROM readings r JOIN series s ON s.id = r.series "
                "WHERE s.point = 'r0' AND (r.flags & 3) = 0 GROUP BY s.device"
            ).fetchall()
        finally:
            conn.close()
        return dict(rows)

    before = counts()
    time.sleep(WINDOW_S)
    after = counts()
    expected = WINDOW_S / INTERVAL_S
    for device in ("slave-1", "slave-2"):
        polls = after.get(device, 0) - before.get(device, 0)
        assert polls >= 0.9 * expected, f"{device}: {polls} polls in {WINDOW_S}s, configured {expected:.0f}"
        assert polls <= 1.1 * expected, f"{device}: {polls} polls in {WINDOW_S}s, configured {expected:.0f}"
    assert after.get("slave-3", 0) == 0, "the silent slave has no good readings"

    conn = open_db_ro(db)
    try:
        latest = dict(
            conn.execute(
                "SELECT s.device || '/' || s.point, r.value FROM latest x JOIN series s ON s.id = x.series "
                "JOIN readings r ON r.seq = x.seq"
            ).fetchall()
        )
    finally:
        conn.close()
    assert latest["slave-1/r0"] == 100 and latest["slave-1/r7"] == 107, latest
    assert latest["slave-2/r0"] == 200 and latest["slave-2/r7"] == 207, latest
    assert gw.stop(timeout=40) == 0
    log = gw.stderr()
    assert "panicked" not in log
    silent = [l for l in log.splitlines() if "stopped answering" in l]
    assert any("slave-3" in l for l in silent), f"slave 3 was not silent (timeouts expected):\n{log[-3000:]}"
    assert not any("slave-1" in l or "slave-2" in l for l in silent), silent


def test_every_type_and_order_over_rtu(gateway_bin, serial_pair, spawn, write_config, state_dir, tmp_path):
    """The checks of test_modbus_tcp.py, over a serial line: registers prepared
    by pymodbus's encoders for every type and byte/word order, strings, bits,
    coils, inputs, and holes the map bridges (merged reads split)."""
    import json

    from test_modbus_tcp import build_layout, plc_map

    gateway_end, device_end = serial_pair
    layout, points, expected = build_layout()
    layout_file = tmp_path / "layout.json"
    layout_file.write_text(json.dumps(layout))
    server = start_slaves(device_end, f"5={layout_file}")
    try:
        text = f"""
[store]
commit_max_delay = "20ms"
[[drivers.modbus.rtu]]
path = "{gateway_end}"
baud = {BAUD}
# 8N1 like pymodbus: this kernel's ptys refuse even parity (the default),
# and the gateway does not poll over a port that refused a setting.
parity = "none"
timeout = "300ms"
devices = [{{ id = "plc-rtu", unit = 5, map = "plc" }}]
""" + plc_map(points, "200ms")
        gw = spawn(gateway_bin, write_config(text), state_dir)
        gw.wait_ready(timeout=30)
        db = state_dir / "gateway.db"
        deadline = time.monotonic() + 20
        values: dict = {}
        while time.monotonic() < deadline:
            conn = open_db_ro(db)
            try:
                values = {
                    point: (value, flags & 3)
                    for point, value, flags in conn.execute(
                        "SELECT s.point, r.value, r.flags FROM latest x JOIN series s ON s.id = x.series "
                        "JOIN readings r ON r.seq = x.seq WHERE s.device = 'plc-rtu'"
                    )
                }
            finally:
                conn.close()
            if set(expected) <= set(values):
                break
            time.sleep(0.2)
        assert set(expected) <= set(values), f"not read over RTU: {sorted(set(expected) - set(values))}"
        for point, want in expected.items():
            got, quality = values[point]
            assert quality == 0, (point, quality)
            if isinstance(want, bool):
                assert got == int(want), (point, got, want)
            else:
                assert got == want, (point, got, want)
        assert gw.stop(timeout=40) == 0
    finally:
        server.kill()
        server.wait(timeout=10)
