//! `ward policy …`: the policy author's toolchain (validate, test, fmt, explain, diff).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::json;
use ward_authz::explain::{self, Explanation, Verdict};
use ward_authz::format::format_policies;
use ward_authz::policy_test::{self, CaseResult};
use ward_authz::{ContextSpec, Decision, Error as AuthzError, RequestSpec, Snapshot};

use crate::exit;
use crate::output::{self, Format, Table};

/// `ward policy …`
#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Validate a policy repository strictly: schema, policies, entities, routes and tests.
    Validate(DirArgs),
    /// Run the repository's `tests/*.yaml` cases; exit 1 when any fails.
    Test(DirArgs),
    /// Format the repository's `.cedar` files with the official Cedar formatter.
    Fmt(FmtArgs),
    /// Decide one request and explain the decision; exit 1 on deny.
    Explain(ExplainArgs),
    /// Replay recorded requests against two repositories; exit 1 when any decision changes.
    Diff(DiffArgs),
}

/// A policy repository and an output format.
#[derive(Debug, Args)]
pub(crate) struct DirArgs {
    /// The policy repository (schema.cedarschema, *.cedar, entities/, routes/, tests/).
    dir: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// Options of `ward policy fmt`.
#[derive(Debug, Args)]
pub(crate) struct FmtArgs {
    /// Only check: list files that are not formatted and exit 1 if there are any.
    #[arg(long)]
    check: bool,
    /// The policy repository.
    dir: PathBuf,
}

/// Options of `ward policy explain`.
#[derive(Debug, Args)]
pub(crate) struct ExplainArgs {
    /// The policy repository.
    dir: PathBuf,
    /// `spiffe://…` for a workload, or an entity like `User::"https://idp#42"`.
    #[arg(long)]
    principal: String,
    /// The action (`GET`, `orders:refund`); omit it to route `method` and `path` from --context.
    #[arg(long)]
    action: Option<String>,
    /// A service name, or an entity like `ExternalHost::"api.stripe.com"`.
    #[arg(long)]
    resource: String,
    /// The context as JSON, e.g. `{"method":"POST","path":"/orders/7/refund","mtls":true}`.
    #[arg(long, value_name = "JSON")]
    context: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// Options of `ward policy diff`.
#[derive(Debug, Args)]
pub(crate) struct DiffArgs {
    /// The repository as it is (e.g. a checkout of the enforced revision).
    old: PathBuf,
    /// The repository with the change.
    new: PathBuf,
    /// Requests to replay: JSON Lines, one request per line (see docs/POLICY-GUIDE.md).
    #[arg(long, value_name = "FILE")]
    requests: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// Runs `ward policy …`.
pub(crate) fn run(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Validate(args) => validate(&args),
        PolicyCommand::Test(args) => test(&args),
        PolicyCommand::Fmt(args) => fmt(&args),
        PolicyCommand::Explain(args) => explain_cmd(&args),
        PolicyCommand::Diff(args) => diff(&args),
    }
}

/// Loads a repository; an invalid one prints every problem and becomes bad input (exit 2).
fn load(dir: &Path) -> anyhow::Result<Snapshot> {
    let snapshot = Snapshot::load(dir).map_err(|e| report_invalid(dir, e))?;
    for w in snapshot.warnings() {
        eprintln!("warning: {w}");
    }
    Ok(snapshot)
}

fn report_invalid(dir: &Path, err: AuthzError) -> anyhow::Error {
    match &err {
        AuthzError::Invalid(problems) => {
            for p in problems.iter() {
                eprintln!("{p}");
            }
            let n = problems.iter().count();
            exit::bad_input(anyhow::anyhow!(
                "policy repository `{}` is invalid: {n} {}",
                dir.display(),
                if n == 1 { "problem" } else { "problems" }
            ))
        }
        AuthzError::Io { .. } | AuthzError::Path(_) | AuthzError::Request(_) => {
            exit::bad_input(err)
        }
        AuthzError::Bug(_) => anyhow::Error::new(err),
    }
}

fn validate(args: &DirArgs) -> anyhow::Result<ExitCode> {
    let snapshot = load(&args.dir)?;
    let cases = policy_test::load(&args.dir).map_err(|e| report_invalid(&args.dir, e))?;
    match args.format {
        Format::Json => output::print_json(&json!({
            "ok": true,
            "policies": snapshot.policy_count(),
            "entities": snapshot.entity_count(),
            "routes": snapshot.route_count(),
            "tests": cases.len(),
            "revision": snapshot.revision().as_ref(),
            "warnings": snapshot.warnings().iter().map(ToString::to_string).collect::<Vec<_>>(),
        })),
        Format::Table => println!(
            "{}: ok: {} policies, {} entities, {} routes, {} tests, revision {}",
            args.dir.display(),
            snapshot.policy_count(),
            snapshot.entity_count(),
            snapshot.route_count(),
            cases.len(),
            snapshot.revision()
        ),
    }
    Ok(exit::OK)
}

fn test(args: &DirArgs) -> anyhow::Result<ExitCode> {
    let snapshot = load(&args.dir)?;
    let cases = policy_test::load(&args.dir).map_err(|e| report_invalid(&args.dir, e))?;
    let results = policy_test::run(&snapshot, &cases);
    let failed = results.iter().filter(|r| r.failure.is_some()).count();
    let passed = results.len() - failed;
    match args.format {
        Format::Json => output::print_json(&json!({
            "revision": snapshot.revision().as_ref(),
            "passed": passed,
            "failed": failed,
            "cases": results.iter().map(case_json).collect::<Vec<_>>(),
        })),
        Format::Table => {
            let mut table = Table::new(["result", "case", "decision", "reason"]);
            for r in &results {
                table.row([
                    if r.failure.is_some() { "FAIL" } else { "pass" }.to_owned(),
                    r.case.name.clone(),
                    r.decision
                        .as_ref()
                        .map_or_else(|| "-".to_owned(), ToString::to_string),
                    match &r.failure {
                        Some(f) => format!("{}: {f}", r.case.location),
                        None => String::new(),
                    },
                ]);
            }
            print!("{}", table.render());
            println!("{passed} passed, {failed} failed");
        }
    }
    Ok(if failed == 0 { exit::OK } else { exit::FAILURE })
}

fn case_json(r: &CaseResult) -> serde_json::Value {
    json!({
        "name": r.case.name,
        "location": r.case.location.to_string(),
        "passed": r.failure.is_none(),
        "failure": r.failure,
        "decision": r.decision.as_ref().map(decision_json),
    })
}

fn decision_json(d: &Decision) -> serde_json::Value {
    json!({
        "decision": if d.allow { "allow" } else { "deny" },
        "policies": d.reasons,
        "errors": d.errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "revision": d.revision.as_ref(),
    })
}

fn fmt(args: &FmtArgs) -> anyhow::Result<ExitCode> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(&args.dir)
        .with_context(|| format!("reading `{}`", args.dir.display()))
        .map_err(exit::bad_input)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "cedar"))
        .collect();
    files.sort();
    let mut unformatted = Vec::new();
    let mut broken = 0;
    for file in &files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading `{}`", file.display()))?;
        let pretty = match format_policies(&text) {
            Ok(p) => p,
            Err(e) => {
                // Never rewrite a file that does not parse.
                eprintln!("{}: cannot format: {e}", file.display());
                broken += 1;
                continue;
            }
        };
        if pretty == text {
            continue;
        }
        if args.check {
            println!("{}", file.display());
        } else {
            std::fs::write(file, &pretty)
                .with_context(|| format!("writing `{}`", file.display()))?;
            println!("formatted {}", file.display());
        }
        unformatted.push(file);
    }
    if broken > 0 {
        return Err(exit::bad_input(anyhow::anyhow!(
            "{broken} .cedar {} could not be parsed and {} left as {}",
            if broken == 1 { "file" } else { "files" },
            if broken == 1 { "was" } else { "were" },
            if broken == 1 { "it was" } else { "they were" },
        )));
    }
    if args.check && !unformatted.is_empty() {
        eprintln!(
            "{} of {} .cedar files need formatting; run `ward policy fmt {}`",
            unformatted.len(),
            files.len(),
            args.dir.display()
        );
        return Ok(exit::FAILURE);
    }
    Ok(exit::OK)
}

