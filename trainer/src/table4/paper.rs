//! The paper's side of Table 4: the 30 experiments of the HLM12ERC report, their config files and the numbers the
//! report published for them.
//!
//! The data lives in `configs/table4.csv`, next to the YAML files it names, so that one repository file holds the
//! table and a reviewer can diff it against the report; it is embedded at build time so `erc-train table4` needs no
//! file beside the binary. Columns:
//!
//! * `row` (01–30), `name` (as the report prints it), `config` (a file name under `configs/`);
//! * `paper_<class>`, `paper_weighted_f1`: Table 4, per-class and weighted F1 on MELD `valid`, as fractions;
//! * `paper_accuracy`: accuracy on `valid`, from the reference notebook's outputs (Table 4 does not print it);
//! * `train_batch`, `eval_batch`: the batch size the row trained at and the one its reported evaluations ran at (they
//!   differ for row 16 only); the fusion attends across a batch, so the evaluation batch changes the numbers;
//! * `paper_test_<class>`, `paper_test_weighted_f1`, `paper_test_accuracy`: Table 3 (MELD `test`), filled for rows
//!   02 and 24 only (the report's baseline and best model) and empty elsewhere;
//! * `note`: why a row's published numbers are not what its name suggests (rows 22, 28, 29), else empty.

use std::collections::{BTreeSet, HashSet};

use serde::Deserialize;

/// The seven MELD emotions, in the order of every `[f64; 7]` of this module (the reference's `classifier_classes`).
pub const CLASSES: [&str; 7] = [
    "anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise",
];

/// Where the embedded data comes from, for error messages.
const SOURCE: &str = "configs/table4.csv";

/// The table itself, embedded so the binary carries it.
const TABLE4_CSV: &str = include_str!("../../../configs/table4.csv");

/// One evaluation's scores: what the paper published for a split, or what one of our runs measured.
///
/// One type serves both sides so the renderers compare them with the same code.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scores {
    /// Per-class F1 in [`CLASSES`] order.
    pub f1: [f64; 7],
    /// sklearn's weighted F1 (per-class F1 weighted by support).
    pub weighted_f1: f64,
    pub accuracy: f64,
}

impl Scores {
    /// Scores from per-class F1 listed under class names in any order (as a run's metrics list them, in its
    /// config's `classifier_classes` order); every one of [`CLASSES`] must appear exactly once.
    pub fn from_classes<S: AsRef<str>>(
        classes: &[S],
        f1: &[f64],
        weighted_f1: f64,
        accuracy: f64,
    ) -> Result<Scores, String> {
        if classes.len() != CLASSES.len() || f1.len() != CLASSES.len() {
            return Err(format!(
                "expected F1 for the {} classes {}, got {} names and {} values",
                CLASSES.len(),
                CLASSES.join(", "),
                classes.len(),
                f1.len()
            ));
        }
        let mut out = [f64::NAN; 7];
        for (name, value) in classes.iter().zip(f1) {
            let name = name.as_ref();
            let i = CLASSES.iter().position(|c| *c == name).ok_or_else(|| {
                format!("unknown class `{name}` (expected {})", CLASSES.join(", "))
            })?;
            if !out[i].is_nan() {
                return Err(format!("class `{name}` listed twice"));
            }
            out[i] = *value;
        }
        Ok(Scores {
            f1: out,
            weighted_f1,
            accuracy,
        })
    }
}

/// One row of Table 4, with everything the report says about it.
#[derive(Debug, Clone, PartialEq)]
pub struct PaperRow {
    /// 1–30, the report's experiment number.
    pub row: u8,
    /// The experiment's name as the report prints it.
    pub name: String,
    /// The YAML under `configs/` that reproduces the row.
    pub config: String,
    /// Per-class F1 on `valid`, in [`CLASSES`] order.
    pub f1: [f64; 7],
    pub weighted_f1: f64,
    /// Accuracy on `valid`, from the reference notebook (not printed in the report).
    pub accuracy: f64,
    pub train_batch: usize,
    /// The batch size of the paper's evaluations of this row (`valid`, and `test` where [`PaperRow::test`] is set).
    pub eval_batch: usize,
    /// Why the published numbers are not what the row's name suggests (rows 22, 28, 29).
    pub note: Option<String>,
    /// Table 3's numbers on `test` (rows 02 and 24).
    pub test: Option<Scores>,
}

