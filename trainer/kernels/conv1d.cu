// The data movement of a channels-last 1-D convolution (ops/conv1d.rs; the products are cuBLAS GEMMs that the
// Rust body chains with these): x (B, L, C) in C_g-channel groups, kernel k, stride s, padding p, T output steps,
// a chunk of nb batch elements b0 … b0 + nb − 1 at a time. Per group g, the columns of the chunk form an
// (nb·T) × (k·C_g) matrix, row r = bb·T + t, entry j·C_g + cc:
//
//   cols[g][r, j·C_g + cc] = x[b0 + bb, t·s − p + j, g·C_g + cc]   (0 outside the input)
//
// the groups one after another (group g at g·nb·T·k·C_g). Both kernels: grid (⌈n / ERC_BLOCK⌉ capped, groups),
// the group the plane, g = y0 + blockIdx.y (launched in y-chunks of at most 65 535 groups), positions in the
// plane by a 32-bit grid-stride loop (the host checks that a chunk's planes fit 32 bits), `x0` = b0·L·C the
// chunk's first value of x (and of ∂x).
//
// conv1d_columns builds the columns from x; conv1d_gather is its adjoint: each element of ∂x for the chunk's batch
// elements sums the column-gradient entries copied from it, over t ascending (a fixed order, no atomics), and
// writes every element of those rows — chunks of whole batch elements make that a plain write.
#include "common.cuh"

// A 32-bit grid-stride loop over the positions of one plane.
#define ERC_PLANE_LOOP(i, n) \
    for (unsigned i = blockIdx.x * ERC_BLOCK + threadIdx.x; i < (n); i += ERC_BLOCK * gridDim.x)

// cols[g][(bb·T + t)·k·C_g + j·C_g + cc] (n = nb·T·k·C_g values per group) from x.
extern "C" __global__ void conv1d_columns(const float* __restrict__ x, float* __restrict__ cols,
                                          unsigned long long x0, unsigned nb, unsigned l, unsigned c,
                                          unsigned cg, unsigned t, unsigned k, unsigned s, unsigned p,
                                          unsigned y0) {
    const unsigned g = y0 + blockIdx.y;
    const unsigned row = k * cg, n = nb * t * row;
    const float* xg = x + x0 + (unsigned long long)g * cg;
    float* out = cols + (unsigned long long)g * n;
    ERC_PLANE_LOOP(i, n) {
        const unsigned r = i / row, e = i - r * row;
        const unsigned j = e / cg, cc = e - j * cg;
        const unsigned bb = r / t, step = r - bb * t;
        const unsigned at = step * s + j;  // the input step + p
        out[i] = at >= p && at - p < l ? xg[(bb * l + (at - p)) * c + cc] : 0.0f;
    }
}

// ∂x[b0 + bb, i, g·C_g + cc] = Σ_t dcols[g][(bb·T + t)·k·C_g + (i + p − t·s)·C_g + cc] over the steps t < T with
// 0 ≤ i + p − t·s < k (n = nb·L·C_g values per group).
extern "C" __global__ void conv1d_gather(const float* __restrict__ dcols, float* __restrict__ dx,
                                         unsigned long long x0, unsigned nb, unsigned l, unsigned c, unsigned cg,
                                         unsigned t, unsigned k, unsigned s, unsigned p, unsigned y0) {
    const unsigned g = y0 + blockIdx.y;
    const unsigned row = k * cg, rows = l * cg, n = nb * rows;
    const float* dg = dcols + (unsigned long long)g * nb * t * row;
    float* out = dx + x0 + (unsigned long long)g * cg;
    ERC_PLANE_LOOP(idx, n) {
        const unsigned bb = idx / rows, e = idx - bb * rows;
        const unsigned i = e / cg, cc = e - i * cg;
        const unsigned ip = i + p;
        // t·s ≤ ip < t·s + k
        const unsigned first = ip >= k ? (ip - k) / s + 1 : 0;
        const unsigned last = ip / s + 1 < t ? ip / s + 1 : t;
        const float* src = dg + bb * t * row + cc;
        float sum = 0.0f;
        for (unsigned step = first; step < last; ++step) sum += src[step * row + (ip - step * s) * cg];
        out[(bb * l + i) * c + cc] = sum;
    }
}
