//! The pieces of the seed systems against PyTorch (fixtures of `tests/fixtures/backbones/make_seeds.py`, see its
//! README): RoBERTa's outputs and every weight gradient on a tiny `RobertaForMaskedLM` checkpoint loaded through the
//! real loading code, its tokenizer's ids against transformers' `RobertaTokenizer`, its training mode; and TMN's
//! tensor fusion, Mixer block, whole Tensor Mixer, cross-attention fusion and Peaking Labels. Norm-wise relative
//! error ≤ 1e-4 in fp32.

use std::path::PathBuf;

use candle_core::Device;
use erc_train::encoders::{hub, roberta};
use erc_train::model::pad_right;
use erc_train::selfcheck::parity;

mod common;
use common::{assert_parity, backbone_fixture, io, norm, rel_err};

fn tiny() -> PathBuf {
    backbone_fixture("roberta-tiny")
}

fn load() -> roberta::LoadedRoberta {
    let dir = hub::resolve(hub::Backbone::Roberta, tiny().to_str().unwrap()).unwrap();
    roberta::load(&dir, roberta::Pooling::Cls, false, &Device::Cpu, 7).unwrap()
}

/// Every hidden state, both poolings, the loss and every weight's gradient against transformers' RoBERTa (the
/// check `erc-train selfcheck` also runs on a GPU), loaded from a `RobertaForMaskedLM` file whose `lm_head.*` the
/// loader must leave out.
#[test]
fn roberta_matches_pytorch_outputs_and_gradients() {
    let loaded = load();
    let names: Vec<String> = loaded.vars.data().lock().unwrap().keys().cloned().collect();
    assert_eq!(names.len(), 37, "{names:?}");
    assert!(names
        .iter()
        .all(|n| !n.starts_with("lm_head") && !n.starts_with("roberta.")));
    let rows = parity::roberta(&backbone_fixture(""), &Device::Cpu).unwrap();
    assert!(rows.len() > 40, "{} tensors compared", rows.len());
    assert_parity("roberta-tiny vs PyTorch", &rows);
}

#[test]
fn roberta_training_mode_trains_every_weight_and_applies_dropout() {
    let io = io("roberta-tiny");
    let loaded = load();
    let encoder = roberta::RobertaEncoder::new(loaded.encoder.model, roberta::Pooling::Mean, true);
    let (ids, mask, r) = (&io["input_ids"], &io["attention_mask"], &io["R_mean"]);
    encoder.model.set_seed(3);
    let train = encoder.forward(ids, mask, true).unwrap();
    let eval = encoder.forward(ids, mask, false).unwrap();
    assert!(
        rel_err(&train, &eval) > 1e-3,
        "dropout must change the output"
    );
    assert_eq!(
        rel_err(&encoder.forward(ids, mask, false).unwrap(), &eval),
        0.0
    );
    // l2 on: unit rows
    let norms = eval
        .sqr()
        .unwrap()
        .sum(1)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-5), "{norms:?}");
    let grads = (&train * r).unwrap().sum_all().unwrap().backward().unwrap();
    for (name, var) in loaded.vars.data().lock().unwrap().iter() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        assert!(norm(g) > 0.0, "zero gradient for {name} in training mode");
    }
}

