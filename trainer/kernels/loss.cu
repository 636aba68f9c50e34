// The classifier losses of ops/loss.rs on (B, C) inputs with (B, C) targets y, forward and backward: cross-entropy
// with probability targets (on scores x), soft Dice and focal (on probabilities p). Same f32/f64 split as the CPU
// kernels. Row reductions: one block per row; batch reductions: per-row (or per-class) f64 parts, then
// loss_finish adds them in a fixed order in one block (deterministic). The upstream gradient is a device scalar
// (`grad[0]`), read by the backward kernels: nothing comes back to the host.
#include "common.cuh"

// out[0] = offset + scale·Σ parts (f64, then f32). grid = 1, block = ERC_BLOCK.
extern "C" __global__ void loss_finish(const double* __restrict__ parts, float* __restrict__ out, unsigned n,
                                       double scale, double offset) {
    __shared__ double shared[ERC_BLOCK];
    double s = 0.0;
    for (unsigned i = threadIdx.x; i < n; i += ERC_BLOCK) s += parts[i];
    s = block_sum(s, shared);
    if (threadIdx.x == 0) out[0] = (float)(offset + scale * s);
}

// Cross-entropy: parts[b] = Σ_c y_bc·(x_bc − lse_b), lse in f64; the loss is −Σ_b parts[b] / B
// (loss_finish with scale −1/B). grid = B, block = ERC_BLOCK.
extern "C" __global__ void ce_rows(const float* __restrict__ x, const float* __restrict__ y,
                                   double* __restrict__ parts, unsigned c) {
    __shared__ float shared_f[ERC_BLOCK];
    __shared__ double shared[ERC_BLOCK];
    const unsigned long long row = (unsigned long long)blockIdx.x * c;
    x += row;
    y += row;
    float m = -INFINITY;
    for (unsigned i = threadIdx.x; i < c; i += ERC_BLOCK) m = fmaxf(m, x[i]);
    const double max = (double)block_max(m, shared_f);
    double e = 0.0;
    for (unsigned i = threadIdx.x; i < c; i += ERC_BLOCK) e += exp((double)x[i] - max);
    const double lse = max + log(block_sum(e, shared));
    double s = 0.0;
    for (unsigned i = threadIdx.x; i < c; i += ERC_BLOCK) s += (double)y[i] * ((double)x[i] - lse);
    s = block_sum(s, shared);
    if (threadIdx.x == 0) parts[blockIdx.x] = s;
}

// ∂x_bc = (softmax(x)_bc·Σ_c y_bc − y_bc)/B · grad (f32, as the CPU kernel). grid = B, block = ERC_BLOCK.
extern "C" __global__ void ce_bwd(const float* __restrict__ x, const float* __restrict__ y,
                                  const float* __restrict__ grad, float* __restrict__ dx, unsigned c, float batch) {
    __shared__ float shared[ERC_BLOCK];
    const unsigned long long row = (unsigned long long)blockIdx.x * c;
    x += row;
    y += row;
    dx += row;
    float m = -INFINITY;
    for (unsigned i = threadIdx.x; i < c; i += ERC_BLOCK) m = fmaxf(m, x[i]);
    m = block_max(m, shared);
    float e = 0.0f, ys = 0.0f;
    for (unsigned i = threadIdx.x; i < c; i += ERC_BLOCK) {
        e += expf(x[i] - m);
        ys += y[i];
    }
    const float sum = block_sum(e, shared);
    const float y_sum = block_sum(ys, shared);
    const float g = grad[0];
    for (unsigned i = threadIdx.x; i < c; i += ERC_BLOCK) {
        const float p = expf(x[i] - m) / sum;
        dx[i] = (p * y_sum - y[i]) / batch * g;
    }
}

// Dice, per class k (one block per class, grid = C): counts[2k] = 2TP_k, counts[2k + 1] = 2TP_k + FP_k + FN_k + ε,
// ratios[k] = counts[2k]/counts[2k + 1] (f64). The loss is 1 − mean_k ratios (loss_finish, scale −1/C, offset 1).
extern "C" __global__ void dice_counts(const float* __restrict__ p, const float* __restrict__ y,
                                       double* __restrict__ counts, double* __restrict__ ratios, unsigned b,
                                       unsigned c, double eps) {
    __shared__ double shared[ERC_BLOCK];
    const unsigned k = blockIdx.x;
    double tp = 0.0, fp = 0.0, fn = 0.0;
    for (unsigned r = threadIdx.x; r < b; r += ERC_BLOCK) {
        const double pv = (double)p[(unsigned long long)r * c + k], yv = (double)y[(unsigned long long)r * c + k];
        tp += pv * yv;
        fp += pv * (1.0 - yv);
        fn += (1.0 - pv) * yv;
    }
    tp = block_sum(tp, shared);
    fp = block_sum(fp, shared);
    fn = block_sum(fn, shared);
    if (threadIdx.x == 0) {
        const double num = 2.0 * tp, den = 2.0 * tp + fp + fn + eps;
        counts[2 * k] = num;
        counts[2 * k + 1] = den;
        ratios[k] = num / den;
    }
}

