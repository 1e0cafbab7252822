// The output row (already written by this block) quantized to 8 bits for the next matmul, as
// quantize_q8_1 would do it (cols a multiple of 32; null xq: nothing to do).
__device__ __forceinline__ void q8_row(const float* orow, int cols, i8* xq, float2* xds) {
    if (xq == nullptr) return;
    __syncthreads();
    int warp = threadIdx.x >> 5, nw = blockDim.x >> 5, lane = threadIdx.x & 31;
    size_t r = blockIdx.x;
    for (int b = warp; b < cols / 32; b += nw)
        q8_warp(orow[b * 32 + lane], xq + r * cols + b * 32, xds + r * (cols / 32) + b);
}

// out[t][i] = v, and its f16 copy for the f16 mmq kernels (half_mma_input's) when xm is not null.
__device__ __forceinline__ void put_out(float* orow, u16* xm, int cols, int i, float v) {
    orow[i] = v;
    if (xm != nullptr) xm[half_mma_pos((long long)blockIdx.x * cols + i)] = f2h(v);
}

// RMSNorm: out[t] = x[t] / rms(x[t]) * w, one block per row; and the output's 8-bit copy
// (quantize_q8_1's) when xq is not null, its f16 copy when xm is not.
extern "C" __global__ void rms_norm(const float* __restrict__ x, const float* __restrict__ w,
                                    float* out, int cols, float eps, i8* xq, float2* xds,
                                    u16* xm) {
    pdl_entry();
    const float* xr = x + (size_t)blockIdx.x * cols;
    float* orow = out + (size_t)blockIdx.x * cols;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_sum(ss);
    float s = rsqrtf(ss / (float)cols + eps);
    for (int i = threadIdx.x; i < cols; i += blockDim.x) put_out(orow, xm, cols, i, xr[i] * s * w[i]);
    q8_row(orow, cols, xq, xds);
}

// x[t] += y[t], then out[t] = rms_norm(x[t]) (and its 8-bit copy when xq is not null, its f16
// copy when xm is not). Each thread reads and writes only its own elements, so out may be y.
extern "C" __global__ void add_rms_norm(float* x, const float* y, const float* __restrict__ w,
                                        float* out, int cols, float eps, i8* xq, float2* xds,
                                        u16* xm) {
    pdl_entry();
    float* xr = x + (size_t)blockIdx.x * cols;
    const float* yr = y + (size_t)blockIdx.x * cols;
    float* orow = out + (size_t)blockIdx.x * cols;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        float v = xr[i] + yr[i];
        xr[i] = v;
        ss += v * v;
    }
    ss = block_sum(ss);
    float s = rsqrtf(ss / (float)cols + eps);
    for (int i = threadIdx.x; i < cols; i += blockDim.x) put_out(orow, xm, cols, i, xr[i] * s * w[i]);
    q8_row(orow, cols, xq, xds);
}

// In place, every head_dim slice of every row normalized with the shared weight w.
// One warp per head; grid covers n_heads_total = rows * cols / head_dim warps.
extern "C" __global__ void rms_norm_heads(float* __restrict__ x, const float* __restrict__ w,
                                          int n_heads_total, int head_dim, float eps) {
    pdl_entry();
    int head = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (head >= n_heads_total) return;
    float* h = x + (size_t)head * head_dim;
    float ss = 0.0f;
    for (int i = lane; i < head_dim; i += 32) ss += h[i] * h[i];
    ss = warp_sum(ss);
    float s = rsqrtf(ss / (float)head_dim + eps);
    for (int i = lane; i < head_dim; i += 32) h[i] = h[i] * s * w[i];
}