/// The tokenizer (from `tokenizer.json`, and from `vocab.json` + `merges.txt` alone) gives transformers'
/// `RobertaTokenizer` ids, `<s>` … `</s>` included; a padded batch is its `padding=True` batch; a long text keeps its
/// last tokens.
#[test]
fn roberta_tokenizer_matches_transformers() {
    let text = std::fs::read_to_string(backbone_fixture("roberta_token_ids.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids_of = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    // the texts are longer than the tiny model's 64 positions in its 517-token vocabulary: no cut here
    let from_json = roberta::RobertaTokenizer::from_dir(&tiny(), 4096).unwrap();
    let bare = tempfile::tempdir().unwrap();
    for file in ["vocab.json", "merges.txt"] {
        std::fs::copy(tiny().join(file), bare.path().join(file)).unwrap();
    }
    let from_files = roberta::RobertaTokenizer::from_dir(bare.path(), 4096).unwrap();
    assert_eq!((from_json.pad_id(), from_json.vocab_size()), (1, 517));
    let prompts = json["prompts"].as_array().unwrap();
    assert!(prompts.len() >= 10);
    for (i, p) in prompts.iter().enumerate() {
        let text = p["text"].as_str().unwrap();
        let expected = ids_of(&p["ids"]);
        for tok in [&from_json, &from_files] {
            let ours = tok.encode(text).unwrap();
            assert_eq!(ours, expected, "prompt {i} ({text:?})");
            assert_eq!(tok.decode(&ours).unwrap(), text, "prompt {i} decodes back");
        }
    }
    let batch = &json["batch_padded"];
    let rows: Vec<Vec<u32>> = batch["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| from_json.encode(t.as_str().unwrap()).unwrap())
        .collect();
    let (ids, mask) = pad_right(&rows, 1, 4096, None, &Device::Cpu).unwrap();
    let expected_ids: Vec<Vec<u32>> = batch["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(ids_of)
        .collect();
    let expected_mask: Vec<Vec<u32>> = batch["attention_mask"]
        .as_array()
        .unwrap()
        .iter()
        .map(ids_of)
        .collect();
    assert_eq!(ids.to_vec2::<u32>().unwrap(), expected_ids);
    assert_eq!(mask.to_vec2::<u32>().unwrap(), expected_mask);
    // at most 8 tokens: <s>, the LAST 6 of the text, </s>
    let short = roberta::RobertaTokenizer::from_dir(&tiny(), 8).unwrap();
    let text = prompts[0]["text"].as_str().unwrap();
    let full = from_json.encode(text).unwrap();
    let cut = short.encode(text).unwrap();
    assert_eq!(cut.len(), 8);
    assert_eq!(cut[0], 0);
    assert_eq!(cut[7], 2);
    assert_eq!(cut[1..7], full[full.len() - 7..full.len() - 1]);
}

#[test]
fn roberta_loading_errors_name_the_file_and_the_fix() {
    // without the tokenizer files, resolve names them and the command that fetches the model
    let bare = tempfile::tempdir().unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny().join(file), bare.path().join(file)).unwrap();
    }
    let err = hub::resolve(hub::Backbone::Roberta, bare.path().to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tokenizer.json") && err.contains("hf download roberta-base --include"),
        "{err}"
    );
    // a config whose padding index is not the tokenizer's
    let text = std::fs::read_to_string(tiny().join("config.json")).unwrap();
    let path = bare.path().join("config.json");
    std::fs::write(
        &path,
        text.replace("\"pad_token_id\": 1", "\"pad_token_id\": 3"),
    )
    .unwrap();
    let cfg = roberta::Config::from_file(&path).unwrap();
    let tok = roberta::RobertaTokenizer::from_dir(&tiny(), cfg.max_tokens()).unwrap();
    let err = cfg
        .check_tokenizer(&tok, bare.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("pad_token_id is 3"), "{err}");
    // relative position embeddings are not implemented: said, not silently ignored
    std::fs::write(
        &path,
        text.replace(
            "\"model_type\"",
            "\"position_embedding_type\": \"relative_key\", \"model_type\"",
        ),
    )
    .unwrap();
    let err = roberta::Config::from_file(&path).unwrap_err().to_string();
    assert!(
        err.contains("relative_key") && err.contains("config.json"),
        "{err}"
    );
}

/// TMN's pieces against the PyTorch references: tensor fusion, a Mixer block, the whole Tensor Mixer, the
/// cross-attention fusion with padding, Peaking Labels — outputs and every input's and parameter's gradient.
#[test]
fn tmn_pieces_match_pytorch() {
    let rows = parity::tmn(&backbone_fixture(""), &Device::Cpu).unwrap();
    for piece in [
        "tensor_fusion",
        "mixer_block",
        "tensor_mixer",
        "cross_attention",
        "peak_labels",
    ] {
        assert!(
            rows.iter()
                .any(|r| r.name.starts_with(&format!("{piece}."))),
            "{piece} not compared"
        );
    }
    assert!(rows.len() > 60, "{} tensors compared", rows.len());
    assert_parity("TMN pieces vs PyTorch", &rows);
    // the references are not trivial: PeakL changed the vote-like rows
    let io = io("tmn");
    assert!(rel_err(&io["peak_labels.out"], &io["peak_labels.y_soft"]) > 0.1);
    // the new ops took the body the run asks for: under `make test-generic` their generic compositions only
    let counts = erc_train::ops::body_counts();
    if std::env::var("ERC_EXPECT_OPS").as_deref() == Ok("generic") {
        assert!(counts.cpu == 0 && counts.generic > 0, "{counts:?}");
    } else if std::env::var_os("ERC_OPS").is_none() {
        assert!(counts.cpu > 0, "{counts:?}");
    }
}
