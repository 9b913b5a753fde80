//! Unix workload attestation: who is calling, from the socket's peer credentials.
//!
//! The kernel reports the caller's uid, gid and pid at connect time (`SO_PEERCRED`); nothing
//! the workload sends is trusted. From those we derive selectors:
//! `unix:uid:<n>`, `unix:gid:<n>`, `unix:user:<name>` and `unix:group:<name>` (from
//! `/etc/passwd` and `/etc/group`, when the id has a name there) and `unix:path:<exe>`
//! (from `/proc/<pid>/exe`, when readable and the binary has not been deleted).
//!
//! Supplementary groups are not attested: `SO_PEERCRED` carries only the primary gid.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use tokio::net::unix::{gid_t, pid_t, uid_t};

/// What the kernel says about the process at the other end of the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// Effective user id.
    pub uid: uid_t,
    /// Effective primary group id.
    pub gid: gid_t,
    /// Process id, when the platform reports it.
    pub pid: Option<pid_t>,
}

/// The selectors a caller presented, e.g. `unix:uid:1000`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selectors(BTreeSet<String>);

/// Derives [`Selectors`] from [`PeerCred`]; the file locations are fields so tests can point
/// them elsewhere.
#[derive(Debug, Clone)]
pub struct Attestor {
    proc_dir: PathBuf,
    passwd: PathBuf,
    group: PathBuf,
}

// === impl PeerCred ===

impl From<tokio::net::unix::UCred> for PeerCred {
    fn from(cred: tokio::net::unix::UCred) -> Self {
        Self {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
        }
    }
}

impl fmt::Display for PeerCred {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid={} gid={}", self.uid, self.gid)?;
        match self.pid {
            Some(pid) => write!(f, " pid={pid}"),
            None => Ok(()),
        }
    }
}

// === impl Selectors ===

impl Selectors {
    /// Whether `selector` is among these.
    pub fn contains(&self, selector: &str) -> bool {
        self.0.contains(selector)
    }

    /// The selectors, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

impl<S: Into<String>> FromIterator<S> for Selectors {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        Self(iter.into_iter().map(Into::into).collect())
    }
}

impl fmt::Display for Selectors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<&str> = self.iter().collect();
        write!(f, "[{}]", list.join(", "))
    }
}

// === impl Attestor ===

impl Default for Attestor {
    fn default() -> Self {
        Self::new("/proc", "/etc/passwd", "/etc/group")
    }
}

impl Attestor {
    /// An attestor reading `<proc_dir>/<pid>/exe`, the `passwd` file and the `group` file.
    pub fn new(
        proc_dir: impl Into<PathBuf>,
        passwd: impl Into<PathBuf>,
        group: impl Into<PathBuf>,
    ) -> Self {
        Self {
            proc_dir: proc_dir.into(),
            passwd: passwd.into(),
            group: group.into(),
        }
    }

    /// The selectors of the process described by `peer`.
    ///
    /// Reads a few small local files; a file that is missing or unreadable only means fewer
    /// selectors (so fewer entries can match), never an error.
    pub fn attest(&self, peer: &PeerCred) -> Selectors {
        let mut selectors = BTreeSet::new();
        selectors.insert(format!("unix:uid:{}", peer.uid));
        selectors.insert(format!("unix:gid:{}", peer.gid));
        if let Some(name) = name_of(&self.passwd, peer.uid) {
            selectors.insert(format!("unix:user:{name}"));
        }
        if let Some(name) = name_of(&self.group, peer.gid) {
            selectors.insert(format!("unix:group:{name}"));
        }
        if let Some(path) = peer.pid.and_then(|pid| self.exe_path(pid)) {
            selectors.insert(format!("unix:path:{path}"));
        }
        Selectors(selectors)
    }

    /// The executable of `pid`, unless it cannot be read or was deleted since it started.
    fn exe_path(&self, pid: pid_t) -> Option<String> {
        let link = self.proc_dir.join(pid.to_string()).join("exe");
        match std::fs::read_link(&link) {
            Ok(target) => {
                let path = target.to_str()?.to_owned();
                // The kernel marks an unlinked binary this way; the path no longer names the
                // code that is running, so it must not earn an identity.
                if path.ends_with(" (deleted)") {
                    return None;
                }
                Some(path)
            }
            Err(err) => {
                // Usual when the agent is not root and the caller is another user.
                tracing::debug!(pid, error = %err, "cannot read the caller's executable path");
                None
            }
        }
    }
}

/// The name of `id` in a `passwd`- or `group`-format file (`name:x:id:…`).
fn name_of(file: &Path, id: u32) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    name_in(&text, id).map(str::to_owned)
}

/// The first name whose third field is `id`; comments and malformed lines are skipped.
fn name_in(text: &str, id: u32) -> Option<&str> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let _password = fields.next()?;
            let line_id: u32 = fields.next()?.parse().ok()?;
            (line_id == id && !name.is_empty()).then_some(name)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
# comment
root:x:0:0:root:/root:/bin/bash
broken line
alice:x:1000:1000:Alice:/home/alice:/bin/sh
";

    #[test]
    fn names_come_from_the_third_field() {
        assert_eq!(name_in(PASSWD, 0), Some("root"));
        assert_eq!(name_in(PASSWD, 1000), Some("alice"));
        assert_eq!(name_in(PASSWD, 1001), None);
        assert_eq!(name_in("", 0), None);
    }

    #[test]
    fn attest_derives_every_selector() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("passwd"), PASSWD).unwrap();
        std::fs::write(dir.path().join("group"), "staff:x:50:\n").unwrap();
        let proc_dir = dir.path().join("proc");
        std::fs::create_dir_all(proc_dir.join("42")).unwrap();
        std::os::unix::fs::symlink("/usr/bin/app", proc_dir.join("42/exe")).unwrap();
        let attestor = Attestor::new(
            &proc_dir,
            dir.path().join("passwd"),
            dir.path().join("group"),
        );

        let peer = PeerCred {
            uid: 1000,
            gid: 50,
            pid: Some(42),
        };
        let selectors = attestor.attest(&peer);
        let got: Vec<&str> = selectors.iter().collect();
        assert_eq!(
            got,
            [
                "unix:gid:50",
                "unix:group:staff",
                "unix:path:/usr/bin/app",
                "unix:uid:1000",
                "unix:user:alice"
            ]
        );
    }

    #[test]
    fn missing_files_and_deleted_binaries_only_drop_selectors() {
        let dir = tempfile::tempdir().unwrap();
        let proc_dir = dir.path().join("proc");
        std::fs::create_dir_all(proc_dir.join("7")).unwrap();
        std::os::unix::fs::symlink("/usr/bin/old (deleted)", proc_dir.join("7/exe")).unwrap();
        let attestor = Attestor::new(&proc_dir, dir.path().join("nope"), dir.path().join("nope"));

        for pid in [Some(7), Some(8), None] {
            let peer = PeerCred {
                uid: 5,
                gid: 6,
                pid,
            };
            let selectors = attestor.attest(&peer);
            let got: Vec<&str> = selectors.iter().collect();
            assert_eq!(got, ["unix:gid:6", "unix:uid:5"], "pid {pid:?}");
        }
    }
}
