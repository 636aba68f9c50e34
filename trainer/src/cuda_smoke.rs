//! `y = a·x` and `a·x + y` (f32) by our own CUDA kernels: the smallest ops that go the whole way our CUDA kernels
//! go — `kernels/smoke.cu` compiled to PTX by `build.rs`, the PTX loaded once per device by name, each kernel
//! launched from a candle custom op ([`CustomOp1`], [`CustomOp2`]) whose `cuda_fwd` sits beside its `cpu_fwd` (the
//! shape of candle-nn's `ops.rs`). They prove the build plumbing; the real kernels follow the same pattern.
//!
//! ```ignore
//! let y = erc_train::cuda_smoke::scale(&x, 2.0)?;   // x: f32 on any device
//! let z = erc_train::cuda_smoke::axpy(&x, &y, 2.0)?; // x, y: same shape, same device
//! ```

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{
    bail, CpuStorage, CudaStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor,
};

/// The PTX of each `kernels/*.cu`, one `&str` constant per file (`SMOKE` for `smoke.cu`), written by `build.rs`.
pub mod ptx {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// Name under which the device caches the loaded module: one per `.cu` file, unique across the crate.
const MODULE: &str = "erc_train_smoke";

struct Scale {
    a: f32,
}

impl CustomOp1 for Scale {
    fn name(&self) -> &'static str {
        "scale-f32"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), Some((start, end))) = (storage, layout.contiguous_offsets())
        else {
            bail!("scale_f32 expects a contiguous f32 tensor")
        };
        let y = x[start..end].iter().map(|v| self.a * v).collect();
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = storage.device();
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("scale_f32 expects a contiguous tensor")
        };
        // Errors unless the storage holds f32; `slice` applies the layout's offset (a view, no copy).
        let x = storage.as_cuda_slice::<f32>()?.slice(start..end);
        let n = end - start;
        // SAFETY: every element is written by the kernel below before anyone reads it.
        let y = unsafe { dev.alloc::<f32>(n)? };
        if n > 0 {
            let func = dev.get_or_load_custom_func("scale_f32", MODULE, ptx::SMOKE)?;
            let n = u32::try_from(n)
                .map_err(|_| candle_core::Error::Msg("scale_f32: > 2^32 elements".into()))?;
            let mut launch = func.builder();
            launch.arg(&x);
            launch.arg(&y);
            launch.arg(&self.a);
            launch.arg(&n);
            // SAFETY: the argument types match the kernel's signature (const float*, float*, float, unsigned).
            unsafe { launch.launch(LaunchConfig::for_num_elems(n)) }.w()?;
        }
        Ok((
            CudaStorage::wrap_cuda_slice(y, dev.clone()),
            layout.shape().clone(),
        ))
    }
}

/// `a·x` elementwise, on the device `x` is on (no gradient: a plumbing check, not a training op).
pub fn scale(x: &Tensor, a: f32) -> Result<Tensor> {
    x.apply_op1_no_bwd(&Scale { a })
}

struct Axpy {
    a: f32,
}

impl CustomOp2 for Axpy {
    fn name(&self) -> &'static str {
        "axpy-f32"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        y: &CpuStorage,
        yl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::F32(y)) = (x, y) else {
            bail!("axpy_f32 expects f32 tensors")
        };
        let (Some((x0, x1)), Some((y0, y1))) = (xl.contiguous_offsets(), yl.contiguous_offsets())
        else {
            bail!("axpy_f32 expects contiguous tensors")
        };
        if xl.shape() != yl.shape() {
            bail!(
                "axpy_f32: shapes {:?} and {:?} differ",
                xl.shape(),
                yl.shape()
            )
        }
        let out = x[x0..x1]
            .iter()
            .zip(&y[y0..y1])
            .map(|(x, y)| self.a * x + y)
            .collect();
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        y: &CudaStorage,
        yl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = x.device();
        let (Some((x0, x1)), Some((y0, y1))) = (xl.contiguous_offsets(), yl.contiguous_offsets())
        else {
            bail!("axpy_f32 expects contiguous tensors")
        };
        if xl.shape() != yl.shape() {
            bail!(
                "axpy_f32: shapes {:?} and {:?} differ",
                xl.shape(),
                yl.shape()
            )
        }
        // Each input has its own storage and its own layout (offset): slice each by its own.
        let xs = x.as_cuda_slice::<f32>()?.slice(x0..x1);
        let ys = y.as_cuda_slice::<f32>()?.slice(y0..y1);
        let n = x1 - x0;
        // SAFETY: written in full by the kernel.
        let out = unsafe { dev.alloc::<f32>(n)? };
        if n > 0 {
            let func = dev.get_or_load_custom_func("axpy_f32", MODULE, ptx::SMOKE)?;
            let n = u32::try_from(n)
                .map_err(|_| candle_core::Error::Msg("axpy_f32: > 2^32 elements".into()))?;
            let mut launch = func.builder();
            launch.arg(&xs);
            launch.arg(&ys);
            launch.arg(&out);
            launch.arg(&self.a);
            launch.arg(&n);
            // SAFETY: argument types match `axpy_f32(const float*, const float*, float*, float, unsigned)`.
            unsafe { launch.launch(LaunchConfig::for_num_elems(n)) }.w()?;
        }
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev.clone()),
            xl.shape().clone(),
        ))
    }
}

/// `a·x + y` elementwise (same shapes, same device; no gradient).
pub fn axpy(x: &Tensor, y: &Tensor, a: f32) -> Result<Tensor> {
    x.apply_op2_no_bwd(y, &Axpy { a })
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    /// The CUDA body against the CPU body on the same values, including a view with an offset. Needs a GPU: the
    /// CUDA build's test binary cannot even start without the driver's libcuda.so.1.
    #[test]
    fn cuda_matches_cpu() -> candle_core::Result<()> {
        let dev = Device::new_cuda(0)?;
        let x = Tensor::arange(0f32, 1000.0, &Device::Cpu)?.reshape((10, 100))?;
        let x = x.narrow(0, 3, 5)?; // offset 300 into the storage
        let cpu = super::scale(&x, -1.5)?;
        let gpu = super::scale(&x.to_device(&dev)?, -1.5)?.to_device(&Device::Cpu)?;
        assert_eq!(cpu.to_vec2::<f32>()?, gpu.to_vec2::<f32>()?);

        let y = Tensor::arange(0f32, 500.0, &Device::Cpu)?
            .reshape((5, 100))?
            .affine(0.25, 1.0)?;
        let cpu = super::axpy(&x, &y, 0.3)?;
        let gpu =
            super::axpy(&x.to_device(&dev)?, &y.to_device(&dev)?, 0.3)?.to_device(&Device::Cpu)?;
        // nvcc contracts a·x + y into one fused multiply-add: at most a rounding apart from the CPU's two.
        let diff = (cpu - gpu)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff <= 1e-4, "axpy: CPU and CUDA differ by {diff}");
        Ok(())
    }
}
