//! The dry-run executor: it pretends to scan for a set time, reports progress, honours
//! cancellation, and writes a well-formed OSP report whose only results are log entries
//! saying that no probe was sent. It exists so the whole control path (claim, status,
//! spool, upload) runs on any host without a scanner and without touching a network.

use std::time::{Duration, Instant};

use outpost_wire::sensor::{Job, ReportOutcome, ReportSummary, SeverityCounts};

use super::{xml_escape as esc, ExecError, JobExecutor, JobReport, Progress, RunningJob};

pub struct DryRunExecutor {
    duration: Duration,
}

impl DryRunExecutor {
    /// Each job "runs" for `duration`.
    pub fn new(duration: Duration) -> DryRunExecutor {
        DryRunExecutor { duration }
    }
}

impl JobExecutor for DryRunExecutor {
    fn name(&self) -> &'static str {
        "dry run"
    }

    fn start(&self, job: &Job) -> Result<Box<dyn RunningJob>, ExecError> {
        let spec = super::scan_spec(job)?;
        if spec.targets.is_empty() {
            return Err(ExecError("the job names no targets".into()));
        }
        Ok(Box::new(DryRun {
            job_id: job.id,
            targets: spec.targets.clone(),
            ports: spec.ports.clone(),
            duration: self.duration,
            started: Instant::now(),
            started_unix: outpost_wire::unix_now(),
            cancelled_at: None,
        }))
    }
}

struct DryRun {
    job_id: i64,
    targets: Vec<String>,
    ports: String,
    duration: Duration,
    started: Instant,
    started_unix: i64,
    /// Progress when cancelled.
    cancelled_at: Option<u8>,
}

impl DryRun {
    fn percent(&self) -> u8 {
        if self.duration.is_zero() {
            return 100;
        }
        let f = self.started.elapsed().as_secs_f64() / self.duration.as_secs_f64();
        (f.min(1.0) * 100.0) as u8
    }
}

impl RunningJob for DryRun {
    fn poll(&mut self) -> Result<Progress, ExecError> {
        if self.cancelled_at.is_some() {
            return Ok(Progress::Finished);
        }
        let percent = self.percent();
        if percent >= 100 {
            return Ok(Progress::Finished);
        }
        Ok(Progress::Running {
            percent,
            message: format!("dry run: {} target(s), no probe sent", self.targets.len()),
        })
    }

    fn cancel(&mut self) -> Result<(), ExecError> {
        if self.cancelled_at.is_none() {
            self.cancelled_at = Some(self.percent().min(99));
        }
        Ok(())
    }

    fn report(&mut self) -> JobReport {
        let (outcome, partial, progress, status) = match self.cancelled_at {
            Some(p) => (ReportOutcome::Cancelled, true, p, "stopped"),
            None => (ReportOutcome::Completed, false, 100, "finished"),
        };
        let content = osp_xml(
            self.job_id,
            &self.targets,
            &self.ports,
            self.started_unix,
            outpost_wire::unix_now(),
            progress,
            status,
        );
        JobReport {
            outcome,
            partial,
            content_type: "application/xml".into(),
            content,
            summary: ReportSummary {
                hosts: self.targets.clone(),
                ports: Vec::new(),
                findings: SeverityCounts {
                    log: self.targets.len() as u32,
                    ..Default::default()
                },
                ..Default::default()
            },
        }
    }
}

/// A `get_scans` answer in ospd's shape, one log-level result per target.
fn osp_xml(
    job_id: i64,
    targets: &[String],
    ports: &str,
    start: i64,
    end: i64,
    progress: u8,
    status: &str,
) -> String {
    let mut x = String::from(r#"<get_scans_response status="200" status_text="OK">"#);
    x.push_str(&format!(
        r#"<scan id="outpost-job-{job_id}" target="{}" start_time="{start}" end_time="{end}" progress="{progress}" status="{status}"><results>"#,
        esc(&targets.join(","))
    ));
    for t in targets {
        x.push_str(&format!(
            r#"<result name="Dry run: no probe sent" type="Log Message" severity="0.0" host="{h}" hostname="" test_id="" port="" qod="">Dry run of job {job_id}: target {h} (ports {p}) was not scanned; no packet was sent.</result>"#,
            h = esc(t),
            p = esc(ports),
        ));
    }
    x.push_str("</results></scan></get_scans_response>");
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_wire::sensor::{AliveTest, JobSpec, ScanSpec, UpdateSpec};

    pub fn job(id: i64, targets: &[&str]) -> Job {
        Job {
            id,
            lease_expires_at: 0,
            attempt: 0,
            spec: JobSpec::Scan(ScanSpec {
                targets: targets.iter().map(|t| t.to_string()).collect(),
                ports: "T:22,80".into(),
                exclude_hosts: vec![],
                families: vec![],
                oids: vec![],
                alive_test: AliveTest::ConsiderAlive,
                alive_methods: vec![],
                credentials: vec![],
                deadline_s: 60,
            }),
        }
    }

    #[test]
    fn zero_duration_finishes_with_a_complete_report() {
        let ex = DryRunExecutor::new(Duration::ZERO);
        let mut run = ex.start(&job(3, &["10.9.0.2", "10.9.0.0/30"])).unwrap();
        assert_eq!(run.poll().unwrap(), Progress::Finished);
        let r = run.report();
        assert_eq!(r.outcome, ReportOutcome::Completed);
        assert!(!r.partial);
        assert_eq!(r.summary.hosts, ["10.9.0.2", "10.9.0.0/30"]);
        assert_eq!(r.summary.findings.log, 2);
        assert_eq!(r.summary.findings.high, 0);
        assert!(r.content.starts_with("<get_scans_response"));
        assert_eq!(r.content.matches("<result ").count(), 2);
        assert!(r.content.contains(r#"host="10.9.0.2""#));
        assert!(r.content.contains("no packet was sent"));
        assert!(r.content.contains(r#"status="finished""#));
    }

    #[test]
    fn cancel_gives_a_partial_cancelled_report() {
        let ex = DryRunExecutor::new(Duration::from_secs(3600));
        let mut run = ex.start(&job(4, &["10.9.0.2"])).unwrap();
        assert!(matches!(run.poll().unwrap(), Progress::Running { .. }));
        run.cancel().unwrap();
        assert_eq!(run.poll().unwrap(), Progress::Finished);
        let r = run.report();
        assert_eq!(r.outcome, ReportOutcome::Cancelled);
        assert!(r.partial);
        assert!(r.content.contains(r#"status="stopped""#));
    }

    #[test]
    fn an_update_job_is_not_a_scan() {
        let mut j = job(5, &["10.9.0.2"]);
        j.spec = JobSpec::Update(UpdateSpec {
            bundle_id: 1,
            version: "1.2.0".into(),
            size: 10,
            sha256: "0".repeat(64),
        });
        let e = DryRunExecutor::new(Duration::ZERO)
            .start(&j)
            .err()
            .expect("refused");
        assert_eq!(e.0, "job 5 is not a scan job (kind: update)");
    }

    #[test]
    fn empty_target_list_is_refused() {
        let ex = DryRunExecutor::new(Duration::ZERO);
        assert!(ex.start(&job(5, &[])).is_err());
    }

    #[test]
    fn targets_are_escaped() {
        let x = osp_xml(1, &["a<b&\"c".into()], "T:1", 0, 0, 100, "finished");
        assert!(x.contains("a&lt;b&amp;&quot;c"));
        assert!(!x.contains("a<b"));
    }
}
