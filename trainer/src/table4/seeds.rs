//! The seeds table (`erc-train table4 --table seeds`): the systems of the documents the project was founded on
//! (`shared/reference/seed-systems.md`), each a config of ours, run on MELD with the same preflight, estimate,
//! resume and `failed.txt` as Table 4; beside each row, the seed's own published figure ON ITS OWN DATASET,
//! labelled as such and never compared (other corpora, languages, label sets and protocols).
//!
//! The rows are `configs/seeds.csv` (embedded at build time, as `configs/table4.csv` is), their configs
//! `configs/seeds/*.yml` (carried by the binary). Columns:
//!
//! * `row` (01, 02, …), `name` (the row folder's name), `system` (what the row is), `config` (a file name under
//!   `configs/seeds/`);
//! * `their_metric`, `their_value`, `their_dataset`: the seed's own headline figure for this row and the dataset
//!   it was measured on; `their_other`: its other published numbers for the row (free text);
//! * `note`: what differs from the seed on MELD, or empty.
//!
//! Systems enter the table as they are implemented, under their own row numbers: TMN and its two fusion ablations
//! (01–03), MESM at p = 0.5 and 0.7 and its dense FE2E variant (04–06), faces + landmarks (07–09), frames + voice
//! + LSTM from a pretrained and a scratch ResNet (10–11).
//!
//! [`Results::write_all`] writes `seeds.md`, `seeds.csv` (full precision, `ours_*` and `their_*` columns) and
//! `seeds.png` (our weighted F1 per row, valid and test; the seeds' figures are not drawn: no common axis exists).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io;
use std::path::Path;

use plotters::prelude::*;
use serde::Deserialize;

use super::paper::{Scores, CLASSES};
use super::render::{done, escape, fraction, short_status, Outcome, RowResult};
use crate::error::Error;
use crate::train::report::{draw_atomic, write_atomic};

const SOURCE: &str = "configs/seeds.csv";
const SEEDS_CSV: &str = include_str!("../../../configs/seeds.csv");

/// The YAML of `configs/seeds/<file>`, for the files `configs/seeds.csv` names.
pub fn yaml(file: &str) -> Option<&'static str> {
    Some(match file {
        "tmn.yml" => include_str!("../../../configs/seeds/tmn.yml"),
        "tmn-concat.yml" => include_str!("../../../configs/seeds/tmn-concat.yml"),
        "tmn-xattn.yml" => include_str!("../../../configs/seeds/tmn-xattn.yml"),
        "mesm-p05.yml" => include_str!("../../../configs/seeds/mesm-p05.yml"),
        "mesm-p07.yml" => include_str!("../../../configs/seeds/mesm-p07.yml"),
        "mesm-dense.yml" => include_str!("../../../configs/seeds/mesm-dense.yml"),
        "faces-cnn.yml" => include_str!("../../../configs/seeds/faces-cnn.yml"),
        "faces-landmarks.yml" => include_str!("../../../configs/seeds/faces-landmarks.yml"),
        "faces.yml" => include_str!("../../../configs/seeds/faces.yml"),
        "frames-lstm.yml" => include_str!("../../../configs/seeds/frames-lstm.yml"),
        "frames-lstm-scratch.yml" => include_str!("../../../configs/seeds/frames-lstm-scratch.yml"),
        _ => return None,
    })
}

/// What a seed published for a row, on its own data.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub metric: String,
    pub value: f64,
    pub dataset: String,
    pub other: Option<String>,
}

impl Published {
    /// "weighted F1 0.844 on their dataset, KEMDy19/20 (…)".
    pub fn label(&self) -> String {
        format!(
            "{} {} on their dataset, {}",
            self.metric, self.value, self.dataset
        )
    }
}

/// One row of the seeds table.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedRow {
    pub row: u8,
    pub name: String,
    pub system: String,
    pub config: String,
    pub published: Published,
    pub note: Option<String>,
}

