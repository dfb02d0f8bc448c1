//! The update flow end to end on one machine: a loopback HTTP "portal" that serves a
//! real signed bundle (with `Range`) and records every update-state report, the real
//! `UreqTransport`, file-backed slot partitions, a directory standing in for the FAT
//! partition with real U-Boot state files, and reboots simulated with
//! `UbootFileEnv::simulate_boot` (what the boot script does).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_bootctl::{
    Autoboot, BootControl, BootDecision, BootState, RpiTryboot, Slot, SlotPartitions, UbootFileEnv,
};
use outpost_bundle::{build_bundle, sign_bundle, BuildSpec, SecretKey, SlotTarget, Version};
use outpost_wire::sensor::{
    Capability, ClaimRequest, Job, JobSpec, UpdateSpec, UpdateState, UpdateStateReport,
};
use outpost_wire::Secret;
use sha2::{Digest, Sha256};

use super::*;
use crate::api::PortalClient;
use crate::jobs::JobControl;
use crate::report::{capture, Reporter};
use crate::transport::UreqTransport;

const BOARD: &str = "outpost,qemu-arm64";
const PARTITION_LEN: usize = 1024 * 1024;
const ROOTFS_LEN: usize = 700 * 1024 + 123;

// --- a tiny portal ---------------------------------------------------------------

#[derive(Default)]
struct PortalState {
    bundles: HashMap<i64, Vec<u8>>,
    /// The next bundle download stops after this many body bytes (connection closed).
    cut_next_after: Option<usize>,
    /// Every bundle request: (path, Range header).
    gets: Vec<(String, Option<String>)>,
    /// Bundle body bytes written to the sensor, all requests together.
    bundle_bytes_sent: usize,
    reports: Vec<UpdateStateReport>,
    /// Reports in this state are answered 503 (the portal is down for them).
    unavailable_for: Option<UpdateState>,
    claims: VecDeque<Job>,
    claim_requests: Vec<ClaimRequest>,
}

struct Portal {
    url: String,
    state: Arc<Mutex<PortalState>>,
}

impl Portal {
    fn start() -> Portal {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(PortalState::default()));
        let s = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => serve(stream, &s),
                    Err(_) => return,
                }
            }
        });
        Portal { url, state }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, PortalState> {
        self.state.lock().unwrap()
    }

    fn reports(&self) -> Vec<UpdateStateReport> {
        self.st().reports.clone()
    }
}

fn serve(stream: TcpStream, state: &Mutex<PortalState>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).unwrap();
    let mut out = stream;
    let mut st = state.lock().unwrap();
    let respond = |out: &mut TcpStream, status: &str, extra: &str, body: &[u8]| {
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n",
            body.len()
        );
        let _ = out.write_all(head.as_bytes());
        let _ = out.write_all(body);
    };
    match (method.as_str(), path.as_str()) {
        ("GET", p) if p.starts_with("/api/sensor/bundles/") => {
            let range = headers.get("range").cloned();
            st.gets.push((p.to_owned(), range.clone()));
            let id: i64 = p.rsplit('/').next().unwrap().parse().unwrap();
            let Some(file) = st.bundles.get(&id).cloned() else {
                respond(&mut out, "404 Not Found", "", b"");
                return;
            };
            let from = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .map(|n| n.parse::<usize>().unwrap());
            let (status, extra, slice) = match from {
                Some(n) if n >= file.len() => {
                    respond(&mut out, "416 Range Not Satisfiable", "", b"");
                    return;
                }
                Some(n) => (
                    "206 Partial Content",
                    format!(
                        "content-range: bytes {n}-{}/{}\r\n",
                        file.len() - 1,
                        file.len()
                    ),
                    &file[n..],
                ),
                None => ("200 OK", String::new(), &file[..]),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n",
                slice.len()
            );
            let _ = out.write_all(head.as_bytes());
            let send = st
                .cut_next_after
                .take()
                .unwrap_or(slice.len())
                .min(slice.len());
            let _ = out.write_all(&slice[..send]);
            st.bundle_bytes_sent += send;
        }
        ("POST", "/api/sensor/update-state") => {
            let report: UpdateStateReport = serde_json::from_slice(&body).unwrap();
            let down = st.unavailable_for == Some(report.state);
            st.reports.push(report);
            if down {
                respond(&mut out, "503 Service Unavailable", "", b"");
            } else {
                respond(&mut out, "200 OK", "", b"{}");
            }
        }
        ("POST", "/api/sensor/claim") => {
            st.claim_requests
                .push(serde_json::from_slice(&body).unwrap());
            match st.claims.pop_front() {
                Some(job) => respond(&mut out, "200 OK", "", &serde_json::to_vec(&job).unwrap()),
                None => respond(&mut out, "204 No Content", "", b""),
            }
        }
        _ => respond(&mut out, "404 Not Found", "", b""),
    }
}

// --- a device ----------------------------------------------------------------------

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn release_key() -> SecretKey {
    SecretKey::from_seed(&[11; 32])
}

struct Rig {
    dir: tempfile::TempDir,
    portal: Portal,
    client: PortalClient,
    reboots: Arc<AtomicUsize>,
    reporter: Reporter,
}

