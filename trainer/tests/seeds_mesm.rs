//! MESM's pieces against PyTorch (fixtures of `tests/fixtures/mesm/make_mesm.py`): the nucleus masks exactly, the
//! text-guided sparse cross-modal attention block (p = 0.5 and dense) and the whole per-frame ResNet with the block
//! after stage 1 (the resnet50-tiny weights) — outputs, kept positions, the inputs' and every weight's gradient,
//! norm-wise relative error ≤ 1e-4 in fp32.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use erc_train::encoders::resnet_frames::{FramesResNet, SparseSpec};
use erc_train::model::sparse_attention::SparseCrossModalAttention;
use erc_train::nn::ParamStore;
use erc_train::ops::nucleus_mask;
use erc_train::selfcheck::parity::Compared;

mod common;
use common::{assert_parity, backbone_fixture, norm, rel_err};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mesm/io.safetensors")
}

fn io() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(), &Device::Cpu).unwrap()
}

/// Puts `<prefix>.param.<name>` into the store's `<under>.<name>` (the same set of names on both sides).
fn assign(
    io: &HashMap<String, Tensor>,
    prefix: &str,
    store: &ParamStore,
    under: &str,
) -> Vec<String> {
    let marker = format!("{prefix}.param.");
    let mut names: Vec<String> = io
        .keys()
        .filter_map(|k| k.strip_prefix(&marker).map(str::to_string))
        .collect();
    names.sort();
    let ours: Vec<String> = store
        .trainable()
        .into_iter()
        .filter_map(|(n, _)| n.strip_prefix(&format!("{under}.")).map(str::to_string))
        .collect();
    assert_eq!(ours, names, "{prefix}: parameter names");
    for name in &names {
        store
            .assign(
                &format!("{under}.{name}"),
                &io[&format!("{marker}{name}")],
                &fixture(),
            )
            .unwrap();
    }
    names
}

/// Rows for `out`, the inputs' and the parameters' gradients of sum(out · R); `score.bias`'s gradient is zero
/// mathematically (the softmax removes a shift common to a frame's scores) and compared by norm.
fn rows(
    io: &HashMap<String, Tensor>,
    prefix: &str,
    out: &Tensor,
    inputs: &[(&str, &Var)],
    store: &ParamStore,
    under: &str,
    params: &[String],
) -> Vec<Compared> {
    let grads = (out * &io[&format!("{prefix}.R")])
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let mut rows = vec![Compared {
        name: format!("{prefix}.out"),
        error: rel_err(out, &io[&format!("{prefix}.out")]),
        zero: false,
    }];
    let named = inputs
        .iter()
        .map(|(n, v)| (n.to_string(), v.as_tensor().clone()))
        .chain(
            params
                .iter()
                .map(|n| (n.clone(), store.get(&format!("{under}.{n}")).unwrap())),
        );
    for (name, t) in named {
        let key = format!("{prefix}.grad.{name}");
        let g = grads
            .get(&t)
            .unwrap_or_else(|| panic!("no gradient for {key}"));
        let zero = name == "score.bias";
        let error = if zero { norm(g) } else { rel_err(g, &io[&key]) };
        rows.push(Compared {
            name: key,
            error,
            zero,
        });
    }
    rows
}

fn kept(io: &HashMap<String, Tensor>, prefix: &str) -> usize {
    io[&format!("{prefix}.kept")].to_vec1::<f32>().unwrap()[0] as usize
}

/// The nucleus masks of PyTorch's stable descending sort, ties included, on whichever body the run selects.
#[test]
fn nucleus_masks_match_pytorch() {
    let io = io();
    for (p, key) in [(0.5, "nucleus.mask_p05"), (0.7, "nucleus.mask_p07")] {
        let ours = nucleus_mask(&io["nucleus.scores"], p).unwrap();
        assert_eq!(
            ours.to_vec2::<f32>().unwrap(),
            io[key].to_vec2::<f32>().unwrap(),
            "p = {p}"
        );
    }
}

