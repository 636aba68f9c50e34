//! What the backbone tests share: where the backbone fixtures are, their `io.safetensors`, and the parity metric.

#![allow(dead_code)] // each test binary uses its own subset

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use erc_train::selfcheck::parity;

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

/// ‖a − b‖₂ / ‖b‖₂ in f64 (the parity metric of `erc_train::selfcheck::parity`).
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    parity::rel_err(a, b).expect("comparable tensors")
}

/// ‖a‖₂ in f64.
pub fn norm(a: &Tensor) -> f64 {
    parity::norm(a).expect("an f32 tensor")
}

/// Prints a parity check's rows and fails the test listing every tensor over the limit; returns the worst error.
pub fn assert_parity(title: &str, rows: &[parity::Compared]) -> f64 {
    println!("{title}");
    for r in rows {
        let what = if r.zero {
            "|rust| (analytically zero)"
        } else {
            "rel err"
        };
        println!("  {:<70} {what} {:.2e}", r.name, r.error);
    }
    let worst = parity::verdict(rows).unwrap_or_else(|failures| panic!("{title}:\n{failures}"));
    println!("  worst relative error {worst:.2e}");
    assert!(
        worst > 0.0,
        "{title}: every tensor compares exactly equal: the check compares nothing"
    );
    worst
}
