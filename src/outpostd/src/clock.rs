//! The wall clock on a board without a battery-backed clock. A Raspberry Pi powers on
//! in 1970; certificates are "not valid yet" then, and a WireGuard peer refuses a
//! handshake whose TAI64N timestamp is not later than the last one it accepted from
//! this device. So:
//!
//! - a **time floor**, the latest of the image's build time, the pinned CA's
//!   `notBefore` (the CA existed before this card was provisioned) and a time kept on
//!   `data`, is applied before anything checks a certificate or starts the tunnel;
//! - the time kept on `data` is a reservation: `RESERVE` beyond what this process (and
//!   its tunnel, whose timestamps run on from the moment it started) has reached,
//!   rewritten every `SAVE_EVERY`. After a power cut the next boot starts above every
//!   timestamp the tunnel sent, without a write per handshake. A daemon restarted in
//!   the same boot needs no reservation: the kept file also says when (wall and
//!   monotonic time) the last daemon's timeline started, so the new one starts just
//!   past where that timeline is now, and restarts do not push the clock ahead;
//! - the portal's time, read over the pinned-CA channel, sets the clock when it is off.
//!   A tunnel keeps its own timeline once started (boringtun advances it from a
//!   monotonic clock), so stepping the clock back does not disturb it.
//!
//! Setting the clock needs `--set-clock` (the image passes it; on a host the daemon
//! never touches the clock, it only says what it would do).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// How far beyond the reached time the kept floor is written. A board that reboots
/// without reaching the portal starts up to this far ahead of the time it reached.
pub const RESERVE: Duration = Duration::from_secs(15 * 60);
/// How often the kept floor is rewritten while the daemon runs (one small file).
pub const SAVE_EVERY: Duration = Duration::from_secs(10 * 60);
/// A portal time this far from the clock sets it.
pub const MAX_SKEW: Duration = Duration::from_secs(2);
/// Where the image records its build time (`YYYYMMDDTHHMMSSZ`).
pub const BUILD_ID_FILE: &str = "/usr/share/outpost/build-id";

/// The system clock, behind a trait so tests never touch the host's.
pub trait WallClock: Send + Sync {
    fn now(&self) -> SystemTime;
    fn set(&self, to: SystemTime) -> std::io::Result<()>;
    /// Monotonic milliseconds since boot (never stepped).
    fn mono_ms(&self) -> i64;
    /// Tells one boot from another (the kernel's random boot id).
    fn boot_id(&self) -> String;
}

/// The real clock; `set` only when allowed (`--set-clock`).
pub struct SystemWallClock {
    pub may_set: bool,
}

impl WallClock for SystemWallClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn set(&self, to: SystemTime) -> std::io::Result<()> {
        if !self.may_set {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "not allowed to set the clock (outpostd runs without --set-clock)",
            ));
        }
        let d = to
            .duration_since(UNIX_EPOCH)
            .map_err(|_| std::io::Error::other("time before 1970"))?;
        let ts = libc::timespec {
            tv_sec: d.as_secs() as _,
            tv_nsec: d.subsec_nanos() as _,
        };
        // SAFETY: a valid timespec for the duration of the call.
        let rc = unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    fn mono_ms(&self) -> i64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: ts is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        // time_t and c_long are 64 bits on every target this daemon is built for
        let (secs, nanos): (i64, i64) = (ts.tv_sec, ts.tv_nsec);
        secs * 1000 + nanos / 1_000_000
    }

    fn boot_id(&self) -> String {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    }
}

/// What is kept on `data`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Kept {
    /// Unix seconds no later boot starts below.
    floor: i64,
    /// The boot the last daemon ran in, and where its timeline started: wall time
    /// (unix ms) and monotonic time (ms since boot).
    #[serde(default)]
    boot_id: String,
    #[serde(default)]
    timeline_wall_ms: i64,
    #[serde(default)]
    timeline_mono_ms: i64,
}

/// What applying the floor did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FloorOutcome {
    /// The clock was at or above the floor.
    Fine,
    /// The clock was behind; it was set to the floor.
    Raised { from: i64, to: i64 },
    /// The clock was behind and could not be set.
    Behind { now: i64, floor: i64, why: String },
}

/// The device's time keeping: floor, reservation, portal time.
pub struct TimeKeeper {
    clock: Box<dyn WallClock>,
    file: PathBuf,
    /// Lower bounds known without the file: build time, CA notBefore.
    known: i64,
    /// Wall time this process's timeline started at (after the floor), and when.
    started_wall: Mutex<(SystemTime, Instant)>,
}

