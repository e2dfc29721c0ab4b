"""A fault-injecting Modbus RTU line between a master (the gateway) and
real slaves (pymodbus), for the hil-tests and the RTU bench.

    gateway ⇄ pty pair 1 ⇄ this proxy ⇄ pty pair 2 ⇄ pymodbus slaves

    python modbus_rtu_proxy.py --master PTY --slave PTY --log FILE
        [--rules JSON | --control FILE] [--baud-model BAUD] [--char-bits 11]
        [--stopbits 2] [--gap-ms 5]

--master is the proxy's end of the gateway's pty pair, --slave its end of
the slaves' pair. Both are set raw, 8 data bits, no parity (ptys on this
kernel refuse even parity), --stopbits. Prints "ready" once both are open.

Frames are cut by their Modbus length (function code, byte count) and a
valid CRC; bytes that make no valid frame are passed on as one "garbled"
chunk once the line has been quiet for --gap-ms. Requests (master → slave)
are forwarded as they come unless a rule says otherwise; answers
(slave → master) go through the fault rules.

Every frame is logged, one JSON object per line, flushed at once, to
--log; "t" is time.monotonic() (CLOCK_MONOTONIC, comparable with the
test's own clock):

    {"t": 12.3456, "dir": "m2s", "ev": "rx", "seq": 7, "unit": 1, "fc": 3,
     "len": 8, "crc_ok": true, "start": 0, "count": 2, "hex": "..."}

- dir: "m2s" master → slave (requests), "s2m" slave → master (answers).
- ev: "rx" read by the proxy (t just after the read returned: never
  earlier than the sender's write); "tx" written on toward the other side
  (t just before the write: never later than the receiver can see it);
  "drop" swallowed by a rule.
- seq: frame number in its direction (rx); tx and drop carry the seq of the
  frame they stem from. Answers also carry "req" (the seq of the oldest
  request to their unit forwarded and not answered yet: the one they
  answer; older outstanding requests count as unanswered), "n_unit" (1-based index of this
  unit's answers) and "n" (index of all answers); "fault" names the rule
  applied to a tx or drop.
- Decoded where the function is 1..4, 15 or 16: "start" and "count" of a
  request; "regs" (function 3/4 answers) or "bits" count; "exc" of an
  exception answer.

Rules (a JSON object {"rules": [...]}, given with --rules or in the file
--control names, which is re-read whenever it changes) are tried in order;
the first that matches a frame is applied:

    {"action": "delay", "unit": 1, "nth": 4, "ms": 300}
        answer number 4 of unit 1 reaches the master 300 ms late.
    {"action": "drop", "unit": 1, "nth": [5, 6]}
        those answers are swallowed (the slave seems silent for them).
    {"action": "corrupt", "every": 5}          (or "rate": 0.05, "seed": 1)
        one byte of the answer is flipped (the first data byte, else the
        last CRC byte), so its CRC fails; length, unit and function stay.
    {"action": "wrong_unit", "unit": 1, "nth": 3, "as_unit": 2, "real_after_ms": 50}
        the master first gets a copy of the answer claiming to come from
        unit 2 (valid CRC), then the real answer 50 ms later
        (omit real_after_ms to send only the impostor).
    {"action": "silent", "unit": 3}
        requests to unit 3 are not forwarded (direction m2s), as if
        unplugged.

Selectors: "unit" (default: any); "nth" (an index or a list: per unit with
"unit", else over all answers); "every": K (indexes divisible by K);
"rate": p with "seed" (a seeded draw per candidate: deterministic);
"from": the first index a rule may apply to; "limit": how many times it
applies at most. Indexes count the answers the slaves give (valid frames),
from 1, since the proxy started, whatever happens to them.

--baud-model BAUD models the line's speed: a frame is handed on only when
its last character would have arrived at BAUD with --char-bits bits per
character (11 for 8N2 / 8E1), and the half-duplex line carries one frame
at a time (an overlap is logged as ev "collision"). Without it, frames
are forwarded as soon as they are complete.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import selectors
import sys
import termios
import time
import tty

# --------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------


def crc16(data: bytes) -> int:
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def with_crc(body: bytes) -> bytes:
    return body + crc16(body).to_bytes(2, "little")


def crc_ok(frame: bytes) -> bool:
    return len(frame) >= 4 and crc16(frame[:-2]) == int.from_bytes(frame[-2:], "little")


def expected_len(buf: bytes, from_master: bool) -> int | None:
    """Length of the frame at the start of buf: None if more bytes are
    needed to tell, -1 for a function this proxy does not know."""
    if len(buf) < 2:
        return None
    fc = buf[1]
    if from_master:
        if fc in (1, 2, 3, 4, 5, 6, 8):
            return 8
        if fc in (15, 16):
            return 9 + buf[6] if len(buf) >= 7 else None
        if fc in (7, 11, 12, 17):
            return 4
        if fc == 22:
            return 10
        if fc == 23:
            return 13 + buf[10] if len(buf) >= 11 else None
        return -1
    if fc & 0x80:
        return 5
    if fc in (1, 2, 3, 4, 12, 17, 23):
        return 5 + buf[2] if len(buf) >= 3 else None
    if fc in (5, 6, 8, 11, 15, 16):
        return 8
    if fc == 7:
        return 5
    if fc == 22:
        return 10
    return -1


def describe(frame: bytes, from_master: bool) -> dict:
    info: dict = {"len": len(frame), "hex": frame.hex(), "crc_ok": crc_ok(frame)}
    if len(frame) >= 2:
        info["unit"], info["fc"] = frame[0], frame[1]
    if not info["crc_ok"] or len(frame) < 4:
        return info
    fc = frame[1]
    if from_master:
        if fc in (1, 2, 3, 4, 15, 16) and len(frame) >= 8:
            info["start"] = int.from_bytes(frame[2:4], "big")
            info["count"] = int.from_bytes(frame[4:6], "big")
        elif fc in (5, 6) and len(frame) >= 8:
            info["start"] = int.from_bytes(frame[2:4], "big")
            info["count"] = 1
    else:
        if fc & 0x80:
            info["exc"] = frame[2]
        elif fc in (3, 4):
            data = frame[3:-2]
            info["regs"] = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data) - 1, 2)]
        elif fc in (1, 2):
            info["bytes"] = frame[2]
    return info


def corrupt(frame: bytes) -> bytes:
    """One byte flipped: the CRC fails, length, unit and function stay."""
    b = bytearray(frame)
    i = 3 if len(b) > 5 else len(b) - 1
    b[i] ^= 0x5A
    return bytes(b)


# --------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------


class Rule:
    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.action = spec["action"]
        if self.action not in ("delay", "drop", "corrupt", "wrong_unit", "silent", "pass"):
            raise ValueError(f"unknown action {self.action!r}")
        self.unit = spec.get("unit")
        nth = spec.get("nth")
        self.nth = None if nth is None else set(nth if isinstance(nth, list) else [nth])
        self.every = spec.get("every")
        self.rate = spec.get("rate")
        self.random = random.Random(spec.get("seed", 0))
        self.first = spec.get("from", 1)
        self.limit = spec.get("limit")
        self.applied = 0

    @property
    def on_requests(self) -> bool:
        return self.action == "silent"

    def matches(self, unit: int | None, n_unit: int, n_all: int) -> bool:
        if self.unit is not None and unit != self.unit:
            return False
        if self.limit is not None and self.applied >= self.limit:
            return False
        index = n_unit if self.unit is not None else n_all
        if index < self.first:
            return False
        if self.nth is not None and index not in self.nth:
            return False
        if self.every is not None and index % int(self.every) != 0:
            return False
        if self.rate is not None and self.random.random() >= float(self.rate):
            return False
        self.applied += 1
        return True


def load_rules(text: str) -> list[Rule]:
    data = json.loads(text) if text.strip() else {}
    specs = data.get("rules", []) if isinstance(data, dict) else data
    return [Rule(s) for s in specs]


# --------------------------------------------------------------------------
# The proxy
# --------------------------------------------------------------------------


def open_port(path: str, stopbits: int) -> int:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(fd)
    attrs = termios.tcgetattr(fd)
    attrs[2] &= ~(termios.PARENB | termios.PARODD | termios.CSIZE | termios.CSTOPB)
    attrs[2] |= termios.CS8 | termios.CLOCAL | termios.CREAD | (termios.CSTOPB if stopbits == 2 else 0)
    try:
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
    except termios.error as e:  # a pty keeps its own ideas; framing is ours
        print(f"proxy: tcsetattr {path}: {e}", file=sys.stderr)
    return fd


class Side:
    def __init__(self, name: str, fd: int, from_master: bool) -> None:
        self.name = name
        self.fd = fd
        self.from_master = from_master  # frames read here come from the master
        self.buf = b""
        self.last_rx = 0.0
        self.seq = 0
        self.out = b""  # bytes not yet written (EAGAIN)
        self.registered = True


class Proxy:
    def __init__(self, args) -> None:
        self.args = args
        self.log = open(args.log, "a", buffering=1)
        self.master = Side("master", open_port(args.master, args.stopbits), from_master=True)
        self.slave = Side("slave", open_port(args.slave, args.stopbits), from_master=False)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.master.fd, selectors.EVENT_READ, self.master)
        self.sel.register(self.slave.fd, selectors.EVENT_READ, self.slave)
        self.timers: list[tuple[float, int, object]] = []
        self.timer_seq = 0
        self.rules: list[Rule] = load_rules(args.rules) if args.rules else []
        self.control_stamp = None
        self.answers_by_unit: dict[int, int] = {}
        self.answers = 0
        # Requests forwarded and not answered yet: (seq, unit).
        self.outstanding: list[tuple[int, int | None]] = []
        self.gap = args.gap_ms / 1000
        self.char_s = args.char_bits / args.baud_model if args.baud_model else 0.0
        self.line_free_at = 0.0
        self.line_busy: tuple[float, float, str] | None = None

    # -- logging -------------------------------------------------------------

    def emit(self, record: dict) -> None:
        self.log.write(json.dumps(record, separators=(",", ":")) + "\n")

    # -- control -------------------------------------------------------------

    def check_control(self) -> None:
        path = self.args.control
        if not path:
            return
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self.control_stamp:
            return
        self.control_stamp = stamp
        try:
            with open(path) as f:
                self.rules = load_rules(f.read())
            self.emit({"t": time.monotonic(), "ev": "rules", "rules": [r.spec for r in self.rules]})
        except (ValueError, KeyError, OSError) as e:
            self.emit({"t": time.monotonic(), "ev": "rules_error", "error": str(e)})

    # -- timers --------------------------------------------------------------

    def later(self, at: float, action) -> None:
        self.timer_seq += 1
        heapq.heappush(self.timers, (at, self.timer_seq, action))

    # -- output --------------------------------------------------------------

    def transmit(self, to: Side, frame: bytes, record: dict, at: float | None = None) -> None:
        """Hands frame to `to` at `at` (now if None), after its time on the
        modelled line."""
        now = time.monotonic()
        if at is not None and at > now:
            # A delayed frame takes the line when it starts, not before.
            self.later(at, lambda: self.transmit(to, frame, record))
            return
        at = now
        if self.char_s:
            duration = len(frame) * self.char_s
            begin = max(at, self.line_free_at)
            if self.line_busy and at < self.line_free_at and self.line_busy[2] != record.get("dir"):
                self.emit({"t": now, "ev": "collision", "dir": record.get("dir"), "seq": record.get("seq"),
                           "busy_until": self.line_free_at})
            self.line_free_at = begin + duration
            self.line_busy = (begin, self.line_free_at, record.get("dir", ""))
            at = self.line_free_at
        if at <= now:
            self.write(to, frame, record)
        else:
            self.later(at, lambda: self.write(to, frame, record))

    def write(self, to: Side, frame: bytes, record: dict) -> None:
        rec = dict(record)
        rec["t"] = time.monotonic()
        rec["ev"] = "tx"
        self.emit(rec)
        to.out += frame
        self.flush(to)

    def flush(self, side: Side) -> None:
        while side.out:
            try:
                n = os.write(side.fd, side.out)
            except BlockingIOError:
                break
            except OSError as e:  # the other end is closed (reopening): lost, as on a wire
                self.emit({"t": time.monotonic(), "ev": "write_error", "side": side.name, "error": str(e)})
                side.out = b""
                break
            side.out = side.out[n:]
        if side.registered:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if side.out else 0)
            self.sel.modify(side.fd, events, side)

    # -- input ---------------------------------------------------------------

    def read(self, side: Side) -> None:
        try:
            data = os.read(side.fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            # EIO: nobody has the other end of the pty open (the master is
            # reopening its port). Poll again a little later.
            self.sel.unregister(side.fd)
            side.registered = False
            self.later(time.monotonic() + 0.01, lambda: self.reregister(side))
            return
        if not data:
            return
        side.last_rx = time.monotonic()
        side.buf += data
        self.cut(side, quiet=False)

    def reregister(self, side: Side) -> None:
        side.registered = True
        self.sel.register(side.fd, selectors.EVENT_READ, side)
        self.flush(side)

    def cut(self, side: Side, quiet: bool) -> None:
        """Takes the complete frames off side.buf; with quiet (the line has
        been silent for the gap), what is left goes as one garbled chunk."""
        while side.buf:
            n = expected_len(side.buf, side.from_master)
            if n is not None and n > 0 and len(side.buf) >= n and crc_ok(side.buf[:n]):
                frame, side.buf = side.buf[:n], side.buf[n:]
                self.frame(side, frame)
                continue
            if quiet:
                frame, side.buf = side.buf, b""
                self.frame(side, frame)
            return

    def frame(self, side: Side, frame: bytes) -> None:
        side.seq += 1
        now = side.last_rx
        info = describe(frame, side.from_master)
        if side.from_master:
            self.request(frame, {"t": now, "dir": "m2s", "ev": "rx", "seq": side.seq, **info})
        else:
            self.answer(frame, {"t": now, "dir": "s2m", "ev": "rx", "seq": side.seq, **info})

    def request(self, frame: bytes, rec: dict) -> None:
        self.emit(rec)
        base = {k: rec[k] for k in ("dir", "seq", "unit", "fc", "len", "start", "count") if k in rec}
        unit = rec.get("unit")
        for rule in self.rules:
            if rule.on_requests and rule.matches(unit, 0, 0):
                self.emit({**base, "t": time.monotonic(), "ev": "drop", "fault": rule.action})
                return
        self.outstanding = self.outstanding[-15:] + [(rec["seq"], unit)]
        self.transmit(self.slave, frame, {**base, "hex": rec["hex"]})

    def answer(self, frame: bytes, rec: dict) -> None:
        unit = rec.get("unit")
        # The oldest outstanding request to this unit: what this answers.
        match = next((i for i, (_, u) in enumerate(self.outstanding) if u == unit), None)
        rec["req"] = None if match is None else self.outstanding[match][0]
        if match is not None:
            del self.outstanding[: match + 1]
        if rec["crc_ok"]:
            self.answers += 1
            self.answers_by_unit[unit] = self.answers_by_unit.get(unit, 0) + 1
            rec["n_unit"] = self.answers_by_unit[unit]
            rec["n"] = self.answers
        self.emit(rec)
        base = {k: rec[k] for k in ("dir", "seq", "unit", "fc", "len", "req", "n_unit", "n", "regs", "exc") if k in rec}
        rule = None
        if rec["crc_ok"]:
            rule = next(
                (r for r in self.rules if not r.on_requests and r.matches(unit, rec["n_unit"], rec["n"])),
                None,
            )
        if rule is None or rule.action == "pass":
            self.transmit(self.master, frame, {**base, "hex": frame.hex()})
            return
        fault = rule.action
        spec = rule.spec
        if fault == "drop":
            self.emit({**base, "t": time.monotonic(), "ev": "drop", "fault": fault})
        elif fault == "delay":
            at = time.monotonic() + float(spec.get("ms", 300)) / 1000
            self.transmit(self.master, frame, {**base, "hex": frame.hex(), "fault": fault}, at=at)
        elif fault == "corrupt":
            bad = corrupt(frame)
            self.transmit(self.master, bad, {**base, "hex": bad.hex(), "crc_ok": False, "fault": fault})
        elif fault == "wrong_unit":
            as_unit = int(spec.get("as_unit", (unit or 0) % 247 + 1))
            fake = with_crc(bytes([as_unit]) + frame[1:-2])
            self.transmit(self.master, fake, {**base, "unit": as_unit, "hex": fake.hex(), "fault": fault, "real_unit": unit})
            if spec.get("real_after_ms") is not None:
                at = time.monotonic() + float(spec["real_after_ms"]) / 1000
                self.transmit(self.master, frame, {**base, "hex": frame.hex(), "fault": "wrong_unit_real"}, at=at)

    # -- loop ----------------------------------------------------------------

    def run(self) -> None:
        print("ready", flush=True)
        next_control = 0.0
        while True:
            now = time.monotonic()
            if now >= next_control:
                self.check_control()
                next_control = now + 0.02
            while self.timers and self.timers[0][0] <= now:
                _, _, action = heapq.heappop(self.timers)
                action()
            for side in (self.master, self.slave):
                if side.buf and now - side.last_rx >= self.gap:
                    self.cut(side, quiet=True)
            deadline = next_control
            if self.timers:
                deadline = min(deadline, self.timers[0][0])
            for side in (self.master, self.slave):
                if side.buf:
                    deadline = min(deadline, side.last_rx + self.gap)
            wait = max(0.0, deadline - time.monotonic())
            for key, events in self.sel.select(timeout=wait):
                side = key.data
                if events & selectors.EVENT_READ:
                    self.read(side)
                if events & selectors.EVENT_WRITE:
                    self.flush(side)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--master", required=True, help="the proxy's end of the gateway's pty pair")
    parser.add_argument("--slave", required=True, help="the proxy's end of the slaves' pty pair")
    parser.add_argument("--log", required=True, help="JSON-lines frame log")
    parser.add_argument("--rules", help='fault rules, JSON: {"rules": [...]}')
    parser.add_argument("--control", help="a JSON rules file, re-read when it changes")
    parser.add_argument("--baud-model", type=int, default=0, help="model the line's speed (bits/s)")
    parser.add_argument("--char-bits", type=int, default=11, help="bits per character (11 = 8N2 or 8E1)")
    parser.add_argument("--stopbits", type=int, default=2, choices=(1, 2))
    parser.add_argument("--gap-ms", type=float, default=5.0, help="quiet time that ends a garbled chunk")
    args = parser.parse_args()
    try:
        Proxy(args).run()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
