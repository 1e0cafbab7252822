//! Every gemm path (AVX-512 VNNI where the CPU has it, the typed fallback everywhere) against
//! the scalar vec-dot of the same quantized rows, on fresh random data (seed printed).

use super::*;
use crate::{dequantize_row, quantize_row};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn gaussian(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
            let u2: f64 = rng.gen();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32 * scale
        })
        .collect()
}

/// Scalar reference dot of one weight row with one activation row (raw bytes).
fn scalar_ref(ty: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    struct Ref<'a>(usize, &'a [u8], &'a [u8]);
    impl typed::ForType for Ref<'_> {
        type Out = f32;
        fn call<W: typed::Kernel>(self) -> f32 {
            match (typed::view::<W>(self.1), typed::view::<W::Act>(self.2)) {
                (Ok(w), Ok(a)) => W::SCALAR(self.0, &w, &a),
                _ => f32::NAN,
            }
        }
    }
    typed::for_type(ty, Ref(n, w, a)).unwrap_or(f32::NAN)
}

/// Random weight rows of `ty`: quantized Gaussian data, with Q8_0's quants then overwritten by
/// random bytes (so -128 occurs) and Q4/Q5 nibbles already covering 0..16 / 0..32.
fn weights(rng: &mut StdRng, ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let row_bytes = ty.row_bytes(cols as u64).unwrap_or(0) as usize;
    let mut w = vec![0u8; rows * row_bytes];
    for r in w.chunks_exact_mut(row_bytes) {
        let scale = rng.gen_range(0.01f32..2.0);
        let mut x = gaussian(rng, cols, scale);
        let off = rng.gen_range(-1.0f32..1.0) * scale;
        x.iter_mut().for_each(|v| *v += off);
        quantize_row(ty, &x, r).unwrap_or_else(|e| panic!("quantize {ty}: {e}"));
    }
    if ty == GgmlType::Q8_0 {
        for b in w.chunks_exact_mut(34) {
            rng.fill(&mut b[2..]);
        }
    }
    w
}

fn check_type(ty: GgmlType, isa: Isa, kernels: Kernels, rng: &mut StdRng, seed: u64) {
    let bs = ty.block_size();
    let shapes: &[usize] = if bs == 32 {
        &[32, 64, 96, 576, 1536]
    } else {
        &[256, 512, 1536]
    };
    for &cols in shapes {
        for n_tok in [1usize, 2, 3, 4, 5, 8, 9, 17, 37] {
            // Ragged against the 16-row tiles and the token groups.
            let rows = rng.gen_range(1..41);
            let w = weights(rng, ty, rows, cols);
            let xs = rng.gen_range(0.05f32..4.0);
            let x = gaussian(rng, n_tok * cols, xs);
            let mut acts = QActs::new();
            acts.prepare(ty, &x, cols)
                .unwrap_or_else(|e| panic!("prepare {ty}: {e}"));
            let mut got = vec![f32::NAN; rows * n_tok];
            gemm_isa(isa, ty, &w, rows, &acts, kernels, |r0, t, v| {
                for (i, &x) in v.iter().enumerate() {
                    assert!(
                        got[(r0 + i) * n_tok + t].is_nan(),
                        "{ty} output written twice"
                    );
                    got[(r0 + i) * n_tok + t] = x;
                }
            })
            .unwrap_or_else(|e| panic!("gemm {ty}: {e}"));
            let w_row = w.len() / rows;
            let act_ty = vec_dot_type(ty);
            let mut wf = vec![0.0f32; cols];
            let mut af = vec![0.0f32; cols];
            for r in 0..rows {
                let wr = &w[r * w_row..(r + 1) * w_row];
                dequantize_row(ty, wr, &mut wf).unwrap_or_else(|e| panic!("{e}"));
                for t in 0..n_tok {
                    let ar = &acts.raw[t * acts.row_bytes..(t + 1) * acts.row_bytes];
                    dequantize_row(act_ty, ar, &mut af).unwrap_or_else(|e| panic!("{e}"));
                    let mag: f32 = wf.iter().zip(&af).map(|(a, b)| (a * b).abs()).sum();
                    let want = scalar_ref(ty, cols, wr, ar);
                    let v = got[r * n_tok + t];
                    let tol = 2e-5 * mag + 1e-6;
                    assert!(
                        (v - want).abs() <= tol,
                        "{ty} {isa:?} {kernels:?} cols {cols} tok {t}/{n_tok} row {r}: {v} vs \
                         scalar {want} (tol {tol}, seed {seed})"
                    );
                }
            }
        }
    }
}

