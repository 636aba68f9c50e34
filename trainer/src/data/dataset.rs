//! The dataset at training time (docs/reference.md §2): a split's rows read through `meld_shared::dataset`, turned into model
//! inputs, batched on worker threads ahead of the model.
//!
//! * text — the dialogue prompt (docs/reference.md §2.2): every earlier turn of the same dialogue, then the row's own, each as
//!   `The speaker "<speaker>" said:\n###\n<text>\n###`, joined by three newlines; tokenised for GloVe
//!   (`basic_english`) or GPT-2 (byte-level BPE);
//! * visual — the mosaic (or, with `visual_preprocess_faceonly`, the face-only mosaic of `meld-etl extract --faces`) resized so its short side is S (256), then the reference's crop (docs/reference.md §2.3, quirk Q6):
//!   top-left S × L (L = ⌊S·1200/426⌋ = 721) zero-padded, or with `visual_crop: full` the whole mosaic resized
//!   to S × L; scaled to [0, 1] and normalised with the training mosaics' statistics → (3, S, L) / (3, L, S);
//! * audio — the WAV's samples as written, channels interleaved, int16 scale (docs/reference.md §2.5), cut or zero-padded to
//!   `audio_in_features` (or, with `audio_input: normalized_mono`, the channel mean in [-1, 1]);
//! * labels — class indices in alphabetical order of the config's classes (docs/reference.md §2.6); with a
//!   sentiment head (`sentiment_loss_weight`), also MELD's sentiment (negative, neutral, positive → 0, 1, 2) from
//!   the dataset's `sentiment` column.
//!
//! An empty media cell (the ETL could not produce that medium) becomes zeros and is counted; a cell naming a
//! file that does not exist is an error found before training starts ([`SplitData::check_media`]).

use std::path::{Path, PathBuf};

use meld_shared::{dataset::media_path, DatasetRow, Split};
use rayon::prelude::*;

use crate::config::{AudioInput, Config, TextContext, VisualCrop};
use crate::data::glove_vocab::{basic_english, GloveVocab};
use crate::data::tokenizer::Gpt2Tokenizer;
use crate::error::{Error, Result};

/// Per-channel statistics of the reference's training mosaics (docs/reference.md §2.3).
pub const VISUAL_MEAN: [f32; 3] = [0.2706, 0.2010, 0.1914];
pub const VISUAL_STD: [f32; 3] = [0.1857, 0.1608, 0.1667];

/// One turn of a dialogue prompt.
pub fn render_turn(speaker: &str, text: &str) -> String {
    format!("The speaker \"{speaker}\" said:\n###\n{text}\n###")
}

/// How items become tensors (derived from the config).
#[derive(Debug, Clone)]
pub struct Preprocess {
    pub text: bool,
    /// Batches carry the sentiment labels (a sentiment head).
    pub sentiment: bool,
    pub visual: Option<VisualSpec>,
    pub audio: Option<AudioSpec>,
    /// `visual_crop: faces`: the face encoders' crops and landmarks instead of the mosaic tensor.
    pub faces: Option<crate::data::faces::FaceSpec>,
}

#[derive(Debug, Clone, Copy)]
pub struct VisualSpec {
    pub short_side: usize,
    pub crop: VisualCrop,
    /// Read `x_visual_faces` (the face-only mosaic) instead of `x_visual`.
    pub faces_only: bool,
}

impl VisualSpec {
    /// The row's image cell this spec reads.
    pub fn cell<'a>(&self, row: &'a DatasetRow) -> &'a Option<String> {
        if self.faces_only {
            &row.x_visual_faces
        } else {
            &row.x_visual
        }
    }

    fn column(&self) -> &'static str {
        if self.faces_only {
            "x_visual_faces"
        } else {
            "x_visual"
        }
    }
}

