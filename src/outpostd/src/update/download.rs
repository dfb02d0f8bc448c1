//! Downloading a bundle to `<id>.bundle.part`, resuming with `Range: bytes=N-`.
//!
//! Before every request [`outpost_bundle::plan_resume`] looks at what is on disk: it
//! checks the head (signature and policy) as soon as it is there, so a bundle this
//! device would refuse stops the download early, re-fetches from the first complete
//! part whose hash is wrong, and starts over when the file is longer than announced.
//! Bytes are synced every few MiB, so a power cut costs at most that much.

use std::fs::OpenOptions;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use outpost_bundle::{plan_resume, Policy, Refusal};
use outpost_wire::sensor::UpdateSpec;

use crate::api::{ApiError, PortalClient};
use crate::backoff::Backoff;

/// Bytes between two `fsync`s of the partial file.
const SYNC_EVERY: u64 = 8 * 1024 * 1024;
const BUF: usize = 64 * 1024;
/// Consecutive failed requests without a single new byte before the download is given
/// up (about a quarter of an hour with the backoff below).
const MAX_FRUITLESS_TRIES: u32 = 20;

/// Why a download ended without a complete file.
#[derive(Debug)]
pub enum DownloadEnd {
    /// The bundle is one this device must not install (its head, or a part the portal
    /// keeps sending wrong); delete the file.
    Refused(String),
    /// Not the bundle's fault (network, portal, disk); the partial file is kept.
    Failed(String),
    /// The caller asked to stop (cancellation, job taken away).
    Stopped(String),
}

/// What the download loop asks its caller along the way.
pub trait Observer {
    /// `have` of the bundle's bytes are on disk. `Err(reason)` stops the download.
    fn progress(&mut self, have: u64) -> Result<(), String>;
    fn sleep(&mut self, d: Duration);
}

/// Downloads bundle `spec.bundle_id` into `part` until all `spec.size` bytes are there
/// and every part's hash checks out (the whole-file hash is the caller's job).
pub fn fetch(
    client: &PortalClient,
    spec: &UpdateSpec,
    part: &Path,
    policy: &Policy,
    obs: &mut dyn Observer,
) -> Result<(), DownloadEnd> {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let mut fruitless = 0u32;
    let mut last_discard: Option<u64> = None;
    loop {
        let plan = plan_resume(part, spec.size, policy).map_err(|r| match r {
            // Our own disk, not the bundle.
            Refusal::Read { source } => {
                DownloadEnd::Failed(format!("cannot read {}: {source}", part.display()))
            }
            refusal => DownloadEnd::Refused(refusal.to_string()),
        })?;
        if let Some(why) = &plan.discarded {
            // A part that fails its hash twice at the same place is what the portal
            // serves, not a transmission error: the bundle is tampered or corrupt.
            if last_discard == Some(plan.offset) {
                return Err(DownloadEnd::Refused(why.clone()));
            }
            last_discard = Some(plan.offset);
            tracing::warn!(file = %part.display(), offset = plan.offset, %why, "downloaded bytes discarded");
        }
        plan.apply(part)
            .map_err(|e| DownloadEnd::Failed(format!("cannot prepare {}: {e}", part.display())))?;
        obs.progress(plan.offset).map_err(DownloadEnd::Stopped)?;
        if plan.complete {
            return Ok(());
        }
        // Until the head (header and signed manifest) is on disk and verified, fetch only
        // a slice: a bundle this device refuses costs a few KiB, not the whole download.
        let limit = plan.manifest.is_none().then_some(HEAD_PROBE);
        let last_error = match fetch_from(client, spec, part, plan.offset, limit, obs) {
            Ok(got) if got > 0 => {
                fruitless = 0;
                backoff.reset();
                continue;
            }
            Ok(_) => "the portal sent no bytes".to_owned(),
            Err(Fetch::Stopped(reason)) => return Err(DownloadEnd::Stopped(reason)),
            Err(Fetch::Fatal(reason)) => return Err(DownloadEnd::Failed(reason)),
            Err(Fetch::Retry { got, reason }) => {
                if got > 0 {
                    fruitless = 0;
                    backoff.reset();
                }
                reason
            }
        };
        fruitless += 1;
        if fruitless >= MAX_FRUITLESS_TRIES {
            return Err(DownloadEnd::Failed(format!(
                "download stalled after {fruitless} tries: {last_error}"
            )));
        }
        tracing::info!(bundle = spec.bundle_id, error = %last_error, "download interrupted; resuming");
        obs.sleep(backoff.next_delay());
    }
}

enum Fetch {
    /// Try again (after a pause); `got` bytes were stored before the trouble.
    Retry {
        got: u64,
        reason: String,
    },
    /// Pointless to retry.
    Fatal(String),
    Stopped(String),
}