impl Rig {
    /// A device that booted slot A (running 1.1.0) and marked it good.
    fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let portal = Portal::start();
        let ca = rcgen::generate_simple_self_signed(vec!["portal".to_owned()]).unwrap();
        let transport = UreqTransport::new(&portal.url, &ca.cert.pem()).unwrap();
        let rig = Rig {
            client: PortalClient::new(Arc::new(transport), Secret::new("osk_k")),
            dir,
            portal,
            reboots: Arc::new(AtomicUsize::new(0)),
            reporter: capture("branch-1"),
        };
        for slot in Slot::ALL {
            let b = rig.boot_dir().join(slot.boot_dir());
            fs::create_dir_all(b.join("dtbs/broadcom")).unwrap();
            let seed = 100 * (slot as u64 + 1);
            fs::write(b.join("Image"), pattern(seed, 140_000)).unwrap();
            fs::write(b.join("initrd.img"), pattern(seed + 1, 80_000)).unwrap();
            fs::write(b.join("dtbs/broadcom/old.dtb"), pattern(seed + 2, 3_000)).unwrap();
            fs::write(rig.rootfs(slot), pattern(seed + 3, PARTITION_LEN)).unwrap();
        }
        fs::create_dir_all(rig.dir.path().join("in/broadcom")).unwrap();
        fs::write(
            rig.dir.path().join("keys.pub"),
            release_key().public_line("release"),
        )
        .unwrap();
        // What the bootloader and the factory image's first boot leave behind.
        assert_eq!(rig.boot(), Slot::A);
        rig.env(Slot::A).mark_good().unwrap();
        rig
    }

    fn boot_dir(&self) -> PathBuf {
        self.dir.path().join("boot")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn rootfs(&self, slot: Slot) -> PathBuf {
        self.dir
            .path()
            .join(format!("rootfs-{}.part", slot.letter()))
    }

    fn store(&self) -> UpdateStore {
        UpdateStore::new(&self.data_dir())
    }

    fn cmdline(&self) -> PathBuf {
        self.dir.path().join("cmdline")
    }

    fn env(&self, booted: Slot) -> UbootFileEnv {
        fs::write(self.cmdline(), format!("ro outpost.slot={booted}\n")).unwrap();
        UbootFileEnv::new(self.boot_dir()).with_cmdline(self.cmdline())
    }

    fn state(&self) -> BootState {
        UbootFileEnv::new(self.boot_dir()).load().unwrap().state
    }

    /// What U-Boot does at power-on; returns the slot it boots. `/run` starts empty.
    fn boot(&self) -> Slot {
        let _ = fs::remove_file(self.healthy_flag());
        match UbootFileEnv::new(self.boot_dir()).simulate_boot().unwrap() {
            BootDecision::Boot(slot) => slot,
            BootDecision::ResetAndReboot => self.boot(),
        }
    }

    /// The daemon's updater as it starts on `booted`, running `version`. The command
    /// line carries `outpost.trial=1` when the boot state says so, as boot.cmd does.
    fn updater(&self, booted: Slot, version: &str) -> Updater {
        let trial = if self.state().on_trial(booted) {
            " outpost.trial=1"
        } else {
            ""
        };
        fs::write(self.cmdline(), format!("ro outpost.slot={booted}{trial}\n")).unwrap();
        let release = self.dir.path().join("outpost-release");
        fs::write(&release, format!("VERSION={version}\nBOARD={BOARD}\n")).unwrap();
        let boot_dir = self.boot_dir();
        let parts = Slot::ALL.map(|s| self.rootfs(s));
        let reboots = self.reboots.clone();
        Updater::new(UpdaterConfig {
            data_dir: self.data_dir(),
            keys_file: self.dir.path().join("keys.pub"),
            release: Release::load(&release),
            boot_info: BootInfo::load(&self.cmdline()),
            boot: Arc::new(UbootFileEnv::new(self.boot_dir()).with_cmdline(self.cmdline())),
            on_device: true,
            slots: Ok(Box::new(move |slot| {
                SlotTarget::new(parts[slot as usize].clone(), boot_dir.join(slot.boot_dir()))
            })),
            healthy_flag: self.healthy_flag(),
            reboot: Box::new(move |action| {
                assert_eq!(action, RebootAction::Plain, "U-Boot needs no argument");
                reboots.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }),
            progress_interval: Duration::ZERO,
            slow_retry: Duration::from_secs(60),
            boot_id: None,
        })
    }

    fn healthy_flag(&self) -> PathBuf {
        self.dir.path().join("run/outpost/healthy")
    }

    // --- the Pi 5's firmware tryboot, simulated --------------------------------------

    /// `autoboot.txt` (as the image ships it: slot A, no trial) and the directory of the
    /// firmware's device-tree boot report.
    fn firmware(&self) -> (PathBuf, PathBuf) {
        let fw = self.dir.path().join("fw");
        let (autoboot, dt) = (fw.join("autoboot.txt"), fw.join("bootloader"));
        if !autoboot.exists() {
            fs::create_dir_all(&dt).unwrap();
            fs::write(
                &autoboot,
                Autoboot::fresh(SlotPartitions::default()).render(),
            )
            .unwrap();
        }
        (autoboot, dt)
    }

    /// What the Pi firmware does at a start: after `reboot "0 tryboot"` the `[tryboot]`
    /// partition, once; otherwise (power-on, watchdog, plain reboot) the default. It
    /// reports the boot in the device tree; returns the slot it boots.
    fn firmware_start(&self, tryboot: bool) -> Slot {
        let _ = fs::remove_file(self.healthy_flag());
        let (autoboot, dt) = self.firmware();
        let ab = Autoboot::parse(&fs::read_to_string(autoboot).unwrap()).unwrap();
        let default = ab.default_partition().unwrap().unwrap();
        let partition = if tryboot {
            ab.tryboot_partition().unwrap().unwrap_or(default)
        } else {
            default
        };
        fs::write(dt.join("partition"), partition.to_be_bytes()).unwrap();
        fs::write(dt.join("tryboot"), u32::from(tryboot).to_be_bytes()).unwrap();
        SlotPartitions::default().slot(partition).unwrap()
    }

    /// The daemon's updater on the tryboot backend, started on `booted` in the boot
    /// `boot_id`; restarts are recorded in `restarts`.
    fn tryboot_updater(
        &self,
        booted: Slot,
        version: &str,
        boot_id: &str,
        restarts: &Arc<Mutex<Vec<RebootAction>>>,
    ) -> Updater {
        let (autoboot, dt) = self.firmware();
        // Each slot's own cmdline.txt names it; the trial is the firmware's flag.
        fs::write(self.cmdline(), format!("ro outpost.slot={booted}\n")).unwrap();
        let tryboot = RpiTryboot::new(autoboot, dt);
        let mut boot_info = BootInfo::load(&self.cmdline());
        boot_info.trial = tryboot.firmware_boot().unwrap().tryboot;
        let release = self.dir.path().join("outpost-release");
        fs::write(&release, format!("VERSION={version}\nBOARD={BOARD}\n")).unwrap();
        let boot_dir = self.boot_dir();
        let parts = Slot::ALL.map(|s| self.rootfs(s));
        let restarts = restarts.clone();
        Updater::new(UpdaterConfig {
            data_dir: self.data_dir(),
            keys_file: self.dir.path().join("keys.pub"),
            release: Release::load(&release),
            boot_info,
            boot: Arc::new(tryboot),
            on_device: true,
            slots: Ok(Box::new(move |slot| {
                SlotTarget::new(parts[slot as usize].clone(), boot_dir.join(slot.boot_dir()))
            })),
            healthy_flag: self.healthy_flag(),
            reboot: Box::new(move |action| {
                restarts.lock().unwrap().push(action);
                Ok(())
            }),
            progress_interval: Duration::ZERO,
            slow_retry: Duration::from_secs(60),
            boot_id: Some(boot_id.into()),
        })
    }

    fn armed_trial(&self) -> Option<Slot> {
        let (autoboot, dt) = self.firmware();
        RpiTryboot::new(autoboot, dt).armed_trial().unwrap()
    }

    fn firmware_default(&self) -> Slot {
        let (autoboot, dt) = self.firmware();
        RpiTryboot::new(autoboot, dt).primary().unwrap()
    }

    /// A bundle built from fresh inputs and (with `key`) signed.
    fn bundle(&self, version: &str, board: &str, key: Option<&SecretKey>) -> Vec<u8> {
        let i = self.dir.path().join("in");
        fs::write(i.join("Image"), pattern(1, 150_000)).unwrap();
        fs::write(i.join("initrd.img"), pattern(2, 90_001)).unwrap();
        fs::write(i.join("broadcom/new.dtb"), pattern(3, 4_000)).unwrap();
        fs::write(i.join("rootfs"), pattern(4, ROOTFS_LEN)).unwrap();
        let spec = BuildSpec {
            board: board.into(),
            version: Version::parse(version).unwrap(),
            min_version: None,
            rootfs: i.join("rootfs"),
            kernel: i.join("Image"),
            initrd: i.join("initrd.img"),
            dtbs: vec![("broadcom/new.dtb".into(), i.join("broadcom/new.dtb"))],
        };
        let out = self.dir.path().join("out.bundle");
        build_bundle(&spec, &out).unwrap();
        if let Some(k) = key {
            sign_bundle(&out, k).unwrap();
        }
        fs::read(&out).unwrap()
    }

    /// Publishes `bytes` as bundle `id`; the job spec the portal would send.
    fn publish(&self, id: i64, version: &str, bytes: Vec<u8>) -> UpdateSpec {
        let spec = UpdateSpec {
            bundle_id: id,
            version: version.into(),
            size: bytes.len() as u64,
            sha256: Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        };
        self.portal.st().bundles.insert(id, bytes);
        spec
    }

    fn run(&self, u: &Updater, job_id: i64, spec: &UpdateSpec) -> JobEnd {
        let control = JobControl::default();
        let mut sleep = |_: Duration| {};
        let mut ctx = JobCtx {
            client: &self.client,
            reporter: &self.reporter,
            control: &control,
            sleep: &mut sleep,
        };
        u.run_job(job_id, spec, &mut ctx)
    }

    fn commit(&self, u: &Updater) {
        u.commit_boot(&self.client, &self.reporter, &mut |_| {});
    }

    /// Every file of a slot (boot files and partition), by content.
    fn snapshot(&self, slot: Slot) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        out.insert(self.rootfs(slot), fs::read(self.rootfs(slot)).unwrap());
        let mut stack = vec![self.boot_dir().join(slot.boot_dir())];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.insert(p.clone(), fs::read(&p).unwrap());
                }
            }
        }
        out
    }

    fn updates_dir_files(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.store().dir())
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

