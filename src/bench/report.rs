//! Presenting a [`BenchReport`]: a table for the terminal, JSON for
//! scripts (the schema `scripts/bench_pytorch.py` writes too), and an SVG
//! of each mode's forward / backward / optimizer split.

use std::collections::BTreeSet;
use std::fmt::Write;

use super::{BenchReport, ModeResult};

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// How the table's GFLOP columns count (`"flop_count": "direct-equivalent"`
/// in the JSON), and, unless Winograd is off, why they can exceed the peak.
fn flop_note(conv_winograd: &str) -> String {
    let mut note =
        "FLOP counts are direct-equivalent: 2 per multiply-add of a direct convolution, \
                    whichever algorithm ran"
            .to_string();
    if conv_winograd != "off" {
        note.push_str(
            ".\nLayers run through Winograd F(2x2, 3x3) (stride-1 3x3) do 2.25x fewer multiply-adds \
             than counted, so their GFLOP/s and %pk can exceed the FMA peak",
        );
    }
    note
}

/// The terminal table: one row per mode, then the backward statistics
/// (computed/skipped per `op.input`) with one column per mode.
pub fn render_table(r: &BenchReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ResNet-18, batch {} at {}x{}, device {}, {} timed steps after {} warm-up ({} threads)",
        r.batch, r.size, r.size, r.device, r.steps, r.warmup, r.threads
    );
    let _ = writeln!(
        out,
        "CPU: {}; CPU GEMM path {}; CPU buffer pool {}; Winograd convolution {} (FROSTGRAD_CONV_WINOGRAD)",
        r.cpu_model,
        r.simd_path,
        if r.cpu_pool { "on" } else { "off" },
        r.conv_winograd
    );
    let _ = writeln!(out, "{}\n", flop_note(&r.conv_winograd));
    if !r.peak_gflops.is_empty() {
        let peaks: Vec<String> = r
            .peak_gflops
            .iter()
            .map(|p| format!("{} {}t {:.1}", p.path, p.threads, p.gflops))
            .collect();
        let _ = writeln!(
            out,
            "FMA probe peak GFLOP/s: {}; %peak below is of this machine's fastest path at {} threads (GEMM path used: {})\n",
            peaks.join(", "),
            r.threads,
            r.simd_path
        );
    }
    let pct = |gflops: f64| {
        r.peak()
            .filter(|&p| p > 0.0)
            .map_or("-".to_string(), |p| format!("{:.0}%", 100.0 * gflops / p))
    };
    let _ = writeln!(
        out,
        "{:<10} {:>22} {:>9} {:>9} {:>8} {:>8} {:>14} {:>10} {:>8} {:>9} {:>7} {:>7} {:>8} {:>8}",
        "mode",
        "step ms (min-max)",
        "fwd ms",
        "bwd ms",
        "opt ms",
        "speedup",
        "GFLOP fwd+bwd",
        "skipped",
        "GFLOP/s",
        "peak MiB",
        "nodes",
        "faults",
        "fwd %pk",
        "bwd %pk"
    );
    for m in &r.modes {
        let step = format!(
            "{:.1} ({:.1}-{:.1})",
            m.step_ms.median, m.step_ms.min, m.step_ms.max
        );
        let speedup = m
            .speedup_vs_finetune
            .map_or("-".to_string(), |s| format!("{s:.2}x"));
        let _ = writeln!(
            out,
            "{:<10} {:>22} {:>9.1} {:>9.1} {:>8.1} {:>8} {:>14} {:>10.2} {:>8.1} {:>9.1} {:>7} {:>7} {:>8} {:>8}",
            m.name,
            step,
            m.forward_ms,
            m.backward_ms,
            m.optimizer_ms,
            speedup,
            format!("{:.2}+{:.2}", m.forward_gflop, m.backward_gflop),
            m.skipped_gflop,
            m.gflops_per_second(),
            mib(m.peak_bytes),
            m.nodes,
            m.minor_faults.map_or("-".to_string(), |f| f.to_string()),
            pct(m.forward_gflops_per_second()),
            pct(m.backward_gflops_per_second())
        );
    }
    let keys: BTreeSet<&String> = r
        .modes
        .iter()
        .flat_map(|m| m.computed.keys().chain(m.skipped.keys()))
        .collect();
    if !keys.is_empty() {
        let _ = writeln!(out, "\ngradients computed/skipped per backward pass");
        let _ = write!(out, "{:<28}", "op.input");
        for m in &r.modes {
            let _ = write!(out, " {:>10}", m.name);
        }
        let _ = writeln!(out);
        for k in keys {
            let _ = write!(out, "{k:<28}");
            for m in &r.modes {
                let c = m.computed.get(k).copied().unwrap_or(0);
                let s = m.skipped.get(k).copied().unwrap_or(0);
                let _ = write!(out, " {:>10}", format!("{c}/{s}"));
            }
            let _ = writeln!(out);
        }
    }
    out
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_map(m: &std::collections::BTreeMap<String, usize>) -> String {
    let items: Vec<String> = m
        .iter()
        .map(|(k, v)| format!("{}: {v}", json_str(k)))
        .collect();
    format!("{{{}}}", items.join(", "))
}

