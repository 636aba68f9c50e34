//! The model's named tensors: trainable parameters (candle `Var`s) and buffers (BatchNorm running statistics),
//! initialised from one seeded generator so that the same seed gives the same model on every run.
//!
//! candle's own initialisers draw from an unseedable thread generator on CPU, so the store draws every initial
//! value itself (ChaCha8, seeded) and hands candle finished tensors. Names follow PyTorch's module paths
//! (`visual.layer1.0.conv1.weight`), which is what checkpoints are saved under and what later issues load
//! pretrained weights by.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

pub struct ParamStore {
    vars: BTreeMap<String, Var>,
    buffers: BTreeSet<String>,
    rng: ChaCha8Rng,
    device: Device,
}

impl ParamStore {
    pub fn new(device: &Device, seed: u64) -> Self {
        ParamStore {
            vars: BTreeMap::new(),
            buffers: BTreeSet::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            device: device.clone(),
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    fn insert(&mut self, name: &str, values: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
        if self.vars.contains_key(name) {
            return Err(Error::Other(format!("parameter `{name}` defined twice")));
        }
        let tensor = Tensor::from_vec(values, shape, &self.device)?;
        let var = Var::from_tensor(&tensor)?;
        let t = var.as_tensor().clone();
        self.vars.insert(name.to_string(), var);
        Ok(t)
    }

    /// U(-bound, bound): PyTorch's default for Linear weights and biases (bound = 1/sqrt(fan_in)).
    pub fn uniform(&mut self, name: &str, shape: &[usize], bound: f64) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let values = (0..n)
            .map(|_| self.rng.gen_range(-bound..bound) as f32)
            .collect();
        self.insert(name, values, shape)
    }

    /// N(0, std²) by the Box-Muller transform (kaiming-normal convolution weights).
    pub fn normal(&mut self, name: &str, shape: &[usize], std: f64) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let mut values = Vec::with_capacity(n);
        while values.len() < n {
            let u1: f64 = self.rng.gen_range(f64::EPSILON..1.0);
            let u2: f64 = self.rng.gen();
            let r = (-2.0 * u1.ln()).sqrt();
            let theta = 2.0 * std::f64::consts::PI * u2;
            values.push((r * theta.cos() * std) as f32);
            if values.len() < n {
                values.push((r * theta.sin() * std) as f32);
            }
        }
        self.insert(name, values, shape)
    }

