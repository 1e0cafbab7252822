//! The fused kernels (add + rms_norm, rope + KV write, the 8-bit matmul input written by the
//! kernel before the matmul) against the same ops unfused on the GPU, bit for bit, and against
//! the CPU. Skips (saying why) when there is no CUDA device.

mod common;

use std::sync::Arc;

use common::{check, gpu, normal, rng, same, upload};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use realizar_cuda::{CudaBackend, CudaBuf, CudaWeight};
use realizar_model::backend::{AttnParams, AttnPlan, Backend, KvType, RopeParams, WeightUse};
use realizar_model::weights::TensorView;
use realizar_model::{Activation, CpuBackend, RopeLayout};
use realizar_quant::GgmlType;

fn bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A random `rows x cols` Q4_K matrix on the GPU.
fn q4k_weight(g: &CudaBackend, rng: &mut StdRng, rows: usize, cols: usize) -> CudaWeight {
    let w = normal(rng, rows * cols, 1.0);
    let data = common::quantize(GgmlType::Q4K, &w, rows, cols);
    upload(g, GgmlType::Q4K, rows, cols, &data, WeightUse::Matrix)
}

/// Causal attention without a window, scaled by 1/sqrt(hd).
fn causal(n_head: usize, n_head_kv: usize, hd: usize) -> AttnParams {
    AttnParams {
        n_head,
        n_head_kv,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
        window: None,
    }
}

/// The matmul `w x -> out`, and how many times it converted its input itself: none when the
/// kernel before it wrote the copy (fused), one when not.
fn matmul_counted(g: &CudaBackend, w: &CudaWeight, x: &CudaBuf, out: &mut CudaBuf) -> u64 {
    let before = g.input_conversions();
    g.matmul(w, x, out).unwrap();
    g.input_conversions() - before
}

/// Whether the fused run's matmul used the copy the kernel before it wrote (no conversion of
/// its own) and the unfused run's converted once.
fn copy_used(what: &str, fused: u64, unfused: u64) -> bool {
    if (fused, unfused) == (0, 1) {
        return true;
    }
    println!("FAIL {what}: the matmul converted its input {fused} times fused, {unfused} unfused (want 0 and 1)");
    false
}

/// Runs `f` with fusion on and off and returns both results.
fn both<T>(g: &mut CudaBackend, mut f: impl FnMut(&CudaBackend) -> T) -> (T, T) {
    g.set_fused(true);
    let a = f(g);
    g.set_fused(false);
    let b = f(g);
    g.set_fused(true);
    (a, b)
}

#[test]
fn add_rms_norm_fused_equals_unfused_and_cpu() {
    let Some(mut g) = gpu() else { return };
    let c = CpuBackend::new(Arc::new(()));
    let mut rng = rng("add_rms_norm");
    let mut ok = true;
    // One row of 4096 and 5120: the cluster norms on sm_90 and later.
    for (rows, cols) in [
        (1, 64),
        (5, 576),
        (3, 4096),
        (16, 2048),
        (1, 4096),
        (1, 5120),
    ] {
        let x = normal(&mut rng, rows * cols, 2.0);
        let y = normal(&mut rng, rows * cols, 1.0);
        let wv = normal(&mut rng, cols, 1.0);
        let wb = bytes(&wv);
        let how = WeightUse::Vector { offset: 0.0 };
        let gw = upload(&g, GgmlType::F32, 1, cols, &wb, how);
        let ((xa, oa), (xb, ob)) = both(&mut g, |g| {
            let mut gx = g.buf_from_host(rows, cols, &x).unwrap();
            let gy = g.buf_from_host(rows, cols, &y).unwrap();
            let mut go = g
                .buf_from_host(rows, cols, &vec![f32::NAN; rows * cols])
                .unwrap();
            g.add_rms_norm(&mut gx, &gy, &gw, 1e-5, &mut go);
            (g.read(&gx, rows).unwrap(), g.read(&go, rows).unwrap())
        });
        ok &= same(&format!("add_rms_norm {rows}x{cols}: sum"), &xa, &xb);
        ok &= same(&format!("add_rms_norm {rows}x{cols}: norm"), &oa, &ob);
        let tv = TensorView {
            name: "w",
            ty: GgmlType::F32,
            rows: 1,
            cols,
            data: &wb,
        };
        let cw = c.upload(&tv, how).unwrap();
        let mut cx = c.alloc(rows, cols).unwrap();
        cx.as_mut_slice().copy_from_slice(&x);
        let mut cy = c.alloc(rows, cols).unwrap();
        cy.as_mut_slice().copy_from_slice(&y);
        let mut co = c.alloc(rows, cols).unwrap();
        c.add_rms_norm(&mut cx, &cy, &cw, 1e-5, &mut co);
        ok &= check(
            &format!("add_rms_norm {rows}x{cols} vs CPU"),
            &oa,
            co.as_slice(),
            1e-5,
        );
    }
    assert!(ok, "fused add_rms_norm differs");
}

