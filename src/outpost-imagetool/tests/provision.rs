//! Provisioning real disk images: one built with the standard tools (sfdisk,
//! mkfs.vfat, mtools) and one built in-process, read back with both this crate and
//! mtools, and checked with fsck.fat.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use outpost_imagetool::mbr::{Mbr, Partition};
use outpost_imagetool::{provision, read_boot_file, write_boot_file, ImageError};

const MIB: u64 = 1024 * 1024;
const FAT_START: u64 = MIB;
/// FAT32 needs about 65525 clusters: 64 MiB with 512-byte clusters is enough.
const FAT_LEN: u64 = 64 * MIB;

const TOML: &str = r#"# Outpost sensor provisioning
portal_url = "https://portal.example.test"
enrollment_token = "tok-123"

[network]
mode = "dhcp"
"#;

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn mtools_img(image: &Path) -> String {
    format!("{}@@{FAT_START}", image.display())
}

/// MBR disk like the real one: FAT32 boot, two slots, data, built by the standard
/// tools, with some files already on the FAT.
fn tool_built_image(dir: &Path) -> PathBuf {
    let image = dir.join("disk.img");
    let total = FAT_START + FAT_LEN + 3 * 4 * MIB;
    fs::File::create(&image).unwrap().set_len(total).unwrap();
    let fat_sectors = FAT_LEN / 512;
    let layout = format!(
        "label: dos\nlabel-id: 0x4f55d002\nunit: sectors\n\n\
         start=2048, size={fat_sectors}, type=c, bootable\n\
         start={}, size=8192, type=83\nstart={}, size=8192, type=83\nstart={}, size=8192, type=83\n",
        2048 + fat_sectors,
        2048 + fat_sectors + 8192,
        2048 + fat_sectors + 16384
    );
    let mut child = Command::new("sfdisk")
        .arg("-q")
        .arg(&image)
        .stdin(Stdio::piped())
        .spawn()
        .expect("sfdisk (apt-get install fdisk)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(layout.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    run(Command::new("mkfs.vfat")
        .args([
            "-F",
            "32",
            "-S",
            "512",
            "-s",
            "1",
            "-n",
            "OUTPOSTBOOT",
            "--offset",
            "2048",
        ])
        .arg(&image)
        .arg((FAT_LEN / 1024).to_string()));
    let img = mtools_img(&image);
    run(Command::new("mmd").args(["-i", &img, "::slot-a"]));
    for (name, bytes) in existing_files() {
        let src = dir.join(name.replace('/', "_"));
        fs::write(&src, &bytes).unwrap();
        run(Command::new("mcopy")
            .args(["-i", &img])
            .arg(&src)
            .arg(format!("::{name}")));
    }
    image
}

/// Files that must survive provisioning byte for byte.
fn existing_files() -> Vec<(&'static str, Vec<u8>)> {
    let big: Vec<u8> = (0..3 * MIB as u32)
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    vec![
        ("boot.scr", b"#!script stand-in\n".to_vec()),
        ("bootstate.0", vec![0x5a; 4096]),
        ("slot-a/Image", big),
    ]
}

fn mtools_read(image: &Path, name: &str) -> Vec<u8> {
    run(Command::new("mcopy").args(["-n", "-i", &mtools_img(image), &format!("::{name}"), "-"]))
}

/// fsck.fat has no offset option: check a copy of the partition.
fn fsck(image: &Path) {
    let bytes = fs::read(image).unwrap();
    let part = image.with_extension("fat");
    fs::write(
        &part,
        &bytes[FAT_START as usize..(FAT_START + FAT_LEN) as usize],
    )
    .unwrap();
    let out = Command::new("fsck.fat")
        .arg("-n")
        .arg(&part)
        .output()
        .expect("fsck.fat (apt-get install dosfstools)");
    assert!(
        out.status.success(),
        "fsck.fat found problems:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    fs::remove_file(part).unwrap();
}

#[test]
fn provision_tool_built_image_and_read_back_with_mtools() {
    let tmp = tempfile::tempdir().unwrap();
    let image = tool_built_image(tmp.path());
    let mbr_before = fs::read(&image).unwrap()[..512].to_vec();

    provision(&image, TOML).unwrap();

    assert_eq!(
        read_boot_file(&image, "outpost.toml").unwrap(),
        TOML.as_bytes()
    );
    assert_eq!(mtools_read(&image, "outpost.toml"), TOML.as_bytes());
    let typed = run(Command::new("mtype").args(["-i", &mtools_img(&image), "::outpost.toml"]));
    assert_eq!(String::from_utf8_lossy(&typed), TOML);
    for (name, bytes) in existing_files() {
        assert_eq!(mtools_read(&image, name), bytes, "{name} changed");
        assert_eq!(read_boot_file(&image, name).unwrap(), bytes);
    }
    assert_eq!(&fs::read(&image).unwrap()[..512], &mbr_before[..]);
    fsck(&image);
}

#[test]
fn reprovisioning_replaces_the_whole_file() {
    let tmp = tempfile::tempdir().unwrap();
    let image = tool_built_image(tmp.path());
    provision(&image, TOML).unwrap();
    let shorter = "portal_url = \"https://other.example.test\"\n";
    provision(&image, shorter).unwrap();
    assert_eq!(mtools_read(&image, "outpost.toml"), shorter.as_bytes());
    // Also a file that mtools wrote first, replaced by us.
    write_boot_file(&image, "/boot.scr", b"new").unwrap();
    assert_eq!(mtools_read(&image, "boot.scr"), b"new");
    fsck(&image);
}

#[test]
fn invalid_toml_is_refused_and_image_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let image = tool_built_image(tmp.path());
    let before = fs::read(&image).unwrap();
    let err = provision(&image, "portal_url = \n[[").unwrap_err();
    assert!(matches!(err, ImageError::Toml { .. }), "{err}");
    assert!(err.to_string().contains("not valid TOML"));
    assert!(fs::read(&image).unwrap() == before, "image was modified");
}

