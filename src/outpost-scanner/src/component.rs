//! What a supervised component is: plain data, so the image and outpostd
//! can set every path and policy.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// One long-running process of the scanner stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    /// Short name used in events and logs, e.g. `redis`.
    pub name: String,
    /// Executable path.
    pub program: PathBuf,
    /// Arguments (without the program).
    pub args: Vec<OsString>,
    /// User (and group) to run as; `None` keeps the supervisor's own.
    pub run_as: Option<RunAs>,
    /// Environment on top of a clean one (`PATH`, and `HOME`/`USER` of
    /// `run_as`, are always set).
    pub env: Vec<(OsString, OsString)>,
    /// Directories to create (and hand to `run_as`) before each start, as
    /// systemd's `RuntimeDirectory=` does.
    pub runtime_dirs: Vec<RuntimeDir>,
    /// Files to delete before each start: stale pid files and sockets a
    /// killed process left behind.
    pub remove_before_start: Vec<PathBuf>,
    /// Append stdout and stderr here; `None` inherits the supervisor's.
    pub log_file: Option<PathBuf>,
    /// How readiness and liveness are checked.
    pub probe: Probe,
    /// Probe timing.
    pub probe_policy: ProbePolicy,
    /// What happens when it dies or stops answering.
    pub restart: RestartPolicy,
    /// Time between SIGTERM and SIGKILL when stopping.
    pub stop_grace: Duration,
}

/// Identity a component runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// User name from `/etc/passwd`.
    pub user: String,
    /// Primary group name; `None` uses the user's primary group.
    pub group: Option<String>,
}

impl RunAs {
    /// Run as `user` with its primary group and supplementary groups.
    pub fn user(user: impl Into<String>) -> Self {
        RunAs {
            user: user.into(),
            group: None,
        }
    }
}

/// A directory made before a component starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeDir {
    /// The directory.
    pub path: PathBuf,
    /// Permission bits, e.g. `0o2775`.
    pub mode: u32,
}

/// The readiness (and, once ready, liveness) check of a component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// An MQTT broker: CONNECT answered by CONNACK with return code 0.
    Mqtt {
        /// Broker address, e.g. `127.0.0.1:1883`.
        addr: SocketAddr,
    },
    /// A redis server: `PING` on its unix socket answered by `+PONG`.
    RedisPing {
        /// The unix socket.
        socket: PathBuf,
    },
    /// The process holds an established TCP connection to this local
    /// port (read from `/proc`): notus-scanner connected to the broker.
    BrokerConnection {
        /// The broker's port.
        port: u16,
    },
    /// ospd-openvas: `<get_version/>` answered on its unix socket.
    OspVersion {
        /// The OSP unix socket.
        socket: PathBuf,
    },
    /// Ready once the process has stayed up this long.
    AliveFor {
        /// How long.
        grace: Duration,
    },
}

/// Probe timing for one component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbePolicy {
    /// Time between probes.
    pub interval: Duration,
    /// Time allowed for one probe.
    pub timeout: Duration,
    /// Time a fresh start has to become ready before it counts as failed.
    pub ready_within: Duration,
    /// Consecutive failed liveness probes (after ready) before a restart.
    pub failures_before_restart: u32,
}

impl Default for ProbePolicy {
    fn default() -> Self {
        ProbePolicy {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(3),
            ready_within: Duration::from_secs(60),
            failures_before_restart: 3,
        }
    }
}

/// Restarts with exponential backoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Delay before the first restart after a failure.
    pub initial_backoff: Duration,
    /// Longest delay; the delay doubles per consecutive failure up to this.
    pub max_backoff: Duration,
    /// Give up after this many consecutive failures; `None`: never.
    pub max_consecutive_failures: Option<u32>,
    /// A component ready this long has its failure streak forgotten.
    pub reset_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            max_consecutive_failures: None,
            reset_after: Duration::from_secs(120),
        }
    }
}

impl RestartPolicy {
    /// Delay before the next start after `failures` consecutive failures
    /// (1 for the first failure).
    pub fn backoff(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(31);
        self.initial_backoff
            .saturating_mul(1u32 << shift)
            .min(self.max_backoff)
    }
}

impl Component {
    /// A component with default policies, no identity change and no log file.
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>, probe: Probe) -> Self {
        Component {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            run_as: None,
            env: Vec::new(),
            runtime_dirs: Vec::new(),
            remove_before_start: Vec::new(),
            log_file: None,
            probe,
            probe_policy: ProbePolicy::default(),
            restart: RestartPolicy::default(),
            stop_grace: Duration::from_secs(10),
        }
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RestartPolicy {
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(5),
            ..RestartPolicy::default()
        };
        let got: Vec<_> = (1..=6).map(|n| p.backoff(n).as_millis()).collect();
        assert_eq!(got, vec![500, 1000, 2000, 4000, 5000, 5000]);
        assert_eq!(p.backoff(1000), Duration::from_secs(5));
    }
}
