// Max-pool 3×3, stride 2, padding 1 over planes of H×W (ops/pool.rs), output OH×OW with OH = ⌊(H − 1)/2⌋ + 1.
//
// Forward: one thread per output. Backward: stateless and deterministic — one thread per input element, which
// visits the ≤ 2×2 windows that contain it in row-major output order, recomputes each window's first maximum and
// adds that output's gradient where the maximum is this element: the CPU kernel's additions in its order, so the
// result equals it bit for bit. No atomics, no argmax tensor kept between the passes.
#include "common.cuh"

// The in-plane index of the first maximum of window (i, j), its value in *value: as the CPU kernel's
// `argmax_plane`, the first window value taken, then any larger one; a NaN is taken and ends its window row
// (`v != v`: no fast-math, so it stays the IEEE NaN test).
__device__ __forceinline__ unsigned pool_first_max(const float* __restrict__ plane, unsigned h, unsigned w,
                                                   unsigned i, unsigned j, float* value) {
    float best = -INFINITY;
    unsigned best_at = 0;
    bool found = false;
    for (unsigned di = 0; di < 3; ++di) {
        const int y = (int)(2 * i + di) - 1;
        if (y < 0 || y >= (int)h) continue;
        for (unsigned dj = 0; dj < 3; ++dj) {
            const int x = (int)(2 * j + dj) - 1;
            if (x < 0 || x >= (int)w) continue;
            const unsigned at = (unsigned)y * w + (unsigned)x;
            const float v = plane[at];
            if (v > best || !found || v != v) {
                best = v;
                best_at = at;
                found = true;
                if (v != v) break;
            }
        }
    }
    *value = best;
    return best_at;
}

// y[plane, i, j] = the window's maximum, n = planes·OH·OW outputs.
extern "C" __global__ void max_pool_fwd(const float* __restrict__ x, float* __restrict__ y, unsigned h, unsigned w,
                                        unsigned oh, unsigned ow, unsigned long long n) {
    const unsigned outputs = oh * ow;
    ERC_GRID_STRIDE_LOOP(o, n) {
        const unsigned long long plane = o / outputs;
        const unsigned at = (unsigned)(o % outputs);
        float value;
        pool_first_max(x + plane * h * w, h, w, at / ow, at % ow, &value);
        y[o] = value;
    }
}

// ∂x[plane, r, c] = Σ grad[plane, i, j] over the windows (i, j) ∋ (r, c), in row-major order, whose first maximum
// is (r, c); n = planes·H·W inputs. The windows 2i − 1 … 2i + 1 containing row r: i from r/2 to (r + 1)/2 (one
// when r is even, two when it is odd; the last may lie past the output), likewise columns.
extern "C" __global__ void max_pool_bwd(const float* __restrict__ x, const float* __restrict__ grad,
                                        float* __restrict__ dx, unsigned h, unsigned w, unsigned oh, unsigned ow,
                                        unsigned long long n) {
    const unsigned inputs = h * w;
    ERC_GRID_STRIDE_LOOP(e, n) {
        const unsigned long long plane = e / inputs;
        const unsigned at = (unsigned)(e % inputs);
        const unsigned r = at / w, c = at % w;
        const unsigned i0 = r / 2, i1 = (r + 1) / 2 < oh ? (r + 1) / 2 : oh - 1;
        const unsigned j0 = c / 2, j1 = (c + 1) / 2 < ow ? (c + 1) / 2 : ow - 1;
        const float* values = x + plane * inputs;
        const float* g = grad + plane * oh * ow;
        float sum = 0.0f;
        for (unsigned i = i0; i <= i1; ++i) {
            for (unsigned j = j0; j <= j1; ++j) {
                float value;
                if (pool_first_max(values, h, w, i, j, &value) == at) sum += g[i * ow + j];
            }
        }
        dx[e] = sum;
    }
}
