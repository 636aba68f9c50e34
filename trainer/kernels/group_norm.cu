// Per-channel GroupNorm over the steps of a channels-last x (B, T, C), optionally followed by GELU (erf), and its
// backward (ops/group_norm.rs). Statistics as the CPU kernel: Σx and Σx² per (b, c) in f64, σ² = Σx²/T − μ²
// (floored at 0), then the f32 mean and 1/√(σ² + eps).
//
// The sums over T run in two deterministic stages: `*_partials` kernels, one block per (b, 32 channels, chunk of
// `chunk` steps) — ERC_COLS adjacent channels (coalesced reads) × ERC_LANES step lanes, lanes added in order —
// write one partial per (b, c, chunk); a per-channel kernel then adds a channel's partials in chunk order.
// Block index: ((b · ⌈C/ERC_COLS⌉) + channel block) · chunks + chunk.
//
// Forward:  gn_partials → gn_stats (mean, 1/σ per (b, c)) → gn_fwd (elementwise).
// Backward (stateless: the statistics are recomputed from x by the same two kernels):
//           gn_bwd_partials (Σ dz, Σ dz·x̂ with dz = ∂L/∂y·GELU′(z) or ∂L/∂y) → gn_bwd_finish (their means per
//           (b, c), and ∂γ = Σ_b Σ dz·x̂, ∂β = Σ_b Σ dz per channel) → gn_bwd_dx (elementwise).
#include "common.cuh"
#include "gelu.cuh"

// The (b, channel, first step, last step) of a partial-sum block and of its thread.
struct GnCell {
    unsigned b, col, lane, step0, step1;
};

__device__ __forceinline__ GnCell gn_cell(unsigned t, unsigned c, unsigned chunk, unsigned chunks) {
    const unsigned col_blocks = (c + ERC_COLS - 1) / ERC_COLS;
    const unsigned s = blockIdx.x % chunks;
    const unsigned bc = blockIdx.x / chunks;
    GnCell cell;
    cell.b = bc / col_blocks;
    cell.col = (bc % col_blocks) * ERC_COLS + threadIdx.x % ERC_COLS;
    cell.lane = threadIdx.x / ERC_COLS;
    cell.step0 = s * chunk;
    const unsigned long long end = (unsigned long long)cell.step0 + chunk;
    cell.step1 = end < t ? (unsigned)end : t;
    return cell;
}

// Σx, Σx² per (b, c, chunk): partials[2·((b·C + c)·chunks + chunk) + {0, 1}].
extern "C" __global__ void gn_partials(const float* __restrict__ x, double* __restrict__ partials, unsigned t,
                                       unsigned c, unsigned chunk, unsigned chunks) {
    __shared__ double shared[ERC_BLOCK];
    const GnCell cell = gn_cell(t, c, chunk, chunks);
    double s1 = 0.0, s2 = 0.0;
    if (cell.col < c) {
        for (unsigned step = cell.step0 + cell.lane; step < cell.step1; step += ERC_LANES) {
            const double v = (double)x[((unsigned long long)cell.b * t + step) * c + cell.col];
            s1 += v;
            s2 += v * v;
        }
    }
    s1 = lanes_sum(s1, shared);
    s2 = lanes_sum(s2, shared);
    if (threadIdx.x < ERC_COLS && cell.col < c) {
        const unsigned long long at = ((unsigned long long)cell.b * c + cell.col) * chunks + blockIdx.x % chunks;
        partials[2 * at] = s1;
        partials[2 * at + 1] = s2;
    }
}

// stats[2·(b·C + c) + {0, 1}] = (mean, 1/√(σ² + eps)). grid = ⌈B·C / ERC_BLOCK⌉, one thread per (b, c).
extern "C" __global__ void gn_stats(const double* __restrict__ partials, float* __restrict__ stats, unsigned bc,
                                    unsigned chunks, unsigned t, double eps) {
    const unsigned i = blockIdx.x * ERC_BLOCK + threadIdx.x;
    if (i >= bc) return;
    double s1 = 0.0, s2 = 0.0;
    for (unsigned s = 0; s < chunks; ++s) {
        s1 += partials[2 * ((unsigned long long)i * chunks + s)];
        s2 += partials[2 * ((unsigned long long)i * chunks + s) + 1];
    }
    const double mean = s1 / (double)t;
    const double var = fmax(s2 / (double)t - mean * mean, 0.0);
    stats[2 * i] = (float)mean;
    stats[2 * i + 1] = (float)(1.0 / sqrt(var + eps));
}

// y = z or GELU(z), z = x·scale + shift with scale = γ/σ, shift = β − μ·scale. Elementwise, grid-stride.
extern "C" __global__ void gn_fwd(const float* __restrict__ x, const float* __restrict__ gamma,
                                  const float* __restrict__ beta, const float* __restrict__ stats,
                                  float* __restrict__ y, unsigned t, unsigned c, unsigned long long n, int gelu) {
    ERC_GRID_STRIDE_LOOP(i, n) {
        const unsigned ch = (unsigned)(i % c);
        const unsigned long long bc = (i / c / t) * c + ch;
        const float mean = stats[2 * bc], inv = stats[2 * bc + 1];
        const float scale = inv * gamma[ch];
        const float shift = beta[ch] - mean * scale;
        const float z = x[i] * scale + shift;
        y[i] = gelu ? erc_gelu_erf(z) : z;
    }
}

