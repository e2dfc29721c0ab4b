//! Proof bundles: everything a third party needs to check one reading —
//! the reading, its encoding and leaf, the Merkle path, the batch and its
//! anchor — and the offline half of checking one.

use serde::{Deserialize, Serialize};

use super::batch::{AnchorRecord, Batch, Batches, batch_hash};
use super::merkle::{self, Hash, Tree};
use alloy::hex;

use crate::cdm::Reading;
use crate::store::{StoreError, StoreReader};

/// The bundle's format tag.
pub const FORMAT: &str = "biota-proof/1";

/// A self-contained proof of one reading (see `docs/anchoring.md`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProofBundle {
    pub format: String,
    /// The reading, values tagged with their kind as in `docs/cdm.md`.
    pub reading: Reading,
    /// Its canonical encoding (`0x…`).
    pub encoding: String,
    /// keccak256(0x00 ‖ encoding).
    pub leaf: String,
    /// The leaf's position in the batch (`seq − first_seq`).
    pub position: u64,
    /// Sibling hashes from the bottom up.
    pub proof: Vec<String>,
    pub batch: BundleBatch,
    /// Where the batch is anchored; null while it is not (yet).
    pub anchor: Option<BundleAnchor>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleBatch {
    pub index: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub count: u64,
    pub root: String,
    pub prev_hash: String,
    pub hash: String,
    pub sealed_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleAnchor {
    pub chain_id: u64,
    pub contract: String,
    /// The account that anchored the batch (the contract keys batches by it).
    pub gateway: String,
    pub tx_hash: String,
    pub block_number: u64,
    pub block_hash: String,
}

fn h(b: &[u8]) -> String {
    hex::encode_prefixed(b)
}

impl From<&AnchorRecord> for BundleAnchor {
    fn from(a: &AnchorRecord) -> Self {
        Self {
            chain_id: a.chain_id,
            contract: h(&a.contract),
            gateway: h(&a.gateway),
            tx_hash: h(&a.tx_hash),
            block_number: a.block_number,
            block_hash: h(&a.block_hash),
        }
    }
}

/// Why no proof can be made for a seq.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no reading with seq {0} is stored (never committed, or deleted by retention)")]
    NoReading(u64),
    #[error("reading seq {0} is not sealed into a batch yet; try again after the next seal")]
    NotSealed(u64),
    #[error("the leaves of batch {0} are gone (retention)")]
    NoLeaves(u64),
    #[error(
        "batch {index} holds {stored} leaves, its range says {count}: the database was altered"
    )]
    LeafCount {
        index: u64,
        stored: usize,
        count: u64,
    },
}

/// A batch's tree, kept between proofs of the same batch.
#[derive(Default)]
pub struct TreeCache {
    tree: Option<(u64, Tree)>,
}

impl TreeCache {
    fn get(&mut self, batches: &Batches<'_>, batch: &Batch) -> Result<&Tree, ProofError> {
        if self.tree.as_ref().is_none_or(|(i, _)| *i != batch.index) {
            let leaves = batches
                .leaves(batch.index)?
                .ok_or(ProofError::NoLeaves(batch.index))?;
            if leaves.len() as u64 != batch.count {
                return Err(ProofError::LeafCount {
                    index: batch.index,
                    stored: leaves.len(),
                    count: batch.count,
                });
            }
            let tree = Tree::build(leaves).ok_or(ProofError::NoLeaves(batch.index))?;
            self.tree = Some((batch.index, tree));
        }
        Ok(&self.tree.as_ref().expect("just built").1)
    }
}

