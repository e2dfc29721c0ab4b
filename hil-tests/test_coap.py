"""CoAP server against real peers: libcoap's client (`coap-client-notls`)
posting SenML JSON and CBOR packs (CBOR made by Python's cbor2), one large
enough to need Block1; the same confirmable message sent twice (stored
once, both answered); SIGKILL right after a 2.04 (the acknowledged
readings survive); a corpus of malformed datagrams (each rejected, the
server still answers); /.well-known/core; 4.15 and 4.13.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import subprocess
from pathlib import Path

import cbor2

from conftest import run_cli, run_query
from test_modbus_tcp import wait_until


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(port: int, extra: str = "") -> str:
    return f"""
[store]
commit_max_delay = "20ms"

[drivers.coap]
listen = ["127.0.0.1:{port}"]
max_payload = 16384
{extra}
"""


def client(port: int, path: str, *args: str, payload_file: Path | None = None, fmt: int = 110) -> subprocess.CompletedProcess:
    cmd = ["coap-client-notls", "-m", "post", "-t", str(fmt), *args]
    if payload_file:
        cmd += ["-f", str(payload_file)]
    cmd.append(f"coap://127.0.0.1:{port}{path}")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def latest(binary: Path, db: Path, device: str) -> dict[str, dict]:
    return {r["point"]: r for r in json.loads(run_query(binary, db, "latest", "--device", device).stdout)}


def count(binary: Path, db: Path, device: str, point: str) -> int:
    out = run_query(binary, db, "range", "--device", device, "--point", point, "--from", "0", "--limit", "100000")
    return len(json.loads(out.stdout))


def coap_status(binary: Path, state_dir: Path) -> dict:
    out = run_cli(binary, "devices", "--state-dir", str(state_dir), "--json")
    return json.loads(out.stdout)["coap"]


def con_post(mid: int, token: bytes, path: list[str], payload: bytes, fmt: int = 110) -> bytes:
    """A confirmable POST, encoded here so its message id is ours to repeat."""
    out = bytearray([0x40 | len(token), 0x02]) + struct.pack(">H", mid) + token
    last = 0
    options = [(11, p.encode()) for p in path] + [(12, bytes([fmt]) if fmt < 256 else struct.pack(">H", fmt))]
    for number, value in options:
        delta, last = number - last, number
        assert delta < 13 and len(value) < 13
        out.append(delta << 4 | len(value))
        out += value
    return bytes(out + b"\xff" + payload)


def test_senml_json_and_cbor_with_block1(gateway_bin, spawn, write_config, state_dir, tmp_path):
    port = free_udp_port()
    gw = spawn(gateway_bin, write_config(config(port)), state_dir)
    gw.wait_ready(timeout=30)
    db = state_dir / "gateway.db"

    pack = [{"bn": "urn:dev:mac:0024be:", "bt": 1_700_000_000, "n": "temp", "u": "Cel", "v": 21.5},
            {"n": "door", "vb": True, "t": 1}]
    (tmp_path / "pack.json").write_text(json.dumps(pack))
    out = client(port, "/v1/devices/room-1", payload_file=tmp_path / "pack.json")
    assert out.returncode == 0 and "stored 2" in out.stdout, (out.stdout, out.stderr)
    # The path names the device; a point is the record's resolved name, bn + n
    # (RFC 8428 §4.5.1; test_senml_conformance.py).
    room = latest(gateway_bin, db, "room-1")
    assert set(room) == {"urn:dev:mac:0024be:temp", "urn:dev:mac:0024be:door"}, sorted(room)
    temp, door = room["urn:dev:mac:0024be:temp"], room["urn:dev:mac:0024be:door"]
    assert temp["value"] == 21.5 and temp["unit"] == "Cel"
    assert temp["ts"] == 1_700_000_000 * 10**9 and door["value"] is True
    assert temp["source"] == "coap://127.0.0.1/v1/devices/room-1"

    # SenML CBOR with the integer labels (-2 bn, 0 n, 2 v, 1 u, 8 vd).
    cbor_pack = [{-2: "line:", 0: "force", 1: "kN", 2: 812.25}, {0: "raw", 8: b"\x01\x02\x03"}]
    (tmp_path / "pack.cbor").write_bytes(cbor2.dumps(cbor_pack))
    out = client(port, "/v1/devices/press-1", payload_file=tmp_path / "pack.cbor", fmt=112)
    assert out.returncode == 0 and "stored 2" in out.stdout, (out.stdout, out.stderr)
    press = latest(gateway_bin, db, "press-1")
    assert set(press) == {"line:force", "line:raw"}, sorted(press)
    assert press["line:force"]["value"] == 812.25 and press["line:force"]["unit"] == "kN"
    assert press["line:raw"]["kind"] == "bytes"

    # A pack of 300 records (~9 KB) sent in 64-byte blocks: Block1.
    big = [{"bn": "", "n": f"p{i}", "v": i * 0.5} for i in range(300)]
    (tmp_path / "big.json").write_text(json.dumps(big))
    assert (tmp_path / "big.json").stat().st_size > 1024
    out = client(port, "/v1/devices/big-1", "-b", "64", payload_file=tmp_path / "big.json")
    assert out.returncode == 0 and "stored 300" in out.stdout, (out.stdout, out.stderr)
    big_rows = latest(gateway_bin, db, "big-1")
    assert len(big_rows) == 300 and big_rows["p299"]["value"] == 149.5

    # /.well-known/core lists the resource.
    core = subprocess.run(["coap-client-notls", "-m", "get", f"coap://127.0.0.1:{port}/.well-known/core"],
                          capture_output=True, text=True, timeout=30)
    assert "</v1/devices/{device}>" in core.stdout and 'ct="110 112 50 0"' in core.stdout

    # Unsupported content format: 4.15; a payload over max_payload (16 KiB): 4.13.
    (tmp_path / "x.xml").write_text("<x/>")
    out = client(port, "/v1/devices/room-1", payload_file=tmp_path / "x.xml", fmt=41)
    assert "4.15" in out.stdout + out.stderr, out
    huge = [{"bn": "", "n": f"p{i}", "v": i} for i in range(2000)]
    (tmp_path / "huge.json").write_text(json.dumps(huge))
    out = client(port, "/v1/devices/huge-1", "-b", "1024", payload_file=tmp_path / "huge.json")
    assert "4.13" in out.stdout + out.stderr, out
    assert not latest(gateway_bin, db, "huge-1")
    status = coap_status(gateway_bin, state_dir)
    assert status["rejected"]["unsupported_format"] == 1 and status["rejected"]["too_large"] >= 1
    assert gw.stop() == 0


def test_a_retransmitted_confirmable_message_is_stored_once(gateway_bin, spawn, write_config, state_dir):
    port = free_udp_port()
    gw = spawn(gateway_bin, write_config(config(port)), state_dir)
    gw.wait_ready(timeout=30)
    db = state_dir / "gateway.db"
    datagram = con_post(0x1234, b"\xab\xcd", ["v1", "devices", "dup-1"],
                        json.dumps([{"n": "count", "v": 7}]).encode())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.bind(("127.0.0.1", 0))
        answers = []
        for _ in range(2):
            s.sendto(datagram, ("127.0.0.1", port))
            answers.append(s.recvfrom(2048)[0])
    for a in answers:
        assert a[0] >> 4 & 3 == 2, "an ACK"  # type ACK
        assert a[1] == 0x44, "2.04 Changed"
        assert struct.unpack(">H", a[2:4])[0] == 0x1234 and a[4:6] == b"\xab\xcd"
    assert answers[0] == answers[1], "the retransmission is answered from the cache"
    assert count(gateway_bin, db, "dup-1", "count") == 1
    assert coap_status(gateway_bin, state_dir)["duplicates"] == 1
    assert gw.stop() == 0


def test_acknowledged_readings_survive_sigkill(gateway_bin, spawn, write_config, state_dir, tmp_path):
    port = free_udp_port()
    cfg = write_config(config(port).replace('commit_max_delay = "20ms"', 'commit_max_delay = "200ms"'))
    db = state_dir / "gateway.db"
    for round_ in range(5):
        gw = spawn(gateway_bin, cfg, state_dir)
        gw.wait_ready(timeout=30)
        payload = tmp_path / f"r{round_}.json"
        payload.write_text(json.dumps([{"n": "v", "v": round_}, {"n": f"only{round_}", "v": 1}]))
        out = client(port, "/v1/devices/kill-1", payload_file=payload)
        assert out.returncode == 0 and "stored 2" in out.stdout, (out.stdout, out.stderr)
        gw.sigkill()  # at once after the 2.04
        gw.wait_exit(timeout=30)
    gw = spawn(gateway_bin, cfg, state_dir)
    gw.wait_ready(timeout=30)
    rows = latest(gateway_bin, db, "kill-1")
    assert {f"only{i}" for i in range(5)} <= set(rows), rows.keys()
    assert count(gateway_bin, db, "kill-1", "v") == 5
    assert gw.stop() == 0


def test_malformed_datagrams_are_rejected_and_the_server_goes_on(gateway_bin, spawn, write_config, state_dir):
    port = free_udp_port()
    gw = spawn(gateway_bin, write_config(config(port)), state_dir)
    gw.wait_ready(timeout=30)
    rng = random.Random(7)
    good = con_post(1, b"\x01", ["v1", "devices", "fz-1"], b'[{"n":"x","v":1}]')
    corpus = [
        b"", b"\x40", b"\x40\x02\x00",                # truncated headers
        b"\x80\x02\x00\x01",                          # version 2
        b"\x49\x02\x00\x01" + b"\x00" * 4,            # token length 9 (reserved)
        b"\x40\x02\x00\x01\xf0",                      # option delta 15 (reserved)
        b"\x40\x02\x00\x01\xd1",                      # extended delta missing
        b"\x40\x02\x00\x01\xff",                      # payload marker, no payload
        good[:-5], good[:9],                          # cut short
        con_post(2, b"", ["v1", "devices", "fz-1"], b"[{not json"),
        con_post(3, b"", ["v1", "devices", "fz-1"], b"\xff\xfe", fmt=112),  # bad CBOR
        con_post(4, b"", ["v1", "devices", "fz-1"], b'[{"v": 1}]'),       # no name
        con_post(5, b"", ["v1", "devices", "fz-1"], b"1", fmt=60),        # unknown format
    ] + [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64))) for _ in range(200)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.05)
        for d in corpus:
            s.sendto(d, ("127.0.0.1", port))
            try:
                reply = s.recvfrom(2048)[0]
                # Answers to bad input are a Reset or an error class, never 2.xx.
                assert reply[0] >> 4 & 3 == 3 or reply[1] >> 5 >= 4, reply.hex()
            except TimeoutError:
                pass
        # A fresh message id: the cut-short copies above used 1, and a
        # repeated id from the same endpoint is (rightly) a retransmission.
        s.settimeout(5)
        s.sendto(con_post(999, b"\x01", ["v1", "devices", "fz-1"], b'[{"n":"x","v":1}]'), ("127.0.0.1", port))
        while True:
            reply = s.recvfrom(2048)[0]
            if struct.unpack(">H", reply[2:4])[0] == 999:
                break
    assert reply[1] == 0x44, "the server still answers"
    status = coap_status(gateway_bin, state_dir)
    assert status["rejected"].get("malformed", 0) >= 9, status
    assert gw.alive()
    assert gw.stop() == 0


OBSERVABLE = Path(__file__).parent / "peers" / "coap_observable.py"


def start_device(port: int, start: float) -> subprocess.Popen:
    import sys

    proc = subprocess.Popen([sys.executable, str(OBSERVABLE), str(port), str(start)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout.readline().strip() == "listening", "the aiocoap device did not start"
    return proc


def test_the_gateway_observes_a_device_and_re_registers_after_it_restarts(
    gateway_bin, spawn, write_config, state_dir
):
    device_port = free_udp_port()
    device = start_device(device_port, 100.0)
    extra = f"""
