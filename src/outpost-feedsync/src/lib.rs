//! The sensor's feed sync (docs/feeds.md, "The sensor's sync"): brings the feed on the
//! data partition to the release the portal offers, moving only the content the sensor
//! lacks, and switches to it with one atomic rename.
//!
//! On disk, under the feed root (`/data/feeds`):
//!
//! ```text
//! current -> releases/<name>    the live release (a symbolic link, replaced by rename)
//! previous -> releases/<name>   the one before, kept for rollback
//! releases/<name>/              plugins/ (the manifest's nvt/), notus/, .release/
//! staging/blobs/<sha256>        fetched and verified blobs, kept across a cut
//! staging/tree/                 the release being built
//! lock                          held while a sync runs
//! ```
//!
//! Nothing in `current` is written: a new release is built beside it, every file verified
//! against the signed manifest, unchanged files hard-linked from the live release (so they
//! keep their mtimes and openvas does not re-parse them), and made durable before the
//! switch. A failure anywhere leaves `current` as it was.
//!
//! A changed file whose path the live release holds (verified) and the manifest itself
//! come as in-file deltas against the live versions (`outpost_feed::delta`, docs/feeds.md
//! "Deltas"), rebuilt into staging and checked exactly like a fetched blob; whatever the
//! portal declines comes whole.
//!
//! With a bandwidth cap ([`SyncConfig::max_kbit_per_s`]) the blob and delta answers are
//! read through a token bucket ([`throttle`]) shared by every request of the sync.

pub mod throttle;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use outpost_bundle::TrustedKeys;
use outpost_feed::batch::{BatchError, BatchReader};
use outpost_feed::delta::{self, DeltaError, FileBase};
use outpost_feed::{verify_manifest, FeedManifest, FeedPaths, ManifestSignature, ReleaseError};
use outpost_wire::feed::{
    FeedDeltaPair, FeedReleaseInfo, MAX_BATCH_BLOBS, MAX_BATCH_BYTES, MAX_DELTA_BATCH_BYTES,
    MAX_DELTA_FILE_BYTES, MAX_MANIFEST_BYTES,
};
use sha2::{Digest, Sha256};
use throttle::{Clock, Limiter, SystemClock, TokenBucket};

/// The live release's link under the feed root.
pub const CURRENT: &str = "current";
/// The release before it, kept for rollback.
pub const PREVIOUS: &str = "previous";
const RELEASES: &str = "releases";
const STAGING: &str = "staging";
/// Inside a release: its manifest and signature line, as verified when it was built.
const META: &str = ".release";
/// Room counted for every directory of a new tree when judging free space.
const DIR_COST: u64 = 4096;

/// Where releases come from: the portal's sensor API (through the tunnel, in `outpostd`).
pub trait FeedSource {
    /// The release the portal offers; `None` when it has published none.
    fn release(&self) -> Result<Option<FeedReleaseInfo>, SourceError>;
    /// Fetches a batch of blobs (within the wire limits); the answer's body, compressed.
    fn blobs(&self, sha256: &[String]) -> Result<Box<dyn Read + Send>, SourceError>;
    /// Fetches in-file deltas (`outpost_feed::delta`) in one blob batch named by target;
    /// `None` when the portal serves no deltas (an older portal): every file then comes
    /// whole.
    fn deltas(&self, pairs: &[FeedDeltaPair]) -> Result<Option<Box<dyn Read + Send>>, SourceError> {
        let _ = pairs;
        Ok(None)
    }
}

/// The portal could not be asked or refused the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("fetching the feed from the portal: {0}")]
    Source(#[from] SourceError),
    #[error("the portal's feed release is refused: {0}")]
    Manifest(#[from] ReleaseError),
    #[error("{0}; the live feed is unchanged")]
    Tampered(String),
    #[error(
        "not enough space for the feed release on {}: it needs {needed} bytes, {available} are free",
        .path.display()
    )]
    NoSpace {
        path: PathBuf,
        needed: u64,
        available: u64,
    },
    #[error("the portal sent a bad blob batch: {0}")]
    Batch(String),
    #[error("{step} {}: {source}", .path.display())]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl From<BatchError> for SyncError {
    fn from(e: BatchError) -> SyncError {
        match e {
            // A read error inside the stream is (most likely) the connection: worth a retry,
            // and what arrived whole before it is kept.
            BatchError::Io(e) => SyncError::Source(SourceError(format!("the batch was cut: {e}"))),
            BatchError::Invalid(why) => SyncError::Batch(why),
        }
    }
}

fn io_err<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SyncError + 'a {
    move |source| SyncError::Io {
        step,
        path: path.to_path_buf(),
        source,
    }
}

/// Free bytes for an unprivileged writer on the filesystem holding `path`.
pub type FreeSpace = dyn Fn(&Path) -> io::Result<u64> + Send + Sync;

