//! What a row's faces are (`faces.csv` of `meld-etl extract --faces`: the best face of each frame, its box and 5
//! landmarks) and what the face encoders read (`visual_crop: faces`): the types the dataset and the batches hold.
//! Reading, cropping and batching them is [`super::face_crops`].

/// Frames per mosaic (`meld-etl extract --frames`, default 5).
pub const FRAMES: usize = 5;
/// Landmark coordinates per frame: 5 points (eyes, nose, mouth corners) × (x, y).
pub const LANDMARK_VALUES: usize = 10;

/// What the face encoders read (`visual_crop: faces`).
#[derive(Debug, Clone, Copy)]
pub struct FaceSpec {
    /// The side of a crop (`visual_face_size`).
    pub size: usize,
    /// Whether the model reads the crops (not for landmarks alone: no image is decoded then).
    pub crops: bool,
    /// Each landmark coordinate's mean and standard deviation over the training split's faces
    /// ([`super::face_crops::fit_landmark_stats`]): the coordinates are standardised with them.
    pub landmark_stats: Option<LandmarkStats>,
}

/// Per-coordinate (mean, standard deviation) of the normalised landmarks.
pub type LandmarkStats = ([f32; LANDMARK_VALUES], [f32; LANDMARK_VALUES]);

/// One detected face of a frame, in mosaic pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameFace {
    pub score: f32,
    pub bbox: [f32; 4],
    pub landmarks: [f32; LANDMARK_VALUES],
}

/// The best face of each frame of a row.
pub type RowFaces = [Option<FrameFace>; FRAMES];
