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

__device__ __forceinline__ int dp4a(int a, int b, int c) {
    int r;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}

// A 32-bit little-endian int at a 2-byte-aligned address.
__device__ __forceinline__ int ld_i2(const u8* p) {
    return (int)((u32)ld16(p) | ((u32)ld16(p + 2) << 16));
}

__device__ __forceinline__ int ld_i4(const u8* p) { return *(const int*)p; }

// N little-endian 32-bit ints at a 2-byte-aligned address: N aligned words from the word that
// holds p, and at an address of 2 mod 4 the 16 bits after them, joined by funnel shifts: at most
// N + 1 loads instead of ld_i2's 2N. At 2 mod 4 the first word starts 2 bytes before p, which
// every caller's block holds (p is 2 or more bytes into it), and nothing past p + 4N is read.
template <int N>
__device__ __forceinline__ void ld_a2(const u8* p, int (&v)[N]) {
    // From p itself (not an integer made a pointer), so that a shared-memory p stays a
    // shared-memory load (the streamed kernels), not a generic one.
    const u32* a = (const u32*)(p - ((size_t)p & 2));
    u32 sh = (u32)((size_t)p & 2) * 8;
    u32 w[N + 1];
#pragma unroll
    for (int k = 0; k < N; k++) w[k] = a[k];
    w[N] = sh != 0 ? (u32)ld16(p + 4 * N - 2) : 0u;
#pragma unroll
    for (int k = 0; k < N; k++) v[k] = (int)__funnelshift_r(w[k], w[k + 1], sh);
}

// Bits 0..3 of b moved to bit 4 of each byte (the fifth bit of four 5-bit quants).
__device__ __forceinline__ int spread4(u32 b) {
    return (int)(((b & 1u) << 4) | ((b & 2u) << 11) | ((b & 4u) << 18) | ((b & 8u) << 25));
}

extern "C" __global__ void quantize_q8_1(const float* __restrict__ x, i8* __restrict__ xq,
                                         float2* __restrict__ xds, int nblocks) {
    pdl_entry();
    int lane = threadIdx.x & 31;
    int blk = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (blk >= nblocks) return;
    q8_warp(x[(size_t)blk * 32 + lane], xq + (size_t)blk * 32, xds + blk);
}

// Each type: SUBS pieces per block of QK elements; load() reads piece s of the block at `b`
// into registers; dot() multiplies it with the activations of the whole block (xq: QK / 4
// ints, xds: QK / 32 pairs (d, d * sum q)). A block's constant terms (offsets and minimums,
// which need the sum over a whole 32-element chunk) are added by the piece that starts that
// chunk, so the pieces of a block sum to the block's dot product.

__device__ __forceinline__ int4 ld_x4(const int* p) { return *(const int4*)p; }

// The streamed kernels' shared-memory copy of the input, for types with XSWZ: 16-byte unit u of
// each 128-byte row r of the copy at u ^ f, f = (r ^ 2r) & 7 over r's low two bits (0, 3, 6, 5).
// The 8 lanes of a quarter-warp then hit 8 different bank groups both where they read the same
// unit of consecutive 64-byte pieces (MQ4K2: f's low two bits differ over 4 rows) and where they
// read unit 2j + h of rows 4q + r (MQ6K2: f's high two bits differ). `o` is an offset in ints from
// the copy's start, which is 128-byte aligned; the swizzle flips its bits 2..4 only, by its bits
// 5 and 6, so a slice's start (a multiple of 2,048 bytes) keeps its offsets, and an offset whose
// bits 2..4 a piece adds to stays the piece's swizzled offset with those bits flipped: the
// readers swizzle a lane's first offset once (`XSWZ` types' `dot_xs`).
__device__ __forceinline__ int xs_off(int o) {
    const int r = (o >> 5) & 3;
    return o ^ (((r ^ (r << 1)) & 7) << 2);
}
template <class T, class = void>
struct XSwz {
    static constexpr bool on = false;
};
template <class T>
struct XSwz<T, decltype(void(T::XSWZ))> {
    static constexpr bool on = T::XSWZ;
};

// Sum of dp4a over 4 ints of weights and 4 of activations.
__device__ __forceinline__ int dot4(int a0, int a1, int a2, int a3, int4 x, int s) {
    return dp4a(a3, x.w, dp4a(a2, x.z, dp4a(a1, x.y, dp4a(a0, x.x, s))));
}

