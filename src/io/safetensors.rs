//! safetensors files <-> [`StateDict`], with torchvision's key names.
//!
//! Reading keeps F32 and I64 as they are and widens I32 to I64 losslessly
//! (label files are often int32). F16, BF16 and F64 become F32: the engine
//! computes in f32, so half-precision weights gain nothing by staying
//! small and f64 values are rounded to the nearest f32 (a precision
//! change the caller should know about). Any other dtype is an error that
//! names the tensor. A malformed file is an error, never a panic: the
//! `safetensors` crate validates the header and every offset against the
//! buffer before we touch the data.
//!
//! Writing stores f32 as F32 and i64 as I64 (`num_batches_tracked`).

use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::core_types::HostData;
use crate::error::{Error, Result};
use crate::io::files::{self, Role};
use crate::io::format::{self, Format};
use crate::io::{HostTensor, StateDict};

/// Reads a safetensors file. Tensors come out in file (data offset) order.
pub fn load(path: impl AsRef<Path>) -> Result<StateDict> {
    load_as(path.as_ref(), Role::FILE)
}

/// [`load`], with errors naming the file's role (`batch file b.safetensors (--batch): ...`).
pub fn load_as(path: &Path, role: Role) -> Result<StateDict> {
    let bytes = files::read(path, role)?;
    read_bytes_as(&bytes, path, role)
}

/// Parses the bytes of a safetensors file (errors call it `<bytes>`).
pub fn read_bytes(bytes: &[u8]) -> Result<StateDict> {
    read_bytes_as(bytes, Path::new("<bytes>"), Role::FILE)
}

/// Parses the bytes of the file `path`, read in `role`. A file that is not
/// structured as safetensors (see [`crate::io::format`]) is refused with what
/// it is instead; a header naming a tensor twice is refused (the crate would
/// keep one of them silently).
pub fn read_bytes_as(bytes: &[u8], path: &Path, role: Role) -> Result<StateDict> {
    let file_error = |msg: String| role.error(path, msg);
    match format::detect(bytes) {
        Format::Safetensors { header_len } => {
            if let Some(key) = duplicate_key(&bytes[8..8 + header_len]) {
                return Err(file_error(format!(
                    "not a valid safetensors file: its header names `{key}` twice"
                )));
            }
        }
        other @ (Format::Zip | Format::Pickle { .. }) => {
            return Err(file_error(format!(
                "not a safetensors file: it is {}, a PyTorch checkpoint",
                other.describe(bytes)
            )))
        }
        Format::Unknown => return Err(file_error(Format::Unknown.describe(bytes))),
        other => {
            return Err(file_error(format!(
                "not a safetensors file: it is {}",
                other.describe(bytes)
            )))
        }
    }
    let (_, metadata) = SafeTensors::read_metadata(bytes)
        .map_err(|e| file_error(format!("not a valid safetensors file: {e}")))?;
    let tensors = SafeTensors::deserialize(bytes)
        .map_err(|e| file_error(format!("not a valid safetensors file: {e}")))?;
    let mut state = StateDict::new();
    for name in metadata.offset_keys() {
        let view = tensors
            .tensor(&name)
            .map_err(|e| file_error(format!("tensor `{name}`: {e}")))?;
        let data = decode(&view).map_err(|msg| file_error(format!("tensor `{name}`: {msg}")))?;
        let host = HostTensor::new(view.shape().to_vec(), data)
            .map_err(|e| file_error(format!("tensor `{name}`: {e}")))?;
        state.insert(name, host);
    }
    Ok(state)
}

