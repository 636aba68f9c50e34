//! Every op of [`crate::ops`] on a device against its CPU kernel: [`compare_with_cpu`].
//!
//! For each op (with or without a CUDA kernel) the same seeded inputs run twice: through the op's CPU kernel on
//! the CPU (the reference; called directly, so `ERC_OPS=generic` does not change it), and through what the op
//! runs on `device` — on a GPU the public function, i.e. the op's CUDA kernel where it has one and its generic
//! composition otherwise; on the CPU the generic composition (so that the comparison can be rehearsed on a
//! machine without a GPU). Compared: the forward values, the gradients of every input that has one (back-propagated
//! from a seeded upstream gradient), and the state an op moves (BatchNorm's running statistics, AdamW's parameter
//! and moments).
//!
//! The error of a compared tensor is norm-wise relative: `max|a − r| / max|r|` (`max|a − r|` where `r` is all
//! zeros); an op's error is the largest over its compared tensors and cases. A CUDA kernel must agree with the
//! CPU kernel to [`KERNEL_TOLERANCE`]; a generic composition, which rounds differently by construction (other
//! summation orders, candle's libm erf, composed divisions), to [`GENERIC_TOLERANCE`].
//!
//! Dropout is compared value for value too: off the CPU its masks come from a counter-based generator whose
//! factors the host computes exactly ([`dropout::Counter`]); the masked ops (`linear`, `softmax_dropout`) get one
//! counter mask for both runs (its host factors for the CPU kernel), and `dropout`'s drop rate is checked to be p.

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::nucleus;
use super::{
    adamw, batch_norm, concat_l2, conv1d, conv2d, dropout, gelu, group_norm, layer_norm, linear,
    loss, peak_labels, pool, softmax, softmax_dropout, tensor_fusion, Kernel, Mask,
};
use crate::error::{Error, Result};

/// A CUDA kernel against the CPU kernel (norm-wise relative).
pub const KERNEL_TOLERANCE: f64 = 1e-5;

/// A generic composition against the CPU kernel (norm-wise relative).
pub const GENERIC_TOLERANCE: f64 = 1e-4;

/// The result for one op.
#[derive(Debug, Clone)]
pub struct OpCheck {
    /// The op, as its file and function are named (`layer_norm`, `loss::focal`, …).
    pub op: &'static str,
    /// What ran on the device: `cuda` (the op's CUDA kernel) or `generic` (composed candle ops).
    pub body: &'static str,
    /// The largest norm-wise relative error over the compared tensors of every case.
    pub max_rel_error: f64,
    /// The tolerance the error is held to ([`KERNEL_TOLERANCE`] or [`GENERIC_TOLERANCE`]).
    pub tolerance: f64,
    pub passed: bool,
    /// Per case and compared tensor, its error (`case: y 2e-7, ∂x 3e-7, …`).
    pub detail: String,
}

impl std::fmt::Display for OpCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<22} {:<7} max rel. error {:.2e} (tolerance {:.0e}) {}  [{}]",
            self.op,
            self.body,
            self.max_rel_error,
            self.tolerance,
            if self.passed { "pass" } else { "FAIL" },
            self.detail
        )
    }
}

/// Every op on `device` against its CPU kernel (see the module doc); one [`OpCheck`] per op, in the order of the
/// files of `ops/`. Errors only when an op fails to run at all.
pub fn compare_with_cpu(device: &Device) -> Result<Vec<OpCheck>> {
    let on_cpu = device.is_cpu();
    let mut checks = vec![
        check_adamw(device)?,
        check_batch_norm(device)?,
        check_concat_l2(device)?,
        check_conv1d(device)?,
        check_conv2d(device)?,
        check_dropout(device)?,
        check_gelu(device, false)?,
        check_gelu(device, true)?,
        check_group_norm(device)?,
        check_layer_norm(device)?,
        check_linear(device)?,
        check_cross_entropy(device)?,
        check_dice(device)?,
        check_focal(device)?,
        check_peak_labels(device)?,
        check_pool(device)?,
        check_softmax(device)?,
        check_softmax_dropout(device)?,
        check_tensor_fusion(device)?,
        check_nucleus(device)?,
        check_max_pool_2x2(device)?,
    ];
    if on_cpu {
        for c in &mut checks {
            c.body = "generic";
        }
    }
    Ok(checks)
}

// ---------------------------------------------------------------------------------------------------------------
// Harness

/// Seeded values in [−scale, scale] (+ offset) of `shape`, on the CPU.
fn seeded(shape: &[usize], scale: f32, offset: f32, seed: u64) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| rng.gen_range(-scale..scale) + offset)
        .collect();
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}

/// One-hot (B, C) targets on the CPU, every class present but the last when B ≥ C − 1.
fn one_hot(batch: usize, classes: usize, seed: u64) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut y = vec![0f32; batch * classes];
    for b in 0..batch {
        let label = if b < classes - 1 {
            b
        } else {
            rng.gen_range(0..classes - 1)
        };
        y[b * classes + label] = 1.0;
    }
    Ok(Tensor::from_vec(y, (batch, classes), &Device::Cpu)?)
}

