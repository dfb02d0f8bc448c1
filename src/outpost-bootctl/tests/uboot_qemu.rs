//! Runs the real U-Boot (Debian's u-boot-qemu, arm64) in qemu-system-aarch64 on a disk
//! whose FAT partition holds the real `board/common/boot.cmd` (after the qemu-arm64
//! preamble, exactly as scripts/build-image assembles it) and prepared boot-state
//! copies, but no kernel. U-Boot runs the script, decides, writes the state back and
//! then fails to load the kernel and resets; `-no-reboot` turns that reset into a QEMU
//! exit. The copies are then read back with this crate and compared with
//! `BootState::simulate_boot`.
//!
//! Needs qemu-system-aarch64 (qemu-system-arm), mkimage (u-boot-tools), sfdisk
//! (fdisk), mkfs.vfat (dosfstools) and mtools. U-Boot comes from `OUTPOST_UBOOT_BIN`
//! or is fetched once by tests/fetch-u-boot-qemu.sh into the target directory;
//! `OUTPOST_BOOT_CMD` points the test at another boot.cmd than the repository's.
//! QEMU runs without any network device.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use outpost_bootctl::envblob::{self, EnvVars};
use outpost_bootctl::store::{Loaded, COPY_NAMES};
use outpost_bootctl::{BootControl, BootDecision, BootState, Slot, UbootFileEnv};

const CRATE_DIR: &str = env!("CARGO_MANIFEST_DIR");
const SCRIPT_STARTED: &str = "outpost-boot: boot script started";
const FAT_OFFSET: u64 = 1024 * 1024;
const FAT_SECTORS: u64 = 64 * 2048;
/// Generous: a run takes seconds, but the machine may be busy with other builds.
const QEMU_DEADLINE: Duration = Duration::from_secs(300);

fn repo_root() -> PathBuf {
    Path::new(CRATE_DIR).join("../..")
}

fn require(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(found, "{tool} not found: apt-get install {package}");
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// U-Boot binary, fetched at most once per test process.
fn uboot_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("OUTPOST_UBOOT_BIN") {
            return PathBuf::from(p);
        }
        let dest = Path::new(env!("CARGO_TARGET_TMPDIR")).join("u-boot-qemu");
        let bin = dest.join("u-boot.bin");
        if !bin.exists() {
            run(Command::new("bash")
                .arg(Path::new(CRATE_DIR).join("tests/fetch-u-boot-qemu.sh"))
                .arg(&dest));
        }
        assert!(bin.exists(), "{} missing after fetch", bin.display());
        bin
    })
}

/// boot.scr compiled from the qemu-arm64 preamble and the shared boot script.
fn boot_scr(dir: &Path) -> PathBuf {
    require("mkimage", "u-boot-tools");
    let root = repo_root();
    let preamble = root.join("board/qemu-arm64/boot-preamble.cmd");
    // OUTPOST_BOOT_CMD tries a candidate script before it replaces the real one.
    let script = std::env::var_os("OUTPOST_BOOT_CMD")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("board/common/boot.cmd"));
    assert!(
        script.exists(),
        "{} does not exist (owned by the image engineer)",
        script.display()
    );
    let mut text = fs::read(&preamble).unwrap();
    text.extend(fs::read(&script).unwrap());
    let cmd = dir.join("boot.cmd");
    fs::write(&cmd, text).unwrap();
    let scr = dir.join("boot.scr");
    run(Command::new("mkimage")
        .args(["-A", "arm64", "-O", "linux", "-T", "script", "-C", "none"])
        .args(["-n", "outpost boot", "-d"])
        .arg(&cmd)
        .arg(&scr));
    scr
}

fn fat_image_arg(disk: &Path) -> String {
    format!("{}@@{FAT_OFFSET}", disk.display())
}

