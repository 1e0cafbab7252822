// Flash attention over an f16 KV cache on the tensor cores (sm_80+), in its own file beside
// attention.cu: the same `AttnArgs` (common.cuh), cache layout and output copies.

// Flash attention for prefill over an f16 cache (sm_80+): one block of 4 warps per (KV head,
// tile of FA_ROWS / ng consecutive tokens of the step), its rows being every (token, query head
// of the group) pair, token-major; warp w takes rows 16w .. 16w + 15. The tile's tokens are cut
// into runs of one sequence (any order of sequences is correct; the host picks this kernel when
// each sequence's tokens are contiguous, so that a tile holds one or two runs); for each run, 64-key tiles of K and V go through shared memory, S = Q K^T and
// O += P V run on the f16 tensor cores (m16n8k16, f32 accumulate) with an online softmax per row
// in registers, queries rounded to f16 as in `attention` and the probabilities rounded to f16 for
// the P V product. Keys outside a row's window or past its position weigh 0. Writes `out` and its
// 8-bit and f16 copies (`xq`, `xm`) as the other attention kernels do; no splits.
#define FA_ROWS 64
#define FA_KEYS 64

template <int HD>
__device__ __forceinline__ void attn_flash(const AttnArgs& a) {
    constexpr int KS = HD / 16;  // k16 steps over a head
    constexpr int NO = HD / 8;   // n8 tiles of the output
    constexpr int LD = HD + 8;   // shared row stride in halves: conflict-free fragment loads
    __shared__ __align__(16) u16 s_k[FA_KEYS][LD];
    __shared__ __align__(16) u16 s_v[FA_KEYS][LD];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, c = lane & 3;
    const int ng = a.n_head / a.n_head_kv;
    const int tq = FA_ROWS / ng;  // tokens per block
    const int hkv = blockIdx.x, kh = hkv * HD, qd = a.n_head * HD;
    const int t0 = blockIdx.y * tq;
    const int t_end = min(t0 + tq, a.n_tokens);
    // This lane's two rows (g and g + 8 of the warp's 16): token and head, or -1.
    int tok[2], head[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        int r = warp * 16 + g + 8 * i;
        int t = t0 + r / ng;
        bool ok = r < tq * ng && t < t_end;
        tok[i] = ok ? t : -1;
        head[i] = ok ? hkv * ng + r % ng : 0;
    }
    // The rows' queries as A fragments, rounded to f16.
    u32 qa[KS][4];
#pragma unroll
    for (int ks = 0; ks < KS; ks++) {
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int i = j & 1, d = 16 * ks + 2 * c + 8 * (j >> 1);
            float2 x = make_float2(0.0f, 0.0f);
            if (tok[i] >= 0)
                x = *(const float2*)(a.q + (size_t)tok[i] * qd + (size_t)head[i] * HD + d);
            qa[ks][j] = (u32)f2h(x.x) | ((u32)f2h(x.y) << 16);
        }
    }
    for (int run = t0; run < t_end;) {
        const int seq = (int)a.seq_of[run];
        int run_end = run + 1;
        while (run_end < t_end && (int)a.seq_of[run_end] == seq) run_end++;
        // The run's keys: from the lowest window start to the highest position.
        int lo_min = 1 << 30, hi_max = -1;
        for (int t = run; t < run_end; t++) {
            int p = (int)a.positions[t];
            lo_min = min(lo_min, a.window > 0 ? max(0, p + 1 - a.window) : 0);
            hi_max = max(hi_max, p);
        }
        const u32* table = a.tables + a.table_off[seq];
        int pos[2], lo[2];
        bool in_run[2];
#pragma unroll
        for (int i = 0; i < 2; i++) {
            in_run[i] = tok[i] >= run && tok[i] < run_end;
            pos[i] = in_run[i] ? (int)a.positions[tok[i]] : -1;
            lo[i] = in_run[i] && a.window > 0 ? max(0, pos[i] + 1 - a.window) : 0;
        }
        float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.0f, 0.0f};
        float o[NO][4];
#pragma unroll
        for (int n = 0; n < NO; n++)
#pragma unroll
            for (int j = 0; j < 4; j++) o[n][j] = 0.0f;
        for (int kb = lo_min / FA_KEYS * FA_KEYS; kb <= hi_max; kb += FA_KEYS) {
            // K and V rows kb .. kb + 63, 16 bytes a thread at a time; zeros outside the run's
            // keys (a masked key's V row still enters the product, with weight 0).
            for (int i = threadIdx.x; i < FA_KEYS * (HD / 8); i += blockDim.x) {
                int key = i / (HD / 8), part = i % (HD / 8), j = kb + key;
                uint4 kv4 = make_uint4(0, 0, 0, 0), vv4 = make_uint4(0, 0, 0, 0);
                if (j >= lo_min && j <= hi_max) {
                    size_t slot = (size_t)table[j / a.block_size] * a.block_size + j % a.block_size;
                    size_t e = slot * a.kv_dim + kh + 8 * part;
                    kv4 = *(const uint4*)((const u16*)a.kc + e);
                    vv4 = *(const uint4*)((const u16*)a.vc + e);
                }
                *(uint4*)&s_k[key][8 * part] = kv4;
                *(uint4*)&s_v[key][8 * part] = vv4;
            }
            __syncthreads();
            // S = Q K^T: 16 rows x 64 keys a warp.
            float s[FA_KEYS / 8][4];
#pragma unroll
            for (int n = 0; n < FA_KEYS / 8; n++) {
#pragma unroll
                for (int j = 0; j < 4; j++) s[n][j] = 0.0f;
                const u16* kr = &s_k[8 * n + g][2 * c];
#pragma unroll
                for (int ks = 0; ks < KS; ks++) {
                    u32 b0 = *(const u32*)(kr + 16 * ks), b1 = *(const u32*)(kr + 16 * ks + 8);
                    mma_f16(s[n], qa[ks][0], qa[ks][1], qa[ks][2], qa[ks][3], b0, b1);
                }
            }
            // Mask, scale, and the online softmax of both rows.
            float mx[2] = {NEG_INF, NEG_INF};
#pragma unroll
            for (int n = 0; n < FA_KEYS / 8; n++)
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    int i = j >> 1, key = kb + 8 * n + 2 * c + (j & 1);
                    bool ok = in_run[i] && key >= lo[i] && key <= pos[i];
                    s[n][j] = ok ? s[n][j] * a.scale : NEG_INF;
                    mx[i] = fmaxf(mx[i], s[n][j]);
                }
            float alpha[2];
