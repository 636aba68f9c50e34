// BatchNorm2d (+ fused ReLU) over x (N, C, H·W) and its backward (ops/batch_norm.rs). Per channel c the M = N·H·W
// values x[(n·C + c)·HW + j]; statistics as the CPU kernel: the mean (f64 sum → f32), then the biased variance
// around that f32 mean (f64 sum), 1/√(σ² + eps) from the f64 variance.
//
// The forward writes one packed buffer `out`: y (len = N·C·HW values), then per channel the mean, the variance and
// 1/√(σ² + eps) (3·C values) — the batch statistics in training, the running ones in evaluation — which the op
// narrows into y and the statistics (the running update is tensor ops on the device), and which the backward
// reads instead of keeping anything between the passes.
//
// Grid of every kernel that reads x (ops::cuda::batch_norm_launches): the channel is the plane, c = y0 +
// blockIdx.y (launched in y-chunks of at most 65 535 channels, y0 the first), and block blockIdx.x takes the
// chunk of `chunk` values [blockIdx.x·chunk, …) of the channel's M. Inside a chunk a thread walks the values
// ERC_BLOCK apart with 32-bit (n, j) counters advanced by adds (bn_walk): no division per value, and the
// channel's constants (γ, β, μ, 1/σ) are loaded once per thread. Small planes (7×7) keep every thread busy, which
// one block per (n, c) plane would not.
//
// Channel sums run in two deterministic stages: each (channel, chunk) block writes a partial (fixed-order tree
// over its threads), then one block per channel adds its partials by the same tree (bn_mean, bn_var,
// bn_bwd_finish). No atomics.
//
// Forward, training:  bn_sum_partials → bn_mean → bn_sqdev_partials → bn_var → bn_fwd
// Forward, evaluation: bn_eval_stats → bn_fwd
// Backward:           bn_bwd_partials (Σg, Σg·(x − μ), g masked by y > 0 with the ReLU) → bn_bwd_finish (∂γ, ∂β
//                     and the two coefficients of ∂x) → bn_bwd_dx. Its packed output: ∂x (len), ∂γ, ∂β (C each).
#include "common.cuh"

// Calls f(at) for the values i = start + tid, start + tid + ERC_BLOCK, … < end of channel c, in that order, `at`
// the index in x of value i = n·HW + j: ((n·C + c)·HW + j). One division per thread; per value only adds
// (ERC_BLOCK = q·HW + r: j moves by r, n by q, plus one plane when j wraps). end ≤ M < 2³² − ERC_BLOCK (the host
// checks), so i never wraps.
template <typename F>
__device__ __forceinline__ void bn_walk(unsigned start, unsigned end, unsigned c, unsigned channels, unsigned hw,
                                        F f) {
    unsigned i = start + threadIdx.x;
    if (i >= end) return;
    unsigned j = i % hw;
    const unsigned q = ERC_BLOCK / hw, r = ERC_BLOCK % hw;
    const unsigned long long plane = (unsigned long long)channels * hw;  // from (n, c) to (n + 1, c)
    unsigned long long at = ((unsigned long long)(i / hw) * channels + c) * hw + j;
    const unsigned long long step = q * plane + r;
    for (; i < end; i += ERC_BLOCK) {
        f(at);
        j += r;
        at += step;
        if (j >= hw) {
            j -= hw;
            at += plane - hw;
        }
    }
}

// The channel of this block (a plane of the launch) and its chunk [start, end) of the channel's `count` values.
struct BnChunk {
    unsigned c, start, end;
};

__device__ __forceinline__ BnChunk bn_chunk(unsigned count, unsigned chunk, unsigned y0) {
    BnChunk k;
    k.c = y0 + blockIdx.y;
    k.start = blockIdx.x * chunk;
    k.end = count - k.start < chunk ? count : k.start + chunk;
    return k;
}

// Σx per (channel, chunk) → partials[c·chunks + chunk], chunks = gridDim.x.
extern "C" __global__ void bn_sum_partials(const float* __restrict__ x, double* __restrict__ partials,
                                           unsigned channels, unsigned hw, unsigned count, unsigned chunk,
                                           unsigned y0) {
    __shared__ double shared[ERC_BLOCK];
    const BnChunk k = bn_chunk(count, chunk, y0);
    double sum = 0.0;
    bn_walk(k.start, k.end, k.c, channels, hw, [&](unsigned long long at) { sum += (double)x[at]; });
    sum = block_sum(sum, shared);
    if (threadIdx.x == 0) partials[(unsigned long long)k.c * gridDim.x + blockIdx.x] = sum;
}

