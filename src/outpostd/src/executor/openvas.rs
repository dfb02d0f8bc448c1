//! The OpenVAS executor: runs a job as one OSP scan on the local ospd-openvas.
//!
//! Every target is checked against the sensor's scope before anything is sent. The scan
//! gets an id chosen here, so it can be stopped even when the `start_scan` answer is
//! lost. Polling pops new results (`get_scans pop_results="1"`) and keeps them in
//! memory; the report is those results in `get_scans_response` form, with OSP's own
//! result fields, plus a summary. Credentials go to ospd-openvas in the `start_scan`
//! command only: never to disk, never into a log line or an error text.

use std::time::{Duration, Instant};

use outpost_osp::{
    summarize, AliveTestMethods, Credential as OspCredential, GetScans, OspClient, OspError,
    Request, Response, ResultType, ScanResult, ScanStatus, Secret as OspSecret, StartScan, Target,
    VtSelection,
};
use outpost_wire::sensor::{
    AliveTest, Credential, Job, ReportOutcome, ReportSummary, ScanSpec, SeverityCounts,
};

use super::{xml_escape as esc, ExecError, JobExecutor, JobReport, Progress, RunningJob};
use crate::scope::Scope;

/// How long ospd-openvas may be unreachable during a scan before the job fails. The
/// supervisor restarts a dead ospd-openvas within this time, but a restarted daemon has
/// forgotten the scan, so a longer wait would not save it.
pub const DEFAULT_GONE_GRACE: Duration = Duration::from_secs(120);

pub struct OpenvasExecutor {
    osp: OspClient,
    scope: Scope,
    gone_grace: Duration,
}

impl OpenvasExecutor {
    pub fn new(osp: OspClient, scope: Scope, gone_grace: Duration) -> OpenvasExecutor {
        OpenvasExecutor {
            osp,
            scope,
            gone_grace,
        }
    }
}

impl JobExecutor for OpenvasExecutor {
    fn name(&self) -> &'static str {
        "openvas"
    }

    fn start(&self, job: &Job) -> Result<Box<dyn RunningJob>, ExecError> {
        let spec = super::scan_spec(job)?;
        // Nothing is sent unless every target is in scope.
        self.scope
            .check(&spec.targets)
            .map_err(|e| ExecError(e.to_string()))?;
        let scan_id = new_scan_id()?;
        let command = start_scan(spec, &scan_id)?;
        let started_unix = outpost_wire::unix_now();
        match self.osp.send(&command.into()) {
            Ok(Response::ScanStarted { scan_id: got }) if got == scan_id => {}
            Ok(Response::ScanStarted { scan_id: got }) => {
                // ospd always echoes the id it was given; anything else is not a scan of ours.
                return Err(ExecError(format!(
                    "ospd-openvas started scan {got} instead of {scan_id}"
                )));
            }
            Ok(other) => {
                return Err(ExecError(format!(
                    "unexpected answer to start_scan: {other:?}"
                )))
            }
            Err(e) => {
                // The answer may be lost while the scan runs: stop it to be sure.
                if !matches!(e, OspError::Connect { .. } | OspError::Status { .. }) {
                    let _ = self.osp.send(&Request::StopScan {
                        scan_id: scan_id.clone(),
                    });
                }
                return Err(ExecError(format!("ospd-openvas refused the scan: {e}")));
            }
        }
        tracing::info!(job = job.id, scan = %scan_id, "OSP scan started");
        Ok(Box::new(OpenvasRun {
            osp: self.osp.clone(),
            scan_id,
            target: spec.targets.join(","),
            started_unix,
            results: Vec::new(),
            status: ScanStatus::Queued,
            percent: 0,
            unreachable_since: None,
            gone_grace: self.gone_grace,
            stopped: false,
        }))
    }
}

