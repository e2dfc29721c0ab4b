//! Batches: the sealed, hash-chained units of anchoring, their table, and
//! the sealer that makes them from committed readings.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior};
use serde::Serialize;

use super::config::AnchorConfig;
use super::merkle::{self, Hash};
use crate::cdm::keccak256;
use crate::store::{StoreError, StoreReader, sql_err};

/// Domain byte of a batch hash (leaves are 0x00, nodes 0x01).
pub const BATCH_TAG: u8 = 0x02;

/// Where a batch's anchor is on-chain, once it has its confirmations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnchorRecord {
    pub chain_id: u64,
    #[serde(serialize_with = "ser_hex")]
    pub contract: Vec<u8>,
    /// The account that anchored it.
    #[serde(serialize_with = "ser_hex")]
    pub gateway: Vec<u8>,
    #[serde(serialize_with = "ser_hex")]
    pub tx_hash: Vec<u8>,
    pub block_number: u64,
    #[serde(serialize_with = "ser_hex")]
    pub block_hash: Vec<u8>,
    /// When the gateway saw the confirmations (UTC ns).
    pub anchored_at: i64,
}

/// A sealed batch (`docs/anchoring.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Batch {
    pub index: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub count: u64,
    #[serde(serialize_with = "ser_hex")]
    pub root: Hash,
    #[serde(serialize_with = "ser_hex")]
    pub prev_hash: Hash,
    #[serde(serialize_with = "ser_hex")]
    pub hash: Hash,
    /// UTC ns.
    pub sealed_at: i64,
    pub anchor: Option<AnchorRecord>,
}

fn ser_hex<S: serde::Serializer, B: AsRef<[u8]>>(b: &B, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&alloy::hex::encode_prefixed(b.as_ref()))
}

/// keccak256(0x02 ‖ index ‖ first_seq ‖ last_seq ‖ count ‖ root ‖ prev_hash).
pub fn batch_hash(index: u64, first_seq: u64, last_seq: u64, root: &Hash, prev: &Hash) -> Hash {
    let mut buf = [0u8; 1 + 4 * 8 + 64];
    buf[0] = BATCH_TAG;
    buf[1..9].copy_from_slice(&index.to_be_bytes());
    buf[9..17].copy_from_slice(&first_seq.to_be_bytes());
    buf[17..25].copy_from_slice(&last_seq.to_be_bytes());
    buf[25..33].copy_from_slice(&(last_seq - first_seq + 1).to_be_bytes());
    buf[33..65].copy_from_slice(root);
    buf[65..97].copy_from_slice(prev);
    keccak256(&buf)
}

impl Batch {
    /// Whether the stored hash is the hash of the stored fields.
    pub fn hash_holds(&self) -> bool {
        self.count == self.last_seq - self.first_seq + 1
            && batch_hash(
                self.index,
                self.first_seq,
                self.last_seq,
                &self.root,
                &self.prev_hash,
            ) == self.hash
    }
}

const BATCH_COLUMNS: &str = "idx, first_seq, last_seq, root, prev_hash, hash, sealed_at, \
     chain_id, contract, gateway, tx_hash, block_number, block_hash, anchored_at";

fn hash32(row: &Row<'_>, i: usize) -> rusqlite::Result<Hash> {
    let v: Vec<u8> = row.get(i)?;
    v.try_into().map_err(|v: Vec<u8>| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Blob,
            format!("a hash of {} bytes, not 32", v.len()).into(),
        )
    })
}

fn batch_row(row: &Row<'_>) -> rusqlite::Result<Batch> {
    let (first, last): (i64, i64) = (row.get(1)?, row.get(2)?);
    let anchor = match row.get::<_, Option<Vec<u8>>>(10)? {
        Some(tx_hash) => Some(AnchorRecord {
            chain_id: row.get::<_, i64>(7)? as u64,
            contract: row.get(8)?,
            gateway: row.get(9)?,
            tx_hash,
            block_number: row.get::<_, i64>(11)? as u64,
            block_hash: row.get(12)?,
            anchored_at: row.get(13)?,
        }),
        None => None,
    };
    Ok(Batch {
        index: row.get::<_, i64>(0)? as u64,
        first_seq: first as u64,
        last_seq: last as u64,
        count: (last - first + 1) as u64,
        root: hash32(row, 3)?,
        prev_hash: hash32(row, 4)?,
        hash: hash32(row, 5)?,
        sealed_at: row.get(6)?,
        anchor,
    })
}

