//! The health check that commits a boot: once the sensor is healthy (the tunnel verified
//! by an authenticated round trip, in scanner mode `ready`, and the portal answering
//! heartbeats), the running slot is marked good, so U-Boot stops counting its tries down
//! toward a fallback, and a pending update's outcome is reported
//! ([`crate::update::Updater::commit_boot`]).

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::api::PortalClient;
use crate::report::{lock, Reporter};
use crate::scanner::ScanGate;
use crate::update::Updater;

/// True on a device booted by the Outpost boot script (the state files exist).
pub fn on_device(boot_dir: &std::path::Path) -> bool {
    boot_dir.join("bootstate.0").exists() || boot_dir.join("bootstate.1").exists()
}

/// Whether the portal has answered a heartbeat since the daemon started.
#[derive(Default)]
pub struct PortalContact {
    answered: Mutex<bool>,
    changed: Condvar,
}

impl PortalContact {
    pub fn note_answer(&self) {
        *lock(&self.answered) = true;
        self.changed.notify_all();
    }

    pub fn answered(&self) -> bool {
        *lock(&self.answered)
    }

    /// Waits up to `timeout` for an answer; returns whether there was one.
    pub fn wait(&self, timeout: Duration) -> bool {
        let guard = lock(&self.answered);
        match self.changed.wait_timeout_while(guard, timeout, |a| !*a) {
            Ok((g, _)) => *g,
            Err(e) => *e.into_inner().0,
        }
    }
}

/// Blocks until the gate is open and the portal has answered, both at least once.
pub fn wait_healthy(gate: &ScanGate, contact: &PortalContact) {
    loop {
        if gate.is_ready() && contact.answered() {
            return;
        }
        if !gate.is_ready() {
            gate.wait_ready(Duration::from_secs(60));
        } else {
            contact.wait(Duration::from_secs(60));
        }
    }
}

/// Starts the thread that commits this boot once healthy (nothing to commit off-device).
pub fn spawn_commit(
    gate: Arc<ScanGate>,
    contact: Arc<PortalContact>,
    updater: Arc<Updater>,
    client: PortalClient,
    reporter: Arc<Reporter>,
) {
    if !updater.on_device() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("health".into())
        .spawn(move || {
            wait_healthy(&gate, &contact);
            updater.commit_boot(&client, &reporter, &mut std::thread::sleep);
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the health thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_both_the_gate_and_the_portal() {
        let gate = Arc::new(ScanGate::closed());
        let contact = Arc::new(PortalContact::default());
        let (g, c) = (gate.clone(), contact.clone());
        let waiter = std::thread::spawn(move || wait_healthy(&g, &c));
        gate.set(true);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "the portal has not answered yet");
        contact.note_answer();
        waiter.join().unwrap();
    }
}
