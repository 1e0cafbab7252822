// Block formats of GGML, dequantized 32 elements (one "chunk") at a time into registers.
// Prepended to matvec.cu and elementwise.cu. Layouts: crates/quant (block structs) and
// llama.cpp's dequantize_row_* functions. Every quantized type's block size is a multiple of 32,
// so a row is a whole number of chunks; chunk c of a row lives in block c / CHUNKS.

struct Q4_0 {
    static constexpr int QK = 32, BYTES = 18, CHUNKS = 1;
    static __device__ __forceinline__ void chunk(const u8* b, int, float* v) {
        float d = h2f(ld16(b));
        const u8* qs = b + 2;
#pragma unroll
        for (int j = 0; j < 16; j++) {
            v[j] = d * (float)((int)(qs[j] & 15) - 8);
            v[j + 16] = d * (float)((int)(qs[j] >> 4) - 8);
        }
    }
};

struct Q4_1 {
    static constexpr int QK = 32, BYTES = 20, CHUNKS = 1;
    static __device__ __forceinline__ void chunk(const u8* b, int, float* v) {
        float d = h2f(ld16(b)), m = h2f(ld16(b + 2));
        const u8* qs = b + 4;
#pragma unroll
        for (int j = 0; j < 16; j++) {
            v[j] = d * (float)(qs[j] & 15) + m;
            v[j + 16] = d * (float)(qs[j] >> 4) + m;
        }
    }
};

__device__ __forceinline__ u32 ld32_bytes(const u8* p) {
    return (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24);
}

struct Q5_0 {
    static constexpr int QK = 32, BYTES = 22, CHUNKS = 1;
    static __device__ __forceinline__ void chunk(const u8* b, int, float* v) {
        float d = h2f(ld16(b));
        u32 qh = ld32_bytes(b + 2);
        const u8* qs = b + 6;
#pragma unroll
        for (int j = 0; j < 16; j++) {
            int lo = (qs[j] & 15) | (((qh >> j) & 1) << 4);
            int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
            v[j] = d * (float)(lo - 16);
            v[j + 16] = d * (float)(hi - 16);
        }
    }
};

struct Q5_1 {
    static constexpr int QK = 32, BYTES = 24, CHUNKS = 1;
    static __device__ __forceinline__ void chunk(const u8* b, int, float* v) {
        float d = h2f(ld16(b)), m = h2f(ld16(b + 2));
        u32 qh = ld32_bytes(b + 4);
        const u8* qs = b + 8;
#pragma unroll
        for (int j = 0; j < 16; j++) {
            int lo = (qs[j] & 15) | (((qh >> j) & 1) << 4);
            int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
            v[j] = d * (float)lo + m;
            v[j + 16] = d * (float)hi + m;
        }
    }
};

struct Q8_0 {
    static constexpr int QK = 32, BYTES = 34, CHUNKS = 1;
    static __device__ __forceinline__ void chunk(const u8* b, int, float* v) {
        float d = h2f(ld16(b));
        const i8* qs = (const i8*)(b + 2);
#pragma unroll
        for (int j = 0; j < 32; j++) v[j] = d * (float)qs[j];
    }
};

// 6-bit scale and min j of a K-quant super-block (llama.cpp get_scale_min_k4).
__device__ __forceinline__ void scale_min_k4(int j, const u8* q, float* sc, float* m) {
    if (j < 4) {
        *sc = (float)(q[j] & 63);
        *m = (float)(q[j + 4] & 63);
    } else {
        *sc = (float)((q[j + 4] & 15) | ((q[j - 4] >> 6) << 4));
        *m = (float)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

struct Q4K {
    static constexpr int QK = 256, BYTES = 144, CHUNKS = 8;
    static __device__ __forceinline__ void chunk(const u8* b, int c, float* v) {
        float d = h2f(ld16(b)), dmin = h2f(ld16(b + 2));
        float sc, m;
        scale_min_k4(c, b + 4, &sc, &m);
        float d1 = d * sc, m1 = dmin * m;
        const u8* q = b + 16 + 32 * (c >> 1);
        int sh = 4 * (c & 1);
#pragma unroll
        for (int l = 0; l < 32; l++) v[l] = d1 * (float)((q[l] >> sh) & 15) - m1;
    }
};

struct Q5K {
    static constexpr int QK = 256, BYTES = 176, CHUNKS = 8;
    static __device__ __forceinline__ void chunk(const u8* b, int c, float* v) {
        float d = h2f(ld16(b)), dmin = h2f(ld16(b + 2));
        float sc, m;
        scale_min_k4(c, b + 4, &sc, &m);
        float d1 = d * sc, m1 = dmin * m;
        const u8* qh = b + 16;
        const u8* q = b + 48 + 32 * (c >> 1);
        int sh = 4 * (c & 1);
#pragma unroll
        for (int l = 0; l < 32; l++) {
            int x = ((q[l] >> sh) & 15) | (((qh[l] >> c) & 1) << 4);
            v[l] = d1 * (float)x - m1;
        }
    }
};

struct Q6K {
    static constexpr int QK = 256, BYTES = 210, CHUNKS = 8;
    static __device__ __forceinline__ void chunk(const u8* b, int c, float* v) {
        const u8* ql = b;
        const u8* qh = b + 128;
        const i8* scales = (const i8*)(b + 192);
        float d = h2f(ld16(b + 208));
        int n = c >> 2, k = c & 3;
        const u8* l4 = ql + n * 64 + (k & 1) * 32;
        const u8* h2 = qh + n * 32;
        int sh = (k >> 1) * 4;
        float d0 = d * (float)scales[n * 8 + 2 * k];
        float d1 = d * (float)scales[n * 8 + 2 * k + 1];
#pragma unroll
        for (int l = 0; l < 32; l++) {
            int x = ((l4[l] >> sh) & 15) | (((h2[l] >> (2 * k)) & 3) << 4);
            v[l] = (l < 16 ? d0 : d1) * (float)(x - 32);
        }
    }
};

// Element i of a row of a float type.
__device__ __forceinline__ float ld_f32(const u8* row, int i) { return ((const float*)row)[i]; }
__device__ __forceinline__ float ld_f16(const u8* row, int i) { return h2f(((const u16*)row)[i]); }
__device__ __forceinline__ float ld_bf16(const u8* row, int i) { return bf2f(((const u16*)row)[i]); }
