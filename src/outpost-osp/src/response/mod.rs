//! Response parsers: bytes (or any `BufRead`) in, typed data out.
//!
//! Every OSP answer is one root element `<{command}_response status=".."
//! status_text="..">`. Failures may instead come as `<osp_response>` (bad
//! XML or unknown command) or `<error_response>` (daemon still starting).
//! A non-2xx status always becomes [`OspError::Status`].

mod feed;
mod scans;
mod version;
mod vts;

use std::io::BufRead;

pub use feed::{parse_check_feed, FeedStatus};
pub use scans::{
    parse_get_scans, parse_start_scan, HostProgress, ResultType, Scan, ScanProgress, ScanResult,
    ScanStatus,
};
pub use version::{parse_get_version, Component, FeedVersion, VersionInfo};
pub use vts::{
    count_get_vts, parse_get_vts, parse_get_vts_with, FeedInfo, Vt, VtList, VtSeverity, VtsCount,
};

use crate::error::OspError;
use crate::xml::read::{Element, Ev, Pump, Tag};

/// A parsed answer to one [`crate::Request`].
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// Answer to `get_version`.
    Version(VersionInfo),
    /// Answer to `get_vts`, every VT read.
    Vts(VtList),
    /// Answer to `get_vts` read in count-only mode.
    VtsCount(VtsCount),
    /// Answer to `check_feed`.
    Feed(FeedStatus),
    /// Answer to `start_scan`: the id of the new scan.
    ScanStarted {
        /// The scan id ospd assigned (or echoed).
        scan_id: String,
    },
    /// Answer to `get_scans`.
    Scans(Vec<Scan>),
    /// Answer to `stop_scan`.
    Stopped,
    /// Answer to `delete_scan`.
    Deleted,
}

/// Parses an answer that carries nothing but its status
/// (`stop_scan`, `delete_scan`).
pub fn parse_status_only(command: &str, input: impl BufRead) -> Result<(), OspError> {
    let mut pump = Pump::new(input);
    let root = open_root(&mut pump, command)?;
    pump.read_element(root)?;
    pump.expect_eof()
}

/// Reads up to the root start tag and checks its name and status.
pub(crate) fn open_root<R: BufRead>(pump: &mut Pump<R>, command: &str) -> Result<Tag, OspError> {
    let tag = match pump.next()? {
        Ev::Start(tag) => tag,
        Ev::Eof => return Err(OspError::EmptyResponse),
        Ev::End | Ev::Text(_) => return Err(pump.malformed("expected a root element")),
    };
    let answered = tag.name.strip_suffix("_response").unwrap_or(&tag.name);
    let status = tag
        .attr("status")
        .ok_or_else(|| OspError::Unexpected(format!("<{}> has no status attribute", tag.name)))?;
    let code: u16 = status
        .trim()
        .parse()
        .map_err(|_| OspError::Unexpected(format!("status {status:?} is not a number")))?;
    if !(200..300).contains(&code) {
        return Err(OspError::Status {
            command: answered.to_owned(),
            code,
            // status_text gets the same double escaping as result attributes.
            text: undo_sax_escape(tag.attr("status_text").unwrap_or_default()),
        });
    }
    if answered != command || !tag.name.ends_with("_response") {
        return Err(OspError::Unexpected(format!(
            "expected <{command}_response>, got <{}>",
            tag.name
        )));
    }
    Ok(tag)
}

/// Reads a whole answer as a tree, after checking its status.
pub(crate) fn read_whole(command: &str, input: impl BufRead) -> Result<Element, OspError> {
    let mut pump = Pump::new(input);
    let root = open_root(&mut pump, command)?;
    let tree = pump.read_element(root)?;
    pump.expect_eof()?;
    Ok(tree)
}

