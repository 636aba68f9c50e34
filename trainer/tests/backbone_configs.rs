//! Every Table-4 config family that uses a pretrained backbone, and every seed-system config, builds its model
//! through the real loading path (`Backbones::resolve` → `Model::build_with`) and takes one training step, with the
//! tiny checkpoints of the backbone fixtures standing in for GPT-2, RoBERTa, wav2vec2 and ResNet-50 (same
//! architectures and file layouts, random weights; see `fixtures/backbones/README.md`).
//!
//! The configs are the files of `configs/`, unchanged except for what the tiny models and CI need: the model
//! locations, `audio_in_features` 16 000 (the reference's 150 000–250 000 would make the waveform MLP's first
//! layer 22–460 M parameters), `visual_short_side` 64, a batch of 4, and no warm-up (whose first step has a
//! learning rate of 0).
//!
//! Each test checks that the backbone's weights are the checkpoint's (by name, under the module prefix), that the
//! step's loss is finite, and that the step changed weights in every backbone and in the head.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use erc_train::config::{Config, TextEncoder};
use erc_train::data::GloveVocab;
use erc_train::data::Gpt2Tokenizer;
use erc_train::data::{Batch, MediaCounts};
use erc_train::encoders::roberta::RobertaTokenizer;
use erc_train::model::{Backbones, Model};
use erc_train::nn::Ctx;
use erc_train::train::losses::Loss;
use erc_train::train::optim::{AdamW, AdamWConfig};

const BATCH: usize = 4;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

mod common;
use common::backbone_fixture as fixture;

fn checkpoint(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join("model.safetensors"), &Device::Cpu).unwrap()
}

/// `configs/<file>` pointed at the tiny checkpoints and shrunk for a test.
fn config(file: &str) -> Config {
    let path = repo().join("configs").join(file);
    let mut config = Config::load(&path).unwrap().config;
    let text = match config.modules_text_encoder {
        TextEncoder::Roberta => "roberta-tiny",
        _ => "gpt2-tiny",
    };
    config.text_model = Some(fixture(text).display().to_string());
    config.audio_model = Some(fixture("wav2vec2-tiny").display().to_string());
    config.visual_model = Some(fixture("resnet50-tiny").display().to_string());
    if config.audio_in_features.is_some() {
        config.audio_in_features = Some(16_000);
    }
    config.visual_short_side = Some(64);
    // The reference's schedule gives the first step a learning rate of 0 (warm-up from 0); one step must move.
    config.classifier_warmup_steps = 0;
    config
}

/// GloVe-format vectors for the words of the test prompts.
fn glove_vocab(dir: &Path, dim: usize) -> GloveVocab {
    let words = [
        "the", "speaker", "said", "joey", "no", "way", "oh", "my", "god",
    ];
    let text: String = words
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let values: Vec<String> = (0..dim)
                .map(|j| format!("{:.3}", ((i * 7 + j * 3) % 11) as f32 / 11.0 - 0.4))
                .collect();
            format!("{w} {}\n", values.join(" "))
        })
        .collect();
    let path = dir.join("glove.txt");
    std::fs::write(&path, text).unwrap();
    GloveVocab::load(&path, dim, &words.iter().map(|w| w.to_string()).collect()).unwrap()
}

