//! NEON kernels of the float types F32, F16 (`fcvtl`) and BF16 against rows of the same type:
//! [`simd::float_tokens`] over 4-lane vectors (per token four FMA chains over 16-element
//! steps, then 4-element steps into the first, `(c0 + c1) + (c2 + c3)` summed across lanes,
//! plus the last `n % 4` products in order).

use super::{f16x4, I8Dot};
use crate::fp::{Bf16, Half};
use crate::simd::{self, F32Vec, LoadF32};
use std::arch::aarch64::*;

impl F32Vec for float32x4_t {
    const LANES: usize = 4;
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn zero() -> Self {
        vdupq_n_f32(0.0)
    }
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn fma(acc: Self, x: Self, y: Self) -> Self {
        vfmaq_f32(acc, x, y)
    }
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn sum4([c0, c1, c2, c3]: [Self; 4]) -> f32 {
        vaddvq_f32(vaddq_f32(vaddq_f32(c0, c1), vaddq_f32(c2, c3)))
    }
}

/// The first 4 two-byte elements of `v` as one little-endian u64.
#[inline]
fn bits4<T: bytemuck::Pod>(v: &[T]) -> u64 {
    let b: &[u8] = bytemuck::cast_slice(&v[..4]);
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

impl LoadF32<float32x4_t> for f32 {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load(v: &[Self]) -> float32x4_t {
        let v = &v[..4];
        // SAFETY: `v` is 4 f32; `vld1q_f32` needs only their natural alignment.
        unsafe { vld1q_f32(v.as_ptr()) }
    }
}

impl LoadF32<float32x4_t> for Half {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load(v: &[Self]) -> float32x4_t {
        f16x4(bits4(v))
    }
}

impl LoadF32<float32x4_t> for Bf16 {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load(v: &[Self]) -> float32x4_t {
        // A bf16 is the top half of an f32.
        vreinterpretq_f32_u32(vshll_n_u16::<16>(vcreate_u16(bits4(v))))
    }
}

/// One float weight row against `T` tokens (see the module doc); `D` is unused (no integer
/// products here).
///
/// # Safety
/// `w` and every `a[t]` hold at least `n` elements.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn float_tokens<E: LoadF32<float32x4_t>, D: I8Dot, const T: usize>(
    n: usize,
    w: &[E],
    a: [&[E]; T],
) -> [f32; T] {
    // SAFETY: NEON is baseline; the caller's guarantees.
    unsafe { simd::float_tokens::<E, float32x4_t, T>(n, w, a) }
}

// Four chains per token: four tokens take 16 of the 32 registers.
neon_dot!(float_tokens, 4; f32, Half, Bf16);
