// LayerNorm over the last dimension (d values per row) and its backward (ops/layer_norm.rs).
//
// Statistics as the CPU kernel: mean and biased variance in f64, two passes (variance around the mean), then the
// f32 mean and 1/√(σ² + eps). Forward: one block per row. Backward, stateless (the statistics are recomputed
// from x): one block per row for ∂x (f32 row sums as the CPU's), which also leaves the row's (mean, 1/σ) in a
// scratch buffer for the γ/β gradients: column sums over the rows in f64, first per (ERC_COLS columns, chunk of
// rows) with ERC_LANES row lanes added in a fixed order, then per column over the chunks in order — deterministic,
// no atomics.
#include "common.cuh"

// The row's f32 mean and 1/√(σ² + eps), for every thread of the block.
__device__ __forceinline__ void layer_norm_row_stats(const float* x, unsigned d, double eps, double* shared,
                                                     float* mean_out, float* inv_out) {
    double s = 0.0;
    for (unsigned i = threadIdx.x; i < d; i += ERC_BLOCK) s += (double)x[i];
    const double mean = block_sum(s, shared) / (double)d;
    double q = 0.0;
    for (unsigned i = threadIdx.x; i < d; i += ERC_BLOCK) {
        const double c = (double)x[i] - mean;
        q += c * c;
    }
    const double var = block_sum(q, shared) / (double)d;
    *mean_out = (float)mean;
    *inv_out = (float)(1.0 / sqrt(var + eps));
}

// grid = rows, block = ERC_BLOCK
extern "C" __global__ void layer_norm_fwd(const float* __restrict__ x, const float* __restrict__ gamma,
                                          const float* __restrict__ beta, float* __restrict__ y, unsigned d,
                                          double eps) {
    __shared__ double shared[ERC_BLOCK];
    const unsigned long long row = (unsigned long long)blockIdx.x * d;
    x += row;
    y += row;
    float mean, inv;
    layer_norm_row_stats(x, d, eps, shared, &mean, &inv);
    for (unsigned i = threadIdx.x; i < d; i += ERC_BLOCK) y[i] = (x[i] - mean) * inv * gamma[i] + beta[i];
}

// ∂x = (ĝ − mean(ĝ) − x̂·mean(ĝ·x̂))/σ with ĝ = ∂L/∂y·γ. grid = rows, block = ERC_BLOCK; stats: 2 per row.
extern "C" __global__ void layer_norm_bwd_rows(const float* __restrict__ x, const float* __restrict__ gamma,
                                               const float* __restrict__ grad, float* __restrict__ dx,
                                               float* __restrict__ stats, unsigned d, double eps) {
    __shared__ double shared[ERC_BLOCK];
    __shared__ float shared_f[ERC_BLOCK];
    const unsigned long long row = (unsigned long long)blockIdx.x * d;
    x += row;
    grad += row;
    dx += row;
    float mean, inv;
    layer_norm_row_stats(x, d, eps, shared, &mean, &inv);
    float s1 = 0.0f, s2 = 0.0f;
    for (unsigned i = threadIdx.x; i < d; i += ERC_BLOCK) {
        const float xhat = (x[i] - mean) * inv;
        const float gh = grad[i] * gamma[i];
        s1 += gh;
        s2 += gh * xhat;
    }
    const float m1 = block_sum(s1, shared_f) / (float)d;
    const float m2 = block_sum(s2, shared_f) / (float)d;
    for (unsigned i = threadIdx.x; i < d; i += ERC_BLOCK) {
        const float xhat = (x[i] - mean) * inv;
        dx[i] = inv * (grad[i] * gamma[i] - m1 - xhat * m2);
    }
    if (threadIdx.x == 0) {
        stats[2ull * blockIdx.x] = mean;
        stats[2ull * blockIdx.x + 1] = inv;
    }
}

// ∂γ = Σ_rows ∂L/∂y·x̂ and ∂β = Σ_rows ∂L/∂y in two stages. First, per (column block, chunk of `chunk` rows):
// partials[2·(col·chunks + chunk) + {0, 1}] (f64). grid = ⌈d / ERC_COLS⌉ · chunks, block index
// column block · chunks + chunk.
extern "C" __global__ void layer_norm_bwd_partials(const float* __restrict__ x, const float* __restrict__ grad,
                                                   const float* __restrict__ stats, double* __restrict__ partials,
                                                   unsigned rows, unsigned d, unsigned chunk, unsigned chunks) {
    __shared__ double shared[ERC_BLOCK];
    const unsigned s = blockIdx.x % chunks;
    const unsigned col = (blockIdx.x / chunks) * ERC_COLS + threadIdx.x % ERC_COLS;
    const unsigned lane = threadIdx.x / ERC_COLS;
    const unsigned long long first = (unsigned long long)s * chunk;
    const unsigned long long end = first + chunk < rows ? first + chunk : rows;
    double gg = 0.0, gb = 0.0;
    if (col < d) {
        for (unsigned long long r = first + lane; r < end; r += ERC_LANES) {
            const unsigned long long at = r * d + col;
            const float xhat = (x[at] - stats[2 * r]) * stats[2 * r + 1];
            gg += (double)(grad[at] * xhat);
            gb += (double)grad[at];
        }
    }
    gg = lanes_sum(gg, shared);
    gb = lanes_sum(gb, shared);
    if (threadIdx.x < ERC_COLS && col < d) {
        partials[2 * ((unsigned long long)col * chunks + s)] = gg;
        partials[2 * ((unsigned long long)col * chunks + s) + 1] = gb;
    }
}

// Then per column (one thread each, grid = ⌈d / ERC_BLOCK⌉): the chunks' partials added in order.
extern "C" __global__ void layer_norm_bwd_params(const double* __restrict__ partials, float* __restrict__ dgamma,
                                                 float* __restrict__ dbeta, unsigned d, unsigned chunks) {
    const unsigned col = blockIdx.x * ERC_BLOCK + threadIdx.x;
    if (col >= d) return;
    double gg = 0.0, gb = 0.0;
    for (unsigned s = 0; s < chunks; ++s) {
        gg += partials[2 * ((unsigned long long)col * chunks + s)];
        gb += partials[2 * ((unsigned long long)col * chunks + s) + 1];
    }
    dgamma[col] = (float)gg;
    dbeta[col] = (float)gb;
}
