//! What the running system is using: mounts, swap, and the block-device tree in sysfs.
//! Parsing is pure; the paths are parameters so tests can point them elsewhere.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

/// A block device number (`major:minor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl DevNum {
    /// Splits a Linux `dev_t` (the glibc/musl encoding).
    pub fn from_dev_t(dev: u64) -> DevNum {
        DevNum {
            major: (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)) as u32,
            minor: ((dev & 0xff) | ((dev >> 12) & !0xff)) as u32,
        }
    }

    /// Parses `"8:1"` as found in mountinfo and sysfs `dev` files.
    pub fn parse(text: &str) -> Option<DevNum> {
        let (a, b) = text.trim().split_once(':')?;
        Some(DevNum {
            major: a.parse().ok()?,
            minor: b.parse().ok()?,
        })
    }
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// One line of `/proc/self/mountinfo`, the fields we need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub dev: DevNum,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
}

/// Parses mountinfo text; malformed lines are skipped (the kernel does not write any).
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_mountinfo_line).collect()
}

fn parse_mountinfo_line(line: &str) -> Option<Mount> {
    // id parent major:minor root mount-point options [optional...] - fstype source superopts
    let mut fields = line.split(' ');
    let _id = fields.next()?;
    let _parent = fields.next()?;
    let dev = DevNum::parse(fields.next()?)?;
    let _root = fields.next()?;
    let mount_point = PathBuf::from(unescape(fields.next()?));
    let _options = fields.next()?;
    for f in fields.by_ref() {
        if f == "-" {
            break;
        }
    }
    let fs_type = unescape(fields.next()?);
    let source = unescape(fields.next()?);
    Some(Mount {
        dev,
        mount_point,
        fs_type,
        source,
    })
}

/// Undoes the kernel's octal escapes (`\040` for a space, and so on).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let digits = bytes.get(i + 1..i + 4);
        if let (b'\\', Some(d)) = (bytes[i], digits) {
            if d.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Device paths listed in `/proc/swaps`.
pub fn parse_swaps(text: &str) -> Vec<String> {
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(unescape)
        .collect()
}

/// A block device and everything stacked on it that the kernel may be using: its
/// partitions and, recursively, their holders (device-mapper, md).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceTree {
    pub devs: BTreeSet<DevNum>,
    /// Kernel names (`sda`, `sda1`, `dm-0`), to match `/dev/<name>` sources.
    pub names: BTreeSet<String>,
}

/// Walks sysfs (`sys` is normally `/sys`) from `dev`.
pub fn device_tree(sys: &Path, dev: DevNum) -> DeviceTree {
    let mut tree = DeviceTree::default();
    if let Ok(dir) = fs::canonicalize(sys.join("dev/block").join(dev.to_string())) {
        add_device(sys, &dir, &mut tree);
    } else {
        tree.devs.insert(dev);
    }
    tree
}

fn add_device(sys: &Path, dir: &Path, tree: &mut DeviceTree) {
    let Some(dev) = fs::read_to_string(dir.join("dev"))
        .ok()
        .and_then(|t| DevNum::parse(&t))
    else {
        return;
    };
    if !tree.devs.insert(dev) {
        return; // already seen: holders can form diamonds
    }
    if let Some(name) = dir.file_name().and_then(|n| n.to_str()) {
        tree.names.insert(name.to_string());
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.join("partition").is_file() {
            add_device(sys, &path, tree);
        }
    }
    if let Ok(holders) = fs::read_dir(dir.join("holders")) {
        for h in holders.flatten() {
            let name = h.file_name();
            if let Ok(target) = fs::canonicalize(sys.join("class/block").join(&name)) {
                add_device(sys, &target, tree);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
42 27 254:0 /run/netns /run/netns rw,relatime shared:1 master:2 - ext4 /dev/vda rw
50 27 8:17 / /media/my\\040card rw - vfat /dev/sdb1 rw
garbage line
";

    #[test]
    fn parses_mountinfo_with_optional_fields_and_escapes() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 4);
        assert_eq!(m[1].mount_point, Path::new("/"));
        assert_eq!(
            m[1].dev,
            DevNum {
                major: 254,
                minor: 0
            }
        );
        assert_eq!(m[1].source, "/dev/vda");
        assert_eq!(m[2].fs_type, "ext4");
        assert_eq!(m[3].mount_point, Path::new("/media/my card"));
        assert_eq!(m[3].source, "/dev/sdb1");
    }

    #[test]
    fn parses_swaps() {
        let text = "Filename\tType\tSize\tUsed\tPriority\n/dev/sdc2 partition 1 0 -2\n";
        assert_eq!(parse_swaps(text), vec!["/dev/sdc2".to_string()]);
        assert!(parse_swaps("Filename Type Size Used Priority\n").is_empty());
    }

    #[test]
    fn dev_t_split_matches_kernel_encoding() {
        // glibc's makedev, written out independently of from_dev_t.
        fn makedev(major: u64, minor: u64) -> u64 {
            ((major & 0xffff_f000) << 32)
                | ((major & 0xfff) << 8)
                | ((minor & 0xffff_ff00) << 12)
                | (minor & 0xff)
        }
        assert_eq!(
            DevNum::from_dev_t(0x811),
            DevNum {
                major: 8,
                minor: 17
            }
        );
        assert_eq!(
            DevNum::from_dev_t(makedev(259, 65536)),
            DevNum {
                major: 259,
                minor: 65536
            }
        );
        assert_eq!(DevNum::parse("8:1\n"), Some(DevNum { major: 8, minor: 1 }));
        assert_eq!(DevNum::parse("8"), None);
    }

    #[test]
    fn device_tree_follows_partitions_and_holders() {
        // A miniature sysfs: sdb with partition sdb1, which holds dm-0.
        let tmp = tempfile::tempdir().unwrap();
        let sys = tmp.path();
        let devices = sys.join("devices");
        let sdb = devices.join("sdb");
        let sdb1 = sdb.join("sdb1");
        let dm0 = devices.join("dm-0");
        for d in [&sdb, &sdb1, &dm0, &sdb1.join("holders")] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(sdb.join("dev"), "8:16\n").unwrap();
        fs::write(sdb1.join("dev"), "8:17\n").unwrap();
        fs::write(sdb1.join("partition"), "1\n").unwrap();
        fs::write(dm0.join("dev"), "253:0\n").unwrap();
        fs::create_dir_all(sys.join("dev/block")).unwrap();
        fs::create_dir_all(sys.join("class/block")).unwrap();
        std::os::unix::fs::symlink(&sdb, sys.join("dev/block/8:16")).unwrap();
        std::os::unix::fs::symlink(&dm0, sys.join("class/block/dm-0")).unwrap();
        std::os::unix::fs::symlink(&dm0, sdb1.join("holders/dm-0")).unwrap();

        let tree = device_tree(
            sys,
            DevNum {
                major: 8,
                minor: 16,
            },
        );
        let devs: Vec<String> = tree.devs.iter().map(|d| d.to_string()).collect();
        assert_eq!(devs, ["8:16", "8:17", "253:0"]);
        assert_eq!(
            tree.names.iter().cloned().collect::<Vec<_>>(),
            ["dm-0", "sdb", "sdb1"]
        );
    }
}
