//! `ward audit`: query, export, summarize, verify and prune the audit log.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand, ValueEnum};
use ward_audit::chain::ChainedRecord;
use ward_audit::key::{AuditKey, PublicKey, pub_path};
use ward_audit::query::{self, Filter};
use ward_audit::record::{format_time, parse_time};
use ward_audit::store::{Db, Store, redact};
use ward_audit::verify::{self, ChainReport};

use crate::exit::{self, bad_input};
use crate::output::{self, Table};

/// `ward audit …`
#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// List decisions matching filters.
    Query(QueryArgs),
    /// Write matching records as JSONL (the export format, with chain fields) to stdout.
    Export(ExportArgs),
    /// Count decisions, top denied principals and actions, and break-glass bypasses.
    Stats(StatsArgs),
    /// Check the hash chain and signed checkpoints; exit 1 if anything was tampered with.
    Verify(VerifyArgs),
    /// Delete old records, leaving a signed checkpoint so the rest still verifies.
    Prune(PruneArgs),
}

/// Which audit store to read.
#[derive(Debug, Args)]
pub(crate) struct StoreArg {
    /// The store: `sqlite://PATH` or `postgres://…`.
    #[arg(
        long,
        value_name = "URL",
        env = "WARD_AUDIT_STORE",
        default_value = "sqlite://ward-data/audit.db",
        hide_env_values = true
    )]
    store: String,
}

/// Filters shared by query, export and stats.
#[derive(Debug, Args)]
pub(crate) struct FilterArgs {
    /// Only this principal (SPIFFE id or user).
    #[arg(long)]
    principal: Option<String>,
    /// Only this end user.
    #[arg(long)]
    user: Option<String>,
    /// Only this action.
    #[arg(long)]
    action: Option<String>,
    /// Only this resource.
    #[arg(long)]
    resource: Option<String>,
    /// Only `allow` or `deny`.
    #[arg(long, value_parser = ["allow", "deny"])]
    decision: Option<String>,
    /// Only requests a break-glass grant let through (`--bypass`), or none of them (`--bypass=false`).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    bypass: Option<bool>,
    /// Only decisions determined by this policy id.
    #[arg(long)]
    policy: Option<String>,
    /// Only this request id.
    #[arg(long)]
    request_id: Option<String>,
    /// From this time: a duration ago (`1h`, `7d`) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Until this time: a duration ago or an RFC 3339 time.
    #[arg(long, value_name = "WHEN")]
    until: Option<String>,
}

/// Output formats of `ward audit query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum QueryFormat {
    /// Aligned columns.
    Table,
    /// A JSON array of records.
    Json,
    /// Comma-separated values with a header row.
    Csv,
}

/// Options of `ward audit query`.
#[derive(Debug, Args)]
pub(crate) struct QueryArgs {
    #[command(flatten)]
    store: StoreArg,
    #[command(flatten)]
    filter: FilterArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = QueryFormat::Table)]
    format: QueryFormat,
    /// At most this many records.
    #[arg(long, default_value_t = 100)]
    limit: i64,
    /// Skip this many (for paging).
    #[arg(long, default_value_t = 0)]
    offset: i64,
}

/// Options of `ward audit export`.
#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    #[command(flatten)]
    store: StoreArg,
    #[command(flatten)]
    filter: FilterArgs,
}

/// Options of `ward audit stats`.
#[derive(Debug, Args)]
pub(crate) struct StatsArgs {
    #[command(flatten)]
    store: StoreArg,
    #[command(flatten)]
    filter: FilterArgs,
    /// How many top principals and actions to show.
    #[arg(long, default_value_t = 10)]
    top: i64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = output::Format::Table)]
    format: output::Format,
}

/// Options of `ward audit verify`.
#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    store: StoreArg,
    /// The checkpoint public key (hex), as written next to the audit key.
    #[arg(long, value_name = "FILE", default_value = "ward-data/audit.key.pub")]
    key: PathBuf,
    /// Verify a JSONL file written by a `jsonl://` store instead (chain only, no checkpoints).
    #[arg(long, value_name = "FILE", conflicts_with = "key")]
    jsonl: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = output::Format::Table)]
    format: output::Format,
}

/// Options of `ward audit prune`.
#[derive(Debug, Args)]
pub(crate) struct PruneArgs {
    #[command(flatten)]
    store: StoreArg,
    /// Delete records older than this (e.g. `90d`).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    older_than: Duration,
    /// The audit signing key (its checkpoint seals the cut).
    #[arg(long, value_name = "FILE", default_value = "ward-data/audit.key")]
    key: PathBuf,
}

