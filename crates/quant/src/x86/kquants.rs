//! AVX2 kernels of the 256-element super-blocks against Q8_K: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and
//! IQ4_XS. A super-block is walked in eight 32-element chunks of quants in element order; each
//! chunk's exact int8 dot (16-bit pair sums) is multiplied by its sub-block scales (one per 32
//! elements, or one per 16 for the types with 16-element sub-blocks) into 8 i32 lanes. Terms
//! over the activation's 16-element sums `bsums` give the mins (Q2_K, Q4_K, Q5_K: a separate
//! float term with `dmin`, as in the scalar reference) and the offsets of Q3_K / Q6_K (folded
//! into the integer sum, which is then exactly the scalar reference's). Then per super-block
//! `acc = fma(d * d_y, float(lanes), acc)`, 8 lanes, summed at the end.
//!
//! The bsum terms take the activation's stored `bsums` for the sums of its quants, as the
//! scalar references of the mins do: Q8_K rows as `quantize_q8_k` writes them.

use super::{h8, hsum_ps, iq4_levels, load32, pairs_i8};
use crate::iq4::BlockIq4Xs;
use crate::kquants::{
    q3k_scales, scales_mins_k4, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K,
    K_SCALE_SIZE,
};
use crate::Block;
use std::arch::x86_64::*;

/// What a super-block's `bsums` term stands for.
#[derive(PartialEq, Eq)]
enum Bsum {
    /// No term (IQ4_XS).
    None,
    /// The mins: `-dmin * d_y * sum(bw * bsums)`, a float term of its own.
    Min,
    /// A constant offset of the quants: `sum(bw * bsums)` is added to the integer sum.
    Offset,
}

/// A super-block's per-block values.
struct Prep {
    /// The sub-block scales as i8 (8 for 32-element, 16 for 16-element sub-blocks).
    scales: __m128i,
    /// The weights of the 16 bsums, i16.
    bw: __m256i,
    /// `d` in 8 lanes.
    d: __m256,
    /// `dmin` in 8 lanes, for [`Bsum::Min`].
    dmin: __m256,
}

/// A K-quant super-block as the AVX2 kernel sees it.
trait KQuant: Block {
    /// Scales per 16 elements (else per 32).
    const SUB16: bool;
    /// Signed quants (never -128; else unsigned below 128).
    const SIGNED: bool;
    const BSUM: Bsum;
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    unsafe fn prep(&self) -> Prep;
    /// Chunks `2k` and `2k + 1` (elements `64k .. 64k + 64`), k in 0..4.
    ///
    /// # Safety
    /// As [`prep`](Self::prep).
    unsafe fn chunks(&self, k: usize) -> (__m256i, __m256i);
}

// The scale offsets the `prep`s read.
const _: () = {
    use std::mem::offset_of;
    assert!(offset_of!(BlockQ4K, d) == 0 && offset_of!(BlockQ4K, dmin) == 2);
    assert!(offset_of!(BlockQ4K, scales) == 4);
    assert!(offset_of!(BlockQ5K, d) == 0 && offset_of!(BlockQ5K, dmin) == 2);
    assert!(offset_of!(BlockQ5K, scales) == 4);
    assert!(offset_of!(BlockIq4Xs, d) == 0);
    assert!(offset_of!(BlockQ2K, d) == 80 && offset_of!(BlockQ2K, dmin) == 82);
    assert!(offset_of!(BlockQ3K, d) == 108 && offset_of!(BlockQ6K, d) == 208);
};

/// Q4_K / Q5_K (`d`, `dmin`, then the 12 scale bytes): the 8 6-bit scales and 8 6-bit mins
/// as bytes ([`scales_mins_k4`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn k4_prep<B: Block>(b: &B) -> Prep {
    let bytes = bytemuck::bytes_of(b);
    let mut q = [0u8; K_SCALE_SIZE];
    q.copy_from_slice(&bytes[4..16]);
    let (sc, mn) = scales_mins_k4(&q);
    // Each min weighs the two bsums of its 32 elements.
    let pairs = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    let mins = _mm_shuffle_epi8(_mm_cvtsi64_si128(mn as i64), pairs);
    Prep {
        scales: _mm_cvtsi64_si128(sc as i64),
        bw: _mm256_cvtepu8_epi16(mins),
        d: h8(bytemuck::bytes_of(b), 0),
        dmin: h8(bytemuck::bytes_of(b), 2),
    }
}

/// The values of a type with 16 signed scales and a constant offset `o` of its quants: the
/// bsum weights `o * scale` (|.| <= 32 * 128).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn offset_prep(scales: [i8; 16], o: i16, d: __m256) -> Prep {
    // SAFETY: reads exactly the 16-byte array, unaligned.
    let scales = unsafe { _mm_loadu_si128(scales.as_ptr().cast()) };
    Prep {
        scales,
        bw: _mm256_mullo_epi16(_mm256_cvtepi8_epi16(scales), _mm256_set1_epi16(o)),
        d,
        dmin: _mm256_setzero_ps(),
    }
}

