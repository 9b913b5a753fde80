//! Request path normalization, done before anything else looks at a path.
//!
//! The proxy authorizes the normalized path and forwards exactly that path to the app, so the
//! app can never see a path that policy did not. Normalization follows RFC 3986:
//!
//! 1. The target must be in origin form (`/…`); a fragment (`#`) is rejected.
//! 2. The query (after the first `?`) is split off; it is never part of the authorized path.
//! 3. Percent-encoding is normalized (§6.2.2.2): encoded unreserved characters
//!    (`A-Z a-z 0-9 - . _ ~`) are decoded, every other escape keeps its encoding with upper-case
//!    hex. An encoded `/` (`%2F`), `\` (`%5C`) or NUL (`%00`) is rejected, because servers
//!    disagree on what they mean: that disagreement is how path-confusion attacks work.
//! 4. Runs of `/` are merged into one.
//! 5. Dot segments are removed (§5.2.4); `..` never climbs above the root.
//!
//! Raw `\`, NUL, control characters, spaces and non-ASCII characters are rejected (a valid
//! HTTP request target has none). Paths keep their case (`/ADMIN` is not `/admin`) and `;` is
//! an ordinary character unless [`NormalizeOptions::reject_semicolon`] is set: `/admin;x` is
//! not `/admin`, so a route or policy written for `/admin` does not cover it.

use std::fmt;

/// The longest request target accepted, in bytes.
pub const MAX_PATH_LEN: usize = 8192;

/// How strict normalization is; the defaults are the safe choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormalizeOptions {
    /// Reject `%2F` (default `true`). When `false`, `%2F` is kept encoded and is not a separator.
    pub reject_encoded_slash: bool,
    /// Reject `;` anywhere in the path (default `false`), for apps whose servers strip
    /// "matrix parameters" such as `;jsessionid=…`.
    pub reject_semicolon: bool,
}

/// A normalized request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath {
    path: String,
    query: Option<String>,
}

/// Why a request target was rejected; the proxy answers 400 Bad Request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The target is empty.
    #[error("request path is empty")]
    Empty,
    /// The target does not start with `/`.
    #[error("request path must start with `/`")]
    NotOriginForm,
    /// The target is longer than [`MAX_PATH_LEN`].
    #[error("request path is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    /// The target contains `#`.
    #[error("request path must not contain a fragment")]
    Fragment,
    /// A raw `\` in the path.
    #[error("request path must not contain `\\`")]
    Backslash,
    /// A raw or encoded NUL.
    #[error("request path must not contain NUL")]
    Nul,
    /// `%2F` in the path.
    #[error("request path must not contain an encoded `/` (`%2F`)")]
    EncodedSlash,
    /// `%5C` in the path.
    #[error("request path must not contain an encoded `\\` (`%5C`)")]
    EncodedBackslash,
    /// `%` not followed by two hex digits.
    #[error("malformed percent-encoding at byte {0}")]
    MalformedPercent(usize),
    /// A character that must be percent-encoded in a request target.
    #[error("request path contains `{}`, which must be percent-encoded", .0.escape_default())]
    InvalidChar(char),
    /// `;` while [`NormalizeOptions::reject_semicolon`] is set.
    #[error("request path must not contain `;`")]
    Semicolon,
}

// === impl NormalizeOptions ===

impl Default for NormalizeOptions {
    fn default() -> Self {
        Self {
            reject_encoded_slash: true,
            reject_semicolon: false,
        }
    }
}

// === impl NormalizedPath ===

impl NormalizedPath {
    /// Normalizes `target` (path and optional query) with the default options.
    ///
    /// ```
    /// use ward_authz::NormalizedPath;
    /// let p = NormalizedPath::parse("/orders//7712/./../7712/%72efund?x=1").unwrap();
    /// assert_eq!(p.path(), "/orders/7712/refund");
    /// assert_eq!(p.query(), Some("x=1"));
    /// assert!(NormalizedPath::parse("/admin%2Fusers").is_err());
    /// ```
    pub fn parse(target: &str) -> Result<Self, PathError> {
        Self::parse_with(target, NormalizeOptions::default())
    }

    /// Normalizes `target` with explicit options.
    pub fn parse_with(target: &str, opts: NormalizeOptions) -> Result<Self, PathError> {
        if target.is_empty() {
            return Err(PathError::Empty);
        }
        if target.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong);
        }
        if !target.starts_with('/') {
            return Err(PathError::NotOriginForm);
        }
        let (raw_path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        if let Some(q) = query {
            check_chars(q, opts)?;
        }
        let decoded = normalize_percent(raw_path, opts)?;
        Ok(Self {
            path: remove_dot_segments(&decoded),
            query: query.map(str::to_owned),
        })
    }

    /// The normalized path, always starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The query string without its `?`, exactly as received.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// The segments of the path, without the leading `/`; a trailing `/` gives a last empty
    /// segment.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.path[1..].split('/')
    }
}

impl fmt::Display for NormalizedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)?;
        if let Some(q) = &self.query {
            write!(f, "?{q}")?;
        }
        Ok(())
    }
}

/// Rejects characters that never appear raw in a request target.
fn check_chars(s: &str, opts: NormalizeOptions) -> Result<(), PathError> {
    for c in s.chars() {
        match c {
            '#' => return Err(PathError::Fragment),
            '\\' => return Err(PathError::Backslash),
            '\0' => return Err(PathError::Nul),
            ';' if opts.reject_semicolon => return Err(PathError::Semicolon),
            '!'..='~' => {}
            other => return Err(PathError::InvalidChar(other)),
        }
    }
    Ok(())
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes escaped unreserved characters, upper-cases other escapes, rejects dangerous ones.
fn normalize_percent(path: &str, opts: NormalizeOptions) -> Result<String, PathError> {
    check_chars(path, opts)?;
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            out.push(char::from(b));
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex_val),
            bytes.get(i + 2).copied().and_then(hex_val),
        ) else {
            return Err(PathError::MalformedPercent(i));
        };
        let decoded = hi * 16 + lo;
        match decoded {
            0 => return Err(PathError::Nul),
            b'/' if opts.reject_encoded_slash => return Err(PathError::EncodedSlash),
            b'\\' => return Err(PathError::EncodedBackslash),
            b';' if opts.reject_semicolon => return Err(PathError::Semicolon),
            d if is_unreserved(d) => out.push(char::from(d)),
            d => {
                out.push('%');
                out.push_str(&format!("{d:02X}"));
            }
        }
        i += 3;
    }
    Ok(out)
}

/// Merges `//` and removes `.` and `..` segments; `path` starts with `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut stack: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/').skip(1) {
        trailing_slash = false;
        match segment {
            // Empty segments come from `//` (merged) and from a trailing `/`.
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                stack.pop();
                trailing_slash = true;
            }
            s => stack.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &stack {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests;
