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
        f.write_str(&one_line(&self.0))
    }
}

impl std::error::Error for BadInput {}

/// Wraps an error as bad input (exit code 2).
pub(crate) fn bad_input(err: impl Into<anyhow::Error>) -> anyhow::Error {
    anyhow::Error::new(BadInput(err.into()))
}

/// `err` and its causes joined by ": ", each cause left out when the text so far already ends
/// with it: many errors put their source in their own message (thiserror's `"…: {0}"` with
/// `#[from]`) and also return it as `source()`, which `{:#}` would print twice.
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.is_empty() {
            line = text;
        } else if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

/// Prints `err` as one line (a backtrace only when `RUST_BACKTRACE` asks) and picks the exit code.
pub(crate) fn report(err: &anyhow::Error) -> ExitCode {
    eprintln!("error: {}", one_line(err));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("policies: {0}")]
        Policies(#[from] std::io::Error),
    }

    #[test]
    fn a_cause_already_in_the_message_is_printed_once() {
        let io = std::io::Error::other("mesh.cedar:50:36: unexpected end of input");
        let err = anyhow::Error::new(Outer::from(io)).context("starting the proxy of orders-api");
        assert_eq!(
            one_line(&err),
            "starting the proxy of orders-api: policies: mesh.cedar:50:36: unexpected end of input"
        );
        let err = bad_input(anyhow::anyhow!("inner").context("outer"));
        assert_eq!(one_line(&err.context("top")), "top: outer: inner");
    }
}
