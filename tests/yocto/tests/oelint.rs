//! oelint-adv (pinned in scripts/setup) finds nothing at warning or error level in
//! any recipe, append or include of the layer; the only suppressions are listed with
//! their reasons in yocto/oelint.suppress or inline (`# nooelint:`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use outpost_yocto_tests::{layer_dir, repo_root};

/// scripts/setup installs oelint-adv into this venv; OUTPOST_OELINT overrides it.
const DEFAULT_OELINT: &str = "/opt/outpost-oelint/bin/oelint-adv";

fn recipe_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("reading the layer") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            recipe_files(&path, out);
        } else if path
            .extension()
            .is_some_and(|e| e == "bb" || e == "bbappend" || e == "inc")
        {
            out.push(path);
        }
    }
}

#[test]
fn oelint_adv_passes_on_every_recipe() {
    let oelint = std::env::var("OUTPOST_OELINT").unwrap_or_else(|_| DEFAULT_OELINT.into());
    let suppress = fs::read_to_string(repo_root().join("yocto/oelint.suppress"))
        .expect("yocto/oelint.suppress");
    let mut files = Vec::new();
    recipe_files(&layer_dir(), &mut files);
    files.sort();
    assert!(files.len() >= 15, "too few recipes found: {files:?}");
    let mut cmd = Command::new(&oelint);
    cmd.args([
        "--quiet",
        "--hide",
        "info",
        "--release",
        "wrynose",
        "--jobs",
        "2",
    ]);
    for rule in suppress
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        cmd.args(["--suppress", rule]);
    }
    let out = cmd
        .args(&files)
        .output()
        .unwrap_or_else(|e| panic!("running {oelint} (scripts/setup installs it): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.trim().is_empty(),
        "oelint-adv findings:\n{text}"
    );
}