pub struct SyncConfig {
    /// The feed root (`/data/feeds`).
    pub root: PathBuf,
    /// The feed key(s) shipped in the image.
    pub trusted: TrustedKeys,
    pub free_space: Box<FreeSpace>,
    /// Bounds of one batch request (at most the wire limits).
    pub batch_blobs: usize,
    pub batch_bytes: u64,
    /// Download cap in kbit/s of compressed bytes on the wire (`[feed] max_kbit_per_s`);
    /// 0 is none.
    pub max_kbit_per_s: u32,
    /// The cap's clock (a fake one in tests).
    pub clock: Arc<dyn Clock>,
    /// A release that failed to load on this sensor: not applied again (the portal may
    /// go on offering it until the operator publishes another).
    pub skip_release: Option<String>,
}

impl SyncConfig {
    pub fn new(root: impl Into<PathBuf>, trusted: TrustedKeys) -> SyncConfig {
        SyncConfig {
            root: root.into(),
            trusted,
            free_space: Box::new(statvfs_free),
            batch_blobs: MAX_BATCH_BLOBS,
            batch_bytes: MAX_BATCH_BYTES,
            max_kbit_per_s: 0,
            clock: Arc::new(SystemClock::new()),
            skip_release: None,
        }
    }

    /// Caps the download at `kbit_per_s` (0: no cap).
    pub fn with_max_kbit_per_s(mut self, kbit_per_s: u32) -> SyncConfig {
        self.max_kbit_per_s = kbit_per_s;
        self
    }

    /// The live release's paths, as the scanner stack reads them.
    pub fn current_paths(&self) -> FeedPaths {
        FeedPaths::under(self.root.join(CURRENT))
    }
}

/// `statvfs`: blocks available to unprivileged users.
pub fn statvfs_free(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    // SAFETY: statvfs writes only into `st`; `c` is a valid C string for the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// What a sync did, for the log and the phase report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    /// The portal has published no release: the feed on disk stays as it is.
    NoRelease,
    /// `current` already is the offered release.
    UpToDate {
        release: String,
    },
    /// The offered release is [`SyncConfig::skip_release`]: it failed to load here before,
    /// so the live release stays.
    Declined {
        release: String,
    },
    Applied(SyncReport),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Directory name under `releases/`.
    pub release: String,
    pub plugin_set: String,
    pub vt_count: u64,
    pub files: u64,
    /// Files hard-linked from the live release.
    pub linked_files: u64,
    /// Blobs (the manifest included) found already fetched and verified in staging: an
    /// earlier sync was cut.
    pub resumed_blobs: u64,
    /// What this run fetched whole: blobs (the manifest included) and their content
    /// bytes; then the compressed bytes on the wire and the requests made, deltas
    /// included.
    pub fetched_blobs: u64,
    pub fetched_bytes: u64,
    pub wire_bytes: u64,
    pub batches: u64,
    /// Of the blobs not fetched whole: those rebuilt from an in-file delta against the
    /// live release's version (the manifest included), and their content bytes.
    pub delta_blobs: u64,
    pub delta_bytes: u64,
    /// Time spent waiting to keep to the bandwidth cap.
    pub throttled: Duration,
    /// The release kept for rollback.
    pub previous: Option<String>,
}

/// Progress of the fetch, after each batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub blobs_done: u64,
    pub blobs_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// Directory name of a release: its PLUGIN_SET and the start of its manifest digest.
fn release_name(info: &FeedReleaseInfo) -> Result<String, SyncError> {
    let ok = info.plugin_set.bytes().all(|b| b.is_ascii_digit())
        && !info.plugin_set.is_empty()
        && info.plugin_set.len() <= 32
        && is_digest(&info.manifest_sha256);
    if !ok {
        return Err(SyncError::Source(SourceError(format!(
            "the portal offered a release with a malformed PLUGIN_SET or manifest digest ({:?}, {:?})",
            info.plugin_set, info.manifest_sha256
        ))));
    }
    // The portal names releases the same way in heartbeat answers.
    Ok(outpost_wire::feed::release_name(
        &info.plugin_set,
        &info.manifest_sha256,
    ))
}

fn is_digest(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Where a manifest path lives in a release tree: the feed's `nvt/` is the scanner's
/// `plugins/` ([`FeedPaths::under`]); the Notus directories keep their names.
fn tree_path(manifest_path: &str) -> String {
    match manifest_path.strip_prefix("nvt/") {
        Some(rest) => format!("plugins/{rest}"),
        None => manifest_path.to_owned(),
    }
}

/// SHA-256 and length of a file.
fn hash_file(path: &Path) -> io::Result<(String, u64)> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        let got = f.read(&mut buf)?;
        if got == 0 {
            break;
        }
        h.update(&buf[..got]);
        n += got as u64;
    }
    Ok((hex(&h.finalize()), n))
}

