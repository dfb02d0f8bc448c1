//! Shared fixture: real input files, real bundles, a file-backed "partition" and a
//! directory standing in for the FAT partition's `slot-b/`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use outpost_bundle::{
    build_bundle, sign_bundle, BuildSpec, Policy, SecretKey, SlotTarget, TrustedKeys, Version,
};
use sha2::{Digest, Sha256};

pub const BOARD: &str = "outpost,rpi4";
pub const DTB_NAME: &str = "broadcom/bcm2711-rpi-4-b.dtb";
/// Larger than the 256 KiB streaming chunk and than the 4 KiB superblock hold.
pub const ROOTFS_LEN: usize = 700 * 1024 + 123;
pub const PARTITION_LEN: usize = 1024 * 1024;

/// Deterministic bytes that differ per `seed` (no two parts alike).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
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

pub fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

pub fn release_key() -> SecretKey {
    SecretKey::from_seed(&[11; 32])
}

pub fn other_key() -> SecretKey {
    SecretKey::from_seed(&[22; 32])
}

pub fn trusted() -> TrustedKeys {
    let line = release_key().public_line("release");
    TrustedKeys::parse(&line, Path::new("trusted")).unwrap()
}

pub fn v(s: &str) -> Version {
    Version::parse(s).unwrap()
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub kernel: Vec<u8>,
    pub initrd: Vec<u8>,
    pub dtb: Vec<u8>,
    pub rootfs: Vec<u8>,
    pub target: SlotTarget,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let f = Fixture {
            kernel: pattern(1, 150_000),
            initrd: pattern(2, 90_001),
            dtb: pattern(3, 4_000),
            rootfs: pattern(4, ROOTFS_LEN),
            target: SlotTarget::new(
                dir.path().join("rootfs-b.part"),
                dir.path().join("boot/slot-b"),
            ),
            dir,
        };
        let inputs = f.dir.path().join("in");
        fs::create_dir_all(inputs.join("broadcom")).unwrap();
        fs::write(inputs.join("Image"), &f.kernel).unwrap();
        fs::write(inputs.join("initrd.img"), &f.initrd).unwrap();
        fs::write(inputs.join("broadcom/bcm2711-rpi-4-b.dtb"), &f.dtb).unwrap();
        fs::write(inputs.join("rootfs.squashfs"), &f.rootfs).unwrap();
        f.make_old_slot(PARTITION_LEN);
        f
    }

    /// The slot as the previous version left it.
    pub fn make_old_slot(&self, partition_len: usize) {
        fs::write(&self.target.rootfs, pattern(100, partition_len)).unwrap();
        let b = &self.target.boot_dir;
        let _ = fs::remove_dir_all(b);
        fs::create_dir_all(b.join("dtbs/broadcom")).unwrap();
        fs::write(b.join("Image"), pattern(101, 140_000)).unwrap();
        fs::write(b.join("initrd.img"), pattern(102, 80_000)).unwrap();
        fs::write(
            b.join("dtbs/broadcom/bcm2711-rpi-4-b.dtb"),
            pattern(103, 3_900),
        )
        .unwrap();
        fs::write(
            b.join("dtbs/broadcom/bcm2711-rpi-400.dtb"),
            pattern(104, 3_800),
        )
        .unwrap();
    }

    pub fn spec(&self, version: &str, min_version: Option<&str>) -> BuildSpec {
        let i = self.dir.path().join("in");
        BuildSpec {
            board: BOARD.into(),
            version: v(version),
            min_version: min_version.map(v),
            rootfs: i.join("rootfs.squashfs"),
            kernel: i.join("Image"),
            initrd: i.join("initrd.img"),
            dtbs: vec![(DTB_NAME.into(), i.join("broadcom/bcm2711-rpi-4-b.dtb"))],
        }
    }

    /// Builds (and with `key`, signs) a bundle; returns its path.
    pub fn bundle(&self, name: &str, spec: &BuildSpec, key: Option<&SecretKey>) -> PathBuf {
        let out = self.dir.path().join(name);
        build_bundle(spec, &out).unwrap();
        if let Some(k) = key {
            sign_bundle(&out, k).unwrap();
        }
        out
    }

    /// The usual: 1.2.0 for the rpi4, may replace 1.0.0 and later, signed by the release key.
    pub fn good_bundle(&self) -> PathBuf {
        self.bundle(
            "good.bundle",
            &self.spec("1.2.0", Some("1.0.0")),
            Some(&release_key()),
        )
    }

    /// Every file under the slot's boot dir plus the partition, by content.
    pub fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        out.insert(
            self.target.rootfs.clone(),
            fs::read(&self.target.rootfs).unwrap(),
        );
        let mut stack = vec![self.target.boot_dir.clone()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    // directories count too: an install must not leave new ones behind
                    out.insert(p.clone(), b"<dir>".to_vec());
                    stack.push(p);
                } else {
                    out.insert(p.clone(), fs::read(&p).unwrap());
                }
            }
        }
        out
    }
}

pub fn policy<'a>(trusted: &'a TrustedKeys, current: &'a Version) -> Policy<'a> {
    Policy {
        trusted,
        board: BOARD,
        current,
        floor: None,
    }
}

/// A reader that hands out at most `n` bytes per call, like a slow socket.
pub struct Trickle<R> {
    pub inner: R,
    pub n: usize,
}

impl<R: Read> Read for Trickle<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.n);
        self.inner.read(&mut buf[..n])
    }
}

/// Byte offsets of the parts inside a bundle file built by the fixture.
pub struct Layout {
    pub manifest_start: usize,
    pub payload_start: usize,
    pub kernel: std::ops::Range<usize>,
    pub rootfs: std::ops::Range<usize>,
}

pub fn layout(bundle: &[u8]) -> Layout {
    let manifest_len = u32::from_be_bytes(bundle[12..16].try_into().unwrap()) as usize;
    let payload_start = 128 + manifest_len;
    let rootfs_start = bundle.len() - ROOTFS_LEN;
    Layout {
        manifest_start: 128,
        payload_start,
        kernel: payload_start..payload_start + 150_000,
        rootfs: rootfs_start..bundle.len(),
    }
}
