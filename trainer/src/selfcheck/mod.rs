//! `erc-train selfcheck`: what a GPU machine must confirm, runnable from the binary alone (GPU machines have no
//! Rust toolchain): every op's device path against its CPU kernel ([`crate::ops::check`]), the backbones'
//! [`parity`] with PyTorch on the device, and the [`bench`] timings that
//! `scripts/gpu-check.sh` sets beside PyTorch's. `--device cpu` rehearses the same on the CPU.

pub mod bench;
pub mod parity;

use std::path::PathBuf;

use candle_core::Device;
use serde_json::json;

use crate::config::Precision;
use crate::error::Result;

/// What to run.
#[derive(Debug, Clone)]
pub struct SelfcheckOptions {
    /// The backbone fixtures (`trainer/tests/fixtures/backbones`).
    pub fixtures: PathBuf,
    /// Every op on the device against its CPU kernel ([`crate::ops::check`]).
    pub ops: bool,
    pub parity: bool,
    pub bench: bool,
    pub scale: bench::Scale,
    pub precisions: Vec<Precision>,
    pub iterations: usize,
    /// ResNet-50's batch (the reference trained it at 64).
    pub resnet_batch: usize,
}

/// Runs the checks on `device`, prints a table per section and returns everything as JSON; `ok` is false when a
/// parity check failed.
pub fn run(device: &Device, opts: &SelfcheckOptions) -> Result<(bool, serde_json::Value)> {
    let mut ok = true;
    let mut out = serde_json::Map::new();
    out.insert("device".into(), json!(format!("{device:?}")));
    if opts.ops {
        crate::train::device::set_tf32(device, false);
        println!("ops on the device against their CPU kernels (forward values and gradients)");
        let mut rows = Vec::new();
        match crate::ops::check::compare_with_cpu(device) {
            Ok(checks) => {
                for c in &checks {
                    println!(
                        "  {:<24} {:<8} {:<7} max rel err {:.2e} (limit {:.0e})",
                        c.op,
                        c.body,
                        if c.passed { "ok" } else { "FAILED" },
                        c.max_rel_error,
                        c.tolerance
                    );
                    ok &= c.passed;
                    rows.push(json!({
                        "op": c.op, "body": c.body, "max_rel_error": c.max_rel_error,
                        "tolerance": c.tolerance, "passed": c.passed, "detail": c.detail,
                    }));
                }
            }
            Err(e) => {
                ok = false;
                println!("  FAILED: {e}");
                rows.push(json!({ "error": e.to_string() }));
            }
        }
        out.insert("ops".into(), serde_json::Value::Array(rows));
    }
    if opts.parity {
        let mut sections = serde_json::Map::new();
        type Check = fn(&std::path::Path, &Device) -> Result<Vec<parity::Compared>>;
        let checks: [(&str, Check); 3] = [
            ("gpt2", parity::gpt2),
            ("wav2vec2", parity::wav2vec2),
            ("resnet50", parity::resnet50),
        ];
        println!(
            "backbone parity with PyTorch (fp32, norm-wise relative error, limit {:e})",
            parity::TOL
        );
        for (name, check) in checks {
            crate::train::device::set_tf32(device, false);
            let (verdict, value) = match check(&opts.fixtures, device) {
                Ok(rows) => {
                    let worst = rows
                        .iter()
                        .filter(|r| !r.zero)
                        .map(|r| r.error)
                        .fold(0.0, f64::max);
                    let verdict = parity::verdict(&rows);
                    let value = json!({
                        "tensors": rows.len(),
                        "worst_relative_error": worst,
                        "passed": verdict.is_ok(),
                        "failures": verdict.as_ref().err(),
                    });
                    (verdict.map(|_| worst), value)
                }
                Err(e) => (
                    Err(e.to_string()),
                    json!({ "passed": false, "error": e.to_string() }),
                ),
            };
            match &verdict {
                Ok(worst) => println!("  {name:<10} ok      worst {worst:.2e}"),
                Err(why) => {
                    ok = false;
                    println!("  {name:<10} FAILED  {}", why.lines().next().unwrap_or(""));
                }
            }
            sections.insert(name.into(), value);
        }
        out.insert("parity".into(), serde_json::Value::Object(sections));
    }
    if opts.bench {
        let mut rows = Vec::new();
        println!(
            "{:<30} {:<6} {:<22} {:>10} {:>10} {:>10} {:>12} {:>10}",
            "forward+backward",
            "prec",
            "batch",
            "fwd s",
            "bwd s",
            "total s",
            "samples/s",
            "peak mem"
        );
        for precision in &opts.precisions {
            let name = match precision {
                Precision::Fp32 => "fp32",
                Precision::Tf32 => "tf32",
            };
            crate::train::device::set_tf32(device, *precision == Precision::Tf32);
            for row in [
                bench::gpt2(device, opts.scale, name, opts.iterations),
                bench::wav2vec2(device, opts.scale, name, opts.iterations),
                bench::resnet50(device, opts.scale, name, opts.iterations, opts.resnet_batch),
                bench::full_step(device, opts.scale, name, opts.iterations),
            ] {
                match &row.error {
                    None => println!(
                        "{:<30} {:<6} {:<22} {:>10.4} {:>10.4} {:>10.4} {:>12.1} {:>10}",
                        row.name,
                        row.precision,
                        row.batch,
                        row.forward_s,
                        row.backward_s,
                        row.total_s,
                        row.samples_per_s,
                        row.peak_memory_bytes
                            .map_or("?".into(), crate::train::memory::human)
                    ),
                    Some(e) => println!(
                        "{:<30} {:<6} {:<22} failed: {e}",
                        row.name, row.precision, row.batch
                    ),
                }
                rows.push(row);
            }
        }
        crate::train::device::set_tf32(device, false);
        out.insert(
            "bench".into(),
            serde_json::to_value(&rows).unwrap_or_default(),
        );
    }
    out.insert("ok".into(), json!(ok));
    Ok((ok, serde_json::Value::Object(out)))
}
