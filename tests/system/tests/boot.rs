//! Boots the real qemu-arm64 test image (U-Boot -> boot.scr -> kernel ->
//! initramfs -> busybox init -> outpostd) and checks what a person would see.
//! Needs root, qemu-system-aarch64 and the image pipeline's host tools (the
//! build installs missing ones). First run builds the image (minutes).

use std::time::Duration;

use outpost_system_tests::{build_image, BuiltImage, Qemu, QemuOptions};

const BOOT: Duration = Duration::from_secs(300);
const STEP: Duration = Duration::from_secs(120);

fn image() -> BuiltImage {
    build_image("qemu-arm64", "test").unwrap()
}

/// Boots and waits for the system to be up (init ran rcS).
fn boot(opts: &QemuOptions) -> Qemu {
    let mut vm = Qemu::start(opts).unwrap();
    vm.wait_for(r"^outpost-boot: booting slot A", BOOT).unwrap();
    vm.wait_for(r"^outpost-init: system up as ", BOOT).unwrap();
    vm
}

#[test]
fn uboot_boots_slot_a_with_read_only_root_and_persistent_overlays() {
    let built = image();
    let mut vm = Qemu::start(&QemuOptions::new(&built)).unwrap();

    // U-Boot found boot.scr on the FAT partition and the script chose A
    vm.wait_for(r"outpost-boot: boot script started", BOOT)
        .unwrap();
    let chose = vm
        .wait_for(r"^outpost-boot: booting slot [AB]", BOOT)
        .unwrap();
    assert!(chose.contains("booting slot A"), "{chose}");
    // the kernel booted with A's root and the slot on its command line
    let cmdline = vm.wait_for(r"Kernel command line:", BOOT).unwrap();
    assert!(cmdline.contains("outpost.slot=A"), "{cmdline}");
    assert!(cmdline.contains("-02 ro rootwait"), "{cmdline}");
    vm.wait_for(r"^outpost-initramfs: switching to slot A root", BOOT)
        .unwrap();
    // a clean boot partition (U-Boot has just written its boot state) needs no repair
    assert!(
        !vm.console().contains("fsck.fat"),
        "fsck.fat had something to say about a clean boot partition"
    );
    vm.wait_for(r"^outpost-init: system up as outpost-", BOOT)
        .unwrap();

    let cmdline = vm.run("cat /proc/cmdline").unwrap();
    assert!(cmdline.stdout.contains("outpost.slot=A"), "{cmdline:?}");

    // the root file system is the read-only squashfs of slot A
    let touch = vm.run("touch /x").unwrap();
    assert!(!touch.success(), "writing to / must fail: {touch:?}");
    assert!(touch.stdout.contains("Read-only file system"), "{touch:?}");
    let root = vm.run("grep ' / ' /proc/mounts").unwrap();
    assert!(
        root.stdout.contains("squashfs") && root.stdout.contains("ro,"),
        "{root:?}"
    );

    // A committed slot spends no try: U-Boot wrote nothing (the fresh card's copy 0 is
    // in force, copy 1 still the blank the build left).
    let state = vm.run("tr '\\0' '\\n' < /boot/bootstate.0").unwrap();
    assert!(state.stdout.contains("BOOT_A_LEFT=3"), "{state:?}");
    assert!(state.stdout.contains("BOOT_SEQ=1"), "{state:?}");
    let blank = vm.run("tr -d '\\0' < /boot/bootstate.1 | wc -c").unwrap();
    assert_eq!(blank.stdout.trim(), "0", "{blank:?}");

    // /etc and /var are writable overlays on /data
    let w = vm
        .run("echo etc-survives > /etc/outpost-test && echo var-survives > /var/outpost-test")
        .unwrap();
    assert!(w.success(), "{w:?}");
    let mounts = vm
        .run("grep -E ' /(etc|var|data|boot) ' /proc/mounts")
        .unwrap();
    for m in [
        " /etc overlay ",
        " /var overlay ",
        " /data ext4 rw",
        " /boot vfat rw",
    ] {
        assert!(mounts.stdout.contains(m), "missing {m:?} in {mounts:?}");
    }
    assert!(vm.run("sync").unwrap().success());

    // ... and persist across a reboot (U-Boot runs again; still no try spent)
    vm.reboot(STEP).unwrap();
    vm.wait_for(r"^outpost-boot: booting slot A", BOOT).unwrap();
    vm.wait_for(r"^outpost-init: system up as ", BOOT).unwrap();
    let etc = vm.run("cat /etc/outpost-test /var/outpost-test").unwrap();
    assert_eq!(etc.stdout, "etc-survives\nvar-survives\n", "{etc:?}");
    let state = vm.run("tr '\\0' '\\n' < /boot/bootstate.0").unwrap();
    assert!(state.stdout.contains("BOOT_A_LEFT=3"), "{state:?}");
    assert!(state.stdout.contains("BOOT_SEQ=1"), "{state:?}");
}

