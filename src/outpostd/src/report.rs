//! What a person and the portal see: every phase transition, failure and job event is
//! printed on the console (`outpost[NAME]: ...`, the serial console on the device) and
//! queued in the log ring for the portal.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use outpost_wire::log::{EventKind, Level, Phase, PhaseOutcome, PhaseProgress};

use crate::ring::LogRing;
use crate::statusled::StatusLed;

/// Where console lines go: stdout on the device, a buffer in tests.
pub enum Console {
    Stdout,
    #[cfg(test)]
    Capture(Mutex<Vec<String>>),
}

pub struct Reporter {
    name: String,
    console: Console,
    ring: Mutex<LogRing>,
    /// Wakes the log shipper when an event arrives.
    wake: Condvar,
    phase: Mutex<Option<Phase>>,
    /// The activity LED follows the phases reported here (and the portal's answers).
    status: StatusLed,
}

impl Reporter {
    pub fn new(name: &str, console: Console) -> Reporter {
        Reporter {
            name: name.to_owned(),
            console,
            ring: Mutex::new(LogRing::new()),
            wake: Condvar::new(),
            phase: Mutex::new(None),
            status: StatusLed::none(),
        }
    }

    /// Shows the sensor's state on `status`'s LED from now on.
    pub fn with_status_led(mut self, status: StatusLed) -> Reporter {
        self.status = status;
        self.status.refresh();
        self
    }

    /// The LED's signals, for what is not a phase (the portal answering, the network).
    pub fn status(&self) -> &StatusLed {
        &self.status
    }

    /// Prints one line on the console without queuing an event.
    pub fn say(&self, text: &str) {
        let line = format!("outpost[{}]: {text}", self.name);
        match &self.console {
            Console::Stdout => {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                // A closed console must not stop the sensor.
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
            #[cfg(test)]
            Console::Capture(lines) => lock(lines).push(line),
        }
    }

    /// A phase transition: console line, portal event, and the phase heartbeats report.
    pub fn phase(&self, phase: Phase, outcome: PhaseOutcome, reason: Option<&str>) {
        let word = match outcome {
            PhaseOutcome::Started => "started",
            PhaseOutcome::Done => "done",
            PhaseOutcome::Skipped => "skipped",
            PhaseOutcome::Failed => "failed",
        };
        match reason {
            Some(r) => self.say(&format!("phase {phase} {word}: {r}")),
            None => self.say(&format!("phase {phase} {word}")),
        }
        if outcome != PhaseOutcome::Failed {
            *lock(&self.phase) = Some(phase);
        }
        self.status.phase(phase, outcome);
        let level = if outcome == PhaseOutcome::Failed {
            Level::Error
        } else {
            Level::Info
        };
        self.queue(
            level,
            EventKind::Phase {
                phase,
                outcome,
                reason: reason.map(str::to_owned),
                progress: None,
            },
        );
    }

    /// How far a running phase has got: `phase P progress: REASON` on the console, and a
    /// `started` event with the reason and `progress` for the portal. The phase heartbeats report and the LED stay
    /// as they are: this is news about a phase, not a transition (a re-sync may run while
    /// a later phase is already shown).
    pub fn phase_progress(&self, phase: Phase, reason: &str, progress: PhaseProgress) {
        self.say(&format!("phase {phase} progress: {reason}"));
        self.queue(
            Level::Info,
            EventKind::Phase {
                phase,
                outcome: PhaseOutcome::Started,
                reason: Some(reason.to_owned()),
                progress: Some(progress),
            },
        );
    }

    /// A message worth an operator's eye, on the console and at the portal.
    pub fn message(&self, level: Level, text: &str) {
        self.say(text);
        self.queue(
            level,
            EventKind::Message {
                message: text.to_owned(),
            },
        );
    }

    /// A job event, on the console and at the portal.
    pub fn job(&self, level: Level, job_id: i64, text: &str) {
        self.say(&format!("job {job_id}: {text}"));
        self.queue(
            level,
            EventKind::Job {
                job_id,
                message: text.to_owned(),
            },
        );
    }

    /// The phase reached most recently (reported in heartbeats).
    pub fn current_phase(&self) -> Option<Phase> {
        *lock(&self.phase)
    }

    pub fn ring(&self) -> MutexGuard<'_, LogRing> {
        lock(&self.ring)
    }

