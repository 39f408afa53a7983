//! The report's chart: one horizontal bar per row, its ratio to its baseline on a log
//! scale (so 0.1× and 10× are the same distance from 1×), a line at 1×, and a tick at
//! the aim where shoal has one (docs/concepts.md). Written by hand: a few rectangles
//! and lines.

use std::fmt::Write as _;

use super::{AimOn, Report};

const WIDTH: f64 = 960.0;
const LABEL: f64 = 420.0;
const BAR_H: f64 = 16.0;
const GAP: f64 = 6.0;
const TOP: f64 = 56.0;
/// The axis spans 10^MIN_EXP .. 10^MAX_EXP.
const MIN_EXP: f64 = -2.0;
const MAX_EXP: f64 = 2.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Labels longer than this are cut (with "…") so they stay left of the bars; the full
/// names are in report.md.
const LABEL_CHARS: usize = 64;

fn label(name: &str) -> String {
    if name.chars().count() <= LABEL_CHARS {
        return esc(name);
    }
    let cut: String = name.chars().take(LABEL_CHARS - 1).collect();
    format!("{}…", esc(cut.trim_end()))
}

fn x_of(ratio: f64) -> f64 {
    let plot = WIDTH - LABEL - 80.0;
    let e = ratio.max(1e-9).log10().clamp(MIN_EXP, MAX_EXP);
    LABEL + (e - MIN_EXP) / (MAX_EXP - MIN_EXP) * plot
}

pub fn chart(r: &Report) -> String {
    let mut scenarios: Vec<&str> = Vec::new();
    for row in &r.rows {
        if !scenarios.contains(&row.scenario.as_str()) {
            scenarios.push(&row.scenario);
        }
    }
    let lines = r.rows.len() + scenarios.len();
    let height = TOP + lines as f64 * (BAR_H + GAP) + 40.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height:.0}\" viewBox=\"0 0 {WIDTH} {height:.0}\" font-family=\"sans-serif\" font-size=\"11\">"
    );
    let _ = writeln!(
        s,
        "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"20\" font-size=\"14\" font-weight=\"bold\">shoal benchmark: ratio to the same-run baseline (log scale)</text>\n<text x=\"10\" y=\"36\" fill=\"#555\">{} | bar = value / baseline, black tick = shoal's aim (green bar: met, red: not met, blue: no aim)</text>",
        esc(&r.machine.describe())
    );
    let axis_bottom = height - 30.0;
    for e in [-2i32, -1, 0, 1, 2] {
        let x = x_of(10f64.powi(e));
        let label = match e {
            -2 => "0.01×".to_owned(),
            -1 => "0.1×".to_owned(),
            0 => "1×".to_owned(),
            _ => format!("{}×", 10i64.pow(e as u32)),
        };
        let stroke = if e == 0 { "#333" } else { "#ddd" };
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{axis_bottom:.1}\" stroke=\"{stroke}\"/>\n<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">{label}</text>",
            axis_bottom + 14.0
        );
    }
    let mut y = TOP;
    for sc in scenarios {
        let _ = writeln!(
            s,
            "<text x=\"10\" y=\"{:.1}\" font-weight=\"bold\">{}</text>",
            y + BAR_H - 3.0,
            esc(sc)
        );
        y += BAR_H + GAP;
        for row in r.rows.iter().filter(|row| row.scenario == sc) {
            let fill = match row.met {
                Some(true) => "#4caf50",
                Some(false) => "#e57373",
                None => "#64b5f6",
            };
            let (x0, x1) = (x_of(10f64.powf(MIN_EXP)), x_of(row.ratio));
            let _ = writeln!(
                s,
                "<text x=\"20\" y=\"{:.1}\">{}</text>\n<rect x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{BAR_H}\" fill=\"{fill}\"/>\n<text x=\"{:.1}\" y=\"{:.1}\">{:.2}×</text>",
                y + BAR_H - 4.0,
                label(&row.name),
                (x1 - x0).max(1.0),
                x1 + 4.0,
                y + BAR_H - 4.0,
                row.ratio
            );
            // An absolute aim is drawn where it falls relative to this row's baseline.
            let aim_ratio = row.aim.as_ref().map(|a| match a.on {
                AimOn::Ratio => a.target,
                AimOn::Value => a.target / row.baseline.max(1e-12),
            });
            if let Some(a) = aim_ratio {
                let x = x_of(a);
                let _ = writeln!(
                    s,
                    "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"black\" stroke-width=\"2\"/>",
                    y - 2.0,
                    y + BAR_H + 2.0
                );
            }
            y += BAR_H + GAP;
        }
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_axis_places_one_in_the_middle() {
        let mid = LABEL + (WIDTH - LABEL - 80.0) / 2.0;
        assert!((x_of(1.0) - mid).abs() < 1e-9);
        assert!(x_of(0.001) == x_of(0.01), "clamped at the left end");
        assert!(x_of(10.0) > x_of(2.0));
    }

    #[test]
    fn escapes_labels() {
        assert_eq!(esc("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }

    #[test]
    fn long_labels_are_cut() {
        assert_eq!(label("short & sweet"), "short &amp; sweet");
        let long = "x".repeat(100);
        assert_eq!(label(&long).chars().count(), LABEL_CHARS);
        assert!(label(&long).ends_with('…'));
    }
}
