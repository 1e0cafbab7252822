//! f16 copies of the quantized weights (`set_f16_weights`): matmuls of 8 tokens or more run
//! cuBLAS on the copy. The copy holds the values the prefill GEMM path dequantizes into its
//! tiles, so the product is that path's, bit for bit, at every token count; and it is close to
//! the CPU's exact product. Skips (saying why) without a CUDA device or cuBLAS.

mod common;

use common::{check_dot, normal, rng};
use realizar_cuda::{CudaBackend, CudaBuf, CudaWeight};
use realizar_model::backend::{Backend, WeightUse};
use realizar_quant::GgmlType;

fn upload(g: &CudaBackend, ty: GgmlType, rows: usize, cols: usize, data: &[u8]) -> CudaWeight {
    common::upload(g, ty, rows, cols, data, WeightUse::Matrix)
}

fn matmul(
    g: &CudaBackend,
    w: &CudaWeight,
    x: &[f32],
    ntok: usize,
    cols: usize,
    rows: usize,
) -> Vec<f32> {
    let gx = g.buf_from_host(ntok, cols, x).unwrap();
    let mut out = g
        .buf_from_host(ntok, rows, &vec![f32::NAN; ntok * rows])
        .unwrap();
    g.matmul(w, &gx, &mut out).unwrap();
    g.read(&out, ntok).unwrap()
}

#[test]
fn f16_weight_copies_give_the_gemm_paths_bits() {
    let Some(mut g) = common::gpu_with_cublas() else {
        return;
    };
    let mut rng = rng("f16_weights");
    let mut ok = true;
    g.set_f16_weight_min_tokens(8);
    for (ty, rows, cols) in [
        (GgmlType::Q4K, 300, 512),
        (GgmlType::Q6K, 64, 768),
        (GgmlType::Q8_0, 130, 256),
        (GgmlType::Q4_0, 96, 1024),
    ] {
        let w = normal(&mut rng, rows * cols, 1.0);
        let data = common::quantize(ty, &w, rows, cols);
        g.set_f16_weights(true);
        let with = upload(&g, ty, rows, cols, &data);
        let table = common::upload(&g, ty, rows, cols, &data, WeightUse::Embedding);
        g.set_f16_weights(false);
        let without = upload(&g, ty, rows, cols, &data);
        if !with.has_f16_copy() || without.has_f16_copy() || table.has_f16_copy() {
            println!(
                "FAIL {ty}: copies with {}, without {}, embedding {} (want true, false, false)",
                with.has_f16_copy(),
                without.has_f16_copy(),
                table.has_f16_copy()
            );
            ok = false;
        }
        for ntok in [8, 16, 64, 100] {
            let x = normal(&mut rng, ntok * cols, 1.0);
            let what = format!("{ty} {rows}x{cols} x {ntok} tok");
            // The copy, with the backend's routing (cuBLAS from 8 tokens, as set above):
            // no weight tile dequantized in the step.
            g.set_f16_weights(true);
            let tiles = g.weight_tile_dequants();
            let a = matmul(&g, &with, &x, ntok, cols, rows);
            let tiles_with = g.weight_tile_dequants() - tiles;
            g.set_f16_weights(false);
            if tiles_with != 0 {
                println!("FAIL {what}: {tiles_with} weight tiles dequantized with the copy");
                ok = false;
            }
            // The GEMM path with tiles dequantized in the step.
            g.set_gemm_min_tokens(1);
            g.set_mmq_tokens(0, 0);
            let b = matmul(&g, &without, &x, ntok, cols, rows);
            let (lo, hi) = realizar_cuda::DEFAULT_MMQ_TOKENS;
            g.set_mmq_tokens(lo, hi);
            g.set_gemm_min_tokens(realizar_cuda::DEFAULT_GEMM_MIN_TOKENS);
            let diff = a
                .iter()
                .zip(&b)
                .filter(|(p, q)| p.to_bits() != q.to_bits())
                .count();
            if diff == 0 && !a.iter().any(|v| v.is_nan()) {
                println!("PASS {what}: copy = GEMM tiles, bit for bit");
            } else {
                println!(
                    "FAIL {what}: {diff} of {} values differ from the GEMM path",
                    a.len()
                );
                ok = false;
            }
            // Against the exact product: f16 rounding of weights and activations.
            g.set_exact(true);
            let exact = matmul(&g, &without, &x, ntok, cols, rows);
            g.set_exact(false);
            ok &= check_dot(&format!("{what} copy vs exact"), &a, &exact, cols, 1e-2);
        }
    }
    assert!(ok, "the f16 weight copies differ from the GEMM path");
}

/// Matrices of one input with f16 copies (q/k/v, gate/up) go to cuBLAS together: those of equal
/// rows in one batched call. Each output is its own matmul's, to f32 rounding (the batched
/// kernels may sum in another order), and the batched call was made.
#[test]
fn grouped_copies_batch_equal_rows() {
    let Some(mut g) = common::gpu_with_cublas() else {
        return;
    };
    let mut rng = rng("f16_weights_grouped");
    let mut ok = true;
    g.set_f16_weights(true);
    g.set_f16_weight_min_tokens(8);
    let cols = 512;
    // q, k, v as in a Q4_K_M file (k and v batched across their types), and gate, up.
    let qkv = [
        (96, GgmlType::Q4K),
        (32, GgmlType::Q4K),
        (32, GgmlType::Q6K),
    ];
    let gate_up = [(300, GgmlType::Q4K), (300, GgmlType::Q4K)];
    for set in [&qkv[..], &gate_up] {
        let rows: Vec<usize> = set.iter().map(|&(r, _)| r).collect();
        let ws: Vec<CudaWeight> = set
            .iter()
            .map(|&(r, ty)| {
                let w = normal(&mut rng, r * cols, 1.0);
                upload(&g, ty, r, cols, &common::quantize(ty, &w, r, cols))
            })
            .collect();
        for ntok in [8, 64] {
            let x = normal(&mut rng, ntok * cols, 1.0);
            let gx = g.buf_from_host(ntok, cols, &x).unwrap();
            let mut outs: Vec<CudaBuf> = rows
                .iter()
                .map(|&r| g.buf_from_host(ntok, r, &vec![f32::NAN; ntok * r]).unwrap())
                .collect();
            let before = g.batched_gemms();
            let wrefs: Vec<&CudaWeight> = ws.iter().collect();
            let mut orefs: Vec<&mut CudaBuf> = outs.iter_mut().collect();
            g.matmul_many(&wrefs, &gx, &mut orefs).unwrap();
            let batched = g.batched_gemms() - before;
            if batched != 1 {
                println!("FAIL rows {rows:?} x {ntok} tok: {batched} batched calls (want 1)");
                ok = false;
            }
            for (i, w) in ws.iter().enumerate() {
                let got = g.read(&outs[i], ntok).unwrap();
                let one = matmul(&g, w, &x, ntok, cols, rows[i]);
                let what = format!("grouped rows {rows:?} matrix {i} x {ntok} tok vs its own");
                ok &= check_dot(&what, &got, &one, cols, 1e-5);
            }
        }
    }
    g.set_f16_weights(false);
    assert!(ok, "grouped matmuls on f16 copies differ from single ones");
}