impl PaperRow {
    /// The row's `valid` numbers as one [`Scores`].
    pub fn valid(&self) -> Scores {
        Scores {
            f1: self.f1,
            weighted_f1: self.weighted_f1,
            accuracy: self.accuracy,
        }
    }

    /// The row number as the report prints it: two digits.
    pub fn label(&self) -> String {
        format!("{:02}", self.row)
    }
}

/// One line of the CSV, as written; [`parse`] checks it and turns it into a [`PaperRow`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    row: u8,
    name: String,
    config: String,
    paper_anger: f64,
    paper_disgust: f64,
    paper_fear: f64,
    paper_joy: f64,
    paper_neutral: f64,
    paper_sadness: f64,
    paper_surprise: f64,
    paper_weighted_f1: f64,
    paper_accuracy: f64,
    train_batch: usize,
    eval_batch: usize,
    paper_test_anger: Option<f64>,
    paper_test_disgust: Option<f64>,
    paper_test_fear: Option<f64>,
    paper_test_joy: Option<f64>,
    paper_test_neutral: Option<f64>,
    paper_test_sadness: Option<f64>,
    paper_test_surprise: Option<f64>,
    paper_test_weighted_f1: Option<f64>,
    paper_test_accuracy: Option<f64>,
    note: String,
}

/// The 30 rows of Table 4, in order.
pub fn rows() -> Result<Vec<PaperRow>, String> {
    parse(TABLE4_CSV)
}

/// Parses and checks the table: rows numbered 1, 2, 3, … in order, scores in [0, 1], batch sizes above zero, a
/// config file name (no folder) used once, and test columns either all filled or all empty.
fn parse(text: &str) -> Result<Vec<PaperRow>, String> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| format!("{SOURCE}: cannot read the header: {e}"))?
        .clone();
    let mut rows = Vec::new();
    let mut configs = HashSet::new();
    for record in reader.records() {
        let record = record.map_err(|e| format!("{SOURCE}: {e}"))?;
        let line = record.position().map_or(0, |p| p.line());
        let at = |msg: String| format!("{SOURCE} line {line}: {msg}");
        let raw: Record = record
            .deserialize(Some(&headers))
            .map_err(|e| at(e.to_string()))?;
        let row = check(raw).map_err(at)?;
        let expected = rows.len() + 1;
        if usize::from(row.row) != expected {
            return Err(at(format!(
                "row {:02} out of order (expected {expected:02})",
                row.row
            )));
        }
        if !configs.insert(row.config.clone()) {
            return Err(at(format!("config `{}` named twice", row.config)));
        }
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(format!("{SOURCE}: no rows"));
    }
    Ok(rows)
}

/// Checks one line's values and gathers them into a [`PaperRow`].
fn check(r: Record) -> Result<PaperRow, String> {
    if r.name.trim().is_empty() {
        return Err("empty name".into());
    }
    let is_file_name =
        !r.config.contains('/') && (r.config.ends_with(".yml") || r.config.ends_with(".yaml"));
    if !is_file_name {
        return Err(format!(
            "config `{}` is not a YAML file name under configs/",
            r.config
        ));
    }
    if r.train_batch == 0 || r.eval_batch == 0 {
        return Err("batch sizes must be above zero".into());
    }
    let f1 = [
        r.paper_anger,
        r.paper_disgust,
        r.paper_fear,
        r.paper_joy,
        r.paper_neutral,
        r.paper_sadness,
        r.paper_surprise,
    ];
    let valid = Scores {
        f1,
        weighted_f1: r.paper_weighted_f1,
        accuracy: r.paper_accuracy,
    };
    check_range(&valid, "paper")?;
    let test_cells = [
        r.paper_test_anger,
        r.paper_test_disgust,
        r.paper_test_fear,
        r.paper_test_joy,
        r.paper_test_neutral,
        r.paper_test_sadness,
        r.paper_test_surprise,
        r.paper_test_weighted_f1,
        r.paper_test_accuracy,
    ];
    let test = match test_cells.iter().filter(|c| c.is_some()).count() {
        0 => None,
        n if n == test_cells.len() => {
            let v = test_cells.map(|c| c.unwrap_or(f64::NAN));
            let test = Scores {
                f1: [v[0], v[1], v[2], v[3], v[4], v[5], v[6]],
                weighted_f1: v[7],
                accuracy: v[8],
            };
            check_range(&test, "paper_test")?;
            Some(test)
        }
        n => {
            return Err(format!(
                "{n} of the {} paper_test_* cells filled (fill all or none)",
                test_cells.len()
            ))
        }
    };
    let note = r.note.trim();
    Ok(PaperRow {
        row: r.row,
        name: r.name.trim().to_string(),
        config: r.config,
        f1,
        weighted_f1: r.paper_weighted_f1,
        accuracy: r.paper_accuracy,
        train_batch: r.train_batch,
        eval_batch: r.eval_batch,
        note: (!note.is_empty()).then(|| note.to_string()),
        test,
    })
}