const TYPES: &[GgmlType] = &[
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Iq4Nl,
    GgmlType::Iq4Xs,
    GgmlType::F16,
    GgmlType::Bf16,
    GgmlType::F32,
];

/// Every level this CPU has, best first, saying which kernels it cannot test.
fn levels() -> Vec<Isa> {
    let levels: Vec<Isa> = LEVELS.into_iter().filter(|&isa| supported(isa)).collect();
    #[cfg(target_arch = "x86_64")]
    if !levels.contains(&Isa::Avx512Vnni) {
        eprintln!("NOTE: no AVX-512 VNNI on this CPU; its kernels are not tested");
    }
    #[cfg(target_arch = "aarch64")]
    if !levels.contains(&Isa::NeonDotprod) {
        eprintln!("NOTE: no dotprod on this CPU; the sdot kernels are not tested");
    }
    if levels == [Isa::Scalar] {
        eprintln!("NOTE: no SIMD level on this CPU; only the scalar path is tested");
    }
    levels
}

/// Every level this CPU has (AVX-512 VNNI, AVX2; NEON with and without sdot; scalar), each
/// kernel choice, against the scalar references.
#[test]
fn gemm_matches_scalar_all_levels() {
    let seed: u64 = rand::random();
    let mut rng = StdRng::seed_from_u64(seed);
    let levels = levels();
    for &ty in TYPES {
        for &isa in &levels {
            for kernels in [Kernels::Fastest, Kernels::BatchInvariant] {
                check_type(ty, isa, kernels, &mut rng, seed);
            }
        }
    }
}

#[test]
fn gemm_rejects_mismatched_inputs() {
    let mut acts = QActs::new();
    let x = vec![0.5f32; 64];
    assert!(acts.prepare(GgmlType::Q4_0, &x, 48).is_err());
    assert!(acts.prepare(GgmlType::Q4_0, &x, 32).is_ok());
    let w = vec![0u8; 18];
    let k = Kernels::Fastest;
    assert!(gemm(GgmlType::Q4_1, &w, 1, &acts, k, |_, _, _: &[f32]| {}).is_err());
    assert!(gemm(GgmlType::Q4_0, &w, 2, &acts, k, |_, _, _: &[f32]| {}).is_err());
    assert!(gemm(GgmlType::Q4_0, &w, 1, &acts, k, |_, _, _: &[f32]| {}).is_ok());
}

