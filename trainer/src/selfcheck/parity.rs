//! Parity of the trainable backbones with PyTorch, on any device: the tiny checkpoints of the backbone fixtures
//! (`trainer/tests/fixtures/backbones/`: the real GPT-2, RoBERTa, wav2vec2 and ResNet-50 architectures with random
//! weights, and the inputs, outputs and gradients PyTorch recorded for them) loaded through the real loading code,
//! run forward and backward, and every output and weight gradient compared norm-wise, ‖ours − torch‖ / ‖torch‖ ≤
//! 1e-4 in fp32; likewise TMN's fusion pieces against the PyTorch references of `make_seeds.py` ([`tmn`]). The
//! tests run this on the CPU; the GPU check (`erc-train selfcheck`) on a GPU.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;

use crate::encoders::resnet::{load_torchvision, Config as ResNetConfig, ResNet50};
use crate::encoders::{gpt2, roberta, wav2vec2};
use crate::error::{Error, Result};
use crate::model::fusion::CrossModal;
use crate::model::mixer::{MixerBlock, MixerSizes, TensorMixer};
use crate::nn::{masked_mean, ParamStore};

/// Norm-wise relative error every parity check must stay within.
pub const TOL: f64 = 1e-4;

/// One compared tensor.
#[derive(Debug, Clone)]
pub struct Compared {
    pub name: String,
    /// ‖ours − torch‖₂ / ‖torch‖₂, or for a gradient that is zero mathematically, ‖ours‖₂.
    pub error: f64,
    /// Compared by norm (a mathematically zero gradient: fp32 stores rounding noise).
    pub zero: bool,
}

impl Compared {
    pub fn passes(&self) -> bool {
        let limit = if self.zero { 1e-6 } else { TOL };
        !self.error.is_nan() && self.error <= limit
    }
}

/// The worst relative error of `rows`, or the failures.
pub fn verdict(rows: &[Compared]) -> std::result::Result<f64, String> {
    let failures: Vec<String> = rows
        .iter()
        .filter(|r| !r.passes())
        .map(|r| format!("{}: {:.3e}", r.name, r.error))
        .collect();
    if !failures.is_empty() {
        return Err(failures.join("\n"));
    }
    Ok(rows
        .iter()
        .filter(|r| !r.zero)
        .map(|r| r.error)
        .fold(0.0, f64::max))
}

fn values(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?)
}

/// ‖a − b‖₂ / ‖b‖₂ in f64; an error for different shapes or an all-zero `b`.
pub fn rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    if a.dims() != b.dims() {
        return Err(Error::Other(format!(
            "shapes differ: {:?} vs {:?}",
            a.dims(),
            b.dims()
        )));
    }
    let (a, b) = (values(a)?, values(b)?);
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt();
    let norm = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    if norm == 0.0 {
        return Err(Error::Other("the reference tensor is all zeros".into()));
    }
    Ok(diff / norm)
}

/// ‖a‖₂ in f64.
pub fn norm(a: &Tensor) -> Result<f64> {
    Ok(values(a)?.iter().map(|v| v * v).sum::<f64>().sqrt())
}

/// The inputs, outputs and gradients PyTorch recorded for a fixture model, on `device`.
pub fn io(fixtures: &Path, model: &str, device: &Device) -> Result<HashMap<String, Tensor>> {
    let path = fixtures.join(model).join("io.safetensors");
    candle_core::safetensors::load(&path, device).map_err(|e| Error::data(&path, e.to_string()))
}

/// Compares (name, ours, torch) rows; names in `zero` by norm.
fn compare(rows: Vec<(String, Tensor, Tensor)>, zero: &BTreeSet<String>) -> Result<Vec<Compared>> {
    rows.into_iter()
        .map(|(name, ours, reference)| {
            let is_zero = zero.contains(&name);
            let error = if is_zero {
                norm(&ours)?
            } else {
                rel_err(&ours, &reference)?
            };
            Ok(Compared {
                name,
                error,
                zero: is_zero,
            })
        })
        .collect()
}

fn vars_of(map: &VarMap) -> Result<BTreeMap<String, Var>> {
    Ok(map
        .data()
        .lock()
        .map_err(|_| Error::Other("variables poisoned".into()))?
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect())
}

