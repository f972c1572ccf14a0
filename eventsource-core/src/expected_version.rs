//! What an append expects of the stream's current version (optimistic concurrency).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::version::StreamVersion;

/// The condition an append places on the stream's current version.
///
/// When the condition does not hold, the append stores nothing and fails with
/// [`StoreError::Conflict`](crate::StoreError::Conflict).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// Append whatever the current version is.
    ///
    /// A store may still have to retry when concurrent appends to the same stream take the
    /// versions it computed; the PostgreSQL store retries such lost races on its own (with
    /// jittered backoff, each lost round meaning another append committed) and reports a
    /// [`Conflict`](crate::Conflict) only after a long losing streak, or at once inside a
    /// caller's transaction, which the failed statement has aborted.
    Any,
    /// The stream must have no events.
    NoStream,
    /// The stream must have at least one event.
    StreamExists,
    /// The stream must be exactly at this version (`Exact(StreamVersion::INITIAL)` is `NoStream`).
    Exact(StreamVersion),
}

impl ExpectedVersion {
    /// Whether a stream currently at `current` satisfies this expectation.
    pub fn accepts(self, current: StreamVersion) -> bool {
        let (low, high) = self.accepted_range();
        low <= current && current <= high
    }

    /// The inclusive range of current versions this expectation accepts.
    ///
    /// Stores check the expectation as `low <= current <= high` in a single comparison.
    pub fn accepted_range(self) -> (StreamVersion, StreamVersion) {
        match self {
            Self::Any => (StreamVersion::INITIAL, StreamVersion::MAX),
            Self::NoStream => (StreamVersion::INITIAL, StreamVersion::INITIAL),
            Self::StreamExists => (StreamVersion::FIRST, StreamVersion::MAX),
            Self::Exact(v) => (v, v),
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any version"),
            Self::NoStream => f.write_str("no stream"),
            Self::StreamExists => f.write_str("an existing stream"),
            Self::Exact(v) => write!(f, "version {v}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts() {
        // Versions this small are always in range.
        let v = |n| {
            StreamVersion::INITIAL
                .checked_add(n)
                .unwrap_or(StreamVersion::MAX)
        };
        assert!(ExpectedVersion::Any.accepts(v(0)));
        assert!(ExpectedVersion::Any.accepts(v(9)));
        assert!(ExpectedVersion::NoStream.accepts(v(0)));
        assert!(!ExpectedVersion::NoStream.accepts(v(1)));
        assert!(!ExpectedVersion::StreamExists.accepts(v(0)));
        assert!(ExpectedVersion::StreamExists.accepts(v(1)));
        assert!(ExpectedVersion::Exact(v(3)).accepts(v(3)));
        assert!(!ExpectedVersion::Exact(v(3)).accepts(v(4)));
    }
}
