//! Reads the JSON object the CUDA emulation writes at process exit when
//! `FROSTGRAD_CUDA_EMU_STATS=PATH` is set (see `cuda-emu/stats.h`): a flat
//! object of counters plus `"kernels": {name: launches}`. A tiny reader for
//! exactly that shape, so the tests need no JSON dependency.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmuStats {
    /// `launches`, `syncs`, `dtoh_calls`, `dtoh_bytes`, `htod_calls`,
    /// `htod_bytes`, `dtod_calls`, `dtod_bytes`, `memsets`, `allocs`,
    /// `alloc_bytes`, `frees`.
    pub counters: BTreeMap<String, u64>,
    /// Launches per kernel name.
    pub kernels: BTreeMap<String, u64>,
}

impl EmuStats {
    pub fn get(&self, key: &str) -> u64 {
        *self
            .counters
            .get(key)
            .unwrap_or_else(|| panic!("no counter {key:?} in {:?}", self.counters))
    }

    /// `self - earlier`, counter by counter (kernels too): what the work
    /// between two runs cost. Panics if a counter went down.
    pub fn minus(&self, earlier: &EmuStats) -> EmuStats {
        let sub = |a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>| {
            let mut out = BTreeMap::new();
            for (k, &v) in a {
                let w = b.get(k).copied().unwrap_or(0);
                assert!(v >= w, "{k}: {v} < {w}");
                if v > w {
                    out.insert(k.clone(), v - w);
                }
            }
            for k in b.keys() {
                assert!(a.contains_key(k), "{k} disappeared");
            }
            out
        };
        let mut counters = sub(&self.counters, &earlier.counters);
        for k in self.counters.keys() {
            counters.entry(k.clone()).or_insert(0);
        }
        EmuStats {
            counters,
            kernels: sub(&self.kernels, &earlier.kernels),
        }
    }
}

pub fn read(path: &Path) -> EmuStats {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading emulation stats {}: {e}", path.display()));
    parse(&text).unwrap_or_else(|| panic!("malformed emulation stats: {text}"))
}

pub fn parse(text: &str) -> Option<EmuStats> {
    let body = text.trim().strip_prefix('{')?.strip_suffix('}')?;
    let (flat, kernels) = match body.find("\"kernels\":{") {
        Some(i) => {
            let rest = &body[i + "\"kernels\":{".len()..];
            (&body[..i], rest.strip_suffix('}')?)
        }
        None => (body, ""),
    };
    let pairs = |s: &str| -> Option<BTreeMap<String, u64>> {
        let mut m = BTreeMap::new();
        for item in s.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = item.rsplit_once(':')?;
            let k = k.trim().strip_prefix('"')?.strip_suffix('"')?;
            m.insert(k.to_string(), v.trim().parse().ok()?);
        }
        Some(m)
    };
    Some(EmuStats {
        counters: pairs(flat)?,
        kernels: pairs(kernels)?,
    })
}
