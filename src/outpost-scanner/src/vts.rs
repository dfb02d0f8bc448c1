//! Has ospd-openvas loaded the whole feed? Poll its feed version until it has loaded
//! the one on disk, then count its VTs once.

use std::thread;
use std::time::{Duration, Instant};

use outpost_osp::{GetVts, OspClient, Response};

use crate::error::ScannerError;

/// Polling parameters for [`wait_for_vts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VtsWait {
    /// Give up after this long. A first load of the full community feed
    /// takes many minutes on a Pi.
    pub timeout: Duration,
    /// Time between polls. A poll for a known version asks only for the feed's
    /// version (cheap), so it can be short; counting walks every VT.
    pub interval: Duration,
}

impl Default for VtsWait {
    fn default() -> Self {
        VtsWait {
            timeout: Duration::from_secs(60 * 60),
            interval: Duration::from_secs(3),
        }
    }
}

/// One poll's outcome, for progress logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VtsProgress {
    /// ospd-openvas listed this many VTs.
    Loaded(u64),
    /// ospd-openvas still answers for another feed version (the previous release,
    /// before it noticed the new one), or for none.
    OtherVersion(Option<String>),
    /// Not answering yet (starting, loading, socket not there): the error.
    NotYet(String),
}

/// Waits until ospd-openvas has loaded at least `expected` VTs — NASL scripts plus Notus
/// advisories, see `outpost_feed::FeedStatus::expected_vts` — and returns the count.
/// ospd-openvas answers "still starting" while it loads; once it answers, `count` (in the
/// device, [`crate::count_cached_vts`]) says how many VTs it lists. "Still starting" and
/// other transient errors mean "not yet"; any other OSP error ends the wait. `on_poll`
/// sees every poll.
pub fn wait_for_vts(
    client: &OspClient,
    count: impl FnMut() -> Result<u64, String>,
    expected: u64,
    wait: &VtsWait,
    on_poll: impl FnMut(&VtsProgress),
) -> Result<u64, ScannerError> {
    wait_for_vts_of(client, count, expected, None, wait, on_poll)
}

/// [`wait_for_vts`] for one feed version (`PLUGIN_SET`). The polls ask only for the
/// version (`version_only`: ospd-openvas reads no VT for it) until it is `version`, then
/// count once, and ask again: a count between two answers naming `version` is of that
/// version. A listing `get_vts` would build an XML element per VT, which in Python on an
/// ARM board costs more than the reload itself. A short count of `version` is final:
/// [`ScannerError::VtsShort`], no waiting for the timeout.
pub fn wait_for_vts_of(
    client: &OspClient,
    mut count: impl FnMut() -> Result<u64, String>,
    expected: u64,
    version: Option<&str>,
    wait: &VtsWait,
    mut on_poll: impl FnMut(&VtsProgress),
) -> Result<u64, ScannerError> {
    let started = Instant::now();
    let mut loaded = 0;
    loop {
        let polled = poll(
            client,
            &mut count,
            expected,
            version,
            &mut loaded,
            &mut on_poll,
        );
        let last_error = match polled {
            Ok(Some(count)) => return Ok(count),
            Ok(None) => None,
            Err(Poll::NotYet(msg)) => {
                on_poll(&VtsProgress::NotYet(msg.clone()));
                Some(msg)
            }
            Err(Poll::End(e)) => return Err(e),
        };
        if started.elapsed() + wait.interval > wait.timeout {
            return Err(ScannerError::VtsTimeout {
                loaded,
                expected,
                waited: started.elapsed(),
                last_error,
            });
        }
        thread::sleep(wait.interval);
    }
}

/// Why a poll did not end the wait with a count.
enum Poll {
    /// A transient error: try again.
    NotYet(String),
    /// The wait is over.
    End(ScannerError),
}

