//! Readiness probes, each a few bytes of the real protocol.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use outpost_osp::{OspClient, Request, Response};

use crate::component::Probe;
use crate::error::ProbeError;

/// Runs `probe` against the component whose process is `pid`, up for
/// `running_for`, allowing `timeout` for the exchange.
pub fn check_probe(
    probe: &Probe,
    pid: u32,
    running_for: Duration,
    timeout: Duration,
) -> Result<(), ProbeError> {
    match probe {
        Probe::Mqtt { addr } => mqtt(*addr, timeout),
        Probe::RedisPing { socket } => redis_ping(socket, timeout),
        Probe::BrokerConnection { port } => broker_connection(pid, *port),
        Probe::OspVersion { socket } => osp_version(socket, timeout),
        Probe::AliveFor { grace } if running_for >= *grace => Ok(()),
        Probe::AliveFor { grace } => Err(ProbeError::NotYet(format!(
            "up {}s of the {}s grace period",
            running_for.as_secs(),
            grace.as_secs()
        ))),
    }
}

/// An MQTT 3.1.1 CONNECT: clean session, 10 s keep-alive, no credentials.
pub fn mqtt_connect_packet(client_id: &str) -> Vec<u8> {
    let id = client_id.as_bytes();
    let id = &id[..id.len().min(23)]; // the 3.1.1 guaranteed maximum
    let mut var = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x0a];
    var.extend_from_slice(&(id.len() as u16).to_be_bytes());
    var.extend_from_slice(id);
    // Remaining length < 128 here, so it is a single byte.
    let mut pkt = vec![0x10, var.len() as u8];
    pkt.extend(var);
    pkt
}

fn mqtt(addr: SocketAddr, timeout: Duration) -> Result<(), ProbeError> {
    let target = format!("mqtt://{addr}");
    let mut s =
        TcpStream::connect_timeout(&addr, timeout).map_err(|source| ProbeError::Connect {
            target: target.clone(),
            source,
        })?;
    let io_err = |source| ProbeError::Io {
        target: target.clone(),
        source,
    };
    s.set_read_timeout(Some(timeout)).map_err(io_err)?;
    s.set_write_timeout(Some(timeout)).map_err(io_err)?;
    // A fixed id: the broker drops an older session with the same id,
    // which can only be a probe of ours.
    s.write_all(&mqtt_connect_packet("outpost-probe"))
        .map_err(io_err)?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).map_err(io_err)?;
    // DISCONNECT, so the broker logs a clean goodbye rather than an error.
    let _ = s.write_all(&[0xe0, 0x00]);
    match ack {
        [0x20, 0x02, _, 0] => Ok(()),
        [0x20, 0x02, _, code] => Err(ProbeError::Unexpected {
            target,
            answer: format!(
                "CONNACK refused, return code {code} ({})",
                connack_reason(code)
            ),
        }),
        other => Err(ProbeError::Unexpected {
            target,
            answer: format!("{other:02x?} instead of CONNACK"),
        }),
    }
}

fn connack_reason(code: u8) -> &'static str {
    match code {
        1 => "unacceptable protocol version",
        2 => "identifier rejected",
        3 => "server unavailable",
        4 => "bad user name or password",
        5 => "not authorized",
        _ => "unknown",
    }
}

fn redis_ping(socket: &Path, timeout: Duration) -> Result<(), ProbeError> {
    // redis answers `-LOADING ...` while it reads its dump, which must not count as
    // ready (ospd would see an empty VT cache).
    redis_command(socket, b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n", timeout)
}

/// Asks redis to write its dump now (`BGSAVE`), so the VT cache that ospd-openvas just
/// loaded survives a power cut, not only a clean shutdown. The save runs in the
/// background; `+Background saving started` is the answer wanted.
pub fn redis_save(socket: &Path, timeout: Duration) -> Result<(), ProbeError> {
    redis_command(
        socket,
        b"*1\r\n$6\r\nBGSAVE\r\n",
        b"+Background saving started\r\n",
        timeout,
    )
}

/// Sends one RESP command and compares the one-line answer with `want`.
fn redis_command(
    socket: &Path,
    command: &[u8],
    want: &[u8],
    timeout: Duration,
) -> Result<(), ProbeError> {
    let target = format!("redis at {}", socket.display());
    let mut s = UnixStream::connect(socket).map_err(|source| ProbeError::Connect {
        target: target.clone(),
        source,
    })?;
    let io_err = |source| ProbeError::Io {
        target: target.clone(),
        source,
    };
    s.set_read_timeout(Some(timeout)).map_err(io_err)?;
    s.set_write_timeout(Some(timeout)).map_err(io_err)?;
    s.write_all(command).map_err(io_err)?;
    let deadline = Instant::now() + timeout;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") && line.len() < 512 && Instant::now() < deadline {
        match s.read(&mut byte).map_err(io_err)? {
            0 => break,
            _ => line.push(byte[0]),
        }
    }
    if line == want {
        Ok(())
    } else {
        Err(ProbeError::Unexpected {
            target,
            answer: printable(&line),
        })
    }
}

