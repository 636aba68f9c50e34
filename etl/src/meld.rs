//! MELD's own raw format: the annotation CSVs (`train_sent_emo.csv` …) and the clip file names.
//!
//! The real header is `Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,
//! StartTime,EndTime`; times are quoted `"hh:mm:ss,mmm"`. Clips are `dia{Dialogue_ID}_utt{Utterance_ID}.mp4` in the
//! split's own folder (dialogue ids restart at 0 in every split).

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use meld_shared::{Emotion, Sentiment};

/// The exact header of MELD's annotation CSVs.
pub const MELD_HEADER: [&str; 11] = [
    "Sr No.",
    "Utterance",
    "Speaker",
    "Emotion",
    "Sentiment",
    "Dialogue_ID",
    "Utterance_ID",
    "Season",
    "Episode",
    "StartTime",
    "EndTime",
];

/// One row of a MELD annotation CSV.
#[derive(Debug, Clone, PartialEq)]
pub struct MeldRow {
    pub sr_no: u32,
    pub utterance: String,
    pub speaker: String,
    pub emotion: Emotion,
    pub sentiment: Sentiment,
    pub dialogue_id: u32,
    pub utterance_id: u32,
    pub season: u32,
    pub episode: u32,
    pub start_time: ClipTime,
    pub end_time: ClipTime,
}

impl MeldRow {
    pub fn clip_file_name(&self) -> String {
        clip_file_name(self.dialogue_id, self.utterance_id)
    }

    /// The duration the annotation gives the clip (EndTime − StartTime), in seconds.
    pub fn annotated_duration(&self) -> f64 {
        self.end_time.seconds() - self.start_time.seconds()
    }

    pub fn to_record(&self) -> [String; 11] {
        [
            self.sr_no.to_string(),
            self.utterance.clone(),
            self.speaker.clone(),
            self.emotion.name().to_string(),
            self.sentiment.name().to_string(),
            self.dialogue_id.to_string(),
            self.utterance_id.to_string(),
            self.season.to_string(),
            self.episode.to_string(),
            self.start_time.to_string(),
            self.end_time.to_string(),
        ]
    }
}

/// `dia{D}_utt{U}.mp4`
pub fn clip_file_name(dialogue: u32, utterance: u32) -> String {
    format!("dia{dialogue}_utt{utterance}.mp4")
}

/// The (dialogue, utterance) of a clip file name `dia{D}_utt{U}.mp4`; `None` for any other name (including the
/// `final_videos_test…`-prefixed variants of the test folder, which are not the labelled clips).
pub fn parse_clip_file_name(name: &str) -> Option<(u32, u32)> {
    let rest = name.strip_prefix("dia")?.strip_suffix(".mp4")?;
    let (d, u) = rest.split_once("_utt")?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(d) || !digits(u) {
        return None;
    }
    Some((d.parse().ok()?, u.parse().ok()?))
}

/// A time of day in an episode, as MELD writes it: `hh:mm:ss,mmm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClipTime {
    pub millis: u64,
}

impl ClipTime {
    pub fn from_millis(millis: u64) -> Self {
        ClipTime { millis }
    }

    pub fn seconds(self) -> f64 {
        self.millis as f64 / 1000.0
    }
}

impl fmt::Display for ClipTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.millis % 1000;
        let s = self.millis / 1000;
        write!(
            f,
            "{:02}:{:02}:{:02},{:03}",
            s / 3600,
            (s / 60) % 60,
            s % 60,
            ms
        )
    }
}

impl FromStr for ClipTime {
    type Err = String;

    /// Accepts `hh:mm:ss,mmm` (MELD) and `hh:mm:ss.mmm`; the fraction may have 1–3 digits.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("expected a time hh:mm:ss,mmm, found `{s}`");
        let t = s.trim();
        let (hms, frac) = match t.split_once([',', '.']) {
            Some((hms, frac)) => (hms, frac),
            None => (t, "0"),
        };
        let parts: Vec<&str> = hms.split(':').collect();
        if parts.len() != 3 || frac.is_empty() || frac.len() > 3 {
            return Err(bad());
        }
        let number = |p: &str| p.parse::<u64>().map_err(|_| bad());
        let (h, m, sec) = (number(parts[0])?, number(parts[1])?, number(parts[2])?);
        if m >= 60 || sec >= 60 {
            return Err(bad());
        }
        let ms = number(frac)? * 10u64.pow(3 - frac.len() as u32);
        Ok(ClipTime::from_millis(((h * 60 + m) * 60 + sec) * 1000 + ms))
    }
}

/// Writes a MELD annotation CSV with the real header. Fields with commas, quotes or line breaks are quoted, as in
/// the real files (the times always are: they contain a comma).
pub fn write_meld_csv(path: &Path, rows: &[MeldRow]) -> std::io::Result<()> {
    let mut writer = csv::Writer::from_path(path)?;
    writer.write_record(MELD_HEADER)?;
    for row in rows {
        writer.write_record(row.to_record())?;
    }
    writer.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_names_parse_only_labelled_clips() {
        assert_eq!(parse_clip_file_name("dia12_utt3.mp4"), Some((12, 3)));
        assert_eq!(parse_clip_file_name(&clip_file_name(0, 19)), Some((0, 19)));
        assert_eq!(
            parse_clip_file_name("final_videos_testdia12_utt3.mp4"),
            None
        );
        assert_eq!(parse_clip_file_name("dia12_utt.mp4"), None);
        assert_eq!(parse_clip_file_name("dia1_utt2.mkv"), None);
    }

    #[test]
    fn times_round_trip_like_meld() {
        let t: ClipTime = "00:16:16,059".parse().unwrap();
        assert_eq!(t.millis, 976_059);
        assert_eq!(t.to_string(), "00:16:16,059");
        assert_eq!("0:00:01.5".parse::<ClipTime>().unwrap().millis, 1500);
        assert!("00:61:00,000".parse::<ClipTime>().is_err());
        assert!("16:16".parse::<ClipTime>().is_err());
    }
}
