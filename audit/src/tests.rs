//! The writer, the chain and verify against real SQLite files and the real PostgreSQL server
//! this machine kind runs at 127.0.0.1:5432 (each test in its own schema).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::Row;
use sqlx::migrate::Migrator;

use crate::chain::ChainedRecord;
use crate::key::AuditKey;
use crate::query::{self, Filter};
use crate::record::{AuditRecord, Decision};
use crate::store::{self, Db, DbKind, Store};
use crate::verify::{self, ChainReport, Finding};
use crate::writer::{Auditor, Config};

const PG_BASE: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A PostgreSQL schema of its own for one test; dropped when the test ends.
struct PgSchema {
    name: String,
}

impl PgSchema {
    async fn new() -> Self {
        let name = format!("audit_test_{}", &crate::record::random_id()[..12]);
        let db = raw_pg().await;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&db)
            .await
            .expect("PostgreSQL at 127.0.0.1:5432 (database `test`, user `postgres`) is required");
        Self { name }
    }

    /// The URL of this schema; `application_name` lets a test kill only its own connections.
    fn url(&self) -> String {
        format!(
            "{PG_BASE}?options=-c%20search_path%3D{0}%20-c%20application_name%3D{0}",
            self.name
        )
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Best effort, on a thread of its own: Drop cannot await.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    let db = raw_pg().await;
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {name} CASCADE")))
                        .execute(&db)
                        .await;
                });
            }
        })
        .join();
    }
}

async fn raw_pg() -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(PG_BASE)
        .await
        .expect("PostgreSQL at 127.0.0.1:5432 (database `test`, user `postgres`) is required")
}

fn record(i: usize) -> AuditRecord {
    let mut r = AuditRecord::new("node-a", &format!("req-{i}"));
    r.principal = format!("spiffe://ward.local/ns/shop/sa/svc-{}", i % 3);
    r.action = if i.is_multiple_of(2) { "GET" } else { "POST" }.into();
    r.resource = "orders-api".into();
    r.decision = if i.is_multiple_of(4) {
        Decision::Deny
    } else {
        Decision::Allow
    };
    r.policies = vec![format!("policy-{}", i % 5)];
    r.policy_revision = "rev1".into();
    r.bypass = i % 10 == 9;
    r.grant_id = r.bypass.then(|| "grant-1".to_owned());
    r
}

fn config(dir: &tempfile::TempDir) -> Config {
    let mut cfg = Config::new("node-a", dir.path().join("spool"));
    cfg.flush_interval = Duration::from_millis(10);
    cfg.retry_interval = Duration::from_millis(50);
    cfg.checkpoint_every = 50;
    cfg
}

fn key(dir: &tempfile::TempDir) -> Arc<AuditKey> {
    Arc::new(AuditKey::load_or_create(&dir.path().join("audit.key")).unwrap())
}

/// The URL of the SQLite store `audit.db` in `dir`.
fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("audit.db").display())
}

async fn sqlite(dir: &tempfile::TempDir) -> (Store, String) {
    let url = sqlite_url(dir);
    (Store::open(&url).await.unwrap(), url)
}

/// A SQLite store in `dir` and a writer without a key, its settings `config(dir)` changed by
/// `tweak`.
async fn sqlite_writer(
    dir: &tempfile::TempDir,
    tweak: impl FnOnce(&mut Config),
) -> (Store, Auditor, tokio::task::JoinHandle<()>) {
    let (store, _) = sqlite(dir).await;
    let mut cfg = config(dir);
    tweak(&mut cfg);
    let (auditor, task) = Auditor::spawn(store.clone(), None, cfg).await.unwrap();
    (store, auditor, task)
}

