//! The scanner's boot phases as a pure state machine: facts in (feed inspected, stack
//! ready or lost, VTs loaded), phase reports and actions out. No processes, no clock,
//! no I/O, so every sequence is unit-tested; [`super::boot`] is the thin shell.
//!
//! Phases are always reported in order — `feed_sync`, `feed_ready`, `scanner_boot`,
//! `ready` — even when the stack starts while the feed is still being judged: a later
//! phase's news waits until the earlier phase is done.

use std::time::Duration;

use outpost_feed::{feed_ready, sync_decision, FeedStatus, FeedThresholds, SyncDecision};
use outpost_wire::log::{Phase, PhaseOutcome};

/// Something the shell observed.
// A handful of facts per boot move through a channel; their size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Fact {
    /// The feed on disk was inspected (`Err`: it could not be read at all).
    Feed(Result<FeedStatus, String>),
    /// Every component of the stack answers its probe.
    StackReady,
    /// A component died, hangs or is being restarted; `why` is the supervisor's text.
    StackLost { why: String },
    /// The supervisor gave up on a component: the stack stays down.
    StackGaveUp { why: String },
    /// The stack could not be started at all (configs, accounts).
    StackFailed { why: String },
    /// A VT wait ended: ospd-openvas lists `count` VTs, `took` after it started.
    VtsLoaded {
        generation: u64,
        count: u64,
        took: Duration,
    },
    /// A VT wait ended without the full count (timeout or hard error). `short`: the
    /// scanner finished loading the feed's version with fewer VTs than it must list, so
    /// waiting longer will not help.
    VtsFailed {
        generation: u64,
        why: String,
        short: bool,
    },
    /// Another feed release went live while the stack runs (a live sync, or a rollback):
    /// the VTs are loaded again and scans wait for them. `what` says what happened.
    FeedSwitched { status: FeedStatus, what: String },
    /// A network feed sync ended (before the feed is inspected).
    Synced(Synced),
}

/// How a network feed sync ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Synced {
    /// The portal's release is live; what happened, in words.
    Live(String),
    /// The portal has published no release: the feed on disk is judged as before.
    NoRelease,
    /// The sync failed; the feed on disk stays in use.
    Failed(String),
}

/// Something the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write the configs and start the supervisor (once).
    StartStack,
    /// Wait (after `delay`) until ospd-openvas lists `expected` VTs; answer with a
    /// `VtsLoaded` or `VtsFailed` of this `generation`.
    WaitVts {
        generation: u64,
        expected: u64,
        /// The feed version (`PLUGIN_SET`) the count must be of, when known.
        version: Option<String>,
        delay: Duration,
    },
    /// The feed's VTs did not all load (`why`): roll back to the previous release if
    /// there is one, else answer with a `VtsFailed` (not short) to wait again.
    LoadFailed { generation: u64, why: String },
    /// Inspect the feed again after `delay`.
    RecheckFeed { delay: Duration },
}

/// One phase line for the console and the portal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub phase: Phase,
    pub outcome: PhaseOutcome,
    pub reason: Option<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Step {
    pub reports: Vec<Report>,
    pub actions: Vec<Action>,
}

/// How often a refused feed is looked at again (it may be replaced on disk).
pub const FEED_RETRY: Duration = Duration::from_secs(60);
/// Pause before waiting for VTs again after a wait gave up.
pub const VTS_RETRY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Stack {
    NotStarted,
    Starting,
    Up,
    Lost(String),
    Down(String),
}

/// What the `scanner_boot` phase last said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BootShown {
    Nothing,
    Started,
    Done,
    Failed,
}

