//! AVX-512 VNNI kernels: one weight row against a group of tokens.
//!
//! Every weight block is unpacked once into unsigned bytes and dotted with each token's int8
//! quants by `vpdpbusd` (u8 x i8, four products summed into each 32-bit lane, no saturation).
//! Signed or offset weights are made unsigned by an offset `o = 2^k` whose contribution
//! `-o * sum(y)` is the accumulator's initial value (`QActs::yoff`), so the integer sums are
//! exactly the scalar reference's; only float accumulation order differs.
//!
//! Legacy types go two 32-blocks per 512-bit step (lanes 0..8 block 2p, lanes 8..16 block
//! 2p+1); K-quants 64 elements per step with integer sub-block scales multiplied per lane.

use super::invariant;
use super::tiled::{rows_tiled, TiledLegacy};
use super::tiled_k::{rows_tiled_k, TiledK};
use super::{Kernels, QActs, TILED_MIN_TOK};
use crate::fp::Half;
use crate::kquants::{scale_min_k4, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K};
use crate::legacy::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, QK};
use crate::{as_blocks, GgmlType, QuantError, QK_K};
use std::arch::x86_64::*;

/// `[f(0), f(1), f(2), f(3)]` written out, so the vector code is inlined into the caller (an
/// `array::from_fn` closure is a separate function without the caller's target features).
macro_rules! unroll4 {
    (|$k:ident| $body:expr) => {
        [
            {
                let $k = 0usize;
                $body
            },
            {
                let $k = 1usize;
                $body
            },
            {
                let $k = 2usize;
                $body
            },
            {
                let $k = 3usize;
                $body
            },
        ]
    };
}
pub(super) use unroll4;

/// True when these kernels may run (AVX-512 F/BW/VL/VNNI plus AVX2/FMA/F16C).
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
        && crate::x86::has_avx2()
}

/// A legacy 32-element weight block as the VNNI kernel sees it.
pub(super) trait Legacy: bytemuck::Pod {
    /// log2 of the offset subtracted from the unsigned quants (0: none); must match
    /// `super::offset_shift`.
    const SHIFT: u32;
    /// `x = d * q + m` (the `m * s` term is added per block).
    const HAS_MIN: bool;
    /// Rows the one-token kernel walks side by side ([`legacy_decode`]): 2 shares the token's
    /// loads and overlaps two rows' float chains, which made the 4/5-bit types 12-22% faster
    /// streaming from DRAM (and 16-29% in L2); Q8_0's 612-byte rows streamed 15-40% slower two
    /// at a time than one (software prefetch and two interleaved streams), so it takes 1.
    const DECODE_ROWS: usize = 2;
    fn d(&self) -> Half;
    fn m(&self) -> Half {
        Half::ZERO
    }
    /// The 64 unsigned quants of two blocks, in element order.
    ///
    /// # Safety
    /// The CPU must support the kernels' features ([`available`]).
    unsafe fn unpack2(b0: &Self, b1: &Self) -> __m512i;
}

/// Two 16-byte nibble arrays to 64 values 0..16: [b0 lo, b0 hi, b1 lo, b1 hi].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn nibbles2(q0: &[u8; 16], q1: &[u8; 16]) -> __m512i {
    // SAFETY: each load reads exactly one 16-byte array, unaligned.
    let (a, b) = unsafe {
        (
            _mm_loadu_si128(q0.as_ptr().cast()),
            _mm_loadu_si128(q1.as_ptr().cast()),
        )
    };
    let v = _mm256_set_m128i(b, a);
    let z = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(v), _mm256_srli_epi16::<4>(v));
    // 128-bit lanes [a, b, a>>4, b>>4] -> [a, a>>4, b, b>>4].
    let z = _mm512_shuffle_i64x2::<0b11_01_10_00>(z, z);
    _mm512_and_si512(z, _mm512_set1_epi8(0x0F))
}

