//! Has ospd-openvas loaded the whole feed? Poll the `get_vts` count until
//! it reaches what is on disk.

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
    /// Time between polls.
    pub interval: Duration,
}

impl Default for VtsWait {
    fn default() -> Self {
        VtsWait {
            timeout: Duration::from_secs(60 * 60),
            interval: Duration::from_secs(10),
        }
    }
}

/// One poll's outcome, for progress logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VtsProgress {
    /// ospd-openvas listed this many VTs.
    Loaded(u64),
    /// Not answering yet (starting, loading, socket not there): the error.
    NotYet(String),
}

/// Polls `get_vts` (counted, light form) until ospd-openvas lists at least
/// `expected` VTs — NASL scripts plus Notus advisories on disk, see
/// `outpost_feed::FeedStatus::expected_vts`. "Still starting" and other
/// transient errors mean "not yet"; any other error ends the wait.
/// `on_poll` sees every poll. Returns the count reached.
pub fn wait_for_vts(
    client: &OspClient,
    expected: u64,
    wait: &VtsWait,
    on_poll: impl FnMut(&VtsProgress),
) -> Result<u64, ScannerError> {
    wait_for_vts_of(client, expected, None, wait, on_poll)
}

/// [`wait_for_vts`] for one feed version (`PLUGIN_SET`): counts from another version
/// (the previous release, before ospd-openvas noticed the new one) are progress, not the
/// end. Once ospd-openvas answers for `version` it has finished loading it (it answers
/// "still starting" while it loads), so a short count then is final:
/// [`ScannerError::VtsShort`], no waiting for the timeout.
pub fn wait_for_vts_of(
    client: &OspClient,
    expected: u64,
    version: Option<&str>,
    wait: &VtsWait,
    mut on_poll: impl FnMut(&VtsProgress),
) -> Result<u64, ScannerError> {
    let started = Instant::now();
    let mut loaded = 0;
    loop {
        let last_error = match client.send(&GetVts::count_all().into()) {
            Ok(Response::VtsCount(c)) => {
                loaded = c.count;
                on_poll(&VtsProgress::Loaded(c.count));
                let got = c.feed.vts_version.as_deref();
                match version {
                    None if c.count >= expected => return Ok(c.count),
                    Some(v) if got == Some(v) && c.count >= expected => return Ok(c.count),
                    Some(v) if got == Some(v) => {
                        return Err(ScannerError::VtsShort {
                            loaded: c.count,
                            expected,
                            version: v.to_owned(),
                        })
                    }
                    _ => {}
                }
                None
            }
            Ok(other) => {
                return Err(ScannerError::Vts(outpost_osp::OspError::Unexpected(
                    format!("{other:?}"),
                )))
            }
            Err(e) if e.is_transient() => {
                let msg = e.to_string();
                on_poll(&VtsProgress::NotYet(msg.clone()));
                Some(msg)
            }
            Err(e) => return Err(ScannerError::Vts(e)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;

    fn sock(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "outpost-scanner-vts-{}-{tag}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&p);
        p
    }

    fn vts(n: usize) -> String {
        vts_of(n, "202406120502")
    }

    fn vts_of(n: usize, version: &str) -> String {
        let mut s = format!(
            r#"<get_vts_response status="200" status_text="OK"><vts vts_version="{version}">"#,
        );
        for i in 0..n {
            s.push_str(&format!(
                r#"<vt id="1.3.6.1.4.1.25623.1.0.99000{i}"><name>v</name></vt>"#
            ));
        }
        s + "</vts></get_vts_response>"
    }

    const STARTING: &str =
        r#"<error_response status="400" status_text="OSPd OpenVAS is still starting"/>"#;

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

    fn quick() -> VtsWait {
        VtsWait {
            timeout: Duration::from_secs(20),
            interval: Duration::from_millis(10),
        }
    }

    #[test]
    fn waits_through_starting_and_partial_loads() {
        let p = sock("ok");
        let h = fake_ospd(&p, vec![STARTING.into(), vts(2), vts(5)]);
        let mut seen = Vec::new();
        let n = wait_for_vts(&OspClient::new(&p), 5, &quick(), |p| seen.push(p.clone())).unwrap();
        assert_eq!(n, 5);
        assert!(matches!(&seen[0], VtsProgress::NotYet(m) if m.contains("still starting")));
        assert_eq!(seen[1..], [VtsProgress::Loaded(2), VtsProgress::Loaded(5)]);
        let cmds = h.join().unwrap();
        assert_eq!(cmds, vec![r#"<get_vts details="0"/>"#; 3]);
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn gives_up_with_the_count_reached() {
        let p = sock("timeout");
        let h = fake_ospd(&p, vec![vts(3), vts(3), vts(3)]);
        let wait = VtsWait {
            timeout: Duration::from_millis(20),
            interval: Duration::from_millis(10),
        };
        let e = wait_for_vts(&OspClient::new(&p), 7, &wait, |_| {}).unwrap_err();
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

    /// A reload: the old version's count (even when high enough) is not the end; the new
    /// version with the full count is; the new version short of it ends the wait at once.
    #[test]
    fn waits_for_the_feed_version_asked_for() {
        let p = sock("version");
        let h = fake_ospd(
            &p,
            vec![
                vts_of(9, "202401010000"),
                STARTING.into(),
                vts_of(7, "202402020000"),
            ],
        );
        let n = wait_for_vts_of(
            &OspClient::new(&p),
            7,
            Some("202402020000"),
            &quick(),
            |_| {},
        )
        .unwrap();
        assert_eq!(n, 7);
        assert_eq!(h.join().unwrap().len(), 3);
        let _ = std::fs::remove_file(&p);

        let p = sock("short");
        let h = fake_ospd(
            &p,
            vec![vts_of(6, "202401010000"), vts_of(6, "202402020000")],
        );
        let e = wait_for_vts_of(
            &OspClient::new(&p),
            7,
            Some("202402020000"),
            &quick(),
            |_| {},
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "ospd-openvas loaded feed version 202402020000 with 6 of its 7 VTs"
        );
        h.join().unwrap();
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn a_hard_error_ends_the_wait_at_once() {
        let p = sock("hard");
        let h = fake_ospd(
            &p,
            vec![r#"<get_vts_response status="500" status_text="redis gone"/>"#.into()],
        );
        let e = wait_for_vts(&OspClient::new(&p), 1, &quick(), |_| {}).unwrap_err();
        assert!(
            matches!(e, ScannerError::Vts(ref o) if o.is_internal()),
            "{e}"
        );
        h.join().unwrap();
        let _ = std::fs::remove_file(&p);
    }
}