#pragma unroll
            for (int i = 0; i < 2; i++) {
                mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
                mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
                float mn = fmaxf(m[i], mx[i]);
                alpha[i] = mn == NEG_INF ? 1.0f : expf(m[i] - mn);
                m[i] = mn;
                l[i] *= alpha[i];
            }
            u32 pa[FA_KEYS / 16][4];
#pragma unroll
            for (int n = 0; n < FA_KEYS / 8; n++) {
                float p[4];
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    int i = j >> 1;
                    p[j] = s[n][j] == NEG_INF ? 0.0f : expf(s[n][j] - m[i]);
                    l[i] += p[j];
                }
                pa[n >> 1][(n & 1) * 2] = (u32)f2h(p[0]) | ((u32)f2h(p[1]) << 16);
                pa[n >> 1][(n & 1) * 2 + 1] = (u32)f2h(p[2]) | ((u32)f2h(p[3]) << 16);
            }
            // O = alpha O + P V; V's B fragments by transposing loads of 8 x 8 tiles.
#pragma unroll
            for (int n = 0; n < NO; n++) {
                o[n][0] *= alpha[0];
                o[n][1] *= alpha[0];
                o[n][2] *= alpha[1];
                o[n][3] *= alpha[1];
            }
#pragma unroll
            for (int ks = 0; ks < FA_KEYS / 16; ks++) {
#pragma unroll
                for (int n = 0; n < NO; n += 2) {
                    int mtx = lane >> 3, rr = lane & 7;
                    const u16* src = &s_v[16 * ks + rr + 8 * (mtx & 1)][8 * (n + (mtx >> 1))];
                    u32 b[4];
                    asm volatile(
                        "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                        : "=r"(b[0]), "=r"(b[1]), "=r"(b[2]), "=r"(b[3])
                        : "r"(smem_addr(src)));
                    mma_f16(o[n], pa[ks][0], pa[ks][1], pa[ks][2], pa[ks][3], b[0], b[1]);
                    mma_f16(o[n + 1], pa[ks][0], pa[ks][1], pa[ks][2], pa[ks][3], b[2], b[3]);
                }
            }
            __syncthreads();
        }
        // Finish this run's rows: the quad's partial sums, then out = O / l.
#pragma unroll
        for (int i = 0; i < 2; i++) {
            l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
            l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
        }
        // A row's 32-element group is held by one quad (4 n8 tiles x 2 values a lane): its
        // 8-bit copy is q8_warp's arithmetic over the quad (the max and the sum of integers are
        // exact in any order, so the bits are quantize_q8_1's). Every lane takes part in the
        // shuffles; only the stores are per row.
#pragma unroll
        for (int i = 0; i < 2; i++) {
            float inv = l[i] == 0.0f ? 0.0f : 1.0f / l[i];
            size_t row = in_run[i] ? (size_t)tok[i] * qd + (size_t)head[i] * HD : 0;
#pragma unroll
            for (int grp = 0; grp < HD / 32; grp++) {
                float v[8], amax = 0.0f;
#pragma unroll
                for (int k = 0; k < 8; k++) {
                    v[k] = o[4 * grp + k / 2][2 * i + k % 2] * inv;
                    amax = fmaxf(amax, fabsf(v[k]));
                }
                if (a.xq != nullptr) {
                    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
                    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
                    float d = amax / 127.0f;
                    float id = d != 0.0f ? 1.0f / d : 0.0f;
                    int q[8];
                    float s = 0.0f;
#pragma unroll
                    for (int k = 0; k < 8; k++) {
                        q[k] = __float2int_rn(v[k] * id);
                        s += (float)q[k];
                    }
                    s += __shfl_xor_sync(0xffffffffu, s, 1);
                    s += __shfl_xor_sync(0xffffffffu, s, 2);
                    if (in_run[i]) {
#pragma unroll
                        for (int k = 0; k < 8; k++)
                            a.xq[row + 32 * grp + 8 * (k / 2) + 2 * c + k % 2] = (i8)q[k];
                        if (c == 0) a.xds[(row + 32 * grp) / 32] = make_float2(d, d * s);
                    }
                }
                if (in_run[i]) {
#pragma unroll
                    for (int k = 0; k < 8; k++) {
                        size_t e = row + 32 * grp + 8 * (k / 2) + 2 * c + k % 2;
                        a.out[e] = v[k];
                        if (a.xm != nullptr) put_half(a.xm, (long long)e, v[k]);
                    }
                }
            }
        }
        run = run_end;
    }
}

extern "C" __global__ void __launch_bounds__(128) attn_flash_f16_64(AttnArgs a) {
    pdl_entry();
    attn_flash<64>(a);
}
extern "C" __global__ void __launch_bounds__(128, 2) attn_flash_f16_128(AttnArgs a) {
    pdl_entry();
    attn_flash<128>(a);
}
