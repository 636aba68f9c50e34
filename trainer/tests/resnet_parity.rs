//! Parity of the trainable ResNet-50 with torchvision's (fixture `tests/fixtures/backbones/resnet50-tiny/`, see its
//! README): the narrow ResNet-50 is built and loaded from the torchvision state dict through the real loading
//! code, then compared in fp32, norm-wise relative error ≤ 1e-4, against PyTorch's eval output, and — after ONE
//! training-mode forward + backward of `loss = sum(output_train · R)` — its training output, stage activations,
//! the gradients of the input and of every parameter, and every BatchNorm's running statistics. Also the loader's
//! errors for missing, extra and mis-shaped tensors.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use erc_train::encoders::resnet::{load_torchvision, Config, ResNet50};
use erc_train::nn::ParamStore;

mod common;
use common::{backbone_fixture, check_all, io, rel_err};

const PREFIX: &str = "visual";

fn fixture() -> PathBuf {
    backbone_fixture("resnet50-tiny")
}

fn load() -> (ParamStore, ResNet50) {
    let path = fixture().join("model.safetensors");
    let cfg = Config::from_checkpoint(&path).unwrap();
    assert_eq!(
        cfg,
        Config {
            stem_width: 8,
            widths: [8, 16, 32, 64],
            blocks: [3, 4, 6, 3],
        }
    );
    let mut store = ParamStore::new(&Device::Cpu, 1);
    let model = ResNet50::with_config(&mut store, PREFIX, &cfg, false).unwrap();
    load_torchvision(&store, PREFIX, &path).unwrap();
    assert_eq!(model.out_features(), 256);
    (store, model)
}

