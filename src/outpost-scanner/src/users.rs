//! Account look-up in `/etc/passwd` and `/etc/group`, by hand: the device
//! binary is static musl, where NSS is not an option, and the image only
//! has the files anyway.

use std::fs;
use std::path::{Path, PathBuf};

use crate::component::RunAs;
use crate::error::ScannerError;

/// A resolved identity to run a component as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User name.
    pub user: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids (every group listing the user), e.g.
    /// `redis` for `_gvm`, which must reach the redis socket.
    pub groups: Vec<u32>,
    /// Home directory (for `HOME`).
    pub home: PathBuf,
}

/// The account database: the two files, read once.
#[derive(Debug, Clone)]
pub struct Passwd {
    passwd: String,
    group: String,
}

impl Passwd {
    /// Reads `/etc/passwd` and `/etc/group`.
    pub fn system() -> Result<Self, ScannerError> {
        Self::load(Path::new("/etc"))
    }

    /// Reads `passwd` and `group` in `etc`.
    pub fn load(etc: &Path) -> Result<Self, ScannerError> {
        let read = |name: &str| {
            let path = etc.join(name);
            fs::read_to_string(&path).map_err(|source| ScannerError::Accounts { path, source })
        };
        Ok(Passwd {
            passwd: read("passwd")?,
            group: read("group")?,
        })
    }

    /// From the texts of the two files.
    pub fn from_texts(passwd: impl Into<String>, group: impl Into<String>) -> Self {
        Passwd {
            passwd: passwd.into(),
            group: group.into(),
        }
    }

    /// Resolves `run_as` for `component` (named in errors).
    pub fn resolve(&self, component: &str, run_as: &RunAs) -> Result<Identity, ScannerError> {
        let user = self
            .passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() >= 7 && f[0] == run_as.user)
            .ok_or_else(|| ScannerError::UnknownUser {
                component: component.to_owned(),
                user: run_as.user.clone(),
            })?;
        let unknown_user = || ScannerError::UnknownUser {
            component: component.to_owned(),
            user: run_as.user.clone(),
        };
        let uid: u32 = user[2].parse().map_err(|_| unknown_user())?;
        let mut gid: u32 = user[3].parse().map_err(|_| unknown_user())?;
        if let Some(name) = &run_as.group {
            gid = self
                .groups()
                .find(|g| g.0 == name)
                .map(|g| g.1)
                .ok_or_else(|| ScannerError::UnknownGroup {
                    component: component.to_owned(),
                    group: name.clone(),
                })?;
        }
        let mut groups = vec![gid];
        for (_, id, members) in self.groups() {
            if members.iter().any(|m| *m == run_as.user) && !groups.contains(&id) {
                groups.push(id);
            }
        }
        Ok(Identity {
            user: run_as.user.clone(),
            uid,
            gid,
            groups,
            home: PathBuf::from(user[5]),
        })
    }

    fn groups(&self) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
        self.group.lines().filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            let id = f[2].parse().ok()?;
            let members = f[3].split(',').filter(|m| !m.is_empty()).collect();
            Some((f[0], id, members))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        redis:x:102:110::/var/lib/redis:/usr/sbin/nologin\n\
        _gvm:x:105:107::/var/lib/openvas:/usr/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\nredis:x:110:_gvm\n_gvm:x:107:\nadm:x:4:other,_gvm\n";

    #[test]
    fn resolves_primary_and_supplementary_groups() {
        let db = Passwd::from_texts(PASSWD, GROUP);
        let id = db.resolve("ospd", &RunAs::user("_gvm")).unwrap();
        assert_eq!((id.uid, id.gid), (105, 107));
        assert_eq!(id.groups, vec![107, 110, 4]);
        assert_eq!(id.home, PathBuf::from("/var/lib/openvas"));
    }

    #[test]
    fn explicit_group_overrides_the_primary() {
        let db = Passwd::from_texts(PASSWD, GROUP);
        let run = RunAs {
            user: "redis".into(),
            group: Some("adm".into()),
        };
        let id = db.resolve("redis", &run).unwrap();
        assert_eq!(id.gid, 4);
        assert_eq!(id.groups, vec![4]);
    }

    #[test]
    fn unknown_names_are_errors_naming_the_component() {
        let db = Passwd::from_texts(PASSWD, GROUP);
        let e = db.resolve("notus", &RunAs::user("nobody2")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "component notus: no user \"nobody2\" in /etc/passwd"
        );
        let run = RunAs {
            user: "redis".into(),
            group: Some("wheel".into()),
        };
        assert!(matches!(
            db.resolve("redis", &run),
            Err(ScannerError::UnknownGroup { .. })
        ));
    }
}
