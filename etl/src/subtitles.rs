//! The utterances of a long video: its subtitles, as SRT or as CSV.
//!
//! * SRT: blocks separated by blank lines — an index, `HH:MM:SS,mmm --> HH:MM:SS,mmm` (`.` accepted for `,`), one
//!   or more text lines (joined with a space). A first text line `Name: words` names the speaker (a transcript's
//!   convention; MELD's own utterances carry the speaker apart), up to 40 characters before the colon.
//! * CSV: a header with `start`, `end`, `text` and optionally `speaker` and `dialogue` (any order, other columns
//!   ignored); times as seconds (`12.5`) or `HH:MM:SS,mmm`. `dialogue` (an integer) groups the lines into
//!   dialogues: a text model's prompt is the dialogue so far (without it, the whole video is one dialogue).
//!
//! A file that cannot be read as either is an error naming the line and what was expected. Nothing here judges
//! the times (an empty, inverted, overlapping or too late range is still an utterance): `segment` gives each such
//! line its reason.

use std::path::{Path, PathBuf};

/// One subtitle line.
#[derive(Debug, Clone, PartialEq)]
pub struct Utterance {
    /// The line of the file the utterance starts at (1-based).
    pub line: usize,
    pub start: f64,
    pub end: f64,
    pub speaker: String,
    pub text: String,
    /// The dialogue the line belongs to (CSV's `dialogue` column).
    pub dialogue: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum SubtitleError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// Reads `path` as CSV when it ends in `.csv`, else as SRT.
pub fn read(path: &Path) -> Result<Vec<Utterance>, SubtitleError> {
    let text = std::fs::read_to_string(path).map_err(|source| SubtitleError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let text = text.trim_start_matches('\u{feff}');
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    {
        parse_csv(path, text)
    } else {
        parse_srt(path, text)
    }
}

fn line_error(path: &Path, line: usize, message: impl Into<String>) -> SubtitleError {
    SubtitleError::Line {
        path: path.to_path_buf(),
        line,
        message: message.into(),
    }
}

/// `HH:MM:SS,mmm` (or `.mmm`, or `MM:SS,mmm`) to seconds.
pub fn parse_timestamp(text: &str) -> Option<f64> {
    let text = text.trim();
    let (clock, millis) = match text.rsplit_once([',', '.']) {
        Some((clock, ms)) if !ms.is_empty() && ms.chars().all(|c| c.is_ascii_digit()) => {
            (clock, format!("0.{ms}").parse::<f64>().ok()?)
        }
        Some(_) => return None,
        None => (text, 0.0),
    };
    let parts: Vec<&str> = clock.split(':').collect();
    if parts.is_empty() || parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    let mut seconds = 0.0;
    for part in &parts {
        if !part.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        seconds = seconds * 60.0 + part.parse::<f64>().ok()?;
    }
    Some(seconds + millis)
}

/// Seconds as `HH:MM:SS,mmm` (SRT's form, and MELD's `StartTime`).
pub fn format_timestamp(seconds: f64) -> String {
    let ms = (seconds.max(0.0) * 1000.0).round() as u64;
    format!(
        "{:02}:{:02}:{:02},{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// `Name: words` → ("Name", "words"); otherwise no speaker.
fn split_speaker(text: &str) -> (String, String) {
    if let Some((name, rest)) = text.split_once(':') {
        let name = name.trim();
        let plausible = !name.is_empty()
            && name.chars().count() <= 40
            && !name.chars().any(|c| c.is_ascii_digit())
            && !rest.trim().is_empty();
        if plausible {
            return (name.to_string(), rest.trim().to_string());
        }
    }
    (String::new(), text.trim().to_string())
}

fn parse_srt(path: &Path, text: &str) -> Result<Vec<Utterance>, SubtitleError> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim().is_empty() {
            i += 1;
            continue;
        }
        let block = i + 1;
        let index = lines[i].trim();
        if !index.chars().all(|c| c.is_ascii_digit()) {
            return Err(line_error(
                path,
                block,
                format!("expected a subtitle's number, found `{index}`"),
            ));
        }
        let timing = lines.get(i + 1).copied().unwrap_or("");
        let times = timing.split_once("-->").and_then(|(a, b)| {
            // a position after the end time (`X1:…`) is ignored
            let b = b.split_whitespace().next().unwrap_or("");
            Some((parse_timestamp(a)?, parse_timestamp(b)?))
        });
        let Some((start, end)) = times else {
            return Err(line_error(
                path,
                block + 1,
                format!(
                    "expected `HH:MM:SS,mmm --> HH:MM:SS,mmm`, found `{}`",
                    timing.trim()
                ),
            ));
        };
        let mut j = i + 2;
        let mut words = Vec::new();
        while j < lines.len() && !lines[j].trim().is_empty() {
            words.push(lines[j].trim());
            j += 1;
        }
        let (speaker, text) = split_speaker(&words.join(" "));
        out.push(Utterance {
            line: block,
            start,
            end,
            speaker,
            text,
            dialogue: None,
        });
        i = j;
    }
    Ok(out)
}

fn parse_csv(path: &Path, text: &str) -> Result<Vec<Utterance>, SubtitleError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(text.as_bytes());
    let header = reader
        .headers()
        .map_err(|e| line_error(path, 1, e.to_string()))?
        .clone();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(name))
    };
    let (Some(start), Some(end), Some(words)) = (column("start"), column("end"), column("text"))
    else {
        return Err(line_error(
            path,
            1,
            format!(
                "expected the columns start, end, text (and optionally speaker), found {:?}",
                header.iter().collect::<Vec<_>>()
            ),
        ));
    };
    let speaker = column("speaker");
    let dialogue = column("dialogue");
    let mut out = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line() as usize);
            line_error(path, line, e.to_string())
        })?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        let time = |k: usize, name: &str| {
            let cell = record.get(k).unwrap_or("").trim();
            cell.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .or_else(|| parse_timestamp(cell))
                .ok_or_else(|| {
                    line_error(
                        path,
                        line,
                        format!("`{name}`: expected seconds or HH:MM:SS,mmm, found `{cell}`"),
                    )
                })
        };
        out.push(Utterance {
            line,
            start: time(start, "start")?,
            end: time(end, "end")?,
            speaker: speaker
                .and_then(|k| record.get(k))
                .unwrap_or("")
                .trim()
                .to_string(),
            text: record.get(words).unwrap_or("").trim().to_string(),
            dialogue: match dialogue.and_then(|k| record.get(k)).map(str::trim) {
                None | Some("") => None,
                Some(cell) => Some(cell.parse::<u32>().map_err(|_| {
                    line_error(
                        path,
                        line,
                        format!("`dialogue`: expected a non-negative integer, found `{cell}`"),
                    )
                })?),
            },
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_read_and_write() {
        assert_eq!(parse_timestamp("00:16:16,059"), Some(976.059));
        assert_eq!(parse_timestamp("01:00:00.5"), Some(3600.5));
        assert_eq!(parse_timestamp("02:03,250"), Some(123.25));
        assert_eq!(parse_timestamp("12"), Some(12.0));
        for bad in ["", "aa:bb", "00:01:02,x", "1::2", "00:00:01,"] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
        assert_eq!(format_timestamp(976.059), "00:16:16,059");
        assert_eq!(format_timestamp(3725.5), "01:02:05,500");
    }

    #[test]
    fn srt_blocks_with_speakers_and_multiline_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ep.srt");
        std::fs::write(
            &path,
            "\u{feff}1\n00:00:01,000 --> 00:00:02,500\nRoss: We were on a break!\n\n2\n00:00:03,000 --> \
             00:00:04,000 X1:10\nNo speaker here,\nsecond line\n\n\n3\n00:00:05,000 --> 00:00:04,000\n10:30 is late\n",
        )
        .unwrap();
        let u = read(&path).unwrap();
        assert_eq!(u.len(), 3);
        assert_eq!(
            (
                u[0].line,
                u[0].start,
                u[0].end,
                u[0].speaker.as_str(),
                u[0].text.as_str()
            ),
            (1, 1.0, 2.5, "Ross", "We were on a break!")
        );
        assert_eq!(
            (u[1].speaker.as_str(), u[1].text.as_str()),
            ("", "No speaker here, second line")
        );
        // an inverted range is read as written (segment gives it its reason); a digit-led colon is no speaker
        assert_eq!(
            (u[2].start, u[2].end, u[2].speaker.as_str()),
            (5.0, 4.0, "")
        );
    }

    #[test]
    fn csv_with_seconds_or_timestamps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ep.csv");
        std::fs::write(
            &path,
            "speaker,start,end,text\nJoey,1.5,3,How you doin'?\n,00:00:04,000,00:00:05,250,\"hi, there\"\n",
        )
        .unwrap();
        // the second row's timestamps contain commas: quoted cells are needed, so this file is malformed
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
        std::fs::write(
            &path,
            "speaker,start,end,text\nJoey,1.5,3,How you doin'?\n,\"00:00:04,000\",\"00:00:05,250\",\"hi, there\"\n",
        )
        .unwrap();
        let u = read(&path).unwrap();
        assert_eq!(
            (u[0].start, u[0].end, u[0].speaker.as_str()),
            (1.5, 3.0, "Joey")
        );
        assert_eq!(
            (u[1].start, u[1].end, u[1].text.as_str()),
            (4.0, 5.25, "hi, there")
        );
    }

    #[test]
    fn errors_name_the_line_and_what_was_expected() {
        let dir = tempfile::tempdir().unwrap();
        let srt = dir.path().join("bad.srt");
        std::fs::write(
            &srt,
            "1\n00:00:01,000 --> 00:00:02,000\nok\n\n2\n00:00:03 -> 00:00:04\nbad\n",
        )
        .unwrap();
        let err = read(&srt).unwrap_err().to_string();
        assert!(
            err.contains("bad.srt line 6") && err.contains("-->"),
            "{err}"
        );
        std::fs::write(&srt, "first\n00:00:01,000 --> 00:00:02,000\nok\n").unwrap();
        let err = read(&srt).unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("number"), "{err}");
        let csv = dir.path().join("bad.csv");
        std::fs::write(&csv, "from,to,words\n1,2,x\n").unwrap();
        assert!(read(&csv)
            .unwrap_err()
            .to_string()
            .contains("start, end, text"));
        std::fs::write(&csv, "start,end,text\n1,soon,x\n").unwrap();
        let err = read(&csv).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("`end`"), "{err}");
    }
}
