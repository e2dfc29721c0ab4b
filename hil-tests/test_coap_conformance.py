"""CoAP conformance of the gateway (RFC 7252, RFC 7641, RFC 7959), against
real peers: libcoap (`coap-client-notls`, `coap-server-notls`), aiocoap
(client, and the observable device in peers/coap_observable.py), and raw
datagrams built byte by byte with coap_wire.py.

Two groups:

- Issue #14, items 8-12, each a defect the server or Observe client had
  before the fix (Resets with code 0.01, other versions processed,
  unrecognized critical options accepted, no answer to a CoAP ping or an
  unknown method, a bare payload marker taken for bad JSON, rejections
  counted nowhere), and the RFC rules around them.
- The ETSI CoAP#4 plugtest test descriptions that apply to this gateway
  (TD_COAP_CORE_*, TD_COAP_BLOCK_*, TD_COAP_OBS_*): the server takes POST
  and PUT of readings, serves /.well-known/core, assembles Block1 uploads
  and deduplicates; the Observe client registers with devices. The table
  with what applies, why the rest does not, and the results is in
  docs/drivers/coap.md, "Conformance".

The server tests share one gateway (module fixture `server`); each counts
its effect on the rejection counters as a difference. The Observe tests
start a gateway each, pointed at a device of their own.

Counter reasons (`biota-gateway devices --json` → coap.rejected, and
`biota_coap_rejected_total{reason=...}` in /metrics):

| reason | what |
|---|---|
| malformed | a message format error (RFC 7252 §3, §3.1, §4.1) |
| bad_version | Ver ≠ 1 (RFC 7252 §3): silently ignored |
| unexpected_message | a well-formed message the server cannot take: an Empty NON, a code of a reserved class (1, 6, 7), a response sent to the server, an ACK or Reset that is not Empty |
| bad_option | an unrecognized critical option, or one the server does not support on that request (4.02) |
| method_not_allowed | 4.05: a method the resource does not take, or an unknown method code |
| not_acceptable | 4.06: an Accept the answer cannot meet |
| proxying_not_supported | 5.05: Proxy-Uri or Proxy-Scheme |

A CoAP ping (Empty CON) is not a rejection: it is answered with a Reset
and counted nowhere.

"No answer" is established without sleeping: `Peer.sync` sends a GET
/.well-known/core and collects whatever the server sent before answering
it; the server answers in the order it reads.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import coap_wire as w
from coap_wire import ACK, CON, NON, RST, Device, Peer, decode, empty, encode, request
from conftest import Gateway, run_cli, run_query

HERE = Path(__file__).parent
READING = b'[{"n":"v","v":1}]'


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last}")


def latest(binary: Path, db: Path, device: str) -> dict[str, dict]:
    if not db.exists():
        return {}
    out = run_query(binary, db, "latest", "--device", device)
    return {r["point"]: r for r in json.loads(out.stdout)}


def values(binary: Path, db: Path, device: str, point: str) -> list:
    """Every stored value of one point, in seq order."""
    if not db.exists():
        return []
    out = run_query(binary, db, "range", "--device", device, "--point", point, "--from", "0", "--limit", "10000")
    return [r["value"] for r in sorted(json.loads(out.stdout), key=lambda r: r["seq"])]


def coap_status(binary: Path, state_dir: Path) -> dict:
    out = run_cli(binary, "devices", "--state-dir", str(state_dir), "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["coap"]


def delta(before: dict, after: dict) -> dict:
    keys = set(before) | set(after)
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(keys) if after.get(k, 0) != before.get(k, 0)}


def show(raw: bytes) -> str:
    try:
        return str(decode(raw))
    except w.FormatError as e:
        return f"{raw.hex()} (undecodable: {e})"


def coap_client(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """libcoap's client; -B bounds how long it waits for an answer."""
    return subprocess.run(["coap-client-notls", "-B", "10", *args], capture_output=True, text=True, timeout=timeout)


def aiocoap_request(uri: str, code, payload: bytes = b"", content_format: int | None = None, non: bool = False):
    """One request by an aiocoap client context (NON with `non`); returns
    the response."""
    import aiocoap

    async def run():
        ctx = await aiocoap.Context.create_client_context()
        try:
            tuning = {"transport_tuning": aiocoap.Unreliable} if non else {}
            msg = aiocoap.Message(code=code, uri=uri, payload=payload, **tuning)
            if content_format is not None:
                msg.opt.content_format = content_format
            return await asyncio.wait_for(ctx.request(msg).response, 20)
        finally:
            await ctx.shutdown()

    return asyncio.run(run())


# ---------------------------------------------------------------------------
# One gateway for the server tests
# ---------------------------------------------------------------------------


# Enough resources for a /.well-known/core over 1024 bytes (TD_COAP_BLOCK_02).
HALLS = 12
HALL_RESOURCES = "".join(f"""
[[drivers.coap.resources]]
path = "/plant/hall-{i}/line-{i}/{{device}}"
""" for i in range(HALLS))


class Server:
    def __init__(self, binary: Path, root: Path) -> None:
        self.binary = binary
        self.port = free_port()
        self.api_port = free_port(socket.SOCK_STREAM)
        self.state_dir = root / "state"
        self.state_dir.mkdir()
        self.db = self.state_dir / "gateway.db"
        config = root / "gateway.toml"
        config.write_text(f"""
[store]
commit_max_delay = "20ms"

[api]
listen = "127.0.0.1:{self.api_port}"

[drivers.coap]
listen = ["127.0.0.1:{self.port}"]
max_payload = 4096

[[drivers.coap.resources]]
path = "/v1/devices/{{device}}"

[[drivers.coap.resources]]
path = "/seg1/seg2/seg3"
device = "seg-dev"
point = "value"
{HALL_RESOURCES}""")
        self.gw = Gateway(binary, config, self.state_dir, log_dir=root)
        self.address = ("127.0.0.1", self.port)
        self.uri = f"coap://127.0.0.1:{self.port}"

    def rejected(self) -> dict:
        return coap_status(self.binary, self.state_dir)["rejected"]

    def status(self) -> dict:
        return coap_status(self.binary, self.state_dir)

    def latest(self, device: str) -> dict:
        return latest(self.binary, self.db, device)

    def values(self, device: str, point: str = "v") -> list:
        return values(self.binary, self.db, device, point)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/metrics", timeout=10) as r:
            return r.read().decode()


@pytest.fixture(scope="module")
def server(gateway_bin, tmp_path_factory):
    s = Server(gateway_bin, tmp_path_factory.mktemp("coap-conformance"))
    try:
        s.gw.wait_ready(timeout=30)
        yield s
        assert s.gw.alive(), f"the gateway died:\n{s.gw.stderr()}"
        assert "panicked" not in s.gw.stderr()
        assert s.gw.stop() == 0
    finally:
        s.gw.kill()


@pytest.fixture
def peer(server):
    with Peer(server.address) as p:
        yield p


def settle(peer: Peer) -> list[bytes]:
    """Everything the server sent to `peer` after what was sent so far:
    the datagrams before the answer to a GET barrier, then those around the
    2.04 of a stored POST (which comes after a commit, like any answer
    that waits for one)."""
    out = list(peer.sync())
    barrier = request(w.POST, "/v1/devices/barrier", mid=peer.mid(), token=peer.token(),
                      content_format=w.SENML_JSON, payload=READING)
    answer = peer.exchange(barrier)
    assert answer.code == w.CHANGED, f"the barrier POST was answered {answer}"
    return out + peer.stray + peer.drain()


def expect_reset(raws: list[bytes], mid: int, problems: list[str], optional: bool = False) -> None:
    """A Reset to message `mid` that is exactly an Empty message (4 bytes,
    code 0.00, RFC 7252 §4.2/§4.3), and nothing else."""
    if not raws and optional:
        return
    if not raws:
        problems.append(f"no answer: a Reset (7000{mid:04x}) was due")
        return
    if raws != [empty(RST, mid)]:
        problems.append(f"answered {[show(r) for r in raws]}; due: only the Empty Reset 7000{mid:04x}")


def expect_answer(m: w.Message, sent: bytes, code: int, problems: list[str]) -> None:
    """A response with `code`: piggybacked on the ACK of a CON (same message
    id), or a NON for a NON; the token echoed (RFC 7252 §5.3.1)."""
    req = decode(sent)
    if m.code != code:
        problems.append(f"answered {m.code_str} ({m.payload[:80]!r}); due: {w.code_str(code)}")
    if req.type == CON and (m.type != ACK or m.mid != req.mid):
        problems.append(f"a CON request must get a piggybacked ACK with its message id; got {m}")
    if req.type == NON and m.type != NON:
        problems.append(f"a NON request must get a NON response; got {m}")
    if m.token != req.token:
        problems.append(f"token {m.token.hex()} is not the request's {req.token.hex()}")


def check_counted(before: dict, after: dict, reason: str | None, problems: list[str]) -> None:
    want = {reason: 1} if reason else {}
    got = delta(before, after)
    if got != want:
        problems.append(f"rejection counters changed by {got}; due: {want}")


def check_not_stored(server: Server, device: str, problems: list[str]) -> None:
    rows = server.latest(device)
    if rows:
        problems.append(f"stored: {[(p, r['value']) for p, r in rows.items()]}; due: nothing")


