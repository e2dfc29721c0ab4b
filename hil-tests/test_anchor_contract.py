"""The anchor contract (contracts/BiotaAnchor.sol) on a real EVM: anvil from
npm, the bytecode compiled by the pinned solc-js, JSON-RPC over loopback.

It is checked against the specifications, not against the gateway's code:
leaves against docs/cdm.md's test vectors, Merkle roots and proofs against
hil-tests/merkle.py (written from docs/anchoring.md), and the batch hash
against the formula there. The gas each function costs is printed (run
pytest with -s) and recorded in docs/anchoring.md, "Gas".
"""

from __future__ import annotations

import json
import struct

import pytest
from eth_abi import encode
from eth_hash.auto import keccak

import merkle
from cdm import KIND, hex_bytes, load_blocks, node, reading_leaf, reading_struct
from chain import (
    REPO,
    Anvil,
    BUILD_DIR,
    Contract,
    Reverted,
    anchor_contract,
    anvil,  # noqa: F401  (the fixture)
    compile_contracts,
    load_artifact,
)

ZERO = merkle.ZERO
SOURCE = REPO / "contracts" / "BiotaAnchor.sol"
CONSUMER_SOURCE = REPO / "contracts" / "test" / "Consumer.sol"


# ---------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    node = Anvil(tmp_path_factory.mktemp("anvil"))
    node.start()
    try:
        yield node
    finally:
        node.close()


@pytest.fixture
def anchor(chain):
    """A fresh BiotaAnchor owned by accounts[0]; accounts[1] is an authorized gateway."""
    contract = anchor_contract(chain)
    contract.send("setGateway", chain.accounts[1], True)
    return contract


@pytest.fixture(scope="module")
def consumer_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("consumer-build")
    compile_contracts(out, CONSUMER_SOURCE)
    return out


def make_reading(seq: int) -> dict:
    """A valid reading for `seq`, cycling through the five value kinds."""
    kind = seq % 5
    value = [
        {"bool": seq % 2 == 0},
        {"i64": -(seq * 7919) if seq % 3 else seq << 40},
        {"f64": seq / 8 - 1000.25},
        {"text": f"état {seq} ✓"},
        {"bytes": "0x" + keccak(seq.to_bytes(8, "big")).hex()[: 2 * (seq % 17)]},
    ][kind]
    reading = {
        "device": f"press-{seq % 3}", "point": ["running", "strokes", "temperature", "alarm/text", "raw"][kind],
        "ts": 1767225600000000000 + seq * 1_000_003, "value": value,
        "quality": ["good", "uncertain", "bad"][seq % 3], "seq": seq, "source": "sim://press",
    }
    if kind == 2:
        reading["unit"] = "Cel"
    return reading


class Batch:
    """A batch built here from the spec: readings, tree, root, batch hash."""

    def __init__(self, index: int, first_seq: int, count: int, prev_hash: bytes):
        self.index, self.first_seq, self.count, self.prev_hash = index, first_seq, count, prev_hash
        self.last_seq = first_seq + count - 1
        self.readings = [make_reading(s) for s in range(first_seq, first_seq + count)]
        self.leaves = [reading_leaf(r) for r in self.readings]
        self.tree = merkle.levels(self.leaves)
        self.root = self.tree[-1][0]
        self.hash = merkle.batch_hash(index, first_seq, self.last_seq, count, self.root, prev_hash)

    def header(self) -> tuple:
        return (self.index, self.first_seq, self.last_seq, self.count, self.root, self.prev_hash)

    def proof(self, position: int) -> list[bytes]:
        return merkle.proof(self.tree, position)


def build_batches(sizes: list[int], first_index: int = 1, first_seq: int = 1, prev_hash: bytes = ZERO) -> list[Batch]:
    batches = []
    for i, size in enumerate(sizes):
        b = Batch(first_index + i, first_seq, size, prev_hash)
        batches.append(b)
        first_seq, prev_hash = b.last_seq + 1, b.hash
    return batches


def expect_revert(error: str, fn, *args, **kw) -> tuple:
    with pytest.raises(Reverted) as caught:
        fn(*args, **kw)
    assert caught.value.error == error, f"expected {error}, got {caught.value}"
    return caught.value.args_


# ---------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------


