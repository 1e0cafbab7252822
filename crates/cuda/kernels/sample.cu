// Sampling support: the k largest logits of each row and the row's log-sum-exp, so that only
// k + 1 numbers per row cross to the host. One block of 1024 threads per row.
//
// The order is (value descending, index ascending) and NaN is never chosen, as the host's
// `TopK::of_row`. The first pick comes from the log-sum-exp's pass; pick r > 0 from one more
// pass over the row for the best entry strictly after pick r - 1 in that order, so k passes in
// all (k is small: 1 for greedy, top_k or the number of log-probabilities asked otherwise). A row with fewer than k non-NaN entries gets id
// 0xffffffff for the missing picks.

#define TOPK_THREADS 1024

// (v, i) comes before (bv, bi); an index < 0 is "nothing" and comes last.
__device__ __forceinline__ bool before(float v, int i, float bv, int bi) {
    if (i < 0) return false;
    if (bi < 0) return true;
    return v > bv || (v == bv && i < bi);
}

__device__ __forceinline__ void warp_best(float* v, int* i) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, *v, o);
        int oi = __shfl_xor_sync(0xffffffffu, *i, o);
        if (before(ov, oi, *v, *i)) {
            *v = ov;
            *i = oi;
        }
    }
}

extern "C" __global__ void top_k_rows(const float* __restrict__ x, int cols, int k,
                                      u32* __restrict__ ids, float* __restrict__ vals,
                                      float* __restrict__ lse) {
    pdl_entry();
    __shared__ float sv[32];
    __shared__ int si[32];
    __shared__ float bcast_v;
    __shared__ int bcast_i;
    const float* row = x + (size_t)blockIdx.x * cols;
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nw = blockDim.x >> 5;

    // One pass for the log-sum-exp over the non-NaN entries and the first pick: each thread
    // keeps its running maximum tm and sum ts of exp(v - tm) (rescaled when tm grows; -inf
    // adds nothing), and its best entry.
    float tm = NEG_INF, ts = 0.0f, fv = 0.0f;
    int fi = -1;
    for (int c = tid; c < cols; c += blockDim.x) {
        float v = row[c];
        if (isnan(v)) continue;
        if (before(v, c, fv, fi)) {
            fv = v;
            fi = c;
        }
        if (v > tm) {
            ts = ts * expf(tm - v) + 1.0f;
            tm = v;
        } else if (v != NEG_INF) {
            ts += expf(v - tm);
        }
    }
    float m = warp_max(tm);
    if (lane == 0) sv[warp] = m;
    __syncthreads();
    m = lane < nw ? sv[lane] : NEG_INF;
    m = warp_max(m);
    // A +inf maximum leaves the sums meaningless; the result is then m, as with no sum.
    float s = isfinite(m) && tm != NEG_INF ? ts * expf(tm - m) : 0.0f;
    __syncthreads();
    s = block_sum(s);
    if (tid == 0) lse[blockIdx.x] = isfinite(m) ? m + logf(s) : m;

    float pv = 0.0f;
    int pi = -1;  // the previous pick; none yet
    for (int r = 0; r < k; r++) {
        float bv = 0.0f;
        int bi = -1;
        if (r == 0) {
            bv = fv;
            bi = fi;
        } else {
            for (int c = tid; c < cols; c += blockDim.x) {
                float v = row[c];
                if (isnan(v)) continue;
                bool after = v < pv || (v == pv && c > pi);
                if (after && before(v, c, bv, bi)) {
                    bv = v;
                    bi = c;
                }
            }
        }
        warp_best(&bv, &bi);
        __syncthreads();
        if (lane == 0) {
            sv[warp] = bv;
            si[warp] = bi;
        }
        __syncthreads();
        if (warp == 0) {
            bv = lane < nw ? sv[lane] : 0.0f;
            bi = lane < nw ? si[lane] : -1;
            warp_best(&bv, &bi);
            if (lane == 0) {
                bcast_v = bv;
                bcast_i = bi;
                ids[(size_t)blockIdx.x * k + r] = bi < 0 ? 0xffffffffu : (u32)bi;
                vals[(size_t)blockIdx.x * k + r] = bv;
            }
        }
        __syncthreads();
        pv = bcast_v;
        pi = bcast_i;
        if (pi < 0) break;
    }
}

