"""Modbus TCP against a real peer: pymodbus as the server, with registers
prepared by pymodbus's own encoders for every data type and byte/word
order. The gateway's stored readings must equal the encoded values.

Also: a register map that bridges holes in the server's map (merged reads
the server rejects with "illegal data address" are split, and everything
that exists is still read), and the server killed and restarted mid-run
(one bad-quality reading per point at the transition, then good readings
again without restarting the gateway).
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pymodbus.client.mixin import ModbusClientMixin

from conftest import open_db_ro, run_query

DT = ModbusClientMixin.DATATYPE
SERVER = Path(__file__).parent / "peers" / "modbus_tcp_server.py"

TYPES = {
    "u16": (DT.UINT16, 54321),
    "i16": (DT.INT16, -12345),
    "u32": (DT.UINT32, 4_000_000_000),
    "i32": (DT.INT32, -2_000_000_000),
    "u64": (DT.UINT64, 12_345_678_901_234_567),
    "i64": (DT.INT64, -1_234_567_890_123_456_789),
    "f32": (DT.FLOAT32, 123.456),
    "f64": (DT.FLOAT64, 3.141592653589793),
}
# Our order names -> pymodbus word order, and whether bytes are swapped in each word.
ORDERS = {"ABCD": ("big", False), "CDAB": ("little", False), "BADC": ("big", True), "DCBA": ("little", True)}


def swap_bytes(regs: list[int]) -> list[int]:
    return [((r & 0xFF) << 8) | (r >> 8) for r in regs]


def encode(value, datatype, order: str) -> list[int]:
    word_order, swapped = ORDERS[order]
    regs = ModbusClientMixin.convert_to_registers(value, datatype, word_order=word_order)
    return swap_bytes(regs) if swapped else regs


def expected_value(name: str, value):
    if name == "f32":
        return struct.unpack(">f", struct.pack(">f", value))[0]
    return value


def build_layout():
    """Server registers and the gateway's register map points, with expected values."""
    holding: dict[int, int] = {}
    points: list[str] = []
    expected: dict[str, object] = {}
    address = 0
    for order in ORDERS:
        for name, (datatype, value) in TYPES.items():
            regs = encode(value, datatype, order)
            for i, r in enumerate(regs):
                holding[address + i] = r
            point = f"{name}_{order}"
            points.append(
                f'{{ name = "{point}", area = "holding_register", address = {address}, type = "{name}", order = "{order}" }}'
            )
            expected[point] = expected_value(name, value)
            address += len(regs)
    # Strings: high byte first (ABCD) and byte-swapped (BADC).
    text_regs = ModbusClientMixin.convert_to_registers("PRESS-07", DT.STRING)
    for i, r in enumerate(text_regs):
        holding[100 + i] = r
    for i, r in enumerate(swap_bytes(text_regs)):
        holding[110 + i] = r
    points.append('{ name = "tag_ABCD", area = "holding_register", address = 100, type = "string", length = 4 }')
    points.append('{ name = "tag_BADC", area = "holding_register", address = 110, type = "string", length = 4, order = "BADC" }')
    expected["tag_ABCD"] = expected["tag_BADC"] = "PRESS-07"
    # Bits of one register.
    holding[120] = 0b1010
    for bit, value in [(0, False), (1, True), (3, True)]:
        points.append(f'{{ name = "flag{bit}", area = "holding_register", address = 120, type = "bit", bit = {bit} }}')
        expected[f"flag{bit}"] = value
    # Two points with a hole (200..211) between them that the map bridges.
    holding[190], holding[212] = 190, 212
    points.append('{ name = "before_hole", area = "holding_register", address = 190, type = "u16" }')
    points.append('{ name = "after_hole", area = "holding_register", address = 212, type = "u16" }')
    expected["before_hole"], expected["after_hole"] = 190, 212
    # The other areas.
    coils = {0: True, 1: False, 2: True}
    for a, v in coils.items():
        points.append(f'{{ name = "coil{a}", area = "coil", address = {a}, type = "bool" }}')
        expected[f"coil{a}"] = v
    points.append('{ name = "din0", area = "discrete_input", address = 0, type = "bool" }')
    expected["din0"] = True
    points.append('{ name = "ir5", area = "input_register", address = 5, type = "i16" }')
    expected["ir5"] = -5
    layout = {
        "holding": {str(a): v for a, v in holding.items()},
        "coils": {str(a): v for a, v in coils.items()},
        "discrete": {"0": True},
        "input": {"5": 65531},
    }
    return layout, points, expected


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, port: int, layout_file: Path) -> None:
        self.port, self.layout_file, self.proc = port, layout_file, None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER), str(self.port), str(self.layout_file)],
            stdout=subprocess.PIPE,
            # pymodbus logs every frame: a pipe nobody reads would fill and stall it.
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout.readline().strip() == "listening", "the pymodbus server did not start"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError("pymodbus server did not listen")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def modbus_server(tmp_path: Path):
    layout, points, expected = build_layout()
    layout_file = tmp_path / "layout.json"
    layout_file.write_text(json.dumps(layout))
    server = Server(free_port(), layout_file)
    server.start()
    yield server, points, expected
    server.kill()


