// The quantized weight blocks' dot products with 8-bit activations ("q8_1": int8 values in
// blocks of 32, each with a scale d and d * sum(q)) for the dp4a kernels: mmvq.cu's (a block's
// threads take pieces of the rows' blocks round robin) and bulk.cu's (a warp's lanes take the
// pieces of shared-memory slices). Prepended to both files by compile.rs, after common.cuh.

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
// N + 1 loads instead of ld_i2's 2N. At 2 mod 4 the first word starts 2 bytes before p: in the
// caller's block where p is 2 or more bytes into it, else in the row's block before (MQ6K and
// MQ6K2 read from a block's start; a block at 2 mod 4 is never a row's or a row slice's first,
// which start 16-byte aligned). Nothing past p + 4N is read.
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

// Each type: SUBS pieces per block of QK elements; load() reads piece s of the block at `b`
// into registers; dot() multiplies it with the activations of the whole block (xq: QK / 4
// ints, xds: QK / 32 pairs (d, d * sum q)). A block's constant terms (offsets and minimums,
// which need the sum over a whole 32-element chunk) are added by the piece that starts that
// chunk, so the pieces of a block sum to the block's dot product.

__device__ __forceinline__ int4 ld_x4(const int* p) { return *(const int4*)p; }

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
