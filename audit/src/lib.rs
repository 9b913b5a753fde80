//! The audit log: one record per decision, hash-chained, written off the hot path.
//!
//! - [`AuditRecord`] is one decision; its JSON form is stable and is also the export format
//!   (docs/AUDIT.md).
//! - [`Auditor`] takes records from request handlers through a bounded queue without waiting,
//!   sequences and hash-chains them in one background task, writes them in batches to a
//!   [`Store`] (SQLite, PostgreSQL) or a JSONL file, and spools to disk when the store is down.
//! - [`verify`] walks a chain and its signed checkpoints and names every edited, inserted,
//!   deleted or truncated record.

#![warn(missing_docs)]

pub mod chain;
pub mod key;
pub mod metrics;
pub mod query;
pub mod record;
mod spool;
pub mod store;
pub mod verify;
pub mod writer;

pub use chain::{ChainedRecord, Checkpoint, CheckpointKind};
pub use key::AuditKey;
pub use metrics::Metrics;
pub use record::{AuditRecord, Candidate, Decision, Mode};
pub use store::Store;
pub use writer::{Auditor, Config};

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database failed.
    #[error("audit store: {0}")]
    Store(#[from] sqlx::Error),
    /// Running migrations failed.
    #[error("audit store migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A file could not be read or written.
    #[error("`{path}`: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A stored record or spool line does not parse.
    #[error("corrupt audit data: {0}")]
    Corrupt(String),
    /// The audit key is unusable.
    #[error("audit key: {0}")]
    Key(String),
    /// A record could not be made durable (strict mode fails the request closed).
    #[error("audit record could not be made durable: {0}")]
    NotDurable(String),
    /// The writer's thread or runtime could not be started.
    #[error("starting the audit writer: {0}")]
    Start(std::io::Error),
    /// The writer has stopped.
    #[error("the audit writer has stopped")]
    Closed,
    /// A bad query or store URL.
    #[error("{0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests;