/// Installs bundle 7 (1.2.0) from slot A; returns the rig at the moment of the reboot.
fn installed() -> (Rig, UpdateSpec) {
    let rig = Rig::new();
    let spec = rig.publish(7, "1.2.0", rig.bundle("1.2.0", BOARD, Some(&release_key())));
    let u = rig.updater(Slot::A, "1.1.0");
    assert_eq!(u.resolve_at_start(&rig.reporter), BootRole::Normal);
    rig.commit(&u);
    assert_eq!(rig.run(&u, 70, &spec), JobEnd::Reboot);
    (rig, spec)
}

// --- the job -------------------------------------------------------------------------

#[test]
fn a_good_bundle_is_installed_into_the_other_slot_which_is_made_active() {
    let (rig, _spec) = installed();
    let before_a = rig.snapshot(Slot::A);

    // Slot B holds exactly the bundle's contents; A is untouched.
    let b = rig.boot_dir().join("slot-b");
    assert_eq!(fs::read(b.join("Image")).unwrap(), pattern(1, 150_000));
    assert_eq!(fs::read(b.join("initrd.img")).unwrap(), pattern(2, 90_001));
    assert_eq!(
        fs::read(b.join("dtbs/broadcom/new.dtb")).unwrap(),
        pattern(3, 4_000)
    );
    assert!(!b.join("dtbs/broadcom/old.dtb").exists());
    let part = fs::read(rig.rootfs(Slot::B)).unwrap();
    assert_eq!(&part[..ROOTFS_LEN], &pattern(4, ROOTFS_LEN)[..]);
    assert_eq!(rig.snapshot(Slot::A), before_a);

    // B goes first, on trial, with full tries.
    let st = rig.state();
    assert_eq!(st.order, vec![Slot::B, Slot::A]);
    assert_eq!((st.tries_b, st.trial), (3, Some(Slot::B)));

    // The record that carries the update across the reboot.
    let pending = rig.store().load_pending().unwrap().unwrap();
    assert_eq!(
        (pending.bundle_id, pending.version.as_str(), pending.job_id),
        (7, "1.2.0", Some(70))
    );
    assert_eq!((pending.from, pending.to), (Slot::A, Slot::B));
    assert!(pending.job_closed, "the portal took `rebooting`");
    assert_eq!(pending.outcome, None);
    // The bundle is gone from the data partition, and so is the job record.
    assert_eq!(rig.updates_dir_files(), ["floor", "pending.json"]);

    // What the portal heard, in order; `rebooting` names the job and closes it.
    let reports = rig.portal.reports();
    let states: Vec<UpdateState> = reports.iter().map(|r| r.state).collect();
    assert_eq!(states.first(), Some(&UpdateState::Downloading));
    assert_eq!(
        &states[states.len() - 2..],
        [UpdateState::Installing, UpdateState::Rebooting]
    );
    let last = reports.last().unwrap();
    assert_eq!(last.job_id, Some(70));
    assert_eq!((last.bundle_id, last.version.as_str()), (7, "1.2.0"));
    assert_eq!(last.slot.as_deref(), Some("a"));
    assert!(reports.iter().all(|r| r.job_id == Some(70)));
    // The head first (checked before the rest is worth fetching), then the rest.
    let st = rig.portal.st();
    assert_eq!(
        st.gets,
        [
            ("/api/sensor/bundles/7".to_owned(), None),
            (
                "/api/sensor/bundles/7".to_owned(),
                Some("bytes=65536-".to_owned())
            ),
        ]
    );
}

