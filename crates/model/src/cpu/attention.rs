//! Causal grouped-query attention over the paged KV cache.
//!
//! Numerics follow llama.cpp's CPU flash-attention kernel, so that logits agree with it closely
//! on quantized models (which amplify tiny rounding differences): the query is rounded as the
//! cache type says (`KvElem::round_query`: to f16 for an f16 cache, through q8_0 blocks for a
//! q8_0 one), scores are f32 dot products, and the softmax runs online with the value
//! accumulator rounded as the type says (`round_acc`: f16 for f16, none for f32 and the 8-bit
//! types), rescaled whenever a new maximum appears.

use super::pool::Pool;
use super::{CpuBuf, KvStore};
use crate::backend::{AttnParams, AttnPlan};

pub use super::kv::{kv_store, KvElem};

/// Keys per chunk: scores are computed for this many keys at once, one key per lane.
const KEYS: usize = 16;
/// Most tokens of one sequence handled by one task (each chunk's keys are converted once per
/// task and used by all its tokens and the query heads sharing the KV head).
const TOK_RUN: usize = 16;

/// Scratch of one attention task, all in f32 (values of the cache's type where the scalar
/// formulation rounds to it).
#[derive(Default)]
pub(super) struct Scratch {
    /// The chunk's keys transposed: `kt[i * KEYS + l]` = element i of key l.
    pub(super) kt: Vec<f32>,
    /// The chunk's values: `vf[l * hd + i]`.
    pub(super) vf: Vec<f32>,
    /// Per (token, head) of the task: the query rounded to the cache type ...
    pub(super) q: Vec<f32>,
    /// ... the value accumulator (values of the cache type) ...
    pub(super) acc: Vec<f32>,
    /// ... and the running maximum and sum of the online softmax.
    pub(super) max: Vec<f32>,
    pub(super) sum: Vec<f32>,
    pub(super) tmp: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// A pointer that tasks write through at disjoint indices.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: used only to write disjoint elements from different tasks (see `attention`).
unsafe impl Send for SyncPtr {}
// SAFETY: as above.
unsafe impl Sync for SyncPtr {}

/// Causal attention for every (token, head) of `q` into `out`, in the arithmetic of llama.cpp's
/// CPU flash attention (`ggml_compute_forward_flash_attn_ext_f16_one_chunk`) so that results
/// equal llama.cpp's bit for bit: the query rounded to the cache type, each score summed as
/// `ggml_vec_dot_f16` sums on AVX-512 ([`dot_keys`]) times `scale`, then the online-softmax
/// step with fused updates and the value accumulator rounded to the cache type after each.
/// Steps of `TILE_Q` tokens or more take llama.cpp's tiled arithmetic instead
/// (`attention_tiled.rs`), unless `tiled_ok` is false (deterministic mode: one arithmetic for
/// every step size). What is vectorized is across independent chains: 16 keys' scores at once
/// and the accumulator's elements; the tests compare with a plain loop over keys. Tasks are
/// (run of up to 16 tokens of one sequence, KV head).
pub fn attention<T: KvElem>(
    q: &CpuBuf,
    kv: &KvStore<T>,
    layer: usize,
    plan: &AttnPlan,
    p: AttnParams,
    out: &mut CpuBuf,
    (pool, tiled_ok): (&Pool, bool),
) {
    let n_tok = plan.positions.len().min(q.rows);
    // Runs of consecutive tokens of one sequence, at most TOK_RUN long.
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut t0 = 0;
    while t0 < n_tok {
        let mut t1 = t0 + 1;
        while t1 < n_tok && t1 - t0 < TOK_RUN && plan.seq_of[t1] == plan.seq_of[t0] {
            t1 += 1;
        }
        runs.push((t0, t1));
        t0 = t1;
    }
    let n_kv = p.n_head_kv;
    let out_ptr = SyncPtr(out.data.as_mut_ptr());
    let (out_rows, out_cols) = (out.rows, out.cols);
    debug_assert!(out_rows >= n_tok && out_cols == p.n_head * p.head_dim);
    let ctx = Ctx {
        q,
        kv,
        layer,
        plan,
        p,
        tiled: tiled_ok && T::TILED && n_tok >= super::attention_tiled::TILE_Q,
    };
    pool.run(runs.len() * n_kv, &|task| {
        let (t0, t1) = runs[task / n_kv];
        let g = task % n_kv;
        SCRATCH.with(|sc| {
            let mut sc = sc.borrow_mut();
            let o = out_ptr;
            run_task(&ctx, (t0, t1), g, &mut sc, &mut |t, h, v| {
                // SAFETY: t < n_tok <= out.rows and h < n_head, so the row of `hd` elements at
                // t * n_head * hd + h * hd lies inside out.data; each (t, h) belongs to exactly
                // one task (tokens of one run, heads of one KV head), and `out` is not
                // otherwise touched until `run` returns.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(o.0.add(t * out_cols + h * v.len()), v.len())
                };
                dst.copy_from_slice(v);
            });
        });
    });
}

