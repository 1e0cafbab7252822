//! NEON kernels of the 256-element super-blocks against Q8_K: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and
//! IQ4_XS, in the AVX2 kernels' arithmetic (`x86/kquants.rs`), so that their results are the
//! same bits. A super-block is walked in four 64-element chunks, each unpacked into four
//! 16-byte vectors of quants in element order (unsigned but for IQ4_XS, as the AVX2 kernels
//! take them); each vector's exact dot with the token's quants (sums of 4 consecutive
//! elements) is multiplied by its 16-element scale (a 32-element sub-block's scale stands
//! twice) into 8 i32 lanes, lanes 0..4 taking the first 16 elements of each 32 and lanes 4..8
//! the second 16, as the AVX2 lanes do. Terms over the activation's 16-element sums `bsums`
//! (lane `i`: sums `2i` and `2i + 1`) give the mins (Q2_K, Q4_K, Q5_K: a float term of its own
//! with `-dmin * d_y`) and the offsets of Q3_K (-4) and Q6_K (-32) (folded into the integer
//! lanes). Then per super-block `acc = fma(float(lanes), d * d_y, acc)` in the 8 lanes,
//! summed in `hsum_float_8`'s order at the end.
//!
//! The bsum terms take the activation's stored `bsums` for the sums of its quants, as the
//! scalar references of the mins do: Q8_K rows as `quantize_q8_k` writes them.

use super::{bit_as, f16x4, hsum8, iq4_levels, load16, load16s, nibbles, I8Dot};
use crate::fp::Half;
use crate::iq4::BlockIq4Xs;
use crate::kquants::{
    q3k_scales, scales_mins_k4, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K,
};
use crate::Block;
use std::arch::aarch64::*;

/// What a super-block's `bsums` term stands for.
enum Bsum {
    /// No term (IQ4_XS).
    None,
    /// The mins: `-dmin * d_y * sum(m * bsums)`, a float term of its own.
    Min,
    /// A constant offset `o` of the quants: `sum(o * scale * bsums)` joins the integer lanes.
    Offset(i16),
}

/// A super-block's per-block values.
struct Prep {
    /// The scale of each 16 elements as i8 (a 32-element sub-block's twice).
    scales: int8x16_t,
    /// The min of each 16 elements as i8, for [`Bsum::Min`].
    mins: int8x16_t,
    d: f32,
    dmin: f32,
}

/// A K-quant super-block as the NEON kernel sees it.
trait KQuant: Block {
    const BSUM: Bsum;
    /// # Safety
    /// NEON (baseline on aarch64).
    unsafe fn prep(&self) -> Prep;
    /// Elements `64k .. 64k + 64` (k in 0..4) as four vectors of 16 quants (without the
    /// offset of [`Bsum::Offset`]).
    ///
    /// # Safety
    /// As [`prep`](Self::prep).
    unsafe fn chunk(&self, k: usize) -> [int8x16_t; 4];
}

/// `d` and `dmin` widened in one conversion.
#[inline]
#[target_feature(enable = "neon")]
fn d_dmin(d: Half, dmin: Half) -> (f32, f32) {
    let v = f16x4(d.to_bits() as u64 | ((dmin.to_bits() as u64) << 16));
    (vgetq_lane_f32::<0>(v), vgetq_lane_f32::<1>(v))
}

/// 8 bytes (byte `j` of the little-endian `v` for 32-element sub-block `j`) each repeated for
/// the two 16-element halves of its sub-block.
#[inline]
#[target_feature(enable = "neon")]
fn per_16(v: u64) -> int8x16_t {
    let v = vcombine_s8(vcreate_s8(v), vcreate_s8(0));
    vzip1q_s8(v, v)
}

/// Q4_K / Q5_K: the 6-bit scales and mins ([`scales_mins_k4`]).
#[inline]
#[target_feature(enable = "neon")]
fn k4_prep(d: Half, dmin: Half, scales: &[u8; 12]) -> Prep {
    let (sc, mn) = scales_mins_k4(scales);
    let (d, dmin) = d_dmin(d, dmin);
    Prep {
        scales: per_16(sc),
        mins: per_16(mn),
        d,
        dmin,
    }
}

