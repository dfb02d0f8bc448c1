//! `sha256sums` files: the feed's own integrity list (`<hex>  <path>` per
//! line, as `sha256sum` writes it). The GPG signature over it is checked
//! by the feed sync, not here; this catches truncated or altered files.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Component, Path};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::FeedError;

/// One file that does not match its `sha256sums` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ChecksumProblem {
    /// Listed but not on disk.
    Missing(String),
    /// On disk with another hash.
    Mismatch(String),
    /// A line that is not `<64 hex>  <relative path>`.
    Malformed(String),
}

impl std::fmt::Display for ChecksumProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChecksumProblem::Missing(p) => write!(f, "{p} is listed in sha256sums but missing"),
            ChecksumProblem::Mismatch(p) => write!(f, "{p} does not match sha256sums"),
            ChecksumProblem::Malformed(l) => write!(f, "malformed sha256sums line {l:?}"),
        }
    }
}

/// Checks every file listed in `dir/sha256sums`. `Ok(None)` when there is
/// no such file; otherwise the problems found (empty: all good).
pub fn verify_sha256sums(dir: &Path) -> Result<Option<Vec<ChecksumProblem>>, FeedError> {
    let list = dir.join("sha256sums");
    let file = match File::open(&list) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(FeedError::read(list, e)),
    };
    let mut problems = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| FeedError::read(&list, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let Some((hex, name)) = parse_line(&line) else {
            problems.push(ChecksumProblem::Malformed(line));
            continue;
        };
        let path = dir.join(name);
        match sha256_file(&path) {
            Ok(actual) if actual.eq_ignore_ascii_case(hex) => {}
            Ok(_) => problems.push(ChecksumProblem::Mismatch(name.to_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                problems.push(ChecksumProblem::Missing(name.to_owned()))
            }
            Err(e) => return Err(FeedError::read(path, e)),
        }
    }
    Ok(Some(problems))
}

/// `<hex>  <name>` or `<hex> *<name>`; the name must stay inside the dir.
fn parse_line(line: &str) -> Option<(&str, &str)> {
    let (hex, rest) = line.split_once(' ')?;
    let name = rest.strip_prefix(' ').or_else(|| rest.strip_prefix('*'))?;
    let name = name.strip_prefix("./").unwrap_or(name);
    let inside = Path::new(name)
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) && !name.is_empty() && inside)
        .then_some((hex, name))
}

fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::tests::TempDir;

    // sha256("hello\n")
    const HELLO: &str = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";

    #[test]
    fn good_bad_missing_and_malformed() {
        let t = TempDir::new("sums");
        t.write("good.nasl", "hello\n");
        t.write("sub/bad.nasl", "tampered\n");
        t.write(
            "sha256sums",
            &format!(
                "{HELLO}  good.nasl\n{HELLO}  sub/bad.nasl\n{HELLO}  gone.nasl\nnot a line\n{HELLO}  ../escape\n"
            ),
        );
        let p = verify_sha256sums(t.path()).unwrap().unwrap();
        assert_eq!(
            p,
            vec![
                ChecksumProblem::Mismatch("sub/bad.nasl".into()),
                ChecksumProblem::Missing("gone.nasl".into()),
                ChecksumProblem::Malformed("not a line".into()),
                ChecksumProblem::Malformed(format!("{HELLO}  ../escape")),
            ]
        );
    }

    #[test]
    fn all_good_is_empty_and_absent_is_none() {
        let t = TempDir::new("sums-ok");
        t.write("good.nasl", "hello\n");
        assert_eq!(verify_sha256sums(t.path()).unwrap(), None);
        t.write("sha256sums", &format!("{HELLO} *good.nasl\n"));
        assert_eq!(verify_sha256sums(t.path()).unwrap(), Some(vec![]));
    }
}
