//! The operator's feed mirror (docs/feeds.md): importing an upstream feed tree, checking
//! it against its OpenPGP-signed `sha256sums` lists, and publishing it as a content-
//! addressed release with a manifest signed by the portal's feed key.
//!
//! On disk, under the data directory:
//!
//! ```text
//! feed-keyring.gpg        upstream OpenPGP keys (armoured or binary), set by the operator
//! feed-signing.key        the feed key (ed25519, `outpost-portal feed keygen`), and its .pub
//! feeds/blobs/aa/<sha256> every file of every kept release, and each release's manifest
//! feeds/tmp/              temporary files, on the same filesystem as the blobs
//! feeds/lock              held while an import runs (imports and collection serialise)
//! feeds/upstream/         greenbone-feed-sync's staging tree (`upstream`), kept between runs
//! ```
//!
//! With `--shared-dir` (replicas), `feeds/blobs`, `feeds/tmp` and `feeds/lock` are under
//! the shared directory instead; the keys and the staging tree stay in the data directory.
//!
//! A release's row in the database names its manifest blob and carries its signature.

pub mod blobs;
pub mod channels;
pub mod deltas;
pub mod openpgp;
pub mod tree;
pub mod upstream;

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use outpost_bundle::SecretKey;
use outpost_feed::{sign_manifest, FeedManifest, ManifestSignature, MANIFEST_FORMAT};

use crate::store::{FeedRelease, NewFeedRelease, Store, StoreError};
use blobs::{sha256_hex, BlobStore, Collected};
use openpgp::{Keyring, KeyringError, SigError};
pub use tree::TreeProblem;

/// The upstream OpenPGP keyring in the data directory.
pub const KEYRING_FILE: &str = "feed-keyring.gpg";
/// The feed key in the data directory.
pub const SIGNING_KEY_FILE: &str = "feed-signing.key";
/// Directory under the data directory.
pub const DIR: &str = "feeds";
/// Releases kept when the operator does not say.
pub const DEFAULT_KEEP: usize = 3;

/// Why an import did not publish a release.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("not a feed tree: {0}")]
    NotAFeed(String),
    #[error("{list} is not signed: {list}.asc is missing")]
    Unsigned { list: String },
    #[error("{list}.asc does not verify: {reason}")]
    Signature { list: String, reason: SigError },
    #[error("{list} line {line}: {reason}")]
    BadList {
        list: String,
        line: usize,
        reason: String,
    },
    #[error("the tree does not match its signed sha256sums: {}", describe(.0))]
    Tree(Vec<TreeProblem>),
    #[error("{path}: {reason}")]
    Content { path: String, reason: String },
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(
        "the feed signing key {path}: {reason} (create one with `outpost-portal feed keygen`)"
    )]
    SigningKey { path: PathBuf, reason: String },
    #[error("{step} {path}: {source}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the portal database: {0}")]
    Store(#[from] StoreError),
    #[error("the stored release {release} is unreadable: {reason}")]
    Corrupt { release: i64, reason: String },
    #[error("import worker stopped: {0}")]
    Worker(String),
}

/// At most ten problems, then how many more.
fn describe(problems: &[TreeProblem]) -> String {
    let mut s = problems
        .iter()
        .take(10)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > 10 {
        s.push_str(&format!(" (and {} more)", problems.len() - 10));
    }
    s
}

pub(crate) fn io_err<'a>(
    step: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ImportError + 'a {
    move |source| ImportError::Io {
        step,
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub keyring: PathBuf,
    pub signing_key: PathBuf,
    /// Releases kept after this one is published (at least 1).
    pub keep: usize,
    /// The directory holding `feeds/` (blobs, the import lock) when it is not the data
    /// directory given to [`import`]: `--shared-dir`, which every replica serves from.
    pub shared_dir: Option<PathBuf>,
}

impl ImportOptions {
    /// The data directory's keyring and key, [`DEFAULT_KEEP`] releases.
    pub fn in_data_dir(data_dir: &Path) -> ImportOptions {
        ImportOptions {
            keyring: data_dir.join(KEYRING_FILE),
            signing_key: data_dir.join(SIGNING_KEY_FILE),
            keep: DEFAULT_KEEP,
            shared_dir: None,
        }
    }
}

/// What an import did.
#[derive(Debug, Clone)]
pub struct ImportReport {
    pub release: FeedRelease,
    pub manifest: FeedManifest,
    /// False when the same release was already published (nothing new stored).
    pub created: bool,
    /// Blobs (and their bytes) this import added to the store: the changed content.
    pub added_blobs: u64,
    pub added_bytes: u64,
    /// Releases dropped by retention, and what collecting their blobs freed.
    pub dropped_releases: Vec<i64>,
    pub collected: Collected,
}

