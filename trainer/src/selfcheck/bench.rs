//! Timings for the GPU check: forward + backward per batch of each backbone at its real size (random weights),
//! and one whole training step of Table 4's row 15 (`fusion-mha-adv`: GPT-2 + ResNet-50 + wav2vec2,
//! multi-head-attention fusion, batch 8) with AdamW. `scripts/bench_gpu_torch.py` times the same in PyTorch eager
//! on the same GPU.
//!
//! The same work on both sides: the workloads are one [`Plan`] — shapes, token lengths, the backbones' whole
//! configs (dropouts, LayerDrop, time masking), the head and the optimiser — which `erc-train selfcheck --plan`
//! writes and the PyTorch script reads. Inputs are made on the device before the clock starts (only row 15's
//! token ids, 10 KB, are uploaded inside its step, as training does); one warm-up, then the mean of `iterations`,
//! the device synchronised before every clock reading; the peak memory is the device's high-water mark over the
//! timed iterations (reset after the warm-up), as PyTorch's `max_memory_allocated` after
//! `reset_peak_memory_stats`.

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

/// The timed workloads, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Gpt2,
    Wav2vec2,
    Resnet50,
    Step,
}

impl Workload {
    pub const ALL: [Workload; 4] = [
        Workload::Gpt2,
        Workload::Wav2vec2,
        Workload::Resnet50,
        Workload::Step,
    ];

    /// The row name both sides use.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Gpt2 => "gpt2-small",
            Workload::Wav2vec2 => "wav2vec2-base",
            Workload::Resnet50 => "resnet50",
            Workload::Step => "step fusion-mha-adv (row 15)",
        }
    }
}

impl std::str::FromStr for Workload {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "gpt2" => Ok(Workload::Gpt2),
            "wav2vec2" => Ok(Workload::Wav2vec2),
            "resnet50" => Ok(Workload::Resnet50),
            "step" => Ok(Workload::Step),
            other => Err(format!(
                "workload `{other}`: expected gpt2, wav2vec2, resnet50 or step"
            )),
        }
    }
}

/// GPT-2 small on `batch` rows of `tokens` ids, row i holding `lengths[i]` real tokens (the rest padding),
/// output at each row's last real token.
#[derive(Debug, Clone, Serialize)]
pub struct Gpt2Work {
    pub batch: usize,
    pub tokens: usize,
    pub lengths: Vec<usize>,
    pub config: gpt2::Config,
}

/// wav2vec 2.0 base on `batch` × `samples` int16-scale samples, mean ⊕ max pooled, training mode.
#[derive(Debug, Clone, Serialize)]
pub struct Wav2vec2Work {
    pub batch: usize,
    pub samples: usize,
    pub config: wav2vec2::Config,
}

/// ResNet-50 (fc removed) on `batch` × 3 × `height` × `width` images, training mode (batch statistics).
#[derive(Debug, Clone, Serialize)]
pub struct ResnetWork {
    pub batch: usize,
    pub height: usize,
    pub width: usize,
}

/// One training step of row 15: the three backbones, l2 + projection of each to its share of
/// `fusion_out_features`, multi-head attention across the batch with `attention_heads` heads, LayerNorm(x + attn),
/// the head's layers, softmax, Dice loss, AdamW with global-norm clipping.
#[derive(Debug, Clone, Serialize)]
pub struct StepWork {
    pub batch: usize,
    pub tokens: usize,
    pub lengths: Vec<usize>,
    pub height: usize,
    pub width: usize,
    pub samples: usize,
    pub gpt2: gpt2::Config,
    pub wav2vec2: wav2vec2::Config,
    pub fusion_out_features: usize,
    pub attention_heads: usize,
    /// (out_features, dropout) of each feed-forward layer.
    pub head: Vec<(usize, f64)>,
    pub classes: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
}

/// Everything both benchmarks run: see the module doc.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub iterations: usize,
    pub gpt2: Gpt2Work,
    pub wav2vec2: Wav2vec2Work,
    pub resnet50: ResnetWork,
    pub step: StepWork,
}

/// Token lengths of a padded batch: row 0 full, the others three quarters (GPT-2 benchmark), or the reference's
/// prompt lengths of about 130 tokens and longer (row 15: 96, 128, …).
fn gpt2_lengths(batch: usize, tokens: usize) -> Vec<usize> {
    (0..batch)
        .map(|i| if i == 0 { tokens } else { tokens * 3 / 4 })
        .collect()
}

