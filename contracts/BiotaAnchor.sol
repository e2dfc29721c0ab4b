// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title BiotaAnchor — Merkle roots of biota-gateway reading batches, and their proofs
/// @notice Authorized gateways anchor their batches here, one hash-chained batch after the
/// other; anyone (an account or a contract) can then check that a reading belongs to an
/// anchored batch. Normative specification: docs/anchoring.md (batches, Merkle tree, batch
/// hash) and docs/cdm.md (reading encoding, leaf and node hashes).
contract BiotaAnchor {
    /// @notice One anchored batch (three storage slots).
    struct Batch {
        bytes32 root; // Merkle root over the batch's leaves, in seq order
        bytes32 batchHash; // keccak256(0x02 ‖ index ‖ firstSeq ‖ lastSeq ‖ count ‖ root ‖ prevHash)
        uint64 firstSeq;
        uint64 lastSeq;
        uint64 count; // lastSeq − firstSeq + 1; zero only for a batch that does not exist
        uint64 blockNumber; // the block that anchored it
    }

    /// @notice A batch as a gateway submits it to `anchorMany` (same fields as `anchor`).
    struct BatchHeader {
        uint64 index;
        uint64 firstSeq;
        uint64 lastSeq;
        uint64 count;
        bytes32 root;
        bytes32 prevHash;
    }

    /// @notice A CDM reading (docs/cdm.md). `value` holds the raw value by `kind`:
    /// 1 bool = 1 byte 0x00/0x01; 2 i64 = 8 bytes big-endian two's complement;
    /// 3 f64 = the 8-byte IEEE-754 bit pattern; 4 text = the UTF-8 bytes; 5 bytes = the bytes.
    /// `unit` is empty when the reading has none.
    struct Reading {
        uint64 seq;
        int64 ts;
        uint8 quality;
        string device;
        string point;
        string unit;
        string source;
        uint8 kind;
        bytes value;
    }

    /// @dev Per gateway, packed in one slot: anchoring reads and writes only this slot
    /// besides the new batch.
    struct Gateway {
        bool authorized;
        uint64 lastIndex; // index of the latest anchored batch, 0 before the first
    }

    /// @dev The chain head of a gateway while batches are appended (kept in memory so that
    /// `anchorMany` reads storage once, not once per batch).
    struct Head {
        uint64 index;
        uint64 lastSeq;
        bytes32 batchHash;
    }

    // Value kinds and the CDM's limits (docs/cdm.md, "Validation").
    uint8 private constant KIND_BOOL = 1;
    uint8 private constant KIND_I64 = 2;
    uint8 private constant KIND_F64 = 3;
    uint8 private constant KIND_TEXT = 4;
    uint8 private constant KIND_BYTES = 5;
    uint8 private constant QUALITY_MAX = 2;
    uint256 private constant DEVICE_MAX = 64;
    uint256 private constant POINT_MAX = 128;
    uint256 private constant UNIT_MAX = 32;
    uint256 private constant SOURCE_MAX = 256;
    uint256 private constant VALUE_MAX = 4096;

    /// @notice The account that authorizes gateways.
    address public owner;

    mapping(address => Gateway) private _gateways;
    mapping(address => mapping(uint64 => Batch)) private _batches;

    event OwnershipTransferred(address indexed previousOwner, address indexed newOwner);
    event GatewaySet(address indexed gateway, bool allowed);
    event Anchored(
        address indexed gateway,
        uint64 indexed index,
        uint64 firstSeq,
        uint64 lastSeq,
        uint64 count,
        bytes32 root,
        bytes32 batchHash
    );

    /// @notice The caller is not the owner.
    error NotOwner();
    /// @notice The new owner is the zero address.
    error ZeroAddress();
    /// @notice The caller is not an authorized gateway.
    error NotAuthorized();
    /// @notice `got` is not the gateway's next batch index.
    error WrongIndex(uint64 expected, uint64 got);
    /// @notice `got` is not the batch hash of the gateway's previous batch (zero before batch 1).
    error WrongPrevHash(bytes32 expected, bytes32 got);
    /// @notice The batch starts at or before the previous batch's lastSeq (an overlap); `expected`
    /// is the least firstSeq allowed. A gap is allowed: readings the gateway's retention deleted
    /// before they were sealed, which no batch can cover (its audit reports them).
    error WrongFirstSeq(uint64 expected, uint64 got);
    /// @notice The range is not a batch: firstSeq is 0, lastSeq < firstSeq, or count ≠ lastSeq − firstSeq + 1.
    error BadRange();
    /// @notice The reading cannot be encoded: `field` is the number of the offending field in
    /// docs/cdm.md's encoding table (4 quality, 6 device, 8 point, 10 unit, 12 source,
    /// 13 kind, 14 value).
    error InvalidReading(uint8 field);

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner();
        _;
    }

    constructor() {
        owner = msg.sender;
        emit OwnershipTransferred(address(0), msg.sender);
    }

    // ---------------------------------------------------------------- administration

    /// @notice Hands the contract to `newOwner`.
    function transferOwnership(address newOwner) external onlyOwner {
        if (newOwner == address(0)) revert ZeroAddress();
        emit OwnershipTransferred(owner, newOwner);
        owner = newOwner;
    }

    /// @notice Allows or revokes a gateway. A revoked gateway keeps its batches; allowed
    /// again, it continues its chain where it stopped.
    function setGateway(address gateway, bool allowed) external onlyOwner {
        _gateways[gateway].authorized = allowed;
        emit GatewaySet(gateway, allowed);
    }

    /// @notice Whether `gateway` may anchor.
    function authorized(address gateway) external view returns (bool) {
        return _gateways[gateway].authorized;
    }

    // ---------------------------------------------------------------- anchoring

    /// @notice Anchors the caller's next batch. Reverts with NotAuthorized, WrongIndex,
    /// WrongPrevHash, BadRange or WrongFirstSeq (checked in that order).
    function anchor(
        uint64 index,
        uint64 firstSeq,
        uint64 lastSeq,
        uint64 count,
        bytes32 root,
        bytes32 prevHash
    ) external {
        Gateway storage gw = _authorizedGateway();
        Head memory head = _head(msg.sender, gw.lastIndex);
        _append(head, BatchHeader(index, firstSeq, lastSeq, count, root, prevHash));
        gw.lastIndex = index;
    }

    /// @notice Anchors several consecutive batches of the caller in one transaction (catching
    /// up after an outage), in array order, each checked as by `anchor`: the first reverting
    /// batch reverts them all. An empty list anchors nothing.
    function anchorMany(BatchHeader[] calldata batches) external {
        Gateway storage gw = _authorizedGateway();
        Head memory head = _head(msg.sender, gw.lastIndex);
        for (uint256 i; i < batches.length; ++i) {
            _append(head, batches[i]);
        }
        gw.lastIndex = head.index;
    }

    // ---------------------------------------------------------------- reading

    /// @notice The stored batch; all zero for one that does not exist.
    function batchOf(address gateway, uint64 index) external view returns (Batch memory) {
        return _batches[gateway][index];
    }

    /// @notice The index `gateway`'s next batch must have (1 before its first).
    function nextIndex(address gateway) external view returns (uint64) {
        return _gateways[gateway].lastIndex + 1;
    }

    /// @notice The index of `gateway`'s batch that holds `seq`, 0 if none (binary search,
    /// about log2(batches) storage reads).
    function findBatch(address gateway, uint64 seq) external view returns (uint64) {
        uint64 lo = 1;
        uint64 hi = _gateways[gateway].lastIndex;
        mapping(uint64 => Batch) storage batches = _batches[gateway];
        while (lo <= hi) {
            uint64 mid = lo + (hi - lo) / 2;
            Batch storage b = batches[mid];
            if (seq < b.firstSeq) {
                hi = mid - 1; // mid ≥ 1; mid = 1 makes hi 0 and ends the loop
            } else if (seq > b.lastSeq) {
                lo = mid + 1;
            } else {
                return mid;
            }
        }
        return 0;
    }

    /// @notice The leaf hash of a reading: keccak256(0x00 ‖ encoding), encoding version 1 of
    /// docs/cdm.md. Reverts with InvalidReading when a field breaks the CDM's limits (the
    /// character sets of device and point are not checked).
    function leafOf(Reading calldata r) public pure returns (bytes32) {
        _checkStrings(r);
        bytes memory value = _valueField(r.kind, r.value);
        // Two parts: one abi.encodePacked of all fields is too deep for the legacy code generator.
        bytes memory head = abi.encodePacked(
            uint8(0x00), // leaf domain
            uint8(1), // encoding version
            r.seq,
            r.ts,
            r.quality,
            uint8(bytes(r.device).length),
            r.device,
            uint8(bytes(r.point).length),
            r.point
        );
        return keccak256(
            abi.encodePacked(
                head,
                uint8(bytes(r.unit).length),
                r.unit,
                uint16(bytes(r.source).length),
                r.source,
                r.kind,
                value
            )
        );
    }

    /// @notice Whether `leaf` is at `position` of `gateway`'s batch `index`, by the walk of
    /// docs/anchoring.md. False (never a revert) for an unknown batch, a position outside it
    /// or a proof of the wrong length.
    function verifyLeaf(
        address gateway,
        uint64 index,
        uint64 position,
        bytes32 leaf,
        bytes32[] calldata proof
    ) public view returns (bool) {
        Batch storage b = _batches[gateway][index];
        uint64 count = b.count;
        if (position >= count) return false; // also an unknown batch: count 0
        (bool ok, bytes32 root) = _walk(leaf, position, count, proof);
        return ok && root == b.root;
    }

    /// @notice Whether reading `r` is in `gateway`'s batch `index` (at position
    /// r.seq − firstSeq). False for an unknown batch, a seq outside it or a wrong proof;
    /// reverts with InvalidReading like `leafOf`.
    function verifyReading(
        address gateway,
        uint64 index,
        Reading calldata r,
        bytes32[] calldata proof
    ) external view returns (bool) {
        Batch storage b = _batches[gateway][index];
        uint64 firstSeq = b.firstSeq;
        if (b.count == 0 || r.seq < firstSeq || r.seq > b.lastSeq) return false;
        (bool ok, bytes32 root) = _walk(leafOf(r), r.seq - firstSeq, b.count, proof);
        return ok && root == b.root;
    }

    // ---------------------------------------------------------------- internals

    function _authorizedGateway() private view returns (Gateway storage gw) {
        gw = _gateways[msg.sender];
        if (!gw.authorized) revert NotAuthorized();
    }

    function _head(address gateway, uint64 lastIndex) private view returns (Head memory head) {
        head.index = lastIndex;
        if (lastIndex != 0) {
            Batch storage last = _batches[gateway][lastIndex];
            head.lastSeq = last.lastSeq;
            head.batchHash = last.batchHash;
        }
    }

    /// @dev Checks `h` against the chain head, stores it, emits Anchored and advances `head`.
    function _append(Head memory head, BatchHeader memory h) private {
        if (h.index != head.index + 1) revert WrongIndex(head.index + 1, h.index);
        if (h.prevHash != head.batchHash) revert WrongPrevHash(head.batchHash, h.prevHash);
        // firstSeq ≥ 1 keeps lastSeq − firstSeq + 1 from overflowing.
        if (h.firstSeq == 0 || h.lastSeq < h.firstSeq || h.count != h.lastSeq - h.firstSeq + 1) {
            revert BadRange();
        }
        if (head.index != 0 && h.firstSeq <= head.lastSeq) {
            revert WrongFirstSeq(head.lastSeq + 1, h.firstSeq);
        }
        bytes32 batchHash = keccak256(
            abi.encodePacked(uint8(0x02), h.index, h.firstSeq, h.lastSeq, h.count, h.root, h.prevHash)
        );
        _batches[msg.sender][h.index] =
            Batch(h.root, batchHash, h.firstSeq, h.lastSeq, h.count, uint64(block.number));
        emit Anchored(msg.sender, h.index, h.firstSeq, h.lastSeq, h.count, h.root, batchHash);
        head.index = h.index;
        head.lastSeq = h.lastSeq;
        head.batchHash = batchHash;
    }

    /// @dev Quality and the string fields against the CDM's limits; the lengths must also fit
    /// the encoding's length prefixes, or two readings could share an encoding.
    function _checkStrings(Reading calldata r) private pure {
        if (r.quality > QUALITY_MAX) revert InvalidReading(4);
        uint256 len = bytes(r.device).length;
        if (len == 0 || len > DEVICE_MAX) revert InvalidReading(6);
        len = bytes(r.point).length;
        if (len == 0 || len > POINT_MAX) revert InvalidReading(8);
        if (bytes(r.unit).length > UNIT_MAX) revert InvalidReading(10);
        len = bytes(r.source).length;
        if (len == 0 || len > SOURCE_MAX) revert InvalidReading(12);
    }

    /// @dev Field 14 of the encoding: the raw value, checked against its kind, with the
    /// uint32 length prefix for text and bytes.
    function _valueField(uint8 kind, bytes calldata value) private pure returns (bytes memory) {
        uint256 len = value.length;
        if (kind == KIND_BOOL) {
            if (len != 1 || uint8(value[0]) > 1) revert InvalidReading(14);
        } else if (kind == KIND_I64) {
            if (len != 8) revert InvalidReading(14);
        } else if (kind == KIND_F64) {
            if (len != 8) revert InvalidReading(14);
            uint64 bits = uint64(bytes8(value));
            // NaN and ±infinity (exponent all ones) and −0 are not representable in the CDM.
            if (bits & 0x7ff0000000000000 == 0x7ff0000000000000 || bits == 0x8000000000000000) {
                revert InvalidReading(14);
            }
        } else if (kind == KIND_TEXT || kind == KIND_BYTES) {
            if (len > VALUE_MAX) revert InvalidReading(14);
            return abi.encodePacked(uint32(len), value);
        } else {
            revert InvalidReading(13);
        }
        return value;
    }

    /// @dev Walks from `leaf` at `position` up a tree of `count` leaves (docs/anchoring.md):
    /// an unpaired last node is promoted unchanged, and its level has no sibling in the proof.
    /// `ok` is false when the proof has fewer or more siblings than the walk uses.
    function _walk(bytes32 leaf, uint256 position, uint256 count, bytes32[] calldata proof)
        private
        pure
        returns (bool ok, bytes32 h)
    {
        h = leaf;
        uint256 k;
        uint256 n = proof.length;
        for (uint256 width = count; width > 1; width = (width + 1) >> 1) {
            if (position & 1 == 1) {
                if (k == n) return (false, h);
                h = _node(proof[k], h);
                ++k;
            } else if (position + 1 < width) {
                if (k == n) return (false, h);
                h = _node(h, proof[k]);
                ++k;
            }
            position >>= 1;
        }
        ok = k == n;
    }

    /// @dev keccak256(0x01 ‖ left ‖ right), hashed in free memory without allocating it.
    function _node(bytes32 left, bytes32 right) private pure returns (bytes32 h) {
        assembly ("memory-safe") {
            let p := mload(0x40)
            mstore8(p, 0x01)
            mstore(add(p, 0x01), left)
            mstore(add(p, 0x21), right)
            h := keccak256(p, 0x41)
        }
    }
}
