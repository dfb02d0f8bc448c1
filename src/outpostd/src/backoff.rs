//! Capped exponential backoff with jitter, so a fleet of sensors that lost the portal
//! at the same moment does not hammer it in lockstep when it comes back.

use std::time::Duration;

use rand_core::RngCore as _;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap: cap.max(base),
            attempt: 0,
        }
    }

    /// 1 s doubling to 5 minutes: the default for talking to the portal.
    pub fn portal() -> Backoff {
        Backoff::new(Duration::from_secs(1), Duration::from_secs(300))
    }

    /// The delay before the next try; each call doubles the ceiling up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let d = delay_for(self.attempt, self.base, self.cap, random_unit());
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// Call after a success: the next failure starts from the base delay again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Delay for the `attempt`-th retry (0-based): the ceiling `min(cap, base * 2^attempt)`,
/// of which the upper half is jittered ("equal jitter"), so the delay lies in
/// `[ceiling / 2, ceiling]`. `unit` is a random number in `[0, 1)`.
pub fn delay_for(attempt: u32, base: Duration, cap: Duration, unit: f64) -> Duration {
    let factor = 2u32.saturating_pow(attempt.min(31));
    let ceiling = base.saturating_mul(factor).min(cap);
    let half = ceiling / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

fn random_unit() -> f64 {
    // 53 random bits give a uniform f64 in [0, 1); OsRng is fine at retry rates.
    (rand_core::OsRng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const CAP: Duration = Duration::from_secs(300);

    #[test]
    fn ceiling_doubles_then_caps() {
        let ceilings: Vec<u64> = (0..12)
            .map(|a| delay_for(a, S, CAP, 1.0).as_secs())
            .collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        // Huge attempt counts must not overflow.
        assert_eq!(delay_for(u32::MAX, S, CAP, 1.0), CAP);
    }

    #[test]
    fn jitter_stays_within_half_and_full_ceiling() {
        for a in 0..20 {
            let ceiling = delay_for(a, S, CAP, 1.0);
            assert_eq!(delay_for(a, S, CAP, 0.0), ceiling / 2);
            let mid = delay_for(a, S, CAP, 0.5);
            assert!(mid >= ceiling / 2 && mid <= ceiling, "attempt {a}: {mid:?}");
        }
    }

    #[test]
    fn random_delays_respect_bounds_and_reset() {
        let mut b = Backoff::new(S, Duration::from_secs(8));
        for a in 0..10 {
            let d = b.next_delay();
            let ceiling = delay_for(a, S, Duration::from_secs(8), 1.0);
            assert!(d >= ceiling / 2 && d <= ceiling, "attempt {a}: {d:?}");
        }
        b.reset();
        assert!(b.next_delay() <= S);
    }
}
