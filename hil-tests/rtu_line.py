"""A Modbus RTU line with faults, for the hil-tests and the RTU bench:

    gateway ⇄ socat pty pair ⇄ peers/modbus_rtu_proxy.py ⇄ socat pty pair ⇄ pymodbus slaves

`RtuLine(tmp_path, ["1:counter", "2"], rules=[...])` starts the two pty
pairs, the slaves (peers/modbus_rtu_slaves.py) and the proxy;
`line.gateway_end` is the serial path to put in the gateway's config.
`line.set_rules([...])` changes the faults while it runs; `line.frames()`
reads the proxy's frame log (see the proxy's docstring for the fields).
The line is 8N2: this kernel's ptys refuse even parity (and 7 data bits).

Helpers over the log: `requests()`, `answers_in()`, `answers_out()`, and
`gaps_after(pick)` (from a frame handed to the gateway to the next request
the gateway sent). `DirectLine` is the same without the proxy (slaves on
a plain pty pair). With `baud_model=9600` the proxy hands frames on at the
speed of a 9600-baud line (see the proxy), and `transaction_s()` is what
one transaction costs there at best: the RTU bench's yardstick.
"""

from __future__ import annotations

import json
import os
import selectors
import statistics
import subprocess
import sys
import time
from pathlib import Path

PEERS = Path(__file__).parent / "peers"
PROXY = PEERS / "modbus_rtu_proxy.py"
SLAVES = PEERS / "modbus_rtu_slaves.py"


def _pty_pair(a: Path, b: Path) -> subprocess.Popen:
    socat = subprocess.Popen(
        ["socat", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 10
    while not (a.exists() and b.exists()):
        if socat.poll() is not None:
            raise AssertionError(f"socat exited: {socat.stderr.read().decode(errors='replace')}")
        if time.monotonic() > deadline:
            socat.kill()
            raise AssertionError("socat made no pty pair")
        time.sleep(0.05)
    return socat


def _expect_line(proc: subprocess.Popen, want: str, what: str, timeout: float = 30) -> None:
    """Reads proc's first stdout line (bounded wait, the machine may be loaded)."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    ready = sel.select(timeout)
    sel.close()
    line = proc.stdout.readline().strip() if ready else ""
    if line != want:
        proc.kill()
        err = proc.stderr.read() if proc.stderr else ""
        raise AssertionError(f"{what} did not start (said {line!r}):\n{err}")


class RtuLine:
    def __init__(
        self,
        directory: Path,
        units: list[str],
        *,
        baud: int = 38400,
        rules: list[dict] | None = None,
        baud_model: int = 0,
        char_bits: int = 11,
        stopbits: int = 2,
    ) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.baud = baud
        self.gateway_end = self.dir / "ttyGW"
        self.proxy_master = self.dir / "ttyPXM"
        self.proxy_slave = self.dir / "ttyPXS"
        self.slave_end = self.dir / "ttyDEV"
        self.log_path = self.dir / "frames.jsonl"
        self.control_path = self.dir / "faults.json"
        self.procs: list[subprocess.Popen] = []
        try:
            self.procs.append(_pty_pair(self.gateway_end, self.proxy_master))
            self.procs.append(_pty_pair(self.proxy_slave, self.slave_end))
            self.set_rules(rules or [])
            slaves = subprocess.Popen(
                [sys.executable, str(SLAVES), str(self.slave_end), str(baud), "--stopbits", str(stopbits), *units],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                # pymodbus logs every frame: a pipe nobody reads would fill and stall it.
                stderr=subprocess.DEVNULL,
                text=True,
            )
            self.procs.append(slaves)
            _expect_line(slaves, "listening", "the pymodbus RTU slaves")
            proxy = subprocess.Popen(
                [
                    sys.executable,
                    str(PROXY),
                    "--master", str(self.proxy_master),
                    "--slave", str(self.proxy_slave),
                    "--log", str(self.log_path),
                    "--control", str(self.control_path),
                    "--stopbits", str(stopbits),
                    "--char-bits", str(char_bits),
                    *(["--baud-model", str(baud_model)] if baud_model else []),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=open(self.dir / "proxy.stderr", "w"),
                text=True,
            )
            self.procs.append(proxy)
            _expect_line(proxy, "ready", "the RTU proxy")
            time.sleep(0.5)  # pymodbus opens its port after printing "listening"
        except BaseException:
            self.close()
            raise

    # -- control -------------------------------------------------------------

    def set_rules(self, rules: list[dict]) -> None:
        """Replaces the proxy's fault rules (atomically; picked up within ~20 ms)."""
        tmp = self.control_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"rules": rules}))
        os.replace(tmp, self.control_path)

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()

    # -- the log -------------------------------------------------------------

    def frames(self) -> list[dict]:
        if not self.log_path.exists():
            return []
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line being written
        return out

    def requests(self, frames: list[dict] | None = None) -> list[dict]:
        """Requests as the gateway sent them (read by the proxy)."""
        return [f for f in (frames if frames is not None else self.frames()) if f.get("dir") == "m2s" and f["ev"] == "rx"]

    def answers_in(self, frames: list[dict] | None = None) -> list[dict]:
        """Answers as the slaves gave them."""
        return [f for f in (frames if frames is not None else self.frames()) if f.get("dir") == "s2m" and f["ev"] == "rx"]

    def answers_out(self, frames: list[dict] | None = None) -> list[dict]:
        """Frames handed to the gateway (after faults), t = just before the write."""
        return [f for f in (frames if frames is not None else self.frames()) if f.get("dir") == "s2m" and f["ev"] == "tx"]

    def gaps_after(self, pick, frames: list[dict] | None = None) -> list[float]:
        """For every frame handed to the gateway that `pick(frame)` selects:
        seconds from it to the next request the gateway sent."""
        frames = frames if frames is not None else self.frames()
        reqs = [f["t"] for f in self.requests(frames)]
        gaps = []
        for a in self.answers_out(frames):
            if not pick(a):
                continue
            later = [t for t in reqs if t > a["t"]]
            if later:
                gaps.append(later[0] - a["t"])
        return gaps


class DirectLine:
    """The slaves on one end of a plain socat pty pair, the gateway's end
    `gateway_end`: no proxy, no log."""

    def __init__(self, directory: Path, units: list[str], *, baud: int = 38400, stopbits: int = 2) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.gateway_end = directory / "ttyGW"
        self.slave_end = directory / "ttyDEV"
        self.procs: list[subprocess.Popen] = []
        try:
            self.procs.append(_pty_pair(self.gateway_end, self.slave_end))
            slaves = subprocess.Popen(
                [sys.executable, str(SLAVES), str(self.slave_end), str(baud), "--stopbits", str(stopbits), *units],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            self.procs.append(slaves)
            _expect_line(slaves, "listening", "the pymodbus RTU slaves")
            time.sleep(0.5)
        except BaseException:
            self.close()
            raise

    close = RtuLine.close


def transaction_s(request_bytes: int, answer_bytes: int, baud: int, char_bits: int = 11) -> float:
    """The shortest time one transaction takes on a real line: both frames
    at `baud` and, after each, the 3.5-character silence (the slave's before
    it answers, the master's before its next request); 1.75 ms each above
    19,200 baud. A read of N registers is an 8-byte request and a
    5 + 2N-byte answer. The RTU bench reports polls/s against 1 / this."""
    char = char_bits / baud
    silence = 0.00175 if baud > 19200 else 3.5 * char
    return (request_bytes + answer_bytes) * char + 2 * silence


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
