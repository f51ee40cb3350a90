//! Measuring what freezing saves: ResNet-18 training steps in several
//! freezing modes, each split into forward / backward / optimizer, with the
//! gradients computed and skipped, the FLOPs each phase executed, and the
//! peak tensor memory of the step. `frostgrad bench` prints this;
//! `scripts/bench_pytorch.py` measures PyTorch the same way.

pub mod machine;
mod report;

pub use report::{render_svg, render_table, to_json};

use std::collections::BTreeMap;
use std::time::Instant;

use crate::autograd::no_grad;
use crate::backend::Conv2dGeometry;
use crate::error::{Error, Result};
use crate::nn::{Module, ParamPatterns, ResNet};
use crate::ops;
use crate::optim::{Sgd, SgdConfig};
use crate::tensor::{memory, Device, Tensor};

/// One way to train: which parameters are trainable, or a no-grad forward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mode {
    pub name: String,
    /// The parameters trained; `None` is `inference` (forward under
    /// `no_grad`, eval mode). Parsed once, when the mode is made.
    pub trainable: Option<ParamPatterns>,
}

impl Mode {
    /// A mode training the parameters `trainable`'s comma-separated globs
    /// match (an error when they do not parse), or `inference` for `None`.
    pub fn new(name: &str, trainable: Option<&str>) -> Result<Self> {
        Ok(Self {
            name: name.to_string(),
            trainable: trainable.map(ParamPatterns::parse).transpose()?,
        })
    }
}

/// The standard modes, from the most to the least gradient work.
pub fn standard_modes() -> Result<Vec<Mode>> {
    Ok(vec![
        Mode::new("finetune", Some("*"))?,
        Mode::new("partial", Some("layer3.*,layer4.*,fc.*"))?,
        Mode::new("layer4", Some("layer4.*,fc.*"))?,
        Mode::new("transfer", Some("fc.*"))?,
        Mode::new("inference", None)?,
    ])
}

/// Parses `--modes finetune,transfer,...` against [`standard_modes`].
pub fn parse_modes(list: &str) -> Result<Vec<Mode>> {
    let known = standard_modes()?;
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|name| {
            known
                .iter()
                .find(|m| m.name == name)
                .cloned()
                .ok_or_else(|| {
                    let names: Vec<&str> = known.iter().map(|m| m.name.as_str()).collect();
                    Error::invalid(
                        "bench",
                        format!("unknown mode `{name}`; choose from {}", names.join(", ")),
                    )
                })
        })
        .collect()
}

/// Median, minimum and maximum of a set of timings, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timing {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Timing {
    fn of(samples: &[f64]) -> Timing {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        if s.is_empty() {
            return Timing::default();
        }
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Timing {
            median,
            min: s[0],
            max: s[n - 1],
        }
    }
}

/// What one mode measured. Phase times are medians over the timed steps.
#[derive(Clone, Debug, PartialEq)]
pub struct ModeResult {
    pub name: String,
    /// The mode's patterns as [`ParamPatterns`] prints them (`fc.*`).
    pub trainable: Option<String>,
    pub trainable_parameters: usize,
    pub step_ms: Timing,
    pub forward_ms: f64,
    pub backward_ms: f64,
    pub optimizer_ms: f64,
    /// Highest tensor memory held during a step (parameters, momentum
    /// buffers and activations included), on the bench's device.
    pub peak_bytes: usize,
    /// Median minor page faults per timed step (the whole process), when
    /// the platform reports them.
    pub minor_faults: Option<u64>,
    /// Bytes the CPU buffer pool held in free buffers after the last step
    /// (not tensor memory: what is kept for reuse instead of given back).
    pub pool_held_bytes: usize,
    pub nodes: usize,
    pub computed: BTreeMap<String, usize>,
    pub skipped: BTreeMap<String, usize>,
    /// Conv + linear FLOPs per phase, direct-equivalent (see `ops::flops`):
    /// the FLOPs of the direct definition, not of the algorithm that ran
    /// (the Winograd 3x3 layers execute 2.25x fewer multiply-adds).
    pub forward_gflop: f64,
    pub backward_gflop: f64,
    /// Backward FLOPs a full fine-tuning step executes that this mode did not.
    pub skipped_gflop: f64,
    /// Filled in once every mode has run: finetune's median step / this one's.
    pub speedup_vs_finetune: Option<f64>,
}

