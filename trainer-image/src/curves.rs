//! A picture of a stage's training curves: `<output>/curves.svg`, drawn from its metrics log when
//! the stage ends. One small panel per series that has data (PPO: reward mean, KL, the losses,
//! entropy, clip fraction; SFT: loss; RM: loss, accuracy; DPO: loss, held-out margin and win
//! rate), each a line of the training records against step with the held-out evaluations as dots,
//! min/max labels on both axes. Pure: records in, SVG text out.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::progress::{METRICS_LOG, read_log};
use crate::record::{Evaluation, Record};
use rlhf_spec::StageKind;

pub const CURVES_FILE: &str = "curves.svg";

/// The most points a drawn line keeps (longer series are thinned, keeping each stretch's extremes).
pub const MAX_POINTS: usize = 500;

/// A training record's value drawn by a panel.
type TrainValue = fn(&Record) -> Option<f64>;
/// A held-out evaluation's value drawn by a panel.
type EvalValue = fn(&Evaluation) -> Option<f64>;

/// One panel's source: the training-record value and the held-out evaluation value it draws.
struct Panel {
    title: &'static str,
    train: Option<TrainValue>,
    eval: Option<EvalValue>,
}

const fn panel(title: &'static str, train: Option<TrainValue>, eval: Option<EvalValue>) -> Panel {
    Panel { title, train, eval }
}

/// The panels of each stage kind, in drawing order.
fn panels(kind: StageKind) -> &'static [Panel] {
    const SFT: &[Panel] = &[panel("loss", Some(|r| r.loss), Some(|e| e.loss))];
    const RM: &[Panel] = &[
        panel("loss", Some(|r| r.loss), None),
        panel("accuracy", Some(|r| r.rm_accuracy), Some(|e| e.accuracy)),
    ];
    const DPO: &[Panel] = &[
        panel("loss", Some(|r| r.loss), None),
        panel("margin", None, Some(|e| e.margin)),
        panel("win rate", None, Some(|e| e.win_rate)),
    ];
    const PPO: &[Panel] = &[
        panel(
            "reward mean",
            Some(|r| r.reward_mean),
            Some(|e| e.reward_mean),
        ),
        panel("KL", Some(|r| r.kl), Some(|e| e.kl)),
        panel("policy loss", Some(|r| r.policy_loss), None),
        panel("value loss", Some(|r| r.value_loss), None),
        panel("ptx loss", Some(|r| r.ptx_loss), None),
        panel("entropy", Some(|r| r.entropy), None),
        panel("clip fraction", Some(|r| r.clip_fraction), None),
    ];
    match kind {
        StageKind::Sft => SFT,
        StageKind::Rm => RM,
        StageKind::Dpo => DPO,
        StageKind::Ppo | StageKind::Grpo | StageKind::Rloo | StageKind::Reinforce => PPO,
    }
}

/// One drawn series: (step, value) points sorted by step, finite values only.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub title: &'static str,
    pub train: Vec<(f64, f64)>,
    pub eval: Vec<(f64, f64)>,
}

/// The series of a stage kind that have at least one point in `records`.
pub fn series(kind: StageKind, records: &[Record]) -> Vec<Series> {
    let sorted = |mut p: Vec<(f64, f64)>| {
        p.retain(|(_, y)| y.is_finite());
        p.sort_by(|a, b| a.0.total_cmp(&b.0));
        p
    };
    let train = |value: Option<TrainValue>| -> Vec<(f64, f64)> {
        let Some(value) = value else {
            return Vec::new();
        };
        let training = records.iter().filter(|r| r.eval.is_none());
        sorted(
            training
                .filter_map(|r| Some((r.step as f64, value(r)?)))
                .collect(),
        )
    };
    let eval = |value: Option<EvalValue>| -> Vec<(f64, f64)> {
        let Some(value) = value else {
            return Vec::new();
        };
        let evaluations = records
            .iter()
            .filter_map(|r| Some((r.step, r.eval.as_ref()?)));
        sorted(
            evaluations
                .filter_map(|(step, e)| Some((step as f64, value(e)?)))
                .collect(),
        )
    };
    panels(kind)
        .iter()
        .map(|p| Series {
            title: p.title,
            train: train(p.train),
            eval: eval(p.eval),
        })
        .filter(|s| !s.train.is_empty() || !s.eval.is_empty())
        .collect()
}

