//! Training curves as SVG (with `plotters`): loss and accuracy against
//! wall-clock time, one colour per run, training solid and validation
//! dashed, a dot at the end of every epoch. Time, not epochs, is the x
//! axis because that is what freezing and the feature cache change.

use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::train::EpochLog;

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn plot_err(e: impl std::fmt::Display) -> Error {
    Error::invalid("plot", e.to_string())
}

/// `(end of epoch in seconds since the start, value)` for each epoch.
fn points(log: &[EpochLog], value: impl Fn(&EpochLog) -> Option<f64>) -> Vec<(f64, f64)> {
    let mut t = 0.0;
    log.iter()
        .filter_map(|e| {
            t += e.seconds;
            value(e).filter(|v| v.is_finite()).map(|v| (t, v))
        })
        .collect()
}

type Metric = (
    &'static str,
    fn(&EpochLog) -> Option<f64>,
    fn(&EpochLog) -> Option<f64>,
);

/// Renders `runs` (name, epochs) as one SVG document with two panels.
pub fn render_svg(runs: &[(String, Vec<EpochLog>)]) -> Result<String> {
    if runs.iter().all(|(_, log)| log.is_empty()) {
        return Err(Error::invalid("plot", "no epoch to draw"));
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1100, 440)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let panels = root.split_evenly((1, 2));
        let metrics: [Metric; 2] = [
            ("loss", |e| Some(e.train_loss), |e| e.val_loss),
            (
                "accuracy (%)",
                |e| Some(100.0 * e.train_acc),
                |e| e.val_acc.map(|a| 100.0 * a),
            ),
        ];
        let t_max = runs
            .iter()
            .map(|(_, log)| log.iter().map(|e| e.seconds).sum::<f64>())
            .fold(0.0, f64::max)
            .max(1e-3);
        for (panel, (label, train, val)) in panels.iter().zip(metrics) {
            let all: Vec<f64> = runs
                .iter()
                .flat_map(|(_, log)| points(log, train).into_iter().chain(points(log, val)))
                .map(|(_, v)| v)
                .collect();
            let (lo, hi) = if label.starts_with("acc") {
                (0.0, 100.0)
            } else {
                let hi = all.iter().cloned().fold(0.0, f64::max);
                (0.0, if hi > 0.0 { hi * 1.05 } else { 1.0 })
            };
            let mut chart = ChartBuilder::on(panel)
                .caption(format!("{label} vs wall-clock time"), ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(48)
                .build_cartesian_2d(0.0..t_max * 1.02, lo..hi)
                .map_err(plot_err)?;
            chart
                .configure_mesh()
                .x_desc("seconds")
                .y_desc(label)
                .draw()
                .map_err(plot_err)?;
            for (k, (name, log)) in runs.iter().enumerate() {
                let color = COLORS[k % COLORS.len()];
                let train_pts = points(log, train);
                chart
                    .draw_series(LineSeries::new(train_pts.clone(), color.stroke_width(2)))
                    .map_err(plot_err)?
                    .label(format!("{name} train"))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
                chart
                    .draw_series(train_pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(plot_err)?;
                let val_pts = points(log, val);
                if !val_pts.is_empty() {
                    chart
                        .draw_series(DashedLineSeries::new(
                            val_pts.clone(),
                            6,
                            4,
                            color.stroke_width(2),
                        ))
                        .map_err(plot_err)?
                        .label(format!("{name} val"))
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 6, y)], color.stroke_width(2))
                        });
                    chart
                        .draw_series(
                            val_pts
                                .iter()
                                .map(|&p| Circle::new(p, 3, color.mix(0.5).filled())),
                        )
                        .map_err(plot_err)?;
                }
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK.mix(0.3))
                // Loss falls and accuracy rises: keep the legend off the curves' ends.
                .position(if label.starts_with("acc") {
                    SeriesLabelPosition::LowerRight
                } else {
                    SeriesLabelPosition::UpperRight
                })
                .draw()
                .map_err(plot_err)?;
        }
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(seconds: f64, val: bool) -> Vec<EpochLog> {
        (1..=3)
            .map(|epoch| EpochLog {
                epoch,
                train_loss: 1.0 / epoch as f64,
                train_acc: 0.3 * epoch as f64,
                val_loss: val.then_some(1.2 / epoch as f64),
                val_acc: val.then_some(0.25 * epoch as f64),
                seconds,
                images_per_s: 10.0,
                cached: epoch > 1,
                lr: 0.1,
                skipped: 0,
            })
            .collect()
    }

    #[test]
    fn draws_every_run_and_legend() {
        let svg = render_svg(&[
            ("finetune".into(), log(10.0, true)),
            ("transfer".into(), log(2.0, false)),
        ])
        .unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        for text in [
            "finetune train",
            "finetune val",
            "transfer train",
            "seconds",
            "accuracy",
        ] {
            assert!(svg.contains(text), "missing `{text}`");
        }
        assert!(!svg.contains("transfer val"), "no validation, no curve");
    }

    #[test]
    fn nothing_to_draw_is_an_error() {
        assert!(render_svg(&[("x".into(), vec![])]).is_err());
    }
}
