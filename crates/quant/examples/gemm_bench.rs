//! Single-thread timing of `gemm` on the default model's matrix shapes for 1..64 tokens: the
//! cost of a batched step relative to one token, with the fastest kernels and with the
//! batch-invariant ones of `--deterministic` (prints numbers, asserts nothing).
//!
//!     cargo run --release -p realizar-quant --example gemm_bench

use realizar_quant::{gemm, quantize_row, GgmlType, Kernels, QActs};
use std::time::Instant;

fn main() {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let cases = [
        (GgmlType::Q4_1, 1536, 576),
        (GgmlType::Q5_0, 1536, 576),
        (GgmlType::Q8_0, 1536, 576),
        (GgmlType::Q8_0, 49152, 576), // the default model's output head
        (GgmlType::Q4K, 576, 1536),
        (GgmlType::Q6K, 576, 1536),
    ];
    println!("type  rows x cols  kernels         n_tok  us/step  us/token  step vs 1 token");
    for ((ty, rows, cols), kernels) in cases
        .into_iter()
        .flat_map(|c| [(c, Kernels::Fastest), (c, Kernels::BatchInvariant)])
    {
        let row_bytes = ty.row_bytes(cols as u64).unwrap_or(0) as usize;
        let mut w = vec![0u8; rows * row_bytes];
        let x: Vec<f32> = (0..cols).map(|_| rnd()).collect();
        for r in w.chunks_exact_mut(row_bytes) {
            quantize_row(ty, &x.iter().map(|v| v * rnd()).collect::<Vec<_>>(), r)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let mut one = 0.0;
        for n_tok in [1usize, 2, 3, 4, 8, 16, 64] {
            let xs: Vec<f32> = (0..n_tok * cols).map(|_| rnd()).collect();
            let mut acts = QActs::new();
            acts.prepare(ty, &xs, cols)
                .unwrap_or_else(|e| panic!("{e}"));
            let mut out = vec![0.0f32; rows * n_tok];
            let mut best = f64::MAX;
            for _ in 0..30 {
                let t = Instant::now();
                gemm(ty, &w, rows, &acts, kernels, |r0, t, v: &[f32]| {
                    out[t * rows + r0..t * rows + r0 + v.len()].copy_from_slice(v)
                })
                .unwrap_or_else(|e| panic!("{e}"));
                best = best.min(t.elapsed().as_secs_f64() * 1e6);
            }
            if n_tok == 1 {
                one = best;
            }
            println!(
                "{:5} {rows:5} x {cols:4} {:15} {n_tok:6} {best:8.1} {:9.1} {:8.2}",
                ty.name(),
                format!("{kernels:?}"),
                best / n_tok as f64,
                best / one
            );
        }
    }
}
