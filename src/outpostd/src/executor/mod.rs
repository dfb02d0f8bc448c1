//! How a claimed job is carried out. The job runner drives a [`RunningJob`] by polling
//! it, so an executor needs no threads of its own and cancellation is a plain call.
//! [`DryRunExecutor`] sends no packet; [`OpenvasExecutor`] runs the job as an OSP scan
//! on the local ospd-openvas.

mod dry_run;
#[cfg(test)]
pub mod fake_ospd;
mod openvas;

pub use dry_run::DryRunExecutor;
pub use openvas::{recovered_report, OpenvasExecutor, DEFAULT_GONE_GRACE};

use outpost_osp::ScanResult;
use outpost_wire::sensor::{Job, JobSpec, ReportOutcome, ReportSummary, ScanSpec};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ExecError(pub String);

/// Where a running job stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    Running { percent: u8, message: String },
    Finished,
}

/// A finished (or stopped) job's result, ready to spool.
#[derive(Debug, Clone, PartialEq)]
pub struct JobReport {
    pub outcome: ReportOutcome,
    /// True when the job did not run to its end.
    pub partial: bool,
    pub content_type: String,
    /// OSP results XML.
    pub content: String,
    pub summary: ReportSummary,
}

pub trait JobExecutor: Send + Sync {
    /// Shown on the console and in job events, e.g. "dry run".
    fn name(&self) -> &'static str;
    fn start(&self, job: &Job) -> Result<Box<dyn RunningJob>, ExecError>;

    /// A scan that a previous run of the daemon started and did not finish: stops it if
    /// the scanner still runs it and returns the results the scanner still holds.
    fn salvage(&self, _scan_id: &str) -> Vec<ScanResult> {
        Vec::new()
    }

    /// Lets the scanner forget a scan whose report is spooled.
    fn forget(&self, _scan_id: &str) {}
}

pub trait RunningJob: Send {
    fn poll(&mut self) -> Result<Progress, ExecError>;
    /// Stops the job; the report that follows is partial and marked cancelled.
    fn cancel(&mut self) -> Result<(), ExecError>;
    /// The report, after `poll` said `Finished` or after `cancel`. Changes nothing: the
    /// job keeps what it holds until [`RunningJob::release`].
    fn report(&mut self) -> JobReport;
    /// The report is safely spooled (or the job was given up): the scanner may forget
    /// the scan and the on-disk results may go.
    fn release(self: Box<Self>) {}
}

/// The scan a job asks for; any other kind of job is not an executor's to run.
pub(crate) fn scan_spec(job: &Job) -> Result<&ScanSpec, ExecError> {
    match &job.spec {
        JobSpec::Scan(spec) => Ok(spec),
        other => Err(ExecError(format!(
            "job {} is not a scan job (kind: {})",
            job.id,
            other.capability().as_str()
        ))),
    }
}

/// Escapes text for XML attributes and content (both executors write OSP-shaped reports).
pub(crate) fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}
