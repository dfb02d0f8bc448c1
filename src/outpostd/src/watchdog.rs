//! The hardware watchdog (`i6300esb` on QEMU virt, `bcm2835_wdt` on the Pi). Nobody is
//! on site to pull the plug: a hung kernel, or a daemon that stopped making progress,
//! must reset the board. It is armed as soon as the daemon starts; the pet thread pets
//! only while the daemon's current loop keeps coming round: the registration and
//! tunnel waits at start (which may last hours while the uplink or the portal is
//! down, so they tick on every retry), then the heartbeat loop (which runs whether or
//! not the portal answers, so a WAN outage does not reset the board). A stopped or
//! wedged daemon stops petting and the board resets.
//! If the daemon exits, the watchdog keeps counting (no magic close) and the respawned
//! daemon takes over within the timeout.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The board resets this long after the last pet.
pub const TIMEOUT: Duration = Duration::from_secs(60);
/// The start-up waits' budget: longer than any one request's worst case.
pub const STARTUP_BUDGET: Duration = Duration::from_secs(300);
/// How often the pet thread looks.
pub const PET_EVERY: Duration = Duration::from_secs(5);

/// When a loop last came round, in milliseconds since the daemon started.
#[derive(Debug)]
pub struct Liveness {
    start: Instant,
    last_ms: AtomicU64,
    /// The loop may be quiet this long (its interval plus a request's worst case), ms.
    budget_ms: AtomicU64,
}

impl Liveness {
    pub fn new(budget: Duration) -> Arc<Liveness> {
        Arc::new(Liveness {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            budget_ms: AtomicU64::new(budget.as_millis() as u64),
        })
    }

    /// A new budget: start-up waits (registration, tunnel) and the heartbeat loop
    /// come round at different paces.
    pub fn set_budget(&self, budget: Duration) {
        self.budget_ms
            .store(budget.as_millis() as u64, Ordering::Relaxed);
    }

    /// The loop came round.
    pub fn tick(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// A deliberate wait (a retry's back-off, however long): alive throughout, in
    /// steps shorter than any budget.
    pub fn pause(&self, d: Duration) {
        let end = Instant::now() + d;
        loop {
            self.tick();
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let step = Duration::from_millis(self.budget_ms.load(Ordering::Relaxed) / 4);
            std::thread::sleep(left.min(PET_EVERY).min(step.max(Duration::from_millis(1))));
        }
    }

    /// Whether the loop came round within its budget.
    pub fn alive(&self) -> bool {
        let now = self.start.elapsed().as_millis() as u64;
        now.saturating_sub(self.last_ms.load(Ordering::Relaxed))
            <= self.budget_ms.load(Ordering::Relaxed)
    }
}

/// `_IOWR('W', 6, int)`: set the timeout in seconds.
const WDIOC_SETTIMEOUT: libc::c_ulong = 0xC004_5706;

/// Opens the watchdog (which arms it), sets its timeout and starts the pet thread.
pub fn start(path: &Path, liveness: Arc<Liveness>) -> std::io::Result<()> {
    let mut dev = OpenOptions::new().write(true).open(path)?;
    let mut secs: libc::c_int = TIMEOUT.as_secs() as libc::c_int;
    // SAFETY: WDIOC_SETTIMEOUT reads and writes one int through the pointer.
    let rc = unsafe { libc::ioctl(dev.as_raw_fd(), WDIOC_SETTIMEOUT as _, &mut secs) };
    if rc != 0 {
        // Not fatal: the driver keeps its default timeout.
        tracing::warn!(error = %std::io::Error::last_os_error(), "watchdog: cannot set the timeout");
    }
    dev.write_all(b"\0")?;
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || pet_loop(dev, &liveness))?;
    Ok(())
}

fn pet_loop(mut dev: File, liveness: &Liveness) {
    let mut petting = true;
    loop {
        std::thread::sleep(PET_EVERY);
        if liveness.alive() {
            if !petting {
                tracing::warn!("watchdog: the heartbeat loop is back; petting again");
                petting = true;
            }
            if let Err(e) = dev.write_all(b"\0") {
                tracing::warn!(error = %e, "watchdog: pet failed");
            }
        } else if petting {
            // Said once: the board resets within the timeout unless the loop recovers.
            eprintln!(
                "outpostd: watchdog: the heartbeat loop has stalled; no longer petting (reset in {} s)",
                TIMEOUT.as_secs()
            );
            petting = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_is_alive_only_within_its_budget() {
        let l = Liveness::new(Duration::from_millis(50));
        l.tick();
        assert!(l.alive());
        std::thread::sleep(Duration::from_millis(120));
        assert!(!l.alive(), "a loop quiet past its budget is not alive");
        l.tick();
        assert!(l.alive());
    }

    #[test]
    fn a_long_pause_keeps_the_loop_alive() {
        let l = Liveness::new(Duration::from_millis(50));
        let watcher = {
            let l = l.clone();
            std::thread::spawn(move || {
                let mut stalls = 0;
                for _ in 0..20 {
                    std::thread::sleep(Duration::from_millis(10));
                    stalls += usize::from(!l.alive());
                }
                stalls
            })
        };
        l.pause(Duration::from_millis(250));
        assert_eq!(watcher.join().unwrap(), 0, "a pause is not a stall");
        std::thread::sleep(Duration::from_millis(120));
        assert!(!l.alive(), "after the pause the budget counts again");
    }

    #[test]
    fn pets_go_to_the_device_only_while_alive() {
        // A plain file stands in for /dev/watchdog (the ioctl fails on it: warned,
        // not fatal); each pet is one byte.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wd");
        std::fs::write(&path, b"").unwrap();
        let l = Liveness::new(Duration::from_secs(3600));
        l.tick();
        start(&path, l.clone()).unwrap();
        // A daemon whose loop stalled: armed at start, then never petted.
        let stalled_path = dir.path().join("wd-stalled");
        std::fs::write(&stalled_path, b"").unwrap();
        start(&stalled_path, Liveness::new(Duration::from_millis(10))).unwrap();
        std::thread::sleep(PET_EVERY + Duration::from_millis(500));
        let petted = std::fs::metadata(&path).unwrap().len();
        assert!(petted >= 2, "open + at least one pet: {petted}");
        assert_eq!(std::fs::metadata(&stalled_path).unwrap().len(), 1);
    }
}
