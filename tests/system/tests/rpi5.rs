//! The rpi5 image, built by the same pipeline for the Pi 5's firmware tryboot: the card
//! layout the EEPROM bootloader and the `rpi-tryboot` backend expect, checked with the
//! host's partition, FAT and squashfs tools (no QEMU: there is no Pi 5 machine to boot
//! it in). What it cannot show, the firmware really booting it, is listed in
//! board/rpi5/README.md.

use std::path::Path;
use std::process::Command;

use outpost_bootctl::{Autoboot, SlotPartitions};
use outpost_system_tests::build_image;

fn tool(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn text(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&tool(cmd)).into_owned()
}

/// One partition of `sfdisk --dump`.
struct Part {
    number: u32,
    start: u64,
    size: u64,
    line: String,
}

fn partitions(img: &str) -> (String, Vec<Part>) {
    let table = text(Command::new("sfdisk").args(["--dump", img]));
    let field = |line: &str, name: &str| -> u64 {
        let s = line.split(&format!("{name}=")).nth(1).unwrap();
        s.split(',').next().unwrap().trim().parse().unwrap()
    };
    let parts = table
        .lines()
        .filter(|l| l.contains(" : start="))
        .map(|l| Part {
            number: l
                .split(" : ")
                .next()
                .unwrap()
                .trim()
                .strip_prefix(img)
                .unwrap()
                .parse()
                .unwrap(),
            start: field(l, "start"),
            size: field(l, "size"),
            line: l.to_string(),
        })
        .collect();
    (table, parts)
}

/// The file at `path` on the FAT at byte offset `offset` of the image.
fn fat_file(img: &str, offset: u64, path: &str) -> Vec<u8> {
    tool(Command::new("mtype").args(["-i", &format!("{img}@@{offset}"), &format!("::/{path}")]))
}

fn fat_files(img: &str, offset: u64) -> Vec<String> {
    text(Command::new("mdir").args(["-/", "-b", "-i", &format!("{img}@@{offset}"), "::/"]))
        .lines()
        .map(|l| l.trim_start_matches("::/").to_string())
        .collect()
}

fn squashfs_cat(img: &str, offset: u64, path: &str) -> String {
    text(Command::new("unsquashfs").args(["-o", &offset.to_string(), "-cat", img, path]))
}

