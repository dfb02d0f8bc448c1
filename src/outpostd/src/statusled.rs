//! The sensor's state on the board's activity LED, for the person at the branch who
//! has no console (`docs/operating.md`, "The activity LED").
//!
//! The daemon only picks a kernel LED trigger (`heartbeat`, `timer` with
//! `delay_on`/`delay_off`, or `none` with a fixed `brightness`); the kernel does the
//! blinking, so the pattern keeps running whatever the daemon is busy with.
//!
//! [`Signals`] is the pure part: what the daemon knows (phases, portal answers, the
//! network) reduced to one [`SensorState`]. [`StatusLed`] holds the signals and writes
//! the state's [`Pattern`] to `/sys/class/leds/NAME` when the state changes.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_wire::log::{Phase, PhaseOutcome};

use crate::report::{lock, Reporter};

/// Where the kernel's LED class lives.
pub const LED_CLASS: &str = "/sys/class/leds";

/// What the person at the branch can tell from the LED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SensorState {
    /// Starting up: registration, tunnel, feed, scanner boot.
    Booting,
    /// No interface has an address with a route: the cable or DHCP.
    NoNetwork,
    /// The network is there but the portal (or its tunnel) does not answer.
    NoPortal,
    /// Ready and in touch with the portal.
    Ready,
    /// Something the branch cannot fix: provisioning refused, the scanner failed.
    Failed,
}

impl SensorState {
    pub fn as_str(self) -> &'static str {
        match self {
            SensorState::Booting => "booting",
            SensorState::NoNetwork => "no network",
            SensorState::NoPortal => "no portal",
            SensorState::Ready => "ready",
            SensorState::Failed => "failed",
        }
    }

    /// The pattern shown for the state (the table in `docs/operating.md`).
    pub fn pattern(self) -> Pattern {
        match self {
            // The Pi's device tree starts the LED on `heartbeat`: booting looks the
            // same from power-on until the daemon knows more.
            SensorState::Booting => Pattern::Heartbeat,
            // Mostly dark: a short flash every two seconds.
            SensorState::NoNetwork => Pattern::Blink {
                on: Duration::from_millis(100),
                off: Duration::from_millis(1900),
            },
            // An even, slow blink.
            SensorState::NoPortal => Pattern::Blink {
                on: Duration::from_secs(1),
                off: Duration::from_secs(1),
            },
            SensorState::Ready => Pattern::Steady(true),
            // A fast flicker.
            SensorState::Failed => Pattern::Blink {
                on: Duration::from_millis(100),
                off: Duration::from_millis(100),
            },
        }
    }
}

/// A kernel-driven LED pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// `heartbeat` trigger: a double pulse, faster under load.
    Heartbeat,
    /// `timer` trigger with these delays.
    Blink { on: Duration, off: Duration },
    /// `none` trigger, LED on (full brightness) or off.
    Steady(bool),
}

/// What the daemon knows, as far as the LED is concerned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Signals {
    /// The phase that failed last, until it (or a later one) moves on.
    failed: Option<Phase>,
    /// The last word on the portal: answered (true) or not (false); None before any.
    portal: Option<bool>,
    /// `ready` reached and not failed since.
    ready: bool,
    /// Whether the network is usable; None until first looked at.
    network: Option<bool>,
}

impl Signals {
    /// A phase transition, as printed on the console.
    pub fn phase(&mut self, phase: Phase, outcome: PhaseOutcome) {
        match outcome {
            // The tunnel not coming up is the portal being out of reach (or its
            // gateway): the branch can check its uplink; nothing has failed for good.
            PhaseOutcome::Failed if phase == Phase::WgUp => self.portal = Some(false),
            PhaseOutcome::Failed => {
                self.failed = Some(phase);
                if phase != Phase::Provision {
                    self.ready = false;
                }
            }
            PhaseOutcome::Started | PhaseOutcome::Done | PhaseOutcome::Skipped => {
                // The failed phase is tried again or went through: it is not failed now.
                if self.failed.is_some_and(|f| phase >= f) {
                    self.failed = None;
                }
                match (phase, outcome) {
                    (Phase::WgUp, PhaseOutcome::Done) => self.portal = Some(true),
                    (Phase::Ready, PhaseOutcome::Done) => self.ready = true,
                    // A stack that boots again is not ready until it says so.
                    (Phase::ScannerBoot, PhaseOutcome::Started) => self.ready = false,
                    _ => {}
                }
            }
        }
    }

