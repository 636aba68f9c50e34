//! Timings for the GPU check: forward + backward per batch of each backbone at its real size and the reference's
//! batch size (random weights), and one whole training step of Table 4's row 15 (`fusion-mha-adv`: GPT-2 +
//! ResNet-50 + wav2vec2, multi-head-attention fusion, batch 8) with AdamW. `scripts/bench_gpu_torch.py` times the
//! same in PyTorch eager on the same GPU. One warm-up run, then the mean of `iterations`; the device is
//! synchronised before every clock reading.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::Serialize;

use super::super::encoders::resnet::ResNet50;
use super::super::encoders::{gpt2, wav2vec2};
use crate::data::{Batch, MediaCounts};
use crate::error::{Error, Result};
use crate::model::{Backbones, Model};
use crate::nn::{Ctx, ParamStore};
use crate::train::losses::Loss;
use crate::train::memory::PeakMemory;
use crate::train::optim::{AdamW, AdamWConfig};

/// Input sizes: the reference's (`Full`) or small ones for a rehearsal on a CPU (`Quick`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Full,
    Quick,
}

/// One timed workload.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub name: String,
    pub precision: String,
    pub batch: String,
    pub items: usize,
    pub forward_s: f64,
    pub backward_s: f64,
    /// Forward + backward (+ the optimiser step for the whole step).
    pub total_s: f64,
    pub samples_per_s: f64,
    pub peak_memory_bytes: Option<u64>,
    /// Why it did not run (out of memory, …).
    pub error: Option<String>,
}

fn sync(device: &Device) -> Result<()> {
    Ok(device.synchronize()?)
}

/// Times `run` (which returns (forward seconds, backward-and-rest seconds)) after one warm-up.
fn timed(
    device: &Device,
    iterations: usize,
    mut run: impl FnMut() -> Result<(f64, f64)>,
) -> Result<(f64, f64, Option<u64>)> {
    run()?;
    sync(device)?;
    // the measured iterations are the region of the peak (reset after the warm-up, read after the last)
    let memory = PeakMemory::start(device);
    let (mut f, mut b) = (0.0, 0.0);
    for _ in 0..iterations {
        let (fi, bi) = run()?;
        f += fi;
        b += bi;
    }
    let n = iterations.max(1) as f64;
    Ok((f / n, b / n, memory.bytes()))
}

/// forward → sum → backward, each timed with the device synchronised.
fn fwd_bwd(device: &Device, forward: impl Fn() -> Result<Tensor>) -> Result<(f64, f64)> {
    sync(device)?;
    let start = Instant::now();
    let loss = forward()?.sum_all()?;
    sync(device)?;
    let forward_s = start.elapsed().as_secs_f64();
    let grads = loss.backward()?;
    sync(device)?;
    drop(grads);
    Ok((forward_s, start.elapsed().as_secs_f64() - forward_s))
}

fn row(
    name: &str,
    precision: &str,
    batch: String,
    items: usize,
    outcome: Result<(f64, f64, Option<u64>)>,
) -> BenchRow {
    match outcome {
        Ok((f, b, peak)) => BenchRow {
            name: name.into(),
            precision: precision.into(),
            batch,
            items,
            forward_s: f,
            backward_s: b,
            total_s: f + b,
            samples_per_s: items as f64 / (f + b).max(1e-12),
            peak_memory_bytes: peak,
            error: None,
        },
        Err(e) => BenchRow {
            name: name.into(),
            precision: precision.into(),
            batch,
            items,
            forward_s: f64::NAN,
            backward_s: f64::NAN,
            total_s: f64::NAN,
            samples_per_s: f64::NAN,
            peak_memory_bytes: None,
            error: Some(e.to_string().lines().next().unwrap_or("").to_string()),
        },
    }
}

