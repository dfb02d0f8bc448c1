//! Claiming and running jobs, one at a time, and delivering their reports.
//!
//! The claim loop runs on its own thread: claim, run the job to its end (polling the
//! executor, posting progress, honouring cancellation), spool the report, upload it,
//! then claim again. Cancellation also arrives from the heartbeat thread through
//! [`JobControl`].
//!
//! Scan jobs are claimed while the scanner is ready; update jobs whenever this sensor
//! can install one ([`Updater::availability`]). One job at a time means an update never
//! starts, and the sensor never reboots for one, while a scan runs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outpost_wire::log::Level;
use outpost_wire::sensor::{
    Activity, Capability, ClaimRequest, Job, JobSpec, JobStatusUpdate, ReportOutcome, ReportUpload,
    ScanSpec, UpdateSpec, UpdateState, UpdateStateReport,
};

use crate::api::{ApiError, PortalClient};
use crate::backoff::Backoff;
use crate::executor::{JobExecutor, JobReport, Progress, RunningJob};
use crate::report::{lock, OutageNotice, Reporter};
use crate::scanner::ScanGate;
use crate::spool::{self, Spool};
use crate::update::{JobCtx, JobEnd, Updater};

/// Pause between two attempts to reboot when the first one did not take the sensor down.
const REBOOT_RETRY: Duration = Duration::from_secs(60);

/// The job in hand, shared between the claim loop and the heartbeat thread.
#[derive(Default)]
pub struct JobControl {
    state: Mutex<ControlState>,
}

#[derive(Default)]
struct ControlState {
    current: Option<i64>,
    activity: Activity,
    cancel: bool,
    /// Jobs with work left from outside the current run: a spooled report, an update
    /// resumed after a restart or waiting for its reboot.
    held: std::collections::BTreeSet<i64>,
    /// The claim loop has looked at what a previous run left; until then the heartbeat
    /// does not list jobs (and the portal keeps every lease of this sensor).
    stock_taken: bool,
}

impl JobControl {
    pub(crate) fn begin(&self, job: i64, activity: Activity) {
        let mut s = lock(&self.state);
        s.current = Some(job);
        s.activity = activity;
        s.cancel = false;
    }

    pub(crate) fn end(&self) {
        let mut s = lock(&self.state);
        s.current = None;
        s.activity = Activity::Idle;
        s.cancel = false;
    }

    /// Records what a previous run left (jobs with work still to deliver); from now on
    /// the heartbeat lists the jobs this sensor holds.
    pub(crate) fn take_stock(&self, held: impl IntoIterator<Item = i64>) {
        let mut s = lock(&self.state);
        s.held.extend(held);
        s.stock_taken = true;
    }

    pub(crate) fn hold(&self, job: i64) {
        lock(&self.state).held.insert(job);
    }

    pub(crate) fn release(&self, job: i64) {
        lock(&self.state).held.remove(&job);
    }

    /// The jobs this sensor holds, for the heartbeat; `None` until stock is taken.
    pub fn running_jobs(&self) -> Option<Vec<i64>> {
        let s = lock(&self.state);
        if !s.stock_taken {
            return None;
        }
        let mut ids: Vec<i64> = s.held.iter().copied().chain(s.current).collect();
        ids.sort_unstable();
        ids.dedup();
        Some(ids)
    }

    /// Asks the running job to stop if it is `job`; returns whether it was.
    pub fn request_cancel(&self, job: i64) -> bool {
        let mut s = lock(&self.state);
        if s.current == Some(job) {
            s.cancel = true;
            true
        } else {
            false
        }
    }

    pub(crate) fn cancel_requested(&self) -> bool {
        lock(&self.state).cancel
    }

    pub fn activity(&self) -> Activity {
        let s = lock(&self.state);
        if s.current.is_some() {
            s.activity
        } else {
            Activity::Idle
        }
    }
}

#[derive(Debug, Clone)]
pub struct JobSettings {
    /// How often the executor is polled.
    pub poll_interval: Duration,
    /// Least time between two progress posts.
    pub status_interval: Duration,
    /// Retry delay when the portal refuses our credentials (an operator must act).
    pub slow_retry: Duration,
}

/// What became of a report upload.
#[derive(Debug, PartialEq)]
pub enum Delivery {
    /// Stored by the portal (`created` false: it already had it from an earlier try).
    Accepted { created: bool },
    /// The portal will never take it (job no longer ours); a copy is under `spool/rejected/`.
    Rejected(String),
    /// Try again later.
    Retry { slowly: bool },
}

/// How a job run ended.
enum Ended {
    /// A report to deliver, after the final status (if any) is posted. The run is
    /// released once the report is spooled.
    Report {
        report: Box<JobReport>,
        final_status: Option<JobStatusUpdate>,
        run: Box<dyn RunningJob>,
    },
    /// The job could not start; the portal was told why. No report.
    NotStarted,
    /// The portal says the job is no longer ours; nothing to deliver.
    Gone(String),
}

enum Stop {
    Cancelled,
    Deadline(u64),
    Failed(String),
}

pub struct Worker {
    pub client: PortalClient,
    pub executor: Arc<dyn JobExecutor>,
    pub spool: Spool,
    pub control: Arc<JobControl>,
    pub reporter: Arc<Reporter>,
    pub settings: JobSettings,
    /// Closed while the scanner is not ready: no scan job is claimed meanwhile.
    pub gate: Arc<ScanGate>,
    /// False when `outpost.toml` turns the scanner off: scans are never claimed.
    pub scans: bool,
    /// Installs update jobs; `None` offers no updates.
    pub updater: Option<Arc<Updater>>,
    /// An update was activated: no more claims, only (retried) reboots.
    pub reboot_pending: bool,
    /// Injected so tests do not wait.
    pub sleep: Box<dyn FnMut(Duration) + Send>,
}

impl Worker {
    /// Whether an update job could be taken now.
    fn updates_claimable(&self) -> bool {
        self.updater
            .as_ref()
            .is_some_and(|u| u.availability().is_ok())
    }

    /// What to offer: scans while the scanner is ready, updates while one can be taken.
    #[cfg(test)]
    pub fn capabilities(&self) -> Vec<Capability> {
        self.capabilities_with(self.gate.is_ready())
    }

