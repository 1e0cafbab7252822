// out[t][r] = sum_c W[r][c] * x[t][c]: weights in their GGML block format, f32 activations.
//
// One warp per output row; the lanes stride over the row's 32-element chunks, dequantize a chunk
// into registers and dot it with NT tokens' activations (NT = 1 for decode, 8 for prefill, so a
// weight row is read once per 8 tokens). Grid: (blocks of the group's matrices, ceil(ntok / NT));
// a block takes WARPS rows of one matrix of the group (common.cuh, `Group`).
// Launch with WARPS * 32 threads.

#define WARPS 4

// A dequantized 32-element chunk dotted with 32 activations (16-byte aligned).
__device__ __forceinline__ float chunk_dot(const float (&v)[32], const float* x) {
    const float4* xp = (const float4*)x;
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < 8; k++) {
        float4 a = xp[k];
        s += v[4 * k] * a.x + v[4 * k + 1] * a.y + v[4 * k + 2] * a.z + v[4 * k + 3] * a.w;
    }
    return s;
}

template <class T, int NT>
__device__ __forceinline__ void matvec_q(const u8* __restrict__ w, const float* __restrict__ x,
                                         float* __restrict__ out, int rows, int cols, int ntok,
                                         int bx) {
    int lane = threadIdx.x & 31;
    int row = bx * WARPS + (threadIdx.x >> 5);
    int t0 = blockIdx.y * NT;
    if (row >= rows) return;
    int nchunks = cols / 32;
    const u8* wr = w + (size_t)row * (size_t)(cols / T::QK) * T::BYTES;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;
    for (int c = lane; c < nchunks; c += 32) {
        float v[32];
        T::chunk(wr + (c / T::CHUNKS) * T::BYTES, c % T::CHUNKS, v);
#pragma unroll
        for (int t = 0; t < NT; t++)
            if (t0 + t < ntok) acc[t] += chunk_dot(v, x + (size_t)(t0 + t) * cols + c * 32);
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float s = warp_sum(acc[t]);
        if (lane == 0 && t0 + t < ntok) out[(size_t)(t0 + t) * rows + row] = s;
    }
}

// Eight float weights from 16 (f16/bf16) or 32 (f32) bytes at a 16-byte-aligned address.
template <int KIND>
__device__ __forceinline__ void load8(const u8* p, float* v) {
    if (KIND == 0) {
        float4 a = ((const float4*)p)[0], b = ((const float4*)p)[1];
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
        v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    } else {
        uint4 q = *(const uint4*)p;
        u32 w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            u16 lo = (u16)(w[i] & 0xffffu), hi = (u16)(w[i] >> 16);
            v[2 * i] = KIND == 1 ? h2f(lo) : bf2f(lo);
            v[2 * i + 1] = KIND == 1 ? h2f(hi) : bf2f(hi);
        }
    }
}

// Float weights. Rows a multiple of 8 elements (every real model): each lane reads 8 consecutive
// weights (16 or 32 bytes) per step, so a warp reads 512 or 1024 contiguous bytes, with 4 steps
// unrolled to keep loads in flight (decode of F16 models is bandwidth-bound). Other widths:
// lanes stride over single elements. Both NT variants sum each token in the same order.
template <int KIND, int NT>
__device__ __forceinline__ void matvec_f(const u8* __restrict__ w, const float* __restrict__ x,
                                         float* __restrict__ out, int rows, int cols, int ntok,
                                         int bx) {
    int lane = threadIdx.x & 31;
    int row = bx * WARPS + (threadIdx.x >> 5);
    int t0 = blockIdx.y * NT;
    if (row >= rows) return;
    const int esize = KIND == 0 ? 4 : 2;
    const u8* wr = w + (size_t)row * cols * esize;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;
    if ((cols & 7) == 0) {
        int groups = cols / 8;
#pragma unroll 4
        for (int g = lane; g < groups; g += 32) {
            float v[8];
            load8<KIND>(wr + (size_t)g * 8 * esize, v);
#pragma unroll
            for (int t = 0; t < NT; t++) {
                if (t0 + t < ntok) {
                    const float4* xp = (const float4*)(x + (size_t)(t0 + t) * cols + g * 8);
                    float4 a = xp[0], b = xp[1];
                    acc[t] += v[0] * a.x + v[1] * a.y + v[2] * a.z + v[3] * a.w +
                              (v[4] * b.x + v[5] * b.y + v[6] * b.z + v[7] * b.w);
                }
            }
        }
    } else {
        for (int i = lane; i < cols; i += 32) {
            float a = KIND == 0 ? ld_f32(wr, i) : (KIND == 1 ? ld_f16(wr, i) : ld_bf16(wr, i));
#pragma unroll
            for (int t = 0; t < NT; t++)
                if (t0 + t < ntok) acc[t] += a * x[(size_t)(t0 + t) * cols + i];
        }
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float s = warp_sum(acc[t]);
        if (lane == 0 && t0 + t < ntok) out[(size_t)(t0 + t) * rows + row] = s;
    }
}

