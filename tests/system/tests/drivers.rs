//! Drivers by hardware, checked on the real Debian kernel and the real Pi 4 device tree
//! (no QEMU): the build-time supplier-chain check (image/lib/modules.py check-dtb)
//! accepts the rpi4 initramfs module set and rejects it when a supplier's driver is
//! taken out, and the initramfs' own modprobe resolves the Pi 4's devices by modalias.
//!
//! The kernel comes from the build's package cache (`OUTPOST_CACHE`, else build/cache):
//! the `linux-image-arm64` metapackage there names the image package the build uses.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use outpost_system_tests::repo_root;

struct Kernel {
    /// Unpacked package root (usr/lib/modules/<kver>, usr/lib/linux-image-<kver>, boot/).
    root: PathBuf,
    kver: String,
}

impl Kernel {
    fn moddir(&self) -> PathBuf {
        self.root.join("usr/lib/modules").join(&self.kver)
    }
    fn dtb(&self, name: &str) -> PathBuf {
        self.root
            .join(format!("usr/lib/linux-image-{}", self.kver))
            .join(name)
    }
    fn vmlinuz(&self) -> PathBuf {
        self.root.join(format!("boot/vmlinuz-{}", self.kver))
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cache_debs() -> PathBuf {
    std::env::var_os("OUTPOST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("build/cache"))
        .join("debs")
}

/// The trixie kernel the rpi4 build uses, unpacked and depmod'ed once under
/// build/test-kernels (shared by the tests of this file; a rename makes it atomic).
fn kernel() -> Kernel {
    let debs = cache_debs();
    if std::fs::read_dir(&debs).map_or(true, |mut d| d.next().is_none()) {
        // A fresh machine: the image build fills the package cache (the other system
        // tests build this image anyway, so it costs nothing extra).
        outpost_system_tests::build_image("qemu-arm64", "test")
            .expect("the test image builds (and fills the package cache)");
    }
    let mut metas: Vec<PathBuf> = std::fs::read_dir(&debs)
        .unwrap_or_else(|e| {
            panic!(
                "no package cache at {}: {e} (set OUTPOST_CACHE or build an image once)",
                debs.display()
            )
        })
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("linux-image-arm64_") && n.ends_with(".deb"))
        })
        .collect();
    metas.sort();
    let meta = metas
        .last()
        .unwrap_or_else(|| panic!("no linux-image-arm64 package in {}", debs.display()));
    // "linux-image-6.12.117+deb13-arm64 (= 6.12.117-1)"
    let depends = ok(Command::new("dpkg-deb")
        .args(["-f"])
        .arg(meta)
        .arg("Depends"));
    let (pkg, ver) = depends
        .split(',')
        .map(str::trim)
        .find(|d| d.starts_with("linux-image-"))
        .and_then(|d| d.split_once(" (= "))
        .map(|(p, v)| (p.to_string(), v.trim_end_matches(')').to_string()))
        .unwrap_or_else(|| {
            panic!(
                "{}: no linux-image dependency in {depends:?}",
                meta.display()
            )
        });
    let kver = pkg.trim_start_matches("linux-image-").to_string();
    let deb = debs.join(format!("{pkg}_{}_arm64.deb", ver.replace(':', "%3a")));
    assert!(deb.is_file(), "{} is missing", deb.display());

    let base = repo_root().join("build/test-kernels");
    let root = base.join(format!("{pkg}_{ver}"));
    if !root
        .join("usr/lib/modules")
        .join(&kver)
        .join("modules.alias")
        .is_file()
    {
        std::fs::create_dir_all(&base).unwrap();
        let tmp = tempfile::tempdir_in(&base).unwrap();
        ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(tmp.path()));
        // depmod -b looks in <base>/lib/modules, Debian's modules are in usr/lib
        std::os::unix::fs::symlink("usr/lib", tmp.path().join("lib")).unwrap();
        ok(Command::new("depmod").arg("-b").arg(tmp.path()).arg(&kver));
        let staged = tmp.keep();
        if std::fs::rename(&staged, &root).is_err() {
            // another test process got there first
            let _ = std::fs::remove_dir_all(&staged);
        }
    }
    Kernel { root, kver }
}

/// A variable of board/<board>/board.conf, as the build reads it (bash `source`).
fn board_var(board: &str, var: &str) -> String {
    let conf = repo_root().join("board").join(board).join("board.conf");
    ok(Command::new("bash").arg("-c").arg(format!(
        "set -e; source {}; printf %s \"${{{var}:-}}\"",
        conf.display()
    )))
}

/// The module names the rpi4 initramfs ships: image/initramfs/modules.txt plus the
/// board's INITRAMFS_MODULES, as scripts/build-image puts them together.
fn rpi4_initramfs_modules() -> Vec<String> {
    let list = std::fs::read_to_string(repo_root().join("image/initramfs/modules.txt")).unwrap();
    let mut names: Vec<String> = list
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    names.extend(
        board_var("rpi4", "INITRAMFS_MODULES")
            .split_whitespace()
            .map(str::to_string),
    );
    names
}