impl TimeKeeper {
    /// `file` is where the floor is kept (on `data`); `known` the other lower bounds.
    pub fn new(clock: Box<dyn WallClock>, file: impl Into<PathBuf>, known: &[Option<i64>]) -> Self {
        let now = clock.now();
        TimeKeeper {
            clock,
            file: file.into(),
            known: known.iter().flatten().copied().max().unwrap_or(0),
            started_wall: Mutex::new((now, Instant::now())),
        }
    }

    /// The best lower bound for the current time (unix seconds).
    #[cfg(test)]
    fn floor(&self) -> i64 {
        self.floor_ms().saturating_add(999).div_euclid(1000)
    }

    /// In the same boot as the last daemon: where that daemon's timeline is now; after
    /// a reboot: the kept reservation. Never below the known bounds.
    fn floor_ms(&self) -> i64 {
        let kept = self.read_kept();
        let from_kept = if !kept.boot_id.is_empty() && kept.boot_id == self.clock.boot_id() {
            kept.timeline_wall_ms + (self.clock.mono_ms() - kept.timeline_mono_ms).max(0)
        } else {
            kept.floor.saturating_mul(1000)
        };
        self.known.saturating_mul(1000).max(from_kept)
    }

    /// Sets the clock to the floor if it is behind. Call before any certificate check
    /// and before the tunnel starts (its handshake timestamps start from the clock).
    pub fn apply_floor(&self) -> FloorOutcome {
        let floor_ms = self.floor_ms();
        let now_ms = unix_ms(self.clock.now());
        let (now, floor) = (
            now_ms.div_euclid(1000),
            floor_ms.saturating_add(999).div_euclid(1000),
        );
        let outcome = if now_ms >= floor_ms {
            FloorOutcome::Fine
        } else {
            let to = UNIX_EPOCH
                .checked_add(Duration::from_millis(floor_ms.max(0) as u64))
                .unwrap_or(UNIX_EPOCH);
            match self.clock.set(to) {
                Ok(()) => FloorOutcome::Raised {
                    from: now,
                    to: floor,
                },
                Err(e) => FloorOutcome::Behind {
                    now,
                    floor,
                    why: e.to_string(),
                },
            }
        };
        self.restart_timeline();
        outcome
    }

    /// This process's timeline starts now; recorded at once, so a restart in this boot
    /// knows where it stands.
    fn restart_timeline(&self) {
        let now = self.clock.now();
        *self.started_wall.lock().unwrap_or_else(|e| e.into_inner()) = (now, Instant::now());
        let kept = Kept {
            floor: self.read_kept().floor,
            boot_id: self.clock.boot_id(),
            timeline_wall_ms: unix_ms(now),
            timeline_mono_ms: self.clock.mono_ms(),
        };
        if let Err(e) = self.write_kept(kept) {
            tracing::warn!(file = %self.file.display(), error = %e, "cannot keep the time floor");
        }
    }

    /// The highest wall time this process has reached on either timeline: the clock,
    /// or the one that started with it and ran on monotonically (the tunnel's).
    pub fn reached(&self) -> i64 {
        let (wall, at) = *self.started_wall.lock().unwrap_or_else(|e| e.into_inner());
        unix(wall + at.elapsed()).max(unix(self.clock.now()))
    }

    /// Writes the floor for the next boot: what was reached plus the reservation.
    pub fn save(&self) -> std::io::Result<()> {
        let kept = self.read_kept();
        let floor = self.reached() + RESERVE.as_secs() as i64;
        self.write_kept(Kept { floor, ..kept })
    }

    /// The portal's clock (`server_time`, whole seconds, read `rtt` after it was sent)
    /// against ours; sets ours when they differ by more than [`MAX_SKEW`]. Returns the
    /// step taken in seconds (positive: forward), or `None` when the clock was fine.
    pub fn adopt_portal_time(
        &self,
        server_time: i64,
        rtt: Duration,
    ) -> Result<Option<i64>, String> {
        // The answer was stamped about half a round trip ago, truncated to the second.
        // A time before the floor (or absurd) is refused, not adopted.
        // (year 10000 and later: nonsense)
        if server_time < self.known || server_time >= 253_402_300_800 {
            return Err(format!(
                "the portal's time {} is before this image was built",
                iso(server_time)
            ));
        }
        let portal = UNIX_EPOCH
            .checked_add(
                Duration::from_secs(server_time as u64) + Duration::from_millis(500) + rtt / 2,
            )
            .ok_or_else(|| format!("the portal's time {server_time} is out of range"))?;
        let now = self.clock.now();
        let skew = match portal.duration_since(now) {
            Ok(ahead) => ahead.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        };
        if skew.abs() <= MAX_SKEW.as_secs_f64() {
            return Ok(None);
        }
        self.clock.set(portal).map_err(|e| e.to_string())?;
        Ok(Some(skew.round() as i64))
    }

