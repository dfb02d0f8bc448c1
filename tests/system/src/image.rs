//! Building (or reusing) the image under test with `scripts/build-image`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::SystemTime;

use crate::{io_err, Error, Result};

/// A built image and the files next to it.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub dir: PathBuf,
    pub image: PathBuf,
    /// U-Boot for QEMU's `-bios` (qemu-arm64 only; rpi4 carries it on the FAT).
    pub uboot: PathBuf,
}

impl BuiltImage {
    /// The signed update bundle scripts/build-image wrote next to the image.
    pub fn bundle(&self) -> Result<PathBuf> {
        let entries =
            std::fs::read_dir(&self.dir).map_err(io_err("listing the image directory"))?;
        entries
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "bundle"))
            .ok_or_else(|| Error::Build(format!("no .bundle in {}", self.dir.display())))
    }
}

/// The repository root (this crate lives in tests/system).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// Builds `board` in `variant` into build/out/<board>-<variant>, unless an
/// image there is newer than every input of the pipeline (image/, board/,
/// scripts/build-image, src/). `OUTPOST_SYSTEM_REUSE_IMAGE=1` reuses any
/// existing image; `OUTPOST_SYSTEM_NO_OUTPOSTD=1` builds without the daemon.
pub fn build_image(board: &str, variant: &str) -> Result<BuiltImage> {
    let no_outpostd = std::env::var_os("OUTPOST_SYSTEM_NO_OUTPOSTD").is_some();
    let extra: &[&str] = if no_outpostd { &["--no-outpostd"] } else { &[] };
    build_image_as(board, variant, &format!("{board}-{variant}"), extra)
}

/// Like [`build_image`], into build/out/`name` with extra scripts/build-image
/// arguments (e.g. `--version 0.2.0`, `--no-outpostd`).
pub fn build_image_as(
    board: &str,
    variant: &str,
    name: &str,
    extra: &[&str],
) -> Result<BuiltImage> {
    let _guard = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let root = repo_root();
    let dir = root.join("build/out").join(name);
    let image = dir.join(format!("outpost-{board}.img"));
    let built = BuiltImage {
        uboot: dir.join("u-boot.bin"),
        image: image.clone(),
        dir: dir.clone(),
    };
    let reuse = std::env::var_os("OUTPOST_SYSTEM_REUSE_IMAGE").is_some();
    if image.exists() && (reuse || !stale(&root, &image)) {
        return Ok(built);
    }
    let mut cmd = Command::new(root.join("scripts/build-image"));
    cmd.args(["--board", board, "--variant", variant, "--no-xz", "--out"])
        .arg(&dir)
        .args(extra);
    let out = cmd
        .output()
        .map_err(io_err("running scripts/build-image"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(15).collect();
        return Err(Error::Build(
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        ));
    }
    Ok(built)
}

/// True when an input of the pipeline changed after the image was built.
fn stale(root: &Path, image: &Path) -> bool {
    let Ok(built) = image.metadata().and_then(|m| m.modified()) else {
        return true;
    };
    ["image", "board", "scripts/build-image", "src", "Cargo.lock"]
        .iter()
        .any(|p| newest(&root.join(p)).is_some_and(|t| t > built))
}

fn newest(path: &Path) -> Option<SystemTime> {
    let meta = path.symlink_metadata().ok()?;
    let mut best = meta.modified().ok();
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).ok()?.flatten() {
            if entry.file_name() == "target" {
                continue;
            }
            if let Some(t) = newest(&entry.path()) {
                best = Some(best.map_or(t, |b| b.max(t)));
            }
        }
    }
    best
}