    /// The portal answered (true) or a request to it failed (false).
    pub fn portal(&mut self, answered: bool) {
        self.portal = Some(answered);
    }

    pub fn network(&mut self, usable: bool) {
        self.network = Some(usable);
    }

    /// The one state shown. A missing network comes first (the person at the branch
    /// can fix it, and the rest follows from it), then a failure, then the portal.
    pub fn state(&self) -> SensorState {
        if self.network == Some(false) {
            SensorState::NoNetwork
        } else if self.failed.is_some() {
            SensorState::Failed
        } else if self.portal == Some(false) {
            SensorState::NoPortal
        } else if self.ready && self.portal == Some(true) {
            SensorState::Ready
        } else {
            SensorState::Booting
        }
    }
}

/// Why a pattern could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum LedError {
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// One LED in the kernel's LED class (`/sys/class/leds/NAME`).
#[derive(Debug, Clone)]
pub struct Led {
    dir: PathBuf,
}

impl Led {
    /// The LED `name` under `class` (normally [`LED_CLASS`]); `None` when the board has
    /// no such LED (QEMU, or a kernel that names it differently).
    pub fn open(class: &Path, name: &str) -> Option<Led> {
        let dir = class.join(name);
        dir.join("trigger").exists().then_some(Led { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn write(&self, file: &str, value: &str) -> Result<(), LedError> {
        let path = self.dir.join(file);
        fs::write(&path, value).map_err(|source| LedError::Write { path, source })
    }

    /// Full brightness: `max_brightness`, or 255 (the kernel clamps) if unreadable.
    fn max_brightness(&self) -> String {
        fs::read_to_string(self.dir.join("max_brightness"))
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            .unwrap_or(255)
            .to_string()
    }

    /// Hands `pattern` to the kernel. The trigger goes first: `timer` creates
    /// `delay_on`/`delay_off` when it is set, and `none` stops any blinking before
    /// the brightness is set.
    pub fn show(&self, pattern: Pattern) -> Result<(), LedError> {
        match pattern {
            Pattern::Heartbeat => self.write("trigger", "heartbeat"),
            Pattern::Blink { on, off } => {
                self.write("trigger", "timer")?;
                self.write("delay_on", &on.as_millis().to_string())?;
                self.write("delay_off", &off.as_millis().to_string())
            }
            Pattern::Steady(lit) => {
                self.write("trigger", "none")?;
                let level = if lit {
                    self.max_brightness()
                } else {
                    "0".into()
                };
                self.write("brightness", &level)
            }
        }
    }
}

struct Inner {
    signals: Signals,
    /// The state last handed to the LED (None: not yet, or the write failed).
    shown: Option<SensorState>,
}

/// The signals and, on a board that has one, the LED showing them. Without an LED it
/// still keeps the state (for the log line), at no cost.
pub struct StatusLed {
    led: Option<Led>,
    inner: Mutex<Inner>,
}

impl StatusLed {
    pub fn new(led: Option<Led>) -> StatusLed {
        StatusLed {
            led,
            inner: Mutex::new(Inner {
                signals: Signals::default(),
                shown: None,
            }),
        }
    }

    /// No LED: signals are kept, nothing is written.
    pub fn none() -> StatusLed {
        StatusLed::new(None)
    }

    pub fn has_led(&self) -> bool {
        self.led.is_some()
    }

    #[cfg(test)]
    pub fn state(&self) -> SensorState {
        lock(&self.inner).signals.state()
    }

    pub fn phase(&self, phase: Phase, outcome: PhaseOutcome) {
        self.update(|s| s.phase(phase, outcome));
    }

    pub fn portal(&self, answered: bool) {
        self.update(|s| s.portal(answered));
    }

    pub fn network(&self, usable: bool) {
        self.update(|s| s.network(usable));
    }

    /// Shows the current state (at start, so a pattern left by an earlier run goes).
    pub fn refresh(&self) {
        self.update(|_| {});
    }

    /// Applies a change and writes the LED when the state differs from what it shows.
    /// A failed write is retried with the next change.
    fn update(&self, change: impl FnOnce(&mut Signals)) {
        let mut inner = lock(&self.inner);
        change(&mut inner.signals);
        let state = inner.signals.state();
        if inner.shown == Some(state) {
            return;
        }
        let Some(led) = &self.led else {
            inner.shown = Some(state);
            return;
        };
        match led.show(state.pattern()) {
            Ok(()) => {
                tracing::info!(led = %led.dir().display(), state = state.as_str(), "status LED");
                inner.shown = Some(state);
            }
            Err(e) => {
                tracing::warn!(error = %e, state = state.as_str(), "cannot set the status LED");
                inner.shown = None;
            }
        }
    }
}

/// Whether the network is usable: an IPv4 route through an interface other than
/// loopback (the kernel adds one with every address on an interface that is up), or
/// an IPv6 default route. `route`/`ipv6_route` are `/proc/net/route` and
/// `/proc/net/ipv6_route`; unreadable files count as no route.
pub fn network_usable(route: &Path, ipv6_route: &Path) -> bool {
    let v4 = fs::read_to_string(route).unwrap_or_default();
    // Header line, then: Iface Destination Gateway Flags ...; RTF_UP is 0x1.
    let has_v4 = v4.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        f.len() > 3
            && f[0] != "lo"
            && u32::from_str_radix(f[3], 16).is_ok_and(|flags| flags & 0x1 != 0)
    });
    if has_v4 {
        return true;
    }
    let v6 = fs::read_to_string(ipv6_route).unwrap_or_default();
    // dest(32 hex) dest_len(hex) src src_len next_hop metric refcnt use flags iface
    v6.lines().any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        f.len() == 10
            && f[0].bytes().all(|b| b == b'0')
            && f[1] == "00"
            && f[9] != "lo"
            && u32::from_str_radix(f[8], 16).is_ok_and(|flags| flags & 0x1 != 0)
    })
}

