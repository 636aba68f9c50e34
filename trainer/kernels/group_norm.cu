// Per-channel GroupNorm over the steps of a channels-last x (B, T, C), optionally followed by GELU (erf), and its
// backward (ops/group_norm.rs). Statistics as the CPU kernel: Σx and Σx² per (b, c) in f64, σ² = Σx²/T − μ²
// (floored at 0), then the f32 mean and 1/√(σ² + eps).
//
// Grid of every kernel that reads x (ops::cuda::group_norm_launches): a block covers ERC_COLS adjacent channels
// (blockIdx.x: the column block; coalesced reads of a row) × `chunk` steps, its threads ERC_COLS channels ×
// ERC_LANES step lanes; the plane — y0 + blockIdx.y, launched in y-chunks of at most 65 535 — is (b, chunk of
// steps), numbered b·chunks + chunk. A thread's channel, its (b, c) statistics and its first address are computed
// once; it then moves ERC_LANES rows at a time by adds: no division per value.
//
// The sums over T run in two deterministic stages: the `*_partials` kernels write one partial per (b, c, chunk)
// (lanes added in order), then one block per (b, c) (gn_stats) or per channel (gn_bwd_finish) adds them by a
// fixed-order tree. No atomics.
//
// Forward:  gn_partials → gn_stats (mean, 1/σ per (b, c)) → gn_fwd.
// Backward (stateless: the statistics are recomputed from x by the same two kernels):
//           gn_bwd_partials (Σ dz, Σ dz·x̂ with dz = ∂L/∂y·GELU′(z) or ∂L/∂y) → gn_bwd_finish (their means per
//           (b, c), and ∂γ = Σ_b Σ dz·x̂, ∂β = Σ_b Σ dz per channel) → gn_bwd_dx.
#include "common.cuh"
#include "gelu.cuh"

// A thread of a block: its batch element and chunk, its channel, its first step and the end of the chunk, the
// index in x of its first value (row step0 + lane, channel col), and the index of its (b, c) statistics.
struct GnCell {
    unsigned b, chunk, col, step, end;
    unsigned long long at, bc;
};

__device__ __forceinline__ GnCell gn_cell(unsigned t, unsigned c, unsigned chunk, unsigned chunks, unsigned y0) {
    const unsigned plane = y0 + blockIdx.y;
    GnCell cell;
    cell.b = plane / chunks;
    cell.chunk = plane - cell.b * chunks;
    cell.col = blockIdx.x * ERC_COLS + threadIdx.x % ERC_COLS;
    const unsigned step0 = cell.chunk * chunk;
    cell.step = step0 + threadIdx.x / ERC_COLS;
    cell.end = t - step0 < chunk ? t : step0 + chunk;
    cell.at = ((unsigned long long)cell.b * t + cell.step) * c + cell.col;
    cell.bc = (unsigned long long)cell.b * c + cell.col;
    return cell;
}

// Calls f(at) for the thread's values in its chunk, ERC_LANES rows apart, in order.
template <typename F>
__device__ __forceinline__ void gn_walk(const GnCell& cell, unsigned c, F f) {
    const unsigned long long stride = (unsigned long long)ERC_LANES * c;
    unsigned long long at = cell.at;
    for (unsigned step = cell.step; step < cell.end; step += ERC_LANES, at += stride) f(at);
}

// Σx, Σx² per (b, c, chunk): partials[2·((b·C + c)·chunks + chunk) + {0, 1}].
extern "C" __global__ void gn_partials(const float* __restrict__ x, double* __restrict__ partials, unsigned t,
                                       unsigned c, unsigned chunk, unsigned chunks, unsigned y0) {
    __shared__ double shared[ERC_BLOCK];
    const GnCell cell = gn_cell(t, c, chunk, chunks, y0);
    double s1 = 0.0, s2 = 0.0;
    if (cell.col < c) {
        gn_walk(cell, c, [&](unsigned long long at) {
            const double v = (double)x[at];
            s1 += v;
            s2 += v * v;
        });
    }
    s1 = lanes_sum(s1, shared);
    s2 = lanes_sum(s2, shared);
    if (threadIdx.x < ERC_COLS && cell.col < c) {
        const unsigned long long at = cell.bc * chunks + cell.chunk;
        partials[2 * at] = s1;
        partials[2 * at + 1] = s2;
    }
}

// The two sums of one (b, c)'s `chunks` partial pairs starting at pair `first`, over the block by the fixed tree.
__device__ __forceinline__ void gn_pair_sum(const double* partials, unsigned long long first, unsigned chunks,
                                            double* shared, double* s1, double* s2) {
    double a = 0.0, b = 0.0;
    for (unsigned s = threadIdx.x; s < chunks; s += ERC_BLOCK) {
        a += partials[2 * (first + s)];
        b += partials[2 * (first + s) + 1];
    }
    *s1 = block_sum(a, shared);
    *s2 = block_sum(b, shared);
}

