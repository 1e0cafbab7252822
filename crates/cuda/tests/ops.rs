//! Every CUDA op against the CPU backend's op, on fresh random inputs at ragged sizes.
//! Skips (saying why) when there is no CUDA device.

mod common;

use std::sync::Arc;

use common::{check, gpu, normal, q8_1_round, reference_matmul, rng, store_random_kv};
use rand::seq::SliceRandom;
use rand::Rng;
use realizar_cuda::{CudaBackend, CudaBuf, SUPPORTED_TYPES};
use realizar_model::backend::{AttnParams, AttnPlan, Backend, KvType, RopeParams, WeightUse};
use realizar_model::cpu::CpuBuf;
use realizar_model::weights::TensorView;
use realizar_model::{Activation, CpuBackend, RopeLayout};
use realizar_quant::GgmlType;

fn cpu() -> CpuBackend {
    CpuBackend::new(Arc::new(()))
}

fn cpu_buf(b: &CpuBackend, rows: usize, cols: usize, data: &[f32]) -> CpuBuf {
    let mut buf = b.alloc(rows, cols).unwrap();
    buf.as_mut_slice().copy_from_slice(data);
    buf
}

/// A GPU buffer full of NaN, so an output element the kernel does not write fails the check.
fn poisoned(g: &CudaBackend, rows: usize, cols: usize) -> CudaBuf {
    g.buf_from_host(rows, cols, &vec![f32::NAN; rows * cols])
        .unwrap()
}

use common::quantize;