fn get<'a>(io: &'a HashMap<String, Tensor>, key: &str) -> Result<&'a Tensor> {
    io.get(key)
        .ok_or_else(|| Error::Other(format!("the fixture has no `{key}`")))
}

fn same_names(ours: &BTreeSet<String>, expected: &BTreeSet<String>, what: &str) -> Result<()> {
    if ours != expected {
        return Err(Error::Other(format!(
            "{what}: ours {:?} vs the fixture's {:?}",
            ours.difference(expected).collect::<Vec<_>>(),
            expected.difference(ours).collect::<Vec<_>>()
        )));
    }
    Ok(())
}

/// GPT-2 (`gpt2-tiny`): last hidden state, the pooled output at each row's last real token, the loss, every
/// weight's gradient and the gradient of the input embeddings.
pub fn gpt2(fixtures: &Path, device: &Device) -> Result<Vec<Compared>> {
    gpt2_from(fixtures, &fixtures.join("gpt2-tiny"), device)
}

/// [`gpt2`] with the model loaded from the folder `model`: the same tiny checkpoint in another format or layout
/// (`gpt2-tiny-pickle`, `gpt2-tiny-sharded`), against the same recorded outputs.
pub fn gpt2_from(fixtures: &Path, model: &Path, device: &Device) -> Result<Vec<Compared>> {
    let io = io(fixtures, "gpt2-tiny", device)?;
    let loaded = gpt2::load(model, device, 7)?;
    let vars = vars_of(&loaded.vars)?;
    // The [PAD] row as the fixture drew it, so padding positions match too.
    let wte = &vars["wte.weight"];
    let rows_in_checkpoint = wte.as_tensor().dim(0)? - 1;
    let pad_row = get(&io, "pad_row")?.unsqueeze(0)?;
    wte.set(&Tensor::cat(
        &[&wte.as_tensor().narrow(0, 0, rows_in_checkpoint)?, &pad_row],
        0,
    )?)?;

    let encoder = gpt2::Gpt2Encoder::new(loaded.model, false);
    let (ids, mask, r) = (
        get(&io, "input_ids")?,
        get(&io, "attention_mask")?,
        get(&io, "R")?,
    );
    let hidden = encoder.model.forward(ids, mask, false)?;
    let out = encoder.pool(&hidden, mask)?;
    let loss = (&out * r)?.sum_all()?;
    let grads = loss.backward()?;
    let mut rows = vec![
        (
            "last_hidden_state".to_string(),
            hidden,
            get(&io, "last_hidden_state")?.clone(),
        ),
        (
            "encoder_output".to_string(),
            out,
            get(&io, "encoder_output")?.clone(),
        ),
        (
            "loss".to_string(),
            loss.reshape(1)?,
            get(&io, "loss")?.clone(),
        ),
    ];
    let expected: BTreeSet<String> = io
        .keys()
        .filter_map(|k| k.strip_prefix("grad."))
        .filter(|k| *k != "inputs_embeds")
        .map(str::to_string)
        .collect();
    same_names(&vars.keys().cloned().collect(), &expected, "gpt2 weights")?;
    for (name, var) in &vars {
        let g = grads
            .get(var.as_tensor())
            .ok_or_else(|| Error::Other(format!("gpt2: no gradient for {name}")))?;
        rows.push((
            format!("grad.{name}"),
            g.clone(),
            get(&io, &format!("grad.{name}"))?.clone(),
        ));
    }
    // d loss / d inputs_embeds: the same model from token embeddings held as a variable.
    let embeds = Var::from_tensor(&encoder.model.embed(ids)?)?;
    let hidden_e = encoder
        .model
        .forward_embeds(embeds.as_tensor(), mask, false)?;
    let loss_e = (encoder.pool(&hidden_e, mask)? * r)?.sum_all()?;
    let grads_e = loss_e.backward()?;
    let g = grads_e
        .get(embeds.as_tensor())
        .ok_or_else(|| Error::Other("gpt2: no gradient for the input embeddings".into()))?;
    rows.push((
        "grad.inputs_embeds".to_string(),
        g.clone(),
        get(&io, "grad.inputs_embeds")?.clone(),
    ));
    compare(rows, &BTreeSet::new())
}

