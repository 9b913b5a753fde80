//! Walks a chain and its checkpoints and names every record that was edited, inserted,
//! deleted, reordered or truncated.

use std::fmt;

use serde::Serialize;

use crate::Error;
use crate::chain::{ChainedRecord, Checkpoint, CheckpointKind, GENESIS_HASH};
use crate::key::PublicKey;
use crate::store::{Db, StoredRow};

const PAGE: i64 = 5_000;

/// One thing wrong with a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Finding {
    /// The record's content no longer matches its hash.
    Edited {
        /// Where.
        seq: i64,
    },
    /// An indexed column disagrees with the hashed body (someone edited the column).
    ColumnEdited {
        /// Where.
        seq: i64,
        /// Which column.
        column: String,
    },
    /// Records are missing between two sequence numbers.
    Deleted {
        /// First missing.
        from: i64,
        /// Last missing.
        to: i64,
    },
    /// The record does not link to the one before: inserted or reordered.
    BrokenLink {
        /// Where.
        seq: i64,
    },
    /// A checkpoint covers records that are gone from the end.
    Truncated {
        /// The last record present.
        last_present: i64,
        /// The highest sequence number a checkpoint vouches for.
        checkpoint_seq: i64,
    },
    /// A checkpoint's hash does not match the record it covers.
    CheckpointMismatch {
        /// Where.
        seq: i64,
    },
    /// A checkpoint's signature does not verify under the given key.
    BadSignature {
        /// Where.
        seq: i64,
    },
}

/// The result of verifying one chain.
#[derive(Debug, Clone, Serialize)]
pub struct ChainReport {
    /// The chain.
    pub chain: String,
    /// Records read.
    pub records: u64,
    /// Checkpoints whose signature verified.
    pub checkpoints: u64,
    /// Records after the last checkpoint (truncation there cannot be detected).
    pub unsealed: u64,
    /// What is wrong; empty when the chain is intact.
    pub findings: Vec<Finding>,
}

// === impl Finding ===

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Edited { seq } => write!(f, "record {seq} was edited (hash mismatch)"),
            Self::ColumnEdited { seq, column } => {
                write!(
                    f,
                    "record {seq} was edited (column `{column}` disagrees with the hashed record)"
                )
            }
            Self::Deleted { from, to } if from == to => write!(f, "record {from} was deleted"),
            Self::Deleted { from, to } => write!(f, "records {from} to {to} were deleted"),
            Self::BrokenLink { seq } => {
                write!(
                    f,
                    "record {seq} does not follow the record before it (inserted or reordered)"
                )
            }
            Self::Truncated {
                last_present,
                checkpoint_seq,
            } => write!(
                f,
                "the log was truncated after record {last_present}: a checkpoint vouches for records up to {checkpoint_seq}"
            ),
            Self::CheckpointMismatch { seq } => {
                write!(
                    f,
                    "the checkpoint at record {seq} does not match the record"
                )
            }
            Self::BadSignature { seq } => {
                write!(f, "the checkpoint at record {seq} has an invalid signature")
            }
        }
    }
}

