//! The streamed one-token matmul kernels (`mmvq_bulk_*`, sm_90 and later) against the 8-bit
//! reference and against the 2-row mmvq kernels they replace. Skips (saying why) without a
//! CUDA device or on one without the bulk copies.

mod common;

use common::{check_dot, gpu, normal, q8_1_round, quantize, reference_matmul, rng, same, upload};
use realizar_cuda::{CudaBackend, CudaBuf, CudaWeight, SUPPORTED_TYPES};
use realizar_model::backend::{Backend, WeightUse};
use realizar_quant::GgmlType;

fn nan_buf(g: &CudaBackend, rows: usize) -> CudaBuf {
    g.buf_from_host(1, rows, &vec![f32::NAN; rows]).unwrap()
}

/// One token through a group of matrices of `ty`, `cols` wide: `check_mixed` with one type.
fn check_group(g: &mut CudaBackend, ty: GgmlType, cols: usize, rows: &[usize], what: &str) -> bool {
    check_mixed(g, &vec![ty; rows.len()], cols, rows, what)
}

/// One token through a group of matrices of types `tys`, `cols` wide, in one streamed launch:
/// the grouped launch against the reference, each matrix alone (the same bits: a row's order
/// does not depend on its group), and the 2-row mmvq kernels (the same products, another order
/// of the sum).
fn check_mixed(
    g: &mut CudaBackend,
    tys: &[GgmlType],
    cols: usize,
    rows: &[usize],
    what: &str,
) -> bool {
    let mut rng = rng(&format!("bulk {tys:?} {cols} {rows:?}"));
    let data: Vec<Vec<u8>> = rows
        .iter()
        .zip(tys)
        .map(|(&r, &ty)| quantize(ty, &normal(&mut rng, r * cols, 1.0), r, cols))
        .collect();
    let ws: Vec<CudaWeight> = rows
        .iter()
        .zip(tys)
        .zip(&data)
        .map(|((&r, &ty), d)| upload(g, ty, r, cols, d, WeightUse::Matrix))
        .collect();
    let x = normal(&mut rng, cols, 1.0);
    let gx = g.buf_from_host(1, cols, &x).unwrap();
    let run = |g: &CudaBackend| -> Vec<Vec<f32>> {
        let mut outs: Vec<CudaBuf> = rows.iter().map(|&r| nan_buf(g, r)).collect();
        let wrefs: Vec<&CudaWeight> = ws.iter().collect();
        let mut orefs: Vec<&mut CudaBuf> = outs.iter_mut().collect();
        g.matmul_many(&wrefs, &gx, &mut orefs).unwrap();
        outs.iter().map(|o| g.read(o, 1).unwrap()).collect()
    };
    let before = g.mmvq_bulk_launches();
    let got = run(g);
    let launched = g.mmvq_bulk_launches() - before;
    let mut ok = launched == 1;
    if !ok {
        println!("FAIL {what}: {launched} streamed launches for the group, want 1");
    }
    let xr = q8_1_round(&x);
    for (i, &r) in rows.iter().enumerate() {
        let w = format!("{what} matrix {i} ({r} rows)");
        let want = reference_matmul(tys[i], &data[i], r, cols, &xr);
        ok &= check_dot(
            &format!("{w} vs q8_1 reference"),
            &got[i],
            &want,
            cols,
            1e-4,
        );
        let mut one = nan_buf(g, r);
        g.matmul(&ws[i], &gx, &mut one).unwrap();
        ok &= same(&format!("{w} alone"), &g.read(&one, 1).unwrap(), &got[i]);
    }
    g.set_mmvq_bulk(false, true);
    let old = run(g);
    g.set_mmvq_bulk(true, true);
    for (i, &r) in rows.iter().enumerate() {
        let w = format!("{what} matrix {i} ({r} rows) vs 2-row mmvq");
        ok &= check_dot(&w, &got[i], &old[i], cols, 1e-5);
    }
    ok
}

