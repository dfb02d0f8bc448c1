//! The [`Supervisor`]: one thread that owns the children, starts them in
//! order, probes them, restarts what fails and reports [`Event`]s.

use std::collections::HashSet;
use std::fmt;
use std::process::Child;
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::component::Component;
use crate::error::ScannerError;
use crate::ledger::Ledger;
use crate::probe::check_probe;
use crate::process;
use crate::users::{Identity, Passwd};

/// Something that happened to a component; outpostd forwards these to the
/// portal. `Display` gives the one-line text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The process was started.
    Started {
        /// Component name.
        component: String,
        /// Its pid.
        pid: u32,
    },
    /// The process could not be started at all.
    SpawnFailed {
        /// Component name.
        component: String,
        /// Why.
        error: String,
    },
    /// The component answered its readiness probe.
    Ready {
        /// Component name.
        component: String,
        /// Time from start to ready.
        after: Duration,
    },
    /// Every component is ready.
    AllReady,
    /// A probe failed (while starting: only the last one before the
    /// deadline is reported; once ready: each one).
    ProbeFailed {
        /// Component name.
        component: String,
        /// The probe's error.
        reason: String,
        /// Consecutive failures so far.
        consecutive: u32,
    },
    /// The component did not become ready in time.
    NotReady {
        /// Component name.
        component: String,
        /// How long it had.
        waited: Duration,
        /// The last probe error.
        reason: String,
    },
    /// The process exited on its own.
    Died {
        /// Component name.
        component: String,
        /// "exit code 1", "killed by signal 9 (SIGKILL)".
        status: String,
    },
    /// The supervisor is stopping the process.
    Stopping {
        /// Component name.
        component: String,
        /// Why: a failed dependency, a request, shutdown.
        reason: String,
    },
    /// The process is gone after a stop.
    Stopped {
        /// Component name.
        component: String,
        /// How it ended.
        status: String,
    },
    /// The component will be started again after a delay.
    Restarting {
        /// Component name.
        component: String,
        /// The backoff delay.
        delay: Duration,
        /// Restarts so far, this one included.
        restarts: u32,
    },
    /// Too many consecutive failures; the component stays down.
    GaveUp {
        /// Component name.
        component: String,
        /// Consecutive failures.
        failures: u32,
    },
}

impl Event {
    /// The component the event is about (`None` for [`Event::AllReady`]).
    pub fn component(&self) -> Option<&str> {
        match self {
            Event::AllReady => None,
            Event::Started { component, .. }
            | Event::SpawnFailed { component, .. }
            | Event::Ready { component, .. }
            | Event::ProbeFailed { component, .. }
            | Event::NotReady { component, .. }
            | Event::Died { component, .. }
            | Event::Stopping { component, .. }
            | Event::Stopped { component, .. }
            | Event::Restarting { component, .. }
            | Event::GaveUp { component, .. } => Some(component),
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Started { component, pid } => write!(f, "{component} started (pid {pid})"),
            Event::SpawnFailed { component, error } => {
                write!(f, "{component} could not be started: {error}")
            }
            Event::Ready { component, after } => {
                write!(f, "{component} ready after {:.1} s", after.as_secs_f64())
            }
            Event::AllReady => write!(f, "scanner stack ready"),
            Event::ProbeFailed {
                component,
                reason,
                consecutive,
            } => write!(f, "{component} probe failed ({consecutive}x): {reason}"),
            Event::NotReady {
                component,
                waited,
                reason,
            } => write!(
                f,
                "{component} not ready after {} s: {reason}",
                waited.as_secs()
            ),
            Event::Died { component, status } => write!(f, "{component} died: {status}"),
            Event::Stopping { component, reason } => write!(f, "stopping {component}: {reason}"),
            Event::Stopped { component, status } => write!(f, "{component} stopped ({status})"),
            Event::Restarting {
                component,
                delay,
                restarts,
            } => write!(
                f,
                "restarting {component} in {:.1} s (restart #{restarts})",
                delay.as_secs_f64()
            ),
            Event::GaveUp {
                component,
                failures,
            } => write!(f, "{component} failed {failures} times in a row; giving up"),
        }
    }
}