// Q4_0: two pieces of 8 quant bytes (elements 8s..8s+7 and 16+8s..16+8s+7).
struct MQ4_0 {
    static constexpr int QK = 32, BYTES = 18, SUBS = 2;
    int q0, q1;
    float d;
    __device__ __forceinline__ void load(const u8* b, int s) {
        d = h2f(ld16(b));
        q0 = ld_i2(b + 2 + 8 * s);
        q1 = ld_i2(b + 6 + 8 * s);
    }
    __device__ __forceinline__ float dot(int s, const int* x, const float2* ds) const {
        int2 lo = *(const int2*)(x + 2 * s), hi = *(const int2*)(x + 4 + 2 * s);
        int v = dp4a(q0 & 0x0F0F0F0F, lo.x, 0);
        v = dp4a(q1 & 0x0F0F0F0F, lo.y, v);
        v = dp4a((q0 >> 4) & 0x0F0F0F0F, hi.x, v);
        v = dp4a((q1 >> 4) & 0x0F0F0F0F, hi.y, v);
        float2 a = ds[0];
        return d * (a.x * (float)v - (s == 0 ? 8.0f * a.y : 0.0f));
    }
};

// Q4_0 for the streamed kernels only (XSWZ): a piece is a whole block (SUBS 1), 16 quant bytes at
// a 2-byte-aligned address read as 4 words (ld_a2), and the scale once for 32 elements (MQ4_0
// reads it for each half and the quants as 16-bit halves).
struct MQ4_0W {
    static constexpr int QK = 32, BYTES = 18, SUBS = 1;
    static constexpr bool XSWZ = true;
    int q[4];
    float d;
    __device__ __forceinline__ void load(const u8* b, int) {
        d = h2f(ld16(b));
        ld_a2(b + 2, q);
    }
    __device__ __forceinline__ float dot_xs(int, const int* xb, int o, const float2* ds) const {
        const int m = 0x0F0F0F0F;
        const int w = xs_off(o);
        int v = dot4(q[0] & m, q[1] & m, q[2] & m, q[3] & m, ld_x4(xb + w), 0);
        v = dot4((q[0] >> 4) & m, (q[1] >> 4) & m, (q[2] >> 4) & m, (q[3] >> 4) & m,
                 ld_x4(xb + (w ^ 4)), v);
        const float2 a = ds[0];
        return d * (a.x * (float)v - 8.0f * a.y);
    }
};

struct MQ4_1 {
    static constexpr int QK = 32, BYTES = 20, SUBS = 2;
    int q0, q1;
    float d, m;
    __device__ __forceinline__ void load(const u8* b, int s) {
        d = h2f(ld16(b));
        m = h2f(ld16(b + 2));
        q0 = ld_i4(b + 4 + 8 * s);
        q1 = ld_i4(b + 8 + 8 * s);
    }
    __device__ __forceinline__ float dot(int s, const int* x, const float2* ds) const {
        int2 lo = *(const int2*)(x + 2 * s), hi = *(const int2*)(x + 4 + 2 * s);
        int v = dp4a(q0 & 0x0F0F0F0F, lo.x, 0);
        v = dp4a(q1 & 0x0F0F0F0F, lo.y, v);
        v = dp4a((q0 >> 4) & 0x0F0F0F0F, hi.x, v);
        v = dp4a((q1 >> 4) & 0x0F0F0F0F, hi.y, v);
        float2 a = ds[0];
        return d * a.x * (float)v + (s == 0 ? m * a.y : 0.0f);
    }
};

// Q5_0 / Q5_1: as Q4_0 / Q4_1 with the fifth bits of elements 8s.. (qh bits 8s..) and
// 16+8s.. (qh bits 16+8s..).
struct MQ5_0 {
    static constexpr int QK = 32, BYTES = 22, SUBS = 2;
    int l0, l1, h0, h1;
    float d;
    __device__ __forceinline__ void load(const u8* b, int s) {
        d = h2f(ld16(b));
        u32 qh = (u32)ld_i2(b + 2);
        int q0 = ld_i2(b + 6 + 8 * s), q1 = ld_i2(b + 10 + 8 * s);
        l0 = (q0 & 0x0F0F0F0F) | spread4(qh >> (8 * s));
        l1 = (q1 & 0x0F0F0F0F) | spread4(qh >> (8 * s + 4));
        h0 = ((q0 >> 4) & 0x0F0F0F0F) | spread4(qh >> (16 + 8 * s));
        h1 = ((q1 >> 4) & 0x0F0F0F0F) | spread4(qh >> (20 + 8 * s));
    }
    __device__ __forceinline__ float dot(int s, const int* x, const float2* ds) const {
        int2 lo = *(const int2*)(x + 2 * s), hi = *(const int2*)(x + 4 + 2 * s);
        int v = dp4a(h1, hi.y, dp4a(h0, hi.x, dp4a(l1, lo.y, dp4a(l0, lo.x, 0))));
        float2 a = ds[0];
        return d * (a.x * (float)v - (s == 0 ? 16.0f * a.y : 0.0f));
    }
};

