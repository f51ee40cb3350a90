//! Format detection and the safetensors reader against damaged and unusual
//! files, on stable Rust in every `cargo test` (the coverage-guided targets
//! `load_safetensors` and `detect` are in `fuzz/`).
//!
//! - Every valid safetensors file is detected as safetensors, whatever its
//!   header length: lengths covering every low byte (the 0x80 case that was
//!   once read as a pickle), with and without `__metadata__`.
//! - Seeded mutations of safetensors files and of `.pth` checkpoints
//!   through detection, its description, the safetensors reader and the
//!   `.pth` reader: `Ok` or `Err`, never a panic; a file detected as
//!   safetensors is never handed to the pickle reader, and the other way round.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use frostgrad::io::format::{detect, Format};
use frostgrad::io::pth::read_pth;
use frostgrad::io::safetensors::read_bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::tensor::{serialize, TensorView};
use safetensors::Dtype;

/// A safetensors file with `tensors` small tensors and `pad` bytes of metadata.
fn file(tensors: usize, pad: usize, rng: &mut StdRng) -> Vec<u8> {
    let data: Vec<(String, Vec<u8>)> = (0..tensors)
        .map(|i| {
            let n = rng.random_range(1..6usize);
            let bytes: Vec<u8> = (0..n * 4).map(|_| rng.random()).collect();
            (format!("layer{i}.weight"), bytes)
        })
        .collect();
    let views: Vec<(&str, TensorView<'_>)> = data
        .iter()
        .map(|(name, b)| {
            (
                name.as_str(),
                TensorView::new(Dtype::F32, vec![b.len() / 4], b).unwrap(),
            )
        })
        .collect();
    let metadata = (pad > 0).then(|| HashMap::from([("pad".to_string(), "p".repeat(pad))]));
    serialize(views, metadata).unwrap()
}

#[test]
fn every_header_length_is_detected_as_safetensors() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut low_bytes = std::collections::BTreeSet::new();
    for tensors in [0, 1, 3] {
        for pad in 0..700 {
            let bytes = file(tensors, pad, &mut rng);
            let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            low_bytes.insert(bytes[0]);
            assert_eq!(
                detect(&bytes),
                Format::Safetensors { header_len },
                "header length {header_len:#x}"
            );
            assert!(read_bytes(&bytes).is_ok(), "header length {header_len:#x}");
        }
    }
    // The writer pads headers to 8 bytes: all 32 such low bytes were seen,
    // 0x80 among them.
    assert_eq!(low_bytes.len(), 32, "{low_bytes:?}");
    assert!(low_bytes.contains(&0x80));
}

fn mutate(rng: &mut StdRng, input: &[u8]) -> Vec<u8> {
    const INTERESTING: [&[u8]; 6] = [
        &[0x80],
        &[0x80, 0x02],
        b"{",
        b"}",
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        b"PK\x03\x04",
    ];
    let mut out = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        if out.is_empty() {
            out.push(rng.random());
            continue;
        }
        // Half the edits land in the first 16 bytes, where formats are told apart.
        let at = if rng.random() {
            rng.random_range(0..out.len().min(16))
        } else {
            rng.random_range(0..out.len())
        };
        match rng.random_range(0..6) {
            0 => out[at] ^= 1 << rng.random_range(0..8),
            1 => out[at] = rng.random(),
            2 => out.insert(at, rng.random()),
            3 => {
                out.remove(at);
            }
            4 => out.truncate(at),
            _ => {
                let splice = INTERESTING[rng.random_range(0..INTERESTING.len())];
                for (i, &b) in splice.iter().enumerate() {
                    if let Some(slot) = out.get_mut(at + i) {
                        *slot = b;
                    }
                }
            }
        }
    }
    out
}

#[test]
fn damaged_files_never_panic_and_never_change_sides() {
    let mut rng = StdRng::seed_from_u64(0x5AFE_7E45);
    let pth_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pth");
    let mut seeds = vec![
        file(3, 0, &mut rng),
        file(5, 0x80 - 40, &mut rng),
        file(2, 300, &mut rng),
    ];
    for name in ["small_zip.pth", "small_legacy.pth", "fp16_zip.pth"] {
        seeds.push(std::fs::read(pth_dir.join(name)).unwrap());
    }
    let (mut st_ok, mut st_err) = (0usize, 0usize);
    for (s, seed) in seeds.iter().enumerate() {
        for case in 0..2000 {
            let input = mutate(&mut rng, seed);
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                let format = detect(&input);
                let _ = format.describe(&input);
                let st = read_bytes(&input);
                let pth = read_pth(&input);
                (format, st.is_ok(), pth.is_ok())
            }));
            let Ok((format, st, pth)) = outcome else {
                let saved = std::env::temp_dir().join(format!("format_fuzz_{s}_{case}"));
                let _ = std::fs::write(&saved, &input);
                panic!("panic on a mutation of seed {s}; input saved to {saved:?}");
            };
            let is_st = matches!(format, Format::Safetensors { .. });
            assert!(!st || is_st, "read as safetensors but detected {format:?}");
            assert!(!pth || !is_st, "read as .pth but detected as safetensors");
            if is_st {
                if st {
                    st_ok += 1
                } else {
                    st_err += 1
                }
            }
        }
    }
    assert!(st_ok > 0 && st_err > 0, "ok {st_ok}, refused {st_err}");
}
