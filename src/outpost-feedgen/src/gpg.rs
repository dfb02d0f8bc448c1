//! Signing with GnuPG's `gpg`, the tool Greenbone signs the real feed with: a throwaway
//! key in its own `GNUPGHOME`, detached ASCII-armoured signatures.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::GenError;

/// A signing key in a private GnuPG home directory.
pub struct GpgSigner {
    home: PathBuf,
    fingerprint: String,
    /// Whether `drop` stops the agent this signer's home started.
    owns_agent: bool,
}

fn run(home: &Path, args: &[&str]) -> Result<Output, GenError> {
    let out = Command::new("gpg")
        .env("GNUPGHOME", home)
        .args(["--batch", "--no-tty", "--quiet"])
        .args(args)
        .output()
        .map_err(|e| GenError::Gpg(format!("running gpg (install GnuPG): {e}")))?;
    if !out.status.success() {
        return Err(GenError::Gpg(format!(
            "gpg {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out)
}

impl GpgSigner {
    /// Creates an ed25519 signing key with user id `uid` in `home` (created, mode 0700).
    pub fn create(home: &Path, uid: &str) -> Result<GpgSigner, GenError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(home)
            .map_err(|e| GenError::Io {
                step: "creating",
                path: home.to_path_buf(),
                source: e,
            })?;
        // No passphrase: the key exists only for tests and benchmarks.
        run(
            home,
            &[
                "--passphrase",
                "",
                "--pinentry-mode",
                "loopback",
                "--quick-gen-key",
                uid,
                "ed25519",
                "sign",
                "never",
            ],
        )?;
        let mut s = GpgSigner::open(home, uid)?;
        // Key generation started the agent.
        s.owns_agent = true;
        Ok(s)
    }

    /// The key with user id `uid` in an existing home directory.
    pub fn open(home: &Path, uid: &str) -> Result<GpgSigner, GenError> {
        // An agent already serving this home is someone else's; one that this signer's
        // commands start (listing secret keys already does) is ours to stop.
        // (gpg-connect-agent exits 0 either way; only a running agent answers with data.)
        let agent_running = Command::new("gpg-connect-agent")
            .env("GNUPGHOME", home)
            .args(["--no-autostart", "GETINFO pid", "/bye"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).starts_with("D "));
        let out = run(home, &["--with-colons", "--list-secret-keys", uid])?;
        let text = String::from_utf8_lossy(&out.stdout);
        let fingerprint = text
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .and_then(|rest| rest.split(':').find(|f| !f.is_empty()))
            .ok_or_else(|| GenError::Gpg(format!("no secret key {uid:?} in {}", home.display())))?
            .to_owned();
        Ok(GpgSigner {
            home: home.to_path_buf(),
            fingerprint,
            owns_agent: !agent_running,
        })
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Writes a detached, armoured signature of `file` to `sig`.
    pub fn sign(&self, file: &Path, sig: &Path) -> Result<(), GenError> {
        let (file, sig) = (path_str(file)?, path_str(sig)?);
        run(
            &self.home,
            &[
                "--yes",
                "--local-user",
                &self.fingerprint,
                "--detach-sign",
                "--armor",
                "--output",
                sig,
                file,
            ],
        )
        .map(drop)
    }

    /// The public key, ASCII-armoured (what an operator puts in the portal's keyring).
    pub fn export_public(&self) -> Result<Vec<u8>, GenError> {
        Ok(run(&self.home, &["--armor", "--export", &self.fingerprint])?.stdout)
    }
}

impl Drop for GpgSigner {
    fn drop(&mut self) {
        // gpg starts an agent for the home directory; stop that one (and only that one)
        // so tests leave no process behind.
        if self.owns_agent {
            let _ = Command::new("gpgconf")
                .env("GNUPGHOME", &self.home)
                .args(["--kill", "gpg-agent"])
                .output();
        }
    }
}

fn path_str(p: &Path) -> Result<&str, GenError> {
    p.to_str()
        .ok_or_else(|| GenError::Gpg(format!("{} is not UTF-8", p.display())))
}
