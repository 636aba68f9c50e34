//! Stage 2: reads a MELD annotation CSV (`train_sent_emo.csv` …) into [`MeldRow`]s, with polars.
//!
//! The real release is UTF-8, but its older copies carry cp1252 punctuation as C1 control characters (U+0092 for
//! ’, U+0085 for …). By default [`map_c1`] turns them into the characters they stand for; `--raw-text` keeps the
//! bytes verbatim. U+0085 is a line separator for some line splitters, so the file is parsed as CSV (quoted
//! commas, quoted times and quoted line breaks), never split into lines. A BOM and CRLF line ends are accepted.
//!
//! Nothing is skipped: an undecodable byte or a bad cell is an error naming the file, the row (1-based, after the
//! header), its line and the column. Polars reads the file; when it rejects bytes, the csv crate is used only to
//! locate the offending row and column for the message.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use meld_shared::{Emotion, Sentiment};
use polars::prelude::*;

use crate::meld::{ClipTime, MeldRow, MELD_HEADER};

#[derive(Debug, thiserror::Error)]
pub enum RawCsvError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: row {row} (line {line}), column `{column}`: {message}")]
    Cell {
        path: PathBuf,
        row: usize,
        line: u64,
        column: String,
        message: String,
    },
    #[error("{path}: row {row} (line {line}): {message}")]
    Row {
        path: PathBuf,
        row: usize,
        line: u64,
        message: String,
    },
    #[error("{path}: header: {message}")]
    Header { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// One parsed row and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRow {
    /// 1-based index among the data rows (the header is row 0).
    pub row: usize,
    pub meld: MeldRow,
}

/// A (Dialogue_ID, Utterance_ID) pair that appears on more than one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    pub dialogue: u32,
    pub utterance: u32,
    pub rows: Vec<usize>,
}

/// The character a cp1252 byte 0x80–0x9F stands for when it was carried over as the C1 code point U+0080–U+009F
/// (and U+00A0, the no-break space, as a plain space). `None`: keep the character.
fn c1_replacement(c: char) -> Option<char> {
    Some(match c {
        '\u{80}' => '€',
        '\u{82}' => '‚',
        '\u{83}' => 'ƒ',
        '\u{84}' => '„',
        '\u{85}' => '…',
        '\u{86}' => '†',
        '\u{87}' => '‡',
        '\u{88}' => 'ˆ',
        '\u{89}' => '‰',
        '\u{8a}' => 'Š',
        '\u{8b}' => '‹',
        '\u{8c}' => 'Œ',
        '\u{8e}' => 'Ž',
        '\u{91}' => '‘',
        '\u{92}' => '’',
        '\u{93}' => '“',
        '\u{94}' => '”',
        '\u{95}' => '•',
        '\u{96}' => '–',
        '\u{97}' => '—',
        '\u{98}' => '˜',
        '\u{99}' => '™',
        '\u{9a}' => 'š',
        '\u{9b}' => '›',
        '\u{9c}' => 'œ',
        '\u{9e}' => 'ž',
        '\u{9f}' => 'Ÿ',
        '\u{a0}' => ' ',
        _ => return None,
    })
}

/// Replaces the cp1252 C1 characters of MELD's text by what they stand for.
pub fn map_c1(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c1_replacement(c).is_some()) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| c1_replacement(c).unwrap_or(c))
            .collect(),
    )
}

