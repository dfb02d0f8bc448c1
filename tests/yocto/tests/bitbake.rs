//! BitBake itself checks the layer, with the pinned bitbake, openembedded-core,
//! meta-openembedded and meta-raspberrypi (`../shared/yocto-ref` beside the
//! repository, or `$OUTPOST_YOCTO_REF`), for each machine, sharing one TMPDIR:
//! - `bitbake -p`: no error at all, no warning about this layer;
//! - `bitbake -g outpost-image outpost-bundle`: the whole graph resolves and holds
//!   every recipe the image needs, at the versions the layer pins;
//! - `bitbake -e outpostd`: the aarch64 target triple.
//!
//! To keep the parse short on a 2-core machine, the test's local.conf masks recipes of
//! the pinned trees that the image's graph does not use (tests/yocto/parse-allowlist.txt);
//! the layer itself is parsed whole. A recipe missing from the list makes the graph
//! fail with "Nothing PROVIDES", never pass silently.

use std::fs;
use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use outpost_yocto_tests::{
    bblayers_conf, bbmask_except, concerns_layer, env_var, layer_dir, layer_recipes, layers,
    local_conf, messages, parse_allowlist, recipe_names, repo_root, running_as_root, yocto_ref,
    BitBake, Run, MACHINES, REF_ENV, RUN_AS_GID, RUN_AS_UID,
};

/// Recipes the image's graph must contain on every machine.
const NEEDED: &[&str] = &[
    "outpostd",
    "outpostctl-native",
    "outpost-base",
    "outpost-boot-script",
    "outpost-initramfs",
    "outpost-initramfs-init",
    "gvm-libs",
    "openvas-scanner",
    "ospd-openvas",
    "notus-scanner",
    "python3-redis",
    "python3-gnupg",
    "redis",
    "mosquitto",
    "busybox",
    "busybox-inittab",
    "u-boot",
    "rust-native",
    "cargo-native",
];

/// The layer's versions that must win over meta-python's.
const PINNED: &[(&str, &str)] = &[
    ("python3-redis", "python3-redis_6.4.0.bb"),
    ("python3-gnupg", "python3-gnupg_0.5.6.bb"),
];

fn sh(cmd: &mut Command) -> bool {
    cmd.status().map(|s| s.success()).unwrap_or(false)
}

/// Whether `nobody` can read what BitBake needs in place.
fn readable_by_run_user(paths: &[PathBuf]) -> bool {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={RUN_AS_UID}"))
        .arg(format!("--regid={RUN_AS_GID}"))
        .args(["--clear-groups", "--", "sh", "-c"])
        .arg("for p; do [ -r \"$p\" ] || exit 1; done")
        .arg("sh")
        .args(paths);
    sh(&mut c)
}

/// Copies `src` (a file or tree) to `dst`, keeping the relative layout.
fn copy_tree(src: &Path, dst: &Path) {
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent).expect("staging dir");
    }
    assert!(
        sh(Command::new("cp").arg("-a").arg(src).arg(dst)),
        "copying {} to {}",
        src.display(),
        dst.display()
    );
}