/// Bit 4 of each element of two Q5 blocks (`qh` little-endian u32 each), as 0x10 bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn high_bits2(qh0: [u8; 4], qh1: [u8; 4]) -> __m512i {
    let mask = u32::from_le_bytes(qh0) as u64 | ((u32::from_le_bytes(qh1) as u64) << 32);
    _mm512_maskz_mov_epi8(mask, _mm512_set1_epi8(0x10))
}

impl Legacy for BlockQ4_0 {
    const SHIFT: u32 = 3;
    const HAS_MIN: bool = false;
    fn d(&self) -> Half {
        self.d
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn unpack2(b0: &Self, b1: &Self) -> __m512i {
        nibbles2(&b0.qs, &b1.qs)
    }
}

impl Legacy for BlockQ4_1 {
    const SHIFT: u32 = 0;
    const HAS_MIN: bool = true;
    fn d(&self) -> Half {
        self.d
    }
    fn m(&self) -> Half {
        self.m
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn unpack2(b0: &Self, b1: &Self) -> __m512i {
        nibbles2(&b0.qs, &b1.qs)
    }
}

impl Legacy for BlockQ5_0 {
    const SHIFT: u32 = 4;
    const HAS_MIN: bool = false;
    fn d(&self) -> Half {
        self.d
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn unpack2(b0: &Self, b1: &Self) -> __m512i {
        _mm512_or_si512(nibbles2(&b0.qs, &b1.qs), high_bits2(b0.qh, b1.qh))
    }
}

impl Legacy for BlockQ5_1 {
    const SHIFT: u32 = 0;
    const HAS_MIN: bool = true;
    fn d(&self) -> Half {
        self.d
    }
    fn m(&self) -> Half {
        self.m
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn unpack2(b0: &Self, b1: &Self) -> __m512i {
        _mm512_or_si512(nibbles2(&b0.qs, &b1.qs), high_bits2(b0.qh, b1.qh))
    }
}

impl Legacy for BlockQ8_0 {
    const SHIFT: u32 = 7;
    const HAS_MIN: bool = false;
    const DECODE_ROWS: usize = 1;
    fn d(&self) -> Half {
        self.d
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn unpack2(b0: &Self, b1: &Self) -> __m512i {
        // SAFETY: each load reads exactly one 32-byte `qs` array, unaligned.
        let (a, b) = unsafe {
            (
                _mm256_loadu_si256(b0.qs.as_ptr().cast()),
                _mm256_loadu_si256(b1.qs.as_ptr().cast()),
            )
        };
        let z = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), b);
        // q + 128 as unsigned bytes.
        _mm512_xor_si512(z, _mm512_set1_epi8(-128))
    }
}

/// The software prefetch distance of the decode kernels, in bytes.
const PREFETCH: usize = 1024;

/// Dot products of `R` consecutive legacy weight rows (`w`: `R` rows of `nb` blocks, back to
/// back) with token `t`, each row walked in memory order with a software prefetch 1 KiB ahead.
/// The token's loads (quants, offsets, scales) are shared by the rows, and the rows' float
/// chains are independent, so `R = 2` hides the latency of the accumulator chain that one row
/// alone waits on.
///
/// Each row's arithmetic does not depend on `R`: Q4_1 / Q5_1 (with a min) keep llama.cpp's x86
/// vec-dot order (one 8-lane accumulator fed block after block, the `m * s` terms summed
/// separately in block order, llama.cpp's final horizontal sum), so results match llama.cpp's
/// bit for bit, which the golden test against it relies on; the types without a min (Q4_0,
/// Q5_0, Q8_0), whose order no golden test pins but whose one-token results should not move
/// either, use two 512-bit chains alternating by block pair.
///
/// # Safety
/// The CPU must support the kernels' features; `a` must be expanded for this weight type with
/// `nb * 32` columns and hold token `t`; `w.len() == R * nb`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn legacy_decode<W: Legacy, const R: usize>(
    w: &[W],
    nb: usize,
    a: &QActs,
    t: usize,
) -> [f32; R] {
    debug_assert!(nb * QK == a.cols && t < a.n_tok && w.len() == R * nb);
    debug_assert!(a.qs.len() >= a.n_tok * a.cols && a.dexp.len() >= a.n_tok * nb * 8);
    let mut st = DecodeAcc::<R>::new();
    // Two block pairs per iteration, so that each chain of the types without a min is a
    // register, not an array slot indexed at run time (which the compiler keeps in memory).
    let mut p = 0;
    while p < nb {
        // SAFETY: the caller's guarantees; p < nb (p + 2 < nb for the second step).
        unsafe {
            legacy_decode_step::<W, R>(w, nb, a, t, p, &mut st, false);
            if p + 2 < nb {
                legacy_decode_step::<W, R>(w, nb, a, t, p + 2, &mut st, true);
            }
        }
        p += 4;
    }
    let mut out = [0.0f32; R];
    for (r, o) in out.iter_mut().enumerate() {
        *o = if W::HAS_MIN {
            hsum256(st.acc8[r]) + st.macc[r]
        } else {
            _mm512_reduce_add_ps(_mm512_add_ps(st.even[r], st.odd[r]))
        };
    }
    out
}

/// The accumulators of [`legacy_decode`]: with a min, llama.cpp's 8-lane accumulator and the
/// separate `m * s` sum; without, 512-bit chains for even and odd block pairs.
struct DecodeAcc<const R: usize> {
    acc8: [__m256; R],
    macc: [f32; R],
    even: [__m512; R],
    odd: [__m512; R],
}

impl<const R: usize> DecodeAcc<R> {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    fn new() -> Self {
        DecodeAcc {
            acc8: [_mm256_setzero_ps(); R],
            macc: [0.0; R],
            even: [_mm512_setzero_ps(); R],
            odd: [_mm512_setzero_ps(); R],
        }
    }
}

/// Blocks `p` and `p + 1` (`p` alone at the row's end) of the `R` rows of [`legacy_decode`],
/// into the odd or even chains.
///
/// # Safety
/// As [`legacy_decode`]; `p < nb`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn legacy_decode_step<W: Legacy, const R: usize>(
    w: &[W],
    nb: usize,
    a: &QActs,
    t: usize,
    p: usize,
    st: &mut DecodeAcc<R>,
    odd: bool,
) {
    let pair = p + 1 < nb;
    // Masked loads read only the first block when the row has an odd block left.
    let (qmask, lmask): (u64, u16) = if pair {
        (u64::MAX, 0xFFFF)
    } else {
        (0xFFFF_FFFF, 0x00FF)
    };
    let blk = t * nb + p;
    // SAFETY: token t < n_tok and block p (p + 1 when `pair`) < nb, so the quants at
    // t * cols + 32 * p, the lanes of `dexp` / `yoff` at 8 * blk and `s[blk]` (`s[blk + 1]`)
    // read under the masks are inside the buffers (lengths asserted by `legacy_decode`, set by
    // `prepare`); masked-off elements are not read.
    let (yq, init, dy, s0, s1) = unsafe {
        (
            _mm512_maskz_loadu_epi8(qmask, a.qs.as_ptr().add(t * a.cols + QK * p).cast()),
            if W::SHIFT != 0 {
                _mm512_maskz_loadu_epi32(lmask, a.yoff.as_ptr().add(8 * blk).cast())
            } else {
                _mm512_setzero_si512()
            },
            _mm512_maskz_loadu_ps(lmask, a.dexp.as_ptr().add(8 * blk)),
            if W::HAS_MIN {
                *a.s.as_ptr().add(blk)
            } else {
                0.0
            },
            if W::HAS_MIN && pair {
                *a.s.as_ptr().add(blk + 1)
            } else {
                0.0
            },
        )
    };
    for r in 0..R {
        let b0 = &w[r * nb + p];
        let b1 = if pair { &w[r * nb + p + 1] } else { b0 };
        // A hint only: `wrapping_add` computes an address that may lie past the row.
        // A hint only: `wrapping_add` computes an address that may lie past the row.
        _mm_prefetch::<_MM_HINT_T0>((b0 as *const W).cast::<u8>().wrapping_add(PREFETCH).cast());
        // SAFETY: CPU features as required by this function.
        let qx = unsafe { W::unpack2(b0, b1) };
        let (dx, m0, m1) = scales2(b0, b1, bcast_d());
        let dot = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(init, qx, yq));
        let dxdy = _mm512_mul_ps(dx, dy);
        if W::HAS_MIN {
            st.acc8[r] = _mm256_fmadd_ps(
                _mm512_castps512_ps256(dxdy),
                _mm512_castps512_ps256(dot),
                st.acc8[r],
            );
            st.macc[r] += m0 * s0;
            if pair {
                st.acc8[r] = _mm256_fmadd_ps(hi256(dxdy), hi256(dot), st.acc8[r]);
                st.macc[r] += m1 * s1;
            }
        } else if odd {
            st.odd[r] = _mm512_fmadd_ps(dot, dxdy, st.odd[r]);
        } else {
            st.even[r] = _mm512_fmadd_ps(dot, dxdy, st.even[r]);
        }
    }
}

