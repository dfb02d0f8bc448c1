//! The supervisor against the real Debian `mosquitto` and `redis-server`
//! (installed by scripts/setup: redis-server, mosquitto, mosquitto-clients).
//! notus-scanner and ospd-openvas are sid-only; here `mosquitto_sub` stands
//! in as the broker client in the notus slot (same probe: an established
//! connection to the broker). The real two run only in the QEMU system test.
//!
//! As root (CI, the dev machine) redis and mosquitto run as their own
//! accounts, as on the sensor; otherwise as the test's user.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use outpost_scanner::{
    Component, ComponentState, Event, Passwd, Probe, RestartPolicy, RunAs, StackConfig, Supervisor,
    MOSQUITTO, REDIS,
};

const WAIT: Duration = Duration::from_secs(60);

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

fn which(prog: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(dir).join(prog);
        if p.exists() {
            return p;
        }
    }
    panic!("{prog} is not installed: run scripts/setup (needs redis-server, mosquitto, mosquitto-clients)");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let p =
            std::env::temp_dir().join(format!("outpost-scanner-it-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A stack config for this test: everything under `root`, its own port.
fn stack(root: &Path) -> StackConfig {
    let mut s = StackConfig::device();
    s.config_dir = root.join("conf");
    s.openvas_conf = None;
    s.log_dir = Some(root.join("log"));
    s.redis_socket = root.join("run/redis-openvas/redis.sock");
    s.redis_data_dir = root.join("data/redis");
    s.mqtt_port = free_port();
    s.programs.redis = which("redis-server");
    s.programs.mosquitto = which("mosquitto");
    if !is_root() {
        s.users.redis = None;
        s.users.mosquitto = None;
    }
    s.users.gvm = None;
    s
}

/// mosquitto and redis from the rendered configs, then a broker client in
/// the notus slot.
fn components(s: &StackConfig) -> Vec<Component> {
    let passwd = is_root().then(|| Passwd::system().unwrap());
    s.write_configs(passwd.as_ref()).unwrap();
    let mut c: Vec<Component> = s.components().into_iter().take(2).collect();
    let mut notus = Component::new(
        "notus-scanner",
        which("mosquitto_sub"),
        Probe::BrokerConnection { port: s.mqtt_port },
    )
    .args([
        "-h",
        "127.0.0.1",
        "-t",
        "scanner/scan/info",
        "-i",
        "outpost-it-notus",
        "-p",
    ])
    .args([s.mqtt_port.to_string()]);
    notus.probe_policy.interval = Duration::from_millis(200);
    notus.stop_grace = Duration::from_secs(5);
    c.push(notus);
    for comp in &mut c {
        comp.probe_policy.interval = Duration::from_millis(200);
        comp.restart.initial_backoff = Duration::from_millis(200);
        comp.restart.max_backoff = Duration::from_secs(2);
    }
    c
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Event>>>);

impl Log {
    fn sink(&self) -> impl Fn(&Event) + Send + 'static {
        let l = self.0.clone();
        move |e| l.lock().unwrap().push(e.clone())
    }
    fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }
    fn text(&self) -> Vec<String> {
        self.events().iter().map(|e| e.to_string()).collect()
    }
    /// Waits until `pred` holds for some event after the first `from`.
    fn wait_for(&self, from: usize, what: &str, pred: impl Fn(&Event) -> bool) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            let ev = self.events();
            if let Some(i) = ev.iter().skip(from).position(&pred) {
                return from + i;
            }
            assert!(
                Instant::now() < deadline,
                "no {what}; events: {:#?}",
                self.text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

fn pid_of(sup: &Supervisor, name: &str) -> u32 {
    sup.status()
        .into_iter()
        .find(|c| c.name == name)
        .and_then(|c| c.pid)
        .unwrap()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn redis(socket: &Path, cmd: &[&str]) -> String {
    let mut s = UnixStream::connect(socket).unwrap();
    let mut req = format!("*{}\r\n", cmd.len());
    for a in cmd {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    if let Some(n) = line
        .strip_prefix('$')
        .and_then(|n| n.trim().parse::<usize>().ok())
    {
        let mut body = vec![0u8; n + 2];
        r.read_exact(&mut body).unwrap();
        return String::from_utf8_lossy(&body[..n]).into_owned();
    }
    line.trim_end().to_owned()
}

fn starts(ev: &[Event]) -> Vec<String> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Started { component, .. } => Some(format!("start {component}")),
            Event::Ready { component, .. } => Some(format!("ready {component}")),
            _ => None,
        })
        .collect()
}

#[test]
fn real_stack_starts_in_order_restarts_dependents_and_stops_in_reverse() {
    let dir = Scratch::new("lifecycle");
    let s = stack(&dir.0);
    let log = Log::default();
    let sup = Supervisor::start(components(&s), log.sink()).unwrap();
    assert!(sup.wait_ready(WAIT), "not ready: {:#?}", log.text());
    assert!(sup.ready());

    // Start order: each one only after the previous answered its probe.
    assert_eq!(
        starts(&log.events()),
        [
            "start mosquitto",
            "ready mosquitto",
            "start redis",
            "ready redis",
            "start notus-scanner",
            "ready notus-scanner"
        ]
    );
    assert_eq!(log.events().last(), Some(&Event::AllReady));

    let (mosq, red, notus) = (
        pid_of(&sup, MOSQUITTO),
        pid_of(&sup, REDIS),
        pid_of(&sup, "notus-scanner"),
    );
    if is_root() {
        let passwd = Passwd::system().unwrap();
        let redis_uid = passwd.resolve(REDIS, &RunAs::user("redis")).unwrap().uid;
        let mosq_uid = passwd
            .resolve(MOSQUITTO, &RunAs::user("mosquitto"))
            .unwrap()
            .uid;
        assert_eq!(uid_of(red), redis_uid, "redis must not run as root");
        assert_eq!(uid_of(mosq), mosq_uid, "mosquitto must not run as root");
    }
    // redis has no TCP listener, only the socket.
    assert_eq!(redis(&s.redis_socket, &["CONFIG", "GET", "port"]), "*2");
    assert_eq!(
        redis(&s.redis_socket, &["SET", "nvticache-marker", "42"]),
        "+OK"
    );

    // kill -9 redis: it comes back, and notus (its dependent) is restarted
    // after it; mosquitto is untouched.
    let mark = log.events().len();
    unsafe { libc::kill(red as i32, libc::SIGKILL) };
    let died = log.wait_for(mark, "redis death", |e| {
        matches!(e, Event::Died { component, status } if component == REDIS && status == "killed by signal 9 (SIGKILL)")
    });
    let all = log.wait_for(died, "ready again", |e| *e == Event::AllReady);
    let after: Vec<String> = log.events()[died..=all]
        .iter()
        .map(|e| e.to_string())
        .collect();
    let pos = |prefix: &str| {
        after
            .iter()
            .position(|t| t.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in {after:#?}"))
    };
    assert!(pos("stopping notus-scanner: dependency redis died") < pos("restarting redis in"));
    assert!(pos("restarting redis in") < pos("redis started"));
    assert!(pos("redis ready") < pos("notus-scanner started"));
    assert_eq!(pid_of(&sup, MOSQUITTO), mosq);
    assert_ne!(pid_of(&sup, REDIS), red);
    assert_ne!(pid_of(&sup, "notus-scanner"), notus);
    assert!(!alive(red) && !alive(notus));
    let st = sup.status();
    assert_eq!(st[1].restarts, 1);
    assert_eq!(st[2].restarts, 1);
    assert_eq!(st[0].restarts, 0);

    // A restart on request: same cascade, no backoff.
    let red2 = pid_of(&sup, REDIS);
    sup.restart(REDIS).unwrap();
    assert!(
        sup.wait_until(WAIT, |s| s.iter().all(|c| c.state == ComponentState::Ready)
            && s[1].pid != Some(red2))
    );
    assert!(!alive(red2));
    assert!(sup.restart("nope").is_err());

    // Shutdown: reverse order, nothing left running, redis saved its dump
    // (with a marker key standing in for the VT cache).
    assert_eq!(
        redis(&s.redis_socket, &["SET", "nvticache-marker", "42"]),
        "+OK"
    );
    // What outpostd does once the VTs are loaded: the only save there is.
    outpost_scanner::redis_save(&s.redis_socket, Duration::from_secs(10)).unwrap();
    let dump = s.redis_data_dir.join("openvas-dump.rdb");
    let deadline = Instant::now() + WAIT;
    let saved =
        |p: &Path| std::fs::read(p).is_ok_and(|b| b.windows(16).any(|w| w == b"nvticache-marker"));
    while !saved(&dump) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(saved(&dump), "BGSAVE wrote {}", dump.display());
    // Written after the save, like a scan's knowledge base with its credentials:
    // never on disk, not even through the shutdown.
    assert_eq!(
        redis(&s.redis_socket, &["SET", "scan-secret", "hunter2"]),
        "+OK"
    );
    let pids: Vec<u32> = sup.status().iter().map(|c| c.pid.unwrap()).collect();
    let mark = log.events().len();
    sup.shutdown();
    let stops: Vec<String> = log.events()[mark..]
        .iter()
        .filter_map(|e| match e {
            Event::Stopping { component, reason } if reason == "shutdown" => {
                Some(component.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(stops, ["notus-scanner", "redis", "mosquitto"]);
    for p in pids {
        assert!(!alive(p), "pid {p} still running after shutdown");
    }
    let on_disk = std::fs::read(&dump).unwrap();
    assert!(
        !on_disk.windows(7).any(|w| w == b"hunter2"),
        "nothing written after the save reached the disk"
    );

    // A "reboot": the VT cache (here a marker key) survives, the later key does not.
    let log2 = Log::default();
    let sup = Supervisor::start(components(&s), log2.sink()).unwrap();
    assert!(sup.wait_ready(WAIT), "{:#?}", log2.text());
    assert_eq!(redis(&s.redis_socket, &["GET", "nvticache-marker"]), "42");
    assert_eq!(redis(&s.redis_socket, &["EXISTS", "scan-secret"]), ":0");
    sup.shutdown();
}

#[test]
fn a_component_that_never_becomes_ready_backs_off_and_gives_up() {
    let dir = Scratch::new("never");
    let mut c = Component::new(
        "stuck",
        "/bin/sleep",
        Probe::RedisPing {
            socket: dir.0.join("nobody-listens.sock"),
        },
    )
    .args(["600"]);
    c.probe_policy.interval = Duration::from_millis(50);
    c.probe_policy.ready_within = Duration::from_millis(300);
    c.stop_grace = Duration::from_secs(2);
    c.restart = RestartPolicy {
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(150),
        max_consecutive_failures: Some(3),
        reset_after: Duration::from_secs(60),
    };
    let log = Log::default();
    let sup = Supervisor::start(vec![c], log.sink()).unwrap();
    log.wait_for(0, "give-up", |e| matches!(e, Event::GaveUp { .. }));
    let ev = log.events();
    let not_ready: Vec<_> = ev
        .iter()
        .filter(|e| matches!(e, Event::NotReady { .. }))
        .collect();
    assert_eq!(not_ready.len(), 3, "{:#?}", log.text());
    let text = not_ready[0].to_string();
    assert!(
        text.starts_with("stuck not ready after 0 s: cannot connect to redis at "),
        "{text}"
    );
    let delays: Vec<Duration> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Restarting { delay, .. } => Some(*delay),
            _ => None,
        })
        .collect();
    assert_eq!(
        delays,
        [Duration::from_millis(100), Duration::from_millis(150)]
    );
    assert_eq!(
        ev.last().unwrap().to_string(),
        "stuck failed 3 times in a row; giving up"
    );
    assert_eq!(sup.status()[0].state, ComponentState::Failed);
    assert!(!sup.ready());
    sup.shutdown();
}

#[test]
fn a_crashing_component_is_reported_with_its_exit_code() {
    let mut c = Component::new(
        "crashy",
        "/bin/sh",
        Probe::AliveFor {
            grace: Duration::from_secs(30),
        },
    )
    .args(["-c", "exit 3"]);
    c.restart.initial_backoff = Duration::from_millis(50);
    c.restart.max_consecutive_failures = Some(2);
    let log = Log::default();
    let sup = Supervisor::start(vec![c], log.sink()).unwrap();
    log.wait_for(0, "give-up", |e| matches!(e, Event::GaveUp { .. }));
    assert!(
        log.text().contains(&"crashy died: exit code 3".to_owned()),
        "{:#?}",
        log.text()
    );
    sup.shutdown();
}

#[test]
fn mosquitto_acl_keeps_clients_to_the_scanner_topics() {
    let dir = Scratch::new("acl");
    let s = stack(&dir.0);
    let log = Log::default();
    let only_broker: Vec<Component> = components(&s).into_iter().take(1).collect();
    let sup = Supervisor::start(only_broker, log.sink()).unwrap();
    assert!(sup.wait_ready(WAIT), "{:#?}", log.text());
    let port = s.mqtt_port.to_string();

    // One subscriber on an allowed and a forbidden topic; it prints what
    // arrives and exits after two messages or 10 s.
    let mut sub = Command::new(which("mosquitto_sub"))
        .args(["-h", "127.0.0.1", "-p", &port, "-v", "-C", "2", "-W", "10"])
        .args(["-t", "scanner/status", "-t", "other/secret"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Publish until the subscriber has surely subscribed: retained-free
    // QoS 0, so repeat a few times on each topic.
    for i in 0..20 {
        for topic in ["other/secret", "scanner/status"] {
            let st = Command::new(which("mosquitto_pub"))
                .args(["-h", "127.0.0.1", "-p", &port, "-t", topic, "-m"])
                .arg(format!("m{i}"))
                .status()
                .unwrap();
            assert!(st.success());
        }
        if sub.try_wait().unwrap().is_some() {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let out = sub.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines.iter().all(|l| l.starts_with("scanner/status m")),
        "{text}"
    );
    sup.shutdown();
}

#[test]
fn a_hung_redis_is_restarted_after_missed_probes() {
    let dir = Scratch::new("hung");
    let s = stack(&dir.0);
    let mut c: Vec<Component> = components(&s).into_iter().take(2).collect();
    c[1].probe_policy.timeout = Duration::from_millis(300);
    c[1].probe_policy.failures_before_restart = 2;
    c[1].stop_grace = Duration::from_millis(500);
    let log = Log::default();
    let sup = Supervisor::start(c, log.sink()).unwrap();
    assert!(sup.wait_ready(WAIT), "{:#?}", log.text());
    let red = pid_of(&sup, REDIS);
    let mark = log.events().len();
    // Frozen, not dead: only the probe can tell.
    unsafe { libc::kill(red as i32, libc::SIGSTOP) };
    let stop = log.wait_for(mark, "stop of the hung redis", |e| {
        matches!(e, Event::Stopping { component, reason } if component == REDIS && reason == "stopped answering its probe")
    });
    let misses = log.events()[mark..stop]
        .iter()
        .filter(|e| matches!(e, Event::ProbeFailed { component, .. } if component == REDIS))
        .count();
    assert_eq!(misses, 2, "{:#?}", log.text());
    log.wait_for(stop, "ready again", |e| *e == Event::AllReady);
    assert!(!alive(red));
    assert_ne!(pid_of(&sup, REDIS), red);
    sup.shutdown();
}