def post(peer: Peer, device: str, *, type=CON, options=(), payload=READING, fmt=w.SENML_JSON, **kw) -> bytes:
    return request(w.POST, f"/v1/devices/{device}", type=type, mid=peer.mid(), token=peer.token(),
                   content_format=fmt, payload=payload, options=options, **kw)


# ---------------------------------------------------------------------------
# Item 8: a Reset is an Empty message
# ---------------------------------------------------------------------------

MALFORMED_CON = {
    # RFC 7252 §3: TKL 9-15 are reserved and a format error.
    "token_length_9": lambda mid: encode(type=CON, code=w.POST, mid=mid, tkl=9, token=b"\0" * 9),
    # §3.1: option delta 15 that is not the payload marker.
    "option_delta_15": lambda mid: encode(type=CON, code=w.POST, mid=mid, raw_options=b"\xf1x"),
    # §3.1: option length 15.
    "option_length_15": lambda mid: encode(type=CON, code=w.POST, mid=mid, raw_options=b"\xbf"),
    # An option value longer than the datagram.
    "option_cut_short": lambda mid: encode(type=CON, code=w.POST, mid=mid, raw_options=b"\xb8v1"),
}


@pytest.mark.parametrize("case", MALFORMED_CON)
def test_item08_reset_to_a_malformed_con_is_an_empty_message(server, peer, case):
    """RFC 7252 §4.2: a CON with a format error is rejected with a Reset,
    and 'The Reset message MUST echo the Message ID of the Confirmable
    message and MUST be Empty' (§4.1: code 0.00, TKL 0, nothing after the
    Message ID). Before the fix (issue #14) the Reset carries code 0.01."""
    mid = peer.mid()
    before = server.rejected()
    peer.send(MALFORMED_CON[case](mid))
    problems: list[str] = []
    expect_reset(settle(peer), mid, problems)
    check_counted(before, server.rejected(), "malformed", problems)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("datagram,reason", [
    (lambda mid: empty(RST, mid), None),
    (lambda mid: empty(ACK, mid), None),
    (lambda mid: encode(type=RST, code=w.GET, mid=mid), "unexpected_message"),
    (lambda mid: encode(type=ACK, code=w.CONTENT, mid=mid, token=b"\x01", payload=b"x"), "unexpected_message"),
    (lambda mid: encode(type=RST, code=w.EMPTY, mid=mid, token=b"\x01"), "malformed"),
], ids=["empty-RST", "empty-ACK", "RST-0.01", "ACK-2.05", "RST-with-token"])
def test_item08_the_server_never_answers_an_ack_or_a_reset(server, peer, datagram, reason):
    """RFC 7252 §4.2: 'Rejecting an Acknowledgement or Reset message ... is
    effected by silently ignoring it.' The server sends no CON, so an ACK
    or Reset to it is answered by nothing; an Empty one (a client's Reset
    to a NON answer) is no rejection, one that is not Empty is counted
    (unexpected_message, or malformed for a format error)."""
    before = server.rejected()
    peer.send(datagram(peer.mid()))
    problems: list[str] = []
    if extra := settle(peer):
        problems.append(f"answered {[show(r) for r in extra]}; due: silence")
    check_counted(before, server.rejected(), reason, problems)
    assert not problems, "\n".join(problems)


# The Observe client's side of item 8 (its Resets, and the malformed Resets
# it must ignore) is tested with the Observe tests below:
# test_td_coap_obs_06_* and test_item08_observe_client_ignores_a_malformed_reset.


# ---------------------------------------------------------------------------
# Item 9: other versions are silently ignored
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("version,type_", [(0, CON), (2, CON), (3, CON), (2, NON)],
                         ids=["v0-CON", "v2-CON", "v3-CON", "v2-NON"])
def test_item09_a_message_of_another_version_is_silently_ignored(server, peer, version, type_):
    """RFC 7252 §3: 'Messages with unknown version numbers MUST be silently
    ignored.' A well-formed POST of a reading in version 0, 2 or 3: no
    answer at all, nothing stored, counted as bad_version. Before the fix (issue #14) it is
    stored and answered 2.04."""
    device = f"version-{version}-{type_}"
    before = server.rejected()
    datagram = post(peer, device, type=type_, version=version)
    peer.send(datagram)
    problems: list[str] = []
    extra = settle(peer)
    if extra:
        problems.append(f"answered {[show(r) for r in extra]}; due: silence")
    check_not_stored(server, device, problems)
    check_counted(before, server.rejected(), "bad_version", problems)
    assert not problems, "\n".join(problems)


def test_item09_a_malformed_message_of_another_version_gets_no_reset(server, peer):
    """Version 2 with TKL 9: ignored for its version (no Reset, which is a
    version 1 message), counted as bad_version rather than malformed."""
    before = server.rejected()
    peer.send(encode(type=CON, code=w.POST, mid=peer.mid(), version=2, tkl=9, token=b"\0" * 9))
    problems: list[str] = []
    extra = settle(peer)
    if extra:
        problems.append(f"answered {[show(r) for r in extra]}; due: silence")
    check_counted(before, server.rejected(), "bad_version", problems)
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------
# Item 10: options
# ---------------------------------------------------------------------------

BAD_OPTIONS = {
    # §5.4.1: an unrecognized critical option (odd number) in a CON request.
    "critical_65001": [(65001, b"x")],
    "critical_2049": [(2049, b"")],
    # Critical options this server does not implement on a POST: it keeps
    # no ETags and takes no conditional requests (§5.10.8), so they are
    # treated like unrecognized ones (§5.4, §5.4.1).
    "if_match": [(w.IF_MATCH, b"\x01")],
    "if_match_empty": [(w.IF_MATCH, b"")],
    "if_none_match": [(w.IF_NONE_MATCH, b"")],
}


@pytest.mark.parametrize("case", BAD_OPTIONS)
def test_item10_a_critical_option_the_server_does_not_support_gets_4_02(server, peer, case):
    """RFC 7252 §5.4.1: 'Unrecognized options of class "critical" that
    occur in a Confirmable request MUST cause the return of a 4.02 (Bad
    Option) response.' Nothing is stored; counted as bad_option. Before the fix (issue #14):
    2.04 and stored."""
    device = f"option-{case}"
    before = server.rejected()
    datagram = post(peer, device, options=BAD_OPTIONS[case])
    answer = peer.exchange(datagram)
    problems: list[str] = []
    expect_answer(answer, datagram, w.BAD_OPTION, problems)
    if extra := settle(peer):
        problems.append(f"further datagrams: {[show(r) for r in extra]}")
    check_not_stored(server, device, problems)
    check_counted(before, server.rejected(), "bad_option", problems)
    assert not problems, "\n".join(problems)


def check_refused(server: Server, peer: Peer, device: str, datagram: bytes, code: int, reason: str) -> None:
    """`datagram`, a CON request for `device`, is answered `code`
    (piggybacked), stores nothing and counts one rejection for `reason`."""
    before = server.rejected()
    answer = peer.exchange(datagram)
    problems: list[str] = []
    expect_answer(answer, datagram, code, problems)
    check_not_stored(server, device, problems)
    check_counted(before, server.rejected(), reason, problems)
    assert not problems, "\n".join(problems)


def test_item10_a_put_with_an_unrecognized_critical_option_gets_4_02(server, peer):
    device = "option-put"
    datagram = request(w.PUT, f"/v1/devices/{device}", mid=peer.mid(), token=peer.token(),
                       content_format=w.SENML_JSON, payload=READING, options=[(65001, b"x")])
    check_refused(server, peer, device, datagram, w.BAD_OPTION, "bad_option")


def test_item10_a_non_request_with_an_unrecognized_critical_option_is_rejected(server, peer):
    """§5.4.1: in a Non-confirmable message it 'MUST cause the message to be
    rejected (Section 4.3)': a matching Empty Reset or nothing, never a
    response; nothing stored; counted as bad_option."""
    device = "option-non"
    before = server.rejected()
    datagram = post(peer, device, type=NON, options=[(65001, b"x")])
    peer.send(datagram)
    problems: list[str] = []
    expect_reset(settle(peer), decode(datagram).mid, problems, optional=True)
    check_not_stored(server, device, problems)
    check_counted(before, server.rejected(), "bad_option", problems)
    assert not problems, "\n".join(problems)


OUT_OF_DEFINITION = {
    # §5.4.5: a non-repeatable option repeated: the extra occurrence is
    # unrecognized, and these are critical.
    "accept_twice": [(w.ACCEPT, w.TEXT_PLAIN), (w.ACCEPT, w.TEXT_PLAIN)],
    "uri_host_twice": [(w.URI_HOST, "a"), (w.URI_HOST, "b")],
    # §5.4.3: a length outside the option's range is unrecognized.
    "uri_host_empty": [(w.URI_HOST, b"")],
    "accept_3_bytes": [(w.ACCEPT, b"\x00\x00\x00")],
    "uri_port_3_bytes": [(w.URI_PORT, b"\x00\x16\x33")],
    # OSCORE (RFC 8613, critical 9): not implemented here, so unrecognized.
    "oscore": [(9, b"")],
}


