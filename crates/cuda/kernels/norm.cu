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

// out[row][i] = v (orow: out's row), and its f16 copy (put_half) when xm is not null.
__device__ __forceinline__ void put_out(float* orow, u16* xm, size_t row, int cols, int i,
                                        float v) {
    orow[i] = v;
    if (xm != nullptr) put_half(xm, (long long)row * cols + i, v);
}

// Elements a thread keeps in registers: element k * blockDim.x + threadIdx.x for k < NORM_REGS,
// so a row of up to NORM_REGS * blockDim.x (8192 at 1024 threads) is read from memory once and
// its 8-bit copy made without going back to memory: for each k a warp holds 32 consecutive
// elements, one 8-bit block. Longer rows take the loops of norm_rest.
#define NORM_REGS 8

// out = v * s * w for the elements of row r held in registers (v, and w's elements in wv):
// element base + k * blockDim.x + threadIdx.x of the row, k < NORM_REGS, up to base + len; with
// its f16 and 8-bit copies. ss is the row's sum of squares. xq is only set when cols (and len and
// base) are multiples of 32, so the test on i is the same for a whole warp wherever q8_warp's
// shuffles run.
__device__ __forceinline__ void norm_regs_out(const float (&v)[NORM_REGS],
                                              const float (&wv)[NORM_REGS], float ss, float* orow,
                                              size_t r, int base, int len, int cols, float eps,
                                              i8* xq, float2* xds, u16* xm) {
    float s = rsqrtf(ss / (float)cols + eps);
#pragma unroll
    for (int k = 0; k < NORM_REGS; k++) {
        int j = k * blockDim.x + threadIdx.x, i = base + j;
        if (j < len) {
            float o = v[k] * s * wv[k];
            put_out(orow, xm, r, cols, i, o);
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
        put_out(orow, xm, blockIdx.x, cols, i, xr[i] * s * w[i]);
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
        norm_regs_out(v, wv, block_sum(ss), orow, blockIdx.x, 0, cols, cols, eps, xq, xds, xm);
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
        norm_regs_out(v, wv, block_sum(ss), orow, blockIdx.x, 0, cols, cols, eps, xq, xds, xm);
        return;
    }
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        float v = xr[i] + yr[i];
        xr[i] = v;
        ss += v * v;
    }
    norm_rest(xr, w, block_sum(ss), orow, cols, eps, xq, xds, xm);
}

// rms_norm (y null) and add_rms_norm on sm_90 and later, in clusters: n blocks a row (launched
// with the cluster dimension n; grid rows * n), block `rank` of a cluster taking the row's
// elements rank * len .. + len (len = cols / n, a multiple of 32, at most NORM_REGS *
// blockDim.x). Each block sums the squares of its slice; the blocks read each other's sums
// through distributed shared memory, so every block has the row's sum (added in rank order:
// the same in each), and then scales and quantizes its slice. One block a row runs a whole
// row's arithmetic on one SM (H200, 4096 columns: 6.1 us a norm, issue-bound; 5.25 us as a
// cluster). The sum is in another order than one block's: the host takes these for both norms
// alike (the fused and unfused paths give the same bits), and not in deterministic mode, since
// it takes them for one row only (backend/fused.rs). Before sm_90 (no clusters) the body is
// empty: the host launches these only where the device has clusters (`cluster_norms`).
__device__ __forceinline__ void norm_cluster(float* x, const float* y, const float* w, float* out,
                                             int cols, float eps, i8* xq, float2* xds, u16* xm) {
#if __CUDA_ARCH__ >= 900
    u32 rank, n;
    asm("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
    asm("mov.u32 %0, %%cluster_nctarank;" : "=r"(n));
    size_t r = blockIdx.x / n;
    int len = cols / (int)n, base = (int)rank * len;
    float* xr = x + r * cols;
    float v[NORM_REGS], wv[NORM_REGS], ss = 0.0f;
#pragma unroll
    for (int k = 0; k < NORM_REGS; k++) {
        int j = k * blockDim.x + threadIdx.x, i = base + j;
        v[k] = 0.0f;
        wv[k] = 0.0f;
        if (j < len) {
            v[k] = y != nullptr ? xr[i] + y[r * cols + i] : xr[i];
            wv[k] = w[i];
        }
    }
#pragma unroll
    for (int k = 0; k < NORM_REGS; k++) {
        int j = k * blockDim.x + threadIdx.x;
        if (y != nullptr && j < len) xr[base + j] = v[k];
        ss += v[k] * v[k];
    }
    __shared__ float mine;
    ss = block_sum(ss);
    if (threadIdx.x == 0) mine = ss;
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::
                     : "memory");
    float total = 0.0f;
    for (u32 q = 0; q < n; q++) {
        u32 at;
        float t;
        asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(at) : "r"(smem_addr(&mine)), "r"(q));
        asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(t) : "r"(at) : "memory");
        total += t;
    }
    // No block leaves (its shared memory with it) before every block has read the sums.
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::
                     : "memory");
    norm_regs_out(v, wv, total, out + r * cols, r, base, len, cols, eps, xq, xds, xm);
#endif
}

extern "C" __global__ void __launch_bounds__(1024)
    rms_norm_cl(float* x, const float* __restrict__ w, float* out, int cols, float eps, i8* xq,
                float2* xds, u16* xm) {
    pdl_entry();
    norm_cluster(x, nullptr, w, out, cols, eps, xq, xds, xm);
}

extern "C" __global__ void __launch_bounds__(1024)
    add_rms_norm_cl(float* x, const float* y, const float* __restrict__ w, float* out, int cols,
                    float eps, i8* xq, float2* xds, u16* xm) {
    pdl_entry();
    norm_cluster(x, y, w, out, cols, eps, xq, xds, xm);
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