/// RoBERTa (`roberta-tiny`, a `RobertaForMaskedLM` file as the hub's): every hidden state, the CLS and the mean
/// pooling, the loss `Σ cls·R_cls + Σ mean·R_mean`, and every weight's gradient (the attention key biases' are
/// zero mathematically: compared by norm).
pub fn roberta(fixtures: &Path, device: &Device) -> Result<Vec<Compared>> {
    let io = io(fixtures, "roberta-tiny", device)?;
    let loaded = roberta::load(
        &fixtures.join("roberta-tiny"),
        roberta::Pooling::Cls,
        false,
        device,
        7,
    )?;
    let vars = vars_of(&loaded.vars)?;
    let model = &loaded.encoder.model;
    let (ids, mask) = (get(&io, "input_ids")?, get(&io, "attention_mask")?);
    let states = model.hidden_states(ids, mask, false)?;
    let last = states
        .last()
        .ok_or_else(|| Error::Other("roberta: no hidden state".into()))?
        .clone();
    let cls = loaded.encoder.pool(&last, mask)?;
    let mean = masked_mean(&last, mask)?;
    let loss =
        ((&cls * get(&io, "R_cls")?)?.sum_all()? + (&mean * get(&io, "R_mean")?)?.sum_all()?)?;
    let grads = loss.backward()?;
    let mut rows = vec![
        (
            "last_hidden_state".to_string(),
            last,
            get(&io, "last_hidden_state")?.clone(),
        ),
        ("cls".to_string(), cls, get(&io, "cls")?.clone()),
        ("mean".to_string(), mean, get(&io, "mean")?.clone()),
        (
            "loss".to_string(),
            loss.reshape(1)?,
            get(&io, "loss")?.clone(),
        ),
    ];
    for (i, h) in states.iter().enumerate() {
        let key = format!("debug.hidden_states.{i}");
        rows.push((key.clone(), h.clone(), get(&io, &key)?.clone()));
    }
    let expected: BTreeSet<String> = io
        .keys()
        .filter_map(|k| k.strip_prefix("grad."))
        .map(str::to_string)
        .collect();
    same_names(
        &vars.keys().cloned().collect(),
        &expected,
        "roberta weights",
    )?;
    for (name, var) in &vars {
        let g = grads
            .get(var.as_tensor())
            .ok_or_else(|| Error::Other(format!("roberta: no gradient for {name}")))?;
        let key = format!("grad.{name}");
        rows.push((key.clone(), g.clone(), get(&io, &key)?.clone()));
    }
    // the keys' bias cancels in the softmax: its gradient is zero mathematically
    let zero: BTreeSet<String> = (0..2)
        .map(|i| format!("grad.encoder.layer.{i}.attention.self.key.bias"))
        .collect();
    compare(rows, &zero)
}

