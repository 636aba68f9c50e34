//! Stage 4c (`extract --faces`): RetinaFace face detection on the mosaics, face-only images and the boxes.
//!
//! A [`FaceDetector`] holds a RetinaFace ONNX model (see [`model`]; run by tract or onnxruntime behind
//! [`net::FaceNet`]) and a [`FaceProfile`].
//! [`FaceDetector::detect`] finds the faces of a mosaic (the network's raw outputs → [`priors`] → [`decode`] →
//! the profile's thresholds and [`nms`], see [`profile`]) and returns them in mosaic pixels;
//! [`FaceDetector::face_only`] blacks out every pixel outside them. The default profile runs the network on
//! each frame of the mosaic separately, so no box spans two frames; `hlm12erc` runs it on the whole mosaic, as
//! the reference does.
//!
//! ```no_run
//! use meld_etl::faces::{FaceDetector, FaceEngine, FaceProfile};
//! let model = "models/retinaface-mnet025.onnx".as_ref();
//! let detector = FaceDetector::new(model, FaceProfile::Default, FaceEngine::Auto, 5, 240, 426)?;
//! let mosaic = image::open("data/train/d-0-seq-0.jpg").unwrap().to_rgb8();
//! let faces = detector.detect(&mosaic, 5)?;
//! detector.face_only(&mosaic, &faces).save("d-0-seq-0.faces.png").unwrap();
//! # Ok::<(), meld_etl::faces::FaceError>(())
//! ```

pub mod check;
pub mod decode;
pub mod model;
pub mod net;
pub mod nms;
pub mod ort_net;
pub mod priors;
pub mod profile;
pub mod tract_net;

use std::path::{Path, PathBuf};

use image::RgbImage;

pub use model::RetinaFace;
pub use net::FaceEngine;
pub use profile::FaceProfile;

#[derive(Debug, thiserror::Error)]
pub enum FaceError {
    #[error("{path}: cannot read the face model: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path}: not a usable ONNX model (expected a RetinaFace export with one input [batch, 3, height, width]): {message}")]
    Load { path: PathBuf, message: String },
    #[error("{path}: the model does not take a {batch}x3x{height}x{width} input (BGR image, NCHW), which this run needs; export it with dynamic height and width: {message}")]
    InputSize {
        path: PathBuf,
        batch: usize,
        height: u32,
        width: u32,
        message: String,
    },
    #[error("{path}: unexpected outputs {found} for a {height}x{width} input; expected RetinaFace's three: [{batch}, {priors}, 4] box offsets, [{batch}, {priors}, 2] class scores and [{batch}, {priors}, 10] landmarks (float32, {priors} = the prior count for {height}x{width} with steps 8/16/32)")]
    Outputs {
        path: PathBuf,
        found: String,
        batch: usize,
        priors: usize,
        height: u32,
        width: u32,
    },
    #[error("{path}: running the face model on a {height}x{width} image: {message}")]
    Run {
        path: PathBuf,
        height: u32,
        width: u32,
        message: String,
    },
    #[error("the onnxruntime face engine needs libonnxruntime.so, which is not at {tried}: run `make models` (it extracts the library from the PyPI onnxruntime wheel into models/onnxruntime/), set ORT_DYLIB_PATH, or use --face-engine tract")]
    NoLibrary { tried: String },
    #[error("{library}: cannot use this onnxruntime library (run `make models` for the pinned one): {message}")]
    Library { library: PathBuf, message: String },
    #[error("a {width}x{height} image cannot be cut into {tiles} frames of equal height")]
    Tiles {
        width: u32,
        height: u32,
        tiles: usize,
    },
}

/// One detected face in the coordinates of the whole image (mosaic).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Face {
    /// The frame (tile) of the mosaic, 0 at the top. Default profile: the tile it was found in; hlm12erc: the
    /// tile holding the box's vertical centre.
    pub tile: usize,
    pub score: f32,
    /// `[x1, y1, x2, y2]`: default profile, clipped to its tile; hlm12erc, the integer box the reference uses.
    pub bbox: [f32; 4],
    /// `[x1, y1, …, x5, y5]`: eyes, nose, mouth corners (not clipped).
    pub landmarks: [f32; 10],
}

/// A RetinaFace model with the profile it is run under.
#[derive(Debug)]
pub struct FaceDetector {
    model: RetinaFace,
    profile: FaceProfile,
}

impl FaceDetector {
    /// Loads the model with `engine` and checks it on the input that mosaics of `tiles` frames of `tile_height x tile_width`
    /// need under `profile` (so a model that cannot run them fails here, before any work).
    pub fn new(
        path: &Path,
        profile: FaceProfile,
        engine: FaceEngine,
        tiles: usize,
        tile_height: u32,
        tile_width: u32,
    ) -> Result<Self, FaceError> {
        let (batch, height) = Self::input(profile, tiles, tile_height);
        let model = RetinaFace::load(path, engine, batch, height, tile_width)?;
        Ok(FaceDetector { model, profile })
    }