/// The upper 8 lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn hi256(v: __m512) -> __m256 {
    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))
}

/// Sum of 8 lanes in llama.cpp's `hsum_float_8` order.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_extractf128_ps::<1>(v), _mm256_castps256_ps128(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// One f16 value widened by F16C.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn h2f(h: Half) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h.to_bits() as i32)))
}

/// Permutation for [`scales2`]: lanes 0..8 <- lane 0 (d0), lanes 8..16 <- lane 2 (d1).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn bcast_d() -> __m512i {
    _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2)
}

/// The weight scales of two blocks as the kernels use them: `d0` in lanes 0..8 and `d1` in
/// lanes 8..16, and the mins `m0`, `m1` (0 for types without).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn scales2<W: Legacy>(b0: &W, b1: &W, bcast: __m512i) -> (__m512, f32, f32) {
    let h = |b: &W| (b.d().to_bits() as i32) | ((b.m().to_bits() as i32) << 16);
    // Lanes: d0, m0, d1, m1.
    let dm = _mm_cvtph_ps(_mm_setr_epi32(h(b0), h(b1), 0, 0));
    let dx = _mm512_permutexvar_ps(bcast, _mm512_castps128_ps512(dm));
    let m0 = _mm_cvtss_f32(_mm_movehdup_ps(dm));
    let m1 = _mm_cvtss_f32(_mm_shuffle_ps::<0b11>(dm, dm));
    (dx, m0, m1)
}