/// GPT-2 small on B × L token ids (row 1 right-padded), output at each row's last real token.
pub fn gpt2(device: &Device, scale: Scale, precision: &str, iterations: usize) -> BenchRow {
    let (b, l) = match scale {
        Scale::Full => (16, 256),
        Scale::Quick => (2, 32),
    };
    let outcome = (|| {
        let cfg = gpt2::Config::gpt2_small();
        let vars = VarMap::new();
        let model = gpt2::Gpt2Model::new(&cfg, VarBuilder::from_varmap(&vars, DType::F32, device))?;
        let encoder = gpt2::Gpt2Encoder::new(model, false);
        let ids =
            Tensor::rand(0f32, cfg.vocab_size as f32, (b, l), device)?.to_dtype(DType::U32)?;
        let mask: Vec<u32> = (0..b * l)
            .map(|i| u32::from(i < l || i % l < l * 3 / 4))
            .collect();
        let mask = Tensor::from_vec(mask, (b, l), device)?;
        timed(device, iterations, || {
            fwd_bwd(device, || encoder.forward(&ids, &mask, true))
        })
    })();
    row(
        "gpt2-small",
        precision,
        format!("{b} x {l} tokens"),
        b,
        outcome,
    )
}

/// wav2vec 2.0 base on B × N int16-scale samples, mean ⊕ max pooled.
pub fn wav2vec2(device: &Device, scale: Scale, precision: &str, iterations: usize) -> BenchRow {
    let (b, n) = match scale {
        Scale::Full => (16, 150_000),
        Scale::Quick => (2, 8_000),
    };
    let outcome = (|| {
        let cfg = wav2vec2::Config::base();
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, device);
        let model = wav2vec2::Wav2Vec2Model::new(&cfg, vb.clone())?;
        let encoder = wav2vec2::Wav2Vec2Encoder::new(model, None, false, vb)?;
        let x = (Tensor::randn(0f32, 1.0, (b, n), device)? * 3000.0)?;
        timed(device, iterations, || {
            fwd_bwd(device, || encoder.forward(&x, true))
        })
    })();
    row(
        "wav2vec2-base",
        precision,
        format!("{b} x {n} samples"),
        b,
        outcome,
    )
}

/// ResNet-50 on B × 3 × 256 × 721 images in training mode (batch statistics).
pub fn resnet50(
    device: &Device,
    scale: Scale,
    precision: &str,
    iterations: usize,
    batch: usize,
) -> BenchRow {
    let (b, h, w) = match scale {
        Scale::Full => (batch, 256, 721),
        Scale::Quick => (2, 64, 180),
    };
    let outcome = (|| {
        let mut store = ParamStore::new(device, 0);
        let model = ResNet50::new(&mut store, "visual", false)?;
        let x = Tensor::randn(0f32, 1.0, (b, 3, h, w), device)?;
        timed(device, iterations, || {
            fwd_bwd(device, || model.forward(&x, true))
        })
    })();
    row(
        "resnet50",
        precision,
        format!("{b} x 3 x {h} x {w}"),
        b,
        outcome,
    )
}

/// Random GPT-2 small and wav2vec2-base checkpoints (config.json + model.safetensors) under `dir`, so that the
/// whole classifier is built through its real loading path.
fn random_checkpoints(dir: &Path, device: &Device, scale: Scale) -> Result<Backbones> {
    let save =
        |name: &str, config: serde_json::Value, vars: &VarMap| -> Result<std::path::PathBuf> {
            let folder = dir.join(name);
            std::fs::create_dir_all(&folder).map_err(|e| Error::io(&folder, e))?;
            let path = folder.join("config.json");
            std::fs::write(&path, config.to_string()).map_err(|e| Error::io(&path, e))?;
            let mut tensors: std::collections::HashMap<String, Tensor> = vars
                .data()
                .lock()
                .map_err(|_| Error::Other("variables poisoned".into()))?
                .iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
                .collect();
            // our GPT-2 holds the [PAD] row the loader appends to a checkpoint's vocabulary: save without it
            if let (Some(wte), Some(vocab)) =
                (tensors.get("wte.weight"), config["vocab_size"].as_u64())
            {
                let cut = wte.narrow(0, 0, vocab as usize)?;
                tensors.insert("wte.weight".into(), cut);
            }
            candle_core::safetensors::save(&tensors, folder.join("model.safetensors"))?;
            Ok(folder)
        };
    let mut gpt2_cfg = gpt2::Config::gpt2_small();
    let mut w2v_cfg = wav2vec2::Config::base();
    if scale == Scale::Quick {
        gpt2_cfg.n_layer = 2;
        w2v_cfg.num_hidden_layers = 2;
    }
    let vars = VarMap::new();
    gpt2::Gpt2Model::new(
        &gpt2_cfg,
        VarBuilder::from_varmap(&vars, DType::F32, device),
    )?;
    let gpt2_dir = save(
        "gpt2",
        serde_json::to_value(&gpt2_cfg).map_err(|e| Error::Other(e.to_string()))?,
        &vars,
    )?;
    let vars = VarMap::new();
    wav2vec2::Wav2Vec2Model::new(&w2v_cfg, VarBuilder::from_varmap(&vars, DType::F32, device))?;
    let w2v_dir = save(
        "wav2vec2",
        serde_json::to_value(&w2v_cfg).map_err(|e| Error::Other(e.to_string()))?,
        &vars,
    )?;
    Ok(Backbones {
        gpt2: Some(gpt2_dir),
        wav2vec2: Some(w2v_dir),
        resnet50: None,
    })
}