/// What every task of one attention call reads.
pub(super) struct Ctx<'a, T> {
    pub(super) q: &'a CpuBuf,
    pub(super) kv: &'a KvStore<T>,
    pub(super) layer: usize,
    pub(super) plan: &'a AttnPlan,
    pub(super) p: AttnParams,
    /// llama.cpp's tiled arithmetic (steps of `TILE_Q` tokens or more).
    pub(super) tiled: bool,
}

/// What a task (tokens of one sequence, the query heads of KV head `g`) reads.
pub(super) struct TaskView<'a, T> {
    pub(super) hd: usize,
    /// Query heads per KV head.
    pub(super) group: usize,
    /// Width of a query row.
    pub(super) qd: usize,
    /// The layer's keys and values.
    pub(super) kc: &'a [T],
    pub(super) vc: &'a [T],
    table: &'a [u32],
    block_size: usize,
    kv_dim: usize,
    /// Offset of KV head `g` in a cache row.
    kh: usize,
}

impl<T> TaskView<'_, T> {
    /// Where the K/V row of position `j` of the sequence starts, KV head included.
    #[inline(always)]
    pub(super) fn slot(&self, j: usize) -> usize {
        let bs = self.block_size;
        (self.table[j / bs] as usize * bs + j % bs) * self.kv_dim + self.kh
    }
}

impl<'a, T> Ctx<'a, T> {
    /// The view of the task whose tokens start at `t0`, for KV head `g`.
    #[inline(always)]
    pub(super) fn view(&self, t0: usize, g: usize) -> TaskView<'a, T> {
        let hd = self.p.head_dim;
        TaskView {
            hd,
            group: self.p.n_head / self.p.n_head_kv,
            qd: self.p.n_head * hd,
            kc: &self.kv.k[self.layer],
            vc: &self.kv.v[self.layer],
            table: &self.plan.seqs[self.plan.seq_of[t0] as usize],
            block_size: self.plan.block_size,
            kv_dim: self.kv.kv_dim,
            kh: g * hd,
        }
    }
}

/// Tokens `t0..t1` (one sequence) x the query heads of KV head `g`.
fn run_task<T: KvElem>(
    c: &Ctx<T>,
    (t0, t1): (usize, usize),
    g: usize,
    sc: &mut Scratch,
    emit: &mut dyn FnMut(usize, usize, &[f32]),
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked).
        unsafe { run_task_avx2(c, (t0, t1), g, sc, emit) };
        return;
    }
    run_task_body(c, (t0, t1), g, sc, emit);
}

#[cfg(target_arch = "x86_64")]
pub(super) fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// [`run_task_body`] compiled for AVX2 (the compiler vectorizes the independent lanes; Rust
/// never contracts a multiply and an add into an FMA, so the values are unchanged).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run_task_avx2<T: KvElem>(
    c: &Ctx<T>,
    (t0, t1): (usize, usize),
    g: usize,
    sc: &mut Scratch,
    emit: &mut dyn FnMut(usize, usize, &[f32]),
) {
    run_task_body(c, (t0, t1), g, sc, emit);
}