/// TMN's pieces (`tmn/io.safetensors`, the PyTorch references of `make_seeds.py`): tensor fusion, one Mixer block,
/// the whole Tensor Mixer (projections, stem, two blocks, LayerNorm, mean), the cross-attention fusion (with
/// padding on both sides) — outputs and the gradients of every input and parameter — and Peaking Labels.
pub fn tmn(fixtures: &Path, device: &Device) -> Result<Vec<Compared>> {
    let io = io(fixtures, "tmn", device)?;
    let mut rows = Vec::new();
    // the tensor mixer's token-mixing fc2 biases add a per-row constant over the channels, which every later
    // LayerNorm removes; the key biases cancel in the softmax: zero mathematically
    let zero: BTreeSet<String> = [
        "tensor_mixer.grad.blocks.0.token_mixing.fc2.bias",
        "tensor_mixer.grad.blocks.1.token_mixing.fc2.bias",
        "cross_attention.grad.text_to_audio.k_proj.bias",
        "cross_attention.grad.audio_to_text.k_proj.bias",
    ]
    .map(String::from)
    .into();

    // tensor fusion: no parameters
    let (a, b) = (
        Var::from_tensor(get(&io, "tensor_fusion.a")?)?,
        Var::from_tensor(get(&io, "tensor_fusion.b")?)?,
    );
    let z = crate::ops::tensor_fusion(a.as_tensor(), b.as_tensor())?;
    let grads = (&z * get(&io, "tensor_fusion.R")?)?.sum_all()?.backward()?;
    rows.push((
        "tensor_fusion.out".to_string(),
        z,
        get(&io, "tensor_fusion.out")?.clone(),
    ));
    for (name, v) in [("a", &a), ("b", &b)] {
        let key = format!("tensor_fusion.grad.{name}");
        let g = grads
            .get(v.as_tensor())
            .ok_or_else(|| Error::Other(format!("tmn: no gradient for {key}")))?;
        rows.push((key.clone(), g.clone(), get(&io, &key)?.clone()));
    }

    // one Mixer block
    let mut store = ParamStore::new(device, 1);
    let block = MixerBlock::new(&mut store, "f", 5, 6, 7, 9)?;
    let x = Var::from_tensor(get(&io, "mixer_block.x")?)?;
    assign(&io, "mixer_block", &store)?;
    let out = block.forward(x.as_tensor())?;
    rows.extend(piece(&io, "mixer_block", &store, out, &[("x", &x)])?);

    // the whole Tensor Mixer: rows from the text (projected to 4), columns from the audio (projected to 3)
    let mut store = ParamStore::new(device, 1);
    let sizes = MixerSizes {
        projections: [Some(4), Some(3)],
        channels: 6,
        layers: 2,
        token_hidden: 7,
        channel_hidden: 9,
    };
    let mixer = TensorMixer::new(&mut store, "f", ["text", "audio"], [10, 6], sizes)?;
    let text = Var::from_tensor(get(&io, "tensor_mixer.text")?)?;
    let audio = Var::from_tensor(get(&io, "tensor_mixer.audio")?)?;
    assign(&io, "tensor_mixer", &store)?;
    let out = mixer.forward(text.as_tensor(), audio.as_tensor())?;
    rows.extend(piece(
        &io,
        "tensor_mixer",
        &store,
        out,
        &[("text", &text), ("audio", &audio)],
    )?);

    // the cross-attention fusion: text (7 tokens, padded rows) and audio (5 frames, one row padded)
    let mut store = ParamStore::new(device, 1);
    let fusion = CrossModal::new(&mut store, "f", [10, 6], 8, 2)?;
    let text = Var::from_tensor(get(&io, "cross_attention.text")?)?;
    let audio = Var::from_tensor(get(&io, "cross_attention.audio")?)?;
    assign(&io, "cross_attention", &store)?;
    let out = fusion.forward(
        text.as_tensor(),
        get(&io, "cross_attention.text_mask")?,
        audio.as_tensor(),
        get(&io, "cross_attention.audio_mask")?,
    )?;
    rows.extend(piece(
        &io,
        "cross_attention",
        &store,
        out,
        &[("text", &text), ("audio", &audio)],
    )?);

    let peaked = crate::ops::peak_labels(get(&io, "peak_labels.y_soft")?)?;
    rows.push((
        "peak_labels.out".to_string(),
        peaked,
        get(&io, "peak_labels.out")?.clone(),
    ));
    let mut compared = compare(rows, &zero)?;
    // fp32 leaves rounding noise in a zero gradient in proportion to the gradients around it (here of order 10, so
    // ~1e-6): measured against the norm of the same layer's weight gradient
    for row in compared.iter_mut().filter(|r| r.zero) {
        let weight = row.name.replace(".bias", ".weight");
        row.error /= norm(get(&io, &weight)?)?.max(1.0);
    }
    Ok(compared)
}

/// Puts the fixture's `<prefix>.param.<name>` values into the store's parameters `f.<name>`; the two sets of names
/// must be the same.
fn assign(io: &HashMap<String, Tensor>, prefix: &str, store: &ParamStore) -> Result<()> {
    let marker = format!("{prefix}.param.");
    let expected: BTreeSet<String> = io
        .keys()
        .filter_map(|k| k.strip_prefix(&marker))
        .map(str::to_string)
        .collect();
    let ours: BTreeSet<String> = store
        .trainable()
        .into_iter()
        .filter_map(|(n, _)| n.strip_prefix("f.").map(str::to_string))
        .collect();
    same_names(&ours, &expected, prefix)?;
    for name in &ours {
        store.assign(
            &format!("f.{name}"),
            get(io, &format!("{marker}{name}"))?,
            Path::new("tmn/io.safetensors"),
        )?;
    }
    Ok(())
}

