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
// rows g and g + 8). The next chunk's weights (into registers) and activations (cp.async into
// the second of two shared buffers) are in flight while the current chunk is computed.
// A launch takes the up to three matrices of a `Group` that multiply the same input (q, k and v;
// gate and up), each with its own K split (kps_i type blocks a split, s_i splits, as when it is
// launched alone, so the results are the same bits). Grid: (the matrices' 64-row tiles,
// ceil(ntok / TT), the most splits of any); split z of a matrix takes blocks
// [z * kps_i, (z+1) * kps_i) of the row and, when the matrix has several splits, writes its
// partial sums to part_i + z * ntok * rows_i, which mmq_reduce adds up in split order. Blocks
// with z past their matrix's splits have nothing to do.
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
    u32 sh[4], mh[4];  // prep_h (f16 kernels)
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
    u32 sh[4], mh[4];  // prep_h (f16 kernels)
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
    u32 sp[8];  // prep_h (f16 kernels)
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

// The weights an mmq lane reads, for both kernels: split z's K range [b_begin, b_end) of type
// blocks, and rows g and g + 8 of the warp's 16 (clamped to the last row); cur0/cur1 hold the
// chunk (BPC blocks) being computed.
template <class T>
struct MmqWeights {
    const u8* w0;
    const u8* w1;
    int b_begin, b_end, l;
    T cur0[T::BPC], cur1[T::BPC];

    __device__ __forceinline__ MmqWeights(const u8* w, int rows, int cols, int kps, int bx) {
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        l = lane & 3;
        const int nblk = cols / T::QK;
        b_begin = blockIdx.z * kps;
        b_end = min(nblk, b_begin + kps);
        const size_t row_bytes = (size_t)nblk * T::BYTES;
        const int r = bx * MMQ_ROWS + warp * 16 + (lane >> 2);
        w0 = w + (size_t)min(r, rows - 1) * row_bytes;
        w1 = w + (size_t)min(r + 8, rows - 1) * row_bytes;
        load(cur0, cur1, b_begin);
    }

    // The chunk that starts at block b0 (blocks past the split's end repeat its last one).
    __device__ __forceinline__ void load(T (&a)[T::BPC], T (&c)[T::BPC], int b0) const {
#pragma unroll
        for (int k = 0; k < T::BPC; k++) {
            const int b = min(b0 + k, b_end - 1);
            a[k].load(w0 + (size_t)b * T::BYTES, l);
            c[k].load(w1 + (size_t)b * T::BYTES, l);
        }
    }

    __device__ __forceinline__ void next(const T (&a)[T::BPC], const T (&c)[T::BPC]) {
#pragma unroll
        for (int k = 0; k < T::BPC; k++) {
            cur0[k] = a[k];
            cur1[k] = c[k];
        }
    }
};

