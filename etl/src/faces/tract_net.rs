//! The tract engine ([`FaceNet`]): a RetinaFace ONNX graph with one optimised plan per input shape (tract
//! optimises a model for one concrete shape; a clip of another aspect ratio gets its own plan when first seen).
//! Pure Rust, always available.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use super::net::{check_declared_input, FaceEngine, FaceNet, NetOutput};
use super::FaceError;

type Plan = Arc<TypedRunnableModel>;

struct Inner {
    model: InferenceModel,
    plans: HashMap<[usize; 4], Plan>,
}

/// A RetinaFace graph loaded into tract.
pub struct TractNet {
    path: PathBuf,
    inner: Mutex<Inner>,
}

impl TractNet {
    /// Parses the ONNX `bytes` (read from `path`) and checks it has one input.
    pub fn load(path: &Path, bytes: &[u8]) -> Result<Self, FaceError> {
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
        Ok(TractNet {
            path: path.to_path_buf(),
            inner: Mutex::new(Inner {
                model,
                plans: HashMap::new(),
            }),
        })
    }

    /// Builds (once) the plan for `shape` = [batch, 3, height, width], refusing a shape the model's declared
    /// input rules out.
    fn plan(&self, shape: [usize; 4]) -> Result<Plan, FaceError> {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(plan) = inner.plans.get(&shape) {
            return Ok(plan.clone());
        }
        // tract would replace the declared input shape by ours without a word; a model exported for one fixed
        // size (e.g. 640x640) must be refused by name instead of run on another.
        let declared = inner
            .model
            .input_fact(0)
            .map(|f| f.shape.clone())
            .map_err(|e| FaceError::Load {
                path: self.path.clone(),
                message: format!("{e:#}"),
            })?;
        let dims: Vec<Option<i64>> = declared
            .dims()
            .map(|d| d.concretize().and_then(|d| d.to_i64().ok()))
            .collect();
        let declared = if declared.is_open() && dims.len() != 4 {
            None
        } else {
            Some(dims)
        };
        check_declared_input(&self.path, declared.as_deref(), shape)?;
        let error = |message: String| FaceError::InputSize {
            path: self.path.clone(),
            batch: shape[0],
            height: shape[2] as u32,
            width: shape[3] as u32,
            message,
        };
        let plan = inner
            .model
            .clone()
            .with_input_fact(0, f32::fact(shape).into())
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| error(format!("{e:#}")))?;
        inner.plans.insert(shape, plan.clone());
        Ok(plan)
    }
}

impl FaceNet for TractNet {
    fn prepare(&self, shape: [usize; 4]) -> Result<(), FaceError> {
        self.plan(shape).map(|_| ())
    }

    fn run(&self, input: &[f32], shape: [usize; 4]) -> Result<Vec<NetOutput>, FaceError> {
        let plan = self.plan(shape)?;
        let error = |message: String| FaceError::Run {
            path: self.path.clone(),
            height: shape[2] as u32,
            width: shape[3] as u32,
            message,
        };
        let tensor = Tensor::from_shape(&shape, input).map_err(|e| error(format!("{e:#}")))?;
        let values = plan
            .run(tvec!(tensor.into_tvalue()))
            .map_err(|e| error(format!("{e:#}")))?;
        Ok(values
            .iter()
            .map(|v| NetOutput {
                shape: v.shape().to_vec(),
                values: v
                    .try_as_plain_ram()
                    .ok()
                    .and_then(|t| t.as_slice::<f32>().ok())
                    .filter(|_| v.datum_type() == f32::datum_type())
                    .map(<[f32]>::to_vec),
            })
            .collect())
    }

    fn engine(&self) -> FaceEngine {
        FaceEngine::Tract
    }

    fn description(&self) -> String {
        "tract".to_string()
    }
}
