//! `meld-etl verify`: checks a written dataset from its CSVs alone — every media file they reference exists and
//! decodes fully, mosaics (and face-only mosaics) are `--frames x --frame-height` tall with one width per split, WAVs have the sample rate
//! and channels of the extraction (read from `manifest.json`; the defaults otherwise) and as many samples as their
//! header says. Prints a summary; the binary exits non-zero when anything is wrong.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use meld_shared::dataset::{media_path, read_dataset};
use meld_shared::Split;
use rayon::prelude::*;

use crate::audio::WavFormat;

#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// The dataset folder written by `extract --out`.
    #[arg(long)]
    pub data: PathBuf,
}

#[derive(Debug, Clone, Default)]
pub struct SplitVerification {
    pub rows: usize,
    pub images: usize,
    /// Face-only mosaics (`x_visual_faces`).
    pub face_images: usize,
    pub wavs: usize,
    pub empty_visual: usize,
    pub empty_audio: usize,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub splits: BTreeMap<String, SplitVerification>,
    pub problems: usize,
}

/// What the files must look like.
#[derive(Debug, Clone, Copy)]
struct Expected {
    frames: usize,
    frame_height: u32,
    wav: WavFormat,
}

fn expected(data: &Path) -> Result<(Expected, Option<Vec<String>>)> {
    let mut e = Expected {
        frames: 5,
        frame_height: 240,
        wav: WavFormat {
            sample_rate: 16_000,
            channels: 1,
        },
    };
    let manifest = data.join("manifest.json");
    if !manifest.exists() {
        return Ok((e, None));
    }
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", manifest.display()))?;
    let s = &json["settings"];
    let field = |name: &str| {
        s[name]
            .as_u64()
            .with_context(|| format!("{}: settings.{name} missing", manifest.display()))
    };
    e.frames = field("frames")? as usize;
    e.frame_height = field("frame_height")? as u32;
    e.wav.sample_rate = field("sample_rate")? as u32;
    e.wav.channels = field("channels")? as u16;
    let splits = json["splits"]
        .as_object()
        .map(|o| o.keys().cloned().collect());
    Ok((e, splits))
}

/// A row's (mosaic width or problem, WAV problem, face-only mosaic problem); `None` for an empty cell.
type RowCheck = (
    Option<Result<u32, String>>,
    Option<Result<(), String>>,
    Option<Result<u32, String>>,
);

fn check_image(path: &Path, e: &Expected) -> Result<u32, String> {
    crate::mosaic::ends_with_eoi(path).map_err(|err| format!("{}: {err}", path.display()))?;
    let image = image::open(path).map_err(|err| format!("{}: {err}", path.display()))?;
    let (w, h) = (image.width(), image.height());
    if h != e.frames as u32 * e.frame_height {
        return Err(format!(
            "{}: {w}x{h}, expected a height of {}x{}",
            path.display(),
            e.frames,
            e.frame_height
        ));
    }
    Ok(w)
}

fn check_audio(path: &Path, e: &Expected) -> Result<(), String> {
    let mut reader =
        hound::WavReader::open(path).map_err(|err| format!("{}: {err}", path.display()))?;
    let spec = reader.spec();
    if spec.sample_rate != e.wav.sample_rate
        || spec.channels != e.wav.channels
        || spec.bits_per_sample != 16
    {
        return Err(format!(
            "{}: {} Hz, {} channel(s), {}-bit; expected {} Hz, {} channel(s), 16-bit",
            path.display(),
            spec.sample_rate,
            spec.channels,
            spec.bits_per_sample,
            e.wav.sample_rate,
            e.wav.channels
        ));
    }
    let announced = reader.len() as usize;
    let mut read = 0usize;
    for sample in reader.samples::<i16>() {
        sample.map_err(|err| format!("{}: sample {read}: {err}", path.display()))?;
        read += 1;
    }
    if read != announced || read == 0 {
        return Err(format!(
            "{}: {read} samples, header says {announced}",
            path.display()
        ));
    }
    Ok(())
}

