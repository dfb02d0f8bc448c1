//! What the portal-facing system tests and the boot benchmark share: the UDP relay for
//! the guest's second NIC and a provisioned copy of the built image.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use outpost_e2e_tests::{eventually, Portal};
use outpost_netrelay::{EthernetAddress, Relay, RelayConfig};
use outpost_wire::provision::{FeedThresholds, Provision};
use outpost_wire::Secret;

use crate::{build_image, repo_root, BuiltImage, Qemu, QemuOptions};

/// The portal arguments that match this setup: the guest reaches the API as
/// 10.0.2.100 (guestfwd) and the gateway as 10.0.3.1:51820 (relay).
pub const PORTAL_ARGS: [&str; 4] = ["--san", "10.0.2.100", "--wg-endpoint", "10.0.3.1:51820"];

fn free_udp() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free UDP port")
}

/// The relay that gives the guest's eth1 (10.0.3.2) a way to 10.0.3.1:51820 only.
pub struct RelayThread {
    stop: Arc<AtomicBool>,
    pub qemu_port: u16,
    pub relay_port: u16,
}

impl RelayThread {
    pub fn start(gateway_port: u16) -> RelayThread {
        let (qemu_port, relay_port) = (free_udp(), free_udp());
        let mut relay = Relay::bind(RelayConfig {
            listen: ([127, 0, 0, 1], relay_port).into(),
            qemu: ([127, 0, 0, 1], qemu_port).into(),
            address: [10, 0, 3, 1].into(),
            prefix: 24,
            mac: EthernetAddress([0x02, 0x00, 0x0a, 0x00, 0x03, 0x01]),
            port: 51820,
            target: ([127, 0, 0, 1], gateway_port).into(),
        })
        .expect("relay binds on loopback");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || relay.run(|| s.load(Ordering::Relaxed)));
        RelayThread {
            stop,
            qemu_port,
            relay_port,
        }
    }
}

impl Drop for RelayThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A private copy of the built image (sparse: fast) with `outpost.toml` for `portal`
/// and a static address for eth1 on its boot partition.
pub fn provisioned_copy(
    src: &Path,
    dir: &Path,
    portal: &Portal,
    name: &str,
    token: &str,
    feed: FeedThresholds,
) -> PathBuf {
    let img = dir.join("sensor.img");
    let ok = Command::new("cp")
        .arg("--sparse=always")
        .arg(src)
        .arg(&img)
        .status()
        .expect("cp");
    assert!(ok.success(), "copying the image failed");
    let p = Provision {
        portal_url: "https://10.0.2.100:443".into(),
        ca_cert_pem: portal.ca_pem(),
        name: name.into(),
        site: "berlin".into(),
        token: Secret::new(token),
        scope: vec!["10.9.0.0/24".into()],
        feed,
        feed_max_kbit_per_s: 0,
        scanner_enabled: true,
    };
    outpost_imagetool::provision(&img, &p.render()).expect("provision the image");
    outpost_imagetool::write_boot_file(&img, "network.conf", b"eth1 10.0.3.2/24\n")
        .expect("network.conf");
    img
}

/// The demo feed's own thresholds (image/feed-demo/thresholds.toml): 5 NASL scripts,
/// 3 Notus advisories, any age.
pub fn demo_feed() -> FeedThresholds {
    FeedThresholds {
        min_nasl: 5,
        min_notus: 3,
        max_age_hours: 876_000,
    }
}

/// A portal, the relay and one provisioned test-image sensor booting against them.
pub struct Lab {
    pub vm: Qemu,
    pub portal: Portal,
    pub name: String,
    /// How the machine was started (for [`Qemu::power_cycle`]).
    pub opts: QemuOptions,
    _relay: RelayThread,
    _dir: tempfile::TempDir,
}

impl Lab {
    /// Builds (or reuses) the test image and boots a sensor called `name` with the demo
    /// feed's thresholds; returns as soon as QEMU runs.
    pub fn boot(name: &str) -> Lab {
        Lab::boot_with(name, "")
    }

