//! The OpenVAS executor: runs a job as one OSP scan on the local ospd-openvas.
//!
//! Every target is checked against the sensor's scope before anything is sent (each
//! address of a range or CIDR; exclusions never widen it). The scan gets an id chosen
//! here, so it can be stopped even when the `start_scan` answer is lost. Its header goes
//! to the job's result log ([`ResultLog`]) before `start_scan`; polling pops new results
//! (`get_scans pop_results="1"`) and appends them to that log, synced, before counting
//! them as collected. The report is those results in `get_scans_response` form, with
//! OSP's own result fields, plus a summary of live and dead hosts and each host's ports
//! and findings. `delete_scan` is sent only in [`RunningJob::release`], after the
//! report is spooled. Credentials go to ospd-openvas in the `start_scan` command only:
//! never to disk, never into a log line or an error text.

use std::time::{Duration, Instant};

use std::net::Ipv4Addr;

use outpost_osp::{
    summarize, AliveTestMethods, Credential as OspCredential, GetScans, OspClient, OspError,
    Request, Response, ResultType, Scan, ScanResult, ScanStatus, Secret as OspSecret, StartScan,
    Target, VtSelection,
};
use outpost_wire::sensor::{
    AliveMethod, Credential, HostFindings, Job, ReportOutcome, ReportSummary, ScanSpec,
    SeverityCounts,
};

use super::{xml_escape as esc, ExecError, JobExecutor, JobReport, Progress, RunningJob};
use crate::results::{LogWriter, Recovered, ResultLog, ScanStart};
use crate::scope::{Scope, TargetSet};

/// How long ospd-openvas may be unreachable during a scan before the job fails. The
/// supervisor restarts a dead ospd-openvas within this time, but a restarted daemon has
/// forgotten the scan, so a longer wait would not save it.
pub const DEFAULT_GONE_GRACE: Duration = Duration::from_secs(120);

pub struct OpenvasExecutor {
    osp: OspClient,
    scope: Scope,
    gone_grace: Duration,
    /// Where popped results are kept durably; `None` keeps them in memory only.
    results: Option<ResultLog>,
}

impl OpenvasExecutor {
    pub fn new(osp: OspClient, scope: Scope, gone_grace: Duration) -> OpenvasExecutor {
        OpenvasExecutor {
            osp,
            scope,
            gone_grace,
            results: None,
        }
    }

    /// Keeps each job's results in `log` as they are popped (see the module docs).
    pub fn with_result_log(mut self, log: ResultLog) -> OpenvasExecutor {
        self.results = Some(log);
        self
    }
}

