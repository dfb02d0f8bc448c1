//! OSP commands and their XML form.

use std::io::BufRead;

use crate::error::OspError;
use crate::response::{self, Response};
use crate::scan::{check_scan_id, check_vt_id, StartScan};
use crate::xml::write::XmlWriter;

/// Options of a `get_vts` command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GetVts {
    /// Only this VT.
    pub vt_id: Option<String>,
    /// ospd filter, e.g. `modification_time>1700000000`.
    pub filter: Option<String>,
    /// `Some(false)` asks for the light form without descriptions.
    pub details: Option<bool>,
    /// Only the feed information, no VTs.
    pub version_only: bool,
    /// Count the VTs instead of decoding them (client-side only).
    pub count_only: bool,
}

impl GetVts {
    /// Feed information only: version, name, vendor, hash and total.
    pub fn version_only() -> Self {
        GetVts {
            version_only: true,
            ..GetVts::default()
        }
    }

    /// One VT by OID.
    pub fn single(oid: impl Into<String>) -> Self {
        GetVts {
            vt_id: Some(oid.into()),
            ..GetVts::default()
        }
    }

    /// VTs matching an ospd filter.
    pub fn filtered(filter: impl Into<String>) -> Self {
        GetVts {
            filter: Some(filter.into()),
            ..GetVts::default()
        }
    }

    /// Every VT, light form, only counted: the cheap "is the feed loaded
    /// and how big is it" check.
    pub fn count_all() -> Self {
        GetVts {
            details: Some(false),
            count_only: true,
            ..GetVts::default()
        }
    }
}

/// Options of a `get_scans` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetScans {
    /// The scan (ospd-openvas requires one).
    pub scan_id: String,
    /// Include results.
    pub details: bool,
    /// Include per-host progress.
    pub progress: bool,
    /// Remove the returned results from ospd's buffer, so the next call
    /// returns only new ones.
    pub pop_results: bool,
    /// At most this many results (with `pop_results`).
    pub max_results: Option<u32>,
}

impl GetScans {
    /// Status and progress only, no results.
    pub fn status(scan_id: impl Into<String>) -> Self {
        GetScans {
            scan_id: scan_id.into(),
            details: false,
            progress: true,
            pop_results: false,
            max_results: None,
        }
    }

    /// Take up to `max` new results (popping them) plus progress: the
    /// polling call of a running scan.
    pub fn pop(scan_id: impl Into<String>, max: Option<u32>) -> Self {
        GetScans {
            scan_id: scan_id.into(),
            details: true,
            progress: true,
            pop_results: true,
            max_results: max,
        }
    }
}

/// One OSP command. `Debug` never shows credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `get_version`
    GetVersion,
    /// `get_vts`
    GetVts(GetVts),
    /// `check_feed`
    CheckFeed,
    /// `start_scan`
    StartScan(Box<StartScan>),
    /// `get_scans`
    GetScans(GetScans),
    /// `stop_scan`
    StopScan {
        /// The scan to stop.
        scan_id: String,
    },
    /// `delete_scan`
    DeleteScan {
        /// The scan to forget.
        scan_id: String,
    },
}

impl From<StartScan> for Request {
    fn from(s: StartScan) -> Self {
        Request::StartScan(Box::new(s))
    }
}

impl From<GetVts> for Request {
    fn from(g: GetVts) -> Self {
        Request::GetVts(g)
    }
}

impl From<GetScans> for Request {
    fn from(g: GetScans) -> Self {
        Request::GetScans(g)
    }
}

