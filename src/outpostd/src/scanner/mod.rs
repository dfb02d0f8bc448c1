//! The scanner mode's boot phases (`feed_sync` → `feed_ready` → `scanner_boot` →
//! `ready`) and the gate that holds scan claims until the sensor is ready.
//! [`phases`] decides, [`boot`] does.

pub mod boot;
pub mod phases;

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::report::lock;

/// Whether scan jobs may be claimed now. Closed while the scanner boots or reloads its
/// VTs after a restart, and while a new feed release is switched in (held); the claim
/// loop waits on it. A claim that may bring a scan holds a [`ScanPass`] until the job is
/// done, so a hold can wait for the scans already running to finish.
pub struct ScanGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    /// The scanner is ready (the boot phases' view).
    ready: bool,
    /// Held for a feed switch: closed whatever `ready` says.
    held: bool,
    /// Passes out: claims (and the jobs they brought) in progress.
    busy: usize,
}

impl GateState {
    fn open(&self) -> bool {
        self.ready && !self.held
    }
}

/// A claim in progress, and then its job: the gate counts it until dropped.
pub struct ScanPass<'a>(&'a ScanGate);

impl Drop for ScanPass<'_> {
    fn drop(&mut self) {
        let mut st = lock(&self.0.state);
        st.busy = st.busy.saturating_sub(1);
        self.0.changed.notify_all();
    }
}

impl ScanGate {
    /// A gate that starts open (dry-run mode: nothing to wait for).
    pub fn open() -> ScanGate {
        ScanGate::with(true)
    }

    /// A gate that starts closed (scanner mode).
    pub fn closed() -> ScanGate {
        ScanGate::with(false)
    }

    fn with(ready: bool) -> ScanGate {
        ScanGate {
            state: Mutex::new(GateState {
                ready,
                ..GateState::default()
            }),
            changed: Condvar::new(),
        }
    }

    pub fn set(&self, ready: bool) {
        lock(&self.state).ready = ready;
        self.changed.notify_all();
    }

    pub fn is_ready(&self) -> bool {
        lock(&self.state).open()
    }

    /// A pass when the gate is open, taken atomically with the check: a hold that
    /// starts after this sees the pass and waits for it.
    pub fn pass(&self) -> Option<ScanPass<'_>> {
        let mut st = lock(&self.state);
        if !st.open() {
            return None;
        }
        st.busy += 1;
        Some(ScanPass(self))
    }

    /// Closes the gate for a feed switch (until [`ScanGate::release`]) and waits up to
    /// `timeout` for every pass out to be returned; returns whether none is left.
    pub fn hold(&self, timeout: Duration) -> bool {
        let mut st = lock(&self.state);
        st.held = true;
        self.changed.notify_all();
        match self.changed.wait_timeout_while(st, timeout, |s| s.busy > 0) {
            Ok((g, _)) => g.busy == 0,
            Err(e) => e.into_inner().0.busy == 0,
        }
    }

    /// Ends a hold.
    pub fn release(&self) {
        lock(&self.state).held = false;
        self.changed.notify_all();
    }

    /// Waits up to `timeout` for the gate to open; returns whether it is open.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let guard = lock(&self.state);
        match self
            .changed
            .wait_timeout_while(guard, timeout, |s| !s.open())
        {
            Ok((g, _)) => g.open(),
            Err(e) => e.into_inner().0.open(),
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

    /// A hold closes the gate at once, waits for the scans already claimed, and only
    /// those; released, the gate opens again if the scanner is ready.
    #[test]
    fn a_hold_waits_for_running_scans_and_lets_no_new_one_in() {
        let g = Arc::new(ScanGate::open());
        let pass = g.pass().expect("open gate gives a pass");
        assert!(!g.hold(Duration::from_millis(10)), "a scan is running");
        assert!(!g.is_ready());
        assert!(g.pass().is_none(), "no new scan during the hold");
        let g2 = g.clone();
        let waiter = std::thread::spawn(move || g2.hold(Duration::from_secs(600)));
        drop(pass);
        assert!(waiter.join().unwrap(), "the running scan ended");
        g.release();
        assert!(g.is_ready());
        // Released while the scanner is not ready: still closed.
        g.set(false);
        assert!(!g.hold(Duration::ZERO) || !g.is_ready());
        g.release();
        assert!(!g.is_ready());
        g.set(true);
        assert!(g.pass().is_some());
    }
}