/// One step of a row-streaming one-token kernel: blocks `p` and `p + 1` of row `w` (`p` alone
/// at the row's end) with token `t`. Returns the integer dots with the offset included (lanes
/// 0..8 block `p`, lanes 8..16 block `p + 1`, each lane a sum of 4 products), `d_w * d_y` in
/// the same lanes, and whether there was a second block. Prefetches 1 KiB ahead in the row.
///
/// # Safety
/// As [`legacy_decode`] with `R = 1`; `p < w.len()`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn stream_step<W: Legacy>(
    w: &[W],
    a: &QActs,
    t: usize,
    p: usize,
) -> (__m512i, __m512, bool) {
    let nb = w.len();
    let cols = a.cols;
    debug_assert!(nb * QK == cols && t < a.n_tok && p < nb);
    debug_assert!(a.qs.len() >= a.n_tok * cols && a.dexp.len() >= a.n_tok * nb * 8);
    let pair = p + 1 < nb;
    let (b0, b1) = (&w[p], if pair { &w[p + 1] } else { &w[p] });
    // A hint only: `wrapping_add` computes an address that may lie past the row.
    _mm_prefetch::<_MM_HINT_T0>((b0 as *const W).cast::<u8>().wrapping_add(1024).cast());
    let (qmask, lmask): (u64, u16) = if pair {
        (u64::MAX, 0xFFFF)
    } else {
        (0xFFFF_FFFF, 0x00FF)
    };
    // SAFETY: CPU features as required by this function.
    let qx = unsafe { W::unpack2(b0, b1) };
    let (dx, _, _) = scales2(b0, b1, bcast_d());
    let blk = t * nb + p;
    // SAFETY: token t < n_tok and block p (p + 1 when `pair`) < nb: the reads under the masks
    // are inside the buffers, as in `legacy_decode`.
    let (yq, init, dy) = unsafe {
        (
            _mm512_maskz_loadu_epi8(qmask, a.qs.as_ptr().add(t * cols + QK * p).cast()),
            if W::SHIFT != 0 {
                _mm512_maskz_loadu_epi32(lmask, a.yoff.as_ptr().add(8 * blk).cast())
            } else {
                _mm512_setzero_si512()
            },
            _mm512_maskz_loadu_ps(lmask, a.dexp.as_ptr().add(8 * blk)),
        )
    };
    (
        _mm512_dpbusd_epi32(init, qx, yq),
        _mm512_mul_ps(dx, dy),
        pair,
    )
}

