//! Hot reload: load a policy directory again when it changes (or on demand, e.g. SIGHUP) and
//! swap the new revision in. A revision that fails to load is logged with every problem and
//! counted; the last good revision keeps serving.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::authorizer::Authorizer;
use crate::engine::Snapshot;
use crate::error::Error;
use crate::metrics::ReloadTarget;

/// Reloads the enforced (and candidate) policy directories into an [`Authorizer`].
#[derive(Debug)]
pub struct Reloader {
    authorizer: Arc<Authorizer>,
    policies: PathBuf,
    candidate: Option<PathBuf>,
    failures: Mutex<BTreeMap<&'static str, ReloadFailure>>,
}

/// The last failed reload of one target, kept until a reload of that target succeeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadFailure {
    /// Which revision failed to load.
    pub target: ReloadTarget,
    /// Why, one line (the first problem and how many more).
    pub error: String,
    /// When, Unix milliseconds.
    pub time_ms: i64,
}

/// Keeps a directory watch alive; dropping it stops watching.
#[derive(Debug)]
pub struct WatchHandle {
    _watcher: RecommendedWatcher,
    task: JoinHandle<()>,
}

// === impl Reloader ===

impl Reloader {
    /// A reloader of `policies` (enforced) and, when given, `candidate` (shadow).
    pub fn new(authorizer: Arc<Authorizer>, policies: PathBuf, candidate: Option<PathBuf>) -> Self {
        Self {
            authorizer,
            policies,
            candidate,
            failures: Mutex::new(BTreeMap::new()),
        }
    }

    /// The authorizer revisions are swapped into.
    pub fn authorizer(&self) -> &Arc<Authorizer> {
        &self.authorizer
    }

    /// Loads the enforced directory and swaps it in; on error the current revision stays.
    /// Blocking: it reads files and may run `git`.
    pub fn reload_enforced(&self) -> Result<Arc<str>, Error> {
        let result = Snapshot::load(&self.policies).map(|snapshot| {
            let revision = snapshot.revision().clone();
            let old = self.authorizer.engine().swap(snapshot);
            (revision, old.revision().clone())
        });
        self.finish(ReloadTarget::Enforced, &self.policies, result)
    }

    /// Loads the candidate directory (if configured) and swaps it in; on error the current
    /// candidate stays. `None` when no candidate directory is configured.
    pub fn reload_candidate(&self) -> Option<Result<Arc<str>, Error>> {
        let dir = self.candidate.as_ref()?;
        let result = Snapshot::load(dir).map(|snapshot| {
            let revision = snapshot.revision().clone();
            let old = self.authorizer.set_candidate(Some(snapshot));
            let old = old.map_or_else(|| Arc::from("none"), |o| o.revision().clone());
            (revision, old)
        });
        Some(self.finish(ReloadTarget::Candidate, dir, result))
    }

    /// Reloads every configured directory; true when all loaded.
    pub fn reload_all(&self) -> bool {
        let enforced = self.reload_enforced().is_ok();
        let candidate = self.reload_candidate().is_none_or(|r| r.is_ok());
        enforced && candidate
    }

    /// The outstanding failures: a target's last reload failed and none has succeeded since.
    pub fn failures(&self) -> Vec<ReloadFailure> {
        self.lock().values().cloned().collect()
    }