/// The span `[lo, hi]` of finite values, widened around a constant so it never has zero width;
/// None without values.
pub fn span(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return None;
    }
    if hi - lo > f64::EPSILON * lo.abs().max(hi.abs()) {
        return Some((lo, hi));
    }
    let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
    Some((lo - pad, hi + pad))
}

/// Maps `v` in `[lo, hi]` onto `[a, b]` (b < a flips the direction, as an SVG y axis needs).
pub fn scale(v: f64, (lo, hi): (f64, f64), (a, b): (f64, f64)) -> f64 {
    a + (v - lo) / (hi - lo) * (b - a)
}

/// At most `max` points of `points` (sorted by x): short series as they are; longer ones cut into
/// `max / 2` stretches, each kept as its lowest and highest point in step order, so spikes stay.
pub fn downsample(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max {
        return points.to_vec();
    }
    let per = points.len().div_ceil((max / 2).max(1));
    let mut kept = Vec::with_capacity(max);
    for chunk in points.chunks(per) {
        let low = chunk
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.1.total_cmp(&b.1.1))
            .map_or(0, |(i, _)| i);
        let high = chunk
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.1.total_cmp(&b.1.1))
            .map_or(0, |(i, _)| i);
        kept.push(chunk[low.min(high)]);
        if low != high {
            kept.push(chunk[low.max(high)]);
        }
    }
    kept
}

