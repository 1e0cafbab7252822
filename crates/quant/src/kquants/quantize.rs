//! Reference quantizers of the K-quants, following llama.cpp's `quantize_row_*_ref` (no
//! importance matrix): a per-sub-block scale (and min) search, the sub-block scales quantized
//! against one f16 super-scale, then every element re-quantized with the scale as stored.

use super::*;
use crate::fp::{nearest_int, signed_absmax, GROUP_MAX_EPS};

/// Weighted affine fit `x ~ scale * L + min` with L in 0..=nmax, searched over `nstep + 1`
/// candidate inverse scales around `nmax / (max - min)` (llama.cpp's `make_qkx2_quants`).
/// Writes the chosen L; returns `(scale, -min)`; min is clamped to <= 0.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = min.min(x[i]);
        max = max.max(x[i]);
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out.iter_mut().for_each(|l| *l = 0);
        return (0.0, -min);
    }
    let err = |diff: f32| if use_mad { diff.abs() } else { diff * diff };
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        best_error += weights[i] * err(scale * l as f32 + min - x[i]);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    let mut laux = [0u8; 32];
    let laux = &mut laux[..n];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let (w, lf) = (weights[i], l as f32);
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                cur_error += weights[i] * err(this_scale * laux[i] as f32 + this_min - x[i]);
            }
            if cur_error < best_error {
                l_out.copy_from_slice(laux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Symmetric fit `x ~ scale * (L - nmax)` with L - nmax in -nmax..nmax, `x^2`-weighted,
/// searched over 18 inverse scales around `-nmax / max` (llama.cpp's `make_qx_quants` with
/// rmse_type 1). Writes L (0..2*nmax); returns the scale.
fn make_qx_quants(nmax: i32, x: &[f32], l_out: &mut [u8]) -> f32 {
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l_out.iter_mut().for_each(|l| *l = 0);
        return 0.0;
    }
    let quant = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for &v in x {
            let l = quant(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let iscale = -(nmax as f32) / max;
    for (o, &v) in l_out.iter_mut().zip(x) {
        *o = (quant(iscale, v) + nmax) as u8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        let iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (o, &v) in l_out.iter_mut().zip(x) {
                *o = (quant(iscale, v) + nmax) as u8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Symmetric 3-bit fit with coordinate-descent refinement (llama.cpp's `make_q3_quants`
/// with do_rmse). Writes L (0..2*nmax); returns the scale.
fn make_q3_quants(nmax: i32, x: &[f32], l_out: &mut [u8]) -> f32 {
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l_out.iter_mut().for_each(|l| *l = 0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let mut l = [0i32; 16];
    let l = &mut l[..x.len()];
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (li, &v) in l.iter_mut().zip(x) {
        *li = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        let w = v * v;
        sumlx += w * v * *li as f32;
        suml2 += w * (*li * *li) as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for (li, &v) in l.iter_mut().zip(x) {
            let w = v * v;
            let mut slx = sumlx - w * v * *li as f32;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * (*li * *li) as f32;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != *li {
                    slx += w * v * new_l as f32;
                    sl2 += w * (new_l * new_l) as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *li = new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for (o, &li) in l_out.iter_mut().zip(l.iter()) {
        *o = (li + nmax) as u8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Pack 256 values 0..4 as Q2_K/Q3_K `qs`.
fn pack_2bit(l: &[u8; QK_K]) -> [u8; QK_K / 4] {
    let mut qs = [0u8; QK_K / 4];
    for (h, group) in qs.chunks_exact_mut(32).enumerate() {
        for (i, q) in group.iter_mut().enumerate() {
            let e = 128 * h + i;
            *q = l[e] | (l[e + 32] << 2) | (l[e + 64] << 4) | (l[e + 96] << 6);
        }
    }
    qs
}

pub fn quantize_q2_k(src: &[f32], dst: &mut [BlockQ2K]) {
    const Q4SCALE: f32 = 15.0;
    for (x, b) in src.chunks_exact(QK_K).zip(dst) {
        let mut l = [0u8; QK_K];
        let mut scales = [0f32; 16];
        let mut mins = [0f32; 16];
        for (j, xs) in x.chunks_exact(16).enumerate() {
            let weights: [f32; 16] = std::array::from_fn(|i| xs[i].abs());
            (scales[j], mins[j]) = make_qkx2_quants(
                3,
                xs,
                &weights,
                &mut l[16 * j..16 * j + 16],
                -0.5,
                0.1,
                15,
                true,
            );
        }
        let max_scale = scales.iter().fold(0.0f32, |a, &s| a.max(s));
        let max_min = mins.iter().fold(0.0f32, |a, &s| a.max(s));
        let mut sc = [0u8; 16];
        let d = if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for (o, &s) in sc.iter_mut().zip(&scales) {
                *o = nearest_int(iscale * s).clamp(0, 15) as u8;
            }
            Half::from_f32(max_scale / Q4SCALE)
        } else {
            Half::ZERO
        };
        let dmin = if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for (o, &m) in sc.iter_mut().zip(&mins) {
                *o |= (nearest_int(iscale * m).clamp(0, 15) as u8) << 4;
            }
            Half::from_f32(max_min / Q4SCALE)
        } else {
            Half::ZERO
        };
        for (j, xs) in x.chunks_exact(16).enumerate() {
            let dl = d.to_f32() * (sc[j] & 0x0F) as f32;
            if dl == 0.0 {
                continue;
            }
            let dm = dmin.to_f32() * (sc[j] >> 4) as f32;
            for (o, &v) in l[16 * j..16 * j + 16].iter_mut().zip(xs) {
                *o = nearest_int((v + dm) / dl).clamp(0, 3) as u8;
            }
        }
        *b = BlockQ2K {
            scales: sc,
            qs: pack_2bit(&l),
            d,
            dmin,
        };
    }
}

pub fn quantize_q3_k(src: &[f32], dst: &mut [BlockQ3K]) {
    for (x, b) in src.chunks_exact(QK_K).zip(dst) {
        let mut l = [0u8; QK_K];
        let mut scales = [0f32; 16];
        for (j, xs) in x.chunks_exact(16).enumerate() {
            scales[j] = make_q3_quants(4, xs, &mut l[16 * j..16 * j + 16]);
        }
        let (max_scale, amax) = signed_absmax(&scales);
        let mut packed = [0u8; K_SCALE_SIZE];
        let d = if amax != 0.0 {
            let iscale = -32.0 / max_scale;
            for (j, &s) in scales.iter().enumerate() {
                let v = (nearest_int(iscale * s).clamp(-32, 31) + 32) as u8;
                if j < 8 {
                    packed[j] = v & 0x0F;
                } else {
                    packed[j - 8] |= (v & 0x0F) << 4;
                }
                packed[8 + j % 4] |= (v >> 4) << (2 * (j / 4));
            }
            Half::from_f32(1.0 / iscale)
        } else {
            Half::ZERO
        };
        let sc = q3k_scales(&packed);
        for (j, xs) in x.chunks_exact(16).enumerate() {
            let dl = d.to_f32() * sc[j] as f32;
            if dl == 0.0 {
                continue;
            }
            for (o, &v) in l[16 * j..16 * j + 16].iter_mut().zip(xs) {
                *o = (nearest_int(v / dl).clamp(-4, 3) + 4) as u8;
            }
        }
        let mut hmask = [0u8; QK_K / 8];
        for (i, v) in l.iter_mut().enumerate() {
            if *v > 3 {
                hmask[i % 32] |= 1 << (i / 32);
                *v -= 4;
            }
        }
        *b = BlockQ3K {
            hmask,
            qs: pack_2bit(&l),
            scales: packed,
            d,
        };
    }
}

/// Sub-block fits and packed 6-bit scales/mins shared by Q4_K and Q5_K. Returns
/// (d, dmin, packed scales, L with values 0..=nmax).
fn quantize_k4_like(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
) -> (Half, Half, [u8; K_SCALE_SIZE], [u8; QK_K]) {
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    for (j, xs) in x.chunks_exact(32).enumerate() {
        let sum_x2: f32 = xs.iter().map(|v| v * v).sum();
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights: [f32; 32] = std::array::from_fn(|i| av_x + xs[i].abs());
        (scales[j], mins[j]) = make_qkx2_quants(
            nmax,
            xs,
            &weights,
            &mut l[32 * j..32 * j + 32],
            rmin,
            0.1,
            nstep,
            false,
        );
    }
    let max_scale = scales.iter().fold(0.0f32, |a, &s| a.max(s));
    let max_min = mins.iter().fold(0.0f32, |a, &s| a.max(s));
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; K_SCALE_SIZE];
    for j in 0..8 {
        let ls = nearest_int(inv_scale * scales[j]).clamp(0, 63) as u8;
        let lm = nearest_int(inv_min * mins[j]).clamp(0, 63) as u8;
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0x0F) | ((lm & 0x0F) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = Half::from_f32(max_scale / 63.0);
    let dmin = Half::from_f32(max_min / 63.0);
    for (j, xs) in x.chunks_exact(32).enumerate() {
        let (sc, m) = scale_min_k4(j, &packed);
        let dl = d.to_f32() * sc as f32;
        if dl == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * m as f32;
        for (o, &v) in l[32 * j..32 * j + 32].iter_mut().zip(xs) {
            *o = nearest_int((v + dm) / dl).clamp(0, nmax) as u8;
        }
    }
    (d, dmin, packed, l)
}

pub fn quantize_q4_k(src: &[f32], dst: &mut [BlockQ4K]) {
    for (x, b) in src.chunks_exact(QK_K).zip(dst) {
        let (d, dmin, scales, l) = quantize_k4_like(x, 15, -1.0, 20);
        let mut qs = [0u8; QK_K / 2];
        for (k, group) in qs.chunks_exact_mut(32).enumerate() {
            for (i, q) in group.iter_mut().enumerate() {
                *q = l[64 * k + i] | (l[64 * k + 32 + i] << 4);
            }
        }
        *b = BlockQ4K {
            d,
            dmin,
            scales,
            qs,
        };
    }
}

pub fn quantize_q5_k(src: &[f32], dst: &mut [BlockQ5K]) {
    for (x, b) in src.chunks_exact(QK_K).zip(dst) {
        let (d, dmin, scales, l) = quantize_k4_like(x, 31, -0.5, 15);
        let mut qs = [0u8; QK_K / 2];
        let mut qh = [0u8; QK_K / 8];
        for (k, group) in qs.chunks_exact_mut(32).enumerate() {
            for (i, q) in group.iter_mut().enumerate() {
                let (lo, hi) = (l[64 * k + i], l[64 * k + 32 + i]);
                qh[i] |= ((lo >> 4) << (2 * k)) | ((hi >> 4) << (2 * k + 1));
                *q = (lo & 0x0F) | ((hi & 0x0F) << 4);
            }
        }
        *b = BlockQ5K {
            d,
            dmin,
            scales,
            qh,
            qs,
        };
    }
}

pub fn quantize_q6_k(src: &[f32], dst: &mut [BlockQ6K]) {
    for (x, b) in src.chunks_exact(QK_K).zip(dst) {
        let mut l = [0u8; QK_K];
        let mut scales = [0f32; 16];
        for (j, xs) in x.chunks_exact(16).enumerate() {
            scales[j] = make_qx_quants(32, xs, &mut l[16 * j..16 * j + 16]);
        }
        let (max_scale, max_abs_scale) = signed_absmax(&scales);
        if max_abs_scale < GROUP_MAX_EPS {
            *b = BlockQ6K::zeroed();
            continue;
        }
        let iscale = -128.0 / max_scale;
        let d = Half::from_f32(1.0 / iscale);
        let mut sc = [0i8; 16];
        for (o, &s) in sc.iter_mut().zip(&scales) {
            *o = nearest_int(iscale * s).clamp(-128, 127) as i8;
        }
        for (j, xs) in x.chunks_exact(16).enumerate() {
            let dl = d.to_f32() * sc[j] as f32;
            if dl == 0.0 {
                continue;
            }
            for (o, &v) in l[16 * j..16 * j + 16].iter_mut().zip(xs) {
                *o = (nearest_int(v / dl).clamp(-32, 31) + 32) as u8;
            }
        }
        let mut ql = [0u8; QK_K / 2];
        let mut qh = [0u8; QK_K / 4];
        for h in 0..2 {
            for i in 0..32 {
                let e = 128 * h + i;
                let (l0, l1, l2, l3) = (l[e], l[e + 32], l[e + 64], l[e + 96]);
                ql[64 * h + i] = (l0 & 0x0F) | ((l2 & 0x0F) << 4);
                ql[64 * h + 32 + i] = (l1 & 0x0F) | ((l3 & 0x0F) << 4);
                qh[32 * h + i] = (l0 >> 4) | ((l1 >> 4) << 2) | ((l2 >> 4) << 4) | ((l3 >> 4) << 6);
            }
        }
        *b = BlockQ6K {
            ql,
            qh,
            scales: sc,
            d,
        };
    }
}

/// Q8_K activations: the signed max-abs element maps to -127; `bsums` are the 16-element sums.
pub fn quantize_q8_k(src: &[f32], dst: &mut [BlockQ8K]) {
    for (x, b) in src.chunks_exact(QK_K).zip(dst) {
        let (max, amax) = signed_absmax(x);
        if amax == 0.0 {
            *b = BlockQ8K::zeroed();
            continue;
        }
        let iscale = -127.0 / max;
        for (o, &v) in b.qs.iter_mut().zip(x) {
            *o = nearest_int(iscale * v).min(127) as i8;
        }
        for (s, q) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            let sum: i32 = q.iter().map(|&v| v as i32).sum();
            *s = (sum as i16).to_le_bytes();
        }
        b.d = (1.0 / iscale).to_le_bytes();
    }
}