/// Verifies every chain in `db` against checkpoints signed by `key`.
pub async fn verify_db(db: &Db, key: &PublicKey) -> Result<Vec<ChainReport>, Error> {
    let mut reports = Vec::new();
    for chain in db.chains().await? {
        let checkpoints = db.checkpoints(&chain).await?;
        let mut walker = Walker::new(&chain, checkpoints, Some(key));
        let mut after = walker.start_after();
        loop {
            let page = db.page(&chain, after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.record.seq;
            for row in &page {
                walker.visit(row);
            }
        }
        reports.push(walker.finish());
    }
    Ok(reports)
}

/// Verifies chained records read from a JSONL export or sink (no checkpoints).
pub fn verify_records(records: &[ChainedRecord]) -> Vec<ChainReport> {
    let mut chains: Vec<String> = records.iter().map(|r| r.chain.clone()).collect();
    chains.sort();
    chains.dedup();
    chains
        .iter()
        .map(|chain| {
            let mut walker = Walker::new(chain, Vec::new(), None);
            for r in records.iter().filter(|r| &r.chain == chain) {
                walker.visit(&StoredRow {
                    record: r.clone(),
                    columns: Vec::new(),
                });
            }
            walker.finish()
        })
        .collect()
}

struct Walker {
    report: ChainReport,
    checkpoints: Vec<Checkpoint>,
    expected_seq: i64,
    prev_hash: String,
    last_seq: i64,
    last_checkpoint_seq: i64,
}

impl Walker {
    fn new(chain: &str, checkpoints: Vec<Checkpoint>, key: Option<&PublicKey>) -> Self {
        let mut report = ChainReport {
            chain: chain.to_owned(),
            records: 0,
            checkpoints: 0,
            unsealed: 0,
            findings: Vec::new(),
        };
        let mut valid = Vec::new();
        for cp in checkpoints {
            if key.is_some_and(|k| cp.signature_is_valid(k)) {
                report.checkpoints += 1;
                valid.push(cp);
            } else {
                report.findings.push(Finding::BadSignature { seq: cp.seq });
            }
        }
        // The chain restarts after the latest prune cut.
        let cut = valid
            .iter()
            .filter(|c| c.kind == CheckpointKind::Prune)
            .max_by_key(|c| c.seq)
            .map(|c| (c.seq, c.hash.clone()));
        let (cut_seq, cut_hash) = cut.unwrap_or((0, GENESIS_HASH.to_owned()));
        let last_checkpoint_seq = valid.iter().map(|c| c.seq).max().unwrap_or(0);
        Self {
            report,
            checkpoints: valid
                .into_iter()
                .filter(|c| c.seq > cut_seq || c.kind == CheckpointKind::Prune)
                .collect(),
            expected_seq: cut_seq + 1,
            prev_hash: cut_hash,
            last_seq: cut_seq,
            last_checkpoint_seq,
        }
    }

    fn start_after(&self) -> i64 {
        self.expected_seq - 1
    }

    fn visit(&mut self, row: &StoredRow) {
        let r = &row.record;
        self.report.records += 1;
        if r.seq > self.expected_seq {
            self.report.findings.push(Finding::Deleted {
                from: self.expected_seq,
                to: r.seq - 1,
            });
        } else if r.prev_hash != self.prev_hash {
            self.report
                .findings
                .push(Finding::BrokenLink { seq: r.seq });
        }
        if !r.hash_is_valid() {
            self.report.findings.push(Finding::Edited { seq: r.seq });
        }
        self.check_columns(row);
        if let Some(cp) = self.checkpoints.iter().find(|c| c.seq == r.seq)
            && cp.hash != r.hash
        {
            self.report
                .findings
                .push(Finding::CheckpointMismatch { seq: r.seq });
        }
        self.expected_seq = r.seq + 1;
        self.prev_hash = r.hash.clone();
        self.last_seq = r.seq;
    }

    fn check_columns(&mut self, row: &StoredRow) {
        if row.columns.is_empty() {
            return;
        }
        let Ok(body) = serde_json::from_str::<serde_json::Value>(&row.record.body) else {
            self.report.findings.push(Finding::Edited {
                seq: row.record.seq,
            });
            return;
        };
        for (column, value) in &row.columns {
            let expected = match *column {
                "time" => body["time"]
                    .as_str()
                    .and_then(|t| crate::record::parse_time(t).ok())
                    .map(|ms| ms.to_string()),
                "bypass" => body["bypass"].as_bool().map(|b| b.to_string()),
                other => body[other].as_str().map(str::to_owned),
            };
            if expected.as_deref() != Some(value.as_str()) {
                self.report.findings.push(Finding::ColumnEdited {
                    seq: row.record.seq,
                    column: (*column).to_owned(),
                });
            }
        }
    }

    fn finish(mut self) -> ChainReport {
        if self.last_checkpoint_seq > self.last_seq {
            self.report.findings.push(Finding::Truncated {
                last_present: self.last_seq,
                checkpoint_seq: self.last_checkpoint_seq,
            });
        }
        self.report.unsealed =
            u64::try_from(self.last_seq - self.last_checkpoint_seq.min(self.last_seq)).unwrap_or(0);
        self.report
    }
}
