//! The small part of the zip format that `torch.save` writes.
//!
//! PyTorch >= 1.6 writes an uncompressed ("stored") zip with a zip64 end
//! record; each tensor's bytes are one entry, padded so they start on a
//! 64-byte boundary. This reader takes the entry list from the central
//! directory, finds each entry's bytes through its local header, checks every
//! offset and length against the bytes really present, and verifies each
//! entry's CRC-32. Compressed or encrypted entries are refused: torch never
//! writes them, and a deflate decoder would be code with no use here.

use std::ops::Range;

use super::checkpoint_error;
use crate::error::Result;

const LOCAL_HEADER_SIG: u32 = 0x0403_4b50;
const CENTRAL_HEADER_SIG: u32 = 0x0201_4b50;
const END_SIG: u32 = 0x0605_4b50;
const ZIP64_END_SIG: u32 = 0x0606_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EXTRA_ID: u16 = 0x0001;
const END_RECORD_LEN: usize = 22;
const ZIP64_LOCATOR_LEN: usize = 20;
const CENTRAL_HEADER_LEN: usize = 46;
const LOCAL_HEADER_LEN: usize = 30;

/// One entry: its name and where its bytes lie in the archive.
#[derive(Debug)]
struct Entry {
    name: String,
    data: Range<usize>,
}

/// A parsed archive borrowing the file's bytes.
#[derive(Debug)]
pub struct ZipArchive<'a> {
    bytes: &'a [u8],
    entries: Vec<Entry>,
}

impl<'a> ZipArchive<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let directory = find_central_directory(bytes)?;
        let mut entries = Vec::with_capacity(directory.count.min(bytes.len() / CENTRAL_HEADER_LEN));
        let mut at = directory.offset;
        for index in 0..directory.count {
            let (entry, next) = read_central_header(bytes, at, index)?;
            entries.push(entry);
            at = next;
        }
        Ok(Self { bytes, entries })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.name.as_str())
    }

    /// The bytes of the entry called `name`, if there is one.
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        let entry = self.entries.iter().find(|e| e.name == name)?;
        Some(&self.bytes[entry.data.clone()])
    }
}

struct CentralDirectory {
    offset: usize,
    count: usize,
}

fn fail(msg: impl std::fmt::Display) -> crate::error::Error {
    checkpoint_error(format!("zip archive: {msg}"))
}

/// `len` bytes at `at`, or an error saying the file is truncated.
fn slice<'b>(bytes: &'b [u8], at: usize, len: usize, what: &str) -> Result<&'b [u8]> {
    at.checked_add(len)
        .filter(|&end| end <= bytes.len())
        .map(|end| &bytes[at..end])
        .ok_or_else(|| {
            fail(format!(
                "{what} at offset {at} (+{len} bytes) lies past the end of the file \
                 ({} bytes); the file is truncated or corrupt",
                bytes.len()
            ))
        })
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn to_usize(v: u64, what: &str) -> Result<usize> {
    usize::try_from(v).map_err(|_| fail(format!("{what} {v} does not fit in memory")))
}

/// Finds the end-of-central-directory record (searching back over a
/// possible archive comment) and, where present, the zip64 record after it.
fn find_central_directory(bytes: &[u8]) -> Result<CentralDirectory> {
    if bytes.len() < END_RECORD_LEN {
        return Err(fail(format!(
            "{} bytes is too short for a zip file; the file is truncated",
            bytes.len()
        )));
    }
    let latest = bytes.len() - END_RECORD_LEN;
    let earliest = latest.saturating_sub(u16::MAX as usize);
    let end = (earliest..=latest)
        .rev()
        .find(|&at| u32_at(bytes, at) == END_SIG)
        .ok_or_else(|| {
            fail("no end-of-central-directory record; the file is truncated or not a zip")
        })?;
    let record = &bytes[end..end + END_RECORD_LEN];
    let mut count = u64::from(u16_at(record, 10));
    let mut size = u64::from(u32_at(record, 12));
    let mut offset = u64::from(u32_at(record, 16));

    // A zip64 locator sits just before the classic end record; torch.save
    // always writes one.
    if end >= ZIP64_LOCATOR_LEN && u32_at(bytes, end - ZIP64_LOCATOR_LEN) == ZIP64_LOCATOR_SIG {
        let locator = &bytes[end - ZIP64_LOCATOR_LEN..end];
        let record_at = to_usize(u64_at(locator, 8), "zip64 end record offset")?;
        let record = slice(bytes, record_at, 56, "zip64 end record")?;
        if u32_at(record, 0) != ZIP64_END_SIG {
            return Err(fail("zip64 locator does not point at a zip64 end record"));
        }
        count = u64_at(record, 32);
        size = u64_at(record, 40);
        offset = u64_at(record, 48);
    }
    let offset = to_usize(offset, "central directory offset")?;
    let size = to_usize(size, "central directory size")?;
    slice(bytes, offset, size, "central directory")?;
    let count = to_usize(count, "entry count")?;
    if count
        .checked_mul(CENTRAL_HEADER_LEN)
        .is_none_or(|n| n > size)
    {
        return Err(fail(format!(
            "{count} entries cannot fit in a central directory of {size} bytes"
        )));
    }
    Ok(CentralDirectory { offset, count })
}

