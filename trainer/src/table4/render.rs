//! Table 4 and Table 3 with our numbers beside the paper's: the files `erc-train table4` leaves in its output
//! folder, and the short table it prints.
//!
//! * `table4.md`: one line per row, every cell `paper / ours` (`/ corrected` with `--corrected`); per-class F1 in %
//!   as the report prints them, weighted F1 and accuracy as fractions, Δ = ours − paper weighted F1; the rows'
//!   notes as footnotes;
//! * `table4.csv`: the same at full precision, columns named after whose number they hold, empty where not run;
//! * `table3.md`: the `test` split for the rows the report evaluated on it (02 and 24);
//! * `table4.png`: weighted F1 per row, ours beside the paper's.
//!
//! The plot needs a TrueType font for its text: DejaVu Sans from Debian's `fonts-dejavu-core`
//! (`/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf`) or the file named by `ERC_FONT`. Without one it is drawn
//! without text and a warning says so.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use plotters::prelude::*;

use super::paper::{PaperRow, Scores, CLASSES};
use crate::error::Error;
use crate::train::report::{draw_atomic, font, write_atomic};

/// What became of one of our runs of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Not selected, or not reached yet.
    NotRun,
    /// The run stopped with this error.
    Failed(String),
    /// Evaluated on `valid`.
    Done(Scores),
    /// A run that is not the row as the paper ran it (`what`: "smoke", "2 of 10 epochs", "max-rows 48", "other
    /// data", …): listed with its weighted F1, never compared with the paper's.
    Other { what: String, scores: Scores },
}

/// One of our runs of a row: its `valid` outcome and, for the rows of Table 3, its `test` scores.
#[derive(Debug, Clone, PartialEq)]
pub struct RowResult {
    pub valid: Outcome,
    /// `None` where the run was not evaluated on `test`; only read for rows with [`PaperRow::test`].
    pub test: Option<Scores>,
}

impl RowResult {
    /// A row we did not run.
    pub fn not_run() -> Self {
        RowResult {
            valid: Outcome::NotRun,
            test: None,
        }
    }
}

/// The paper's rows with one or two columns of our results: `ours` (the reference's switches) and, with
/// `--corrected`, `corrected`. Built once, after checking that every column has one result per row.
#[derive(Debug, Clone, Copy)]
pub struct Results<'a> {
    rows: &'a [PaperRow],
    ours: &'a [RowResult],
    corrected: Option<&'a [RowResult]>,
}

/// One result column: its name in headers and its results, one per row.
type Column<'a> = (&'static str, &'a [RowResult]);

/// Weighted F1 on `valid` of a model that always answers "neutral" (470 of 1109 rows): rows 01, 08 and 11 of the
/// report sit exactly there, so the plot draws it as the floor to beat.
pub(super) const ALL_NEUTRAL_WEIGHTED_F1: f64 = 0.25;

/// Failure reasons are cut to this many characters in the tables (the CSV keeps the whole first line).
const REASON_CHARS: usize = 60;

impl<'a> Results<'a> {
    /// `ours[i]` and `corrected[i]` are the results for `rows[i]`; a column of another length is an error (a
    /// misaligned column would print one row's numbers beside another's).
    pub fn new(
        rows: &'a [PaperRow],
        ours: &'a [RowResult],
        corrected: Option<&'a [RowResult]>,
    ) -> Result<Self, String> {
        let columns = [("ours", Some(ours)), ("corrected", corrected)];
        for (name, column) in columns {
            if let Some(column) = column {
                if column.len() != rows.len() {
                    return Err(format!(
                        "{} {name} results for {} Table 4 rows",
                        column.len(),
                        rows.len()
                    ));
                }
            }
        }
        Ok(Results {
            rows,
            ours,
            corrected,
        })
    }

    /// Writes `table4.md`, `table4.csv`, `table3.md` and `table4.png` into `out` (created if missing), each
    /// aside and renamed into place: the tables are shared by every task of a Slurm array, and a reader (or a
    /// second writer) never sees one half written.
    pub fn write_all(&self, out: &Path) -> io::Result<()> {
        std::fs::create_dir_all(out)?;
        write_atomic(&out.join("table4.md"), self.table4_markdown().as_bytes())?;
        write_atomic(&out.join("table4.csv"), &self.table4_csv()?)?;
        write_atomic(&out.join("table3.md"), self.table3_markdown().as_bytes())?;
        // the plot is drawn aside and renamed into place, as every other plot of a run
        draw_atomic(&out.join("table4.png"), |tmp| {
            self.plot(tmp).map_err(|e| Error::io(tmp, e))
        })
        .map_err(io::Error::other)
    }

