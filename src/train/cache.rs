//! The frozen-prefix feature cache: one record per sample (the prefix's
//! output for that image), in memory up to a byte budget and in a scratch
//! file beyond it. The file is removed when the cache is dropped.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{Error, Result};

static NEXT_FILE: AtomicUsize = AtomicUsize::new(0);

pub struct FeatureCache {
    samples: usize,
    /// Shape of one record (e.g. `[512]` before `fc`, `[256, 14, 14]` before layer4).
    record_shape: Vec<usize>,
    record_len: usize,
    /// Records `0..in_memory` live in `memory`, the rest in `file`.
    in_memory: usize,
    memory: Vec<f32>,
    file: Option<(File, PathBuf)>,
    filled: Vec<bool>,
    /// Samples that will never have a record (unreadable under `--skip-bad`).
    absent: Vec<bool>,
    mem_limit: usize,
    dir: PathBuf,
}

impl FeatureCache {
    /// An empty cache for `samples` records, holding up to `mem_limit`
    /// bytes in memory and spilling the rest to a file in `dir`.
    pub fn new(samples: usize, mem_limit: usize, dir: &Path) -> Self {
        Self {
            samples,
            record_shape: Vec::new(),
            record_len: 0,
            in_memory: 0,
            memory: Vec::new(),
            file: None,
            filled: vec![false; samples],
            absent: vec![false; samples],
            mem_limit,
            dir: dir.to_path_buf(),
        }
    }

    /// Whether every sample has a record (or is known to be absent).
    pub fn is_complete(&self) -> bool {
        self.filled.iter().zip(&self.absent).all(|(&f, &a)| f || a)
    }

    /// Records that sample `i` has no features (its image was skipped).
    pub fn mark_absent(&mut self, i: usize) {
        if let Some(a) = self.absent.get_mut(i) {
            *a = true;
        }
    }

    pub fn is_absent(&self, i: usize) -> bool {
        self.absent.get(i).copied().unwrap_or(false)
    }

    pub fn record_shape(&self) -> &[usize] {
        &self.record_shape
    }

    /// Bytes held in memory and on disk.
    pub fn bytes(&self) -> (usize, usize) {
        let on_disk = self.samples.saturating_sub(self.in_memory) * self.record_len * 4;
        (
            self.memory.len() * 4,
            if self.file.is_some() { on_disk } else { 0 },
        )
    }

    fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// Sets the record shape on first use and allocates.
    fn layout(&mut self, shape: &[usize]) -> Result<()> {
        if self.record_len != 0 {
            if shape != self.record_shape.as_slice() {
                return Err(Error::shape(
                    "feature cache",
                    format!("record {shape:?} after {:?}", self.record_shape),
                ));
            }
            return Ok(());
        }
        self.record_shape = shape.to_vec();
        self.record_len = shape.iter().product::<usize>().max(1);
        let bytes = self.record_len * 4;
        self.in_memory = (self.mem_limit / bytes).min(self.samples);
        self.memory = vec![0.0; self.in_memory * self.record_len];
        if self.in_memory < self.samples {
            let path = self.dir.join(format!(
                "frostgrad-feature-cache-{}-{}.bin",
                std::process::id(),
                NEXT_FILE.fetch_add(1, Ordering::Relaxed)
            ));
            let file = File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| Self::io(&path, e))?;
            self.file = Some((file, path));
        }
        Ok(())
    }

    /// Stores the records of `indices` from `features`, `[len, record...]`.
    pub fn put(&mut self, indices: &[usize], features: &[f32], shape: &[usize]) -> Result<()> {
        let (&n, record) = shape
            .split_first()
            .ok_or_else(|| Error::shape("feature cache", "0-d features"))?;
        if n != indices.len() {
            return Err(Error::shape(
                "feature cache",
                format!("{} indices for {n} records", indices.len()),
            ));
        }
        self.layout(record)?;
        let len = self.record_len;
        for (k, &i) in indices.iter().enumerate() {
            let src = &features[k * len..(k + 1) * len];
            if i >= self.samples {
                return Err(Error::invalid(
                    "feature cache",
                    format!("sample {i} of {}", self.samples),
                ));
            }
            if i < self.in_memory {
                self.memory[i * len..(i + 1) * len].copy_from_slice(src);
            } else if let Some((file, path)) = &mut self.file {
                let offset = ((i - self.in_memory) * len * 4) as u64;
                let bytes: &[u8] = bytemuck::cast_slice(src);
                file.seek(SeekFrom::Start(offset))
                    .and_then(|_| file.write_all(bytes))
                    .map_err(|e| Self::io(path, e))?;
            }
            self.filled[i] = true;
        }
        Ok(())
    }

    /// The records of `indices`, `[len, record...]`, with their shape.
    pub fn gather(&mut self, indices: &[usize]) -> Result<(Vec<f32>, Vec<usize>)> {
        let len = self.record_len;
        let mut out = vec![0f32; indices.len() * len];
        for (k, &i) in indices.iter().enumerate() {
            if !self.filled.get(i).copied().unwrap_or(false) {
                return Err(Error::invalid(
                    "feature cache",
                    format!("no record for sample {i}"),
                ));
            }
            let dst = &mut out[k * len..(k + 1) * len];
            if i < self.in_memory {
                dst.copy_from_slice(&self.memory[i * len..(i + 1) * len]);
            } else if let Some((file, path)) = &mut self.file {
                let offset = ((i - self.in_memory) * len * 4) as u64;
                let bytes: &mut [u8] = bytemuck::cast_slice_mut(dst);
                file.seek(SeekFrom::Start(offset))
                    .and_then(|_| file.read_exact(bytes))
                    .map_err(|e| Self::io(path, e))?;
            }
        }
        let mut shape = vec![indices.len()];
        shape.extend_from_slice(&self.record_shape);
        Ok((out, shape))
    }
}

impl Drop for FeatureCache {
    fn drop(&mut self) {
        if let Some((_, path)) = self.file.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records round-trip whether they land in memory or on disk.
    #[test]
    fn memory_and_disk_round_trip() {
        let dir = std::env::temp_dir();
        // 3 floats per record, 2 records fit in 24 bytes of memory.
        let mut cache = FeatureCache::new(5, 24, &dir);
        let feats: Vec<f32> = (0..15).map(|v| v as f32 * 0.5).collect();
        cache.put(&[4, 0, 2, 1, 3], &feats, &[5, 3]).unwrap();
        assert!(cache.is_complete());
        assert_eq!(cache.bytes(), (24, 36));
        let (got, shape) = cache.gather(&[0, 4, 3]).unwrap();
        assert_eq!(shape, vec![3, 3]);
        assert_eq!(got, vec![1.5, 2.0, 2.5, 0.0, 0.5, 1.0, 6.0, 6.5, 7.0]);
        let path = cache.file.as_ref().unwrap().1.clone();
        drop(cache);
        assert!(!path.exists(), "the scratch file is removed");
    }

    #[test]
    fn missing_record_is_an_error() {
        let mut cache = FeatureCache::new(2, 1 << 20, &std::env::temp_dir());
        cache.put(&[0], &[1.0, 2.0], &[1, 2]).unwrap();
        assert!(!cache.is_complete());
        assert!(cache.gather(&[1]).is_err());
    }
}
