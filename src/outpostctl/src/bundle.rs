//! `outpostctl bundle`: signing keys, building, signing and checking update bundles
//! (files only, no portal), and publishing and assigning them on a portal.
//! Format: docs/updates.md.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use clap::Subcommand;
use serde_json::json;

use outpost_bundle::{
    build_bundle, check_bundle_file, parse_dtb_arg, sign_bundle, BuildSpec, Manifest, Policy,
    RawBundleHead, SecretKey, TrustedKeys, Version,
};
use outpost_wire::admin::{paths, AssignBundle, AssignResult, BundleInfo};

use crate::client::Client;

#[derive(Subcommand)]
pub enum BundleCmd {
    /// Create a signing key: KEY (secret, mode 0600) and KEY.pub (give that to devices).
    Keygen {
        #[arg(long)]
        out: PathBuf,
        /// Comment stored in KEY.pub, e.g. who owns the key.
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Build an unsigned bundle from one slot's files.
    Build {
        /// Board `compatible`, e.g. outpost,rpi4 or outpost,qemu-arm64.
        #[arg(long)]
        board: String,
        /// Product version of the contents (semver).
        #[arg(long)]
        version: Version,
        /// Oldest running version this bundle may replace.
        #[arg(long)]
        min_version: Option<Version>,
        /// Root filesystem image (squashfs).
        #[arg(long)]
        rootfs: PathBuf,
        /// Kernel `Image`.
        #[arg(long)]
        kernel: PathBuf,
        /// Initramfs (`initrd.img`).
        #[arg(long)]
        initrd: PathBuf,
        /// Device tree, as FILE or NAME=FILE where NAME is the path under the slot's
        /// dtbs/ (U-Boot's fdtfile, e.g. broadcom/bcm2711-rpi-4-b.dtb). Repeatable.
        #[arg(long = "dtb", value_name = "[NAME=]FILE")]
        dtbs: Vec<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a bundle in place (checks every part first).
    Sign {
        bundle: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
    /// Check a bundle as a device would: print its manifest and the verdict.
    Verify {
        bundle: PathBuf,
        /// Trusted public key file(s); each may list several keys. Repeatable.
        #[arg(long = "trusted", required = true)]
        trusted: Vec<PathBuf>,
        /// The device's board `compatible`.
        #[arg(long)]
        board: String,
        /// The version the device runs.
        #[arg(long)]
        current_version: Version,
        /// The device's anti-rollback floor (highest version it ever marked good).
        #[arg(long)]
        floor: Option<Version>,
    },
    /// Upload a bundle to the portal; prints the published bundle.
    Publish { bundle: PathBuf },
    /// Bundles published on the portal, newest first.
    List,
    /// Queue the bundle's install on every sensor of a site and/or on single sensors.
    Assign {
        /// Bundle id, as `bundle publish` or `bundle list` print it.
        id: i64,
        #[arg(long, required_unless_present = "sensors")]
        site: Option<String>,
        /// Sensor id (repeatable).
        #[arg(long = "sensor")]
        sensors: Vec<String>,
    },
}

impl BundleCmd {
    /// Publish, list and assign talk to a portal; the rest work on files only.
    pub fn needs_portal(&self) -> bool {
        matches!(
            self,
            BundleCmd::Publish { .. } | BundleCmd::List | BundleCmd::Assign { .. }
        )
    }
}

/// The portal side: publish, list, assign.
pub fn run_portal(cmd: BundleCmd, c: &Client, json: bool) -> Result<()> {
    match cmd {
        BundleCmd::Publish { bundle } => {
            // A wrong token is answered before a large upload starts, not after.
            let _: Vec<BundleInfo> = c.get(paths::BUNDLES)?;
            let b: BundleInfo = c.post_file(paths::BUNDLES, &bundle)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&b)?);
            } else {
                println!(
                    "bundle {}: {} for {} ({} bytes, sha256 {})",
                    b.id, b.version, b.compatible, b.size, b.sha256
                );
            }
        }
        BundleCmd::List => {
            let list: Vec<BundleInfo> = c.get(paths::BUNDLES)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!(
                    "{:>5}  {:<12} {:<20} {:<10} {:>12}  sha256",
                    "id", "version", "board", "replaces", "bytes"
                );
                for b in &list {
                    println!(
                        "{:>5}  {:<12} {:<20} {:<10} {:>12}  {}",
                        b.id,
                        b.version,
                        b.compatible,
                        b.min_version.as_deref().unwrap_or("any"),
                        b.size,
                        b.sha256
                    );
                }
            }
        }
        BundleCmd::Assign { id, site, sensors } => {
            let r: AssignResult =
                c.post(&paths::assign_bundle(id), &AssignBundle { site, sensors })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                let ids: Vec<String> = r.jobs.iter().map(i64::to_string).collect();
                println!(
                    "bundle {id}: {} update job(s) queued: {}",
                    r.jobs.len(),
                    ids.join(" ")
                );
            }
        }
        other => return run(other, json),
    }
    Ok(())
}

