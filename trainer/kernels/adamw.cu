// AdamW over many parameter tensors in a few launches (ops/adamw.rs): Σ g² for the global gradient norm, the
// clipping coefficient (computed and kept on the device), and the update of a parameter group — each one launch
// over every tensor, whatever their number (a multi-tensor launch, as PyTorch's fused AdamW).
//
// A launch's tensors come as tables of device addresses (`params`, `grads`, `ms`, `vs`: tensor t's buffers),
// `lens[t]` their lengths, and its work as a table of chunks: block j takes chunk (chunks[2j] = tensor,
// chunks[2j + 1] = first element), at most ERC_ADAMW_CHUNK elements. The host builds the tables per step (a
// gradient's address changes every step).
//
// The update is the CPU kernel's element-wise formula (torch's AdamW, decoupled weight decay), in f32:
//   g ← g·min(clip, 1); m ← β₁m + (1 − β₁)g; v ← β₂v + (1 − β₂)g²; θ ← θ·decay − step_size·m/(√v/√(1 − β₂ᵗ) + ε).
#include "common.cuh"

#define ERC_ADAMW_CHUNK 4096

struct AdamwChunk {
    unsigned long long tensor, start, end;
};

__device__ __forceinline__ AdamwChunk adamw_chunk(const unsigned long long* chunks, const unsigned long long* lens) {
    AdamwChunk c;
    c.tensor = chunks[2 * blockIdx.x];
    c.start = chunks[2 * blockIdx.x + 1];
    const unsigned long long end = c.start + ERC_ADAMW_CHUNK, len = lens[c.tensor];
    c.end = end < len ? end : len;
    return c;
}

// partials[j] = Σ g² over chunk j, in f64. grid = number of chunks.
extern "C" __global__ void adamw_sumsq(const unsigned long long* __restrict__ grads,
                                       const unsigned long long* __restrict__ chunks,
                                       const unsigned long long* __restrict__ lens, double* __restrict__ partials) {
    __shared__ double shared[ERC_BLOCK];
    const AdamwChunk c = adamw_chunk(chunks, lens);
    const float* g = reinterpret_cast<const float*>(grads[c.tensor]);
    double s = 0.0;
    for (unsigned long long i = c.start + threadIdx.x; i < c.end; i += ERC_BLOCK) {
        const double v = (double)g[i];
        s += v * v;
    }
    s = block_sum(s, shared);
    if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

// One block: squares[0] = Σ partials (thread-strided, then the block's tree: a fixed order) + host_squares, and
// clip[0] = min(1, max_norm / (√squares + 1e-6)) — torch.nn.utils.clip_grad_norm_'s coefficient.
extern "C" __global__ void adamw_clip(const double* __restrict__ partials, unsigned count, double host_squares,
                                      double max_norm, double* __restrict__ squares, float* __restrict__ clip) {
    __shared__ double shared[ERC_BLOCK];
    double s = 0.0;
    for (unsigned i = threadIdx.x; i < count; i += ERC_BLOCK) s += partials[i];
    s = block_sum(s, shared) + host_squares;
    if (threadIdx.x == 0) {
        squares[0] = s;
        clip[0] = (float)fmin(max_norm / (sqrt(s) + 1e-6), 1.0);
    }
}

// The update of every element of every chunk, in place on θ, m and v. grid = number of chunks.
extern "C" __global__ void adamw_update(const unsigned long long* __restrict__ params,
                                        const unsigned long long* __restrict__ grads,
                                        const unsigned long long* __restrict__ ms,
                                        const unsigned long long* __restrict__ vs,
                                        const unsigned long long* __restrict__ chunks,
                                        const unsigned long long* __restrict__ lens, const float* __restrict__ clip,
                                        float beta1, float beta2, float decay, float step_size, float bias2_sqrt,
                                        float eps) {
    const AdamwChunk c = adamw_chunk(chunks, lens);
    float* theta = reinterpret_cast<float*>(params[c.tensor]);
    const float* g = reinterpret_cast<const float*>(grads[c.tensor]);
    float* m = reinterpret_cast<float*>(ms[c.tensor]);
    float* v = reinterpret_cast<float*>(vs[c.tensor]);
    const float coefficient = fminf(clip[0], 1.0f);
    for (unsigned long long i = c.start + threadIdx.x; i < c.end; i += ERC_BLOCK) {
        const float gi = g[i] * coefficient;
        const float mi = beta1 * m[i] + (1.0f - beta1) * gi;
        const float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        const float denom = sqrtf(vi) / bias2_sqrt + eps;
        theta[i] = theta[i] * decay - step_size * (mi / denom);
        m[i] = mi;
        v[i] = vi;
    }
}
