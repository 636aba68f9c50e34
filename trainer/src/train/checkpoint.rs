//! The resume checkpoint of a training run: everything the loop needs to continue after its last complete epoch
//! as if it had never stopped — the model's parameters and buffers, the optimiser's moments and step, every
//! random generator (the epoch shuffler, the head's dropout, each backbone's dropout), the early-stopping state
//! and the epoch records so far.
//!
//! One file, `RUN/resume.safetensors`: the tensors (`param.<name>`, `adam_m.<name>`, `adam_v.<name>`) and, in
//! the safetensors metadata, the rest as JSON ([`LoopState`]) and the SHA-256 of the tensor data: a truncated
//! file, a flipped byte or a torn write is refused with an error naming the file, never loaded. A finished run's
//! checkpoint may be reduced to its state alone ([`write_finished`]: no tensors, a few KB instead of the model
//! and its optimiser moments), which is all a finished run needs to be evaluated again. It is written to a temporary name, flushed and
//! renamed at the end of every epoch, so a run killed at any moment leaves either the previous epoch's
//! checkpoint or the new one, never a torn file. A resumed run draws the dropout masks of an uninterrupted one
//! on every device: on the CPU the masks come from the saved generators themselves, on a GPU from a counter-based
//! generator keyed by draws of those generators (`ops::dropout::Counter`); on the CPU it ends with the same
//! metrics to the last digit.

use std::collections::{BTreeMap, HashMap};
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
/// The metadata key holding the SHA-256 (hex) of the file's tensor data (everything after the header).
const SUM_KEY: &str = "erc_train_tensors_sha256";
/// Bumped when the layout changes; an older checkpoint is refused with a message, not misread. 2: the tensor
/// data's checksum.
pub const FORMAT: u32 = 2;

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
    /// `classifier_lr_scheduler: plateau`: the scheduler's state (its learning rate included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plateau: Option<super::scheduler::Plateau>,
}

/// A checkpoint read back: its state and tensors (on the CPU).
pub struct Checkpoint {
    pub path: PathBuf,
    pub state: LoopState,
    tensors: HashMap<String, Tensor>,
}