fn seeded(shape: &[usize], scale: f32, seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.gen_range(-scale..scale)).collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// A batch of MELD-like prompts, images and int16-scale audio of the config's sizes.
fn batch(config: &Config, vocab: Option<&GloveVocab>) -> Batch {
    let prompts = [
        "The speaker \"Joey\" said:\n###\nHow you doin\u{92}?\n###",
        "The speaker \"Ross\" said:\n###\nWe were on a break!\n###",
        "The speaker \"Monica\" said:\n###\nOh my God.\n###\n\n\nThe speaker \"Chandler\" said:\n###\nCould I BE any more\u{85}\n###",
        "The speaker \"Phoebe\" said:\n###\nNo way.\n###",
    ];
    let text_ids = match config.modules_text_encoder {
        TextEncoder::Gpt2 => {
            let tokenizer = Gpt2Tokenizer::from_dir(&fixture("gpt2-tiny")).unwrap();
            prompts
                .iter()
                .map(|p| tokenizer.encode(p).unwrap())
                .collect()
        }
        TextEncoder::Roberta => {
            let tokenizer = RobertaTokenizer::from_dir(&fixture("roberta-tiny"), 64).unwrap();
            prompts
                .iter()
                .map(|p| tokenizer.encode(p).unwrap())
                .collect()
        }
        TextEncoder::Glove => {
            let vocab = vocab.unwrap();
            prompts
                .iter()
                .map(|p| {
                    erc_train::data::basic_english(p)
                        .iter()
                        .filter_map(|t| vocab.id(t))
                        .collect()
                })
                .collect()
        }
        TextEncoder::None => Vec::new(),
    };
    let prep = erc_train::data::Preprocess::new(config);
    Batch {
        indices: (0..BATCH).collect(),
        text_ids,
        visual: prep.visual.map(|spec| {
            let (c, h, w) = spec.shape();
            seeded(&[BATCH, c, h, w], 1.5, 1)
        }),
        audio: prep
            .audio
            .map(|spec| seeded(&[BATCH, spec.samples], 3000.0, 2)),
        labels: vec![3, 5, 3, 5],
        sentiments: if config.sentiment_weight().is_some() {
            vec![0, 2, 1, 0]
        } else {
            Vec::new()
        },
        missing: MediaCounts::default(),
        faces: None,
    }
}

/// Builds `file`'s model on the tiny backbones, checks the loaded weights, takes one step, checks what moved.
fn one_step(file: &str) {
    let config = config(file);
    let dir = tempfile::tempdir().unwrap();
    let vocab = (config.modules_text_encoder == TextEncoder::Glove)
        .then(|| glove_vocab(dir.path(), config.text_out_features.unwrap() as usize));
    let backbones = Backbones::resolve(&config).unwrap();
    let model = Model::build_with(&config, vocab.as_ref(), &backbones, &Device::Cpu, 7).unwrap();

    // The backbones hold the checkpoint's values, under their module prefix.
    let mut watched = vec!["head.logits.weight".to_string()];
    let mut expect_loaded = |prefix: &str, fixture_name: &str, names: &[&str], strip: &str| {
        let tensors = checkpoint(fixture_name);
        for name in names {
            let ours = model
                .store
                .get(&format!("{prefix}.{name}"))
                .unwrap_or_else(|| panic!("{file}: no parameter {prefix}.{name}"));
            let theirs = &tensors[&format!("{strip}{name}")];
            let diff = (ours - theirs).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(
                diff.to_scalar::<f32>().unwrap(),
                0.0,
                "{file}: {prefix}.{name}"
            );
            watched.push(format!("{prefix}.{name}"));
        }
    };
    if backbones.gpt2.is_some() {
        expect_loaded(
            "text",
            "gpt2-tiny",
            &["h.0.attn.c_attn.weight", "h.1.mlp.c_proj.weight"],
            "",
        );
    }
    if backbones.roberta.is_some() {
        expect_loaded(
            "text",
            "roberta-tiny",
            &[
                "encoder.layer.0.attention.self.query.weight",
                "embeddings.word_embeddings.weight",
            ],
            "roberta.",
        );
    }
    if backbones.wav2vec2.is_some() {
        expect_loaded(
            "audio",
            "wav2vec2-tiny",
            &[
                "feature_extractor.conv_layers.0.conv.weight",
                "encoder.layers.1.feed_forward.output_dense.weight",
            ],
            "wav2vec2.",
        );
    }
    if backbones.resnet50.is_some() {
        expect_loaded(
            "visual",
            "resnet50-tiny",
            &["conv1.weight", "layer4.2.conv3.weight"],
            "",
        );
    }

    // the seed systems' fusions and second head move too
    for name in [
        "fusion.stem.weight",
        "fusion.blocks.1.token_mixing.fc1.weight",
        "fusion.text_to_audio.q_proj.weight",
        "sentiment_head.logits.weight",
        "visual_sparse.query_proj.weight",
        "visual_sparse.score.weight",
        "audio_sparse.score.weight",
        "audio.blocks.0.conv.weight",
    ] {
        if model.store.get(name).is_some() {
            watched.push(name.to_string());
        }
    }
    let before: Vec<Tensor> = watched
        .iter()
        .map(|n| model.store.get(n).unwrap().copy().unwrap())
        .collect();
    let batch = batch(&config, vocab.as_ref());
    let loss_fn = Loss::new(&config);
    let mut optimizer = AdamW::new(
        model.store.trainable(),
        AdamWConfig::for_experiment(&config, 10),
    )
    .unwrap();
    let mut ctx = Ctx::train(3);
    let out = model.forward(&batch, &mut ctx).unwrap();
    assert_eq!(out.probs.dims(), [BATCH, 7], "{file}");
    assert_eq!(
        out.sentiment_logits.as_ref().map(|t| t.dims().to_vec()),
        config.sentiment_weight().map(|_| vec![BATCH, 3]),
        "{file}: a sentiment head exactly when the config asks for one"
    );
    let loss = loss_fn.step(&out, &batch, 7).unwrap();
    let value = loss.to_scalar::<f32>().unwrap();
    assert!(value.is_finite(), "{file}: loss {value}");
    optimizer.step(&loss.backward().unwrap()).unwrap();
    for (name, old) in watched.iter().zip(&before) {
        let new = model.store.get(name).unwrap();
        let moved = (&new - old).unwrap().abs().unwrap().max_all().unwrap();
        assert!(
            moved.to_scalar::<f32>().unwrap() > 0.0,
            "{file}: one step did not change {name}"
        );
    }
}