/// Held while a sync runs, so two never build into the same staging directory.
struct Lock(#[allow(dead_code)] File);

fn lock(root: &Path) -> Result<Lock, SyncError> {
    let path = root.join("lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err("opening", &path))?;
    // SAFETY: flock only uses the descriptor, which `f` keeps open.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io_err("locking", &path)(io::Error::last_os_error()));
    }
    Ok(Lock(f))
}

fn syncfs(path: &Path) -> Result<(), SyncError> {
    let f = File::open(path).map_err(io_err("opening", path))?;
    // SAFETY: syncfs only reads the descriptor, which `f` keeps open for the call.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(io_err("syncing", path)(io::Error::last_os_error()));
    }
    Ok(())
}

fn fsync_dir(path: &Path) -> Result<(), SyncError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing", path))
}

/// The live release under the feed root (`current`'s target, `<PLUGIN_SET>-<16 hex>`),
/// as the heartbeat reports it; `None` while no synced release is live.
pub fn live_release(root: &Path) -> Option<String> {
    link_target(root, CURRENT)
}

/// The release a link under the root points at (its directory name), if any.
fn link_target(root: &Path, link: &str) -> Option<String> {
    let t = fs::read_link(root.join(link)).ok()?;
    let name = t.strip_prefix(RELEASES).ok()?.to_str()?.to_owned();
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// Points `root/link` at `releases/<name>` with one rename.
fn set_link(root: &Path, link: &str, name: &str) -> Result<(), SyncError> {
    let tmp = root.join(format!(".{link}.new"));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(Path::new(RELEASES).join(name), &tmp)
        .map_err(io_err("creating", &tmp))?;
    let dest = root.join(link);
    fs::rename(&tmp, &dest).map_err(io_err("switching", &dest))
}

/// The live release's manifest, as verified when it was built. Only a hint of what can be
/// reused: every file taken from it is hashed again.
fn live_manifest(root: &Path) -> Option<(String, FeedManifest)> {
    let name = link_target(root, CURRENT)?;
    let m = release_manifest(root, &name)?;
    Some((name, m))
}

struct Staging {
    blobs: PathBuf,
    tree: PathBuf,
}

impl Staging {
    fn blob(&self, sha: &str) -> PathBuf {
        self.blobs.join(sha)
    }
}

/// Brings the feed under `cfg.root` to the release `source` offers. `progress` is told
/// after every batch.
pub fn sync(
    cfg: &SyncConfig,
    source: &dyn FeedSource,
    progress: &mut dyn FnMut(&Progress),
) -> Result<SyncOutcome, SyncError> {
    sync_holding(cfg, source, progress, &mut |_| {})
}

/// [`sync`], calling `before_switch` with the release's name once it is built, verified
/// and durable beside the live one, just before `current` is switched to it. A sensor
/// holds its scans there: everything slow (the download, the checks) has happened while
/// it scanned, and the scanner never sees the switch mid-scan.
pub fn sync_holding(
    cfg: &SyncConfig,
    source: &dyn FeedSource,
    progress: &mut dyn FnMut(&Progress),
    before_switch: &mut dyn FnMut(&str),
) -> Result<SyncOutcome, SyncError> {
    let root = &cfg.root;
    fs::create_dir_all(root.join(RELEASES)).map_err(io_err("creating", root))?;
    let _lock = lock(root)?;
    let Some(info) = source.release()? else {
        return Ok(SyncOutcome::NoRelease);
    };
    let name = release_name(&info)?;
    if link_target(root, CURRENT).as_deref() == Some(name.as_str()) && live_manifest(root).is_some()
    {
        return Ok(SyncOutcome::UpToDate { release: name });
    }
    if cfg.skip_release.as_deref() == Some(name.as_str()) {
        return Ok(SyncOutcome::Declined { release: name });
    }
    let signature = ManifestSignature::parse(&info.signature)?;
    let staging = Staging {
        blobs: root.join(STAGING).join("blobs"),
        tree: root.join(STAGING).join("tree"),
    };
    fs::create_dir_all(&staging.blobs).map_err(io_err("creating", &staging.blobs))?;
    let mut report = SyncReport {
        release: name.clone(),
        plugin_set: info.plugin_set.clone(),
        vt_count: 0,
        files: 0,
        linked_files: 0,
        resumed_blobs: 0,
        fetched_blobs: 0,
        fetched_bytes: 0,
        wire_bytes: 0,
        batches: 0,
        delta_blobs: 0,
        delta_bytes: 0,
        throttled: Duration::ZERO,
        previous: None,
    };
    // One bucket for the whole sync: the cap holds across batches, not per request.
    let mut limiter = Limiter::new(
        throttle::bytes_per_s(cfg.max_kbit_per_s).map(TokenBucket::for_rate),
        cfg.clock.clone(),
    );

    // The manifest first: nothing else is fetched for a release this sensor refuses.
    if info.manifest_size > MAX_MANIFEST_BYTES {
        return Err(SyncError::Source(SourceError(format!(
            "the manifest is {} bytes, more than the {MAX_MANIFEST_BYTES} this sensor reads",
            info.manifest_size
        ))));
    }
    let manifest_path = staging.blob(&info.manifest_sha256);
    if manifest_path.exists() {
        report.resumed_blobs += 1;
    } else if let Some((base, base_sha, base_len)) =
        live_manifest_file(root).filter(|(_, sha, n)| {
            *sha != info.manifest_sha256
                && *n <= MAX_DELTA_FILE_BYTES
                && info.manifest_size <= MAX_DELTA_FILE_BYTES
        })
    {
        // Against the live release's manifest; checked below exactly as a whole one.
        let want = [DeltaWant {
            base_sha,
            base,
            base_len,
            target: info.manifest_sha256.clone(),
            size: info.manifest_size,
        }];
        let got = fetch_deltas(source, &staging, &want, &mut report, &mut limiter)?;
        if !got.is_some_and(|g| g.contains(&info.manifest_sha256)) {
            let want = BTreeMap::from([(info.manifest_sha256.clone(), info.manifest_size)]);
            fetch_batch(source, &staging, &want, &mut report, &mut limiter)?;
        }
    } else {
        let want = BTreeMap::from([(info.manifest_sha256.clone(), info.manifest_size)]);
        fetch_batch(source, &staging, &want, &mut report, &mut limiter)?;
    }
    let bytes = fs::read(&manifest_path).map_err(io_err("reading", &manifest_path))?;
    if hex(&Sha256::digest(&bytes)) != info.manifest_sha256 {
        let _ = fs::remove_file(&manifest_path);
        return Err(SyncError::Tampered(format!(
            "the staged manifest {} does not match its digest",
            info.manifest_sha256
        )));
    }
    let manifest = verify_manifest(&bytes, &signature, &cfg.trusted)?;
    report.vt_count = manifest.vt_count;
    report.files = manifest.files.len() as u64;

    // What is there already: staged from an earlier run, or in the live release.
    let sizes: BTreeMap<&str, u64> = manifest
        .files
        .iter()
        .map(|f| (f.sha256.as_str(), f.size))
        .collect();
    let live = live_manifest(root);
    let mut live_by_sha: BTreeMap<&str, PathBuf> = BTreeMap::new();
    if let Some((live_name, m)) = &live {
        let dir = root.join(RELEASES).join(live_name);
        for f in &m.files {
            live_by_sha
                .entry(f.sha256.as_str())
                .or_insert_with(|| dir.join(tree_path(&f.path)));
        }
    }
    // Each blob's source once verified: a staged blob or a live file.
    let mut verified: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut missing: BTreeMap<String, u64> = BTreeMap::new();
    for (&sha, &size) in &sizes {
        let staged = staging.blob(sha);
        if staged.exists() {
            match hash_file(&staged) {
                Ok((h, n)) if h == sha && n == size => {
                    report.resumed_blobs += 1;
                    verified.insert(sha.to_owned(), staged);
                    continue;
                }
                _ => {
                    tracing::warn!(
                        blob = sha,
                        "a staged feed blob is damaged; fetching it again"
                    );
                    let _ = fs::remove_file(&staged);
                }
            }
        }
        if let Some(p) = live_by_sha.get(sha) {
            match hash_file(p) {
                Ok((h, n)) if h == sha && n == size => {
                    verified.insert(sha.to_owned(), p.clone());
                    continue;
                }
                _ => tracing::warn!(
                    file = %p.display(),
                    "a file of the live feed does not match its manifest; fetching it again"
                ),
            }
        }
        missing.insert(sha.to_owned(), size);
    }
    // Stale staged blobs (a release the portal no longer offers) only take space.
    prune_staging(&staging, &sizes, &info.manifest_sha256)?;

    // Space: the missing content plus the new tree's directories; links cost no data.
    let dirs: BTreeSet<&str> = manifest
        .files
        .iter()
        .filter_map(|f| f.path.rsplit_once('/').map(|(d, _)| d))
        .collect();
    let needed = missing.values().sum::<u64>() + (dirs.len() as u64 + 2) * DIR_COST;
    let available = (cfg.free_space)(root).map_err(io_err("measuring free space on", root))?;
    if available < needed {
        return Err(SyncError::NoSpace {
            path: root.clone(),
            needed,
            available,
        });
    }
    tracing::info!(
        release = %name,
        missing_blobs = missing.len(),
        missing_bytes = missing.values().sum::<u64>(),
        reused = verified.len(),
        "feed sync: fetching what is missing"
    );

    let total = Progress {
        blobs_done: 0,
        blobs_total: missing.len() as u64,
        bytes_done: 0,
        bytes_total: missing.values().sum(),
    };
    let mut done = total;

    // Deltas first, for every missing file whose path the live release holds in another
    // version that still matches its manifest (so the base really is what it claims).
    let mut live_by_path: BTreeMap<&str, (&str, u64)> = BTreeMap::new();
    if let Some((_, m)) = &live {
        for f in &m.files {
            live_by_path.insert(f.path.as_str(), (f.sha256.as_str(), f.size));
        }
    }
    let live_dir = live.as_ref().map(|(n, _)| root.join(RELEASES).join(n));
    let mut wants: Vec<DeltaWant> = Vec::new();
    let mut planned = BTreeSet::new();
    if let Some(dir) = &live_dir {
        for f in &manifest.files {
            let Some(&size) = missing.get(&f.sha256) else {
                continue;
            };
            let Some(&(base_sha, base_len)) = live_by_path.get(f.path.as_str()) else {
                continue;
            };
            if size > MAX_DELTA_FILE_BYTES
                || base_len > MAX_DELTA_FILE_BYTES
                || !planned.insert(f.sha256.as_str())
            {
                continue;
            }
            let base = dir.join(tree_path(&f.path));
            match hash_file(&base) {
                Ok((h, n)) if h == base_sha && n == base_len => wants.push(DeltaWant {
                    base_sha: base_sha.to_owned(),
                    base,
                    base_len,
                    target: f.sha256.clone(),
                    size,
                }),
                _ => tracing::warn!(
                    file = %base.display(),
                    "a file of the live feed does not match its manifest; not used for a delta"
                ),
            }
        }
    }
    let mut start = 0;
    while start < wants.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < wants.len()
            && (end == start
                || (end - start < batch_blobs_bound(cfg)
                    && bytes + wants[end].size <= MAX_DELTA_BATCH_BYTES))
        {
            bytes += wants[end].size;
            end += 1;
        }
        let Some(got) = fetch_deltas(
            source,
            &staging,
            &wants[start..end],
            &mut report,
            &mut limiter,
        )?
        else {
            // A portal without deltas: everything comes whole.
            break;
        };
        for w in &wants[start..end] {
            if got.contains(&w.target) {
                if let Some(size) = missing.remove(&w.target) {
                    done.blobs_done += 1;
                    done.bytes_done += size;
                }
                verified.insert(w.target.clone(), staging.blob(&w.target));
            }
        }
        progress(&done);
        start = end;
    }

    // The rest whole, in batches within the bounds; an oversized blob goes alone.
    let mut batch: BTreeMap<String, u64> = BTreeMap::new();
    let mut batch_bytes = 0u64;
    let batch_blobs = batch_blobs_bound(cfg);
    let batch_limit = cfg.batch_bytes.clamp(1, MAX_BATCH_BYTES);
    let entries: Vec<(String, u64)> = missing.into_iter().collect();
    for (i, (sha, size)) in entries.iter().enumerate() {
        if !batch.is_empty() && (batch.len() >= batch_blobs || batch_bytes + size > batch_limit) {
            fetch_batch(source, &staging, &batch, &mut report, &mut limiter)?;
            done.blobs_done += batch.len() as u64;
            done.bytes_done += batch_bytes;
            progress(&done);
            batch.clear();
            batch_bytes = 0;
        }
        batch.insert(sha.clone(), *size);
        batch_bytes += size;
        if i + 1 == entries.len() {
            fetch_batch(source, &staging, &batch, &mut report, &mut limiter)?;
            done.blobs_done += batch.len() as u64;
            done.bytes_done += batch_bytes;
            progress(&done);
        }
    }
    for (sha, _) in entries {
        let p = staging.blob(&sha);
        verified.insert(sha, p);
    }
    report.throttled = limiter.waited;

    // Build beside the live release, every file from a verified source.
    if staging.tree.exists() {
        fs::remove_dir_all(&staging.tree).map_err(io_err("removing", &staging.tree))?;
    }
    for f in &manifest.files {
        let dest = staging.tree.join(tree_path(&f.path));
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
        }
        let src = verified
            .get(&f.sha256)
            .ok_or_else(|| SyncError::Tampered(format!("{} was not fetched", f.path)))?;
        fs::hard_link(src, &dest).map_err(io_err("linking", &dest))?;
        if live_dir.as_ref().is_some_and(|d| src.starts_with(d)) {
            report.linked_files += 1;
        }
    }
    let meta = staging.tree.join(META);
    fs::create_dir_all(&meta).map_err(io_err("creating", &meta))?;
    for (file, content) in [
        ("manifest.json", &bytes[..]),
        ("signature", info.signature.as_bytes()),
    ] {
        let p = meta.join(file);
        fs::write(&p, content).map_err(io_err("writing", &p))?;
    }
    let dest = root.join(RELEASES).join(&name);
    if dest.exists() {
        // Built by a run cut before its switch, or a release rolled away from: rebuilt.
        if link_target(root, CURRENT).as_deref() == Some(name.as_str()) {
            return Err(SyncError::Tampered(format!(
                "the live release {name} has no readable manifest"
            )));
        }
        fs::remove_dir_all(&dest).map_err(io_err("removing", &dest))?;
    }
    fs::rename(&staging.tree, &dest).map_err(io_err("moving into place", &dest))?;
    // Every new file and directory on disk before anything points at them.
    syncfs(root)?;

    before_switch(&name);
    let old = link_target(root, CURRENT);
    if let Some(old) = &old {
        set_link(root, PREVIOUS, old)?;
    }
    set_link(root, CURRENT, &name)?;
    fsync_dir(root)?;
    report.previous = old;
    tracing::info!(
        release = %name,
        previous = ?report.previous,
        fetched_blobs = report.fetched_blobs,
        fetched_bytes = report.fetched_bytes,
        wire_bytes = report.wire_bytes,
        throttled_ms = report.throttled.as_millis() as u64,
        linked = report.linked_files,
        "feed release live"
    );

    // Tidy up: the staged blobs now live in the release; keep only current and previous.
    if let Err(e) = fs::remove_dir_all(&staging.blobs) {
        tracing::warn!(error = %e, "could not empty the feed staging directory");
    }
    remove_other_releases(root, &[Some(name), report.previous.clone()]);
    Ok(SyncOutcome::Applied(report))
}

