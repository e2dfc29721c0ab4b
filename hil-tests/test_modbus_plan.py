"""The read plan after a device rejects a merged read (issue 14, item 7),
against a real peer: a pymodbus RTU slave (peers/modbus_rtu_slaves.py)
that has holding registers 0..84 and 88..94 only — a 3-register hole,
85..87, answered with exception 02 (illegal data address) — behind the
logging proxy (peers/modbus_rtu_proxy.py), which records every request the
slave receives.

The map (default max_gap 8) has u16 points at 0, 2, ..., 12; 19, 21, ...,
83, 84; 88, 90, 92, 94. Its unused gaps are 13..18 (6 registers, the
widest, and readable) and 85..87 (3 registers, the real hole), so the
first plan is one read of 0..94, which the slave rejects.

Expected: once the plan has settled it uses the fewest requests that avoid
the hole: two, 0..84 (85 registers) and 88..94 (7); no request the slave
rejects any more; every point read with the value the slave holds.

Today the split takes the widest gap first and keeps the result: 0..12,
19..84 and 88..94 — three requests per poll where two suffice.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import assert_no_panic, open_db_ro
from rtu_line import RtuLine

BAUD = 19200
UNIT = 5
INTERVAL_S = 0.3

ADDRESSES = list(range(0, 13, 2)) + list(range(19, 84, 2)) + [84] + list(range(88, 95, 2))


@pytest.fixture
def holey_slave(tmp_path: Path):
    line = RtuLine(tmp_path / "line", [f"{UNIT}:holes=0-84,88-94"], baud=BAUD)
    yield line
    line.close()


def config(path: Path) -> str:
    points = ",\n  ".join(f'{{ name = "h{a}", area = "holding_register", address = {a}, type = "u16" }}' for a in ADDRESSES)
    return f"""
[store]
commit_max_delay = "20ms"

[[drivers.modbus.rtu]]
path = "{path}"
baud = {BAUD}
parity = "none"
stop_bits = 2
timeout = "300ms"
devices = [{{ id = "holey", unit = {UNIT}, map = "holey" }}]

[drivers.modbus.maps.holey]
[[drivers.modbus.maps.holey.groups]]
name = "all"
interval = "{int(INTERVAL_S * 1000)}ms"
points = [
  {points},
]
"""


def test_the_plan_after_a_rejected_read_is_minimal(gateway_bin, holey_slave, spawn, write_config, state_dir):
    line = holey_slave
    gw = spawn(gateway_bin, write_config(config(line.gateway_end)), state_dir)
    gw.wait_ready(timeout=30)

    # The first rejection, then time for the plan to settle (many polls).
    deadline = time.monotonic() + 30
    first_exc = None
    while first_exc is None:
        exceptions = [a for a in line.answers_in() if "exc" in a]
        if exceptions:
            first_exc = exceptions[0]
            break
        assert gw.alive(), gw.stderr()[-3000:]
        assert time.monotonic() < deadline, f"the slave never rejected a read; frames: {line.frames()[:10]}"
        time.sleep(0.1)
    settle_until = first_exc["t"] + 10 * INTERVAL_S
    window_end = settle_until + 10 * INTERVAL_S
    while time.monotonic() < window_end + 0.2:
        assert gw.alive(), gw.stderr()[-3000:]
        time.sleep(0.2)
    frames = line.frames()

    conn = open_db_ro(state_dir / "gateway.db")
    try:
        latest = {
            point: (value, flags & 3)
            for point, value, flags in conn.execute(
                "SELECT s.point, r.value, r.flags FROM latest x JOIN series s ON s.id = x.series "
                "JOIN readings r ON r.seq = x.seq WHERE s.device = 'holey'"
            )
        }
    finally:
        conn.close()
    assert gw.stop(timeout=40) == 0
    assert_no_panic(gw.stderr())

    settled = [r for r in line.requests(frames) if settle_until <= r["t"] < window_end]
    rejected = [a for a in line.answers_in(frames) if "exc" in a and settle_until <= a["t"] < window_end]
    layout = sorted({(r["start"], r["count"]) for r in settled})
    shown = [f"{s}..{s + c - 1}" for s, c in layout]
    assert len(settled) >= 6, f"only {len(settled)} requests in {10 * INTERVAL_S:.1f} s of polling"
    assert not rejected, f"the settled plan still reads addresses the slave rejects: {rejected[:3]}"
    assert layout == [(0, 85), (88, 7)], (
        f"the settled plan reads {shown} per poll ({len(layout)} requests); the minimum that avoids "
        f"the hole 85..87 is 2: 0..84 and 88..94"
    )
    for a in ADDRESSES:
        assert latest.get(f"h{a}") == (UNIT * 1000 + a, 0), (a, latest.get(f"h{a}"))