/// An MBR disk like the real one (FAT32 boot, two slots, data) with boot.scr, empty
/// slot directories and the given boot-state copies, but no kernel.
fn make_disk(dir: &Path, copies: [Option<&[u8]>; 2]) -> PathBuf {
    require("sfdisk", "fdisk");
    require("mkfs.vfat", "dosfstools");
    require("mcopy", "mtools");
    let scr = boot_scr(dir);
    let disk = dir.join("disk.img");
    let f = fs::File::create(&disk).unwrap();
    f.set_len(FAT_OFFSET + (FAT_SECTORS + 3 * 8192) * 512)
        .unwrap();
    drop(f);
    let layout = format!(
        "label: dos\nlabel-id: 0x4f55d001\nunit: sectors\n\n\
         start=2048, size={FAT_SECTORS}, type=c, bootable\n\
         start={}, size=8192, type=83\nstart={}, size=8192, type=83\nstart={}, size=8192, type=83\n",
        2048 + FAT_SECTORS,
        2048 + FAT_SECTORS + 8192,
        2048 + FAT_SECTORS + 16384
    );
    let mut sfdisk = Command::new("sfdisk")
        .args(["-q"])
        .arg(&disk)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut sfdisk.stdin.take().unwrap(), layout.as_bytes()).unwrap();
    assert!(sfdisk.wait().unwrap().success());
    run(Command::new("mkfs.vfat")
        .args(["-F", "32", "-S", "512", "-s", "1", "-n", "OUTPOST"])
        .args(["--offset", "2048"])
        .arg(&disk)
        .arg((FAT_SECTORS / 2).to_string()));
    let img = fat_image_arg(&disk);
    run(Command::new("mmd").args(["-i", &img, "::slot-a", "::slot-b"]));
    run(Command::new("mcopy")
        .args(["-i", &img])
        .arg(&scr)
        .arg("::boot.scr"));
    put_copies(&disk, copies);
    disk
}

