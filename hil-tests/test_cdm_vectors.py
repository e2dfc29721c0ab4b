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

import pytest
from eth_abi.packed import encode_packed
from eth_hash.auto import keccak

from cdm import KIND, QUALITY, encode_reading, hex_bytes, leaf, load_blocks, node, parse_blocks


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
