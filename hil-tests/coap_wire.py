"""CoAP (RFC 7252) at the byte level, for the hil-tests: build any message,
well-formed or not, and read what comes back.

- `encode(...)`: a datagram from a header, a token, options and a payload.
  Every field can be forced to a value the RFC forbids (`version`, `tkl`,
  a payload marker with no payload, raw bytes in place of the options), so
  the malformed corpus is made with the same code as the good requests.
- `decode(data)`: a strict parser; `FormatError` for what RFC 7252 calls a
  message format error.
- `request(...)`, `empty(...)`: the common shapes.
- `Peer`: a UDP socket talking to one CoAP endpoint, with fresh message ids
  and tokens, `exchange` (send, wait for the matching answer) and `sync`
  (a barrier: every answer the server sends at once to what came before it
  has arrived once the barrier's own answer is in).
- `Device`: the other way round, a UDP socket that plays a CoAP device for
  the gateway's Observe client.

Nothing here knows the gateway: it is a CoAP toolkit for tests.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from dataclasses import dataclass, field

# -- message types (RFC 7252 §3) ---------------------------------------------
CON, NON, ACK, RST = 0, 1, 2, 3
TYPE_NAMES = {CON: "CON", NON: "NON", ACK: "ACK", RST: "RST"}


def code(cls: int, detail: int) -> int:
    """The code c.dd as its byte."""
    return cls << 5 | detail


def code_str(c: int) -> str:
    return f"{c >> 5}.{c & 31:02d}"


# -- codes (RFC 7252 §12.1, RFC 7959) ------------------------------------------
EMPTY = 0x00
GET, POST, PUT, DELETE, FETCH, PATCH, IPATCH = 1, 2, 3, 4, 5, 6, 7
CREATED = code(2, 1)
DELETED = code(2, 2)
VALID = code(2, 3)
CHANGED = code(2, 4)
CONTENT = code(2, 5)
CONTINUE = code(2, 31)
BAD_REQUEST = code(4, 0)
UNAUTHORIZED = code(4, 1)
BAD_OPTION = code(4, 2)
NOT_FOUND = code(4, 4)
METHOD_NOT_ALLOWED = code(4, 5)
NOT_ACCEPTABLE = code(4, 6)
REQUEST_ENTITY_INCOMPLETE = code(4, 8)
PRECONDITION_FAILED = code(4, 12)
REQUEST_ENTITY_TOO_LARGE = code(4, 13)
UNSUPPORTED_CONTENT_FORMAT = code(4, 15)
SERVICE_UNAVAILABLE = code(5, 3)

# -- options (RFC 7252 §12.2, RFC 7641, RFC 7959) -------------------------------
IF_MATCH = 1
URI_HOST = 3
ETAG = 4
IF_NONE_MATCH = 5
OBSERVE = 6
URI_PORT = 7
LOCATION_PATH = 8
URI_PATH = 11
CONTENT_FORMAT = 12
MAX_AGE = 14
URI_QUERY = 15
ACCEPT = 17
LOCATION_QUERY = 20
BLOCK2 = 23
BLOCK1 = 27
SIZE2 = 28
PROXY_URI = 35
PROXY_SCHEME = 39
SIZE1 = 60

# -- content formats ----------------------------------------------------------
TEXT_PLAIN = 0
LINK_FORMAT = 40
XML = 41
JSON = 50
SENML_JSON = 110
SENML_CBOR = 112

PAYLOAD_MARKER = 0xFF


def critical(number: int) -> bool:
    """RFC 7252 §5.4.6: odd option numbers are critical."""
    return bool(number & 1)


def uint(value: int) -> bytes:
    """An unsigned option value in the fewest bytes (0 is empty)."""
    if value == 0:
        return b""
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def block_value(num: int, more: bool, szx: int) -> bytes:
    """A Block1/Block2 option value (RFC 7959 §2.2)."""
    return uint(num << 4 | (8 if more else 0) | szx)


def parse_block(value: bytes) -> tuple[int, bool, int]:
    """(NUM, M, SZX) of a Block option value."""
    v = int.from_bytes(value, "big") if value else 0
    return v >> 4, bool(v & 8), v & 7


OptionValue = bytes | str | int


def _option_bytes(value: OptionValue) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return uint(value)


def _ext(n: int) -> tuple[int, bytes]:
    """The 4-bit nibble and extended bytes for a delta or a length."""
    if n < 13:
        return n, b""
    if n < 269:
        return 13, bytes([n - 13])
    return 14, struct.pack(">H", n - 269)


def encode_options(options) -> bytes:
    """Options as (number, value) pairs, in the given order (sorted by
    number by `encode`), with delta and length extensions as needed."""
    out = bytearray()
    last = 0
    for number, value in options:
        raw = _option_bytes(value)
        delta = number - last
        assert delta >= 0, "options must be in order of their numbers"
        last = number
        dn, dext = _ext(delta)
        ln, lext = _ext(len(raw))
        out.append(dn << 4 | ln)
        out += dext + lext + raw
    return bytes(out)


def encode(
    *,
    type: int = CON,
    code: int = POST,
    mid: int = 0,
    token: bytes = b"",
    options=(),
    payload: bytes = b"",
    version: int = 1,
    tkl: int | None = None,
    marker: bool | None = None,
    raw_options: bytes | None = None,
) -> bytes:
    """One datagram.

    - `options`: (number, value) pairs; value bytes, str (UTF-8) or int
      (uint); sorted by number (stable, so repeated options keep order).
    - `version`, `tkl`: the header fields as given, even when they are wrong.
    - `marker`: True forces the payload marker even with no payload (a format
      error); False leaves it out even with a payload. Default: present iff
      there is a payload.
    - `raw_options`: bytes put where the options go, instead of `options`.
    """
    tkl = len(token) if tkl is None else tkl
    head = bytes([(version & 3) << 6 | (type & 3) << 4 | (tkl & 15), code & 0xFF]) + struct.pack(">H", mid & 0xFFFF)
    opts = raw_options if raw_options is not None else encode_options(sorted(options, key=lambda o: o[0]))
    if marker is None:
        marker = bool(payload)
    return head + token + opts + (bytes([PAYLOAD_MARKER]) if marker else b"") + payload


def path_options(path: str) -> list[tuple[int, bytes]]:
    return [(URI_PATH, seg.encode()) for seg in path.strip("/").split("/") if seg]


def request(
    method: int,
    path: str,
    *,
    type: int = CON,
    mid: int = 0,
    token: bytes = b"",
    content_format: int | None = None,
    payload: bytes = b"",
    options=(),
    **kw,
) -> bytes:
    """A request to `path` (Uri-Path options), with an optional
    Content-Format and any further options."""
    opts = path_options(path) + list(options)
    if content_format is not None:
        opts.append((CONTENT_FORMAT, uint(content_format)))
    return encode(type=type, code=method, mid=mid, token=token, options=opts, payload=payload, **kw)


def empty(type: int, mid: int) -> bytes:
    """An Empty message (code 0.00, no token, nothing after the Message ID):
    a CoAP ping (CON), an Empty ACK, a Reset."""
    return encode(type=type, code=EMPTY, mid=mid)


# -- decoding ----------------------------------------------------------------


class FormatError(ValueError):
    """A message format error in the sense of RFC 7252."""


@dataclass
class Message:
    version: int
    type: int
    code: int
    mid: int
    token: bytes
    options: list[tuple[int, bytes]] = field(default_factory=list)
    payload: bytes = b""
    raw: bytes = b""

    @property
    def code_str(self) -> str:
        return code_str(self.code)

    @property
    def type_str(self) -> str:
        return TYPE_NAMES[self.type]

    @property
    def is_empty(self) -> bool:
        """Code 0.00 and exactly the 4-byte header (RFC 7252 §4.1)."""
        return self.code == EMPTY and len(self.raw) == 4

    def option(self, number: int) -> bytes | None:
        for n, v in self.options:
            if n == number:
                return v
        return None

    def all(self, number: int) -> list[bytes]:
        return [v for n, v in self.options if n == number]

    def uint(self, number: int) -> int | None:
        v = self.option(number)
        return None if v is None else int.from_bytes(v, "big") if v else 0

    @property
    def path(self) -> str:
        return "/" + "/".join(v.decode(errors="replace") for v in self.all(URI_PATH))

    def __str__(self) -> str:
        opts = ", ".join(f"{n}={v.hex() or '-'}" for n, v in self.options)
        return (
            f"<v{self.version} {self.type_str} {self.code_str} mid={self.mid:#06x} "
            f"token={self.token.hex() or '-'} [{opts}] payload={self.payload[:60]!r}>"
        )

    __repr__ = __str__


def decode(data: bytes) -> Message:
    """A strict parse; FormatError for a message format error (RFC 7252
    §3, §3.1: short header, TKL 9-15, option nibble 15, truncated option,
    marker followed by nothing). The version is returned as found."""
    if len(data) < 4:
        raise FormatError(f"{len(data)} bytes: shorter than the header")
    version, type_, tkl = data[0] >> 6, data[0] >> 4 & 3, data[0] & 15
    if tkl > 8:
        raise FormatError(f"token length {tkl}")
    if len(data) < 4 + tkl:
        raise FormatError("token cut short")
    msg = Message(version, type_, data[1], struct.unpack(">H", data[2:4])[0], data[4 : 4 + tkl], raw=bytes(data))
    i, number = 4 + tkl, 0
    while i < len(data):
        b = data[i]
        if b == PAYLOAD_MARKER:
            if i + 1 == len(data):
                raise FormatError("payload marker followed by no payload")
            msg.payload = bytes(data[i + 1 :])
            break
        i += 1
        vals = []
        for nib in (b >> 4, b & 15):
            if nib == 15:
                raise FormatError("option nibble 15")
            if nib == 13:
                if i >= len(data):
                    raise FormatError("extended option field cut short")
                vals.append(data[i] + 13)
                i += 1
            elif nib == 14:
                if i + 2 > len(data):
                    raise FormatError("extended option field cut short")
                vals.append(struct.unpack(">H", data[i : i + 2])[0] + 269)
                i += 2
            else:
                vals.append(nib)
        delta, length = vals
        number += delta
        if i + length > len(data):
            raise FormatError("option value cut short")
        msg.options.append((number, bytes(data[i : i + length])))
        i += length
    return msg


# -- endpoints ---------------------------------------------------------------


def _random_u16() -> int:
    return int.from_bytes(os.urandom(2), "big")


class Peer:
    """A client socket talking to one CoAP server at `address`."""

    def __init__(self, address: tuple[str, int], family: int = socket.AF_INET) -> None:
        self.address = address
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1" if family == socket.AF_INET else "::1", 0))
        self._mid = _random_u16()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Peer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def mid(self) -> int:
        """A message id this socket has not used yet."""
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    @staticmethod
    def token(n: int = 4) -> bytes:
        return os.urandom(n)

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.address)

    def recv(self, timeout: float) -> bytes | None:
        """The next datagram from the server, or None after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data, sender = self.sock.recvfrom(65536)
            except (TimeoutError, socket.timeout):
                return None
            if sender[:2] == self.address[:2]:
                return data

    def drain(self) -> list[bytes]:
        """Whatever is already queued, without waiting."""
        out = []
        while (d := self.recv(0.001)) is not None:
            out.append(d)
        return out

    def exchange(self, data: bytes, timeout: float = 20) -> Message:
        """Sends `data` and returns the first datagram that answers it: same
        message id for an ACK or a Reset, or the same token for a
        non-confirmable response. Other datagrams are kept in `stray`."""
        sent = decode(data)
        self.send(data)
        deadline = time.monotonic() + timeout
        self.stray: list[bytes] = []
        while True:
            raw = self.recv(deadline - time.monotonic())
            if raw is None:
                raise AssertionError(f"no answer within {timeout}s to {sent}")
            try:
                m = decode(raw)
            except FormatError:
                self.stray.append(raw)
                continue
            if m.type in (ACK, RST) and m.mid == sent.mid:
                return m
            if m.type in (CON, NON) and m.code >> 5 and m.token == sent.token and sent.type == NON:
                return m
            self.stray.append(raw)

    def sync(self, timeout: float = 20) -> list[bytes]:
        """A barrier: sends a confirmable GET /.well-known/core and returns
        every other datagram that came before its answer. The server
        answers in the order it reads, so an immediate answer to anything
        sent earlier is in the list; an empty list means none was sent."""
        mid = self.mid()
        self.send(request(GET, "/.well-known/core", mid=mid, token=b"\x5b"))
        before = []
        deadline = time.monotonic() + timeout
        while True:
            raw = self.recv(deadline - time.monotonic())
            if raw is None:
                raise AssertionError(f"the barrier (GET /.well-known/core, mid {mid:#x}) got no answer in {timeout}s")
            if len(raw) >= 4 and raw[0] >> 4 & 3 == ACK and struct.unpack(">H", raw[2:4])[0] == mid:
                return before
            before.append(raw)


