//! `ward authz serve`: serve authorization decisions over Envoy ext_authz gRPC and a JSON API.
//!
//! Prints `listening on http=ADDR grpc=ADDR` on stdout once both listeners are bound (port 0
//! picks free ports). Reloads the policy directories when they change and on SIGHUP; a bad
//! edit is logged and the last good revision keeps serving. SIGTERM or Ctrl-C drain and exit 0.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde::Deserialize;
use ward_audit::{AuditKey, Auditor, Store};
use ward_authz::reload::Reloader;
use ward_authz::server::{self, Inputs, Server};
use ward_authz::{Authorizer, Modes, PolicyEngine, Snapshot};

use crate::config::{self, ConfigError, Env, Overrides, ProcessEnv, StoreUrl};
use crate::exit;
use crate::signals::Signals;

/// How long changes to a policy directory must settle before it is loaded again.
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(200);

/// `ward authz …`
#[derive(Debug, Subcommand)]
pub(crate) enum AuthzCommand {
    /// Serve decisions: Envoy ext_authz gRPC, `POST /v1/check`, `/ready`, `/metrics`.
    Serve(ServeArgs),
}

/// Options of `ward authz serve`; each flag overrides the config file.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The enforced policy repository (required here or as `policies` in the config file).
    #[arg(long, value_name = "DIR")]
    pub(crate) policies: Option<PathBuf>,
    /// A candidate policy repository evaluated in shadow next to the enforced one.
    #[arg(long, value_name = "DIR")]
    pub(crate) candidate: Option<PathBuf>,
    /// The JSON API and admin address (default 127.0.0.1:15081; port 0 picks one).
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<SocketAddr>,
    /// The Envoy ext_authz gRPC address (default 127.0.0.1:15082; port 0 picks one).
    #[arg(long, value_name = "ADDR")]
    pub(crate) grpc_listen: Option<SocketAddr>,
    /// Record every decision: `sqlite://PATH`, `postgres://…`, `jsonl://PATH` or `stdout`.
    #[arg(long, value_name = "URL")]
    pub(crate) audit: Option<String>,
    /// Configuration file (YAML); defaults are used when omitted.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
}

/// Configuration of `ward authz serve` (documented in docs/CONFIG.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AuthzConfig {
    /// Base of the audit spool and key paths.
    pub(crate) data_dir: PathBuf,
    /// The enforced policy repository.
    pub(crate) policies: Option<PathBuf>,
    /// A candidate repository evaluated in shadow.
    pub(crate) candidate: Option<PathBuf>,
    /// The JSON API and admin listener.
    pub(crate) listen: SocketAddr,
    /// The ext_authz gRPC listener.
    pub(crate) grpc_listen: SocketAddr,
    /// Per-service modes.
    pub(crate) modes: Modes,
    /// The audit store URL; no auditing when unset.
    pub(crate) audit: Option<StoreUrl>,
    /// Fail requests closed when their audit record cannot be made durable.
    pub(crate) audit_strict: bool,
    /// The checkpoint signing key; `<data_dir>/audit.key` when unset.
    pub(crate) audit_key: Option<PathBuf>,
    /// This node's name in audit records (its hash chain); `authz-<hostname>` when unset.
    pub(crate) node: Option<String>,
    /// How long in-flight requests may take after SIGTERM.
    #[serde(deserialize_with = "config::duration")]
    pub(crate) drain_timeout: Duration,
    /// Reload when a policy directory changes (SIGHUP always reloads).
    pub(crate) watch: bool,
}

/// The configuration after flags, with every default filled in.
#[derive(Debug, Clone)]
struct Resolved {
    policies: PathBuf,
    candidate: Option<PathBuf>,
    listen: SocketAddr,
    grpc_listen: SocketAddr,
    modes: Modes,
    audit: Option<String>,
    audit_strict: bool,
    audit_key: PathBuf,
    spool_dir: PathBuf,
    node: String,
    drain_timeout: Duration,
    watch: bool,
}

// === impl AuthzConfig ===

impl Default for AuthzConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("ward-data"),
            policies: None,
            candidate: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 15081)),
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 15082)),
            modes: Modes::default(),
            audit: None,
            audit_strict: false,
            audit_key: None,
            node: None,
            drain_timeout: Duration::from_secs(10),
            watch: true,
        }
    }
}

impl Overrides for AuthzConfig {
    fn apply_env(&mut self, env: &dyn Env) -> Result<(), ConfigError> {
        config::override_path(env, config::ENV_DATA_DIR, &mut self.data_dir);
        Ok(())
    }
}

