// The KV cache and causal grouped-query attention over it.
//
// Cache layout per layer: K and V each `n_slots x kv_dim` elements of one type (KT): f32, f16,
// fp8 (E4M3, as crates/model/src/cpu/fp8.rs: ties to even, saturating at 448) or q8_0 (int8
// values, then at byte `sc_off` one f16 scale per 32 values, quantized as llama.cpp's run-time
// quantizer: d = amax / 127, q = rint(x * 127 / amax)). A token's slot is block * block_size +
// offset, and each sequence's block table maps its positions to blocks.
// Attention: one block per (query head, token, split); its warps take keys round-robin, each
// keeping an online softmax (running max, sum and value accumulator in f32), and merge at the
// end. Queries are rounded to the cache's element type first, as the CPU reference does.
//
// Split-K (flash decoding): a decode step has only n_head blocks per token, too few to read a
// long context at the GPU's bandwidth, so the keys of each token are cut into gridDim.z ranges
// of ceil(len / splits) keys; each block writes its unnormalized partial (max, sum, values) to
// `part`, and attention_merge combines them. With one split the block writes the output itself.

#define ATT_WARPS 8
#define MAX_HD 256

#define KT_F32 0
#define KT_F16 1
#define KT_FP8 2
#define KT_Q8 3

// f32 -> E4M3: nearest, ties to even, saturated to +-448; NaN stays NaN.
__device__ __forceinline__ u8 f2e4m3(float x) {
    u32 bits = __float_as_uint(x);
    u8 sign = (bits >> 24) & 0x80;
    float a = fabsf(x);
    if (isnan(a)) return sign | 0x7F;
    if (a >= 448.0f) return sign | 0x7E;
    int exp = (int)((bits >> 23) & 0xFF) - 127;
    if (exp < -6) return sign | (u8)__float2int_rn(a * 512.0f);  // subnormal: multiples of 2^-9
    u32 m = bits & 0x7FFFFF, mant = m >> 20, rest = m & 0xFFFFF;
    if (rest > 0x80000 || (rest == 0x80000 && (mant & 1))) mant++;
    u32 e = (u32)(exp + 7);
    if (mant == 8) {
        mant = 0;
        e++;
    }
    return sign | (u8)min((e << 3) | mant, 0x7Eu);
}

// E4M3 -> f32, exact: the code's exponent and mantissa bits placed in an f32 (bias 127 instead of
// 7, so scaled by 2^120; code 0 exponent lands on f32 subnormals, which scale right too).
__device__ __forceinline__ float e4m3f(u32 b) {
    u32 mag = b & 0x7F;
    if (mag == 0x7F) return __int_as_float(0x7fc00000);
    return __uint_as_float(((b & 0x80) << 24) | (mag << 20)) * 0x1p120f;
}

// Element i of a cache (q8_0: its scale at byte sc_off).
template <int KT>
__device__ __forceinline__ float kv_ld(const u8* base, size_t sc_off, size_t i) {
    if (KT == KT_F32) return ((const float*)base)[i];
    if (KT == KT_F16) return h2f(((const u16*)base)[i]);
    if (KT == KT_FP8) return e4m3f(base[i]);
    return (float)((const i8*)base)[i] * h2f(((const u16*)(base + sc_off))[i / 32]);
}

// Stores v as element i. q8_0 quantizes 32 values together: every lane of the warp stores
// element i0 + lane of a 32-aligned group, so loops over a row whose width is a multiple of 32
// with a multiple of 32 threads keep whole warps together.
template <int KT>
__device__ __forceinline__ void kv_st(u8* base, size_t sc_off, size_t i, float v) {
    if (KT == KT_F32) {
        ((float*)base)[i] = v;
    } else if (KT == KT_F16) {
        ((u16*)base)[i] = f2h(v);
    } else if (KT == KT_FP8) {
        base[i] = f2e4m3(v);
    } else {
        float amax = warp_max(fabsf(v));
        float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        ((i8*)base)[i] = (i8)__float2int_rn(v * id);
        if ((threadIdx.x & 31) == 0) ((u16*)(base + sc_off))[i / 32] = f2h(amax / 127.0f);
    }
}

