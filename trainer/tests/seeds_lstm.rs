//! The frames + voice + LSTM seed system's pieces against PyTorch (fixtures of `tests/fixtures/lstm/make_lstm.py`):
//! the LSTM against `torch.nn.LSTM`, the vocal net against its `nn.Conv1d` twin, the mosaic's frames through a
//! micro torchvision ResNet-50 in training mode, and the three together under the classifier's parameter names —
//! every output, every input's gradient and EVERY parameter's gradient (a parameter without one fails), norm-wise
//! relative error ≤ 1e-4 in fp32. Also run under `ERC_OPS=generic` (`make test-generic`).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use erc_train::encoders::resnet::{Config as ResNetConfig, ResNet50};
use erc_train::encoders::resnet_frames::mosaic_frames;
use erc_train::encoders::vocal_net::VocalNet;
use erc_train::model::frames_lstm::{frame_features, FramesLstm};
use erc_train::nn::lstm::Lstm;
use erc_train::nn::ParamStore;
use erc_train::selfcheck::parity::Compared;

mod common;
use common::{assert_parity, rel_err};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lstm/io.safetensors")
}

fn io() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(), &Device::Cpu).unwrap()
}

fn get<'a>(io: &'a HashMap<String, Tensor>, key: &str) -> &'a Tensor {
    io.get(key)
        .unwrap_or_else(|| panic!("the fixture has no `{key}`"))
}

/// The micro ResNet of the fixture: stem 4, planes [2, 2, 2, 4], one block per stage (16 features).
fn micro() -> ResNetConfig {
    ResNetConfig {
        stem_width: 4,
        widths: [2, 2, 2, 4],
        blocks: [1, 1, 1, 1],
    }
}

/// Copies every `<piece>.param.<name>` of the fixture into `store` (as `<prefix><name>`); every trainable parameter
/// of the store must come from the fixture.
fn load_params(io: &HashMap<String, Tensor>, piece: &str, prefix: &str, store: &ParamStore) {
    let marker = format!("{piece}.param.");
    let recorded: BTreeSet<&str> = io.keys().filter_map(|k| k.strip_prefix(&marker)).collect();
    for name in &recorded {
        store
            .assign(
                &format!("{prefix}{name}"),
                get(io, &format!("{marker}{name}")),
                &fixture(),
            )
            .unwrap_or_else(|e| panic!("{piece}: {e}"));
    }
    let missing: Vec<String> = store
        .trainable()
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| !recorded.contains(n.strip_prefix(prefix).unwrap_or(n)))
        .collect();
    assert!(
        missing.is_empty(),
        "{piece}: not in the fixture: {missing:?}"
    );
}

/// The rows of one piece: its outputs, then the gradient of `loss` for each input and EVERY trainable parameter
/// (named without `prefix`); a gradient the fixture has and we did not compare fails too.
fn rows(
    io: &HashMap<String, Tensor>,
    piece: &str,
    prefix: &str,
    outputs: &[(&str, &Tensor)],
    loss: Tensor,
    inputs: &[(&str, &Var)],
    store: &ParamStore,
) -> Vec<Compared> {
    let grads = loss.backward().unwrap();
    let compare = |name: String, ours: &Tensor| Compared {
        error: rel_err(ours, get(io, &name)),
        name,
        zero: false,
    };
    let mut out: Vec<Compared> = outputs
        .iter()
        .map(|(key, t)| compare(format!("{piece}.{key}"), t))
        .collect();
    let params = store
        .trainable()
        .into_iter()
        .map(|(n, v)| (n.strip_prefix(prefix).unwrap_or(&n).to_string(), v));
    let named = inputs
        .iter()
        .map(|(n, v)| (n.to_string(), (*v).clone()))
        .chain(params);
    for (name, var) in named {
        let key = format!("{piece}.grad.{name}");
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {key}"));
        out.push(compare(key, g));
    }
    let compared: BTreeSet<&str> = out.iter().map(|r| r.name.as_str()).collect();
    let marker = format!("{piece}.grad.");
    for key in io.keys().filter(|k| k.starts_with(&marker)) {
        assert!(compared.contains(key.as_str()), "{key} not compared");
    }
    out
}

fn var(io: &HashMap<String, Tensor>, key: &str) -> Var {
    Var::from_tensor(get(io, key)).unwrap()
}

fn weighted(out: &Tensor, r: &Tensor) -> Tensor {
    (out * r).unwrap().sum_all().unwrap()
}