    /// A short table for the terminal: row, name, weighted F1 (paper, ours, Δ; and corrected), status.
    pub fn terminal_table(&self) -> String {
        let width = self
            .rows
            .iter()
            .map(|r| r.name.chars().count())
            .max()
            .unwrap_or(0)
            .max(4);
        let mut out = format!("{:<3} {:<width$} {:>9}", "row", "name", "paper wF1");
        for (name, _) in self.columns() {
            let _ = write!(out, " {:>14} {:>6}", format!("{name} wF1"), "Δ");
        }
        out += "  status\n";
        for (i, row) in self.rows.iter().enumerate() {
            let _ = write!(
                out,
                "{:<3} {:<width$} {:>9.2}",
                row.label(),
                row.name,
                row.weighted_f1
            );
            for (_, column) in self.columns() {
                match column[i].valid {
                    Outcome::Done(s) => {
                        let delta = signed(s.weighted_f1 - row.weighted_f1);
                        let _ = write!(out, " {:>14.3} {delta:>6}", s.weighted_f1);
                    }
                    _ => {
                        let _ = write!(out, " {:>14} {:>6}", "–", "");
                    }
                }
            }
            let _ = writeln!(out, "  {}", self.status(i, &|r| short_status(&r.valid)));
        }
        out
    }

