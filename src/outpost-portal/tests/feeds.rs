//! Feed import (docs/feeds.md): a synthetic Greenbone-shaped tree signed with a throwaway
//! GnuPG key is checked against the operator's keyring with gpgv and published as a
//! content-addressed release signed by the feed key; broken trees are refused by name.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::{fresh_database, Backend};
use outpost_bundle::{SecretKey, TrustedKeys};
use outpost_feed::{verify_manifest, FeedManifest};
use outpost_feedgen::gpg::GpgSigner;
use outpost_feedgen::{advance, generate, FeedSpec, Summary};
use outpost_portal::feeds::blobs::BlobStore;
use outpost_portal::feeds::openpgp::SigError;
use outpost_portal::feeds::{
    import, release_manifest, ImportError, ImportOptions, ImportReport, TreeProblem,
};
use outpost_portal::store::{ChannelWrite, Store, SCOPE_SITE};

const SCRIPTS: u32 = 300;

struct Fixture {
    dir: tempfile::TempDir,
    data: PathBuf,
    store: Store,
    signer: GpgSigner,
    spec: FeedSpec,
    opts: ImportOptions,
}

impl Fixture {
    async fn new(backend: Backend) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("portal");
        std::fs::create_dir_all(&data).expect("data dir");
        let store = Store::open(&fresh_database(backend, &data).await)
            .await
            .expect("store");
        let signer = GpgSigner::create(
            &dir.path().join("gnupg-upstream"),
            "Outpost Test Feed Integrity Key <feed@test.invalid>",
        )
        .expect("gpg key");
        let opts = ImportOptions::in_data_dir(&data);
        std::fs::write(&opts.keyring, signer.export_public().expect("export")).expect("keyring");
        SecretKey::generate()
            .expect("key")
            .write_new(&opts.signing_key, "feed test")
            .expect("feed key");
        Fixture {
            spec: FeedSpec::new(11, SCRIPTS).expect("spec"),
            dir,
            data,
            store,
            signer,
            opts,
        }
    }

    fn tree(&self, name: &str, day: u32) -> (PathBuf, Summary) {
        let path = self.dir.path().join(name);
        let s = generate(&path, &self.spec, day, Some(&self.signer)).expect("generate");
        (path, s)
    }

    async fn import(&self, tree: &Path) -> Result<ImportReport, ImportError> {
        import(&self.store, &self.data, tree, &self.opts, 1_757_930_000).await
    }

    fn blobs(&self) -> BlobStore {
        BlobStore::open(&self.data.join("feeds")).expect("blob store")
    }

    fn blob_names(&self) -> BTreeSet<String> {
        self.blobs()
            .list()
            .expect("list")
            .into_iter()
            .map(|(s, _)| s)
            .collect()
    }

    /// The release's manifest, checked with the feed key's public half.
    fn verified_manifest(&self, r: &ImportReport) -> FeedManifest {
        let (bytes, sig) = release_manifest(&self.data, &r.release).expect("manifest");
        let mut pub_path = self.opts.signing_key.clone().into_os_string();
        pub_path.push(".pub");
        let trusted = TrustedKeys::load(Path::new(&pub_path)).expect("feed key .pub");
        verify_manifest(&bytes, &sig, &trusted).expect("manifest signature verifies")
    }
}

