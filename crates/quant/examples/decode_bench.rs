//! Single-thread timing of one decode token's matrix products on the default model's shapes
//! (SmolLM2-135M: 30 layers of q, k, v, o, gate, up, down, then the 49152-row Q8_0 head), with
//! every weight in its own memory, so each token streams the whole model from DRAM as real
//! decode does. Per-matrix-kind totals show which kernel the time goes to (prints numbers,
//! asserts nothing).
//!
//!     cargo run --release -p realizar-quant --example decode_bench -- [q4_1|q4_k_m|q8_0] [tokens]

use realizar_quant::{gemm, quantize_row, GgmlType, Kernels, QActs};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let file = args.get(1).map_or("q4_1", String::as_str);
    let n_tokens: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20);
    let kernels = if args.iter().any(|a| a == "--deterministic") {
        Kernels::BatchInvariant
    } else {
        Kernels::Fastest
    };
    use GgmlType::*;
    // Types of q, k, v, o, gate, up, down as the files hold them.
    let types = match file {
        "q4_1" => [Q4_1; 7],
        "q4_k_m" => [Q5_0, Q5_0, Q8_0, Q5_0, Q5_0, Q5_0, Q6K],
        _ => [Q8_0; 7],
    };
    let shapes = [
        ("q", 576, 576),
        ("k", 192, 576),
        ("v", 192, 576),
        ("o", 576, 576),
        ("gate", 1536, 576),
        ("up", 1536, 576),
        ("down", 576, 1536),
    ];
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    // Every matrix in its own buffer: 16 distinct quantized rows tiled over all rows.
    let mut mats: Vec<(&str, usize, usize, GgmlType, Vec<u8>)> = Vec::new();
    for _ in 0..30 {
        for (&(name, rows, cols), &ty) in shapes.iter().zip(&types) {
            mats.push((name, rows, cols, ty, Vec::new()));
        }
    }
    mats.push(("head", 49152, 576, Q8_0, Vec::new()));
    let mut bytes = 0;
    for (_, rows, cols, ty, w) in &mut mats {
        let rb = ty.row_bytes(*cols as u64).unwrap_or(0) as usize;
        let mut proto = vec![0u8; 16 * rb];
        for r in proto.chunks_exact_mut(rb) {
            let x: Vec<f32> = (0..*cols).map(|_| rnd()).collect();
            quantize_row(*ty, &x, r).unwrap_or_else(|e| panic!("{e}"));
        }
        *w = proto.iter().copied().cycle().take(*rows * rb).collect();
        bytes += w.len();
    }
    let xs: Vec<f32> = (0..1536).map(|_| rnd()).collect();
    let mut acts = QActs::new();
    let mut out = vec![0.0f32; 49152];
    let mut kinds: Vec<(&str, f64)> = Vec::new();
    let mut per_token = Vec::new();
    for tok in 0..n_tokens + 2 {
        let t_tok = Instant::now();
        for (name, rows, cols, ty, w) in &mats {
            let t = Instant::now();
            acts.prepare(*ty, &xs[..*cols], *cols)
                .unwrap_or_else(|e| panic!("{e}"));
            gemm(*ty, w, *rows, &acts, kernels, |r0, _, v: &[f32]| {
                out[r0..r0 + v.len()].copy_from_slice(v)
            })
            .unwrap_or_else(|e| panic!("{e}"));
            if tok >= 2 {
                let us = t.elapsed().as_secs_f64() * 1e6;
                match kinds.iter_mut().find(|(k, _)| k == name) {
                    Some((_, s)) => *s += us,
                    None => kinds.push((name, us)),
                }
            }
        }
        if tok >= 2 {
            per_token.push(t_tok.elapsed().as_secs_f64() * 1e3);
        }
    }
    per_token.sort_by(f64::total_cmp);
    println!(
        "{file} {kernels:?}: {:.1} MB per token, ms per token: min {:.3} median {:.3} ({:.2} GB/s at the median)",
        bytes as f64 / 1e6,
        per_token[0],
        per_token[per_token.len() / 2],
        bytes as f64 / per_token[per_token.len() / 2] / 1e6
    );
    for (k, us) in kinds {
        println!("  {k:5} {:8.1} us per token", us / n_tokens as f64);
    }
}