fn batch_blobs_bound(cfg: &SyncConfig) -> usize {
    cfg.batch_blobs.clamp(1, MAX_BATCH_BLOBS)
}

/// The live release's manifest file, its SHA-256 and length: the base for the next
/// manifest's delta.
fn live_manifest_file(root: &Path) -> Option<(PathBuf, String, u64)> {
    let name = link_target(root, CURRENT)?;
    let p = root
        .join(RELEASES)
        .join(name)
        .join(META)
        .join("manifest.json");
    let (sha, n) = hash_file(&p).ok()?;
    Some((p, sha, n))
}

/// A delta to ask for: from `base` (verified: `base_sha`, `base_len`) to blob `target`.
struct DeltaWant {
    base_sha: String,
    base: PathBuf,
    base_len: u64,
    target: String,
    size: u64,
}

/// Fetches deltas and rebuilds their targets into staging, each checked like a fetched
/// blob (size and SHA-256 against the signed manifest). Returns the targets rebuilt (the
/// ones the portal left out are for the caller to fetch whole), or `None` when the portal
/// serves no deltas.
fn fetch_deltas(
    source: &dyn FeedSource,
    staging: &Staging,
    wants: &[DeltaWant],
    report: &mut SyncReport,
    limiter: &mut Limiter,
) -> Result<Option<BTreeSet<String>>, SyncError> {
    let pairs: Vec<FeedDeltaPair> = wants
        .iter()
        .map(|w| FeedDeltaPair {
            base: w.base_sha.clone(),
            target: w.target.clone(),
        })
        .collect();
    let Some(body) = source.deltas(&pairs)? else {
        return Ok(None);
    };
    let by_target: BTreeMap<&str, &DeltaWant> =
        wants.iter().map(|w| (w.target.as_str(), w)).collect();
    let mut counted = Counting {
        inner: limiter.reader(body),
        n: 0,
    };
    let mut got = BTreeSet::new();
    let result = (|| {
        let mut r = BatchReader::new(&mut counted)?;
        while let Some(e) = r.next_entry()? {
            let Some(w) = by_target.get(e.sha256.as_str()) else {
                return Err(SyncError::Tampered(format!(
                    "the portal sent a delta for {}, which was not asked for",
                    e.sha256
                )));
            };
            if !got.insert(e.sha256.clone()) {
                return Err(SyncError::Tampered(format!(
                    "the portal sent the delta for {} twice",
                    e.sha256
                )));
            }
            store_delta(staging, w, &mut r.content())?;
            report.delta_blobs += 1;
            report.delta_bytes += w.size;
        }
        Ok(())
    })();
    report.wire_bytes += counted.n;
    report.batches += 1;
    result?;
    Ok(Some(got))
}

