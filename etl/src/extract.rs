//! `meld-etl extract`: the driver. Discovers the tree, reads the CSVs, decodes every clip in parallel (rayon,
//! one decoder thread per clip when `--jobs` > 1), and writes the dataset: `OUT/{train,valid,test}.csv`, the
//! media in `OUT/{split}/d-{D}-seq-{U}.{jpg,wav}`, `OUT/failures.csv` and `OUT/manifest.json`. With
//! `--faces MODEL.onnx`, also a face-only mosaic per row (`d-{D}-seq-{U}.faces.jpg`: the mosaic with every pixel
//! outside the detected faces black, see [`crate::faces`]) and the boxes in `OUT/{split}/faces.csv`.
//!
//! Nothing is lost: every CSV row is in the output; a medium that could not be produced is an empty cell and a
//! line of `failures.csv` (split, dialogue, utterance, stage, reason, detail), which also lists unlabelled clips,
//! prefixed variants, duplicate rows and over-long clips.
//!
//! Safe to interrupt: every file is written to a temporary name and renamed. After a row's media are in place, a
//! small record (`OUT/.extract/{split}/d-{D}-seq-{U}.json`: the settings, the clip's size and mtime, the outcome)
//! is written the same way; a rerun reuses a row only when its record matches and its media are present and valid
//! (`--force` redoes everything), so `kill -9` at any point followed by a rerun gives a complete output. The
//! record also holds the faces found and the model's digest: a rerun with `--faces` over a plain extraction (or
//! with another model or profile) keeps the mosaics and WAVs and only makes the face images. Ctrl-C
//! stops starting rows, lets the in-flight ones finish and still writes the CSVs (the rows not reached are listed
//! as `interrupted`), then exits with status 130.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use meld_shared::{DatasetRow, Split};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::audio::{check_wav, tmp_path, WavFormat};
use crate::decode::{decode_clip, decode_range, DecodeOptions, Medium, Range};
use crate::discover::{discover, list_clips, relative, ClipListing, Discovery};
use crate::faces::{faces_record, Face, FaceDetector, FaceEngine, FaceProfile, FACES_COLUMNS};
use crate::mosaic::{check_mosaic, write_jpeg, write_mosaic};
use crate::raw_csv::{duplicates, read_meld_csv, RawRow};

/// A decoded clip longer than its annotation by more than this is reported (MELD has mis-cut clips of minutes).
const LONG_CLIP_EXCESS_SECONDS: f64 = 10.0;
/// Bumped when the outputs for the same settings change, so old records are not reused.
const RECORD_VERSION: u32 = 1;

/// Audio presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// 16 kHz mono (what speech encoders expect).
    Default,
    /// 44.1 kHz stereo: the WAVs the reference (HLM12ERC) models were trained on.
    Hlm12erc,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ExtractArgs {
    /// MELD.Raw tree (plain, Kaggle nesting or extracted tarballs: the CSVs and clip folders are found by name).
    #[arg(long)]
    pub raw: PathBuf,
    /// Output folder (created).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub media: MediaArgs,
    /// Splits to extract (train, dev or valid, test).
    #[arg(long, value_delimiter = ',', default_value = "train,dev,test")]
    pub splits: Vec<Split>,
    /// Only the first N rows of each split (quick runs).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Keep the utterance text verbatim (by default cp1252 C1 characters become the punctuation they stand for).
    #[arg(long)]
    pub raw_text: bool,
}

/// What each utterance's media are made as: shared by `extract` (one clip per utterance) and `segment` (one
/// time range of a long video per utterance).
#[derive(Debug, Clone, clap::Args)]
pub struct MediaArgs {
    /// Clips decoded in parallel (default: all cores).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Frames per mosaic, sampled at t = d·i/(n−1).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(2..=64))]
    pub frames: u32,
    /// Height of each frame in the mosaic (the width keeps the aspect).
    #[arg(long, default_value_t = 240, value_parser = clap::value_parser!(u32).range(16..=2160))]
    pub frame_height: u32,
    /// WAV sample rate (default: 16000, or 44100 with --profile hlm12erc).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1000..=192000))]
    pub sample_rate: Option<u32>,
    /// WAV channels, 1 or 2 (default: 1, or 2 with --profile hlm12erc).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=2))]
    pub channels: Option<u16>,
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub jpeg_quality: u8,
    /// Redo rows whose outputs already exist.
    #[arg(long)]
    pub force: bool,
    #[arg(long, value_enum, default_value_t = Profile::Default)]
    pub profile: Profile,
    /// A RetinaFace ONNX model: also write face-only mosaics (`d-{D}-seq-{U}.faces.jpg`, column
    /// `x_visual_faces`) and the boxes in `{split}/faces.csv`. A rerun with it only adds what is missing.
    #[arg(long, value_name = "MODEL.onnx")]
    pub faces: Option<PathBuf>,
    /// Face detection: `default` (each frame separately, score ≥ 0.5) or `hlm12erc` (the reference's exact
    /// face-only preprocessing: whole mosaic, score > 0.02, top 10, tall boxes dropped).
    #[arg(long, value_enum, default_value_t = FaceProfile::Default, requires = "faces")]
    pub face_profile: FaceProfile,
    /// What runs the face model: `auto` (onnxruntime when its library is found: `ORT_DYLIB_PATH`, or
    /// `onnxruntime/libonnxruntime.so*` next to the model, or `models/onnxruntime/`; tract otherwise), `tract` or
    /// `onnxruntime` (an error without the library). The log says which runs.
    #[arg(long, value_enum, default_value_t = FaceEngine::Auto, requires = "faces")]
    pub face_engine: FaceEngine,
}

