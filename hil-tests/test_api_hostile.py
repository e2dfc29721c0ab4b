"""The API under hostile load (issue #15, items 1-4): request parameters
that overflow, heavy answers from many clients at once, clients that hold
connections without a token (idle, slow bodies, answers never read, a huge
Content-Length), and the control socket held by idle connections.

The gateway runs with a point of 100,000 readings one second apart (loaded
into its database before the start), the API with a small connection
limit and short timeouts, and anchoring off (nothing else loads the
machine). Memory is read from the process (VmHWM, VmRSS).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from conftest import run_cli
from test_modbus_tcp import free_port

TOKEN = "bgw_hostile_test_token_0123456789abcdef"
T0 = 1_767_225_600_000_000_000
READINGS = 100_000
MAX_CONNECTIONS = 8
TIMEOUT_S = 3


def config(port: int) -> str:
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    return f"""
[anchor]
enabled = false

[store.retention]
max_size = "off"

[api]
listen = "127.0.0.1:{port}"
max_connections = {MAX_CONNECTIONS}
header_timeout = "{TIMEOUT_S}s"
body_timeout = "{TIMEOUT_S}s"
write_timeout = "{TIMEOUT_S}s"
max_requests_per_connection = 5
tokens = [{{ name = "test", scopes = ["read", "write"], sha256 = "{digest}" }}]
"""


def load_point(db: Path) -> None:
    """One f64 point, `READINGS` readings a second apart, written as the
    store writes them (schema 3) into a database the gateway created."""
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("INSERT INTO series (id, device, point) VALUES (1, 'd', 'p')")
        conn.execute("INSERT INTO labels (id, unit, source) VALUES (1, '', 'sim://load')")
        f64_good = 3 << 2
        conn.executemany(
            "INSERT INTO readings (seq, series, ts, label, flags, value) VALUES (?, 1, ?, 1, ?, ?)",
            ((i + 1, T0 + i * 1_000_000_000, f64_good, float(i % 1000)) for i in range(READINGS)),
        )
        conn.execute("INSERT INTO latest (series, seq) VALUES (1, ?)", (READINGS,))
        conn.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (READINGS + 1,))
    conn.close()


@pytest.fixture
def api(gateway_bin, release_bin, spawn, write_config, state_dir):
    """(gateway, port): a release gateway serving the loaded point."""
    port = free_port()
    cfg = write_config(config(port))
    # A first start creates the schema.
    gw = spawn(release_bin, cfg, state_dir)
    gw.wait_ready(timeout=30)
    assert gw.stop(timeout=30) == 0, gw.stderr()
    load_point(state_dir / "gateway.db")
    gw = spawn(release_bin, cfg, state_dir)
    gw.wait_ready(timeout=30)
    return gw, port


def request(port: int, path: str, timeout: float = 30, method: str = "GET", body: bytes | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Authorization": f"Bearer {TOKEN}"})
        answer = conn.getresponse()
        return answer.status, answer.read(), dict(answer.getheaders())
    finally:
        conn.close()


def memory_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(field)


AGGREGATE = "/v1/devices/d/points/p/aggregate"


def test_parameters_that_overflow_are_refused(api):
    gw, port = api
    # (to - from) / bucket wrapped in i64 and let 179,161 buckets through.
    for query in (
        "from=-106751d&to=9223372036854775807&bucket=1ms",
        "from=-9223372036854775808&to=9223372036854775807&bucket=1ms",
        "from=-106751d&to=now&bucket=1ms",
        "from=0&to=9223372036854775807&bucket=10000000000000d",
    ):
        status, body, _ = request(port, f"{AGGREGATE}?{query}")
        assert status == 400, f"{query}: {status} {body[:200]!r}"
        error = json.loads(body)
        assert error["error"] == "bad_parameter" and error["parameter"] in ("bucket", "from", "to"), error
    status, body, _ = request(port, "/v1/devices/d/points/p/range?limit=18446744073709551617")
    assert status == 400, body[:200]


def test_heavy_answers_from_many_clients_stay_within_memory(api):
    """As many clients as the connection limit allows ask for 100,000
    buckets each at once: each answer is streamed, and heavy queries wait
    their turn (`heavy_queries`), so the gateway's memory does not grow
    with them (it went from 27 to 860 MiB with four)."""
    gw, port = api
    path = f"{AGGREGATE}?from={T0}&to={T0 + READINGS * 1_000_000_000}&bucket=1s"
    before = memory_kb(gw.pid, "VmRSS")
    results: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def client() -> None:
        try:
            status, body, _ = request(port, path, timeout=120)
            results.append((status, len(json.loads(body)["buckets"]) if status == 200 else -1))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    clients = MAX_CONNECTIONS
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert results == [(200, READINGS)] * clients, results
    peak = memory_kb(gw.pid, "VmHWM")
    grew_mb = (peak - before) / 1024
    print(f"RSS before {before / 1024:.1f} MB, peak {peak / 1024:.1f} MB (+{grew_mb:.1f} MB) for {clients} clients")
    assert grew_mb < 150, f"{clients} heavy answers took the gateway from {before / 1024:.0f} to {peak / 1024:.0f} MB"


def open_idle(port: int, n: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(n)]


def test_idle_and_slow_clients_never_lock_health_out(api):
    gw, port = api
    # Every slot held by a client that sends nothing...
    idle = open_idle(port, MAX_CONNECTIONS)
    # ...and by keep-alive clients that asked once and stay.
    kept = []
    for _ in range(MAX_CONNECTIONS):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/v1/health")
        conn.getresponse().read()
        kept.append(conn)
    started = time.monotonic()
    status, body, _ = request(port, "/v1/health", timeout=20)
    assert status == 200, body
    status, body, _ = request(port, "/v1/ready", timeout=20)
    assert status == 200, body
    waited = time.monotonic() - started
    print(f"health and ready answered in {waited:.2f} s with {2 * MAX_CONNECTIONS} connections held")
    # The idle ones are closed by the gateway after the header timeout.
    for s in idle:
        assert closed_by_server(s, within=TIMEOUT_S * 5), "an idle connection was kept"
        s.close()
    for c in kept:
        c.close()


def closed_by_server(s: socket.socket, within: float) -> bool:
    """Whether the gateway closes `s` within `within` seconds (reading and
    discarding whatever it sends first)."""
    s.settimeout(within)
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            data = s.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


def test_a_slow_body_is_cut_off(api):
    gw, port = api
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(
        b"POST /v1/devices/d/points/p/write HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n".encode()
        + b"Content-Length: 100\r\n\r\n{"
    )

    def trickle():
        for _ in range(40):
            try:
                s.send(b" ")
            except OSError:
                return
            time.sleep(1)

    threading.Thread(target=trickle, daemon=True).start()
    assert closed_by_server(s, within=TIMEOUT_S * 5), "a body trickling a byte a second held its connection"
    s.close()


def test_a_client_that_never_reads_its_answer_is_cut_off(api):
    gw, port = api
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(
        f"GET {AGGREGATE}?from={T0}&to={T0 + READINGS * 1_000_000_000}&bucket=1s HTTP/1.1\r\n"
        f"Host: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
    )
    # Never read; after the write timeout the gateway gives up on it.
    time.sleep(TIMEOUT_S * 4)
    assert closed_by_server(s, within=TIMEOUT_S * 5), "a client that never reads held its connection"
    s.close()


def test_a_huge_content_length_is_refused_at_once(api):
    gw, port = api
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(
        b"POST /v1/devices/d/points/p/write HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {TOKEN}\r\n".encode()
        + b"Content-Length: 10000000000\r\n\r\n{"
    )
    s.settimeout(TIMEOUT_S * 2)
    head = s.recv(4096).decode(errors="replace")
    assert head.startswith("HTTP/1.1 413"), head
    s.close()
    # Without a token too: the size is refused before anything else.
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"POST /v1/health HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n{")
    s.settimeout(TIMEOUT_S * 2)
    assert s.recv(4096).decode(errors="replace").startswith("HTTP/1.1 413")
    s.close()


def test_keep_alive_is_limited(api):
    gw, port = api
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    closes = []
    for _ in range(5):
        conn.request("GET", "/v1/health")
        answer = conn.getresponse()
        answer.read()
        closes.append(answer.getheader("connection", "").lower())
    assert all(c != "close" for c in closes[:4]), closes
    assert closes[4] == "close", f"the 5th answer on one connection must close it: {closes}"
    conn.close()


def test_idle_control_socket_connections_do_not_lock_the_cli_out(gateway_bin, api, state_dir):
    gw, port = api
    sock_path = state_dir / "control.sock"
    held = []
    for _ in range(17):
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(sock_path))
        held.append(s)
    started = time.monotonic()
    out = run_cli(gateway_bin, "devices", "--state-dir", str(state_dir), "--json", timeout=60)
    took = time.monotonic() - started
    assert out.returncode == 0, f"{out.returncode}: {out.stderr}"
    assert json.loads(out.stdout)["ok"] is True
    print(f"`devices` answered in {took:.2f} s with 17 idle control connections")
    for s in held:
        s.close()