impl Plan {
    /// The workloads at `scale`, ResNet-50 at `resnet_batch` (the reference trained at 64).
    pub fn new(scale: Scale, iterations: usize, resnet_batch: usize) -> Result<Plan> {
        let quick = scale == Scale::Quick;
        let (gb, gl) = if quick { (2, 32) } else { (16, 256) };
        let (wb, wn) = if quick { (2, 8_000) } else { (16, 150_000) };
        let (rb, rh, rw) = if quick {
            (2, 64, 180)
        } else {
            (resnet_batch, 256, 721)
        };
        let text = crate::table4::configs::yaml("fusion-mha-adv.yml")
            .ok_or_else(|| Error::Other("fusion-mha-adv.yml is not in this build".into()))?;
        let config = step_config(text, scale)?;
        let mut step_gpt2 = gpt2::Config::gpt2_small();
        let mut step_w2v = wav2vec2::Config::base();
        if quick {
            step_gpt2.n_layer = 2;
            step_w2v.num_hidden_layers = 2;
        }
        let step_batch = config.batch_size().max(1);
        let step_lengths: Vec<usize> = (0..step_batch).map(|i| 96 + 32 * i).collect();
        let short = config.short_side();
        let fusion = config.fusion_out_features.unwrap_or(0).max(1) as usize;
        Ok(Plan {
            iterations,
            gpt2: Gpt2Work {
                batch: gb,
                tokens: gl,
                lengths: gpt2_lengths(gb, gl),
                config: gpt2::Config::gpt2_small(),
            },
            wav2vec2: Wav2vec2Work {
                batch: wb,
                samples: wn,
                config: wav2vec2::Config::base(),
            },
            resnet50: ResnetWork {
                batch: rb,
                height: rh,
                width: rw,
            },
            step: StepWork {
                batch: step_batch,
                tokens: step_lengths.iter().copied().max().unwrap_or(1),
                lengths: step_lengths,
                height: short,
                width: short * 1200 / 426,
                samples: config.audio_samples(),
                gpt2: step_gpt2,
                wav2vec2: step_w2v,
                fusion_out_features: fusion,
                attention_heads: crate::nn::attention::heads_for_degree(
                    fusion,
                    config.fusion_attention_heads_degree.unwrap_or(1).max(1) as usize,
                ),
                head: config
                    .feedforward_layers
                    .as_deref()
                    .unwrap_or(&[])
                    .iter()
                    .map(|l| {
                        (
                            l.out_features.unwrap_or(0).max(0) as usize,
                            l.dropout.unwrap_or(0.0),
                        )
                    })
                    .collect(),
                classes: config.classifier_classes.len(),
                learning_rate: config.classifier_learning_rate,
                weight_decay: config.classifier_weight_decay,
                max_grad_norm: AdamWConfig::for_experiment(&config, 1).max_grad_norm,
            },
        })
    }
}

/// Row 15's config as the step builds it: no warm-up (the learning rate of step 1 would be 0), small inputs in a
/// rehearsal.
fn step_config(text: &str, scale: Scale) -> Result<crate::config::Config> {
    let mut config = crate::config::Config::parse(Path::new("configs/fusion-mha-adv.yml"), text)?;
    config.classifier_warmup_steps = 0;
    if scale == Scale::Quick {
        config.visual_short_side = Some(64);
        config.audio_in_features = Some(8_000);
    }
    Ok(config)
}

/// One timed workload.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub name: String,
    pub precision: String,
    pub batch: String,
    pub items: usize,
    pub forward_s: Option<f64>,
    pub backward_s: Option<f64>,
    /// Forward + backward (+ the optimiser step for the whole step).
    pub total_s: Option<f64>,
    pub samples_per_s: Option<f64>,
    /// The device's high-water mark over the timed iterations.
    pub peak_memory_bytes: Option<u64>,
    /// Why it did not run (out of memory, …).
    pub error: Option<String>,
}

fn sync(device: &Device) -> Result<()> {
    Ok(device.synchronize()?)
}

/// Times `run` (which returns (forward seconds, backward-and-rest seconds)) after one warm-up; the peak memory
/// over the timed iterations.
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
            forward_s: Some(f),
            backward_s: Some(b),
            total_s: Some(f + b),
            samples_per_s: Some(items as f64 / (f + b).max(1e-12)),
            peak_memory_bytes: peak,
            error: None,
        },
        Err(e) => BenchRow {
            name: name.into(),
            precision: precision.into(),
            batch,
            items,
            forward_s: None,
            backward_s: None,
            total_s: None,
            samples_per_s: None,
            peak_memory_bytes: None,
            error: Some(e.to_string().lines().next().unwrap_or("").to_string()),
        },
    }
}

