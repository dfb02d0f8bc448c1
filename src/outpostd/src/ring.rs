//! Bounded in-memory buffer of log events waiting for the portal. While the portal is
//! unreachable the oldest events make room for new ones and are counted; the count goes
//! out first, as a `Dropped` event, with the next batch the portal accepts. Events leave
//! the ring only once the portal has accepted them.

use heapless::Deque;
use outpost_wire::log::{EventKind, Level, LogEvent};

/// Events kept while the portal is unreachable.
pub const RING_CAPACITY: usize = 256;

pub struct LogRing<const N: usize = RING_CAPACITY> {
    events: Deque<LogEvent, N>,
    next_seq: u64,
    /// Events lost to overflow and not yet reported to the portal.
    dropped: u64,
    /// Sequence number of the most recently dropped event, so the `Dropped` event marks the gap.
    last_dropped_seq: u64,
}

/// A batch to send; hand it back to [`LogRing::ack`] once the portal accepted it.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub events: Vec<LogEvent>,
    /// How many drops the leading `Dropped` event reports (0: none included).
    dropped_reported: u64,
    /// Highest ring sequence number in the batch.
    last_seq: Option<u64>,
}

impl<const N: usize> Default for LogRing<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> LogRing<N> {
    pub fn new() -> Self {
        LogRing {
            events: Deque::new(),
            next_seq: 1,
            dropped: 0,
            last_dropped_seq: 0,
        }
    }

    /// Appends an event stamped with the next sequence number and the current time,
    /// dropping the oldest one when full. Returns the sequence number.
    pub fn push(&mut self, level: Level, kind: EventKind) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let event = LogEvent {
            seq,
            ts_ms: outpost_wire::unix_now_ms(),
            level,
            kind,
        };
        if self.events.is_full() {
            if let Some(old) = self.events.pop_front() {
                self.dropped += 1;
                self.last_dropped_seq = old.seq;
            }
        }
        // Cannot fail: there is room now.
        let _ = self.events.push_back(event);
        seq
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.dropped == 0
    }

    /// Drops not yet reported to the portal.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Up to `max` events to send, oldest first, led by a `Dropped` event when events
    /// were lost since the last accepted batch. Nothing is removed yet.
    pub fn batch(&self, max: usize) -> Batch {
        let mut events = Vec::new();
        if self.dropped > 0 {
            events.push(LogEvent {
                seq: self.last_dropped_seq,
                ts_ms: outpost_wire::unix_now_ms(),
                level: Level::Warn,
                kind: EventKind::Dropped {
                    count: self.dropped,
                },
            });
        }
        let room = max.saturating_sub(events.len());
        events.extend(self.events.iter().take(room).cloned());
        let last_seq = self.events.iter().take(room).map(|e| e.seq).max();
        Batch {
            events,
            dropped_reported: self.dropped,
            last_seq,
        }
    }

    /// The portal accepted `batch`: forget its events and the drops it reported. Events
    /// pushed (or dropped) meanwhile stay, so nothing is lost or reported twice.
    pub fn ack(&mut self, batch: &Batch) {
        self.dropped = self.dropped.saturating_sub(batch.dropped_reported);
        if let Some(last) = batch.last_seq {
            while self.events.front().is_some_and(|e| e.seq <= last) {
                self.events.pop_front();
            }
        }
    }
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(i: u32) -> EventKind {
        EventKind::Message {
            message: format!("m{i}"),
        }
    }

    fn messages(b: &Batch) -> Vec<String> {
        b.events
            .iter()
            .map(|e| match &e.kind {
                EventKind::Message { message } => message.clone(),
                EventKind::Dropped { count } => format!("dropped {count}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn events_stay_until_acknowledged() {
        let mut r: LogRing<8> = LogRing::new();
        r.push(Level::Info, msg(1));
        r.push(Level::Info, msg(2));
        let b = r.batch(100);
        assert_eq!(messages(&b), ["m1", "m2"]);
        // A failed flush: nothing acknowledged, the same events go out next time.
        assert_eq!(r.batch(100), b);
        r.ack(&b);
        assert!(r.is_empty());
        assert!(r.batch(100).is_empty());
    }

    #[test]
    fn overflow_drops_oldest_and_reports_count_first() {
        let mut r: LogRing<4> = LogRing::new();
        for i in 1..=7 {
            r.push(Level::Info, msg(i));
        }
        assert_eq!(r.len(), 4);
        assert_eq!(r.dropped(), 3);
        let b = r.batch(100);
        assert_eq!(messages(&b), ["dropped 3", "m4", "m5", "m6", "m7"]);
        // The Dropped event carries the last lost sequence number: the gap ends at 3.
        assert_eq!(b.events[0].seq, 3);
        assert_eq!(b.events[0].level, Level::Warn);
        r.ack(&b);
        assert_eq!(r.dropped(), 0);
        assert!(r.is_empty());
    }

    #[test]
    fn events_arriving_during_a_flush_are_kept() {
        let mut r: LogRing<4> = LogRing::new();
        for i in 1..=5 {
            r.push(Level::Info, msg(i));
        }
        let b = r.batch(100); // dropped 1, m2..m5
                              // While the batch is in flight two more arrive and push out m2 and m3.
        r.push(Level::Info, msg(6));
        r.push(Level::Info, msg(7));
        assert_eq!(r.dropped(), 3);
        r.ack(&b);
        // Two drops happened after the batch was cut; they are still owed to the portal.
        assert_eq!(r.dropped(), 2);
        assert_eq!(messages(&r.batch(100)), ["dropped 2", "m6", "m7"]);
    }

    #[test]
    fn batch_size_is_bounded() {
        let mut r: LogRing<8> = LogRing::new();
        for i in 1..=6 {
            r.push(Level::Info, msg(i));
        }
        let b = r.batch(4);
        assert_eq!(messages(&b), ["m1", "m2", "m3", "m4"]);
        r.ack(&b);
        assert_eq!(messages(&r.batch(4)), ["m5", "m6"]);
    }

    #[test]
    fn sequence_numbers_increase() {
        let mut r: LogRing<4> = LogRing::new();
        let a = r.push(Level::Info, msg(1));
        let b = r.push(Level::Info, msg(2));
        assert_eq!((a, b), (1, 2));
    }
}
