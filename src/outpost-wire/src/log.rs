//! Events a sensor sends to `POST /api/sensor/log` as NDJSON: one JSON object per line.

use serde::{Deserialize, Serialize};

/// The phased boot, in order. Each transition is reported as an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Provision,
    WgUp,
    FeedSync,
    FeedReady,
    ScannerBoot,
    Ready,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Provision,
        Phase::WgUp,
        Phase::FeedSync,
        Phase::FeedReady,
        Phase::ScannerBoot,
        Phase::Ready,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Provision => "provision",
            Phase::WgUp => "wg_up",
            Phase::FeedSync => "feed_sync",
            Phase::FeedReady => "feed_ready",
            Phase::ScannerBoot => "scanner_boot",
            Phase::Ready => "ready",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseOutcome {
    Started,
    Done,
    Skipped,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// Progress of a running phase: files and content bytes done of the total still to
/// fetch when it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseProgress {
    pub files_done: u64,
    pub files_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

impl std::fmt::Display for PhaseProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} files, {} of {} bytes",
            self.files_done, self.files_total, self.bytes_done, self.bytes_total
        )
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// A boot phase started, finished, was skipped or failed (with the reason in plain words).
    Phase {
        phase: Phase,
        outcome: PhaseOutcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// How far a long phase (`feed_sync`) has got, sent with `started` while it runs.
        /// Optional so portals and sensors from before it read each other's events.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        progress: Option<PhaseProgress>,
    },
    /// Progress or trouble of one job.
    Job { job_id: i64, message: String },
    /// Anything else worth an operator's eye.
    Message { message: String },
    /// The sensor's ring buffer overflowed while the portal was unreachable.
    Dropped { count: u64 },
}

/// One NDJSON line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEvent {
    /// Per-boot sequence number, so the portal can see gaps and order.
    pub seq: u64,
    /// Sensor clock, Unix milliseconds.
    pub ts_ms: u64,
    pub level: Level,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Debug, thiserror::Error)]
pub enum NdjsonError {
    #[error("line {line}: {source}")]
    Line {
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("more than {max} events in one batch")]
    TooMany { max: usize },
}

/// Encodes events as NDJSON (each line ends with `\n`).
pub fn to_ndjson(events: &[LogEvent]) -> String {
    let mut out = String::new();
    for e in events {
        // Serialising these plain types cannot fail; skip defensively rather than panic.
        if let Ok(line) = serde_json::to_string(e) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// Parses an NDJSON batch. Blank lines are allowed; any bad line rejects the whole batch,
/// so a batch is stored completely or not at all.
pub fn from_ndjson(body: &str, max: usize) -> Result<Vec<LogEvent>, NdjsonError> {
    let mut events = Vec::new();
    for (i, line) in body.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if events.len() == max {
            return Err(NdjsonError::TooMany { max });
        }
        let ev = serde_json::from_str(line).map_err(|source| NdjsonError::Line {
            line: i + 1,
            source,
        })?;
        events.push(ev);
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(seq: u64, phase: Phase, outcome: PhaseOutcome) -> LogEvent {
        LogEvent {
            seq,
            ts_ms: 1_700_000_000_000,
            level: Level::Info,
            kind: EventKind::Phase {
                phase,
                outcome,
                reason: None,
                progress: None,
            },
        }
    }

    #[test]
    fn ndjson_round_trip() {
        let evs = vec![
            phase(1, Phase::Provision, PhaseOutcome::Done),
            LogEvent {
                seq: 2,
                ts_ms: 5,
                level: Level::Error,
                kind: EventKind::Message {
                    message: "line\nbreak".into(),
                },
            },
        ];
        let text = to_ndjson(&evs);
        assert_eq!(text.lines().count(), 2);
        assert!(text.contains(r#""event":"phase","phase":"provision","outcome":"done""#));
        assert_eq!(from_ndjson(&text, 10).unwrap(), evs);
    }

    #[test]
    fn bad_line_is_named() {
        let good = to_ndjson(&[phase(1, Phase::WgUp, PhaseOutcome::Started)]);
        let body = format!("{good}{{not json\n");
        match from_ndjson(&body, 10) {
            Err(NdjsonError::Line { line, .. }) => assert_eq!(line, 2),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn batch_limit() {
        let body = to_ndjson(&[
            phase(1, Phase::WgUp, PhaseOutcome::Started),
            phase(2, Phase::WgUp, PhaseOutcome::Done),
        ]);
        assert!(matches!(
            from_ndjson(&body, 1),
            Err(NdjsonError::TooMany { max: 1 })
        ));
    }

    #[test]
    fn phase_progress_round_trips() {
        let ev = LogEvent {
            seq: 7,
            ts_ms: 9,
            level: Level::Info,
            kind: EventKind::Phase {
                phase: Phase::FeedSync,
                outcome: PhaseOutcome::Started,
                reason: Some("3 of 10 files, 100 of 900 bytes fetched".into()),
                progress: Some(PhaseProgress {
                    files_done: 3,
                    files_total: 10,
                    bytes_done: 100,
                    bytes_total: 900,
                }),
            },
        };
        let text = to_ndjson(std::slice::from_ref(&ev));
        assert!(
            text.contains(
                r#""progress":{"files_done":3,"files_total":10,"bytes_done":100,"bytes_total":900}"#
            ),
            "{text}"
        );
        assert_eq!(from_ndjson(&text, 10).unwrap(), vec![ev]);
    }

    /// Events from sensors (and portals) older than the progress field still parse, and
    /// an event without progress is written exactly as before.
    #[test]
    fn phase_events_without_progress_interoperate() {
        let old = r#"{"seq":1,"ts_ms":5,"level":"info","event":"phase","phase":"feed_sync","outcome":"done","reason":"live"}"#;
        let evs = from_ndjson(old, 10).unwrap();
        assert_eq!(
            evs[0].kind,
            EventKind::Phase {
                phase: Phase::FeedSync,
                outcome: PhaseOutcome::Done,
                reason: Some("live".into()),
                progress: None,
            }
        );
        assert_eq!(to_ndjson(&evs).trim_end(), old);
        // An older reader ignores unknown fields: nothing here denies them.
        let new = r#"{"seq":2,"ts_ms":5,"level":"info","event":"phase","phase":"feed_sync","outcome":"started","progress":{"files_done":1,"files_total":2,"bytes_done":3,"bytes_total":4}}"#;
        assert!(from_ndjson(new, 10).is_ok());
    }

    #[test]
    fn phases_are_ordered() {
        let mut v = Phase::ALL.to_vec();
        v.reverse();
        v.sort();
        assert_eq!(v, Phase::ALL.to_vec());
    }
}
