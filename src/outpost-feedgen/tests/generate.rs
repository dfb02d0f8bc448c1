//! The generator is deterministic, `advance` equals generating the next day from scratch,
//! and the tree has the real feed's shape.

use std::collections::BTreeMap;
use std::path::Path;

use outpost_feedgen::{advance, generate, FeedSpec};

fn read_tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(d) = pending.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                pending.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn deterministic_and_advance_matches_generate() {
    let spec = FeedSpec::new(7, 400).unwrap();
    let t = tempfile::tempdir().unwrap();
    let (a, b, c) = (t.path().join("a"), t.path().join("b"), t.path().join("c"));
    let s0 = generate(&a, &spec, 0, None).unwrap();
    generate(&b, &spec, 0, None).unwrap();
    assert_eq!(read_tree(&a), read_tree(&b), "same seed, same bytes");

    let day0 = read_tree(&a);
    let s1 = advance(&a, &spec, 0, None).unwrap();
    generate(&c, &spec, 1, None).unwrap();
    let day1 = read_tree(&a);
    assert_eq!(day1, read_tree(&c), "advance == generate(day 1)");

    // Shape: 400 + 1 scripts, the scaled .inc count, nine advisory files.
    let nasl = day1.keys().filter(|k| k.ends_with(".nasl")).count();
    assert_eq!(nasl, 401);
    assert_eq!(s1.nasl_scripts, 401);
    assert_eq!(
        day1.keys().filter(|k| k.ends_with(".inc")).count() as u32,
        spec.inc_files()
    );
    assert_eq!(
        day1.keys()
            .filter(|k| k.starts_with("notus/advisories/") && k.ends_with(".notus"))
            .count(),
        9
    );
    for k in day1.keys() {
        if let Some(rest) = k.strip_prefix("nvt/") {
            assert!(rest.matches('/').count() <= 2, "{k} is deeper than 3");
        }
    }
    let info = String::from_utf8(day1["nvt/plugin_feed_info.inc"].clone()).unwrap();
    assert!(info.contains("PLUGIN_SET = \"202509160400\";"), "{info}");
    assert_eq!(s0.plugin_set, "202509150400");

    // The day's churn: the changed scripts, one new one, the Notus files, the lists.
    let changed: Vec<&String> = day1
        .keys()
        .filter(|k| day0.get(*k) != day1.get(*k))
        .collect();
    let changed_nasl = changed.iter().filter(|k| k.ends_with(".nasl")).count() as u32;
    assert_eq!(changed_nasl, spec.daily_changes() + 1, "{changed:?}");
    assert!(changed.iter().any(|k| *k == "nvt/sha256sums"));
    assert_eq!(
        changed
            .iter()
            .filter(|k| k.starts_with("notus/advisories/") && k.ends_with(".notus"))
            .count(),
        9,
        "every advisory file is rewritten"
    );
    // Duplicate OIDs among scripts are listed once by ospd-openvas, advisories sharing a
    // script's OID besides it: the VT count is below scripts + advisories by the scripts'
    // duplicates only.
    assert!(s1.vt_count < u64::from(s1.nasl_scripts + s1.advisories));
    assert!(s1.vt_count > u64::from(s1.nasl_scripts));
}

#[test]
fn scripts_carry_description_blocks() {
    let spec = FeedSpec::new(3, 60).unwrap();
    let t = tempfile::tempdir().unwrap();
    generate(t.path(), &spec, 0, None).unwrap();
    let tree = read_tree(t.path());
    let (path, text) = tree.iter().find(|(k, _)| k.ends_with(".nasl")).unwrap();
    let text = String::from_utf8(text.clone()).unwrap();
    for needle in [
        "if(description)",
        "script_oid(\"1.3.6.1.4.1.25623.1.",
        "script_version(\"",
        "script_name(\"",
        "script_family(\"",
        "script_category(ACT_GATHER_INFO);",
        "exit(0);",
    ] {
        assert!(text.contains(needle), "{path} lacks {needle}");
    }
    let adv: serde_json::Value =
        serde_json::from_slice(&tree["notus/advisories/debian.notus"]).unwrap();
    assert_eq!(adv["version"], "1.2");
    assert!(adv["advisories"][0]["oid"]
        .as_str()
        .unwrap()
        .starts_with("1.3.6.1.4.1.25623.1.1."));
}