    /// Watches the directories and reloads the one that changed once changes settle for
    /// `debounce`. Must be called inside a tokio runtime.
    pub fn watch(self: &Arc<Self>, debounce: Duration) -> Result<WatchHandle, Error> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let _ = tx.send(event);
            })
            .map_err(|e| watch_error(&self.policies, &e))?;
        for dir in std::iter::once(&self.policies).chain(&self.candidate) {
            watcher
                .watch(dir, RecursiveMode::Recursive)
                .map_err(|e| watch_error(dir, &e))?;
        }
        let task = tokio::spawn(self.clone().run_watch(rx, debounce));
        Ok(WatchHandle {
            _watcher: watcher,
            task,
        })
    }

    async fn run_watch(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
        debounce: Duration,
    ) {
        let mut pending = Pending::default();
        while let Some(event) = rx.recv().await {
            self.note(event, &mut pending);
            // Editors and `git checkout` touch files in bursts: wait for quiet, then load once.
            loop {
                match tokio::time::timeout(debounce, rx.recv()).await {
                    Ok(Some(event)) => self.note(event, &mut pending),
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let todo = std::mem::take(&mut pending);
            if todo.enforced || todo.candidate {
                let this = self.clone();
                let joined = tokio::task::spawn_blocking(move || {
                    if todo.enforced {
                        let _ = this.reload_enforced();
                    }
                    if todo.candidate {
                        let _ = this.reload_candidate();
                    }
                })
                .await;
                if let Err(e) = joined {
                    tracing::error!(error = %e, "BUG: policy reload task failed");
                }
            }
        }
    }

    /// Marks which directories an event concerns.
    fn note(&self, event: notify::Result<notify::Event>, pending: &mut Pending) {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                // A lost or overflowed event: reload everything rather than miss a change.
                tracing::warn!(error = %e, "policy directory watch error; reloading");
                pending.enforced = true;
                pending.candidate = self.candidate.is_some();
                return;
            }
        };
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        for path in event.paths.iter().filter(|p| !in_git_dir(p)) {
            let candidate = self.candidate.as_ref().is_some_and(|c| under(path, c));
            // Paths the watch reports that match neither root (e.g. via a symlink) count as
            // enforced: reloading too often is harmless, missing an edit is not.
            pending.enforced |= !candidate || under(path, &self.policies);
            pending.candidate |= candidate;
        }
    }

    fn finish(
        &self,
        target: ReloadTarget,
        dir: &Path,
        result: Result<(Arc<str>, Arc<str>), Error>,
    ) -> Result<Arc<str>, Error> {
        self.authorizer.metrics().reload(target, result.is_ok());
        let mut failures = self.lock();
        match result {
            Ok((revision, old)) => {
                failures.remove(target.as_str());
                if revision == old {
                    tracing::debug!(target = target.as_str(), %revision, "policy revision unchanged");
                } else {
                    tracing::info!(target = target.as_str(), dir = %dir.display(), %revision, previous = %old, "policy revision loaded");
                }
                Ok(revision)
            }
            Err(e) => {
                for problem in e.problems() {
                    tracing::error!(target = target.as_str(), %problem, "policy problem");
                }
                tracing::error!(
                    target = target.as_str(),
                    dir = %dir.display(),
                    error = %e,
                    "policy reload failed; the last good revision keeps serving"
                );
                failures.insert(
                    target.as_str(),
                    ReloadFailure {
                        target,
                        error: e.to_string(),
                        time_ms: ward_audit::record::now_ms(),
                    },
                );
                Err(e)
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, ReloadFailure>> {
        // The map holds plain values; a panic elsewhere cannot leave it half-updated.
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// === impl WatchHandle ===

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug, Default)]
struct Pending {
    enforced: bool,
    candidate: bool,
}

fn watch_error(dir: &Path, e: &notify::Error) -> Error {
    Error::io("watching", dir, std::io::Error::other(e.to_string()))
}

/// Whether `path` is under `root`, comparing canonical forms when they exist.
fn under(path: &Path, root: &Path) -> bool {
    if path.starts_with(root) {
        return true;
    }
    match (path.canonicalize(), root.canonicalize()) {
        (Ok(p), Ok(r)) => p.starts_with(r),
        // A removed file cannot be canonicalized: compare its parent.
        (Err(_), Ok(r)) => path
            .parent()
            .and_then(|p| p.canonicalize().ok())
            .is_some_and(|p| p.starts_with(r)),
        _ => false,
    }
}

/// Git's own bookkeeping (computing a revision runs `git status`, which touches `.git/`).
fn in_git_dir(path: &Path) -> bool {
    path.components()
        .any(|c| matches!(c, Component::Normal(n) if n == ".git"))
}

#[cfg(test)]
mod tests;
