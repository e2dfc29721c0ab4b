// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @notice What another contract needs of BiotaAnchor: declared here, not imported, the way a
/// third party would write it from the ABI and docs/anchoring.md.
interface IBiotaAnchor {
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

    function leafOf(Reading calldata r) external pure returns (bytes32);
    function verifyLeaf(address gateway, uint64 index, uint64 position, bytes32 leaf, bytes32[] calldata proof)
        external
        view
        returns (bool);
    function verifyReading(address gateway, uint64 index, Reading calldata r, bytes32[] calldata proof)
        external
        view
        returns (bool);
}

/// @title Consumer — a test contract that acts on a reading only once BiotaAnchor proves it
/// @notice Used by hil-tests/test_anchor_contract.py: it shows a contract can call the anchor,
/// and measures what such a call costs the caller (gas between the two gasleft() readings:
/// the external call, its calldata and the verification).
contract Consumer {
    IBiotaAnchor public immutable anchor;

    event Accepted(address indexed gateway, uint64 indexed index, uint64 seq, bytes32 leaf);

    error NotProven(uint64 seq);

    constructor(IBiotaAnchor anchor_) {
        anchor = anchor_;
    }

    /// @notice Records a reading that the anchor proves is in `gateway`'s batch `index`.
    function accept(address gateway, uint64 index, IBiotaAnchor.Reading calldata r, bytes32[] calldata proof)
        external
    {
        if (!anchor.verifyReading(gateway, index, r, proof)) revert NotProven(r.seq);
        emit Accepted(gateway, index, r.seq, anchor.leafOf(r));
    }

    /// @notice verifyReading's answer and the gas the call took.
    function measureReading(address gateway, uint64 index, IBiotaAnchor.Reading calldata r, bytes32[] calldata proof)
        external
        view
        returns (bool ok, uint256 gasUsed)
    {
        uint256 before = gasleft();
        ok = anchor.verifyReading(gateway, index, r, proof);
        gasUsed = before - gasleft();
    }

    /// @notice verifyLeaf's answer and the gas the call took.
    function measureLeaf(address gateway, uint64 index, uint64 position, bytes32 leaf, bytes32[] calldata proof)
        external
        view
        returns (bool ok, uint256 gasUsed)
    {
        uint256 before = gasleft();
        ok = anchor.verifyLeaf(gateway, index, position, leaf, proof);
        gasUsed = before - gasleft();
    }

    /// @notice leafOf's answer and the gas the call took.
    function measureLeafOf(IBiotaAnchor.Reading calldata r) external view returns (bytes32 leaf, uint256 gasUsed) {
        uint256 before = gasleft();
        leaf = anchor.leafOf(r);
        gasUsed = before - gasleft();
    }
}
