//! Box and landmark decoding against the priors (biubug6 `decode`, `decode_landm` and `detect.py`'s scaling to
//! pixels), in f32 with the original's order of operations:
//!
//! ```text
//! c    = prior.c + loc[0:2] · 0.1 · prior.wh
//! wh   = prior.wh · exp(loc[2:4] · 0.2)
//! box  = [c − wh/2, (c − wh/2) + wh] · [W, H, W, H]
//! lm_k = (prior.c + landmarks[2k:2k+2] · 0.1 · prior.wh) · [W, H]        k = 0..4
//! ```
//!
//! Only the priors that pass a profile's score threshold are decoded: a 240x426 tile has 4274 priors and a
//! handful of candidates.

use super::priors::VARIANCES;

/// The network's outputs for one image, one row per prior: box offsets, the face probability (after the
/// softmax, whether the model applies it or not) and landmark offsets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawOutputs {
    pub loc: Vec<[f32; 4]>,
    pub scores: Vec<f32>,
    pub landmarks: Vec<[f32; 10]>,
}

impl RawOutputs {
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }
}

/// The face probability from a (background, face) pair of logits: softmax over the two, in f32.
pub fn face_probability(logits: [f32; 2]) -> f32 {
    let max = logits[0].max(logits[1]);
    let (e0, e1) = ((logits[0] - max).exp(), (logits[1] - max).exp());
    e1 / (e0 + e1)
}

/// The box `[x1, y1, x2, y2]` in pixels of an image `width x height`.
pub fn decode_box(prior: &[f32; 4], loc: &[f32; 4], width: u32, height: u32) -> [f32; 4] {
    let (v0, v1) = (VARIANCES[0], VARIANCES[1]);
    let cx = prior[0] + loc[0] * v0 * prior[2];
    let cy = prior[1] + loc[1] * v0 * prior[3];
    let w = prior[2] * (loc[2] * v1).exp();
    let h = prior[3] * (loc[3] * v1).exp();
    let (x1, y1) = (cx - w / 2.0, cy - h / 2.0);
    let (x2, y2) = (w + x1, h + y1);
    let (fw, fh) = (width as f32, height as f32);
    [x1 * fw, y1 * fh, x2 * fw, y2 * fh]
}

/// The five landmarks `[x1, y1, …, x5, y5]` (eyes, nose, mouth corners) in pixels.
pub fn decode_landmarks(
    prior: &[f32; 4],
    offsets: &[f32; 10],
    width: u32,
    height: u32,
) -> [f32; 10] {
    let v0 = VARIANCES[0];
    let (fw, fh) = (width as f32, height as f32);
    let mut out = [0f32; 10];
    for k in 0..5 {
        out[2 * k] = (prior[0] + offsets[2 * k] * v0 * prior[2]) * fw;
        out[2 * k + 1] = (prior[1] + offsets[2 * k + 1] * v0 * prior[3]) * fh;
    }
    out
}