/// A type with 16 signed scales and no mins.
#[inline]
#[target_feature(enable = "neon")]
fn scales_prep(scales: &[i8; 16], d: Half) -> Prep {
    Prep {
        scales: load16s(scales, 0),
        mins: vdupq_n_s8(0),
        d: d_dmin(d, d).0,
        dmin: 0.0,
    }
}

/// Chunk `k` of the 2-bit fields of Q2_K / Q3_K: per 128 elements (`k / 2`), byte `l` of 32
/// holds elements `l + 32f` at shift `2f`; chunk `k` is fields `f = 2(k % 2)` and `f + 1`.
#[inline]
#[target_feature(enable = "neon")]
fn two_bit_chunk(qs: &[u8; 64], k: usize) -> [uint8x16_t; 4] {
    let (a, b) = (load16(qs, 32 * (k / 2)), load16(qs, 32 * (k / 2) + 16));
    let s = 4 * (k % 2) as i8;
    [(a, s), (b, s), (a, s + 2), (b, s + 2)].map(|(v, s)| two_bits(v, s))
}

/// The 2-bit fields at shift `s` of the bytes of `v`.
#[inline]
#[target_feature(enable = "neon")]
fn two_bits(v: uint8x16_t, s: i8) -> uint8x16_t {
    vandq_u8(vshlq_u8(v, vdupq_n_s8(-s)), vdupq_n_u8(3))
}

/// Chunk `k` of Q4_K's nibbles: per 64 elements 32 bytes, elements `l` in the low nibbles,
/// `l + 32` in the high ones.
#[inline]
#[target_feature(enable = "neon")]
fn k4_chunk(qs: &[u8; 128], k: usize) -> [uint8x16_t; 4] {
    let (l0, h0) = nibbles(load16(qs, 32 * k));
    let (l1, h1) = nibbles(load16(qs, 32 * k + 16));
    [l0, l1, h0, h1]
}

/// Chunk `k`'s values of Q3_K's `hmask` / Q5_K's `qh` (bit `c` of byte `l` for element
/// `32c + l`): `value` where the bit is set.
#[inline]
#[target_feature(enable = "neon")]
fn high_bits(bits: &[u8; 32], k: usize, value: u8) -> [uint8x16_t; 4] {
    let (h0, h1) = (load16(bits, 0), load16(bits, 16));
    [(h0, 2 * k), (h1, 2 * k), (h0, 2 * k + 1), (h1, 2 * k + 1)].map(|(h, c)| bit_as(h, c, value))
}

/// `a[j] | b[j]` as signed bytes (values below 128).
#[inline]
#[target_feature(enable = "neon")]
fn or(a: [uint8x16_t; 4], b: [uint8x16_t; 4]) -> [int8x16_t; 4] {
    std::array::from_fn(|j| vreinterpretq_s8_u8(vorrq_u8(a[j], b[j])))
}

/// Chunk `k` of Q6_K (per 128 elements `h = k / 2`: 64 bytes of `ql`, 32 of `qh`): vector `j`
/// is the low (`k` even) or high nibbles of `ql[64h + 16j ..]` with bits `4(k % 2) + 2(j / 2)`
/// of `qh[32h + 16(j % 2) ..]` on top (0..64).
#[inline]
#[target_feature(enable = "neon")]
fn q6k_chunk(b: &BlockQ6K, k: usize) -> [int8x16_t; 4] {
    let h = k / 2;
    let low: [uint8x16_t; 4] = std::array::from_fn(|j| {
        let (lo, hi) = nibbles(load16(&b.ql, 64 * h + 16 * j));
        if k.is_multiple_of(2) {
            lo
        } else {
            hi
        }
    });
    let high: [uint8x16_t; 4] = std::array::from_fn(|j| {
        let v = load16(&b.qh, 32 * h + 16 * (j % 2));
        let two = two_bits(v, (4 * (k % 2) + 2 * (j / 2)) as i8);
        vshlq_n_u8::<4>(two)
    });
    or(low, high)
}

