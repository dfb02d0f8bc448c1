//! Harness for host end-to-end tests: runs the real `outpost-portal`, `outpostd` and
//! `outpostctl` binaries as processes on loopback, as an operator would, and reads what
//! they print.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outpost_wire::provision::{FeedThresholds, Provision};
use outpost_wire::Secret;

/// Directory holding the workspace's built binaries (next to the test executable's `deps/`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile directory");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is not built; run the tests with `cargo nextest run --workspace` (scripts/test)",
        p.display()
    );
    p
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free UDP port")
}

/// Lines a child prints, collected by a reader thread.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn follow(&self, stream: impl std::io::Read + Send + 'static, echo: &'static str) {
        let lines = self.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                eprintln!("[{echo}] {line}");
                if let Ok(mut l) = lines.lock() {
                    l.push(line);
                }
            }
        });
    }

    pub fn all(&self) -> Vec<String> {
        self.0.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits until a line matches `pattern`; returns it.
    pub fn wait_for(&self, pattern: &str, timeout: Duration) -> String {
        let re = regex::Regex::new(pattern).expect("pattern");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.all().into_iter().find(|l| re.is_match(l)) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "no line matching {pattern:?} within {timeout:?}; got:\n{}",
                self.all().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub struct Proc {
    pub child: Child,
    pub out: Lines,
}

impl Proc {
    pub fn spawn(mut cmd: Command, name: &'static str) -> Proc {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let out = Lines::default();
        if let Some(s) = child.stdout.take() {
            out.follow(s, name);
        }
        if let Some(s) = child.stderr.take() {
            out.follow(s, name);
        }
        Proc { child, out }
    }

    /// SIGKILL: the process gets no chance to clean up, as in a power cut.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A portal process with its own data directory (SQLite).
pub struct Portal {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// UDP port of the WireGuard gateway: sensors talk to the API only through it.
    pub wg_port: u16,
    pub proc: Option<Proc>,
    pub offline_after_s: u64,
    /// Further `outpost-portal serve` arguments.
    pub extra: Vec<String>,
}

impl Portal {
    pub fn start(offline_after_s: u64) -> Portal {
        Portal::start_with(offline_after_s, &[])
    }

    /// With extra `serve` arguments, e.g. `--wg-endpoint` for a guest behind a relay.
    pub fn start_with(offline_after_s: u64, extra: &[&str]) -> Portal {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut p = Portal {
            dir,
            port: free_port(),
            wg_port: free_udp_port(),
            proc: None,
            offline_after_s,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        p.restart();
        p
    }

    /// (Re)starts the portal on the same port and data directory.
    pub fn restart(&mut self) {
        let mut cmd = Command::new(bin("outpost-portal"));
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(self.dir.path())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--offline-after")
            .arg(self.offline_after_s.to_string())
            .args(["--heartbeat-interval", "1", "--claim-interval", "1"])
            .arg("--wg-listen")
            .arg(format!("127.0.0.1:{}", self.wg_port))
            .args(&self.extra);
        let proc = Proc::spawn(cmd, "portal");
        proc.out
            .wait_for("listening on https://", Duration::from_secs(30));
        self.proc = Some(proc);
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ca.pem")).expect("ca.pem")
    }

    pub fn sqlite(&self) -> PathBuf {
        self.dir.path().join("portal.sqlite")
    }

    /// Runs `outpostctl --portal-dir <dir> --json ARGS` and returns its stdout; panics on failure.
    pub fn ctl(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.ctl_status(args);
        assert!(ok, "outpostctl {args:?} failed: {err}");
        out
    }

    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.ctl(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    pub fn ctl_status(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(bin("outpostctl"))
            .arg("--portal-dir")
            .arg(self.dir.path())
            .args(args)
            .output()
            .expect("run outpostctl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn token(&self, site: &str, uses: u32) -> String {
        self.ctl(&[
            "token",
            "create",
            "--site",
            site,
            "--uses",
            &uses.to_string(),
        ])
        .trim()
        .to_owned()
    }

    /// Every row of every table, to prove that something changed nothing.
    pub fn dump(&self) -> String {
        let conn = rusqlite::Connection::open(self.sqlite()).expect("open portal db");
        let mut out = String::new();
        for t in ["tokens", "sensors", "jobs", "reports", "sensor_log"] {
            let mut st = conn
                .prepare(&format!("SELECT * FROM {t} ORDER BY 1"))
                .expect("prepare");
            let n = st.column_count();
            let mut rows = st.query([]).expect("query");
            while let Some(r) = rows.next().expect("row") {
                let cols: Vec<String> = (0..n)
                    .map(|i| format!("{:?}", r.get_ref(i).expect("col")))
                    .collect();
                out.push_str(&format!("{t}: {}\n", cols.join("|")));
            }
        }
        out
    }
}

impl Drop for Portal {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A sensor's provisioning file and data directory on the host.
pub struct Sensor {
    pub dir: tempfile::TempDir,
    pub name: String,
}

impl Sensor {
    pub fn new(portal: &Portal, name: &str, site: &str, token: &str) -> Sensor {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = Provision {
            portal_url: portal.url(),
            ca_cert_pem: portal.ca_pem(),
            name: name.into(),
            site: site.into(),
            token: Secret::new(token),
            scope: vec![],
            feed: FeedThresholds::default(),
            feed_max_kbit_per_s: 0,
            scanner_enabled: true,
        };
        std::fs::write(dir.path().join("outpost.toml"), p.render()).expect("write outpost.toml");
        Sensor {
            dir,
            name: name.into(),
        }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("outpost.toml")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts `outpostd` with fast intervals and the dry-run executor.
    pub fn start(&self, extra: &[&str]) -> Proc {
        let mut cmd = Command::new(bin("outpostd"));
        cmd.arg("--config")
            .arg(self.config())
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--heartbeat-interval", "1s", "--claim-interval", "500ms"])
            .args(["--executor", "dry-run", "--config-error-delay", "0s"])
            .args(extra);
        Proc::spawn(cmd, "outpostd")
    }
}

/// Polls `f` until it returns Some, or panics after `timeout` naming `what`.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
