//! `outpostd`, the Outpost device daemon. See the crate's modules for each job; `run`
//! wires them together: provision, identity, registration, then the heartbeat and log
//! threads and the job claim loop (on the main thread).
//!
//! Console contract (stdout, the serial console on the device; tests match these):
//! - `outpost: phase provision failed: REASON`: `outpost.toml` is missing or invalid
//!   (REASON names the field); the daemon waits `--config-error-delay` and exits 2.
//! - `outpost[NAME]: phase PHASE started|done|failed: REASON`: phase transitions.
//! - `outpost[NAME]: registered as SENSOR_ID` (fresh enrollment) or
//!   `outpost[NAME]: registered as SENSOR_ID (stored identity reused)` (restart).
//! - `outpost[NAME]: job ID: ...`: claim, finish, cancel, failure, report upload.
//! - `outpost[NAME]: WireGuard key rotated; reconnecting`: an operator-requested key
//!   rotation is stored; the daemon exits with code 3 and init respawns it on the new
//!   key. A failed rotation prints `WireGuard key rotation failed, keeping ...: REASON`.
//! - With `--executor openvas`, after `wg_up`: `phase feed_sync skipped|failed`,
//!   `phase feed_ready done|failed`, `phase scanner_boot started|done|failed`,
//!   `phase ready done: ospd-openvas loaded N VTs in S s`, each with its reason, plus
//!   `scanner: ...` lines for the stack's processes. Jobs are claimed only once `ready`
//!   is reached, and again only after a restarted stack has reloaded its VTs.
//!
//! - `outpost[NAME]: LED NAME shows the sensor's state (docs/operating.md)`: with
//!   `--status-led` on a board that has the LED (`statusled`).
//! - `outpost[NAME]: updates: ...`: whether this sensor takes update jobs, and why not;
//!   `outpost[NAME]: health check passed: slot X marked good` once the boot is committed;
//!   update progress and outcomes as `job ID: update ...` lines (`docs/updates.md`).
//!
//! Diagnostics go to stderr through `tracing`, filtered by `OUTPOST_LOG`.

mod api;
mod backoff;
mod cli;
mod clock;
mod enroll;
mod executor;
mod feedwant;
mod fsutil;
mod health;
mod heartbeat;
mod identity;
mod jobs;
mod logship;
mod metrics;
mod reboot;
mod register;
mod release;
mod report;
mod results;
mod ring;
mod rotate;
mod scanner;
mod scope;
mod spool;
mod statusled;
mod sysfacts;
mod transport;
mod update;
mod watchdog;
mod wg;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use outpost_wire::log::{Phase, PhaseOutcome};
use outpost_wire::provision::Provision;

use crate::api::PortalClient;
use crate::cli::{Args, Command, ExecutorKind};
use crate::executor::{DryRunExecutor, JobExecutor, OpenvasExecutor};
use crate::release::{BootInfo, Release};
use crate::report::{Console, Reporter};
use crate::transport::{Transport, UreqTransport};
use crate::update::{Updater, UpdaterConfig};

