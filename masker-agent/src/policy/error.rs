//! Policy errors: where in the file and what was expected.

use std::fmt;
use std::ops::Range;

/// A policy file that cannot be used: where, what is wrong and what was expected.
///
/// Displays as `file:line:column: message`. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub(super) origin: String,
    /// 1-based line and column, when the problem has a place in the file.
    pub(super) at: Option<(usize, usize)>,
    pub(super) message: String,
}

impl PolicyError {
    /// 1-based line of the problem, if it has one.
    #[cfg(test)]
    pub fn line(&self) -> Option<usize> {
        self.at.map(|a| a.0)
    }

    /// What is wrong and what was expected, without the location.
    #[cfg(test)]
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, col)) => write!(f, "{}:{line}:{col}: {}", self.origin, self.message),
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

impl std::error::Error for PolicyError {}

/// Builds errors located in one policy text.
pub(super) struct Errors<'a> {
    pub(super) origin: &'a str,
    pub(super) text: &'a str,
}

impl Errors<'_> {
    pub(super) fn at(&self, span: Range<usize>, message: impl Into<String>) -> PolicyError {
        let mut offset = span.start.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        PolicyError { origin: self.origin.to_owned(), at: Some((line, col)), message: message.into() }
    }

    pub(super) fn whole(&self, message: impl Into<String>) -> PolicyError {
        PolicyError { origin: self.origin.to_owned(), at: None, message: message.into() }
    }
}