    fn capabilities_with(&self, scan_open: bool) -> Vec<Capability> {
        let mut caps = Vec::new();
        if self.scans && scan_open {
            caps.push(Capability::Scan);
        }
        if self.updates_claimable() {
            caps.push(Capability::Update);
        }
        caps
    }

    /// Claims once; runs the job if one came. Returns whether a job ran.
    pub fn claim_once(&mut self) -> Result<bool, ApiError> {
        // Held from before the claim to the job's end: a feed switch waits for it.
        let gate = self.gate.clone();
        let pass = if self.scans { gate.pass() } else { None };
        let capabilities = self.capabilities_with(pass.is_some());
        // After an activated update only the reboot is left to do.
        if capabilities.is_empty() || self.reboot_pending {
            return Ok(false);
        }
        let req = ClaimRequest { capabilities };
        match self.client.claim(&req)? {
            None => Ok(false),
            Some(job) => {
                self.run_job(job);
                drop(pass);
                Ok(true)
            }
        }
    }

    /// Claims every `interval` forever. Scans a crash cut short become partial reports
    /// first; reports left in the spool go next, then an update interrupted by a restart.
    pub fn claim_loop(&mut self, interval: Duration) {
        self.take_stock();
        self.recover_interrupted();
        self.flush_spool();
        self.resume_update();
        let mut backoff = Backoff::portal();
        let mut outage = OutageNotice::new("job claim");
        let mut paused = false;
        loop {
            if self.reboot_pending {
                (self.sleep)(REBOOT_RETRY);
                self.reboot();
                continue;
            }
            // Claim only what can run now; a claimed job would sit idle on its lease.
            if !self.gate.is_ready() {
                let updates = self.updates_claimable();
                if !paused {
                    paused = true;
                    self.reporter.say(if updates {
                        "scan claims paused until the scanner is ready; update jobs are still claimed"
                    } else {
                        "job claims paused until the scanner is ready"
                    });
                }
                if !updates {
                    self.gate.wait_ready(interval);
                    continue;
                }
            } else if paused {
                paused = false;
                self.reporter.say("scanner ready: claiming jobs");
            }
            match self.claim_once() {
                // Right after a job, look for the next one without waiting.
                Ok(true) => {
                    outage.ok(&self.reporter);
                    backoff.reset();
                }
                Ok(false) => {
                    outage.ok(&self.reporter);
                    backoff.reset();
                    (self.sleep)(interval);
                }
                Err(e) => {
                    outage.failed(&self.reporter, &e);
                    let delay = if e.is_transient() {
                        backoff.next_delay().max(interval)
                    } else {
                        self.settings.slow_retry
                    };
                    (self.sleep)(delay);
                }
            }
        }
    }