    /// [`Lab::boot`] with `extra` appended to the sensor's `outpost.toml` (whole tables,
    /// e.g. `[update]`).
    pub fn boot_with(name: &str, extra: &str) -> Lab {
        Lab::boot_at(name, extra, None)
    }

    /// [`Lab::boot_with`] with the guest's clock starting at `rtc_base` (QEMU
    /// `-rtc base=`), e.g. `1970-01-01T00:00:00` for a board without an RTC.
    pub fn boot_at(name: &str, extra: &str, rtc_base: Option<&str>) -> Lab {
        Lab::boot_custom(name, extra, rtc_base, demo_feed(), |_| {})
    }

    /// [`Lab::boot_at`] with the sensor's feed thresholds, and `prepare` run on the
    /// portal before the sensor boots (e.g. publishing a feed release).
    pub fn boot_custom(
        name: &str,
        extra: &str,
        rtc_base: Option<&str>,
        feed: FeedThresholds,
        prepare: impl FnOnce(&Portal),
    ) -> Lab {
        let built = build_image("qemu-arm64", "test").expect("test image builds");
        let portal = Portal::start_with(120, &PORTAL_ARGS);
        prepare(&portal);
        let relay = RelayThread::start(portal.wg_port);
        let token = portal.token("berlin", 1);
        let dir = tempfile::tempdir().expect("temp dir");
        let img = provisioned_copy(&built.image, dir.path(), &portal, name, &token, feed);
        if !extra.is_empty() {
            let toml = outpost_imagetool::read_boot_file(&img, "outpost.toml")
                .expect("outpost.toml in the image");
            let mut toml = String::from_utf8(toml).expect("outpost.toml is UTF-8");
            toml.push('\n');
            toml.push_str(extra);
            outpost_imagetool::write_boot_file(&img, "outpost.toml", toml.as_bytes())
                .expect("outpost.toml written");
        }
        let mut opts = QemuOptions::new(&built);
        opts.image = img;
        opts.portal_port = Some(portal.port);
        opts.udp_relay = Some((relay.qemu_port, relay.relay_port));
        // A card, not the bare image: the data partition grows into the rest on first
        // boot and must hold a downloaded update bundle.
        opts.disk_size = Some(LAB_DISK_BYTES);
        opts.rtc_base = rtc_base.map(str::to_owned);
        let vm = Qemu::start(&opts).expect("QEMU starts");
        Lab {
            vm,
            portal,
            name: name.to_owned(),
            opts,
            _relay: relay,
            _dir: dir,
        }
    }

    /// [`Lab::boot`], then waits for `ready` on the console.
    pub fn ready(name: &str) -> Lab {
        let mut lab = Lab::boot(name);
        lab.wait_ready();
        lab
    }

    pub fn wait_ready(&mut self) {
        let pattern = format!(
            r"outpost\[{}\]: phase ready done",
            regex::escape(&self.name)
        );
        self.vm
            .wait_for(&pattern, READY_TIMEOUT)
            .expect("the sensor reaches ready");
    }

    /// The sensor's id at the portal (the only sensor).
    pub fn sensor_id(&self) -> String {
        self.portal.ctl_json(&["sensor", "list"])[0]["id"]
            .as_str()
            .expect("a registered sensor")
            .to_owned()
    }

    /// Starts the demo lab (the demo target and the other lab hosts, each in its own
    /// network namespace in the guest); the SSH host's login stays locked.
    pub fn demo_lab_up(&mut self) {
        self.demo_lab_up_with("!");
    }

    /// [`Lab::demo_lab_up`] with the SSH host's `labadmin` password set to the one
    /// `crypt_hash` (crypt(3), e.g. `openssl passwd -6`) stands for: only the hash
    /// enters the guest.
    pub fn demo_lab_up_with(&mut self, crypt_hash: &str) {
        assert!(
            !crypt_hash.contains('\''),
            "a crypt hash has no quotes: {crypt_hash}"
        );
        let out = self
            .vm
            .run_timeout(
                &format!("/usr/libexec/outpost/demo-lab up '{crypt_hash}' 2>&1"),
                Duration::from_secs(120),
            )
            .expect("demo-lab runs");
        assert!(out.success(), "demo-lab up failed: {}", out.stdout);
    }

