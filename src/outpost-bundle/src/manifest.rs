//! `manifest.json`: what the bundle holds and for whom. The signature covers its exact
//! bytes, so it is parsed only after the signature checks out.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;

use semver::Version;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Refusal;
use crate::format::HEADER_LEN;

pub const MANIFEST_FORMAT: u32 = 1;
/// A slot has a kernel, an initramfs, a root filesystem and a few device trees.
pub const MAX_PARTS: usize = 64;
/// File names the boot script loads (`board/common/boot.cmd`).
pub const KERNEL_NAME: &str = "Image";
pub const INITRD_NAME: &str = "initrd.img";
pub const ROOTFS_NAME: &str = "rootfs";
/// Device trees live under this directory of the slot, as `boot.cmd` expects.
pub const DTB_DIR: &str = "dtbs";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// Product version of the slot contents (semver).
    pub version: Version,
    /// Board this bundle is built for, e.g. `outpost,rpi4`.
    pub compatible: String,
    /// The oldest running version this bundle may replace (e.g. when it relies on a
    /// data migration that only newer versions prepared). `None`: any older version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<Version>,
    /// In container order: boot files first, the root filesystem last.
    pub parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    /// `Image`, `initrd.img`, `rootfs`, or a device tree's path under `dtbs/`
    /// (e.g. `broadcom/bcm2711-rpi-4-b.dtb`, U-Boot's `fdtfile`).
    pub name: String,
    pub kind: PartKind,
    pub size: u64,
    pub sha256: Sha256Digest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartKind {
    Kernel,
    Initrd,
    Dtb,
    Rootfs,
}

impl Part {
    /// Where the part goes relative to the slot's directory on the boot partition;
    /// `None` for the root filesystem, which goes to the slot's partition.
    pub fn boot_path(&self) -> Option<PathBuf> {
        match self.kind {
            PartKind::Kernel | PartKind::Initrd => Some(PathBuf::from(&self.name)),
            PartKind::Dtb => Some(PathBuf::from(DTB_DIR).join(&self.name)),
            PartKind::Rootfs => None,
        }
    }
}

impl Manifest {
    /// Parses and validates; the error says what is wrong.
    pub fn from_bytes(bytes: &[u8]) -> Result<Manifest, Refusal> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| Refusal::BadManifest {
            reason: e.to_string(),
        })?;
        m.validate()
            .map_err(|reason| Refusal::BadManifest { reason })?;
        Ok(m)
    }

    /// The bytes the builder writes and the signer signs: pretty JSON, one trailing newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain structs of strings and integers cannot fail.
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    pub fn rootfs(&self) -> Option<&Part> {
        self.parts.iter().find(|p| p.kind == PartKind::Rootfs)
    }

    /// Sum of the part sizes; `None` on overflow (a hostile manifest).
    pub fn payload_len(&self) -> Option<u64> {
        self.parts
            .iter()
            .try_fold(0u64, |acc, p| acc.checked_add(p.size))
    }

    /// Length of the whole bundle file with a manifest of `manifest_len` bytes.
    pub fn bundle_len(&self, manifest_len: u32) -> Option<u64> {
        self.payload_len()?
            .checked_add(HEADER_LEN as u64 + u64::from(manifest_len))
    }

    /// The rules a device relies on; checked on build and on every read.
    pub fn validate(&self) -> Result<(), String> {
        if self.format != MANIFEST_FORMAT {
            return Err(format!(
                "manifest format {} is not supported (this build reads {MANIFEST_FORMAT})",
                self.format
            ));
        }
        check_compatible(&self.compatible)?;
        if let Some(min) = &self.min_version {
            if min > &self.version {
                return Err(format!(
                    "min_version {min} is above the bundle's own version {}",
                    self.version
                ));
            }
        }
        if self.parts.is_empty() || self.parts.len() > MAX_PARTS {
            return Err(format!(
                "{} parts; expected 3..={MAX_PARTS}",
                self.parts.len()
            ));
        }
        let mut names = HashSet::new();
        let mut counts = [0usize; 4];
        for (i, p) in self.parts.iter().enumerate() {
            if !names.insert(p.name.to_ascii_lowercase()) {
                // FAT compares names without case, so these would collide on the device.
                return Err(format!("part name {:?} appears twice", p.name));
            }
            let last = i + 1 == self.parts.len();
            match p.kind {
                PartKind::Kernel => expect_name(p, KERNEL_NAME)?,
                PartKind::Initrd => expect_name(p, INITRD_NAME)?,
                PartKind::Rootfs => {
                    expect_name(p, ROOTFS_NAME)?;
                    // Boot files are staged before the partition is touched, so a bad
                    // boot file never costs the slot its root filesystem.
                    if !last {
                        return Err("the rootfs must be the last part".into());
                    }
                }
                PartKind::Dtb => check_dtb_name(&p.name)?,
            }
            if p.size == 0 {
                return Err(format!("part {:?} is empty", p.name));
            }
            counts[p.kind as usize] += 1;
        }
        for (kind, n) in [
            (PartKind::Kernel, counts[PartKind::Kernel as usize]),
            (PartKind::Initrd, counts[PartKind::Initrd as usize]),
            (PartKind::Rootfs, counts[PartKind::Rootfs as usize]),
        ] {
            if n != 1 {
                return Err(format!("{n} parts of kind {kind:?}; expected exactly one"));
            }
        }
        if self.payload_len().is_none() {
            return Err("part sizes overflow".into());
        }
        Ok(())
    }
}

