//! How much memory a run holds on its device, for `metrics.jsonl` and `summary.json`: on a GPU the device memory in
//! use (total − free, sampled after the steps, the peak kept), on the CPU the process's peak resident set
//! (`VmHWM`, which the kernel keeps as a peak itself).

use candle_core::Device;

/// The peak of the samples taken so far.
#[derive(Debug, Default, Clone, Copy)]
pub struct PeakMemory {
    peak: Option<u64>,
}

impl PeakMemory {
    /// Takes a sample on `device`.
    pub fn sample(&mut self, device: &Device) {
        if let Some(used) = in_use(device) {
            self.peak = Some(self.peak.map_or(used, |p| p.max(used)));
        }
    }

    /// Bytes, when the device tells.
    pub fn bytes(&self) -> Option<u64> {
        self.peak
    }
}

/// Bytes in use now (device memory) or at the peak (CPU resident set); `None` where unknown.
pub fn in_use(device: &Device) -> Option<u64> {
    match device {
        Device::Cpu => cpu_peak_rss(),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            let (free, total) = dev.cuda_stream().context().mem_get_info().ok()?;
            Some((total - free) as u64)
        }
        #[allow(unreachable_patterns)]
        _ => None,
    }
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
        // other tests of this binary allocate meanwhile: the peak can only be checked to cover what this one holds
        let before = in_use(&Device::Cpu).expect("VmHWM on Linux");
        let big = vec![1u8; 256 << 20];
        let after = in_use(&Device::Cpu).unwrap();
        assert_eq!(
            big.iter().step_by(4096).map(|b| *b as u64).sum::<u64>(),
            (256 << 20) / 4096
        );
        assert!(after >= before && after >= 256 << 20, "{before} → {after}");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }
}
