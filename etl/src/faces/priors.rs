//! RetinaFace prior (anchor) boxes, biubug6's `PriorBox`: one prior per feature-map cell and minimum size.
//!
//! For each level (step 8 with min sizes 16, 32; step 16 with 64, 128; step 32 with 256, 512), for each row
//! `i < ceil(H/step)`, each column `j < ceil(W/step)` and each min size `m` of the level:
//!
//! ```text
//! [cx, cy, w, h] = [(j + 0.5)·step / W, (i + 0.5)·step / H, m / W, m / H]
//! ```
//!
//! in units of the image (no clipping: `cx` may exceed 1 on the last column). Computed in f64 and stored as f32,
//! as the PyTorch original does (`torch.Tensor(anchors)`), so the f32 values are bit-identical to it.
//!
//! ```
//! let priors = meld_etl::faces::priors::priors(240, 426);
//! assert_eq!(priors.len(), 4274); // 30·54·2 + 15·27·2 + 8·14·2
//! ```

/// Minimum box sizes of each level, in pixels.
pub const MIN_SIZES: [[u32; 2]; 3] = [[16, 32], [64, 128], [256, 512]];
/// Stride of each level's feature map, in pixels.
pub const STEPS: [u32; 3] = [8, 16, 32];
/// Variances of the centre and size offsets.
pub const VARIANCES: [f32; 2] = [0.1, 0.2];

/// The feature-map size of a level: the networks' convolutions round up, so does the prior grid.
pub fn feature_size(height: u32, width: u32, step: u32) -> (u32, u32) {
    (height.div_ceil(step), width.div_ceil(step))
}

/// Number of priors for an image of `height x width` (what the network's second output dimension must be).
pub fn prior_count(height: u32, width: u32) -> usize {
    STEPS
        .iter()
        .zip(MIN_SIZES)
        .map(|(step, sizes)| {
            let (fh, fw) = feature_size(height, width, *step);
            fh as usize * fw as usize * sizes.len()
        })
        .sum()
}

/// The priors `[cx, cy, w, h]` for an image of `height x width`, in the network's output order.
pub fn priors(height: u32, width: u32) -> Vec<[f32; 4]> {
    let (h, w) = (height as f64, width as f64);
    let mut out = Vec::with_capacity(prior_count(height, width));
    for (step, sizes) in STEPS.iter().zip(MIN_SIZES) {
        let (fh, fw) = feature_size(height, width, *step);
        let s = *step as f64;
        for i in 0..fh {
            for j in 0..fw {
                for m in sizes {
                    let m = m as f64;
                    out.push([
                        ((j as f64 + 0.5) * s / w) as f32,
                        ((i as f64 + 0.5) * s / h) as f32,
                        (m / w) as f32,
                        (m / h) as f32,
                    ]);
                }
            }
        }
    }
    out
}
