//! Counters that say where every record went; nothing is dropped without being counted.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// The writer's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Records committed to the store.
    pub written: AtomicU64,
    /// Store transactions that committed records (written ÷ batches = records per commit).
    pub batches: AtomicU64,
    /// Records written to the on-disk spool because the store failed.
    pub spooled: AtomicU64,
    /// Spooled records later committed to the store.
    pub replayed: AtomicU64,
    /// Records that found the queue full and went to the overflow file.
    pub overflowed: AtomicU64,
    /// Records lost because even the spool disk failed.
    pub dropped: AtomicU64,
    /// Signed checkpoints stored.
    pub checkpoints: AtomicU64,
    /// Times records piled up while SQLite's thread ran in `SCHED_IDLE`, so that a thread at
    /// the writer's priority took over.
    pub catch_ups: AtomicU64,
}

impl Metrics {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Appends the counters in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        for (name, help, value) in [
            (
                "written",
                "Audit records committed to the store.",
                &self.written,
            ),
            (
                "batches",
                "Store transactions that committed audit records.",
                &self.batches,
            ),
            (
                "spooled",
                "Audit records spooled to disk while the store was failing.",
                &self.spooled,
            ),
            (
                "replayed",
                "Spooled audit records later committed to the store.",
                &self.replayed,
            ),
            (
                "overflowed",
                "Audit records that found the queue full and went to the overflow file.",
                &self.overflowed,
            ),
            (
                "dropped",
                "Audit records lost because the spool disk failed.",
                &self.dropped,
            ),
            (
                "checkpoints",
                "Signed audit checkpoints stored.",
                &self.checkpoints,
            ),
        ] {
            let _ = writeln!(out, "# HELP ward_audit_records_{name}_total {help}");
            let _ = writeln!(out, "# TYPE ward_audit_records_{name}_total counter");
            let _ = writeln!(
                out,
                "ward_audit_records_{name}_total {}",
                value.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP ward_audit_writer_catch_ups_total Times audit records piled up while SQLite's \
             thread ran in SCHED_IDLE and a thread at the writer's priority took over.\n\
             # TYPE ward_audit_writer_catch_ups_total counter\n\
             ward_audit_writer_catch_ups_total {}",
            self.catch_ups.load(Ordering::Relaxed)
        );
    }
}
