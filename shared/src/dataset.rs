//! The dataset CSV written by `meld-etl extract` and read by `erc-train`: one file per split
//! (`train.csv`, `valid.csv`, `test.csv`), one row per MELD utterance, rows sorted by (dialogue, sequence).
//!
//! Columns: the reference's seven first and in its order — `dialogue, sequence, speaker, x_text, x_visual,
//! x_audio, label` — then ours. Media paths are relative to the CSV's folder (`train/d-0-seq-1.jpg`); an empty
//! media cell means the ETL could not produce that medium (the reason is in `failures.csv`), never a dropped row.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::{Emotion, Error, Result, Sentiment};

/// The reference's columns, in the reference's order. They always come first.
pub const REFERENCE_COLUMNS: [&str; 7] = [
    "dialogue", "sequence", "speaker", "x_text", "x_visual", "x_audio", "label",
];

/// Our extra columns, after the reference's. All optional when reading.
pub const EXTRA_COLUMNS: [&str; 7] = [
    "x_visual_faces",
    "sentiment",
    "season",
    "episode",
    "start_time",
    "end_time",
    "clip_duration",
];

/// One utterance of the dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetRow {
    pub dialogue: u32,
    pub sequence: u32,
    pub speaker: String,
    pub x_text: String,
    /// The 5-frame mosaic (JPEG), relative to the CSV's folder; `None` when the clip gave no video.
    pub x_visual: Option<String>,
    /// The utterance's audio (16-bit PCM WAV), relative to the CSV's folder; `None` when the clip gave no audio.
    pub x_audio: Option<String>,
    /// The annotated emotion; `None` (an empty cell) for utterances nobody labelled — what `meld-etl segment`
    /// cuts from a video for `erc-train predict`. Training and evaluation refuse unlabelled rows.
    pub label: Option<Emotion>,
    /// The face-only mosaic (`extract --faces`), relative to the CSV's folder.
    pub x_visual_faces: Option<String>,
    pub sentiment: Option<Sentiment>,
    pub season: Option<u32>,
    pub episode: Option<u32>,
    /// MELD's `StartTime`/`EndTime` as written there (`hh:mm:ss,mmm`).
    pub start_time: Option<String>,
    pub end_time: Option<String>,
    /// Duration of the decoded clip in seconds.
    pub clip_duration: Option<f64>,
}

impl DatasetRow {
    /// A row with only the reference's columns set.
    pub fn new(dialogue: u32, sequence: u32, speaker: &str, x_text: &str, label: Emotion) -> Self {
        DatasetRow {
            label: Some(label),
            ..DatasetRow::unlabelled(dialogue, sequence, speaker, x_text)
        }
    }

    /// A row without a label (its `label` cell empty).
    pub fn unlabelled(dialogue: u32, sequence: u32, speaker: &str, x_text: &str) -> Self {
        DatasetRow {
            dialogue,
            sequence,
            speaker: speaker.to_string(),
            x_text: x_text.to_string(),
            x_visual: None,
            x_audio: None,
            label: None,
            x_visual_faces: None,
            sentiment: None,
            season: None,
            episode: None,
            start_time: None,
            end_time: None,
            clip_duration: None,
        }
    }

    /// The sort key of the dataset (the reference re-sorts by it too).
    pub fn key(&self) -> (u32, u32) {
        (self.dialogue, self.sequence)
    }

    fn to_record(&self) -> [String; 14] {
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        [
            self.dialogue.to_string(),
            self.sequence.to_string(),
            self.speaker.clone(),
            self.x_text.clone(),
            opt(&self.x_visual),
            opt(&self.x_audio),
            self.label.map(|l| l.name().to_string()).unwrap_or_default(),
            opt(&self.x_visual_faces),
            self.sentiment
                .map(|s| s.name().to_string())
                .unwrap_or_default(),
            self.season.map(|v| v.to_string()).unwrap_or_default(),
            self.episode.map(|v| v.to_string()).unwrap_or_default(),
            opt(&self.start_time),
            opt(&self.end_time),
            self.clip_duration
                .map(|d| format!("{d:.3}"))
                .unwrap_or_default(),
        ]
    }
}

/// Resolves a media cell (relative to the CSV) to a path.
pub fn media_path(csv_path: &Path, cell: &str) -> PathBuf {
    csv_path.parent().unwrap_or(Path::new(".")).join(cell)
}

/// Writes a dataset CSV atomically: rows go to `<path>.tmp`, which [`DatasetWriter::finish`] renames into place,
/// so an interrupted run never leaves a truncated CSV behind.
pub struct DatasetWriter {
    path: PathBuf,
    tmp: PathBuf,
    writer: csv::Writer<BufWriter<File>>,
}

