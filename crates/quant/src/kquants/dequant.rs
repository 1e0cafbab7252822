//! K-quant super-blocks to f32. `dst` holds 256 elements per block; extra blocks or elements
//! are ignored. The arithmetic order (`(d * sc) * q - dmin * m`) matches ggml's, so results are
//! bit-identical to its reference dequantizers.

use super::*;

pub fn dequantize_q2_k(src: &[BlockQ2K], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let min = b.dmin.to_f32();
        let q = unpack_2bit(&b.qs);
        for ((ys, qs), &sc) in y
            .chunks_exact_mut(16)
            .zip(q.chunks_exact(16))
            .zip(&b.scales)
        {
            let dl = d * (sc & 0x0F) as f32;
            let ml = min * (sc >> 4) as f32;
            for (o, &v) in ys.iter_mut().zip(qs) {
                *o = dl * v as f32 - ml;
            }
        }
    }
}

pub fn dequantize_q3_k(src: &[BlockQ3K], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let q = q3k_values(b);
        let scales = q3k_scales(&b.scales);
        for ((ys, qs), &sc) in y.chunks_exact_mut(16).zip(q.chunks_exact(16)).zip(&scales) {
            let dl = d * sc as f32;
            for (o, &v) in ys.iter_mut().zip(qs) {
                *o = dl * v as f32;
            }
        }
    }
}

/// Shared by Q4_K and Q5_K: 8 sub-blocks of 32 unsigned quants.
#[inline]
fn dequantize_k4_like(d: f32, min: f32, scales: &[u8; K_SCALE_SIZE], q: &[u8], y: &mut [f32]) {
    for (j, (ys, qs)) in y.chunks_exact_mut(32).zip(q.chunks_exact(32)).enumerate() {
        let (sc, m) = scale_min_k4(j, scales);
        let d1 = d * sc as f32;
        let m1 = min * m as f32;
        for (o, &v) in ys.iter_mut().zip(qs) {
            *o = d1 * v as f32 - m1;
        }
    }
}

/// Q4_K nibbles in element order.
#[inline]
pub(crate) fn q4k_values(qs: &[u8; QK_K / 2]) -> [u8; QK_K] {
    let mut q = [0u8; QK_K];
    for (k, group) in qs.chunks_exact(32).enumerate() {
        for (l, &b) in group.iter().enumerate() {
            q[64 * k + l] = b & 0x0F;
            q[64 * k + 32 + l] = b >> 4;
        }
    }
    q
}

/// Q5_K 5-bit values in element order.
#[inline]
pub(crate) fn q5k_values(b: &BlockQ5K) -> [u8; QK_K] {
    let mut q = q4k_values(&b.qs);
    for (i, v) in q.iter_mut().enumerate() {
        *v |= ((b.qh[i % 32] >> (i / 32)) & 1) << 4;
    }
    q
}

pub fn dequantize_q4_k(src: &[BlockQ4K], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let q = q4k_values(&b.qs);
        dequantize_k4_like(b.d.to_f32(), b.dmin.to_f32(), &b.scales, &q, y);
    }
}

pub fn dequantize_q5_k(src: &[BlockQ5K], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let q = q5k_values(b);
        dequantize_k4_like(b.d.to_f32(), b.dmin.to_f32(), &b.scales, &q, y);
    }
}

pub fn dequantize_q6_k(src: &[BlockQ6K], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let q = q6k_values(b);
        for ((ys, qs), &sc) in y
            .chunks_exact_mut(16)
            .zip(q.chunks_exact(16))
            .zip(&b.scales)
        {
            let dl = d * sc as f32;
            for (o, &v) in ys.iter_mut().zip(qs) {
                *o = dl * v as f32;
            }
        }
    }
}

pub fn dequantize_q8_k(src: &[BlockQ8K], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d();
        for (o, &v) in y.iter_mut().zip(&b.qs) {
            *o = d * v as f32;
        }
    }
}
