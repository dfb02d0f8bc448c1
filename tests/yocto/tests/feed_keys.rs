//! The feed key recipe's scripts (outpost-feed-keys/files), run on the host as the
//! recipe runs them at build time (there with gnupg-native, here with the host's gpg):
//! - `openvas-gnupg-home` builds /etc/openvas/gnupg from Greenbone's real key (pinned
//!   to the recipe's fingerprint) and the lab key: both ultimately trusted, gpg.conf
//!   verify-only, no agent socket, lock or random_seed left, the same bytes on a second
//!   build a second later, and a demo feed signature verifies with full trust; a wrong
//!   pin or a secret key fails and leaves nothing;
//! - `check-feed-key` accepts a `.pub` made by the portal's key code and refuses the
//!   secret key and other files.
//!
//! tests/yocto/fixtures/GBCommunitySigningKey.asc is Greenbone's key as the recipe gets
//! it: `rust/examples/GBCommunitySigningKey.asc` of openvas-scanner at the recipe's
//! SRCREV (v23.45.1), which openvas-scanner_23.45.1.bb installs.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use outpost_bundle::keys::SecretKey;
use outpost_yocto_tests::{layer_dir, repo_root};

const LAB_FPR: &str = "EB25B448D7E5496DFCE59C17214C0A78D207CC3B";

/// Where each script lives: the OpenPGP home's is shared with the Debian image build.
fn script_path(name: &str) -> PathBuf {
    match name {
        "openvas-gnupg-home" => repo_root().join("image/lib").join(name),
        _ => layer_dir()
            .join("recipes-outpost/outpost-feed-keys/files")
            .join(name),
    }
}

fn greenbone_key() -> PathBuf {
    repo_root().join("tests/yocto/fixtures/GBCommunitySigningKey.asc")
}

fn lab_key() -> PathBuf {
    repo_root().join("image/lab-keys/lab-feed-key.asc")
}