impl SeedRow {
    pub fn label(&self) -> String {
        format!("{:02}", self.row)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    row: u8,
    name: String,
    system: String,
    config: String,
    their_metric: String,
    their_value: f64,
    their_dataset: String,
    their_other: String,
    note: String,
}

/// The rows of `configs/seeds.csv`, in order.
pub fn rows() -> Result<Vec<SeedRow>, String> {
    parse(SEEDS_CSV)
}

/// Parses and checks the table: rows numbered in increasing order (from 1, gaps allowed), a folder-safe name and a config file name (no
/// folder) each used once, a config this build carries, a published value that is a fraction.
fn parse(text: &str) -> Result<Vec<SeedRow>, String> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| format!("{SOURCE}: cannot read the header: {e}"))?
        .clone();
    let (mut rows, mut names, mut configs) = (Vec::new(), HashSet::new(), HashSet::new());
    for record in reader.records() {
        let record = record.map_err(|e| format!("{SOURCE}: {e}"))?;
        let line = record.position().map_or(0, |p| p.line());
        let at = |msg: String| format!("{SOURCE} line {line}: {msg}");
        let r: Record = record
            .deserialize(Some(&headers))
            .map_err(|e| at(e.to_string()))?;
        // increasing, not consecutive: each system has its numbers (issue-assigned), and they enter as implemented
        let after = rows.last().map_or(0, |last: &SeedRow| last.row);
        if r.row <= after {
            return Err(at(format!(
                "row {:02} out of order (expected a number above {after:02})",
                r.row
            )));
        }
        let safe = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if r.name.is_empty() || !r.name.chars().all(safe) || !names.insert(r.name.clone()) {
            return Err(at(format!(
                "name `{}`: empty, used twice, or not a folder name (letters, digits, - and _)",
                r.name
            )));
        }
        if r.config.contains('/') || !configs.insert(r.config.clone()) || yaml(&r.config).is_none()
        {
            return Err(at(format!(
                "config `{}` is not a file of configs/seeds/ that this build carries, or is named twice",
                r.config
            )));
        }
        if !(0.0..=1.0).contains(&r.their_value) {
            return Err(at(format!(
                "their_value {} is not a fraction in [0, 1]",
                r.their_value
            )));
        }
        let text = |s: String| Some(s.trim().to_string()).filter(|s| !s.is_empty());
        rows.push(SeedRow {
            row: r.row,
            name: r.name,
            system: r.system.trim().to_string(),
            config: r.config,
            published: Published {
                metric: r.their_metric.trim().to_string(),
                value: r.their_value,
                dataset: r.their_dataset.trim().to_string(),
                other: text(r.their_other),
            },
            note: text(r.note),
        });
    }
    if rows.is_empty() {
        return Err(format!("{SOURCE}: no rows"));
    }
    Ok(rows)
}

/// The seeds table's rows with our MELD results, one per row.
pub struct Results<'a> {
    rows: &'a [SeedRow],
    ours: &'a [RowResult],
}

/// What every file says about the published figures.
const NOT_COMPARABLE: &str = "Beside each row, the seed's own published figure on ITS OWN dataset (another corpus, \
     language, label set and protocol): it says what the system reached where it was built, and is never comparable \
     with our MELD numbers.";

impl<'a> Results<'a> {
    pub fn new(rows: &'a [SeedRow], ours: &'a [RowResult]) -> Result<Self, String> {
        if rows.len() != ours.len() {
            return Err(format!(
                "{} results for {} seeds-table rows",
                ours.len(),
                rows.len()
            ));
        }
        Ok(Results { rows, ours })
    }

    /// Writes `seeds.md`, `seeds.csv` and `seeds.png` into `out` (created if missing), each aside and renamed.
    pub fn write_all(&self, out: &Path) -> io::Result<()> {
        std::fs::create_dir_all(out)?;
        write_atomic(&out.join("seeds.md"), self.markdown().as_bytes())?;
        write_atomic(&out.join("seeds.csv"), &self.csv()?)?;
        // the plot is drawn aside and renamed into place, as every other plot of a run
        draw_atomic(&out.join("seeds.png"), |tmp| {
            self.plot(tmp).map_err(|e| Error::io(tmp, e))
        })
        .map_err(io::Error::other)
    }

    /// Row, name, our valid and test weighted F1, status, their figure.
    pub fn terminal_table(&self) -> String {
        let width = self
            .rows
            .iter()
            .map(|r| r.name.chars().count())
            .max()
            .unwrap_or(4)
            .max(4);
        let mut out = format!(
            "{:<3} {:<width$} {:>14} {:>13}  {:<40} their figure (their dataset, not comparable)\n",
            "row", "name", "MELD valid wF1", "MELD test wF1", "status"
        );
        for (row, result) in self.rows.iter().zip(self.ours) {
            let (valid, test) = scores(result);
            let cell = |s: Option<Scores>| {
                s.map_or("–".to_string(), |s| format!("{:.3}", s.weighted_f1))
            };
            let _ = writeln!(
                out,
                "{:<3} {:<width$} {:>14} {:>13}  {:<40} {}",
                row.label(),
                row.name,
                cell(valid),
                cell(test),
                short_status(&result.valid),
                row.published.label()
            );
        }
        out
    }

