//! The 32-element "legacy" block formats Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q8_1: block layouts
//! (bit-exact to ggml-common.h), scalar dequantize, reference quantize (llama.cpp's `_ref`
//! algorithms) and the scalar vec-dots against Q8_0 / Q8_1 activations.
//!
//! Nibble order in every 4/5-bit format: byte `j` of `qs` holds element `j` in its low nibble
//! and element `j + 16` in its high nibble.

use crate::fp::{signed_absmax, Half};
use crate::GgmlType;
use bytemuck::{Pod, Zeroable};

/// Elements per block of every legacy format.
pub const QK: usize = 32;
const HALF: usize = QK / 2;

/// Q4_0: `x = d * (q - 8)`, q in 0..16.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ4_0 {
    pub d: Half,
    pub qs: [u8; QK / 2],
}

/// Q4_1: `x = d * q + m`, q in 0..16.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: Half,
    pub m: Half,
    pub qs: [u8; QK / 2],
}

/// Q5_0: `x = d * (q - 16)`, q in 0..32; bit 4 of element `j` is bit `j` of `qh` (LE u32).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ5_0 {
    pub d: Half,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// Q5_1: `x = d * q + m`, q in 0..32; high bits as in Q5_0.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ5_1 {
    pub d: Half,
    pub m: Half,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// Q8_0: `x = d * q`, q in -127..=127.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: Half,
    pub qs: [i8; QK],
}

/// Q8_1: `x = d * q`; `s = d * sum(q)` (the activation side of Q4_1 / Q5_1 dots).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ8_1 {
    pub d: Half,
    pub s: Half,
    pub qs: [i8; QK],
}

block_layout!(BlockQ4_0, GgmlType::Q4_0);
block_layout!(BlockQ4_1, GgmlType::Q4_1);
block_layout!(BlockQ5_0, GgmlType::Q5_0);
block_layout!(BlockQ5_1, GgmlType::Q5_1);
block_layout!(BlockQ8_0, GgmlType::Q8_0);
block_layout!(BlockQ8_1, GgmlType::Q8_1);

/// An activation block of the SIMD kernels: Q8_0 or Q8_1, its scale `d` in bytes 0..2 and
/// Q8_1's `s = d * sum(q)` in bytes 2..4.
pub(crate) trait Q8Act: crate::Block {
    fn qs(&self) -> &[i8; QK];
}

impl Q8Act for BlockQ8_0 {
    fn qs(&self) -> &[i8; QK] {
        &self.qs
    }
}

impl Q8Act for BlockQ8_1 {
    fn qs(&self) -> &[i8; QK] {
        &self.qs
    }
}

// The scale layouts `scale_bits` relies on.
const _: () = {
    use crate::iq4::BlockIq4Nl;
    use std::mem::offset_of;
    assert!(offset_of!(BlockQ4_0, d) == 0 && offset_of!(BlockQ5_0, d) == 0);
    assert!(offset_of!(BlockQ8_0, d) == 0 && offset_of!(BlockIq4Nl, d) == 0);
    assert!(offset_of!(BlockQ4_1, d) == 0 && offset_of!(BlockQ4_1, m) == 2);
    assert!(offset_of!(BlockQ5_1, d) == 0 && offset_of!(BlockQ5_1, m) == 2);
    assert!(offset_of!(BlockQ8_1, d) == 0 && offset_of!(BlockQ8_1, s) == 2);
};

/// The first 4 bytes of a 32-element weight block and of an activation block as the four f16
/// lanes (low first) `d_w, m, d_y, s` of one little-endian u64, for the SIMD kernels to widen
/// at once. `m` and `s` are meaningful only for the weight types with a min against Q8_1
/// (bytes 2..4 of the others are quants; every block is at least 4 bytes).
#[inline]
pub(crate) fn scale_bits<W: crate::Block, A: Q8Act>(x: &W, y: &A) -> u64 {
    let head = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64;
    head(bytemuck::bytes_of(x)) | (head(bytemuck::bytes_of(y)) << 32)
}

