//! `ward up`: the whole mesh on one machine, from embedded defaults or one YAML file.
//!
//! Today it brings up the identity layer: the CA (created in `<data_dir>/ca` on first run) and
//! the Workload API agent on `<data_dir>/agent.sock`, with a registration entry that gives the
//! current user's processes `spiffe://<trust-domain>/ns/default/sa/<user>`. Proxies, gateways
//! and the demo services join here as their crates land.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use serde::Deserialize;
use ward_identity::ca::{self, InitOptions};
use ward_identity::{Ca, SvidSource as _, TrustDomain};

use crate::cli::UpArgs;
use crate::cmd::agent::{self, AgentArgs};
use crate::config::{self, ConfigError, Env, Overrides, ProcessEnv};
use crate::exit;
use crate::output::Table;

/// Configuration of `ward up` (documented in docs/CONFIG.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct UpConfig {
    /// Where the CA, databases and sockets live.
    pub(crate) data_dir: PathBuf,
    /// The SPIFFE trust domain of the local mesh.
    pub(crate) trust_domain: String,
}

impl Default for UpConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("ward-data"),
            trust_domain: "ward.local".to_owned(),
        }
    }
}

impl Overrides for UpConfig {
    fn apply_env(&mut self, env: &dyn Env) -> Result<(), ConfigError> {
        config::override_path(env, config::ENV_DATA_DIR, &mut self.data_dir);
        Ok(())
    }
}

/// Runs `ward up`.
pub(crate) async fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    ward_identity::install_crypto_provider();
    let cfg = config::load_or_default::<UpConfig>(args.config.as_deref(), &ProcessEnv)
        .map_err(exit::bad_input)?;
    tracing::info!(?cfg, "resolved configuration");
    let trust_domain = TrustDomain::parse(&cfg.trust_domain).map_err(|e| {
        exit::bad_input(anyhow::anyhow!("trust_domain `{}`: {e}", cfg.trust_domain))
    })?;
    let ca_dir = cfg.data_dir.join("ca");
    let socket = cfg.data_dir.join("agent.sock");
    let entries = cfg.data_dir.join("entries.yaml");
    ensure_ca(&ca_dir, &trust_domain)?;
    let default_id = ensure_entries(&entries, &trust_domain)?;

    let mut table = Table::new(["component", "state", "where"]);
    table
        .row([
            "CA".to_owned(),
            format!("trust domain {trust_domain}"),
            ca_dir.display().to_string(),
        ])
        .row([
            "Workload API".to_owned(),
            "serving".to_owned(),
            format!("unix://{}", socket.display()),
        ])
        .row([
            "your processes".to_owned(),
            format!("get {default_id}"),
            entries.display().to_string(),
        ]);
    print!("{}", table.render());
    println!(
        "try: SPIFFE_ENDPOINT_SOCKET=unix://{} <any SPIFFE client>; stop with Ctrl-C",
        socket.display()
    );

    agent::run(AgentArgs {
        config: None,
        socket: Some(socket),
        ca_dir: Some(ca_dir),
        entries: Some(entries),
    })
    .await
}

/// Loads the CA, creating it on first run; a CA of another trust domain is a config error.
fn ensure_ca(dir: &Path, trust_domain: &TrustDomain) -> anyhow::Result<Ca> {
    let ca = if dir.join("ca.json").exists() {
        Ca::load(dir).map_err(exit::bad_input)?
    } else {
        let opts = InitOptions {
            trust_domain: trust_domain.clone(),
            ttl: ca::DEFAULT_CA_TTL,
            upstream: None,
        };
        let ca = Ca::init(dir, &opts).map_err(exit::bad_input)?;
        tracing::info!(dir = %dir.display(), "created a new CA");
        ca
    };
    if ca.trust_domain() != trust_domain {
        return Err(exit::bad_input(anyhow::anyhow!(
            "the CA in `{}` is for trust domain `{}`, not `{trust_domain}`: use another data_dir",
            dir.display(),
            ca.trust_domain()
        )));
    }
    Ok(ca)
}

/// Writes a registration entry for the current user on first run; returns the id it grants.
fn ensure_entries(path: &Path, trust_domain: &TrustDomain) -> anyhow::Result<String> {
    // The data dir is ours, so its owner is the user running `ward up`.
    let uid = std::fs::metadata(path.parent().unwrap_or(Path::new(".")))
        .context("reading the data directory")?
        .uid();
    let user = user_name(uid).unwrap_or_else(|| format!("uid-{uid}"));
    let id = format!("spiffe://{trust_domain}/ns/default/sa/{user}");
    if !path.exists() {
        let text = format!(
            "# Registration entries: which local processes get which SPIFFE id.\n\
             # Written by `ward up` on first run; edit freely (see docs/CONFIG.md).\n\
             - spiffe_id: {id}\n  selectors: [\"unix:uid:{uid}\"]\n"
        );
        std::fs::write(path, text).with_context(|| format!("writing `{}`", path.display()))?;
    }
    Ok(id)
}

/// The login name of `uid` from /etc/passwd, if it is a valid SPIFFE path segment.
fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == uid.to_string())
        .map(|f| f[0].to_owned())
        .filter(|name| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        })
}