/// Chunks 2k, 2k + 1 of Q4_K: the low and high nibbles of bytes `32k .. 32k + 32`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn k4_chunks(qs: &[u8; 128], k: usize) -> (__m256i, __m256i) {
    let v = load32(qs, 32 * k);
    let m4 = _mm256_set1_epi8(0x0F);
    (
        _mm256_and_si256(v, m4),
        _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4),
    )
}

/// Chunks `2k`, `2k + 1` plus `1 << to` where the element's high bit is set: bit `c` of
/// `bits[l]` for element `32c + l`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn plus_high_bit(
    (q0, q1): (__m256i, __m256i),
    bits: &[u8; 32],
    k: usize,
    to: u32,
) -> (__m256i, __m256i) {
    let v = load32(bits, 0);
    let high = |c: usize| {
        let m = _mm256_set1_epi8((1u8 << c) as i8);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(v, m), m);
        _mm256_and_si256(set, _mm256_set1_epi8((1u8 << to) as i8))
    };
    (
        _mm256_or_si256(q0, high(2 * k)),
        _mm256_or_si256(q1, high(2 * k + 1)),
    )
}

/// The 2-bit fields at shifts `2k'` of `v` for chunk `c` of a Q2_K / Q3_K layout (per 128
/// elements, byte `l` of 32 holds elements `l + 32k'` at shift `2k'`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn two_bits(v: __m256i, shift: usize) -> __m256i {
    let s = _mm_cvtsi32_si128(shift as i32);
    _mm256_and_si256(_mm256_srl_epi16(v, s), _mm256_set1_epi8(3))
}

/// `impl KQuant` for each block type: its traits, `|b| prep of block b` and
/// `|b, k| chunks 2k and 2k + 1 of block b`.
macro_rules! kquant {
    ($($w:ty { sub16: $sub16:expr, signed: $signed:expr, bsum: $bsum:ident },
        |$pb:ident| $prep:expr, |$cb:ident, $k:ident| $chunks:expr;)*) => {$(
        impl KQuant for $w {
            const SUB16: bool = $sub16;
            const SIGNED: bool = $signed;
            const BSUM: Bsum = Bsum::$bsum;
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn prep(&self) -> Prep {
                let $pb = self;
                $prep
            }
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn chunks(&self, $k: usize) -> (__m256i, __m256i) {
                let $cb = self;
                $chunks
            }
        }
    )*};
}

// Q3_K: the quants taken as q + 4 * hbit with an offset of -4; Q6_K: q - 32. Q3_K / Q5_K add
// their high bit (bit c of hmask[l] / qh[l] for element 32c + l) to the Q2_K / Q4_K chunks.
kquant! {
    BlockQ2K { sub16: true, signed: false, bsum: Min },
        |b| q2k_prep(b), |b, k| two_bit_chunks(&b.qs, k);
    BlockQ3K { sub16: true, signed: false, bsum: Offset },
        |b| offset_prep(q3k_scales(&b.scales), -4, h8(bytemuck::bytes_of(b), 108)),
        |b, k| plus_high_bit(two_bit_chunks(&b.qs, k), &b.hmask, k, 2);
    BlockQ4K { sub16: false, signed: false, bsum: Min },
        |b| k4_prep(b), |b, k| k4_chunks(&b.qs, k);
    BlockQ5K { sub16: false, signed: false, bsum: Min },
        |b| k4_prep(b), |b, k| plus_high_bit(k4_chunks(&b.qs, k), &b.qh, k, 4);
    BlockQ6K { sub16: true, signed: false, bsum: Offset },
        |b| offset_prep(b.scales, -32, h8(bytemuck::bytes_of(b), 208)), |b, k| q6k_chunks(b, k);
    BlockIq4Xs { sub16: false, signed: true, bsum: None },
        |b| iq4xs_prep(b), |b, k| iq4xs_chunks(b, k);
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q2k_prep(b: &BlockQ2K) -> Prep {
    // SAFETY: reads exactly the 16-byte `scales`, unaligned.
    let v = unsafe { _mm_loadu_si128(b.scales.as_ptr().cast()) };
    let m4 = _mm_set1_epi8(0x0F);
    Prep {
        scales: _mm_and_si128(v, m4),
        bw: _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(v), m4)),
        d: h8(bytemuck::bytes_of(b), 80),
        dmin: h8(bytemuck::bytes_of(b), 82),
    }
}

/// Chunks 2k, 2k + 1 of the 2-bit fields of Q2_K / Q3_K: chunk c = 4h + k' is bits 2k' of
/// qs[32h ..].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn two_bit_chunks(qs: &[u8; 64], k: usize) -> (__m256i, __m256i) {
    let v = load32(qs, 32 * (k / 2));
    let s = 4 * (k % 2);
    (two_bits(v, s), two_bits(v, s + 2))
}

