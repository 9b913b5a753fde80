//! `ward agent`: serve the SPIFFE Workload API to this machine's workloads over a Unix socket.
//!
//! Runs until SIGTERM or Ctrl-C (then removes its socket and exits 0). SIGHUP reloads the CA
//! from `ca_dir` and pushes the new bundle (and, if the X.509 roots changed, new SVIDs) to every
//! open stream; a CA that fails to load is logged and the old one stays.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Deserialize;
use ward_identity::Ca;
use ward_identity::ca::{DEFAULT_JWT_TTL, DEFAULT_SVID_TTL};
use ward_identity::workload_api::{self, Entries, Entry, Server, SourceUpdater};

use crate::config::{self, ConfigError, Env, Overrides, ProcessEnv};
use crate::exit;
use crate::signals::Signals;

/// Overrides the Workload API socket path of `ward agent`.
pub(crate) const ENV_AGENT_SOCKET: &str = "WARD_AGENT_SOCKET";

/// Options of `ward agent`; each flag overrides the config file and the environment.
#[derive(Debug, Args)]
pub(crate) struct AgentArgs {
    /// Configuration file (YAML); defaults are used when omitted.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// The Unix socket to serve on (default `<data_dir>/agent.sock`; env `WARD_AGENT_SOCKET`).
    #[arg(long, value_name = "PATH")]
    pub(crate) socket: Option<PathBuf>,
    /// The CA directory made by `ward ca init` (default `<data_dir>/ca`).
    #[arg(long, value_name = "DIR")]
    pub(crate) ca_dir: Option<PathBuf>,
    /// The registration entries file (default `<data_dir>/entries.yaml`).
    #[arg(long, value_name = "FILE")]
    pub(crate) entries: Option<PathBuf>,
}

/// Configuration of `ward agent` (documented in docs/CONFIG.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AgentConfig {
    /// Where the unset paths below default to.
    pub(crate) data_dir: PathBuf,
    /// The Workload API socket; `<data_dir>/agent.sock` when unset.
    pub(crate) socket: Option<PathBuf>,
    /// The CA directory; `<data_dir>/ca` when unset.
    pub(crate) ca_dir: Option<PathBuf>,
    /// The registration entries file; `<data_dir>/entries.yaml` when unset.
    pub(crate) entries: Option<PathBuf>,
    /// Lifetime of X.509-SVIDs whose entry sets no `ttl`.
    #[serde(deserialize_with = "config::duration_at_least_1s")]
    pub(crate) default_ttl: Duration,
    /// Longest lifetime of a JWT-SVID.
    #[serde(deserialize_with = "config::duration_at_least_1s")]
    pub(crate) jwt_ttl: Duration,
}

/// Reloads the CA of a running server (on SIGHUP).
pub(crate) struct Reloader {
    ca_dir: PathBuf,
    updater: SourceUpdater,
}

/// The agent's files under a data dir, where they are unless configured otherwise.
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    /// The Workload API socket.
    pub(crate) socket: PathBuf,
    /// The CA directory.
    pub(crate) ca_dir: PathBuf,
    /// The registration entries file.
    pub(crate) entries: PathBuf,
}

/// The configuration with every path resolved.
#[derive(Debug, Clone)]
struct Resolved {
    socket: PathBuf,
    ca_dir: PathBuf,
    entries: PathBuf,
    default_ttl: Duration,
    jwt_ttl: Duration,
}

// === impl AgentConfig ===

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("ward-data"),
            socket: None,
            ca_dir: None,
            entries: None,
            default_ttl: DEFAULT_SVID_TTL,
            jwt_ttl: DEFAULT_JWT_TTL,
        }
    }
}

impl Overrides for AgentConfig {
    fn apply_env(&mut self, env: &dyn Env) -> Result<(), ConfigError> {
        config::override_path(env, config::ENV_DATA_DIR, &mut self.data_dir);
        if let Some(socket) = env.var(ENV_AGENT_SOCKET).filter(|v| !v.is_empty()) {
            self.socket = Some(PathBuf::from(socket));
        }
        Ok(())
    }
}

impl AgentConfig {
    /// Applies the command-line flags, then fills unset paths from `data_dir`.
    fn resolve(self, args: &AgentArgs) -> Resolved {
        let defaults = Paths::under(&self.data_dir);
        let pick = |flag: &Option<PathBuf>, field: Option<PathBuf>, default: PathBuf| {
            flag.clone().or(field).unwrap_or(default)
        };
        Resolved {
            socket: pick(&args.socket, self.socket, defaults.socket),
            ca_dir: pick(&args.ca_dir, self.ca_dir, defaults.ca_dir),
            entries: pick(&args.entries, self.entries, defaults.entries),
            default_ttl: self.default_ttl,
            jwt_ttl: self.jwt_ttl,
        }
    }
}

// === impl Paths ===

impl Paths {
    /// The default layout under `data_dir`.
    pub(crate) fn under(data_dir: &std::path::Path) -> Self {
        Self {
            socket: data_dir.join("agent.sock"),
            ca_dir: data_dir.join("ca"),
            entries: data_dir.join("entries.yaml"),
        }
    }
}

/// Runs `ward agent`.
pub(crate) async fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let (server, reloader) = build(&args, Vec::new())?;
    // Handlers are installed before the socket exists, so a signal sent as soon as the socket
    // appears is never lost.
    let (mut hangup, shutdown) = Signals::install()?.split();
    let serve = server.run(shutdown);
    tokio::pin!(serve);
    loop {
        tokio::select! {
            result = &mut serve => {
                result.context("Workload API server")?;
                return Ok(exit::OK);
            }
            _ = hangup.recv() => reloader.reload(),
        }
    }
}

