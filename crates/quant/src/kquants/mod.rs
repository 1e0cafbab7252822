//! The K-quants: 256-element super-blocks split into 16- or 32-element sub-blocks with 4-8 bit
//! sub-block scales (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) and the Q8_K activation format.
//!
//! Layouts are bit-exact to ggml-common.h (QK_K = 256). Modules: `dequant` (to f32),
//! `quantize` (llama.cpp's reference quantizers and their scale searches), `dot` (vec-dot of
//! each type against Q8_K).

mod dequant;
mod dot;
mod quantize;

pub use dequant::*;
pub use dot::*;
pub use quantize::*;

use crate::fp::Half;
use crate::{GgmlType, QK_K};
use bytemuck::{Pod, Zeroable};

/// Bytes of the packed 6-bit scales and mins of Q4_K / Q5_K (and the 6-bit scales of Q3_K).
pub const K_SCALE_SIZE: usize = 12;

/// Q2_K: 16 sub-blocks of 16; `x = d * (sc & 15) * q - dmin * (sc >> 4)`, q in 0..4.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ2K {
    /// Per sub-block: scale in the low nibble, min in the high nibble.
    pub scales: [u8; QK_K / 16],
    /// 2-bit quants: byte `l` of each 32-byte group holds 4 sub-blocks' elements, shifts 0,2,4,6.
    pub qs: [u8; QK_K / 4],
    pub d: Half,
    pub dmin: Half,
}

/// Q3_K: 16 sub-blocks of 16; `x = d * (sc - 32) * (q - 4 * !hbit)`, q in 0..4, sc 6-bit.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ3K {
    /// High bit of each element: bit `k` of byte `l` belongs to element `32 * k + l`.
    pub hmask: [u8; QK_K / 8],
    /// Low 2 bits, packed as Q2_K.
    pub qs: [u8; QK_K / 4],
    /// 16 6-bit scales: low nibbles in bytes 0..8, high 2-bit pairs in bytes 8..12.
    pub scales: [u8; K_SCALE_SIZE],
    pub d: Half,
}

/// Q4_K: 8 sub-blocks of 32; `x = d * sc * q - dmin * m`, q in 0..16, sc and m 6-bit.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ4K {
    pub d: Half,
    pub dmin: Half,
    /// 8 6-bit scales and 8 6-bit mins (see [`scale_min_k4`]).
    pub scales: [u8; K_SCALE_SIZE],
    /// Per 64 elements, 32 bytes: elements 0..32 in low nibbles, 32..64 in high nibbles.
    pub qs: [u8; QK_K / 2],
}

/// Q5_K: as Q4_K with a fifth bit per element in `qh`.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ5K {
    pub d: Half,
    pub dmin: Half,
    pub scales: [u8; K_SCALE_SIZE],
    /// Bit 4 of element `32 * k + l` is bit `k` of `qh[l]`.
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}

/// Q6_K: 16 sub-blocks of 16; `x = d * sc * (q - 32)`, q in 0..64, sc signed 8-bit.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ6K {
    /// Low 4 bits. Per 128 elements, 64 bytes: byte l (< 32) holds elements l (low) and
    /// l + 64 (high); byte 32 + l holds elements l + 32 and l + 96.
    pub ql: [u8; QK_K / 2],
    /// High 2 bits. Per 128 elements, 32 bytes: byte l holds elements l, l+32, l+64, l+96 at
    /// shifts 0, 2, 4, 6.
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: Half,
}

/// Q8_K: the activation format of the K-quant dots. `x = d * q`; `bsums[i]` is the sum of the
/// 16 quants `16 * i .. 16 * i + 16` (little-endian i16), used for the min terms.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ8K {
    /// f32 scale, little-endian bytes (keeps the alignment at 1).
    pub d: [u8; 4],
    pub qs: [i8; QK_K],
    pub bsums: [[u8; 2]; QK_K / 16],
}

impl BlockQ8K {
    /// The f32 scale.
    #[inline]
    pub fn d(&self) -> f32 {
        f32::from_le_bytes(self.d)
    }

    /// Sum of the quants of sub-block `i` (0..16) as stored.
    #[inline]
    pub fn bsum(&self, i: usize) -> i32 {
        self.bsums
            .get(i)
            .map_or(0, |b| i16::from_le_bytes(*b) as i32)
    }
}

block_layout!(BlockQ2K, GgmlType::Q2K);
block_layout!(BlockQ3K, GgmlType::Q3K);
block_layout!(BlockQ4K, GgmlType::Q4K);
block_layout!(BlockQ5K, GgmlType::Q5K);
block_layout!(BlockQ6K, GgmlType::Q6K);
block_layout!(BlockQ8K, GgmlType::Q8K);

