//! `get_scans` and `start_scan` answers: scan state, progress, results.

use std::fmt;
use std::io::BufRead;

use serde::{Deserialize, Serialize};

use super::{opt_i64, opt_u64, read_whole, undo_sax_escape};
use crate::error::OspError;
use crate::xml::read::Element;

/// Where a scan is in its life, as ospd reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScanStatus {
    /// Accepted, waiting for a free slot (or for the feed to load).
    Queued,
    /// Being set up.
    Init,
    /// Scanning.
    Running,
    /// Stopped by a `stop_scan`.
    Stopped,
    /// Done.
    Finished,
    /// Ended abnormally (scanner crash, out of memory, ...).
    Interrupted,
    /// A status this client does not know (a newer ospd).
    Other(String),
}

impl ScanStatus {
    /// Parses ospd's lower-case status name.
    pub fn parse(s: &str) -> ScanStatus {
        match s.trim() {
            "queued" => ScanStatus::Queued,
            "init" => ScanStatus::Init,
            "running" => ScanStatus::Running,
            "stopped" => ScanStatus::Stopped,
            "finished" => ScanStatus::Finished,
            "interrupted" => ScanStatus::Interrupted,
            other => ScanStatus::Other(other.to_owned()),
        }
    }

    /// True once the scan will not change any more (stopped, finished,
    /// interrupted); results may still be waiting to be fetched.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            ScanStatus::Stopped | ScanStatus::Finished | ScanStatus::Interrupted
        )
    }
}

impl fmt::Display for ScanStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ScanStatus::Queued => "queued",
            ScanStatus::Init => "init",
            ScanStatus::Running => "running",
            ScanStatus::Stopped => "stopped",
            ScanStatus::Finished => "finished",
            ScanStatus::Interrupted => "interrupted",
            ScanStatus::Other(s) => s,
        })
    }
}

/// Kind of one result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResultType {
    /// A vulnerability (severity > 0 normally).
    Alarm,
    /// Informational finding (severity 0).
    Log,
    /// Facts about a host (OS, open ports, ...), not a finding.
    #[serde(rename = "Host Detail")]
    HostDetail,
    /// A scanner error for a host or VT.
    Error,
    /// A type this client does not know.
    Other(String),
}

impl ResultType {
    /// Parses ospd's type name (`Alarm`, `Log`, `Host Detail`, `Error`).
    pub fn parse(s: &str) -> ResultType {
        match s.trim() {
            "Alarm" => ResultType::Alarm,
            "Log" => ResultType::Log,
            "Host Detail" => ResultType::HostDetail,
            "Error" => ResultType::Error,
            other => ResultType::Other(other.to_owned()),
        }
    }
}

/// One result of a scan. It (de)serialises, so a client can keep popped results on
/// disk before it acts on them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanResult {
    /// Alarm, Log, Host Detail, Error.
    pub result_type: ResultType,
    /// Result name (VT name for alarms, detail name for host details).
    pub name: String,
    /// CVSS-style severity 0.0–10.0; `None` when absent or not a number.
    pub severity: Option<f64>,
    /// Target IP address.
    pub host: String,
    /// Host name, when known.
    pub hostname: String,
    /// Port as `443/tcp`, `general/tcp`, `package`, or empty.
    pub port: String,
    /// OID of the VT that produced it.
    pub test_id: String,
    /// Quality of detection 0–100, when given.
    pub qod: Option<u8>,
    /// URI the result refers to, if any.
    pub uri: String,
    /// The result text (description, detail value, error message).
    pub description: String,
}

/// Progress of one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostProgress {
    /// Host address.
    pub host: String,
    /// Percent done; ospd uses -1 for a host found dead.
    pub progress: i32,
}

/// Detailed progress (`get_scans progress="1"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ScanProgress {
    /// Hosts currently being scanned.
    pub hosts: Vec<HostProgress>,
    /// Overall percent.
    pub overall: Option<i64>,
    /// Hosts found alive so far.
    pub count_alive: Option<i64>,
    /// Hosts found dead so far.
    pub count_dead: Option<i64>,
    /// Hosts excluded from the scan.
    pub count_excluded: Option<i64>,
    /// Hosts in the target; -1 while still being counted.
    pub count_total: Option<i64>,
}

