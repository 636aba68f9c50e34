//! Seed system 3's pieces against PyTorch (fixtures of `tests/fixtures/faces/make_faces.py`): the face CNN (NN1),
//! the landmarks MLP (NN2), both per frame with the frame mask and their concatenation, the class-weighted
//! cross-entropy (`CrossEntropyLoss(weight=w)`) and `ReduceLROnPlateau`'s learning rates. Outputs and every
//! weight gradient to a norm-wise relative error ≤ 1e-4 in fp32 (also under `ERC_OPS=generic`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use erc_train::data::face_crops::FaceBatch;
use erc_train::model::face_net::{FaceCnn, FaceNet, LandmarksMlp};
use erc_train::nn::params::ParamStore;
use erc_train::selfcheck::parity::Compared;
use erc_train::train::class_weights::{inverse_frequency, weighted_targets};
use erc_train::train::scheduler::Plateau;

mod common;
use common::{assert_parity, rel_err};

const CHANNELS: [usize; 3] = [4, 8, 8];
const SIZE: usize = 16;
const FEATURES: usize = 16;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/faces")
}

fn io() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join("io.safetensors"), &Device::Cpu).unwrap()
}

/// Puts the fixture's `param.<name>` values into every parameter of `store`.
fn load_params(store: &ParamStore, io: &HashMap<String, Tensor>) {
    for (name, _) in store.named_tensors() {
        let value = io
            .get(&format!("param.{name}"))
            .unwrap_or_else(|| panic!("no param.{name} in the fixture"));
        store.assign(&name, value, &dir()).unwrap();
    }
}

fn row(name: &str, ours: &Tensor, torch: &Tensor) -> Compared {
    Compared {
        name: name.to_string(),
        error: rel_err(ours, torch),
        zero: false,
    }
}

/// `y`, then every parameter's gradient of Σ y·R (and the input's, when `x` is a variable).
fn outputs_and_gradients(
    store: &ParamStore,
    io: &HashMap<String, Tensor>,
    prefix: &str,
    y: &Tensor,
    x: Option<&Var>,
) -> Vec<Compared> {
    let mut rows = vec![row(&format!("{prefix}.y"), y, &io[&format!("{prefix}.y")])];
    let grads = (y * &io[&format!("{prefix}.R")])
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let trainable = store.trainable();
    assert!(!trainable.is_empty());
    for (name, var) in trainable {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        rows.push(row(
            &format!("grad.{name}"),
            g,
            &io[&format!("grad.{name}")],
        ));
    }
    if let Some(x) = x {
        let g = grads.get(x.as_tensor()).expect("the input's gradient");
        rows.push(row(
            &format!("{prefix}.grad_x"),
            g,
            &io[&format!("{prefix}.grad_x")],
        ));
    }
    rows
}

#[test]
fn face_cnn_matches_pytorch() {
    let io = io();
    let mut store = ParamStore::new(&Device::Cpu, 1);
    let cnn = FaceCnn::new(&mut store, "cnn", CHANNELS, SIZE, FEATURES).unwrap();
    load_params(&store, &io);
    let x = Var::from_tensor(&io["cnn.x"]).unwrap();
    let y = cnn.forward(x.as_tensor()).unwrap();
    let rows = outputs_and_gradients(&store, &io, "cnn", &y, Some(&x));
    assert_eq!(rows.len(), 1 + 8 + 1, "y, 4 layers' weight and bias, x");
    assert_parity("face CNN (NN1) vs PyTorch", &rows);
    // the convolutions and linear layers took the body the run asks for: under `make test-generic` the generic
    // compositions only
    let counts = erc_train::ops::body_counts();
    if std::env::var("ERC_EXPECT_OPS").as_deref() == Ok("generic") {
        assert!(counts.cpu == 0 && counts.generic > 0, "{counts:?}");
    } else if std::env::var_os("ERC_OPS").is_none() {
        assert!(counts.cpu > 0, "{counts:?}");
    }
}