/// One-layer LSTM vs `torch.nn.LSTM(6, 5, batch_first=True)`: every state, the last, the input's and all four
/// parameters' gradients (PyTorch's names, gate order and both biases).
#[test]
fn lstm_matches_torch_nn_lstm() {
    let io = io();
    let mut store = ParamStore::new(&Device::Cpu, 1);
    let lstm = Lstm::new(&mut store, "f", 6, 5).unwrap();
    load_params(&io, "lstm", "f.", &store);
    let x = var(&io, "lstm.x");
    let out = lstm.forward(x.as_tensor()).unwrap();
    let loss = (weighted(&out.states, get(&io, "lstm.R.states"))
        + weighted(&out.last, get(&io, "lstm.R.last")))
    .unwrap();
    let rows = rows(
        &io,
        "lstm",
        "f.",
        &[("out.states", &out.states), ("out.last", &out.last)],
        loss,
        &[("x", &x)],
        &store,
    );
    assert_eq!(rows.len(), 2 + 1 + 4, "{rows:?}");
    assert_parity("LSTM vs torch.nn.LSTM", &rows);
}

/// The vocal net vs its PyTorch twin (three windows, a tail dropped): output, the waveform's and every weight's
/// gradient.
#[test]
fn vocal_net_matches_pytorch() {
    let io = io();
    let mut store = ParamStore::new(&Device::Cpu, 1);
    let net = VocalNet::new(&mut store, "f", 907, 3, 8).unwrap();
    load_params(&io, "vocal_net", "f.", &store);
    let x = var(&io, "vocal_net.x");
    let out = net.forward(x.as_tensor()).unwrap();
    let loss = weighted(&out, get(&io, "vocal_net.R"));
    let rows = rows(
        &io,
        "vocal_net",
        "f.",
        &[("out", &out)],
        loss,
        &[("x", &x)],
        &store,
    );
    assert_eq!(rows.len(), 1 + 1 + 6);
    assert_parity("vocal net vs PyTorch", &rows);
    // too short a waveform for its windows is an error that says what to raise
    let mut store = ParamStore::new(&Device::Cpu, 1);
    let err = VocalNet::new(&mut store, "f", 300, 5, 8)
        .unwrap_err()
        .to_string();
    assert!(err.contains("audio_in_features"), "{err}");
}

/// The mosaic's frames (sliced and stacked by PyTorch) through a micro ResNet-50 in training mode: the (B, T, F)
/// features, the image's and every weight's gradient.
#[test]
fn frames_through_the_resnet_match_pytorch() {
    let io = io();
    // the split itself: frame k of sample b starts at row ⌊k·H/5⌋ of the mosaic (H = 62: frames at rows 0, 12, 24,
    // 37, 49 — not at multiples of the 12-row band)
    let x = get(&io, "frames.x");
    let frames = mosaic_frames(x, 5).unwrap();
    assert_eq!(frames.dims(), [10, 3, 12, 16]);
    let third = x.narrow(0, 1, 1).unwrap().narrow(2, 24, 12).unwrap();
    assert_eq!(rel_err(&frames.narrow(0, 7, 1).unwrap(), &third), 0.0);
    let fourth = x.narrow(0, 1, 1).unwrap().narrow(2, 37, 12).unwrap();
    assert_eq!(rel_err(&frames.narrow(0, 8, 1).unwrap(), &fourth), 0.0);

    let mut store = ParamStore::new(&Device::Cpu, 1);
    let resnet = ResNet50::with_config(&mut store, "f", &micro(), false).unwrap();
    load_params(&io, "frames", "f.", &store);
    let x = var(&io, "frames.x");
    let out = frame_features(&resnet, x.as_tensor(), 5, true).unwrap();
    let loss = weighted(&out, get(&io, "frames.R"));
    let rows = rows(
        &io,
        "frames",
        "f.",
        &[("out", &out)],
        loss,
        &[("x", &x)],
        &store,
    );
    assert!(rows.len() > 40, "{} compared", rows.len());
    assert_parity("per-frame ResNet vs PyTorch", &rows);
}

/// The three together under the classifier's names (`visual.*`, `audio.*`, `fusion.lstm.*`): per-frame ResNet ⊕
/// vocal net per step → LSTM → last state, every gradient.
#[test]
fn the_whole_time_axis_matches_pytorch() {
    let io = io();
    let mut store = ParamStore::new(&Device::Cpu, 1);
    let resnet = ResNet50::with_config(&mut store, "visual", &micro(), false).unwrap();
    let vocal = VocalNet::new(&mut store, "audio", 1003, 5, 8).unwrap();
    let fusion = FramesLstm::new(&mut store, "fusion", &[16, 8], 6).unwrap();
    assert_eq!(fusion.out_features(), 6);
    load_params(&io, "system", "", &store);
    let (image, wave) = (var(&io, "system.image"), var(&io, "system.wave"));
    let steps = [
        frame_features(&resnet, image.as_tensor(), 5, true).unwrap(),
        vocal.forward(wave.as_tensor()).unwrap(),
    ];
    let out = fusion.forward(&steps).unwrap();
    let loss = weighted(&out, get(&io, "system.R"));
    let rows = rows(
        &io,
        "system",
        "",
        &[("out", &out)],
        loss,
        &[("image", &image), ("wave", &wave)],
        &store,
    );
    assert!(rows.len() > 50, "{} compared", rows.len());
    assert_parity("frames + voice + LSTM vs PyTorch", &rows);
    // under `make test-generic`, no CPU kernel ran
    let counts = erc_train::ops::body_counts();
    if std::env::var("ERC_EXPECT_OPS").as_deref() == Ok("generic") {
        assert!(counts.cpu == 0 && counts.generic > 0, "{counts:?}");
    }
}

