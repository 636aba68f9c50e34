//! Optimisation as HF Trainer 4.33 does it (docs/reference.md §5.1): global-norm gradient clipping at 1.0, PyTorch's AdamW
//! (β = (0.9, 0.999), eps 1e-8, decoupled weight decay) with two parameter groups — no decay on biases and
//! LayerNorm weights — and a linear warm-up from 0 followed by a linear decay to 0 at the planned last step.
//!
//! candle's `AdamW` has one weight decay for all parameters, so the update is written here over candle `Var`s
//! (the per-parameter update is the [`crate::ops::adamw`] op).
//! The schedule is PyTorch's `LambdaLR`: optimizer step k (1-based) uses lr·λ(k − 1), so the very first step of
//! a warm-up has learning rate 0, exactly as in the reference.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::error::{Error, Result};
use crate::nn::params::decays;
use crate::ops::adamw::{update_group, GradNorm, Moments, Step, Update};

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
    /// `classifier_lr_scheduler: plateau`: no warm-up or decay; the learning rate is `lr` until
    /// [`AdamW::set_lr`] (the plateau scheduler) changes it.
    pub constant: bool,
}

impl AdamWConfig {
    /// The reference's optimiser for an experiment (docs/reference.md §5.1): HF Trainer defaults (β = (0.9, 0.999), eps 1e-8,
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
            constant: config.plateau().is_some(),
        }
    }
}

struct Slot {
    name: String,
    var: Var,
    decay: bool,
    moments: Moments,
}

pub struct AdamW {
    slots: Vec<Slot>,
    config: AdamWConfig,
    /// Optimizer steps taken so far.
    step: usize,
}

/// What one step did (for logs and tests).
pub struct StepInfo {
    /// The global gradient norm before clipping ([`GradNorm::value`] reads it; on a GPU that is a sync, so the
    /// loop does not).
    pub grad_norm: GradNorm,
    pub lr: f64,
}

impl AdamW {
    /// `params`: (name, variable) pairs; the name decides the decay group ([`decays`]).
    pub fn new(params: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        // A process that builds an optimiser trains: from here on every step reuses the previous step's memory.
        crate::train::heap::keep_freed_memory();
        let slots = params
            .into_iter()
            .map(|(name, var)| {
                Ok(Slot {
                    decay: decays(&name),
                    moments: Moments::zeros(var.as_tensor())?,
                    var,
                    name,
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
        if self.config.constant {
            return self.config.lr;
        }
        self.config.lr * lr_lambda(self.step, self.config.warmup_steps, self.config.total_steps)
    }

    /// Sets the learning rate of a constant schedule (the plateau scheduler's cuts).
    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    pub fn steps_taken(&self) -> usize {
        self.step
    }

    /// Every parameter's first and second moments, by name (for resume checkpoints).
    pub fn moments(&self) -> Result<Vec<(String, Tensor, Tensor)>> {
        self.slots
            .iter()
            .map(|slot| {
                let (m, v) = slot.moments.to_tensors(slot.var.as_tensor())?;
                Ok((slot.name.clone(), m, v))
            })
            .collect()
    }

    /// Continues from a saved state: `steps` taken and every parameter's moments (`source` names the file,
    /// for messages).
    pub fn restore(
        &mut self,
        steps: usize,
        mut moments: BTreeMap<String, (Tensor, Tensor)>,
        source: &Path,
    ) -> Result<()> {
        for slot in &mut self.slots {
            let (m, v) = moments.remove(&slot.name).ok_or_else(|| {
                Error::data(source, format!("no optimiser moments for `{}`", slot.name))
            })?;
            slot.moments.set_from(&m, &v, slot.var.as_tensor())?;
        }
        if let Some(extra) = moments.keys().next() {
            return Err(Error::data(
                source,
                format!("optimiser moments for `{extra}`, which this model does not have"),
            ));
        }
        self.step = steps;
        Ok(())
    }

    /// Clips the gradients to the global norm, then updates every parameter that has a gradient: one group
    /// update per decay group (on a GPU, one launch each; the norm and the clipping coefficient two more).
    pub fn step(&mut self, grads: &GradStore) -> Result<StepInfo> {
        let c = self.config;
        let mut grad_norm = GradNorm::default();
        let present: Vec<(&Tensor, &Moments)> = self
            .slots
            .iter()
            .filter_map(|slot| grads.get(slot.var.as_tensor()).map(|g| (g, &slot.moments)))
            .collect();
        grad_norm.add_all(&present)?;
        let clip = grad_norm.clip(c.max_grad_norm)?;
        let lr = self.current_lr();
        self.step += 1;
        let t = self.step as i32;
        let step = |decay: f64| Step {
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            decay,
            step_size: lr / (1.0 - c.beta1.powi(t)),
            bias2_sqrt: (1.0 - c.beta2.powi(t)).sqrt(),
        };
        for (decayed, s) in [(true, step(1.0 - lr * c.weight_decay)), (false, step(1.0))] {
            let mut group: Vec<Update<'_>> = self
                .slots
                .iter_mut()
                .filter(|slot| slot.decay == decayed)
                .filter_map(|Slot { var, moments, .. }| {
                    grads
                        .get(var.as_tensor())
                        .map(|grad| Update { var, grad, moments })
                })
                .collect();
            update_group(&mut group, &clip, &s)?;
        }
        Ok(StepInfo { grad_norm, lr })
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