impl JobExecutor for OpenvasExecutor {
    fn name(&self) -> &'static str {
        "openvas"
    }

    fn start(&self, job: &Job) -> Result<Box<dyn RunningJob>, ExecError> {
        let spec = super::scan_spec(job)?;
        // Nothing is sent unless every address of every target is in scope.
        let target_set = self
            .scope
            .check_job(&spec.targets, &spec.exclude_hosts)
            .map_err(|e| ExecError(e.to_string()))?;
        let scan_id = new_scan_id()?;
        let command = start_scan(spec, &scan_id)?;
        let started_unix = outpost_wire::unix_now();
        // The header is on disk before the scan exists, so a crash from here on leaves
        // a trace the next run finds (and the scan id to stop).
        let log = match &self.results {
            Some(results) => Some(
                results
                    .begin(&ScanStart {
                        job: job.id,
                        scan_id: scan_id.clone(),
                        started_unix,
                        targets: spec.targets.clone(),
                        exclude_hosts: spec.exclude_hosts.clone(),
                    })
                    .map_err(|e| ExecError(format!("cannot keep scan results on disk: {e}")))?,
            ),
            None => None,
        };
        let forget_log = || {
            if let Some(results) = &self.results {
                if let Err(e) = results.remove(job.id) {
                    tracing::warn!(job = job.id, error = %e, "cannot remove the result log");
                }
            }
        };
        match self.osp.send(&command.into()) {
            Ok(Response::ScanStarted { scan_id: got }) if got == scan_id => {}
            Ok(Response::ScanStarted { scan_id: got }) => {
                forget_log();
                // ospd always echoes the id it was given; anything else is not a scan of ours.
                return Err(ExecError(format!(
                    "ospd-openvas started scan {got} instead of {scan_id}"
                )));
            }
            Ok(other) => {
                forget_log();
                return Err(ExecError(format!(
                    "unexpected answer to start_scan: {other:?}"
                )));
            }
            Err(e) => {
                // The answer may be lost while the scan runs: stop it to be sure.
                if !matches!(e, OspError::Connect { .. } | OspError::Status { .. }) {
                    let _ = self.osp.send(&Request::StopScan {
                        scan_id: scan_id.clone(),
                    });
                }
                forget_log();
                return Err(ExecError(format!("ospd-openvas refused the scan: {e}")));
            }
        }
        tracing::info!(job = job.id, scan = %scan_id, hosts = target_set.len(), "OSP scan started");
        Ok(Box::new(OpenvasRun {
            osp: self.osp.clone(),
            job: job.id,
            scan_id,
            target: spec.targets.join(","),
            target_set,
            started_unix,
            results: Vec::new(),
            status: ScanStatus::Queued,
            percent: 0,
            dead: None,
            hosts_line: String::new(),
            unreachable_since: None,
            gone_grace: self.gone_grace,
            stopped: false,
            log,
            log_dir: self.results.clone(),
            log_failed: false,
        }))
    }

    fn salvage(&self, scan_id: &str) -> Vec<ScanResult> {
        // Only a scan ospd-openvas still knows (it outlived the daemon) has anything left;
        // stop it first, so it does not run on beside the next job.
        match self.osp.send(&Request::StopScan {
            scan_id: scan_id.to_owned(),
        }) {
            Ok(_) => {}
            Err(e) if e.is_not_found() => return Vec::new(),
            // Already finished or stopped scans refuse a stop; their results still count.
            Err(OspError::Status { .. }) => {}
            Err(e) => {
                tracing::info!(scan = scan_id, error = %e, "no scan to salvage in ospd-openvas");
                return Vec::new();
            }
        }
        match self
            .osp
            .send(&GetScans::pop(scan_id.to_owned(), None).into())
        {
            Ok(Response::Scans(scans)) => scans
                .into_iter()
                .filter(|s| s.id == scan_id)
                .flat_map(|s| s.results)
                .map(normalise_type)
                .collect(),
            Ok(_) => Vec::new(),
            Err(e) => {
                tracing::info!(scan = scan_id, error = %e, "results left in ospd-openvas not fetched");
                Vec::new()
            }
        }
    }

    fn forget(&self, scan_id: &str) {
        delete_scan(&self.osp, scan_id);
    }
}

/// Best effort: ospd keeps every scan in memory until it is deleted.
fn delete_scan(osp: &OspClient, scan_id: &str) {
    if let Err(e) = osp.send(&Request::DeleteScan {
        scan_id: scan_id.to_owned(),
    }) {
        tracing::debug!(scan = scan_id, error = %e, "delete_scan failed");
    }
}