/// Rows x tokens for one legacy type: 16-row register tiles (`tiled.rs`) for two tokens or
/// more, else each row streamed once (batch-invariant: with the tiles' arithmetic).
///
/// # Safety
/// As [`legacy_decode`], for every token of `a`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn legacy_rows<W: TiledLegacy, F: FnMut(usize, usize, &[f32])>(
    w: &[W],
    n_rows: usize,
    a: &QActs,
    kernels: Kernels,
    sink: &mut F,
) {
    if a.n_tok >= TILED_MIN_TOK {
        // SAFETY: the caller's guarantees.
        unsafe { rows_tiled::<W, F>(w, n_rows, a, sink) };
        return;
    }
    let nb = a.cols / QK;
    // Decode (batches of two or more go to `tiled.rs`): rows in memory order, `DECODE_ROWS`
    // at a time (`legacy_decode`) or, batch-invariant, one at a time in the tiles' order.
    let invariant = kernels == Kernels::BatchInvariant && !W::HAS_MIN;
    for t in 0..a.n_tok {
        let mut r = 0;
        while r < n_rows {
            // SAFETY (all arms): token t < n_tok; rows r.. (r + 1 when two) < n_rows of nb
            // blocks each.
            if invariant {
                let v = unsafe { invariant::legacy_row::<W>(&w[r * nb..(r + 1) * nb], a, t) };
                sink(r, t, &[v]);
                r += 1;
            } else if r + 1 < n_rows && W::DECODE_ROWS == 2 {
                let v = unsafe { legacy_decode::<W, 2>(&w[r * nb..(r + 2) * nb], nb, a, t) };
                sink(r, t, &v);
                r += 2;
            } else {
                let v = unsafe { legacy_decode::<W, 1>(&w[r * nb..(r + 1) * nb], nb, a, t) };
                sink(r, t, &v);
                r += 1;
            }
        }
    }
}