#[test]
fn rope_kv_store_fused_equals_unfused() {
    let Some(mut g) = gpu() else { return };
    let mut rng = rng("rope_kv_store");
    let mut ok = true;
    let bs = 16;
    for kv_type in [KvType::F16, KvType::F32, KvType::Fp8, KvType::Q8_0] {
        for (n_head, n_head_kv, hd, rope_dim, layout) in [
            (8, 2, 64, 64, RopeLayout::Normal),
            (4, 4, 128, 128, RopeLayout::Neox),
            (6, 2, 64, 32, RopeLayout::Neox),
        ] {
            let t = 37;
            let (qd, kvd) = (n_head * hd, n_head_kv * hd);
            let n_blocks = t / bs + 3;
            let mut table: Vec<u32> = (0..n_blocks as u32).collect();
            table.shuffle(&mut rng);
            let mut plan = AttnPlan {
                block_size: bs,
                ..AttnPlan::default()
            };
            plan.seqs.push(table.clone());
            for p in 0..t as u32 {
                plan.positions.push(p);
                plan.seq_of.push(0);
                plan.slots
                    .push(table[p as usize / bs] * bs as u32 + p % bs as u32);
            }
            let rope = RopeParams {
                theta: 500000.0,
                scale: 1.0,
                rope_dim,
                head_dim: hd,
                layout,
            };
            let attn = causal(n_head, n_head_kv, hd);
            let q = normal(&mut rng, t * qd, 1.0);
            let k = normal(&mut rng, t * kvd, 1.0);
            let v = normal(&mut rng, t * kvd, 1.0);
            let ((qa, ka, oa), (qb, kb, ob)) = both(&mut g, |g| {
                let mut kv = g.alloc_kv(2, n_blocks * bs, kvd, kv_type).unwrap();
                let mut gq = g.buf_from_host(t, qd, &q).unwrap();
                let mut gk = g.buf_from_host(t, kvd, &k).unwrap();
                let gv = g.buf_from_host(t, kvd, &v).unwrap();
                g.rope_kv_store(&mut gq, &mut gk, &gv, &mut kv, 1, &plan, rope);
                let mut go = g.buf_from_host(t, qd, &vec![f32::NAN; t * qd]).unwrap();
                g.attention(&gq, &kv, 1, &plan, attn, &mut go);
                (
                    g.read(&gq, t).unwrap(),
                    g.read(&gk, t).unwrap(),
                    g.read(&go, t).unwrap(),
                )
            });
            let what = format!("rope_kv_store {kv_type:?} heads {n_head}/{n_head_kv} hd {hd} rope {rope_dim} {layout:?}");
            ok &= same(&format!("{what}: q"), &qa, &qb);
            ok &= same(&format!("{what}: k"), &ka, &kb);
            ok &= same(&format!("{what}: attention over the cache"), &oa, &ob);
        }
    }
    // Deep positions: q and k rotated by the fused kernel as by the rope kernel.
    let (t, hd, heads) = (4, 128, 8);
    let mut plan = AttnPlan {
        block_size: bs,
        ..AttnPlan::default()
    };
    plan.seqs.push(vec![0]);
    for (i, p) in [3000u32, 12345, 70000, 131071].into_iter().enumerate() {
        plan.positions.push(p);
        plan.seq_of.push(0);
        plan.slots.push(i as u32);
    }
    let rope = RopeParams {
        theta: 10000.0,
        scale: 8.0,
        rope_dim: hd,
        head_dim: hd,
        layout: RopeLayout::Normal,
    };
    let q = normal(&mut rng, t * hd * heads, 1.0);
    let k = normal(&mut rng, t * hd * 2, 1.0);
    let ((qa, ka), (qb, kb)) = both(&mut g, |g| {
        let mut kv = g.alloc_kv(1, bs, hd * 2, KvType::F16).unwrap();
        let mut gq = g.buf_from_host(t, hd * heads, &q).unwrap();
        let mut gk = g.buf_from_host(t, hd * 2, &k).unwrap();
        let gv = g.buf_from_host(t, hd * 2, &k).unwrap();
        g.rope_kv_store(&mut gq, &mut gk, &gv, &mut kv, 0, &plan, rope);
        (g.read(&gq, t).unwrap(), g.read(&gk, t).unwrap())
    });
    ok &= same("rope_kv_store deep positions: q", &qa, &qb);
    ok &= same("rope_kv_store deep positions: k", &ka, &kb);
    assert!(ok, "fused rope_kv_store differs");
}