struct MQ5_1 {
    static constexpr int QK = 32, BYTES = 24, SUBS = 2;
    int l0, l1, h0, h1;
    float d, m;
    __device__ __forceinline__ void load(const u8* b, int s) {
        d = h2f(ld16(b));
        m = h2f(ld16(b + 2));
        u32 qh = (u32)ld_i4(b + 4);
        int q0 = ld_i4(b + 8 + 8 * s), q1 = ld_i4(b + 12 + 8 * s);
        l0 = (q0 & 0x0F0F0F0F) | spread4(qh >> (8 * s));
        l1 = (q1 & 0x0F0F0F0F) | spread4(qh >> (8 * s + 4));
        h0 = ((q0 >> 4) & 0x0F0F0F0F) | spread4(qh >> (16 + 8 * s));
        h1 = ((q1 >> 4) & 0x0F0F0F0F) | spread4(qh >> (20 + 8 * s));
    }
    __device__ __forceinline__ float dot(int s, const int* x, const float2* ds) const {
        int2 lo = *(const int2*)(x + 2 * s), hi = *(const int2*)(x + 4 + 2 * s);
        int v = dp4a(h1, hi.y, dp4a(h0, hi.x, dp4a(l1, lo.y, dp4a(l0, lo.x, 0))));
        float2 a = ds[0];
        return d * a.x * (float)v + (s == 0 ? m * a.y : 0.0f);
    }
};

// Q8_0: two pieces of 16 quant bytes.
struct MQ8_0 {
    static constexpr int QK = 32, BYTES = 34, SUBS = 2;
    int q[4];
    float d;
    __device__ __forceinline__ void load(const u8* b, int s) {
        d = h2f(ld16(b));
#pragma unroll
        for (int k = 0; k < 4; k++) q[k] = ld_i2(b + 2 + 16 * s + 4 * k);
    }
    __device__ __forceinline__ float dot(int s, const int* x, const float2* ds) const {
        int v = dot4(q[0], q[1], q[2], q[3], ld_x4(x + 4 * s), 0);
        return d * ds[0].x * (float)v;
    }
};

// Scale and minimum of chunk k (0..7) of a K-quant block, as scale_min_k4, from the 12 scale
// bytes held in three 32-bit words (bytes 4..7, 8..11, 12..15 of the block): shifts by a
// run-time amount, where indexing a register array at run time would go through local memory.
// Selects, not branches: lanes of a warp decode chunks of both halves (a branch there diverged).
__device__ __forceinline__ void k_scale_min(u32 w1, u32 w2, u32 w3, int k, float* sc, float* mn) {
    int sh = 8 * (k & 3);
    u32 a = (w1 >> sh) & 0xFFu, b = (w2 >> sh) & 0xFFu, c = (w3 >> sh) & 0xFFu;
    const bool lo = k < 4;
    *sc = (float)(lo ? (a & 63u) : ((c & 15u) | ((a >> 6) << 4)));
    *mn = (float)(lo ? (b & 63u) : ((c >> 4) | ((b >> 6) << 4)));
}

// d * scale and dmin * minimum of chunks c and c + 1 of a Q4_K/Q5_K block from its 16-byte
// header (d, dmin, 12 scale bytes) in one load: the blocks are 144 and 176 bytes, so the header
// is 16-byte aligned, and the lanes that read pieces of one block read the same 16 bytes.
__device__ __forceinline__ void k_scales(const u8* b, int c, float& d0, float& m0, float& d1,
                                         float& m1) {
    int4 h = *(const int4*)b;
    float d = h2f((u16)((u32)h.x & 0xFFFFu)), dmin = h2f((u16)((u32)h.x >> 16));
    float sc, mn;
    k_scale_min((u32)h.y, (u32)h.z, (u32)h.w, c, &sc, &mn);
    d0 = d * sc;
    m0 = dmin * mn;
    k_scale_min((u32)h.y, (u32)h.z, (u32)h.w, c + 1, &sc, &mn);
    d1 = d * sc;
    m1 = dmin * mn;
}

