//! BitBake itself checks the layer, with the pinned bitbake, openembedded-core,
//! meta-openembedded and meta-raspberrypi (`../shared/yocto-ref` beside the
//! repository, or `$OUTPOST_YOCTO_REF`), for each machine, sharing one TMPDIR:
//! - `bitbake -p`: no error at all, no warning about this layer;
//! - `bitbake -g outpost-image outpost-bundle`: the whole graph resolves and holds
//!   every recipe the image needs, at the versions the layer pins;
//! - `bitbake -e outpostd`: the aarch64 target triple;
//! - the feed keys: without `OUTPOST_FEED_KEY` the parse stays clean and the image
//!   refuses to resolve, naming the variable; with the variables set (a feed key made
//!   here, an operator key, the lab key) `outpost-feed-keys` is in the image and builds
//!   its GnuPG home from exactly those files (`bitbake -e`).
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

use outpost_bundle::keys::SecretKey;
use outpost_yocto_tests::{
    bblayers_conf, bbmask_except, concerns_layer, env_function, env_var, feed_keys_conf, layer_dir,
    layer_recipes, layers, local_conf, messages, parse_allowlist, recipe_names, repo_root,
    running_as_root, yocto_ref, BitBake, Run, MACHINES, REF_ENV, RUN_AS_GID, RUN_AS_UID,
};