/// Bytes fetched while the bundle's head is not verified yet (the head is a fixed
/// header plus a manifest of a few KiB).
const HEAD_PROBE: u64 = 64 * 1024;

/// One request from `offset` on, written to `part`, stopping after `limit` bytes if
/// given (the rest of the answer is dropped with the connection); returns the bytes
/// stored.
fn fetch_from(
    client: &PortalClient,
    spec: &UpdateSpec,
    part: &Path,
    offset: u64,
    limit: Option<u64>,
    obs: &mut dyn Observer,
) -> Result<u64, Fetch> {
    let download = client.bundle(spec.bundle_id, offset).map_err(classify)?;
    let mut start = offset;
    match download.status {
        206 => {
            if let Some(cr) = &download.content_range {
                check_content_range(cr, offset, spec.size)
                    .map_err(|reason| Fetch::Retry { got: 0, reason })?;
            }
        }
        // A server that ignores the range sends the whole file: take it from the top.
        200 => start = 0,
        other => {
            return Err(Fetch::Retry {
                got: 0,
                reason: format!("unexpected answer {other} to a bundle download"),
            })
        }
    }
    let io_fatal =
        |what: &str, e: io::Error| Fetch::Fatal(format!("cannot {what} {}: {e}", part.display()));
    let mut file = OpenOptions::new()
        .write(true)
        .open(part)
        .map_err(|e| io_fatal("open", e))?;
    if start != offset {
        file.set_len(start).map_err(|e| io_fatal("truncate", e))?;
    }
    file.seek(SeekFrom::Start(start))
        .map_err(|e| io_fatal("seek in", e))?;

    // Never more than announced: a longer answer is cut (and the hashes decide).
    let want = spec
        .size
        .saturating_sub(start)
        .min(limit.unwrap_or(u64::MAX));
    let mut body = download.body.take(want);
    let mut buf = vec![0u8; BUF];
    let mut got = 0u64;
    let mut unsynced = 0u64;
    let end = loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break BodyEnd::Done,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break BodyEnd::Lost(format!("connection lost after {got} bytes: {e}")),
        };
        if let Err(e) = file.write_all(&buf[..n]) {
            // Keep what made it: the next try resumes after it.
            let _ = file.sync_data();
            return Err(io_fatal("write", e));
        }
        got += n as u64;
        unsynced += n as u64;
        if unsynced >= SYNC_EVERY {
            file.sync_data().map_err(|e| io_fatal("sync", e))?;
            unsynced = 0;
            if let Err(reason) = obs.progress(start + got) {
                break BodyEnd::Stopped(reason);
            }
        }
    };
    file.sync_data().map_err(|e| io_fatal("sync", e))?;
    match end {
        BodyEnd::Done => Ok(got),
        BodyEnd::Lost(reason) => Err(Fetch::Retry { got, reason }),
        BodyEnd::Stopped(reason) => Err(Fetch::Stopped(reason)),
    }
}

enum BodyEnd {
    Done,
    Lost(String),
    Stopped(String),
}

/// `bytes <offset>-<end>/<total>`: the range must start where we asked, and a total, if
/// given, must be the announced size.
fn check_content_range(cr: &str, offset: u64, size: u64) -> Result<(), String> {
    let bad = || format!("the portal answered range {cr:?} to a request from byte {offset}");
    let rest = cr.trim().strip_prefix("bytes ").ok_or_else(bad)?;
    let (range, total) = rest.split_once('/').ok_or_else(bad)?;
    let (first, _) = range.split_once('-').ok_or_else(bad)?;
    if first.trim().parse::<u64>().map_err(|_| bad())? != offset {
        return Err(bad());
    }
    if total.trim() != "*" && total.trim().parse::<u64>().map_err(|_| bad())? != size {
        return Err(format!(
            "the portal's bundle is {total} bytes, the job announced {size}"
        ));
    }
    Ok(())
}

fn classify(e: ApiError) -> Fetch {
    if e.is_transient() {
        return Fetch::Retry {
            got: 0,
            reason: e.to_string(),
        };
    }
    Fetch::Fatal(format!("the portal refused the download: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_must_start_at_the_offset() {
        assert!(check_content_range("bytes 100-999/1000", 100, 1000).is_ok());
        assert!(check_content_range("bytes 100-999/*", 100, 1000).is_ok());
        assert!(check_content_range("bytes 0-999/1000", 100, 1000).is_err());
        assert!(check_content_range("bytes 100-999/2000", 100, 1000)
            .unwrap_err()
            .contains("2000"));
        assert!(check_content_range("items 1-2/3", 1, 3).is_err());
    }
}
