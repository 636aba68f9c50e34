// GELU, erf and tanh forms, forward and backward (ops/gelu.rs): elementwise, grid-stride loops.
// grid = min(⌈n / ERC_BLOCK⌉, ops::cuda::MAX_GRID), block = ERC_BLOCK.
#include "common.cuh"
#include "gelu.cuh"

extern "C" __global__ void gelu_erf_fwd(const float* __restrict__ x, float* __restrict__ y, unsigned long long n) {
    ERC_GRID_STRIDE_LOOP(i, n) y[i] = erc_gelu_erf(x[i]);
}

extern "C" __global__ void gelu_erf_bwd(const float* __restrict__ x, const float* __restrict__ grad,
                                        float* __restrict__ dx, unsigned long long n) {
    ERC_GRID_STRIDE_LOOP(i, n) dx[i] = grad[i] * erc_gelu_erf_grad(x[i]);
}

extern "C" __global__ void gelu_tanh_fwd(const float* __restrict__ x, float* __restrict__ y, unsigned long long n) {
    ERC_GRID_STRIDE_LOOP(i, n) y[i] = erc_gelu_tanh(x[i]);
}

extern "C" __global__ void gelu_tanh_bwd(const float* __restrict__ x, const float* __restrict__ grad,
                                         float* __restrict__ dx, unsigned long long n) {
    ERC_GRID_STRIDE_LOOP(i, n) dx[i] = grad[i] * erc_gelu_tanh_grad(x[i]);
}
