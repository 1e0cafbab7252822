// Quantized matrix products for batches of tokens on int8 tensor cores ("mmq"): weights in their
// GGML blocks, activations quantized once per matmul to 8 bits in blocks of 32 (quantize_q8_1 in
// mmvq.cu: int8 values, and per block d and d * sum(q)). Each weight row's 32-element group is
// turned into int8 in registers and multiplied with 8 tokens' groups by one
// mma.sync.m16n8k32 (16 rows x 8 tokens x 32), then scaled in f32:
//
//   out[t][r] += s_w(r, g) * d_x(t, g) * dot_int(r, t, g) + m_w(r, g) * d_x(t, g) * sum_q(t, g)
//
// s_w is the group's weight scale, m_w its offset term (Q4_1, Q5_1, Q4_K, Q5_K; zero for the
// types whose quants are signed). Q6_K has a scale per 16 elements, so its group takes two
// m16n8k16 products. The int8 dot of a group is exact; the result differs from mmvq's in where
// the f32 scaling happens (mmvq scales each 8- or 16-byte piece, mmq each 32-element group) and
// in the summation order.
//
// mmq_<type>_<TT>: a block of 4 warps takes 64 rows (16 per warp) and TT tokens (TT = 8, 16,
// 32, 64); a K chunk of activations (CH elements of every token) is staged in shared memory and
// read by all 4 warps, while each warp loads its rows' weight bytes straight from global memory
// into the mma's register layout (lane = 4 * g + q holds elements 4q..4q+3 and 16+4q..16+4q+3 of
// rows g and g + 8). The next chunk's weights are loaded before the current chunk is computed.
// Grid: (ceil(rows / 64), ceil(ntok / TT), splits); split z takes blocks [z * kps, (z+1) * kps)
// of the row and, when there are several splits, writes its partial sums to
// out + z * ntok * rows, which mmq_reduce adds up in split order.
//
// Needs sm_80 (mma.sync with s8 operands); the host uses these kernels only there.

#define MMQ_WARPS 4
#define MMQ_ROWS (16 * MMQ_WARPS)

__device__ __forceinline__ void mma_k32(int (&c)[4], int a0, int a1, int a2, int a3, int b0, int b1) {
#if __CUDA_ARCH__ >= 800
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%10,%10,%10};"
        : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "r"(0));
#else
    __trap();
#endif
}

__device__ __forceinline__ void mma_k16(int (&c)[4], int a0, int a1, int b0) {
#if __CUDA_ARCH__ >= 800
    asm("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5}, {%6}, "
        "{%7,%7,%7,%7};"
        : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
        : "r"(a0), "r"(a1), "r"(b0), "r"(0));
#else
    __trap();
#endif
}

// A 32-bit little-endian int at a 2-byte-aligned address, and at a 4-byte-aligned one.
__device__ __forceinline__ int mq_ld2(const u8* p) {
    return (int)((u32)ld16(p) | ((u32)ld16(p + 2) << 16));
}
__device__ __forceinline__ int mq_ld4(const u8* p) { return *(const int*)p; }

// Four bytes each minus k (values stay in -128..127; no borrow crosses a byte).
__device__ __forceinline__ int sub_bytes(int v, u32 k) {
    return (int)((((u32)v | 0x80808080u) - k * 0x01010101u) ^ 0x80808080u);
}

// Bits b, b+1, b+2, b+3 of h moved to bit 4 of bytes 0..3.
__device__ __forceinline__ int bit4_of(u32 h, int b) {
    h >>= b;
    return (int)(((h & 1u) << 4) | ((h & 2u) << 11) | ((h & 4u) << 18) | ((h & 8u) << 25));
}

// Byte i of the little-endian 16 bytes in v (i known at compile time after unrolling).
__device__ __forceinline__ u32 byte16(const int (&v)[4], int i) {
    return ((u32)v[i >> 2] >> (8 * (i & 3))) & 0xFFu;
}

// A K-quant header's 6-bit scale and minimum of group j (bytes 4..15 of the block in s[1..3]).
__device__ __forceinline__ void k4_scale_min(const int (&s)[4], int j, float* sc, float* mn) {
    if (j < 4) {
        *sc = (float)(byte16(s, 4 + j) & 63u);
        *mn = (float)(byte16(s, 8 + j) & 63u);
    } else {
        *sc = (float)((byte16(s, 8 + j) & 15u) | ((byte16(s, j) >> 6) << 4));
        *mn = (float)((byte16(s, 8 + j) >> 4) | ((byte16(s, 4 + j) >> 6) << 4));
    }
}