/// The Q4_1 kernel keeps llama.cpp's float order, so it equals the AVX2 vec-dot (`x86/`,
/// llama.cpp's order) bit for bit; the golden test against llama.cpp depends on it.
#[cfg(target_arch = "x86_64")]
#[test]
fn q4_1_bit_identical_to_avx2_vec_dot() {
    if detect_isa() != Isa::Avx512Vnni || !crate::x86::has_avx2() {
        eprintln!("SKIPPED: needs AVX-512 VNNI");
        return;
    }
    let seed: u64 = rand::random();
    let mut rng = StdRng::seed_from_u64(seed);
    for cols in [32usize, 96, 576, 1536] {
        let (rows, n_tok) = (rng.gen_range(1..41), rng.gen_range(1..12));
        let w = weights(&mut rng, GgmlType::Q4_1, rows, cols);
        let x = gaussian(&mut rng, n_tok * cols, 1.5);
        let mut acts = QActs::new();
        acts.prepare(GgmlType::Q4_1, &x, cols)
            .unwrap_or_else(|e| panic!("{e}"));
        let w_row = w.len() / rows;
        gemm(
            GgmlType::Q4_1,
            &w,
            rows,
            &acts,
            Kernels::Fastest,
            |r0, t, v| {
                for (i, &v) in v.iter().enumerate() {
                    let r = r0 + i;
                    let a = &acts.raw[t * acts.row_bytes..(t + 1) * acts.row_bytes];
                    let want =
                        crate::vec_dot(GgmlType::Q4_1, cols, &w[r * w_row..(r + 1) * w_row], a)
                            .unwrap_or(f32::NAN);
                    assert_eq!(
                        v.to_bits(),
                        want.to_bits(),
                        "cols {cols} row {r} tok {t} seed {seed}"
                    );
                }
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// The one-token kernels walk rows two at a time where that is faster; a row's bits must not
/// depend on that (nor on where the range of rows starts): every row of a ragged range equals
/// the same row computed alone, for both kernel choices.
#[test]
fn one_token_rows_do_not_depend_on_their_neighbours() {
    let seed: u64 = rand::random();
    let mut rng = StdRng::seed_from_u64(seed);
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q6K,
    ] {
        let cols = if ty.block_size() == 256 {
            512
        } else {
            32 * rng.gen_range(1..20)
        };
        let rows = rng.gen_range(2..40);
        let w = weights(&mut rng, ty, rows, cols);
        let scale = rng.gen_range(0.1f32..3.0);
        let x = gaussian(&mut rng, cols, scale);
        let w_row = w.len() / rows;
        for kernels in [Kernels::Fastest, Kernels::BatchInvariant] {
            let all = products(detect_isa(), ty, kernels, &w, rows, &x, cols);
            for (r, v) in all.iter().enumerate() {
                let alone = products(
                    detect_isa(),
                    ty,
                    kernels,
                    &w[r * w_row..(r + 1) * w_row],
                    1,
                    &x,
                    cols,
                );
                assert_eq!(
                    v.to_bits(),
                    alone[0].to_bits(),
                    "{ty} {kernels:?} cols {cols} row {r} of {rows} (seed {seed})"
                );
            }
        }
    }
}

/// Spreading the activation quantization over threads changes nothing.
#[test]
fn prepare_par_equals_prepare() {
    let seed: u64 = rand::random();
    let mut rng = StdRng::seed_from_u64(seed);
    // Calls the chunks in reverse order from two threads.
    let par = |n: usize, f: &(dyn Fn(usize) + Sync)| {
        std::thread::scope(|sc| {
            sc.spawn(|| (0..n).rev().step_by(2).for_each(f));
            sc.spawn(|| (0..n).rev().skip(1).step_by(2).for_each(f));
        })
    };
    for &ty in &[
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::Q5_0,
        GgmlType::Q4K,
        GgmlType::F16,
    ] {
        let cols = if ty.block_size() == 256 { 512 } else { 96 };
        for n_tok in [1usize, 3, 4, 9, 17] {
            let x = gaussian(&mut rng, n_tok * cols, 2.0);
            let (mut a, mut b) = (QActs::new(), QActs::new());
            a.prepare(ty, &x, cols).unwrap_or_else(|e| panic!("{e}"));
            b.prepare_par(ty, &x, cols, &par)
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(a.raw == b.raw && a.qs == b.qs && a.yoff == b.yoff && a.ycorr == b.ycorr);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(bits(&a.dexp) == bits(&b.dexp) && bits(&a.dy) == bits(&b.dy));
            assert!(bits(&a.s) == bits(&b.s), "{ty} n_tok {n_tok} seed {seed}");
        }
    }
}

/// `prepare` reuses its buffers when called again with the same input and weight type; any
/// other input (one element changed, a sign of zero, another type or width) is quantized anew.
#[test]
fn prepare_again_equals_a_fresh_prepare() {
    let seed: u64 = rand::random();
    let mut rng = StdRng::seed_from_u64(seed);
    let fresh = |ty: GgmlType, x: &[f32], cols: usize| {
        let mut a = QActs::new();
        a.prepare(ty, x, cols).unwrap_or_else(|e| panic!("{e}"));
        a
    };
    let same = |a: &QActs, b: &QActs| {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        a.n_tok == b.n_tok
            && a.cols == b.cols
            && a.wty == b.wty
            && a.raw == b.raw
            && a.qs == b.qs
            && a.yoff == b.yoff
            && a.ycorr == b.ycorr
            && bits(&a.dexp) == bits(&b.dexp)
            && bits(&a.dy) == bits(&b.dy)
            && bits(&a.s) == bits(&b.s)
    };
    let mut acts = QActs::new();
    for n_tok in [1usize, 3] {
        let cols = 512;
        let mut x = gaussian(&mut rng, n_tok * cols, 2.0);
        x[5] = 0.0;
        let mut steps: Vec<(GgmlType, Vec<f32>, usize)> = Vec::new();
        for ty in [
            GgmlType::Q5_0,
            GgmlType::Q5_0,
            GgmlType::Q8_0,
            GgmlType::Q4K,
        ] {
            steps.push((ty, x.clone(), cols));
        }
        let mut y = x.clone();
        let i = rng.gen_range(0..y.len());
        y[i] += 1.0;
        steps.push((GgmlType::Q4K, y.clone(), cols));
        y[5] = -0.0;
        steps.push((GgmlType::Q4K, y.clone(), cols));
        steps.push((GgmlType::Q4K, y.clone(), 256));
        steps.push((GgmlType::Q4_1, y, 256));
        for (ty, x, cols) in steps {
            acts.prepare(ty, &x, cols).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                same(&acts, &fresh(ty, &x, cols)),
                "{ty} cols {cols} n_tok {n_tok} (seed {seed})"
            );
        }
    }
}

/// `out[t * rows + r]`: every product of `w` with the `x.len() / cols` tokens of `x`.
fn products(
    isa: Isa,
    ty: GgmlType,
    kernels: Kernels,
    w: &[u8],
    rows: usize,
    x: &[f32],
    cols: usize,
) -> Vec<f32> {
    let n_tok = x.len() / cols;
    let mut acts = QActs::new();
    acts.prepare(ty, x, cols)
        .unwrap_or_else(|e| panic!("prepare {ty}: {e}"));
    let mut out = vec![f32::NAN; rows * n_tok];
    gemm_isa(isa, ty, w, rows, &acts, kernels, |r0, t, v| {
        out[t * rows + r0..t * rows + r0 + v.len()].copy_from_slice(v)
    })
    .unwrap_or_else(|e| panic!("gemm {ty}: {e}"));
    out
}

/// The weight types `gemm` takes (those with a vec-dot), found by trying each type of the table.
fn gemm_types() -> Vec<GgmlType> {
    let types: Vec<GgmlType> = crate::ALL_TYPES
        .iter()
        .copied()
        .filter(|&ty| {
            let cols = 256; // a whole number of blocks of every type
            let mut w = vec![0u8; ty.row_bytes(cols as u64).unwrap_or(0) as usize];
            let mut acts = QActs::new();
            quantize_row(ty, &vec![0.5; cols], &mut w).is_ok()
                && acts.prepare(ty, &vec![0.5; cols], cols).is_ok()
                && gemm(ty, &w, 1, &acts, Kernels::Fastest, |_, _, _| {}).is_ok()
        })
        .collect();
    // The table's vec-dot types, so that a regression in the probe cannot empty the test.
    for ty in TYPES {
        assert!(types.contains(ty), "gemm no longer takes {ty}");
    }
    types
}

/// With [`Kernels::BatchInvariant`] a token's products are bit for bit the same computed alone
/// and at a random place in batches of 2..40 tokens, for every weight type at every level (the
/// promise behind `--deterministic`). How often [`Kernels::Fastest`] differs is printed.
#[test]
fn batch_invariant_kernels_give_a_token_the_same_bits_in_any_batch() {
    let seed: u64 = rand::random();
    let mut rng = StdRng::seed_from_u64(seed);
    let levels = levels();
    for ty in gemm_types() {
        // 5 blocks of 32 (an odd count: the pairwise kernels' tail) or 2 super-blocks.
        let cols = if ty.block_size() == 256 { 512 } else { 160 };
        let rows = 37; // two full 16-row tiles and a ragged one
        let w = weights(&mut rng, ty, rows, cols);
        let scale = rng.gen_range(0.1f32..3.0);
        let x = gaussian(&mut rng, cols, scale);
        for &isa in &levels {
            let alone = products(isa, ty, Kernels::BatchInvariant, &w, rows, &x, cols);
            assert!(
                alone.iter().all(|v| v.is_finite()),
                "{ty} {isa:?}: {alone:?}"
            );
            let fast_alone = products(isa, ty, Kernels::Fastest, &w, rows, &x, cols);
            let mut fast_diffs = 0;
            for n_tok in 2..=40 {
                let at = rng.gen_range(0..n_tok);
                let scale = rng.gen_range(0.1f32..3.0);
                let mut batch = gaussian(&mut rng, n_tok * cols, scale);
                batch[at * cols..(at + 1) * cols].copy_from_slice(&x);
                let got = products(isa, ty, Kernels::BatchInvariant, &w, rows, &batch, cols);
                for (r, want) in alone.iter().enumerate() {
                    let v = got[at * rows + r];
                    assert_eq!(
                        v.to_bits(),
                        want.to_bits(),
                        "{ty} {isa:?} row {r}: {v} in a batch of {n_tok} (at {at}) vs {want} \
                         alone (seed {seed})"
                    );
                }
                let fast = products(isa, ty, Kernels::Fastest, &w, rows, &batch, cols);
                fast_diffs += (0..rows)
                    .filter(|&r| fast[at * rows + r].to_bits() != fast_alone[r].to_bits())
                    .count();
            }
            if fast_diffs > 0 {
                eprintln!(
                    "{ty} {isa:?}: Kernels::Fastest gave {fast_diffs} of {} products other bits \
                     in a batch than alone",
                    39 * rows
                );
            }
        }
    }
}