impl DatasetWriter {
    pub fn create(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut writer = csv::Writer::from_writer(BufWriter::new(file));
        let header: Vec<&str> = REFERENCE_COLUMNS
            .iter()
            .chain(EXTRA_COLUMNS.iter())
            .copied()
            .collect();
        writer
            .write_record(&header)
            .map_err(|e| csv_error(&tmp, e))?;
        Ok(DatasetWriter { path, tmp, writer })
    }

    pub fn write_row(&mut self, row: &DatasetRow) -> Result<()> {
        self.writer
            .write_record(row.to_record())
            .map_err(|e| csv_error(&self.tmp, e))
    }

    /// Flushes, syncs and renames the file into place.
    pub fn finish(self) -> Result<PathBuf> {
        let DatasetWriter { path, tmp, writer } = self;
        let mut inner = writer
            .into_inner()
            .map_err(|e| Error::io(&tmp, std::io::Error::other(e.to_string())))?;
        inner.flush().map_err(|e| Error::io(&tmp, e))?;
        inner.get_ref().sync_all().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        Ok(path)
    }
}

/// Writes a whole split's rows, sorted by (dialogue, sequence).
pub fn write_dataset(path: &Path, rows: &[DatasetRow]) -> Result<()> {
    let mut sorted: Vec<&DatasetRow> = rows.iter().collect();
    sorted.sort_by_key(|r| r.key());
    let mut writer = DatasetWriter::create(path)?;
    for row in sorted {
        writer.write_row(row)?;
    }
    writer.finish().map(|_| ())
}

/// Reads a dataset CSV. The reference's seven columns are required; ours are optional; a leading unnamed index
/// column (what the reference's pandas ETL writes) is tolerated. Rows come back sorted by (dialogue, sequence).
pub fn read_dataset(path: &Path) -> Result<Vec<DatasetRow>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = csv::ReaderBuilder::new().from_reader(BufReader::new(file));
    let header = reader.headers().map_err(|e| csv_error(path, e))?.clone();
    let columns = ColumnIndex::new(path, &header)?;
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| csv_error(path, e))?;
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        rows.push(columns.parse(path, line, &record)?);
    }
    rows.sort_by_key(|r| r.key());
    Ok(rows)
}

/// Where each known column sits in a file's header.
struct ColumnIndex {
    position: Vec<Option<usize>>, // indexed like REFERENCE_COLUMNS ++ EXTRA_COLUMNS
}

impl ColumnIndex {
    fn new(path: &Path, header: &csv::StringRecord) -> Result<Self> {
        let known: Vec<&str> = REFERENCE_COLUMNS
            .iter()
            .chain(EXTRA_COLUMNS.iter())
            .copied()
            .collect();
        let mut position = vec![None; known.len()];
        for (i, name) in header.iter().enumerate() {
            let name = name.trim_start_matches('\u{feff}').trim();
            if name.is_empty() && i == 0 {
                continue; // the reference's pandas index column
            }
            match known.iter().position(|k| *k == name) {
                Some(k) if position[k].is_some() => {
                    return Err(Error::Header {
                        path: path.into(),
                        message: format!("column `{name}` appears twice"),
                    })
                }
                Some(k) => position[k] = Some(i),
                None => {
                    return Err(Error::Header {
                        path: path.into(),
                        message: format!("unknown column `{name}`; expected {}", known.join(", ")),
                    })
                }
            }
        }
        let missing: Vec<&str> = REFERENCE_COLUMNS
            .iter()
            .zip(&position)
            .filter(|(_, p)| p.is_none())
            .map(|(c, _)| *c)
            .collect();
        if !missing.is_empty() {
            return Err(Error::Header {
                path: path.into(),
                message: format!("missing required column(s) {}", missing.join(", ")),
            });
        }
        Ok(ColumnIndex { position })
    }

