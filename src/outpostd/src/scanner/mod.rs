//! The scanner mode's boot phases (`feed_sync` → `feed_ready` → `scanner_boot` →
//! `ready`) and the gate that holds scan claims until the sensor is ready.
//! [`phases`] decides, [`boot`] does.

pub mod boot;
pub mod phases;

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::report::lock;

/// Whether scan jobs may be claimed now. Closed while the scanner boots or reloads its
/// VTs after a restart; the claim loop waits on it.
pub struct ScanGate {
    ready: Mutex<bool>,
    changed: Condvar,
}

impl ScanGate {
    /// A gate that starts open (dry-run mode: nothing to wait for).
    pub fn open() -> ScanGate {
        ScanGate {
            ready: Mutex::new(true),
            changed: Condvar::new(),
        }
    }

    /// A gate that starts closed (scanner mode).
    pub fn closed() -> ScanGate {
        ScanGate {
            ready: Mutex::new(false),
            changed: Condvar::new(),
        }
    }

    pub fn set(&self, ready: bool) {
        *lock(&self.ready) = ready;
        self.changed.notify_all();
    }

    pub fn is_ready(&self) -> bool {
        *lock(&self.ready)
    }

    /// Waits up to `timeout` for the gate to open; returns whether it is open.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let guard = lock(&self.ready);
        match self.changed.wait_timeout_while(guard, timeout, |r| !*r) {
            Ok((g, _)) => *g,
            Err(e) => *e.into_inner().0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_closed_gate_opens_for_waiters() {
        let g = Arc::new(ScanGate::closed());
        assert!(!g.wait_ready(Duration::ZERO));
        let g2 = g.clone();
        let t = std::thread::spawn(move || g2.wait_ready(Duration::from_secs(600)));
        g.set(true);
        assert!(t.join().unwrap());
        assert!(ScanGate::open().is_ready());
    }
}