pub struct Machine {
    thresholds: FeedThresholds,
    /// The last network sync's end; `None` when this sensor does not sync.
    synced: Option<Synced>,
    sync_shown: Option<String>,
    /// `Some(expected VTs)` once the feed passed `feed_ready`.
    feed_ok: Option<u64>,
    /// The accepted feed's `PLUGIN_SET`: the VT count must be of that version.
    feed_version: Option<String>,
    feed_refusal_shown: Option<String>,
    feed_recheck_pending: bool,
    stack: Stack,
    start_requested: bool,
    boot_shown: BootShown,
    /// Bumped whenever the stack is lost: VT counts from before do not count.
    generation: u64,
    vts_wait_outstanding: bool,
    /// VTs loaded in the current generation, and how long it took.
    vts: Option<(u64, Duration)>,
    vts_failure_shown: Option<String>,
    ready_shown: bool,
}

impl Machine {
    pub fn new(thresholds: FeedThresholds) -> Machine {
        Machine {
            thresholds,
            synced: None,
            sync_shown: None,
            feed_ok: None,
            feed_version: None,
            feed_refusal_shown: None,
            feed_recheck_pending: false,
            stack: Stack::NotStarted,
            start_requested: false,
            boot_shown: BootShown::Nothing,
            generation: 0,
            vts_wait_outstanding: false,
            vts: None,
            vts_failure_shown: None,
            ready_shown: false,
        }
    }

    /// True when scan jobs may be claimed: feed accepted, stack up, VTs loaded.
    pub fn scan_ready(&self) -> bool {
        self.ready_shown
    }

    pub fn on(&mut self, fact: Fact) -> Step {
        let mut out = Step::default();
        match fact {
            Fact::Feed(status) => {
                self.feed_recheck_pending = false;
                self.on_feed(status, &mut out);
            }
            // Reported with the inspection that follows it.
            Fact::Synced(s) => self.synced = Some(s),
            Fact::StackReady => {
                if !matches!(self.stack, Stack::Down(_)) {
                    self.stack = Stack::Up;
                }
            }
            Fact::StackLost { why } => {
                if matches!(self.stack, Stack::Up | Stack::Starting) {
                    self.generation += 1;
                    self.vts = None;
                    self.vts_failure_shown = None;
                    if self.ready_shown || self.boot_shown == BootShown::Done {
                        // Heartbeats now say `scanner_boot`: the sensor is not ready.
                        self.boot_shown = BootShown::Started;
                        self.ready_shown = false;
                        out.reports.push(report(
                            Phase::ScannerBoot,
                            PhaseOutcome::Started,
                            Some(format!(
                                "{why}; scan jobs wait until the stack is back and its VTs are loaded"
                            )),
                        ));
                    }
                    self.stack = Stack::Lost(why);
                }
            }
            Fact::StackGaveUp { why } | Fact::StackFailed { why } => {
                self.generation += 1;
                self.vts = None;
                self.ready_shown = false;
                self.stack = Stack::Down(why);
            }
            Fact::VtsLoaded {
                generation,
                count,
                took,
            } => {
                self.vts_wait_outstanding = false;
                if generation == self.generation {
                    self.vts = Some((count, took));
                }
            }
            Fact::VtsFailed {
                generation,
                why,
                short,
            } => {
                self.vts_wait_outstanding = false;
                if generation == self.generation && self.stack == Stack::Up {
                    if self.vts_failure_shown.as_deref() != Some(why.as_str()) {
                        let next = if short {
                            "the release is rolled back if the previous one is kept"
                        } else {
                            "waiting again"
                        };
                        out.reports.push(report(
                            Phase::Ready,
                            PhaseOutcome::Failed,
                            Some(format!("{why}; {next}")),
                        ));
                        self.vts_failure_shown = Some(why.clone());
                    }
                    if short {
                        // The shell decides: roll back, or answer "not short" to wait again.
                        self.vts_wait_outstanding = true;
                        out.actions.push(Action::LoadFailed { generation, why });
                    } else {
                        self.request_vts(VTS_RETRY, &mut out);
                    }
                }
            }
            Fact::FeedSwitched { status, what } => self.on_switch(status, what, &mut out),
        }
        self.advance(&mut out);
        out
    }

