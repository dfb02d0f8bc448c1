//! Results of a running scan, kept on disk as they are popped from ospd-openvas.
//!
//! `get_scans pop_results="1"` hands each result over exactly once, so a result held
//! only in memory dies with the daemon. Each scan job therefore has an append-only file,
//! `spool/inflight/<job-id>.jsonl`: a header line written (and synced) before
//! `start_scan` is sent, then one JSON line per result, each batch written in one go and
//! synced before the results count as collected. After a crash or power cut the next run
//! reads the file back, uploads what it holds as a partial report and removes it.
//!
//! A power cut can leave the last line half written (or, on ext4, padded with zero
//! bytes); that line is dropped when the file is read, not treated as an error. The file
//! never holds credentials: the header has targets and exclusions only.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use outpost_osp::ScanResult;
use serde::{Deserialize, Serialize};

use crate::fsutil;

#[derive(Debug, thiserror::Error)]
pub enum ResultLogError {
    #[error("scan result log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("scan result log {path}: cannot encode a record: {reason}")]
    Encode { path: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ResultLogError + '_ {
    move |source| ResultLogError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The header of a job's log: enough to name the scan in ospd-openvas and to describe
/// what was asked for in the recovered report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanStart {
    pub job: i64,
    pub scan_id: String,
    pub started_unix: i64,
    pub targets: Vec<String>,
    #[serde(default)]
    pub exclude_hosts: Vec<String>,
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rec", rename_all = "snake_case")]
enum Record {
    Start(ScanStart),
    Result(ScanResult),
    /// Overall progress and ospd's dead-host count, written with a batch of results.
    Progress {
        percent: u8,
        #[serde(default)]
        dead: Option<u64>,
    },
}

/// What a log held when it was read back.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Recovered {
    /// `None` when the header itself was lost: the crash came before `start_scan`.
    pub start: Option<ScanStart>,
    pub results: Vec<ScanResult>,
    pub percent: u8,
    pub dead: Option<u64>,
    /// Lines that could not be read (a torn last line, zero padding), skipped.
    pub dropped: usize,
}

/// The directory of in-flight logs.
#[derive(Debug, Clone)]
pub struct ResultLog {
    dir: PathBuf,
}

impl ResultLog {
    /// Opens (creating, mode 0700) the directory.
    pub fn open(dir: &Path) -> Result<ResultLog, ResultLogError> {
        fsutil::ensure_private_dir(dir).map_err(io(dir))?;
        Ok(ResultLog {
            dir: dir.to_owned(),
        })
    }

    pub fn path_for(&self, job: i64) -> PathBuf {
        self.dir.join(format!("{job}.jsonl"))
    }

    /// Starts the log of a job (replacing an old one of the same job) and makes the
    /// header durable before the caller sends anything to the scanner.
    pub fn begin(&self, start: &ScanStart) -> Result<LogWriter, ResultLogError> {
        let path = self.path_for(start.job);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(fsutil::PRIVATE_FILE)
            .open(&path)
            .map_err(io(&path))?;
        let line = encode(&path, &Record::Start(start.clone()))?;
        file.write_all(&line).map_err(io(&path))?;
        file.sync_all().map_err(io(&path))?;
        fsutil::sync_dir(&self.dir).map_err(io(&self.dir))?;
        Ok(LogWriter { file, path })
    }

    /// Reopens a log to add results to it (e.g. those a surviving ospd-openvas still
    /// held); a torn last line is cut off first so new lines start clean.
    pub fn reopen(&self, job: i64) -> Result<LogWriter, ResultLogError> {
        let path = self.path_for(job);
        let bytes = fs::read(&path).map_err(io(&path))?;
        let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        file.set_len(keep as u64).map_err(io(&path))?;
        drop(file);
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        Ok(LogWriter { file, path })
    }

