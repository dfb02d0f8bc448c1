//! The heartbeat thread: every interval it tells the portal the sensor is alive, what it
//! is doing and how the board fares, and passes operator cancellations to the job runner.
//! It starts only after registration, since it needs the API key.

use std::sync::Arc;
use std::time::Duration;

use outpost_wire::sensor::{HeartbeatRequest, HeartbeatResponse, Metrics};

use crate::api::{ApiError, PortalClient};
use crate::clock::TimeKeeper;
use crate::health::PortalContact;
use crate::jobs::JobControl;
use crate::register::AGENT_VERSION;
use crate::report::{OutageNotice, Reporter};
use crate::rotate::{self, Rotation};

pub struct Heartbeat {
    pub client: PortalClient,
    pub control: Arc<JobControl>,
    pub reporter: Arc<Reporter>,
    /// Metrics and uptime source; sysinfo on the device, a stub in tests.
    pub metrics: Box<dyn FnMut() -> (Metrics, u64) + Send>,
    /// Key rotation on the portal's request; `None` without a tunnel (nothing to rotate).
    pub rotation: Option<Rotation>,
    /// What is running: the image version and the A/B slot.
    pub running: Running,
    /// Told of every answered heartbeat (the health check waits for one).
    pub contact: Arc<PortalContact>,
    /// Takes the portal's time (read over the pinned-CA channel) when ours is off.
    pub clock: Option<Arc<TimeKeeper>>,
    /// Ticked every round: the hardware watchdog is petted while this loop comes round.
    pub alive: Option<Arc<crate::watchdog::Liveness>>,
    /// The synced feed: its live release goes out, the portal's wish comes back.
    /// `None` without network feed sync (no feed key).
    pub feed: Option<crate::feedwant::FeedWatch>,
}

/// Firmware facts every heartbeat carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Running {
    /// `VERSION` from `/etc/outpost-release`.
    pub firmware_version: Option<String>,
    /// `a` or `b`, from `outpost.slot=` on the kernel command line.
    pub boot_slot: Option<String>,
}

impl Heartbeat {
    /// Sends one heartbeat and acts on the answer.
    pub fn beat_once(&mut self) -> Result<HeartbeatResponse, ApiError> {
        let (metrics, uptime_s) = (self.metrics)();
        let live = self.feed.as_ref().and_then(|f| f.live());
        let req = HeartbeatRequest {
            activity: self.control.activity(),
            uptime_s,
            agent_version: AGENT_VERSION.to_owned(),
            phase: self.reporter.current_phase(),
            firmware_version: self.running.firmware_version.clone(),
            boot_slot: self.running.boot_slot.clone(),
            metrics,
            running_jobs: self.control.running_jobs(),
            feed_release: live.clone(),
        };
        let sent = std::time::Instant::now();
        let resp = self.client.heartbeat(&req)?;
        let rtt = sent.elapsed();
        self.contact.note_answer();
        if let Some(f) = &self.feed {
            if f.want.note(live.as_deref(), resp.feed_release.as_deref()) {
                self.reporter.say(&format!(
                    "the portal wants feed release {} (live: {}); a feed sync is due",
                    resp.feed_release.as_deref().unwrap_or("-"),
                    live.as_deref().unwrap_or("none synced"),
                ));
            }
        }
        for &job in &resp.cancel_jobs {
            if self.control.request_cancel(job) {
                tracing::info!(job, "operator cancelled the running job");
            } else {
                tracing::debug!(job, "cancellation for a job not running here");
            }
        }
        match &self.clock {
            Some(clock) => match clock.adopt_portal_time(resp.server_time, rtt) {
                Ok(Some(step)) => self
                    .reporter
                    .say(&format!("clock set from the portal's time ({step:+} s)")),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot set the clock from the portal's time"),
            },
            None => {
                let skew = resp.server_time - outpost_wire::unix_now();
                if skew.abs() > 300 {
                    tracing::warn!(skew_s = skew, "sensor clock differs from the portal's");
                }
            }
        }
        Ok(resp)
    }

    /// Rotates the WireGuard key if possible now; `true` when the new key is stored.
    /// The portal keeps asking until it has the new key, so a deferral or failure here is
    /// retried at a later heartbeat.
    pub fn rotate_key(&mut self) -> bool {
        let Some(rotation) = self.rotation.as_mut() else {
            tracing::warn!("the portal asked for a key rotation but this sensor has no tunnel");
            return false;
        };
        // The restart that follows would kill a running scan; rotate between jobs.
        if self.control.activity() != outpost_wire::sensor::Activity::Idle {
            tracing::info!("key rotation requested; waiting for the running job to end");
            return false;
        }
        match rotation.rotate(&self.client) {
            Ok(()) => true,
            Err(e) => {
                self.reporter.message(
                    outpost_wire::log::Level::Warn,
                    &format!("WireGuard key rotation failed, keeping the current key: {e}"),
                );
                false
            }
        }
    }