impl ModeResult {
    pub fn gflop(&self) -> f64 {
        self.forward_gflop + self.backward_gflop
    }
    /// Achieved conv + linear GFLOP/s over the median step, from the
    /// direct-equivalent count (so it can exceed the FMA peak).
    pub fn gflops_per_second(&self) -> f64 {
        rate(self.gflop(), self.step_ms.median)
    }
    /// Achieved conv + linear GFLOP/s of the forward phase (median),
    /// direct-equivalent.
    pub fn forward_gflops_per_second(&self) -> f64 {
        rate(self.forward_gflop, self.forward_ms)
    }
    /// Achieved conv + linear GFLOP/s of the backward phase (median),
    /// direct-equivalent.
    pub fn backward_gflops_per_second(&self) -> f64 {
        rate(self.backward_gflop, self.backward_ms)
    }
}

/// GFLOP per `ms` milliseconds, as GFLOP/s (0 for an empty phase).
fn rate(gflop: f64, ms: f64) -> f64 {
    if ms > 0.0 {
        gflop / (ms / 1e3)
    } else {
        0.0
    }
}

/// The settings of one benchmark run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub device: Device,
    pub batch: usize,
    pub size: usize,
    pub steps: usize,
    pub warmup: usize,
    /// SGD learning rate and momentum (as in `scripts/bench_pytorch.py`).
    pub lr: f32,
    pub momentum: f32,
}

/// A whole run: the settings and one result per mode.
#[derive(Clone, Debug)]
pub struct BenchReport {
    pub device: String,
    pub batch: usize,
    pub size: usize,
    pub steps: usize,
    pub warmup: usize,
    pub threads: usize,
    /// The CPU (model name, family, model) the run was on.
    pub cpu_model: String,
    /// The CPU GEMM's SIMD path (`avx512`, `avx2`, `portable`).
    pub simd_path: String,
    /// Whether the CPU buffer pool was on (`FROSTGRAD_CPU_POOL`).
    pub cpu_pool: bool,
    /// The Winograd F(2x2, 3x3) convolution mode (`FROSTGRAD_CONV_WINOGRAD`,
    /// [`crate::backend::cpu::conv_winograd`]): `auto`, `on` or `off`. Where
    /// it runs, a layer does fewer multiply-adds than its FLOP count (which
    /// is direct-equivalent), so its GFLOP/s can exceed the FMA peak.
    pub conv_winograd: String,
    /// This machine's peak f32 GFLOP/s per SIMD path and thread count
    /// ([`machine::probe_peaks`], measured at start-up; empty off the CPU).
    pub peak_gflops: Vec<machine::PeakGflops>,
    pub modes: Vec<ModeResult>,
}

impl BenchReport {
    /// This machine's peak at the run's thread count: the fastest probed
    /// path, whichever path the GEMM used. Not the used path's own probe:
    /// `portable` means `matrixmultiply`, which picks AVX/FMA kernels at run
    /// time itself, so against the plain-Rust probe it read 147 % of
    /// "peak" on the Zen 4 of BENCHMARKS.md; and a slower path on a faster
    /// machine should show the headroom it leaves.
    pub fn peak(&self) -> Option<f64> {
        self.peak_gflops
            .iter()
            .filter(|p| p.threads == self.threads)
            .map(|p| p.gflops)
            .reduce(f64::max)
    }
}