#[test]
fn data_partition_grows_to_fill_an_enlarged_disk() {
    let built = image();
    let raw = std::fs::metadata(&built.image).unwrap().len();
    let extra: u64 = 512 << 20;
    let mut opts = QemuOptions::new(&built);
    opts.disk_size = Some(raw + extra);
    let mut vm = boot(&opts);

    // the initramfs reported the growth on the console
    let console = vm.console();
    assert!(
        console.contains("growing partition 4"),
        "no growth message on the console"
    );

    // partition 4 now ends at the end of the disk
    let sizes = vm
        .run("echo $(cat /sys/block/vda/size) $(cat /sys/block/vda/vda4/start) $(cat /sys/block/vda/vda4/size)")
        .unwrap();
    let v: Vec<u64> = sizes
        .stdout
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(v.len(), 3, "{sizes:?}");
    assert_eq!(
        v[1] + v[2],
        v[0],
        "vda4 must end at the disk's end: {sizes:?}"
    );
    // and the file system was grown with it: more than the extra 512 MiB
    let df = vm.run("df -k /data | tail -n 1").unwrap();
    let total_kib: u64 = df
        .stdout
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        total_kib > (extra >> 10),
        "/data is only {total_kib} KiB: {df:?}"
    );
    // growing left the device nodes as the kernel made them: the scanner's users
    // (not root) need /dev/null
    let modes = vm
        .run("stat -c '%a %n' /dev/null /dev/zero /dev/urandom")
        .unwrap();
    assert_eq!(
        modes.stdout, "666 /dev/null\n666 /dev/zero\n666 /dev/urandom\n",
        "{modes:?}"
    );
}

#[test]
fn outpostd_runs_on_the_console_and_is_respawned_after_kill() {
    let built = image();
    let mut vm = boot(&QemuOptions::new(&built));
    vm.wait_for(r"^outpost: starting outpostd", BOOT).unwrap();

    // no provisioning file in this image: the daemon names the phase and reason
    vm.wait_for(r"provision", STEP).unwrap();

    let first = wait_for_pid(&mut vm, None);
    let kill = vm.run(&format!("kill -9 {first}")).unwrap();
    assert!(kill.success(), "{kill:?}");
    let second = wait_for_pid(&mut vm, Some(first));
    assert_ne!(first, second);
    // init started it again, visibly
    vm.wait_for(r"^outpost: starting outpostd", STEP).unwrap();

    // the command line is the contract's
    let args = vm
        .run(&format!("tr '\\0' ' ' < /proc/{second}/cmdline"))
        .unwrap();
    assert!(
        args.stdout
            .trim()
            .starts_with("/usr/sbin/outpostd --config /boot/outpost.toml --data-dir /data/outpost"),
        "{}",
        args.stdout
    );
}