// What a query becomes before the scores, as the CPU rounds it: f16 for an f16 cache, llama.cpp's
// q8_0 round trip for a q8_0 cache (x is lane's element of a 32-aligned group), else unchanged.
template <int KT>
__device__ __forceinline__ float round_query(float x) {
    if (KT == KT_F16) return h2f(f2h(x));
    if (KT == KT_Q8) {
        float amax = warp_max(fabsf(x));
        float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        return (float)(i8)__float2int_rn(x * id) * h2f(f2h(amax / 127.0f));
    }
    return x;
}

// kc[slots[t]] = k[t], vc[slots[t]] = v[t]. Grid (tokens), threads over kv_dim.
template <int KT>
__device__ __forceinline__ void kv_store(u8* kc, u8* vc, const float* __restrict__ k,
                                         const float* __restrict__ v, const u32* __restrict__ slots,
                                         int kv_dim, size_t sc_off) {
    int t = blockIdx.x;
    size_t dst = (size_t)slots[t] * kv_dim;
    for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) {
        kv_st<KT>(kc, sc_off, dst + i, k[(size_t)t * kv_dim + i]);
        kv_st<KT>(vc, sc_off, dst + i, v[(size_t)t * kv_dim + i]);
    }
}

#define KV_STORE(NAME, KT)                                                                      \
    extern "C" __global__ void NAME(u8* kc, u8* vc, const float* k, const float* v,             \
                                    const u32* slots, int kv_dim, size_t sc_off) {              \
        pdl_entry();                                                                            \
        kv_store<KT>(kc, vc, k, v, slots, kv_dim, sc_off);                                      \
    }
KV_STORE(kv_store_f32, KT_F32)
KV_STORE(kv_store_f16, KT_F16)
KV_STORE(kv_store_fp8, KT_FP8)
KV_STORE(kv_store_q8_0, KT_Q8)

// rope of every head of q and k (in place, rope_pair), then k and v written to their KV slots.
// Grid (T, n_head + n_head_kv): block y < n_head rotates query head y; block n_head + j rotates
// key head j and writes key and value head j to the token's slot.
template <int KT>
__device__ __forceinline__ void rope_store(float* q, float* k, const float* __restrict__ v,
                                           const u32* __restrict__ positions,
                                           const u32* __restrict__ slots, u8* kc, u8* vc,
                                           int q_cols, int kv_dim, int head_dim, int rope_dim,
                                           float theta, float scale, int layout,
                                           size_t sc_off) {
    int t = blockIdx.x, half = rope_dim / 2;
    int nq = q_cols / head_dim;
    u32 pos = positions[t];
    int y = blockIdx.y;
    float* hp = y < nq ? q + (size_t)t * q_cols + (size_t)y * head_dim
                       : k + (size_t)t * kv_dim + (size_t)(y - nq) * head_dim;
    for (int i = threadIdx.x; i < half; i += blockDim.x)
        rope_pair(hp, i, pos, rope_dim, theta, scale, layout);
    if (y < nq) return;
    __syncthreads();
    size_t off = (size_t)(y - nq) * head_dim;
    size_t dst = (size_t)slots[t] * kv_dim + off;
    const float* vr = v + (size_t)t * kv_dim + off;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        kv_st<KT>(kc, sc_off, dst + i, hp[i]);
        kv_st<KT>(vc, sc_off, dst + i, vr[i]);
    }
}

#define ROPE_STORE(NAME, KT)                                                                    \
    extern "C" __global__ void NAME(float* q, float* k, const float* v, const u32* positions,    \
                                    const u32* slots, u8* kc, u8* vc, int q_cols, int kv_dim,    \
                                    int head_dim, int rope_dim, float theta, float scale,        \
                                    int layout, size_t sc_off) {                                \
        pdl_entry();                                                                            \
        rope_store<KT>(q, k, v, positions, slots, kc, vc, q_cols, kv_dim, head_dim, rope_dim,    \
                       theta, scale, layout, sc_off);                                           \
    }
