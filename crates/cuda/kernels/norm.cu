// RMSNorm: out[t] = x[t] / rms(x[t]) * w, one block per row.
extern "C" __global__ void rms_norm(const float* __restrict__ x, const float* __restrict__ w,
                                    float* __restrict__ out, int cols, float eps) {
    const float* xr = x + (size_t)blockIdx.x * cols;
    float* orow = out + (size_t)blockIdx.x * cols;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_sum(ss);
    float s = rsqrtf(ss / (float)cols + eps);
    for (int i = threadIdx.x; i < cols; i += blockDim.x) orow[i] = xr[i] * s * w[i];
}

// In place, every head_dim slice of every row normalized with the shared weight w.
// One warp per head; grid covers n_heads_total = rows * cols / head_dim warps.
extern "C" __global__ void rms_norm_heads(float* __restrict__ x, const float* __restrict__ w,
                                          int n_heads_total, int head_dim, float eps) {
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