// Q4_K piece s (0..7): quant bytes 16s..16s+15, i.e. elements 16h..16h+15 (h = s % 2) of
// chunks 2j (low nibbles) and 2j + 1 (high nibbles), j = s / 2.
struct MQ4K {
    static constexpr int QK = 256, BYTES = 144, SUBS = 8;
    int4 q;
    float d0, m0, d1, m1;
    __device__ __forceinline__ void load(const u8* b, int s) {
        k_scales(b, 2 * (s >> 1), d0, m0, d1, m1);
        q = *(const int4*)(b + 16 + 16 * s);
    }
    __device__ __forceinline__ float dot(int s, const int* x, const float2* ds) const {
        int j = s >> 1, h = s & 1;
        const int m = 0x0F0F0F0F;
        int v0 = dot4(q.x & m, q.y & m, q.z & m, q.w & m, ld_x4(x + 16 * j + 4 * h), 0);
        int v1 = dot4((q.x >> 4) & m, (q.y >> 4) & m, (q.z >> 4) & m, (q.w >> 4) & m,
                      ld_x4(x + 16 * j + 8 + 4 * h), 0);
        float2 a = ds[2 * j], c = ds[2 * j + 1];
        float r = d0 * a.x * (float)v0 + d1 * c.x * (float)v1;
        return h == 0 ? r - (m0 * a.y + m1 * c.y) : r;
    }
};

// Q4_K for the streamed kernels only (XSWZ: the input's shared-memory copy is swizzled, dot_xs;
// mmvq<> refuses it at compile time): piece
// s (0..3) is quant bytes 32s..32s+31, i.e. the whole of chunks 2s (low nibbles) and 2s + 1
// (high nibbles), so the chunks' scales are decoded once for 64 elements, not once for 32.
struct MQ4K2 {
    static constexpr int QK = 256, BYTES = 144, SUBS = 4;
    static constexpr bool XSWZ = true;
    int4 q0, q1;
    float d0, m0, d1, m1;
    __device__ __forceinline__ void load(const u8* b, int s) {
        k_scales(b, 2 * s, d0, m0, d1, m1);
        q0 = *(const int4*)(b + 16 + 32 * s);
        q1 = *(const int4*)(b + 32 + 32 * s);
    }
    // xb: the slice's input copy, o: the block's offset (ints) in it.
    __device__ __forceinline__ float dot_xs(int s, const int* xb, int o, const float2* ds) const {
        const int m = 0x0F0F0F0F;
        const int w = xs_off(o + 16 * s);
        int v0 = dot4(q0.x & m, q0.y & m, q0.z & m, q0.w & m, ld_x4(xb + w), 0);
        v0 = dot4(q1.x & m, q1.y & m, q1.z & m, q1.w & m, ld_x4(xb + (w ^ 4)), v0);
        int v1 = dot4((q0.x >> 4) & m, (q0.y >> 4) & m, (q0.z >> 4) & m, (q0.w >> 4) & m,
                      ld_x4(xb + (w ^ 8)), 0);
        v1 = dot4((q1.x >> 4) & m, (q1.y >> 4) & m, (q1.z >> 4) & m, (q1.w >> 4) & m,
                  ld_x4(xb + (w ^ 12)), v1);
        float4 a = *(const float4*)(ds + 2 * s);
        return d0 * a.x * (float)v0 + d1 * a.z * (float)v1 - (m0 * a.y + m1 * a.w);
    }
};

// Q5_K piece s: as Q4_K, plus bits 2j and 2j + 1 of high-bit bytes 16h..16h+15.
struct MQ5K {
    static constexpr int QK = 256, BYTES = 176, SUBS = 8;
    int lo[4], hi[4];
    float d0, m0, d1, m1;
    __device__ __forceinline__ void load(const u8* b, int s) {
        int j = s >> 1, h = s & 1;
        k_scales(b, 2 * j, d0, m0, d1, m1);
        int4 q = *(const int4*)(b + 48 + 16 * s);
        int4 qh = *(const int4*)(b + 16 + 16 * h);
        int qa[4] = {q.x, q.y, q.z, q.w}, ha[4] = {qh.x, qh.y, qh.z, qh.w};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            lo[k] = (qa[k] & 0x0F0F0F0F) | (((ha[k] >> (2 * j)) & 0x01010101) << 4);
            hi[k] = ((qa[k] >> 4) & 0x0F0F0F0F) | (((ha[k] >> (2 * j + 1)) & 0x01010101) << 4);
        }
    }
    __device__ __forceinline__ float dot(int s, const int* x, const float2* ds) const {
        int j = s >> 1, h = s & 1;
        int v0 = dot4(lo[0], lo[1], lo[2], lo[3], ld_x4(x + 16 * j + 4 * h), 0);
        int v1 = dot4(hi[0], hi[1], hi[2], hi[3], ld_x4(x + 16 * j + 8 + 4 * h), 0);
        float2 a = ds[2 * j], c = ds[2 * j + 1];
        float r = d0 * a.x * (float)v0 + d1 * c.x * (float)v1;
        return h == 0 ? r - (m0 * a.y + m1 * c.y) : r;
    }
};