/// A piece's rows: its output and the gradients of `sum(out · R)` for its inputs and every parameter (whose values
/// are taken from the fixture first, when it has them).
fn piece(
    io: &HashMap<String, Tensor>,
    prefix: &str,
    store: &ParamStore,
    out: Tensor,
    inputs: &[(&str, &Var)],
) -> Result<Vec<(String, Tensor, Tensor)>> {
    let grads = (&out * get(io, &format!("{prefix}.R"))?)?
        .sum_all()?
        .backward()?;
    let mut rows = vec![(
        format!("{prefix}.out"),
        out,
        get(io, &format!("{prefix}.out"))?.clone(),
    )];
    let params = store
        .trainable()
        .into_iter()
        .filter_map(|(n, v)| n.strip_prefix("f.").map(|n| (n.to_string(), v)))
        .collect::<Vec<_>>();
    let named = inputs
        .iter()
        .map(|(n, v)| (n.to_string(), (*v).clone()))
        .chain(params);
    for (name, var) in named {
        let key = format!("{prefix}.grad.{name}");
        let g = grads
            .get(var.as_tensor())
            .ok_or_else(|| Error::Other(format!("tmn: no gradient for {key}")))?;
        rows.push((key.clone(), g.clone(), get(io, &key)?.clone()));
    }
    Ok(rows)
}

/// wav2vec2 (`wav2vec2-tiny`): the feature encoder's output, every hidden state, the pooled output, the loss,
/// the input's and every weight's gradient.
pub fn wav2vec2(fixtures: &Path, device: &Device) -> Result<Vec<Compared>> {
    wav2vec2_from(fixtures, &fixtures.join("wav2vec2-tiny"), device)
}

/// [`wav2vec2`] with the model loaded from the folder `model` (`wav2vec2-tiny-pickle`, `wav2vec2-tiny-sharded`).
pub fn wav2vec2_from(fixtures: &Path, model: &Path, device: &Device) -> Result<Vec<Compared>> {
    let io = io(fixtures, "wav2vec2-tiny", device)?;
    let loaded = wav2vec2::load(model, Some(-1), false, device, 7)?;
    let vars = vars_of(&loaded.vars)?;
    let encoder = loaded.encoder;
    let input = Var::from_tensor(get(&io, "input_values")?)?;
    let out = encoder.model.forward(input.as_tensor(), false)?;
    let pooled = encoder.pool(&out.last_hidden_state)?;
    let loss = (&pooled * get(&io, "R")?)?.sum_all()?;
    let grads = loss.backward()?;
    let input_grad = grads
        .get(input.as_tensor())
        .ok_or_else(|| Error::Other("wav2vec2: no input gradient".into()))?;
    let mut rows = vec![
        (
            "extract_features".to_string(),
            out.extract_features.clone(),
            get(&io, "extract_features")?.clone(),
        ),
        (
            "last_hidden_state".to_string(),
            out.last_hidden_state.clone(),
            get(&io, "last_hidden_state")?.clone(),
        ),
        ("pooled".to_string(), pooled, get(&io, "pooled")?.clone()),
        (
            "loss".to_string(),
            loss.reshape(1)?,
            get(&io, "loss")?.clone(),
        ),
        (
            "grad.input_values".to_string(),
            input_grad.clone(),
            get(&io, "grad.input_values")?.clone(),
        ),
    ];
    for (i, h) in out.hidden_states.iter().enumerate() {
        let key = format!("debug.hidden_states.{i}");
        rows.push((key.clone(), h.clone(), get(&io, &key)?.clone()));
    }
    let expected: BTreeSet<String> = io
        .keys()
        .filter_map(|k| k.strip_prefix("grad.wav2vec2."))
        .map(str::to_string)
        .collect();
    let mut ours: BTreeSet<String> = vars.keys().cloned().collect();
    if !ours.remove("masked_spec_embed") {
        return Err(Error::Other(
            "wav2vec2: masked_spec_embed was not loaded (the config masks)".into(),
        ));
    }
    same_names(&ours, &expected, "wav2vec2 weights")?;
    if grads.get(vars["masked_spec_embed"].as_tensor()).is_some() {
        return Err(Error::Other("wav2vec2: masking in eval mode".into()));
    }
    for name in &ours {
        let g = grads
            .get(vars[name].as_tensor())
            .ok_or_else(|| Error::Other(format!("wav2vec2: no gradient for {name}")))?;
        let key = format!("grad.wav2vec2.{name}");
        rows.push((key.clone(), g.clone(), get(&io, &key)?.clone()));
    }
    // the keys' bias cancels in the softmax: its gradient is zero mathematically
    let zero: BTreeSet<String> = (0..2)
        .map(|i| format!("grad.wav2vec2.encoder.layers.{i}.attention.k_proj.bias"))
        .collect();
    compare(rows, &zero)
}

