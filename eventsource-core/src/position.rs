//! Positions in the global log: the insert position of one event, and the feed position a
//! subscriber resumes from.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;

/// The store-wide insert position of an event (PostgreSQL: an identity column).
///
/// Positions are unique and grow in insert order, but *not* in commit order: a position is drawn
/// when a row is inserted and becomes visible when its transaction commits. Never resume a reader
/// from a `GlobalPosition` alone; use [`FeedPosition`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct GlobalPosition(u64);

impl GlobalPosition {
    /// Wraps a position number.
    pub const fn new(position: u64) -> Self {
        Self(position)
    }

    /// The position as a number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for GlobalPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a reader of the global feed stands: the writing transaction's id and the event's global
/// position.
///
/// The feed is ordered by `(transaction_id, global_position)`, and every event a reader has not
/// seen sorts after the position it saved, so a saved `FeedPosition` is all a subscriber needs to
/// resume without skipping or repeating an event. Positions compare in feed order and print as
/// `transaction_id/global_position`, which [`FromStr`] reads back:
///
/// ```
/// use eventsource_core::FeedPosition;
/// let saved = FeedPosition::new(7_345, 120);
/// assert_eq!(saved.to_string(), "7345/120");
/// assert_eq!("7345/120".parse::<FeedPosition>()?, saved);
/// assert!(FeedPosition::START < saved);
/// # Ok::<(), eventsource_core::ValidationError>(())
/// ```
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct FeedPosition {
    /// The 64-bit id of the transaction that wrote the event (PostgreSQL `xid8`).
    pub transaction_id: u64,
    /// The event's global position.
    pub global_position: GlobalPosition,
}

impl FeedPosition {
    /// Before the first event: a reader starting here receives the whole feed.
    pub const START: Self = Self {
        transaction_id: 0,
        global_position: GlobalPosition(0),
    };

    /// Builds a position from its two parts.
    pub const fn new(transaction_id: u64, global_position: u64) -> Self {
        Self {
            transaction_id,
            global_position: GlobalPosition(global_position),
        }
    }
}

impl fmt::Display for FeedPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.transaction_id, self.global_position)
    }
}

impl FromStr for FeedPosition {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ValidationError::FeedPositionSyntax {
            input: s.to_owned(),
        };
        let (tx, pos) = s.split_once('/').ok_or_else(bad)?;
        Ok(Self::new(
            tx.parse().map_err(|_| bad())?,
            pos.parse().map_err(|_| bad())?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_by_transaction_first() {
        assert!(FeedPosition::new(5, 100) < FeedPosition::new(6, 1));
        assert!(FeedPosition::new(5, 1) < FeedPosition::new(5, 2));
        assert!("5".parse::<FeedPosition>().is_err());
        assert!("a/1".parse::<FeedPosition>().is_err());
    }
}
