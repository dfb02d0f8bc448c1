//! System-test harness: builds (or reuses) the real Outpost image and boots it
//! in `qemu-system-aarch64` through `scripts/run-qemu`, with real U-Boot.
//!
//! A [`Qemu`] owns one running machine. The serial console (what a person on
//! the UART sees) is captured to a file and read with [`Qemu::wait_for`]. Test
//! images (`--variant test`) also carry a root shell on a second virtio console
//! (`hvc0`), reached through a unix socket; [`Qemu::run`] drives it. Production
//! images have no shell on any console.

mod image;
mod shell;

pub use image::{build_image, build_image_as, repo_root, BuiltImage};
pub mod feeds;
pub mod lab;
pub mod powercut;
pub mod rpi4;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use regex::Regex;

/// Errors of the harness; each names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{step}: {source}")]
    Io {
        step: String,
        #[source]
        source: std::io::Error,
    },
    #[error("building the image failed ({0})")]
    Build(String),
    #[error(
        "timed out after {timeout:?} waiting for /{pattern}/ on the console; last lines:\n{tail}"
    )]
    Timeout {
        pattern: String,
        timeout: Duration,
        tail: String,
    },
    #[error("timed out after {0:?} waiting for the test shell")]
    ShellTimeout(Duration),
    #[error("bad pattern: {0}")]
    Pattern(#[from] regex::Error),
    #[error("qemu exited early ({0})")]
    Exited(String),
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io_err(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let step = step.into();
    move |source| Error::Io { step, source }
}

/// Only one machine boots at a time: the build hosts have two cores and a
/// software-emulated boot is CPU bound.
pub(crate) static MACHINE_SLOT: Mutex<()> = Mutex::new(());

/// How to start a machine.
#[derive(Debug, Clone)]
pub struct QemuOptions {
    /// The raw disk image (never written; QEMU runs on a qcow2 overlay).
    pub image: PathBuf,
    /// U-Boot binary for `-bios`.
    pub uboot: PathBuf,
    /// Grow the overlay disk to this many bytes before boot (`qemu-img resize`).
    pub disk_size: Option<u64>,
    /// Host TCP port the guest reaches as 10.0.2.100:443.
    pub portal_port: Option<u16>,
    /// A second NIC whose frames travel in UDP datagrams: (QEMU's local port, the
    /// relay's port); see `outpost-netrelay`.
    pub udp_relay: Option<(u16, u16)>,
    /// Where the guest's real-time clock starts (QEMU `-rtc base=`), e.g.
    /// `1970-01-01T00:00:00`: a board without a battery-backed clock.
    pub rtc_base: Option<String>,
}

impl QemuOptions {
    pub fn new(built: &BuiltImage) -> Self {
        QemuOptions {
            image: built.image.clone(),
            uboot: built.uboot.clone(),
            disk_size: None,
            portal_port: None,
            udp_relay: None,
            rtc_base: None,
        }
    }
}

/// Output of a command run in the guest's test shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdOutput {
    pub status: i32,
    pub stdout: String,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// One running QEMU machine.
pub struct Qemu {
    child: Option<Child>,
    dir: PathBuf,
    console: Console,
    shell: shell::Shell,
    /// Held while QEMU runs; released by `kill` so the next machine may start.
    slot: Option<MutexGuard<'static, ()>>,
    /// Power cycles so far (each gets its own console log).
    boots: u32,
}

impl Qemu {
    /// Boots the image. Returns once QEMU runs; use `wait_for` to follow the boot.
    pub fn start(opts: &QemuOptions) -> Result<Qemu> {
        let slot = MACHINE_SLOT.lock().unwrap_or_else(|e| e.into_inner());
        let dir = unique_dir()?;
        let serial = dir.join("serial.log");
        let overlay = dir.join("disk.qcow2");
        let sock = dir.join("shell.sock");
        run_checked(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(&opts.image)
                .arg(&overlay),
            "qemu-img create",
        )?;
        if let Some(size) = opts.disk_size {
            run_checked(
                Command::new("qemu-img")
                    .args(["resize", "-q", "-f", "qcow2"])
                    .arg(&overlay)
                    .arg(size.to_string()),
                "qemu-img resize",
            )?;
        }
        let child = spawn_run_qemu(opts, &dir, &overlay, &serial, &sock)?;
        tracing::info!(dir = %dir.display(), "qemu started");
        Ok(Qemu {
            child: Some(child),
            dir,
            console: Console::new(serial),
            shell: shell::Shell::new(sock),
            slot: Some(slot),
            boots: 0,
        })
    }

    /// The console output captured so far.
    pub fn console(&self) -> String {
        self.console.text()
    }

    /// Waits until a console line after the last match matches `pattern`;
    /// returns that line. Consumes the console up to the end of that line.
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> Result<String> {
        let Qemu {
            console,
            child,
            dir,
            ..
        } = self;
        console.wait_for(pattern, timeout, &mut || check_child(child, dir))
    }

    /// Runs a shell command line in the guest (test images only) and returns
    /// its output and exit status.
    pub fn run(&mut self, cmd: &str) -> Result<CmdOutput> {
        self.run_timeout(cmd, Duration::from_secs(120))
    }

    pub fn run_timeout(&mut self, cmd: &str, timeout: Duration) -> Result<CmdOutput> {
        self.check_alive()?;
        self.shell.run(cmd, timeout)
    }

    /// Reboots the guest from its shell and waits for U-Boot to run boot.scr
    /// again. The console cursor moves past the reboot.
    pub fn reboot(&mut self, timeout: Duration) -> Result<()> {
        self.shell.send_only("reboot")?;
        self.shell.reset();
        self.wait_for(r"outpost-boot: boot script started", timeout)?;
        Ok(())
    }

    /// Runs a command that takes the machine down without an orderly reboot (a kernel
    /// panic, a stopped daemon the watchdog catches) and waits for U-Boot to run
    /// boot.scr again. The console cursor moves past the reset.
    pub fn run_until_reset(&mut self, cmd: &str, timeout: Duration) -> Result<String> {
        self.shell.send_only(cmd)?;
        self.shell.reset();
        self.wait_for(r"outpost-boot: boot script started", timeout)
    }

    /// Pulls the power: QEMU is killed at once (what the guest had not written is
    /// lost) and started again on the same disk, with a fresh console log.
    pub fn power_cycle(&mut self, opts: &QemuOptions) -> Result<()> {
        self.stop_process();
        self.boots += 1;
        self.console = Console::new(self.dir.join(format!("serial-{}.log", self.boots)));
        let overlay = self.dir.join("disk.qcow2");
        let sock = self.dir.join("shell.sock");
        let _ = fs::remove_file(&sock);
        // the old connection went with the old QEMU
        self.shell = shell::Shell::new(sock.clone());
        self.child = Some(spawn_run_qemu(
            opts,
            &self.dir,
            &overlay,
            &self.console.path,
            &sock,
        )?);
        Ok(())
    }

    fn stop_process(&mut self) {
        if let Some(mut child) = self.child.take() {
            // the whole process group: run-qemu and the QEMU it started
            // `--` so the negative process-group id is not read as an option
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--"])
                .arg(format!("-{}", child.id()))
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops QEMU (and run-qemu) at once.
    pub fn kill(&mut self) {
        self.stop_process();
        self.slot = None;
    }

    /// Directory with the serial log, QEMU's output and the overlay disk.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn check_alive(&mut self) -> Result<()> {
        check_child(&mut self.child, &self.dir)
    }
}

/// `Exited` once the machine's process has ended (its stderr in `dir`/qemu.err).
fn check_child(child: &mut Option<Child>, dir: &Path) -> Result<()> {
    if let Some(c) = child.as_mut() {
        if let Ok(Some(status)) = c.try_wait() {
            let err = fs::read_to_string(dir.join("qemu.err")).unwrap_or_default();
            *child = None;
            return Err(Error::Exited(format!("{status}: {}", err.trim())));
        }
    }
    Ok(())
}

/// A serial console captured to a file, read line by line from where the last
/// match ended.
pub struct Console {
    path: PathBuf,
    /// Byte offset up to which `wait_for` has consumed.
    cursor: usize,
}

impl Console {
    pub fn new(path: PathBuf) -> Self {
        Console { path, cursor: 0 }
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        fs::read(&self.path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits until a line after the last match matches `pattern`; returns that line.
    /// `alive` is asked between reads (a machine that exited ends the wait).
    pub fn wait_for(
        &mut self,
        pattern: &str,
        timeout: Duration,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<String> {
        let re = Regex::new(pattern)?;
        let deadline = Instant::now() + timeout;
        loop {
            let bytes = read_all(&self.path);
            let text = String::from_utf8_lossy(&bytes[self.cursor.min(bytes.len())..]).into_owned();
            let mut offset = 0;
            for line in text.split_inclusive('\n') {
                // only complete lines: a half-written one may match later
                if !line.ends_with('\n') {
                    break;
                }
                offset += line.len();
                let clean = line.trim_end_matches(['\r', '\n']);
                if re.is_match(clean) {
                    self.cursor += offset;
                    return Ok(clean.to_owned());
                }
            }
            alive()?;
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    pattern: pattern.to_owned(),
                    timeout,
                    tail: tail_lines(&String::from_utf8_lossy(&bytes), 25),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
        if std::env::var_os("OUTPOST_KEEP_TEST_DIRS").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn read_all(path: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.read_to_end(&mut v);
    }
    v
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn run_checked(cmd: &mut Command, step: &str) -> Result<()> {
    let out = cmd.output().map_err(io_err(step))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Io {
            step: step.to_owned(),
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
        })
    }
}

/// Starts scripts/run-qemu on an existing overlay, in its own process group.
fn spawn_run_qemu(
    opts: &QemuOptions,
    dir: &Path,
    overlay: &Path,
    serial: &Path,
    sock: &Path,
) -> Result<Child> {
    let mut cmd = Command::new(repo_root().join("scripts/run-qemu"));
    cmd.arg(&opts.image)
        .arg("--overlay")
        .arg(overlay)
        .arg("--serial")
        .arg(serial)
        .arg("--uboot")
        .arg(&opts.uboot)
        .arg("--test-shell")
        .arg(sock);
    if let Some(port) = opts.portal_port {
        cmd.arg("--portal-port").arg(port.to_string());
    }
    if let Some((local, remote)) = opts.udp_relay {
        cmd.arg("--udp-relay").arg(format!("{local}:{remote}"));
    }
    if let Some(base) = &opts.rtc_base {
        cmd.arg("--rtc-base").arg(base);
    }
    // run-qemu must not recreate the overlay we resized: it only creates
    // one when --overlay names no existing file (see scripts/run-qemu).
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(
            fs::File::create(dir.join("qemu.out")).map_err(io_err("qemu.out"))?,
        ))
        .stderr(Stdio::from(
            fs::File::create(dir.join("qemu.err")).map_err(io_err("qemu.err"))?,
        ));
    // own process group, so kill() ends run-qemu and QEMU together
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.spawn().map_err(io_err("starting scripts/run-qemu"))
}

fn unique_dir() -> Result<PathBuf> {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = repo_root()
        .join("build/system-tests")
        .join(format!("vm-{}-{n}", std::process::id()));
    fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
    Ok(dir)
}
