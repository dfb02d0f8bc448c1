//! The health check that commits a boot: once the sensor is healthy (the tunnel verified
//! by an authenticated round trip, and in scanner mode `ready`), the running slot is
//! marked good, so U-Boot stops counting its tries down toward a fallback.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use outpost_bootctl::{BootControl, UbootFileEnv};
use outpost_wire::log::Level;

use crate::report::Reporter;
use crate::scanner::ScanGate;

/// True on a device booted by the Outpost boot script (the state files exist).
pub fn on_device(boot_dir: &Path) -> bool {
    boot_dir.join("bootstate.0").exists() || boot_dir.join("bootstate.1").exists()
}

/// Waits for the gate (open at once in dry-run mode) and marks the booted slot good.
pub fn spawn_commit(gate: Arc<ScanGate>, reporter: Arc<Reporter>, boot_dir: &Path) {
    if !on_device(boot_dir) {
        return;
    }
    let env = UbootFileEnv::new(boot_dir);
    let spawned = std::thread::Builder::new()
        .name("health".into())
        .spawn(move || {
            while !gate.wait_ready(Duration::from_secs(3600)) {}
            commit(&env, &reporter);
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the health thread");
    }
}

fn commit(env: &dyn BootControl, reporter: &Reporter) {
    match (env.booted(), env.mark_good()) {
        (Ok(slot), Ok(())) => {
            reporter.say(&format!("health check passed: slot {slot:?} marked good"))
        }
        (_, Err(e)) | (Err(e), _) => reporter.message(
            Level::Error,
            &format!("health check passed but the slot could not be marked good: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Console;

    #[test]
    fn a_healthy_boot_marks_the_running_slot_good() {
        let dir = tempfile::tempdir().unwrap();
        let cmdline = dir.path().join("cmdline");
        std::fs::write(&cmdline, "console=ttyAMA0 outpost.slot=B ro\n").unwrap();
        assert!(
            !on_device(dir.path()),
            "no boot state yet: not an Outpost boot partition"
        );
        let env = UbootFileEnv::new(dir.path()).with_cmdline(&cmdline);
        let reporter = Reporter::new("t", Console::Capture(Default::default()));
        commit(&env, &reporter);
        assert!(on_device(dir.path()));
        assert_eq!(
            env.primary().unwrap(),
            outpost_bootctl::Slot::B,
            "the running slot goes first"
        );
    }
}
