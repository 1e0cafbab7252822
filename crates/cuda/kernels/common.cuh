// Shared helpers, prepended to every kernel file before NVRTC compiles it (no system headers:
// NVRTC needs none of them for this code).

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;

#define NEG_INF __int_as_float(0xff800000)

// The first statement of every kernel (compile.rs checks it). On sm_90 the host launches
// kernels with programmatic dependent launch (backend/launch.rs): a kernel may be scheduled
// while the one ahead of it in the stream still runs, and waits here until that one has
// completed and its writes are visible, so it reads and writes nothing early; then it lets the
// next kernel be scheduled, so that kernel's launch overlaps this one's run instead of
// following its end.
__device__ __forceinline__ void pdl_entry() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// f16 <-> f32 through PTX conversions (round to nearest even), so that no cuda_fp16.h is needed.
__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("{ .reg .b16 t; mov.b16 t, %1; cvt.f32.f16 %0, t; }" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("{ .reg .b16 t; cvt.rn.f16.f32 t, %1; mov.b16 %0, t; }" : "=h"(h) : "f"(f));
    return h;
}

// The shared-memory address of a generic pointer into shared memory.
__device__ __forceinline__ u32 smem_addr(const void* p) {
    unsigned long long a;
    asm("cvta.to.shared.u64 %0, %1;" : "=l"(a) : "l"(p));
    return (u32)a;
}

// Asynchronous global -> shared copies (sm_80): 16 or 8 bytes, or zeros where !ok (a source
// size of 0 fills the destination with zeros; src must still be a valid address).
__device__ __forceinline__ void cp_async(void* dst, const void* src, bool ok) {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(ok ? 16 : 0));
#endif
}
__device__ __forceinline__ void cp_async8(void* dst, const void* src, bool ok) {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(ok ? 8 : 0));
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}
__device__ __forceinline__ void cp_async_wait_all() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group 0;" ::: "memory");
#endif
}
// Waits for all but the latest committed group.
__device__ __forceinline__ void cp_async_wait_but_one() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group 1;" ::: "memory");
#endif
}

// c += A B on the f16 tensor cores (sm_80+), f32 accumulate: A 16 x 16 row-major in the
// m16n8k16 fragment layout (lane 4g + q: a0 = A[g][2q..], a1 = A[g + 8][2q..], a2 = A[g][2q + 8..],
// a3 = A[g + 8][2q + 8..]), B 16 x 8 (b0 = B[2q..][g], b1 = B[2q + 8..][g]), C 16 x 8
// (c0, c1 = C[g][2q..], c2, c3 = C[g + 8][2q..]).
__device__ __forceinline__ void mma_f16(float (&c)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0,
                                        u32 b1) {
#if __CUDA_ARCH__ >= 800
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
    __trap();
#endif
}

__device__ __forceinline__ float bf2f(u16 h) { return __int_as_float(((u32)h) << 16); }

// Little-endian u16 at a 2-byte-aligned address.
__device__ __forceinline__ u16 ld16(const u8* p) { return *(const u16*)p; }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over a block of up to 1024 threads (blockDim.x a multiple of 32). Every thread gets it.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float part[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    int nw = blockDim.x >> 5;
    v = lane < nw ? part[lane] : 0.0f;
    return warp_sum(v);
}

// Rotary embedding of pair i of the head at hp, at position pos: angles in double precision
// like the CPU reference (positions reach the thousands, where f32 angles lose ~1e-4 rad).
// layout 0 = normal (pairs 2i, 2i+1), 1 = NEOX (pairs i, i + rope_dim/2).
__device__ __forceinline__ void rope_pair(float* hp, int i, u32 pos, int rope_dim, float theta,
                                          float scale, int layout) {
    int half = rope_dim / 2;
    // theta^(-2i/rope_dim) through exp2 and log2, and sine and cosine from one range
    // reduction: cheaper than pow, cos and sin apart. exp2 of the product is a few tens of f64
    // ulps from pow at most, far below the f32 result's last bit in all but rare cases.
    double inv_freq = exp2(-2.0 * (double)i / (double)rope_dim * log2((double)theta));
    double ang = ((double)pos / (double)scale) * inv_freq, sd, cd;
    sincos(ang, &sd, &cd);
    float c = (float)cd, s = (float)sd;
    int a = layout == 0 ? 2 * i : i;
    int b = layout == 0 ? 2 * i + 1 : i + half;
    float x0 = hp[a], x1 = hp[b];
    hp[a] = x0 * c - x1 * s;
    hp[b] = x0 * s + x1 * c;
}