async fn good_tree_publishes_a_signed_release(backend: Backend) {
    let f = Fixture::new(backend).await;
    let (tree, summary) = f.tree("day0", 0);
    let r = f.import(&tree).await.expect("a good tree is imported");
    assert!(r.created);
    let m = f.verified_manifest(&r);
    assert_eq!(m, r.manifest);
    assert_eq!(m.plugin_set, "202509150400");
    assert_eq!(m.notus_version.as_deref(), Some("1.2"));
    assert_eq!(m.nasl_scripts, u64::from(SCRIPTS));
    assert_eq!(m.notus_advisories, u64::from(summary.advisories));
    assert_eq!(m.upstream_signers, vec![f.signer.fingerprint().to_owned()]);
    // Duplicates: a few scripts share an OID, which ospd-openvas lists once; advisories
    // sharing a script's OID are listed besides it (its two caches are not merged). The
    // generator knows the truth.
    assert_eq!(m.vt_count, summary.vt_count);
    assert!(
        m.nasl_oids < m.nasl_scripts,
        "the tree has scripts sharing an OID"
    );
    assert_eq!(m.vt_count, m.nasl_oids + m.notus_advisories);
    // Every file, the three signed lists and their signatures included.
    assert_eq!(m.files.len() as u64, summary.files + 6);
    assert_eq!(r.release.files, summary.files + 6);
    let blobs = f.blobs();
    for file in &m.files {
        let stored = blobs.get(&file.sha256).expect("blob");
        assert_eq!(
            stored,
            std::fs::read(tree.join(&file.path)).expect("tree file")
        );
        assert_eq!(stored.len() as u64, file.size);
    }
    assert_eq!(r.added_bytes, blobs.bytes().expect("bytes"));

    // The same tree again is the same release: nothing new stored.
    let again = f.import(&tree).await.expect("re-import");
    assert!(!again.created);
    assert_eq!(again.release.id, r.release.id);
    assert_eq!((again.added_blobs, again.added_bytes), (0, 0));
    assert_eq!(f.store.feed_releases().await.expect("list").len(), 1);
}

#[tokio::test]
async fn good_tree_publishes_a_signed_release_sqlite() {
    good_tree_publishes_a_signed_release(Backend::Sqlite).await;
}

#[tokio::test]
async fn good_tree_publishes_a_signed_release_postgres() {
    good_tree_publishes_a_signed_release(Backend::Postgres).await;
}

/// Imports a broken tree, expects a refusal, and checks that nothing was published or
/// left in the blob store beyond what was there before.
async fn refused(f: &Fixture, tree: &Path) -> ImportError {
    let before = f.blob_names();
    let releases = f.store.feed_releases().await.expect("list");
    let err = f.import(tree).await.expect_err("the tree must be refused");
    assert_eq!(
        f.blob_names(),
        before,
        "a refused import leaves no blobs: {err}"
    );
    assert_eq!(f.store.feed_releases().await.expect("list"), releases);
    err
}

#[tokio::test]
async fn unsigned_and_wrongly_signed_trees_are_refused() {
    let f = Fixture::new(Backend::Sqlite).await;
    let (tree, _) = f.tree("t", 0);

    std::fs::remove_file(tree.join("nvt/sha256sums.asc")).expect("rm");
    let e = refused(&f, &tree).await;
    assert!(
        matches!(&e, ImportError::Unsigned { list } if list == "nvt/sha256sums"),
        "{e}"
    );
    assert!(
        e.to_string().contains("nvt/sha256sums is not signed"),
        "{e}"
    );

    // Signed by a key the operator never trusted.
    let other = GpgSigner::create(
        &f.dir.path().join("gnupg-other"),
        "Mallory <m@test.invalid>",
    )
    .expect("other key");
    other
        .sign(
            &tree.join("nvt/sha256sums"),
            &tree.join("nvt/sha256sums.asc"),
        )
        .expect("sign");
    let e = refused(&f, &tree).await;
    assert!(
        matches!(&e, ImportError::Signature { list, reason: SigError::UnknownKey(_) } if list == "nvt/sha256sums"),
        "{e}"
    );
    assert!(
        e.to_string()
            .starts_with("nvt/sha256sums.asc does not verify"),
        "{e}"
    );

    // The right key, but sha256sums changed after signing (a file slipped in with it).
    f.signer
        .sign(
            &tree.join("nvt/sha256sums"),
            &tree.join("nvt/sha256sums.asc"),
        )
        .expect("sign");
    let sums = tree.join("notus/products/sha256sums");
    let mut text = std::fs::read_to_string(&sums).expect("sums");
    text.push_str(&format!("{}  extra.notus\n", "0".repeat(64)));
    std::fs::write(&sums, text).expect("write");
    let e = refused(&f, &tree).await;
    assert!(
        matches!(&e, ImportError::Signature { list, reason: SigError::Bad } if list == "notus/products/sha256sums"),
        "{e}"
    );

    // A signature file that is no signature.
    f.signer
        .sign(&sums, &tree.join("notus/products/sha256sums.asc"))
        .expect("sign");
    std::fs::write(
        tree.join("notus/advisories/sha256sums.asc"),
        "not a signature\n",
    )
    .expect("w");
    let e = refused(&f, &tree).await;
    assert!(
        matches!(&e, ImportError::Signature { list, .. } if list == "notus/advisories/sha256sums"),
        "{e}"
    );
}