fn put_copies(disk: &Path, copies: [Option<&[u8]>; 2]) {
    let img = fat_image_arg(disk);
    let tmp = tempfile::tempdir().unwrap();
    for (i, bytes) in copies.iter().enumerate() {
        let name = COPY_NAMES[i];
        match bytes {
            Some(b) => {
                let p = tmp.path().join(name);
                fs::write(&p, b).unwrap();
                run(Command::new("mcopy")
                    .args(["-o", "-i", &img])
                    .arg(&p)
                    .arg(format!("::{name}")));
            }
            None => {
                // mdel fails on a missing file; that is the state we want anyway.
                let _ = Command::new("mdel")
                    .args(["-i", &img, &format!("::{name}")])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

fn get_copies(disk: &Path) -> [Option<Vec<u8>>; 2] {
    let img = fat_image_arg(disk);
    COPY_NAMES.map(|name| {
        let out = Command::new("mcopy")
            .args(["-n", "-i", &img, &format!("::{name}"), "-"])
            .output()
            .unwrap();
        out.status.success().then_some(out.stdout)
    })
}

fn load(disk: &Path) -> Loaded {
    let c = get_copies(disk);
    Loaded::from_raw([c[0].as_deref(), c[1].as_deref()])
}

/// How a U-Boot run ended.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    /// U-Boot reset the board (QEMU exits because of `-no-reboot`).
    Reset,
    /// U-Boot fell back to its command prompt: on a device it would sit there.
    Prompt,
}

/// Boots the disk once; returns how it ended and the console output.
fn run_uboot(disk: &Path) -> (Ending, String) {
    require("qemu-system-aarch64", "qemu-system-arm");
    let mut child = Command::new("qemu-system-aarch64")
        .args(["-M", "virt", "-cpu", "cortex-a53", "-m", "256"])
        .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
        .args(["-nic", "none", "-no-reboot", "-bios"])
        .arg(uboot_bin())
        .arg("-drive")
        .arg(format!("if=none,file={},format=raw,id=d0", disk.display()))
        .args(["-device", "virtio-blk-device,drive=d0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qemu-system-aarch64");
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut console = Vec::new();
    let ending = loop {
        while let Ok(chunk) = rx.try_recv() {
            console.extend(chunk);
        }
        if let Some(status) = child.try_wait().unwrap() {
            let text = String::from_utf8_lossy(&console);
            assert!(
                status.success(),
                "qemu exited with {status}; console:\n{text}"
            );
            break Ending::Reset;
        }
        // The prompt after the script ran: nothing more will happen by itself.
        let text = String::from_utf8_lossy(&console);
        if let Some(at) = text.find(SCRIPT_STARTED) {
            if text[at..].contains("\n=> ") {
                let _ = child.kill();
                let _ = child.wait();
                break Ending::Prompt;
            }
        }
        if start.elapsed() > QEMU_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("U-Boot did not finish within {QEMU_DEADLINE:?}; console:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Drain what the reader got before QEMU exited.
    while let Ok(chunk) = rx.recv_timeout(Duration::from_millis(500)) {
        console.extend(chunk);
    }
    let console = String::from_utf8_lossy(&console).into_owned();
    assert!(
        console.contains(SCRIPT_STARTED),
        "the boot script did not run; console:\n{console}"
    );
    (ending, console)
}

fn blob(state: &BootState) -> Vec<u8> {
    let mut vars = EnvVars::new();
    state.to_vars(&mut vars);
    envblob::encode(&vars).unwrap()
}

fn state(order: &[Slot], a: u32, b: u32, seq: u32) -> BootState {
    BootState {
        order: order.to_vec(),
        tries_a: a,
        tries_b: b,
        seq,
        trial: None,
    }
}

fn trial(mut s: BootState, slot: Slot) -> BootState {
    s.trial = Some(slot);
    s
}

/// Boots once and checks U-Boot did what `simulate_boot` predicts: same decision on
/// the console, same state written, written to the non-winning copy, winner intact.
fn boot_and_compare(disk: &Path) -> BootDecision {
    let before = load(disk);
    let before_raw = get_copies(disk);
    let (expected_decision, written) = before.state.simulate_boot().unwrap();
    // No valid copy: the script writes the defaults it booted with.
    let written = written.or_else(|| {
        before.winner.is_none().then(|| BootState {
            seq: before.state.seq + 1,
            ..before.state.clone()
        })
    });

    let (ending, console) = run_uboot(disk);
    // Without a kernel the script must reset, so a device retries (and falls back)
    // instead of waiting at a prompt.
    assert_eq!(
        ending,
        Ending::Reset,
        "U-Boot stopped at its prompt instead of resetting; console:\n{console}"
    );

    let after = load(disk);
    match written {
        Some(expected_state) => {
            assert_eq!(
                after.state, expected_state,
                "U-Boot wrote a different state than simulate_boot; console:\n{console}"
            );
            assert_eq!(
                after.winner,
                Some(before.write_target()),
                "written to the wrong copy"
            );
            if let Some(w) = before.winner {
                assert_eq!(
                    get_copies(disk)[w],
                    before_raw[w],
                    "U-Boot overwrote the copy in force"
                );
            }
        }
        None => assert_eq!(
            get_copies(disk),
            before_raw,
            "an ordinary boot of a committed slot must not write the boot state; console:\n{console}"
        ),
    }
    match expected_decision {
        BootDecision::Boot(slot) => {
            let line = format!("outpost-boot: booting slot {slot}");
            assert!(
                console.contains(&line),
                "missing {line:?}; console:\n{console}"
            );
            // The script and the Rust model agree on which boots are trials.
            let trial = format!("outpost-boot: slot {slot} is on trial");
            assert_eq!(
                console.contains(&trial),
                before.state.on_trial(slot),
                "trial flag disagrees with {:?}; console:\n{console}",
                before.state
            );
        }
        BootDecision::ResetAndReboot => {
            assert!(
                console.contains("no slot has tries left"),
                "expected a counter reset; console:\n{console}"
            );
            assert!(!console.contains("outpost-boot: booting slot"));
        }
    }
    expected_decision
}

/// Applies a userspace action with this crate's real file backend to the copies
/// inside the FAT image (copied out, changed, copied back).
fn with_backend(disk: &Path, booted: Slot, action: impl FnOnce(&UbootFileEnv)) {
    let tmp = tempfile::tempdir().unwrap();
    let boot = tmp.path().join("boot");
    fs::create_dir(&boot).unwrap();
    for (i, bytes) in get_copies(disk).iter().enumerate() {
        if let Some(b) = bytes {
            fs::write(boot.join(COPY_NAMES[i]), b).unwrap();
        }
    }
    let cmdline = tmp.path().join("cmdline");
    fs::write(&cmdline, format!("ro rootwait outpost.slot={booted}\n")).unwrap();
    let env = UbootFileEnv::new(&boot).with_cmdline(&cmdline);
    action(&env);
    let files = COPY_NAMES.map(|n| fs::read(boot.join(n)).ok());
    put_copies(disk, [files[0].as_deref(), files[1].as_deref()]);
}

#[test]
fn fresh_image_boots_a_then_update_to_b_then_good() {
    let tmp = tempfile::tempdir().unwrap();
    // What scripts/build-image writes: copy 0 valid with seq 1, copy 1 zeroed.
    let fresh = blob(&state(&[Slot::A, Slot::B], 3, 3, 1));
    let disk = make_disk(tmp.path(), [Some(&fresh), Some(&[0u8; 4096])]);

    assert_eq!(boot_and_compare(&disk), BootDecision::Boot(Slot::A));
    with_backend(&disk, Slot::A, |env| {
        env.mark_good().unwrap();
        env.mark_active(Slot::B).unwrap();
    });
    assert_eq!(boot_and_compare(&disk), BootDecision::Boot(Slot::B));
    with_backend(&disk, Slot::B, |env| env.mark_good().unwrap());
    // seq: 1 fresh (A's boot and its mark_good change nothing), 2 active, 3 B's trial
    // boot, 4 good.
    assert_eq!(load(&disk).state, state(&[Slot::B, Slot::A], 3, 3, 4));
    // Committed now: B boots again and again (power cuts, no portal) without spending
    // a try or writing the FAT.
    for _ in 0..4 {
        assert_eq!(boot_and_compare(&disk), BootDecision::Boot(Slot::B));
    }
    assert_eq!(load(&disk).state, state(&[Slot::B, Slot::A], 3, 3, 4));
}

#[test]
fn a_trial_slot_is_flagged_until_marked_good_and_old_copies_still_boot() {
    let tmp = tempfile::tempdir().unwrap();
    // A copy as written before BOOT_TRIAL existed (and as the fresh image ships it).
    let mut vars = EnvVars::new();
    state(&[Slot::A, Slot::B], 3, 3, 1).to_vars(&mut vars);
    vars.remove("BOOT_TRIAL");
    let legacy = envblob::encode(&vars).unwrap();
    let disk = make_disk(tmp.path(), [Some(&legacy), Some(&[0u8; 4096])]);
    assert_eq!(boot_and_compare(&disk), BootDecision::Boot(Slot::A));

    with_backend(&disk, Slot::A, |env| env.mark_active(Slot::B).unwrap());
    // Every boot of B is a trial until B marks itself good: the first try...
    assert_eq!(boot_and_compare(&disk), BootDecision::Boot(Slot::B));
    // (the script's own write carries the trial on)
    let after = load(&disk);
    let written = get_copies(&disk)[after.winner.unwrap()].clone().unwrap();
    assert_eq!(envblob::decode(&written).unwrap()["BOOT_TRIAL"], "B");
    // ...and the second, after the watchdog (or a hang) reset the board.
    assert_eq!(boot_and_compare(&disk), BootDecision::Boot(Slot::B));
    with_backend(&disk, Slot::B, |env| env.mark_good().unwrap());
    assert_eq!(load(&disk).state.trial, None);
    assert_eq!(boot_and_compare(&disk), BootDecision::Boot(Slot::B));
}

#[test]
fn bad_update_falls_back_to_a_and_sequence_crosses_digits() {
    let tmp = tempfile::tempdir().unwrap();
    // B, on trial, has one try left and seq 9 -> 10 checks decimal arithmetic in the
    // script.
    let older = blob(&state(&[Slot::A, Slot::B], 3, 3, 8));
    let current = blob(&trial(state(&[Slot::B, Slot::A], 3, 1, 9), Slot::B));
    let disk = make_disk(tmp.path(), [Some(&older), Some(&current)]);

    assert_eq!(boot_and_compare(&disk), BootDecision::Boot(Slot::B));
    assert_eq!(load(&disk).state.seq, 10);
    // B never marked good: next boot skips it, and A (committed) spends nothing.
    assert_eq!(boot_and_compare(&disk), BootDecision::Boot(Slot::A));
    assert_eq!(
        load(&disk).state,
        trial(state(&[Slot::B, Slot::A], 3, 0, 10), Slot::B)
    );
}

#[test]
fn no_tries_left_resets_counters() {
    let tmp = tempfile::tempdir().unwrap();
    let current = blob(&state(&[Slot::B, Slot::A], 0, 0, 41));
    let disk = make_disk(tmp.path(), [None, Some(&current)]);
    assert_eq!(boot_and_compare(&disk), BootDecision::ResetAndReboot);
    assert_eq!(load(&disk).state, state(&[Slot::B, Slot::A], 3, 3, 42));
}

#[test]
fn corrupt_newer_copy_is_ignored_and_missing_copies_mean_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    let valid = blob(&state(&[Slot::A, Slot::B], 2, 3, 20));
    let mut torn = blob(&state(&[Slot::B, Slot::A], 3, 3, 21));
    torn[24..].fill(0); // a write cut off inside the variables
    let disk = make_disk(tmp.path(), [Some(&torn), Some(&valid)]);
    assert_eq!(load(&disk).winner, Some(1));
    assert_eq!(boot_and_compare(&disk), BootDecision::Boot(Slot::A));
    assert_eq!(load(&disk).state, state(&[Slot::A, Slot::B], 2, 3, 20));

    // Neither copy present: both sides use the defaults and create copy 0.
    put_copies(&disk, [None, None]);
    assert_eq!(boot_and_compare(&disk), BootDecision::Boot(Slot::A));
    assert_eq!(load(&disk).state, state(&[Slot::A, Slot::B], 3, 3, 1));
}