    /// Waits until an event is queued or `timeout` passes.
    pub fn wait_for_events(&self, timeout: Duration) {
        let guard = lock(&self.ring);
        if !guard.is_empty() {
            return;
        }
        let _ = self
            .wake
            .wait_timeout_while(guard, timeout, |r| r.is_empty());
    }

    fn queue(&self, level: Level, kind: EventKind) {
        lock(&self.ring).push(level, kind);
        self.wake.notify_all();
    }

    #[cfg(test)]
    pub fn captured(&self) -> Vec<String> {
        match &self.console {
            Console::Capture(lines) => lock(lines).clone(),
            Console::Stdout => Vec::new(),
        }
    }
}

/// Locks, recovering the data if another thread panicked while holding the lock: the
/// guarded values stay consistent on their own, and the sensor must keep running.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A reporter whose console lines are kept for assertions.
#[cfg(test)]
pub fn capture(name: &str) -> Reporter {
    Reporter::new(name, Console::Capture(Mutex::new(Vec::new())))
}

/// Tells the console once when the portal stops answering a periodic call and once
/// when it answers again, instead of a line per failed attempt.
pub struct OutageNotice {
    what: &'static str,
    down: bool,
}

impl OutageNotice {
    pub fn new(what: &'static str) -> OutageNotice {
        OutageNotice { what, down: false }
    }

    pub fn failed(&mut self, reporter: &Reporter, err: &dyn std::fmt::Display) {
        tracing::warn!(call = self.what, error = %err, "portal call failed");
        if !self.down {
            self.down = true;
            reporter.say(&format!("{} failing: {err}", self.what));
        }
    }

    pub fn ok(&mut self, reporter: &Reporter) {
        if self.down {
            self.down = false;
            reporter.say(&format!("{} working again", self.what));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_lines_name_the_sensor_and_reason() {
        let r = capture("branch-1");
        r.phase(Phase::Provision, PhaseOutcome::Started, None);
        r.phase(
            Phase::Provision,
            PhaseOutcome::Failed,
            Some("the portal refused the enrollment token: token expired"),
        );
        r.phase(Phase::Provision, PhaseOutcome::Done, None);
        assert_eq!(
            r.captured(),
            [
                "outpost[branch-1]: phase provision started",
                "outpost[branch-1]: phase provision failed: the portal refused the enrollment token: token expired",
                "outpost[branch-1]: phase provision done",
            ]
        );
        assert_eq!(r.current_phase(), Some(Phase::Provision));
        let batch = r.ring().batch(10);
        assert_eq!(batch.events.len(), 3);
        assert_eq!(
            batch.events[1].kind,
            EventKind::Phase {
                phase: Phase::Provision,
                outcome: PhaseOutcome::Failed,
                reason: Some("the portal refused the enrollment token: token expired".into()),
                progress: None,
            }
        );
        assert_eq!(batch.events[1].level, Level::Error);
    }

    #[test]
    fn progress_is_a_started_event_that_moves_no_phase() {
        let r = capture("s");
        r.phase(Phase::ScannerBoot, PhaseOutcome::Started, None);
        let p = PhaseProgress {
            files_done: 2,
            files_total: 5,
            bytes_done: 10,
            bytes_total: 50,
        };
        r.phase_progress(Phase::FeedSync, "2 of 5 files", p);
        assert_eq!(
            r.captured()[1],
            "outpost[s]: phase feed_sync progress: 2 of 5 files"
        );
        assert_eq!(r.current_phase(), Some(Phase::ScannerBoot));
        let batch = r.ring().batch(10);
        assert_eq!(
            batch.events[1].kind,
            EventKind::Phase {
                phase: Phase::FeedSync,
                outcome: PhaseOutcome::Started,
                reason: Some("2 of 5 files".into()),
                progress: Some(p),
            }
        );
        assert_eq!(batch.events[1].level, Level::Info);
    }

    #[test]
    fn a_failed_phase_is_not_reached() {
        let r = capture("s");
        r.phase(Phase::Provision, PhaseOutcome::Failed, Some("x"));
        assert_eq!(r.current_phase(), None);
    }
}
