//! Ad-hoc: how fast are the full and count-only get_vts paths on a
//! feed-sized answer? `cargo run --release -p outpost-osp --example vts_speed`
use std::time::Instant;

fn main() {
    let mut xml = String::from(
        r#"<get_vts_response status="200" status_text="OK"><vts vts_version="1" total="100000">"#,
    );
    for i in 0..100_000 {
        xml.push_str(&format!(
            "<vt id=\"1.3.6.1.4.1.25623.1.0.{i}\"><name>Debian: Security Advisory (DSA-{i}-1)</name><refs><ref type=\"cve\" id=\"CVE-2023-{i}\"/><ref type=\"url\" id=\"https://security-tracker.debian.org/tracker/DSA-{i}-1\"/></refs><creation_time>1690000000</creation_time><modification_time>1700000000</modification_time><summary>The remote host is missing an update announced via the referenced Security Advisory. &amp; more text here to make it realistic in size, about two hundred bytes of summary.</summary><affected>'openssl' package(s) on Debian 12.</affected><insight>Multiple vulnerabilities were found.</insight><solution type=\"VendorFix\" method=\"DebianAPTUpgrade\">Please install the updated package(s).</solution><detection qod_type=\"package\"/><severities><severity type=\"cvss_base_v3\"><value>CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H</value><origin/><date>1690000000</date></severity></severities><custom><category>3</category><family>Debian Local Security Checks</family><filename>2023/debian/deb_{i}.nasl</filename><required_keys>ssh/login/packages</required_keys></custom></vt>"
        ));
    }
    xml.push_str("</vts></get_vts_response>");
    println!("{} MB", xml.len() / 1_000_000);
    let t = Instant::now();
    let c = outpost_osp::response::count_get_vts(xml.as_bytes()).unwrap();
    println!("count {} in {:?}", c.count, t.elapsed());
    let t = Instant::now();
    let mut n = 0;
    outpost_osp::response::parse_get_vts_with(xml.as_bytes(), |_| n += 1).unwrap();
    println!("full {} in {:?}", n, t.elapsed());
}
