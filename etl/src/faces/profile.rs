//! The two detection profiles: what is kept of the decoded priors, and which pixels of the image a kept box
//! leaves in the face-only image.
//!
//! * [`FaceProfile::Default`], what a user expects: run on each frame (tile) of the mosaic separately, keep scores
//!   ≥ 0.5, NMS at IoU 0.4 with continuous areas, clip boxes to the frame. A pixel is kept when
//!   `floor(x1) ≤ x < ceil(x2)` and `floor(y1) ≤ y < ceil(y2)` for some box.
//! * [`FaceProfile::Hlm12erc`], the reference's face-only preprocessing exactly (docs/reference.md quirk Q15): the whole mosaic as
//!   one image, scores > 0.02, the 10 best before NMS, NMS at IoU 0.4 with the `+1` areas, boxes truncated toward
//!   zero to integers, boxes at least one fifth of the image tall dropped (after NMS), and the mask built with
//!   numpy's slice semantics (ends clamped, a negative start counts from the end).

use super::decode::{decode_box, decode_landmarks, RawOutputs};
use super::nms::{nms, Areas};

/// Which post-processing (and which network input: tiles or the whole mosaic) to use.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum FaceProfile {
    /// Each frame separately, score ≥ 0.5, NMS IoU 0.4.
    Default,
    /// The reference: the whole mosaic, score > 0.02, top 10, NMS IoU 0.4 (+1 areas), tall boxes dropped.
    Hlm12erc,
}

const DEFAULT_SCORE_MIN: f32 = 0.5;
const NMS_IOU: f32 = 0.4;
const HLM12ERC_SCORE_GT: f32 = 0.02;
const HLM12ERC_TOP_K: usize = 10;
const HLM12ERC_KEEP_TOP_K: usize = 750;
/// Boxes at least `height / TALL_FRACTION` tall are dropped by the reference (one tile of a 5-frame mosaic).
const HLM12ERC_TALL_FRACTION: f64 = 5.0;

impl FaceProfile {
    pub fn name(self) -> &'static str {
        match self {
            FaceProfile::Default => "default",
            FaceProfile::Hlm12erc => "hlm12erc",
        }
    }

    /// Does the network see each tile separately (true) or the whole mosaic (false)?
    pub fn per_tile(self) -> bool {
        self == FaceProfile::Default
    }
}

/// One kept detection in the coordinates of the image the network saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// Index of the prior it was decoded from.
    pub prior: usize,
    pub score: f32,
    /// `[x1, y1, x2, y2]`: clipped to the image (default profile) or as decoded (hlm12erc).
    pub bbox: [f32; 4],
    /// The decoded box before clipping.
    pub bbox_unclipped: [f32; 4],
    pub landmarks: [f32; 10],
    /// hlm12erc: the box truncated toward zero, what the mask is built from.
    pub bbox_int: Option<[i64; 4]>,
}

/// Candidates (index, score) whose score passes `keep`, best first (stable for equal scores).
fn candidates(raw: &RawOutputs, keep: impl Fn(f32) -> bool) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..raw.len()).filter(|&i| keep(raw.scores[i])).collect();
    idx.sort_by(|&a, &b| raw.scores[b].total_cmp(&raw.scores[a]));
    idx
}

fn decoded(raw: &RawOutputs, priors: &[[f32; 4]], idx: &[usize], w: u32, h: u32) -> Vec<[f32; 4]> {
    idx.iter()
        .map(|&i| decode_box(&priors[i], &raw.loc[i], w, h))
        .collect()
}

/// The default profile on one image of `width x height` (a mosaic tile).
pub fn detect_default(
    raw: &RawOutputs,
    priors: &[[f32; 4]],
    width: u32,
    height: u32,
) -> Vec<Detection> {
    let cand = candidates(raw, |s| s >= DEFAULT_SCORE_MIN);
    let boxes = decoded(raw, priors, &cand, width, height);
    let scores: Vec<f32> = cand.iter().map(|&i| raw.scores[i]).collect();
    let (fw, fh) = (width as f32, height as f32);
    nms(&boxes, &scores, NMS_IOU, Areas::Continuous)
        .into_iter()
        .filter_map(|k| {
            let i = cand[k];
            let b = boxes[k];
            let clipped = [
                b[0].clamp(0.0, fw),
                b[1].clamp(0.0, fh),
                b[2].clamp(0.0, fw),
                b[3].clamp(0.0, fh),
            ];
            (clipped[2] > clipped[0] && clipped[3] > clipped[1]).then(|| Detection {
                prior: i,
                score: raw.scores[i],
                bbox: clipped,
                bbox_unclipped: b,
                landmarks: decode_landmarks(&priors[i], &raw.landmarks[i], width, height),
                bbox_int: None,
            })
        })
        .collect()
}