// The block's tile of results (row tile bx; NT tiles of 8 tokens, 16 rows per warp, in the mma's
// layout: acc[t][i] is row 16 * warp + g + 8 * (i >> 1), token 8t + 2l + (i & 1)) into o: the
// output, or with a split K range the split's partial sums (`mmq_pick`).
// (Adding the splits up in the launch instead, by the block that finishes a tile last, was
// slower on an H200: 8B, 64 sequences, 17,432 against 19,475 tokens/s with mmq_reduce.)
template <int NT>
__device__ __forceinline__ void mmq_store(const float (&acc)[NT][4], float* __restrict__ o,
                                          int rows, int ntok, int bx) {
    constexpr int TT = 8 * NT;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, l = lane & 3;
    const int t0 = blockIdx.y * TT;
    const int row = bx * MMQ_ROWS + warp * 16 + g;
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

template <class T, int TT>
__device__ __forceinline__ void mmq(const u8* __restrict__ w, const i8* __restrict__ xq,
                                    const float2* __restrict__ xds, float* __restrict__ o,
                                    int rows, int cols, int ntok, int kps, int bx) {
    constexpr int CH = T::QK * T::BPC;      // elements per K chunk
    constexpr int STRIDE = CH + 16;         // bytes per token row in shared memory (bank spread)
    constexpr int G = T::QK / 32;           // groups per block
    constexpr int NT = TT / 8;              // mma tiles of 8 tokens
    // Two buffers: the next chunk's activations are copied in (cp.async) while this one is used.
    __shared__ __align__(16) i8 sx[2][TT * STRIDE];
    __shared__ __align__(16) float2 sd[2][(CH / 32) * TT];  // [group][token]

    const int tid = threadIdx.x, lane = tid & 31;
    const int g = lane >> 2, l = lane & 3;
    const int t0 = blockIdx.y * TT;
    MmqWeights<T> wt(w, rows, cols, kps, bx);
    const int b_end = wt.b_end;

    float acc[NT][4] = {};
    // The activations of the chunk that starts at block bs into buffer sb, asynchronously
    // (zeros past the last token and past the row's end).
    auto stage = [&](int sb, int bs) {
        const int e0 = bs * T::QK;
        const int ne = min(CH, (b_end - bs) * T::QK);
        for (int i = tid; i < TT * (CH / 16); i += blockDim.x) {
            int t = i / (CH / 16), c = i % (CH / 16);
            bool ok = t0 + t < ntok && 16 * c < ne;
            const i8* src = ok ? xq + (size_t)(t0 + t) * cols + e0 + 16 * c : xq;
            cp_async(sx[sb] + t * STRIDE + 16 * c, src, ok);
        }
        for (int i = tid; i < TT * (CH / 32); i += blockDim.x) {
            int t = i / (CH / 32), c = i % (CH / 32);
            bool ok = t0 + t < ntok && 32 * c < ne;
            const float2* src = ok ? xds + (size_t)(t0 + t) * (cols / 32) + e0 / 32 + c : xds;
            cp_async8(&sd[sb][c * TT + t], src, ok);
        }
        cp_async_commit();
    };
    stage(0, wt.b_begin);
    int buf = 0;
    for (int b0 = wt.b_begin; b0 < b_end; b0 += T::BPC, buf ^= 1) {
        // The next chunk's weights, in flight while this one is computed.
        T nxt0[T::BPC], nxt1[T::BPC];
        const bool more = b0 + T::BPC < b_end;
        if (more) wt.load(nxt0, nxt1, b0 + T::BPC);
        // This chunk's activations have landed (every thread's copies, after the barrier), and
        // every warp is done with the other buffer: the next chunk's copies go there now.
        cp_async_wait_all();
        __syncthreads();
        if (more) stage(buf ^ 1, b0 + T::BPC);
#pragma unroll
        for (int k = 0; k < T::BPC; k++) {
            if (b0 + k >= b_end) break;
#pragma unroll
            for (int j = 0; j < G; j++) {
                const int grp = k * G + j;  // group within the chunk
                int a0, a2, a1, a3;
                float s0 = 0.0f, s1 = 0.0f, m0 = 0.0f, s0b = 0.0f, s1b = 0.0f, m1 = 0.0f;
                wt.cur0[k].group(j, a0, a2, s0, s0b, m0);
                wt.cur1[k].group(j, a1, a3, s1, s1b, m1);
                // All tiles' products first (independent tensor-core ops in flight), then
                // their scaling.
                int c[NT][4], e[NT][4];
#pragma unroll
                for (int t = 0; t < NT; t++) {
                    const i8* xb = sx[buf] + (8 * t + g) * STRIDE + 32 * grp + 4 * l;
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
                    float4 dx = *(const float4*)&sd[buf][grp * TT + 8 * t + 2 * l];
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
        if (more) wt.next(nxt0, nxt1);
    }
    mmq_store<NT>(acc, o, rows, ntok, bx);
}

// The K splits of a launch's matrices: partial-sum buffers, type blocks a split, split counts.
struct MmqSplits {
    float* part[3];
    int kps[3];
    int n[3];
};

// Entry m of a 3-entry parameter array by selects (indexing it at run time would copy the
// kernel parameters to local memory).
template <class V>
__device__ __forceinline__ V pick3(const V (&a)[3], int m) {
    return m == 0 ? a[0] : m == 1 ? a[1] : a[2];
}

// This block's matrix of the group, its row tile, K split size, and where its results go (the
// output, or the split's partial sums); false when the matrix has fewer splits than blockIdx.z.
__device__ __forceinline__ bool mmq_pick(const Group& g, const MmqSplits& sp, int ntok,
                                         const u8*& w, float*& o, int& rows, int& kps, int& bx) {
    bx = group_pick(g, w, o, rows);
    const int m = group_matrix(g);
    const int splits = pick3(sp.n, m);
    if ((int)blockIdx.z >= splits) return false;
    kps = pick3(sp.kps, m);
    if (splits > 1) o = pick3(sp.part, m) + (size_t)blockIdx.z * ntok * rows;
    return true;
}

#define MMQ(NAME, T, TT)                                                                        \
    extern "C" __global__ void __launch_bounds__(32 * MMQ_WARPS)                                \
        mmq_##NAME##_##TT(Group g, MmqSplits sp, const i8* xq, const float2* xds, int cols,     \
                          int ntok) {                                                           \
        pdl_entry();                                                                            \
        const u8* w;                                                                            \
        float* o;                                                                               \
        int rows, kps, bx;                                                                      \
        if (mmq_pick(g, sp, ntok, w, o, rows, kps, bx))                                         \
            mmq<T, TT>(w, xq, xds, o, rows, cols, ntok, kps, bx);                               \
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

// ---- mmq_f16_<type>_<TT>: the same tiles on f16 tensor cores ----
//
// The 8-bit kernels above scale every 32-element group's integer product in f32, for every
// token tile: ~36 instructions per mma (ncu, H200, 8B Q4_K 4096 x 4096 at 64 tokens: 27 us,
// issue slots 37% busy, 0.35 TB/s). Here a group's weights are dequantized once, in registers,
// to f16 (s * q + m with the group's scale and offset term), and multiplied with every token
// tile by two mma.m16n8k16 (f16 in, f32 accumulate): the scaling is paid once per group, not
// once per tile. Activations are f16 (half_mma_input), not 8-bit.
//
// The order of the 16 k slots of an mma does not change its sum, so A and B only need the same
// one: lane 4g + q holds, for rows g and g + 8, elements 4q..4q+3 (tile 0) and 16+4q..16+4q+3
// (tile 1) of a group, as the loaders above give them; the f16 pairs of a 4-byte word are
// elements (0, 2) and (1, 3). half_mma_input stores each 32-element group of the activations
// so that lane q's 16 bytes are x[4q], x[4q+2], x[4q+1], x[4q+3], x[16+4q], x[18+4q],
// x[17+4q], x[19+4q]: one 16-byte shared load gives a token's B registers of both tiles.
// Activation chunks are double-buffered in dynamic shared memory (cp.async), 2 * TT * (2 * CH
// + 64) bytes (the 64 spreads token rows over the banks).

// x (rows of 32-element groups, f32) -> xh (f16, each group in the order above); a thread per
// 16-byte slot.
extern "C" __global__ void half_mma_input(const float* __restrict__ x, uint4* __restrict__ xh,
                                          long long nslots) {
    pdl_entry();
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= nslots) return;
    const float* p = x + (i >> 2) * 32 + 4 * (i & 3);
    float4 a = *(const float4*)p, b = *(const float4*)(p + 16);
    auto pk = [](float lo, float hi) { return (u32)f2h(lo) | ((u32)f2h(hi) << 16); };
    xh[i] = make_uint4(pk(a.x, a.z), pk(a.y, a.w), pk(b.x, b.z), pk(b.y, b.w));
}

// An f32 as both halves of an f16 pair.
__device__ __forceinline__ u32 h2_splat(float f) {
    u32 h = f2h(f);
    return h | (h << 16);
}

// The bytes of v as f16 pairs (v0, v2) - bias and (v1, v3) - bias, exactly: 1024 + byte is
// exact in f16 (0x6400 | byte), and so is subtracting a bias of 1024 + k.
__device__ __forceinline__ void h2_bytes(u32 v, u32 bias, u32& p02, u32& p13) {
    p02 = __byte_perm(v, 0x64646464u, 0x4240);
    p13 = __byte_perm(v, 0x64646464u, 0x4341);
    asm("sub.rn.f16x2 %0, %0, %1;" : "+r"(p02) : "r"(bias));
    asm("sub.rn.f16x2 %0, %0, %1;" : "+r"(p13) : "r"(bias));
}

__device__ __forceinline__ u32 hmul2(u32 a, u32 b) {
    u32 r;
    asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

__device__ __forceinline__ u32 hfma2(u32 a, u32 b, u32 c) {
    u32 r;
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}

// The low or the high half of an f16 pair, in both halves.
__device__ __forceinline__ u32 h_lo2(u32 p) { return __byte_perm(p, 0u, 0x1010); }
__device__ __forceinline__ u32 h_hi2(u32 p) { return __byte_perm(p, 0u, 0x3232); }

// The four quants in the bytes of v, minus the bias (f16 pair of 1024 + k), times s plus m:
// pairs (0, 2) and (1, 3). Only the fma rounds.
__device__ __forceinline__ void h2_quants(u32 v, u32 bias, u32 s, u32 m, u32& p02, u32& p13) {
    h2_bytes(v, bias, p02, p13);
    p02 = hfma2(p02, s, m);
    p13 = hfma2(p13, s, m);
}

// f16 dequantization of one row's group for the f16 kernels. prep_h(b): once per block, after
// it is loaded (the K-quants' scales as f16 pairs); group_h(b, j, lo, hi): group j's weights,
// lo = tile 0 (elements 4q..4q+3 as pairs (0, 2), (1, 3)), hi = tile 1 (16+4q..16+4q+3).
// The scales round as f2h(d * sc) in f32 would (the f16 product of exact operands rounds
// once), so every type dequantizes to f16(f16(scale) * q + f16(offset)).
template <class T>
__device__ __forceinline__ void prep_h(T&) {}

template <class T>
__device__ __forceinline__ void group_h(const T& b, int j, u32 (&lo)[2], u32 (&hi)[2]) {
    int l, h;
    float s0 = 0.0f, s1 = 0.0f, m = 0.0f;
    b.group(j, l, h, s0, s1, m);
    // Signed quants (no offset term) as unsigned bytes biased by 128.
    const u32 flip = T::MIN ? 0u : 0x80808080u, bias = T::MIN ? 0x64006400u : 0x64806480u;
    const u32 mh = h2_splat(m);
    h2_quants((u32)l ^ flip, bias, h2_splat(s0), mh, lo[0], lo[1]);
    h2_quants((u32)h ^ flip, bias, h2_splat(T::HALVES ? s1 : s0), mh, hi[0], hi[1]);
}

// A K-quant header's 8 scales d * sc_j and offsets -dmin * m_j as f16 pairs: s[0] = (0, 2),
// s[1] = (1, 3), s[2] = (4, 6), s[3] = (5, 7), the same for m.
__device__ __forceinline__ void k4_scales_h(const int (&hdr)[4], u32 (&s)[4], u32 (&m)[4]) {
    const u32 h1 = hdr[1], h2 = hdr[2], h3 = hdr[3];
    const u32 bias = 0x64006400u;
    h2_bytes(h1 & 0x3F3F3F3Fu, bias, s[0], s[1]);
    h2_bytes((h3 & 0x0F0F0F0Fu) | ((h1 >> 2) & 0x30303030u), bias, s[2], s[3]);
    h2_bytes(h2 & 0x3F3F3F3Fu, bias, m[0], m[1]);
    h2_bytes(((h3 >> 4) & 0x0F0F0F0Fu) | ((h2 >> 2) & 0x30303030u), bias, m[2], m[3]);
    const u32 d = h_lo2((u32)hdr[0]), nd = h_hi2((u32)hdr[0]) ^ 0x80008000u;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        s[i] = hmul2(s[i], d);
        m[i] = hmul2(m[i], nd);
    }
}

// Group j's value of the pairs k4_scales_h made, in both halves.
__device__ __forceinline__ u32 k4_pick(const u32 (&p)[4], int j) {
    const u32 v = p[(j >> 2) * 2 + (j & 1)];
    return (j >> 1) & 1 ? h_hi2(v) : h_lo2(v);
}

__device__ __forceinline__ void prep_h(FQ4K& b) { k4_scales_h(b.hdr, b.sh, b.mh); }
__device__ __forceinline__ void prep_h(FQ5K& b) { k4_scales_h(b.hdr, b.sh, b.mh); }

__device__ __forceinline__ void group_h(const FQ4K& b, int j, u32 (&lo)[2], u32 (&hi)[2]) {
    const int c = j >> 1, sh = 4 * (j & 1);
    const u32 s = k4_pick(b.sh, j), m = k4_pick(b.mh, j);
    h2_quants(((u32)b.q[2 * c] >> sh) & 0x0F0F0F0Fu, 0x64006400u, s, m, lo[0], lo[1]);
    h2_quants(((u32)b.q[2 * c + 1] >> sh) & 0x0F0F0F0Fu, 0x64006400u, s, m, hi[0], hi[1]);
}

__device__ __forceinline__ void group_h(const FQ5K& b, int j, u32 (&lo)[2], u32 (&hi)[2]) {
    const int c = j >> 1, sh = 4 * (j & 1);
    const u32 s = k4_pick(b.sh, j), m = k4_pick(b.mh, j);
    const u32 l = (((u32)b.q[2 * c] >> sh) & 0x0F0F0F0Fu) | ((((u32)b.h0 >> j) & 0x01010101u) << 4);
    const u32 h = (((u32)b.q[2 * c + 1] >> sh) & 0x0F0F0F0Fu) | ((((u32)b.h1 >> j) & 0x01010101u) << 4);
    h2_quants(l, 0x64006400u, s, m, lo[0], lo[1]);
    h2_quants(h, 0x64006400u, s, m, hi[0], hi[1]);
}

// Q6_K: the 16 scales d * sc (signed bytes) as pairs: sp[2i] = (4i, 4i+2), sp[2i+1] = (4i+1,
// 4i+3); quants 0..63 with a bias of 32 (f16 1056).
__device__ __forceinline__ void prep_h(FQ6K& b) {
    const u32 d = h2_splat(b.d);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        h2_bytes((u32)b.sc[i] ^ 0x80808080u, 0x64806480u, b.sp[2 * i], b.sp[2 * i + 1]);
        b.sp[2 * i] = hmul2(b.sp[2 * i], d);
        b.sp[2 * i + 1] = hmul2(b.sp[2 * i + 1], d);
    }
}

__device__ __forceinline__ void group_h(const FQ6K& b, int j, u32 (&lo)[2], u32 (&hi)[2]) {
    const int n = j >> 2, k = j & 3;
    const int i = 2 * n + (k & 1), sh = 4 * (k >> 1);
    const u32 l = (((u32)b.ql[2 * i] >> sh) & 0x0F0F0F0Fu) | ((((u32)b.qh[2 * n] >> (2 * k)) & 0x03030303u) << 4);
    const u32 h = (((u32)b.ql[2 * i + 1] >> sh) & 0x0F0F0F0Fu) | ((((u32)b.qh[2 * n + 1] >> (2 * k)) & 0x03030303u) << 4);
    const u32 s0 = b.sp[2 * (j >> 1)], s1 = b.sp[2 * (j >> 1) + 1];
    const u32 sl = j & 1 ? h_hi2(s0) : h_lo2(s0), shi = j & 1 ? h_hi2(s1) : h_lo2(s1);
    h2_quants(l, 0x64206420u, sl, 0u, lo[0], lo[1]);
    h2_quants(h, 0x64206420u, shi, 0u, hi[0], hi[1]);
}

template <class T, int TT>
__device__ __forceinline__ void mmq_f16(const u8* __restrict__ w, const u8* __restrict__ xh,
                                        float* __restrict__ o, int rows, int cols, int ntok,
                                        int kps, int bx) {
    constexpr int CH = T::QK * T::BPC;  // elements per K chunk
    constexpr int STRIDE = 2 * CH + 64;  // bytes per token row in shared memory
    constexpr int G = T::QK / 32;
    constexpr int NT = TT / 8;
    extern __shared__ __align__(16) u8 smem[];  // 2 buffers of TT * STRIDE bytes

    const int tid = threadIdx.x, lane = tid & 31;
    const int g = lane >> 2, l = lane & 3;
    const int t0 = blockIdx.y * TT;
    MmqWeights<T> wt(w, rows, cols, kps, bx);
    const int b_end = wt.b_end;

    float acc[NT][4] = {};
    // The activations of the chunk that starts at block bs into buffer sb, asynchronously
    // (zeros past the last token and past the row's end).
    auto stage = [&](int sb, int bs) {
        const int e0 = bs * T::QK;
        const int ne = min(CH, (b_end - bs) * T::QK);
        u8* dst = smem + sb * (TT * STRIDE);
        for (int i = tid; i < TT * (CH / 8); i += blockDim.x) {
            int t = i / (CH / 8), c = i % (CH / 8);
            bool ok = t0 + t < ntok && 8 * c < ne;
            const u8* src = ok ? xh + 2 * ((size_t)(t0 + t) * cols + e0 + 8 * c) : xh;
            cp_async(dst + t * STRIDE + 16 * c, src, ok);
        }
        cp_async_commit();
    };
    stage(0, wt.b_begin);
    int buf = 0;
    for (int b0 = wt.b_begin; b0 < b_end; b0 += T::BPC, buf ^= 1) {
        // The next chunk's weights, in flight while this one is computed.
        T nxt0[T::BPC], nxt1[T::BPC];
        const bool more = b0 + T::BPC < b_end;
        if (more) wt.load(nxt0, nxt1, b0 + T::BPC);
        // This chunk's activations have landed, and every warp is done with the other buffer.
        cp_async_wait_all();
        __syncthreads();
        if (more) stage(buf ^ 1, b0 + T::BPC);
        const u8* xs = smem + buf * (TT * STRIDE) + g * STRIDE + 16 * l;
#pragma unroll
        for (int k = 0; k < T::BPC; k++) {
            prep_h(wt.cur0[k]);
            prep_h(wt.cur1[k]);
        }
#pragma unroll
        for (int k = 0; k < T::BPC; k++) {
            if (b0 + k >= b_end) break;
#pragma unroll
            for (int j = 0; j < G; j++) {
                const int grp = k * G + j;
                // Rows g (x) and g + 8 (y): tile 0 (lo) and tile 1 (hi) pairs.
                u32 xl[2], xh[2], yl[2], yh[2];
                group_h(wt.cur0[k], j, xl, xh);
                group_h(wt.cur1[k], j, yl, yh);
#pragma unroll
                for (int t = 0; t < NT; t++) {
                    uint4 b = *(const uint4*)(xs + 8 * t * STRIDE + 64 * grp);
                    mma_f16(acc[t], xl[0], yl[0], xl[1], yl[1], b.x, b.y);
                    mma_f16(acc[t], xh[0], yh[0], xh[1], yh[1], b.z, b.w);
                }
            }
        }
        if (more) wt.next(nxt0, nxt1);
    }
    mmq_store<NT>(acc, o, rows, ntok, bx);
}

#define MMQ_F16(NAME, T, TT)                                                                    \
    extern "C" __global__ void __launch_bounds__(32 * MMQ_WARPS)                                \
        mmq_f16_##NAME##_##TT(Group g, MmqSplits sp, const u8* xh, int cols, int ntok) {        \
        pdl_entry();                                                                            \
        const u8* w;                                                                            \
        float* o;                                                                               \
        int rows, kps, bx;                                                                      \
        if (mmq_pick(g, sp, ntok, w, o, rows, kps, bx))                                         \
            mmq_f16<T, TT>(w, xh, o, rows, cols, ntok, kps, bx);                                \
    }

#define MMQ_F16_ALL(NAME, T) \
    MMQ_F16(NAME, T, 8) MMQ_F16(NAME, T, 16) MMQ_F16(NAME, T, 32) MMQ_F16(NAME, T, 64)

MMQ_F16_ALL(q4_0, FQ4_0)
MMQ_F16_ALL(q4_1, FQ4_1)
MMQ_F16_ALL(q5_0, FQ5_0)
MMQ_F16_ALL(q5_1, FQ5_1)
MMQ_F16_ALL(q8_0, FQ8_0)
MMQ_F16_ALL(q4_k, FQ4K)
MMQ_F16_ALL(q5_k, FQ5K)
MMQ_F16_ALL(q6_k, FQ6K)

// For each matrix of the group with several splits: out[i] = sum over z of part[z * n + i], in
// split order, n = ntok * rows (the group's r_i; a matrix with one split has no blocks).
extern "C" __global__ void mmq_reduce(Group g, MmqSplits sp) {
    pdl_entry();
    const u8* w;
    float* out;
    int n, b = group_pick(g, w, out, n);
    const int m = group_matrix(g);
    const float* part = pick3(sp.part, m);
    int i = b * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = 0.0f;
    const int splits = pick3(sp.n, m);
    for (int z = 0; z < splits; z++) v += part[(size_t)z * n + i];
    out[i] = v;
}
