//! Batches decoded ahead of the compute, on other threads.
//!
//! One producer thread walks the batches in order; it decodes each batch's
//! images in parallel on its own small thread pool (not rayon's global
//! one, which the kernels use) and hands finished batches over a bounded
//! channel, so at most `prefetch` batches wait in memory and the training
//! step only waits when decoding is slower than the step.
//!
//! Randomness (augmentation) comes from a generator seeded by
//! `(seed, epoch, sample index)`, so a run is reproducible whatever the
//! thread scheduling.

use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rand::rngs::StdRng;
use rand::SeedableRng;
use rayon::prelude::*;

use crate::data::{transform, Sample};
use crate::error::{Error, Result};

/// How to load one epoch.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub size: u32,
    pub augment: bool,
    pub seed: u64,
    pub epoch: usize,
    /// Skip unreadable images (reported in [`Batch::skipped`]) instead of failing.
    pub skip_bad: bool,
    /// Batches decoded ahead of the consumer.
    pub prefetch: usize,
    /// Decoding threads.
    pub threads: usize,
}

/// One batch: `images` is `[len, 3, size, size]` row-major.
#[derive(Debug)]
pub struct Batch {
    /// Sample indices (into the dataset) of the images, in order.
    pub indices: Vec<usize>,
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    /// Images left out under `skip_bad`, with why.
    pub skipped: Vec<(PathBuf, String)>,
}

/// SplitMix64: independent-looking seeds from consecutive integers.
pub fn mix_seed(seed: u64, a: u64, b: u64) -> u64 {
    let mut z = seed
        .wrapping_add(a.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(b.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// An iterator over the batches of one epoch, decoded in the background.
pub struct Loader {
    rx: Receiver<Result<Batch>>,
    producer: Option<JoinHandle<()>>,
}

impl Loader {
    /// Starts decoding `batches` (lists of indices into `samples`).
    pub fn spawn(
        samples: Arc<Vec<Sample>>,
        batches: Vec<Vec<usize>>,
        opts: LoadOptions,
    ) -> Result<Loader> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.threads.max(1))
            .thread_name(|i| format!("frostgrad-decode-{i}"))
            .build()
            .map_err(|e| Error::invalid("data loader", format!("cannot start threads: {e}")))?;
        let (tx, rx) = sync_channel(opts.prefetch.max(1));
        let producer = std::thread::Builder::new()
            .name("frostgrad-loader".into())
            .spawn(move || {
                for indices in batches {
                    let batch = pool.install(|| load_batch(&samples, indices, &opts));
                    let failed = batch.is_err();
                    // A closed channel means the consumer stopped: stop too.
                    if tx.send(batch).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|e| Error::invalid("data loader", format!("cannot start thread: {e}")))?;
        Ok(Loader {
            rx,
            producer: Some(producer),
        })
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        self.rx.recv().ok()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Unblock the producer (its send fails once `rx` is gone) and wait
        // for it, so no decoding outlives the epoch.
        let (_, dead) = sync_channel(1);
        drop(std::mem::replace(&mut self.rx, dead));
        if let Some(p) = self.producer.take() {
            let _ = p.join();
        }
    }
}

/// Decodes one batch (in parallel on the current pool).
pub fn load_batch(samples: &[Sample], indices: Vec<usize>, opts: &LoadOptions) -> Result<Batch> {
    let per_image = 3 * opts.size as usize * opts.size as usize;
    let results: Vec<Result<Vec<f32>>> = indices
        .par_iter()
        .map(|&i| {
            let sample = samples.get(i).ok_or_else(|| {
                Error::invalid("data loader", format!("sample index {i} out of range"))
            })?;
            let mut out = vec![0f32; per_image];
            if opts.augment {
                let mut rng =
                    StdRng::seed_from_u64(mix_seed(opts.seed, opts.epoch as u64 + 1, i as u64));
                transform::load(&sample.path, opts.size, Some(&mut rng), &mut out)?;
            } else {
                transform::load::<StdRng>(&sample.path, opts.size, None, &mut out)?;
            }
            Ok(out)
        })
        .collect();
    let mut batch = Batch {
        indices: Vec::with_capacity(indices.len()),
        images: Vec::with_capacity(indices.len() * per_image),
        labels: Vec::with_capacity(indices.len()),
        skipped: Vec::new(),
    };
    for (&i, result) in indices.iter().zip(results) {
        match result {
            Ok(pixels) => {
                batch.indices.push(i);
                batch.images.extend_from_slice(&pixels);
                batch.labels.push(samples[i].label as i64);
            }
            Err(e) if opts.skip_bad => batch.skipped.push((samples[i].path.clone(), e.to_string())),
            Err(e) => return Err(e),
        }
    }
    Ok(batch)
}