fn view<'a>(ty: GgmlType, rows: usize, cols: usize, data: &'a [u8]) -> TensorView<'a> {
    TensorView {
        name: "test",
        ty,
        rows,
        cols,
        data,
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn widths(ty: GgmlType) -> Vec<usize> {
    let qk = ty.block_size();
    if qk == 1 {
        vec![37, 64, 100, 161, 1000]
    } else {
        vec![qk, 3 * qk, 5 * qk]
    }
}

/// The same values rounded to f16 (bf16 for BF16 weights), as the GEMM path feeds cuBLAS.
fn half_round(ty: GgmlType, v: &[f32]) -> Vec<f32> {
    match ty {
        GgmlType::F32 => v.to_vec(),
        GgmlType::Bf16 => v
            .iter()
            .map(|&x| half::bf16::from_f32(x).to_f32())
            .collect(),
        _ => v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect(),
    }
}

#[test]
fn matmul_every_type_matches_cpu() {
    let Some(mut g) = gpu() else { return };
    let mut c = cpu();
    let mut rng = rng("matmul");
    let mut ok = true;
    eprintln!("cuBLAS loaded: {}", g.has_cublas());
    // The mmvq kernels at every width (by default narrow rows take the f32 kernels).
    g.set_mmvq_min_cols(0);
    for &ty in SUPPORTED_TYPES {
        for (i, cols) in widths(ty).into_iter().enumerate() {
            let (rows, ntok) = [(1, 1), (67, 3), (300, 9), (129, 17)][i % 4];
            for ntok in [1, 2, ntok, 40] {
                let w = normal(&mut rng, rows * cols, 1.0);
                let wq = quantize(ty, &w, rows, cols);
                let x = normal(&mut rng, ntok * cols, 1.0);
                let wv = view(ty, rows, cols, &wq);
                let (gw, cw) = (
                    g.upload(&wv, WeightUse::Matrix).unwrap(),
                    c.upload(&wv, WeightUse::Matrix).unwrap(),
                );
                let gx = g.buf_from_host(ntok, cols, &x).unwrap();
                let cx = cpu_buf(&c, ntok, cols, &x);
                let mut co = c.alloc(ntok, rows).unwrap();
                c.set_exact(true);
                c.matmul(&cw, &cx, &mut co).unwrap();
                let exact = co.as_slice().to_vec();
                let what = format!("matmul {ty} {rows}x{cols} x {ntok} tok");
                // 1. Exact mode against the CPU's exact mode.
                g.set_exact(true);
                let mut go = poisoned(&g, ntok, rows);
                g.matmul(&gw, &gx, &mut go).unwrap();
                let got = g.read(&go, ntok).unwrap();
                ok &= common::check_dot(
                    &format!("{what} exact vs CPU exact"),
                    &got,
                    &exact,
                    cols,
                    1e-4,
                );
                g.set_exact(false);
                // 2. mmvq (8-bit activations) against the same rounding done here, in f64,
                //    then the tensor-core mmq kernels on the same activations.
                g.set_gemm_min_tokens(usize::MAX);
                g.set_mmq_tokens(0, 0);
                let mut go = poisoned(&g, ntok, rows);
                g.matmul(&gw, &gx, &mut go).unwrap();
                let got = g.read(&go, ntok).unwrap();
                if ty.block_size() > 1 && g.has_mmq() {
                    g.set_mmq_tokens(1, usize::MAX);
                    ok &= check_mmq(&mut g, &gw, &gx, ty, &wq, rows, cols, &x, &what);
                }
                let (lo, hi) = realizar_cuda::DEFAULT_MMQ_TOKENS;
                g.set_mmq_tokens(lo, hi);
                if ty.block_size() > 1 {
                    let want = reference_matmul(ty, &wq, rows, cols, &q8_1_round(&x));
                    ok &= common::check_dot(
                        &format!("{what} mmvq vs q8_1 reference"),
                        &got,
                        &want,
                        cols,
                        1e-4,
                    );
                    // Against exact arithmetic: the 8-bit activation rounding (~5e-3 on these
                    // inputs); checked where there are enough outputs for a stable measure.
                    let e = common::rel_err(&got, &exact);
                    if rows * ntok >= 64 {
                        ok &= common::check_dot(
                            &format!("{what} mmvq vs CPU exact"),
                            &got,
                            &exact,
                            cols,
                            3e-2,
                        );
                    } else {
                        println!("INFO {what} mmvq vs CPU exact: rel_err {e:.3e}");
                    }
                } else {
                    ok &= common::check_dot(
                        &format!("{what} float decode vs CPU exact"),
                        &got,
                        &exact,
                        cols,
                        1e-4,
                    );
                }
                // 3. The GEMM path (when cuBLAS loads) against f16-rounded inputs.
                if g.has_cublas() {
                    g.set_gemm_min_tokens(1);
                    g.set_mmq_tokens(0, 0);
                    let mut go = poisoned(&g, ntok, rows);
                    g.matmul(&gw, &gx, &mut go).unwrap();
                    let got = g.read(&go, ntok).unwrap();
                    let want = half_reference(ty, &wq, rows, cols, &x);
                    ok &= common::check_dot(
                        &format!("{what} GEMM vs rounded reference"),
                        &got,
                        &want,
                        cols,
                        1e-4,
                    );
                    if rows * ntok >= 64 {
                        ok &= common::check_dot(
                            &format!("{what} GEMM vs CPU exact"),
                            &got,
                            &exact,
                            cols,
                            1e-2,
                        );
                    }
                }
                g.set_gemm_min_tokens(realizar_cuda::DEFAULT_GEMM_MIN_TOKENS);
                g.set_mmq_tokens(lo, hi);
            }
        }
    }
    assert!(ok, "some matmul results differ from the CPU");
}

/// The mmq kernels where the grid splits the K range, a row tile is partly past the last row,
/// and the tokens fill one or several 8/16/32/64-token tiles, partly.
#[test]
fn mmq_splits_and_token_tiles_match_reference() {
    let Some(mut g) = gpu() else { return };
    if !g.has_mmq() {
        eprintln!("SKIP: this device has no int8 mma.sync (sm_80 and later)");
        return;
    }
    let mut rng = rng("mmq");
    let mut ok = true;
    g.set_gemm_min_tokens(usize::MAX);
    g.set_mmq_tokens(1, usize::MAX);
    let rows = 200;
    // 2080 columns of a 32-element type: K splits of a block count that is no multiple of the
    // kernel's 4-block chunk (a partial chunk inside a split).
    let shapes = SUPPORTED_TYPES
        .iter()
        .filter(|t| t.block_size() > 1)
        .flat_map(|&t| {
            [
                (t, 4096),
                (t, if t.block_size() == 32 { 2080 } else { 2304 }),
            ]
        });
    for (ty, cols) in shapes {
        let w = normal(&mut rng, rows * cols, 1.0);
        let wq = quantize(ty, &w, rows, cols);
        let gw = g
            .upload(&view(ty, rows, cols, &wq), WeightUse::Matrix)
            .unwrap();
        for ntok in [5, 8, 16, 33, 64, 100] {
            let x = normal(&mut rng, ntok * cols, 1.0);
            let gx = g.buf_from_host(ntok, cols, &x).unwrap();
            let what = format!("mmq {ty} {rows}x{cols} x {ntok} tok");
            ok &= check_mmq(&mut g, &gw, &gx, ty, &wq, rows, cols, &x, &what);
        }
    }
    assert!(ok, "some mmq results differ from the reference");
}

/// The mmq kernels on 8-bit activations against the q8_1-rounded reference, and on f16
/// activations against the f16-rounded one (weights dequantized, then rounded to f16: the
/// kernel's s * q + m rounds once, from f16 s and m, so it may differ by an ulp) and against
/// exact arithmetic (measured: at most 8.6e-4 where there are 64 outputs or more). Leaves the
/// f16 kernels on their default token range.
#[allow(clippy::too_many_arguments)]
fn check_mmq(
    g: &mut CudaBackend,
    gw: &realizar_cuda::CudaWeight,
    gx: &CudaBuf,
    ty: GgmlType,
    wq: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    what: &str,
) -> bool {
    let ntok = x.len() / cols;
    let mut ok = true;
    let run = |g: &mut CudaBackend, f16: bool| {
        let (lo, hi) = if f16 { (1, usize::MAX) } else { (0, 0) };
        g.set_mmq_f16_tokens(lo, hi);
        let mut go = poisoned(g, ntok, rows);
        g.matmul(gw, gx, &mut go).unwrap();
        g.read(&go, ntok).unwrap()
    };
    let got = run(g, false);
    let want = reference_matmul(ty, wq, rows, cols, &q8_1_round(x));
    ok &= common::check_dot(
        &format!("{what} mmq 8-bit vs q8_1 reference"),
        &got,
        &want,
        cols,
        1e-4,
    );
    let got = run(g, true);
    let want = half_reference(ty, wq, rows, cols, x);
    let exact = reference_matmul(ty, wq, rows, cols, x);
    if rows * ntok >= 64 {
        ok &= common::check_dot(
            &format!("{what} mmq f16 vs f16 reference"),
            &got,
            &want,
            cols,
            2e-3,
        );
        ok &= common::check_dot(
            &format!("{what} mmq f16 vs exact"),
            &got,
            &exact,
            cols,
            3e-3,
        );
    } else {
        // A handful of dot products: one near zero makes the relative measure meaningless
        // (seen: 1 x 256 Q6_K, 1.0e-2), so these only must be close and are printed.
        ok &= common::check_dot(
            &format!("{what} mmq f16 vs exact (loose)"),
            &got,
            &exact,
            cols,
            0.1,
        );
        let e = common::rel_err(&got, &want);
        println!("INFO {what} mmq f16 vs f16 reference: rel_err {e:.3e}");
    }
    let (lo, hi) = realizar_cuda::DEFAULT_MMQ_F16_TOKENS;
    g.set_mmq_f16_tokens(lo, hi);
    ok
}

/// `reference_matmul` on weights and activations rounded to f16 (bf16 for BF16 weights), as
/// the GEMM path and the f16 mmq kernels feed the tensor cores.
fn half_reference(ty: GgmlType, wq: &[u8], rows: usize, cols: usize, x: &[f32]) -> Vec<f32> {
    let rb = ty.row_bytes(cols as u64).unwrap() as usize;
    let mut wd = vec![0.0f32; rows * cols];
    for r in 0..rows {
        realizar_quant::dequantize_row(ty, &wq[r * rb..(r + 1) * rb], &mut wd[r * cols..][..cols])
            .unwrap();
    }
    let wh = quantize(GgmlType::F32, &half_round(ty, &wd), rows, cols);
    reference_matmul(GgmlType::F32, &wh, rows, cols, &half_round(ty, x))
}

#[test]
fn embed_every_type_matches_cpu() {
    let Some(g) = gpu() else { return };
    let c = cpu();
    let mut rng = rng("embed");
    let mut ok = true;
    for &ty in SUPPORTED_TYPES {
        for cols in widths(ty) {
            let rows = 50;
            let table = quantize(ty, &normal(&mut rng, rows * cols, 1.0), rows, cols);
            let tv = view(ty, rows, cols, &table);
            let (gt, ct) = (
                g.upload(&tv, WeightUse::Embedding).unwrap(),
                c.upload(&tv, WeightUse::Embedding).unwrap(),
            );
            let ids: Vec<u32> = (0..13).map(|_| rng.gen_range(0..rows as u32)).collect();
            let mut go = poisoned(&g, ids.len(), cols);
            g.embed(&gt, &ids, 1.7, &mut go).unwrap();
            let mut co = c.alloc(ids.len(), cols).unwrap();
            c.embed(&ct, &ids, 1.7, &mut co).unwrap();
            let got = g.read(&go, ids.len()).unwrap();
            ok &= check(
                &format!("embed {ty} width {cols}"),
                &got,
                co.as_slice(),
                1e-6,
            );
            // An id outside the table is an error, not a read out of bounds.
            assert!(g.embed(&gt, &[rows as u32], 1.0, &mut go).is_err());
        }
    }
    assert!(ok, "some embeddings differ from the CPU");
}

/// Uploads an f32 vector to both backends.
fn vector(
    g: &CudaBackend,
    c: &CpuBackend,
    v: &[f32],
    offset: f32,
) -> (
    realizar_cuda::CudaWeight,
    realizar_model::cpu::CpuWeight,
    Vec<u8>,
) {
    let bytes = f32_bytes(v);
    let tv = view(GgmlType::F32, 1, v.len(), &bytes);
    let gw = g.upload(&tv, WeightUse::Vector { offset }).unwrap();
    let cw = c.upload(&tv, WeightUse::Vector { offset }).unwrap();
    (gw, cw, bytes)
}

#[test]
fn norms_bias_glu_add_softcap_gather_match_cpu() {
    let Some(g) = gpu() else { return };
    let c = cpu();
    let mut rng = rng("elementwise");
    let mut ok = true;
    for (rows, cols) in [(1, 64), (5, 577), (7, 2048)] {
        let x = normal(&mut rng, rows * cols, 2.0);
        let (gw, cw, _keep) = vector(&g, &c, &normal(&mut rng, cols, 1.0), 0.5);
        let gx = g.buf_from_host(rows, cols, &x).unwrap();
        let cx = cpu_buf(&c, rows, cols, &x);

        let mut go = poisoned(&g, rows, cols);
        let mut co = c.alloc(rows, cols).unwrap();
        g.rms_norm(&gx, &gw, 1e-5, &mut go);
        c.rms_norm(&cx, &cw, 1e-5, &mut co);
        ok &= check(
            &format!("rms_norm {rows}x{cols}"),
            &g.read(&go, rows).unwrap(),
            co.as_slice(),
            1e-5,
        );

        let mut gb = g.buf_from_host(rows, cols, &x).unwrap();
        let mut cb = cpu_buf(&c, rows, cols, &x);
        g.add_bias(&mut gb, &gw);
        c.add_bias(&mut cb, &cw);
        ok &= check(
            &format!("add_bias {rows}x{cols}"),
            &g.read(&gb, rows).unwrap(),
            cb.as_slice(),
            1e-7,
        );

        let y = normal(&mut rng, rows * cols, 3.0);
        for act in [Activation::Silu, Activation::GeluTanh] {
            let mut gg = g.buf_from_host(rows, cols, &x).unwrap();
            let mut cg = cpu_buf(&c, rows, cols, &x);
            let gu = g.buf_from_host(rows, cols, &y).unwrap();
            let cu = cpu_buf(&c, rows, cols, &y);
            g.glu(&mut gg, &gu, act);
            c.glu(&mut cg, &cu, act);
            ok &= check(
                &format!("glu {act:?} {rows}x{cols}"),
                &g.read(&gg, rows).unwrap(),
                cg.as_slice(),
                1e-6,
            );
        }

        let gy = g.buf_from_host(rows, cols, &y).unwrap();
        let cy = cpu_buf(&c, rows, cols, &y);
        let mut ga = g.buf_from_host(rows, cols, &x).unwrap();
        let mut ca = cpu_buf(&c, rows, cols, &x);
        g.add(&mut ga, &gy);
        c.add(&mut ca, &cy);
        ok &= check(
            &format!("add {rows}x{cols}"),
            &g.read(&ga, rows).unwrap(),
            ca.as_slice(),
            1e-7,
        );

        let big: Vec<f32> = x.iter().map(|v| v * 30.0).collect();
        let mut gs = g.buf_from_host(rows, cols, &big).unwrap();
        let mut cs = cpu_buf(&c, rows, cols, &big);
        g.softcap(&mut gs, 30.0);
        c.softcap(&mut cs, 30.0);
        ok &= check(
            &format!("softcap {rows}x{cols}"),
            &g.read(&gs, rows).unwrap(),
            cs.as_slice(),
            1e-6,
        );

        let pick: Vec<usize> = (0..rows.max(2)).map(|_| rng.gen_range(0..rows)).collect();
        let mut gp = poisoned(&g, pick.len(), cols);
        let mut cp = c.alloc(pick.len(), cols).unwrap();
        g.gather_rows(&gx, &pick, &mut gp);
        c.gather_rows(&cx, &pick, &mut cp);
        ok &= check(
            &format!("gather_rows {} of {rows}x{cols}", pick.len()),
            &g.read(&gp, pick.len()).unwrap(),
            cp.as_slice(),
            0.0,
        );
    }
    for (rows, heads, hd) in [(1, 9, 64), (3, 4, 16), (5, 2, 256), (2, 3, 80)] {
        let cols = heads * hd;
        let x = normal(&mut rng, rows * cols, 1.5);
        let (gw, cw, _keep) = vector(&g, &c, &normal(&mut rng, hd, 1.0), 1.0);
        let mut gx = g.buf_from_host(rows, cols, &x).unwrap();
        let mut cx = cpu_buf(&c, rows, cols, &x);
        g.rms_norm_heads(&mut gx, &gw, hd, 1e-6);
        c.rms_norm_heads(&mut cx, &cw, hd, 1e-6);
        ok &= check(
            &format!("rms_norm_heads {rows}x{heads}x{hd}"),
            &g.read(&gx, rows).unwrap(),
            cx.as_slice(),
            1e-5,
        );
    }
    assert!(g.synchronize().is_ok());
    assert!(ok, "some element-wise ops differ from the CPU");
}

#[test]
fn rope_matches_cpu() {
    let Some(g) = gpu() else { return };
    let c = cpu();
    let mut rng = rng("rope");
    let mut ok = true;
    for layout in [RopeLayout::Normal, RopeLayout::Neox] {
        for (rows, heads, hd, rope_dim, theta, scale) in [
            (1, 9, 64, 64, 10_000.0, 1.0),
            (7, 3, 64, 32, 1_000_000.0, 1.0),
            (5, 4, 128, 128, 500_000.0, 4.0),
            (3, 2, 16, 16, 10_000.0, 1.0),
        ] {
            let cols = heads * hd;
            let x = normal(&mut rng, rows * cols, 1.0);
            let pos: Vec<u32> = (0..rows).map(|_| rng.gen_range(0..8000)).collect();
            let p = RopeParams {
                theta,
                scale,
                rope_dim,
                head_dim: hd,
                layout,
            };
            let mut gx = g.buf_from_host(rows, cols, &x).unwrap();
            let mut cx = cpu_buf(&c, rows, cols, &x);
            g.rope(&mut gx, &pos, p);
            c.rope(&mut cx, &pos, p);
            let what = format!("rope {layout:?} {rows}x{heads}x{hd} dim {rope_dim} theta {theta}");
            let got = g.read(&gx, rows).unwrap();
            // The GPU takes its angles in f64, as the reference (H200: 3e-8 to 5e-8); the CPU
            // builds them by repeated f32 products as llama.cpp's CPU code does, 1e-5 to 1.4e-4
            // away at positions up to 8000.
            let want = rope_reference(&x, cols, &pos, p);
            ok &= check(&format!("{what} vs f64 reference"), &got, &want, 1e-5);
            ok &= check(&format!("{what} vs CPU"), &got, cx.as_slice(), 1e-3);
        }
    }
    assert!(ok, "rope differs from the reference");
}

/// Rope of every head of every row in f64 (angles and rotation), rounded to f32 at the end.
fn rope_reference(x: &[f32], cols: usize, pos: &[u32], p: RopeParams) -> Vec<f32> {
    let mut out = x.to_vec();
    let half = p.rope_dim / 2;
    for (t, &ps) in pos.iter().enumerate() {
        for h in 0..cols / p.head_dim {
            let base = t * cols + h * p.head_dim;
            for i in 0..half {
                let inv = (p.theta as f64).powf(-2.0 * i as f64 / p.rope_dim as f64);
                let ang = ps as f64 / p.scale as f64 * inv;
                let (a, b) = match p.layout {
                    RopeLayout::Normal => (2 * i, 2 * i + 1),
                    RopeLayout::Neox => (i, i + half),
                };
                let (x0, x1) = (x[base + a] as f64, x[base + b] as f64);
                out[base + a] = (x0 * ang.cos() - x1 * ang.sin()) as f32;
                out[base + b] = (x0 * ang.sin() + x1 * ang.cos()) as f32;
            }
        }
    }
    out
}

/// The f64 rope reference above against the CPU backend (runs without a GPU): the two agree
/// to the CPU's f32 angle arithmetic, so the reference is the rope the model means.
#[test]
fn rope_reference_agrees_with_the_cpu() {
    let c = cpu();
    let mut rng = rng("rope-reference");
    for layout in [RopeLayout::Normal, RopeLayout::Neox] {
        let (rows, heads, hd) = (5, 4, 128);
        let cols = heads * hd;
        let x = normal(&mut rng, rows * cols, 1.0);
        let pos: Vec<u32> = (0..rows).map(|_| rng.gen_range(0..8000)).collect();
        let p = RopeParams {
            theta: 500_000.0,
            scale: 4.0,
            rope_dim: hd,
            head_dim: hd,
            layout,
        };
        let mut cx = cpu_buf(&c, rows, cols, &x);
        c.rope(&mut cx, &pos, p);
        let want = rope_reference(&x, cols, &pos, p);
        let e = common::rel_err(cx.as_slice(), &want);
        println!("rope {layout:?}: CPU vs f64 reference rel_err {e:.3e}");
        assert!(e < 1e-3, "CPU rope vs f64 reference: {e:.3e}");
        // And the reference is not trivially the input.
        assert!(common::rel_err(&x, &want) > 0.1);
    }
}

/// One sequence of an attention test: its block table, and its query tokens' positions.
struct Seq {
    table: Vec<u32>,
    len: usize,
    queries: Vec<u32>,
}

#[test]
fn kv_store_and_attention_match_cpu() {
    let Some(mut g) = gpu() else { return };
    let c = cpu();
    let mut rng = rng("attention");
    let mut ok = true;
    let bs = 16;
    for kv_type in [KvType::F32, KvType::F16, KvType::Fp8, KvType::Q8_0] {
        for (n_head, n_head_kv, hd) in [
            (8, 2, 64),
            (9, 3, 64),
            (4, 4, 128),
            (4, 2, 16),
            (2, 1, 256),
            (32, 8, 128),
            (16, 2, 32),
            (8, 1, 256),
            (6, 2, 96),
        ] {
            if kv_type == KvType::Q8_0 && hd % 32 != 0 {
                continue; // refused: q8_0 caches hold whole groups of 32
            }
            // Three sequences: a prefill chunk from 0, a decode token deep in, a chunk in the
            // middle (2 attention splits); then one token and one decode 3000 deep (12 splits).
            for (window, lens) in [None, Some(8), Some(50)]
                .into_iter()
                .flat_map(|w| [(w, &[37usize, 301, 25][..]), (w, &[1, 3001][..])])
            {
                let kvd = n_head_kv * hd;
                let qd = n_head * hd;
                let n_blocks: usize = lens.iter().map(|l| l.div_ceil(bs)).sum::<usize>() + 3;
                let mut blocks: Vec<u32> = (0..n_blocks as u32).collect();
                blocks.shuffle(&mut rng);
                let mut seqs = Vec::new();
                let mut next = 0;
                for (i, &len) in lens.iter().enumerate() {
                    let nb = len.div_ceil(bs);
                    let queries: Vec<u32> = match i {
                        0 => (0..len as u32).collect(),
                        1 => vec![len as u32 - 1],
                        _ => (len as u32 - 5..len as u32).collect(),
                    };
                    seqs.push(Seq {
                        table: blocks[next..next + nb].to_vec(),
                        len,
                        queries,
                    });
                    next += nb;
                }
                let n_slots = n_blocks * bs;
                let mut gkv = g.alloc_kv(2, n_slots, kvd, kv_type).unwrap();
                let mut ckv = c.alloc_kv(2, n_slots, kvd, kv_type).unwrap();
                let layer = 1;
                // Fill every position of every sequence.
                for s in &seqs {
                    let slots: Vec<u32> = (0..s.len)
                        .map(|p| s.table[p / bs] * bs as u32 + (p % bs) as u32)
                        .collect();
                    store_random_kv(&g, &mut gkv, &c, &mut ckv, layer, &slots, kvd, &mut rng);
                }
                let mut plan = AttnPlan {
                    block_size: bs,
                    ..AttnPlan::default()
                };
                for (si, s) in seqs.iter().enumerate() {
                    plan.seqs.push(s.table.clone());
                    for &p in &s.queries {
                        plan.positions.push(p);
                        plan.seq_of.push(si as u32);
                        let slot = s.table[p as usize / bs] * bs as u32 + p % bs as u32;
                        plan.slots.push(slot);
                    }
                }
                let t = plan.positions.len();
                let q = normal(&mut rng, t * qd, 1.0);
                let p = AttnParams {
                    n_head,
                    n_head_kv,
                    head_dim: hd,
                    scale: 1.0 / (hd as f32).sqrt() * 2.0,
                    window,
                };
                let gq = g.buf_from_host(t, qd, &q).unwrap();
                let cq = cpu_buf(&c, t, qd, &q);
                let mut co = c.alloc(t, qd).unwrap();
                c.attention(&cq, &ckv, layer, &plan, p, &mut co);
                // The 8-bit caches hold the same bytes on both (the same quantizers): the
                // results differ by summation order only. An f16 cache also differs in the CPU's
                // f16 value accumulator.
                let tol = match kv_type {
                    KvType::F16 => 1e-2,
                    KvType::F32 => 1e-5,
                    _ => 1e-4,
                };
                // The flash kernel (f16 caches, head dims 64 and 128, the 43-token steps), the
                // grouped kernel (f16 and 8-bit caches of head dims 32..256) and the per-head one.
                for (flash, gqa) in [(true, true), (false, true), (false, false)] {
                    g.set_attention_flash(flash);
                    g.set_attention_gqa(gqa);
                    let mut go = poisoned(&g, t, qd);
                    g.attention(&gq, &gkv, layer, &plan, p, &mut go);
                    ok &= check(
                        &format!(
                            "attention {kv_type:?} flash {flash} gqa {gqa} {t} tok heads {n_head}/{n_head_kv} hd {hd} window {window:?}"
                        ),
                        &g.read(&go, t).unwrap(),
                        co.as_slice(),
                        tol,
                    );
                }
            }
        }
    }
    assert!(ok, "attention differs from the CPU");
}

#[test]
fn bad_index_arrays_are_errors_not_gpu_faults() {
    // Each case on a fresh backend: the first failure of a `()` op is sticky.
    let Some(g) = gpu() else { return };
    let mut kv = g.alloc_kv(1, 32, 64, KvType::F16).unwrap();
    let k = g.buf_from_host(1, 64, &[0.5; 64]).unwrap();
    g.kv_store(&mut kv, 0, &k, &k, &[32]);
    let err = g.read(&k, 1).unwrap_err().to_string();
    println!("PASS slot outside the cache: {err}");
    assert!(
        g.synchronize().is_err(),
        "the error stays until the backend is dropped"
    );
    drop(g);

    let Some(g) = gpu() else { return };
    let kv = g.alloc_kv(1, 32, 64, KvType::F16).unwrap();
    let q = g.buf_from_host(1, 64, &[0.5; 64]).unwrap();
    let mut out = g.alloc(1, 64).unwrap();
    let plan = AttnPlan {
        positions: vec![20],
        slots: vec![20],
        seq_of: vec![0],
        seqs: vec![vec![0]], // covers positions 0..16 only
        block_size: 16,
    };
    let p = AttnParams {
        n_head: 1,
        n_head_kv: 1,
        head_dim: 64,
        scale: 0.125,
        window: None,
    };
    g.attention(&q, &kv, 0, &plan, p, &mut out);
    let err = g.read(&out, 1).unwrap_err().to_string();
    println!("PASS position without a KV block: {err}");
    drop(g);

    let Some(g) = gpu() else { return };
    let x = g.buf_from_host(2, 8, &[1.0; 16]).unwrap();
    let mut o = g.alloc(2, 8).unwrap();
    g.gather_rows(&x, &[5], &mut o);
    let err = g.read(&o, 1).unwrap_err().to_string();
    println!("PASS gather of a missing row: {err}");
}