/// A random UUID (v4) for the scan.
fn new_scan_id() -> Result<String, ExecError> {
    use rand_core::RngCore as _;
    let mut b = [0u8; 16];
    rand_core::OsRng
        .try_fill_bytes(&mut b)
        .map_err(|e| ExecError(format!("no randomness for a scan id: {e}")))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// The `start_scan` command for a job.
fn start_scan(spec: &ScanSpec, scan_id: &str) -> Result<StartScan, ExecError> {
    let mut target = Target::new(spec.targets.iter().map(|t| t.trim()), spec.ports.trim());
    target.exclude_hosts = spec.exclude_hosts.clone();
    target.alive_test = Some(alive_test(spec.alive_test));
    target.credentials = spec
        .credentials
        .iter()
        .map(credential)
        .collect::<Result<_, _>>()?;
    Ok(StartScan::new(target)
        .with_scan_id(scan_id)
        .with_vts(vt_selection(spec)?))
}

/// Families become `vt_group` filters and OIDs `vt_single`s. A job that names neither
/// is refused: running the whole feed is hours of traffic on a branch network and
/// should be asked for explicitly (list the families), not happen by omission.
fn vt_selection(spec: &ScanSpec) -> Result<VtSelection, ExecError> {
    let mut vts = VtSelection::default();
    for f in &spec.families {
        if f.trim().is_empty() {
            return Err(ExecError("the job names an empty VT family".into()));
        }
        vts = vts.family(f.trim());
    }
    for oid in &spec.oids {
        vts = vts.vt(oid.trim());
    }
    if vts.is_empty() {
        return Err(ExecError(
            "the job selects no VTs: name at least one VT family or OID".into(),
        ));
    }
    Ok(vts)
}

fn alive_test(a: AliveTest) -> AliveTestMethods {
    let mut m = AliveTestMethods::default();
    match a {
        AliveTest::IcmpAndTcpAck => {
            m.icmp = true;
            m.tcp_ack = true;
        }
        AliveTest::Icmp => m.icmp = true,
        AliveTest::TcpSyn => m.tcp_syn = true,
        AliveTest::TcpAck => m.tcp_ack = true,
        AliveTest::Arp => m.arp = true,
        AliveTest::ConsiderAlive => m.consider_alive = true,
    }
    m
}

/// Maps a job credential to OSP. Errors name the service and user, never a secret.
fn credential(c: &Credential) -> Result<OspCredential, ExecError> {
    let secret = |s: &Option<outpost_wire::Secret>| {
        s.as_ref()
            .map(|s| OspSecret::new(s.expose()))
            .unwrap_or_else(|| OspSecret::new(""))
    };
    let bad = |why: &str| {
        ExecError(format!(
            "credential for {} user {:?}: {why}",
            c.service, c.username
        ))
    };
    let mut out = match c.service.as_str() {
        "ssh" => match &c.private_key {
            Some(k) => OspCredential::ssh_key(
                c.username.clone(),
                OspSecret::new(k.expose()),
                secret(&c.password),
            ),
            None if c.password.is_some() => {
                OspCredential::ssh_password(c.username.clone(), secret(&c.password))
            }
            None => return Err(bad("needs a password or a private key")),
        },
        "smb" | "esxi" => {
            if c.password.is_none() {
                return Err(bad("needs a password"));
            }
            if c.service == "smb" {
                OspCredential::smb(c.username.clone(), secret(&c.password))
            } else {
                OspCredential::esxi(c.username.clone(), secret(&c.password))
            }
        }
        // The job format carries no SNMPv3 algorithms, so only v1/v2c communities
        // (the password field, with an empty user name) are supported.
        "snmp" if c.username.is_empty() && c.password.is_some() => {
            OspCredential::snmp_community(secret(&c.password))
        }
        "snmp" => return Err(bad(
            "only SNMP v1/v2c communities are supported (empty username, community as password)",
        )),
        other => return Err(bad(&format!("unknown service {other:?}"))),
    };
    if let Some(p) = c.port {
        out = out.with_port(p);
    }
    Ok(out)
}

struct OpenvasRun {
    osp: OspClient,
    scan_id: String,
    target: String,
    started_unix: i64,
    results: Vec<ScanResult>,
    status: ScanStatus,
    percent: u8,
    /// When ospd-openvas first failed to answer, in the current outage.
    unreachable_since: Option<Instant>,
    gone_grace: Duration,
    stopped: bool,
}

impl OpenvasRun {
    /// One `get_scans` round: pops new results and updates status and progress.
    fn fetch(&mut self) -> Result<(), OspError> {
        let answer = self
            .osp
            .send(&GetScans::pop(self.scan_id.clone(), None).into())?;
        let Response::Scans(scans) = answer else {
            return Err(OspError::Unexpected(format!(
                "get_scans answered with {answer:?}"
            )));
        };
        let scan = scans
            .into_iter()
            .find(|s| s.id == self.scan_id)
            .ok_or_else(|| OspError::Unexpected("get_scans did not list our scan".into()))?;
        let percent = scan
            .progress
            .or(scan.detail.as_ref().and_then(|d| d.overall))
            .unwrap_or(0);
        self.percent = percent.clamp(0, 100) as u8;
        self.status = scan.status;
        self.results
            .extend(scan.results.into_iter().map(normalise_type));
        Ok(())
    }
}

/// ospd names two result types `Log Message` and `Error Message`; count them as the
/// log and error results they are.
fn normalise_type(mut r: ScanResult) -> ScanResult {
    if let ResultType::Other(t) = &r.result_type {
        r.result_type = match t.as_str() {
            "Log Message" => ResultType::Log,
            "Error Message" => ResultType::Error,
            _ => return r,
        };
    }
    r
}

impl RunningJob for OpenvasRun {
    fn poll(&mut self) -> Result<Progress, ExecError> {
        match self.fetch() {
            Ok(()) => self.unreachable_since = None,
            // A restarted ospd-openvas no longer knows the scan: nothing to wait for.
            Err(e) if e.is_not_found() => {
                return Err(ExecError(format!(
                    "ospd-openvas died during the scan (it no longer knows scan {}: {e})",
                    self.scan_id
                )))
            }
            Err(e) => {
                let since = *self.unreachable_since.get_or_insert_with(Instant::now);
                let gone = since.elapsed();
                if gone >= self.gone_grace {
                    return Err(ExecError(format!(
                        "ospd-openvas died during the scan (no answer for {} s: {e})",
                        gone.as_secs()
                    )));
                }
                tracing::warn!(scan = %self.scan_id, error = %e, "ospd-openvas not answering");
                return Ok(Progress::Running {
                    percent: self.percent,
                    message: format!("ospd-openvas not answering: {e}"),
                });
            }
        }
        match &self.status {
            ScanStatus::Finished | ScanStatus::Stopped => Ok(Progress::Finished),
            ScanStatus::Interrupted => Err(ExecError(
                "ospd-openvas reports the scan interrupted (the scanner failed)".into(),
            )),
            status => Ok(Progress::Running {
                percent: self.percent,
                message: format!("openvas: {status}, {} result(s) so far", self.results.len()),
            }),
        }
    }

    fn cancel(&mut self) -> Result<(), ExecError> {
        if self.stopped || self.status.is_terminal() {
            return Ok(());
        }
        self.osp
            .send(&Request::StopScan {
                scan_id: self.scan_id.clone(),
            })
            .map_err(|e| ExecError(format!("stop_scan failed: {e}")))?;
        self.stopped = true;
        // Collect what the scan found before it stopped, for the partial report.
        if let Err(e) = self.fetch() {
            tracing::warn!(scan = %self.scan_id, error = %e, "results after stop not fetched");
        }
        Ok(())
    }

    fn report(self: Box<Self>) -> JobReport {
        let (outcome, partial) = match (&self.status, self.stopped) {
            (ScanStatus::Finished, false) => (ReportOutcome::Completed, false),
            (_, true) => (ReportOutcome::Cancelled, true),
            _ => (ReportOutcome::Failed, true),
        };
        let content = osp_xml(
            &self.scan_id,
            &self.target,
            self.started_unix,
            outpost_wire::unix_now(),
            self.percent,
            &self.status,
            &self.results,
        );
        let summary = wire_summary(&self.results);
        // Best effort: ospd keeps finished scans in memory until deleted.
        if let Err(e) = self.osp.send(&Request::DeleteScan {
            scan_id: self.scan_id.clone(),
        }) {
            tracing::debug!(scan = %self.scan_id, error = %e, "delete_scan failed");
        }
        JobReport {
            outcome,
            partial,
            content_type: "application/xml".into(),
            content,
            summary,
        }
    }
}

/// The portal's summary from `outpost_osp::summarize`; ports become `host:port/proto`.
fn wire_summary(results: &[ScanResult]) -> ReportSummary {
    let s = summarize(results);
    let n = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    ReportSummary {
        hosts: s.hosts.iter().map(|h| h.host.clone()).collect(),
        ports: s
            .hosts
            .iter()
            .flat_map(|h| h.ports.iter().map(move |p| format!("{}:{p}", h.host)))
            .collect(),
        findings: SeverityCounts {
            high: n(s.findings.high),
            medium: n(s.findings.medium),
            low: n(s.findings.low),
            log: n(s.findings.log),
        },
    }
}

fn type_name(t: &ResultType) -> &str {
    match t {
        ResultType::Alarm => "Alarm",
        ResultType::Log => "Log Message",
        ResultType::HostDetail => "Host Detail",
        ResultType::Error => "Error Message",
        ResultType::Other(s) => s,
    }
}

/// The accumulated results as one `get_scans_response`, in ospd's shape.
fn osp_xml(
    scan_id: &str,
    target: &str,
    start: i64,
    end: i64,
    progress: u8,
    status: &ScanStatus,
    results: &[ScanResult],
) -> String {
    let mut x = String::from(r#"<get_scans_response status="200" status_text="OK">"#);
    x.push_str(&format!(
        r#"<scan id="{}" target="{}" start_time="{start}" end_time="{end}" progress="{progress}" status="{}"><results>"#,
        esc(scan_id),
        esc(target),
        esc(&status.to_string()),
    ));
    for r in results {
        x.push_str(&format!(
            r#"<result name="{}" type="{}" severity="{}" host="{}" hostname="{}" test_id="{}" port="{}" qod="{}" uri="{}">{}</result>"#,
            esc(&r.name),
            esc(type_name(&r.result_type)),
            r.severity.map(|s| format!("{s:.1}")).unwrap_or_default(),
            esc(&r.host),
            esc(&r.hostname),
            esc(&r.test_id),
            esc(&r.port),
            r.qod.map(|q| q.to_string()).unwrap_or_default(),
            esc(&r.uri),
            esc(&r.description),
        ));
    }
    x.push_str("</results></scan></get_scans_response>");
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::fake_ospd::*;
    use outpost_wire::sensor::JobSpec;
    use std::os::unix::net::UnixListener;

    /// The fake with the executor under test on its socket.
    trait ExecutorFor {
        fn executor(&self, grace: Duration) -> OpenvasExecutor;
    }

    impl ExecutorFor for FakeOspd {
        fn executor(&self, grace: Duration) -> OpenvasExecutor {
            OpenvasExecutor::new(
                OspClient::new(&self.path),
                Scope::new(&["10.9.0.0/24".to_owned()]).unwrap(),
                grace,
            )
        }
    }

    fn job(targets: &[&str]) -> Job {
        Job {
            id: 7,
            lease_expires_at: 0,
            attempt: 0,
            spec: JobSpec::Scan(ScanSpec {
                targets: targets.iter().map(|t| t.to_string()).collect(),
                ports: "T:22,443".into(),
                exclude_hosts: vec!["10.9.0.9".into()],
                families: vec!["General".into()],
                oids: vec!["1.3.6.1.4.1.25623.1.0.10330".into()],
                alive_test: AliveTest::ConsiderAlive,
                credentials: vec![Credential {
                    service: "ssh".into(),
                    username: "scan".into(),
                    password: Some(outpost_wire::Secret::new("hunter2-pw")),
                    private_key: None,
                    port: Some(2222),
                }],
                deadline_s: 3600,
            }),
        }
    }

    #[test]
    fn a_scan_runs_to_a_complete_report() {
        let mut fake = FakeOspd::start(vec![STARTED, RUNNING_50, FINISHED, DELETED]);
        let ex = fake.executor(DEFAULT_GONE_GRACE);
        let mut run = ex.start(&job(&["10.9.0.2"])).unwrap();
        match run.poll().unwrap() {
            Progress::Running { percent, message } => {
                assert_eq!(percent, 50);
                assert!(message.contains("running"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(run.poll().unwrap(), Progress::Finished);
        let r = run.report();
        assert_eq!(r.outcome, ReportOutcome::Completed);
        assert!(!r.partial);
        assert_eq!(r.content_type, "application/xml");
        // Results from both polls, with the real OSP fields.
        assert!(r.content.starts_with("<get_scans_response"));
        assert_eq!(r.content.matches("<result ").count(), 3);
        assert!(r
            .content
            .contains(r#"test_id="1.3.6.1.4.1.25623.1.0.104870""#));
        assert!(r.content.contains(r#"name="OpenSSH &lt; 9.3p2 RCE""#));
        assert!(r.content.contains(r#"type="Log Message""#));
        assert!(r.content.contains(r#"status="finished""#));
        assert!(!r.content.contains("hunter2-pw"));
        assert_eq!(r.summary.hosts, ["10.9.0.2"]);
        assert_eq!(r.summary.ports, ["10.9.0.2:22/tcp", "10.9.0.2:443/tcp"]);
        assert_eq!(
            r.summary.findings,
            SeverityCounts {
                high: 1,
                medium: 1,
                low: 0,
                log: 1
            }
        );

        let cmds = fake.commands();
        assert_eq!(cmds.len(), 4);
        let start = &cmds[0];
        assert!(start.starts_with("<start_scan scan_id=\""), "{start}");
        assert!(start.contains("<hosts>10.9.0.2</hosts>"), "{start}");
        assert!(start.contains("<ports>T:22,443</ports>"), "{start}");
        assert!(start.contains("<exclude_hosts>10.9.0.9</exclude_hosts>"));
        assert!(start.contains(r#"<vt_group filter="family=General"/>"#));
        assert!(start.contains(r#"<vt_single id="1.3.6.1.4.1.25623.1.0.10330">"#));
        assert!(start.contains("<consider_alive>1</consider_alive>"));
        // The credential reaches ospd-openvas, and only ospd-openvas.
        assert!(start.contains(r#"<credential type="up" service="ssh" port="2222">"#));
        assert!(start.contains("<password>hunter2-pw</password>"));
        assert!(cmds[1].starts_with("<get_scans "));
        assert!(cmds[1].contains(r#"pop_results="1""#));
        assert!(cmds[3].starts_with("<delete_scan "));
    }

    #[test]
    fn cancel_sends_stop_scan_and_gives_a_partial_report() {
        let mut fake = FakeOspd::start(vec![STARTED, RUNNING_50, STOP_OK, STOPPED, DELETED]);
        let ex = fake.executor(DEFAULT_GONE_GRACE);
        let mut run = ex.start(&job(&["10.9.0.0/28"])).unwrap();
        assert!(matches!(run.poll().unwrap(), Progress::Running { .. }));
        run.cancel().unwrap();
        let r = run.report();
        assert_eq!(r.outcome, ReportOutcome::Cancelled);
        assert!(r.partial);
        assert!(r.content.contains(r#"status="stopped""#));
        assert_eq!(r.content.matches("<result ").count(), 1);
        let cmds = fake.commands();
        let id = &cmds[0][r#"<start_scan scan_id=""#.len()..][..36];
        assert_eq!(cmds[2], format!(r#"<stop_scan scan_id="{id}"/>"#));
        assert_eq!(cmds[4], format!(r#"<delete_scan scan_id="{id}"/>"#));
    }

    #[test]
    fn ospd_gone_mid_scan_fails_the_job_after_the_grace_period() {
        // After two answers the fake closes its socket: connects are refused.
        let mut fake = FakeOspd::start(vec![STARTED, RUNNING_50]);
        let ex = fake.executor(Duration::ZERO);
        let mut run = ex.start(&job(&["10.9.0.2"])).unwrap();
        assert!(matches!(run.poll().unwrap(), Progress::Running { .. }));
        fake.commands();
        let e = run.poll().unwrap_err();
        assert!(e.0.starts_with("ospd-openvas died during the scan"), "{e}");
        let r = run.report();
        assert_eq!(r.outcome, ReportOutcome::Failed);
        assert!(r.partial);
        assert_eq!(r.content.matches("<result ").count(), 1);
    }

    #[test]
    fn a_short_outage_within_the_grace_period_keeps_the_job() {
        let mut fake = FakeOspd::start(vec![STARTED]);
        let ex = fake.executor(Duration::from_secs(3600));
        let mut run = ex.start(&job(&["10.9.0.2"])).unwrap();
        fake.commands();
        match run.poll().unwrap() {
            Progress::Running { message, .. } => {
                assert!(message.contains("ospd-openvas not answering"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_scan_ospd_forgot_fails_at_once() {
        let mut fake = FakeOspd::start(vec![
            STARTED,
            r#"<get_scans_response status="404" status_text="Failed to find scan"/>"#,
        ]);
        let ex = fake.executor(Duration::from_secs(3600));
        let mut run = ex.start(&job(&["10.9.0.2"])).unwrap();
        let e = run.poll().unwrap_err();
        assert!(e.0.contains("ospd-openvas died during the scan"), "{e}");
        fake.commands();
    }

    #[test]
    fn out_of_scope_targets_send_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ospd.sock");
        let l = UnixListener::bind(&path).unwrap();
        l.set_nonblocking(true).unwrap();
        let ex = OpenvasExecutor::new(
            OspClient::new(&path),
            Scope::new(&["10.9.0.0/24".to_owned()]).unwrap(),
            DEFAULT_GONE_GRACE,
        );
        let e = ex.start(&job(&["10.9.0.2", "10.9.1.0/24"])).err().unwrap();
        assert_eq!(
            e.0,
            r#"target "10.9.1.0/24" is outside the allowed scope [10.9.0.0/24]"#
        );
        let e = ex.start(&job(&["fileserver"])).err().unwrap();
        assert!(e.0.contains("host names are not scanned"), "{e}");
        let empty = OpenvasExecutor::new(
            OspClient::new(&path),
            Scope::new(&[]).unwrap(),
            DEFAULT_GONE_GRACE,
        );
        assert!(empty
            .start(&job(&["10.9.0.2"]))
            .err()
            .unwrap()
            .0
            .contains("nothing may be scanned"));
        // Not one connection reached the socket.
        assert_eq!(
            l.accept().unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn a_job_without_vts_is_refused() {
        let mut j = job(&["10.9.0.2"]);
        let JobSpec::Scan(spec) = &mut j.spec else {
            panic!("a scan job")
        };
        spec.families.clear();
        spec.oids.clear();
        let e = start_scan(spec, "abc").unwrap_err();
        assert!(e.0.contains("selects no VTs"), "{e}");
    }

    #[test]
    fn credentials_map_per_service_and_errors_hide_secrets() {
        let cred = |service: &str, user: &str, pw: Option<&str>, key: Option<&str>| Credential {
            service: service.into(),
            username: user.into(),
            password: pw.map(outpost_wire::Secret::new),
            private_key: key.map(outpost_wire::Secret::new),
            port: None,
        };
        let key = credential(&cred("ssh", "root", Some("pass"), Some("KEYTEXT"))).unwrap();
        assert!(matches!(
            key.auth,
            outpost_osp::CredentialAuth::SshKey { ref private_key, .. } if private_key.expose() == "KEYTEXT"
        ));
        let smb = credential(&cred("smb", "adm", Some("pw"), None)).unwrap();
        assert_eq!(smb.service, outpost_osp::CredentialService::Smb);
        let snmp = credential(&cred("snmp", "", Some("public"), None)).unwrap();
        assert_eq!(snmp.service, outpost_osp::CredentialService::Snmp);
        for bad in [
            cred("ssh", "root", None, None),
            cred("smb", "adm", None, None),
            cred("snmp", "v3user", Some("s3cret-v3"), None),
            cred("telnet", "x", Some("s3cret-t"), None),
        ] {
            let e = credential(&bad).unwrap_err();
            assert!(e.0.starts_with("credential for "), "{e}");
            assert!(!e.0.contains("s3cret"), "{e}");
        }
    }

    #[test]
    fn alive_tests_map_to_osp_methods() {
        let m = alive_test(AliveTest::IcmpAndTcpAck);
        assert!(m.icmp && m.tcp_ack && !m.tcp_syn && !m.arp && !m.consider_alive);
        assert!(alive_test(AliveTest::Arp).arp);
        assert!(alive_test(AliveTest::TcpSyn).tcp_syn);
    }

    #[test]
    fn scan_ids_are_uuids() {
        let a = new_scan_id().unwrap();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert_ne!(a, new_scan_id().unwrap());
    }
}