// stats[2·(b·C + c) + {0, 1}] = (mean, 1/√(σ² + eps)). One block per (b, c) (grid = B·C).
extern "C" __global__ void gn_stats(const double* __restrict__ partials, float* __restrict__ stats, unsigned chunks,
                                    unsigned t, double eps) {
    __shared__ double shared[ERC_BLOCK];
    const unsigned long long i = blockIdx.x;
    double s1, s2;
    gn_pair_sum(partials, i * chunks, chunks, shared, &s1, &s2);
    if (threadIdx.x == 0) {
        const double mean = s1 / (double)t;
        const double var = fmax(s2 / (double)t - mean * mean, 0.0);
        stats[2 * i] = (float)mean;
        stats[2 * i + 1] = (float)(1.0 / sqrt(var + eps));
    }
}

// y = z or GELU(z), z = x·scale + shift with scale = γ/σ, shift = β − μ·scale.
extern "C" __global__ void gn_fwd(const float* __restrict__ x, const float* __restrict__ gamma,
                                  const float* __restrict__ beta, const float* __restrict__ stats,
                                  float* __restrict__ y, unsigned t, unsigned c, unsigned chunk, unsigned chunks,
                                  int gelu, unsigned y0) {
    const GnCell cell = gn_cell(t, c, chunk, chunks, y0);
    if (cell.col >= c) return;
    const float mean = stats[2 * cell.bc], inv = stats[2 * cell.bc + 1];
    const float scale = inv * gamma[cell.col];
    const float shift = beta[cell.col] - mean * scale;
    gn_walk(cell, c, [&](unsigned long long at) {
        const float z = x[at] * scale + shift;
        y[at] = gelu ? erc_gelu_erf(z) : z;
    });
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
                                           unsigned t, unsigned c, unsigned chunk, unsigned chunks, int gelu,
                                           unsigned y0) {
    __shared__ double shared[ERC_BLOCK];
    const GnCell cell = gn_cell(t, c, chunk, chunks, y0);
    double s1 = 0.0, s2 = 0.0;
    if (cell.col < c) {
        const float mean = stats[2 * cell.bc], inv = stats[2 * cell.bc + 1];
        const float gm = gamma[cell.col], bt = beta[cell.col];
        gn_walk(cell, c, [&](unsigned long long at) {
            float xhat;
            const float dz = gn_dz(x[at], grad[at], mean, inv, gm, bt, gelu, &xhat);
            s1 += (double)dz;
            s2 += (double)(dz * xhat);
        });
    }
    s1 = lanes_sum(s1, shared);
    s2 = lanes_sum(s2, shared);
    if (threadIdx.x < ERC_COLS && cell.col < c) {
        const unsigned long long at = cell.bc * chunks + cell.chunk;
        partials[2 * at] = s1;
        partials[2 * at + 1] = s2;
    }
}

// Per channel (one block each; grid = C): means[2·(b·C + c) + {0, 1}] = (Σ dz/T, Σ dz·x̂/T) as f32, ∂γ_c =
// Σ_b Σ dz·x̂ and ∂β_c = Σ_b Σ dz (f64; each (b, c) by the tree over its chunks, then b in order).
extern "C" __global__ void gn_bwd_finish(const double* __restrict__ partials, float* __restrict__ means,
                                         float* __restrict__ dgamma, float* __restrict__ dbeta, unsigned b,
                                         unsigned c, unsigned chunks, unsigned t) {
    __shared__ double shared[ERC_BLOCK];
    const unsigned ch = blockIdx.x;
    double total1 = 0.0, total2 = 0.0;
    for (unsigned bi = 0; bi < b; ++bi) {
        const unsigned long long bc = (unsigned long long)bi * c + ch;
        double s1, s2;
        gn_pair_sum(partials, bc * chunks, chunks, shared, &s1, &s2);
        if (threadIdx.x == 0) {
            means[2 * bc] = (float)(s1 / (double)t);
            means[2 * bc + 1] = (float)(s2 / (double)t);
        }
        total1 += s1;
        total2 += s2;
    }
    if (threadIdx.x == 0) {
        dgamma[ch] = (float)total2;
        dbeta[ch] = (float)total1;
    }
}

// ∂x = γ/σ·(dz − mean(dz) − x̂·mean(dz·x̂)).
extern "C" __global__ void gn_bwd_dx(const float* __restrict__ x, const float* __restrict__ grad,
                                     const float* __restrict__ gamma, const float* __restrict__ beta,
                                     const float* __restrict__ stats, const float* __restrict__ means,
                                     float* __restrict__ dx, unsigned t, unsigned c, unsigned chunk,
                                     unsigned chunks, int gelu, unsigned y0) {
    const GnCell cell = gn_cell(t, c, chunk, chunks, y0);
    if (cell.col >= c) return;
    const float mean = stats[2 * cell.bc], inv = stats[2 * cell.bc + 1];
    const float gm = gamma[cell.col], bt = beta[cell.col];
    const float mean1 = means[2 * cell.bc], mean2 = means[2 * cell.bc + 1];
    gn_walk(cell, c, [&](unsigned long long at) {
        float xhat;
        const float dz = gn_dz(x[at], grad[at], mean, inv, gm, bt, gelu, &xhat);
        dx[at] = gm * inv * (dz - mean1 - xhat * mean2);
    });
}
