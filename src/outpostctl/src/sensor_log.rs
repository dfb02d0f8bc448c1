//! `outpostctl sensor log` in text: one line per event, as a person reads it. `--json`
//! gives the events as the portal stores them.

use outpost_wire::admin::StoredLogEvent;
use outpost_wire::log::{EventKind, PhaseOutcome, PhaseProgress};

/// `RECEIVED LEVEL what happened`; a phase's progress, when it carries one, in brackets.
pub fn line(e: &StoredLogEvent) -> String {
    let what = match &e.event.kind {
        EventKind::Phase {
            phase,
            outcome,
            reason,
            progress,
        } => {
            let word = match outcome {
                PhaseOutcome::Started => "started",
                PhaseOutcome::Done => "done",
                PhaseOutcome::Skipped => "skipped",
                PhaseOutcome::Failed => "failed",
            };
            let mut t = format!("phase {phase} {word}");
            if let Some(r) = reason {
                t.push_str(&format!(": {r}"));
            }
            if let Some(p) = progress {
                t.push_str(&format!(" [{}]", progress_text(p)));
            }
            t
        }
        EventKind::Job { job_id, message } => format!("job {job_id}: {message}"),
        EventKind::Message { message } => message.clone(),
        EventKind::Dropped { count } => {
            format!("{count} events lost on the sensor while the portal was unreachable")
        }
    };
    format!("{} {:<5} {what}", e.received_at, e.event.level.as_str())
}

/// `files 3/10, 1.2 MB/4.0 MB (30%)`: the share is of the bytes, which is what takes time.
fn progress_text(p: &PhaseProgress) -> String {
    let pct = (p.bytes_done.min(p.bytes_total) as u128 * 100)
        .checked_div(p.bytes_total as u128)
        .unwrap_or(100);
    format!(
        "files {}/{}, {}/{} ({pct}%)",
        p.files_done,
        p.files_total,
        size(p.bytes_done),
        size(p.bytes_total)
    )
}

fn size(b: u64) -> String {
    if b < 1_000_000 {
        format!("{:.1} kB", b as f64 / 1e3)
    } else if b < 1_000_000_000 {
        format!("{:.1} MB", b as f64 / 1e6)
    } else {
        format!("{:.2} GB", b as f64 / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_wire::log::{Level, LogEvent, Phase};

    fn stored(level: Level, kind: EventKind) -> StoredLogEvent {
        StoredLogEvent {
            received_at: 1_700_000_000,
            event: LogEvent {
                seq: 1,
                ts_ms: 1,
                level,
                kind,
            },
        }
    }

    #[test]
    fn a_progress_event_reads_as_files_and_bytes() {
        let e = stored(
            Level::Info,
            EventKind::Phase {
                phase: Phase::FeedSync,
                outcome: PhaseOutcome::Started,
                reason: Some("30 of 100 files, 12000000 of 40000000 bytes fetched".into()),
                progress: Some(PhaseProgress {
                    files_done: 30,
                    files_total: 100,
                    bytes_done: 12_000_000,
                    bytes_total: 40_000_000,
                }),
            },
        );
        assert_eq!(
            line(&e),
            "1700000000 info  phase feed_sync started: 30 of 100 files, 12000000 of 40000000 bytes fetched [files 30/100, 12.0 MB/40.0 MB (30%)]"
        );
    }

    #[test]
    fn other_events_read_plainly() {
        let e = stored(
            Level::Error,
            EventKind::Phase {
                phase: Phase::FeedReady,
                outcome: PhaseOutcome::Failed,
                reason: Some("no NASL scripts".into()),
                progress: None,
            },
        );
        assert_eq!(
            line(&e),
            "1700000000 error phase feed_ready failed: no NASL scripts"
        );
        let e = stored(
            Level::Warn,
            EventKind::Job {
                job_id: 7,
                message: "interrupted".into(),
            },
        );
        assert_eq!(line(&e), "1700000000 warn  job 7: interrupted");
        assert_eq!(
            line(&stored(Level::Warn, EventKind::Dropped { count: 3 })),
            "1700000000 warn  3 events lost on the sensor while the portal was unreachable"
        );
        let empty = PhaseProgress {
            files_done: 0,
            files_total: 0,
            bytes_done: 0,
            bytes_total: 0,
        };
        assert_eq!(progress_text(&empty), "files 0/0, 0.0 kB/0.0 kB (100%)");
    }
}
