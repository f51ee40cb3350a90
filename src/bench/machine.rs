//! What the benchmark knows about the machine it runs on.

/// Minor page faults of this process so far (`getrusage(RUSAGE_SELF)`,
/// every thread), or `None` where that is not available.
pub fn minor_faults() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: `usage` is a valid, writable `rusage`; getrusage only
        // writes into it and returns nonzero on failure, checked below.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
        if rc != 0 {
            return None;
        }
        // SAFETY: zero-initialised and filled by a successful getrusage.
        let usage = unsafe { usage.assume_init() };
        u64::try_from(usage.ru_minflt).ok()
    }
    #[cfg(not(unix))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touching_fresh_pages_counts_minor_faults() {
        let Some(before) = minor_faults() else {
            return;
        };
        // 64 MiB of fresh zeroed memory (calloc maps it untouched), one
        // write per page.
        let mut v = vec![0u8; 64 << 20];
        for i in (0..v.len()).step_by(4096) {
            v[i] = 1;
        }
        std::hint::black_box(&v);
        let after = minor_faults().unwrap();
        assert!(after - before >= 1000, "{before} -> {after}");
    }
}
