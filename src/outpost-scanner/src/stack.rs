//! The stack itself: hardened configs and the four components, with every
//! path a field so the image and outpostd decide where things live.
//!
//! Flags and defaults follow Debian's packages (sid): ospd-openvas 22.10,
//! notus-scanner 23.0, openvas-scanner 23.x, redis 8, mosquitto 2.1.

use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::{chown, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use outpost_feed::FeedPaths;

use crate::component::{Component, Probe, ProbePolicy, RestartPolicy, RunAs, RuntimeDir};
use crate::error::ScannerError;
use crate::users::Passwd;

/// Component name of the MQTT broker.
pub const MOSQUITTO: &str = "mosquitto";
/// Component name of redis.
pub const REDIS: &str = "redis";
/// Component name of notus-scanner.
pub const NOTUS_SCANNER: &str = "notus-scanner";
/// Component name of ospd-openvas.
pub const OSPD_OPENVAS: &str = "ospd-openvas";

/// Where everything of the stack lives, and who runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackConfig {
    /// Rendered configs: `redis.conf`, `mosquitto.conf`, `mosquitto.acl`,
    /// `notus-scanner.toml`, `openvas.conf` (tmpfs).
    pub config_dir: PathBuf,
    /// Where `openvas.conf` is written. openvas has no flag for it when
    /// ospd-openvas runs it, so on the device this is
    /// `/etc/openvas/openvas.conf` (writable /etc overlay, or a symlink to
    /// `config_dir`); `None` writes it into `config_dir` only.
    pub openvas_conf: Option<PathBuf>,
    /// Per-component log files (`<name>.log`); `None`: the components
    /// write to the supervisor's stderr.
    pub log_dir: Option<PathBuf>,
    /// The feed as the components see it (bind-mounted from /data/feeds).
    pub feed: FeedPaths,
    /// redis' unix socket (its only listener).
    pub redis_socket: PathBuf,
    /// redis' dump directory, on the data partition so the VT cache
    /// survives reboots.
    pub redis_data_dir: PathBuf,
    /// The broker port on 127.0.0.1.
    pub mqtt_port: u16,
    /// ospd-openvas' OSP socket.
    pub ospd_socket: PathBuf,
    /// ospd-openvas' pid and lock files.
    pub ospd_run_dir: PathBuf,
    /// notus-scanner's pid file directory.
    pub notus_run_dir: PathBuf,
    /// Check the feed's GPG-signed sha256sums (Greenbone feed). The demo
    /// feed is unsigned, so the image turns this off for it.
    pub verify_feed_signatures: bool,
    /// Executables.
    pub programs: Programs,
    /// Accounts; `None` runs that component as the supervisor's user
    /// (host tests).
    pub users: Users,
}

/// Executable paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Programs {
    /// `redis-server`.
    pub redis: PathBuf,
    /// `mosquitto`.
    pub mosquitto: PathBuf,
    /// `notus-scanner`.
    pub notus_scanner: PathBuf,
    /// `ospd-openvas`.
    pub ospd_openvas: PathBuf,
}

/// Accounts per component (Debian's: `redis`, `mosquitto`, `_gvm`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Users {
    /// redis.
    pub redis: Option<RunAs>,
    /// mosquitto.
    pub mosquitto: Option<RunAs>,
    /// notus-scanner and ospd-openvas. `_gvm` must be in group `redis`
    /// (Debian's sysusers.d says so) to reach the redis socket.
    pub gvm: Option<RunAs>,
}

/// The only topics the stack uses: openvas publishes package lists to
/// notus-scanner on the first; notus-scanner publishes results (read by
/// ospd-openvas) and status on the others.
pub const MQTT_TOPICS: [&str; 3] = [
    "scanner/package/cmd/notus",
    "scanner/scan/info",
    "scanner/status",
];

impl StackConfig {
    /// Where the supervisor keeps the stack's process groups (in `config_dir`, a tmpfs
    /// on the device), so a restarted daemon stops what a dead one left running.
    pub fn ledger(&self) -> crate::Ledger {
        crate::Ledger::new(self.config_dir.join("process-groups"))
    }