/// One scan as `get_scans` reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scan {
    /// Scan id (a UUID).
    pub id: String,
    /// Target hosts, as ospd echoes them.
    pub target: String,
    /// State.
    pub status: ScanStatus,
    /// Overall percent from the `progress` attribute.
    pub progress: Option<i64>,
    /// Start, seconds since the epoch; `None` if not started.
    pub start_time: Option<u64>,
    /// End, seconds since the epoch; `None` while running (ospd sends 0).
    pub end_time: Option<u64>,
    /// Detailed progress, when asked for.
    pub detail: Option<ScanProgress>,
    /// Results included in this answer (all, or the popped batch).
    pub results: Vec<ScanResult>,
}

/// Parses a `get_scans` answer.
pub fn parse_get_scans(input: impl BufRead) -> Result<Vec<Scan>, OspError> {
    let root = read_whole("get_scans", input)?;
    root.children_named("scan").map(scan_from).collect()
}

/// Parses a `start_scan` answer and returns the new scan's id.
pub fn parse_start_scan(input: impl BufRead) -> Result<String, OspError> {
    let root = read_whole("start_scan", input)?;
    match root.child_text("id") {
        Some(id) if !id.is_empty() => Ok(id.to_owned()),
        _ => Err(OspError::Unexpected("start_scan: no <id> in answer".into())),
    }
}

fn scan_from(e: &Element) -> Result<Scan, OspError> {
    let id = e
        .attr("id")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| OspError::Unexpected("get_scans: <scan> without id".into()))?
        .to_owned();
    let status = ScanStatus::parse(
        e.attr("status")
            .ok_or_else(|| OspError::Unexpected(format!("get_scans: scan {id} has no status")))?,
    );
    let results = match e.child("results") {
        Some(r) => r
            .children_named("result")
            .map(result_from)
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    Ok(Scan {
        target: e.attr("target").unwrap_or_default().to_owned(),
        status,
        progress: opt_i64(e.attr("progress"), "scan progress")?,
        start_time: opt_u64(e.attr("start_time"), "start_time")?.filter(|t| *t != 0),
        end_time: opt_u64(e.attr("end_time"), "end_time")?.filter(|t| *t != 0),
        detail: e.child("progress").map(progress_from).transpose()?,
        results,
        id,
    })
}

fn progress_from(e: &Element) -> Result<ScanProgress, OspError> {
    let hosts = e
        .children_named("host")
        .map(|h| {
            let progress = opt_i64(Some(h.trimmed_text()), "host progress")?.unwrap_or(0);
            Ok(HostProgress {
                host: h.attr("name").unwrap_or_default().to_owned(),
                progress: i32::try_from(progress).map_err(|_| {
                    OspError::Unexpected(format!("host progress {progress} out of range"))
                })?,
            })
        })
        .collect::<Result<_, OspError>>()?;
    let num = |name: &str| opt_i64(e.child_text(name), name);
    Ok(ScanProgress {
        hosts,
        overall: num("overall")?,
        count_alive: num("count_alive")?,
        count_dead: num("count_dead")?,
        count_excluded: num("count_excluded")?,
        count_total: num("count_total")?,
    })
}

