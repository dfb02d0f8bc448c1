//! `check_feed`: is a feed sync holding the lock right now?

use std::io::BufRead;

use serde::Serialize;

use super::read_whole;
use crate::error::OspError;

/// Answer to `check_feed`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FeedStatus {
    /// True while a feed sync (or ospd's own VT load) holds the feed lock
    /// file: scans started now would be queued behind it.
    pub lockfile_in_use: bool,
    /// Exit code of the feed self test. ospd-openvas 22.5+ no longer runs
    /// the test and always reports 0; older versions report the real code.
    pub self_test_exit_error: i64,
    /// Message of a failed self test, if any.
    pub self_test_error_msg: Option<String>,
}

impl FeedStatus {
    /// True when the feed is usable: not locked and the self test passed.
    pub fn is_ready(&self) -> bool {
        !self.lockfile_in_use && self.self_test_exit_error == 0
    }
}

/// Parses a `check_feed` answer.
pub fn parse_check_feed(input: impl BufRead) -> Result<FeedStatus, OspError> {
    let root = read_whole("check_feed", input)?;
    let feed = root
        .child("feed")
        .ok_or_else(|| OspError::Unexpected("check_feed: no <feed>".into()))?;
    let lockfile_in_use = match feed.child_text("lockfile_in_use") {
        Some("1") => true,
        Some("0") => false,
        other => {
            return Err(OspError::Unexpected(format!(
                "check_feed: lockfile_in_use is {other:?}"
            )))
        }
    };
    let self_test_exit_error = super::opt_i64(
        feed.child_text("self_test_exit_error"),
        "self_test_exit_error",
    )?
    .unwrap_or(0);
    let self_test_error_msg = feed
        .child_text("self_test_error_msg")
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    Ok(FeedStatus {
        lockfile_in_use,
        self_test_exit_error,
        self_test_error_msg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_feed_is_ready() {
        // ospd-openvas 22.5+: self test fields kept for compatibility,
        // the message element is empty (None in Python).
        let xml = r#"<?xml version='1.0' encoding='utf-8'?>
<check_feed_response status="200" status_text="OK"><feed><lockfile_in_use>0</lockfile_in_use><self_test_exit_error>0</self_test_exit_error><self_test_error_msg /></feed></check_feed_response>"#;
        let f = parse_check_feed(xml.as_bytes()).unwrap();
        assert!(!f.lockfile_in_use);
        assert_eq!(f.self_test_error_msg, None);
        assert!(f.is_ready());
    }

    #[test]
    fn locked_feed_is_not_ready() {
        let xml = r#"<check_feed_response status="200" status_text="OK"><feed><lockfile_in_use>1</lockfile_in_use><self_test_exit_error>0</self_test_exit_error><self_test_error_msg/></feed></check_feed_response>"#;
        let f = parse_check_feed(xml.as_bytes()).unwrap();
        assert!(f.lockfile_in_use);
        assert!(!f.is_ready());
    }

    #[test]
    fn failed_self_test_is_reported() {
        let xml = r#"<check_feed_response status="200" status_text="OK"><feed><lockfile_in_use>0</lockfile_in_use><self_test_exit_error>1</self_test_exit_error><self_test_error_msg>rsync: not found</self_test_error_msg></feed></check_feed_response>"#;
        let f = parse_check_feed(xml.as_bytes()).unwrap();
        assert_eq!(f.self_test_exit_error, 1);
        assert_eq!(f.self_test_error_msg.as_deref(), Some("rsync: not found"));
        assert!(!f.is_ready());
    }

    #[test]
    fn garbage_lock_value_is_an_error() {
        let xml = r#"<check_feed_response status="200" status_text="OK"><feed><lockfile_in_use>maybe</lockfile_in_use></feed></check_feed_response>"#;
        assert!(parse_check_feed(xml.as_bytes()).is_err());
    }
}