ROPE_STORE(rope_store_f32, KT_F32)
ROPE_STORE(rope_store_f16, KT_F16)
ROPE_STORE(rope_store_fp8, KT_FP8)
ROPE_STORE(rope_store_q8_0, KT_Q8)

// out[e] = o, element e of the attention output, with its 8-bit and f16 copies where the next
// matmul reads them (`xq`, `xm` not null). The 8-bit copy needs the 32 lanes of a warp on the 32
// elements of one group, lane i on element e with e % 32 == i: the callers' loops run whole
// warps over head dims that are multiples of 32 when xq is set.
__device__ __forceinline__ void attn_put(float* out, i8* xq, float2* xds, u16* xm, size_t e,
                                         float o) {
    out[e] = o;
    if (xq != nullptr) q8_warp(o, xq + (e & ~(size_t)31), xds + e / 32);
    if (xm != nullptr) put_half(xm, (long long)e, o);
}

// The keys lo..=hi this block takes of a token at `pos`: those in the window, cut into gridDim.z
// ranges of which it takes range blockIdx.z (empty, lo > hi, past the end).
__device__ __forceinline__ void key_range(const AttnArgs& a, int pos, int& lo, int& hi) {
    lo = a.window > 0 ? max(0, pos + 1 - a.window) : 0;
    hi = pos;
    int splits = gridDim.z;
    if (splits > 1) {
        int chunk = (pos + 1 - lo + splits - 1) / splits;
        lo += blockIdx.z * chunk;
        hi = min(pos, lo + chunk - 1);
    }
}

template <int KT>
__device__ __forceinline__ void attention(const AttnArgs& a) {
    __shared__ float s_m[ATT_WARPS], s_s[ATT_WARPS];
    __shared__ float s_acc[ATT_WARPS][MAX_HD];
    const int PER = MAX_HD / 32;
    int h = blockIdx.x, t = blockIdx.y;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int hd = a.hd;
    int qd = a.n_head * hd;
    int kh = (h / (a.n_head / a.n_head_kv)) * hd;
    int pos = (int)a.positions[t];
    const u32* table = a.tables + a.table_off[a.seq_of[t]];
    int lo, hi, splits = gridDim.z;
    key_range(a, pos, lo, hi);

    float qv[PER], acc[PER];
#pragma unroll
    for (int i = 0; i < PER; i++) {
        int d = lane + 32 * i;
        float x = d < hd ? a.q[(size_t)t * qd + (size_t)h * hd + d] : 0.0f;
        qv[i] = round_query<KT>(x);
        acc[i] = 0.0f;
    }
    float m = NEG_INF, s = 0.0f;
    for (int j = lo + warp; j <= hi; j += ATT_WARPS) {
        size_t base = ((size_t)table[j / a.block_size] * a.block_size + j % a.block_size) *
                          (size_t)a.kv_dim + kh;
        float p = 0.0f;
#pragma unroll
        for (int i = 0; i < PER; i++) {
            int d = lane + 32 * i;
            if (d < hd) p += qv[i] * kv_ld<KT>(a.kc, a.sc_off, base + d);
        }
        float sc = warp_sum(p) * a.scale;
        float mn = fmaxf(m, sc);
        float ms = expf(m - mn), vs = expf(sc - mn);
        m = mn;
        s = s * ms + vs;
#pragma unroll
        for (int i = 0; i < PER; i++) {
            int d = lane + 32 * i;
            if (d < hd) acc[i] = acc[i] * ms + vs * kv_ld<KT>(a.vc, a.sc_off, base + d);
        }
    }
    if (lane == 0) {
        s_m[warp] = m;
        s_s[warp] = s;
    }
#pragma unroll
    for (int i = 0; i < PER; i++) {
        int d = lane + 32 * i;
        if (d < hd) s_acc[warp][d] = acc[i];
    }
    __syncthreads();
    if (warp != 0) return;
    float gm = NEG_INF;
    for (int w = 0; w < ATT_WARPS; w++) gm = fmaxf(gm, s_m[w]);
    float gs = 0.0f;
    float f[ATT_WARPS];
    for (int w = 0; w < ATT_WARPS; w++) {
        f[w] = s_m[w] == NEG_INF ? 0.0f : expf(s_m[w] - gm);
        gs += s_s[w] * f[w];
    }
    if (splits > 1) {
        float* p = a.part + (((size_t)t * a.n_head + h) * splits + blockIdx.z) * (hd + 2);
        if (lane == 0) {
            p[0] = gm;
            p[1] = gs;
        }
        for (int d = lane; d < hd; d += 32) {
            float o = 0.0f;
            for (int w = 0; w < ATT_WARPS; w++) o += s_acc[w][d] * f[w];
            p[2 + d] = o;
        }
        return;
    }
    float inv = gs == 0.0f ? 0.0f : 1.0f / gs;
    for (int d = lane; d < hd; d += 32) {
        float o = 0.0f;
        for (int w = 0; w < ATT_WARPS; w++) o += s_acc[w][d] * f[w];
        attn_put(a.out, a.xq, a.xds, a.xm, (size_t)t * qd + (size_t)h * hd + d, o * inv);
    }
}