/// Runs `workload` of `plan` at the precision named `precision` (the caller sets the device's matmul mode).
pub fn run(device: &Device, plan: &Plan, workload: Workload, precision: &str) -> BenchRow {
    match workload {
        Workload::Gpt2 => gpt2(device, &plan.gpt2, precision, plan.iterations),
        Workload::Wav2vec2 => wav2vec2(device, &plan.wav2vec2, precision, plan.iterations),
        Workload::Resnet50 => resnet50(device, &plan.resnet50, precision, plan.iterations),
        Workload::Step => full_step(device, &plan.step, precision, plan.iterations),
    }
}

/// An attention mask of `lengths` real tokens per row of `tokens`.
fn padding_mask(lengths: &[usize], tokens: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<u32> = lengths
        .iter()
        .flat_map(|&n| (0..tokens).map(move |t| u32::from(t < n)))
        .collect();
    Ok(Tensor::from_vec(mask, (lengths.len(), tokens), device)?)
}

fn gpt2(device: &Device, w: &Gpt2Work, precision: &str, iterations: usize) -> BenchRow {
    let outcome = (|| {
        let vars = VarMap::new();
        let model = gpt2::Gpt2Model::new(
            &w.config,
            VarBuilder::from_varmap(&vars, DType::F32, device),
        )?;
        let encoder = gpt2::Gpt2Encoder::new(model, false);
        let ids = Tensor::rand(
            0f32,
            w.config.vocab_size as f32,
            (w.batch, w.tokens),
            device,
        )?
        .to_dtype(DType::U32)?;
        let mask = padding_mask(&w.lengths, w.tokens, device)?;
        timed(device, iterations, || {
            fwd_bwd(device, || encoder.forward(&ids, &mask, true))
        })
    })();
    row(
        Workload::Gpt2.name(),
        precision,
        format!("{} x {} tokens", w.batch, w.tokens),
        w.batch,
        outcome,
    )
}

fn wav2vec2(device: &Device, w: &Wav2vec2Work, precision: &str, iterations: usize) -> BenchRow {
    let outcome = (|| {
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, device);
        let model = wav2vec2::Wav2Vec2Model::new(&w.config, vb.clone())?;
        let encoder = wav2vec2::Wav2Vec2Encoder::new(model, None, false, vb)?;
        let x = (Tensor::randn(0f32, 1.0, (w.batch, w.samples), device)? * 3000.0)?;
        timed(device, iterations, || {
            fwd_bwd(device, || encoder.forward(&x, true))
        })
    })();
    row(
        Workload::Wav2vec2.name(),
        precision,
        format!("{} x {} samples", w.batch, w.samples),
        w.batch,
        outcome,
    )
}

fn resnet50(device: &Device, w: &ResnetWork, precision: &str, iterations: usize) -> BenchRow {
    let outcome = (|| {
        let mut store = ParamStore::new(device, 0);
        let model = ResNet50::new(&mut store, "visual", false)?;
        let x = Tensor::randn(0f32, 1.0, (w.batch, 3, w.height, w.width), device)?;
        timed(device, iterations, || {
            fwd_bwd(device, || model.forward(&x, true))
        })
    })();
    row(
        Workload::Resnet50.name(),
        precision,
        format!("{} x 3 x {} x {}", w.batch, w.height, w.width),
        w.batch,
        outcome,
    )
}

/// Random checkpoints (config.json + model.safetensors) of the step's GPT-2 and wav2vec2 under `dir`, so that
/// the whole classifier is built through its real loading path.
fn random_checkpoints(dir: &Path, device: &Device, w: &StepWork) -> Result<Backbones> {
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
    let vars = VarMap::new();
    gpt2::Gpt2Model::new(&w.gpt2, VarBuilder::from_varmap(&vars, DType::F32, device))?;
    let gpt2_dir = save("gpt2", json(&w.gpt2)?, &vars)?;
    let vars = VarMap::new();
    wav2vec2::Wav2Vec2Model::new(
        &w.wav2vec2,
        VarBuilder::from_varmap(&vars, DType::F32, device),
    )?;
    let w2v_dir = save("wav2vec2", json(&w.wav2vec2)?, &vars)?;
    Ok(Backbones {
        gpt2: Some(gpt2_dir),
        roberta: None,
        wav2vec2: Some(w2v_dir),
        resnet50: None,
    })
}

