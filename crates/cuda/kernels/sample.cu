// Sampling support: the k largest logits of each row and the row's log-sum-exp, so that only
// k + 1 numbers per row cross to the host. One block of 1024 threads per row.
//
// The order is (value descending, index ascending) and NaN is never chosen, as the host's
// `TopK::of_row`. Pick r is found by one pass over the row for the best entry strictly after
// pick r - 1 in that order, so k passes in all (k is small: 1 for greedy, top_k or the number
// of log-probabilities asked otherwise). A row with fewer than k non-NaN entries gets id
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
    __shared__ float sv[32];
    __shared__ int si[32];
    __shared__ float bcast_v;
    __shared__ int bcast_i;
    const float* row = x + (size_t)blockIdx.x * cols;
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nw = blockDim.x >> 5;

    // Log-sum-exp over the non-NaN entries (NaN fails every comparison, so fmaxf skips it).
    float m = NEG_INF;
    for (int c = tid; c < cols; c += blockDim.x) m = fmaxf(m, row[c]);
    m = warp_max(m);
    if (lane == 0) sv[warp] = m;
    __syncthreads();
    m = lane < nw ? sv[lane] : NEG_INF;
    m = warp_max(m);
    float s = 0.0f;
    if (isfinite(m))
        for (int c = tid; c < cols; c += blockDim.x) {
            float v = row[c];
            if (!isnan(v)) s += expf(v - m);
        }
    __syncthreads();
    s = block_sum(s);
    if (tid == 0) lse[blockIdx.x] = isfinite(m) ? m + logf(s) : m;

    float pv = 0.0f;
    int pi = -1;  // the previous pick; none yet
    for (int r = 0; r < k; r++) {
        float bv = 0.0f;
        int bi = -1;
        for (int c = tid; c < cols; c += blockDim.x) {
            float v = row[c];
            if (isnan(v)) continue;
            bool after = pi < 0 || v < pv || (v == pv && c > pi);
            if (after && before(v, c, bv, bi)) {
                bv = v;
                bi = c;
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
