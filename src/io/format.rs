//! Which kind of weight file a byte string is, decided by its structure.
//!
//! One byte is not enough: a safetensors file starts with the little-endian
//! length of its JSON header, so its first byte is that length's low byte,
//! and 1 header in 32 has a low byte of `0x80`, the pickle `PROTO` opcode.
//! So every format is recognised by a structure another format cannot have:
//!
//! - **safetensors**: 8-byte header length `n` with `2 <= n <= len - 8`,
//!   then a header that starts with `{` and ends with `}` (before the
//!   space padding the writers add). A pickle cannot look like this: its
//!   third byte would have to be an opcode and a header-length byte at once,
//!   and a header length in range leaves bytes 2..8 near zero, which no
//!   opcode sequence after `PROTO` produces (checked below anyway).
//! - **zip** (`torch.save` since 1.6): the local file header `PK\x03\x04`.
//! - **pickle** (the legacy `torch.save` format): `PROTO` (`0x80`), a
//!   protocol between 2 and 5, then a known opcode.
//! - a pickle of protocol 0 or 1 (no `PROTO`), a tar archive (PyTorch before
//!   0.1.10), a gzip stream and an empty file are named so the error can say
//!   what the file is; anything else is [`Format::Unknown`], and
//!   [`Format::describe`] says why it is none of the above.

/// What [`detect`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A safetensors file whose JSON header is `header_len` bytes long.
    Safetensors {
        header_len: usize,
    },
    /// A zip archive (torch.save's default format since PyTorch 1.6).
    Zip,
    /// A binary pickle (torch.save's legacy format starts with one).
    Pickle {
        protocol: u8,
    },
    /// A pickle of protocol 0 or 1, made of text opcodes.
    TextPickle,
    /// A tar archive (torch.save before PyTorch 0.1.10).
    Tar,
    /// A gzip stream (a compressed checkpoint).
    Gzip,
    Empty,
    Unknown,
}

/// The pickle opcodes that may follow `PROTO` in a stream CPython writes
/// (every opcode of protocols 0 to 5).
const PICKLE_OPCODES: &[u8] = b"(.012FIJKLMNPQRSTUVXabcdeghijlopqrstu}])G\x80\x81\x82\x83\x84\x85\x86\x87\x88\x89\x8a\x8b\x8c\x8d\x8e\x8f\x90\x91\x92\x93\x94\x95\x96\x97\x98";

/// Opcodes a protocol-0/1 pickle of a dict, list or object starts with.
const TEXT_PICKLE_STARTS: &[u8] = b"(}])cLIFSVN";

/// Decides the format of a whole file held in memory.
pub fn detect(bytes: &[u8]) -> Format {
    if bytes.is_empty() {
        return Format::Empty;
    }
    if let Some(header_len) = safetensors_header(bytes) {
        return Format::Safetensors { header_len };
    }
    if bytes.starts_with(b"PK\x03\x04") {
        return Format::Zip;
    }
    if let Some(protocol) = pickle_protocol(bytes) {
        return Format::Pickle { protocol };
    }
    if bytes.get(257..262) == Some(b"ustar") {
        return Format::Tar;
    }
    if bytes.starts_with(&[0x1f, 0x8b]) {
        return Format::Gzip;
    }
    if TEXT_PICKLE_STARTS.contains(&bytes[0]) && bytes.ends_with(b".") {
        return Format::TextPickle;
    }
    Format::Unknown
}

/// The header length if `bytes` is structured like a safetensors file.
fn safetensors_header(bytes: &[u8]) -> Option<usize> {
    let len = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let len = usize::try_from(len).ok()?;
    let header = bytes.get(8..8usize.checked_add(len)?)?;
    let trimmed = header.trim_ascii_end();
    (len >= 2 && header.first() == Some(&b'{') && trimmed.last() == Some(&b'}')).then_some(len)
}

/// The protocol if `bytes` starts like a binary pickle.
fn pickle_protocol(bytes: &[u8]) -> Option<u8> {
    match bytes {
        [0x80, protocol @ 2..=5, next, ..] if PICKLE_OPCODES.contains(next) => Some(*protocol),
        _ => None,
    }
}

