//! Checking a feed tree against its signed `sha256sums` lists, storing its files as blobs
//! and reading what the manifest reports (PLUGIN_SET, Notus version, OIDs) on the way.
//!
//! Every file is read once into memory, hashed, compared, parsed and stored from those same
//! bytes, so a file changed on disk during the import cannot slip in unchecked.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::path::Path;

use outpost_feed::FeedFile;
use serde::Deserialize;

use super::blobs::{sha256_hex, BlobStore};
use super::openpgp::Keyring;
use super::{io_err, ImportError};

/// The directories with their own signed `sha256sums`, as `greenbone-feed-sync` lays
/// them out; `nvt` is required, the Notus ones are used when present.
pub const SIGNED_DIRS: [&str; 3] = ["nvt", "notus/advisories", "notus/products"];
pub const SUMS: &str = "sha256sums";
pub const SUMS_SIG: &str = "sha256sums.asc";
/// Largest file an import reads (into memory). The real feed's largest are its
/// `sha256sums` (~15 MB) and Notus advisory files (tens of MB).
pub const MAX_FILE: u64 = 256 * 1024 * 1024;

/// One way the tree differs from its signed lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeProblem {
    /// Listed in `list` but absent from the tree.
    Missing { path: String, list: String },
    /// Its bytes do not match its line in `list`.
    Altered { path: String, list: String },
    /// In the tree, but in no signed list.
    Unlisted(String),
    /// A symbolic link, device or other non-regular file, or a name that is not UTF-8.
    NotAFile(String),
    /// Larger than [`MAX_FILE`]: no feed file is, so it cannot match its list.
    TooLarge(String),
}

impl fmt::Display for TreeProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TreeProblem::Missing { path, list } => {
                write!(f, "{path} is listed in {list} but missing from the tree")
            }
            TreeProblem::Altered { path, list } => {
                write!(f, "{path} is altered: its SHA-256 does not match {list}")
            }
            TreeProblem::Unlisted(path) => {
                write!(f, "{path} is not listed in any signed sha256sums")
            }
            TreeProblem::NotAFile(path) => write!(f, "{path} is not a regular file"),
            TreeProblem::TooLarge(path) => {
                write!(
                    f,
                    "{path} is larger than {MAX_FILE} bytes, more than any feed file"
                )
            }
        }
    }
}

/// What the checked tree holds.
#[derive(Debug, Default)]
pub struct VerifiedTree {
    /// Sorted by path.
    pub files: Vec<FeedFile>,
    /// OpenPGP fingerprints that signed the lists, sorted, once each.
    pub signers: Vec<String>,
    pub plugin_set: Option<String>,
    pub notus_versions: BTreeSet<String>,
    pub nasl_scripts: u64,
    pub nasl_oids: BTreeSet<String>,
    pub advisories: u64,
    pub advisory_oids: BTreeSet<String>,
    /// Blobs this import added (removed again when the import is refused).
    pub added: Vec<String>,
    pub added_bytes: u64,
}

/// A signed list: path under its directory -> hex digest.
struct SignedList {
    dir: &'static str,
    entries: BTreeMap<String, String>,
    seen: BTreeSet<String>,
}

/// Reads and checks the tree at `root`, storing every file in `blobs`. On a refusal the
/// blobs it added are removed again.
pub fn verify_tree(
    root: &Path,
    keyring: &Keyring,
    blobs: &BlobStore,
) -> Result<VerifiedTree, ImportError> {
    let mut out = VerifiedTree::default();
    let r = verify_into(root, keyring, blobs, &mut out);
    if r.is_err() {
        for sha in &out.added {
            if let Err(e) = blobs.remove(sha) {
                tracing::warn!(blob = %sha, error = %e, "could not remove a blob of a refused import");
            }
        }
    }
    r.map(|()| out)
}

