//! Review tools over a SQL store: filtered queries, export, stats and retention.

use sqlx::{AssertSqlSafe, Row};

use crate::Error;
use crate::chain::{ChainedRecord, Checkpoint, CheckpointKind};
use crate::key::AuditKey;
use crate::store::{self, Db};

/// Which records to return. Every field narrows the result; all use indexes or the primary key.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Exact principal.
    pub principal: Option<String>,
    /// Exact end user.
    pub end_user: Option<String>,
    /// Exact action.
    pub action: Option<String>,
    /// Exact resource.
    pub resource: Option<String>,
    /// `allow` or `deny`.
    pub decision: Option<String>,
    /// Only break-glass bypasses (true) or only others (false).
    pub bypass: Option<bool>,
    /// A determining policy id.
    pub policy: Option<String>,
    /// Exact request id.
    pub request_id: Option<String>,
    /// From this time (unix ms, inclusive).
    pub since_ms: Option<i64>,
    /// Until this time (unix ms, exclusive).
    pub until_ms: Option<i64>,
    /// At most this many records.
    pub limit: Option<i64>,
    /// Skip this many.
    pub offset: Option<i64>,
}

/// Counts for `ward audit stats`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    /// Records by decision.
    pub by_decision: Vec<(String, i64)>,
    /// Principals with the most denies.
    pub top_denied_principals: Vec<(String, i64)>,
    /// Actions with the most denies.
    pub top_denied_actions: Vec<(String, i64)>,
    /// Break-glass grants that let requests through, with counts.
    pub bypasses_by_grant: Vec<(String, i64)>,
}

impl Filter {
    /// The WHERE clause and its bind values, numbered from `$1`.
    fn clause(&self) -> (String, Vec<Bind>) {
        let mut w = Conditions::default();
        w.equals("principal", &self.principal);
        w.equals("end_user", &self.end_user);
        w.equals("action", &self.action);
        w.equals("resource", &self.resource);
        // The denies as a literal (not a bind), so the planner can use their partial index.
        match self.decision.as_deref() {
            Some("deny") => w.parts.push("decision = 'deny'".to_owned()),
            _ => w.equals("decision", &self.decision),
        }
        w.equals("request_id", &self.request_id);
        if let Some(policy) = &self.policy {
            w.bind("policies LIKE", Bind::Text(format!("%,{policy},%")));
        }
        // A literal (not a bind) so the planner can use the partial index on bypasses.
        match self.bypass {
            Some(true) => w.parts.push("bypass = 1".to_owned()),
            Some(false) => w.parts.push("bypass = 0".to_owned()),
            None => {}
        }
        if let Some(t) = self.since_ms {
            w.bind("time_ms >=", Bind::Int(t));
        }
        if let Some(t) = self.until_ms {
            w.bind("time_ms <", Bind::Int(t));
        }
        let Conditions { parts, binds } = w;
        let clause = if parts.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", parts.join(" AND "))
        };
        (clause, binds)
    }
}

/// A WHERE clause being built: its conditions, joined by AND, and their bind values.
#[derive(Debug, Default)]
struct Conditions {
    parts: Vec<String>,
    binds: Vec<Bind>,
}

impl Conditions {
    /// `{lhs} $N`, with `value` bound as `$N`.
    fn bind(&mut self, lhs: &str, value: Bind) {
        self.binds.push(value);
        self.parts.push(format!("{lhs} ${}", self.binds.len()));
    }

    /// `{column} = $N` when there is a value to compare with.
    fn equals(&mut self, column: &str, value: &Option<String>) {
        if let Some(v) = value {
            self.bind(&format!("{column} ="), Bind::Text(v.clone()));
        }
    }
}

/// A value bound to a query's `$N`.
#[derive(Debug, Clone)]
pub(crate) enum Bind {
    Text(String),
    Int(i64),
}

/// `q` with `binds` bound in order.
pub(crate) fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    binds: Vec<Bind>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for b in binds {
        q = match b {
            Bind::Text(t) => q.bind(t),
            Bind::Int(i) => q.bind(i),
        };
    }
    q
}

