//! Command line. The image starts `outpostd --config /boot/outpost.toml --data-dir
//! /data/outpost --executor openvas`; the other flags tune paths and timing.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

pub const USAGE: &str = "\
usage: outpostd --config PATH --data-dir DIR [options]

  --config PATH               provisioning file (outpost.toml)
  --data-dir DIR              identity, keys and report spool
  --heartbeat-interval DUR    override the portal's heartbeat interval
  --claim-interval DUR        override the portal's job claim interval
  --executor KIND             how jobs run: dry-run (simulated, no probe is sent; the
                              default) or openvas (boot and supervise the OpenVAS stack
                              and scan through ospd-openvas)
  --dry-run-duration DUR      how long a dry-run job takes (default 10s)
  --feed-dir DIR              openvas: the feed (plugins/, notus/products/,
                              notus/advisories/) checked and loaded (default /data/feeds)
  --ospd-socket PATH          openvas: ospd-openvas' OSP socket
                              (default /run/ospd/ospd-openvas.sock)
  --scanner-log-dir DIR       openvas: one log file per scanner component
                              (default: their output goes to stderr)
  --redis-dir DIR             openvas: redis' VT cache (default /data/redis)
  --unsigned-feed             openvas: do not check the feed's signed sha256sums
                              (for the unsigned demo feed)
  --feed-key PATH             openvas: the portal's feed key(s); when the file exists,
                              feed_sync fetches the portal's release into --feed-dir
                              (default /usr/share/outpost/feed-keys.pub)
  --ospd-gone-grace DUR       openvas: how long ospd-openvas may be unreachable during a
                              scan before the job fails (default 2m)
  --bundle-keys PATH          trusted update-bundle keys
                              (default /usr/share/outpost/bundle-keys.pub)
  --release-file PATH         this image's VERSION and BOARD (default /etc/outpost-release)
  --boot-dir DIR              the mounted boot partition: A/B boot state and the slots'
                              boot files (default /boot)
  --boot-disk DEV             the disk holding the slots (default: the disk of the
                              partition mounted at --boot-dir)
  --boot-backend NAME         A/B boot control: uboot-file-env (the U-Boot script's
                              state files; QEMU, Pi 4; the default) or rpi-tryboot (the
                              Pi 5 firmware's autoboot.txt and reboot '0 tryboot')
  --config-error-delay DUR    wait before exiting on a bad outpost.toml (default 10s)
  --auth-retry-interval DUR   retry delay when the portal refuses the token (default 60s)
  --set-clock                 set the system clock: from the time floor at start (build
                              time, the CA's notBefore, the time kept in the data dir)
                              and from the portal's time (the image passes it; without
                              it the clock is never touched)
  --watchdog PATH             pet this hardware watchdog while the daemon is alive
                              (the image passes /dev/watchdog)
  --status-led NAME           show the sensor's state on this LED: a name under
                              /sys/class/leds (the Pi's ACT) or an LED directory; an
                              LED that does not exist is left alone (default: none)
  --restart2 ARG              restart the machine now with reboot(2) RESTART2 and ARG
                              (for init's shutdown action, after it unmounted all)
  -h, --help                  this text
  -V, --version               print the version

DUR is a number of seconds or a number with ms, s, m or h (e.g. 500ms, 30s, 5m).
Logs go to stderr; set OUTPOST_LOG (e.g. `debug` or `outpostd=debug,ureq=warn`).";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutorKind {
    DryRun,
    Openvas,
}

/// Paths and tuning of the openvas executor.
#[derive(Debug, Clone, PartialEq)]
pub struct ScannerArgs {
    pub feed_dir: PathBuf,
    pub ospd_socket: PathBuf,
    pub log_dir: Option<PathBuf>,
    pub redis_dir: PathBuf,
    pub unsigned_feed: bool,
    pub ospd_gone_grace: Duration,
    /// Trusted feed release keys; no file, no network sync.
    pub feed_key: PathBuf,
}

impl Default for ScannerArgs {
    fn default() -> Self {
        let device = outpost_scanner::StackConfig::device();
        ScannerArgs {
            feed_dir: "/data/feeds".into(),
            ospd_socket: device.ospd_socket,
            log_dir: device.log_dir,
            redis_dir: device.redis_data_dir,
            unsigned_feed: !device.verify_feed_signatures,
            ospd_gone_grace: crate::executor::DEFAULT_GONE_GRACE,
            feed_key: "/usr/share/outpost/feed-keys.pub".into(),
        }
    }
}

/// Where the update machinery finds its inputs (`docs/updates.md`, device flow).
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateArgs {
    pub bundle_keys: PathBuf,
    pub release_file: PathBuf,
    pub boot_dir: PathBuf,
    pub boot_disk: Option<PathBuf>,
    pub boot_backend: crate::update::BootBackend,
}

impl Default for UpdateArgs {
    fn default() -> Self {
        UpdateArgs {
            bundle_keys: crate::update::DEFAULT_KEYS.into(),
            release_file: crate::release::DEFAULT_RELEASE_FILE.into(),
            boot_dir: "/boot".into(),
            boot_disk: None,
            boot_backend: crate::update::BootBackend::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Args {
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub heartbeat_interval: Option<Duration>,
    pub claim_interval: Option<Duration>,
    pub executor: ExecutorKind,
    pub dry_run_duration: Duration,
    pub config_error_delay: Duration,
    pub auth_retry_interval: Duration,
    pub scanner: ScannerArgs,
    pub update: UpdateArgs,
    pub set_clock: bool,
    pub watchdog: Option<PathBuf>,
    pub status_led: Option<String>,
}

// Parsed once per process; boxing `Args` would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq)]
pub enum Command {
    Run(Args),
    /// `--restart2 ARG`
    Restart2(String),
    Help,
    Version,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Parse(#[from] lexopt::Error),
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("{flag}: {value:?} is not a duration such as 30s or 500ms")]
    BadDuration { flag: &'static str, value: String },
    #[error("--executor: unknown executor {0:?} (available: dry-run, openvas)")]
    BadExecutor(String),
    #[error("--boot-backend: unknown backend {0:?} (available: {names})", names = crate::update::BootBackend::NAMES)]
    BadBootBackend(String),
}

pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, CliError> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_iter(args);
    let mut config = None;
    let mut data_dir = None;
    let mut heartbeat_interval = None;
    let mut claim_interval = None;
    let mut executor = ExecutorKind::DryRun;
    let mut dry_run_duration = Duration::from_secs(10);
    let mut config_error_delay = Duration::from_secs(10);
    let mut auth_retry_interval = Duration::from_secs(60);
    let mut scanner = ScannerArgs::default();
    let mut update = UpdateArgs::default();
    let mut set_clock = false;
    let mut watchdog = None;
    let mut status_led = None;

    while let Some(arg) = p.next()? {
        match arg {
            Long("config") => config = Some(PathBuf::from(p.value()?)),
            Long("data-dir") => data_dir = Some(PathBuf::from(p.value()?)),
            Long("heartbeat-interval") => {
                heartbeat_interval = Some(duration(&mut p, "--heartbeat-interval")?)
            }
            Long("claim-interval") => claim_interval = Some(duration(&mut p, "--claim-interval")?),
            Long("dry-run-duration") => dry_run_duration = duration(&mut p, "--dry-run-duration")?,
            Long("config-error-delay") => {
                config_error_delay = duration(&mut p, "--config-error-delay")?
            }
            Long("auth-retry-interval") => {
                auth_retry_interval = duration(&mut p, "--auth-retry-interval")?
            }
            Long("executor") => {
                let v = p.value()?.string()?;
                executor = match v.as_str() {
                    "dry-run" => ExecutorKind::DryRun,
                    "openvas" => ExecutorKind::Openvas,
                    _ => return Err(CliError::BadExecutor(v)),
                };
            }
            Long("feed-dir") => scanner.feed_dir = PathBuf::from(p.value()?),
            Long("ospd-socket") => scanner.ospd_socket = PathBuf::from(p.value()?),
            Long("scanner-log-dir") => scanner.log_dir = Some(PathBuf::from(p.value()?)),
            Long("redis-dir") => scanner.redis_dir = PathBuf::from(p.value()?),
            Long("unsigned-feed") => scanner.unsigned_feed = true,
            Long("feed-key") => scanner.feed_key = PathBuf::from(p.value()?),
            Long("ospd-gone-grace") => {
                scanner.ospd_gone_grace = duration(&mut p, "--ospd-gone-grace")?
            }
            Long("bundle-keys") => update.bundle_keys = PathBuf::from(p.value()?),
            Long("release-file") => update.release_file = PathBuf::from(p.value()?),
            Long("boot-dir") => update.boot_dir = PathBuf::from(p.value()?),
            Long("boot-disk") => update.boot_disk = Some(PathBuf::from(p.value()?)),
            Long("boot-backend") => {
                let v = p.value()?.string()?;
                update.boot_backend =
                    crate::update::BootBackend::parse(&v).ok_or(CliError::BadBootBackend(v))?;
            }
            Long("restart2") => return Ok(Command::Restart2(p.value()?.string()?)),
            Long("set-clock") => set_clock = true,
            Long("watchdog") => watchdog = Some(PathBuf::from(p.value()?)),
            Long("status-led") => status_led = Some(p.value()?.string()?),
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            _ => return Err(arg.unexpected().into()),
        }
    }
    Ok(Command::Run(Args {
        config: config.ok_or(CliError::Missing("--config PATH"))?,
        data_dir: data_dir.ok_or(CliError::Missing("--data-dir DIR"))?,
        heartbeat_interval,
        claim_interval,
        executor,
        dry_run_duration,
        config_error_delay,
        auth_retry_interval,
        scanner,
        update,
        set_clock,
        watchdog,
        status_led,
    }))
}

fn duration(p: &mut lexopt::Parser, flag: &'static str) -> Result<Duration, CliError> {
    use lexopt::ValueExt as _;
    let v = p.value()?.string()?;
    parse_duration(&v).ok_or(CliError::BadDuration { flag, value: v })
}

/// `30`, `30s`, `500ms`, `5m`, `1h`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Command, CliError> {
        parse(
            std::iter::once("outpostd")
                .chain(args.iter().copied())
                .map(OsString::from),
        )
    }

    #[test]
    fn device_command_line() {
        let Command::Run(a) = run(&[
            "--config",
            "/boot/outpost.toml",
            "--data-dir",
            "/data/outpost",
        ])
        .unwrap() else {
            panic!("not a run")
        };
        assert_eq!(a.config, PathBuf::from("/boot/outpost.toml"));
        assert_eq!(a.data_dir, PathBuf::from("/data/outpost"));
        assert_eq!(a.heartbeat_interval, None);
        assert_eq!(a.executor, ExecutorKind::DryRun);
        assert_eq!(a.config_error_delay, Duration::from_secs(10));
        assert_eq!(a.update, UpdateArgs::default());
        assert_eq!(
            a.update.bundle_keys,
            PathBuf::from("/usr/share/outpost/bundle-keys.pub")
        );
    }

    #[test]
    fn update_paths() {
        let Command::Run(a) = run(&[
            "--config=c",
            "--data-dir=d",
            "--bundle-keys=/k.pub",
            "--release-file=/r",
            "--boot-dir=/b",
            "--boot-disk=/dev/vda",
        ])
        .unwrap() else {
            panic!("not a run")
        };
        assert_eq!(
            a.update,
            UpdateArgs {
                bundle_keys: "/k.pub".into(),
                release_file: "/r".into(),
                boot_dir: "/b".into(),
                boot_disk: Some("/dev/vda".into()),
                boot_backend: crate::update::BootBackend::UbootFileEnv,
            }
        );
    }

    #[test]
    fn boot_backend_and_restart2() {
        let Command::Run(a) = run(&[
            "--config=c",
            "--data-dir=d",
            "--boot-backend",
            "rpi-tryboot",
        ])
        .unwrap() else {
            panic!("not a run")
        };
        assert_eq!(
            a.update.boot_backend,
            crate::update::BootBackend::RpiTryboot
        );
        let e = run(&["--config=c", "--data-dir=d", "--boot-backend=grub"]).unwrap_err();
        assert!(e.to_string().contains("uboot-file-env, rpi-tryboot"), "{e}");
        // The shutdown action's call needs no --config.
        assert_eq!(
            run(&["--restart2", "0 tryboot"]).unwrap(),
            Command::Restart2("0 tryboot".into())
        );
    }

    #[test]
    fn tuning_flags() {
        let Command::Run(a) = run(&[
            "--config=c",
            "--data-dir=d",
            "--heartbeat-interval",
            "2s",
            "--claim-interval",
            "500ms",
            "--executor",
            "dry-run",
            "--dry-run-duration",
            "3",
            "--config-error-delay",
            "0",
        ])
        .unwrap() else {
            panic!("not a run")
        };
        assert_eq!(a.heartbeat_interval, Some(Duration::from_secs(2)));
        assert_eq!(a.claim_interval, Some(Duration::from_millis(500)));
        assert_eq!(a.dry_run_duration, Duration::from_secs(3));
        assert_eq!(a.config_error_delay, Duration::ZERO);
    }

    #[test]
    fn errors_name_the_flag() {
        let e = run(&["--data-dir", "d"]).unwrap_err();
        assert_eq!(e.to_string(), "missing --config PATH");
        let e = run(&[
            "--config",
            "c",
            "--data-dir",
            "d",
            "--claim-interval",
            "soon",
        ])
        .unwrap_err();
        assert!(e.to_string().starts_with("--claim-interval:"), "{e}");
        let e = run(&["--config", "c", "--data-dir", "d", "--executor", "nmap"]).unwrap_err();
        assert!(e.to_string().contains("dry-run, openvas"), "{e}");
        assert!(run(&["--bogus"]).is_err());
        assert_eq!(run(&["--help"]).unwrap(), Command::Help);
    }

    #[test]
    fn openvas_mode_and_its_paths() {
        let Command::Run(a) =
            run(&["--config", "c", "--data-dir", "d", "--executor", "openvas"]).unwrap()
        else {
            panic!("not a run")
        };
        assert_eq!(a.executor, ExecutorKind::Openvas);
        assert_eq!(a.scanner.feed_dir, PathBuf::from("/data/feeds"));
        assert_eq!(
            a.scanner.ospd_socket,
            PathBuf::from("/run/ospd/ospd-openvas.sock")
        );
        assert!(!a.scanner.unsigned_feed);
        assert_eq!(a.scanner.ospd_gone_grace, Duration::from_secs(120));
        assert_eq!(
            a.scanner.feed_key,
            PathBuf::from("/usr/share/outpost/feed-keys.pub")
        );

        let Command::Run(a) = run(&[
            "--config=c",
            "--data-dir=d",
            "--executor=openvas",
            "--feed-dir=/srv/feed",
            "--ospd-socket=/tmp/o.sock",
            "--scanner-log-dir=/var/log/outpost",
            "--redis-dir=/tmp/redis",
            "--unsigned-feed",
            "--ospd-gone-grace=30s",
            "--feed-key=/k/feed.pub",
        ])
        .unwrap() else {
            panic!("not a run")
        };
        assert_eq!(a.scanner.feed_dir, PathBuf::from("/srv/feed"));
        assert_eq!(a.scanner.ospd_socket, PathBuf::from("/tmp/o.sock"));
        assert_eq!(a.scanner.log_dir, Some(PathBuf::from("/var/log/outpost")));
        assert_eq!(a.scanner.redis_dir, PathBuf::from("/tmp/redis"));
        assert!(a.scanner.unsigned_feed);
        assert_eq!(a.scanner.ospd_gone_grace, Duration::from_secs(30));
        assert_eq!(a.scanner.feed_key, PathBuf::from("/k/feed.pub"));
    }

    #[test]
    fn status_led_is_off_unless_named() {
        let Command::Run(a) = run(&["--config=c", "--data-dir=d"]).unwrap() else {
            panic!("not a run")
        };
        assert_eq!(a.status_led, None);
        let Command::Run(a) = run(&["--config=c", "--data-dir=d", "--status-led", "ACT"]).unwrap()
        else {
            panic!("not a run")
        };
        assert_eq!(a.status_led.as_deref(), Some("ACT"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("-1"), None);
        assert_eq!(parse_duration("1.5s"), None);
        assert_eq!(parse_duration(""), None);
    }
}