// Q6_K piece s (0..7) = (n, k1, h) = (s / 4, (s / 2) % 2, s % 2): low-quant bytes
// 64n + 32k1 + 16h.. (+16) and high-bit bytes 32n + 16h.. (+16), i.e. elements 16h..16h+15 of
// chunks c0 = 4n + k1 (low nibbles, high bits 2k1) and c1 = c0 + 2 (high nibbles, bits 2k1 + 4);
// values minus 32 as signed bytes. The layout is only 2-byte aligned.
struct MQ6K {
    static constexpr int QK = 256, BYTES = 210, SUBS = 8;
    int v0[4], v1[4];
    float s0, s1;
    __device__ __forceinline__ static int minus32(int v) {
        return (int)((((u32)v | 0x80808080u) - 0x20202020u) ^ 0x80808080u);
    }
    __device__ __forceinline__ void load(const u8* b, int s) {
        int n = s >> 2, k1 = (s >> 1) & 1, h = s & 1;
        const u8* l4 = b + n * 64 + k1 * 32 + 16 * h;
        const u8* h2 = b + 128 + n * 32 + 16 * h;
        const i8* sc = (const i8*)(b + 192 + n * 8);
        float d = h2f(ld16(b + 208));
        s0 = d * (float)sc[2 * k1 + h];
        s1 = d * (float)sc[2 * k1 + 4 + h];
        int la[4], ha[4];
        ld_a2(l4, la);
        ld_a2(h2, ha);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            int l = la[k];
            int hb = ha[k];
            v0[k] = minus32((l & 0x0F0F0F0F) | (((hb >> (2 * k1)) & 0x03030303) << 4));
            v1[k] = minus32(((l >> 4) & 0x0F0F0F0F) | (((hb >> (2 * k1 + 4)) & 0x03030303) << 4));
        }
    }
    __device__ __forceinline__ float dot(int s, const int* x, const float2* ds) const {
        int n = s >> 2, k1 = (s >> 1) & 1, h = s & 1;
        int c0 = 4 * n + k1, c1 = c0 + 2;
        int a = dot4(v0[0], v0[1], v0[2], v0[3], ld_x4(x + 8 * c0 + 4 * h), 0);
        int c = dot4(v1[0], v1[1], v1[2], v1[3], ld_x4(x + 8 * c1 + 4 * h), 0);
        return ds[c0].x * s0 * (float)a + ds[c1].x * s1 * (float)c;
    }
};

// Q6_K for the streamed kernels only (XSWZ): piece s (0..3) = (n, h) = (s / 2, s % 2) is elements
// 16h..16h+15 of each of the chunks 4n + j (j = 0..3): low-quant bytes 64n + 16h.. (chunk j = 0 in
// the low nibbles, 2 in the high) and 64n + 32 + 16h.. (1 and 3), high-bit bytes 128 + 32n + 16h..
// (bits 2j, 2j + 1), scales 8n + 2j + h. So a high-bit byte is read once (MQ6K reads it for two
// pieces) and the scales, four bytes, in one. The quants are taken as 0..63: the dot subtracts
// 32 times the sum of the 16 inputs (dp4a with bytes of -32), which the two rows of a consumer
// warp share.
struct MQ6K2 {
    static constexpr int QK = 256, BYTES = 210, SUBS = 4;
    static constexpr bool XSWZ = true;
    int la[4], lb[4], hb[4];
    float d, sc[4];
    __device__ __forceinline__ void load(const u8* b, int s) {
        const int n = s >> 1, h = s & 1;
        ld_a2(b + 64 * n + 16 * h, la);
        ld_a2(b + 64 * n + 32 + 16 * h, lb);
        ld_a2(b + 128 + 32 * n + 16 * h, hb);
        int w[2];
        ld_a2(b + 192 + 8 * n, w);
        d = h2f(ld16(b + 208));
#pragma unroll
        for (int j = 0; j < 4; j++) sc[j] = (float)((w[j >> 1] << (24 - 8 * h - 16 * (j & 1))) >> 24);
    }
    __device__ __forceinline__ float dot_xs(int s, const int* xb, int o, const float2* ds) const {
        const int n = s >> 1, h = s & 1;
        const int w = xs_off(o + 32 * n + 4 * h);
        float r = 0.0f;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int4 xv = ld_x4(xb + (w ^ (8 * j)));
            const int m32 = (int)0xE0E0E0E0;
            const int off = dot4(m32, m32, m32, m32, xv, 0);
            int q[4];
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const int l = (j & 1) ? lb[k] : la[k];
                const int lo = (j < 2 ? l : l >> 4) & 0x0F0F0F0F;
                q[k] = lo | (((hb[k] >> (2 * j)) & 0x03030303) << 4);
            }
            const int v = dot4(q[0], q[1], q[2], q[3], xv, off);
            r += sc[j] * ds[4 * n + j].x * (float)v;
        }
        return d * r;
    }
};

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