// Where element i of rows of 32-element groups goes in the f16 mmq kernels' activations
// (mmq.cu, half_mma_input): group lane q's 8 values are x[4q], x[4q+2], x[4q+1], x[4q+3], then
// the same of x[16+4q..].
__device__ __forceinline__ long long half_mma_pos(long long i) {
    const int e = (int)(i & 31), r = e & 3;
    return (i & ~31LL) + 8 * ((e >> 2) & 3) + 4 * (e >> 4) + (((r & 1) << 1) | (r >> 1));
}

// Element i of a matmul input's f16 copy, written by the kernel that writes the input: in the
// f16 mmq kernels' order (half_mma_pos), or in plain row order (what to_half writes, for
// cuBLAS) where the address has its low bit set (backend/fused.rs, act_slot).
__device__ __forceinline__ void put_half(u16* xm, long long i, float v) {
    size_t p = (size_t)xm;
    if (p & 1) ((u16*)(p - 1))[i] = f2h(v);
    else xm[half_mma_pos(i)] = f2h(v);
}

// 8-bit quantization of 32 values, one per lane of a full warp, as quantize_q8_1 (mmvq.cu)
// does it: d = amax / 127, q = rint(v / d); lane 0 writes (d, d * sum q).
__device__ __forceinline__ void q8_warp(float v, i8* xq, float2* xds) {
    int lane = threadIdx.x & 31;
    float amax = warp_max(fabsf(v));
    float d = amax / 127.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    int q = __float2int_rn(v * id);
    xq[lane] = (i8)q;
    float s = warp_sum((float)q);
    if (lane == 0) *xds = make_float2(d, d * s);
}

// act 0: SiLU, 1: GELU (tanh approximation): the glu kernels' activation (elementwise.cu, and
// matvec.cu's, which apply it to the gate rows they compute).
__device__ __forceinline__ float glu_act(float g, int act) {
    if (act == 0) return g / (1.0f + expf(-g));
    const float k = 0.7978845608f;
    return 0.5f * g * (1.0f + tanhf(k * (g + 0.044715f * g * g * g)));
}

// The matrices of one matmul launch: up to three weights that multiply the same input (q, k and
// v; gate and up), each with its own output and row count. Blocks 0 .. n0 - 1 take matrix 0, the
// next n1 blocks matrix 1, the rest matrix 2; a plain matmul is a group of one. The layout
// matches `Group` in backend/matmul.rs.
struct Group {
    const u8* w0;
    const u8* w1;
    const u8* w2;
    float* o0;
    float* o1;
    float* o2;
    int r0, r1, r2;
    int n0, n1, n2;
};

// This block's matrix (weights, output, rows) and the block's index within that matrix.
__device__ __forceinline__ int group_pick(const Group& g, const u8*& w, float*& out, int& rows) {
    int b = blockIdx.x;
    if (b < g.n0) {
        w = g.w0, out = g.o0, rows = g.r0;
        return b;
    }
    b -= g.n0;
    if (b < g.n1) {
        w = g.w1, out = g.o1, rows = g.r1;
        return b;
    }
    w = g.w2, out = g.o2, rows = g.r2;
    return b - g.n1;
}

// Which of the group's matrices (0, 1 or 2) this block works on, as `group_pick` chooses.
__device__ __forceinline__ int group_matrix(const Group& g) {
    const int b = blockIdx.x;
    return b < g.n0 ? 0 : b < g.n0 + g.n1 ? 1 : 2;
}

// The attention kernels' parameters (attention.cu, flash.cu); the layout matches `AttnArgs` in
// backend/attention.rs.
struct AttnArgs {
    const float* q;         // [T, n_head * hd]
    const u8* kc;           // [n_slots, kv_dim]
    const u8* vc;           // [n_slots, kv_dim]
    const u32* positions;   // [T]
    const u32* seq_of;      // [T]
    const u32* table_off;   // [n_seqs]: start of each sequence's block table in `tables`
    const u32* tables;      // concatenated block tables
    float* out;             // [T, n_head * hd]
    float* part;            // [T, n_head, splits, hd + 2] when gridDim.z > 1
    int block_size, kv_dim, n_head, n_head_kv, hd, window;  // window 0: none
    float scale;
    size_t sc_off;          // q8_0: the scales' byte offset in kc and vc
    i8* xq;                 // not null: out's 8-bit copy for the next matmul (hd % 32 == 0)
    float2* xds;
    u16* xm;                // not null: out's f16 copy for the f16 mmq kernels
    int n_tokens;           // T (the flash kernel's tiles; the others have a block per token)
};
