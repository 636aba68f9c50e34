//! `meld-etl synth`: writes a MELD.Raw-shaped tree of synthetic clips that tests and demos run on, since MELD
//! itself (10 GB) cannot be fetched everywhere.
//!
//! What is copied from the real release: the three annotation CSVs with the real header, quoting, `hh:mm:ss,mmm`
//! times and cp1252 C1 characters; dialogues of 1–20 utterances with several speakers; MELD's label imbalance;
//! the real folder names in the plain and Kaggle layouts; clips encoded like the real ones (see [`clip`]); and,
//! with `--faults`, the real release's kinds of damage. What is planted: a learnable cue per modality (see
//! [`signal`]). Everything is a pure function of `--seed`: the CSVs are byte-identical for a seed, and each clip
//! has its own RNG so the order clips are encoded in does not matter.
//!
//! Besides MELD's own files, the tree gets `synth-truth.csv` (every clip's planted cues and duration) and
//! `synth-faults.json` (every injected fault), which tests compare against; with `--face-image`, a real face is
//! drawn into the healthy clips of even utterance number and `synth-faces.csv` says where (see [`face`]).

pub mod clip;
pub mod episode;
pub mod face;
pub mod signal;
pub mod text;

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ParallelProgressIterator, ProgressBar, ProgressStyle};
use meld_shared::{Emotion, Sentiment, Split};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

use crate::layout::Layout;
use crate::meld::{clip_file_name, write_meld_csv, ClipTime, MeldRow};
use clip::{ClipContent, Picture, Streams};
use face::{parse_face_box, FacePatch};
pub use signal::{colour_rgb, cue_words, tone_hz, Cues};

#[derive(Debug, Clone, clap::Args)]
pub struct SynthArgs {
    /// Root of the tree to write (it becomes the MELD.Raw folder to pass to `extract --raw`).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of train dialogues; dev and test get MELD's proportions of it (at least 2 each).
    #[arg(long, default_value_t = 8)]
    pub dialogues: u32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = Layout::Plain)]
    pub layout: Layout,
    /// Inject the real release's kinds of damage (missing, empty, truncated, stream-less, unlabelled, prefixed
    /// and over-long clips).
    #[arg(long)]
    pub faults: bool,
    /// Clip durations in seconds, MIN-MAX (MELD's are mostly 1–6 s; shorter clips make quicker test sets).
    #[arg(long, default_value = "1-6", value_parser = parse_duration_range)]
    pub durations: DurationRange,
    /// Parallel encoders (default: all cores).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// A photo with a face (e.g. models/astronaut.png): drawn into the healthy clips of even utterance number,
    /// at a place recorded in `synth-faces.csv`, for face-detection tests.
    #[arg(long, requires = "face_box")]
    pub face_image: Option<PathBuf>,
    /// Where the face is in --face-image: x1,y1,x2,y2 in pixels (astronaut.png: 180,72,271,178).
    #[arg(long, value_parser = parse_face_box, requires = "face_image")]
    pub face_box: Option<[f64; 4]>,
    /// Plant an emotion cue in the faces (for the face and landmark models): the face goes into EVERY healthy
    /// clip, its head rolled by an angle of the clip's visual cue ([`face::roll_degrees`]). Without it the face
    /// is the same upright one in the even utterances (and nothing else of the output changes with it: no
    /// random number is drawn for it).
    #[arg(long, requires = "face_image")]
    pub face_cues: bool,
    /// Instead of a MELD.Raw tree: one long video of the planned test split's utterances with its subtitles
    /// (`episode.mp4`, `episode.srt`, `episode-truth.csv` in OUT), for `erc-train predict --video`.
    #[arg(long, conflicts_with_all = ["faults", "face_image"])]
    pub episode: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DurationRange {
    pub min: f64,
    pub max: f64,
}

fn parse_duration_range(s: &str) -> Result<DurationRange, String> {
    let bad = || format!("expected MIN-MAX seconds such as 1-6, found `{s}`");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (min, max): (f64, f64) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if !(min > 0.0 && max >= min && max <= 600.0) {
        return Err(bad());
    }
    Ok(DurationRange { min, max })
}

