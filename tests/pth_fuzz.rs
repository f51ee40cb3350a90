//! A bounded, seeded mutation fuzz of the `.pth` reader that runs on stable
//! Rust in every `cargo test` (the coverage-guided runs are in `fuzz/`, see
//! docs/pth.md). Each case takes a real checkpoint, damages it (flipped bits,
//! overwritten, inserted or deleted bytes, truncation, splices of numbers
//! that matter to parsers such as 0xFF.. lengths), and requires the reader
//! to return `Ok` or `Err`, never panic.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use frostgrad::io::pth::{pickle::unpickle, read_pth};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Cases per seed file; 10 files x this many keeps the test under a second or two.
const CASES_PER_FILE: usize = 1500;

const SEEDS: [&str; 10] = [
    "small_zip.pth",
    "small_legacy.pth",
    "fp16_zip.pth",
    "views_zip.pth",
    "views_legacy.pth",
    "ints_zip.pth",
    "wrapped_backbone_zip.pth",
    "handmade_ok.pth",
    "legacy_no_num_batches_tracked.pth",
    "special_floats_zip.pth",
];

const INTERESTING: [&[u8]; 6] = [
    &[0xff, 0xff, 0xff, 0xff],
    &[0xff, 0xff, 0xff, 0x7f],
    &[0x00, 0x00, 0x00, 0x80],
    &[0xff, 0xff],
    &[0x00],
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
];

fn mutate(rng: &mut StdRng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    let edits = rng.random_range(1..=4);
    for _ in 0..edits {
        if out.is_empty() {
            out.push(rng.random());
            continue;
        }
        let at = rng.random_range(0..out.len());
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
fn damaged_checkpoints_never_panic() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pth");
    let mut rng = StdRng::seed_from_u64(0x5EED_F022);
    let (mut loaded, mut rejected) = (0usize, 0usize);
    for seed in SEEDS {
        let original = std::fs::read(dir.join(seed)).unwrap();
        assert!(
            read_pth(&original).is_ok(),
            "seed {seed} must load before mutation"
        );
        for case in 0..CASES_PER_FILE {
            let input = mutate(&mut rng, &original);
            let result = catch_unwind(AssertUnwindSafe(|| read_pth(&input).is_ok()));
            match result {
                Ok(true) => loaded += 1,
                Ok(false) => rejected += 1,
                Err(_) => {
                    let saved = std::env::temp_dir().join(format!("pth_fuzz_crash_{seed}_{case}"));
                    let _ = std::fs::write(&saved, &input);
                    panic!("read_pth panicked on a mutation of {seed}; input saved to {saved:?}");
                }
            }
            // The pickle layer alone, on the raw mutated bytes.
            if catch_unwind(AssertUnwindSafe(|| unpickle(&input).is_ok())).is_err() {
                panic!("unpickle panicked on a mutation of {seed} (case {case})");
            }
        }
    }
    // Both outcomes must occur: some damage is harmless (a flipped bit in a
    // legacy file's tensor data has no checksum to catch it), most is not.
    // Seeing both shows the mutations reach the whole reader.
    assert!(
        loaded > 0 && rejected > 0,
        "loaded {loaded}, rejected {rejected}"
    );
}
