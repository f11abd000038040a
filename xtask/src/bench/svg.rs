//! Plots as SVG, written by hand.
//!
//! Three small chart kinds (grouped bars, latency-by-percentile lines, failover timelines) are
//! about 200 lines of string formatting; a plotting crate (plotters and its SVG backend) would
//! add a few dozen crates to xtask, which every `cargo xtask` command compiles first, on a fresh
//! machine before anything else is installed. The files open in any browser.

use std::fmt::Write as _;

const W: f64 = 760.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 90.0;
pub const COLORS: [&str; 5] = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#9c755f"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn open(title: &str, height: f64) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{height}\" \
         viewBox=\"0 0 {W} {height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{x}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{t}</text>\n",
        x = W / 2.0,
        t = esc(title)
    )
}

/// A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten, at least `max`.
fn nice_max(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|v| *v >= max)
        .unwrap_or(10.0 * p)
}

fn legend(out: &mut String, names: &[String], y: f64) {
    let mut x = LEFT;
    for (i, name) in names.iter().enumerate() {
        let _ = writeln!(
            out,
            "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            y - 10.0,
            COLORS[i % COLORS.len()],
            x + 16.0,
            y,
            esc(name)
        );
        x += 28.0 + 7.0 * name.len() as f64;
    }
}

fn y_axis(out: &mut String, max: f64, label: &str, plot_h: f64) {
    for i in 0..=5 {
        let v = max * f64::from(i) / 5.0;
        let y = TOP + plot_h - plot_h * f64::from(i) / 5.0;
        let _ = writeln!(
            out,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            fmt_num(v)
        );
    }
    let _ = writeln!(
        out,
        "<text transform=\"translate(16,{}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        TOP + plot_h / 2.0,
        esc(label)
    );
}

fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".to_owned()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Grouped bars: one group per category, one bar per series; `None` leaves a gap. A dashed
/// line marks `reference` (e.g. 1.0 for ratios).
pub fn bars(
    title: &str,
    y_label: &str,
    categories: &[String],
    series: &[(String, Vec<Option<f64>>)],
    reference: Option<f64>,
) -> String {
    let plot_h = H - TOP - BOTTOM;
    let plot_w = W - LEFT - RIGHT;
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().flatten().copied())
        .chain(reference)
        .fold(0.0, f64::max);
    let max = nice_max(max * 1.05);
    let mut out = open(title, H);
    y_axis(&mut out, max, y_label, plot_h);
    let group_w = plot_w / categories.len().max(1) as f64;
    let bar_w = group_w * 0.8 / series.len().max(1) as f64;
    for (c, category) in categories.iter().enumerate() {
        let gx = LEFT + group_w * c as f64;
        for (s, (_, values)) in series.iter().enumerate() {
            let Some(v) = values.get(c).copied().flatten() else {
                continue;
            };
            let h = plot_h * v / max;
            let x = gx + group_w * 0.1 + bar_w * s as f64;
            let _ = writeln!(
                out,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\">\
                 <title>{}: {}</title></rect>",
                TOP + plot_h - h,
                bar_w * 0.95,
                COLORS[s % COLORS.len()],
                esc(category),
                fmt_num(v)
            );
        }
        // Slanted, so that long category names never run into each other.
        let (lx, ly) = (gx + group_w / 2.0, TOP + plot_h + 14.0);
        let _ = writeln!(
            out,
            "<text x=\"{lx:.1}\" y=\"{ly}\" text-anchor=\"end\" \
             transform=\"rotate(-30 {lx:.1} {ly})\">{}</text>",
            esc(category)
        );
    }
    if let Some(r) = reference {
        let y = TOP + plot_h - plot_h * r / max;
        let _ = writeln!(
            out,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"black\" \
             stroke-dasharray=\"5,4\"/>",
            W - RIGHT
        );
    }
    let names: Vec<String> = series.iter().map(|(n, _)| n.clone()).collect();
    legend(&mut out, &names, H - 8.0);
    out.push_str("</svg>\n");
    out
}

/// Latency by percentile, the HdrHistogram way: x is the percentile on a "nines" scale
/// (−log10(1 − p), so 90, 99, 99.9 are evenly spaced), y the latency.
pub fn percentiles(title: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    let plot_h = H - TOP - BOTTOM;
    let plot_w = W - LEFT - RIGHT;
    let max_nines = 4.0;
    let nines = |pct: f64| {
        let q = (1.0 - pct / 100.0).max(1e-4);
        (-q.log10()).min(max_nines)
    };
    let max = series
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let max = nice_max(max * 1.05);
    let mut out = open(title, H);
    y_axis(&mut out, max, "latency (ms)", plot_h);
    for (n, label) in ["0%", "90%", "99%", "99.9%", "99.99%"].iter().enumerate() {
        let x = LEFT + plot_w * n as f64 / max_nines;
        let _ = writeln!(
            out,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{TOP}\" y2=\"{}\" stroke=\"#eee\"/>\
             <text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{label}</text>",
            TOP + plot_h,
            TOP + plot_h + 16.0
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">percentile</text>",
        LEFT + plot_w / 2.0,
        TOP + plot_h + 34.0
    );
    for (s, (_, pts)) in series.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .filter(|(pct, _)| *pct < 100.0)
            .map(|(pct, ms)| {
                format!(
                    "{:.1},{:.1}",
                    LEFT + plot_w * nines(*pct) / max_nines,
                    TOP + plot_h - plot_h * ms / max
                )
            })
            .collect();
        if path.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
            COLORS[s % COLORS.len()],
            path.join(" ")
        );
    }
    let names: Vec<String> = series.iter().map(|(n, _)| n.clone()).collect();
    legend(&mut out, &names, H - 30.0);
    out.push_str("</svg>\n");
    out
}