    /// Notes the jobs a previous run left work for (spooled reports, an update job), so
    /// heartbeats list them before they are delivered or resumed. Jobs the portal thinks
    /// run here and that are not among them were lost with the previous run.
    pub fn take_stock(&self) {
        let mut held = self.spool.pending().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot list the report spool");
            Vec::new()
        });
        // A scan cut short by a crash is still ours: its partial report is on the way.
        held.extend(self.spool.results().jobs().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot list the scan result logs");
            Vec::new()
        }));
        if let Some(u) = &self.updater {
            held.extend(u.held_jobs());
        }
        self.control.take_stock(held);
    }

    /// Runs one claimed job to its end and delivers its report (or, for an update that
    /// was installed, reboots).
    pub fn run_job(&mut self, job: Job) {
        match &job.spec {
            JobSpec::Scan(spec) => {
                let spec = spec.clone();
                self.run_scan(job, &spec)
            }
            JobSpec::Update(spec) => {
                let spec = spec.clone();
                self.run_update(&job, &spec)
            }
        }
    }

    fn run_update(&mut self, job: &Job, spec: &UpdateSpec) {
        let id = job.id;
        self.control.begin(id, Activity::Updating);
        self.reporter.job(
            Level::Info,
            id,
            &format!(
                "claimed (attempt {}): update to {} (bundle {})",
                job.attempt + 1,
                spec.version,
                spec.bundle_id
            ),
        );
        let Some(updater) = self.updater.clone() else {
            // Only offered with an updater; a portal that sends one anyway hears why not.
            let reason = "this sensor does not install updates".to_owned();
            self.reporter.job(Level::Error, id, &reason);
            let report = UpdateStateReport {
                job_id: Some(id),
                bundle_id: spec.bundle_id,
                version: spec.version.clone(),
                state: UpdateState::Failed,
                reason,
                progress_percent: 0,
                slot: None,
            };
            if let Err(e) = self.client.update_state(&report) {
                tracing::warn!(job = id, error = %e, "update refusal not delivered");
            }
            self.control.end();
            return;
        };
        let end = {
            let mut ctx = JobCtx {
                client: &self.client,
                reporter: &self.reporter,
                control: &self.control,
                sleep: &mut *self.sleep,
            };
            updater.run_job(id, spec, &mut ctx)
        };
        self.after_update(end);
    }

    fn after_update(&mut self, end: JobEnd) {
        if end == JobEnd::Reboot {
            self.reboot_pending = true;
            self.reboot();
        } else {
            self.control.end();
        }
    }

    /// Picks up what a previous run left of an update: an activated slot still waiting
    /// for its reboot, or an unfinished job (its download resumes).
    pub fn resume_update(&mut self) {
        let Some(updater) = self.updater.clone() else {
            return;
        };
        if updater.finish_pending_reboot(&self.client, &mut *self.sleep) {
            self.reboot_pending = true;
            self.reboot();
            return;
        }
        let resumed = {
            let mut ctx = JobCtx {
                client: &self.client,
                reporter: &self.reporter,
                control: &self.control,
                sleep: &mut *self.sleep,
            };
            updater.resume_job(&mut ctx)
        };
        if let Some((id, end)) = resumed {
            if end != JobEnd::Reboot {
                self.control.release(id);
            }
            self.after_update(end);
        }
    }

    fn reboot(&mut self) {
        let Some(updater) = &self.updater else {
            return;
        };
        match updater.reboot() {
            Ok(()) => self.reporter.say("rebooting into the updated slot"),
            Err(e) => self.reporter.message(
                Level::Error,
                &format!("cannot reboot into the updated slot ({e}); trying again in a minute"),
            ),
        }
    }

    fn run_scan(&mut self, job: Job, spec: &ScanSpec) {
        let id = job.id;
        self.control.begin(id, Activity::Scanning);
        self.reporter.job(
            Level::Info,
            id,
            &format!(
                "claimed (attempt {}), {} target(s), running as {}",
                job.attempt + 1,
                spec.targets.len(),
                self.executor.name()
            ),
        );
        match self.execute(&job, spec) {
            Ended::NotStarted => {}
            Ended::Gone(reason) => {
                self.reporter.job(
                    Level::Warn,
                    id,
                    &format!("stopped: the portal says the job is no longer ours: {reason}"),
                );
            }
            Ended::Report {
                report,
                final_status,
                run,
            } => {
                let report = *report;
                let upload = ReportUpload {
                    request_id: spool::new_request_id(),
                    outcome: report.outcome,
                    partial: report.partial,
                    content_type: report.content_type,
                    content: report.content,
                    summary: report.summary,
                };
                // Spool first: from here on a crash cannot lose the report. Only then
                // may the scanner forget the scan and its result log go.
                self.control.hold(id);
                let mut run = Some(run);
                match self.spool.store(id, &upload) {
                    Ok(()) => {
                        if let Some(run) = run.take() {
                            run.release();
                        }
                    }
                    Err(e) => self.reporter.job(
                        Level::Error,
                        id,
                        &format!("cannot spool the report, uploading from memory: {e}"),
                    ),
                }
                if let Some(update) = final_status {
                    if let Err(e) = self.client.job_status(id, &update) {
                        tracing::warn!(job = id, error = %e, "final status not accepted");
                    }
                }
                self.deliver_until_done(id, &upload);
                // Not spooled: the result log stayed as the copy of last resort until now.
                if let Some(run) = run {
                    run.release();
                }
            }
        }
        self.control.end();
    }

    /// Turns every scan a previous run left unfinished (a result log in the spool) into
    /// a partial report, once. The job is held meanwhile ([`Worker::take_stock`]), so the
    /// portal does not hand it out again; it hears what happened as a job event and a
    /// failed status, then gets the report (outcome failed, partial) from the spool like
    /// any other. Each step is safe to repeat after another crash: a log whose report is
    /// already spooled is only removed, and the recovered report's request id is derived
    /// from the scan, so the portal answers a repeat with the report it stored.
    pub fn recover_interrupted(&mut self) {
        let jobs = match self.spool.results().jobs() {
            Ok(jobs) => jobs,
            Err(e) => {
                self.reporter.message(
                    Level::Error,
                    &format!("cannot look for scans cut short by a restart: {e}"),
                );
                return;
            }
        };
        for id in jobs {
            self.recover_one(id);
        }
    }

    fn recover_one(&mut self, id: i64) {
        let log = self.spool.results().clone();
        let mut rec = log.read(id).unwrap_or_else(|e| {
            // An unreadable log still means the job was cut short; the portal must hear it.
            tracing::error!(job = id, error = %e, "scan result log unreadable");
            Default::default()
        });
        let scan_id = rec.start.as_ref().map(|s| s.scan_id.clone());
        if self.spool.path_for(id).exists() {
            // The crash came after the report was spooled: it goes out as it is.
            if let Some(scan) = &scan_id {
                self.executor.forget(scan);
            }
            self.drop_log(id);
            return;
        }
        // ospd-openvas may have outlived the daemon: stop the scan, take what it holds.
        if let Some(scan) = &scan_id {
            let more = self.executor.salvage(scan);
            if !more.is_empty() {
                if let Err(e) = log.reopen(id).and_then(|mut w| w.append(&more, None)) {
                    tracing::warn!(job = id, error = %e, "salvaged results not kept on disk");
                }
                rec.results.extend(more);
            }
        }
        let report = crate::executor::recovered_report(id, &rec);
        let reason = format!(
            "interrupted: outpostd stopped during the scan (crash, kill or power cut); \
             {} result(s) collected before it are uploaded as a partial report",
            rec.results.len()
        );
        self.reporter.job(Level::Warn, id, &reason);
        let upload = ReportUpload {
            request_id: match &scan_id {
                Some(scan) => format!("recovered-{id}-{scan}"),
                None => format!("recovered-{id}"),
            },
            outcome: report.outcome,
            partial: true,
            content_type: report.content_type,
            content: report.content,
            summary: report.summary,
        };
        self.control.hold(id);
        let stored = match self.spool.store(id, &upload) {
            Ok(()) => true,
            Err(e) => {
                self.reporter.job(
                    Level::Error,
                    id,
                    &format!("cannot spool the recovered report, uploading from memory: {e}"),
                );
                false
            }
        };
        self.post_final(id, JobStatusUpdate::Failed { reason });
        // A spooled report goes out with `flush_spool`; otherwise the log stays as the
        // only copy until the portal has the report.
        if !stored {
            self.deliver_until_done(id, &upload);
        }
        if let Some(scan) = &scan_id {
            self.executor.forget(scan);
        }
        self.drop_log(id);
    }

    fn drop_log(&self, id: i64) {
        if let Err(e) = self.spool.results().remove(id) {
            tracing::error!(job = id, error = %e, "cannot remove a scan result log");
        }
    }

    fn execute(&mut self, job: &Job, spec: &ScanSpec) -> Ended {
        let id = job.id;
        let mut run = match self.executor.start(job) {
            Ok(run) => run,
            Err(e) => {
                let reason = format!("could not start: {e}");
                self.reporter.job(Level::Error, id, &reason);
                self.post_final(id, JobStatusUpdate::Failed { reason });
                return Ended::NotStarted;
            }
        };
        let started = Instant::now();
        let deadline = Duration::from_secs(spec.deadline_s);
        let mut last_post: Option<Instant> = None;
        let stop = loop {
            if self.control.cancel_requested() {
                break Some(Stop::Cancelled);
            }
            if started.elapsed() >= deadline {
                break Some(Stop::Deadline(spec.deadline_s));
            }
            match run.poll() {
                Ok(Progress::Finished) => break None,
                Ok(Progress::Running { percent, message }) => {
                    let due =
                        last_post.is_none_or(|t| t.elapsed() >= self.settings.status_interval);
                    if due {
                        last_post = Some(Instant::now());
                        let update = JobStatusUpdate::Running {
                            progress_percent: percent,
                            message,
                        };
                        match self.client.job_status(id, &update) {
                            Ok(answer) if answer.cancel_requested => {
                                self.control.request_cancel(id);
                                continue;
                            }
                            Ok(_) => {}
                            Err(e) if is_gone(&e) => {
                                stop_quietly(&mut run);
                                // The portal will take no report: nothing to keep.
                                run.release();
                                return Ended::Gone(e.to_string());
                            }
                            // Keep scanning through a portal outage; the report is spooled.
                            Err(e) => tracing::warn!(job = id, error = %e, "progress not posted"),
                        }
                    }
                }
                Err(e) => break Some(Stop::Failed(e.to_string())),
            }
            (self.sleep)(self.settings.poll_interval);
        };

        if stop.is_some() {
            stop_quietly(&mut run);
        }
        let mut report = run.report();
        let final_status = match stop {
            None => {
                self.reporter.job(Level::Info, id, "finished");
                None
            }
            Some(Stop::Cancelled) => {
                self.reporter
                    .job(Level::Info, id, "cancelled by the operator");
                report.outcome = ReportOutcome::Cancelled;
                report.partial = true;
                Some(JobStatusUpdate::Cancelled)
            }
            Some(Stop::Deadline(s)) => {
                let reason = format!("stopped after its deadline of {s} s");
                self.reporter.job(Level::Error, id, &reason);
                report.outcome = ReportOutcome::Failed;
                report.partial = true;
                Some(JobStatusUpdate::Failed { reason })
            }
            Some(Stop::Failed(reason)) => {
                let reason = format!("failed: {reason}");
                self.reporter.job(Level::Error, id, &reason);
                report.outcome = ReportOutcome::Failed;
                report.partial = true;
                Some(JobStatusUpdate::Failed { reason })
            }
        };
        Ended::Report {
            report: Box::new(report),
            final_status,
            run,
        }
    }

    /// Posts a final status once; the portal may be unreachable, which the lease covers.
    fn post_final(&self, id: i64, update: JobStatusUpdate) {
        if let Err(e) = self.client.job_status(id, &update) {
            tracing::warn!(job = id, error = %e, "final status not accepted");
        }
    }

    /// Uploads every report left in the spool (e.g. from before a crash or power cut).
    pub fn flush_spool(&mut self) {
        let pending = match self.spool.pending() {
            Ok(p) => p,
            Err(e) => {
                self.reporter
                    .message(Level::Error, &format!("cannot read the report spool: {e}"));
                return;
            }
        };
        for id in pending {
            match self.spool.load(id) {
                Ok(upload) => {
                    self.reporter
                        .job(Level::Info, id, "uploading a report spooled earlier");
                    self.deliver_until_done(id, &upload);
                }
                Err(e) => {
                    self.reporter
                        .job(Level::Error, id, &format!("spooled report set aside: {e}"));
                    let _ = self.spool.reject(id);
                }
            }
        }
    }

    fn deliver_until_done(&mut self, id: i64, upload: &ReportUpload) {
        let mut backoff = Backoff::portal();
        loop {
            let delay = match self.deliver_once(id, upload) {
                Delivery::Accepted { .. } | Delivery::Rejected(_) => return,
                Delivery::Retry { slowly: true } => self.settings.slow_retry,
                Delivery::Retry { slowly: false } => backoff.next_delay(),
            };
            (self.sleep)(delay);
        }
    }

    /// One upload attempt of `upload`, with the spool updated to match the answer.
    pub fn deliver_once(&self, id: i64, upload: &ReportUpload) -> Delivery {
        let delivery = self.try_deliver(id, upload);
        if !matches!(delivery, Delivery::Retry { .. }) {
            self.control.release(id);
        }
        delivery
    }

    fn try_deliver(&self, id: i64, upload: &ReportUpload) -> Delivery {
        match self.client.upload_report(id, upload) {
            Ok(ack) => {
                self.forget(id);
                self.reporter.job(
                    Level::Info,
                    id,
                    &format!(
                        "report uploaded ({}{})",
                        outcome_word(upload.outcome),
                        if ack.created { "" } else { ", already stored" }
                    ),
                );
                Delivery::Accepted {
                    created: ack.created,
                }
            }
            // The portal said 2xx but its body is odd: it has the report all the same.
            Err(ApiError::Decode(e)) => {
                tracing::warn!(job = id, error = %e, "unreadable report acknowledgement");
                self.forget(id);
                Delivery::Accepted { created: true }
            }
            Err(e) if is_gone(&e) || matches!(e.status(), Some(400 | 413)) => {
                let kept = match self.spool.reject(id) {
                    Ok(p) => p.display().to_string(),
                    Err(err) => format!("not kept: {err}"),
                };
                let reason = format!("report refused by the portal ({e}); copy at {kept}");
                self.reporter.job(Level::Error, id, &reason);
                Delivery::Rejected(reason)
            }
            Err(e) => {
                tracing::warn!(job = id, error = %e, "report upload failed; kept in the spool");
                Delivery::Retry {
                    slowly: !e.is_transient(),
                }
            }
        }
    }

    fn forget(&self, id: i64) {
        if let Err(e) = self.spool.ack(id) {
            tracing::error!(job = id, error = %e, "cannot delete an uploaded report");
        }
    }
}

