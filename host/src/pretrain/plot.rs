//! `loss.png` — the training and evaluation curves of a run — and `comparison.png` of
//! `deberta compare-sharing`, drawn with plotters.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::register_font;
use serde_json::{Map, Value};

use super::metrics::read_rows;
use crate::error::{Error, Result};

/// The bundled font (DejaVu Sans, Bitstream Vera license: `host/assets/DejaVuSans-LICENSE.txt`).
const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// Colours of the training and held-out curves of `loss.png`.
const TRAIN: RGBColor = RGBColor(70, 120, 200);
const HELD_OUT: RGBColor = RGBColor(200, 40, 40);
const GREY: RGBColor = RGBColor(120, 120, 120);

/// Colours of the lines of `comparison.png`, in the order of the runs.
const RUN_COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// `(step, value)` of every row that has a finite `key`.
fn series(rows: &[Map<String, Value>], key: &str) -> Vec<(f64, f64)> {
    rows.iter()
        .filter_map(|r| Some((r.get("step")?.as_f64()?, r.get(key)?.as_f64()?)))
        .filter(|(_, v)| v.is_finite())
        .collect()
}

/// How a curve is drawn.
#[derive(Clone, Copy)]
enum Stroke {
    /// A thin solid line.
    Thin,
    /// A thick solid line with a dot on every point (sparse evaluation rows).
    Dotted,
    /// A dashed line with a dot on every point.
    Dashed,
}

/// One curve of a panel.
struct Line {
    label: String,
    points: Vec<(f64, f64)>,
    colour: RGBColor,
    stroke: Stroke,
}

/// The vertical range of a panel.
#[derive(Clone, Copy)]
enum Range {
    /// From 0 to a fifth above the largest value (room for the legend).
    Auto,
    /// A fraction: from 0 to a fifth above the largest value, at most 1.
    Fraction,
    /// From 0 to 1 (AUC, with its chance line at 0.5).
    Unit,
}

/// One chart: its title, curves, and a dashed horizontal reference line if any.
struct Panel {
    title: &'static str,
    y_desc: &'static str,
    range: Range,
    lines: Vec<Line>,
    reference: Option<(f64, &'static str)>,
    legend: SeriesLabelPosition,
}

fn draw_error(out: &Path) -> impl Fn(String) -> Error + '_ {
    move |e| Error::format(out, format!("cannot draw the plot: {e}"))
}

/// Draws `panels` on a `rows × cols` grid into `out`.
fn draw(out: &Path, grid: (usize, usize), panels: &[Panel]) -> Result<()> {
    register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| draw_error(out)("font".into()))?;
    draw_panels(out, grid, panels).map_err(draw_error(out))
}

