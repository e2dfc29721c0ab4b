//! `biota-gateway audit`: recomputes every batch from the database and
//! names each reading altered, removed or inserted since it was sealed,
//! and each break in the batches' hash chain.

use std::collections::VecDeque;

use serde::Serialize;

use super::batch::{Batch, Batches};
use super::merkle;
use crate::cdm::Reading;
use crate::store::{StoreError, StoreReader};

/// One thing that is not as it was sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `altered`, `removed`, `inserted` (readings) or `batch` (the chain).
    pub kind: &'static str,
    /// The reading's seq (0 for a batch finding).
    pub seq: u64,
    /// The batch it belongs to (0 if none).
    pub batch: u64,
    pub detail: String,
}

fn finding(kind: &'static str, seq: u64, batch: u64, detail: String) -> Finding {
    Finding {
        kind,
        seq,
        batch,
        detail,
    }
}

/// What an audit found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditReport {
    pub batches: u64,
    pub readings_checked: u64,
    /// Readings retention deleted (below its floor): expected, not findings.
    pub retired: u64,
    /// Committed readings not sealed yet (newer than the last batch).
    pub unsealed: u64,
    pub findings: Vec<Finding>,
}

impl AuditReport {
    pub fn clean(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Readings fetched per query.
const CHUNK: usize = 8192;

/// Findings listed at most (the counts stay exact in the summary line).
pub const MAX_FINDINGS: usize = 10_000;

/// Audits the whole database: one pass over the batches and one over the
/// readings, in seq order, side by side.
pub fn audit(reader: &StoreReader) -> Result<AuditReport, StoreError> {
    let path = reader.path().to_owned();
    let batches = Batches::new(reader.connection(), &path);
    let floor = reader.meta("retention_floor")?.unwrap_or(0).max(0) as u64;
    let committed_until = reader.meta("next_seq")?.unwrap_or(1).max(1) as u64 - 1;
    let mut report = AuditReport::default();
    let mut push = |report: &mut AuditReport, f: Finding| {
        if report.findings.len() < MAX_FINDINGS {
            report.findings.push(f);
        }
    };

    let mut stream = Stream::new(reader);
    // Rows with seq <= 0 are outside anything the writer numbers.
    {
        let mut stmt = reader
            .connection()
            .prepare("SELECT seq FROM readings WHERE seq <= 0 ORDER BY seq")
            .map_err(crate::store::sql_err(&path, "looking for impossible seqs"))?;
        let seqs = stmt
            .query_map([], |r| r.get::<_, i64>(0))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(crate::store::sql_err(&path, "looking for impossible seqs"))?;
        for seq in seqs {
            push(
                &mut report,
                finding(
                    "inserted",
                    0,
                    0,
                    format!("a row with seq {seq}, which the gateway never assigns"),
                ),
            );
        }
    }

    let mut pending = stream.next()?;
    let mut prev: Option<Batch> = None;
    let mut after = 0u64;
    loop {
        let page = batches.after(after, 256)?;
        if page.is_empty() {
            break;
        }
        for batch in page {
            after = batch.index;
            report.batches += 1;
            check_chain(&mut report, &mut push, prev.as_ref(), &batch);
            let leaves = batches.leaves(batch.index)?;
            if let Some(leaves) = &leaves {
                if leaves.len() as u64 != batch.count {
                    push(
                        &mut report,
                        finding(
                            "batch",
                            0,
                            batch.index,
                            format!(
                                "{} stored leaves for a range of {} readings",
                                leaves.len(),
                                batch.count
                            ),
                        ),
                    );
                } else if merkle::root(leaves) != Some(batch.root) {
                    push(
                        &mut report,
                        finding(
                            "batch",
                            0,
                            batch.index,
                            "the stored leaves do not lead to the batch root".into(),
                        ),
                    );
                }
            }
            // Readings before this batch that no batch covers.
            while let Some(r) = pending.take_if(|r| r.seq < batch.first_seq) {
                report.readings_checked += 1;
                push(
                    &mut report,
                    finding(
                        "inserted",
                        r.seq,
                        0,
                        format!(
                            "{} at seq {} lies outside every sealed batch",
                            r.name(),
                            r.seq
                        ),
                    ),
                );
                pending = stream.next()?;
            }
            for seq in batch.first_seq..=batch.last_seq {
                match pending.take_if(|r| r.seq == seq) {
                    Some(r) => {
                        report.readings_checked += 1;
                        let position = (seq - batch.first_seq) as usize;
                        let sealed = leaves.as_ref().and_then(|l| l.get(position));
                        match (&r.reading, sealed) {
                            (Ok(reading), Some(sealed)) if *sealed != reading.leaf_hash() => push(
                                &mut report,
                                Finding {
                                    kind: "altered",
                                    seq,
                                    batch: batch.index,
                                    detail: format!(
                                        "{} at seq {seq}: the stored reading hashes to 0x{}, \
                                         the sealed leaf is 0x{}",
                                        r.name(),
                                        alloy::hex::encode(reading.leaf_hash()),
                                        alloy::hex::encode(sealed)
                                    ),
                                },
                            ),
                            (Err(why), _) => push(
                                &mut report,
                                Finding {
                                    kind: "altered",
                                    seq,
                                    batch: batch.index,
                                    detail: format!(
                                        "seq {seq}: the stored row is no valid reading any more ({why})"
                                    ),
                                },
                            ),
                            _ => {}
                        }
                        pending = stream.next()?;
                    }
                    None if seq < floor => report.retired += 1,
                    None => push(
                        &mut report,
                        Finding {
                            kind: "removed",
                            seq,
                            batch: batch.index,
                            detail: format!(
                                "seq {seq} was sealed in batch {} and is no longer stored ({})",
                                batch.index,
                                if floor == 0 {
                                    "retention has deleted nothing".to_string()
                                } else {
                                    format!("retention only deleted below seq {floor}")
                                }
                            ),
                        },
                    ),
                }
            }
            prev = Some(batch);
        }
    }
    // After the last batch: unsealed readings, and rows past what the
    // writer ever committed.
    while let Some(r) = pending {
        report.readings_checked += 1;
        if r.seq > committed_until {
            push(
                &mut report,
                finding(
                    "inserted",
                    r.seq,
                    0,
                    format!(
                        "{} at seq {} is past the last committed seq {committed_until}",
                        r.name(),
                        r.seq
                    ),
                ),
            );
        } else {
            report.unsealed += 1;
        }
        pending = stream.next()?;
    }
    Ok(report)
}

/// A stored row in seq order: a reading, or why it is not one.
struct Row {
    seq: u64,
    reading: Result<Reading, String>,
}

impl Row {
    fn name(&self) -> String {
        match &self.reading {
            Ok(r) => format!("{}/{}", r.device, r.point),
            Err(_) => "an invalid row".into(),
        }
    }
}

/// Every stored reading in seq order, fetched a chunk at a time.
struct Stream<'r> {
    reader: &'r StoreReader,
    buffer: VecDeque<Row>,
    scanned_to: u64,
    exhausted: bool,
}

impl<'r> Stream<'r> {
    fn new(reader: &'r StoreReader) -> Self {
        Self {
            reader,
            buffer: VecDeque::new(),
            scanned_to: 0,
            exhausted: false,
        }
    }