    fn read_kept(&self) -> Kept {
        std::fs::read(&self.file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn write_kept(&self, kept: Kept) -> std::io::Result<()> {
        let body = serde_json::to_vec(&kept).map_err(std::io::Error::other)?;
        crate::fsutil::atomic_write(&self.file, &body)
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// `2026-12-04T15:01:02Z` for people reading the console.
pub fn iso(unix_s: i64) -> String {
    let (y, m, d, hh, mm, ss) = outpost_feed::civil_from_unix(unix_s);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
}

/// The image's build time from its build id (`20261204T150000Z`), if readable.
pub fn build_time(path: &Path) -> Option<i64> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_build_id(text.trim())
}

fn parse_build_id(id: &str) -> Option<i64> {
    let b = id.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = id.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, s) = (num(9..11)?, num(11..13)?, num(13..15)?);
    civil_to_unix(y, mo, d, h, mi, s)
}

/// Unix time of a UTC date and time, if its fields are in range.
fn civil_to_unix(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64) -> Option<i64> {
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    Some(outpost_feed::unix_from_civil(y, mo, d, h, mi, s))
}

/// The `notBefore` of the first certificate in `pem` (the pinned CA), if it parses.
pub fn ca_not_before(pem: &str) -> Option<i64> {
    let der = first_pem_block(pem)?;
    not_before(&der)
}

fn first_pem_block(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let start = pem.find("-----BEGIN CERTIFICATE-----")? + "-----BEGIN CERTIFICATE-----".len();
    let end = start + pem[start..].find("-----END CERTIFICATE-----")?;
    let b64: String = pem[start..end].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// One DER TLV: (tag, contents, rest).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&l0, mut b) = b.split_first()?;
    let len = if l0 < 0x80 {
        l0 as usize
    } else {
        let n = (l0 & 0x7f) as usize;
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let len = b[..n].iter().fold(0usize, |a, &x| (a << 8) | x as usize);
        b = &b[n..];
        len
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

/// Certificate → tbsCertificate → [0] version?, serial, signature, issuer, validity.
fn not_before(der: &[u8]) -> Option<i64> {
    let (0x30, cert, _) = tlv(der)? else {
        return None;
    };
    let (0x30, tbs, _) = tlv(cert)? else {
        return None;
    };
    let mut rest = tbs;
    let (tag, _, r) = tlv(rest)?;
    if tag == 0xa0 {
        rest = r; // explicit version
    }
    for _ in 0..3 {
        rest = tlv(rest)?.2; // serial, signature algorithm, issuer
    }
    let (0x30, validity, _) = tlv(rest)? else {
        return None;
    };
    let (tag, time, _) = tlv(validity)?;
    let text = std::str::from_utf8(time).ok()?;
    match tag {
        // UTCTime YYMMDDHHMMSSZ: 50..99 are 19xx (RFC 5280)
        0x17 if text.len() == 13 => {
            let yy: i64 = text.get(0..2)?.parse().ok()?;
            let y = if yy >= 50 { 1900 + yy } else { 2000 + yy };
            parse_build_id(&format!("{y}{}T{}", text.get(2..6)?, text.get(6..13)?))
        }
        // GeneralizedTime YYYYMMDDHHMMSSZ
        0x18 if text.len() == 15 => {
            parse_build_id(&format!("{}T{}", text.get(0..8)?, text.get(8..15)?))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A settable clock that starts where the test says, in a boot of its own.
    #[derive(Clone)]
    struct FakeClock {
        wall: Arc<Mutex<SystemTime>>,
        mono_ms: Arc<Mutex<i64>>,
        boot: String,
    }

    impl FakeClock {
        fn at(unix_s: u64) -> FakeClock {
            FakeClock::in_boot(unix_s, &format!("boot-{unix_s}"))
        }
        fn in_boot(unix_s: u64, boot: &str) -> FakeClock {
            FakeClock {
                wall: Arc::new(Mutex::new(UNIX_EPOCH + Duration::from_secs(unix_s))),
                mono_ms: Arc::new(Mutex::new(1000)),
                boot: boot.to_owned(),
            }
        }
        fn unix(&self) -> i64 {
            unix(*self.wall.lock().unwrap())
        }
        /// Time passes: both clocks run on.
        fn advance(&self, d: Duration) {
            *self.wall.lock().unwrap() += d;
            *self.mono_ms.lock().unwrap() += d.as_millis() as i64;
        }
    }

    impl WallClock for FakeClock {
        fn now(&self) -> SystemTime {
            *self.wall.lock().unwrap()
        }
        fn set(&self, to: SystemTime) -> std::io::Result<()> {
            *self.wall.lock().unwrap() = to;
            Ok(())
        }
        fn mono_ms(&self) -> i64 {
            *self.mono_ms.lock().unwrap()
        }
        fn boot_id(&self) -> String {
            self.boot.clone()
        }
    }

    const DAY: i64 = 86_400;
    const BUILT: i64 = 1_796_000_000; // 2026-12

    #[test]
    fn build_ids_and_certificate_times_parse() {
        assert_eq!(parse_build_id("19700101T000000Z"), Some(0));
        assert_eq!(parse_build_id("20261204T150102Z"), Some(1_796_396_462));
        assert_eq!(parse_build_id("20000229T235959Z"), Some(951_868_799));
        assert_eq!(iso(1_796_396_462), "2026-12-04T15:01:02Z");
        assert_eq!(iso(951_868_799), "2000-02-29T23:59:59Z");
        assert_eq!(iso(8), "1970-01-01T00:00:08Z");
        for bad in [
            "",
            "2026-12-04",
            "20261304T150102Z",
            "2026120xT150102Z",
            "20261204T150102",
        ] {
            assert_eq!(parse_build_id(bad), None, "{bad}");
        }
        let mut params = rcgen::CertificateParams::new(vec!["portal".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2026, 11, 3);
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        assert_eq!(ca_not_before(&pem), parse_build_id("20261103T000000Z"));
        // rcgen's default (1975) is a UTCTime too
        let pem = rcgen::CertificateParams::new(vec!["x".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem();
        assert_eq!(ca_not_before(&pem), Some(157_766_400));
        assert_eq!(ca_not_before("not a certificate"), None);
    }

    #[test]
    fn a_clock_at_1970_is_raised_to_the_latest_known_bound() {
        let dir = tempfile::tempdir().unwrap();
        let clock = FakeClock::at(8);
        let keeper = TimeKeeper::new(
            Box::new(clock.clone()),
            dir.path().join("time"),
            &[Some(BUILT), None, Some(BUILT - DAY)],
        );
        assert_eq!(
            keeper.apply_floor(),
            FloorOutcome::Raised { from: 8, to: BUILT }
        );
        assert_eq!(clock.unix(), BUILT);
        // A clock ahead of the floor is left alone.
        let clock = FakeClock::at((BUILT + DAY) as u64);
        let keeper = TimeKeeper::new(
            Box::new(clock.clone()),
            dir.path().join("time"),
            &[Some(BUILT)],
        );
        assert_eq!(keeper.apply_floor(), FloorOutcome::Fine);
        assert_eq!(clock.unix(), BUILT + DAY);
    }

    #[test]
    fn the_kept_floor_is_above_everything_the_last_boot_reached() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("time");
        // First boot: the portal set the clock well past the build time.
        let clock = FakeClock::at(BUILT as u64);
        let keeper = TimeKeeper::new(Box::new(clock.clone()), &file, &[Some(BUILT)]);
        keeper.apply_floor();
        let portal_now = BUILT + 30 * DAY;
        let step = keeper
            .adopt_portal_time(portal_now, Duration::from_millis(40))
            .unwrap()
            .unwrap();
        assert!((30 * DAY..=30 * DAY + 1).contains(&step), "{step}");
        keeper.save().unwrap();
        // Power cut; the next boot starts with the clock a day behind (or at 1970).
        for start in [portal_now - DAY, 3] {
            let clock = FakeClock::at(start as u64);
            let keeper = TimeKeeper::new(Box::new(clock.clone()), &file, &[Some(BUILT)]);
            let out = keeper.apply_floor();
            assert!(matches!(out, FloorOutcome::Raised { .. }), "{out:?}");
            // Above every time the last boot reached (so above its last handshake).
            assert!(
                clock.unix() > portal_now,
                "{} <= {portal_now}",
                clock.unix()
            );
            assert!(clock.unix() <= portal_now + RESERVE.as_secs() as i64 + 1);
        }
    }

    #[test]
    fn stepping_the_clock_back_does_not_lower_what_was_reached() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("time");
        let clock = FakeClock::at((BUILT + DAY) as u64);
        let keeper = TimeKeeper::new(Box::new(clock.clone()), &file, &[Some(BUILT)]);
        keeper.apply_floor();
        // The portal says the clock is an hour fast: it is stepped back, but the
        // tunnel started an hour "later" and its timestamps run on from there.
        let step = keeper
            .adopt_portal_time(BUILT + DAY - 3600, Duration::ZERO)
            .unwrap();
        assert_eq!(step, Some(-3600));
        assert!(keeper.reached() >= BUILT + DAY);
        keeper.save().unwrap();
        // The next boot starts past the tunnel's timeline plus the reservation.
        let next = TimeKeeper::new(Box::new(FakeClock::at(5)), &file, &[Some(BUILT)]);
        assert!(next.floor() >= BUILT + DAY + RESERVE.as_secs() as i64);
    }

    #[test]
    fn restarts_in_one_boot_do_not_push_the_clock_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("time");
        let clock = FakeClock::in_boot(BUILT as u64, "one");
        let first = TimeKeeper::new(Box::new(clock.clone()), &file, &[Some(BUILT - DAY)]);
        first.apply_floor();
        first.save().unwrap();
        // A crash loop: each restart comes 5 s later in the same boot.
        for _ in 0..20 {
            clock.advance(Duration::from_secs(5));
            let again = TimeKeeper::new(Box::new(clock.clone()), &file, &[Some(BUILT - DAY)]);
            assert_eq!(again.apply_floor(), FloorOutcome::Fine);
        }
        assert_eq!(clock.unix(), BUILT + 100);
        // But if the clock was stepped back after the last daemon's tunnel started,
        // the next one starts past where that tunnel's timestamps are now.
        let last = TimeKeeper::new(Box::new(clock.clone()), &file, &[Some(BUILT - DAY)]);
        last.apply_floor();
        last.adopt_portal_time(BUILT + 100 - 600, Duration::ZERO)
            .unwrap();
        clock.advance(Duration::from_secs(30));
        let next = TimeKeeper::new(Box::new(clock.clone()), &file, &[Some(BUILT - DAY)]);
        assert!(matches!(next.apply_floor(), FloorOutcome::Raised { .. }));
        assert!(
            (BUILT + 130..=BUILT + 131).contains(&clock.unix()),
            "{}",
            clock.unix()
        );
    }

    #[test]
    fn small_skews_leave_the_clock_alone_and_a_refused_set_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let clock = FakeClock::at(BUILT as u64);
        let keeper = TimeKeeper::new(Box::new(clock.clone()), dir.path().join("t"), &[]);
        assert_eq!(
            keeper.adopt_portal_time(BUILT + 1, Duration::from_millis(100)),
            Ok(None)
        );
        assert_eq!(clock.unix(), BUILT);

        let host = TimeKeeper::new(
            Box::new(SystemWallClock { may_set: false }),
            dir.path().join("t2"),
            &[Some(4_102_444_800)], // 2100
        );
        match host.apply_floor() {
            FloorOutcome::Behind { why, .. } => assert!(why.contains("--set-clock"), "{why}"),
            other => panic!("the host clock must never be set: {other:?}"),
        }
        assert!(host
            .adopt_portal_time(4_102_444_900, Duration::ZERO)
            .is_err());
        // Nonsense from the network is refused, never adopted (nor a panic).
        assert!(keeper.adopt_portal_time(i64::MAX, Duration::ZERO).is_err());
        assert!(keeper.adopt_portal_time(-5, Duration::ZERO).is_err());
    }

    #[test]
    fn a_damaged_kept_file_falls_back_to_the_known_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("time");
        std::fs::write(&file, b"\x00garbage").unwrap();
        let keeper = TimeKeeper::new(Box::new(FakeClock::at(5)), &file, &[Some(BUILT)]);
        assert_eq!(keeper.floor(), BUILT);
        keeper.apply_floor();
        keeper.save().unwrap();
        let next = TimeKeeper::new(
            Box::new(FakeClock::in_boot(5, "next")),
            &file,
            &[Some(BUILT)],
        );
        assert!(next.floor() > BUILT);
    }
}