#[test]
fn gpt2_text_only() {
    one_step("t-um-gpt2.yml");
}

#[test]
fn wav2vec2_audio_only() {
    one_step("a-um-wav2vec2.yml");
}

#[test]
fn pretrained_resnet50_visual_only() {
    // v-um-retinaface.yml is the same model on the face-only images.
    one_step("v-um-resnet50.yml");
}

#[test]
fn glove_resnet50_wav2vec2_concat() {
    one_step("a-mm-wav2vec2.yml");
}

#[test]
fn gpt2_resnet50_waveform_concat() {
    one_step("t-mm-gpt2.yml");
}

#[test]
fn gpt2_resnet50_waveform_attention() {
    // final-i01 … final-i04
    one_step("final-i04-waveform-200Kx256mha.yml");
}

#[test]
fn gpt2_resnet50_wav2vec2_attention() {
    // final-i05 … final-i10, fusion-mha-adv
    one_step("final-i08-wd0_1-mha1024-ff1024x512x512da02.yml");
}

#[test]
fn gpt2_resnet50_wav2vec2_concat() {
    one_step("fusion-concat-adv.yml");
}

#[test]
fn gpt2_resnet50_wav2vec2_dice_triplet() {
    one_step("losses-dice_triplet.yml");
}

#[test]
fn tmn_roberta_wav2vec2_tensor_mixer() {
    one_step("seeds/tmn.yml");
}

#[test]
fn tmn_ablation_concat() {
    one_step("seeds/tmn-concat.yml");
}

#[test]
fn tmn_ablation_cross_attention() {
    one_step("seeds/tmn-xattn.yml");
}

#[test]
fn mesm_sparse_attention_p05() {
    one_step("seeds/mesm-p05.yml");
}

#[test]
fn mesm_sparse_attention_p07() {
    one_step("seeds/mesm-p07.yml");
}

#[test]
fn mesm_dense_fe2e() {
    one_step("seeds/mesm-dense.yml");
}
