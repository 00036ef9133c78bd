//! `loss.png`: the training and evaluation losses of a run, drawn with plotters.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::register_font;
use serde_json::{Map, Value};

use super::metrics::read_rows;
use crate::error::{Error, Result};

/// The bundled font (DejaVu Sans, Bitstream Vera license: `host/assets/DejaVuSans-LICENSE.txt`).
const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

fn series(rows: &[Map<String, Value>], key: &str) -> Vec<(f64, f64)> {
    rows.iter()
        .filter_map(|r| Some((r.get("step")?.as_f64()?, r.get(key)?.as_f64()?)))
        .filter(|(_, v)| v.is_finite())
        .collect()
}

/// Draws `run_dir/loss.png` from `run_dir/metrics.jsonl`: MLM and RTD losses (training and
/// evaluation) against the step, on two panels.
pub fn plot_run(run_dir: &Path) -> Result<std::path::PathBuf> {
    let rows = read_rows(&run_dir.join("metrics.jsonl"))?;
    let out = run_dir.join("loss.png");
    let plot_error = |e: String| Error::format(&out, format!("cannot draw the plot: {e}"));
    register_font("sans-serif", FontStyle::Normal, FONT).map_err(|_| plot_error("font".into()))?;
    draw(&out, &rows).map_err(plot_error)?;
    Ok(out)
}

/// Draws the two panels into `out`.
fn draw(out: &Path, rows: &[Map<String, Value>]) -> std::result::Result<(), String> {
    let root = BitMapBackend::new(&out, (1200, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let panels = root.split_evenly((1, 2));
    let panel_specs = [
        ("generator MLM loss", "loss_mlm", "eval_loss_mlm"),
        ("discriminator RTD loss", "loss_rtd", "eval_loss_rtd"),
    ];
    for (area, (title, train_key, eval_key)) in panels.iter().zip(panel_specs) {
        let train = series(rows, train_key);
        let eval = series(rows, eval_key);
        let all: Vec<&(f64, f64)> = train.iter().chain(&eval).collect();
        let max_step = all.iter().map(|p| p.0).fold(1.0, f64::max);
        let max_loss = all.iter().map(|p| p.1).fold(0.1, f64::max) * 1.05;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d(0.0..max_step, 0.0..max_loss)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new(train, &BLUE))
            .map_err(|e| e.to_string())?
            .label("train")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE));
        chart
            .draw_series(LineSeries::new(eval, RED.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label("held-out")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED));
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 14))
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
