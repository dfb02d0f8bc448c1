//! Counting the VTs ospd-openvas lists in a real Debian `redis-server`, laid out as
//! openvas and ospd-openvas leave it: the NASL cache in the database marked `nvticache`,
//! the Notus cache in the one marked `notuscache`, scan knowledge bases beside them.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use outpost_scanner::{count_cached_vts, CachedVts};

struct Redis {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis() -> Redis {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("redis.sock");
    let child = Command::new("redis-server")
        .args(["--port", "0", "--save", "", "--appendonly", "no"])
        .arg("--unixsocket")
        .arg(&socket)
        .args(["--databases", "1025", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (scripts/setup installs it)");
    let start = Instant::now();
    while UnixStream::connect(&socket).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "redis did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Redis {
        child,
        socket,
        _dir: dir,
    }
}

/// Runs redis-cli with `commands` (one per line) against database `db`.
fn cli(socket: &Path, db: u32, commands: &str) {
    let mut c = Command::new("redis-cli")
        .arg("-s")
        .arg(socket)
        .args(["-n", &db.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-cli");
    use std::io::Write;
    c.stdin
        .take()
        .unwrap()
        .write_all(commands.as_bytes())
        .unwrap();
    assert!(c.wait().unwrap().success());
}

fn count(r: &Redis) -> CachedVts {
    count_cached_vts(&r.socket, Duration::from_secs(10)).expect("count")
}

#[test]
fn counts_both_caches_and_nothing_else() {
    let r = redis();
    // Nothing loaded yet: no cache, nothing listed.
    assert_eq!(count(&r), CachedVts::default());

    // The NASL cache as openvas writes it (version mark, per-OID metadata, file index,
    // preferences) in database 1.
    let mut nvt = String::from("RPUSH nvticache 202509160400\n");
    for i in 0..2_500 {
        nvt.push_str(&format!(
            "RPUSH nvt:1.3.6.1.4.1.25623.1.0.{i} f{i}.nasl x\n\
             RPUSH filename:f{i}.nasl 1757930000 1.3.6.1.4.1.25623.1.0.{i}\n\
             RPUSH oid:1.3.6.1.4.1.25623.1.0.{i}:prefs p\n"
        ));
    }
    cli(&r.socket, 1, &nvt);
    // A scan's knowledge base with keys shaped like the cache's, unmarked: not counted.
    cli(
        &r.socket,
        2,
        "RPUSH nvt:1.3.6.1.4.1.25623.1.0.1 x\nSET internal/scanid abc\n",
    );
    // The Notus cache, as ospd-openvas writes it, in a database after that.
    let mut notus = String::from("LPUSH notuscache 1\n");
    for j in 0..120 {
        notus.push_str(&format!(
            "RPUSH internal/notus/advisories/1.3.6.1.4.1.25623.1.1.2.{j} {{}}\n"
        ));
    }
    cli(&r.socket, 7, &notus);
    let c = count(&r);
    assert_eq!(
        c,
        CachedVts {
            nasl: 2_500,
            notus: 120
        }
    );
    assert_eq!(c.total(), 2_620);

    // A script openvas refused has no cache entry: one fewer.
    cli(&r.socket, 1, "DEL nvt:1.3.6.1.4.1.25623.1.0.7\n");
    assert_eq!(count(&r).nasl, 2_499);
}

#[test]
fn no_redis_is_an_error_naming_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gone.sock");
    let e = count_cached_vts(&socket, Duration::from_secs(1)).unwrap_err();
    assert!(e.to_string().contains("gone.sock"), "{e}");
}