/// Reads one central-directory header at `at`, resolves its data through
/// the local header, and returns the entry and the next header's offset.
fn read_central_header(bytes: &[u8], at: usize, index: usize) -> Result<(Entry, usize)> {
    let header = slice(bytes, at, CENTRAL_HEADER_LEN, "central directory entry")?;
    if u32_at(header, 0) != CENTRAL_HEADER_SIG {
        return Err(fail(format!(
            "entry {index}: bad central directory signature"
        )));
    }
    let flags = u16_at(header, 8);
    let method = u16_at(header, 10);
    let crc = u32_at(header, 16);
    let mut compressed = u64::from(u32_at(header, 20));
    let mut uncompressed = u64::from(u32_at(header, 24));
    let name_len = usize::from(u16_at(header, 28));
    let extra_len = usize::from(u16_at(header, 30));
    let comment_len = usize::from(u16_at(header, 32));
    let mut local_offset = u64::from(u32_at(header, 42));

    let name_bytes = slice(bytes, at + CENTRAL_HEADER_LEN, name_len, "entry name")?;
    let name = String::from_utf8(name_bytes.to_vec())
        .map_err(|_| fail(format!("entry {index}: name is not UTF-8")))?;
    let extra = slice(
        bytes,
        at + CENTRAL_HEADER_LEN + name_len,
        extra_len,
        "extra field",
    )?;
    let next = at + CENTRAL_HEADER_LEN + name_len + extra_len + comment_len;

    if flags & 0x1 != 0 {
        return Err(fail(format!("entry {name} is encrypted")));
    }
    if method != 0 {
        return Err(fail(format!(
            "entry {name} is compressed (method {method}); torch.save writes stored \
             entries only, so this file was re-packed by another tool: unzip and re-zip it \
             with `zip -0`, or re-save it with torch.save"
        )));
    }

    // Fields saturated at 0xFFFFFFFF are in the zip64 extra field, in this order.
    let mut zip64 = zip64_fields(extra, &name)?.into_iter();
    for field in [&mut uncompressed, &mut compressed, &mut local_offset] {
        if *field == u64::from(u32::MAX) {
            *field = zip64
                .next()
                .ok_or_else(|| fail(format!("entry {name}: zip64 field missing")))?;
        }
    }
    if compressed != uncompressed {
        return Err(fail(format!(
            "entry {name} is stored but its sizes differ ({compressed} vs {uncompressed})"
        )));
    }
    let local_offset = to_usize(local_offset, "local header offset")?;
    let size = to_usize(uncompressed, "entry size")?;

    let local = slice(bytes, local_offset, LOCAL_HEADER_LEN, "local header")?;
    if u32_at(local, 0) != LOCAL_HEADER_SIG {
        return Err(fail(format!("entry {name}: bad local header signature")));
    }
    let local_name_len = usize::from(u16_at(local, 26));
    let local_extra_len = usize::from(u16_at(local, 28));
    let local_name = slice(
        bytes,
        local_offset + LOCAL_HEADER_LEN,
        local_name_len,
        "local name",
    )?;
    if local_name != name_bytes {
        return Err(fail(format!(
            "entry {name}: local header names a different file"
        )));
    }
    let data_start = local_offset + LOCAL_HEADER_LEN + local_name_len + local_extra_len;
    let data = slice(bytes, data_start, size, &format!("data of entry {name}"))?;
    let actual = crc32(data);
    if actual != crc {
        return Err(fail(format!(
            "entry {name}: CRC-32 is {actual:08x}, the directory says {crc:08x}; the file is corrupt"
        )));
    }
    Ok((
        Entry {
            name,
            data: data_start..data_start + size,
        },
        next,
    ))
}

/// The 64-bit values of a zip64 extra field, in file order.
fn zip64_fields(extra: &[u8], name: &str) -> Result<Vec<u64>> {
    let mut at = 0;
    while at + 4 <= extra.len() {
        let id = u16_at(extra, at);
        let len = usize::from(u16_at(extra, at + 2));
        let body = slice(extra, at + 4, len, "extra field")
            .map_err(|_| fail(format!("entry {name}: extra field overruns its header")))?;
        if id == ZIP64_EXTRA_ID {
            return Ok(body.chunks_exact(8).map(|c| u64_at(c, 0)).collect());
        }
        at += 4 + len;
    }
    Ok(Vec::new())
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), as zip uses.
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        // The CRC-32 of "123456789" is 0xCBF43926 in every reference.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn short_or_foreign_input_is_an_error() {
        assert!(ZipArchive::parse(b"").is_err());
        assert!(ZipArchive::parse(b"PK\x03\x04 not really a zip file at all").is_err());
    }
}
