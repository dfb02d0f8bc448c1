//! Helpers for the checks of the Yocto layer `yocto/meta-outpost`: where the repository
//! and the pinned Yocto trees are, the build configuration for a parse, running BitBake
//! as an unprivileged user (it refuses root) and reading its messages.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The machines the layer supports.
pub const MACHINES: [&str; 3] = ["qemuarm64", "raspberrypi4-64", "raspberrypi5"];

/// Environment variable that overrides where the pinned Yocto trees are.
pub const REF_ENV: &str = "OUTPOST_YOCTO_REF";

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The layer under test.
pub fn layer_dir() -> PathBuf {
    repo_root().join("yocto/meta-outpost")
}

/// The pinned bitbake, openembedded-core, meta-openembedded and meta-raspberrypi:
/// `$OUTPOST_YOCTO_REF`, else `shared/yocto-ref` beside the repository.
pub fn yocto_ref() -> PathBuf {
    match std::env::var_os(REF_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo_root().join("../shared/yocto-ref"),
    }
}

/// The layers of a build, in BBLAYERS order.
pub fn layers(reference: &Path, layer: &Path) -> Vec<PathBuf> {
    vec![
        reference.join("openembedded-core/meta"),
        reference.join("meta-openembedded/meta-oe"),
        reference.join("meta-openembedded/meta-python"),
        reference.join("meta-openembedded/meta-networking"),
        reference.join("meta-raspberrypi"),
        layer.to_path_buf(),
    ]
}

/// `conf/bblayers.conf` for the given layers.
pub fn bblayers_conf(layers: &[PathBuf]) -> String {
    let mut s = String::from("BBLAYERS = \" \\\n");
    for l in layers {
        s.push_str(&format!("    {} \\\n", l.display()));
    }
    s.push_str("\"\n");
    s
}

