//! Prints the speed of the vec-dot kernels (scalar reference vs the run-time dispatched one) on
//! a matrix-vector product of SmolLM2-135M's FFN shape (576 rows of 1536, its down projection).
//!
//! `cargo run --release -p realizar-quant --example bench_dot`

use realizar_quant::*;
use std::time::Instant;

fn bench(name: &str, bytes_per_pass: usize, mut f: impl FnMut() -> f32) {
    let mut sink = 0.0f32;
    for _ in 0..20 {
        sink += f();
    }
    let reps = 400;
    let t = Instant::now();
    for _ in 0..reps {
        sink += f();
    }
    let per = t.elapsed().as_secs_f64() / reps as f64;
    println!(
        "{name:<28} {:>8.1} us/matvec {:>6.1} GB/s  (checksum {sink:.3e})",
        per * 1e6,
        bytes_per_pass as f64 / per / 1e9
    );
}

fn main() {
    let (rows, cols) = (576usize, 1536usize);
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let x: Vec<f32> = (0..cols)
        .map(|i| ((i * 104_729) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    for ty in [
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q6K,
        GgmlType::F16,
    ] {
        let rb = ty.row_bytes(cols as u64).expect("row") as usize;
        let mut wq = vec![0u8; rb * rows];
        for (src, dst) in w.chunks_exact(cols).zip(wq.chunks_exact_mut(rb)) {
            quantize_row(ty, src, dst).expect("quantize");
        }
        let at = vec_dot_type(ty);
        let mut aq = vec![0u8; at.row_bytes(cols as u64).expect("row") as usize];
        quantize_activations(at, &x, &mut aq).expect("act");
        bench(&format!("{ty} vec_dot (bytes API)"), wq.len(), || {
            wq.chunks_exact(rb)
                .map(|r| vec_dot(ty, cols, r, &aq).unwrap_or(0.0))
                .sum()
        });
        match ty {
            GgmlType::Q4_1 => {
                let wb: &[BlockQ4_1] = as_blocks(&wq).expect("blocks");
                let ab: &[BlockQ8_1] = as_blocks(&aq).expect("blocks");
                let nb = cols / 32;
                bench("Q4_1 typed scalar", wq.len(), || {
                    wb.chunks_exact(nb)
                        .map(|r| vec_dot_q4_1_q8_1_scalar(cols, r, ab))
                        .sum()
                });
                bench("Q4_1 typed dispatched", wq.len(), || {
                    wb.chunks_exact(nb)
                        .map(|r| vec_dot_q4_1_q8_1(cols, r, ab))
                        .sum()
                });
            }
            GgmlType::Q8_0 => {
                let wb: &[BlockQ8_0] = as_blocks(&wq).expect("blocks");
                let ab: &[BlockQ8_0] = as_blocks(&aq).expect("blocks");
                let nb = cols / 32;
                bench("Q8_0 typed scalar", wq.len(), || {
                    wb.chunks_exact(nb)
                        .map(|r| vec_dot_q8_0_q8_0_scalar(cols, r, ab))
                        .sum()
                });
                bench("Q8_0 typed dispatched", wq.len(), || {
                    wb.chunks_exact(nb)
                        .map(|r| vec_dot_q8_0_q8_0(cols, r, ab))
                        .sum()
                });
            }
            _ => {}
        }
    }
}
