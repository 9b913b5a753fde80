//! Helpers shared by the end-to-end tests.

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