#[test]
fn resnet50_matches_torchvision_outputs_gradients_and_running_statistics() {
    let io = io("resnet50-tiny");
    let (store, model) = load();
    let input = &io["input"];

    // Eval mode: the checkpoint's running statistics.
    let started = std::time::Instant::now();
    let eval = model.forward(input, false).unwrap();
    check_all(
        "eval",
        vec![("output_eval".into(), eval, io["output_eval"].clone())],
        &BTreeSet::new(),
    );

    // Training mode: batch statistics, one forward + backward.
    let x = Var::from_tensor(input).unwrap();
    let stages = model.stages(x.as_tensor(), true).unwrap();
    let output = stages
        .last()
        .unwrap()
        .flatten_from(2)
        .unwrap()
        .mean(candle_core::D::Minus1)
        .unwrap();
    let loss = (&output * &io["R"]).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    println!(
        "eval + training forward/backward: {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );

    // the same output through `forward` (which the encoder uses) as through `stages`
    let mut rows = vec![
        (
            "output_train".to_string(),
            output.clone(),
            io["output_train"].clone(),
        ),
        (
            "loss".to_string(),
            loss.reshape(1).unwrap(),
            io["loss"].clone(),
        ),
    ];
    assert_eq!(stages.len(), 5, "the stem's max-pool and four stages");
    for (stage, activation) in ["maxpool", "layer1", "layer2", "layer3", "layer4"]
        .iter()
        .zip(&stages)
    {
        let name = format!("debug.train.{stage}");
        rows.push((name.clone(), activation.clone(), io[&name].clone()));
    }
    check_all("training forward", rows, &BTreeSet::new());

    // Gradients: the input's and every parameter's, and every parameter has one in the fixture.
    let mut rows = vec![(
        "grad.input".to_string(),
        grads.get(x.as_tensor()).expect("input gradient").clone(),
        io["grad.input"].clone(),
    )];
    let trainable: BTreeSet<String> = store
        .trainable()
        .into_iter()
        .map(|(name, _)| name.strip_prefix("visual.").unwrap().to_string())
        .collect();
    let in_fixture: BTreeSet<String> = io
        .keys()
        .filter_map(|k| k.strip_prefix("grad."))
        .filter(|k| *k != "input")
        .map(str::to_string)
        .collect();
    assert_eq!(
        trainable, in_fixture,
        "parameters vs gradients in the fixture"
    );
    assert_eq!(trainable.len(), 159); // 53 convolutions + 53 BatchNorms × (weight, bias)
    for name in &trainable {
        let param = store.get(&format!("{PREFIX}.{name}")).unwrap();
        let grad = grads
            .get(&param)
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        rows.push((
            format!("grad.{name}"),
            grad.clone(),
            io[&format!("grad.{name}")].clone(),
        ));
    }
    let worst = check_all("gradients", rows, &BTreeSet::new());
    assert!(
        worst > 0.0,
        "gradients compare exactly equal: the test compares nothing"
    );

    // Running statistics after that one training forward (PyTorch: unbiased variance, momentum 0.1).
    let mut rows = Vec::new();
    for key in io.keys().filter(|k| k.starts_with("running_after.")) {
        let name = key.strip_prefix("running_after.").unwrap();
        rows.push((
            key.clone(),
            store.get(&format!("{PREFIX}.{name}")).unwrap(),
            io[key].clone(),
        ));
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(rows.len(), 2 * 53);
    check_all(
        "running statistics after the training forward",
        rows,
        &BTreeSet::new(),
    );
}

/// The default configuration is torchvision's real ResNet-50: its parameter count (without `fc`) and names.
#[test]
fn real_resnet50_keeps_torchvision_names_and_widths() {
    let mut store = ParamStore::new(&Device::Cpu, 3);
    let model = ResNet50::new(&mut store, PREFIX, false).unwrap();
    assert_eq!(model.out_features(), 2048);
    // torchvision resnet50 without fc: 25,557,032 − 2,049,000 parameters.
    assert_eq!(store.parameter_count(), 23_508_032);
    for name in [
        "conv1.weight",
        "layer4.2.bn3.running_var",
        "layer2.0.downsample.0.weight",
    ] {
        assert!(store.get(&format!("{PREFIX}.{name}")).is_some(), "{name}");
    }
    assert_eq!(
        store.get("visual.layer4.0.conv1.weight").unwrap().dims(),
        [512, 1024, 1, 1]
    );
}

/// Writes the fixture's checkpoint with `edit` applied to a temporary file and returns the loader's error.
fn load_error(edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> String {
    let path = fixture().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    edit(&mut tensors);
    let dir = tempfile::tempdir().unwrap();
    let edited = dir.path().join("edited.safetensors");
    candle_core::safetensors::save(&tensors, &edited).unwrap();
    let mut store = ParamStore::new(&Device::Cpu, 1);
    ResNet50::with_config(
        &mut store,
        PREFIX,
        &Config::from_checkpoint(&path).unwrap(),
        false,
    )
    .unwrap();
    let err = load_torchvision(&store, PREFIX, &edited)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("edited.safetensors"),
        "error does not name the file: {err}"
    );
    err
}

#[test]
fn loader_names_missing_extra_and_misshaped_tensors() {
    // torchvision's classifier and the BatchNorm counters are ignored, as in the real checkpoint
    let path = fixture().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    assert!(tensors.contains_key("bn1.num_batches_tracked"));
    tensors.insert(
        "fc.weight".into(),
        Tensor::zeros((10, 256), DType::F32, &Device::Cpu).unwrap(),
    );
    tensors.insert(
        "fc.bias".into(),
        Tensor::zeros(10, DType::F32, &Device::Cpu).unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let with_fc = dir.path().join("with_fc.safetensors");
    candle_core::safetensors::save(&tensors, &with_fc).unwrap();
    let mut store = ParamStore::new(&Device::Cpu, 1);
    ResNet50::from_torchvision(&mut store, PREFIX, &with_fc, false).unwrap();
    let loaded = store.get("visual.layer3.5.bn2.running_var").unwrap();
    assert_eq!(rel_err(&loaded, &tensors["layer3.5.bn2.running_var"]), 0.0);

    let err = load_error(|t| {
        t.remove("layer2.1.bn2.running_mean");
    });
    assert!(err.contains("`layer2.1.bn2.running_mean` missing"), "{err}");

    let err = load_error(|t| {
        t.insert(
            "layer1.0.conv4.weight".into(),
            Tensor::zeros((8, 8, 1, 1), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    assert!(err.contains("`layer1.0.conv4.weight` is not part"), "{err}");

    let err = load_error(|t| {
        t.insert(
            "layer3.2.conv2.weight".into(),
            Tensor::zeros((32, 32, 1, 1), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    assert!(
        err.contains("layer3.2.conv2.weight") && err.contains("[32, 32, 1, 1]"),
        "{err}"
    );

    // not a ResNet, not safetensors
    let gpt2 = fixture().join("../gpt2-tiny/model.safetensors");
    let err = Config::from_checkpoint(&gpt2).unwrap_err().to_string();
    assert!(
        err.contains("gpt2-tiny/model.safetensors") && err.contains("`conv1.weight`"),
        "{err}"
    );
    let json = fixture().join("config.json");
    let err = Config::from_checkpoint(&json).unwrap_err().to_string();
    assert!(err.contains("config.json"), "{err}");
}
