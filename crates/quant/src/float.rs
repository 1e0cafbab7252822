//! Plain float element types F32, F16 and BF16: conversion to/from f32 and the dot products
//! F32 x F32, F16 x F16, BF16 x BF16.
//!
//! The dots accumulate in 8 independent f32 lanes (so the compiler can vectorize them) and add
//! the lanes at the end; with the element products exact in f32 for F16/BF16 inputs this stays
//! within float rounding of the f64 dot.

use crate::fp::{Bf16, Half};

/// A float element type of the dots, widened to f32 exactly (the SIMD kernels' too).
pub(crate) trait Float: crate::Block {
    fn to_f32(self) -> f32;
}

impl Float for f32 {
    fn to_f32(self) -> f32 {
        self
    }
}

impl Float for Half {
    fn to_f32(self) -> f32 {
        Half::to_f32(self)
    }
}

impl Float for Bf16 {
    fn to_f32(self) -> f32 {
        Bf16::to_f32(self)
    }
}

const LANES: usize = 8;

/// Dot of two equal-length sequences of a float type.
#[inline]
fn dot_lanes<T: Float>(w: &[T], a: &[T]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let wc = w.chunks_exact(LANES);
    let ac = a.chunks_exact(LANES);
    let (wr, ar) = (wc.remainder(), ac.remainder());
    for (x, y) in wc.zip(ac) {
        for ((s, &p), &q) in acc.iter_mut().zip(x).zip(y) {
            *s += p.to_f32() * q.to_f32();
        }
    }
    let mut tail = 0.0f32;
    for (&p, &q) in wr.iter().zip(ar) {
        tail += p.to_f32() * q.to_f32();
    }
    let (l, r) = acc.split_at(LANES / 2);
    let mut s4 = [0.0f32; LANES / 2];
    for ((s, &x), &y) in s4.iter_mut().zip(l).zip(r) {
        *s = x + y;
    }
    (s4[0] + s4[2]) + (s4[1] + s4[3]) + tail
}

/// F32 x F32 over the first `n` elements (or fewer when a slice is shorter), the scalar
/// reference of [`vec_dot_f32`].
pub fn vec_dot_f32_scalar(n: usize, w: &[f32], a: &[f32]) -> f32 {
    debug_assert!(w.len() >= n && a.len() >= n);
    let n = n.min(w.len()).min(a.len());
    dot_lanes(&w[..n], &a[..n])
}

/// F16 x F16 over the first `n` elements (or fewer when a slice is shorter), the scalar
/// reference of [`vec_dot_f16`].
pub fn vec_dot_f16_scalar(n: usize, w: &[Half], a: &[Half]) -> f32 {
    debug_assert!(w.len() >= n && a.len() >= n);
    let n = n.min(w.len()).min(a.len());
    dot_lanes(&w[..n], &a[..n])
}

/// BF16 x BF16 over the first `n` elements (or fewer when a slice is shorter), the scalar
/// reference of [`vec_dot_bf16`].
pub fn vec_dot_bf16_scalar(n: usize, w: &[Bf16], a: &[Bf16]) -> f32 {
    debug_assert!(w.len() >= n && a.len() >= n);
    let n = n.min(w.len()).min(a.len());
    dot_lanes(&w[..n], &a[..n])
}

vec_dot_dispatch!(
    /// F32 x F32 over the first `n` elements (or fewer when a slice is shorter).
    vec_dot_f32 => vec_dot_f32_scalar(f32, f32)
);
vec_dot_dispatch!(
    /// F16 x F16 over the first `n` elements (or fewer when a slice is shorter).
    vec_dot_f16 => vec_dot_f16_scalar(Half, Half)
);
vec_dot_dispatch!(
    /// BF16 x BF16 over the first `n` elements (or fewer when a slice is shorter).
    vec_dot_bf16 => vec_dot_bf16_scalar(Bf16, Bf16)
);

pub fn dequantize_f16(src: &[Half], dst: &mut [f32]) {
    for (o, &h) in dst.iter_mut().zip(src) {
        *o = h.to_f32();
    }
}

pub fn dequantize_bf16(src: &[Bf16], dst: &mut [f32]) {
    for (o, &h) in dst.iter_mut().zip(src) {
        *o = h.to_f32();
    }
}

pub fn quantize_f16(src: &[f32], dst: &mut [Half]) {
    for (o, &x) in dst.iter_mut().zip(src) {
        *o = Half::from_f32(x);
    }
}

pub fn quantize_bf16(src: &[f32], dst: &mut [Bf16]) {
    for (o, &x) in dst.iter_mut().zip(src) {
        *o = Bf16::from_f32(x);
    }
}

/// Little-endian f32 bytes to f32 (any alignment).
pub fn dequantize_f32_bytes(src: &[u8], dst: &mut [f32]) {
    for (o, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

/// f32 to little-endian f32 bytes (any alignment).
pub fn quantize_f32_bytes(src: &[f32], dst: &mut [u8]) {
    for (c, &x) in dst.chunks_exact_mut(4).zip(src) {
        c.copy_from_slice(&x.to_le_bytes());
    }
}
