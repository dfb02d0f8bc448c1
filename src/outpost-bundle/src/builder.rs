//! Host side: build an unsigned bundle from a slot's files, and sign one in place.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use semver::Version;
use sha2::{Digest, Sha256};
use tracing::info;

use crate::error::{BuildError, Refusal};
use crate::format::{Header, Seal, MAX_MANIFEST_LEN, SEAL_RANGE};
use crate::keys::{KeyId, SecretKey};
use crate::manifest::{
    check_dtb_name, Manifest, Part, PartKind, Sha256Digest, INITRD_NAME, KERNEL_NAME,
    MANIFEST_FORMAT, ROOTFS_NAME,
};
use crate::verify::{hash_exact, RawBundleHead, CHUNK};

/// What goes into a bundle. Paths are on the build host.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    pub board: String,
    pub version: Version,
    pub min_version: Option<Version>,
    pub rootfs: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// (name under the slot's `dtbs/`, file), e.g. `broadcom/bcm2711-rpi-4-b.dtb`.
    pub dtbs: Vec<(String, PathBuf)>,
}

impl BuildSpec {
    /// Inputs in container order: boot files first, rootfs last.
    fn inputs(&self) -> Vec<(String, PartKind, &Path)> {
        let mut v = vec![
            (
                KERNEL_NAME.to_string(),
                PartKind::Kernel,
                self.kernel.as_path(),
            ),
            (
                INITRD_NAME.to_string(),
                PartKind::Initrd,
                self.initrd.as_path(),
            ),
        ];
        for (name, path) in &self.dtbs {
            v.push((name.clone(), PartKind::Dtb, path.as_path()));
        }
        v.push((
            ROOTFS_NAME.to_string(),
            PartKind::Rootfs,
            self.rootfs.as_path(),
        ));
        v
    }
}

/// `--dtb NAME=FILE` or `--dtb FILE` (the name is then the file's base name).
pub fn parse_dtb_arg(arg: &str) -> Result<(String, PathBuf), BuildError> {
    let (name, path) = match arg.split_once('=') {
        Some((n, p)) => (n.to_string(), PathBuf::from(p)),
        None => {
            let p = PathBuf::from(arg);
            let n = p
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| BuildError::Invalid(format!("{arg:?} has no file name")))?
                .to_string();
            (n, p)
        }
    };
    check_dtb_name(&name).map_err(BuildError::Invalid)?;
    Ok((name, path))
}

/// Writes an unsigned bundle to `out` (via `out.tmp`, renamed when complete).
pub fn build_bundle(spec: &BuildSpec, out: &Path) -> Result<Manifest, BuildError> {
    let inputs = spec.inputs();
    let mut parts = Vec::with_capacity(inputs.len());
    for (name, kind, path) in &inputs {
        let (size, sha256) = hash_file(path)?;
        parts.push(Part {
            name: name.clone(),
            kind: *kind,
            size,
            sha256,
        });
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        version: spec.version.clone(),
        compatible: spec.board.clone(),
        min_version: spec.min_version.clone(),
        parts,
    };
    manifest.validate().map_err(BuildError::Invalid)?;
    let manifest_bytes = manifest.to_bytes();
    let manifest_len = u32::try_from(manifest_bytes.len())
        .ok()
        .filter(|&n| n <= MAX_MANIFEST_LEN)
        .ok_or_else(|| BuildError::Invalid("the manifest is too large".into()))?;

    let tmp = {
        let mut s = out.as_os_str().to_owned();
        s.push(".tmp");
        PathBuf::from(s)
    };
    let result = write_bundle(&tmp, manifest_len, &manifest_bytes, &manifest, &inputs);
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, out).map_err(io_err("rename to", out))?;
    info!(out = %out.display(), version = %manifest.version, board = %manifest.compatible, "bundle built (unsigned)");
    Ok(manifest)
}

