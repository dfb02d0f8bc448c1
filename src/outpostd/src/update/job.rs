//! One update job: download, check, install into the inactive slot, record, activate,
//! report `rebooting`. The caller reboots.
//!
//! Power cut (or crash) at each point, and what the next start makes of it:
//! - during the download: `job.json` and the `.part` file remain; the job is resumed
//!   from the last synced byte ([`super::Updater::resume_job`]);
//! - during the install: the inactive slot is untouched or invalidated (never active);
//!   the complete `.bundle` remains and is installed again;
//! - after the install, before `pending.json`: as above (installed again);
//! - after `pending.json`, before `mark_active`: the boot state still prefers the old
//!   slot, so the next start reports `failed` ("interrupted before activation");
//! - after `mark_active`: the board boots the new slot on trial, which reports the job
//!   closed (`rebooting`, if that had not arrived) and then `committed`, or falls back
//!   and the old slot reports `rolled_back`.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::time::Duration;

use outpost_bundle::{install_file, Policy, Refusal, SlotState};
use outpost_wire::log::Level;
use outpost_wire::sensor::{Activity, UpdateSpec, UpdateState, UpdateStateReport};
use sha2::{Digest, Sha256};

use super::download::{self, DownloadEnd, Observer};
use super::states::{self, Delivery, Progress};
use super::store::{self, ActiveJob, Outcome, PendingUpdate};
use super::Updater;
use crate::api::PortalClient;
use crate::jobs::JobControl;
use crate::release::wire_slot;
use crate::report::Reporter;

/// Attempts for the `rebooting` report before rebooting anyway (the new slot sends it
/// again if it never arrived).
pub(super) const REBOOTING_TRIES: u32 = 5;

/// What the job runner lends an update job.
pub struct JobCtx<'a> {
    pub client: &'a PortalClient,
    pub reporter: &'a Reporter,
    pub control: &'a JobControl,
    pub sleep: &'a mut (dyn FnMut(Duration) + Send),
}

/// How an update job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    /// Installed and made active: reboot now.
    Reboot,
    /// The bundle must not be installed here; the slot is untouched.
    Refused(String),
    Failed(String),
    /// No verdict: the operator cancelled or the portal took the job back. A partial
    /// download is kept for the next job with the same bundle.
    Stopped(String),
}

impl Updater {
    /// Runs update job `job_id` to its end and delivers the report that ends it.
    pub fn run_job(&self, job_id: i64, spec: &UpdateSpec, ctx: &mut JobCtx) -> JobEnd {
        let record = ActiveJob {
            job_id,
            spec: spec.clone(),
            verdict: None,
        };
        if let Err(e) = self.store.save_job(&record) {
            tracing::warn!(job = job_id, error = %e, "update job not recorded; a restart will not resume it");
        }
        let end = self.attempt(job_id, spec, ctx);
        let (state, reason) = match &end {
            JobEnd::Reboot => return end,
            JobEnd::Stopped(reason) => {
                ctx.reporter
                    .job(Level::Warn, job_id, &format!("update stopped: {reason}"));
                self.forget_job();
                return end;
            }
            JobEnd::Refused(reason) => (UpdateState::Refused, reason.clone()),
            JobEnd::Failed(reason) => (UpdateState::Failed, reason.clone()),
        };
        ctx.reporter.job(
            Level::Error,
            job_id,
            &format!("update to {} {}: {reason}", spec.version, state.as_str()),
        );
        // Kept until delivered: a restart sends the verdict instead of redoing the job.
        let record = ActiveJob {
            verdict: Some(Outcome { state, reason }),
            ..record
        };
        if let Err(e) = self.store.save_job(&record) {
            tracing::warn!(job = job_id, error = %e, "update verdict not recorded");
        }
        self.deliver_verdict(&record, ctx);
        end
    }

