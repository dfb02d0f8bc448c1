//! The I/O shell around [`super::phases::Machine`]: inspects the feed, starts the
//! scanner stack's supervisor, waits for ospd-openvas' VTs, and turns supervisor
//! events into facts. Runs on its own thread so heartbeats and the log keep flowing
//! while the scanner boots; the supervisor lives as long as that thread (for ever).

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use outpost_feed::{inspect, FeedPaths, FeedThresholds};
use outpost_osp::OspClient;
use outpost_scanner::{
    count_cached_vts, redis_save, wait_for_vts_of, Event, Passwd, ScannerError, StackConfig,
    Supervisor, VtsProgress, VtsWait, OSPD_OPENVAS,
};
use outpost_wire::log::{Level, Phase, PhaseProgress};

use super::phases::{Action, Fact, Machine, Step, Synced};
use super::ScanGate;
use crate::api::PortalClient;
use crate::feedwant::FeedWant;
use crate::report::{lock, Reporter};
use outpost_feedsync::{SyncConfig, SyncOutcome};

/// Least time between two "VTs loading" console lines, and between two feed sync
/// progress events: enough to see a sync move without flooding the portal's log.
const VTS_PROGRESS_EVERY: Duration = Duration::from_secs(60);

/// Lets progress through at most once per `every`: the first report at once.
struct Every {
    every: Duration,
    last: Option<Instant>,
}

impl Every {
    fn new(every: Duration) -> Every {
        Every { every, last: None }
    }

    fn due(&mut self, now: Instant) -> bool {
        let due = self
            .last
            .is_none_or(|t| now.saturating_duration_since(t) >= self.every);
        if due {
            self.last = Some(now);
        }
        due
    }
}

/// The sync's progress as a `feed_sync` phase event, when one is due.
fn feed_sync_progress(
    reporter: &Reporter,
    every: &mut Every,
    p: &outpost_feedsync::Progress,
    now: Instant,
) {
    if !every.due(now) {
        return;
    }
    let progress = PhaseProgress {
        files_done: p.blobs_done,
        files_total: p.blobs_total,
        bytes_done: p.bytes_done,
        bytes_total: p.bytes_total,
    };
    reporter.phase_progress(Phase::FeedSync, &format!("{progress} fetched"), progress);
}

pub struct BootConfig {
    pub stack: StackConfig,
    /// The feed as checked by `feed_sync`/`feed_ready` (the same files the stack loads).
    /// Once a synced release is live, its `current` link is used instead.
    pub feed: FeedPaths,
    pub thresholds: FeedThresholds,
    pub vts_wait: VtsWait,
    /// Network feed sync from the portal; `None` keeps the feed on disk as it is.
    pub sync: Option<FeedSync>,
}

/// What a network feed sync needs: the portal and where the releases go.
pub struct FeedSync {
    pub client: PortalClient,
    pub config: SyncConfig,
    /// The portal's wish for another release (from heartbeat answers): a pending feed
    /// check runs at once instead of at its retry time.
    pub want: Option<Arc<FeedWant>>,
}

/// How often a pending feed check looks for the portal's wish.
const WANT_POLL: Duration = Duration::from_secs(5);

/// How long the boot thread may sleep: until the feed recheck, polling for the portal's
/// wish meanwhile when it can take one (also while the stack runs: a live sync), else an
/// hour (facts wake it anyway).
fn wake_in(recheck_at: Option<Instant>, now: Instant, polls_want: bool) -> Duration {
    match recheck_at {
        Some(t) if polls_want => t.saturating_duration_since(now).min(WANT_POLL),
        Some(t) => t.saturating_duration_since(now),
        None if polls_want => WANT_POLL,
        None => Duration::from_secs(3600),
    }
}

/// What the boot thread does when it wakes without a fact.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Wake {
    /// The pending feed check: sync, then judge the feed again.
    Recheck,
    /// The stack runs and the portal wants another release (named): sync it in live.
    LiveSync(String),
    Nothing,
}

