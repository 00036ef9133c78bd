//! `metrics.jsonl`: one JSON object per line — training rows every `--log-every` steps and
//! evaluation rows (keys starting with `eval_`) — and the evaluation statistics.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::fs_util::write_atomic;

/// Keys whose values depend on wall-clock time; every other key of a row is a deterministic
/// function of the run's options and step.
pub const WALL_CLOCK_KEYS: &[&str] = &["tokens_per_s", "elapsed_s"];

/// Appends rows to a run's `metrics.jsonl`.
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens `run_dir/metrics.jsonl` for appending, first dropping rows of steps after
    /// `resume_step` (left behind by a run interrupted between checkpoints) so that a resumed
    /// run continues the log exactly.
    pub fn open(run_dir: &Path, resume_step: Option<u64>) -> Result<Self> {
        let path = run_dir.join("metrics.jsonl");
        if let (Some(step), true) = (resume_step, path.exists()) {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let kept: String = text
                .lines()
                .filter(|line| {
                    serde_json::from_str::<Value>(line)
                        .ok()
                        .and_then(|v| v.get("step").and_then(Value::as_u64))
                        .is_some_and(|s| s <= step)
                })
                .map(|line| format!("{line}\n"))
                .collect();
            write_atomic(&path, kept.as_bytes())?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(MetricsLog { path, file })
    }

    /// Appends one row.
    pub fn write(&mut self, row: &Map<String, Value>) -> Result<()> {
        let mut line =
            serde_json::to_string(row).map_err(|e| Error::format(&self.path, e.to_string()))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// Reads every row of a `metrics.jsonl`.
pub fn read_rows(path: &Path) -> Result<Vec<Map<String, Value>>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(Error::format(
                path,
                format!("line {} is not a JSON object", i + 1),
            )),
        })
        .collect()
}

/// Binary-classification statistics of replaced-token detection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RtdStats {
    /// Fraction of tokens classified correctly at threshold 0.5.
    pub accuracy: f64,
    /// Of the tokens predicted replaced, the fraction that were (`None` if none predicted).
    pub precision: Option<f64>,
    /// Of the replaced tokens, the fraction predicted (`None` if none replaced).
    pub recall: Option<f64>,
    /// Area under the ROC curve (`None` if only one class occurs).
    pub auc: Option<f64>,
    /// Mean predicted probability of original tokens.
    pub mean_p_original: Option<f64>,
    /// Mean predicted probability of replaced tokens.
    pub mean_p_replaced: Option<f64>,
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// Statistics over `(logit, label)` pairs (`label` true = replaced).
pub fn rtd_stats(pairs: &[(f32, bool)]) -> RtdStats {
    let n = pairs.len().max(1) as f64;
    let predicted = |logit: f32| logit > 0.0;
    let correct = pairs.iter().filter(|(z, y)| predicted(*z) == *y).count();
    let tp = pairs.iter().filter(|(z, y)| predicted(*z) && *y).count();
    let predicted_positive = pairs.iter().filter(|(z, _)| predicted(*z)).count();
    let positives = pairs.iter().filter(|(_, y)| *y).count();
    let sigmoid = |z: f32| 1.0 / (1.0 + (-(z as f64)).exp());
    RtdStats {
        accuracy: correct as f64 / n,
        precision: (predicted_positive > 0).then(|| tp as f64 / predicted_positive as f64),
        recall: (positives > 0).then(|| tp as f64 / positives as f64),
        auc: auc(pairs),
        mean_p_original: mean(pairs.iter().filter(|(_, y)| !*y).map(|(z, _)| sigmoid(*z))),
        mean_p_replaced: mean(pairs.iter().filter(|(_, y)| *y).map(|(z, _)| sigmoid(*z))),
    }
}

/// ROC AUC by the rank-sum statistic, ties sharing their average rank.
pub fn auc(pairs: &[(f32, bool)]) -> Option<f64> {
    let positives = pairs.iter().filter(|(_, y)| *y).count();
    let negatives = pairs.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let mut sorted: Vec<(f32, bool)> = pairs.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut rank_sum = 0.0f64;
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j < sorted.len() && sorted[j].0 == sorted[i].0 {
            j += 1;
        }
        let average_rank = (i + 1 + j) as f64 / 2.0;
        rank_sum += average_rank * sorted[i..j].iter().filter(|(_, y)| *y).count() as f64;
        i = j;
    }
    let p = positives as f64;
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * negatives as f64))
}

/// A JSON number, or `null` for a missing or non-finite value.
pub fn number(value: Option<f64>) -> Value {
    value
        .and_then(serde_json::Number::from_f64)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_and_rates() {
        let perfect = [(-2.0, false), (-1.0, false), (1.0, true), (3.0, true)];
        assert_eq!(auc(&perfect), Some(1.0));
        let reversed = [(2.0, false), (-1.0, true)];
        assert_eq!(auc(&reversed), Some(0.0));
        let tied = [(0.5, false), (0.5, true)];
        assert_eq!(auc(&tied), Some(0.5));
        assert_eq!(auc(&[(1.0, true)]), None);
        let stats = rtd_stats(&[(1.0, true), (1.0, false), (-1.0, false), (-1.0, true)]);
        assert_eq!(stats.accuracy, 0.5);
        assert_eq!(stats.precision, Some(0.5));
        assert_eq!(stats.recall, Some(0.5));
    }
}
