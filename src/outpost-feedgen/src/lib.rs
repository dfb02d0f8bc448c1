//! Synthetic vulnerability feeds with the shape of the Greenbone Community Feed, for tests
//! and benchmarks (docs/feeds.md).
//!
//! A feed is a tree as `greenbone-feed-sync` leaves it:
//!
//! ```text
//! nvt/                      NASL scripts (depth <= 3), .inc libraries, plugin_feed_info.inc,
//!                           sha256sums, sha256sums.asc
//! notus/advisories/         one <family>.notus per distribution family, sha256sums(.asc)
//! notus/products/           <product>.notus, sha256sums(.asc)
//! ```
//!
//! Everything is a pure function of a [`FeedSpec`] (seed and size) and a release day:
//! [`generate`] writes any day's release from scratch, [`advance`] turns day `d` into day
//! `d + 1` in place, touching only what changed (about 65 NASL scripts per 136k, scaled
//! by size, one new script, the Notus files and the `sha256sums` lists). Both give the
//! same bytes. Signatures come from a [`gpg::GpgSigner`] (GnuPG's `gpg`).

pub mod content;
pub mod gpg;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use content::{Script, DAY0, DISTROS, INC_NAMES};

/// Size of the real feed (September 2025).
pub const FULL_SCRIPTS: u32 = 136_302;
pub const FULL_INC: u32 = 136;
pub const FULL_PRODUCT_FILES: u32 = 505;
/// NASL scripts changed in a day, in the real feed.
pub const FULL_DAILY_CHANGES: u32 = 65;

/// The directories that carry their own signed `sha256sums`, relative to the tree.
pub const SIGNED_DIRS: [&str; 3] = ["nvt", "notus/advisories", "notus/products"];
pub const SUMS: &str = "sha256sums";
pub const SUMS_SIG: &str = "sha256sums.asc";

#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("{step} {path}: {source}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not day {day} of this feed: {reason}")]
    NotThisFeed {
        path: PathBuf,
        day: u32,
        reason: String,
    },
    #[error("gpg: {0}")]
    Gpg(String),
    #[error("invalid feed size: {0}")]
    Spec(String),
}

fn io_err<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> GenError + 'a {
    move |source| GenError::Io {
        step,
        path: path.to_path_buf(),
        source,
    }
}

/// Which feed: the seed and the number of NASL scripts on day 0. Everything else (the
/// `.inc` files, Notus advisories and products, the daily churn) scales from the real
/// feed's proportions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedSpec {
    pub seed: u64,
    pub scripts: u32,
}

fn scaled(full: u32, scripts: u32, min: u32) -> u32 {
    let v = (u64::from(full) * u64::from(scripts) + u64::from(FULL_SCRIPTS) / 2)
        / u64::from(FULL_SCRIPTS);
    (v as u32).max(min)
}

impl FeedSpec {
    pub fn new(seed: u64, scripts: u32) -> Result<FeedSpec, GenError> {
        if scripts < 20 {
            return Err(GenError::Spec(format!(
                "{scripts} scripts; at least 20 are needed for every kind of file"
            )));
        }
        Ok(FeedSpec { seed, scripts })
    }

    /// The real feed's size.
    pub fn full(seed: u64) -> FeedSpec {
        FeedSpec {
            seed,
            scripts: FULL_SCRIPTS,
        }
    }

    /// `.inc` files, `plugin_feed_info.inc` included.
    pub fn inc_files(&self) -> u32 {
        scaled(FULL_INC, self.scripts, 4)
    }

    /// Notus advisories (entries, across the nine family files): a third of the scripts.
    pub fn advisories(&self) -> u32 {
        (self.scripts / 3).max(1)
    }

    pub fn product_files(&self) -> u32 {
        scaled(FULL_PRODUCT_FILES, self.scripts, DISTROS.len() as u32)
    }

    /// NASL scripts changed on each release day (besides the one new script).
    pub fn daily_changes(&self) -> u32 {
        scaled(FULL_DAILY_CHANGES, self.scripts, 1)
    }

    /// NASL scripts in the release of `day` (one new script a day).
    pub fn scripts_on(&self, day: u32) -> u32 {
        self.scripts + day
    }

    /// Whether script `i` copies another script's OID (a few do, as in real mirrors).
    fn duplicate_of(i: u32) -> Option<u32> {
        (i % 7_919 == 7).then(|| i - 4)
    }

    /// Local security checks: the scripts Notus advisories share OIDs with.
    fn is_lsc(i: u32) -> bool {
        i % 5 < 2
    }