    /// Queues a scan for the site with `outpostctl job scan` and these arguments
    /// (targets, ports, families, alive test, credentials); returns the job id.
    pub fn queue_scan(&self, args: &[&str]) -> i64 {
        let mut all = vec!["job", "scan", "--site", "berlin", "--deadline", "1800"];
        all.extend_from_slice(args);
        self.portal.ctl_json(&all)["id"].as_i64().expect("a job id")
    }

    /// Packets the sensor has sent into the demo lab (the lab bridge's tx counter).
    pub fn lab_packets(&mut self) -> u64 {
        let out = self
            .vm
            .run("/usr/libexec/outpost/demo-lab packets")
            .expect("demo-lab packets");
        out.stdout
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("demo-lab packets printed {:?}: {e}", out.stdout))
    }

    /// Queues a scan of `target` with the demo feed's families and ports; returns the job id.
    pub fn queue_demo_scan(&self, target: &str) -> i64 {
        self.queue_demo_scan_alive(target, "consider-alive")
    }

    /// Like [`Lab::queue_demo_scan`], with the alive detection the portal asks for
    /// (`outpostctl job scan --alive-test`, e.g. `icmp+arp`).
    pub fn queue_demo_scan_alive(&self, target: &str, alive: &str) -> i64 {
        self.queue_demo_families(&["--target", target, "--alive-test", alive])
    }

    /// Queues a scan of the demo lab's whole LAN, 10.9.0.0/24 but the sensor's own
    /// address, with the demo feed's families and ports and ICMP and ARP alive detection.
    pub fn queue_lan_scan(&self) -> i64 {
        self.queue_demo_families(&[
            "--target",
            "10.9.0.0/24",
            "--exclude",
            "10.9.0.1",
            "--alive-test",
            "icmp+arp",
        ])
    }

    /// A scan with the demo feed's ports and remote families, and `args`.
    pub fn queue_demo_families(&self, args: &[&str]) -> i64 {
        let mut all = vec![
            "--ports",
            DEMO_PORTS,
            "--family",
            "Port scanners",
            "--family",
            "Service detection",
            "--family",
            "General",
        ];
        all.extend_from_slice(args);
        self.queue_scan(&all)
    }

    pub fn job(&self, id: i64) -> serde_json::Value {
        self.portal.ctl_json(&["job", "show", &id.to_string()])
    }

    /// Waits until the job reaches a final state and returns it.
    pub fn wait_job_final(&self, id: i64, timeout: Duration) -> serde_json::Value {
        eventually(&format!("job {id} to end"), timeout, || {
            let j = self.job(id);
            matches!(
                j["state"].as_str(),
                Some("completed" | "failed" | "cancelled")
            )
            .then_some(j)
        })
    }

    /// Pulls the power and starts the machine again on the same disk.
    pub fn power_cycle(&mut self) {
        self.vm.power_cycle(&self.opts).expect("QEMU restarts");
    }

    /// `sensor show` at the portal.
    pub fn sensor(&self) -> serde_json::Value {
        self.portal.ctl_json(&["sensor", "show", &self.sensor_id()])
    }

    /// The scanner's own logs in the guest (ospd-openvas, openvas), for failure messages.
    pub fn scanner_logs(&mut self) -> String {
        self.vm
            .run("tail -n 120 /var/log/gvm/ospd-openvas.log /var/log/gvm/openvas.log 2>&1")
            .map(|o| o.stdout)
            .unwrap_or_else(|e| format!("(no scanner logs: {e})"))
    }

    /// The stored report of a job (summary and raw content).
    pub fn report(&self, job: i64) -> serde_json::Value {
        self.portal.ctl_json(&["report", &job.to_string()])
    }
}

