//! Informal timing of the CPU convolution kernels on ResNet-18's conv
//! shapes at batch 8, 224x224 (run with `cargo run --release --example
//! cpu_conv_timing`). Prints milliseconds; asserts nothing. Use it to guide
//! tuning, not as a test.

#[path = "shared/cpu_time.rs"]
mod cpu_time;
use cpu_time::run_times_ms;

use frostgrad::backend::cpu::CpuStorage;
use frostgrad::backend::{BackendStorage, Conv2dGeometry};

/// (name, input [N, C, H, W], weight [O, C, KH, KW], stride, padding, how many in ResNet-18)
type Shape = (&'static str, [usize; 4], [usize; 4], usize, usize, usize);

const SHAPES: &[Shape] = &[
    (
        "stem 7x7 3->64 s2",
        [8, 3, 224, 224],
        [64, 3, 7, 7],
        2,
        3,
        1,
    ),
    ("3x3 64->64 56", [8, 64, 56, 56], [64, 64, 3, 3], 1, 1, 4),
    ("3x3 64->128 s2", [8, 64, 56, 56], [128, 64, 3, 3], 2, 1, 1),
    (
        "3x3 128->128 28",
        [8, 128, 28, 28],
        [128, 128, 3, 3],
        1,
        1,
        3,
    ),
    ("1x1 64->128 s2", [8, 64, 56, 56], [128, 64, 1, 1], 2, 0, 1),
    (
        "3x3 128->256 s2",
        [8, 128, 28, 28],
        [256, 128, 3, 3],
        2,
        1,
        1,
    ),
    (
        "3x3 256->256 14",
        [8, 256, 14, 14],
        [256, 256, 3, 3],
        1,
        1,
        3,
    ),
    (
        "1x1 128->256 s2",
        [8, 128, 28, 28],
        [256, 128, 1, 1],
        2,
        0,
        1,
    ),
    (
        "3x3 256->512 s2",
        [8, 256, 14, 14],
        [512, 256, 3, 3],
        2,
        1,
        1,
    ),
    ("3x3 512->512 7", [8, 512, 7, 7], [512, 512, 3, 3], 1, 1, 3),
    (
        "1x1 256->512 s2",
        [8, 256, 14, 14],
        [512, 256, 1, 1],
        2,
        0,
        1,
    ),
    (
        "1x1 64->64 56 (pointwise path)",
        [8, 64, 56, 56],
        [64, 64, 1, 1],
        1,
        0,
        0,
    ),
];

fn filled(n: usize) -> CpuStorage {
    CpuStorage::F32(
        (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
            .collect(),
    )
}

/// Best of `reps` runs, in milliseconds (wall, or CPU time with
/// `CLOCK=cpu`: see [`run_times_ms`]).
fn time_ms<T>(reps: usize, f: impl FnMut() -> T) -> f64 {
    run_times_ms(reps, f)
        .into_iter()
        .fold(f64::INFINITY, f64::min)
}

fn main() -> frostgrad::Result<()> {
    let reps = std::env::var("REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    println!(
        "{:<32} {:>9} {:>9} {:>9} {:>8}",
        "shape", "fwd ms", "dx ms", "dW ms", "GFLOP/s"
    );
    let mut step_total = 0.0;
    for &(name, input, weight, s, p, count) in SHAPES {
        let g = Conv2dGeometry::new(input, weight, (s, s), (p, p), (1, 1))?;
        let x = filled(input.iter().product());
        let w = filled(weight.iter().product());
        let dy = filled(g.output_shape().iter().product());
        let fwd = time_ms(reps, || x.conv2d(&w, None, &g));
        let dx = time_ms(reps, || dy.conv2d_input_grad(&w, &g));
        let dw = time_ms(reps, || dy.conv2d_weight_grad(&x, &g));
        let gflops = 3.0 * 2.0 * g.macs() as f64 / ((fwd + dx + dw) * 1e-3) / 1e9;
        println!("{name:<32} {fwd:>9.1} {dx:>9.1} {dw:>9.1} {gflops:>8.1}");
        // The stem's input gradient is never needed in training.
        step_total += count as f64 * (fwd + dw + if name.starts_with("stem") { 0.0 } else { dx });
    }
    println!(
        "ResNet-18 conv total per training step (fwd + dW + dx, no stem dx): {step_total:.0} ms"
    );
    Ok(())
}
