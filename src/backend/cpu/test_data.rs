//! Deterministic test inputs for the kernel unit tests.

/// `n` values in `[-1, 1)` from a fixed-seed xorshift generator: cheap,
/// reproducible, and free of the structure (repeats, symmetry) that could
/// hide an indexing bug.
pub(super) fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect()
}