impl Checkpoint {
    /// Whether the checkpoint holds the model and optimiser (not a finished run's state alone).
    pub fn has_tensors(&self) -> bool {
        !self.tensors.is_empty()
    }

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

/// Writes the checkpoint atomically (temporary file, flush, rename), with the checksum of its tensor data.
pub fn write(run: &Path, state: &LoopState, tensors: &[(String, Tensor)]) -> Result<()> {
    let path = run.join(FILE);
    let json = serde_json::to_string(state).map_err(|e| Error::Other(e.to_string()))?;
    // The checksum covers the data that follows the header, so it is known only once the file is laid out: the
    // header is written with a placeholder of the checksum's length, then the placeholder is overwritten.
    let placeholder = "0".repeat(64);
    let metadata = HashMap::from([
        (STATE_KEY.to_string(), json),
        (SUM_KEY.to_string(), placeholder.clone()),
    ]);
    // safetensors wants contiguous CPU data; the tensors are read back from the device once per epoch.
    let host = tensors
        .iter()
        .map(|(name, t)| Ok((name.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<Vec<_>>>()?;
    let mut bytes =
        safetensors::serialize(host.iter().map(|(n, t)| (n.as_str(), t)), Some(metadata)).map_err(
            |e| {
                Error::Other(format!(
                    "{}: cannot encode the resume checkpoint: {e}",
                    path.display()
                ))
            },
        )?;
    let data_start = data_start(&bytes)
        .ok_or_else(|| Error::Other("safetensors wrote a file without a header".into()))?;
    let sum = sha256_hex(&bytes[data_start..]);
    let header = &mut bytes[8..data_start];
    let at = find(header, format!("\"{placeholder}\"").as_bytes())
        .ok_or_else(|| Error::Other("the checksum placeholder is not in the header".into()))?;
    header[at + 1..at + 65].copy_from_slice(sum.as_bytes());
    super::report::write_atomic(&path, &bytes).map_err(|e| Error::io(&path, e))
}

/// Replaces a finished run's checkpoint by its state alone (no tensors): what `erc-train table4` keeps of a
/// finished row unless `--keep-checkpoints` (the largest rows' checkpoints are ~3 GB). A run resumed from it
/// trains nothing and evaluates its best weights again.
pub fn write_finished(run: &Path, state: &LoopState) -> Result<()> {
    write(run, state, &[])
}

/// The loop state of `RUN/resume.safetensors` from its header alone (the tensors are neither read nor checked):
/// what a finished run's state is reduced to.
pub fn read_state(run: &Path) -> Result<Option<LoopState>> {
    use std::io::Read;
    let path = run.join(FILE);
    let mut file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| Error::io(&path, e))?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 {
        return Err(Error::data(&path, format!("a header of {n} bytes")));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header)
        .map_err(|e| Error::io(&path, e))?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| Error::data(&path, e.to_string()))?;
    let json = header["__metadata__"][STATE_KEY]
        .as_str()
        .ok_or_else(|| Error::data(&path, "no loop state in its metadata"))?;
    serde_json::from_str(json)
        .map(Some)
        .map_err(|e| Error::data(&path, e.to_string()))
}

/// Offset of the tensor data: 8 bytes of header length, then the header.
fn data_start(bytes: &[u8]) -> Option<usize> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    8usize.checked_add(n).filter(|&end| end <= bytes.len())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads `RUN/resume.safetensors`; `None` when there is none. A file that cannot be read whole (truncated,
/// corrupt — its data not matching its checksum —, of another format) is a [`Error::Data`] naming it; a file
/// that cannot be read at all (permissions, I/O) an [`Error::Io`].
pub fn read(run: &Path) -> Result<Option<Checkpoint>> {
    let path = run.join(FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let corrupt = |why: String| {
        Error::data(
            &path,
            format!("the resume checkpoint cannot be read ({why}); delete it to restart the run from scratch"),
        )
    };
    let (_, metadata) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let entries = metadata.metadata().as_ref();
    let json = entries
        .and_then(|m| m.get(STATE_KEY))
        .ok_or_else(|| corrupt("no loop state in its metadata".into()))?;
    let state: LoopState = serde_json::from_str(json).map_err(|e| corrupt(e.to_string()))?;
    if state.format != FORMAT {
        return Err(corrupt(format!(
            "format {} where this erc-train writes {FORMAT}",
            state.format
        )));
    }
    let expected = entries
        .and_then(|m| m.get(SUM_KEY))
        .ok_or_else(|| corrupt("no checksum in its metadata".into()))?;
    let start = data_start(&bytes).ok_or_else(|| corrupt("no header".into()))?;
    if sha256_hex(&bytes[start..]) != *expected {
        return Err(corrupt(
            "its tensor data does not match its checksum: a damaged or partly written file".into(),
        ));
    }
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| corrupt(e.to_string()))?;
    Ok(Some(Checkpoint {
        path,
        state,
        tensors,
    }))
}

/// Lower-case hex SHA-256: the checkpoint's tensor-data digest, and the run's data and config fingerprints.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
            plateau: None,
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
        // written aside and renamed: nothing else is left in the folder
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [FILE]);
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

    /// One flipped byte in the tensor data (which safetensors alone would load as a different number) is caught
    /// by the checksum, with an error naming the file.
    #[test]
    fn a_flipped_byte_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let rng = ChaCha8Rng::seed_from_u64(1);
        let w = Tensor::arange(0f32, 64.0, &Device::Cpu).unwrap();
        write(dir.path(), &state(&rng), &[("param.w".into(), w)]).unwrap();
        let path = dir.path().join(FILE);
        let good = std::fs::read(&path).unwrap();
        let start = data_start(&good).unwrap();
        for at in [start + 100, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            let err = read(dir.path()).err().unwrap().to_string();
            assert!(
                err.contains(FILE) && err.contains("does not match its checksum"),
                "byte {at}: {err}"
            );
        }
        std::fs::write(&path, &good).unwrap();
        assert!(read(dir.path()).unwrap().is_some());
    }

    /// A finished run reduced to its state: readable, no tensors, a few KB.
    #[test]
    fn a_finished_state_has_no_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let rng = ChaCha8Rng::seed_from_u64(1);
        write_finished(dir.path(), &state(&rng)).unwrap();
        let back = read(dir.path()).unwrap().unwrap();
        assert!(!back.has_tensors());
        assert_eq!(back.state.epoch, 3);
        assert_eq!(read_state(dir.path()).unwrap().unwrap().epoch, 3);
        assert!(std::fs::metadata(dir.path().join(FILE)).unwrap().len() < 16 << 10);
    }
}
