//! One string field of a JSON object, decoded as a stream. A report's `content` (OSP XML,
//! up to 64 MiB) passes through here in pieces of at most [`PIECE`] bytes (plus one
//! character), never whole: the portal writes it to disk as an upload arrives, and
//! `outpostctl report` prints it as the answer arrives. The object's other fields are
//! copied as they are and parsed with serde, with the field given as `""`.
//!
//! The document is checked as strictly as `serde_json` would: what is not valid JSON, a
//! field of the wrong type, a duplicate or missing field, or trailing characters are
//! refused, so switching to this parser refuses the same bodies as before.

use std::io::{self, BufRead, BufReader, Read, Write};

use serde::de::DeserializeOwned;

/// Largest piece of the string's UTF-8 handed to the writer at once (plus at most one
/// character).
pub const PIECE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Not valid JSON of the expected shape: the sender's fault.
    #[error("{0}")]
    Invalid(String),
    /// Reading the document or writing the string failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

struct Src<R> {
    r: R,
    pos: u64,
}

impl<R: BufRead> Src<R> {
    fn peek(&mut self) -> Result<Option<u8>, StreamError> {
        loop {
            match self.r.fill_buf() {
                Ok(buf) => return Ok(buf.first().copied()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn next(&mut self) -> Result<Option<u8>, StreamError> {
        let b = self.peek()?;
        if b.is_some() {
            self.r.consume(1);
            self.pos += 1;
        }
        Ok(b)
    }

    /// The next byte; the end of the document here is an error.
    fn byte(&mut self, what: &str) -> Result<u8, StreamError> {
        self.next()?
            .ok_or_else(|| StreamError::Invalid(format!("EOF while parsing {what}")))
    }

    fn skip_ws(&mut self) -> Result<(), StreamError> {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek()? {
            self.next()?;
        }
        Ok(())
    }

    fn invalid(&self, msg: &str) -> StreamError {
        StreamError::Invalid(format!("{msg} at byte {}", self.pos))
    }

    /// Copies a string as it stands (quotes and escapes included) to `out`; serde checks
    /// it later.
    fn copy_string(&mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        if self.byte("a string")? != b'"' {
            return Err(self.invalid("expected a string"));
        }
        out.push(b'"');
        loop {
            let b = self.byte("a string")?;
            out.push(b);
            match b {
                b'"' => return Ok(()),
                b'\\' => out.push(self.byte("a string")?),
                _ => {}
            }
        }
    }

    /// Copies one value as it stands to `out`.
    fn copy_value(&mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        match self.peek()? {
            None => Err(StreamError::Invalid("EOF while parsing a value".into())),
            Some(b'"') => self.copy_string(out),
            Some(b'{' | b'[') => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        None => {
                            return Err(StreamError::Invalid("EOF while parsing a value".into()))
                        }
                        Some(b'"') => self.copy_string(out)?,
                        Some(b) => {
                            self.next()?;
                            out.push(b);
                            match b {
                                b'{' | b'[' => depth += 1,
                                b'}' | b']' => {
                                    depth -= 1;
                                    if depth == 0 {
                                        return Ok(());
                                    }
                                }
                                _ => {}
                            }
                        }
                    }
                }
            }
            Some(_) => {
                let start = out.len();
                while let Some(b) = self.peek()? {
                    if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.next()?;
                    out.push(b);
                }
                if out.len() == start {
                    return Err(self.invalid("expected a value"));
                }
                Ok(())
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, StreamError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let b = self.byte("a string")?;
            let d = (b as char)
                .to_digit(16)
                .ok_or_else(|| self.invalid("invalid escape"))?;
            v = v * 16 + d;
        }
        Ok(v)
    }

    /// Decodes the rest of a string (its opening quote read) into `out`, in pieces of at
    /// most [`PIECE`] bytes (plus one character). Its length in bytes.
    fn decode_string(&mut self, out: &mut dyn Write) -> Result<u64, StreamError> {
        let mut pending: Vec<u8> = Vec::with_capacity(PIECE + 4);
        let mut written = 0u64;
        loop {
            // Plain bytes in runs, straight from the reader's buffer.
            let room = PIECE.saturating_sub(pending.len()).max(1);
            let run = loop {
                match self.r.fill_buf() {
                    Ok(buf) => {
                        let n = buf
                            .iter()
                            .take(room)
                            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                            .unwrap_or(buf.len().min(room));
                        pending.extend_from_slice(&buf[..n]);
                        break (n, buf.is_empty());
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e.into()),
                }
            };
            let (n, eof) = run;
            if eof {
                return Err(StreamError::Invalid("EOF while parsing a string".into()));
            }
            self.r.consume(n);
            self.pos += n as u64;
            if pending.len() >= PIECE {
                self.flush(&mut pending, out, &mut written, false)?;
            }
            let Some(b) = self.peek()? else {
                continue;
            };
            match b {
                b'"' => {
                    self.next()?;
                    self.flush(&mut pending, out, &mut written, true)?;
                    return Ok(written);
                }
                b'\\' => {
                    self.next()?;
                    let c = match self.byte("a string")? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => return Err(self.invalid("invalid escape")),
                    };
                    pending.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                }
                b if b < 0x20 => {
                    return Err(self.invalid(
                        "control character (\\u0000-\\u001F) found while parsing a string",
                    ))
                }
                // A plain byte the run stopped at because the piece was full.
                _ => {}
            }
        }
    }

    /// `\uXXXX` (its `\u` read), a surrogate pair as one character.
    fn unicode_escape(&mut self) -> Result<char, StreamError> {
        let c = self.hex4()?;
        let code = match c {
            0xD800..=0xDBFF => {
                if self.byte("a string")? != b'\\' || self.byte("a string")? != b'u' {
                    return Err(self.invalid("lone leading surrogate in hex escape"));
                }
                let low = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&low) {
                    return Err(self.invalid("lone leading surrogate in hex escape"));
                }
                0x10000 + ((c - 0xD800) << 10) + (low - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(self.invalid("lone trailing surrogate in hex escape")),
            c => c,
        };
        char::from_u32(code).ok_or_else(|| self.invalid("invalid unicode code point"))
    }

    /// Writes the complete UTF-8 characters of `pending` (all of it at the string's end).
    fn flush(
        &self,
        pending: &mut Vec<u8>,
        out: &mut dyn Write,
        written: &mut u64,
        end: bool,
    ) -> Result<(), StreamError> {
        let valid = match std::str::from_utf8(pending) {
            Ok(_) => pending.len(),
            Err(e) if e.error_len().is_none() && !end => e.valid_up_to(),
            Err(_) => return Err(self.invalid("invalid unicode code point in a string")),
        };
        out.write_all(&pending[..valid])?;
        *written += valid as u64;
        pending.drain(..valid);
        Ok(())
    }
}

/// Reads the JSON object in `src`, writes the decoded string of its field `field` to `out`
/// as it goes and parses the rest as `T` (with `field` as `""`). Returns `T` and the
/// string's length in bytes. A missing `field` is left to `T`'s own rules (an error for
/// a required field); one that is not a string is refused.
pub fn split_string_field<T: DeserializeOwned>(
    src: impl Read,
    field: &str,
    out: &mut dyn Write,
) -> Result<(T, u64), StreamError> {
    let mut s = Src {
        r: BufReader::with_capacity(PIECE, src),
        pos: 0,
    };
    let mut rest = vec![b'{'];
    let mut len = None;
    s.skip_ws()?;
    match s.next()? {
        None => return Err(StreamError::Invalid("EOF while parsing a value".into())),
        Some(b'{') => {}
        Some(_) => return Err(s.invalid("expected a JSON object")),
    }
    s.skip_ws()?;
    if s.peek()? == Some(b'}') {
        s.next()?;
    } else {
        loop {
            s.skip_ws()?;
            if rest.len() > 1 {
                rest.push(b',');
            }
            let start = rest.len();
            s.copy_string(&mut rest)?;
            let key: String = serde_json::from_slice(&rest[start..])
                .map_err(|e| s.invalid(&format!("invalid key ({e})")))?;
            s.skip_ws()?;
            if s.byte("an object")? != b':' {
                return Err(s.invalid("expected `:`"));
            }
            rest.push(b':');
            s.skip_ws()?;
            if key == field {
                if len.is_some() {
                    return Err(StreamError::Invalid(format!("duplicate field `{field}`")));
                }
                if s.peek()? != Some(b'"') {
                    return Err(
                        s.invalid(&format!("invalid type for `{field}`, expected a string"))
                    );
                }
                s.next()?;
                len = Some(s.decode_string(out)?);
                rest.extend_from_slice(b"\"\"");
            } else {
                s.copy_value(&mut rest)?;
            }
            s.skip_ws()?;
            match s.byte("an object")? {
                b',' => continue,
                b'}' => break,
                _ => return Err(s.invalid("expected `,` or `}`")),
            }
        }
    }
    s.skip_ws()?;
    if s.peek()?.is_some() {
        return Err(s.invalid("trailing characters"));
    }
    rest.push(b'}');
    let t = serde_json::from_slice(&rest).map_err(|e| StreamError::Invalid(e.to_string()))?;
    Ok((t, len.unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Doc {
        id: u32,
        content: String,
        #[serde(default)]
        tags: Vec<String>,
    }

    fn split(json: &[u8]) -> Result<(Doc, Vec<u8>), StreamError> {
        let mut out = Vec::new();
        let (d, n) = split_string_field::<Doc>(json, "content", &mut out)?;
        assert_eq!(n, out.len() as u64);
        Ok((d, out))
    }

    /// Records the largest single write.
    struct Pieces {
        all: Vec<u8>,
        largest: usize,
        writes: usize,
    }

    impl Write for Pieces {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.largest = self.largest.max(b.len());
            self.writes += 1;
            self.all.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn decodes_like_serde_json() {
        let text = "a\"b\\c/\u{8}\u{c}\n\r\t é ✓ 😀 \u{1}<x/>".repeat(5_000);
        let doc = serde_json::json!({"tags": ["x", "}"], "content": text, "id": 7});
        let json = serde_json::to_vec(&doc).unwrap();
        let (d, out) = split(&json).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), text);
        assert_eq!(d.id, 7);
        assert_eq!(d.content, "");
        assert_eq!(d.tags, vec!["x", "}"]);
        // \u escapes, a surrogate pair among them
        let (_, out) =
            split(br#" { "id" : 1 , "content" : "\u00e9\ud83d\ude00\u0041" } "#).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "é😀A");
    }

    #[test]
    fn the_string_never_passes_whole() {
        // 3 MiB with multi-byte characters across the piece boundaries.
        let text = "ab✓<r>ü</r>\n".repeat(200_000);
        let json = serde_json::to_vec(&serde_json::json!({"id": 1, "content": text})).unwrap();
        let mut p = Pieces {
            all: Vec::new(),
            largest: 0,
            writes: 0,
        };
        let (_, n): (Doc, u64) = split_string_field(&json[..], "content", &mut p).unwrap();
        assert_eq!(n as usize, text.len());
        assert!(p.all == text.as_bytes());
        assert!(p.largest <= PIECE + 4, "largest write {}", p.largest);
        assert!(p.writes >= text.len() / (PIECE + 4), "{} writes", p.writes);
    }

    #[test]
    fn refuses_what_serde_json_refuses() {
        let bad: &[&[u8]] = &[
            b"",
            b"[]",
            br#"{"id":1,"content":"x""#,
            br#"{"id":1,"content":"x"} x"#,
            br#"{"id":1,"content":5}"#,
            br#"{"id":1,"content":null}"#,
            br#"{"id":1,"content":"a","content":"b"}"#,
            br#"{"id":1}"#,
            br#"{"id":"one","content":""}"#,
            br#"{"id":1,"id":2,"content":""}"#,
            br#"{"id":1,"content":"\x"}"#,
            br#"{"id":1,"content":"\ud800"}"#,
            br#"{"id":1,"content":"\udc00"}"#,
            b"{\"id\":1,\"content\":\"a\nb\"}",
            b"{\"id\":1,\"content\":\"\xff\"}",
            b"{\"id\":1,\"content\":\"\xe2\x9c\"}",
            br#"{"id":1,"content":"", "tags": [1}"#,
            br#"{"id":1 "content":""}"#,
            br#"{"id":1,"content":"",}"#,
            br#"{"id":tru,"content":""}"#,
        ];
        for b in bad {
            let ours = split(b);
            let theirs = serde_json::from_slice::<Doc>(b);
            assert!(
                theirs.is_err(),
                "serde accepts {}",
                String::from_utf8_lossy(b)
            );
            match ours {
                Err(StreamError::Invalid(_)) => {}
                other => panic!("{}: {other:?}", String::from_utf8_lossy(b)),
            }
        }
    }
}