/// The settings that determine the outputs (recorded in the manifest and in every row record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub frames: usize,
    pub frame_height: u32,
    pub sample_rate: u32,
    pub channels: u16,
    pub jpeg_quality: u8,
    pub raw_text: bool,
}

impl Settings {
    pub fn from_args(args: &MediaArgs, raw_text: bool) -> Self {
        let (rate, channels) = match args.profile {
            Profile::Default => (16_000, 1),
            Profile::Hlm12erc => (44_100, 2),
        };
        Settings {
            frames: args.frames as usize,
            frame_height: args.frame_height,
            sample_rate: args.sample_rate.unwrap_or(rate),
            channels: args.channels.unwrap_or(channels),
            jpeg_quality: args.jpeg_quality,
            raw_text,
        }
    }

    pub fn wav(&self) -> WavFormat {
        WavFormat {
            sample_rate: self.sample_rate,
            channels: self.channels,
        }
    }
}

/// One line of `failures.csv`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Failure {
    pub split: String,
    pub dialogue: Option<u32>,
    pub utterance: Option<u32>,
    pub stage: String,
    pub reason: String,
    pub detail: String,
}

impl Failure {
    fn new(
        split: Split,
        key: Option<(u32, u32)>,
        stage: &str,
        reason: &str,
        detail: String,
    ) -> Self {
        Failure {
            split: split.dataset_name().to_string(),
            dialogue: key.map(|k| k.0),
            utterance: key.map(|k| k.1),
            stage: stage.to_string(),
            reason: reason.to_string(),
            detail,
        }
    }
}

/// What happened to one clip: stored next to the outputs so a rerun can reuse it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RowRecord {
    version: u32,
    settings: Settings,
    clip_bytes: u64,
    clip_modified_ns: u128,
    visual: bool,
    audio: bool,
    clip_duration: Option<f64>,
    /// (stage, reason, detail)
    problems: Vec<(String, String, String)>,
    /// The face stage's result, when a run with `--faces` made the face-only image.
    #[serde(default)]
    faces: Option<FacesRecord>,
    /// The range of the video the row was cut from (`segment`).
    #[serde(default)]
    range: Option<Range>,
}

/// What the face stage found for one row, and with which model.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FacesRecord {
    model_sha256: String,
    profile: FaceProfile,
    faces: Vec<Face>,
}

/// The face stage of a run with `--faces`.
pub(crate) struct FaceStage {
    detector: FaceDetector,
    frames: usize,
    jpeg_quality: u8,
}

impl FaceStage {
    fn matches(&self, record: &FacesRecord) -> bool {
        record.model_sha256 == self.detector.model().sha256()
            && record.profile == self.detector.profile()
    }

    /// Detects the faces of the mosaic at `job.jpg` (as stored, so a rerun that reuses the mosaic sees the same
    /// pixels) and writes the face-only image.
    fn run(&self, job: &Job) -> Result<FacesRecord, String> {
        let mosaic = image::open(&job.jpg)
            .map_err(|e| format!("{}: {e}", job.jpg.display()))?
            .to_rgb8();
        let faces = self
            .detector
            .detect(&mosaic, self.frames)
            .map_err(|e| e.to_string())?;
        let face_only = self.detector.face_only(&mosaic, &faces);
        write_jpeg(
            face_only.as_raw(),
            face_only.width(),
            face_only.height(),
            self.jpeg_quality,
            &job.faces_jpg,
        )
        .map_err(|e| e.to_string())?;
        Ok(FacesRecord {
            model_sha256: self.detector.model().sha256().to_string(),
            profile: self.detector.profile(),
            faces,
        })
    }
}

