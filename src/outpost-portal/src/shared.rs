//! Replicas on one PostgreSQL database share one identity: the gateway's WireGuard key,
//! the CA sensors pin, the admin token (row `portal_secrets`, written once by the first
//! process: INSERT ... ON CONFLICT DO NOTHING, then read back, so processes starting at
//! once agree) and the credential key, of which the database holds only the SHA-256 (a
//! dump must not open the sealed credentials): it is copied to each replica's data
//! directory by the operator. The files in the data directory stay what the rest of the
//! portal reads; this writes the shared values there before anything else reads them.
//!
//! An existing single-process data directory proposes its own files, so the first start
//! on PostgreSQL keeps its identity (its sensors stay connected). A data directory
//! whose files differ from the stored identity is refused, never overwritten.

use std::path::Path;

use anyhow::{bail, Context, Result};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::store::{SharedIdentity, Store};
use crate::tls::{self, write_private};

fn read_opt(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_owned())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// On PostgreSQL, makes `dir` hold the replicas' shared identity; nothing on SQLite
/// (one process per database there).
pub async fn adopt(store: &Store, dir: &Path) -> Result<()> {
    let Store::Postgres(pg) = store else {
        return Ok(());
    };
    let wg_path = dir.join(crate::gateway::KEY_FILE);
    let ca_cert_path = dir.join(tls::CA_CERT);
    let ca_key_path = dir.join(tls::CA_KEY);
    let admin_path = dir.join(crate::server::ADMIN_TOKEN_FILE);
    let cred_path = dir.join(crate::sealed::KEY_FILE);

    let wg = read_opt(&wg_path)?;
    let ca_cert = read_opt(&ca_cert_path)?;
    let ca_key = read_opt(&ca_key_path)?;
    let admin = read_opt(&admin_path)?;
    let cred = match std::fs::read(&cred_path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", cred_path.display())),
    };
    let (new_ca_cert, new_ca_key) = match (&ca_cert, &ca_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => tls::generate_ca()?,
    };
    let mut new_cred = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut new_cred);
    let cred_bytes: Vec<u8> = cred.clone().unwrap_or_else(|| new_cred.to_vec());
    let proposed = SharedIdentity {
        wg_private_key: wg
            .clone()
            .unwrap_or_else(|| outpost_tunnel::PrivateKey::generate().to_base64()),
        ca_cert: new_ca_cert.trim().to_owned(),
        ca_key: new_ca_key.trim().to_owned(),
        admin_token: admin
            .clone()
            .unwrap_or_else(|| crate::auth::random_secret("oat_", 32)),
        credentials_key_sha256: hex::encode(Sha256::digest(&cred_bytes)),
    };
    let shared = pg
        .shared_identity(&proposed, outpost_wire::unix_now())
        .await
        .context("reading the replicas' shared identity (portal_secrets)")?;

    let conflict = |what: &Path| {
        anyhow::anyhow!(
            "{} differs from the identity the portal replicas on this database share \
             (table portal_secrets); move it aside to take the shared one (docs/operating.md)",
            what.display()
        )
    };
    for (local, stored, path) in [
        (&wg, &shared.wg_private_key, &wg_path),
        (&ca_cert, &shared.ca_cert, &ca_cert_path),
        (&ca_key, &shared.ca_key, &ca_key_path),
        (&admin, &shared.admin_token, &admin_path),
    ] {
        if local.as_ref().is_some_and(|l| l.trim() != stored.trim()) {
            return Err(conflict(path));
        }
    }
    if cred.is_some() && proposed.credentials_key_sha256 != shared.credentials_key_sha256 {
        return Err(conflict(&cred_path));
    }
    if cred.is_none() {
        if proposed.credentials_key_sha256 != shared.credentials_key_sha256 {
            bail!(
                "{} is missing: copy credentials.key from another portal replica on this \
                 database (scan credentials are sealed with it; it is never stored in the database)",
                cred_path.display()
            );
        }
        write_private(&cred_path, &new_cred)?;
    }
    if wg.is_none() {
        write_private(&wg_path, format!("{}\n", shared.wg_private_key).as_bytes())?;
    }
    if admin.is_none() {
        write_private(&admin_path, format!("{}\n", shared.admin_token).as_bytes())?;
    }
    if ca_cert.is_none() || ca_key.is_none() {
        // A server certificate left from another CA would not verify against the shared one.
        for f in [tls::SERVER_CERT, tls::SERVER_KEY] {
            match std::fs::remove_file(dir.join(f)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {f}")),
            }
        }
        write_private(&ca_key_path, format!("{}\n", shared.ca_key).as_bytes())?;
        write_private(&ca_cert_path, format!("{}\n", shared.ca_cert).as_bytes())?;
    }
    tracing::info!("using the identity shared by the portal replicas on this database");
    Ok(())
}