fn check_dtb(k: &Kernel, modules: &[String]) -> Output {
    let dtbs = board_var("rpi4", "DTBS");
    assert_eq!(dtbs.trim(), "broadcom/bcm2711-rpi-4-b.dtb");
    let mut cmd = Command::new("python3");
    cmd.arg(repo_root().join("image/lib/modules.py"))
        .arg("check-dtb")
        .arg("--dtb")
        .arg(k.dtb(dtbs.trim()))
        .arg("--moddir")
        .arg(k.moddir())
        .arg("--kernel")
        .arg(k.vmlinuz());
    let nodes = board_var("rpi4", "DRIVER_CHECK_NODES");
    assert!(
        !nodes.trim().is_empty(),
        "rpi4 board.conf names no DRIVER_CHECK_NODES"
    );
    for n in nodes.split_whitespace() {
        cmd.arg("--node").arg(n);
    }
    cmd.args(modules);
    run(&mut cmd)
}

#[test]
fn rpi4_driver_check_passes_on_the_image_module_set() {
    let k = kernel();
    let out = check_dtb(&k, &rpi4_initramfs_modules());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    // it really walked the chains: the SD host, its two regulators, the firmware GPIO
    // expander behind them, GENET
    let nodes: usize = stdout
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(nodes >= 10, "too few nodes walked: {stdout}");
}

#[test]
fn rpi4_driver_check_fails_naming_a_removed_supplier_module() {
    let k = kernel();
    let all = rpi4_initramfs_modules();
    // (module taken out, node whose driver it is)
    for (gone, node) in [
        ("fixed", "/regulator-sd-vcc"),
        ("gpio-regulator", "/regulator-sd-io-1v8"),
        ("sdhci-iproc", "/emmc2bus/mmc@7e340000"),
        ("mdio-bcm-unimac", "/scb/ethernet@7d580000/mdio@e14"),
    ] {
        let fewer: Vec<String> = all.iter().filter(|m| *m != gone).cloned().collect();
        assert_eq!(fewer.len() + 1, all.len(), "{gone} not in the rpi4 list");
        let out = check_dtb(&k, &fewer);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "check passed without {gone}");
        let want_mod = gone.replace('-', "_");
        assert!(
            stderr
                .lines()
                .any(|l| l.contains("MISSING") && l.contains(node) && l.contains(&want_mod)),
            "without {gone}: {stderr}"
        );
    }
}

/// Builds the initramfs module tree with the pipeline's own function, then asks the
/// initramfs' busybox modprobe (arm64, under qemu-user in a chroot) what it would
/// load for the Pi 4's device modaliases.
#[test]
fn rpi4_initramfs_modprobe_resolves_devices_by_modalias() {
    let k = kernel();
    let root = repo_root();
    let ir = tempfile::tempdir().unwrap();
    let ir = ir.path();
    for d in ["usr/bin", "usr/lib", "etc"] {
        std::fs::create_dir_all(ir.join(d)).unwrap();
    }
    std::os::unix::fs::symlink("usr/lib", ir.join("lib")).unwrap();
    let names = rpi4_initramfs_modules().join(" ");
    ok(Command::new("bash").arg("-c").arg(format!(
        "set -e; ROOT={root}; source $ROOT/image/lib/common.sh; source $ROOT/image/lib/kernel.sh; \
         KVER={kver}; initramfs_modules {ir} {moddir} {names}",
        root = root.display(),
        kver = k.kver,
        ir = ir.display(),
        moddir = k.moddir().display(),
    )));
    let kmods = ir.join("usr/lib/modules").join(&k.kver);
    assert!(kmods.join("modules.alias").is_file());
    assert!(kmods.join("modules.dep").is_file());

    // busybox-static from the same cache, as the initramfs carries it
    let bb_deb = std::fs::read_dir(cache_debs())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("busybox-static_") && n.ends_with("_arm64.deb"))
        })
        .expect("busybox-static in the package cache");
    let bb = tempfile::tempdir().unwrap();
    ok(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&bb_deb)
        .arg(bb.path()));
    std::fs::copy(
        bb.path().join("usr/bin/busybox"),
        ir.join("usr/bin/busybox"),
    )
    .unwrap();
    let qemu = Path::new("/usr/bin/qemu-aarch64-static");
    std::fs::copy(qemu, ir.join("qemu-aarch64-static")).unwrap();

    let aliases = ok(Command::new("python3")
        .arg(root.join("image/lib/modules.py"))
        .arg("modaliases")
        .arg("--dtb")
        .arg(k.dtb("broadcom/bcm2711-rpi-4-b.dtb"))
        .args(["--node", "/emmc2bus/mmc@7e340000", "--node", "ethernet0"]));
    let aliases: Vec<&str> = aliases.lines().collect();
    assert!(
        aliases.iter().any(|a| a.contains("Cregulator-fixed")),
        "{aliases:?}"
    );

    // -D: print the insmod lines instead of loading; -a: every argument is a module/alias
    let out = run(Command::new("chroot")
        .arg(ir)
        .args([
            "/qemu-aarch64-static",
            "-r",
            &k.kver,
            "/usr/bin/busybox",
            "modprobe",
            "-D",
            "-a",
        ])
        .args(&aliases));
    let shown = String::from_utf8_lossy(&out.stdout);
    for m in [
        "regulator/fixed.ko",
        "regulator/gpio-regulator.ko",
        "host/sdhci-iproc.ko",
        "genet/genet.ko",
        "mdio/mdio-bcm-unimac.ko",
    ] {
        assert!(
            shown
                .lines()
                .any(|l| l.starts_with("insmod ") && l.ends_with(m)),
            "modprobe does not resolve {m} from the device modaliases:\n{shown}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
