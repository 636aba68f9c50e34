//! What the backbone tests share: where the backbone fixtures are, their `io.safetensors`, and the parity metric.

#![allow(dead_code)] // each test binary uses its own subset

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

/// Norm-wise relative error every parity check must stay within (fixtures/backbones/README.md).
pub const TOL: f64 = 1e-4;

/// `trainer/tests/fixtures/backbones/<name>` (a tiny checkpoint folder, or a fixture file).
pub fn backbone_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/backbones")
        .join(name)
}

/// The inputs, outputs and gradients PyTorch recorded for the tiny model `model`.
pub fn io(model: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(backbone_fixture(model).join("io.safetensors"), &Device::Cpu)
        .unwrap()
}

/// ‖a − b‖₂ / ‖b‖₂ in f64; `b` must not be all zeros (those gradients are checked by norm instead).
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let values = |t: &Tensor| -> Vec<f64> {
        t.to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let (a, b) = (values(a), values(b));
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt();
    let norm = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    assert!(norm > 0.0, "reference tensor is all zeros");
    diff / norm
}

/// ‖a‖₂ in f64.
pub fn norm(a: &Tensor) -> f64 {
    a.to_dtype(DType::F64)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
        .sqrt()
}

/// Checks every (name, rust, reference) against [`TOL`] and prints a table; names in `absolute` are gradients
/// that are zero mathematically (fp32 stores rounding noise), checked as ‖rust‖₂ ≤ 1e-6 instead. Panics listing
/// every failure; returns the worst relative error.
pub fn check_all(
    title: &str,
    rows: Vec<(String, Tensor, Tensor)>,
    absolute: &std::collections::BTreeSet<String>,
) -> f64 {
    let mut failures = Vec::new();
    let mut worst: f64 = 0.0;
    println!("{title}");
    for (name, ours, reference) in rows {
        if absolute.contains(&name) {
            let n = norm(&ours);
            println!("  {name:<70} |rust| {n:.2e} (analytically zero)");
            if n > 1e-6 {
                failures.push(format!("{name}: |rust| = {n:.3e} > 1e-6"));
            }
            continue;
        }
        let e = rel_err(&ours, &reference);
        worst = worst.max(e);
        println!("  {name:<70} rel err {e:.2e}");
        if e.is_nan() || e > TOL {
            failures.push(format!("{name}: relative error {e:.3e} > {TOL:e}"));
        }
    }
    println!("  worst relative error {worst:.2e}");
    assert!(failures.is_empty(), "{title}:\n{}", failures.join("\n"));
    worst
}
