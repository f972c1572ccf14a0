//! Stream versions.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;

/// The position of an event within its stream, counting from 1 with no gaps.
///
/// `StreamVersion::INITIAL` (0) is the version of a stream that has no events yet; the first event
/// is version 1. Versions are stored as PostgreSQL `bigint`, so the largest is [`StreamVersion::MAX`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct StreamVersion(u64);

impl StreamVersion {
    /// The version of a stream without events.
    pub const INITIAL: Self = Self(0);
    /// The version of a stream's first event.
    pub const FIRST: Self = Self(1);
    /// The largest version a stream can reach (`i64::MAX`).
    pub const MAX: Self = Self(i64::MAX as u64);

    /// Wraps a version number, refusing numbers above [`StreamVersion::MAX`].
    pub fn new(version: u64) -> Result<Self, ValidationError> {
        if version > Self::MAX.0 {
            return Err(ValidationError::VersionOutOfRange { version });
        }
        Ok(Self(version))
    }

    /// The version as a number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The version `count` events after this one, or `None` past [`StreamVersion::MAX`].
    pub fn checked_add(self, count: u64) -> Option<Self> {
        self.0
            .checked_add(count)
            .filter(|v| *v <= Self::MAX.0)
            .map(Self)
    }

    /// The next version, or `None` past [`StreamVersion::MAX`].
    pub fn next(self) -> Option<Self> {
        self.checked_add(1)
    }
}

impl fmt::Display for StreamVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl TryFrom<i64> for StreamVersion {
    type Error = ValidationError;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        u64::try_from(value)
            .map(Self)
            .map_err(|_| ValidationError::NegativeVersion { version: value })
    }
}

impl From<StreamVersion> for i64 {
    fn from(value: StreamVersion) -> Self {
        // Cannot truncate: the constructor bounds the value by i64::MAX.
        value.0 as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        assert!(StreamVersion::new(i64::MAX as u64).is_ok());
        assert!(StreamVersion::new(i64::MAX as u64 + 1).is_err());
        assert_eq!(StreamVersion::MAX.next(), None);
        assert_eq!(
            StreamVersion::INITIAL.checked_add(3),
            Some(StreamVersion(3))
        );
        assert!(StreamVersion::try_from(-1i64).is_err());
    }
}