#[test]
fn an_interrupted_download_resumes_with_only_the_rest() {
    let rig = Rig::new();
    let spec = rig.publish(7, "1.2.0", rig.bundle("1.2.0", BOARD, Some(&release_key())));
    // The connection drops 30,000 bytes into the first answer (past the head).
    rig.portal.st().cut_next_after = Some(30_000);
    let u = rig.updater(Slot::A, "1.1.0");
    assert_eq!(rig.run(&u, 70, &spec), JobEnd::Reboot);
    let st = rig.portal.st();
    assert_eq!(
        st.gets,
        [
            ("/api/sensor/bundles/7".to_owned(), None),
            // resumed right where the cut left the file, the head already verified
            (
                "/api/sensor/bundles/7".to_owned(),
                Some("bytes=30000-".to_owned())
            ),
        ]
    );
    assert_eq!(st.bundle_bytes_sent as u64, spec.size, "nothing twice");
}

#[test]
fn a_restarted_daemon_resumes_the_leased_job_where_the_file_ends() {
    let rig = Rig::new();
    let bytes = rig.bundle("1.2.0", BOARD, Some(&release_key()));
    let spec = rig.publish(7, "1.2.0", bytes.clone());
    // What a power cut mid-download leaves: the job record and a partial file.
    let store = rig.store();
    store
        .save_job(&store::ActiveJob {
            job_id: 70,
            spec: spec.clone(),
            verdict: None,
        })
        .unwrap();
    fs::write(store.part_path(7), &bytes[..500_000]).unwrap();

    let u = rig.updater(Slot::A, "1.1.0");
    u.resolve_at_start(&rig.reporter);
    let control = JobControl::default();
    let mut ctx = JobCtx {
        client: &rig.client,
        reporter: &rig.reporter,
        control: &control,
        sleep: &mut |_| {},
    };
    assert_eq!(u.resume_job(&mut ctx), Some((70, JobEnd::Reboot)));
    let st = rig.portal.st();
    assert_eq!(
        st.gets,
        [(
            "/api/sensor/bundles/7".to_owned(),
            Some("bytes=500000-".to_owned())
        )]
    );
    assert_eq!(st.bundle_bytes_sent, bytes.len() - 500_000);
    drop(st);
    assert_eq!(rig.state().primary(), Some(Slot::B));
    assert!(!store.part_path(7).exists() && store.load_job().unwrap().is_none());
}