/// Held while an import runs; released when dropped (the descriptor closes).
struct FeedLock(#[allow(dead_code)] File);

fn lock(feeds: &Path) -> Result<FeedLock, ImportError> {
    std::fs::create_dir_all(feeds).map_err(io_err("creating", feeds))?;
    let path = feeds.join("lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err("opening", &path))?;
    // SAFETY: flock only uses the descriptor, which `f` keeps open.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io_err("locking", &path)(std::io::Error::last_os_error()));
    }
    Ok(FeedLock(f))
}

async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, ImportError> + Send + 'static,
) -> Result<R, ImportError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ImportError::Worker(e.to_string()))?
}

/// Imports the feed tree at `tree` and publishes it as a release, then keeps the newest
/// `opts.keep` releases and collects the blobs no kept release names. The blobs go to
/// `opts.shared_dir` when set, else to `data_dir`. Imports and collection serialise on
/// the store's lock file, so two hosts importing into one shared directory (or one
/// importing while another's retention runs) never delete each other's new blobs; the
/// set kept is read from the database every replica shares.
pub async fn import(
    store: &Store,
    data_dir: &Path,
    tree: &Path,
    opts: &ImportOptions,
    now: i64,
) -> Result<ImportReport, ImportError> {
    let feeds = opts.shared_dir.as_deref().unwrap_or(data_dir).join(DIR);
    let (opts_c, feeds_c, tree) = (opts.clone(), feeds.clone(), tree.to_path_buf());
    let (lock, blobs, key, verified) = blocking(move || {
        let lock = lock(&feeds_c)?;
        let blobs = BlobStore::open(&feeds_c).map_err(io_err("opening", &feeds_c))?;
        blobs
            .clean_tmp()
            .map_err(io_err("cleaning", blobs.tmp_dir()))?;
        // Both keys before the tree: a misconfigured portal fails before reading 500 MB.
        let key = SecretKey::load(&opts_c.signing_key).map_err(|e| ImportError::SigningKey {
            path: opts_c.signing_key.clone(),
            reason: e.to_string(),
        })?;
        let work = tempfile::Builder::new()
            .prefix("gpgv-")
            .tempdir_in(blobs.tmp_dir())
            .map_err(io_err("creating a directory in", blobs.tmp_dir()))?;
        let keyring = Keyring::load(&opts_c.keyring, work.path())?;
        let verified = tree::verify_tree(&tree, &keyring, &blobs)?;
        Ok((lock, blobs, key, verified))
    })
    .await?;

    let plugin_set = verified
        .plugin_set
        .clone()
        .ok_or_else(|| ImportError::Content {
            path: "nvt/plugin_feed_info.inc".into(),
            reason: "missing: the feed has no PLUGIN_SET".into(),
        });
    let notus_version = match verified.notus_versions.len() {
        0 | 1 => Ok(verified.notus_versions.iter().next().cloned()),
        _ => Err(ImportError::Content {
            path: "notus/advisories".into(),
            reason: format!(
                "the advisory files disagree on the Notus version: {}",
                verified
                    .notus_versions
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    };
    let (plugin_set, notus_version) = match (plugin_set, notus_version) {
        (Ok(p), Ok(n)) => (p, n),
        (Err(e), _) | (_, Err(e)) => {
            for sha in &verified.added {
                let _ = blobs.remove(sha);
            }
            return Err(e);
        }
    };
    // What ospd-openvas lists: one VT per NASL OID (two scripts with one OID are one entry
    // in its redis cache) plus one per Notus advisory OID, the two caches chained without
    // merging (ospd-openvas 22.10 `VtHelper.get_vt_iterator`), so an advisory sharing a
    // script's OID is listed twice. Measured in QEMU: 605 NASL OIDs + 200 advisories, 20
    // of their own, list as 805 VTs, not 625.
    let vt_count = (verified.nasl_oids.len() + verified.advisory_oids.len()) as u64;
    let manifest = FeedManifest {
        format: MANIFEST_FORMAT,
        plugin_set,
        notus_version,
        vt_count,
        nasl_scripts: verified.nasl_scripts,
        nasl_oids: verified.nasl_oids.len() as u64,
        notus_advisories: verified.advisories,
        upstream_signers: verified.signers.clone(),
        files: verified.files.clone(),
    };
    let bytes = manifest.to_bytes();
    let manifest_sha256 = sha256_hex(&bytes);
    let signature = sign_manifest(&bytes, &key);
    let total: u64 = manifest.files.iter().map(|f| f.size).sum();
    let (blobs, mut added_blobs, mut added_bytes) = {
        let sha = manifest_sha256.clone();
        let (added, added_bytes) = (verified.added.len() as u64, verified.added_bytes);
        blocking(move || {
            let new = blobs
                .put(&sha, &bytes)
                .map_err(io_err("storing", &blobs.path(&sha)))?;
            blobs.sync().map_err(io_err("syncing", blobs.tmp_dir()))?;
            let extra = if new { bytes.len() as u64 } else { 0 };
            Ok((blobs, added + u64::from(new), added_bytes + extra))
        })
        .await?
    };
    let (release, created) = store
        .publish_feed_release(&NewFeedRelease {
            manifest_sha256: manifest_sha256.clone(),
            plugin_set: manifest.plugin_set.clone(),
            notus_version: manifest.notus_version.clone(),
            vt_count,
            files: manifest.files.len() as u64,
            bytes: total,
            signature: signature.to_line().trim_end().to_owned(),
            imported_at: now,
        })
        .await?;
    if !created {
        // Already published: the blobs were all there, nothing was added.
        added_blobs = 0;
        added_bytes = 0;
    }
    tracing::info!(
        release = release.id,
        plugin_set = %release.plugin_set,
        vt_count,
        files = release.files,
        added_bytes,
        created,
        "feed release published"
    );
    let (dropped_releases, collected) = retain(store, blobs, opts.keep).await?;
    drop(lock);
    Ok(ImportReport {
        release,
        manifest,
        created,
        added_blobs,
        added_bytes,
        dropped_releases,
        collected,
    })
}

/// Keeps the newest `keep` releases and every release a channel pins (docs/feeds.md),
/// and removes every blob no remaining release names.
async fn retain(
    store: &Store,
    blobs: BlobStore,
    keep: usize,
) -> Result<(Vec<i64>, Collected), ImportError> {
    let releases = store.feed_releases().await?;
    let keep = keep.max(1);
    let candidates: Vec<i64> = releases.iter().skip(keep).map(|r| r.id).collect();
    if !candidates.is_empty() {
        // The store skips pinned releases itself, in the same statement, so a pin set
        // meanwhile still holds.
        store.delete_feed_releases(&candidates).await?;
    }
    // What stays is what the database still lists, pinned ones included.
    let kept: Vec<FeedRelease> = store.feed_releases().await?;
    let dropped: Vec<i64> = candidates
        .into_iter()
        .filter(|id| !kept.iter().any(|r| r.id == *id))
        .collect();
    let collected = blocking(move || {
        let mut live = BTreeSet::new();
        for r in &kept {
            // A kept manifest that cannot be read stops collection: deleting on a guess
            // could take files a kept release needs.
            let m = read_manifest(&blobs, r)?;
            live.insert(r.manifest_sha256.clone());
            live.extend(m.files.into_iter().map(|f| f.sha256));
        }
        blobs
            .collect(&live)
            .map_err(io_err("collecting blobs in", blobs.tmp_dir()))
    })
    .await?;
    if !dropped.is_empty() || collected.blobs > 0 {
        tracing::info!(
            dropped = ?dropped,
            blobs = collected.blobs,
            bytes = collected.bytes,
            "old feed releases collected"
        );
    }
    Ok((dropped, collected))
}

fn read_manifest(blobs: &BlobStore, r: &FeedRelease) -> Result<FeedManifest, ImportError> {
    let corrupt = |reason: String| ImportError::Corrupt {
        release: r.id,
        reason,
    };
    let bytes = blobs
        .get(&r.manifest_sha256)
        .map_err(|e| corrupt(format!("manifest blob {}: {e}", r.manifest_sha256)))?;
    if sha256_hex(&bytes) != r.manifest_sha256 {
        return Err(corrupt("the manifest blob does not match its name".into()));
    }
    serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("manifest: {e}")))
}

/// A published release's manifest bytes and signature, as a sensor will fetch them.
/// `data_dir` is the directory holding `feeds/` (the shared directory, when there is one).
pub fn release_manifest(
    data_dir: &Path,
    r: &FeedRelease,
) -> Result<(Vec<u8>, ManifestSignature), ImportError> {
    let blobs = BlobStore::open(&data_dir.join(DIR)).map_err(io_err("opening", data_dir))?;
    let bytes = blobs
        .get(&r.manifest_sha256)
        .map_err(|e| ImportError::Corrupt {
            release: r.id,
            reason: format!("manifest blob: {e}"),
        })?;
    let sig = ManifestSignature::parse(&r.signature).map_err(|e| ImportError::Corrupt {
        release: r.id,
        reason: e.to_string(),
    })?;
    Ok((bytes, sig))
}