/// Reads of the batch tables, on any connection (a reader's or the anchorer's).
pub struct Batches<'c> {
    conn: &'c Connection,
    path: &'c Path,
}

impl<'c> Batches<'c> {
    pub fn new(conn: &'c Connection, path: &'c Path) -> Self {
        Self { conn, path }
    }

    fn one(
        &self,
        sql: &str,
        args: impl rusqlite::Params,
        what: &'static str,
    ) -> Result<Option<Batch>, StoreError> {
        self.conn
            .prepare_cached(&format!("SELECT {BATCH_COLUMNS} FROM batches {sql}"))
            .and_then(|mut s| s.query_row(args, batch_row).optional())
            .map_err(sql_err(self.path, what))
    }

    pub fn by_index(&self, index: u64) -> Result<Option<Batch>, StoreError> {
        self.one("WHERE idx = ?1", [index as i64], "reading a batch")
    }

    /// The batch whose range holds `seq`.
    pub fn holding(&self, seq: u64) -> Result<Option<Batch>, StoreError> {
        Ok(self
            .one(
                "WHERE last_seq >= ?1 ORDER BY last_seq LIMIT 1",
                [seq as i64],
                "finding a reading's batch",
            )?
            .filter(|b| b.first_seq <= seq))
    }

    pub fn last(&self) -> Result<Option<Batch>, StoreError> {
        self.one("ORDER BY idx DESC LIMIT 1", [], "reading the last batch")
    }

    /// Up to `limit` batches with index above `after`, in order.
    pub fn after(&self, after: u64, limit: usize) -> Result<Vec<Batch>, StoreError> {
        self.list("idx > ?1 ORDER BY idx", after, limit)
    }

    /// Up to `limit` batches, newest first, below index `before`.
    pub fn newest(&self, before: u64, limit: usize) -> Result<Vec<Batch>, StoreError> {
        self.list("idx < ?1 ORDER BY idx DESC", before, limit)
    }

    fn list(&self, condition: &str, index: u64, limit: usize) -> Result<Vec<Batch>, StoreError> {
        let what = "listing batches";
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {BATCH_COLUMNS} FROM batches WHERE {condition} LIMIT ?2"
            ))
            .map_err(sql_err(self.path, what))?;
        let rows = stmt
            .query_map(
                [
                    index.min(i64::MAX as u64) as i64,
                    limit.min(i64::MAX as usize) as i64,
                ],
                batch_row,
            )
            .map_err(sql_err(self.path, what))?;
        rows.collect::<Result<_, _>>()
            .map_err(sql_err(self.path, what))
    }

    /// The newest batch with a recorded on-chain anchor, if any.
    pub fn last_anchored(&self) -> Result<Option<Batch>, StoreError> {
        self.one(
            "WHERE tx_hash IS NOT NULL ORDER BY idx DESC LIMIT 1",
            [],
            "finding the last anchored batch",
        )
    }

    /// The first batch without an on-chain anchor, if any.
    pub fn first_unanchored(&self) -> Result<Option<Batch>, StoreError> {
        self.one(
            "WHERE tx_hash IS NULL ORDER BY idx LIMIT 1",
            [],
            "finding the first unanchored batch",
        )
    }

    /// The stored leaves of a batch; `None` once retention dropped them.
    pub fn leaves(&self, index: u64) -> Result<Option<Vec<Hash>>, StoreError> {
        let blob: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT leaves FROM batch_leaves WHERE batch = ?1")
            .and_then(|mut s| s.query_row([index as i64], |r| r.get(0)).optional())
            .map_err(sql_err(self.path, "reading a batch's leaves"))?;
        Ok(blob.map(|b| {
            b.chunks_exact(32)
                .map(|c| c.try_into().expect("32 bytes"))
                .collect()
        }))
    }

    /// Number of batches and of those with an on-chain anchor.
    pub fn counts(&self) -> Result<(u64, u64), StoreError> {
        self.conn
            .query_row("SELECT count(*), count(tx_hash) FROM batches", [], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })
            .map_err(sql_err(self.path, "counting batches"))
    }
}

