//! `get_vts`: feed information and the VT list, streamed.
//!
//! A full feed answer holds ~100k VTs and runs to hundreds of megabytes,
//! so VTs are handed to a callback one at a time ([`parse_get_vts_with`])
//! or only counted ([`count_get_vts`]); only one VT is in memory at once.

use std::io::BufRead;

use serde::Serialize;

use super::open_root;
use crate::error::OspError;
use crate::xml::read::{Element, Ev, Pump, Shallow, Tag};

/// Feed attributes of the `<vts>` element.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FeedInfo {
    /// Feed version, e.g. `202406120502`.
    pub vts_version: Option<String>,
    /// Feed name.
    pub feed_name: Option<String>,
    /// Feed vendor.
    pub feed_vendor: Option<String>,
    /// Feed home page.
    pub feed_home: Option<String>,
    /// Number of VTs the scanner has loaded.
    pub total: Option<u64>,
    /// Number of VTs that matched the filter (only with a filter).
    pub sent: Option<u64>,
    /// Hash over all VT OIDs, modification times and preferences: a cheap
    /// way to see whether the loaded feed changed.
    pub sha256_hash: Option<String>,
}

/// Severity of a VT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VtSeverity {
    /// e.g. `cvss_base_v3`.
    pub kind: String,
    /// The vector, e.g. `CVSS:3.1/AV:N/AC:L/...`.
    pub vector: String,
}

/// One vulnerability test.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Vt {
    /// The OID, e.g. `1.3.6.1.4.1.25623.1.0.10330`.
    pub oid: String,
    /// Human-readable name.
    pub name: String,
    /// Family (from `<custom><family>`), e.g. `Service detection`.
    pub family: Option<String>,
    /// Created, seconds since the epoch.
    pub creation_time: Option<u64>,
    /// Last modified, seconds since the epoch.
    pub modification_time: Option<u64>,
    /// Short summary.
    pub summary: Option<String>,
    /// Solution type, e.g. `VendorFix`.
    pub solution_type: Option<String>,
    /// Quality-of-detection type, e.g. `remote_banner`.
    pub qod_type: Option<String>,
    /// Severity, when the VT has one.
    pub severity: Option<VtSeverity>,
    /// CVE references.
    pub cves: Vec<String>,
}

/// Answer to `get_vts` read whole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VtList {
    /// Feed information.
    pub feed: FeedInfo,
    /// The VTs in the answer.
    pub vts: Vec<Vt>,
}

/// Answer to `get_vts` read in count-only mode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VtsCount {
    /// Feed information.
    pub feed: FeedInfo,
    /// Number of `<vt>` elements in the answer.
    pub count: u64,
}

/// Parses a `get_vts` answer, keeping every VT.
pub fn parse_get_vts(input: impl BufRead) -> Result<VtList, OspError> {
    let mut vts = Vec::new();
    let feed = parse_get_vts_with(input, |vt| vts.push(vt))?;
    Ok(VtList { feed, vts })
}

/// Parses a `get_vts` answer, handing each VT to `on_vt` as soon as it
/// is read. Returns the feed information.
pub fn parse_get_vts_with(
    input: impl BufRead,
    mut on_vt: impl FnMut(Vt),
) -> Result<FeedInfo, OspError> {
    walk(input, |pump| loop {
        match pump.next()? {
            Ev::Start(t) if t.name == "vt" => {
                let e = pump.read_element(t)?;
                on_vt(vt_from(&e)?);
            }
            Ev::Start(_) => pump.skip_element()?,
            Ev::Text(_) => {}
            Ev::End => return Ok(()),
            Ev::Eof => return Err(pump.malformed("document ends inside <vts>")),
        }
    })
}

/// Counts the VTs in a `get_vts` answer without decoding them: the fast
/// path for "how many VTs does the scanner have" on a full feed.
pub fn count_get_vts(input: impl BufRead) -> Result<VtsCount, OspError> {
    let mut count = 0u64;
    let feed = walk(input, |pump| {
        // Inside <vts> the depth is 2; a <vt> child starts at depth 3.
        loop {
            match pump.next_shallow()? {
                Shallow::Start(name) if pump.depth() == 3 && name == "vt" => count += 1,
                Shallow::End if pump.depth() == 1 => return Ok(()),
                Shallow::Eof => return Err(pump.malformed("document ends inside <vts>")),
                _ => {}
            }
        }
    })?;
    Ok(VtsCount { feed, count })
}

