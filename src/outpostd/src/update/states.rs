//! Telling the portal where an update stands (`POST /api/sensor/update-state`).
//!
//! Progress (`downloading`, `installing`) is best effort and throttled; the reports that
//! end a job (`rebooting`, `refused`, `failed`) and the ones after the reboot
//! (`committed`, `rolled_back`) are delivered until the portal acknowledges them.

use std::time::{Duration, Instant};

use outpost_wire::sensor::{UpdateState, UpdateStateReport};

use crate::api::{ApiError, PortalClient};
use crate::backoff::Backoff;

/// The portal's answer to a report that must arrive.
#[derive(Debug, PartialEq)]
pub enum Delivery {
    Acked,
    /// 403/404/409: the job named in the report is no longer this sensor's.
    JobGone(String),
    /// The portal will never take this report (400, 422...).
    Rejected(String),
    /// Still not delivered after the attempts allowed.
    GaveUp(String),
}

/// Sends throttled progress for one job.
pub struct Progress<'a> {
    client: &'a PortalClient,
    interval: Duration,
    last: Option<(Instant, UpdateState, u8)>,
}

impl<'a> Progress<'a> {
    pub fn new(client: &'a PortalClient, interval: Duration) -> Progress<'a> {
        Progress {
            client,
            interval,
            last: None,
        }
    }

    /// Posts `report` unless the same state was posted less than an interval ago (or
    /// with the same percentage). Network trouble is logged and ignored: progress is a
    /// nicety. `Err` when the portal says the job is no longer ours.
    pub fn post(&mut self, report: &UpdateStateReport) -> Result<(), String> {
        if let Some((at, state, pct)) = self.last {
            let same_state = state == report.state;
            if same_state && (pct == report.progress_percent || at.elapsed() < self.interval) {
                return Ok(());
            }
        }
        self.last = Some((Instant::now(), report.state, report.progress_percent));
        match self.client.update_state(report) {
            Ok(()) => Ok(()),
            Err(e) if report.job_id.is_some() && job_gone(&e) => Err(e.to_string()),
            Err(e) => {
                tracing::warn!(state = report.state.as_str(), error = %e, "update progress not posted");
                Ok(())
            }
        }
    }
}

/// Delivers `report`, retrying transient trouble; `max_tries` bounds the attempts
/// (`None`: until an answer other than "try later").
pub fn deliver(
    client: &PortalClient,
    report: &UpdateStateReport,
    max_tries: Option<u32>,
    slow_retry: Duration,
    sleep: &mut dyn FnMut(Duration),
) -> Delivery {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let mut tries = 0u32;
    loop {
        tries += 1;
        let err = match client.update_state(report) {
            Ok(()) => return Delivery::Acked,
            Err(e) if report.job_id.is_some() && job_gone(&e) => {
                return Delivery::JobGone(e.to_string())
            }
            Err(e) if matches!(e.status(), Some(400 | 404 | 413 | 422)) => {
                return Delivery::Rejected(e.to_string())
            }
            Err(e) => e,
        };
        if max_tries.is_some_and(|m| tries >= m) {
            return Delivery::GaveUp(err.to_string());
        }
        tracing::warn!(state = report.state.as_str(), error = %err, "update state not delivered; retrying");
        // A refused credential needs a person; do not hammer the portal meanwhile.
        let delay = if err.is_transient() {
            backoff.next_delay()
        } else {
            slow_retry
        };
        sleep(delay);
    }
}

fn job_gone(e: &ApiError) -> bool {
    matches!(e.status(), Some(403 | 404 | 409))
}