/// Recipe names (file names up to `_` or `.bb`) kept by the parse allowlist: one per
/// line, `#` starts a comment.
pub fn parse_allowlist(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// A BBMASK entry that hides every recipe and append under `root` whose recipe name is
/// not in `keep`. The layer under test lives elsewhere and is parsed whole.
pub fn bbmask_except(root: &Path, keep: &[String]) -> String {
    let names: Vec<String> = keep.iter().map(|n| regex_escape(n)).collect();
    format!(
        "^{}/(?!.*/(?:{})(?:_[^/]*)?\\.bb(?:append)?$)",
        regex_escape(&root.display().to_string()),
        names.join("|")
    )
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `conf/local.conf` for a parse: everything under `work`, no network.
pub fn local_conf(machine: &str, work: &Path, bbmask: Option<&str>) -> String {
    let w = work.display();
    let mut s = format!(
        "MACHINE = \"{machine}\"\n\
         DISTRO = \"outpost\"\n\
         TMPDIR = \"{w}/tmp\"\n\
         DL_DIR = \"{w}/downloads\"\n\
         SSTATE_DIR = \"{w}/sstate\"\n\
         PERSISTENT_DIR = \"{w}/persistent\"\n\
         BB_NO_NETWORK = \"1\"\n\
         CONNECTIVITY_CHECK_URIS = \"\"\n\
         BB_NUMBER_PARSE_THREADS = \"2\"\n\
         BB_NUMBER_THREADS = \"2\"\n"
    );
    if let Some(m) = bbmask {
        s.push_str(&format!("BBMASK += \"{m}\"\n"));
    }
    s
}

/// The feed key variables of `outpost-feed-keys` for `conf/local.conf`.
pub fn feed_keys_conf(feed_pub: &Path, openpgp: &[PathBuf], lab: bool) -> String {
    let keys: Vec<String> = openpgp.iter().map(|p| p.display().to_string()).collect();
    format!(
        "OUTPOST_FEED_KEY = \"{}\"\n\
         OUTPOST_FEED_OPENPGP_KEYS = \"{}\"\n\
         OUTPOST_FEED_LAB_KEY = \"{}\"\n",
        feed_pub.display(),
        keys.join(" "),
        if lab { "1" } else { "0" }
    )
}

/// The body of shell function `name` as `bitbake -e` prints it (variables expanded).
pub fn env_function(env_output: &str, name: &str) -> Option<String> {
    let start = env_output.find(&format!("\n{name}() {{\n"))? + 1;
    let rest = &env_output[start..];
    let end = rest.find("\n}\n")?;
    Some(rest[..end + 2].to_string())
}

/// ERROR and WARNING messages of a BitBake run.
#[derive(Debug, Default)]
pub struct Messages {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// Collects BitBake's `ERROR:` and `WARNING:` lines (with the indented lines that
/// continue them) from its console output.
pub fn messages(output: &str) -> Messages {
    let mut m = Messages::default();
    let mut current: Option<(bool, String)> = None;
    let flush = |m: &mut Messages, cur: Option<(bool, String)>| {
        if let Some((is_err, text)) = cur {
            if is_err {
                m.errors.push(text);
            } else {
                m.warnings.push(text);
            }
        }
    };
    for line in output.lines() {
        if line.starts_with("ERROR:") {
            flush(&mut m, current.take());
            current = Some((true, line.to_string()));
        } else if line.starts_with("WARNING:") {
            flush(&mut m, current.take());
            current = Some((false, line.to_string()));
        } else if let Some((_, text)) = current.as_mut() {
            if line.starts_with(' ') || line.starts_with('\t') {
                text.push('\n');
                text.push_str(line);
            } else {
                flush(&mut m, current.take());
            }
        }
    }
    flush(&mut m, current);
    m
}

/// Whether a message concerns the layer under test: it names a file in it, its
/// collection, its distro or one of its recipes.
pub fn concerns_layer(message: &str, layer: &Path, recipes: &[String]) -> bool {
    let layer_s = layer.display().to_string();
    if message.contains(&layer_s) || message.contains("meta-outpost") {
        return true;
    }
    if message.contains("_outpost") || message.contains("outpost.conf") {
        return true;
    }
    recipes.iter().any(|r| {
        message.contains(&format!("{r}.bb"))
            || message.contains(&format!("{r}_"))
            || message.contains(&format!(" {r}:"))
            || message.contains(&format!("'{r}'"))
    })
}

/// Recipe names (file name up to `_` or `.bb`) of the layer's recipes and appends.
pub fn layer_recipes(layer: &Path) -> io::Result<Vec<String>> {
    recipe_names(layer, true)
}

/// Recipe names under `dir`, of recipes only or of recipes and appends.
pub fn recipe_names(dir: &Path, with_appends: bool) -> io::Result<Vec<String>> {
    let layer = dir;
    let mut out = Vec::new();
    let mut stack = vec![layer.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let stem = name
                .strip_suffix(".bbappend")
                .filter(|_| with_appends)
                .or_else(|| name.strip_suffix(".bb"));
            if let Some(stem) = stem {
                let pn = stem.split('_').next().unwrap_or(stem).to_string();
                if !out.contains(&pn) {
                    out.push(pn);
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Variable assignments `NAME="value"` printed by `bitbake -e`.
pub fn env_var(env_output: &str, name: &str) -> Option<String> {
    let prefix = format!("{name}=\"");
    env_output.lines().find_map(|l| {
        l.strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix('"'))
            .map(str::to_string)
    })
}

/// The unprivileged account BitBake runs as when the tests run as root.
pub const RUN_AS_UID: u32 = 65534;
pub const RUN_AS_GID: u32 = 65534;

/// Whether this process runs as root (BitBake must then drop to `nobody`).
pub fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Output of one BitBake run.
#[derive(Debug)]
pub struct Run {
    pub success: bool,
    pub output: String,
    pub took: Duration,
}

/// A build directory and the way to start BitBake in it.
pub struct BitBake {
    pub bitbake: PathBuf,
    pub build_dir: PathBuf,
    pub home: PathBuf,
    pub as_root: bool,
}

impl BitBake {
    /// Runs `bitbake ARGS` in the build directory with a clean environment
    /// (an en_US.UTF-8 locale, as BitBake asks), as `nobody` when we are root.
    pub fn run(&self, args: &[&str]) -> io::Result<Run> {
        let bin_dir = self.bitbake.parent().unwrap_or(Path::new("/"));
        let path = format!(
            "{}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            bin_dir.display()
        );
        let mut cmd = if self.as_root {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={RUN_AS_UID}"))
                .arg(format!("--regid={RUN_AS_GID}"))
                .arg("--clear-groups")
                .arg("--");
            c.arg("nice");
            c
        } else {
            Command::new("nice")
        };
        cmd.args(["-n", "10"])
            .arg(&self.bitbake)
            .args(args)
            .current_dir(&self.build_dir)
            .env_clear()
            .env("HOME", &self.home)
            .env("PATH", path)
            .env("LANG", "en_US.UTF-8")
            .env("LC_ALL", "en_US.UTF-8")
            .env("BBPATH", &self.build_dir)
            .env("BUILDDIR", &self.build_dir)
            .env("PYTHONDONTWRITEBYTECODE", "1");
        let start = Instant::now();
        let out = cmd.output()?;
        let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
        output.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok(Run {
            success: out.status.success(),
            output,
            took: start.elapsed(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_keep_continuation_lines() {
        let out = "NOTE: x\nWARNING: a\n  more\nERROR: b\nSummary: 1\nWARNING: c\n";
        let m = messages(out);
        assert_eq!(m.warnings, vec!["WARNING: a\n  more", "WARNING: c"]);
        assert_eq!(m.errors, vec!["ERROR: b"]);
    }

    #[test]
    fn bbmask_hides_all_but_kept_recipes() {
        let mask = bbmask_except(
            Path::new("/r/yocto-ref"),
            &["busybox".into(), "gcc-cross".into()],
        );
        let re_like = |p: &str| -> bool {
            // Poor man's check without a regex crate: the kept names appear as
            // alternatives and the root is anchored.
            mask.starts_with("^/r/yocto\\-ref/") && mask.contains(p)
        };
        assert!(re_like("busybox|gcc\\-cross"));
    }

    #[test]
    fn allowlist_ignores_comments() {
        assert_eq!(
            parse_allowlist("# x\nbusybox # init\n\nglibc\n"),
            vec!["busybox", "glibc"]
        );
    }

    #[test]
    fn env_var_reads_assignments() {
        let out = "# comment\nTARGET_SYS=\"aarch64-outpost-linux\"\nexport X=\"1\"\n";
        assert_eq!(
            env_var(out, "TARGET_SYS").as_deref(),
            Some("aarch64-outpost-linux")
        );
        assert_eq!(env_var(out, "NOPE"), None);
    }

    #[test]
    fn env_function_reads_a_shell_function() {
        let out = "X=\"1\"\ndo_compile() {\n    make\n}\n\ndo_install() {\n    true\n}\n";
        assert_eq!(
            env_function(out, "do_compile").as_deref(),
            Some("do_compile() {\n    make\n}")
        );
        assert_eq!(env_function(out, "do_nope"), None);
    }

    #[test]
    fn feed_keys_conf_sets_the_three_variables() {
        let conf = feed_keys_conf(
            Path::new("/k/feed.pub"),
            &[PathBuf::from("/k/a.asc"), PathBuf::from("/k/b.asc")],
            true,
        );
        assert_eq!(
            conf,
            "OUTPOST_FEED_KEY = \"/k/feed.pub\"\n\
             OUTPOST_FEED_OPENPGP_KEYS = \"/k/a.asc /k/b.asc\"\n\
             OUTPOST_FEED_LAB_KEY = \"1\"\n"
        );
    }

    #[test]
    fn layer_messages_are_recognised() {
        let layer = Path::new("/x/yocto/meta-outpost");
        let recipes = vec!["gvm-libs".to_string()];
        assert!(concerns_layer(
            "WARNING: /x/yocto/meta-outpost/a.bb: y",
            layer,
            &recipes
        ));
        assert!(concerns_layer(
            "WARNING: gvm-libs_22.41.0.bb: z",
            layer,
            &recipes
        ));
        assert!(!concerns_layer(
            "WARNING: busybox_1.37.bb: z",
            layer,
            &recipes
        ));
    }
}