    /// The sensor's layout, Debian's paths and accounts.
    pub fn device() -> Self {
        StackConfig {
            config_dir: "/run/outpost/scanner".into(),
            openvas_conf: Some("/etc/openvas/openvas.conf".into()),
            log_dir: None,
            feed: FeedPaths {
                plugins: "/var/lib/openvas/plugins".into(),
                notus_products: "/var/lib/notus/products".into(),
                notus_advisories: "/var/lib/notus/advisories".into(),
            },
            redis_socket: "/run/redis-openvas/redis.sock".into(),
            redis_data_dir: "/data/redis".into(),
            mqtt_port: 1883,
            ospd_socket: outpost_osp::DEFAULT_SOCKET.into(),
            ospd_run_dir: "/run/ospd".into(),
            notus_run_dir: "/run/notus-scanner".into(),
            verify_feed_signatures: true,
            programs: Programs {
                redis: "/usr/bin/redis-server".into(),
                mosquitto: "/usr/sbin/mosquitto".into(),
                notus_scanner: "/usr/bin/notus-scanner".into(),
                ospd_openvas: "/usr/bin/ospd-openvas".into(),
            },
            users: Users {
                redis: Some(RunAs::user("redis")),
                mosquitto: Some(RunAs::user("mosquitto")),
                gvm: Some(RunAs::user("_gvm")),
            },
        }
    }

    fn conf(&self, name: &str) -> PathBuf {
        self.config_dir.join(name)
    }

    /// `redis.conf`: unix socket only, RDB persistence on the data
    /// partition, in the foreground.
    pub fn render_redis(&self) -> String {
        format!(
            "# Rendered by outpostd; changes are overwritten at every start.\n\
             # No TCP listener: openvas and ospd-openvas use the unix socket.\n\
             port 0\n\
             unixsocket {socket}\n\
             unixsocketperm 770\n\
             protected-mode yes\n\
             daemonize no\n\
             supervised no\n\
             logfile \"\"\n\
             loglevel notice\n\
             # openvas takes one database per scanned host plus the VT cache.\n\
             databases 1025\n\
             # The VT cache persists on the data partition, so a warm boot\n\
             # finds it and ospd-openvas does not reload every VT. Only\n\
             # outpostd saves it (BGSAVE once the VTs are loaded, before any\n\
             # scan): no save points, so a scan's knowledge base, which holds\n\
             # its credentials, is never written to disk, not even at shutdown.\n\
             dir {dir}\n\
             dbfilename openvas-dump.rdb\n\
             save \"\"\n\
             # A full data partition must not stop running scans.\n\
             stop-writes-on-bgsave-error no\n\
             rdbcompression yes\n\
             rdbchecksum yes\n\
             appendonly no\n\
             timeout 0\n",
            socket = self.redis_socket.display(),
            dir = self.redis_data_dir.display(),
        )
    }

    /// `mosquitto.conf`: loopback only; anonymous clients, limited by the
    /// ACL to the scanner topics. Why anonymous: openvas, notus-scanner and
    /// ospd-openvas connect without credentials by default, the listener is
    /// reachable only from this host, and the sensor runs no untrusted
    /// local users; the ACL still keeps any client off other topics.
    pub fn render_mosquitto(&self) -> String {
        format!(
            "# Rendered by outpostd; changes are overwritten at every start.\n\
             per_listener_settings false\n\
             listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             acl_file {acl}\n\
             persistence false\n\
             log_dest stderr\n\
             log_type error\n\
             log_type warning\n\
             log_type notice\n\
             connection_messages false\n\
             max_connections 256\n",
            port = self.mqtt_port,
            acl = self.conf("mosquitto.acl").display(),
        )
    }

    /// `mosquitto.acl`: rules before any `user` line apply to anonymous
    /// clients; everything not granted is denied.
    pub fn render_acl(&self) -> String {
        let mut s = String::from(
            "# Rendered by outpostd. Anonymous clients (the scanner stack on\n\
             # loopback) may use only the topics the stack exchanges.\n",
        );
        for t in MQTT_TOPICS {
            s.push_str(&format!("topic readwrite {t}\n"));
        }
        s
    }

    /// `openvas.conf`: redis socket, broker, feed location.
    pub fn render_openvas(&self) -> String {
        format!(
            "# Rendered by outpostd; changes are overwritten at every start.\n\
             db_address = {socket}\n\
             mqtt_server_uri = 127.0.0.1:{port}\n\
             plugins_folder = {plugins}\n\
             include_folders = {plugins}\n\
             # Alive detection (boreas) before any test: only hosts that answer the\n\
             # job's methods (ICMP, TCP ping, ARP) are scanned, the rest reported\n\
             # dead. Without it ospd-openvas passes no alive test on and every\n\
             # address of a /24 is scanned as if alive.\n\
             test_alive_hosts_only = yes\n\
             # Every script is checked against the feed's OpenPGP-signed sha256sums\n\
             # (keys in /etc/openvas/gnupg) before it runs; a lab feed may be unsigned.\n\
             nasl_no_signature_check = {no_check}\n",
            socket = self.redis_socket.display(),
            port = self.mqtt_port,
            plugins = self.feed.plugins.display(),
            no_check = if self.verify_feed_signatures {
                "no"
            } else {
                "yes"
            },
        )
    }

