"""Writes: `biota-gateway write DEVICE POINT VALUE` into a running gateway,
which writes a pymodbus TCP server's registers and coils; `mbpoll`
(libmodbus, an independent Modbus master) reads them back.

Covers every register type the map can write (u16 through a profile's
scale, i16, f32 in two word orders, i32, u64, a string, a coil, the
"multiple" function code for one register), read-back verification, the
refusals (read-only area, point not marked writable, value out of range
or not a multiple of the scale, unknown device or point) with their
exit codes, the point re-read at once after a write, the per-device
counters from `biota-gateway devices`, and the gateway not running.
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import run_cli, run_query
from test_modbus_tcp import Server, free_port, wait_until

POINTS = [
    '{ name = "speed_raw", area = "holding_register", address = 0, type = "u16", writable = true, verify = true }',
    '{ name = "offset", area = "holding_register", address = 1, type = "i16", writable = true }',
    '{ name = "pressure_sp", area = "holding_register", address = 2, type = "f32", writable = true }',
    '{ name = "flow_sp", area = "holding_register", address = 4, type = "f32", order = "CDAB", writable = true }',
    '{ name = "target_count", area = "holding_register", address = 6, type = "i32", writable = true }',
    '{ name = "recipe", area = "holding_register", address = 8, type = "string", length = 4, writable = true }',
    '{ name = "energy_limit", area = "holding_register", address = 12, type = "u64", order = "DCBA", writable = true }',
    '{ name = "mode", area = "holding_register", address = 20, type = "u16", writable = true, write_multiple = true }',
    '{ name = "locked", area = "holding_register", address = 21, type = "u16" }',
    '{ name = "motor_on", area = "coil", address = 0, type = "bool", writable = true, verify = true }',
    '{ name = "temperature", area = "input_register", address = 30, type = "i16" }',
]


def gateway_config(port: int) -> str:
    points = ",\n  ".join(POINTS)
    return f"""
[store]
commit_max_delay = "20ms"

[profiles.press.points.speed_raw]
name = "speed_setpoint"
scale = 0.1
unit = "m/min"

[[drivers.modbus.tcp]]
address = "127.0.0.1:{port}"
timeout = "500ms"
devices = [{{ id = "press-1", unit = 1, map = "press", profile = "press" }}]

[drivers.modbus.maps.press]
[[drivers.modbus.maps.press.groups]]
name = "slow"
# Long on purpose: a written point must be re-read at once, not in 30 s.
interval = "30s"
points = [
  {points},
]