/// Whether the pending feed check runs now (its time has come, or the portal wants
/// another release), or, with no check pending (the feed was accepted and the stack
/// started), whether the portal's wish starts a live sync. A wish is taken once.
fn on_wake(recheck_at: Option<Instant>, now: Instant, want: Option<&FeedWant>) -> Wake {
    match recheck_at {
        Some(t) if t <= now => Wake::Recheck,
        Some(_) if want.is_some_and(|w| w.take().is_some()) => Wake::Recheck,
        Some(_) => Wake::Nothing,
        None => match want.and_then(FeedWant::take) {
            Some(release) => Wake::LiveSync(release),
            None => Wake::Nothing,
        },
    }
}

/// Names the release that failed to load here, so no sync applies it again (kept on
/// the data partition: a power cut during the rollback must not bring it back).
const FAILED_RELEASE: &str = "failed-release";

/// How long a hold for a feed switch waits before saying again that it waits.
const HOLD_NOTICE: Duration = Duration::from_secs(600);

/// What the supervisor reports, as a fact for the phase machine (if it is one).
pub fn fact_for(event: &Event) -> Option<Fact> {
    match event {
        Event::AllReady => Some(Fact::StackReady),
        Event::Died { .. }
        | Event::Restarting { .. }
        | Event::Stopping { .. }
        | Event::NotReady { .. }
        | Event::SpawnFailed { .. } => Some(Fact::StackLost {
            why: event.to_string(),
        }),
        Event::GaveUp { .. } => Some(Fact::StackGaveUp {
            why: event.to_string(),
        }),
        Event::Started { .. }
        | Event::Ready { .. }
        | Event::ProbeFailed { .. }
        | Event::Stopped { .. } => None,
    }
}

/// The portal log level for a supervisor event.
pub fn level_for(event: &Event) -> Level {
    match event {
        Event::Died { .. }
        | Event::Restarting { .. }
        | Event::GaveUp { .. }
        | Event::NotReady { .. }
        | Event::SpawnFailed { .. }
        | Event::ProbeFailed { .. } => Level::Warn,
        _ => Level::Info,
    }
}

/// Starts the boot thread.
pub fn spawn(
    cfg: BootConfig,
    reporter: Arc<Reporter>,
    gate: Arc<ScanGate>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("scanner-boot".into())
        .spawn(move || Shell::new(cfg, reporter, gate).run())
}

struct Shell {
    cfg: BootConfig,
    reporter: Arc<Reporter>,
    gate: Arc<ScanGate>,
    machine: Machine,
    tx: Sender<Fact>,
    rx: mpsc::Receiver<Fact>,
    /// Kept here: dropping it would stop the stack.
    supervisor: Option<Supervisor>,
    /// When ospd-openvas last started, to time its VT load.
    ospd_started: Arc<Mutex<Option<Instant>>>,
    recheck_at: Option<Instant>,
    /// The last sync found the live release to be the portal's (or kept it on purpose).
    synced_live: bool,
    /// The release this run rolled back from: a failure after that is not rolled back
    /// again (no loop between two bad releases).
    rolled_back_from: Option<String>,
    /// The failed release the portal still offers, once said so.
    declined_shown: Option<String>,
}

/// The sync's report in words, for the phase line.
fn applied(r: &outpost_feedsync::SyncReport) -> String {
    format!(
        "feed release {} is live: {} files, {} blobs fetched in {} requests ({} bytes, {} on the wire), {} rebuilt from deltas ({} bytes), {} unchanged files kept",
        r.release, r.files, r.fetched_blobs, r.batches, r.fetched_bytes, r.wire_bytes, r.delta_blobs, r.delta_bytes, r.linked_files
    )
}

fn declined(root: &std::path::Path, release: &str) -> String {
    let live = outpost_feedsync::live_release(root).unwrap_or_else(|| "none".into());
    format!(
        "the portal offers feed release {release}, which failed to load on this sensor; keeping {live} until another is published"
    )
}