fn osp_version(socket: &Path, timeout: Duration) -> Result<(), ProbeError> {
    let client = OspClient::new(socket)
        .with_connect_timeout(timeout)
        .with_write_timeout(timeout)
        .with_read_timeout(timeout)
        .with_total_timeout(timeout)
        .with_max_response(64 * 1024);
    match client.send(&Request::GetVersion)? {
        Response::Version(_) => Ok(()),
        other => Err(ProbeError::Unexpected {
            target: format!("ospd at {}", socket.display()),
            answer: format!("{other:?}"),
        }),
    }
}

fn broker_connection(pid: u32, port: u16) -> Result<(), ProbeError> {
    let inodes = socket_inodes(pid)
        .map_err(|e| ProbeError::NotYet(format!("cannot list the sockets of pid {pid}: {e}")))?;
    let mut tables = String::new();
    for t in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = fs::read_to_string(t) {
            tables.push_str(&text);
        }
    }
    if established_to_port(&tables, port, &inodes) {
        Ok(())
    } else {
        Err(ProbeError::NotYet(format!(
            "process {pid} has no connection to the broker on port {port}"
        )))
    }
}

/// Socket inodes held open by `pid` (from `/proc/<pid>/fd`).
fn socket_inodes(pid: u32) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(target) = fs::read_link(entry?.path()) else {
            continue; // closed between read_dir and read_link
        };
        let t = target.to_string_lossy();
        if let Some(n) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
            if let Ok(inode) = n.parse() {
                out.push(inode);
            }
        }
    }
    Ok(out)
}

/// Whether a `/proc/net/tcp{,6}` table shows one of `inodes` in state
/// ESTABLISHED with remote port `port`.
pub fn established_to_port(table: &str, port: u16, inodes: &[u64]) -> bool {
    table.lines().any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[3] != "01" {
            return false;
        }
        let remote_port = f[2]
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        let inode = f[9].parse::<u64>().ok();
        remote_port == Some(port) && inode.is_some_and(|i| inodes.contains(&i))
    })
}