impl AuthzConfig {
    /// Applies the command-line flags and fills in defaults.
    fn resolve(self, args: &ServeArgs) -> anyhow::Result<Resolved> {
        let policies = args.policies.clone().or(self.policies).context(
            "no policy repository: pass `--policies DIR` or set `policies` in the config file",
        )?;
        Ok(Resolved {
            policies,
            candidate: args.candidate.clone().or(self.candidate),
            listen: args.listen.unwrap_or(self.listen),
            grpc_listen: args.grpc_listen.unwrap_or(self.grpc_listen),
            modes: self.modes,
            audit: args.audit.clone().or(self.audit.map(StoreUrl::into_inner)),
            audit_strict: self.audit_strict,
            audit_key: self
                .audit_key
                .unwrap_or_else(|| self.data_dir.join("audit.key")),
            spool_dir: self.data_dir.join("audit-spool"),
            node: self.node.unwrap_or_else(default_node),
            drain_timeout: self.drain_timeout,
            watch: self.watch,
        })
    }
}

/// `authz-<hostname>`, so several servers writing one store keep separate chains.
fn default_node() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    match host.trim() {
        "" => "authz".to_owned(),
        host => format!("authz-{host}"),
    }
}

/// Runs `ward authz …`.
pub(crate) async fn run(cmd: AuthzCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuthzCommand::Serve(args) => serve(args).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let cfg = load(&args, &ProcessEnv).map_err(exit::bad_input)?;
    tracing::info!(
        policies = %cfg.policies.display(),
        candidate = ?cfg.candidate,
        listen = %cfg.listen,
        grpc_listen = %cfg.grpc_listen,
        modes = ?cfg.modes,
        audit = cfg.audit.as_deref().map(ward_audit::store::redact),
        node = %cfg.node,
        "resolved configuration"
    );
    let engine = PolicyEngine::new(load_policies(&cfg.policies)?);
    let authorizer = Arc::new(Authorizer::new(
        Arc::new(engine),
        cfg.modes.clone(),
        &cfg.node,
    ));
    if let Some(dir) = &cfg.candidate {
        authorizer.set_candidate(Some(load_policies(dir)?));
    }
    let reloader = Arc::new(Reloader::new(
        authorizer.clone(),
        cfg.policies.clone(),
        cfg.candidate.clone(),
    ));
    let (auditor, writer) = match &cfg.audit {
        Some(url) => {
            let (auditor, task) = open_auditor(url, &cfg).await?;
            (Some(auditor), Some(task))
        }
        None => (None, None),
    };

    // Handlers go in before the listeners exist, so a signal sent once the address is printed
    // is never lost.
    let (mut hangup, shutdown) = Signals::install()?.split();
    let server_cfg = server::Config {
        http_listen: cfg.listen,
        grpc_listen: cfg.grpc_listen,
        drain_timeout: cfg.drain_timeout,
    };
    let inputs = Inputs {
        authorizer,
        reloader: reloader.clone(),
        auditor: auditor.clone(),
    };
    let server = Server::bind(&server_cfg, inputs).await?;
    let _watch = if cfg.watch {
        let watch = reloader
            .watch(RELOAD_DEBOUNCE)
            .context("watching the policy directories")?;
        Some(watch)
    } else {
        None
    };
    announce(&server)?;

    let serve = server.run(shutdown);
    tokio::pin!(serve);
    let result = loop {
        tokio::select! {
            result = &mut serve => break result,
            _ = hangup.recv() => {
                tracing::info!("SIGHUP received: reloading policies");
                let reloader = reloader.clone();
                tokio::task::spawn_blocking(move || reloader.reload_all()).await?;
            }
        }
    };
    finish_audit(auditor, writer).await;
    result.context("authz service")?;
    Ok(exit::OK)
}

/// The file (if any), then the environment, then the flags.
fn load(args: &ServeArgs, env: &dyn Env) -> anyhow::Result<Resolved> {
    let cfg = config::load_or_default::<AuthzConfig>(args.config.as_deref(), env)?;
    cfg.resolve(args)
}

/// Loads a repository at startup; every problem is logged, and the command exits 2.
fn load_policies(dir: &Path) -> anyhow::Result<Snapshot> {
    Snapshot::load(dir).map_err(|e| {
        for problem in e.problems() {
            tracing::error!(%problem, "policy problem");
        }
        exit::bad_input(
            anyhow::Error::new(e)
                .context(format!("loading the policy repository `{}`", dir.display())),
        )
    })
}

async fn open_auditor(
    url: &str,
    cfg: &Resolved,
) -> anyhow::Result<(Auditor, tokio::task::JoinHandle<()>)> {
    let store = match Store::open(url).await {
        Ok(store) => store,
        Err(ward_audit::Error::Invalid(msg)) => return Err(exit::bad_input(anyhow::anyhow!(msg))),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "opening the audit store `{}`",
                ward_audit::store::redact(url)
            )));
        }
    };
    let key = AuditKey::load_or_create(&cfg.audit_key)
        .with_context(|| format!("audit key `{}`", cfg.audit_key.display()))?;
    let writer_cfg = ward_audit::Config {
        strict: cfg.audit_strict,
        ..ward_audit::Config::new(&cfg.node, cfg.spool_dir.clone())
    };
    Ok(Auditor::spawn(store, Some(Arc::new(key)), writer_cfg).await?)
}