// ∂p_bc = −(2y_bc/D_c − N_c/D_c²)/C · grad. Elementwise over n = B·C, grid-stride.
extern "C" __global__ void dice_bwd(const float* __restrict__ y, const double* __restrict__ counts,
                                    const float* __restrict__ grad, float* __restrict__ dp, unsigned long long n,
                                    unsigned c) {
    const float g = grad[0];
    ERC_GRID_STRIDE_LOOP(i, n) {
        const unsigned k = (unsigned)(i % c);
        const double num = counts[2 * k], den = counts[2 * k + 1];
        dp[i] = (float)(-(2.0 * (double)y[i] / den - num / (den * den)) / (double)c) * g;
    }
}

// f32::clamp: NaN stays NaN.
__device__ __forceinline__ float clamp_f32(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

// Focal, per row: p_t = Σ p·y and α_b = Σ y·α (f32), p_t clamped to [lo, hi] (f32) then in f64:
// α_b·(1 − p_t)^γ·(−ln p_t) → parts[b]. The loss is Σ parts times 1/B or 1 (loss_finish). grid = B.
__device__ __forceinline__ void focal_row(const float* p, const float* y, const float* alpha, unsigned c,
                                          float* shared, float* pt_out, float* alpha_out) {
    float pt = 0.0f, a = 0.0f;
    for (unsigned i = threadIdx.x; i < c; i += ERC_BLOCK) {
        pt += p[i] * y[i];
        a += y[i] * alpha[i];
    }
    *pt_out = block_sum(pt, shared);
    *alpha_out = block_sum(a, shared);
}

extern "C" __global__ void focal_rows(const float* __restrict__ p, const float* __restrict__ y,
                                      const float* __restrict__ alpha, double* __restrict__ parts, unsigned c,
                                      float lo, float hi, double gamma) {
    __shared__ float shared[ERC_BLOCK];
    const unsigned long long row = (unsigned long long)blockIdx.x * c;
    float raw, a;
    focal_row(p + row, y + row, alpha, c, shared, &raw, &a);
    if (threadIdx.x == 0) {
        const double pt = (double)clamp_f32(raw, lo, hi);
        parts[blockIdx.x] = (double)a * pow(1.0 - pt, gamma) * -log(pt);
    }
}

// ∂p_bc = y_bc·α_b·(γ(1 − p_t)^(γ−1)·ln p_t − (1 − p_t)^γ/p_t)·scale · grad where the clamp let p_t through
// (lo ≤ p_t ≤ hi), 0 elsewhere. grid = B, block = ERC_BLOCK.
extern "C" __global__ void focal_bwd(const float* __restrict__ p, const float* __restrict__ y,
                                     const float* __restrict__ alpha, const float* __restrict__ grad,
                                     float* __restrict__ dp, unsigned c, float lo, float hi, double gamma,
                                     double scale) {
    __shared__ float shared[ERC_BLOCK];
    const unsigned long long row = (unsigned long long)blockIdx.x * c;
    float raw, a;
    focal_row(p + row, y + row, alpha, c, shared, &raw, &a);
    const float g = grad[0];
    const bool through = !(raw < lo || raw > hi);
    double d_pt = 0.0;
    if (through) {
        const double pt = (double)clamp_f32(raw, lo, hi);
        const double q = 1.0 - pt;
        const double modulating_grad = gamma == 0.0 ? 0.0 : gamma * pow(q, gamma - 1.0);
        d_pt = (double)a * (modulating_grad * log(pt) - pow(q, gamma) / pt) * scale;
    }
    for (unsigned i = threadIdx.x; i < c; i += ERC_BLOCK) {
        const float v = through ? (float)(d_pt * (double)y[row + i]) : 0.0f;
        dp[row + i] = v * g;
    }
}
