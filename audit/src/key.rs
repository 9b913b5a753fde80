//! The Ed25519 key that signs audit checkpoints.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};

use crate::Error;
use crate::record::hex;

/// The signing key (private). Kept in a 0600 file; its public half beside it as `<file>.pub`.
pub struct AuditKey {
    pair: Ed25519KeyPair,
}

/// The public half, used by `ward audit verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey(Vec<u8>);

// === impl AuditKey ===

impl AuditKey {
    /// Loads the key at `path`, or creates it (0600) and writes `<path>.pub` when missing.
    pub fn load_or_create(path: &Path) -> Result<Self, Error> {
        if path.exists() {
            return Self::load(path);
        }
        let doc = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
            .map_err(|e| Error::Key(format!("generating: {e}")))?;
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|source| io(dir, source))?;
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| io(path, source))?;
        file.write_all(doc.as_ref())
            .and_then(|()| file.sync_all())
            .map_err(|source| io(path, source))?;
        let key = Self::load(path)?;
        fs::write(pub_path(path), key.public().to_hex() + "\n")
            .map_err(|source| io(path, source))?;
        Ok(key)
    }

    /// Loads the key at `path`, refusing a file that group or others can read.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let meta = fs::metadata(path).map_err(|source| io(path, source))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::Key(format!(
                "`{}` has mode {mode:o}: the audit key must not be readable by group or others",
                path.display()
            )));
        }
        let der = fs::read(path).map_err(|source| io(path, source))?;
        let pair = Ed25519KeyPair::from_pkcs8(&der)
            .map_err(|e| Error::Key(format!("`{}`: {e}", path.display())))?;
        Ok(Self { pair })
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.pair.public_key().as_ref().to_vec())
    }
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKey")
            .field("key_id", &self.public().key_id())
            .finish_non_exhaustive()
    }
}

// === impl PublicKey ===

impl PublicKey {
    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, Error> {
        let text = text.trim();
        let bytes = unhex(text).ok_or_else(|| Error::Key("public key is not hex".into()))?;
        if bytes.len() != 32 {
            return Err(Error::Key(format!(
                "public key has {} bytes, expected 32",
                bytes.len()
            )));
        }
        Ok(Self(bytes))
    }

    /// Reads `<key>.pub` (or any file holding the hex public key).
    pub fn read(path: &Path) -> Result<Self, Error> {
        Self::from_hex(&fs::read_to_string(path).map_err(|source| io(path, source))?)
    }

    /// 64 hex digits.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// A short id: the first 8 bytes of the key's SHA-256, hex.
    pub fn key_id(&self) -> String {
        hex(&aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &self.0).as_ref()[..8])
    }

    /// Checks a hex signature over `message`.
    pub fn verify(&self, message: &[u8], signature_hex: &str) -> bool {
        unhex(signature_hex).is_some_and(|sig| {
            UnparsedPublicKey::new(&ED25519, &self.0)
                .verify(message, &sig)
                .is_ok()
        })
    }
}

/// The public key file for a private key file.
pub fn pub_path(key_path: &Path) -> PathBuf {
    let mut name = key_path.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_owned(),
        source,
    }
}