[[drivers.sim.devices]]
id = "sim-1"
points = [{{ name = "x", waveform = "counter", rate = 1 }}]
"""


@pytest.fixture
def pymodbus(tmp_path: Path):
    layout = {
        "holding": {str(a): 0 for a in range(0, 22)},
        "coils": {"0": False},
        "input": {"30": 215},
    }
    layout_file = tmp_path / "layout.json"
    layout_file.write_text(json.dumps(layout))
    server = Server(free_port(), layout_file)
    server.start()
    yield server
    server.kill()


def mbpoll(port: int, ref: int, kind: str, count: int = 1, *flags: str) -> list[str]:
    """Reads with mbpoll once (0-based references); returns the values shown."""
    cmd = ["mbpoll", "-m", "tcp", "-p", str(port), "-a", "1", "-0", "-1", "-t", kind,
           "-r", str(ref), "-c", str(count), *flags, "127.0.0.1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, (cmd, out.stdout, out.stderr)
    return re.findall(r"^\[\d+\]:\s+(\S+)", out.stdout, flags=re.M)


def write(binary: Path, state_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli(binary, "write", "--state-dir", str(state_dir), "--json", *args)


def written(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, (result.stdout, result.stderr)
    answer = json.loads(result.stdout)
    assert answer["ok"], answer
    return answer["write"]


def refused(result: subprocess.CompletedProcess, kind: str) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    answer = json.loads(result.stdout)
    assert answer["ok"] is False and answer["error"]["kind"] == kind, answer
    assert f"error ({kind})" in result.stderr
    return answer["error"]["message"]


def test_cli_writes_read_back_by_mbpoll(gateway_bin, pymodbus, spawn, write_config, state_dir):
    port = pymodbus.port
    config = write_config(gateway_config(port))
    check = run_cli(gateway_bin, "check-config", str(config))
    assert check.returncode == 0, check.stderr
    gw = spawn(gateway_bin, config, state_dir)
    gw.wait_ready(timeout=30)
    assert (state_dir / "control.sock").is_socket()
    db = state_dir / "gateway.db"

    # Through the profile: 12.5 m/min is register value 125; verified by the map.
    w = written(write(gateway_bin, state_dir, "press-1", "speed_setpoint", "12.5"))
    assert (w["raw_point"], w["raw_value"], w["sent"]) == ("speed_raw", "125", {"registers": [125]})
    assert w["operation"] == "write_single_register (6)" and w["target"] == "holding_register 0"
    assert w["verified"] is True
    assert mbpoll(port, 0, "4") == ["125"]
    # The point is re-read at once (its group's interval is 30 s) and stored scaled.
    wait_until(
        lambda: any(r["point"] == "speed_setpoint" and r["value"] == 12.5
                    for r in json.loads(run_query(gateway_bin, db, "latest", "--device", "press-1").stdout)),
        timeout=5,
        what="the written setpoint read back into the store",
    )

    w = written(write(gateway_bin, state_dir, "press-1", "offset", "-42"))
    assert w["sent"] == {"registers": [65536 - 42]}
    assert int(mbpoll(port, 1, "4")[0]) % 65536 == 65536 - 42

    w = written(write(gateway_bin, state_dir, "--verify", "press-1", "pressure_sp", "123.25"))
    assert w["operation"] == "write_multiple_registers (16)" and w["target"] == "holding_register 2..3"
    assert w["verified"] is True
    assert float(mbpoll(port, 2, "4:float", 1, "-B")[0]) == 123.25  # -B: big-endian words (ABCD)

    written(write(gateway_bin, state_dir, "press-1", "flow_sp", "-7.5"))
    assert float(mbpoll(port, 4, "4:float")[0]) == -7.5  # mbpoll's default: low word first (CDAB)

    written(write(gateway_bin, state_dir, "press-1", "target_count", "-2000000000"))
    assert int(mbpoll(port, 6, "4:int", 1, "-B")[0]) == -2_000_000_000

    w = written(write(gateway_bin, state_dir, "press-1", "recipe", "007-AB"))
    regs = [int(v, 16) for v in mbpoll(port, 8, "4:hex", 4)]
    assert b"".join(struct.pack(">H", r) for r in regs) == b"007-AB\0\0"

    value = 12_345_678_901_234_567
    written(write(gateway_bin, state_dir, "press-1", "energy_limit", str(value)))
    regs = [int(v, 16) for v in mbpoll(port, 12, "4:hex", 4)]
    # DCBA: the registers, high byte first, are the value's little-endian bytes.
    assert b"".join(struct.pack(">H", r) for r in regs) == value.to_bytes(8, "little")

    w = written(write(gateway_bin, state_dir, "press-1", "mode", "3"))
    assert w["operation"] == "write_multiple_registers (16)"
    assert mbpoll(port, 20, "4") == ["3"]

    w = written(write(gateway_bin, state_dir, "press-1", "motor_on", "on"))
    assert w["operation"] == "write_single_coil (5)" and w["verified"] is True
    assert mbpoll(port, 0, "0") == ["1"]
    written(write(gateway_bin, state_dir, "press-1", "motor_on", "false"))
    assert mbpoll(port, 0, "0") == ["0"]

    # Refusals: nothing is written, the exit code is 1 and the reason is named.
    assert "input_register" in refused(write(gateway_bin, state_dir, "press-1", "temperature", "1"), "not_writable")
    assert "not marked writable" in refused(write(gateway_bin, state_dir, "press-1", "locked", "1"), "not_writable")
    refused(write(gateway_bin, state_dir, "press-1", "speed_setpoint", "7000"), "bad_value")  # 70000 > u16
    refused(write(gateway_bin, state_dir, "press-1", "speed_setpoint", "12.53"), "bad_value")  # not a 0.1 step
    refused(write(gateway_bin, state_dir, "press-1", "offset", "many"), "bad_value")
    refused(write(gateway_bin, state_dir, "press-1", "recipe", "TOO-LONG-NAME"), "bad_value")
    refused(write(gateway_bin, state_dir, "press-9", "offset", "1"), "unknown_device")
    refused(write(gateway_bin, state_dir, "press-1", "nope", "1"), "unknown_point")
    # The map's name of a renamed point would skip the profile's scaling: not a point.
    refused(write(gateway_bin, state_dir, "press-1", "speed_raw", "12"), "unknown_point")
    refused(write(gateway_bin, state_dir, "sim-1", "x", "1"), "read_only_device")
    assert mbpoll(port, 0, "4") == ["125"] and mbpoll(port, 21, "4") == ["0"]

    # Counters: every write and read is a request; nothing timed out.
    devices = json.loads(run_cli(gateway_bin, "devices", "--state-dir", str(state_dir), "--json").stdout)
    (press,) = [d for d in devices["devices"] if d["device"] == "press-1"]
    assert press["state"] == "online"
    assert press["writes"] == 10 and press["write_errors"] == 0, press
    assert press["timeouts"] == press["crc_errors"] == press["link_errors"] == 0, press
    assert press["requests"] >= 10 + 3  # writes, their read-backs, polls
    table = run_cli(gateway_bin, "devices", "--state-dir", str(state_dir))
    assert table.returncode == 0 and "press-1" in table.stdout and "online" in table.stdout

    assert gw.stop() == 0
    # The socket is gone with the gateway: the CLI says so, with its own exit code.
    assert not (state_dir / "control.sock").exists()
    down = run_cli(gateway_bin, "write", "--state-dir", str(state_dir), "press-1", "offset", "1")
    assert down.returncode == 69, down.stderr
    assert "cannot reach the gateway" in down.stderr


def test_a_malformed_control_request_gets_an_error_not_a_crash(
    gateway_bin, pymodbus, spawn, write_config, state_dir
):
    import socket

    gw = spawn(gateway_bin, write_config(gateway_config(pymodbus.port)), state_dir)
    gw.wait_ready(timeout=30)
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(state_dir / "control.sock"))
        f = s.makefile("rwb")
        for line in [b"not json\n", b'{"op":"reboot"}\n', b'{"op":"write","device":"press-1"}\n', b"x" * 70000 + b"\n"]:
            f.write(line)
            f.flush()
            answer = json.loads(f.readline())
            assert answer["ok"] is False and answer["error"]["kind"] == "bad_request", answer
    # Still serving.
    w = written(write(gateway_bin, state_dir, "press-1", "mode", "4"))
    assert w["sent"] == {"registers": [4]}
    assert gw.alive()
    assert gw.stop() == 0
