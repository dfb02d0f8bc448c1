//! Drivers by hardware, checked on the real Debian kernels and the real Pi device trees
//! (no QEMU): the build-time supplier-chain check (image/lib/modules.py check-dtb)
//! accepts the rpi4 and rpi5 initramfs module sets (each on its board's kernel: trixie's
//! 6.12 for the Pi 4, sid's 7.x for the Pi 5) and rejects them when a supplier's driver
//! is taken out, and the initramfs' own modprobe resolves the Pi 4's devices by modalias.
//!
//! The kernel comes from the build's package cache (`OUTPOST_CACHE`, else build/cache):
//! the board's kernel metapackage (`KERNEL_PACKAGE`, else image/boot-packages.txt),
//! resolved with the build's own apt configuration there, names the packages the build
//! uses.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use outpost_system_tests::repo_root;

struct Kernel {
    /// Unpacked package root: usr/lib/modules/<kver>, and either usr/lib/linux-image-<kver>
    /// and boot/ (6.x) or the DTBs and vmlinuz inside usr/lib/modules/<kver> (7.x).
    root: PathBuf,
    kver: String,
}

impl Kernel {
    fn moddir(&self) -> PathBuf {
        self.root.join("usr/lib/modules").join(&self.kver)
    }
    fn usr_lib_modules(&self) -> bool {
        self.moddir().join("vmlinuz").is_file()
    }
    fn dtb(&self, name: &str) -> PathBuf {
        if self.usr_lib_modules() {
            self.moddir().join("dtb").join(name)
        } else {
            self.root
                .join(format!("usr/lib/linux-image-{}", self.kver))
                .join(name)
        }
    }
    fn vmlinuz(&self) -> PathBuf {
        if self.usr_lib_modules() {
            self.moddir().join("vmlinuz")
        } else {
            self.root.join(format!("boot/vmlinuz-{}", self.kver))
        }
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

fn cache() -> PathBuf {
    std::env::var_os("OUTPOST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("build/cache"))
}

fn cache_debs() -> PathBuf {
    cache().join("debs")
}

/// The cached .deb of `name` `version` (arm64 or all).
fn deb(name: &str, version: &str) -> PathBuf {
    let v = version.replace(':', "%3a");
    let arm64 = cache_debs().join(format!("{name}_{v}_arm64.deb"));
    if arm64.is_file() {
        arm64
    } else {
        cache_debs().join(format!("{name}_{v}_all.deb"))
    }
}

/// "pkg (= ver)" dependencies of a .deb whose names start with one of `prefixes`.
fn exact_depends(deb: &Path, prefixes: &[&str]) -> Vec<(String, String)> {
    let depends = ok(Command::new("dpkg-deb").arg("-f").arg(deb).arg("Depends"));
    depends
        .split(',')
        .map(str::trim)
        .filter(|d| prefixes.iter().any(|p| d.starts_with(p)))
        .filter_map(|d| d.split_once(" (= "))
        .map(|(p, v)| (p.to_string(), v.trim_end_matches(')').to_string()))
        .collect()
}

/// The board's kernel package spec, as scripts/build-image picks it.
fn kernel_spec(board: &str) -> String {
    let spec = board_var(board, "KERNEL_PACKAGE");
    if !spec.is_empty() {
        return spec;
    }
    std::fs::read_to_string(repo_root().join("image/boot-packages.txt"))
        .unwrap()
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .find(|l| l.starts_with("linux-image-"))
        .expect("a kernel in image/boot-packages.txt")
        .to_string()
}

/// `spec` (name/suite) to "name version", with the build's apt configuration.
fn apt_resolve(spec: &str) -> Option<(String, String)> {
    let conf = cache().join("apt/apt.conf");
    if !conf.is_file() {
        return None;
    }
    let root = repo_root();
    let out = run(Command::new("bash").arg("-c").arg(format!(
        "set -euo pipefail; ROOT={}; source $ROOT/image/lib/common.sh; source $ROOT/image/lib/apt.sh; \
         export APT_CONFIG={}; apt_resolve_one {spec}",
        root.display(),
        conf.display()
    )));
    let line = String::from_utf8_lossy(&out.stdout);
    let mut f = line.split_whitespace();
    match (out.status.success(), f.next(), f.next()) {
        (true, Some(n), Some(v)) => Some((n.to_string(), v.to_string())),
        _ => None,
    }
}

/// The kernel `board`'s build uses, unpacked and depmod'ed once under build/test-kernels
/// (shared by the tests of this file; a rename makes it atomic).
fn kernel(board: &str) -> Kernel {
    let spec = kernel_spec(board);
    let resolved = apt_resolve(&spec).filter(|(n, v)| deb(n, v).is_file());
    let (meta_name, meta_ver) = match resolved {
        Some(r) => r,
        None => {
            // A fresh machine: the image build sets up apt and fills the package cache
            // (the other system tests build these images anyway).
            let (b, v) = if board == "rpi5" {
                ("rpi5", "production")
            } else {
                ("qemu-arm64", "test")
            };
            outpost_system_tests::build_image(b, v)
                .expect("the image builds (and fills the package cache)");
            apt_resolve(&spec)
                .unwrap_or_else(|| panic!("{spec} does not resolve with {}", cache().display()))
        }
    };
    let meta = deb(&meta_name, &meta_ver);
    assert!(meta.is_file(), "{} is missing", meta.display());
    // "linux-image-6.12.117+deb13-arm64 (= 6.12.117-1)"
    let (pkg, ver) = exact_depends(&meta, &["linux-image-"])
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{}: no linux-image dependency", meta.display()));
    let kver = pkg.trim_start_matches("linux-image-").to_string();
    let image = deb(&pkg, &ver);
    assert!(image.is_file(), "{} is missing", image.display());
    // 7.x: linux-image-<v> is a metapackage for these
    let mut debs = vec![image.clone()];
    for (p, v) in exact_depends(&image, &["linux-base-", "linux-binary-", "linux-modules-"]) {
        let d = deb(&p, &v);
        assert!(d.is_file(), "{} is missing", d.display());
        debs.push(d);
    }

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
        for d in &debs {
            ok(Command::new("dpkg-deb").arg("-x").arg(d).arg(tmp.path()));
        }
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

/// The module names `board`'s initramfs ships: image/initramfs/modules.txt plus the
/// board's INITRAMFS_MODULES, as scripts/build-image puts them together.
fn initramfs_modules(board: &str) -> Vec<String> {
    let list = std::fs::read_to_string(repo_root().join("image/initramfs/modules.txt")).unwrap();
    let mut names: Vec<String> = list
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    names.extend(
        board_var(board, "INITRAMFS_MODULES")
            .split_whitespace()
            .map(str::to_string),
    );
    names
}

fn rpi4_initramfs_modules() -> Vec<String> {
    initramfs_modules("rpi4")
}

fn check_dtb(k: &Kernel, board: &str, dtb: &str, modules: &[String]) -> Output {
    let dtbs = board_var(board, "DTBS");
    assert_eq!(dtbs.trim(), dtb);
    let mut cmd = Command::new("python3");
    cmd.arg(repo_root().join("image/lib/modules.py"))
        .arg("check-dtb")
        .arg("--dtb")
        .arg(k.dtb(dtb))
        .arg("--moddir")
        .arg(k.moddir())
        .arg("--kernel")
        .arg(k.vmlinuz());
    let nodes = board_var(board, "DRIVER_CHECK_NODES");
    assert!(
        !nodes.trim().is_empty(),
        "{board} board.conf names no DRIVER_CHECK_NODES"
    );
    for n in nodes.split_whitespace() {
        cmd.arg("--node").arg(n);
    }
    cmd.args(modules);
    run(&mut cmd)
}

const RPI4_DTB: &str = "broadcom/bcm2711-rpi-4-b.dtb";
const RPI5_DTB: &str = "broadcom/bcm2712-rpi-5-b.dtb";

/// The number of device nodes the check says it walked.
fn nodes_walked(stdout: &str) -> usize {
    stdout
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Takes each module out of `board`'s set in turn: the check must fail naming the
/// node whose driver it is.
fn check_fails_without(k: &Kernel, board: &str, dtb: &str, cases: &[(&str, &str)]) {
    let all = initramfs_modules(board);
    for (gone, node) in cases {
        let fewer: Vec<String> = all.iter().filter(|m| m != gone).cloned().collect();
        assert_eq!(fewer.len() + 1, all.len(), "{gone} not in the {board} list");
        let out = check_dtb(k, board, dtb, &fewer);
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

#[test]
fn rpi4_driver_check_passes_on_the_image_module_set() {
    let k = kernel("rpi4");
    let out = check_dtb(&k, "rpi4", RPI4_DTB, &rpi4_initramfs_modules());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    // it really walked the chains: the SD host, its two regulators, the firmware GPIO
    // expander behind them, GENET
    assert!(
        nodes_walked(&stdout) >= 10,
        "too few nodes walked: {stdout}"
    );
}

#[test]
fn rpi4_driver_check_fails_naming_a_removed_supplier_module() {
    let k = kernel("rpi4");
    // (module taken out, node whose driver it is)
    check_fails_without(
        &k,
        "rpi4",
        RPI4_DTB,
        &[
            ("fixed", "/regulator-sd-vcc"),
            ("gpio-regulator", "/regulator-sd-io-1v8"),
            ("sdhci-iproc", "/emmc2bus/mmc@7e340000"),
            ("mdio-bcm-unimac", "/scb/ethernet@7d580000/mdio@e14"),
        ],
    );
}

/// The Pi 5 on sid's 7.x kernel: its own packaging (DTBs and the Image under
/// /usr/lib/modules/<v>/), the SD host and RP1's Ethernet with their suppliers.
#[test]
fn rpi5_driver_check_passes_on_the_7x_kernel_and_fails_without_a_supplier() {
    let k = kernel("rpi5");
    assert!(
        k.kver.starts_with("7."),
        "the rpi5 kernel is {}, not 7.x",
        k.kver
    );
    assert!(
        k.usr_lib_modules(),
        "7.x keeps the Image in /usr/lib/modules"
    );
    let out = check_dtb(&k, "rpi5", RPI5_DTB, &initramfs_modules("rpi5"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        nodes_walked(&stdout) >= 15,
        "too few nodes walked: {stdout}"
    );
    check_fails_without(
        &k,
        "rpi5",
        RPI5_DTB,
        &[
            ("sdhci-brcmstb", "/soc@107c000000/mmc@fff000"),
            ("gpio-regulator", "/sd-io-1v8-reg"),
            (
                "pinctrl-brcmstb-bcm2712",
                "/soc@107c000000/pinctrl@7d504100",
            ),
            ("clk-rp1", "/clocks@40018000"),
            ("macb", "/ethernet@40100000"),
        ],
    );
}

/// Builds the initramfs module tree with the pipeline's own function, then asks the
/// initramfs' busybox modprobe (arm64, under qemu-user in a chroot) what it would
/// load for the Pi 4's device modaliases.
#[test]
fn rpi4_initramfs_modprobe_resolves_devices_by_modalias() {
    let k = kernel("rpi4");
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