/// Runs `spec` as job 80 and checks a refusal: reported with the reason, nothing of the
/// bundle left on disk, slot B and the boot state exactly as before.
fn assert_refused(rig: &Rig, u: &Updater, spec: &UpdateSpec, reason_has: &str) {
    let slot_b = rig.snapshot(Slot::B);
    let state = rig.state();
    match rig.run(u, 80, spec) {
        JobEnd::Refused(reason) => assert!(reason.contains(reason_has), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(rig.snapshot(Slot::B), slot_b, "slot B was written");
    assert_eq!(rig.state(), state, "the boot state changed");
    let last = rig.portal.reports().pop().unwrap();
    assert_eq!(last.state, UpdateState::Refused);
    assert_eq!(last.job_id, Some(80));
    assert!(last.reason.contains(reason_has), "{}", last.reason);
    let leftovers: Vec<String> = rig
        .updates_dir_files()
        .into_iter()
        .filter(|n| n.contains("bundle") || n == "job.json" || n == "pending.json")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(u.availability().is_ok(), "a refusal blocks nothing");
}

#[test]
fn unsigned_tampered_foreign_and_older_bundles_are_refused_and_the_slot_is_untouched() {
    let rig = Rig::new();
    let u = rig.updater(Slot::A, "1.1.0");
    u.resolve_at_start(&rig.reporter);

    let unsigned = rig.publish(1, "1.2.0", rig.bundle("1.2.0", BOARD, None));
    assert_refused(&rig, &u, &unsigned, "unsigned bundle");

    let mut tampered = rig.bundle("1.2.0", BOARD, Some(&release_key()));
    let at = tampered.len() - 1000; // inside the rootfs, after the signed manifest
    tampered[at] ^= 0x40;
    let tampered = rig.publish(2, "1.2.0", tampered);
    assert_refused(&rig, &u, &tampered, "tampered or corrupt");

    let foreign = rig.publish(
        3,
        "1.2.0",
        rig.bundle("1.2.0", "outpost,rpi4", Some(&release_key())),
    );
    assert_refused(&rig, &u, &foreign, "outpost,rpi4");

    let older = rig.publish(4, "1.0.0", rig.bundle("1.0.0", BOARD, Some(&release_key())));
    assert_refused(&rig, &u, &older, "downgrade refused");
    // A bundle refused by its head costs one request for the head, not the download.
    let asked: Vec<Option<String>> = rig
        .portal
        .st()
        .gets
        .iter()
        .filter(|(p, _)| p.as_str() == "/api/sensor/bundles/4")
        .map(|(_, r)| r.clone())
        .collect();
    assert_eq!(asked, [None], "only the head probe of bundle 4");

    let other_key = SecretKey::from_seed(&[22; 32]);
    let untrusted = rig.publish(5, "1.2.0", rig.bundle("1.2.0", BOARD, Some(&other_key)));
    assert_refused(&rig, &u, &untrusted, "not a trusted key");

    // The floor outlives a fallback: 1.2.0 is newer than the running 1.1.0 but below
    // the 1.3.0 this device once marked good.
    rig.store().raise_floor(&Version::new(1, 3, 0)).unwrap();
    let below_floor = rig.publish(6, "1.2.0", rig.bundle("1.2.0", BOARD, Some(&release_key())));
    assert_refused(&rig, &u, &below_floor, "below this device's floor 1.3.0");
}

#[test]
fn a_rootfs_too_large_for_the_partition_is_refused_by_the_install_untouched() {
    let rig = Rig::new();
    // Slot B's partition is smaller than the bundle's root filesystem.
    fs::write(rig.rootfs(Slot::B), pattern(9, 500_000)).unwrap();
    let u = rig.updater(Slot::A, "1.1.0");
    let spec = rig.publish(7, "1.2.0", rig.bundle("1.2.0", BOARD, Some(&release_key())));
    assert_refused(&rig, &u, &spec, "holds only 500000");
}

#[test]
fn a_file_that_is_not_the_published_one_fails_and_is_deleted() {
    let rig = Rig::new();
    let u = rig.updater(Slot::A, "1.1.0");
    let mut spec = rig.publish(7, "1.2.0", rig.bundle("1.2.0", BOARD, Some(&release_key())));
    spec.sha256 = "ab".repeat(32);
    let slot_b = rig.snapshot(Slot::B);
    match rig.run(&u, 70, &spec) {
        JobEnd::Failed(reason) => assert!(reason.contains("sha256"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(rig.snapshot(Slot::B), slot_b);
    assert_eq!(
        rig.portal.reports().pop().unwrap().state,
        UpdateState::Failed
    );
    assert!(rig
        .updates_dir_files()
        .iter()
        .all(|n| !n.contains("bundle")));
}

// --- after the reboot ------------------------------------------------------------------

#[test]
fn the_new_slot_commits_itself_once_healthy() {
    let (rig, _) = installed();
    let reports_before = rig.portal.reports().len();
    assert_eq!(rig.boot(), Slot::B);
    let u = rig.updater(Slot::B, "1.2.0");
    assert_eq!(u.resolve_at_start(&rig.reporter), BootRole::Trial);
    assert!(u.availability().is_err(), "no update on top of a trial");
    assert!(!rig.healthy_flag().exists());

    rig.commit(&u);
    let st = rig.state();
    assert_eq!(st.order, vec![Slot::B, Slot::A]);
    assert_eq!((st.tries_b, st.trial), (3, None), "committed");
    assert!(
        rig.healthy_flag().exists(),
        "the trial watchdog stands down"
    );
    assert_eq!(rig.store().floor().unwrap(), Some(Version::new(1, 2, 0)));
    let after: Vec<UpdateStateReport> = rig.portal.reports()[reports_before..].to_vec();
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].state, UpdateState::Committed);
    assert_eq!(
        (after[0].bundle_id, after[0].version.as_str()),
        (7, "1.2.0")
    );
    assert_eq!(after[0].slot.as_deref(), Some("b"));
    assert!(!rig.store().has_pending());
    assert!(u.availability().is_ok());
}

#[test]
fn a_rebooting_report_that_never_arrived_is_sent_before_the_commit() {
    let rig = Rig::new();
    let spec = rig.publish(7, "1.2.0", rig.bundle("1.2.0", BOARD, Some(&release_key())));
    let u = rig.updater(Slot::A, "1.1.0");
    // The portal is down just when `rebooting` is sent.
    rig.portal.st().unavailable_for = Some(UpdateState::Rebooting);
    assert_eq!(rig.run(&u, 70, &spec), JobEnd::Reboot);
    assert!(!rig.store().load_pending().unwrap().unwrap().job_closed);
    rig.portal.st().unavailable_for = None;
    let n = rig.portal.reports().len();

    assert_eq!(rig.boot(), Slot::B);
    let u = rig.updater(Slot::B, "1.2.0");
    u.resolve_at_start(&rig.reporter);
    rig.commit(&u);
    let after: Vec<(UpdateState, Option<i64>)> = rig.portal.reports()[n..]
        .iter()
        .map(|r| (r.state, r.job_id))
        .collect();
    assert_eq!(
        after,
        [
            (UpdateState::Rebooting, Some(70)),
            (UpdateState::Committed, None)
        ]
    );
}

#[test]
fn a_new_slot_that_never_gets_healthy_is_rolled_back_and_reported_by_the_old_one() {
    let (rig, _) = installed();
    let n = rig.portal.reports().len();
    // Three trial boots of B, each ended by the watchdog (no mark_good), then A.
    for _ in 0..3 {
        assert_eq!(rig.boot(), Slot::B);
    }
    assert_eq!(rig.boot(), Slot::A);
    let u = rig.updater(Slot::A, "1.1.0");
    assert_eq!(u.resolve_at_start(&rig.reporter), BootRole::Normal);
    // Decided before A is marked good (which reorders the boot state): a power cut
    // now loses nothing.
    let pending = rig.store().load_pending().unwrap().unwrap();
    assert_eq!(pending.outcome.unwrap().state, UpdateState::RolledBack);

    rig.commit(&u);
    let st = rig.state();
    assert_eq!(st.order, vec![Slot::A, Slot::B]);
    assert_eq!((st.tries_a, st.tries_b), (3, 0));
    let after = rig.portal.reports()[n..].to_vec();
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].state, UpdateState::RolledBack);
    assert_eq!(
        after[0].reason,
        "slot B did not become healthy in 3 tries; back on slot A"
    );
    assert_eq!(after[0].slot.as_deref(), Some("a"));
    assert!(!rig.store().has_pending());
    assert_eq!(rig.store().floor().unwrap(), Some(Version::new(1, 1, 0)));
}

#[test]
fn a_power_cut_between_the_record_and_the_activation_fails_the_job() {
    let rig = Rig::new();
    let state = rig.state();
    // The record is written, mark_active never ran.
    rig.store()
        .save_pending(&store::PendingUpdate {
            bundle_id: 7,
            version: "1.2.0".into(),
            job_id: Some(70),
            from: Slot::A,
            to: Slot::B,
            job_closed: false,
            outcome: None,
            boot_id: None,
        })
        .unwrap();
    assert_eq!(rig.boot(), Slot::A);
    let u = rig.updater(Slot::A, "1.1.0");
    assert_eq!(u.resolve_at_start(&rig.reporter), BootRole::Normal);
    rig.commit(&u);
    let reports = rig.portal.reports();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].state, UpdateState::Failed);
    assert_eq!(reports[0].job_id, Some(70), "the failure closes the job");
    assert!(reports[0]
        .reason
        .starts_with("interrupted before activation"));
    assert_eq!(rig.state().order, state.order);
    assert!(!rig.store().has_pending());
}