/// rms_norm, add_rms_norm and glu write the next matmul's 8-bit input (or, for the f16 mmq
/// kernels, its f16 input) themselves; the matmul's result is the same bits as with its own
/// conversion launch. 1 and 3 tokens take mmvq (8-bit), 16 and 40 the f16 mmq kernels, then
/// the 8-bit ones. Every buffer is allocated before the op: an allocation makes the recorded
/// copy stale (the matmul would convert again, and the test could not see a wrong copy).
#[test]
fn matmul_after_fused_input_equals_unfused() {
    let Some(mut g) = gpu() else { return };
    let mut rng = rng("q8_fusion");
    let mut ok = true;
    let (rows, cols) = (256, 2048);
    let gw = q4k_weight(&g, &mut rng, rows, cols);
    // The same weight with an f16 copy (cuBLAS from 40 tokens while copies are on).
    g.set_f16_weights(true);
    let gwc = q4k_weight(&g, &mut rng, rows, cols);
    g.set_f16_weights(false);
    let nv = normal(&mut rng, cols, 1.0);
    let nb = bytes(&nv);
    let gn = upload(
        &g,
        GgmlType::F32,
        1,
        cols,
        &nb,
        WeightUse::Vector { offset: 0.0 },
    );
    let (f16_lo, f16_hi) = realizar_cuda::DEFAULT_MMQ_F16_TOKENS;
    // The last field: through the weight's f16 copy (cuBLAS, a plain f16 input). 100 tokens
    // without it take cuBLAS on f16 tiles of the weight, also with a plain f16 input.
    for (ntok, f16, copy) in [
        (1, true, false),
        (3, true, false),
        (16, true, false),
        (40, true, false),
        (16, false, false),
        (40, false, false),
        (64, true, true),
        (100, true, false),
    ] {
        if f16 {
            g.set_mmq_f16_tokens(f16_lo, f16_hi);
        } else {
            g.set_mmq_f16_tokens(0, 0);
        }
        g.set_f16_weights(copy);
        let w = if copy { &gwc } else { &gw };
        let x = normal(&mut rng, ntok * cols, 1.0);
        let y = normal(&mut rng, ntok * cols, 1.0);
        let run = |g: &CudaBackend, which: usize| -> (Vec<f32>, u64) {
            let mut a = g.buf_from_host(ntok, cols, &x).unwrap();
            let b = g.buf_from_host(ntok, cols, &y).unwrap();
            let mut n: CudaBuf = g
                .buf_from_host(ntok, cols, &vec![0.0; ntok * cols])
                .unwrap();
            let mut out = g
                .buf_from_host(ntok, rows, &vec![f32::NAN; ntok * rows])
                .unwrap();
            match which {
                0 => g.rms_norm(&a, &gn, 1e-5, &mut n),
                1 => g.add_rms_norm(&mut a, &b, &gn, 1e-5, &mut n),
                _ => {
                    g.glu(&mut a, &b, Activation::Silu);
                    n = a;
                }
            }
            let conversions = matmul_counted(g, w, &n, &mut out);
            (g.read(&out, ntok).unwrap(), conversions)
        };
        for (which, name) in ["rms_norm", "add_rms_norm", "glu"].into_iter().enumerate() {
            let (a, b) = both(&mut g, |g| run(g, which));
            let what = format!(
                "{name} -> matmul Q4_K {rows}x{cols} x {ntok} tok (f16 mmq allowed: {f16}, f16 weight copy: {copy})"
            );
            ok &= same(&what, &a.0, &b.0);
            ok &= copy_used(&what, a.1, b.1);
        }
    }
    g.set_mmq_f16_tokens(f16_lo, f16_hi);
    g.set_f16_weights(false);
    assert!(ok, "a matmul after a fused input differs");
}