/// Writes `Write` through to a file while hashing and counting.
struct HashingFile {
    f: File,
    h: Sha256,
    n: u64,
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.f.write(buf)?;
        self.h.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.f.flush()
    }
}

/// Rebuilds one delta's target next to the staged blobs and names it by its digest only
/// once it matched, as [`store_blob`] does.
fn store_delta(staging: &Staging, w: &DeltaWant, content: &mut dyn Read) -> Result<(), SyncError> {
    let sha = &w.target;
    let head = delta::read_header(content).map_err(|e| delta_err(sha, e))?;
    if head.base_sha256 != w.base_sha {
        return Err(SyncError::Tampered(format!(
            "the delta for {sha} is against {}, not the sensor's {} as asked",
            head.base_sha256, w.base_sha
        )));
    }
    if head.target_len != w.size {
        return Err(SyncError::Tampered(format!(
            "the delta for {sha} makes {} bytes, {} in the signed manifest",
            head.target_len, w.size
        )));
    }
    let base = FileBase::open(&w.base).map_err(io_err("opening", &w.base))?;
    if delta::Base::len(&base) != w.base_len {
        return Err(SyncError::Tampered(format!(
            "{} changed during the sync",
            w.base.display()
        )));
    }
    let tmp = staging.blobs.join(format!(".part-{sha}"));
    let f = File::create(&tmp).map_err(io_err("creating", &tmp))?;
    let mut out = HashingFile {
        f,
        h: Sha256::new(),
        n: 0,
    };
    if let Err(e) = delta::apply_ops(content, &base, w.size, &mut out) {
        let _ = fs::remove_file(&tmp);
        return Err(delta_err(sha, e));
    }
    let HashingFile { f, h, n } = out;
    drop(f);
    if n != w.size || hex(&h.finalize()) != *sha {
        let _ = fs::remove_file(&tmp);
        return Err(SyncError::Tampered(format!(
            "blob {sha} rebuilt from the portal's delta does not match its SHA-256 (altered in transit)"
        )));
    }
    let dest = staging.blob(sha);
    fs::rename(&tmp, &dest).map_err(io_err("storing", &dest))
}