/// Scale and min of sub-block `j` (0..8) of Q4_K / Q5_K, 6 bits each: sub-blocks 0..4 keep
/// them in the low 6 bits of bytes `j` and `j + 4`; sub-blocks 4..8 keep their low nibbles in
/// byte `j + 4` and their top 2 bits in the top bits of bytes `j - 4` and `j`.
#[inline]
pub fn scale_min_k4(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// [`scale_min_k4`] of all 8 sub-blocks at once: the scales and the mins as bytes (byte `j`
/// for sub-block `j`) of two little-endian u64 (the SIMD kernels' form). Words `w0 = q[0..4]`,
/// `w1 = q[4..8]`, `w2 = q[8..12]`: sub-blocks 0..4 keep their low 6 bits in `w0` (scales)
/// and `w1` (mins), sub-blocks 4..8 their low nibbles in `w2` and top 2 bits in the top bits
/// of `w0` / `w1`.
#[inline]
pub(crate) fn scales_mins_k4(q: &[u8; K_SCALE_SIZE]) -> (u64, u64) {
    let word = |i: usize| u32::from_le_bytes([q[i], q[i + 1], q[i + 2], q[i + 3]]);
    let (w0, w1, w2) = (word(0), word(4), word(8));
    let sc = (w0 & 0x3f3f_3f3f) as u64
        | ((((w2 & 0x0f0f_0f0f) | (((w0 >> 6) & 0x0303_0303) << 4)) as u64) << 32);
    let mn = (w1 & 0x3f3f_3f3f) as u64
        | (((((w2 >> 4) & 0x0f0f_0f0f) | (((w1 >> 6) & 0x0303_0303) << 4)) as u64) << 32);
    (sc, mn)
}

/// The 16 scales of Q3_K, unbiased (-32..32).
#[inline]
pub fn q3k_scales(s: &[u8; K_SCALE_SIZE]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let low = if i < 8 { s[i] & 0x0F } else { s[i - 8] >> 4 };
        let high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        *o = (low | (high << 4)) as i8 - 32;
    }
    out
}

/// The 6-bit values of Q6_K, unbiased (-32..32), in element order.
#[inline]
pub(crate) fn q6k_values(b: &BlockQ6K) -> [i8; QK_K] {
    let mut q = [0i8; QK_K];
    for h in 0..2 {
        let ql = &b.ql[64 * h..64 * h + 64];
        let qh = &b.qh[32 * h..32 * h + 32];
        let out = &mut q[128 * h..128 * h + 128];
        for l in 0..32 {
            let hb = qh[l];
            out[l] = ((ql[l] & 0x0F) | ((hb & 3) << 4)) as i8 - 32;
            out[l + 32] = ((ql[l + 32] & 0x0F) | (((hb >> 2) & 3) << 4)) as i8 - 32;
            out[l + 64] = ((ql[l] >> 4) | (((hb >> 4) & 3) << 4)) as i8 - 32;
            out[l + 96] = ((ql[l + 32] >> 4) | (((hb >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    q
}

/// The 2-bit fields of a 64-byte Q2_K/Q3_K `qs` array in element order (0..4 each): per 128
/// elements, byte `l` of the 32-byte group holds elements `l, l+32, l+64, l+96` at shifts
/// 0, 2, 4, 6.
#[inline]
pub(crate) fn unpack_2bit(qs: &[u8; QK_K / 4]) -> [u8; QK_K] {
    let mut q = [0u8; QK_K];
    for (h, group) in qs.chunks_exact(32).enumerate() {
        for (l, &b) in group.iter().enumerate() {
            for k in 0..4 {
                q[128 * h + 32 * k + l] = (b >> (2 * k)) & 3;
            }
        }
    }
    q
}

/// The Q3_K values (-4..4) in element order: 2 low bits from `qs`, minus 4 where the
/// `hmask` bit is clear.
#[inline]
pub(crate) fn q3k_values(b: &BlockQ3K) -> [i8; QK_K] {
    let low = unpack_2bit(&b.qs);
    let mut q = [0i8; QK_K];
    for (i, (o, &l)) in q.iter_mut().zip(&low).enumerate() {
        let hbit = (b.hmask[i % 32] >> (i / 32)) & 1;
        *o = l as i8 - if hbit == 0 { 4 } else { 0 };
    }
    q
}