/// Sub-blocks `2k`, `2k + 1` of IQ4_XS (16 nibble bytes each: element `j` low, `j + 16`
/// high) as levels.
#[inline]
#[target_feature(enable = "neon")]
fn iq4xs_chunk(qs: &[u8; 128], k: usize) -> [int8x16_t; 4] {
    let (l0, h0) = nibbles(load16(qs, 32 * k));
    let (l1, h1) = nibbles(load16(qs, 32 * k + 16));
    [l0, h0, l1, h1].map(|v| iq4_levels(v))
}

/// `impl KQuant` for each block type: `|b| prep of block b` and `|b, k| chunk k of block b`.
macro_rules! kquant {
    ($($w:ty { bsum: $bsum:expr }, |$pb:ident| $prep:expr, |$cb:ident, $k:ident| $chunk:expr;)*) => {$(
        impl KQuant for $w {
            const BSUM: Bsum = $bsum;
            #[inline]
            #[target_feature(enable = "neon")]
            unsafe fn prep(&self) -> Prep {
                let $pb = self;
                $prep
            }
            #[inline]
            #[target_feature(enable = "neon")]
            unsafe fn chunk(&self, $k: usize) -> [int8x16_t; 4] {
                let $cb = self;
                $chunk
            }
        }
    )*};
}

// Q3_K: the quants taken as q + 4 * hbit with an offset of -4; Q6_K: q with an offset of -32.
kquant! {
    BlockQ2K { bsum: Bsum::Min },
        |b| {
            let (sc, mn) = nibbles(load16(&b.scales, 0));
            let (d, dmin) = d_dmin(b.d, b.dmin);
            Prep { scales: vreinterpretq_s8_u8(sc), mins: vreinterpretq_s8_u8(mn), d, dmin }
        },
        |b, k| two_bit_chunk(&b.qs, k).map(|v| vreinterpretq_s8_u8(v));
    BlockQ3K { bsum: Bsum::Offset(-4) },
        |b| scales_prep(&q3k_scales(&b.scales), b.d),
        |b, k| or(two_bit_chunk(&b.qs, k), high_bits(&b.hmask, k, 4));
    BlockQ4K { bsum: Bsum::Min },
        |b| k4_prep(b.d, b.dmin, &b.scales),
        |b, k| k4_chunk(&b.qs, k).map(|v| vreinterpretq_s8_u8(v));
    BlockQ5K { bsum: Bsum::Min },
        |b| k4_prep(b.d, b.dmin, &b.scales),
        |b, k| or(k4_chunk(&b.qs, k), high_bits(&b.qh, k, 16));
    BlockQ6K { bsum: Bsum::Offset(-32) },
        |b| scales_prep(&b.scales, b.d),
        |b, k| q6k_chunk(b, k);
    BlockIq4Xs { bsum: Bsum::None },
        |b| {
            let sc: [u8; 8] = std::array::from_fn(|ib| b.scale(ib) as i8 as u8);
            Prep { scales: per_16(u64::from_le_bytes(sc)), mins: vdupq_n_s8(0), d: d_dmin(b.d, b.d).0, dmin: 0.0 }
        },
        |b, k| iq4xs_chunk(&b.qs, k);
}

/// `sum(w[j] * bsums[j])` over `j = 2i, 2i + 1` in lane `i` of 8 (two vectors of 4), the
/// AVX2 kernels' `madd` of the 16 bsums with their 16 weights.
#[inline]
#[target_feature(enable = "neon")]
fn bsum_lanes((w0, w1): (int16x8_t, int16x8_t), y: &BlockQ8K) -> [int32x4_t; 2] {
    let (b0, b1) = (
        vreinterpretq_s16_u8(load16(&y.bsums, 0)),
        vreinterpretq_s16_u8(load16(&y.bsums, 8)),
    );
    let pairs = |b: int16x8_t, w: int16x8_t| {
        vpaddq_s32(
            vmull_s16(vget_low_s16(b), vget_low_s16(w)),
            vmull_high_s16(b, w),
        )
    };
    [pairs(b0, w0), pairs(b1, w1)]
}

