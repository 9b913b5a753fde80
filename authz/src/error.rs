//! The crate's error type and the file locations that policy-author errors point at.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::path::PathError;

/// Everything that can go wrong in this crate.
///
/// A deny is not an error: [`crate::Decision`] carries it. These are failures to load a policy
/// repository, to read a request, or to format a file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("{action} `{}`: {source}", path.display())]
    Io {
        /// What was being done, e.g. `reading`.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The policy repository failed validation; every problem is listed.
    #[error("{0}")]
    Invalid(Problems),
    /// A request path was rejected by normalization (the proxy answers 400).
    #[error("{0}")]
    Path(#[from] PathError),
    /// A request could not be mapped to a Cedar request.
    #[error("{0}")]
    Request(String),
    /// An internal invariant was violated.
    #[error("BUG: {0}")]
    Bug(String),
}

/// A position in a file of the policy repository: 1-based line and column (in characters).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// The file, as given (relative to the working directory when the repository path was).
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
}

/// One thing wrong with a policy repository, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where the problem is.
    pub location: Location,
    /// What is wrong, one line.
    pub message: String,
}

/// A non-empty list of problems, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(Vec<Problem>);

// === impl Error ===

impl Error {
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }

    /// The individual problems when this is [`Error::Invalid`], else an empty slice.
    pub fn problems(&self) -> &[Problem] {
        match self {
            Self::Invalid(p) => &p.0,
            _ => &[],
        }
    }

    pub(crate) fn bug(message: impl Into<String>) -> Self {
        let message = message.into();
        debug_assert!(false, "BUG: {message}");
        Self::Bug(message)
    }
}

// === impl Location ===

impl Location {
    /// The location of byte `offset` in `text`, which is the content of `file`.
    pub(crate) fn at(file: &Path, text: &str, offset: usize) -> Self {
        let (line, column) = line_col(text, offset);
        Self {
            file: file.to_owned(),
            line,
            column,
        }
    }

    /// The start of `file`, for problems that concern the file as a whole.
    pub(crate) fn start(file: &Path) -> Self {
        Self {
            file: file.to_owned(),
            line: 1,
            column: 1,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

// === impl Problem ===

impl Problem {
    pub(crate) fn new(location: Location, message: impl Into<String>) -> Self {
        // Messages are one line; Cedar's sometimes are not.
        let message = message
            .into()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        Self { location, message }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

// === impl Problems ===

impl Problems {
    /// `None` when `problems` is empty.
    pub(crate) fn new(mut problems: Vec<Problem>) -> Option<Self> {
        problems.sort_by(|a, b| a.location.cmp(&b.location));
        problems.dedup();
        (!problems.is_empty()).then_some(Self(problems))
    }

    /// The problems, sorted by file, line and column.
    pub fn iter(&self) -> impl Iterator<Item = &Problem> {
        self.0.iter()
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "{one}"),
            [first, rest @ ..] => write!(f, "{first} (and {} more problems)", rest.len()),
            [] => f.write_str("no problems"),
        }
    }
}

/// Where the lines of a text start, to locate many offsets in one big file without counting
/// from the start each time (a file of 10,000 policies would otherwise take seconds).
#[derive(Debug, Clone)]
pub(crate) struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub(crate) fn new(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { starts }
    }

    /// The location of byte `offset` in `text` (the text this index was built from).
    pub(crate) fn location(&self, file: &Path, text: &str, offset: usize) -> Location {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.starts.partition_point(|&s| s <= offset);
        let start = self.starts.get(line.wrapping_sub(1)).copied().unwrap_or(0);
        Location {
            file: file.to_owned(),
            line,
            column: text.get(start..offset).map_or(1, |t| t.chars().count() + 1),
        }
    }
}

/// 1-based line and character column of byte `offset` in `text` (clamped to the text).
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_lines_and_characters() {
        let text = "ab\ncdé f\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 3), (2, 1));
        // `é` is two bytes; the column counts characters.
        assert_eq!(line_col(text, 8), (2, 5));
        assert_eq!(line_col(text, 999), (3, 1));
    }

    #[test]
    fn the_line_index_agrees_with_counting() {
        let text = "ab\ncdé f\n\nx";
        let index = LineIndex::new(text);
        for offset in 0..=text.len() + 2 {
            let at = Location::at(Path::new("f"), text, offset);
            assert_eq!(index.location(Path::new("f"), text, offset), at, "{offset}");
        }
    }

    #[test]
    fn problems_sort_and_show_the_first() {
        let a = Problem::new(Location::start(Path::new("b.cedar")), "second");
        let b = Problem::new(Location::start(Path::new("a.cedar")), "first\n  wrapped");
        let p = Problems::new(vec![a, b]).unwrap();
        assert_eq!(
            p.to_string(),
            "a.cedar:1:1: first wrapped (and 1 more problems)"
        );
        assert!(Problems::new(vec![]).is_none());
    }
}