/// The report of a scan cut short by a crash of the daemon, from its result log.
pub fn recovered_report(job: i64, rec: &Recovered) -> JobReport {
    let (scan_id, target, started) = match &rec.start {
        Some(s) => (s.scan_id.as_str(), s.targets.join(","), s.started_unix),
        None => ("", String::new(), 0),
    };
    let status = ScanStatus::Interrupted;
    let content = osp_xml(
        scan_id,
        &target,
        started,
        outpost_wire::unix_now(),
        rec.percent,
        &status,
        &rec.results,
    );
    tracing::debug!(
        job,
        results = rec.results.len(),
        "report rebuilt from the result log"
    );
    JobReport {
        outcome: ReportOutcome::Failed,
        partial: true,
        content_type: "application/xml".into(),
        content,
        summary: wire_summary(&rec.results, None, rec.dead),
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
    target.alive_test = Some(alive_test(&spec.alive_methods()));
    target.credentials = spec
        .credentials
        .iter()
        .map(credential)
        .collect::<Result<_, _>>()?;
    Ok(StartScan::new(target)
        .with_scan_id(scan_id)
        // ospd-openvas passes on only the parameters a scan names (its defaults stay
        // in its own table): without this openvas never hands a logged-in host's
        // package list to notus-scanner, and the local security checks report nothing.
        .with_param("table_driven_lsc", "1")
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

/// The job's methods as ospd-openvas' `<alive_test_methods>` flags (which it turns into
/// openvas' alive-test bit field; several flags combine).
fn alive_test(methods: &[AliveMethod]) -> AliveTestMethods {
    let mut m = AliveTestMethods::default();
    for method in methods {
        match method {
            AliveMethod::Icmp => m.icmp = true,
            AliveMethod::TcpAck => m.tcp_ack = true,
            AliveMethod::TcpSyn => m.tcp_syn = true,
            AliveMethod::Arp => m.arp = true,
            AliveMethod::ConsiderAlive => m.consider_alive = true,
        }
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
    job: i64,
    scan_id: String,
    target: String,
    /// The addresses scanned (targets less exclusions), for the dead-host list.
    target_set: TargetSet,
    started_unix: i64,
    results: Vec<ScanResult>,
    status: ScanStatus,
    percent: u8,
    /// ospd-openvas' count of hosts found dead.
    dead: Option<u64>,
    /// Per-host progress from the last poll, for the progress message.
    hosts_line: String,
    /// When ospd-openvas first failed to answer, in the current outage.
    unreachable_since: Option<Instant>,
    gone_grace: Duration,
    stopped: bool,
    log: Option<LogWriter>,
    log_dir: Option<ResultLog>,
    /// A write to the result log failed: results are held in memory only from then on.
    log_failed: bool,
}

impl OpenvasRun {
    /// One `get_scans` round: pops new results, keeps them on disk, then updates status
    /// and progress.
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
        let percent = percent.clamp(0, 100) as u8;
        let dead = scan
            .detail
            .as_ref()
            .and_then(|d| d.count_dead)
            .and_then(|n| u64::try_from(n).ok());
        self.hosts_line = hosts_line(&scan);
        let popped: Vec<ScanResult> = scan.results.into_iter().map(normalise_type).collect();
        self.keep(&popped, percent, dead);
        self.percent = percent;
        self.dead = dead.or(self.dead);
        self.status = scan.status;
        self.results.extend(popped);
        Ok(())
    }

    /// Appends popped results to the job's log. They were handed over once and exist
    /// nowhere else, so a failed write is loud; the scan goes on with them in memory.
    fn keep(&mut self, popped: &[ScanResult], percent: u8, dead: Option<u64>) {
        let Some(log) = &mut self.log else { return };
        // Progress is only worth a line when results come with it (no extra syncs).
        let changed = percent != self.percent || (dead.is_some() && dead != self.dead);
        let progress = (!popped.is_empty() && changed).then_some((percent, dead));
        if let Err(e) = log.append(popped, progress) {
            if !self.log_failed {
                tracing::error!(job = self.job, scan = %self.scan_id, error = %e,
                    "scan results not kept on disk; a crash now would lose them");
            }
            self.log_failed = true;
        }
    }
}

/// Per-host progress as ospd reports it: the hosts being scanned with their percent,
/// and the counts of hosts done, found dead and in all.
fn hosts_line(scan: &Scan) -> String {
    let Some(d) = &scan.detail else {
        return String::new();
    };
    let mut parts = Vec::new();
    if let Some(total) = d.count_total.filter(|t| *t > 0) {
        let done = d.count_alive.unwrap_or(0) + d.count_dead.unwrap_or(0);
        parts.push(format!(
            "{done}/{total} hosts done ({} alive, {} dead)",
            d.count_alive.unwrap_or(0),
            d.count_dead.unwrap_or(0)
        ));
    }
    // ospd lists a host found dead with progress -1; those are in the dead count.
    let scanning: Vec<String> = d
        .hosts
        .iter()
        .filter(|h| h.progress >= 0)
        .take(8)
        .map(|h| format!("{} {}%", h.host, h.progress.clamp(0, 100)))
        .collect();
    if !scanning.is_empty() {
        parts.push(format!("scanning {}", scanning.join(", ")));
    }
    parts.join("; ")
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
                message: if self.hosts_line.is_empty() {
                    format!("openvas: {status}, {} result(s) so far", self.results.len())
                } else {
                    format!(
                        "openvas: {status}, {}; {} result(s) so far",
                        self.hosts_line,
                        self.results.len()
                    )
                },
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

    fn report(&mut self) -> JobReport {
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
        // Only a scan that ran to its end says which addresses did not answer.
        let finished = self.status == ScanStatus::Finished && !self.stopped;
        let summary = wire_summary(
            &self.results,
            finished.then_some(&self.target_set),
            self.dead,
        );
        JobReport {
            outcome,
            partial,
            content_type: "application/xml".into(),
            content,
            summary,
        }
    }

    fn release(self: Box<Self>) {
        // The report is spooled: only now may ospd forget the scan and the log go.
        delete_scan(&self.osp, &self.scan_id);
        drop(self.log);
        if let Some(dir) = &self.log_dir {
            if let Err(e) = dir.remove(self.job) {
                tracing::warn!(job = self.job, error = %e, "cannot remove the result log");
            }
        }
    }
}

/// ospd-openvas' markers of a host's scan starting and ending (log results named so).
const HOST_START: &str = "HOST_START";
const HOST_END: &str = "HOST_END";

/// The portal's summary: findings from `outpost_osp::summarize` (ports become
/// `host:port/proto`), the live hosts with their ports and findings, and, for a scan
/// that ran to its end (`scanned` given), the target addresses that were dead.
fn wire_summary(
    results: &[ScanResult],
    scanned: Option<&TargetSet>,
    dead_count: Option<u64>,
) -> ReportSummary {
    // The host markers are bookkeeping, not findings.
    let is_marker = |r: &ScanResult| r.name == HOST_START || r.name == HOST_END;
    let s = summarize(results.iter().filter(|r| !is_marker(r)));
    let n = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    let counts = |c: &outpost_osp::SeverityCounts| SeverityCounts {
        high: n(c.high),
        medium: n(c.medium),
        low: n(c.low),
        log: n(c.log),
    };
    // A host is live when the scanner started on it or reported anything about it.
    let mut live: Vec<(Option<Ipv4Addr>, String)> = results
        .iter()
        .map(|r| r.host.trim())
        .filter(|h| !h.is_empty())
        .map(|h| (h.parse().ok(), h.to_owned()))
        .collect();
    live.sort();
    live.dedup();
    let ended: std::collections::BTreeSet<&str> = results
        .iter()
        .filter(|r| r.name == HOST_END)
        .map(|r| r.host.trim())
        .collect();
    let per_host = live
        .iter()
        .map(|(_, host)| {
            let found = s.hosts.iter().find(|h| &h.host == host);
            HostFindings {
                host: host.clone(),
                hostname: found.and_then(|h| h.hostname.clone()).unwrap_or_default(),
                ports: found.map(|h| h.ports.clone()).unwrap_or_default(),
                findings: found.map(|h| counts(&h.findings)).unwrap_or_default(),
                complete: ended.contains(host.as_str()),
            }
        })
        .collect();
    let dead_hosts = match scanned {
        Some(set) => {
            let addrs: Vec<Ipv4Addr> = live.iter().filter_map(|(a, _)| *a).collect();
            set.remaining(&addrs)
        }
        None => Vec::new(),
    };
    ReportSummary {
        hosts: s.hosts.iter().map(|h| h.host.clone()).collect(),
        ports: s
            .hosts
            .iter()
            .flat_map(|h| h.ports.iter().map(move |p| format!("{}:{p}", h.host)))
            .collect(),
        findings: counts(&s.findings),
        live_hosts: live.into_iter().map(|(_, h)| h).collect(),
        dead_hosts,
        dead_count,
        per_host,
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
    use outpost_wire::sensor::{AliveTest, JobSpec};
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
                alive_methods: vec![],
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
        // The report alone does not let ospd forget the scan: that waits for the spool.
        assert!(!fake.seen().iter().any(|c| c.starts_with("<delete_scan")));
        run.release();
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
        run.release();
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
        let m = alive_test(&AliveTest::IcmpAndTcpAck.methods());
        assert!(m.icmp && m.tcp_ack && !m.tcp_syn && !m.arp && !m.consider_alive);
        assert!(alive_test(&[AliveMethod::Arp]).arp);
        assert!(alive_test(&[AliveMethod::TcpSyn]).tcp_syn);
        let m = alive_test(&[AliveMethod::Icmp, AliveMethod::Arp, AliveMethod::TcpSyn]);
        assert!(m.icmp && m.arp && m.tcp_syn && !m.tcp_ack && !m.consider_alive);
    }

    fn spec_of(j: &mut Job) -> &mut ScanSpec {
        match &mut j.spec {
            JobSpec::Scan(spec) => spec,
            other => panic!("{other:?}"),
        }
    }

    /// The `<target>` element of a start_scan command, as sent.
    fn target_xml(cmd: &str) -> &str {
        let from = cmd.find("<target>").unwrap();
        let to = cmd.find("</target>").unwrap();
        &cmd[from..to]
    }

    #[test]
    fn start_scan_carries_ranges_exclusions_and_alive_methods_as_ospd_reads_them() {
        let mut fake = FakeOspd::start(vec![STARTED]);
        let ex = fake.executor(DEFAULT_GONE_GRACE);
        let mut j = job(&["10.9.0.0/24", "10.9.0.5-10.9.0.7", "10.9.0.20"]);
        let spec = spec_of(&mut j);
        spec.exclude_hosts = vec!["10.9.0.9".into(), "10.9.0.100-10.9.0.120".into()];
        spec.alive_methods = vec![AliveMethod::Icmp, AliveMethod::Arp];
        spec.credentials.clear();
        ex.start(&j).unwrap();
        let cmds = fake.commands();
        let t = target_xml(&cmds[0]);
        // ospd-openvas' process_target_element: comma-separated <hosts> and
        // <exclude_hosts>, <ports>, and one 0/1 flag per method in <alive_test_methods>.
        assert!(
            t.contains("<hosts>10.9.0.0/24,10.9.0.5-10.9.0.7,10.9.0.20</hosts>"),
            "{t}"
        );
        assert!(
            t.contains("<exclude_hosts>10.9.0.9,10.9.0.100-10.9.0.120</exclude_hosts>"),
            "{t}"
        );
        assert!(t.contains("<ports>T:22,443</ports>"), "{t}");
        assert!(
            t.contains(
                "<alive_test_methods><icmp>1</icmp><tcp_syn>0</tcp_syn><tcp_ack>0</tcp_ack>\
                 <arp>1</arp><consider_alive>0</consider_alive></alive_test_methods>"
            ),
            "{t}"
        );
        // The older preset form still maps to the same element.
        let mut j = job(&["10.9.0.2"]);
        spec_of(&mut j).alive_test = AliveTest::TcpSyn;
        let cmd = start_scan(spec_of(&mut j), "abc").unwrap();
        let xml = String::from_utf8(Request::from(cmd).to_xml().unwrap()).unwrap();
        assert!(xml.contains("<tcp_syn>1</tcp_syn>"), "{xml}");
        assert!(xml.contains("<icmp>0</icmp>"), "{xml}");
        // Notus runs on what a login reveals: ospd-openvas sets no default for it.
        assert!(
            xml.contains("<scanner_params><table_driven_lsc>1</table_driven_lsc></scanner_params>"),
            "{xml}"
        );
    }

    #[test]
    fn a_cidr_partly_out_of_scope_or_a_bad_exclusion_sends_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ospd.sock");
        let l = UnixListener::bind(&path).unwrap();
        l.set_nonblocking(true).unwrap();
        let log = ResultLog::open(&dir.path().join("inflight")).unwrap();
        let ex = OpenvasExecutor::new(
            OspClient::new(&path),
            Scope::new(&["10.9.0.0/25".to_owned()]).unwrap(),
            DEFAULT_GONE_GRACE,
        )
        .with_result_log(log.clone());
        // A /24 is half outside a /25 scope, even with the outside half excluded.
        let mut j = job(&["10.9.0.0/24"]);
        spec_of(&mut j).exclude_hosts = vec!["10.9.0.128/25".into()];
        let e = ex.start(&j).err().unwrap();
        assert!(e.0.contains("outside the allowed scope"), "{e}");
        let mut j = job(&["10.9.0.0/25"]);
        spec_of(&mut j).exclude_hosts = vec!["gateway.local".into()];
        let e = ex.start(&j).err().unwrap();
        assert!(e.0.starts_with("exclusion \"gateway.local\""), "{e}");
        let mut j = job(&["10.9.0.8-10.9.0.9"]);
        spec_of(&mut j).exclude_hosts = vec!["10.9.0.0/24".into()];
        let e = ex.start(&j).err().unwrap();
        assert!(e.0.contains("leave no address"), "{e}");
        // No connection, and no result log left behind.
        assert_eq!(
            l.accept().unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
        assert!(log.jobs().unwrap().is_empty());
    }

    #[test]
    fn popped_results_are_on_disk_before_they_count_and_gone_after_release() {
        let mut fake = FakeOspd::start(vec![STARTED, RUNNING_50, FINISHED, DELETED]);
        let dir = tempfile::tempdir().unwrap();
        let log = ResultLog::open(dir.path()).unwrap();
        let ex = fake
            .executor(DEFAULT_GONE_GRACE)
            .with_result_log(log.clone());
        let mut run = ex.start(&job(&["10.9.0.2"])).unwrap();
        // The header is on disk as soon as the scan exists; no credential in it.
        let rec = log.read(7).unwrap();
        let start = rec.start.unwrap();
        assert_eq!(start.targets, ["10.9.0.2"]);
        assert_eq!(start.exclude_hosts, ["10.9.0.9"]);
        assert!(rec.results.is_empty());
        assert!(!std::fs::read_to_string(log.path_for(7))
            .unwrap()
            .contains("hunter2"));
        run.poll().unwrap();
        assert_eq!(log.read(7).unwrap().results.len(), 1);
        run.poll().unwrap();
        let rec = log.read(7).unwrap();
        assert_eq!(rec.results.len(), 3);
        assert_eq!(rec.percent, 100);
        let r = run.report();
        assert_eq!(r.content.matches("<result ").count(), 3);
        // Still there until the report is spooled and the run released.
        assert_eq!(log.jobs().unwrap(), [7]);
        run.release();
        assert!(log.jobs().unwrap().is_empty());
        assert!(fake.commands()[3].starts_with("<delete_scan "));
    }

    #[test]
    fn a_subnet_scan_reports_host_progress_live_and_dead_hosts_and_findings_per_host() {
        let mut fake = FakeOspd::start(vec![STARTED, SUBNET_RUNNING, SUBNET_FINISHED, DELETED]);
        let ex = fake.executor(DEFAULT_GONE_GRACE);
        let mut j = job(&["10.9.0.0/28"]);
        spec_of(&mut j).exclude_hosts = vec!["10.9.0.9".into()];
        spec_of(&mut j).alive_methods = vec![AliveMethod::Icmp, AliveMethod::Arp];
        let mut run = ex.start(&j).unwrap();
        match run.poll().unwrap() {
            Progress::Running { percent, message } => {
                assert_eq!(percent, 40);
                assert_eq!(
                    message,
                    "openvas: running, 9/13 hosts done (1 alive, 8 dead); \
                     scanning 10.9.0.3 30%; 4 result(s) so far"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(run.poll().unwrap(), Progress::Finished);
        let r = run.report();
        run.release();
        let s = &r.summary;
        assert_eq!(s.live_hosts, ["10.9.0.2", "10.9.0.3", "10.9.0.12"]);
        // 10.9.0.1-14 less the excluded .9 and the three live hosts.
        assert_eq!(
            s.dead_hosts,
            [
                "10.9.0.1",
                "10.9.0.4-10.9.0.8",
                "10.9.0.10-10.9.0.11",
                "10.9.0.13-10.9.0.14"
            ]
        );
        assert_eq!(s.dead_count, Some(10));
        // The host markers are no findings.
        assert_eq!(
            s.findings,
            SeverityCounts {
                high: 1,
                medium: 1,
                low: 0,
                log: 1
            }
        );
        let hosts: Vec<(&str, Vec<String>, u32, bool)> = s
            .per_host
            .iter()
            .map(|h| {
                (
                    h.host.as_str(),
                    h.ports.clone(),
                    h.findings.high + h.findings.medium + h.findings.log,
                    h.complete,
                )
            })
            .collect();
        assert_eq!(
            hosts,
            [
                ("10.9.0.2", vec!["22/tcp".to_owned()], 1, true),
                ("10.9.0.3", vec!["443/tcp".to_owned()], 1, true),
                ("10.9.0.12", vec![], 1, true),
            ]
        );
        assert_eq!(s.per_host[2].hostname, "printer");
        assert_eq!(s.ports, ["10.9.0.2:22/tcp", "10.9.0.3:443/tcp"]);
        fake.commands();
    }

    #[test]
    fn a_stopped_scan_names_no_dead_hosts_and_marks_unfinished_hosts() {
        let mut fake = FakeOspd::start(vec![STARTED, SUBNET_RUNNING, STOP_OK, STOPPED, DELETED]);
        let ex = fake.executor(DEFAULT_GONE_GRACE);
        let mut run = ex.start(&job(&["10.9.0.0/28"])).unwrap();
        run.poll().unwrap();
        run.cancel().unwrap();
        let r = run.report();
        run.release();
        assert!(r.partial);
        assert!(
            r.summary.dead_hosts.is_empty(),
            "{:?}",
            r.summary.dead_hosts
        );
        assert_eq!(r.summary.live_hosts, ["10.9.0.2", "10.9.0.3"]);
        let complete: Vec<bool> = r.summary.per_host.iter().map(|h| h.complete).collect();
        assert_eq!(complete, [true, false]);
        fake.commands();
    }

    #[test]
    fn scan_ids_are_uuids() {
        let a = new_scan_id().unwrap();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert_ne!(a, new_scan_id().unwrap());
    }
}
