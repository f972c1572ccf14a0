//! How often and how patiently the repository retries a command after a concurrency conflict.

use std::time::Duration;

/// A bounded retry policy with exponential backoff and full jitter.
///
/// After the `n`-th conflict (counting from 1) the repository waits a random time between zero
/// and `min(max_delay, base_delay * 2^(n-1))`, reloads the aggregate and decides again. After
/// `max_attempts` attempts in all it gives up and returns the last conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// The delay ceiling after the first conflict.
    pub base_delay: Duration,
    /// The largest delay ceiling.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            base_delay: Duration::from_millis(2),
            max_delay: Duration::from_millis(200),
        }
    }
}

impl RetryPolicy {
    /// Never retry: a conflict is returned at once.
    pub fn no_retry() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The same policy with another attempt budget.
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts.max(1);
        self
    }

    /// The random delay before the attempt after the `conflicts`-th conflict.
    pub fn delay_after(&self, conflicts: u32) -> Duration {
        let exponent = conflicts.saturating_sub(1).min(20);
        let ceiling = self
            .base_delay
            .saturating_mul(1 << exponent)
            .min(self.max_delay);
        ceiling.mul_f64(fastrand::f64())
    }
}