// A K-quant block's 16-byte header (d, dmin, 12 bytes of scales) into four ints.
__device__ __forceinline__ void k4_header(const u8* b, int (&hdr)[4]) {
    int4 h = *(const int4*)b;
    hdr[0] = h.x;
    hdr[1] = h.y;
    hdr[2] = h.z;
    hdr[3] = h.w;
}

// Group j's weight scale d * sc and offset term -dmin * m from a K-quant header.
__device__ __forceinline__ void k4_group_scale(const int (&hdr)[4], int j, float& s0, float& mn) {
    float sc, m;
    k4_scale_min(hdr, j, &sc, &m);
    s0 = h2f((u16)(hdr[0] & 0xFFFF)) * sc;
    mn = -h2f((u16)((u32)hdr[0] >> 16)) * m;
}

// Each type: QK elements per block of BYTES bytes; BPC blocks per K chunk; load() reads the
// bytes lane q needs of one row's block into registers; group(j, ...) gives group j's (0 ..
// QK/32 - 1) two A registers (elements 4q.. and 16+4q..), its scale(s) and its offset term.
// HALVES: the two registers have separate scales s0, s1 (Q6_K); else s0 is the group's scale.
// MIN: the type has an offset term m.

struct FQ4_0 {
    static constexpr int QK = 32, BYTES = 18, BPC = 4;
    static constexpr bool HALVES = false, MIN = false;
    int q;
    float d;
    __device__ __forceinline__ void load(const u8* b, int l) {
        d = h2f(ld16(b));
        q = mq_ld2(b + 2 + 4 * l);
    }
    __device__ __forceinline__ void group(int, int& lo, int& hi, float& s0, float&, float&) const {
        lo = sub_bytes(q & 0x0F0F0F0F, 8);
        hi = sub_bytes((q >> 4) & 0x0F0F0F0F, 8);
        s0 = d;
    }
};

struct FQ4_1 {
    static constexpr int QK = 32, BYTES = 20, BPC = 4;
    static constexpr bool HALVES = false, MIN = true;
    int q;
    float d, m;
    __device__ __forceinline__ void load(const u8* b, int l) {
        d = h2f(ld16(b));
        m = h2f(ld16(b + 2));
        q = mq_ld4(b + 4 + 4 * l);
    }
    __device__ __forceinline__ void group(int, int& lo, int& hi, float& s0, float&, float& mn) const {
        lo = q & 0x0F0F0F0F;
        hi = (q >> 4) & 0x0F0F0F0F;
        s0 = d;
        mn = m;
    }
};

struct FQ5_0 {
    static constexpr int QK = 32, BYTES = 22, BPC = 4;
    static constexpr bool HALVES = false, MIN = false;
    int q;
    u32 qh;
    float d;
    int lane4;
    __device__ __forceinline__ void load(const u8* b, int l) {
        d = h2f(ld16(b));
        qh = (u32)mq_ld2(b + 2);
        q = mq_ld2(b + 6 + 4 * l);
        lane4 = 4 * l;
    }
    __device__ __forceinline__ void group(int, int& lo, int& hi, float& s0, float&, float&) const {
        lo = sub_bytes((q & 0x0F0F0F0F) | bit4_of(qh, lane4), 16);
        hi = sub_bytes(((q >> 4) & 0x0F0F0F0F) | bit4_of(qh, 16 + lane4), 16);
        s0 = d;
    }
};

struct FQ5_1 {
    static constexpr int QK = 32, BYTES = 24, BPC = 4;
    static constexpr bool HALVES = false, MIN = true;
    int q;
    u32 qh;
    float d, m;
    int lane4;
    __device__ __forceinline__ void load(const u8* b, int l) {
        d = h2f(ld16(b));
        m = h2f(ld16(b + 2));
        qh = (u32)mq_ld4(b + 4);
        q = mq_ld4(b + 8 + 4 * l);
        lane4 = 4 * l;
    }
    __device__ __forceinline__ void group(int, int& lo, int& hi, float& s0, float&, float& mn) const {
        lo = (q & 0x0F0F0F0F) | bit4_of(qh, lane4);
        hi = ((q >> 4) & 0x0F0F0F0F) | bit4_of(qh, 16 + lane4);
        s0 = d;
        mn = m;
    }
};

