//! AVX2 kernels of the 32-element blocks against Q8_0 / Q8_1: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0
//! and IQ4_NL. A block's 32 quants are unpacked into one 256-bit vector in element order
//! (nibbles: bytes 0..16 the low nibbles, elements 0..16; bytes 16..32 the high ones) and
//! dotted with the token's 32 int8 quants exactly; then, as llama.cpp's x86 vec-dots,
//! `acc = fma(d_w * d_y, float(lanes), acc)` block after block in 8 lanes, `m * s` summed apart
//! for the types with a min, and `hsum(acc) + sum(m * s)` at the end.

use super::{dot_i8_i8, dot_u8_i8, hsum_ps, iq4_levels, load32};
use crate::iq4::BlockIq4Nl;
use crate::legacy::{scale_bits, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, Q8Act, QK};
use crate::{Block, GgmlType, VecDot};
use std::arch::x86_64::*;

/// How a block's unpacked quants meet the activation's.
#[derive(PartialEq, Eq)]
enum Product {
    /// Unsigned quants below 128: `maddubs` directly.
    Unsigned,
    /// Signed quants, never -128: the sign moved onto them (`dot_i8_i8`).
    Signed,
    /// Any int8 (Q8_0 weights may hold -128): both sides widened to 16 bits.
    Wide,
}

/// A legacy weight block as the AVX2 kernel sees it: its scale `d` in bytes 0..2 and, with a
/// min, `m` in bytes 2..4 (see [`scales`]; every block is at least 4 bytes).
trait Legacy: VecDot<Act: Q8Act> {
    const PRODUCT: Product;
    /// `x = d * q + m` (the types dotted with Q8_1): the `m * s` term is added per block.
    const HAS_MIN: bool = matches!(<Self::Act as Block>::TYPE, GgmlType::Q8_1);
    /// The 32 quants in element order, as `PRODUCT` takes them.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    unsafe fn quants(&self) -> __m256i;
}

/// The scales of a weight block and an activation block, widened in one F16C conversion (as
/// llama.cpp's x86 kernels): `(d_w * d_y, m * s)`, the second only meaningful for the types
/// with a min (bytes 2..4 of the others are quants).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn scales<W: Block, A: Q8Act>(x: &W, y: &A) -> (f32, f32) {
    // Lanes: d_w, m, d_y, s.
    let v = _mm_cvtph_ps(_mm_cvtsi64_si128(scale_bits(x, y) as i64));
    let dd = _mm_mul_ss(v, _mm_movehl_ps(v, v));
    let ms = _mm_mul_ss(_mm_movehdup_ps(v), _mm_shuffle_ps::<0b11>(v, v));
    (_mm_cvtss_f32(dd), _mm_cvtss_f32(ms))
}

/// The 5-bit values 0..32 of a Q5 block in element order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q5(qh: [u8; 4], qs: &[u8; 16]) -> __m256i {
    _mm256_or_si256(nibbles(qs), fifth_bits(qh))
}

/// 16 nibble bytes to 32 values 0..16 in element order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nibbles(qs: &[u8; 16]) -> __m256i {
    // SAFETY: reads exactly the 16-byte array, unaligned.
    let v = unsafe { _mm_loadu_si128(qs.as_ptr().cast()) };
    _mm256_and_si256(
        _mm256_set_m128i(_mm_srli_epi16::<4>(v), v),
        _mm256_set1_epi8(0x0F),
    )
}

/// Bit 4 of the 32 elements of a Q5 block (`qh` little-endian, bit `j` for element `j`) as
/// 0x10 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fifth_bits(qh: [u8; 4]) -> __m256i {
    let v = _mm256_set1_epi32(i32::from_le_bytes(qh));
    // Byte j <- byte j / 8 of `qh` (each 128-bit lane holds all four bytes), then its bit j % 8.
    let spread = _mm256_shuffle_epi8(
        v,
        _mm256_setr_epi64x(
            0,
            0x0101_0101_0101_0101,
            0x0202_0202_0202_0202,
            0x0303_0303_0303_0303,
        ),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// `impl Legacy` for each block type: its product and `|b| quants of block b`.
macro_rules! legacy {
    ($($w:ty: $product:ident, |$b:ident| $quants:expr;)*) => {$(
        impl Legacy for $w {
            const PRODUCT: Product = Product::$product;
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn quants(&self) -> __m256i {
                let $b = self;
                $quants
            }
        }
    )*};
}

legacy! {
    BlockQ4_0: Signed, |b| _mm256_sub_epi8(nibbles(&b.qs), _mm256_set1_epi8(8));
    BlockQ4_1: Unsigned, |b| nibbles(&b.qs);
    BlockQ5_0: Signed, |b| _mm256_sub_epi8(q5(b.qh, &b.qs), _mm256_set1_epi8(16));
    BlockQ5_1: Unsigned, |b| q5(b.qh, &b.qs);
    BlockQ8_0: Wide, |b| load32(&b.qs, 0);
    // The 16 levels (-127..=113, never -128) looked up per nibble.
    BlockIq4Nl: Signed, |b| _mm256_shuffle_epi8(iq4_levels(), nibbles(&b.qs));
}

/// The exact integer dot of one block's unpacked quants `x` with the token's quants `y`, in 8
/// lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn block_dot<W: Legacy>(x: __m256i, y: &[i8; QK]) -> __m256i {
    let y = load32(y, 0);
    match W::PRODUCT {
        Product::Unsigned => dot_u8_i8(x, y),
        Product::Signed => dot_i8_i8(x, y),
        Product::Wide => {
            // Lane i: elements 2i, 2i + 1, 16 + 2i, 17 + 2i (every i8 product exact).
            let lo = |v: __m256i| _mm256_cvtepi8_epi16(_mm256_castsi256_si128(v));
            let hi = |v: __m256i| _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(v));
            _mm256_add_epi32(
                _mm256_madd_epi16(lo(x), lo(y)),
                _mm256_madd_epi16(hi(x), hi(y)),
            )
        }
    }
}

/// One legacy weight row against `T` tokens (see the module doc for each product's order).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w` and every `a[t]` hold at least `nb` blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn legacy_tokens<W: Legacy, const T: usize>(
    nb: usize,
    w: &[W],
    a: [&[W::Act]; T],
) -> [f32; T] {
    debug_assert!(w.len() >= nb && a.iter().all(|a| a.len() >= nb));
    let mut acc = [_mm256_setzero_ps(); T];
    let mut summs = [0.0f32; T];
    for (i, x) in w.iter().enumerate().take(nb) {
        // SAFETY: the caller's CPU features.
        let q = unsafe { x.quants() };
        for t in 0..T {
            let y = &a[t][i];
            let sums = block_dot::<W>(q, y.qs());
            let (dd, ms) = scales(x, y);
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dd), _mm256_cvtepi32_ps(sums), acc[t]);
            if W::HAS_MIN {
                summs[t] += ms;
            }
        }
    }
    let mut out = [0.0f32; T];
    for t in 0..T {
        out[t] = hsum_ps(acc[t]) + summs[t];
    }
    out
}

avx2_dot!(legacy_tokens, 4; BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockIq4Nl);