// The sum of a channel's `chunks` partials (stride `stride` apart from `first`), over the block by the fixed tree.
__device__ __forceinline__ double bn_channel_sum(const double* partials, unsigned long long first, unsigned chunks,
                                                 unsigned stride, double* shared) {
    double sum = 0.0;
    for (unsigned s = threadIdx.x; s < chunks; s += ERC_BLOCK) sum += partials[first + (unsigned long long)s * stride];
    return block_sum(sum, shared);
}

// out[len + c] = mean. One block per channel (grid = C).
extern "C" __global__ void bn_mean(const double* __restrict__ partials, float* __restrict__ out, unsigned chunks,
                                   unsigned long long count, unsigned long long len) {
    __shared__ double shared[ERC_BLOCK];
    const unsigned c = blockIdx.x;
    const double sum = bn_channel_sum(partials, (unsigned long long)c * chunks, chunks, 1, shared);
    if (threadIdx.x == 0) out[len + c] = (float)(sum / (double)count);
}

// Σ(x − μ)² per (channel, chunk), μ the f32 mean in out[len + c] (the difference and its square in f32, as the
// CPU's).
extern "C" __global__ void bn_sqdev_partials(const float* __restrict__ x, const float* __restrict__ out,
                                             double* __restrict__ partials, unsigned channels, unsigned hw,
                                             unsigned count, unsigned chunk, unsigned long long len, unsigned y0) {
    __shared__ double shared[ERC_BLOCK];
    const BnChunk k = bn_chunk(count, chunk, y0);
    const float mean = out[len + k.c];
    double sum = 0.0;
    bn_walk(k.start, k.end, k.c, channels, hw, [&](unsigned long long at) {
        const float d = x[at] - mean;
        sum += (double)(d * d);
    });
    sum = block_sum(sum, shared);
    if (threadIdx.x == 0) partials[(unsigned long long)k.c * gridDim.x + blockIdx.x] = sum;
}

// out[len + C + c] = σ² (biased), out[len + 2C + c] = 1/√(σ² + eps). One block per channel (grid = C).
extern "C" __global__ void bn_var(const double* __restrict__ partials, float* __restrict__ out, unsigned channels,
                                  unsigned chunks, unsigned long long count, unsigned long long len, double eps) {
    __shared__ double shared[ERC_BLOCK];
    const unsigned c = blockIdx.x;
    const double var = bn_channel_sum(partials, (unsigned long long)c * chunks, chunks, 1, shared) / (double)count;
    if (threadIdx.x == 0) {
        out[len + channels + c] = (float)var;
        out[len + 2ull * channels + c] = (float)(1.0 / sqrt(var + eps));
    }
}

// Evaluation: the running statistics in place of the batch's. One thread per channel (grid = ⌈C / ERC_BLOCK⌉).
extern "C" __global__ void bn_eval_stats(const float* __restrict__ running_mean,
                                         const float* __restrict__ running_var, float* __restrict__ out,
                                         unsigned channels, unsigned long long len, double eps) {
    const unsigned c = blockIdx.x * ERC_BLOCK + threadIdx.x;
    if (c >= channels) return;
    out[len + c] = running_mean[c];
    out[len + channels + c] = running_var[c];
    out[len + 2ull * channels + c] = (float)(1.0 / sqrt((double)running_var[c] + eps));
}

// y = (x − μ)·(γ/σ) + β, then max(0, ·) with the ReLU, over the block's chunk of its channel.
extern "C" __global__ void bn_fwd(const float* __restrict__ x, const float* __restrict__ gamma,
                                  const float* __restrict__ beta, float* out, unsigned channels, unsigned hw,
                                  unsigned count, unsigned chunk, unsigned long long len, int relu, unsigned y0) {
    const BnChunk k = bn_chunk(count, chunk, y0);
    const float mean = out[len + k.c];
    const float scale = out[len + 2ull * channels + k.c] * gamma[k.c];
    const float shift = beta[k.c];
    bn_walk(k.start, k.end, k.c, channels, hw, [&](unsigned long long at) {
        const float v = (x[at] - mean) * scale + shift;
        out[at] = relu ? fmaxf(v, 0.0f) : v;
    });
}