    /// The result columns present, with their names.
    fn columns(&self) -> Vec<Column<'a>> {
        let mut columns = vec![("ours", self.ours)];
        if let Some(corrected) = self.corrected {
            columns.push(("corrected", corrected));
        }
        columns
    }

    /// "paper / ours" or "paper / ours / corrected": what every cell holds.
    fn cell_legend(&self) -> String {
        let names: Vec<&str> = self.columns().iter().map(|(name, _)| *name).collect();
        format!("paper / {}", names.join(" / "))
    }

    /// One status for row `i`: the shared status when the columns agree, else each column's.
    fn status(&self, i: usize, status: &dyn Fn(&RowResult) -> String) -> String {
        let statuses: Vec<(&str, String)> = self
            .columns()
            .iter()
            .map(|(name, column)| (*name, status(&column[i])))
            .collect();
        if statuses.iter().all(|(_, s)| *s == statuses[0].1) {
            statuses[0].1.clone()
        } else {
            statuses
                .iter()
                .map(|(name, s)| format!("{name}: {s}"))
                .collect::<Vec<_>>()
                .join("; ")
        }
    }

    fn table4_markdown(&self) -> String {
        let columns = self.columns();
        let mut md =
            String::from("# HLM12ERC Table 4: the paper's numbers and ours (MELD `valid`)\n\n");
        let _ = writeln!(
            md,
            "Each cell: {}. Per-class F1 in % (as the report prints them); weighted F1 and accuracy as \
             fractions; Δ = ours − paper weighted F1. The paper's accuracy comes from its notebook (Table 4 does \
             not print it). – = no result.\n",
            self.cell_legend()
        );
        let delta_header = if columns.len() > 1 {
            "Δ (ours / corrected)"
        } else {
            "Δ"
        };
        let mut header = vec!["row", "name"];
        header.extend(CLASSES);
        header.extend(["weighted F1", delta_header, "accuracy", "status"]);
        let _ = writeln!(md, "| {} |", header.join(" | "));
        let align: Vec<&str> = header
            .iter()
            .map(|h| {
                if *h == "name" || *h == "status" {
                    "---"
                } else {
                    "---:"
                }
            })
            .collect();
        let _ = writeln!(md, "|{}|", align.join("|"));
        let mut footnotes = Vec::new();
        for (i, row) in self.rows.iter().enumerate() {
            let ours: Vec<Option<Scores>> =
                columns.iter().map(|(_, c)| done(&c[i].valid)).collect();
            let mut cells = vec![row.label(), escape(&row.name)];
            if let Some(note) = &row.note {
                cells[1] += &format!(" [^{}]", row.label());
                footnotes.push(format!(
                    "[^{}]: Row {}: {}",
                    row.label(),
                    row.label(),
                    escape(note)
                ));
            }
            for k in 0..CLASSES.len() {
                cells.push(paired(row.f1[k], &ours, |s| s.f1[k], percent));
            }
            cells.push(paired(row.weighted_f1, &ours, |s| s.weighted_f1, fraction));
            cells.push(deltas(row.weighted_f1, &ours));
            cells.push(paired(row.accuracy, &ours, |s| s.accuracy, fraction));
            cells.push(escape(&self.status(i, &|r| short_status(&r.valid))));
            let _ = writeln!(md, "| {} |", cells.join(" | "));
        }
        md += "\n";
        for (name, column) in &columns {
            let _ = writeln!(md, "{}", self.summary(name, column));
        }
        if !footnotes.is_empty() {
            md += "\n";
            for f in footnotes {
                let _ = writeln!(md, "{f}");
            }
        }
        md
    }

    /// "ours: 24 of 30 rows done (1 failed, 5 not run); Δ weighted F1 mean -0.01, mean |Δ| 0.03."
    fn summary(&self, name: &str, column: &[RowResult]) -> String {
        let count = |f: fn(&Outcome) -> bool| column.iter().filter(|r| f(&r.valid)).count();
        let failed = count(|o| matches!(o, Outcome::Failed(_)));
        let not_run = count(|o| matches!(o, Outcome::NotRun));
        let other = count(|o| matches!(o, Outcome::Other { .. }));
        let deltas: Vec<f64> = self
            .rows
            .iter()
            .zip(column)
            .filter_map(|(row, r)| done(&r.valid).map(|s| s.weighted_f1 - row.weighted_f1))
            .collect();
        let mut line = format!(
            "{name}: {} of {} rows done ({failed} failed, {not_run} not run{})",
            deltas.len(),
            self.rows.len(),
            if other > 0 {
                format!(", {other} not as the paper ran them")
            } else {
                String::new()
            }
        );
        if !deltas.is_empty() {
            let n = deltas.len() as f64;
            let mean = deltas.iter().sum::<f64>() / n;
            let mean_abs = deltas.iter().map(|d| d.abs()).sum::<f64>() / n;
            let _ = write!(
                line,
                "; Δ weighted F1: mean {}, mean |Δ| {mean_abs:.2}",
                signed(mean)
            );
        }
        line + "."
    }

    fn table4_csv(&self) -> io::Result<Vec<u8>> {
        let columns = self.columns();
        let mut header: Vec<String> = ["row", "name", "config"].map(String::from).to_vec();
        header.extend(score_headers("paper"));
        for (name, _) in &columns {
            header.extend(score_headers(name));
            // `ours` is the table's main result: its Δ and status keep the plain names.
            let prefix = if *name == "ours" {
                String::new()
            } else {
                format!("{name}_")
            };
            header.push(format!("{prefix}diff_weighted_f1"));
            header.push(format!("{prefix}status"));
        }
        let mut writer = csv::Writer::from_writer(Vec::new());
        writer.write_record(&header)?;
        for (i, row) in self.rows.iter().enumerate() {
            let mut record = vec![row.label(), row.name.clone(), row.config.clone()];
            record.extend(scores_cells(Some(&row.valid())));
            for (_, column) in &columns {
                let valid = &column[i].valid;
                let scores = done(valid);
                record.extend(scores_cells(scores.as_ref()));
                record.push(
                    scores
                        .map(|s| format!("{:.4}", s.weighted_f1 - row.weighted_f1))
                        .unwrap_or_default(),
                );
                record.push(match valid {
                    Outcome::Failed(reason) => format!("failed: {}", first_line(reason)),
                    other => short_status(other),
                });
            }
            writer.write_record(&record)?;
        }
        writer
            .into_inner()
            .map_err(|e| io::Error::other(e.to_string()))
    }

    fn table3_markdown(&self) -> String {
        let columns = self.columns();
        let tested: Vec<(usize, &PaperRow, Scores)> = self
            .rows
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.test.map(|t| (i, r, t)))
            .collect();
        let mut md =
            String::from("# HLM12ERC Table 3: the paper's numbers and ours (MELD `test`)\n\n");
        if tested.is_empty() {
            md += "None of these rows has test numbers in the report's Table 3.\n";
            return md;
        }
        let _ = writeln!(
            md,
            "Each cell: {}. Per-class F1 in %; weighted F1 and accuracy as fractions; Δ = ours − paper \
             weighted F1. The paper's accuracy comes from its notebook (the report prints F1 only). – = no \
             result.\n",
            self.cell_legend()
        );
        let mut header = vec![String::new()];
        header.extend(
            tested
                .iter()
                .map(|(_, r, _)| format!("{} {}", r.label(), escape(&r.name))),
        );
        let _ = writeln!(md, "| {} |", header.join(" | "));
        let _ = writeln!(md, "|---|{}", "---:|".repeat(tested.len()));
        let ours =
            |i: usize| -> Vec<Option<Scores>> { columns.iter().map(|(_, c)| c[i].test).collect() };
        let mut line = |label: &str, cell: &dyn Fn(usize, &PaperRow, &Scores) -> String| {
            let cells: Vec<String> = tested.iter().map(|(i, r, t)| cell(*i, r, t)).collect();
            let _ = writeln!(md, "| {label} | {} |", cells.join(" | "));
        };
        for (k, class) in CLASSES.iter().enumerate() {
            line(class, &|i, _, t| {
                paired(t.f1[k], &ours(i), |s| s.f1[k], percent)
            });
        }
        line("weighted F1", &|i, _, t| {
            paired(t.weighted_f1, &ours(i), |s| s.weighted_f1, fraction)
        });
        line("Δ weighted F1", &|i, _, t| deltas(t.weighted_f1, &ours(i)));
        line("accuracy", &|i, _, t| {
            paired(t.accuracy, &ours(i), |s| s.accuracy, fraction)
        });
        line("paper's eval batch", &|_, r, _| r.eval_batch.to_string());
        line("status", &|i, _, _| escape(&self.status(i, &test_status)));
        md
    }

    /// Paired bars per row: the paper's weighted F1 and ours (and corrected); rows without a result of ours show
    /// the paper's bar alone.
    fn plot(&self, path: &Path) -> io::Result<()> {
        let columns = self.columns();
        let n = self.rows.len();
        let y_max = self
            .rows
            .iter()
            .enumerate()
            .flat_map(|(i, r)| {
                std::iter::once(r.weighted_f1).chain(
                    columns
                        .iter()
                        .filter_map(move |(_, c)| done(&c[i].valid).map(|s| s.weighted_f1)),
                )
            })
            .filter(|v| v.is_finite())
            .fold(0.7f64, |m, v| m.max(v + 0.05))
            .min(1.0);
        let paper_colour = RGBColor(160, 160, 160);
        let colours = [RGBColor(31, 119, 180), RGBColor(255, 127, 14)];
        let bars = 1 + columns.len();
        let bar_width = 0.8 / bars as f64;
        // Left edge of bar `k` in group `i` (groups centred on 1, 2, …, n).
        let left = move |i: usize, k: usize| i as f64 + 1.0 - 0.4 + k as f64 * bar_width;
        let bar = move |i: usize, k: usize, v: f64, colour: RGBColor| {
            Rectangle::new(
                [(left(i, k), 0.0), (left(i, k) + bar_width * 0.92, v)],
                colour.filled(),
            )
        };
        let mut series = vec![(
            "paper".to_string(),
            paper_colour,
            self.rows
                .iter()
                .enumerate()
                .map(|(i, r)| bar(i, 0, r.weighted_f1, paper_colour))
                .collect::<Vec<_>>(),
        )];
        for (k, ((name, column), colour)) in columns.iter().zip(colours).enumerate() {
            let drawn = column
                .iter()
                .enumerate()
                .filter_map(|(i, r)| done(&r.valid).map(|s| bar(i, k + 1, s.weighted_f1, colour)))
                .collect();
            series.push((name.to_string(), colour, drawn));
        }
        let chart = RowChart {
            size: ((200 + 45 * n as u32).max(600), 520),
            caption: "HLM12ERC Table 4: weighted F1 on MELD valid, the paper's and ours",
            caption_size: 20,
            labels: self.rows.iter().map(PaperRow::label).collect(),
            x_desc: Some("Table 4 row"),
            y_desc: "weighted F1 (valid)",
            y_max,
            floor_label: format!("always \"neutral\" ({ALL_NEUTRAL_WEIGHTED_F1:.2})"),
            legend: SeriesLabelPosition::UpperLeft,
        };
        draw_row_chart(path, &chart, series)
    }
}