/// The fingerprint the recipe pins Greenbone's key to.
fn pinned_fpr() -> String {
    let recipe = fs::read_to_string(
        layer_dir().join("recipes-outpost/outpost-feed-keys/outpost-feed-keys_0.1.0.bb"),
    )
    .expect("the recipe");
    recipe
        .lines()
        .find_map(|l| l.strip_prefix("OUTPOST_GREENBONE_KEY_FPR = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("OUTPOST_GREENBONE_KEY_FPR in the recipe")
        .to_string()
}

/// Runs a script of the recipe with `sh`, as do_compile does, temporary files in `tmp`.
fn script(name: &str, args: &[&Path], tmp: &Path) -> Output {
    let mut cmd = Command::new("sh");
    cmd.arg(script_path(name))
        .args(args)
        .env("TMPDIR", tmp)
        .env("LC_ALL", "C");
    cmd.output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"))
}

fn gnupg_home(out: &Path, pinned: &str, keys: &[&Path], tmp: &Path) -> Output {
    let mut args: Vec<&Path> = vec![
        Path::new("--out"),
        out,
        Path::new("--pinned"),
        Path::new(pinned),
    ];
    args.extend_from_slice(keys);
    script("openvas-gnupg-home", &args, tmp)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `gpg` in `home`, which must exist, without starting an agent.
fn gpg(home: &Path, args: &[&str]) -> Output {
    Command::new("gpg")
        .arg("--homedir")
        .arg(home)
        .args(["--batch", "--no-autostart"])
        .args(args)
        .output()
        .expect("gpg (gnupg) is needed for this test")
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("reading the home")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn openvas_gnupg_home_trusts_greenbone_and_the_given_keys_reproducibly() {
    let fpr = pinned_fpr();
    let tmp = tempfile::tempdir().expect("temp dir");
    let t = tmp.path();
    let home = t.join("a/gnupg");
    fs::create_dir_all(t.join("a")).expect("dir");
    let out = gnupg_home(&home, &fpr, &[&greenbone_key(), &lab_key()], t);
    assert!(
        out.status.success(),
        "openvas-gnupg-home failed:\n{}",
        text(&out)
    );

    // Only the keybox, the trust database and gpg.conf: no agent socket, lock file,
    // random_seed or backup.
    assert_eq!(names(&home), ["gpg.conf", "pubring.kbx", "trustdb.gpg"]);
    let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&home), 0o700, "the home's mode");
    for f in names(&home) {
        assert_eq!(mode(&home.join(&f)), 0o600, "{f}'s mode");
    }
    let conf = fs::read_to_string(home.join("gpg.conf")).expect("gpg.conf");
    let options: Vec<&str> = conf
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        options,
        ["no-auto-check-trustdb", "lock-never"],
        "gpg.conf:\n{conf}"
    );
    // No agent was started for it (where its sockets would be, maybe outside the home).
    let dirs = Command::new("gpgconf")
        .arg("--homedir")
        .arg(&home)
        .args(["--list-dirs", "socketdir"])
        .output()
        .expect("gpgconf");
    let socketdir = PathBuf::from(String::from_utf8_lossy(&dirs.stdout).trim());
    for s in ["S.gpg-agent", "S.dirmngr", "S.keyboxd"] {
        assert!(
            !socketdir.join(s).exists(),
            "{s} in {}",
            socketdir.display()
        );
    }
    // The scratch home of the listings is gone too.
    let left: Vec<String> = names(t).into_iter().filter(|n| n != "a").collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");

    // The same inputs a second later give the same bytes (gpg's clock is set to the
    // newest key's time, and so are the keybox header's wall-clock times).
    std::thread::sleep(Duration::from_millis(1100));
    let again = t.join("b/gnupg");
    fs::create_dir_all(t.join("b")).expect("dir");
    let out = gnupg_home(&again, &fpr, &[&greenbone_key(), &lab_key()], t);
    assert!(out.status.success(), "second run failed:\n{}", text(&out));
    for f in names(&home) {
        assert!(
            fs::read(home.join(&f)).expect("read") == fs::read(again.join(&f)).expect("read"),
            "{f} differs between two builds"
        );
    }

    // Checks below use a copy, as the device would use the installed home.
    let copy = t.join("c");
    assert!(Command::new("cp")
        .arg("-a")
        .arg(&home)
        .arg(&copy)
        .status()
        .expect("cp")
        .success());
    let list = gpg(&copy, &["--with-colons", "--list-keys"]);
    let listing = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(list.status.success(), "gpg --list-keys:\n{}", text(&list));
    // "pub" records: field 2 validity, field 9 owner trust; the next "fpr" is the key's.
    let mut keys: Vec<(String, String, String)> = Vec::new();
    let mut pending: Option<(String, String)> = None;
    for l in listing.lines() {
        let f: Vec<&str> = l.split(':').collect();
        match f[0] {
            "pub" => pending = Some((f[1].to_string(), f[8].to_string())),
            "fpr" => {
                if let Some((validity, trust)) = pending.take() {
                    keys.push((f[9].to_string(), validity, trust));
                }
            }
            _ => pending = None,
        }
    }
    keys.sort();
    let mut want = vec![
        (fpr.clone(), "u".to_string(), "u".to_string()),
        (LAB_FPR.to_string(), "u".to_string(), "u".to_string()),
    ];
    want.sort();
    assert_eq!(
        keys, want,
        "keys (fingerprint, validity, owner trust):\n{listing}"
    );

    // What openvas needs: a fully valid signature on a feed's sha256sums.
    let feed = repo_root().join("image/feed-demo/plugins");
    let verify = Command::new("gpg")
        .arg("--homedir")
        .arg(&copy)
        .args(["--batch", "--no-autostart", "--status-fd", "1", "--verify"])
        .arg(feed.join("sha256sums.asc"))
        .arg(feed.join("sha256sums"))
        .output()
        .expect("gpg --verify");
    let status = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success()
            && status.contains(&format!("[GNUPG:] VALIDSIG {LAB_FPR}"))
            && status.contains("[GNUPG:] TRUST_ULTIMATE"),
        "the demo feed's signature does not verify with full trust:\n{}",
        text(&verify)
    );
    // Verifying wrote nothing: no trust database update, no lock.
    assert_eq!(names(&copy), ["gpg.conf", "pubring.kbx", "trustdb.gpg"]);
    assert!(
        fs::read(copy.join("trustdb.gpg")).expect("read")
            == fs::read(home.join("trustdb.gpg")).expect("read"),
        "verifying changed the trust database"
    );
}

