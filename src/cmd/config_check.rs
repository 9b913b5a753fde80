//! `ward config check`: load a file exactly as its process would.

use std::process::ExitCode;

use crate::cli::{ConfigCheckArgs, ConfigCommand, ConfigKind};
use crate::config::{self, ProcessEnv};
use crate::exit;

use super::agent::AgentConfig;
use super::authz::AuthzConfig;
use super::up::UpConfig;

/// Runs `ward config …`.
pub(crate) fn run(cmd: ConfigCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCommand::Check(args) => check(&args),
    }
}

/// Logs the resolved configuration (store URLs redacted) and prints `FILE: ok`.
fn check(args: &ConfigCheckArgs) -> anyhow::Result<ExitCode> {
    match args.kind {
        ConfigKind::Up => loaded::<UpConfig>(args)?,
        ConfigKind::Agent => loaded::<AgentConfig>(args)?,
        ConfigKind::Authz => loaded::<AuthzConfig>(args)?,
        ConfigKind::Proxy => {
            let cfg = super::proxy::load(&args.file, &ProcessEnv).map_err(exit::bad_input)?;
            tracing::info!(config = %cfg.redacted(), "resolved configuration");
        }
    }
    println!("{}: ok", args.file.display());
    Ok(exit::OK)
}

/// Loads `args.file` as a `T` (every problem is the user's input, exit 2) and logs it.
fn loaded<T>(args: &ConfigCheckArgs) -> anyhow::Result<()>
where
    T: serde::de::DeserializeOwned + config::Overrides + std::fmt::Debug,
{
    let cfg = config::load::<T>(&args.file, &ProcessEnv).map_err(exit::bad_input)?;
    tracing::info!(?cfg, "resolved configuration");
    Ok(())
}