    pub fn constant(&mut self, name: &str, shape: &[usize], value: f32) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        self.insert(name, vec![value; n], shape)
    }

    /// A parameter with given initial values (GloVe vectors).
    pub fn values(&mut self, name: &str, shape: &[usize], values: Vec<f32>) -> Result<Tensor> {
        self.insert(name, values, shape)
    }

    /// A non-trainable tensor that is saved with the weights (BatchNorm running mean/variance).
    pub fn buffer(&mut self, name: &str, shape: &[usize], value: f32) -> Result<Tensor> {
        let t = self.constant(name, shape, value)?;
        self.buffers.insert(name.to_string());
        Ok(t)
    }

    /// Adds a pretrained backbone's variables (built from a checkpoint through a `VarBuilder`) under
    /// `prefix.`: the store shares them with the backbone, so the optimiser's in-place updates reach the model.
    pub fn import(&mut self, prefix: &str, vars: &candle_nn::VarMap) -> Result<()> {
        let data = vars
            .data()
            .lock()
            .map_err(|_| Error::Other("variable map poisoned".into()))?;
        for (name, var) in data.iter() {
            let full = format!("{prefix}.{name}");
            if self.vars.contains_key(&full) {
                return Err(Error::Other(format!("parameter `{full}` defined twice")));
            }
            self.vars.insert(full, var.clone());
        }
        Ok(())
    }

    /// The tensor named `name` (a parameter or a buffer).
    pub fn get(&self, name: &str) -> Option<Tensor> {
        self.vars.get(name).map(|v| v.as_tensor().clone())
    }

    /// Overwrites the value of the existing tensor `name` in place (pretrained weights); the shape must match.
    /// `source` names the file the value came from, for messages.
    pub fn assign(&self, name: &str, value: &Tensor, source: &Path) -> Result<()> {
        let var = self
            .vars
            .get(name)
            .ok_or_else(|| Error::Other(format!("no parameter `{name}` to load into")))?;
        if value.dims() != var.as_tensor().dims() {
            return Err(Error::data(
                source,
                format!(
                    "tensor for `{name}` has shape {:?}, the model expects {:?}",
                    value.dims(),
                    var.as_tensor().dims()
                ),
            ));
        }
        var.set(&value.to_dtype(DType::F32)?.to_device(&self.device)?)?;
        Ok(())
    }

    /// Every parameter and buffer, by name (detached).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_detached_tensor()))
            .collect()
    }

    /// Trainable parameters, by name.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        self.vars
            .iter()
            .filter(|(name, _)| !self.buffers.contains(*name))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect()
    }

    pub fn parameter_count(&self) -> usize {
        self.trainable()
            .iter()
            .map(|(_, v)| v.as_tensor().elem_count())
            .sum()
    }

    /// Parameter count per top-level module (`text`, `visual`, `audio`, `fusion`, `head`).
    pub fn parameter_count_by_module(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for (name, var) in self.trainable() {
            let module = name.split('.').next().unwrap_or("").to_string();
            *counts.entry(module).or_insert(0) += var.as_tensor().elem_count();
        }
        counts
    }

    /// Saves every parameter and buffer as safetensors.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tensors: std::collections::HashMap<String, Tensor> = self
            .vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_detached_tensor()))
            .collect();
        // written aside and renamed: a run killed while saving keeps the previous best weights whole
        let tmp = path.with_extension("safetensors.tmp");
        candle_core::safetensors::save(&tensors, &tmp)
            .map_err(|e| Error::Other(format!("{}: cannot save weights: {e}", tmp.display())))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    }

    /// Loads values saved by [`ParamStore::save`] into the existing tensors; every name must match.
    pub fn load(&self, path: &Path) -> Result<()> {
        let loaded = candle_core::safetensors::load(path, &self.device)
            .map_err(|e| Error::Other(format!("{}: cannot read weights: {e}", path.display())))?;
        for (name, var) in &self.vars {
            let value = loaded.get(name).ok_or_else(|| {
                Error::data(path, format!("tensor `{name}` missing from the checkpoint"))
            })?;
            if value.dims() != var.as_tensor().dims() {
                return Err(Error::data(
                    path,
                    format!(
                        "tensor `{name}` has shape {:?}, the model expects {:?}",
                        value.dims(),
                        var.as_tensor().dims()
                    ),
                ));
            }
            var.set(&value.to_dtype(DType::F32)?)?;
        }
        if let Some(extra) = loaded.keys().find(|k| !self.vars.contains_key(*k)) {
            return Err(Error::data(
                path,
                format!("tensor `{extra}` in the checkpoint is not part of this model"),
            ));
        }
        Ok(())
    }
}

/// Whether AdamW decays a parameter: not biases, not `nn.LayerNorm` weights (HF Trainer's rule, docs/reference.md §5.1).
/// BatchNorm and GroupNorm weights and embeddings are decayed.
///
/// LayerNorms are recognised by name: ours and wav2vec2's are called `layer_norm` / `final_layer_norm` —
/// except wav2vec2's first conv layer, whose `conv_layers.0.layer_norm` is a GroupNorm — GPT-2's are
/// `ln_1`, `ln_2` and `ln_f`, and RoBERTa's `LayerNorm`.
pub fn decays(name: &str) -> bool {
    let layer_norm = (name.contains("layer_norm") && !name.contains("conv_layers."))
        || name
            .split('.')
            .any(|part| matches!(part, "ln_1" | "ln_2" | "ln_f" | "LayerNorm"));
    !(name.contains("bias") || layer_norm)
}

#[cfg(test)]
mod tests {
    use super::decays;

    #[test]
    fn decay_groups_follow_module_types() {
        for kept in [
            "head.layers.0.weight",
            "visual.bn1.weight",
            "text.wte.weight",
            "text.embeddings.word_embeddings.weight",
            "text.encoder.layer.0.attention.self.query.weight",
            "audio.feature_extractor.conv_layers.0.layer_norm.weight",
            "audio.feature_extractor.conv_layers.3.conv.weight",
        ] {
            assert!(decays(kept), "{kept} must be decayed");
        }
        for skipped in [
            "head.layers.0.bias",
            "fusion.layer_norm.weight",
            "text.h.3.ln_1.weight",
            "text.ln_f.weight",
            "audio.encoder.layers.1.final_layer_norm.weight",
            "audio.feature_projection.layer_norm.weight",
            "audio.encoder.layer_norm.weight",
            "text.embeddings.LayerNorm.weight",
            "text.encoder.layer.3.output.LayerNorm.weight",
            "fusion.blocks.0.layer_norm_tokens.weight",
        ] {
            assert!(!decays(skipped), "{skipped} must not be decayed");
        }
    }
}
