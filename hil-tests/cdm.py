"""The CDM of docs/cdm.md recomputed independently of the gateway's code: the
canonical encoding (version 1) through eth_abi's `encode_packed` — the Python
twin of Solidity's `abi.encodePacked` — with the Solidity types the
specification lists, leaf and node hashes with keccak256 as the EVM computes
it, and the document's ```vector / ```node test-vector blocks.

Used by test_cdm_vectors.py (the document against itself) and
test_anchor_contract.py (the document against the anchor contract).
"""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path

from eth_abi.packed import encode_packed
from eth_hash.auto import keccak

CDM_DOC = Path(__file__).resolve().parent.parent / "docs" / "cdm.md"

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
        # A number (docs/cdm.md's vectors) or a decimal string (bundles, format 2).
        v = int(v) if isinstance(v, str) else v
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
        VERSION, int(reading["seq"]), int(reading["ts"]), QUALITY[reading["quality"]],
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


def load_blocks() -> list[tuple[str, int, dict[str, str]]]:
    assert CDM_DOC.is_file(), f"{CDM_DOC} is missing"
    blocks = parse_blocks(CDM_DOC.read_text(encoding="utf-8"))
    assert blocks, "docs/cdm.md has no ```vector or ```node blocks"
    return blocks


def raw_value(value: dict) -> tuple[int, bytes]:
    """(kind code, raw value bytes) of a tagged JSON value, as the anchor contract's
    `Reading.value` takes it: field 14 without the length prefix of text and bytes."""
    kind, types, values = value_types_and_values(value)
    if kind in ("text", "bytes"):
        types, values = types[1:], values[1:]
    return KIND[kind], encode_packed(types, values)


def reading_struct(reading: dict) -> tuple:
    """A JSON reading as the anchor contract's `Reading` tuple
    (seq, ts, quality, device, point, unit, source, kind, value)."""
    kind, value = raw_value(reading["value"])
    return (
        int(reading["seq"]), int(reading["ts"]), QUALITY[reading["quality"]],
        reading["device"], reading["point"], reading.get("unit") or "", reading["source"],
        kind, value,
    )


def reading_leaf(reading: dict) -> bytes:
    """The leaf hash of a JSON reading."""
    return leaf(encode_reading(reading)[1])