/// A series of bars of a table's plot: its legend name, colour and bars.
pub(super) type BarSeries = (String, RGBColor, Vec<Rectangle<(f64, f64)>>);

/// What a table's plot says around its bars.
pub(super) struct RowChart<'a> {
    pub size: (u32, u32),
    pub caption: &'a str,
    pub caption_size: u32,
    /// One per row, drawn under the row's group of bars (groups centred on 1, 2, …, n).
    pub labels: Vec<String>,
    pub x_desc: Option<&'a str>,
    pub y_desc: &'a str,
    pub y_max: f64,
    /// The legend of the always-"neutral" line.
    pub floor_label: String,
    pub legend: SeriesLabelPosition,
}

/// A table's plot (Table 4's and the seeds'): the bars of each series over the rows, the weighted F1 of always
/// predicting "neutral" as a line, the legend. Without a font (`font()`), bars and line only.
pub(super) fn draw_row_chart(
    path: &Path,
    spec: &RowChart,
    series: Vec<BarSeries>,
) -> io::Result<()> {
    let err = |e: &dyn std::fmt::Display| {
        io::Error::other(format!("{}: cannot draw the plot: {e}", path.display()))
    };
    let n = spec.labels.len();
    let root = BitMapBackend::new(path, spec.size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let font = font();
    let mut builder = ChartBuilder::on(&root);
    builder
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60);
    if let Some(font) = font {
        builder.caption(spec.caption, (font, spec.caption_size));
    }
    let mut chart = builder
        .build_cartesian_2d(0.5f64..n as f64 + 0.5, 0f64..spec.y_max)
        .map_err(|e| err(&e))?;
    if let Some(font) = font {
        let labels = &spec.labels;
        let format_label = |x: &f64| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 1.0 {
                labels.get(i as usize - 1).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        let mut mesh = chart.configure_mesh();
        mesh.disable_x_mesh()
            .x_labels(n + 1)
            .x_label_formatter(&format_label)
            .y_desc(spec.y_desc)
            .label_style((font, 14))
            .light_line_style(WHITE);
        if let Some(x_desc) = spec.x_desc {
            mesh.x_desc(x_desc);
        }
        mesh.draw().map_err(|e| err(&e))?;
    }
    for (name, colour, rectangles) in series {
        let drawn = chart.draw_series(rectangles).map_err(|e| err(&e))?;
        if font.is_some() {
            drawn.label(name).legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled())
            });
        }
    }
    let floor = chart
        .draw_series(LineSeries::new(
            [
                (0.5, ALL_NEUTRAL_WEIGHTED_F1),
                (n as f64 + 0.5, ALL_NEUTRAL_WEIGHTED_F1),
            ],
            BLACK.mix(0.5).stroke_width(1),
        ))
        .map_err(|e| err(&e))?;
    if let Some(font) = font {
        floor
            .label(spec.floor_label.clone())
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], BLACK.mix(0.5)));
        chart
            .configure_series_labels()
            .position(spec.legend.clone())
            .label_font((font, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))
}