    /// Resumes the update job a previous run of the daemon left unfinished (power cut,
    /// crash): its download continues where it stopped, or its verdict is delivered.
    pub fn resume_job(&self, ctx: &mut JobCtx) -> Option<(i64, JobEnd)> {
        let job = match self.store.load_job() {
            Ok(Some(job)) => job,
            Ok(None) => return None,
            Err(e) => {
                ctx.reporter.message(
                    Level::Error,
                    &format!("an interrupted update job cannot be resumed: {e}"),
                );
                self.forget_job();
                return None;
            }
        };
        ctx.control.begin(job.job_id, Activity::Updating);
        let end = match &job.verdict {
            Some(v) => {
                self.deliver_verdict(&job, ctx);
                match v.state {
                    UpdateState::Refused => JobEnd::Refused(v.reason.clone()),
                    _ => JobEnd::Failed(v.reason.clone()),
                }
            }
            None => {
                ctx.reporter.job(
                    Level::Info,
                    job.job_id,
                    "resuming the update interrupted by a restart",
                );
                self.run_job(job.job_id, &job.spec, ctx)
            }
        };
        if end != JobEnd::Reboot {
            ctx.control.end();
        }
        Some((job.job_id, end))
    }

    fn deliver_verdict(&self, job: &ActiveJob, ctx: &mut JobCtx) {
        let Some(v) = &job.verdict else { return };
        let report = UpdateStateReport {
            job_id: Some(job.job_id),
            bundle_id: job.spec.bundle_id,
            version: job.spec.version.clone(),
            state: v.state,
            reason: v.reason.clone(),
            progress_percent: 0,
            slot: self.info.slot.map(wire_slot),
        };
        match states::deliver(ctx.client, &report, None, self.slow_retry, ctx.sleep) {
            Delivery::Acked => {}
            other => tracing::warn!(job = job.job_id, answer = ?other, "update verdict not taken"),
        }
        self.forget_job();
    }

    fn forget_job(&self) {
        if let Err(e) = self.store.remove_job() {
            tracing::error!(error = %e, "cannot remove the finished update job's record");
        }
    }

