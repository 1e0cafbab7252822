//! NEON vec-dots for every weight type with a vec-dot, chosen by the typed entry points
//! (`vec_dot_q4_0_q8_0` ..., made by the `vec_dot_dispatch!` macro of `lib.rs`) and by `gemm`
//! (`Isa::NeonDotprod` / `Isa::Neon`) on aarch64, where NEON is part of the baseline. Each is
//! tested against its scalar reference (`*_scalar`) on random data (`tests.rs`).
//!
//! One kernel per family, generic over the block type ([`NeonDot`]), computes one weight row
//! against `T` tokens at once (each block unpacked once per group, a token's arithmetic the
//! same for every `T`), in the arithmetic of the AVX2 kernels of `x86/`: the same integers in
//! the same 8 lanes (two NEON vectors), the same FMAs block after block and the same final
//! `hsum_float_8` order, so every product is bit for bit the AVX2 kernel's (tested:
//! `same_bits_as_avx2`). A model thus gives the same logits on aarch64 as on an x86 CPU
//! without AVX-512, and llama.cpp's x86 results where those kernels do.
//!
//! - `legacy.rs`: 32-element blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL) against Q8_0 / Q8_1;
//! - `kquants.rs`: 256-element super-blocks (Q2_K ... Q6_K, IQ4_XS) against Q8_K;
//! - `float.rs`: F32, F16 and BF16 rows against rows of the same type.
//!
//! The integer products come in two variants ([`I8Dot`]): the dot-product extension's `sdot`
//! ([`Sdot`], when `is_aarch64_feature_detected!("dotprod")`: Apple M1 and later, Neoverse
//! N1 / Graviton2 and later, Cortex-A55 / A76 and later) and plain NEON widening multiplies
//! ([`Plain`], every aarch64 CPU). Both leave exactly the same integer in every lane, so a
//! product's bits do not depend on which one the CPU has (tested). Rust's `vdotq_s32` is not
//! stable yet, so `sdot` is written as inline assembly; so is the f16 widening `fcvtl`
//! (baseline ARMv8, but its intrinsic needs the unstable `f16` type).
//!
//! Integer work is exact (every product of two int8 values, -128 included, in 16 or 32 bits;
//! signed quants need no sign trick on NEON); results agree with the scalar references within
//! float rounding.

#![cfg(target_arch = "aarch64")]