/// The sparse attention block (p = 0.5, and dense) and the per-frame ResNet with it, against PyTorch.
#[test]
fn sparse_attention_and_frames_resnet_match_pytorch() {
    let io = io();
    let mut all = Vec::new();
    for (prefix, p) in [("attention_p05", Some(0.5)), ("attention_dense", None)] {
        let mut store = ParamStore::new(&Device::Cpu, 1);
        let block = SparseCrossModalAttention::new(&mut store, "f", 8, 10, 6, p).unwrap();
        let params = assign(&io, prefix, &store, "f");
        let maps = Var::from_tensor(&io[&format!("{prefix}.maps")]).unwrap();
        let query = Var::from_tensor(&io[&format!("{prefix}.query")]).unwrap();
        let out = block.forward(maps.as_tensor(), query.as_tensor()).unwrap();
        assert_eq!(out.kept, kept(&io, prefix), "{prefix}: positions kept");
        assert_eq!(out.positions, 6 * 4 * 5);
        all.extend(rows(
            &io,
            prefix,
            &out.maps,
            &[("maps", &maps), ("query", &query)],
            &store,
            "f",
            &params,
        ));
    }
    assert!(
        kept(&io, "attention_p05") < 120 / 2,
        "the fixture's nucleus drops positions"
    );

    // the whole per-frame ResNet: resnet50-tiny's weights, the block after stage 1, eval mode
    let mut store = ParamStore::new(&Device::Cpu, 1);
    let spec = SparseSpec {
        stage: 1,
        query: 10,
        features: 6,
        p: Some(0.5),
    };
    let weights = backbone_fixture("resnet50-tiny/model.safetensors");
    let model = FramesResNet::new(&mut store, Some(&weights), Some(spec), false).unwrap();
    let params = assign(&io, "frames", &store, "visual_sparse");
    let mosaics = Var::from_tensor(&io["frames.mosaics"]).unwrap();
    let query = Var::from_tensor(&io["frames.query"]).unwrap();
    let out = model
        .forward(mosaics.as_tensor(), Some(query.as_tensor()), false)
        .unwrap();
    all.extend(rows(
        &io,
        "frames",
        &out,
        &[("mosaics", &mosaics), ("query", &query)],
        &store,
        "visual_sparse",
        &params,
    ));
    assert!(all.len() >= 3 * 6, "{} tensors compared", all.len());
    assert_parity("MESM pieces vs PyTorch", &all);
    // the op took the body the run asks for: under `make test-generic` its generic composition only
    let counts = erc_train::ops::body_counts();
    if std::env::var("ERC_EXPECT_OPS").as_deref() == Ok("generic") {
        assert!(counts.cpu == 0 && counts.generic > 0, "{counts:?}");
    } else if std::env::var_os("ERC_OPS").is_none() {
        assert!(counts.cpu > 0, "{counts:?}");
    }
}

/// In training mode the per-frame ResNet counts the positions it kept: fewer at p = 0.5 than at 0.7, all without
/// the attention (FE2E); each read starts a new count.
#[test]
fn kept_fraction_follows_p() {
    let io = io();
    let weights = backbone_fixture("resnet50-tiny/model.safetensors");
    let mut fractions = Vec::new();
    for p in [Some(0.5), Some(0.7), None] {
        let mut store = ParamStore::new(&Device::Cpu, 3);
        let spec = p.map(|p| SparseSpec {
            stage: 1,
            query: 10,
            features: 6,
            p: Some(p),
        });
        let model = FramesResNet::new(&mut store, Some(&weights), spec, false).unwrap();
        assert_eq!(model.take_kept_fraction(), p.map_or(Some(1.0), |_| None));
        model
            .forward(&io["frames.mosaics"], Some(&io["frames.query"]), true)
            .unwrap();
        let fraction = model.take_kept_fraction().unwrap();
        fractions.push(fraction);
        if p.is_some() {
            assert_eq!(model.take_kept_fraction(), None, "a read resets the count");
        }
    }
    eprintln!("kept fractions at p = 0.5, 0.7, dense: {fractions:?}");
    assert!(
        0.0 < fractions[0] && fractions[0] < fractions[1] && fractions[1] < 1.0,
        "{fractions:?}"
    );
    assert_eq!(fractions[2], 1.0);
}