    /// The network input (batch, height) for mosaics of `tiles` frames of `tile_height`: the default profile
    /// runs the frames one at a time (tract's batch-5 plan was twice as slow as five batch-1 runs here),
    /// hlm12erc the whole mosaic as one image.
    fn input(profile: FaceProfile, tiles: usize, tile_height: u32) -> (usize, u32) {
        match profile {
            FaceProfile::Default => (1, tile_height),
            FaceProfile::Hlm12erc => (1, tile_height * tiles as u32),
        }
    }

    pub fn profile(&self) -> FaceProfile {
        self.profile
    }

    pub fn model(&self) -> &RetinaFace {
        &self.model
    }

    /// The faces of `image`, a mosaic of `tiles` frames stacked top to bottom (1 for a plain image).
    pub fn detect(&self, image: &RgbImage, tiles: usize) -> Result<Vec<Face>, FaceError> {
        let (width, height) = image.dimensions();
        if tiles == 0 || !(height as usize).is_multiple_of(tiles) {
            return Err(FaceError::Tiles {
                width,
                height,
                tiles,
            });
        }
        let tile_height = height / tiles as u32;
        let pixels = image.as_raw();
        let raws = match self.profile {
            FaceProfile::Default => {
                let tile_bytes = tile_height as usize * width as usize * 3;
                let mut raws = Vec::with_capacity(tiles);
                for frame in pixels.chunks_exact(tile_bytes) {
                    raws.extend(self.model.run(&[frame], tile_height, width)?);
                }
                raws
            }
            FaceProfile::Hlm12erc => self.model.run(&[pixels.as_slice()], height, width)?,
        };
        Ok(faces_from_outputs(
            self.profile,
            &raws,
            width,
            height,
            tiles,
        ))
    }

    /// `image` with every pixel outside the faces' boxes set to black.
    pub fn face_only(&self, image: &RgbImage, faces: &[Face]) -> RgbImage {
        face_only(self.profile, image, faces)
    }
}

/// `image` with every pixel outside the faces' boxes (under `profile`'s pixel convention) set to black.
pub fn face_only(profile: FaceProfile, image: &RgbImage, faces: &[Face]) -> RgbImage {
    let (width, height) = image.dimensions();
    let boxes: Vec<[f32; 4]> = faces.iter().map(|f| f.bbox).collect();
    let keep = profile::mask(profile, &boxes, width, height);
    let mut out = image.clone();
    for (pixel, keep) in out.pixels_mut().zip(keep) {
        if !keep {
            pixel.0 = [0, 0, 0];
        }
    }
    out
}

/// The faces of a `width x height` mosaic of `tiles` frames from the network's outputs: one per tile (default
/// profile) or one for the whole mosaic (hlm12erc).
pub fn faces_from_outputs(
    profile: FaceProfile,
    raws: &[decode::RawOutputs],
    width: u32,
    height: u32,
    tiles: usize,
) -> Vec<Face> {
    let tile_height = height / tiles.max(1) as u32;
    match profile {
        FaceProfile::Default => {
            let priors = priors::priors(tile_height, width);
            let mut faces = Vec::new();
            for (tile, raw) in raws.iter().enumerate() {
                let dy = (tile as u32 * tile_height) as f32;
                for d in profile::detect_default(raw, &priors, width, tile_height) {
                    let mut landmarks = d.landmarks;
                    for k in 0..5 {
                        landmarks[2 * k + 1] += dy;
                    }
                    faces.push(Face {
                        tile,
                        score: d.score,
                        bbox: [d.bbox[0], d.bbox[1] + dy, d.bbox[2], d.bbox[3] + dy],
                        landmarks,
                    });
                }
            }
            faces
        }
        FaceProfile::Hlm12erc => {
            let priors = priors::priors(height, width);
            raws.iter()
                .flat_map(|raw| profile::detect_hlm12erc(raw, &priors, width, height))
                .map(|d| {
                    let int = d.bbox_int.unwrap_or(d.bbox.map(|v| v.trunc() as i64));
                    let centre = (int[1] + int[3]) as f64 / 2.0;
                    let last = tiles.max(1) - 1;
                    let tile = (centre / tile_height.max(1) as f64)
                        .floor()
                        .clamp(0.0, last as f64);
                    Face {
                        tile: tile as usize,
                        score: d.score,
                        bbox: int.map(|v| v as f32),
                        landmarks: d.landmarks,
                    }
                })
                .collect()
        }
    }
}

/// The columns of `faces.csv` (one row per face; coordinates in mosaic pixels).
pub const FACES_COLUMNS: [&str; 19] = [
    "split",
    "dialogue_id",
    "utterance_id",
    "tile",
    "x1",
    "y1",
    "x2",
    "y2",
    "score",
    "lm1_x",
    "lm1_y",
    "lm2_x",
    "lm2_y",
    "lm3_x",
    "lm3_y",
    "lm4_x",
    "lm4_y",
    "lm5_x",
    "lm5_y",
];

/// One `faces.csv` record (f32 values in their shortest form that reads back to the same f32).
pub fn faces_record(split: &str, dialogue: u32, utterance: u32, face: &Face) -> Vec<String> {
    let mut record = vec![
        split.to_string(),
        dialogue.to_string(),
        utterance.to_string(),
        face.tile.to_string(),
    ];
    record.extend(face.bbox.iter().map(|v| v.to_string()));
    record.push(face.score.to_string());
    record.extend(face.landmarks.iter().map(|v| v.to_string()));
    record
}