/// Norm-wise relative error of `a` against the reference `r` (same shape; any devices).
fn rel_error(a: &Tensor, r: &Tensor) -> Result<f64> {
    let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let r = r.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    if a.dims() != r.dims() {
        return Err(Error::Other(format!(
            "check: shapes {:?} and {:?} differ",
            a.dims(),
            r.dims()
        )));
    }
    let diff = (&a - &r)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f64>()?;
    let scale = r.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
    // NaN anywhere fails the check (NaN compares false below).
    let err = if scale > 0.0 { diff / scale } else { diff };
    Ok(if err.is_nan() { f64::INFINITY } else { err })
}

/// A body of an op under test: (differentiable inputs, data inputs) → outputs, the first back-propagated.
type Body<'a> = dyn Fn(&[Tensor], &[Tensor]) -> Result<Vec<Tensor>> + 'a;

/// One run of an op: the differentiable inputs become variables on `device`, the data inputs are copied there,
/// `f` returns the outputs — the first is back-propagated from `upstream` — and the outputs and input gradients
/// come back as (name, tensor) pairs.
fn run(
    device: &Device,
    diff: &[(&'static str, &Tensor)],
    data: &[&Tensor],
    upstream_seed: u64,
    f: &Body<'_>,
) -> Result<Vec<(String, Tensor)>> {
    let vars = diff
        .iter()
        .map(|(_, t)| Ok(Var::from_tensor(&t.to_device(device)?)?))
        .collect::<Result<Vec<Var>>>()?;
    let inputs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let data = data
        .iter()
        .map(|t| Ok(t.to_device(device)?))
        .collect::<Result<Vec<Tensor>>>()?;
    let outputs = f(&inputs, &data)?;
    let mut results: Vec<(String, Tensor)> = outputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            (
                if i == 0 {
                    "y".to_string()
                } else {
                    format!("out{i}")
                },
                t.clone(),
            )
        })
        .collect();
    if !diff.is_empty() {
        let y = &outputs[0];
        let upstream = seeded(y.dims(), 1.0, 0.0, upstream_seed)?.to_device(device)?;
        let grads = (y * upstream)?.sum_all()?.backward()?;
        for ((name, _), var) in diff.iter().zip(&vars) {
            // a missing gradient is a result of its own (never zeros: two missing gradients would agree)
            match grads.get(var.as_tensor()) {
                Some(g) => results.push((format!("∂{name}"), g.clone())),
                None => results.push((format!("∂{name} missing"), var.as_tensor().zeros_like()?)),
            }
        }
    }
    Ok(results)
}

/// Accumulates the cases of one op.
struct Report {
    op: &'static str,
    body: &'static str,
    tolerance: f64,
    max: f64,
    detail: Vec<String>,
    /// Names of the outputs after the first (`out1`, … otherwise).
    extra_outputs: &'static [&'static str],
}

impl Report {
    /// `has_cuda`: whether the op has a CUDA kernel (what runs on `device` for an f32 tensor).
    fn new(op: &'static str, device: &Device, has_cuda: bool) -> Result<Report> {
        let probe = Tensor::zeros(1, DType::F32, device)?;
        let body = match Kernel::select(&probe, has_cuda) {
            Kernel::Cuda => "cuda",
            _ => "generic",
        };
        Ok(Report {
            op,
            body,
            tolerance: if body == "cuda" {
                KERNEL_TOLERANCE
            } else {
                GENERIC_TOLERANCE
            },
            max: 0.0,
            detail: Vec::new(),
            extra_outputs: &[],
        })
    }

    /// Compares the device run `ours` with the CPU reference `reference` by name: both must hold the same
    /// results (a result one side lacks — a gradient that did not flow — fails the case, as does a result
    /// marked missing on either side).
    fn compare(
        &mut self,
        case: &str,
        ours: &[(String, Tensor)],
        reference: &[(String, Tensor)],
    ) -> Result<()> {
        let names =
            |side: &[(String, Tensor)]| side.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        let (ours_names, reference_names) = (names(ours), names(reference));
        let missing: Vec<&String> = ours_names
            .iter()
            .chain(&reference_names)
            .filter(|n| n.ends_with(" missing"))
            .collect();
        if ours_names != reference_names || !missing.is_empty() {
            self.max = f64::INFINITY;
            self.detail.push(format!(
                "{case}: results differ: ours {ours_names:?}, reference {reference_names:?}"
            ));
            return Ok(());
        }
        let mut parts = Vec::new();
        for ((name, a), (_, r)) in ours.iter().zip(reference) {
            let err = rel_error(a, r)?;
            self.max = self.max.max(err);
            let name = name
                .strip_prefix("out")
                .and_then(|i| i.parse::<usize>().ok())
                .and_then(|i| self.extra_outputs.get(i - 1))
                .map_or(name.as_str(), |n| n);
            parts.push(format!("{name} {err:.1e}"));
        }
        self.detail.push(format!("{case}: {}", parts.join(", ")));
        Ok(())
    }

