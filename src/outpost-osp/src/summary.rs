//! The report summary the daemon uploads next to the raw results:
//! hosts, ports and findings by severity class.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::Serialize;

use crate::response::{ResultType, ScanResult};

/// Severity class of a finding, by the usual CVSS bands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SeverityClass {
    /// Severity 0 (or none): information only.
    Log,
    /// 0 < severity < 4.0.
    Low,
    /// 4.0 <= severity < 7.0.
    Medium,
    /// severity >= 7.0.
    High,
}

impl SeverityClass {
    /// Class of a severity; no severity, 0 or the negative override
    /// values (false positive, error) count as log.
    pub fn of(severity: Option<f64>) -> SeverityClass {
        match severity {
            Some(s) if s >= 7.0 => SeverityClass::High,
            Some(s) if s >= 4.0 => SeverityClass::Medium,
            Some(s) if s > 0.0 => SeverityClass::Low,
            _ => SeverityClass::Log,
        }
    }
}

/// Findings counted per class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SeverityCounts {
    /// severity >= 7.0
    pub high: u64,
    /// 4.0 <= severity < 7.0
    pub medium: u64,
    /// 0 < severity < 4.0
    pub low: u64,
    /// severity 0
    pub log: u64,
}

impl SeverityCounts {
    fn add(&mut self, class: SeverityClass) {
        match class {
            SeverityClass::High => self.high += 1,
            SeverityClass::Medium => self.medium += 1,
            SeverityClass::Low => self.low += 1,
            SeverityClass::Log => self.log += 1,
        }
    }

    /// All findings.
    pub fn total(&self) -> u64 {
        self.high + self.medium + self.low + self.log
    }
}

/// What was found on one host.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HostSummary {
    /// Host address.
    pub host: String,
    /// Host name, when the scanner learned one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Ports with findings, e.g. `22/tcp`, sorted.
    pub ports: Vec<String>,
    /// Findings on this host by class.
    pub findings: SeverityCounts,
    /// Highest severity seen on this host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_severity: Option<f64>,
}

/// Summary of a scan's results.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReportSummary {
    /// Hosts seen in any result (findings or host details), sorted by
    /// address.
    pub hosts: Vec<HostSummary>,
    /// Distinct ports with findings across all hosts, sorted.
    pub ports: Vec<String>,
    /// Findings (Alarm and Log results) by class.
    pub findings: SeverityCounts,
    /// Number of findings.
    pub total_findings: u64,
    /// Scanner errors reported (Error results).
    pub errors: u64,
}

impl ReportSummary {
    /// The summary as a JSON value.
    pub fn to_json(&self) -> serde_json::Value {
        // Serialising plain structs of strings and numbers cannot fail;
        // fall back to null rather than panic all the same.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// Summarises scan results. Pure: feed it every result of a scan (for
/// example all popped batches together).
pub fn summarize<'a>(results: impl IntoIterator<Item = &'a ScanResult>) -> ReportSummary {
    #[derive(Default)]
    struct Acc {
        hostname: Option<String>,
        ports: BTreeSet<String>,
        findings: SeverityCounts,
        max: Option<f64>,
    }
    let mut hosts: BTreeMap<HostKey, Acc> = BTreeMap::new();
    let mut all_ports = BTreeSet::new();
    let mut findings = SeverityCounts::default();
    let mut errors = 0u64;

    for r in results {
        if matches!(r.result_type, ResultType::Error) {
            errors += 1;
        }
        if r.host.trim().is_empty() {
            continue;
        }
        let acc = hosts.entry(HostKey::new(r.host.trim())).or_default();
        if acc.hostname.is_none() && !r.hostname.trim().is_empty() {
            acc.hostname = Some(r.hostname.trim().to_owned());
        }
        if !matches!(r.result_type, ResultType::Alarm | ResultType::Log) {
            continue;
        }
        let class = SeverityClass::of(r.severity);
        acc.findings.add(class);
        findings.add(class);
        if let Some(s) = r.severity.filter(|s| *s > 0.0) {
            acc.max = Some(acc.max.map_or(s, |m: f64| m.max(s)));
        }
        if is_real_port(&r.port) {
            acc.ports.insert(r.port.trim().to_owned());
            all_ports.insert(r.port.trim().to_owned());
        }
    }

    ReportSummary {
        hosts: hosts
            .into_iter()
            .map(|(key, acc)| HostSummary {
                host: key.text,
                hostname: acc.hostname,
                ports: sort_ports(acc.ports),
                findings: acc.findings,
                max_severity: acc.max,
            })
            .collect(),
        ports: sort_ports(all_ports),
        total_findings: findings.total(),
        findings,
        errors,
    }
}

/// Sorts hosts by address when they parse as one, by text otherwise.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct HostKey {
    addr: Option<IpAddr>,
    text: String,
}

impl HostKey {
    fn new(host: &str) -> Self {
        HostKey {
            addr: host.parse().ok(),
            text: host.to_owned(),
        }
    }
}

