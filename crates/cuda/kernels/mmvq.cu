// Fast quantized matrix-vector products: weights in their GGML blocks, activations quantized
// once per matmul to 8 bits in blocks of 32 ("q8_1": int8 values, a scale d and d * sum(q)),
// integer dot products with dp4a.
//
// quantize_q8_1: x (ntok x cols f32, cols a multiple of 32) -> xq (ntok x cols int8) and
// xds (ntok x cols/32 float2: d, d * sum(q)). One warp per block of 32; d = amax / 127,
// q = rint(x / d) (round half to even).
//
// mmvq_<type>_<NT>: out[t][r] = sum over the row of w[r][c] * d_x * q_x[t][c]. A block of
// THREADS threads computes ROWS rows (for one token 2 by default, or 1 or 4 with
// REALIZAR_CUDA_MMVQ_ROWS; 2 for more) for NT tokens: the threads take the rows' "pieces"
// round robin (8 or 16 quant bytes of a block: consecutive threads read consecutive bytes, so
// a warp's loads are contiguous), load a piece once (16-byte loads where
// the block layout is 16-byte aligned, 32- or paired 16-bit loads otherwise) and dot it with NT
// tokens' activations; partial sums meet in shared memory. (Measured on an H200, 8B Q4_K
// decode: this layout 203 tok/s; one warp per row with 4 pieces in flight per lane, 174.)
// Grid: (blocks of the group's matrices, ceil(ntok / NT)), THREADS threads; a block takes ROWS
// rows of one matrix of the group (common.cuh, `Group`).

#define THREADS 128

extern "C" __global__ void quantize_q8_1(const float* __restrict__ x, i8* __restrict__ xq,
                                         float2* __restrict__ xds, int nblocks) {
    pdl_entry();
    int lane = threadIdx.x & 31;
    int blk = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (blk >= nblocks) return;
    q8_warp(x[(size_t)blk * 32 + lane], xq + (size_t)blk * 32, xds + blk);
}

template <class T, int NT, int ROWS>
__device__ __forceinline__ void mmvq(const u8* __restrict__ w, const int* __restrict__ xq,
                                     const float2* __restrict__ xds, float* __restrict__ out,
                                     int rows, int cols, int ntok, int bx) {
    static_assert(!XSwz<T>::on, "XSWZ types read a swizzled shared-memory input: mmvq_bulk only");
    __shared__ float part[THREADS / 32][ROWS * NT];
    int tid = threadIdx.x;
    int row0 = bx * ROWS;
    int t0 = blockIdx.y * NT;
    int nblk = cols / T::QK;
    int nsub = nblk * T::SUBS;
    size_t row_bytes = (size_t)nblk * T::BYTES;
    float acc[ROWS][NT];
#pragma unroll
    for (int r = 0; r < ROWS; r++)
#pragma unroll
        for (int t = 0; t < NT; t++) acc[r][t] = 0.0f;
    for (int i = tid; i < nsub; i += THREADS) {
        int blk = i / T::SUBS, s = i % T::SUBS;
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
            if (row0 + r < rows) {
                T wv;
                wv.load(w + (size_t)(row0 + r) * row_bytes + (size_t)blk * T::BYTES, s);
#pragma unroll
                for (int t = 0; t < NT; t++) {
                    if (t0 + t < ntok) {
                        size_t tok = (size_t)(t0 + t);
                        acc[r][t] += wv.dot(s, xq + tok * (cols / 4) + blk * (T::QK / 4),
                                            xds + tok * (cols / 32) + blk * (T::QK / 32));
                    }
                }
            }
        }
    }
    int lane = tid & 31, warp = tid >> 5;
#pragma unroll
    for (int r = 0; r < ROWS; r++)
#pragma unroll
        for (int t = 0; t < NT; t++) {
            float v = warp_sum(acc[r][t]);
            if (lane == 0) part[warp][r * NT + t] = v;
        }
    __syncthreads();
    if (tid < ROWS * NT) {
        int r = tid / NT, t = tid % NT;
        float v = 0.0f;
#pragma unroll
        for (int k = 0; k < THREADS / 32; k++) v += part[k][tid];
        if (row0 + r < rows && t0 + t < ntok) out[(size_t)(t0 + t) * rows + row0 + r] = v;
    }
}