/// `visual_pretrained`: unset or `true`, the ResNet holds `visual_model`'s weights; `false`, the same network
/// (widths read off the checkpoint) re-initialised; `true` with `visual_model: random` contradicts itself.
/// The whole classifier of the seed config builds with the tiny ResNet and gives (B, 7) probabilities.
#[test]
fn visual_pretrained_loads_or_reinitialises_the_checkpoints_network() {
    use erc_train::config::Config;
    use erc_train::model::{Backbones, Model};
    let checkpoint = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/backbones/resnet50-tiny/model.safetensors");
    let seed_config = |pretrained: &str| {
        let yaml = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/seeds/frames-lstm.yml"),
        )
        .unwrap()
        .replace("visual_pretrained: true", pretrained)
        .replace("audio_in_features: 96000", "audio_in_features: 4000")
        .replace("visual_short_side: 256", "visual_short_side: 32");
        Config::parse(Path::new("frames-lstm.yml"), &yaml).unwrap_or_else(|e| panic!("{e}"))
    };
    let backbones = Backbones {
        resnet50: Some(checkpoint.clone()),
        ..Backbones::default()
    };
    let stored = candle_core::safetensors::load(&checkpoint, &Device::Cpu).unwrap();
    let conv1 = &stored["conv1.weight"];
    for (pretrained, loaded) in [
        ("visual_pretrained: true", true),
        ("", true),
        ("visual_pretrained: false", false),
    ] {
        let config = seed_config(pretrained);
        assert_eq!(config.visual_pretrained(), loaded, "{pretrained:?}");
        let model = Model::build_with(&config, None, &backbones, &Device::Cpu, 5).unwrap();
        let ours = model.store.get("visual.conv1.weight").unwrap();
        assert_eq!(ours.dims(), conv1.dims(), "the checkpoint's widths");
        assert_eq!(rel_err(&ours, conv1) == 0.0, loaded, "{pretrained:?}");
        assert_eq!(model.fusion_features(), 256);
    }
    // the built classifier runs a batch: 2 mosaics of 5 frames (3, 90, 32), 4000 samples each
    let config = seed_config("visual_pretrained: false");
    let model = Model::build_with(&config, None, &backbones, &Device::Cpu, 5).unwrap();
    let batch = erc_train::data::Batch {
        indices: vec![0, 1],
        text_ids: Vec::new(),
        visual: Some(Tensor::randn(0f32, 1.0, (2, 3, 90, 32), &Device::Cpu).unwrap()),
        audio: Some(Tensor::randn(0f32, 0.1, (2, 4000), &Device::Cpu).unwrap()),
        labels: vec![0, 1],
        sentiments: Vec::new(),
        missing: Default::default(),
        faces: None,
    };
    let probs = model.predict(&batch).unwrap();
    assert_eq!(probs.dims(), [2, 7]);

    let parse = |extra: &str, from: &str, to: &str| {
        let yaml = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/seeds/frames-lstm-scratch.yml"),
        )
        .unwrap()
        .replace(from, to)
            + extra;
        Config::parse(Path::new("x.yml"), &yaml).map(|_| ())
    };
    parse("", "", "").unwrap();
    for (from, to, key) in [
        (
            "visual_pretrained: false",
            "visual_pretrained: true",
            "visual_pretrained",
        ),
        ("visual_crop: full", "visual_crop: reference", "visual_crop"),
        (
            "modules_fusion: lstm",
            "modules_fusion: concat",
            "modules_audio_encoder",
        ),
        (
            "modules_text_encoder: none",
            "modules_text_encoder: roberta",
            "modules_fusion",
        ),
        (
            "fusion_out_features: 256",
            "fusion_out_features: 0",
            "fusion_out_features",
        ),
        (
            "audio_out_features: 128",
            "audio_out_features: null",
            "audio_out_features",
        ),
        ("visual_frames: 5", "visual_frames: 0", "visual_frames"),
    ] {
        let e = parse("", from, to).unwrap_err().to_string();
        assert!(e.contains(key), "{from} → {to}: {e}");
    }
}