/// Legacy-type rows x tokens.
///
/// # Safety
/// The CPU must support the kernels' features; `w` holds `n_rows` rows of `a.cols` elements of
/// `wty`, and `a` was prepared and expanded for `wty`.
pub(super) unsafe fn gemm_legacy<F: FnMut(usize, usize, &[f32])>(
    wty: GgmlType,
    w: &[u8],
    n_rows: usize,
    a: &QActs,
    k: Kernels,
    sink: &mut F,
) -> Result<(), QuantError> {
    // SAFETY (all arms): the caller's guarantees, with `w` viewed as the type's blocks.
    unsafe {
        match wty {
            GgmlType::Q4_0 => legacy_rows::<BlockQ4_0, F>(as_blocks(w)?, n_rows, a, k, sink),
            GgmlType::Q4_1 => legacy_rows::<BlockQ4_1, F>(as_blocks(w)?, n_rows, a, k, sink),
            GgmlType::Q5_0 => legacy_rows::<BlockQ5_0, F>(as_blocks(w)?, n_rows, a, k, sink),
            GgmlType::Q5_1 => legacy_rows::<BlockQ5_1, F>(as_blocks(w)?, n_rows, a, k, sink),
            GgmlType::Q8_0 => legacy_rows::<BlockQ8_0, F>(as_blocks(w)?, n_rows, a, k, sink),
            other => {
                return Err(QuantError::Unsupported {
                    op: "avx512 legacy gemm",
                    ty: other.name(),
                })
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// K-quants against Q8_K.

/// A K-quant super-block unpacked for the VNNI kernel: four 64-element steps of unsigned quants
/// with per-lane integer scales, plus the terms that use the activation's 16-element sums.
pub(super) trait KQuant: bytemuck::Pod {
    /// Per super-block: (quants per step, scales per step, bsum weights as i16 (16 lanes),
    /// d, coefficient of the bsum term relative to `y.d`).
    ///
    /// The result is `d * yd * sum(dot * scale) + c * yd * sum(bsum_w * bsums)`.
    ///
    /// # Safety
    /// The CPU must support the kernels' features.
    unsafe fn unpack(&self) -> KUnpacked;
}

pub(super) struct KUnpacked {
    pub(super) q: [__m512i; 4],
    pub(super) sc: [__m512i; 4],
    pub(super) bw: __m256i,
    pub(super) d: f32,
    pub(super) c: f32,
}

/// Scales and mins of Q4_K / Q5_K: per step k, lanes 0..8 scale 2k, lanes 8..16 scale 2k+1;
/// the mins as i16 weights of the 16 bsums (two bsums per 32-element sub-block).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn k4_scales(scales: &[u8; 12]) -> ([__m512i; 4], __m256i) {
    let mut sc = [0i32; 8];
    let mut mn = [0i16; 16];
    for j in 0..8 {
        let (s, m) = scale_min_k4(j, scales);
        sc[j] = s as i32;
        mn[2 * j] = m as i16;
        mn[2 * j + 1] = m as i16;
    }
    let scv = unroll4!(|k| {
        _mm512_inserti64x4::<1>(
            _mm512_set1_epi32(sc[2 * k]),
            _mm256_set1_epi32(sc[2 * k + 1]),
        )
    });
    // SAFETY: `mn` is 16 i16 = 32 bytes, read unaligned.
    let mnv = unsafe { _mm256_loadu_si256(mn.as_ptr().cast()) };
    (scv, mnv)
}

impl KQuant for BlockQ4K {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn unpack(&self) -> KUnpacked {
        let (sc, bw) = k4_scales(&self.scales);
        let m4 = _mm256_set1_epi8(0x0F);
        let q = unroll4!(|k| {
            // SAFETY: reads bytes 32k..32k+32 of the 128-byte `qs`.
            let v = unsafe { _mm256_loadu_si256(self.qs.as_ptr().add(32 * k).cast()) };
            _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_and_si256(v, m4)),
                _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4),
            )
        });
        KUnpacked {
            q,
            sc,
            bw,
            d: h2f(self.d),
            c: -h2f(self.dmin),
        }
    }
}

impl KQuant for BlockQ5K {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn unpack(&self) -> KUnpacked {
        let (sc, bw) = k4_scales(&self.scales);
        let m4 = _mm256_set1_epi8(0x0F);
        // SAFETY: `qh` is 32 bytes, read unaligned.
        let qh = unsafe { _mm256_loadu_si256(self.qh.as_ptr().cast()) };
        let q = unroll4!(|k| {
            // SAFETY: reads bytes 32k..32k+32 of the 128-byte `qs`.
            let v = unsafe { _mm256_loadu_si256(self.qs.as_ptr().add(32 * k).cast()) };
            let lo = _mm256_test_epi8_mask(qh, _mm256_set1_epi8((1u8 << (2 * k)) as i8));
            let hi = _mm256_test_epi8_mask(qh, _mm256_set1_epi8((1u8 << (2 * k + 1)) as i8));
            let hb = _mm512_maskz_mov_epi8(lo as u64 | ((hi as u64) << 32), _mm512_set1_epi8(0x10));
            let q = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_and_si256(v, m4)),
                _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4),
            );
            _mm512_or_si512(q, hb)
        });
        KUnpacked {
            q,
            sc,
            bw,
            d: h2f(self.d),
            c: -h2f(self.dmin),
        }
    }
}