extern "C" __global__ void attention_f32(AttnArgs a) { pdl_entry(); attention<KT_F32>(a); }
extern "C" __global__ void attention_f16(AttnArgs a) { pdl_entry(); attention<KT_F16>(a); }
extern "C" __global__ void attention_fp8(AttnArgs a) { pdl_entry(); attention<KT_FP8>(a); }
extern "C" __global__ void attention_q8_0(AttnArgs a) { pdl_entry(); attention<KT_Q8>(a); }

// Combines the `splits` partials of each (query head, token): grid (n_head, T), one warp; and
// the output's 8-bit and f16 copies as `attention` writes them.
extern "C" __global__ void attention_merge(const float* __restrict__ part, float* __restrict__ out,
                                           int n_head, int hd, int splits, i8* xq, float2* xds,
                                           u16* xm) {
    pdl_entry();
    int h = blockIdx.x, t = blockIdx.y, lane = threadIdx.x;
    const float* p = part + ((size_t)t * n_head + h) * splits * (hd + 2);
    float gm = NEG_INF;
    for (int z = 0; z < splits; z++) gm = fmaxf(gm, p[(size_t)z * (hd + 2)]);
    float gs = 0.0f;
    for (int z = 0; z < splits; z++) {
        float m = p[(size_t)z * (hd + 2)];
        if (m != NEG_INF) gs += p[(size_t)z * (hd + 2) + 1] * expf(m - gm);
    }
    float inv = gs == 0.0f ? 0.0f : 1.0f / gs;
    for (int d = lane; d < hd; d += 32) {
        float o = 0.0f;
        for (int z = 0; z < splits; z++) {
            float m = p[(size_t)z * (hd + 2)];
            if (m != NEG_INF) o += p[(size_t)z * (hd + 2) + 2 + d] * expf(m - gm);
        }
        attn_put(out, xq, xds, xm, (size_t)t * n_head * hd + (size_t)h * hd + d, o * inv);
    }
}