/// Gate, up and glu of one token in one kernel where the f32 kernels take the matmuls and the
/// down projection reads f32 activations (narrow rows as SmolLM2's, or exact mode): the gate
/// bits of the grouped matmul and `glu`, and the down matmul after them the same bits; the
/// fused kernel leaves `up` unwritten, which shows it ran. Twice in a row. Wider shapes keep
/// the matmuls and `glu` (which writes the down projection's 8-bit copy: no conversion of its
/// own).
#[test]
fn gate_up_glu_fused_equals_unfused() {
    let Some(mut g) = gpu() else { return };
    let mut rng = rng("gate_up_glu");
    let mut ok = true;
    // (type, cols, n_ff, activation, exact mode, one kernel)
    let cases = [
        (GgmlType::Q4_1, 576, 1536, Activation::Silu, false, true),
        (GgmlType::Q4_0, 576, 1536, Activation::GeluTanh, false, true),
        (GgmlType::Q5_0, 576, 1536, Activation::Silu, false, true),
        (GgmlType::Q5_1, 576, 1536, Activation::Silu, false, true),
        (GgmlType::Q8_0, 576, 1536, Activation::Silu, false, true),
        (GgmlType::Q4K, 768, 1536, Activation::GeluTanh, false, true),
        (GgmlType::Q5K, 512, 1024, Activation::Silu, false, true),
        (GgmlType::Q6K, 512, 1024, Activation::Silu, false, true),
        (GgmlType::Q4K, 4096, 14336, Activation::Silu, true, true),
        (GgmlType::Q4K, 4096, 14336, Activation::Silu, false, false),
        (GgmlType::Q4K, 768, 2048, Activation::Silu, false, false),
    ];
    for (ty, cols, n_ff, act, exact, one) in cases {
        g.set_exact(exact);
        let mut weight = |r: usize, c: usize| {
            let data = common::quantize(ty, &normal(&mut rng, r * c, 1.0), r, c);
            upload(&g, ty, r, c, &data, WeightUse::Matrix)
        };
        let (wg, wu) = (weight(n_ff, cols), weight(n_ff, cols));
        let wd = q4k_weight(&g, &mut rng, 64, n_ff);
        let x = normal(&mut rng, cols, 1.0);
        let run = |g: &CudaBackend| -> (Vec<f32>, Vec<f32>, u64, bool) {
            let gx = g.buf_from_host(1, cols, &x).unwrap();
            let mut gate = g.buf_from_host(1, n_ff, &vec![f32::NAN; n_ff]).unwrap();
            let mut up = g.buf_from_host(1, n_ff, &vec![f32::NAN; n_ff]).unwrap();
            let mut down = g.buf_from_host(1, 64, &vec![f32::NAN; 64]).unwrap();
            g.gate_up_glu(&wg, &wu, &gx, &mut gate, &mut up, act)
                .unwrap();
            let up_unwritten = g.read(&up, 1).unwrap().iter().all(|v| v.is_nan());
            let conversions = matmul_counted(g, &wd, &gate, &mut down);
            let (gate, down) = (g.read(&gate, 1).unwrap(), g.read(&down, 1).unwrap());
            (gate, down, conversions, up_unwritten)
        };
        let (a, b) = both(&mut g, run);
        let again = run(&g);
        let what = format!("gate_up_glu {ty:?} {n_ff}x{cols} {act:?} (exact: {exact})");
        ok &= same(&format!("{what}: gate"), &a.0, &b.0);
        ok &= same(&format!("{what}: down after it"), &a.1, &b.1);
        ok &= same(&format!("{what}: gate, run again"), &again.0, &a.0);
        ok &= same(&format!("{what}: down, run again"), &again.1, &a.1);
        if (a.3, again.3, b.3) != (one, one, false) {
            println!(
                "FAIL {what}: up unwritten fused {} / {}, unfused {} (one kernel expected: {one})",
                a.3, again.3, b.3
            );
            ok = false;
        }
        // The down projection reads an 8-bit input from 2048 columns (mmvq_min_cols).
        if !exact && n_ff >= 2048 {
            ok &= copy_used(&what, a.2, b.2);
        }
    }
    g.set_exact(false);
    assert!(ok, "fused gate/up/glu differs");
}