[[drivers.coap.observe]]
address = "127.0.0.1:{device_port}"
path = "/sensors/temp"
device = "boiler-2"
point = "temp"
grace = "1s"
retry = "1s"
"""
    try:
        gw = spawn(gateway_bin, write_config(config(free_udp_port(), extra)), state_dir)
        gw.wait_ready(timeout=30)
        db = state_dir / "gateway.db"
        # Notifications flow: several values, each newer than the last.
        wait_until(lambda: db.exists() and count(gateway_bin, db, "boiler-2", "temp") >= 4, 15,
                   "notifications from the observed resource")
        row = latest(gateway_bin, db, "boiler-2")["temp"]
        assert 100.0 <= row["value"] < 200 and row["source"] == f"coap://127.0.0.1:{device_port}/sensors/temp"

        # The device restarts and forgets its observers: the gateway notices
        # the silence (Max-Age 2 s + grace 1 s) and registers again.
        device.kill()
        device.wait(timeout=10)
        device = start_device(device_port, 500.0)
        wait_until(lambda: latest(gateway_bin, db, "boiler-2")["temp"]["value"] >= 500, 20,
                   "notifications again after the device restarted")
        assert coap_status(gateway_bin, state_dir)["notifications"] >= 5
        assert gw.stop() == 0
    finally:
        device.kill()