/// Flushes until the spool is empty (the store may need a moment to come back).
async fn drain(auditor: &Auditor) {
    tokio::time::timeout(Duration::from_secs(30), async {
        while !auditor.flush().await.unwrap() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the spool drains once the store is back");
}

async fn all(db: &Db) -> Vec<ChainedRecord> {
    let mut v = query::query(db, &Filter::default()).await.unwrap();
    v.sort_by_key(|r| r.seq);
    v
}

async fn report(db: &Db, key: &AuditKey) -> ChainReport {
    let mut reports = verify::verify_db(db, &key.public()).await.unwrap();
    assert_eq!(reports.len(), 1);
    reports.remove(0)
}

fn assert_exactly_once_in_order(records: &[ChainedRecord], n: usize) {
    assert_eq!(records.len(), n);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.seq, i as i64 + 1);
        assert_eq!(r.record().unwrap().request_id, format!("req-{i}"));
    }
}

async fn write_and_verify(store: Store, dir: &tempfile::TempDir) {
    let key = key(dir);
    let (auditor, task) = Auditor::spawn(store.clone(), Some(key.clone()), config(dir))
        .await
        .unwrap();
    for i in 0..500 {
        auditor.record(record(i)).unwrap();
    }
    drain(&auditor).await;
    let db = store.db().unwrap();
    assert_exactly_once_in_order(&all(db).await, 500);
    let rep = report(db, &key).await;
    assert!(rep.findings.is_empty(), "{:?}", rep.findings);
    assert!(rep.checkpoints >= 1);
    assert_eq!(auditor.metrics().written.load(Ordering::Relaxed), 500);
    drop(auditor);
    task.await.unwrap();

    // A restart continues the same chain.
    let (auditor, task) = Auditor::spawn(store.clone(), Some(key.clone()), config(dir))
        .await
        .unwrap();
    auditor.record(record(500)).unwrap();
    drain(&auditor).await;
    assert_exactly_once_in_order(&all(db).await, 501);
    assert!(report(db, &key).await.findings.is_empty());
    drop(auditor);
    task.await.unwrap();
}

#[tokio::test]
async fn sqlite_round_trip_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = sqlite(&dir).await;
    let pool = store.db().unwrap().pool_for_tests();
    // Set before the database's first page was written, or they would not have taken.
    let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(page_size, 16_384);
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(journal, "wal");
    write_and_verify(store, &dir).await;
}

#[tokio::test]
async fn postgres_round_trip_and_verify() {
    let schema = PgSchema::new().await;
    let dir = tempfile::tempdir().unwrap();
    write_and_verify(Store::open(&schema.url()).await.unwrap(), &dir).await;
}

/// The names of the indexes on `audit_records` (the primary key's aside), sorted.
async fn record_indexes(pool: &sqlx::AnyPool, kind: DbKind) -> Vec<String> {
    let sql = match kind {
        DbKind::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'audit_records' \
             AND sql IS NOT NULL ORDER BY name"
        }
        DbKind::Postgres => {
            "SELECT indexname::text FROM pg_indexes WHERE schemaname = current_schema() \
             AND tablename = 'audit_records' AND indexname <> 'audit_records_pkey' ORDER BY 1"
        }
    };
    sqlx::query_scalar(sql).fetch_all(pool).await.unwrap()
}