struct FQ8_0 {
    static constexpr int QK = 32, BYTES = 34, BPC = 4;
    static constexpr bool HALVES = false, MIN = false;
    int q0, q1;
    float d;
    __device__ __forceinline__ void load(const u8* b, int l) {
        d = h2f(ld16(b));
        q0 = mq_ld2(b + 2 + 4 * l);
        q1 = mq_ld2(b + 18 + 4 * l);
    }
    __device__ __forceinline__ void group(int, int& lo, int& hi, float& s0, float&, float&) const {
        lo = q0;
        hi = q1;
        s0 = d;
    }
};

// Q4_K: group j = 2c + h is the low (h = 0) or high nibbles of quant bytes 32c..32c+31.
struct FQ4K {
    static constexpr int QK = 256, BYTES = 144, BPC = 1;
    static constexpr bool HALVES = false, MIN = true;
    int hdr[4];
    int q[8];
    __device__ __forceinline__ void load(const u8* b, int l) {
        k4_header(b, hdr);
#pragma unroll
        for (int c = 0; c < 4; c++) {
            q[2 * c] = mq_ld4(b + 16 + 32 * c + 4 * l);
            q[2 * c + 1] = mq_ld4(b + 32 + 32 * c + 4 * l);
        }
    }
    __device__ __forceinline__ void group(int j, int& lo, int& hi, float& s0, float&, float& mn) const {
        int c = j >> 1, sh = 4 * (j & 1);
        lo = (q[2 * c] >> sh) & 0x0F0F0F0F;
        hi = (q[2 * c + 1] >> sh) & 0x0F0F0F0F;
        k4_group_scale(hdr, j, s0, mn);
    }
};

// Q5_K: as Q4_K, with the fifth bit of element e of group j at bit j of high-bit byte e.
struct FQ5K {
    static constexpr int QK = 256, BYTES = 176, BPC = 1;
    static constexpr bool HALVES = false, MIN = true;
    int hdr[4];
    int q[8];
    int h0, h1;
    __device__ __forceinline__ void load(const u8* b, int l) {
        k4_header(b, hdr);
        h0 = mq_ld4(b + 16 + 4 * l);
        h1 = mq_ld4(b + 32 + 4 * l);
#pragma unroll
        for (int c = 0; c < 4; c++) {
            q[2 * c] = mq_ld4(b + 48 + 32 * c + 4 * l);
            q[2 * c + 1] = mq_ld4(b + 64 + 32 * c + 4 * l);
        }
    }
    __device__ __forceinline__ void group(int j, int& lo, int& hi, float& s0, float&, float& mn) const {
        int c = j >> 1, sh = 4 * (j & 1);
        lo = ((q[2 * c] >> sh) & 0x0F0F0F0F) | (((h0 >> j) & 0x01010101) << 4);
        hi = ((q[2 * c + 1] >> sh) & 0x0F0F0F0F) | (((h1 >> j) & 0x01010101) << 4);
        k4_group_scale(hdr, j, s0, mn);
    }
};

// Q6_K: group j = 4n + k (n = 128-element half, k = 0..3) takes low-quant bytes 64n + 32(k & 1)
// .. (nibble k >> 1) and high bits 2k of bytes 32n..; scale 2j for its first 16 elements and
// 2j + 1 for the second. Only 2-byte aligned.
struct FQ6K {
    static constexpr int QK = 256, BYTES = 210, BPC = 1;
    static constexpr bool HALVES = true, MIN = false;
    int ql[8];
    int qh[4];
    int sc[4];
    float d;
    __device__ __forceinline__ void load(const u8* b, int l) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            ql[2 * i] = mq_ld2(b + 32 * i + 4 * l);
            ql[2 * i + 1] = mq_ld2(b + 32 * i + 16 + 4 * l);
        }
#pragma unroll
        for (int n = 0; n < 2; n++) {
            qh[2 * n] = mq_ld2(b + 128 + 32 * n + 4 * l);
            qh[2 * n + 1] = mq_ld2(b + 128 + 32 * n + 16 + 4 * l);
        }