#[test]
fn a_daemon_restarted_before_the_reboot_reboots_without_marking_the_old_slot_good() {
    let (rig, _) = installed();
    let reboots_before = rig.reboots.load(Ordering::SeqCst);
    // Same boot, daemon restarted: the state still says B next.
    let u = Arc::new(rig.updater(Slot::A, "1.1.0"));
    assert_eq!(u.resolve_at_start(&rig.reporter), BootRole::AwaitingReboot);
    assert!(u.availability().is_err());
    rig.commit(&u);
    assert_eq!(rig.state().primary(), Some(Slot::B), "the switch stands");

    let mut w = worker(&rig, u);
    w.resume_update();
    assert!(w.reboot_pending);
    assert_eq!(rig.reboots.load(Ordering::SeqCst), reboots_before + 1);
}

#[test]
fn marking_good_cannot_undo_an_activation_made_in_the_same_boot() {
    let rig = Rig::new();
    let spec = rig.publish(7, "1.2.0", rig.bundle("1.2.0", BOARD, Some(&release_key())));
    // The health check has not passed yet (the scanner is still loading) when the
    // update is installed: when it passes, slot A must not be put first again.
    let u = rig.updater(Slot::A, "1.1.0");
    u.resolve_at_start(&rig.reporter);
    assert_eq!(rig.run(&u, 70, &spec), JobEnd::Reboot);
    rig.commit(&u);
    assert_eq!(rig.state().primary(), Some(Slot::B));
}