/// Reads a MELD annotation CSV. `raw_text` keeps `Utterance` and `Speaker` verbatim.
pub fn read_meld_csv(path: &Path, raw_text: bool) -> Result<Vec<RawRow>, RawCsvError> {
    let bytes = std::fs::read(path).map_err(|source| RawCsvError::Io {
        path: path.into(),
        source,
    })?;
    let body = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(&bytes);
    if let Err(e) = std::str::from_utf8(body) {
        return Err(locate_bad_utf8(path, body, e.valid_up_to()));
    }
    let frame = CsvReadOptions::default()
        .with_has_header(true)
        // Every column as text: the cells are checked below, with messages naming row and column.
        .with_infer_schema_length(Some(0))
        .with_raise_if_empty(true)
        .into_reader_with_file_handle(Cursor::new(body))
        .finish()
        .map_err(|e| {
            locate_malformed_row(path, body).unwrap_or_else(|| RawCsvError::Parse {
                path: path.into(),
                message: format!("not a readable CSV: {e}"),
            })
        })?;

    let names: Vec<String> = frame
        .get_column_names()
        .iter()
        .map(|n| n.trim().to_string())
        .collect();
    let mut columns = Vec::new();
    for wanted in MELD_HEADER {
        let Some(index) = names.iter().position(|n| n == wanted) else {
            return Err(RawCsvError::Header {
                path: path.into(),
                message: format!("missing column `{wanted}`; found {}", names.join(", ")),
            });
        };
        let column = frame
            .select_at_idx(index)
            .ok_or_else(|| RawCsvError::Parse {
                path: path.into(),
                message: format!("column `{wanted}` vanished"),
            })?
            .str()
            .map_err(|e| RawCsvError::Parse {
                path: path.into(),
                message: format!("column `{wanted}`: {e}"),
            })?
            .clone();
        columns.push(column);
    }

    let lines = LineIndex::new(body);
    let mut rows = Vec::with_capacity(frame.height());
    for i in 0..frame.height() {
        let row = i + 1;
        let cell = |k: usize| columns[k].get(i);
        let error = |k: usize, message: String| RawCsvError::Cell {
            path: path.into(),
            row,
            line: lines.line_of_row(row),
            column: MELD_HEADER[k].to_string(),
            message,
        };
        let required = |k: usize| -> Result<&str, RawCsvError> {
            cell(k)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| error(k, "empty cell".into()))
        };
        let number = |k: usize| -> Result<u32, RawCsvError> {
            let v = required(k)?;
            v.parse::<u32>()
                .map_err(|_| error(k, format!("expected a non-negative integer, found `{v}`")))
        };
        let time = |k: usize| -> Result<ClipTime, RawCsvError> {
            required(k)?.parse::<ClipTime>().map_err(|m| error(k, m))
        };
        let text = |k: usize| -> String {
            let v = cell(k).unwrap_or("");
            if raw_text {
                v.to_string()
            } else {
                map_c1(v).into_owned()
            }
        };
        let emotion: Emotion = required(3)?
            .parse()
            .map_err(|e: meld_shared::Error| error(3, e.to_string()))?;
        let sentiment: Sentiment = required(4)?
            .parse()
            .map_err(|e: meld_shared::Error| error(4, e.to_string()))?;
        rows.push(RawRow {
            row,
            meld: MeldRow {
                sr_no: number(0)?,
                utterance: text(1),
                speaker: text(2).trim().to_string(),
                emotion,
                sentiment,
                dialogue_id: number(5)?,
                utterance_id: number(6)?,
                season: number(7)?,
                episode: number(8)?,
                start_time: time(9)?,
                end_time: time(10)?,
            },
        });
    }
    Ok(rows)
}

/// Pairs (Dialogue_ID, Utterance_ID) found on more than one row.
pub fn duplicates(rows: &[RawRow]) -> Vec<Duplicate> {
    let mut seen: BTreeMap<(u32, u32), Vec<usize>> = BTreeMap::new();
    for r in rows {
        seen.entry((r.meld.dialogue_id, r.meld.utterance_id))
            .or_default()
            .push(r.row);
    }
    seen.into_iter()
        .filter(|(_, rows)| rows.len() > 1)
        .map(|((dialogue, utterance), rows)| Duplicate {
            dialogue,
            utterance,
            rows,
        })
        .collect()
}

/// The line each data row starts on (rows may span lines: quoted line breaks).
struct LineIndex {
    starts: Vec<u64>,
}

impl LineIndex {
    fn new(body: &[u8]) -> Self {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .from_reader(body);
        let mut starts = Vec::new();
        let mut record = csv::ByteRecord::new();
        while let Ok(true) = reader.read_byte_record(&mut record) {
            starts.push(record.position().map(|p| p.line()).unwrap_or(0));
        }
        LineIndex { starts }
    }

    fn line_of_row(&self, row: usize) -> u64 {
        self.starts
            .get(row.wrapping_sub(1))
            .copied()
            .unwrap_or(row as u64 + 1)
    }
}

/// Names the first row whose number of fields differs from the header's (polars' own message has no row).
fn locate_malformed_row(path: &Path, body: &[u8]) -> Option<RawCsvError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(body);
    let mut record = csv::ByteRecord::new();
    let mut row = 0usize;
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(true) => row += 1,
            Ok(false) => return None,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                let message = match e.kind() {
                    csv::ErrorKind::UnequalLengths { expected_len, len, .. } => format!(
                        "{len} fields where the header has {expected_len} (an unbalanced quote or a stray comma?)"
                    ),
                    _ => e.to_string(),
                };
                return Some(RawCsvError::Row {
                    path: path.into(),
                    row: row + 1,
                    line,
                    message,
                });
            }
        }
    }
}