/// The status of a row's `test` evaluation: done, else why there is none.
fn test_status(r: &RowResult) -> String {
    match (&r.test, &r.valid) {
        (Some(_), _) => "done".into(),
        (None, Outcome::Done(_)) => "not evaluated on test".into(),
        (None, other) => short_status(other),
    }
}

pub(super) fn done(o: &Outcome) -> Option<Scores> {
    match o {
        Outcome::Done(s) => Some(*s),
        _ => None,
    }
}

/// "done", "not run" or "failed: <first line of the reason, cut short>".
pub(super) fn short_status(o: &Outcome) -> String {
    match o {
        Outcome::NotRun => "not run".into(),
        Outcome::Done(_) => "done".into(),
        Outcome::Other { what, scores } => {
            format!("{what}: wF1 {:.3}, not compared", scores.weighted_f1)
        }
        Outcome::Failed(reason) => {
            let line = first_line(reason);
            if line.chars().count() > REASON_CHARS {
                let cut: String = line.chars().take(REASON_CHARS - 1).collect();
                format!("failed: {}…", cut.trim_end())
            } else {
                format!("failed: {line}")
            }
        }
    }
}

pub(super) fn first_line(text: &str) -> &str {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
}

/// Pipes would end a markdown cell; newlines would end the table.
pub(super) fn escape(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn percent(v: f64) -> String {
    format!("{:.0}", v * 100.0)
}

pub(super) fn fraction(v: f64) -> String {
    format!("{v:.2}")
}

/// A difference with its sign, 2 decimals; one that rounds to zero is "0.00" (never "-0.00").
fn signed(d: f64) -> String {
    let rounded = (d * 100.0).round() / 100.0;
    if rounded == 0.0 {
        "0.00".into()
    } else {
        format!("{rounded:+.2}")
    }
}

/// "paper / ours[ / corrected]" with "–" for a missing result.
fn paired(
    paper: f64,
    ours: &[Option<Scores>],
    pick: impl Fn(&Scores) -> f64,
    fmt: fn(f64) -> String,
) -> String {
    let mut cell = fmt(paper);
    for s in ours {
        cell += " / ";
        cell += &s.as_ref().map_or("–".into(), |s| fmt(pick(s)));
    }
    cell
}

/// Δ weighted F1 of each column, "–" where missing; empty when no column has a result.
fn deltas(paper: f64, ours: &[Option<Scores>]) -> String {
    if ours.iter().all(Option::is_none) {
        return "–".into();
    }
    ours.iter()
        .map(|s| s.map_or("–".into(), |s| signed(s.weighted_f1 - paper)))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// The nine score column names of the CSV for `who`: `<who>_anger`, …, `<who>_weighted_f1`, `<who>_accuracy`.
fn score_headers(who: &str) -> Vec<String> {
    CLASSES
        .iter()
        .copied()
        .chain(["weighted_f1", "accuracy"])
        .map(|c| format!("{who}_{c}"))
        .collect()
}

/// The nine score cells of the CSV (per class, weighted, accuracy) at full precision, empty without scores.
fn scores_cells(s: Option<&Scores>) -> Vec<String> {
    match s {
        Some(s) => {
            s.f1.iter()
                .chain([&s.weighted_f1, &s.accuracy])
                .map(|v| v.to_string())
                .collect()
        }
        None => vec![String::new(); CLASSES.len() + 2],
    }
}

#[cfg(test)]
mod tests {
    use super::super::paper;
    use super::*;

    const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

    fn scores(weighted_f1: f64) -> Scores {
        Scores {
            f1: [0.31, 0.0, 0.05, 0.42, 0.58, 0.2, 0.36],
            weighted_f1,
            accuracy: 0.4567,
        }
    }

    /// Rows 01, 02 and 24 done (02 and 24 also on test), row 03 failed, the rest not run.
    fn ours(rows: &[PaperRow]) -> Vec<RowResult> {
        rows.iter()
            .map(|r| match r.row {
                1 => RowResult {
                    valid: Outcome::Done(scores(0.2513)),
                    test: None,
                },
                2 => RowResult {
                    valid: Outcome::Done(scores(0.2884)),
                    test: Some(scores(0.3012)),
                },
                3 => RowResult {
                    valid: Outcome::Failed("CUDA out of memory | tried 2 GiB\nbacktrace: …".into()),
                    test: None,
                },
                24 => RowResult {
                    valid: Outcome::Done(scores(0.5345)),
                    test: Some(scores(0.5523)),
                },
                _ => RowResult::not_run(),
            })
            .collect()
    }

    /// Corrected: only row 24 done, row 02 done on valid but not on test.
    fn corrected(rows: &[PaperRow]) -> Vec<RowResult> {
        rows.iter()
            .map(|r| match r.row {
                2 => RowResult {
                    valid: Outcome::Done(scores(0.30)),
                    test: None,
                },
                24 => RowResult {
                    valid: Outcome::Done(scores(0.5612)),
                    test: Some(scores(0.5701)),
                },
                _ => RowResult::not_run(),
            })
            .collect()
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).expect("written")
    }

    fn md_line<'t>(md: &'t str, row: &str) -> &'t str {
        md.lines()
            .find(|l| l.starts_with(&format!("| {row} |")))
            .expect("row line")
    }

    #[test]
    fn writes_all_files_with_ours() {
        let rows = paper::rows().expect("table");
        let ours = ours(&rows);
        let results = Results::new(&rows, &ours, None).expect("lengths match");
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("table4-out");
        results.write_all(&out).expect("written");

        let md = read(&out.join("table4.md"));
        assert!(md.contains("Each cell: paper / ours."), "{md}");
        assert!(md.contains("| row | name | anger | disgust | fear | joy | neutral | sadness | surprise | weighted F1 | Δ | accuracy | status |"));
        // Row 01: the paper's neutral 60 % and weighted 0.25 beside ours (58 %, 0.25, acc 0.46).
        let r01 = md_line(&md, "01");
        assert!(
            r01.contains("| 60 / 58 |")
                && r01.contains("| 0.25 / 0.25 | 0.00 | 0.42 / 0.46 | done |"),
            "{r01}"
        );
        let r24 = md_line(&md, "24");
        assert!(
            r24.contains("| 38 / 31 |") && r24.contains("| 0.55 / 0.53 | -0.02 |"),
            "{r24}"
        );
        assert!(md_line(&md, "02").contains("| 0.27 / 0.29 | +0.02 |"));
        let r03 = md_line(&md, "03");
        assert!(
            r03.contains("| 0.25 / – | – |")
                && r03.contains("failed: CUDA out of memory \\| tried 2 GiB |"),
            "{r03}"
        );
        assert!(md_line(&md, "04").contains("| 0.29 / – | – | 0.43 / – | not run |"));
        assert!(md_line(&md, "28").contains("mha1024-ff1024x512x512_da02 [^28]"));
        assert!(
            md.contains("\n[^28]: Row 28: Re-evaluation of row 26's model"),
            "{md}"
        );
        assert!(md.contains("\n[^29]: Row 29: Re-evaluation of row 27's model"));
        assert!(md.contains("\n[^22]: Row 22: "));
        assert!(
            md.contains("ours: 3 of 30 rows done (1 failed, 26 not run); Δ weighted F1: mean"),
            "{md}"
        );
        assert_eq!(
            md.lines()
                .filter(|l| l.starts_with("| ") && !l.starts_with("| row"))
                .count(),
            30
        );

        let mut reader = csv::Reader::from_path(out.join("table4.csv")).expect("csv");
        let header: Vec<String> = reader
            .headers()
            .expect("header")
            .iter()
            .map(String::from)
            .collect();
        let expected: Vec<String> = ["row", "name", "config"]
            .iter()
            .map(|s| s.to_string())
            .chain(score_headers("paper"))
            .chain(score_headers("ours"))
            .chain(["diff_weighted_f1".into(), "status".into()])
            .collect();
        assert_eq!(header, expected);
        assert_eq!(header[3], "paper_anger");
        assert_eq!(header[12], "ours_anger");
        let records: Vec<csv::StringRecord> =
            reader.records().map(|r| r.expect("record")).collect();
        assert_eq!(records.len(), 30);
        let cell = |r: &csv::StringRecord, name: &str| {
            r.get(header.iter().position(|h| h == name).expect("column"))
                .unwrap_or("")
                .to_string()
        };
        let r01 = &records[0];
        assert_eq!(cell(r01, "row"), "01");
        assert_eq!(cell(r01, "config"), "baseline-cce.yml");
        assert_eq!(cell(r01, "paper_neutral").parse::<f64>().ok(), Some(0.60));
        assert_eq!(
            cell(r01, "ours_weighted_f1").parse::<f64>().ok(),
            Some(0.2513)
        );
        assert_eq!(cell(r01, "diff_weighted_f1"), "0.0013");
        assert_eq!(cell(r01, "status"), "done");
        let r03 = &records[2];
        assert_eq!(
            cell(r03, "status"),
            "failed: CUDA out of memory | tried 2 GiB"
        );
        let r04 = &records[3];
        assert_eq!(
            cell(r04, "paper_weighted_f1").parse::<f64>().ok(),
            Some(0.29)
        );
        assert_eq!(cell(r04, "ours_weighted_f1"), "");
        assert_eq!(cell(r04, "diff_weighted_f1"), "");
        assert_eq!(cell(r04, "status"), "not run");

        let t3 = read(&out.join("table3.md"));
        assert!(
            t3.contains("|  | 02 baseline-dice | 24 wav2vec2-200Kx1536 |"),
            "{t3}"
        );
        assert!(t3.contains("| anger | 13 / 31 | 43 / 31 |"), "{t3}");
        assert!(
            t3.contains("| weighted F1 | 0.27 / 0.30 | 0.57 / 0.55 |"),
            "{t3}"
        );
        assert!(t3.contains("| Δ weighted F1 | +0.03 | -0.02 |"), "{t3}");
        assert!(
            t3.contains("| accuracy | 0.29 / 0.46 | 0.59 / 0.46 |"),
            "{t3}"
        );
        assert!(t3.contains("| paper's eval batch | 64 | 8 |"), "{t3}");

        let png = std::fs::read(out.join("table4.png")).expect("png");
        assert!(png.starts_with(PNG_SIGNATURE));
        assert!(png.len() > 5_000, "{} bytes", png.len());
    }

    #[test]
    fn writes_the_corrected_column() {
        let rows = paper::rows().expect("table");
        let (ours, corrected) = (ours(&rows), corrected(&rows));
        let results = Results::new(&rows, &ours, Some(&corrected)).expect("lengths match");
        let dir = tempfile::tempdir().expect("tempdir");
        results.write_all(dir.path()).expect("written");

        let md = read(&dir.path().join("table4.md"));
        assert!(md.contains("Each cell: paper / ours / corrected."));
        assert!(md.contains("| Δ (ours / corrected) |"));
        let r24 = md_line(&md, "24");
        assert!(
            r24.contains("| 0.55 / 0.53 / 0.56 | -0.02 / +0.01 | 0.58 / 0.46 / 0.46 | done |"),
            "{r24}"
        );
        let r01 = md_line(&md, "01");
        assert!(
            r01.contains("| 0.25 / 0.25 / – | 0.00 / – |")
                && r01.contains("ours: done; corrected: not run"),
            "{r01}"
        );
        assert!(md_line(&md, "05").contains("| 0.50 / – / – | – | 0.52 / – / – | not run |"));
        assert!(md.contains("corrected: 2 of 30 rows done (0 failed, 28 not run)"));

        let mut reader = csv::Reader::from_path(dir.path().join("table4.csv")).expect("csv");
        let header: Vec<String> = reader
            .headers()
            .expect("header")
            .iter()
            .map(String::from)
            .collect();
        assert_eq!(header.len(), 3 + 9 + (9 + 2) * 2);
        assert_eq!(
            &header[header.len() - 2..],
            ["corrected_diff_weighted_f1", "corrected_status"]
        );
        assert!(header.contains(&"corrected_accuracy".to_string()));
        let r24 = reader.records().nth(23).expect("row 24").expect("record");
        assert_eq!(r24.get(header.len() - 1), Some("done"));
        assert_eq!(r24.get(header.len() - 2), Some("0.0112"));

        let t3 = read(&dir.path().join("table3.md"));
        assert!(
            t3.contains("| weighted F1 | 0.27 / 0.30 / – | 0.57 / 0.55 / 0.57 |"),
            "{t3}"
        );
        assert!(
            t3.contains("| status | ours: done; corrected: not evaluated on test | done |"),
            "{t3}"
        );

        let png = std::fs::read(dir.path().join("table4.png")).expect("png");
        assert!(png.starts_with(PNG_SIGNATURE) && png.len() > 5_000);
    }

    #[test]
    fn a_selection_without_table3_rows() {
        let rows: Vec<PaperRow> = paper::rows()
            .expect("table")
            .into_iter()
            .filter(|r| r.row == 7)
            .collect();
        let ours = vec![RowResult {
            valid: Outcome::Done(scores(0.3)),
            test: None,
        }];
        let results = Results::new(&rows, &ours, None).expect("lengths match");
        let dir = tempfile::tempdir().expect("tempdir");
        results.write_all(dir.path()).expect("written");
        assert!(read(&dir.path().join("table3.md")).contains("None of these rows has test numbers"));
        assert!(read(&dir.path().join("table4.md")).contains("ours: 1 of 1 rows done"));
        let png = std::fs::read(dir.path().join("table4.png")).expect("png");
        assert!(png.starts_with(PNG_SIGNATURE));
    }

    #[test]
    fn rejects_columns_of_the_wrong_length() {
        let rows = paper::rows().expect("table");
        let ours = ours(&rows);
        let e = Results::new(&rows, &ours[..29], None).expect_err("one short");
        assert!(e.contains("29 ours results for 30"), "{e}");
        let e = Results::new(&rows, &ours, Some(&ours[..2])).expect_err("corrected short");
        assert!(e.contains("2 corrected results"), "{e}");
    }

    #[test]
    fn terminal_table_lists_every_row() {
        let rows = paper::rows().expect("table");
        let (ours, corrected) = (ours(&rows), corrected(&rows));
        let text = Results::new(&rows, &ours, None)
            .expect("ok")
            .terminal_table();
        assert_eq!(text.lines().count(), 31);
        let first = text.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("row name")
                && first.contains("paper wF1")
                && first.contains("ours wF1"),
            "{text}"
        );
        let r24 = text.lines().find(|l| l.starts_with("24 ")).expect("row 24");
        assert!(
            r24.contains("0.55")
                && r24.contains("0.534")
                && r24.contains("-0.02")
                && r24.ends_with("  done"),
            "{r24}"
        );
        let r03 = text.lines().find(|l| l.starts_with("03 ")).expect("row 03");
        assert!(
            r03.ends_with("failed: CUDA out of memory | tried 2 GiB"),
            "{r03}"
        );
        assert!(text
            .lines()
            .any(|l| l.starts_with("30 ") && l.ends_with("not run")));

        let both = Results::new(&rows, &ours, Some(&corrected))
            .expect("ok")
            .terminal_table();
        assert!(both
            .lines()
            .next()
            .unwrap_or_default()
            .contains("corrected wF1"));
        let r24 = both.lines().find(|l| l.starts_with("24 ")).expect("row 24");
        assert!(r24.contains("0.561") && r24.contains("+0.01"), "{r24}");
    }

    #[test]
    fn formatting_helpers() {
        assert_eq!(signed(-0.004), "0.00");
        assert_eq!(signed(0.004), "0.00");
        assert_eq!(signed(0.02), "+0.02");
        assert_eq!(signed(-0.016), "-0.02");
        assert_eq!(percent(0.38), "38");
        assert_eq!(percent(0.0), "0");
        assert_eq!(fraction(0.5), "0.50");
        let long = format!("{}\nsecond line", "x".repeat(100));
        let status = short_status(&Outcome::Failed(long));
        assert!(
            status.starts_with("failed: xxx") && status.ends_with('…'),
            "{status}"
        );
        assert_eq!(status.chars().count(), "failed: ".len() + REASON_CHARS);
        assert_eq!(
            short_status(&Outcome::Failed("\n  boom  \nmore".into())),
            "failed: boom"
        );
        assert_eq!(escape("a|b\nc"), "a\\|b c");
    }
}