    /// Jobs with a log, lowest first.
    pub fn jobs(&self) -> Result<Vec<i64>, ResultLogError> {
        let mut jobs = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let entry = entry.map_err(io(&self.dir))?;
            if let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".jsonl"))
                .and_then(|n| n.parse::<i64>().ok())
            {
                jobs.push(id);
            }
        }
        jobs.sort_unstable();
        Ok(jobs)
    }

    /// Reads a job's log back. Unreadable lines are counted and skipped.
    pub fn read(&self, job: i64) -> Result<Recovered, ResultLogError> {
        let path = self.path_for(job);
        let bytes = fs::read(&path).map_err(io(&path))?;
        let mut out = Recovered::default();
        let mut lines = bytes.split(|b| *b == b'\n').peekable();
        while let Some(line) = lines.next() {
            // The piece after the last newline is a torn write, or empty.
            let complete = lines.peek().is_some();
            if line.is_empty() {
                continue;
            }
            let record = match (complete, serde_json::from_slice::<Record>(line)) {
                (true, Ok(r)) => r,
                _ => {
                    out.dropped += 1;
                    continue;
                }
            };
            match record {
                Record::Start(s) if out.start.is_none() => out.start = Some(s),
                // A second header cannot come from `begin`; ignore it rather than guess.
                Record::Start(_) => out.dropped += 1,
                Record::Result(r) => out.results.push(r),
                Record::Progress { percent, dead } => {
                    out.percent = percent.min(100);
                    if dead.is_some() {
                        out.dead = dead;
                    }
                }
            }
        }
        if out.dropped > 0 {
            tracing::warn!(job, dropped = out.dropped, path = %path.display(),
                "scan result log: unreadable lines skipped (torn by a crash)");
        }
        Ok(out)
    }

    /// The job's report is spooled: the log is no longer needed.
    pub fn remove(&self, job: i64) -> Result<(), ResultLogError> {
        let path = self.path_for(job);
        match fs::remove_file(&path) {
            Ok(()) => fsutil::sync_dir(&self.dir).map_err(io(&self.dir)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }
}

fn encode(path: &Path, r: &Record) -> Result<Vec<u8>, ResultLogError> {
    let mut line = serde_json::to_vec(r).map_err(|e| ResultLogError::Encode {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    line.push(b'\n');
    Ok(line)
}

/// Appends to one job's log.
#[derive(Debug)]
pub struct LogWriter {
    file: File,
    path: PathBuf,
}

impl LogWriter {
    /// Appends a batch of results (and the progress, when given) in one write and syncs
    /// it: when this returns Ok the batch survives a power cut.
    pub fn append(
        &mut self,
        results: &[ScanResult],
        progress: Option<(u8, Option<u64>)>,
    ) -> Result<(), ResultLogError> {
        if results.is_empty() && progress.is_none() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for r in results {
            buf.extend(encode(&self.path, &Record::Result(r.clone()))?);
        }
        if let Some((percent, dead)) = progress {
            buf.extend(encode(&self.path, &Record::Progress { percent, dead })?);
        }
        self.file.write_all(&buf).map_err(io(&self.path))?;
        // Data only: the file's size is part of the data for fdatasync.
        self.file.sync_data().map_err(io(&self.path))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use outpost_osp::ResultType;

    pub(crate) fn result(host: &str, port: &str, severity: f64, name: &str) -> ScanResult {
        ScanResult {
            result_type: if severity > 0.0 {
                ResultType::Alarm
            } else {
                ResultType::Log
            },
            name: name.into(),
            severity: Some(severity),
            host: host.into(),
            hostname: String::new(),
            port: port.into(),
            test_id: "1.3.6.1.4.1.25623.1.0.1".into(),
            qod: Some(80),
            uri: String::new(),
            description: "found <it> & \"more\"".into(),
        }
    }

    fn start(job: i64) -> ScanStart {
        ScanStart {
            job,
            scan_id: "2f616d53-595f-4785-9b97-4395116ca118".into(),
            started_unix: 1_700_000_000,
            targets: vec!["10.9.0.0/24".into()],
            exclude_hosts: vec!["10.9.0.9".into()],
        }
    }

    #[test]
    fn results_are_read_back_after_the_writer_is_gone() {
        let t = tempfile::tempdir().unwrap();
        let log = ResultLog::open(&t.path().join("inflight")).unwrap();
        {
            let mut w = log.begin(&start(7)).unwrap();
            w.append(&[result("10.9.0.2", "22/tcp", 9.8, "a")], None)
                .unwrap();
            w.append(
                &[
                    result("10.9.0.3", "80/tcp", 5.0, "b"),
                    result("10.9.0.3", "general/tcp", 0.0, "c"),
                ],
                Some((40, Some(12))),
            )
            .unwrap();
            // Dropped without any closing step, as a crash would.
        }
        assert_eq!(fsutil::mode_of(&log.path_for(7)).unwrap(), 0o600);
        assert_eq!(log.jobs().unwrap(), [7]);
        let r = log.read(7).unwrap();
        assert_eq!(r.start, Some(start(7)));
        assert_eq!(r.results.len(), 3);
        assert_eq!(r.results[1], result("10.9.0.3", "80/tcp", 5.0, "b"));
        assert_eq!((r.percent, r.dead, r.dropped), (40, Some(12), 0));
        log.remove(7).unwrap();
        assert!(log.jobs().unwrap().is_empty());
        log.remove(7).unwrap();
    }

    #[test]
    fn a_torn_last_line_is_dropped_not_fatal() {
        let t = tempfile::tempdir().unwrap();
        let log = ResultLog::open(t.path()).unwrap();
        let mut w = log.begin(&start(3)).unwrap();
        w.append(&[result("10.9.0.2", "22/tcp", 9.8, "kept")], None)
            .unwrap();
        drop(w);
        // A power cut in the middle of the next batch: half a line, no newline.
        let full = fs::read(log.path_for(3)).unwrap();
        let mut torn = full.clone();
        torn.extend_from_slice(br#"{"rec":"result","result_type":"Alarm","na"#);
        fs::write(log.path_for(3), &torn).unwrap();
        let r = log.read(3).unwrap();
        assert_eq!(r.results.len(), 1);
        assert_eq!(r.results[0].name, "kept");
        assert_eq!(r.dropped, 1);
        // ext4 may instead show the lost block as zero bytes, newline or not.
        let mut zeros = full.clone();
        zeros.extend_from_slice(&[0u8; 300]);
        zeros.push(b'\n');
        fs::write(log.path_for(3), &zeros).unwrap();
        let r = log.read(3).unwrap();
        assert_eq!((r.results.len(), r.dropped), (1, 1));
        // Reopening cuts the torn piece off, so what is appended next reads back whole.
        fs::write(log.path_for(3), &torn).unwrap();
        let mut w = log.reopen(3).unwrap();
        w.append(&[result("10.9.0.4", "443/tcp", 4.0, "late")], None)
            .unwrap();
        let r = log.read(3).unwrap();
        let names: Vec<&str> = r.results.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["kept", "late"]);
        assert_eq!(r.dropped, 0);
    }

    #[test]
    fn a_log_without_its_header_still_reads() {
        let t = tempfile::tempdir().unwrap();
        let log = ResultLog::open(t.path()).unwrap();
        fs::write(log.path_for(9), br#"{"rec":"sta"#).unwrap();
        let r = log.read(9).unwrap();
        assert_eq!(r.start, None);
        assert!(r.results.is_empty());
        assert_eq!(r.dropped, 1);
        // Stray files are not jobs.
        fs::write(t.path().join("notes.txt"), b"x").unwrap();
        assert_eq!(log.jobs().unwrap(), [9]);
    }
}