/// `impl NeonDot` for each block type `$w` by the family's generic kernel
/// `$kernel::<$w, D, T>(nb, w, a)`.
macro_rules! neon_dot {
    ($kernel:ident, $max_tok:expr; $($w:ty),*) => {$(
        impl super::NeonDot for $w {
            const MAX_TOK: usize = $max_tok;
            #[inline]
            #[target_feature(enable = "neon")]
            unsafe fn dot_tokens<D: super::I8Dot, const T: usize>(
                nb: usize,
                w: &[Self],
                a: [&[Self::Act]; T],
            ) -> [f32; T] {
                // SAFETY: the caller's guarantees.
                unsafe { $kernel::<$w, D, T>(nb, w, a) }
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
use std::arch::aarch64::*;
use std::arch::asm;
use std::marker::PhantomData;

// NEON is part of every aarch64 target's baseline: the `unsafe` calls of the `neon` functions
// below rely on it.
const _: () = assert!(cfg!(target_feature = "neon"));

/// True when the CPU has the dot-product extension (`sdot`), cached by std after the first
/// call.
#[inline]
pub(crate) fn has_dotprod() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

/// The exact int8 dot product of 16-byte vectors, 4 lanes: `acc` plus, in lane `i`, the sum
/// over elements `4i .. 4i + 4` of `x * y` (every int8 value, -128 included).
pub(crate) trait I8Dot {
    /// # Safety
    /// The CPU must have the variant's instructions ([`Sdot`]: [`has_dotprod`]).
    unsafe fn dot(acc: int32x4_t, x: int8x16_t, y: int8x16_t) -> int32x4_t;
}

/// [`I8Dot`] by the dot-product extension's `sdot`.
pub(crate) struct Sdot;

/// [`I8Dot`] by plain NEON: `smull` / `smull2` products in 16 bits, pairwise sums to 32.
pub(crate) struct Plain;

impl I8Dot for Sdot {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn dot(acc: int32x4_t, x: int8x16_t, y: int8x16_t) -> int32x4_t {
        let mut acc = acc;
        // SAFETY: `sdot` only reads and writes the three registers; the caller guarantees that
        // the CPU has it. The directive lets the assembler take it in a function compiled
        // without the feature (so that these kernels inline into the plain-NEON ones).
        unsafe {
            asm!(
                ".arch_extension dotprod",
                "sdot {acc:v}.4s, {x:v}.16b, {y:v}.16b",
                acc = inout(vreg) acc,
                x = in(vreg) x,
                y = in(vreg) y,
                options(pure, nomem, nostack, preserves_flags),
            );
        }
        acc
    }
}

impl I8Dot for Plain {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn dot(acc: int32x4_t, x: int8x16_t, y: int8x16_t) -> int32x4_t {
        // Products of elements 0..8 and 8..16 (|x * y| <= 2^14, exact in i16); pairs summed to
        // i32, then pairs of pairs: lane i = elements 4i .. 4i + 4, as `sdot`.
        let lo = vmull_s8(vget_low_s8(x), vget_low_s8(y));
        let hi = vmull_high_s8(x, y);
        vaddq_s32(acc, vpaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi)))
    }
}

/// A weight type with a NEON kernel over a group of tokens.
pub(crate) trait NeonDot: VecDot {
    /// The most tokens one call takes (see [`GroupDot::MAX_TOK`]).
    const MAX_TOK: usize;
    /// `out[t] = dot(w, a[t])` over the first `nb` blocks (elements for the float types),
    /// integer products by `D`. Each product's arithmetic is the same for every `T` and `D`.
    ///
    /// # Safety
    /// The CPU must have `D`'s instructions; `w` and every `a[t]` hold at least `nb` blocks
    /// (else the call panics).
    unsafe fn dot_tokens<D: I8Dot, const T: usize>(
        nb: usize,
        w: &[Self],
        a: [&[Self::Act]; T],
    ) -> [f32; T];
}

/// The NEON kernels with the integer products of `D` as a [`GroupDot`] family.
pub(crate) struct Neon<D>(PhantomData<D>);

impl<W: NeonDot, D: I8Dot> GroupDot<W> for Neon<D> {
    const MAX_TOK: usize = W::MAX_TOK;
    #[inline(always)]
    unsafe fn dot<const T: usize>(nb: usize, w: &[W], a: [&[W::Act]; T]) -> [f32; T] {
        // SAFETY: the caller's guarantees.
        unsafe { W::dot_tokens::<D, T>(nb, w, a) }
    }
}

/// The vec-dot of `n` elements of a weight row with one activation row, with `sdot` when the
/// CPU has it (only whole blocks of the shorter slice are used, as the scalar references do).
#[inline]
pub(crate) fn vec_dot<W: NeonDot>(n: usize, w: &[W], a: &[W::Act]) -> f32 {
    // SAFETY (both): NEON is baseline; `Sdot` only where the CPU has it.
    if has_dotprod() {
        unsafe { vec_dot_with::<W, Sdot>(n, w, a) }
    } else {
        unsafe { vec_dot_with::<W, Plain>(n, w, a) }
    }
}

/// # Safety
/// The CPU must have `D`'s instructions.
#[target_feature(enable = "neon")]
unsafe fn vec_dot_with<W: NeonDot, D: I8Dot>(n: usize, w: &[W], a: &[W::Act]) -> f32 {
    // SAFETY: the caller's guarantee.
    unsafe { simd::vec_dot::<W, Neon<D>>(n, w, a) }
}

/// [`simd::rows_in_groups`] with the NEON kernels and the integer products of `D`: every row
/// of `w` against every token of `a`, `sink(r, t, &[dot])`.
///
/// # Safety
/// The CPU must have `D`'s instructions ([`Sdot`]: [`has_dotprod`]).
#[target_feature(enable = "neon")]
pub(crate) unsafe fn rows_tokens<W: NeonDot, D: I8Dot>(
    w: &[W],
    n_rows: usize,
    a: &[W::Act],
    n_tok: usize,
    sink: &mut dyn FnMut(usize, usize, &[f32]),
) {
    // SAFETY: the caller's guarantee.
    unsafe { simd::rows_in_groups::<W, Neon<D>>(w, n_rows, a, n_tok, sink) }
}

/// Four f16 values (the low one first in `bits`) widened to f32 by `fcvtl`.
#[inline]
#[target_feature(enable = "neon")]
fn f16x4(bits: u64) -> float32x4_t {
    let out: float32x4_t;
    // SAFETY: `fcvtl` (baseline ARMv8) only reads and writes the two registers.
    unsafe {
        asm!(
            "fcvtl {o:v}.4s, {i:v}.4h",
            o = lateout(vreg) out,
            i = in(vreg) vcreate_u16(bits),
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    out
}

/// The sum of the 8 lanes `lo ++ hi` in llama.cpp's `hsum_float_8` order (the AVX2 kernels'):
/// `hi + lo` lane by lane, then lanes `(0 + 2) + (1 + 3)`.
#[inline]
#[target_feature(enable = "neon")]
fn hsum8(lo: float32x4_t, hi: float32x4_t) -> f32 {
    let s = vaddq_f32(hi, lo);
    vpadds_f32(vadd_f32(vget_low_f32(s), vget_high_f32(s)))
}

/// 16 bytes at `p[off..]` (which must hold them, else the call panics).
#[inline]
#[target_feature(enable = "neon")]
fn load16<T: bytemuck::Pod>(p: &[T], off: usize) -> uint8x16_t {
    let s = bytemuck::cast_slice::<T, u8>(p);
    let s = &s[off * size_of::<T>()..off * size_of::<T>() + 16];
    // SAFETY: `s` is 16 bytes; `vld1q_u8` has no alignment requirement.
    unsafe { vld1q_u8(s.as_ptr()) }
}

/// 16 signed bytes at `p[off..]`.
#[inline]
#[target_feature(enable = "neon")]
fn load16s<T: bytemuck::Pod>(p: &[T], off: usize) -> int8x16_t {
    vreinterpretq_s8_u8(load16(p, off))
}

/// The low and high nibbles of 16 bytes.
#[inline]
#[target_feature(enable = "neon")]
fn nibbles(v: uint8x16_t) -> (uint8x16_t, uint8x16_t) {
    (vandq_u8(v, vdupq_n_u8(0x0F)), vshrq_n_u8::<4>(v))
}

/// Nibbles (0..16) mapped to the 16 IQ4 levels (-127..=113).
#[inline]
#[target_feature(enable = "neon")]
fn iq4_levels(idx: uint8x16_t) -> int8x16_t {
    vqtbl1q_s8(load16s(&crate::iq4::KVALUES_IQ4NL, 0), idx)
}

/// `value` in the bytes of `v` where bit `bit` (0..8) is set, else 0.
#[inline]
#[target_feature(enable = "neon")]
fn bit_as(v: uint8x16_t, bit: usize, value: u8) -> uint8x16_t {
    let set = vtstq_u8(v, vdupq_n_u8(1u8 << bit));
    vandq_u8(set, vdupq_n_u8(value))
}
