//! Times every distinct layer of a ResNet-18 training step (batch 8,
//! 224x224 unless `LAYER_BATCH` / `LAYER_SIZE` say otherwise), one kernel at a time, through the CPU backend, and prints one
//! JSON document: per case its parameters (so `scripts/compare_layers.py`
//! can run the same case in PyTorch), how often it occurs in a step, the
//! compulsory bytes and FLOPs it moves, and the raw wall and CPU times of
//! every repeat. Asserts nothing; it is the frostgrad half of the per-layer
//! comparison (issue 9, item 6):
//!
//! ```text
//! cargo run --release --example layer_timing [-- REPS [FILTER]]
//! python3 scripts/compare_layers.py    # both sides, ratios (needs torch)
//! ```
//!
//! `REPS` (default 5) timed repeats follow one untimed warm-up per case;
//! `FILTER` keeps the cases whose op or shape name contains it, `LAYER_OP`
//! (e.g. `conv_dw`) only that op (to profile one kernel). Threads:
//! rayon's default, or `RAYON_NUM_THREADS`.

use std::time::Instant;

#[path = "shared/cpu_time.rs"]
mod cpu_time;
use cpu_time::cpu_seconds;

use frostgrad::backend::cpu::CpuStorage;
use frostgrad::backend::{
    BackendStorage, BatchNormGeometry, BatchNormParams, BatchNormSaved, BatchNormStats,
    Conv2dGeometry, Epilogue, Pool2dGeometry, SgdConfig,
};
use frostgrad::nn::{resnet18, Module};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};

/// Batch size and input resolution: `LAYER_BATCH` and `LAYER_SIZE`
/// (default 8 and 224, the benchmark's), so that the small-image stages of
/// other resolutions (e.g. 7x7 and 4x4 at 112x112) can be compared too.
fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

