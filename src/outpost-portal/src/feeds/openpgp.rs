//! Checking the upstream feed's OpenPGP signatures.
//!
//! Verification is delegated to Debian's `gpgv`: GnuPG's verify-only tool, the one apt
//! itself uses, maintained with GnuPG and already on every Debian host. It checks a
//! detached signature against exactly the keyring it is given and nothing else (no trust
//! database, no agent, no network), and reports machine-readable status lines. The
//! alternatives (the `pgp` or `sequoia-openpgp` crates) would add a large dependency tree
//! to the portal and the Yocto crate list for the same check.
//!
//! The only OpenPGP handling done here is ASCII-armour removal (base64, RFC 4880 §6) for
//! keyrings given as `.asc` files, since gpgv 2.2 reads binary keyrings only.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    #[error("it is signed by key {0}, which is not in the feed keyring")]
    UnknownKey(String),
    #[error("the signature does not match the file (altered after signing, or a signature of another file)")]
    Bad,
    #[error("it is signed by key {0}, which has expired")]
    ExpiredKey(String),
    #[error("it is signed by key {0}, which is revoked")]
    RevokedKey(String),
    #[error("the signature file holds no OpenPGP signature")]
    NoSignature,
    #[error("gpgv refused it: {0}")]
    Other(String),
}

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("reading the feed keyring {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the feed keyring {path} holds no OpenPGP key: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("writing a working copy of the feed keyring: {0}")]
    Write(std::io::Error),
    #[error("running gpgv (install Debian's gpgv package): {0}")]
    Gpgv(std::io::Error),
}

/// The operator's keyring, as a binary file gpgv reads, in a private working directory.
pub struct Keyring {
    /// Also gpgv's home directory, so no default keyring is ever consulted.
    work: PathBuf,
    binary: PathBuf,
}

const ARMOR_BEGIN: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";

/// The binary packets of every armoured public key block in `text`.
fn dearmor(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut lines = text.lines().map(str::trim_end);
    let mut blocks = 0;
    while let Some(line) = lines.next() {
        if line != ARMOR_BEGIN {
            continue;
        }
        blocks += 1;
        // Armour headers ("Comment: ...") end at the first empty line.
        for h in lines.by_ref() {
            if h.trim().is_empty() {
                break;
            }
        }
        let mut b64 = String::new();
        let mut ended = false;
        for l in lines.by_ref() {
            if l.starts_with("-----END PGP PUBLIC KEY BLOCK-----") {
                ended = true;
                break;
            }
            // The checksum line; gpgv checks the packets themselves.
            if l.starts_with('=') {
                continue;
            }
            b64.push_str(l.trim());
        }
        if !ended {
            return Err(format!("armour block {blocks} has no END line"));
        }
        out.extend(
            B64.decode(b64.as_bytes())
                .map_err(|e| format!("armour block {blocks} is not base64: {e}"))?,
        );
    }
    if blocks == 0 {
        return Err("no \"-----BEGIN PGP PUBLIC KEY BLOCK-----\"".into());
    }
    Ok(out)
}

