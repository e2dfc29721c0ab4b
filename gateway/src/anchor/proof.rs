//! Proof bundles: everything a third party needs to check one reading —
//! the reading, its encoding and leaf, the Merkle path, the batch and its
//! anchor — and the offline half of checking one.

use serde::{Deserialize, Serialize};

use super::batch::{AnchorRecord, Batch, Batches, batch_hash};
use super::merkle::{self, Hash, Tree};
use alloy::hex;

use crate::cdm::Reading;
use crate::store::{StoreError, StoreReader};

/// The bundle's format tag. Format 2 writes every integer as a decimal
/// string: a timestamp in nanoseconds (about 1.8e18) and any integer
/// above 2^53 are rounded by a reader that parses JSON numbers into
/// doubles (JavaScript's `JSON.parse`), and a verifier must recompute the
/// encoding from the exact values.
pub const FORMAT: &str = "biota-proof/2";
/// Format 1 (integers as JSON numbers), still read.
pub const FORMAT_V1: &str = "biota-proof/1";

/// A self-contained proof of one reading (see `docs/anchoring.md`).
/// Integers are written as strings and read as strings or numbers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProofBundle {
    pub format: String,
    /// The reading, values tagged with their kind as in `docs/cdm.md`.
    #[serde(with = "exact::reading")]
    pub reading: Reading,
    /// Its canonical encoding (`0x…`).
    pub encoding: String,
    /// keccak256(0x00 ‖ encoding).
    pub leaf: String,
    /// The leaf's position in the batch (`seq − first_seq`).
    #[serde(with = "exact::int")]
    pub position: u64,
    /// Sibling hashes from the bottom up.
    pub proof: Vec<String>,
    pub batch: BundleBatch,
    /// Where the batch is anchored; null while it is not (yet).
    pub anchor: Option<BundleAnchor>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleBatch {
    #[serde(with = "exact::int")]
    pub index: u64,
    #[serde(with = "exact::int")]
    pub first_seq: u64,
    #[serde(with = "exact::int")]
    pub last_seq: u64,
    #[serde(with = "exact::int")]
    pub count: u64,
    pub root: String,
    pub prev_hash: String,
    pub hash: String,
    #[serde(with = "exact::int")]
    pub sealed_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleAnchor {
    #[serde(with = "exact::int")]
    pub chain_id: u64,
    pub contract: String,
    /// The account that anchored the batch (the contract keys batches by it).
    pub gateway: String,
    pub tx_hash: String,
    #[serde(with = "exact::int")]
    pub block_number: u64,
    pub block_hash: String,
}

/// Integers as decimal strings, read from strings or numbers (format 1).
mod exact {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::de::{self, Deserializer, Visitor};
    use serde::{Deserialize, Serialize, Serializer};

    pub mod int {
        use super::*;

        pub fn serialize<T: Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(value)
        }

        pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
        where
            T: FromStr + TryFrom<u64> + TryFrom<i64>,
            D: Deserializer<'de>,
        {
            struct Exact<T>(std::marker::PhantomData<T>);
            impl<T: FromStr + TryFrom<u64> + TryFrom<i64>> Visitor<'_> for Exact<T> {
                type Value = T;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an integer, as a decimal string or a number")
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
                    v.parse()
                        .map_err(|_| E::custom(format!("`{v}` is not an integer in range")))
                }
                fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
                    T::try_from(v).map_err(|_| E::custom(format!("{v} is out of range")))
                }
                fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
                    T::try_from(v).map_err(|_| E::custom(format!("{v} is out of range")))
                }
            }
            d.deserialize_any(Exact(std::marker::PhantomData))
        }
    }

    /// A reading as `cdm::Reading` writes it, with `ts`, `seq` and an
    /// `i64` value as strings.
    pub mod reading {
        use std::sync::Arc;

        use super::*;
        use crate::cdm::{Quality, Reading, Value};

        #[derive(Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        enum ExactValue {
            Bool(bool),
            I64(#[serde(with = "int")] i64),
            F64(f64),
            Text(String),
            Bytes(String),
        }

        #[derive(Serialize, Deserialize)]
        struct ExactReading {
            device: String,
            point: String,
            #[serde(with = "int")]
            ts: i64,
            value: ExactValue,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            unit: Option<String>,
            quality: Quality,
            #[serde(with = "int")]
            seq: u64,
            source: String,
        }

        pub fn serialize<S: Serializer>(r: &Reading, s: S) -> Result<S::Ok, S::Error> {
            let value = match &r.value {
                Value::Bool(b) => ExactValue::Bool(*b),
                Value::I64(i) => ExactValue::I64(*i),
                Value::F64(f) => ExactValue::F64(*f),
                Value::Text(t) => ExactValue::Text(t.clone()),
                Value::Bytes(b) => ExactValue::Bytes(alloy::hex::encode_prefixed(b)),
            };
            ExactReading {
                device: r.device.to_string(),
                point: r.point.to_string(),
                ts: r.ts,
                value,
                unit: r.unit.as_deref().map(str::to_owned),
                quality: r.quality,
                seq: r.seq,
                source: r.source.to_string(),
            }
            .serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Reading, D::Error> {
            let r = ExactReading::deserialize(d)?;
            let value = match r.value {
                ExactValue::Bool(b) => Value::Bool(b),
                ExactValue::I64(i) => Value::I64(i),
                ExactValue::F64(f) => Value::F64(f),
                ExactValue::Text(t) => Value::Text(t),
                ExactValue::Bytes(h) => Value::Bytes(
                    alloy::hex::decode(&h)
                        .map_err(|_| de::Error::custom(format!("`{h}` is not hex")))?,
                ),
            };
            Ok(Reading {
                device: Arc::from(r.device),
                point: Arc::from(r.point),
                ts: r.ts,
                value,
                unit: r.unit.map(Arc::from),
                quality: r.quality,
                seq: r.seq,
                source: Arc::from(r.source),
            })
        }
    }
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
        b.format == FORMAT || b.format == FORMAT_V1,
        format!(
            "`{}` (this verifier reads {FORMAT} and {FORMAT_V1})",
            b.format
        ),
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::cdm::{Quality, Value};

    fn bundle(value: Value) -> ProofBundle {
        let reading = Reading {
            device: Arc::from("d"),
            point: Arc::from("p"),
            ts: 1_795_000_000_123_456_789,
            value,
            unit: None,
            quality: Quality::Good,
            seq: (1 << 53) + 1,
            source: Arc::from("sim://d"),
        };
        ProofBundle {
            format: FORMAT.into(),
            encoding: h(&reading.encode()),
            leaf: h(&reading.leaf_hash()),
            reading,
            position: 0,
            proof: Vec::new(),
            batch: BundleBatch {
                index: 1,
                first_seq: (1 << 53) + 1,
                last_seq: (1 << 53) + 1,
                count: 1,
                root: String::new(),
                prev_hash: String::new(),
                hash: String::new(),
                sealed_at: 1_795_000_000_999_999_999,
            },
            anchor: None,
        }
    }

    #[test]
    fn every_integer_is_a_string_and_format_one_still_reads() {
        for value in [
            Value::I64(i64::MIN),
            Value::I64((1 << 53) + 1),
            Value::F64(0.1),
            Value::Bytes(vec![0, 255]),
            Value::Bool(true),
        ] {
            let b = bundle(value);
            let text = serde_json::to_string(&b).expect("encode");
            let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
            assert_eq!(json["reading"]["ts"], "1795000000123456789", "{text}");
            assert_eq!(json["reading"]["seq"], "9007199254740993");
            assert_eq!(json["batch"]["sealed_at"], "1795000000999999999");
            if let Value::I64(i) = b.reading.value {
                assert_eq!(json["reading"]["value"]["i64"], i.to_string());
            }
            let back: ProofBundle = serde_json::from_str(&text).expect("decode");
            assert_eq!(back.reading, b.reading);
            assert_eq!(back.batch, b.batch);
            // Format 1 wrote the same integers as numbers.
            let old = text
                .replace("\"1795000000123456789\"", "1795000000123456789")
                .replace("\"9007199254740993\"", "9007199254740993")
                .replace(FORMAT, FORMAT_V1);
            let old: ProofBundle = serde_json::from_str(&old).expect("format 1 reads");
            assert_eq!(old.reading, b.reading);
        }
    }
}