    fn attempt(&self, job_id: i64, spec: &UpdateSpec, ctx: &mut JobCtx) -> JobEnd {
        let ready = match (&self.ready, self.availability()) {
            (Ok(ready), Ok(())) => ready,
            (_, Err(why)) => {
                return JobEnd::Failed(format!("this sensor cannot install updates now: {why}"))
            }
            (Err(why), Ok(())) => return JobEnd::Failed(why.clone()),
        };
        let Some(want_sha) = parse_sha256(&spec.sha256) else {
            return JobEnd::Failed(format!(
                "the job's sha256 {:?} is not 64 hex digits",
                spec.sha256
            ));
        };
        let floor = match self.store.floor() {
            Ok(f) => f,
            Err(e) => {
                return JobEnd::Failed(format!("the anti-downgrade floor is unreadable: {e}"))
            }
        };
        let policy = Policy {
            trusted: &ready.keys,
            board: &ready.board,
            current: &ready.current,
            floor: floor.as_ref(),
        };
        if let Err(e) = self
            .store
            .ensure_dir()
            .and_then(|()| self.store.remove_bundles_except(Some(spec.bundle_id)))
        {
            return JobEnd::Failed(format!("cannot make room for the bundle: {e}"));
        }
        // What an interrupted job left: a complete download is checked again, a partial
        // one resumes after what reached the disk.
        let bundle = self.store.bundle_path(spec.bundle_id);
        let have = std::fs::metadata(self.store.part_path(spec.bundle_id))
            .map(|m| m.len())
            .unwrap_or(0);
        let start = if bundle.exists() {
            "downloaded before; checking it".to_owned()
        } else if have > 0 {
            format!("downloading (resuming at byte {have})")
        } else {
            "downloading".to_owned()
        };
        ctx.reporter.job(
            Level::Info,
            job_id,
            &format!(
                "update to {} (bundle {}, {} bytes): {start}",
                spec.version, spec.bundle_id, spec.size
            ),
        );

        // 1. Download (unless a verified download is already there) and check.
        let mut progress = Progress::new(ctx.client, self.progress_interval);
        let report = |state, pct| UpdateStateReport {
            job_id: Some(job_id),
            bundle_id: spec.bundle_id,
            version: spec.version.clone(),
            state,
            reason: String::new(),
            progress_percent: pct,
            slot: self.info.slot.map(wire_slot),
        };
        if !bundle.exists() {
            let part = self.store.part_path(spec.bundle_id);
            let mut obs = Watch {
                progress: &mut progress,
                control: ctx.control,
                sleep: &mut *ctx.sleep,
                report: &report,
                size: spec.size,
            };
            match download::fetch(ctx.client, spec, &part, &policy, &mut obs) {
                Ok(()) => {}
                Err(DownloadEnd::Refused(reason)) => {
                    discard(&part);
                    return JobEnd::Refused(reason);
                }
                Err(DownloadEnd::Failed(reason)) => return JobEnd::Failed(reason),
                Err(DownloadEnd::Stopped(reason)) => return JobEnd::Stopped(reason),
            }
            if let Err(e) = std::fs::rename(&part, &bundle)
                .and_then(|()| crate::fsutil::sync_dir(self.store.dir()))
            {
                return JobEnd::Failed(format!("cannot keep the downloaded bundle: {e}"));
            }
            ctx.reporter.job(
                Level::Info,
                job_id,
                &format!("update to {}: downloaded; checking it", spec.version),
            );
        }
        match sha256_file(&bundle) {
            Ok(got) if got == want_sha => {}
            Ok(got) => {
                discard(&bundle);
                return JobEnd::Failed(format!(
                    "the downloaded file's sha256 is {}, the portal published {}",
                    hex(&got),
                    spec.sha256
                ));
            }
            Err(e) => return JobEnd::Failed(format!("cannot read {}: {e}", bundle.display())),
        }
        if ctx.control.cancel_requested() {
            return JobEnd::Stopped("cancelled by the operator before the install".into());
        }

        // 2. Install into the slot that is not running. install_file proves the whole
        //    file before it writes a byte, so a refusal leaves the slot as it was.
        let to = ready.booted.other();
        let target = (ready.slots)(to);
        if let Err(reason) = progress.post(&report(UpdateState::Installing, 0)) {
            return JobEnd::Stopped(format!("the portal took the job back: {reason}"));
        }
        ctx.reporter.job(
            Level::Info,
            job_id,
            &format!(
                "update to {}: installing into slot {to} ({}, {})",
                spec.version,
                target.rootfs.display(),
                target.boot_dir.display()
            ),
        );
        let manifest = match install_file(&bundle, &policy, &target) {
            Ok((m, _)) => m,
            Err(e) => {
                discard(&bundle);
                return match e.refusal() {
                    Some(Refusal::Read { .. }) | None => {
                        let slot = match e.slot_state() {
                            SlotState::Untouched => "untouched",
                            SlotState::Invalidated => "invalidated, not made active",
                        };
                        JobEnd::Failed(format!(
                            "installing into slot {to} failed (slot {slot}): {e}"
                        ))
                    }
                    Some(refusal) => JobEnd::Refused(refusal.to_string()),
                };
            }
        };
        let version = manifest.version.to_string();
        if version != spec.version {
            tracing::warn!(manifest = %version, job = %spec.version, "the portal's version differs from the signed manifest's; the manifest counts");
        }

        // 3. Record first, then activate: whatever the power does from here on, the
        //    next start finds the record and can tell what became of the update.
        let mut pending = PendingUpdate {
            bundle_id: spec.bundle_id,
            version: version.clone(),
            job_id: Some(job_id),
            from: ready.booted,
            to,
            job_closed: false,
            outcome: None,
            boot_id: self.boot_id.clone(),
        };
        {
            let _guard = crate::report::lock(&self.boot_lock);
            if let Err(e) = self.store.save_pending(&pending) {
                return JobEnd::Failed(format!("cannot record the installed update: {e}"));
            }
            if let Err(e) = self.boot.mark_active(to) {
                // The boot state is written copy-by-copy: it still prefers this slot.
                let _ = self.store.remove_pending();
                return JobEnd::Failed(format!("cannot make slot {to} active: {e}"));
            }
        }
        self.forget_job();
        // The data partition holds one bundle; this one is no longer needed.
        if let Err(e) = self.store.remove_bundles_except(None) {
            tracing::warn!(error = %e, "the installed bundle could not be deleted");
        }
        ctx.reporter.job(
            Level::Info,
            job_id,
            &format!("update to {version} installed into slot {to} and made active; rebooting"),
        );

        // 4. Close the job with `rebooting`; do not wait long for an absent portal.
        self.report_rebooting(&mut pending, ctx.client, Some(REBOOTING_TRIES), ctx.sleep);
        JobEnd::Reboot
    }