fn json_f64(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.4}")
    } else {
        "null".into()
    }
}

fn mode_json(m: &ModeResult, peak: Option<f64>) -> String {
    let fraction = |gflops: f64| {
        peak.filter(|&p| p > 0.0)
            .map_or("null".into(), |p| json_f64(gflops / p))
    };
    format!(
        concat!(
            "{{\"name\": {}, \"trainable\": {}, \"trainable_parameters\": {}, ",
            "\"step_ms\": {{\"median\": {}, \"min\": {}, \"max\": {}}}, ",
            "\"forward_ms\": {}, \"backward_ms\": {}, \"optimizer_ms\": {}, ",
            "\"peak_bytes\": {}, \"minor_faults\": {}, \"pool_held_bytes\": {}, ",
            "\"nodes\": {}, \"computed\": {}, \"skipped\": {}, ",
            "\"gflop\": {}, \"forward_gflop\": {}, \"backward_gflop\": {}, \"skipped_gflop\": {}, ",
            "\"gflops_per_second\": {}, \"forward_gflops_per_second\": {}, ",
            "\"backward_gflops_per_second\": {}, \"forward_peak_fraction\": {}, ",
            "\"backward_peak_fraction\": {}, \"speedup_vs_finetune\": {}}}"
        ),
        json_str(&m.name),
        m.trainable.as_deref().map_or("null".into(), json_str),
        m.trainable_parameters,
        json_f64(m.step_ms.median),
        json_f64(m.step_ms.min),
        json_f64(m.step_ms.max),
        json_f64(m.forward_ms),
        json_f64(m.backward_ms),
        json_f64(m.optimizer_ms),
        m.peak_bytes,
        m.minor_faults.map_or("null".into(), |f| f.to_string()),
        m.pool_held_bytes,
        m.nodes,
        json_map(&m.computed),
        json_map(&m.skipped),
        json_f64(m.gflop()),
        json_f64(m.forward_gflop),
        json_f64(m.backward_gflop),
        json_f64(m.skipped_gflop),
        json_f64(m.gflops_per_second()),
        json_f64(m.forward_gflops_per_second()),
        json_f64(m.backward_gflops_per_second()),
        fraction(m.forward_gflops_per_second()),
        fraction(m.backward_gflops_per_second()),
        m.speedup_vs_finetune.map_or("null".into(), json_f64),
    )
}

/// `{"device", "cpu_model", "simd_path", "cpu_pool", "conv_winograd"
/// ("auto", "on" or "off"), "flop_count": "direct-equivalent" (how "gflop"
/// and the GFLOP/s below count: 2 per multiply-add of a direct convolution,
/// whichever algorithm ran), "threads", "peak_gflops", "batch", "size",
/// "steps", "warmup", "modes": [{"name", "trainable", "step_ms": {"median",
/// "min", "max"}, "forward_ms", "backward_ms", "optimizer_ms", "peak_bytes",
/// "minor_faults", "computed", "skipped", "gflop", ...}]}`.
pub fn to_json(r: &BenchReport) -> String {
    let modes: Vec<String> = r
        .modes
        .iter()
        .map(|m| format!("    {}", mode_json(m, r.peak())))
        .collect();
    let peaks: Vec<String> = r
        .peak_gflops
        .iter()
        .map(|p| {
            format!(
                "{{\"path\": {}, \"threads\": {}, \"gflops\": {}}}",
                json_str(&p.path),
                p.threads,
                json_f64(p.gflops)
            )
        })
        .collect();
    format!(
        "{{\n  \"framework\": \"frostgrad {}\",\n  \"device\": {},\n  \"cpu_model\": {},\n  \"simd_path\": {},\n  \"cpu_pool\": {},\n  \"conv_winograd\": {},\n  \"flop_count\": \"direct-equivalent\",\n  \"threads\": {},\n  \"peak_gflops\": [{}],\n  \"batch\": {},\n  \"size\": {},\n  \"steps\": {},\n  \"warmup\": {},\n  \"modes\": [\n{}\n  ]\n}}\n",
        env!("CARGO_PKG_VERSION"),
        json_str(&r.device),
        json_str(&r.cpu_model),
        json_str(&r.simd_path),
        r.cpu_pool,
        json_str(&r.conv_winograd),
        r.threads,
        peaks.join(", "),
        r.batch,
        r.size,
        r.steps,
        r.warmup,
        modes.join(",\n")
    )
}

