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
    fn phases_are_ordered() {
        let mut v = Phase::ALL.to_vec();
        v.reverse();
        v.sort();
        assert_eq!(v, Phase::ALL.to_vec());
    }
}