/// Names the row and column holding the first byte that is not UTF-8.
fn locate_bad_utf8(path: &Path, body: &[u8], offset: usize) -> RawCsvError {
    let line = body[..offset].iter().filter(|b| **b == b'\n').count() as u64 + 1;
    let byte = body.get(offset).copied().unwrap_or(0);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(body);
    let mut record = csv::ByteRecord::new();
    let mut index = 0usize;
    let mut header: Vec<String> = Vec::new();
    while let Ok(true) = reader.read_byte_record(&mut record) {
        if index == 0 {
            header = record
                .iter()
                .map(|f| String::from_utf8_lossy(f).trim().to_string())
                .collect();
        }
        if let Some(k) = record.iter().position(|f| std::str::from_utf8(f).is_err()) {
            let column = header
                .get(k)
                .cloned()
                .unwrap_or_else(|| format!("#{}", k + 1));
            return RawCsvError::Cell {
                path: path.into(),
                row: index,
                line: record.position().map(|p| p.line()).unwrap_or(line),
                column,
                message: format!("byte 0x{byte:02X} is not UTF-8 (the file must be UTF-8)"),
            };
        }
        index += 1;
    }
    RawCsvError::Parse {
        path: path.into(),
        message: format!("line {line}: byte 0x{byte:02X} is not UTF-8 (the file must be UTF-8)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime";

    fn write(dir: &Path, body: &[u8]) -> PathBuf {
        let path = dir.join("train_sent_emo.csv");
        std::fs::write(&path, body).unwrap();
        path
    }

    #[test]
    fn real_quirks_parse_and_c1_maps() {
        let dir = tempfile::tempdir().unwrap();
        let body = format!(
            "\u{feff}{HEADER}\r\n1,\"I\u{92}m here, \u{93}really\u{94}\u{85}\",Ross,joy,positive,0,0,3,12,\"00:16:16,059\",\"00:16:18,500\"\r\n2,\"two\nlines\",Monica,neutral,neutral,0,1,3,12,\"00:16:19,000\",\"00:16:20,000\"\r\n"
        );
        let path = write(dir.path(), body.as_bytes());
        let rows = read_meld_csv(&path, false).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].meld.utterance, "I’m here, “really”…");
        assert_eq!(rows[0].meld.start_time.millis, 976_059);
        assert_eq!(rows[1].meld.utterance, "two\nlines");
        assert_eq!(rows[1].meld.utterance_id, 1);
        let raw = read_meld_csv(&path, true).unwrap();
        assert_eq!(
            raw[0].meld.utterance,
            "I\u{92}m here, \u{93}really\u{94}\u{85}"
        );
        assert_eq!(map_c1("a\u{96}b\u{97}c\u{a0}d"), "a–b—c d");
    }

    #[test]
    fn bad_cells_and_bytes_name_row_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let good = "1,hi,Ross,joy,positive,0,0,3,12,\"00:00:01,000\",\"00:00:02,000\"\n";
        let body = format!("{HEADER}\n{good}2,\"a\nb\",Ross,joy,positive,0,1,3,12,\"00:00:01,000\",\"00:00:02,000\"\n3,hey,Ross,joy,positive,x,2,3,12,\"00:00:01,000\",\"00:00:02,000\"\n");
        let err = read_meld_csv(&write(dir.path(), body.as_bytes()), false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("row 3 (line 5)") && err.contains("`Dialogue_ID`") && err.contains("`x`"),
            "{err}"
        );

        let body = format!(
            "{HEADER}\n{good}2,hi,Ross,happy,positive,0,1,3,12,\"00:00:01,000\",\"00:00:02,000\"\n"
        );
        let err = read_meld_csv(&write(dir.path(), body.as_bytes()), false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("row 2") && err.contains("`Emotion`") && err.contains("happy"),
            "{err}"
        );

        let mut body = format!("{HEADER}\n{good}").into_bytes();
        body.extend_from_slice(
            b"2,caf\xe9,Ross,joy,positive,0,1,3,12,\"00:00:01,000\",\"00:00:02,000\"\n",
        );
        let err = read_meld_csv(&write(dir.path(), &body), false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("row 2") && err.contains("`Utterance`") && err.contains("0xE9"),
            "{err}"
        );

        let body = format!("{HEADER}\n{good}2,hi,Ross,joy,positive,0,1,3,12,\"00:00:01,000\",\"00:00:02,000\",extra\n");
        let err = read_meld_csv(&write(dir.path(), body.as_bytes()), false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("row 2 (line 3)") && err.contains("12 fields where the header has 11"),
            "{err}"
        );

        let body = "Sr No.,Utterance\n1,hi\n";
        let err = read_meld_csv(&write(dir.path(), body.as_bytes()), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing column `Speaker`"), "{err}");
    }

    #[test]
    fn duplicates_are_found() {
        let row = |row, d, u| RawRow {
            row,
            meld: MeldRow {
                sr_no: row as u32,
                utterance: String::new(),
                speaker: String::new(),
                emotion: Emotion::Joy,
                sentiment: Sentiment::Positive,
                dialogue_id: d,
                utterance_id: u,
                season: 1,
                episode: 1,
                start_time: ClipTime::from_millis(0),
                end_time: ClipTime::from_millis(1),
            },
        };
        let d = duplicates(&[row(1, 0, 0), row(2, 0, 1), row(3, 0, 0)]);
        assert_eq!(
            d,
            vec![Duplicate {
                dialogue: 0,
                utterance: 0,
                rows: vec![1, 3]
            }]
        );
    }
}
