//! The unix-socket transport: one command per connection. Write the
//! command, half-close, read the answer until EOF, under a size cap and
//! connect / write / read / total deadlines. Blocking I/O: the daemon
//! calls this from its own threads.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};
use tracing::{debug, warn};

use crate::error::OspError;
use crate::request::{GetVts, Request};
use crate::response::{self, FeedInfo, Response, Vt};
use crate::xml::read::StreamFault;

/// Default socket of Debian's ospd-openvas.
pub const DEFAULT_SOCKET: &str = "/run/ospd/ospd-openvas.sock";

/// Client for one ospd-openvas unix socket. Cheap to clone; holds no
/// connection between calls.
#[derive(Debug, Clone)]
pub struct OspClient {
    path: PathBuf,
    connect_timeout: Duration,
    write_timeout: Duration,
    read_timeout: Duration,
    total_timeout: Duration,
    max_response: u64,
}

impl OspClient {
    /// A client for the socket at `path` with defaults fit for a full
    /// feed listing on a small board: connect 5 s, write 30 s, 120 s of
    /// silence, 15 min in total, 1 GiB at most.
    pub fn new(path: impl AsRef<Path>) -> Self {
        OspClient {
            path: path.as_ref().to_path_buf(),
            connect_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(30),
            // ospd-openvas may sit silent a long while before the first
            // VT of a get_vts while it walks redis.
            read_timeout: Duration::from_secs(120),
            total_timeout: Duration::from_secs(15 * 60),
            max_response: 1 << 30,
        }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the connect timeout.
    pub fn with_connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Sets the timeout for writing the command.
    pub fn with_write_timeout(mut self, t: Duration) -> Self {
        self.write_timeout = t;
        self
    }

    /// Sets the longest silence accepted while reading the answer.
    pub fn with_read_timeout(mut self, t: Duration) -> Self {
        self.read_timeout = t;
        self
    }

    /// Sets the deadline for the whole exchange.
    pub fn with_total_timeout(mut self, t: Duration) -> Self {
        self.total_timeout = t;
        self
    }

    /// Sets the largest answer accepted, in bytes.
    pub fn with_max_response(mut self, bytes: u64) -> Self {
        self.max_response = bytes;
        self
    }

    /// Sends one command and parses its answer.
    pub fn send(&self, request: &Request) -> Result<Response, OspError> {
        self.send_with(request, |input| request.parse_response(input))
    }

    /// Sends one command and hands the answer stream to `parse`: for
    /// callers that stream, e.g. [`response::parse_get_vts_with`].
    pub fn send_with<T>(
        &self,
        request: &Request,
        parse: impl FnOnce(&mut dyn BufRead) -> Result<T, OspError>,
    ) -> Result<T, OspError> {
        let command = request.command();
        let started = Instant::now();
        let deadline = started + self.total_timeout;
        let mut xml = request.to_xml()?;
        let stream = self.connect()?;
        let sent = self.write_command(&stream, &xml, deadline);
        // The command may hold credentials.
        crate::secret::wipe(std::mem::take(&mut xml));
        sent?;
        let mut input = BufReader::with_capacity(
            64 * 1024,
            Deadlined {
                stream,
                deadline,
                read_timeout: self.read_timeout,
                total_timeout: self.total_timeout,
                cap: self.max_response,
                read: 0,
            },
        );
        let result = parse(&mut input);
        let received = input.get_ref().read;
        match &result {
            Ok(_) => debug!(
                command,
                received,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "OSP command done"
            ),
            Err(e) => warn!(command, received, error = %e, "OSP command failed"),
        }
        result
    }

    /// Streams a `get_vts` answer, calling `on_vt` for each VT; only one
    /// VT is held in memory at a time.
    pub fn get_vts_each(
        &self,
        query: &GetVts,
        on_vt: impl FnMut(Vt),
    ) -> Result<FeedInfo, OspError> {
        let request = Request::GetVts(query.clone());
        self.send_with(&request, |input| response::parse_get_vts_with(input, on_vt))
    }

    fn connect(&self) -> Result<UnixStream, OspError> {
        let connect_err = |source: io::Error| OspError::Connect {
            path: self.path.clone(),
            source,
        };
        let addr = SockAddr::unix(&self.path).map_err(connect_err)?;
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(connect_err)?;
        match socket.connect_timeout(&addr, self.connect_timeout) {
            Ok(()) => Ok(UnixStream::from(OwnedFd::from(socket))),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(OspError::Timeout {
                phase: "connect",
                after: self.connect_timeout,
            }),
            Err(e) => Err(connect_err(e)),
        }
    }

    fn write_command(
        &self,
        mut stream: &UnixStream,
        xml: &[u8],
        deadline: Instant,
    ) -> Result<(), OspError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let limit = self.write_timeout.min(remaining);
        if limit.is_zero() {
            return Err(OspError::Timeout {
                phase: "total",
                after: self.total_timeout,
            });
        }
        stream.set_write_timeout(Some(limit))?;
        match stream.write_all(xml).and_then(|()| stream.flush()) {
            Ok(()) => {}
            Err(e) if is_timeout(&e) => {
                return Err(OspError::Timeout {
                    phase: "write",
                    after: limit,
                })
            }
            Err(e) => return Err(OspError::Io(e)),
        }
        // ospd reads the command until EOF (or a complete document):
        // the half-close tells it the command is complete.
        stream.shutdown(Shutdown::Write)?;
        Ok(())
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The read side of the socket with the per-read and total deadlines and
/// the size cap applied. Faults travel as [`StreamFault`].
struct Deadlined {
    stream: UnixStream,
    deadline: Instant,
    read_timeout: Duration,
    total_timeout: Duration,
    cap: u64,
    read: u64,
}

impl Read for Deadlined {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(StreamFault::Timeout("total", self.total_timeout).into_io());
        }
        let (limit, phase, after) = if remaining < self.read_timeout {
            (remaining, "total", self.total_timeout)
        } else {
            (self.read_timeout, "read", self.read_timeout)
        };
        self.stream.set_read_timeout(Some(limit))?;
        // Read at most one byte past the cap, so an oversized answer is
        // noticed without buffering much more of it.
        let room = self.cap.saturating_sub(self.read).saturating_add(1);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = match self.stream.read(&mut buf[..want]) {
            Ok(n) => n,
            Err(e) if is_timeout(&e) => return Err(StreamFault::Timeout(phase, after).into_io()),
            Err(e) => return Err(e),
        };
        self.read += n as u64;
        if self.read > self.cap {
            return Err(StreamFault::TooLarge(self.cap).into_io());
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::GetScans;
    use std::os::unix::net::UnixListener;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::mpsc;
    use std::thread::{self, JoinHandle};

    /// A throwaway socket path in the system temp dir.
    fn socket_path(tag: &str) -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let p =
            std::env::temp_dir().join(format!("outpost-osp-{}-{tag}-{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    /// What the fake ospd does after reading the command to EOF.
    enum Answer {
        /// Write these bytes, then close.
        Bytes(Vec<u8>),
        /// Write these bytes in pieces with a pause between, then close.
        Trickle(Vec<u8>, Duration),
        /// Keep the connection open, silent, until told to let go.
        Hang(mpsc::Receiver<()>),
    }

    /// A one-connection fake ospd; returns what it received.
    fn fake_ospd(path: &Path, answer: Answer) -> JoinHandle<Vec<u8>> {
        let listener = UnixListener::bind(path).unwrap();
        thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            conn.read_to_end(&mut got).unwrap();
            match answer {
                Answer::Bytes(b) => {
                    let _ = conn.write_all(&b);
                }
                Answer::Trickle(b, pause) => {
                    for chunk in b.chunks(8) {
                        if conn.write_all(chunk).is_err() {
                            break;
                        }
                        thread::sleep(pause);
                    }
                }
                Answer::Hang(release) => {
                    let _ = release.recv();
                }
            }
            got
        })
    }

    const VERSION: &str = r#"<?xml version='1.0' encoding='utf-8'?>
<get_version_response status="200" status_text="OK"><protocol><name>OSP</name><version>21.4</version></protocol><daemon><name>OSPd OpenVAS</name><version>22.7.1</version></daemon><scanner><name>openvas</name><version>OpenVAS 23.0.1</version></scanner></get_version_response>"#;

    #[test]
    fn sends_the_command_and_parses_the_answer() {
        let path = socket_path("ok");
        let server = fake_ospd(&path, Answer::Bytes(VERSION.as_bytes().to_vec()));
        let client = OspClient::new(&path);
        let resp = client.send(&Request::GetVersion).unwrap();
        match resp {
            Response::Version(v) => assert_eq!(v.daemon.name, "OSPd OpenVAS"),
            other => panic!("{other:?}"),
        }
        assert_eq!(server.join().unwrap(), b"<get_version/>");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn error_status_from_the_daemon_is_typed() {
        let path = socket_path("404");
        let server = fake_ospd(
            &path,
            Answer::Bytes(
                br#"<get_scans_response status="404" status_text="Failed to find scan 'f14747d3-a4d7-4e79-99bb-a0a1276cb78c'"/>"#
                    .to_vec(),
            ),
        );
        let client = OspClient::new(&path);
        let err = client
            .send(&GetScans::status("f14747d3-a4d7-4e79-99bb-a0a1276cb78c").into())
            .unwrap_err();
        assert!(err.is_not_found(), "{err:?}");
        let sent = String::from_utf8(server.join().unwrap()).unwrap();
        assert!(sent.starts_with("<get_scans scan_id=\"f14747d3-"), "{sent}");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn connection_closed_mid_answer_is_an_error() {
        let path = socket_path("early");
        let half = VERSION.as_bytes()[..VERSION.len() / 2].to_vec();
        let server = fake_ospd(&path, Answer::Bytes(half));
        let err = OspClient::new(&path)
            .send(&Request::GetVersion)
            .unwrap_err();
        assert!(matches!(err, OspError::Xml { .. }), "{err:?}");
        server.join().unwrap();
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn connection_closed_without_answer_is_empty_response() {
        let path = socket_path("empty");
        let server = fake_ospd(&path, Answer::Bytes(Vec::new()));
        let err = OspClient::new(&path).send(&Request::CheckFeed).unwrap_err();
        assert!(matches!(err, OspError::EmptyResponse), "{err:?}");
        assert!(err.is_transient());
        server.join().unwrap();
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn oversized_answer_is_cut_off() {
        let path = socket_path("big");
        let mut big =
            String::from(r#"<get_vts_response status="200" status_text="OK"><vts total="5000">"#);
        for i in 0..5000 {
            big.push_str(&format!(
                "<vt id=\"1.3.6.1.4.1.25623.1.0.{i}\"><name>x</name></vt>"
            ));
        }
        big.push_str("</vts></get_vts_response>");
        let server = fake_ospd(&path, Answer::Bytes(big.into_bytes()));
        let client = OspClient::new(&path).with_max_response(4096);
        let err = client.send(&GetVts::default().into()).unwrap_err();
        assert!(
            matches!(err, OspError::ResponseTooLarge { limit: 4096 }),
            "{err:?}"
        );
        server.join().unwrap();
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn silent_daemon_hits_the_read_timeout() {
        let path = socket_path("hang");
        let (release, wait) = mpsc::channel();
        let server = fake_ospd(&path, Answer::Hang(wait));
        let client = OspClient::new(&path).with_read_timeout(Duration::from_millis(200));
        let err = client.send(&Request::GetVersion).unwrap_err();
        assert!(
            matches!(err, OspError::Timeout { phase: "read", .. }),
            "{err:?}"
        );
        assert!(err.is_transient());
        release.send(()).unwrap();
        server.join().unwrap();
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn trickling_daemon_hits_the_total_timeout() {
        let path = socket_path("trickle");
        let server = fake_ospd(
            &path,
            Answer::Trickle(VERSION.as_bytes().to_vec(), Duration::from_millis(40)),
        );
        let client = OspClient::new(&path)
            .with_read_timeout(Duration::from_secs(5))
            .with_total_timeout(Duration::from_millis(300));
        let err = client.send(&Request::GetVersion).unwrap_err();
        assert!(
            matches!(err, OspError::Timeout { phase: "total", .. }),
            "{err:?}"
        );
        drop(client);
        server.join().unwrap();
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn missing_socket_is_a_transient_connect_error() {
        let path = socket_path("none");
        let err = OspClient::new(&path)
            .send(&Request::GetVersion)
            .unwrap_err();
        match &err {
            OspError::Connect { path: p, source } => {
                assert_eq!(p, &path);
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("{other:?}"),
        }
        assert!(err.is_transient());
    }

    #[test]
    fn invalid_request_fails_before_connecting() {
        let path = socket_path("never-bound");
        let err = OspClient::new(&path)
            .send(&Request::StopScan {
                scan_id: "x\"/><delete_scan scan_id=\"y".into(),
            })
            .unwrap_err();
        assert!(matches!(err, OspError::InvalidRequest(_)), "{err:?}");
    }

    #[test]
    fn streams_vts_through_the_socket() {
        let path = socket_path("vts");
        let mut xml = String::from(
            r#"<get_vts_response status="200" status_text="OK"><vts vts_version="202406120502" total="300">"#,
        );
        for i in 0..300 {
            xml.push_str(&format!(
                "<vt id=\"1.3.6.1.4.1.25623.1.0.{i}\"><name>VT &amp; {i}</name><custom><family>Fam</family></custom></vt>"
            ));
        }
        xml.push_str("</vts></get_vts_response>");
        let server = fake_ospd(&path, Answer::Bytes(xml.into_bytes()));
        let mut names = Vec::new();
        let feed = OspClient::new(&path)
            .get_vts_each(&GetVts::default(), |vt| names.push(vt.name))
            .unwrap();
        assert_eq!(feed.vts_version.as_deref(), Some("202406120502"));
        assert_eq!(names.len(), 300);
        assert_eq!(names[299], "VT & 299");
        assert_eq!(server.join().unwrap(), b"<get_vts/>");
        let _ = std::fs::remove_file(&path);
    }
}
