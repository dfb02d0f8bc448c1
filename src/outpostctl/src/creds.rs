//! The SSH credential of `job scan`: secrets are read from files (or standard input),
//! never from the command line, where every user of the machine could see them in
//! the process list and the shell would keep them in its history.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use outpost_wire::sensor::Credential;
use outpost_wire::Secret;

/// What the `--ssh-*` flags said.
pub struct SshArgs<'a> {
    pub user: Option<&'a str>,
    pub password_file: Option<&'a Path>,
    pub key_file: Option<&'a Path>,
    pub port: Option<u16>,
}

/// The scan's credentials: none, or one SSH login (password or private key).
pub fn ssh_credentials(a: SshArgs<'_>) -> Result<Vec<Credential>> {
    let Some(user) = a.user else {
        if a.password_file.is_some() || a.key_file.is_some() || a.port.is_some() {
            bail!("--ssh-password-file, --ssh-key-file and --ssh-port need --ssh-user");
        }
        return Ok(Vec::new());
    };
    if user.trim().is_empty() || user.chars().any(char::is_control) {
        bail!("--ssh-user {user:?} is not a user name");
    }
    let (password, private_key) = match (a.password_file, a.key_file) {
        (None, None) => bail!("--ssh-user needs --ssh-password-file or --ssh-key-file"),
        (Some(_), Some(_)) => {
            bail!("give --ssh-password-file or --ssh-key-file, not both")
        }
        (Some(f), None) => {
            // A file's trailing newline is not part of the password.
            let p = read_secret(f, "--ssh-password-file")?;
            let p = p.strip_suffix('\n').unwrap_or(&p);
            let p = p.strip_suffix('\r').unwrap_or(p);
            if p.is_empty() {
                bail!("the SSH password in {} is empty", f.display());
            }
            (Some(Secret::new(p)), None)
        }
        (None, Some(f)) => {
            let k = read_secret(f, "--ssh-key-file")?;
            if !k.contains("PRIVATE KEY-----") {
                bail!("{} does not hold a PEM or OpenSSH private key", f.display());
            }
            (None, Some(Secret::new(k)))
        }
    };
    Ok(vec![Credential {
        service: "ssh".into(),
        username: user.to_owned(),
        password,
        private_key,
        port: a.port,
    }])
}

fn read_secret(path: &Path, flag: &str) -> Result<String> {
    let mut s = String::new();
    if path == Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut s)
            .with_context(|| format!("reading {flag} from standard input"))?;
    } else {
        s = std::fs::read_to_string(path)
            .with_context(|| format!("reading {flag} {}", path.display()))?;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args<'a>(user: Option<&'a str>, pw: Option<&'a Path>, key: Option<&'a Path>) -> SshArgs<'a> {
        SshArgs {
            user,
            password_file: pw,
            key_file: key,
            port: None,
        }
    }

    #[test]
    fn no_user_means_no_credential_and_stray_flags_are_refused() {
        assert!(ssh_credentials(args(None, None, None)).unwrap().is_empty());
        let e = ssh_credentials(args(None, Some(Path::new("/x")), None)).unwrap_err();
        assert!(e.to_string().contains("need --ssh-user"), "{e}");
    }

    #[test]
    fn a_password_file_gives_one_ssh_login_without_its_newline() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("pw");
        std::fs::write(&f, "s3cret pass\n").unwrap();
        let c = ssh_credentials(args(Some("scan"), Some(&f), None)).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].service, "ssh");
        assert_eq!(c[0].username, "scan");
        assert_eq!(c[0].password.as_ref().unwrap().expose(), "s3cret pass");
        assert!(c[0].private_key.is_none());
        assert!(!format!("{:?}", c[0]).contains("s3cret"), "Debug hides it");
    }

    #[test]
    fn bad_credentials_are_refused_with_the_reason() {
        let d = tempfile::tempdir().unwrap();
        let empty = d.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let not_key = d.path().join("notkey");
        std::fs::write(&not_key, "hello").unwrap();
        let missing = d.path().join("missing");
        for (a, want) in [
            (
                args(Some("scan"), None, None),
                "needs --ssh-password-file or --ssh-key-file",
            ),
            (args(Some("scan"), Some(&empty), Some(&not_key)), "not both"),
            (args(Some("scan"), Some(&empty), None), "is empty"),
            (args(Some("scan"), None, Some(&not_key)), "private key"),
            (
                args(Some("scan"), Some(&missing), None),
                "reading --ssh-password-file",
            ),
            (args(Some(" "), Some(&empty), None), "not a user name"),
        ] {
            let e = format!("{:#}", ssh_credentials(a).unwrap_err());
            assert!(e.contains(want), "{e} should say {want}");
        }
    }
}
