//! Classification metrics computed exactly as scikit-learn 1.3 computes them: confusion matrix, per-class
//! precision/recall/F1/support (zero division → 0), accuracy, weighted F1 (weights = true support; classes with no
//! support weigh 0, so restricting to the labels present — the reference's call — gives the same number), and
//! `classification_report` text in sklearn's layout (2 decimals).

use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Metrics {
    pub classes: Vec<String>,
    pub accuracy: f64,
    pub f1_weighted: f64,
    pub f1_macro: f64,
    pub precision: Vec<f64>,
    pub recall: Vec<f64>,
    pub f1: Vec<f64>,
    pub support: Vec<usize>,
    /// confusion[true][predicted]
    pub confusion: Vec<Vec<usize>>,
}

fn ratio(num: f64, den: f64) -> f64 {
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

impl Metrics {
    pub fn compute(classes: &[String], y_true: &[usize], y_pred: &[usize]) -> Metrics {
        let k = classes.len();
        let mut confusion = vec![vec![0usize; k]; k];
        for (t, p) in y_true.iter().zip(y_pred) {
            if *t < k && *p < k {
                confusion[*t][*p] += 1;
            }
        }
        let support: Vec<usize> = confusion.iter().map(|row| row.iter().sum()).collect();
        let predicted: Vec<usize> = (0..k)
            .map(|c| confusion.iter().map(|row| row[c]).sum())
            .collect();
        let tp: Vec<f64> = (0..k).map(|c| confusion[c][c] as f64).collect();
        let precision: Vec<f64> = (0..k).map(|c| ratio(tp[c], predicted[c] as f64)).collect();
        let recall: Vec<f64> = (0..k).map(|c| ratio(tp[c], support[c] as f64)).collect();
        // sklearn 1.3 computes F1 from precision and recall, in this order of operations:
        // (1 + β²)·P·R / (β²·P + R) with a zero denominator replaced by 1. The last bit matters when the report
        // rounds a tie (0.625 vs 0.6250000000000001).
        let f1: Vec<f64> = (0..k)
            .map(|c| {
                let denominator = precision[c] + recall[c];
                let denominator = if denominator == 0.0 { 1.0 } else { denominator };
                2.0 * precision[c] * recall[c] / denominator
            })
            .collect();
        let total: usize = support.iter().sum();
        let weighted = |v: &[f64]| {
            ratio(
                v.iter()
                    .zip(&support)
                    .map(|(x, s)| x * *s as f64)
                    .sum::<f64>(),
                total as f64,
            )
        };
        Metrics {
            classes: classes.to_vec(),
            accuracy: ratio(tp.iter().sum(), total as f64),
            f1_weighted: weighted(&f1),
            f1_macro: f1.iter().sum::<f64>() / k.max(1) as f64,
            precision,
            recall,
            f1,
            support,
            confusion,
        }
    }

    /// sklearn's `classification_report(..., digits=2, zero_division=0)` text.
    pub fn report(&self) -> String {
        let digits = 2;
        let width = self
            .classes
            .iter()
            .map(|c| c.chars().count())
            .chain(std::iter::once("weighted avg".len()))
            .max()
            .unwrap_or(12);
        let mut out = format!(
            "{:>width$}  {:>9} {:>9} {:>9} {:>9}\n\n",
            "", "precision", "recall", "f1-score", "support"
        );
        let row = |name: &str, p: f64, r: f64, f: f64, s: usize| {
            format!(
                "{name:>width$}  {:>9} {:>9} {:>9} {s:>9}\n",
                fixed(p, digits),
                fixed(r, digits),
                fixed(f, digits)
            )
        };
        for c in 0..self.classes.len() {
            out += &row(
                &self.classes[c],
                self.precision[c],
                self.recall[c],
                self.f1[c],
                self.support[c],
            );
        }
        out.push('\n');
        let total: usize = self.support.iter().sum();
        // sklearn prints an "accuracy" line only when the report's labels are exactly the labels present in
        // y_true ∪ y_pred; otherwise a "micro avg" row (whose precision, recall and F1 all equal the accuracy).
        let all_present = (0..self.classes.len())
            .all(|c| self.support[c] > 0 || self.confusion.iter().any(|row| row[c] > 0));
        if all_present {
            out += &format!(
                "{:>width$}  {:>9} {:>9} {:>9} {total:>9}\n",
                "accuracy",
                "",
                "",
                fixed(self.accuracy, digits)
            );
        } else {
            out += &row(
                "micro avg",
                self.accuracy,
                self.accuracy,
                self.accuracy,
                total,
            );
        }
        let k = self.classes.len().max(1) as f64;
        let mean = |v: &[f64]| v.iter().sum::<f64>() / k;
        out += &row(
            "macro avg",
            mean(&self.precision),
            mean(&self.recall),
            mean(&self.f1),
            total,
        );
        let weighted = |v: &[f64]| {
            ratio(
                v.iter()
                    .zip(&self.support)
                    .map(|(x, s)| x * *s as f64)
                    .sum::<f64>(),
                total as f64,
            )
        };
        out += &row(
            "weighted avg",
            weighted(&self.precision),
            weighted(&self.recall),
            weighted(&self.f1),
            total,
        );
        out
    }

    /// The confusion matrix as CSV (rows: true class, columns: predicted class).
    pub fn confusion_csv(&self) -> String {
        let mut out = format!("true\\predicted,{}\n", self.classes.join(","));
        for (c, row) in self.confusion.iter().enumerate() {
            let cells: Vec<String> = row.iter().map(|v| v.to_string()).collect();
            out += &format!("{},{}\n", self.classes[c], cells.join(","));
        }
        out
    }
}

/// Python's `format(x, ".{digits}f")`: the exact binary value rounded half to even.
fn fixed(x: f64, digits: usize) -> String {
    // Rust's `{:.N}` formatting also rounds the exact binary value (ties to even), like Python.
    format!("{x:.digits$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes() -> Vec<String> {
        meld_shared::Emotion::ALL
            .iter()
            .map(|e| e.name().to_string())
            .collect()
    }

    #[test]
    fn all_neutral_predictor_on_meld_dev_support() {
        let support = [153, 22, 40, 163, 470, 111, 150];
        let y_true: Vec<usize> = support
            .iter()
            .enumerate()
            .flat_map(|(c, n)| vec![c; *n])
            .collect();
        let y_pred = vec![4; y_true.len()];
        let m = Metrics::compute(&classes(), &y_true, &y_pred);
        assert!((m.accuracy - 470.0 / 1109.0).abs() < 1e-12);
        let f1_neutral = 2.0 * 470.0 / (1109.0 + 470.0);
        assert!((m.f1_weighted - f1_neutral * 470.0 / 1109.0).abs() < 1e-12);
        assert!((m.f1_weighted - 0.2523).abs() < 1e-3, "Table 4 row 01: 25%");
        let report = m.report();
        assert!(
            report.contains("     neutral       0.42      1.00      0.60       470\n"),
            "{report}"
        );
        assert!(
            report.contains("    accuracy                           0.42      1109\n"),
            "{report}"
        );
    }
}
