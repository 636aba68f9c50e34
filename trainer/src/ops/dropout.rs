//! Inverted dropout: each element zeroed with probability p, the rest scaled by 1/(1−p).
//!
//! Where the masks come from decides reproducibility and traffic:
//!
//! * for a CPU tensor they are drawn from the run's seeded generator, one `f64` per element in order
//!   ([`Mask::Host`]; candle's CPU generator cannot be seeded, and runs must be reproducible);
//! * elsewhere they come from a counter-based generator ([`Counter`]: Philox4x32-10, `kernels/philox.cuh`), whose
//!   draw for element i is a function of (key, i) alone. Only the 64-bit key is drawn from the run's seeded
//!   generator — one draw per mask, so the key is fixed by the seed, the step and the tensor's place in the step —
//!   and the kernels that apply dropout compute the factors themselves, in the forward and again in the backward:
//!   no mask tensor is allocated, copied or kept, and nothing but the seeded generators' states (which resume
//!   checkpoints save) decides the masks. A resumed GPU run therefore draws the masks of an uninterrupted one, as
//!   a CPU run does.
//!
//! The ops that apply dropout themselves (the head's Linear, softmax + dropout) take a [`Mask`] drawn here, so
//! that they and the composed path draw the same masks in the same order. CPU kernel: the product with the host
//! mask. CUDA kernel (`kernels/dropout.cu`): one node whose forward and backward multiply by the counter's factors.
//! Generic: the mask as a tensor ([`Mask::into_tensor`]; on a GPU written by `dropout_mask`) times x.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::Kernel;
use crate::error::{Error, Result};

/// A mask drawn by the counter-based generator: element i is kept iff Philox4x32-10 under `key`, at counter
/// ⌊i/4⌋, gives word i mod 4 with `word >> 8 ≥ ⌈p·2²⁴⌉` (`kernels/philox.cuh` is the device side).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Counter {
    pub key: u64,
    pub p: f64,
}

impl Counter {
    /// The keep threshold on the top 24 bits of a word: ⌈p·2²⁴⌉, in 0 ..= 2²⁴.
    pub fn threshold(&self) -> u32 {
        (self.p.clamp(0.0, 1.0) * (1u64 << 24) as f64).ceil() as u32
    }

    /// The factor of a kept element, 1/(1 − p) (0 when everything is dropped).
    pub fn scale(&self) -> f32 {
        if self.p >= 1.0 {
            0.0
        } else {
            (1.0 / (1.0 - self.p)) as f32
        }
    }

    /// The factors of elements `0..len` (0 or [`Counter::scale`]), as the kernels compute them.
    pub fn factors(&self, len: usize) -> Vec<f32> {
        let (threshold, scale) = (self.threshold(), self.scale());
        let mut out = Vec::with_capacity(len);
        for block in 0..len.div_ceil(4) {
            let words = philox4x32_10(self.key, block as u64);
            for word in words.iter().take(len - 4 * block) {
                out.push(if word >> 8 >= threshold { scale } else { 0.0 });
            }
        }
        out
    }
}

/// Philox4x32-10 of counter (block low, block high, 0, 0) under key (key low, key high): the generator of
/// `kernels/philox.cuh`, on the host.
pub fn philox4x32_10(key: u64, block: u64) -> [u32; 4] {
    let mut c = [block as u32, (block >> 32) as u32, 0, 0];
    let mut k = [key as u32, (key >> 32) as u32];
    for _ in 0..10 {
        let p0 = 0xD251_1F53u64 * c[0] as u64;
        let p1 = 0xCD9E_8D57u64 * c[2] as u64;
        c = [
            (p1 >> 32) as u32 ^ c[1] ^ k[0],
            p1 as u32,
            (p0 >> 32) as u32 ^ c[3] ^ k[1],
            p0 as u32,
        ];
        k = [
            k[0].wrapping_add(0x9E37_79B9),
            k[1].wrapping_add(0xBB67_AE85),
        ];
    }
    c
}