/// The first top-level key of a JSON object that appears twice, decoded
/// (so `"a"` and `"\u0061"` are the same key). Nested objects
/// (`__metadata__`, each tensor's entry) are skipped; malformed JSON returns
/// `None` and is left to the crate's parser to report.
fn duplicate_key(header: &[u8]) -> Option<String> {
    let mut seen = std::collections::HashSet::new();
    let mut depth = 0usize;
    let mut i = 0;
    let mut expecting_key = false;
    while i < header.len() {
        match header[i] {
            b'{' | b'[' => {
                depth += 1;
                expecting_key = depth == 1 && header[i] == b'{';
            }
            b'}' | b']' => depth = depth.checked_sub(1)?,
            b',' if depth == 1 => expecting_key = true,
            b'"' => {
                let (text, end) = json_string(header, i)?;
                if depth == 1 && expecting_key {
                    if !seen.insert(text.clone()) {
                        return Some(text);
                    }
                    expecting_key = false;
                }
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The decoded JSON string starting at the quote `header[start]`, and the
/// index after its closing quote.
fn json_string(header: &[u8], start: usize) -> Option<(String, usize)> {
    let mut units: Vec<u16> = Vec::new();
    let mut raw = Vec::new();
    let mut i = start + 1;
    let flush = |raw: &mut Vec<u8>, units: &mut Vec<u16>| -> Option<()> {
        units.extend(std::str::from_utf8(raw).ok()?.encode_utf16());
        raw.clear();
        Some(())
    };
    loop {
        match *header.get(i)? {
            b'"' => {
                flush(&mut raw, &mut units)?;
                return Some((String::from_utf16_lossy(&units), i + 1));
            }
            b'\\' => {
                flush(&mut raw, &mut units)?;
                let escaped = *header.get(i + 1)?;
                i += 2;
                let unit = match escaped {
                    b'"' => u16::from(b'"'),
                    b'\\' => u16::from(b'\\'),
                    b'/' => u16::from(b'/'),
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'n' => u16::from(b'\n'),
                    b'r' => u16::from(b'\r'),
                    b't' => u16::from(b'\t'),
                    b'u' => {
                        let hex = std::str::from_utf8(header.get(i..i + 4)?).ok()?;
                        i += 4;
                        u16::from_str_radix(hex, 16).ok()?
                    }
                    _ => return None,
                };
                units.push(unit);
            }
            b => {
                raw.push(b);
                i += 1;
            }
        }
    }
}

/// Little-endian bytes to host values, converting as the module doc says.
fn decode(view: &TensorView<'_>) -> std::result::Result<HostData, String> {
    let bytes = view.data();
    fn each<const N: usize, T>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
        // The crate checked that the length is numel * N, so chunks are exact.
        bytes
            .chunks_exact(N)
            .map(|c| f(c.try_into().unwrap_or([0; N])))
            .collect()
    }
    Ok(match view.dtype() {
        Dtype::F32 => HostData::F32(each(bytes, f32::from_le_bytes)),
        Dtype::I64 => HostData::I64(each(bytes, i64::from_le_bytes)),
        Dtype::I32 => HostData::I64(each(bytes, |b| i64::from(i32::from_le_bytes(b)))),
        Dtype::F16 => HostData::F32(each(bytes, |b| half::f16::from_le_bytes(b).to_f32())),
        Dtype::BF16 => HostData::F32(each(bytes, |b| half::bf16::from_le_bytes(b).to_f32())),
        Dtype::F64 => HostData::F32(each(bytes, |b| f64::from_le_bytes(b) as f32)),
        other => {
            let supported = "F32, I64, I32, F16, BF16 and F64";
            return Err(format!(
                "dtype {other:?} is not supported (frostgrad reads {supported})"
            ));
        }
    })
}

/// The bytes of a safetensors file holding `state`.
pub fn to_bytes(state: &StateDict) -> Result<Vec<u8>> {
    let encoded = encode_all(state);
    let views = views_of(&encoded)?;
    safetensors::tensor::serialize(views, None)
        .map_err(|e| Error::StateDict(format!("cannot serialize: {e}")))
}

/// Writes `state` to `path` as a safetensors file, atomically (see
/// [`crate::io::files`]): on failure the previous file is untouched.
pub fn save(state: &StateDict, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    files::write_atomic(path, Role::FILE, &to_bytes(state)?)
}

struct Encoded<'a> {
    name: &'a str,
    dtype: Dtype,
    shape: &'a [usize],
    bytes: Vec<u8>,
}

fn encode_all(state: &StateDict) -> Vec<Encoded<'_>> {
    state
        .iter()
        .map(|(name, t)| {
            let (dtype, bytes) = match &t.data {
                HostData::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                HostData::I64(v) => (Dtype::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            };
            Encoded {
                name,
                dtype,
                shape: &t.shape,
                bytes,
            }
        })
        .collect()
}

fn views_of<'a>(encoded: &'a [Encoded<'a>]) -> Result<Vec<(&'a str, TensorView<'a>)>> {
    encoded
        .iter()
        .map(|e| {
            TensorView::new(e.dtype, e.shape.to_vec(), &e.bytes)
                .map(|v| (e.name, v))
                .map_err(|err| Error::StateDict(format!("tensor `{}`: {err}", e.name)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StateDict {
        let mut sd = StateDict::new();
        sd.insert(
            "conv1.weight",
            HostTensor::new(vec![2, 1, 1, 2], HostData::F32(vec![1.5, -2.0, 0.25, 3.0])).unwrap(),
        );
        sd.insert(
            "bn1.num_batches_tracked",
            HostTensor::new(vec![], HostData::I64(vec![7])).unwrap(),
        );
        sd.insert(
            "fc.bias",
            HostTensor::new(vec![3], HostData::F32(vec![0.0, -1.0, f32::MAX])).unwrap(),
        );
        sd
    }

    /// A file with one tensor written by the crate directly (any dtype).
    fn one_tensor_file(dtype: Dtype, shape: Vec<usize>, bytes: &[u8]) -> Vec<u8> {
        let view = TensorView::new(dtype, shape, bytes).unwrap();
        safetensors::tensor::serialize([("t", view)], None).unwrap()
    }

    #[test]
    fn round_trip_keeps_values_dtypes_and_shapes() {
        let sd = sample();
        let back = read_bytes(&to_bytes(&sd).unwrap()).unwrap();
        for (name, t) in sd.iter() {
            assert_eq!(back.get(name), Some(t), "{name}");
        }
        assert_eq!(back.len(), sd.len());
        assert_eq!(
            back.get("bn1.num_batches_tracked").unwrap().data,
            HostData::I64(vec![7])
        );
    }

    #[test]
    fn save_and_load_through_a_file() {
        let dir = std::env::temp_dir().join(format!("frostgrad-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.safetensors");
        save(&sample(), &path).unwrap();
        let back = load(&path).unwrap();
        assert_eq!(back.get("fc.bias"), sample().get("fc.bias"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn i32_widens_to_i64_losslessly() {
        let vals = [0i32, 9, -3, i32::MAX, i32::MIN];
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let sd = read_bytes(&one_tensor_file(Dtype::I32, vec![5], &bytes)).unwrap();
        let expected: Vec<i64> = vals.iter().map(|&v| v as i64).collect();
        assert_eq!(sd.get("t").unwrap().data, HostData::I64(expected));
    }

    #[test]
    fn half_and_double_become_f32() {
        let h: Vec<u8> = [1.5f32, -0.125]
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        let sd = read_bytes(&one_tensor_file(Dtype::F16, vec![2], &h)).unwrap();
        assert_eq!(sd.get("t").unwrap().data, HostData::F32(vec![1.5, -0.125]));

        let b: Vec<u8> = [2.0f32, -3.0]
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect();
        let sd = read_bytes(&one_tensor_file(Dtype::BF16, vec![1, 2], &b)).unwrap();
        assert_eq!(sd.get("t").unwrap().data, HostData::F32(vec![2.0, -3.0]));
        assert_eq!(sd.get("t").unwrap().shape, vec![1, 2]);

        let d: Vec<u8> = [0.1f64].iter().flat_map(|v| v.to_le_bytes()).collect();
        let sd = read_bytes(&one_tensor_file(Dtype::F64, vec![1], &d)).unwrap();
        assert_eq!(
            sd.get("t").unwrap().data,
            HostData::F32(vec![0.1f64 as f32])
        );
    }

    #[test]
    fn unsupported_dtype_names_the_tensor() {
        let err = read_bytes(&one_tensor_file(Dtype::U8, vec![3], &[1, 2, 3]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`t`") && err.contains("U8"), "{err}");
    }

    #[test]
    fn malformed_files_are_errors_not_panics() {
        let good = to_bytes(&sample()).unwrap();
        for bad in [
            Vec::new(),
            vec![1, 2, 3],
            good[..good.len() - 1].to_vec(), // truncated data
            [&u64::MAX.to_le_bytes()[..], &good[8..]].concat(), // absurd header length
            [&good[..8], b"{not json".as_slice()].concat(),
        ] {
            let err = read_bytes(&bad).unwrap_err().to_string();
            assert!(
                err.contains("not a valid safetensors file")
                    || err.contains("not a safetensors file"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_header_naming_a_tensor_twice_is_refused() {
        let data = [0u8; 8];
        for second in ["\"t\"", "\"\\u0074\""] {
            let header = format!(
                "{{\"t\":{{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}},\
                 {second}:{{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}}}"
            );
            let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
            bytes.extend(header.as_bytes());
            bytes.extend(data);
            let err = read_bytes(&bytes).unwrap_err().to_string();
            assert!(err.contains("`t` twice"), "{err}");
        }
        // Keys repeated inside nested objects are not top-level duplicates.
        let ok = to_bytes(&sample()).unwrap();
        assert!(read_bytes(&ok).is_ok());
    }

    #[test]
    fn a_header_length_ending_in_0x80_is_read() {
        // 1 header in 32 starts the file with 0x80, the pickle PROTO opcode.
        let mut sd = sample();
        let mut n = 0;
        loop {
            let bytes = to_bytes(&sd).unwrap();
            if bytes[0] == 0x80 {
                let back = read_bytes(&bytes).unwrap();
                for (name, t) in sd.iter() {
                    assert_eq!(back.get(name), Some(t), "{name}");
                }
                break;
            }
            n += 1;
            sd.insert(
                format!("k{n}"),
                HostTensor::new(vec![1], HostData::F32(vec![0.0])).unwrap(),
            );
        }
    }

    #[test]
    fn a_missing_file_is_an_io_error_naming_it() {
        let err = load("/nonexistent/frostgrad/w.safetensors")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/nonexistent/frostgrad/w.safetensors"),
            "{err}"
        );
    }
}