/// The 16 i8 of `v` widened to i16.
#[inline]
#[target_feature(enable = "neon")]
fn widen(v: int8x16_t) -> (int16x8_t, int16x8_t) {
    (vmovl_s8(vget_low_s8(v)), vmovl_high_s8(v))
}

/// One K-quant weight row against `T` tokens (see the module doc).
///
/// # Safety
/// The CPU must have `D`'s instructions; `w` and every `a[t]` hold at least `nb` blocks.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn kquant_tokens<W: KQuant, D: I8Dot, const T: usize>(
    nb: usize,
    w: &[W],
    a: [&[BlockQ8K]; T],
) -> [f32; T] {
    debug_assert!(w.len() >= nb && a.iter().all(|a| a.len() >= nb));
    let zero = vdupq_n_f32(0.0);
    // Per token the 8 lanes as two vectors: lanes 0..4 and 4..8.
    let mut acc = [[zero; 2]; T];
    let mut macc = [[zero; 2]; T];
    for (i, x) in w.iter().enumerate().take(nb) {
        // SAFETY: NEON is baseline on aarch64.
        let p = unsafe { x.prep() };
        // The scales of vectors 4k .. 4k + 4 (chunk k) as i32 lanes.
        let (s0, s1) = widen(p.scales);
        let sc = [
            vmovl_s16(vget_low_s16(s0)),
            vmovl_high_s16(s0),
            vmovl_s16(vget_low_s16(s1)),
            vmovl_high_s16(s1),
        ];
        let mut sumi = [[vdupq_n_s32(0); 2]; T];
        for t in 0..T {
            let y = &a[t][i];
            match W::BSUM {
                Bsum::None => {}
                Bsum::Offset(o) => {
                    let (w0, w1) = widen(p.scales);
                    sumi[t] = bsum_lanes((vmulq_n_s16(w0, o), vmulq_n_s16(w1, o)), y);
                }
                Bsum::Min => {
                    let [m0, m1] = bsum_lanes(widen(p.mins), y);
                    let c = p.dmin * -y.d();
                    macc[t][0] = vfmaq_n_f32(macc[t][0], vcvtq_f32_s32(m0), c);
                    macc[t][1] = vfmaq_n_f32(macc[t][1], vcvtq_f32_s32(m1), c);
                }
            }
        }
        for (k, &sck) in sc.iter().enumerate() {
            // SAFETY: NEON is baseline on aarch64; k < 4.
            let q = unsafe { x.chunk(k) };
            for t in 0..T {
                let y = &a[t][i].qs;
                // SAFETY: the caller guarantees `D`'s instructions.
                let dots: [int32x4_t; 4] = std::array::from_fn(|j| unsafe {
                    D::dot(vdupq_n_s32(0), q[j], load16s(y, 64 * k + 16 * j))
                });
                // Vectors 0 and 2 (the first 16 elements of each 32) into lanes 0..4, 1 and 3
                // into lanes 4..8, each times its scale.
                let [lo, hi] = &mut sumi[t];
                *lo = vmlaq_laneq_s32::<0>(*lo, dots[0], sck);
                *hi = vmlaq_laneq_s32::<1>(*hi, dots[1], sck);
                *lo = vmlaq_laneq_s32::<2>(*lo, dots[2], sck);
                *hi = vmlaq_laneq_s32::<3>(*hi, dots[3], sck);
            }
        }
        for t in 0..T {
            let dd = p.d * a[t][i].d();
            for h in 0..2 {
                acc[t][h] = vfmaq_n_f32(acc[t][h], vcvtq_f32_s32(sumi[t][h]), dd);
            }
        }
    }
    let mut out = [0.0f32; T];
    for t in 0..T {
        out[t] = match W::BSUM {
            Bsum::Min => hsum8(acc[t][0], acc[t][1]) + hsum8(macc[t][0], macc[t][1]),
            _ => hsum8(acc[t][0], acc[t][1]),
        };
    }
    out
}

neon_dot!(kquant_tokens, 4; BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockIq4Xs);
