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
}

impl KvElem for f16 {
    const ZERO: Self = f16::ZERO;
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
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

/// Scratch of one attention task: the query in f16 and the f16 value accumulator.
struct Scratch<T> {
    q: Vec<T>,
    acc: Vec<T>,
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
            },
            |sc, (idx, dst)| {
                let (t, h) = (idx / p.n_head, idx % p.n_head);
                let pos = plan.positions[t] as usize;
                let table = &plan.seqs[plan.seq_of[t] as usize];
                let lo = p.window.map_or(0, |w| (pos + 1).saturating_sub(w));
                let qh = &q.data[t * qd + h * hd..t * qd + (h + 1) * hd];
                sc.q.iter_mut()
                    .zip(qh)
                    .for_each(|(o, &x)| *o = T::from_f32(x));
                sc.acc.iter_mut().for_each(|a| *a = T::ZERO);
                let kh = (h / group) * hd;
                let (mut max, mut sum) = (f32::NEG_INFINITY, 0.0f32);
                for j in lo..=pos {
                    let base = (table[j / bs] as usize * bs + j % bs) * kvd + kh;
                    let k = &kc[base..base + hd];
                    let s =
                        sc.q.iter()
                            .zip(k)
                            .map(|(&a, &b)| a.to_f32() * b.to_f32())
                            .sum::<f32>()
                            * p.scale;
                    let (mut ms, mut vs) = (1.0f32, 1.0f32);
                    if s > max {
                        let old = max;
                        max = s;
                        ms = (old - max).exp();
                        sc.acc
                            .iter_mut()
                            .for_each(|a| *a = T::from_f32(a.to_f32() * ms));
                    } else {
                        vs = (s - max).exp();
                    }
                    let v = &vc[base..base + hd];
                    sc.acc
                        .iter_mut()
                        .zip(v)
                        .for_each(|(a, &b)| *a = T::from_f32(a.to_f32() + b.to_f32() * vs));
                    sum = sum * ms + vs;
                }
                let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
                dst.iter_mut()
                    .zip(&sc.acc)
                    .for_each(|(d, &a)| *d = a.to_f32() * inv);
            },
        );
}
