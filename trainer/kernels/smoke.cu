// The smallest real kernels, to prove the build plumbing end to end: build.rs compiles this file to PTX and
// src/cuda_smoke.rs loads it and launches them through candle custom ops (one input: scale_f32, two: axpy_f32).

// y = a * x over n contiguous f32
extern "C" __global__ void scale_f32(const float* x, float* y, float a, unsigned int n) {
    // grid-stride loop: correct for any grid size the caller picks
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        y[i] = a * x[i];
    }
}

// out = a * x + y over n contiguous f32
extern "C" __global__ void axpy_f32(const float* x, const float* y, float* out, float a, unsigned int n) {
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        out[i] = a * x[i] + y[i];
    }
}
