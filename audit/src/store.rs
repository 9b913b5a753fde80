//! Where records land: SQLite (default), PostgreSQL, or an append-only JSONL file.
//!
//! Both databases go through sqlx's `Any` driver with SQL that both dialects accept, so there
//! is one code path and one set of queries; each store kind has its own migrations. The one
//! exception is inserting records into SQLite, which has a native path of its own (`sqlite`).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, AssertSqlSafe, Row, SqlSafeStr};
use tokio::io::AsyncWriteExt;

use crate::Error;
use crate::chain::{ChainedRecord, Checkpoint, CheckpointKind};
use crate::record::AuditRecord;

mod sqlite;

// Rows per INSERT statement on PostgreSQL: far below its parameter limit (17 × 100 = 1,700)
// and enough to amortize a network round trip.
const ROWS_PER_INSERT: usize = 100;
const COLUMNS: &str = "chain, seq, id, time_ms, request_id, principal, end_user, action, resource, \
                       decision, bypass, grant_id, mode, policies, body, prev_hash, hash";

/// A place records are written to.
#[derive(Debug, Clone)]
pub enum Store {
    /// SQLite or PostgreSQL, queryable and verifiable.
    Db(Db),
    /// An append-only JSONL file (write-only; `ward audit verify --jsonl` reads it back).
    Jsonl(PathBuf),
    /// Standard output, one JSON line per record.
    Stdout,
}

/// A SQL store (SQLite or PostgreSQL).
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    kind: DbKind,
    // SQLite only: the native connection records are inserted through (see `sqlite`).
    sqlite_writes: Option<Arc<sqlite::Writes>>,
}

/// Which database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    /// SQLite (WAL mode).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// A record as stored, with the indexed columns to compare against its body.
#[derive(Debug, Clone)]
pub struct StoredRow {
    /// The chained record.
    pub record: ChainedRecord,
    /// Columns that copy fields of the body: (name, value).
    pub columns: Vec<(&'static str, String)>,
}

// === impl Store ===

impl Store {
    /// Opens `url`: `sqlite://PATH` (created if missing), `postgres://…`, `jsonl://PATH` or
    /// `stdout`. Databases are migrated.
    pub async fn open(url: &str) -> Result<Self, Error> {
        if url == "stdout" {
            return Ok(Self::Stdout);
        }
        if let Some(path) = url.strip_prefix("jsonl://") {
            return Ok(Self::Jsonl(PathBuf::from(path)));
        }
        Ok(Self::Db(Db::open(url).await?))
    }

    /// Writes a batch in one transaction; records already present are skipped, so a batch
    /// replayed after an ambiguous failure is written exactly once.
    pub async fn insert(&self, records: &[ChainedRecord]) -> Result<(), Error> {
        self.insert_with(records, None).await
    }

    /// Like [`Store::insert`], with the records already parsed (`parsed[i]` is the body of
    /// `records[i]`), which saves the database path a JSON parse per record and lets it move
    /// their strings into the statement instead of copying them.
    pub(crate) async fn insert_with(
        &self,
        records: &[ChainedRecord],
        parsed: Option<Vec<AuditRecord>>,
    ) -> Result<(), Error> {
        match self {
            Self::Db(db) => {
                db.insert(records, parsed.filter(|p| p.len() == records.len()))
                    .await
            }
            Self::Jsonl(path) => append_jsonl(path, records).await,
            Self::Stdout => {
                let mut out = String::new();
                for r in records {
                    out.push_str(
                        &r.export_json()
                            .map_err(|e| Error::Corrupt(e.to_string()))?
                            .to_string(),
                    );
                    out.push('\n');
                }
                let mut stdout = tokio::io::stdout();
                stdout
                    .write_all(out.as_bytes())
                    .await
                    .map_err(|source| Error::Io {
                        path: PathBuf::from("<stdout>"),
                        source,
                    })?;
                stdout.flush().await.map_err(|source| Error::Io {
                    path: PathBuf::from("<stdout>"),
                    source,
                })
            }
        }
    }