@pytest.mark.parametrize("case", OUT_OF_DEFINITION)
def test_item10_a_critical_option_out_of_its_definition_gets_4_02(server, peer, case):
    """RFC 7252 §5.4.3 and §5.4.5: an option whose length is out of range,
    or a non-repeatable one that is repeated, 'MUST be treated like an
    unrecognized option'; a critical one so gets 4.02, counted bad_option,
    nothing stored."""
    device = f"definition-{case}"
    check_refused(server, peer, device, post(peer, device, options=OUT_OF_DEFINITION[case]), w.BAD_OPTION, "bad_option")


def test_item10_an_elective_option_out_of_its_definition_is_ignored(server, peer):
    """The elective side of §5.4.3/§5.4.5: a repeated Content-Format is
    taken once (the first; the second is ignored), a 3-byte one is ignored
    altogether, so the request has no Content-Format and gets 4.15."""
    problems: list[str] = []
    device = "definition-elective"
    datagram = request(w.POST, f"/v1/devices/{device}", mid=peer.mid(), token=peer.token(), payload=READING,
                       options=[(w.CONTENT_FORMAT, w.SENML_JSON), (w.CONTENT_FORMAT, w.TEXT_PLAIN)])
    expect_answer(peer.exchange(datagram), datagram, w.CHANGED, problems)
    before = server.rejected()
    datagram = request(w.POST, f"/v1/devices/{device}-2", mid=peer.mid(), token=peer.token(), payload=READING,
                       options=[(w.CONTENT_FORMAT, b"\x00\x00\x6e")])
    expect_answer(peer.exchange(datagram), datagram, w.UNSUPPORTED_CONTENT_FORMAT, problems)
    check_counted(before, server.rejected(), "unsupported_format", problems)
    if server.values(device) != [1]:
        problems.append(f"stored {server.values(device)}; due: [1]")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("option", [w.PROXY_URI, w.PROXY_SCHEME], ids=["proxy_uri", "proxy_scheme"])
def test_item10_a_proxy_request_gets_5_05(server, peer, option):
    """RFC 7252 §5.10.2: a server that is not a forward-proxy 'MUST cause
    the return of a 5.05 (Proxying Not Supported) response' to Proxy-Uri
    (and likewise Proxy-Scheme). Nothing stored; counted as
    proxying_not_supported. Before the fix (issue #14): 2.04 and stored."""
    device = f"proxy-{option}"
    value = f"coap://192.0.2.1/v1/devices/{device}" if option == w.PROXY_URI else "coap"
    check_refused(server, peer, device, post(peer, device, options=[(option, value)]), w.code(5, 5),
                  "proxying_not_supported")


ACCEPTED_OPTIONS = {
    # §5.4.1: unrecognized elective options (even numbers) are ignored.
    "elective_65000": [(65000, b"x")],
    "elective_2048": [(2048, b"")],
    # Uri-Host and Uri-Port name this server (libcoap sends them for a host name).
    "uri_host": [(w.URI_HOST, "localhost")],
    "uri_port": [(w.URI_PORT, "PORT")],  # the server's own port, filled in below
    # Accept text/plain: the answer's format (§5.10.4).
    "accept_text": [(w.ACCEPT, w.TEXT_PLAIN)],
}


@pytest.mark.parametrize("case", ACCEPTED_OPTIONS)
def test_item10_options_the_server_must_accept(server, peer, case):
    """The other side of item 10, so that the fix does not overreach:
    elective options it does not know, Uri-Host, Uri-Port and an Accept it
    can meet are no reason to refuse (2.04, stored, nothing counted)."""
    device = f"accepted-{case}"
    options = [(n, server.port if v == "PORT" else v) for n, v in ACCEPTED_OPTIONS[case]]
    before = server.rejected()
    datagram = post(peer, device, options=options)
    answer = peer.exchange(datagram)
    problems: list[str] = []
    expect_answer(answer, datagram, w.CHANGED, problems)
    if server.values(device) != [1]:
        problems.append(f"stored {server.values(device)}; due: [1]")
    check_counted(before, server.rejected(), None, problems)
    assert not problems, "\n".join(problems)


def test_item10_libcoap_client_with_an_unrecognized_critical_option(server):
    """The same with libcoap's client adding option 65001 (-O)."""
    before = server.rejected()
    out = coap_client("-m", "post", "-t", "110", "-e", READING.decode(), "-O", "65001,x",
                      f"{server.uri}/v1/devices/libcoap-critical")
    problems: list[str] = []
    if "4.02" not in out.stdout + out.stderr:
        problems.append(f"libcoap printed {out.stdout + out.stderr!r}; due: 4.02")
    check_not_stored(server, "libcoap-critical", problems)
    check_counted(before, server.rejected(), "bad_option", problems)
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------
# Item 11: Empty messages, unknown methods, a bare payload marker
# ---------------------------------------------------------------------------


def test_item11_coap_ping_gets_a_reset(server, peer):
    """TD_COAP_CORE_31 and RFC 7252 §4.2/§4.3 (Table 1): an Empty CON
    elicits a Reset, four bytes: type RST, code 0.00, the same Message ID,
    no token, no payload. It is no rejection: counted nowhere. Before the fix (issue #14): no
    answer."""
    mid = peer.mid()
    before = server.rejected()
    peer.send(empty(CON, mid))
    problems: list[str] = []
    expect_reset(settle(peer), mid, problems)
    check_counted(before, server.rejected(), None, problems)
    assert not problems, "\n".join(problems)


EMPTY_WITH_BYTES = {
    "token": dict(token=b"\x01\x02"),
    "payload": dict(payload=b"\x01"),
    "marker_only": dict(marker=True),
    "token_and_payload": dict(token=b"\x07", payload=b"ping"),
    "option": dict(options=[(w.URI_PATH, "x")]),
}


@pytest.mark.parametrize("case", EMPTY_WITH_BYTES)
def test_item11_an_empty_con_with_bytes_after_the_header_gets_a_reset(server, peer, case):
    """RFC 7252 §4.1: an Empty message has TKL 0 and 'bytes of data MUST
    NOT be present after the Message ID field. If there are any bytes, they
    MUST be processed as a message format error.' §4.2: a CON with a format
    error is rejected with a Reset ('a recipient MUST either (a)
    acknowledge ... or (b) reject'). So: an Empty Reset, counted as
    malformed. Before the fix (issue #14): no answer, counted nowhere."""
    mid = peer.mid()
    before = server.rejected()
    peer.send(encode(type=CON, code=w.EMPTY, mid=mid, **EMPTY_WITH_BYTES[case]))
    problems: list[str] = []
    expect_reset(settle(peer), mid, problems)
    check_counted(before, server.rejected(), "malformed", problems)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("case,kw,reason", [
    ("empty", {}, "unexpected_message"),
    ("with_token", dict(token=b"\x01\x02"), "malformed"),
    ("with_payload", dict(payload=b"\x01"), "malformed"),
], ids=["empty", "with_token", "with_payload"])
def test_item11_an_empty_non_is_rejected(server, peer, case, kw, reason):
    """RFC 7252 §4.3: a NON 'MUST NOT be Empty'; the recipient MUST reject
    an Empty one or one with a format error, which 'MAY involve sending a
    matching Reset message, and apart from the Reset message the rejected
    message MUST be silently ignored.' Either an Empty Reset or nothing;
    counted (unexpected_message for an Empty NON, malformed when bytes
    follow the header). Before the fix (issue #14): ignored, counted nowhere."""
    mid = peer.mid()
    before = server.rejected()
    peer.send(encode(type=NON, code=w.EMPTY, mid=mid, **kw))
    problems: list[str] = []
    expect_reset(settle(peer), mid, problems, optional=True)
    check_counted(before, server.rejected(), reason, problems)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("method", [w.code(0, 8), w.code(0, 31)], ids=["0.08", "0.31"])
@pytest.mark.parametrize("path", ["/v1/devices/method-x", "/.well-known/core"])
def test_item11_an_unknown_method_gets_4_05(server, peer, method, path):
    """RFC 7252 §5.8: 'A request with an unrecognized or unsupported Method
    Code MUST generate a 4.05 (Method Not Allowed) piggybacked response.'
    Nothing stored; counted as method_not_allowed. Before the fix (issue #14): no answer."""
    before = server.rejected()
    datagram = request(method, path, mid=peer.mid(), token=peer.token(), content_format=w.SENML_JSON, payload=READING)
    peer.send(datagram)
    got = settle(peer)
    problems: list[str] = []
    if len(got) != 1:
        problems.append(f"answered {[show(r) for r in got]}; due: one 4.05")
    else:
        expect_answer(decode(got[0]), datagram, w.METHOD_NOT_ALLOWED, problems)
    check_not_stored(server, "method-x", problems)
    check_counted(before, server.rejected(), "method_not_allowed", problems)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("type_", [CON, NON], ids=["CON", "NON"])
