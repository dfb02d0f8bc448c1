//! A byte range of a file seen as a whole device, so `fatfs` can work on one partition
//! of a disk image without loop devices or root.

use std::io::{self, Read, Seek, SeekFrom, Write};

/// `inner[start..start + len]` as a seekable stream. Reads stop and writes fail at the
/// end of the range, so a FAT bug can never spill into the next partition.
#[derive(Debug)]
pub struct Slice<T> {
    inner: T,
    start: u64,
    len: u64,
    pos: u64,
}

impl<T: Seek> Slice<T> {
    pub fn new(inner: T, start: u64, len: u64) -> Slice<T> {
        Slice {
            inner,
            start,
            len,
            pos: 0,
        }
    }

    pub fn into_inner(self) -> T {
        self.inner
    }

    fn remaining(&self) -> usize {
        usize::try_from(self.len.saturating_sub(self.pos)).unwrap_or(usize::MAX)
    }
}

impl<T: Read + Seek> Read for Slice<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.remaining());
        if n == 0 {
            return Ok(0);
        }
        self.inner.seek(SeekFrom::Start(self.start + self.pos))?;
        let got = self.inner.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl<T: Write + Seek> Write for Slice<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.remaining());
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        self.inner.seek(SeekFrom::Start(self.start + self.pos))?;
        let put = self.inner.write(&buf[..n])?;
        self.pos += put as u64;
        Ok(put)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<T> Seek for Slice<T> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the partition",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn reads_and_writes_only_inside_the_range() {
        let mut slice = Slice::new(Cursor::new(vec![0u8; 32]), 8, 8);
        slice.write_all(b"abcd").unwrap();
        slice.seek(SeekFrom::End(-2)).unwrap();
        slice.write_all(b"yz").unwrap();
        assert!(slice.write_all(b"!").is_err());

        slice.seek(SeekFrom::Start(0)).unwrap();
        let mut all = Vec::new();
        slice.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"abcd\0\0yz");

        let disk = slice.into_inner().into_inner();
        assert!(disk[..8].iter().all(|&b| b == 0));
        assert_eq!(&disk[8..16], b"abcd\0\0yz");
        assert!(disk[16..].iter().all(|&b| b == 0));
    }

    #[test]
    fn seek_before_start_fails() {
        let mut slice = Slice::new(Cursor::new(vec![0u8; 4]), 0, 4);
        assert!(slice.seek(SeekFrom::Current(-1)).is_err());
        assert_eq!(slice.seek(SeekFrom::End(0)).unwrap(), 4);
    }
}