impl Request {
    /// The OSP command name, for logs.
    pub fn command(&self) -> &'static str {
        match self {
            Request::GetVersion => "get_version",
            Request::GetVts(_) => "get_vts",
            Request::CheckFeed => "check_feed",
            Request::StartScan(_) => "start_scan",
            Request::GetScans(_) => "get_scans",
            Request::StopScan { .. } => "stop_scan",
            Request::DeleteScan { .. } => "delete_scan",
        }
    }

    /// The command as XML bytes, every value escaped. The bytes of a
    /// `start_scan` may hold credentials: do not log them.
    pub fn to_xml(&self) -> Result<Vec<u8>, OspError> {
        let mut w = XmlWriter::new();
        let flag = |b: bool| Some(if b { "1" } else { "0" });
        match self {
            Request::GetVersion | Request::CheckFeed => {
                w.empty(self.command(), &[]);
            }
            Request::GetVts(g) => {
                if let Some(id) = &g.vt_id {
                    check_vt_id(id)?;
                }
                w.empty(
                    "get_vts",
                    &[
                        ("vt_id", g.vt_id.as_deref()),
                        ("filter", g.filter.as_deref()),
                        ("details", g.details.and_then(flag)),
                        ("version_only", g.version_only.then_some("1")),
                    ],
                );
            }
            Request::StartScan(s) => s.write(&mut w)?,
            Request::GetScans(g) => {
                check_scan_id(&g.scan_id)?;
                let max = g.max_results.map(|m| m.to_string());
                w.empty(
                    "get_scans",
                    &[
                        ("scan_id", Some(&g.scan_id)),
                        ("details", flag(g.details)),
                        ("progress", flag(g.progress)),
                        ("pop_results", flag(g.pop_results)),
                        ("max_results", max.as_deref()),
                    ],
                );
            }
            Request::StopScan { scan_id } | Request::DeleteScan { scan_id } => {
                check_scan_id(scan_id)?;
                w.empty(self.command(), &[("scan_id", Some(scan_id))]);
            }
        }
        w.finish()
    }

    /// Parses the daemon's answer to this command.
    pub fn parse_response(&self, input: impl BufRead) -> Result<Response, OspError> {
        Ok(match self {
            Request::GetVersion => Response::Version(response::parse_get_version(input)?),
            Request::GetVts(g) if g.count_only => {
                Response::VtsCount(response::count_get_vts(input)?)
            }
            Request::GetVts(_) => Response::Vts(response::parse_get_vts(input)?),
            Request::CheckFeed => Response::Feed(response::parse_check_feed(input)?),
            Request::StartScan(_) => Response::ScanStarted {
                scan_id: response::parse_start_scan(input)?,
            },
            Request::GetScans(_) => Response::Scans(response::parse_get_scans(input)?),
            Request::StopScan { .. } => {
                response::parse_status_only("stop_scan", input)?;
                Response::Stopped
            }
            Request::DeleteScan { .. } => {
                response::parse_status_only("delete_scan", input)?;
                Response::Deleted
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::{AliveTestMethods, Credential, Target, VtSelection};
    use crate::xml::read::{Element, Ev, Pump};

    /// Parses built XML back with the crate's own strict reader.
    fn reparse(bytes: &[u8]) -> Element {
        let mut p = Pump::new(bytes);
        let Ev::Start(t) = p.next().unwrap() else {
            panic!("no root")
        };
        let e = p.read_element(t).unwrap();
        p.expect_eof().unwrap();
        e
    }

    fn xml(r: &Request) -> String {
        String::from_utf8(r.to_xml().unwrap()).unwrap()
    }

    #[test]
    fn simple_commands() {
        assert_eq!(xml(&Request::GetVersion), "<get_version/>");
        assert_eq!(xml(&Request::CheckFeed), "<check_feed/>");
        assert_eq!(
            xml(&Request::StopScan {
                scan_id: "6ec1732c-10e8-448c-90fb-7797ad47ada2".into()
            }),
            "<stop_scan scan_id=\"6ec1732c-10e8-448c-90fb-7797ad47ada2\"/>"
        );
        assert_eq!(
            xml(&Request::DeleteScan {
                scan_id: "6ec1732c-10e8-448c-90fb-7797ad47ada2".into()
            }),
            "<delete_scan scan_id=\"6ec1732c-10e8-448c-90fb-7797ad47ada2\"/>"
        );
    }

    #[test]
    fn get_vts_variants() {
        assert_eq!(xml(&GetVts::default().into()), "<get_vts/>");
        assert_eq!(
            xml(&GetVts::version_only().into()),
            "<get_vts version_only=\"1\"/>"
        );
        assert_eq!(
            xml(&GetVts::single("1.3.6.1.4.1.25623.1.0.10330").into()),
            "<get_vts vt_id=\"1.3.6.1.4.1.25623.1.0.10330\"/>"
        );
        assert_eq!(xml(&GetVts::count_all().into()), "<get_vts details=\"0\"/>");
        let f = reparse(
            &Request::from(GetVts::filtered(
                "modification_time>1700000000;family=General",
            ))
            .to_xml()
            .unwrap(),
        );
        assert_eq!(
            f.attr("filter"),
            Some("modification_time>1700000000;family=General")
        );
        assert!(Request::from(GetVts::single("1.2.3\"/><x"))
            .to_xml()
            .is_err());
    }

    #[test]
    fn get_scans_attributes() {
        let r: Request = GetScans::pop("f14747d3-a4d7-4e79-99bb-a0a1276cb78c", Some(500)).into();
        let e = reparse(&r.to_xml().unwrap());
        assert_eq!(e.name(), "get_scans");
        assert_eq!(
            e.attr("scan_id"),
            Some("f14747d3-a4d7-4e79-99bb-a0a1276cb78c")
        );
        assert_eq!(e.attr("details"), Some("1"));
        assert_eq!(e.attr("progress"), Some("1"));
        assert_eq!(e.attr("pop_results"), Some("1"));
        assert_eq!(e.attr("max_results"), Some("500"));
        let s = reparse(&Request::from(GetScans::status("abc-1")).to_xml().unwrap());
        assert_eq!(s.attr("details"), Some("0"));
        assert_eq!(s.attr("max_results"), None);
    }

    #[test]
    fn scan_ids_are_checked() {
        for bad in ["", "not a uuid", "abc\"def", &"a".repeat(41)] {
            assert!(
                matches!(
                    Request::StopScan {
                        scan_id: bad.to_string()
                    }
                    .to_xml(),
                    Err(OspError::InvalidRequest(_))
                ),
                "{bad:?}"
            );
        }
        let s = StartScan::new(Target::new(["192.0.2.1"], "T:22")).with_scan_id("x y");
        assert!(Request::from(s).to_xml().is_err());
    }

    fn full_scan() -> StartScan {
        let mut t = Target::new(
            ["192.0.2.0/24", "10.0.0.1-10.0.0.5", "host<&>\"'.example"],
            "T:1-1024,U:161",
        );
        t.exclude_hosts = vec!["192.0.2.1".into()];
        t.finished_hosts = vec!["192.0.2.2".into()];
        t.credentials = vec![
            Credential::ssh_password("root", "pa<ss>&\"word'").with_port(2222).with_privilege("admin", "su&do"),
            Credential::ssh_key("deploy", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn<&>\n-----END OPENSSH PRIVATE KEY-----\n", "kp"),
            Credential::smb("DOMAIN\\user", "smbpass"),
            Credential::esxi("esx", "esxpass"),
            Credential::snmp_v3("snmpuser", "authpw", "sha1", Some(("privpw".into(), "aes".into()))),
        ];
        t.alive_test = Some(AliveTestMethods {
            icmp: true,
            tcp_syn: true,
            arp: true,
            ..AliveTestMethods::default()
        });
        t.alive_test_ports = Some("80,443".into());
        t.reverse_lookup_only = Some(false);
        StartScan::new(t)
            .with_scan_id("2f616d53-595f-4785-9b97-4395116ca118")
            .with_param("max_checks", "4")
            .with_param("max_hosts", "2")
            .with_vts(
                VtSelection::default()
                    .vt_with(
                        "1.3.6.1.4.1.25623.1.0.10662",
                        [("1", "200"), ("XYZ JKL", "a<b&c\"d")],
                    )
                    .vt("1.3.6.1.4.1.25623.1.0.10330")
                    .family("Debian Local Security Checks")
                    .family("General"),
            )
    }

    #[test]
    fn start_scan_round_trips_with_hostile_values_intact() {
        let e = reparse(&Request::from(full_scan()).to_xml().unwrap());
        assert_eq!(e.name(), "start_scan");
        assert_eq!(
            e.attr("scan_id"),
            Some("2f616d53-595f-4785-9b97-4395116ca118")
        );

        let params = e.child("scanner_params").unwrap();
        assert_eq!(params.child_text("max_checks"), Some("4"));
        assert_eq!(params.child_text("max_hosts"), Some("2"));

        let sel = e.child("vt_selection").unwrap();
        let singles: Vec<&Element> = sel.children_named("vt_single").collect();
        assert_eq!(singles.len(), 2);
        assert_eq!(singles[0].attr("id"), Some("1.3.6.1.4.1.25623.1.0.10662"));
        let values: Vec<(Option<&str>, &str)> = singles[0]
            .children_named("vt_value")
            .map(|v| (v.attr("id"), v.trimmed_text()))
            .collect();
        assert_eq!(
            values,
            vec![(Some("1"), "200"), (Some("XYZ JKL"), "a<b&c\"d")]
        );
        let groups: Vec<Option<&str>> = sel
            .children_named("vt_group")
            .map(|g| g.attr("filter"))
            .collect();
        assert_eq!(
            groups,
            vec![
                Some("family=Debian Local Security Checks"),
                Some("family=General")
            ]
        );

        let target = e.child("targets").unwrap().child("target").unwrap();
        assert_eq!(
            target.child_text("hosts"),
            Some("192.0.2.0/24,10.0.0.1-10.0.0.5,host<&>\"'.example")
        );
        assert_eq!(target.child_text("ports"), Some("T:1-1024,U:161"));
        assert_eq!(target.child_text("exclude_hosts"), Some("192.0.2.1"));
        assert_eq!(target.child_text("finished_hosts"), Some("192.0.2.2"));
        assert_eq!(target.child_text("alive_test_ports"), Some("80,443"));
        assert_eq!(target.child_text("reverse_lookup_only"), Some("0"));
        assert_eq!(target.child("reverse_lookup_unify"), None);
        let alive = target.child("alive_test_methods").unwrap();
        assert_eq!(alive.child_text("icmp"), Some("1"));
        assert_eq!(alive.child_text("tcp_syn"), Some("1"));
        assert_eq!(alive.child_text("tcp_ack"), Some("0"));
        assert_eq!(alive.child_text("arp"), Some("1"));
        assert_eq!(alive.child_text("consider_alive"), Some("0"));

        let creds: Vec<&Element> = target
            .child("credentials")
            .unwrap()
            .children_named("credential")
            .collect();
        assert_eq!(creds.len(), 5);
        let ssh = creds[0];
        assert_eq!(ssh.attr("type"), Some("up"));
        assert_eq!(ssh.attr("service"), Some("ssh"));
        assert_eq!(ssh.attr("port"), Some("2222"));
        assert_eq!(ssh.child_text("username"), Some("root"));
        assert_eq!(ssh.child_text("password"), Some("pa<ss>&\"word'"));
        assert_eq!(ssh.child_text("priv_username"), Some("admin"));
        assert_eq!(ssh.child_text("priv_password"), Some("su&do"));
        let key = creds[1];
        assert_eq!(key.attr("type"), Some("usk"));
        assert_eq!(key.attr("port"), None);
        assert_eq!(key.child_text("password"), Some("kp"));
        assert!(key.child_text("private").unwrap().contains("b3Blbn<&>\n"));
        assert_eq!(creds[2].attr("service"), Some("smb"));
        assert_eq!(creds[2].child_text("username"), Some("DOMAIN\\user"));
        assert_eq!(creds[3].attr("service"), Some("esxi"));
        let snmp = creds[4];
        assert_eq!(snmp.attr("type"), Some("snmp"));
        assert_eq!(snmp.child_text("auth_algorithm"), Some("sha1"));
        assert_eq!(snmp.child_text("privacy_password"), Some("privpw"));
        assert_eq!(snmp.child_text("privacy_algorithm"), Some("aes"));
    }

    #[test]
    fn injection_through_values_stays_inside_them() {
        // A host list that tries to close the element and add a target.
        let evil = "x</hosts><ports>1</ports></target><target><hosts>203.0.113.1";
        let mut t = Target::new([evil], "T:22");
        t.credentials
            .push(Credential::ssh_password("u", "</password><x>"));
        let e = reparse(&Request::from(StartScan::new(t)).to_xml().unwrap());
        let targets = e.child("targets").unwrap();
        assert_eq!(targets.children_named("target").count(), 1);
        let target = targets.child("target").unwrap();
        assert_eq!(target.child_text("hosts"), Some(evil));
        let cred = target
            .child("credentials")
            .unwrap()
            .child("credential")
            .unwrap();
        assert_eq!(cred.child_text("password"), Some("</password><x>"));
        assert_eq!(cred.children.len(), 2);
    }

    #[test]
    fn debug_output_never_shows_credentials() {
        let r = Request::from(full_scan());
        let shown = format!("{r:?} {r:#?}");
        for secret in [
            "pa<ss>&",
            "su&do",
            "BEGIN OPENSSH",
            "smbpass",
            "esxpass",
            "authpw",
            "privpw",
            "kp\"",
        ] {
            assert!(!shown.contains(secret), "{secret} leaked in {shown}");
        }
        assert!(shown.contains("root"), "non-secret fields stay visible");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn invalid_start_scans_are_refused() {
        let no_target = StartScan::default();
        assert!(Request::from(no_target).to_xml().is_err());
        let no_hosts = StartScan::new(Target::new(Vec::<String>::new(), "T:22"));
        assert!(Request::from(no_hosts).to_xml().is_err());
        let no_ports = StartScan::new(Target::new(["192.0.2.1"], " "));
        assert!(Request::from(no_ports).to_xml().is_err());
        let comma = StartScan::new(Target::new(["192.0.2.1,192.0.2.2"], "T:22"));
        assert!(Request::from(comma).to_xml().is_err());
        let bad_param = StartScan::new(Target::new(["192.0.2.1"], "T:22")).with_param("a b", "1");
        assert!(Request::from(bad_param).to_xml().is_err());
        let bad_family = StartScan::new(Target::new(["192.0.2.1"], "T:22"))
            .with_vts(VtSelection::default().family("General;family=Other"));
        assert!(Request::from(bad_family).to_xml().is_err());
        let nul = StartScan::new(Target::new(["192.0.2.1"], "T:22\u{0}"));
        assert!(Request::from(nul).to_xml().is_err());

        let mut key_on_smb = Credential::ssh_key("u", "k", "");
        key_on_smb.service = crate::scan::CredentialService::Smb;
        let mut t = Target::new(["192.0.2.1"], "T:22");
        t.credentials.push(key_on_smb);
        assert!(Request::from(StartScan::new(t)).to_xml().is_err());

        let mut t = Target::new(["192.0.2.1"], "T:22");
        t.credentials
            .push(Credential::smb("u", "p").with_privilege("a", "b"));
        assert!(Request::from(StartScan::new(t)).to_xml().is_err());

        let mut t = Target::new(["192.0.2.1"], "T:22");
        t.credentials.push(Credential::ssh_password("", "p"));
        assert!(Request::from(StartScan::new(t)).to_xml().is_err());
    }

    #[test]
    fn minimal_start_scan_has_empty_scanner_params_and_no_vt_selection() {
        let r = Request::from(StartScan::new(Target::new(["192.0.2.1"], "T:22")));
        let e = reparse(&r.to_xml().unwrap());
        assert!(e.child("scanner_params").unwrap().children.is_empty());
        assert!(e.child("vt_selection").is_none());
        assert_eq!(e.attr("scan_id"), None);
        let t = e.child("targets").unwrap().child("target").unwrap();
        assert!(t.child("credentials").is_none());
        assert!(t.child("alive_test_methods").is_none());
    }

    #[test]
    fn snmp_community_credential() {
        let mut t = Target::new(["192.0.2.1"], "U:161");
        t.credentials.push(Credential::snmp_community("public"));
        let e = reparse(&Request::from(StartScan::new(t)).to_xml().unwrap());
        let c = e
            .child("targets")
            .and_then(|t| t.child("target"))
            .and_then(|t| t.child("credentials"))
            .and_then(|c| c.child("credential"))
            .unwrap();
        assert_eq!(c.attr("type"), Some("snmp"));
        assert_eq!(c.child_text("community"), Some("public"));
        assert_eq!(c.child_text("username"), Some(""));
    }
}