    fn markdown(&self) -> String {
        let mut md = String::from("# The seed systems on MELD\n\n");
        let _ = writeln!(
            md,
            "Our numbers: MELD `valid` and `test`, weighted F1 and accuracy as fractions (– = no result). \
             {NOT_COMPARABLE}\n"
        );
        md += "| row | system | config | MELD valid wF1 | MELD valid acc | MELD test wF1 | MELD test acc | status | \
               their published figure (their dataset) |\n";
        md += "|---|---|---|---:|---:|---:|---:|---|---|\n";
        let mut footnotes = Vec::new();
        for (row, result) in self.rows.iter().zip(self.ours) {
            let (valid, test) = scores(result);
            let cell = |s: Option<Scores>, f: fn(&Scores) -> f64| {
                s.map_or("–".to_string(), |s| fraction(f(&s)))
            };
            let mut system = escape(&row.system);
            if let Some(note) = &row.note {
                system += &format!(" [^{}]", row.label());
                footnotes.push(format!("[^{}]: {}", row.label(), escape(note)));
            }
            let mut theirs = escape(&row.published.label());
            if let Some(other) = &row.published.other {
                theirs += &format!("; also {}", escape(other));
            }
            let _ = writeln!(
                md,
                "| {} | {system} | `seeds/{}` | {} | {} | {} | {} | {} | {theirs} |",
                row.label(),
                row.config,
                cell(valid, |s| s.weighted_f1),
                cell(valid, |s| s.accuracy),
                cell(test, |s| s.weighted_f1),
                cell(test, |s| s.accuracy),
                escape(&short_status(&result.valid)),
            );
        }
        let finished = self
            .ours
            .iter()
            .filter(|r| done(&r.valid).is_some())
            .count();
        let _ = writeln!(
            md,
            "\n{finished} of {} rows done as their configs say (their epochs, the whole dataset).",
            self.rows.len()
        );
        if !footnotes.is_empty() {
            md += "\n";
            for f in footnotes {
                let _ = writeln!(md, "{f}");
            }
        }
        md
    }

