//! The resume checkpoint of a training run: everything the loop needs to continue after its last complete epoch
//! as if it had never stopped — the model's parameters and buffers, the optimiser's moments and step, every
//! random generator (the epoch shuffler, the head's dropout, each backbone's dropout), the early-stopping state
//! and the epoch records so far.
//!
//! One file, `RUN/resume.safetensors`: the tensors (`param.<name>`, `adam_m.<name>`, `adam_v.<name>`) and, in
//! the safetensors metadata, the rest as JSON ([`LoopState`]). It is written to a temporary name, flushed and
//! renamed at the end of every epoch, so a run killed at any moment leaves either the previous epoch's
//! checkpoint or the new one, never a torn file. A resumed run draws the dropout masks of an uninterrupted one
//! on every device: on the CPU the masks come from the saved generators themselves, on a GPU from a counter-based
//! generator keyed by draws of those generators (`ops::dropout::Counter`); on the CPU it ends with the same
//! metrics to the last digit.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::report::EpochRecord;
use crate::error::{Error, Result};

/// The checkpoint file of a run folder.
pub const FILE: &str = "resume.safetensors";
/// The metadata key holding the [`LoopState`] JSON.
const STATE_KEY: &str = "erc_train_resume";
/// Bumped when the layout changes; an older checkpoint is refused with a message, not misread.
pub const FORMAT: u32 = 1;

/// A ChaCha generator's exact position: its seed, stream and word position.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RngState {
    seed: String,
    stream: u64,
    /// u128, as a decimal string (JSON numbers are not that wide).
    word_pos: String,
}

impl RngState {
    pub fn of(rng: &ChaCha8Rng) -> Self {
        RngState {
            seed: rng.get_seed().iter().map(|b| format!("{b:02x}")).collect(),
            stream: rng.get_stream(),
            word_pos: rng.get_word_pos().to_string(),
        }
    }

    pub fn restore(&self) -> Result<ChaCha8Rng> {
        let bad = || {
            Error::Other(format!(
                "resume checkpoint: a generator state is malformed ({self:?})"
            ))
        };
        if self.seed.len() != 64 {
            return Err(bad());
        }
        let mut seed = [0u8; 32];
        for (i, byte) in seed.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&self.seed[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        let mut rng = ChaCha8Rng::from_seed(seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(self.word_pos.parse::<u128>().map_err(|_| bad())?);
        Ok(rng)
    }
}

/// The loop's state after a complete epoch (everything but tensors).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoopState {
    pub format: u32,
    /// The last complete epoch (1-based).
    pub epoch: usize,
    pub optimizer_steps: usize,
    /// Best selection-metric value and its epoch.
    pub best: Option<(f64, usize)>,
    /// Evaluations since the last sufficient improvement (early stopping).
    pub stale: usize,
    pub stopped_early: bool,
    pub records: Vec<EpochRecord>,
    pub train_seconds: f64,
    pub train_samples: usize,
    pub shuffle_rng: RngState,
    pub dropout_rng: RngState,
    /// The backbones' own dropout generators, by module.
    pub model_rngs: BTreeMap<String, RngState>,
    /// What the run was started with: a checkpoint of another config or data is not resumed.
    pub config_sha256: String,
    pub data_sha256: String,
}

/// A checkpoint read back: its state and tensors (on the CPU).
pub struct Checkpoint {
    pub path: PathBuf,
    pub state: LoopState,
    tensors: HashMap<String, Tensor>,
}

impl Checkpoint {
    /// The tensor saved under `name`, moved to `device`.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| {
            Error::data(
                &self.path,
                format!("tensor `{name}` missing from the resume checkpoint"),
            )
        })?;
        Ok(t.to_device(device)?)
    }

    /// The names of the saved tensors with `prefix`, the prefix removed.
    pub fn names(&self, prefix: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .tensors
            .keys()
            .filter_map(|k| k.strip_prefix(prefix).map(str::to_string))
            .collect();
        names.sort();
        names
    }
}

