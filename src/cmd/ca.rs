//! `ward ca`: create the CA, issue SVIDs to files, print and rotate the trust bundle.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use ward_identity::ca::{self, InitOptions, RotateOptions, Upstream};
use ward_identity::{Ca, SpiffeId, SvidSource, TrustDomain};

use crate::exit::{self, bad_input};
use crate::output::{self, Format, Table};

/// `ward ca …`
#[derive(Debug, Subcommand)]
pub(crate) enum CaCommand {
    /// Create a CA: a self-signed ECDSA P-256 root, or an intermediate under an existing CA.
    Init(InitArgs),
    /// Issue an X.509-SVID into files (svid.pem, svid.key, bundle.pem) for tools that want files.
    Issue(IssueArgs),
    /// Issue a JWT-SVID and print it.
    Jwt(JwtArgs),
    /// Print the trust bundle (X.509 authorities as PEM, or the JWT keys as JWKS).
    Bundle(BundleArgs),
    /// Show the CA: trust domain, authorities and their expiry.
    Show(ShowArgs),
    /// Replace the root and JWT key; the old ones stay in the bundle for a grace period.
    Rotate(RotateArgs),
}

/// Where the CA lives.
#[derive(Debug, Args)]
pub(crate) struct DirArg {
    /// The CA directory (holds ca.json, mode 0600).
    #[arg(
        long,
        value_name = "DIR",
        env = "WARD_CA_DIR",
        default_value = "ward-data/ca"
    )]
    dir: PathBuf,
}

/// An upstream CA to chain under.
#[derive(Debug, Args)]
pub(crate) struct UpstreamArgs {
    /// PEM certificate of the upstream CA (then its chain up to the root).
    #[arg(long, value_name = "FILE", requires = "upstream_key")]
    upstream_cert: Option<PathBuf>,
    /// PEM (PKCS#8) key of the upstream CA.
    #[arg(long, value_name = "FILE", requires = "upstream_cert")]
    upstream_key: Option<PathBuf>,
}

/// Options of `ward ca init`.
#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    #[command(flatten)]
    dir: DirArg,
    /// The trust domain, e.g. `example.org`.
    #[arg(long, value_name = "NAME")]
    trust_domain: String,
    /// Lifetime of the CA certificate (e.g. `365d`).
    #[arg(long, value_name = "DURATION", default_value = "365d", value_parser = humantime::parse_duration)]
    ttl: Duration,
    #[command(flatten)]
    upstream: UpstreamArgs,
}

/// Options of `ward ca issue`.
#[derive(Debug, Args)]
pub(crate) struct IssueArgs {
    #[command(flatten)]
    dir: DirArg,
    /// The SPIFFE id to issue, e.g. `spiffe://example.org/ns/shop/sa/checkout`.
    #[arg(long, value_name = "ID")]
    spiffe_id: String,
    /// Directory to write svid.pem, svid.key (0600) and bundle.pem into.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Lifetime of the SVID.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
}

/// Options of `ward ca jwt`.
#[derive(Debug, Args)]
pub(crate) struct JwtArgs {
    #[command(flatten)]
    dir: DirArg,
    /// The SPIFFE id (`sub`).
    #[arg(long, value_name = "ID")]
    spiffe_id: String,
    /// An audience (`aud`); repeat for several.
    #[arg(long, value_name = "AUD", required = true)]
    audience: Vec<String>,
    /// Lifetime of the token.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    ttl: Duration,
}

/// Bundle encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BundleFormat {
    /// X.509 authorities, PEM.
    Pem,
    /// JWT-SVID keys, JWKS JSON.
    Jwks,
}

