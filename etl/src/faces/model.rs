//! A RetinaFace ONNX export run through tract: loading, checking, one optimised plan per input shape, and the
//! network's three outputs as [`RawOutputs`].
//!
//! Exports of biubug6's RetinaFace (MobileNet-0.25 or ResNet-50 backbone, the same heads) take one input
//! `[batch, 3, H, W]`: the image in BGR order minus (104, 117, 123), not scaled. They give three outputs whose
//! names and order vary between exports, so they are told apart by their last dimension: `[batch, N, 4]` box
//! offsets, `[batch, N, 2]` class scores (background, face) and `[batch, N, 10]` landmark offsets (or `[N, k]`
//! when an export drops a batch of one), with N the number of priors for H x W (see [`super::priors`]). Some exports end with a softmax over the scores and some
//! do not: a probe run on a flat image at load time tells which (rows of probabilities are in [0, 1] and sum to
//! 1; logits do not), and logits are softmaxed here.
//!
//! tract optimises a model for one concrete input shape. [`RetinaFace::load`] builds and checks the plan for
//! the shape a run needs, so a bad file, unexpected outputs or a size the model rejects stop a run before any
//! clip is processed; another shape (a clip of another aspect ratio) gets its own plan when first seen.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use super::decode::{face_probability, RawOutputs};
use super::priors::prior_count;
use super::FaceError;

/// Per-channel means subtracted from the BGR pixels (biubug6's `cfg`, what the reference used).
pub const MEAN_BGR: [f32; 3] = [104.0, 117.0, 123.0];

type Plan = Arc<TypedRunnableModel>;

/// Which output is which, and whether the scores are probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Outputs {
    loc: usize,
    conf: usize,
    landmarks: usize,
    softmaxed: bool,
}

struct Inner {
    model: InferenceModel,
    plans: HashMap<(usize, u32, u32), Plan>,
}