    /// `notus-scanner.toml`. Passed with `-c`, so Debian's
    /// `/etc/gvm/notus-scanner.toml` (which logs to /var/log) is not read.
    pub fn render_notus(&self) -> String {
        format!(
            "# Rendered by outpostd; changes are overwritten at every start.\n\
             [notus-scanner]\n\
             products-directory = \"{products}\"\n\
             mqtt-broker-address = \"127.0.0.1\"\n\
             mqtt-broker-port = {port}\n\
             pid-file = \"{pid}\"\n\
             log-level = \"INFO\"\n\
             disable-hashsum-verification = {no_verify}\n",
            products = self.feed.notus_products.display(),
            port = self.mqtt_port,
            pid = self.notus_run_dir.join("notus-scanner.pid").display(),
            no_verify = !self.verify_feed_signatures,
        )
    }

    /// Writes every config (mode 0640, owned by the component's account
    /// when `passwd` resolves it; that needs root).
    pub fn write_configs(&self, passwd: Option<&Passwd>) -> Result<(), ScannerError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ScannerError::Render { path, source }
        };
        fs::create_dir_all(&self.config_dir).map_err(err(&self.config_dir))?;
        fs::set_permissions(&self.config_dir, fs::Permissions::from_mode(0o755))
            .map_err(err(&self.config_dir))?;
        let owner = |run: &Option<RunAs>, name: &str| -> Result<Option<(u32, u32)>, ScannerError> {
            match (run, passwd) {
                (Some(r), Some(db)) => db.resolve(name, r).map(|id| Some((id.uid, id.gid))),
                _ => Ok(None),
            }
        };
        let redis = owner(&self.users.redis, REDIS)?;
        let mosq = owner(&self.users.mosquitto, MOSQUITTO)?;
        let gvm = owner(&self.users.gvm, NOTUS_SCANNER)?;
        let mut files = vec![
            (self.conf("redis.conf"), self.render_redis(), redis),
            (self.conf("mosquitto.conf"), self.render_mosquitto(), mosq),
            (self.conf("mosquitto.acl"), self.render_acl(), mosq),
            (self.conf("notus-scanner.toml"), self.render_notus(), gvm),
            (self.conf("openvas.conf"), self.render_openvas(), gvm),
        ];
        if let Some(p) = &self.openvas_conf {
            files.push((p.clone(), self.render_openvas(), gvm));
        }
        for (path, text, owner) in files {
            write_file(&path, &text, owner).map_err(err(&path))?;
        }
        Ok(())
    }

    /// The four components, in start order.
    pub fn components(&self) -> Vec<Component> {
        let log = |name: &str| self.log_dir.as_ref().map(|d| d.join(format!("{name}.log")));
        let run_dir = |p: &Path, mode| RuntimeDir {
            path: p.to_path_buf(),
            mode,
        };

        let mut mosquitto = Component::new(
            MOSQUITTO,
            &self.programs.mosquitto,
            Probe::Mqtt {
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, self.mqtt_port)),
            },
        )
        .args(["-c".into(), self.conf("mosquitto.conf").into_os_string()]);
        mosquitto.run_as = self.users.mosquitto.clone();
        mosquitto.log_file = log(MOSQUITTO);
        mosquitto.probe_policy.ready_within = Duration::from_secs(30);

        let mut redis = Component::new(
            REDIS,
            &self.programs.redis,
            Probe::RedisPing {
                socket: self.redis_socket.clone(),
            },
        )
        .args([self.conf("redis.conf").into_os_string()]);
        redis.run_as = self.users.redis.clone();
        redis.log_file = log(REDIS);
        let socket_dir = self.redis_socket.parent().unwrap_or(Path::new("/run"));
        redis.runtime_dirs = vec![
            run_dir(socket_dir, 0o2775),
            run_dir(&self.redis_data_dir, 0o750),
        ];
        redis.remove_before_start = vec![self.redis_socket.clone()];
        // Loading a big dump on a Pi takes a while; saving it on stop too.
        redis.probe_policy.ready_within = Duration::from_secs(300);
        redis.stop_grace = Duration::from_secs(60);

        let mut notus = Component::new(
            NOTUS_SCANNER,
            &self.programs.notus_scanner,
            Probe::BrokerConnection {
                port: self.mqtt_port,
            },
        )
        .args(["--foreground", "-c"])
        .args([self.conf("notus-scanner.toml").into_os_string()]);
        notus.run_as = self.users.gvm.clone();
        notus.log_file = log(NOTUS_SCANNER);
        notus.runtime_dirs = vec![run_dir(&self.notus_run_dir, 0o2775)];
        notus.remove_before_start = vec![self.notus_run_dir.join("notus-scanner.pid")];
        notus.probe_policy.ready_within = Duration::from_secs(120);

        let mut ospd = Component::new(
            OSPD_OPENVAS,
            &self.programs.ospd_openvas,
            Probe::OspVersion {
                socket: self.ospd_socket.clone(),
            },
        )
        .args(["--foreground", "--log-level", "INFO", "--unix-socket"])
        .args([self.ospd_socket.as_os_str()])
        .args(["--socket-mode", "0o770", "--pid-file"])
        .args([self.ospd_run_dir.join("ospd-openvas.pid").into_os_string()])
        .args([
            "--lock-file-dir".into(),
            self.ospd_run_dir.clone().into_os_string(),
        ])
        .args(["--mqtt-broker-address", "127.0.0.1", "--mqtt-broker-port"])
        .args([self.mqtt_port.to_string()])
        .args([
            "--notus-feed-dir".into(),
            self.feed.notus_advisories.clone().into_os_string(),
        ]);
        if !self.verify_feed_signatures {
            ospd = ospd.args(["--disable-notus-hashsum-verification", "true"]);
        }
        // Without --log-file ospd-openvas logs to syslog, and an appliance without a
        // syslog daemon has no /dev/log: it would exit at start.
        ospd = ospd.args(["--log-file", "/var/log/gvm/ospd-openvas.log"]);
        ospd.run_as = self.users.gvm.clone();
        ospd.log_file = log(OSPD_OPENVAS);
        // /var/log/gvm: Debian's tmpfiles.d resets it to root at every boot, but ospd-openvas
        // and the openvas it starts write their logs there as _gvm.
        let mut ospd_dirs = vec![
            run_dir(&self.ospd_run_dir, 0o2775),
            run_dir(Path::new("/var/log/gvm"), 0o2775),
        ];
        if let Some(sock_dir) = self.ospd_socket.parent() {
            if sock_dir != self.ospd_run_dir {
                ospd_dirs.push(run_dir(sock_dir, 0o2775));
            }
        }
        ospd.runtime_dirs = ospd_dirs;
        ospd.remove_before_start = vec![
            self.ospd_run_dir.join("ospd-openvas.pid"),
            self.ospd_socket.clone(),
        ];
        // get_version is answered while VTs still load; a slow Python
        // start on a Pi gets two minutes.
        ospd.probe_policy = ProbePolicy {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            ready_within: Duration::from_secs(120),
            failures_before_restart: 3,
        };
        ospd.stop_grace = Duration::from_secs(30);

        let mut all = vec![mosquitto, redis, notus, ospd];
        for c in &mut all {
            c.restart = RestartPolicy::default();
        }
        all
    }
}

