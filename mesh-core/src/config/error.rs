//! Config errors: every problem of a rejected config, each with where and why.

use std::fmt;
use std::path::PathBuf;

/// What kind of problem a [`Problem`] is, for programs that react to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProblemKind {
    /// The file is not valid YAML or JSON.
    Syntax,
    /// A field name the model does not have.
    UnknownField,
    /// A required field is absent.
    MissingField,
    /// A value of the wrong type or form (a list where a string belongs, ...).
    InvalidValue,
    /// A duration that could not be read.
    InvalidDuration,
    /// A regular expression that does not compile.
    InvalidRegex,
    /// A reference to a backend or service that is not defined.
    UndefinedReference,
    /// Weights that sum to zero.
    ZeroWeight,
    /// Two things of the same kind with one name.
    DuplicateName,
    /// A host claimed by two services.
    ConflictingHost,
    /// A malformed SPIFFE ID.
    InvalidSpiffeId,
    /// A malformed endpoint address.
    InvalidAddress,
    /// A number outside its allowed range.
    OutOfRange,
    /// A config file version this build does not understand.
    UnsupportedVersion,
    /// The workload identity (certificate, key, trust bundle) cannot be loaded.
    Identity,
}

/// One problem found in a config: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What kind of problem this is.
    pub kind: ProblemKind,
    /// The field path, e.g. `services[0].routes[1].to[0].backend`.
    pub path: String,
    /// 1-based line in the source file, where the format gives one.
    pub line: Option<u32>,
    /// What is wrong, in words.
    pub message: String,
}

impl Problem {
    pub(crate) fn new(
        kind: ProblemKind,
        path: impl Into<String>,
        line: Option<u32>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            path: path.into(),
            line,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A config that was rejected as a whole, with every problem found in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file it came from, when it came from one.
    pub file: Option<PathBuf>,
    /// Every problem, in the order of the document.
    pub problems: Vec<Problem>,
}

impl ConfigError {
    pub(crate) fn new(problems: Vec<Problem>) -> Self {
        Self {
            file: None,
            problems,
        }
    }

    /// Names the file these problems were found in.
    #[must_use]
    pub fn in_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.file = Some(file.into());
        self
    }

    /// Whether any problem is of `kind`.
    pub fn has(&self, kind: ProblemKind) -> bool {
        self.problems.iter().any(|p| p.kind == kind)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        let origin = self
            .file
            .as_ref()
            .map_or_else(|| "mesh config".to_owned(), |p| p.display().to_string());
        write!(f, "{origin}: {n} problem{}", if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            f.write_str("\n  ")?;
            if let Some(file) = &self.file {
                write!(f, "{}:", file.display())?;
                if let Some(line) = p.line {
                    write!(f, "{line}:")?;
                }
                f.write_str(" ")?;
                if p.path.is_empty() {
                    f.write_str(&p.message)?;
                } else {
                    write!(f, "{}: {}", p.path, p.message)?;
                }
            } else {
                write!(f, "{p}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The closest of `candidates` to `word`, when it is close enough to be a
/// plausible typo.
pub(crate) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// " (did you mean `x`?)" or nothing.
pub(crate) fn suggestion<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    did_you_mean(word, candidates)
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let fields = ["endpoints", "load_balancer", "circuit_breaker"];
        assert_eq!(did_you_mean("endpoint", fields), Some("endpoints"));
        assert_eq!(did_you_mean("load_balancr", fields), Some("load_balancer"));
        assert_eq!(did_you_mean("zzz", fields), None);
    }
}
