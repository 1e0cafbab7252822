//! The non-linear 4-bit formats IQ4_NL (32-element blocks, one f16 scale) and IQ4_XS
//! (256-element super-blocks with 8 6-bit sub-block scales): each 4-bit index selects one of 16
//! fixed non-uniform levels ([`KVALUES_IQ4NL`]). Layouts bit-exact to ggml-common.h; the
//! quantizers follow llama.cpp's `quantize_iq4_nl` / `quantize_iq4_xs` without an importance
//! matrix (what llama-quantize writes; for IQ4_NL that is the variant with the scale search, not
//! the quicker `quantize_row_iq4_nl_ref`).

use crate::fp::{nearest_int, signed_absmax, Half, GROUP_MAX_EPS};
use crate::kquants::BlockQ8K;
use crate::legacy::BlockQ8_0;
use crate::{GgmlType, QK_K};
use bytemuck::{Pod, Zeroable};

/// The 16 levels of IQ4_NL / IQ4_XS.
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

const QK4_NL: usize = 32;

/// IQ4_NL: `x = d * KVALUES_IQ4NL[q]`; byte j holds element j (low) and j + 16 (high).
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockIq4Nl {
    pub d: Half,
    pub qs: [u8; QK4_NL / 2],
}

/// IQ4_XS: 8 sub-blocks of 32, `x = d * (ls - 32) * KVALUES_IQ4NL[q]` with a 6-bit `ls`: low
/// nibble in `scales_l` (sub-block 2i low, 2i+1 high), top 2 bits at `2 * ib` of `scales_h`
/// (LE u16). Each sub-block's 16 bytes of `qs` are nibble-packed as IQ4_NL.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockIq4Xs {
    pub d: Half,
    pub scales_h: [u8; 2],
    pub scales_l: [u8; QK_K / 64],
    pub qs: [u8; QK_K / 2],
}

impl BlockIq4Xs {
    /// The unbiased 6-bit scale of sub-block `ib` (0..8), in -32..32.
    #[inline]
    pub fn scale(&self, ib: usize) -> i32 {
        let h = u16::from_le_bytes(self.scales_h);
        let low = self
            .scales_l
            .get(ib / 2)
            .map_or(0, |b| (b >> (4 * (ib % 2))) & 0x0F);
        let high = ((h >> (2 * ib)) & 3) as u8;
        (low | (high << 4)) as i32 - 32
    }
}

block_layout!(BlockIq4Nl, GgmlType::Iq4Nl);
block_layout!(BlockIq4Xs, GgmlType::Iq4Xs);

/// Levels of one 16-byte nibble group in element order.
#[inline]
fn levels(qs: &[u8]) -> [i8; 32] {
    let mut v = [0i8; 32];
    for (j, &b) in qs.iter().take(16).enumerate() {
        v[j] = KVALUES_IQ4NL[(b & 0x0F) as usize];
        v[j + 16] = KVALUES_IQ4NL[(b >> 4) as usize];
    }
    v
}

pub fn dequantize_iq4_nl(src: &[BlockIq4Nl], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK4_NL)) {
        let d = b.d.to_f32();
        for (o, &v) in y.iter_mut().zip(&levels(&b.qs)) {
            *o = d * v as f32;
        }
    }
}