    /// Stores a checkpoint (JSONL and stdout stores keep none).
    pub async fn insert_checkpoint(&self, cp: &Checkpoint) -> Result<(), Error> {
        match self {
            Self::Db(db) => db.insert_checkpoint(cp).await,
            Self::Jsonl(_) | Self::Stdout => Ok(()),
        }
    }

    /// The last sequence number and hash of `chain`, to continue it after a restart.
    pub async fn head(&self, chain: &str) -> Result<Option<(i64, String)>, Error> {
        match self {
            Self::Db(db) => db.head(chain).await,
            Self::Jsonl(path) => jsonl_head(path, chain).await,
            Self::Stdout => Ok(None),
        }
    }

    /// Closes SQLite's connection for inserting records, so that the next insert opens one
    /// whose thread has the inserting thread's scheduling class (other stores have none).
    pub async fn reconnect_writes(&self) {
        if let Self::Db(Db {
            sqlite_writes: Some(writes),
            ..
        }) = self
        {
            writes.reconnect().await;
        }
    }

    /// The database, for queries.
    pub fn db(&self) -> Option<&Db> {
        match self {
            Self::Db(db) => Some(db),
            _ => None,
        }
    }
}

// === impl Db ===

impl Db {
    /// Connects to `url` (`sqlite://…` or `postgres://…`) and runs migrations.
    pub async fn open(url: &str) -> Result<Self, Error> {
        sqlx::any::install_default_drivers();
        let mut sqlite_writes = None;
        let (kind, options) = if let Some(path) = url.strip_prefix("sqlite://") {
            if let Some(dir) = Path::new(path)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
            {
                std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                    path: dir.to_owned(),
                    source,
                })?;
            }
            let url = format!("sqlite://{}?mode=rwc", url_path(path));
            // An in-memory database is private to its connection: a second pool would write
            // into a database of its own, so such a store keeps writing through `Any`.
            if path != ":memory:" {
                sqlite_writes = Some(Arc::new(sqlite::Writes::new(&url)?));
            }
            (DbKind::Sqlite, AnyConnectOptions::from_str(&url)?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (DbKind::Postgres, AnyConnectOptions::from_str(url)?)
        } else {
            return Err(Error::Invalid(format!(
                "unsupported audit store `{}`: use sqlite://PATH, postgres://…, jsonl://PATH or stdout",
                redact(url)
            )));
        };
        let max = if kind == DbKind::Sqlite { 1 } else { 4 };
        let pool = AnyPoolOptions::new()
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if kind == DbKind::Sqlite {
                        for (name, value) in sqlite::PRAGMAS {
                            let pragma = format!("PRAGMA {name} = {value}");
                            sqlx::Executor::execute(&mut *conn, AssertSqlSafe(pragma)).await?;
                        }
                    }
                    Ok(())
                })
            })
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        Migrator::with_migrations(migrations(kind))
            .run(&pool)
            .await?;
        let db = Self {
            pool,
            kind,
            sqlite_writes,
        };
        for index in db.invalid_indexes().await? {
            tracing::warn!(
                %index,
                "the audit store's index is invalid (an index build was interrupted): queries \
                 cannot use it until `DROP INDEX CONCURRENTLY {index};` and a restart rebuild it"
            );
        }
        Ok(db)
    }

    /// PostgreSQL indexes on the audit tables that an interrupted `CREATE INDEX CONCURRENTLY`
    /// left invalid (SQLite builds its indexes in a transaction and never has any).
    pub(crate) async fn invalid_indexes(&self) -> Result<Vec<String>, Error> {
        if self.kind != DbKind::Postgres {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_scalar(
            "SELECT i.relname::text FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid \
             JOIN pg_class t ON t.oid = x.indrelid \
             WHERE t.relnamespace = current_schema()::regnamespace \
             AND t.relname IN ('audit_records', 'audit_checkpoints') AND NOT x.indisvalid \
             ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Which database this is.
    pub fn kind(&self) -> DbKind {
        self.kind
    }

    /// The pool, for queries in this crate.
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The pool, for tests that tamper with the store.
    #[cfg(test)]
    pub(crate) fn pool_for_tests(&self) -> &AnyPool {
        &self.pool
    }

    async fn insert(
        &self,
        records: &[ChainedRecord],
        parsed: Option<Vec<AuditRecord>>,
    ) -> Result<(), Error> {
        let parsed = match parsed {
            Some(p) => p,
            None => records
                .iter()
                .map(ChainedRecord::record)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Error::Corrupt(e.to_string()))?,
        };
        if let Some(writes) = &self.sqlite_writes {
            return writes.insert(records, parsed).await;
        }
        let mut tx = self.pool.begin().await?;
        let mut parsed = parsed.into_iter();
        for chunk in records.chunks(ROWS_PER_INSERT) {
            let mut query = sqlx::query(AssertSqlSafe(insert_sql(chunk.len())));
            for (r, rec) in chunk.iter().zip(parsed.by_ref()) {
                let row = Columns::new(r, rec);
                query = query
                    .bind(row.chain.to_owned())
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
                    .bind(row.body.to_owned())
                    .bind(row.prev_hash.to_owned())
                    .bind(row.hash.to_owned());
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn insert_checkpoint(&self, cp: &Checkpoint) -> Result<(), Error> {
        checkpoint_insert(cp).execute(&self.pool).await?;
        Ok(())
    }

    /// The last record's seq and hash; after a prune that removed everything, the prune
    /// checkpoint's.
    pub async fn head(&self, chain: &str) -> Result<Option<(i64, String)>, Error> {
        let row = sqlx::query(
            "SELECT seq, hash FROM audit_records WHERE chain = $1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(chain.to_owned())
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = row {
            return Ok(Some((row.try_get(0)?, row.try_get(1)?)));
        }
        let cp = sqlx::query(
            "SELECT seq, hash FROM audit_checkpoints WHERE chain = $1 AND kind = 'prune' \
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(chain.to_owned())
        .fetch_optional(&self.pool)
        .await?;
        Ok(match cp {
            Some(row) => Some((row.try_get(0)?, row.try_get(1)?)),
            None => None,
        })
    }

    /// Every chain in the store.
    pub async fn chains(&self) -> Result<Vec<String>, Error> {
        let rows = sqlx::query(
            "SELECT chain FROM audit_records UNION SELECT chain FROM audit_checkpoints ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(Error::from))
            .collect()
    }

    /// Up to `limit` records of `chain` with seq greater than `after`, in seq order.
    pub async fn page(&self, chain: &str, after: i64, limit: i64) -> Result<Vec<StoredRow>, Error> {
        let rows = sqlx::query(
            "SELECT chain, seq, prev_hash, hash, body, time_ms, principal, decision, action, \
             resource, bypass, request_id FROM audit_records \
             WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(chain.to_owned())
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let bypass: i64 = row.try_get(10)?;
                Ok(StoredRow {
                    record: ChainedRecord {
                        chain: row.try_get(0)?,
                        seq: row.try_get(1)?,
                        prev_hash: row.try_get(2)?,
                        hash: row.try_get(3)?,
                        body: row.try_get(4)?,
                    },
                    columns: vec![
                        ("time", row.try_get::<i64, _>(5)?.to_string()),
                        ("principal", row.try_get(6)?),
                        ("decision", row.try_get(7)?),
                        ("action", row.try_get(8)?),
                        ("resource", row.try_get(9)?),
                        ("bypass", (bypass != 0).to_string()),
                        ("request_id", row.try_get(11)?),
                    ],
                })
            })
            .collect()
    }

    /// Every checkpoint of `chain`, by seq.
    pub async fn checkpoints(&self, chain: &str) -> Result<Vec<Checkpoint>, Error> {
        let rows = sqlx::query(
            "SELECT chain, seq, hash, time_ms, kind, key_id, signature FROM audit_checkpoints \
             WHERE chain = $1 ORDER BY seq",
        )
        .bind(chain.to_owned())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let kind: String = row.try_get(4)?;
                Ok(Checkpoint {
                    chain: row.try_get(0)?,
                    seq: row.try_get(1)?,
                    hash: row.try_get(2)?,
                    time_ms: row.try_get(3)?,
                    kind: if kind == "prune" {
                        CheckpointKind::Prune
                    } else {
                        CheckpointKind::Periodic
                    },
                    key_id: row.try_get(5)?,
                    signature: row.try_get(6)?,
                })
            })
            .collect()
    }
}

/// `INSERT … VALUES ($1…$17), … ON CONFLICT DO NOTHING` for `rows` rows; the full-size
/// statement is built once.
fn insert_sql(rows: usize) -> String {
    static FULL: std::sync::OnceLock<String> = std::sync::OnceLock::new();

    let build = |rows: usize| {
        let mut sql = format!("INSERT INTO audit_records ({COLUMNS}) VALUES ");
        for i in 0..rows {
            let base = i * 17;
            let params: Vec<String> = (1..=17).map(|n| format!("${}", base + n)).collect();
            if i > 0 {
                sql.push(',');
            }
            sql.push('(');
            sql.push_str(&params.join(","));
            sql.push(')');
        }
        sql.push_str(" ON CONFLICT (chain, seq) DO NOTHING");
        sql
    };
    if rows == ROWS_PER_INSERT {
        FULL.get_or_init(|| build(rows)).clone()
    } else {
        build(rows)
    }
}

/// The columns of one row, as bound: the chain's strings borrowed (a batch that fails is
/// spooled from them), the parsed record's moved into the statement (binding a borrowed
/// string makes sqlx copy it).
struct Columns<'a> {
    chain: &'a str,
    seq: i64,
    id: String,
    time_ms: i64,
    request_id: String,
    principal: String,
    end_user: Option<String>,
    action: String,
    resource: String,
    decision: &'static str,
    bypass: i64,
    grant_id: Option<String>,
    mode: &'static str,
    policies: String,
    body: &'a str,
    prev_hash: &'a str,
    hash: &'a str,
}

// === impl Columns ===

impl<'a> Columns<'a> {
    fn new(r: &'a ChainedRecord, rec: AuditRecord) -> Self {
        Self {
            chain: &r.chain,
            seq: r.seq,
            policies: policies_column(&rec.policies),
            id: rec.id,
            time_ms: rec.time_ms,
            request_id: rec.request_id,
            principal: rec.principal,
            end_user: rec.end_user,
            action: rec.action,
            resource: rec.resource,
            decision: rec.decision.as_str(),
            bypass: i64::from(rec.bypass),
            grant_id: rec.grant_id,
            mode: rec.mode.as_str(),
            body: &r.body,
            prev_hash: &r.prev_hash,
            hash: &r.hash,
        }
    }
}

/// The store's migrations, embedded at build time, oldest first.
pub(crate) fn migrations(kind: DbKind) -> Vec<Migration> {
    // (file, name, whether it runs outside a transaction: PostgreSQL builds and drops indexes
    // CONCURRENTLY only there)
    let files: &[(&'static str, &'static str, bool)] = match kind {
        DbKind::Sqlite => &[
            (
                include_str!("../migrations/sqlite/0001_audit.sql"),
                "audit records and checkpoints",
                false,
            ),
            (
                include_str!("../migrations/sqlite/0002_deny_index.sql"),
                "an index of the denies only",
                false,
            ),
        ],
        DbKind::Postgres => &[
            (
                include_str!("../migrations/postgres/0001_audit.sql"),
                "audit records and checkpoints",
                false,
            ),
            (
                include_str!("../migrations/postgres/0002_deny_index.sql"),
                "an index of the denies only",
                true,
            ),
            (
                include_str!("../migrations/postgres/0003_no_decision_index.sql"),
                "no index of every record by decision",
                true,
            ),
        ],
    };
    (1..)
        .zip(files)
        .map(|(version, &(sql, name, no_tx))| {
            Migration::new(
                version,
                name.into(),
                MigrationType::Simple,
                sql.into_sql_str(),
                no_tx,
            )
        })
        .collect()
}

/// `,a,b,` so that `LIKE '%,a,%'` finds a policy id exactly.
fn policies_column(policies: &[String]) -> String {
    let mut column = String::with_capacity(1 + policies.iter().map(|p| p.len() + 1).sum::<usize>());
    column.push(',');
    for policy in policies {
        column.push_str(policy);
        column.push(',');
    }
    // No policies: `,,` as before, which `LIKE '%,id,%'` never matches.
    if policies.is_empty() {
        column.push(',');
    }
    column
}

/// The INSERT that stores `cp` (once: a repeat is ignored), to run on a pool or in a
/// transaction.
pub(crate) fn checkpoint_insert(
    cp: &Checkpoint,
) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query(
        "INSERT INTO audit_checkpoints (chain, seq, hash, time_ms, kind, key_id, signature) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (chain, seq, kind) DO NOTHING",
    )
    .bind(cp.chain.clone())
    .bind(cp.seq)
    .bind(cp.hash.clone())
    .bind(cp.time_ms)
    .bind(kind_str(cp.kind))
    .bind(cp.key_id.clone())
    .bind(cp.signature.clone())
}

fn kind_str(kind: CheckpointKind) -> &'static str {
    match kind {
        CheckpointKind::Periodic => "periodic",
        CheckpointKind::Prune => "prune",
    }
}

async fn append_jsonl(path: &Path, records: &[ChainedRecord]) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let mut out = String::new();
    for r in records {
        out.push_str(&serde_json::to_string(r).map_err(|e| Error::Corrupt(e.to_string()))?);
        out.push('\n');
    }
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(io)?;
    file.write_all(out.as_bytes()).await.map_err(io)?;
    file.sync_data().await.map_err(io)
}

