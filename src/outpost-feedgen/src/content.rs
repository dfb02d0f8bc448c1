//! What one file of the synthetic feed says: NASL scripts with real description blocks,
//! `.inc` libraries, `plugin_feed_info.inc` and Notus JSON. Every function is a pure
//! function of its arguments, which is what makes the feed deterministic.

use serde_json::json;

use crate::{civil, Rng};

/// Unix time of release day 0's `PLUGIN_SET` (2025-09-15 04:00 UTC).
pub const DAY0: i64 = 1_757_908_800;

pub const FAMILIES: [&str; 12] = [
    "Web application abuses",
    "General",
    "Product detection",
    "Denial of Service",
    "Buffer overflow",
    "Web Servers",
    "Databases",
    "Default Accounts",
    "FTP",
    "Service detection",
    "SSL and TLS",
    "Windows : Microsoft Bulletins",
];

/// The Notus advisory files, one per distribution family, as in the real feed.
pub const DISTROS: [(&str, &str, &str); 9] = [
    ("debian", "Debian Local Security Checks", "deb"),
    ("ubuntu", "Ubuntu Local Security Checks", "deb"),
    ("suse", "SuSE Local Security Checks", "rpm"),
    ("redhat", "Red Hat Local Security Checks", "rpm"),
    ("fedora", "Fedora Local Security Checks", "rpm"),
    ("alpine", "Alpine Local Security Checks", "apk"),
    ("amazon", "Amazon Linux Local Security Checks", "rpm"),
    ("euleros", "Huawei EulerOS Local Security Checks", "rpm"),
    ("slackware", "Slackware Local Security Checks", "slack"),
];

const PRODUCTS: [&str; 16] = [
    "apache_http_server",
    "nginx",
    "openssh",
    "php",
    "wordpress",
    "mysql",
    "postgresql",
    "tomcat",
    "jenkins",
    "gitlab",
    "openssl",
    "samba",
    "vsftpd",
    "exim",
    "drupal",
    "grafana",
];

/// The shared libraries scripts include; the rest of the `.inc` files are numbered.
pub const INC_NAMES: [&str; 12] = [
    "version_func.inc",
    "host_details.inc",
    "http_func.inc",
    "http_keepalive.inc",
    "misc_func.inc",
    "secpod_reporting.inc",
    "ssh_func.inc",
    "smb_nt.inc",
    "cpe.inc",
    "list_array_func.inc",
    "os_func.inc",
    "pkg-lib-deb.inc",
];

/// `YYYYMMDDhhmm` for a Unix time.
pub fn plugin_set(t: i64) -> String {
    let (y, m, d, hh, mm, _) = civil(t);
    format!("{y:04}{m:02}{d:02}{hh:02}{mm:02}")
}

/// `2025-09-15 04:00:00 +0000 (Mon, 15 Sep 2025)`, as script tags write dates.
fn tag_date(t: i64) -> String {
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, m, d, hh, mm, ss) = civil(t);
    let wd = WD[t.div_euclid(86_400).rem_euclid(7) as usize];
    format!(
        "{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02} +0000 ({wd}, {d:02} {} {y:04})",
        MON[(m - 1) as usize]
    )
}

/// `2025-09-15T04:00:00+0000`, as `script_version` writes it.
fn version_date(t: i64) -> String {
    let (y, m, d, hh, mm, ss) = civil(t);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}+0000")
}

/// What identifies one NASL script.
pub struct Script<'a> {
    pub index: u32,
    pub oid: &'a str,
    /// Path under `nvt/`.
    pub path: &'a str,
    /// How often the script was changed up to this release (0: as first published).
    pub revision: u32,
    /// The release day of its last change (0 for revision 0).
    pub changed_on: u32,
}