fn explain_cmd(args: &ExplainArgs) -> anyhow::Result<ExitCode> {
    let snapshot = load(&args.dir)?;
    let context: ContextSpec = match &args.context {
        Some(text) => serde_json::from_str(text)
            .context("--context is not a valid context JSON object")
            .map_err(exit::bad_input)?,
        None => ContextSpec::default(),
    };
    let spec = RequestSpec {
        principal: args.principal.clone(),
        action: args.action.clone(),
        resource: args.resource.clone(),
        context,
        entities: Vec::new(),
    };
    let request = snapshot.resolve(&spec).map_err(exit::bad_input)?;
    let e = explain::explain(&snapshot, &request)?;
    match args.format {
        Format::Json => output::print_json(&explanation_json(&e)),
        Format::Table => print_explanation(&snapshot, &e),
    }
    Ok(if e.decision.allow {
        exit::OK
    } else {
        exit::FAILURE
    })
}

fn print_explanation(snapshot: &Snapshot, e: &Explanation) {
    let d = &e.decision;
    println!("decision: {}", if d.allow { "allow" } else { "deny" });
    println!("action:   {}", e.action);
    println!("revision: {}", d.revision);
    let locate = |id: &str| {
        snapshot
            .policy_location(id)
            .map_or_else(String::new, |l| format!(" ({l})"))
    };
    if d.reasons.is_empty() {
        println!(
            "determined by: {}",
            if d.allow || d.errors.is_empty() {
                "no policy (deny by default)"
            } else {
                "evaluation errors (fail closed)"
            }
        );
    } else {
        println!("determined by:");
        for id in &d.reasons {
            println!("  {id}{}", locate(id));
        }
    }
    for err in &d.errors {
        println!("error: {err}");
    }
    if !d.allow {
        let closest: Vec<_> = e.closest_permits().collect();
        if closest.is_empty() {
            println!("closest permits: none (no permit's scope matches this request)");
        } else {
            println!("closest permits:");
            for p in closest {
                let why = match (&p.verdict, d.reasons.is_empty()) {
                    (Verdict::Satisfied, false) => ", overridden by the forbid above",
                    (Verdict::Satisfied, true) => ", overridden by the errors above",
                    _ => "",
                };
                println!("  {}{}: {}{why}", p.id, locate(&p.id), p.verdict);
            }
        }
    }
    if !e.policies.is_empty() {
        println!();
        let mut table = Table::new(["policy", "effect", "verdict"]);
        for p in &e.policies {
            table.row([p.id.clone(), p.effect.to_string(), p.verdict.to_string()]);
        }
        print!("{}", table.render());
    }
}