async fn jsonl_head(path: &Path, chain: &str) -> Result<Option<(i64, String)>, Error> {
    let text = match tokio::fs::read_to_string(path).await {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut head = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let r: ChainedRecord =
            serde_json::from_str(line).map_err(|e| Error::Corrupt(e.to_string()))?;
        if r.chain == chain {
            head = Some((r.seq, r.hash));
        }
    }
    Ok(head)
}

/// A store URL with any password removed, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}://{user}:***@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// `path` as the path of a `sqlite://` URL: the path is taken as written, and sqlx parses the
/// URL (the `Any` driver as a URL, where a space or `:` in the first segment is an error, and
/// SQLite's own options percent-decoding it), so every byte but unreserved ones and `/` is
/// percent-encoded.
fn url_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for byte in path.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sqlite_path_is_percent_encoded_for_the_url() {
        assert_eq!(url_path("ward-data/audit.db"), "ward-data/audit.db");
        assert_eq!(
            url_path("my data/a:b#c?d%e/ü.db"),
            "my%20data/a%3Ab%23c%3Fd%25e/%C3%BC.db"
        );
    }

    #[test]
    fn a_relative_sqlite_path_with_a_space_makes_a_url_sqlx_reads_back() {
        sqlx::any::install_default_drivers();
        // `ward up` with `data_dir: "my data"`: the first segment parses as the URL's host.
        let raw = "my data:1/audit.db";
        assert!(AnyConnectOptions::from_str(&format!("sqlite://{raw}?mode=rwc")).is_err());
        let url = format!("sqlite://{}?mode=rwc", url_path(raw));
        AnyConnectOptions::from_str(&url).unwrap();
        let options = sqlx::sqlite::SqliteConnectOptions::from_str(&url).unwrap();
        assert_eq!(options.get_filename(), Path::new(raw));
    }

    #[test]
    fn the_policies_column_brackets_every_id_with_commas() {
        let ids = |ids: &[&str]| ids.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(policies_column(&[]), ",,");
        assert_eq!(policies_column(&ids(&["a"])), ",a,");
        assert_eq!(
            policies_column(&ids(&["allow-a", "deny-b"])),
            ",allow-a,deny-b,"
        );
    }
}
