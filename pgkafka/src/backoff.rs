//! Exponential backoff between retries: the one schedule every retry loop in pgkafka follows.

use std::time::Duration;

/// Delays that start at `initial` and double up to `max`; [`reset`](Backoff::reset) after a
/// success starts over.
///
/// ```
/// # use std::time::Duration;
/// # use pgkafka::Backoff;
/// let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(300));
/// assert_eq!(backoff.next_delay(), Duration::from_millis(100));
/// assert_eq!(backoff.next_delay(), Duration::from_millis(200));
/// assert_eq!(backoff.next_delay(), Duration::from_millis(300));
/// assert_eq!(backoff.next_delay(), Duration::from_millis(300));
/// backoff.reset();
/// assert_eq!(backoff.next_delay(), Duration::from_millis(100));
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A schedule from `initial` doubling to at most `max` (`max` below `initial` is raised to it).
    #[must_use]
    pub fn new(initial: Duration, max: Duration) -> Self {
        let max = max.max(initial);
        Self { initial, max, next: initial }
    }

    /// The delay to wait now; the one after it is twice as long, up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    /// The delay [`next_delay`](Self::next_delay) would return, without moving on.
    #[must_use]
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// Starts over from the initial delay.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    /// Waits for the next delay, or until `cancelled` resolves. Returns `false` when cancelled.
    #[cfg(any(feature = "producer", feature = "consumer"))]
    pub async fn wait(&mut self, cancelled: impl std::future::Future<Output = ()>) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            () = cancelled => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_initial_stays_zero_and_never_panics() {
        let mut backoff = Backoff::new(Duration::ZERO, Duration::from_secs(1));
        assert_eq!(backoff.next_delay(), Duration::ZERO);
        assert_eq!(backoff.next_delay(), Duration::ZERO);
    }

    #[test]
    fn huge_delays_saturate() {
        let mut backoff = Backoff::new(Duration::MAX / 2 + Duration::from_secs(1), Duration::MAX);
        backoff.next_delay();
        assert_eq!(backoff.next_delay(), Duration::MAX);
    }
}
