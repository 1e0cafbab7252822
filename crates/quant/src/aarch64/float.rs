//! NEON kernels of the float types F32, F16 (`fcvtl`) and BF16 against rows of the same type:
//! [`simd::float_tokens`] over 8 lanes (two vectors), the AVX2 kernels' arithmetic and so
//! their bits: per token four FMA chains over 32-element steps, then 8-element steps into the
//! first, `(c0 + c1) + (c2 + c3)` summed in `hsum_float_8`'s order, plus the last `n % 8`
//! products in order.

use super::{f16x4, hsum8, I8Dot};
use crate::fp::{Bf16, Half};
use crate::simd::{self, F32Vec, LoadF32};
use std::arch::aarch64::*;

/// Eight f32 lanes as two NEON vectors (lanes 0..4, 4..8): the AVX2 kernels' vector, so that
/// the float kernels sum in the same order.
#[derive(Clone, Copy)]
struct F32x8(float32x4_t, float32x4_t);

impl F32Vec for F32x8 {
    const LANES: usize = 8;
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn zero() -> Self {
        F32x8(vdupq_n_f32(0.0), vdupq_n_f32(0.0))
    }
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn fma(acc: Self, x: Self, y: Self) -> Self {
        F32x8(vfmaq_f32(acc.0, x.0, y.0), vfmaq_f32(acc.1, x.1, y.1))
    }
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn sum4([c0, c1, c2, c3]: [Self; 4]) -> f32 {
        let half = |a: float32x4_t, b: float32x4_t, c: float32x4_t, d: float32x4_t| {
            vaddq_f32(vaddq_f32(a, b), vaddq_f32(c, d))
        };
        hsum8(half(c0.0, c1.0, c2.0, c3.0), half(c0.1, c1.1, c2.1, c3.1))
    }
}

/// Two-byte elements `4h .. 4h + 4` of `v` as one little-endian u64.
#[inline]
fn bits4<T: bytemuck::Pod>(v: &[T], h: usize) -> u64 {
    let b: &[u8] = bytemuck::cast_slice(&v[4 * h..4 * h + 4]);
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

impl LoadF32<F32x8> for f32 {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load(v: &[Self]) -> F32x8 {
        let v = &v[..8];
        // SAFETY: `v` is 8 f32; `vld1q_f32` needs only their natural alignment.
        unsafe { F32x8(vld1q_f32(v.as_ptr()), vld1q_f32(v[4..].as_ptr())) }
    }
}

impl LoadF32<F32x8> for Half {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load(v: &[Self]) -> F32x8 {
        F32x8(f16x4(bits4(v, 0)), f16x4(bits4(v, 1)))
    }
}

impl LoadF32<F32x8> for Bf16 {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load(v: &[Self]) -> F32x8 {
        // A bf16 is the top half of an f32.
        let f = |h| vreinterpretq_f32_u32(vshll_n_u16::<16>(vcreate_u16(bits4(v, h))));
        F32x8(f(0), f(1))
    }
}

/// One float weight row against `T` tokens (see the module doc); `D` is unused (no integer
/// products here).
///
/// # Safety
/// `w` and every `a[t]` hold at least `n` elements.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn float_tokens<E: LoadF32<F32x8>, D: I8Dot, const T: usize>(
    n: usize,
    w: &[E],
    a: [&[E]; T],
) -> [f32; T] {
    // SAFETY: NEON is baseline; the caller's guarantees.
    unsafe { simd::float_tokens::<E, F32x8, T>(n, w, a) }
}

// Four chains of two vectors per token: two tokens take 16 of the 32 registers.
neon_dot!(float_tokens, 2; f32, Half, Bf16);
