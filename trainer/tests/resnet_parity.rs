//! Parity of the trainable ResNet-50 with torchvision's (fixture `tests/fixtures/backbones/resnet50-tiny/`, see its
//! README): the narrow ResNet-50 is built and loaded from the torchvision state dict through the real loading
//! code, then compared in fp32, norm-wise relative error ≤ 1e-4, against PyTorch's eval output, and — after ONE
//! training-mode forward + backward of `loss = sum(output_train · R)` — its training output, stage activations,
//! the gradients of the input and of every parameter, and every BatchNorm's running statistics. Also the loader's
//! errors for missing, extra and mis-shaped tensors.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use erc_train::encoders::resnet::{load_torchvision, Config, ResNet50};
use erc_train::nn::ParamStore;

mod common;
use common::{assert_parity, backbone_fixture, rel_err};
use erc_train::selfcheck::parity;

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
    let (store, _) = load();
    assert_eq!(store.trainable().len(), 159); // 53 convolutions + 53 BatchNorms × (weight, bias)
    let rows = parity::resnet50(&fixture().join(".."), &Device::Cpu).unwrap();
    let count = |prefix: &str| rows.iter().filter(|r| r.name.starts_with(prefix)).count();
    assert_eq!(
        count("grad."),
        160,
        "the input's and every parameter's gradient"
    );
    assert_eq!(
        count("running_after."),
        2 * 53,
        "every BatchNorm's running mean and variance"
    );
    assert_eq!(count("debug.train."), 5, "the max-pool and the four stages");
    assert_parity("resnet50-tiny vs torchvision", &rows);
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

/// torchvision's own format: `torch.save(model.state_dict())` to a `.pth` (an OrderedDict with its `_metadata`,
/// and `fc.*`), as the file or its folder: the same parity.
#[test]
fn resnet50_from_a_torchvision_pth_matches_too() {
    let pth = backbone_fixture("resnet50-tiny-pth/resnet50-tiny.pth");
    for path in [pth.clone(), pth.parent().unwrap().to_path_buf()] {
        assert_eq!(
            Config::from_checkpoint(&path).unwrap(),
            Config::from_checkpoint(&fixture().join("model.safetensors")).unwrap()
        );
        let rows = parity::resnet50_from(&fixture().join(".."), &path, &Device::Cpu).unwrap();
        assert_eq!(rows.len(), 4 + 5 + 159 + 2 * 53);
        assert_parity("resnet50-tiny.pth vs torchvision", &rows);
    }
    // and through `visual_model`'s resolution, as a hub-less file spec
    let found = erc_train::encoders::hub::resnet50_weights(pth.to_str().unwrap()).unwrap();
    assert_eq!(found, pth);
}

/// `Config::shapes` (what `models check` compares a checkpoint with) is the network `with_config` builds.
#[test]
fn the_layout_shapes_are_those_of_the_built_network() {
    for cfg in [
        Config::resnet50(),
        Config::from_checkpoint(&fixture().join("model.safetensors")).unwrap(),
    ] {
        let mut store = ParamStore::new(&Device::Cpu, 1);
        ResNet50::with_config(&mut store, PREFIX, &cfg, false).unwrap();
        let shapes = cfg.shapes();
        assert_eq!(
            shapes.len(),
            store.named_tensors().len(),
            "every parameter and running statistic"
        );
        for (name, shape) in &shapes {
            let built = store.get(&format!("{PREFIX}.{name}")).unwrap();
            assert_eq!(built.dims(), shape.as_slice(), "{name}");
        }
    }
}
