// BatchNorm2d (+ fused ReLU) over x (N, C, H·W) and its backward (ops/batch_norm.rs). Per channel c the M = N·H·W
// values x[(n·C + c)·HW + j]; statistics as the CPU kernel: the mean (f64 sum → f32), then the biased variance
// around that f32 mean (f64 sum), 1/√(σ² + eps) from the f64 variance.
//
// The forward writes one packed buffer `out`: y (len = N·C·HW values), then per channel the mean, the variance and
// 1/√(σ² + eps) (3·C values) — the batch statistics in training, the running ones in evaluation — which the op
// narrows into y and the statistics (the running update is tensor ops on the device), and which the backward
// reads instead of keeping anything between the passes.
//
// Channel sums run in two deterministic stages: one block per (channel, chunk of `chunk` values) — block index
// c·chunks + chunk — writes a partial, then one thread per channel adds its partials in order.
//
// Forward, training:  bn_sum_partials → bn_mean → bn_sqdev_partials → bn_var → bn_fwd
// Forward, evaluation: bn_eval_stats → bn_fwd
// Backward:           bn_bwd_partials (Σg, Σg·(x − μ), g masked by y > 0 with the ReLU) → bn_bwd_finish (∂γ, ∂β
//                     and the two coefficients of ∂x) → bn_bwd_dx (elementwise). Its packed output: ∂x (len), ∂γ,
//                     ∂β (C each).
#include "common.cuh"

// The index in x of value i of channel c.
__device__ __forceinline__ unsigned long long bn_at(unsigned long long i, unsigned c, unsigned channels,
                                                    unsigned hw) {
    return ((i / hw) * channels + c) * hw + i % hw;
}