// ---- Streamed one-token kernels (sm_90 and later): mmvq_bulk_<type> ----
//
// The 2-row kernels above hold one batch of loads a block in flight, and a block lives about one
// DRAM round trip: at 12 blocks an SM gate/up ran at 2.67 TB/s of the H200's 4.8 (DRAM 56%).
// Here the weights come into shared memory by the copy engine (`cp.async.bulk`), which takes no
// registers. A block has W consumer warps (8 or 16) and one producer warp. A chunk is a slice of
// BULK_SLICE columns of W * BULK_RW consecutive rows (one copy a row slice, into a stage of up to
// BULK_MAX_STAGES); the block walks its row groups (group c, c + grid, ...) slice by slice. Each
// consumer warp takes BULK_RW rows of the group: its lanes take the slice's pieces round robin
// (as the 2-row kernel's threads), each lane reading its pieces of the input once for all its
// rows, accumulate over the row's slices, and the warp's sums are the rows'. A stage's "full"
// barrier completes when its copies land; its "empty" barrier when every consumer warp is done
// with it, and only then does the producer copy the next chunk into it: the warps run
// decoupled, up to a ring of stages apart. A row's order of summation depends on its width
// only, so it has the same bits whatever group it is launched in. The host takes these kernels
// for one token in fast mode outside deterministic mode, where the row is a multiple of
// BULK_SLICE columns, by default for Q4_0, Q4_K and Q6_K weights (backend/bulk.rs has the
// figures: on an H200, 8B Q4_0 decode +10%, 8B Q4_K_M +2-5%, 1B Q4_K_M +14% against the 2-row
// kernels; then MQ6K2 and the mixed launch below 8B Q4_K_M +6%, the swizzle offsets made once a
// lane and branchless K scales +4-5%, MQ4_0W 8B Q4_0 +5-10%). Q4_K and Q6_K take 64-element
// pieces here (MQ4K2, MQ6K2: the scales decoded once for two or four chunks), Q4_0 whole blocks
// (MQ4_0W). A group of two types (q and k in Q4_K, v in Q6_K) takes one launch (MMVQ_BULK_MIX).
// At most 64 registers (`__maxnreg__`): ptxas's own choice spilled at 40.
//
// The weights never change during a step, so the producer's copies start before the wait for
// the kernel ahead (a norm, glu, attention): they overlap its end. The consumers read the
// activations and write outputs only after `pdl_entry()`.

#define BULK_SLICE 2048
#define BULK_MAX_STAGES 8
#define BULK_RW 2

__device__ __forceinline__ void mbar_init(unsigned long long* bar, u32 count) {
#if __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count)
                 : "memory");
#endif
}

__device__ __forceinline__ void mbar_arrive(unsigned long long* bar) {
#if __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
#endif
}

// The barrier's phase completes when `bytes` more have landed (and the one arrival is made).
__device__ __forceinline__ void mbar_expect(unsigned long long* bar, u32 bytes) {
#if __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)),
                 "r"(bytes)
                 : "memory");
#endif
}

// `bytes` (a multiple of 16, both addresses 16-byte aligned) from global `src` to shared `dst`,
// counted on `bar`.
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, u32 bytes,
                                          unsigned long long* bar) {
#if __CUDA_ARCH__ >= 900
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
        ::"r"(smem_addr(dst)), "l"(src), "r"(bytes), "r"(smem_addr(bar))
        : "memory");
#endif
}

__device__ __forceinline__ void mbar_wait(unsigned long long* bar, u32 parity) {
#if __CUDA_ARCH__ >= 900
    u32 done;
    do {
        asm volatile(
            "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; "
            "selp.u32 %0, 1, 0, p; }"
            : "=r"(done)
            : "r"(smem_addr(bar)), "r"(parity)
            : "memory");
    } while (!done);
#endif
}

