//! NEON kernels of the 32-element blocks against Q8_0 / Q8_1: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0
//! and IQ4_NL, in the AVX2 kernels' (llama.cpp's x86) arithmetic, so that their results are
//! the same bits. A block's 32 quants are unpacked into two signed 16-byte vectors in element
//! order (nibbles: byte `j` holds elements `j` and `j + 16`) and dotted with the token's quants
//! exactly into 8 i32 lanes (two vectors of 4) holding the AVX2 lanes' sums: elements
//! `4i .. 4i + 4`, or for Q8_0, whose AVX2 kernel widens to 16 bits, elements `2i, 2i + 1,
//! 16 + 2i, 17 + 2i` (pairs interleaved before the dot). Then block after block
//! `acc = fma(float(lanes), d_w * d_y, acc)` in the 8 lanes, `m * s` summed apart for the types
//! with a min, and `hsum_float_8(acc) + sum(m * s)` at the end.

use super::{f16x4, hsum8, iq4_levels, load16, load16s, nibbles, I8Dot};
use crate::iq4::BlockIq4Nl;
use crate::legacy::{scale_bits, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, Q8Act};
use crate::{Block, GgmlType, VecDot};
use std::arch::aarch64::*;

/// A legacy weight block as the NEON kernel sees it.
trait Legacy: VecDot<Act: Q8Act> {
    /// `x = d * q + m` (the types dotted with Q8_1): the `m * s` term is added per block.
    const HAS_MIN: bool = matches!(<Self::Act as Block>::TYPE, GgmlType::Q8_1);
    /// Lanes of element pairs `2i, 2i + 1, 16 + 2i, 17 + 2i` (Q8_0's AVX2 layout).
    const INTERLEAVED: bool = false;
    /// The 32 quants, signed, in element order: elements 0..16 and 16..32.
    ///
    /// # Safety
    /// NEON (baseline on aarch64).
    unsafe fn quants(&self) -> (int8x16_t, int8x16_t);
}

/// Q4 values `(q & 15) - o`, `(q >> 4) - o` of 16 nibble bytes: elements 0..16 and 16..32.
#[inline]
#[target_feature(enable = "neon")]
fn q4(qs: &[u8; 16], o: u8) -> (int8x16_t, int8x16_t) {
    let (lo, hi) = nibbles(load16(qs, 0));
    let o = vdupq_n_u8(o);
    (
        vreinterpretq_s8_u8(vsubq_u8(lo, o)),
        vreinterpretq_s8_u8(vsubq_u8(hi, o)),
    )
}

/// Q5 values minus `o`: the nibbles plus 16 where bit `j` of `qh` (little-endian) is set for
/// element `j`.
#[inline]
#[target_feature(enable = "neon")]
fn q5(qh: [u8; 4], qs: &[u8; 16], o: u8) -> (int8x16_t, int8x16_t) {
    let (lo, hi) = nibbles(load16(qs, 0));
    let h = vreinterpretq_u8_u32(vdupq_n_u32(u32::from_le_bytes(qh)));
    // Byte j of each half <- byte j / 8 of its 16 bits of `qh`, then tested against bit j % 8.
    let spread = |a: u64, b: u64| vqtbl1q_u8(h, vcombine_u8(vcreate_u8(a), vcreate_u8(b)));
    let bits = vreinterpretq_u8_u64(vdupq_n_u64(0x8040_2010_0804_0201));
    let high = |v: uint8x16_t| vandq_u8(vtstq_u8(v, bits), vdupq_n_u8(0x10));
    let (h0, h1) = (
        high(spread(0, 0x0101_0101_0101_0101)),
        high(spread(0x0202_0202_0202_0202, 0x0303_0303_0303_0303)),
    );
    let o = vdupq_n_u8(o);
    (
        vreinterpretq_s8_u8(vsubq_u8(vorrq_u8(lo, h0), o)),
        vreinterpretq_s8_u8(vsubq_u8(vorrq_u8(hi, h1), o)),
    )
}