fn verify_into(
    root: &Path,
    keyring: &Keyring,
    blobs: &BlobStore,
    out: &mut VerifiedTree,
) -> Result<(), ImportError> {
    if !root.join("nvt").is_dir() {
        return Err(ImportError::NotAFeed(format!(
            "{} has no nvt directory (expected the layout greenbone-feed-sync leaves: nvt/, notus/advisories/, notus/products/)",
            root.display()
        )));
    }
    // Signatures first: nothing of an unsigned or wrongly signed tree is stored.
    let mut lists = Vec::new();
    let mut signers = BTreeSet::new();
    for dir in SIGNED_DIRS {
        if !root.join(dir).is_dir() {
            continue;
        }
        let list = format!("{dir}/{SUMS}");
        let sums_path = root.join(&list);
        let sig_path = root.join(dir).join(SUMS_SIG);
        for p in [&sums_path, &sig_path] {
            if fs::metadata(p).is_ok_and(|m| m.len() > MAX_FILE) {
                return Err(ImportError::NotAFeed(format!(
                    "{} is larger than {MAX_FILE} bytes",
                    p.display()
                )));
            }
        }
        let sums = match fs::read(&sums_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ImportError::NotAFeed(format!(
                    "{list} is missing: every signed directory needs one"
                )))
            }
            Err(e) => return Err(io_err("reading", &sums_path)(e)),
        };
        let sig = match fs::read(&sig_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ImportError::Unsigned { list })
            }
            Err(e) => return Err(io_err("reading", &sig_path)(e)),
        };
        let signer = keyring
            .verify(&sums, &sig)?
            .map_err(|reason| ImportError::Signature {
                list: list.clone(),
                reason,
            })?;
        tracing::info!(list = %list, signer = %signer, "signature verified");
        signers.insert(signer);
        let entries = parse_sums(&list, &sums)?;
        // The lists themselves are part of the release: a sensor's scanner checks them.
        for (name, bytes) in [(SUMS, &sums), (SUMS_SIG, &sig)] {
            store(out, blobs, &format!("{dir}/{name}"), bytes)?;
        }
        lists.push(SignedList {
            dir,
            entries,
            seen: BTreeSet::new(),
        });
    }
    out.signers = signers.into_iter().collect();

    let mut problems = Vec::new();
    let mut paths = Vec::new();
    walk(root, root, &mut paths, &mut problems)?;
    paths.sort();
    for path in paths {
        let owner = lists
            .iter_mut()
            .find(|l| path.strip_prefix(l.dir).is_some_and(|r| r.starts_with('/')));
        let Some(owner) = owner else {
            problems.push(TreeProblem::Unlisted(path));
            continue;
        };
        let rel = &path[owner.dir.len() + 1..];
        if rel == SUMS || rel == SUMS_SIG {
            continue;
        }
        let Some(expected) = owner.entries.get(rel) else {
            problems.push(TreeProblem::Unlisted(path));
            continue;
        };
        owner.seen.insert(rel.to_owned());
        let full = root.join(&path);
        let len = fs::symlink_metadata(&full)
            .map_err(io_err("reading", &full))?
            .len();
        if len > MAX_FILE {
            problems.push(TreeProblem::TooLarge(path));
            continue;
        }
        let bytes = fs::read(&full).map_err(io_err("reading", &full))?;
        if sha256_hex(&bytes) != *expected {
            problems.push(TreeProblem::Altered {
                path,
                list: format!("{}/{SUMS}", owner.dir),
            });
            continue;
        }
        // A refused tree stores nothing worth keeping; stop parsing once it is refused.
        if problems.is_empty() {
            read_content(out, owner.dir, &path, &bytes)?;
            store(out, blobs, &path, &bytes)?;
        }
    }
    for l in &lists {
        for rel in l.entries.keys().filter(|r| !l.seen.contains(*r)) {
            problems.push(TreeProblem::Missing {
                path: format!("{}/{rel}", l.dir),
                list: format!("{}/{SUMS}", l.dir),
            });
        }
    }
    if !problems.is_empty() {
        return Err(ImportError::Tree(problems));
    }
    out.files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(())
}

fn store(
    out: &mut VerifiedTree,
    blobs: &BlobStore,
    path: &str,
    bytes: &[u8],
) -> Result<(), ImportError> {
    let sha256 = sha256_hex(bytes);
    if blobs
        .put(&sha256, bytes)
        .map_err(io_err("storing", &blobs.path(&sha256)))?
    {
        out.added.push(sha256.clone());
        out.added_bytes += bytes.len() as u64;
    }
    out.files.push(FeedFile {
        path: path.to_owned(),
        size: bytes.len() as u64,
        sha256,
    });
    Ok(())
}

/// Every regular file under `dir`, relative to `root`; anything else is a problem.
fn walk(
    root: &Path,
    dir: &Path,
    out: &mut Vec<String>,
    problems: &mut Vec<TreeProblem>,
) -> Result<(), ImportError> {
    let entries = fs::read_dir(dir).map_err(io_err("reading", dir))?;
    for e in entries {
        let e = e.map_err(io_err("reading", dir))?;
        let path = e.path();
        let rel = path.strip_prefix(root).unwrap_or(&path);
        let Some(name) = rel.to_str().map(str::to_owned) else {
            problems.push(TreeProblem::NotAFile(rel.to_string_lossy().into_owned()));
            continue;
        };
        // Not following links: the feed has none, and one could point anywhere.
        let kind = e.file_type().map_err(io_err("reading", &path))?;
        if kind.is_dir() {
            walk(root, &path, out, problems)?;
        } else if kind.is_file() {
            out.push(name);
        } else {
            problems.push(TreeProblem::NotAFile(name));
        }
    }
    Ok(())
}