/// Attention writes the o projection's 8-bit (or f16) input itself, in the attention kernel or,
/// with split keys, in the merge: the matmul after it gives the same bits as with its own
/// conversion launch. One token at short and long contexts (one split, several), a few tokens
/// (mmvq), 16 and 40 (mmq, f16 and 8-bit), on the grouped kernels, the per-head one and the
/// flash kernel (40 tokens of an f16 cache: its f16 copy, and its 8-bit one with the f16 mmq
/// kernels off).
#[test]
fn matmul_after_attention_equals_unfused() {
    let Some(mut g) = gpu() else { return };
    let mut rng = rng("attention_q8");
    let mut ok = true;
    let (n_head, n_head_kv, hd, bs) = (16, 4, 128, 16);
    let (qd, kvd, rows) = (n_head * hd, n_head_kv * hd, 256);
    let gw = q4k_weight(&g, &mut rng, rows, qd);
    g.set_f16_weights(true);
    let gwc = q4k_weight(&g, &mut rng, rows, qd);
    g.set_f16_weights(false);
    let attn = causal(n_head, n_head_kv, hd);
    // f16 caches take the grouped kernels (the flash one from 32 tokens), f32 ones the
    // per-head `attention` kernel. The fourth field: the f16 mmq kernels allowed; the last: the
    // o weight has an f16 copy (cuBLAS on it, a plain f16 input; 100 tokens without it take
    // cuBLAS on f16 tiles, also a plain f16 input).
    let (f16_lo, f16_hi) = realizar_cuda::DEFAULT_MMQ_F16_TOKENS;
    for (t, ctx, kv_type, f16_mmq, copy) in [
        (1, 20, KvType::F16, true, false),
        (1, 700, KvType::F16, true, false),
        (3, 300, KvType::F16, true, false),
        (16, 40, KvType::F16, true, false),
        (40, 100, KvType::F16, true, false),
        (40, 100, KvType::F16, false, false),
        (64, 100, KvType::F16, true, true),
        (100, 150, KvType::F16, true, false),
        (1, 20, KvType::F32, true, false),
        (1, 700, KvType::F32, true, false),
        (16, 40, KvType::F32, true, false),
        (64, 100, KvType::F32, true, true),
    ] {
        if f16_mmq {
            g.set_mmq_f16_tokens(f16_lo, f16_hi);
        } else {
            g.set_mmq_f16_tokens(0, 0);
        }
        g.set_f16_weights(copy);
        let gw = if copy { &gwc } else { &gw };
        let n_blocks = ctx / bs + 1;
        let mut table: Vec<u32> = (0..n_blocks as u32).collect();
        table.shuffle(&mut rng);
        let slots: Vec<u32> = (0..ctx as u32)
            .map(|p| table[p as usize / bs] * bs as u32 + p % bs as u32)
            .collect();
        let mut plan = AttnPlan {
            block_size: bs,
            ..AttnPlan::default()
        };
        plan.seqs.push(table.clone());
        for p in (ctx - t) as u32..ctx as u32 {
            plan.positions.push(p);
            plan.seq_of.push(0);
            plan.slots.push(slots[p as usize]);
        }
        let k = normal(&mut rng, ctx * kvd, 1.0);
        let v = normal(&mut rng, ctx * kvd, 1.0);
        let q = normal(&mut rng, t * qd, 1.0);
        let (a, b) = both(&mut g, |g| {
            let mut kv = g.alloc_kv(1, n_blocks * bs, kvd, kv_type).unwrap();
            let gk = g.buf_from_host(ctx, kvd, &k).unwrap();
            let gv = g.buf_from_host(ctx, kvd, &v).unwrap();
            let gq = g.buf_from_host(t, qd, &q).unwrap();
            let mut go = g.buf_from_host(t, qd, &vec![f32::NAN; t * qd]).unwrap();
            let mut out = g.buf_from_host(t, rows, &vec![f32::NAN; t * rows]).unwrap();
            g.kv_store(&mut kv, 0, &gk, &gv, &slots);
            g.attention(&gq, &kv, 0, &plan, attn, &mut go);
            let conversions = matmul_counted(g, gw, &go, &mut out);
            (
                g.read(&go, t).unwrap(),
                g.read(&out, t).unwrap(),
                conversions,
            )
        });
        let what = format!(
            "attention, {kv_type:?} cache ({t} tokens at context {ctx}, f16 mmq {f16_mmq}, f16 weight copy {copy})"
        );
        ok &= same(&what, &a.0, &b.0);
        let what = format!("{what} -> matmul Q4_K {rows}x{qd}");
        ok &= same(&what, &a.1, &b.1);
        ok &= copy_used(&what, a.2, b.2);
    }
    g.set_mmq_f16_tokens(f16_lo, f16_hi);
    g.set_f16_weights(false);
    assert!(ok, "a matmul after attention differs");
}