fn write_bundle(
    tmp: &Path,
    manifest_len: u32,
    manifest_bytes: &[u8],
    manifest: &Manifest,
    inputs: &[(String, PartKind, &Path)],
) -> Result<(), BuildError> {
    let file = File::create(tmp).map_err(io_err("create", tmp))?;
    let mut w = BufWriter::with_capacity(CHUNK, file);
    let header = Header {
        manifest_len,
        seal: None,
    };
    w.write_all(&header.encode())
        .map_err(io_err("write", tmp))?;
    w.write_all(manifest_bytes).map_err(io_err("write", tmp))?;
    let mut buf = vec![0u8; CHUNK];
    for ((_, _, path), part) in inputs.iter().zip(&manifest.parts) {
        let mut r = File::open(path).map_err(io_err("open", path))?;
        // Hashed again while copying: an input rewritten since the first pass (a build
        // still running) must not end up under the first pass's digest.
        let got = hash_exact(&mut r, part.size, &mut buf, 0, &part.name, |c| {
            w.write_all(c)
        })
        .map_err(|_| BuildError::InputChanged {
            path: path.to_path_buf(),
        })?;
        let mut probe = [0u8; 1];
        let longer = r.read(&mut probe).map_err(io_err("read", path))? != 0;
        if got != part.sha256 || longer {
            return Err(BuildError::InputChanged {
                path: path.to_path_buf(),
            });
        }
    }
    let file = w
        .into_inner()
        .map_err(|e| io_err("write", tmp)(e.into_error()))?;
    file.sync_all().map_err(io_err("sync", tmp))
}

/// What signing did.
#[derive(Debug, Clone)]
pub struct SignReport {
    pub manifest: Manifest,
    pub signer: KeyId,
    /// The key of the signature that was replaced, if the bundle was signed before.
    pub replaced: Option<KeyId>,
}

/// Signs the bundle at `path` in place. The bundle is checked first (manifest rules,
/// length, every part's hash): a signature vouches for the contents, so it is never
/// put on a bundle that would fail on the device.
pub fn sign_bundle(path: &Path, key: &SecretKey) -> Result<SignReport, BuildError> {
    let not_signable = |refusal| BuildError::NotSignable {
        path: path.to_path_buf(),
        refusal,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err("open", path))?;
    let len = file.metadata().map_err(io_err("stat", path))?.len();
    let mut r = BufReader::with_capacity(CHUNK, &file);
    let head = RawBundleHead::read(&mut r).map_err(not_signable)?;
    let manifest = head.manifest_unverified().map_err(not_signable)?;
    let total = manifest
        .bundle_len(head.header.manifest_len)
        .ok_or_else(|| BuildError::Invalid("part sizes overflow".into()))?;
    if len < total {
        return Err(not_signable(Refusal::Truncated {
            at: len,
            what: format!("a bundle of {total} bytes"),
        }));
    }
    if len > total {
        return Err(not_signable(Refusal::TrailingData { extra: len - total }));
    }
    let mut buf = vec![0u8; CHUNK];
    let mut at = head.header.payload_offset();
    for part in &manifest.parts {
        let got = hash_exact(&mut r, part.size, &mut buf, at, &part.name, |_| {
            Ok::<(), std::convert::Infallible>(())
        })
        .map_err(|e| not_signable(e.into()))?;
        crate::verify::expect_digest(&part.name, &part.sha256, &got).map_err(not_signable)?;
        at += part.size;
    }
    drop(r);

    let replaced = head.header.seal.as_ref().map(|s| KeyId(s.signer));
    let signed = Header {
        manifest_len: head.header.manifest_len,
        seal: Some(Seal {
            signer: key.id().0,
            signature: key.sign(&head.manifest_bytes),
        }),
    };
    let bytes = signed.encode();
    let mut file = file;
    file.seek(SeekFrom::Start(SEAL_RANGE.start as u64))
        .and_then(|_| file.write_all(&bytes[SEAL_RANGE]))
        .and_then(|_| file.sync_all())
        .map_err(io_err("write the signature into", path))?;
    info!(bundle = %path.display(), signer = %key.id(), "bundle signed");
    Ok(SignReport {
        manifest,
        signer: key.id(),
        replaced,
    })
}

fn hash_file(path: &Path) -> Result<(u64, Sha256Digest), BuildError> {
    let mut f = File::open(path).map_err(io_err("open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("read", path)(e)),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, Sha256Digest(hasher.finalize().into())))
}

fn io_err<'p>(step: &'static str, path: &'p Path) -> impl Fn(io::Error) -> BuildError + 'p {
    move |source| BuildError::Io {
        step,
        path: path.to_path_buf(),
        source,
    }
}
