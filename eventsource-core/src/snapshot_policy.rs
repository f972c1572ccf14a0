//! When the repository takes snapshots, and which state shape it reads and writes.

use std::num::NonZeroU64;

use crate::version::StreamVersion;

/// Take a snapshot each time a stream passes a multiple of `every` events, of state shape
/// `state_version`.
///
/// Bump `state_version` whenever the aggregate's serialized state changes shape: snapshots of
/// another shape are then ignored (and replaced as new ones are taken), so no migration of
/// snapshots is ever needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Events between snapshots.
    pub every: NonZeroU64,
    /// The shape of the aggregate's serialized state.
    pub state_version: u32,
}

impl SnapshotPolicy {
    /// A snapshot every `events` events (at least 1), of state shape 1.
    pub fn every(events: u64) -> Self {
        Self {
            every: NonZeroU64::new(events).unwrap_or(NonZeroU64::MIN),
            state_version: 1,
        }
    }

    /// The same policy for another state shape.
    pub fn with_state_version(mut self, state_version: u32) -> Self {
        self.state_version = state_version;
        self
    }

    /// Whether an append that took a stream from `before` to `after` passed a multiple of
    /// `every`, so a snapshot is due at `after`.
    pub fn due(&self, before: StreamVersion, after: StreamVersion) -> bool {
        before.get() / self.every.get() != after.get() / self.every.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_when_a_multiple_is_passed() -> Result<(), crate::ValidationError> {
        let v = StreamVersion::new;
        let policy = SnapshotPolicy::every(10);
        assert!(!policy.due(v(0)?, v(9)?));
        assert!(policy.due(v(9)?, v(10)?));
        assert!(policy.due(v(8)?, v(13)?));
        assert!(!policy.due(v(10)?, v(19)?));
        assert!(policy.due(v(0)?, v(35)?));
        assert_eq!(SnapshotPolicy::every(0).every.get(), 1);
        Ok(())
    }
}