    fn parse(&self, path: &Path, line: u64, record: &csv::StringRecord) -> Result<DatasetRow> {
        let cell = |k: usize| self.position[k].and_then(|i| record.get(i)).unwrap_or("");
        let name = |k: usize| {
            REFERENCE_COLUMNS
                .iter()
                .chain(EXTRA_COLUMNS.iter())
                .nth(k)
                .copied()
                .unwrap_or("?")
        };
        let field_error = |k: usize, message: String| Error::Field {
            path: path.into(),
            line,
            column: name(k).to_string(),
            message,
        };
        let number = |k: usize| -> Result<u32> {
            let v = cell(k).trim();
            v.parse().map_err(|_| {
                field_error(k, format!("expected a non-negative integer, found `{v}`"))
            })
        };
        let optional_number = |k: usize| -> Result<Option<u32>> {
            if cell(k).trim().is_empty() {
                Ok(None)
            } else {
                number(k).map(Some)
            }
        };
        let optional_text = |k: usize| -> Option<String> {
            let v = cell(k);
            (!v.is_empty()).then(|| v.to_string())
        };
        let label = match cell(6).trim() {
            "" => None,
            v => Some(
                v.parse::<Emotion>()
                    .map_err(|e| field_error(6, e.to_string()))?,
            ),
        };
        let sentiment = match cell(8).trim() {
            "" => None,
            v => Some(
                v.parse::<Sentiment>()
                    .map_err(|e| field_error(8, e.to_string()))?,
            ),
        };
        let clip_duration = match cell(13).trim() {
            "" => None,
            v => Some(
                v.parse::<f64>()
                    .map_err(|_| field_error(13, format!("expected seconds, found `{v}`")))?,
            ),
        };
        Ok(DatasetRow {
            dialogue: number(0)?,
            sequence: number(1)?,
            speaker: cell(2).to_string(),
            x_text: cell(3).to_string(),
            x_visual: optional_text(4),
            x_audio: optional_text(5),
            label,
            x_visual_faces: optional_text(7),
            sentiment,
            season: optional_number(9)?,
            episode: optional_number(10)?,
            start_time: optional_text(11),
            end_time: optional_text(12),
            clip_duration,
        })
    }
}

fn csv_error(path: &Path, e: csv::Error) -> Error {
    let line = e.position().map(|p| p.line()).unwrap_or(0);
    match e.kind() {
        csv::ErrorKind::Io(_) => Error::io(path, std::io::Error::other(e.to_string())),
        _ => Error::Row {
            path: path.into(),
            line,
            message: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<DatasetRow> {
        let mut a = DatasetRow::new(3, 1, "Ross", "Hi, \"you\"…\nsecond line", Emotion::Joy);
        a.x_visual = Some("train/d-3-seq-1.jpg".into());
        a.x_audio = Some("train/d-3-seq-1.wav".into());
        a.sentiment = Some(Sentiment::Positive);
        a.season = Some(3);
        a.episode = Some(12);
        a.start_time = Some("00:16:16,059".into());
        a.end_time = Some("00:16:18,500".into());
        a.clip_duration = Some(2.441);
        let b = DatasetRow::new(0, 7, "Monica", "no media", Emotion::Fear);
        // an utterance nobody labelled: an empty cell, read back as None
        let c = DatasetRow::unlabelled(5, 0, "", "cut from a video");
        vec![a, b, c]
    }

    #[test]
    fn write_then_read_round_trips_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.csv");
        write_dataset(&path, &sample()).unwrap();
        assert!(!dir.path().join("train.csv.tmp").exists());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(
            "dialogue,sequence,speaker,x_text,x_visual,x_audio,label,x_visual_faces,"
        ));
        let rows = read_dataset(&path).unwrap();
        let mut expected = sample();
        expected.sort_by_key(|r| r.key());
        assert_eq!(rows, expected);
    }

    #[test]
    fn reference_layout_with_index_column_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("valid.csv");
        std::fs::write(
            &path,
            ",dialogue,sequence,speaker,x_text,x_visual,x_audio,label\n5,1,0,Joey,hey,d-1-seq-0.png,d-1-seq-0.wav,neutral\n",
        )
        .unwrap();
        let rows = read_dataset(&path).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].x_visual.as_deref(), Some("d-1-seq-0.png"));
        assert_eq!(rows[0].label, Some(Emotion::Neutral));
    }

    #[test]
    fn bad_cells_name_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.csv");
        std::fs::write(
            &path,
            "dialogue,sequence,speaker,x_text,x_visual,x_audio,label\n0,0,A,ok,,,joy\n0,x,A,bad,,,joy\n",
        )
        .unwrap();
        let err = read_dataset(&path).unwrap_err().to_string();
        assert!(
            err.contains("line 3") && err.contains("`sequence`") && err.contains("`x`"),
            "{err}"
        );

        std::fs::write(
            &path,
            "dialogue,sequence,speaker,x_text,x_visual,x_audio,label\n0,0,A,ok,,,happy\n",
        )
        .unwrap();
        let err = read_dataset(&path).unwrap_err().to_string();
        assert!(err.contains("`label`") && err.contains("happy"), "{err}");

        std::fs::write(&path, "dialogue,sequence,speaker,x_text,x_audio,label\n").unwrap();
        let err = read_dataset(&path).unwrap_err().to_string();
        assert!(err.contains("missing required column(s) x_visual"), "{err}");
    }
}
