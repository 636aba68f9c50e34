//! What `erc-train predict` writes: `predictions.csv` (every row, with its probabilities or the reason it has
//! none), `emotions.srt` (the subtitles with the predicted emotion in front of each line) and, for a video,
//! `timeline.png` (the probabilities over the video's time, one band per utterance).

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::train::report::{draw_atomic, font, write_atomic};

/// One utterance's prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub dialogue: u32,
    pub sequence: u32,
    /// Seconds, where the row has times.
    pub start: Option<f64>,
    pub end: Option<f64>,
    pub speaker: String,
    pub text: String,
    /// One per class, in the config's class order; `None` when the row could not be predicted.
    pub probabilities: Option<Vec<f32>>,
    /// The annotated class, where known.
    pub truth: Option<usize>,
    /// Why the row has no prediction.
    pub reason: Option<String>,
}

impl Prediction {
    /// The most probable class.
    pub fn predicted(&self) -> Option<usize> {
        let p = self.probabilities.as_ref()?;
        // the first maximum, as argmax
        let mut best = 0;
        for (i, v) in p.iter().enumerate() {
            if *v > p[best] {
                best = i;
            }
        }
        Some(best)
    }
}

/// `HH:MM:SS,mmm`.
fn timestamp(seconds: f64) -> String {
    let ms = (seconds.max(0.0) * 1000.0).round() as u64;
    format!(
        "{:02}:{:02}:{:02},{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// `predictions.csv`: id, start, end, speaker, text, predicted, one probability column per class, the true label
/// and whether it matched (where known), the reason a row has no prediction.
pub fn write_csv(path: &Path, classes: &[String], rows: &[Prediction]) -> Result<()> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = [
        "id",
        "dialogue",
        "sequence",
        "start",
        "end",
        "speaker",
        "text",
        "predicted",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    header.extend(classes.iter().map(|c| format!("p_{c}")));
    header.extend(["true", "correct", "reason"].map(String::from));
    let csv_error = |e: csv::Error| Error::data(path, e.to_string());
    writer.write_record(&header).map_err(csv_error)?;
    for r in rows {
        let predicted = r.predicted();
        let mut record = vec![
            format!("{}-{}", r.dialogue, r.sequence),
            r.dialogue.to_string(),
            r.sequence.to_string(),
            r.start.map(timestamp).unwrap_or_default(),
            r.end.map(timestamp).unwrap_or_default(),
            r.speaker.clone(),
            r.text.clone(),
            predicted.map(|p| classes[p].clone()).unwrap_or_default(),
        ];
        match &r.probabilities {
            Some(p) => record.extend(p.iter().map(|v| format!("{v:.6}"))),
            None => record.extend(classes.iter().map(|_| String::new())),
        }
        record.push(r.truth.map(|t| classes[t].clone()).unwrap_or_default());
        record.push(match (r.truth, predicted) {
            (Some(t), Some(p)) => (t == p).to_string(),
            _ => String::new(),
        });
        record.push(r.reason.clone().unwrap_or_default());
        writer.write_record(&record).map_err(csv_error)?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|e| Error::Other(format!("{}: {e}", path.display())))?;
    write_atomic(path, &bytes).map_err(|e| Error::io(path, e))
}

/// `emotions.srt`: every row with times, in time order, `[joy 0.83] Speaker: text` (or `[no prediction: why]`).
pub fn write_srt(path: &Path, classes: &[String], rows: &[Prediction]) -> Result<()> {
    let mut timed: Vec<&Prediction> = rows
        .iter()
        .filter(|r| r.start.is_some() && r.end.is_some())
        .collect();
    timed.sort_by(|a, b| {
        a.start
            .partial_cmp(&b.start)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut srt = String::new();
    for (n, r) in timed.iter().enumerate() {
        let tag = match (r.predicted(), &r.probabilities) {
            (Some(p), Some(probs)) => format!("[{} {:.2}]", classes[p], probs[p]),
            _ => format!(
                "[no prediction: {}]",
                r.reason.as_deref().unwrap_or("unknown")
            ),
        };
        let who = if r.speaker.is_empty() {
            String::new()
        } else {
            format!("{}: ", r.speaker)
        };
        srt += &format!(
            "{}\n{} --> {}\n{tag} {who}{}\n\n",
            n + 1,
            timestamp(r.start.unwrap_or(0.0)),
            timestamp(r.end.unwrap_or(0.0)),
            r.text
        );
    }
    write_atomic(path, srt.as_bytes()).map_err(|e| Error::io(path, e))
}

/// The plot's colour of class `k` (a fixed palette, the same in every plot).
fn colour(k: usize) -> RGBColor {
    const PALETTE: [RGBColor; 7] = [
        RGBColor(214, 39, 40),   // anger
        RGBColor(140, 86, 75),   // disgust
        RGBColor(148, 103, 189), // fear
        RGBColor(255, 187, 40),  // joy
        RGBColor(160, 160, 160), // neutral
        RGBColor(31, 119, 180),  // sadness
        RGBColor(44, 160, 44),   // surprise
    ];
    PALETTE[k % PALETTE.len()]
}

/// `timeline.png`: x the video's time; each predicted utterance a band from its start to its end, its height split
/// in the classes' probabilities (stacked, the classes in order); rows without a prediction a grey hatch.
pub fn plot_timeline(path: &Path, classes: &[String], rows: &[Prediction]) -> Result<()> {
    draw_atomic(path, |path| draw_timeline(path, classes, rows))
}

fn draw_timeline(path: &Path, classes: &[String], rows: &[Prediction]) -> Result<()> {
    let plot_error = |e: &dyn std::fmt::Display| {
        Error::Other(format!("{}: cannot draw the timeline: {e}", path.display()))
    };
    let end = rows
        .iter()
        .filter_map(|r| r.end.or(r.start))
        .fold(1.0f64, f64::max);
    let width = 1400u32;
    let root = BitMapBackend::new(path, (width, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(&e))?;
    let font = font();
    let mut builder = ChartBuilder::on(&root);
    builder
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50);
    if let Some(font) = font {
        builder.caption("Emotion probabilities over the video", (font, 20));
    }
    let mut chart = builder
        .build_cartesian_2d(0f64..end, 0f64..1f64)
        .map_err(|e| plot_error(&e))?;
    if let Some(font) = font {
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_desc("seconds")
            .y_desc("probability")
            .label_style((font, 13))
            .draw()
            .map_err(|e| plot_error(&e))?;
    }
    for r in rows {
        let (Some(start), Some(stop)) = (r.start, r.end) else {
            continue;
        };
        if stop <= start {
            continue;
        }
        match &r.probabilities {
            Some(p) => {
                let mut low = 0f64;
                for (k, v) in p.iter().enumerate() {
                    let high = (low + *v as f64).min(1.0);
                    chart
                        .draw_series(std::iter::once(Rectangle::new(
                            [(start, low), (stop, high)],
                            colour(k).filled(),
                        )))
                        .map_err(|e| plot_error(&e))?;
                    low = high;
                }
            }
            None => {
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(start, 0.0), (stop, 1.0)],
                        RGBColor(230, 230, 230).filled(),
                    )))
                    .map_err(|e| plot_error(&e))?;
            }
        }
    }
    if let Some(font) = font {
        for (k, class) in classes.iter().enumerate() {
            let c = colour(k);
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(0.0, 0.0), (0.0, 0.0)],
                    c.filled(),
                )))
                .map_err(|e| plot_error(&e))?
                .label(class.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], c.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((font, 13))
            .draw()
            .map_err(|e| plot_error(&e))?;
    }
    root.present().map_err(|e| plot_error(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        seq: u32,
        start: f64,
        probs: Option<Vec<f32>>,
        truth: Option<usize>,
        reason: Option<&str>,
    ) -> Prediction {
        Prediction {
            dialogue: 0,
            sequence: seq,
            start: Some(start),
            end: Some(start + 1.5),
            speaker: "Ross".into(),
            text: format!("line {seq}"),
            probabilities: probs,
            truth,
            reason: reason.map(String::from),
        }
    }

    #[test]
    fn every_row_is_written_with_its_prediction_or_its_reason() {
        let classes: Vec<String> = ["anger", "joy", "neutral"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let rows = vec![
            row(1, 3.0, Some(vec![0.1, 0.7, 0.2]), Some(1), None),
            row(0, 0.5, Some(vec![0.5, 0.2, 0.3]), Some(2), None),
            row(
                2,
                6.0,
                None,
                None,
                Some("overlap: starts before the line before ends"),
            ),
        ];
        let dir = tempfile::tempdir().unwrap();
        write_csv(&dir.path().join("p.csv"), &classes, &rows).unwrap();
        let text = std::fs::read_to_string(dir.path().join("p.csv")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "id,dialogue,sequence,start,end,speaker,text,predicted,p_anger,p_joy,p_neutral,true,correct,reason"
        );
        assert!(lines[1]
            .starts_with("0-1,0,1,\"00:00:03,000\",\"00:00:04,500\",Ross,line 1,joy,0.100000"));
        assert!(lines[1].ends_with(",joy,true,"), "{}", lines[1]);
        assert!(lines[2].ends_with(",neutral,false,"), "{}", lines[2]);
        assert!(
            lines[3].ends_with(",,,overlap: starts before the line before ends"),
            "{}",
            lines[3]
        );
        write_srt(&dir.path().join("e.srt"), &classes, &rows).unwrap();
        let srt = std::fs::read_to_string(dir.path().join("e.srt")).unwrap();
        assert!(
            srt.starts_with("1\n00:00:00,500 --> 00:00:02,000\n[anger 0.50] Ross: line 0\n\n2\n"),
            "{srt}"
        );
        assert!(srt
            .contains("[no prediction: overlap: starts before the line before ends] Ross: line 2"));
        plot_timeline(&dir.path().join("t.png"), &classes, &rows).unwrap();
        let png = std::fs::read(dir.path().join("t.png")).unwrap();
        assert!(png.starts_with(b"\x89PNG"));
    }
}
