//! The test image's root shell on hvc0, reached through QEMU's unix socket.
//!
//! The guest shell runs without echo or prompt, so what comes back is only
//! command output. Each command is framed by markers that carry a sequence
//! number, so output of an earlier (timed-out) command is never mistaken for
//! the current one.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::{io_err, CmdOutput, Error, Result};

pub(crate) struct Shell {
    sock: PathBuf,
    stream: Option<UnixStream>,
    buf: String,
    seq: u64,
    synced: bool,
}

impl Shell {
    pub(crate) fn new(sock: PathBuf) -> Shell {
        Shell {
            sock,
            stream: None,
            buf: String::new(),
            seq: 0,
            synced: false,
        }
    }

    /// Forget the guest side (after a reboot the shell starts over).
    pub(crate) fn reset(&mut self) {
        self.synced = false;
        self.buf.clear();
    }

    fn connect(&mut self, deadline: Instant) -> Result<()> {
        while self.stream.is_none() {
            match UnixStream::connect(&self.sock) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_millis(300)))
                        .map_err(io_err("shell socket timeout"))?;
                    self.stream = Some(s);
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(e) => return Err(io_err("connecting to the test shell socket")(e)),
            }
        }
        Ok(())
    }

    fn write(&mut self, text: &str) -> Result<()> {
        let stream = self.stream.as_mut().ok_or_else(|| {
            io_err("test shell")(std::io::Error::new(
                ErrorKind::NotConnected,
                "not connected",
            ))
        })?;
        stream
            .write_all(text.as_bytes())
            .map_err(io_err("writing to the test shell"))
    }

    /// Reads what is available (or nothing after the read timeout).
    fn pump(&mut self) -> Result<()> {
        let mut chunk = [0u8; 4096];
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        match stream.read(&mut chunk) {
            Ok(0) => {
                self.stream = None;
                Ok(())
            }
            Ok(n) => {
                self.buf
                    .push_str(&String::from_utf8_lossy(&chunk[..n]).replace('\r', ""));
                Ok(())
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(()),
            Err(e) => Err(io_err("reading the test shell")(e)),
        }
    }

    /// Until the guest shell answers, keep asking it to print a token.
    fn sync(&mut self, deadline: Instant) -> Result<()> {
        if self.synced {
            return Ok(());
        }
        loop {
            self.connect(deadline)?;
            self.seq += 1;
            let token = format!("__OUTPOST_SYNC_{}__", self.seq);
            // split in the command so that an echo of the input cannot match
            self.write(&format!("\necho __OUTPOST_SYNC_\"{}\"__\n", self.seq))?;
            let until = (Instant::now() + Duration::from_secs(2)).min(deadline);
            while Instant::now() < until {
                self.pump()?;
                if let Some(pos) = self.buf.find(&token) {
                    self.buf.drain(..pos + token.len());
                    self.synced = true;
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::ShellTimeout(Duration::ZERO));
            }
        }
    }

    pub(crate) fn send_only(&mut self, cmd: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        self.sync(deadline)?;
        self.write(&format!("{cmd}\n"))
    }

    pub(crate) fn run(&mut self, cmd: &str, timeout: Duration) -> Result<CmdOutput> {
        let deadline = Instant::now() + timeout;
        self.sync(deadline)
            .map_err(|_| Error::ShellTimeout(timeout))?;
        self.seq += 1;
        let n = self.seq;
        let begin = format!("__OUTPOST_BEGIN_{n}__\n");
        let end_prefix = format!("__OUTPOST_END_{n}__ rc=");
        self.buf.clear();
        // stdin from /dev/null: the command cannot eat the lines that follow
        self.write(&format!(
            "echo __OUTPOST_BEGIN_\"{n}\"__; {{ {cmd}\n}} </dev/null 2>&1; echo __OUTPOST_END_\"{n}\"__ rc=$?\n"
        ))?;
        loop {
            self.pump()?;
            if let (Some(b), Some(e)) = (self.buf.find(&begin), self.buf.find(&end_prefix)) {
                if let Some(nl) = self.buf[e..].find('\n') {
                    let stdout = self.buf[b + begin.len()..e].to_owned();
                    let status = self.buf[e + end_prefix.len()..e + nl]
                        .trim()
                        .parse()
                        .unwrap_or(-1);
                    self.buf.drain(..e + nl + 1);
                    return Ok(CmdOutput { status, stdout });
                }
            }
            if Instant::now() >= deadline {
                self.synced = false;
                return Err(Error::ShellTimeout(timeout));
            }
            if self.stream.is_none() {
                self.connect(deadline)?;
            }
        }
    }
}
