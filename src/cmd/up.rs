//! `ward up`: the whole mesh on one machine, from embedded defaults or one YAML file.
//!
//! It brings up the CA (created in `<data_dir>/ca` on first run) and the Workload API agent on
//! `<data_dir>/agent.sock`, with a registration entry that gives the current user's processes
//! `spiffe://<trust-domain>/ns/default/sa/<user>`, and then the demo mesh ([`mesh`]): six
//! services, each a small app behind its own proxy, deciding calls with the policy repository
//! in `<data_dir>/policies` and auditing to `<data_dir>/audit.db`. Gateways and the control
//! plane join here as their crates land.

use std::future::Future;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use serde::Deserialize;
use tokio::task::JoinHandle;
use ward_identity::ca::{self, InitOptions};
use ward_identity::{Ca, SvidSource as _, TrustDomain};

use crate::cli::UpArgs;
use crate::cmd::agent::{self, AgentArgs, Paths};
use crate::config::{self, ConfigError, Env, Overrides, ProcessEnv};
use crate::exit;
use crate::output::{Format, Table};
use crate::signals::Signals;

mod app;
mod mesh;
mod policies;

use mesh::Mesh;

/// Configuration of `ward up` (documented in docs/CONFIG.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct UpConfig {
    /// Where the CA, databases and sockets live.
    pub(crate) data_dir: PathBuf,
    /// The SPIFFE trust domain of the local mesh.
    pub(crate) trust_domain: String,
    /// Run the demo services behind their proxies (off: only the CA and the Workload API).
    pub(crate) demo: bool,
}

/// What `ward up` prints once everything listens.
struct Summary<'a> {
    data_dir: &'a Path,
    paths: &'a Paths,
    trust_domain: &'a TrustDomain,
    default_id: &'a str,
    mesh: Option<&'a Mesh>,
}

/// What `ward up` runs once it has started.
struct Running {
    agent: JoinHandle<Result<(), ward_identity::workload_api::Error>>,
    stop_agent: tokio::sync::watch::Sender<bool>,
    reloader: agent::Reloader,
    mesh: Option<Mesh>,
}

// === impl UpConfig ===

impl Default for UpConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("ward-data"),
            trust_domain: "ward.local".to_owned(),
            demo: true,
        }
    }
}

impl Overrides for UpConfig {
    fn apply_env(&mut self, env: &dyn Env) -> Result<(), ConfigError> {
        config::override_path(env, config::ENV_DATA_DIR, &mut self.data_dir);
        Ok(())
    }
}

// === impl Running ===

