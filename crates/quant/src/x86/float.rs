//! AVX2 kernels of the float types F32, F16 (F16C) and BF16 against rows of the same type:
//! per token four 8-lane FMA chains over 32-element steps, then 8-element steps into the first,
//! `(c0 + c1) + (c2 + c3)` summed as `hsum_float_8`, plus the last `n % 8` products in order.

use super::hsum_ps;
use crate::fp::{Bf16, Half};
use crate::Block;
use std::arch::x86_64::*;

/// A float element type as the AVX2 kernel loads it.
trait FloatElem: Block {
    /// The first 8 elements of `v` (which holds at least 8) widened to f32.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    unsafe fn load8(v: &[Self]) -> __m256;
    fn to_f32(self) -> f32;
}

impl FloatElem for f32 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(v: &[Self]) -> __m256 {
        let v = &v[..8];
        // SAFETY: `v` is 8 f32, read unaligned.
        unsafe { _mm256_loadu_ps(v.as_ptr()) }
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl FloatElem for Half {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(v: &[Self]) -> __m256 {
        let v = &v[..8];
        // SAFETY: `v` is 8 two-byte values = 16 bytes, read unaligned.
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(v.as_ptr().cast()) })
    }
    fn to_f32(self) -> f32 {
        Half::to_f32(self)
    }
}

impl FloatElem for Bf16 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(v: &[Self]) -> __m256 {
        let v = &v[..8];
        // SAFETY: `v` is 8 two-byte values = 16 bytes, read unaligned.
        let bits = _mm256_cvtepu16_epi32(unsafe { _mm_loadu_si128(v.as_ptr().cast()) });
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(bits))
    }
    fn to_f32(self) -> f32 {
        Bf16::to_f32(self)
    }
}

/// One float weight row against `T` tokens (see the module doc).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w` and every `a[t]` hold at least `n` elements.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn float_tokens<E: FloatElem, const T: usize>(n: usize, w: &[E], a: [&[E]; T]) -> [f32; T] {
    debug_assert!(w.len() >= n && a.iter().all(|a| a.len() >= n));
    let mut acc = [[_mm256_setzero_ps(); 4]; T];
    let n32 = n - n % 32;
    let n8 = n - n % 8;
    let mut i = 0;
    while i < n32 {
        for (c, off) in [0usize, 8, 16, 24].into_iter().enumerate() {
            // SAFETY (both): the caller's CPU features; i + off + 8 <= n32 <= n.
            let x = unsafe { E::load8(&w[i + off..]) };
            for t in 0..T {
                let y = unsafe { E::load8(&a[t][i + off..]) };
                acc[t][c] = _mm256_fmadd_ps(x, y, acc[t][c]);
            }
        }
        i += 32;
    }
    while i < n8 {
        // SAFETY (both): as above, i + 8 <= n8 <= n.
        let x = unsafe { E::load8(&w[i..]) };
        for t in 0..T {
            let y = unsafe { E::load8(&a[t][i..]) };
            acc[t][0] = _mm256_fmadd_ps(x, y, acc[t][0]);
        }
        i += 8;
    }
    let mut out = [0.0f32; T];
    for t in 0..T {
        let [c0, c1, c2, c3] = acc[t];
        let mut s = hsum_ps(_mm256_add_ps(_mm256_add_ps(c0, c1), _mm256_add_ps(c2, c3)));
        for (&x, &y) in w[n8..n].iter().zip(&a[t][n8..n]) {
            s += x.to_f32() * y.to_f32();
        }
        out[t] = s;
    }
    out
}

// Four chains per token: two tokens fill 8 of the 16 registers.
avx2_dot!(float_tokens, 2; f32, Half, Bf16);
