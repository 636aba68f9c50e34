//! `classifier_lr_scheduler: plateau` — PyTorch's `ReduceLROnPlateau` (mode `min`, threshold 1e-4 relative,
//! cooldown 0, min_lr 0, eps 1e-8), stepped with the validation loss after every epoch: when the loss has not
//! beaten the best by the relative threshold for more than `patience` epochs, the learning rate is multiplied by
//! `factor`. Its whole state is serialisable: the resume checkpoint keeps it, so a resumed run takes the same
//! learning rates as an uninterrupted one.

use serde::{Deserialize, Serialize};

/// PyTorch's defaults that the config does not expose.
const THRESHOLD: f64 = 1e-4;
const COOLDOWN: usize = 0;
const MIN_LR: f64 = 0.0;
const EPS: f64 = 1e-8;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plateau {
    pub factor: f64,
    pub patience: usize,
    /// The learning rate now (multiplied in place as PyTorch does, so the sequence matches to the last bit).
    pub lr: f64,
    /// The best (lowest) validation loss seen; `None` before the first (PyTorch: +inf).
    pub best: Option<f64>,
    pub num_bad_epochs: usize,
    pub cooldown_counter: usize,
}

impl Plateau {
    pub fn new(lr: f64, factor: f64, patience: usize) -> Self {
        Plateau {
            factor,
            patience,
            lr,
            best: None,
            num_bad_epochs: 0,
            cooldown_counter: 0,
        }
    }

    /// One epoch's validation loss; returns the learning rate for the next epoch.
    pub fn step(&mut self, loss: f64) -> f64 {
        // mode min, threshold_mode rel: better when below best·(1 − threshold); NaN never is
        let better = match self.best {
            None => loss < f64::INFINITY,
            Some(best) => loss < best * (1.0 - THRESHOLD),
        };
        if better {
            self.best = Some(loss);
            self.num_bad_epochs = 0;
        } else {
            self.num_bad_epochs += 1;
        }
        if self.cooldown_counter > 0 {
            self.cooldown_counter -= 1;
            self.num_bad_epochs = 0;
        }
        if self.num_bad_epochs > self.patience {
            let new_lr = (self.lr * self.factor).max(MIN_LR);
            if self.lr - new_lr > EPS {
                tracing::info!(
                    "plateau: validation loss stalled for {} epochs, learning rate {:.3e} → {new_lr:.3e}",
                    self.num_bad_epochs,
                    self.lr
                );
                self.lr = new_lr;
            }
            self.cooldown_counter = COOLDOWN;
            self.num_bad_epochs = 0;
        }
        self.lr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_after_patience_and_resets() {
        let mut p = Plateau::new(1.0, 0.5, 2);
        let lrs: Vec<f64> = [1.0, 1.0, 1.0, 1.0, 0.9, 0.95, 0.95, 0.95]
            .iter()
            .map(|l| p.step(*l))
            .collect();
        assert_eq!(lrs, [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25]);
        // a loss within the relative threshold of the best is no improvement
        let mut p = Plateau::new(1.0, 0.5, 0);
        assert_eq!(p.step(1.0), 1.0);
        assert_eq!(p.step(0.99995), 0.5);
    }
}
