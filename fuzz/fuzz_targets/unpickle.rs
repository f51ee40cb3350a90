//! Any byte string through the unpickler: it must return Ok or Err, never
//! panic, read out of bounds, or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = frostgrad::io::pth::pickle::unpickle(data);
});