fn draw_panels(
    out: &Path,
    (rows, cols): (usize, usize),
    panels: &[Panel],
) -> std::result::Result<(), String> {
    let size = (600 * cols as u32, 450 * rows as u32);
    let root = BitMapBackend::new(&out, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    for (area, panel) in root.split_evenly((rows, cols)).iter().zip(panels) {
        draw_panel(area, panel)?;
    }
    root.present().map_err(|e| e.to_string())
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    panel: &Panel,
) -> std::result::Result<(), String> {
    let all = || panel.lines.iter().flat_map(|l| l.points.iter());
    let max_step = all().map(|p| p.0).fold(1.0, f64::max) * 1.02;
    let headroom = all().map(|p| p.1).fold(0.0, f64::max) * 1.2;
    let max_y = match panel.range {
        Range::Auto => headroom.max(0.1),
        Range::Fraction => headroom.clamp(0.05, 1.0),
        Range::Unit => 1.0,
    };
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..max_step, 0.0..max_y)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_label_formatter(&|x| format!("{x}"))
        .y_desc(panel.y_desc)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| e.to_string())?;
    if let Some((y, label)) = panel.reference {
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, y), (max_step, y)],
                6,
                4,
                GREY.stroke_width(1),
            ))
            .map_err(|e| e.to_string())?
            .label(label)
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 8, y)], GREY));
    }
    for line in &panel.lines {
        let colour = line.colour;
        let style = match line.stroke {
            Stroke::Thin => colour.stroke_width(1),
            Stroke::Dotted | Stroke::Dashed => colour.stroke_width(2),
        };
        let drawn = match line.stroke {
            Stroke::Thin => chart.draw_series(LineSeries::new(line.points.clone(), style)),
            Stroke::Dotted => {
                chart.draw_series(LineSeries::new(line.points.clone(), style).point_size(3))
            }
            Stroke::Dashed => {
                chart
                    .draw_series(DashedLineSeries::new(line.points.clone(), 8, 5, style))
                    .map_err(|e| e.to_string())?;
                chart.draw_series(
                    line.points
                        .iter()
                        .map(|&p| Circle::new(p, 3, colour.filled())),
                )
            }
        }
        .map_err(|e| e.to_string())?;
        let solid = !matches!(line.stroke, Stroke::Dashed);
        drawn.label(line.label.as_str()).legend(move |(x, y)| {
            let end = if solid { x + 18 } else { x + 8 };
            PathElement::new(vec![(x, y), (end, y)], colour.stroke_width(2))
        });
    }
    chart
        .configure_series_labels()
        .position(panel.legend.clone())
        .label_font(("sans-serif", 14))
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// A training curve (thin) and its held-out counterpart (thick, dotted).
fn train_and_eval(rows: &[Map<String, Value>], train: &str, eval: &str) -> Vec<Line> {
    vec![
        Line {
            label: "train".into(),
            points: series(rows, train),
            colour: TRAIN,
            stroke: Stroke::Thin,
        },
        Line {
            label: "held-out".into(),
            points: series(rows, eval),
            colour: HELD_OUT,
            stroke: Stroke::Dotted,
        },
    ]
}

/// Draws `run_dir/loss.png` from `run_dir/metrics.jsonl` on a 2×2 grid: the MLM and RTD
/// losses (training and held-out), the generator's MLM accuracy (training and held-out) and
/// the discriminator's held-out RTD AUC with its accuracy and recall (dashed) over a dashed
/// chance line at 0.5.
pub fn plot_run(run_dir: &Path) -> Result<PathBuf> {
    let rows = read_rows(&run_dir.join("metrics.jsonl"))?;
    let out = run_dir.join("loss.png");
    let held_out = |label: &str, key: &str, colour, stroke| Line {
        label: label.into(),
        points: series(&rows, key),
        colour,
        stroke,
    };
    let panels = [
        Panel {
            title: "generator MLM loss",
            y_desc: "cross-entropy",
            range: Range::Auto,
            lines: train_and_eval(&rows, "loss_mlm", "eval_loss_mlm"),
            reference: None,
            legend: SeriesLabelPosition::UpperRight,
        },
        Panel {
            title: "discriminator RTD loss",
            y_desc: "binary cross-entropy",
            range: Range::Auto,
            lines: train_and_eval(&rows, "loss_rtd", "eval_loss_rtd"),
            reference: None,
            legend: SeriesLabelPosition::UpperRight,
        },
        Panel {
            title: "generator MLM accuracy (masked tokens)",
            y_desc: "accuracy",
            range: Range::Fraction,
            lines: train_and_eval(&rows, "mlm_accuracy", "eval_mlm_accuracy"),
            reference: None,
            legend: SeriesLabelPosition::UpperRight,
        },
        Panel {
            title: "discriminator RTD, held-out",
            y_desc: "AUC, accuracy, recall",
            range: Range::Unit,
            lines: vec![
                held_out("AUC", "eval_rtd_auc", HELD_OUT, Stroke::Dotted),
                held_out("accuracy", "eval_rtd_accuracy", TRAIN, Stroke::Dashed),
                held_out(
                    "recall (replaced)",
                    "eval_rtd_recall",
                    RUN_COLOURS[2],
                    Stroke::Dashed,
                ),
            ],
            reference: Some((0.5, "chance AUC")),
            legend: SeriesLabelPosition::LowerRight,
        },
    ];
    draw(&out, (2, 2), &panels)?;
    Ok(out)
}

