//! `meld-etl segment`: one long video and its subtitles as a dataset of utterances, each cut from its time range
//! the way `extract` cuts a MELD clip — the same decoder (sought to the range, never decoding the whole video),
//! mosaic, WAV and face stage, so that a model trained on `extract`'s output sees the same kind of input.
//!
//! Output, like `extract`'s for one split: `OUT/test.csv` (one row per subtitle line: its dialogue — the CSV's
//! `dialogue` column, else 0: the whole video — and its place in it, `start_time`/`end_time`, no label), the
//! media under `OUT/test/` (`u-<line index>`), and
//! `OUT/failures.csv` with the reason of every line that got no media: an empty or inverted range, one past the
//! video's end or overlapping the line before, a range the decoder could not read. Every line is a row.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use meld_shared::dataset::DatasetRow;
use meld_shared::Split;
use serde::Serialize;

use crate::decode::Range;
use crate::extract::{
    face_stage, init_ffmpeg, process_jobs, write_atomically, write_faces, write_failures, Failure,
    Job, MediaArgs, Settings,
};
use crate::subtitles::{self, format_timestamp, Utterance};

/// Where the utterances go: the `test` split of the dataset layout `erc-train` reads.
pub const SPLIT: Split = Split::Test;

/// How far past the video's end a range may reach (container durations are rounded): seconds.
const END_TOLERANCE: f64 = 0.1;

/// How much two neighbouring ranges may overlap before it counts (subtitle times are rounded): seconds.
const OVERLAP_TOLERANCE: f64 = 0.001;

#[derive(Debug, Clone, clap::Args)]
pub struct SegmentArgs {
    /// The video (any container and codecs FFmpeg reads).
    #[arg(long)]
    pub video: PathBuf,
    /// Its utterances: SRT, or CSV with `start,end,text[,speaker]`.
    #[arg(long)]
    pub subtitles: PathBuf,
    /// Output folder (created): `test.csv`, `test/`, `failures.csv`, `manifest.json`.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub media: MediaArgs,
}

/// What `segment` did (`manifest.json`).
#[derive(Debug, Clone, Serialize)]
pub struct SegmentSummary {
    pub tool: String,
    pub version: String,
    pub video: PathBuf,
    pub subtitles: PathBuf,
    pub out: PathBuf,
    pub video_seconds: f64,
    pub settings: Settings,
    pub utterances: usize,
    /// Utterances with both a mosaic and a WAV.
    pub complete: usize,
    pub failures_by_reason: BTreeMap<String, usize>,
    pub jobs: usize,
    pub wall_seconds: f64,
    pub utterances_per_second: f64,
}

/// The video's length in seconds (its container's, else its video stream's).
fn video_seconds(path: &Path) -> Result<f64> {
    let input = ffmpeg_next::format::input(&path)
        .with_context(|| format!("{}: cannot open the video", path.display()))?;
    if input.duration() > 0 {
        return Ok(input.duration() as f64 / 1e6);
    }
    let stream = input
        .streams()
        .best(ffmpeg_next::media::Type::Video)
        .with_context(|| format!("{}: no video stream and no duration", path.display()))?;
    let tb = stream.time_base();
    Ok(stream.duration() as f64 * tb.numerator() as f64 / tb.denominator().max(1) as f64)
}

/// Why an utterance's range cannot be cut, if it cannot: (reason, detail). `previous_end` is the end of the
/// last line before it that had a range.
pub fn range_problem(
    u: &Utterance,
    previous_end: Option<f64>,
    video_seconds: f64,
) -> Option<(&'static str, String)> {
    let span = format!(
        "{} --> {}",
        format_timestamp(u.start),
        format_timestamp(u.end)
    );
    if !(u.start.is_finite() && u.end.is_finite()) || u.start < 0.0 {
        return Some(("bad_range", format!("{span}: not a time range")));
    }
    if u.end == u.start {
        return Some(("empty_range", format!("{span}: the range is empty")));
    }
    if u.end < u.start {
        return Some(("inverted_range", format!("{span}: ends before it starts")));
    }
    if u.start >= video_seconds || u.end > video_seconds + END_TOLERANCE {
        return Some((
            "past_end",
            format!(
                "{span}: past the video's end at {}",
                format_timestamp(video_seconds)
            ),
        ));
    }
    match previous_end {
        Some(end) if u.start < end - OVERLAP_TOLERANCE => Some((
            "overlap",
            format!(
                "{span}: starts before the line before ends ({})",
                format_timestamp(end)
            ),
        )),
        _ => None,
    }
}