#[test]
fn landmarks_mlp_matches_pytorch() {
    let io = io();
    let mut store = ParamStore::new(&Device::Cpu, 1);
    let mlp = LandmarksMlp::new(&mut store, "landmarks", FEATURES).unwrap();
    load_params(&store, &io);
    let x = Var::from_tensor(&io["landmarks.x"]).unwrap();
    let y = mlp.forward(x.as_tensor()).unwrap();
    let rows = outputs_and_gradients(&store, &io, "landmarks", &y, Some(&x));
    assert_eq!(rows.len(), 1 + 12 + 1, "y, 6 layers' weight and bias, x");
    assert_parity("landmarks MLP (NN2) vs PyTorch", &rows);
}

/// Both per frame, averaged over the frames with a face (a row without any gets zeros), concatenated.
#[test]
fn face_net_per_frame_fusion_matches_pytorch() {
    let io = io();
    let mut store = ParamStore::new(&Device::Cpu, 1);
    let net = FaceNet::new(&mut store, "visual", Some(CHANNELS), true, SIZE, FEATURES).unwrap();
    assert_eq!(net.out_features(), 2 * FEATURES);
    load_params(&store, &io);
    let batch = FaceBatch {
        crops: io["visual.crops"].clone(),
        landmarks: io["visual.landmarks"].clone(),
        mask: io["visual.mask"].clone(),
    };
    let y = net.forward(&batch).unwrap();
    let faceless = y.get(2).unwrap().abs().unwrap().sum_all().unwrap();
    assert_eq!(
        faceless.to_scalar::<f32>().unwrap(),
        0.0,
        "a row without a face is zeros"
    );
    let rows = outputs_and_gradients(&store, &io, "visual", &y, None);
    assert_eq!(rows.len(), 1 + 8 + 12);
    assert_parity("faces + landmarks per frame vs PyTorch", &rows);
}

/// `CrossEntropyLoss(weight=w)` on class indices: the trainer's cross-entropy on the rescaled targets.
#[test]
fn class_weighted_cross_entropy_matches_pytorch() {
    let io = io();
    let labels: Vec<usize> = io["wce.labels"]
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| *v as usize)
        .collect();
    let weights = inverse_frequency(&labels, 7);
    let w = Tensor::new(weights.as_slice(), &Device::Cpu).unwrap();
    assert!(rel_err(&w, &io["wce.weights"]) < 1e-7, "{weights:?}");
    let mut y = vec![0f32; labels.len() * 7];
    for (i, l) in labels.iter().enumerate() {
        y[i * 7 + l] = 1.0;
    }
    let y = Tensor::from_vec(y, (labels.len(), 7), &Device::Cpu).unwrap();
    let logits = Var::from_tensor(&io["wce.logits"]).unwrap();
    let loss = erc_train::train::losses::cross_entropy(
        logits.as_tensor(),
        &weighted_targets(&y, &w).unwrap(),
    )
    .unwrap();
    let grads = loss.backward().unwrap();
    let rows = vec![
        row("wce.loss", &loss.reshape(1).unwrap(), &io["wce.loss"]),
        row(
            "wce.grad_logits",
            grads.get(logits.as_tensor()).unwrap(),
            &io["wce.grad_logits"],
        ),
    ];
    assert_parity("class-weighted cross-entropy vs PyTorch", &rows);
}

/// The same validation losses give torch's `ReduceLROnPlateau` learning rates, exactly.
#[test]
fn plateau_scheduler_gives_torchs_learning_rates() {
    let text = std::fs::read_to_string(dir().join("plateau.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = json["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    // floats are Python reprs, parsed here (correctly rounded; serde_json's own parsing can miss the last bit)
    let float = |v: &serde_json::Value| v.as_str().unwrap().parse::<f64>().unwrap();
    for case in cases {
        let mut plateau = Plateau::new(
            float(&case["lr"]),
            float(&case["factor"]),
            case["patience"].as_u64().unwrap() as usize,
        );
        let ours: Vec<f64> = case["losses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| plateau.step(float(v)))
            .collect();
        let torch: Vec<f64> = case["lrs"].as_array().unwrap().iter().map(float).collect();
        assert_eq!(ours, torch, "{case}");
    }
}