#[test]
fn rpi5_image_has_autoboot_fat_slot_boot_partitions_and_both_roots() {
    let built = build_image("rpi5", "production").unwrap();
    let img = built.image.to_str().unwrap().to_owned();
    let work = tempfile::tempdir().unwrap();

    // MBR: 1 autoboot FAT (bootable), 2/3 the slots' boot FATs, 4 extended holding the
    // roots 5/6 and data 7
    let (table, parts) = partitions(&img);
    assert!(table.contains("label: dos"), "{table}");
    let disk_id = table
        .lines()
        .find_map(|l| l.strip_prefix("label-id: 0x"))
        .expect("a disk id")
        .trim()
        .to_string();
    assert_eq!(disk_id.len(), 8, "{table}");
    let numbers: Vec<u32> = parts.iter().map(|p| p.number).collect();
    assert_eq!(numbers, [1, 2, 3, 4, 5, 6, 7], "{table}");
    let part = |n: u32| parts.iter().find(|p| p.number == n).unwrap();
    assert!(
        part(1).line.contains("type=c") && part(1).line.contains("bootable"),
        "{table}"
    );
    for n in [2, 3] {
        assert!(part(n).line.contains("type=c"), "{table}");
    }
    assert!(part(4).line.contains("type=5"), "{table}");
    for n in [5, 6, 7] {
        assert!(part(n).line.contains("type=83"), "{table}");
        // inside the extended partition
        assert!(part(n).start > part(4).start, "{table}");
        assert!(
            part(n).start + part(n).size <= part(4).start + part(4).size,
            "{table}"
        );
    }
    assert_eq!(
        part(7).start + part(7).size,
        part(4).start + part(4).size,
        "data must be last, so the initramfs can grow it"
    );
    let at = |n: u32| part(n).start * 512;

    // the first FAT: autoboot.txt, parsed by outpost-bootctl's own parser, boots slot A's
    // partition with no trial armed
    let first = fat_files(&img, at(1));
    for f in ["autoboot.txt", "outpost-manifest.txt"] {
        assert!(first.iter().any(|l| l == f), "{f} missing:\n{first:?}");
    }
    let autoboot = String::from_utf8(fat_file(&img, at(1), "autoboot.txt")).unwrap();
    // (outpost-imagetool, which writes outpost.toml there, finds the same partition)
    assert_eq!(
        outpost_imagetool::read_boot_file(&built.image, "autoboot.txt").unwrap(),
        autoboot.as_bytes()
    );
    assert!(
        autoboot.len() <= 512,
        "the firmware reads 512 bytes of autoboot.txt: {} here",
        autoboot.len()
    );
    let ab = Autoboot::parse(&autoboot).unwrap_or_else(|e| panic!("autoboot.txt: {e}"));
    let slots = SlotPartitions::default();
    assert_eq!(ab.default_partition().unwrap(), Some(slots.a));
    assert_eq!(ab.tryboot_partition().unwrap(), Some(slots.a));

    // each slot's FAT: config.txt, cmdline.txt naming its own root, kernel, initramfs and
    // the Pi 5 device tree
    let mut initrds = Vec::new();
    for (slot, boot, root) in [("A", slots.a, 5u32), ("B", slots.b, 6u32)] {
        let files = fat_files(&img, at(boot));
        for f in [
            "config.txt",
            "cmdline.txt",
            "Image",
            "initrd.img",
            "bcm2712-rpi-5-b.dtb",
        ] {
            assert!(
                files.iter().any(|l| l == f),
                "slot {slot}: {f} missing:\n{files:?}"
            );
        }
        let config = String::from_utf8(fat_file(&img, at(boot), "config.txt")).unwrap();
        for line in [
            "arm_64bit=1",
            "kernel=Image",
            "initramfs initrd.img followkernel",
            "device_tree=bcm2712-rpi-5-b.dtb",
        ] {
            assert!(
                config.lines().any(|l| l.trim() == line),
                "slot {slot}: config.txt lacks {line}"
            );
        }
        let cmdline = String::from_utf8(fat_file(&img, at(boot), "cmdline.txt")).unwrap();
        assert_eq!(cmdline.lines().count(), 1, "{cmdline:?}");
        let args: Vec<&str> = cmdline.split_whitespace().collect();
        for want in [
            format!("root=PARTUUID={disk_id}-0{root}"),
            format!("outpost.slot={slot}"),
            "console=ttyAMA10,115200".to_string(),
            "ro".to_string(),
            "rootwait".to_string(),
        ] {
            assert!(
                args.contains(&want.as_str()),
                "slot {slot}: cmdline.txt lacks {want}: {cmdline}"
            );
        }

        // the kernel: gzip (the firmware inflates it) of an arm64 Image
        let kernel = fat_file(&img, at(boot), "Image");
        assert_eq!(&kernel[..2], b"\x1f\x8b", "slot {slot}: Image is not gzip");
        let kpath = work.path().join("Image.gz");
        std::fs::write(&kpath, &kernel).unwrap();
        let head = tool(Command::new("sh").arg("-c").arg(format!(
            "zcat {} | dd bs=64 count=1 iflag=fullblock status=none",
            kpath.display()
        )));
        assert_eq!(&head[56..60], b"ARMd", "slot {slot}: not an arm64 Image");

        let dtb = fat_file(&img, at(boot), "bcm2712-rpi-5-b.dtb");
        assert_eq!(
            &dtb[..4],
            &[0xd0, 0x0d, 0xfe, 0xed],
            "slot {slot}: not a DTB"
        );
        assert!(
            dtb.windows(b"brcm,bcm2712".len())
                .any(|w| w == b"brcm,bcm2712"),
            "slot {slot}: not the BCM2712 device tree"
        );
        initrds.push(fat_file(&img, at(boot), "initrd.img"));
    }
    assert!(initrds[0] == initrds[1], "a fresh image has one initramfs");

    // the initramfs: the card's partition numbers, and the SD/Ethernet modules the
    // driver check asked for (decompressed, for the 7.x kernel)
    let ir = work.path().join("initrd.img");
    std::fs::write(&ir, &initrds[0]).unwrap();
    let listing = text(
        Command::new("sh")
            .arg("-c")
            .arg(format!("zstd -dc {} | cpio -t --quiet", ir.display())),
    );
    let disk_conf = text(Command::new("sh").arg("-c").arg(format!(
        "zstd -dc {} | cpio -i --quiet --to-stdout etc/outpost-disk.conf",
        ir.display()
    )));
    for want in [
        "PART_ROOT_A=5",
        "PART_ROOT_B=6",
        "PART_DATA=7",
        "PART_EXT=4",
    ] {
        assert!(disk_conf.lines().any(|l| l == want), "{disk_conf}");
    }
    let kmods: Vec<&str> = listing
        .lines()
        .filter(|l| l.starts_with("usr/lib/modules/") && l.ends_with(".ko"))
        .collect();
    assert!(
        kmods.iter().all(|l| l.starts_with("usr/lib/modules/7.")),
        "initramfs modules not for a 7.x kernel: {kmods:?}"
    );
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../board/rpi5/board.conf");
    let wanted = text(Command::new("bash").arg("-c").arg(format!(
        "set -e; source {}; printf %s \"$INITRAMFS_MODULES\"",
        conf.display()
    )));
    for m in wanted.split_whitespace() {
        let file = format!("/{}.ko", m.replace('-', "_"));
        assert!(
            kmods.iter().any(|l| l.replace('-', "_").ends_with(&file)),
            "initramfs lacks {m}: {kmods:?}"
        );
    }

    // both roots: the same squashfs, with outpostd and the tryboot backend named
    let read = |n: u32| {
        let out = work.path().join(format!("root-{n}.head"));
        tool(Command::new("dd").args([
            format!("if={img}"),
            format!("of={}", out.display()),
            "bs=512".into(),
            format!("skip={}", part(n).start),
            "count=8192".into(),
            "status=none".into(),
        ]));
        std::fs::read(out).unwrap()
    };
    let (a, b) = (read(5), read(6));
    assert_eq!(&a[..4], b"hsqs", "slot A holds no squashfs");
    assert!(a == b, "slot A and slot B differ on a fresh image");
    for n in [5, 6] {
        let board = squashfs_cat(&img, at(n), "usr/share/outpost/board.conf");
        assert!(
            board
                .lines()
                .any(|l| l.trim() == "BOOT_BACKEND=\"rpi-tryboot\""),
            "partition {n}: {board}"
        );
        let release = squashfs_cat(&img, at(n), "etc/outpost-release");
        assert!(
            release.lines().any(|l| l == "BOARD=outpost,rpi5"),
            "{release}"
        );
        let listing = text(Command::new("unsquashfs").args([
            "-o",
            &at(n).to_string(),
            "-l",
            &img,
            "usr/sbin/outpostd",
        ]));
        assert!(
            listing.contains("usr/sbin/outpostd"),
            "partition {n}: no outpostd:\n{listing}"
        );
    }
    // a production image has no shell on any console
    let inittab = squashfs_cat(&img, at(5), "etc/inittab");
    assert!(inittab.contains("run-outpostd"), "{inittab}");
    assert!(!inittab.contains("/bin/sh"), "{inittab}");

    // data: ext4 labelled outpost-data
    let sb = {
        let out = work.path().join("data.sb");
        tool(Command::new("dd").args([
            format!("if={img}"),
            format!("of={}", out.display()),
            "bs=512".into(),
            format!("skip={}", part(7).start + 2),
            "count=2".into(),
            "status=none".into(),
        ]));
        std::fs::read(out).unwrap()
    };
    assert_eq!(&sb[56..58], &[0x53, 0xef], "data is not ext2/3/4");
    assert_eq!(&sb[120..132], b"outpost-data");

    // the update bundle for this board sits next to the image
    let bundle = built.bundle().unwrap();
    assert!(
        bundle
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("outpost-rpi5-"),
        "{}",
        bundle.display()
    );
}