/// Kinds of damage `--faults` injects, after those seen in the real release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// The CSV row exists; its clip does not (real: dev `dia110_utt7`).
    Missing,
    /// The clip is an empty file.
    ZeroByte,
    /// The clip is cut to 40% of its bytes (its index is lost; real: train `dia125_utt3`).
    Truncated,
    /// The clip has a video stream only.
    NoAudio,
    /// The clip has an audio stream only.
    NoVideo,
    /// A clip with no CSV row (real: dev `dia66_utt9`).
    Unlabelled,
    /// A `final_videos_test`-prefixed copy of a labelled test clip.
    Prefixed,
    /// The clip lasts 60 s although its annotated times say a few seconds (real: mis-cut clips of minutes).
    Long,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Fault::Missing => "missing",
            Fault::ZeroByte => "zero_byte",
            Fault::Truncated => "truncated",
            Fault::NoAudio => "no_audio",
            Fault::NoVideo => "no_video",
            Fault::Unlabelled => "unlabelled",
            Fault::Prefixed => "prefixed",
            Fault::Long => "long",
        };
        f.write_str(name)
    }
}

/// One injected fault, as listed in `synth-faults.json`.
#[derive(Debug, Clone, Serialize)]
pub struct InjectedFault {
    pub split: String,
    pub dialogue: u32,
    pub utterance: u32,
    pub fault: Fault,
    /// The clip file concerned, relative to the tree's root.
    pub file: String,
}

/// MELD's train label counts (anger … surprise), whose proportions every synthetic split copies.
const MELD_TRAIN_COUNTS: [u32; 7] = [1109, 271, 268, 1743, 4710, 683, 1205];
/// MELD's dialogue counts per split (train, dev, test).
const MELD_DIALOGUES: [u32; 3] = [1039, 114, 280];
const LONG_CLIP_SECONDS: f64 = 60.0;

/// Label counts for a split of `rows` rows: MELD's proportions, by largest remainder, so that they sum to `rows`.
pub fn planned_label_counts(rows: usize) -> [usize; 7] {
    let total: u32 = MELD_TRAIN_COUNTS.iter().sum();
    let exact: Vec<f64> = MELD_TRAIN_COUNTS
        .iter()
        .map(|c| rows as f64 * *c as f64 / total as f64)
        .collect();
    let mut counts = [0usize; 7];
    for (i, e) in exact.iter().enumerate() {
        counts[i] = e.floor() as usize;
    }
    let mut order: Vec<usize> = (0..7).collect();
    order.sort_by(|a, b| {
        let (ra, rb) = (exact[*a] - exact[*a].floor(), exact[*b] - exact[*b].floor());
        rb.total_cmp(&ra).then(a.cmp(b))
    });
    let missing = rows - counts.iter().sum::<usize>();
    for i in order.into_iter().take(missing) {
        counts[i] += 1;
    }
    counts
}

/// Number of dialogues of each split (train, dev, test) for `train_dialogues`.
pub fn planned_dialogues(train_dialogues: u32) -> [u32; 3] {
    let scaled = |k: usize| {
        ((train_dialogues as f64 * MELD_DIALOGUES[k] as f64 / MELD_DIALOGUES[0] as f64).round()
            as u32)
            .max(2)
    };
    [train_dialogues.max(2), scaled(1), scaled(2)]
}

/// One clip to encode.
#[derive(Debug, Clone)]
pub(crate) struct PlannedClip {
    split: Split,
    dialogue: u32,
    utterance: u32,
    file_name: String,
    emotion: Emotion,
    cues: Cues,
    seconds: f64,
    background: [u8; 3],
    seed: u64,
    fault: Option<Fault>,
    /// Top-left corner of the pasted face picture (`--face-image`), in clip pixels.
    face_at: Option<(u32, u32)>,
}

/// Everything `synth` will write, decided before any clip is encoded.
struct Plan {
    rows: Vec<(Split, Vec<MeldRow>)>,
    clips: Vec<PlannedClip>,
    faults: Vec<InjectedFault>,
}

fn split_seed(seed: u64, split: Split) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (split as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03)
}