pub fn nasl(seed: u64, s: &Script<'_>) -> String {
    let mut r = Rng::new(&[seed, 0x6e61_736c, u64::from(s.index)]);
    let product = PRODUCTS[r.below(PRODUCTS.len() as u64) as usize];
    let family = FAMILIES[r.below(FAMILIES.len() as u64) as usize];
    let created = DAY0 - 86_400 - r.below(10 * 365 * 86_400) as i64;
    let modified = if s.revision == 0 {
        created + r.below((DAY0 - 86_400 - created).max(1) as u64) as i64
    } else {
        DAY0 + i64::from(s.changed_on) * 86_400 - 3_600 - (s.index % 3_000) as i64
    };
    let (major, minor) = (r.below(12), r.below(30));
    let patch = r.below(40) + u64::from(s.revision);
    let cvss = 10 + r.below(91);
    let cve_year = 2014 + r.below(12);
    let cves: Vec<String> = (0..1 + r.below(4))
        .map(|_| format!("\"CVE-{cve_year}-{}\"", 1000 + r.below(60_000)))
        .collect();
    let title = format!(
        "{} < {major}.{minor}.{patch} Multiple Vulnerabilities",
        product.replace('_', " ")
    );
    let mut t = String::with_capacity(4096);
    t.push_str(&format!(
        "# SPDX-FileCopyrightText: {} Outpost synthetic feed\n\
         # Some text descriptions might be excerpted from (a) referenced\n\
         # source(s), and are Copyright (C) by the respective right holder(s).\n\
         #\n\
         # SPDX-License-Identifier: GPL-2.0-only\n\n",
        civil(created).0
    ));
    t.push_str("if(description)\n{\n");
    t.push_str(&format!("  script_oid(\"{}\");\n", s.oid));
    t.push_str(&format!(
        "  script_version(\"{}\");\n",
        version_date(modified)
    ));
    t.push_str(&format!(
        "  script_tag(name:\"last_modification\", value:\"{}\");\n",
        tag_date(modified)
    ));
    t.push_str(&format!(
        "  script_tag(name:\"creation_date\", value:\"{}\");\n",
        tag_date(created)
    ));
    t.push_str(&format!(
        "  script_tag(name:\"cvss_base\", value:\"{}.{}\");\n",
        cvss / 10,
        cvss % 10
    ));
    t.push_str(
        "  script_tag(name:\"cvss_base_vector\", value:\"AV:N/AC:L/Au:N/C:P/I:P/A:P\");\n\
         \x20 script_tag(name:\"severity_vector\", value:\"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H\");\n\
         \x20 script_tag(name:\"severity_origin\", value:\"NVD\");\n",
    );
    t.push_str(&format!(
        "  script_tag(name:\"severity_date\", value:\"{}\");\n",
        tag_date(created + 86_400)
    ));
    t.push_str(&format!("  script_cve_id({});\n", cves.join(", ")));
    t.push_str(&format!("  script_name(\"{title}\");\n"));
    t.push_str("  script_category(ACT_GATHER_INFO);\n");
    t.push_str(&format!(
        "  script_copyright(\"Copyright (C) {} Outpost synthetic feed\");\n",
        civil(created).0
    ));
    t.push_str(&format!("  script_family(\"{family}\");\n"));
    t.push_str(&format!(
        "  script_dependencies(\"gb_{product}_detect.nasl\");\n\
         \x20 script_mandatory_keys(\"{product}/detected\");\n"
    ));
    t.push_str(&format!(
        "  script_tag(name:\"summary\", value:\"{title}. The remote host runs a version of {product} \
         that is affected by multiple vulnerabilities.\");\n"
    ));
    t.push_str(&format!(
        "  script_tag(name:\"vuldetect\", value:\"Checks if a vulnerable version is present on the target host.\");\n\
         \x20 script_tag(name:\"insight\", value:\"The following flaws exist: {} allow a remote attacker to \
         cause a denial of service or execute arbitrary code.\");\n",
        cves.join(", ").replace('"', "")
    ));
    t.push_str(&format!(
        "  script_tag(name:\"affected\", value:\"{product} prior to version {major}.{minor}.{patch}.\");\n\
         \x20 script_tag(name:\"solution\", value:\"Update to version {major}.{minor}.{patch} or later.\");\n\
         \x20 script_tag(name:\"solution_type\", value:\"VendorFix\");\n\
         \x20 script_tag(name:\"qod_type\", value:\"remote_banner\");\n\
         \x20 script_xref(name:\"URL\", value:\"https://advisories.example.invalid/{product}/{cve_year}/{}\");\n",
        s.index
    ));
    t.push_str("  exit(0);\n}\n\n");
    t.push_str(
        "include(\"host_details.inc\");\ninclude(\"version_func.inc\");\n\n\
         if(isnull(port = get_app_port(cpe:CPE)))\n  exit(0);\n\n\
         if(!infos = get_app_version_and_location(cpe:CPE, port:port, exit_no_version:TRUE))\n  exit(0);\n\n\
         version = infos[\"version\"];\nlocation = infos[\"location\"];\n\n",
    );
    // Most real scripts are short; a few carry long version tables. About 72% of them
    // stay under 4 KiB and the mean is about 4 KiB (552 MiB for 136k), as in the real feed.
    let u = r.below(100);
    let target = match u {
        0..=71 => 2_300 + r.below(1_200),
        72..=95 => 4_200 + r.below(2_900),
        _ => 7_000 + r.below(13_000),
    } as usize;
    while t.len() < target {
        let (a, b, c) = (r.below(20), r.below(50), r.below(99));
        t.push_str(&format!(
            "if(version_in_range(version:version, test_version:\"{a}.{b}.0\", test_version2:\"{a}.{b}.{c}\")) {{\n  \
             report = report_fixed_ver(installed_version:version, fixed_version:\"{a}.{b}.{}\", install_path:location);\n  \
             security_message(port:port, data:report);\n  exit(0);\n}}\n\n",
            c + 1 + u64::from(s.revision)
        ));
    }
    t.push_str("exit(99);\n");
    t
}

