// dropout(softmax(x)) over the last dimension and its backward (ops/softmax_dropout.rs). One block per row of
// `width` values; the mask's inverted-dropout factors (0 or 1/(1−p)) are drawn from the counter-based generator
// (philox.cuh) under `key`, element i of the tensor (row·width + column) from counter i: no mask tensor.
//
// Forward, as the CPU kernel: m = max(row), e = exp(x − m), p = e / Σe (f32 sums), y = p·mask.
// Backward, stateless: p is recomputed from x and the mask from its key (nothing kept between the passes), then
// with g = ∂L/∂y·mask, ∂L/∂x = p ⊙ (g − Σ g·p).
#include "common.cuh"
#include "philox.cuh"

// The dropout of a launch: its key, keep threshold and scale (MASK false: none).
struct SoftmaxMask {
    unsigned long long key;
    unsigned threshold;
    float scale;
};

// Per row: the maximum and the sum of exp(x − max), left in *max_out / *sum_out for every thread.
__device__ __forceinline__ void softmax_row_stats(const float* x, unsigned width, float* shared, float* max_out,
                                                  float* sum_out) {
    float m = -INFINITY;
    for (unsigned i = threadIdx.x; i < width; i += ERC_BLOCK) m = fmaxf(m, x[i]);
    m = block_max(m, shared);
    float s = 0.0f;
    for (unsigned i = threadIdx.x; i < width; i += ERC_BLOCK) s += expf(x[i] - m);
    *max_out = m;
    *sum_out = block_sum(s, shared);
}

template <bool MASK>
__device__ __forceinline__ void softmax_forward(const float* __restrict__ x, SoftmaxMask mask, float* __restrict__ y,
                                                unsigned width) {
    __shared__ float shared[ERC_BLOCK];
    const unsigned long long row = (unsigned long long)blockIdx.x * width;
    x += row;
    y += row;
    float m, s;
    softmax_row_stats(x, width, shared, &m, &s);
    for (unsigned i = threadIdx.x; i < width; i += ERC_BLOCK) {
        const float p = expf(x[i] - m) / s;
        y[i] = MASK ? p * erc_dropout_factor(mask.key, row + i, mask.threshold, mask.scale) : p;
    }
}

template <bool MASK>
__device__ __forceinline__ void softmax_backward(const float* __restrict__ x, SoftmaxMask mask,
                                                 const float* __restrict__ grad, float* __restrict__ dx,
                                                 unsigned width) {
    __shared__ float shared[ERC_BLOCK];
    const unsigned long long row = (unsigned long long)blockIdx.x * width;
    x += row;
    grad += row;
    dx += row;
    float m, s;
    softmax_row_stats(x, width, shared, &m, &s);
    float dot = 0.0f;
    for (unsigned i = threadIdx.x; i < width; i += ERC_BLOCK) {
        const float g = MASK ? grad[i] * erc_dropout_factor(mask.key, row + i, mask.threshold, mask.scale) : grad[i];
        dot += g * (expf(x[i] - m) / s);
    }
    dot = block_sum(dot, shared);
    for (unsigned i = threadIdx.x; i < width; i += ERC_BLOCK) {
        const float g = MASK ? grad[i] * erc_dropout_factor(mask.key, row + i, mask.threshold, mask.scale) : grad[i];
        const float p = expf(x[i] - m) / s;
        dx[i] = p * (g - dot);
    }
}

// grid = rows, block = ERC_BLOCK
extern "C" __global__ void softmax_fwd(const float* x, float* y, unsigned width) {
    softmax_forward<false>(x, SoftmaxMask{0, 0, 0.0f}, y, width);
}

extern "C" __global__ void softmax_dropout_fwd(const float* x, float* y, unsigned width, unsigned long long key,
                                               unsigned threshold, float scale) {
    softmax_forward<true>(x, SoftmaxMask{key, threshold, scale}, y, width);
}

extern "C" __global__ void softmax_bwd(const float* x, const float* grad, float* dx, unsigned width) {
    softmax_backward<false>(x, SoftmaxMask{0, 0, 0.0f}, grad, dx, width);
}

extern "C" __global__ void softmax_dropout_bwd(const float* x, const float* grad, float* dx, unsigned width,
                                               unsigned long long key, unsigned threshold, float scale) {
    softmax_backward<true>(x, SoftmaxMask{key, threshold, scale}, grad, dx, width);
}
