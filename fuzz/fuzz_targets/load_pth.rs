//! Any byte string through the whole loader (format detection, zip or
//! legacy container, unpickler, tensor rebuilding). Seed the corpus with
//! tests/fixtures/pth/*.pth so mutations start from real checkpoints.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = frostgrad::io::pth::read_pth(data);
});