/// Options of `ward ca bundle`.
#[derive(Debug, Args)]
pub(crate) struct BundleArgs {
    #[command(flatten)]
    dir: DirArg,
    /// What to print.
    #[arg(long, value_enum, default_value_t = BundleFormat::Pem)]
    format: BundleFormat,
    /// Write to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// Options of `ward ca show`.
#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    #[command(flatten)]
    dir: DirArg,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// Options of `ward ca rotate`.
#[derive(Debug, Args)]
pub(crate) struct RotateArgs {
    #[command(flatten)]
    dir: DirArg,
    /// How long the old root and JWT key stay trusted (at least the longest SVID TTL).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Lifetime of the new CA certificate.
    #[arg(long, value_name = "DURATION", default_value = "365d", value_parser = humantime::parse_duration)]
    ttl: Duration,
    #[command(flatten)]
    upstream: UpstreamArgs,
}

/// Runs `ward ca …`.
pub(crate) fn run(cmd: CaCommand) -> anyhow::Result<ExitCode> {
    ward_identity::install_crypto_provider();
    match cmd {
        CaCommand::Init(args) => init(args),
        CaCommand::Issue(args) => issue(args),
        CaCommand::Jwt(args) => jwt(args),
        CaCommand::Bundle(args) => bundle(args),
        CaCommand::Show(args) => show(args),
        CaCommand::Rotate(args) => rotate(args),
    }
}

fn init(args: InitArgs) -> anyhow::Result<ExitCode> {
    let trust_domain = TrustDomain::parse(&args.trust_domain).map_err(|e| {
        bad_input(anyhow::anyhow!(
            "--trust-domain `{}`: {e}",
            args.trust_domain
        ))
    })?;
    let opts = InitOptions {
        trust_domain,
        ttl: args.ttl,
        upstream: upstream(args.upstream),
    };
    let ca = Ca::init(&args.dir.dir, &opts).map_err(classify)?;
    print_summary(&ca, Format::Table);
    Ok(exit::OK)
}

fn issue(args: IssueArgs) -> anyhow::Result<ExitCode> {
    let id = parse_id(&args.spiffe_id)?;
    let ca = Ca::load(&args.dir.dir).map_err(classify)?;
    let svid = ca.issue_x509(&id, args.ttl).map_err(classify)?;
    fs::create_dir_all(&args.out).with_context(|| format!("creating `{}`", args.out.display()))?;
    write_file(
        &args.out.join("svid.pem"),
        svid.cert_chain_pem().as_bytes(),
        0o644,
    )?;
    write_file(
        &args.out.join("svid.key"),
        svid.private_key_pem().as_bytes(),
        0o600,
    )?;
    write_file(
        &args.out.join("bundle.pem"),
        ca.bundle().to_pem().as_bytes(),
        0o644,
    )?;
    let mut table = Table::new(["field", "value"]);
    table
        .row(["spiffe id", svid.spiffe_id.as_str()])
        .row([
            "expires",
            &humantime::format_rfc3339_seconds(svid.not_after).to_string(),
        ])
        .row([
            "renew at",
            &humantime::format_rfc3339_seconds(svid.renew_at()).to_string(),
        ])
        .row([
            "files",
            &format!("{}/{{svid.pem,svid.key,bundle.pem}}", args.out.display()),
        ]);
    print!("{}", table.render());
    Ok(exit::OK)
}

fn jwt(args: JwtArgs) -> anyhow::Result<ExitCode> {
    let id = parse_id(&args.spiffe_id)?;
    let ca = Ca::load(&args.dir.dir).map_err(classify)?;
    let token = ca
        .issue_jwt(&id, &args.audience, args.ttl)
        .map_err(classify)?;
    println!("{}", token.token);
    Ok(exit::OK)
}

fn bundle(args: BundleArgs) -> anyhow::Result<ExitCode> {
    let ca = Ca::load(&args.dir.dir).map_err(classify)?;
    let bundle = ca.bundle();
    let text = match args.format {
        BundleFormat::Pem => bundle.to_pem(),
        BundleFormat::Jwks => bundle.jwks_json() + "\n",
    };
    match args.out {
        Some(path) => write_file(&path, text.as_bytes(), 0o644)?,
        None => print!("{text}"),
    }
    Ok(exit::OK)
}

fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let ca = Ca::load(&args.dir.dir).map_err(classify)?;
    print_summary(&ca, args.format);
    Ok(exit::OK)
}

fn rotate(args: RotateArgs) -> anyhow::Result<ExitCode> {
    let opts = RotateOptions {
        grace: args.grace,
        ttl: args.ttl,
        upstream: upstream(args.upstream),
    };
    let ca = Ca::rotate(&args.dir.dir, opts).map_err(classify)?;
    print_summary(&ca, Format::Table);
    Ok(exit::OK)
}

fn print_summary(ca: &Ca, format: Format) {
    let bundle = ca.bundle();
    let expires = humantime::format_rfc3339_seconds(ca.not_after()).to_string();
    let authorities: Vec<(String, String)> = bundle
        .x509_authorities()
        .iter()
        .map(|der| describe(der))
        .collect();
    let kids: Vec<&str> = bundle.jwt_keys().iter().map(|k| k.kid.as_str()).collect();
    match format {
        Format::Json => output::print_json(&serde_json::json!({
            "trust_domain": ca.trust_domain().as_str(),
            "dir": ca.dir(),
            "ca_expires": expires,
            "x509_authorities": authorities
                .iter()
                .map(|(s, e)| serde_json::json!({"subject": s, "expires": e}))
                .collect::<Vec<_>>(),
            "jwt_key_ids": kids,
        })),
        Format::Table => {
            let mut table = Table::new(["field", "value"]);
            table
                .row(["trust domain", ca.trust_domain().as_str()])
                .row(["directory", &ca.dir().display().to_string()])
                .row(["CA expires", &expires]);
            for (subject, not_after) in &authorities {
                table.row([
                    "X.509 authority".to_owned(),
                    format!("{subject} (expires {not_after})"),
                ]);
            }
            for kid in kids {
                table.row(["JWT key id", kid]);
            }
            print!("{}", table.render());
        }
    }
}

fn describe(der: &[u8]) -> (String, String) {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => {
            let secs = cert.validity().not_after.timestamp().max(0) as u64;
            let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            (
                cert.subject().to_string(),
                humantime::format_rfc3339_seconds(not_after).to_string(),
            )
        }
        Err(e) => (format!("unparsable certificate: {e}"), String::new()),
    }
}

fn upstream(args: UpstreamArgs) -> Option<Upstream> {
    match (args.upstream_cert, args.upstream_key) {
        (Some(cert_path), Some(key_path)) => Some(Upstream {
            cert_path,
            key_path,
        }),
        // clap's `requires` makes the flags come as a pair.
        _ => None,
    }
}

fn parse_id(input: &str) -> anyhow::Result<SpiffeId> {
    SpiffeId::parse(input).map_err(|e| bad_input(anyhow::anyhow!("--spiffe-id `{input}`: {e}")))
}

/// Errors the operator can fix by changing the command are bad input (exit 2).
fn classify(err: ca::CaError) -> anyhow::Error {
    match err {
        ca::CaError::AlreadyExists(_)
        | ca::CaError::NotFound(_)
        | ca::CaError::InsecurePermissions { .. }
        | ca::CaError::Upstream(_)
        | ca::CaError::ForeignTrustDomain { .. }
        | ca::CaError::Validity(_) => bad_input(err),
        other => anyhow::Error::new(other),
    }
}

/// Writes a file atomically with `mode` (0600 for keys).
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating `{}`", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing `{}`", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("writing `{}`", path.display()))
}