fn write_file(path: &Path, text: &str, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    // Write aside and rename, so a reader never sees half a config.
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o640))?;
    if let Some((uid, gid)) = owner {
        chown(&tmp, Some(uid), Some(gid))?;
    }
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg_after<'a>(c: &'a Component, flag: &str) -> Option<&'a str> {
        let pos = c.args.iter().position(|a| a == flag)?;
        c.args.get(pos + 1).and_then(|a| a.to_str())
    }

    #[test]
    fn redis_listens_on_the_socket_only_and_persists_only_when_asked() {
        let conf = StackConfig::device().render_redis();
        for line in [
            "port 0",
            "unixsocket /run/redis-openvas/redis.sock",
            "unixsocketperm 770",
            "daemonize no",
            "dir /data/redis",
            "dbfilename openvas-dump.rdb",
            "save \"\"",
            "databases 1025",
        ] {
            assert!(conf.lines().any(|l| l == line), "missing {line:?}");
        }
        // A save point would write running scans' knowledge bases (credentials
        // included) to the card.
        assert!(
            !conf
                .lines()
                .any(|l| l.starts_with("save ") && l != "save \"\""),
            "no save points: {conf}"
        );
        assert!(!conf.contains("bind "), "no TCP bind wanted");
    }

    #[test]
    fn mosquitto_is_loopback_only_with_an_acl() {
        let s = StackConfig::device();
        let conf = s.render_mosquitto();
        assert!(conf.lines().any(|l| l == "listener 1883 127.0.0.1"));
        assert!(conf
            .lines()
            .any(|l| l == "acl_file /run/outpost/scanner/mosquitto.acl"));
        let acl = s.render_acl();
        let rules: Vec<_> = acl.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            rules,
            vec![
                "topic readwrite scanner/package/cmd/notus",
                "topic readwrite scanner/scan/info",
                "topic readwrite scanner/status",
            ]
        );
    }

    #[test]
    fn openvas_conf_points_at_redis_broker_and_feed() {
        let conf = StackConfig::device().render_openvas();
        assert!(conf.contains("db_address = /run/redis-openvas/redis.sock\n"));
        assert!(conf.contains("mqtt_server_uri = 127.0.0.1:1883\n"));
        assert!(conf.contains("plugins_folder = /var/lib/openvas/plugins\n"));
        assert!(conf.contains("\ntest_alive_hosts_only = yes\n"));
    }

    #[test]
    fn components_start_in_order_with_the_right_flags() {
        let mut s = StackConfig::device();
        s.verify_feed_signatures = false;
        let c = s.components();
        let names: Vec<_> = c.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, [MOSQUITTO, REDIS, NOTUS_SCANNER, OSPD_OPENVAS]);

        assert_eq!(
            arg_after(&c[0], "-c"),
            Some("/run/outpost/scanner/mosquitto.conf")
        );
        assert_eq!(c[1].args, ["/run/outpost/scanner/redis.conf"]);
        assert_eq!(
            arg_after(&c[2], "-c"),
            Some("/run/outpost/scanner/notus-scanner.toml")
        );
        assert!(c[2].args.iter().any(|a| a == "--foreground"));

        let ospd = &c[3];
        assert!(ospd.args.iter().any(|a| a == "--foreground"));
        assert_eq!(
            arg_after(ospd, "--unix-socket"),
            Some("/run/ospd/ospd-openvas.sock")
        );
        assert_eq!(arg_after(ospd, "--socket-mode"), Some("0o770"));
        assert_eq!(arg_after(ospd, "--mqtt-broker-address"), Some("127.0.0.1"));
        assert_eq!(
            arg_after(ospd, "--notus-feed-dir"),
            Some("/var/lib/notus/advisories")
        );
        assert_eq!(arg_after(ospd, "--lock-file-dir"), Some("/run/ospd"));
        assert_eq!(
            arg_after(ospd, "--log-file"),
            Some("/var/log/gvm/ospd-openvas.log"),
            "ospd-openvas must not depend on a syslog daemon"
        );
        assert_eq!(
            arg_after(ospd, "--disable-notus-hashsum-verification"),
            Some("true")
        );
        assert_eq!(ospd.run_as, Some(RunAs::user("_gvm")));
        assert!(s
            .render_notus()
            .contains("disable-hashsum-verification = true\n"));
        assert!(s
            .render_openvas()
            .contains("nasl_no_signature_check = yes\n"));
    }

    #[test]
    fn signed_feeds_keep_verification_on() {
        let s = StackConfig::device();
        let ospd = &s.components()[3];
        assert!(!ospd
            .args
            .iter()
            .any(|a| a == "--disable-notus-hashsum-verification"));
        assert!(s
            .render_notus()
            .contains("disable-hashsum-verification = false\n"));
        // openvas checks every script against the signed sha256sums before it runs.
        assert!(s
            .render_openvas()
            .contains("nasl_no_signature_check = no\n"));
    }

    #[test]
    fn configs_are_written_private_and_whole() {
        let dir = std::env::temp_dir().join(format!("outpost-scanner-conf-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut s = StackConfig::device();
        s.config_dir = dir.join("run");
        s.openvas_conf = Some(dir.join("etc/openvas/openvas.conf"));
        s.write_configs(None).unwrap();
        for name in [
            "redis.conf",
            "mosquitto.conf",
            "mosquitto.acl",
            "notus-scanner.toml",
            "openvas.conf",
        ] {
            let p = s.config_dir.join(name);
            let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o640, "{name}");
        }
        assert_eq!(
            fs::read_to_string(dir.join("etc/openvas/openvas.conf")).unwrap(),
            s.render_openvas()
        );
        assert!(!s.config_dir.join("redis.tmp").exists());
        let _ = fs::remove_dir_all(&dir);
    }
}
