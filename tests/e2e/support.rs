//! Helpers shared by the end-to-end tests.

use std::future::Future;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use assert_cmd::Command;

/// The `ward` binary built for this test run, with a quiet, predictable environment.
pub(crate) fn ward() -> Command {
    let mut cmd = Command::cargo_bin("ward").expect("ward binary is built for tests");
    cmd.env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .env_remove("RUST_LOG")
        .env_remove("WARD_LOG_LEVEL")
        .env_remove("WARD_LOG_FORMAT")
        .env_remove("WARD_DATA_DIR");
    cmd
}

/// Writes `text` to `name` inside `dir` and returns the path.
pub(crate) fn write_file(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write test file");
    path
}

/// Sends the signal `name` (`TERM`, `HUP`, …) to `child` with kill(1).
pub(crate) fn signal(child: &Child, name: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{name} failed");
}

/// Waits for `child` to exit without blocking the runtime, so that the test's own connections
/// keep answering the server's shutdown (GOAWAY, PING); past `timeout` it fails with `logs()`.
pub(crate) async fn wait_exit(
    child: &mut Child,
    timeout: Duration,
    logs: impl Fn() -> String,
) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("child status") {
            return status;
        }
        assert!(Instant::now() < deadline, "still running: {}", logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` until it returns true, failing after `timeout`.
pub(crate) async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