fn expect_name(p: &Part, want: &str) -> Result<(), String> {
    if p.name == want {
        Ok(())
    } else {
        Err(format!(
            "{:?} part must be named {want:?}, not {:?}",
            p.kind, p.name
        ))
    }
}

/// `vendor,board`: lower-case letters, digits and `,._-`, like a device-tree compatible.
fn check_compatible(c: &str) -> Result<(), String> {
    let ok = !c.is_empty()
        && c.len() <= 64
        && c.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b',' | b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("compatible {c:?} is not like \"outpost,rpi4\""))
    }
}

/// A relative path of at most three plain components ending in `.dtb` or `.dtbo`:
/// it is joined to a directory on the device, so it must not be able to leave it.
pub fn check_dtb_name(name: &str) -> Result<(), String> {
    let bad = || format!("device tree name {name:?} must be like \"broadcom/board.dtb\"");
    if name.len() > 128 || !(name.ends_with(".dtb") || name.ends_with(".dtbo")) {
        return Err(bad());
    }
    let comps: Vec<&str> = name.split('/').collect();
    if comps.len() > 3 {
        return Err(bad());
    }
    for c in comps {
        let plain = !c.is_empty()
            && c != "."
            && c != ".."
            && c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'));
        if !plain {
            return Err(bad());
        }
    }
    Ok(())
}

/// A SHA-256 digest, written as 64 lower-case hex digits in JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest(pub [u8; 32]);

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{self}")
    }
}

