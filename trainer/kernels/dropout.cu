// Inverted dropout with counter-based masks (philox.cuh) and the mask itself, for ops/dropout.rs. No mask tensor
// exists: `dropout_apply` multiplies by the factors drawn from (key, i) — the forward on x, the backward on ∂L/∂y
// with the same key — and `dropout_mask` writes the factors only for the compositions that need them as a tensor.
// Each thread takes groups of 4 consecutive elements (one Philox block per group), grid-stride.
#include "common.cuh"
#include "philox.cuh"

// y[i] = x[i]·factor(key, i), n values.
extern "C" __global__ void dropout_apply(const float* __restrict__ x, float* __restrict__ y, unsigned long long n,
                                         unsigned long long key, unsigned threshold, float scale) {
    const unsigned long long groups = (n + 3) / 4;
    ERC_GRID_STRIDE_LOOP(g, groups) {
        const ErcPhilox r = erc_philox(key, g);
        for (unsigned j = 0; j < 4; ++j) {
            const unsigned long long i = 4 * g + j;
            if (i < n) y[i] = x[i] * erc_keep_factor(r.v[j], threshold, scale);
        }
    }
}

// mask[i] = factor(key, i): 0 or `scale`.
extern "C" __global__ void dropout_mask(float* __restrict__ mask, unsigned long long n, unsigned long long key,
                                        unsigned threshold, float scale) {
    const unsigned long long groups = (n + 3) / 4;
    ERC_GRID_STRIDE_LOOP(g, groups) {
        const ErcPhilox r = erc_philox(key, g);
        for (unsigned j = 0; j < 4; ++j) {
            const unsigned long long i = 4 * g + j;
            if (i < n) mask[i] = erc_keep_factor(r.v[j], threshold, scale);
        }
    }
}
