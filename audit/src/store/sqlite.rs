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
use sqlx::sqlite::{SqliteArguments, SqliteConnectOptions, SqliteConnection};
use sqlx::{AssertSqlSafe, Connection, Sqlite};

use super::{COLUMNS, Columns};
use crate::Error;
use crate::chain::ChainedRecord;
use crate::record::AuditRecord;

/// Pragmas every SQLite connection runs, on the query pool and the write pool alike.
pub(super) const PRAGMAS: [(&str, &str); 6] = [
    // First, because it only takes before the database's first page is written (so an older
    // store keeps its 4 KiB). SQLite writes each WAL frame with calls of its own and each
    // commit rewrites the indexes' partly filled right-hand pages: with 16 KiB pages its thread
    // spent 9% less CPU a record under the proxy bench's load (user and system time read from
    // /proc, two runs each, docs/PERFORMANCE.md).
    ("page_size", "16384"),
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

// Rows per INSERT at most: 17 × 128 = 2,176 parameters, far below SQLite's 32,766. In the
// bench, 500 rows measured about the same as 100 and 25 about a fifth slower.
const ROWS_PER_INSERT: usize = 128;

/// The one connection records are inserted through, opened on first use (so that the
/// read-only commands never open it) and again after a failure or [`Writes::reconnect`].
#[derive(Debug)]
pub(super) struct Writes {
    options: SqliteConnectOptions,
    conn: tokio::sync::Mutex<Option<SqliteConnection>>,
}

impl Writes {
    /// For the database at `url` (the same URL the query pool opens).
    pub(super) fn new(url: &str) -> Result<Self, Error> {
        // sqlx sets a busy timeout of its own before the pragmas run; keep it equal to PRAGMAS'.
        let mut options = SqliteConnectOptions::from_str(url)?.busy_timeout(Duration::from_secs(2));
        for (name, value) in PRAGMAS {
            options = options.pragma(name, value);
        }
        Ok(Self {
            options,
            conn: tokio::sync::Mutex::new(None),
        })
    }

    /// Closes the connection; the next insert opens a new one. sqlx starts a connection's
    /// thread from the thread that connects, and a new thread inherits its creator's
    /// scheduling class, so this moves SQLite's work to the inserting thread's class.
    pub(super) async fn reconnect(&self) {
        drop(self.conn.lock().await.take());
    }

    /// Inserts `records` (`parsed[i]` is the body of `records[i]`) in one transaction,
    /// skipping those already present.
    pub(super) async fn insert(
        &self,
        records: &[ChainedRecord],
        parsed: Vec<AuditRecord>,
    ) -> Result<(), Error> {
        let mut conn = self.conn.lock().await;
        let open = match conn.take() {
            Some(open) => open,
            None => self.connect().await?,
        };
        let open = conn.insert(open);
        let result = insert(open, records, parsed).await;
        if result.is_err() {
            // Start the next batch on a fresh connection rather than on one in an unknown state.
            drop(conn.take());
        }
        result
    }

    async fn connect(&self) -> Result<SqliteConnection, Error> {
        Ok(SqliteConnection::connect_with(&self.options).await?)
    }
}

/// Inserts `records` in one transaction on `conn`.
async fn insert(
    conn: &mut SqliteConnection,
    records: &[ChainedRecord],
    parsed: Vec<AuditRecord>,
) -> Result<(), Error> {
    let mut parsed = parsed.into_iter();
    let mut chunks = chunk_sizes(records.len()).scan(0, move |start, len| {
        let chunk = &records[*start..*start + len];
        *start += len;
        Some((chunk, parsed.by_ref().take(len).collect::<Vec<_>>()))
    });
    let mut tx = conn.begin().await?;
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
fn bound(chunk: &[ChainedRecord], recs: Vec<AuditRecord>) -> Query<'_, Sqlite, SqliteArguments> {
    // Every chunk size is one of `chunk_sizes`' eight, so each statement is prepared once.
    let mut query = sqlx::query(AssertSqlSafe(insert_sql(chunk.len())));
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

/// How a batch of `len` records is cut into INSERTs: full statements of `ROWS_PER_INSERT`
/// rows, then the rest by its binary digits (64, 32, …, 1).
///
/// Preparing a statement costs SQLite about as much per row as inserting it (callgrind: 8.5k
/// instructions a row), so a tail of any length prepared afresh for each batch cost as much as
/// a sixth of the inserts; with these sizes there are only eight statements, each prepared
/// once, for at most seven more round trips to SQLite's thread per batch.
fn chunk_sizes(len: usize) -> impl Iterator<Item = usize> {
    let full = len / ROWS_PER_INSERT;
    let rest = len % ROWS_PER_INSERT;
    std::iter::repeat_n(ROWS_PER_INSERT, full).chain(
        (0..ROWS_PER_INSERT.trailing_zeros())
            .rev()
            .map(|bit| 1 << bit)
            .filter(move |size| rest & size != 0),
    )
}

/// `INSERT OR ROLLBACK … VALUES (?, …), … ON CONFLICT DO NOTHING` for `rows` rows (a power of
/// two up to `ROWS_PER_INSERT`), each built once.
///
/// A row already stored (a replayed spool) is skipped by the upsert clause. Any other
/// constraint failing rolls the whole batch back rather than only this statement: the batch
/// then fails and is spooled, as for any store error. That also spares SQLite the statement
/// journal it keeps for a statement that may abort alone, a copy of every page the statement
/// changes (with its savepoint, about a quarter of the SQLite thread's instructions a record,
/// callgrind).
fn insert_sql(rows: usize) -> &'static str {
    const SIZES: usize = ROWS_PER_INSERT.trailing_zeros() as usize + 1;
    static SQL: [std::sync::OnceLock<String>; SIZES] =
        [const { std::sync::OnceLock::new() }; SIZES];

    debug_assert!(
        rows.is_power_of_two() && rows <= ROWS_PER_INSERT,
        "{rows} rows"
    );
    SQL[rows.trailing_zeros() as usize].get_or_init(|| {
        let row = format!("({})", ["?"; 17].join(","));
        format!(
            "INSERT OR ROLLBACK INTO audit_records ({COLUMNS}) VALUES {} ON CONFLICT (chain, seq) DO NOTHING",
            vec![row; rows].join(",")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_sql_has_one_anonymous_parameter_per_column() {
        let sql = insert_sql(4);
        assert_eq!(sql.matches('?').count(), 4 * 17);
        assert!(!sql.contains('$'), "{sql}");
        assert_eq!(COLUMNS.split(',').count(), 17);
        assert_eq!(
            insert_sql(ROWS_PER_INSERT).matches('(').count(),
            ROWS_PER_INSERT + 2
        );
    }

    #[tokio::test]
    async fn a_row_that_breaks_a_constraint_rolls_its_whole_batch_back() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("audit.db").display());
        drop(crate::Store::open(&url).await.unwrap());
        let mut conn = Writes::new(&url).unwrap().connect().await.unwrap();
        let row = |query: Query<'static, Sqlite, SqliteArguments>,
                   seq: i64,
                   body: Option<&'static str>| {
            query
                .bind("node")
                .bind(seq)
                .bind("id")
                .bind(seq)
                .bind("request")
                .bind("principal")
                .bind(None::<&str>)
                .bind("action")
                .bind("resource")
                .bind("allow")
                .bind(0_i64)
                .bind(None::<&str>)
                .bind("enforce")
                .bind("[]")
                .bind(body)
                .bind("prev")
                .bind("hash")
        };
        let mut tx = conn.begin().await.unwrap();
        row(sqlx::query(AssertSqlSafe(insert_sql(1))), 1, Some("{}"))
            .execute(&mut *tx)
            .await
            .unwrap();
        // The second row has no body: NOT NULL fails on it after the first row went in.
        let two = sqlx::query(AssertSqlSafe(insert_sql(2)));
        let failed = row(row(two, 2, Some("{}")), 3, None)
            .execute(&mut *tx)
            .await;
        assert!(failed.is_err());
        // The transaction is gone with the statement: committing it cannot keep any row.
        let _ = tx.commit().await;
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_records")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(count, 0);
    }

    #[test]
    fn a_batch_is_cut_into_eight_sizes_that_add_up_to_it() {
        let mut seen = std::collections::BTreeSet::new();
        for len in 0..=3 * ROWS_PER_INSERT + 1 {
            let sizes: Vec<usize> = chunk_sizes(len).collect();
            assert_eq!(sizes.iter().sum::<usize>(), len, "{sizes:?}");
            assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
            // Besides the full statements, at most one of each smaller size.
            assert!(sizes.iter().filter(|&&s| s < ROWS_PER_INSERT).count() <= 7);
            seen.extend(sizes);
        }
        assert_eq!(seen.len(), 8, "{seen:?}");
        assert!(
            seen.iter()
                .all(|s| s.is_power_of_two() && *s <= ROWS_PER_INSERT)
        );
        assert_eq!(
            chunk_sizes(250).collect::<Vec<_>>(),
            [128, 64, 32, 16, 8, 2]
        );
    }
}