#pragma unroll
        for (int i = 0; i < 4; i++) sc[i] = mq_ld2(b + 192 + 4 * i);
        d = h2f(ld16(b + 208));
    }
    __device__ __forceinline__ void group(int j, int& lo, int& hi, float& s0, float& s1, float&) const {
        int n = j >> 2, k = j & 3;
        int i = 2 * n + (k & 1), sh = 4 * (k >> 1);
        lo = sub_bytes(((ql[2 * i] >> sh) & 0x0F0F0F0F) | (((qh[2 * n] >> (2 * k)) & 0x03030303) << 4), 32);
        hi = sub_bytes(((ql[2 * i + 1] >> sh) & 0x0F0F0F0F) | (((qh[2 * n + 1] >> (2 * k)) & 0x03030303) << 4), 32);
        s0 = d * (float)(signed char)byte16(sc, 2 * j);
        s1 = d * (float)(signed char)byte16(sc, 2 * j + 1);
    }
};

template <class T, int TT>
__device__ __forceinline__ void mmq(const u8* __restrict__ w, const i8* __restrict__ xq,
                                    const float2* __restrict__ xds, float* __restrict__ out,
                                    int rows, int cols, int ntok, int kps) {
    constexpr int CH = T::QK * T::BPC;      // elements per K chunk
    constexpr int STRIDE = CH + 16;         // bytes per token row in shared memory (bank spread)
    constexpr int G = T::QK / 32;           // groups per block
    constexpr int NT = TT / 8;              // mma tiles of 8 tokens
    __shared__ __align__(16) i8 sx[TT * STRIDE];
    __shared__ __align__(16) float2 sd[(CH / 32) * TT];  // [group][token]

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, l = lane & 3;
    const int t0 = blockIdx.y * TT;
    const int nblk = cols / T::QK;
    const int b_begin = blockIdx.z * kps;
    const int b_end = min(nblk, b_begin + kps);
    const size_t row_bytes = (size_t)nblk * T::BYTES;
    const int r0 = min(blockIdx.x * MMQ_ROWS + warp * 16 + g, rows - 1);
    const int r1 = min(blockIdx.x * MMQ_ROWS + warp * 16 + g + 8, rows - 1);
    const u8* w0 = w + (size_t)r0 * row_bytes;
    const u8* w1 = w + (size_t)r1 * row_bytes;

    float acc[NT][4];
#pragma unroll
    for (int t = 0; t < NT; t++)
#pragma unroll
        for (int i = 0; i < 4; i++) acc[t][i] = 0.0f;

    T cur0[T::BPC], cur1[T::BPC];
#pragma unroll
    for (int k = 0; k < T::BPC; k++) {
        int b = min(b_begin + k, b_end - 1);
        cur0[k].load(w0 + (size_t)b * T::BYTES, l);
        cur1[k].load(w1 + (size_t)b * T::BYTES, l);
    }
    for (int b0 = b_begin; b0 < b_end; b0 += T::BPC) {
        // The next chunk's weights, in flight while this one is computed.
        T nxt0[T::BPC], nxt1[T::BPC];
        const bool more = b0 + T::BPC < b_end;
#pragma unroll
        for (int k = 0; k < T::BPC; k++) {
            int b = min(b0 + T::BPC + k, b_end - 1);
            if (more) {
                nxt0[k].load(w0 + (size_t)b * T::BYTES, l);
                nxt1[k].load(w1 + (size_t)b * T::BYTES, l);
            }
        }
        // This chunk's activations (zeros past the last token and past the row's end).
        const int e0 = b0 * T::QK;
        const int ne = min(CH, (b_end - b0) * T::QK);
        __syncthreads();
        for (int i = tid; i < TT * (CH / 16); i += blockDim.x) {
            int t = i / (CH / 16), c = i % (CH / 16);
            int4 v = make_int4(0, 0, 0, 0);
            if (t0 + t < ntok && 16 * c < ne)
                v = *(const int4*)(xq + (size_t)(t0 + t) * cols + e0 + 16 * c);
            *(int4*)(sx + t * STRIDE + 16 * c) = v;
        }
        for (int i = tid; i < TT * (CH / 32); i += blockDim.x) {
            int t = i / (CH / 32), c = i % (CH / 32);
            float2 v = make_float2(0.0f, 0.0f);
            if (t0 + t < ntok && 32 * c < ne) v = xds[(size_t)(t0 + t) * (cols / 32) + e0 / 32 + c];
            sd[c * TT + t] = v;
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < T::BPC; k++) {
            if (b0 + k >= b_end) break;
#pragma unroll
            for (int j = 0; j < G; j++) {
                const int grp = k * G + j;  // group within the chunk
                int a0, a2, a1, a3;
                float s0 = 0.0f, s1 = 0.0f, m0 = 0.0f, s0b = 0.0f, s1b = 0.0f, m1 = 0.0f;
                cur0[k].group(j, a0, a2, s0, s0b, m0);
                cur1[k].group(j, a1, a3, s1, s1b, m1);
                // All tiles' products first (independent tensor-core ops in flight), then
                // their scaling.
                int c[NT][4], e[NT][4];
#pragma unroll
                for (int t = 0; t < NT; t++) {
                    const i8* xb = sx + (8 * t + g) * STRIDE + 32 * grp + 4 * l;
                    int b_lo = *(const int*)xb, b_hi = *(const int*)(xb + 16);
                    if (T::HALVES) {
                        mma_k16(c[t], a0, a1, b_lo);
                        mma_k16(e[t], a2, a3, b_hi);
                    } else {
                        mma_k32(c[t], a0, a1, a2, a3, b_lo, b_hi);
                    }
                }
#pragma unroll
                for (int t = 0; t < NT; t++) {
                    // (d, d * sum q) of tokens 8t + 2l and 8t + 2l + 1.
                    float4 dx = *(const float4*)&sd[grp * TT + 8 * t + 2 * l];
                    if (T::HALVES) {
                        acc[t][0] += dx.x * ((float)c[t][0] * s0 + (float)e[t][0] * s0b);
                        acc[t][1] += dx.z * ((float)c[t][1] * s0 + (float)e[t][1] * s0b);
                        acc[t][2] += dx.x * ((float)c[t][2] * s1 + (float)e[t][2] * s1b);
                        acc[t][3] += dx.z * ((float)c[t][3] * s1 + (float)e[t][3] * s1b);
                    } else {
                        acc[t][0] += (float)c[t][0] * (s0 * dx.x);
                        acc[t][1] += (float)c[t][1] * (s0 * dx.z);
                        acc[t][2] += (float)c[t][2] * (s1 * dx.x);
                        acc[t][3] += (float)c[t][3] * (s1 * dx.z);
                        if (T::MIN) {
                            acc[t][0] += m0 * dx.y;
                            acc[t][1] += m0 * dx.w;
                            acc[t][2] += m1 * dx.y;
                            acc[t][3] += m1 * dx.w;
                        }
                    }
                }
            }
        }
        if (more) {
#pragma unroll
            for (int k = 0; k < T::BPC; k++) {
                cur0[k] = nxt0[k];
                cur1[k] = nxt1[k];
            }
        }
    }
    float* o = out + (gridDim.z > 1 ? (size_t)blockIdx.z * ntok * rows : 0);
    const int row = blockIdx.x * MMQ_ROWS + warp * 16 + g;
#pragma unroll
    for (int t = 0; t < NT; t++) {
        int tok = t0 + 8 * t + 2 * l;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int r = row + (i >> 1) * 8, tk = tok + (i & 1);
            if (r < rows && tk < ntok) o[(size_t)tk * rows + r] = acc[t][i];
        }
    }
}