    fn next(&mut self) -> Result<Option<Row>, StoreError> {
        if self.buffer.is_empty() && !self.exhausted {
            let rows = self.reader.after_seq_checked(self.scanned_to, CHUNK)?;
            self.exhausted = rows.len() < CHUNK;
            self.buffer.extend(rows.into_iter().map(|r| match r {
                Ok(reading) => Row {
                    seq: reading.seq,
                    reading: Ok(reading),
                },
                Err((seq, why)) => Row {
                    seq,
                    reading: Err(why),
                },
            }));
            if let Some(last) = self.buffer.back() {
                self.scanned_to = last.seq;
            }
        }
        Ok(self.buffer.pop_front())
    }
}

/// The batch's own hash, its link to the previous one, and its range.
fn check_chain(
    report: &mut AuditReport,
    push: &mut impl FnMut(&mut AuditReport, Finding),
    prev: Option<&Batch>,
    batch: &Batch,
) {
    let mut problem = |detail: String| {
        push(
            report,
            Finding {
                kind: "batch",
                seq: 0,
                batch: batch.index,
                detail,
            },
        )
    };
    if !batch.hash_holds() {
        problem("the batch hash does not match its index, range, root and previous hash".into());
    }
    let (want_index, want_prev) = match prev {
        Some(p) => (p.index + 1, p.hash),
        None => (1, [0; 32]),
    };
    if batch.index != want_index {
        problem(format!("index {} follows {}", batch.index, want_index - 1));
    }
    if batch.prev_hash != want_prev {
        problem(
            "its previous-batch hash is not the previous batch's hash: the chain is broken".into(),
        );
    }
    if let Some(p) = prev
        && batch.first_seq <= p.last_seq
    {
        problem(format!(
            "its range starts at seq {}, inside batch {} (up to {})",
            batch.first_seq, p.index, p.last_seq
        ));
    }
}