// Σx per (channel, chunk) → partials[c·chunks + chunk]. grid = C·chunks, block = ERC_BLOCK.
extern "C" __global__ void bn_sum_partials(const float* __restrict__ x, double* __restrict__ partials,
                                           unsigned channels, unsigned hw, unsigned long long count,
                                           unsigned chunk, unsigned chunks) {
    __shared__ double shared[ERC_BLOCK];
    const unsigned c = blockIdx.x / chunks, s = blockIdx.x % chunks;
    const unsigned long long start = (unsigned long long)s * chunk;
    const unsigned long long end = start + chunk < count ? start + chunk : count;
    double sum = 0.0;
    for (unsigned long long i = start + threadIdx.x; i < end; i += ERC_BLOCK) sum += (double)x[bn_at(i, c, channels, hw)];
    sum = block_sum(sum, shared);
    if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

// out[len + c] = mean. grid = ⌈C / ERC_BLOCK⌉, one thread per channel.
extern "C" __global__ void bn_mean(const double* __restrict__ partials, float* __restrict__ out, unsigned channels,
                                   unsigned chunks, unsigned long long count, unsigned long long len) {
    const unsigned c = blockIdx.x * ERC_BLOCK + threadIdx.x;
    if (c >= channels) return;
    double sum = 0.0;
    for (unsigned s = 0; s < chunks; ++s) sum += partials[(unsigned long long)c * chunks + s];
    out[len + c] = (float)(sum / (double)count);
}

// Σ(x − μ)² per (channel, chunk), μ the f32 mean in out[len + c] (the difference and its square in f32, as the
// CPU's). grid = C·chunks, block = ERC_BLOCK.
extern "C" __global__ void bn_sqdev_partials(const float* __restrict__ x, const float* __restrict__ out,
                                             double* __restrict__ partials, unsigned channels, unsigned hw,
                                             unsigned long long count, unsigned chunk, unsigned chunks,
                                             unsigned long long len) {
    __shared__ double shared[ERC_BLOCK];
    const unsigned c = blockIdx.x / chunks, s = blockIdx.x % chunks;
    const float mean = out[len + c];
    const unsigned long long start = (unsigned long long)s * chunk;
    const unsigned long long end = start + chunk < count ? start + chunk : count;
    double sum = 0.0;
    for (unsigned long long i = start + threadIdx.x; i < end; i += ERC_BLOCK) {
        const float d = x[bn_at(i, c, channels, hw)] - mean;
        sum += (double)(d * d);
    }
    sum = block_sum(sum, shared);
    if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

// out[len + C + c] = σ² (biased), out[len + 2C + c] = 1/√(σ² + eps). One thread per channel.
extern "C" __global__ void bn_var(const double* __restrict__ partials, float* __restrict__ out, unsigned channels,
                                  unsigned chunks, unsigned long long count, unsigned long long len, double eps) {
    const unsigned c = blockIdx.x * ERC_BLOCK + threadIdx.x;
    if (c >= channels) return;
    double sum = 0.0;
    for (unsigned s = 0; s < chunks; ++s) sum += partials[(unsigned long long)c * chunks + s];
    const double var = sum / (double)count;
    out[len + channels + c] = (float)var;
    out[len + 2ull * channels + c] = (float)(1.0 / sqrt(var + eps));
}

// Evaluation: the running statistics in place of the batch's. One thread per channel.
extern "C" __global__ void bn_eval_stats(const float* __restrict__ running_mean,
                                         const float* __restrict__ running_var, float* __restrict__ out,
                                         unsigned channels, unsigned long long len, double eps) {
    const unsigned c = blockIdx.x * ERC_BLOCK + threadIdx.x;
    if (c >= channels) return;
    out[len + c] = running_mean[c];
    out[len + channels + c] = running_var[c];
    out[len + 2ull * channels + c] = (float)(1.0 / sqrt((double)running_var[c] + eps));
}

// y = (x − μ)·(γ/σ) + β, then max(0, ·) with the ReLU. Elementwise over len, grid-stride.
extern "C" __global__ void bn_fwd(const float* __restrict__ x, const float* __restrict__ gamma,
                                  const float* __restrict__ beta, float* out, unsigned channels, unsigned hw,
                                  unsigned long long len, int relu) {
    ERC_GRID_STRIDE_LOOP(i, len) {
        const unsigned c = (unsigned)((i / hw) % channels);
        const float mean = out[len + c];
        const float scale = out[len + 2ull * channels + c] * gamma[c];
        const float v = (x[i] - mean) * scale + beta[c];
        out[i] = relu ? fmaxf(v, 0.0f) : v;
    }
}

// ∂L/∂y where the ReLU let the value through (y > 0), all of it without the ReLU.
__device__ __forceinline__ float bn_grad(const float* res, const float* grad, unsigned long long i, int relu) {
    return relu ? (res[i] > 0.0f ? grad[i] : 0.0f) : grad[i];
}

// Σg and Σg·(x − μ) per (channel, chunk) → partials[2·(c·chunks + chunk) + {0, 1}]. res: the forward's packed
// output. grid = C·chunks, block = ERC_BLOCK.
extern "C" __global__ void bn_bwd_partials(const float* __restrict__ x, const float* __restrict__ res,
                                           const float* __restrict__ grad, double* __restrict__ partials,
                                           unsigned channels, unsigned hw, unsigned long long count,
                                           unsigned chunk, unsigned chunks, unsigned long long len, int relu) {
    __shared__ double shared[ERC_BLOCK];
    const unsigned c = blockIdx.x / chunks, s = blockIdx.x % chunks;
    const float mean = res[len + c];
    const unsigned long long start = (unsigned long long)s * chunk;
    const unsigned long long end = start + chunk < count ? start + chunk : count;
    double sum_g = 0.0, sum_gx = 0.0;
    for (unsigned long long i = start + threadIdx.x; i < end; i += ERC_BLOCK) {
        const unsigned long long at = bn_at(i, c, channels, hw);
        const float g = bn_grad(res, grad, at, relu);
        sum_g += (double)g;
        sum_gx += (double)(g * (x[at] - mean));
    }
    sum_g = block_sum(sum_g, shared);
    sum_gx = block_sum(sum_gx, shared);
    if (threadIdx.x == 0) {
        partials[2ull * blockIdx.x] = sum_g;
        partials[2ull * blockIdx.x + 1] = sum_gx;
    }
}

// Per channel: ∂β = Σg → out[len + C + c], ∂γ = Σg·x̂ → out[len + c]; coef[2c] = Σg/M and
// coef[2c + 1] = (Σg·x̂/M)/σ for ∂x. One thread per channel.
extern "C" __global__ void bn_bwd_finish(const double* __restrict__ partials, const float* __restrict__ res,
                                         float* __restrict__ out, float* __restrict__ coef, unsigned channels,
                                         unsigned chunks, unsigned long long count, unsigned long long len) {
    const unsigned c = blockIdx.x * ERC_BLOCK + threadIdx.x;
    if (c >= channels) return;
    double sum_g = 0.0, sum_gx = 0.0;
    for (unsigned s = 0; s < chunks; ++s) {
        sum_g += partials[2 * ((unsigned long long)c * chunks + s)];
        sum_gx += partials[2 * ((unsigned long long)c * chunks + s) + 1];
    }
    const float inv = res[len + 2ull * channels + c];
    const double sum_g_xhat = sum_gx * (double)inv;
    out[len + c] = (float)sum_g_xhat;
    out[len + channels + c] = (float)sum_g;
    coef[2 * c] = (float)(sum_g / (double)count);
    coef[2 * c + 1] = (float)(sum_g_xhat / (double)count) * inv;
}

// ∂x = γ/σ·(g − Σg/M − (x − μ)·k) in training (μ, σ depend on x), γ/σ·g in evaluation. Elementwise over len.
extern "C" __global__ void bn_bwd_dx(const float* __restrict__ x, const float* __restrict__ res,
                                     const float* __restrict__ grad, const float* __restrict__ gamma,
                                     const float* __restrict__ coef, float* __restrict__ out, unsigned channels,
                                     unsigned hw, unsigned long long len, int relu, int train) {
    ERC_GRID_STRIDE_LOOP(i, len) {
        const unsigned c = (unsigned)((i / hw) % channels);
        const float mean = res[len + c], inv = res[len + 2ull * channels + c];
        const float scale = gamma[c] * inv;
        const float g = bn_grad(res, grad, i, relu);
        out[i] = train ? scale * (g - coef[2 * c] - (x[i] - mean) * coef[2 * c + 1]) : scale * g;
    }
}