// ∂L/∂y where the ReLU let the value through (y > 0), all of it without the ReLU.
__device__ __forceinline__ float bn_grad(const float* res, const float* grad, unsigned long long i, int relu) {
    return relu ? (res[i] > 0.0f ? grad[i] : 0.0f) : grad[i];
}

// Σg and Σg·(x − μ) per (channel, chunk) → partials[2·(c·chunks + chunk) + {0, 1}]. res: the forward's packed
// output.
extern "C" __global__ void bn_bwd_partials(const float* __restrict__ x, const float* __restrict__ res,
                                           const float* __restrict__ grad, double* __restrict__ partials,
                                           unsigned channels, unsigned hw, unsigned count, unsigned chunk,
                                           unsigned long long len, int relu, unsigned y0) {
    __shared__ double shared[ERC_BLOCK];
    const BnChunk k = bn_chunk(count, chunk, y0);
    const float mean = res[len + k.c];
    double sum_g = 0.0, sum_gx = 0.0;
    bn_walk(k.start, k.end, k.c, channels, hw, [&](unsigned long long at) {
        const float g = bn_grad(res, grad, at, relu);
        sum_g += (double)g;
        sum_gx += (double)(g * (x[at] - mean));
    });
    sum_g = block_sum(sum_g, shared);
    sum_gx = block_sum(sum_gx, shared);
    if (threadIdx.x == 0) {
        const unsigned long long at = (unsigned long long)k.c * gridDim.x + blockIdx.x;
        partials[2 * at] = sum_g;
        partials[2 * at + 1] = sum_gx;
    }
}

// Per channel: ∂β = Σg → out[len + C + c], ∂γ = Σg·x̂ → out[len + c]; coef[2c] = Σg/M and
// coef[2c + 1] = (Σg·x̂/M)/σ for ∂x. One block per channel (grid = C).
extern "C" __global__ void bn_bwd_finish(const double* __restrict__ partials, const float* __restrict__ res,
                                         float* __restrict__ out, float* __restrict__ coef, unsigned channels,
                                         unsigned chunks, unsigned long long count, unsigned long long len) {
    __shared__ double shared[ERC_BLOCK];
    const unsigned c = blockIdx.x;
    const unsigned long long first = 2ull * c * chunks;
    const double sum_g = bn_channel_sum(partials, first, chunks, 2, shared);
    const double sum_gx = bn_channel_sum(partials, first + 1, chunks, 2, shared);
    if (threadIdx.x == 0) {
        const float inv = res[len + 2ull * channels + c];
        const double sum_g_xhat = sum_gx * (double)inv;
        out[len + c] = (float)sum_g_xhat;
        out[len + channels + c] = (float)sum_g;
        coef[2 * c] = (float)(sum_g / (double)count);
        coef[2 * c + 1] = (float)(sum_g_xhat / (double)count) * inv;
    }
}

// ∂x = γ/σ·(g − Σg/M − (x − μ)·k) in training (μ, σ depend on x), γ/σ·g in evaluation, over the block's chunk of
// its channel.
extern "C" __global__ void bn_bwd_dx(const float* __restrict__ x, const float* __restrict__ res,
                                     const float* __restrict__ grad, const float* __restrict__ gamma,
                                     const float* __restrict__ coef, float* __restrict__ out, unsigned channels,
                                     unsigned hw, unsigned count, unsigned chunk, unsigned long long len, int relu,
                                     int train, unsigned y0) {
    const BnChunk k = bn_chunk(count, chunk, y0);
    const float mean = res[len + k.c], inv = res[len + 2ull * channels + k.c];
    const float scale = gamma[k.c] * inv;
    const float mean_g = coef[2 * k.c], coef_x = coef[2 * k.c + 1];
    bn_walk(k.start, k.end, k.c, channels, hw, [&](unsigned long long at) {
        const float g = bn_grad(res, grad, at, relu);
        out[at] = train ? scale * (g - mean_g - (x[at] - mean) * coef_x) : scale * g;
    });
}