#define MMQ(NAME, T, TT)                                                                        \
    extern "C" __global__ void __launch_bounds__(32 * MMQ_WARPS)                                \
        mmq_##NAME##_##TT(const u8* w, const i8* xq, const float2* xds, float* out, int rows,    \
                          int cols, int ntok, int kps) {                                        \
        mmq<T, TT>(w, xq, xds, out, rows, cols, ntok, kps);                                     \
    }

#define MMQ_ALL(NAME, T) MMQ(NAME, T, 8) MMQ(NAME, T, 16) MMQ(NAME, T, 32) MMQ(NAME, T, 64)

MMQ_ALL(q4_0, FQ4_0)
MMQ_ALL(q4_1, FQ4_1)
MMQ_ALL(q5_0, FQ5_0)
MMQ_ALL(q5_1, FQ5_1)
MMQ_ALL(q8_0, FQ8_0)
MMQ_ALL(q4_k, FQ4K)
MMQ_ALL(q5_k, FQ5K)
MMQ_ALL(q6_k, FQ6K)

// out[i] = sum over z of part[z * n + i], in split order.
extern "C" __global__ void mmq_reduce(const float* __restrict__ part, float* __restrict__ out,
                                      int n, int splits) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = 0.0f;
    for (int z = 0; z < splits; z++) v += part[(size_t)z * n + i];
    out[i] = v;
}