/// One poll: `Some(count)` when the wait is over, `None` to poll again.
fn poll(
    client: &OspClient,
    count: &mut impl FnMut() -> Result<u64, String>,
    expected: u64,
    version: Option<&str>,
    loaded: &mut u64,
    on_poll: &mut impl FnMut(&VtsProgress),
) -> Result<Option<u64>, Poll> {
    let got = loaded_version(client)?;
    if let Some(v) = version {
        if got.as_deref() != Some(v) {
            on_poll(&VtsProgress::OtherVersion(got));
            return Ok(None);
        }
    }
    let n = count().map_err(Poll::NotYet)?;
    if let Some(v) = version {
        // Another version started loading meanwhile (a newer release, a rollback): this
        // count may be of neither.
        if loaded_version(client)?.as_deref() != Some(v) {
            return Ok(None);
        }
    }
    *loaded = n;
    on_poll(&VtsProgress::Loaded(n));
    match version {
        Some(v) if n < expected => Err(Poll::End(ScannerError::VtsShort {
            loaded: n,
            expected,
            version: v.to_owned(),
        })),
        _ if n >= expected => Ok(Some(n)),
        _ => Ok(None),
    }
}

/// The feed version ospd-openvas has loaded, once it has finished loading.
fn loaded_version(client: &OspClient) -> Result<Option<String>, Poll> {
    match client.send(&GetVts::version_only().into()) {
        Ok(Response::Vts(l)) => Ok(l.feed.vts_version),
        Ok(other) => Err(Poll::End(ScannerError::Vts(
            outpost_osp::OspError::Unexpected(format!("{other:?}")),
        ))),
        Err(e) if e.is_transient() => Err(Poll::NotYet(e.to_string())),
        Err(e) => Err(Poll::End(ScannerError::Vts(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;
    use std::rc::Rc;

    fn sock(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "outpost-scanner-vts-{}-{tag}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&p);
        p
    }

    /// A `version_only` answer.
    fn version(v: &str) -> String {
        format!(
            r#"<get_vts_response status="200" status_text="OK"><vts vts_version="{v}" total="0"></vts></get_vts_response>"#
        )
    }

    const STARTING: &str =
        r#"<error_response status="400" status_text="OSPd OpenVAS is still starting"/>"#;
    const VERSION_ONLY: &str = r#"<get_vts version_only="1"/>"#;

    /// A fake ospd answering successive connections with `answers`;
    /// returns the commands it got.
    fn fake_ospd(path: &PathBuf, answers: Vec<String>) -> thread::JoinHandle<Vec<String>> {
        let l = UnixListener::bind(path).unwrap();
        thread::spawn(move || {
            let mut got = Vec::new();
            for a in answers {
                let (mut c, _) = l.accept().unwrap();
                let mut cmd = String::new();
                c.read_to_string(&mut cmd).unwrap();
                got.push(cmd);
                c.write_all(a.as_bytes()).unwrap();
            }
            got
        })
    }

    /// Counts handed out in turn, each call noted.
    fn counts(
        list: &[Result<u64, &str>],
    ) -> (impl FnMut() -> Result<u64, String>, Rc<Cell<usize>>) {
        let calls = Rc::new(Cell::new(0));
        let seen = calls.clone();
        let list: Vec<_> = list.iter().map(|r| r.map_err(str::to_owned)).collect();
        (
            move || {
                let i = seen.get();
                seen.set(i + 1);
                list.get(i).cloned().unwrap_or(Err("no more counts".into()))
            },
            calls,
        )
    }

    fn quick() -> VtsWait {
        VtsWait {
            timeout: Duration::from_secs(20),
            interval: Duration::from_millis(10),
        }
    }

    #[test]
    fn waits_through_starting_and_short_counts_without_a_version() {
        let p = sock("ok");
        let h = fake_ospd(&p, vec![STARTING.into(), version("1"), version("1")]);
        let (count, calls) = counts(&[Ok(2), Ok(5)]);
        let mut seen = Vec::new();
        let n = wait_for_vts(&OspClient::new(&p), count, 5, &quick(), |p| {
            seen.push(p.clone())
        })
        .unwrap();
        assert_eq!(n, 5);
        assert!(matches!(&seen[0], VtsProgress::NotYet(m) if m.contains("still starting")));
        assert_eq!(seen[1..], [VtsProgress::Loaded(2), VtsProgress::Loaded(5)]);
        assert_eq!(calls.get(), 2);
        assert_eq!(h.join().unwrap(), [VERSION_ONLY; 3]);
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn gives_up_with_the_count_reached() {
        let p = sock("timeout");
        let h = fake_ospd(&p, vec![version("1"), version("1"), version("1")]);
        let (count, _) = counts(&[Ok(3), Ok(3), Ok(3)]);
        let wait = VtsWait {
            timeout: Duration::from_millis(20),
            interval: Duration::from_millis(10),
        };
        let e = wait_for_vts(&OspClient::new(&p), count, 7, &wait, |_| {}).unwrap_err();
        assert!(
            matches!(
                e,
                ScannerError::VtsTimeout {
                    loaded: 3,
                    expected: 7,
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("ospd-openvas has 3 of 7 VTs loaded after"),
            "{e}"
        );
        drop(h); // the fake may still wait for a connection; it dies with the test
        let _ = std::fs::remove_file(&p);
    }

    /// What a wait for version `V2` did against a fake ospd giving `answers` and a
    /// counter giving `counts`.
    struct Waited {
        result: Result<u64, ScannerError>,
        commands: Vec<String>,
        counted: usize,
        seen: Vec<VtsProgress>,
    }

    const V1: &str = "202401010000";
    const V2: &str = "202402020000";

    fn wait_for_v2(
        tag: &str,
        answers: Vec<String>,
        list: &[Result<u64, &str>],
        expected: u64,
    ) -> Waited {
        let p = sock(tag);
        let h = fake_ospd(&p, answers);
        let (count, calls) = counts(list);
        let mut seen = Vec::new();
        let result = wait_for_vts_of(
            &OspClient::new(&p),
            count,
            expected,
            Some(V2),
            &quick(),
            |p| seen.push(p.clone()),
        );
        let commands = h.join().unwrap();
        let _ = std::fs::remove_file(&p);
        Waited {
            result,
            commands,
            counted: calls.get(),
            seen,
        }
    }

    /// A reload: while ospd-openvas answers for the old version or is still starting,
    /// nothing is counted; the new version is counted once, between two answers naming it.
    #[test]
    fn waits_for_the_feed_version_asked_for() {
        let answers = vec![version(V1), STARTING.into(), version(V2), version(V2)];
        let w = wait_for_v2("version", answers, &[Ok(7)], 7);
        assert_eq!(w.result.unwrap(), 7);
        assert_eq!(w.counted, 1);
        assert_eq!(w.commands, [VERSION_ONLY; 4]);
        assert_eq!(w.seen[0], VtsProgress::OtherVersion(Some(V1.into())));
        assert!(matches!(&w.seen[1], VtsProgress::NotYet(m) if m.contains("still starting")));
        assert_eq!(w.seen[2], VtsProgress::Loaded(7));
    }

    /// The new version loaded short: final at the first count, no more polls.
    #[test]
    fn a_short_count_of_the_version_is_final() {
        let w = wait_for_v2("short", vec![version(V2), version(V2)], &[Ok(6)], 7);
        assert_eq!(
            w.result.unwrap_err().to_string(),
            "ospd-openvas loaded feed version 202402020000 with 6 of its 7 VTs"
        );
        assert_eq!(w.commands, [VERSION_ONLY; 2]);
    }

    /// Another version started loading while the count ran (a rollback, a newer
    /// release): that count is neither the end nor short. A count that fails (redis
    /// restarting) is "not yet".
    #[test]
    fn a_count_not_bracketed_by_the_version_is_not_the_end() {
        let answers = vec![
            version(V2),
            STARTING.into(),
            version(V2),
            version(V2),
            version(V2),
        ];
        let counts = [Ok(3), Err("redis is loading"), Ok(7)];
        let w = wait_for_v2("race", answers, &counts, 7);
        assert_eq!(w.result.unwrap(), 7);
        assert_eq!(w.counted, 3);
        assert!(!w.seen.contains(&VtsProgress::Loaded(3)), "{:?}", w.seen);
        assert!(w
            .seen
            .contains(&VtsProgress::NotYet("redis is loading".into())));
    }

    #[test]
    fn a_hard_error_ends_the_wait_at_once() {
        let p = sock("hard");
        let h = fake_ospd(
            &p,
            vec![r#"<get_vts_response status="500" status_text="redis gone"/>"#.into()],
        );
        let (count, calls) = counts(&[]);
        let e = wait_for_vts(&OspClient::new(&p), count, 1, &quick(), |_| {}).unwrap_err();
        assert_eq!(calls.get(), 0);
        assert!(
            matches!(e, ScannerError::Vts(ref o) if o.is_internal()),
            "{e}"
        );
        h.join().unwrap();
        let _ = std::fs::remove_file(&p);
    }
}