    fn on_feed(&mut self, status: Result<FeedStatus, String>, out: &mut Step) {
        let status = match status {
            Ok(s) => s,
            Err(why) => {
                let reason = format!("the feed cannot be read: {why}");
                self.show_sync(PhaseOutcome::Failed, reason.clone(), out);
                self.refuse(reason, out);
                return;
            }
        };
        match (
            self.synced.clone(),
            sync_decision(&status, &self.thresholds),
        ) {
            (Some(Synced::Live(what)), _) => self.show_sync(PhaseOutcome::Done, what, out),
            (Some(Synced::Failed(why)), _) => self.show_sync(
                PhaseOutcome::Failed,
                format!("{why}; the feed on disk stays in use"),
                out,
            ),
            (_, d @ SyncDecision::Skip { .. }) => {
                self.show_sync(PhaseOutcome::Skipped, d.to_string(), out)
            }
            (Some(Synced::NoRelease), d @ SyncDecision::Needed { .. }) => self.show_sync(
                PhaseOutcome::Failed,
                format!("{d}; the portal has published no feed release"),
                out,
            ),
            (None, d @ SyncDecision::Needed { .. }) => self.show_sync(
                PhaseOutcome::Failed,
                format!("{d}; this sensor has no feed key, so it does not sync from the portal"),
                out,
            ),
        }
        // A feed on disk lets the stack start (and load VTs) while the feed is judged;
        // jobs still wait for `feed_ready`.
        if status.plugins_present && status.nasl_count > 0 && !self.start_requested {
            self.start_requested = true;
            self.stack = Stack::Starting;
            out.actions.push(Action::StartStack);
        }
        match feed_ready(&status, &self.thresholds) {
            Ok(()) => {
                if self.feed_ok.is_none() {
                    self.feed_ok = Some(status.expected_vts());
                    self.feed_version = status.version().map(str::to_owned);
                    out.reports.push(report(
                        Phase::FeedReady,
                        PhaseOutcome::Done,
                        Some(format!(
                            "{} NASL scripts, {} Notus advisories, version {}",
                            status.nasl_count,
                            status.notus_advisories.advisories,
                            status.version().unwrap_or("unknown")
                        )),
                    ));
                }
            }
            Err(refusal) => self.refuse(refusal.to_string(), out),
        }
    }

    /// A new release (or the one rolled back to) is live under the running stack: its
    /// VTs must be loaded before scans go on, judged like at boot.
    fn on_switch(&mut self, status: FeedStatus, what: String, out: &mut Step) {
        self.show_sync(PhaseOutcome::Done, what, out);
        self.generation += 1;
        self.vts = None;
        self.vts_failure_shown = None;
        if let Err(refusal) = feed_ready(&status, &self.thresholds) {
            // Verified and signed, but not what this sensor accepts (too small): treated
            // as a release that does not load.
            self.vts_wait_outstanding = true;
            out.actions.push(Action::LoadFailed {
                generation: self.generation,
                why: format!("the new feed release is refused: {refusal}"),
            });
            return;
        }
        self.feed_ok = Some(status.expected_vts());
        self.feed_version = status.version().map(str::to_owned);
        self.feed_refusal_shown = None;
        // Heartbeats now say `feed_ready`: not ready until the new VTs are loaded; the
        // stack itself keeps running, so `scanner_boot` has nothing new to say.
        self.ready_shown = false;
        out.reports.push(report(
            Phase::FeedReady,
            PhaseOutcome::Done,
            Some(format!(
                "{} NASL scripts, {} Notus advisories, version {}; scan jobs wait until its {} VTs are loaded",
                status.nasl_count,
                status.notus_advisories.advisories,
                status.version().unwrap_or("unknown"),
                status.expected_vts()
            )),
        ));
        // A wait still out is for the old release: its answer is ignored (generation).
        self.vts_wait_outstanding = false;
        self.request_vts(Duration::ZERO, out);
    }

