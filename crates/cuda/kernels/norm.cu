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

// out[t][i] = v, and its f16 copy (put_half) when xm is not null.
__device__ __forceinline__ void put_out(float* orow, u16* xm, int cols, int i, float v) {
    orow[i] = v;
    if (xm != nullptr) put_half(xm, (long long)blockIdx.x * cols + i, v);
}

// Elements a thread keeps in registers: element k * blockDim.x + threadIdx.x for k < NORM_REGS,
// so a row of up to NORM_REGS * blockDim.x (8192 at 1024 threads) is read from memory once and
// its 8-bit copy made without going back to memory: for each k a warp holds 32 consecutive
// elements, one 8-bit block. Longer rows take the loops of norm_rest.
#define NORM_REGS 8

// out = v * s * w for the row held in registers (v, and w's elements in wv), with its f16 and
// 8-bit copies; ss is the row's sum of squares. xq is only set when cols is a multiple of 32,
// so the test on i is the same for a whole warp wherever q8_warp's shuffles run.
__device__ __forceinline__ void norm_regs_out(const float (&v)[NORM_REGS],
                                              const float (&wv)[NORM_REGS], float ss, float* orow,
                                              int cols, float eps, i8* xq, float2* xds, u16* xm) {
    float s = rsqrtf(ss / (float)cols + eps);
    size_t r = blockIdx.x;
#pragma unroll
    for (int k = 0; k < NORM_REGS; k++) {
        int i = k * blockDim.x + threadIdx.x;
        if (i < cols) {
            float o = v[k] * s * wv[k];
            put_out(orow, xm, cols, i, o);
            if (xq != nullptr)
                q8_warp(o, xq + r * cols + (i & ~31), xds + r * (cols / 32) + (i >> 5));
        }
    }
}

// The second half of both norms for rows longer than the registers hold: out = x * s * w read
// back from memory, then the 8-bit copy read back from out.
__device__ __forceinline__ void norm_rest(const float* xr, const float* __restrict__ w, float ss,
                                          float* orow, int cols, float eps, i8* xq, float2* xds,
                                          u16* xm) {
    float s = rsqrtf(ss / (float)cols + eps);
    for (int i = threadIdx.x; i < cols; i += blockDim.x)
        put_out(orow, xm, cols, i, xr[i] * s * w[i]);
    q8_row(orow, cols, xq, xds);
}

// RMSNorm: out[t] = x[t] / rms(x[t]) * w, one block per row; and the output's 8-bit copy
// (quantize_q8_1's) when xq is not null, its f16 copy when xm is not.
extern "C" __global__ void __launch_bounds__(1024)
    rms_norm(const float* __restrict__ x, const float* __restrict__ w, float* out, int cols,
             float eps, i8* xq, float2* xds, u16* xm) {
    pdl_entry();
    const float* xr = x + (size_t)blockIdx.x * cols;
    float* orow = out + (size_t)blockIdx.x * cols;
    float ss = 0.0f;
    if (cols <= NORM_REGS * (int)blockDim.x) {
        float v[NORM_REGS], wv[NORM_REGS];
#pragma unroll
        for (int k = 0; k < NORM_REGS; k++) {
            int i = k * blockDim.x + threadIdx.x;
            v[k] = i < cols ? xr[i] : 0.0f;
            wv[k] = i < cols ? w[i] : 0.0f;
            ss += v[k] * v[k];
        }
        norm_regs_out(v, wv, block_sum(ss), orow, cols, eps, xq, xds, xm);
        return;
    }
    for (int i = threadIdx.x; i < cols; i += blockDim.x) ss += xr[i] * xr[i];
    norm_rest(xr, w, block_sum(ss), orow, cols, eps, xq, xds, xm);
}

// x[t] += y[t], then out[t] = rms_norm(x[t]) (and its 8-bit copy when xq is not null, its f16
// copy when xm is not). Each thread reads and writes only its own elements, so out may be y.
extern "C" __global__ void __launch_bounds__(1024)
    add_rms_norm(float* x, const float* y, const float* __restrict__ w, float* out, int cols,
                 float eps, i8* xq, float2* xds, u16* xm) {
    pdl_entry();
    float* xr = x + (size_t)blockIdx.x * cols;
    const float* yr = y + (size_t)blockIdx.x * cols;
    float* orow = out + (size_t)blockIdx.x * cols;
    float ss = 0.0f;
    if (cols <= NORM_REGS * (int)blockDim.x) {
        float v[NORM_REGS], wv[NORM_REGS];
#pragma unroll
        for (int k = 0; k < NORM_REGS; k++) {
            int i = k * blockDim.x + threadIdx.x;
            v[k] = 0.0f;
            wv[k] = 0.0f;
            if (i < cols) {
                v[k] = xr[i] + yr[i];
                wv[k] = w[i];
            }
        }
#pragma unroll
        for (int k = 0; k < NORM_REGS; k++) {
            int i = k * blockDim.x + threadIdx.x;
            if (i < cols) xr[i] = v[k];
            ss += v[k] * v[k];
        }
        norm_regs_out(v, wv, block_sum(ss), orow, cols, eps, xq, xds, xm);
        return;
    }
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        float v = xr[i] + yr[i];
        xr[i] = v;
        ss += v * v;
    }
    norm_rest(xr, w, block_sum(ss), orow, cols, eps, xq, xds, xm);
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
