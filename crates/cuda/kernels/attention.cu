// The KV cache and causal grouped-query attention over it.
//
// Cache layout per layer: K and V each `n_slots x kv_dim`, element f16 or f32; a token's slot is
// block * block_size + offset, and each sequence's block table maps its positions to blocks.
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

template <bool F16>
__device__ __forceinline__ float kv_ld(const u8* base, size_t i) {
    return F16 ? h2f(((const u16*)base)[i]) : ((const float*)base)[i];
}

template <bool F16>
__device__ __forceinline__ void kv_st(u8* base, size_t i, float v) {
    if (F16) {
        ((u16*)base)[i] = f2h(v);
    } else {
        ((float*)base)[i] = v;
    }
}

// kc[slots[t]] = k[t], vc[slots[t]] = v[t]. Grid (tokens), threads over kv_dim.
template <bool F16>
__device__ __forceinline__ void kv_store(u8* kc, u8* vc, const float* __restrict__ k,
                                         const float* __restrict__ v, const u32* __restrict__ slots,
                                         int kv_dim) {
    int t = blockIdx.x;
    size_t dst = (size_t)slots[t] * kv_dim;
    for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) {
        kv_st<F16>(kc, dst + i, k[(size_t)t * kv_dim + i]);
        kv_st<F16>(vc, dst + i, v[(size_t)t * kv_dim + i]);
    }
}

extern "C" __global__ void kv_store_f16(u8* kc, u8* vc, const float* k, const float* v,
                                        const u32* slots, int kv_dim) {
    kv_store<true>(kc, vc, k, v, slots, kv_dim);
}

extern "C" __global__ void kv_store_f32(u8* kc, u8* vc, const float* k, const float* v,
                                        const u32* slots, int kv_dim) {
    kv_store<false>(kc, vc, k, v, slots, kv_dim);
}

// rope of every head of q and k (in place, rope_pair), then k and v written to their KV slots.
// Grid (T, n_head + n_head_kv): block y < n_head rotates query head y; block n_head + j rotates
// key head j and writes key and value head j to the token's slot.
template <bool F16>
__device__ __forceinline__ void rope_store(float* q, float* k, const float* __restrict__ v,
                                           const u32* __restrict__ positions,
                                           const u32* __restrict__ slots, u8* kc, u8* vc,
                                           int q_cols, int kv_dim, int head_dim, int rope_dim,
                                           float theta, float scale, int layout) {
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
        kv_st<F16>(kc, dst + i, hp[i]);
        kv_st<F16>(vc, dst + i, vr[i]);
    }
}

#define ROPE_STORE(NAME, F16)                                                                   \
    extern "C" __global__ void NAME(float* q, float* k, const float* v, const u32* positions,    \
                                    const u32* slots, u8* kc, u8* vc, int q_cols, int kv_dim,    \
                                    int head_dim, int rope_dim, float theta, float scale,        \
                                    int layout) {                                               \
        rope_store<F16>(q, k, v, positions, slots, kc, vc, q_cols, kv_dim, head_dim, rope_dim,   \
                        theta, scale, layout);                                                  \
    }
ROPE_STORE(rope_store_f16, true)
ROPE_STORE(rope_store_f32, false)

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
};

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

template <bool F16>
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
        qv[i] = F16 ? h2f(f2h(x)) : x;
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
            if (d < hd) p += qv[i] * kv_ld<F16>(a.kc, base + d);
        }
        float sc = warp_sum(p) * a.scale;
        float mn = fmaxf(m, sc);
        float ms = expf(m - mn), vs = expf(sc - mn);
        m = mn;
        s = s * ms + vs;
#pragma unroll
        for (int i = 0; i < PER; i++) {
            int d = lane + 32 * i;
            if (d < hd) acc[i] = acc[i] * ms + vs * kv_ld<F16>(a.vc, base + d);
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
        a.out[(size_t)t * qd + (size_t)h * hd + d] = o * inv;
    }
}

extern "C" __global__ void attention_f16(AttnArgs a) { attention<true>(a); }
extern "C" __global__ void attention_f32(AttnArgs a) { attention<false>(a); }

// Combines the `splits` partials of each (query head, token): grid (n_head, T), one warp.
extern "C" __global__ void attention_merge(const float* __restrict__ part, float* __restrict__ out,
                                           int n_head, int hd, int splits) {
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
        out[(size_t)t * n_head * hd + (size_t)h * hd + d] = o * inv;
    }
}

// Grouped-query attention over an f16 cache, for head dims of 32, 64, 128 or 256: one block of
// GQA_WARPS warps per (NG query heads that share a KV head, token, split), so each key and value
// row is read once for the NG heads instead of once per head. The NG queries (rounded to f16, as
// in `attention`) sit in shared memory. A warp takes 32 keys at a time: each lane scores one key
// (its whole K row, 16-byte loads) against the NG queries, the warp keeps an online softmax per
// head (running max warp-uniform, partial sums per lane), and then walks the 32 values: LPR =
// HD / 8 lanes cover a value row with 16-byte loads, so the warp takes 32 / LPR rows per step,
// each lane summing its 8 dimensions over its own subset of the keys until the end, when the
// subsets are added up. The warps merge at the end, and with several splits each block writes
// the same partials as `attention`, which attention_merge combines.
#define GQA_WARPS 4