    /// A property check (no reference): `err` is already a relative error.
    fn property(&mut self, case: &str, what: &str, err: f64) {
        let err = if err.is_nan() { f64::INFINITY } else { err };
        self.max = self.max.max(err);
        self.detail.push(format!("{case}: {what} {err:.1e}"));
    }

    fn finish(self) -> OpCheck {
        OpCheck {
            op: self.op,
            body: self.body,
            max_rel_error: self.max,
            tolerance: self.tolerance,
            passed: self.max <= self.tolerance,
            detail: self.detail.join("; "),
        }
    }
}

/// One case of a graph op: `reference` (the CPU kernel) on the CPU, `generic` on a CPU `device`, `public` (the
/// op's own choice) on any other device.
#[allow(clippy::too_many_arguments)]
fn case(
    report: &mut Report,
    name: &str,
    device: &Device,
    diff: &[(&'static str, &Tensor)],
    data: &[&Tensor],
    reference: &Body<'_>,
    generic: &Body<'_>,
    public: &Body<'_>,
) -> Result<()> {
    let expected = run(&Device::Cpu, diff, data, 97, reference)?;
    let ours = run(
        device,
        diff,
        data,
        97,
        if device.is_cpu() { generic } else { public },
    )?;
    report.compare(name, &ours, &expected)
}

// ---------------------------------------------------------------------------------------------------------------
// The ops, in the order of their files

/// A whole optimiser step as the trainer takes it: the gradient norm of every gradient at once, the clipping
/// coefficient, then one group update per decay group ([`adamw::GradNorm::add_all`], [`adamw::update_group`]: on
/// a GPU the multi-tensor kernels), over tensors shorter and longer than a kernel chunk, two steps (the second
/// with non-zero moments), gradients clipped.
fn check_adamw(device: &Device) -> Result<OpCheck> {
    let mut report = Report::new("adamw", device, true)?;
    let shapes: [&[usize]; 3] = [&[37, 19], &[3, super::cuda::ADAMW_CHUNK + 5], &[7]];
    let params: Vec<Tensor> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| seeded(s, 1.0, 0.0, 1 + i as u64))
        .collect::<Result<_>>()?;
    let grads: Vec<Vec<Tensor>> = (0..2)
        .map(|t| {
            shapes
                .iter()
                .enumerate()
                .map(|(i, s)| seeded(s, 0.5, 0.1 * t as f32, 10 + 3 * t as u64 + i as u64))
                .collect::<Result<_>>()
        })
        .collect::<Result<_>>()?;
    let step = |t: i32, decay: f64| adamw::Step {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        decay,
        step_size: 1e-3 / (1.0 - 0.9f64.powi(t)),
        bias2_sqrt: (1.0 - 0.999f64.powi(t)).sqrt(),
    };
    // tensor 1 is in the undecayed group
    let decayed = [true, false, true];
    let steps = |device: &Device, host_moments: bool| -> Result<Vec<(String, Tensor)>> {
        let vars: Vec<Var> = params
            .iter()
            .map(|p| Var::from_tensor(&p.to_device(device)?).map_err(Error::from))
            .collect::<Result<_>>()?;
        let mut moments: Vec<adamw::Moments> = vars
            .iter()
            .map(|var| {
                let n = var.as_tensor().elem_count();
                Ok(if host_moments {
                    // the CPU kernel's host moments, whatever ERC_OPS says
                    adamw::Moments::Host {
                        m: vec![0.0; n],
                        v: vec![0.0; n],
                    }
                } else {
                    adamw::Moments::Device {
                        m: var.as_tensor().zeros_like()?,
                        v: var.as_tensor().zeros_like()?,
                    }
                })
            })
            .collect::<Result<_>>()?;
        let mut out = Vec::new();
        for (t, step_grads) in grads.iter().enumerate() {
            let g: Vec<Tensor> = step_grads
                .iter()
                .map(|g| g.to_device(device).map_err(Error::from))
                .collect::<Result<_>>()?;
            let mut norm = adamw::GradNorm::default();
            let pairs: Vec<(&Tensor, &adamw::Moments)> = g.iter().zip(moments.iter()).collect();
            norm.add_all(&pairs)?;
            let clip = norm.clip(1.0)?;
            out.push((
                format!("step {} norm", t + 1),
                Tensor::new(&[norm.value()? as f32], &Device::Cpu)?,
            ));
            for group in [true, false] {
                let s = step(t as i32 + 1, if group { 1.0 - 1e-3 * 0.01 } else { 1.0 });
                let mut updates: Vec<adamw::Update<'_>> = vars
                    .iter()
                    .zip(&g)
                    .zip(moments.iter_mut())
                    .zip(decayed)
                    .filter(|(_, d)| *d == group)
                    .map(|(((var, grad), moments), _)| adamw::Update { var, grad, moments })
                    .collect();
                adamw::update_group(&mut updates, &clip, &s)?;
            }
        }
        for (i, (var, moments)) in vars.iter().zip(&moments).enumerate() {
            let (m, v) = moments.to_tensors(var.as_tensor())?;
            out.push((format!("θ{i}"), var.as_tensor().clone()));
            out.push((format!("m{i}"), m));
            out.push((format!("v{i}"), v));
        }
        Ok(out)
    };
    let expected = steps(&Device::Cpu, true)?;
    let ours = steps(device, false)?;
    report.compare("2 steps, 3 tensors in 2 groups, clipped", &ours, &expected)?;
    Ok(report.finish())
}

fn check_batch_norm(device: &Device) -> Result<OpCheck> {
    let mut report = Report::new("batch_norm", device, true)?;
    report.extra_outputs = &["running mean", "running var"];
    let (n, c, h, w) = (3, 5, 7, 9);
    let x = seeded(&[n, c, h, w], 2.0, 3.0, 11)?;
    let weight = seeded(&[c], 0.3, 1.0, 12)?;
    let bias = seeded(&[c], 0.3, 0.0, 13)?;
    let running_mean = seeded(&[c], 1.0, 0.0, 14)?;
    let running_var = seeded(&[c], 0.5, 1.0, 15)?;
    type Layer = fn(&Tensor, &batch_norm::BatchNormTensors<'_>, bool, bool) -> Result<Tensor>;
    let with = |body: Layer, train: bool, relu: bool| {
        move |d: &[Tensor], s: &[Tensor]| -> Result<Vec<Tensor>> {
            let (mean, var) = (
                Var::from_tensor(&s[0].copy()?)?,
                Var::from_tensor(&s[1].copy()?)?,
            );
            let t = batch_norm::BatchNormTensors {
                weight: &d[1],
                bias: &d[2],
                running_mean: &mean,
                running_var: &var,
            };
            let y = body(&d[0], &t, train, relu)?;
            Ok(vec![y, mean.as_tensor().clone(), var.as_tensor().clone()])
        }
    };
    for (train, relu) in [(true, false), (true, true), (false, false), (false, true)] {
        let name = format!("{} relu {relu}", if train { "train" } else { "eval" });
        case(
            &mut report,
            &name,
            device,
            &[("x", &x), ("γ", &weight), ("β", &bias)],
            &[&running_mean, &running_var],
            &with(batch_norm::fused, train, relu),
            &with(batch_norm::generic, train, relu),
            &with(batch_norm::batch_norm, train, relu),
        )?;
    }
    Ok(report.finish())
}

fn check_concat_l2(device: &Device) -> Result<OpCheck> {
    let mut report = Report::new("concat_l2", device, false)?;
    let x = seeded(&[6, 11], 1.0, 0.0, 21)?;
    case(
        &mut report,
        "l2 (6, 11)",
        device,
        &[("x", &x)],
        &[],
        &|d, _| Ok(vec![concat_l2::fused_concat(&d[..1])?]),
        &|d, _| Ok(vec![concat_l2::generic(&d[0])?]),
        &|d, _| Ok(vec![concat_l2::l2_normalize(&d[0])?]),
    )?;
    let (a, b, c) = (
        seeded(&[6, 5], 1.0, 0.0, 22)?,
        seeded(&[6, 3], 1.0, 0.0, 23)?,
        seeded(&[6, 8], 1.0, 0.0, 24)?,
    );
    case(
        &mut report,
        "concat of 3",
        device,
        &[("a", &a), ("b", &b), ("c", &c)],
        &[],
        &|d, _| Ok(vec![concat_l2::fused_concat(d)?]),
        &|d, _| Ok(vec![concat_l2::generic(&Tensor::cat(d, 1)?)?]),
        &|d, _| Ok(vec![concat_l2::concat_l2_normalize(d)?]),
    )?;
    Ok(report.finish())
}

fn check_conv1d(device: &Device) -> Result<OpCheck> {
    let mut report = Report::new("conv1d", device, true)?;
    let x = seeded(&[2, 29, 6], 1.0, 0.0, 31)?;
    for (stride, padding, groups, gelu) in [(2, 1, 2, true), (1, 0, 1, false)] {
        let w = seeded(&[4, 6 / groups, 3], 0.5, 0.0, 32)?;
        let name = format!("stride {stride} padding {padding} groups {groups} gelu {gelu}");
        case(
            &mut report,
            &name,
            device,
            &[("x", &x), ("w", &w)],
            &[],
            &|d, _| {
                Ok(vec![conv1d::fused(
                    &d[0], &d[1], stride, padding, groups, gelu,
                )?])
            },
            &|d, _| {
                Ok(vec![conv1d::generic(
                    &d[0], &d[1], stride, padding, groups, gelu,
                )?])
            },
            &|d, _| {
                Ok(vec![conv1d::conv1d(
                    &d[0], &d[1], stride, padding, groups, gelu,
                )?])
            },
        )?;
    }
    Ok(report.finish())
}

fn check_conv2d(device: &Device) -> Result<OpCheck> {
    let mut report = Report::new("conv2d", device, true)?;
    // H and W of different parity; every convolution ResNet-50 has
    let x = seeded(&[2, 3, 9, 8], 1.0, 0.0, 41)?;
    for (k, stride, padding) in [(7, 2, 3), (3, 1, 1), (3, 2, 1), (1, 1, 0), (1, 2, 0)] {
        let w = seeded(&[4, 3, k, k], 0.5, 0.0, 42)?;
        let name = format!("k {k} stride {stride} padding {padding}");
        case(
            &mut report,
            &name,
            device,
            &[("x", &x), ("w", &w)],
            &[],
            &|d, _| Ok(vec![conv2d::fused(&d[0], &d[1], stride, padding)?]),
            &|d, _| Ok(vec![conv2d::generic(&d[0], &d[1], stride, padding)?]),
            &|d, _| Ok(vec![conv2d::conv2d(&d[0], &d[1], stride, padding)?]),
        )?;
    }
    Ok(report.finish())
}

/// Dropout draws its mask from the run's generator: host factors on the CPU, a counter (Philox) key elsewhere,
/// whose factors the host computes exactly ([`dropout::Counter::factors`]). The reference is x times the factors
/// [`Mask::draw`] gives for the device from the same seed, and the gradient those factors; the drop rate is p.
fn check_dropout(device: &Device) -> Result<OpCheck> {
    let mut report = Report::new("dropout", device, true)?;
    let p = 0.3;
    let x = seeded(&[64, 250], 1.0, 2.0, 51)?; // no value near 0: a zero output is a dropped element
    let var = Var::from_tensor(&x.to_device(device)?)?;
    let y = dropout::dropout(var.as_tensor(), p, &mut ChaCha8Rng::seed_from_u64(52))?;
    let grad = y.sum_all()?.backward()?;
    let g = grad
        .get(var.as_tensor())
        .ok_or_else(|| Error::Other("dropout: no gradient".into()))?
        .to_device(&Device::Cpu)?;
    let y = y.to_device(&Device::Cpu)?;
    let factors =
        Mask::draw(x.shape(), p, device, &mut ChaCha8Rng::seed_from_u64(52))?.into_host()?;
    let mask = Tensor::from_vec(factors, x.shape(), &Device::Cpu)?;
    report.compare(
        "p 0.3, (64, 250)",
        &[("y".into(), y.clone()), ("∂x".into(), g)],
        &[("y".into(), (&x * &mask)?), ("∂x".into(), mask.clone())],
    )?;
    let n = x.elem_count() as f64;
    let dropped = y
        .eq(0f32)?
        .to_dtype(DType::F64)?
        .sum_all()?
        .to_scalar::<f64>()?
        / n;
    let sigma = (p * (1.0 - p) / n).sqrt();
    // within 5σ of p counts as 0 error; beyond, the excess in units of p
    let excess = ((dropped - p).abs() - 5.0 * sigma).max(0.0) / p;
    report.property("drop rate", &format!("{dropped:.3} vs {p}:"), excess);
    Ok(report.finish())
}

fn check_gelu(device: &Device, tanh: bool) -> Result<OpCheck> {
    let op = if tanh { "gelu_tanh" } else { "gelu_erf" };
    let mut report = Report::new(op, device, true)?;
    let x = seeded(&[3, 7, 503], 5.0, 0.0, 61)?;
    case(
        &mut report,
        "(3, 7, 503) in ±5",
        device,
        &[("x", &x)],
        &[],
        &|d, _| Ok(vec![gelu::kernel(&d[0], tanh)?]),
        &|d, _| Ok(vec![if tanh { d[0].gelu()? } else { d[0].gelu_erf()? }]),
        &|d, _| {
            Ok(vec![if tanh {
                gelu::gelu_tanh(&d[0])?
            } else {
                gelu::gelu_erf(&d[0])?
            }])
        },
    )?;
    Ok(report.finish())
}

fn check_group_norm(device: &Device) -> Result<OpCheck> {
    let mut report = Report::new("group_norm", device, true)?;
    for (b, t, c, gelu) in [(2, 600, 5, true), (3, 37, 40, false)] {
        let x = seeded(&[b, t, c], 3.0, 1.5, 71)?;
        let gamma = seeded(&[c], 0.3, 1.0, 72)?;
        let beta = seeded(&[c], 0.3, 0.0, 73)?;
        let name = format!("({b}, {t}, {c}) gelu {gelu}");
        case(
            &mut report,
            &name,
            device,
            &[("x", &x), ("γ", &gamma), ("β", &beta)],
            &[],
            &|d, _| Ok(vec![group_norm::fused(&d[0], &d[1], &d[2], 1e-5, gelu)?]),
            &|d, _| Ok(vec![group_norm::generic(&d[0], &d[1], &d[2], 1e-5, gelu)?]),
            &|d, _| {
                Ok(vec![group_norm::group_norm_per_channel(
                    &d[0], &d[1], &d[2], 1e-5, gelu,
                )?])
            },
        )?;
    }
    Ok(report.finish())
}

fn check_layer_norm(device: &Device) -> Result<OpCheck> {
    let mut report = Report::new("layer_norm", device, true)?;
    for dims in [vec![2, 13, 300], vec![5, 7]] {
        let d = *dims.last().unwrap_or(&1);
        let x = seeded(&dims, 3.0, 2.0, 81)?;
        let gamma = seeded(&[d], 0.3, 1.0, 82)?;
        let beta = seeded(&[d], 0.3, 0.0, 83)?;
        case(
            &mut report,
            &format!("{dims:?}"),
            device,
            &[("x", &x), ("γ", &gamma), ("β", &beta)],
            &[],
            &|d, _| Ok(vec![layer_norm::fused(&d[0], &d[1], &d[2], 1e-5)?]),
            &|d, _| Ok(vec![layer_norm::generic(&d[0], &d[1], &d[2], 1e-5)?]),
            &|d, _| Ok(vec![layer_norm::layer_norm(&d[0], &d[1], &d[2], 1e-5)?]),
        )?;
    }
    Ok(report.finish())
}

fn check_linear(device: &Device) -> Result<OpCheck> {
    let mut report = Report::new("linear", device, false)?;
    let x = seeded(&[9, 17], 1.0, 0.0, 91)?;
    let w = seeded(&[6, 17], 0.3, 0.0, 92)?;
    let b = seeded(&[6], 0.3, 0.0, 93)?;
    // one counter mask for both runs: its host factors for the CPU kernel, the counter itself on the device
    let counter = dropout::Counter { key: 94, p: 0.25 };
    for (relu, masked) in [(false, false), (true, true)] {
        let host = move || masked.then(|| Mask::Host(counter.factors(9 * 6)));
        let device_mask = move || {
            masked.then_some(Mask::Counter {
                counter,
                len: 9 * 6,
            })
        };
        case(
            &mut report,
            &format!("relu {relu} dropout {masked}"),
            device,
            &[("x", &x), ("W", &w), ("b", &b)],
            &[],
            &|d, _| {
                let mask = host().map(Mask::into_host).transpose()?;
                Ok(vec![linear::fused(&d[0], &d[1], &d[2], relu, mask)?])
            },
            &|d, _| {
                Ok(vec![linear::generic(
                    &d[0],
                    &d[1],
                    &d[2],
                    relu,
                    device_mask(),
                )?])
            },
            &|d, _| {
                Ok(vec![linear::linear(
                    &d[0],
                    &d[1],
                    &d[2],
                    relu,
                    device_mask(),
                )?])
            },
        )?;
    }
    Ok(report.finish())
}

/// The losses' inputs: (B, C) logits, their probabilities, one-hot targets, class weights.
fn loss_inputs() -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let logits = seeded(&[13, 7], 3.0, 0.0, 101)?;
    let probs = candle_nn::ops::softmax(&logits, 1)?;
    let y = one_hot(13, 7, 102)?;
    let alpha = Tensor::new(
        &[9.01f32, 36.86, 37.27, 5.73, 2.12, 14.63, 8.29],
        &Device::Cpu,
    )?;
    Ok((logits, probs, y, alpha))
}

fn check_cross_entropy(device: &Device) -> Result<OpCheck> {
    let mut report = Report::new("loss::cross_entropy", device, true)?;
    let (logits, _, y, _) = loss_inputs()?;
    case(
        &mut report,
        "(13, 7) logits",
        device,
        &[("x", &logits)],
        &[&y],
        &|d, s| Ok(vec![loss::fused_cross_entropy(&d[0], &s[0])?]),
        &|d, s| Ok(vec![loss::generic_cross_entropy(&d[0], &s[0])?]),
        &|d, s| Ok(vec![loss::cross_entropy(&d[0], &s[0])?]),
    )?;
    Ok(report.finish())
}

fn check_dice(device: &Device) -> Result<OpCheck> {
    let mut report = Report::new("loss::dice", device, true)?;
    let (_, probs, y, _) = loss_inputs()?;
    case(
        &mut report,
        "(13, 7) probabilities",
        device,
        &[("p", &probs)],
        &[&y],
        &|d, s| Ok(vec![loss::fused_dice(&d[0], &s[0], 1e-8)?]),
        &|d, s| Ok(vec![loss::generic_dice(&d[0], &s[0], 1e-8)?]),
        &|d, s| Ok(vec![loss::dice(&d[0], &s[0], 1e-8)?]),
    )?;
    Ok(report.finish())
}

fn check_focal(device: &Device) -> Result<OpCheck> {
    let mut report = Report::new("loss::focal", device, true)?;
    let (_, probs, y, alpha) = loss_inputs()?;
    for (gamma, mean) in [(2.0, true), (0.5, false), (0.0, true)] {
        case(
            &mut report,
            &format!("γ {gamma} mean {mean}"),
            device,
            &[("p", &probs)],
            &[&y, &alpha],
            &|d, s| {
                Ok(vec![loss::fused_focal(
                    &d[0], &s[0], &s[1], gamma, 1e-8, mean,
                )?])
            },
            &|d, s| {
                Ok(vec![loss::generic_focal(
                    &d[0], &s[0], &s[1], gamma, 1e-8, mean,
                )?])
            },
            &|d, s| Ok(vec![loss::focal(&d[0], &s[0], &s[1], gamma, 1e-8, mean)?]),
        )?;
    }
    Ok(report.finish())
}

/// Targets only (no gradient): vote-like rows, a label-smoothed one-hot, a uniform row and one with zeros.
fn check_peak_labels(device: &Device) -> Result<OpCheck> {
    let mut report = Report::new("peak_labels", device, false)?;
    let raw = seeded(&[9, 7], 1.0, 1.2, 111)?;
    let votes = raw.broadcast_div(&raw.sum_keepdim(1)?)?;
    let special = Tensor::new(
        &[
            [0.9143f32, 0.0143, 0.0143, 0.0143, 0.0143, 0.0143, 0.0142],
            [1.0 / 7.0; 7],
            [0.4, 0.3, 0.2, 0.1, 0.0, 0.0, 0.0],
        ],
        &Device::Cpu,
    )?;
    let y = Tensor::cat(&[&votes, &special], 0)?;
    case(
        &mut report,
        "(12, 7)",
        device,
        &[],
        &[&y],
        &|_, y| Ok(vec![peak_labels::kernel(&y[0])?]),
        &|_, y| Ok(vec![peak_labels::generic(&y[0])?]),
        &|_, y| Ok(vec![peak_labels::peak_labels(&y[0])?]),
    )?;
    Ok(report.finish())
}

fn check_pool(device: &Device) -> Result<OpCheck> {
    let mut report = Report::new("pool", device, true)?;
    let x = seeded(&[2, 3, 11, 10], 1.0, 0.0, 111)?;
    case(
        &mut report,
        "(2, 3, 11, 10)",
        device,
        &[("x", &x)],
        &[],
        &|d, _| Ok(vec![pool::kernel(&d[0])?]),
        &|d, _| Ok(vec![pool::generic(&d[0])?]),
        &|d, _| Ok(vec![pool::max_pool_3x3_s2(&d[0])?]),
    )?;
    Ok(report.finish())
}

fn check_softmax(device: &Device) -> Result<OpCheck> {
    let mut report = Report::new("softmax", device, false)?;
    let x = seeded(&[6, 7, 33], 4.0, 0.0, 121)?;
    case(
        &mut report,
        "(6, 7, 33)",
        device,
        &[("x", &x)],
        &[],
        &|d, _| Ok(vec![softmax::kernel(&d[0])?]),
        &|d, _| Ok(vec![softmax::generic(&d[0])?]),
        &|d, _| Ok(vec![softmax::softmax(&d[0])?]),
    )?;
    Ok(report.finish())
}

/// One counter mask for both runs: its host factors for the CPU kernel, the counter itself on the device (drawn
/// inside the kernels there).
fn check_softmax_dropout(device: &Device) -> Result<OpCheck> {
    let mut report = Report::new("softmax_dropout", device, true)?;
    let shape = [2, 3, 7, 300];
    let x = seeded(&shape, 3.0, 0.0, 131)?;
    let n = x.elem_count();
    let counter = dropout::Counter { key: 132, p: 0.1 };
    for masked in [true, false] {
        let device_mask = move || masked.then_some(Mask::Counter { counter, len: n });
        case(
            &mut report,
            &format!("{shape:?} dropout {masked}"),
            device,
            &[("x", &x)],
            &[],
            &|d, _| {
                let host = masked.then(|| counter.factors(n));
                Ok(vec![softmax_dropout::cpu_kernel(&d[0], host)?])
            },
            &|d, _| {
                Ok(vec![softmax_dropout::generic_with_mask(
                    &d[0],
                    device_mask(),
                )?])
            },
            &|d, _| Ok(vec![softmax_dropout::with_mask(&d[0], device_mask())?]),
        )?;
    }
    Ok(report.finish())
}

fn check_tensor_fusion(device: &Device) -> Result<OpCheck> {
    let mut report = Report::new("tensor_fusion", device, false)?;
    for (m, n) in [(4, 6), (33, 17)] {
        let a = seeded(&[5, m], 1.0, 0.0, 121)?;
        let b = seeded(&[5, n], 1.0, 0.0, 122)?;
        case(
            &mut report,
            &format!("({m}, {n})"),
            device,
            &[("a", &a), ("b", &b)],
            &[],
            &|d, _| Ok(vec![tensor_fusion::kernel(&d[0], &d[1])?]),
            &|d, _| Ok(vec![tensor_fusion::generic(&d[0], &d[1])?]),
            &|d, _| Ok(vec![tensor_fusion::tensor_fusion(&d[0], &d[1])?]),
        )?;
    }
    Ok(report.finish())
}

/// Masks only (no gradient), at both of MESM's p and over a width of several generic chunks' rows.
fn check_nucleus(device: &Device) -> Result<OpCheck> {
    let mut report = Report::new("nucleus", device, false)?;
    let scores =
        candle_nn::ops::softmax(&seeded(&[37, 576], 4.0, 0.0, 141)?, candle_core::D::Minus1)?;
    for p in [0.5, 0.7] {
        case(
            &mut report,
            &format!("(37, 576) p {p}"),
            device,
            &[],
            &[&scores],
            &|_, s| Ok(vec![nucleus::kernel(&s[0], p)?]),
            &|_, s| Ok(vec![nucleus::generic(&s[0], p)?]),
            &|_, s| Ok(vec![nucleus::nucleus_mask(&s[0], p)?]),
        )?;
    }
    Ok(report.finish())
}

/// The face CNN's 2x2 max-pool (composed only: argmax then gather, the gradient to the first maximum) against a
/// max reduction over the same windows, values and input gradient, odd sizes (the last row and column dropped).
fn check_max_pool_2x2(device: &Device) -> Result<OpCheck> {
    let mut report = Report::new("max_pool_2x2", device, false)?;
    let x = seeded(&[2, 3, 7, 9], 1.0, 0.0, 151)?;
    let windows = |x: &Tensor| -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let (oh, ow) = (h / 2, w / 2);
        Ok(x.narrow(2, 0, 2 * oh)?
            .narrow(3, 0, 2 * ow)?
            .reshape((b, c, oh, 2, ow, 2))?
            .permute((0, 1, 2, 4, 3, 5))?
            .contiguous()?
            .reshape((b, c, oh, ow, 4))?
            .max(candle_core::D::Minus1)?)
    };
    case(
        &mut report,
        "(2, 3, 7, 9)",
        device,
        &[("x", &x)],
        &[],
        &|d, _| Ok(vec![windows(&d[0])?]),
        &|d, _| Ok(vec![super::max_pool_2x2(&d[0])?]),
        &|d, _| Ok(vec![super::max_pool_2x2(&d[0])?]),
    )?;
    Ok(report.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rehearsal of the GPU check on the CPU: every op's generic path against its CPU kernel, every op of
    /// `ops/` present.
    #[test]
    fn every_op_passes_on_the_cpu() {
        let checks = compare_with_cpu(&Device::Cpu).unwrap();
        for c in &checks {
            println!("{c}");
        }
        let failed: Vec<String> = checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.to_string())
            .collect();
        assert!(failed.is_empty(), "failed:\n{}", failed.join("\n"));
        let ops: Vec<&str> = checks
            .iter()
            .map(|c| c.op.split("::").next().unwrap_or(c.op))
            .collect();
        for file in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src/ops")).unwrap() {
            let path = file.unwrap().path();
            let stem = path.file_stem().unwrap().to_string_lossy().to_string();
            let not_ops = ["mod", "check", "cuda"];
            if not_ops.contains(&stem.as_str()) {
                continue;
            }
            assert!(
                ops.iter().any(|op| op.starts_with(&stem)),
                "ops/{stem}.rs has no check"
            );
        }
        assert!(checks.iter().all(|c| c.body == "generic"));
    }

    /// The comparison is by name with counts checked: a gradient that did not flow (on one side or on both), a
    /// result one side lacks or an extra one fails the case; equal results pass.
    #[test]
    fn a_missing_gradient_or_result_fails_the_case() {
        let t = |v: f32| Tensor::new(&[v, 2.0], &Device::Cpu).unwrap();
        let named = |items: &[(&str, f32)]| -> Vec<(String, Tensor)> {
            items.iter().map(|(n, v)| (n.to_string(), t(*v))).collect()
        };
        let verdict = |ours: &[(&str, f32)], reference: &[(&str, f32)]| {
            let mut report = Report::new("test", &Device::Cpu, false).unwrap();
            report
                .compare("case", &named(ours), &named(reference))
                .unwrap();
            report.finish().passed
        };
        assert!(verdict(
            &[("y", 1.0), ("∂x", 3.0)],
            &[("y", 1.0), ("∂x", 3.0)]
        ));
        assert!(!verdict(
            &[("y", 1.0), ("∂x", 3.5)],
            &[("y", 1.0), ("∂x", 3.0)]
        ));
        assert!(!verdict(
            &[("y", 1.0), ("∂x missing", 0.0)],
            &[("y", 1.0), ("∂x missing", 0.0)]
        ));
        assert!(!verdict(
            &[("y", 1.0), ("∂x missing", 0.0)],
            &[("y", 1.0), ("∂x", 0.0)]
        ));
        assert!(!verdict(&[("y", 1.0)], &[("y", 1.0), ("∂x", 3.0)]));
        assert!(!verdict(
            &[("y", 1.0), ("∂w", 3.0)],
            &[("y", 1.0), ("∂x", 3.0)]
        ));
    }
}
