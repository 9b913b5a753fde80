//! Exit codes and the one place errors are printed for people.

use std::fmt;
use std::process::ExitCode;

/// Success.
pub(crate) const OK: ExitCode = ExitCode::SUCCESS;
/// A runtime failure, or a decision that denied.
pub(crate) const FAILURE: ExitCode = ExitCode::FAILURE;
/// Bad usage or bad input (the same code clap uses).
pub(crate) const USAGE_CODE: u8 = 2;

/// Marks an error as the user's input being wrong, so it exits 2 instead of 1.
#[derive(Debug)]
pub(crate) struct BadInput(pub(crate) anyhow::Error);

impl fmt::Display for BadInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for BadInput {}

/// Wraps an error as bad input (exit code 2).
pub(crate) fn bad_input(err: impl Into<anyhow::Error>) -> anyhow::Error {
    anyhow::Error::new(BadInput(err.into()))
}

/// Prints `err` as one line (a backtrace only when `RUST_BACKTRACE` asks) and picks the exit code.
pub(crate) fn report(err: &anyhow::Error) -> ExitCode {
    eprintln!("error: {err:#}");
    // anyhow captures a backtrace only when RUST_BACKTRACE or RUST_LIB_BACKTRACE asks for one.
    let backtrace = err.backtrace();
    if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
        eprintln!("{backtrace}");
    }
    if err.chain().any(|cause| cause.is::<BadInput>()) {
        ExitCode::from(USAGE_CODE)
    } else {
        FAILURE
    }
}