// Row group c of the group's matrices (W rows of one matrix, fewer in a matrix's last group;
// `Group`'s block counts are row-group counts here): its matrix's weights, output and index, its
// first row and row count.
struct BulkRows {
    const u8* w;
    float* out;
    int m, row0, nrows;
};
template <int W>
__device__ __forceinline__ BulkRows bulk_rows(const Group& g, int c) {
    BulkRows r;
    int rows;
    if (c < g.n0) {
        r.w = g.w0, r.out = g.o0, rows = g.r0, r.m = 0;
    } else if ((c -= g.n0) < g.n1) {
        r.w = g.w1, r.out = g.o1, rows = g.r1, r.m = 1;
    } else {
        c -= g.n1;
        r.w = g.w2, r.out = g.o2, rows = g.r2, r.m = 2;
    }
    r.row0 = c * W;
    r.nrows = min(W, rows - r.row0);
    return r;
}

// A walk over a block's chunks: stage s (parity `phase` of its barriers' use), slice k of row
// group c; counters instead of divisions.
struct BulkWalk {
    int s, phase, k, c;
    __device__ __forceinline__ void next(int stages, int nslice, int grid) {
        if (++s == stages) s = 0, phase ^= 1;
        if (++k == nslice) k = 0, c += grid;
    }
};

template <class A, class B>
struct Same {
    static constexpr bool v = false;
};
template <class A>
struct Same<A, A> {
    static constexpr bool v = true;
};

// A consumer warp's share of a chunk of type T (`wr`: its first row's slice): each lane's pieces
// of the slice dotted with the input's (`xk`, `dk`), for each of its rows.
template <class T>
__device__ __forceinline__ void bulk_dot(const u8* wr, const int* xk, const float2* dk, int lane,
                                         float (&acc)[BULK_RW]) {
    constexpr int SLICE_BYTES = BULK_SLICE / T::QK * T::BYTES;
    constexpr int PIECES = BULK_SLICE / T::QK * T::SUBS;
#pragma unroll
    for (int i = lane; i < PIECES; i += 32) {
        const int blk = i / T::SUBS, sub = i % T::SUBS;
        // A warp's rows past the group's last (a matrix's short last group) read stage bytes
        // this chunk did not copy; their sums are not stored.
#pragma unroll
        for (int r = 0; r < BULK_RW; r++) {
            T wv;
            wv.load(wr + r * SLICE_BYTES + blk * T::BYTES, sub);
            if constexpr (XSwz<T>::on)
                acc[r] += wv.dot_xs(sub, xk, blk * (T::QK / 4), dk + blk * (T::QK / 32));
            else
                acc[r] += wv.dot(sub, xk + blk * (T::QK / 4), dk + blk * (T::QK / 32));
        }
    }
}