def test_committed_build_is_what_the_pinned_solc_makes(tmp_path):
    compile_contracts(tmp_path, SOURCE)
    for name in ("BiotaAnchor.abi.json", "BiotaAnchor.bin"):
        assert (tmp_path / name).read_bytes() == (BUILD_DIR / name).read_bytes(), (
            f"contracts/build/{name} is not what contracts/build.mjs makes of contracts/BiotaAnchor.sol: "
            "run `node contracts/build.mjs` and commit the result"
        )
    pinned = json.loads((REPO / "hil-tests" / "package.json").read_text())["dependencies"]["solc"]
    assert f"pragma solidity {pinned};" in SOURCE.read_text(), "the pragma must pin the npm solc version"


# ---------------------------------------------------------------------------
# Leaves: the contract against docs/cdm.md
# ---------------------------------------------------------------------------


def test_leaf_of_equals_every_cdm_test_vector(anchor):
    kinds = set()
    for kind, line, fields in load_blocks():
        if kind != "vector":
            continue
        reading = json.loads(fields["reading"])
        got = anchor.call("leafOf", reading_struct(reading))
        assert got == hex_bytes(fields["leaf"]), f"docs/cdm.md:{line}: leafOf gives 0x{got.hex()}"
        kinds.update(reading["value"])
    assert kinds == set(KIND), f"vectors of docs/cdm.md miss kinds {set(KIND) - kinds}"


def test_leaf_of_equals_the_python_encoding_on_generated_readings(anchor):
    for seq in range(1, 41):
        reading = make_reading(seq)
        assert anchor.call("leafOf", reading_struct(reading)) == reading_leaf(reading), reading


def test_leaf_of_rejects_what_the_encoding_cannot_hold(anchor):
    good = reading_struct(make_reading(3))  # an f64 reading with a unit
    assert anchor.call("leafOf", good)

    def with_(**changes):
        names = ("seq", "ts", "quality", "device", "point", "unit", "source", "kind", "value")
        values = dict(zip(names, good))
        values.update(changes)
        return tuple(values[n] for n in names)

    cases = [
        (4, with_(quality=3)),
        (6, with_(device="")),
        (6, with_(device="d" * 65)),
        (8, with_(point="")),
        (8, with_(point="p" * 129)),
        (10, with_(unit="u" * 33)),
        (12, with_(source="")),
        (12, with_(source="s" * 257)),
        (13, with_(kind=0)),
        (13, with_(kind=6)),
        (14, with_(kind=1, value=b"")),
        (14, with_(kind=1, value=b"\x02")),
        (14, with_(kind=1, value=b"\x01\x00")),
        (14, with_(kind=2, value=b"\x00" * 7)),
        (14, with_(kind=3, value=b"\x00" * 9)),
        (14, with_(kind=3, value=struct.pack(">d", float("nan")))),
        (14, with_(kind=3, value=struct.pack(">d", float("inf")))),
        (14, with_(kind=3, value=struct.pack(">d", float("-inf")))),
        (14, with_(kind=3, value=struct.pack(">d", -0.0))),
        (14, with_(kind=4, value=b"t" * 4097)),
        (14, with_(kind=5, value=b"\x00" * 4097)),
    ]
    for field, reading in cases:
        assert expect_revert("InvalidReading", anchor.call, "leafOf", reading) == (field,), reading
    # The limits themselves are allowed.
    for ok in (with_(device="d" * 64, point="p" * 128, unit="u" * 32, source="s" * 256),
               with_(unit=""), with_(kind=4, value=b"t" * 4096), with_(kind=5, value=b""),
               with_(kind=1, value=b"\x00"), with_(kind=3, value=struct.pack(">d", 0.0))):
        assert anchor.call("leafOf", ok)


# ---------------------------------------------------------------------------
# The reference Merkle code itself
# ---------------------------------------------------------------------------


def test_reference_merkle_follows_the_odd_node_rule():
    a, b, c, d, e = (keccak(bytes([i])) for i in range(5))
    n = node
    assert merkle.root([a]) == a
    assert merkle.root([a, b]) == n(a, b)
    assert merkle.root([a, b, c]) == n(n(a, b), c)  # c promoted, not n(c, c)
    assert merkle.root([a, b, c, d, e]) == n(n(n(a, b), n(c, d)), e)
    tree = merkle.levels([a, b, c, d, e])
    assert merkle.proof(tree, 4) == [n(n(a, b), n(c, d))]  # two levels skipped
    assert merkle.proof(tree, 2) == [d, n(a, b), e]
    for count in range(1, 70):
        leaves = [keccak(i.to_bytes(4, "big")) for i in range(count)]
        tree = merkle.levels(leaves)
        for p in range(count):
            pr = merkle.proof(tree, p)
            assert len(pr) == merkle.proof_length(p, count)
            assert merkle.verify(tree[-1][0], count, p, leaves[p], pr)
            assert not merkle.verify(tree[-1][0], count, p, leaves[p], pr + [a])
    # Duplicating the last node would make [a, b, c] and [a, b, c, c] collide; the rule keeps them apart.
    assert merkle.root([a, b, c]) != merkle.root([a, b, c, c])


