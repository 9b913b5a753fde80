//! The command line: every subcommand group and its flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::logging::LogArgs;

/// Ward: SPIFFE identities, mutual TLS and Cedar authorization for every hop of a service mesh.
#[derive(Debug, Parser)]
#[command(name = "ward", version, propagate_version = true, max_term_width = 100)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) log: LogArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The subcommand groups.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the local mesh on this machine: CA, Workload API agent and the demo services.
    Up(UpArgs),
    /// Check configuration files without starting anything.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage the certificate authority: init, issue SVIDs, print and rotate the trust bundle.
    #[command(subcommand)]
    Ca(crate::cmd::ca::CaCommand),
    /// Serve the SPIFFE Workload API to local workloads over a Unix socket.
    Agent(crate::cmd::agent::AgentArgs),
    /// Author Cedar policies: validate, test, format, explain and diff policy sets.
    #[command(subcommand)]
    Policy(crate::cmd::policy::PolicyCommand),
    /// Serve authorization decisions: Envoy ext_authz gRPC and the JSON check API.
    #[command(subcommand)]
    Authz(crate::cmd::authz::AuthzCommand),
    /// Run one workload's mTLS proxy (inbound and outbound).
    Proxy(crate::cmd::proxy::ProxyArgs),
    /// Run an ingress, egress or east-west gateway.
    Gateway(Pending),
    /// Query, verify, export and prune the tamper-evident audit log.
    #[command(subcommand)]
    Audit(crate::cmd::audit::AuditCommand),
    /// Open, list and revoke time-boxed break-glass grants.
    Breakglass(Pending),
    /// Run the control plane that distributes policy revisions to proxies.
    Control(Pending),
}

/// Options of `ward up`.
#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// Configuration file (YAML); embedded defaults are used when omitted.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// How to print what runs where once everything listens: tables, or one line of JSON.
    #[arg(long, value_enum, default_value_t = crate::output::Format::Table)]
    pub(crate) format: crate::output::Format,
}

/// `ward config …`
#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Load a configuration file the way its process would and report the first error.
    Check(ConfigCheckArgs),
}

/// Options of `ward config check`.
#[derive(Debug, Args)]
pub(crate) struct ConfigCheckArgs {
    /// Which process the file configures.
    #[arg(long, value_enum, default_value_t = ConfigKind::Up)]
    pub(crate) kind: ConfigKind,
    /// The file to check.
    pub(crate) file: PathBuf,
}

/// The processes that read a configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ConfigKind {
    /// `ward up`.
    Up,
    /// `ward agent`.
    Agent,
    /// `ward proxy` (also checks the values `ward proxy` validates before it starts).
    Proxy,
    /// `ward authz serve`.
    Authz,
}

/// A group whose commands have not been built yet; it says so instead of pretending.
#[derive(Debug, Args)]
pub(crate) struct Pending {}