fn printable(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "nothing".into();
    }
    let s = String::from_utf8_lossy(bytes);
    format!("{:?}", s.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::net::TcpListener;
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;
    use std::thread;

    fn sock_path(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "outpost-scanner-probe-{}-{tag}.sock",
            std::process::id()
        ));
        let _ = fs::remove_file(&p);
        p
    }

    const T: Duration = Duration::from_secs(2);

    #[test]
    fn connect_packet_is_mqtt_311() {
        let p = mqtt_connect_packet("ab");
        assert_eq!(
            p,
            vec![0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 10, 0, 2, b'a', b'b']
        );
    }

    /// A fake broker answering one CONNECT with `ack`; returns the CONNECT.
    fn fake_broker(ack: [u8; 4]) -> (SocketAddr, thread::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut head = [0u8; 2];
            c.read_exact(&mut head).unwrap();
            let mut rest = vec![0u8; head[1] as usize];
            c.read_exact(&mut rest).unwrap();
            c.write_all(&ack).unwrap();
            [head.to_vec(), rest].concat()
        });
        (addr, h)
    }

    #[test]
    fn mqtt_probe_accepts_connack_zero_and_names_a_refusal() {
        let (addr, h) = fake_broker([0x20, 2, 0, 0]);
        check_probe(&Probe::Mqtt { addr }, 0, Duration::ZERO, T).unwrap();
        assert_eq!(h.join().unwrap(), mqtt_connect_packet("outpost-probe"));

        let (addr, h) = fake_broker([0x20, 2, 0, 5]);
        let e = check_probe(&Probe::Mqtt { addr }, 0, Duration::ZERO, T).unwrap_err();
        assert!(
            e.to_string().contains("return code 5 (not authorized)"),
            "{e}"
        );
        h.join().unwrap();
    }

    #[test]
    fn mqtt_probe_on_a_closed_port_is_a_connect_error() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let e = check_probe(&Probe::Mqtt { addr }, 0, Duration::ZERO, T).unwrap_err();
        assert!(matches!(e, ProbeError::Connect { .. }), "{e}");
    }

    /// A fake redis answering one command with `answer`.
    fn fake_redis(path: &Path, answer: &'static [u8]) -> thread::JoinHandle<Vec<u8>> {
        let l = UnixListener::bind(path).unwrap();
        thread::spawn(move || {
            let (c, _) = l.accept().unwrap();
            let mut r = io::BufReader::new(c);
            let mut got = Vec::new();
            for _ in 0..3 {
                r.read_until(b'\n', &mut got).unwrap();
            }
            r.get_mut().write_all(answer).unwrap();
            got
        })
    }

    #[test]
    fn redis_save_sends_bgsave_and_wants_it_started() {
        let path = sock_path("bgsave");
        let h = fake_redis(&path, b"+Background saving started\r\n");
        redis_save(&path, Duration::from_secs(5)).unwrap();
        assert_eq!(h.join().unwrap(), b"*1\r\n$6\r\nBGSAVE\r\n");
        let path = sock_path("bgsave-busy");
        let h = fake_redis(&path, b"-ERR Background save already in progress\r\n");
        let e = redis_save(&path, Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("already in progress"), "{e}");
        h.join().unwrap();
    }

    #[test]
    fn redis_probe_wants_pong_not_loading() {
        let p = sock_path("redis-ok");
        let h = fake_redis(&p, b"+PONG\r\n");
        check_probe(
            &Probe::RedisPing { socket: p.clone() },
            0,
            Duration::ZERO,
            T,
        )
        .unwrap();
        assert_eq!(h.join().unwrap(), b"*1\r\n$4\r\nPING\r\n");
        let _ = fs::remove_file(&p);

        let h = fake_redis(&p, b"-LOADING Redis is loading the dataset in memory\r\n");
        let e = check_probe(
            &Probe::RedisPing { socket: p.clone() },
            0,
            Duration::ZERO,
            T,
        )
        .unwrap_err();
        assert!(e.to_string().contains("-LOADING"), "{e}");
        h.join().unwrap();
        let _ = fs::remove_file(&p);
    }

    const VERSION: &str = r#"<get_version_response status="200" status_text="OK"><protocol><name>OSP</name><version>21.4</version></protocol><daemon><name>OSPd OpenVAS</name><version>22.10.6</version></daemon><scanner><name>openvas</name><version>OpenVAS 23.45.1</version></scanner></get_version_response>"#;

    /// A fake ospd: reads one command to EOF, answers `answer`.
    fn fake_ospd(path: &Path, answer: &'static str) -> thread::JoinHandle<Vec<u8>> {
        let l = UnixListener::bind(path).unwrap();
        thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut got = Vec::new();
            c.read_to_end(&mut got).unwrap();
            c.write_all(answer.as_bytes()).unwrap();
            got
        })
    }

    #[test]
    fn osp_probe_sends_get_version() {
        let p = sock_path("ospd-ok");
        let h = fake_ospd(&p, VERSION);
        check_probe(
            &Probe::OspVersion { socket: p.clone() },
            0,
            Duration::ZERO,
            T,
        )
        .unwrap();
        assert_eq!(h.join().unwrap(), b"<get_version/>");
        let _ = fs::remove_file(&p);
    }

    #[test]
    fn osp_probe_fails_on_garbage_and_on_a_missing_socket() {
        let p = sock_path("ospd-bad");
        let h = fake_ospd(&p, "<html>nope</html>");
        assert!(check_probe(
            &Probe::OspVersion { socket: p.clone() },
            0,
            Duration::ZERO,
            T
        )
        .is_err());
        h.join().unwrap();
        let _ = fs::remove_file(&p);
        let e = check_probe(
            &Probe::OspVersion { socket: p.clone() },
            0,
            Duration::ZERO,
            T,
        )
        .unwrap_err();
        assert!(
            matches!(e, ProbeError::Osp(ref o) if o.is_transient()),
            "{e}"
        );
    }

    #[test]
    fn alive_probe_waits_for_the_grace_period() {
        let probe = Probe::AliveFor {
            grace: Duration::from_secs(5),
        };
        assert!(check_probe(&probe, 1, Duration::from_secs(4), T).is_err());
        assert!(check_probe(&probe, 1, Duration::from_secs(5), T).is_ok());
    }

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:075B 00000000:0000 0A 00000000:00000000 00:00000000 00000000   103        0 1111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:D3A2 0100007F:075B 01 00000000:00000000 00:00000000 00000000   107        0 2222 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:D3A4 0100007F:075B 06 00000000:00000000 00:00000000 00000000   107        0 3333 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn established_connection_is_found_by_inode_port_and_state() {
        assert!(established_to_port(TCP, 1883, &[2222]));
        // Listening socket (state 0A) and TIME_WAIT (06) do not count.
        assert!(!established_to_port(TCP, 1883, &[1111, 3333]));
        assert!(!established_to_port(TCP, 1884, &[2222]));
    }

    #[test]
    fn broker_connection_probe_reads_proc_for_a_real_socket() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let probe = Probe::BrokerConnection { port };
        let me = std::process::id();
        assert!(check_probe(&probe, me, Duration::ZERO, T).is_err());
        let _c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _s = l.accept().unwrap();
        check_probe(&probe, me, Duration::ZERO, T).unwrap();
    }
}
