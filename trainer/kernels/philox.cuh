// The dropout masks' generator: Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
// SC11; the generator of cuRAND and of PyTorch's CUDA dropout), counter-based: the draw for element i of a mask is
// a pure function of (key, i). A mask is therefore never stored: the kernels that apply dropout recompute it from
// its key in the forward and the backward pass, and `ops::dropout::Counter` computes the same on the host (tests,
// CPU references). The key of each mask comes from the run's seeded generator, which resume checkpoints save, so a
// resumed GPU run draws the masks of an uninterrupted one.
//
// Element i: counter (⌊i/4⌋ low 32 bits, ⌊i/4⌋ high 32 bits, 0, 0), key (key low, key high), word i mod 4 of the
// output; kept iff (word >> 8) ≥ threshold, threshold = ⌈p·2²⁴⌉ (an integer comparison: no float rounding
// between the GPU, the emulator and the host).
#pragma once

struct ErcPhilox {
    unsigned v[4];
};

__device__ __forceinline__ void erc_mulhilo(unsigned a, unsigned b, unsigned* hi, unsigned* lo) {
    const unsigned long long product = (unsigned long long)a * b;
    *hi = (unsigned)(product >> 32);
    *lo = (unsigned)product;
}

// The four 32-bit words of block `block` (= ⌊i/4⌋) under `key`.
__device__ __forceinline__ ErcPhilox erc_philox(unsigned long long key, unsigned long long block) {
    unsigned c0 = (unsigned)block, c1 = (unsigned)(block >> 32), c2 = 0u, c3 = 0u;
    unsigned k0 = (unsigned)key, k1 = (unsigned)(key >> 32);
    for (int round = 0; round < 10; ++round) {
        unsigned hi0, lo0, hi1, lo1;
        erc_mulhilo(0xD2511F53u, c0, &hi0, &lo0);
        erc_mulhilo(0xCD9E8D57u, c2, &hi1, &lo1);
        const unsigned n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    ErcPhilox out;
    out.v[0] = c0;
    out.v[1] = c1;
    out.v[2] = c2;
    out.v[3] = c3;
    return out;
}

// The inverted-dropout factor of one word: `scale` (= 1/(1 − p)) if kept, else 0.
__device__ __forceinline__ float erc_keep_factor(unsigned word, unsigned threshold, float scale) {
    return (word >> 8) >= threshold ? scale : 0.0f;
}

// The factor of element i of the mask keyed `key` (one Philox block per call: kernels that walk 4 consecutive
// elements draw the block once instead).
__device__ __forceinline__ float erc_dropout_factor(unsigned long long key, unsigned long long i, unsigned threshold,
                                                    float scale) {
    const ErcPhilox r = erc_philox(key, i >> 2);
    return erc_keep_factor(r.v[i & 3], threshold, scale);
}
