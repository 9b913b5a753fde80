//! The hash chain: sequence numbers, hashes linking each record to the one before, and signed
//! checkpoints.

use serde::{Deserialize, Serialize};

use crate::key::{AuditKey, PublicKey};
use crate::record::{AuditRecord, hex};

/// The hash before the first record of a chain.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A record with its place in the chain. `body` is the exact JSON that was hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainedRecord {
    /// The writer chain (the node name).
    pub chain: String,
    /// Position in the chain, from 1.
    pub seq: i64,
    /// Hash of the record before (or [`GENESIS_HASH`]).
    pub prev_hash: String,
    /// SHA-256 over chain, seq, prev_hash and body.
    pub hash: String,
    /// The record's JSON.
    pub body: String,
}

/// Why a checkpoint was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointKind {
    /// Every N records or T seconds.
    Periodic,
    /// At the cut made by `ward audit prune`: the chain restarts after it.
    Prune,
}

/// A signed statement "record `seq` of `chain` had hash `hash`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The chain.
    pub chain: String,
    /// The record sequence number covered.
    pub seq: i64,
    /// That record's hash.
    pub hash: String,
    /// When the checkpoint was made (unix ms).
    pub time_ms: i64,
    /// Periodic or prune.
    pub kind: CheckpointKind,
    /// Which key signed it.
    pub key_id: String,
    /// Ed25519 signature, hex.
    pub signature: String,
}

/// The writer's end of one chain.
#[derive(Debug, Clone)]
pub struct Chain {
    name: String,
    next_seq: i64,
    last_hash: String,
}

// === impl Chain ===

impl Chain {
    /// Continues `name` after `last` (seq and hash), or starts it.
    pub fn resume(name: &str, last: Option<(i64, String)>) -> Self {
        let (seq, hash) = last.unwrap_or((0, GENESIS_HASH.to_owned()));
        Self {
            name: name.to_owned(),
            next_seq: seq + 1,
            last_hash: hash,
        }
    }

    /// The chain name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sequence number and hash of the last record appended, if any.
    pub fn head(&self) -> (i64, &str) {
        (self.next_seq - 1, &self.last_hash)
    }

    /// Places `record` at the end of the chain.
    pub fn append(&mut self, record: &AuditRecord) -> Result<ChainedRecord, serde_json::Error> {
        // Sized for a typical record (550–700 bytes), so the writer does not grow it four times
        // from serde_json's 128 bytes (3k instructions a record in callgrind).
        let mut body = Vec::with_capacity(1024);
        serde_json::to_writer(&mut body, record)?;
        let body = String::from_utf8(body).map_err(|e| {
            <serde_json::Error as serde::ser::Error>::custom(format!(
                "record JSON is not UTF-8: {e}"
            ))
        })?;
        let hash = record_hash(&self.name, self.next_seq, &self.last_hash, &body);
        let chained = ChainedRecord {
            chain: self.name.clone(),
            seq: self.next_seq,
            prev_hash: std::mem::replace(&mut self.last_hash, hash.clone()),
            hash,
            body,
        };
        self.next_seq += 1;
        Ok(chained)
    }
}

// === impl ChainedRecord ===

impl ChainedRecord {
    /// The record, parsed from `body`.
    pub fn record(&self) -> Result<AuditRecord, serde_json::Error> {
        serde_json::from_str(&self.body)
    }

    /// Whether `hash` matches the content.
    pub fn hash_is_valid(&self) -> bool {
        record_hash(&self.chain, self.seq, &self.prev_hash, &self.body) == self.hash
    }

    /// The export line: the record's fields plus chain, seq, prev_hash and hash.
    pub fn export_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        let mut value: serde_json::Value = serde_json::from_str(&self.body)?;
        if let Some(map) = value.as_object_mut() {
            map.insert("chain".into(), self.chain.clone().into());
            map.insert("seq".into(), self.seq.into());
            map.insert("prev_hash".into(), self.prev_hash.clone().into());
            map.insert("hash".into(), self.hash.clone().into());
        }
        Ok(value)
    }
}

// === impl Checkpoint ===

impl Checkpoint {
    /// Signs a checkpoint for `seq`/`hash` of `chain`.
    pub fn sign(key: &AuditKey, chain: &str, seq: i64, hash: &str, kind: CheckpointKind) -> Self {
        let time_ms = crate::record::now_ms();
        let message = checkpoint_message(chain, seq, hash, time_ms, kind);
        Self {
            chain: chain.to_owned(),
            seq,
            hash: hash.to_owned(),
            time_ms,
            kind,
            key_id: key.public().key_id(),
            signature: hex(&key.sign(message.as_bytes())),
        }
    }

    /// Whether the signature is valid under `key`.
    pub fn signature_is_valid(&self, key: &PublicKey) -> bool {
        let message =
            checkpoint_message(&self.chain, self.seq, &self.hash, self.time_ms, self.kind);
        key.verify(message.as_bytes(), &self.signature)
    }
}

/// SHA-256 over the chain name, sequence number, previous hash and body, as hex.
pub fn record_hash(chain: &str, seq: i64, prev_hash: &str, body: &str) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in [chain, &seq.to_string(), prev_hash, body] {
        ctx.update(part.as_bytes());
        // A separator that cannot occur in the hex, digits or chain name keeps fields apart.
        ctx.update(b"\n");
    }
    hex(ctx.finish().as_ref())
}

fn checkpoint_message(
    chain: &str,
    seq: i64,
    hash: &str,
    time_ms: i64,
    kind: CheckpointKind,
) -> String {
    let kind = match kind {
        CheckpointKind::Periodic => "periodic",
        CheckpointKind::Prune => "prune",
    };
    format!("ward-audit-checkpoint\n{chain}\n{seq}\n{hash}\n{time_ms}\n{kind}")
}