/// The face model of a run, as recorded in the manifest.
#[derive(Debug, Clone, Serialize)]
pub struct FacesManifest {
    pub model: PathBuf,
    pub sha256: String,
    pub profile: FaceProfile,
    /// Whether the model's class scores come out softmaxed (otherwise they are softmaxed here).
    pub outputs_softmaxed: bool,
    /// What ran the model: `tract` or `onnxruntime` (the two agree to ~1e-5; records made by either are reused).
    pub engine: String,
    /// The onnxruntime library, when that engine ran.
    pub engine_library: Option<PathBuf>,
    /// Rows with a face-only image.
    pub images: usize,
    /// Face-only images made by this run (the others were reused).
    pub images_made: usize,
    /// Faces in `faces.csv` over all splits.
    pub faces: usize,
    /// Rows with at least one face.
    pub rows_with_faces: usize,
}

/// One utterance to process: a clip (the first row of its (dialogue, utterance) pair), or a time range of a long
/// video (`segment`).
pub(crate) struct Job {
    pub(crate) split: Split,
    pub(crate) key: (u32, u32),
    /// The clip, or the video a range is cut from; `None`: the clip is missing.
    pub(crate) clip: Option<PathBuf>,
    pub(crate) range: Option<Range>,
    /// Seconds the utterance's annotated times span (a clip far longer is reported).
    pub(crate) annotated: f64,
    pub(crate) jpg: PathBuf,
    pub(crate) faces_jpg: PathBuf,
    pub(crate) wav: PathBuf,
    pub(crate) record: PathBuf,
}

/// A job's outcome.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outcome {
    pub(crate) visual: bool,
    pub(crate) audio: bool,
    pub(crate) clip_duration: Option<f64>,
    /// (stage, reason, detail)
    pub(crate) problems: Vec<(String, String, String)>,
    pub(crate) reused: bool,
    pub(crate) decoded: bool,
    pub(crate) interrupted: bool,
    pub(crate) frames_decoded: u64,
    /// The faces found, when the face-only image is in place (`--faces`).
    pub(crate) faces: Option<Vec<Face>>,
    /// The face stage ran in this run (not reused).
    pub(crate) faces_made: bool,
}

/// Counts of one split for the summary table and the manifest.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SplitCounts {
    pub rows: usize,
    pub ok: usize,
    pub without_visual: usize,
    pub without_audio: usize,
}

/// Options of a run recorded in the manifest besides [`Settings`].
#[derive(Debug, Clone, Serialize)]
pub struct RunOptions {
    pub profile: Profile,
    pub splits: Vec<String>,
    pub limit: Option<usize>,
    pub force: bool,
}

/// What `extract` did.
#[derive(Debug, Clone, Serialize)]
pub struct ExtractSummary {
    pub tool: String,
    pub version: String,
    pub raw: PathBuf,
    pub out: PathBuf,
    pub layout: String,
    pub sources: BTreeMap<String, (String, String)>,
    pub settings: Settings,
    /// The command-line options that do not change the outputs' format.
    pub options: RunOptions,
    pub splits: BTreeMap<String, SplitCounts>,
    pub failures_by_reason: BTreeMap<String, usize>,
    pub clips_decoded: usize,
    pub clips_reused: usize,
    /// Video frames the decoders produced (non-reference frames away from the sample times are skipped).
    pub video_frames_decoded: u64,
    pub rows_interrupted: usize,
    /// The face model and what it gave (`--faces`), or null.
    pub faces: Option<FacesManifest>,
    pub jobs: usize,
    pub wall_seconds: f64,
    pub clips_per_second: f64,
    pub started_unix: u64,
    pub complete: bool,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn install_interrupt_handler() {
    let result = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond interrupt: stopping now (a rerun completes the output)");
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: finishing the clips in flight, then writing the CSVs (Ctrl-C again to stop now)");
    });
    if let Err(e) = result {
        tracing::debug!("Ctrl-C handler not installed: {e}");
    }
}

/// Initialises FFmpeg, quiet: per-clip problems go to failures.csv and the summary, and FFmpeg's own messages
/// would repeat them per clip.
pub(crate) fn init_ffmpeg() -> Result<()> {
    ffmpeg_next::init().context("initialising FFmpeg")?;
    ffmpeg_next::log::set_level(if tracing::enabled!(tracing::Level::DEBUG) {
        ffmpeg_next::log::Level::Error
    } else {
        ffmpeg_next::log::Level::Quiet
    });
    Ok(())
}