/// Pairs of bytes of `a` and `b` interleaved: bytes `4i .. 4i + 4` of the first result are
/// `a[2i], a[2i + 1], b[2i], b[2i + 1]` (i < 4), of the second the same for `i + 4`.
#[inline]
#[target_feature(enable = "neon")]
fn interleave((a, b): (int8x16_t, int8x16_t)) -> (int8x16_t, int8x16_t) {
    let (a, b) = (vreinterpretq_s16_s8(a), vreinterpretq_s16_s8(b));
    (
        vreinterpretq_s8_s16(vzip1q_s16(a, b)),
        vreinterpretq_s8_s16(vzip2q_s16(a, b)),
    )
}

/// `impl Legacy` for each block type: `|b| quants of block b` (and `interleaved`).
macro_rules! legacy {
    ($($w:ty: $(interleaved: $il:expr,)? |$b:ident| $quants:expr;)*) => {$(
        impl Legacy for $w {
            $(const INTERLEAVED: bool = $il;)?
            #[inline]
            #[target_feature(enable = "neon")]
            unsafe fn quants(&self) -> (int8x16_t, int8x16_t) {
                let $b = self;
                $quants
            }
        }
    )*};
}

legacy! {
    BlockQ4_0: |b| q4(&b.qs, 8);
    BlockQ4_1: |b| q4(&b.qs, 0);
    BlockQ5_0: |b| q5(b.qh, &b.qs, 16);
    BlockQ5_1: |b| q5(b.qh, &b.qs, 0);
    BlockQ8_0: interleaved: true, |b| (load16s(&b.qs, 0), load16s(&b.qs, 16));
    BlockIq4Nl: |b| {
        let (lo, hi) = nibbles(load16(&b.qs, 0));
        (iq4_levels(lo), iq4_levels(hi))
    };
}

/// One legacy weight row against `T` tokens (see the module doc).
///
/// # Safety
/// The CPU must have `D`'s instructions; `w` and every `a[t]` hold at least `nb` blocks.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn legacy_tokens<W: Legacy, D: I8Dot, const T: usize>(
    nb: usize,
    w: &[W],
    a: [&[W::Act]; T],
) -> [f32; T] {
    debug_assert!(w.len() >= nb && a.iter().all(|a| a.len() >= nb));
    // Per token the 8 lanes as two vectors: lanes 0..4 and 4..8.
    let mut acc = [[vdupq_n_f32(0.0); 2]; T];
    let mut summs = [0.0f32; T];
    for (i, x) in w.iter().enumerate().take(nb) {
        // SAFETY: NEON is baseline on aarch64.
        let mut q = unsafe { x.quants() };
        if W::INTERLEAVED {
            q = interleave(q);
        }
        for t in 0..T {
            let y = &a[t][i];
            let mut yq = (load16s(y.qs(), 0), load16s(y.qs(), 16));
            if W::INTERLEAVED {
                yq = interleave(yq);
            }
            let zero = vdupq_n_s32(0);
            // SAFETY (both): the caller guarantees `D`'s instructions.
            let lo = unsafe { D::dot(zero, q.0, yq.0) };
            let hi = unsafe { D::dot(zero, q.1, yq.1) };
            // Lanes d_w, m, d_y, s; times d_y, s: d_w * d_y, m * s.
            let v = f16x4(scale_bits(x, y));
            let p = vmulq_f32(v, vextq_f32::<2>(v, v));
            let [c0, c1] = &mut acc[t];
            *c0 = vfmaq_laneq_f32::<0>(*c0, vcvtq_f32_s32(lo), p);
            *c1 = vfmaq_laneq_f32::<0>(*c1, vcvtq_f32_s32(hi), p);
            if W::HAS_MIN {
                summs[t] += vgetq_lane_f32::<1>(p);
            }
        }
    }
    let mut out = [0.0f32; T];
    for t in 0..T {
        out[t] = hsum8(acc[t][0], acc[t][1]) + summs[t];
    }
    out
}

neon_dot!(legacy_tokens, 4; BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockIq4Nl);