#[test]
fn matmul_many_equals_one_matmul_per_weight() {
    // q/k/v and gate/up go to one launch (the mmvq, mmq and f32 kernels take up to three
    // matrices); every output must be the one its own matmul gives, bit for bit, for every
    // token count (cuBLAS takes the larger ones one by one) and for runs of mixed types. Under
    // mmq each matrix keeps the K split it has alone: the 14336-row matrix gets fewer splits
    // than the small ones of its group.
    let Some(g) = gpu() else { return };
    let mut rng = rng("matmul_many");
    let mut ok = true;
    const ROWS: [usize; 3] = [96, 33, 64];
    // (Q4_K, Q4_K, Q6_K), (Q5_K, Q6_K, Q6_K) and (Q4_K, Q5_K) take one launch for one token
    // (`mmvq_mix_*`). On sm_90 the streamed kernels take, for one token, the matrices of their
    // default types (Q4_0, Q4_K, Q6_K) at 2048 or 4096 columns, the mmvq kernels the rest of
    // their group (Q5_K here): an 8B-shaped q/k/v and a Q4_K + Q6_K pair among them.
    let sets: [(&[GgmlType], usize, [usize; 3]); 10] = [
        (
            &[GgmlType::Q4K, GgmlType::Q4K, GgmlType::Q6K],
            4096,
            [4096, 1024, 1024],
        ),
        (&[GgmlType::Q4K, GgmlType::Q6K], 4096, [1024, 4096, 0]),
        (&[GgmlType::Q4K, GgmlType::Q4K, GgmlType::Q4K], 2048, ROWS),
        (&[GgmlType::Q5K, GgmlType::Q6K, GgmlType::Q6K], 2048, ROWS),
        (&[GgmlType::Q4K, GgmlType::Q5K], 2048, ROWS),
        (
            &[GgmlType::Q4K, GgmlType::Q4K, GgmlType::Q4K],
            2048,
            [14336, 1024, 33],
        ),
        (&[GgmlType::Q4K, GgmlType::Q4K, GgmlType::Q6K], 4096, ROWS),
        (&[GgmlType::Q4_1, GgmlType::Q4_1], 576, ROWS),
        (
            &[GgmlType::Q8_0, GgmlType::Q8_0, GgmlType::Q8_0],
            2048,
            ROWS,
        ),
        (&[GgmlType::F16, GgmlType::F16], 256, ROWS),
    ];
    for (types, cols, rows) in sets {
        let ws: Vec<CudaWeight> = types
            .iter()
            .zip(rows)
            .map(|(&ty, r)| {
                let data = common::quantize(ty, &normal(&mut rng, r * cols, 1.0), r, cols);
                upload(&g, ty, r, cols, &data, WeightUse::Matrix)
            })
            .collect();
        for ntok in [1usize, 2, 3, 8, 20, 40] {
            let x = normal(&mut rng, ntok * cols, 1.0);
            let gx = g.buf_from_host(ntok, cols, &x).unwrap();
            let mut many: Vec<CudaBuf> = ws
                .iter()
                .zip(rows)
                .map(|(_, r)| g.buf_from_host(ntok, r, &vec![f32::NAN; ntok * r]).unwrap())
                .collect();
            let wrefs: Vec<&CudaWeight> = ws.iter().collect();
            let mut orefs: Vec<&mut CudaBuf> = many.iter_mut().collect();
            g.matmul_many(&wrefs, &gx, &mut orefs).unwrap();
            for (i, w) in ws.iter().enumerate() {
                let r = rows[i];
                let mut one = g.buf_from_host(ntok, r, &vec![f32::NAN; ntok * r]).unwrap();
                g.matmul(w, &gx, &mut one).unwrap();
                let what = format!("matmul_many {types:?} cols {cols} matrix {i} x {ntok} tok");
                ok &= same(
                    &what,
                    &g.read(&many[i], ntok).unwrap(),
                    &g.read(&one, ntok).unwrap(),
                );
            }
        }
    }
    assert!(ok, "grouped matmuls differ from single ones");
}

