//! `outpost-portal feed keygen/import/list`, run as processes on a portal data directory
//! as an operator would, with a synthetic feed signed by a throwaway GnuPG key.

use std::path::Path;
use std::process::{Command, Output};

use outpost_feedgen::gpg::GpgSigner;
use outpost_feedgen::{advance, generate, FeedSpec};

/// `outpost-portal feed --data-dir DIR [--json] ARGS...`; `args` name the command as an
/// operator reads it (`["feed", "import", ...]`, `--json` anywhere).
fn portal_feed(portal_dir: &Path, args: &[&str]) -> Output {
    let json = args.contains(&"--json");
    let rest: Vec<&str> = args
        .iter()
        .copied()
        .filter(|a| *a != "--json")
        .skip_while(|a| *a == "feed")
        .collect();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost-portal"));
    cmd.arg("feed").arg("--data-dir").arg(portal_dir);
    if json {
        cmd.arg("--json");
    }
    cmd.args(rest)
        .env_remove("OUTPOST_DATABASE")
        .env_remove("OUTPOST_PORTAL_DIR")
        .output()
        .expect("running outpost-portal feed")
}

fn ok(portal_dir: &Path, args: &[&str]) -> String {
    let out = portal_feed(portal_dir, args);
    assert!(
        out.status.success(),
        "outpost-portal {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn keygen_import_refuse_and_list() {
    let t = tempfile::tempdir().expect("tempdir");
    let portal = t.path().join("portal");
    std::fs::create_dir_all(&portal).expect("portal dir");
    let signer = GpgSigner::create(&t.path().join("gnupg"), "Feed Test <feed@test.invalid>")
        .expect("gpg key");
    std::fs::write(
        portal.join("feed-keyring.gpg"),
        signer.export_public().expect("export"),
    )
    .expect("keyring");

    let out = ok(&portal, &["feed", "keygen", "--comment", "test portal"]);
    assert!(out.contains("feed-signing.key"), "{out}");
    assert!(portal.join("feed-signing.key.pub").exists());

    let spec = FeedSpec::new(5, 120).expect("spec");
    let tree = t.path().join("feed");
    let s0 = generate(&tree, &spec, 0, Some(&signer)).expect("generate");
    let out = ok(
        &portal,
        &["--json", "feed", "import", tree.to_str().expect("utf-8")],
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["created"], true);
    assert_eq!(v["plugin_set"], "202509150400");
    assert_eq!(v["vt_count"], s0.vt_count);

    // A file added to the mirror: refused, naming it, and nothing published.
    std::fs::write(tree.join("nvt/gb_extra.nasl"), "exit(0);\n").expect("write");
    let out = portal_feed(&portal, &["feed", "import", tree.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nvt/gb_extra.nasl is not listed in any signed sha256sums"),
        "{err}"
    );
    std::fs::remove_file(tree.join("nvt/gb_extra.nasl")).expect("rm");

    advance(&tree, &spec, 0, Some(&signer)).expect("advance");
    let out = ok(
        &portal,
        &[
            "feed",
            "import",
            "--keep",
            "1",
            tree.to_str().expect("utf-8"),
        ],
    );
    assert!(out.contains("PLUGIN_SET 202509160400"), "{out}");
    assert!(out.contains("dropped release(s) 1"), "{out}");

    let list = ok(&portal, &["feed", "list"]);
    assert!(list.contains("202509160400"), "{list}");
    assert!(!list.contains("202509150400"), "{list}");
}
