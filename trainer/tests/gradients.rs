//! Every trainable parameter of every model family receives a non-zero gradient (candle silently drops
//! gradients through some fused ops; this catches a layer cut off from the loss), and one optimiser step on a
//! fixed batch lowers the loss.

use std::collections::HashSet;
use std::path::Path;

use candle_core::{Device, Tensor};
use erc_train::config::Config;
use erc_train::data::GloveVocab;
use erc_train::data::{Batch, MediaCounts};
use erc_train::model::Model;
use erc_train::nn::Ctx;
use erc_train::train::losses::Loss;
use erc_train::train::optim::{AdamW, AdamWConfig};

const CLASSES: &str =
    "classifier_classes: [anger, disgust, fear, joy, neutral, sadness, surprise]\n";

fn vocab(dir: &Path) -> GloveVocab {
    let path = dir.join("glove.txt");
    let words = ["the", "speaker", "said", "happy", "sad", "wow", "okay"];
    let text: String = words
        .iter()
        .enumerate()
        .map(|(i, w)| {
            format!(
                "{w} {}\n",
                (0..8)
                    .map(|j| format!("{:.3}", ((i * 7 + j * 3) % 11) as f32 / 11.0 - 0.4))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        })
        .collect();
    std::fs::write(&path, text).unwrap();
    let wanted: HashSet<String> = words.iter().map(|w| w.to_string()).collect();
    GloveVocab::load(&path, 8, &wanted).unwrap()
}

/// Gaussian values from a seeded generator: candle's own `randn` cannot be seeded on the CPU, and with layers a
/// few units wide an unlucky draw kills every ReLU (all gradients exactly zero), which made this test flaky.
fn seeded_normal(shape: &[usize], std: f32, seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| {
            // Box-Muller.
            let (u1, u2): (f32, f32) = (rng.gen_range(f32::EPSILON..1.0), rng.gen());
            std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

fn batch(b: usize, audio: usize, visual: Option<(usize, usize)>) -> Batch {
    Batch {
        indices: (0..b).collect(),
        text_ids: (0..b).map(|i| vec![0, 1, 2, (3 + i % 4) as u32]).collect(),
        visual: visual.map(|(h, w)| seeded_normal(&[b, 3, h, w], 1.0, 1)),
        audio: Some(seeded_normal(&[b, audio], 1000.0, 2)),
        labels: (0..b).map(|i| [3, 5, 6, 3, 4, 5][i % 6]).collect(),
        sentiments: Vec::new(),
        missing: MediaCounts::default(),
        faces: None,
    }
}

fn check_family(name: &str, yaml: &str, b: usize, visual: Option<(usize, usize)>) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(Path::new(name), &format!("{CLASSES}{yaml}")).unwrap();
    let vocab = vocab(dir.path());
    let model = Model::build(&config, Some(&vocab), &Device::Cpu, 5).unwrap();
    let batch = batch(b, config.audio_samples().max(1), visual);
    let loss_fn = Loss::new(&config);
    let y = batch.one_hot(7, &Device::Cpu).unwrap();
    let mut ctx = Ctx::train(1);
    let out = model.forward(&batch, &mut ctx).unwrap();
    let loss = loss_fn
        .training(&out.probs, &out.logits, &y, &out.hidden, &batch.labels)
        .unwrap();
    let grads = loss.backward().unwrap();
    let params = model.store.trainable();
    assert!(!params.is_empty());
    let mut missing = Vec::new();
    for (pname, var) in &params {
        let norm = grads
            .get(var.as_tensor())
            .map(|g| {
                g.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            })
            .unwrap_or(0.0);
        if !(norm > 0.0 && norm.is_finite()) {
            missing.push(format!("{pname} ({norm})"));
        }
    }
    assert!(
        missing.is_empty(),
        "{name}: no gradient for {} of {} parameters: {missing:?}",
        missing.len(),
        params.len()
    );

    // A few steps on the same batch in eval mode (no dropout noise) lower its loss.
    let mut opt = AdamW::new(
        params,
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
            warmup_steps: 0,
            total_steps: 100,
            max_grad_norm: 1.0,
            constant: false,
        },
    )
    .unwrap();
    let mut eval = Ctx::eval();
    let loss_of = |ctx: &mut Ctx| {
        let out = model.forward(&batch, ctx).unwrap();
        loss_fn
            .training(&out.probs, &out.logits, &y, &out.hidden, &batch.labels)
            .unwrap()
    };
    let before = loss_of(&mut eval).to_scalar::<f32>().unwrap();
    for _ in 0..5 {
        let grads = loss_of(&mut eval).backward().unwrap();
        opt.step(&grads).unwrap();
    }
    let after = loss_of(&mut eval).to_scalar::<f32>().unwrap();
    assert!(after < before, "{name}: loss {before} → {after}");
}

#[test]
fn glove_waveform_concat() {
    check_family(
        "glove-waveform",
        "modules_text_encoder: glove\ntext_out_features: 8\nmodules_audio_encoder: waveform\naudio_in_features: 64\naudio_out_features: 6\nclassifier_loss_fn: dice\nfeedforward_layers:\n  - out_features: 16\n    dropout: 0.2\n",
        6,
        None,
    );
}

#[test]
fn every_loss_reaches_every_parameter() {
    for loss in ["cce", "ce", "focal", "dice+triplet", "ce+triplet"] {
        let alpha = if loss == "focal" {
            "losses_focal_alpha: [1, 2, 3, 1, 0.5, 2, 1]\n"
        } else {
            ""
        };
        check_family(
            loss,
            &format!("modules_text_encoder: glove\ntext_out_features: 8\nclassifier_loss_fn: {loss}\n{alpha}feedforward_l2norm: true\nfeedforward_layers:\n  - out_features: 12\n    dropout: 0.1\n"),
            6,
            None,
        );
    }
}

#[test]
fn attention_fusion_and_waveform_attention() {
    check_family(
        "mha",
        "modules_text_encoder: glove\ntext_out_features: 8\nmodules_audio_encoder: waveform\naudio_in_features: 32\naudio_out_features: 8\naudio_waveform_attention_heads_degree: 2\nmodules_fusion: multi_headed_attn\nfusion_out_features: 16\nfusion_attention_heads_degree: 3\nclassifier_loss_fn: dice\nfeedforward_layers:\n  - out_features: 8\n    dropout: 0.2\n",
        5,
        None,
    );
}

#[test]
fn resnet50_all_modalities() {
    check_family(
        "resnet",
        "modules_text_encoder: glove\ntext_out_features: 8\nmodules_visual_encoder: resnet50\nmodules_audio_encoder: waveform\naudio_in_features: 16\naudio_out_features: 4\nclassifier_loss_fn: dice\nvisual_short_side: 32\nfeedforward_layers:\n  - out_features: 8\n    dropout: 0.0\n",
        2,
        Some((32, 90)),
    );
}

#[test]
fn resnet50_has_torchvision_size_and_names() {
    let config = Config::parse(
        Path::new("v.yml"),
        &format!("{CLASSES}modules_visual_encoder: resnet50\n"),
    )
    .unwrap();
    let model = Model::build(&config, None, &Device::Cpu, 0).unwrap();
    let counts = model.store.parameter_count_by_module();
    // torchvision resnet50 has 25,557,032 parameters, 2,049,000 of them in the removed fc layer.
    assert_eq!(counts["visual"], 25_557_032 - 2_049_000);
    let names: HashSet<String> = model
        .store
        .trainable()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for n in [
        "visual.conv1.weight",
        "visual.bn1.weight",
        "visual.layer1.0.downsample.0.weight",
        "visual.layer4.2.bn3.bias",
        "visual.layer3.5.conv2.weight",
    ] {
        assert!(names.contains(n), "{n} missing");
    }
    assert!(
        !names.contains("visual.bn1.running_mean"),
        "running statistics are buffers, not parameters"
    );
}

/// The ops took the body this run asked for: under `make test-generic` (`ERC_OPS=generic`, and
/// `ERC_EXPECT_OPS=generic` so that a lost `ERC_OPS` cannot go unnoticed) no CPU kernel ran in this process;
/// otherwise the CPU kernels did.
#[test]
fn ops_take_the_body_the_run_asks_for() {
    let x = Tensor::arange(0f32, 24.0, &Device::Cpu)
        .unwrap()
        .reshape((4, 6))
        .unwrap();
    let (gamma, beta) = (
        Tensor::ones(6, candle_core::DType::F32, &Device::Cpu).unwrap(),
        Tensor::zeros(6, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    erc_train::ops::layer_norm(&x, &gamma, &beta, 1e-5).unwrap();
    let counts = erc_train::ops::body_counts();
    if std::env::var("ERC_EXPECT_OPS").as_deref() == Ok("generic") {
        assert!(
            counts.cpu == 0 && counts.generic > 0,
            "ERC_EXPECT_OPS=generic but the ops ran {counts:?} (is ERC_OPS=generic set?)"
        );
    } else if std::env::var_os("ERC_OPS").is_none() {
        assert!(counts.cpu > 0, "no CPU kernel ran: {counts:?}");
    }
}