impl KQuant for BlockQ6K {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn unpack(&self) -> KUnpacked {
        // SAFETY: `scales` is 16 bytes, read unaligned.
        let sc8 = unsafe { _mm_loadu_si128(self.scales.as_ptr().cast()) };
        let sc32 = _mm512_cvtepi8_epi32(sc8);
        let sc = unroll4!(|k| {
            // Step k covers sub-blocks 4k..4k+4, four lanes each.
            let k = k as i32;
            let idx = _mm512_setr_epi32(
                4 * k,
                4 * k,
                4 * k,
                4 * k,
                4 * k + 1,
                4 * k + 1,
                4 * k + 1,
                4 * k + 1,
                4 * k + 2,
                4 * k + 2,
                4 * k + 2,
                4 * k + 2,
                4 * k + 3,
                4 * k + 3,
                4 * k + 3,
                4 * k + 3,
            );
            _mm512_permutexvar_epi32(idx, sc32)
        });
        let m4 = _mm512_set1_epi8(0x0F);
        let m30 = _mm512_set1_epi8(0x30);
        let mut q = [_mm512_setzero_si512(); 4];
        for h in 0..2 {
            // SAFETY: 64 bytes of the 128-byte `ql` and 32 of the 64-byte `qh` at half h.
            let (ql, qh) = unsafe {
                (
                    _mm512_loadu_si512(self.ql.as_ptr().add(64 * h).cast()),
                    _mm256_loadu_si256(self.qh.as_ptr().add(32 * h).cast()),
                )
            };
            // Elements 128h + 0..64: low nibbles, qh bits 0-1 (first 32) and 2-3 (next 32).
            let hb = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_slli_epi16::<4>(qh)),
                _mm256_slli_epi16::<2>(qh),
            );
            q[2 * h] = _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_and_si512(hb, m30));
            // Elements 128h + 64..128: high nibbles, qh bits 4-5 and 6-7.
            let hb =
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(qh), _mm256_srli_epi16::<2>(qh));
            q[2 * h + 1] = _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi16::<4>(ql), m4),
                _mm512_and_si512(hb, m30),
            );
        }
        let d = h2f(self.d);
        KUnpacked {
            q,
            sc,
            // The -32 offset: -32 * sum_j scale_j * bsum_j.
            bw: _mm256_cvtepi8_epi16(sc8),
            d,
            c: -32.0 * d,
        }
    }
}