// Eight consecutive f16 values at a 16-byte-aligned p, as floats.
__device__ __forceinline__ void ld_halves8(const u16* p, float* f) {
    uint4 a = *(const uint4*)p;
    u32 w[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        f[2 * i] = h2f((u16)w[i]);
        f[2 * i + 1] = h2f((u16)(w[i] >> 16));
    }
}

template <int HD, int NG>
__device__ __forceinline__ void attn_gqa(const AttnArgs& a) {
    constexpr int LPR = HD / 8, KPI = 32 / LPR;
    __shared__ __align__(16) float s_q[NG][HD];
    __shared__ float s_m[GQA_WARPS][NG], s_l[GQA_WARPS][NG];
    __shared__ float s_acc[GQA_WARPS][NG][HD];
    const u32 FULL = 0xffffffffu;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int h0 = blockIdx.x * NG, t = blockIdx.y;
    int qd = a.n_head * HD;
    int kh = (h0 / (a.n_head / a.n_head_kv)) * HD;
    int pos = (int)a.positions[t];
    const u32* table = a.tables + a.table_off[a.seq_of[t]];
    int lo, hi, splits = gridDim.z;
    key_range(a, pos, lo, hi);
    // Heads h0 .. h0 + NG - 1 are contiguous in the token's query row.
    for (int i = threadIdx.x; i < NG * HD; i += blockDim.x) {
        float x = a.q[(size_t)t * qd + (size_t)h0 * HD + i];
        s_q[i / HD][i % HD] = h2f(f2h(x));
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
    const u16* kc = (const u16*)a.kc + kh;
    const u16* vc = (const u16*)a.vc + kh + (lane % LPR) * 8;
    for (int base = lo + warp * 32; base <= hi; base += GQA_WARPS * 32) {
        // This lane's key; lanes past the end read the last key and weigh it 0.
        int j = base + lane;
        bool valid = j <= hi;
        int jc = valid ? j : hi;
        u32 slot = table[jc / a.block_size] * (u32)a.block_size + (u32)(jc % a.block_size);
        const u16* kr = kc + (size_t)slot * a.kv_dim;
        float s[NG];
#pragma unroll
        for (int g = 0; g < NG; g++) s[g] = 0.0f;
#pragma unroll
        for (int c = 0; c < HD / 8; c++) {
            float kf[8];
            ld_halves8(kr + 8 * c, kf);
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
#pragma unroll 8
        for (int it = 0; it < LPR; it++) {
            int k = it * KPI + lane / LPR;
            u32 sk = __shfl_sync(FULL, slot, k);
            float vf[8];
            ld_halves8(vc + (size_t)sk * a.kv_dim, vf);
#pragma unroll
            for (int g = 0; g < NG; g++) {
                float pk = __shfl_sync(FULL, p[g], k);
#pragma unroll
                for (int i = 0; i < 8; i++) acc[g][i] += pk * vf[i];
            }
        }
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
            a.out[(size_t)t * qd + (size_t)h * HD + d] = o * (gs == 0.0f ? 0.0f : 1.0f / gs);
        }
    }
}

#define ATTN_GQA(NAME, HD, NG)                                                                  \
    extern "C" __global__ void __launch_bounds__(GQA_WARPS * 32) NAME(AttnArgs a) {             \
        attn_gqa<HD, NG>(a);                                                                    \
    }
ATTN_GQA(attn_gqa_f16_32_1, 32, 1)
ATTN_GQA(attn_gqa_f16_32_2, 32, 2)
ATTN_GQA(attn_gqa_f16_32_4, 32, 4)
ATTN_GQA(attn_gqa_f16_32_8, 32, 8)
ATTN_GQA(attn_gqa_f16_64_1, 64, 1)
ATTN_GQA(attn_gqa_f16_64_2, 64, 2)
ATTN_GQA(attn_gqa_f16_64_4, 64, 4)
ATTN_GQA(attn_gqa_f16_64_8, 64, 8)
ATTN_GQA(attn_gqa_f16_128_1, 128, 1)
ATTN_GQA(attn_gqa_f16_128_2, 128, 2)
ATTN_GQA(attn_gqa_f16_128_4, 128, 4)
ATTN_GQA(attn_gqa_f16_128_8, 128, 8)
ATTN_GQA(attn_gqa_f16_256_1, 256, 1)
ATTN_GQA(attn_gqa_f16_256_2, 256, 2)
ATTN_GQA(attn_gqa_f16_256_4, 256, 4)
