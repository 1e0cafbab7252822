//! Cross-type tests through the byte-row API: quantize/dequantize round trips within per-type
//! error bounds, vec-dot against the dot of dequantized rows, length checks. Inputs are fresh
//! random data each run (the seed is printed on failure); comparisons are written so that a NaN
//! fails them.

use crate::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn seeded() -> (StdRng, u64) {
    let seed: u64 = rand::random();
    (StdRng::seed_from_u64(seed), seed)
}

/// Standard normal samples (Box-Muller).
fn gaussian(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
            let u2: f64 = rng.gen();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

/// Random data with a random scale and offset, some blocks with outliers.
fn test_row(rng: &mut StdRng, n: usize) -> Vec<f32> {
    let scale = rng.gen_range(0.01f32..3.0);
    let offset = rng.gen_range(-0.5f32..0.5) * scale;
    let mut x: Vec<f32> = gaussian(rng, n)
        .into_iter()
        .map(|v| v * scale + offset)
        .collect();
    for _ in 0..n / 256 {
        let i = rng.gen_range(0..n);
        x[i] *= 6.0;
    }
    x
}

/// Types with a reference quantizer, and the bound on their relative RMS round-trip error
/// (`||deq(q(x)) - x|| / ||x||`) on [`test_row`] data.
const ROUND_TRIP: &[(GgmlType, f64)] = &[
    (GgmlType::F32, 0.0),
    (GgmlType::F16, 5e-4),
    (GgmlType::Bf16, 4e-3),
    (GgmlType::Q4_0, 0.22),
    (GgmlType::Q4_1, 0.15),
    (GgmlType::Q5_0, 0.12),
    (GgmlType::Q5_1, 0.075),
    (GgmlType::Q8_0, 0.014),
    (GgmlType::Q8_1, 0.014),
    (GgmlType::Q2K, 0.55),
    (GgmlType::Q3K, 0.3),
    (GgmlType::Q4K, 0.14),
    (GgmlType::Q5K, 0.07),
    (GgmlType::Q6K, 0.045),
    (GgmlType::Q8K, 0.04),
    (GgmlType::Iq4Nl, 0.2),
    (GgmlType::Iq4Xs, 0.2),
];

/// Weight types with a vec-dot.
const DOT_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Bf16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::Iq4Nl,
    GgmlType::Iq4Xs,
];

fn quantize(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let len = ty.row_bytes(x.len() as u64).expect("row bytes") as usize;
    let mut q = vec![0xA5u8; len];
    quantize_row(ty, x, &mut q).unwrap_or_else(|e| panic!("{ty}: {e}"));
    q
}

fn dequantize(ty: GgmlType, q: &[u8], n: usize) -> Vec<f32> {
    let mut y = vec![f32::NAN; n];
    dequantize_row(ty, q, &mut y).unwrap_or_else(|e| panic!("{ty}: {e}"));
    y
}

fn rel_rmse(x: &[f32], y: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&a, &b) in x.iter().zip(y) {
        num += ((a - b) as f64).powi(2);
        den += (a as f64).powi(2);
    }
    (num / den).sqrt()
}

#[test]
fn round_trip_error_within_bounds() {
    let (mut rng, seed) = seeded();
    for &(ty, bound) in ROUND_TRIP {
        for n in [256usize, 4096] {
            let x = test_row(&mut rng, n);
            let y = dequantize(ty, &quantize(ty, &x), n);
            let err = rel_rmse(&x, &y);
            assert!(
                err <= bound,
                "{ty}: relative RMSE {err} > {bound} (n {n}, seed {seed})"
            );
            assert!(y.iter().all(|v| v.is_finite()), "{ty}: non-finite output");
        }
    }
}

/// A constant row and a row of one nonzero value survive quantization (no division by zero,
/// sign handled).
#[test]
fn degenerate_rows() {
    for &(ty, _) in ROUND_TRIP {
        for x in [vec![0.75f32; 256], {
            let mut v = vec![0.0f32; 256];
            v[37] = -2.0;
            v
        }] {
            let y = dequantize(ty, &quantize(ty, &x), x.len());
            for (i, (&a, &b)) in x.iter().zip(&y).enumerate() {
                assert!((a - b).abs() <= 0.02, "{ty}: element {i}: {a} -> {b}");
            }
        }
        let zeros = dequantize(ty, &quantize(ty, &[0.0; 256]), 256);
        assert!(zeros.iter().all(|&v| v == 0.0), "{ty}: zeros");
    }
}

