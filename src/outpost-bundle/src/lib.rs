//! Signed A/B update bundles for Outpost (format and device flow: `docs/updates.md`).
//!
//! A bundle carries one slot's contents for one board: kernel `Image`, `initrd.img`,
//! device trees and the squashfs root filesystem, described by a manifest that is
//! signed with ed25519. The container is a fixed header, the manifest, then the parts
//! ([`format`]), so a device checks the signature after a few kilobytes and streams
//! every part to its destination while hashing it.
//!
//! Device side: [`verify_header`] (signature and policy, nothing written), then
//! [`install()`] into the inactive slot's [`SlotTarget`], then the caller's
//! `BootControl::mark_active(slot)`. [`install_file`] does both for a downloaded file
//! and proves every part before the first write; [`plan_resume`] continues an
//! interrupted download. Host side: [`build_bundle`], [`sign_bundle`], [`SecretKey`].

pub mod builder;
pub mod error;
pub mod file;
pub mod format;
pub mod install;
pub mod keys;
pub mod manifest;
pub mod verify;

pub use builder::{build_bundle, parse_dtb_arg, sign_bundle, BuildSpec, SignReport};
pub use error::{BuildError, InstallError, KeyError, Refusal, SlotState};
pub use file::{check_bundle_file, install_file, plan_resume, ResumePlan};
pub use install::{install, partition_device, InstallReport, InstalledPart, SlotTarget};
pub use keys::{KeyId, SecretKey, TrustedKeys};
pub use manifest::{Manifest, Part, PartKind, Sha256Digest};
pub use semver::Version;
pub use verify::{check_parts, verify_header, Policy, RawBundleHead, VerifiedManifest};