    pub fn script_oid(&self, i: u32) -> String {
        let i = Self::duplicate_of(i).unwrap_or(i);
        if Self::is_lsc(i) {
            format!("1.3.6.1.4.1.25623.1.1.2.{}.{}", 2015 + i % 10, 100_000 + i)
        } else {
            format!("1.3.6.1.4.1.25623.1.0.{}", 100_000 + i)
        }
    }

    /// Path of script `i` under `nvt/`: local checks two levels down, like
    /// `2023/debian/gb_debian_2023_0123.nasl`; others in a year directory or at the top.
    pub fn script_path(&self, i: u32) -> String {
        let year = 2008 + i % 18;
        if Self::is_lsc(i) {
            let d = DISTROS[(i as usize / 5) % DISTROS.len()].0;
            format!("{year}/{d}/gb_{d}_{year}_{i:06}.nasl")
        } else if i % 5 == 2 {
            format!("{year}/gb_synth_{i:06}.nasl")
        } else {
            format!("gb_synth_{i:06}_vuln.nasl")
        }
    }

    /// Advisory `j`'s OID: most share a local check's OID; every tenth is Notus-only.
    pub fn advisory_oid(&self, j: u32) -> String {
        if j % 10 == 0 {
            format!("1.3.6.1.4.1.25623.1.1.2.9.{}", 500_000 + j)
        } else {
            // The j-th local check: indices 0, 1, 5, 6, 10, 11, ...
            self.script_oid(5 * (j / 2) + j % 2)
        }
    }

    fn inc_name(n: u32) -> String {
        match INC_NAMES.get(n as usize) {
            Some(name) => (*name).to_owned(),
            None => format!("gb_synth_lib_{n:03}.inc"),
        }
    }

    fn product_name(&self, p: u32) -> (String, &'static str, &'static str) {
        let (d, _, kind) = DISTROS[(p as usize) % DISTROS.len()];
        (format!("{d}_{}", p / DISTROS.len() as u32), d, kind)
    }

    /// The scripts changed on `day` (day 0 changes nothing), not counting the new one.
    fn changed_on(&self, day: u32) -> BTreeSet<u32> {
        if day == 0 {
            return BTreeSet::new();
        }
        let existing = u64::from(self.scripts_on(day - 1));
        let mut r = Rng::new(&[self.seed, 0x0063_6867, u64::from(day)]);
        let mut set = BTreeSet::new();
        let want = self.daily_changes().min(existing as u32) as usize;
        while set.len() < want {
            set.insert(r.below(existing) as u32);
        }
        set
    }

    /// Advisories updated on `day`: one in each family file, so every advisory file is
    /// rewritten at every release, as upstream's are.
    fn advisories_changed_on(&self, day: u32) -> BTreeSet<u32> {
        if day == 0 {
            return BTreeSet::new();
        }
        let n = self.advisories();
        let files = DISTROS.len() as u32;
        let mut r = Rng::new(&[self.seed, 0x0061_6463, u64::from(day)]);
        (0..files.min(n))
            .map(|f| {
                let in_file = (n - f).div_ceil(files);
                f + files * r.below(u64::from(in_file)) as u32
            })
            .collect()
    }

    /// Revision and day of last change of every changed script / advisory up to `day`.
    fn revisions(&self, day: u32) -> (Revisions, Revisions) {
        let (mut s, mut a) = (HashMap::new(), HashMap::new());
        for d in 1..=day {
            for i in self.changed_on(d) {
                let e = s.entry(i).or_insert((0, 0));
                *e = (e.0 + 1, d);
            }
            for j in self.advisories_changed_on(d) {
                let e = a.entry(j).or_insert((0, 0));
                *e = (e.0 + 1, d);
            }
        }
        (s, a)
    }
}

/// Index -> (revision, day of its last change).
type Revisions = HashMap<u32, (u32, u32)>;

/// What a release holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub day: u32,
    pub plugin_set: String,
    pub nasl_scripts: u32,
    /// `.inc` files, `plugin_feed_info.inc` included.
    pub inc_files: u32,
    pub advisories: u32,
    pub advisory_files: u32,
    pub product_files: u32,
    /// Distinct OIDs across NASL scripts and Notus advisories: the VT count ospd-openvas
    /// reports for this feed.
    pub vt_count: u64,
    /// Content files (without `sha256sums` and signatures).
    pub files: u64,
    pub bytes: u64,
    /// Paths (relative to the tree) written by this call.
    pub written: Vec<String>,
    /// Bytes of content files written by this call.
    pub written_bytes: u64,
}

/// Writes a file and records it for the `sha256sums` of its signed directory.
struct Writer<'a> {
    root: &'a Path,
    sums: BTreeMap<&'static str, BTreeMap<String, String>>,
    written: Vec<String>,
    written_bytes: u64,
}

