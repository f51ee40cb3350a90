//! `--format svg`: laid out by `layout-rs` (a Sugiyama-style layered
//! layout in pure Rust, no Graphviz needed), one panel per graph, side by
//! side, under a legend of the node colours.

use layout::backends::svg::SVGWriter;
use layout::core::base::Orientation;
use layout::core::color::Color;
use layout::core::geometry::Point;
use layout::core::style::StyleAttr;
use layout::std_shapes::shapes::{Arrow, Element, ShapeKind};
use layout::topo::layout::VisualGraph;

use super::{node_label, summary_line, NodeStyle, Panel};
use crate::error::{Error, Result};

const FONT: usize = 12;
const GAP: f64 = 40.0;
const LEGEND_H: f64 = 70.0;
const TITLE_H: f64 = 48.0;
const MARGIN: f64 = 12.0;
const SANS: &str = "Helvetica, Arial, sans-serif";

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A box that fits its text: layout-rs assumes every character is a full
/// em wide, about twice the average width in the sans-serif font used here.
fn box_size(lines: &[String]) -> Point {
    let chars = lines.iter().map(|l| l.chars().count()).max().unwrap_or(1);
    Point::new(
        chars as f64 * FONT as f64 * 0.58 + 16.0,
        lines.len().max(1) as f64 * FONT as f64 * 1.2 + 14.0,
    )
}

/// Lays out one graph; returns the drawing (the inside of an `<svg>`
/// element) and its width and height.
fn layout_panel(panel: &Panel<'_>) -> Result<(String, f64, f64)> {
    let mut vg = VisualGraph::new(Orientation::TopToBottom);
    let mut handles = Vec::with_capacity(panel.graph.nodes.len());
    for node in &panel.graph.nodes {
        let style = NodeStyle::of(panel.graph, node);
        let lines = node_label(node);
        let shape = ShapeKind::new_box(&lines.join("\n"));
        // Boxes grow sideways in a top-down graph; layout-rs sizes them in
        // the flipped orientation, as its own DOT front end does.
        let dir = Orientation::TopToBottom.flip();
        let rounded = if style == NodeStyle::Leaf { 10 } else { 0 };
        let look = StyleAttr::new(
            Color::fast("#333333"),
            1,
            Some(Color::fast(style.fill())),
            rounded,
            FONT,
        );
        handles.push(vg.add_node(Element::create(shape, look, dir, box_size(&lines))));
    }
    for node in &panel.graph.nodes {
        for input in &node.inputs {
            if let Some(to) = input.to {
                vg.add_edge(Arrow::simple(""), handles[node.id], handles[to]);
            }
        }
    }
    let mut writer = SVGWriter::new();
    let (mut w, mut h) = (0.0f64, 0.0f64);
    if !panel.graph.nodes.is_empty() {
        // layout-rs is not ours: should it panic on some graph, report
        // that as an error instead of aborting the command.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            vg.do_it(false, false, false, &mut writer)
        }))
        .map_err(|_| Error::invalid("graph", "the layout crate failed on this graph"))?;
        // layout-rs grows its canvas by each label's length in both
        // directions, leaving most of it empty: size the panel to the boxes.
        for n in vg.iter_nodes() {
            let (_, bottom_right) = vg.pos(n).bbox(true);
            w = w.max(bottom_right.x);
            h = h.max(bottom_right.y);
        }
    }
    let doc = writer
        .finalize()
        .replace("font-family: Times, serif", &format!("font-family: {SANS}"));
    // Keep what is inside layout-rs's <svg ...> element.
    let inside = doc
        .find("<svg ")
        .and_then(|start| {
            let open_end = start + doc[start..].find('>')? + 1;
            let close = doc.rfind("</svg>")?;
            (open_end <= close).then(|| doc[open_end..close].to_string())
        })
        .ok_or_else(|| Error::invalid("graph", "the layout crate wrote no <svg> element"))?;
    Ok((inside, w + MARGIN, h + MARGIN))
}

/// All panels side by side, each under its title and summary, with a legend.
pub fn to_svg(panels: &[Panel<'_>]) -> Result<String> {
    let mut body = String::new();
    let mut x = GAP / 2.0;
    let mut height: f64 = 0.0;
    for panel in panels {
        let (inside, w, h) = layout_panel(panel)?;
        let summary = summary_line(panel.graph);
        body.push_str(&format!(
            "<text x=\"{x}\" y=\"{}\" font-family=\"{SANS}\" font-size=\"16\" font-weight=\"bold\">{}</text>\n",
            LEGEND_H + 18.0,
            escape(panel.title)
        ));
        body.push_str(&format!(
            "<text x=\"{x}\" y=\"{}\" font-family=\"{SANS}\" font-size=\"12\">{}</text>\n",
            LEGEND_H + 36.0,
            escape(&summary)
        ));
        // The panel as a nested <svg> placed below its title.
        body.push_str(&format!(
            "<svg x=\"{x}\" y=\"{}\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\n{inside}\n</svg>\n",
            LEGEND_H + TITLE_H
        ));
        x += w.max(summary.len() as f64 * 6.5) + GAP;
        height = height.max(h);
    }
    let width = x.max(780.0);
    let height = LEGEND_H + TITLE_H + height + GAP / 2.0;

    let mut legend = format!(
        "<text x=\"{}\" y=\"22\" font-family=\"{SANS}\" font-size=\"13\">Backward graph: gradients flow down from the loss; each box is a grad_fn node with its output shape, saved tensors and skipped input gradients.</text>\n",
        GAP / 2.0
    );
    let styles = [
        NodeStyle::Trainable,
        NodeStyle::Frozen,
        NodeStyle::Plain,
        NodeStyle::Leaf,
    ];
    for (i, style) in styles.iter().enumerate() {
        let lx = GAP / 2.0 + i as f64 * 230.0;
        legend.push_str(&format!(
            "<rect x=\"{lx}\" y=\"36\" width=\"18\" height=\"14\" fill=\"{}\" stroke=\"#333333\"/>\n<text x=\"{}\" y=\"47\" font-family=\"{SANS}\" font-size=\"11\">{}</text>\n",
            style.fill(),
            lx + 24.0,
            escape(style.describe())
        ));
    }
    Ok(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"no\"?>\n<svg width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" xmlns=\"http://www.w3.org/2000/svg\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{legend}{body}</svg>\n"
    ))
}
