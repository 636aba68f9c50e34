//! What the face model and its engines share: the [`FaceNet`] trait an engine implements ([`super::tract_net`],
//! [`super::ort_net`]), the [`NetOutput`]s it gives back, and the engine-independent checks on both sides of a
//! run (the declared input shape, which output is which). [`super::model`] picks the engine and depends on the
//! nets; the nets depend only on this module, never on the model.
//!
//! Exports of biubug6's RetinaFace give three outputs whose names and order vary between exports, so
//! [`identify_outputs`] tells them apart by their last dimension: `[batch, N, 4]` box offsets, `[batch, N, 2]`
//! class scores (background, face) and `[batch, N, 10]` landmark offsets (or `[N, k]` when an export drops a batch
//! of one), with N the number of priors for H x W (see [`super::priors`]). Some exports end with a softmax over
//! the scores and some do not: the probe run the model makes at load time tells which (rows of probabilities are
//! in [0, 1] and sum to 1; logits do not).

use std::path::Path;

use super::priors::prior_count;
use super::FaceError;

/// Which engine runs the network (`--face-engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FaceEngine {
    /// onnxruntime when its library is found (`ORT_DYLIB_PATH`, or `onnxruntime/libonnxruntime.so*` next to the
    /// model, or `models/onnxruntime/`), tract otherwise.
    #[default]
    Auto,
    /// tract (pure Rust, always available).
    Tract,
    /// onnxruntime; an error when its library is missing.
    Onnxruntime,
}

impl FaceEngine {
    pub fn name(self) -> &'static str {
        match self {
            FaceEngine::Auto => "auto",
            FaceEngine::Tract => "tract",
            FaceEngine::Onnxruntime => "onnxruntime",
        }
    }
}

/// One output of the network as an engine gives it: its shape and, when it is float32, its values.
#[derive(Debug, Clone)]
pub struct NetOutput {
    pub shape: Vec<usize>,
    pub values: Option<Vec<f32>>,
}

/// A RetinaFace ONNX graph loaded into one engine. Shared by the extract workers (`&self`: an engine keeps what
/// it needs per shape or per worker behind its own locks).
pub trait FaceNet: Send + Sync {
    /// Makes sure the net can run an input of `shape` = [batch, 3, height, width]: refuses a shape the model's
    /// declared input rules out (see [`check_declared_input`]); tract builds its plan for the shape here.
    fn prepare(&self, shape: [usize; 4]) -> Result<(), FaceError>;

    /// Runs the network on `input` (NCHW of `shape`): its outputs, in the graph's order.
    fn run(&self, input: &[f32], shape: [usize; 4]) -> Result<Vec<NetOutput>, FaceError>;

    /// The engine running the net: [`FaceEngine::Tract`] or [`FaceEngine::Onnxruntime`].
    fn engine(&self) -> FaceEngine;

    /// The engine with its version and library, for logs and the manifest.
    fn description(&self) -> String;

    /// The library file the engine was loaded from, when it has one.
    fn library(&self) -> Option<&Path> {
        None
    }
}

/// Refuses `shape` when the model declares a fixed input that differs (`declared`: None when even the rank is
/// open; a None dim is dynamic).
pub fn check_declared_input(
    path: &Path,
    declared: Option<&[Option<i64>]>,
    shape: [usize; 4],
) -> Result<(), FaceError> {
    let Some(dims) = declared else {
        return Ok(());
    };
    let fits = dims.len() == 4
        && dims
            .iter()
            .zip(shape)
            .all(|(d, want)| d.is_none_or(|d| d == want as i64));
    if fits {
        return Ok(());
    }
    let text: Vec<String> = dims
        .iter()
        .map(|d| d.map_or("?".into(), |d| d.to_string()))
        .collect();
    Err(FaceError::InputSize {
        path: path.to_path_buf(),
        batch: shape[0],
        height: shape[2] as u32,
        width: shape[3] as u32,
        message: format!("its input is declared as [{}]", text.join(", ")),
    })
}

/// Which output is which, and whether the scores are probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLayout {
    pub loc: usize,
    pub conf: usize,
    pub landmarks: usize,
    pub softmaxed: bool,
}

/// Tells the outputs of a `batch x 3 x height x width` run apart by their last dimension and checks their shapes
/// against the prior count.
pub fn identify_outputs(
    path: &Path,
    values: &[NetOutput],
    batch: usize,
    height: u32,
    width: u32,
) -> Result<OutputLayout, FaceError> {
    let n = prior_count(height, width);
    let shapes: Vec<Vec<usize>> = values.iter().map(|v| v.shape.clone()).collect();
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
    if values.iter().any(|v| v.values.is_none()) {
        return Err(error());
    }
    // Probabilities lie in [0, 1] and each row sums to 1 (onnxruntime's rows are within 9e-8 of it).
    let scores = values[conf].values.as_deref().ok_or_else(error)?;
    let softmaxed = scores.chunks_exact(2).all(|p| {
        (0.0..=1.0).contains(&p[0])
            && (0.0..=1.0).contains(&p[1])
            && (p[0] + p[1] - 1.0).abs() < 1e-3
    });
    Ok(OutputLayout {
        loc,
        conf,
        landmarks,
        softmaxed,
    })
}