    /// Beats now and then every `interval`, forever.
    pub fn run(mut self, interval: Duration) {
        let mut outage = OutageNotice::new("heartbeat");
        loop {
            if let Some(alive) = &self.alive {
                alive.tick();
            }
            match self.beat_once() {
                Ok(resp) => {
                    outage.ok(&self.reporter);
                    self.reporter.status().portal(true);
                    if resp.rotate_wg_key && self.rotate_key() {
                        self.reporter.say("WireGuard key rotated; reconnecting");
                        std::thread::sleep(rotate::EXIT_DELAY);
                        // The tunnel runs on the old key; init respawns us on the new one.
                        std::process::exit(rotate::EXIT_KEY_ROTATED);
                    }
                }
                Err(e) => {
                    outage.failed(&self.reporter, &e);
                    self.reporter.status().portal(false);
                }
            }
            std::thread::sleep(interval);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::fake::{ok_json, FakeTransport};
    use crate::report::capture;
    use outpost_wire::log::{Phase, PhaseOutcome};
    use outpost_wire::sensor::Activity;
    use outpost_wire::{paths, Secret};

    fn beat(t: &Arc<FakeTransport>, control: &Arc<JobControl>) -> Heartbeat {
        let reporter = Arc::new(capture("b"));
        reporter.phase(Phase::Provision, PhaseOutcome::Done, None);
        Heartbeat {
            client: PortalClient::new(t.clone(), Secret::new("osk_k")),
            control: control.clone(),
            reporter,
            metrics: Box::new(|| {
                (
                    Metrics {
                        mem_total_bytes: 1024,
                        ..Default::default()
                    },
                    77,
                )
            }),
            rotation: None,
            clock: None,
            alive: None,
            running: Running {
                firmware_version: Some("1.2.0".into()),
                boot_slot: Some("b".into()),
            },
            contact: Arc::new(PortalContact::default()),
            feed: None,
        }
    }

    #[test]
    fn reports_phase_activity_and_metrics() {
        let t = Arc::new(FakeTransport::default());
        t.default_for(
            paths::HEARTBEAT,
            ok_json(&HeartbeatResponse {
                server_time: outpost_wire::unix_now(),
                cancel_jobs: vec![],
                rotate_wg_key: false,
                feed_release: None,
            }),
        );
        let control = Arc::new(JobControl::default());
        let mut hb = beat(&t, &control);
        assert!(!hb.contact.answered());
        hb.beat_once().unwrap();
        assert!(
            hb.contact.answered(),
            "the health check hears of the answer"
        );
        let sent: HeartbeatRequest =
            serde_json::from_str(&t.seen_on(paths::HEARTBEAT)[0].body).unwrap();
        assert_eq!(sent.firmware_version.as_deref(), Some("1.2.0"));
        assert_eq!(sent.boot_slot.as_deref(), Some("b"));
        assert_eq!(sent.activity, Activity::Idle);
        assert_eq!(sent.phase, Some(Phase::Provision));
        assert_eq!(sent.uptime_s, 77);
        assert_eq!(sent.metrics.mem_total_bytes, 1024);
        assert_eq!(sent.agent_version, AGENT_VERSION);
        assert_eq!(
            t.seen_on(paths::HEARTBEAT)[0].bearer.as_deref(),
            Some("osk_k")
        );
    }

    #[test]
    fn reports_the_live_feed_release_and_notes_the_portals_wish() {
        let t = Arc::new(FakeTransport::default());
        let answer = |release: &str| {
            ok_json(&HeartbeatResponse {
                server_time: outpost_wire::unix_now(),
                cancel_jobs: vec![],
                rotate_wg_key: false,
                feed_release: Some(release.into()),
            })
        };
        let (r1, r2) = (
            "202509150400-0123456789abcdef",
            "202509160400-fedcba9876543210",
        );
        t.push(paths::HEARTBEAT, Ok(answer(r2)));
        t.push(paths::HEARTBEAT, Ok(answer(r2)));
        t.push(paths::HEARTBEAT, Ok(answer(r1)));
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("releases").join(r1)).unwrap();
        std::os::unix::fs::symlink(format!("releases/{r1}"), root.path().join("current")).unwrap();
        let want = Arc::new(crate::feedwant::FeedWant::default());
        let control = Arc::new(JobControl::default());
        let reporter = Arc::new(capture("b"));
        let mut hb = beat(&t, &control);
        hb.reporter = reporter.clone();
        hb.feed = Some(crate::feedwant::FeedWatch {
            root: root.path().to_owned(),
            want: want.clone(),
        });

        hb.beat_once().unwrap();
        let sent: HeartbeatRequest =
            serde_json::from_str(&t.seen_on(paths::HEARTBEAT)[0].body).unwrap();
        assert_eq!(sent.feed_release.as_deref(), Some(r1));
        hb.beat_once().unwrap();
        let said: Vec<String> = reporter
            .captured()
            .into_iter()
            .filter(|l| l.contains("the portal wants feed release"))
            .collect();
        assert_eq!(said.len(), 1, "said once, not every heartbeat: {said:?}");
        assert!(said[0].contains(r2) && said[0].contains(r1), "{said:?}");
        assert_eq!(
            want.take().as_deref(),
            Some(r2),
            "the feed check may sync now"
        );

        // Noted again, then the portal names the live release: nothing is pending.
        assert!(want.note(Some(r1), Some(r2)));
        hb.beat_once().unwrap();
        assert_eq!(want.take(), None);
    }

    #[test]
    fn lists_the_jobs_it_holds_once_stock_is_taken() {
        let t = Arc::new(FakeTransport::default());
        t.default_for(
            paths::HEARTBEAT,
            ok_json(&HeartbeatResponse {
                server_time: outpost_wire::unix_now(),
                cancel_jobs: vec![],
                rotate_wg_key: false,
                feed_release: None,
            }),
        );
        let control = Arc::new(JobControl::default());
        let sent = |i: usize| -> HeartbeatRequest {
            serde_json::from_str(&t.seen_on(paths::HEARTBEAT)[i].body).unwrap()
        };
        // Before the claim loop has looked at the spool and the update store: not said,
        // so the portal takes nothing away from a daemon that is still starting.
        control.begin(9, Activity::Scanning);
        beat(&t, &control).beat_once().unwrap();
        assert_eq!(sent(0).running_jobs, None);
        // Then: the running job and those with a report still to deliver.
        control.take_stock([4]);
        beat(&t, &control).beat_once().unwrap();
        assert_eq!(sent(1).running_jobs, Some(vec![4, 9]));
        control.end();
        control.release(4);
        beat(&t, &control).beat_once().unwrap();
        assert_eq!(
            sent(2).running_jobs,
            Some(vec![]),
            "idle is an empty list, not silence"
        );
    }

    #[test]
    fn cancel_jobs_reach_only_the_running_job() {
        let t = Arc::new(FakeTransport::default());
        t.default_for(
            paths::HEARTBEAT,
            ok_json(&HeartbeatResponse {
                server_time: outpost_wire::unix_now(),
                cancel_jobs: vec![9],
                rotate_wg_key: false,
                feed_release: None,
            }),
        );
        let control = Arc::new(JobControl::default());
        // A cancellation for a job this sensor does not run changes nothing.
        control.begin(8, Activity::Scanning);
        beat(&t, &control).beat_once().unwrap();
        assert!(!control.cancel_requested());
        // For the running job it raises the flag the job runner watches.
        control.begin(9, Activity::Scanning);
        beat(&t, &control).beat_once().unwrap();
        assert!(control.cancel_requested());
        let sent: HeartbeatRequest =
            serde_json::from_str(&t.seen_on(paths::HEARTBEAT)[1].body).unwrap();
        assert_eq!(sent.activity, Activity::Scanning);
    }

    #[test]
    fn rotation_waits_for_the_running_job() {
        let t = Arc::new(FakeTransport::default());
        t.default_for(
            paths::WG_KEY,
            ok_json(&crate::rotate::tests::tunnel("100.96.0.2")),
        );
        let (_tmp, rotation, _, old) = crate::rotate::tests::setup(&t);
        let control = Arc::new(JobControl::default());
        let mut hb = beat(&t, &control);
        hb.rotation = Some(rotation);
        control.begin(4, Activity::Scanning);
        assert!(!hb.rotate_key());
        assert!(t.seen_on(paths::WG_KEY).is_empty(), "no rotation mid-job");
        control.end();
        assert!(hb.rotate_key());
        let rotated = hb.rotation.as_ref().unwrap().reg.wg_public_key.clone();
        assert_ne!(rotated, old);
    }

    #[test]
    fn a_refused_rotation_is_said_on_the_console() {
        let t = Arc::new(FakeTransport::default());
        let (_tmp, rotation, _, _) = crate::rotate::tests::setup(&t);
        let control = Arc::new(JobControl::default());
        let reporter = Arc::new(capture("b"));
        let mut hb = beat(&t, &control);
        hb.reporter = reporter.clone();
        hb.rotation = Some(rotation);
        // The fake answers 404 on an unscripted path.
        assert!(!hb.rotate_key());
        let lines = reporter.captured();
        assert!(
            lines.iter().any(|l| l
                .contains("WireGuard key rotation failed, keeping the current key")
                && l.contains("404")),
            "{lines:?}"
        );
    }
}
