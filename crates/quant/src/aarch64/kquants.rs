//! NEON kernels of the 256-element super-blocks against Q8_K: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and
//! IQ4_XS. A super-block is walked in four 64-element chunks, each unpacked into four signed
//! 16-byte vectors in element order (the quants' offsets already applied: Q3_K's `-4` where
//! the high bit is clear, Q6_K's `-32`). Each vector's exact dot with the token's quants is
//! reduced to one i32, so the four vectors of a chunk give four lanes, which are multiplied by
//! their 16-element scales (a 32-element sub-block's scale stands twice) and summed into 4 i32
//! lanes: exactly the scalar reference's integer sum. The mins (Q2_K, Q4_K, Q5_K) weigh the
//! activation's stored 16-element sums `bsums`, as the scalar references do. Per super-block
//! `acc = fma(float(lanes), d * d_y, acc)` and `macc = fma(float(min lanes), -dmin * d_y,
//! macc)`, 4 lanes each, summed at the end.

use super::{bit_as, f16x4, iq4_levels, load16, load16s, nibbles, I8Dot};
use crate::fp::Half;
use crate::iq4::BlockIq4Xs;
use crate::kquants::{
    q3k_scales, scales_mins_k4, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K,
};
use crate::Block;
use std::arch::aarch64::*;

/// A super-block's per-block values.
struct Prep {
    /// The scale of each 16 elements as i8 (a 32-element sub-block's twice).
    scales: int8x16_t,
    /// The min of each 16 elements as i8, for the types with mins.
    mins: int8x16_t,
    d: f32,
    dmin: f32,
}

/// A K-quant super-block as the NEON kernel sees it.
trait KQuant: Block {
    /// `x = d * sc * q - dmin * m`: the min term over `bsums`.
    const MIN: bool;
    /// # Safety
    /// NEON (baseline on aarch64).
    unsafe fn prep(&self) -> Prep;
    /// Elements `64k .. 64k + 64` (k in 0..4) as four vectors of 16 signed values.
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
    let field = |v: uint8x16_t, s: i8| vandq_u8(vshlq_u8(v, vdupq_n_s8(-s)), vdupq_n_u8(3));
    [field(a, s), field(b, s), field(a, s + 2), field(b, s + 2)]
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
    [
        bit_as(h0, 2 * k, value),
        bit_as(h1, 2 * k, value),
        bit_as(h0, 2 * k + 1, value),
        bit_as(h1, 2 * k + 1, value),
    ]
}

/// `(a[j] | b[j]) - o` as signed values.
#[inline]
#[target_feature(enable = "neon")]
fn combine(a: [uint8x16_t; 4], b: [uint8x16_t; 4], o: u8) -> [int8x16_t; 4] {
    let o = vdupq_n_u8(o);
    std::array::from_fn(|j| vreinterpretq_s8_u8(vsubq_u8(vorrq_u8(a[j], b[j]), o)))
}