// One token's gated MLP input: out[r] = act(gate[r] . x) * (up[r] . x), a warp a row of both
// matrices, each row's sum the bits matvec_<type>_1 gives it and the product glu's. Grid
// (rows / WARPS). Saves glu's launch where the next matmul reads f32 activations (an 8-bit copy
// for it would need the 32 rows of a group, from 8 blocks: a fused form that counted finished
// groups with atomics lost 4-8% on the H200).
template <class T>
__device__ __forceinline__ void matvec_glu(const u8* __restrict__ gate, const u8* __restrict__ up,
                                           const float* __restrict__ x, float* __restrict__ out,
                                           int rows, int cols, int act) {
    int lane = threadIdx.x & 31;
    int row = blockIdx.x * WARPS + (threadIdx.x >> 5);
    if (row >= rows) return;
    size_t row_bytes = (size_t)(cols / T::QK) * T::BYTES;
    const u8* g = gate + (size_t)row * row_bytes;
    const u8* u = up + (size_t)row * row_bytes;
    float ag = 0.0f, au = 0.0f;
    for (int c = lane; c < cols / 32; c += 32) {
        float vg[32], vu[32];
        size_t at = (size_t)(c / T::CHUNKS) * T::BYTES;
        T::chunk(g + at, c % T::CHUNKS, vg);
        T::chunk(u + at, c % T::CHUNKS, vu);
        ag += chunk_dot(vg, x + c * 32);
        au += chunk_dot(vu, x + c * 32);
    }
    float sg = warp_sum(ag), su = warp_sum(au);
    if (lane == 0) out[row] = glu_act(sg, act) * su;
}

#define MATVEC_ONE(NAME, CALL)                                                                  \
    extern "C" __global__ void NAME(Group g, const float* x, int cols, int ntok) {              \
        pdl_entry();                                                                            \
        const u8* w;                                                                            \
        float* out;                                                                             \
        int rows, b = group_pick(g, w, out, rows);                                              \
        CALL(w, x, out, rows, cols, ntok, b);                                                   \
    }

#define MATVEC_Q(NAME, T)                                                                       \
    MATVEC_ONE(matvec_##NAME##_1, (matvec_q<T, 1>))                                             \
    MATVEC_ONE(matvec_##NAME##_8, (matvec_q<T, 8>))                                             \
    extern "C" __global__ void matvec_glu_##NAME(const u8* gate, const u8* up, const float* x,  \
                                                 float* out, int rows, int cols, int act) {      \
        pdl_entry();                                                                            \
        matvec_glu<T>(gate, up, x, out, rows, cols, act);                                       \
    }

#define MATVEC_F(NAME, KIND)                                                                    \
    MATVEC_ONE(matvec_##NAME##_1, (matvec_f<KIND, 1>))                                          \
    MATVEC_ONE(matvec_##NAME##_8, (matvec_f<KIND, 8>))

MATVEC_Q(q4_0, Q4_0)
MATVEC_Q(q4_1, Q4_1)
MATVEC_Q(q5_0, Q5_0)
MATVEC_Q(q5_1, Q5_1)
MATVEC_Q(q8_0, Q8_0)
MATVEC_Q(q4_k, Q4K)
MATVEC_Q(q5_k, Q5K)
MATVEC_Q(q6_k, Q6K)
MATVEC_F(f32, 0)
MATVEC_F(f16, 1)
MATVEC_F(bf16, 2)
