//! Exponential backoff with jitter: one type for every retry loop of the launcher (agent
//! restarts, waiting for a runtime, reconnecting to containerd, downloads).
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
    pub multiplier: f64,
    /// Fraction of each delay added or removed at random (0.1 = ±10 %).
    pub jitter: f64,
    current: Duration,
}

impl Backoff {
    /// From `min` to `max`, doubling, without jitter.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            multiplier: 2.0,
            jitter: 0.0,
            current: min,
        }
    }

    pub fn with_jitter(mut self, jitter: f64) -> Backoff {
        self.jitter = jitter;
        self
    }

    /// The next delay (the first is `min`, ± jitter).
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = base.mul_f64(self.multiplier).min(self.max);
        if self.jitter == 0.0 {
            return base;
        }
        let factor = 1.0 + self.jitter * (fastrand::f64() * 2.0 - 1.0);
        base.mul_f64(factor)
    }

    /// Start again from `min`.
    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_jitters_and_resets() {
        let mut b =
            Backoff::new(Duration::from_millis(500), Duration::from_secs(15)).with_jitter(0.1);
        let delays: Vec<u128> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        let expected = [500u128, 1000, 2000, 4000, 8000, 15000, 15000, 15000];
        for (d, e) in delays.iter().zip(expected) {
            assert!(*d >= e * 9 / 10 && *d <= e * 11 / 10, "{delays:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(550));
        let mut exact = Backoff::new(Duration::from_millis(250), Duration::from_secs(2));
        let d: Vec<u128> = (0..5).map(|_| exact.next_delay().as_millis()).collect();
        assert_eq!(d, [250, 500, 1000, 2000, 2000]);
    }
}
