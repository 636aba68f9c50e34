//! Before any training: can every asked row run? One check per thing a row needs — the three splits, face-only
//! images (rows 11/12), WAVs in the format the row's audio input was trained on, the GloVe vectors, the GPT-2,
//! RoBERTa, wav2vec2 and ResNet-50 weights (found and checked against their architecture as `erc-train models check` does,
//! once per backbone for the whole table), the device — each `ok`, `-` (not needed) or `MISSING`, with the one
//! command that fixes it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use meld_shared::Split;

use super::Job;
use crate::config::{AudioEncoder, AudioInput, TextEncoder};
use crate::data::dataset::{face_detector, SplitData, REFERENCE_CHANNELS, REFERENCE_RATE};
use crate::encoders::check;
use crate::encoders::hub::{Backbone, HubEnv};

/// The WAV format of a plain `meld-etl extract` (its default profile): what `audio_input: normalized_mono` reads.
const MONO_RATE: u32 = 16_000;

/// One cell of the table.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Ok,
    NotNeeded,
    /// What is wrong and how to fix it.
    Missing(String),
}

/// The columns, in order.
pub const COLUMNS: [&str; 9] = [
    "data", "faces", "audio", "glove", "gpt2", "roberta", "wav2vec2", "resnet50", "device",
];

/// A job's checks.
pub struct RowCheck {
    pub label: String,
    pub cells: Vec<Cell>,
}

impl RowCheck {
    pub fn ready(&self) -> bool {
        !self.cells.iter().any(|c| matches!(c, Cell::Missing(_)))
    }

    /// The problems, one line each.
    pub fn problems(&self) -> Vec<String> {
        self.cells
            .iter()
            .zip(COLUMNS)
            .filter_map(|(c, col)| match c {
                Cell::Missing(why) => Some(format!("{col}: {why}")),
                _ => None,
            })
            .collect()
    }
}

/// What is known of the dataset, read once for all rows.
struct DataFacts {
    /// A missing split CSV, or the error reading one.
    problem: Option<String>,
    faces: bool,
    /// (rate, channels) of the first WAV.
    wav: Option<(u32, u16)>,
    /// Why the rows cannot feed a sentiment head (a train row without MELD's sentiment).
    no_sentiment: Option<String>,
}

fn data_facts(data: &Path) -> DataFacts {
    let mut facts = DataFacts {
        problem: None,
        faces: face_detector(data).is_some(),
        wav: None,
        no_sentiment: None,
    };
    for split in Split::ALL {
        let csv = data.join(split.dataset_csv());
        if !csv.is_file() {
            facts.problem = Some(format!(
                "{} is missing; extract the dataset with `meld-etl extract --raw MELD.Raw --out {}`",
                csv.display(),
                data.display()
            ));
            return facts;
        }
    }
    let classes: Vec<String> = super::paper::CLASSES
        .iter()
        .map(|c| c.to_string())
        .collect();
    match SplitData::load(data, Split::Train, &classes) {
        Ok(train) => {
            facts.faces = facts.faces || train.rows_with_faces() > 0;
            facts.no_sentiment = train.check_sentiments().err().map(|e| e.to_string());
            match train.wav_format() {
                Ok(format) => facts.wav = format.map(|(_, f)| (f.sample_rate, f.channels)),
                Err(e) => facts.problem = Some(e.to_string()),
            }
        }
        Err(e) => facts.problem = Some(e.to_string()),
    }
    facts
}