#define MMVQ(NAME, T, NT, ROWS)                                                                 \
    extern "C" __global__ void mmvq_##NAME##_##NT(Group g, const int* xq, const float2* xds,     \
                                                  int cols, int ntok) {                         \
        pdl_entry();                                                                            \
        const u8* w;                                                                            \
        float* out;                                                                             \
        int rows, b = group_pick(g, w, out, rows);                                              \
        mmvq<T, NT, ROWS>(w, xq, xds, out, rows, cols, ntok, b);                                \
    }

// One token, ROWS rows per block (REALIZAR_CUDA_MMVQ_ROWS; the default is two rows), with
// launch bounds LB for two rows: more blocks an SM keep more loads in flight. q4_0 and q4_1 fit
// 32 registers without spilling and ask for 16 blocks an SM (H200, tg128: 8B Q4_0 +7%, SmolLM2
// Q4_1 +1-2%); the K-quants fit 40 (from 40-48) and ask for 12 (8B Q4_K_M +3-7%, 1B within its
// noise), and would spill at 32 (8B Q4_K_M -6.5%). q8_0 measured no gain at 32 (-1%), q5_0 and
// q5_1 were not measured, and four rows would spill: they have none.
#define MMVQ_FULL __launch_bounds__(THREADS, 16)
#define MMVQ_K __launch_bounds__(THREADS, 12)
#define MMVQ_R(NAME, T, ROWS, LB)                                                               \
    extern "C" __global__ void LB mmvq_##NAME##_1r##ROWS(Group g, const int* xq,                \
                                                         const float2* xds, int cols, int ntok) { \
        pdl_entry();                                                                            \
        const u8* w;                                                                            \
        float* out;                                                                             \
        int rows, b = group_pick(g, w, out, rows);                                              \
        mmvq<T, 1, ROWS>(w, xq, xds, out, rows, cols, ntok, b);                                 \
    }

// One token, two rows a block, over a group of two weight types: matrices from `split` on of
// type T2, the others of T (an 8B Q4_K_M's q and k in Q4_K, its v in Q6_K in some layers): one
// launch where there would be one a type. Each block's arithmetic is its type's 2-row kernel's.
#define MMVQ_MIX(NAME, T, T2)                                                                   \
    extern "C" __global__ void MMVQ_K mmvq_mix_##NAME##_1r2(Group g, const int* xq,             \
                                                            const float2* xds, int cols,         \
                                                            int ntok, int split) {               \
        pdl_entry();                                                                            \
        const u8* w;                                                                            \
        float* out;                                                                             \
        int rows, b = group_pick(g, w, out, rows);                                              \
        if (group_matrix(g) >= split)                                                           \
            mmvq<T2, 1, 2>(w, xq, xds, out, rows, cols, ntok, b);                               \
        else                                                                                    \
            mmvq<T, 1, 2>(w, xq, xds, out, rows, cols, ntok, b);                                \
    }

#define MMVQ_ALL(NAME, T, LB)                                                                   \
    MMVQ(NAME, T, 1, 1) MMVQ(NAME, T, 2, 2) MMVQ(NAME, T, 4, 2) MMVQ(NAME, T, 8, 2)             \
    MMVQ_R(NAME, T, 2, LB) MMVQ_R(NAME, T, 4, )

MMVQ_ALL(q4_0, MQ4_0, MMVQ_FULL)
MMVQ_ALL(q4_1, MQ4_1, MMVQ_FULL)
MMVQ_ALL(q5_0, MQ5_0, )
MMVQ_ALL(q5_1, MQ5_1, )
MMVQ_ALL(q8_0, MQ8_0, )
MMVQ_ALL(q4_k, MQ4K, MMVQ_K)
MMVQ_ALL(q5_k, MQ5K, MMVQ_K)
MMVQ_ALL(q6_k, MQ6K, MMVQ_K)
MMVQ_MIX(q4_k_q6_k, MQ4K, MQ6K)
MMVQ_MIX(q5_k_q6_k, MQ5K, MQ6K)
MMVQ_MIX(q4_k_q5_k, MQ4K, MQ5K)
