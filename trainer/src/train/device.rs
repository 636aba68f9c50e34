//! Opening the device a run trains on, with one-line errors that name the cause and the fix: a binary built
//! without CUDA, no NVIDIA driver or GPU, a driver older than the CUDA runtime, missing CUDA libraries.
//!
//! cudarc loads the driver and the CUDA libraries when first used and panics when one is missing; the probe
//! below runs that first use (a matrix product, a random draw) inside `catch_unwind` with the panic message
//! silenced, so the user sees the explanation instead of a backtrace.

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// Where to train: the CPU or one CUDA GPU by ordinal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;

    /// `cpu`, `cuda` (GPU 0), `cuda:N` or `N`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        let gpu = |n: &str| {
            n.parse::<usize>()
                .map(DeviceSpec::Cuda)
                .map_err(|_| format!("device `{s}`: expected cpu, cuda, cuda:N or a GPU number"))
        };
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => gpu(s.strip_prefix("cuda:").unwrap_or(s)),
        }
    }
}

/// Matrix products in TF32 on tensor cores (`precision: tf32`) or in IEEE fp32 on a GPU: a process-wide cuBLAS
/// setting, nothing on the CPU.
pub fn set_tf32(device: &Device, on: bool) {
    if device.is_cuda() {
        candle_core::cuda::set_gemm_reduced_precision_f32(on);
    }
}

/// The fix every CUDA library problem shares.
const LIBRARY_PATH: &str =
    "point LD_LIBRARY_PATH at the CUDA 13 libraries (a PyTorch/nvidia-* pip environment's \
    site-packages/nvidia/*/lib folders, or /usr/local/cuda-13/lib64; see README, CUDA)";

/// Opens `spec`, checking on a GPU that the driver and the libraries a step needs load.
pub fn open(spec: DeviceSpec) -> Result<Device> {
    let DeviceSpec::Cuda(ordinal) = spec else {
        return Ok(Device::Cpu);
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(Error::Other(
            "--device cuda: this erc-train was built without CUDA; build the CUDA binary with `make cuda` \
             (it installs its own toolchain; README, CUDA) and run target-cuda/release/erc-train"
                .into(),
        ));
    }
    let probe = move || -> std::result::Result<Device, String> {
        let device = Device::new_cuda(ordinal).map_err(|e| e.to_string())?;
        // before the first allocation of ours (see memory::configure_pool)
        crate::train::memory::configure_pool(&device);
        let a = Tensor::ones((2, 2), DType::F32, &device).map_err(|e| e.to_string())?;
        a.matmul(&a).map_err(|e| e.to_string())?;
        Tensor::rand(0f32, 1f32, 4, &device).map_err(|e| e.to_string())?;
        device.synchronize().map_err(|e| e.to_string())?;
        Ok(device)
    };
    let outcome = silently(probe);
    outcome.map_err(|why| Error::Other(explain(spec, &why)))
}

/// Runs `f`, turning a panic into its message without printing it.
fn silently<T>(
    f: impl FnOnce() -> std::result::Result<T, String> + std::panic::UnwindSafe,
) -> std::result::Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let outcome = std::panic::catch_unwind(f);
    std::panic::set_hook(hook);
    match outcome {
        Ok(result) => result,
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic while loading CUDA".into())),
    }
}

/// One line: what went wrong with `spec` and what fixes it, from the driver's or loader's message.
pub fn explain(spec: DeviceSpec, why: &str) -> String {
    let lower = why.to_ascii_lowercase();
    let first = why.lines().next().unwrap_or(why).trim();
    if lower.contains("insufficient_driver") || lower.contains("driver version is insufficient") {
        format!(
            "--device {spec}: the NVIDIA driver is older than the CUDA 13 runtime this binary was built with; \
             update the driver (CUDA 13 needs R580 or newer) ({first})"
        )
    } else if lower.contains("libcuda")
        || lower.contains("no_device")
        || lower.contains("no cuda-capable")
    {
        format!(
            "--device {spec}: no usable NVIDIA GPU (the driver library libcuda.so is missing or finds no GPU); \
             train on a machine with an NVIDIA GPU and driver, or use --device cpu ({first})"
        )
    } else if lower.contains("invalid_device") || lower.contains("invalid device ordinal") {
        format!("--device {spec}: there is no GPU with that number on this machine ({first})")
    } else if lower.contains("cublas")
        || lower.contains("curand")
        || lower.contains("nvrtc")
        || lower.contains(".so")
    {
        format!("--device {spec}: a CUDA library did not load; {LIBRARY_PATH} ({first})")
    } else {
        format!("--device {spec}: the GPU could not be used ({first}); {LIBRARY_PATH}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_errors_name_the_cause() {
        assert_eq!("cpu".parse::<DeviceSpec>(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(3)));
        assert_eq!(" 2".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(2)));
        assert!("gpu".parse::<DeviceSpec>().unwrap_err().contains("cuda:N"));
        let old = explain(
            DeviceSpec::Cuda(0),
            "DriverError(CUDA_ERROR_INSUFFICIENT_DRIVER, \"...\")",
        );
        assert!(
            old.contains("older than the CUDA 13 runtime") && !old.contains('\n'),
            "{old}"
        );
        let none = explain(DeviceSpec::Cuda(0), "Unable to dynamically load the \"cuda\" shared library - searched for library names: [\"libcuda.so\"]");
        assert!(none.contains("no usable NVIDIA GPU"), "{none}");
        let lib = explain(
            DeviceSpec::Cuda(1),
            "Unable to dynamically load the \"cublas\" shared library",
        );
        assert!(
            lib.contains("LD_LIBRARY_PATH") && lib.contains("cuda:1"),
            "{lib}"
        );
    }

    #[test]
    fn cuda_on_a_cpu_build_or_a_machine_without_gpu_is_one_line() {
        if cfg!(feature = "cuda") {
            return; // the GPU check covers the CUDA build
        }
        let err = open(DeviceSpec::Cuda(0)).unwrap_err().to_string();
        assert!(
            err.contains("built without CUDA") && err.contains("make cuda") && !err.contains('\n'),
            "{err}"
        );
        assert!(open(DeviceSpec::Cpu).unwrap().is_cpu());
    }
}
