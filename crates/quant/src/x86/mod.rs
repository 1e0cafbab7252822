//! AVX2 + FMA + F16C vec-dots for every weight type with a vec-dot, chosen at run time by the
//! typed entry points (`vec_dot_q4_0_q8_0` ..., made by the `vec_dot_dispatch!` macro of
//! `lib.rs`) when the CPU has the features, and by `gemm` on CPUs without AVX-512 VNNI (or
//! with `REALIZAR_ISA=avx2`). Each is tested against its scalar reference (`*_scalar`) on
//! random data (`tests.rs`).
//!
//! One kernel per family, generic over the block type ([`Avx2Dot`]), computes one weight row
//! against `T` activation rows (tokens) at once: each weight block is unpacked once and dotted
//! with every token, and a token's arithmetic is the same for every `T` (so a product does not
//! depend on the other tokens of the call). The one-token vec-dot is `T = 1`.
//!
//! - `legacy.rs`: 32-element blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL) against Q8_0 / Q8_1,
//!   in llama.cpp's x86 float order (one 8-lane accumulator fed block after block, the
//!   `m * s` terms summed apart, `hsum_float_8` at the end);
//! - `kquants.rs`: 256-element super-blocks (Q2_K ... Q6_K, IQ4_XS) against Q8_K;
//! - `float.rs`: F32, F16 and BF16 rows against rows of the same type.
//!
//! Integer work is exact (the same sums as the scalar code, for every input byte: no sign trick
//! meets a -128; the K-quants take Q8_K's stored 16-element sums as their scalar references
//! do); only the float accumulation order differs (8 lanes, FMA), so results agree with the
//! scalar references within float rounding.

#![cfg(target_arch = "x86_64")]

/// `impl Avx2Dot` for each block type `$w` by the family's generic kernel
/// `$kernel::<$w, T>(nb, w, a)`.
macro_rules! avx2_dot {
    ($kernel:ident, $max_tok:expr; $($w:ty),*) => {$(
        impl super::Avx2Dot for $w {
            const MAX_TOK: usize = $max_tok;
            #[inline]
            unsafe fn dot_tokens<const T: usize>(
                nb: usize,
                w: &[Self],
                a: [&[Self::Act]; T],
            ) -> [f32; T] {
                // SAFETY: the caller's guarantees.
                unsafe { $kernel::<$w, T>(nb, w, a) }
            }
        }
    )*};
}

mod float;
mod kquants;
mod legacy;
#[cfg(test)]
mod tests;

use crate::simd::{self, GroupDot};
use crate::VecDot;
use std::arch::x86_64::*;

/// True when the AVX2 kernels may run on this CPU (cached by std after the first call).
#[inline]
pub(crate) fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// A weight type with an AVX2 kernel over a group of tokens.
pub(crate) trait Avx2Dot: VecDot {
    /// The most tokens [`rows_tokens`] gives one call (the accumulators of more would not fit
    /// the 16 registers; any `T` computes the same); see [`GroupDot`].
    const MAX_TOK: usize;
    /// `out[t] = dot(w, a[t])` over the first `nb` blocks (elements for the float types).
    /// Each product's arithmetic is the same for every `T`.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C ([`has_avx2`]); `w` and every `a[t]` hold at
    /// least `nb` blocks (else the call panics).
    unsafe fn dot_tokens<const T: usize>(nb: usize, w: &[Self], a: [&[Self::Act]; T]) -> [f32; T];
}

/// The AVX2 kernels as a [`GroupDot`] family.
pub(crate) struct Avx2;

impl<W: Avx2Dot> GroupDot<W> for Avx2 {
    const MAX_TOK: usize = W::MAX_TOK;
    #[inline(always)]
    unsafe fn dot<const T: usize>(nb: usize, w: &[W], a: [&[W::Act]; T]) -> [f32; T] {
        // SAFETY: the caller's guarantees.
        unsafe { W::dot_tokens::<T>(nb, w, a) }
    }
}

/// The vec-dot of `n` elements of a weight row with one activation row (only whole blocks of
/// the shorter slice are used, as the scalar references do).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C ([`has_avx2`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn vec_dot<W: Avx2Dot>(n: usize, w: &[W], a: &[W::Act]) -> f32 {
    // SAFETY: the caller guarantees the CPU features.
    unsafe { simd::vec_dot::<W, Avx2>(n, w, a) }
}

/// [`simd::rows_in_groups`] with the AVX2 kernels: every row of `w` against every token of
/// `a`, `sink(r, t, &[dot])`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C ([`has_avx2`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn rows_tokens<W: Avx2Dot>(
    w: &[W],
    n_rows: usize,
    a: &[W::Act],
    n_tok: usize,
    sink: &mut dyn FnMut(usize, usize, &[f32]),
) {
    // SAFETY: the caller guarantees the CPU features.
    unsafe { simd::rows_in_groups::<W, Avx2>(w, n_rows, a, n_tok, sink) }
}

/// Sum of the 8 lanes in llama.cpp's `hsum_float_8` order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    hsum_ps128(s)
}

/// Sum of 4 lanes: (0 + 2) + (1 + 3).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_ps128(s: __m128) -> f32 {
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// The f16 value in `bytes[at..at + 2]` widened, in all 8 lanes, to be used as a vector. F16C
/// on a single value taken out as a scalar compiles to `vpinsrw` of the 2 bytes into whatever
/// register LLVM picks, a false dependency that tied each block's scales to the previous
/// block's sums (2x slower Q4_1 before `legacy::scales`); the software `Half::to_f32` costs
/// ~20 instructions.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn h8(bytes: &[u8], at: usize) -> __m256 {
    _mm256_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes([
        bytes[at],
        bytes[at + 1],
    ])))
}

/// 32 bytes at `p[off..]`, unaligned.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load32<T: bytemuck::Pod>(p: &[T], off: usize) -> __m256i {
    let s = bytemuck::cast_slice::<T, u8>(p);
    let s = &s[off * size_of::<T>()..off * size_of::<T>() + 32];
    // SAFETY: `s` is 32 bytes, read unaligned.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

/// The 16 IQ4 levels (-127..=113) in both 128-bit lanes, for `_mm256_shuffle_epi8` by nibble.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn iq4_levels() -> __m256i {
    // SAFETY: reads exactly the 16-byte table, unaligned.
    let t = unsafe { _mm_loadu_si128(crate::iq4::KVALUES_IQ4NL.as_ptr().cast()) };
    _mm256_set_m128i(t, t)
}

/// 8 lanes of exact int8 dot products, lane `i` the sum over elements `4i .. 4i + 4`, of
/// unsigned `x` (every byte 0..=127, so that no pair of products saturates 16 bits) and any
/// signed `y`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_u8_i8(x: __m256i, y: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1))
}

/// As [`dot_u8_i8`] for signed `x` with no byte equal to -128 (any `y`): the sign moves from
/// `y` onto `x`, and `|y|` (128 for -128) is read as unsigned.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_i8_i8(x: __m256i, y: __m256i) -> __m256i {
    _mm256_madd_epi16(pairs_i8(x, y), _mm256_set1_epi16(1))
}

/// The 16-bit pair sums of signed `x` (no byte -128) times any `y`, exact: `|x * y| <= 127 *
/// 128` per product.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pairs_i8(x: __m256i, y: __m256i) -> __m256i {
    _mm256_maddubs_epi16(_mm256_abs_epi8(y), _mm256_sign_epi8(x, y))
}