/// Polls `pidof outpostd` until it names a process other than `not`.
fn wait_for_pid(vm: &mut Qemu, not: Option<u32>) -> u32 {
    for _ in 0..120 {
        let out = vm.run("pidof outpostd").unwrap();
        if let Some(pid) = out
            .stdout
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
        {
            if Some(pid) != not {
                return pid;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("outpostd did not (re)appear; console:\n{}", vm.console());
}

/// Byte offset of partition 1 (the boot FAT) in an MBR disk image.
fn boot_partition_offset(img: &[u8]) -> u64 {
    let lba = u32::from_le_bytes(img[454..458].try_into().unwrap());
    u64::from(lba) * 512
}

/// Makes `path`'s cluster chain on the boot FAT one cluster longer than its size says:
/// the kind of damage a power cut leaves when it lands while a file grows (an update's
/// `Image.new`). Unrepaired, Linux meets such damage only later, in the middle of the
/// next update's write, and then turns the whole partition read-only.
fn lengthen_chain(img_path: &std::path::Path, path: &str) {
    let mut img = std::fs::read(img_path).unwrap();
    let part = boot_partition_offset(&img);
    let out = std::process::Command::new("mshowfat")
        .arg("-i")
        .arg(format!("{}@@{part}", img_path.display()))
        .arg(format!("::/{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "mshowfat: {text}");
    // "::/stale.new <1234-1236>": the last cluster of the chain
    let last: usize = text
        .rsplit(['-', '<'])
        .next()
        .and_then(|s| s.trim().trim_end_matches('>').parse().ok())
        .unwrap_or_else(|| panic!("no cluster chain in {text:?}"));
    let p = part as usize;
    let u16_at = |o: usize| usize::from(u16::from_le_bytes([img[p + o], img[p + o + 1]]));
    let reserved = u16_at(14);
    let fats = usize::from(img[p + 16]);
    let fat_bytes = u32::from_le_bytes(img[p + 36..p + 40].try_into().unwrap()) as usize * 512;
    assert_eq!(u16_at(22), 0, "the boot partition is FAT32");
    let entry = |img: &[u8], fat: usize, c: usize| {
        let o = p + reserved * 512 + fat * fat_bytes + c * 4;
        (
            o,
            u32::from_le_bytes(img[o..o + 4].try_into().unwrap()) & 0x0fff_ffff,
        )
    };
    let free = (last + 1..fat_bytes / 4)
        .find(|&c| entry(&img, 0, c).1 == 0)
        .expect("a free cluster");
    for fat in 0..fats {
        let (o, _) = entry(&img, fat, last);
        img[o..o + 4].copy_from_slice(&(free as u32).to_le_bytes());
        let (o, _) = entry(&img, fat, free);
        img[o..o + 4].copy_from_slice(&0x0fff_ffffu32.to_le_bytes());
    }
    std::fs::write(img_path, img).unwrap();
}

#[test]
fn a_boot_partition_damaged_by_a_power_cut_is_repaired_and_stays_writable() {
    let built = image();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("cut.img");
    let ok = std::process::Command::new("cp")
        .arg("--sparse=always")
        .arg(&built.image)
        .arg(&img)
        .status()
        .unwrap();
    assert!(ok.success());
    outpost_imagetool::write_boot_file(&img, "stale.new", &vec![0x5a; 10_000]).unwrap();
    lengthen_chain(&img, "stale.new");
    let mut opts = QemuOptions::new(&built);
    opts.image = img;
    let mut vm = boot(&opts);

    let console = vm.console();
    assert!(
        console.contains("outpost-initramfs: fsck.fat repaired the boot partition /dev/vda1"),
        "the initramfs names the repair"
    );
    // What an update does with a stale staged file: replace it, then sync. The
    // partition stays writable and the kernel finds nothing wrong.
    let w = vm
        .run("rm /boot/stale.new && echo new > /boot/stale.new && sync && cat /boot/stale.new")
        .unwrap();
    assert!(w.success() && w.stdout == "new\n", "{w:?}");
    let mounts = vm.run("grep ' /boot ' /proc/mounts").unwrap();
    assert!(mounts.stdout.contains(" vfat rw,"), "{mounts:?}");
    let errors = vm.run("dmesg | grep 'FAT-fs (vda1)' || true").unwrap();
    assert!(
        !errors.stdout.contains("error"),
        "the kernel found FAT damage: {}",
        errors.stdout
    );
}
