//! Ships the log ring to `POST /api/sensor/log` as NDJSON whenever events are waiting.

use std::time::Duration;

use outpost_wire::log::to_ndjson;

use crate::api::{ApiError, PortalClient};
use crate::backoff::Backoff;
use crate::report::Reporter;
use crate::ring::RING_CAPACITY;

/// Sends one batch; the events leave the ring only if the portal accepted it.
/// Returns how many events were sent.
pub fn flush_once(client: &PortalClient, reporter: &Reporter) -> Result<usize, ApiError> {
    // Cut the batch under the lock, send without it, so producers never wait on the network.
    // One batch empties even a full ring plus its leading `Dropped` event.
    let batch = reporter
        .ring()
        .batch((RING_CAPACITY + 1).min(outpost_wire::MAX_LOG_EVENTS));
    if batch.is_empty() {
        return Ok(0);
    }
    client.send_log(to_ndjson(&batch.events))?;
    reporter.ring().ack(&batch);
    Ok(batch.events.len())
}

/// Flushes as events arrive, forever; backs off while the portal is unreachable.
pub fn run(client: PortalClient, reporter: &Reporter) {
    let mut backoff = Backoff::portal();
    loop {
        reporter.wait_for_events(Duration::from_secs(30));
        match flush_once(&client, reporter) {
            Ok(_) => backoff.reset(),
            Err(e) => {
                let delay = backoff.next_delay();
                let (buffered, dropped) = {
                    let ring = reporter.ring();
                    (ring.len(), ring.dropped())
                };
                tracing::warn!(error = %e, retry_in = ?delay, buffered, dropped, "log upload failed; events stay buffered");
                std::thread::sleep(delay);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::fake::{status, FakeTransport};
    use crate::report::capture;
    use outpost_wire::log::{from_ndjson, EventKind, Level};
    use outpost_wire::{paths, Secret};
    use std::sync::Arc;

    #[test]
    fn failed_flush_keeps_events_and_success_sends_dropped_first() {
        let t = Arc::new(FakeTransport::default());
        let client = PortalClient::new(t.clone(), Secret::new("osk_k"));
        let rep = capture("b");
        for i in 0..(RING_CAPACITY + 5) {
            rep.message(Level::Info, &format!("m{i}"));
        }
        t.push(paths::LOG, Ok(status(503, None)));
        t.push(paths::LOG, Ok(status(204, None)));
        assert!(flush_once(&client, &rep).is_err());
        assert_eq!(rep.ring().len(), RING_CAPACITY);
        assert_eq!(flush_once(&client, &rep).unwrap(), RING_CAPACITY + 1);
        assert!(rep.ring().is_empty());
        // Nothing left: no request at all.
        assert_eq!(flush_once(&client, &rep).unwrap(), 0);

        let sent = t.seen_on(paths::LOG);
        assert_eq!(sent.len(), 2);
        let events = from_ndjson(&sent[1].body, 10_000).unwrap();
        assert_eq!(events[0].kind, EventKind::Dropped { count: 5 });
        assert_eq!(
            events[1].kind,
            EventKind::Message {
                message: "m5".into()
            }
        );
        // The failed attempt carried the same events, which were kept for the retry.
        let seqs = |body: &str| -> Vec<u64> {
            from_ndjson(body, 10_000)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect()
        };
        assert_eq!(seqs(&sent[0].body), seqs(&sent[1].body));
    }
}