/// A store made before migration 2 gets the denies' partial index in place of the
/// (decision, time) one when it is opened, and the records it held are found as before.
async fn an_older_store_gets_the_deny_index(url: &str, kind: DbKind) {
    sqlx::any::install_default_drivers();
    let old = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&match kind {
            DbKind::Sqlite => format!("{url}?mode=rwc"),
            DbKind::Postgres => url.to_owned(),
        })
        .await
        .unwrap();
    Migrator::with_migrations(store::migrations(kind).into_iter().take(1).collect())
        .run(&old)
        .await
        .unwrap();
    let before = record_indexes(&old, kind).await;
    assert!(
        before.contains(&"audit_records_decision".to_owned()),
        "{before:?}"
    );
    sqlx::query(
        "INSERT INTO audit_records (chain, seq, id, time_ms, request_id, principal, action, \
         resource, decision, bypass, mode, policies, body, prev_hash, hash) VALUES ('c', 1, 'i', \
         1000, 'r', 'p', 'a', 'res', 'deny', 0, 'enforce', ',,', '{}', '0', 'h')",
    )
    .execute(&old)
    .await
    .unwrap();
    old.close().await;

    let store = Store::open(url).await.unwrap();
    let db = store.db().unwrap();
    let after = record_indexes(db.pool_for_tests(), kind).await;
    assert!(
        after.contains(&"audit_records_deny".to_owned()),
        "{after:?}"
    );
    assert!(
        !after.contains(&"audit_records_decision".to_owned()),
        "{after:?}"
    );
    let denies = Filter {
        decision: Some("deny".into()),
        since_ms: Some(0),
        ..Filter::default()
    };
    let found = query::query(db, &denies).await.unwrap();
    assert_eq!(found.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1]);
    let allows = Filter {
        decision: Some("allow".into()),
        ..Filter::default()
    };
    assert!(query::query(db, &allows).await.unwrap().is_empty());
    if kind == DbKind::Sqlite {
        let (sql, binds) = query::select(&denies);
        let plan: Vec<String> = query::bind_all(
            sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}"))),
            binds,
        )
        .fetch_all(db.pool_for_tests())
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<String, _>(3))
        .collect();
        assert!(
            plan.iter().any(|step| step.contains("audit_records_deny")),
            "{plan:?}"
        );
    }
}

#[tokio::test]
async fn sqlite_older_store_gets_the_deny_index() {
    let dir = tempfile::tempdir().unwrap();
    an_older_store_gets_the_deny_index(&sqlite_url(&dir), DbKind::Sqlite).await;
}

#[tokio::test]
async fn postgres_older_store_gets_the_deny_index() {
    let schema = PgSchema::new().await;
    an_older_store_gets_the_deny_index(&schema.url(), DbKind::Postgres).await;
    let db = Db::open(&schema.url()).await.unwrap();
    assert!(db.invalid_indexes().await.unwrap().is_empty());
    // What an interrupted CREATE INDEX CONCURRENTLY leaves (the test user is a superuser).
    sqlx::query(
        "UPDATE pg_index SET indisvalid = false WHERE indexrelid = \
         (SELECT oid FROM pg_class WHERE relname = 'audit_records_deny' \
          AND relnamespace = current_schema()::regnamespace)",
    )
    .execute(db.pool_for_tests())
    .await
    .unwrap();
    assert_eq!(
        db.invalid_indexes().await.unwrap(),
        vec!["audit_records_deny".to_owned()]
    );
}

/// A batch replayed after an ambiguous failure, partly or wholly stored already, lands once.
async fn replayed_batches_land_once(store: Store) {
    let mut chain = crate::chain::Chain::resume("node-a", None);
    // Statements of 64, 32, 16 and 8 rows, then of 128, 64, 32, 16, 8 and 2 on SQLite; three
    // statements on PostgreSQL.
    let batch: Vec<_> = (0..250)
        .map(|i| {
            let mut r = record(i);
            r.end_user = i.is_multiple_of(7).then(|| format!("user-{i}"));
            chain.append(&r).unwrap()
        })
        .collect();
    store.insert(&batch[..120]).await.unwrap();
    store.insert(&batch).await.unwrap();
    store.insert(&batch).await.unwrap();
    let db = store.db().unwrap();
    let stored = all(db).await;
    assert_exactly_once_in_order(&stored, 250);
    assert_eq!(stored, batch);
    // The columns verify does not compare with the body.
    let rows = sqlx::query(
        "SELECT id, end_user, grant_id, mode, policies FROM audit_records ORDER BY seq",
    )
    .fetch_all(db.pool_for_tests())
    .await
    .unwrap();
    for (row, r) in rows.iter().zip(&batch) {
        let rec = r.record().unwrap();
        assert_eq!(row.get::<String, _>(0), rec.id);
        assert_eq!(row.get::<Option<String>, _>(1), rec.end_user);
        assert_eq!(row.get::<Option<String>, _>(2), rec.grant_id);
        assert_eq!(row.get::<String, _>(3), rec.mode.as_str());
        assert_eq!(
            row.get::<String, _>(4),
            format!(",{},", rec.policies.join(","))
        );
    }
}