impl Writer<'_> {
    fn put(&mut self, dir: &'static str, rel: &str, text: &str) -> Result<(), GenError> {
        let path = self.root.join(dir).join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
        }
        fs::write(&path, text).map_err(io_err("writing", &path))?;
        let hash = hex::encode(Sha256::digest(text.as_bytes()));
        self.sums
            .entry(dir)
            .or_default()
            .insert(rel.to_owned(), hash);
        self.written.push(format!("{dir}/{rel}"));
        self.written_bytes += text.len() as u64;
        Ok(())
    }
}

fn release_time(day: u32) -> i64 {
    DAY0 + i64::from(day) * 86_400
}

/// Writes the release of `day` into `out` (created; must not hold another feed) and signs
/// its `sha256sums` with `signer` when given (an unsigned tree otherwise).
pub fn generate(
    out: &Path,
    spec: &FeedSpec,
    day: u32,
    signer: Option<&gpg::GpgSigner>,
) -> Result<Summary, GenError> {
    fs::create_dir_all(out).map_err(io_err("creating", out))?;
    let (srev, arev) = spec.revisions(day);
    let mut w = Writer {
        root: out,
        sums: BTreeMap::new(),
        written: Vec::new(),
        written_bytes: 0,
    };
    for i in 0..spec.scripts_on(day) {
        write_script(&mut w, spec, i, day, &srev)?;
    }
    for n in 0..spec.inc_files() - 1 {
        let name = FeedSpec::inc_name(n);
        w.put("nvt", &name, &content::inc(spec.seed, n, &name))?;
    }
    w.put(
        "nvt",
        "plugin_feed_info.inc",
        &content::plugin_feed_info(release_time(day)),
    )?;
    write_notus(&mut w, spec, &arev, None)?;
    finish(w, spec, day, signer)
}

fn write_script(
    w: &mut Writer<'_>,
    spec: &FeedSpec,
    i: u32,
    day: u32,
    srev: &Revisions,
) -> Result<(), GenError> {
    let (revision, changed_on) = srev.get(&i).copied().unwrap_or((0, 0));
    // A script added on day d counts as changed on d.
    let changed_on = if i >= spec.scripts && revision == 0 {
        i - spec.scripts + 1
    } else {
        changed_on
    };
    debug_assert!(i < spec.scripts_on(day));
    let (oid, path) = (spec.script_oid(i), spec.script_path(i));
    let text = content::nasl(
        spec.seed,
        &Script {
            index: i,
            oid: &oid,
            path: &path,
            revision,
            changed_on,
        },
    );
    w.put("nvt", &path, &text)
}

/// Writes every advisory file and the product files (all of them, or only those holding
/// an advisory of `only`).
fn write_notus(
    w: &mut Writer<'_>,
    spec: &FeedSpec,
    arev: &Revisions,
    only: Option<&BTreeSet<u32>>,
) -> Result<(), GenError> {
    let files = DISTROS.len() as u32;
    let n = spec.advisories();
    let rev = |j: u32| arev.get(&j).copied().unwrap_or((0, 0));
    for (f, (name, family, _)) in DISTROS.iter().enumerate() {
        let entries = (f as u32..n)
            .step_by(files as usize)
            .map(|j| {
                let (r, d) = rev(j);
                content::advisory(spec.seed, j, &spec.advisory_oid(j), r, d)
            })
            .collect();
        w.put(
            "notus/advisories",
            &format!("{name}.notus"),
            &content::advisory_file(family, entries),
        )?;
    }
    let p_count = spec.product_files();
    for p in 0..p_count {
        let members = (p..n).step_by(p_count as usize);
        if let Some(only) = only {
            if !members.clone().any(|j| only.contains(&j)) {
                continue;
            }
        }
        let entries = members
            .map(|j| content::product_entry(j, &spec.advisory_oid(j), rev(j).0))
            .collect();
        let (name, distro, kind) = spec.product_name(p);
        w.put(
            "notus/products",
            &format!("{name}.notus"),
            &content::product_file(&format!("{distro} {}", p / files), kind, entries),
        )?;
    }
    Ok(())
}

/// Writes the `sha256sums` lists (merged over `old` entries for [`advance`]), signs them,
/// and counts the release.
fn finish(
    w: Writer<'_>,
    spec: &FeedSpec,
    day: u32,
    signer: Option<&gpg::GpgSigner>,
) -> Result<Summary, GenError> {
    finish_with(w, spec, day, signer, BTreeMap::new())
}