// --- claiming ----------------------------------------------------------------------------

fn worker(rig: &Rig, updater: Arc<Updater>) -> crate::jobs::Worker {
    crate::jobs::Worker {
        client: rig.client.clone(),
        executor: Arc::new(crate::executor::DryRunExecutor::new(Duration::ZERO)),
        spool: crate::spool::Spool::open(&rig.dir.path().join("spool")).unwrap(),
        control: Arc::new(JobControl::default()),
        reporter: Arc::new(capture("branch-1")),
        settings: crate::jobs::JobSettings {
            poll_interval: Duration::ZERO,
            status_interval: Duration::ZERO,
            slow_retry: Duration::from_secs(60),
        },
        gate: Arc::new(crate::scanner::ScanGate::open()),
        scans: true,
        updater: Some(updater),
        reboot_pending: false,
        sleep: Box::new(|_| {}),
    }
}

#[test]
fn an_update_job_is_claimed_run_and_rebooted_into() {
    let rig = Rig::new();
    let spec = rig.publish(7, "1.2.0", rig.bundle("1.2.0", BOARD, Some(&release_key())));
    rig.portal.st().claims.push_back(Job {
        id: 70,
        lease_expires_at: 0,
        attempt: 0,
        spec: JobSpec::Update(spec),
    });
    let u = Arc::new(rig.updater(Slot::A, "1.1.0"));
    u.resolve_at_start(&rig.reporter);
    let mut w = worker(&rig, u);
    assert!(w.claim_once().unwrap());
    assert_eq!(
        rig.portal.st().claim_requests[0].capabilities,
        [Capability::Scan, Capability::Update]
    );
    assert!(w.reboot_pending);
    assert_eq!(rig.reboots.load(Ordering::SeqCst), 1);
    assert_eq!(
        w.control.activity(),
        outpost_wire::sensor::Activity::Updating
    );
    // Nothing more is claimed while the reboot is pending.
    assert!(!w.claim_once().unwrap());
    assert_eq!(rig.portal.st().claim_requests.len(), 1);
}

#[test]
fn updates_are_offered_only_when_one_can_be_installed() {
    let rig = Rig::new();
    let u = Arc::new(rig.updater(Slot::A, "1.1.0"));
    let w = worker(&rig, u.clone());
    assert_eq!(w.capabilities(), [Capability::Scan, Capability::Update]);
    // Scanner not ready: updates are still offered, scans are not.
    w.gate.set(false);
    assert_eq!(w.capabilities(), [Capability::Update]);
    w.gate.set(true);
    // Scanner turned off in outpost.toml: never scans, still updates.
    let mut off = worker(&rig, u.clone());
    off.scans = false;
    assert_eq!(off.capabilities(), [Capability::Update]);

    // No trusted keys in the image: no updates.
    fs::remove_file(rig.dir.path().join("keys.pub")).unwrap();
    let w = worker(&rig, Arc::new(rig.updater(Slot::A, "1.1.0")));
    assert_eq!(w.capabilities(), [Capability::Scan]);
    assert!(w
        .updater
        .as_ref()
        .unwrap()
        .describe()
        .contains("no trusted keys"));
}

#[test]
fn a_trial_boot_takes_no_update_until_it_is_committed() {
    let (rig, _) = installed();
    assert_eq!(rig.boot(), Slot::B);
    let u = Arc::new(rig.updater(Slot::B, "1.2.0"));
    u.resolve_at_start(&rig.reporter);
    let w = worker(&rig, u.clone());
    assert_eq!(w.capabilities(), [Capability::Scan]);
    rig.commit(&u);
    assert_eq!(w.capabilities(), [Capability::Scan, Capability::Update]);
}