/// Chunk c = 4h + r: nibble r / 2 of ql[64h + 32(r % 2) ..], bits 2r, 2r + 1 of qh[32h ..]
/// on top; k = 2h + r / 2 gives r = 2(k % 2) and 2(k % 2) + 1.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q6k_chunks(b: &BlockQ6K, k: usize) -> (__m256i, __m256i) {
    let (h, nib) = (k / 2, k % 2);
    let qh = load32(&b.qh, 32 * h);
    let m4 = _mm256_set1_epi8(0x0F);
    let one = |r: usize| {
        let ql = load32(&b.ql, 64 * h + 32 * (r % 2));
        let low = _mm256_and_si256(_mm256_srl_epi16(ql, _mm_cvtsi32_si128(4 * nib as i32)), m4);
        let high = _mm256_slli_epi16::<4>(two_bits(qh, 2 * r));
        _mm256_or_si256(low, high)
    };
    (one(2 * nib), one(2 * nib + 1))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn iq4xs_prep(b: &BlockIq4Xs) -> Prep {
    let sc: [u8; 8] = std::array::from_fn(|ib| b.scale(ib) as i8 as u8);
    Prep {
        scales: _mm_cvtsi64_si128(i64::from_le_bytes(sc)),
        bw: _mm256_setzero_si256(),
        d: h8(bytemuck::bytes_of(b), 0),
        dmin: _mm256_setzero_ps(),
    }
}

/// Sub-blocks 2k, 2k + 1: 16 nibble bytes each (element j low, j + 16 high), as levels.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn iq4xs_chunks(b: &BlockIq4Xs, k: usize) -> (__m256i, __m256i) {
    let (lo, hi) = k4_chunks(&b.qs, k);
    let table = iq4_levels();
    (
        _mm256_shuffle_epi8(table, _mm256_permute2x128_si256::<0x20>(lo, hi)),
        _mm256_shuffle_epi8(table, _mm256_permute2x128_si256::<0x31>(lo, hi)),
    )
}

/// The scales of chunk `c` as 16 i16 lanes (lanes 0..8 multiply elements 0..16 of the chunk).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn chunk_scales<W: KQuant>(scales: __m128i, c: usize) -> __m256i {
    let idx = if W::SUB16 {
        let (a, b) = (2 * c as i64, 2 * c as i64 + 1);
        _mm_set_epi64x(b * 0x0101_0101_0101_0101, a * 0x0101_0101_0101_0101)
    } else {
        _mm_set1_epi8(c as i8)
    };
    _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, idx))
}

/// One K-quant weight row against `T` tokens (see the module doc).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w` and every `a[t]` hold at least `nb` blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn kquant_tokens<W: KQuant, const T: usize>(
    nb: usize,
    w: &[W],
    a: [&[BlockQ8K]; T],
) -> [f32; T] {
    debug_assert!(w.len() >= nb && a.iter().all(|a| a.len() >= nb));
    let mut acc = [_mm256_setzero_ps(); T];
    let mut macc = [_mm256_setzero_ps(); T];
    for (i, x) in w.iter().enumerate().take(nb) {
        // SAFETY: the caller's CPU features.
        let p = unsafe { x.prep() };
        let mut sumi = [_mm256_setzero_si256(); T];
        for t in 0..T {
            let y = &a[t][i];
            if W::BSUM != Bsum::None {
                // SAFETY: `bsums` is 16 i16 = 32 bytes, read unaligned.
                let bs = unsafe { _mm256_loadu_si256(y.bsums.as_ptr().cast()) };
                let term = _mm256_madd_epi16(bs, p.bw);
                if W::BSUM == Bsum::Offset {
                    sumi[t] = term;
                } else {
                    let c = _mm256_mul_ps(p.dmin, _mm256_set1_ps(-y.d()));
                    macc[t] = _mm256_fmadd_ps(c, _mm256_cvtepi32_ps(term), macc[t]);
                }
            }
        }
        for k in 0..4 {
            // SAFETY: the caller's CPU features; k < 4.
            let (q0, q1) = unsafe { x.chunks(k) };
            let (s0, s1) = (
                chunk_scales::<W>(p.scales, 2 * k),
                chunk_scales::<W>(p.scales, 2 * k + 1),
            );
            for t in 0..T {
                let y = load32(&a[t][i].qs, 64 * k);
                let y1 = load32(&a[t][i].qs, 64 * k + 32);
                let (p0, p1) = if W::SIGNED {
                    (pairs_i8(q0, y), pairs_i8(q1, y1))
                } else {
                    (_mm256_maddubs_epi16(q0, y), _mm256_maddubs_epi16(q1, y1))
                };
                let d = _mm256_add_epi32(_mm256_madd_epi16(p0, s0), _mm256_madd_epi16(p1, s1));
                sumi[t] = _mm256_add_epi32(sumi[t], d);
            }
        }
        for t in 0..T {
            let dd = _mm256_mul_ps(p.d, _mm256_set1_ps(a[t][i].d()));
            acc[t] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(sumi[t]), acc[t]);
        }
    }
    let mut out = [0.0f32; T];
    for t in 0..T {
        out[t] = if W::BSUM == Bsum::Min {
            hsum_ps(acc[t]) + hsum_ps(macc[t])
        } else {
            hsum_ps(acc[t])
        };
    }
    out
}

avx2_dot!(kquant_tokens, 4; BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockIq4Xs);