fn sentiment_of(rng: &mut impl Rng, emotion: Emotion) -> Sentiment {
    match emotion {
        Emotion::Joy => Sentiment::Positive,
        Emotion::Neutral => Sentiment::Neutral,
        Emotion::Surprise if rng.gen_bool(0.5) => Sentiment::Positive,
        _ => Sentiment::Negative,
    }
}

impl Plan {
    fn new(args: &SynthArgs) -> Result<Plan> {
        let dialogue_counts = planned_dialogues(args.dialogues);
        let mut rows_per_split = Vec::new();
        let mut clips = Vec::new();
        for (k, split) in Split::ALL.into_iter().enumerate() {
            let mut rng = ChaCha8Rng::seed_from_u64(split_seed(args.seed, split));
            let size_distribution =
                rand_distr::Binomial::new(19, 0.45).context("utterance-count distribution")?;
            let sizes: Vec<u32> = (0..dialogue_counts[k])
                .map(|_| 1 + rng.sample(size_distribution) as u32)
                .collect();
            let total: usize = sizes.iter().map(|s| *s as usize).sum();
            let mut labels: Vec<Emotion> = planned_label_counts(total)
                .iter()
                .enumerate()
                .flat_map(|(i, n)| std::iter::repeat_n(Emotion::ALL[i], *n))
                .collect();
            labels.shuffle(&mut rng);

            let mut rows = Vec::with_capacity(total);
            let mut labels = labels.into_iter();
            for (dialogue, size) in sizes.iter().enumerate() {
                let dialogue = dialogue as u32;
                let speakers = text::dialogue_speakers(&mut rng);
                let season = rng.gen_range(1..=9);
                let episode = rng.gen_range(1..=24);
                let background = [
                    rng.gen_range(20..90),
                    rng.gen_range(20..90),
                    rng.gen_range(20..90),
                ];
                let mut clock_ms: u64 = rng.gen_range(30_000..1_200_000);
                for utterance in 0..*size {
                    let emotion = labels.next().context("label plan shorter than the rows")?;
                    let cues = Cues::draw(&mut rng, emotion);
                    let millis = rng.gen_range(
                        (args.durations.min * 1000.0) as u64..=(args.durations.max * 1000.0) as u64,
                    );
                    let row = MeldRow {
                        sr_no: rows.len() as u32 + 1,
                        utterance: text::utterance(&mut rng, cues.text),
                        speaker: speakers[rng.gen_range(0..speakers.len())].to_string(),
                        emotion,
                        sentiment: sentiment_of(&mut rng, emotion),
                        dialogue_id: dialogue,
                        utterance_id: utterance,
                        season,
                        episode,
                        start_time: ClipTime::from_millis(clock_ms),
                        end_time: ClipTime::from_millis(clock_ms + millis),
                    };
                    clock_ms += millis + rng.gen_range(100..2_000);
                    clips.push(PlannedClip {
                        split,
                        dialogue,
                        utterance,
                        file_name: row.clip_file_name(),
                        emotion,
                        cues,
                        seconds: millis as f64 / 1000.0,
                        background,
                        seed: rng.gen(),
                        fault: None,
                        face_at: None,
                    });
                    rows.push(row);
                }
            }
            rows_per_split.push((split, rows));
        }
        let mut plan = Plan {
            rows: rows_per_split,
            clips,
            faults: Vec::new(),
        };
        if args.faults {
            plan.inject_faults(args)?;
        }
        Ok(plan)
    }