fn finish_with(
    w: Writer<'_>,
    spec: &FeedSpec,
    day: u32,
    signer: Option<&gpg::GpgSigner>,
    mut old: BTreeMap<&'static str, BTreeMap<String, String>>,
) -> Result<Summary, GenError> {
    let root = w.root;
    let (mut files, mut bytes) = (0u64, 0u64);
    for dir in SIGNED_DIRS {
        let mut list = old.remove(dir).unwrap_or_default();
        if let Some(new) = w.sums.get(dir) {
            list.extend(new.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        // sha256sum's own format, sorted by path so the file is stable.
        let text: String = list
            .iter()
            .map(|(path, hash)| format!("{hash}  {path}\n"))
            .collect();
        let sums = root.join(dir).join(SUMS);
        fs::write(&sums, text).map_err(io_err("writing", &sums))?;
        let sig = root.join(dir).join(SUMS_SIG);
        match signer {
            Some(s) => s.sign(&sums, &sig)?,
            None => match fs::remove_file(&sig) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing", &sig)(e)),
            },
        }
        for path in list.keys() {
            let p = root.join(dir).join(path);
            bytes += fs::metadata(&p).map_err(io_err("reading", &p))?.len();
            files += 1;
        }
    }
    // As ospd-openvas lists them: distinct NASL OIDs plus distinct advisory OIDs, the two
    // not merged (an advisory sharing a script's OID is listed twice).
    let nasl_oids: BTreeSet<String> = (0..spec.scripts_on(day))
        .map(|i| spec.script_oid(i))
        .collect();
    let advisory_oids: BTreeSet<String> = (0..spec.advisories())
        .map(|j| spec.advisory_oid(j))
        .collect();
    Ok(Summary {
        day,
        plugin_set: content::plugin_set(release_time(day)),
        nasl_scripts: spec.scripts_on(day),
        inc_files: spec.inc_files(),
        advisories: spec.advisories(),
        advisory_files: DISTROS.len() as u32,
        product_files: spec.product_files(),
        vt_count: (nasl_oids.len() + advisory_oids.len()) as u64,
        files,
        bytes,
        written: w.written,
        written_bytes: w.written_bytes,
    })
}

/// Reads a `sha256sums` file into path -> hash.
fn read_sums(path: &Path) -> Result<BTreeMap<String, String>, GenError> {
    let text = fs::read_to_string(path).map_err(io_err("reading", path))?;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let (hash, name) = line.split_once("  ").ok_or_else(|| GenError::NotThisFeed {
            path: path.to_path_buf(),
            day: 0,
            reason: format!("unreadable line {line:?}"),
        })?;
        out.insert(name.to_owned(), hash.to_owned());
    }
    Ok(out)
}

/// Turns the release of `day` in `dir` into the release of `day + 1`, rewriting only the
/// files that change (unchanged files keep their bytes and modification times).
pub fn advance(
    dir: &Path,
    spec: &FeedSpec,
    day: u32,
    signer: Option<&gpg::GpgSigner>,
) -> Result<Summary, GenError> {
    let info = dir.join("nvt/plugin_feed_info.inc");
    let have = fs::read_to_string(&info).map_err(io_err("reading", &info))?;
    if have != content::plugin_feed_info(release_time(day)) {
        return Err(GenError::NotThisFeed {
            path: dir.to_path_buf(),
            day,
            reason: "its plugin_feed_info.inc has another PLUGIN_SET".into(),
        });
    }
    let next = day + 1;
    let (srev, arev) = spec.revisions(next);
    let mut old = BTreeMap::new();
    for d in SIGNED_DIRS {
        old.insert(d, read_sums(&dir.join(d).join(SUMS))?);
    }
    let mut w = Writer {
        root: dir,
        sums: BTreeMap::new(),
        written: Vec::new(),
        written_bytes: 0,
    };
    let mut scripts = spec.changed_on(next);
    scripts.insert(spec.scripts_on(day));
    for i in scripts {
        write_script(&mut w, spec, i, next, &srev)?;
    }
    w.put(
        "nvt",
        "plugin_feed_info.inc",
        &content::plugin_feed_info(release_time(next)),
    )?;
    write_notus(&mut w, spec, &arev, Some(&spec.advisories_changed_on(next)))?;
    finish_with(w, spec, next, signer, old)
}

/// A small, fast, seedable generator (SplitMix64). Hand-written rather than a crate so
/// the feed's bytes never change with a dependency's version.
pub struct Rng(u64);

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    pub fn new(parts: &[u64]) -> Rng {
        let mut s = 0x0000_7574_706f_7374_u64;
        for p in parts {
            s = mix(s.wrapping_add(0x9E37_79B9_7F4A_7C15) ^ *p);
        }
        Rng(s)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform-enough in `0..n` (`n` > 0; 0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
}

/// (year, month, day, hour, minute, second) of a Unix time, UTC.
pub use outpost_feed::civil_from_unix as civil;
