//! The MBR partition table: just enough to find a partition's byte range, and to build
//! one for tests and small tools.

use std::ops::Range;

pub const SECTOR: u64 = 512;
const TABLE_OFFSET: usize = 446;
const ENTRY_LEN: usize = 16;
const SIGNATURE: [u8; 2] = [0x55, 0xAA];

/// Partition type bytes that mean FAT (12/16/32, CHS or LBA, hidden, EFI system).
pub const FAT_TYPES: [u8; 10] = [0x01, 0x04, 0x06, 0x0b, 0x0c, 0x0e, 0x11, 0x14, 0x1b, 0xef];

/// One primary partition entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// 1-based, as in `/dev/sda1` and `PARTUUID=<disk id>-01`.
    pub number: u8,
    pub kind: u8,
    pub bootable: bool,
    pub start_lba: u32,
    pub sectors: u32,
}

impl Partition {
    pub fn byte_range(&self) -> Range<u64> {
        let start = u64::from(self.start_lba) * SECTOR;
        start..start + u64::from(self.sectors) * SECTOR
    }

    pub fn is_fat(&self) -> bool {
        FAT_TYPES.contains(&self.kind)
    }
}

/// A parsed MBR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mbr {
    /// The disk identifier at offset 440 (the `<disk id>` in `PARTUUID=`).
    pub disk_id: u32,
    /// Used entries only, in table order.
    pub partitions: Vec<Partition>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MbrError {
    #[error("no MBR boot signature (0x55AA at byte 510)")]
    NoSignature,
    #[error("looks like a GPT protective MBR; only MBR disks are supported")]
    Gpt,
    #[error("partition {number} starts at sector 0")]
    StartsAtZero { number: u8 },
    #[error("partitions {a} and {b} overlap")]
    Overlap { a: u8, b: u8 },
    #[error("partition {number} ends past the end of the disk ({end} > {disk_len} bytes)")]
    PastEnd { number: u8, end: u64, disk_len: u64 },
}

impl Mbr {
    /// Parses the first sector. `disk_len` (bytes) bounds-checks the entries.
    pub fn parse(sector: &[u8; 512], disk_len: u64) -> Result<Mbr, MbrError> {
        if sector[510..512] != SIGNATURE {
            return Err(MbrError::NoSignature);
        }
        let disk_id = u32::from_le_bytes([sector[440], sector[441], sector[442], sector[443]]);
        let mut partitions = Vec::new();
        for i in 0..4u8 {
            let e = &sector[TABLE_OFFSET + usize::from(i) * ENTRY_LEN..][..ENTRY_LEN];
            let kind = e[4];
            let start_lba = u32::from_le_bytes([e[8], e[9], e[10], e[11]]);
            let sectors = u32::from_le_bytes([e[12], e[13], e[14], e[15]]);
            if kind == 0 || sectors == 0 {
                continue;
            }
            if kind == 0xee {
                return Err(MbrError::Gpt);
            }
            let number = i + 1;
            if start_lba == 0 {
                return Err(MbrError::StartsAtZero { number });
            }
            let p = Partition {
                number,
                kind,
                bootable: e[0] == 0x80,
                start_lba,
                sectors,
            };
            if p.byte_range().end > disk_len {
                return Err(MbrError::PastEnd {
                    number,
                    end: p.byte_range().end,
                    disk_len,
                });
            }
            partitions.push(p);
        }
        for (i, a) in partitions.iter().enumerate() {
            for b in &partitions[i + 1..] {
                let (ra, rb) = (a.byte_range(), b.byte_range());
                if ra.start < rb.end && rb.start < ra.end {
                    return Err(MbrError::Overlap {
                        a: a.number,
                        b: b.number,
                    });
                }
            }
        }
        Ok(Mbr {
            disk_id,
            partitions,
        })
    }

    pub fn partition(&self, number: u8) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.number == number)
    }

    /// Encodes the table into a boot sector (no boot code; CHS fields set to the
    /// "use LBA" values 0xFE/0xFF/0xFF that every modern reader ignores).
    pub fn to_sector(&self) -> [u8; 512] {
        let mut s = [0u8; 512];
        s[440..444].copy_from_slice(&self.disk_id.to_le_bytes());
        for p in &self.partitions {
            let slot = usize::from(p.number.clamp(1, 4) - 1);
            let e = &mut s[TABLE_OFFSET + slot * ENTRY_LEN..][..ENTRY_LEN];
            e[0] = if p.bootable { 0x80 } else { 0 };
            e[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]);
            e[4] = p.kind;
            e[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
            e[8..12].copy_from_slice(&p.start_lba.to_le_bytes());
            e[12..16].copy_from_slice(&p.sectors.to_le_bytes());
        }
        s[510..512].copy_from_slice(&SIGNATURE);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Mbr {
        Mbr {
            disk_id: 0x4f55_d001,
            partitions: vec![
                Partition {
                    number: 1,
                    kind: 0x0c,
                    bootable: true,
                    start_lba: 2048,
                    sectors: 4096,
                },
                Partition {
                    number: 2,
                    kind: 0x83,
                    bootable: false,
                    start_lba: 6144,
                    sectors: 2048,
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let parsed = Mbr::parse(&m.to_sector(), 8192 * 512).unwrap();
        assert_eq!(parsed, m);
        assert_eq!(parsed.partition(1).unwrap().byte_range(), 1048576..3145728);
        assert!(parsed.partition(1).unwrap().is_fat());
        assert!(!parsed.partition(2).unwrap().is_fat());
        assert!(parsed.partition(3).is_none());
    }

    #[test]
    fn rejects_bad_tables() {
        let m = sample();
        let mut s = m.to_sector();
        s[511] = 0;
        assert_eq!(Mbr::parse(&s, 1 << 30), Err(MbrError::NoSignature));

        assert!(matches!(
            Mbr::parse(&m.to_sector(), 4096 * 512),
            Err(MbrError::PastEnd { number: 1, .. })
        ));

        let mut overlapping = m.clone();
        overlapping.partitions[1].start_lba = 4000;
        assert_eq!(
            Mbr::parse(&overlapping.to_sector(), 1 << 30),
            Err(MbrError::Overlap { a: 1, b: 2 })
        );

        let mut gpt = m.clone();
        gpt.partitions[0].kind = 0xee;
        assert_eq!(Mbr::parse(&gpt.to_sector(), 1 << 30), Err(MbrError::Gpt));

        let mut zero = m;
        zero.partitions[0].start_lba = 0;
        assert_eq!(
            Mbr::parse(&zero.to_sector(), 1 << 30),
            Err(MbrError::StartsAtZero { number: 1 })
        );
    }
}