/// The cuBLAS path converts a matmul input to f16 once for the matrices that share it (q/k/v,
/// gate/up): the same bits as a conversion for each, one conversion for the group, and a new
/// one after a GEMM has written over the input (an F32 weight's GEMM, which converts nothing).
#[test]
fn gemm_input_converted_once() {
    let Some(g) = common::gpu_with_cublas() else {
        return;
    };
    let mut rng = rng("gemm_input");
    // More tokens than the mmq kernels take, so the matmuls go through cuBLAS.
    let (ntok, cols) = (100, 512);
    let rows = [256, 64, 64];
    let ws: Vec<CudaWeight> = rows
        .iter()
        .map(|&r| q4k_weight(&g, &mut rng, r, cols))
        .collect();
    let x = normal(&mut rng, ntok * cols, 1.0);
    let out = |r: usize| g.buf_from_host(ntok, r, &vec![f32::NAN; ntok * r]).unwrap();
    let mut ok = true;
    let mut alone = Vec::new();
    for (w, &r) in ws.iter().zip(&rows) {
        let gx = g.buf_from_host(ntok, cols, &x).unwrap();
        let mut o = out(r);
        ok &= matmul_counted(&g, w, &gx, &mut o) == 1;
        alone.push(g.read(&o, ntok).unwrap());
    }
    let mut gx = g.buf_from_host(ntok, cols, &x).unwrap();
    let mut outs: Vec<CudaBuf> = rows.iter().map(|&r| out(r)).collect();
    // Everything the second half uses is allocated now: an allocation moves the epoch, which
    // would retire the record without the GEMM's help.
    let y = normal(&mut rng, ntok * cols, 1.0);
    let wf = normal(&mut rng, cols * cols, 0.05);
    let gw = upload(
        &g,
        GgmlType::F32,
        cols,
        cols,
        &bytes(&wf),
        WeightUse::Matrix,
    );
    let gy = g.buf_from_host(ntok, cols, &y).unwrap();
    let mut o = out(rows[0]);
    let before = g.input_conversions();
    {
        let mut refs: Vec<&mut CudaBuf> = outs.iter_mut().collect();
        let wr: Vec<&CudaWeight> = ws.iter().collect();
        g.matmul_many(&wr, &gx, &mut refs).unwrap();
    }
    let n = g.input_conversions() - before;
    println!("q/k/v-like group: {n} conversions (want 1)");
    ok &= n == 1;
    for (i, o) in outs.iter().enumerate() {
        ok &= same(
            &format!("group matrix {i}"),
            &g.read(o, ntok).unwrap(),
            &alone[i],
        );
    }
    // A GEMM of F32 weights writes a new x in place of the old one; the next matmul of x
    // must convert it again and see the new values.
    g.matmul(&gw, &gy, &mut gx).unwrap();
    let n = matmul_counted(&g, &ws[0], &gx, &mut o);
    let new_x = g.read(&gx, ntok).unwrap();
    println!("after a GEMM wrote the input: {n} conversions (want 1)");
    ok &= n == 1;
    let fresh = g.buf_from_host(ntok, cols, &new_x).unwrap();
    let mut want = out(rows[0]);
    g.matmul(&ws[0], &fresh, &mut want).unwrap();
    ok &= same(
        "matmul after its input was rewritten",
        &g.read(&o, ntok).unwrap(),
        &g.read(&want, ntok).unwrap(),
    );
    assert!(
        ok,
        "the cuBLAS path's input conversion was reused wrongly or not at all"
    );
}
