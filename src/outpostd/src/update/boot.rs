//! After the reboot: what became of a pending update, and committing this boot.
//!
//! At start-up, before anything marks a slot good, [`Updater::resolve_at_start`] reads
//! the pending record (if any) against the boot state and the running slot:
//!
//! | running | boot state | meaning | outcome |
//! | --- | --- | --- | --- |
//! | `to` | any | the new slot is on trial | `committed` once healthy |
//! | `from` | `to` first, 0 tries | the new slot used up its tries | `rolled_back` |
//! | `from` | `to` first, tries left | made active, not rebooted yet (daemon restart) | reboot now |
//! | `from` | `from` first, `to` armed for a trial, same boot id | tryboot: not rebooted yet (daemon restart) | reboot now |
//! | `from` | `from` first, `to` armed for a trial, another boot | tryboot: the one-shot trial fell back | `rolled_back` |
//! | `from` | `from` first | power cut between the record and `mark_active` | `failed` |
//!
//! The outcome is written into the record at once, so it survives the `mark_good` that
//! follows (which puts the running slot first and would blur the evidence) and any
//! later power cut. Once the sensor is healthy ([`Updater::commit_boot`]), the outcome
//! is reported until the portal acknowledges it, then the record is removed.

use std::time::Duration;

use outpost_bootctl::DEFAULT_TRIES;
use outpost_wire::log::Level;
use outpost_wire::sensor::{UpdateState, UpdateStateReport};

use super::states::{self, Delivery};
use super::store::PendingUpdate;
use super::Updater;
use crate::api::PortalClient;
use crate::backoff::Backoff;
use crate::release::wire_slot;
use crate::report::Reporter;

/// This boot, as far as updates are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootRole {
    /// Nothing pending, or the outcome is already decided.
    Normal,
    /// Running the freshly installed slot: committing it is this boot's job.
    Trial,
    /// The new slot was made active but this boot began before the reboot (the daemon
    /// restarted): reboot, and do not mark this slot good, which would undo the switch.
    AwaitingReboot,
}

impl Updater {
    /// Decides this boot's [`BootRole`] from the pending record and the boot state, and
    /// records any outcome that is already clear. Call once, before [`Self::commit_boot`].
    pub fn resolve_at_start(&self, reporter: &Reporter) -> BootRole {
        let role = self.decide(reporter);
        *crate::report::lock(&self.role) = role;
        role
    }

    fn decide(&self, reporter: &Reporter) -> BootRole {
        let mut pending = match self.store.load_pending() {
            Ok(Some(p)) => p,
            Ok(None) => return BootRole::Normal,
            Err(e) => {
                reporter.message(
                    Level::Error,
                    &format!("the pending update record is unusable and is dropped after the health check: {e}"),
                );
                return BootRole::Normal;
            }
        };
        // The installed update supersedes the job record (power cut right after
        // `mark_active`).
        if let Err(e) = self.store.remove_job() {
            tracing::warn!(error = %e, "cannot remove the update job record");
        }
        if pending.outcome.is_some() {
            return BootRole::Normal;
        }
        let Some(booted) = self.info.slot else {
            reporter.message(
                Level::Warn,
                "an update is pending but the running slot is unknown (no outpost.slot)",
            );
            return BootRole::Normal;
        };
        if booted == pending.to {
            reporter.say(&format!(
                "slot {booted} runs update {} on trial: it is committed once healthy",
                pending.version
            ));
            return BootRole::Trial;
        }
        let state = match self.boot.status() {
            Ok(s) => s.state,
            Err(e) => {
                reporter.message(
                    Level::Error,
                    &format!(
                        "cannot read the boot state to settle update {}: {e}",
                        pending.version
                    ),
                );
                return BootRole::Normal;
            }
        };
        let (from, to) = (pending.from, pending.to);
        if state.order.first() == Some(&to) {
            if state.tries(to) > 0 {
                reporter.say(&format!(
                    "update {} is active on slot {to} but the reboot did not happen yet",
                    pending.version
                ));
                return BootRole::AwaitingReboot;
            }
            let reason = format!(
                "slot {to} did not become healthy in {DEFAULT_TRIES} tries; back on slot {from}"
            );
            reporter.message(
                Level::Error,
                &format!("update {} rolled back: {reason}", pending.version),
            );
            self.settle(&mut pending, UpdateState::RolledBack, reason);
        } else if state.trial == Some(to) {
            // Armed for a one-shot trial while `from` stays the default (the Pi
            // firmware's tryboot): the same state before the restart and after a trial
            // that fell back. The boot id tells them apart.
            if pending.boot_id.is_some() && pending.boot_id == self.boot_id {
                reporter.say(&format!(
                    "update {} is armed for a trial of slot {to} but the reboot did not happen yet",
                    pending.version
                ));
                return BootRole::AwaitingReboot;
            }
            let reason = format!(
                "slot {to} did not become healthy in its trial boot (or the board restarted before it); back on slot {from}"
            );
            reporter.message(
                Level::Error,
                &format!("update {} rolled back: {reason}", pending.version),
            );
            self.settle(&mut pending, UpdateState::RolledBack, reason);
        } else {
            let reason = format!(
                "interrupted before activation: slot {to} was written but never made active; slot {from} keeps running"
            );
            reporter.message(
                Level::Error,
                &format!("update {} failed: {reason}", pending.version),
            );
            self.settle(&mut pending, UpdateState::Failed, reason);
        }
        BootRole::Normal
    }

