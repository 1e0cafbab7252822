//! Vec-dot of each K-quant against Q8_K activations. Inside a super-block everything is integer
//! (quant x quant summed per sub-block, times the integer sub-block scale); the min terms use the
//! activation's 16-element sums `bsums`. One float multiply-add per super-block (two with mins).
//! `n` is the number of elements (a multiple of 256); extra blocks are ignored.

use super::dequant::{q4k_values, q5k_values};
use super::*;

/// Sum over 16-element sub-blocks of `scale[j] * dot(q[16j..], y[16j..])`.
#[inline]
fn scaled_dot_16(q: &[i8; QK_K], y: &[i8; QK_K], scales: impl Iterator<Item = i32>) -> i32 {
    q.chunks_exact(16)
        .zip(y.chunks_exact(16))
        .zip(scales)
        .map(|((q, y), sc)| {
            let s: i32 = q.iter().zip(y).map(|(&a, &b)| a as i32 * b as i32).sum();
            sc * s
        })
        .sum()
}

/// Sum over 32-element sub-blocks of `scale[j] * dot(q[32j..], y[32j..])`, unsigned q.
#[inline]
fn scaled_dot_32(q: &[u8; QK_K], y: &[i8; QK_K], scales: &[i32; 8]) -> i32 {
    q.chunks_exact(32)
        .zip(y.chunks_exact(32))
        .zip(scales)
        .map(|((q, y), &sc)| {
            let s: i32 = q.iter().zip(y).map(|(&a, &b)| a as i32 * b as i32).sum();
            sc * s
        })
        .sum()
}

/// Q2_K x Q8_K, the scalar reference of [`vec_dot_q2_k_q8_k`].
pub fn vec_dot_q2_k_q8_k_scalar(n: usize, w: &[BlockQ2K], a: &[BlockQ8K]) -> f32 {
    debug_assert!(n.is_multiple_of(QK_K) && w.len() >= n / QK_K && a.len() >= n / QK_K);
    let mut sumf = 0.0f32;
    for (x, y) in w.iter().zip(a).take(n / QK_K) {
        let q = unpack_2bit(&x.qs).map(|v| v as i8);
        let isum = scaled_dot_16(&q, &y.qs, x.scales.iter().map(|&s| (s & 0x0F) as i32));
        let summs: i32 = (0..16).map(|j| (x.scales[j] >> 4) as i32 * y.bsum(j)).sum();
        let dall = y.d() * x.d.to_f32();
        let dmin = y.d() * x.dmin.to_f32();
        sumf += dall * isum as f32 - dmin * summs as f32;
    }
    sumf
}

/// Q3_K x Q8_K, the scalar reference of [`vec_dot_q3_k_q8_k`].
pub fn vec_dot_q3_k_q8_k_scalar(n: usize, w: &[BlockQ3K], a: &[BlockQ8K]) -> f32 {
    debug_assert!(n.is_multiple_of(QK_K) && w.len() >= n / QK_K && a.len() >= n / QK_K);
    let mut sumf = 0.0f32;
    for (x, y) in w.iter().zip(a).take(n / QK_K) {
        let q = q3k_values(x);
        let sc = q3k_scales(&x.scales);
        let isum = scaled_dot_16(&q, &y.qs, sc.iter().map(|&s| s as i32));
        sumf += x.d.to_f32() * y.d() * isum as f32;
    }
    sumf
}

/// Scales and the min term shared by Q4_K and Q5_K.
#[inline]
fn k4_scales_and_mins(scales: &[u8; K_SCALE_SIZE], y: &BlockQ8K) -> ([i32; 8], i32) {
    let mut sc = [0i32; 8];
    let mut summs = 0i32;
    for (j, s) in sc.iter_mut().enumerate() {
        let (d, m) = scale_min_k4(j, scales);
        *s = d as i32;
        summs += m as i32 * (y.bsum(2 * j) + y.bsum(2 * j + 1));
    }
    (sc, summs)
}

/// Q4_K x Q8_K, the scalar reference of [`vec_dot_q4_k_q8_k`].
pub fn vec_dot_q4_k_q8_k_scalar(n: usize, w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
    debug_assert!(n.is_multiple_of(QK_K) && w.len() >= n / QK_K && a.len() >= n / QK_K);
    let mut sumf = 0.0f32;
    for (x, y) in w.iter().zip(a).take(n / QK_K) {
        let (sc, summs) = k4_scales_and_mins(&x.scales, y);
        let isum = scaled_dot_32(&q4k_values(&x.qs), &y.qs, &sc);
        sumf += x.d.to_f32() * y.d() * isum as f32 - x.dmin.to_f32() * y.d() * summs as f32;
    }
    sumf
}

/// Q5_K x Q8_K, the scalar reference of [`vec_dot_q5_k_q8_k`].
pub fn vec_dot_q5_k_q8_k_scalar(n: usize, w: &[BlockQ5K], a: &[BlockQ8K]) -> f32 {
    debug_assert!(n.is_multiple_of(QK_K) && w.len() >= n / QK_K && a.len() >= n / QK_K);
    let mut sumf = 0.0f32;
    for (x, y) in w.iter().zip(a).take(n / QK_K) {
        let (sc, summs) = k4_scales_and_mins(&x.scales, y);
        let isum = scaled_dot_32(&q5k_values(x), &y.qs, &sc);
        sumf += x.d.to_f32() * y.d() * isum as f32 - x.dmin.to_f32() * y.d() * summs as f32;
    }
    sumf
}

/// Q6_K x Q8_K, the scalar reference of [`vec_dot_q6_k_q8_k`].
pub fn vec_dot_q6_k_q8_k_scalar(n: usize, w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    debug_assert!(n.is_multiple_of(QK_K) && w.len() >= n / QK_K && a.len() >= n / QK_K);
    let mut sumf = 0.0f32;
    for (x, y) in w.iter().zip(a).take(n / QK_K) {
        let q = q6k_values(x);
        let isum = scaled_dot_16(&q, &y.qs, x.scales.iter().map(|&s| s as i32));
        sumf += x.d.to_f32() * y.d() * isum as f32;
    }
    sumf
}

vec_dot_dispatch!(vec_dot_q2_k_q8_k => vec_dot_q2_k_q8_k_scalar(BlockQ2K, BlockQ8K));
vec_dot_dispatch!(vec_dot_q3_k_q8_k => vec_dot_q3_k_q8_k_scalar(BlockQ3K, BlockQ8K));
vec_dot_dispatch!(vec_dot_q4_k_q8_k => vec_dot_q4_k_q8_k_scalar(BlockQ4K, BlockQ8K));
vec_dot_dispatch!(vec_dot_q5_k_q8_k => vec_dot_q5_k_q8_k_scalar(BlockQ5K, BlockQ8K));
vec_dot_dispatch!(vec_dot_q6_k_q8_k => vec_dot_q6_k_q8_k_scalar(BlockQ6K, BlockQ8K));