// One token drawn from each row on the device (crates/model/src/draw.rs is the host reference):
// greedy (inv_temp <= 0: the first largest logit) or plain sampling at temperature 1 / inv_temp
// by inverse CDF, the first token in vocabulary order whose cumulative weight reaches u * total,
// each weight exp((l - max) * inv_temp) in f32, summed in f64. NaN, -inf and, in rows whose
// draw bans, the `banned` ids (at most SAMPLE_MAX_BANNED) are never drawn; a row with nothing to
// draw gets 0xffffffff. draws: 4 words per row, inv_temp (f32 bits), ban, u (f64, low word
// first). One block of TOPK_THREADS threads per row; thread i takes the i-th contiguous slice,
// so the masses of the slices, scanned in thread order, find the slice that holds the token.
#define SAMPLE_MAX_BANNED 64

extern "C" __global__ void sample_rows(const float* __restrict__ x, int cols,
                                       const u32* __restrict__ draws,
                                       const u32* __restrict__ banned, int nbanned,
                                       u32* __restrict__ out) {
    pdl_entry();
    __shared__ float sv[32];
    __shared__ int si[32], sl[32];
    __shared__ double sm[32];
    __shared__ u32 sb[SAMPLE_MAX_BANNED];
    __shared__ int s_first, s_last, s_found;
    __shared__ float s_max;
    const float* row = x + (size_t)blockIdx.x * cols;
    const u32* dw = draws + 4 * (size_t)blockIdx.x;
    const float inv_t = __uint_as_float(dw[0]);
    const bool ban = dw[1] != 0;
    const double u = __hiloint2double((int)dw[3], (int)dw[2]);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nw = blockDim.x >> 5;
    const int nb = ban ? min(nbanned, SAMPLE_MAX_BANNED) : 0;
    for (int b = tid; b < nb; b += blockDim.x) sb[b] = banned[b];
    if (tid == 0) s_found = 0x7fffffff;
    __syncthreads();
    auto ok = [&](int i, float l) {
        if (!(l > NEG_INF)) return false;
        for (int b = 0; b < nb; b++)
            if (sb[b] == (u32)i) return false;
        return true;
    };
    const int per = (cols + blockDim.x - 1) / blockDim.x;
    const int lo = min(cols, tid * per), hi = min(cols, lo + per);

    // The first largest allowed logit, and the last allowed index.
    float bv = 0.0f;
    int bi = -1, last = -1;
    for (int i = lo; i < hi; i++) {
        float l = row[i];
        if (ok(i, l)) {
            if (before(l, i, bv, bi)) {
                bv = l;
                bi = i;
            }
            last = i;
        }
    }
    warp_best(&bv, &bi);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) last = max(last, __shfl_xor_sync(0xffffffffu, last, o));
    if (lane == 0) {
        sv[warp] = bv;
        si[warp] = bi;
        sl[warp] = last;
    }
    __syncthreads();
    if (warp == 0) {
        bv = lane < nw ? sv[lane] : 0.0f;
        bi = lane < nw ? si[lane] : -1;
        last = lane < nw ? sl[lane] : -1;
        warp_best(&bv, &bi);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) last = max(last, __shfl_xor_sync(0xffffffffu, last, o));
        if (lane == 0) {
            s_max = bv;
            s_first = bi;
            s_last = last;
        }
    }
    __syncthreads();
    if (s_first < 0 || inv_t <= 0.0f) {
        if (tid == 0) out[blockIdx.x] = s_first < 0 ? 0xffffffffu : (u32)s_first;
        return;
    }
    const float m = s_max;

    // This slice's mass, and the masses before it (an inclusive scan over the threads).
    double mass = 0.0;
    for (int i = lo; i < hi; i++) {
        float l = row[i];
        if (ok(i, l)) mass += (double)expf((l - m) * inv_t);
    }
    double incl = mass;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        double v = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += v;
    }
    if (lane == 31) sm[warp] = incl;
    __syncthreads();
    if (warp == 0) {
        double w = lane < nw ? sm[lane] : 0.0;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            double v = __shfl_up_sync(0xffffffffu, w, o);
            if (lane >= o) w += v;
        }
        if (lane < nw) sm[lane] = w;
    }
    __syncthreads();
    if (warp > 0) incl += sm[warp - 1];
    const double excl = incl - mass, target = u * sm[nw - 1];
    if (mass > 0.0 && excl <= target && target <= incl) {
        double r = target - excl;
        int pick = -1;
        for (int i = lo; i < hi; i++) {
            float l = row[i];
            if (ok(i, l)) {
                r -= (double)expf((l - m) * inv_t);
                pick = i;
                if (r <= 0.0) break;
            }
        }
        atomicMin(&s_found, pick);
    }
    __syncthreads();
    if (tid == 0) out[blockIdx.x] = (u32)(s_found != 0x7fffffff ? s_found : s_last);
}