/// What the sealer has done, for metrics and status.
#[derive(Debug, Default)]
pub struct SealStats {
    pub batches: std::sync::atomic::AtomicU64,
    pub sealed_seq: std::sync::atomic::AtomicU64,
    /// Readings retention deleted before they could be sealed.
    pub lost_to_retention: std::sync::atomic::AtomicU64,
    /// When the last batch was sealed (UTC ns; 0 none in this run).
    pub last_sealed_at: std::sync::atomic::AtomicI64,
}

/// Seals committed readings into batches; owns the batch tables' writes.
pub struct Sealer {
    conn: Connection,
    reader: StoreReader,
    path: PathBuf,
    max_readings: usize,
    max_age: Duration,
    next_index: u64,
    prev_hash: Hash,
    /// Seq of the next reading to seal.
    next_seq: u64,
    pending: Vec<Hash>,
    pending_since: Option<Instant>,
    stats: Arc<SealStats>,
}

/// Readings read from the store per query.
const SCAN_CHUNK: usize = 8192;

impl Sealer {
    /// Opens the sealer on a database the writer has opened (and migrated).
    pub fn open(
        path: &Path,
        config: &AnchorConfig,
        synchronous: crate::store::config::Synchronous,
    ) -> Result<Self, StoreError> {
        let conn = crate::store::schema::open_side_writer(path, synchronous)?;
        let reader = StoreReader::open(path)?;
        let last = Batches::new(&conn, path).last()?;
        let (next_index, prev_hash, next_seq) = match &last {
            Some(b) => (b.index + 1, b.hash, b.last_seq + 1),
            None => (1, [0; 32], 1),
        };
        let stats = Arc::new(SealStats::default());
        stats.batches.store(next_index - 1, Relaxed);
        stats.sealed_seq.store(next_seq - 1, Relaxed);
        Ok(Self {
            conn,
            reader,
            path: path.to_owned(),
            max_readings: config.batch_max_readings,
            max_age: config.batch_max_age,
            next_index,
            prev_hash,
            next_seq,
            pending: Vec::new(),
            pending_since: None,
            stats,
        })
    }

    pub fn stats(&self) -> Arc<SealStats> {
        self.stats.clone()
    }

    /// Hashes every committed reading not yet hashed and seals the batches
    /// that are full or old enough. Returns the number sealed.
    pub fn step(&mut self, now: Instant) -> Result<usize, StoreError> {
        let mut sealed = 0;
        if self.pending.len() >= self.max_readings {
            // A seal that failed last time (disk full, a lock timeout).
            self.seal()?;
            sealed += 1;
        }
        loop {
            let after = self.next_seq - 1 + self.pending.len() as u64;
            let want = (self.max_readings - self.pending.len()).min(SCAN_CHUNK);
            let readings = self.reader.after_seq(after, want)?;
            if readings.is_empty() {
                break;
            }
            for r in &readings {
                let expected = self.next_seq + self.pending.len() as u64;
                if r.seq != expected {
                    // Retention deleted readings before they were sealed:
                    // close what is pending and go on after the hole.
                    if !self.pending.is_empty() {
                        self.seal()?;
                        sealed += 1;
                    }
                    let lost = r.seq - self.next_seq;
                    self.stats.lost_to_retention.fetch_add(lost, Relaxed);
                    tracing::warn!(
                        from_seq = self.next_seq,
                        to_seq = r.seq - 1,
                        lost,
                        "readings were deleted by retention before they were sealed; \
                         no batch covers them (raise [store.retention] or check the sealer)"
                    );
                    self.next_seq = r.seq;
                }
                if self.pending.is_empty() {
                    self.pending_since = Some(now);
                }
                self.pending.push(r.leaf_hash());
                if self.pending.len() >= self.max_readings {
                    self.seal()?;
                    sealed += 1;
                }
            }
        }
        if self
            .pending_since
            .is_some_and(|since| now.saturating_duration_since(since) >= self.max_age)
            && !self.pending.is_empty()
        {
            self.seal()?;
            sealed += 1;
        }
        Ok(sealed)
    }

