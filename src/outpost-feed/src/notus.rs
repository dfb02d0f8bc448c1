//! The Notus side of the feed: JSON `*.notus` files.
//!
//! Advisories (`notus/advisories/*.notus`, read by ospd-openvas) hold the
//! VT metadata; products (`notus/products/*.notus`, read by notus-scanner)
//! hold the fixed package versions. Both are one JSON object per file with
//! an `advisories` array whose entries carry an `oid`.

use std::fs::{self, File};
use std::io::{self, BufReader};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::FeedError;

/// What a directory of `*.notus` files holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NotusCount {
    /// Whether the directory exists.
    pub present: bool,
    /// Number of `*.notus` files.
    pub files: u64,
    /// Entries with an `oid` across all files.
    pub advisories: u64,
    /// Newest `last_modification` seen (Unix seconds), advisories only.
    pub newest_modification: Option<u64>,
    /// Files that are not valid Notus JSON: `name: reason`.
    pub problems: Vec<String>,
}

#[derive(Deserialize)]
struct NotusFile {
    #[serde(default)]
    advisories: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    oid: Option<String>,
    last_modification: Option<serde_json::Value>,
}

/// Counts the advisories in `dir/*.notus` (the ospd-openvas side).
pub fn count_notus_advisories(dir: &Path) -> Result<NotusCount, FeedError> {
    count_dir(dir)
}

/// Counts the product entries in `dir/*.notus` (the notus-scanner side).
pub fn count_notus_products(dir: &Path) -> Result<NotusCount, FeedError> {
    let mut c = count_dir(dir)?;
    // Product files carry no modification times.
    c.newest_modification = None;
    Ok(c)
}

fn count_dir(dir: &Path) -> Result<NotusCount, FeedError> {
    let mut out = NotusCount::default();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(FeedError::read(dir, e)),
    };
    out.present = true;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| FeedError::read(dir, e))?;
        let path = entry.path();
        if path.extension().is_some_and(|x| x == "notus") && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    for path in paths {
        out.files += 1;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let file = File::open(&path).map_err(|e| FeedError::read(&path, e))?;
        let len = file
            .metadata()
            .map_err(|e| FeedError::read(&path, e))?
            .len();
        // notus-scanner treats a file under 2 bytes as empty, not broken.
        if len < 2 {
            continue;
        }
        // Streamed: real advisory files run to tens of megabytes.
        let parsed: Result<NotusFile, _> = serde_json::from_reader(BufReader::new(file));
        match parsed {
            Ok(f) => {
                for e in f.advisories {
                    if e.oid.as_deref().is_some_and(|o| !o.is_empty()) {
                        out.advisories += 1;
                    }
                    if let Some(t) = e.last_modification.as_ref().and_then(epoch) {
                        out.newest_modification =
                            Some(out.newest_modification.map_or(t, |n| n.max(t)));
                    }
                }
            }
            Err(e) => out.problems.push(format!("{name}: {e}")),
        }
    }
    Ok(out)
}

/// Notus times are Unix seconds, as a number or (in older files) a string.
fn epoch(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::tests::TempDir;

    const ADVISORIES: &str = r#"{
      "version": "1.0", "spdx-license-identifier": "CC0-1.0", "copyright": "x",
      "family": "Debian Local Security Checks",
      "advisories": [
        {"oid": "1.3.6.1.4.1.25623.1.1.999.1", "title": "a", "creation_date": 1700000000, "last_modification": 1700000100},
        {"oid": "1.3.6.1.4.1.25623.1.1.999.2", "title": "b", "creation_date": 1700000000, "last_modification": "1700000500"},
        {"title": "no oid: not counted"}
      ]
    }"#;

    #[test]
    fn counts_advisories_across_files() {
        let t = TempDir::new("notus");
        t.write("debian_12.notus", ADVISORIES);
        t.write("empty.notus", "{}");
        t.write("tiny.notus", "");
        t.write("sha256sums", "not json");
        let c = count_notus_advisories(t.path()).unwrap();
        assert!(c.present);
        assert_eq!(c.files, 3);
        assert_eq!(c.advisories, 2);
        assert_eq!(c.newest_modification, Some(1_700_000_500));
        assert!(c.problems.is_empty(), "{:?}", c.problems);
    }

    #[test]
    fn broken_json_is_named() {
        let t = TempDir::new("notus-bad");
        t.write("debian_12.notus", "{\"advisories\": [");
        let c = count_notus_advisories(t.path()).unwrap();
        assert_eq!(c.advisories, 0);
        assert_eq!(c.problems.len(), 1);
        assert!(
            c.problems[0].starts_with("debian_12.notus: "),
            "{:?}",
            c.problems
        );
    }

    #[test]
    fn missing_dir_is_absent() {
        let t = TempDir::new("notus-none");
        let c = count_notus_products(&t.path().join("products")).unwrap();
        assert!(!c.present);
        assert_eq!(c.files, 0);
    }
}