// Grouped-query attention over an f16, fp8 or q8_0 cache, for head dims of 32, 64, 128 or 256: one block of
// GQA_WARPS warps per (NG query heads that share a KV head, token, split), so each key and value
// row is read once for the NG heads instead of once per head. The NG queries (rounded to f16, as
// in `attention`) sit in shared memory. A warp takes 32 keys at a time: each lane scores one key
// (its whole K row, 16-byte loads) against the NG queries, the warp keeps an online softmax per
// head (running max warp-uniform, partial sums per lane), and then walks the 32 values: LPR =
// HD / 8 lanes cover a value row with 16-byte loads, so the warp takes 32 / LPR rows per step,
// each lane summing its 8 dimensions over its own subset of the keys until the end, when the
// subsets are added up. The warps merge at the end, and with several splits each block writes
// the same partials as `attention`, which attention_merge combines.
//
// Staged (an f16 cache of head dim 64 or 128, on the parts whose SMs hold two staged blocks or
// more): each warp's 32 K and V rows come into shared memory by cp.async instead of registers,
// the K rows a batch ahead, so that the warp scores a batch while its values load and sums the
// values while the next batch's keys load. The arithmetic and its order are those of the direct
// loads. A K row is padded by 16 bytes, so that lanes reading 16 bytes of their own rows hit
// distinct banks. The end's per-warp sums go to the same (dynamic) shared memory, after the
// loop. A block takes 67.6 KiB at head dim 128: sm_80, sm_87, sm_90, sm_100 and sm_103 hold 164
// KiB or more an SM; the others (sm_86, sm_89, sm_120: ~100 KiB) would run one block an SM, and
// keep the direct loads. `stages_gqa` in backend/attention.rs is the host's copy of this list.
#define GQA_WARPS 4
#if __CUDA_ARCH__ == 800 || __CUDA_ARCH__ == 870 || __CUDA_ARCH__ == 900 || \
    __CUDA_ARCH__ == 1000 || __CUDA_ARCH__ == 1030
#define GQA_CAN_STAGE 1
#else
#define GQA_CAN_STAGE 0
#endif

// Elements e .. e + 7 of a cache (e a multiple of 8) as floats: one 16-byte load for f16, one
// 8-byte load for the 8-bit types (and the group's scale for q8_0).
template <int KT>
__device__ __forceinline__ void kv_ld8(const u8* base, size_t sc_off, size_t e, float* f) {
    if (KT == KT_F16) {
        uint4 a = *(const uint4*)((const u16*)base + e);
        u32 w[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            f[2 * i] = h2f((u16)w[i]);
            f[2 * i + 1] = h2f((u16)(w[i] >> 16));
        }
    } else {
        uint2 a = *(const uint2*)(base + e);
        u32 w[2] = {a.x, a.y};
        float d = KT == KT_Q8 ? h2f(((const u16*)(base + sc_off))[e / 32]) : 0.0f;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            u32 b = (w[i / 4] >> (8 * (i % 4))) & 0xFF;
            f[i] = KT == KT_FP8 ? e4m3f(b) : (float)(i8)b * d;
        }
    }
}

// Copies the HD-half rows at column kh of the slots that lanes 0..31 hold into dst (a row every
// LD halves), 16 bytes a lane at a time with a row's pieces on consecutive lanes, as one
// cp.async group.
template <int HD, int LD>
__device__ __forceinline__ void gqa_stage_rows(u16* dst, const u8* cache, u32 slot, int kv_dim,
                                               int kh, int lane) {
    constexpr int CH = HD / 8;
#pragma unroll
    for (int it = 0; it < CH; it++) {
        int i = it * 32 + lane, r = i / CH, c = i % CH;
        u32 s = __shfl_sync(0xffffffffu, slot, r);
        cp_async(dst + r * LD + c * 8, (const u16*)cache + (size_t)s * kv_dim + kh + c * 8, true);
    }
    cp_async_commit();
}

