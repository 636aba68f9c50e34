//! How much memory a run holds on its device, for `metrics.jsonl`, `summary.json` and the benchmarks: the
//! high-water mark over a measured region ([`PeakMemory`]: reset at its start, read at its end).
//!
//! On a GPU the mark is the CUDA memory pool's own (`CU_MEMPOOL_ATTR_USED_MEM_HIGH`: the most memory in use by
//! allocations at any instant, every stream-ordered allocation counted, as PyTorch's `max_memory_allocated`
//! counts its tensors), which [`configure_pool`] keeps: the pool holds on to freed memory (release threshold at
//! its maximum, so a synchronisation no longer hands memory back to the driver and the next step allocates from
//! the pool again) and, with candle's single stream, allocations carry no per-allocation event tracking. On the
//! CPU the mark is the process's peak resident set (`VmHWM`), reset through `/proc/self/clear_refs` where the
//! kernel allows it.

use candle_core::Device;

/// The high-water mark of the memory in use on a device over a region.
#[derive(Debug, Clone)]
pub struct PeakMemory {
    device: Device,
}

impl PeakMemory {
    /// Starts a region on `device`: resets the device's mark.
    pub fn start(device: &Device) -> PeakMemory {
        reset_peak(device);
        PeakMemory {
            device: device.clone(),
        }
    }

    /// The most bytes in use since [`PeakMemory::start`] (or since an earlier reset of the same mark), when the
    /// device tells.
    pub fn bytes(&self) -> Option<u64> {
        peak(&self.device)
    }
}

/// Resets the device's high-water mark to what is in use now.
pub fn reset_peak(device: &Device) {
    match device {
        // "5" resets VmHWM to the current resident set (Linux ≥ 4.0); where it is refused the mark stays the
        // process's peak.
        Device::Cpu => {
            let _ = std::fs::write("/proc/self/clear_refs", "5");
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => pool::reset_peak(dev),
        #[allow(unreachable_patterns)]
        _ => {}
    }
}

/// The device's high-water mark since its last reset; `None` where unknown.
pub fn peak(device: &Device) -> Option<u64> {
    match device {
        Device::Cpu => cpu_peak_rss(),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => pool::peak(dev),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// Sets up a GPU's memory pool for training (see the module doc); nothing elsewhere. Call before the first
/// allocation: event tracking is decided per allocation when it is made.
pub fn configure_pool(device: &Device) {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        pool::configure(dev);
    }
    let _ = device;
}

/// Free and total bytes of a GPU (for out-of-memory messages).
pub fn device_free_total(device: &Device) -> Option<(u64, u64)> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            let (free, total) = dev.cuda_stream().context().mem_get_info().ok()?;
            Some((free as u64, total as u64))
        }
        _ => None,
    }
}

#[cfg(feature = "cuda")]
mod pool {
    use candle_core::cuda_backend::cudarc::driver::{result, sys};
    use candle_core::cuda_backend::CudaDevice;

    /// The device's current memory pool (where `cuMemAllocAsync` allocates).
    fn current(dev: &CudaDevice) -> Option<sys::CUmemoryPool> {
        let stream = dev.cuda_stream();
        let ctx = stream.context();
        ctx.bind_to_thread().ok()?;
        // SAFETY: the device handle comes from cudarc's own context.
        unsafe { result::device::get_mem_pool(ctx.cu_device()) }.ok()
    }

    fn set(dev: &CudaDevice, attr: sys::CUmemPool_attribute, mut value: u64) -> bool {
        let Some(pool) = current(dev) else {
            return false;
        };
        // SAFETY: both attributes set here take a cuuint64_t.
        unsafe { result::mem_pool::set_attribute(pool, attr, &mut value as *mut u64 as *mut _) }
            .is_ok()
    }

    pub fn configure(dev: &CudaDevice) {
        if !set(
            dev,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            u64::MAX,
        ) {
            tracing::warn!("the CUDA memory pool's release threshold could not be set: freed memory goes back to the driver at each synchronisation");
        }
        // SAFETY: candle runs all work of a device on its one stream, so no allocation is used on a stream other
        // than its own and nothing needs the events cudarc records for cross-stream ordering.
        unsafe { dev.disable_event_tracking() };
    }

    pub fn reset_peak(dev: &CudaDevice) {
        set(
            dev,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            0,
        );
    }

    pub fn peak(dev: &CudaDevice) -> Option<u64> {
        let pool = current(dev)?;
        let mut value = 0u64;
        // SAFETY: USED_MEM_HIGH is a cuuint64_t.
        unsafe {
            result::mem_pool::get_attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                &mut value as *mut u64 as *mut _,
            )
        }
        .ok()?;
        Some(value)
    }
}

fn cpu_peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `12.3 GiB`-style text.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_peak_is_known_and_covers_an_allocation() {
        // other tests of this binary allocate (and reset the mark) meanwhile: the peak can only be checked to
        // cover what this one holds while it holds it
        let region = PeakMemory::start(&Device::Cpu);
        let big = vec![1u8; 256 << 20];
        assert_eq!(
            big.iter().step_by(4096).map(|b| *b as u64).sum::<u64>(),
            (256 << 20) / 4096
        );
        let peak = region.bytes().expect("VmHWM on Linux");
        assert!(peak >= 256 << 20, "{peak}");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }
}