    /// Picks distinct rows for each fault (deterministically) and adds the extra clips.
    fn inject_faults(&mut self, args: &SynthArgs) -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(args.seed ^ 0xFA17);
        let placement = [
            (Split::Train, Fault::ZeroByte),
            (Split::Train, Fault::Truncated),
            (Split::Train, Fault::NoVideo),
            (Split::Train, Fault::Long),
            (Split::Dev, Fault::Missing),
            (Split::Test, Fault::NoAudio),
        ];
        for (split, fault) in placement {
            let candidates: Vec<usize> = (0..self.clips.len())
                .filter(|i| self.clips[*i].split == split && self.clips[*i].fault.is_none())
                .collect();
            let Some(&index) = candidates.choose(&mut rng) else {
                bail!(
                    "--faults needs more {split} rows than --dialogues {} gives",
                    args.dialogues
                );
            };
            let clip = &mut self.clips[index];
            clip.fault = Some(fault);
            if fault == Fault::Long {
                clip.seconds = LONG_CLIP_SECONDS;
            }
        }
        // An unlabelled clip: one utterance past the end of the last dev dialogue, like the real `dia66_utt9`.
        let last_dev = self
            .clips
            .iter()
            .filter(|c| c.split == Split::Dev)
            .max_by_key(|c| (c.dialogue, c.utterance))
            .cloned();
        if let Some(last) = last_dev {
            self.clips.push(PlannedClip {
                utterance: last.utterance + 1,
                file_name: clip_file_name(last.dialogue, last.utterance + 1),
                fault: Some(Fault::Unlabelled),
                seed: rng.gen(),
                ..last
            });
        }
        // A prefixed variant of a healthy test clip.
        let healthy_test: Vec<usize> = (0..self.clips.len())
            .filter(|i| self.clips[*i].split == Split::Test && self.clips[*i].fault.is_none())
            .collect();
        if let Some(&index) = healthy_test.choose(&mut rng) {
            let source = self.clips[index].clone();
            self.clips.push(PlannedClip {
                file_name: format!("final_videos_test{}", source.file_name),
                fault: Some(Fault::Prefixed),
                ..source
            });
        }
        for clip in &self.clips {
            if let Some(fault) = clip.fault {
                self.faults.push(InjectedFault {
                    split: clip.split.meld_name().to_string(),
                    dialogue: clip.dialogue,
                    utterance: clip.utterance,
                    fault,
                    file: format!("{}/{}", clip.split.meld_clip_dir(), clip.file_name),
                });
            }
        }
        Ok(())
    }

    /// Places the face picture in the healthy clips of even utterance number (`every`: in all healthy clips),
    /// somewhere it fits whole.
    fn place_faces(&mut self, seed: u64, patch: &FacePatch, every: bool) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xFACE);
        for clip in &mut self.clips {
            if clip.fault.is_none() && (every || clip.utterance % 2 == 0) {
                let x = rng.gen_range(0..=(clip::WIDTH - patch.width) / 2) * 2;
                let y = rng.gen_range(0..=(clip::HEIGHT - patch.height) / 2) * 2;
                clip.face_at = Some((x, y));
            }
        }
    }
}

/// A synthetic clip's picture and sound (see [`signal`]).
pub(crate) struct SynthClip {
    seconds: f64,
    background: [u8; 3],
    block: [u8; 3],
    block_origin: (f64, f64),
    block_velocity: (f64, f64),
    tone_hz: f64,
    tone_level: f32,
    noise_seed: u64,
    /// A face drawn on top of everything else, at a fixed place.
    face: Option<(Arc<FacePatch>, u32, u32)>,
}

impl SynthClip {
    pub(crate) fn new(plan: &PlannedClip, face: Option<&Arc<FacePatch>>) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(plan.seed);
        SynthClip {
            seconds: plan.seconds,
            background: signal::rgb_to_yuv(plan.background),
            block: signal::rgb_to_yuv(colour_rgb(plan.cues.visual)),
            block_origin: (rng.gen_range(200.0..760.0), rng.gen_range(40.0..300.0)),
            block_velocity: (rng.gen_range(-40.0..40.0), rng.gen_range(-20.0..20.0)),
            tone_hz: tone_hz(plan.cues.audio),
            tone_level: rng.gen_range(0.15..0.4),
            noise_seed: rng.gen(),
            face: face
                .zip(plan.face_at)
                .map(|(patch, (x, y))| (patch.clone(), x, y)),
        }
    }
}