/// The initramfs' partition-table growth (the block between `# --- grow: begin` and
/// `# --- grow: end` in image/initramfs/init), run by the host's busybox on a disk file
/// with the rpi5 layout and a stand-in for the kernel's sysfs view: `data` (logical
/// partition 7) and the extended partition 4 reach the end of the disk, the result is
/// a valid table, a second run does nothing, and a run after a power cut between the
/// writes (extended partition grown, `data` not) finishes the job.
#[test]
fn initramfs_grows_the_logical_data_partition_to_the_end_of_the_disk() {
    let init = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../image/initramfs/init"),
    )
    .unwrap();
    let block = init
        .split("# --- grow: begin\n")
        .nth(1)
        .and_then(|rest| rest.split("# --- grow: end\n").next())
        .expect("the grow block in image/initramfs/init");

    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let disk = dir.join("dev/disk");
    std::fs::create_dir_all(dir.join("dev")).unwrap();
    let total: u64 = 3000 * 2048;
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(total * 512)
        .unwrap();
    // the geometry of image/lib/disk.sh's tryboot layout, smaller
    let layout = "label: dos\nlabel-id: 0x12345678\nunit: sectors\n\n\
        start=2048, size=131072, type=c, bootable\n\
        start=133120, size=262144, type=c\n\
        start=395264, size=262144, type=c\n\
        start=657408, size=2234368, type=5\n\
        start=659456, size=1048576, type=83\n\
        start=1710080, size=1048576, type=83\n\
        start=2760704, size=131072, type=83\n";
    let mut sfdisk = Command::new("sfdisk")
        .args(["-q", disk.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    sfdisk
        .stdin
        .take()
        .unwrap()
        .write_all(layout.as_bytes())
        .unwrap();
    assert!(sfdisk.wait().unwrap().success());

    // the kernel's view: an extended partition shows as 2 sectors
    let sys = dir.join("sys/disk");
    for p in ["disk4", "disk7"] {
        std::fs::create_dir_all(sys.join(p)).unwrap();
    }
    std::fs::write(sys.join("size"), total.to_string()).unwrap();
    std::fs::write(sys.join("disk4/start"), "657408").unwrap();
    std::fs::write(sys.join("disk7/start"), "2760704").unwrap();
    let view = |data_size: u64| std::fs::write(sys.join("disk7/size"), data_size.to_string());
    view(131072).unwrap();

    let script = dir.join("grow.sh");
    std::fs::write(
        &script,
        format!(
            "DEVDIR={dev}; SYSBLOCK={sys}; DISK=disk; DATADEV=disk7; PART_DATA=7; PART_EXT=4\n\
             log() {{ echo \"log: $*\"; }}\n\
             fail() {{ echo \"FAIL: $*\"; exit 1; }}\n\
             blockdev() {{ echo \"blockdev $*\"; }}\n\
             sync() {{ :; }}\n\
             part_of() {{ echo \"disk$2\"; }}\n\
             {block}\ngrow_partition\n",
            dev = dir.join("dev").display(),
            sys = dir.join("sys").display(),
        ),
    )
    .unwrap();
    let grow = || {
        text(
            Command::new("busybox")
                .arg("sh")
                .arg(&script)
                .env("PATH", "/usr/bin:/bin"),
        )
    };
    let img = disk.to_str().unwrap().to_owned();
    let ends = |img: &str| {
        let (_, parts) = partitions(img);
        let end = |n: u32| {
            let p = parts.iter().find(|p| p.number == n).unwrap();
            p.start + p.size
        };
        (end(4), end(7))
    };
    let valid = |img: &str| {
        let v = text(Command::new("sfdisk").args(["-V", img]));
        assert!(v.contains("No errors detected"), "{v}");
    };

    let out = grow();
    assert!(
        out.contains("growing partition 7 from 131072 to 3383296 sectors"),
        "{out}"
    );
    assert_eq!(ends(&img), (total, total));
    valid(&img);

    // the kernel re-read the table: nothing more to do
    view(3383296).unwrap();
    let out = grow();
    assert!(!out.contains("growing"), "{out}");

    // a power cut after the extended partition grew: data's EBR entry and the link to
    // it still have the old sizes (the link is in partition 6's EBR at 1708032)
    let patch = |sector: u64, offset: u64, value: u32| {
        use std::io::{Seek, SeekFrom};
        let mut f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        f.seek(SeekFrom::Start(sector * 512 + offset)).unwrap();
        f.write_all(&value.to_le_bytes()).unwrap();
    };
    patch(2758656, 446 + 12, 131072);
    patch(1708032, 446 + 16 + 12, 133120);
    view(131072).unwrap();
    assert_eq!(ends(&img), (total, 2760704 + 131072));
    let out = grow();
    assert!(out.contains("growing partition 7"), "{out}");
    assert_eq!(ends(&img), (total, total));
    valid(&img);
}