#[tokio::test]
async fn sqlite_replayed_batches_land_once() {
    let dir = tempfile::tempdir().unwrap();
    replayed_batches_land_once(sqlite(&dir).await.0).await;
}

#[tokio::test]
async fn postgres_replayed_batches_land_once() {
    let schema = PgSchema::new().await;
    replayed_batches_land_once(Store::open(&schema.url()).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_killed_mid_run_lose_nothing() {
    let schema = PgSchema::new().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&schema.url()).await.unwrap();
    let key = key(&dir);
    let (auditor, _task) = Auditor::spawn(store.clone(), Some(key.clone()), config(&dir))
        .await
        .unwrap();
    let killer = raw_pg().await;
    let table = format!("{}.audit_records", schema.name);
    for i in 0..2_000 {
        auditor.record(record(i)).unwrap();
        if i % 400 == 200 && !(1_001..=1_500).contains(&i) {
            // Make sure the writer holds connections right now, then cut them.
            drain(&auditor).await;
            let killed = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{}'",
                schema.name
            )))
            .fetch_all(&killer)
            .await
            .unwrap();
            assert!(
                !killed.is_empty(),
                "the writer's connections were found and killed"
            );
        }
        if i == 1_000 {
            // The store refuses writes for a while (the table is gone) while records keep coming.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER TABLE {table} RENAME TO audit_records_away"
            )))
            .execute(&killer)
            .await
            .unwrap();
        }
        if i == 1_500 {
            tokio::time::timeout(Duration::from_secs(10), async {
                while auditor.metrics().spooled.load(Ordering::Relaxed) == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .expect("records were spooled while the store refused writes");
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER TABLE {}.audit_records_away RENAME TO audit_records",
                schema.name
            )))
            .execute(&killer)
            .await
            .unwrap();
        }
    }
    drain(&auditor).await;
    let db = store.db().unwrap();
    assert_exactly_once_in_order(&all(db).await, 2_000);
    let rep = report(db, &key).await;
    assert!(rep.findings.is_empty(), "{:?}", rep.findings);
    let m = auditor.metrics();
    assert_eq!(m.dropped.load(Ordering::Relaxed), 0);
    assert!(m.replayed.load(Ordering::Relaxed) > 0);
    assert_eq!(
        m.written.load(Ordering::Relaxed) + m.spooled.load(Ordering::Relaxed),
        2_000,
        "every record was either written or spooled"
    );
}

#[tokio::test]
async fn sqlite_locked_by_another_writer_spools_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let (store, url) = sqlite(&dir).await;
    let key = key(&dir);
    let (auditor, _task) = Auditor::spawn(store.clone(), Some(key.clone()), config(&dir))
        .await
        .unwrap();
    for i in 0..100 {
        auditor.record(record(i)).unwrap();
    }
    drain(&auditor).await;
    // Another process takes an exclusive lock: writes now fail with "database is locked".
    let locker = Db::open(&url).await.unwrap();
    let mut conn = locker.pool_for_tests().acquire().await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut *conn)
        .await
        .unwrap();
    for i in 100..300 {
        auditor.record(record(i)).unwrap();
    }
    let spooled = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if auditor.metrics().spooled.load(Ordering::Relaxed) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        spooled.is_ok(),
        "records were spooled while the database was locked"
    );
    sqlx::query("COMMIT").execute(&mut *conn).await.unwrap();
    drop(conn);
    drain(&auditor).await;
    let db = store.db().unwrap();
    assert_exactly_once_in_order(&all(db).await, 300);
    assert!(report(db, &key).await.findings.is_empty());
    assert!(auditor.metrics().replayed.load(Ordering::Relaxed) > 0);
}