fn delta_err(sha: &str, e: DeltaError) -> SyncError {
    match e {
        DeltaError::Invalid(why) => {
            SyncError::Tampered(format!("the portal's delta for {sha} is not valid: {why}"))
        }
        // Most likely the connection (worth a retry, what arrived whole is kept), as for
        // blobs; a full card was ruled out by the free-space check.
        DeltaError::Io(e) => SyncError::Source(SourceError(format!("the batch was cut: {e}"))),
    }
}

/// Removes staged blobs the target release does not name.
fn prune_staging(
    staging: &Staging,
    wanted: &BTreeMap<&str, u64>,
    manifest: &str,
) -> Result<(), SyncError> {
    let entries = fs::read_dir(&staging.blobs).map_err(io_err("reading", &staging.blobs))?;
    for e in entries.flatten() {
        let n = e.file_name();
        let n = n.to_string_lossy();
        if n != manifest && !wanted.contains_key(n.as_ref()) {
            let _ = fs::remove_file(e.path());
        }
    }
    Ok(())
}

fn remove_other_releases(root: &Path, keep: &[Option<String>]) {
    let dir = root.join(RELEASES);
    let Ok(entries) = fs::read_dir(&dir) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if !keep.iter().any(|k| k.as_deref() == Some(n.as_str())) {
            if let Err(err) = fs::remove_dir_all(e.path()) {
                tracing::warn!(release = %n, error = %err, "could not remove an old feed release");
            }
        }
    }
}

