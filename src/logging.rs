//! Process-wide `tracing` setup: human lines or JSON, filtered like `RUST_LOG`.

use anyhow::Context;
use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines (colour on a terminal).
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Logging options shared by every subcommand.
#[derive(Debug, Args)]
pub(crate) struct LogArgs {
    /// Log filter, `RUST_LOG` syntax (e.g. `info,ward_proxy=debug`); `RUST_LOG` is used when unset.
    #[arg(long, global = true, env = "WARD_LOG_LEVEL", value_name = "FILTER")]
    pub(crate) log_level: Option<String>,
    /// Log line format.
    #[arg(long, global = true, env = "WARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
}

/// Installs the global subscriber; logs go to stderr so stdout stays for command output.
pub(crate) fn init(args: &LogArgs) -> anyhow::Result<()> {
    let filter = match &args.log_level {
        Some(directives) => EnvFilter::try_new(directives)
            .with_context(|| format!("invalid --log-level `{directives}`"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match args.log_format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    installed.map_err(|err| anyhow::anyhow!("installing the log subscriber: {err}"))
}