/// Backward FLOPs of a fine-tuning step: every conv and linear computes its
/// input and weight gradient (2x the forward), except that nothing needs the
/// gradient of the image, so the stem conv skips its input gradient.
fn full_backward_gflop(forward_gflop: f64, cfg: &BenchConfig) -> Result<f64> {
    let stem = Conv2dGeometry::new(
        [cfg.batch, 3, cfg.size, cfg.size],
        [64, 3, 7, 7],
        (2, 2),
        (3, 3),
        (1, 1),
    )?;
    Ok(2.0 * forward_gflop - 2.0 * stem.macs() as f64 / 1e9)
}

/// Runs every mode on `model` and fills in the speedups.
pub fn run(
    model: &mut ResNet,
    modes: &[Mode],
    cfg: &BenchConfig,
    mut progress: impl FnMut(&str, usize, usize),
) -> Result<BenchReport> {
    if cfg.steps == 0 {
        return Err(Error::invalid("bench", "--steps must be at least 1"));
    }
    let threads = rayon::current_num_threads();
    // Before the model runs, while this process does nothing else.
    let peak_gflops = if cfg.device == Device::Cpu {
        machine::probe_peaks(threads)
    } else {
        Vec::new()
    };
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    let images = Tensor::randn(
        &[cfg.batch, 3, cfg.size, cfg.size],
        0.0,
        1.0,
        &mut rng,
        cfg.device,
    )
    .map_err(|e| e.named("the benchmark's images (--batch x 3 x --size x --size)"))?;
    let classes = model.num_classes() as i64;
    let labels: Vec<i64> = (0..cfg.batch as i64)
        .map(|i| (i * 7919) % classes)
        .collect();
    let labels = Tensor::from_vec_i64(labels, &[cfg.batch], cfg.device)?;

    let mut results = Vec::with_capacity(modes.len());
    for mode in modes {
        let r = run_mode(model, &images, &labels, mode, cfg, |done, total| {
            progress(&mode.name, done, total)
        })?;
        results.push(r);
    }
    if let Some(base) = results
        .iter()
        .find(|r| r.name == "finetune")
        .map(|r| r.step_ms.median)
    {
        for r in &mut results {
            r.speedup_vs_finetune = (r.step_ms.median > 0.0).then(|| base / r.step_ms.median);
        }
    }
    Ok(BenchReport {
        device: crate::backend::describe_device(cfg.device),
        batch: cfg.batch,
        size: cfg.size,
        steps: cfg.steps,
        warmup: cfg.warmup,
        threads,
        cpu_model: machine::cpu_model(),
        simd_path: crate::backend::cpu::simd::active().name().to_string(),
        cpu_pool: crate::backend::cpu::buffer_pool::enabled(),
        conv_winograd: crate::backend::cpu::conv_winograd().to_string(),
        peak_gflops,
        modes: results,
    })
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Warm-up plus timed steps of one mode.
pub fn run_mode(
    model: &mut ResNet,
    images: &Tensor,
    labels: &Tensor,
    mode: &Mode,
    cfg: &BenchConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<ModeResult> {
    for p in model.parameters() {
        p.set_grad(None)?;
    }
    let trainable = match &mode.trainable {
        Some(patterns) => model.set_trainable(patterns)?,
        None => {
            model.requires_grad_(false)?;
            Vec::new()
        }
    };
    let trainable_parameters = model
        .named_parameters()
        .iter()
        .filter(|(n, _)| trainable.contains(n))
        .map(|(_, p)| p.numel())
        .sum();
    let params: Vec<Tensor> = model.parameters();
    let mut sgd = Sgd::new(
        params.iter().filter(|p| p.requires_grad()).cloned(),
        SgdConfig::new(cfg.lr).momentum(cfg.momentum),
    )?;

    let total = cfg.warmup + cfg.steps;
    // Room for every step up front: growing these in a timed step would
    // touch fresh heap pages, counted as that step's faults.
    let timings = || Vec::with_capacity(cfg.steps);
    let (mut step, mut fwd, mut bwd, mut opt) = (timings(), timings(), timings(), timings());
    let mut last = None;
    let mut peak_bytes = 0;
    let mut faults = timings();
    // Every phase boundary waits for the device (`sync`), as
    // scripts/bench_pytorch.py does: on a GPU a launch returns at once, so
    // without it a phase would time its launches and its kernels would be
    // charged to the next phase. A no-op on the CPU.
    let sync = || crate::backend::synchronize(cfg.device);
    for i in 0..total {
        let faults_before = machine::minor_faults();
        memory::reset_peak_bytes(cfg.device);
        ops::flops::reset();
        sync()?;
        let t0 = Instant::now();
        let (f, b, o, stats, gflop) = if mode.trainable.is_none() {
            model.eval();
            no_grad(|| model.forward(images))?;
            sync()?;
            let f = ms_since(t0);
            let fg = ops::flops::executed() as f64 / 1e9;
            (f, 0.0, 0.0, crate::BackwardStats::default(), (fg, 0.0))
        } else {
            model.train();
            let loss = ops::cross_entropy(&model.forward(images)?, labels)?;
            sync()?;
            let f = ms_since(t0);
            let fg = ops::flops::executed() as f64 / 1e9;
            let t1 = Instant::now();
            let stats = loss.backward()?;
            drop(loss);
            sync()?;
            let b = ms_since(t1);
            let bg = ops::flops::executed() as f64 / 1e9 - fg;
            let t2 = Instant::now();
            sgd.step()?;
            sgd.zero_grad(true)?;
            sync()?;
            (f, b, ms_since(t2), stats, (fg, bg))
        };
        let s = ms_since(t0);
        peak_bytes = peak_bytes.max(memory::peak_bytes(cfg.device));
        if i >= cfg.warmup {
            if let (Some(a), Some(b)) = (faults_before, machine::minor_faults()) {
                faults.push(b.saturating_sub(a) as f64);
            }
            step.push(s);
            fwd.push(f);
            bwd.push(b);
            opt.push(o);
        }
        last = Some((stats, gflop));
        progress(i + 1, total);
    }
    let (stats, (forward_gflop, backward_gflop)) =
        last.ok_or_else(|| Error::invalid("bench", "no step ran"))?;
    let skipped_gflop = if mode.trainable.is_none() {
        0.0
    } else {
        (full_backward_gflop(forward_gflop, cfg)? - backward_gflop).max(0.0)
    };
    Ok(ModeResult {
        name: mode.name.clone(),
        trainable: mode.trainable.as_ref().map(ParamPatterns::to_string),
        trainable_parameters,
        step_ms: Timing::of(&step),
        forward_ms: Timing::of(&fwd).median,
        backward_ms: Timing::of(&bwd).median,
        optimizer_ms: Timing::of(&opt).median,
        peak_bytes,
        minor_faults: (!faults.is_empty()).then(|| Timing::of(&faults).median.round() as u64),
        pool_held_bytes: crate::backend::cpu::buffer_pool::held_bytes(),
        nodes: stats.nodes,
        computed: stats.computed,
        skipped: stats.skipped,
        forward_gflop,
        backward_gflop,
        skipped_gflop,
        speedup_vs_finetune: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_summary_is_median_min_max() {
        let t = Timing::of(&[5.0, 1.0, 3.0, 9.0]);
        assert_eq!((t.median, t.min, t.max), (4.0, 1.0, 9.0));
        assert_eq!(Timing::of(&[2.0, 7.0, 4.0]).median, 4.0);
    }

    #[test]
    fn modes_parse_and_reject_unknown_names() {
        let m = parse_modes("transfer,finetune").unwrap();
        assert_eq!(m[0].trainable, Some(ParamPatterns::parse("fc.*").unwrap()));
        assert_eq!(m[1].trainable, Some(ParamPatterns::parse("*").unwrap()));
        let err = parse_modes("finetune,everything").unwrap_err().to_string();
        assert!(
            err.contains("everything") && err.contains("inference"),
            "{err}"
        );
    }
}
