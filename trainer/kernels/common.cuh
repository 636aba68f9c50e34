// Shared by the trainer's CUDA kernels (kernels/*.cu, compiled to PTX by build.rs; not a kernel file itself).
//
// Conventions, which the CPU emulation test (trainer/tests/kernels_on_cpu.rs, emulate/cuda_on_cpu.h) relies on:
// * every block has ERC_BLOCK threads, 1-D (`ops::cuda::BLOCK` on the Rust side: the two must agree);
// * reductions go through shared memory in a fixed tree (no warp shuffles, no atomics): the result does not
//   depend on scheduling, so a run is deterministic and the emulator sees what the GPU computes;
// * every thread of a block reaches every __syncthreads() (no early return in a kernel that synchronises);
// * IEEE maths only (expf, logf, tanhf, sqrt; no __expf-style intrinsics), f64 where the CPU kernel uses f64.
#pragma once

#define ERC_BLOCK 256

// Channels × lanes of the column-reduction kernels: a block reads ERC_COLS adjacent columns (coalesced) on
// ERC_LANES rows at a time.
#define ERC_COLS 32
#define ERC_LANES (ERC_BLOCK / ERC_COLS)

// The sum of `v` over the threads of the block, returned to every thread. `shared` holds ERC_BLOCK values.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* shared) {
    const unsigned tid = threadIdx.x;
    shared[tid] = v;
    __syncthreads();
    for (unsigned stride = ERC_BLOCK / 2; stride > 0; stride >>= 1) {
        if (tid < stride) shared[tid] += shared[tid + stride];
        __syncthreads();
    }
    const T total = shared[0];
    __syncthreads();  // the caller may reuse `shared` at once
    return total;
}

// The maximum of `v` over the threads of the block (NaN-free inputs; -inf for an empty share).
__device__ __forceinline__ float block_max(float v, float* shared) {
    const unsigned tid = threadIdx.x;
    shared[tid] = v;
    __syncthreads();
    for (unsigned stride = ERC_BLOCK / 2; stride > 0; stride >>= 1) {
        if (tid < stride) shared[tid] = fmaxf(shared[tid], shared[tid + stride]);
        __syncthreads();
    }
    const float total = shared[0];
    __syncthreads();
    return total;
}

// Sums ERC_LANES per-lane partials of a column block: thread (col, lane) = (tid % ERC_COLS, tid / ERC_COLS) put
// its value in shared[tid]; lane 0 of each column gets the sum over lanes 0, 1, … in order.
template <typename T>
__device__ __forceinline__ T lanes_sum(T v, T* shared) {
    const unsigned tid = threadIdx.x;
    shared[tid] = v;
    __syncthreads();
    T total = 0;
    if (tid < ERC_COLS) {
        for (unsigned lane = 0; lane < ERC_LANES; ++lane) total += shared[lane * ERC_COLS + tid];
    }
    __syncthreads();
    return total;
}

// Index of the first element of a grid-stride loop and its stride.
#define ERC_GRID_STRIDE_LOOP(i, n)                                                                  \
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (unsigned long long)blockDim.x * gridDim.x)
