//! Minimal SVG charts for the benchmark report: a line chart on a log-scaled x axis and a
//! timeline of bars. Hand-written (a few dozen lines) rather than a plotting crate, whose
//! text layout needs font files at run time.

use std::fmt::Write;

const W: f64 = 720.0;
const H: f64 = 400.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLORS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// The legend sits below the chart, one entry per line, so no label is ever cut off.
fn header(title: &str, legend_entries: usize) -> String {
    let height = H + legend_entries as f64 * 18.0 + 10.0;
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" \
         fill=\"white\"/>\n<text x=\"{}\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">{}</text>\n",
        W / 2.0,
        escape(title)
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Series of (x, y) points; x on a log10 axis, y linear from 0.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> String {
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| x.log10()))
        .collect();
    let (x0, x1) = (
        xs.iter().cloned().fold(f64::INFINITY, f64::min).floor(),
        xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max).ceil(),
    );
    let y1 = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(0.0, f64::max)
        * 1.1;
    let y1 = if y1 > 0.0 { y1 } else { 1.0 };
    let px = |x: f64| LEFT + (x.log10() - x0) / (x1 - x0).max(1e-9) * (W - LEFT - RIGHT);
    let py = |y: f64| H - BOTTOM - y / y1 * (H - TOP - BOTTOM);
    let mut s = header(title, series.len());
    axes(&mut s, x_label, y_label);
    for d in (x0 as i32)..=(x1 as i32) {
        let x = 10f64.powi(d);
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{x}</text>",
            px(x),
            H - BOTTOM + 16.0
        );
    }
    for i in 0..=4 {
        let y = y1 * i as f64 / 4.0;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{y:.0}</text>\
             <line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#eee\"/>",
            LEFT - 6.0,
            py(y) + 4.0,
            W - RIGHT,
            py(y),
            py(y)
        );
    }
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        );
        for (x, y) in points {
            let _ = writeln!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>",
                px(*x),
                py(*y)
            );
        }
        legend(&mut s, i, color, name);
    }
    s.push_str("</svg>\n");
    s
}

/// One phase of a bar: start, end, phase name.
pub type Phase = (f64, f64, String);

/// One horizontal bar per row, split into phases: (label, [(start, end, phase)]); phases
/// get colors and a legend entry.
pub fn timeline(title: &str, x_label: &str, rows: &[(String, Vec<Phase>)]) -> String {
    let x1 = rows
        .iter()
        .flat_map(|r| r.1.iter().map(|p| p.1))
        .fold(0.0, f64::max)
        * 1.05;
    let x1 = if x1 > 0.0 { x1 } else { 1.0 };
    let px = |x: f64| LEFT + x / x1 * (W - LEFT - RIGHT);
    let row_h = (H - TOP - BOTTOM) / rows.len().max(1) as f64;
    let mut categories: Vec<&str> = Vec::new();
    for (_, phases) in rows {
        for (_, _, c) in phases {
            if !categories.contains(&c.as_str()) {
                categories.push(c);
            }
        }
    }
    let mut s = header(title, categories.len());
    axes(&mut s, x_label, "");
    for (i, c) in categories.iter().enumerate() {
        legend(&mut s, i, COLORS[i % COLORS.len()], c);
    }
    for i in 0..=4 {
        let x = x1 * i as f64 / 4.0;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{x:.1}</text>",
            px(x),
            H - BOTTOM + 16.0
        );
    }
    for (i, (label, phases)) in rows.iter().enumerate() {
        let y = TOP + i as f64 * row_h;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT - 6.0,
            y + row_h * 0.6,
            escape(label)
        );
        for (start, end, category) in phases {
            let c = categories.iter().position(|c| c == category).unwrap_or(0);
            let _ = writeln!(
                s,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/>",
                px(*start),
                y + row_h * 0.15,
                (px(*end) - px(*start)).max(1.0),
                row_h * 0.7,
                COLORS[c % COLORS.len()],
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

fn axes(s: &mut String, x_label: &str, y_label: &str) {
    let _ = writeln!(
        s,
        "<line x1=\"{LEFT}\" x2=\"{0}\" y1=\"{1}\" y2=\"{1}\" stroke=\"black\"/>\
         <line x1=\"{LEFT}\" x2=\"{LEFT}\" y1=\"{TOP}\" y2=\"{1}\" stroke=\"black\"/>\
         <text x=\"{2}\" y=\"{3}\" text-anchor=\"middle\">{4}</text>\
         <text x=\"16\" y=\"{5}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {5})\">{6}</text>",
        W - RIGHT,
        H - BOTTOM,
        (LEFT + W - RIGHT) / 2.0,
        H - 12.0,
        escape(x_label),
        (TOP + H - BOTTOM) / 2.0,
        escape(y_label)
    );
}

fn legend(s: &mut String, i: usize, color: &str, name: &str) {
    let y = H + 8.0 + i as f64 * 18.0;
    let _ = writeln!(
        s,
        "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{color}\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
        LEFT,
        y - 10.0,
        LEFT + 18.0,
        y,
        escape(name)
    );
}
