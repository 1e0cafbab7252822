//! AVX2 kernels of the float types F32, F16 (F16C) and BF16 against rows of the same type:
//! [`simd::float_tokens`] over 8-lane vectors (per token four FMA chains over 32-element
//! steps, then 8-element steps into the first, `(c0 + c1) + (c2 + c3)` summed as
//! `hsum_float_8`, plus the last `n % 8` products in order).

use super::hsum_ps;
use crate::fp::{Bf16, Half};
use crate::simd::{self, F32Vec, LoadF32};
use std::arch::x86_64::*;

impl F32Vec for __m256 {
    const LANES: usize = 8;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn zero() -> Self {
        _mm256_setzero_ps()
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn fma(acc: Self, x: Self, y: Self) -> Self {
        _mm256_fmadd_ps(x, y, acc)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn sum4([c0, c1, c2, c3]: [Self; 4]) -> f32 {
        hsum_ps(_mm256_add_ps(_mm256_add_ps(c0, c1), _mm256_add_ps(c2, c3)))
    }
}

impl LoadF32<__m256> for f32 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load(v: &[Self]) -> __m256 {
        let v = &v[..8];
        // SAFETY: `v` is 8 f32, read unaligned.
        unsafe { _mm256_loadu_ps(v.as_ptr()) }
    }
}

impl LoadF32<__m256> for Half {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load(v: &[Self]) -> __m256 {
        let v = &v[..8];
        // SAFETY: `v` is 8 two-byte values = 16 bytes, read unaligned.
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(v.as_ptr().cast()) })
    }
}

impl LoadF32<__m256> for Bf16 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load(v: &[Self]) -> __m256 {
        let v = &v[..8];
        // SAFETY: `v` is 8 two-byte values = 16 bytes, read unaligned.
        let bits = _mm256_cvtepu16_epi32(unsafe { _mm_loadu_si128(v.as_ptr().cast()) });
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(bits))
    }
}

/// One float weight row against `T` tokens (see the module doc).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w` and every `a[t]` hold at least `n` elements.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn float_tokens<E: LoadF32<__m256>, const T: usize>(
    n: usize,
    w: &[E],
    a: [&[E]; T],
) -> [f32; T] {
    // SAFETY: the caller's guarantees.
    unsafe { simd::float_tokens::<E, __m256, T>(n, w, a) }
}

// Four chains per token: two tokens fill 8 of the 16 registers.
avx2_dot!(float_tokens, 2; f32, Half, Bf16);