fn failed_release(root: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(root.join(FAILED_RELEASE)).ok()?;
    let name = text.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

fn write_failed_release(root: &std::path::Path, name: &str) -> std::io::Result<()> {
    crate::fsutil::atomic_write(&root.join(FAILED_RELEASE), format!("{name}\n").as_bytes())
}

impl Shell {
    fn new(cfg: BootConfig, reporter: Arc<Reporter>, gate: Arc<ScanGate>) -> Shell {
        let (tx, rx) = mpsc::channel();
        let machine = Machine::new(cfg.thresholds.clone());
        Shell {
            cfg,
            reporter,
            gate,
            machine,
            tx,
            rx,
            supervisor: None,
            ospd_started: Arc::new(Mutex::new(None)),
            recheck_at: None,
            synced_live: false,
            rolled_back_from: None,
            declined_shown: None,
        }
    }

    fn run(mut self) {
        self.sync_feed();
        let first = self.inspect_feed();
        self.apply(first);
        loop {
            // Nothing to time: wake now and then anyway; a fact arrives on the channel.
            let want = self.cfg.sync.as_ref().and_then(|s| s.want.clone());
            let timeout = wake_in(self.recheck_at, Instant::now(), want.is_some());
            let fact = match self.rx.recv_timeout(timeout) {
                Ok(fact) => fact,
                Err(RecvTimeoutError::Timeout) => {
                    match on_wake(self.recheck_at, Instant::now(), want.as_deref()) {
                        Wake::Recheck => {
                            self.recheck_at = None;
                            // The feed is still refused: the portal may have a release now.
                            self.sync_feed();
                            self.inspect_feed()
                        }
                        Wake::LiveSync(release) => {
                            self.live_sync(&release);
                            continue;
                        }
                        Wake::Nothing => continue,
                    }
                }
                // `self.tx` lives as long as this loop: cannot happen.
                Err(RecvTimeoutError::Disconnected) => return,
            };
            self.apply(fact);
        }
    }

    /// Runs a network feed sync (when configured), hands its end to the machine, and
    /// points the feed paths at the synced release once one is live. Blocks this thread
    /// only: heartbeats and the log keep flowing meanwhile.
    fn sync_feed(&mut self) {
        let Some(fs) = &mut self.cfg.sync else { return };
        // This sync answers any wish noted so far.
        if let Some(w) = &fs.want {
            w.take();
        }
        fs.config.skip_release = failed_release(&fs.config.root);
        self.reporter
            .say("feed sync: asking the portal for its feed release");
        let reporter = self.reporter.clone();
        let mut every = Every::new(VTS_PROGRESS_EVERY);
        let result = outpost_feedsync::sync(&fs.config, &fs.client, &mut |p| {
            feed_sync_progress(&reporter, &mut every, p, Instant::now())
        });
        let synced = match result {
            Ok(SyncOutcome::NoRelease) => Synced::NoRelease,
            Ok(SyncOutcome::UpToDate { release }) => {
                Synced::Live(format!("feed release {release} is current"))
            }
            Ok(SyncOutcome::Declined { release }) => {
                Synced::Live(declined(&fs.config.root, &release))
            }
            Ok(SyncOutcome::Applied(r)) => Synced::Live(applied(&r)),
            Err(e) => Synced::Failed(format!("feed sync failed: {e}")),
        };
        self.synced_live = matches!(synced, Synced::Live(_));
        let fs = self.cfg.sync.as_ref().expect("checked above");
        let current = fs.config.current_paths();
        if current.plugins.is_dir() {
            self.cfg.feed = current.clone();
            self.cfg.stack.feed = current;
        }
        self.apply(Fact::Synced(synced));
    }

    fn inspect_feed(&self) -> Fact {
        Fact::Feed(self.feed_status())
    }

    /// The feed on disk; for a synced release with what its manifest says, and whether
    /// the last sync found it to be the portal's (then its age is the portal's concern).
    fn feed_status(&self) -> Result<outpost_feed::FeedStatus, String> {
        let mut status = inspect(&self.cfg.feed, SystemTime::now()).map_err(|e| e.to_string())?;
        if let Some(fs) = &self.cfg.sync {
            if let Some(live) = outpost_feedsync::live(&fs.config.root) {
                status.release = Some(outpost_feed::ReleaseFacts {
                    vt_count: live.vt_count,
                    current_at_portal: self.synced_live,
                });
            }
        }
        Ok(status)
    }

    /// The portal wants another release while the stack runs: fetch it beside the live
    /// one while scans go on, hold new scans and wait for running ones just before the
    /// switch, then let the scanner load it (see [`Fact::FeedSwitched`]).
    fn live_sync(&mut self, wanted: &str) {
        let Some(fs) = &mut self.cfg.sync else { return };
        fs.config.skip_release = failed_release(&fs.config.root);
        if fs.config.skip_release.as_deref() == Some(wanted) {
            // Every heartbeat names it again while the portal offers it: said once.
            if self.declined_shown.as_deref() != Some(wanted) {
                self.declined_shown = Some(wanted.to_owned());
                let text = declined(&fs.config.root, wanted);
                self.reporter.message(Level::Warn, &text);
            }
            return;
        }
        let before = outpost_feedsync::live(&fs.config.root);
        self.reporter
            .say("feed sync: the portal wants another feed release; fetching it while scans go on");
        let reporter = self.reporter.clone();
        let gate = self.gate.clone();
        let mut every = Every::new(VTS_PROGRESS_EVERY);
        let mut held = false;
        let result = outpost_feedsync::sync_holding(
            &fs.config,
            &fs.client,
            &mut |p| feed_sync_progress(&reporter, &mut every, p, Instant::now()),
            &mut |name| {
                held = true;
                reporter.say(&format!(
                    "feed release {name} is verified and ready; holding new scans until the running ones end"
                ));
                while !gate.hold(HOLD_NOTICE) {
                    reporter.say(&format!(
                        "feed release {name}: still waiting for a running scan to end"
                    ));
                }
            },
        );
        let root = fs.config.root.clone();
        let outcome = match result {
            Ok(SyncOutcome::Applied(r)) => Some(r),
            Ok(SyncOutcome::UpToDate { release }) => {
                self.reporter
                    .say(&format!("feed sync: release {release} is already live"));
                None
            }
            Ok(SyncOutcome::Declined { release }) => {
                self.reporter
                    .message(Level::Warn, &declined(&root, &release));
                None
            }
            Ok(SyncOutcome::NoRelease) => None,
            Err(e) => {
                // The live release stays; the portal's next answer asks again.
                self.reporter.message(
                    Level::Warn,
                    &format!("feed sync failed: {e}; the live feed release stays in use"),
                );
                None
            }
        };
        let Some(r) = outcome else {
            if held {
                self.gate.release();
            }
            return;
        };
        self.synced_live = true;
        // Same PLUGIN_SET (only Notus changed): ospd-openvas would not notice; restart it.
        // A new one it picks up by itself within seconds.
        if before.as_ref().map(|b| b.plugin_set.as_str()) == Some(r.plugin_set.as_str()) {
            self.restart_ospd("the feed's Notus data changed");
        }
        let what = applied(&r);
        self.switched(what);
        self.gate.release();
    }

    /// Tells the machine the live feed changed (after a switch or a rollback).
    fn switched(&mut self, what: String) {
        // `ready` then says how long this reload took, not the time since the stack started.
        *lock(&self.ospd_started) = Some(Instant::now());
        match self.feed_status() {
            Ok(status) => self.apply(Fact::FeedSwitched { status, what }),
            Err(why) => self.reporter.message(
                Level::Error,
                &format!("the new feed release cannot be read: {why}"),
            ),
        }
    }

    fn restart_ospd(&self, why: &str) {
        if let Some(s) = &self.supervisor {
            self.reporter
                .say(&format!("restarting ospd-openvas to load the feed: {why}"));
            if let Err(e) = s.restart(OSPD_OPENVAS) {
                self.reporter.message(
                    Level::Warn,
                    &format!("ospd-openvas could not be restarted: {e}"),
                );
            }
        }
    }

    /// The live release did not load (`why`). Rolls back to the previous release once
    /// (marking the failed one, so no sync applies it again), else waits again.
    fn load_failed(&mut self, generation: u64, why: String) {
        let root = self.cfg.sync.as_ref().map(|fs| fs.config.root.clone());
        let live = root.as_deref().and_then(outpost_feedsync::live);
        let (Some(root), Some(live)) = (root, live) else {
            return self.apply(Fact::VtsFailed {
                generation,
                why,
                short: false,
            });
        };
        if !live.has_previous || self.rolled_back_from.as_deref() == Some(live.name.as_str()) {
            return self.apply(Fact::VtsFailed {
                generation,
                why,
                short: false,
            });
        }
        if let Err(e) = write_failed_release(&root, &live.name) {
            self.reporter.message(
                Level::Warn,
                &format!("cannot note the failed feed release on disk: {e}"),
            );
        }
        match outpost_feedsync::rollback(&root) {
            Ok(prev) => {
                self.rolled_back_from = Some(live.name.clone());
                self.reporter.message(
                    Level::Error,
                    &format!(
                        "feed release {} failed to load: {why}; rolled back to {prev}",
                        live.name
                    ),
                );
                // The older PLUGIN_SET is not "newer" to ospd-openvas: restart it.
                self.restart_ospd("a feed release was rolled back");
                self.switched(format!(
                    "rolled back to feed release {prev}: {} failed to load ({why})",
                    live.name
                ));
            }
            Err(e) => {
                self.reporter.message(
                    Level::Error,
                    &format!(
                        "feed release {} failed to load ({why}) and cannot be rolled back: {e}",
                        live.name
                    ),
                );
                self.apply(Fact::VtsFailed {
                    generation,
                    why,
                    short: false,
                });
            }
        }
    }

    fn apply(&mut self, fact: Fact) {
        tracing::debug!(?fact, "scanner boot fact");
        let Step { reports, actions } = self.machine.on(fact);
        for r in reports {
            self.reporter.phase(r.phase, r.outcome, r.reason.as_deref());
        }
        self.gate.set(self.machine.scan_ready());
        for a in actions {
            match a {
                Action::StartStack => self.start_stack(),
                Action::WaitVts {
                    generation,
                    expected,
                    version,
                    delay,
                } => self.wait_vts(generation, expected, version, delay),
                Action::LoadFailed { generation, why } => self.load_failed(generation, why),
                Action::RecheckFeed { delay } => self.recheck_at = Some(Instant::now() + delay),
            }
        }
    }

    fn start_stack(&mut self) {
        let stack = &self.cfg.stack;
        let needs_accounts = stack.users.redis.is_some()
            || stack.users.mosquitto.is_some()
            || stack.users.gvm.is_some();
        let started = (|| {
            let passwd = if needs_accounts {
                Some(Passwd::system()?)
            } else {
                None
            };
            stack.write_configs(passwd.as_ref())?;
            let tx = self.tx.clone();
            let reporter = self.reporter.clone();
            let ospd_started = self.ospd_started.clone();
            let on_event = move |e: &Event| {
                if let Event::Started { component, .. } = e {
                    if component == OSPD_OPENVAS {
                        *lock(&ospd_started) = Some(Instant::now());
                    }
                }
                reporter.message(level_for(e), &format!("scanner: {e}"));
                if let Some(f) = fact_for(e) {
                    // The boot thread owns the receiver for ever; a failed send is moot.
                    let _ = tx.send(f);
                }
            };
            // A daemon that died mid-run (killed, crashed) left its stack running: the
            // ledger lets this one stop it before starting its own.
            Supervisor::start_with_ledger(
                stack.components(),
                passwd.as_ref(),
                Some(stack.ledger()),
                on_event,
            )
        })();
        match started {
            Ok(s) => self.supervisor = Some(s),
            Err(e) => {
                let why = format!("the scanner stack could not be started: {e}");
                let _ = self.tx.send(Fact::StackFailed { why });
            }
        }
    }

    fn wait_vts(&self, generation: u64, expected: u64, version: Option<String>, delay: Duration) {
        let tx = self.tx.clone();
        let client = OspClient::new(&self.cfg.stack.ospd_socket);
        let wait = self.cfg.vts_wait.clone();
        let reporter = self.reporter.clone();
        let ospd_started = self.ospd_started.clone();
        let redis_socket = self.cfg.stack.redis_socket.clone();
        let spawned = std::thread::Builder::new()
            .name("vts-wait".into())
            .spawn(move || {
                std::thread::sleep(delay);
                reporter.say(&format!("waiting for ospd-openvas to load {expected} VTs"));
                let mut last_line: Option<Instant> = None;
                let mut last_count = None;
                let mut last_other = None;
                let count = || {
                    count_cached_vts(&redis_socket, Duration::from_secs(30))
                        .map(|c| c.total())
                        .map_err(|e| format!("counting the VTs in redis: {e}"))
                };
                let result =
                    wait_for_vts_of(&client, count, expected, version.as_deref(), &wait, |p| {
                        if let VtsProgress::OtherVersion(v) = p {
                            if last_other.as_ref() != Some(v) {
                                let shown = v.as_deref().unwrap_or("none");
                                reporter
                                    .say(&format!("ospd-openvas still has feed version {shown}"));
                                last_other = Some(v.clone());
                            }
                            return;
                        }
                        let VtsProgress::Loaded(n) = p else { return };
                        let due = last_line.is_none_or(|t| t.elapsed() >= VTS_PROGRESS_EVERY);
                        if due && last_count != Some(*n) {
                            last_line = Some(Instant::now());
                            last_count = Some(*n);
                            reporter.say(&format!("ospd-openvas has {n} of {expected} VTs loaded"));
                        }
                    });
                let took = lock(&ospd_started).map(|t| t.elapsed()).unwrap_or_default();
                if result.is_ok() {
                    // Persist the VT cache now: the next boot (even after a power cut)
                    // finds it current and skips the VT load.
                    if let Err(e) = redis_save(&redis_socket, Duration::from_secs(10)) {
                        reporter.message(
                            Level::Warn,
                            &format!("the VT cache could not be saved for the next boot: {e}"),
                        );
                    }
                }
                let fact = match result {
                    Ok(count) => Fact::VtsLoaded {
                        generation,
                        count,
                        took,
                    },
                    Err(e) => Fact::VtsFailed {
                        generation,
                        short: matches!(e, ScannerError::VtsShort { .. }),
                        why: e.to_string(),
                    },
                };
                let _ = tx.send(fact);
            });
        if let Err(e) = spawned {
            let _ = self.tx.send(Fact::VtsFailed {
                generation,
                why: format!("cannot start the VT wait: {e}"),
                short: false,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wish_for_another_release_cuts_a_pending_feed_retry_short() {
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        // Without a way to hear a wish, the retry waits its full delay.
        assert_eq!(wake_in(Some(later), now, false), Duration::from_secs(60));
        assert_eq!(on_wake(Some(later), now, None), Wake::Nothing);
        // With one, it looks every few seconds, and a wish runs it at once, once.
        assert_eq!(wake_in(Some(later), now, true), WANT_POLL);
        let want = FeedWant::default();
        assert_eq!(
            on_wake(Some(later), now, Some(&want)),
            Wake::Nothing,
            "no wish yet"
        );
        assert!(want.note(Some("r1"), Some("r2")));
        assert_eq!(on_wake(Some(later), now, Some(&want)), Wake::Recheck);
        assert_eq!(
            on_wake(Some(later), now, Some(&want)),
            Wake::Nothing,
            "taken by that check"
        );
        // Its time come, it runs whatever was wished.
        assert_eq!(on_wake(Some(now), now, Some(&want)), Wake::Recheck);
    }

    /// With the feed accepted and the stack running, a wish starts a live sync (the
    /// thread keeps looking every few seconds); without a way to hear one, it sleeps.
    #[test]
    fn a_wish_while_the_stack_runs_starts_a_live_sync() {
        let now = Instant::now();
        assert_eq!(wake_in(None, now, true), WANT_POLL);
        assert_eq!(wake_in(None, now, false), Duration::from_secs(3600));
        let want = FeedWant::default();
        assert_eq!(on_wake(None, now, Some(&want)), Wake::Nothing);
        assert!(want.note(Some("r1"), Some("r3")));
        assert_eq!(on_wake(None, now, Some(&want)), Wake::LiveSync("r3".into()));
        assert_eq!(on_wake(None, now, Some(&want)), Wake::Nothing, "taken once");
        assert_eq!(on_wake(None, now, None), Wake::Nothing);
    }

    #[test]
    fn an_empty_feed_dir_is_refused_and_nothing_starts() {
        let dir = tempfile::tempdir().unwrap();
        let mut stack = StackConfig::device();
        // Were anything started, it would fail loudly on these paths.
        stack.config_dir = dir.path().join("run");
        stack.ospd_socket = dir.path().join("ospd.sock");
        let reporter = Arc::new(crate::report::capture("s"));
        let gate = Arc::new(ScanGate::closed());
        let cfg = BootConfig {
            stack,
            feed: FeedPaths::under(dir.path().join("feeds")),
            thresholds: FeedThresholds::default(),
            vts_wait: VtsWait::default(),
            sync: None,
        };
        // The thread runs for the test binary's lifetime; it only rechecks the feed.
        spawn(cfg, reporter.clone(), gate.clone()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while reporter.captured().len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let lines = reporter.captured();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0]
            .starts_with("outpost[s]: phase feed_sync failed: sync needed: no NASL scripts"));
        assert!(
            lines[0].ends_with("this sensor has no feed key, so it does not sync from the portal")
        );
        assert!(lines[1].starts_with("outpost[s]: phase feed_ready failed: no NASL scripts"));
        assert!(lines[1].ends_with("checking again every 60 s"));
        assert!(!gate.is_ready());
        assert!(!dir.path().join("run").exists(), "no config was written");
    }

    /// With a feed key, the first thing the boot thread does is sync: the portal's
    /// release goes live under `current` and feed_sync says so; the feed judged is the
    /// synced one.
    #[test]
    fn a_sensor_with_a_feed_key_syncs_before_judging_the_feed() {
        use crate::api::fake::{serve_feed, FakeTransport};
        let dir = tempfile::tempdir().unwrap();
        let mut stack = StackConfig::device();
        stack.config_dir = dir.path().join("run");
        stack.ospd_socket = dir.path().join("ospd.sock");
        let t = Arc::new(FakeTransport::default());
        let key = outpost_bundle::SecretKey::from_seed(&[8; 32]);
        // PLUGIN_SET only, no script: the feed is refused and nothing starts.
        let offer = serve_feed(
            &t,
            &key,
            &[(
                "nvt/plugin_feed_info.inc",
                b"PLUGIN_SET = \"202509150400\";\n",
            )],
        );
        let trusted =
            outpost_bundle::TrustedKeys::parse(&key.public_line(""), std::path::Path::new("k"))
                .unwrap();
        let root = dir.path().join("feeds");
        let reporter = Arc::new(crate::report::capture("s"));
        let cfg = BootConfig {
            stack,
            feed: FeedPaths::under(&root),
            thresholds: FeedThresholds::default(),
            vts_wait: VtsWait::default(),
            sync: Some(FeedSync {
                client: PortalClient::new(t.clone(), outpost_wire::Secret::new("osk_k")),
                config: SyncConfig::new(&root, trusted),
                want: None,
            }),
        };
        spawn(cfg, reporter.clone(), Arc::new(ScanGate::closed())).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while reporter.captured().len() < 4 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut lines = reporter.captured();
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(lines[0].ends_with("feed sync: asking the portal for its feed release"));
        assert_eq!(
            lines.remove(1),
            "outpost[s]: phase feed_sync progress: 1 of 1 files, 29 of 29 bytes fetched"
        );
        let name = format!("202509150400-{}", &offer.manifest_sha256[..16]);
        assert!(
            lines[1].starts_with(&format!(
                "outpost[s]: phase feed_sync done: feed release {name} is live: 1 files, 2 blobs fetched in 2 requests"
            )),
            "{lines:?}"
        );
        assert!(lines[2].starts_with("outpost[s]: phase feed_ready failed: no NASL scripts"));
        assert_eq!(
            std::fs::read_link(root.join("current")).unwrap(),
            std::path::Path::new("releases").join(&name)
        );
        assert!(!dir.path().join("run").exists(), "no config was written");
        // The progress went to the portal as a feed_sync event carrying the counts.
        let events = reporter.ring().batch(10).events;
        assert_eq!(
            progress_events(&events),
            [(
                "1 of 1 files, 29 of 29 bytes fetched".to_owned(),
                PhaseProgress {
                    files_done: 1,
                    files_total: 1,
                    bytes_done: 29,
                    bytes_total: 29,
                }
            )]
        );
    }

    fn progress_events(events: &[outpost_wire::log::LogEvent]) -> Vec<(String, PhaseProgress)> {
        use outpost_wire::log::{EventKind, PhaseOutcome};
        events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Phase {
                    phase: Phase::FeedSync,
                    outcome: PhaseOutcome::Started,
                    reason: Some(r),
                    progress: Some(p),
                } => Some((r.clone(), *p)),
                _ => None,
            })
            .collect()
    }

    /// A long sync reports its progress as phase events, the first at once and then at
    /// most once a minute, each with the counts of that moment.
    #[test]
    fn sync_progress_becomes_rate_limited_phase_events() {
        let reporter = crate::report::capture("s");
        let mut every = Every::new(VTS_PROGRESS_EVERY);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let p = |done: u64| outpost_feedsync::Progress {
            blobs_done: done,
            blobs_total: 100,
            bytes_done: done * 1000,
            bytes_total: 100_000,
        };
        for (secs, done) in [(0, 10), (20, 20), (59, 30), (60, 40), (90, 50), (125, 100)] {
            feed_sync_progress(&reporter, &mut every, &p(done), at(secs));
        }
        let events = reporter.ring().batch(10).events;
        let got: Vec<u64> = progress_events(&events)
            .iter()
            .map(|(_, p)| p.files_done)
            .collect();
        assert_eq!(got, [10, 40, 100], "at 0 s, 60 s and 125 s");
        let (reason, last) = progress_events(&events).pop().unwrap();
        assert_eq!(reason, "100 of 100 files, 100000 of 100000 bytes fetched");
        assert_eq!(last.bytes_total, 100_000);
        assert_eq!(
            reporter.captured()[0],
            "outpost[s]: phase feed_sync progress: 10 of 100 files, 10000 of 100000 bytes fetched"
        );
        assert_eq!(reporter.current_phase(), None, "no phase transition");
    }

    #[test]
    fn supervisor_events_map_to_facts_and_levels() {
        let died = Event::Died {
            component: OSPD_OPENVAS.into(),
            status: "exit code 1".into(),
        };
        assert_eq!(
            fact_for(&died),
            Some(Fact::StackLost {
                why: "ospd-openvas died: exit code 1".into()
            })
        );
        assert_eq!(level_for(&died), Level::Warn);
        assert_eq!(fact_for(&Event::AllReady), Some(Fact::StackReady));
        assert_eq!(level_for(&Event::AllReady), Level::Info);
        let gave_up = Event::GaveUp {
            component: "redis".into(),
            failures: 5,
        };
        assert!(matches!(fact_for(&gave_up), Some(Fact::StackGaveUp { .. })));
        assert_eq!(level_for(&gave_up), Level::Warn);
        let restarting = Event::Restarting {
            component: "redis".into(),
            delay: Duration::from_secs(2),
            restarts: 1,
        };
        assert!(matches!(
            fact_for(&restarting),
            Some(Fact::StackLost { .. })
        ));
        assert_eq!(level_for(&restarting), Level::Warn);
        let started = Event::Started {
            component: "redis".into(),
            pid: 9,
        };
        assert_eq!(fact_for(&started), None);
        assert_eq!(level_for(&started), Level::Info);
    }
}