/// An error already printed on the console in plain words; `main` only sets the code.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Reported(String);

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<Reported>() => ExitCode::from(2),
        Err(e) => {
            eprintln!("outpostd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args = match cli::parse(std::env::args_os()).context("bad command line (try --help)")? {
        Command::Run(a) => a,
        Command::Help => {
            println!("{}", cli::USAGE);
            return Ok(());
        }
        Command::Version => {
            println!("outpostd {}", register::AGENT_VERSION);
            return Ok(());
        }
        Command::Restart2(arg) => {
            reboot::restart2(&arg).with_context(|| format!("restart with {arg:?}"))?;
            return Ok(());
        }
    };
    init_tracing();

    // The LED first, so even a broken outpost.toml shows on it.
    let status = status_led(&args);

    // Validate the provisioning file before any network I/O.
    let provision = match Provision::load(&args.config) {
        Ok(p) => p,
        Err(e) => {
            status.phase(Phase::Provision, PhaseOutcome::Failed);
            return Err(provisioning_failed(&args, None, &e.to_string()));
        }
    };
    let has_led = status.has_led();
    let reporter =
        Arc::new(Reporter::new(&provision.name, Console::Stdout).with_status_led(status));
    if let (true, Some(name)) = (has_led, &args.status_led) {
        reporter.say(&format!(
            "LED {name} shows the sensor's state (docs/operating.md)"
        ));
        if let Err(e) = statusled::spawn_network_watch(reporter.clone()) {
            tracing::warn!(error = %e, "cannot start the network watch for the status LED");
        }
    }
    reporter.phase(Phase::Provision, PhaseOutcome::Started, None);

    // The pinned CA is checked before anything is written to the data directory.
    let transport: Arc<dyn Transport> = Arc::new(
        UreqTransport::new(&provision.portal_url, &provision.ca_cert_pem)
            .map_err(|e| provisioning_failed(&args, Some(&reporter), &e.to_string()))?,
    );
    let data = identity::DataDir::open(&args.data_dir)
        .map_err(|e| provisioning_failed(&args, Some(&reporter), &e.to_string()))?;
    let (key, created) = identity::load_or_create_key(&data)
        .map_err(|e| provisioning_failed(&args, Some(&reporter), &e.to_string()))?;
    if created {
        reporter.say(&format!(
            "generated the device WireGuard key (public {})",
            key.public_b64()
        ));
    }
    let spool = spool::Spool::open(&data.spool_dir())
        .map_err(|e| provisioning_failed(&args, Some(&reporter), &e.to_string()))?;

    // Before the first certificate check and before the tunnel: a board without a
    // battery-backed clock starts in 1970 (see clock.rs).
    let clock = Arc::new(clock::TimeKeeper::new(
        Box::new(clock::SystemWallClock {
            may_set: args.set_clock,
        }),
        data.root().join("time-floor.json"),
        &[
            clock::build_time(Path::new(clock::BUILD_ID_FILE)),
            clock::ca_not_before(&provision.ca_cert_pem),
        ],
    ));
    match clock.apply_floor() {
        clock::FloorOutcome::Fine => {}
        clock::FloorOutcome::Raised { from, to } => reporter.say(&format!(
            "clock was {}, behind the time floor: set to {}",
            clock::iso(from),
            clock::iso(to)
        )),
        clock::FloorOutcome::Behind { now, floor, why } => {
            let line = format!(
                "clock is {}, behind the time floor {}, and was not set: {why}",
                clock::iso(now),
                clock::iso(floor)
            );
            if args.set_clock {
                reporter.say(&line);
            } else {
                tracing::warn!("{line}");
            }
        }
    }

    // The hardware watchdog is armed before the first network wait: a board that hangs
    // while its uplink or the portal is down must reset too. The start-up waits tick on
    // every retry; the heartbeat loop takes over below with its own budget.
    let alive = watchdog::Liveness::new(watchdog::STARTUP_BUDGET);
    alive.tick();
    if let Some(path) = &args.watchdog {
        match watchdog::start(path, alive.clone()) {
            Ok(()) => reporter.say(&format!(
                "watchdog {} armed: the board resets {} s after the daemon stops making progress",
                path.display(),
                watchdog::TIMEOUT.as_secs()
            )),
            Err(e) => reporter.say(&format!(
                "watchdog {} not armed ({e}): a hang will need a power cycle",
                path.display()
            )),
        }
    }

    let reg = enroll::ensure_registered(
        &data,
        &key,
        &provision,
        transport.as_ref(),
        &reporter,
        args.auth_retry_interval,
        &mut |d| alive.pause(d),
    )
    .map_err(|e| provisioning_failed(&args, Some(&reporter), &e.to_string()))?;
    reporter.phase(Phase::Provision, PhaseOutcome::Done, None);
    report_recreated_data(&data, &reporter);

    // What runs, and what became of an update pending across the last reboot: decided
    // before anything marks this slot good (see update::boot).
    let release = Release::load(&args.update.release_file);
    let boot_info = BootInfo::load(Path::new(release::DEFAULT_CMDLINE));
    let running = heartbeat::Running {
        firmware_version: release.version.clone(),
        boot_slot: boot_info.slot.map(release::wire_slot),
    };
    let updater = Arc::new(updater(&args, &data, release, boot_info, &reg));
    reporter.say(&updater.describe());
    updater.resolve_at_start(&reporter);

    let heartbeat_every = args
        .heartbeat_interval
        .unwrap_or(Duration::from_secs(reg.heartbeat_interval_s.into()))
        .max(Duration::from_millis(100));
    let claim_every = args
        .claim_interval
        .unwrap_or(Duration::from_secs(reg.claim_interval_s.into()))
        .max(Duration::from_millis(100));
    // Every control request after registration travels inside the WireGuard tunnel when
    // the portal runs a gateway; `_tunnel` keeps it alive for the daemon's lifetime.
    let (transport, _tunnel) = match &reg.tunnel {
        Some(t) => {
            let mut collector = metrics::MetricsCollector::new(data.root());
            let mut sample = move || collector.collect();
            let tunnel = wg::bring_up(
                &wg::Credentials {
                    key: &key,
                    ca_pem: &provision.ca_cert_pem,
                    api_key: &reg.api_key,
                },
                t,
                &reporter,
                &running,
                &mut sample,
                &alive,
            )
            .map_err(|e| {
                reporter.phase(Phase::WgUp, PhaseOutcome::Failed, Some(&e.to_string()));
                Reported(e.to_string())
            })?;
            // The tunnel's handshakes now carry timestamps: reserve past them.
            if let Err(e) = clock.save() {
                tracing::warn!(error = %e, "cannot keep the time floor");
            }
            (tunnel.transport, Some(tunnel.device))
        }
        None => {
            reporter.say(
                "the portal runs no WireGuard gateway: control traffic goes over TLS directly",
            );
            (transport, None)
        }
    };
    let client = PortalClient::new(transport, reg.api_key.clone());
    let control = Arc::new(jobs::JobControl::default());
    let contact = Arc::new(health::PortalContact::default());

    // `[scanner] enabled = false`: no OpenVAS stack and no scans; the sensor is healthy
    // (and updatable) as soon as the portal answers through the tunnel.
    let scans = provision.scanner_enabled;
    let run_scanner = scans && args.executor == ExecutorKind::Openvas;
    let gate = Arc::new(if run_scanner {
        scanner::ScanGate::closed()
    } else {
        scanner::ScanGate::open()
    });
    if !scans {
        let why = "scanner disabled in outpost.toml ([scanner] enabled = false)";
        for phase in [Phase::FeedSync, Phase::FeedReady, Phase::ScannerBoot] {
            reporter.phase(phase, PhaseOutcome::Skipped, Some(why));
        }
        reporter.phase(
            Phase::Ready,
            PhaseOutcome::Done,
            Some("no scanner: control and updates only"),
        );
    }
    // Commit this boot (A/B) once healthy: the portal answering, and in scanner mode the
    // scanner `ready`.
    health::spawn_commit(
        gate.clone(),
        contact.clone(),
        updater.clone(),
        client.clone(),
        reporter.clone(),
    );
    let executor: Arc<dyn JobExecutor> = match args.executor {
        ExecutorKind::DryRun => {
            reporter.say("executor: dry run (jobs are simulated; no probe is sent)");
            Arc::new(DryRunExecutor::new(args.dry_run_duration))
        }
        ExecutorKind::Openvas => {
            let scope = scope::Scope::new(&provision.scope).context("scan scope")?;
            if provision.scope.is_empty() {
                reporter.message(
                    outpost_wire::log::Level::Warn,
                    "outpost.toml sets no [scope] allowed: every scan job will be refused",
                );
            } else {
                reporter.say(&format!(
                    "executor: openvas, scope {}",
                    provision.scope.join(", ")
                ));
            }
            Arc::new(
                OpenvasExecutor::new(
                    outpost_osp::OspClient::new(&args.scanner.ospd_socket),
                    scope,
                    args.scanner.ospd_gone_grace,
                )
                .with_result_log(spool.results().clone()),
            )
        }
    };

    {
        let clock = clock.clone();
        std::thread::Builder::new()
            .name("clock".into())
            .spawn(move || loop {
                std::thread::sleep(clock::SAVE_EVERY);
                if let Err(e) = clock.save() {
                    tracing::warn!(error = %e, "cannot keep the time floor");
                }
            })
            .context("starting the clock thread")?;
    }
    {
        let client = client.clone();
        let reporter = reporter.clone();
        std::thread::Builder::new()
            .name("log".into())
            .spawn(move || logship::run(client, &reporter))
            .context("starting the log thread")?;
    }
    // From here the heartbeat loop keeps the watchdog fed; its budget is the interval
    // plus the worst case of one request (ureq's per-step timeouts).
    alive.set_budget(heartbeat_every + Duration::from_secs(180));
    alive.tick();
    // The heartbeat notes the portal's wish for another feed release; the scanner's feed
    // check takes it.
    let feed_want = Arc::new(feedwant::FeedWant::default());
    {
        let mut collector = metrics::MetricsCollector::new(data.root());
        let beat = heartbeat::Heartbeat {
            client: client.clone(),
            control: control.clone(),
            reporter: reporter.clone(),
            metrics: Box::new(move || (collector.collect(), metrics::uptime_s())),
            rotation: reg.tunnel.is_some().then(|| rotate::Rotation {
                data: data.clone(),
                reg: reg.clone(),
            }),
            running,
            contact,
            clock: args.set_clock.then(|| clock.clone()),
            alive: Some(alive),
            // Only a sensor that syncs feeds reports them (and heeds the portal's wish).
            feed: (run_scanner && args.scanner.feed_key.is_file()).then(|| feedwant::FeedWatch {
                root: args.scanner.feed_dir.clone(),
                want: feed_want.clone(),
            }),
        };
        std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || beat.run(heartbeat_every))
            .context("starting the heartbeat thread")?;
    }

    // After the heartbeat and log threads, so the portal sees the scanner boot live.
    if run_scanner {
        scanner::boot::spawn(
            boot_config(&args.scanner, &provision, &client, feed_want),
            reporter.clone(),
            gate.clone(),
        )
        .context("starting the scanner boot thread")?;
    }

    let mut worker = jobs::Worker {
        client,
        executor,
        spool,
        control,
        reporter,
        settings: jobs::JobSettings {
            poll_interval: Duration::from_millis(500),
            // Progress rides at heartbeat pace; cancellation also arrives with heartbeats.
            status_interval: heartbeat_every,
            slow_retry: args.auth_retry_interval,
        },
        gate,
        scans,
        updater: Some(updater),
        reboot_pending: false,
        sleep: Box::new(std::thread::sleep),
    };
    worker.claim_loop(claim_every);
    Ok(())
}

