//! The last few diagnostic records of a kind (the buffer pool's misses,
//! the scratch buffers' growths), kept so that a failing steady-state
//! check (`tests/cpu_buffer_pool.rs`) can say which call site allocated.

use std::sync::Mutex;

/// How many records a [`Recent`] keeps.
pub(super) const KEPT: usize = 64;

/// The last [`KEPT`] records, each at `number % KEPT` of a fixed array
/// (`number`: the record's place in the order of all records of its kind,
/// 1 for the first), so recording one allocates nothing.
pub(super) struct Recent<T: Copy>(Mutex<[Option<(u64, T)>; KEPT]>);

impl<T: Copy> Recent<T> {
    pub(super) const fn new() -> Self {
        Self(Mutex::new([None; KEPT]))
    }

    /// Keeps `record` as number `number`, over the one `KEPT` before it.
    pub(super) fn record(&self, number: u64, record: T) {
        self.0.lock().unwrap_or_else(|e| e.into_inner())[number as usize % KEPT] =
            Some((number, record));
    }

    /// The records kept, oldest first.
    pub(super) fn oldest_first(&self) -> Vec<T> {
        let ring = *self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept: Vec<(u64, T)> = ring.into_iter().flatten().collect();
        kept.sort_by_key(|&(number, _)| number);
        kept.into_iter().map(|(_, record)| record).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_records_oldest_first() {
        let recent = Recent::<u64>::new();
        for n in 1..=KEPT as u64 + 5 {
            recent.record(n, n * 10);
        }
        // Numbers 1-5 were overwritten by 65-69, which share their slots.
        let kept = recent.oldest_first();
        assert_eq!(kept.len(), KEPT);
        assert_eq!((kept[0], kept[KEPT - 1]), (60, (KEPT as u64 + 5) * 10));
        assert!(kept.windows(2).all(|w| w[0] < w[1]));
    }
}