pub fn dequantize_iq4_xs(src: &[BlockIq4Xs], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        for (ib, (ys, qs)) in y
            .chunks_exact_mut(32)
            .zip(b.qs.chunks_exact(16))
            .enumerate()
        {
            let dl = d * b.scale(ib) as f32;
            for (o, &v) in ys.iter_mut().zip(&levels(qs)) {
                *o = dl * v as f32;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reference quantize.

/// Index of the level nearest to `x` (ties to the lower level), llama.cpp's
/// `best_index_int8`.
#[inline]
fn best_index(x: f32) -> u8 {
    let v = &KVALUES_IQ4NL;
    if x <= v[0] as f32 {
        return 0;
    }
    if x >= v[15] as f32 {
        return 15;
    }
    let (mut ml, mut mu) = (0usize, 15usize);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < v[mav] as f32 {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - (v[mu - 1] as f32) < v[mu] as f32 - x {
        (mu - 1) as u8
    } else {
        mu as u8
    }
}

const NTRY: i32 = 7;

/// Best scale of one 32-element sub-block (x^2-weighted least squares over 2*NTRY+1 candidate
/// inverse scales); 0 for an all-zero sub-block.
fn fit_scale(xb: &[f32]) -> f32 {
    let (max, amax) = signed_absmax(xb);
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let k0 = KVALUES_IQ4NL[0] as f32;
    let sums = |id: f32| {
        let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
        for &x in xb {
            let q = KVALUES_IQ4NL[best_index(id * x) as usize] as f32;
            let w = x * x;
            sumqx += w * q * x;
            sumq2 += w * q * q;
        }
        (sumqx, sumq2)
    };
    let (sumqx, sumq2) = sums(1.0 / (-max / k0));
    let mut d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for itry in -NTRY..=NTRY {
        let (sumqx, sumq2) = sums((itry as f32 + k0) / max);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

/// Pack 32 indices (element j low nibble, j + 16 high) into 16 bytes.
#[inline]
fn pack(l: &[u8], out: &mut [u8]) {
    for (j, o) in out.iter_mut().take(16).enumerate() {
        *o = l[j] | (l[j + 16] << 4);
    }
}

pub fn quantize_iq4_nl(src: &[f32], dst: &mut [BlockIq4Nl]) {
    for (x, b) in src.chunks_exact(QK4_NL).zip(dst) {
        let scale = fit_scale(x);
        let id = if scale != 0.0 { 1.0 / scale } else { 0.0 };
        let l: [u8; QK4_NL] = std::array::from_fn(|j| best_index(id * x[j]));
        b.d = Half::from_f32(scale);
        pack(&l, &mut b.qs);
    }
}

pub fn quantize_iq4_xs(src: &[f32], dst: &mut [BlockIq4Xs]) {
    for (x, b) in src.chunks_exact(QK_K).zip(dst) {
        let mut scales = [0.0f32; QK_K / 32];
        for (s, xb) in scales.iter_mut().zip(x.chunks_exact(32)) {
            *s = fit_scale(xb);
        }
        let (max_scale, _) = signed_absmax(&scales);
        let d = -max_scale / 32.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut scales_h = 0u16;
        let mut scales_l = [0u8; QK_K / 64];
        let mut l = [0u8; QK_K];
        for (ib, (xb, lb)) in x.chunks_exact(32).zip(l.chunks_exact_mut(32)).enumerate() {
            let ls = nearest_int(id * scales[ib]).clamp(-32, 31);
            let dl = d * ls as f32;
            let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
            for (o, &v) in lb.iter_mut().zip(xb) {
                *o = best_index(idl * v);
            }
            let ls = (ls + 32) as u8;
            scales_l[ib / 2] |= (ls & 0x0F) << (4 * (ib % 2));
            scales_h |= ((ls >> 4) as u16) << (2 * ib);
        }
        b.d = Half::from_f32(d);
        b.scales_h = scales_h.to_le_bytes();
        b.scales_l = scales_l;
        for (lb, qs) in l.chunks_exact(32).zip(b.qs.chunks_exact_mut(16)) {
            pack(lb, qs);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Vec-dot.

#[inline]
fn dot_levels(qs: &[u8], y: &[i8]) -> i32 {
    levels(qs)
        .iter()
        .zip(y)
        .map(|(&a, &b)| a as i32 * b as i32)
        .sum()
}

/// IQ4_NL x Q8_0, the scalar reference of [`vec_dot_iq4_nl_q8_0`].
pub fn vec_dot_iq4_nl_q8_0_scalar(n: usize, w: &[BlockIq4Nl], a: &[BlockQ8_0]) -> f32 {
    debug_assert!(n.is_multiple_of(QK4_NL) && w.len() >= n / QK4_NL && a.len() >= n / QK4_NL);
    let mut sumf = 0.0f32;
    for (x, y) in w.iter().zip(a).take(n / QK4_NL) {
        let sumi = dot_levels(&x.qs, &y.qs);
        sumf += (x.d.to_f32() * y.d.to_f32()) * sumi as f32;
    }
    sumf
}

/// IQ4_XS x Q8_K, the scalar reference of [`vec_dot_iq4_xs_q8_k`].
pub fn vec_dot_iq4_xs_q8_k_scalar(n: usize, w: &[BlockIq4Xs], a: &[BlockQ8K]) -> f32 {
    debug_assert!(n.is_multiple_of(QK_K) && w.len() >= n / QK_K && a.len() >= n / QK_K);
    let mut sumf = 0.0f32;
    for (x, y) in w.iter().zip(a).take(n / QK_K) {
        let isum: i32 =
            x.qs.chunks_exact(16)
                .zip(y.qs.chunks_exact(32))
                .enumerate()
                .map(|(ib, (qs, ys))| x.scale(ib) * dot_levels(qs, ys))
                .sum();
        sumf += x.d.to_f32() * y.d() * isum as f32;
    }
    sumf
}

vec_dot_dispatch!(vec_dot_iq4_nl_q8_0 => vec_dot_iq4_nl_q8_0_scalar(BlockIq4Nl, BlockQ8_0));
vec_dot_dispatch!(vec_dot_iq4_xs_q8_k => vec_dot_iq4_xs_q8_k_scalar(BlockIq4Xs, BlockQ8K));
