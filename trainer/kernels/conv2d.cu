// The data movement of the CUDA 2-D convolution (ops/conv2d.rs, `cuda_body`): x (B, C, H, W) NCHW, a square
// k×k kernel, stride s, padding p, output OH×OW, L = OH·OW positions, CKK = C·k·k patch values. The products
// themselves are cuBLAS GEMMs issued by the Rust body; these kernels lay out their operands for a chunk of `nb`
// images starting at image b0 (element offset x0 = b0·C·H·W in x and ∂x, b0·C_out·L in ∂y):
//
// * conv2d_im2col     — cols[(ckk·nb + n)·L + l] = x[b0 + n, c, oy·s − p + ky, ox·s − p + kx] (0 outside), i.e.
//                       the (CKK, nb·L) column matrix: row ckk = (c·k + ky)·k + kx, then image, then position;
// * conv2d_ncl_to_cnl — the chunk of ∂y, (nb, C_out, L) → (C_out, nb·L), so that ∂W is one GEMM over nb·L;
// * conv2d_col2im     — ∂x as a gather: each input element adds, in (ky, kx) order, the entries of ∂cols that
//                       read it. One thread per element, one write each: deterministic, no atomics.
//
// One thread per element, grid-stride with a 64-bit counter; the index arithmetic inside a chunk is 32-bit (the
// body checks that a chunk's counts fit) and the offsets into x, ∂x, ∂y 64-bit.
#include "common.cuh"

// The (CKK, nb·L) columns of images b0 … b0 + nb − 1 (x0 = b0·C·H·W).
extern "C" __global__ void conv2d_im2col(const float* __restrict__ x, float* __restrict__ cols,
                                         unsigned long long x0, unsigned nb, unsigned c, unsigned h, unsigned w,
                                         unsigned k, unsigned stride, unsigned padding, unsigned oh, unsigned ow) {
    const unsigned l_count = oh * ow;
    const unsigned long long count = (unsigned long long)c * k * k * nb * l_count;
    const unsigned long long chw = (unsigned long long)c * h * w;
    ERC_GRID_STRIDE_LOOP(i, count) {
        const unsigned j = (unsigned)i;
        const unsigned l = j % l_count;
        const unsigned row = j / l_count;  // ckk·nb + n
        const unsigned n = row % nb;
        const unsigned ckk = row / nb;
        const unsigned kx = ckk % k, ky = ckk / k % k, ci = ckk / (k * k);
        const int iy = (int)((l / ow) * stride + ky) - (int)padding;
        const int ix = (int)((l % ow) * stride + kx) - (int)padding;
        float v = 0.0f;
        if (iy >= 0 && iy < (int)h && ix >= 0 && ix < (int)w) {
            v = x[x0 + n * chw + (ci * h + (unsigned)iy) * w + (unsigned)ix];
        }
        cols[j] = v;
    }
}

// dst[(r·nb + n)·l + i] = src[src0 + (n·rows + r)·l + i]: (nb, rows, l) from element src0 → (rows, nb·l).
extern "C" __global__ void conv2d_ncl_to_cnl(const float* __restrict__ src, float* __restrict__ dst,
                                             unsigned long long src0, unsigned nb, unsigned rows, unsigned l) {
    const unsigned long long count = (unsigned long long)rows * nb * l;
    ERC_GRID_STRIDE_LOOP(i, count) {
        const unsigned j = (unsigned)i;
        const unsigned at = j % l;
        const unsigned row = j / l;  // r·nb + n
        const unsigned n = row % nb, r = row / nb;
        dst[j] = src[src0 + ((unsigned long long)n * rows + r) * l + at];
    }
}

// ∂x[x0 + j] for the nb·C·H·W elements of images b0 … b0 + nb − 1: Σ over the (ky, kx) whose window position
// (oy, ox) = ((iy + p − ky)/s, (ix + p − kx)/s) is whole and inside the output, of ∂cols at that entry, in (ky, kx)
// order. dcols is laid out as conv2d_im2col's cols.
extern "C" __global__ void conv2d_col2im(const float* __restrict__ dcols, float* __restrict__ dx,
                                         unsigned long long x0, unsigned nb, unsigned c, unsigned h, unsigned w,
                                         unsigned k, unsigned stride, unsigned padding, unsigned oh, unsigned ow) {
    const unsigned l_count = oh * ow;
    const unsigned long long count = (unsigned long long)nb * c * h * w;
    ERC_GRID_STRIDE_LOOP(i, count) {
        const unsigned j = (unsigned)i;
        const unsigned ix = j % w;
        const unsigned iy = j / w % h;
        const unsigned ci = j / (w * h) % c;
        const unsigned n = j / (w * h * c);
        float sum = 0.0f;
        for (unsigned ky = 0; ky < k; ++ky) {
            const int ty = (int)(iy + padding) - (int)ky;
            if (ty < 0) break;  // and for every larger ky
            if ((unsigned)ty % stride != 0 || (unsigned)ty / stride >= oh) continue;
            const unsigned oy = (unsigned)ty / stride;
            for (unsigned kx = 0; kx < k; ++kx) {
                const int tx = (int)(ix + padding) - (int)kx;
                if (tx < 0) break;
                if ((unsigned)tx % stride != 0 || (unsigned)tx / stride >= ow) continue;
                const unsigned ox = (unsigned)tx / stride;
                const unsigned ckk = (ci * k + ky) * k + kx;
                sum += dcols[(ckk * nb + n) * l_count + oy * ow + ox];
            }
        }
        dx[x0 + j] = sum;
    }
}