/// Writes what the auditor holds and waits for its writer to stop.
async fn finish_audit(auditor: Option<Auditor>, writer: Option<tokio::task::JoinHandle<()>>) {
    if let Some(auditor) = auditor {
        match auditor.flush().await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("audit records remain in the spool; they replay on the next start")
            }
            Err(e) => tracing::error!(error = %e, "flushing the audit log"),
        }
    }
    if let Some(writer) = writer {
        // Handlers may still hold clones for a moment; the writer ends when the last drops.
        if tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .is_err()
        {
            tracing::warn!("the audit writer did not stop within 5s");
        }
    }
}

/// Prints the bound addresses as one line, for people and for tests using port 0.
fn announce(server: &Server) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "listening on http={} grpc={}",
        server.http_addr(),
        server.grpc_addr()
    )?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MapEnv;
    use ward_authz::Mode;

    fn args(config: Option<&Path>) -> ServeArgs {
        ServeArgs {
            policies: None,
            candidate: None,
            listen: None,
            grpc_listen: None,
            audit: None,
            config: config.map(Path::to_owned),
        }
    }

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("authz.yaml");
        std::fs::write(&file, text).unwrap();
        (dir, file)
    }

    #[test]
    fn policies_are_required() {
        let err = load(&args(None), &MapEnv::default()).unwrap_err();
        assert!(err.to_string().contains("--policies"), "{err}");
    }

    #[test]
    fn defaults_and_flags() {
        let mut a = args(None);
        a.policies = Some(PathBuf::from("p"));
        let cfg = load(&a, &MapEnv::from([("WARD_DATA_DIR", "/d")])).unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:15081".parse().unwrap());
        assert_eq!(cfg.grpc_listen, "127.0.0.1:15082".parse().unwrap());
        assert_eq!(cfg.audit_key, Path::new("/d/audit.key"));
        assert_eq!(cfg.spool_dir, Path::new("/d/audit-spool"));
        assert_eq!(cfg.modes, Modes::default());
        assert!(cfg.audit.is_none());
        assert!(cfg.node.starts_with("authz"));
        assert_eq!(cfg.drain_timeout, Duration::from_secs(10));
        assert!(cfg.watch);
    }

    #[test]
    fn the_file_sets_everything_and_flags_win() {
        let (_dir, file) = write(
            "policies: /etc/ward/policies\ncandidate: /etc/ward/next\nlisten: 127.0.0.1:1\n\
             grpc_listen: 127.0.0.1:2\nmodes:\n  default: enforce\n  services:\n    orders-api: dry-run\n\
             audit: sqlite:///var/lib/ward/audit.db\naudit_strict: true\nnode: n1\ndrain_timeout: 500ms\n\
             watch: false\n",
        );
        let cfg = load(&args(Some(&file)), &MapEnv::default()).unwrap();
        assert_eq!(cfg.policies, Path::new("/etc/ward/policies"));
        assert_eq!(cfg.candidate.as_deref(), Some(Path::new("/etc/ward/next")));
        assert_eq!(cfg.modes.of(Some("orders-api")), Mode::DryRun);
        assert!(cfg.audit_strict);
        assert_eq!(cfg.node, "n1");
        assert_eq!(cfg.drain_timeout, Duration::from_millis(500));
        assert!(!cfg.watch);

        let mut a = args(Some(&file));
        a.policies = Some(PathBuf::from("/flag"));
        a.listen = Some("127.0.0.1:0".parse().unwrap());
        a.audit = Some("stdout".to_owned());
        let cfg = load(&a, &MapEnv::default()).unwrap();
        assert_eq!(cfg.policies, Path::new("/flag"));
        assert_eq!(cfg.listen.port(), 0);
        assert_eq!(cfg.grpc_listen.port(), 2);
        assert_eq!(cfg.audit.as_deref(), Some("stdout"));
    }

    #[test]
    fn bad_fields_name_the_line() {
        for (text, want) in [
            ("polices: /x\n", ":1:1: unknown field `polices`"),
            (
                "modes:\n  default: shadow\n",
                ":2:12: modes.default: unknown variant `shadow`",
            ),
            (
                "drain_timeout: soon\n",
                ":1:16: drain_timeout: invalid duration `soon`",
            ),
            ("listen: nowhere\n", ":1:9: listen: invalid socket address"),
        ] {
            let (_dir, file) = write(text);
            let err = load(&args(Some(&file)), &MapEnv::default()).unwrap_err();
            assert!(format!("{err:#}").contains(want), "{text:?}: {err:#}");
        }
    }
}
