//! The chunked attention against the plain per-(token, head) loop over keys (the scalar
//! formulation the module documents, with ggml's summation order for the scores), bit for bit, on random data: several sequences with
//! shuffled block tables, ragged lengths, sliding windows, GQA groups, f16, f32, fp8 and q8_0
//! caches.

use super::*;
use half::f16;

/// A small xorshift generator (the model crate has no `rand`), seeded from the clock.
struct StdRng(u64);

impl StdRng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in `lo..hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo) as u64) as usize
    }
    fn float(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }
}

/// ggml's `ggml_vec_dot_f16` on AVX-512, for one key: 4 x 16 accumulators over whole steps of
/// 64 elements, reduced (0+2, 1+3, then the two, then lanes i+8, i+4, i+2, i+1), the rest in f64.
fn ggml_dot(q: &[f32], k: &[f32]) -> f32 {
    let np = q.len() / 64 * 64;
    let mut sum = [[0.0f32; 16]; 4];
    for i in (0..np).step_by(64) {
        for (j, acc) in sum.iter_mut().enumerate() {
            for (l, a) in acc.iter_mut().enumerate() {
                let e = i + 16 * j + l;
                *a = q[e].mul_add(k[e], *a);
            }
        }
    }
    let mut x = [0.0f32; 16];
    for l in 0..16 {
        x[l] = (sum[0][l] + sum[2][l]) + (sum[1][l] + sum[3][l]);
    }
    let mut width = 8;
    while width > 0 {
        for l in 0..width {
            x[l] += x[l + width];
        }
        width /= 2;
    }
    let mut total = x[0] as f64;
    for e in np..q.len() {
        total += (q[e] * k[e]) as f64;
    }
    total as f32
}

/// Values `base..base + n` of a layer's cells.
fn row<T: KvElem>(layer: &[T], base: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; n];
    T::load(T::cells(layer, base, n), &mut out);
    out
}

/// The scalar formulation: one (token, head) at a time, keys in order.
fn reference<T: KvElem>(
    q: &CpuBuf,
    kv: &KvStore<T>,
    layer: usize,
    plan: &AttnPlan,
    p: AttnParams,
) -> Vec<f32> {
    let hd = p.head_dim;
    let group = p.n_head / p.n_head_kv;
    let qd = p.n_head * hd;
    let kvd = kv.kv_dim;
    let (kc, vc) = (&kv.k[layer], &kv.v[layer]);
    let bs = plan.block_size;
    let n_tok = plan.positions.len();
    let mut out = vec![0.0f32; n_tok * qd];
    for t in 0..n_tok {
        for h in 0..p.n_head {
            let pos = plan.positions[t] as usize;
            let table = &plan.seqs[plan.seq_of[t] as usize];
            let lo = p.window.map_or(0, |w| (pos + 1).saturating_sub(w));
            let mut qf: Vec<f32> = q.data[t * qd + h * hd..t * qd + (h + 1) * hd].to_vec();
            T::round_query(&mut qf);
            let mut acc = vec![0.0f32; hd];
            let kh = (h / group) * hd;
            let (mut max, mut sum) = (f32::NEG_INFINITY, 0.0f32);
            for j in lo..=pos {
                let base = (table[j / bs] as usize * bs + j % bs) * kvd + kh;
                let kf = row(kc, base, hd);
                let s = ggml_dot(&qf, &kf) * p.scale;
                let (mut ms, mut vs) = (1.0f32, 1.0f32);
                if s > max {
                    let old = max;
                    max = s;
                    ms = (old - max).exp();
                    acc.iter_mut().for_each(|a| *a *= ms);
                    T::round_acc(&mut acc);
                } else {
                    vs = (s - max).exp();
                }
                acc.iter_mut()
                    .zip(&row(vc, base, hd))
                    .for_each(|(a, &b)| *a = b.mul_add(vs, *a));
                T::round_acc(&mut acc);
                sum = sum.mul_add(ms, vs);
            }
            let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
            for (i, a) in acc.iter().enumerate() {
                out[t * qd + h * hd + i] = a * inv;
            }
        }
    }
    out
}

/// llama.cpp's tiled formulation (steps of 64 tokens or more), one (token, head) at a time:
/// f32 query, tiles of 64 key positions from 0, scores as sequential fused chains, ggml's
/// exponential, probabilities summed 16 at a time in registers then in f64, values as fused
/// chains over each tile's keys.
fn reference_tiled<T: KvElem>(
    q: &CpuBuf,
    kv: &KvStore<T>,
    layer: usize,
    plan: &AttnPlan,
    p: AttnParams,
) -> Vec<f32> {
    let hd = p.head_dim;
    let group = p.n_head / p.n_head_kv;
    let qd = p.n_head * hd;
    let kvd = kv.kv_dim;
    let (kc, vc) = (&kv.k[layer], &kv.v[layer]);
    let bs = plan.block_size;
    let n_tok = plan.positions.len();
    let mut out = vec![0.0f32; n_tok * qd];
    for t in 0..n_tok {
        let pos = plan.positions[t] as usize;
        let table = &plan.seqs[plan.seq_of[t] as usize];
        let lo = p.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let visible = |j: usize| j >= lo && j <= pos;
        for h in 0..p.n_head {
            let qr = &q.data[t * qd + h * hd..t * qd + (h + 1) * hd];
            let kh = (h / group) * hd;
            let base = |j: usize| (table[j / bs] as usize * bs + j % bs) * kvd + kh;
            let (mut m, mut sum) = (f32::NEG_INFINITY, 0.0f32);
            let mut acc = vec![0.0f32; hd];
            for tile in (0..=pos).step_by(64) {
                let scores: Vec<f32> = (tile..tile + 64)
                    .map(|j| {
                        if !visible(j) {
                            return f32::NEG_INFINITY;
                        }
                        let k = row(kc, base(j), hd);
                        let dot = qr
                            .iter()
                            .zip(&k)
                            .fold(0.0f32, |a, (&x, &y)| x.mul_add(y, a));
                        dot * p.scale
                    })
                    .collect();
                let tmax = scores.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                if tmax == f32::NEG_INFINITY {
                    continue;
                }
                let m_new = m.max(tmax);
                if m_new > m {
                    let ms = (m - m_new).exp();
                    acc.iter_mut().for_each(|a| *a *= ms);
                    sum *= ms;
                }
                m = m_new;
                let probs: Vec<f32> = scores
                    .iter()
                    .map(|&x| super::super::ops::v_expf(x - m))
                    .collect();
                let mut total = 0.0f64;
                for g16 in probs.chunks(16) {
                    let mut x = g16.to_vec();
                    let mut w = 8;
                    while w > 0 {
                        for l in 0..w {
                            x[l] += x[l + w];
                        }
                        w /= 2;
                    }
                    total += x[0] as f64;
                }
                sum = (sum as f64 + total) as f32;
                for (l, &pr) in probs.iter().enumerate() {
                    if visible(tile + l) {
                        let v = row(vc, base(tile + l), hd);
                        for (a, &vv) in acc.iter_mut().zip(&v) {
                            *a = pr.mul_add(vv, *a);
                        }
                    }
                }
            }
            let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
            for (i, a) in acc.iter().enumerate() {
                out[t * qd + h * hd + i] = a * inv;
            }
        }
    }
    out
}

fn check<T: KvElem>(rng: &mut StdRng, seed: u64, pool: &Pool) {
    let hd = if T::ELEMS == 32 {
        [32usize, 64, 96, 128][rng.range(0, 4)]
    } else {
        [64usize, 20, 8, 128, 80][rng.range(0, 5)]
    };
    let (n_head, n_head_kv) = [(9, 3), (4, 4), (6, 2)][rng.range(0, 3)];
    let window = if rng.range(0, 10) < 3 {
        Some(rng.range(1, 40))
    } else {
        None
    };
    let bs = 16;
    let n_seqs = rng.range(1, 5);
    // Per sequence: context length, and how many of its last tokens are in the batch.
    let seqs: Vec<(usize, usize)> = (0..n_seqs)
        .map(|_| {
            let len = rng.range(1, 150);
            (len, rng.range(1, len.min(40) + 1))
        })
        .collect();
    let total_blocks: usize = seqs.iter().map(|&(len, _)| len.div_ceil(bs)).sum();
    let mut blocks: Vec<u32> = (0..total_blocks as u32).collect();
    for i in (1..blocks.len()).rev() {
        blocks.swap(i, rng.range(0, i + 1));
    }
    let kvd = n_head_kv * hd;
    let n_slots = total_blocks * bs;
    let mut kv = KvStore::<T>::new(2, n_slots, kvd);
    let layer = 1;
    for cells in [&mut kv.k[layer], &mut kv.v[layer]] {
        let vals: Vec<f32> = (0..cells.len() * T::ELEMS)
            .map(|_| rng.float(-2.0, 2.0))
            .collect();
        T::store(&vals, cells);
    }
    let mut plan = AttnPlan {
        positions: vec![],
        slots: vec![],
        seq_of: vec![],
        seqs: vec![],
        block_size: bs,
    };
    let mut next = 0;
    for (s, &(len, n_new)) in seqs.iter().enumerate() {
        let nb = len.div_ceil(bs);
        plan.seqs.push(blocks[next..next + nb].to_vec());
        next += nb;
        for pos in len - n_new..len {
            plan.positions.push(pos as u32);
            plan.seq_of.push(s as u32);
            plan.slots.push(0);
        }
    }
    let n_tok = plan.positions.len();
    let qd = n_head * hd;
    let q = CpuBuf {
        data: (0..n_tok * qd).map(|_| rng.float(-3.0, 3.0)).collect(),
        rows: n_tok,
        cols: qd,
        cap: n_tok,
    };
    let p = AttnParams {
        n_head,
        n_head_kv,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
        window,
    };
    let mut out = CpuBuf {
        data: vec![f32::NAN; n_tok * qd],
        rows: n_tok,
        cols: qd,
        cap: n_tok,
    };
    attention(&q, &kv, layer, &plan, p, &mut out, (pool, true));
    // From 64 tokens a step takes llama.cpp's tiled arithmetic.
    let want = if n_tok >= 64 && T::TILED {
        reference_tiled(&q, &kv, layer, &plan, p)
    } else {
        reference(&q, &kv, layer, &plan, p)
    };
    for (i, (&g, &w)) in out.data.iter().zip(&want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "element {i} (token {}, head {}): {g} vs {w}; hd {hd} heads {n_head}/{n_head_kv} \
             window {window:?} seqs {seqs:?} ({n_tok} tokens) seed {seed}",
            i / qd,
            (i % qd) / hd
        );
    }
}

#[test]
fn chunked_attention_matches_the_scalar_loop_bit_for_bit() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let mut rng = StdRng(seed);
    let pool = Pool::new(2);
    for _ in 0..30 {
        check::<f16>(&mut rng, seed, &pool);
        check::<f32>(&mut rng, seed, &pool);
        check::<super::super::fp8::Fp8E4M3>(&mut rng, seed, &pool);
        check::<super::super::kv::Q8Cell>(&mut rng, seed, &pool);
    }
}
