//! How many VTs ospd-openvas lists, counted where it reads them: redis.
//!
//! ospd-openvas lists the OIDs of its two caches, NASL scripts (`nvt:<oid>` keys of the
//! database marked `nvticache`, which openvas fills) and Notus advisories
//! (`internal/notus/advisories/<oid>` keys of the database marked `notuscache`), one
//! `<vt>` per key. Asking it with `get_vts` builds and sends an XML element per VT:
//! tens of milliseconds each in Python on an ARM board, most of an hour for the full
//! feed. Counting the same keys here takes milliseconds and sees the same thing: a script
//! openvas refused has no `nvt:` key, advisories whose signature did not verify were
//! never stored.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::error::ProbeError;

/// The two caches' sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CachedVts {
    /// Distinct NASL OIDs openvas loaded.
    pub nasl: u64,
    /// Distinct Notus advisory OIDs ospd-openvas loaded.
    pub notus: u64,
}

impl CachedVts {
    /// What `get_vts` lists: both caches, not merged.
    pub fn total(&self) -> u64 {
        self.nasl + self.notus
    }
}

const NVT_MARK: &str = "nvticache";
const NVT_KEYS: &str = "nvt:*";
const NOTUS_MARK: &str = "notuscache";
const NOTUS_KEYS: &str = "internal/notus/advisories*";

/// Counts the VTs in redis at `socket`. A cache not created yet counts 0.
pub fn count_cached_vts(socket: &Path, timeout: Duration) -> Result<CachedVts, ProbeError> {
    let mut r = Redis::connect(socket, timeout)?;
    let databases = r.databases()?;
    // One round trip for every database's marks: redis has 1025 of them here.
    let mut batch = Vec::new();
    for db in 0..databases {
        batch.push(command(&["SELECT", &db.to_string()]));
        batch.push(command(&["EXISTS", NVT_MARK]));
        batch.push(command(&["EXISTS", NOTUS_MARK]));
    }
    r.send(&batch.concat())?;
    let (mut nvt_db, mut notus_db) = (None, None);
    for db in 0..databases {
        r.expect_ok()?;
        if r.integer()? > 0 && nvt_db.is_none() {
            nvt_db = Some(db);
        }
        if r.integer()? > 0 && notus_db.is_none() {
            notus_db = Some(db);
        }
    }
    let mut count = |db: Option<u32>, pattern: &str| -> Result<u64, ProbeError> {
        let Some(db) = db else { return Ok(0) };
        r.send(
            &[
                command(&["SELECT", &db.to_string()]),
                command(&["KEYS", pattern]),
            ]
            .concat(),
        )?;
        r.expect_ok()?;
        r.array_len_skipping_items()
    };
    Ok(CachedVts {
        nasl: count(nvt_db, NVT_KEYS)?,
        notus: count(notus_db, NOTUS_KEYS)?,
    })
}

/// One RESP command.
fn command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

struct Redis {
    target: String,
    out: UnixStream,
    input: BufReader<UnixStream>,
}

impl Redis {
    fn connect(socket: &Path, timeout: Duration) -> Result<Redis, ProbeError> {
        let target = format!("redis at {}", socket.display());
        let s = UnixStream::connect(socket).map_err(|source| ProbeError::Connect {
            target: target.clone(),
            source,
        })?;
        let io = |source| ProbeError::Io {
            target: target.clone(),
            source,
        };
        s.set_read_timeout(Some(timeout)).map_err(io)?;
        s.set_write_timeout(Some(timeout)).map_err(io)?;
        let input = BufReader::new(s.try_clone().map_err(io)?);
        Ok(Redis {
            target,
            out: s,
            input,
        })
    }

    fn io(&self, source: std::io::Error) -> ProbeError {
        ProbeError::Io {
            target: self.target.clone(),
            source,
        }
    }

    fn unexpected(&self, answer: impl Into<String>) -> ProbeError {
        ProbeError::Unexpected {
            target: self.target.clone(),
            answer: answer.into(),
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), ProbeError> {
        self.out.write_all(bytes).map_err(|e| self.io(e))
    }

    /// One reply line without its CRLF; an error reply (`-...`) is an error.
    fn line(&mut self) -> Result<String, ProbeError> {
        let mut buf = Vec::new();
        // A reply header is short; a longer line is not redis speaking.
        let n = (&mut self.input)
            .take(4096)
            .read_until(b'\n', &mut buf)
            .map_err(|e| self.io(e))?;
        if n == 0 || !buf.ends_with(b"\r\n") {
            return Err(self.unexpected("a cut or overlong reply"));
        }
        buf.truncate(buf.len() - 2);
        let line = String::from_utf8_lossy(&buf).into_owned();
        if line.starts_with('-') {
            return Err(self.unexpected(line));
        }
        Ok(line)
    }

    fn number(&self, line: &str, kind: char) -> Result<i64, ProbeError> {
        line.strip_prefix(kind)
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| self.unexpected(format!("{line:?} where {kind}<number> was due")))
    }

    fn expect_ok(&mut self) -> Result<(), ProbeError> {
        match self.line()?.as_str() {
            "+OK" => Ok(()),
            other => Err(self.unexpected(other.to_owned())),
        }
    }

    fn integer(&mut self) -> Result<i64, ProbeError> {
        let line = self.line()?;
        self.number(&line, ':')
    }

    /// A bulk string's bytes (`$n`, then n bytes and CRLF).
    fn bulk(&mut self) -> Result<Vec<u8>, ProbeError> {
        let line = self.line()?;
        let n = self.number(&line, '$')?;
        let n = usize::try_from(n).map_err(|_| self.unexpected(line))?;
        let mut buf = vec![0; n + 2];
        self.input.read_exact(&mut buf).map_err(|e| self.io(e))?;
        buf.truncate(n);
        Ok(buf)
    }

    /// The number of items of an array of bulk strings, read past without keeping them.
    fn array_len_skipping_items(&mut self) -> Result<u64, ProbeError> {
        let line = self.line()?;
        let n = self.number(&line, '*')?;
        let n = u64::try_from(n).map_err(|_| self.unexpected(line))?;
        for _ in 0..n {
            self.bulk()?;
        }
        Ok(n)
    }

    /// `CONFIG GET databases`.
    fn databases(&mut self) -> Result<u32, ProbeError> {
        self.send(&command(&["CONFIG", "GET", "databases"]))?;
        let line = self.line()?;
        if self.number(&line, '*')? != 2 {
            return Err(self.unexpected(format!("{line} to CONFIG GET databases")));
        }
        self.bulk()?;
        let value = self.bulk()?;
        String::from_utf8_lossy(&value)
            .parse()
            .map_err(|_| self.unexpected(format!("databases {value:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_resp_arrays() {
        assert_eq!(
            command(&["KEYS", "nvt:*"]),
            b"*2\r\n$4\r\nKEYS\r\n$5\r\nnvt:*\r\n"
        );
    }
}
