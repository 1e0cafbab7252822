// Helpers of the tensor-core prefill path: weight rows dequantized to f16 tiles and activations
// converted to f16 / bf16, for cuBLAS GEMMs with f32 accumulation. Launch with 256 threads.

__device__ __forceinline__ u16 f2bf(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40u);  // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
    return (u16)(u >> 16);
}

// Two values rounded to f16 (kind 1) or bf16 (kind 2), the first in the low half.
__device__ __forceinline__ u32 half2_bits(float a, float b, int kind) {
    return kind == 1 ? (u32)f2h(a) | ((u32)f2h(b) << 16) : (u32)f2bf(a) | ((u32)f2bf(b) << 16);
}

// out (f16, rows x cols) = the rows of w starting at `row0`; one thread per 32-element chunk.
// The chunks of a block are one contiguous piece of `out` (rows are whole chunks), so each
// thread's 64 bytes go through shared memory and the block stores the piece with consecutive
// 16-byte stores (a thread storing its own 64 bytes left every store instruction of a warp
// spread over 2 KB). Slots are swizzled so that neither side has bank conflicts.
template <class T>
__device__ __forceinline__ void dequant_f16(const u8* __restrict__ w, u16* __restrict__ out,
                                            int row0, int rows, int cols) {
    __shared__ uint4 st[256 * 4];
    long long g0 = (long long)blockIdx.x * 256;
    int t = threadIdx.x;
    int per_row = cols / 32;
    long long total = (long long)rows * per_row;
    if (g0 + t < total) {
        long long g = g0 + t;
        int r = (int)(g / per_row), c = (int)(g % per_row);
        const u8* wr = w + (size_t)(row0 + r) * (size_t)(cols / T::QK) * T::BYTES;
        float v[32];
        T::chunk(wr + (c / T::CHUNKS) * T::BYTES, c % T::CHUNKS, v);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            uint4 p;
            p.x = half2_bits(v[8 * k], v[8 * k + 1], 1);
            p.y = half2_bits(v[8 * k + 2], v[8 * k + 3], 1);
            p.z = half2_bits(v[8 * k + 4], v[8 * k + 5], 1);
            p.w = half2_bits(v[8 * k + 6], v[8 * k + 7], 1);
            st[t * 4 + (k ^ ((t >> 1) & 3))] = p;
        }
    }
    __syncthreads();
    uint4* o = (uint4*)(out + g0 * 32);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int j = t + 256 * i, chunk = j >> 2, k = j & 3;
        if (g0 + chunk < total) o[j] = st[chunk * 4 + (k ^ ((chunk >> 1) & 3))];
    }
}

#define DEQUANT_F16(NAME, T)                                                                    \
    extern "C" __global__ void dequant_f16_##NAME(const u8* w, u16* out, int row0, int rows,     \
                                                  int cols) {                                   \
        pdl_entry();                                                                            \
        dequant_f16<T>(w, out, row0, rows, cols);                                               \
    }

DEQUANT_F16(q4_0, Q4_0)
DEQUANT_F16(q4_1, Q4_1)
DEQUANT_F16(q5_0, Q5_0)
DEQUANT_F16(q5_1, Q5_1)
DEQUANT_F16(q8_0, Q8_0)
DEQUANT_F16(q4_k, Q4K)
DEQUANT_F16(q5_k, Q5K)
DEQUANT_F16(q6_k, Q6K)

// y = x rounded to f16 (kind 1) or bf16 (kind 2), n elements; 8 a thread, with two 16-byte
// loads and one 16-byte store where both arrays are 16-byte aligned.
extern "C" __global__ void to_half(const float* __restrict__ x, u16* __restrict__ y, long long n,
                                   int kind) {
    pdl_entry();
    long long i = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    if (i + 8 <= n && (((size_t)x | (size_t)y) & 15) == 0) {
        float4 a = *(const float4*)(x + i), b = *(const float4*)(x + i + 4);
        uint4 p;
        p.x = half2_bits(a.x, a.y, kind);
        p.y = half2_bits(a.z, a.w, kind);
        p.z = half2_bits(b.x, b.y, kind);
        p.w = half2_bits(b.z, b.w, kind);
        *(uint4*)(y + i) = p;
        return;
    }
    for (long long k = i; k < n && k < i + 8; k++) y[k] = kind == 1 ? f2h(x[k]) : f2bf(x[k]);
}
