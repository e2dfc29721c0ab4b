"""The CDM test vectors in docs/cdm.md, recomputed independently.

Each ```vector block's reading is encoded here with eth_abi's
`encode_packed` — the Python twin of Solidity's `abi.encodePacked` — using
the Solidity types the specification lists, and hashed with keccak256 as
the EVM computes it. Encoding and leaf must equal the document's bytes, so
a smart contract that does `keccak256(abi.encodePacked(...))` reproduces
the gateway's leaf. Each ```node block is checked as
keccak256(0x01 || left || right). Nothing here uses the gateway's code.
"""

from __future__ import annotations

import json
import math
import re
import struct

import pytest
from eth_abi.packed import encode_packed
from eth_hash.auto import keccak

from conftest import REPO

CDM_DOC = REPO / "docs" / "cdm.md"

VERSION = 1
QUALITY = {"good": 0, "uncertain": 1, "bad": 2}
KIND = {"bool": 1, "i64": 2, "f64": 3, "text": 4, "bytes": 5}

BLOCK_RE = re.compile(r"^```(vector|node)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def parse_blocks(text: str) -> list[tuple[str, int, dict[str, str]]]:
    """(kind, line number, {field: value}) for each ```vector / ```node block."""
    blocks = []
    for m in BLOCK_RE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        fields: dict[str, str] = {}
        for raw in m.group(2).splitlines():
            if not raw.strip():
                continue
            key, sep, value = raw.partition(":")
            assert sep, f"docs/cdm.md:{line}: line without 'key: value': {raw!r}"
            key = key.strip()
            assert key not in fields, f"docs/cdm.md:{line}: {key} given twice"
            fields[key] = value.strip()
        blocks.append((m.group(1), line, fields))
    return blocks


def hex_bytes(s: str) -> bytes:
    assert s.startswith("0x"), f"not 0x-hex: {s!r}"
    return bytes.fromhex(s[2:])


def value_types_and_values(value: dict) -> tuple[str, list[str], list]:
    """(kind, Solidity types, values) of field 14 for a tagged JSON value."""
    assert len(value) == 1, f"value must have exactly one kind tag: {value}"
    (kind, v), = value.items()
    if kind == "bool":
        assert isinstance(v, bool)
        return kind, ["bool"], [v]
    if kind == "i64":
        assert isinstance(v, int) and not isinstance(v, bool)
        assert -(2**63) <= v < 2**63
        return kind, ["int64"], [v]
    if kind == "f64":
        assert isinstance(v, (int, float)) and not isinstance(v, bool)
        f = float(v)
        assert math.isfinite(f), "the spec makes NaN/inf unrepresentable"
        if f == 0.0:
            f = 0.0  # the spec stores -0.0 as +0.0
        return kind, ["bytes8"], [struct.pack(">d", f)]
    if kind == "text":
        assert isinstance(v, str)
        data = v.encode("utf-8")
        return kind, ["uint32", "string"], [len(data), v]
    if kind == "bytes":
        data = hex_bytes(v)
        return kind, ["uint32", "bytes"], [len(data), data]
    raise AssertionError(f"unknown value kind {kind!r}")


def encode_reading(reading: dict) -> tuple[str, bytes]:
    """(value kind, canonical encoding v1) via abi.encodePacked types."""
    device = reading["device"].encode("utf-8")
    point = reading["point"].encode("utf-8")
    unit = reading.get("unit")
    unit = "" if unit is None else unit
    source = reading["source"].encode("utf-8")
    kind, vtypes, vvalues = value_types_and_values(reading["value"])
    types = [
        "uint8", "uint64", "int64", "uint8",
        "uint8", "string",
        "uint8", "string",
        "uint8", "string",
        "uint16", "string",
        "uint8",
    ] + vtypes
    values = [
        VERSION, reading["seq"], reading["ts"], QUALITY[reading["quality"]],
        len(device), reading["device"],
        len(point), reading["point"],
        len(unit.encode("utf-8")), unit,
        len(source), reading["source"],
        KIND[kind],
    ] + vvalues
    return kind, encode_packed(types, values)


def leaf(encoding: bytes) -> bytes:
    return keccak(b"\x00" + encoding)


def node(left: bytes, right: bytes) -> bytes:
    assert len(left) == 32 and len(right) == 32
    return keccak(b"\x01" + left + right)


# -- the tools themselves, on values fixed outside this project ------------


def test_keccak_is_the_evm_one_not_sha3():
    # keccak256("") as every EVM returns it; FIPS SHA3-256("") is a7ffc6f8...
    assert keccak(b"").hex() == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"


def test_encode_packed_is_solidity_packed():
    # abi.encodePacked(uint8(1), uint16(0x0203), int64(-1), bool(true), "ab", bytes8(0x..))
    got = encode_packed(
        ["uint8", "uint16", "int64", "bool", "string", "bytes8"],
        [1, 0x0203, -1, True, "ab", b"\x00" * 7 + b"\x09"],
    )
    assert got.hex() == "01" "0203" "ffffffffffffffff" "01" "6162" "0000000000000009"


# -- the document ------------------------------------------------------------


def load_blocks() -> list[tuple[str, int, dict[str, str]]]:
    assert CDM_DOC.is_file(), f"{CDM_DOC} is missing"
    blocks = parse_blocks(CDM_DOC.read_text(encoding="utf-8"))
    assert blocks, "docs/cdm.md has no ```vector or ```node blocks"
    return blocks


@pytest.fixture(scope="module")
def blocks():
    return load_blocks()


def test_every_vector_block_is_reproduced_by_encode_packed(blocks):
    checked = 0
    failures = []
    for kind, line, fields in blocks:
        if kind != "vector":
            continue
        for key in ("reading", "encoding", "leaf"):
            assert key in fields, f"docs/cdm.md:{line}: vector block without `{key}:`"
        reading = json.loads(fields["reading"])
        vkind, encoding = encode_reading(reading)
        want_encoding = hex_bytes(fields["encoding"])
        want_leaf = hex_bytes(fields["leaf"])
        if encoding != want_encoding:
            failures.append(
                f"docs/cdm.md:{line} ({vkind}): encoding differs\n"
                f"  document:      0x{want_encoding.hex()}\n  encodePacked:  0x{encoding.hex()}"
            )
        got_leaf = leaf(encoding)
        if got_leaf != want_leaf:
            failures.append(
                f"docs/cdm.md:{line} ({vkind}): leaf differs\n"
                f"  document: 0x{want_leaf.hex()}\n  keccak:   0x{got_leaf.hex()}"
            )
        # The document's own encoding must hash to its own leaf too.
        if leaf(want_encoding) != want_leaf:
            failures.append(f"docs/cdm.md:{line}: leaf is not keccak256(0x00 || encoding)")
        checked += 1
    assert not failures, "\n".join(failures)
    assert checked > 0, "no ```vector blocks in docs/cdm.md"
    print(f"{checked} vectors reproduced")


def test_every_node_block_is_keccak_of_0x01_left_right(blocks):
    checked = 0
    for kind, line, fields in blocks:
        if kind != "node":
            continue
        for key in ("left", "right", "node"):
            assert key in fields, f"docs/cdm.md:{line}: node block without `{key}:`"
        got = node(hex_bytes(fields["left"]), hex_bytes(fields["right"]))
        assert got == hex_bytes(fields["node"]), (
            f"docs/cdm.md:{line}: node differs\n  document: {fields['node']}\n  keccak:   0x{got.hex()}"
        )
        checked += 1
    assert checked > 0, "no ```node blocks in docs/cdm.md"


def test_vectors_cover_every_value_kind_and_quality(blocks):
    kinds = set()
    qualities = set()
    with_unit = without_unit = 0
    for kind, _, fields in blocks:
        if kind == "vector":
            reading = json.loads(fields["reading"])
            kinds.update(reading["value"].keys())
            qualities.add(reading["quality"])
            if reading.get("unit") is None:
                without_unit += 1
            else:
                with_unit += 1
    assert kinds == set(KIND), f"value kinds without a vector: {sorted(set(KIND) - kinds)}"
    assert qualities == set(QUALITY), f"qualities without a vector: {sorted(set(QUALITY) - qualities)}"
    assert with_unit and without_unit, "need vectors with and without a unit"


def test_parser_reads_blocks_exactly():
    """The block parser itself: a block is recognised only with its fence."""
    text = (
        "intro\n```vector\nreading: {\"a\":1}\nencoding: 0x01\nleaf: 0x02\n```\n"
        "```json\nnot: this\n```\n```node\nleft: 0x00\nright: 0x01\nnode: 0x02\n```\n"
    )
    got = parse_blocks(text)
    assert [(k, line) for k, line, _ in got] == [("vector", 2), ("node", 10)]
    assert got[0][2] == {"reading": '{"a":1}', "encoding": "0x01", "leaf": "0x02"}