def test_item11_a_payload_marker_with_no_payload_is_a_format_error(server, peer, type_):
    """RFC 7252 §3: 'The presence of a marker followed by a zero-length
    payload MUST be processed as a message format error.' A CON is rejected
    with an Empty Reset, a NON with a Reset or nothing (§4.2, §4.3); never a
    response; counted as malformed, not malformed_json. Before the fix (issue #14): 4.00
    'EOF while parsing a value', counted as malformed_json."""
    device = "marker-only"
    mid = peer.mid()
    before = server.rejected()
    peer.send(request(w.POST, f"/v1/devices/{device}", type=type_, mid=mid, token=peer.token(),
                      content_format=w.SENML_JSON, marker=True))
    problems: list[str] = []
    expect_reset(settle(peer), mid, problems, optional=type_ == NON)
    check_not_stored(server, device, problems)
    check_counted(before, server.rejected(), "malformed", problems)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("code", [w.code(1, 0), w.code(6, 1), w.code(7, 31), w.CONTENT, w.code(4, 4)],
                         ids=["1.00", "6.01", "7.31", "response-2.05", "response-4.04"])
def test_item11_a_con_with_a_reserved_class_or_a_response_gets_a_reset(server, peer, code):
    """RFC 7252 §4.2: a CON that 'uses a code with a reserved class (1, 6,
    or 7)' is rejected with a Reset; §5.3.2: an unexpected response is
    rejected the same way (the server sends no requests). Counted as
    unexpected_message. Before the fix (issue #14): no answer, counted nowhere."""
    mid = peer.mid()
    before = server.rejected()
    peer.send(encode(type=CON, code=code, mid=mid, token=b"\x11", options=w.path_options("/v1/devices/x")))
    problems: list[str] = []
    expect_reset(settle(peer), mid, problems)
    check_counted(before, server.rejected(), "unexpected_message", problems)
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------
# Item 12: every rejection is counted by reason
# ---------------------------------------------------------------------------


def _block(peer, device, num, more, payload, fmt=w.SENML_JSON):
    return request(w.POST, f"/v1/devices/{device}", mid=peer.mid(), token=b"\x42", content_format=fmt,
                   payload=payload, options=[(w.BLOCK1, w.block_value(num, more, 0))])


REJECTIONS = {
    # (request builder, code, reason, device that must stay empty)
    "GET_on_a_resource": (lambda p: request(w.GET, "/v1/devices/rej-get", mid=p.mid(), token=p.token()),
                          w.METHOD_NOT_ALLOWED, "method_not_allowed", "rej-get"),
    "DELETE_on_a_resource": (lambda p: request(w.DELETE, "/v1/devices/rej-del", mid=p.mid(), token=p.token()),
                             w.METHOD_NOT_ALLOWED, "method_not_allowed", "rej-del"),
    "FETCH_on_a_resource": (lambda p: request(w.FETCH, "/v1/devices/rej-fetch", mid=p.mid(), token=p.token(),
                                              content_format=w.SENML_JSON, payload=READING),
                            w.METHOD_NOT_ALLOWED, "method_not_allowed", "rej-fetch"),
    "NON_GET_on_a_resource": (lambda p: request(w.GET, "/v1/devices/rej-nget", type=NON, mid=p.mid(), token=p.token()),
                              w.METHOD_NOT_ALLOWED, "method_not_allowed", "rej-nget"),
    "POST_to_well_known_core": (lambda p: request(w.POST, "/.well-known/core", mid=p.mid(), token=p.token(),
                                                  content_format=w.SENML_JSON, payload=READING),
                                w.METHOD_NOT_ALLOWED, "method_not_allowed", None),
    # These were counted before issue #14: the same check keeps them so.
    "unknown_path": (lambda p: request(w.POST, "/nowhere", mid=p.mid(), token=p.token(),
                                       content_format=w.SENML_JSON, payload=READING),
                     w.NOT_FOUND, "not_found", None),
    "unsupported_format": (lambda p: post(p, "rej-fmt", fmt=41, payload=b"<x/>"),
                           w.UNSUPPORTED_CONTENT_FORMAT, "unsupported_format", "rej-fmt"),
    "bad_json": (lambda p: post(p, "rej-json", payload=b"[{not json"), w.BAD_REQUEST, "malformed_json", "rej-json"),
    "too_large": (lambda p: post(p, "rej-big", payload=json.dumps([{"n": f"p{i}", "v": i} for i in range(400)]).encode()),
                  w.REQUEST_ENTITY_TOO_LARGE, "too_large", "rej-big"),
    "block_out_of_order": (lambda p: _block(p, "rej-block", 3, True, b"x" * 16),
                           w.REQUEST_ENTITY_INCOMPLETE, "bad_block", "rej-block"),
    # Decoded, but the gateway stores none of it (a point name CDM refuses).
    "nothing_storable": (lambda p: post(p, "rej-none", payload=b'[{"n":"bad name!","v":1}]'),
                         w.BAD_REQUEST, "nothing_stored", "rej-none"),
}


@pytest.mark.parametrize("case", REJECTIONS)
def test_item12_every_rejection_is_counted_by_reason(server, peer, case):
    """Each answer of class 4 or 5 adds exactly one to exactly one reason in
    `devices --json` (coap.rejected). Before the fix (issue #14) the 4.05s are counted nowhere."""
    build, code, reason, device = REJECTIONS[case]
    before = server.rejected()
    datagram = build(peer)
    answer = peer.exchange(datagram)
    problems: list[str] = []
    expect_answer(answer, datagram, code, problems)
    if device:
        check_not_stored(server, device, problems)
    check_counted(before, server.rejected(), reason, problems)
    assert not problems, "\n".join(problems)


METRIC = re.compile(r'^biota_coap_rejected_total\{reason="([^"]+)"\} (\d+)$', re.M)


def test_item12_rejections_are_in_metrics_as_in_devices(server, peer):
    """/metrics (with [api]) has biota_coap_rejected_total{reason=...} for
    every reason `devices --json` shows, with the same count; a GET on a
    resource shows up under method_not_allowed in both."""
    datagram = request(w.GET, "/v1/devices/metrics-get", mid=peer.mid(), token=peer.token())
    assert peer.exchange(datagram).code == w.METHOD_NOT_ALLOWED
    settle(peer)
    rejected = server.rejected()
    metrics = {reason: int(n) for reason, n in METRIC.findall(server.metrics())}
    assert metrics == rejected, f"/metrics {metrics} but devices --json {rejected}"
    assert rejected.get("method_not_allowed", 0) >= 1, f"a 4.05 counted nowhere: {rejected}"


# ---------------------------------------------------------------------------
# Item 13: ETSI CoAP#4 test descriptions, server side
# ---------------------------------------------------------------------------