/// Recipes the image's graph must contain on every machine.
const NEEDED: &[&str] = &[
    "outpostd",
    "outpostctl-native",
    "outpost-feed-keys",
    "gnupg-native",
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

/// How much of the run was parsing: BitBake's "N cached, M parsed" when it parsed.
fn parse_note(run: &Run) -> String {
    run.output
        .lines()
        .find(|l| l.starts_with("Parsing of "))
        .and_then(|l| Some(l[l.find('(')?..=l.find(')')?].to_string()))
        .map(|n| format!(" {n}"))
        .unwrap_or_default()
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `bitbake -e` of the image and of `outpost-feed-keys` with the feed key variables set:
/// the package is installed, and its tasks use exactly the configured files.
fn check_feed_keys_wiring(
    bb: &BitBake,
    machine: &str,
    layer: &Path,
    recipes: &[String],
    feed_pub: &Path,
    operator_key: &Path,
    times: &mut Vec<(String, Duration)>,
) {
    let image = bb
        .run(&["-e", "outpost-image"])
        .expect("running bitbake -e");
    times.push((
        format!("{machine} bitbake -e outpost-image") + &parse_note(&image),
        image.took,
    ));
    check_run("bitbake -e outpost-image", machine, &image, layer, recipes);
    let install = env_var(&image.output, "IMAGE_INSTALL").expect("IMAGE_INSTALL");
    assert!(
        install.split_whitespace().any(|p| p == "outpost-feed-keys"),
        "{machine}: outpost-feed-keys not in IMAGE_INSTALL: {install}"
    );

    let env = bb
        .run(&["-e", "outpost-feed-keys"])
        .expect("running bitbake -e");
    times.push((
        format!("{machine} bitbake -e outpost-feed-keys") + &parse_note(&env),
        env.took,
    ));
    check_run(
        "bitbake -e outpost-feed-keys",
        machine,
        &env,
        layer,
        recipes,
    );
    let get = |name: &str| env_var(&env.output, name).unwrap_or_else(|| panic!("{name} unset"));
    let uris = get("SRC_URI");
    let uris: Vec<&str> = uris.split_whitespace().collect();
    for want in [
        format!("file://{}", feed_pub.display()),
        format!("file://{}", operator_key.display()),
        "file://lab-feed-key.asc".to_string(),
        "file://openvas-gnupg-home".to_string(),
        "file://check-feed-key".to_string(),
    ] {
        assert!(
            uris.contains(&want.as_str()),
            "{machine}: SRC_URI lacks {want}: {uris:?}"
        );
    }
    // The lab key is the repository's own file.
    let lab = PathBuf::from(get("OUTPOST_SRC_DIR")).join("image/lab-keys/lab-feed-key.asc");
    assert!(
        get("FILESPATH")
            .split(':')
            .any(|d| Path::new(d).join("lab-feed-key.asc") == lab),
        "{machine}: FILESPATH does not reach {}",
        lab.display()
    );
    assert_eq!(
        get("RDEPENDS:outpost-feed-keys").trim(),
        "ospd-openvas",
        "{machine}: the home's owner _gvm comes with ospd-openvas"
    );
    let s = get("S");
    // Compared with continued lines joined and runs of blanks as one space.
    let compile = env_function(&env.output, "do_compile")
        .expect("do_compile")
        .replace("\\\n", " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let fpr = get("OUTPOST_GREENBONE_KEY_FPR");
    assert_eq!(fpr, "8AE4BE429B60A59B311C2E739823FAA60ED1E580");
    for want in [
        format!("{s}/check-feed-key {s}{}", feed_pub.display()),
        format!("{s}/openvas-gnupg-home --out {}/gnupg --pinned ", get("B")),
        format!(
            "--pinned {fpr} {}/openvas/GBCommunitySigningKey.asc {s}{} {s}/lab-feed-key.asc",
            get("STAGING_DATADIR"),
            operator_key.display()
        ),
    ] {
        assert!(
            compile.contains(&want),
            "{machine}: do_compile lacks {want}:\n{compile}"
        );
    }
    let install = env_function(&env.output, "do_install").expect("do_install");
    assert!(
        install.contains(&format!("{s}{} ", feed_pub.display()))
            && install.contains("/usr/share/outpost/feed-keys.pub")
            && install.contains("chown -R _gvm:_gvm ")
            && install.contains("install -d -m 0700 "),
        "{machine}: do_install does not install the keys as the Debian image has them:\n{install}"
    );
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
    // The operator's keys: a feed key made here, in the portal's format, and an
    // OpenPGP key file (the lab key's public half stands in for an operator's).
    let keys = w.join("keys");
    fs::create_dir_all(&keys).expect("keys dir");
    let feed_pub = SecretKey::generate()
        .expect("feed key")
        .write_new(&keys.join("outpost-feed.key"), "yocto test feed key")
        .expect("writing the feed key");
    let operator_key = keys.join("operator.asc");
    fs::copy(
        repo_root().join("image/lab-keys/lab-feed-key.asc"),
        &operator_key,
    )
    .expect("operator key");
    let feed_conf = feed_keys_conf(&feed_pub, std::slice::from_ref(&operator_key), true);

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
    let write_conf = |text: String| {
        let conf = build.join("conf/local.conf");
        fs::write(&conf, text).expect("local.conf");
        if as_root {
            chown(&conf, Some(RUN_AS_UID), Some(RUN_AS_GID)).expect("chown local.conf");
        }
    };
    for machine in MACHINES {
        if machine == MACHINES[0] {
            // Without the feed key: a clean parse, and an image that does not resolve,
            // naming the variable.
            write_conf(local_conf(machine, &w, Some(&mask)));
            let parse = bb.run(&["-p"]).expect("running bitbake -p");
            times.push((
                format!("{machine} bitbake -p, no feed key") + &parse_note(&parse),
                parse.took,
            ));
            check_run(
                "bitbake -p without OUTPOST_FEED_KEY",
                machine,
                &parse,
                &layer,
                &recipes,
            );
            let graph = bb
                .run(&["-g", "outpost-image"])
                .expect("running bitbake -g");
            times.push((
                format!("{machine} bitbake -g, no feed key") + &parse_note(&graph),
                graph.took,
            ));
            assert!(
                !graph.success
                    && graph.output.contains(
                        "outpost-feed-keys was skipped: OUTPOST_FEED_KEY is not set"
                    ),
                "{machine}: without OUTPOST_FEED_KEY the image must not resolve, naming the variable:\n{}",
                tail(&graph.output, 30)
            );
        }
        write_conf(format!(
            "{}{feed_conf}",
            local_conf(machine, &w, Some(&mask))
        ));

        let parse = bb.run(&["-p"]).expect("running bitbake -p");
        times.push((
            format!("{machine} bitbake -p") + &parse_note(&parse),
            parse.took,
        ));
        check_run("bitbake -p", machine, &parse, &layer, &recipes);
        assert!(
            parse.output.contains(" 0 errors"),
            "bitbake -p {machine}: no parse summary:\n{}",
            tail(&parse.output, 30)
        );

        let graph = bb
            .run(&["-g", "outpost-image", "outpost-bundle"])
            .expect("running bitbake -g");
        times.push((
            format!("{machine} bitbake -g") + &parse_note(&graph),
            graph.took,
        ));
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
        times.push((
            format!("{machine} bitbake -e outpostd") + &parse_note(&env),
            env.took,
        ));
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

        // The keys' package is built with gnupg-native, from openvas-scanner's copy of
        // Greenbone's key, owned by ospd-openvas' _gvm, and goes into the image.
        for edge in [
            "\"outpost-feed-keys.do_prepare_recipe_sysroot\" -> \"gnupg-native.do_populate_sysroot\"",
            "\"outpost-feed-keys.do_prepare_recipe_sysroot\" -> \"openvas-scanner.do_populate_sysroot\"",
            "\"outpost-feed-keys.do_prepare_recipe_sysroot\" -> \"ospd-openvas.do_populate_sysroot\"",
            "\"outpost-image.do_rootfs\" -> \"outpost-feed-keys.do_package_write_",
        ] {
            assert!(tasks.contains(edge), "{machine}: no {edge} in the task graph");
        }
        if machine == MACHINES[0] {
            check_feed_keys_wiring(
                &bb,
                machine,
                &layer,
                &recipes,
                &feed_pub,
                &operator_key,
                &mut times,
            );
        }
    }
    let total = started.elapsed();
    for (what, took) in &times {
        eprintln!("yocto check: {what}: {:.1} s", took.as_secs_f64());
    }
    eprintln!("yocto check: total {:.1} s", total.as_secs_f64());
}