    /// For [`BootRole::AwaitingReboot`]: closes the job if the portal never heard
    /// `rebooting`, then reboots. `false` when there was nothing to do.
    pub fn finish_pending_reboot(
        &self,
        client: &PortalClient,
        sleep: &mut dyn FnMut(Duration),
    ) -> bool {
        if self.role() != BootRole::AwaitingReboot {
            return false;
        }
        if let Ok(Some(mut pending)) = self.store.load_pending() {
            self.report_rebooting(
                &mut pending,
                client,
                Some(super::job::REBOOTING_TRIES),
                sleep,
            );
        }
        true
    }

    /// Runs once the sensor is healthy (the gate open and the portal answering): marks
    /// the running slot good, stands the trial watchdog down, raises the anti-downgrade
    /// floor and reports the pending update's outcome until the portal takes it.
    pub fn commit_boot(
        &self,
        client: &PortalClient,
        reporter: &Reporter,
        sleep: &mut dyn FnMut(Duration),
    ) {
        let role = self.role();
        if !self.mark_good(role, reporter, sleep) {
            return;
        }
        if role == BootRole::Trial {
            if let Ok(Some(mut pending)) = self.store.load_pending() {
                let slot = pending.to;
                self.settle(
                    &mut pending,
                    UpdateState::Committed,
                    format!("slot {slot} is healthy and marked good"),
                );
            }
        }
        self.report_outcome(client, reporter, sleep);
    }

    /// `false` when this boot must not be marked good (an update waits for its reboot).
    fn mark_good(
        &self,
        role: BootRole,
        reporter: &Reporter,
        sleep: &mut dyn FnMut(Duration),
    ) -> bool {
        let mut backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(300));
        loop {
            {
                let _guard = crate::report::lock(&self.boot_lock);
                if role == BootRole::AwaitingReboot || self.activated_this_boot() {
                    reporter.say("health check passed; this slot is not marked good: an update waits for its reboot");
                    return false;
                }
                match self.boot.mark_good() {
                    Ok(()) => break,
                    // On trial the watchdog reboots us if this never works: that is the
                    // right end for a slot that cannot record its own health.
                    Err(e) => reporter.message(
                        Level::Error,
                        &format!("health check passed but the slot could not be marked good: {e}"),
                    ),
                }
            }
            sleep(backoff.next_delay());
        }
        let slot = self.info.slot.map_or("?".to_owned(), |s| s.to_string());
        reporter.say(&format!("health check passed: slot {slot} marked good"));
        self.committed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Err(e) = write_flag(&self.healthy_flag) {
            tracing::error!(file = %self.healthy_flag.display(), error = %e, "cannot tell the trial watchdog this boot is healthy");
        }
        if let Ok(version) = self.release.semver() {
            match self.store.raise_floor(&version) {
                Ok(true) => reporter.say(&format!("update floor raised to {version}")),
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "cannot raise the update floor"),
            }
        }
        true
    }

    /// A record written by this boot's own update job (not yet decided, from this slot):
    /// the new slot is or is about to be active.
    fn activated_this_boot(&self) -> bool {
        matches!(
            self.store.load_pending(),
            Ok(Some(PendingUpdate { outcome: None, from, .. })) if Some(from) == self.info.slot
        )
    }

    fn report_outcome(
        &self,
        client: &PortalClient,
        reporter: &Reporter,
        sleep: &mut dyn FnMut(Duration),
    ) {
        let mut pending = match self.store.load_pending() {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(e) => {
                reporter.message(
                    Level::Error,
                    &format!("dropping an unusable update record: {e}"),
                );
                self.drop_pending();
                return;
            }
        };
        let Some(outcome) = pending.outcome.clone() else {
            return;
        };
        // The job must be closed first if `rebooting` never reached the portal; for a
        // failure the failure itself closes it.
        if outcome.state != UpdateState::Failed {
            self.report_rebooting(&mut pending, client, None, sleep);
        }
        let job_id = (outcome.state == UpdateState::Failed && !pending.job_closed)
            .then_some(pending.job_id)
            .flatten();
        let mut report = UpdateStateReport {
            job_id,
            bundle_id: pending.bundle_id,
            version: pending.version.clone(),
            state: outcome.state,
            reason: outcome.reason.clone(),
            progress_percent: if outcome.state == UpdateState::Committed {
                100
            } else {
                0
            },
            slot: self.info.slot.map(wire_slot),
        };
        let mut answer = states::deliver(client, &report, None, self.slow_retry, sleep);
        if matches!(answer, Delivery::JobGone(_)) {
            // The job ended some other way (lease, operator): report to the sensor.
            report.job_id = None;
            answer = states::deliver(client, &report, None, self.slow_retry, sleep);
        }
        match answer {
            Delivery::Acked => reporter.say(&format!(
                "update {} {} reported to the portal",
                pending.version,
                outcome.state.as_str()
            )),
            other => reporter.message(
                Level::Error,
                &format!(
                    "the portal did not take the {} report for update {}: {other:?}",
                    outcome.state.as_str(),
                    pending.version
                ),
            ),
        }
        self.drop_pending();
    }

    fn drop_pending(&self) {
        if let Err(e) = self.store.remove_pending() {
            tracing::error!(error = %e, "cannot remove the pending update record");
        }
        if let Err(e) = self.store.remove_bundles_except(None) {
            tracing::warn!(error = %e, "cannot remove leftover bundles");
        }
    }
}

fn write_flag(path: &std::path::Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, b"")
}