/// Walks `<get_vts_response>`, lets `inside_vts` consume the content of
/// the `<vts>` element (up to and including its end tag), and returns the
/// feed information from its attributes.
fn walk<R: BufRead>(
    input: R,
    mut inside_vts: impl FnMut(&mut Pump<R>) -> Result<(), OspError>,
) -> Result<FeedInfo, OspError> {
    let mut pump = Pump::new(input);
    open_root(&mut pump, "get_vts")?;
    let mut feed = None;
    loop {
        match pump.next()? {
            Ev::Start(t) if t.name == "vts" && feed.is_none() => {
                feed = Some(feed_from(&t)?);
                inside_vts(&mut pump)?;
            }
            Ev::Start(_) => pump.skip_element()?,
            Ev::Text(_) => {}
            Ev::End => break,
            Ev::Eof => return Err(pump.malformed("document ends inside the root")),
        }
    }
    pump.expect_eof()?;
    feed.ok_or_else(|| OspError::Unexpected("get_vts: no <vts> element".into()))
}

fn feed_from(t: &Tag) -> Result<FeedInfo, OspError> {
    let s = |k: &str| t.attr(k).filter(|v| !v.is_empty()).map(str::to_owned);
    Ok(FeedInfo {
        vts_version: s("vts_version"),
        feed_name: s("feed_name"),
        feed_vendor: s("feed_vendor"),
        feed_home: s("feed_home"),
        total: super::opt_u64(t.attr("total"), "vts total")?,
        sent: super::opt_u64(t.attr("sent"), "vts sent")?,
        sha256_hash: s("sha256_hash"),
    })
}

