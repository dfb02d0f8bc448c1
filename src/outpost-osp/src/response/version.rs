//! `get_version`: protocol, daemon, scanner and feed versions.

use std::io::BufRead;

use serde::Serialize;

use super::read_whole;
use crate::error::OspError;
use crate::xml::read::Element;

/// Name and version of one component.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Component {
    /// e.g. `OSP`, `OSPd OpenVAS`, `openvas`.
    pub name: String,
    /// e.g. `21.4`, `22.7.1`, `OpenVAS 23.0.1`.
    pub version: String,
}

/// The VT feed as `get_version` reports it (absent before VTs are loaded).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FeedVersion {
    /// Feed version, a timestamp like `202406120502`.
    pub version: String,
    /// Feed name, e.g. `Greenbone Community Feed`.
    pub name: Option<String>,
    /// Feed vendor.
    pub vendor: Option<String>,
    /// Feed home page.
    pub home: Option<String>,
}

/// Answer to `get_version`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VersionInfo {
    /// The protocol (`OSP`) and its version.
    pub protocol: Component,
    /// The ospd daemon.
    pub daemon: Component,
    /// The scanner behind it (openvas).
    pub scanner: Component,
    /// The loaded VT feed, when there is one.
    pub vts: Option<FeedVersion>,
}

/// Parses a `get_version` answer.
pub fn parse_get_version(input: impl BufRead) -> Result<VersionInfo, OspError> {
    let root = read_whole("get_version", input)?;
    let component = |name: &str| -> Result<Component, OspError> {
        let e = root
            .child(name)
            .ok_or_else(|| OspError::Unexpected(format!("get_version: no <{name}>")))?;
        Ok(Component {
            name: text(e, "name"),
            version: text(e, "version"),
        })
    };
    let vts = root.child("vts").and_then(|v| {
        let version = text(v, "version");
        (!version.is_empty()).then(|| FeedVersion {
            version,
            name: opt_text(v, "name"),
            vendor: opt_text(v, "vendor"),
            home: opt_text(v, "home"),
        })
    });
    Ok(VersionInfo {
        protocol: component("protocol")?,
        daemon: component("daemon")?,
        scanner: component("scanner")?,
        vts,
    })
}

fn text(e: &Element, name: &str) -> String {
    e.child_text(name).unwrap_or_default().to_owned()
}

fn opt_text(e: &Element, name: &str) -> Option<String> {
    e.child_text(name)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shaped like ospd-openvas 22.x: ElementTree output with an XML
    // declaration, feed info present once VTs are loaded.
    const SAMPLE: &str = r#"<?xml version='1.0' encoding='utf-8'?>
<get_version_response status="200" status_text="OK"><protocol><name>OSP</name><version>21.4</version></protocol><daemon><name>OSPd OpenVAS</name><version>22.7.1</version></daemon><scanner><name>openvas</name><version>OpenVAS 23.0.1</version></scanner><vts><version>202406120502</version><vendor>Greenbone AG</vendor><home>https://www.greenbone.net/en/feed-comparison/</home><name>Greenbone Community Feed</name></vts></get_version_response>"#;

    #[test]
    fn parses_versions_and_feed() {
        let v = parse_get_version(SAMPLE.as_bytes()).unwrap();
        assert_eq!(v.protocol.name, "OSP");
        assert_eq!(v.protocol.version, "21.4");
        assert_eq!(v.daemon.name, "OSPd OpenVAS");
        assert_eq!(v.scanner.version, "OpenVAS 23.0.1");
        let feed = v.vts.unwrap();
        assert_eq!(feed.version, "202406120502");
        assert_eq!(feed.name.as_deref(), Some("Greenbone Community Feed"));
        assert_eq!(feed.vendor.as_deref(), Some("Greenbone AG"));
    }

    #[test]
    fn feed_is_absent_before_vts_load() {
        let xml = r#"<get_version_response status="200" status_text="OK"><protocol><name>OSP</name><version>21.4</version></protocol><daemon><name>OSPd OpenVAS</name><version>22.7.1</version></daemon><scanner><name>openvas</name><version>OpenVAS 23.0.1</version></scanner></get_version_response>"#;
        let v = parse_get_version(xml.as_bytes()).unwrap();
        assert_eq!(v.vts, None);
    }

    #[test]
    fn missing_component_is_an_error() {
        let xml = r#"<get_version_response status="200" status_text="OK"><protocol><name>OSP</name></protocol></get_version_response>"#;
        assert!(matches!(
            parse_get_version(xml.as_bytes()),
            Err(OspError::Unexpected(_))
        ));
    }
}