template <int KT, int HD, int NG>
__device__ __forceinline__ void attn_gqa(const AttnArgs& a) {
    constexpr int LPR = HD / 8, KPI = 32 / LPR;
    constexpr bool ST = GQA_CAN_STAGE && KT == KT_F16 && (HD == 64 || HD == 128);
    constexpr int KLD = HD + 8;  // a staged K row's stride in halves
    __shared__ __align__(16) float s_q[NG][HD];
    __shared__ float s_m[GQA_WARPS][NG], s_l[GQA_WARPS][NG];
    // [GQA_WARPS][NG][HD] floats at the end; while staged, before that, each warp's K and V rows.
    extern __shared__ __align__(16) u8 gqa_smem[];
    float(*s_acc)[NG][HD] = (float(*)[NG][HD])gqa_smem;
    const u32 FULL = 0xffffffffu;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    u16* sk = (u16*)gqa_smem + warp * 32 * (KLD + HD);
    u16* sv = sk + 32 * KLD;
    int h0 = blockIdx.x * NG, t = blockIdx.y;
    int qd = a.n_head * HD;
    int kh = (h0 / (a.n_head / a.n_head_kv)) * HD;
    int pos = (int)a.positions[t];
    const u32* table = a.tables + a.table_off[a.seq_of[t]];
    int lo, hi, splits = gridDim.z;
    key_range(a, pos, lo, hi);
    // The slot of this lane's key of the batch at `base`; lanes past the end take the last key
    // (and weigh it 0).
    auto slot_at = [&](int base) {
        int j = min(base + lane, hi);
        return table[j / a.block_size] * (u32)a.block_size + (u32)(j % a.block_size);
    };
    u32 slot = 0;
    if (ST && lo + warp * 32 <= hi) {
        slot = slot_at(lo + warp * 32);
        gqa_stage_rows<HD, KLD>(sk, a.kc, slot, a.kv_dim, kh, lane);
    }
    // Heads h0 .. h0 + NG - 1 are contiguous in the token's query row.
    for (int i = threadIdx.x; i < NG * HD; i += blockDim.x) {
        float x = a.q[(size_t)t * qd + (size_t)h0 * HD + i];
        s_q[i / HD][i % HD] = round_query<KT>(x);
    }
    __syncthreads();

    float m[NG], l[NG], acc[NG][8];
#pragma unroll
    for (int g = 0; g < NG; g++) {
        m[g] = NEG_INF;
        l[g] = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; i++) acc[g][i] = 0.0f;
    }
    const size_t vh = kh + (lane % LPR) * 8;
    for (int base = lo + warp * 32; base <= hi; base += GQA_WARPS * 32) {
        // This lane's key.
        bool valid = base + lane <= hi;
        if (ST) {
            // This batch's values load while its keys (staged a batch ago) are scored.
            gqa_stage_rows<HD, HD>(sv, a.vc, slot, a.kv_dim, kh, lane);
            cp_async_wait_but_one();
            __syncwarp();
        } else {
            slot = slot_at(base);
        }
        const size_t kr = (size_t)slot * a.kv_dim + kh;
        float s[NG];
#pragma unroll
        for (int g = 0; g < NG; g++) s[g] = 0.0f;
#pragma unroll
        for (int c = 0; c < HD / 8; c++) {
            float kf[8];
            if (ST) {
                kv_ld8<KT>((const u8*)(sk + lane * KLD), 0, 8 * c, kf);
            } else {
                kv_ld8<KT>(a.kc, a.sc_off, kr + 8 * c, kf);
            }
#pragma unroll
            for (int g = 0; g < NG; g++) {
                float4 q0 = *(const float4*)&s_q[g][8 * c];
                float4 q1 = *(const float4*)&s_q[g][8 * c + 4];
                s[g] += q0.x * kf[0] + q0.y * kf[1] + q0.z * kf[2] + q0.w * kf[3] +
                        q1.x * kf[4] + q1.y * kf[5] + q1.z * kf[6] + q1.w * kf[7];
            }
        }
        float p[NG];
#pragma unroll
        for (int g = 0; g < NG; g++) {
            float sc = valid ? s[g] * a.scale : NEG_INF;
            // Lane 0's key (base) is always in range, so the new maximum is finite.
            float mn = fmaxf(m[g], warp_max(sc));
            float alpha = expf(m[g] - mn);
            p[g] = valid ? expf(sc - mn) : 0.0f;
            l[g] = l[g] * alpha + p[g];
#pragma unroll
            for (int i = 0; i < 8; i++) acc[g][i] *= alpha;
            m[g] = mn;
        }
        u32 next = 0;
        if (ST) {
            // The next batch's keys load while this one's values are summed.
            __syncwarp();
            int nb = base + GQA_WARPS * 32;
            if (nb <= hi) {
                next = slot_at(nb);
                gqa_stage_rows<HD, KLD>(sk, a.kc, next, a.kv_dim, kh, lane);
            } else {
                cp_async_commit();  // an empty group keeps the count of groups to wait for
            }
            cp_async_wait_but_one();
            __syncwarp();
        }
#pragma unroll 8
        for (int it = 0; it < LPR; it++) {
            int k = it * KPI + lane / LPR;
            float vf[8];
            if (ST) {
                kv_ld8<KT>((const u8*)(sv + k * HD), 0, (lane % LPR) * 8, vf);
            } else {
                u32 sl = __shfl_sync(FULL, slot, k);
                kv_ld8<KT>(a.vc, a.sc_off, (size_t)sl * a.kv_dim + vh, vf);
            }
#pragma unroll
            for (int g = 0; g < NG; g++) {
                float pk = __shfl_sync(FULL, p[g], k);
#pragma unroll
                for (int i = 0; i < 8; i++) acc[g][i] += pk * vf[i];
            }
        }
        if (ST) {
            __syncwarp();  // the values are read before the next batch's copy lands
            slot = next;
        }
    }
    if (ST) {
        // The sums below overwrite other warps' staged rows.
        cp_async_wait_all();
        __syncthreads();
    }