/// Runs `segment`.
pub fn run(args: &SegmentArgs) -> Result<SegmentSummary> {
    let started = Instant::now();
    init_ffmpeg()?;
    let settings = Settings::from_args(&args.media, false);
    let face_stage = face_stage(&args.media, &settings)?;
    let utterances = subtitles::read(&args.subtitles)?;
    let video_seconds = video_seconds(&args.video)?;
    let media_dir = args.out.join(SPLIT.dataset_name());
    let record_dir = args.out.join(".extract").join(SPLIT.dataset_name());
    for dir in [&media_dir, &record_dir] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }

    // (dialogue, place in it) of each line, in the file's order
    let mut places: BTreeMap<u32, u32> = BTreeMap::new();
    let keys: Vec<(u32, u32)> = utterances
        .iter()
        .map(|u| {
            let dialogue = u.dialogue.unwrap_or(0);
            let next = places.entry(dialogue).or_insert(0);
            *next += 1;
            (dialogue, *next - 1)
        })
        .collect();
    let mut failures = Vec::new();
    let mut jobs = Vec::new();
    let mut previous_end: Option<f64> = None;
    for (i, u) in utterances.iter().enumerate() {
        let key = keys[i];
        let problem = range_problem(u, previous_end, video_seconds);
        if u.end > u.start && u.start.is_finite() && u.end.is_finite() {
            previous_end = Some(previous_end.map_or(u.end, |e| e.max(u.end)));
        }
        match problem {
            Some((reason, detail)) => failures.push(Failure {
                split: SPLIT.dataset_name().to_string(),
                dialogue: Some(key.0),
                utterance: Some(key.1),
                stage: "segment".into(),
                reason: reason.into(),
                detail: format!("{} line {}: {detail}", args.subtitles.display(), u.line),
            }),
            None => {
                let stem = format!("u-{i}");
                jobs.push(Job {
                    split: SPLIT,
                    key,
                    clip: Some(args.video.clone()),
                    range: Some(Range {
                        start: u.start,
                        end: u.end,
                    }),
                    annotated: u.end - u.start,
                    jpg: media_dir.join(format!("{stem}.jpg")),
                    faces_jpg: media_dir.join(format!("{stem}.faces.jpg")),
                    wav: media_dir.join(format!("{stem}.wav")),
                    record: record_dir.join(format!("{stem}.json")),
                });
            }
        }
    }

    let (outcomes, threads) = process_jobs(
        &jobs,
        &settings,
        &args.media,
        face_stage.as_ref(),
        ("segment", "utterances"),
    )?;
    let by_key: BTreeMap<(u32, u32), usize> =
        jobs.iter().enumerate().map(|(n, j)| (j.key, n)).collect();
    let mut rows = Vec::with_capacity(utterances.len());
    let mut complete = 0;
    for (i, u) in utterances.iter().enumerate() {
        let key = keys[i];
        let stem = format!("{}/u-{i}", SPLIT.dataset_name());
        let mut row = DatasetRow::unlabelled(key.0, key.1, &u.speaker, &u.text);
        row.start_time = Some(format_timestamp(u.start));
        row.end_time = Some(format_timestamp(u.end));
        if let Some(&n) = by_key.get(&key) {
            let o = &outcomes[n];
            row.x_visual = o.visual.then(|| format!("{stem}.jpg"));
            row.x_visual_faces = o.faces.as_ref().map(|_| format!("{stem}.faces.jpg"));
            row.x_audio = o.audio.then(|| format!("{stem}.wav"));
            row.clip_duration = o.clip_duration;
            complete += usize::from(o.visual && o.audio);
            for (stage, reason, detail) in &o.problems {
                failures.push(Failure {
                    split: SPLIT.dataset_name().to_string(),
                    dialogue: Some(key.0),
                    utterance: Some(key.1),
                    stage: stage.clone(),
                    reason: reason.clone(),
                    detail: detail.clone(),
                });
            }
            if o.interrupted {
                failures.push(Failure {
                    split: SPLIT.dataset_name().to_string(),
                    dialogue: Some(key.0),
                    utterance: Some(key.1),
                    stage: "segment".into(),
                    reason: "interrupted".into(),
                    detail: "not processed: the run was interrupted (rerun to complete)".into(),
                });
            }
        }
        rows.push(row);
    }
    meld_shared::dataset::write_dataset(&args.out.join(SPLIT.dataset_csv()), &rows)?;
    let faces_csv = media_dir.join("faces.csv");
    if face_stage.is_some() {
        let found: Vec<_> = jobs.iter().zip(&outcomes).collect();
        write_faces(&faces_csv, SPLIT.dataset_name(), &found)?;
    } else {
        let _ = fs::remove_file(&faces_csv);
    }
    failures.sort_by_key(|f| (f.dialogue, f.utterance));
    write_failures(&args.out.join("failures.csv"), &failures)?;
    let mut failures_by_reason = BTreeMap::new();
    for f in &failures {
        *failures_by_reason.entry(f.reason.clone()).or_insert(0) += 1;
    }
    let wall_seconds = started.elapsed().as_secs_f64();
    let summary = SegmentSummary {
        tool: "meld-etl segment".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        video: args.video.clone(),
        subtitles: args.subtitles.clone(),
        out: args.out.clone(),
        video_seconds,
        settings,
        utterances: utterances.len(),
        complete,
        failures_by_reason,
        jobs: threads,
        wall_seconds,
        utterances_per_second: jobs.len() as f64 / wall_seconds.max(1e-9),
    };
    write_atomically(
        &args.out.join("manifest.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    println!(
        "segment: {} → {}: {} utterances of a {:.1}-minute video, {} with video and audio, in {:.1} s",
        args.video.display(),
        args.out.display(),
        summary.utterances,
        video_seconds / 60.0,
        complete,
        wall_seconds
    );
    for (reason, n) in &summary.failures_by_reason {
        println!("  {reason:<16} {n}");
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(start: f64, end: f64) -> Utterance {
        Utterance {
            line: 1,
            start,
            end,
            speaker: String::new(),
            text: String::new(),
            dialogue: None,
        }
    }

    #[test]
    fn ranges_that_cannot_be_cut_say_why() {
        let reason = |x: &Utterance, prev: Option<f64>| range_problem(x, prev, 60.0).map(|p| p.0);
        assert_eq!(reason(&u(1.0, 2.0), None), None);
        assert_eq!(reason(&u(2.0, 2.0), None), Some("empty_range"));
        assert_eq!(reason(&u(3.0, 2.0), None), Some("inverted_range"));
        assert_eq!(reason(&u(61.0, 62.0), None), Some("past_end"));
        assert_eq!(reason(&u(59.0, 60.5), None), Some("past_end"));
        assert_eq!(
            reason(&u(59.0, 60.05), None),
            None,
            "within the end tolerance"
        );
        assert_eq!(reason(&u(1.5, 3.0), Some(2.0)), Some("overlap"));
        assert_eq!(
            reason(&u(2.0, 3.0), Some(2.0)),
            None,
            "touching is no overlap"
        );
        assert_eq!(reason(&u(-1.0, 3.0), None), Some("bad_range"));
    }
}