/// The 5-bit values of a Q5 block, unsigned (0..32), in element order.
#[inline]
fn q5_values(qh: [u8; 4], qs: &[u8; HALF]) -> [u8; QK] {
    let qh = u32::from_le_bytes(qh);
    let mut q = [0u8; QK];
    for (j, &b) in qs.iter().enumerate() {
        q[j] = (b & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
        q[j + HALF] = (b >> 4) | ((((qh >> (j + HALF)) & 1) as u8) << 4);
    }
    q
}

/// Pack 32 values 0..16 into nibbles (element j low, element j+16 high).
#[inline]
fn pack_nibbles(l: &[u8; QK]) -> [u8; HALF] {
    let mut qs = [0u8; HALF];
    for (j, q) in qs.iter_mut().enumerate() {
        *q = (l[j] & 0x0F) | ((l[j + HALF] & 0x0F) << 4);
    }
    qs
}

/// Pack 32 values 0..32: low nibbles as in 4-bit formats, bit 4 into the LE u32 `qh`.
#[inline]
fn pack_q5(l: &[u8; QK]) -> ([u8; 4], [u8; HALF]) {
    let mut qh = 0u32;
    for (j, &v) in l.iter().enumerate() {
        qh |= (((v >> 4) & 1) as u32) << j;
    }
    (qh.to_le_bytes(), pack_nibbles(l))
}

// ---------------------------------------------------------------------------------------------
// Dequantize. `dst` holds `QK` elements per block; extra blocks or elements are ignored.

pub fn dequantize_q4_0(src: &[BlockQ4_0], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        let (lo, hi) = y.split_at_mut(HALF);
        for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&b.qs) {
            *l = ((q & 0x0F) as i32 - 8) as f32 * d;
            *h = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

pub fn dequantize_q4_1(src: &[BlockQ4_1], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        let m = b.m.to_f32();
        let (lo, hi) = y.split_at_mut(HALF);
        for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&b.qs) {
            *l = (q & 0x0F) as f32 * d + m;
            *h = (q >> 4) as f32 * d + m;
        }
    }
}

pub fn dequantize_q5_0(src: &[BlockQ5_0], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for (o, &q) in y.iter_mut().zip(&q5_values(b.qh, &b.qs)) {
            *o = (q as i32 - 16) as f32 * d;
        }
    }
}

pub fn dequantize_q5_1(src: &[BlockQ5_1], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        let m = b.m.to_f32();
        for (o, &q) in y.iter_mut().zip(&q5_values(b.qh, &b.qs)) {
            *o = q as f32 * d + m;
        }
    }
}

pub fn dequantize_q8_0(src: &[BlockQ8_0], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for (o, &q) in y.iter_mut().zip(&b.qs) {
            *o = q as f32 * d;
        }
    }
}

