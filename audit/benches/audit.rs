//! Sustained write rate into SQLite and PostgreSQL, and the time a caller spends handing a
//! record over: `cargo bench -p ward-audit`. Prints a table; see docs/PERFORMANCE.md.
//!
//! PostgreSQL is the server this machine kind runs at 127.0.0.1:5432 (database `test`).

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "a benchmark fails loudly on broken setup"
)]

use std::time::{Duration, Instant};

use ward_audit::record::{random_id, time_ordered_id};
use ward_audit::{AuditRecord, Auditor, Config, Decision, Store};

const RECORDS: usize = 200_000;
const PG: &str = "postgres://postgres@127.0.0.1:5432/test";
const ORDERED: (&str, IdMaker) = ("time-ordered", time_ordered_id);
const RANDOM: (&str, IdMaker) = ("random", random_id);

/// Request ids as the proxy makes them (time-ordered) or as a caller might send them (random).
type IdMaker = fn() -> String;

fn records(request_id: IdMaker) -> Vec<AuditRecord> {
    (0..RECORDS)
        .map(|i| {
            let mut r = AuditRecord::new("bench", &request_id());
            r.principal = format!("spiffe://ward.local/ns/shop/sa/svc-{}", i % 50);
            r.action = "GET".into();
            r.resource = "orders-api".into();
            r.method = Some("GET".into());
            r.path = Some(format!("/orders/{i}"));
            r.decision = if i % 10 == 0 {
                Decision::Deny
            } else {
                Decision::Allow
            };
            r.policies = vec!["orders-read".into()];
            r.policy_revision = "0123456789abcdef".into();
            r.latency_us = 12;
            r
        })
        .collect()
}

struct Result {
    store: &'static str,
    ids: &'static str,
    per_sec: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

async fn run(
    store_name: &'static str,
    url: &str,
    dir: &std::path::Path,
    (ids, request_id): (&'static str, IdMaker),
) -> Result {
    let store = Store::open(url).await.expect("store");
    let mut cfg = Config::new("bench", dir.join(store_name));
    cfg.queue_capacity = RECORDS;
    let (auditor, _task) = Auditor::spawn(store, None, cfg).await.expect("writer");
    let batch = records(request_id);
    let mut handover = Vec::with_capacity(RECORDS);
    let start = Instant::now();
    for r in batch {
        let t = Instant::now();
        auditor.record(r).expect("record");
        handover.push(t.elapsed());
    }
    while !auditor.flush().await.expect("flush") {}
    let elapsed = start.elapsed();
    assert_eq!(
        auditor
            .metrics()
            .written
            .load(std::sync::atomic::Ordering::Relaxed),
        RECORDS as u64,
        "every record reached the store"
    );
    handover.sort();
    Result {
        store: store_name,
        ids,
        per_sec: RECORDS as f64 / elapsed.as_secs_f64(),
        p50: handover[RECORDS / 2],
        p99: handover[RECORDS * 99 / 100],
        max: handover[RECORDS - 1],
    }
}

/// The store alone: pre-chained records inserted in writer-sized batches.
async fn raw_insert(url: &str) -> f64 {
    let store = Store::open(url).await.expect("store");
    let mut chain = ward_audit::chain::Chain::resume("raw", None);
    let chained: Vec<_> = records(time_ordered_id)
        .iter()
        .map(|r| chain.append(r).expect("chain"))
        .collect();
    let start = Instant::now();
    for batch in chained.chunks(1_000) {
        store.insert(batch).await.expect("insert");
    }
    RECORDS as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let sqlite = format!("sqlite://{}", dir.path().join("bench.db").display());
        let random_sqlite = format!("sqlite://{}", dir.path().join("random.db").display());
        let raw_sqlite =
            raw_insert(&format!("sqlite://{}", dir.path().join("raw.db").display())).await;
        let mut results = vec![
            run("sqlite", &sqlite, dir.path(), ORDERED).await,
            run("sqlite", &random_sqlite, dir.path(), RANDOM).await,
        ];

        sqlx::any::install_default_drivers();
        let admin = sqlx::AnyPool::connect(PG)
            .await
            .expect("PostgreSQL at 127.0.0.1:5432");
        let schema = format!("audit_bench_{}", std::process::id());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&admin)
            .await
            .expect("create schema");
        let pg = format!("{PG}?options=-c%20search_path%3D{schema}");
        results.push(run("postgres", &pg, dir.path(), ORDERED).await);
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&admin)
            .await
            .expect("drop schema");

        println!("{RECORDS} records per store, 2 tokio workers");
        println!("sqlite store alone (pre-chained, 1,000 per batch): {raw_sqlite:.0} records/s");
        println!(
            "{:<10} {:<13} {:>12} {:>14} {:>14} {:>14}",
            "store", "request ids", "records/s", "handover p50", "handover p99", "handover max"
        );
        for r in results {
            println!(
                "{:<10} {:<13} {:>12.0} {:>14?} {:>14?} {:>14?}",
                r.store, r.ids, r.per_sec, r.p50, r.p99, r.max
            );
        }
    });
}