impl VisualSpec {
    /// The long side: ⌊S·1200/426⌋ (721 for S = 256), the reference's crop width for a 426×1200 mosaic.
    pub fn long_side(&self) -> usize {
        (self.short_side as f64 * 1200.0 / 426.0) as usize
    }

    /// (channels, height, width) of the image tensor.
    pub fn shape(&self) -> (usize, usize, usize) {
        match self.crop {
            VisualCrop::Reference => (3, self.short_side, self.long_side()),
            // `faces` has no mosaic tensor (Preprocess builds no VisualSpec for it)
            VisualCrop::Full | VisualCrop::Faces => (3, self.long_side(), self.short_side),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct AudioSpec {
    pub samples: usize,
    pub input: AudioInput,
}

impl Preprocess {
    pub fn new(config: &Config) -> Self {
        Preprocess {
            text: config.uses_text(),
            sentiment: config.sentiment_weight().is_some(),
            visual: (config.uses_visual() && !config.uses_faces()).then(|| VisualSpec {
                short_side: config.short_side(),
                crop: config.visual_crop,
                faces_only: config.faces_only(),
            }),
            audio: config.uses_audio().then(|| AudioSpec {
                samples: config.audio_samples(),
                input: config.audio_input,
            }),
            faces: config.uses_faces().then(|| crate::data::faces::FaceSpec {
                size: config.face_size(),
                crops: config.modules_visual_encoder != crate::config::VisualEncoder::FaceLandmarks,
                landmark_stats: None,
            }),
        }
    }
}

/// A split's rows, labels and prompts.
#[derive(Debug, Clone)]
pub struct SplitData {
    pub split: Split,
    pub csv: PathBuf,
    pub rows: Vec<DatasetRow>,
    pub labels: Vec<usize>,
    /// MELD's sentiment of each row (index in `Sentiment::ALL`), where the dataset has it.
    pub sentiments: Vec<Option<usize>>,
    /// Tokens of each row's own turn (basic_english).
    turn_tokens: Vec<Vec<String>>,
    /// Index of the first row of each row's dialogue (rows are sorted by dialogue, sequence).
    dialogue_start: Vec<usize>,
    /// Token ids of each row's prompt (after [`SplitData::encode_text`] or [`SplitData::encode_gpt2`]).
    pub token_ids: Vec<Vec<u32>>,
    /// The best face of each frame of each row (`visual_crop: faces`, after [`SplitData::load_faces`]).
    pub faces: Vec<crate::data::faces::RowFaces>,
}

impl SplitData {
    /// Reads `<data>/<split>.csv`. Labels outside `classes` (alphabetical) are errors naming the row, and so is a
    /// row without a label (training and evaluation need one).
    pub fn load(data: &Path, split: Split, classes: &[String]) -> Result<Self> {
        Self::read(data, split, classes, true)
    }

    /// [`SplitData::load`] for prediction: rows without a label are read too (their `labels` entry is 0, their
    /// `rows[i].label` `None`).
    pub fn load_unlabelled(data: &Path, split: Split, classes: &[String]) -> Result<Self> {
        Self::read(data, split, classes, false)
    }

    fn read(data: &Path, split: Split, classes: &[String], labelled: bool) -> Result<Self> {
        let csv = data.join(split.dataset_csv());
        if !csv.exists() {
            return Err(Error::data(
                &csv,
                "missing: is this a `meld-etl extract` output folder (train.csv, valid.csv, test.csv)?",
            ));
        }
        let rows = meld_shared::dataset::read_dataset(&csv)?;
        if rows.is_empty() {
            return Err(Error::data(&csv, "the split has no rows"));
        }
        let mut labels = Vec::with_capacity(rows.len());
        for row in &rows {
            let Some(label) = row.label else {
                if !labelled {
                    labels.push(0);
                    continue;
                }
                return Err(Error::data(
                    &csv,
                    format!(
                        "dialogue {} sequence {}: no label; training and evaluation need one (`erc-train predict` \
                         reads unlabelled rows)",
                        row.dialogue, row.sequence
                    ),
                ));
            };
            let name = label.name();
            let index = classes.iter().position(|c| c == name).ok_or_else(|| {
                Error::data(
                    &csv,
                    format!(
                        "dialogue {} sequence {}: label `{name}` is not one of the config's classifier_classes ({})",
                        row.dialogue,
                        row.sequence,
                        classes.join(", ")
                    ),
                )
            })?;
            labels.push(index);
        }
        let turn_tokens = rows
            .iter()
            .map(|r| basic_english(&render_turn(&r.speaker, &r.x_text)))
            .collect();
        let sentiments = rows
            .iter()
            .map(|r| {
                r.sentiment
                    .and_then(|s| meld_shared::Sentiment::ALL.iter().position(|a| *a == s))
            })
            .collect();
        let mut dialogue_start = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let start = if i > 0 && rows[i - 1].dialogue == row.dialogue {
                dialogue_start[i - 1]
            } else {
                i
            };
            dialogue_start.push(start);
        }
        Ok(SplitData {
            split,
            csv,
            rows,
            labels,
            sentiments,
            turn_tokens,
            dialogue_start,
            token_ids: Vec::new(),
            faces: Vec::new(),
        })
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Keeps the first `n` rows (in dataset order): quick smoke runs on a slice of the data.
    pub fn truncate(&mut self, n: usize) {
        self.rows.truncate(n);
        self.labels.truncate(n);
        self.sentiments.truncate(n);
        self.turn_tokens.truncate(n);
        self.dialogue_start.truncate(n);
        self.token_ids.truncate(n);
        self.faces.truncate(n);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The dialogue prompt of row `i` (docs/reference.md §2.2).
    pub fn prompt(&self, i: usize) -> String {
        (self.dialogue_start[i]..=i)
            .map(|j| render_turn(&self.rows[j].speaker, &self.rows[j].x_text))
            .collect::<Vec<_>>()
            .join("\n\n\n")
    }

    /// The text row `i` is encoded from: the dialogue prompt, or the row's own turn only.
    pub fn text(&self, i: usize, context: TextContext) -> String {
        match context {
            TextContext::Dialogue => self.prompt(i),
            TextContext::Utterance => render_turn(&self.rows[i].speaker, &self.rows[i].x_text),
        }
    }

    /// GPT-2 token ids of every row's text (untruncated; batches truncate), tokenised on worker threads.
    pub fn encode_gpt2(&mut self, tokenizer: &Gpt2Tokenizer, context: TextContext) -> Result<()> {
        self.encode_with(context, |text| tokenizer.encode(text))
    }

    /// Token ids of every row's text by a subword tokenizer's `encode`, on worker threads.
    pub fn encode_with(
        &mut self,
        context: TextContext,
        encode: impl Fn(&str) -> Result<Vec<u32>> + Sync,
    ) -> Result<()> {
        self.token_ids = (0..self.rows.len())
            .into_par_iter()
            .map(|i| encode(&self.text(i, context)))
            .collect::<Result<_>>()?;
        Ok(())
    }

    /// Every row must have its sentiment (a sentiment head's targets): the first without one is an error naming it.
    pub fn check_sentiments(&self) -> Result<()> {
        match self.sentiments.iter().position(Option::is_none) {
            None => Ok(()),
            Some(i) => Err(Error::data(
                &self.csv,
                format!(
                    "dialogue {} sequence {}: no `sentiment`, which `sentiment_loss_weight` needs (re-extract with \
                     `meld-etl extract`: it keeps MELD's Sentiment column)",
                    self.rows[i].dialogue, self.rows[i].sequence
                ),
            )),
        }
    }

    /// Every token that occurs in the split's prompts.
    pub fn vocabulary(&self) -> impl Iterator<Item = &String> {
        self.turn_tokens.iter().flatten()
    }

    /// Token ids of every prompt: the ids of the dialogue's turns up to and including the row's own
    /// (`TextContext::Dialogue`), or of the row's own turn only.
    pub fn encode_text(&mut self, vocab: &GloveVocab, context: TextContext) {
        let turn_ids: Vec<Vec<u32>> = self
            .turn_tokens
            .iter()
            .map(|tokens| tokens.iter().filter_map(|t| vocab.id(t)).collect())
            .collect();
        self.token_ids = (0..self.rows.len())
            .map(|i| {
                let first = match context {
                    TextContext::Dialogue => self.dialogue_start[i],
                    TextContext::Utterance => i,
                };
                (first..=i)
                    .flat_map(|j| turn_ids[j].iter().copied())
                    .collect()
            })
            .collect();
    }

    /// Rows whose cell for a medium is empty, and the first cell naming a file that does not exist.
    pub fn check_media(&self, prep: &Preprocess) -> Result<MediaCounts> {
        let (visual, audio) = (prep.visual.is_some(), prep.audio.is_some());
        let mut counts = MediaCounts::default();
        let no_cell = None;
        for row in &self.rows {
            let image = prep.visual.map_or(&no_cell, |spec| spec.cell(row));
            for (wanted, cell, missing) in [
                (visual, image, &mut counts.missing_visual),
                (audio, &row.x_audio, &mut counts.missing_audio),
            ] {
                if !wanted {
                    continue;
                }
                match cell {
                    None => *missing += 1,
                    Some(cell) => {
                        let path = media_path(&self.csv, cell);
                        if !path.is_file() {
                            return Err(Error::data(
                                &self.csv,
                                format!(
                                    "dialogue {} sequence {}: media file {} does not exist",
                                    row.dialogue,
                                    row.sequence,
                                    path.display()
                                ),
                            ));
                        }
                    }
                }
            }
        }
        let n = self.rows.len();
        match prep.visual {
            Some(spec) if spec.faces_only && counts.missing_visual == n => {
                return Err(Error::data(
                    &self.csv,
                    "no row has a face-only image (x_visual_faces), which `visual_preprocess_faceonly: true` \
                     needs: run `meld-etl extract --faces MODEL.onnx` on this data (it reuses the mosaics \
                     already extracted)",
                ));
            }
            Some(spec) if counts.missing_visual == n => {
                return Err(Error::data(
                    &self.csv,
                    format!(
                        "no row has an image ({}) but the config's visual encoder needs one",
                        spec.column()
                    ),
                ));
            }
            _ => {}
        }
        if audio && counts.missing_audio == n {
            return Err(Error::data(
                &self.csv,
                "no row has audio (x_audio) but the config's audio encoder needs it",
            ));
        }
        if let Some(spec) = prep.audio {
            self.check_wav_format(spec)?;
        }
        Ok(counts)
    }
}

impl SplitData {
    /// Rows with a face-only image (`meld-etl extract --faces`).
    pub fn rows_with_faces(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| r.x_visual_faces.is_some())
            .count()
    }

    /// The first WAV of the split and its format (the ETL writes one format per extraction); `None` without audio.
    pub fn wav_format(&self) -> Result<Option<(PathBuf, hound::WavSpec)>> {
        let Some(cell) = self.rows.iter().find_map(|r| r.x_audio.as_ref()) else {
            return Ok(None);
        };
        let path = media_path(&self.csv, cell);
        let format = hound::WavReader::open(&path)
            .map_err(|e| Error::data(&path, format!("cannot read the WAV header: {e}")))?
            .spec();
        Ok(Some((path, format)))
    }

    /// `audio_input: reference` feeds the WAV's samples as written, which the reference's models saw as 44.1 kHz
    /// interleaved stereo (docs/reference.md Q12): a dataset of another format would give the same config other
    /// inputs (150 000 samples = 9.4 s of 16 kHz mono instead of 1.7 s). The first WAV of the split tells
    /// (the ETL writes one format per extraction).
    fn check_wav_format(&self, spec: AudioSpec) -> Result<()> {
        if spec.input != AudioInput::Reference {
            return Ok(());
        }
        let Some((path, format)) = self.wav_format()? else {
            return Ok(());
        };
        if (format.sample_rate, format.channels) == (REFERENCE_RATE, REFERENCE_CHANNELS) {
            return Ok(());
        }
        let data = self.csv.parent().unwrap_or(Path::new("."));
        Err(Error::data(
            &path,
            format!(
                "`audio_input: reference` feeds the WAVs as written, as the reference did with 44.1 kHz stereo,                  but this dataset's WAVs are {} Hz with {} channel(s); re-extract them in the reference's format                  with `meld-etl extract --raw MELD.Raw --out {} --profile hlm12erc`, or set                  `audio_input: normalized_mono` in the config",
                format.sample_rate,
                format.channels,
                data.display()
            ),
        ))
    }
}

/// The face model that detected a dataset's face-only images, as `meld-etl extract --faces` recorded it in
/// `manifest.json`; `None` for a dataset extracted without `--faces` (or without a manifest).
pub fn face_detector(data: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(data.join("manifest.json")).ok()?;
    let manifest: serde_json::Value = serde_json::from_str(&text).ok()?;
    manifest["faces"]["model"].as_str().map(PathBuf::from)
}

/// `visual_preprocess_retinaface_weights_path` names the detector a config's face-only images must come from:
/// the faces are detected once at extract time, so the trainer checks that the dataset's detector is the one
/// named (same file name, extension and `-`/`_` aside) and refuses another with the command that fits.
pub fn check_face_detector(config: &Config, data: &Path) -> Result<()> {
    let (true, Some(wanted)) = (
        config.visual_preprocess_faceonly.unwrap_or(false),
        config.visual_preprocess_retinaface_weights_path.as_deref(),
    ) else {
        return Ok(());
    };
    let Some(used) = face_detector(data) else {
        return Ok(()); // no faces at all: the media check names `--faces`
    };
    let stem = |p: &Path| {
        p.file_stem()
            .map(|s| s.to_string_lossy().to_lowercase().replace('-', "_"))
            .unwrap_or_default()
    };
    if stem(Path::new(wanted)) == stem(&used) {
        return Ok(());
    }
    Err(Error::data(
        data.join("manifest.json"),
        format!(
            "the config wants face-only images detected by `{wanted}` (visual_preprocess_retinaface_weights_path)              but this dataset's were detected by {}; re-extract them with `meld-etl extract --raw MELD.Raw --out {}              --faces <that model as ONNX>`, or remove the key to train on these faces",
            used.display(),
            data.display()
        ),
    ))
}

/// The WAV format `audio_input: reference` was trained on (`meld-etl extract --profile hlm12erc`).
pub const REFERENCE_RATE: u32 = 44_100;
pub const REFERENCE_CHANNELS: u16 = 2;

/// Rows of a split whose medium is absent (filled with zeros).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MediaCounts {
    pub missing_visual: usize,
    pub missing_audio: usize,
}

/// The (3, H, W) image tensor of a mosaic, row-major.
pub fn load_visual(path: &Path, spec: VisualSpec) -> Result<Vec<f32>> {
    let image = image::open(path)
        .map_err(|e| Error::data(path, format!("cannot decode the image: {e}")))?
        .to_rgb8();
    let (w, h) = image.dimensions();
    let s = spec.short_side as u32;
    // torchvision Resize(S): the short side becomes S, the long side int(S·long/short).
    let (rw, rh) = match spec.crop {
        VisualCrop::Reference if w <= h => (s, (s as f64 * h as f64 / w as f64) as u32),
        VisualCrop::Reference => ((s as f64 * w as f64 / h as f64) as u32, s),
        VisualCrop::Full | VisualCrop::Faces => (s, spec.long_side() as u32),
    };
    let resized = image::imageops::resize(
        &image,
        rw.max(1),
        rh.max(1),
        image::imageops::FilterType::Triangle,
    );
    let (c, oh, ow) = spec.shape();
    let mut out = vec![0f32; c * oh * ow];
    for y in 0..oh.min(rh as usize) {
        for x in 0..ow.min(rw as usize) {
            let p = resized.get_pixel(x as u32, y as u32);
            for ch in 0..3 {
                out[ch * oh * ow + y * ow + x] = p[ch] as f32 / 255.0;
            }
        }
    }
    // Normalise everything, padding included (black padding becomes ≈ (−1.457, −1.250, −1.148)).
    for ch in 0..3 {
        for v in &mut out[ch * oh * ow..(ch + 1) * oh * ow] {
            *v = (*v - VISUAL_MEAN[ch]) / VISUAL_STD[ch];
        }
    }
    Ok(out)
}

/// The audio vector of a WAV, `spec.samples` long.
pub fn load_audio(path: &Path, spec: AudioSpec) -> Result<Vec<f32>> {
    let mut reader = hound::WavReader::open(path)
        .map_err(|e| Error::data(path, format!("cannot read the WAV: {e}")))?;
    let wav = reader.spec();
    let channels = wav.channels.max(1) as usize;
    let full_scale = match wav.sample_format {
        hound::SampleFormat::Int => (1u64 << (wav.bits_per_sample.max(1) - 1)) as f32,
        hound::SampleFormat::Float => 1.0,
    };
    let n = spec.samples;
    let mut out = vec![0f32; n];
    let wanted = match spec.input {
        AudioInput::Reference => n,
        AudioInput::NormalizedMono => n * channels,
    };
    let samples: Vec<f32> = match wav.sample_format {
        hound::SampleFormat::Int => reader
            .samples::<i32>()
            .take(wanted)
            .map(|s| s.map(|v| v as f32))
            .collect::<std::result::Result<_, _>>(),
        hound::SampleFormat::Float => reader
            .samples::<f32>()
            .take(wanted)
            .collect::<std::result::Result<_, _>>(),
    }
    .map_err(|e| Error::data(path, format!("cannot read the WAV samples: {e}")))?;
    match spec.input {
        AudioInput::Reference => out[..samples.len()].copy_from_slice(&samples),
        AudioInput::NormalizedMono => {
            for (i, frame) in samples.chunks(channels).enumerate() {
                out[i] = frame.iter().sum::<f32>() / (channels as f32 * full_scale);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meld_shared::Emotion;

    fn classes() -> Vec<String> {
        Emotion::ALL.iter().map(|e| e.name().to_string()).collect()
    }

    #[test]
    fn prompts_follow_the_reference() {
        let dir = tempfile::tempdir().unwrap();
        let rows = vec![
            DatasetRow::new(0, 0, "Chandler", "hi there", Emotion::Neutral),
            DatasetRow::new(0, 1, "Chandler", "cool!", Emotion::Joy),
            DatasetRow::new(1, 0, "Ross", "no", Emotion::Sadness),
        ];
        meld_shared::dataset::write_dataset(&dir.path().join("train.csv"), &rows).unwrap();
        let data = SplitData::load(dir.path(), Split::Train, &classes()).unwrap();
        assert_eq!(
            data.prompt(1),
            "The speaker \"Chandler\" said:\n###\nhi there\n###\n\n\nThe speaker \"Chandler\" said:\n###\ncool!\n###"
        );
        assert_eq!(data.prompt(2), "The speaker \"Ross\" said:\n###\nno\n###");
        assert_eq!(data.labels, [4, 3, 5]);
        let err = SplitData::load(dir.path(), Split::Train, &["joy".into(), "neutral".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("train.csv") && err.contains("sadness"),
            "{err}"
        );
    }

    #[test]
    fn reference_crop_keeps_the_top_rows_and_pads_with_black() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.png");
        // 426x1200 mosaic: the top 240 rows white, the rest black
        let img = image::RgbImage::from_fn(426, 1200, |_, y| {
            if y < 240 {
                image::Rgb([255, 255, 255])
            } else {
                image::Rgb([0, 0, 0])
            }
        });
        img.save(&path).unwrap();
        let spec = VisualSpec {
            short_side: 256,
            crop: VisualCrop::Reference,
            faces_only: false,
        };
        assert_eq!(spec.shape(), (3, 256, 721));
        let v = load_visual(&path, spec).unwrap();
        assert_eq!(v.len(), 3 * 256 * 721);
        let at = |c: usize, y: usize, x: usize| v[c * 256 * 721 + y * 721 + x];
        let white = (1.0 - VISUAL_MEAN[0]) / VISUAL_STD[0];
        let black = -VISUAL_MEAN[0] / VISUAL_STD[0];
        assert!((at(0, 10, 10) - white).abs() < 1e-3);
        assert!(
            (at(0, 10, 300) - black).abs() < 1e-6,
            "columns past 256 are padding"
        );
        assert!((black + 1.457).abs() < 1e-3);
        // row 240 of the mosaic lands at 240·256/426 ≈ 144 after resizing: black below
        assert!((at(0, 200, 10) - black).abs() < 1e-3);
        let full = VisualSpec {
            short_side: 64,
            crop: VisualCrop::Full,
            faces_only: false,
        };
        assert_eq!(load_visual(&path, full).unwrap().len(), 3 * 180 * 64);
    }

    #[test]
    fn audio_is_interleaved_int16_scale_then_padded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 44100,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for (l, r) in [(100i16, -100i16), (32767, -32768), (5, 6)] {
            w.write_sample(l).unwrap();
            w.write_sample(r).unwrap();
        }
        w.finalize().unwrap();
        let reference = load_audio(
            &path,
            AudioSpec {
                samples: 8,
                input: AudioInput::Reference,
            },
        )
        .unwrap();
        assert_eq!(
            reference,
            [100.0, -100.0, 32767.0, -32768.0, 5.0, 6.0, 0.0, 0.0]
        );
        let cut = load_audio(
            &path,
            AudioSpec {
                samples: 3,
                input: AudioInput::Reference,
            },
        )
        .unwrap();
        assert_eq!(cut, [100.0, -100.0, 32767.0]);
        let mono = load_audio(
            &path,
            AudioSpec {
                samples: 4,
                input: AudioInput::NormalizedMono,
            },
        )
        .unwrap();
        assert_eq!(mono, [0.0, -0.5 / 32768.0, 5.5 / 32768.0, 0.0]);
    }

    #[test]
    fn the_named_face_detector_must_be_the_datasets() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("manifest.json"),
            r#"{"faces": {"model": "models/retinaface-mnet025.onnx"}}"#,
        )
        .unwrap();
        let config = |key: &str| {
            Config::parse(
                Path::new("f.yml"),
                &format!("classifier_classes: [anger, joy]\nmodules_visual_encoder: resnet50\nvisual_preprocess_faceonly: true\n{key}"),
            )
            .unwrap()
        };
        assert!(check_face_detector(&config(""), dir.path()).is_ok());
        let same =
            config("visual_preprocess_retinaface_weights_path: other/retinaface_mnet025.pth\n");
        assert!(check_face_detector(&same, dir.path()).is_ok());
        let other = config(
            "visual_preprocess_retinaface_weights_path: .weights_cache/retinaface_resnet50.pth\n",
        );
        let err = check_face_detector(&other, dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("retinaface_resnet50.pth")
                && err.contains("retinaface-mnet025.onnx")
                && err.contains("--faces"),
            "{err}"
        );
    }
}