pub fn dequantize_q8_1(src: &[BlockQ8_1], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for (o, &q) in y.iter_mut().zip(&b.qs) {
            *o = q as f32 * d;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reference quantize (llama.cpp `quantize_row_*_ref`). `src` holds `QK` elements per block.

/// Smallest and largest element (NaNs skipped).
#[inline]
fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter()
        .fold((f32::MAX, -f32::MAX), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

#[inline]
fn inv(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// Symmetric 4/5-bit: scale from the signed max-abs value so that it maps to `-half_range`.
fn quantize_symmetric(x: &[f32], levels: u8) -> (Half, [u8; QK]) {
    let half_range = (levels / 2) as f32;
    let (max, _) = signed_absmax(x);
    let d = max / -half_range;
    let id = inv(d);
    let mut l = [0u8; QK];
    for (q, &v) in l.iter_mut().zip(x) {
        // Truncation toward zero as C's (int8_t) cast; the offset makes the value positive.
        *q = ((v * id + (half_range + 0.5)) as i8).clamp(0, levels as i8 - 1) as u8;
    }
    (Half::from_f32(d), l)
}

/// Asymmetric 4/5-bit: `x = d * q + min` over the block's range.
fn quantize_affine(x: &[f32], levels: u8) -> (Half, Half, [u8; QK]) {
    let (min, max) = min_max(x);
    let d = (max - min) / (levels - 1) as f32;
    let id = inv(d);
    let mut l = [0u8; QK];
    for (q, &v) in l.iter_mut().zip(x) {
        *q = (((v - min) * id + 0.5) as i8).clamp(0, levels as i8 - 1) as u8;
    }
    (Half::from_f32(d), Half::from_f32(min), l)
}

pub fn quantize_q4_0(src: &[f32], dst: &mut [BlockQ4_0]) {
    for (x, b) in src.chunks_exact(QK).zip(dst) {
        let (d, l) = quantize_symmetric(x, 16);
        *b = BlockQ4_0 {
            d,
            qs: pack_nibbles(&l),
        };
    }
}

pub fn quantize_q4_1(src: &[f32], dst: &mut [BlockQ4_1]) {
    for (x, b) in src.chunks_exact(QK).zip(dst) {
        let (d, m, l) = quantize_affine(x, 16);
        *b = BlockQ4_1 {
            d,
            m,
            qs: pack_nibbles(&l),
        };
    }
}

pub fn quantize_q5_0(src: &[f32], dst: &mut [BlockQ5_0]) {
    for (x, b) in src.chunks_exact(QK).zip(dst) {
        let (d, l) = quantize_symmetric(x, 32);
        let (qh, qs) = pack_q5(&l);
        *b = BlockQ5_0 { d, qh, qs };
    }
}

pub fn quantize_q5_1(src: &[f32], dst: &mut [BlockQ5_1]) {
    for (x, b) in src.chunks_exact(QK).zip(dst) {
        let (d, m, l) = quantize_affine(x, 32);
        let (qh, qs) = pack_q5(&l);
        *b = BlockQ5_1 { d, m, qh, qs };
    }
}

/// 8-bit symmetric as ggml's reference (file) quantizer: `d = amax / 127`, `q = roundf(x / d)`
/// (ties away from zero). Returns (d as f32, q).
#[inline]
fn quantize_8bit_ref(x: &[f32]) -> (f32, [i8; QK]) {
    let (_, amax) = signed_absmax(x);
    let d = amax / 127.0;
    let id = inv(d);
    let mut q = [0i8; QK];
    for (o, &v) in q.iter_mut().zip(x) {
        *o = (v * id).round() as i8;
    }
    (d, q)
}

/// 8-bit symmetric as llama.cpp's x86 run-time activation quantizer (`quantize_row_q8_0/1` in
/// ggml-cpu, AVX path): `id = 127 / amax` and ties to even. It differs from the reference in
/// rare ties and last-ulp cases only, but matching it keeps our activations bit-identical to the
/// peer's, which matters when comparing logits (quantized models amplify the difference).
///
/// The body is compiled twice: with AVX2 (chosen at run time) the rounding becomes `vroundps`
/// and the loop vectorizes; without, it calls `rintf`. Both round the same products to the same
/// integers, so the bytes are identical.
#[inline]
fn quantize_8bit_act(x: &[f32]) -> (f32, [i8; QK]) {
    #[cfg(target_arch = "x86_64")]
    if crate::x86::has_avx2() {
        // SAFETY: the CPU supports AVX2, FMA and F16C (checked just above).
        return unsafe { quantize_8bit_act_avx2(x) };
    }
    quantize_8bit_act_body(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_8bit_act_avx2(x: &[f32]) -> (f32, [i8; QK]) {
    quantize_8bit_act_body(x)
}

#[inline(always)]
fn quantize_8bit_act_body(x: &[f32]) -> (f32, [i8; QK]) {
    let (_, amax) = signed_absmax(x);
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut q = [0i8; QK];
    for (o, &v) in q.iter_mut().zip(x) {
        *o = (v * id).round_ties_even() as i8;
    }
    (d, q)
}

fn q8_0_from(d: f32, qs: [i8; QK]) -> BlockQ8_0 {
    BlockQ8_0 {
        d: Half::from_f32(d),
        qs,
    }
}

fn q8_1_from(d: f32, qs: [i8; QK]) -> BlockQ8_1 {
    let sum: i32 = qs.iter().map(|&q| q as i32).sum();
    BlockQ8_1 {
        d: Half::from_f32(d),
        s: Half::from_f32(sum as f32 * d),
        qs,
    }
}

/// Q8_0 with ggml's reference quantizer (what llama-quantize writes into files).
pub fn quantize_q8_0(src: &[f32], dst: &mut [BlockQ8_0]) {
    for (x, b) in src.chunks_exact(QK).zip(dst) {
        let (d, qs) = quantize_8bit_ref(x);
        *b = q8_0_from(d, qs);
    }
}

/// Q8_1 with ggml's reference quantizer; `s = d * sum(q)` with the unrounded f32 `d`.
pub fn quantize_q8_1(src: &[f32], dst: &mut [BlockQ8_1]) {
    for (x, b) in src.chunks_exact(QK).zip(dst) {
        let (d, qs) = quantize_8bit_ref(x);
        *b = q8_1_from(d, qs);
    }
}

/// Q8_0 activations, bit-identical to llama.cpp's x86 run-time quantizer (see
/// [`quantize_activations`](crate::quantize_activations)).
pub fn quantize_act_q8_0(src: &[f32], dst: &mut [BlockQ8_0]) {
    for (x, b) in src.chunks_exact(QK).zip(dst) {
        let (d, qs) = quantize_8bit_act(x);
        *b = q8_0_from(d, qs);
    }
}

/// Q8_1 activations, bit-identical to llama.cpp's x86 run-time quantizer.
pub fn quantize_act_q8_1(src: &[f32], dst: &mut [BlockQ8_1]) {
    for (x, b) in src.chunks_exact(QK).zip(dst) {
        let (d, qs) = quantize_8bit_act(x);
        *b = q8_1_from(d, qs);
    }
}

// ---------------------------------------------------------------------------------------------
// Vec-dot: integer dot inside each block, scaled once per block. `n` is the number of
// elements (a multiple of 32); blocks beyond `n` (or beyond the shorter slice) are ignored.

#[inline]
fn dot_nibbles(qs: &[u8; HALF], y: &[i8; QK], offset: i32) -> i32 {
    let (ylo, yhi) = y.split_at(HALF);
    let mut sumi = 0i32;
    for ((&q, &a), &b) in qs.iter().zip(ylo).zip(yhi) {
        sumi += ((q & 0x0F) as i32 - offset) * a as i32 + ((q >> 4) as i32 - offset) * b as i32;
    }
    sumi
}

#[inline]
fn dot_q5(qh: [u8; 4], qs: &[u8; HALF], y: &[i8; QK], offset: i32) -> i32 {
    let q = q5_values(qh, qs);
    q.iter()
        .zip(y)
        .map(|(&q, &a)| (q as i32 - offset) * a as i32)
        .sum()
}

/// Q4_0 x Q8_0, the scalar reference of [`vec_dot_q4_0_q8_0`].
pub fn vec_dot_q4_0_q8_0_scalar(n: usize, w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
    debug_assert!(n.is_multiple_of(QK) && w.len() >= n / QK && a.len() >= n / QK);
    let mut sumf = 0.0f32;
    for (x, y) in w.iter().zip(a).take(n / QK) {
        let sumi = dot_nibbles(&x.qs, &y.qs, 8);
        sumf += sumi as f32 * (x.d.to_f32() * y.d.to_f32());
    }
    sumf
}

/// Q4_1 x Q8_1, the scalar reference of [`vec_dot_q4_1_q8_1`].
pub fn vec_dot_q4_1_q8_1_scalar(n: usize, w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    debug_assert!(n.is_multiple_of(QK) && w.len() >= n / QK && a.len() >= n / QK);
    let mut sumf = 0.0f32;
    for (x, y) in w.iter().zip(a).take(n / QK) {
        let sumi = dot_nibbles(&x.qs, &y.qs, 0);
        sumf += (x.d.to_f32() * y.d.to_f32()) * sumi as f32 + x.m.to_f32() * y.s.to_f32();
    }
    sumf
}

/// Q5_0 x Q8_0, the scalar reference of [`vec_dot_q5_0_q8_0`].
pub fn vec_dot_q5_0_q8_0_scalar(n: usize, w: &[BlockQ5_0], a: &[BlockQ8_0]) -> f32 {
    debug_assert!(n.is_multiple_of(QK) && w.len() >= n / QK && a.len() >= n / QK);
    let mut sumf = 0.0f32;
    for (x, y) in w.iter().zip(a).take(n / QK) {
        let sumi = dot_q5(x.qh, &x.qs, &y.qs, 16);
        sumf += sumi as f32 * (x.d.to_f32() * y.d.to_f32());
    }
    sumf
}

/// Q5_1 x Q8_1, the scalar reference of [`vec_dot_q5_1_q8_1`].
pub fn vec_dot_q5_1_q8_1_scalar(n: usize, w: &[BlockQ5_1], a: &[BlockQ8_1]) -> f32 {
    debug_assert!(n.is_multiple_of(QK) && w.len() >= n / QK && a.len() >= n / QK);
    let mut sumf = 0.0f32;
    for (x, y) in w.iter().zip(a).take(n / QK) {
        let sumi = dot_q5(x.qh, &x.qs, &y.qs, 0);
        sumf += (x.d.to_f32() * y.d.to_f32()) * sumi as f32 + x.m.to_f32() * y.s.to_f32();
    }
    sumf
}

/// Q8_0 x Q8_0, the scalar reference of [`vec_dot_q8_0_q8_0`].
pub fn vec_dot_q8_0_q8_0_scalar(n: usize, w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
    debug_assert!(n.is_multiple_of(QK) && w.len() >= n / QK && a.len() >= n / QK);
    let mut sumf = 0.0f32;
    for (x, y) in w.iter().zip(a).take(n / QK) {
        let sumi: i32 =
            x.qs.iter()
                .zip(&y.qs)
                .map(|(&p, &q)| p as i32 * q as i32)
                .sum();
        sumf += sumi as f32 * (x.d.to_f32() * y.d.to_f32());
    }
    sumf
}

vec_dot_dispatch!(vec_dot_q4_0_q8_0 => vec_dot_q4_0_q8_0_scalar(BlockQ4_0, BlockQ8_0));
vec_dot_dispatch!(
    /// Q4_1 x Q8_1 (the default model's matmul).
    vec_dot_q4_1_q8_1 => vec_dot_q4_1_q8_1_scalar(BlockQ4_1, BlockQ8_1)
);
vec_dot_dispatch!(vec_dot_q5_0_q8_0 => vec_dot_q5_0_q8_0_scalar(BlockQ5_0, BlockQ8_0));
vec_dot_dispatch!(vec_dot_q5_1_q8_1 => vec_dot_q5_1_q8_1_scalar(BlockQ5_1, BlockQ8_1));
vec_dot_dispatch!(vec_dot_q8_0_q8_0 => vec_dot_q8_0_q8_0_scalar(BlockQ8_0, BlockQ8_0));