/// Names the storage a bundles or feeds directory belongs to; see [`check_storage`].
pub const STORAGE_ID_FILE: &str = ".storage-id";

/// The marker in `dir`, if any.
fn storage_marker(dir: &Path) -> Result<Option<String>> {
    read_opt(&dir.join(STORAGE_ID_FILE))
}

/// Writes `id` as `dir`'s marker unless one is there (another process may be writing it
/// at this moment: the marker appears whole, by a hard link, or not at all). Whether
/// this call wrote it.
fn write_storage_marker(dir: &Path, id: &str) -> Result<bool> {
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    std::io::Write::write_all(&mut tmp, format!("{id}\n").as_bytes())
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    let marker = dir.join(STORAGE_ID_FILE);
    match std::fs::hard_link(tmp.path(), &marker) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e).with_context(|| format!("creating {}", marker.display())),
    }
}

/// On PostgreSQL, checks that this process serves bundles and feed blobs from the storage
/// every replica on the database uses (`--shared-dir`, or directories mounted at the same
/// place in each data directory): `bundles/` and `feeds/` under `storage` must carry the
/// id stored with the shared identity. The first process to start stores its own (a
/// single portal's directories keep their bundles and releases); a replica whose
/// directories carry none or another is refused at start, instead of answering its
/// sensors' downloads with errors later. `outpost-portal feed import` checks the same
/// before it writes blobs. Nothing on SQLite (one process per database).
pub async fn check_storage(store: &Store, storage: &Path) -> Result<()> {
    let Store::Postgres(pg) = store else {
        return Ok(());
    };
    let dirs = [
        storage.join(crate::bundles::DIR),
        storage.join(crate::feeds::DIR),
    ];
    // One id for both directories, even when processes start at once: each marker is
    // read back after writing it, so a process that lost a race takes the winner's id.
    let mut id: Option<String> = None;
    let mut written = Vec::new();
    for d in &dirs {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        let marker = match storage_marker(d)? {
            Some(m) => m,
            None => {
                let candidate = id
                    .clone()
                    .unwrap_or_else(|| crate::auth::random_secret("storage_", 16));
                if write_storage_marker(d, &candidate)? {
                    written.push(d);
                }
                storage_marker(d)?.unwrap_or(candidate)
            }
        };
        id.get_or_insert(marker);
    }
    let proposed = id.unwrap_or_default();
    let Some(stored) = pg
        .shared_storage_id(&proposed)
        .await
        .context("reading the replicas' shared storage id (portal_secrets)")?
    else {
        // No portal has started on this database yet: the first one's start decides.
        return Ok(());
    };
    for d in &dirs {
        if storage_marker(d)?.as_deref() != Some(stored.as_str()) {
            // Leave a directory that is not the shared storage as it was found.
            for w in &written {
                let _ = std::fs::remove_file(w.join(STORAGE_ID_FILE));
            }
            bail!(
                "{} is not on the storage the other portal replicas on this database use \
                 (its {STORAGE_ID_FILE} differs from portal_secrets.storage_id): give every \
                 replica the same --shared-dir, one filesystem they all mount; moving a \
                 portal's bundles/ and feeds/ there, move their {STORAGE_ID_FILE} files too \
                 (docs/operating.md, Replicas)",
                d.display()
            );
        }
    }
    Ok(())
}