/// Runs `ward audit …`.
pub(crate) async fn run(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::Query(args) => query_cmd(args).await,
        AuditCommand::Export(args) => export(args).await,
        AuditCommand::Stats(args) => stats(args).await,
        AuditCommand::Verify(args) => verify_cmd(args).await,
        AuditCommand::Prune(args) => prune(args).await,
    }
}

async fn open(store: &StoreArg) -> anyhow::Result<Db> {
    if let Some(path) = store.store.strip_prefix("sqlite://") {
        // Reading must not create an empty database where the operator mistyped a path.
        if !Path::new(path).exists() {
            return Err(bad_input(anyhow::anyhow!(
                "no audit database at `{path}` (set --store or WARD_AUDIT_STORE)"
            )));
        }
    }
    match Store::open(&store.store).await {
        Ok(Store::Db(db)) => Ok(db),
        Ok(_) => Err(bad_input(anyhow::anyhow!(
            "`{}` is write-only: query a sqlite:// or postgres:// store",
            redact(&store.store)
        ))),
        Err(ward_audit::Error::Invalid(msg)) => Err(bad_input(anyhow::anyhow!(msg))),
        Err(e) => Err(anyhow::anyhow!(
            "opening audit store `{}`: {e}",
            redact(&store.store)
        )),
    }
}

fn filter(args: &FilterArgs, limit: Option<i64>, offset: Option<i64>) -> anyhow::Result<Filter> {
    Ok(Filter {
        principal: args.principal.clone(),
        end_user: args.user.clone(),
        action: args.action.clone(),
        resource: args.resource.clone(),
        decision: args.decision.clone(),
        bypass: args.bypass,
        policy: args.policy.clone(),
        request_id: args.request_id.clone(),
        since_ms: args
            .since
            .as_deref()
            .map(|w| when(w, "--since"))
            .transpose()?,
        until_ms: args
            .until
            .as_deref()
            .map(|w| when(w, "--until"))
            .transpose()?,
        limit,
        offset,
    })
}

/// `1h` (an hour ago) or an RFC 3339 time, as unix milliseconds.
fn when(text: &str, flag: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = parse_time(text) {
        return Ok(ms);
    }
    let ago = humantime::parse_duration(text).map_err(|e| {
        bad_input(anyhow::anyhow!(
            "{flag} `{text}`: not a duration (`1h`, `7d`) or an RFC 3339 time: {e}"
        ))
    })?;
    let at = SystemTime::now()
        .checked_sub(ago)
        .unwrap_or(SystemTime::UNIX_EPOCH)
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Ok(i64::try_from(at.as_millis()).unwrap_or(i64::MAX))
}

async fn query_cmd(args: QueryArgs) -> anyhow::Result<ExitCode> {
    let db = open(&args.store).await?;
    let records = query::query(
        &db,
        &filter(&args.filter, Some(args.limit), Some(args.offset))?,
    )
    .await?;
    let parsed: Vec<(ChainedRecord, ward_audit::AuditRecord)> = records
        .into_iter()
        .map(|r| {
            let rec = r.record()?;
            Ok((r, rec))
        })
        .collect::<Result<_, serde_json::Error>>()?;
    match args.format {
        QueryFormat::Json => {
            let values = parsed
                .iter()
                .map(|(c, _)| c.export_json())
                .collect::<Result<Vec<_>, _>>()?;
            output::print_json(&serde_json::Value::Array(values));
        }
        QueryFormat::Csv => {
            println!(
                "time,request_id,principal,end_user,action,resource,decision,policies,bypass,grant_id,mode,policy_revision"
            );
            for (_, r) in &parsed {
                let fields = [
                    format_time(r.time_ms),
                    r.request_id.clone(),
                    r.principal.clone(),
                    r.end_user.clone().unwrap_or_default(),
                    r.action.clone(),
                    r.resource.clone(),
                    r.decision.to_string(),
                    r.policies.join(" "),
                    r.bypass.to_string(),
                    r.grant_id.clone().unwrap_or_default(),
                    r.mode.as_str().to_owned(),
                    r.policy_revision.clone(),
                ];
                println!(
                    "{}",
                    fields.iter().map(|f| csv(f)).collect::<Vec<_>>().join(",")
                );
            }
        }
        QueryFormat::Table => {
            let mut table = Table::new([
                "time",
                "principal",
                "action",
                "resource",
                "decision",
                "policies",
                "request",
            ]);
            for (_, r) in &parsed {
                let decision = if r.bypass {
                    format!(
                        "{} (bypass {})",
                        r.decision,
                        r.grant_id.as_deref().unwrap_or("?")
                    )
                } else {
                    r.decision.to_string()
                };
                table.row([
                    format_time(r.time_ms),
                    r.principal.clone(),
                    r.action.clone(),
                    r.resource.clone(),
                    decision,
                    r.policies.join(","),
                    r.request_id.clone(),
                ]);
            }
            print!("{}", table.render());
            eprintln!("{} record(s)", parsed.len());
        }
    }
    Ok(exit::OK)
}

async fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let db = open(&args.store).await?;
    const PAGE: i64 = 10_000;
    let mut offset = 0;
    loop {
        let page = query::query(&db, &filter(&args.filter, Some(PAGE), Some(offset))?).await?;
        for r in &page {
            println!("{}", r.export_json()?);
        }
        if (page.len() as i64) < PAGE {
            break;
        }
        offset += PAGE;
    }
    Ok(exit::OK)
}

async fn stats(args: StatsArgs) -> anyhow::Result<ExitCode> {
    let db = open(&args.store).await?;
    let stats = query::stats(&db, &filter(&args.filter, None, None)?, args.top).await?;
    match args.format {
        output::Format::Json => output::print_json(&serde_json::to_value(&stats)?),
        output::Format::Table => {
            let mut t = Table::new(["what", "key", "count"]);
            let sections = [
                ("decisions", &stats.by_decision),
                ("denied principal", &stats.top_denied_principals),
                ("denied action", &stats.top_denied_actions),
                ("bypass by grant", &stats.bypasses_by_grant),
            ];
            for (label, rows) in sections {
                for (key, count) in rows {
                    t.row([label.to_owned(), key.clone(), count.to_string()]);
                }
            }
            print!("{}", t.render());
        }
    }
    Ok(exit::OK)
}

async fn verify_cmd(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let reports = match &args.jsonl {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| bad_input(anyhow::anyhow!("reading `{}`: {e}", path.display())))?;
            let records = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .enumerate()
                .map(|(i, l)| {
                    serde_json::from_str::<ChainedRecord>(l).map_err(|e| {
                        bad_input(anyhow::anyhow!("`{}` line {}: {e}", path.display(), i + 1))
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            verify::verify_records(&records)
        }
        None => {
            let key = PublicKey::read(&args.key).map_err(bad_input)?;
            let db = open(&args.store).await?;
            verify::verify_db(&db, &key).await?
        }
    };
    let intact = reports.iter().all(|r| r.findings.is_empty());
    print_reports(&reports, args.format)?;
    Ok(if intact { exit::OK } else { exit::FAILURE })
}

fn print_reports(reports: &[ChainReport], format: output::Format) -> anyhow::Result<()> {
    match format {
        output::Format::Json => output::print_json(&serde_json::to_value(reports)?),
        output::Format::Table => {
            let mut t = Table::new(["chain", "records", "checkpoints", "unsealed", "result"]);
            for r in reports {
                let result = if r.findings.is_empty() {
                    "intact".to_owned()
                } else {
                    format!("{} problem(s)", r.findings.len())
                };
                t.row([
                    r.chain.clone(),
                    r.records.to_string(),
                    r.checkpoints.to_string(),
                    r.unsealed.to_string(),
                    result,
                ]);
            }
            print!("{}", t.render());
            for r in reports {
                for f in &r.findings {
                    println!("{}: {f}", r.chain);
                }
            }
        }
    }
    Ok(())
}

async fn prune(args: PruneArgs) -> anyhow::Result<ExitCode> {
    let key = AuditKey::load(&args.key).map_err(bad_input)?;
    let db = open(&args.store).await?;
    let cutoff = when(
        &humantime::format_duration(args.older_than).to_string(),
        "--older-than",
    )?;
    let deleted = query::prune(&db, cutoff, &key).await?;
    println!(
        "pruned {deleted} record(s) older than {}; verify with --key {}",
        format_time(cutoff),
        pub_path(&args.key).display()
    );
    Ok(exit::OK)
}

/// Quotes a CSV field when it needs it.
fn csv(field: &str) -> String {
    if field.contains([',', '"', '\n']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}
