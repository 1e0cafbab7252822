//! The flash-attention kernel of prefill steps (f16 caches, head dims 64 and 128) against the
//! CPU backend and against the grouped kernel it replaces, on steps that mix sequences: chunks
//! from position 0 and deep in a context, runs that straddle the kernel's token tiles, windows,
//! and query-head groups of 1 to 16. Skips (saying why) when there is no CUDA device.

mod common;

use std::sync::Arc;

use common::{check, gpu, normal, rng, store_random_kv};
use rand::seq::SliceRandom;
use realizar_cuda::CudaBuf;
use realizar_model::backend::{AttnParams, AttnPlan, Backend, KvType};
use realizar_model::CpuBackend;

/// One sequence of the step: its KV length and the positions it computes now (contiguous).
struct Seq {
    len: usize,
    from: usize,
}

/// `check`, and also the worst row (one head of one token, `hd` values) against `tol_row`: a
/// single wrong row among thousands hardly moves the whole-output measure.
fn check_rows(what: &str, got: &[f32], want: &[f32], hd: usize, tol: f64, tol_row: f64) -> bool {
    let mut ok = check(what, got, want, tol);
    let (worst, at) = got
        .chunks(hd)
        .zip(want.chunks(hd))
        .map(|(a, b)| common::rel_err(a, b))
        .enumerate()
        .fold((0.0f64, 0), |(w, i), (j, e)| {
            if e.is_nan() || e > w {
                (if e.is_nan() { f64::INFINITY } else { e }, j)
            } else {
                (w, i)
            }
        });
    if worst > tol_row {
        println!("FAIL {what}: row {at} rel_err {worst:.3e} (row tol {tol_row:.0e})");
        ok = false;
    }
    ok
}

#[test]
fn flash_attention_matches_cpu_and_the_grouped_kernel() {
    let Some(mut g) = gpu() else { return };
    if !g.has_mmq() {
        eprintln!("skipping: the flash kernel needs sm_80 or later");
        return;
    }
    let c = CpuBackend::new(Arc::new(()));
    let mut rng = rng("flash");
    let bs = 16;
    let mut ok = true;
    // (len, first query position): a prompt from 0, a chunk deep in a context (its tokens
    // straddle tiles), a short prompt, a chunk whose keys span many 64-key tiles; then one long
    // prompt; then 40 tokens of one sequence, whose o projection the f16 mmq kernels take (so
    // the kernel also writes the output's f16 copy).
    let steps: [&[Seq]; 3] = [
        &[
            Seq { len: 40, from: 0 },
            Seq {
                len: 300,
                from: 200,
            },
            Seq { len: 17, from: 0 },
            Seq {
                len: 130,
                from: 100,
            },
        ],
        &[Seq { len: 700, from: 0 }],
        &[Seq { len: 90, from: 50 }],
    ];
    for (n_head, n_head_kv, hd) in [
        (32, 8, 128),
        (8, 2, 64),
        (9, 3, 64),
        (4, 4, 128),
        (16, 1, 64),
        (16, 2, 128),
    ] {
        for window in [None, Some(50)] {
            for seqs in steps {
                let kvd = n_head_kv * hd;
                let qd = n_head * hd;
                let n_blocks: usize = seqs.iter().map(|s| s.len.div_ceil(bs)).sum::<usize>() + 2;
                let mut blocks: Vec<u32> = (0..n_blocks as u32).collect();
                blocks.shuffle(&mut rng);
                let mut gkv = g.alloc_kv(1, n_blocks * bs, kvd, KvType::F16).unwrap();
                let mut ckv = c.alloc_kv(1, n_blocks * bs, kvd, KvType::F16).unwrap();
                let mut plan = AttnPlan {
                    block_size: bs,
                    ..AttnPlan::default()
                };
                let mut next = 0;
                for (si, s) in seqs.iter().enumerate() {
                    let table = blocks[next..next + s.len.div_ceil(bs)].to_vec();
                    next += table.len();
                    let slot = |p: usize| table[p / bs] * bs as u32 + (p % bs) as u32;
                    let slots: Vec<u32> = (0..s.len).map(slot).collect();
                    store_random_kv(&g, &mut gkv, &c, &mut ckv, 0, &slots, kvd, &mut rng);
                    for p in s.from..s.len {
                        plan.positions.push(p as u32);
                        plan.seq_of.push(si as u32);
                        plan.slots.push(slot(p));
                    }
                    plan.seqs.push(table);
                }
                let t = plan.positions.len();
                let q = normal(&mut rng, t * qd, 1.0);
                let p = AttnParams {
                    n_head,
                    n_head_kv,
                    head_dim: hd,
                    scale: 2.0 / (hd as f32).sqrt(),
                    window,
                };
                let mut cq = c.alloc(t, qd).unwrap();
                cq.as_mut_slice().copy_from_slice(&q);
                let mut co = c.alloc(t, qd).unwrap();
                c.attention(&cq, &ckv, 0, &plan, p, &mut co);
                let gq = g.buf_from_host(t, qd, &q).unwrap();
                let run = |g: &mut realizar_cuda::CudaBackend, flash: bool| {
                    g.set_attention_flash(flash);
                    let mut go: CudaBuf = g.buf_from_host(t, qd, &vec![f32::NAN; t * qd]).unwrap();
                    let before = g.flash_attention_launches();
                    g.attention(&gq, &gkv, 0, &plan, p, &mut go);
                    let launched = g.flash_attention_launches() - before;
                    (g.read(&go, t).unwrap(), launched)
                };
                let (fl, n_flash) = run(&mut g, true);
                let (gr, n_other) = run(&mut g, false);
                let what = format!(
                    "{t} tok in {} seqs, heads {n_head}/{n_head_kv} hd {hd} window {window:?}",
                    seqs.len()
                );
                if (n_flash, n_other) != (1, 0) {
                    println!("FAIL {what}: flash launches {n_flash} on, {n_other} off (want 1, 0)");
                    ok = false;
                }
                // f16 cache and queries on both; the flash kernel also rounds the probabilities
                // to f16 for the P V product, and the CPU accumulates values in f16.
                ok &= check_rows(
                    &format!("flash vs CPU, {what}"),
                    &fl,
                    co.as_slice(),
                    hd,
                    1e-2,
                    3e-2,
                );
                ok &= check_rows(
                    &format!("flash vs grouped kernel, {what}"),
                    &fl,
                    &gr,
                    hd,
                    5e-3,
                    2e-2,
                );
            }
        }
    }
    g.set_attention_flash(true);
    assert!(ok, "the flash kernel differs");
}