#[tokio::test]
async fn records_arriving_one_by_one_are_committed_together() {
    let dir = tempfile::tempdir().unwrap();
    let (store, auditor, _task) =
        sqlite_writer(&dir, |cfg| cfg.flush_interval = Duration::from_secs(5)).await;
    for i in 0..20 {
        auditor.record(record(i)).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let batches = &auditor.metrics().batches;
    assert_eq!(
        batches.load(Ordering::Relaxed),
        0,
        "nothing is committed before the batch fills or its first record waited flush_interval"
    );
    drain(&auditor).await;
    assert_eq!(
        batches.load(Ordering::Relaxed),
        1,
        "one transaction for all 20"
    );
    assert_eq!(all(store.db().unwrap()).await.len(), 20);

    // A strict caller does not wait for the batch to fill.
    let start = std::time::Instant::now();
    auditor.record_durable(record(20)).await.unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(batches.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_full_batch_is_committed_before_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, auditor, _task) = sqlite_writer(&dir, |cfg| {
        cfg.flush_interval = Duration::from_secs(30);
        cfg.batch_size = 10;
    })
    .await;
    // The writer sleeps through the group-commit wait; the tenth record must wake it.
    for i in 0..9 {
        auditor.record(record(i)).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let written = &auditor.metrics().written;
    assert_eq!(written.load(Ordering::Relaxed), 0, "9 of 10 wait for more");
    auditor.record(record(9)).unwrap();
    let start = std::time::Instant::now();
    while written.load(Ordering::Relaxed) < 10 && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(written.load(Ordering::Relaxed), 10);
    assert_eq!(auditor.metrics().batches.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn the_writer_stops_when_the_last_handle_goes_without_waiting_out_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (store, auditor, task) =
        sqlite_writer(&dir, |cfg| cfg.flush_interval = Duration::from_secs(60)).await;
    let second = auditor.clone();
    for i in 0..3 {
        auditor.record(record(i)).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(auditor);
    second.record(record(3)).unwrap();
    drop(second);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the writer stops long before its 60 s batch deadline")
        .unwrap();
    assert_exactly_once_in_order(&all(store.db().unwrap()).await, 4);
}

/// (policy, nice) of this process's threads named `name`, from
/// /proc/self/task/TID/stat: after the parenthesized name, field 19 is the nice value and
/// field 41 the scheduling policy.
fn threads_named(name: &str) -> Vec<(u32, i32)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("stat")),
        ) else {
            continue; // the thread has just ended
        };
        if comm.trim() == name {
            let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
            found.push((fields[38].parse().unwrap(), fields[16].parse().unwrap()));
        }
    }
    found
}

/// Batches of 8 and a writer that moves out of SCHED_IDLE only when 256 records wait (four
/// times `catch_up_at`) or after 30 s behind.
fn small_batches_slow_to_fall_behind(cfg: &mut Config) {
    cfg.batch_size = 8;
    cfg.catch_up_at = 64;
    cfg.behind_for = Duration::from_secs(30);
}

const SCHED_OTHER: u32 = 0;
const SCHED_IDLE: u32 = 5;