/// The SELECT behind [`query`] and its bind values.
pub(crate) fn select(filter: &Filter) -> (String, Vec<Bind>) {
    let (clause, mut binds) = filter.clause();
    let mut sql = format!(
        "SELECT chain, seq, prev_hash, hash, body FROM audit_records{clause} ORDER BY time_ms, chain, seq"
    );
    binds.push(Bind::Int(filter.limit.unwrap_or(i64::MAX)));
    sql.push_str(&format!(" LIMIT ${}", binds.len()));
    binds.push(Bind::Int(filter.offset.unwrap_or(0)));
    sql.push_str(&format!(" OFFSET ${}", binds.len()));
    (sql, binds)
}

/// Records matching `filter`, oldest first.
pub async fn query(db: &Db, filter: &Filter) -> Result<Vec<ChainedRecord>, Error> {
    let (sql, binds) = select(filter);
    let rows = bind_all(sqlx::query(AssertSqlSafe(sql)), binds)
        .fetch_all(db.pool())
        .await?;
    rows.iter()
        .map(|row| {
            Ok(ChainedRecord {
                chain: row.try_get(0)?,
                seq: row.try_get(1)?,
                prev_hash: row.try_get(2)?,
                hash: row.try_get(3)?,
                body: row.try_get(4)?,
            })
        })
        .collect()
}

/// Counts by decision, top denied principals and actions, and bypasses by grant.
pub async fn stats(db: &Db, filter: &Filter, top: i64) -> Result<Stats, Error> {
    let (clause, binds) = filter.clause();
    let and = if clause.is_empty() { " WHERE" } else { " AND" };
    let group = |select: &str, extra: &str, limited: bool| {
        let mut sql = format!(
            "SELECT {select}, COUNT(*) FROM audit_records{clause}{extra} GROUP BY 1 ORDER BY 2 DESC, 1"
        );
        if limited {
            sql.push_str(&format!(" LIMIT {top}"));
        }
        sql
    };
    let run = |sql: String| {
        let binds = binds.clone();
        async move {
            let rows = bind_all(sqlx::query(AssertSqlSafe(sql)), binds)
                .fetch_all(db.pool())
                .await?;
            rows.iter()
                .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?)))
                .collect::<Result<Vec<_>, Error>>()
        }
    };
    Ok(Stats {
        by_decision: run(group("decision", "", false)).await?,
        top_denied_principals: run(group(
            "principal",
            &format!("{and} decision = 'deny'"),
            true,
        ))
        .await?,
        top_denied_actions: run(group("action", &format!("{and} decision = 'deny'"), true)).await?,
        bypasses_by_grant: run(group(
            "COALESCE(grant_id, '')",
            &format!("{and} bypass = 1"),
            false,
        ))
        .await?,
    })
}

/// Deletes records older than `before_ms` from every chain, first storing a signed prune
/// checkpoint at each cut so the rest of the chain still verifies. Returns records deleted.
pub async fn prune(db: &Db, before_ms: i64, key: &AuditKey) -> Result<u64, Error> {
    let mut deleted = 0;
    for chain in db.chains().await? {
        let cut = sqlx::query(
            "SELECT seq, hash FROM audit_records WHERE chain = $1 AND time_ms < $2 ORDER BY seq DESC LIMIT 1",
        )
        .bind(chain.clone())
        .bind(before_ms)
        .fetch_optional(db.pool())
        .await?;
        let Some(cut) = cut else { continue };
        let (seq, hash): (i64, String) = (cut.try_get(0)?, cut.try_get(1)?);
        let cp = Checkpoint::sign(key, &chain, seq, &hash, CheckpointKind::Prune);
        let mut tx = db.pool().begin().await?;
        store::checkpoint_insert(&cp).execute(&mut *tx).await?;
        let done = sqlx::query("DELETE FROM audit_records WHERE chain = $1 AND seq <= $2")
            .bind(chain.clone())
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        // Checkpoints inside the pruned range vouch for nothing that is left.
        sqlx::query("DELETE FROM audit_checkpoints WHERE chain = $1 AND seq < $2")
            .bind(chain.clone())
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        deleted += done.rows_affected();
    }
    Ok(deleted)
}