#[test]
fn a_normal_boot_is_marked_good_and_raises_the_floor() {
    let rig = Rig::new();
    assert_eq!(rig.boot(), Slot::A);
    // A committed slot spends no try when it boots.
    assert_eq!(rig.state().tries_a, 3);
    let u = rig.updater(Slot::A, "1.1.0");
    assert_eq!(u.resolve_at_start(&rig.reporter), BootRole::Normal);
    rig.commit(&u);
    assert_eq!(rig.state().tries_a, 3);
    assert!(rig.healthy_flag().exists());
    assert_eq!(rig.store().floor().unwrap(), Some(Version::new(1, 1, 0)));
    assert!(rig.portal.reports().is_empty());
    assert!(rig
        .reporter
        .captured()
        .iter()
        .any(|l| l == "outpost[branch-1]: health check passed: slot A marked good"));
}

// --- the Pi 5: firmware tryboot ----------------------------------------------------------

/// Installs bundle 7 (1.2.0) from slot A on the tryboot backend in boot `boot-1`, and
/// restarts as the worker does; returns the rig and the recorded restarts.
fn installed_tryboot() -> (Rig, Arc<Mutex<Vec<RebootAction>>>) {
    let rig = Rig::new();
    let restarts = Arc::new(Mutex::new(Vec::new()));
    assert_eq!(rig.firmware_start(false), Slot::A);
    let spec = rig.publish(7, "1.2.0", rig.bundle("1.2.0", BOARD, Some(&release_key())));
    let u = rig.tryboot_updater(Slot::A, "1.1.0", "boot-1", &restarts);
    assert_eq!(u.resolve_at_start(&rig.reporter), BootRole::Normal);
    rig.commit(&u);
    assert_eq!(rig.run(&u, 70, &spec), JobEnd::Reboot);
    // Armed, not switched: the default stays A until the trial commits.
    assert_eq!(rig.armed_trial(), Some(Slot::B));
    assert_eq!(rig.firmware_default(), Slot::A);
    u.reboot().unwrap();
    assert_eq!(
        *restarts.lock().unwrap(),
        [RebootAction::WithArg("0 tryboot")],
        "the one-shot trial needs the restart argument"
    );
    (rig, restarts)
}

#[test]
fn tryboot_the_trial_boot_commits_itself_once_healthy() {
    let (rig, restarts) = installed_tryboot();
    let n = rig.portal.reports().len();
    assert_eq!(rig.firmware_start(true), Slot::B);
    let u = rig.tryboot_updater(Slot::B, "1.2.0", "boot-2", &restarts);
    assert_eq!(u.resolve_at_start(&rig.reporter), BootRole::Trial);
    assert!(u.availability().is_err(), "no update on top of a trial");
    rig.commit(&u);
    assert_eq!(
        rig.firmware_default(),
        Slot::B,
        "committed: B is the default"
    );
    assert_eq!(rig.armed_trial(), None);
    assert!(rig.healthy_flag().exists());
    let after = &rig.portal.reports()[n..];
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].state, UpdateState::Committed);
    assert_eq!(after[0].slot.as_deref(), Some("b"));
    // A later power cut boots B: it is the default now.
    assert_eq!(rig.firmware_start(false), Slot::B);
}

#[test]
fn tryboot_a_trial_that_falls_back_is_reported_rolled_back_and_disarmed() {
    let (rig, restarts) = installed_tryboot();
    let n = rig.portal.reports().len();
    // B hangs in its trial; the watchdog resets the board and the firmware, its
    // one-shot flag spent, boots the default.
    assert_eq!(rig.firmware_start(true), Slot::B);
    assert_eq!(rig.firmware_start(false), Slot::A);
    let u = rig.tryboot_updater(Slot::A, "1.1.0", "boot-3", &restarts);
    assert_eq!(u.resolve_at_start(&rig.reporter), BootRole::Normal);
    rig.commit(&u);
    let after = &rig.portal.reports()[n..];
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].state, UpdateState::RolledBack);
    assert!(after[0].reason.contains("slot B"), "{}", after[0].reason);
    assert_eq!(after[0].slot.as_deref(), Some("a"));
    // Marked good on A: the failed trial is disarmed, so no restart tries it again.
    assert_eq!(rig.armed_trial(), None);
    assert_eq!(rig.firmware_default(), Slot::A);
    assert!(!rig.store().has_pending());
    assert_eq!(restarts.lock().unwrap().len(), 1, "no second restart");
}

#[test]
fn tryboot_a_daemon_restarted_before_the_reboot_reboots_with_tryboot() {
    let (rig, restarts) = installed_tryboot();
    // Same boot (the restart did not happen): the daemon starts again on A.
    let u = rig.tryboot_updater(Slot::A, "1.1.0", "boot-1", &restarts);
    assert_eq!(u.resolve_at_start(&rig.reporter), BootRole::AwaitingReboot);
    rig.commit(&u);
    assert_eq!(
        rig.armed_trial(),
        Some(Slot::B),
        "not marked good: that would disarm the trial"
    );
    u.reboot().unwrap();
    assert_eq!(
        *restarts.lock().unwrap(),
        [RebootAction::WithArg("0 tryboot"); 2]
    );
}
