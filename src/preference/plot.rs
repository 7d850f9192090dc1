//! The SVG `tune-weights` draws: held-out accuracy (± one std over folds)
//! against the regularisation strength on a log axis, the baseline weights'
//! accuracy as a dashed line and the chosen lambda marked. Written by hand:
//! one small chart does not need a plotting crate.

use super::fit::CvPoint;

const W: f64 = 640.0;
const H: f64 = 400.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

pub fn accuracy_vs_lambda(grid: &[CvPoint], best_lambda: f64, baseline: f64, baseline_name: &str) -> String {
    let xs: Vec<f64> = grid.iter().map(|p| p.lambda.log10()).collect();
    let (x_lo, x_hi) = span(xs.iter().copied());
    let ys = grid.iter().flat_map(|p| [p.accuracy - p.std, p.accuracy + p.std]).chain([baseline]);
    let (y_lo, y_hi) = span(ys);
    let (y_lo, y_hi) = ((y_lo - 0.02).max(0.0), (y_hi + 0.02).min(1.0));
    let (y_lo, y_hi) = if y_hi > y_lo { (y_lo, y_hi) } else { (0.0, 1.0) };
    let px = |x: f64| {
        if x_hi > x_lo {
            LEFT + (x - x_lo) / (x_hi - x_lo) * (W - LEFT - RIGHT)
        } else {
            (LEFT + W - RIGHT) / 2.0
        }
    };
    let py = |y: f64| TOP + (y_hi - y) / (y_hi - y_lo) * (H - TOP - BOTTOM);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">Held-out pairwise accuracy vs L2 strength</text>\n",
        W / 2.0
    );
    // Axes, ticks and grid lines.
    s += &format!(
        "<line x1=\"{LEFT}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"black\"/>\n<line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{b}\" stroke=\"black\"/>\n",
        b = H - BOTTOM,
        r = W - RIGHT
    );
    for (p, x) in grid.iter().zip(&xs) {
        s += &format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{:e}</text>\n",
            px(*x),
            H - BOTTOM + 18.0,
            p.lambda
        );
    }
    for k in 0..=4 {
        let y = y_lo + (y_hi - y_lo) * k as f64 / 4.0;
        s += &format!(
            "<line x1=\"{LEFT}\" y1=\"{v:.1}\" x2=\"{r}\" y2=\"{v:.1}\" stroke=\"#ddd\"/>\n<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.1}%</text>\n",
            LEFT - 6.0,
            py(y) + 4.0,
            100.0 * y,
            v = py(y),
            r = W - RIGHT
        );
    }
    s += &format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">lambda (log scale)</text>\n\
         <text x=\"18\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {})\">cross-validated accuracy</text>\n",
        (LEFT + W - RIGHT) / 2.0,
        H - 18.0,
        H / 2.0,
        H / 2.0
    );
    // Baseline.
    s += &format!(
        "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{r}\" y2=\"{y:.1}\" stroke=\"gray\" stroke-dasharray=\"6 4\"/>\n<text x=\"{r}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"gray\">{} weights {:.1}%</text>\n",
        py(baseline) - 5.0,
        xml_escape(baseline_name),
        100.0 * baseline,
        y = py(baseline),
        r = W - RIGHT
    );
    // Error bars, the curve and the chosen lambda.
    let mut path = String::new();
    for (p, x) in grid.iter().zip(&xs) {
        let (cx, cy) = (px(*x), py(p.accuracy));
        s += &format!(
            "<line x1=\"{cx:.1}\" y1=\"{:.1}\" x2=\"{cx:.1}\" y2=\"{:.1}\" stroke=\"steelblue\"/>\n",
            py(p.accuracy - p.std),
            py(p.accuracy + p.std)
        );
        path += &format!("{}{cx:.1},{cy:.1}", if path.is_empty() { "" } else { " " });
        let best = p.lambda == best_lambda;
        s += &format!(
            "<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"{}\" fill=\"{}\"><title>lambda {:e}: {:.2}%</title></circle>\n",
            if best { 6 } else { 3 },
            if best { "crimson" } else { "steelblue" },
            p.lambda,
            100.0 * p.accuracy
        );
    }
    s += &format!("<polyline points=\"{path}\" fill=\"none\" stroke=\"steelblue\" stroke-width=\"2\"/>\n");
    s += &format!(
        "<text x=\"{}\" y=\"{}\" fill=\"crimson\">chosen lambda {:e}</text>\n</svg>\n",
        LEFT + 8.0,
        TOP + 14.0,
        best_lambda
    );
    s
}

fn span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