/// Inverted-dropout factors (0 or 1/(1−p)), one per element of the tensor they apply to.
#[derive(Debug, Clone)]
pub enum Mask {
    /// Drawn on the host (CPU tensors): what the CPU kernels read.
    Host(Vec<f32>),
    /// Drawn where it is applied, from its key (tensors on a GPU).
    Counter { counter: Counter, len: usize },
}

impl Mask {
    /// A mask for a tensor of `shape` on `device`: drawn from `rng` on the CPU, elsewhere a [`Counter`] keyed by
    /// one draw from `rng`.
    pub fn draw(shape: &Shape, p: f64, device: &Device, rng: &mut ChaCha8Rng) -> Result<Mask> {
        if device.is_cpu() {
            return Ok(Mask::Host(host_mask(shape.elem_count(), p, rng)));
        }
        Ok(Mask::Counter {
            counter: Counter {
                key: rng.gen::<u64>(),
                p,
            },
            len: shape.elem_count(),
        })
    }

    /// The factors as a tensor of `shape` and `dtype` on `device` (a counter's are computed there).
    pub fn into_tensor(self, shape: &Shape, device: &Device, dtype: DType) -> Result<Tensor> {
        let t = match self {
            Mask::Host(values) => Tensor::from_vec(values, shape, device)?,
            Mask::Counter { counter, len } => {
                if len != shape.elem_count() {
                    return Err(Error::Other(format!(
                        "dropout: a mask of {len} factors for a tensor {shape:?}"
                    )));
                }
                counter_tensor(counter, shape, device)?
            }
        };
        Ok(t.to_dtype(dtype)?)
    }

    /// The factors on the host (for the CPU kernels).
    pub fn into_host(self) -> Result<Vec<f32>> {
        match self {
            Mask::Host(values) => Ok(values),
            Mask::Counter { counter, len } => Ok(counter.factors(len)),
        }
    }