/// Runs the workspace's `outpostctl`; panics with its stderr if it fails.
pub fn outpostctl(args: &[&str]) {
    let out = Command::new(outpost_e2e_tests::bin("outpostctl"))
        .args(args)
        .output()
        .expect("outpostctl runs");
    assert!(
        out.status.success(),
        "outpostctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bundle of `built`'s slot parts (scripts/build-image keeps them in `slot/`) that
/// claims `version` for `board`, written into `dir`; signed with the build key (the one
/// the image trusts) when `signed`.
pub fn slot_bundle(
    built: &BuiltImage,
    board: &str,
    version: &str,
    signed: bool,
    dir: &Path,
) -> PathBuf {
    let rootfs = built.dir.join("slot/rootfs.squashfs");
    bundle_of(built, &rootfs, board, version, signed, dir)
}

/// A signed bundle for `version` whose root filesystem is `built`'s, unpacked and packed
/// again with squashfs-tools (the build's options): its release file says `version`,
/// and without `outpostd` the daemon is gone (a slot that never becomes healthy). The
/// same packages as `scripts/build-image --version V [--no-outpostd]` would put in, in
/// seconds instead of a build's minute.
pub fn respun_slot_bundle(
    built: &BuiltImage,
    board: &str,
    version: &str,
    outpostd: bool,
    dir: &Path,
) -> PathBuf {
    let work = dir.join(format!("respin-{version}"));
    let root = work.join("root");
    let rootfs = work.join("rootfs.squashfs");
    std::fs::create_dir_all(&work).expect("respin dir");
    let run = |cmd: &mut Command| {
        let out = cmd.output().expect("squashfs-tools run");
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // As root, unsquashfs keeps owners, modes and xattrs (openvas' file capabilities).
    run(Command::new("unsquashfs")
        .args(["-no-progress", "-quiet", "-d"])
        .arg(&root)
        .arg(built.dir.join("slot/rootfs.squashfs")));
    let release = root.join("etc/outpost-release");
    let text = std::fs::read_to_string(&release).expect("etc/outpost-release in the slot");
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("VERSION=") {
                format!("VERSION={version}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&release, text).expect("release file");
    if !outpostd {
        std::fs::remove_file(root.join("usr/sbin/outpostd")).expect("outpostd in the slot");
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    run(Command::new("mksquashfs")
        .arg(&root)
        .arg(&rootfs)
        .args(["-comp", "zstd", "-Xcompression-level", "15", "-b", "256K"])
        .args(["-noappend", "-quiet", "-no-progress"])
        .args(["-processors", &cpus.to_string()]));
    std::fs::remove_dir_all(&root).expect("respin tree removed");
    bundle_of(built, &rootfs, board, version, true, dir)
}

fn bundle_of(
    built: &BuiltImage,
    rootfs: &Path,
    board: &str,
    version: &str,
    signed: bool,
    dir: &Path,
) -> PathBuf {
    let slot = built.dir.join("slot");
    let p = |f: &str| slot.join(f).display().to_string();
    let path = dir.join(format!("{board}-{version}.bundle").replace(',', "_"));
    let out = path.display().to_string();
    outpostctl(&[
        "bundle",
        "build",
        "--board",
        board,
        "--version",
        version,
        "--rootfs",
        &rootfs.display().to_string(),
        "--kernel",
        &p("Image"),
        "--initrd",
        &p("initrd.img"),
        "--out",
        &out,
    ]);
    if signed {
        let key = repo_root().join("build/keys/outpost-bundle.key");
        outpostctl(&["bundle", "sign", &out, "--key", &key.display().to_string()]);
    }
    path
}

/// The lab sensor's disk (sparse): a 4 GiB card.
pub const LAB_DISK_BYTES: u64 = 4 << 30;

/// The ports the demo target serves (image/feed-demo/target/README.md).
pub const DEMO_PORTS: &str = "T:2121,8080";

/// Cold boots in software emulation load every VT; generous, the benchmark has the figure.
pub const READY_TIMEOUT: Duration = Duration::from_secs(900);
