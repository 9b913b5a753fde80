//! Revisions: the git commit when the repository is a git checkout, else a content hash.

use std::path::Path;
use std::process::Command;

use aws_lc_rs::digest;

use super::SourceFile;

/// The revision of the repository at `dir` whose files are `files`.
///
/// In a git checkout this is `HEAD`'s commit; when the checkout has uncommitted changes under
/// `dir`, it is `<commit>-dirty-<hash>` so every edit still gets its own revision. Elsewhere it
/// is `sha256:<hash>` over the files (relative path and content, sorted by path).
pub(crate) fn revision(dir: &Path, files: &[&SourceFile]) -> String {
    let hash = content_hash(files);
    match git_commit(dir) {
        Some((commit, false)) => commit,
        Some((commit, true)) => format!("{commit}-dirty-{}", &hash[..12]),
        None => format!("sha256:{}", &hash[..16]),
    }
}

/// SHA-256 over `len(path) path len(text) text` for each file, hex.
pub(crate) fn content_hash(files: &[&SourceFile]) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for f in files {
        ctx.update(&(f.rel.len() as u64).to_be_bytes());
        ctx.update(f.rel.as_bytes());
        ctx.update(&(f.text.len() as u64).to_be_bytes());
        ctx.update(f.text.as_bytes());
    }
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `(HEAD commit, dirty under dir)` when `dir` is inside a git work tree.
fn git_commit(dir: &Path) -> Option<(String, bool)> {
    let head = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "--verify", "-q", "HEAD"])
        .output()
        .ok()?;
    if !head.status.success() {
        return None;
    }
    let commit = String::from_utf8(head.stdout).ok()?.trim().to_owned();
    if commit.is_empty() {
        return None;
    }
    let status = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["status", "--porcelain", "--untracked-files=all", "--", "."])
        .output()
        .ok()?;
    let dirty = !status.status.success() || !status.stdout.is_empty();
    Some((commit, dirty))
}
