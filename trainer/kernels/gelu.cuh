// GELU and its derivative, as ops/gelu.rs computes them on the CPU (same constants, same operation order):
// the erf form with the Abramowitz & Stegun 7.1.26 erf given exp(−z²), and the tanh approximation.
#pragma once

#define ERC_FRAC_1_SQRT_2 0.70710677f   // std::f32::consts::FRAC_1_SQRT_2
#define ERC_FRAC_1_SQRT_2PI 0.3989423f  // gelu.rs FRAC_1_SQRT_2PI
#define ERC_SQRT_2_OVER_PI 0.7978846f
#define ERC_TANH_CUBIC 0.044715f

__device__ __forceinline__ float erc_erf_given_exp(float z, float exp_neg_z2) {
    const float p = 0.3275911f;
    const float a0 = 0.2548296f, a1 = -0.28449674f, a2 = 1.4214138f, a3 = -1.453152f, a4 = 1.0614054f;
    const float t = 1.0f / (1.0f + p * fabsf(z));
    const float poly = ((((a4 * t + a3) * t + a2) * t + a1) * t + a0) * t;
    return copysignf(1.0f - poly * exp_neg_z2, z);
}

// x·Φ(x)
__device__ __forceinline__ float erc_gelu_erf(float x) {
    const float e = expf(-0.5f * x * x);
    return (erc_erf_given_exp(x * ERC_FRAC_1_SQRT_2, e) + 1.0f) * 0.5f * x;
}

// Φ(x) + x·φ(x)
__device__ __forceinline__ float erc_gelu_erf_grad(float x) {
    const float e = expf(-0.5f * x * x);
    const float cdf = (erc_erf_given_exp(x * ERC_FRAC_1_SQRT_2, e) + 1.0f) * 0.5f;
    return cdf + x * e * ERC_FRAC_1_SQRT_2PI;
}

// x/2·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
__device__ __forceinline__ float erc_gelu_tanh(float x) {
    return 0.5f * x * (1.0f + tanhf(ERC_SQRT_2_OVER_PI * (x + ERC_TANH_CUBIC * x * x * x)));
}

__device__ __forceinline__ float erc_gelu_tanh_grad(float x) {
    const float t = tanhf(ERC_SQRT_2_OVER_PI * (x + ERC_TANH_CUBIC * x * x * x));
    return 0.5f * (1.0f + t) +
           0.5f * x * (1.0f - t * t) * ERC_SQRT_2_OVER_PI * (1.0f + 3.0f * ERC_TANH_CUBIC * x * x);
}