/// ResNet-50 (`resnet50-tiny`): the eval output with the checkpoint's running statistics; after one training
/// forward + backward the training output, the stage activations, the input's and every parameter's gradient,
/// and every BatchNorm's running statistics.
pub fn resnet50(fixtures: &Path, device: &Device) -> Result<Vec<Compared>> {
    resnet50_from(
        fixtures,
        &fixtures.join("resnet50-tiny").join("model.safetensors"),
        device,
    )
}

/// [`resnet50`] with the weights loaded from `path` (a file or folder: `resnet50-tiny-pth/resnet50-tiny.pth`).
pub fn resnet50_from(fixtures: &Path, path: &Path, device: &Device) -> Result<Vec<Compared>> {
    const PREFIX: &str = "visual";
    let io = io(fixtures, "resnet50-tiny", device)?;
    let cfg = ResNetConfig::from_checkpoint(path)?;
    let mut store = ParamStore::new(device, 1);
    let model = ResNet50::with_config(&mut store, PREFIX, &cfg, false)?;
    load_torchvision(&store, PREFIX, path)?;
    let input = get(&io, "input")?;
    let eval = model.forward(input, false)?;
    let x = Var::from_tensor(input)?;
    let stages = model.stages(x.as_tensor(), true)?;
    if stages.len() != 5 {
        return Err(Error::Other(format!(
            "resnet50: {} stages, expected the max-pool and four",
            stages.len()
        )));
    }
    let output = stages[4].flatten_from(2)?.mean(candle_core::D::Minus1)?;
    let loss = (&output * get(&io, "R")?)?.sum_all()?;
    let grads = loss.backward()?;
    let input_grad = grads
        .get(x.as_tensor())
        .ok_or_else(|| Error::Other("resnet50: no input gradient".into()))?;
    let mut rows = vec![
        (
            "output_eval".to_string(),
            eval,
            get(&io, "output_eval")?.clone(),
        ),
        (
            "output_train".to_string(),
            output,
            get(&io, "output_train")?.clone(),
        ),
        (
            "loss".to_string(),
            loss.reshape(1)?,
            get(&io, "loss")?.clone(),
        ),
        (
            "grad.input".to_string(),
            input_grad.clone(),
            get(&io, "grad.input")?.clone(),
        ),
    ];
    for (stage, activation) in ["maxpool", "layer1", "layer2", "layer3", "layer4"]
        .iter()
        .zip(&stages)
    {
        let key = format!("debug.train.{stage}");
        rows.push((key.clone(), activation.clone(), get(&io, &key)?.clone()));
    }
    let trainable: BTreeSet<String> = store
        .trainable()
        .into_iter()
        .filter_map(|(name, _)| name.strip_prefix("visual.").map(str::to_string))
        .collect();
    let in_fixture: BTreeSet<String> = io
        .keys()
        .filter_map(|k| k.strip_prefix("grad."))
        .filter(|k| *k != "input")
        .map(str::to_string)
        .collect();
    same_names(&trainable, &in_fixture, "resnet50 parameters")?;
    for name in &trainable {
        let param = store
            .get(&format!("{PREFIX}.{name}"))
            .ok_or_else(|| Error::Other(format!("resnet50: no parameter {name}")))?;
        let g = grads
            .get(&param)
            .ok_or_else(|| Error::Other(format!("resnet50: no gradient for {name}")))?;
        rows.push((
            format!("grad.{name}"),
            g.clone(),
            get(&io, &format!("grad.{name}"))?.clone(),
        ));
    }
    let mut running: Vec<&String> = io
        .keys()
        .filter(|k| k.starts_with("running_after."))
        .collect();
    running.sort();
    for key in running {
        let name = &key["running_after.".len()..];
        let value = store
            .get(&format!("{PREFIX}.{name}"))
            .ok_or_else(|| Error::Other(format!("resnet50: no buffer {name}")))?;
        rows.push((key.clone(), value, get(&io, key)?.clone()));
    }
    compare(rows, &BTreeSet::new())
}
