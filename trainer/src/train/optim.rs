//! Optimisation as HF Trainer 4.33 does it (§5.1): global-norm gradient clipping at 1.0, PyTorch's AdamW
//! (β = (0.9, 0.999), eps 1e-8, decoupled weight decay) with two parameter groups — no decay on biases and
//! LayerNorm weights — and a linear warm-up from 0 followed by a linear decay to 0 at the planned last step.
//!
//! candle's `AdamW` has one weight decay for all parameters, so the update is written here over candle `Var`s.
//! The schedule is PyTorch's `LambdaLR`: optimizer step k (1-based) uses lr·λ(k − 1), so the very first step of
//! a warm-up has learning rate 0, exactly as in the reference.

use std::cell::RefCell;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::error::Result;
use crate::params::decays;
use rayon::prelude::*;

/// HF `get_linear_schedule_with_warmup` multiplier after `step` scheduler steps.
pub fn lr_lambda(step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        step as f64 / warmup.max(1) as f64
    } else {
        (total.saturating_sub(step)) as f64 / (total.saturating_sub(warmup)).max(1) as f64
    }
}

#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
    pub max_grad_norm: f64,
}

impl AdamWConfig {
    /// The reference's optimiser for an experiment (§5.1): HF Trainer defaults (β = (0.9, 0.999), eps 1e-8,
    /// clipping at global norm 1.0) with the config's learning rate, weight decay and warm-up.
    pub fn for_experiment(config: &crate::config::Config, total_steps: usize) -> Self {
        AdamWConfig {
            lr: config.classifier_learning_rate,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: config.classifier_weight_decay,
            warmup_steps: config.classifier_warmup_steps,
            total_steps,
            max_grad_norm: 1.0,
        }
    }
}

struct Slot {
    var: Var,
    decay: bool,
    moments: Moments,
}

/// First and second moments: on the host for CPU parameters (one fused pass per step instead of a dozen
/// allocating tensor operations), as tensors on other devices.
enum Moments {
    Host { m: Vec<f32>, v: Vec<f32> },
    Device { m: Tensor, v: Tensor },
}

pub struct AdamW {
    slots: Vec<Slot>,
    config: AdamWConfig,
    /// Optimizer steps taken so far.
    step: usize,
}

/// What one step did (for logs and tests).
#[derive(Debug, Clone, Copy)]
pub struct StepInfo {
    pub grad_norm: f64,
    pub lr: f64,
}

