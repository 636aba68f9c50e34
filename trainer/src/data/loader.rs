//! Batches: the rows of a split decoded (JPEG mosaics, WAVs, token ids) and stacked into CPU tensors on a worker
//! thread, a few batches ahead of the model.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use meld_shared::dataset::media_path;
use rayon::prelude::*;

use super::dataset::{load_audio, load_visual, MediaCounts, Preprocess, SplitData};
use crate::error::{Error, Result};

/// Model inputs for a batch of rows.
pub struct Batch {
    pub indices: Vec<usize>,
    pub text_ids: Vec<Vec<u32>>,
    /// (B, 3, H, W)
    pub visual: Option<Tensor>,
    /// (B, N)
    pub audio: Option<Tensor>,
    pub labels: Vec<usize>,
    /// MELD's sentiment of each row (a sentiment head's targets; empty without one).
    pub sentiments: Vec<usize>,
    pub missing: MediaCounts,
    /// `visual_crop: faces`: each frame's face crop, landmarks and mask.
    pub faces: Option<super::face_crops::FaceBatch>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// One-hot targets (B, classes).
    pub fn one_hot(&self, classes: usize, device: &Device) -> Result<Tensor> {
        one_hot(&self.labels, classes, device)
    }

    /// One-hot sentiment targets (B, 3).
    pub fn sentiment_one_hot(&self, device: &Device) -> Result<Tensor> {
        if self.sentiments.len() != self.labels.len() {
            return Err(Error::Other(format!(
                "a batch of {} rows with {} sentiment labels",
                self.labels.len(),
                self.sentiments.len()
            )));
        }
        one_hot(&self.sentiments, meld_shared::Sentiment::ALL.len(), device)
    }
}

fn one_hot(labels: &[usize], classes: usize, device: &Device) -> Result<Tensor> {
    let mut y = vec![0f32; labels.len() * classes];
    for (i, l) in labels.iter().enumerate() {
        y[i * classes + l] = 1.0;
    }
    Ok(Tensor::from_vec(y, (labels.len(), classes), device)?)
}

/// Decodes the items of one batch (in parallel) and stacks them.
pub fn make_batch(data: &SplitData, prep: &Preprocess, indices: &[usize]) -> Result<Batch> {
    let b = indices.len();
    let mut missing = MediaCounts::default();
    let visual = match prep.visual {
        Some(spec) => {
            let (c, h, w) = spec.shape();
            let items: Vec<Option<Vec<f32>>> = indices
                .par_iter()
                .map(|i| match spec.cell(&data.rows[*i]) {
                    Some(cell) => load_visual(&media_path(&data.csv, cell), spec).map(Some),
                    None => Ok(None),
                })
                .collect::<Result<_>>()?;
            let mut flat = Vec::with_capacity(b * c * h * w);
            for item in items {
                match item {
                    Some(v) => flat.extend(v),
                    None => {
                        missing.missing_visual += 1;
                        flat.extend(std::iter::repeat_n(0f32, c * h * w));
                    }
                }
            }
            Some(Tensor::from_vec(flat, (b, c, h, w), &Device::Cpu)?)
        }
        None => None,
    };
    let audio = match prep.audio {
        Some(spec) => {
            let items: Vec<Option<Vec<f32>>> = indices
                .par_iter()
                .map(|i| match &data.rows[*i].x_audio {
                    Some(cell) => load_audio(&media_path(&data.csv, cell), spec).map(Some),
                    None => Ok(None),
                })
                .collect::<Result<_>>()?;
            let mut flat = Vec::with_capacity(b * spec.samples);
            for item in items {
                match item {
                    Some(v) => flat.extend(v),
                    None => {
                        missing.missing_audio += 1;
                        flat.extend(std::iter::repeat_n(0f32, spec.samples));
                    }
                }
            }
            Some(Tensor::from_vec(flat, (b, spec.samples), &Device::Cpu)?)
        }
        None => None,
    };
    let faces = match prep.faces {
        Some(spec) => {
            let (faces, faceless) = super::face_crops::face_batch(data, spec, indices)?;
            missing.missing_visual += faceless;
            Some(faces)
        }
        None => None,
    };
    let text_ids = if prep.text {
        indices
            .iter()
            .map(|i| data.token_ids.get(*i).cloned().unwrap_or_default())
            .collect()
    } else {
        Vec::new()
    };
    let sentiments = if prep.sentiment {
        indices
            .iter()
            .map(|i| {
                data.sentiments
                    .get(*i)
                    .copied()
                    .flatten()
                    .ok_or_else(|| Error::data(&data.csv, format!("row {i} has no sentiment")))
            })
            .collect::<Result<_>>()?
    } else {
        Vec::new()
    };
    Ok(Batch {
        indices: indices.to_vec(),
        text_ids,
        visual,
        audio,
        labels: indices.iter().map(|i| data.labels[*i]).collect(),
        sentiments,
        missing,
        faces,
    })
}

/// Batches decoded on a worker thread, a few ahead of the consumer, in the given order.
pub struct Loader {
    rx: Receiver<Result<Batch>>,
    worker: Option<JoinHandle<()>>,
}

/// How many decoded batches may wait for the model.
const PREFETCH: usize = 3;

impl Loader {
    pub fn spawn(
        data: Arc<SplitData>,
        prep: Arc<Preprocess>,
        order: Vec<usize>,
        batch_size: usize,
    ) -> Self {
        let (tx, rx) = sync_channel(PREFETCH);
        let worker = std::thread::spawn(move || {
            for chunk in order.chunks(batch_size.max(1)) {
                let batch = make_batch(&data, &prep, chunk);
                let failed = batch.is_err();
                if tx.send(batch).is_err() || failed {
                    break; // the consumer is gone, or it has been told of the error
                }
            }
        });
        Loader {
            rx,
            worker: Some(worker),
        }
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.rx.recv().ok()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Unblock the worker (its sends fail once the receiver is gone), then wait for it.
        let (_, dead) = sync_channel(0);
        self.rx = dead;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}
