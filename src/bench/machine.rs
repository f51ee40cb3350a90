//! What the benchmark knows about the machine it runs on.

/// The CPU's model name with its family and model numbers (a VM may name
/// only "AMD EPYC"; the family tells the generation: 25 Zen 3/4, 26 Zen 5),
/// from `/proc/cpuinfo`, or "unknown CPU".
pub fn cpu_model() -> String {
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return "unknown CPU".into();
    };
    let field = |key: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    match (field("model name"), field("cpu family"), field("model")) {
        (Some(name), Some(fam), Some(model)) => format!("{name} (family {fam}, model {model})"),
        (Some(name), _, _) => name,
        _ => "unknown CPU".into(),
    }
}

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
    fn cpu_model_is_named() {
        assert!(!cpu_model().is_empty());
    }

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
