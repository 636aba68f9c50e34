//! `erc-train selfcheck`: what a GPU machine must confirm, runnable from the binary alone (GPU machines have no
//! Rust toolchain): every op's device path against its CPU kernel ([`crate::ops::check`]), the backbones'
//! [`parity`] with PyTorch on the device, and the [`bench`] timings that `scripts/gpu-check.sh` sets beside
//! PyTorch's. `--device cpu` rehearses the same on the CPU.
//!
//! Every result is handed to a sink as one JSON object the moment it is known (the binary appends each as a line
//! to `--jsonl`), so a run stopped at any point keeps everything it measured.

pub mod bench;
pub mod parity;

use std::path::PathBuf;

use candle_core::Device;
use serde_json::json;

use crate::config::Precision;
use crate::error::Result;

/// The parts of a self-check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Every op on the device against its CPU kernel ([`crate::ops::check`]).
    Ops,
    /// GPT-2, RoBERTa, wav2vec2 and ResNet-50 outputs and weight gradients against PyTorch's (tiny checkpoints),
    /// and TMN's fusion pieces.
    Parity,
    /// Forward + backward timings ([`bench`]).
    Bench,
}

impl std::str::FromStr for Section {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "ops" => Ok(Section::Ops),
            "parity" => Ok(Section::Parity),
            "bench" => Ok(Section::Bench),
            other => Err(format!("section `{other}`: expected ops, parity or bench")),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct SelfcheckOptions {
    /// The backbone fixtures (`trainer/tests/fixtures/backbones`).
    pub fixtures: PathBuf,
    pub sections: Vec<Section>,
    pub plan: bench::Plan,
    pub workloads: Vec<bench::Workload>,
    pub precisions: Vec<Precision>,
}

/// What failed, by kind: a check (ops, parity) or a benchmark row.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub failed_checks: usize,
    pub failed_benchmarks: usize,
}

/// Runs the sections on `device`, printing a line per result and handing each to `sink` as it is known.
pub fn run(
    device: &Device,
    opts: &SelfcheckOptions,
    sink: &mut dyn FnMut(serde_json::Value) -> Result<()>,
) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    let device_name = format!("{device:?}");
    if opts.sections.contains(&Section::Ops) {
        crate::train::device::set_tf32(device, false);
        println!("ops on the device against their CPU kernels (forward values and gradients)");
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
                    outcome.failed_checks += usize::from(!c.passed);
                    sink(json!({
                        "section": "ops", "device": device_name, "op": c.op, "body": c.body,
                        "max_rel_error": c.max_rel_error, "tolerance": c.tolerance, "passed": c.passed,
                        "detail": c.detail,
                    }))?;
                }
            }
            Err(e) => {
                outcome.failed_checks += 1;
                println!("  FAILED: {e}");
                sink(
                    json!({ "section": "ops", "device": device_name, "passed": false, "error": e.to_string() }),
                )?;
            }
        }
    }
    if opts.sections.contains(&Section::Parity) {
        type Check = fn(&std::path::Path, &Device) -> Result<Vec<parity::Compared>>;
        let checks: [(&str, Check); 5] = [
            ("gpt2", parity::gpt2),
            ("roberta", parity::roberta),
            ("wav2vec2", parity::wav2vec2),
            ("resnet50", parity::resnet50),
            ("tmn", parity::tmn),
        ];
        println!(
            "backbone parity with PyTorch (fp32, norm-wise relative error, limit {:e})",
            parity::TOL
        );
        for (name, check) in checks {
            crate::train::device::set_tf32(device, false);
            let value = match check(&opts.fixtures, device) {
                Ok(rows) => {
                    let worst = rows
                        .iter()
                        .filter(|r| !r.zero)
                        .map(|r| r.error)
                        .fold(0.0, f64::max);
                    let verdict = parity::verdict(&rows);
                    match &verdict {
                        Ok(_) => println!("  {name:<10} ok      worst {worst:.2e}"),
                        Err(why) => {
                            println!("  {name:<10} FAILED  {}", why.lines().next().unwrap_or(""))
                        }
                    }
                    json!({
                        "tensors": rows.len(), "worst_relative_error": worst,
                        "passed": verdict.is_ok(), "failures": verdict.as_ref().err(),
                    })
                }
                Err(e) => {
                    println!("  {name:<10} FAILED  {e}");
                    json!({ "passed": false, "error": e.to_string() })
                }
            };
            outcome.failed_checks += usize::from(value["passed"] != json!(true));
            let mut value = value;
            value["section"] = json!("parity");
            value["backbone"] = json!(name);
            value["device"] = json!(device_name);
            sink(value)?;
        }
    }
    if opts.sections.contains(&Section::Bench) {
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
        // precision-major: every workload's fp32 row comes before any tf32 row (a run cut short keeps the
        // reference precision of each)
        for precision in &opts.precisions {
            let name = match precision {
                Precision::Fp32 => "fp32",
                Precision::Tf32 => "tf32",
            };
            crate::train::device::set_tf32(device, *precision == Precision::Tf32);
            for &workload in &opts.workloads {
                let row = bench::run(device, &opts.plan, workload, name);
                match (&row.error, row.forward_s, row.backward_s, row.total_s) {
                    (None, Some(f), Some(b), Some(t)) => println!(
                        "{:<30} {:<6} {:<22} {:>10.4} {:>10.4} {:>10.4} {:>12.1} {:>10}",
                        row.name,
                        row.precision,
                        row.batch,
                        f,
                        b,
                        t,
                        row.samples_per_s.unwrap_or(f64::NAN),
                        row.peak_memory_bytes
                            .map_or("?".into(), crate::train::memory::human)
                    ),
                    _ => {
                        outcome.failed_benchmarks += 1;
                        println!(
                            "{:<30} {:<6} {:<22} failed: {}",
                            row.name,
                            row.precision,
                            row.batch,
                            row.error.as_deref().unwrap_or("no timing")
                        )
                    }
                }
                let mut value = serde_json::to_value(&row)
                    .map_err(|e| crate::error::Error::Other(e.to_string()))?;
                value["section"] = json!("bench");
                value["device"] = json!(device_name);
                sink(value)?;
            }
        }
        crate::train::device::set_tf32(device, false);
    }
    Ok(outcome)
}
