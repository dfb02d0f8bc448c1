//! A fake ospd-openvas for unit tests: canned OSP answers on a unix socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;

/// A fake ospd-openvas on a unix socket: each connection gets the next canned
/// answer (`{id}` replaced by the scan id from the command). After the last
/// answer the listener closes, so later connects are refused.
pub struct FakeOspd {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
    commands: Arc<Mutex<Vec<String>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FakeOspd {
    pub fn start(answers: Vec<&'static str>) -> FakeOspd {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ospd.sock");
        let l = UnixListener::bind(&path).unwrap();
        let commands = Arc::new(Mutex::new(Vec::new()));
        let seen = commands.clone();
        let thread = thread::spawn(move || {
            let mut id = String::new();
            for a in answers {
                let (mut c, _) = l.accept().unwrap();
                let mut cmd = String::new();
                c.read_to_string(&mut cmd).unwrap();
                if let Some(i) = cmd.find("scan_id=\"") {
                    let rest = &cmd[i + 9..];
                    id = rest[..rest.find('"').unwrap()].to_owned();
                }
                seen.lock().unwrap().push(cmd);
                c.write_all(a.replace("{id}", &id).as_bytes()).unwrap();
            }
        });
        FakeOspd {
            path,
            _dir: dir,
            commands,
            thread: Some(thread),
        }
    }

    /// The commands received so far, without waiting for the rest of the script.
    pub fn seen(&self) -> Vec<String> {
        self.commands.lock().unwrap().clone()
    }

    /// Waits for the script to finish; returns every command received.
    pub fn commands(&mut self) -> Vec<String> {
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.commands.lock().unwrap().clone()
    }
}

pub const STARTED: &str =
    r#"<start_scan_response status="200" status_text="OK"><id>{id}</id></start_scan_response>"#;
pub const RUNNING_50: &str = r#"<get_scans_response status="200" status_text="OK"><scan id="{id}" target="10.9.0.2" progress="50" status="running" start_time="1718000000" end_time="0"><results><result name="OS Detection Consolidation and Reporting" type="Log Message" severity="0.0" host="10.9.0.2" hostname="" test_id="1.3.6.1.4.1.25623.1.0.105937" port="general/tcp" qod="80" uri="">Best matching OS: Debian</result></results></scan></get_scans_response>"#;
pub const FINISHED: &str = r#"<get_scans_response status="200" status_text="OK"><scan id="{id}" target="10.9.0.2" progress="100" status="finished" start_time="1718000000" end_time="1718000600"><results><result name="OpenSSH &amp;lt; 9.3p2 RCE" type="Alarm" severity="9.8" host="10.9.0.2" hostname="srv1" test_id="1.3.6.1.4.1.25623.1.0.104870" port="22/tcp" qod="80" uri="">Installed version: 8.9p1</result><result name="Weak ciphers" type="Alarm" severity="5.0" host="10.9.0.2" hostname="srv1" test_id="1.3.6.1.4.1.25623.1.0.103440" port="443/tcp" qod="98" uri="">RC4 offered</result></results></scan></get_scans_response>"#;
pub const STOPPED: &str = r#"<get_scans_response status="200" status_text="OK"><scan id="{id}" target="10.9.0.2" progress="60" status="stopped" start_time="1718000000" end_time="1718000100"><results/></scan></get_scans_response>"#;
pub const STOP_OK: &str = r#"<stop_scan_response status="200" status_text="OK"/>"#;
pub const DELETED: &str = r#"<delete_scan_response status="200" status_text="OK"/>"#;

/// A /28 scan (10.9.0.1-14) half way: 10.9.0.2 done, 10.9.0.3 being scanned, eight
/// addresses found dead so far.
pub const SUBNET_RUNNING: &str = r#"<get_scans_response status="200" status_text="OK"><scan id="{id}" target="10.9.0.0/28" progress="40" status="running" start_time="1718000000" end_time="0"><results><result name="HOST_START" type="Log Message" severity="0.0" host="10.9.0.2" hostname="" test_id="" port="" qod="" uri="">1718000001</result><result name="OpenSSH &amp;lt; 9.3p2 RCE" type="Alarm" severity="9.8" host="10.9.0.2" hostname="srv1" test_id="1.3.6.1.4.1.25623.1.0.104870" port="22/tcp" qod="80" uri="">Installed version: 8.9p1</result><result name="HOST_END" type="Log Message" severity="0.0" host="10.9.0.2" hostname="" test_id="" port="" qod="" uri="">1718000100</result><result name="HOST_START" type="Log Message" severity="0.0" host="10.9.0.3" hostname="" test_id="" port="" qod="" uri="">1718000002</result></results><progress><host name="10.9.0.3">30</host><host name="10.9.0.4">-1</host><overall>40</overall><count_alive>1</count_alive><count_dead>8</count_dead><count_excluded>1</count_excluded><count_total>13</count_total></progress></scan></get_scans_response>"#;
/// The same scan at its end: 10.9.0.3 had a medium finding on 443, 10.9.0.12 (found by
/// ARP only) a log one; every other address was dead.
pub const SUBNET_FINISHED: &str = r#"<get_scans_response status="200" status_text="OK"><scan id="{id}" target="10.9.0.0/28" progress="100" status="finished" start_time="1718000000" end_time="1718000600"><results><result name="Weak ciphers" type="Alarm" severity="5.0" host="10.9.0.3" hostname="" test_id="1.3.6.1.4.1.25623.1.0.103440" port="443/tcp" qod="98" uri="">RC4 offered</result><result name="HOST_END" type="Log Message" severity="0.0" host="10.9.0.3" hostname="" test_id="" port="" qod="" uri="">1718000300</result><result name="HOST_START" type="Log Message" severity="0.0" host="10.9.0.12" hostname="" test_id="" port="" qod="" uri="">1718000301</result><result name="OS Detection Consolidation and Reporting" type="Log Message" severity="0.0" host="10.9.0.12" hostname="printer" test_id="1.3.6.1.4.1.25623.1.0.105937" port="general/tcp" qod="80" uri="">Best matching OS: embedded</result><result name="HOST_END" type="Log Message" severity="0.0" host="10.9.0.12" hostname="" test_id="" port="" qod="" uri="">1718000400</result></results><progress><overall>100</overall><count_alive>3</count_alive><count_dead>10</count_dead><count_excluded>1</count_excluded><count_total>13</count_total></progress></scan></get_scans_response>"#;