#[test]
fn bulk_matmul_matches_reference() {
    let Some(mut g) = gpu() else { return };
    // Every type (by default Q4_0, Q4_K and Q6_K take them), and matrices of any size (the
    // default; `set_mmvq_bulk_fill` below tries a threshold).
    g.set_mmvq_bulk(true, true);
    g.set_mmvq_bulk_fill(0);
    if !g.mmvq_bulk() {
        eprintln!("skipping: the streamed kernels need sm_90 or later");
        return;
    }
    let mut ok = true;
    // Every type in a q/k/v-like group of 2048-wide rows (one slice a row), short last row
    // groups (33 and 1 rows).
    for &ty in SUPPORTED_TYPES.iter().filter(|t| t.is_quantized()) {
        ok &= check_group(&mut g, ty, 2048, &[300, 33, 1], &format!("{ty} 2048"));
    }
    // 8B's down projection (7 slices a row, one 16-row group a block on 132 SMs: 7 chunks
    // through 2 stages, so the stage ring wraps) and gate/up (2 slices), and a Q4_0 down.
    ok &= check_group(&mut g, GgmlType::Q6K, 14336, &[4096], "Q6_K down");
    ok &= check_group(&mut g, GgmlType::Q4K, 4096, &[14336, 14336], "Q4_K gate/up");
    ok &= check_group(&mut g, GgmlType::Q4_0, 14336, &[4096], "Q4_0 down");
    // Other shapes of the grid (a block's shared memory: the input's copy, then the stages of
    // `rows` rows): one block an SM with two stages; 16 consumer warps a block with three
    // stages.
    g.set_mmvq_bulk_shape(8, 1, 0);
    let rows = g.mmvq_bulk_rows();
    g.set_mmvq_bulk_shape(8, 1, 17920 + 2 * rows * 1152);
    ok &= check_group(&mut g, GgmlType::Q4K, 14336, &[2048, 100], "Q4_K 2 stages");
    g.set_mmvq_bulk_shape(16, 1, 0);
    let rows = g.mmvq_bulk_rows();
    g.set_mmvq_bulk_shape(16, 1, 5120 + 3 * rows * 1680);
    ok &= check_group(&mut g, GgmlType::Q6K, 4096, &[4096, 1023], "Q6_K 16 warps");
    ok &= check_group(&mut g, GgmlType::Q4_1, 2048, &[300, 33, 1], "Q4_1 16 warps");
    // Every type through several slices and a wrapping ring: one block an SM, about 2 row
    // groups a block of 4 slices each (8 chunks), 3 to 5 stages.
    g.set_mmvq_bulk_shape(8, 1, 0);
    let rows = g.mmvq_bulk_rows();
    g.set_mmvq_bulk_shape(8, 1, 10240 + 3 * rows * 2176);
    for &ty in SUPPORTED_TYPES.iter().filter(|t| t.is_quantized()) {
        let what = format!("{ty} 8192, ring");
        ok &= check_group(&mut g, ty, 8192, &[250 * rows], &what);
    }
    // The default shape, and a fill that only some matrices of a group reach alone: the
    // streamed kernels take those (8B gate: 85% of the slots at 80, k: 24%), mmvq the rest.
    g.set_mmvq_bulk_shape(8, 2, 96 * 1024);
    g.set_mmvq_bulk_fill(80);
    ok &= check_group(
        &mut g,
        GgmlType::Q4K,
        4096,
        &[14336, 1024],
        "Q4_K 14336 + 1024, fill",
    );
    g.set_mmvq_bulk_fill(0);
    // Two types in one launch (`mmvq_bulk_mix_*`): an 8B Q4_K_M's q, k and v (v in Q6_K, whose
    // chunks are larger, so a stage holds a Q6_K chunk), and a group with a short last row
    // group in each type.
    let qkv = [GgmlType::Q4K, GgmlType::Q4K, GgmlType::Q6K];
    ok &= check_mixed(&mut g, &qkv, 4096, &[4096, 1024, 1024], "Q4_K + Q6_K q/k/v");
    let (q4k, q6k) = (GgmlType::Q4K, GgmlType::Q6K);
    ok &= check_mixed(
        &mut g,
        &[q4k, q6k, q6k],
        8192,
        &[33, 300, 1],
        "Q4_K + Q6_K short",
    );
    // Only some matrices streamed (fill 80): q and v (4,096 rows each) in one mixed launch and
    // k (1,024: 24% of the slots) on mmvq; only q streamed and k, v on one `mmvq_mix` launch.
    g.set_mmvq_bulk_fill(80);
    let (qv, qkv_rows) = ([4096, 1024, 4096], [4096, 1024, 1024]);
    ok &= check_mixed(&mut g, &qkv, 4096, &qv, "Q4_K + Q6_K, k on mmvq");
    ok &= check_mixed(
        &mut g,
        &qkv,
        4096,
        &qkv_rows,
        "Q4_K + Q6_K, k and v on mmvq_mix",
    );
    g.set_mmvq_bulk_fill(0);
    // The 16-warp mixed kernel (a stage of 32 Q6_K rows: three of them).
    g.set_mmvq_bulk_shape(16, 1, 0);
    let rows = g.mmvq_bulk_rows();
    g.set_mmvq_bulk_shape(16, 1, 5120 + 3 * rows * 1680);
    ok &= check_mixed(&mut g, &qkv, 4096, &qkv_rows, "Q4_K + Q6_K q/k/v, 16 warps");
    g.set_mmvq_bulk_shape(8, 2, 96 * 1024);
    assert!(ok, "the streamed kernels differ");
}