/// `<64 hex>  <path>` (or ` *<path>`) per line, paths inside the directory.
fn parse_sums(list: &str, bytes: &[u8]) -> Result<BTreeMap<String, String>, ImportError> {
    let bad = |line: usize, reason: String| ImportError::BadList {
        list: list.to_owned(),
        line,
        reason,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| bad(0, format!("not UTF-8: {e}")))?;
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let (hex, rest) = line
            .split_once(' ')
            .ok_or_else(|| bad(n, "expected \"<sha256>  <path>\"".into()))?;
        let name = rest
            .strip_prefix(' ')
            .or_else(|| rest.strip_prefix('*'))
            .ok_or_else(|| bad(n, "expected \"<sha256>  <path>\"".into()))?;
        let name = name.strip_prefix("./").unwrap_or(name);
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(n, format!("{hex:?} is not a SHA-256 digest")));
        }
        if name.is_empty()
            || !name
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..")
        {
            return Err(bad(
                n,
                format!("{name:?} is not a path inside the directory"),
            ));
        }
        if name == SUMS || name == SUMS_SIG {
            return Err(bad(n, format!("it lists {name} itself")));
        }
        let hex = hex.to_ascii_lowercase();
        if let Some(old) = out.insert(name.to_owned(), hex.clone()) {
            if old != hex {
                return Err(bad(
                    n,
                    format!("{name} is listed twice with different digests"),
                ));
            }
        }
    }
    Ok(out)
}

#[derive(Deserialize)]
struct NotusAdvisories {
    version: Option<String>,
    #[serde(default)]
    advisories: Vec<NotusEntry>,
}

#[derive(Deserialize)]
struct NotusEntry {
    oid: Option<String>,
}

/// The `script_oid("...")` of a NASL script's description block.
fn script_oid(text: &str) -> Option<&str> {
    let start = text.find("script_oid(\"")? + "script_oid(\"".len();
    let len = text[start..].find('"')?;
    let oid = text[start..start + len].trim();
    (!oid.is_empty()).then_some(oid)
}

fn read_content(
    out: &mut VerifiedTree,
    dir: &str,
    path: &str,
    bytes: &[u8],
) -> Result<(), ImportError> {
    let content = |reason: String| ImportError::Content {
        path: path.to_owned(),
        reason,
    };
    if dir == "nvt" && path.ends_with(".nasl") {
        out.nasl_scripts += 1;
        match script_oid(&String::from_utf8_lossy(bytes)) {
            Some(oid) => {
                out.nasl_oids.insert(oid.to_owned());
            }
            // openvas would not load it either, so it adds no VT; not worth a refusal.
            None => tracing::warn!(path, "NASL script without script_oid"),
        }
    } else if path == "nvt/plugin_feed_info.inc" {
        let info = outpost_feed::parse_feed_info(&String::from_utf8_lossy(bytes));
        let set = info
            .plugin_set
            .ok_or_else(|| content("it has no PLUGIN_SET".into()))?;
        if outpost_feed::parse_plugin_set(&set).is_none() {
            return Err(content(format!("PLUGIN_SET {set:?} is not YYYYMMDDhhmm")));
        }
        out.plugin_set = Some(set);
    } else if dir == "notus/advisories" && path.ends_with(".notus") {
        // notus-scanner treats a file under 2 bytes as empty, not broken.
        if bytes.len() < 2 {
            return Ok(());
        }
        let f: NotusAdvisories = serde_json::from_slice(bytes)
            .map_err(|e| content(format!("not Notus advisory JSON: {e}")))?;
        if let Some(v) = f.version {
            out.notus_versions.insert(v);
        }
        for a in f.advisories {
            if let Some(oid) = a.oid.filter(|o| !o.is_empty()) {
                out.advisories += 1;
                out.advisory_oids.insert(oid);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_lines() {
        let h = "a".repeat(64);
        let ok = format!("{h}  a.nasl\n{h} *sub/b.nasl\n\n{h}  ./c.inc\n");
        let m = parse_sums("nvt/sha256sums", ok.as_bytes()).unwrap();
        assert_eq!(
            m.keys().collect::<Vec<_>>(),
            ["a.nasl", "c.inc", "sub/b.nasl"]
        );
        for bad in [
            format!("{h} a.nasl"),
            format!("{h}  ../x"),
            format!("{h}  /etc/passwd"),
            format!("{h}  sha256sums"),
            "abc  a.nasl".to_owned(),
            format!("{h}  a\n{}  a", "b".repeat(64)),
        ] {
            let e = parse_sums("nvt/sha256sums", bad.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("nvt/sha256sums line "), "{e}");
        }
    }

    #[test]
    fn oid_of_a_description_block() {
        let t = "if(description)\n{\n  script_oid(\"1.3.6.1.4.1.25623.1.0.1\");\n";
        assert_eq!(script_oid(t), Some("1.3.6.1.4.1.25623.1.0.1"));
        assert_eq!(script_oid("exit(0);"), None);
        assert_eq!(script_oid("script_oid(\"\");"), None);
    }
}