impl Keyring {
    /// Loads an armoured (`.asc`, possibly several blocks) or binary keyring and writes
    /// the binary copy gpgv reads into `work` (a private directory the caller removes).
    pub fn load(path: &Path, work: &Path) -> Result<Keyring, KeyringError> {
        let bytes = std::fs::read(path).map_err(|source| KeyringError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |reason: String| KeyringError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let binary = match bytes.first() {
            None => return Err(invalid("the file is empty".into())),
            // Every OpenPGP packet header has the top bit set.
            Some(b) if b & 0x80 != 0 => bytes,
            Some(_) => dearmor(&String::from_utf8_lossy(&bytes)).map_err(invalid)?,
        };
        if binary.is_empty() {
            return Err(invalid("the armour holds no packets".into()));
        }
        let out = work.join("keyring.gpg");
        let mut f = std::fs::File::create(&out).map_err(KeyringError::Write)?;
        f.write_all(&binary).map_err(KeyringError::Write)?;
        Ok(Keyring {
            work: work.to_path_buf(),
            binary: out,
        })
    }

    /// Checks the detached signature `sig` over `data` (both in memory, written to the
    /// private directory first so the bytes checked are the bytes used). Returns the
    /// fingerprint of the primary key that made the signature.
    pub fn verify(
        &self,
        data: &[u8],
        sig: &[u8],
    ) -> Result<Result<String, SigError>, KeyringError> {
        let data_path = self.work.join("data");
        let sig_path = self.work.join("data.sig");
        std::fs::write(&data_path, data).map_err(KeyringError::Write)?;
        std::fs::write(&sig_path, sig).map_err(KeyringError::Write)?;
        let out = Command::new("gpgv")
            .arg("--homedir")
            .arg(&self.work)
            .arg("--keyring")
            .arg(&self.binary)
            .args(["--status-fd", "1"])
            .arg(&sig_path)
            .arg(&data_path)
            .env("LC_ALL", "C")
            .output()
            .map_err(KeyringError::Gpgv)?;
        let status = String::from_utf8_lossy(&out.stdout);
        Ok(judge(
            out.status.success(),
            &status,
            &String::from_utf8_lossy(&out.stderr),
        ))
    }
}

/// The verdict from gpgv's exit status and `[GNUPG:]` status lines.
fn judge(success: bool, status: &str, stderr: &str) -> Result<String, SigError> {
    let mut valid = None;
    for line in status.lines() {
        let mut f = line.split_whitespace();
        if f.next() != Some("[GNUPG:]") {
            continue;
        }
        let kw = f.next().unwrap_or_default();
        let rest: Vec<&str> = f.collect();
        let arg = |i: usize| rest.get(i).copied().unwrap_or("?").to_owned();
        match kw {
            "BADSIG" => return Err(SigError::Bad),
            "EXPKEYSIG" => return Err(SigError::ExpiredKey(arg(0))),
            "REVKEYSIG" => return Err(SigError::RevokedKey(arg(0))),
            "NO_PUBKEY" => return Err(SigError::UnknownKey(arg(0))),
            "NODATA" => return Err(SigError::NoSignature),
            // The last field is the primary key's fingerprint (the first, the subkey's).
            "VALIDSIG" => valid = rest.last().or(rest.first()).map(|s| (*s).to_owned()),
            _ => {}
        }
    }
    match valid {
        Some(fpr) if success => Ok(fpr),
        _ => Err(SigError::Other(
            stderr
                .lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or("no reason given")
                .trim()
                .to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dearmors_blocks_and_refuses_garbage() {
        let text = "junk\n-----BEGIN PGP PUBLIC KEY BLOCK-----\nComment: x\n\nAQID\nBA==\n=abcd\n\
                    -----END PGP PUBLIC KEY BLOCK-----\n-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nBQ==\n\
                    -----END PGP PUBLIC KEY BLOCK-----\n";
        assert_eq!(dearmor(text).unwrap(), vec![1, 2, 3, 4, 5]);
        assert!(dearmor("hello").is_err());
        assert!(dearmor(&format!("{ARMOR_BEGIN}\n\nAQID\n")).is_err());
    }

    #[test]
    fn status_lines() {
        let good = "[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG AFD4 x\n[GNUPG:] VALIDSIG SUB 2026-12-04 1 0 4 0 22 8 00 PRIMARY\n";
        assert_eq!(judge(true, good, ""), Ok("PRIMARY".into()));
        assert!(judge(false, good, "").is_err(), "exit status counts too");
        assert_eq!(
            judge(
                false,
                "[GNUPG:] ERRSIG AFD4 22 8 00 1 9 F\n[GNUPG:] NO_PUBKEY AFD4\n",
                ""
            ),
            Err(SigError::UnknownKey("AFD4".into()))
        );
        assert_eq!(
            judge(false, "[GNUPG:] BADSIG AFD4 x\n", ""),
            Err(SigError::Bad)
        );
        assert_eq!(
            judge(false, "[GNUPG:] NODATA 1\n", ""),
            Err(SigError::NoSignature)
        );
        assert_eq!(
            judge(
                true,
                "[GNUPG:] EXPKEYSIG AB x\n[GNUPG:] VALIDSIG S 1 2 3 P\n",
                ""
            ),
            Err(SigError::ExpiredKey("AB".into()))
        );
        assert_eq!(
            judge(false, "", "gpgv: oops\n"),
            Err(SigError::Other("gpgv: oops".into()))
        );
    }
}
