//! In-file deltas between stored blobs (docs/feeds.md, "Deltas"), computed on demand and
//! kept in a small in-memory cache keyed by (base, target) digest: every sensor on the
//! same release asks for the same few deltas after an import, and the first one pays.
//! Blobs are content-addressed, so a cached delta never goes stale; losing the cache on a
//! restart only costs the computation again.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex, OnceLock};

use outpost_feed::delta;
use outpost_wire::feed::MAX_DELTA_FILE_BYTES;

use super::blobs::BlobStore;

/// Bytes of deltas kept; the oldest go first.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// `None`: the portal declines (the sensor fetches the file whole).
type Entry = Option<Arc<Vec<u8>>>;

#[derive(Default)]
struct Cache {
    map: HashMap<(String, String), Entry>,
    order: VecDeque<(String, String)>,
    bytes: usize,
}

fn cache() -> &'static Mutex<Cache> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

fn lookup(key: &(String, String)) -> Option<Entry> {
    let c = cache().lock().unwrap_or_else(|p| p.into_inner());
    c.map.get(key).cloned()
}

fn remember(key: (String, String), e: Entry) {
    let mut c = cache().lock().unwrap_or_else(|p| p.into_inner());
    let size = e.as_ref().map_or(0, |d| d.len()) + 160;
    if size > CACHE_BYTES || c.map.contains_key(&key) {
        return;
    }
    while c.bytes + size > CACHE_BYTES {
        let Some(old) = c.order.pop_front() else {
            break;
        };
        if let Some(gone) = c.map.remove(&old) {
            c.bytes -= gone.as_ref().map_or(0, |d| d.len()) + 160;
        }
    }
    c.bytes += size;
    c.order.push_back(key.clone());
    c.map.insert(key, e);
}

/// The delta from blob `base` to blob `target`, or `None` when the portal declines: the
/// base is not stored (collected), either is larger than [`MAX_DELTA_FILE_BYTES`], or the
/// delta would not be smaller than the target. A missing target is an error (NotFound).
pub fn delta(store: &BlobStore, base: &str, target: &str) -> io::Result<Entry> {
    let key = (base.to_owned(), target.to_owned());
    if let Some(e) = lookup(&key) {
        return Ok(e);
    }
    // One computation at a time: it holds base, target and index in memory (up to about
    // 80 MiB for two 32 MiB files), and sensors asking together after an import want the
    // same deltas, which the ones waiting then find in the cache.
    static COMPUTE: Mutex<()> = Mutex::new(());
    let _one = COMPUTE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(e) = lookup(&key) {
        return Ok(e);
    }
    let target_len = std::fs::metadata(store.path(target))?.len();
    let base_len = match std::fs::metadata(store.path(base)) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let e =
        if base == target || base_len > MAX_DELTA_FILE_BYTES || target_len > MAX_DELTA_FILE_BYTES {
            None
        } else {
            let b = store.get(base)?;
            let t = store.get(target)?;
            let mut raw = [0u8; 32];
            hex::decode_to_slice(base, &mut raw)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let d = delta::encode(&raw, &b, &t);
            (d.len() < t.len()).then(|| Arc::new(d))
        };
    remember(key, e.clone());
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feeds::blobs::sha256_hex;

    fn put(store: &BlobStore, bytes: &[u8]) -> String {
        let sha = sha256_hex(bytes);
        store.put(&sha, bytes).unwrap();
        sha
    }

    #[test]
    fn deltas_rebuild_the_target_are_cached_and_declined_when_useless() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let base: Vec<u8> = (0..20_000u32)
            .flat_map(|i| format!("{:08x}  nvt/portal-delta-test/{i}.nasl\n", i * 7).into_bytes())
            .collect();
        let mut target = base.clone();
        target[5000] = b'X';
        let (b, t) = (put(&store, &base), put(&store, &target));
        let d = delta(&store, &b, &t).unwrap().expect("a delta");
        assert!(d.len() < 100, "{} bytes", d.len());
        let mut r = &d[..];
        let h = outpost_feed::delta::read_header(&mut r).unwrap();
        assert_eq!(h.base_sha256, b);
        let mut out = Vec::new();
        outpost_feed::delta::apply_ops(&mut r, &&base[..], h.target_len, &mut out).unwrap();
        assert_eq!(out, target);
        // Cached: the same delta, without reading the blobs again.
        store.remove(&b).unwrap();
        let again = delta(&store, &b, &t).unwrap().expect("cached");
        assert!(Arc::ptr_eq(&d, &again));

        // Declined: a base the portal does not hold, the same blob, a delta no smaller.
        assert!(delta(&store, &"0".repeat(64), &t).unwrap().is_none());
        assert!(delta(&store, &t, &t).unwrap().is_none());
        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let n = put(&store, &noise);
        assert!(delta(&store, &t, &n).unwrap().is_none());
        // A target the portal does not hold is an error (the handler's 404).
        let err = delta(&store, &t, &"1".repeat(64)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