/// Dot products of one K-quant weight row (`w`) with tokens `t0..t0 + T` of `a` (`nbk`
/// super-blocks per token).
///
/// # Safety
/// The CPU must support the kernels' features; `a` holds at least `(t0 + T) * nbk` blocks and
/// `w.len() == nbk`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn kquant_row<W: KQuant, const T: usize>(
    w: &[W],
    a: &[BlockQ8K],
    nbk: usize,
    t0: usize,
) -> [f32; T] {
    debug_assert!(w.len() == nbk && a.len() >= (t0 + T) * nbk);
    let mut acc = [_mm512_setzero_ps(); T];
    let mut cacc = [_mm256_setzero_ps(); T];
    for (i, x) in w.iter().enumerate() {
        // SAFETY: CPU features as required by this function.
        let u = unsafe { x.unpack() };
        for (t, (acc, cacc)) in acc.iter_mut().zip(cacc.iter_mut()).enumerate() {
            let y = &a[(t0 + t) * nbk + i];
            let mut isum = _mm512_setzero_si512();
            for k in 0..4 {
                // SAFETY: reads 64 of the 256 quants of `y`.
                let yq = unsafe { _mm512_loadu_si512(y.qs.as_ptr().add(64 * k).cast()) };
                let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u.q[k], yq);
                isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(dot, u.sc[k]));
            }
            let yd = y.d();
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(u.d * yd), *acc);
            // SAFETY: `bsums` is 16 i16 = 32 bytes.
            let bs = unsafe { _mm256_loadu_si256(y.bsums.as_ptr().cast()) };
            let c = _mm256_madd_epi16(bs, u.bw);
            *cacc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(c), _mm256_set1_ps(u.c * yd), *cacc);
        }
    }
    let mut out = [0.0f32; T];
    for ((o, acc), cacc) in out.iter_mut().zip(acc).zip(cacc) {
        *o = _mm512_reduce_add_ps(acc) + _mm512_reduce_add_ps(_mm512_castps256_ps512(cacc));
    }
    out
}

/// K-quant rows x tokens: 16-row register tiles (`tiled_k.rs`) for two tokens or more, else
/// each row once per token (batch-invariant: with the tiles' arithmetic).
///
/// # Safety
/// As [`kquant_row`], for every token of `a`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn kquant_rows<W: TiledK, F: FnMut(usize, usize, &[f32])>(
    w: &[W],
    n_rows: usize,
    a: &[BlockQ8K],
    n_tok: usize,
    kernels: Kernels,
    sink: &mut F,
) {
    if n_tok >= TILED_MIN_TOK {
        // SAFETY: the caller's guarantees.
        unsafe { rows_tiled_k::<W, F>(w, n_rows, a, n_tok, sink) };
        return;
    }
    // Decode: each row once per token.
    let nbk = w.len() / n_rows.max(1);
    for t in 0..n_tok {
        for r in 0..n_rows {
            let wr = &w[r * nbk..(r + 1) * nbk];
            // SAFETY: token t < n_tok, rows of nbk blocks.
            let v = unsafe {
                match kernels {
                    Kernels::Fastest => kquant_row::<W, 1>(wr, a, nbk, t)[0],
                    Kernels::BatchInvariant => invariant::kquant_row::<W>(wr, a, t),
                }
            };
            sink(r, t, &[v]);
        }
    }
}

/// K-quant rows x tokens.
///
/// # Safety
/// The CPU must support the kernels' features; `w` holds `n_rows` rows of `a.cols` elements of
/// `wty` and `a` was prepared for `wty`.
pub(super) unsafe fn gemm_kquant<F: FnMut(usize, usize, &[f32])>(
    wty: GgmlType,
    w: &[u8],
    n_rows: usize,
    a: &QActs,
    k: Kernels,
    sink: &mut F,
) -> Result<(), QuantError> {
    let y: &[BlockQ8K] = as_blocks(&a.raw)?;
    if y.len() != a.n_tok * (a.cols / QK_K) {
        return Err(QuantError::Length {
            what: "Q8_K activations",
            expected: a.n_tok * (a.cols / QK_K),
            got: y.len(),
        });
    }
    // SAFETY (all arms): the caller's guarantees; the activation length is checked above.
    unsafe {
        match wty {
            GgmlType::Q4K => kquant_rows::<BlockQ4K, F>(as_blocks(w)?, n_rows, y, a.n_tok, k, sink),
            GgmlType::Q5K => kquant_rows::<BlockQ5K, F>(as_blocks(w)?, n_rows, y, a.n_tok, k, sink),
            GgmlType::Q6K => kquant_rows::<BlockQ6K, F>(as_blocks(w)?, n_rows, y, a.n_tok, k, sink),
            other => {
                return Err(QuantError::Unsupported {
                    op: "avx512 k-quant gemm",
                    ty: other.name(),
                })
            }
        }
    }
    Ok(())
}
