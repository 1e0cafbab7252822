//! Every AVX2 kernel against its scalar reference on fresh random data (seed printed on
//! failure), at block counts from 0 to past a hundred (odd ones included), plus inputs at the
//! edges of the integer ranges, where the results are exact.

use super::*;
use crate::fp::{Bf16, Half};
use crate::iq4::{BlockIq4Nl, BlockIq4Xs};
use crate::kquants::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K};
use crate::legacy::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1};
use crate::{dequantize_row, Block, GgmlType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A random finite scale.
fn half(rng: &mut StdRng) -> Half {
    Half::from_f32(rng.gen_range(-2.0f32..2.0))
}

/// Legacy and K-quant blocks whose scale `d` (and a min or `s`) open the block.
fn fix_d<T: Block>(b: &mut T, r: &mut StdRng) {
    bytemuck::bytes_of_mut(b)[..2].copy_from_slice(&half(r).0);
}

fn fix_dm<T: Block>(b: &mut T, r: &mut StdRng) {
    fix_d(b, r);
    bytemuck::bytes_of_mut(b)[2..4].copy_from_slice(&half(r).0);
}

/// Q8_K as `quantize_q8_k` leaves it: a finite scale and `bsums` the sums of the quants.
fn fix_q8_k(b: &mut BlockQ8K, r: &mut StdRng) {
    b.d = r.gen_range(-0.05f32..0.05).to_le_bytes();
    q8_k_sums(b);
}

fn q8_k_sums(b: &mut BlockQ8K) {
    for (s, q) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
        *s = (q.iter().map(|&v| v as i16).sum::<i16>()).to_le_bytes();
    }
}

/// A random float element (as f32 in -4..4, rounded to the type).
fn fix_float<T: Block>(x: &mut T, r: &mut StdRng) {
    let v = r.gen_range(-4.0f32..4.0);
    let b = bytemuck::bytes_of_mut(x);
    match b.len() {
        4 => b.copy_from_slice(&v.to_le_bytes()),
        _ if T::TYPE == GgmlType::Bf16 => b.copy_from_slice(&Bf16::from_f32(v).0),
        _ => b.copy_from_slice(&Half::from_f32(v).0),
    }
}

/// One test's random source.
struct Run {
    rng: StdRng,
    seed: u64,
}

impl Run {
    fn new() -> Self {
        let seed: u64 = rand::random();
        Run {
            rng: StdRng::seed_from_u64(seed),
            seed,
        }
    }

    /// `nb` blocks with every byte random (all nibbles, all i8 values including -128), then
    /// `fix` (finite scales, consistent sums).
    fn random<T: Block>(&mut self, nb: usize, fix: fn(&mut T, &mut StdRng)) -> Vec<T> {
        let mut v: Vec<T> = vec![T::zeroed(); nb];
        self.rng.fill(bytemuck::cast_slice_mut::<T, u8>(&mut v));
        for b in &mut v {
            fix(b, &mut self.rng);
        }
        v
    }