fn check_run(what: &str, machine: &str, run: &Run, layer: &Path, recipes: &[String]) {
    let m = messages(&run.output);
    let ours: Vec<&String> = m
        .warnings
        .iter()
        .filter(|w| concerns_layer(w, layer, recipes))
        .collect();
    assert!(
        run.success && m.errors.is_empty() && ours.is_empty(),
        "{what} for {machine} failed (exit ok: {}); errors: {:#?}; warnings about meta-outpost: {:#?}\n--- output tail ---\n{}",
        run.success,
        m.errors,
        ours,
        tail(&run.output, 60)
    );
    if !m.warnings.is_empty() {
        eprintln!(
            "{what} {machine}: warnings from other layers: {:#?}",
            m.warnings
        );
    }
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[test]
fn bitbake_parses_and_resolves_the_layer_for_every_machine() {
    let started = Instant::now();
    let reference = yocto_ref();
    assert!(
        reference.join("bitbake/bin/bitbake").is_file(),
        "pinned Yocto trees not found at {} (set {REF_ENV})",
        reference.display()
    );
    let root = repo_root().canonicalize().expect("repo root");
    let reference = reference.canonicalize().expect("yocto-ref");
    let as_root = running_as_root();

    let work = tempfile::Builder::new()
        .prefix("outpost-yocto-")
        .tempdir()
        .expect("temp dir");
    let w = work.path().to_path_buf();

    // BitBake refuses root: it runs as nobody, which must read the trees; where it
    // cannot (e.g. a checkout under /root), it parses copies.
    let (root, reference) = if !as_root
        || readable_by_run_user(&[
            root.join("yocto/meta-outpost/conf/layer.conf"),
            root.join("board/common/boot.cmd"),
            reference.join("bitbake/bin/bitbake"),
            reference.join("openembedded-core/meta/conf/bitbake.conf"),
        ]) {
        (root, reference)
    } else {
        let repo = w.join("repo");
        for p in [
            "yocto",
            "board",
            "image",
            "src",
            "tests",
            "Cargo.toml",
            "Cargo.lock",
        ] {
            copy_tree(&root.join(p), &repo.join(p));
        }
        copy_tree(&reference, &w.join("yocto-ref"));
        (repo, w.join("yocto-ref"))
    };
    let layer = root.join("yocto/meta-outpost");
    assert_eq!(
        layer.join("conf/layer.conf").is_file(),
        layer_dir().join("conf/layer.conf").is_file()
    );
    let recipes = layer_recipes(&layer).expect("listing the layer's recipes");

    let build = w.join("build");
    fs::create_dir_all(build.join("conf")).expect("build/conf");
    fs::write(
        build.join("conf/bblayers.conf"),
        bblayers_conf(&layers(&reference, &layer)),
    )
    .expect("bblayers.conf");
    let allow = fs::read_to_string(repo_root().join("tests/yocto/parse-allowlist.txt"))
        .expect("tests/yocto/parse-allowlist.txt");
    // oe-core and meta-openembedded are masked down to the list; meta-raspberrypi is
    // small: all its recipes are kept, only its appends to masked recipes go.
    let keep = parse_allowlist(&allow);
    let known = recipe_names(&reference, false).expect("listing the pinned recipes");
    let stale: Vec<&String> = keep.iter().filter(|k| !known.contains(k)).collect();
    assert!(
        stale.is_empty(),
        "parse-allowlist.txt names no recipe: {stale:?}"
    );
    let mut keep_rpi = keep.clone();
    keep_rpi.extend(
        recipe_names(&reference.join("meta-raspberrypi"), false).expect("meta-raspberrypi"),
    );
    let mask = format!(
        "{} {} {}",
        bbmask_except(&reference.join("openembedded-core"), &keep),
        bbmask_except(&reference.join("meta-openembedded"), &keep),
        bbmask_except(&reference.join("meta-raspberrypi"), &keep_rpi)
    );
    if as_root {
        assert!(
            sh(Command::new("chown")
                .arg("-R")
                .arg(format!("{RUN_AS_UID}:{RUN_AS_GID}"))
                .arg(&w)),
            "chown of the work dir"
        );
        chown(&w, Some(RUN_AS_UID), Some(RUN_AS_GID)).expect("chown work dir");
    }
    let bb = BitBake {
        bitbake: reference.join("bitbake/bin/bitbake"),
        build_dir: build.clone(),
        home: w.clone(),
        as_root,
    };

    let mut times: Vec<(String, Duration)> = Vec::new();
    for machine in MACHINES {
        let conf = build.join("conf/local.conf");
        fs::write(&conf, local_conf(machine, &w, Some(&mask))).expect("local.conf");
        if as_root {
            chown(&conf, Some(RUN_AS_UID), Some(RUN_AS_GID)).expect("chown local.conf");
        }

        let parse = bb.run(&["-p"]).expect("running bitbake -p");
        times.push((format!("{machine} bitbake -p"), parse.took));
        check_run("bitbake -p", machine, &parse, &layer, &recipes);
        assert!(
            parse.output.contains(" 0 errors"),
            "bitbake -p {machine}: no parse summary:\n{}",
            tail(&parse.output, 30)
        );

        let graph = bb
            .run(&["-g", "outpost-image", "outpost-bundle"])
            .expect("running bitbake -g");
        times.push((format!("{machine} bitbake -g"), graph.took));
        check_run("bitbake -g", machine, &graph, &layer, &recipes);
        let buildlist = fs::read_to_string(build.join("pn-buildlist")).expect("pn-buildlist");
        let pns: Vec<&str> = buildlist.lines().map(str::trim).collect();
        for need in NEEDED {
            assert!(
                pns.contains(need),
                "{machine}: {need} missing from the graph"
            );
        }
        let kernel = if machine == "qemuarm64" {
            "linux-yocto"
        } else {
            "linux-raspberrypi"
        };
        assert!(
            pns.contains(&kernel),
            "{machine}: kernel {kernel} missing from the graph"
        );
        if machine != "qemuarm64" {
            assert!(
                pns.contains(&"rpi-bootfiles"),
                "{machine}: rpi-bootfiles missing"
            );
            assert!(
                !pns.contains(&"rpi-u-boot-scr"),
                "{machine}: meta-raspberrypi's boot script must give way to outpost-boot-script"
            );
        }
        let tasks = fs::read_to_string(build.join("task-depends.dot")).expect("task-depends.dot");
        for (pn, file) in PINNED {
            assert!(
                tasks.contains(&format!("{}/", layer.display())) && tasks.contains(file),
                "{machine}: {pn} is not the layer's {file}"
            );
        }

        let env = bb.run(&["-e", "outpostd"]).expect("running bitbake -e");
        times.push((format!("{machine} bitbake -e outpostd"), env.took));
        check_run("bitbake -e outpostd", machine, &env, &layer, &recipes);
        assert_eq!(
            env_var(&env.output, "TARGET_SYS").as_deref(),
            Some("aarch64-outpost-linux"),
            "{machine}: TARGET_SYS"
        );
        assert_eq!(
            env_var(&env.output, "RUST_HOST_SYS").as_deref(),
            Some("aarch64-outpost-linux-gnu"),
            "{machine}: the triple cargo builds outpostd for"
        );
        let src = env_var(&env.output, "OUTPOST_SRC_DIR").expect("OUTPOST_SRC_DIR");
        assert!(
            Path::new(&src).join("Cargo.lock").is_file(),
            "{machine}: OUTPOST_SRC_DIR {src} is not the workspace"
        );
    }
    let total = started.elapsed();
    for (what, took) in &times {
        eprintln!("yocto check: {what}: {:.1} s", took.as_secs_f64());
    }
    eprintln!("yocto check: total {:.1} s", total.as_secs_f64());
}