/// Reverses Python's `xml.sax.saxutils.escape` (`&`, `<`, `>` only), in
/// the same order as `saxutils.unescape`.
pub(crate) fn undo_sax_escape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// Optional unsigned number from an attribute or text; empty means absent.
pub(crate) fn opt_u64(value: Option<&str>, what: &str) -> Result<Option<u64>, OspError> {
    match value.map(str::trim) {
        None | Some("") | Some("None") => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| OspError::Unexpected(format!("{what} {v:?} is not a number"))),
    }
}

/// Optional signed number; ospd uses -1 for "unknown" in progress counts.
pub(crate) fn opt_i64(value: Option<&str>, what: &str) -> Result<Option<i64>, OspError> {
    match value.map(str::trim) {
        None | Some("") | Some("None") => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| OspError::Unexpected(format!("{what} {v:?} is not a number"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_statuses_become_typed_errors() {
        let cases = [
            (
                "<osp_response status=\"400\" status_text=\"Bogus command name\"/>",
                "osp",
                400,
            ),
            (
                "<error_response status=\"400\" status_text=\"OSPd OpenVAS is still starting\"/>",
                "error",
                400,
            ),
            (
                "<get_scans_response status=\"404\" status_text=\"Failed to find scan &apos;x&apos;\"/>",
                "get_scans",
                404,
            ),
            (
                "<start_scan_response status=\"500\" status_text=\"Internal error\"/>",
                "start_scan",
                500,
            ),
        ];
        for (xml, cmd, code) in cases {
            match parse_status_only("stop_scan", xml.as_bytes()) {
                Err(OspError::Status {
                    command,
                    code: c,
                    text,
                }) => {
                    assert_eq!(command, cmd);
                    assert_eq!(c, code);
                    assert!(!text.is_empty());
                }
                other => panic!("{xml}: {other:?}"),
            }
        }
        let e = parse_status_only(
            "stop_scan",
            &b"<get_scans_response status=\"404\" status_text=\"Failed to find scan 'x'\"/>"[..],
        )
        .unwrap_err();
        assert!(e.is_not_found());
        assert!(e.to_string().contains("Failed to find scan 'x'"), "{e}");
        let e = parse_status_only(
            "stop_scan",
            &b"<error_response status=\"400\" status_text=\"OSPd OpenVAS is still starting\"/>"[..],
        )
        .unwrap_err();
        assert!(e.is_bad_request() && e.is_transient());
    }

    #[test]
    fn ok_status_only_answers_parse() {
        parse_status_only(
            "delete_scan",
            &b"<?xml version='1.0' encoding='utf-8'?>\n<delete_scan_response status=\"200\" status_text=\"OK\" />"[..],
        )
        .unwrap();
        parse_status_only(
            "stop_scan",
            &b"<stop_scan_response status_text=\"OK\" status=\"200\">\n</stop_scan_response>"[..],
        )
        .unwrap();
    }

    #[test]
    fn answer_to_another_command_is_refused() {
        let e = parse_status_only(
            "stop_scan",
            &b"<delete_scan_response status=\"200\" status_text=\"OK\"/>"[..],
        )
        .unwrap_err();
        assert!(matches!(e, OspError::Unexpected(_)), "{e:?}");
    }

    #[test]
    fn missing_or_bogus_status_is_refused() {
        for xml in [
            "<stop_scan_response/>",
            "<stop_scan_response status=\"ok\"/>",
            "<stop_scan_response status=\"99999999\"/>",
        ] {
            assert!(
                matches!(
                    parse_status_only("stop_scan", xml.as_bytes()),
                    Err(OspError::Unexpected(_))
                ),
                "{xml}"
            );
        }
    }

    #[test]
    fn empty_input_is_an_empty_response() {
        assert!(matches!(
            parse_status_only("stop_scan", &b""[..]),
            Err(OspError::EmptyResponse)
        ));
        assert!(matches!(
            parse_status_only("stop_scan", &b"  \n"[..]),
            Err(OspError::EmptyResponse)
        ));
    }
}
