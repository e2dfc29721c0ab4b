"""The Merkle tree and batch hash of docs/anchoring.md, written from the
specification alone (independent of the gateway's Rust code), to check the
anchor contract and the gateway's proofs against.

- Levels pair nodes (0,1), (2,3), ...; an unpaired last node is promoted
  unchanged (not duplicated, not hashed with itself).
- A proof lists the siblings bottom up and skips the levels where the node
  is the unpaired last one.
"""

from __future__ import annotations

from eth_hash.auto import keccak

from cdm import node

ZERO = b"\x00" * 32


def levels(leaves: list[bytes]) -> list[list[bytes]]:
    """Every level of the tree, leaves first, root level (one node) last."""
    assert leaves, "a tree has at least one leaf"
    out = [list(leaves)]
    while len(out[-1]) > 1:
        below = out[-1]
        above = [node(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
        if len(below) % 2:
            above.append(below[-1])  # the unpaired last node, promoted unchanged
        out.append(above)
    return out


def root(leaves: list[bytes]) -> bytes:
    return levels(leaves)[-1][0]


def proof(tree: list[list[bytes]], position: int) -> list[bytes]:
    """The siblings of `position` from the bottom up, for a tree made by `levels`."""
    assert 0 <= position < len(tree[0])
    siblings = []
    i = position
    for level in tree[:-1]:
        sibling = i ^ 1
        if sibling < len(level):  # else: i is the unpaired last node, no sibling
            siblings.append(level[sibling])
        i //= 2
    return siblings


def walk(leaf: bytes, position: int, count: int, siblings: list[bytes]) -> tuple[bytes, int]:
    """(node reached, siblings used): the verifier's walk of docs/anchoring.md."""
    h, width, i, k = leaf, count, position, 0
    while width > 1:
        if i % 2 == 1:
            h = node(siblings[k], h)
            k += 1
        elif i + 1 < width:
            h = node(h, siblings[k])
            k += 1
        i //= 2
        width = (width + 1) // 2
    return h, k


def verify(root_hash: bytes, count: int, position: int, leaf: bytes, siblings: list[bytes]) -> bool:
    if not 0 <= position < count:
        return False
    try:
        h, k = walk(leaf, position, count, siblings)
    except IndexError:  # too few siblings
        return False
    return k == len(siblings) and h == root_hash


def proof_length(position: int, count: int) -> int:
    """How many siblings the proof of `position` in a tree of `count` leaves has."""
    n, width, i = 0, count, position
    while width > 1:
        if i % 2 == 1 or i + 1 < width:
            n += 1
        i //= 2
        width = (width + 1) // 2
    return n


def batch_hash(index: int, first_seq: int, last_seq: int, count: int, root_hash: bytes, prev_hash: bytes) -> bytes:
    """keccak256(0x02 ‖ index:u64 ‖ first_seq:u64 ‖ last_seq:u64 ‖ count:u64 ‖ root ‖ prev_hash)."""
    assert len(root_hash) == 32 and len(prev_hash) == 32
    fields = b"".join(v.to_bytes(8, "big") for v in (index, first_seq, last_seq, count))
    return keccak(b"\x02" + fields + root_hash + prev_hash)