/// Non-finite inputs must not panic (the output is unspecified).
#[test]
fn non_finite_inputs_do_not_panic() {
    let (mut rng, _) = seeded();
    for &(ty, _) in ROUND_TRIP {
        let mut x = test_row(&mut rng, 256);
        x[3] = f32::NAN;
        x[100] = f32::INFINITY;
        x[200] = f32::NEG_INFINITY;
        let q = quantize(ty, &x);
        let mut y = vec![0.0; 256];
        dequantize_row(ty, &q, &mut y).expect("dequantize");
    }
}

/// For weights paired with Q8_1, the kernel uses the activation's stored `s` (= d * sum q,
/// rounded to f16) for the min term; the exact reference uses it too.
fn q8_1_min_correction(ty: GgmlType, w: &[u8], a: &[u8], ad: &[f32]) -> (f64, f64) {
    if vec_dot_type(ty) != GgmlType::Q8_1 {
        return (0.0, 0.0);
    }
    let (wb, ab) = (ty.type_size(), GgmlType::Q8_1.type_size());
    let (mut corr, mut mag) = (0.0f64, 0.0f64);
    for (i, (wblk, ablk)) in w.chunks_exact(wb).zip(a.chunks_exact(ab)).enumerate() {
        // Q4_1 / Q5_1: d, m; Q8_1: d, s.
        let m = Half([wblk[2], wblk[3]]).to_f32() as f64;
        let s = Half([ablk[2], ablk[3]]).to_f32() as f64;
        let sum: f64 = ad[i * 32..(i + 1) * 32].iter().map(|&v| v as f64).sum();
        corr += m * (s - sum);
        mag += (m * s).abs();
    }
    (corr, mag)
}

#[test]
fn vec_dot_matches_dequantized_dot() {
    let (mut rng, seed) = seeded();
    for &ty in DOT_TYPES {
        let at = vec_dot_type(ty);
        for n in [256usize, 2048] {
            let wx = test_row(&mut rng, n);
            let x = test_row(&mut rng, n);
            let w = quantize(ty, &wx);
            let wd = dequantize(ty, &w, n);
            let mut a = vec![0u8; at.row_bytes(n as u64).expect("bytes") as usize];
            quantize_activations(at, &x, &mut a).expect("activations");
            let ad = dequantize(at, &a, n);
            let got = vec_dot(ty, n, &w, &a).expect("vec_dot") as f64;

            let (corr, corr_mag) = q8_1_min_correction(ty, &w, &a, &ad);
            let exact: f64 = wd
                .iter()
                .zip(&ad)
                .map(|(&p, &q)| p as f64 * q as f64)
                .sum::<f64>()
                + corr;
            let mag: f64 = wd
                .iter()
                .zip(&ad)
                .map(|(&p, &q)| (p as f64 * q as f64).abs())
                .sum::<f64>()
                + corr_mag;
            let tol = 1e-5 * mag + 1e-30;
            assert!(
                (got - exact).abs() <= tol,
                "{ty}: vec_dot {got} vs dequantized dot {exact} (tol {tol}, n {n}, seed {seed})"
            );

            // Against the unquantized activations: only the activation quantization error.
            let plain: f64 = wd.iter().zip(&x).map(|(&p, &q)| p as f64 * q as f64).sum();
            let norm = (wd.iter().map(|&v| (v as f64).powi(2)).sum::<f64>()
                * x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>())
            .sqrt();
            let act_tol = 1e-2 * norm;
            assert!(
                (got - plain).abs() <= act_tol,
                "{ty}: vec_dot {got} vs float dot {plain} (tol {act_tol}, seed {seed})"
            );
        }
    }
}

#[test]
fn q8_1_sum_field() {
    let (mut rng, seed) = seeded();
    let x = test_row(&mut rng, 64);
    let q = quantize(GgmlType::Q8_1, &x);
    let blocks: &[BlockQ8_1] = as_blocks(&q).expect("blocks");
    for b in blocks {
        let sum: i32 = b.qs.iter().map(|&v| v as i32).sum();
        let want = sum as f32 * b.d.to_f32();
        let got = b.s.to_f32();
        assert!(
            (got - want).abs() <= 2e-3 * want.abs().max(b.d.to_f32()),
            "s {got} vs d*sum {want} (seed {seed})"
        );
    }
}

