//! Line charts as SVG (loss and accuracy curves of training runs). SVG needs no font rasteriser, so
//! the axes carry real numbers without shipping a font.

use std::fmt::Write;

const COLOURS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];

/// One named series of (x, y) points.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: &'a [(f64, f64)],
}

fn nice(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1e7 || v.abs() < 0.01 {
        format!("{v:.2e}")
    } else if v.abs() >= 100.0 {
        // Step counts and other large values read best as whole numbers.
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// Moving average over `window` points (loss curves of single batches are noisy).
pub fn smooth(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let w = window.max(1);
    let mut out = Vec::with_capacity(points.len());
    let mut sum = 0.0;
    for (i, &(x, y)) in points.iter().enumerate() {
        sum += y;
        if i >= w {
            sum -= points[i - w].1;
        }
        out.push((x, sum / (i + 1).min(w) as f64));
    }
    out
}

/// An 800x450 chart with axes, five ticks per axis and a legend. Non-finite points are skipped.
pub fn line_chart(title: &str, xlabel: &str, series: &[Series]) -> String {
    let (w, h, l, r, t, b) = (800.0, 450.0, 80.0, 20.0, 40.0, 50.0);
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let all: Vec<&(f64, f64)> = series.iter().flat_map(|s| s.points.iter().filter(finite)).collect();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for p in &all {
        x0 = x0.min(p.0);
        x1 = x1.max(p.0);
        y0 = y0.min(p.1);
        y1 = y1.max(p.1);
    }
    if all.is_empty() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let px = |x: f64| l + (x - x0) / (x1 - x0) * (w - l - r);
    let py = |y: f64| h - b - (y - y0) / (y1 - y0) * (h - t - b);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{}" y="24" font-size="16" text-anchor="middle">{}</text>"#,
        w / 2.0,
        escape(title)
    );
    let _ = write!(s, r##"<rect x="{l}" y="{t}" width="{}" height="{}" fill="none" stroke="#444"/>"##, w - l - r, h - t - b);
    for k in 0..=4 {
        let fx = x0 + (x1 - x0) * k as f64 / 4.0;
        let fy = y0 + (y1 - y0) * k as f64 / 4.0;
        let _ = write!(
            s,
            r##"<line x1="{0}" y1="{t}" x2="{0}" y2="{1}" stroke="#ddd"/><text x="{0}" y="{2}" text-anchor="middle">{3}</text>"##,
            px(fx),
            h - b,
            h - b + 16.0,
            nice(fx)
        );
        let _ = write!(
            s,
            r##"<line x1="{l}" y1="{0}" x2="{1}" y2="{0}" stroke="#ddd"/><text x="{2}" y="{3}" text-anchor="end">{4}</text>"##,
            py(fy),
            w - r,
            l - 6.0,
            py(fy) + 4.0,
            nice(fy)
        );
    }
    let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#, (l + w - r) / 2.0, h - 12.0, escape(xlabel));
    for (i, se) in series.iter().enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        let pts: Vec<String> = se.points.iter().filter(finite).map(|p| format!("{:.1},{:.1}", px(p.0), py(p.1))).collect();
        let _ = write!(s, r#"<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{}"/>"#, pts.join(" "));
        let ly = t + 16.0 + 16.0 * i as f64;
        let _ = write!(
            s,
            r#"<line x1="{0}" y1="{ly}" x2="{1}" y2="{ly}" stroke="{c}" stroke-width="3"/><text x="{2}" y="{3}">{4}</text>"#,
            w - r - 150.0,
            w - r - 130.0,
            w - r - 124.0,
            ly + 4.0,
            escape(se.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_scales_points_into_the_plot_area_and_labels_the_range() {
        let a = [(0.0, 2.0), (10.0, 1.0), (20.0, f64::NAN)];
        let svg = line_chart("loss <D>", "step", &[Series { name: "d", points: &a }]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("loss &lt;D&gt;"));
        // First point at the left edge and the top (largest y), second at the right edge and bottom.
        assert!(svg.contains("points=\"80.0,40.0 780.0,400.0\""), "{svg}");
        assert!(svg.contains(">2.000<") && svg.contains(">1.000<"));
        // x ticks at 0, 2.5, ..., 10 (the NaN point is dropped); large values as whole numbers.
        assert!(svg.contains(">2.500<") && svg.contains(">10.000<"));
        assert_eq!((nice(1125.0), nice(3e8), nice(0.001)), ("1125".to_string(), "3.00e8".to_string(), "1.00e-3".to_string()));
    }

    #[test]
    fn smoothing_is_a_trailing_mean() {
        let p = [(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)];
        assert_eq!(smooth(&p, 2), vec![(0.0, 1.0), (1.0, 2.0), (2.0, 4.0)]);
    }
}