/// A shared `.inc` library; `n` numbers it, its name comes from the caller.
pub fn inc(seed: u64, n: u32, name: &str) -> String {
    let mut r = Rng::new(&[seed, 0x0069_6e63, u64::from(n)]);
    let mut t = format!(
        "# SPDX-FileCopyrightText: 2008 Outpost synthetic feed\n\
         # SPDX-License-Identifier: GPL-2.0-only\n\n\
         # @brief Functions of {name}, a shared library of the synthetic feed.\n\n"
    );
    let size = 6_000 + r.below(40_000) as usize;
    let mut f = 0;
    while t.len() < size {
        f += 1;
        t.push_str(&format!(
            "# @brief Helper {f}.\n#\n# @param data The data to look at.\n#\n\
             # @return TRUE when it matches, FALSE otherwise.\n#\n\
             function {}_helper_{f}(data) {{\n  local_var data, i;\n  \
             if(!data) {{\n    set_kb_item(name:\"vt_debug_empty/\" + get_script_oid(), value:get_script_oid() + \"#-#data#-#{f}\");\n    return;\n  }}\n  \
             for(i = 0; i < {}; i++) {{\n    if(ord(data[i]) == {})\n      return TRUE;\n  }}\n  return FALSE;\n}}\n\n",
            name.trim_end_matches(".inc").replace(['-', '.'], "_"),
            1 + r.below(64),
            r.below(256)
        ));
    }
    t
}

pub fn plugin_feed_info(day_time: i64) -> String {
    format!(
        "PLUGIN_SET = \"{}\";\nPLUGIN_FEED = \"Outpost Synthetic Feed\";\n\
         FEED_VENDOR = \"Outpost project\";\nFEED_HOME = \"https://outpost.invalid/feed-synthetic\";\n\
         FEED_NAME = \"Outpost Synthetic Feed\";\n",
        plugin_set(day_time)
    )
}

/// One Notus advisory (the ospd-openvas side), `revision` times updated.
pub fn advisory(seed: u64, j: u32, oid: &str, revision: u32, changed_on: u32) -> serde_json::Value {
    let mut r = Rng::new(&[seed, 0x0061_6476, u64::from(j)]);
    let created = DAY0 - 86_400 - r.below(6 * 365 * 86_400) as i64;
    let modified = if revision == 0 {
        created + r.below(86_400 * 30) as i64
    } else {
        DAY0 + i64::from(changed_on) * 86_400 - 7_200
    };
    let year = civil(created).0;
    let pkg = package(j);
    let cves: Vec<String> = (0..1 + r.below(6))
        .map(|_| format!("CVE-{year}-{}", 1000 + r.below(60_000)))
        .collect();
    json!({
        "oid": oid,
        "title": format!("{pkg} security update (SA-{year}-{j})"),
        "creation_date": created,
        "last_modification": modified,
        "advisory_id": format!("SA-{year}-{j}"),
        "advisory_xref": format!("https://advisories.example.invalid/SA-{year}-{j}"),
        "cves": cves,
        "summary": format!("The remote host is missing an update for the '{pkg}' package(s) announced via the SA-{year}-{j} advisory."),
        "insight": format!("Multiple vulnerabilities have been found in {pkg}: {}.", cves.join(", ")),
        "affected": format!("'{pkg}' package(s) on the affected releases."),
        "impact": "Successful exploitation may allow an attacker to execute arbitrary code or cause a denial of service.",
        "xrefs": [],
        "qod_type": "package",
        "severity": {
            "origin": "NVD",
            "date": created,
            "cvss_v2": "AV:N/AC:L/Au:N/C:P/I:P/A:P",
            "cvss_v3": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"
        }
    })
}

pub fn advisory_file(family: &str, advisories: Vec<serde_json::Value>) -> String {
    let v = json!({
        "version": "1.2",
        "spdx-license-identifier": "CC0-1.0",
        "copyright": "Copyright (C) 2025 Outpost synthetic feed",
        "family": family,
        "advisories": advisories,
    });
    // Pretty, as the real files are; `to_string_pretty` of a Value cannot fail.
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
    s.push('\n');
    s
}

/// One product entry (the notus-scanner side): the fixed package version.
pub fn product_entry(j: u32, oid: &str, revision: u32) -> serde_json::Value {
    json!({
        "oid": oid,
        "fixed_packages": [
            {"name": package(j), "full_version": format!("{}.{}-{}", 1 + j % 9, j % 31, 1 + revision), "specifier": ">="}
        ]
    })
}

pub fn product_file(name: &str, package_type: &str, entries: Vec<serde_json::Value>) -> String {
    let v = json!({
        "version": "1.2",
        "package_type": package_type,
        "product_name": name,
        "advisories": entries,
    });
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
    s.push('\n');
    s
}

fn package(j: u32) -> String {
    format!(
        "{}-lib{}",
        PRODUCTS[(j as usize) % PRODUCTS.len()].replace('_', "-"),
        j % 97
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_right() {
        assert_eq!(plugin_set(DAY0), "202509150400");
        assert_eq!(
            tag_date(DAY0),
            "2025-09-15 04:00:00 +0000 (Mon, 15 Sep 2025)"
        );
        assert_eq!(version_date(0), "1970-01-01T00:00:00+0000");
        assert_eq!(plugin_set(951_782_400), "200002290000");
    }
}
