//! The bandwidth cap (`[feed] max_kbit_per_s` in `outpost.toml`): a token bucket on the
//! bytes read from the portal's blob answers, so a sync does not saturate a branch link.
//!
//! Reading slower is what slows the link: once the socket's receive buffer is full, TCP
//! closes its window and the portal waits. Reads are cut into chunks of at most
//! [`CHUNK`] bytes so one large read cannot pull far ahead of the rate. Time comes from a
//! [`Clock`], so the waits are computed, and tested, without sleeping.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Time as the limiter sees it; tests pass a clock whose `sleep` only advances `now`.
pub trait Clock: Send + Sync {
    /// Time since a fixed, arbitrary start.
    fn now(&self) -> Duration;
    fn sleep(&self, d: Duration);
}

/// The real clock: monotonic, and sleeping the thread.
pub struct SystemClock {
    start: Instant,
}

impl SystemClock {
    pub fn new() -> SystemClock {
        SystemClock {
            start: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// Most bytes let through by one read.
pub const CHUNK: usize = 16 * 1024;

const NANOS: i128 = 1_000_000_000;

/// Bytes per second for a cap in kbit/s (1,000 bits); `None` for 0, no cap.
pub fn bytes_per_s(kbit_per_s: u32) -> Option<u64> {
    (kbit_per_s > 0).then(|| u64::from(kbit_per_s) * 1000 / 8)
}

/// A token bucket: `rate` bytes per second, up to `burst` bytes saved up while idle.
/// A read larger than the tokens at hand is let through and paid back by waiting, so the
/// bucket never stalls on a chunk bigger than its burst.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    /// Tokens in byte-nanoseconds (bytes × 10⁹), so refills and waits are exact integers;
    /// negative while a read is being paid back.
    tokens: i128,
    /// When `tokens` was last brought up to date; `None` before the first read.
    at: Option<Duration>,
}

impl TokenBucket {
    /// `rate` bytes per second (at least 1); the bucket starts full.
    pub fn new(rate: u64, burst: u64) -> TokenBucket {
        TokenBucket {
            rate: rate.max(1),
            burst,
            tokens: i128::from(burst) * NANOS,
            at: None,
        }
    }

    /// The cap's bucket: a quarter of a second's worth of burst, enough to smooth out
    /// the chunking without letting the link see more than a short spike.
    pub fn for_rate(rate: u64) -> TokenBucket {
        TokenBucket::new(rate, (rate / 4).max(1))
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Takes `n` bytes read at `now`; answers how long to wait before reading on.
    pub fn take(&mut self, n: u64, now: Duration) -> Duration {
        let cap = i128::from(self.burst) * NANOS;
        if let Some(at) = self.at {
            let elapsed = now.saturating_sub(at).as_nanos() as i128;
            self.tokens = (self.tokens + elapsed * i128::from(self.rate)).min(cap);
        }
        self.at = Some(now);
        self.tokens -= i128::from(n) * NANOS;
        if self.tokens >= 0 {
            return Duration::ZERO;
        }
        // Round up: waiting a nanosecond too little would let the rate creep above the cap.
        let rate = i128::from(self.rate);
        let ns = (-self.tokens + rate - 1) / rate;
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

/// The limiter a sync shares across all its requests: one bucket and its clock.
pub struct Limiter {
    bucket: Option<TokenBucket>,
    clock: Arc<dyn Clock>,
    /// Time spent waiting, for the report.
    pub waited: Duration,
}

impl Limiter {
    /// `None`: no cap, reads pass straight through.
    pub fn new(bucket: Option<TokenBucket>, clock: Arc<dyn Clock>) -> Limiter {
        Limiter {
            bucket,
            clock,
            waited: Duration::ZERO,
        }
    }

    /// Wraps a response body so reading it keeps to the rate.
    pub fn reader<'a, R: Read>(&'a mut self, inner: R) -> Throttled<'a, R> {
        Throttled {
            inner,
            limiter: self,
        }
    }

    fn after_read(&mut self, n: usize) {
        let Some(bucket) = &mut self.bucket else {
            return;
        };
        let wait = bucket.take(n as u64, self.clock.now());
        if !wait.is_zero() {
            self.clock.sleep(wait);
            self.waited += wait;
        }
    }
}

/// A body read under the limiter.
pub struct Throttled<'a, R> {
    inner: R,
    limiter: &'a mut Limiter,
}

impl<R: Read> Read for Throttled<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = if self.limiter.bucket.is_some() {
            buf.len().min(CHUNK)
        } else {
            buf.len()
        };
        let got = self.inner.read(&mut buf[..want])?;
        self.limiter.after_read(got);
        Ok(got)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A clock that only moves when slept on (or told to), remembering every sleep.
    #[derive(Default)]
    pub struct FakeClock {
        state: Mutex<(Duration, Vec<Duration>)>,
    }

    impl FakeClock {
        pub fn advance(&self, d: Duration) {
            self.state.lock().unwrap().0 += d;
        }
        pub fn sleeps(&self) -> Vec<Duration> {
            self.state.lock().unwrap().1.clone()
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> Duration {
            self.state.lock().unwrap().0
        }
        fn sleep(&self, d: Duration) {
            let mut s = self.state.lock().unwrap();
            s.0 += d;
            s.1.push(d);
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn kbit_to_bytes() {
        assert_eq!(bytes_per_s(0), None);
        assert_eq!(bytes_per_s(8), Some(1000));
        assert_eq!(bytes_per_s(2000), Some(250_000));
    }

    #[test]
    fn the_burst_passes_then_each_read_waits_its_share() {
        // 1,000 bytes/s, 500 saved up.
        let mut b = TokenBucket::new(1000, 500);
        let t0 = Duration::ZERO;
        assert_eq!(b.take(300, t0), Duration::ZERO);
        assert_eq!(
            b.take(200, t0),
            Duration::ZERO,
            "the burst is used up exactly"
        );
        assert_eq!(b.take(100, t0), ms(100));
        // Having waited, the next 100 bytes cost 100 ms again.
        assert_eq!(b.take(100, ms(100)), ms(100));
        // A read larger than the burst is let through and paid back.
        assert_eq!(b.take(2000, ms(200)), ms(2000));
    }

    #[test]
    fn idle_time_refills_up_to_the_burst_only() {
        let mut b = TokenBucket::new(1000, 500);
        assert_eq!(b.take(500, Duration::ZERO), Duration::ZERO);
        // An hour idle saves no more than the burst.
        let later = Duration::from_secs(3600);
        assert_eq!(b.take(500, later), Duration::ZERO);
        assert_eq!(b.take(1, later), ms(1));
        // Half the burst refilled in 250 ms.
        let mut b = TokenBucket::new(1000, 500);
        assert_eq!(b.take(500, Duration::ZERO), Duration::ZERO);
        assert_eq!(b.take(250, ms(250)), Duration::ZERO);
        assert_eq!(b.take(10, ms(250)), ms(10));
    }

    #[test]
    fn waits_round_up_to_the_nanosecond() {
        // 3 bytes/s: one byte is 333,333,333.3 ns, waited as 333,333,334.
        let mut b = TokenBucket::new(3, 0);
        assert_eq!(b.take(1, Duration::ZERO), Duration::from_nanos(333_333_334));
    }

    /// Reading 10 MB through the limiter at 250,000 bytes/s (2,000 kbit/s) takes the
    /// time the rate says, less the burst, whatever sizes the reads come in.
    #[test]
    fn the_long_run_rate_is_the_cap() {
        let rate = bytes_per_s(2000).unwrap();
        let total: usize = 10_000_000;
        for read_size in [1000usize, 4096, 64 * 1024, 1 << 20] {
            let clock = Arc::new(FakeClock::default());
            let mut lim = Limiter::new(Some(TokenBucket::for_rate(rate)), clock.clone());
            let data = vec![7u8; total];
            let mut r = lim.reader(&data[..]);
            let mut buf = vec![0u8; read_size];
            let mut n = 0;
            loop {
                let got = r.read(&mut buf).unwrap();
                assert!(got <= CHUNK, "reads are cut into chunks");
                if got == 0 {
                    break;
                }
                n += got;
            }
            assert_eq!(n, total);
            let burst = rate / 4;
            let expect = Duration::from_nanos((total as u64 - burst) * 1_000_000_000 / rate);
            let took = clock.now();
            assert!(
                took >= expect && took - expect < ms(1),
                "{read_size}: took {took:?}, expected {expect:?}"
            );
            assert_eq!(lim.waited, took);
            assert!(clock.sleeps().iter().all(|s| *s <= ms(66)), "no long stall");
        }
    }

    /// Time the reader spends elsewhere (writing, hashing, between requests) counts
    /// towards the rate, up to the burst: nothing more is waited than the cap needs.
    #[test]
    fn time_spent_elsewhere_is_not_waited_again() {
        let clock = Arc::new(FakeClock::default());
        let mut lim = Limiter::new(Some(TokenBucket::new(1000, 500)), clock.clone());
        let data = vec![0u8; 1500];
        let mut buf = vec![0u8; 500];
        let mut r = lim.reader(&data[..]);
        assert_eq!(r.read(&mut buf).unwrap(), 500, "the burst");
        assert_eq!(r.read(&mut buf).unwrap(), 500);
        // 300 ms of other work after paying 500 ms for the second read.
        clock.advance(ms(300));
        assert_eq!(r.read(&mut buf).unwrap(), 500);
        assert_eq!(clock.sleeps(), [ms(500), ms(200)]);
        assert_eq!(clock.now(), ms(1000), "1,500 bytes: 500 of burst, then 1 s");
        // Without a burst, idle time is not saved up at all.
        let mut b = TokenBucket::new(1000, 0);
        assert_eq!(b.take(500, Duration::ZERO), ms(500));
        assert_eq!(b.take(500, ms(800)), ms(500));
    }

    #[test]
    fn no_cap_reads_straight_through() {
        let clock = Arc::new(FakeClock::default());
        let mut lim = Limiter::new(None, clock.clone());
        let data = vec![1u8; 100_000];
        let mut buf = vec![0u8; 100_000];
        assert_eq!(lim.reader(&data[..]).read(&mut buf).unwrap(), 100_000);
        assert!(clock.sleeps().is_empty());
        assert_eq!(clock.now(), Duration::ZERO);
    }
}