/// A loaded RetinaFace model.
pub struct RetinaFace {
    path: PathBuf,
    sha256: String,
    outputs: Outputs,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for RetinaFace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetinaFace")
            .field("path", &self.path)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

/// Hex digest of the SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl RetinaFace {
    /// Loads the model at `path` and checks it on a `batch x 3 x height x width` input: it must load, accept that
    /// shape and give RetinaFace's three outputs for it.
    pub fn load(path: &Path, batch: usize, height: u32, width: u32) -> Result<Self, FaceError> {
        let bytes = std::fs::read(path).map_err(|e| FaceError::Read {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let sha256 = sha256_hex(&bytes);
        let model = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .map_err(|e| FaceError::Load {
                path: path.to_path_buf(),
                message: format!("{e:#}"),
            })?;
        if model.inputs.len() != 1 {
            return Err(FaceError::Load {
                path: path.to_path_buf(),
                message: format!(
                    "{} inputs; expected one image input [batch, 3, height, width]",
                    model.inputs.len()
                ),
            });
        }
        let mut inner = Inner {
            model,
            plans: HashMap::new(),
        };
        let plan = build_plan(path, &mut inner, batch, height, width)?;
        let probe = vec![0u8; height as usize * width as usize * 3];
        let images: Vec<&[u8]> = (0..batch).map(|_| &probe[..]).collect();
        let values = run_plan(path, &plan, &images, height, width)?;
        let outputs = identify_outputs(path, &values, batch, height, width)?;
        Ok(RetinaFace {
            path: path.to_path_buf(),
            sha256,
            outputs,
            inner: Mutex::new(inner),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Whether the model's class scores are probabilities (it ends with a softmax) or logits.
    pub fn outputs_softmaxed(&self) -> bool {
        self.outputs.softmaxed
    }

    /// Makes sure a plan for `batch` images of `height x width` exists (building it takes a moment).
    pub fn prepare(&self, batch: usize, height: u32, width: u32) -> Result<Plan, FaceError> {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        build_plan(&self.path, &mut inner, batch, height, width)
    }

    /// Runs the network on `images` (each packed RGB24 of `width x height`) as one batch.
    pub fn run(
        &self,
        images: &[&[u8]],
        height: u32,
        width: u32,
    ) -> Result<Vec<RawOutputs>, FaceError> {
        let plan = self.prepare(images.len(), height, width)?;
        let values = run_plan(&self.path, &plan, images, height, width)?;
        let n = prior_count(height, width);
        let o = self.outputs;
        let slice = |k: usize| -> Result<&[f32], FaceError> {
            let t = &values[k];
            t.try_as_plain_ram()
                .and_then(|v| v.as_slice::<f32>())
                .map_err(|e| self.run_error(height, width, format!("output {k}: {e}")))
        };
        let (loc, conf, landmarks) = (slice(o.loc)?, slice(o.conf)?, slice(o.landmarks)?);
        let expected = images.len() * n;
        if loc.len() != expected * 4
            || conf.len() != expected * 2
            || landmarks.len() != expected * 10
        {
            return Err(self.run_error(
                height,
                width,
                format!(
                    "outputs of {}/{}/{} values, expected {expected} priors x 4/2/10",
                    loc.len(),
                    conf.len(),
                    landmarks.len()
                ),
            ));
        }
        Ok((0..images.len())
            .map(|b| {
                let rows = b * n..(b + 1) * n;
                RawOutputs {
                    loc: rows
                        .clone()
                        .map(|i| [loc[4 * i], loc[4 * i + 1], loc[4 * i + 2], loc[4 * i + 3]])
                        .collect(),
                    scores: rows
                        .clone()
                        .map(|i| {
                            let pair = [conf[2 * i], conf[2 * i + 1]];
                            if o.softmaxed {
                                pair[1]
                            } else {
                                face_probability(pair)
                            }
                        })
                        .collect(),
                    landmarks: rows
                        .map(|i| {
                            let mut l = [0f32; 10];
                            l.copy_from_slice(&landmarks[10 * i..10 * i + 10]);
                            l
                        })
                        .collect(),
                }
            })
            .collect())
    }

    fn run_error(&self, height: u32, width: u32, message: String) -> FaceError {
        FaceError::Run {
            path: self.path.clone(),
            height,
            width,
            message,
        }
    }
}

fn build_plan(
    path: &Path,
    inner: &mut Inner,
    batch: usize,
    height: u32,
    width: u32,
) -> Result<Plan, FaceError> {
    if let Some(plan) = inner.plans.get(&(batch, height, width)) {
        return Ok(plan.clone());
    }
    let shape = [batch, 3, height as usize, width as usize];
    // tract would replace the declared input shape by ours without a word; a model exported for one fixed size
    // (e.g. 640x640) must be refused by name instead of run on another.
    let declared = inner
        .model
        .input_fact(0)
        .map(|f| f.shape.clone())
        .map_err(|e| FaceError::Load {
            path: path.to_path_buf(),
            message: format!("{e:#}"),
        })?;
    let dims: Vec<Option<i64>> = declared
        .dims()
        .map(|d| d.concretize().and_then(|d| d.to_i64().ok()))
        .collect();
    let rank_ok = declared.is_open() || dims.len() == 4;
    let fixed_ok = dims
        .iter()
        .zip(shape)
        .all(|(d, want)| d.is_none_or(|d| d == want as i64));
    if !rank_ok || !fixed_ok {
        let text: Vec<String> = dims
            .iter()
            .map(|d| d.map_or("?".into(), |d| d.to_string()))
            .collect();
        return Err(FaceError::InputSize {
            path: path.to_path_buf(),
            batch,
            height,
            width,
            message: format!("its input is declared as [{}]", text.join(", ")),
        });
    }
    let plan = inner
        .model
        .clone()
        .with_input_fact(0, f32::fact(shape).into())
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(|e| FaceError::InputSize {
            path: path.to_path_buf(),
            batch,
            height,
            width,
            message: format!("{e:#}"),
        })?;
    inner.plans.insert((batch, height, width), plan.clone());
    Ok(plan)
}

/// The input tensor: BGR, minus the means, NCHW.
fn input_tensor(images: &[&[u8]], height: u32, width: u32) -> Result<Tensor, String> {
    let (h, w) = (height as usize, width as usize);
    let plane = h * w;
    let mut data = vec![0f32; images.len() * 3 * plane];
    for (b, image) in images.iter().enumerate() {
        if image.len() != plane * 3 {
            return Err(format!(
                "image {b} has {} bytes, expected {width}x{height}x3 = {}",
                image.len(),
                plane * 3
            ));
        }
        let base = b * 3 * plane;
        for (p, rgb) in image.chunks_exact(3).enumerate() {
            data[base + p] = rgb[2] as f32 - MEAN_BGR[0];
            data[base + plane + p] = rgb[1] as f32 - MEAN_BGR[1];
            data[base + 2 * plane + p] = rgb[0] as f32 - MEAN_BGR[2];
        }
    }
    Tensor::from_shape(&[images.len(), 3, h, w], &data).map_err(|e| format!("{e:#}"))
}

fn run_plan(
    path: &Path,
    plan: &Plan,
    images: &[&[u8]],
    height: u32,
    width: u32,
) -> Result<TVec<TValue>, FaceError> {
    let error = |message: String| FaceError::Run {
        path: path.to_path_buf(),
        height,
        width,
        message,
    };
    let input = input_tensor(images, height, width).map_err(error)?;
    plan.run(tvec!(input.into_tvalue()))
        .map_err(|e| error(format!("{e:#}")))
}

/// Tells the outputs apart by their last dimension and checks their shapes against the prior count.
fn identify_outputs(
    path: &Path,
    values: &[TValue],
    batch: usize,
    height: u32,
    width: u32,
) -> Result<Outputs, FaceError> {
    let n = prior_count(height, width);
    let shapes: Vec<Vec<usize>> = values.iter().map(|v| v.shape().to_vec()).collect();
    let error = || FaceError::Outputs {
        path: path.to_path_buf(),
        found: shapes
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", "),
        batch,
        priors: n,
        height,
        width,
    };
    let find = |last: usize| -> Result<usize, FaceError> {
        // [batch, N, k], or [N, k] from an export that squeezed a batch of one.
        let matching: Vec<usize> = shapes
            .iter()
            .enumerate()
            .filter(|(_, s)| s.last() == Some(&last) && (s.len() == 3 || s.len() == 2))
            .map(|(i, _)| i)
            .collect();
        match matching[..] {
            [i] if shapes[i][..] == [batch, n, last]
                || shapes[i][..] == [n, last] && batch == 1 =>
            {
                Ok(i)
            }
            _ => Err(error()),
        }
    };
    if values.len() != 3 {
        return Err(error());
    }
    let (loc, conf, landmarks) = (find(4)?, find(2)?, find(10)?);
    for v in values {
        if v.datum_type() != f32::datum_type() {
            return Err(error());
        }
    }
    // Probabilities lie in [0, 1] and each row sums to 1 (onnxruntime's rows are within 9e-8 of it).
    let scores = values[conf]
        .try_as_plain_ram()
        .and_then(|v| v.as_slice::<f32>())
        .map_err(|_| error())?;
    let softmaxed = scores.chunks_exact(2).all(|p| {
        (0.0..=1.0).contains(&p[0])
            && (0.0..=1.0).contains(&p[1])
            && (p[0] + p[1] - 1.0).abs() < 1e-3
    });
    Ok(Outputs {
        loc,
        conf,
        landmarks,
        softmaxed,
    })
}
