//! SQLite's write path: records go through sqlx's native SQLite driver instead of `Any`.
//!
//! Issue #5 asked for 50,000 records/s into SQLite. Binding a batch as one JSON array and
//! unpacking it with `json_each` made SQLite re-parse every row 17 times (once per
//! `json_extract`) and the writer escape each body a second time; going through `Any` copied
//! every bound string once more. Here the rows are bound natively into a multi-row `VALUES`
//! with anonymous `?` parameters: sqlx looks up each parameter's name when binding, and for
//! `$N` names that lookup is linear in the parameter count, so a 1,700-parameter statement
//! spent most of its time there (measured: 17k records/s with `$N`, over 50k with `?`).

use std::str::FromStr;
use std::time::Duration;

use sqlx::query::Query;
use sqlx::sqlite::{SqliteArguments, SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, Sqlite};

use super::{COLUMNS, Columns};
use crate::Error;
use crate::chain::ChainedRecord;
use crate::record::AuditRecord;

/// Pragmas every SQLite connection runs, on the query pool and the write pool alike.
pub(super) const PRAGMAS: [(&str, &str); 5] = [
    // WAL lets `ward audit query` read while the writer writes.
    ("journal_mode", "WAL"),
    ("synchronous", "NORMAL"),
    // The busy timeout rides out short locks instead of failing the batch.
    ("busy_timeout", "2000"),
    // 2 MiB keeps the hot index pages (the right edges of the time-ordered indexes) across
    // batches. A larger cache made each commit slower (SQLite walks the whole page cache at
    // the end of every write transaction) and was most of a proxy's resident memory: 64 MiB
    // measured 72k records/s in the bench, 8 MiB 75–77k; 2 MiB took a proxy's peak RSS under
    // load from 44 to 37 MiB at no measurable cost (docs/PERFORMANCE.md).
    ("cache_size", "-2048"),
    ("temp_store", "MEMORY"),
];

// Rows per INSERT: 17 × 100 = 1,700 parameters, far below SQLite's 32,766. In the bench, 500
// rows measured about the same and 25 about a fifth slower.
const ROWS_PER_INSERT: usize = 100;

/// A pool of one connection for inserting records into the database at `url` (the same URL
/// the query pool opens), connected on first use so that the read-only commands never open it.
pub(super) fn write_pool(url: &str) -> Result<SqlitePool, Error> {
    // sqlx sets a busy timeout of its own before the pragmas run; keep it equal to PRAGMAS'.
    let mut options = SqliteConnectOptions::from_str(url)?.busy_timeout(Duration::from_secs(2));
    for (name, value) in PRAGMAS {
        options = options.pragma(name, value);
    }
    Ok(SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options))
}

/// Inserts `records` (`parsed[i]` is the body of `records[i]`) in one transaction, skipping
/// those already present.
pub(super) async fn insert(
    pool: &SqlitePool,
    records: &[ChainedRecord],
    parsed: &[AuditRecord],
) -> Result<(), Error> {
    let mut chunks = records
        .chunks(ROWS_PER_INSERT)
        .zip(parsed.chunks(ROWS_PER_INSERT));
    let mut tx = pool.begin().await?;
    let mut next = chunks.next().map(|(chunk, recs)| bound(chunk, recs));
    while let Some(query) = next.take() {
        // Bind the following chunk while SQLite's worker thread inserts this one: `biased`
        // polls the insert first, which hands it to the worker, and binds after.
        let (done, following) = tokio::join!(
            biased;
            query.execute(&mut *tx),
            async { chunks.next().map(|(chunk, recs)| bound(chunk, recs)) },
        );
        done?;
        next = following;
    }
    tx.commit().await?;
    Ok(())
}

/// The INSERT for one chunk, its rows bound.
fn bound<'q>(
    chunk: &'q [ChainedRecord],
    recs: &'q [AuditRecord],
) -> Query<'q, Sqlite, SqliteArguments> {
    // Only the full-size statement is worth keeping prepared; a short tail comes in any length
    // and would crowd the statement cache.
    let mut query = sqlx::query(AssertSqlSafe(insert_sql(chunk.len())))
        .persistent(chunk.len() == ROWS_PER_INSERT);
    for (r, rec) in chunk.iter().zip(recs) {
        let row = Columns::new(r, rec);
        query = query
            .bind(row.chain)
            .bind(row.seq)
            .bind(row.id)
            .bind(row.time_ms)
            .bind(row.request_id)
            .bind(row.principal)
            .bind(row.end_user)
            .bind(row.action)
            .bind(row.resource)
            .bind(row.decision)
            .bind(row.bypass)
            .bind(row.grant_id)
            .bind(row.mode)
            .bind(row.policies)
            .bind(row.body)
            .bind(row.prev_hash)
            .bind(row.hash);
    }
    query
}

/// `INSERT … VALUES (?, …), … ON CONFLICT DO NOTHING` for `rows` rows; the full-size
/// statement is built once.
fn insert_sql(rows: usize) -> String {
    static FULL: std::sync::OnceLock<String> = std::sync::OnceLock::new();

    let build = |rows: usize| {
        let row = format!("({})", ["?"; 17].join(","));
        format!(
            "INSERT INTO audit_records ({COLUMNS}) VALUES {} ON CONFLICT (chain, seq) DO NOTHING",
            vec![row; rows].join(",")
        )
    };
    if rows == ROWS_PER_INSERT {
        FULL.get_or_init(|| build(rows)).clone()
    } else {
        build(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_sql_has_one_anonymous_parameter_per_column() {
        let sql = insert_sql(3);
        assert_eq!(sql.matches('?').count(), 3 * 17);
        assert!(!sql.contains('$'), "{sql}");
        assert_eq!(COLUMNS.split(',').count(), 17);
        assert_eq!(insert_sql(ROWS_PER_INSERT), insert_sql(ROWS_PER_INSERT));
    }
}