impl std::str::FromStr for Sha256Digest {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return Err(format!("sha256 {s:?} is not 64 hex digits"));
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = hex_val(pair[0]);
            let lo = hex_val(pair[1]);
            match (hi, lo) {
                (Some(h), Some(l)) => out[i] = h << 4 | l,
                _ => return Err(format!("sha256 {s:?} is not lower-case hex")),
            }
        }
        Ok(Sha256Digest(out))
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(name: &str, kind: PartKind) -> Part {
        Part {
            name: name.into(),
            kind,
            size: 10,
            sha256: Sha256Digest([0xab; 32]),
        }
    }

    fn good() -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            version: Version::new(1, 2, 0),
            compatible: "outpost,rpi4".into(),
            min_version: Some(Version::new(1, 0, 0)),
            parts: vec![
                part("Image", PartKind::Kernel),
                part("initrd.img", PartKind::Initrd),
                part("broadcom/bcm2711-rpi-4-b.dtb", PartKind::Dtb),
                part("rootfs", PartKind::Rootfs),
            ],
        }
    }

    #[test]
    fn round_trips_through_json() {
        let m = good();
        let bytes = m.to_bytes();
        assert_eq!(Manifest::from_bytes(&bytes).unwrap(), m);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("\"compatible\": \"outpost,rpi4\""), "{text}");
        assert!(text.contains(&"ab".repeat(32)), "{text}");
        assert_eq!(m.payload_len(), Some(40));
        assert_eq!(m.bundle_len(100), Some(40 + 100 + 128));
    }

    #[test]
    fn destinations_follow_the_boot_script() {
        let m = good();
        let dests: Vec<_> = m.parts.iter().map(Part::boot_path).collect();
        assert_eq!(
            dests,
            vec![
                Some(PathBuf::from("Image")),
                Some(PathBuf::from("initrd.img")),
                Some(PathBuf::from("dtbs/broadcom/bcm2711-rpi-4-b.dtb")),
                None
            ]
        );
    }

    #[test]
    fn rejects_what_a_device_must_not_act_on() {
        type Breaker = Box<dyn Fn(&mut Manifest)>;
        let cases: Vec<(&str, Breaker)> = vec![
            ("format", Box::new(|m| m.format = 2)),
            (
                "compatible",
                Box::new(|m| m.compatible = "Outpost RPi".into()),
            ),
            (
                "min above version",
                Box::new(|m| m.min_version = Some(Version::new(2, 0, 0))),
            ),
            ("rootfs not last", Box::new(|m| m.parts.swap(2, 3))),
            (
                "no kernel",
                Box::new(|m| {
                    m.parts.remove(0);
                }),
            ),
            (
                "two initrds",
                Box::new(|m| m.parts[2] = part("initrd.img", PartKind::Initrd)),
            ),
            (
                "kernel name",
                Box::new(|m| m.parts[0].name = "vmlinuz".into()),
            ),
            (
                "dtb escapes",
                Box::new(|m| m.parts[2].name = "../../etc/passwd.dtb".into()),
            ),
            (
                "dtb absolute",
                Box::new(|m| m.parts[2].name = "/x.dtb".into()),
            ),
            (
                "dtb suffix",
                Box::new(|m| m.parts[2].name = "broadcom/x".into()),
            ),
            ("empty part", Box::new(|m| m.parts[1].size = 0)),
            (
                "size overflow",
                Box::new(|m| {
                    m.parts[0].size = u64::MAX;
                    m.parts[1].size = u64::MAX;
                }),
            ),
            (
                "case-folded duplicate",
                Box::new(|m| {
                    m.parts.insert(2, part("a.dtb", PartKind::Dtb));
                    m.parts.insert(2, part("A.dtb", PartKind::Dtb));
                }),
            ),
        ];
        for (what, break_it) in cases {
            let mut m = good();
            break_it(&mut m);
            assert!(m.validate().is_err(), "{what} accepted");
            assert!(
                matches!(
                    Manifest::from_bytes(&m.to_bytes()),
                    Err(Refusal::BadManifest { .. })
                ),
                "{what}"
            );
        }
    }

    #[test]
    fn rejects_unknown_fields_and_bad_digests() {
        let text = String::from_utf8(good().to_bytes()).unwrap();
        let extra = text.replacen("{", "{\"install_script\": \"rm -rf /\",", 1);
        assert!(Manifest::from_bytes(extra.as_bytes()).is_err());
        let upper = text.replace(&"ab".repeat(32), &"AB".repeat(32));
        assert!(Manifest::from_bytes(upper.as_bytes()).is_err());
        let short = text.replace(&"ab".repeat(32), "abcd");
        assert!(Manifest::from_bytes(short.as_bytes()).is_err());
        let bad_version = text.replace("\"1.2.0\"", "\"1.2\"");
        assert!(Manifest::from_bytes(bad_version.as_bytes()).is_err());
    }
}