/// Fetches one batch into staging; every blob is hashed as it is written and must be one
/// asked for, of the manifest's size and digest.
fn fetch_batch(
    source: &dyn FeedSource,
    staging: &Staging,
    want: &BTreeMap<String, u64>,
    report: &mut SyncReport,
    limiter: &mut Limiter,
) -> Result<(), SyncError> {
    let list: Vec<String> = want.keys().cloned().collect();
    let body = source.blobs(&list)?;
    // The cap applies to the bytes on the wire, before decompression.
    let mut counted = Counting {
        inner: limiter.reader(body),
        n: 0,
    };
    let mut got = BTreeSet::new();
    let result = (|| {
        let mut r = BatchReader::new(&mut counted)?;
        while let Some(e) = r.next_entry()? {
            let Some(&size) = want.get(&e.sha256) else {
                return Err(SyncError::Tampered(format!(
                    "the portal sent blob {}, which was not asked for",
                    e.sha256
                )));
            };
            if !got.insert(e.sha256.clone()) {
                return Err(SyncError::Tampered(format!(
                    "the portal sent blob {} twice",
                    e.sha256
                )));
            }
            if e.len != size {
                return Err(SyncError::Tampered(format!(
                    "blob {} is {} bytes on the wire, {size} in the signed manifest",
                    e.sha256, e.len
                )));
            }
            store_blob(staging, &e.sha256, size, &mut r.content())?;
            report.fetched_blobs += 1;
            report.fetched_bytes += size;
        }
        Ok(())
    })();
    report.wire_bytes += counted.n;
    report.batches += 1;
    result?;
    if got.len() != want.len() {
        return Err(SyncError::Source(SourceError(format!(
            "the portal answered {} of {} blobs asked for",
            got.len(),
            want.len()
        ))));
    }
    Ok(())
}

/// Writes a blob to a temporary file while hashing it, and names it by its digest only
/// once it matched: a blob in `staging/blobs/` has been verified.
fn store_blob(
    staging: &Staging,
    sha: &str,
    size: u64,
    content: &mut dyn Read,
) -> Result<(), SyncError> {
    let tmp = staging.blobs.join(format!(".part-{sha}"));
    let mut f = File::create(&tmp).map_err(io_err("creating", &tmp))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        let got = content.read(&mut buf).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            SyncError::Source(SourceError(format!("the batch was cut: {e}")))
        })?;
        if got == 0 {
            break;
        }
        h.update(&buf[..got]);
        n += got as u64;
        f.write_all(&buf[..got]).map_err(io_err("writing", &tmp))?;
    }
    drop(f);
    if n != size {
        let _ = fs::remove_file(&tmp);
        return Err(SyncError::Source(SourceError(format!(
            "the batch was cut inside blob {sha} ({n} of {size} bytes)"
        ))));
    }
    if hex(&h.finalize()) != sha {
        let _ = fs::remove_file(&tmp);
        return Err(SyncError::Tampered(format!(
            "blob {sha} from the portal does not match its SHA-256 (altered in transit)"
        )));
    }
    let dest = staging.blob(sha);
    fs::rename(&tmp, &dest).map_err(io_err("storing", &dest))
}

