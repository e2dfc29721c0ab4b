//! The anchor contract as the gateway sees it: its interface (the
//! `sol!` block mirrors `contracts/BiotaAnchor.sol`), its deployment
//! bytecode, and how readings and batch headers are encoded for it.

use alloy::primitives::Bytes;
use alloy::sol_types::SolCall;

use crate::anchor::batch::Batch;
use crate::cdm::{Reading, Value};

alloy::sol! {
    /// The anchor contract's interface (contracts/BiotaAnchor.sol).
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
        struct Batch {
            bytes32 root;
            bytes32 batchHash;
            uint64 firstSeq;
            uint64 lastSeq;
            uint64 count;
            uint64 blockNumber;
        }
        struct BatchHeader {
            uint64 index;
            uint64 firstSeq;
            uint64 lastSeq;
            uint64 count;
            bytes32 root;
            bytes32 prevHash;
        }
        error NotOwner();
        error ZeroAddress();
        error NotAuthorized();
        error WrongIndex(uint64 expected, uint64 got);
        error WrongPrevHash(bytes32 expected, bytes32 got);
        error WrongFirstSeq(uint64 expected, uint64 got);
        error BadRange();
        error InvalidReading(uint8 field);
        event Anchored(address indexed gateway, uint64 indexed index, uint64 firstSeq, uint64 lastSeq, uint64 count, bytes32 root, bytes32 batchHash);
        function owner() external view returns (address);
        function setGateway(address gateway, bool allowed) external;
        function authorized(address gateway) external view returns (bool);
        function anchor(uint64 index, uint64 firstSeq, uint64 lastSeq, uint64 count, bytes32 root, bytes32 prevHash) external;
        function anchorMany(BatchHeader[] calldata batches) external;
        function nextIndex(address gateway) external view returns (uint64);
        function batchOf(address gateway, uint64 index) external view returns (Batch memory);
        function leafOf(Reading calldata r) external pure returns (bytes32);
        function verifyLeaf(address gateway, uint64 index, uint64 position, bytes32 leaf, bytes32[] calldata proof) external view returns (bool);
        function verifyReading(address gateway, uint64 index, Reading calldata r, bytes32[] calldata proof) external view returns (bool);
    }
}

/// The contract's deployment bytecode, as compiled by the build that
/// `contracts/README.md` describes (committed in `contracts/build/`).
pub const CONTRACT_BYTECODE: &str = include_str!("../../../../contracts/build/BiotaAnchor.bin");

/// The contract's form of a reading.
pub fn sol_reading(r: &Reading) -> IBiotaAnchor::Reading {
    let value = match &r.value {
        Value::Bool(b) => vec![u8::from(*b)],
        Value::I64(i) => i.to_be_bytes().to_vec(),
        Value::F64(f) => f.to_bits().to_be_bytes().to_vec(),
        Value::Text(t) => t.as_bytes().to_vec(),
        Value::Bytes(b) => b.clone(),
    };
    IBiotaAnchor::Reading {
        seq: r.seq,
        ts: r.ts,
        quality: r.quality.code(),
        device: r.device.to_string(),
        point: r.point.to_string(),
        unit: r.unit.as_deref().unwrap_or("").to_string(),
        source: r.source.to_string(),
        kind: r.value.kind().code(),
        value: value.into(),
    }
}

/// `anchorMany([...])`: one or more consecutive batches (one batch costs
/// about as much as `anchor`).
pub(crate) fn anchor_input(batches: &[Batch]) -> Bytes {
    IBiotaAnchor::anchorManyCall {
        batches: batches
            .iter()
            .map(|b| IBiotaAnchor::BatchHeader {
                index: b.index,
                firstSeq: b.first_seq,
                lastSeq: b.last_seq,
                count: b.count,
                root: b.root.into(),
                prevHash: b.prev_hash.into(),
            })
            .collect(),
    }
    .abi_encode()
    .into()
}