/// The updater in the device layout: the board's boot backend (`--boot-backend`) over
/// `--boot-dir`, the slots on the disk that holds it, and init's reboot (with the
/// backend's restart argument, if any).
fn updater(
    args: &Args,
    data: &identity::DataDir,
    release: Release,
    mut boot_info: BootInfo,
    reg: &identity::Registration,
) -> Updater {
    let u = &args.update;
    let device = update::device_boot(
        u.boot_backend,
        &u.boot_dir,
        u.boot_disk.clone(),
        Path::new(update::BOOTLOADER_DT),
    );
    if let Some(trial) = device.trial {
        boot_info.trial = trial;
    }
    tracing::info!(
        backend = u.boot_backend.as_str(),
        on_device = device.on_device,
        "boot control"
    );
    let rebooter = reboot::Rebooter::device();
    Updater::new(UpdaterConfig {
        data_dir: data.root().to_path_buf(),
        keys_file: u.bundle_keys.clone(),
        release,
        boot_info,
        boot: device.control,
        on_device: device.on_device,
        slots: device.slots,
        healthy_flag: update::HEALTHY_FLAG.into(),
        reboot: Box::new(move |action| rebooter.reboot(action)),
        boot_id: update::boot_id(Path::new(update::BOOT_ID_FILE)),
        progress_interval: Duration::from_secs(reg.heartbeat_interval_s.max(1).into()),
        slow_retry: args.auth_retry_interval,
    })
}