#pragma unroll
    for (int g = 0; g < NG; g++) {
        float lt = warp_sum(l[g]);
        if (lane == 0) {
            s_m[warp][g] = m[g];
            s_l[warp][g] = lt;
        }
        // Add up the key subsets: lanes lane % LPR hold the same dimensions.
#pragma unroll
        for (int o = LPR; o < 32; o <<= 1)
#pragma unroll
            for (int i = 0; i < 8; i++) acc[g][i] += __shfl_xor_sync(FULL, acc[g][i], o);
        if (lane < LPR) {
#pragma unroll
            for (int i = 0; i < 8; i++) s_acc[warp][g][lane * 8 + i] = acc[g][i];
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < NG * HD; i += blockDim.x) {
        int g = i / HD, d = i % HD;
        float gm = NEG_INF;
#pragma unroll
        for (int w = 0; w < GQA_WARPS; w++) gm = fmaxf(gm, s_m[w][g]);
        float gs = 0.0f, o = 0.0f;
#pragma unroll
        for (int w = 0; w < GQA_WARPS; w++) {
            float f = s_m[w][g] == NEG_INF ? 0.0f : expf(s_m[w][g] - gm);
            gs += s_l[w][g] * f;
            o += s_acc[w][g][d] * f;
        }
        int h = h0 + g;
        if (splits > 1) {
            float* pp = a.part + (((size_t)t * a.n_head + h) * splits + blockIdx.z) * (HD + 2);
            if (d == 0) {
                pp[0] = gm;
                pp[1] = gs;
            }
            pp[2 + d] = o;
        } else {
            attn_put(a.out, a.xq, a.xds, a.xm, (size_t)t * qd + (size_t)h * HD + d,
                     o * (gs == 0.0f ? 0.0f : 1.0f / gs));
        }
    }
}

#define ATTN_GQA(NAME, KT, HD, NG)                                                              \
    extern "C" __global__ void __launch_bounds__(GQA_WARPS * 32) NAME(AttnArgs a) {             \
        pdl_entry();                                                                            \
        attn_gqa<KT, HD, NG>(a);                                                                \
    }
