//! Any byte string through format detection, its description and the
//! safetensors reader (header, duplicate keys, offsets, dtypes). Seed the
//! corpus with tests/fixtures/**/*.safetensors.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let format = frostgrad::io::format::detect(data);
    let _ = format.describe(data);
    let parsed = frostgrad::io::safetensors::read_bytes(data);
    // Only a file detected as safetensors may parse as one.
    assert!(
        parsed.is_err() || matches!(format, frostgrad::io::format::Format::Safetensors { .. })
    );
});