/// A tick label: integers as they are, other numbers at 4 significant digits.
pub fn label(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e9 {
        return format!("{v:.0}");
    }
    let magnitude = v.abs().log10().floor();
    if !(-3.0..6.0).contains(&magnitude) {
        return format!("{v:.3e}");
    }
    let decimals = (3.0 - magnitude).max(0.0) as usize;
    let text = format!("{v:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

// Layout in pixels: panels in a grid of COLUMNS, each PANEL_W x PANEL_H, the plot inset by the margins.
const COLUMNS: usize = 2;
const PANEL_W: f64 = 360.0;
const PANEL_H: f64 = 220.0;
const HEADER_H: f64 = 48.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 36.0;
const TRAIN_COLOUR: &str = "#1f77b4";
const EVAL_COLOUR: &str = "#d62728";

/// The SVG of `series` for the stage `stage` of kind `kind`.
pub fn render(stage: &str, kind: StageKind, series: &[Series]) -> String {
    let rows = series.len().div_ceil(COLUMNS).max(1);
    let width = PANEL_W * COLUMNS as f64;
    let height = HEADER_H + PANEL_H * rows as f64;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{width}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="12" y="20" font-size="14" font-weight="bold">{} ({}): training curves</text>"#,
        escape(stage),
        kind.as_str()
    );
    let _ = writeln!(
        svg,
        r##"<text x="12" y="38" fill="#555">line: training records by step; <tspan fill="{EVAL_COLOUR}">dots: held-out evaluations</tspan></text>"##
    );
    if series.is_empty() {
        let _ = writeln!(
            svg,
            r#"<text x="12" y="{}">no metrics logged</text>"#,
            HEADER_H + 20.0
        );
    }
    for (i, s) in series.iter().enumerate() {
        let (x, y) = (
            (i % COLUMNS) as f64 * PANEL_W,
            HEADER_H + (i / COLUMNS) as f64 * PANEL_H,
        );
        draw_panel(&mut svg, s, x, y);
    }
    svg.push_str("</svg>\n");
    svg
}

/// One panel with its top-left corner at (`x0`, `y0`).
fn draw_panel(svg: &mut String, s: &Series, x0: f64, y0: f64) {
    let all = || s.train.iter().chain(&s.eval);
    let (Some(xs), Some(ys)) = (span(all().map(|p| p.0)), span(all().map(|p| p.1))) else {
        return;
    };
    // Plot area corners.
    let (left, right, top, bottom) = (
        x0 + LEFT,
        x0 + PANEL_W - RIGHT,
        y0 + TOP,
        y0 + PANEL_H - BOTTOM,
    );
    let at = |(sx, sy): (f64, f64)| (scale(sx, xs, (left, right)), scale(sy, ys, (bottom, top)));
    let _ = writeln!(svg, r#"<g>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{left}" y="{}" font-size="12" font-weight="bold">{}</text>"#,
        y0 + 18.0,
        escape(s.title)
    );
    let _ = writeln!(
        svg,
        r##"<path d="M{left},{top} V{bottom} H{right}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        svg,
        r##"<path d="M{},{top} H{left} M{},{bottom} H{left}" stroke="#333"/>"##,
        left - 4.0,
        left - 4.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
        left - 6.0,
        top + 4.0,
        label(ys.1)
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
        left - 6.0,
        bottom + 4.0,
        label(ys.0)
    );
    let _ = writeln!(
        svg,
        r#"<text x="{left}" y="{}" text-anchor="start">{}</text>"#,
        bottom + 14.0,
        label(xs.0)
    );
    let _ = writeln!(
        svg,
        r#"<text x="{right}" y="{}" text-anchor="end">{}</text>"#,
        bottom + 14.0,
        label(xs.1)
    );
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">step</text>"##,
        (left + right) / 2.0,
        bottom + 26.0
    );
    // The line: the training records, or (a series only evaluated) the evaluations, dashed.
    let (line, colour, dash) = if s.train.is_empty() {
        (&s.eval, EVAL_COLOUR, r#" stroke-dasharray="4 3""#)
    } else {
        (&s.train, TRAIN_COLOUR, "")
    };
    let drawn = downsample(line, MAX_POINTS);
    let points: Vec<String> = drawn
        .iter()
        .map(|&p| at(p))
        .map(|(px, py)| format!("{px:.1},{py:.1}"))
        .collect();
    let _ = writeln!(
        svg,
        r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5"{dash} points="{}"/>"#,
        points.join(" ")
    );
    if let [only] = drawn.as_slice() {
        let (px, py) = at(*only); // one point draws no line
        let _ = writeln!(
            svg,
            r#"<circle cx="{px:.1}" cy="{py:.1}" r="2.5" fill="{colour}"/>"#
        );
    }
    for &(step, value) in &downsample(&s.eval, MAX_POINTS) {
        let (px, py) = at((step, value));
        let _ = writeln!(
            svg,
            r#"<circle cx="{px:.1}" cy="{py:.1}" r="3.5" fill="{EVAL_COLOUR}"><title>held-out at step {}: {}</title></circle>"#,
            label(step),
            label(value)
        );
    }
    let _ = writeln!(svg, "</g>");
}

/// Draws the curves of the stage whose output folder is `output` into `<output>/curves.svg`.
pub fn write(output: &Path, stage: &str, kind: StageKind) -> Result<PathBuf> {
    let records = read_log(&output.join(METRICS_LOG));
    let path = output.join(CURVES_FILE);
    std::fs::write(&path, render(stage, kind, &series(kind, &records))).map_err(|source| {
        Error::Write {
            path: path.clone(),
            source,
        }
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A record as the log has it.
    fn record(line: serde_json::Value) -> Record {
        serde_json::from_value(line).unwrap()
    }

    /// Checks that `svg` is well-formed XML as far as this module writes it: every tag closed in
    /// order, attribute quotes paired, no stray `<` or `&` in text. Returns the element names.
    fn well_formed(svg: &str) -> Vec<String> {
        let mut open: Vec<String> = Vec::new();
        let mut names = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let text = &rest[..start];
            assert!(
                text.split('&')
                    .skip(1)
                    .all(|t| ["amp;", "lt;", "gt;", "quot;"]
                        .iter()
                        .any(|e| t.starts_with(e))),
                "bare & in {text:?}"
            );
            let end = rest[start..].find('>').expect("a tag is closed") + start;
            let tag = &rest[start + 1..end];
            assert!(!tag.contains('<'), "< inside a tag: {tag}");
            assert_eq!(tag.matches('"').count() % 2, 0, "unpaired quote in {tag}");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(
                    open.pop().as_deref(),
                    Some(name.trim()),
                    "closing {name} out of order"
                );
            } else {
                let name = tag
                    .split_whitespace()
                    .next()
                    .expect("a tag name")
                    .trim_end_matches('/')
                    .to_string();
                names.push(name.clone());
                if !tag.ends_with('/') {
                    open.push(name);
                }
            }
            rest = &rest[end + 1..];
        }
        assert!(rest.trim().is_empty(), "text after the root: {rest:?}");
        assert!(open.is_empty(), "unclosed: {open:?}");
        assert_eq!(names.first().map(String::as_str), Some("svg"));
        names
    }

    fn count(names: &[String], name: &str) -> usize {
        names.iter().filter(|n| *n == name).count()
    }

    fn ppo_records() -> Vec<Record> {
        vec![
            record(json!({"step": 0, "eval": {"reward_mean": 0.1, "kl": 0.0}})),
            record(
                json!({"step": 1, "reward_mean": 0.2, "reward_std": 0.1, "kl": 0.01, "kl_coef": 0.1, "entropy": 2.0, "policy_loss": -0.1, "value_loss": 0.5, "clip_fraction": 0.0, "memory": {"cpu": {"rss": 1e8}}}),
            ),
            record(
                json!({"step": 2, "reward_mean": 0.4, "reward_std": 0.1, "kl": 0.02, "kl_coef": 0.1, "entropy": 1.9, "policy_loss": -0.2, "value_loss": 0.4, "clip_fraction": 0.1}),
            ),
            record(json!({"step": 2, "eval": {"reward_mean": 0.5, "kl": 0.03}})),
        ]
    }

    #[test]
    fn ppo_draws_reward_kl_losses_with_held_out_points() {
        let s = series(StageKind::Ppo, &ppo_records());
        let titles: Vec<&str> = s.iter().map(|s| s.title).collect();
        assert_eq!(
            titles,
            [
                "reward mean",
                "KL",
                "policy loss",
                "value loss",
                "entropy",
                "clip fraction"
            ],
            "no ptx loss without ptx"
        );
        assert_eq!(s[0].train, [(1.0, 0.2), (2.0, 0.4)]);
        assert_eq!(s[0].eval, [(0.0, 0.1), (2.0, 0.5)]);
        assert!(s[2].eval.is_empty());
        let svg = render("ppo", StageKind::Ppo, &s);
        let names = well_formed(&svg);
        assert_eq!(count(&names, "polyline"), s.len());
        assert_eq!(
            svg.matches("held-out at step").count(),
            4,
            "two evaluations each on reward and KL"
        );
        assert!(svg.contains(">reward mean<") && svg.contains(">KL<"));
    }

    #[test]
    fn sft_rm_and_dpo_draw_their_own_keys() {
        let sft = series(
            StageKind::Sft,
            &[
                record(json!({"step": 0, "eval": {"loss": 3.0}})),
                record(json!({"step": 1, "loss": 2.5})),
                record(json!({"step": 1, "eval": {"loss": 2.4}})),
            ],
        );
        assert_eq!(
            sft,
            [Series {
                title: "loss",
                train: vec![(1.0, 2.5)],
                eval: vec![(0.0, 3.0), (1.0, 2.4)]
            }]
        );

        let rm = series(
            StageKind::Rm,
            &[
                record(json!({"step": 0, "eval": {"accuracy": 0.5}})),
                record(json!({"step": 1, "loss": 0.7, "rm_accuracy": 0.6})),
            ],
        );
        assert_eq!(
            rm.iter().map(|s| s.title).collect::<Vec<_>>(),
            ["loss", "accuracy"]
        );
        assert_eq!(
            (&rm[1].train, &rm[1].eval),
            (&vec![(1.0, 0.6)], &vec![(0.0, 0.5)])
        );

        let dpo_log = [
            record(json!({"step": 0, "eval": {"margin": 0.0, "win_rate": 0.5}})),
            record(json!({"step": 1, "loss": 0.69})),
            record(json!({"step": 1, "eval": {"margin": 0.2, "win_rate": 0.75}})),
        ];
        let dpo = series(StageKind::Dpo, &dpo_log);
        assert_eq!(
            dpo.iter().map(|s| s.title).collect::<Vec<_>>(),
            ["loss", "margin", "win rate"]
        );
        assert_eq!(dpo[1].eval, [(0.0, 0.0), (1.0, 0.2)]);
        for (kind, s) in [
            (StageKind::Sft, sft),
            (StageKind::Rm, rm),
            (StageKind::Dpo, dpo),
        ] {
            assert_eq!(
                count(&well_formed(&render("a & <b>", kind, &s)), "polyline"),
                s.len(),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn unusable_values_are_skipped() {
        // serde_json writes NaN and infinities as null: no value. (Lines that are no records at
        // all are the log reader's to skip.)
        let loss = |step, loss| Record {
            step,
            loss,
            ..Record::default()
        };
        let records = [
            record(json!({"step": 1, "loss": null})),
            loss(2, Some(f64::NAN)),
            loss(4, Some(f64::INFINITY)),
            loss(3, Some(1.5)),
        ];
        assert_eq!(series(StageKind::Sft, &records)[0].train, [(3.0, 1.5)]);
        assert!(series(StageKind::Sft, &[record(json!({"step": 1, "loss": null}))]).is_empty());
        assert_eq!(
            span([f64::NAN, 1.0, f64::INFINITY, 3.0, f64::NEG_INFINITY]),
            Some((1.0, 3.0))
        );
        assert_eq!(span([f64::NAN]), None);
        let svg = render("empty", StageKind::Ppo, &[]);
        assert_eq!(count(&well_formed(&svg), "polyline"), 0);
        assert!(svg.contains("no metrics logged"));
    }

    #[test]
    fn scaling_maps_spans_and_survives_constants() {
        assert_eq!(scale(5.0, (0.0, 10.0), (100.0, 200.0)), 150.0);
        assert_eq!(
            scale(0.0, (0.0, 10.0), (200.0, 100.0)),
            200.0,
            "an SVG y axis runs downwards"
        );
        assert_eq!(scale(10.0, (0.0, 10.0), (200.0, 100.0)), 100.0);
        assert_eq!(span([2.0, 2.0, 2.0]), Some((1.8, 2.2)));
        assert_eq!(span([0.0]), Some((-1.0, 1.0)));
        let constant = span([-4.0]).unwrap();
        assert!(constant.0 < -4.0 && constant.1 > -4.0);
        assert!(
            (scale(2.0, span([2.0]).unwrap(), (0.0, 100.0)) - 50.0).abs() < 1e-9,
            "a constant sits in the middle"
        );
        // A single point: a finite position and a marker, since a one-point line draws nothing.
        let one = [Series {
            title: "loss",
            train: vec![(7.0, 0.25)],
            eval: vec![],
        }];
        let svg = render("one", StageKind::Sft, &one);
        assert_eq!(count(&well_formed(&svg), "circle"), 1);
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
    }

    #[test]
    fn long_runs_are_thinned_keeping_extremes() {
        let points: Vec<(f64, f64)> = (0..10_000)
            .map(|i| {
                (
                    f64::from(i),
                    (f64::from(i) / 50.0).sin() + if i == 4321 { 9.0 } else { 0.0 },
                )
            })
            .collect();
        let kept = downsample(&points, MAX_POINTS);
        assert!(
            kept.len() <= MAX_POINTS && kept.len() > MAX_POINTS / 2,
            "{}",
            kept.len()
        );
        assert!(kept.windows(2).all(|w| w[0].0 < w[1].0), "in step order");
        assert!(kept.contains(&points[4321]), "the spike stays");
        assert_eq!(
            span(kept.iter().map(|p| p.1)),
            span(points.iter().map(|p| p.1))
        );
        assert_eq!(downsample(&points[..3], MAX_POINTS), &points[..3]);
        let s = [Series {
            title: "loss",
            train: points,
            eval: vec![(0.0, 1.0)],
        }];
        let svg = render("long", StageKind::Sft, &s);
        let line = svg.lines().find(|l| l.starts_with("<polyline")).unwrap();
        assert!(line.matches(',').count() <= MAX_POINTS);
    }

    #[test]
    fn labels_are_short() {
        assert_eq!(label(1200.0), "1200");
        assert_eq!(label(-3.0), "-3");
        assert_eq!(label(0.123456), "0.1235");
        assert_eq!(label(12.5), "12.5");
        assert_eq!(label(0.00001234), "1.234e-5");
        assert_eq!(label(1.5e10), "1.500e10");
        assert_eq!(label(1234567.8), "1.235e6");
    }

    #[test]
    fn write_draws_the_log_beside_it() {
        let dir = std::env::temp_dir().join(format!("rlhf-curves-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log: String = ppo_records()
            .iter()
            .map(|r| serde_json::to_string(r).unwrap() + "\n")
            .collect();
        std::fs::write(dir.join(METRICS_LOG), log).unwrap();
        let path = write(&dir, "ppo", StageKind::Ppo).unwrap();
        assert_eq!(path, dir.join(CURVES_FILE));
        let svg = std::fs::read_to_string(&path).unwrap();
        assert_eq!(count(&well_formed(&svg), "polyline"), 6);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