/// The job is no longer leased to us or no longer exists.
fn is_gone(e: &ApiError) -> bool {
    matches!(e.status(), Some(403 | 404 | 409))
}

fn stop_quietly(run: &mut Box<dyn RunningJob>) {
    if let Err(e) = run.cancel() {
        tracing::warn!(error = %e, "executor did not stop cleanly");
    }
}

fn outcome_word(o: ReportOutcome) -> &'static str {
    match o {
        ReportOutcome::Completed => "completed",
        ReportOutcome::Cancelled => "cancelled",
        ReportOutcome::Failed => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::fake::{ok_json, status, FakeTransport};
    use crate::executor::DryRunExecutor;
    use crate::report::capture;
    use crate::transport::TransportError;
    use outpost_wire::sensor::{AliveTest, JobStatusResponse, ReportAck, ScanSpec};
    use outpost_wire::{paths, ErrorBody, ErrorCode, Secret};

    struct Setup {
        t: Arc<FakeTransport>,
        worker: Worker,
        slept: Arc<Mutex<Vec<Duration>>>,
        _dir: tempfile::TempDir,
    }

    fn setup(run_for: Duration) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let t = Arc::new(FakeTransport::default());
        let slept = Arc::new(Mutex::new(Vec::new()));
        let s2 = slept.clone();
        let worker = Worker {
            client: PortalClient::new(t.clone(), Secret::new("osk_k")),
            executor: Arc::new(DryRunExecutor::new(run_for)),
            spool: Spool::open(&dir.path().join("spool")).unwrap(),
            control: Arc::new(JobControl::default()),
            reporter: Arc::new(capture("branch-1")),
            settings: JobSettings {
                poll_interval: Duration::ZERO,
                status_interval: Duration::ZERO,
                slow_retry: Duration::from_secs(60),
            },
            gate: Arc::new(ScanGate::open()),
            scans: true,
            updater: None,
            reboot_pending: false,
            sleep: Box::new(move |d| s2.lock().unwrap().push(d)),
        };
        Setup {
            t,
            worker,
            slept,
            _dir: dir,
        }
    }

    fn job(id: i64) -> Job {
        Job {
            id,
            lease_expires_at: 0,
            attempt: 0,
            spec: JobSpec::Scan(ScanSpec {
                targets: vec!["10.9.0.2".into()],
                ports: "T:22".into(),
                exclude_hosts: vec![],
                families: vec![],
                oids: vec![],
                alive_test: AliveTest::ConsiderAlive,
                alive_methods: vec![],
                credentials: vec![],
                deadline_s: 3600,
            }),
        }
    }

    fn ack() -> crate::transport::Response {
        ok_json(&ReportAck {
            report_id: 1,
            created: true,
        })
    }

    fn uploads(t: &FakeTransport, id: i64) -> Vec<ReportUpload> {
        t.seen_on(&paths::report(id))
            .iter()
            .map(|s| serde_json::from_str(&s.body).unwrap())
            .collect()
    }

    fn statuses(t: &FakeTransport, id: i64) -> Vec<JobStatusUpdate> {
        t.seen_on(&paths::job_status(id))
            .iter()
            .map(|s| serde_json::from_str(&s.body).unwrap())
            .collect()
    }

    #[test]
    fn no_job_means_no_work() {
        let mut s = setup(Duration::ZERO);
        s.t.push(paths::CLAIM, Ok(status(204, None)));
        assert!(!s.worker.claim_once().unwrap());
        assert_eq!(s.t.seen().len(), 1);
    }

    #[test]
    fn claimed_job_runs_and_its_report_is_uploaded_once() {
        let mut s = setup(Duration::ZERO);
        s.t.push(paths::CLAIM, Ok(ok_json(&job(7))));
        s.t.push(&paths::report(7), Ok(ack()));
        assert!(s.worker.claim_once().unwrap());

        let up = uploads(&s.t, 7);
        assert_eq!(up.len(), 1);
        assert_eq!(up[0].outcome, ReportOutcome::Completed);
        assert!(!up[0].partial);
        assert!(up[0].content.contains("10.9.0.2"));
        assert_eq!(
            s.t.seen_on(&paths::report(7))[0].idempotency_key.as_deref(),
            Some(up[0].request_id.as_str())
        );
        // Delivered: the spool is empty, the sensor idle again.
        assert!(s.worker.spool.pending().unwrap().is_empty());
        assert_eq!(s.worker.control.activity(), Activity::Idle);
        let console = s.worker.reporter.captured();
        assert!(console
            .iter()
            .any(|l| l == "outpost[branch-1]: job 7: report uploaded (completed)"));
    }

    #[test]
    fn outage_keeps_the_report_spooled_and_retries_with_the_same_request_id() {
        let mut s = setup(Duration::ZERO);
        s.t.push(&paths::report(8), Err(TransportError("reset".into())));
        s.t.push(&paths::report(8), Ok(status(503, None)));
        s.t.push(&paths::report(8), Ok(ack()));
        s.worker.run_job(job(8));
        let up = uploads(&s.t, 8);
        assert_eq!(up.len(), 3);
        assert!(up.iter().all(|u| u.request_id == up[0].request_id));
        assert!(s.worker.spool.pending().unwrap().is_empty());
        // Two backoff waits between the three attempts.
        assert_eq!(s.slept.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_report_spooled_before_a_crash_is_uploaded_first_with_its_request_id() {
        let mut s = setup(Duration::ZERO);
        let earlier = ReportUpload {
            request_id: "r-before-crash".into(),
            outcome: ReportOutcome::Completed,
            partial: false,
            content_type: "application/xml".into(),
            content: "<get_scans_response/>".into(),
            summary: Default::default(),
        };
        s.worker.spool.store(4, &earlier).unwrap();
        s.t.push(&paths::report(4), Ok(ack()));
        s.worker.flush_spool();
        assert_eq!(uploads(&s.t, 4), vec![earlier]);
        assert_eq!(
            s.t.seen_on(&paths::report(4))[0].idempotency_key.as_deref(),
            Some("r-before-crash")
        );
        assert!(s.worker.spool.pending().unwrap().is_empty());
    }

    #[test]
    fn jobs_are_listed_while_held_and_not_after() {
        let mut s = setup(Duration::ZERO);
        let earlier = ReportUpload {
            request_id: "r-spooled".into(),
            outcome: ReportOutcome::Completed,
            partial: false,
            content_type: "application/xml".into(),
            content: "<get_scans_response/>".into(),
            summary: Default::default(),
        };
        s.worker.spool.store(4, &earlier).unwrap();
        assert_eq!(s.worker.control.running_jobs(), None);
        // A restart: the spooled report's job is held until the portal has the report.
        s.worker.take_stock();
        assert_eq!(s.worker.control.running_jobs(), Some(vec![4]));
        s.t.push(&paths::report(4), Ok(status(503, None)));
        s.t.push(&paths::report(4), Ok(ack()));
        let control = s.worker.control.clone();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        s.worker.sleep = Box::new(move |_| seen2.lock().unwrap().push(control.running_jobs()));
        s.worker.flush_spool();
        assert_eq!(
            seen.lock().unwrap().as_slice(),
            [Some(vec![4])],
            "held while the upload is retried"
        );
        assert_eq!(s.worker.control.running_jobs(), Some(vec![]));

        // A claimed job is listed while it runs, and no longer once its report is in.
        seen.lock().unwrap().clear();
        let mut s2 = setup(Duration::from_millis(50));
        s2.worker.take_stock();
        let control = s2.worker.control.clone();
        let seen2 = seen.clone();
        s2.worker.sleep = Box::new(move |_| seen2.lock().unwrap().push(control.running_jobs()));
        s2.t.default_for(
            &paths::job_status(7),
            ok_json(&JobStatusResponse {
                cancel_requested: false,
            }),
        );
        s2.t.push(&paths::report(7), Ok(ack()));
        s2.worker.run_job(job(7));
        assert!(
            seen.lock().unwrap().iter().all(|l| *l == Some(vec![7])),
            "{:?}",
            seen.lock().unwrap()
        );
        assert!(!seen.lock().unwrap().is_empty());
        assert_eq!(s2.worker.control.running_jobs(), Some(vec![]));
    }

    #[test]
    fn report_for_a_job_no_longer_ours_is_set_aside() {
        let mut s = setup(Duration::ZERO);
        s.t.push(
            &paths::report(9),
            Ok(status(
                409,
                Some(ErrorBody::new(ErrorCode::Conflict, "lease expired")),
            )),
        );
        s.worker.run_job(job(9));
        assert_eq!(uploads(&s.t, 9).len(), 1);
        assert!(s.worker.spool.pending().unwrap().is_empty());
        let rejected = s
            .worker
            .spool
            .path_for(9)
            .parent()
            .unwrap()
            .join("rejected/9.json");
        assert!(rejected.exists());
    }

    #[test]
    fn cancellation_from_status_answer_gives_partial_cancelled_report() {
        // The dry run would take an hour; the portal's answer stops it.
        let mut s = setup(Duration::from_secs(3600));
        s.t.push(
            &paths::job_status(5),
            Ok(ok_json(&JobStatusResponse {
                cancel_requested: true,
            })),
        );
        s.t.default_for(
            &paths::job_status(5),
            ok_json(&JobStatusResponse {
                cancel_requested: false,
            }),
        );
        s.t.push(&paths::report(5), Ok(ack()));
        s.worker.run_job(job(5));

        let st = statuses(&s.t, 5);
        assert!(matches!(st[0], JobStatusUpdate::Running { .. }));
        assert_eq!(st.last(), Some(&JobStatusUpdate::Cancelled));
        let up = uploads(&s.t, 5);
        assert_eq!(up[0].outcome, ReportOutcome::Cancelled);
        assert!(up[0].partial);
        // The status acknowledgement goes out before the partial report.
        let order: Vec<String> = s.t.seen().iter().map(|x| x.path.clone()).collect();
        let cancelled_at = order.len() - 2;
        assert_eq!(order[cancelled_at], paths::job_status(5));
        assert_eq!(order[cancelled_at + 1], paths::report(5));
    }

    #[test]
    fn cancellation_from_heartbeat_stops_the_running_job() {
        let mut s = setup(Duration::from_secs(3600));
        let control = s.worker.control.clone();
        // The "heartbeat" cancels as soon as the runner posts its first progress.
        s.t.default_for(
            &paths::job_status(6),
            ok_json(&JobStatusResponse {
                cancel_requested: false,
            }),
        );
        s.t.push(&paths::report(6), Ok(ack()));
        let slept = s.slept.clone();
        s.worker.sleep = Box::new(move |d| {
            slept.lock().unwrap().push(d);
            control.request_cancel(6);
        });
        s.worker.run_job(job(6));
        assert_eq!(statuses(&s.t, 6).last(), Some(&JobStatusUpdate::Cancelled));
        assert_eq!(uploads(&s.t, 6)[0].outcome, ReportOutcome::Cancelled);
    }

    #[test]
    fn deadline_stops_the_job_as_failed() {
        let mut s = setup(Duration::from_secs(3600));
        let mut j = job(11);
        let JobSpec::Scan(spec) = &mut j.spec else {
            panic!("a scan job")
        };
        spec.deadline_s = 0;
        s.t.default_for(
            &paths::job_status(11),
            ok_json(&JobStatusResponse {
                cancel_requested: false,
            }),
        );
        s.t.push(&paths::report(11), Ok(ack()));
        s.worker.run_job(j);
        match statuses(&s.t, 11).last() {
            Some(JobStatusUpdate::Failed { reason }) => {
                assert!(reason.contains("deadline"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        let up = uploads(&s.t, 11);
        assert_eq!(up[0].outcome, ReportOutcome::Failed);
        assert!(up[0].partial);
    }

    #[test]
    fn job_taken_away_mid_run_is_abandoned_without_report() {
        let mut s = setup(Duration::from_secs(3600));
        s.t.push(
            &paths::job_status(12),
            Ok(status(
                409,
                Some(ErrorBody::new(ErrorCode::Conflict, "lease expired")),
            )),
        );
        s.worker.run_job(job(12));
        assert!(uploads(&s.t, 12).is_empty());
        assert!(s.worker.spool.pending().unwrap().is_empty());
        assert_eq!(s.worker.control.activity(), Activity::Idle);
    }

    #[test]
    fn a_scan_past_its_deadline_is_stopped_in_ospd() {
        use crate::executor::fake_ospd::{FakeOspd, DELETED, STARTED, STOPPED, STOP_OK};
        let mut fake = FakeOspd::start(vec![STARTED, STOP_OK, STOPPED, DELETED]);
        let mut s = setup(Duration::ZERO);
        s.worker.executor = Arc::new(crate::executor::OpenvasExecutor::new(
            outpost_osp::OspClient::new(&fake.path),
            crate::scope::Scope::new(&["10.9.0.0/24".to_owned()]).unwrap(),
            crate::executor::DEFAULT_GONE_GRACE,
        ));
        let mut j = job(14);
        let JobSpec::Scan(spec) = &mut j.spec else {
            panic!("a scan job")
        };
        spec.deadline_s = 0;
        spec.families = vec!["General".into()];
        s.t.default_for(
            &paths::job_status(14),
            ok_json(&JobStatusResponse {
                cancel_requested: false,
            }),
        );
        s.t.push(&paths::report(14), Ok(ack()));
        s.worker.run_job(j);
        let cmds = fake.commands();
        assert!(cmds[0].starts_with("<start_scan "), "{cmds:?}");
        assert!(cmds[1].starts_with("<stop_scan "), "{cmds:?}");
        assert!(cmds[3].starts_with("<delete_scan "), "{cmds:?}");
        match statuses(&s.t, 14).last() {
            Some(JobStatusUpdate::Failed { reason }) => {
                assert!(reason.contains("deadline"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        let up = uploads(&s.t, 14);
        assert_eq!(up[0].outcome, ReportOutcome::Failed);
        assert!(up[0].partial);
        assert!(up[0].content.contains(r#"status="stopped""#));
    }

    /// The OpenVAS executor on `fake`, keeping results in the worker's spool.
    fn openvas_on(s: &mut Setup, fake: &crate::executor::fake_ospd::FakeOspd) {
        s.worker.executor = Arc::new(
            crate::executor::OpenvasExecutor::new(
                outpost_osp::OspClient::new(&fake.path),
                crate::scope::Scope::new(&["10.9.0.0/24".to_owned()]).unwrap(),
                crate::executor::DEFAULT_GONE_GRACE,
            )
            .with_result_log(s.worker.spool.results().clone()),
        );
    }

    fn scan_job(id: i64) -> Job {
        let mut j = job(id);
        let JobSpec::Scan(spec) = &mut j.spec else {
            panic!("a scan job")
        };
        spec.families = vec!["General".into()];
        j
    }

    /// A daemon started again on the same data directory (and the same fake portal).
    fn restart(s: &Setup, fake: &crate::executor::fake_ospd::FakeOspd) -> Worker {
        let mut again = setup(Duration::ZERO);
        again.worker.client = s.worker.client.clone();
        again.worker.spool = Spool::open(&s._dir.path().join("spool")).unwrap();
        openvas_on(&mut again, fake);
        again.worker
    }

    #[test]
    fn results_popped_before_a_crash_are_uploaded_once_as_partial_after_restart() {
        use crate::executor::fake_ospd::{FakeOspd, RUNNING_50, STARTED};
        // ospd-openvas dies with the daemon here: after two answers it is gone.
        let fake = FakeOspd::start(vec![STARTED, RUNNING_50]);
        let mut s = setup(Duration::ZERO);
        openvas_on(&mut s, &fake);
        let mut run = s.worker.executor.start(&scan_job(7)).unwrap();
        assert!(matches!(run.poll().unwrap(), Progress::Running { .. }));
        // outpostd is killed: the run is dropped, nothing is reported or cleaned up.
        drop(run);
        assert_eq!(s.worker.spool.results().jobs().unwrap(), [7]);

        let mut w = restart(&s, &fake);
        s.t.default_for(
            &paths::job_status(7),
            ok_json(&JobStatusResponse {
                cancel_requested: false,
            }),
        );
        s.t.push(&paths::report(7), Ok(ack()));
        // The job is held from the first listing on, so the portal does not re-queue it.
        w.take_stock();
        assert_eq!(w.control.running_jobs(), Some(vec![7]));
        w.recover_interrupted();
        w.flush_spool();

        let up = uploads(&s.t, 7);
        assert_eq!(up.len(), 1);
        assert_eq!(up[0].outcome, ReportOutcome::Failed);
        assert!(up[0].partial);
        assert!(
            up[0].request_id.starts_with("recovered-7-"),
            "{}",
            up[0].request_id
        );
        // The result popped before the crash, in OSP form, with the scan marked interrupted.
        assert_eq!(up[0].content.matches("<result ").count(), 1);
        assert!(up[0].content.contains("Best matching OS: Debian"));
        assert!(up[0].content.contains(r#"status="interrupted""#));
        assert_eq!(up[0].summary.live_hosts, ["10.9.0.2"]);
        assert!(up[0].summary.dead_hosts.is_empty());
        // The portal heard what happened before the report came.
        match statuses(&s.t, 7).as_slice() {
            [JobStatusUpdate::Failed { reason }] => {
                assert!(reason.starts_with("interrupted: "), "{reason}");
                assert!(reason.contains("1 result(s)"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(w
            .reporter
            .captured()
            .iter()
            .any(|l| l.starts_with("outpost[branch-1]: job 7: interrupted: ")));
        assert!(w.spool.pending().unwrap().is_empty());
        assert!(w.spool.results().jobs().unwrap().is_empty());
        assert_eq!(w.control.running_jobs(), Some(vec![]));

        // Yet another restart finds nothing left to send.
        let mut w = restart(&s, &fake);
        w.take_stock();
        w.recover_interrupted();
        w.flush_spool();
        assert_eq!(uploads(&s.t, 7).len(), 1);
        assert_eq!(w.control.running_jobs(), Some(vec![]));
    }

    #[test]
    fn a_crash_between_upload_and_acknowledgement_repeats_the_same_request() {
        let fake = crate::executor::fake_ospd::FakeOspd::start(vec![]);
        let mut s = setup(Duration::ZERO);
        openvas_on(&mut s, &fake);
        // A log as a crashed run leaves it: header and one result, last line torn.
        let log = s.worker.spool.results().clone();
        let mut w = log
            .begin(&crate::results::ScanStart {
                job: 8,
                scan_id: "2f616d53-595f-4785-9b97-4395116ca118".into(),
                started_unix: 1_700_000_000,
                targets: vec!["10.9.0.0/24".into()],
                exclude_hosts: vec![],
            })
            .unwrap();
        w.append(
            &[crate::results::tests::result(
                "10.9.0.2", "22/tcp", 9.8, "kept",
            )],
            None,
        )
        .unwrap();
        drop(w);
        let mut bytes = std::fs::read(log.path_for(8)).unwrap();
        bytes.extend_from_slice(br#"{"rec":"result","na"#);
        std::fs::write(log.path_for(8), bytes).unwrap();

        s.t.default_for(
            &paths::job_status(8),
            ok_json(&JobStatusResponse {
                cancel_requested: false,
            }),
        );
        s.worker.take_stock();
        s.worker.recover_interrupted();
        // The portal stores the upload, but the daemon dies before it deletes the spool
        // file: keep a copy and put it back after the upload.
        let spooled = std::fs::read(s.worker.spool.path_for(8)).unwrap();
        s.t.push(&paths::report(8), Ok(ack()));
        s.worker.flush_spool();
        std::fs::write(s.worker.spool.path_for(8), &spooled).unwrap();

        let mut w = restart(&s, &fake);
        s.t.push(
            &paths::report(8),
            Ok(ok_json(&ReportAck {
                report_id: 1,
                created: false,
            })),
        );
        w.take_stock();
        w.recover_interrupted();
        w.flush_spool();
        let up = uploads(&s.t, 8);
        assert_eq!(up.len(), 2);
        // The same request both times: the portal answers the repeat with the report it has.
        assert_eq!(up[0], up[1]);
        assert_eq!(up[0].content.matches("<result ").count(), 1);
        assert!(up[0].content.contains(r#"name="kept""#));
        assert!(w
            .reporter
            .captured()
            .iter()
            .any(|l| l == "outpost[branch-1]: job 8: report uploaded (failed, already stored)"));
        assert!(w.spool.pending().unwrap().is_empty());
        assert!(w.spool.results().jobs().unwrap().is_empty());
    }

    #[test]
    fn a_log_whose_report_was_already_spooled_adds_no_second_report() {
        let fake = crate::executor::fake_ospd::FakeOspd::start(vec![]);
        let mut s = setup(Duration::ZERO);
        openvas_on(&mut s, &fake);
        // The crash came after the report was spooled and before the log was removed.
        let log = s.worker.spool.results().clone();
        drop(
            log.begin(&crate::results::ScanStart {
                job: 4,
                scan_id: "2f616d53-595f-4785-9b97-4395116ca118".into(),
                started_unix: 0,
                targets: vec!["10.9.0.2".into()],
                exclude_hosts: vec![],
            })
            .unwrap(),
        );
        let full = ReportUpload {
            request_id: "r-complete".into(),
            outcome: ReportOutcome::Completed,
            partial: false,
            content_type: "application/xml".into(),
            content: "<get_scans_response/>".into(),
            summary: Default::default(),
        };
        s.worker.spool.store(4, &full).unwrap();
        s.t.push(&paths::report(4), Ok(ack()));
        s.worker.take_stock();
        assert_eq!(s.worker.control.running_jobs(), Some(vec![4]));
        s.worker.recover_interrupted();
        s.worker.flush_spool();
        assert_eq!(uploads(&s.t, 4), vec![full]);
        assert!(statuses(&s.t, 4).is_empty());
        assert!(log.jobs().unwrap().is_empty());
    }

    #[test]
    fn delete_scan_waits_until_the_report_is_spooled() {
        use crate::executor::fake_ospd::{FakeOspd, DELETED, FINISHED, RUNNING_50, STARTED};
        let fake = FakeOspd::start(vec![STARTED, RUNNING_50, FINISHED, DELETED]);
        let mut s = setup(Duration::ZERO);
        openvas_on(&mut s, &fake);
        s.t.default_for(
            &paths::job_status(15),
            ok_json(&JobStatusResponse {
                cancel_requested: false,
            }),
        );
        // The portal is down for the first upload: look at the sensor while it waits.
        s.t.push(&paths::report(15), Err(TransportError("reset".into())));
        s.t.push(&paths::report(15), Ok(ack()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let spool_file = s.worker.spool.path_for(15);
        let log_file = s.worker.spool.results().path_for(15);
        let commands = Arc::new(Mutex::new(fake));
        let commands2 = commands.clone();
        s.worker.sleep = Box::new(move |_| {
            let cmds = commands2.lock().unwrap().seen();
            seen2.lock().unwrap().push((
                cmds.iter().any(|c| c.starts_with("<delete_scan ")),
                spool_file.exists(),
                log_file.exists(),
            ));
        });
        s.worker.run_job(scan_job(15));
        let seen = seen.lock().unwrap().clone();
        // While polling: neither deleted nor spooled, results on disk. While the upload
        // waits: spooled, and only then deleted in ospd and the log removed.
        assert_eq!(seen.first(), Some(&(false, false, true)), "{seen:?}");
        assert_eq!(seen.last(), Some(&(true, true, false)), "{seen:?}");
        assert_eq!(uploads(&s.t, 15).len(), 2);
        assert!(s.worker.spool.pending().unwrap().is_empty());
        let cmds = commands.lock().unwrap().commands();
        assert!(cmds[3].starts_with("<delete_scan "), "{cmds:?}");
    }

    #[test]
    fn unstartable_job_is_reported_failed() {
        let mut s = setup(Duration::ZERO);
        let mut j = job(13);
        let JobSpec::Scan(spec) = &mut j.spec else {
            panic!("a scan job")
        };
        spec.targets.clear();
        s.t.default_for(
            &paths::job_status(13),
            ok_json(&JobStatusResponse {
                cancel_requested: false,
            }),
        );
        s.worker.run_job(j);
        assert!(matches!(
            statuses(&s.t, 13).as_slice(),
            [JobStatusUpdate::Failed { .. }]
        ));
        assert!(uploads(&s.t, 13).is_empty());
    }
}
