//! The trainer's numbers against PyTorch 2.0.1 / scikit-learn 1.3.0 on the same inputs: the fixtures in
//! `tests/fixtures/` are written once by `tests/fixtures/make_fixtures.py` (see its header for the exact
//! environment).

use std::path::Path;

use candle_core::{Device, Tensor, Var, D};
use erc_train::train::losses;
use erc_train::train::metrics::Metrics;
use erc_train::train::optim::{AdamW, AdamWConfig};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(items) => items.iter().flat_map(floats).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap() as f32],
        other => panic!("not a number: {other}"),
    }
}

fn matrix(v: &Value) -> Tensor {
    let rows = v.as_array().unwrap().len();
    let flat = floats(v);
    Tensor::from_vec(flat.clone(), (rows, flat.len() / rows), &Device::Cpu).unwrap()
}

fn indices(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn one_hot(labels: &[usize], classes: usize) -> Tensor {
    let mut y = vec![0f32; labels.len() * classes];
    for (i, l) in labels.iter().enumerate() {
        y[i * classes + l] = 1.0;
    }
    Tensor::from_vec(y, (labels.len(), classes), &Device::Cpu).unwrap()
}

fn close(a: f64, b: f64, rel: f64, what: &str) {
    assert!(
        (a - b).abs() <= rel * b.abs().max(1e-3),
        "{what}: {a} vs reference {b}"
    );
}

#[test]
fn metrics_match_sklearn() {
    let f = fixture("metrics.json");
    let classes: Vec<String> = f["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    for case in f["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let m = Metrics::compute(
            &classes,
            &indices(&case["y_true"]),
            &indices(&case["y_pred"]),
        );
        close(m.accuracy, case["accuracy"].as_f64().unwrap(), 1e-12, name);
        close(
            m.f1_weighted,
            case["f1_weighted"].as_f64().unwrap(),
            1e-12,
            name,
        );
        close(
            m.f1_weighted,
            case["f1_weighted_present"].as_f64().unwrap(),
            1e-12,
            name,
        );
        for (key, ours) in [
            ("precision", &m.precision),
            ("recall", &m.recall),
            ("f1", &m.f1),
        ] {
            let reference = floats(&case[key]);
            assert_eq!(ours.len(), reference.len(), "{name} {key}: class count");
            for (a, b) in ours.iter().zip(&reference) {
                close(*a, *b as f64, 1e-6, &format!("{name} {key}"));
            }
        }
        assert_eq!(m.support, indices(&case["support"]), "{name}");
        let confusion: Vec<Vec<usize>> = case["confusion"]
            .as_array()
            .unwrap()
            .iter()
            .map(indices)
            .collect();
        assert_eq!(m.confusion, confusion, "{name}");
        assert_eq!(m.report(), case["report"].as_str().unwrap(), "{name}");
    }
}

#[test]
fn adamw_schedule_and_clipping_match_pytorch() {
    let f = fixture("optimizer.json");
    let h = &f["hyper"];
    let weight = Var::from_tensor(&matrix(&f["init"]["weight"])).unwrap();
    let bias = Var::from_vec(floats(&f["init"]["bias"]), 3, &Device::Cpu).unwrap();
    let mut opt = AdamW::new(
        vec![
            ("weight".into(), weight.clone()),
            ("bias".into(), bias.clone()),
        ],
        AdamWConfig {
            lr: h["lr"].as_f64().unwrap(),
            beta1: h["betas"][0].as_f64().unwrap(),
            beta2: h["betas"][1].as_f64().unwrap(),
            eps: h["eps"].as_f64().unwrap(),
            weight_decay: h["weight_decay"].as_f64().unwrap(),
            warmup_steps: h["warmup_steps"].as_u64().unwrap() as usize,
            total_steps: h["total_steps"].as_u64().unwrap() as usize,
            max_grad_norm: h["max_grad_norm"].as_f64().unwrap(),
            constant: false,
        },
    )
    .unwrap();
    let mut clipped = 0;
    for (k, step) in f["steps"].as_array().unwrap().iter().enumerate() {
        // A loss whose gradient is exactly the fixture's gradient: Σ w·G_w + Σ b·G_b.
        let gw = matrix(&step["grad"]["weight"]);
        let gb = Tensor::from_vec(floats(&step["grad"]["bias"]), 3, &Device::Cpu).unwrap();
        let loss = ((weight.as_tensor() * &gw).unwrap().sum_all().unwrap()
            + (bias.as_tensor() * &gb).unwrap().sum_all().unwrap())
        .unwrap();
        let info = opt.step(&loss.backward().unwrap()).unwrap();
        let norm = step["grad_norm_before_clip"].as_f64().unwrap();
        close(
            info.grad_norm.value().unwrap(),
            norm,
            1e-6,
            &format!("step {k} grad norm"),
        );
        close(
            info.lr,
            step["lr_used"].as_f64().unwrap(),
            1e-12,
            &format!("step {k} lr"),
        );
        if norm > 1.0 {
            clipped += 1;
        }
        for (name, var) in [("weight", &weight), ("bias", &bias)] {
            let ours = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let reference = floats(&step["after"][name]);
            assert_eq!(ours.len(), reference.len(), "step {k} {name}: value count");
            for (a, b) in ours.iter().zip(&reference) {
                assert!((a - b).abs() < 2e-6, "step {k} {name}: {a} vs {b}");
            }
        }
    }
    assert!(
        clipped > 0 && clipped < 10,
        "the fixture exercises both clipped and unclipped steps"
    );
}

#[test]
fn losses_and_their_gradients_match_pytorch() {
    let f = fixture("losses.json");
    for case in f["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let labels = indices(&case["y"]);
        let logits = Var::from_tensor(&matrix(&case["logits"])).unwrap();
        let classes = logits.as_tensor().dim(1).unwrap();
        let y = one_hot(&labels, classes);
        let probs = candle_nn::ops::softmax(logits.as_tensor(), D::Minus1).unwrap();
        let kind = case["loss"].as_str().unwrap();
        let hidden = (!case["hidden"].is_null())
            .then(|| Var::from_tensor(&matrix(&case["hidden"])).unwrap());
        let value = match kind {
            "cce" => losses::cce(&probs, &y),
            "ce" => losses::cross_entropy(logits.as_tensor(), &y),
            "dice" => losses::dice(&probs, &y, 1e-8),
            "focal" => {
                let alpha =
                    Tensor::from_vec(floats(&case["alpha"]), classes, &Device::Cpu).unwrap();
                let mean = case["reduction"].as_str() == Some("mean");
                losses::focal(
                    &probs,
                    &y,
                    &alpha,
                    case["gamma"].as_f64().unwrap(),
                    1e-8,
                    mean,
                )
            }
            "triplet" => losses::triplet(hidden.as_ref().unwrap().as_tensor(), &labels, 1e-8),
            other => panic!("unknown loss {other}"),
        }
        .unwrap();
        let ours = value.to_scalar::<f32>().unwrap() as f64;
        close(ours, case["value"].as_f64().unwrap(), 2e-5, name);
        let grads = value.backward().unwrap();
        for (key, var) in [
            ("grad_logits", Some(&logits)),
            ("grad_hidden", hidden.as_ref()),
        ] {
            if case[key].is_null() {
                continue;
            }
            let reference = floats(&case[key]);
            let ours: Vec<f32> = match grads.get(var.unwrap().as_tensor()) {
                Some(g) => g.flatten_all().unwrap().to_vec1().unwrap(),
                None => vec![0.0; reference.len()],
            };
            assert_eq!(ours.len(), reference.len(), "{name} {key}: value count");
            let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
            for (i, (a, b)) in ours.iter().zip(&reference).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4 * scale + 1e-7,
                    "{name} {key}[{i}]: {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn spec_unit_checks_reproduce() {
    let f = fixture("losses.json");
    for case in f["spec_unit_checks"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let p = matrix(&case["p"]);
        let y = matrix(&case["y_onehot"]);
        let value = match case["loss"].as_str().unwrap() {
            "cce" => losses::cce(&p, &y),
            "dice" => losses::dice(&p, &y, 1e-8),
            "focal" => {
                let alpha =
                    Tensor::from_vec(floats(&case["alpha"]), p.dim(1).unwrap(), &Device::Cpu)
                        .unwrap();
                losses::focal(&p, &y, &alpha, case["gamma"].as_f64().unwrap(), 1e-8, true)
            }
            other => panic!("{other}"),
        }
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
        assert!(
            (value - case["expected_spec"].as_f64().unwrap()).abs() < 1e-6,
            "{name}: {value}"
        );
    }
}