/// An image built entirely in-process: our MBR writer plus fatfs::format_volume.
fn in_process_image(dir: &Path) -> PathBuf {
    let image = dir.join("inproc.img");
    let total = FAT_START + FAT_LEN + 4 * MIB;
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&image)
        .unwrap();
    file.set_len(total).unwrap();
    let mbr = Mbr {
        disk_id: 0x0bad_cafe,
        partitions: vec![
            Partition {
                number: 1,
                kind: 0x0c,
                bootable: true,
                start_lba: (FAT_START / 512) as u32,
                sectors: (FAT_LEN / 512) as u32,
            },
            Partition {
                number: 2,
                kind: 0x83,
                bootable: false,
                start_lba: ((FAT_START + FAT_LEN) / 512) as u32,
                sectors: (4 * MIB / 512) as u32,
            },
        ],
    };
    file.write_all(&mbr.to_sector()).unwrap();
    let slice = outpost_imagetool::slice::Slice::new(file, FAT_START, FAT_LEN);
    fatfs::format_volume(
        slice,
        fatfs::FormatVolumeOptions::new()
            .fat_type(fatfs::FatType::Fat32)
            .bytes_per_cluster(512)
            .volume_label(*b"OUTPOSTBOOT"),
    )
    .unwrap();
    image
}

#[test]
fn in_process_image_nested_files_visible_to_mtools() {
    let tmp = tempfile::tempdir().unwrap();
    let image = in_process_image(tmp.path());
    let err = write_boot_file(&image, "slot-b/dtbs/broadcom/board.dtb", b"x").unwrap_err();
    assert!(matches!(err, ImageError::NoParentDir { .. }), "{err}");
    // Directories come from the image build (mtools); files go into them.
    run(Command::new("mmd").args([
        "-i",
        &mtools_img(&image),
        "::slot-b",
        "::slot-b/dtbs",
        "::slot-b/dtbs/broadcom",
    ]));
    write_boot_file(&image, "slot-b/dtbs/broadcom/board.dtb", b"dtb bytes").unwrap();
    assert_eq!(
        read_boot_file(&image, "slot-b/dtbs/broadcom/board.dtb").unwrap(),
        b"dtb bytes"
    );
    provision(&image, TOML).unwrap();
    assert_eq!(
        mtools_read(&image, "slot-b/dtbs/broadcom/board.dtb"),
        b"dtb bytes"
    );
    assert_eq!(mtools_read(&image, "outpost.toml"), TOML.as_bytes());
    let listing = String::from_utf8(run(Command::new("mdir").args([
        "-b",
        "-i",
        &mtools_img(&image),
        "::slot-b/dtbs/broadcom",
    ])))
    .unwrap();
    assert!(listing.contains("board.dtb"), "{listing}");
    fsck(&image);
}

#[test]
fn errors_name_the_image_and_the_problem() {
    let tmp = tempfile::tempdir().unwrap();

    let blank = tmp.path().join("blank.img");
    fs::File::create(&blank).unwrap().set_len(MIB).unwrap();
    let err = provision(&blank, TOML).unwrap_err().to_string();
    assert!(err.contains("blank.img") && err.contains("0x55AA"), "{err}");

    let image = in_process_image(tmp.path());
    let err = read_boot_file(&image, "missing.txt").unwrap_err();
    assert!(matches!(err, ImageError::NotFound { .. }));
    assert!(err.to_string().contains("missing.txt"));

    // Partition 1 retyped as Linux: refused before any FAT access.
    let mut bytes = fs::read(&image).unwrap();
    bytes[446 + 4] = 0x83;
    fs::write(&image, &bytes).unwrap();
    let err = provision(&image, TOML).unwrap_err().to_string();
    assert!(err.contains("not FAT") && err.contains("0x83"), "{err}");

    let err = write_boot_file(&image, "../escape", b"x").unwrap_err();
    assert!(matches!(err, ImageError::BadName { .. }));

    let err = provision(&tmp.path().join("nope.img"), TOML)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope.img"), "{err}");
}
