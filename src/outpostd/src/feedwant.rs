//! The feed release the portal wants this sensor to run, as its heartbeat answers say
//! (docs/feeds.md, "Release channels"). The heartbeat thread notes a wish for a release
//! other than the live one; the scanner boot thread takes it: a pending feed check syncs
//! at once instead of waiting out its retry delay, and a running stack gets the release
//! by a live sync (docs/feeds.md, "Live reload").

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// A pending wish for another feed release, shared between the heartbeat and the
/// scanner boot thread.
#[derive(Debug, Default)]
pub struct FeedWant {
    wanted: Mutex<Option<String>>,
}

impl FeedWant {
    /// Records the portal's answer. `true` when it is news: the portal names a release
    /// other than the live one and other than the wish already pending (so the caller
    /// logs it once, not every heartbeat).
    pub fn note(&self, live: Option<&str>, wanted: Option<&str>) -> bool {
        let mut pending = self.lock();
        match wanted {
            Some(w) if live != Some(w) => {
                if pending.as_deref() == Some(w) {
                    false
                } else {
                    *pending = Some(w.to_owned());
                    true
                }
            }
            // On the wanted release (or the portal has none): nothing to do.
            _ => {
                *pending = None;
                false
            }
        }
    }

    /// Takes the pending wish, if any: one sync answers it.
    pub fn take(&self) -> Option<String> {
        self.lock().take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // A panic elsewhere cannot leave an Option half-written.
        self.wanted.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the heartbeat needs to report the live release and note the portal's wish.
#[derive(Debug, Clone)]
pub struct FeedWatch {
    /// The feed root (`--feed-dir`), whose `current` link names the live release.
    pub root: PathBuf,
    pub want: Arc<FeedWant>,
}

impl FeedWatch {
    /// The live release as `outpost_feedsync` names it; `None` before any sync.
    pub fn live(&self) -> Option<String> {
        outpost_feedsync::live_release(&self.root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wish_for_another_release_is_noted_once_and_taken_once() {
        let w = FeedWant::default();
        assert!(!w.note(Some("r1"), Some("r1")), "on the wanted release");
        assert_eq!(w.take(), None);
        assert!(!w.note(Some("r1"), None), "the portal has no release");
        assert_eq!(w.take(), None);

        assert!(w.note(Some("r1"), Some("r2")));
        assert!(!w.note(Some("r1"), Some("r2")), "the same wish is not news");
        assert!(
            w.note(None, Some("r3")),
            "a newer wish replaces it; none live counts too"
        );
        assert_eq!(w.take().as_deref(), Some("r3"));
        assert_eq!(w.take(), None, "one sync answers it");

        // A wish the sensor then met (synced at boot, say) is dropped.
        assert!(w.note(Some("r1"), Some("r2")));
        assert!(!w.note(Some("r2"), Some("r2")));
        assert_eq!(w.take(), None);
    }

    #[test]
    fn the_live_release_is_the_current_links_target() {
        let dir = tempfile::tempdir().expect("tempdir");
        let watch = FeedWatch {
            root: dir.path().to_owned(),
            want: Arc::default(),
        };
        assert_eq!(watch.live(), None, "nothing synced yet");
        let name = "202509150400-0123456789abcdef";
        std::fs::create_dir_all(dir.path().join("releases").join(name)).expect("release");
        std::os::unix::fs::symlink(format!("releases/{name}"), dir.path().join("current"))
            .expect("link");
        assert_eq!(watch.live().as_deref(), Some(name));
    }
}