/// Writes the checkpoint atomically (temporary file, flush, rename).
pub fn write(run: &Path, state: &LoopState, tensors: &[(String, Tensor)]) -> Result<()> {
    let path = run.join(FILE);
    let tmp = run.join(format!("{FILE}.tmp"));
    let json = serde_json::to_string(state).map_err(|e| Error::Other(e.to_string()))?;
    let metadata = HashMap::from([(STATE_KEY.to_string(), json)]);
    // safetensors wants contiguous CPU data; the tensors are read back from the device once per epoch.
    let host = tensors
        .iter()
        .map(|(name, t)| Ok((name.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(host.iter().map(|(n, t)| (n.as_str(), t)), Some(metadata))
        .map_err(|e| {
        Error::Other(format!(
            "{}: cannot encode the resume checkpoint: {e}",
            path.display()
        ))
    })?;
    let mut file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    file.write_all(&bytes).map_err(|e| Error::io(&tmp, e))?;
    file.sync_all().map_err(|e| Error::io(&tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
}

/// Reads `RUN/resume.safetensors`; `None` when there is none. A file that cannot be read whole (truncated,
/// corrupt, of another format) is an error naming it.
pub fn read(run: &Path) -> Result<Option<Checkpoint>> {
    let path = run.join(FILE);
    if !path.exists() {
        return Ok(None);
    }
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let corrupt = |why: String| {
        Error::data(
            &path,
            format!("the resume checkpoint cannot be read ({why}); delete it to restart the run from scratch"),
        )
    };
    let (_, metadata) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let json = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(STATE_KEY))
        .ok_or_else(|| corrupt("no loop state in its metadata".into()))?;
    let state: LoopState = serde_json::from_str(json).map_err(|e| corrupt(e.to_string()))?;
    if state.format != FORMAT {
        return Err(corrupt(format!(
            "format {} where this erc-train writes {FORMAT}",
            state.format
        )));
    }
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| corrupt(e.to_string()))?;
    Ok(Some(Checkpoint {
        path,
        state,
        tensors,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn state(rng: &ChaCha8Rng) -> LoopState {
        LoopState {
            format: FORMAT,
            epoch: 3,
            optimizer_steps: 42,
            best: Some((0.51, 2)),
            stale: 1,
            stopped_early: false,
            records: Vec::new(),
            train_seconds: 1.5,
            train_samples: 300,
            shuffle_rng: RngState::of(rng),
            dropout_rng: RngState::of(rng),
            model_rngs: BTreeMap::new(),
            config_sha256: "c".into(),
            data_sha256: "d".into(),
        }
    }

    /// A generator restored from its state continues with the same numbers.
    #[test]
    fn generators_resume_where_they_stopped() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for _ in 0..1001 {
            rng.gen::<u32>();
        }
        let mut restored = RngState::of(&rng).restore().unwrap();
        let a: Vec<u64> = (0..50).map(|_| rng.gen()).collect();
        let b: Vec<u64> = (0..50).map(|_| restored.gen()).collect();
        assert_eq!(a, b);
    }

    /// Round trip of state and tensors; a truncated file is an error naming it, not a panic.
    #[test]
    fn round_trip_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let rng = ChaCha8Rng::seed_from_u64(1);
        let w = Tensor::arange(0f32, 12.0, &Device::Cpu)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        write(dir.path(), &state(&rng), &[("param.w".into(), w.clone())]).unwrap();
        assert!(!dir.path().join(format!("{FILE}.tmp")).exists());
        let back = read(dir.path()).unwrap().unwrap();
        assert_eq!(back.state.epoch, 3);
        assert_eq!(back.state.best, Some((0.51, 2)));
        assert_eq!(back.names("param."), ["w"]);
        let w2 = back.tensor("param.w", &Device::Cpu).unwrap();
        assert_eq!(w2.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());

        let path = dir.path().join(FILE);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let err = read(dir.path()).err().unwrap().to_string();
        assert!(
            err.contains(FILE) && err.contains("cannot be read"),
            "{err}"
        );
        assert!(read(tempfile::tempdir().unwrap().path()).unwrap().is_none());
    }
}
