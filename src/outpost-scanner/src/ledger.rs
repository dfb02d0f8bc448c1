//! The process groups a supervisor runs, written down so that the next one can stop
//! them. A supervisor that dies without stopping its stack (outpostd killed or crashed,
//! then respawned by init) leaves redis, mosquitto and ospd-openvas running; the new
//! stack would find their ports, sockets and pid files taken and fail for ever. The
//! ledger lives on a tmpfs (`/run`): a reboot empties it along with the processes.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

/// One group a previous supervisor left running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    /// The component's name.
    pub component: String,
    /// Its process group (the leader's pid).
    pub pgid: i32,
}

/// The ledger file: one `pgid component program` line per running group.
#[derive(Debug, Clone)]
pub struct Ledger {
    path: PathBuf,
}

impl Ledger {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Ledger { path: path.into() }
    }

    /// Records the groups running now, replacing the file whole (temp file and rename,
    /// so a crash mid-write leaves the old list or the new one).
    pub fn record(&self, groups: &[(i32, &str, &Path)]) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("tmp");
        let mut f = fs::File::create(&tmp)?;
        for (pgid, name, program) in groups {
            writeln!(f, "{pgid} {name} {}", program.display())?;
        }
        drop(f);
        fs::rename(&tmp, &self.path)
    }

    /// Stops every group of the ledger that is still ours: SIGTERM, then SIGKILL after
    /// `grace`. A group whose leader pid now runs something else (reused) is left alone.
    /// The ledger is emptied afterwards. Unreadable lines are skipped.
    pub fn stop_leftovers(&self, grace: Duration) -> Vec<Leftover> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(_) => return Vec::new(),
        };
        let mut found = Vec::new();
        for line in text.lines() {
            let mut parts = line.splitn(3, ' ');
            let (Some(pgid), Some(name), Some(program)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Ok(pgid) = pgid.parse::<i32>() else {
                continue;
            };
            if pgid <= 1 || !still_ours(pgid, program) {
                continue;
            }
            found.push(Leftover {
                component: name.to_owned(),
                pgid,
            });
        }
        for l in &found {
            signal(l.pgid, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && found.iter().any(|l| group_alive(l.pgid)) {
            thread::sleep(Duration::from_millis(50));
        }
        for l in &found {
            signal(l.pgid, libc::SIGKILL);
        }
        let _ = fs::remove_file(&self.path);
        found
    }
}

/// The group is ours when its leader is gone (then no other process can own that group
/// id: a new group takes its leader's pid) or still runs the recorded program.
fn still_ours(pgid: i32, program: &str) -> bool {
    match fs::read(format!("/proc/{pgid}/cmdline")) {
        // (starts_with: redis rewrites its title to "<path> <address>")
        Ok(cmdline) => cmdline
            .split(|b| *b == 0)
            .any(|arg| arg.starts_with(program.as_bytes())),
        // no leader: any members left are the old group's
        Err(_) => group_alive(pgid),
    }
}

/// Whether a live (not zombie) process is in the group, from /proc/<pid>/stat.
fn group_alive(pgid: i32) -> bool {
    let Ok(entries) = fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|e| {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            return false;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            return false;
        };
        let mut f = rest.split_whitespace();
        let state = f.next();
        let group = f.nth(1).and_then(|g| g.parse::<i32>().ok());
        group == Some(pgid) && state != Some("Z")
    })
}

fn signal(pgid: i32, sig: libc::c_int) {
    // SAFETY: plain syscall on a group checked above.
    unsafe {
        libc::kill(-pgid, sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    #[test]
    fn a_group_left_running_is_stopped_and_a_reused_pid_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::new(dir.path().join("run/scanner-groups"));
        // A "component" that ignores SIGTERM and has a child in its group, as
        // ospd-openvas has openvas.
        let script = dir.path().join("stubborn");
        fs::write(
            &script,
            "#!/bin/sh\ntrap '' TERM\nsleep 600 &\nwhile :; do sleep 1; done\n",
        )
        .unwrap();
        fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let mut left = Command::new(&script).process_group(0).spawn().unwrap();
        let pgid = left.id() as i32;
        // A process whose pid the ledger names but which runs something else.
        let mut other = Command::new("sleep").arg("600").spawn().unwrap();
        let other_pid = other.id() as i32;
        ledger
            .record(&[
                (pgid, "stubborn", script.as_path()),
                (other_pid, "redis", Path::new("/usr/bin/redis-server")),
            ])
            .unwrap();
        thread::sleep(Duration::from_millis(200));

        let stopped = ledger.stop_leftovers(Duration::from_millis(300));
        assert_eq!(
            stopped,
            vec![Leftover {
                component: "stubborn".into(),
                pgid
            }]
        );
        let status = left.wait().unwrap();
        assert!(!status.success(), "killed: {status:?}");
        thread::sleep(Duration::from_millis(100));
        assert!(!group_alive(pgid), "the group's other member went too");
        assert!(
            other.try_wait().unwrap().is_none(),
            "a process that only shares a recorded pid is left alone"
        );
        other.kill().unwrap();
        let _ = other.wait();
        assert!(
            ledger.stop_leftovers(Duration::ZERO).is_empty(),
            "the ledger is empty afterwards"
        );
    }

    #[test]
    fn no_ledger_means_nothing_to_stop() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::new(dir.path().join("absent"));
        assert!(ledger.stop_leftovers(Duration::ZERO).is_empty());
    }
}