    fn csv(&self) -> io::Result<Vec<u8>> {
        let mut header: Vec<String> = ["row", "name", "system", "config"]
            .map(String::from)
            .to_vec();
        for split in ["valid", "test"] {
            header.extend(
                CLASSES
                    .iter()
                    .copied()
                    .chain(["weighted_f1", "accuracy"])
                    .map(|c| format!("ours_{split}_{c}")),
            );
        }
        header.extend(
            [
                "status",
                "their_metric",
                "their_value",
                "their_dataset",
                "their_other",
                "their_figure_is",
            ]
            .map(String::from),
        );
        let mut writer = csv::Writer::from_writer(Vec::new());
        writer.write_record(&header)?;
        for (row, result) in self.rows.iter().zip(self.ours) {
            let (valid, test) = scores(result);
            let mut record = vec![
                row.label(),
                row.name.clone(),
                row.system.clone(),
                row.config.clone(),
            ];
            for s in [valid, test] {
                match s {
                    Some(s) => record.extend(
                        s.f1.iter()
                            .chain([&s.weighted_f1, &s.accuracy])
                            .map(|v| v.to_string()),
                    ),
                    None => record.extend(vec![String::new(); CLASSES.len() + 2]),
                }
            }
            record.push(match &result.valid {
                Outcome::Failed(reason) => format!("failed: {}", super::render::first_line(reason)),
                other => short_status(other),
            });
            record.extend([
                row.published.metric.clone(),
                row.published.value.to_string(),
                row.published.dataset.clone(),
                row.published.other.clone().unwrap_or_default(),
                "their dataset, not MELD: not comparable".to_string(),
            ]);
            writer.write_record(&record)?;
        }
        writer
            .into_inner()
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// Our weighted F1 per row, valid and test side by side; rows without a result have no bars.
    fn plot(&self, path: &Path) -> io::Result<()> {
        let colours = [RGBColor(31, 119, 180), RGBColor(255, 127, 14)];
        let series = ["valid", "test"]
            .iter()
            .zip(colours)
            .enumerate()
            .map(|(k, (split, colour))| {
                let bars = self
                    .ours
                    .iter()
                    .enumerate()
                    .filter_map(|(i, r)| {
                        let (valid, test) = scores(r);
                        let s = if k == 0 { valid } else { test }?;
                        let left = i as f64 + 1.0 - 0.35 + k as f64 * 0.35;
                        Some(Rectangle::new(
                            [(left, 0.0), (left + 0.32, s.weighted_f1)],
                            colour.filled(),
                        ))
                    })
                    .collect();
                (format!("ours, MELD {split}"), colour, bars)
            })
            .collect();
        let floor = super::render::ALL_NEUTRAL_WEIGHTED_F1;
        let chart = super::render::RowChart {
            size: ((260 + 120 * self.rows.len() as u32).max(860), 480),
            caption:
                "Seed systems: our weighted F1 on MELD (their figures: other datasets, not drawn)",
            caption_size: 17,
            labels: self.rows.iter().map(|r| r.name.clone()).collect(),
            x_desc: None,
            y_desc: "weighted F1 (MELD)",
            y_max: 1.0,
            floor_label: format!("always \"neutral\" on valid ({floor:.2})"),
            legend: SeriesLabelPosition::UpperRight,
        };
        super::render::draw_row_chart(path, &chart, series)
    }
}

/// A row's valid and test scores when its run is the config as it stands (`done`).
fn scores(r: &RowResult) -> (Option<Scores>, Option<Scores>) {
    match done(&r.valid) {
        Some(valid) => (Some(valid), r.test),
        None => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(weighted_f1: f64) -> Scores {
        Scores {
            f1: [0.31, 0.0, 0.05, 0.42, 0.58, 0.2, 0.36],
            weighted_f1,
            accuracy: 0.4567,
        }
    }

    #[test]
    fn the_table_parses_and_every_config_loads() {
        let rows = rows().expect("the embedded seeds table parses");
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names[..3], ["tmn", "tmn-concat", "tmn-xattn"]);
        assert_eq!(names[3..6], ["mesm-p05", "mesm-p07", "mesm-dense"]);
        assert!(rows[4].published.dataset.contains("IEMOCAP"));
        assert!(names.contains(&"frames-lstm") && names.contains(&"frames-lstm-scratch"));
        assert_eq!(names[6..9], ["faces-cnn", "faces-landmarks", "faces"]);
        assert_eq!(rows[6].label(), "07");
        assert!(rows[8].published.dataset.contains("FER2013"));
        assert_eq!(rows[0].published.value, 0.844);
        assert!(rows[0].published.dataset.contains("KEMDy"));
        for r in &rows {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../configs/seeds")
                .join(&r.config);
            let embedded = yaml(&r.config).expect("embedded");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), embedded);
            crate::config::Config::parse(&path, embedded).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn rejects_bad_tables_naming_the_line() {
        let edit = |from: &str, to: &str| SEEDS_CSV.replacen(from, to, 1);
        let e = parse(&edit(",0.844,", ",84.4,")).expect_err("a percentage");
        assert!(e.contains("line 2") && e.contains("fraction"), "{e}");
        let e = parse(&edit("tmn.yml", "seeds/tmn.yml")).expect_err("a path");
        assert!(e.contains("configs/seeds/"), "{e}");
        let e = parse(&edit("tmn.yml", "mesm.yml")).expect_err("not carried");
        assert!(e.contains("mesm.yml"), "{e}");
        let e = parse(&edit("03,", "02,")).expect_err("out of order");
        assert!(e.contains("line 4") && e.contains("above 02"), "{e}");
    }

    #[test]
    fn writes_ours_beside_their_figure_labelled_as_theirs() {
        // TMN's three rows
        let rows = rows().unwrap()[..3].to_vec();
        let ours = vec![
            RowResult {
                valid: Outcome::Done(scores(0.5312)),
                test: Some(scores(0.5501)),
            },
            RowResult {
                valid: Outcome::Other {
                    what: "smoke".into(),
                    scores: scores(0.2),
                },
                test: None,
            },
            RowResult {
                valid: Outcome::Failed("out of memory\nmore".into()),
                test: None,
            },
        ];
        let results = Results::new(&rows[..3], &ours).unwrap();
        let dir = tempfile::tempdir().unwrap();
        results.write_all(dir.path()).unwrap();
        let md = std::fs::read_to_string(dir.path().join("seeds.md")).unwrap();
        assert!(md.contains("never comparable"), "{md}");
        let line = md.lines().find(|l| l.starts_with("| 01 |")).unwrap();
        assert!(
            line.contains("| 0.53 | 0.46 | 0.55 | 0.46 | done |")
                && line.contains("weighted F1 0.844 on their dataset, KEMDy19/20"),
            "{line}"
        );
        let smoke = md.lines().find(|l| l.starts_with("| 02 |")).unwrap();
        assert!(
            smoke.contains("| – | – | – | – | smoke: wF1 0.200, not compared |"),
            "{smoke}"
        );
        let bytes = std::fs::read(dir.path().join("seeds.csv")).unwrap();
        let mut reader = csv::Reader::from_reader(bytes.as_slice());
        let header = reader.headers().unwrap().clone();
        let at = |name: &str| header.iter().position(|h| h == name).unwrap();
        let records: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
        assert_eq!(records.len(), 3);
        assert_eq!(&records[0][at("ours_valid_weighted_f1")], "0.5312");
        assert_eq!(&records[0][at("ours_test_weighted_f1")], "0.5501");
        assert_eq!(&records[0][at("their_value")], "0.844");
        assert!(records[0][at("their_figure_is")].contains("not comparable"));
        assert_eq!(&records[1][at("ours_valid_weighted_f1")], "");
        assert_eq!(&records[2][at("status")], "failed: out of memory");
        let png = std::fs::read(dir.path().join("seeds.png")).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 2000);
        let text = results.terminal_table();
        assert_eq!(text.lines().count(), 4);
        assert!(text.contains("not comparable"));
    }
}