    /// How many factors.
    pub fn len(&self) -> usize {
        match self {
            Mask::Host(values) => values.len(),
            Mask::Counter { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A counter's factors as a tensor on `device`: the `dropout_mask` kernel on a GPU, the host generator elsewhere.
fn counter_tensor(counter: Counter, shape: &Shape, device: &Device) -> Result<Tensor> {
    if Kernel::select_device(device, true) == Kernel::Cuda {
        let zeros = Tensor::zeros(shape, DType::F32, device)?;
        return Ok(zeros.apply_op1_no_bwd(&CounterMask(counter))?);
    }
    Ok(Tensor::from_vec(
        counter.factors(shape.elem_count()),
        shape,
        device,
    )?)
}

/// `len` inverted-dropout factors: 0 with probability `p`, 1/(1−p) otherwise (one `f64` draw each, in order).
fn host_mask(len: usize, p: f64, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let keep = 1.0 - p;
    let scale = (1.0 / keep) as f32;
    (0..len)
        .map(|_| if rng.gen::<f64>() < keep { scale } else { 0.0 })
        .collect()
}

/// `x ⊙ mask` with a mask from [`Mask::draw`]; the identity for p ≤ 0. Any shape and device.
pub fn dropout(x: &Tensor, p: f64, rng: &mut ChaCha8Rng) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let mask = Mask::draw(x.shape(), p, x.device(), rng)?;
    match (Kernel::select(x, true), mask) {
        (Kernel::Cuda, Mask::Counter { counter, .. }) => {
            Ok(x.contiguous()?.apply_op1(CounterDropout(counter))?)
        }
        (_, mask) => {
            let factors = mask.into_tensor(x.shape(), x.device(), x.dtype())?;
            Ok((x * factors)?)
        }
    }
}

/// [`dropout`] in training mode only, with a generator shared behind a lock (the backbones' forward takes `&self`).
pub fn dropout_shared(x: &Tensor, p: f64, train: bool, rng: &Mutex<ChaCha8Rng>) -> Result<Tensor> {
    if !train || p <= 0.0 {
        return Ok(x.clone());
    }
    dropout(x, p, &mut *lock(rng)?)
}

/// The shared generator, or an error if a thread panicked holding it.
pub(crate) fn lock(rng: &Mutex<ChaCha8Rng>) -> Result<std::sync::MutexGuard<'_, ChaCha8Rng>> {
    rng.lock()
        .map_err(|_| Error::Other("dropout generator poisoned".into()))
}

// ---------------------------------------------------------------------------------------------------------------
// The CUDA bodies

/// `x ⊙ factors(counter)` as one node: the forward and the backward (the same product on ∂L/∂y) draw the factors
/// in the kernel. CUDA only: on the CPU the masks are host masks.
struct CounterDropout(Counter);

impl CustomOp1 for CounterDropout {
    fn name(&self) -> &'static str {
        "dropout-counter"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        // Not reached by `dropout` (CPU tensors get host masks); kept exact for completeness.
        let x = super::contiguous_f32(s, l, "dropout")?;
        let factors = self.0.factors(x.len());
        let y = x.iter().zip(&factors).map(|(x, f)| x * f).collect();
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{alloc, elementwise, input, launch, storage, DROPOUT};
        use candle_core::backend::BackendStorage;
        let dev = s.device();
        let x = input(s, l, "dropout")?;
        let n = x.len();
        let mut y = alloc::<f32>(dev, n)?;
        let (n64, key, threshold, scale) =
            (n as u64, self.0.key, self.0.threshold(), self.0.scale());
        // dropout_apply(const float* x, float* y, unsigned long long n, unsigned long long key,
        //               unsigned threshold, float scale)
        launch!(
            dev,
            DROPOUT,
            "dropout_apply",
            elementwise(n.div_ceil(4)),
            [&x, &mut y, &n64, &key, &threshold, &scale]
        );
        Ok((storage(y, dev), l.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(
            grad_res
                .contiguous()?
                .apply_op1_no_bwd(&CounterDropout(self.0))?,
        ))
    }
}

/// A counter's factors written over a tensor of its shape (the input's values are ignored).
struct CounterMask(Counter);

impl CustomOp1 for CounterMask {
    fn name(&self) -> &'static str {
        "dropout-counter-mask"
    }

    fn cpu_fwd(&self, _: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = l.shape().elem_count();
        Ok((CpuStorage::F32(self.0.factors(n)), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{alloc, elementwise, launch, storage, DROPOUT};
        use candle_core::backend::BackendStorage;
        let dev = s.device();
        let n = l.shape().elem_count();
        let mut mask = alloc::<f32>(dev, n)?;
        let (n64, key, threshold, scale) =
            (n as u64, self.0.key, self.0.threshold(), self.0.scale());
        // dropout_mask(float* mask, unsigned long long n, unsigned long long key, unsigned threshold, float scale)
        launch!(
            dev,
            DROPOUT,
            "dropout_mask",
            elementwise(n.div_ceil(4)),
            [&mut mask, &n64, &key, &threshold, &scale]
        );
        Ok((storage(mask, dev), l.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::checkpoint::RngState;
    use rand::SeedableRng;

    /// Random123's known-answer vectors for Philox4x32-10 (kat_vectors: zero, all-ones and π counters and keys).
    #[test]
    fn philox_matches_the_known_answers() {
        // (counter c0..c3, key k0, k1) → output; our counter has c2 = c3 = 0, so the π vector runs the rounds
        // directly below.
        assert_eq!(
            philox4x32_10(0, 0),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        let rounds = |mut c: [u32; 4], mut k: [u32; 2]| {
            for _ in 0..10 {
                let p0 = 0xD251_1F53u64 * c[0] as u64;
                let p1 = 0xCD9E_8D57u64 * c[2] as u64;
                c = [
                    (p1 >> 32) as u32 ^ c[1] ^ k[0],
                    p1 as u32,
                    (p0 >> 32) as u32 ^ c[3] ^ k[1],
                    p0 as u32,
                ];
                k = [
                    k[0].wrapping_add(0x9E37_79B9),
                    k[1].wrapping_add(0xBB67_AE85),
                ];
            }
            c
        };
        assert_eq!(
            rounds([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            rounds(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0]
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
        // the host function is those rounds on (block, 0, 0) under the key's halves
        let (key, block) = (0x0123_4567_89ab_cdefu64, 0xfedc_ba98_7654_3210u64);
        assert_eq!(
            philox4x32_10(key, block),
            rounds(
                [block as u32, (block >> 32) as u32, 0, 0],
                [key as u32, (key >> 32) as u32]
            )
        );
    }

    /// The factors are 0 or 1/(1 − p) at the rate p (within 5σ), p = 0 keeps everything, p = 1 drops everything,
    /// and each element's factor does not depend on how many are drawn.
    #[test]
    fn counter_masks_drop_at_rate_p() {
        let n = 200_003;
        for p in [0.1, 0.5] {
            let c = Counter { key: 42, p };
            let f = c.factors(n);
            assert_eq!(f.len(), n);
            assert!(f.iter().all(|&v| v == 0.0 || v == c.scale()));
            let dropped = f.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
            let sigma = (p * (1.0 - p) / n as f64).sqrt();
            assert!((dropped - p).abs() < 5.0 * sigma, "p {p}: {dropped}");
            assert_eq!(c.factors(7), f[..7]);
        }
        assert!(Counter { key: 1, p: 0.0 }
            .factors(1000)
            .iter()
            .all(|&v| v == 1.0));
        assert!(Counter { key: 1, p: 1.0 }
            .factors(1000)
            .iter()
            .all(|&v| v == 0.0));
        // other keys, other masks
        assert_ne!(
            Counter { key: 1, p: 0.5 }.factors(64),
            Counter { key: 2, p: 0.5 }.factors(64)
        );
    }

    /// A GPU run's masks across an interruption: the keys come from the run's seeded generator, which a resume
    /// checkpoint saves (`RngState`) and restores, so the masks drawn after a resume — every tensor of every
    /// later step — are those of the run that never stopped.
    #[test]
    fn a_resumed_run_draws_the_masks_of_an_uninterrupted_one() {
        let shapes = [Shape::from((4, 7)), Shape::from((3, 5, 2)), Shape::from(9)];
        // the masks a GPU would apply, as the kernels compute them
        let step_masks = |rng: &mut ChaCha8Rng| -> Vec<Vec<f32>> {
            shapes
                .iter()
                .map(|s| {
                    // a device that is not the CPU: the keyed generator
                    let mask = Mask::Counter {
                        counter: Counter {
                            key: rng.gen::<u64>(),
                            p: 0.3,
                        },
                        len: s.elem_count(),
                    };
                    mask.into_host().unwrap()
                })
                .collect()
        };
        let mut uninterrupted = ChaCha8Rng::seed_from_u64(9);
        let all: Vec<_> = (0..6).map(|_| step_masks(&mut uninterrupted)).collect();

        let mut first = ChaCha8Rng::seed_from_u64(9);
        let before: Vec<_> = (0..3).map(|_| step_masks(&mut first)).collect();
        // the checkpoint's copy of the generator, written and read back as the resume path does
        let saved = serde_json::to_string(&RngState::of(&first)).unwrap();
        let mut resumed = serde_json::from_str::<RngState>(&saved)
            .unwrap()
            .restore()
            .unwrap();
        let after: Vec<_> = (0..3).map(|_| step_masks(&mut resumed)).collect();
        assert_eq!([before, after].concat(), all);
        // and the draws are real masks: the steps differ
        assert_ne!(all[0], all[1]);
    }

    /// On the CPU the op, the mask tensor and the host factors agree (the GPU check compares the CUDA kernels with
    /// the same factors).
    #[test]
    fn counter_bodies_agree_on_the_cpu() {
        let x = Tensor::arange(0f32, 103.0, &Device::Cpu).unwrap();
        let c = Counter { key: 77, p: 0.4 };
        let y = x.apply_op1(CounterDropout(c)).unwrap();
        let mask = Mask::Counter {
            counter: c,
            len: 103,
        }
        .into_tensor(x.shape(), &Device::Cpu, DType::F32)
        .unwrap();
        let expected = (&x * &mask).unwrap();
        assert_eq!(
            y.to_vec1::<f32>().unwrap(),
            expected.to_vec1::<f32>().unwrap()
        );
    }
}