fn json<T: Serialize>(value: &T) -> Result<serde_json::Value> {
    serde_json::to_value(value).map_err(|e| Error::Other(e.to_string()))
}

/// One training step of row 15 at its batch: forward, loss, backward and the AdamW step.
fn full_step(device: &Device, w: &StepWork, precision: &str, iterations: usize) -> BenchRow {
    let outcome = (|| {
        let text = crate::table4::configs::yaml("fusion-mha-adv.yml")
            .ok_or_else(|| Error::Other("fusion-mha-adv.yml is not in this build".into()))?;
        let mut config = step_config(text, Scale::Full)?;
        config.visual_short_side = Some(w.height);
        config.audio_in_features = Some(w.samples as i64);
        let tmp = tempfile_dir()?;
        let backbones = random_checkpoints(&tmp, device, w)?;
        let model = Model::build_with(&config, None, &backbones, device, 0)?;
        let _ = std::fs::remove_dir_all(&tmp);
        let loss = Loss::new(&config);
        let mut optimizer = AdamW::new(
            model.store.trainable(),
            AdamWConfig::for_experiment(&config, 1000),
        )?;
        let b = w.batch;
        let batch = Batch {
            indices: (0..b).collect(),
            text_ids: w
                .lengths
                .iter()
                .map(|&n| (0..n as u32).map(|t| (t * 7919) % 50257).collect())
                .collect(),
            // made on the device: the step's `to_device` is then a no-op, as PyTorch's inputs are in place
            visual: Some(Tensor::randn(0f32, 1.0, (b, 3, w.height, w.width), device)?),
            audio: Some((Tensor::randn(0f32, 1.0, (b, w.samples), device)? * 3000.0)?),
            labels: (0..b).map(|i| i % w.classes.max(1)).collect(),
            sentiments: Vec::new(),
            missing: MediaCounts::default(),
            faces: None,
        };
        let y = batch.one_hot(model.classes, device)?;
        let mut ctx = Ctx::train(0);
        timed(device, iterations, || {
            sync(device)?;
            let start = Instant::now();
            let out = model.forward(&batch, &mut ctx)?;
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
        Workload::Step.name(),
        precision,
        format!("{} items", w.batch),
        w.batch,
        outcome,
    )
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("erc-selfcheck-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan carries what makes the two sides' work equal: the reference's sizes, row 15's prompt lengths and
    /// its padded width, the backbones' regularisation, the head and the optimiser of the config.
    #[test]
    fn the_plan_is_the_reference_work() {
        let plan = Plan::new(Scale::Full, 3, 32).unwrap();
        assert_eq!((plan.gpt2.batch, plan.gpt2.tokens), (16, 256));
        assert_eq!(plan.gpt2.lengths[0], 256);
        assert!(plan.gpt2.lengths[1..].iter().all(|&n| n == 192));
        assert_eq!((plan.wav2vec2.batch, plan.wav2vec2.samples), (16, 150_000));
        assert_eq!(
            (
                plan.resnet50.batch,
                plan.resnet50.height,
                plan.resnet50.width
            ),
            (32, 256, 721)
        );
        let s = &plan.step;
        assert_eq!(s.batch, 8);
        assert_eq!(s.lengths, [96, 128, 160, 192, 224, 256, 288, 320]);
        assert_eq!(s.tokens, 320);
        assert_eq!((s.height, s.width, s.samples), (256, 721, 150_000));
        assert_eq!((s.fusion_out_features, s.attention_heads), (512, 4));
        assert_eq!(s.head, [(64, 0.2)]);
        assert_eq!(
            (s.learning_rate, s.weight_decay, s.max_grad_norm),
            (5e-5, 0.1, 1.0)
        );
        // what PyTorch's configs take from the plan, by their Hugging Face names
        let json = serde_json::to_value(&plan).unwrap();
        let w2v = &json["wav2vec2"]["config"];
        for key in [
            "layerdrop",
            "hidden_dropout",
            "attention_dropout",
            "activation_dropout",
            "feat_proj_dropout",
            "mask_time_prob",
            "mask_time_length",
            "mask_time_min_masks",
        ] {
            assert!(w2v.get(key).is_some(), "wav2vec2 config lacks {key}");
        }
        for key in ["resid_pdrop", "embd_pdrop", "attn_pdrop", "n_layer"] {
            assert!(
                json["gpt2"]["config"].get(key).is_some(),
                "gpt2 config lacks {key}"
            );
        }
    }
}
