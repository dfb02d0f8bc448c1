//! Supervises the OpenVAS scanner stack on the sensor.
//!
//! Debian's `mosquitto`, `redis-server`, `notus-scanner` and `ospd-openvas`
//! run as child processes of `outpostd`, started in that order, each only
//! after the one before answers its readiness probe:
//!
//! | component | probe |
//! | --- | --- |
//! | mosquitto | an MQTT 3.1.1 CONNECT on 127.0.0.1:1883 answered by CONNACK 0 |
//! | redis | `PING` on its unix socket answered by `+PONG` (not `-LOADING`) |
//! | notus-scanner | the process holds an established TCP connection to the broker |
//! | ospd-openvas | `<get_version/>` on its unix socket answered (via outpost-osp) |
//!
//! [`StackConfig`] renders the hardened configs (redis on a unix socket
//! only with persistence on the data partition, mosquitto on loopback with
//! a topic ACL, `openvas.conf`) and builds the four [`Component`]s; the
//! [`Supervisor`] owns the processes, drops privileges, restarts what dies
//! or stops answering (exponential backoff, dependents restarted in order)
//! and reports every step as an [`Event`]. [`wait_for_vts`] tells when
//! ospd-openvas has loaded the whole feed.

mod component;
mod error;
mod ledger;
mod probe;
mod process;
mod stack;
mod supervisor;
mod users;
mod vtcache;
mod vts;

pub use component::{Component, Probe, ProbePolicy, RestartPolicy, RunAs, RuntimeDir};
pub use error::{ProbeError, ScannerError};
pub use ledger::{Ledger, Leftover};
pub use probe::{check_probe, established_to_port, mqtt_connect_packet, redis_save};

pub use stack::{
    Programs, StackConfig, Users, MOSQUITTO, MQTT_TOPICS, NOTUS_SCANNER, OSPD_OPENVAS, REDIS,
};
pub use supervisor::{ComponentState, ComponentStatus, Event, Supervisor};
pub use users::{Identity, Passwd};
pub use vtcache::{count_cached_vts, CachedVts};
pub use vts::{wait_for_vts, wait_for_vts_of, VtsProgress, VtsWait};