impl Format {
    /// What the file is, in words, for an error that refuses it:
    /// `bytes` is the file [`detect`] was given.
    pub fn describe(self, bytes: &[u8]) -> String {
        match self {
            Format::Safetensors { header_len } => {
                format!("a safetensors file (header of {header_len} bytes)")
            }
            Format::Zip => "a zip archive (torch.save's format)".into(),
            Format::Pickle { protocol } => format!("a pickle (protocol {protocol})"),
            Format::TextPickle => "a pickle of protocol 0 or 1 (text opcodes)".into(),
            Format::Tar => "a tar archive".into(),
            Format::Gzip => "a gzip-compressed file: decompress it first".into(),
            Format::Empty => "an empty file (0 bytes)".into(),
            Format::Unknown => describe_unknown(bytes),
        }
    }
}

/// Why `bytes` is none of the formats, one reason each.
fn describe_unknown(bytes: &[u8]) -> String {
    let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let safetensors = match bytes.get(..8) {
        None => format!("only {} bytes, less than a header length", bytes.len()),
        Some(first) => {
            let claimed = u64::from_le_bytes(first.try_into().unwrap_or([0; 8]));
            let available = bytes.len() - 8;
            if claimed > available as u64 {
                if bytes.get(8) == Some(&b'{') {
                    format!(
                        "a header of {claimed} bytes is announced but only {available} \
                         follow: truncated?"
                    )
                } else {
                    format!("its first 8 bytes announce a header of {claimed} bytes, but only {available} follow")
                }
            } else {
                "its header is not a JSON object".into()
            }
        }
    };
    let pickle = match bytes {
        [0x80, p, ..] if !(2..=5).contains(p) => {
            format!("; not a pickle: 0x80 followed by protocol {p}, which Python never wrote")
        }
        [0x80, _, op, ..] => format!("; not a pickle: opcode 0x{op:02x} after the protocol"),
        _ => String::new(),
    };
    let text = if bytes.iter().take(512).all(|b| b.is_ascii()) {
        ", it looks like text"
    } else {
        ""
    };
    format!(
        "not a safetensors file ({safetensors}), not a zip archive, not a pickle{pickle}; \
         it starts with bytes [{}]{text}",
        head.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn safetensors_with_header_len(n: usize) -> Vec<u8> {
        let mut header = b"{\"__metadata__\":{\"pad\":\"".to_vec();
        while header.len() + 3 < n {
            header.push(b'x');
        }
        header.extend(b"\"}}");
        header.resize(n, b' ');
        let mut out = (n as u64).to_le_bytes().to_vec();
        out.extend(header);
        out
    }

    #[test]
    fn safetensors_headers_ending_in_0x80_are_safetensors() {
        for n in [0x80, 0x280, 0x2a80, 0x4080, 0x10080] {
            let bytes = safetensors_with_header_len(n);
            assert_eq!(bytes[0], 0x80);
            assert_eq!(
                detect(&bytes),
                Format::Safetensors { header_len: n },
                "{n:#x}"
            );
        }
    }

    #[test]
    fn pickles_and_zips_are_told_apart() {
        assert_eq!(
            detect(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19."),
            Format::Pickle { protocol: 2 }
        );
        assert_eq!(
            detect(b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00."),
            Format::Pickle { protocol: 4 }
        );
        assert_eq!(detect(b"PK\x03\x04rest"), Format::Zip);
        assert_eq!(detect(b"(dp0\nS'a'\np1\nI1\ns."), Format::TextPickle);
        assert_eq!(detect(b""), Format::Empty);
        assert_eq!(detect(b"\x1f\x8b\x08\x00"), Format::Gzip);
    }

    #[test]
    fn a_0x80_with_an_impossible_protocol_is_unknown_and_says_why() {
        let bytes = b"\x80\x2a\x00\x00\x00\x00\x00\x00garbage";
        assert_eq!(detect(bytes), Format::Unknown);
        let why = Format::Unknown.describe(bytes);
        assert!(why.contains("protocol 42") && why.contains("not a safetensors file"));
    }

    #[test]
    fn a_truncated_safetensors_header_is_called_truncated() {
        let mut bytes = safetensors_with_header_len(300);
        bytes.truncate(100);
        assert_eq!(detect(&bytes), Format::Unknown);
        assert!(Format::Unknown.describe(&bytes).contains("truncated"));
    }
}