/// MESM's keys: defaults, and errors that name the key and the fix.
#[test]
fn mesm_keys_are_checked() {
    use erc_train::config::Config;
    let base =
        "classifier_classes: [anger, joy]\nmodules_text_encoder: glove\ntext_out_features: 50\n\
                modules_visual_encoder: resnet50_frames\nvisual_crop: full\n";
    let parse = |extra: &str| Config::parse(Path::new("x.yml"), &format!("{base}{extra}"));
    let err = |extra: &str| parse(extra).unwrap_err().to_string();
    let c = parse("visual_sparse_nucleus_p: 0.5\n").unwrap();
    assert_eq!(
        (c.visual_sparse_stage(), c.visual_sparse_features()),
        (2, 64)
    );
    let again = Config::parse(Path::new("y.yml"), &c.to_yaml().unwrap()).unwrap();
    assert_eq!(again, c);
    // the dense FE2E CNN: no sparse keys, none written back
    let dense = parse("").unwrap().to_yaml().unwrap();
    assert!(!dense.contains("visual_sparse"), "{dense}");
    let e = Config::parse(Path::new("x.yml"), &base.replace("visual_crop: full\n", ""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("visual_crop: full"), "{e}");
    for (extra, needle) in [
        ("visual_sparse_nucleus_p: 0.0\n", "visual_sparse_nucleus_p"),
        ("visual_sparse_nucleus_p: 1.5\n", "(0, 1]"),
        ("visual_sparse_stage: 3\n", "visual_sparse_nucleus_p"),
        (
            "visual_sparse_nucleus_p: 0.5\nvisual_sparse_stage: 5\n",
            "1 to 4",
        ),
        (
            "visual_sparse_nucleus_p: 0.5\nvisual_sparse_features: 0\n",
            "visual_sparse_features",
        ),
    ] {
        let e = err(extra);
        assert!(e.contains(needle), "{extra}: {e}");
    }
    let e = Config::parse(
        Path::new("x.yml"),
        "classifier_classes: [anger, joy]\nmodules_visual_encoder: resnet50\nvisual_sparse_nucleus_p: 0.5\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("resnet50_frames"), "{e}");
    let e = Config::parse(
        Path::new("x.yml"),
        "classifier_classes: [anger, joy]\nmodules_visual_encoder: resnet50_frames\nvisual_crop: full\nvisual_sparse_nucleus_p: 0.5\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("query"), "{e}");
}

/// MESM's audio CNN against PyTorch: the log-mel front end against `torch.stft` and an HTK filter bank, then the
/// CNN (narrowed, BatchNorm in training mode) with the text-guided attention after block 2 — output, kept
/// positions, the query's and every weight's gradient.
#[test]
fn mel_cnn_matches_pytorch() {
    use erc_train::encoders::mel_cnn::{AudioSparseSpec, LogMel, MelCnn};
    let io = io();
    let waveform = &io["mel.waveform"];
    let ours = LogMel::new(&Device::Cpu)
        .unwrap()
        .forward(waveform)
        .unwrap();
    let mut all = vec![Compared {
        name: "mel.log_mel".into(),
        error: rel_err(&ours, &io["mel.log_mel"]),
        zero: false,
    }];
    let mut store = ParamStore::new(&Device::Cpu, 5);
    let spec = AudioSparseSpec {
        stage: 2,
        query: 10,
        features: 6,
        p: 0.5,
    };
    let model = MelCnn::new(&mut store, [4, 8, 8, 12], Some(spec)).unwrap();
    // the fixture's `blocks.*` are the CNN's (under `audio.`), its `block.*` the attention's (`audio_sparse.`)
    let ours_of = |name: &str| match name.strip_prefix("block.") {
        Some(rest) => format!("audio_sparse.{rest}"),
        None => format!("audio.{name}"),
    };
    let mut names: Vec<String> = io
        .keys()
        .filter_map(|k| k.strip_prefix("mel.param.").map(str::to_string))
        .collect();
    names.sort();
    assert_eq!(names.len(), store.trainable().len(), "{names:?}");
    for name in &names {
        store
            .assign(
                &ours_of(name),
                &io[&format!("mel.param.{name}")],
                &fixture(),
            )
            .unwrap();
    }
    let query = Var::from_tensor(&io["mel.query"]).unwrap();
    let out = model
        .forward(waveform, Some(query.as_tensor()), true)
        .unwrap();
    assert_eq!(
        model.take_kept_fraction().unwrap(),
        kept(&io, "mel") as f64 / (2.0 * 16.0 * 6.0)
    );
    let grads = (&out * &io["mel.R"])
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    all.push(Compared {
        name: "mel.out".into(),
        error: rel_err(&out, &io["mel.out"]),
        zero: false,
    });
    let named = std::iter::once(("query".to_string(), query.as_tensor().clone())).chain(
        names
            .iter()
            .map(|n| (n.clone(), store.get(&ours_of(n)).unwrap())),
    );
    for (name, t) in named {
        let key = format!("mel.grad.{name}");
        let g = grads
            .get(&t)
            .unwrap_or_else(|| panic!("no gradient for {key}"));
        let zero = name.ends_with("score.bias");
        let error = if zero { norm(g) } else { rel_err(g, &io[&key]) };
        all.push(Compared {
            name: key,
            error,
            zero,
        });
    }
    assert!(all.len() > 15, "{} tensors compared", all.len());
    assert_parity("MESM audio CNN vs PyTorch", &all);
}