pub fn verify(args: &VerifyArgs) -> Result<VerifyReport> {
    let (e, manifest_splits) = expected(&args.data)?;
    let mut report = VerifyReport::default();
    let mut found_any = false;
    for split in Split::ALL {
        let csv = args.data.join(split.dataset_csv());
        let required = manifest_splits
            .as_ref()
            .is_some_and(|s| s.iter().any(|n| n.as_str() == split.dataset_name()));
        if !csv.exists() {
            if required {
                report
                    .splits
                    .entry(split.dataset_name().into())
                    .or_default()
                    .problems
                    .push(format!(
                        "{} is missing (the manifest lists it)",
                        csv.display()
                    ));
            }
            continue;
        }
        found_any = true;
        let entry = report
            .splits
            .entry(split.dataset_name().into())
            .or_default();
        let rows = match read_dataset(&csv) {
            Ok(rows) => rows,
            Err(err) => {
                entry.problems.push(err.to_string());
                continue;
            }
        };
        entry.rows = rows.len();
        let mut keys = HashSet::new();
        for r in &rows {
            if !keys.insert(r.key()) {
                entry.problems.push(format!(
                    "{}: (dialogue {}, sequence {}) appears twice",
                    csv.display(),
                    r.dialogue,
                    r.sequence
                ));
            }
        }
        let checks: Vec<RowCheck> = rows
            .par_iter()
            .map(|r| {
                (
                    r.x_visual
                        .as_ref()
                        .map(|cell| check_image(&media_path(&csv, cell), &e)),
                    r.x_audio
                        .as_ref()
                        .map(|cell| check_audio(&media_path(&csv, cell), &e)),
                    r.x_visual_faces
                        .as_ref()
                        .map(|cell| check_image(&media_path(&csv, cell), &e)),
                )
            })
            .collect();
        let mut widths = BTreeMap::new();
        for (visual, audio, faces) in checks {
            match faces {
                None => {}
                Some(Ok(_)) => entry.face_images += 1,
                Some(Err(p)) => entry.problems.push(p),
            }
            match visual {
                None => entry.empty_visual += 1,
                Some(Ok(w)) => {
                    entry.images += 1;
                    *widths.entry(w).or_insert(0usize) += 1;
                }
                Some(Err(p)) => entry.problems.push(p),
            }
            match audio {
                None => entry.empty_audio += 1,
                Some(Ok(())) => entry.wavs += 1,
                Some(Err(p)) => entry.problems.push(p),
            }
        }
        if widths.len() > 1 {
            entry.problems.push(format!(
                "{}: mosaics of several widths {widths:?}",
                csv.display()
            ));
        }
    }
    if !found_any {
        anyhow::bail!(
            "{}: no train.csv, valid.csv or test.csv (is it the folder written by `extract --out`?)",
            args.data.display()
        );
    }
    report.problems = report.splits.values().map(|s| s.problems.len()).sum();
    Ok(report)
}

/// Verifies and prints the summary.
pub fn run(args: &VerifyArgs) -> Result<VerifyReport> {
    let report = verify(args)?;
    println!(
        "{:<6} {:>7} {:>7} {:>7} {:>10} {:>10} {:>9}",
        "split", "rows", "images", "wavs", "no visual", "no audio", "problems"
    );
    for (name, s) in &report.splits {
        println!(
            "{:<6} {:>7} {:>7} {:>7} {:>10} {:>10} {:>9}",
            name,
            s.rows,
            s.images,
            s.wavs,
            s.empty_visual,
            s.empty_audio,
            s.problems.len()
        );
    }
    const SHOWN: usize = 20;
    let all: Vec<&String> = report.splits.values().flat_map(|s| &s.problems).collect();
    for p in all.iter().take(SHOWN) {
        println!("  problem: {p}");
    }
    if all.len() > SHOWN {
        println!("  … and {} more problems", all.len() - SHOWN);
    }
    println!(
        "verify: {}",
        if report.problems == 0 {
            "OK".to_string()
        } else {
            format!("{} problem(s)", report.problems)
        }
    );
    Ok(report)
}