/// The reference's post-processing on one image of `width x height` (the whole mosaic). Returns the boxes kept
/// by NMS with whether each is dropped as too tall; the final detections are those not dropped.
pub fn detect_hlm12erc_after_nms(
    raw: &RawOutputs,
    priors: &[[f32; 4]],
    width: u32,
    height: u32,
) -> Vec<(Detection, bool)> {
    let mut top = candidates(raw, |s| s > HLM12ERC_SCORE_GT);
    top.truncate(HLM12ERC_TOP_K);
    let boxes = decoded(raw, priors, &top, width, height);
    let scores: Vec<f32> = top.iter().map(|&i| raw.scores[i]).collect();
    let mut keep = nms(&boxes, &scores, NMS_IOU, Areas::PlusOne);
    keep.truncate(HLM12ERC_KEEP_TOP_K);
    keep.into_iter()
        .map(|k| {
            let i = top[k];
            let b = boxes[k];
            // Python's int(): truncation toward zero.
            let int = b.map(|v| v.trunc() as i64);
            let tall = (int[3] - int[1]) as f64 >= height as f64 / HLM12ERC_TALL_FRACTION;
            let det = Detection {
                prior: i,
                score: raw.scores[i],
                bbox: b,
                bbox_unclipped: b,
                landmarks: decode_landmarks(&priors[i], &raw.landmarks[i], width, height),
                bbox_int: Some(int),
            };
            (det, tall)
        })
        .collect()
}

/// The reference's final detections (tall boxes dropped).
pub fn detect_hlm12erc(
    raw: &RawOutputs,
    priors: &[[f32; 4]],
    width: u32,
    height: u32,
) -> Vec<Detection> {
    detect_hlm12erc_after_nms(raw, priors, width, height)
        .into_iter()
        .filter_map(|(d, tall)| (!tall).then_some(d))
        .collect()
}

/// numpy's `a[start:end]` on an axis of length `n`: negative ends count from the end, then both are clamped.
fn numpy_slice(start: i64, end: i64, n: i64) -> std::ops::Range<usize> {
    let norm = |v: i64| if v < 0 { (v + n).max(0) } else { v.min(n) };
    let (s, e) = (norm(start), norm(end));
    if s < e {
        s as usize..e as usize
    } else {
        0..0
    }
}

/// A keep-mask of `width x height` (row-major, true = keep) for boxes `[x1, y1, x2, y2]` in image coordinates:
/// the default profile's clipped float boxes (floor/ceil), or the hlm12erc boxes, truncated to integers and
/// sliced the numpy way.
pub fn mask(profile: FaceProfile, boxes: &[[f32; 4]], width: u32, height: u32) -> Vec<bool> {
    let (w, h) = (width as usize, height as usize);
    let mut mask = vec![false; w * h];
    for b in boxes {
        let (xs, ys) = match profile {
            FaceProfile::Default => {
                let lo = |v: f32, n: usize| (v.floor().max(0.0) as usize).min(n);
                let hi = |v: f32, n: usize| (v.ceil().max(0.0) as usize).min(n);
                (lo(b[0], w)..hi(b[2], w), lo(b[1], h)..hi(b[3], h))
            }
            FaceProfile::Hlm12erc => {
                let t = b.map(|v| v.trunc() as i64);
                (
                    numpy_slice(t[0], t[2], w as i64),
                    numpy_slice(t[1], t[3], h as i64),
                )
            }
        };
        if xs.start >= xs.end {
            continue;
        }
        for y in ys {
            mask[y * w + xs.start..y * w + xs.end].fill(true);
        }
    }
    mask
}