#[test]
fn lengths_are_checked() {
    let mut out = vec![0.0f32; 32];
    assert!(matches!(
        dequantize_row(GgmlType::Q4_1, &[0u8; 19], &mut out),
        Err(QuantError::Length { .. })
    ));
    assert!(matches!(
        dequantize_row(GgmlType::Q4_1, &[0u8; 20], &mut out[..31]),
        Err(QuantError::RaggedRow { .. })
    ));
    let mut q = vec![0u8; 33];
    assert!(quantize_row(GgmlType::Q8_0, &[1.0; 32], &mut q).is_err());
    assert!(vec_dot(GgmlType::Q4_1, 32, &[0u8; 20], &[0u8; 34]).is_err());
    assert!(vec_dot(GgmlType::Q4_1, 64, &[0u8; 20], &[0u8; 36]).is_err());
    assert!(quantize_activations(GgmlType::Q4_0, &[1.0; 32], &mut [0u8; 18]).is_err());
    assert!(matches!(
        vec_dot(GgmlType::I32, 1, &[0u8; 4], &[0u8; 4]),
        Err(QuantError::Unsupported { .. })
    ));
}

#[test]
fn blocks_view_any_alignment() {
    let bytes = [7u8; 20 * 3 + 1];
    for off in 0..2 {
        let view: &[BlockQ4_1] = as_blocks(&bytes[off..off + 60]).expect("view");
        assert_eq!(view.len(), 3);
    }
    assert!(as_blocks::<BlockQ4_1>(&bytes[..59]).is_err());
    // f32 has alignment 4: an odd offset is reported, not silently accepted.
    assert!(matches!(
        as_blocks::<f32>(&bytes[1..9]).and_then(|_| as_blocks::<f32>(&bytes[2..10])),
        Err(QuantError::Misaligned { .. })
    ));
    // vec_dot on F32 rows at odd offsets still works (copies).
    let mut w = [0u8; 4 * 8 + 1];
    let mut a = [0u8; 4 * 8 + 1];
    for i in 0..8 {
        w[1 + 4 * i..5 + 4 * i].copy_from_slice(&(i as f32).to_le_bytes());
        a[1 + 4 * i..5 + 4 * i].copy_from_slice(&2.0f32.to_le_bytes());
    }
    assert_eq!(vec_dot(GgmlType::F32, 8, &w[1..], &a[1..]), Ok(56.0));
}

#[test]
#[ignore]
fn print_round_trip_errors() {
    for &(ty, _) in ROUND_TRIP {
        let mut worst = 0.0f64;
        let mut total = 0.0f64;
        for s in 0..300u64 {
            let mut rng = StdRng::seed_from_u64(s);
            let x = test_row(&mut rng, 256);
            let y = dequantize(ty, &quantize(ty, &x), 256);
            let e = rel_rmse(&x, &y);
            worst = worst.max(e);
            total += e;
        }
        println!("{ty}: mean {:.5} worst {:.5}", total / 300.0, worst);
    }
}

/// The activation quantizers (llama.cpp's run-time rounding) and the reference file quantizers
/// agree on the scale and differ by at most one step in a quant.
#[test]
fn activation_and_reference_q8_agree() {
    let (mut rng, seed) = seeded();
    let x = test_row(&mut rng, 4096);
    for ty in [GgmlType::Q8_0, GgmlType::Q8_1] {
        let r = quantize(ty, &x);
        let mut a = vec![0u8; r.len()];
        quantize_activations(ty, &x, &mut a).expect("activations");
        let ts = ty.type_size();
        for (rb, ab) in r.chunks_exact(ts).zip(a.chunks_exact(ts)) {
            assert_eq!(rb[..2], ab[..2], "{ty}: scale differs (seed {seed})");
            let qoff = ts - 32;
            for (&p, &q) in rb[qoff..].iter().zip(&ab[qoff..]) {
                let diff = (p as i8 as i32 - q as i8 as i32).abs();
                assert!(diff <= 1, "{ty}: quants {p} vs {q} (seed {seed})");
            }
        }
    }
}
