//! glibc heap settings for training: keep freed memory for the next step instead of handing it back to the kernel.
//!
//! A training step allocates and frees the same large buffers every time (activations, gradients — candle's
//! backward starts each gradient from a fresh zero tensor). With glibc's defaults, blocks above a dynamic threshold
//! (128 KiB at first) are mmap'ed and unmapped, and a heap's free top above the trim threshold is returned with
//! `madvise`: the next step page-faults the same memory back in, zero-filled. In a profile of the baseline head's
//! step that was ~38% of the time. Fixing both thresholds keeps the memory mapped; the process's resident size
//! stays at its peak, which for a training run it reaches every step anyway.

use std::sync::Once;

/// Blocks up to this size come from the heap (glibc's ceiling for the threshold on 64-bit: 32 MiB).
const MMAP_THRESHOLD: i32 = 32 << 20;
/// Free memory a heap keeps at its top before trimming.
const TRIM_THRESHOLD: i32 = 512 << 20;

/// Applies the settings once per process (later calls do nothing); a no-op outside glibc.
pub fn keep_freed_memory() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            // glibc's <malloc.h>.
            const M_TRIM_THRESHOLD: i32 = -1;
            const M_MMAP_THRESHOLD: i32 = -3;
            extern "C" {
                fn mallopt(param: i32, value: i32) -> i32;
            }
            // SAFETY: mallopt only changes allocator parameters; it is thread-safe and takes plain integers.
            // Setting a threshold also turns off glibc's dynamic adjustment of both, which is the point. A refusal
            // (return 0) leaves the defaults: slower, not wrong.
            unsafe {
                mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD);
                mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD);
            }
        }
    });
}