def test_td_coap_core_01_get_con(server, peer):
    """TD_COAP_CORE_01 on /.well-known/core (the server's only GET
    resource): ACK 2.05 with the request's MID and token, a Content-Format
    (40, link-format) and a non-empty payload. libcoap reads it too."""
    token = peer.token()
    datagram = request(w.GET, "/.well-known/core", mid=peer.mid(), token=token)
    m = peer.exchange(datagram)
    problems: list[str] = []
    expect_answer(m, datagram, w.CONTENT, problems)
    if m.uint(w.CONTENT_FORMAT) != w.LINK_FORMAT or not m.payload:
        problems.append(f"due: Content-Format 40 and a payload; got {m}")
    out = coap_client("-m", "get", f"{server.uri}/.well-known/core")
    if "</v1/devices/{device}>" not in out.stdout:
        problems.append(f"libcoap got {out.stdout!r} {out.stderr!r}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("method", [w.POST, w.PUT], ids=["TD_COAP_CORE_04-POST", "TD_COAP_CORE_03-PUT"])
def test_td_coap_core_03_04_put_and_post_con(server, peer, method):
    """TD_COAP_CORE_03 (PUT) and TD_COAP_CORE_04 (POST), CON: 2.04 Changed
    piggybacked with the MID and token, a Content-Format with the
    non-empty payload; the reading is stored. Raw, then libcoap, then
    aiocoap."""
    import aiocoap

    name = "put" if method == w.PUT else "post"
    datagram = request(method, f"/v1/devices/core-{name}", mid=peer.mid(), token=peer.token(),
                       content_format=w.SENML_JSON, payload=READING)
    m = peer.exchange(datagram)
    problems: list[str] = []
    expect_answer(m, datagram, w.CHANGED, problems)
    if m.payload and m.option(w.CONTENT_FORMAT) is None:
        problems.append(f"a payload without Content-Format: {m}")
    out = coap_client("-m", name, "-t", "110", "-e", '[{"n":"v","v":2}]', f"{server.uri}/v1/devices/core-{name}")
    if out.returncode != 0 or "stored 1" not in out.stdout:
        problems.append(f"libcoap: {out.stdout!r} {out.stderr!r}")
    r = aiocoap_request(f"{server.uri}/v1/devices/core-{name}", aiocoap.POST if method == w.POST else aiocoap.PUT,
                        b'[{"n":"v","v":3}]', content_format=110)
    if r.code != aiocoap.CHANGED:
        problems.append(f"aiocoap got {r.code} {r.payload!r}")
    if server.values(f"core-{name}") != [1, 2, 3]:
        problems.append(f"stored {server.values(f'core-{name}')}; due: [1, 2, 3]")
    assert not problems, "\n".join(problems)


def test_td_coap_core_05_get_non(server, peer):
    """TD_COAP_CORE_05: a NON GET of /.well-known/core gets a NON 2.05 with
    the token and a Content-Format (and a message id of the server's)."""
    token = peer.token()
    datagram = request(w.GET, "/.well-known/core", type=NON, mid=peer.mid(), token=token)
    m = peer.exchange(datagram)
    problems: list[str] = []
    expect_answer(m, datagram, w.CONTENT, problems)
    if m.uint(w.CONTENT_FORMAT) != w.LINK_FORMAT:
        problems.append(f"Content-Format {m.uint(w.CONTENT_FORMAT)}; due: 40")
    out = coap_client("-N", "-m", "get", f"{server.uri}/.well-known/core")
    if "</v1/devices/{device}>" not in out.stdout:
        problems.append(f"libcoap -N got {out.stdout!r} {out.stderr!r}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("method", [w.PUT, w.POST], ids=["TD_COAP_CORE_07-PUT", "TD_COAP_CORE_08-POST"])
def test_td_coap_core_07_08_put_and_post_non(server, peer, method):
    """TD_COAP_CORE_07 (PUT) and TD_COAP_CORE_08 (POST), NON: a NON 2.04
    with the token; stored. Raw, then libcoap (-N), then aiocoap (NON)."""
    import aiocoap

    name = "put" if method == w.PUT else "post"
    device = f"core-non-{name}"
    datagram = request(method, f"/v1/devices/{device}", type=NON, mid=peer.mid(), token=peer.token(),
                       content_format=w.SENML_JSON, payload=READING)
    m = peer.exchange(datagram)
    problems: list[str] = []
    expect_answer(m, datagram, w.CHANGED, problems)
    out = coap_client("-N", "-m", name, "-t", "110", "-e", '[{"n":"v","v":2}]', f"{server.uri}/v1/devices/{device}")
    if out.returncode != 0 or "stored 1" not in out.stdout:
        problems.append(f"libcoap -N: {out.stdout!r} {out.stderr!r}")
    r = aiocoap_request(f"{server.uri}/v1/devices/{device}", aiocoap.POST if method == w.POST else aiocoap.PUT,
                        b'[{"n":"v","v":3}]', content_format=110, non=True)
    if r.code != aiocoap.CHANGED or r.mtype != aiocoap.NON:
        problems.append(f"aiocoap NON got {r.mtype} {r.code} {r.payload!r}")
    if server.values(device) != [1, 2, 3]:
        problems.append(f"stored {server.values(device)}; due: [1, 2, 3]")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("token", [b"\x01\x02\x03\x04\x05\x06\x07\x08", b""],
                         ids=["TD_COAP_CORE_10-token-8", "TD_COAP_CORE_12-empty-token"])
def test_td_coap_core_10_12_tokens(server, peer, token):
    """TD_COAP_CORE_10 (an 8-byte token) and TD_COAP_CORE_12 (a zero-length
    token) on GET /.well-known/core: 2.05 echoing the token exactly."""
    datagram = request(w.GET, "/.well-known/core", mid=peer.mid(), token=token)
    problems: list[str] = []
    expect_answer(peer.exchange(datagram), datagram, w.CONTENT, problems)
    assert not problems, "\n".join(problems)


def test_td_coap_core_13_several_uri_path_options(server, peer):
    """TD_COAP_CORE_13, for our methods: a POST whose URI is three Uri-Path
    options (seg1, seg2, seg3) reaches the resource /seg1/seg2/seg3."""
    datagram = request(w.POST, "/seg1/seg2/seg3", mid=peer.mid(), token=peer.token(),
                       content_format=w.TEXT_PLAIN, payload=b"13.5")
    assert [v for n, v in decode(datagram).options if n == w.URI_PATH] == [b"seg1", b"seg2", b"seg3"]
    problems: list[str] = []
    expect_answer(peer.exchange(datagram), datagram, w.CHANGED, problems)
    if server.values("seg-dev", "value") != [13.5]:
        problems.append(f"stored {server.values('seg-dev', 'value')}")
    assert not problems, "\n".join(problems)


def test_td_coap_core_15_lossy_con(server, peer):
    """TD_COAP_CORE_15 (CON, piggybacked, lossy), with the server's
    deduplication (RFC 7252 §4.5):

    - a dropped request: libcoap drops its first datagram (-l 1) and
      retransmits it after its ACK timeout; stored once;
    - a dropped response: the same CON sent again with its message id gets
      the same ACK again, is counted as a duplicate and stored once;
    - a NON sent twice is stored once."""
    problems: list[str] = []
    out = coap_client("-l", "1", "-m", "post", "-t", "110", "-e", READING.decode(), f"{server.uri}/v1/devices/lossy-lib",
                      timeout=60)
    if out.returncode != 0 or "stored 1" not in out.stdout:
        problems.append(f"libcoap with its request dropped: {out.stdout!r} {out.stderr!r}")
    if server.values("lossy-lib") != [1]:
        problems.append(f"libcoap's reading stored as {server.values('lossy-lib')}")

    dups = server.status()["duplicates"]
    datagram = post(peer, "lossy-raw")
    first = peer.exchange(datagram)
    again = peer.exchange(datagram)
    if first.code != w.CHANGED or again.raw != first.raw:
        problems.append(f"answers {first} then {again}; due: the same 2.04 twice")
    if server.status()["duplicates"] != dups + 1:
        problems.append("the retransmission is not counted as a duplicate")
    non = post(peer, "lossy-non", type=NON)
    peer.exchange(non)
    peer.send(non)
    settle(peer)
    for device in ("lossy-raw", "lossy-non"):
        if server.values(device) != [1]:
            problems.append(f"{device} stored {server.values(device)}; due: once")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("method,accept,code", [
    (w.GET, w.LINK_FORMAT, w.CONTENT),
    (w.GET, w.XML, w.NOT_ACCEPTABLE),
    (w.POST, w.TEXT_PLAIN, w.CHANGED),
    (w.POST, w.JSON, w.NOT_ACCEPTABLE),
], ids=["GET-accept-40", "GET-accept-41", "POST-accept-0", "POST-accept-50"])
def test_td_coap_core_20_accept(server, peer, method, accept, code):
    """TD_COAP_CORE_20 (Accept), for what this server serves: link-format
    from /.well-known/core, text/plain answers to POST. RFC 7252 §5.10.4:
    'If the preferred Content-Format cannot be returned, then a 4.06 "Not
    Acceptable" MUST be sent'; a refused POST stores nothing; counted as
    not_acceptable. Before the fix (issue #14) the Accept option is ignored (2.05 / 2.04)."""
    path = "/.well-known/core" if method == w.GET else f"/v1/devices/accept-{accept}"
    before = server.rejected()
    datagram = request(method, path, mid=peer.mid(), token=peer.token(), options=[(w.ACCEPT, accept)],
                       **({} if method == w.GET else dict(content_format=w.SENML_JSON, payload=READING)))
    m = peer.exchange(datagram)
    problems: list[str] = []
    expect_answer(m, datagram, code, problems)
    if code == w.CONTENT and m.uint(w.CONTENT_FORMAT) != accept:
        problems.append(f"Content-Format {m.uint(w.CONTENT_FORMAT)}; due: {accept}")
    if method == w.POST and code != w.CHANGED:
        check_not_stored(server, f"accept-{accept}", problems)
    check_counted(before, server.rejected(), "not_acceptable" if code == w.NOT_ACCEPTABLE else None, problems)
    assert not problems, "\n".join(problems)


def block1_upload(peer: Peer, method: int, path: str, payload: bytes, szx: int, problems: list[str]) -> w.Message:
    """A Block1 transfer (RFC 7959 §2.5) following the TD's checks: each
    block but the last is answered 2.31 Continue with a Block1 echoing its
    NUM, M=1 and an SZX no larger than ours (a smaller one is adopted, the
    transfer going on from the byte where it was); the last block's answer
    carries Block1 with its NUM and M=0. Returns the final answer."""
    token = peer.token()
    offset, num = 0, 0
    first = True
    while True:
        size = 16 << szx
        chunk = payload[offset : offset + size]
        more = offset + size < len(payload)
        datagram = request(method, path, mid=peer.mid(), token=token,
                           content_format=w.SENML_JSON if first else None, payload=chunk,
                           options=[(w.BLOCK1, w.block_value(num, more, szx))])
        first = False
        m = peer.exchange(datagram)
        b1 = m.option(w.BLOCK1)
        if more:
            if m.code != w.CONTINUE:
                problems.append(f"block {num}: answered {m}; due: 2.31 Continue")
                return m
            if b1 is None:
                problems.append(f"block {num}: 2.31 without Block1")
                return m
            rnum, rmore, rszx = w.parse_block(b1)
            if rnum != num or not rmore or rszx > szx:
                problems.append(f"block {num}: 2.31 with Block1 {rnum}/{int(rmore)}/{rszx}; due: {num}/1/<={szx}")
            offset += size
            szx = min(szx, rszx)
            num = offset // (16 << szx)
            continue
        if b1 is None:
            problems.append(f"the last block ({num}) was answered {m.code_str} without a Block1 option; due: Block1 {num}/0/{szx}")
        else:
            rnum, rmore, rszx = w.parse_block(b1)
            if (rnum, rmore, rszx) != (num, False, szx):
                problems.append(f"the last block's answer has Block1 {rnum}/{int(rmore)}/{rszx}; due: {num}/0/{szx}")
        return m


@pytest.mark.parametrize("method", [w.PUT, w.POST], ids=["TD_COAP_BLOCK_03-PUT", "TD_COAP_BLOCK_04-POST"])
def test_td_coap_block_03_04_block1_uploads(server, peer, method, tmp_path):
    """TD_COAP_BLOCK_03 (PUT) and TD_COAP_BLOCK_04 (POST): Block1 in 64-byte
    blocks, raw with every check of the TD, then libcoap (-b 64) and the
    smallest size (-b 16). The final answer is 2.04 Changed (the resource
    takes readings and creates nothing, so no 2.01 and Location-Path as in
    BLOCK_04) and must carry Block1 NUM=n, M=0 (TD step 7, RFC 7959 §2.3).
    Before the fix (issue #14) it has no Block1 option."""
    name = "put" if method == w.PUT else "post"
    device = f"block-{name}"
    pack = [{"n": f"p{i}", "v": i} for i in range(20)]
    payload = json.dumps(pack).encode()
    assert len(payload) > 4 * 64
    problems: list[str] = []
    m = block1_upload(peer, method, f"/v1/devices/{device}", payload, 2, problems)
    if m.code != w.CHANGED or b"stored 20" not in m.payload:
        problems.append(f"final answer {m}; due: 2.04 'stored 20 ...'")
    for size in (64, 16):
        lib_pack = [{"n": f"lib{size}-p{i}", "v": i} for i in range(20)]
        (tmp_path / "pack.json").write_bytes(json.dumps(lib_pack).encode())
        out = coap_client("-m", name, "-t", "110", "-b", str(size), "-f", str(tmp_path / "pack.json"),
                          f"{server.uri}/v1/devices/{device}")
        if out.returncode != 0 or "stored 20" not in out.stdout:
            problems.append(f"libcoap -b {size}: {out.stdout!r} {out.stderr!r}")
    if len(server.latest(device)) != 60:
        problems.append(f"{len(server.latest(device))} points stored; due: 60")
    assert not problems, "\n".join(problems)


def block2_download(peer: Peer, path: str, first: int | None, problems: list[str]) -> bytes:
    """A Block2 transfer of GET `path` (RFC 7959 §2.4): `first` is the
    SZX of an early negotiation (a Block2 0/0/SZX in the first request),
    None for none (the server picks). Each block's answer must be 2.05
    with Content-Format 40 and a Block2 with the NUM asked for, an SZX no
    larger than asked, a full block while M=1. Returns the body."""
    body, num, szx = b"", 0, first
    while True:
        options = [] if szx is None else [(w.BLOCK2, w.block_value(num, False, szx))]
        datagram = request(w.GET, path, mid=peer.mid(), token=peer.token(), options=options)
        m = peer.exchange(datagram)
        expect_answer(m, datagram, w.CONTENT, problems)
        b2 = m.option(w.BLOCK2)
        if m.code != w.CONTENT or b2 is None:
            problems.append(f"block {num}: {m}; due: 2.05 with Block2")
            return body
        rnum, more, rszx = w.parse_block(b2)
        if m.uint(w.CONTENT_FORMAT) != w.LINK_FORMAT:
            problems.append(f"block {num}: Content-Format {m.uint(w.CONTENT_FORMAT)}; due: 40")
        if rnum != num or (szx is not None and rszx > szx):
            problems.append(f"block {num} (SZX {szx}) answered with Block2 {rnum}/{int(more)}/{rszx}")
            return body
        if more and len(m.payload) != 16 << rszx:
            problems.append(f"block {num}: {len(m.payload)} bytes with M=1; due: {16 << rszx}")
        body += m.payload
        if not more:
            return body
        szx, num = rszx, num + 1


def all_resources_listed(body: bytes) -> list[str]:
    text = body.decode(errors="replace")
    want = ["</v1/devices/{device}>", "</seg1/seg2/seg3>"] + [f"</plant/hall-{i}/line-{i}/{{device}}>" for i in range(HALLS)]
    missing = [w_ for w_ in want if w_ not in text]
    return [f"missing {missing} in {text[:200]!r}..."] if missing else []


def test_td_coap_block_01_02_well_known_core_in_blocks(server, peer):
    """TD_COAP_BLOCK_01 (early negotiation) and TD_COAP_BLOCK_02 (late
    negotiation), on the server's one GET resource: /.well-known/core,
    which lists 14 resources here (over 1024 bytes).

    - BLOCK_02: a GET without Block2 gets the first 1024-byte block with
      Block2 0/1/6; the client asks for the next ones; put together they
      are the whole list. libcoap and aiocoap (which follow Block2
      themselves) get the same list.
    - BLOCK_01: a GET with Block2 0/0/1 asks for 32-byte blocks from the
      start; the server uses that size; the same list. libcoap -b 32 too."""
    import aiocoap

    problems: list[str] = []
    late = block2_download(peer, "/.well-known/core", None, problems)
    assert not problems, "\n".join(problems)
    assert len(late) > 1024, f"the link-format is only {len(late)} bytes: the test needs more resources"
    problems += all_resources_listed(late)
    early = block2_download(peer, "/.well-known/core", 1, problems)
    if early != late:
        problems.append(f"32-byte blocks put together differ from the 1024-byte ones: {early[:80]!r}")
    for args in ((), ("-b", "32")):
        out = coap_client(*args, "-m", "get", f"{server.uri}/.well-known/core")
        if out.stdout.strip().encode() != late:
            problems.append(f"libcoap {' '.join(args)} got {out.stdout[:100]!r}... {out.stderr[-200:]!r}")
    r = aiocoap_request(f"{server.uri}/.well-known/core", aiocoap.GET)
    if r.code != aiocoap.CONTENT or r.payload != late:
        problems.append(f"aiocoap got {r.code} {r.payload[:100]!r}...")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("block,code,reason", [
    (w.block_value(1000, False, 0), w.BAD_OPTION, "bad_option"),
    (w.block_value(0, False, 7), w.BAD_REQUEST, "bad_block"),
], ids=["beyond-the-end", "szx-7"])
def test_td_coap_block_a_block2_the_server_cannot_serve(server, peer, block, code, reason):
    """A Block2 asking for a block past the end of /.well-known/core gets
    4.02 (the option is malformed for this representation, RFC 7252
    §5.9.2.3); SZX 7 gets 4.00 (RFC 7959 §2.2: reserved, 'MUST lead to a
    4.00 Bad Request'). Each counted."""
    before = server.rejected()
    datagram = request(w.GET, "/.well-known/core", mid=peer.mid(), token=peer.token(), options=[(w.BLOCK2, block)])
    problems: list[str] = []
    expect_answer(peer.exchange(datagram), datagram, code, problems)
    check_counted(before, server.rejected(), reason, problems)
    assert not problems, "\n".join(problems)


def test_td_coap_block_a_post_asking_for_small_answer_blocks(server, peer):
    """A Block2 in a POST asks for answers no larger than its block size
    (RFC 7959 §2.4, 'A server MUST use the block size indicated or a
    smaller size'). The 2.04's diagnostic ('stored 1 (seq <= N)') is
    longer than 16 bytes, so the 2.04 for Block2 SZX 0 has no payload; the
    reading is stored."""
    datagram = post(peer, "block2-post", options=[(w.BLOCK2, w.block_value(0, False, 0))])
    m = peer.exchange(datagram)
    problems: list[str] = []
    expect_answer(m, datagram, w.CHANGED, problems)
    if len(m.payload) > 16:
        problems.append(f"a {len(m.payload)}-byte payload in answer to Block2 SZX 0: {m}")
    if server.values("block2-post") != [1]:
        problems.append(f"stored {server.values('block2-post')}; due: [1]")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------
# The Observe client (RFC 7641): a gateway per test, observing a device
# ---------------------------------------------------------------------------


class Observer:
    """A gateway whose Observe client watches `targets` (addresses, at
    `path`, or (address, path) pairs); readings go to device "obs-<i>",
    point "v"."""

    def __init__(self, gateway_bin, spawn, write_config, state_dir, targets: list, *,
                 path: str = "/obs", grace: str = "1s", retry: str = "10s") -> None:
        targets = [t if isinstance(t, tuple) else (t, path) for t in targets]
        entries = "".join(f"""
[[drivers.coap.observe]]
address = "{address}"
path = "{target_path}"
device = "obs-{i}"
point = "v"
grace = "{grace}"
retry = "{retry}"
""" for i, (address, target_path) in enumerate(targets))
        config = f"""
[store]
commit_max_delay = "20ms"

[drivers.coap]
listen = ["127.0.0.1:{free_port()}"]
{entries}"""
        self.binary = gateway_bin
        self.state_dir = state_dir
        self.db = state_dir / "gateway.db"
        self.gw = spawn(gateway_bin, write_config(config), state_dir)
        # Queries before READY=1 can meet a database whose schema is being
        # made, which `query` reports as missing. (The Observe client may
        # register before READY=1; the device's socket keeps the datagram.)
        self.gw.wait_ready(timeout=30)

    def values(self, i: int = 0) -> list:
        return values(self.binary, self.db, f"obs-{i}", "v")

    def wait_values(self, want: list, i: int = 0, timeout: float = 20) -> None:
        wait_until(lambda: self.values(i) == want or len(self.values(i)) > len(want), timeout,
                   f"stored values {want}")
        assert self.values(i) == want, f"stored {self.values(i)}; due: {want}"

    def stop(self) -> None:
        assert "panicked" not in self.gw.stderr()
        assert self.gw.stop() == 0


@pytest.fixture
def device():
    d = Device()
    yield d
    d.close()


@pytest.fixture
def observer(gateway_bin, spawn, write_config, state_dir):
    def make(targets, **kw) -> Observer:
        return Observer(gateway_bin, spawn, write_config, state_dir, targets, **kw)

    return make


def check_registration(reg: w.Message, path: str = "/obs") -> None:
    """TD_COAP_OBS_01 step 2: CON GET, a token, Observe = empty (0)."""
    assert reg.type == CON and reg.code == w.GET, reg
    assert reg.option(w.OBSERVE) == b"", f"Observe must be empty (register): {reg}"
    assert 1 <= len(reg.token) <= 8, f"a client-generated token: {reg}"
    assert reg.path == path, reg


def next_from_gateway(dev: Device, timeout: float) -> w.Message | None:
    got = dev.recv(timeout)
    return got[0] if got else None


def test_td_coap_obs_01_con_notifications_raw(observer, device):
    """TD_COAP_OBS_01: the registration is a CON GET with an empty Observe
    and a token; the 2.05 with Observe comes piggybacked; every CON
    notification is acknowledged with an Empty ACK (type ACK, code 0.00,
    its message id, nothing else: RFC 7252 §4.2, §5.2.2); all are stored.
    Before the fix (issue #14) the ACK has code 0.01."""
    obs = observer([device.address])
    reg = device.registration()
    check_registration(reg)
    device.notify(reg, 1, b"20.5", type=ACK, max_age=60)
    problems: list[str] = []
    for seq, v in ((2, b"21.5"), (3, b"22.5")):
        mid = device.notify(reg, seq, v, type=CON, max_age=60)
        ack, _ = device.expect(10, f"ACK of CON notification {mid:#x}", lambda m: m.type in (ACK, RST) and m.mid == mid)
        if ack.raw != empty(ACK, mid):
            problems.append(f"notification {seq} acknowledged with {ack} ({ack.raw.hex()}); due: 6000{mid:04x}")
    obs.wait_values([20.5, 21.5, 22.5])
    assert not problems, "\n".join(problems)
    obs.stop()


def test_td_coap_obs_01_real_devices(observer, tmp_path):
    """TD_COAP_OBS_01 against real devices: libcoap's coap-server (/time,
    a notification every second) and aiocoap (peers/coap_observable.py,
    /sensors/temp every 0.3 s), observed by one gateway. Both send CON
    notifications to a CON registration; the gateway stores them, and
    neither device may see an ACK that is not Empty: libcoap logs every
    message it receives ('t:ACK c:0.00' is right), aiocoap warns "those
    don't fit" about an ACK that carries a code. Before the fix (issue #14) both get ACKs with
    code 0.01 (GET)."""
    lib_port, aio_port = free_port(), free_port()
    lib_log = tmp_path / "coap-server.log"
    aio_log = tmp_path / "aiocoap.log"
    lib = subprocess.Popen(["coap-server-notls", "-A", "127.0.0.1", "-p", str(lib_port), "-v", "7"],
                           stdout=open(lib_log, "wb"), stderr=subprocess.STDOUT)
    aio = subprocess.Popen([sys.executable, str(HERE / "peers" / "coap_observable.py"), str(aio_port), "10"],
                           stdout=subprocess.PIPE, stderr=open(aio_log, "wb"), text=True)
    try:
        assert aio.stdout.readline().strip() == "listening", "the aiocoap device did not start"
        obs = observer([(f"127.0.0.1:{lib_port}", "/time"), (f"127.0.0.1:{aio_port}", "/sensors/temp")], grace="5s")
        wait_until(lambda: len(obs.values(0)) >= 3, 20, "3 notifications from libcoap's /time")
        wait_until(lambda: len(obs.values(1)) >= 4, 20, "4 notifications from the aiocoap device")
        obs.stop()
    finally:
        for p in (lib, aio):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
    lib_text = lib_log.read_text(errors="replace")
    aio_text = aio_log.read_text(errors="replace")
    problems: list[str] = []
    bad_lib = sorted(set(re.findall(r"t:ACK c:(?:GET|POST|PUT|DELETE|0\.0[1-9]|0\.[1-3]\d)\b[^\n]*", lib_text)))
    if bad_lib:
        problems.append(f"libcoap received ACKs that are not Empty: {bad_lib[:3]}")
    if "t:ACK c:0.00" not in lib_text:
        problems.append("libcoap received no Empty ACK for its CON notifications")
    bad_aio = [line for line in aio_text.splitlines() if "don't fit" in line]
    if bad_aio:
        problems.append(f"aiocoap warned {len(bad_aio)} times: {bad_aio[0]}")
    assert not problems, "\n".join(problems)


def test_td_coap_obs_02_non_notifications(observer, device):
    """TD_COAP_OBS_02: NON notifications are stored and not acknowledged
    (RFC 7252 §4.3: 'A Non-confirmable message MUST NOT be acknowledged');
    the gateway sends nothing back."""
    obs = observer([device.address])
    reg = device.registration()
    check_registration(reg)
    device.notify(reg, 1, b"1.5", type=ACK, max_age=60)
    for seq in (2, 3, 4):
        device.notify(reg, seq, f"{seq}.5".encode(), type=NON, max_age=60)
    obs.wait_values([1.5, 2.5, 3.5, 4.5])
    # Anything the gateway sent in answer to them was sent before it stored
    # them. (A late copy of the registration, if this process was slow to
    # answer it, is no answer to a notification.)
    sent = [m for m in iter(lambda: next_from_gateway(device, 0.05), None) if m.mid != reg.mid]
    assert not sent, f"the gateway answered NON notifications: {sent}"
    obs.stop()


def test_td_coap_obs_04_max_age(observer, device):
    """TD_COAP_OBS_04: a resource that stops notifying (the device lost its
    observers) is registered again once Max-Age (1 s) plus grace (1 s) has
    passed since the last notification — not before — and notifications
    are stored again. (The TD re-registers with the same token; this client
    uses a new one, as documented, and Resets notifications for the old one:
    TD_COAP_OBS_06.)"""
    obs = observer([device.address], grace="1s")
    reg = device.registration()
    check_registration(reg)
    device.notify(reg, 1, b"5.5", type=ACK, max_age=1)
    sent_at = time.monotonic()
    again, at = device.expect(20, "a new registration after Max-Age + grace",
                              lambda m: m.code == w.GET and m.uint(w.OBSERVE) == 0 and m.mid != reg.mid)
    check_registration(again)
    assert at - sent_at >= 1.95, f"registered again {at - sent_at:.2f}s after a notification fresh for 1 s + 1 s grace"
    device.notify(again, 7, b"6.5", type=ACK, max_age=60)
    obs.wait_values([5.5, 6.5])
    obs.stop()


def test_td_coap_obs_06_notifications_for_an_unknown_token_get_an_empty_reset(observer, device):
    """TD_COAP_OBS_06, the client's part: a notification for a token the
    client does not (or no longer) use is rejected with a Reset — an Empty
    message with its message id (RFC 7252 §4.2, §4.3; RFC 7641 §3.6) — and
    not stored; a NON one gets the same Reset or nothing. Before the fix (issue #14) the Reset
    carries code 0.01."""
    obs = observer([device.address])
    reg = device.registration()
    device.notify(reg, 1, b"1.5", type=ACK, max_age=60)
    obs.wait_values([1.5])
    stranger = w.Message(1, CON, w.GET, 0, b"\xde\xad\xbe\xef")
    problems: list[str] = []
    mid = device.notify(stranger, 9, b"999", type=CON, max_age=60)
    rst, _ = device.expect(10, "Reset of the unknown token's CON notification", lambda m: m.mid == mid)
    if rst.raw != empty(RST, mid):
        problems.append(f"CON notification for an unknown token answered {rst} ({rst.raw.hex()}); due: 7000{mid:04x}")
    mid = device.notify(stranger, 10, b"998", type=NON, max_age=60)
    device.notify(reg, 2, b"2.5", type=NON, max_age=60)
    obs.wait_values([1.5, 2.5])
    for m in iter(lambda: next_from_gateway(device, 0.05), None):
        if m.mid == mid and m.raw != empty(RST, mid):
            problems.append(f"NON notification for an unknown token answered {m} ({m.raw.hex()}); due: 7000{mid:04x} or nothing")
    assert not problems, "\n".join(problems)
    obs.stop()


@pytest.mark.parametrize("code", [w.NOT_FOUND, w.NOT_ACCEPTABLE], ids=["TD_COAP_OBS_07-4.04", "TD_COAP_OBS_08-4.06"])
def test_td_coap_obs_07_08_an_error_notification_ends_the_observation(observer, device, code):
    """TD_COAP_OBS_07 (resource deleted: 4.04) and TD_COAP_OBS_08 (format
    changed: 4.06), the client's part: the CON error notification (no
    Observe) is acknowledged with an Empty ACK, nothing is stored from it,
    and a later notification with that token is not stored (the client no
    longer displays anything for it). The client registers again later
    (after `retry`) and stores what it gets. Before the fix (issue #14) the ACK has code 0.01."""
    obs = observer([device.address], retry="1s")
    reg = device.registration()
    device.notify(reg, 1, b"1.5", type=ACK, max_age=60)
    obs.wait_values([1.5])
    problems: list[str] = []
    mid = device.notify(reg, None, b"gone", type=CON, code=code, content_format=None)
    ack, _ = device.expect(10, "ACK of the error notification", lambda m: m.type in (ACK, RST) and m.mid == mid)
    if ack.raw != empty(ACK, mid):
        problems.append(f"error notification acknowledged with {ack} ({ack.raw.hex()}); due: 6000{mid:04x}")
    device.notify(reg, 5, b"777", type=NON)
    again = device.registration(timeout=20)
    device.notify(again, 1, b"2.5", type=ACK, max_age=60)
    obs.wait_values([1.5, 2.5])
    assert not problems, "\n".join(problems)
    obs.stop()


def test_td_coap_obs_09_updates_in_order(observer, device):
    """TD_COAP_OBS_09: updates of the observed resource are stored with
    their new values; one older than the last by the Observe number (RFC
    7641 §3.4: 12 after 13) is dropped."""
    obs = observer([device.address])
    reg = device.registration()
    device.notify(reg, 10, b"1.5", type=ACK, max_age=60)
    for seq, v in ((11, b"2.5"), (13, b"4.5"), (12, b"3.5"), (14, b"5.5")):
        device.notify(reg, seq, v, type=NON, max_age=60)
    obs.wait_values([1.5, 2.5, 4.5, 5.5])
    obs.stop()


def test_td_coap_obs_11_a_retransmitted_con_notification(observer, device):
    """TD_COAP_OBS_11 (lossy CON notifications), the client's part: the
    device did not get the ACK and sends the same CON notification again
    (same message id): it is acknowledged again with an Empty ACK and
    stored once. Before the fix (issue #14) the ACKs have code 0.01."""
    obs = observer([device.address])
    reg = device.registration()
    device.notify(reg, 1, b"1.5", type=ACK, max_age=60)
    mid = device.notify(reg, 2, b"2.5", type=CON, max_age=60)
    problems: list[str] = []
    for attempt in (1, 2):
        if attempt == 2:
            device.notify(reg, 2, b"2.5", type=CON, max_age=60, mid=mid)
        ack, _ = device.expect(10, f"ACK {attempt} of notification {mid:#x}", lambda m: m.type in (ACK, RST) and m.mid == mid)
        if ack.raw != empty(ACK, mid):
            problems.append(f"transmission {attempt} acknowledged with {ack} ({ack.raw.hex()}); due: 6000{mid:04x}")
    device.notify(reg, 3, b"3.5", type=NON, max_age=60)
    obs.wait_values([1.5, 2.5, 3.5])
    assert not problems, "\n".join(problems)
    obs.stop()


def test_td_coap_core_09_11_separate_response_to_the_registration(observer, device):
    """TD_COAP_CORE_09 / CORE_11 (separate response, a non-empty token), the
    client's part: the device acknowledges the registration with an Empty
    ACK and answers 3.5 s later in a CON 2.05. The Empty ACK ends the
    retransmissions (RFC 7252 §4.2: the sender retransmits 'until it
    receives an acknowledgement'; ACK_TIMEOUT is 2 s, at most 3 s with the
    random factor); the CON response is acknowledged with an Empty ACK
    (§5.2.2: 'the client's Acknowledgement to that response MUST also be an
    Empty message') and stored. Before the fix (issue #14) the registration is retransmitted
    after 2 s, and the ACK has code 0.01."""
    obs = observer([device.address], retry="10s")
    reg = device.registration()
    check_registration(reg)
    device.send(empty(ACK, reg.mid))
    problems: list[str] = []
    deadline = time.monotonic() + 3.5
    while (left := deadline - time.monotonic()) > 0:
        m = next_from_gateway(device, left)
        if m is not None:
            problems.append(f"after the Empty ACK the gateway sent {m}")
    mid = device.notify(reg, 1, b"9.5", type=CON, max_age=60)
    ack, _ = device.expect(10, "ACK of the separate response", lambda m: m.type in (ACK, RST) and m.mid == mid)
    if ack.raw != empty(ACK, mid):
        problems.append(f"separate response acknowledged with {ack} ({ack.raw.hex()}); due: 6000{mid:04x}")
    obs.wait_values([9.5])
    assert not problems, "\n".join(problems)
    obs.stop()


MALFORMED_RESETS = {
    "code_0.01": lambda mid: encode(type=RST, code=w.GET, mid=mid),
    "with_token": lambda mid: encode(type=RST, code=w.EMPTY, mid=mid, token=b"\x01\x02"),
    "with_payload": lambda mid: encode(type=RST, code=w.EMPTY, mid=mid, payload=b"x"),
}


def test_item08_observe_client_ignores_a_malformed_reset(observer, device):
    """RFC 7252 §4.2: 'Rejecting an Acknowledgement or Reset message
    (including the case where ... the Reset message is not Empty) is
    effected by silently ignoring it.' Three malformed Resets to the
    registration (code 0.01; a token; a payload) change nothing: the next
    thing the device gets is the retransmission of the same registration
    (same message id and token, after ACK_TIMEOUT). Before the fix (issue #14) the first one
    makes the client register again at once with a new token."""
    obs = observer([device.address], retry="10s")
    reg = device.registration()
    for make in MALFORMED_RESETS.values():
        device.send(make(reg.mid))
    nxt = device.registration(timeout=15)
    assert (nxt.mid, nxt.token) == (reg.mid, reg.token), (
        f"after malformed Resets the client sent {nxt}; due: a retransmission of {reg}")
    device.notify(nxt, 1, b"3.5", type=ACK, max_age=60)
    obs.wait_values([3.5])
    obs.stop()


def test_observe_a_reset_registration_is_tried_again_after_retry(observer, device):
    """A device that rejects the registration with a (well-formed) Reset
    cancels that exchange (RFC 7252 §4.2); the client registers again with
    a new token, but only after `retry` (2 s), like a registration that got
    no answer. Before the fix (issue #14) it registers again at once: a device that Resets
    every registration gets them in a loop with no pause."""
    obs = observer([device.address], retry="2s")
    reg = device.registration()
    device.send(empty(RST, reg.mid))
    reset_at = time.monotonic()
    again, at = device.expect(15, "a new registration", lambda m: m.code == w.GET and m.uint(w.OBSERVE) == 0)
    assert again.token != reg.token and again.mid != reg.mid, again
    assert at - reset_at >= 1.95, f"registered again {at - reset_at:.3f}s after a Reset; due: after retry (2 s)"
    device.notify(again, 1, b"4.5", type=ACK, max_age=60)
    obs.wait_values([4.5])
    obs.stop()


def test_observe_client_rejects_what_it_cannot_process(observer, device):
    """The Observe client as a CoAP endpoint (RFC 7252 §4.2, §5.4.1): a
    CON notification with an unrecognized critical option (65001) is
    rejected with an Empty Reset and not stored; a malformed CON (TKL 9)
    gets an Empty Reset; a CoAP ping gets its Reset; a notification of
    version 2 is silently ignored. None of them is stored, and the next
    good notification is."""
    obs = observer([device.address])
    reg = device.registration()
    device.notify(reg, 1, b"1.5", type=ACK, max_age=60)
    obs.wait_values([1.5])
    problems: list[str] = []

    def expect_reset(mid: int, what: str) -> None:
        m, _ = device.expect(10, f"Reset of {what}", lambda m: m.mid == mid)
        if m.raw != empty(RST, mid):
            problems.append(f"{what} answered {m} ({m.raw.hex()}); due: 7000{mid:04x}")

    mid = device.mid()
    device.send(encode(type=CON, code=w.CONTENT, mid=mid, token=reg.token,
                       options=[(w.OBSERVE, 2), (w.CONTENT_FORMAT, b""), (65001, b"x")], payload=b"666"))
    expect_reset(mid, "a notification with option 65001")
    mid = device.mid()
    device.send(encode(type=CON, code=w.CONTENT, mid=mid, tkl=9, token=b"\0" * 9))
    expect_reset(mid, "a CON with TKL 9")
    mid = device.mid()
    device.send(empty(CON, mid))
    expect_reset(mid, "a CoAP ping")
    device.send(encode(type=NON, code=w.CONTENT, mid=device.mid(), token=reg.token, version=2,
                       options=[(w.OBSERVE, 3), (w.CONTENT_FORMAT, b"")], payload=b"667"))
    device.notify(reg, 4, b"4.5", type=NON, max_age=60)
    obs.wait_values([1.5, 4.5])
    assert not problems, "\n".join(problems)
    obs.stop()