/// Paths of a kind in the tree, sorted.
fn find(tree: &Path, under: &str, ext: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![tree.join(under)];
    while let Some(d) = pending.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                pending.push(p);
            } else if p.to_string_lossy().ends_with(ext) {
                out.push(p.strip_prefix(tree).expect("inside").display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn tampered_incomplete_and_overcomplete_trees_are_refused_by_name() {
    let f = Fixture::new(Backend::Sqlite).await;
    let (tree, _) = f.tree("t", 0);
    // A good import first: a refusal must not touch what is published.
    f.import(&tree).await.expect("good tree");
    let nasl = find(&tree, "nvt", ".nasl");
    let (victim, other) = (&nasl[3], &nasl[7]);

    // Tampered: one byte of a script.
    let path = tree.join(victim);
    let original = std::fs::read(&path).expect("read");
    let mut altered = original.clone();
    altered[200] ^= 0x20;
    std::fs::write(&path, &altered).expect("write");
    let e = refused(&f, &tree).await;
    assert!(
        matches!(&e, ImportError::Tree(p) if p == &[TreeProblem::Altered { path: victim.clone(), list: "nvt/sha256sums".into() }]),
        "{e}"
    );
    assert!(
        e.to_string().contains(&format!("{victim} is altered")),
        "{e}"
    );
    std::fs::write(&path, &original).expect("restore");

    // Incomplete: a listed file is gone.
    let gone = tree.join(other);
    let kept = std::fs::read(&gone).expect("read");
    std::fs::remove_file(&gone).expect("rm");
    let e = refused(&f, &tree).await;
    assert!(
        e.to_string().contains(&format!(
            "{other} is listed in nvt/sha256sums but missing from the tree"
        )),
        "{e}"
    );
    std::fs::write(&gone, kept).expect("restore");

    // Over-complete: files no signed list names, inside a signed directory and outside.
    std::fs::write(tree.join("nvt/2019/gb_backdoor.nasl"), "exit(0);\n").expect("w");
    std::fs::write(tree.join("README"), "hello\n").expect("w");
    let e = refused(&f, &tree).await;
    match &e {
        ImportError::Tree(p) => assert_eq!(
            p,
            &[
                TreeProblem::Unlisted("README".into()),
                TreeProblem::Unlisted("nvt/2019/gb_backdoor.nasl".into()),
            ]
        ),
        other => panic!("{other}"),
    }
    assert!(
        e.to_string()
            .contains("nvt/2019/gb_backdoor.nasl is not listed in any signed sha256sums"),
        "{e}"
    );
    std::fs::remove_file(tree.join("nvt/2019/gb_backdoor.nasl")).expect("rm");
    std::fs::remove_file(tree.join("README")).expect("rm");

    // A symbolic link in place of a listed file.
    let link = tree.join(&nasl[11]);
    let kept = std::fs::read(&link).expect("read");
    std::fs::remove_file(&link).expect("rm");
    std::os::unix::fs::symlink(tree.join(victim), &link).expect("symlink");
    let e = refused(&f, &tree).await;
    assert!(
        e.to_string()
            .contains(&format!("{} is not a regular file", nasl[11])),
        "{e}"
    );
    std::fs::remove_file(&link).expect("rm");
    std::fs::write(&link, kept).expect("restore");

    // A listed file grown past any feed file's size (sparse, so the test stays cheap) is
    // refused without being read into memory.
    let big = tree.join(&nasl[13]);
    let kept = std::fs::read(&big).expect("read");
    std::fs::File::options()
        .write(true)
        .open(&big)
        .and_then(|f| f.set_len(outpost_portal::feeds::tree::MAX_FILE + 1))
        .expect("grow");
    let e = refused(&f, &tree).await;
    assert!(
        e.to_string()
            .contains(&format!("{} is larger than", nasl[13])),
        "{e}"
    );
    std::fs::write(&big, kept).expect("restore");

    // Restored, the tree is the release already published.
    let again = f.import(&tree).await.expect("restored tree");
    assert!(!again.created);
}

async fn next_day_shares_unchanged_blobs_and_old_releases_are_collected(backend: Backend) {
    let mut f = Fixture::new(backend).await;
    f.opts.keep = 2;
    let (tree, _) = f.tree("feed", 0);
    let r0 = f.import(&tree).await.expect("day 0");
    let bytes0 = f.blobs().bytes().expect("bytes");

    let s1 = advance(&tree, &f.spec, 0, Some(&f.signer)).expect("advance");
    let r1 = f.import(&tree).await.expect("day 1");
    assert!(r1.created);
    assert_eq!(r1.manifest.plugin_set, "202509160400");
    assert_eq!(r1.manifest.nasl_scripts, u64::from(SCRIPTS) + 1);
    assert_eq!(r1.manifest.vt_count, s1.vt_count);

    // Only the changed content was stored: the blobs of day 1 that day 0 did not have,
    // plus day 1's manifest. Computed from the two manifests, and checked on disk.
    let old: BTreeSet<&str> = r0.manifest.blobs();
    let new: BTreeSet<&str> = r1.manifest.blobs();
    let fresh: BTreeSet<&str> = new.difference(&old).copied().collect();
    let fresh_bytes: u64 = fresh
        .iter()
        .map(|sha| {
            r1.manifest
                .files
                .iter()
                .find(|file| file.sha256 == *sha)
                .map(|file| file.size)
                .unwrap_or(0)
        })
        .sum();
    let manifest_len = release_manifest(&f.data, &r1.release)
        .expect("manifest")
        .0
        .len() as u64;
    assert_eq!(r1.added_blobs, fresh.len() as u64 + 1);
    assert_eq!(r1.added_bytes, fresh_bytes + manifest_len);
    assert_eq!(f.blobs().bytes().expect("bytes"), bytes0 + r1.added_bytes);
    // The day's churn: changed + one new script, Notus files, lists and signatures.
    let changed_nasl = r1
        .manifest
        .files
        .iter()
        .filter(|file| file.path.ends_with(".nasl") && fresh.contains(file.sha256.as_str()))
        .count() as u32;
    assert_eq!(changed_nasl, f.spec.daily_changes() + 1);
    // At this size the rewritten Notus files and lists weigh most of the delta; it is
    // still a small part of the release.
    assert!(
        r1.added_bytes * 4 < r1.release.bytes,
        "a day's delta ({} bytes) is a small part of the release ({} bytes)",
        r1.added_bytes,
        r1.release.bytes
    );
    assert!(r1.dropped_releases.is_empty());

    // Day 2 with keep = 2: day 0 is dropped, and exactly the blobs only it named go.
    advance(&tree, &f.spec, 1, Some(&f.signer)).expect("advance");
    let r2 = f.import(&tree).await.expect("day 2");
    assert_eq!(r2.dropped_releases, vec![r0.release.id]);
    let releases = f.store.feed_releases().await.expect("list");
    assert_eq!(
        releases.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![r2.release.id, r1.release.id]
    );
    let mut live: BTreeSet<String> = BTreeSet::new();
    for r in [&r1, &r2] {
        live.insert(r.release.manifest_sha256.clone());
        live.extend(r.manifest.files.iter().map(|file| file.sha256.clone()));
    }
    assert_eq!(
        f.blob_names(),
        live,
        "the store holds exactly the kept releases' blobs"
    );
    assert!(r2.collected.blobs > 0 && r2.collected.bytes > 0);
    assert!(!f.blob_names().contains(&r0.release.manifest_sha256));
}

#[tokio::test]
async fn next_day_shares_unchanged_blobs_and_old_releases_are_collected_sqlite() {
    next_day_shares_unchanged_blobs_and_old_releases_are_collected(Backend::Sqlite).await;
}

#[tokio::test]
async fn next_day_shares_unchanged_blobs_and_old_releases_are_collected_postgres() {
    next_day_shares_unchanged_blobs_and_old_releases_are_collected(Backend::Postgres).await;
}

#[tokio::test]
async fn a_missing_keyring_or_feed_key_is_named() {
    let f = Fixture::new(Backend::Sqlite).await;
    let (tree, _) = f.tree("t", 0);
    let mut opts = f.opts.clone();
    opts.signing_key = f.data.join("nope.key");
    let e = import(&f.store, &f.data, &tree, &opts, 0)
        .await
        .expect_err("no key");
    assert!(e.to_string().contains("nope.key"), "{e}");
    assert!(e.to_string().contains("outpost-portal feed keygen"), "{e}");
    let mut opts = f.opts.clone();
    opts.keyring = f.data.join("missing-keyring.gpg");
    let e = import(&f.store, &f.data, &tree, &opts, 0)
        .await
        .expect_err("no keyring");
    assert!(e.to_string().contains("missing-keyring.gpg"), "{e}");
    assert!(f.store.feed_releases().await.expect("list").is_empty());
}

/// Retention never collects a release a channel pins: with `keep = 1` the pinned day-0
/// release and its blobs stay through day 1; once unpinned, the next import drops it.
async fn a_pinned_release_survives_retention(backend: Backend) {
    let mut f = Fixture::new(backend).await;
    f.opts.keep = 1;
    let (tree, _) = f.tree("feed", 0);
    let r0 = f.import(&tree).await.expect("day 0");
    let pin = |pinned: Option<i64>, clear: bool| ChannelWrite {
        scope: SCOPE_SITE,
        name: "berlin".into(),
        pinned,
        clear,
        now: 1,
    };
    f.store
        .set_feed_channel(pin(Some(r0.release.id), false))
        .await
        .expect("store")
        .expect("pinned");

    advance(&tree, &f.spec, 0, Some(&f.signer)).expect("advance");
    let r1 = f.import(&tree).await.expect("day 1");
    assert!(r1.dropped_releases.is_empty(), "the pinned release is kept");
    let ids: Vec<i64> = f
        .store
        .feed_releases()
        .await
        .expect("list")
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, [r1.release.id, r0.release.id]);
    let mut live: BTreeSet<String> = BTreeSet::new();
    for r in [&r0, &r1] {
        live.insert(r.release.manifest_sha256.clone());
        live.extend(r.manifest.files.iter().map(|file| file.sha256.clone()));
    }
    assert_eq!(
        f.blob_names(),
        live,
        "every blob of the pinned release stays"
    );

    // Unpinned, the next import collects it and the blobs only it named.
    f.store
        .set_feed_channel(pin(None, true))
        .await
        .expect("store")
        .expect("cleared");
    advance(&tree, &f.spec, 1, Some(&f.signer)).expect("advance");
    let r2 = f.import(&tree).await.expect("day 2");
    assert_eq!(r2.dropped_releases, vec![r1.release.id, r0.release.id]);
    assert!(!f.blob_names().contains(&r0.release.manifest_sha256));
}

#[tokio::test]
async fn a_pinned_release_survives_retention_sqlite() {
    a_pinned_release_survives_retention(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_pinned_release_survives_retention_postgres() {
    a_pinned_release_survives_retention(Backend::Postgres).await;
}