    /// Sends `rebooting` for the pending update's job and notes that it arrived.
    pub(super) fn report_rebooting(
        &self,
        pending: &mut PendingUpdate,
        client: &PortalClient,
        tries: Option<u32>,
        sleep: &mut dyn FnMut(Duration),
    ) {
        let Some(job_id) = pending.job_id.filter(|_| !pending.job_closed) else {
            return;
        };
        let report = UpdateStateReport {
            job_id: Some(job_id),
            bundle_id: pending.bundle_id,
            version: pending.version.clone(),
            state: UpdateState::Rebooting,
            reason: format!("slot {} installed and made active", pending.to),
            progress_percent: 100,
            slot: Some(wire_slot(pending.from)),
        };
        match states::deliver(client, &report, tries, self.slow_retry, sleep) {
            Delivery::Acked | Delivery::JobGone(_) | Delivery::Rejected(_) => {
                pending.job_closed = true;
                if let Err(e) = self.store.save_pending(pending) {
                    tracing::warn!(error = %e, "cannot note the closed job; it is reported again later");
                }
            }
            Delivery::GaveUp(e) => {
                tracing::warn!(job = job_id, error = %e, "rebooting without the portal's acknowledgement; the new slot reports it")
            }
        }
    }

    /// The outcome for a pending update that needs no health check.
    pub(super) fn settle(&self, pending: &mut PendingUpdate, state: UpdateState, reason: String) {
        pending.outcome = Some(Outcome { state, reason });
        if let Err(e) = self.store.save_pending(pending) {
            tracing::error!(error = %e, "cannot record the update's outcome");
        }
    }
}

/// Feeds download progress to the portal and watches for cancellation.
struct Watch<'a, 'b, F: Fn(UpdateState, u8) -> UpdateStateReport> {
    progress: &'a mut Progress<'b>,
    control: &'a JobControl,
    sleep: &'a mut (dyn FnMut(Duration) + Send),
    report: &'a F,
    size: u64,
}

impl<F: Fn(UpdateState, u8) -> UpdateStateReport> Observer for Watch<'_, '_, F> {
    fn progress(&mut self, have: u64) -> Result<(), String> {
        if self.control.cancel_requested() {
            return Err("cancelled by the operator".into());
        }
        let pct = (have.saturating_mul(100) / self.size.max(1)).min(100) as u8;
        self.progress
            .post(&(self.report)(UpdateState::Downloading, pct))
            .map_err(|e| format!("the portal took the job back: {e}"))
    }

    fn sleep(&mut self, d: Duration) {
        (self.sleep)(d)
    }
}

fn discard(path: &Path) {
    if let Err(e) = store::remove(path) {
        tracing::warn!(file = %path.display(), error = %e, "cannot delete a refused bundle");
    }
}

fn sha256_file(path: &Path) -> io::Result<[u8; 32]> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

fn parse_sha256(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_text() {
        let h = Sha256::digest(b"abc");
        let text = hex(&h);
        assert_eq!(parse_sha256(&text), Some(h.into()));
        assert_eq!(parse_sha256(&text.to_uppercase()), Some(h.into()));
        assert_eq!(parse_sha256(&text[..62]), None);
        assert_eq!(parse_sha256(&format!("{}zz", &text[..62])), None);
        assert_eq!(parse_sha256("é".repeat(32).as_str()), None);
    }
}
