//! How long one publisher may be held for the readers allowed to push back
//! (`pushback_users`): a budget of waiting per second, so even a reader the
//! operator trusts can take at most that share of a publisher's time.
//! Pure: the caller passes the clock.

use std::time::Duration;

use tokio::time::Instant;

/// The budget's window.
const WINDOW: Duration = Duration::from_secs(1);

/// Waiting spent in the current one-second window of one publisher.
#[derive(Debug)]
pub(crate) struct PushbackBudget {
    per_second: Duration,
    window_start: Instant,
    spent: Duration,
}

impl PushbackBudget {
    /// A budget of `per_second` waiting in every second, starting at `now`.
    pub(crate) fn new(per_second: Duration, now: Instant) -> PushbackBudget {
        PushbackBudget {
            per_second,
            window_start: now,
            spent: Duration::ZERO,
        }
    }

    /// How long the publisher may still wait in the window `now` is in.
    pub(crate) fn allowance(&mut self, now: Instant) -> Duration {
        if now.saturating_duration_since(self.window_start) >= WINDOW {
            self.window_start = now;
            self.spent = Duration::ZERO;
        }
        self.per_second.saturating_sub(self.spent)
    }

    /// Records a wait that took `waited`.
    pub(crate) fn spend(&mut self, waited: Duration) {
        self.spent += waited;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publisher_waits_at_most_its_budget_per_second() {
        let t0 = Instant::now();
        let mut b = PushbackBudget::new(Duration::from_millis(100), t0);
        assert_eq!(b.allowance(t0), Duration::from_millis(100));
        b.spend(Duration::from_millis(70));
        let t1 = t0 + Duration::from_millis(300);
        assert_eq!(b.allowance(t1), Duration::from_millis(30));
        b.spend(Duration::from_millis(30));
        assert_eq!(b.allowance(t1), Duration::ZERO, "spent: no more waiting");
        // A wait may overrun what was left (a wake-up comes late): never negative.
        b.spend(Duration::from_millis(5));
        assert_eq!(b.allowance(t0 + Duration::from_millis(999)), Duration::ZERO);
        let t2 = t0 + Duration::from_secs(1);
        assert_eq!(
            b.allowance(t2),
            Duration::from_millis(100),
            "a new second, a new budget"
        );
    }

    #[test]
    fn a_zero_budget_never_holds() {
        let t0 = Instant::now();
        let mut b = PushbackBudget::new(Duration::ZERO, t0);
        assert_eq!(b.allowance(t0), Duration::ZERO);
        assert_eq!(b.allowance(t0 + Duration::from_secs(5)), Duration::ZERO);
    }
}
