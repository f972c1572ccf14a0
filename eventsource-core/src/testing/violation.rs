//! A broken rule of the store contract: what a contract check returns instead of panicking.
//!
//! The suite builds violations with three small tools: `ensure!` (a condition must hold),
//! `ensure_eq!` (a value seen must equal the one expected) and `OrViolation::or_violation`
//! (an operation must succeed, or a value must be there).

use std::fmt::Display;

/// A store broke a rule of the contract.
///
/// The message names the broken rule and what the check saw instead: the values compared, or
/// the error of the operation that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Violation {
    message: String,
}

impl Violation {
    /// A violation described by `message`: the broken rule and what was seen.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The description: the broken rule and what was seen.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Returns a [`Violation`] from the enclosing function unless `cond` holds; the message is
/// formatted like `format!`.
macro_rules! ensure {
    ($cond:expr, $($message:tt)+) => {
        if !$cond {
            return Err($crate::testing::Violation::new(format!($($message)+)));
        }
    };
}

/// Returns a [`Violation`] from the enclosing function unless `seen == expected`; the message
/// (formatted like `format!`) is followed by both values.
macro_rules! ensure_eq {
    ($seen:expr, $expected:expr, $($message:tt)+) => {
        match (&$seen, &$expected) {
            (seen, expected) => {
                if *seen != *expected {
                    return Err($crate::testing::Violation::new(format!(
                        "{}: saw {:?}, expected {:?}",
                        format_args!($($message)+),
                        seen,
                        expected
                    )));
                }
            }
        }
    };
}

pub(crate) use {ensure, ensure_eq};

/// Turns a failed operation or a missing value into a [`Violation`].
pub(crate) trait OrViolation<T> {
    /// The value, or a violation naming `what` (the step that had to succeed, or the value
    /// that had to be there) and what happened instead.
    fn or_violation(self, what: &str) -> Result<T, Violation>;
}

impl<T, E: Display> OrViolation<T> for Result<T, E> {
    fn or_violation(self, what: &str) -> Result<T, Violation> {
        self.map_err(|error| Violation::new(format!("{what}: {error}")))
    }
}

impl<T> OrViolation<T> for Option<T> {
    fn or_violation(self, what: &str) -> Result<T, Violation> {
        self.ok_or_else(|| Violation::new(format!("{what}: got nothing")))
    }
}