/// The proof bundle of the reading with `seq`, as the database holds it
/// now. The path comes from the leaves sealed at the time; a reading
/// altered since then yields a bundle that does not verify, and
/// [`Outcome::sealed_leaf_matches`] says so.
pub fn bundle(
    reader: &StoreReader,
    cache: &mut TreeCache,
    seq: u64,
) -> Result<(ProofBundle, bool), ProofError> {
    let reading = reader
        .after_seq(seq.saturating_sub(1), 1)?
        .into_iter()
        .next()
        .filter(|r| r.seq == seq)
        .ok_or(ProofError::NoReading(seq))?;
    let batches = Batches::new(reader.connection(), reader.path());
    let batch = batches.holding(seq)?.ok_or(ProofError::NotSealed(seq))?;
    let tree = cache.get(&batches, &batch)?;
    let position = seq - batch.first_seq;
    let proof = tree
        .proof(position as usize)
        .expect("position inside the batch");
    let leaf = reading.leaf_hash();
    let matches = tree.leaves()[position as usize] == leaf;
    Ok((
        ProofBundle {
            format: FORMAT.into(),
            encoding: h(&reading.encode()),
            leaf: h(&leaf),
            reading,
            position,
            proof: proof.iter().map(|p| h(p)).collect(),
            batch: BundleBatch {
                index: batch.index,
                first_seq: batch.first_seq,
                last_seq: batch.last_seq,
                count: batch.count,
                root: h(&batch.root),
                prev_hash: h(&batch.prev_hash),
                hash: h(&batch.hash),
                sealed_at: batch.sealed_at,
            },
            anchor: batch.anchor.as_ref().map(BundleAnchor::from),
        },
        matches,
    ))
}

/// One check of a bundle and how it came out.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// Parses a `0x` hash of 32 bytes.
pub fn hash_of(s: &str) -> Option<Hash> {
    hex::decode(s).ok()?.try_into().ok()
}

/// The checks that need no chain: the reading is valid CDM, its encoding
/// and leaf are the bundle's, the path leads to the batch root, and the
/// batch hash holds.
pub fn check_offline(b: &ProofBundle) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut check = |name, ok, detail: String| checks.push(Check { name, ok, detail });
    check(
        "format",
        b.format == FORMAT,
        format!("`{}` (this verifier reads {FORMAT})", b.format),
    );
    let valid = b.reading.validate();
    check(
        "reading",
        valid.is_ok(),
        match &valid {
            Ok(()) => format!(
                "seq {} of {}/{}",
                b.reading.seq, b.reading.device, b.reading.point
            ),
            Err(e) => format!("not a valid CDM reading: {e}"),
        },
    );
    let encoding = h(&b.reading.encode());
    check(
        "encoding",
        encoding == b.encoding.to_ascii_lowercase(),
        if encoding == b.encoding.to_ascii_lowercase() {
            "the reading's canonical encoding is the bundle's".into()
        } else {
            format!(
                "the reading encodes to {encoding}, the bundle says {}",
                b.encoding
            )
        },
    );
    let leaf = b.reading.leaf_hash();
    check(
        "leaf",
        hash_of(&b.leaf) == Some(leaf),
        format!("keccak256(0x00 ‖ encoding) = {}", h(&leaf)),
    );
    let batch = &b.batch;
    let position_ok = b.reading.seq >= batch.first_seq
        && b.reading.seq <= batch.last_seq
        && b.position == b.reading.seq - batch.first_seq
        && batch.count == batch.last_seq.wrapping_sub(batch.first_seq).wrapping_add(1);
    check(
        "position",
        position_ok,
        format!(
            "seq {} at position {} of batch {} (seqs {}..={})",
            b.reading.seq, b.position, batch.index, batch.first_seq, batch.last_seq
        ),
    );
    let proof: Option<Vec<Hash>> = b.proof.iter().map(|p| hash_of(p)).collect();
    let root = hash_of(&batch.root);
    let folded = proof
        .as_deref()
        .and_then(|p| merkle::fold(&leaf, b.position, batch.count, p));
    check(
        "merkle_path",
        position_ok && folded.is_some() && folded == root,
        match folded {
            Some(r) if Some(r) == root => {
                format!("the path leads to the batch root {}", batch.root)
            }
            Some(r) => format!(
                "the path leads to {}, not to the batch root {}",
                h(&r),
                batch.root
            ),
            None => "the path has the wrong length or malformed hashes".into(),
        },
    );
    let hash_ok = match (root, hash_of(&batch.prev_hash), hash_of(&batch.hash)) {
        (Some(root), Some(prev), Some(hash)) if position_ok => {
            batch_hash(batch.index, batch.first_seq, batch.last_seq, &root, &prev) == hash
        }
        _ => false,
    };
    check(
        "batch_hash",
        hash_ok,
        if hash_ok {
            "the batch hash covers index, range, root and the previous hash".into()
        } else {
            "the batch hash does not match the batch's fields".into()
        },
    );
    checks
}