/// Builds the Workload API server from the configuration and flags (every problem there is
/// bad input, exit 2), serving the entries file's entries and then `extra` (entries made in
/// code, e.g. `ward up`'s demo services). The socket is bound when the server runs.
pub(crate) fn build(args: &AgentArgs, extra: Vec<Entry>) -> anyhow::Result<(Server, Reloader)> {
    ward_identity::install_crypto_provider();
    let cfg = load(args, &ProcessEnv).map_err(exit::bad_input)?;
    tracing::info!(?cfg, "resolved configuration");

    let ca = load_ca(&cfg.ca_dir).map_err(exit::bad_input)?;
    let trust_domain = ward_identity::SvidSource::trust_domain(&ca);
    let mut entries = Entries::load(&cfg.entries, trust_domain).map_err(exit::bad_input)?;
    if !extra.is_empty() {
        let all = entries.all().iter().cloned().chain(extra).collect();
        entries = Entries::new(trust_domain.clone(), all).map_err(exit::bad_input)?;
    }
    if entries.is_empty() {
        tracing::warn!(file = %cfg.entries.display(), "no registration entries: every call will be denied");
    }
    let server_cfg = workload_api::Config {
        default_ttl: cfg.default_ttl,
        jwt_ttl: cfg.jwt_ttl,
        ..workload_api::Config::new(&cfg.socket)
    };
    let (server, updater) =
        Server::new(server_cfg, entries, Arc::new(ca)).map_err(exit::bad_input)?;
    Ok((
        server,
        Reloader {
            ca_dir: cfg.ca_dir,
            updater,
        },
    ))
}

/// The file (if any), then the environment, then the flags.
fn load(args: &AgentArgs, env: &dyn Env) -> Result<Resolved, ConfigError> {
    let cfg = config::load_or_default::<AgentConfig>(args.config.as_deref(), env)?;
    Ok(cfg.resolve(args))
}

fn load_ca(dir: &std::path::Path) -> anyhow::Result<Ca> {
    Ca::load(dir).with_context(|| format!("loading the CA from `{}`", dir.display()))
}

// === impl Reloader ===

impl Reloader {
    /// SIGHUP: loads the CA again and hands it to the server; on failure the old one stays.
    pub(crate) fn reload(&self) {
        tracing::info!(ca_dir = %self.ca_dir.display(), "SIGHUP received: reloading the CA");
        let result = load_ca(&self.ca_dir).and_then(|ca| Ok(self.updater.update(Arc::new(ca))?));
        match result {
            Ok(()) => tracing::info!("CA reloaded"),
            Err(err) => tracing::error!(
                error = format!("{err:#}"),
                "CA reload failed; keeping the previous CA"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::MapEnv;

    fn args(config: Option<&Path>) -> AgentArgs {
        AgentArgs {
            config: config.map(Path::to_owned),
            socket: None,
            ca_dir: None,
            entries: None,
        }
    }

    #[test]
    fn defaults_hang_off_the_data_dir() {
        let cfg = load(&args(None), &MapEnv::default()).unwrap();
        assert_eq!(cfg.socket, Path::new("ward-data/agent.sock"));
        assert_eq!(cfg.ca_dir, Path::new("ward-data/ca"));
        assert_eq!(cfg.entries, Path::new("ward-data/entries.yaml"));
        assert_eq!(cfg.default_ttl, Duration::from_secs(3600));
        assert_eq!(cfg.jwt_ttl, Duration::from_secs(300));

        let env = MapEnv::from([("WARD_DATA_DIR", "/d")]);
        assert_eq!(load(&args(None), &env).unwrap().ca_dir, Path::new("/d/ca"));
    }

    #[test]
    fn flags_beat_the_environment_which_beats_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.yaml");
        std::fs::write(
            &file,
            "socket: /file.sock\nca_dir: /file-ca\ndefault_ttl: 30m\njwt_ttl: 1m\n",
        )
        .unwrap();

        let cfg = load(&args(Some(&file)), &MapEnv::default()).unwrap();
        assert_eq!(cfg.socket, Path::new("/file.sock"));
        assert_eq!(cfg.ca_dir, Path::new("/file-ca"));
        assert_eq!(cfg.default_ttl, Duration::from_secs(1800));
        assert_eq!(cfg.jwt_ttl, Duration::from_secs(60));

        let env = MapEnv::from([(ENV_AGENT_SOCKET, "/env.sock")]);
        assert_eq!(
            load(&args(Some(&file)), &env).unwrap().socket,
            Path::new("/env.sock")
        );

        let mut flags = args(Some(&file));
        flags.socket = Some(PathBuf::from("/flag.sock"));
        flags.ca_dir = Some(PathBuf::from("/flag-ca"));
        let cfg = load(&flags, &env).unwrap();
        assert_eq!(cfg.socket, Path::new("/flag.sock"));
        assert_eq!(cfg.ca_dir, Path::new("/flag-ca"));
    }

    #[test]
    fn bad_durations_and_unknown_fields_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.yaml");
        for (text, want) in [
            (
                "default_ttl: soon\n",
                ":1:14: default_ttl: invalid duration `soon`",
            ),
            (
                "jwt_ttl: 10ms\n",
                ":1:10: jwt_ttl: duration `10ms` is shorter than 1s",
            ),
            ("sokcet: /x\n", ":1:1: unknown field `sokcet`"),
        ] {
            std::fs::write(&file, text).unwrap();
            let err = load(&args(Some(&file)), &MapEnv::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