class Device:
    """A UDP socket that plays a CoAP device (a server) for the gateway's
    Observe client: it receives the gateway's requests and answers them
    with whatever bytes a test builds."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self._mid = _random_u16()
        self.client: tuple | None = None

    @property
    def address(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def mid(self) -> int:
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    def close(self) -> None:
        self.sock.close()

    def recv(self, timeout: float) -> tuple[Message, float] | None:
        """The next well-formed message from the gateway and when it came
        (time.monotonic()), or None after `timeout`. Remembers the sender
        so that `send` answers it."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data, sender = self.sock.recvfrom(65536)
            except (TimeoutError, socket.timeout):
                return None
            at = time.monotonic()
            self.client = sender
            return decode(data), at

    def expect(self, timeout: float, what: str, accept=lambda m: True) -> tuple[Message, float]:
        """The next message that `accept`s, skipping others; AssertionError
        naming `what` after `timeout`."""
        deadline = time.monotonic() + timeout
        skipped = []
        while True:
            got = self.recv(deadline - time.monotonic())
            if got is None:
                raise AssertionError(f"no {what} from the gateway within {timeout}s; other messages: {skipped}")
            if accept(got[0]):
                return got
            skipped.append(got[0])

    def registration(self, timeout: float = 30) -> Message:
        """The gateway's next Observe registration (a GET with Observe 0)."""
        return self.expect(timeout, "registration (GET with Observe 0)",
                           lambda m: m.code == GET and m.uint(OBSERVE) == 0)[0]

    def send(self, data: bytes) -> None:
        assert self.client, "no message from the gateway yet"
        self.sock.sendto(data, self.client)

    def notify(
        self,
        reg: Message,
        seq: int | None,
        payload: bytes,
        *,
        type: int = NON,
        code: int = CONTENT,
        mid: int | None = None,
        max_age: int | None = None,
        content_format: int | None = TEXT_PLAIN,
    ) -> int:
        """A response or notification for registration `reg` (its token);
        returns its message id. `type=ACK` piggybacks it on the ACK of
        `reg` (same message id)."""
        options: list[tuple[int, OptionValue]] = []
        if seq is not None:
            options.append((OBSERVE, uint(seq)))
        if content_format is not None:
            options.append((CONTENT_FORMAT, uint(content_format)))
        if max_age is not None:
            options.append((MAX_AGE, uint(max_age)))
        if mid is None:
            mid = reg.mid if type == ACK else self.mid()
        self.send(encode(type=type, code=code, mid=mid, token=reg.token, options=options, payload=payload))
        return mid
