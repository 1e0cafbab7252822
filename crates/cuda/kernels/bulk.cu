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

// The streamed kernels' shared-memory copy of the input, for types with XSWZ: 16-byte unit u of
// each 128-byte row r of the copy at u ^ f, f = (r ^ 2r) & 7 over r's low two bits (0, 3, 6, 5).
// The 8 lanes of a quarter-warp then hit 8 different bank groups both where they read the same
// unit of consecutive 64-byte pieces (MQ4K2: f's low two bits differ over 4 rows) and where they
// read unit 2j + h of rows 4q + r (MQ6K2: f's high two bits differ), and MQ4_0W's lanes too.
// `o` is an offset in ints from the copy's start: offsets, not addresses, are swizzled, so any
// 16-byte-aligned start keeps the reads conflict-free (a start shifts every unit alike). The
// swizzle flips o's bits 2..4 only, by its bits 5 and 6, so a slice's start (a multiple of 2,048
// bytes) keeps its offsets, and an offset whose bits 2..4 a piece adds to stays the piece's
// swizzled offset with those bits flipped: the readers swizzle a lane's first offset once
// (`XSWZ` types' `dot_xs`).
__device__ __forceinline__ int xs_off(int o) {
    const int r = (o >> 5) & 3;
    return o ^ (((r ^ (r << 1)) & 7) << 2);
}
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

// Q6_K for the streamed kernels only (XSWZ): piece s (0..3) = (n, h) = (s / 2, s % 2) is elements
// 16h..16h+15 of each of the chunks 4n + j (j = 0..3): low-quant bytes 64n + 16h.. (chunk j = 0 in
// the low nibbles, 2 in the high) and 64n + 32 + 16h.. (1 and 3), high-bit bytes 128 + 32n + 16h..
// (bits 2j, 2j + 1), scales 8n + 2j + h. So a high-bit byte is read once (MQ6K reads it for two
// pieces) and the scales, four bytes, in one. The quants are taken as 0..63: the dot subtracts
// 32 times the sum of the 16 inputs (dp4a with bytes of -32), which the two rows of a consumer
// warp share (the compiler folds the second row's: 48 dp4a a chunk, not 64).
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
        for (int j = 0; j < 4; j++)
            sc[j] = (float)((int)((u32)w[j >> 1] << (24 - 8 * h - 16 * (j & 1))) >> 24);
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
        mmvq_bulk<T, T, W>(g, xq, xds, cols, stages, 3); /* split 3: no matrix of T2 */       \
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