/// A horizontal stacked bar per mode (forward, backward, optimizer median
/// milliseconds), drawn with `plotters`.
pub fn render_svg(r: &BenchReport) -> crate::Result<String> {
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    let err = |e: &dyn std::fmt::Display| crate::Error::invalid("bench --svg", e.to_string());
    let total = |m: &ModeResult| m.forward_ms + m.backward_ms + m.optimizer_ms;
    let longest = r.modes.iter().map(total).fold(0.0f64, f64::max).max(1e-9);
    let rows = r.modes.len().max(1);
    let height = 110 + 40 * rows as u32;
    let phases = [
        ("forward", RGBColor(0x4c, 0x78, 0xa8)),
        ("backward", RGBColor(0xf5, 0x85, 0x18)),
        ("optimizer", RGBColor(0x54, 0xa2, 0x4b)),
    ];
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (820, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let names: Vec<String> = r.modes.iter().map(|m| m.name.clone()).collect();
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "frostgrad ResNet-18 step, batch {} at {}x{} on {}: median ms per phase",
                    r.batch, r.size, r.size, r.device
                ),
                ("sans-serif", 15),
            )
            .margin(12)
            .x_label_area_size(34)
            .y_label_area_size(90)
            // Room on the right for each bar's total.
            .build_cartesian_2d(0.0..longest * 1.18, 0.0..rows as f64)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(rows * 2 + 1)
            .y_label_formatter(&|y| {
                let i = (rows as f64 - y - 0.5).round();
                let on_centre = (rows as f64 - y - 0.5 - i).abs() < 1e-6;
                match names.get(i as usize) {
                    Some(n) if on_centre && i >= 0.0 => n.clone(),
                    _ => String::new(),
                }
            })
            .x_desc("milliseconds")
            .draw()
            .map_err(|e| err(&e))?;
        for (k, (phase, color)) in phases.iter().enumerate() {
            let bars = r.modes.iter().enumerate().map(|(row, m)| {
                let ms = [m.forward_ms, m.backward_ms, m.optimizer_ms];
                let start: f64 = ms[..k].iter().sum();
                // The first mode on top, as in the table.
                let y = (rows - 1 - row) as f64;
                Rectangle::new([(start, y + 0.2), (start + ms[k], y + 0.8)], color.filled())
            });
            chart
                .draw_series(bars)
                .map_err(|e| err(&e))?
                .label(*phase)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        chart
            .draw_series(r.modes.iter().enumerate().map(|(row, m)| {
                let y = (rows - 1 - row) as f64 + 0.5;
                Text::new(
                    format!("{:.0} ms", total(m)),
                    (total(m) + longest * 0.01, y),
                    TextStyle::from(("sans-serif", 13).into_font())
                        .pos(Pos::new(HPos::Left, VPos::Center)),
                )
            }))
            .map_err(|e| err(&e))?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(conv_winograd: &str) -> BenchReport {
        BenchReport {
            device: "cpu".into(),
            batch: 2,
            size: 32,
            steps: 1,
            warmup: 0,
            threads: 1,
            cpu_model: "test".into(),
            simd_path: "avx2".into(),
            cpu_pool: true,
            conv_winograd: conv_winograd.into(),
            peak_gflops: vec![],
            modes: vec![],
        }
    }

    #[test]
    fn json_and_table_say_how_flops_count_and_the_winograd_mode() {
        for mode in ["auto", "on", "off"] {
            let r = report(mode);
            let json = to_json(&r);
            assert!(
                json.contains("\"flop_count\": \"direct-equivalent\""),
                "{json}"
            );
            assert!(
                json.contains(&format!("\"conv_winograd\": \"{mode}\"")),
                "{json}"
            );
            let table = render_table(&r);
            assert!(
                table.contains(&format!("Winograd convolution {mode} ")),
                "{table}"
            );
            assert!(
                table.contains("FLOP counts are direct-equivalent"),
                "{table}"
            );
            // The note on exceeding the peak only where Winograd can run.
            assert_eq!(
                table.contains("can exceed the FMA peak"),
                mode != "off",
                "{table}"
            );
        }
    }
}