/// Draws `out` for several runs: one panel per held-out metric — MLM accuracy, MLM loss, RTD
/// AUC, RTD accuracy — with one line per run (`(label, metrics rows)`).
pub fn plot_comparison(out: &Path, runs: &[(String, Vec<Map<String, Value>>)]) -> Result<()> {
    let lines = |key: &str| -> Vec<Line> {
        runs.iter()
            .zip(RUN_COLOURS.iter().cycle())
            .map(|((label, rows), &colour)| Line {
                label: label.clone(),
                points: series(rows, key),
                colour,
                stroke: Stroke::Dotted,
            })
            .collect()
    };
    let panel = |title, y_desc, range, key: &str, reference, legend| Panel {
        title,
        y_desc,
        range,
        lines: lines(key),
        reference,
        legend,
    };
    let panels = [
        panel(
            "held-out MLM accuracy (generator)",
            "accuracy",
            Range::Fraction,
            "eval_mlm_accuracy",
            None,
            SeriesLabelPosition::UpperRight,
        ),
        panel(
            "held-out MLM loss (generator)",
            "cross-entropy",
            Range::Auto,
            "eval_loss_mlm",
            None,
            SeriesLabelPosition::UpperRight,
        ),
        panel(
            "held-out RTD AUC (discriminator)",
            "AUC",
            Range::Unit,
            "eval_rtd_auc",
            Some((0.5, "chance")),
            SeriesLabelPosition::LowerRight,
        ),
        panel(
            "held-out RTD accuracy (discriminator)",
            "accuracy",
            Range::Fraction,
            "eval_rtd_accuracy",
            None,
            SeriesLabelPosition::LowerRight,
        ),
    ];
    draw(out, (2, 2), &panels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Training rows every step and evaluation rows every 5, as a run writes them.
    fn rows() -> Vec<Map<String, Value>> {
        let mut rows = Vec::new();
        for step in 1..=20u32 {
            let t = f64::from(step);
            let row = json!({"step": step, "loss_mlm": 9.0 - 0.2 * t, "loss_rtd": 0.6 - 0.01 * t,
                "mlm_accuracy": 0.01 * t, "rtd_accuracy": 0.8});
            rows.push(row.as_object().unwrap().clone());
            if step % 5 == 0 {
                let row = json!({"step": step, "eval_loss_mlm": 9.0 - 0.15 * t,
                    "eval_loss_rtd": 0.55 - 0.01 * t, "eval_mlm_accuracy": 0.012 * t,
                    "eval_rtd_accuracy": 0.85, "eval_rtd_recall": 0.02 * t,
                    "eval_rtd_auc": 0.5 + 0.02 * t, "eval_rtd_precision": null});
                rows.push(row.as_object().unwrap().clone());
            }
        }
        rows
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("deberta-plot-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn is_png(path: &Path) -> bool {
        std::fs::read(path).is_ok_and(|b| b.len() > 1000 && b.starts_with(b"\x89PNG"))
    }

    #[test]
    fn loss_png_has_the_evaluation_panels() {
        let dir = scratch("run");
        let text: String = rows()
            .iter()
            .map(|r| format!("{}\n", Value::Object(r.clone())))
            .collect();
        std::fs::write(dir.join("metrics.jsonl"), text).unwrap();
        let out = plot_run(&dir).unwrap();
        assert_eq!(out, dir.join("loss.png"));
        assert!(is_png(&out));
        assert_eq!(series(&rows(), "eval_rtd_auc").len(), 4);
        assert!(series(&rows(), "eval_rtd_precision").is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn comparison_png_draws_one_line_per_run() {
        let dir = scratch("comparison");
        let out = dir.join("comparison.png");
        let runs: Vec<(String, Vec<Map<String, Value>>)> = ["GDES", "ES", "NES"]
            .iter()
            .map(|m| (m.to_string(), rows()))
            .collect();
        plot_comparison(&out, &runs).unwrap();
        assert!(is_png(&out));
        // No evaluation rows at all still draws (empty panels), rather than failing.
        plot_comparison(&out, &[("GDES".into(), Vec::new())]).unwrap();
        assert!(is_png(&out));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