    /// One weight type: the AVX2 vec-dot against the scalar reference for each block count
    /// (relative tolerance 1e-5 of the sum of the products' magnitudes), and each token of
    /// 2, 3 and 4-token calls bit for bit equal to the token alone.
    fn check<W: Avx2Dot>(
        &mut self,
        nbs: &[usize],
        fix_w: fn(&mut W, &mut StdRng),
        fix_a: fn(&mut W::Act, &mut StdRng),
    ) -> Result<(), String> {
        let (name, seed) = (W::TYPE.name(), self.seed);
        for &nb in nbs {
            let n = nb * W::TYPE.block_size();
            let w: Vec<W> = self.random(nb, fix_w);
            let a: Vec<Vec<W::Act>> = (0..4).map(|_| self.random(nb, fix_a)).collect();
            // SAFETY (all calls): the tests run only with AVX2, FMA and F16C; every slice
            // holds nb blocks.
            let one: Vec<f32> = a
                .iter()
                .map(|a| unsafe { vec_dot::<W>(n, &w, a) })
                .collect();
            for (t, at) in a.iter().enumerate() {
                let want = W::SCALAR(n, &w, at);
                let tol = 1e-5 * magnitude(&w, at).map_err(|e| format!("{name}: {e}"))? + 1e-30;
                // NaN fails too.
                let within = (one[t] - want).abs() <= tol;
                if !within {
                    let got = one[t];
                    return Err(format!(
                        "{name} nb {nb}: avx2 {got} vs scalar {want} (tol {tol}, seed {seed})"
                    ));
                }
            }
            // SAFETY: as above.
            let groups: [Vec<f32>; 3] = unsafe {
                [
                    W::dot_tokens::<2>(nb, &w, [&a[0], &a[1]]).to_vec(),
                    W::dot_tokens::<3>(nb, &w, [&a[0], &a[1], &a[2]]).to_vec(),
                    W::dot_tokens::<4>(nb, &w, [&a[0], &a[1], &a[2], &a[3]]).to_vec(),
                ]
            };
            for g in &groups {
                for (t, (v, alone)) in g.iter().zip(&one).enumerate() {
                    if v.to_bits() != alone.to_bits() {
                        let k = g.len();
                        return Err(format!(
                            "{name} nb {nb}: token {t} of {k} gave {v}, alone {alone} (seed {seed})"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Sum of `|w_i * a_i|` over the dequantized rows, plus for Q8_1 activations each block's
/// `|m * s|` (the min term the dequantized rows do not show): the scale of the float rounding.
fn magnitude<W: Avx2Dot>(w: &[W], a: &[W::Act]) -> Result<f32, crate::QuantError> {
    let n = w.len() * W::TYPE.block_size();
    let (mut wf, mut af) = (vec![0.0f32; n], vec![0.0f32; n]);
    dequantize_row(W::TYPE, bytemuck::cast_slice(w), &mut wf)?;
    dequantize_row(W::Act::TYPE, bytemuck::cast_slice(a), &mut af)?;
    let mut mag: f32 = wf.iter().zip(&af).map(|(x, y)| (x * y).abs()).sum();
    if W::Act::TYPE == GgmlType::Q8_1 {
        // Bytes 2..4: the weight's `m` and the activation's `s`.
        let h = |b: &[u8]| Half([b[2], b[3]]).to_f32();
        let ms =
            |(x, y): (&W, &W::Act)| (h(bytemuck::bytes_of(x)) * h(bytemuck::bytes_of(y))).abs();
        mag += w.iter().zip(a).map(ms).sum::<f32>();
    }
    Ok(mag)
}

const LEGACY_NBS: &[usize] = &[0, 1, 2, 3, 7, 18, 48, 129];
const K_NBS: &[usize] = &[0, 1, 2, 3, 6, 11];
const FLOAT_NS: &[usize] = &[0, 1, 7, 8, 9, 31, 32, 33, 100, 576, 1537];

/// The tests need the features; on a CPU without them they say so and pass.
fn skip() -> bool {
    if !has_avx2() {
        eprintln!("SKIPPED: this CPU has no AVX2/FMA/F16C");
    }
    !has_avx2()
}

#[test]
fn avx2_legacy_matches_scalar() -> Result<(), String> {
    if skip() {
        return Ok(());
    }
    let mut run = Run::new();
    let nbs = LEGACY_NBS;
    run.check::<BlockQ4_0>(nbs, fix_d, fix_d)?;
    run.check::<BlockQ4_1>(nbs, fix_dm, fix_dm)?;
    run.check::<BlockQ5_0>(nbs, fix_d, fix_d)?;
    run.check::<BlockQ5_1>(nbs, fix_dm, fix_dm)?;
    run.check::<BlockQ8_0>(nbs, fix_d, fix_d)?;
    run.check::<BlockIq4Nl>(nbs, fix_d, fix_d)
}

#[test]
fn avx2_k_quants_match_scalar() -> Result<(), String> {
    if skip() {
        return Ok(());
    }
    let mut run = Run::new();
    let nbs = K_NBS;
    run.check::<BlockQ2K>(nbs, |b, r| (b.d, b.dmin) = (half(r), half(r)), fix_q8_k)?;
    run.check::<BlockQ3K>(nbs, |b, r| b.d = half(r), fix_q8_k)?;
    run.check::<BlockQ4K>(nbs, fix_dm, fix_q8_k)?;
    run.check::<BlockQ5K>(nbs, fix_dm, fix_q8_k)?;
    run.check::<BlockQ6K>(nbs, |b, r| b.d = half(r), fix_q8_k)?;
    run.check::<BlockIq4Xs>(nbs, fix_d, fix_q8_k)
}

#[test]
fn avx2_floats_match_scalar() -> Result<(), String> {
    if skip() {
        return Ok(());
    }
    let mut run = Run::new();
    run.check::<f32>(FLOAT_NS, fix_float, fix_float)?;
    run.check::<Half>(FLOAT_NS, fix_float, fix_float)?;
    run.check::<Bf16>(FLOAT_NS, fix_float, fix_float)
}

/// `nb` copies of `w` and `a`: the kernel, the scalar reference and `want` agree exactly.
fn exact<W: Avx2Dot>(w: W, a: W::Act, want: f32) -> Result<(), String> {
    let nb = 3;
    let n = nb * W::TYPE.block_size();
    let (w, a) = (vec![w; nb], vec![a; nb]);
    // SAFETY: the tests run only with AVX2, FMA and F16C.
    let got = unsafe { vec_dot::<W>(n, &w, &a) };
    let scalar = W::SCALAR(n, &w, &a);
    let want = want * nb as f32;
    if got == want && scalar == want {
        Ok(())
    } else {
        let name = W::TYPE.name();
        Err(format!("{name}: avx2 {got}, scalar {scalar}, exact {want}"))
    }
}

/// Quants at the ends of their ranges against activations of -128 (the case a sign trick on
/// the activation gets wrong) and 127: integer results small enough to be exact in f32.
#[test]
fn avx2_extreme_values_exact() -> Result<(), String> {
    if skip() {
        return Ok(());
    }
    let (one, zero) = (Half::from_f32(1.0), Half::ZERO);
    for y in [-128i8, 127] {
        let a0 = BlockQ8_0 {
            d: one,
            qs: [y; 32],
        };
        let a1 = BlockQ8_1 {
            d: one,
            s: zero,
            qs: [y; 32],
        };
        let y32 = 32.0 * y as f32;
        exact(
            BlockQ8_0 {
                d: one,
                qs: [-128; 32],
            },
            a0,
            -128.0 * y32,
        )?;
        exact(
            BlockQ4_0 {
                d: one,
                qs: [0; 16],
            },
            a0,
            -8.0 * y32,
        )?;
        exact(
            BlockQ4_1 {
                d: one,
                m: zero,
                qs: [0xFF; 16],
            },
            a1,
            15.0 * y32,
        )?;
        exact(
            BlockQ5_0 {
                d: one,
                qh: [0; 4],
                qs: [0; 16],
            },
            a0,
            -16.0 * y32,
        )?;
        exact(
            BlockQ5_1 {
                d: one,
                m: zero,
                qh: [0xFF; 4],
                qs: [0xFF; 16],
            },
            a1,
            31.0 * y32,
        )?;
        exact(
            BlockIq4Nl {
                d: one,
                qs: [0; 16],
            },
            a0,
            -127.0 * y32,
        )?;
        // Q6_K: every quant 0 (-32 after the offset), every scale -128; Q8_K with d = 1.
        let mut ak = BlockQ8K {
            d: 1.0f32.to_le_bytes(),
            qs: [y; 256],
            bsums: [[0; 2]; 16],
        };
        q8_k_sums(&mut ak);
        let w = BlockQ6K {
            ql: [0; 128],
            qh: [0; 64],
            scales: [-128; 16],
            d: one,
        };
        exact(w, ak, 256.0 * -32.0 * -128.0 * y as f32)?;
    }
    Ok(())
}