# ---------------------------------------------------------------------------
# Anchoring and verifying
# ---------------------------------------------------------------------------


def check_batch_on_chain(anchor, gw: str, batch: Batch, every_position: bool = True) -> None:
    stored = anchor.call("batchOf", gw, batch.index)
    root, batch_hash, first_seq, last_seq, count, block_number = stored
    assert (root, batch_hash, first_seq, last_seq, count) == (
        batch.root, batch.hash, batch.first_seq, batch.last_seq, batch.count)
    assert block_number > 0
    positions = range(batch.count) if every_position else sorted({0, 1, batch.count // 2, batch.count - 1} & set(range(batch.count)))
    other = keccak(b"other")
    for p in positions:
        leaf, proof, reading = batch.leaves[p], batch.proof(p), batch.readings[p]
        args = (gw, batch.index)
        assert anchor.call("verifyLeaf", *args, p, leaf, proof), (batch.count, p)
        assert anchor.call("verifyReading", *args, reading_struct(reading), proof), (batch.count, p)
        assert not anchor.call("verifyLeaf", *args, p, other, proof)
        changed = dict(reading, ts=reading["ts"] + 1)
        assert not anchor.call("verifyReading", *args, reading_struct(changed), proof)
        for k in range(len(proof)):
            bad = list(proof)
            bad[k] = other
            assert not anchor.call("verifyLeaf", *args, p, leaf, bad), (batch.count, p, k)
        if batch.count > 1:
            assert not anchor.call("verifyLeaf", *args, (p + 1) % batch.count, leaf, proof)
        assert not anchor.call("verifyLeaf", *args, batch.count, leaf, proof)  # position past the end
        assert not anchor.call("verifyLeaf", *args, p, leaf, proof + [other])
        assert not anchor.call("verifyLeaf", *args, p, leaf, [other] + proof)
        if proof:
            assert not anchor.call("verifyLeaf", *args, p, leaf, proof[:-1])
            assert not anchor.call("verifyLeaf", *args, p, leaf, proof[1:])
        assert not anchor.call("verifyLeaf", gw, batch.index + 10_000, p, leaf, proof)  # unknown batch
        assert not anchor.call("verifyLeaf", anchor.chain.accounts[9], batch.index, p, leaf, proof)
    # A reading whose seq is outside the batch, with an otherwise correct proof.
    outside = dict(batch.readings[0], seq=batch.last_seq + 1)
    assert not anchor.call("verifyReading", gw, batch.index, reading_struct(outside), batch.proof(0))
    if batch.first_seq > 1:
        outside = dict(batch.readings[0], seq=batch.first_seq - 1)
        assert not anchor.call("verifyReading", gw, batch.index, reading_struct(outside), batch.proof(0))


def test_anchor_and_anchor_many_then_every_proof_of_sizes_1_to_40_and_1000(anchor):
    gw = anchor.chain.accounts[1]
    sizes = list(range(1, 41)) + [1000]
    batches = build_batches(sizes)
    # 1..20 one transaction each; 21..40 by anchorMany in fives; 1000 alone again.
    for b in batches[:20]:
        receipt = anchor.send("anchor", *b.header(), sender=gw)
        (event,) = anchor.events(receipt, "Anchored")
        event["gateway"] = event["gateway"].lower()
        assert event == {"gateway": gw, "index": b.index, "firstSeq": b.first_seq, "lastSeq": b.last_seq,
                         "count": b.count, "root": b.root, "batchHash": b.hash}
    for i in range(20, 40, 5):
        group = batches[i:i + 5]
        receipt = anchor.send("anchorMany", [b.header() for b in group], sender=gw)
        assert [e["index"] for e in anchor.events(receipt, "Anchored")] == [b.index for b in group]
        assert [e["batchHash"] for e in anchor.events(receipt, "Anchored")] == [b.hash for b in group]
    anchor.send("anchor", *batches[40].header(), sender=gw)
    assert anchor.call("nextIndex", gw) == len(batches) + 1

    for b in batches[:40]:
        check_batch_on_chain(anchor, gw, b)
    check_batch_on_chain(anchor, gw, batches[40], every_position=False)
    big = batches[40]
    for p in range(big.count):  # every proof of the 1000-leaf batch, acceptance only
        assert anchor.call("verifyLeaf", gw, big.index, p, big.leaves[p], big.proof(p)), p

    # findBatch: every batch's ends, and seqs no batch holds.
    for b in batches:
        assert anchor.call("findBatch", gw, b.first_seq) == b.index
        assert anchor.call("findBatch", gw, b.last_seq) == b.index
    assert anchor.call("findBatch", gw, 0) == 0
    assert anchor.call("findBatch", gw, batches[-1].last_seq + 1) == 0
    assert anchor.call("findBatch", anchor.chain.accounts[9], 1) == 0


def test_an_empty_anchor_many_anchors_nothing(anchor):
    gw = anchor.chain.accounts[1]
    anchor.send("anchorMany", [], sender=gw)
    assert anchor.call("nextIndex", gw) == 1


# ---------------------------------------------------------------------------
# Authorization and ordering
# ---------------------------------------------------------------------------


def test_authorization(anchor):
    owner, gw, stranger, heir = (anchor.chain.accounts[i] for i in (0, 1, 2, 3))
    assert anchor.call("owner").lower() == owner
    assert anchor.call("authorized", gw) and not anchor.call("authorized", stranger)
    b1, b2, b3 = build_batches([3, 4, 5])

    expect_revert("NotAuthorized", anchor.send, "anchor", *b1.header(), sender=stranger)
    expect_revert("NotAuthorized", anchor.send, "anchorMany", [b1.header()], sender=stranger)
    expect_revert("NotOwner", anchor.send, "setGateway", stranger, True, sender=stranger)
    expect_revert("NotOwner", anchor.send, "setGateway", stranger, True, sender=gw)

    receipt = anchor.send("setGateway", stranger, True, sender=owner)
    (event,) = anchor.events(receipt, "GatewaySet")
    assert (event["gateway"].lower(), event["allowed"]) == (stranger, True)
    anchor.send("anchor", *b1.header(), sender=stranger)  # a second gateway has its own chain from 1
    anchor.send("anchor", *b1.header(), sender=gw)
    anchor.send("setGateway", gw, False, sender=owner)
    assert not anchor.call("authorized", gw)
    expect_revert("NotAuthorized", anchor.send, "anchor", *b2.header(), sender=gw)
    # A revoked gateway's batches still verify, and allowed again it continues its chain.
    assert anchor.call("verifyLeaf", gw, 1, 0, b1.leaves[0], b1.proof(0))
    anchor.send("setGateway", gw, True, sender=owner)
    anchor.send("anchor", *b2.header(), sender=gw)
    assert anchor.call("nextIndex", gw) == 3

    expect_revert("NotOwner", anchor.send, "transferOwnership", heir, sender=gw)
    expect_revert("ZeroAddress", anchor.send, "transferOwnership", "0x" + "00" * 20, sender=owner)
    receipt = anchor.send("transferOwnership", heir, sender=owner)
    (event,) = anchor.events(receipt, "OwnershipTransferred")
    assert (event["previousOwner"].lower(), event["newOwner"].lower()) == (owner, heir)
    expect_revert("NotOwner", anchor.send, "setGateway", gw, False, sender=owner)
    anchor.send("setGateway", gw, False, sender=heir)
    expect_revert("NotAuthorized", anchor.send, "anchor", *b3.header(), sender=gw)


def test_ordering_errors(anchor):
    gw = anchor.chain.accounts[1]
    b1, b2 = build_batches([10, 5], first_seq=100)
    bogus = keccak(b"bogus")

    def attempt(index, first, last, count, root=b1.root, prev=ZERO):
        return anchor.send("anchor", index, first, last, count, root, prev, sender=gw)

    assert expect_revert("WrongIndex", attempt, 2, 100, 109, 10) == (1, 2)
    assert expect_revert("WrongIndex", attempt, 0, 100, 109, 10) == (1, 0)
    assert expect_revert("WrongPrevHash", attempt, 1, 100, 109, 10, prev=bogus) == (ZERO, bogus)
    expect_revert("BadRange", attempt, 1, 100, 109, 9)  # count mismatch
    expect_revert("BadRange", attempt, 1, 100, 109, 11)
    expect_revert("BadRange", attempt, 1, 109, 100, 10)  # lastSeq < firstSeq
    expect_revert("BadRange", attempt, 1, 0, 9, 10)  # seq starts at 1
    expect_revert("BadRange", attempt, 1, 5, 4, 0)  # empty
    expect_revert("BadRange", attempt, 1, 1, 2**64 - 1, 0)  # count would wrap
    assert anchor.call("nextIndex", gw) == 1

    anchor.send("anchor", *b1.header(), sender=gw)  # the first batch may start at any seq ≥ 1
    assert expect_revert("WrongIndex", anchor.send, "anchor", *b1.header(), sender=gw) == (2, 1)
    assert expect_revert("WrongPrevHash", attempt, 2, 110, 114, 5, prev=ZERO) == (b1.hash, ZERO)
    assert expect_revert("WrongFirstSeq", attempt, 2, 109, 113, 5, prev=b1.hash) == (110, 109)  # overlap
    assert expect_revert("WrongFirstSeq", attempt, 2, 100, 104, 5, prev=b1.hash) == (110, 100)
    expect_revert("BadRange", attempt, 2, 110, 114, 4, prev=b1.hash)

    # anchorMany is all or nothing: a bad second batch leaves the first unanchored too.
    b3 = Batch(3, b2.last_seq, 2, b2.hash)  # overlaps batch 2 by one seq
    assert expect_revert("WrongFirstSeq", anchor.send, "anchorMany", [b2.header(), b3.header()],
                         sender=gw) == (b2.last_seq + 1, b3.first_seq)
    assert anchor.call("nextIndex", gw) == 2
    assert anchor.call("batchOf", gw, 2)[4] == 0
    anchor.send("anchorMany", [b2.header()], sender=gw)
    assert anchor.call("nextIndex", gw) == 3
    # A gap is allowed: readings retention deleted before they were sealed.
    b4 = Batch(3, b2.last_seq + 10, 3, b2.hash)
    anchor.send("anchor", *b4.header(), sender=gw)
    assert anchor.call("nextIndex", gw) == 4


# ---------------------------------------------------------------------------
# Another contract calls it
# ---------------------------------------------------------------------------


def test_another_contract_can_verify_a_reading(anchor, consumer_build):
    chain = anchor.chain
    gw = chain.accounts[1]
    (b,) = build_batches([7])
    anchor.send("anchor", *b.header(), sender=gw)
    abi, bytecode = load_artifact("Consumer", consumer_build)
    consumer = Contract(chain, chain.deploy(bytecode + encode(["address"], [anchor.address])), abi)
    assert consumer.call("anchor").lower() == anchor.address

    receipt = consumer.send("accept", gw, 1, reading_struct(b.readings[4]), b.proof(4), sender=chain.accounts[5])
    (event,) = consumer.events(receipt, "Accepted")
    assert (event["index"], event["seq"], event["leaf"]) == (1, b.readings[4]["seq"], b.leaves[4])
    forged = dict(b.readings[4], value={"f64": 99.0}) if "f64" in b.readings[4]["value"] else dict(
        b.readings[4], quality="good" if b.readings[4]["quality"] != "good" else "bad")
    assert expect_revert("NotProven", consumer.send, "accept", gw, 1, reading_struct(forged), b.proof(4)) == (
        b.readings[4]["seq"],)
    ok, gas = consumer.call("measureReading", gw, 1, reading_struct(b.readings[0]), b.proof(0))
    assert ok and gas > 0


# ---------------------------------------------------------------------------
# The chain fixture: anvil stopped for a while and back with the same chain
# ---------------------------------------------------------------------------


def test_anvil_restarts_with_its_state(anvil):  # noqa: F811  (the chain.py fixture)
    contract = anchor_contract(anvil)
    gw = anvil.accounts[1]
    contract.send("setGateway", gw, True)
    b1, b2 = build_batches([4, 6])
    receipt = contract.send("anchor", *b1.header(), sender=gw)
    height, port = anvil.block_number(), anvil.port

    anvil.stop()
    with pytest.raises(OSError):
        anvil.rpc("eth_blockNumber", timeout=2)
    anvil.start()
    assert anvil.port == port
    assert anvil.block_number() == height
    assert anvil.rpc("eth_getTransactionReceipt", receipt["transactionHash"])["blockHash"] == receipt["blockHash"]
    assert contract.call("nextIndex", gw) == 2
    assert contract.call("verifyLeaf", gw, 1, 3, b1.leaves[3], b1.proof(3))
    contract.send("anchor", *b2.header(), sender=gw)
    assert anvil.block_number() == height + 1


# ---------------------------------------------------------------------------
# Gas
# ---------------------------------------------------------------------------


def test_gas(anchor, consumer_build):
    """Measures gas (printed with -s; recorded in docs/anchoring.md, "Gas").
    "tx" is gas as a transaction (eth_estimateGas or the receipt: 21000 +
    calldata + execution); "from a contract" is what the caller contract
    spends on the call (Consumer's gasleft() difference)."""
    chain = anchor.chain
    gw = chain.accounts[1]
    rows = []
    abi, bytecode = load_artifact("BiotaAnchor")
    deploy = chain.send(chain.accounts[0], None, bytecode)
    rows.append(("deploy BiotaAnchor", int(deploy["gasUsed"], 16), None))

    batches = build_batches([100, 100, 1, 1000] + [100] * 10)
    r1 = anchor.send("anchor", *batches[0].header(), sender=gw)
    r2 = anchor.send("anchor", *batches[1].header(), sender=gw)
    rows.append(("anchor, a gateway's first batch", int(r1["gasUsed"], 16), None))
    rows.append(("anchor, a later batch", int(r2["gasUsed"], 16), None))
    anchor.send("anchor", *batches[2].header(), sender=gw)
    anchor.send("anchor", *batches[3].header(), sender=gw)
    r10 = anchor.send("anchorMany", [b.header() for b in batches[4:14]], sender=gw)
    used = int(r10["gasUsed"], 16)
    rows.append(("anchorMany, 10 batches (per batch)", used, used // 10))

    # A 1,000,000-reading batch: only the path of position 0 is computed; its
    # 20 siblings are arbitrary hashes, which the verifier cannot tell from
    # subtree roots. 1,000,000 leaves need 20 levels.
    first = batches[13].last_seq + 1
    count = 1_000_000
    reading = make_reading(first)
    siblings = [keccak(b"sibling" + bytes([i])) for i in range(merkle.proof_length(0, count))]
    assert len(siblings) == 20
    root, used_siblings = merkle.walk(reading_leaf(reading), 0, count, siblings)
    assert used_siblings == 20
    big_hash = merkle.batch_hash(15, first, first + count - 1, count, root, batches[13].hash)
    anchor.send("anchor", 15, first, first + count - 1, count, root, batches[13].hash, sender=gw)
    assert anchor.call("batchOf", gw, 15)[1] == big_hash

    consumer_abi, consumer_bin = load_artifact("Consumer", consumer_build)
    consumer = Contract(chain, chain.deploy(consumer_bin + encode(["address"], [anchor.address])), consumer_abi)

    cases = [(1, 3, batches[2].readings[0], batches[2].proof(0)),
             (1000, 4, batches[3].readings[0], batches[3].proof(0)),
             (count, 15, reading, siblings)]
    for size, index, r, proof in cases:
        args = (gw, index, reading_struct(r), proof)
        assert anchor.call("verifyReading", *args)
        ok, inner = consumer.call("measureReading", *args)
        assert ok
        rows.append((f"verifyReading, batch of {size:,} ({len(proof)} siblings)", anchor.estimate_gas("verifyReading", *args), inner))
    for size, index, r, proof in cases:
        leaf = reading_leaf(r)
        args = (gw, index, 0, leaf, proof)
        ok, inner = consumer.call("measureLeaf", *args)
        assert ok and anchor.call("verifyLeaf", *args)
        rows.append((f"verifyLeaf, batch of {size:,} ({len(proof)} siblings)", anchor.estimate_gas("verifyLeaf", *args), inner))
    for kind, line, fields in load_blocks():
        if kind == "vector":
            reading = json.loads(fields["reading"])
            (vkind,) = reading["value"]
            leaf, inner = consumer.call("measureLeafOf", reading_struct(reading))
            assert leaf == hex_bytes(fields["leaf"])
            rows.append((f"leafOf, {vkind} vector of docs/cdm.md (seq {reading['seq']})",
                         anchor.estimate_gas("leafOf", reading_struct(reading)), inner))

    print("\n| operation | gas as a transaction | gas from a contract (per batch for anchorMany) |")
    print("|---|---:|---:|")
    for name, tx, inner in rows:
        print(f"| {name} | {tx:,} | {'' if inner is None else f'{inner:,}'} |")