fn explanation_json(e: &Explanation) -> serde_json::Value {
    let mut v = decision_json(&e.decision);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("action".to_owned(), json!(e.action));
        obj.insert(
            "closest_permits".to_owned(),
            json!(
                e.closest_permits()
                    .map(|p| p.id.clone())
                    .collect::<Vec<_>>()
            ),
        );
        obj.insert(
            "scope_matched".to_owned(),
            json!(
                e.policies
                    .iter()
                    .map(|p| json!({
                        "id": p.id,
                        "effect": p.effect.to_string(),
                        "verdict": p.verdict.to_string(),
                        "location": p.location.as_ref().map(ToString::to_string),
                    }))
                    .collect::<Vec<_>>()
            ),
        );
    }
    v
}

/// One replayed request whose decision changed.
struct Change {
    line: usize,
    spec: RequestSpec,
    old: Decision,
    new: Decision,
}

fn diff(args: &DiffArgs) -> anyhow::Result<ExitCode> {
    let old = load(&args.old)?;
    let new = load(&args.new)?;
    let text = std::fs::read_to_string(&args.requests)
        .with_context(|| format!("reading `{}`", args.requests.display()))
        .map_err(exit::bad_input)?;
    let mut changes = Vec::new();
    let mut replayed = 0;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", args.requests.display(), i + 1);
        let spec: RequestSpec = serde_json::from_str(line)
            .with_context(|| format!("{at}: not a request"))
            .map_err(exit::bad_input)?;
        let decide = |s: &Snapshot| -> anyhow::Result<Decision> {
            let request = s
                .resolve(&spec)
                .with_context(|| at.clone())
                .map_err(exit::bad_input)?;
            Ok(s.authorize(&request))
        };
        let (a, b) = (decide(&old)?, decide(&new)?);
        replayed += 1;
        if a.allow != b.allow {
            changes.push(Change {
                line: i + 1,
                spec,
                old: a,
                new: b,
            });
        }
    }
    print_diff(args, &old, &new, replayed, &changes);
    Ok(if changes.is_empty() {
        exit::OK
    } else {
        exit::FAILURE
    })
}

fn print_diff(
    args: &DiffArgs,
    old: &Snapshot,
    new: &Snapshot,
    replayed: usize,
    changes: &[Change],
) {
    let allowed = changes.iter().filter(|c| c.new.allow).count();
    let denied = changes.len() - allowed;
    let word = |d: &Decision| {
        let mut s = if d.allow { "allow" } else { "deny" }.to_owned();
        if !d.reasons.is_empty() {
            s.push_str(&format!(" ({})", d.reasons.join(", ")));
        }
        s
    };
    match args.format {
        Format::Json => output::print_json(&json!({
            "old_revision": old.revision().as_ref(),
            "new_revision": new.revision().as_ref(),
            "replayed": replayed,
            "changed": changes.len(),
            "changes": changes.iter().map(|c| json!({
                "line": c.line,
                "request": c.spec,
                "old": decision_json(&c.old),
                "new": decision_json(&c.new),
            })).collect::<Vec<_>>(),
        })),
        Format::Table => {
            if !changes.is_empty() {
                let mut table =
                    Table::new(["line", "principal", "action", "resource", "old", "new"]);
                for c in changes {
                    let action = c.spec.action.clone().unwrap_or_else(|| {
                        format!(
                            "{} {}",
                            c.spec.context.method.as_deref().unwrap_or("?"),
                            c.spec.context.path.as_deref().unwrap_or("/")
                        )
                    });
                    table.row([
                        c.line.to_string(),
                        c.spec.principal.clone(),
                        action,
                        c.spec.resource.clone(),
                        word(&c.old),
                        word(&c.new),
                    ]);
                }
                print!("{}", table.render());
            }
            println!(
                "{replayed} requests replayed ({} → {}): {} changed, {allowed} now allowed, {denied} now denied",
                old.revision(),
                new.revision(),
                changes.len()
            );
        }
    }
}