fn result_from(e: &Element) -> Result<ScanResult, OspError> {
    // ospd escapes these attribute values itself before ElementTree
    // escapes them again, so one level is left after XML decoding.
    let attr = |k: &str| undo_sax_escape(e.attr(k).unwrap_or_default());
    let severity = attr("severity")
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite());
    let qod = attr("qod").trim().parse::<u8>().ok().filter(|q| *q <= 100);
    Ok(ScanResult {
        result_type: ResultType::parse(&attr("type")),
        name: attr("name"),
        severity,
        host: attr("host"),
        hostname: attr("hostname"),
        port: attr("port"),
        test_id: attr("test_id"),
        qod,
        uri: attr("uri"),
        description: e.trimmed_text().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shaped like ospd-openvas output for details="1" progress="1":
    // results first, then the progress element; attribute values carry
    // ospd's extra escaping level.
    const FINISHED: &str = r#"<?xml version='1.0' encoding='utf-8'?>
<get_scans_response status="200" status_text="OK"><scan id="f14747d3-a4d7-4e79-99bb-a0a1276cb78c" target="192.0.2.10,192.0.2.11" progress="100" status="finished" start_time="1718000000" end_time="1718000600"><results><result name="OpenSSH &amp;lt; 9.3p2 Remote Code Execution" type="Alarm" severity="9.8" host="192.0.2.10" hostname="srv1.branch.example" test_id="1.3.6.1.4.1.25623.1.0.104870" port="22/tcp" qod="80" uri="">Installed version: 8.9p1
Fixed version:     9.3p2 &amp; later</result><result name="TLS/SSL Weak Cipher Suites" type="Alarm" severity="5.0" host="192.0.2.10" hostname="srv1.branch.example" test_id="1.3.6.1.4.1.25623.1.0.103440" port="443/tcp" qod="98" uri="">Weak ciphers offered</result><result name="OS Detection Consolidation and Reporting" type="Log" severity="0.0" host="192.0.2.11" hostname="" test_id="1.3.6.1.4.1.25623.1.0.105937" port="general/tcp" qod="80" uri="">Best matching OS: Debian GNU/Linux 12</result><result name="HOST_START" type="Host Detail" severity="0.0" host="192.0.2.11" hostname="" test_id="" port="" qod="" uri="">1718000010</result><result name="" type="Error" severity="0.0" host="192.0.2.11" hostname="" test_id="1.3.6.1.4.1.25623.1.0.108440" port="" qod="" uri="">NVT timed out after 320 seconds.</result></results><progress><overall>100</overall><count_alive>2</count_alive><count_dead>0</count_dead><count_excluded>0</count_excluded><count_total>2</count_total></progress></scan></get_scans_response>"#;

    #[test]
    fn parses_a_finished_scan_with_results() {
        let scans = parse_get_scans(FINISHED.as_bytes()).unwrap();
        assert_eq!(scans.len(), 1);
        let s = &scans[0];
        assert_eq!(s.id, "f14747d3-a4d7-4e79-99bb-a0a1276cb78c");
        assert_eq!(s.status, ScanStatus::Finished);
        assert!(s.status.is_terminal());
        assert_eq!(s.progress, Some(100));
        assert_eq!(s.start_time, Some(1_718_000_000));
        assert_eq!(s.end_time, Some(1_718_000_600));
        assert_eq!(s.results.len(), 5);

        let ssh = &s.results[0];
        assert_eq!(ssh.result_type, ResultType::Alarm);
        assert_eq!(ssh.name, "OpenSSH < 9.3p2 Remote Code Execution");
        assert_eq!(ssh.severity, Some(9.8));
        assert_eq!(ssh.host, "192.0.2.10");
        assert_eq!(ssh.hostname, "srv1.branch.example");
        assert_eq!(ssh.port, "22/tcp");
        assert_eq!(ssh.test_id, "1.3.6.1.4.1.25623.1.0.104870");
        assert_eq!(ssh.qod, Some(80));
        assert_eq!(
            ssh.description,
            "Installed version: 8.9p1\nFixed version:     9.3p2 & later"
        );

        assert_eq!(s.results[2].result_type, ResultType::Log);
        assert_eq!(s.results[3].result_type, ResultType::HostDetail);
        assert_eq!(s.results[3].qod, None);
        assert_eq!(s.results[4].result_type, ResultType::Error);
        assert_eq!(s.results[4].description, "NVT timed out after 320 seconds.");

        let d = s.detail.as_ref().unwrap();
        assert_eq!(d.overall, Some(100));
        assert_eq!(d.count_alive, Some(2));
        assert_eq!(d.count_total, Some(2));
    }

    #[test]
    fn parses_running_progress_per_host() {
        let xml = r#"<get_scans_response status="200" status_text="OK"><scan end_time="0" id="f14747d3-a4d7-4e79-99bb-a0a1276cb78c" progress="17" start_time="1592316467" status="running" target="192.0.2.100, 127.0.0.1"><progress><host name="127.0.0.1">2</host><host name="192.0.2.100">32</host><host name="192.0.2.101">-1</host><overall>17</overall><count_alive>0</count_alive><count_dead>1</count_dead><count_excluded>0</count_excluded><count_total>-1</count_total></progress></scan></get_scans_response>"#;
        let s = &parse_get_scans(xml.as_bytes()).unwrap()[0];
        assert_eq!(s.status, ScanStatus::Running);
        assert!(!s.status.is_terminal());
        assert_eq!(s.end_time, None);
        assert_eq!(s.progress, Some(17));
        let d = s.detail.as_ref().unwrap();
        assert_eq!(
            d.hosts,
            vec![
                HostProgress {
                    host: "127.0.0.1".into(),
                    progress: 2
                },
                HostProgress {
                    host: "192.0.2.100".into(),
                    progress: 32
                },
                HostProgress {
                    host: "192.0.2.101".into(),
                    progress: -1
                },
            ]
        );
        assert_eq!(d.count_total, Some(-1));
        assert!(s.results.is_empty());
    }

    #[test]
    fn parses_every_status_name() {
        for (name, want) in [
            ("queued", ScanStatus::Queued),
            ("init", ScanStatus::Init),
            ("running", ScanStatus::Running),
            ("stopped", ScanStatus::Stopped),
            ("finished", ScanStatus::Finished),
            ("interrupted", ScanStatus::Interrupted),
            ("paused", ScanStatus::Other("paused".into())),
        ] {
            let xml = format!(
                r#"<get_scans_response status="200" status_text="OK"><scan id="a" target="t" progress="0" status="{name}" start_time="0" end_time="0"/></get_scans_response>"#
            );
            let s = &parse_get_scans(xml.as_bytes()).unwrap()[0];
            assert_eq!(s.status, want);
            assert_eq!(s.status.to_string(), name);
            assert_eq!(s.start_time, None);
        }
    }

    #[test]
    fn bad_severity_and_qod_become_none_not_errors() {
        let xml = r#"<get_scans_response status="200" status_text="OK"><scan id="a" status="running"><results><result type="Alarm" severity="NaN" qod="250" host="h">x</result><result type="Alarm" severity="" host="h">y</result></results></scan></get_scans_response>"#;
        let s = &parse_get_scans(xml.as_bytes()).unwrap()[0];
        assert_eq!(s.results[0].severity, None);
        assert_eq!(s.results[0].qod, None);
        assert_eq!(s.results[1].severity, None);
    }

    #[test]
    fn scan_without_id_or_with_bad_times_is_an_error() {
        let no_id = r#"<get_scans_response status="200" status_text="OK"><scan status="running"/></get_scans_response>"#;
        assert!(parse_get_scans(no_id.as_bytes()).is_err());
        let bad_time = r#"<get_scans_response status="200" status_text="OK"><scan id="a" status="running" start_time="yesterday"/></get_scans_response>"#;
        assert!(parse_get_scans(bad_time.as_bytes()).is_err());
    }

    #[test]
    fn unknown_scan_is_not_found() {
        let xml = r#"<get_scans_response status="404" status_text="Failed to find scan 'f14747d3-a4d7-4e79-99bb-a0a1276cb78c'"/>"#;
        let e = parse_get_scans(xml.as_bytes()).unwrap_err();
        assert!(e.is_not_found(), "{e:?}");
    }

    #[test]
    fn start_scan_returns_the_id() {
        let xml = r#"<start_scan_response status="200" status_text="OK"><id>2f616d53-595f-4785-9b97-4395116ca118</id></start_scan_response>"#;
        assert_eq!(
            parse_start_scan(xml.as_bytes()).unwrap(),
            "2f616d53-595f-4785-9b97-4395116ca118"
        );
        let none = r#"<start_scan_response status="200" status_text="OK"/>"#;
        assert!(parse_start_scan(none.as_bytes()).is_err());
        let refused = r#"<start_scan_response status="400" status_text="Maximum number of queued scans set to 5 reached."/>"#;
        assert!(parse_start_scan(refused.as_bytes())
            .unwrap_err()
            .is_bad_request());
    }
}