    /// `feed_ready` failed: say why (once per distinct reason) and look again later.
    fn refuse(&mut self, reason: String, out: &mut Step) {
        if self.feed_ok.is_some() {
            return;
        }
        if self.feed_refusal_shown.as_deref() != Some(reason.as_str()) {
            out.reports.push(report(
                Phase::FeedReady,
                PhaseOutcome::Failed,
                Some(format!(
                    "{reason}; checking again every {} s",
                    FEED_RETRY.as_secs()
                )),
            ));
            self.feed_refusal_shown = Some(reason);
        }
        if !self.feed_recheck_pending {
            self.feed_recheck_pending = true;
            out.actions.push(Action::RecheckFeed { delay: FEED_RETRY });
        }
    }

    fn show_sync(&mut self, outcome: PhaseOutcome, reason: String, out: &mut Step) {
        if self.sync_shown.as_deref() != Some(reason.as_str()) {
            out.reports
                .push(report(Phase::FeedSync, outcome, Some(reason.clone())));
            self.sync_shown = Some(reason);
        }
    }

    fn request_vts(&mut self, delay: Duration, out: &mut Step) {
        if let (Some(expected), false) = (self.feed_ok, self.vts_wait_outstanding) {
            self.vts_wait_outstanding = true;
            out.actions.push(Action::WaitVts {
                generation: self.generation,
                expected,
                version: self.feed_version.clone(),
                delay,
            });
        }
    }

    /// Emits whatever later phases may now report, strictly in order.
    fn advance(&mut self, out: &mut Step) {
        let Some(expected) = self.feed_ok else {
            return;
        };
        if !self.start_requested {
            self.start_requested = true;
            self.stack = Stack::Starting;
            out.actions.push(Action::StartStack);
        }
        match self.stack.clone() {
            Stack::NotStarted => return,
            Stack::Starting | Stack::Lost(_) => {
                if self.boot_shown == BootShown::Nothing {
                    self.boot_shown = BootShown::Started;
                    out.reports
                        .push(report(Phase::ScannerBoot, PhaseOutcome::Started, None));
                }
                return;
            }
            Stack::Down(why) => {
                if self.boot_shown != BootShown::Failed {
                    self.boot_shown = BootShown::Failed;
                    out.reports
                        .push(report(Phase::ScannerBoot, PhaseOutcome::Failed, Some(why)));
                }
                return;
            }
            Stack::Up => {
                if self.boot_shown == BootShown::Nothing {
                    out.reports
                        .push(report(Phase::ScannerBoot, PhaseOutcome::Started, None));
                }
                if self.boot_shown != BootShown::Done {
                    self.boot_shown = BootShown::Done;
                    out.reports.push(report(
                        Phase::ScannerBoot,
                        PhaseOutcome::Done,
                        Some("mosquitto, redis, notus-scanner and ospd-openvas are running".into()),
                    ));
                }
            }
        }
        match self.vts {
            Some((count, took)) if count >= expected => {
                if !self.ready_shown {
                    self.ready_shown = true;
                    self.vts_failure_shown = None;
                    out.reports.push(report(
                        Phase::Ready,
                        PhaseOutcome::Done,
                        Some(format!(
                            "ospd-openvas loaded {count} VTs in {:.1} s",
                            took.as_secs_f64()
                        )),
                    ));
                }
            }
            _ => self.request_vts(Duration::ZERO, out),
        }
    }
}

