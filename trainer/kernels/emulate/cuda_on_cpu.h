// Runs the trainer's CUDA kernels (kernels/*.cu) on the CPU, for a test of their logic on machines without a GPU
// (trainer/tests/kernels_on_cpu.rs). Force-included (`g++ -std=c++17 -include cuda_on_cpu.h`) before a kernel
// file, it defines what the kernels use and nothing more:
//
// * `__global__`, `__device__`, `__forceinline__` — plain (inline) C++ functions;
// * `__shared__` — `static`: one copy per kernel, which is right because the driver runs the blocks of a launch
//   one after another (never two blocks at once);
// * `threadIdx`, `blockIdx` (per std::thread), `blockDim`, `gridDim` — set by the driver (1-D or 2-D grids, 1-D
//   blocks);
// * `__syncthreads()` — a barrier across the std::threads of the running block (one thread per CUDA thread);
// * the CUDA maths the kernels call that C++ lacks under the same name (none so far beyond <cmath>: expf, logf,
//   tanhf, sqrt, fmaxf, copysignf, fabsf are the C library's; no fast-math intrinsics such as __expf exist here,
//   so a kernel using one fails to compile in the test).
//
// No warp-level primitives (shuffles, votes) and no atomics: the kernels use neither (kernels/common.cuh).
#pragma once

#include <atomic>
#include <climits>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#if defined(__linux__) && !defined(__SANITIZE_THREAD__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __restrict__ __restrict

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

// Per thread: the driver's threads each run every block in turn (see driver.h).
inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

namespace cuda_on_cpu {

// A reusable barrier for `count` threads. On Linux: an atomic arrival count and a generation word the waiters
// sleep on with futex (one wake-up call releases the whole block, without the thundering herd on a mutex that a
// condition variable causes with 256 threads on a few cores: 3x faster). Elsewhere, and under ThreadSanitizer
// (which understands mutexes but not futex), a mutex and a condition variable: a TSan build of the emulator then
// reports any shared-memory race a missing __syncthreads() leaves in a kernel.
class Barrier {
public:
    void reset(unsigned count) {
        count_ = count;
        arrived_.store(0);
    }

#if defined(__linux__) && !defined(__SANITIZE_THREAD__)
    void wait() {
        const int generation = generation_.load(std::memory_order_acquire);
        if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == count_) {
            arrived_.store(0, std::memory_order_relaxed);
            generation_.fetch_add(1, std::memory_order_acq_rel);
            syscall(SYS_futex, reinterpret_cast<int*>(&generation_), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
        } else {
            while (generation_.load(std::memory_order_acquire) == generation) {
                syscall(SYS_futex, reinterpret_cast<int*>(&generation_), FUTEX_WAIT_PRIVATE, generation, nullptr,
                        nullptr, 0);
            }
        }
    }

private:
    static_assert(sizeof(std::atomic<int>) == sizeof(int), "futex on an atomic int");
    std::atomic<unsigned> arrived_{0};
    std::atomic<int> generation_{0};
    unsigned count_ = 1;
#else
    void wait() {
        std::unique_lock<std::mutex> lock(mutex_);
        const unsigned long long generation = generation_;
        if (arrived_.fetch_add(1) + 1 == count_) {
            arrived_.store(0);
            ++generation_;
            all_arrived_.notify_all();
        } else {
            all_arrived_.wait(lock, [&] { return generation_ != generation; });
        }
    }

private:
    std::mutex mutex_;
    std::condition_variable all_arrived_;
    std::atomic<unsigned> arrived_{0};
    unsigned long long generation_ = 0;
    unsigned count_ = 1;
#endif
};

// The barrier of the running block (the driver resets it for each launch).
inline Barrier block_barrier;

}  // namespace cuda_on_cpu

inline void __syncthreads() { cuda_on_cpu::block_barrier.wait(); }