/// One row of a failover timeline, times in ms relative to the fault.
pub struct TimelineRow {
    pub label: String,
    /// Last write acknowledged before the fault → first after it.
    pub write_gap: (f64, f64),
    /// First → last failed read, if any failed.
    pub read_errors: Option<(f64, f64)>,
    pub switch_seen: f64,
}

/// Horizontal bars: the write gap (blue) and the read-error window (orange) of each trial,
/// with a tick where the balancer was seen switching; the fault is at 0.
pub fn timeline(title: &str, rows: &[TimelineRow]) -> String {
    let row_h = 22.0;
    let height = TOP + BOTTOM + row_h * rows.len() as f64;
    let left = 250.0;
    let plot_w = W - left - RIGHT;
    let min = rows
        .iter()
        .map(|r| r.write_gap.0.min(r.read_errors.map_or(0.0, |e| e.0)))
        .fold(0.0, f64::min);
    let max = rows
        .iter()
        .map(|r| {
            r.write_gap
                .1
                .max(r.switch_seen)
                .max(r.read_errors.map_or(0.0, |e| e.1))
        })
        .fold(0.0, f64::max);
    // Ticks at multiples of a round step, with 0 (the fault) on one of them.
    let max = nice_max(max * 1.05);
    let step = max / 5.0;
    // A small margin left of the earliest event (the last write before the fault is a few ms
    // earlier); ticks stay on multiples of the step, so 0 is one of them.
    let min = min - step / 10.0;
    let span = max - min;
    let x_of = |t: f64| left + plot_w * (t - min) / span;
    let mut out = open(title, height);
    let plot_bottom = TOP + row_h * rows.len() as f64;
    let first_tick = (min / step).ceil() as i32;
    for i in first_tick..=5 {
        let t = step * f64::from(i);
        let x = x_of(t);
        let _ = writeln!(
            out,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{TOP}\" y2=\"{plot_bottom}\" stroke=\"#ddd\"/>\
             <text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            plot_bottom + 16.0,
            fmt_num(t)
        );
    }
    let _ = writeln!(
        out,
        "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{TOP}\" y2=\"{plot_bottom}\" stroke=\"black\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">ms after the fault</text>",
        left + plot_w / 2.0,
        plot_bottom + 34.0,
        x = x_of(0.0)
    );
    for (i, r) in rows.iter().enumerate() {
        let y = TOP + row_h * i as f64;
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            left - 6.0,
            y + 15.0,
            esc(&r.label)
        );
        let (a, b) = r.write_gap;
        let _ = writeln!(
            out,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"8\" fill=\"{}\">\
             <title>write gap {:.0} ms</title></rect>",
            x_of(a),
            y + 3.0,
            (x_of(b) - x_of(a)).max(1.0),
            COLORS[0],
            b - a
        );
        if let Some((a, b)) = r.read_errors {
            let _ = writeln!(
                out,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"8\" fill=\"{}\">\
                 <title>read errors {:.0} ms</title></rect>",
                x_of(a),
                y + 12.0,
                (x_of(b) - x_of(a)).max(1.0),
                COLORS[1],
                b - a
            );
        }
        let x = x_of(r.switch_seen);
        let _ = writeln!(
            out,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\" \
             stroke-width=\"2\"><title>switch seen</title></line>",
            y + 1.0,
            y + 21.0
        );
    }
    legend(
        &mut out,
        &[
            "write gap".to_owned(),
            "read errors (first to last)".to_owned(),
        ],
        height - 30.0,
    );
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"{}\">| = balancer seen switching</text>",
        W - 200.0,
        height - 20.0
    );
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_bounds() {
        assert_eq!(nice_max(0.93), 1.0);
        assert_eq!(nice_max(1.2), 2.0);
        assert_eq!(nice_max(3000.0), 5000.0);
        assert_eq!(nice_max(0.0), 1.0);
    }

    #[test]
    fn charts_are_closed_svg() {
        let b = bars(
            "t <x>",
            "y",
            &["a".into(), "b".into()],
            &[("s".into(), vec![Some(1.0), None])],
            Some(1.0),
        );
        assert!(b.starts_with("<svg") && b.ends_with("</svg>\n") && b.contains("t &lt;x&gt;"));
        let p = percentiles("p", &[("s".into(), vec![(0.0, 0.1), (99.9, 1.0)])]);
        assert!(p.contains("<polyline"));
        let t = timeline(
            "f",
            &[TimelineRow {
                label: "x".into(),
                write_gap: (-3.0, 1200.0),
                read_errors: Some((10.0, 900.0)),
                switch_seen: 1100.0,
            }],
        );
        assert!(t.contains("write gap 1203 ms"));
    }
}