/// One training step of row 15 (`fusion-mha-adv`) at batch 8: forward, loss, backward and the AdamW step.
pub fn full_step(device: &Device, scale: Scale, precision: &str, iterations: usize) -> BenchRow {
    let b = 8;
    let outcome = (|| {
        let text = crate::table4::configs::yaml("fusion-mha-adv.yml")
            .ok_or_else(|| Error::Other("fusion-mha-adv.yml is not in this build".into()))?;
        let mut config =
            crate::config::Config::parse(Path::new("configs/fusion-mha-adv.yml"), text)?;
        config.classifier_warmup_steps = 0;
        if scale == Scale::Quick {
            config.visual_short_side = Some(64);
            config.audio_in_features = Some(8_000);
        }
        let tmp = tempfile_dir()?;
        let backbones = random_checkpoints(&tmp, device, scale)?;
        let model = Model::build_with(&config, None, &backbones, device, 0)?;
        let _ = std::fs::remove_dir_all(&tmp);
        let loss = Loss::new(&config);
        let mut optimizer = AdamW::new(
            model.store.trainable(),
            AdamWConfig::for_experiment(&config, 1000),
        )?;
        let (h, w) = {
            let s = config.short_side();
            (s, s * 1200 / 426)
        };
        let samples = config.audio_samples();
        let batch = Batch {
            indices: (0..b).collect(),
            // prompts of the reference's mean length (~130 tokens) and longer
            text_ids: (0..b)
                .map(|i| {
                    (0..(96 + 32 * i) as u32)
                        .map(|t| (t * 7919) % 50257)
                        .collect()
                })
                .collect(),
            visual: Some(Tensor::randn(0f32, 1.0, (b, 3, h, w), &Device::Cpu)?),
            audio: Some((Tensor::randn(0f32, 1.0, (b, samples), &Device::Cpu)? * 3000.0)?),
            labels: (0..b).map(|i| i % 7).collect(),
            missing: MediaCounts::default(),
        };
        let mut ctx = Ctx::train(0);
        timed(device, iterations, || {
            sync(device)?;
            let start = Instant::now();
            let out = model.forward(&batch, &mut ctx)?;
            let y = batch.one_hot(model.classes, device)?;
            let value = loss.training(&out.probs, &out.logits, &y, &out.hidden, &batch.labels)?;
            sync(device)?;
            let forward_s = start.elapsed().as_secs_f64();
            let grads = value.backward()?;
            optimizer.step(&grads)?;
            value.to_scalar::<f32>()?;
            sync(device)?;
            Ok((forward_s, start.elapsed().as_secs_f64() - forward_s))
        })
    })();
    row(
        "step fusion-mha-adv (row 15)",
        precision,
        format!("{b} items"),
        b,
        outcome,
    )
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("erc-selfcheck-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    Ok(dir)
}
