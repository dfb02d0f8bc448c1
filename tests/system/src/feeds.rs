//! Feed releases for the QEMU tests and benchmarks: synthetic feeds with the demo feed's
//! scripts, signed by the lab OpenPGP key (image/lab-keys/), published by a test portal
//! under the feed key the image trusts (build/keys/outpost-feed.key, made by
//! scripts/build-image).

use std::path::Path;
use std::process::Command;

use outpost_e2e_tests::Portal;
use outpost_feedgen::gpg::GpgSigner;

use crate::repo_root;

const LAB_KEY_UID: &str = "Outpost Lab Feed Key";

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The lab key's secret in a private GnuPG home (it is public on purpose:
/// image/lab-keys/README.md).
pub fn lab_signer(home: &Path) -> GpgSigner {
    std::fs::create_dir_all(home).unwrap();
    std::fs::set_permissions(home, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let key = repo_root().join("image/lab-keys/lab-feed-key.secret.asc");
    run(Command::new("gpg")
        .env("GNUPGHOME", home)
        .args(["--batch", "--quiet", "--import"])
        .arg(key));
    GpgSigner::open(home, LAB_KEY_UID).expect("the lab key is in the home")
}

/// Rewrites `nvt/sha256sums` for what is in `nvt/` now and signs it.
pub fn relist_nvt(tree: &Path, signer: &GpgSigner) {
    relist(tree, "nvt", signer);
}

/// Rewrites the `sha256sums` of one signed directory (`nvt`, `notus/advisories`, ...)
/// for what is in it now and signs it.
pub fn relist(tree: &Path, dir: &str, signer: &GpgSigner) {
    let dir = tree.join(dir);
    let sums = run(Command::new("bash").current_dir(&dir).args([
        "-c",
        "find . -type f ! -name 'sha256sums*' -printf '%P\\n' | LC_ALL=C sort | xargs sha256sum",
    ]));
    std::fs::write(dir.join("sha256sums"), sums).unwrap();
    signer
        .sign(&dir.join("sha256sums"), &dir.join("sha256sums.asc"))
        .unwrap_or_else(|e| panic!("signing {}/sha256sums: {e}", dir.display()));
}

/// Adds a Notus advisory with `oid` (a copy of the first one in the first family file,
/// renamed) unless that file has it already; the caller relists `notus/advisories`.
pub fn add_advisory(tree: &Path, oid: &str) {
    let dir = tree.join("notus/advisories");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "notus"))
        .collect();
    files.sort();
    let file = files.first().expect("an advisory file");
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(file).unwrap()).expect("advisory JSON");
    let list = v["advisories"].as_array_mut().expect("advisories");
    if list.iter().any(|a| a["oid"] == oid) {
        return;
    }
    let mut a = list.first().expect("one advisory").clone();
    a["oid"] = oid.into();
    a["title"] = "Outpost feed test: an advisory published alone".into();
    list.push(a);
    let mut text = serde_json::to_string_pretty(&v).unwrap();
    text.push('\n');
    std::fs::write(file, text).unwrap();
}

/// The demo feed's scripts (port scanner, banner and version checks) in the tree, so the
/// synced feed can scan the demo target.
pub fn add_demo_scripts(tree: &Path) {
    let demo = repo_root().join("image/feed-demo/plugins");
    for e in std::fs::read_dir(&demo).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("outpost_demo") {
            std::fs::copy(e.path(), tree.join("nvt").join(&name)).unwrap();
        }
    }
}

pub struct Published {
    /// The release's name on both sides: `<PLUGIN_SET>-<16 hex of the manifest digest>`.
    pub name: String,
    pub vt_count: u64,
}

/// Imports `tree` into the portal's data directory with the real command.
pub fn import(portal_dir: &Path, tree: &Path) -> Published {
    let out = run(Command::new(outpost_e2e_tests::bin("outpost-portal"))
        .arg("feed")
        .arg("--data-dir")
        .arg(portal_dir)
        .arg("--json")
        .arg("import")
        .arg(tree));
    let v: serde_json::Value = serde_json::from_str(&out).expect("import --json");
    let plugin_set = v["plugin_set"].as_str().expect("plugin_set");
    let digest = v["manifest_sha256"].as_str().expect("manifest_sha256");
    Published {
        name: format!("{plugin_set}-{}", &digest[..16]),
        vt_count: v["vt_count"].as_u64().expect("vt_count"),
    }
}

/// The portal's feed key is the one the image trusts (scripts/build-image made it), and
/// its OpenPGP keyring holds the lab key.
pub fn portal_feed_setup(portal: &Portal) {
    let key = repo_root().join("build/keys/outpost-feed.key");
    std::fs::copy(&key, portal.dir.path().join("feed-signing.key")).expect("the build's feed key");
    std::fs::copy(
        key.with_extension("key.pub"),
        portal.dir.path().join("feed-signing.key.pub"),
    )
    .expect("the build's feed key's .pub");
    std::fs::copy(
        repo_root().join("image/lab-keys/lab-feed-key.asc"),
        portal.dir.path().join("feed-keyring.gpg"),
    )
    .unwrap();
}
