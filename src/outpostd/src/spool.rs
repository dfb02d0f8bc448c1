//! Finished reports on disk until the portal has them. A report is written here before
//! the first upload attempt and deleted only after a 2xx, so a crash or power cut between
//! the two loses nothing; the `request_id` inside makes the retry idempotent at the portal.

use std::path::{Path, PathBuf};

use outpost_wire::sensor::ReportUpload;
use rand_core::RngCore as _;

use crate::fsutil;
use crate::results::{ResultLog, ResultLogError};

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("report spool {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("spooled report {path} is unreadable: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(transparent)]
    Results(#[from] ResultLogError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

pub struct Spool {
    dir: PathBuf,
    results: ResultLog,
}

impl Spool {
    /// Opens (creating) `dir`, `dir/rejected` and `dir/inflight` (results of running
    /// scans, [`ResultLog`]).
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        fsutil::ensure_private_dir(dir).map_err(io(dir))?;
        let rejected = dir.join("rejected");
        fsutil::ensure_private_dir(&rejected).map_err(io(&rejected))?;
        let results = ResultLog::open(&dir.join("inflight"))?;
        Ok(Spool {
            dir: dir.to_owned(),
            results,
        })
    }

    /// The logs of scans still running (or cut short by a crash).
    pub fn results(&self) -> &ResultLog {
        &self.results
    }

    pub fn path_for(&self, job: i64) -> PathBuf {
        self.dir.join(format!("{job}.json"))
    }

    /// Writes the report for `job` atomically (0600). A report already spooled for the
    /// same job is replaced: there is one report per job.
    pub fn store(&self, job: i64, report: &ReportUpload) -> Result<(), SpoolError> {
        let path = self.path_for(job);
        let json = serde_json::to_vec(report).map_err(|e| SpoolError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        fsutil::atomic_write(&path, &json).map_err(io(&path))
    }

    pub fn load(&self, job: i64) -> Result<ReportUpload, SpoolError> {
        let path = self.path_for(job);
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        serde_json::from_slice(&bytes).map_err(|e| SpoolError::Corrupt {
            path,
            reason: e.to_string(),
        })
    }

    /// Job ids with a spooled report, lowest first. Temporary files are ignored.
    pub fn pending(&self) -> Result<Vec<i64>, SpoolError> {
        let mut jobs = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let entry = entry.map_err(io(&self.dir))?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<i64>().ok())
            else {
                continue;
            };
            jobs.push(id);
        }
        jobs.sort_unstable();
        Ok(jobs)
    }

    /// The portal has the report: delete it.
    pub fn ack(&self, job: i64) -> Result<(), SpoolError> {
        let path = self.path_for(job);
        match std::fs::remove_file(&path) {
            Ok(()) => fsutil::sync_dir(&self.dir).map_err(io(&self.dir)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// The portal will never take it: keep a copy under `rejected/` for diagnosis.
    pub fn reject(&self, job: i64) -> Result<PathBuf, SpoolError> {
        let from = self.path_for(job);
        let to = self.dir.join("rejected").join(format!("{job}.json"));
        std::fs::rename(&from, &to).map_err(io(&from))?;
        fsutil::sync_dir(&self.dir).map_err(io(&self.dir))?;
        Ok(to)
    }
}

/// A fresh id for one report upload (128 random bits, hex).
pub fn new_request_id() -> String {
    let mut b = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_wire::sensor::ReportOutcome;

    fn report(id: &str) -> ReportUpload {
        ReportUpload {
            request_id: id.into(),
            outcome: ReportOutcome::Completed,
            partial: false,
            content_type: "application/xml".into(),
            content: "<get_scans_response/>".into(),
            summary: Default::default(),
        }
    }

    #[test]
    fn stored_reports_survive_a_restart_until_acked() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("spool");
        {
            let s = Spool::open(&dir).unwrap();
            s.store(12, &report("r12")).unwrap();
            s.store(3, &report("r3")).unwrap();
            assert_eq!(fsutil::mode_of(&s.path_for(12)).unwrap(), 0o600);
        }
        // A new process sees the same reports, with the same request ids.
        let s = Spool::open(&dir).unwrap();
        assert_eq!(s.pending().unwrap(), [3, 12]);
        assert_eq!(s.load(12).unwrap().request_id, "r12");
        s.ack(3).unwrap();
        assert_eq!(s.pending().unwrap(), [12]);
        assert!(!s.path_for(3).exists());
        // Acknowledging twice is harmless.
        s.ack(3).unwrap();
    }

    #[test]
    fn rejected_reports_are_kept_aside() {
        let t = tempfile::tempdir().unwrap();
        let s = Spool::open(t.path()).unwrap();
        s.store(5, &report("r5")).unwrap();
        let kept = s.reject(5).unwrap();
        assert_eq!(s.pending().unwrap(), Vec::<i64>::new());
        assert_eq!(kept, t.path().join("rejected/5.json"));
        let back: ReportUpload = serde_json::from_slice(&std::fs::read(kept).unwrap()).unwrap();
        assert_eq!(back.request_id, "r5");
    }

    #[test]
    fn stray_files_are_ignored_and_corrupt_ones_reported() {
        let t = tempfile::tempdir().unwrap();
        let s = Spool::open(t.path()).unwrap();
        std::fs::write(t.path().join(".7.json.tmp"), b"half").unwrap();
        std::fs::write(t.path().join("notes.txt"), b"x").unwrap();
        std::fs::write(t.path().join("9.json"), b"{broken").unwrap();
        assert_eq!(s.pending().unwrap(), [9]);
        assert!(matches!(s.load(9), Err(SpoolError::Corrupt { .. })));
    }

    #[test]
    fn request_ids_are_fresh() {
        let a = new_request_id();
        assert_eq!(a.len(), 32);
        assert_ne!(a, new_request_id());
    }
}