#[inline(always)]
fn run_task_body<T: KvElem>(
    c: &Ctx<T>,
    (t0, t1): (usize, usize),
    g: usize,
    sc: &mut Scratch,
    emit: &mut dyn FnMut(usize, usize, &[f32]),
) {
    if c.tiled {
        super::attention_tiled::run_tiled(c, (t0, t1), g, sc, emit);
        return;
    }
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
    let n_tok = t1 - t0;
    let n_q = n_tok * group;
    sc.kt.resize(hd * KEYS, 0.0);
    sc.vf.resize(KEYS * hd, 0.0);
    sc.q.resize(n_q * hd, 0.0);
    sc.acc.resize(n_q * hd, 0.0);
    sc.tmp.resize(hd.max(KEYS), 0.0);
    sc.max.clear();
    sc.max.resize(n_q, f32::NEG_INFINITY);
    sc.sum.clear();
    sc.sum.resize(n_q, 0.0);
    sc.acc.iter_mut().for_each(|a| *a = 0.0);
    // Queries rounded to the cache type; keys each token sees: lo..=pos.
    let mut k_lo = usize::MAX;
    let mut k_hi = 0;
    for t in t0..t1 {
        let pos = plan.positions[t] as usize;
        let lo = p.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        k_lo = k_lo.min(lo);
        k_hi = k_hi.max(pos + 1);
        for j in 0..group {
            let h = g * group + j;
            let i = (t - t0) * group + j;
            let src = &q.data[t * qd + h * hd..t * qd + (h + 1) * hd];
            let dst = &mut sc.q[i * hd..(i + 1) * hd];
            dst.copy_from_slice(src);
            T::round_query(dst);
        }
    }
    let mut c0 = k_lo;
    while c0 < k_hi {
        let c1 = (c0 + KEYS).min(k_hi);
        // The chunk's keys, transposed, and values, in f32 (unused lanes zero).
        for l in 0..KEYS {
            let j = c0 + l;
            let row = &mut sc.tmp[..hd];
            if j < c1 {
                let base = slot(j);
                T::load(T::cells(kc, base, hd), row);
                T::load(T::cells(vc, base, hd), &mut sc.vf[l * hd..(l + 1) * hd]);
            } else {
                row.iter_mut().for_each(|x| *x = 0.0);
            }
            for (i, &x) in row.iter().enumerate() {
                sc.kt[i * KEYS + l] = x;
            }
        }
        for t in t0..t1 {
            let pos = plan.positions[t] as usize;
            let lo = p.window.map_or(0, |w| (pos + 1).saturating_sub(w));
            let (j0, j1) = (c0.max(lo), c1.min(pos + 1));
            if j0 >= j1 {
                continue;
            }
            for jh in 0..group {
                let i = (t - t0) * group + jh;
                let s = dot_keys(&sc.q[i * hd..(i + 1) * hd], &sc.kt);
                let acc = &mut sc.acc[i * hd..(i + 1) * hd];
                let (mut max, mut sum) = (sc.max[i], sc.sum[i]);
                for j in j0..j1 {
                    let s = s[j - c0] * p.scale;
                    let (mut ms, mut vs) = (1.0f32, 1.0f32);
                    if s > max {
                        let old = max;
                        max = s;
                        ms = (old - max).exp();
                        acc.iter_mut().for_each(|a| *a *= ms);
                        T::round_acc(acc);
                    } else {
                        vs = (s - max).exp();
                    }
                    let v = &sc.vf[(j - c0) * hd..(j - c0 + 1) * hd];
                    acc.iter_mut()
                        .zip(v)
                        .for_each(|(a, &b)| *a = b.mul_add(vs, *a));
                    T::round_acc(acc);
                    sum = sum.mul_add(ms, vs);
                }
                sc.max[i] = max;
                sc.sum[i] = sum;
            }
        }
        c0 = c1;
    }
    finish(sc, (t0, t1), g, (group, hd), emit);
}

/// Divides each (token, head)'s accumulator by its softmax sum and emits it.
#[inline(always)]
pub(super) fn finish(
    sc: &mut Scratch,
    (t0, t1): (usize, usize),
    g: usize,
    (group, hd): (usize, usize),
    emit: &mut dyn FnMut(usize, usize, &[f32]),
) {
    for t in t0..t1 {
        for jh in 0..group {
            let i = (t - t0) * group + jh;
            let sum = sc.sum[i];
            let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
            let dst = &mut sc.tmp[..hd];
            dst.iter_mut()
                .zip(&sc.acc[i * hd..(i + 1) * hd])
                .for_each(|(d, &a)| *d = a * inv);
            emit(t, g * group + jh, dst);
        }
    }
}

/// The scores of a chunk's KEYS keys (`kt`, transposed) against query `q`, each summed as
/// ggml's `ggml_vec_dot_f16` does on AVX-512: element e goes to accumulator e % 64 by fused
/// multiply-adds, in steps of 64 elements; then accumulators 32.. and 48.. are added to 0.. and
/// 16.., those two halves added, and the 16 lanes reduced pairwise (i + 8, + 4, + 2, + 1); the
/// elements past the last whole step are added one by one in f64.
#[inline(always)]
pub(super) fn dot_keys(q: &[f32], kt: &[f32]) -> [f32; KEYS] {
    let n = q.len();
    let np = n & !63;
    // The fused chain of element class c (elements c, c + 64, ...), lanes across keys.
    let chain = |c: usize| {
        let mut a = [0.0f32; KEYS];
        for e in (c..np).step_by(64) {
            let k = &kt[e * KEYS..(e + 1) * KEYS];
            for l in 0..KEYS {
                a[l] = q[e].mul_add(k[l], a[l]);
            }
        }
        a
    };
    let mut x = [[0.0f32; KEYS]; 16];
    if np > 0 {
        for (i, xi) in x.iter_mut().enumerate() {
            let (c0, c1, c2, c3) = (chain(i), chain(16 + i), chain(32 + i), chain(48 + i));
            for l in 0..KEYS {
                xi[l] = (c0[l] + c2[l]) + (c1[l] + c3[l]);
            }
        }
        for width in [8, 4, 2, 1] {
            let (lo, hi) = x.split_at_mut(width);
            for (a, b) in lo.iter_mut().zip(hi.iter()) {
                a.iter_mut().zip(b).for_each(|(a, &b)| *a += b);
            }
        }
    }
    let mut out = x[0];
    if np < n {
        for (l, o) in out.iter_mut().enumerate() {
            let mut sum = *o as f64;
            for e in np..n {
                sum += (q[e] * kt[e * KEYS + l]) as f64;
            }
            *o = sum as f32;
        }
    }
    out
}

#[cfg(test)]
#[path = "attention_tests.rs"]
mod tests;