def plc_map(points: list[str], interval: str) -> str:
    """The register map `plc` over `points` (TOML), shared with the RTU test."""
    joined = ",\n  ".join(points)
    return f"""
[drivers.modbus.maps.plc]
max_gap = 30
[[drivers.modbus.maps.plc.groups]]
name = "all"
interval = "{interval}"
points = [
  {joined},
]
"""


def gateway_config(port: int, points: list[str]) -> str:
    return f"""
[store]
commit_max_delay = "20ms"

[[drivers.modbus.tcp]]
address = "127.0.0.1:{port}"
timeout = "300ms"
reconnect_min = "100ms"
reconnect_max = "500ms"
devices = [{{ id = "plc-1", unit = 1, map = "plc" }}]
""" + plc_map(points, "100ms")


def latest(binary: Path, db: Path) -> dict[str, dict]:
    rows = json.loads(run_query(binary, db, "latest", "--device", "plc-1").stdout)
    return {r["point"]: r for r in rows}


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last}")


def test_every_type_and_order_and_a_split_and_a_server_restart(
    gateway_bin, modbus_server, spawn, write_config, state_dir
):
    server, points, expected = modbus_server
    config = write_config(gateway_config(server.port, points))
    check = subprocess.run([str(gateway_bin), "check-config", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    db = state_dir / "gateway.db"
    gw = spawn(gateway_bin, config, state_dir)
    gw.wait_ready(timeout=30)

    values = wait_until(
        lambda: (rows := latest(gateway_bin, db)) and set(expected) <= set(rows) and rows,
        timeout=15,
        what="every point read at least once",
    )
    for point, want in expected.items():
        got = values[point]
        assert got["quality"] == "good", got
        if isinstance(want, float):
            assert got["value"] == pytest.approx(want, rel=0, abs=0), (point, got["value"], want)
        else:
            assert got["value"] == want, (point, got["value"], want)
        assert got["source"] == f"modbus-tcp://127.0.0.1:{server.port}/1"

    # The server goes away: one bad reading per point, then nothing.
    server.kill()
    wait_until(
        lambda: all(r["quality"] == "bad" for r in latest(gateway_bin, db).values()),
        timeout=10,
        what="bad quality after the server died",
    )
    time.sleep(1.5)  # several poll intervals and reconnect attempts
    conn = open_db_ro(db)
    try:
        bad_per_point = conn.execute(
            "SELECT s.point, count(*) FROM readings r JOIN series s ON s.id = r.series "
            "WHERE s.device = 'plc-1' AND (r.flags & 3) = 2 GROUP BY s.point"
        ).fetchall()
    finally:
        conn.close()
    assert {p for p, _ in bad_per_point} == set(expected), bad_per_point
    assert all(n == 1 for _, n in bad_per_point), f"one bad reading per point at the transition: {bad_per_point}"

    # It comes back: good readings resume without restarting the gateway.
    server.start()
    wait_until(
        lambda: all(r["quality"] == "good" for r in latest(gateway_bin, db).values()),
        timeout=15,
        what="good quality after the server restarted",
    )
    assert gw.alive()
    assert gw.stop(timeout=40) == 0
    assert "panicked" not in gw.stderr()