// dz = ∂L/∂y·GELU′(x̂·γ + β) (fused GELU) or ∂L/∂y, as the CPU kernel computes it.
__device__ __forceinline__ float gn_dz(float x, float g, float mean, float inv, float gamma, float beta, int gelu,
                                       float* xhat_out) {
    const float xhat = (x - mean) * inv;
    *xhat_out = xhat;
    return gelu ? g * erc_gelu_erf_grad(xhat * gamma + beta) : g;
}

// Σ dz, Σ dz·x̂ per (b, c, chunk), laid out as gn_partials'.
extern "C" __global__ void gn_bwd_partials(const float* __restrict__ x, const float* __restrict__ grad,
                                           const float* __restrict__ gamma, const float* __restrict__ beta,
                                           const float* __restrict__ stats, double* __restrict__ partials,
                                           unsigned t, unsigned c, unsigned chunk, unsigned chunks, int gelu) {
    __shared__ double shared[ERC_BLOCK];
    const GnCell cell = gn_cell(t, c, chunk, chunks);
    double s1 = 0.0, s2 = 0.0;
    if (cell.col < c) {
        const unsigned long long bc = (unsigned long long)cell.b * c + cell.col;
        const float mean = stats[2 * bc], inv = stats[2 * bc + 1];
        const float gm = gamma[cell.col], bt = beta[cell.col];
        for (unsigned step = cell.step0 + cell.lane; step < cell.step1; step += ERC_LANES) {
            const unsigned long long at = ((unsigned long long)cell.b * t + step) * c + cell.col;
            float xhat;
            const float dz = gn_dz(x[at], grad[at], mean, inv, gm, bt, gelu, &xhat);
            s1 += (double)dz;
            s2 += (double)(dz * xhat);
        }
    }
    s1 = lanes_sum(s1, shared);
    s2 = lanes_sum(s2, shared);
    if (threadIdx.x < ERC_COLS && cell.col < c) {
        const unsigned long long at = ((unsigned long long)cell.b * c + cell.col) * chunks + blockIdx.x % chunks;
        partials[2 * at] = s1;
        partials[2 * at + 1] = s2;
    }
}

// Per channel (one thread each; grid = ⌈C / ERC_BLOCK⌉): means[2·(b·C + c) + {0, 1}] = (Σ dz/T, Σ dz·x̂/T) as
// f32, ∂γ_c = Σ_b Σ dz·x̂ and ∂β_c = Σ_b Σ dz (f64 sums, b in order).
extern "C" __global__ void gn_bwd_finish(const double* __restrict__ partials, float* __restrict__ means,
                                         float* __restrict__ dgamma, float* __restrict__ dbeta, unsigned b,
                                         unsigned c, unsigned chunks, unsigned t) {
    const unsigned ch = blockIdx.x * ERC_BLOCK + threadIdx.x;
    if (ch >= c) return;
    double total1 = 0.0, total2 = 0.0;
    for (unsigned bi = 0; bi < b; ++bi) {
        const unsigned long long bc = (unsigned long long)bi * c + ch;
        double s1 = 0.0, s2 = 0.0;
        for (unsigned s = 0; s < chunks; ++s) {
            s1 += partials[2 * (bc * chunks + s)];
            s2 += partials[2 * (bc * chunks + s) + 1];
        }
        means[2 * bc] = (float)(s1 / (double)t);
        means[2 * bc + 1] = (float)(s2 / (double)t);
        total1 += s1;
        total2 += s2;
    }
    dgamma[ch] = (float)total2;
    dbeta[ch] = (float)total1;
}

// ∂x = γ/σ·(dz − mean(dz) − x̂·mean(dz·x̂)). Elementwise, grid-stride.
extern "C" __global__ void gn_bwd_dx(const float* __restrict__ x, const float* __restrict__ grad,
                                     const float* __restrict__ gamma, const float* __restrict__ beta,
                                     const float* __restrict__ stats, const float* __restrict__ means,
                                     float* __restrict__ dx, unsigned t, unsigned c, unsigned long long n, int gelu) {
    ERC_GRID_STRIDE_LOOP(i, n) {
        const unsigned ch = (unsigned)(i % c);
        const unsigned long long bc = (i / c / t) * c + ch;
        const float mean = stats[2 * bc], inv = stats[2 * bc + 1];
        float xhat;
        const float dz = gn_dz(x[i], grad[i], mean, inv, gamma[ch], beta[ch], gelu, &xhat);
        dx[i] = gamma[ch] * inv * (dz - means[2 * bc] - xhat * means[2 * bc + 1]);
    }
}