/// The face stage of a run with `--faces`. The model is loaded and checked on the input this run needs before
/// anything else: a bad file, odd outputs or a size the model rejects stop the run here. MELD's clips are 16:9, so
/// a tile is frame_height x frame_height·16/9; a clip of another shape gets its own plan when first seen.
pub(crate) fn face_stage(media: &MediaArgs, settings: &Settings) -> Result<Option<FaceStage>> {
    let Some(model) = &media.faces else {
        return Ok(None);
    };
    let tile_width = settings.frame_height * 16 / 9;
    let detector = FaceDetector::new(
        model,
        media.face_profile,
        media.face_engine,
        settings.frames,
        settings.frame_height,
        tile_width,
    )?;
    tracing::info!(
        "face model {} (sha256 {}), profile {}, engine {}",
        model.display(),
        detector.model().sha256(),
        media.face_profile.name(),
        detector.model().engine_description()
    );
    Ok(Some(FaceStage {
        detector,
        frames: settings.frames,
        jpeg_quality: settings.jpeg_quality,
    }))
}

/// Processes `jobs` on `media.jobs` worker threads (default: all cores) under a progress bar (`stage`, counting
/// `what`); the outcomes in job order and the number of threads. A job not started when an interrupt comes is
/// marked so.
pub(crate) fn process_jobs(
    jobs: &[Job],
    settings: &Settings,
    media: &MediaArgs,
    face_stage: Option<&FaceStage>,
    (stage, what): (&str, &str),
) -> Result<(Vec<Outcome>, usize)> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(media.jobs.unwrap_or(0))
        .build()
        .context("starting the worker threads")?;
    let threads = pool.current_num_threads();
    let options = DecodeOptions {
        frames: settings.frames,
        frame_height: settings.frame_height,
        wav: settings.wav(),
        // One decoder thread per clip when clips run in parallel; a lone worker lets FFmpeg use the cores.
        threads: if threads > 1 {
            1
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        },
    };
    let bar = ProgressBar::new(jobs.len() as u64).with_style(
        ProgressStyle::with_template(&format!(
            "{{prefix}} {{bar:40}} {{pos}}/{{len}} {what}  {{per_sec}}  eta {{eta}}  {{msg}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(stage.to_string());
    let outcomes: Vec<Outcome> = pool.install(|| {
        jobs.par_iter()
            .map(|job| {
                let outcome = if INTERRUPTED.load(Ordering::SeqCst) {
                    Outcome {
                        interrupted: true,
                        ..Outcome::default()
                    }
                } else {
                    process(job, settings, &options, media.force, face_stage)
                };
                bar.inc(1);
                outcome
            })
            .collect()
    });
    bar.finish_and_clear();
    Ok((outcomes, threads))
}

/// Runs the extraction.
pub fn run(args: &ExtractArgs) -> Result<ExtractSummary> {
    let started = Instant::now();
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    init_ffmpeg()?;
    install_interrupt_handler();
    let settings = Settings::from_args(&args.media, args.raw_text);
    let face_stage = face_stage(&args.media, &settings)?;
    let mut wanted: Vec<Split> = Vec::new();
    for s in &args.splits {
        if !wanted.contains(s) {
            wanted.push(*s);
        }
    }
    wanted.sort();

    let discovery = discover(&args.raw, &wanted)?;
    tracing::info!("{} layout at {}", discovery.layout, args.raw.display());
    fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;

    // Read everything first: a bad CSV stops the run before any work.
    let mut splits = Vec::new();
    for source in &discovery.splits {
        let rows = read_meld_csv(&source.csv, settings.raw_text)?;
        let listing = list_clips(&source.clip_dir)?;
        splits.push((source.split, rows, listing));
    }

    let mut failures = Vec::new();
    let mut jobs = Vec::new();
    let mut rows_of_split: Vec<(Split, Vec<RawRow>)> = Vec::new();
    for (split, rows, listing) in splits {
        inventory_failures(split, &rows, &listing, &mut failures);
        let media_dir = args.out.join(split.dataset_name());
        let record_dir = args.out.join(".extract").join(split.dataset_name());
        for dir in [&media_dir, &record_dir] {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let kept: Vec<RawRow> = rows
            .into_iter()
            .take(args.limit.unwrap_or(usize::MAX))
            .collect();
        let mut seen = HashSet::new();
        for row in &kept {
            let key = (row.meld.dialogue_id, row.meld.utterance_id);
            if !seen.insert(key) {
                continue;
            }
            let stem = format!("d-{}-seq-{}", key.0, key.1);
            jobs.push(Job {
                split,
                key,
                clip: listing.clips.get(&key).map(|c| c.path.clone()),
                range: None,
                annotated: row.meld.annotated_duration(),
                jpg: media_dir.join(format!("{stem}.jpg")),
                faces_jpg: media_dir.join(format!("{stem}.faces.jpg")),
                wav: media_dir.join(format!("{stem}.wav")),
                record: record_dir.join(format!("{stem}.json")),
            });
        }
        rows_of_split.push((split, kept));
    }

    let (outcomes, threads) = process_jobs(
        &jobs,
        &settings,
        &args.media,
        face_stage.as_ref(),
        ("extract", "clips"),
    )?;
    let interrupted = INTERRUPTED.load(Ordering::SeqCst);

    // Assemble the dataset CSVs (every row), failures.csv and the manifest.
    let by_key: HashMap<(Split, (u32, u32)), &Outcome> = jobs
        .iter()
        .zip(&outcomes)
        .map(|(j, o)| ((j.split, j.key), o))
        .collect();
    let mut counts: BTreeMap<String, SplitCounts> = BTreeMap::new();
    let mut rows_interrupted = 0;
    for (split, rows) in &rows_of_split {
        let mut dataset = Vec::with_capacity(rows.len());
        let split_counts = counts.entry(split.dataset_name().to_string()).or_default();
        for row in rows {
            let key = (row.meld.dialogue_id, row.meld.utterance_id);
            let outcome = by_key.get(&(*split, key));
            let stem = format!("{}/d-{}-seq-{}", split.dataset_name(), key.0, key.1);
            let m = &row.meld;
            let mut out = DatasetRow::new(key.0, key.1, &m.speaker, &m.utterance, m.emotion);
            out.sentiment = Some(m.sentiment);
            out.season = Some(m.season);
            out.episode = Some(m.episode);
            out.start_time = Some(m.start_time.to_string());
            out.end_time = Some(m.end_time.to_string());
            if let Some(o) = outcome {
                out.x_visual = o.visual.then(|| format!("{stem}.jpg"));
                out.x_visual_faces = o.faces.as_ref().map(|_| format!("{stem}.faces.jpg"));
                out.x_audio = o.audio.then(|| format!("{stem}.wav"));
                out.clip_duration = o.clip_duration;
            }
            split_counts.rows += 1;
            match (out.x_visual.is_some(), out.x_audio.is_some()) {
                (true, true) => split_counts.ok += 1,
                (v, a) => {
                    split_counts.without_visual += usize::from(!v);
                    split_counts.without_audio += usize::from(!a);
                }
            }
            dataset.push(out);
        }
        let path = args.out.join(split.dataset_csv());
        meld_shared::dataset::write_dataset(&path, &dataset)?;
        let faces_csv = args.out.join(split.dataset_name()).join("faces.csv");
        if face_stage.is_none() {
            // The dataset written now has no face images; an index of an earlier run's would mislead.
            let _ = fs::remove_file(&faces_csv);
        } else {
            let mut found: Vec<(&Job, &Outcome)> = jobs
                .iter()
                .zip(&outcomes)
                .filter(|(j, _)| j.split == *split)
                .collect();
            found.sort_by_key(|(j, _)| j.key);
            write_faces(&faces_csv, split.dataset_name(), &found)?;
        }
    }
    for (job, outcome) in jobs.iter().zip(&outcomes) {
        if outcome.interrupted {
            rows_interrupted += 1;
            failures.push(Failure::new(
                job.split,
                Some(job.key),
                "extract",
                "interrupted",
                "not processed: the run was interrupted (rerun to complete)".into(),
            ));
        }
        for (stage, reason, detail) in &outcome.problems {
            failures.push(Failure::new(
                job.split,
                Some(job.key),
                stage,
                reason,
                detail.clone(),
            ));
        }
    }
    failures.sort_by(|a, b| {
        let order = |s: &str| s.parse::<Split>().map(|s| s as usize).unwrap_or(9);
        (
            order(&a.split),
            a.dialogue,
            a.utterance,
            &a.stage,
            &a.reason,
        )
            .cmp(&(
                order(&b.split),
                b.dialogue,
                b.utterance,
                &b.stage,
                &b.reason,
            ))
    });
    write_failures(&args.out.join("failures.csv"), &failures)?;

    let mut failures_by_reason = BTreeMap::new();
    for f in &failures {
        *failures_by_reason.entry(f.reason.clone()).or_insert(0) += 1;
    }
    let clips_decoded = outcomes.iter().filter(|o| o.decoded).count();
    let faces_manifest = face_stage.as_ref().map(|stage| {
        let model = stage.detector.model();
        let found = || outcomes.iter().filter_map(|o| o.faces.as_ref());
        FacesManifest {
            model: model.path().to_path_buf(),
            sha256: model.sha256().to_string(),
            profile: stage.detector.profile(),
            outputs_softmaxed: model.outputs_softmaxed(),
            engine: model.engine().name().to_string(),
            engine_library: model.library().map(Path::to_path_buf),
            images: found().count(),
            images_made: outcomes.iter().filter(|o| o.faces_made).count(),
            faces: found().map(Vec::len).sum(),
            rows_with_faces: found().filter(|f| !f.is_empty()).count(),
        }
    });
    let clips_reused = outcomes.iter().filter(|o| o.reused).count();
    let wall_seconds = started.elapsed().as_secs_f64();
    let summary = ExtractSummary {
        tool: "meld-etl".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        raw: args.raw.clone(),
        out: args.out.clone(),
        layout: discovery.layout.to_string(),
        sources: sources(&discovery),
        settings,
        options: RunOptions {
            profile: args.media.profile,
            splits: wanted
                .iter()
                .map(|s| s.dataset_name().to_string())
                .collect(),
            limit: args.limit,
            force: args.media.force,
        },
        splits: counts,
        failures_by_reason,
        clips_decoded,
        clips_reused,
        video_frames_decoded: outcomes.iter().map(|o| o.frames_decoded).sum(),
        rows_interrupted,
        faces: faces_manifest,
        jobs: threads,
        wall_seconds,
        clips_per_second: clips_decoded as f64 / wall_seconds.max(1e-9),
        started_unix,
        complete: !interrupted,
    };
    let manifest = args.out.join("manifest.json");
    write_atomically(
        &manifest,
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    print_summary(&summary, &failures);
    Ok(summary)
}

fn sources(discovery: &Discovery) -> BTreeMap<String, (String, String)> {
    discovery
        .splits
        .iter()
        .map(|s| {
            (
                s.split.dataset_name().to_string(),
                (
                    relative(&discovery.root, &s.csv),
                    relative(&discovery.root, &s.clip_dir),
                ),
            )
        })
        .collect()
}

/// Problems visible without decoding: duplicate rows, unlabelled clips, prefixed variants, stray files.
pub fn inventory_failures(
    split: Split,
    rows: &[RawRow],
    listing: &ClipListing,
    failures: &mut Vec<Failure>,
) {
    for d in duplicates(rows) {
        let list: Vec<String> = d.rows.iter().map(|r| r.to_string()).collect();
        failures.push(Failure::new(
            split,
            Some((d.dialogue, d.utterance)),
            "csv",
            "duplicate",
            format!(
                "rows {} share (Dialogue_ID, Utterance_ID); they share one clip",
                list.join(", ")
            ),
        ));
    }
    let labelled: HashSet<(u32, u32)> = rows
        .iter()
        .map(|r| (r.meld.dialogue_id, r.meld.utterance_id))
        .collect();
    for (key, file) in &listing.clips {
        if !labelled.contains(key) {
            failures.push(Failure::new(
                split,
                Some(*key),
                "discover",
                "unlabelled",
                format!(
                    "{} has no row in the CSV; not extracted",
                    file.path
                        .file_name()
                        .map(|n| n.to_string_lossy())
                        .unwrap_or_default()
                ),
            ));
        }
    }
    for (name, key) in &listing.prefixed {
        failures.push(Failure::new(
            split,
            *key,
            "discover",
            "prefixed",
            format!("{name} is a prefixed copy, not a labelled clip; not extracted"),
        ));
    }
    for name in &listing.unrecognised {
        failures.push(Failure::new(
            split,
            None,
            "discover",
            "unrecognised",
            format!("{name} is not named dia{{D}}_utt{{U}}.mp4; not extracted"),
        ));
    }
}

fn modified_ns(meta: &fs::Metadata) -> u128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

/// Processes one clip, or reuses the outputs of an earlier run.
fn process(
    job: &Job,
    settings: &Settings,
    options: &DecodeOptions,
    force: bool,
    faces: Option<&FaceStage>,
) -> Outcome {
    let problem =
        |stage: &str, reason: &str, detail: String| (stage.to_string(), reason.to_string(), detail);
    let Some(clip) = &job.clip else {
        remove_outputs(job);
        return Outcome {
            problems: vec![problem(
                "open",
                "missing",
                format!(
                    "no dia{}_utt{}.mp4 in the {} clip folder",
                    job.key.0,
                    job.key.1,
                    job.split.meld_name()
                ),
            )],
            ..Outcome::default()
        };
    };
    let meta = match fs::metadata(clip) {
        Ok(m) => m,
        Err(e) => {
            remove_outputs(job);
            return Outcome {
                problems: vec![problem(
                    "open",
                    "missing",
                    format!("{}: {e}", clip.display()),
                )],
                ..Outcome::default()
            };
        }
    };
    if meta.len() == 0 {
        remove_outputs(job);
        return Outcome {
            problems: vec![problem(
                "open",
                "empty",
                format!("{} is an empty file", clip.display()),
            )],
            ..Outcome::default()
        };
    }
    let (bytes, modified) = (meta.len(), modified_ns(&meta));
    if !force {
        if let Some(record) = reusable(job, settings, bytes, modified) {
            return reuse(job, record, faces);
        }
    }

    let mut outcome = Outcome {
        decoded: true,
        ..Outcome::default()
    };
    let decoded = match job.range {
        Some(range) => decode_range(clip, &job.wav, options, range),
        None => decode_clip(clip, &job.wav, options),
    };
    match decoded {
        Err(e) => {
            outcome.problems.push(problem(
                "open",
                "unreadable",
                format!("{}: {e}", clip.display()),
            ));
        }
        Ok(decoded) => {
            outcome.frames_decoded = decoded.frames_decoded;
            match decoded.video {
                Medium::Done(tiles) => {
                    match write_mosaic(&tiles, settings.jpeg_quality, &job.jpg) {
                        Ok(_) => outcome.visual = true,
                        Err(e) => {
                            outcome
                                .problems
                                .push(problem("mosaic", "write_error", e.to_string()))
                        }
                    }
                }
                Medium::Absent => outcome.problems.push(problem(
                    "video",
                    "no_video",
                    "the clip has no video stream".into(),
                )),
                Medium::Failed { reason, detail } => {
                    outcome.problems.push(problem("video", reason, detail))
                }
            }
            match decoded.audio {
                Medium::Done(_) => outcome.audio = true,
                Medium::Absent => outcome.problems.push(problem(
                    "audio",
                    "no_audio",
                    "the clip has no audio stream".into(),
                )),
                Medium::Failed { reason, detail } => {
                    outcome.problems.push(problem("audio", reason, detail))
                }
            }
            for w in decoded.warnings {
                outcome.problems.push(problem(w.stage, w.reason, w.detail));
            }
            outcome.clip_duration = decoded.seconds;
            if let Some(seconds) = decoded.seconds {
                if seconds > job.annotated + LONG_CLIP_EXCESS_SECONDS {
                    outcome.problems.push(problem(
                        "check",
                        "long_clip",
                        format!(
                            "the clip lasts {seconds:.1} s but its annotated times span {:.1} s (media kept)",
                            job.annotated
                        ),
                    ));
                }
            }
        }
    }
    let mut faces_record = None;
    if let (true, Some(stage)) = (outcome.visual, faces) {
        match stage.run(job) {
            Ok(record) => {
                outcome.faces = Some(record.faces.clone());
                outcome.faces_made = true;
                faces_record = Some(record);
            }
            Err(detail) => outcome.problems.push(face_problem(detail)),
        }
    }
    // Outputs from an earlier run that this run did not produce must not linger.
    if !outcome.visual {
        let _ = fs::remove_file(&job.jpg);
    }
    if faces_record.is_none() {
        let _ = fs::remove_file(&job.faces_jpg);
    }
    if !outcome.audio {
        let _ = fs::remove_file(&job.wav);
    }
    let record = RowRecord {
        version: RECORD_VERSION,
        settings: settings.clone(),
        clip_bytes: bytes,
        clip_modified_ns: modified,
        visual: outcome.visual,
        audio: outcome.audio,
        clip_duration: outcome.clip_duration,
        // A face-stage failure is not recorded: the plain outputs stay reusable and a rerun retries it.
        problems: outcome
            .problems
            .iter()
            .filter(|p| p.0 != FACE_STAGE)
            .cloned()
            .collect(),
        faces: faces_record,
        range: job.range,
    };
    write_record(job, &record);
    outcome
}

const FACE_STAGE: &str = "faces";

fn face_problem(detail: String) -> (String, String, String) {
    (FACE_STAGE.into(), "face_error".into(), detail)
}

fn write_record(job: &Job, record: &RowRecord) {
    match serde_json::to_vec(record) {
        Ok(json) => {
            if let Err(e) = write_atomically(&job.record, &json) {
                tracing::warn!("{e:#}");
            }
        }
        Err(e) => tracing::warn!("{}: {e}", job.record.display()),
    }
}

/// The outcome of a reused row; with `--faces`, the face-only image is reused too when it was made with the
/// same model and profile, and otherwise made now from the existing mosaic.
fn reuse(job: &Job, mut record: RowRecord, faces: Option<&FaceStage>) -> Outcome {
    let mut outcome = Outcome {
        visual: record.visual,
        audio: record.audio,
        clip_duration: record.clip_duration,
        problems: record.problems.clone(),
        reused: true,
        ..Outcome::default()
    };
    let Some(stage) = faces else {
        return outcome;
    };
    if !record.visual {
        return outcome;
    }
    let frames = stage.frames;
    let current = record.faces.as_ref().filter(|f| {
        stage.matches(f)
            && check_mosaic(&job.faces_jpg, frames, record.settings.frame_height).is_ok()
    });
    if let Some(found) = current {
        outcome.faces = Some(found.faces.clone());
        return outcome;
    }
    match stage.run(job) {
        Ok(found) => {
            outcome.faces = Some(found.faces.clone());
            outcome.faces_made = true;
            record.faces = Some(found);
            write_record(job, &record);
        }
        Err(detail) => {
            let _ = fs::remove_file(&job.faces_jpg);
            outcome.problems.push(face_problem(detail));
        }
    }
    outcome
}

/// Writes a split's `faces.csv`: one line per face, rows in (dialogue, utterance) order.
pub(crate) fn write_faces(path: &Path, split: &str, found: &[(&Job, &Outcome)]) -> Result<()> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(FACES_COLUMNS)?;
    for (job, outcome) in found {
        for face in outcome.faces.iter().flatten() {
            writer.write_record(faces_record(split, job.key.0, job.key.1, face))?;
        }
    }
    let bytes = writer.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
    write_atomically(path, &bytes)
}

/// The record of an earlier run, if it matches and its media are present and valid.
fn reusable(job: &Job, settings: &Settings, bytes: u64, modified: u128) -> Option<RowRecord> {
    let json = fs::read(&job.record).ok()?;
    let record: RowRecord = serde_json::from_slice(&json).ok()?;
    if record.version != RECORD_VERSION
        || &record.settings != settings
        || record.clip_bytes != bytes
        || record.clip_modified_ns != modified
        || record.range != job.range
    {
        return None;
    }
    if record.visual && check_mosaic(&job.jpg, settings.frames, settings.frame_height).is_err() {
        return None;
    }
    if record.audio && check_wav(&job.wav, settings.wav()).is_err() {
        return None;
    }
    Some(record)
}

fn remove_outputs(job: &Job) {
    for path in [&job.jpg, &job.faces_jpg, &job.wav, &job.record] {
        let _ = fs::remove_file(path);
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// The columns of `failures.csv`.
pub const FAILURE_COLUMNS: [&str; 6] = [
    "split",
    "dialogue",
    "utterance",
    "stage",
    "reason",
    "detail",
];

pub(crate) fn write_failures(path: &Path, failures: &[Failure]) -> Result<()> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(FAILURE_COLUMNS)?;
    for f in failures {
        writer.write_record([
            f.split.clone(),
            f.dialogue.map(|d| d.to_string()).unwrap_or_default(),
            f.utterance.map(|u| u.to_string()).unwrap_or_default(),
            f.stage.clone(),
            f.reason.clone(),
            f.detail.clone(),
        ])?;
    }
    let bytes = writer.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
    write_atomically(path, &bytes)
}

fn print_summary(summary: &ExtractSummary, failures: &[Failure]) {
    println!(
        "extract: {} layout at {} → {}",
        summary.layout,
        summary.raw.display(),
        summary.out.display()
    );
    println!(
        "{:<6} {:>7} {:>7} {:>10} {:>10}",
        "split", "rows", "ok", "no visual", "no audio"
    );
    for split in Split::ALL {
        if let Some(c) = summary.splits.get(split.dataset_name()) {
            println!(
                "{:<6} {:>7} {:>7} {:>10} {:>10}",
                split.dataset_name(),
                c.rows,
                c.ok,
                c.without_visual,
                c.without_audio
            );
        }
    }
    if !summary.failures_by_reason.is_empty() {
        println!("problems by reason (details in failures.csv):");
        for (reason, n) in &summary.failures_by_reason {
            let example = failures
                .iter()
                .find(|f| &f.reason == reason)
                .map(|f| {
                    format!(
                        "{} dia{}_utt{}",
                        f.split,
                        f.dialogue.map_or("?".into(), |d| d.to_string()),
                        f.utterance.map_or("?".into(), |u| u.to_string())
                    )
                })
                .unwrap_or_default();
            println!("  {reason:<14} {n:>6}   e.g. {example}");
        }
    }
    if let Some(f) = &summary.faces {
        println!(
            "faces ({} profile, {}): {} face-only images ({} made now, the rest reused), {} faces in {} rows",
            f.profile.name(),
            f.model.display(),
            f.images,
            f.images_made,
            f.faces,
            f.rows_with_faces
        );
    }
    println!(
        "clips decoded {} reused {}  {:.2} clips/s  wall {:.1} s  jobs {}{}",
        summary.clips_decoded,
        summary.clips_reused,
        summary.clips_per_second,
        summary.wall_seconds,
        summary.jobs,
        if summary.complete {
            String::new()
        } else {
            format!(
                "  INTERRUPTED: {} rows not processed (rerun to complete)",
                summary.rows_interrupted
            )
        }
    );
}