#[test]
fn openvas_gnupg_home_refuses_a_wrong_pin_and_secret_keys() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let t = tmp.path();

    // Greenbone's file pinned to another key, as if upstream's file had changed.
    let home = t.join("gnupg");
    let out = gnupg_home(&home, LAB_FPR, &[&greenbone_key()], t);
    assert!(
        !out.status.success() && text(&out).contains("must hold exactly the key"),
        "a wrong pin must fail:\n{}",
        text(&out)
    );
    assert!(!home.exists(), "a failed run must leave no home");

    // The lab key's secret half (public on purpose, but never for an image).
    let secret = repo_root().join("image/lab-keys/lab-feed-key.secret.asc");
    let out = gnupg_home(&home, &pinned_fpr(), &[&greenbone_key(), &secret], t);
    assert!(
        !out.status.success() && text(&out).contains("holds a secret key"),
        "a secret key must be refused:\n{}",
        text(&out)
    );
    assert!(!home.exists(), "a failed run must leave no home");

    // Not a key at all, and a missing file.
    let out = gnupg_home(
        &home,
        &pinned_fpr(),
        &[&greenbone_key(), &repo_root().join("Cargo.toml")],
        t,
    );
    assert!(
        !out.status.success(),
        "Cargo.toml is no key:\n{}",
        text(&out)
    );
    let out = gnupg_home(&home, &pinned_fpr(), &[&t.join("nope.asc")], t);
    assert!(
        !out.status.success() && text(&out).contains("nope.asc is missing"),
        "a missing file must fail:\n{}",
        text(&out)
    );
    assert!(!home.exists());
}

#[test]
fn greenbone_fixture_is_the_pinned_key() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let key = greenbone_key();
    let show = gpg(
        tmp.path(),
        &["--with-colons", "--show-keys", key.to_str().expect("path")],
    );
    let listing = String::from_utf8_lossy(&show.stdout);
    let fprs: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.strip_prefix("fpr:::::::::"))
        .map(|r| r.trim_end_matches(':'))
        .collect();
    assert_eq!(fprs, [pinned_fpr()], "{listing}");
}

#[test]
fn check_feed_key_accepts_only_a_feed_key_pub() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let t = tmp.path();
    let secret = t.join("outpost-feed.key");
    let public = SecretKey::generate()
        .expect("key")
        .write_new(&secret, "test feed key")
        .expect("write");
    let ok = script("check-feed-key", &[&public], t);
    assert!(
        ok.status.success(),
        "a portal .pub is refused:\n{}",
        text(&ok)
    );

    let two = t.join("two.pub");
    let line = fs::read_to_string(&public).expect("read");
    let other = SecretKey::generate().expect("key").public_line("next key");
    fs::write(&two, format!("# rotation: old and new\n{line}\n{other}")).expect("write");
    let ok = script("check-feed-key", &[&two], t);
    assert!(ok.status.success(), "two keys are refused:\n{}", text(&ok));

    let bad = script("check-feed-key", &[&secret], t);
    assert!(
        !bad.status.success() && text(&bad).contains("secret feed key"),
        "the secret key must be refused:\n{}",
        text(&bad)
    );
    for (name, body) in [
        ("empty.pub", "# nothing\n\n"),
        ("short.pub", "outpost-ed25519 AAAA\n"),
        ("ssh.pub", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA x\n"),
    ] {
        let p = t.join(name);
        fs::write(&p, body).expect("write");
        let bad = script("check-feed-key", &[&p], t);
        assert!(!bad.status.success(), "{name} must be refused:\n{body}");
    }
    let bad = script("check-feed-key", &[&t.join("missing.pub")], t);
    assert!(!bad.status.success(), "a missing file must be refused");
}