/// `443/tcp` is a port; `general/tcp`, `general/icmp` and `package` are
/// the scanner's placeholders for "not port-bound".
fn is_real_port(port: &str) -> bool {
    match port.trim().split_once('/') {
        Some((num, proto)) => num.parse::<u16>().is_ok() && !proto.is_empty(),
        None => false,
    }
}

/// Numeric order (`22/tcp` before `443/tcp`), then protocol.
fn sort_ports(ports: BTreeSet<String>) -> Vec<String> {
    let mut v: Vec<String> = ports.into_iter().collect();
    v.sort_by_key(|p| {
        let (num, proto) = p.split_once('/').unwrap_or((p.as_str(), ""));
        (num.parse::<u16>().unwrap_or(u16::MAX), proto.to_owned())
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(t: ResultType, host: &str, port: &str, severity: Option<f64>) -> ScanResult {
        ScanResult {
            result_type: t,
            name: "n".into(),
            severity,
            host: host.into(),
            hostname: String::new(),
            port: port.into(),
            test_id: "1.3.6.1.4.1.25623.1.0.1".into(),
            qod: Some(80),
            uri: String::new(),
            description: String::new(),
        }
    }

    #[test]
    fn classes_follow_the_cvss_bands() {
        assert_eq!(SeverityClass::of(Some(10.0)), SeverityClass::High);
        assert_eq!(SeverityClass::of(Some(7.0)), SeverityClass::High);
        assert_eq!(SeverityClass::of(Some(6.9)), SeverityClass::Medium);
        assert_eq!(SeverityClass::of(Some(4.0)), SeverityClass::Medium);
        assert_eq!(SeverityClass::of(Some(3.9)), SeverityClass::Low);
        assert_eq!(SeverityClass::of(Some(0.1)), SeverityClass::Low);
        assert_eq!(SeverityClass::of(Some(0.0)), SeverityClass::Log);
        assert_eq!(SeverityClass::of(Some(-1.0)), SeverityClass::Log);
        assert_eq!(SeverityClass::of(None), SeverityClass::Log);
    }

    #[test]
    fn summarises_hosts_ports_and_classes() {
        let mut hd = result(ResultType::HostDetail, "192.0.2.2", "", Some(0.0));
        hd.hostname = "printer.branch.example".into();
        let results = vec![
            result(ResultType::Alarm, "192.0.2.10", "443/tcp", Some(5.0)),
            result(ResultType::Alarm, "192.0.2.10", "22/tcp", Some(9.8)),
            result(ResultType::Alarm, "192.0.2.10", "22/tcp", Some(2.6)),
            result(ResultType::Log, "192.0.2.10", "general/tcp", Some(0.0)),
            result(ResultType::Alarm, "192.0.2.9", "161/udp", Some(7.5)),
            hd,
            result(ResultType::Error, "192.0.2.9", "", Some(0.0)),
        ];
        let s = summarize(&results);
        assert_eq!(
            s.findings,
            SeverityCounts {
                high: 2,
                medium: 1,
                low: 1,
                log: 1
            }
        );
        assert_eq!(s.total_findings, 5);
        assert_eq!(s.errors, 1);
        assert_eq!(s.ports, vec!["22/tcp", "161/udp", "443/tcp"]);
        let hosts: Vec<&str> = s.hosts.iter().map(|h| h.host.as_str()).collect();
        assert_eq!(hosts, vec!["192.0.2.2", "192.0.2.9", "192.0.2.10"]);
        let h10 = &s.hosts[2];
        assert_eq!(h10.ports, vec!["22/tcp", "443/tcp"]);
        assert_eq!(h10.findings.total(), 4);
        assert_eq!(h10.max_severity, Some(9.8));
        let h2 = &s.hosts[0];
        assert_eq!(h2.hostname.as_deref(), Some("printer.branch.example"));
        assert_eq!(h2.findings.total(), 0);
    }

    #[test]
    fn json_has_the_fields_the_portal_reads() {
        let results = [result(ResultType::Alarm, "192.0.2.10", "80/tcp", Some(4.3))];
        let v = summarize(&results).to_json();
        assert_eq!(v["findings"]["medium"], 1);
        assert_eq!(v["findings"]["high"], 0);
        assert_eq!(v["total_findings"], 1);
        assert_eq!(v["ports"][0], "80/tcp");
        assert_eq!(v["hosts"][0]["host"], "192.0.2.10");
        assert_eq!(v["hosts"][0]["max_severity"], 4.3);
        assert!(v["hosts"][0].get("hostname").is_none());
    }

    #[test]
    fn empty_results_give_an_empty_summary() {
        let s = summarize(&[]);
        assert_eq!(s.total_findings, 0);
        assert!(s.hosts.is_empty() && s.ports.is_empty());
        assert_eq!(s.to_json()["findings"]["log"], 0);
    }
}
