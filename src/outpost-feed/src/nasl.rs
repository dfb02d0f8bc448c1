//! The NASL side of the feed: script count and `plugin_feed_info.inc`.

use std::fs;
use std::io;
use std::path::Path;

use serde::Serialize;

use crate::error::FeedError;

/// What `plugin_feed_info.inc` says about the feed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PluginFeedInfo {
    /// `PLUGIN_SET`: the feed version, `YYYYMMDDHHMM` (UTC).
    pub plugin_set: Option<String>,
    /// `PLUGIN_FEED`: the feed's name as ospd-openvas reports it.
    pub plugin_feed: Option<String>,
    /// `FEED_VENDOR`.
    pub feed_vendor: Option<String>,
    /// `FEED_HOME`.
    pub feed_home: Option<String>,
    /// `FEED_NAME`.
    pub feed_name: Option<String>,
}

/// Counts `*.nasl` files under `dir`, recursively, the way openvas finds
/// them. Symlinked directories are not followed (a feed has none, and a
/// loop must not hang boot). A missing directory counts as `None`.
pub fn count_nasl(dir: &Path) -> Result<Option<u64>, FeedError> {
    match fs::symlink_metadata(dir) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(FeedError::read(dir, e)),
    }
    let mut count = 0u64;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries = fs::read_dir(&d).map_err(|e| FeedError::read(&d, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| FeedError::read(&d, e))?;
            let kind = entry
                .file_type()
                .map_err(|e| FeedError::read(entry.path(), e))?;
            let path = entry.path();
            if kind.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|x| x == "nasl")
                && (kind.is_file() || path.is_file())
            {
                count += 1;
            }
        }
    }
    Ok(Some(count))
}

/// Reads `plugin_feed_info.inc` in `plugins_dir`; `None` when it is absent.
/// Parsed the way ospd-openvas parses it: `KEY = "value";` per line.
pub fn read_feed_info(plugins_dir: &Path) -> Result<Option<PluginFeedInfo>, FeedError> {
    let path = plugins_dir.join("plugin_feed_info.inc");
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(FeedError::read(path, e)),
    };
    Ok(Some(parse_feed_info(&String::from_utf8_lossy(&bytes))))
}

/// Parses the text of `plugin_feed_info.inc` the way ospd-openvas does: `KEY = "value";`
/// per line.
pub fn parse_feed_info(text: &str) -> PluginFeedInfo {
    let mut info = PluginFeedInfo::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim().replace([';', '"'], "");
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        let slot = match key.trim() {
            "PLUGIN_SET" => &mut info.plugin_set,
            "PLUGIN_FEED" => &mut info.plugin_feed,
            "FEED_VENDOR" => &mut info.feed_vendor,
            "FEED_HOME" => &mut info.feed_home,
            "FEED_NAME" => &mut info.feed_name,
            _ => continue,
        };
        *slot = Some(value.to_owned());
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::tests::TempDir;

    #[test]
    fn counts_nasl_recursively_and_ignores_other_files() {
        let t = TempDir::new("nasl");
        t.write("a.nasl", "");
        t.write("2008/b.nasl", "");
        t.write("2008/deep/c.nasl", "");
        t.write("plugin_feed_info.inc", "");
        t.write("d.nasl.asc", "");
        t.write("sha256sums", "");
        assert_eq!(count_nasl(t.path()).unwrap(), Some(3));
    }

    #[test]
    fn missing_dir_is_none_not_an_error() {
        let t = TempDir::new("nasl-missing");
        assert_eq!(count_nasl(&t.path().join("nope")).unwrap(), None);
        assert_eq!(read_feed_info(&t.path().join("nope")).unwrap(), None);
    }

    #[test]
    fn reads_feed_info_like_ospd() {
        let t = TempDir::new("info");
        t.write(
            "plugin_feed_info.inc",
            "PLUGIN_SET = \"202406120502\";\nPLUGIN_FEED = \"Outpost Demo Feed\";\n\
             FEED_VENDOR = \"Outpost\";\nFEED_HOME = \"https://example.invalid/\";\n\
             FEED_NAME = \"Outpost Demo\";\n# comment\nJUNK\n",
        );
        let info = read_feed_info(t.path()).unwrap().unwrap();
        assert_eq!(info.plugin_set.as_deref(), Some("202406120502"));
        assert_eq!(info.plugin_feed.as_deref(), Some("Outpost Demo Feed"));
        assert_eq!(info.feed_vendor.as_deref(), Some("Outpost"));
        assert_eq!(info.feed_home.as_deref(), Some("https://example.invalid/"));
        assert_eq!(info.feed_name.as_deref(), Some("Outpost Demo"));
    }
}
