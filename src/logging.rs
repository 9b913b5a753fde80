//! Process-wide `tracing` setup: human lines or JSON, filtered like `RUST_LOG`.

use anyhow::Context;
use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

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
///
/// It also carries `ward proxy`'s trace layer, which exports request spans once a proxy
/// configures an OTLP endpoint; the log filter applies to log lines only.
pub(crate) fn init(args: &LogArgs) -> anyhow::Result<()> {
    let filter = match &args.log_level {
        Some(directives) => EnvFilter::try_new(directives)
            .with_context(|| format!("invalid --log-level `{directives}`"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match args.log_format {
        LogFormat::Text => lines
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        LogFormat::Json => lines.json().flatten_event(true).boxed(),
    };
    let installed = tracing_subscriber::registry()
        .with(lines.with_filter(filter))
        .with(ward_proxy::trace::layer())
        .try_init();
    installed.map_err(|err| anyhow::anyhow!("installing the log subscriber: {err}"))
}