    /// Seals what is pending, whatever its size or age (tools and tests).
    pub fn seal_now(&mut self) -> Result<bool, StoreError> {
        self.step(Instant::now())?;
        if self.pending.is_empty() {
            return Ok(false);
        }
        self.seal()?;
        Ok(true)
    }

    fn seal(&mut self) -> Result<(), StoreError> {
        let count = self.pending.len() as u64;
        let first = self.next_seq;
        let last = first + count - 1;
        let root = merkle::root(&self.pending).expect("pending is not empty");
        let hash = batch_hash(self.next_index, first, last, &root, &self.prev_hash);
        let now = biota_common::time::now_ns();
        let path = &self.path;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err(path, "starting to seal a batch"))?;
        tx.execute(
            "INSERT INTO batches (idx, first_seq, last_seq, root, prev_hash, hash, sealed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            rusqlite::params![
                self.next_index as i64,
                first as i64,
                last as i64,
                &root[..],
                &self.prev_hash[..],
                &hash[..],
                now
            ],
        )
        .map_err(sql_err(path, "sealing a batch"))?;
        tx.execute(
            "INSERT INTO batch_leaves (batch, leaves) VALUES (?1, ?2)",
            rusqlite::params![self.next_index as i64, self.pending.as_flattened()],
        )
        .map_err(sql_err(path, "storing a batch's leaves"))?;
        tx.commit().map_err(sql_err(path, "committing a batch"))?;
        tracing::debug!(
            index = self.next_index,
            first_seq = first,
            last_seq = last,
            root = %alloy::hex::encode_prefixed(root),
            "sealed a batch"
        );
        self.next_index += 1;
        self.prev_hash = hash;
        self.next_seq = last + 1;
        self.pending.clear();
        self.pending_since = None;
        self.stats.batches.store(self.next_index - 1, Relaxed);
        self.stats.sealed_seq.store(last, Relaxed);
        self.stats.last_sealed_at.store(now, Relaxed);
        Ok(())
    }

    /// Drops the leaves of batches retention has emptied; batch rows stay
    /// (they are the hash chain).
    pub fn drop_retired_leaves(&mut self) -> Result<u64, StoreError> {
        let Some(oldest) = self.reader.oldest_seq()? else {
            return Ok(0);
        };
        let n = self
            .conn
            .execute(
                "DELETE FROM batch_leaves WHERE batch IN
                 (SELECT idx FROM batches WHERE last_seq < ?1)",
                [oldest as i64],
            )
            .map_err(sql_err(&self.path, "dropping retired leaves"))?;
        Ok(n as u64)
    }

    /// The connection, for the chain backend's anchor records.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }
}

/// Records a batch's confirmed on-chain anchor.
pub fn record_anchor(
    conn: &Connection,
    path: &Path,
    index: u64,
    anchor: &AnchorRecord,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE batches SET chain_id = ?2, contract = ?3, gateway = ?4, tx_hash = ?5,
         block_number = ?6, block_hash = ?7, anchored_at = ?8 WHERE idx = ?1",
        rusqlite::params![
            index as i64,
            anchor.chain_id as i64,
            anchor.contract,
            anchor.gateway,
            anchor.tx_hash,
            anchor.block_number as i64,
            anchor.block_hash,
            anchor.anchored_at
        ],
    )
    .map_err(sql_err(path, "recording an anchor"))?;
    Ok(())
}