/// Every score is a fraction: a percentage typed as-is (`38` for 0.38) would be caught here.
fn check_range(s: &Scores, prefix: &str) -> Result<(), String> {
    let named = CLASSES.iter().map(|c| c.to_string()).zip(s.f1).chain([
        ("weighted_f1".to_string(), s.weighted_f1),
        ("accuracy".to_string(), s.accuracy),
    ]);
    for (name, v) in named {
        if !(0.0..=1.0).contains(&v) {
            return Err(format!("{prefix}_{name} = {v} is not a fraction in [0, 1]"));
        }
    }
    Ok(())
}

/// The rows a `--rows` spec selects, sorted, each once: comma-separated row numbers and inclusive ranges, leading
/// zeros and spaces allowed (`01-04,24`, `4`, ` 1 - 30 `). A Slurm array index is a plain number.
///
/// Errors name the offending part; a row that `all` does not have is an error rather than skipped, so a typo never
/// silently runs nothing.
pub fn parse_selection(spec: &str, all: &[PaperRow]) -> Result<Vec<u8>, String> {
    let known: BTreeSet<u8> = all.iter().map(|r| r.row).collect();
    parse_selection_in(spec, &known, "Table 4")
}

/// [`parse_selection`] among the row numbers `known` of the table called `table` in messages.
pub fn parse_selection_in(
    spec: &str,
    known: &BTreeSet<u8>,
    table: &str,
) -> Result<Vec<u8>, String> {
    let span = match (known.first(), known.last()) {
        (Some(first), Some(last)) => format!("{first:02}-{last:02}"),
        _ => return Err(format!("no {table} rows to select from")),
    };
    let hint = format!("expected row numbers or ranges such as `01-04,24`, within {span}");
    if spec.trim().is_empty() {
        return Err(format!("empty row selection ({hint})"));
    }
    let mut picked = BTreeSet::new();
    for part in spec.split(',') {
        let item = part.trim();
        if item.is_empty() {
            return Err(format!("empty item in row selection `{spec}` ({hint})"));
        }
        let number = |text: &str| -> Result<u8, String> {
            let text = text.trim();
            let n: u64 = text
                .parse()
                .map_err(|_| format!("`{item}`: `{text}` is not a row number ({hint})"))?;
            u8::try_from(n)
                .ok()
                .filter(|n| known.contains(n))
                .ok_or_else(|| format!("`{item}`: there is no row {n} in {table} (rows {span})"))
        };
        let (from, to) = match item.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => {
                let n = number(item)?;
                (n, n)
            }
        };
        if from > to {
            return Err(format!("`{item}`: the range runs backwards"));
        }
        picked.extend(known.range(from..=to).copied());
    }
    Ok(picked.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<PaperRow> {
        rows().expect("the embedded table parses")
    }

    fn row(rows: &[PaperRow], n: u8) -> &PaperRow {
        rows.iter().find(|r| r.row == n).expect("row present")
    }

    #[test]
    fn parses_all_thirty_rows_in_order() {
        let rows = all();
        assert_eq!(rows.len(), 30);
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(usize::from(r.row), i + 1);
            assert!(r.config.ends_with(".yml"), "{}", r.config);
        }
        assert_eq!(rows[0].label(), "01");
        assert_eq!(rows[29].name, "l2norm_off");
    }

    #[test]
    fn carries_the_papers_numbers() {
        let rows = all();
        let r01 = row(&rows, 1);
        assert_eq!(r01.name, "baseline-cce");
        assert_eq!(r01.config, "baseline-cce.yml");
        assert_eq!(r01.f1[4], 0.60, "neutral");
        assert_eq!(r01.weighted_f1, 0.25);
        assert_eq!(r01.accuracy, 0.42);
        assert_eq!(row(&rows, 4).weighted_f1, 0.29);
        let r24 = row(&rows, 24);
        assert_eq!(r24.f1, [0.38, 0.0, 0.0, 0.48, 0.75, 0.32, 0.55]);
        assert_eq!(r24.valid().weighted_f1, 0.55);
        assert_eq!(r24.config, "final-i05-wav2vec2-200kx1536.yml");
    }

    #[test]
    fn batch_sizes() {
        let rows = all();
        let r16 = row(&rows, 16);
        assert_eq!((r16.train_batch, r16.eval_batch), (11, 8));
        assert_eq!(
            (row(&rows, 2).train_batch, row(&rows, 2).eval_batch),
            (64, 64)
        );
        assert_eq!(
            (row(&rows, 24).train_batch, row(&rows, 24).eval_batch),
            (8, 8)
        );
        let differing: Vec<u8> = rows
            .iter()
            .filter(|r| r.train_batch != r.eval_batch)
            .map(|r| r.row)
            .collect();
        assert_eq!(differing, [16]);
    }

    #[test]
    fn notes_on_rows_22_28_29_only() {
        let rows = all();
        let noted: Vec<u8> = rows
            .iter()
            .filter(|r| r.note.is_some())
            .map(|r| r.row)
            .collect();
        assert_eq!(noted, [22, 28, 29]);
        let note = |n| row(&rows, n).note.clone().unwrap_or_default();
        assert!(note(28).contains("row 26"), "{}", note(28));
        assert!(note(29).contains("row 27"), "{}", note(29));
        assert!(note(22).contains("768"), "{}", note(22));
        // Rows 28/29 re-evaluate rows 26/27's models: the same numbers.
        assert_eq!(row(&rows, 28).valid(), row(&rows, 26).valid());
        assert_eq!(row(&rows, 29).valid(), row(&rows, 27).valid());
    }

    #[test]
    fn table3_numbers_on_rows_02_and_24_only() {
        let rows = all();
        let tested: Vec<u8> = rows
            .iter()
            .filter(|r| r.test.is_some())
            .map(|r| r.row)
            .collect();
        assert_eq!(tested, [2, 24]);
        let t02 = row(&rows, 2).test.expect("row 02 test");
        assert_eq!(t02.f1, [0.13, 0.0, 0.0, 0.12, 0.48, 0.0, 0.09]);
        assert_eq!((t02.weighted_f1, t02.accuracy), (0.27, 0.29));
        let t24 = row(&rows, 24).test.expect("row 24 test");
        assert_eq!(t24.f1, [0.43, 0.0, 0.0, 0.54, 0.75, 0.24, 0.49]);
        assert_eq!((t24.weighted_f1, t24.accuracy), (0.57, 0.59));
    }

    #[test]
    fn every_config_exists() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        for r in all() {
            assert!(
                dir.join(&r.config).is_file(),
                "row {:02}: {} missing",
                r.row,
                r.config
            );
        }
    }

    /// The embedded table with one line edited, for the error paths.
    fn edited(line: usize, edit: impl Fn(&str) -> String) -> String {
        TABLE4_CSV
            .lines()
            .enumerate()
            .map(|(i, l)| {
                if i + 1 == line {
                    edit(l)
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn rejects_bad_tables_naming_the_line() {
        // Line 3 is row 02; its paper_anger is 0.15.
        let percent = edited(3, |l| l.replacen(",0.15,", ",15,", 1));
        let e = parse(&percent).expect_err("15 is not a fraction");
        assert!(e.contains("line 3") && e.contains("paper_anger"), "{e}");

        let gap = edited(3, |l| l.replacen("02,", "03,", 1));
        let e = parse(&gap).expect_err("out of order");
        assert!(e.contains("line 3") && e.contains("expected 02"), "{e}");

        let partial = edited(3, |l| l.replacen(",0.13,", ",,", 1));
        let e = parse(&partial).expect_err("partial test columns");
        assert!(e.contains("line 3") && e.contains("paper_test"), "{e}");

        let word = edited(4, |l| l.replacen(",64,64,", ",sixty-four,64,", 1));
        let e = parse(&word).expect_err("batch size not a number");
        assert!(e.contains("line 4"), "{e}");

        let folder = edited(2, |l| {
            l.replacen(",baseline-cce.yml,", ",configs/baseline-cce.yml,", 1)
        });
        let e = parse(&folder).expect_err("a path, not a file name");
        assert!(
            e.contains("line 2") && e.contains("not a YAML file name"),
            "{e}"
        );

        let header = TABLE4_CSV.replacen("note", "notes", 1);
        assert!(parse(&header).is_err());
        assert!(parse(TABLE4_CSV.lines().next().unwrap_or_default()).is_err());
    }

    #[test]
    fn scores_from_named_classes_in_any_order() {
        let names = [
            "surprise", "anger", "disgust", "fear", "joy", "neutral", "sadness",
        ];
        let f1 = [0.7, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6];
        let s = Scores::from_classes(&names, &f1, 0.45, 0.5).expect("all classes");
        assert_eq!(s.f1, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]);
        assert_eq!((s.weighted_f1, s.accuracy), (0.45, 0.5));
        let twice = [
            "anger", "anger", "fear", "joy", "neutral", "sadness", "surprise",
        ];
        assert!(Scores::from_classes(&twice, &f1, 0.0, 0.0).is_err());
        let unknown = [
            "rage", "disgust", "fear", "joy", "neutral", "sadness", "surprise",
        ];
        assert!(Scores::from_classes(&unknown, &f1, 0.0, 0.0)
            .expect_err("unknown class")
            .contains("rage"));
        assert!(Scores::from_classes(&names[..6], &f1[..6], 0.0, 0.0).is_err());
    }

    #[test]
    fn selections() {
        let rows = all();
        let sel = |s: &str| parse_selection(s, &rows);
        assert_eq!(sel("01-04,24"), Ok(vec![1, 2, 3, 4, 24]));
        assert_eq!(sel("4"), Ok(vec![4]));
        assert_eq!(sel("7"), Ok(vec![7]), "a Slurm array index");
        assert_eq!(sel("1-30"), Ok((1..=30).collect()));
        assert_eq!(sel(" 24 , 01 - 03 ,2,3, 24"), Ok(vec![1, 2, 3, 24]));
        assert_eq!(sel("30-30"), Ok(vec![30]));
    }

    #[test]
    fn selection_errors_name_the_bad_part() {
        let rows = all();
        let err = |s: &str| parse_selection(s, &rows).expect_err(s);
        assert!(err("").contains("empty"));
        assert!(err("  ").contains("empty"));
        assert!(err("1,,2").contains("empty item"));
        assert!(err("1,").contains("empty item"));
        let e = err("01-4x,24");
        assert!(e.contains("`4x`") && e.contains("01-4x"), "{e}");
        let e = err("31");
        assert!(e.contains("no row 31") && e.contains("01-30"), "{e}");
        assert!(err("0").contains("no row 0"));
        assert!(err("1-300").contains("no row 300"));
        assert!(err("99999999999999999999").contains("not a row number"));
        assert!(err("-3").contains("`-3`"));
        assert!(err("5-3").contains("backwards"));
        assert!(err("1-2-3").contains("`1-2-3`"));
        assert!(err("all").contains("`all`"));
        assert!(parse_selection("1", &[]).is_err());
    }
}