pub fn run(cmd: BundleCmd, json: bool) -> Result<()> {
    match cmd {
        BundleCmd::Keygen { out, comment } => keygen(&out, &comment, json),
        BundleCmd::Build {
            board,
            version,
            min_version,
            rootfs,
            kernel,
            initrd,
            dtbs,
            out,
        } => {
            let dtbs = dtbs
                .iter()
                .map(|d| parse_dtb_arg(d))
                .collect::<Result<Vec<_>, _>>()?;
            let spec = BuildSpec {
                board,
                version,
                min_version,
                rootfs,
                kernel,
                initrd,
                dtbs,
            };
            let m =
                build_bundle(&spec, &out).with_context(|| format!("building {}", out.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&m)?);
            } else {
                println!("built {} (unsigned)", out.display());
                print_manifest(&m);
            }
            Ok(())
        }
        BundleCmd::Sign { bundle, key } => sign(&bundle, &key, json),
        BundleCmd::Verify {
            bundle,
            trusted,
            board,
            current_version,
            floor,
        } => verify(
            &bundle,
            &trusted,
            &board,
            &current_version,
            floor.as_ref(),
            json,
        ),
        BundleCmd::Publish { .. } | BundleCmd::List | BundleCmd::Assign { .. } => {
            Err(anyhow!("this bundle command needs a portal"))
        }
    }
}

fn keygen(out: &Path, comment: &str, json: bool) -> Result<()> {
    let key = SecretKey::generate()?;
    let pub_path = key.write_new(out, comment)?;
    if json {
        let v = json!({
            "secret": out,
            "public": pub_path,
            "key": key.id().to_string(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("secret key: {} (keep it off devices)", out.display());
        println!("public key: {}", pub_path.display());
        print!("{}", key.public_line(comment));
    }
    Ok(())
}

fn sign(bundle: &Path, key_path: &Path, json: bool) -> Result<()> {
    let mode = std::fs::metadata(key_path)
        .with_context(|| format!("reading {}", key_path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        eprintln!(
            "outpostctl: warning: {} is readable by others (mode {:o})",
            key_path.display(),
            mode & 0o777
        );
    }
    let key = SecretKey::load(key_path)?;
    let report = sign_bundle(bundle, &key)?;
    if json {
        let v = json!({
            "bundle": bundle,
            "signer": report.signer.to_string(),
            "replaced": report.replaced.map(|k| k.to_string()),
            "manifest": report.manifest,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("signed {} with {}", bundle.display(), report.signer);
        if let Some(old) = report.replaced {
            println!("(replaced the signature by {old})");
        }
    }
    Ok(())
}

fn verify(
    bundle: &Path,
    trusted: &[PathBuf],
    board: &str,
    current: &Version,
    floor: Option<&Version>,
    json: bool,
) -> Result<()> {
    let trusted = TrustedKeys::load_all(trusted)?;
    // The manifest is shown even when the bundle is refused, marked as unverified.
    let mut f = File::open(bundle).with_context(|| format!("opening {}", bundle.display()))?;
    let head = RawBundleHead::read(&mut f).ok();
    let shown = head.as_ref().and_then(|h| h.manifest_unverified().ok());
    let claimed = head
        .as_ref()
        .and_then(|h| h.header.seal.as_ref())
        .map(|s| outpost_bundle::KeyId(s.signer).to_string());
    // Whether the manifest shown is authentic, apart from whether it may be installed.
    let authentic = head
        .as_ref()
        .is_some_and(|h| h.check_signature(&trusted).is_ok());

    let policy = Policy {
        trusted: &trusted,
        board,
        current,
        floor,
    };
    let verdict = check_bundle_file(bundle, &policy);
    if json {
        let v = json!({
            "bundle": bundle,
            "manifest": shown,
            "signer": claimed,
            "authentic": authentic,
            "verdict": if verdict.is_ok() { "ok" } else { "refused" },
            "reason": verdict.as_ref().err().map(|r| r.to_string()),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("bundle:    {}", bundle.display());
        match &shown {
            Some(m) => {
                if !authentic {
                    println!("(manifest NOT authentic: no valid signature by a trusted key)");
                }
                print_manifest(m);
            }
            None => println!("(no readable manifest)"),
        }
        println!("signed by: {}", claimed.as_deref().unwrap_or("nobody"));
    }
    match verdict {
        Ok(_) => {
            if !json {
                println!(
                    "verdict:   OK: signed by a trusted key, every part intact, installable on {board} running {current}{}",
                    floor.map(|f| format!(" (floor {f})")).unwrap_or_default()
                );
            }
            Ok(())
        }
        Err(reason) => {
            if !json {
                println!("verdict:   REFUSED: {reason}");
            }
            // Non-zero exit, so scripts can gate on it.
            Err(anyhow!("bundle refused: {reason}"))
        }
    }
}

fn print_manifest(m: &Manifest) {
    println!("board:     {}", m.compatible);
    match &m.min_version {
        Some(min) => println!("version:   {} (replaces {min} or later)", m.version),
        None => println!("version:   {}", m.version),
    }
    println!("parts:");
    for p in &m.parts {
        println!("  {:<32} {:>12} bytes  sha256 {}", p.name, p.size, p.sha256);
    }
}