/// Checks every job against its own dataset (the corrected rows may have theirs); `device_problem` is why no
/// asked device can be used (`None` when at least one can: the others just drop out of the queue).
pub fn check(jobs: &[Job], glove: Option<&Path>, device_problem: Option<&str>) -> Vec<RowCheck> {
    let mut facts_of: BTreeMap<std::path::PathBuf, DataFacts> = BTreeMap::new();
    let env = HubEnv::from_env();
    let mut backbones = check::Cache::default();
    let device_cell = match device_problem {
        Some(e) => Cell::Missing(e.to_string()),
        None => Cell::Ok,
    };
    jobs.iter()
        .map(|job| {
            let data = job.data.as_path();
            let facts = facts_of
                .entry(job.data.clone())
                .or_insert_with(|| data_facts(data));
            let extract = format!("meld-etl extract --raw MELD.Raw --out {}", data.display());
            let c = &job.config;
            let data_cell = match (&facts.problem, &facts.no_sentiment) {
                (Some(p), _) => Cell::Missing(p.clone()),
                (None, Some(why)) if c.sentiment_weight().is_some() => Cell::Missing(why.clone()),
                _ => Cell::Ok,
            };
            let faces = if c.visual_preprocess_faceonly.unwrap_or(false) {
                if facts.faces {
                    match crate::data::dataset::check_face_detector(c, data) {
                        Ok(()) => Cell::Ok,
                        Err(e) => Cell::Missing(e.to_string()),
                    }
                } else {
                    Cell::Missing(format!(
                        "no face-only images (x_visual_faces); add them with `{extract} --profile hlm12erc --faces \
                         models/retinaface-mnet025.onnx --face-profile hlm12erc` (make models fetches the model; \
                         the mosaics and WAVs are reused)"
                    ))
                }
            } else if c.uses_faces() {
                // seed system 3 reads faces.csv (boxes and landmarks per frame), any face profile
                if facts.faces {
                    Cell::Ok
                } else {
                    Cell::Missing(format!(
                        "no faces (faces.csv); add them with `{extract} --faces models/retinaface-mnet025.onnx` \
                         (make models fetches the model; the mosaics and WAVs are reused)"
                    ))
                }
            } else {
                Cell::NotNeeded
            };
            let audio = match (c.modules_audio_encoder, c.audio_input, facts.wav) {
                (AudioEncoder::None, _, _) => Cell::NotNeeded,
                (_, _, None) if facts.problem.is_none() => {
                    Cell::Missing(format!("the dataset has no audio; extract it with `{extract}`"))
                }
                (_, AudioInput::Reference, Some((rate, channels)))
                    if (rate, channels) != (REFERENCE_RATE, REFERENCE_CHANNELS) =>
                {
                    Cell::Missing(format!(
                        "`audio_input: reference` was trained on 44.1 kHz stereo WAVs, these are {rate} Hz x \
                         {channels}; re-extract with `{extract} --profile hlm12erc`"
                    ))
                }
                // the trainer does not resample: `normalized_mono` (wav2vec2's and the corrected rows' input)
                // wants the 16 kHz mono WAVs of a plain extraction
                (_, AudioInput::NormalizedMono, Some((rate, channels)))
                    if (rate, channels) != (MONO_RATE, 1) =>
                {
                    let fix = match job.variant {
                        super::Variant::Corrected => "extract them with `meld-etl extract --raw MELD.Raw --out \
                             DIR` (the default profile) and pass --corrected-data DIR"
                            .to_string(),
                        super::Variant::Reference => format!("re-extract with `{extract}`"),
                    };
                    Cell::Missing(format!(
                        "`audio_input: normalized_mono` reads 16 kHz mono WAVs, these are {rate} Hz x {channels}; \
                         {fix}"
                    ))
                }
                _ => Cell::Ok,
            };
            let glove_cell = if c.modules_text_encoder == TextEncoder::Glove {
                let path = crate::train::glove_path(c, glove);
                if path.is_file() {
                    Cell::Ok
                } else {
                    Cell::Missing(format!(
                        "{} not found; fetch it with `make glove` or pass --glove PATH",
                        path.display()
                    ))
                }
            } else {
                Cell::NotNeeded
            };
            // `models check` without the sha256, once per backbone and spec for the whole table
            let mut backbone = |needed: bool, backbone: Backbone, spec: Option<&str>| {
                let Some(spec) = spec.filter(|_| needed) else {
                    // not used, or ResNet-50 from random weights (`visual_model: random`)
                    return if needed { Cell::Ok } else { Cell::NotNeeded };
                };
                match backbones.check(&env, backbone, spec) {
                    Ok(report) => match report.problem() {
                        None => Cell::Ok,
                        Some(problem) => Cell::Missing(problem),
                    },
                    Err(e) => Cell::Missing(e.replace('\n', " ")),
                }
            };
            let cells = vec![
                data_cell,
                faces,
                audio,
                glove_cell,
                backbone(c.modules_text_encoder == TextEncoder::Gpt2, Backbone::Gpt2, Some(c.text_model())),
                backbone(
                    c.modules_text_encoder == TextEncoder::Roberta,
                    Backbone::Roberta,
                    Some(c.text_model()),
                ),
                backbone(
                    c.modules_audio_encoder == AudioEncoder::Wav2vec2,
                    Backbone::Wav2vec2,
                    Some(c.audio_model()),
                ),
                backbone(
                    c.uses_resnet(),
                    Backbone::Resnet50,
                    c.visual_model(),
                ),
                device_cell.clone(),
            ];
            RowCheck {
                label: job.label(),
                cells,
            }
        })
        .collect()
}

/// The table of rows × checks, then each distinct fix once.
pub fn render(checks: &[RowCheck]) -> String {
    let width = checks
        .iter()
        .map(|c| c.label.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut out = format!("{:<width$}", "row");
    for col in COLUMNS {
        out += &format!(" {col:>8}");
    }
    out.push('\n');
    let mut fixes = BTreeSet::new();
    for check in checks {
        out += &format!("{:<width$}", check.label);
        for (cell, col) in check.cells.iter().zip(COLUMNS) {
            let text = match cell {
                Cell::Ok => "ok",
                Cell::NotNeeded => "-",
                Cell::Missing(why) => {
                    fixes.insert(format!("{col}: {why}"));
                    "MISSING"
                }
            };
            out += &format!(" {text:>8}");
        }
        out.push('\n');
    }
    for fix in fixes {
        out += &format!("  - {fix}\n");
    }
    out
}
