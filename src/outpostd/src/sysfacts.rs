//! Facts about the board sent at registration, read from the usual Linux files. Every
//! lookup takes the filesystem root so tests can point it at a fake tree.

use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub struct SysFacts {
    pub hostname: String,
    pub os: String,
    pub board: String,
    pub hardware_serial: String,
    /// The device tree's `serial-number` (a Raspberry Pi's SoC serial); `None` on
    /// boards without one (QEMU, PCs).
    pub board_serial: Option<String>,
}

/// Where Linux shows the device tree the board booted with: `/proc/device-tree` is a
/// link to the sysfs copy, which is also there when /proc is not mounted yet.
const DT_SERIAL: &[&str] = &[
    "proc/device-tree/serial-number",
    "sys/firmware/devicetree/base/serial-number",
];

const UNKNOWN: &str = "unknown";

impl SysFacts {
    pub fn gather(root: &Path) -> SysFacts {
        let board_serial = board_serial(root);
        SysFacts {
            hostname: first_of(root, &["proc/sys/kernel/hostname", "etc/hostname"])
                .unwrap_or_else(|| UNKNOWN.into()),
            os: os_name(root),
            board: first_of(
                root,
                &[
                    "proc/device-tree/model",
                    "sys/firmware/devicetree/base/model",
                ],
            )
            .unwrap_or_else(|| UNKNOWN.into()),
            hardware_serial: board_serial
                .clone()
                .or_else(|| first_of(root, &["sys/class/dmi/id/product_uuid", "etc/machine-id"]))
                .unwrap_or_else(|| UNKNOWN.into()),
            board_serial,
        }
    }
}

/// The device tree's serial number: printable ASCII only (it is a NUL-terminated
/// string property); anything else is ignored rather than sent.
fn board_serial(root: &Path) -> Option<String> {
    let s = first_of(root, DT_SERIAL)?;
    let ok = s.len() <= 64 && s.chars().all(|c| c.is_ascii_graphic());
    if !ok {
        tracing::warn!(serial = %s.escape_debug(), "device-tree serial-number is not printable text; not sent");
    }
    ok.then_some(s)
}

/// The first of `files` that exists and holds text; device-tree strings end in NUL.
fn first_of(root: &Path, files: &[&str]) -> Option<String> {
    files.iter().find_map(|f| {
        let bytes = std::fs::read(root.join(f)).ok()?;
        let text = String::from_utf8_lossy(&bytes);
        let text = text.trim_matches(|c: char| c == '\0' || c.is_whitespace());
        (!text.is_empty()).then(|| text.to_owned())
    })
}

/// `PRETTY_NAME` from os-release, else `NAME VERSION_ID`, else "Linux".
fn os_name(root: &Path) -> String {
    let Some(text) = ["etc/os-release", "usr/lib/os-release"]
        .iter()
        .find_map(|f| std::fs::read_to_string(root.join(f)).ok())
    else {
        return "Linux".into();
    };
    let field = |key: &str| {
        text.lines().find_map(|l| {
            let v = l.strip_prefix(key)?.strip_prefix('=')?;
            let v = v.trim().trim_matches('"').trim_matches('\'');
            (!v.is_empty()).then(|| v.to_owned())
        })
    };
    if let Some(p) = field("PRETTY_NAME") {
        return p;
    }
    match (field("NAME"), field("VERSION_ID")) {
        (Some(n), Some(v)) => format!("{n} {v}"),
        (Some(n), None) => n,
        _ => "Linux".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(root: &Path, rel: &str, content: &[u8]) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    #[test]
    fn reads_a_pi_like_tree() {
        let t = tempfile::tempdir().unwrap();
        put(t.path(), "proc/sys/kernel/hostname", b"outpost-7\n");
        put(
            t.path(),
            "etc/os-release",
            b"NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
        );
        put(
            t.path(),
            "proc/device-tree/model",
            b"Raspberry Pi 4 Model B Rev 1.5\0",
        );
        put(
            t.path(),
            "proc/device-tree/serial-number",
            b"10000000abcdef01\0",
        );
        put(t.path(), "etc/machine-id", b"ffff\n");
        assert_eq!(
            SysFacts::gather(t.path()),
            SysFacts {
                hostname: "outpost-7".into(),
                os: "Debian GNU/Linux 12 (bookworm)".into(),
                board: "Raspberry Pi 4 Model B Rev 1.5".into(),
                hardware_serial: "10000000abcdef01".into(),
                board_serial: Some("10000000abcdef01".into()),
            }
        );
    }

    #[test]
    fn falls_back_in_order() {
        let t = tempfile::tempdir().unwrap();
        put(t.path(), "etc/hostname", b"h\n");
        put(t.path(), "etc/os-release", b"NAME=Outpost\nVERSION_ID=1\n");
        put(
            t.path(),
            "sys/firmware/devicetree/base/model",
            b"QEMU virt\0",
        );
        put(t.path(), "etc/machine-id", b"0123abcd\n");
        let f = SysFacts::gather(t.path());
        assert_eq!(f.hostname, "h");
        assert_eq!(f.os, "Outpost 1");
        assert_eq!(f.board, "QEMU virt");
        assert_eq!(f.hardware_serial, "0123abcd");
        assert_eq!(f.board_serial, None, "a machine id is not a board serial");
    }

    #[test]
    fn board_serial_from_sysfs_device_tree() {
        let t = tempfile::tempdir().unwrap();
        put(
            t.path(),
            "sys/firmware/devicetree/base/serial-number",
            b"100000001a2b3c4d\0",
        );
        put(t.path(), "etc/machine-id", b"0123abcd\n");
        let f = SysFacts::gather(t.path());
        assert_eq!(f.board_serial.as_deref(), Some("100000001a2b3c4d"));
        assert_eq!(f.hardware_serial, "100000001a2b3c4d");
    }

    #[test]
    fn garbage_serial_is_not_sent() {
        let t = tempfile::tempdir().unwrap();
        put(t.path(), "proc/device-tree/serial-number", b"ab\x01cd\0");
        put(t.path(), "etc/machine-id", b"0123abcd\n");
        let f = SysFacts::gather(t.path());
        assert_eq!(f.board_serial, None);
        assert_eq!(f.hardware_serial, "0123abcd");
    }

    #[test]
    fn empty_tree_gives_unknown() {
        let t = tempfile::tempdir().unwrap();
        let f = SysFacts::gather(t.path());
        assert_eq!(f.hostname, "unknown");
        assert_eq!(f.os, "Linux");
        assert_eq!(f.board, "unknown");
        assert_eq!(f.hardware_serial, "unknown");
        assert_eq!(f.board_serial, None);
    }
}
