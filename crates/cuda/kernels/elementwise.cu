// Element-wise and row-copy kernels: embedding lookup, GLU, residual add, bias, soft-capping,
// row gather. Launch with 256 threads.

// out[t] = table[ids[t]] * scale for quantized tables: grid (tokens), threads over chunks.
template <class T>
__device__ __forceinline__ void embed_q(const u8* __restrict__ table, const u32* __restrict__ ids,
                                        int cols, float scale, float* __restrict__ out) {
    int t = blockIdx.x;
    const u8* row = table + (size_t)ids[t] * (size_t)(cols / T::QK) * T::BYTES;
    float* o = out + (size_t)t * cols;
    for (int c = threadIdx.x; c < cols / 32; c += blockDim.x) {
        float v[32];
        T::chunk(row + (c / T::CHUNKS) * T::BYTES, c % T::CHUNKS, v);
#pragma unroll
        for (int j = 0; j < 32; j++) o[c * 32 + j] = v[j] * scale;
    }
}

#define EMBED_Q(NAME, T)                                                                        \
    extern "C" __global__ void embed_##NAME(const u8* table, const u32* ids, int cols,          \
                                            float scale, float* out) {                          \
        pdl_entry();                                                                            \
        embed_q<T>(table, ids, cols, scale, out);                                               \
    }

EMBED_Q(q4_0, Q4_0)
EMBED_Q(q4_1, Q4_1)
EMBED_Q(q5_0, Q5_0)
EMBED_Q(q5_1, Q5_1)
EMBED_Q(q8_0, Q8_0)
EMBED_Q(q4_k, Q4K)
EMBED_Q(q5_k, Q5K)
EMBED_Q(q6_k, Q6K)

// Float tables: kind 0 = f32, 1 = f16, 2 = bf16.
extern "C" __global__ void embed_float(const u8* __restrict__ table, const u32* __restrict__ ids,
                                       int cols, float scale, float* __restrict__ out, int kind) {
    pdl_entry();
    int t = blockIdx.x;
    int esize = kind == 0 ? 4 : 2;
    const u8* row = table + (size_t)ids[t] * cols * esize;
    float* o = out + (size_t)t * cols;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        float a = kind == 0 ? ld_f32(row, i) : (kind == 1 ? ld_f16(row, i) : ld_bf16(row, i));
        o[i] = a * scale;
    }
}

// gate = act(gate) * up.
extern "C" __global__ void glu(float* __restrict__ gate, const float* __restrict__ up, long long n,
                               int act) {
    pdl_entry();
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    gate[i] = glu_act(gate[i], act) * up[i];
}

// glu, and the result's copy for the next matmul: 8-bit (quantize_q8_1's) when xq is not null,
// f16 (half_mma_input's) when xm is not. n a multiple of 32 and blocks of whole warps, so a
// warp holds one block of 32.
extern "C" __global__ void glu_q8(float* __restrict__ gate, const float* __restrict__ up,
                                  long long n, int act, i8* __restrict__ xq,
                                  float2* __restrict__ xds, u16* __restrict__ xm) {
    pdl_entry();
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = glu_act(gate[i], act) * up[i];
    gate[i] = v;
    if (xq != nullptr) q8_warp(v, xq + (i & ~31LL), xds + (i >> 5));
    if (xm != nullptr) put_half(xm, i, v);
}

// x += y.
extern "C" __global__ void add(float* __restrict__ x, const float* __restrict__ y, long long n) {
    pdl_entry();
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}

// x[t][c] += b[c].
extern "C" __global__ void add_bias(float* __restrict__ x, const float* __restrict__ b,
                                    long long n, int cols) {
    pdl_entry();
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += b[i % cols];
}

// x = cap * tanh(x / cap).
extern "C" __global__ void softcap(float* __restrict__ x, long long n, float cap) {
    pdl_entry();
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = cap * tanhf(x[i] / cap);
}

// out[i] = x[rows[i]]: grid (n_out_rows), threads over columns.
extern "C" __global__ void gather_rows(const float* __restrict__ x, const u32* __restrict__ rows,
                                       int cols, float* __restrict__ out) {
    pdl_entry();
    const float* src = x + (size_t)rows[blockIdx.x] * cols;
    float* dst = out + (size_t)blockIdx.x * cols;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) dst[i] = src[i];
}