/// White noise in [-1, 1] that depends only on (seed, channel, sample): audio can be generated in any chunking.
pub(crate) fn noise(seed: u64, channel: usize, sample: u64) -> f32 {
    let mut z = seed ^ (sample.wrapping_mul(0x9E37_79B9_7F4A_7C15)) ^ ((channel as u64) << 56);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

impl ClipContent for SynthClip {
    fn duration(&self) -> f64 {
        self.seconds
    }

    fn draw(&self, index: u64, picture: &mut Picture) {
        let t = index as f64 * clip::FRAME_RATE.1 as f64 / clip::FRAME_RATE.0 as f64;
        let (w, h) = (clip::WIDTH as i64, clip::HEIGHT as i64);
        picture.fill_rect(0, 0, w, h, self.background);
        // A lighter band sweeping across: motion for the P/B frames to encode.
        let band = ((t * 160.0) as i64) % w;
        let [y, u, v] = self.background;
        picture.fill_rect(band, 0, band + 48, h, [y.saturating_add(40), u, v]);
        // The visual cue: a block of the emotion's colour, drifting slowly, always fully in the picture.
        let size = 300.0;
        let x =
            (self.block_origin.0 + self.block_velocity.0 * t).clamp(0.0, w as f64 - size) as i64;
        let y0 =
            (self.block_origin.1 + self.block_velocity.1 * t).clamp(0.0, h as f64 - size) as i64;
        picture.fill_rect(x, y0, x + size as i64, y0 + size as i64, self.block);
        if let Some((patch, x, y)) = &self.face {
            patch.draw(picture, *x, *y);
        }
    }

    fn play(&self, start: u64, out: &mut [&mut [f32]]) {
        let omega = 2.0 * std::f64::consts::PI * self.tone_hz / clip::SAMPLE_RATE as f64;
        for i in 0..out.first().map_or(0, |c| c.len()) {
            let n = start + i as u64;
            let tone = self.tone_level * (omega * n as f64).sin() as f32;
            // FL, FR, FC carry the tone; LFE only low noise; the surrounds a softer tone.
            let gains = [1.0, 1.0, 1.0, 0.0, 0.5, 0.5];
            for (c, channel) in out.iter_mut().enumerate() {
                let floor = if c == 3 { 0.01 } else { 0.05 };
                channel[i] = gains[c] * tone + floor * noise(self.noise_seed, c, n);
            }
        }
    }
}

/// What `synth` wrote.
#[derive(Debug, Clone)]
pub struct SynthSummary {
    pub root: PathBuf,
    pub rows: Vec<(Split, usize)>,
    pub clips_written: usize,
    pub faults: Vec<InjectedFault>,
    pub seconds: f64,
}

/// Writes the tree. Clips are encoded to a temporary name and renamed, so an interrupted run leaves no
/// half-written clip behind (only the injected faults are broken files, on purpose).
pub fn run(args: &SynthArgs) -> Result<SynthSummary> {
    let started = Instant::now();
    ffmpeg_next::init().context("initialising FFmpeg")?;
    ffmpeg_next::log::set_level(ffmpeg_next::log::Level::Error);
    let mut plan = Plan::new(args)?;
    if args.episode {
        let test_rows = plan
            .rows
            .iter()
            .find(|(s, _)| *s == Split::Test)
            .map(|(_, rows)| rows.as_slice())
            .unwrap_or(&[]);
        let clips: Vec<&PlannedClip> = plan
            .clips
            .iter()
            .filter(|c| c.split == Split::Test)
            .collect();
        let texts: Vec<(String, String)> = test_rows
            .iter()
            .map(|r| (r.speaker.clone(), r.utterance.clone()))
            .collect();
        let files = episode::write(&args.out, &clips, &texts, args.seed)?;
        println!(
            "synth --episode: {} ({:.1} min, {} subtitle lines) and {} in {:.1} s",
            files.video.display(),
            files.seconds / 60.0,
            files.utterances,
            files.subtitles.display(),
            started.elapsed().as_secs_f64()
        );
        return Ok(SynthSummary {
            root: args.out.clone(),
            rows: vec![(Split::Test, clips.len())],
            clips_written: 1,
            faults: Vec::new(),
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    let root = &args.out;
    let patch = match (&args.face_image, args.face_box) {
        (Some(photo), Some(face_box)) => {
            let patch = Arc::new(FacePatch::from_photo(photo, face_box)?);
            plan.place_faces(args.seed, &patch, args.face_cues);
            Some(patch)
        }
        _ => None,
    };
    // `--face-cues`: one rolled picture per emotion (the same size as the upright one: the photo turns, not the crop)
    let rolled: Vec<Arc<FacePatch>> = match (&args.face_image, args.face_box, args.face_cues) {
        (Some(photo), Some(face_box), true) => Emotion::ALL
            .iter()
            .map(|e| {
                FacePatch::from_photo_rolled(photo, face_box, face::roll_degrees(*e)).map(Arc::new)
            })
            .collect::<Result<_>>()?,
        _ => Vec::new(),
    };

    for (split, rows) in &plan.rows {
        let clip_dir = args.layout.clip_dir(root, *split);
        fs::create_dir_all(&clip_dir)
            .with_context(|| format!("creating {}", clip_dir.display()))?;
        let csv = args.layout.csv_path(root, *split);
        write_meld_csv(&csv, rows).with_context(|| format!("writing {}", csv.display()))?;
    }

    let jobs: Vec<&PlannedClip> = plan
        .clips
        .iter()
        .filter(|c| c.fault != Some(Fault::Missing))
        .collect();
    let bar = ProgressBar::new(jobs.len() as u64).with_style(
        ProgressStyle::with_template("synth {bar:40} {pos}/{len} clips  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.jobs.unwrap_or(0))
        .build()
        .context("starting the encoder threads")?;
    pool.install(|| {
        jobs.par_iter()
            .progress_with(bar.clone())
            .try_for_each(|clip| {
                let face = match Emotion::ALL.iter().position(|e| *e == clip.cues.visual) {
                    Some(i) if !rolled.is_empty() => rolled.get(i),
                    _ => patch.as_ref(),
                };
                write_clip(args.layout, root, clip, face)
            })
    })?;
    bar.finish_and_clear();

    let faults_path = root.join("synth-faults.json");
    fs::write(&faults_path, serde_json::to_string_pretty(&plan.faults)?)
        .with_context(|| format!("writing {}", faults_path.display()))?;
    write_truth(&root.join("synth-truth.csv"), &plan.clips)?;
    if let Some(patch) = &patch {
        write_faces(&root.join("synth-faces.csv"), &plan.clips, patch)?;
    }

    let summary = SynthSummary {
        root: root.clone(),
        rows: plan.rows.iter().map(|(s, r)| (*s, r.len())).collect(),
        clips_written: jobs.len(),
        faults: plan.faults.clone(),
        seconds: started.elapsed().as_secs_f64(),
    };
    print_summary(&summary, args.layout);
    Ok(summary)
}

fn write_clip(
    layout: Layout,
    root: &Path,
    clip: &PlannedClip,
    face: Option<&Arc<FacePatch>>,
) -> Result<()> {
    let path = layout.clip_dir(root, clip.split).join(&clip.file_name);
    let tmp = path.with_extension("mp4.partial");
    let streams = Streams {
        video: clip.fault != Some(Fault::NoVideo),
        audio: clip.fault != Some(Fault::NoAudio),
    };
    if clip.fault == Some(Fault::ZeroByte) {
        fs::write(&tmp, b"").with_context(|| format!("writing {}", tmp.display()))?;
    } else {
        clip::encode_clip(&tmp, &SynthClip::new(clip, face), streams)
            .with_context(|| format!("encoding {}", tmp.display()))?;
    }
    if clip.fault == Some(Fault::Truncated) {
        let bytes = fs::read(&tmp).with_context(|| format!("reading {}", tmp.display()))?;
        fs::write(&tmp, &bytes[..bytes.len() * 2 / 5])
            .with_context(|| format!("truncating {}", tmp.display()))?;
    }
    fs::rename(&tmp, &path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

fn write_truth(path: &Path, clips: &[PlannedClip]) -> Result<()> {
    let mut writer =
        csv::Writer::from_path(path).with_context(|| format!("writing {}", path.display()))?;
    writer.write_record([
        "split",
        "dialogue",
        "utterance",
        "file",
        "emotion",
        "text_cue",
        "audio_cue",
        "visual_cue",
        "tone_hz",
        "seconds",
        "fault",
    ])?;
    for clip in clips {
        writer.write_record([
            clip.split.meld_name().to_string(),
            clip.dialogue.to_string(),
            clip.utterance.to_string(),
            format!("{}/{}", clip.split.meld_clip_dir(), clip.file_name),
            clip.emotion.name().to_string(),
            clip.cues.text.name().to_string(),
            clip.cues.audio.name().to_string(),
            clip.cues.visual.name().to_string(),
            format!("{:.4}", tone_hz(clip.cues.audio)),
            format!("{:.3}", clip.seconds),
            clip.fault.map(|f| f.to_string()).unwrap_or_default(),
        ])?;
    }
    writer
        .flush()
        .with_context(|| format!("writing {}", path.display()))
}

/// `synth-faces.csv`: the face box of every clip with a face, in clip pixels (1280x720), the same in every frame.
fn write_faces(path: &Path, clips: &[PlannedClip], patch: &FacePatch) -> Result<()> {
    let mut writer =
        csv::Writer::from_path(path).with_context(|| format!("writing {}", path.display()))?;
    writer.write_record([
        "split",
        "dialogue",
        "utterance",
        "file",
        "x1",
        "y1",
        "x2",
        "y2",
    ])?;
    for clip in clips {
        if let Some((x, y)) = clip.face_at {
            let f = patch.face;
            writer.write_record([
                clip.split.meld_name().to_string(),
                clip.dialogue.to_string(),
                clip.utterance.to_string(),
                format!("{}/{}", clip.split.meld_clip_dir(), clip.file_name),
                format!("{:.2}", x as f64 + f[0]),
                format!("{:.2}", y as f64 + f[1]),
                format!("{:.2}", x as f64 + f[2]),
                format!("{:.2}", y as f64 + f[3]),
            ])?;
        }
    }
    writer
        .flush()
        .with_context(|| format!("writing {}", path.display()))
}

fn print_summary(summary: &SynthSummary, layout: Layout) {
    println!(
        "synth: {} layout at {} ({:.1} s)",
        layout.name(),
        summary.root.display(),
        summary.seconds
    );
    println!("{:<6} {:>6}", "split", "rows");
    for (split, rows) in &summary.rows {
        println!("{:<6} {:>6}", split.meld_name(), rows);
    }
    println!("clips written: {}", summary.clips_written);
    if !summary.faults.is_empty() {
        println!("injected faults ({}):", summary.faults.len());
        for f in &summary.faults {
            println!(
                "  {:<10} {:<5} dia{}_utt{}  {}",
                f.fault.to_string(),
                f.split,
                f.dialogue,
                f.utterance,
                f.file
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_counts_follow_meld_and_sum_to_rows() {
        for rows in [1, 7, 20, 113, 9989] {
            let counts = planned_label_counts(rows);
            assert_eq!(counts.iter().sum::<usize>(), rows);
        }
        let counts = planned_label_counts(9989);
        assert_eq!(counts, MELD_TRAIN_COUNTS.map(|c| c as usize));
        let hundred = planned_label_counts(100);
        assert_eq!(hundred[Emotion::Neutral.index()], 47);
        assert_eq!(hundred[Emotion::Fear.index()], 3);
    }

    #[test]
    fn dialogue_counts_keep_meld_proportions() {
        assert_eq!(planned_dialogues(8), [8, 2, 2]);
        assert_eq!(planned_dialogues(1039), [1039, 114, 280]);
    }

    #[test]
    fn noise_is_bounded_and_chunk_independent() {
        let values: Vec<f32> = (0..10_000).map(|n| noise(7, 1, n)).collect();
        assert!(values.iter().all(|v| (-1.0..=1.0).contains(v)));
        let mean: f32 = values.iter().sum::<f32>() / values.len() as f32;
        assert!(mean.abs() < 0.05, "{mean}");
        assert_eq!(noise(7, 1, 5000), values[5000]);
        assert_ne!(noise(7, 2, 5000), values[5000]);
    }

    #[test]
    fn duration_ranges_parse() {
        assert_eq!(
            parse_duration_range("1-6").unwrap(),
            DurationRange { min: 1.0, max: 6.0 }
        );
        assert!(parse_duration_range("6-1").is_err());
        assert!(parse_duration_range("abc").is_err());
    }
}
