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
}

impl JobControl {
    pub(crate) fn begin(&self, job: i64, activity: Activity) {
        *lock(&self.state) = ControlState {
            current: Some(job),
            activity,
            cancel: false,
        };
    }

    pub(crate) fn end(&self) {
        *lock(&self.state) = ControlState::default();
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
    /// A report to deliver, after the final status (if any) is posted.
    Report {
        report: JobReport,
        final_status: Option<JobStatusUpdate>,
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
    pub fn capabilities(&self) -> Vec<Capability> {
        let mut caps = Vec::new();
        if self.scans && self.gate.is_ready() {
            caps.push(Capability::Scan);
        }
        if self.updates_claimable() {
            caps.push(Capability::Update);
        }
        caps
    }

    /// Claims once; runs the job if one came. Returns whether a job ran.
    pub fn claim_once(&mut self) -> Result<bool, ApiError> {
        let capabilities = self.capabilities();
        // After an activated update only the reboot is left to do.
        if capabilities.is_empty() || self.reboot_pending {
            return Ok(false);
        }
        let req = ClaimRequest { capabilities };
        match self.client.claim(&req)? {
            None => Ok(false),
            Some(job) => {
                self.run_job(job);
                Ok(true)
            }
        }
    }

    /// Claims every `interval` forever. Reports left in the spool go first, then an
    /// update interrupted by a restart.
    pub fn claim_loop(&mut self, interval: Duration) {
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
        if let Some((_, end)) = resumed {
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
            } => {
                let upload = ReportUpload {
                    request_id: spool::new_request_id(),
                    outcome: report.outcome,
                    partial: report.partial,
                    content_type: report.content_type,
                    content: report.content,
                    summary: report.summary,
                };
                // Spool first: from here on a crash cannot lose the report.
                if let Err(e) = self.spool.store(id, &upload) {
                    self.reporter.job(
                        Level::Error,
                        id,
                        &format!("cannot spool the report, uploading from memory: {e}"),
                    );
                }
                if let Some(update) = final_status {
                    if let Err(e) = self.client.job_status(id, &update) {
                        tracing::warn!(job = id, error = %e, "final status not accepted");
                    }
                }
                self.deliver_until_done(id, &upload);
            }
        }
        self.control.end();
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
            report,
            final_status,
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
