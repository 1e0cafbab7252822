//! Causal grouped-query attention over the f16 KV cache.
//!
//! Numerics follow llama.cpp's CPU flash-attention kernel, so that logits agree with it closely
//! on quantized models (which amplify tiny rounding differences): the query is rounded to the
//! cache's element type, scores are f32 dot products, and the softmax runs online with the value
//! accumulator kept in the cache's type (f16 or f32), rescaled whenever a new maximum appears.

use half::f16;
use rayon::prelude::*;

use super::{CpuBuf, KvStore};
use crate::backend::{AttnParams, AttnPlan};

/// An element type of the KV cache; the attention accumulator uses the same type, as llama.cpp's
/// CPU flash-attention kernel does.
pub trait KvElem: Copy + Send + Sync + 'static {
    const ZERO: Self;
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
    /// `dst[i] = src[i].to_f32()` (same values; the f16 version uses F16C when present).
    fn to_f32_slice(src: &[Self], dst: &mut [f32]) {
        dst.iter_mut().zip(src).for_each(|(d, &s)| *d = s.to_f32());
    }
    /// `dst[i] = Self::from_f32(src[i])` (same values and rounding).
    fn from_f32_slice(src: &[f32], dst: &mut [Self]) {
        dst.iter_mut()
            .zip(src)
            .for_each(|(d, &s)| *d = Self::from_f32(s));
    }
}

impl KvElem for f16 {
    const ZERO: Self = f16::ZERO;
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn to_f32_slice(src: &[Self], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        let n = src.len().min(dst.len());
        src[..n].convert_to_f32_slice(&mut dst[..n]);
    }
    fn from_f32_slice(src: &[f32], dst: &mut [Self]) {
        use half::slice::HalfFloatSliceExt;
        let n = src.len().min(dst.len());
        dst[..n].convert_from_f32_slice(&src[..n]);
    }
}

impl KvElem for f32 {
    const ZERO: Self = 0.0;
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
}

pub fn kv_store<T: KvElem>(
    kv: &mut KvStore<T>,
    layer: usize,
    k: &CpuBuf,
    v: &CpuBuf,
    slots: &[u32],
) {
    let d = kv.kv_dim;
    for (t, &slot) in slots.iter().enumerate() {
        let s = slot as usize * d;
        let (kd, vd) = (&mut kv.k[layer][s..s + d], &mut kv.v[layer][s..s + d]);
        kd.iter_mut()
            .zip(&k.data[t * d..(t + 1) * d])
            .for_each(|(o, &x)| *o = T::from_f32(x));
        vd.iter_mut()
            .zip(&v.data[t * d..(t + 1) * d])
            .for_each(|(o, &x)| *o = T::from_f32(x));
    }
}

/// Scratch of one attention task: the query in f16 and the f16 value accumulator, with f32
/// copies of them and of the current key and value rows (the arithmetic runs on these; every
/// f16 rounding of the scalar formulation is kept, so results are unchanged bit for bit).
struct Scratch<T> {
    q: Vec<T>,
    acc: Vec<T>,
    qf: Vec<f32>,
    accf: Vec<f32>,
    kf: Vec<f32>,
    vf: Vec<f32>,
    tmp: Vec<f32>,
}

pub fn attention<T: KvElem>(
    q: &CpuBuf,
    kv: &KvStore<T>,
    layer: usize,
    plan: &AttnPlan,
    p: AttnParams,
    out: &mut CpuBuf,
) {
    let hd = p.head_dim;
    let group = p.n_head / p.n_head_kv;
    let qd = p.n_head * hd;
    let kvd = kv.kv_dim;
    let (kc, vc) = (&kv.k[layer], &kv.v[layer]);
    let bs = plan.block_size;
    // One task per (token, head): out[t][h] = softmax(q . K^T * scale) V over visible keys.
    out.as_mut_slice()
        .par_chunks_mut(hd)
        .enumerate()
        .for_each_init(
            || Scratch {
                q: vec![T::ZERO; hd],
                acc: vec![T::ZERO; hd],
                qf: vec![0.0; hd],
                accf: vec![0.0; hd],
                kf: vec![0.0; hd],
                vf: vec![0.0; hd],
                tmp: vec![0.0; hd],
            },
            |sc, (idx, dst)| {
                let (t, h) = (idx / p.n_head, idx % p.n_head);
                let pos = plan.positions[t] as usize;
                let table = &plan.seqs[plan.seq_of[t] as usize];
                let lo = p.window.map_or(0, |w| (pos + 1).saturating_sub(w));
                let qh = &q.data[t * qd + h * hd..t * qd + (h + 1) * hd];
                T::from_f32_slice(qh, &mut sc.q);
                T::to_f32_slice(&sc.q, &mut sc.qf);
                sc.acc.iter_mut().for_each(|a| *a = T::ZERO);
                sc.accf.iter_mut().for_each(|a| *a = 0.0);
                let kh = (h / group) * hd;
                let (mut max, mut sum) = (f32::NEG_INFINITY, 0.0f32);
                for j in lo..=pos {
                    let base = (table[j / bs] as usize * bs + j % bs) * kvd + kh;
                    T::to_f32_slice(&kc[base..base + hd], &mut sc.kf);
                    let s = sc.qf.iter().zip(&sc.kf).map(|(&a, &b)| a * b).sum::<f32>() * p.scale;
                    let (mut ms, mut vs) = (1.0f32, 1.0f32);
                    if s > max {
                        let old = max;
                        max = s;
                        ms = (old - max).exp();
                        sc.tmp
                            .iter_mut()
                            .zip(&sc.accf)
                            .for_each(|(t, &a)| *t = a * ms);
                        T::from_f32_slice(&sc.tmp, &mut sc.acc);
                        T::to_f32_slice(&sc.acc, &mut sc.accf);
                    } else {
                        vs = (s - max).exp();
                    }
                    T::to_f32_slice(&vc[base..base + hd], &mut sc.vf);
                    sc.tmp
                        .iter_mut()
                        .zip(sc.accf.iter().zip(&sc.vf))
                        .for_each(|(t, (&a, &b))| *t = a + b * vs);
                    T::from_f32_slice(&sc.tmp, &mut sc.acc);
                    T::to_f32_slice(&sc.acc, &mut sc.accf);
                    sum = sum * ms + vs;
                }
                let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
                dst.iter_mut()
                    .zip(&sc.accf)
                    .for_each(|(d, &a)| *d = a * inv);
            },
        );
}
