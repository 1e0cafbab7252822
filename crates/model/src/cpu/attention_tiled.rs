//! Attention for steps of 64 query tokens or more, in the arithmetic of llama.cpp's tiled CPU
//! flash attention (`ggml_compute_forward_flash_attn_ext_tiled`), which it takes from
//! `GGML_FA_TILE_Q` query rows per step: queries stay in f32, keys are visited in tiles of
//! `GGML_FA_TILE_KV` positions aligned at multiples of 64, a score is a sequential chain of fused
//! multiply-adds over the head dimension, each tile's probabilities come from ggml's vectorized
//! exponential and are summed 16 at a time, and the f32 value accumulator takes each tile's
//! values as fused chains over the tile's keys. Steps of fewer tokens take `attention.rs`'s
//! one-chunk arithmetic, as llama.cpp does. The result is llama.cpp's bit for bit (the reference
//! test's 181-token prompt checks it).

use super::attention::{finish, Ctx, KvElem, Scratch, TaskView};
use super::ops::v_expf;

/// Keys per tile (GGML_FA_TILE_KV).
pub(super) const TILE_KV: usize = 64;
/// Query tokens per step from which llama.cpp's tiled path is used (GGML_FA_TILE_Q).
pub(super) const TILE_Q: usize = 64;

/// Tokens `t0..t1` (one sequence) x the query heads of KV head `g`, tile by tile.
#[inline(always)]
pub(super) fn run_tiled<T: KvElem>(
    c: &Ctx<T>,
    (t0, t1): (usize, usize),
    g: usize,
    sc: &mut Scratch,
    emit: &mut dyn FnMut(usize, usize, &[f32]),
) {
    let (q, plan, p) = (c.q, c.plan, c.p);
    let view = c.view(t0, g);
    let TaskView {
        hd,
        group,
        qd,
        kc,
        vc,
        ..
    } = view;
    let slot = |j: usize| view.slot(j);
    let n_q = (t1 - t0) * group;
    // kt: the tile's keys transposed (kt[i * TILE_KV + l]); vf: its values (vf[l * hd + i]).
    sc.kt.resize(hd * TILE_KV, 0.0);
    sc.vf.resize(TILE_KV * hd, 0.0);
    sc.acc.clear();
    sc.acc.resize(n_q * hd, 0.0);
    sc.max.clear();
    sc.max.resize(n_q, f32::NEG_INFINITY);
    sc.sum.clear();
    sc.sum.resize(n_q, 0.0);
    sc.tmp.resize(hd.max(TILE_KV), 0.0);
    let mut k_lo = usize::MAX;
    let mut k_hi = 0;
    for t in t0..t1 {
        let pos = plan.positions[t] as usize;
        k_lo = k_lo.min(p.window.map_or(0, |w| (pos + 1).saturating_sub(w)));
        k_hi = k_hi.max(pos + 1);
    }
    let mut c0 = k_lo / TILE_KV * TILE_KV;
    while c0 < k_hi {
        let c1 = (c0 + TILE_KV).min(k_hi);
        for l in 0..TILE_KV {
            let j = c0 + l;
            let row = &mut sc.tmp[..hd];
            if j >= k_lo && j < c1 {
                let base = slot(j);
                T::load(T::cells(kc, base, hd), row);
                T::load(T::cells(vc, base, hd), &mut sc.vf[l * hd..(l + 1) * hd]);
            } else {
                row.iter_mut().for_each(|x| *x = 0.0);
                sc.vf[l * hd..(l + 1) * hd]
                    .iter_mut()
                    .for_each(|x| *x = 0.0);
            }
            for (i, &x) in row.iter().enumerate() {
                sc.kt[i * TILE_KV + l] = x;
            }
        }
        for t in t0..t1 {
            let pos = plan.positions[t] as usize;
            let lo = p.window.map_or(0, |w| (pos + 1).saturating_sub(w));
            for jh in 0..group {
                let i = (t - t0) * group + jh;
                let h = g * group + jh;
                let qrow = &q.data[t * qd + h * hd..t * qd + (h + 1) * hd];
                // Scores: per key a sequential fused chain over the head dimension, from 0.
                let mut s = [0.0f32; TILE_KV];
                for (&qv, kcol) in qrow.iter().zip(sc.kt.chunks_exact(TILE_KV)) {
                    for (s, &k) in s.iter_mut().zip(kcol) {
                        *s = qv.mul_add(k, *s);
                    }
                }
                let mut tile_max = f32::NEG_INFINITY;
                for (l, s) in s.iter_mut().enumerate() {
                    let j = c0 + l;
                    *s = if j >= lo && j <= pos {
                        *s * p.scale
                    } else {
                        f32::NEG_INFINITY
                    };
                    tile_max = tile_max.max(*s);
                }
                if tile_max == f32::NEG_INFINITY {
                    continue;
                }
                let acc = &mut sc.acc[i * hd..(i + 1) * hd];
                let (m_old, mut sum) = (sc.max[i], sc.sum[i]);
                let m_new = m_old.max(tile_max);
                if m_new > m_old {
                    let ms = (m_old - m_new).exp();
                    acc.iter_mut().for_each(|a| *a *= ms);
                    sum *= ms;
                }
                // ggml_vec_soft_max_f32: 16 probabilities at a time, each group reduced in
                // registers (lanes i + 8, + 4, + 2, + 1) and added in f64.
                let mut total = 0.0f64;
                for chunk in s.chunks_exact_mut(16) {
                    let mut x = [0.0f32; 16];
                    for (x, s) in x.iter_mut().zip(chunk.iter_mut()) {
                        *s = v_expf(*s - m_new);
                        *x = *s;
                    }
                    for width in [8, 4, 2, 1] {
                        for l in 0..width {
                            x[l] += x[l + width];
                        }
                    }
                    total += x[0] as f64;
                }
                sum = (sum as f64 + total) as f32;
                // The values: per element, a fused chain over the tile's keys in order.
                for (l, &pl) in s.iter().enumerate() {
                    if pl != 0.0 {
                        let v = &sc.vf[l * hd..(l + 1) * hd];
                        acc.iter_mut()
                            .zip(v)
                            .for_each(|(a, &v)| *a = pl.mul_add(v, *a));
                    }
                }
                sc.max[i] = m_new;
                sc.sum[i] = sum;
            }
        }
        c0 += TILE_KV;
    }
    finish(sc, (t0, t1), g, (group, hd), emit);
}