impl AdamW {
    /// `params`: (name, variable) pairs; the name decides the decay group ([`decays`]).
    pub fn new(params: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        // A process that builds an optimiser trains: from here on every step reuses the previous step's memory.
        crate::heap::keep_freed_memory();
        let slots = params
            .into_iter()
            .map(|(name, var)| {
                let t = var.as_tensor();
                let moments = if t.device().is_cpu() && t.dtype() == candle_core::DType::F32 {
                    let n = t.elem_count();
                    Moments::Host {
                        m: vec![0.0; n],
                        v: vec![0.0; n],
                    }
                } else {
                    Moments::Device {
                        m: t.zeros_like()?,
                        v: t.zeros_like()?,
                    }
                };
                Ok(Slot {
                    decay: decays(&name),
                    moments,
                    var,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW {
            slots,
            config,
            step: 0,
        })
    }

    /// The learning rate the next step will use.
    pub fn current_lr(&self) -> f64 {
        self.config.lr * lr_lambda(self.step, self.config.warmup_steps, self.config.total_steps)
    }

    pub fn steps_taken(&self) -> usize {
        self.step
    }

    /// Clips the gradients to the global norm, then updates every parameter that has a gradient.
    pub fn step(&mut self, grads: &GradStore) -> Result<StepInfo> {
        let c = self.config;
        // Gradients of the parameters that have one; the CPU ones are contiguous f32 tensors, read in place.
        let mut host_grads: Vec<Option<Tensor>> = Vec::with_capacity(self.slots.len());
        let mut sum_sq = 0f64;
        for slot in &self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                host_grads.push(None);
                continue;
            };
            match slot.moments {
                Moments::Host { .. } => {
                    let g = g.contiguous()?;
                    sum_sq += with_f32_slice(&g, |g| {
                        // Small tensors inline: handing a job to the rayon pool costs more than the sum.
                        if g.len() <= CHUNK {
                            crate::fused::sum_squares(g)
                        } else {
                            g.par_chunks(CHUNK)
                                .map(crate::fused::sum_squares)
                                .sum::<f64>()
                        }
                    })?;
                    host_grads.push(Some(g));
                }
                Moments::Device { .. } => {
                    sum_sq += g
                        .sqr()?
                        .sum_all()?
                        .to_dtype(candle_core::DType::F64)?
                        .to_scalar::<f64>()?;
                    host_grads.push(None);
                }
            }
        }
        let grad_norm = sum_sq.sqrt();
        // torch.nn.utils.clip_grad_norm_: coefficient max_norm / (norm + 1e-6), applied only when below 1.
        let clip = (c.max_grad_norm / (grad_norm + 1e-6)).min(1.0);
        let lr = self.current_lr();
        self.step += 1;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let step_size = lr / bias1;
        for (slot, host_grad) in self.slots.iter_mut().zip(host_grads) {
            let decay = if slot.decay {
                1.0 - lr * c.weight_decay
            } else {
                1.0
            };
            match &mut slot.moments {
                Moments::Host { m, v } => {
                    let Some(g) = host_grad else { continue };
                    let update = HostUpdate {
                        m: RefCell::new(m),
                        v: RefCell::new(v),
                        beta1: c.beta1 as f32,
                        beta2: c.beta2 as f32,
                        clip: clip as f32,
                        decay: decay as f32,
                        step_size: step_size as f32,
                        bias2_sqrt: bias2_sqrt as f32,
                        eps: c.eps as f32,
                    };
                    with_f32_slice(&g, |g| {
                        slot.var
                            .as_tensor()
                            .inplace_op1(&HostUpdateWith { update: &update, g })
                    })??;
                }
                Moments::Device { m, v } => {
                    let Some(g) = grads.get(slot.var.as_tensor()) else {
                        continue;
                    };
                    // detached: the optimiser's state must not keep autograd graphs alive from step to step
                    let g = g.detach();
                    let g = if clip < 1.0 { (g * clip)? } else { g };
                    let theta = (slot.var.as_detached_tensor() * decay)?;
                    let new_m = ((&*m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
                    let new_v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                    let denom = ((new_v.sqrt()? / bias2_sqrt)? + c.eps)?;
                    let update = ((&new_m / denom)? * step_size)?;
                    slot.var.set(&(theta - update)?)?;
                    *m = new_m;
                    *v = new_v;
                }
            }
        }
        Ok(StepInfo { grad_norm, lr })
    }
}

/// Elements per rayon task in the host update (large enough that scheduling costs nothing).
const CHUNK: usize = 1 << 14;

/// Runs `f` on the values of an f32 CPU tensor, borrowed from its storage (no copy: gradients are contiguous).
fn with_f32_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    Ok(crate::nn::with_cpu_f32(t, "the optimiser's host path", f)?)
}

/// The AdamW update of one CPU parameter, applied in place to its storage: no copy of the parameter, the gradient
/// or the moments per step (for the waveform encoder's 22.5 M-weight first layer each copy is 90 MB), and split
/// over the cores. The arithmetic is the element-wise formula of torch's AdamW, unchanged.
struct HostUpdate<'a> {
    m: RefCell<&'a mut Vec<f32>>,
    v: RefCell<&'a mut Vec<f32>>,
    beta1: f32,
    beta2: f32,
    clip: f32,
    decay: f32,
    step_size: f32,
    bias2_sqrt: f32,
    eps: f32,
}

struct HostUpdateWith<'a, 'b> {
    update: &'a HostUpdate<'b>,
    g: &'a [f32],
}

impl candle_core::InplaceOp1 for HostUpdateWith<'_, '_> {
    fn name(&self) -> &'static str {
        "adamw-host-update"
    }

    fn cpu_fwd(
        &self,
        storage: &mut candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let u = self.update;
        let theta = crate::nn::contiguous_f32_mut(storage, layout, "adamw")?;
        let (mut m, mut v) = (u.m.borrow_mut(), u.v.borrow_mut());
        if theta.len() != self.g.len() || m.len() != theta.len() {
            candle_core::bail!(
                "adamw: {} values, {} gradients, {} moments",
                theta.len(),
                self.g.len(),
                m.len()
            )
        }
        // The scalars, copied out: the closure below runs on several threads and must not see the RefCells.
        let (b1, b2, clip, decay, step_size, bias2_sqrt, eps) = (
            u.beta1,
            u.beta2,
            u.clip,
            u.decay,
            u.step_size,
            u.bias2_sqrt,
            u.eps,
        );
        // Zipped iterators (no indexing, hence no bounds checks) so that the loop vectorises; `clip` is 1 when
        // no clipping applies, and g·1 == g exactly.
        let clip = clip.min(1.0);
        let update = |theta: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
            for (((theta, g), m), v) in theta.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut())
            {
                let g = g * clip;
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
                let denom = v.sqrt() / bias2_sqrt + eps;
                *theta = *theta * decay - step_size * (*m / denom);
            }
        };
        if theta.len() <= CHUNK {
            // Inline: a hand-off to the rayon pool costs more than the update of a small tensor.
            update(theta, self.g, &mut m[..], &mut v[..]);
        } else {
            theta
                .par_chunks_mut(CHUNK)
                .zip(self.g.par_chunks(CHUNK))
                .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
                .for_each(|((theta, g), (m, v))| update(theta, g, m, v));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        let l: Vec<f64> = (0..=10).map(|s| lr_lambda(s, 3, 10)).collect();
        let expected = [
            0.0,
            1.0 / 3.0,
            2.0 / 3.0,
            1.0,
            6.0 / 7.0,
            5.0 / 7.0,
            4.0 / 7.0,
            3.0 / 7.0,
            2.0 / 7.0,
            1.0 / 7.0,
            0.0,
        ];
        for (a, b) in l.iter().zip(expected) {
            assert!((a - b).abs() < 1e-12, "{l:?}");
        }
        assert_eq!(lr_lambda(12, 3, 10), 0.0);
    }
}
