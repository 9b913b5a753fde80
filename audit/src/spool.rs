//! On-disk holding areas: the spool (sequenced records the store could not take) and the
//! overflow file (records that found the in-memory queue full).

use std::fs;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::Error;
use crate::chain::ChainedRecord;
use crate::record::AuditRecord;

/// Append-only file of chained records, replayed in order when the store is back.
#[derive(Debug)]
pub(crate) struct Spool {
    path: PathBuf,
}

/// Records that did not fit in the queue, written by request handlers, sequenced later by the
/// writer.
#[derive(Debug)]
pub(crate) struct Overflow {
    path: PathBuf,
    lock: Mutex<()>,
}

// === impl Spool ===

impl Spool {
    pub(crate) fn new(dir: &Path) -> Result<Self, Error> {
        fs::create_dir_all(dir).map_err(|source| io(dir, source))?;
        Ok(Self {
            path: dir.join("audit-spool.jsonl"),
        })
    }

    /// Appends and fsyncs: once this returns, the records survive a crash.
    pub(crate) fn append(&self, records: &[ChainedRecord]) -> Result<(), Error> {
        let mut out = String::new();
        for r in records {
            out.push_str(&serde_json::to_string(r).map_err(|e| Error::Corrupt(e.to_string()))?);
            out.push('\n');
        }
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|source| io(&self.path, source))?;
        file.write_all(out.as_bytes())
            .and_then(|()| file.sync_data())
            .map_err(|source| io(&self.path, source))
    }

    pub(crate) fn is_empty(&self) -> bool {
        fs::metadata(&self.path)
            .map(|m| m.len() == 0)
            .unwrap_or(true)
    }

    /// Everything spooled, in order. A torn last line (a crash mid-append) is skipped.
    pub(crate) fn read(&self) -> Result<Vec<ChainedRecord>, Error> {
        read_lines(&self.path)
    }

    pub(crate) fn clear(&self) -> Result<(), Error> {
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(io(&self.path, source)),
        }
    }
}

// === impl Overflow ===

impl Overflow {
    pub(crate) fn new(dir: &Path) -> Self {
        Self {
            path: dir.join("audit-overflow.jsonl"),
            lock: Mutex::new(()),
        }
    }

    /// Appends one record (called from request handlers when the queue is full).
    pub(crate) fn push(&self, record: &AuditRecord) -> Result<(), Error> {
        let line = serde_json::to_string(record).map_err(|e| Error::Corrupt(e.to_string()))? + "\n";
        let _guard = self.lock.lock().map_err(|_| Error::Closed)?;
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .map_err(|source| io(&self.path, source))
    }

    /// Takes every record pushed so far, in order.
    pub(crate) fn take(&self) -> Result<Vec<AuditRecord>, Error> {
        let taking = self.path.with_extension("taking");
        {
            let _guard = self.lock.lock().map_err(|_| Error::Closed)?;
            match fs::rename(&self.path, &taking) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(io(&self.path, source)),
            }
        }
        let records = read_lines(&taking)?;
        let _ = fs::remove_file(&taking);
        Ok(records)
    }
}

fn read_lines<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>, Error> {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(io(path, source)),
    };
    let mut out = Vec::new();
    let lines: Vec<String> = BufReader::new(file)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(|source| io(path, source))?;
    let last = lines.len().saturating_sub(1);
    for (i, line) in lines
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        match serde_json::from_str(line) {
            Ok(r) => out.push(r),
            Err(e) if i == last => {
                tracing::warn!(path = %path.display(), error = %e, "skipping a torn last line");
            }
            Err(e) => {
                return Err(Error::Corrupt(format!(
                    "`{}` line {}: {e}",
                    path.display(),
                    i + 1
                )));
            }
        }
    }
    Ok(out)
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_owned(),
        source,
    }
}