/// Where a component is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComponentState {
    /// Not running; waiting for its dependencies or its backoff.
    Down,
    /// Running, not yet answering its probe.
    Starting,
    /// Running and answering.
    Ready,
    /// Given up after too many failures.
    Failed,
}

/// A snapshot of one component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentStatus {
    /// Component name.
    pub name: String,
    /// Its state.
    pub state: ComponentState,
    /// Its pid while running.
    pub pid: Option<u32>,
    /// Times it was restarted (after a failure, for a dependency, or on
    /// request).
    pub restarts: u32,
}

type Callback = Box<dyn Fn(&Event) + Send>;

enum Command {
    Restart(String, mpsc::Sender<Result<(), ScannerError>>),
    Shutdown,
}

struct Shared {
    status: Mutex<Vec<ComponentStatus>>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Vec<ComponentStatus>> {
        // A poisoned lock only means a callback panicked mid-update; the
        // snapshot is still the best there is.
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Owns the scanner stack's processes. Components start in list order,
/// each once all before it are ready; each depends on all before it.
/// Dropping the supervisor shuts the stack down.
pub struct Supervisor {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Supervisor {
    /// Resolves identities against `/etc/passwd` and `/etc/group`, then
    /// starts supervising. `on_event` runs on the supervisor thread.
    pub fn start(
        components: Vec<Component>,
        on_event: impl Fn(&Event) + Send + 'static,
    ) -> Result<Supervisor, ScannerError> {
        let needs_accounts = components.iter().any(|c| c.run_as.is_some());
        let passwd = if needs_accounts {
            Some(Passwd::system()?)
        } else {
            None
        };
        Self::start_with(components, passwd.as_ref(), on_event)
    }

    /// Like [`Supervisor::start`] with an explicit account database.
    pub fn start_with(
        components: Vec<Component>,
        passwd: Option<&Passwd>,
        on_event: impl Fn(&Event) + Send + 'static,
    ) -> Result<Supervisor, ScannerError> {
        Self::start_with_ledger(components, passwd, None, on_event)
    }

    /// Like [`Supervisor::start_with`], keeping the running process groups in `ledger`:
    /// groups a previous supervisor left running are stopped first (each reported as
    /// [`Event::Stopped`]), then the stack starts.
    pub fn start_with_ledger(
        components: Vec<Component>,
        passwd: Option<&Passwd>,
        ledger: Option<Ledger>,
        on_event: impl Fn(&Event) + Send + 'static,
    ) -> Result<Supervisor, ScannerError> {
        let mut seen = HashSet::new();
        let mut slots = Vec::with_capacity(components.len());
        for c in components {
            if !seen.insert(c.name.clone()) {
                return Err(ScannerError::DuplicateName(c.name));
            }
            let identity = match (&c.run_as, passwd) {
                (Some(run), Some(db)) => Some(db.resolve(&c.name, run)?),
                (Some(run), None) => {
                    return Err(ScannerError::UnknownUser {
                        component: c.name.clone(),
                        user: run.user.clone(),
                    })
                }
                (None, _) => None,
            };
            slots.push(Slot::new(c, identity));
        }
        let shared = Arc::new(Shared {
            status: Mutex::new(slots.iter().map(Slot::status).collect()),
            changed: Condvar::new(),
        });
        let (tx, rx) = mpsc::channel();
        let mut control = Control {
            slots,
            on_event: Box::new(on_event),
            shared: shared.clone(),
            all_ready: false,
            ledger,
        };
        let thread = thread::Builder::new()
            .name("scanner-supervisor".into())
            .spawn(move || control.run(rx))
            .map_err(ScannerError::Thread)?;
        Ok(Supervisor {
            commands: tx,
            shared,
            thread: Some(thread),
        })
    }

    /// True when every component answers its probe.
    pub fn ready(&self) -> bool {
        let s = self.shared.lock();
        !s.is_empty() && s.iter().all(|c| c.state == ComponentState::Ready)
    }

    /// Waits up to `timeout` for [`Supervisor::ready`].
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, |s| {
            !s.is_empty() && s.iter().all(|c| c.state == ComponentState::Ready)
        })
    }

    /// Waits up to `timeout` until `cond` holds for the status snapshot.
    pub fn wait_until(&self, timeout: Duration, cond: impl Fn(&[ComponentStatus]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.shared.lock();
        loop {
            if cond(&s) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = match self.shared.changed.wait_timeout(s, left) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// A snapshot of every component, in start order.
    pub fn status(&self) -> Vec<ComponentStatus> {
        self.shared.lock().clone()
    }

    /// Restarts one component (and, after it, its dependents) now,
    /// without backoff.
    pub fn restart(&self, name: &str) -> Result<(), ScannerError> {
        let (tx, rx) = mpsc::channel();
        self.commands
            .send(Command::Restart(name.to_owned(), tx))
            .map_err(|_| ScannerError::NotRunning)?;
        rx.recv().map_err(|_| ScannerError::NotRunning)?
    }

    /// Stops every component in reverse start order (SIGTERM, then SIGKILL
    /// after each one's grace period) and ends supervision.
    pub fn shutdown(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                warn!("scanner supervisor thread panicked");
            }
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

enum Run {
    Down {
        not_before: Instant,
    },
    Starting {
        child: Child,
        since: Instant,
        next_probe: Instant,
    },
    Ready {
        child: Child,
        since: Instant,
        ready_at: Instant,
        next_probe: Instant,
        misses: u32,
    },
    Failed,
}

struct Slot {
    spec: Component,
    identity: Option<Identity>,
    run: Run,
    restarts: u32,
    /// Consecutive failures, for the backoff.
    streak: u32,
}

impl Slot {
    fn new(spec: Component, identity: Option<Identity>) -> Self {
        Slot {
            spec,
            identity,
            run: Run::Down {
                not_before: Instant::now(),
            },
            restarts: 0,
            streak: 0,
        }
    }

    fn child(&mut self) -> Option<&mut Child> {
        match &mut self.run {
            Run::Starting { child, .. } | Run::Ready { child, .. } => Some(child),
            _ => None,
        }
    }

    fn status(&self) -> ComponentStatus {
        let (state, pid) = match &self.run {
            Run::Down { .. } => (ComponentState::Down, None),
            Run::Starting { child, .. } => (ComponentState::Starting, Some(child.id())),
            Run::Ready { child, .. } => (ComponentState::Ready, Some(child.id())),
            Run::Failed => (ComponentState::Failed, None),
        };
        ComponentStatus {
            name: self.spec.name.clone(),
            state,
            pid,
            restarts: self.restarts,
        }
    }

    fn is_ready(&self) -> bool {
        matches!(self.run, Run::Ready { .. })
    }
}

struct Control {
    slots: Vec<Slot>,
    on_event: Callback,
    shared: Arc<Shared>,
    all_ready: bool,
    ledger: Option<Ledger>,
}

/// How often the loop looks at its children when nothing else is due.
const TICK: Duration = Duration::from_millis(100);

impl Control {
    fn run(&mut self, commands: mpsc::Receiver<Command>) {
        self.stop_leftovers();
        loop {
            match commands.recv_timeout(TICK) {
                Ok(Command::Shutdown) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Ok(Command::Restart(name, reply)) => {
                    let _ = reply.send(self.restart_on_request(&name));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            self.step();
            self.publish();
        }
        self.shutdown();
        self.publish();
    }

    /// What a supervisor that died left running goes before anything starts.
    fn stop_leftovers(&mut self) {
        let Some(ledger) = &self.ledger else {
            return;
        };
        let grace = self
            .slots
            .iter()
            .map(|s| s.spec.stop_grace)
            .max()
            .unwrap_or_default();
        for l in ledger.stop_leftovers(grace) {
            self.emit(Event::Stopped {
                component: l.component,
                status: format!(
                    "left running by a previous supervisor (process group {}): stopped",
                    l.pgid
                ),
            });
        }
    }

    /// Writes the running groups down (see [`Ledger`]).
    fn record_groups(&self) {
        let Some(ledger) = &self.ledger else {
            return;
        };
        let groups: Vec<(i32, &str, &std::path::Path)> = self
            .slots
            .iter()
            .filter_map(|s| match &s.run {
                Run::Starting { child, .. } | Run::Ready { child, .. } => Some((
                    i32::try_from(child.id()).ok()?,
                    s.spec.name.as_str(),
                    s.spec.program.as_path(),
                )),
                _ => None,
            })
            .collect();
        if let Err(e) = ledger.record(&groups) {
            warn!(target: "outpost_scanner", error = %e, "cannot record the scanner's process groups");
        }
    }

    fn emit(&self, e: Event) {
        match &e {
            Event::Died { .. }
            | Event::NotReady { .. }
            | Event::ProbeFailed { .. }
            | Event::SpawnFailed { .. }
            | Event::GaveUp { .. } => warn!(target: "outpost_scanner", "{e}"),
            _ => info!(target: "outpost_scanner", "{e}"),
        }
        (self.on_event)(&e);
    }

    fn publish(&mut self) {
        let now_ready = !self.slots.is_empty() && self.slots.iter().all(Slot::is_ready);
        if now_ready && !self.all_ready {
            self.emit(Event::AllReady);
        }
        self.all_ready = now_ready;
        let snapshot: Vec<_> = self.slots.iter().map(Slot::status).collect();
        let pids_changed = {
            let s = self.shared.lock();
            s.iter().map(|c| c.pid).ne(snapshot.iter().map(|c| c.pid))
        };
        if pids_changed {
            self.record_groups();
        }
        let mut s = self.shared.lock();
        if *s != snapshot {
            *s = snapshot;
            self.shared.changed.notify_all();
        }
    }

    /// One pass: reap, probe, start.
    fn step(&mut self) {
        for i in 0..self.slots.len() {
            self.reap(i);
        }
        for i in 0..self.slots.len() {
            self.advance(i);
        }
    }

    fn reap(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        let Some(child) = slot.child() else { return };
        let status = match child.try_wait() {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(e) => {
                warn!(component = %slot.spec.name, error = %e, "cannot poll child");
                return;
            }
        };
        // Leftovers of its group (a redis save child, openvas scans) go too.
        process::signal_group(child, libc::SIGKILL);
        let name = slot.spec.name.clone();
        slot.run = Run::Down {
            not_before: Instant::now(),
        };
        self.emit(Event::Died {
            component: name.clone(),
            status: process::describe(&status),
        });
        self.failed(i, &format!("dependency {name} died"));
    }

    fn advance(&mut self, i: usize) {
        let now = Instant::now();
        let deps_ready = self.slots[..i].iter().all(Slot::is_ready);
        match &self.slots[i].run {
            Run::Down { not_before } if deps_ready && now >= *not_before => self.launch(i),
            Run::Starting { next_probe, .. } if now >= *next_probe => self.probe_starting(i),
            Run::Ready { next_probe, .. } if now >= *next_probe => self.probe_ready(i),
            _ => {}
        }
    }

    fn probe_starting(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        let Run::Starting { child, since, .. } = &slot.run else {
            return;
        };
        let (pid, since) = (child.id(), *since);
        let policy = slot.spec.probe_policy.clone();
        match check_probe(&slot.spec.probe, pid, since.elapsed(), policy.timeout) {
            Ok(()) => {
                if let Run::Starting { child, .. } = std::mem::replace(&mut slot.run, Run::Failed) {
                    let now = Instant::now();
                    slot.run = Run::Ready {
                        child,
                        since,
                        ready_at: now,
                        next_probe: now + policy.interval,
                        misses: 0,
                    };
                }
                let e = Event::Ready {
                    component: slot.spec.name.clone(),
                    after: since.elapsed(),
                };
                self.emit(e);
            }
            Err(err) => {
                if let Run::Starting { next_probe, .. } = &mut slot.run {
                    *next_probe = Instant::now() + policy.interval;
                }
                if since.elapsed() >= policy.ready_within {
                    let name = slot.spec.name.clone();
                    self.emit(Event::NotReady {
                        component: name.clone(),
                        waited: since.elapsed(),
                        reason: err.to_string(),
                    });
                    self.stop_slot(i, "not ready in time");
                    self.failed(i, &format!("dependency {name} restarting"));
                }
            }
        }
    }

    fn probe_ready(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        let Run::Ready { child, since, .. } = &slot.run else {
            return;
        };
        let policy = slot.spec.probe_policy.clone();
        let result = check_probe(
            &slot.spec.probe,
            child.id(),
            since.elapsed(),
            policy.timeout,
        );
        let reset_after = slot.spec.restart.reset_after;
        let Run::Ready {
            ready_at,
            next_probe,
            misses,
            ..
        } = &mut slot.run
        else {
            return;
        };
        *next_probe = Instant::now() + policy.interval;
        match result {
            Ok(()) => {
                *misses = 0;
                if ready_at.elapsed() >= reset_after {
                    slot.streak = 0;
                }
            }
            Err(err) => {
                *misses += 1;
                let misses = *misses;
                let name = slot.spec.name.clone();
                self.emit(Event::ProbeFailed {
                    component: name.clone(),
                    reason: err.to_string(),
                    consecutive: misses,
                });
                if misses >= policy.failures_before_restart.max(1) {
                    self.stop_slot(i, "stopped answering its probe");
                    self.failed(i, &format!("dependency {name} restarting"));
                }
            }
        }
    }

    fn launch(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        match process::spawn(&slot.spec, slot.identity.as_ref()) {
            Ok(child) => {
                let pid = child.id();
                let now = Instant::now();
                slot.run = Run::Starting {
                    child,
                    since: now,
                    next_probe: now,
                };
                let e = Event::Started {
                    component: slot.spec.name.clone(),
                    pid,
                };
                self.emit(e);
            }
            Err(err) => {
                let e = Event::SpawnFailed {
                    component: slot.spec.name.clone(),
                    error: err.to_string(),
                };
                self.emit(e);
                self.failed(i, "dependency could not start");
            }
        }
    }

    /// Component `i` failed and is down: stop its dependents, count the
    /// failure, and schedule the restart (or give up).
    fn failed(&mut self, i: usize, dependents_reason: &str) {
        self.stop_dependents(i, dependents_reason);
        let slot = &mut self.slots[i];
        slot.streak += 1;
        if let Some(max) = slot.spec.restart.max_consecutive_failures {
            if slot.streak >= max {
                slot.run = Run::Failed;
                let e = Event::GaveUp {
                    component: slot.spec.name.clone(),
                    failures: slot.streak,
                };
                self.emit(e);
                return;
            }
        }
        let delay = slot.spec.restart.backoff(slot.streak);
        slot.restarts += 1;
        slot.run = Run::Down {
            not_before: Instant::now() + delay,
        };
        let e = Event::Restarting {
            component: slot.spec.name.clone(),
            delay,
            restarts: slot.restarts,
        };
        self.emit(e);
    }

    /// Stops every running component after `i`, last first; they start
    /// again in order once `i` is ready.
    fn stop_dependents(&mut self, i: usize, reason: &str) {
        for j in (i + 1..self.slots.len()).rev() {
            if self.slots[j].child().is_some() {
                self.stop_slot(j, reason);
                self.slots[j].restarts += 1;
            }
        }
    }

    /// Stops a running component; leaves it `Down` and startable now.
    fn stop_slot(&mut self, i: usize, reason: &str) {
        let name = self.slots[i].spec.name.clone();
        let grace = self.slots[i].spec.stop_grace;
        let Some(child) = self.slots[i].child() else {
            return;
        };
        let pid = child.id();
        self.emit(Event::Stopping {
            component: name.clone(),
            reason: reason.to_owned(),
        });
        let Some(child) = self.slots[i].child() else {
            return;
        };
        let status = match process::stop(child, grace) {
            Ok(s) => process::describe(&s),
            Err(e) => format!("pid {pid}: {e}"),
        };
        self.slots[i].run = Run::Down {
            not_before: Instant::now(),
        };
        self.emit(Event::Stopped {
            component: name,
            status,
        });
    }

    fn restart_on_request(&mut self, name: &str) -> Result<(), ScannerError> {
        let i = self
            .slots
            .iter()
            .position(|s| s.spec.name == name)
            .ok_or_else(|| ScannerError::UnknownComponent(name.to_owned()))?;
        self.stop_dependents(i, &format!("dependency {name} restarting on request"));
        self.stop_slot(i, "restart requested");
        let slot = &mut self.slots[i];
        slot.restarts += 1;
        slot.streak = 0;
        slot.run = Run::Down {
            not_before: Instant::now(),
        };
        Ok(())
    }

    fn shutdown(&mut self) {
        for i in (0..self.slots.len()).rev() {
            self.stop_slot(i, "shutdown");
            self.slots[i].run = Run::Down {
                not_before: Instant::now(),
            };
        }
    }
}