fn vt_from(e: &Element) -> Result<Vt, OspError> {
    let oid = e
        .attr("id")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| OspError::Unexpected("get_vts: <vt> without id".into()))?
        .to_owned();
    let text = |name: &str| {
        e.child_text(name)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    // One odd timestamp must not make a 100k-VT feed unreadable.
    let time = |name: &str| e.child_text(name).and_then(|s| s.parse::<u64>().ok());
    let family = e
        .child("custom")
        .and_then(|c| c.child_text("family"))
        .or_else(|| e.child_text("family"))
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let severity = e
        .child("severities")
        .and_then(|s| s.child("severity"))
        .map(|s| VtSeverity {
            kind: s.attr("type").unwrap_or_default().to_owned(),
            vector: s.child_text("value").unwrap_or_default().to_owned(),
        });
    let cves = e
        .child("refs")
        .map(|r| {
            r.children_named("ref")
                .filter(|x| x.attr("type") == Some("cve"))
                .filter_map(|x| x.attr("id").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok(Vt {
        name: text("name").unwrap_or_default(),
        family,
        creation_time: time("creation_time"),
        modification_time: time("modification_time"),
        summary: text("summary"),
        solution_type: e
            .child("solution")
            .and_then(|s| s.attr("type"))
            .map(str::to_owned),
        qod_type: e
            .child("detection")
            .and_then(|d| d.attr("qod_type"))
            .or_else(|| e.child("qod_type").map(Element::trimmed_text))
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
        severity,
        cves,
        oid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shaped like ospd-openvas: the <vts> start tag built by string
    // concatenation, each <vt> serialised by lxml.
    const LIST: &str = r#"<get_vts_response status="200" status_text="OK"><vts vts_version="202406120502" total="2" sent="2" sha256_hash="1762240dbd4ad0baf41ad9dcec58863922d63da35ceaa44488a55c3c23c4fcdb"><vt id="1.3.6.1.4.1.25623.1.0.10330"><name>Services</name><refs/><creation_time>1999-08-24T00:00:00+00:00</creation_time><modification_time>1718000000</modification_time><summary>This routine attempts to guess which service is running on the remote ports.</summary><qod_type>remote_banner</qod_type><severities><severity type="cvss_base_v2"><value>AV:N/AC:L/Au:N/C:N/I:N/A:N</value><origin/><date>935452800</date></severity></severities><custom><category>3</category><family>Service detection</family><filename>find_service.nasl</filename></custom></vt><vt id="1.3.6.1.4.1.25623.1.0.104870"><name>OpenSSH &lt; 9.3p2 RCE</name><refs><ref type="cve" id="CVE-2023-38408"/><ref type="url" id="https://www.openssh.com/txt/release-9.3p2"/></refs><creation_time>1690000000</creation_time><modification_time>1700000000</modification_time><solution type="VendorFix" method="">Update to version 9.3p2 or later.</solution><detection qod_type="remote_banner_unreliable"/><severities><severity type="cvss_base_v3"><value>CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H</value></severity></severities><custom><family>General</family></custom></vt></vts></get_vts_response>"#;

    #[test]
    fn parses_feed_info_and_vts() {
        let list = parse_get_vts(LIST.as_bytes()).unwrap();
        assert_eq!(list.feed.vts_version.as_deref(), Some("202406120502"));
        assert_eq!(list.feed.total, Some(2));
        assert_eq!(list.feed.sent, Some(2));
        assert!(list
            .feed
            .sha256_hash
            .as_deref()
            .unwrap()
            .starts_with("1762"));
        assert_eq!(list.vts.len(), 2);

        let a = &list.vts[0];
        assert_eq!(a.oid, "1.3.6.1.4.1.25623.1.0.10330");
        assert_eq!(a.name, "Services");
        assert_eq!(a.family.as_deref(), Some("Service detection"));
        assert_eq!(
            a.creation_time, None,
            "non-numeric time is dropped, not fatal"
        );
        assert_eq!(a.modification_time, Some(1_718_000_000));
        assert_eq!(a.qod_type.as_deref(), Some("remote_banner"));
        assert_eq!(a.severity.as_ref().unwrap().kind, "cvss_base_v2");

        let b = &list.vts[1];
        assert_eq!(b.name, "OpenSSH < 9.3p2 RCE");
        assert_eq!(b.family.as_deref(), Some("General"));
        assert_eq!(b.solution_type.as_deref(), Some("VendorFix"));
        assert_eq!(b.qod_type.as_deref(), Some("remote_banner_unreliable"));
        assert_eq!(b.cves, vec!["CVE-2023-38408".to_owned()]);
        assert!(b.severity.as_ref().unwrap().vector.starts_with("CVSS:3.1/"));
    }

    #[test]
    fn count_matches_full_parse() {
        let c = count_get_vts(LIST.as_bytes()).unwrap();
        assert_eq!(c.count, 2);
        assert_eq!(c.feed.total, Some(2));
    }

    #[test]
    fn version_only_answer_has_feed_info_and_no_vts() {
        let xml = r#"<get_vts_response status="200" status_text="OK"><vts vts_version="202112140941" feed_vendor="Greenbone AG" feed_home="https://www.greenbone.net/en/feed-comparison/" feed_name="Greenbone Security Feed" total="" sha256_hash="1762240dbd4ad0baf41ad9dcec58863922d63da35ceaa44488a55c3c23c4fcdb"></vts></get_vts_response>"#;
        let l = parse_get_vts(xml.as_bytes()).unwrap();
        assert!(l.vts.is_empty());
        assert_eq!(l.feed.total, None);
        assert_eq!(l.feed.feed_vendor.as_deref(), Some("Greenbone AG"));
        assert_eq!(l.feed.feed_name.as_deref(), Some("Greenbone Security Feed"));
        assert_eq!(count_get_vts(xml.as_bytes()).unwrap().count, 0);
    }

    #[test]
    fn streams_a_large_feed_one_vt_at_a_time() {
        let mut xml = String::from(
            r#"<get_vts_response status="200" status_text="OK"><vts vts_version="1" total="20000">"#,
        );
        for i in 0..20_000 {
            xml.push_str(&format!(
                "<vt id=\"1.3.6.1.4.1.25623.1.0.{i}\"><name>VT {i}</name><custom><family>F{}</family></custom></vt>",
                i % 7
            ));
        }
        xml.push_str("</vts></get_vts_response>");
        let mut seen = 0u64;
        let mut last = String::new();
        let feed = parse_get_vts_with(xml.as_bytes(), |vt| {
            seen += 1;
            last = vt.oid;
        })
        .unwrap();
        assert_eq!(seen, 20_000);
        assert_eq!(last, "1.3.6.1.4.1.25623.1.0.19999");
        assert_eq!(feed.total, Some(20_000));
        assert_eq!(count_get_vts(xml.as_bytes()).unwrap().count, 20_000);
    }

    #[test]
    fn nested_vt_elements_are_not_counted() {
        let xml = r#"<get_vts_response status="200" status_text="OK"><vts><vt id="a"><custom><vt>x</vt></custom></vt></vts></get_vts_response>"#;
        assert_eq!(count_get_vts(xml.as_bytes()).unwrap().count, 1);
    }

    #[test]
    fn unknown_vt_is_not_found() {
        let xml = r#"<get_vts_response status="404" status_text="Failed to find vulnerability test '1.2.3'"/>"#;
        assert!(parse_get_vts(xml.as_bytes()).unwrap_err().is_not_found());
        assert!(count_get_vts(xml.as_bytes()).unwrap_err().is_not_found());
    }

    #[test]
    fn truncated_feed_is_an_error_in_both_modes() {
        let cut = &LIST[..LIST.len() / 2];
        assert!(parse_get_vts(cut.as_bytes()).is_err());
        assert!(count_get_vts(cut.as_bytes()).is_err());
    }

    #[test]
    fn missing_vts_element_is_an_error() {
        let xml = r#"<get_vts_response status="200" status_text="OK"/>"#;
        assert!(parse_get_vts(xml.as_bytes()).is_err());
    }
}