fn report(phase: Phase, outcome: PhaseOutcome, reason: Option<String>) -> Report {
    Report {
        phase,
        outcome,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_feed::{NotusCount, PluginFeedInfo};

    fn thresholds() -> FeedThresholds {
        FeedThresholds {
            min_nasl: 3,
            min_notus: 1,
            max_age_hours: 24,
        }
    }

    fn feed(nasl: u64, notus: u64, age_h: u64) -> FeedStatus {
        FeedStatus {
            plugins_present: true,
            nasl_count: nasl,
            info: Some(PluginFeedInfo {
                plugin_set: Some("202406120502".into()),
                ..Default::default()
            }),
            version_time: Some(1_718_164_920),
            age_secs: Some(age_h * 3600),
            clock_behind: false,
            notus_advisories: NotusCount {
                present: true,
                files: 1,
                advisories: notus,
                ..Default::default()
            },
            notus_products: NotusCount::default(),
            checksums_verified: false,
            checksum_problems: vec![],
            release: None,
        }
    }

    fn phases(s: &Step) -> Vec<(Phase, PhaseOutcome)> {
        s.reports.iter().map(|r| (r.phase, r.outcome)).collect()
    }

    fn loaded(generation: u64, count: u64) -> Fact {
        Fact::VtsLoaded {
            generation,
            count,
            took: Duration::from_secs(42),
        }
    }

    #[test]
    fn feed_sync_reports_how_the_network_sync_ended() {
        let mut m = Machine::new(thresholds());
        assert!(m
            .on(Fact::Synced(Synced::Live("release 1 is live".into())))
            .reports
            .is_empty());
        let s = m.on(Fact::Feed(Ok(feed(5, 2, 2))));
        assert_eq!(
            s.reports[0],
            report(
                Phase::FeedSync,
                PhaseOutcome::Done,
                Some("release 1 is live".into())
            )
        );
        assert_eq!(
            (s.reports[1].phase, s.reports[1].outcome),
            (Phase::FeedReady, PhaseOutcome::Done)
        );

        // The portal has nothing: the feed on disk is judged as before.
        let mut m = Machine::new(thresholds());
        m.on(Fact::Synced(Synced::NoRelease));
        let s = m.on(Fact::Feed(Ok(feed(5, 2, 30))));
        assert_eq!(s.reports[0].outcome, PhaseOutcome::Failed);
        assert!(s.reports[0]
            .reason
            .as_deref()
            .unwrap()
            .ends_with("; the portal has published no feed release"));
        let mut m = Machine::new(thresholds());
        m.on(Fact::Synced(Synced::NoRelease));
        let s = m.on(Fact::Feed(Ok(feed(5, 2, 2))));
        assert_eq!(s.reports[0].outcome, PhaseOutcome::Skipped);

        // A failed sync is said, and a usable feed on disk still goes on.
        let mut m = Machine::new(thresholds());
        m.on(Fact::Synced(Synced::Failed(
            "feed sync failed: not enough space".into(),
        )));
        let s = m.on(Fact::Feed(Ok(feed(5, 2, 2))));
        assert_eq!(
            s.reports[0],
            report(
                Phase::FeedSync,
                PhaseOutcome::Failed,
                Some("feed sync failed: not enough space; the feed on disk stays in use".into())
            )
        );
        assert_eq!(
            (s.reports[1].phase, s.reports[1].outcome),
            (Phase::FeedReady, PhaseOutcome::Done)
        );
    }

    #[test]
    fn a_good_feed_goes_through_every_phase_in_order() {
        let mut m = Machine::new(thresholds());
        let s = m.on(Fact::Feed(Ok(feed(5, 2, 2))));
        assert_eq!(
            phases(&s),
            [
                (Phase::FeedSync, PhaseOutcome::Skipped),
                (Phase::FeedReady, PhaseOutcome::Done),
                (Phase::ScannerBoot, PhaseOutcome::Started),
            ]
        );
        assert_eq!(
            s.reports[0].reason.as_deref(),
            Some("feed on disk is current (5 NASL scripts, 2 Notus advisories, 2 h old): sync skipped")
        );
        assert_eq!(s.actions, [Action::StartStack]);
        assert!(!m.scan_ready());

        let s = m.on(Fact::StackReady);
        assert_eq!(phases(&s), [(Phase::ScannerBoot, PhaseOutcome::Done)]);
        assert_eq!(
            s.actions,
            [Action::WaitVts {
                generation: 0,
                expected: 7,
                version: Some("202406120502".into()),
                delay: Duration::ZERO
            }]
        );
        assert!(!m.scan_ready());

        let s = m.on(loaded(0, 7));
        assert_eq!(phases(&s), [(Phase::Ready, PhaseOutcome::Done)]);
        assert_eq!(
            s.reports[0].reason.as_deref(),
            Some("ospd-openvas loaded 7 VTs in 42.0 s")
        );
        assert!(m.scan_ready());
    }

    /// A ready sensor with a synced release gets a new one live: scans wait while its
    /// VTs load (of the new version, the manifest's count), then `ready` again.
    #[test]
    fn a_release_switched_in_live_is_loaded_before_scans_go_on() {
        let mut m = Machine::new(thresholds());
        m.on(Fact::Synced(Synced::Live("release 1 is live".into())));
        m.on(Fact::Feed(Ok(feed(5, 2, 2))));
        m.on(Fact::StackReady);
        m.on(loaded(0, 7));
        assert!(m.scan_ready());

        let mut next = feed(6, 2, 900);
        next.info = Some(PluginFeedInfo {
            plugin_set: Some("202406130502".into()),
            ..Default::default()
        });
        next.release = Some(outpost_feed::ReleaseFacts {
            vt_count: 7,
            current_at_portal: true,
        });
        let s = m.on(Fact::FeedSwitched {
            status: next,
            what: "release 2 is live".into(),
        });
        assert_eq!(
            phases(&s),
            [
                (Phase::FeedSync, PhaseOutcome::Done),
                (Phase::FeedReady, PhaseOutcome::Done),
            ]
        );
        assert!(!m.scan_ready(), "scans wait for the new VTs");
        assert_eq!(
            s.actions,
            [Action::WaitVts {
                generation: 1,
                expected: 7,
                version: Some("202406130502".into()),
                delay: Duration::ZERO
            }]
        );
        // An answer about the old release does not count.
        assert!(m.on(loaded(0, 7)).reports.is_empty());
        assert!(!m.scan_ready());
        let s = m.on(loaded(1, 7));
        assert_eq!(phases(&s), [(Phase::Ready, PhaseOutcome::Done)]);
        assert!(m.scan_ready());
    }

    /// The new version loaded short: the shell is asked to roll back (not to wait); a
    /// release the thresholds refuse is treated the same; a later, not-short failure
    /// waits again as usual.
    #[test]
    fn a_release_that_loads_short_asks_for_a_rollback() {
        let mut m = Machine::new(thresholds());
        m.on(Fact::Feed(Ok(feed(5, 2, 2))));
        m.on(Fact::StackReady);
        m.on(loaded(0, 7));
        let s = m.on(Fact::FeedSwitched {
            status: feed(6, 2, 2),
            what: "release 2 is live".into(),
        });
        assert_eq!(s.actions.len(), 1);
        let why = "ospd-openvas loaded feed version 202406120502 with 7 of its 8 VTs";
        let s = m.on(Fact::VtsFailed {
            generation: 1,
            why: why.into(),
            short: true,
        });
        assert_eq!(phases(&s), [(Phase::Ready, PhaseOutcome::Failed)]);
        assert_eq!(
            s.actions,
            [Action::LoadFailed {
                generation: 1,
                why: why.into()
            }]
        );
        // The shell could not roll back: it answers "not short", and the wait goes on.
        let s = m.on(Fact::VtsFailed {
            generation: 1,
            why: why.into(),
            short: false,
        });
        assert!(s.reports.is_empty(), "said once");
        assert!(matches!(
            &s.actions[..],
            [Action::WaitVts { generation: 1, delay, .. }] if *delay == VTS_RETRY
        ));

        // Too small for this sensor's thresholds: a load failure straight away.
        let s = m.on(Fact::FeedSwitched {
            status: feed(1, 2, 2),
            what: "release 3 is live".into(),
        });
        assert!(matches!(
            &s.actions[..],
            [Action::LoadFailed { generation: 2, why }] if why.starts_with("the new feed release is refused: only 1 NASL script")
        ));
    }

    #[test]
    fn a_stale_feed_fails_sync_and_ready_then_recovers_when_replaced() {
        let mut m = Machine::new(thresholds());
        let s = m.on(Fact::Feed(Ok(feed(5, 2, 30))));
        assert_eq!(
            phases(&s),
            [
                (Phase::FeedSync, PhaseOutcome::Failed),
                (Phase::FeedReady, PhaseOutcome::Failed),
            ]
        );
        assert_eq!(
            s.reports[0].reason.as_deref(),
            Some("sync needed: feed is 30 h old, at most 24 h allowed; this sensor has no feed key, so it does not sync from the portal")
        );
        assert!(s.reports[1]
            .reason
            .as_deref()
            .unwrap()
            .starts_with("feed is 30 h old, at most 24 h allowed"));
        // The stack may load the feed meanwhile; the recheck is scheduled.
        assert_eq!(
            s.actions,
            [
                Action::StartStack,
                Action::RecheckFeed { delay: FEED_RETRY }
            ]
        );
        // The stack comes up early: nothing about it is said before feed_ready.
        let s = m.on(Fact::StackReady);
        assert!(s.reports.is_empty());
        assert!(s.actions.is_empty());
        // Same refusal a minute later: no repeated line, another recheck.
        let s = m.on(Fact::Feed(Ok(feed(5, 2, 31))));
        assert_eq!(
            phases(&s),
            [
                (Phase::FeedSync, PhaseOutcome::Failed),
                (Phase::FeedReady, PhaseOutcome::Failed)
            ]
        );
        let s = m.on(Fact::Feed(Ok(feed(5, 2, 31))));
        assert!(s.reports.is_empty());
        assert_eq!(s.actions, [Action::RecheckFeed { delay: FEED_RETRY }]);
        // A fresh feed is put in place: the held-back phases follow in order.
        let s = m.on(Fact::Feed(Ok(feed(6, 2, 1))));
        assert_eq!(
            phases(&s),
            [
                (Phase::FeedSync, PhaseOutcome::Skipped),
                (Phase::FeedReady, PhaseOutcome::Done),
                (Phase::ScannerBoot, PhaseOutcome::Started),
                (Phase::ScannerBoot, PhaseOutcome::Done),
            ]
        );
        assert_eq!(
            s.actions,
            [Action::WaitVts {
                generation: 0,
                expected: 8,
                version: Some("202406120502".into()),
                delay: Duration::ZERO
            }]
        );
        assert!(!m.scan_ready());
    }

    #[test]
    fn an_empty_feed_never_starts_the_stack() {
        let mut m = Machine::new(thresholds());
        let mut empty = feed(0, 0, 0);
        empty.plugins_present = false;
        let s = m.on(Fact::Feed(Ok(empty)));
        assert_eq!(s.actions, [Action::RecheckFeed { delay: FEED_RETRY }]);
        assert_eq!(s.reports[1].phase, Phase::FeedReady);
        assert_eq!(s.reports[1].outcome, PhaseOutcome::Failed);
        let s = m.on(Fact::Feed(Err("permission denied".into())));
        assert_eq!(
            s.reports[1].reason.as_deref(),
            Some("the feed cannot be read: permission denied; checking again every 60 s")
        );
        assert!(!s.actions.contains(&Action::StartStack));
        assert!(!m.scan_ready());
    }

    #[test]
    fn too_few_vts_is_not_ready() {
        let mut m = Machine::new(thresholds());
        m.on(Fact::Feed(Ok(feed(5, 2, 2))));
        m.on(Fact::StackReady);
        let s = m.on(loaded(0, 6));
        assert!(s.reports.is_empty());
        // Still short of the feed on disk: wait again.
        assert!(matches!(
            s.actions[..],
            [Action::WaitVts { expected: 7, .. }]
        ));
        assert!(!m.scan_ready());
        let s = m.on(Fact::VtsFailed {
            generation: 0,
            why: "ospd-openvas has 6 of 7 VTs loaded after 3600 s".into(),
            short: false,
        });
        assert_eq!(phases(&s), [(Phase::Ready, PhaseOutcome::Failed)]);
        assert_eq!(
            s.actions,
            [Action::WaitVts {
                generation: 0,
                expected: 7,
                version: Some("202406120502".into()),
                delay: VTS_RETRY
            }]
        );
        m.on(loaded(0, 7));
        assert!(m.scan_ready());
    }

    #[test]
    fn an_ospd_restart_pauses_scanning_until_vts_are_back() {
        let mut m = Machine::new(thresholds());
        m.on(Fact::Feed(Ok(feed(5, 2, 2))));
        m.on(Fact::StackReady);
        m.on(loaded(0, 7));
        assert!(m.scan_ready());

        let s = m.on(Fact::StackLost {
            why: "ospd-openvas died: exit code 1".into(),
        });
        assert_eq!(phases(&s), [(Phase::ScannerBoot, PhaseOutcome::Started)]);
        assert!(s.reports[0]
            .reason
            .as_deref()
            .unwrap()
            .starts_with("ospd-openvas died: exit code 1; scan jobs wait"));
        assert!(!m.scan_ready());
        // Further losses during the same outage say nothing new.
        let s = m.on(Fact::StackLost {
            why: "restarting ospd-openvas".into(),
        });
        assert!(s.reports.is_empty());

        let s = m.on(Fact::StackReady);
        assert_eq!(phases(&s), [(Phase::ScannerBoot, PhaseOutcome::Done)]);
        assert_eq!(
            s.actions,
            [Action::WaitVts {
                generation: 1,
                expected: 7,
                version: Some("202406120502".into()),
                delay: Duration::ZERO
            }]
        );
        assert!(!m.scan_ready());
        // A count from before the restart does not count.
        let s = m.on(loaded(0, 7));
        assert!(!m.scan_ready());
        assert!(s.reports.is_empty());
        let s = m.on(loaded(1, 7));
        assert_eq!(phases(&s), [(Phase::Ready, PhaseOutcome::Done)]);
        assert!(m.scan_ready());
    }

    #[test]
    fn a_stale_wait_result_triggers_a_fresh_wait() {
        let mut m = Machine::new(thresholds());
        m.on(Fact::Feed(Ok(feed(5, 2, 2))));
        m.on(Fact::StackReady);
        // The first wait is still out when the stack is lost and back.
        m.on(Fact::StackLost {
            why: "redis died".into(),
        });
        let s = m.on(Fact::StackReady);
        assert!(s.actions.is_empty(), "one wait at a time: {s:?}");
        let s = m.on(Fact::VtsFailed {
            generation: 0,
            why: "x".into(),
            short: false,
        });
        assert!(s.reports.is_empty());
        assert!(matches!(
            s.actions[..],
            [Action::WaitVts { generation: 1, .. }]
        ));
    }

    #[test]
    fn giving_up_fails_scanner_boot() {
        let mut m = Machine::new(thresholds());
        m.on(Fact::Feed(Ok(feed(5, 2, 2))));
        let s = m.on(Fact::StackGaveUp {
            why: "redis failed 5 times in a row; giving up".into(),
        });
        assert_eq!(phases(&s), [(Phase::ScannerBoot, PhaseOutcome::Failed)]);
        assert!(!m.scan_ready());
        assert!(m.on(Fact::StackReady).reports.is_empty());
    }
}
