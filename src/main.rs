//! The `ward` command: parses arguments, sets up logging and hands off to a command.

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod cmd;
mod config;
mod exit;
mod logging;
mod output;
mod signals;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    if let Err(err) = logging::init(&cli.log) {
        eprintln!("error: {err:#}");
        return ExitCode::from(exit::USAGE_CODE);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: starting the async runtime: {err}");
            return exit::FAILURE;
        }
    };
    match runtime.block_on(cmd::run(cli.command)) {
        Ok(code) => code,
        Err(err) => exit::report(&err),
    }
}