/// Chunk `k` of Q6_K (per 128 elements `h = k / 2`: 64 bytes of `ql`, 32 of `qh`): vector `j`
/// is the low (`k` even) or high nibbles of `ql[64h + 16j ..]` with bits `4(k % 2) + 2(j / 2)`
/// of `qh[32h + 16(j % 2) ..]` on top, minus 32.
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
        let s = (4 * (k % 2) + 2 * (j / 2)) as i8;
        let two = vandq_u8(vshlq_u8(v, vdupq_n_s8(-s)), vdupq_n_u8(3));
        vshlq_n_u8::<4>(two)
    });
    combine(low, high, 32)
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
    ($($w:ty { min: $min:expr }, |$pb:ident| $prep:expr, |$cb:ident, $k:ident| $chunk:expr;)*) => {$(
        impl KQuant for $w {
            const MIN: bool = $min;
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

kquant! {
    BlockQ2K { min: true },
        |b| {
            let v = load16(&b.scales, 0);
            let (d, dmin) = d_dmin(b.d, b.dmin);
            let (sc, mn) = nibbles(v);
            Prep { scales: vreinterpretq_s8_u8(sc), mins: vreinterpretq_s8_u8(mn), d, dmin }
        },
        |b, k| combine(two_bit_chunk(&b.qs, k), [vdupq_n_u8(0); 4], 0);
    BlockQ3K { min: false },
        |b| scales_prep(&q3k_scales(&b.scales), b.d),
        |b, k| combine(two_bit_chunk(&b.qs, k), high_bits(&b.hmask, k, 4), 4);
    BlockQ4K { min: true },
        |b| k4_prep(b.d, b.dmin, &b.scales),
        |b, k| combine(k4_chunk(&b.qs, k), [vdupq_n_u8(0); 4], 0);
    BlockQ5K { min: true },
        |b| k4_prep(b.d, b.dmin, &b.scales),
        |b, k| combine(k4_chunk(&b.qs, k), high_bits(&b.qh, k, 16), 0);
    BlockQ6K { min: false },
        |b| scales_prep(&b.scales, b.d),
        |b, k| q6k_chunk(b, k);
    BlockIq4Xs { min: false },
        |b| {
            let sc: [u8; 8] = std::array::from_fn(|ib| b.scale(ib) as i8 as u8);
            Prep { scales: per_16(u64::from_le_bytes(sc)), mins: vdupq_n_s8(0), d: d_dmin(b.d, b.d).0, dmin: 0.0 }
        },
        |b, k| iq4xs_chunk(&b.qs, k);
}

/// `sum(mins[j] * bsums[j])` over the 16 sums of `y`, in 4 i32 lanes.
#[inline]
#[target_feature(enable = "neon")]
fn min_lanes(mins: int8x16_t, y: &BlockQ8K) -> int32x4_t {
    let (b0, b1) = (
        vreinterpretq_s16_u8(load16(&y.bsums, 0)),
        vreinterpretq_s16_u8(load16(&y.bsums, 8)),
    );
    let (m0, m1) = (vmovl_s8(vget_low_s8(mins)), vmovl_high_s8(mins));
    let s = vmull_s16(vget_low_s16(b0), vget_low_s16(m0));
    let s = vmlal_high_s16(s, b0, m0);
    let s = vmlal_s16(s, vget_low_s16(b1), vget_low_s16(m1));
    vmlal_high_s16(s, b1, m1)
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
    let mut acc = [vdupq_n_f32(0.0); T];
    let mut macc = [vdupq_n_f32(0.0); T];
    for (i, x) in w.iter().enumerate().take(nb) {
        // SAFETY: NEON is baseline on aarch64.
        let p = unsafe { x.prep() };
        // The scales of vectors 4k .. 4k + 4 (chunk k) as i32 lanes.
        let (s0, s1) = (vmovl_s8(vget_low_s8(p.scales)), vmovl_high_s8(p.scales));
        let sc = [
            vmovl_s16(vget_low_s16(s0)),
            vmovl_high_s16(s0),
            vmovl_s16(vget_low_s16(s1)),
            vmovl_high_s16(s1),
        ];
        let mut sumi = [vdupq_n_s32(0); T];
        for (k, sck) in sc.iter().enumerate() {
            // SAFETY: NEON is baseline on aarch64; k < 4.
            let q = unsafe { x.chunk(k) };
            for t in 0..T {
                let y = &a[t][i].qs;
                // SAFETY: the caller guarantees `D`'s instructions.
                let dots: [int32x4_t; 4] = std::array::from_fn(|j| unsafe {
                    D::dot(vdupq_n_s32(0), q[j], load16s(y, 64 * k + 16 * j))
                });
                // Lane j: the whole dot of vector j.
                let per_vec =
                    vpaddq_s32(vpaddq_s32(dots[0], dots[1]), vpaddq_s32(dots[2], dots[3]));
                sumi[t] = vmlaq_s32(sumi[t], per_vec, *sck);
            }
        }
        for t in 0..T {
            let y = &a[t][i];
            acc[t] = vfmaq_n_f32(acc[t], vcvtq_f32_s32(sumi[t]), p.d * y.d());
            if W::MIN {
                let m = vcvtq_f32_s32(min_lanes(p.mins, y));
                macc[t] = vfmaq_n_f32(macc[t], m, -p.dmin * y.d());
            }
        }
    }
    let mut out = [0.0f32; T];
    for t in 0..T {
        out[t] = if W::MIN {
            vaddvq_f32(acc[t]) + vaddvq_f32(macc[t])
        } else {
            vaddvq_f32(acc[t])
        };
    }
    out
}

neon_dot!(kquant_tokens, 4; BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockIq4Xs);