// The matrices of the group from `split` on are of type T2, the others of T (T2 = T: one type).
// A row's arithmetic is its type's whatever the other type, so a mixed launch gives the bits of
// one launch a type; a stage holds the larger type's chunk.
template <class T, class T2, int W>
__device__ __forceinline__ void mmvq_bulk(const Group& g, const int* __restrict__ xq,
                                          const float2* __restrict__ xds, int cols, int stages,
                                          int split) {
    constexpr bool MIXED = !Same<T, T2>::v;
    static_assert(XSwz<T>::on == XSwz<T2>::on, "one layout of the input's copy for both types");
    constexpr int SB = BULK_SLICE / T::QK * T::BYTES, SB2 = BULK_SLICE / T2::QK * T2::BYTES;
    constexpr int STAGE_BYTES = W * BULK_RW * (SB > SB2 ? SB : SB2);
    extern __shared__ __align__(128) u8 bulk_buf[];
    __shared__ __align__(8) unsigned long long full[BULK_MAX_STAGES], empty[BULK_MAX_STAGES];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int nslice = cols / BULK_SLICE;
    const int total = g.n0 + g.n1 + g.n2, grid = gridDim.x, b = blockIdx.x;
    const int chunks = (b < total ? (total - b + grid - 1) / grid : 0) * nslice;
    // The activations' copy (cols int8 values, then cols / 32 (d, d * sum) pairs), then the
    // stages.
    int* xs = (int*)bulk_buf;
    float2* ds = (float2*)(bulk_buf + cols);
    u8* stage0 = bulk_buf + cols + cols / 4;
    if (threadIdx.x == 0) {
        for (int s = 0; s < stages; s++) {
            mbar_init(&full[s], 1);
            mbar_init(&empty[s], W);
        }
#if __CUDA_ARCH__ >= 900
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
    }
    __syncthreads();
    BulkWalk at = {0, 0, 0, b};
    if (warp == W) {
        // The producer: each chunk into its stage once the consumers are done with the stage's
        // last use (none on the first pass).
        if (lane == 0) {
            for (int q = 0; q < chunks; q++, at.next(stages, nslice, grid)) {
                if (q >= stages) mbar_wait(&empty[at.s], (u32)(at.phase ^ 1));
                const BulkRows rg = bulk_rows<W * BULK_RW>(g, at.c);
                const u32 sb = MIXED && rg.m >= split ? SB2 : SB;
                const size_t row_bytes = (size_t)nslice * sb;
                const u8* w = rg.w + (size_t)rg.row0 * row_bytes + (size_t)at.k * sb;
                u8* dst = stage0 + at.s * STAGE_BYTES;
                mbar_expect(&full[at.s], (u32)rg.nrows * sb);
                for (int r = 0; r < rg.nrows; r++)
                    bulk_copy(dst + r * sb, w + r * row_bytes, sb, &full[at.s]);
            }
        }
        return;
    }
    pdl_entry();
    // The activations into shared memory: with the stages there, L1 has little room left.
    for (int i = threadIdx.x; i < cols / 16; i += W * 32) {
        int* dst = xs + (XSwz<T>::on ? xs_off(4 * i) : 4 * i);
        *(int4*)dst = ((const int4*)xq)[i];
    }
    for (int i = threadIdx.x; i < cols / 64; i += W * 32) ((int4*)ds)[i] = ((const int4*)xds)[i];
    // The consumer warps only (the producer does not take part).
    asm volatile("bar.sync 1, %0;" ::"r"(W * 32) : "memory");
    float acc[BULK_RW];
#pragma unroll
    for (int r = 0; r < BULK_RW; r++) acc[r] = 0.0f;
    for (int q = 0; q < chunks; q++, at.next(stages, nslice, grid)) {
        const BulkRows rg = bulk_rows<W * BULK_RW>(g, at.c);
        mbar_wait(&full[at.s], (u32)at.phase);
        if (warp * BULK_RW < rg.nrows) {
            const u8* st = stage0 + at.s * STAGE_BYTES;
            const int* xk = xs + at.k * (BULK_SLICE / 4);
            const float2* dk = ds + at.k * (BULK_SLICE / 32);
            if (MIXED && rg.m >= split)
                bulk_dot<T2>(st + warp * BULK_RW * SB2, xk, dk, lane, acc);
            else
                bulk_dot<T>(st + warp * BULK_RW * SB, xk, dk, lane, acc);
        }
        __syncwarp();
        if (lane == 0) mbar_arrive(&empty[at.s]);
        if (at.k == nslice - 1) {
#pragma unroll
            for (int r = 0; r < BULK_RW; r++) {
                const float v = warp_sum(acc[r]);
                if (lane == 0 && warp * BULK_RW + r < rg.nrows)
                    rg.out[rg.row0 + warp * BULK_RW + r] = v;
                acc[r] = 0.0f;
            }
        }
    }
}

#define MMVQ_BULK(NAME, T, W)                                                                   \
    extern "C" __global__ void __maxnreg__(64)                                                  \
        mmvq_bulk_##NAME##_w##W(Group g, const int* xq, const float2* xds, int cols,            \
                                int stages) {                                                   \
        mmvq_bulk<T, T, W>(g, xq, xds, cols, stages, 3);                                        \
    }
#define MMVQ_BULK_ALL(NAME, T) MMVQ_BULK(NAME, T, 8) MMVQ_BULK(NAME, T, 16)

// A one-token group of two types in one streamed launch (an 8B Q4_K_M's q and k in Q4_K, its v
// in Q6_K): the matrices from `split` on of type T2.
#define MMVQ_BULK_MIX(NAME, T, T2, W)                                                           \
    extern "C" __global__ void __maxnreg__(64)                                                  \
        mmvq_bulk_mix_##NAME##_w##W(Group g, const int* xq, const float2* xds, int cols,        \
                                    int stages, int split) {                                    \
        mmvq_bulk<T, T2, W>(g, xq, xds, cols, stages, split);                                   \
    }

MMVQ_BULK_ALL(q4_0, MQ4_0W)
MMVQ_BULK_ALL(q4_1, MQ4_1)
MMVQ_BULK_ALL(q5_0, MQ5_0)
MMVQ_BULK_ALL(q5_1, MQ5_1)
MMVQ_BULK_ALL(q8_0, MQ8_0)
MMVQ_BULK_ALL(q4_k, MQ4K2)
MMVQ_BULK_ALL(q5_k, MQ5K)
MMVQ_BULK_ALL(q6_k, MQ6K2)
MMVQ_BULK_MIX(q4_k_q6_k, MQ4K2, MQ6K2, 8)
MMVQ_BULK_MIX(q4_k_q6_k, MQ4K2, MQ6K2, 16)