ATTN_GQA(attn_gqa_f16_32_1, KT_F16, 32, 1)
ATTN_GQA(attn_gqa_f16_32_2, KT_F16, 32, 2)
ATTN_GQA(attn_gqa_f16_32_4, KT_F16, 32, 4)
ATTN_GQA(attn_gqa_f16_32_8, KT_F16, 32, 8)
ATTN_GQA(attn_gqa_f16_64_1, KT_F16, 64, 1)
ATTN_GQA(attn_gqa_f16_64_2, KT_F16, 64, 2)
ATTN_GQA(attn_gqa_f16_64_4, KT_F16, 64, 4)
ATTN_GQA(attn_gqa_f16_64_8, KT_F16, 64, 8)
ATTN_GQA(attn_gqa_f16_128_1, KT_F16, 128, 1)
ATTN_GQA(attn_gqa_f16_128_2, KT_F16, 128, 2)
ATTN_GQA(attn_gqa_f16_128_4, KT_F16, 128, 4)
ATTN_GQA(attn_gqa_f16_128_8, KT_F16, 128, 8)
ATTN_GQA(attn_gqa_f16_256_1, KT_F16, 256, 1)
ATTN_GQA(attn_gqa_f16_256_2, KT_F16, 256, 2)
ATTN_GQA(attn_gqa_f16_256_4, KT_F16, 256, 4)
ATTN_GQA(attn_gqa_fp8_32_1, KT_FP8, 32, 1)
ATTN_GQA(attn_gqa_fp8_32_2, KT_FP8, 32, 2)
ATTN_GQA(attn_gqa_fp8_32_4, KT_FP8, 32, 4)
ATTN_GQA(attn_gqa_fp8_32_8, KT_FP8, 32, 8)
ATTN_GQA(attn_gqa_fp8_64_1, KT_FP8, 64, 1)
ATTN_GQA(attn_gqa_fp8_64_2, KT_FP8, 64, 2)
ATTN_GQA(attn_gqa_fp8_64_4, KT_FP8, 64, 4)
ATTN_GQA(attn_gqa_fp8_64_8, KT_FP8, 64, 8)
ATTN_GQA(attn_gqa_fp8_128_1, KT_FP8, 128, 1)
ATTN_GQA(attn_gqa_fp8_128_2, KT_FP8, 128, 2)
ATTN_GQA(attn_gqa_fp8_128_4, KT_FP8, 128, 4)
ATTN_GQA(attn_gqa_fp8_128_8, KT_FP8, 128, 8)
ATTN_GQA(attn_gqa_fp8_256_1, KT_FP8, 256, 1)
ATTN_GQA(attn_gqa_fp8_256_2, KT_FP8, 256, 2)
ATTN_GQA(attn_gqa_fp8_256_4, KT_FP8, 256, 4)
ATTN_GQA(attn_gqa_q8_0_32_1, KT_Q8, 32, 1)
ATTN_GQA(attn_gqa_q8_0_32_2, KT_Q8, 32, 2)
ATTN_GQA(attn_gqa_q8_0_32_4, KT_Q8, 32, 4)
ATTN_GQA(attn_gqa_q8_0_32_8, KT_Q8, 32, 8)
ATTN_GQA(attn_gqa_q8_0_64_1, KT_Q8, 64, 1)
ATTN_GQA(attn_gqa_q8_0_64_2, KT_Q8, 64, 2)
ATTN_GQA(attn_gqa_q8_0_64_4, KT_Q8, 64, 4)
ATTN_GQA(attn_gqa_q8_0_64_8, KT_Q8, 64, 8)
ATTN_GQA(attn_gqa_q8_0_128_1, KT_Q8, 128, 1)
ATTN_GQA(attn_gqa_q8_0_128_2, KT_Q8, 128, 2)
ATTN_GQA(attn_gqa_q8_0_128_4, KT_Q8, 128, 4)
ATTN_GQA(attn_gqa_q8_0_128_8, KT_Q8, 128, 8)
ATTN_GQA(attn_gqa_q8_0_256_1, KT_Q8, 256, 1)
ATTN_GQA(attn_gqa_q8_0_256_2, KT_Q8, 256, 2)
ATTN_GQA(attn_gqa_q8_0_256_4, KT_Q8, 256, 4)
