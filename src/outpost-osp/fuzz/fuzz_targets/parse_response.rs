//! Feeds arbitrary bytes to every OSP response parser. The property: no
//! panic, no hang, no unbounded allocation; errors are fine.

#![no_main]

use std::io::{BufReader, Read};

use libfuzzer_sys::fuzz_target;
use outpost_osp::response::{
    count_get_vts, parse_check_feed, parse_get_scans, parse_get_version, parse_get_vts,
    parse_get_vts_with, parse_start_scan, parse_status_only,
};
use outpost_osp::{summarize, GetScans, GetVts, Request};

/// Hands out at most 3 bytes per read, to drive quick-xml's refill paths.
struct Chunky<'a>(&'a [u8]);

impl Read for Chunky<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(3).min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = parse_get_version(data);
    let _ = parse_check_feed(data);
    let _ = parse_get_vts(data);
    let _ = count_get_vts(data);
    let _ = parse_get_vts_with(data, |vt| {
        let _ = vt.oid.len();
    });
    let _ = parse_start_scan(data);
    let _ = parse_status_only("stop_scan", data);
    let _ = parse_status_only("delete_scan", data);
    if let Ok(scans) = parse_get_scans(data) {
        // Whatever parses must also summarise.
        let summary = summarize(scans.iter().flat_map(|s| s.results.iter()));
        let _ = summary.to_json();
    }
    for request in [
        Request::GetVersion,
        Request::CheckFeed,
        GetVts::count_all().into(),
        GetScans::pop("a", None).into(),
    ] {
        let _ = request.parse_response(BufReader::with_capacity(4, Chunky(data)));
    }
});