/// The stack in the device layout, with the feed, socket and log paths from the flags.
/// The stack loads the very files `feed_ready` judged (`--feed-dir`).
fn boot_config(
    s: &cli::ScannerArgs,
    provision: &Provision,
    client: &PortalClient,
    want: Arc<feedwant::FeedWant>,
) -> scanner::boot::BootConfig {
    let feed = outpost_feed::FeedPaths::under(&s.feed_dir);
    // An image without a feed key keeps the feed it ships (the lab's demo feed).
    let sync = match outpost_bundle::TrustedKeys::load(&s.feed_key) {
        Ok(keys) => Some(scanner::boot::FeedSync {
            client: client.clone(),
            // `[feed] max_kbit_per_s`: the sync must not saturate the branch's link.
            config: outpost_feedsync::SyncConfig::new(&s.feed_dir, keys)
                .with_max_kbit_per_s(provision.feed_max_kbit_per_s),
            want: Some(want),
        }),
        Err(e) => {
            if s.feed_key.exists() {
                tracing::warn!(key = %s.feed_key.display(), error = %e, "the feed key is unusable; no network feed sync");
            }
            None
        }
    };
    let mut stack = outpost_scanner::StackConfig::device();
    stack.feed = feed.clone();
    stack.ospd_socket = s.ospd_socket.clone();
    stack.log_dir = s.log_dir.clone();
    stack.redis_data_dir = s.redis_dir.clone();
    stack.verify_feed_signatures = !s.unsigned_feed;
    scanner::boot::BootConfig {
        stack,
        feed,
        thresholds: provision.feed.clone(),
        vts_wait: outpost_scanner::VtsWait::default(),
        sync,
    }
}

