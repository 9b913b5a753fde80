//! `ward proxy`: run one workload's mTLS proxy (inbound, outbound, admin) from a YAML file.
//!
//! Prints `listening inbound=ADDR outbound=ADDR admin=ADDR` on stdout once bound (so port 0
//! works in scripts and tests), serves until SIGTERM or Ctrl-C, then drains in-flight requests
//! up to `drain_timeout` and exits 0. SIGHUP reloads the policy repository and, for a files
//! identity, the SVID files; a reload that fails is logged and the old state keeps serving.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde::Deserialize;
use ward_proxy::{Proxy, ProxyInputs};

use crate::config::{self, ConfigError, Env, Overrides, ProcessEnv};
use crate::exit;
use crate::signals::Signals;

/// Overrides `listen.inbound`.
pub(crate) const ENV_PROXY_INBOUND: &str = "WARD_PROXY_INBOUND";
/// Overrides `listen.outbound`.
pub(crate) const ENV_PROXY_OUTBOUND: &str = "WARD_PROXY_OUTBOUND";
/// Overrides `listen.admin`.
pub(crate) const ENV_PROXY_ADMIN: &str = "WARD_PROXY_ADMIN";

/// Options of `ward proxy`.
#[derive(Debug, Args)]
pub(crate) struct ProxyArgs {
    /// Configuration file (YAML; fields in docs/CONFIG.md).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub(crate) config: PathBuf,
}

/// The file as `ward_proxy::Config` reads it, plus the binary's environment overrides.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
struct ProxyFile(ward_proxy::Config);

// === impl ProxyFile ===

impl Overrides for ProxyFile {
    fn apply_env(&mut self, env: &dyn Env) -> Result<(), ConfigError> {
        let listen = &mut self.0.listen;
        for (var, target) in [
            (ENV_PROXY_INBOUND, &mut listen.inbound),
            (ENV_PROXY_OUTBOUND, &mut listen.outbound),
            (ENV_PROXY_ADMIN, &mut listen.admin),
        ] {
            config::override_parsed::<SocketAddr>(env, var, target)?;
        }
        Ok(())
    }
}

/// Loads and validates the file; every problem here is the user's input (exit 2).
pub(crate) fn load(path: &Path, env: &dyn Env) -> anyhow::Result<ward_proxy::Config> {
    let cfg = config::load::<ProxyFile>(path, env)?.0;
    cfg.validate()
        .with_context(|| format!("`{}`", path.display()))?;
    Ok(cfg)
}

/// Runs `ward proxy`.
pub(crate) async fn run(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    let cfg = load(&args.config, &ProcessEnv).map_err(exit::bad_input)?;
    // Handlers first, so a signal sent as soon as the addresses are printed is not lost.
    let (mut hangup, shutdown) = Signals::install()?.split();
    let proxy = Proxy::build(cfg).await.map_err(build_error)?;
    let bound = proxy.bound();
    let mut stdout = std::io::stdout();
    writeln!(
        stdout,
        "listening inbound={} outbound={} admin={}",
        bound.inbound, bound.outbound, bound.admin
    )
    .and_then(|()| stdout.flush())
    .context("writing to stdout")?;

    let inputs = proxy.inputs();
    let reloads = tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            reload(&inputs);
        }
    });
    let result = proxy.wait_termination(shutdown).await;
    reloads.abort();
    result.context("proxy")?;
    Ok(exit::OK)
}

/// A proxy that failed to start: what the user's files got wrong is bad input (exit 2), the
/// rest (a port in use, no SVID in time) a runtime failure.
pub(crate) fn build_error(err: ward_proxy::Error) -> anyhow::Error {
    match err {
        ward_proxy::Error::Config(_)
        | ward_proxy::Error::Policies(_)
        | ward_proxy::Error::Identity(ward_proxy::IdentityError::Read { .. })
        | ward_proxy::Error::Identity(ward_proxy::IdentityError::Parse { .. }) => {
            exit::bad_input(err)
        }
        other => anyhow::Error::new(other),
    }
}

/// SIGHUP: policies and identity files again; failures keep the current state.
fn reload(inputs: &ProxyInputs) {
    match inputs.reload_policies() {
        Ok(revision) => tracing::info!(%revision, "policies reloaded"),
        Err(err) => {
            tracing::error!(error = %err, "policy reload failed; keeping the current policies")
        }
    }
    if let Err(err) = inputs.reload_identity() {
        tracing::error!(error = %err, "identity reload failed; keeping the current SVID");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MapEnv;

    fn write(text: &str) -> (tempfile::TempDir, ProxyArgs) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.yaml");
        std::fs::write(&path, text).unwrap();
        (dir, ProxyArgs { config: path })
    }

    #[test]
    fn listen_addresses_come_from_the_file_then_the_environment() {
        let (_dir, args) = write("service: checkout-api\nlisten: { inbound: \"127.0.0.1:1\" }\n");
        let cfg = load(&args.config, &MapEnv::default()).unwrap();
        assert_eq!(cfg.listen.inbound.port(), 1);
        assert_eq!(cfg.listen.admin.port(), 15000);
        let env = MapEnv::from([
            (ENV_PROXY_INBOUND, "127.0.0.1:0"),
            (ENV_PROXY_ADMIN, "127.0.0.1:9"),
        ]);
        let cfg = load(&args.config, &env).unwrap();
        assert_eq!((cfg.listen.inbound.port(), cfg.listen.admin.port()), (0, 9));
    }

    #[test]
    fn bad_files_and_bad_overrides_say_where() {
        let (_dir, args) = write("service: checkout-api\nlisten: { inbund: \"127.0.0.1:1\" }\n");
        let err = format!("{:#}", load(&args.config, &MapEnv::default()).unwrap_err());
        assert!(
            err.contains(":2:11: listen: unknown field `inbund`"),
            "{err}"
        );

        let (_dir, args) = write("service: checkout-api\n");
        let env = MapEnv::from([(ENV_PROXY_OUTBOUND, "nope")]);
        let err = format!("{:#}", load(&args.config, &env).unwrap_err());
        assert!(err.contains("`WARD_PROXY_OUTBOUND`=`nope`"), "{err}");

        let (_dir, args) = write("node: a\n");
        let err = format!("{:#}", load(&args.config, &MapEnv::default()).unwrap_err());
        assert!(
            err.contains("`service`: must name the service this proxy fronts"),
            "{err}"
        );
    }
}