/// How often the network is looked at.
pub const NETWORK_POLL: Duration = Duration::from_secs(5);

/// Starts the thread that feeds the network signal to the reporter's LED (only with
/// an LED: nothing else uses it).
pub fn spawn_network_watch(reporter: Arc<Reporter>) -> io::Result<()> {
    if !reporter.status().has_led() {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("status-led".into())
        .spawn(move || loop {
            reporter.status().network(network_usable(
                Path::new("/proc/net/route"),
                Path::new("/proc/net/ipv6_route"),
            ));
            std::thread::sleep(NETWORK_POLL);
        })
        .map(|_| ())
}

/// The LED `--status-led` names: a name under [`LED_CLASS`], or a directory path.
pub fn open_named(name: &str) -> Option<Led> {
    if name.contains('/') {
        let path = Path::new(name);
        Led::open(path.parent()?, path.file_name()?.to_str()?)
    } else {
        Led::open(Path::new(LED_CLASS), name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sysfs LED directory as the kernel shows it: `trigger` (the list, the active one
    /// in brackets when read; here just what was written), `brightness`,
    /// `max_brightness`, and `delay_on`/`delay_off` as the timer trigger creates them.
    fn fake_led(class: &Path, name: &str) -> PathBuf {
        let dir = class.join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("trigger"), "none timer [heartbeat] mmc0").unwrap();
        fs::write(dir.join("brightness"), "0").unwrap();
        fs::write(dir.join("max_brightness"), "1").unwrap();
        dir
    }

    fn read(dir: &Path, file: &str) -> String {
        fs::read_to_string(dir.join(file)).unwrap()
    }

    #[test]
    fn patterns_go_to_the_sysfs_files() {
        let t = tempfile::tempdir().unwrap();
        let dir = fake_led(t.path(), "ACT");
        let led = Led::open(t.path(), "ACT").expect("the LED exists");

        led.show(SensorState::NoPortal.pattern()).unwrap();
        assert_eq!(read(&dir, "trigger"), "timer");
        assert_eq!(read(&dir, "delay_on"), "1000");
        assert_eq!(read(&dir, "delay_off"), "1000");

        led.show(SensorState::Ready.pattern()).unwrap();
        assert_eq!(read(&dir, "trigger"), "none");
        assert_eq!(read(&dir, "brightness"), "1", "max_brightness, not 255");

        led.show(SensorState::Booting.pattern()).unwrap();
        assert_eq!(read(&dir, "trigger"), "heartbeat");

        led.show(Pattern::Steady(false)).unwrap();
        assert_eq!(read(&dir, "brightness"), "0");
    }

    #[test]
    fn the_five_states_look_different() {
        let all = [
            SensorState::Booting,
            SensorState::NoNetwork,
            SensorState::NoPortal,
            SensorState::Ready,
            SensorState::Failed,
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a.pattern(), b.pattern(), "{a:?} and {b:?}");
            }
        }
    }

    #[test]
    fn no_led_no_writes() {
        let t = tempfile::tempdir().unwrap();
        assert!(Led::open(t.path(), "ACT").is_none());
        // A name that exists but is not an LED (no trigger file) is no LED either.
        fs::create_dir_all(t.path().join("led0")).unwrap();
        assert!(Led::open(t.path(), "led0").is_none());
        let status = StatusLed::none();
        status.phase(Phase::Ready, PhaseOutcome::Done);
        status.portal(true);
        assert_eq!(status.state(), SensorState::Ready);
        assert!(!status.has_led());
    }

    #[test]
    fn the_led_follows_the_daemon() {
        let t = tempfile::tempdir().unwrap();
        let dir = fake_led(t.path(), "ACT");
        let status = StatusLed::new(Led::open(t.path(), "ACT"));
        let trigger = || read(&dir, "trigger");

        status.refresh();
        assert_eq!(trigger(), "heartbeat", "booting");
        status.network(false);
        assert_eq!(status.state(), SensorState::NoNetwork);
        assert_eq!(read(&dir, "delay_on"), "100");
        assert_eq!(read(&dir, "delay_off"), "1900");
        status.network(true);
        assert_eq!(trigger(), "heartbeat", "a lease: booting again");
        // Registration cannot reach the portal.
        status.portal(false);
        assert_eq!(
            (trigger(), read(&dir, "delay_on")),
            ("timer".into(), "1000".into())
        );
        status.phase(Phase::Provision, PhaseOutcome::Done);
        status.phase(Phase::WgUp, PhaseOutcome::Started);
        status.phase(Phase::WgUp, PhaseOutcome::Done);
        assert_eq!(trigger(), "heartbeat", "tunnel up, scanner still booting");
        status.phase(Phase::ScannerBoot, PhaseOutcome::Started);
        status.phase(Phase::Ready, PhaseOutcome::Done);
        assert_eq!(
            (trigger(), read(&dir, "brightness")),
            ("none".into(), "1".into())
        );
        // The portal stops answering heartbeats, then answers again.
        status.portal(false);
        assert_eq!(status.state(), SensorState::NoPortal);
        status.portal(true);
        assert_eq!(status.state(), SensorState::Ready);
        // The scanner stack fails, and recovers.
        status.phase(Phase::ScannerBoot, PhaseOutcome::Failed);
        assert_eq!(
            (trigger(), read(&dir, "delay_on")),
            ("timer".into(), "100".into())
        );
        assert_eq!(read(&dir, "delay_off"), "100");
        status.phase(Phase::ScannerBoot, PhaseOutcome::Started);
        assert_eq!(trigger(), "heartbeat");
        status.phase(Phase::Ready, PhaseOutcome::Done);
        assert_eq!(trigger(), "none");
    }

    #[test]
    fn the_same_state_is_not_written_again() {
        let t = tempfile::tempdir().unwrap();
        let dir = fake_led(t.path(), "ACT");
        let status = StatusLed::new(Led::open(t.path(), "ACT"));
        status.phase(Phase::WgUp, PhaseOutcome::Done);
        status.phase(Phase::Ready, PhaseOutcome::Done);
        assert_eq!(read(&dir, "trigger"), "none");
        // Someone (or an earlier run) changed it: a repeat of the same state leaves
        // it, as the daemon writes on changes only; `refresh` at start covers restarts.
        fs::write(dir.join("trigger"), "mmc0").unwrap();
        status.portal(true);
        assert_eq!(read(&dir, "trigger"), "mmc0");
    }

    #[test]
    fn a_failed_write_is_retried_with_the_next_change() {
        let t = tempfile::tempdir().unwrap();
        let dir = fake_led(t.path(), "ACT");
        let status = StatusLed::new(Led::open(t.path(), "ACT"));
        // The `timer` trigger's files are missing until it is set; make its delay file
        // a directory so the write fails, as with a kernel without ledtrig-timer.
        fs::create_dir(dir.join("delay_on")).unwrap();
        status.portal(false);
        assert_eq!(status.state(), SensorState::NoPortal);
        fs::remove_dir(dir.join("delay_on")).unwrap();
        status.network(true);
        assert_eq!(read(&dir, "delay_on"), "1000", "written on the next change");
    }

    #[test]
    fn failures_and_what_clears_them() {
        let mut s = Signals::default();
        s.phase(Phase::Provision, PhaseOutcome::Started);
        assert_eq!(s.state(), SensorState::Booting);
        // The portal refused the enrollment token: a failure, retried slowly.
        s.phase(Phase::Provision, PhaseOutcome::Failed);
        assert_eq!(s.state(), SensorState::Failed);
        s.portal(true);
        assert_eq!(s.state(), SensorState::Failed, "an answer is not a fix");
        // No network outranks a failure: the cable first.
        s.network(false);
        assert_eq!(s.state(), SensorState::NoNetwork);
        s.network(true);
        s.phase(Phase::Provision, PhaseOutcome::Done);
        assert_eq!(s.state(), SensorState::Booting);
        // The tunnel not coming up is a portal problem, not a failure.
        s.phase(Phase::WgUp, PhaseOutcome::Failed);
        assert_eq!(s.state(), SensorState::NoPortal);
        s.phase(Phase::WgUp, PhaseOutcome::Done);
        // A feed that fails its checks fails the sensor until a later phase runs.
        s.phase(Phase::FeedReady, PhaseOutcome::Failed);
        assert_eq!(s.state(), SensorState::Failed);
        s.phase(Phase::Provision, PhaseOutcome::Done);
        assert_eq!(
            s.state(),
            SensorState::Failed,
            "an earlier phase clears nothing"
        );
        s.phase(Phase::FeedReady, PhaseOutcome::Done);
        s.phase(Phase::Ready, PhaseOutcome::Done);
        assert_eq!(s.state(), SensorState::Ready);
        // Scanner disabled: ready with the scanner phases skipped.
        let mut s = Signals::default();
        s.phase(Phase::WgUp, PhaseOutcome::Done);
        s.phase(Phase::ScannerBoot, PhaseOutcome::Skipped);
        s.phase(Phase::Ready, PhaseOutcome::Done);
        assert_eq!(s.state(), SensorState::Ready);
    }

    #[test]
    fn routes_decide_the_network() {
        let t = tempfile::tempdir().unwrap();
        let (v4, v6) = (t.path().join("route"), t.path().join("ipv6_route"));
        let header =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";
        fs::write(&v4, header).unwrap();
        fs::write(&v6, "").unwrap();
        assert!(!network_usable(&v4, &v6), "no routes");
        assert!(!network_usable(&t.path().join("gone"), &v6), "unreadable");
        // A link route from a static address without a gateway is enough (the portal
        // may be on the branch LAN).
        fs::write(
            &v4,
            format!("{header}eth0\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"),
        )
        .unwrap();
        assert!(network_usable(&v4, &v6));
        // Loopback and routes that are down do not count.
        fs::write(
            &v4,
            format!(
                "{header}lo\t0000007F\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0\n\
                 eth0\t00000000\t0102A8C0\t0002\t0\t0\t0\t00000000\t0\t0\t0\n"
            ),
        )
        .unwrap();
        assert!(!network_usable(&v4, &v6));
        // An IPv6 default route (router advertisement) is enough.
        fs::write(
            &v6,
            "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth0\n\
             00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n",
        )
        .unwrap();
        assert!(network_usable(&v4, &v6));
    }
}
