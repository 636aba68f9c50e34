//! The utterances to predict as a dataset `erc-train` reads: an extracted split as it is, or a MELD.Raw folder or
//! a video with subtitles turned into one by the ETL itself (`meld-etl extract` / `meld-etl segment`, run as a
//! process into a temporary folder), with the media format the run's model was trained on (`--profile hlm12erc`
//! for `audio_input: reference`, face-only mosaics for `visual_preprocess_faceonly`). `erc-train` links no media
//! library: the ETL does the decoding, as it did for the training data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use meld_shared::Split;

use crate::config::{AudioEncoder, AudioInput, Config};
use crate::error::{Error, Result};

/// What to predict.
#[derive(Debug, Clone)]
pub enum Input {
    /// A split of a dataset `meld-etl extract` wrote.
    Data { data: PathBuf, split: Split },
    /// A MELD.Raw-shaped folder (clips and CSV): extracted first.
    Raw { raw: PathBuf, split: Split },
    /// One video and its subtitles (SRT, or CSV `start,end,text[,speaker][,dialogue]`): segmented first.
    Video { video: PathBuf, subtitles: PathBuf },
}

/// (dialogue, sequence) → (stage, reason, detail) of every `failures.csv` line of a split.
pub type Failures = BTreeMap<(u32, u32), Vec<(String, String, String)>>;

/// A dataset split ready to read, and the ETL's reasons for its rows without media.
pub struct Prepared {
    pub data: PathBuf,
    pub split: Split,
    pub failures: Failures,
    /// The temporary folder holding extracted media (removed when dropped).
    pub _scratch: Option<tempfile::TempDir>,
}

/// The `meld-etl` binary: beside this executable (one build writes both), else on `PATH`.
fn meld_etl() -> PathBuf {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("meld-etl")));
    match beside {
        Some(path) if path.is_file() => path,
        _ => PathBuf::from("meld-etl"),
    }
}

/// The ETL's media options for the run's model: the WAV profile its audio input was trained on, and the face
/// model for face-only images.
fn media_args(config: &Config, faces: Option<&Path>, face_profile: &str) -> Result<Vec<String>> {
    let mut args = Vec::new();
    if config.modules_audio_encoder != AudioEncoder::None
        && config.audio_input == AudioInput::Reference
    {
        args.extend(["--profile".to_string(), "hlm12erc".to_string()]);
    }
    if config.visual_preprocess_faceonly.unwrap_or(false) {
        let model = faces.ok_or_else(|| {
            Error::Other(
                "this run's model reads face-only images (visual_preprocess_faceonly): pass --faces MODEL.onnx \
                 (the RetinaFace model the training data was extracted with; `make models` fetches \
                 models/retinaface-mnet025.onnx)"
                    .into(),
            )
        })?;
        args.extend([
            "--faces".to_string(),
            model.display().to_string(),
            "--face-profile".to_string(),
            face_profile.to_string(),
        ]);
    }
    Ok(args)
}

/// Runs `meld-etl` with `args`; an error carries its message (and causes).
fn run_etl(args: &[String]) -> Result<()> {
    let etl = meld_etl();
    tracing::info!("{} {}", etl.display(), args.join(" "));
    let output = Command::new(&etl)
        .args(args)
        // the message, not a backtrace
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .output()
        .map_err(|e| {
            Error::Other(format!(
                "cannot run {} ({e}): build it with `make build` (it sits beside erc-train)",
                etl.display()
            ))
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        // anyhow's report: `Error: …`, then its causes
        let message: Vec<&str> = stderr
            .lines()
            .skip_while(|l| !l.starts_with("Error:"))
            .map(str::trim)
            .filter(|l| !l.is_empty() && *l != "Caused by:")
            .take(4)
            .collect();
        let message = if message.is_empty() {
            stderr.lines().rev().take(3).collect::<Vec<_>>().join(" | ")
        } else {
            message.join(" ")
        };
        return Err(Error::Other(format!(
            "meld-etl {} failed: {message}",
            args.first().map_or("", String::as_str)
        )));
    }
    Ok(())
}

/// The split of `failures.csv` in `data` as (dialogue, sequence) → problems (none when the file is absent).
fn read_failures(data: &Path, split: Split) -> Result<Failures> {
    let path = data.join("failures.csv");
    let mut out = Failures::new();
    if !path.is_file() {
        return Ok(out);
    }
    let mut reader =
        csv::Reader::from_path(&path).map_err(|e| Error::data(&path, e.to_string()))?;
    for record in reader.records() {
        let record = record.map_err(|e| Error::data(&path, e.to_string()))?;
        let field = |i: usize| record.get(i).unwrap_or("").to_string();
        let split_name = field(0);
        if split_name != split.dataset_name() && split_name != split.meld_name() {
            continue;
        }
        let (Ok(dialogue), Ok(sequence)) = (field(1).parse::<u32>(), field(2).parse::<u32>())
        else {
            continue; // a split-wide line (no row)
        };
        out.entry((dialogue, sequence))
            .or_default()
            .push((field(3), field(4), field(5)));
    }
    Ok(out)
}

/// Makes `input` a dataset split (extracting or segmenting into a temporary folder under `out`).
pub fn prepare(
    input: &Input,
    config: &Config,
    faces: Option<&Path>,
    face_profile: &str,
    out: &Path,
) -> Result<Prepared> {
    let scratch = || {
        tempfile::Builder::new()
            .prefix(".predict-media-")
            .tempdir_in(out)
            .map_err(|e| Error::io(out, e))
    };
    let (data, split, scratch) = match input {
        Input::Data { data, split } => (data.clone(), *split, None),
        Input::Raw { raw, split } => {
            let dir = scratch()?;
            let mut args = vec![
                "extract".to_string(),
                "--raw".to_string(),
                raw.display().to_string(),
                "--out".to_string(),
                dir.path().display().to_string(),
                "--splits".to_string(),
                split.dataset_name().to_string(),
            ];
            args.extend(media_args(config, faces, face_profile)?);
            run_etl(&args)?;
            (dir.path().to_path_buf(), *split, Some(dir))
        }
        Input::Video { video, subtitles } => {
            let dir = scratch()?;
            let mut args = vec![
                "segment".to_string(),
                "--video".to_string(),
                video.display().to_string(),
                "--subtitles".to_string(),
                subtitles.display().to_string(),
                "--out".to_string(),
                dir.path().display().to_string(),
            ];
            args.extend(media_args(config, faces, face_profile)?);
            run_etl(&args)?;
            (dir.path().to_path_buf(), Split::Test, Some(dir))
        }
    };
    let failures = read_failures(&data, split)?;
    Ok(Prepared {
        data,
        split,
        failures,
        _scratch: scratch,
    })
}