#[tokio::test]
async fn the_writer_runs_on_its_own_lower_priority_thread() {
    let dir = tempfile::tempdir().unwrap();
    let (store, auditor, task) = sqlite_writer(&dir, |_| {}).await;
    auditor.record(record(0)).unwrap();
    drain(&auditor).await;
    // Other tests in this process run writers of their own. The thread that starts the
    // writer's threads runs at the writer's nice value, the writer and SQLite's thread that
    // inserted the record in SCHED_IDLE (the query pool's thread does not).
    let starters = threads_named("ward-audit");
    assert!(!starters.is_empty());
    assert!(
        starters
            .iter()
            .all(|t| *t == (SCHED_OTHER, crate::writer::WRITER_NICE)),
        "{starters:?}"
    );
    let writers = threads_named("ward-audit-idle");
    assert!(!writers.is_empty());
    assert!(writers.iter().all(|t| t.0 == SCHED_IDLE), "{writers:?}");
    let sqlite = threads_named("sqlx-sqlite-wor");
    assert!(sqlite.iter().any(|t| t.0 == SCHED_IDLE), "{sqlite:?}");
    drop(auditor);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the writer stops once every handle is gone")
        .unwrap();
    assert_eq!(all(store.db().unwrap()).await.len(), 1);
}

#[tokio::test]
async fn records_piling_up_take_the_writer_out_of_sched_idle_until_they_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let (store, auditor, _task) = sqlite_writer(&dir, |cfg| {
        small_batches_slow_to_fall_behind(cfg);
        cfg.calm_for = Duration::from_millis(500);
    })
    .await;
    // The writer and SQLite's thread at the writer's nice value: no other test's writer
    // piles records up.
    let nice = (SCHED_OTHER, crate::writer::WRITER_NICE);
    let at_writers_priority = || {
        threads_named("ward-audit-nice").contains(&nice)
            && threads_named("sqlx-sqlite-wor").contains(&nice)
    };
    for i in 0..5_000 {
        auditor.record(record(i)).unwrap();
    }
    drain(&auditor).await;
    assert_eq!(auditor.metrics().catch_ups.load(Ordering::Relaxed), 1);
    // The flush may be answered by the commit after which the writer moves.
    tokio::time::timeout(Duration::from_secs(10), async {
        while !at_writers_priority() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the writer and SQLite's thread leave SCHED_IDLE");
    // Once the queue has stayed short for `calm_for`, both move to threads in SCHED_IDLE
    // again; the flush ticks keep the writer checking.
    tokio::time::timeout(Duration::from_secs(10), async {
        while !threads_named("ward-audit-nice").is_empty()
            || threads_named("sqlx-sqlite-wor").contains(&nice)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the writer and SQLite's thread go back to SCHED_IDLE");
    auditor.record(record(5_000)).unwrap();
    drain(&auditor).await;
    assert_exactly_once_in_order(&all(store.db().unwrap()).await, 5_001);
}

#[tokio::test]
async fn a_burst_the_writer_drains_in_time_keeps_it_in_sched_idle() {
    let dir = tempfile::tempdir().unwrap();
    let (store, auditor, _task) = sqlite_writer(&dir, small_batches_slow_to_fall_behind).await;
    // Fewer than four times `catch_up_at`, which would move it at once.
    for i in 0..250 {
        auditor.record(record(i)).unwrap();
    }
    drain(&auditor).await;
    assert_eq!(auditor.metrics().catch_ups.load(Ordering::Relaxed), 0);
    assert_exactly_once_in_order(&all(store.db().unwrap()).await, 250);
}

#[test]
fn the_writer_leaves_sched_idle_after_records_waited_behind_for_and_returns_after_calm_for() {
    use crate::writer::{Class, ClassGate};
    // The defaults: batches of 256, catch up at 1,024, behind for 1 s, calm for 5 s.
    let cfg = Config::new("node-a", "unused".into());
    let ms = Duration::from_millis;
    let t0 = tokio::time::Instant::now();
    let mut gate = ClassGate::new(Class::Idle);
    // Behind, but a dip under `catch_up_at` restarts the clock.
    assert!(!gate.due(&cfg, 1_500, t0));
    assert!(!gate.due(&cfg, 3_000, t0 + ms(900)));
    assert!(!gate.due(&cfg, 1_000, t0 + ms(950)));
    assert!(!gate.due(&cfg, 1_024, t0 + ms(1_200)));
    assert!(!gate.due(&cfg, 2_000, t0 + ms(2_199)));
    assert_eq!(gate.class, Class::Idle);
    // A full `behind_for` without a dip moves it.
    assert!(gate.due(&cfg, 2_000, t0 + ms(2_200)));
    assert_eq!(gate.class, Class::Nice);
    // Back once fewer than a batch have waited for `calm_for`; a batch's worth waiting
    // restarts that clock too.
    assert!(!gate.due(&cfg, 10, t0 + ms(3_000)));
    assert!(!gate.due(&cfg, 256, t0 + ms(7_000)));
    assert!(!gate.due(&cfg, 0, t0 + ms(8_000)));
    assert!(!gate.due(&cfg, 255, t0 + ms(12_999)));
    assert!(gate.due(&cfg, 0, t0 + ms(13_000)));
    assert_eq!(gate.class, Class::Idle);
    // Four times `catch_up_at` moves it at once, however short the wait.
    assert!(!gate.due(&cfg, 4_095, t0 + ms(13_001)));
    assert!(gate.due(&cfg, 4_096, t0 + ms(13_002)));
    assert_eq!(gate.class, Class::Nice);
    // Flooding means nothing in `Class::Nice`: it stays until calm.
    assert!(!gate.due(&cfg, 100_000, t0 + ms(30_000)));
}

#[tokio::test]
async fn a_full_queue_overflows_to_disk_without_losing_records() {
    let dir = tempfile::tempdir().unwrap();
    let (store, auditor, _task) = sqlite_writer(&dir, |cfg| cfg.queue_capacity = 4).await;
    for i in 0..1_000 {
        auditor.record(record(i)).unwrap();
    }
    drain(&auditor).await;
    drain(&auditor).await;
    let records = all(store.db().unwrap()).await;
    assert_eq!(records.len(), 1_000);
    assert!(auditor.metrics().overflowed.load(Ordering::Relaxed) > 0);
    let mut ids: Vec<String> = records
        .iter()
        .map(|r| r.record().unwrap().request_id)
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1_000, "each record exactly once");
}

#[tokio::test]
async fn strict_mode_fails_closed_when_nothing_can_keep_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = sqlite(&dir).await;
    let mut cfg = config(&dir);
    cfg.strict = true;
    let spool_dir = cfg.spool_dir.clone();
    let (auditor, _task) = Auditor::spawn(store.clone(), None, cfg).await.unwrap();
    auditor.submit(record(0)).await.unwrap();
    // Break both the store (drop its tables) and the spool (a directory where the file goes).
    let db = store.db().unwrap();
    sqlx::query("DROP TABLE audit_records")
        .execute(db.pool_for_tests())
        .await
        .unwrap();
    std::fs::create_dir_all(spool_dir.join("audit-spool.jsonl")).unwrap();
    let err = auditor.submit(record(1)).await.unwrap_err();
    assert!(matches!(err, crate::Error::NotDurable(_)), "{err}");
    assert_eq!(
        auditor.metrics().dropped.load(Ordering::Relaxed),
        1,
        "counted, never silent"
    );
}

/// Writes 100 records with checkpoints every 50, then lets `tamper` change the database.
async fn tampered(tamper: &str) -> Vec<Finding> {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = sqlite(&dir).await;
    let key = key(&dir);
    let (auditor, task) = Auditor::spawn(store.clone(), Some(key.clone()), config(&dir))
        .await
        .unwrap();
    for i in 0..100 {
        auditor.record(record(i)).unwrap();
    }
    drain(&auditor).await;
    drop(auditor);
    task.await.unwrap();
    let db = store.db().unwrap();
    for statement in tamper.split(';').filter(|s| !s.trim().is_empty()) {
        sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
            .execute(db.pool_for_tests())
            .await
            .unwrap();
    }
    report(db, &key).await.findings
}

#[tokio::test]
async fn verify_names_each_kind_of_tampering() {
    assert_eq!(tampered("").await, vec![]);
    assert_eq!(
        tampered("UPDATE audit_records SET decision = 'allow' WHERE seq = 5").await,
        vec![Finding::ColumnEdited {
            seq: 5,
            column: "decision".into()
        }]
    );
    assert_eq!(
        tampered(
            "UPDATE audit_records SET body = replace(body, '\"deny\"', '\"allow\"') WHERE seq = 9"
        )
        .await,
        vec![
            Finding::Edited { seq: 9 },
            Finding::ColumnEdited {
                seq: 9,
                column: "decision".into()
            }
        ]
    );
    assert_eq!(
        tampered("DELETE FROM audit_records WHERE seq IN (20, 21)").await,
        vec![Finding::Deleted { from: 20, to: 21 }]
    );
    // Swap two records' places in the chain.
    assert_eq!(
        tampered(
            "UPDATE audit_records SET seq = -1 WHERE seq = 30; \
             UPDATE audit_records SET seq = 30 WHERE seq = 31; \
             UPDATE audit_records SET seq = 31 WHERE seq = -1"
        )
        .await,
        vec![
            Finding::BrokenLink { seq: 30 },
            Finding::Edited { seq: 30 },
            Finding::BrokenLink { seq: 31 },
            Finding::Edited { seq: 31 },
            Finding::BrokenLink { seq: 32 },
        ]
    );
    assert_eq!(
        tampered("DELETE FROM audit_records WHERE seq > 90").await,
        vec![Finding::Truncated {
            last_present: 90,
            checkpoint_seq: 100
        }]
    );
    assert_eq!(
        tampered("UPDATE audit_checkpoints SET hash = 'x' || substr(hash, 2) WHERE seq = 100")
            .await,
        vec![Finding::BadSignature { seq: 100 }]
    );
}

#[tokio::test]
async fn queries_filter_and_prune_keeps_the_chain_verifiable() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = sqlite(&dir).await;
    let key = key(&dir);
    let (auditor, _task) = Auditor::spawn(store.clone(), Some(key.clone()), config(&dir))
        .await
        .unwrap();
    for i in 0..100 {
        let mut r = record(i);
        r.time_ms = 1_000_000 + i as i64 * 1_000;
        auditor.record(r).unwrap();
    }
    drain(&auditor).await;
    let db = store.db().unwrap();
    let denies = query::query(
        db,
        &Filter {
            decision: Some("deny".into()),
            ..Filter::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(denies.len(), 25);
    let bypasses = query::query(
        db,
        &Filter {
            bypass: Some(true),
            ..Filter::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(bypasses.len(), 10);
    let by_policy = query::query(
        db,
        &Filter {
            policy: Some("policy-1".into()),
            ..Filter::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(by_policy.len(), 20);
    let window = Filter {
        since_ms: Some(1_010_000),
        until_ms: Some(1_020_000),
        ..Filter::default()
    };
    assert_eq!(query::query(db, &window).await.unwrap().len(), 10);
    let page = Filter {
        limit: Some(7),
        offset: Some(90),
        ..Filter::default()
    };
    assert_eq!(query::query(db, &page).await.unwrap().len(), 7);
    let stats = query::stats(db, &Filter::default(), 3).await.unwrap();
    assert_eq!(
        stats.by_decision,
        vec![("allow".into(), 75), ("deny".into(), 25)]
    );
    assert_eq!(stats.bypasses_by_grant, vec![("grant-1".into(), 10)]);

    let pruned = query::prune(db, 1_040_000, &key).await.unwrap();
    assert_eq!(pruned, 40);
    let rep = report(db, &key).await;
    assert!(rep.findings.is_empty(), "{:?}", rep.findings);
    assert_eq!(rep.records, 60);
    // The chain goes on after the cut.
    auditor.record(record(100)).unwrap();
    drain(&auditor).await;
    assert!(report(db, &key).await.findings.is_empty());
}