/// ResNet-18's convolutions: (kind, input stage, weight
/// [O, C, KH, KW], stride, padding, occurrences per step). Stage `s` is the
/// spatial size after `s` halvings of the input (0: the image, 1: the
/// stem's output, 2: layer1, ... 5: layer4), each a 3x3 / stride 2 /
/// padding 1 (or 7x7 / 2 / 3) halving that rounds up.
type ConvCase = (&'static str, usize, [usize; 4], usize, usize, usize);

const CONVS: &[ConvCase] = &[
    ("stem 7x7 3->64 s2", 0, [64, 3, 7, 7], 2, 3, 1),
    ("3x3 64->64", 2, [64, 64, 3, 3], 1, 1, 4),
    ("3x3 64->128 s2", 2, [128, 64, 3, 3], 2, 1, 1),
    ("3x3 128->128", 3, [128, 128, 3, 3], 1, 1, 3),
    ("1x1 64->128 s2", 2, [128, 64, 1, 1], 2, 0, 1),
    ("3x3 128->256 s2", 3, [256, 128, 3, 3], 2, 1, 1),
    ("3x3 256->256", 4, [256, 256, 3, 3], 1, 1, 3),
    ("1x1 128->256 s2", 3, [256, 128, 1, 1], 2, 0, 1),
    ("3x3 256->512 s2", 4, [512, 256, 3, 3], 2, 1, 1),
    ("3x3 512->512", 5, [512, 512, 3, 3], 1, 1, 3),
    ("1x1 256->512 s2", 4, [512, 256, 1, 1], 2, 0, 1),
];

/// The spatial size at `stage` for an input of `size` (see [`ConvCase`]).
fn stage_size(size: usize, stage: usize) -> usize {
    (0..stage).fold(size, |h, _| h.div_ceil(2))
}

/// Activation channels and stage after each part of the network, with how
/// many batch norms followed by a fused ReLU (`bn1` of every block, and the
/// stem's), plain batch norms (`bn2` and the downsample's) and residual adds
/// (each followed by a ReLU) a step has at that shape.
const ACTIVATIONS: &[(usize, usize, usize, usize, usize)] = &[
    (64, 1, 1, 0, 0),
    (64, 2, 2, 2, 2),
    (128, 3, 2, 3, 2),
    (256, 4, 2, 3, 2),
    (512, 5, 2, 3, 2),
];

/// Deterministic values in [-0.5, 0.5).
fn filled(n: usize, seed: usize) -> CpuStorage {
    CpuStorage::F32(
        (0..n)
            .map(|i| (((i + seed) * 7919) % 1000) as f32 * 1e-3 - 0.5)
            .collect(),
    )
}

/// A case's result, handed back to the CPU buffer pool as a training step
/// hands back every tensor it drops: dropped plainly, each call's output
/// would miss the pool, and `buffer_pool::uninit` would zero a fresh
/// allocation on the calling thread before the kernel ran (a serial pass
/// over the output the step never pays). The recycle happens inside the
/// timed region, as a step's drop does.
trait Recycle {
    fn recycle(self);
}

impl Recycle for CpuStorage {
    fn recycle(mut self) {
        frostgrad::backend::cpu::buffer_pool::recycle_host(&mut self);
    }
}

impl Recycle for () {
    fn recycle(self) {}
}

impl<A: Recycle, B: Recycle> Recycle for (A, B) {
    fn recycle(self) {
        self.0.recycle();
        self.1.recycle();
    }
}

impl<T: Recycle> Recycle for Option<T> {
    fn recycle(self) {
        if let Some(t) = self {
            t.recycle();
        }
    }
}

impl<T: Recycle, const K: usize> Recycle for [T; K] {
    fn recycle(self) {
        self.into_iter().for_each(Recycle::recycle);
    }
}

impl Recycle for frostgrad::backend::BatchNormOutput<CpuStorage> {
    fn recycle(self) {
        self.output.recycle();
        if let Some(s) = self.batch_stats {
            (s.mean, (s.var, s.invstd)).recycle();
        }
    }
}

struct Timer {
    reps: usize,
    filter: Option<String>,
    /// `LAYER_OP`: only this op (e.g. `conv_dw`), so that one kernel of one
    /// shape can be profiled on its own.
    op: Option<String>,
    cases: Vec<Value>,
}

impl Timer {
    /// Runs `f` once untimed, then `reps` times, and records the case.
    /// `params` describes the case for the PyTorch side.
    // Each argument is one field of the case's JSON record.
    #[allow(clippy::too_many_arguments)]
    fn case<T: Recycle>(
        &mut self,
        op: &str,
        shape: &str,
        count: usize,
        bytes: usize,
        flops: f64,
        params: Value,
        mut f: impl FnMut() -> frostgrad::Result<T>,
    ) -> frostgrad::Result<()> {
        if let Some(filter) = &self.filter {
            if !op.contains(filter.as_str()) && !shape.contains(filter.as_str()) {
                return Ok(());
            }
        }
        if self.op.as_deref().is_some_and(|o| o != op) {
            return Ok(());
        }
        std::hint::black_box(f()?).recycle();
        let (mut wall, mut cpu) = (vec![], vec![]);
        for _ in 0..self.reps {
            let (t, c) = (Instant::now(), cpu_seconds());
            std::hint::black_box(f()?).recycle();
            wall.push(t.elapsed().as_secs_f64() * 1e3);
            cpu.push((cpu_seconds() - c) * 1e3);
        }
        self.cases.push(json!({
            "op": op, "shape": shape, "count": count, "bytes": bytes,
            "flops": flops, "params": params, "wall_ms": wall, "cpu_ms": cpu,
        }));
        Ok(())
    }
}

fn main() -> frostgrad::Result<()> {
    let mut args = std::env::args().skip(1);
    let reps = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let mut t = Timer {
        reps,
        filter: args.next(),
        op: std::env::var("LAYER_OP").ok(),
        cases: vec![],
    };

    let batch = env_or("LAYER_BATCH", 8);
    let size = env_or("LAYER_SIZE", 224);
    for &(kind, stage, weight, s, p, count) in CONVS {
        let h = stage_size(size, stage);
        let input = [batch, weight[1], h, h];
        // Stride-1 layers are named by their size (as at 224: "3x3 64->64 56").
        let name = if s == 1 {
            format!("{kind} {h}")
        } else {
            kind.to_string()
        };
        let name = name.as_str();
        let g = Conv2dGeometry::new(input, weight, (s, s), (p, p), (1, 1))?;
        let x = filled(input.iter().product(), 0);
        let w = filled(weight.iter().product(), 1);
        let dy = filled(g.output_shape().iter().product(), 2);
        let flops = 2.0 * g.macs() as f64;
        let params = json!({"input": input, "weight": weight, "stride": s, "padding": p});
        let (nx, nw, ny) = (x.len(), w.len(), dy.len());
        t.case(
            "conv_fwd",
            name,
            count,
            4 * (nx + nw + ny),
            flops,
            params.clone(),
            || x.conv2d(&w, None, &g),
        )?;
        // The stem's input gradient is never needed in training.
        let dx_count = if name.starts_with("stem") { 0 } else { count };
        t.case(
            "conv_dx",
            name,
            dx_count,
            4 * (nx + nw + ny),
            flops,
            params.clone(),
            || dy.conv2d_input_grad(&w, &g),
        )?;
        t.case(
            "conv_dw",
            name,
            count,
            4 * (nx + nw + ny),
            flops,
            params,
            || dy.conv2d_weight_grad(&x, &g),
        )?;
    }

    for &(c, stage, fused, plain, adds) in ACTIVATIONS {
        let (h, w) = (stage_size(size, stage), stage_size(size, stage));
        let shape = format!("{c}x{h}x{w}");
        let g = BatchNormGeometry {
            batch,
            channels: c,
            spatial: h * w,
        };
        let n = g.numel();
        let x = filled(n, 0);
        let dy = filled(n, 1);
        let (gamma, beta) = (filled(c, 2), filled(c, 3));
        let (mut rm, mut rv) = (CpuStorage::F32(vec![0.0; c]), CpuStorage::F32(vec![1.0; c]));
        let params = json!({"input": [batch, c, h, w]});
        for (relu, count) in [(false, plain), (true, fused)] {
            let p = BatchNormParams {
                geometry: g,
                eps: 1e-5,
                epilogue: if relu { Epilogue::Relu } else { Epilogue::None },
            };
            let tag = if relu { "bn_relu" } else { "bn" };
            // Training forward as `ops::batch_norm` runs it: batch
            // statistics, then the running statistics updated in place.
            let mut train = || -> frostgrad::Result<_> {
                let out = x.batch_norm(Some(&gamma), Some(&beta), BatchNormStats::Batch, &p)?;
                let stats = out.batch_stats.as_ref().expect("training statistics");
                rm.update_running_stats(&mut rv, &stats.mean, &stats.var, 0.1, g.count())?;
                Ok(out)
            };
            // Compulsory traffic: read x, write y (the statistics are [C]).
            t.case(
                &format!("{tag}_fwd"),
                &shape,
                count,
                8 * n,
                0.0,
                params.clone(),
                &mut train,
            )?;
            let fwd = train()?;
            let stats = fwd.batch_stats.as_ref().expect("training statistics");
            let saved = BatchNormSaved {
                input: Some(&x),
                weight: Some(&gamma),
                mean: &stats.mean,
                invstd: &stats.invstd,
                batch_stats: true,
                output: relu.then_some(&fwd.output),
            };
            // Read dy and x (and y for the ReLU mask), write dx.
            let bytes = if relu { 16 * n } else { 12 * n };
            t.case(
                &format!("{tag}_bwd"),
                &shape,
                count,
                bytes,
                0.0,
                params.clone(),
                || dy.batch_norm_backward(&saved, &p, [true; 3]),
            )?;
        }
        // The residual block's tail, `relu(out + shortcut)`, and the
        // gradient that flows back through it. ResNet's block writes the
        // tail over bn2's output (`ops::add_relu` on its sole handle), as
        // PyTorch's `out += identity; relu_(out)` does: read both, write one.
        let mut tail = x.try_clone()?;
        t.case(
            "add_relu_fwd",
            &shape,
            adds,
            12 * n,
            0.0,
            params.clone(),
            || tail.add_relu_assign(&dy),
        )?;
        // The tail's masked gradient, written over the incoming gradient
        // (a sum the backward pass made for this node alone), as
        // `AddReluBackward0` does; PyTorch's `threshold_backward` writes a new one.
        let mut masked = dy.try_clone()?;
        t.case(
            "relu_bwd",
            &shape,
            adds,
            12 * n,
            0.0,
            params.clone(),
            || masked.relu_backward_assign(&x),
        )?;
        // The block input's gradient: the conv path's plus the shortcut's,
        // summed by the backward pass into the conv path's gradient (which
        // nothing else holds), as PyTorch's engine sums into its buffer.
        let mut acc = x.try_clone()?;
        t.case(
            "grad_add",
            &shape,
            adds,
            12 * n,
            0.0,
            params.clone(),
            || acc.add_assign(&dy),
        )?;

        if stage == 1 {
            let pg = Pool2dGeometry::new([batch, c, h, w], (3, 3), (2, 2), (1, 1), (1, 1))?;
            let out_n = batch * c * pg.out_h * pg.out_w;
            let pool_params =
                json!({"input": [batch, c, h, w], "kernel": 3, "stride": 2, "padding": 1});
            // Read x; write the values and the i64 arg-max indices.
            t.case(
                "maxpool_fwd",
                &shape,
                1,
                4 * n + 12 * out_n,
                0.0,
                pool_params.clone(),
                || x.max_pool2d(&pg),
            )?;
            let (pooled, indices) = x.max_pool2d(&pg)?;
            // Read dy and the indices, write dx.
            t.case(
                "maxpool_bwd",
                &shape,
                1,
                12 * out_n + 4 * n,
                0.0,
                pool_params,
                || pooled.max_pool2d_backward(&indices, &pg),
            )?;
        }
    }

    // SGD with momentum over every parameter of ResNet-18 (10 classes, as
    // the benchmark trains it): read p, g, buffer; write p, buffer.
    let model = resnet18(10, &mut StdRng::seed_from_u64(0))?;
    let sizes: Vec<usize> = model.parameters().iter().map(|p| p.numel()).collect();
    let total: usize = sizes.iter().sum();
    let mut params: Vec<(CpuStorage, CpuStorage, CpuStorage)> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| (filled(n, i), filled(n, i + 1), filled(n, i + 2)))
        .collect();
    let cfg = SgdConfig {
        lr: 1e-6,
        momentum: 0.9,
        dampening: 0.0,
        weight_decay: 0.0,
        nesterov: false,
    };
    t.case(
        "sgd_momentum",
        "resnet18",
        1,
        20 * total,
        0.0,
        json!({"sizes": sizes}),
        || {
            for (p, g, b) in params.iter_mut() {
                p.sgd_step(g, Some(b), &cfg, false)?;
            }
            Ok(())
        },
    )?;

    let doc = json!({
        "threads": rayon::current_num_threads(),
        "simd": frostgrad::backend::cpu::simd::active().name(),
        "reps": reps,
        "cases": t.cases,
    });
    println!("{doc}");
    Ok(())
}