/// The `--status-led` LED, or none (not asked for, or not on this board).
fn status_led(args: &Args) -> statusled::StatusLed {
    let led = args.status_led.as_deref().and_then(|name| {
        let led = statusled::open_named(name);
        if led.is_none() {
            tracing::info!(
                led = name,
                "no such LED: the sensor's state is not shown on one"
            );
        }
        led
    });
    statusled::StatusLed::new(led)
}

/// Prints the one console line for a provisioning failure, waits so a respawning init
/// does not spin on a broken file, and returns the already-reported error.
fn provisioning_failed(args: &Args, reporter: Option<&Reporter>, reason: &str) -> anyhow::Error {
    match reporter {
        Some(r) => r.phase(Phase::Provision, PhaseOutcome::Failed, Some(reason)),
        None => println!("outpost: phase provision failed: {reason}"),
    }
    std::thread::sleep(args.config_error_delay);
    Reported(reason.to_owned()).into()
}

/// The initramfs recreated a data partition it could not repair and left a note: say
/// so at the portal once (this is the first moment the sensor is enrolled again).
fn report_recreated_data(data: &identity::DataDir, reporter: &Reporter) {
    let note = data.root().join("data-recreated");
    let Ok(text) = std::fs::read_to_string(&note) else {
        return;
    };
    reporter.message(
        outpost_wire::log::Level::Warn,
        &format!(
            "{}; the identity, unsent reports and local state were lost",
            text.trim()
        ),
    );
    if let Err(e) = std::fs::rename(&note, data.root().join("data-recreated.reported")) {
        tracing::warn!(error = %e, "cannot mark the data-recreated note as reported");
    }
}

fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let spec = std::env::var("OUTPOST_LOG").unwrap_or_else(|_| "info".into());
    let filter: tracing_subscriber::filter::Targets = spec.parse().unwrap_or_else(|e| {
        eprintln!("outpostd: OUTPOST_LOG={spec:?} is not a filter ({e}); using info");
        tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO)
    });
    let fmt = tracing_subscriber::fmt::layer()
        .compact()
        .with_writer(std::io::stderr);
    // A second init (tests) fails harmlessly.
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(filter)
        .try_init();
}
