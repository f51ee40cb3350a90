//! Presenting a [`BenchReport`]: a table for the terminal, JSON for
//! scripts (the schema `scripts/bench_pytorch.py` writes too), and an SVG
//! of each mode's forward / backward / optimizer split.

use std::collections::BTreeSet;
use std::fmt::Write;

use super::{BenchReport, ModeResult};

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The terminal table: one row per mode, then the backward statistics
/// (computed/skipped per `op.input`) with one column per mode.
pub fn render_table(r: &BenchReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ResNet-18, batch {} at {}x{}, device {}, {} timed steps after {} warm-up ({} threads)\n",
        r.batch, r.size, r.size, r.device, r.steps, r.warmup, r.threads
    );
    let _ = writeln!(
        out,
        "{:<10} {:>22} {:>9} {:>9} {:>8} {:>8} {:>14} {:>10} {:>8} {:>9} {:>7} {:>7}",
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
        "faults"
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
            "{:<10} {:>22} {:>9.1} {:>9.1} {:>8.1} {:>8} {:>14} {:>10.2} {:>8.1} {:>9.1} {:>7} {:>7}",
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
            m.minor_faults.map_or("-".to_string(), |f| f.to_string())
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

fn mode_json(m: &ModeResult) -> String {
    format!(
        concat!(
            "{{\"name\": {}, \"trainable\": {}, \"trainable_parameters\": {}, ",
            "\"step_ms\": {{\"median\": {}, \"min\": {}, \"max\": {}}}, ",
            "\"forward_ms\": {}, \"backward_ms\": {}, \"optimizer_ms\": {}, ",
            "\"peak_bytes\": {}, \"minor_faults\": {}, \"pool_held_bytes\": {}, ",
            "\"nodes\": {}, \"computed\": {}, \"skipped\": {}, ",
            "\"gflop\": {}, \"forward_gflop\": {}, \"backward_gflop\": {}, \"skipped_gflop\": {}, ",
            "\"gflops_per_second\": {}, \"speedup_vs_finetune\": {}}}"
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
        m.speedup_vs_finetune.map_or("null".into(), json_f64),
    )
}

/// `{"device", "batch", "size", "modes": [{"name", "trainable", "step_ms":
/// {"median", "min", "max"}, "forward_ms", "backward_ms", "optimizer_ms",
/// "peak_bytes", "computed", "skipped", "gflop", ...}]}`.
pub fn to_json(r: &BenchReport) -> String {
    let modes: Vec<String> = r
        .modes
        .iter()
        .map(|m| format!("    {}", mode_json(m)))
        .collect();
    format!(
        "{{\n  \"framework\": \"frostgrad {}\",\n  \"device\": {},\n  \"threads\": {},\n  \"batch\": {},\n  \"size\": {},\n  \"steps\": {},\n  \"warmup\": {},\n  \"modes\": [\n{}\n  ]\n}}\n",
        env!("CARGO_PKG_VERSION"),
        json_str(&r.device),
        r.threads,
        r.batch,
        r.size,
        r.steps,
        r.warmup,
        modes.join(",\n")
    )
}

/// A horizontal stacked bar per mode: forward, backward, optimizer (median ms).
pub fn render_svg(r: &BenchReport) -> String {
    let (left, bar_h, gap, width) = (110.0, 26.0, 12.0, 560.0);
    let longest = r
        .modes
        .iter()
        .map(|m| m.forward_ms + m.backward_ms + m.optimizer_ms)
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let scale = width / longest;
    let height = 70.0 + r.modes.len() as f64 * (bar_h + gap) + 30.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="sans-serif" font-size="13">"#,
        left + width + 120.0
    );
    let _ = writeln!(
        s,
        r#"<text x="10" y="22" font-size="15">frostgrad ResNet-18 step, batch {} at {}x{} on {}: median ms per phase</text>"#,
        r.batch, r.size, r.size, r.device
    );
    let phases = [
        ("forward", "#4c78a8"),
        ("backward", "#f58518"),
        ("optimizer", "#54a24b"),
    ];
    for (i, (name, color)) in phases.iter().enumerate() {
        let x = left + i as f64 * 120.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="34" width="12" height="12" fill="{color}"/><text x="{}" y="45">{name}</text>"#,
            x + 16.0
        );
    }
    for (row, m) in r.modes.iter().enumerate() {
        let y = 60.0 + row as f64 * (bar_h + gap);
        let _ = writeln!(
            s,
            r#"<text x="10" y="{}">{}</text>"#,
            y + bar_h * 0.65,
            m.name
        );
        let mut x = left;
        for ((_, color), ms) in phases
            .iter()
            .zip([m.forward_ms, m.backward_ms, m.optimizer_ms])
        {
            let w = ms * scale;
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{bar_h}" fill="{color}"/>"#
            );
            x += w;
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{:.0} ms</text>"#,
            x + 6.0,
            y + bar_h * 0.65,
            m.forward_ms + m.backward_ms + m.optimizer_ms
        );
    }
    s.push_str("</svg>\n");
    s
}