struct Counting<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let got = self.inner.read(buf)?;
        self.n += got as u64;
        Ok(got)
    }
}

/// Points `current` back at `previous` (and `previous` at what was current): a release
/// that fails to load is undone without fetching anything. Returns the release now live.
///
/// Files of the restored release that differ from the one rolled away from get a new
/// modification time: openvas keeps a VT in its cache while the cache entry is newer
/// than the file, so without it the failed release's versions of those scripts would stay
/// loaded. Unchanged files keep theirs and are not parsed again.
pub fn rollback(root: &Path) -> Result<String, SyncError> {
    let _lock = lock(root)?;
    let prev = link_target(root, PREVIOUS).ok_or_else(|| SyncError::Io {
        step: "reading",
        path: root.join(PREVIOUS),
        source: io::Error::new(io::ErrorKind::NotFound, "no previous feed release is kept"),
    })?;
    let cur = link_target(root, CURRENT);
    if let Some(cur) = &cur {
        touch_changed(root, &prev, cur);
    }
    set_link(root, CURRENT, &prev)?;
    if let Some(cur) = cur {
        set_link(root, PREVIOUS, &cur)?;
    }
    fsync_dir(root)?;
    tracing::warn!(release = %prev, "feed rolled back");
    Ok(prev)
}

/// Gives every file of release `to` whose content differs from (or is missing in)
/// release `from` the current time as its modification time. Best effort: a file that
/// cannot be touched is logged; the scanner then may keep its cached version of it.
fn touch_changed(root: &Path, to: &str, from: &str) {
    let (Some(to_m), Some(from_m)) = (release_manifest(root, to), release_manifest(root, from))
    else {
        tracing::warn!("a feed release manifest is unreadable: rolled-back files keep their times");
        return;
    };
    let from_by_path: BTreeMap<&str, &str> = from_m
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.sha256.as_str()))
        .collect();
    let dir = root.join(RELEASES).join(to);
    let now = std::time::SystemTime::now();
    for f in &to_m.files {
        if from_by_path.get(f.path.as_str()) == Some(&f.sha256.as_str()) {
            continue;
        }
        let p = dir.join(tree_path(&f.path));
        if let Err(e) = File::options()
            .write(true)
            .open(&p)
            .and_then(|file| file.set_modified(now))
        {
            tracing::warn!(file = %p.display(), error = %e, "cannot renew a rolled-back feed file's time");
        }
    }
}

fn release_manifest(root: &Path, name: &str) -> Option<FeedManifest> {
    let bytes = fs::read(
        root.join(RELEASES)
            .join(name)
            .join(META)
            .join("manifest.json"),
    )
    .ok()?;
    let m: FeedManifest = serde_json::from_slice(&bytes).ok()?;
    m.check().ok()?;
    Some(m)
}

/// What a sensor needs to know of its live release to judge the load: its name,
/// PLUGIN_SET and the VT count the scanner must list (from the manifest verified when the
/// release was built).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRelease {
    pub name: String,
    pub plugin_set: String,
    pub vt_count: u64,
    /// Whether a previous release is kept to roll back to.
    pub has_previous: bool,
}

/// The live release under the feed root, from its manifest; `None` while none is live
/// or its manifest is unreadable.
pub fn live(root: &Path) -> Option<LiveRelease> {
    let (name, m) = live_manifest(root)?;
    Some(LiveRelease {
        name,
        plugin_set: m.plugin_set,
        vt_count: m.vt_count,
        has_previous: link_target(root, PREVIOUS).is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvt_maps_to_plugins() {
        assert_eq!(tree_path("nvt/2019/x.nasl"), "plugins/2019/x.nasl");
        assert_eq!(
            tree_path("notus/advisories/debian.notus"),
            "notus/advisories/debian.notus"
        );
    }

    #[test]
    fn malformed_offers_are_refused() {
        let mut info = FeedReleaseInfo {
            release_id: 1,
            plugin_set: "202509150400".into(),
            vt_count: 1,
            files: 1,
            bytes: 1,
            manifest_sha256: "a".repeat(64),
            manifest_size: 10,
            signature: String::new(),
        };
        assert_eq!(
            release_name(&info).unwrap(),
            format!("202509150400-{}", "a".repeat(16))
        );
        info.plugin_set = "../x".into();
        assert!(release_name(&info).is_err());
    }
}