impl Running {
    /// Serves until `shutdown` (or until the Workload API fails), reloading on SIGHUP; then
    /// drains the proxies first, while the Workload API still serves their SVIDs, and stops it.
    async fn serve(
        mut self,
        mut hangup: tokio::signal::unix::Signal,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        let agent_result = loop {
            tokio::select! {
                () = &mut shutdown => break None,
                result = &mut self.agent => break Some(result),
                _ = hangup.recv() => {
                    self.reloader.reload();
                    if let Some(mesh) = &self.mesh {
                        mesh.reload_policies();
                    }
                }
            }
        };
        let mesh_result = match self.mesh {
            Some(mesh) => mesh.stop().await,
            None => Ok(()),
        };
        self.stop_agent.send_replace(true);
        let agent_result = match agent_result {
            Some(result) => result,
            None => self.agent.await,
        };
        agent_result
            .context("the Workload API task panicked")?
            .context("Workload API server")?;
        mesh_result
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
    let paths = Paths::under(&cfg.data_dir);
    ensure_ca(&paths.ca_dir, &trust_domain)?;
    let (uid, default_id) = ensure_entries(&paths.entries, &trust_domain)?;
    let demo_entries = if cfg.demo {
        if policies::ensure(&mesh::policies_dir(&cfg.data_dir), &trust_domain)? {
            tracing::info!("wrote the demo policy repository");
        }
        mesh::entries(&trust_domain, uid)?
    } else {
        Vec::new()
    };

    let agent_args = AgentArgs {
        config: None,
        socket: Some(paths.socket.clone()),
        ca_dir: Some(paths.ca_dir.clone()),
        entries: Some(paths.entries.clone()),
    };
    let (server, reloader) = agent::build(&agent_args, demo_entries)?;
    // Handlers before the socket exists, so a signal sent as soon as it appears is not lost;
    // the socket before the mesh, so one in use fails here and not after the table.
    let (hangup, shutdown) = Signals::install()?.split();
    let listening = server.bind().context("Workload API server")?;
    let (stop_agent, mut agent_stopped) = tokio::sync::watch::channel(false);
    let agent = tokio::spawn(listening.run(async move {
        let _ = agent_stopped.wait_for(|stop| *stop).await;
    }));
    let mesh = if cfg.demo {
        match Mesh::start(&cfg.data_dir, &trust_domain, &paths.socket).await {
            Ok(mesh) => Some(mesh),
            Err(err) => {
                stop_agent.send_replace(true);
                let _ = agent.await;
                return Err(err);
            }
        }
    } else {
        None
    };
    let summary = Summary {
        data_dir: &cfg.data_dir,
        paths: &paths,
        trust_domain: &trust_domain,
        default_id: &default_id,
        mesh: mesh.as_ref(),
    };
    match args.format {
        Format::Table => summary.print_tables(),
        Format::Json => summary.print_json(),
    }
    let running = Running {
        agent,
        stop_agent,
        reloader,
        mesh,
    };
    running.serve(hangup, shutdown).await?;
    Ok(exit::OK)
}

// === impl Summary ===

impl Summary<'_> {
    /// What runs where as one line of JSON, for scripts that start `ward up` and read stdout.
    fn print_json(&self) {
        let demo = self.mesh.is_some();
        let value = serde_json::json!({
            "trust_domain": self.trust_domain.to_string(),
            "ca_dir": self.paths.ca_dir,
            "workload_api": self.workload_api(),
            "default_spiffe_id": self.default_id,
            "entries": self.paths.entries,
            "policies": demo.then(|| mesh::policies_dir(self.data_dir)),
            "audit_store": demo.then(|| mesh::audit_store(self.data_dir)),
            "services": self.mesh.map(Mesh::to_json).unwrap_or_default(),
        });
        println!("{value}");
        let _ = std::io::Write::flush(&mut std::io::stdout());
    }

    /// The tables of what runs where, and commands to try.
    fn print_tables(&self) {
        let mut table = Table::new(["component", "state", "where"]);
        table
            .row([
                "CA".to_owned(),
                format!("trust domain {}", self.trust_domain),
                self.paths.ca_dir.display().to_string(),
            ])
            .row([
                "Workload API".to_owned(),
                "serving".to_owned(),
                self.workload_api(),
            ])
            .row([
                "your processes".to_owned(),
                format!("get {}", self.default_id),
                self.paths.entries.display().to_string(),
            ]);
        if self.mesh.is_some() {
            table
                .row([
                    "policies".to_owned(),
                    "loaded (SIGHUP reloads)".to_owned(),
                    mesh::policies_dir(self.data_dir).display().to_string(),
                ])
                .row([
                    "audit log".to_owned(),
                    "one hash chain per service".to_owned(),
                    mesh::audit_store(self.data_dir),
                ]);
        }
        print!("{}", table.render());
        if let Some(mesh) = self.mesh {
            println!();
            print!("{}", mesh.table().render());
            println!();
            for line in mesh.try_lines() {
                println!("{line}");
            }
        }
        println!(
            "SPIFFE clients: SPIFFE_ENDPOINT_SOCKET={}; stop with Ctrl-C",
            self.workload_api()
        );
        let _ = std::io::Write::flush(&mut std::io::stdout());
    }

    fn workload_api(&self) -> String {
        format!("unix://{}", self.paths.socket.display())
    }
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

/// Writes a registration entry for the current user on first run; returns the user's uid and
/// the id the entry grants.
fn ensure_entries(path: &Path, trust_domain: &TrustDomain) -> anyhow::Result<(u32, String)> {
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
    Ok((uid, id))
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
