//! The kernel tests of every architecture (`x86/tests.rs`, `aarch64/tests.rs` run them on
//! their kernels): each kernel against its scalar reference on fresh random data (seed printed
//! on failure), at block counts from 0 to past a hundred (odd ones included), each token of a
//! group bit for bit equal to the token alone, plus inputs at the edges of the integer ranges,
//! where the results are exact.

use super::Kernel;
use crate::fp::{Bf16, Half};
use crate::iq4::{BlockIq4Nl, BlockIq4Xs};
use crate::kquants::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K};
use crate::legacy::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1};
use crate::{dequantize_row, Block, GgmlType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The kernels of one architecture, as the tests call them.
pub(crate) trait UnderTest {
    /// For messages: "avx2", "neon".
    const NAME: &'static str;
    /// `out[t] = dot(w, a[t])` over the first `nb` blocks by every variant of the kernel this
    /// CPU has: their common result, or an error when they differ in any bit. The tests call
    /// it only where the CPU has the kernels' features.
    fn dot<W: Kernel, const T: usize>(
        &self,
        nb: usize,
        w: &[W],
        a: [&[W::Act]; T],
    ) -> Result<[f32; T], String>;
}

/// The kernel tests of one architecture, in the calling module: `$kernels()` gives the
/// [`UnderTest`], or `None` (the tests then pass, after it said why) where the CPU lacks the
/// kernels' features.
macro_rules! kernel_tests {
    ($kernels:ident) => {
        kernel_tests!(@ $kernels; legacy_matches_scalar, k_quants_match_scalar,
            floats_match_scalar, extreme_values_exact, same_bits_as_avx2);
    };
    (@ $kernels:ident; $($check:ident),*) => {$(
        #[test]
        fn $check() -> Result<(), String> {
            match $kernels() {
                Some(k) => $crate::simd::check::$check(&k),
                None => Ok(()),
            }
        }
    )*};
}
pub(crate) use kernel_tests;

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

/// One test's random source, the kernels under test and a hash of every result they gave.
struct Run<'k, K> {
    rng: StdRng,
    seed: u64,
    kernels: &'k K,
    hash: u64,
}

impl<'k, K: UnderTest> Run<'k, K> {
    /// Fresh random data.
    fn new(kernels: &'k K) -> Self {
        Self::seeded(kernels, rand::random())
    }

    /// The same data on every machine (ChaCha, seeded).
    fn seeded(kernels: &'k K, seed: u64) -> Self {
        Run {
            rng: StdRng::seed_from_u64(seed),
            seed,
            kernels,
            hash: 0xcbf2_9ce4_8422_2325,
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

    /// One weight type: the kernel against the scalar reference for each block count
    /// (relative tolerance 1e-5 of the sum of the products' magnitudes), and each token of
    /// 2, 3 and 4-token calls bit for bit equal to the token alone.
    fn check<W: Kernel>(
        &mut self,
        nbs: &[usize],
        fix_w: fn(&mut W, &mut StdRng),
        fix_a: fn(&mut W::Act, &mut StdRng),
    ) -> Result<(), String> {
        let (name, seed, k) = (W::TYPE.name(), self.seed, K::NAME);
        let with_seed = |e: String| format!("{e} (seed {seed})");
        for &nb in nbs {
            let n = nb * W::TYPE.block_size();
            let w: Vec<W> = self.random(nb, fix_w);
            let a: Vec<Vec<W::Act>> = (0..4).map(|_| self.random(nb, fix_a)).collect();
            let mut one = Vec::new();
            for at in &a {
                let [got] = self.kernels.dot::<W, 1>(nb, &w, [at]).map_err(with_seed)?;
                let want = W::SCALAR(n, &w, at);
                let tol = 1e-5 * magnitude(&w, at).map_err(|e| format!("{name}: {e}"))? + 1e-30;
                // NaN fails too.
                let within = (got - want).abs() <= tol;
                if !within {
                    return Err(format!(
                        "{name} nb {nb}: {k} {got} vs scalar {want} (tol {tol}, seed {seed})"
                    ));
                }
                one.push(got);
                // FNV-1a over the results' bits.
                self.hash = (self.hash ^ got.to_bits() as u64).wrapping_mul(0x100_0000_01b3);
            }
            let groups: [Vec<f32>; 3] = [
                self.kernels
                    .dot::<W, 2>(nb, &w, [&a[0], &a[1]])
                    .map_err(with_seed)?
                    .to_vec(),
                (self.kernels.dot::<W, 3>(nb, &w, [&a[0], &a[1], &a[2]]))
                    .map_err(with_seed)?
                    .to_vec(),
                (self
                    .kernels
                    .dot::<W, 4>(nb, &w, [&a[0], &a[1], &a[2], &a[3]]))
                .map_err(with_seed)?
                .to_vec(),
            ];
            for g in &groups {
                for (t, (v, alone)) in g.iter().zip(&one).enumerate() {
                    if v.to_bits() != alone.to_bits() {
                        let len = g.len();
                        return Err(format!(
                            "{name} nb {nb}: {k} token {t} of {len} gave {v}, alone {alone} \
                             (seed {seed})"
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
fn magnitude<W: Kernel>(w: &[W], a: &[W::Act]) -> Result<f32, crate::QuantError> {
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
const FLOAT_NS: &[usize] = &[
    0, 1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 100, 576, 1537,
];

/// Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and IQ4_NL against Q8_0 / Q8_1.
fn legacy<K: UnderTest>(run: &mut Run<K>) -> Result<(), String> {
    let nbs = LEGACY_NBS;
    run.check::<BlockQ4_0>(nbs, fix_d, fix_d)?;
    run.check::<BlockQ4_1>(nbs, fix_dm, fix_dm)?;
    run.check::<BlockQ5_0>(nbs, fix_d, fix_d)?;
    run.check::<BlockQ5_1>(nbs, fix_dm, fix_dm)?;
    run.check::<BlockQ8_0>(nbs, fix_d, fix_d)?;
    run.check::<BlockIq4Nl>(nbs, fix_d, fix_d)
}

/// Q2_K ... Q6_K and IQ4_XS against Q8_K.
fn k_quants<K: UnderTest>(run: &mut Run<K>) -> Result<(), String> {
    let nbs = K_NBS;
    run.check::<BlockQ2K>(nbs, |b, r| (b.d, b.dmin) = (half(r), half(r)), fix_q8_k)?;
    run.check::<BlockQ3K>(nbs, |b, r| b.d = half(r), fix_q8_k)?;
    run.check::<BlockQ4K>(nbs, fix_dm, fix_q8_k)?;
    run.check::<BlockQ5K>(nbs, fix_dm, fix_q8_k)?;
    run.check::<BlockQ6K>(nbs, |b, r| b.d = half(r), fix_q8_k)?;
    run.check::<BlockIq4Xs>(nbs, fix_d, fix_q8_k)
}

/// F32, F16 and BF16 rows of many lengths (the vector steps' tails included).
fn floats<K: UnderTest>(run: &mut Run<K>) -> Result<(), String> {
    run.check::<f32>(FLOAT_NS, fix_float, fix_float)?;
    run.check::<Half>(FLOAT_NS, fix_float, fix_float)?;
    run.check::<Bf16>(FLOAT_NS, fix_float, fix_float)
}

pub(crate) fn legacy_matches_scalar(kernels: &impl UnderTest) -> Result<(), String> {
    legacy(&mut Run::new(kernels))
}

pub(crate) fn k_quants_match_scalar(kernels: &impl UnderTest) -> Result<(), String> {
    k_quants(&mut Run::new(kernels))
}

pub(crate) fn floats_match_scalar(kernels: &impl UnderTest) -> Result<(), String> {
    floats(&mut Run::new(kernels))
}

/// The hash of every result of the three suites on the data of seed 1, as the AVX2 kernels
/// give it (recorded on x86-64 when the NEON kernels were made to sum in their order). A change
/// of the AVX2 kernels' arithmetic must change the NEON kernels' alike, and this value.
const AVX2_BITS: u64 = 0x2750_f224_15fb_113e;

/// The kernels give the AVX2 kernels' bits for every type, at every block count, on the same
/// data: every architecture's kernels compute each product in the same order, so a model gives
/// the same logits on an x86 laptop and an ARM server (and llama.cpp's x86 results, which the
/// golden test of the default model holds to).
pub(crate) fn same_bits_as_avx2<K: UnderTest>(kernels: &K) -> Result<(), String> {
    let mut run = Run::seeded(kernels, 1);
    legacy(&mut run)?;
    k_quants(&mut run)?;
    floats(&mut run)?;
    if run.hash == AVX2_BITS {
        Ok(())
    } else {
        let (k, hash) = (K::NAME, run.hash);
        Err(format!(
            "{k}: results hash to {hash:#x}, the AVX2 kernels' to {AVX2_BITS:#x}"
        ))
    }
}

/// `nb` copies of `w` and `a`: the kernel, the scalar reference and `want` agree exactly.
fn exact<W: Kernel, K: UnderTest>(kernels: &K, w: W, a: W::Act, want: f32) -> Result<(), String> {
    let nb = 3;
    let n = nb * W::TYPE.block_size();
    let (w, a) = (vec![w; nb], vec![a; nb]);
    let [got] = kernels.dot::<W, 1>(nb, &w, [&a])?;
    let scalar = W::SCALAR(n, &w, &a);
    let want = want * nb as f32;
    if got == want && scalar == want {
        Ok(())
    } else {
        let (name, k) = (W::TYPE.name(), K::NAME);
        Err(format!("{name}: {k} {got}, scalar {scalar}, exact {want}"))
    }
}

/// Quants at the ends of their ranges against activations of -128 (the case a sign trick on
/// the activation gets wrong) and 127: integer results small enough to be exact in f32.
pub(crate) fn extreme_values_exact(k: &impl UnderTest) -> Result<(), String> {
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
        // Quants: all -128, all nibbles 0 (z) or 15 (o), fifth bits all 0 (h0) or 1 (qh).
        let (d, m, q8, z, o, h0, qh) = (
            one, zero, [-128; 32], [0; 16], [0xFF; 16], [0; 4], [0xFF; 4],
        );
        exact(k, BlockQ8_0 { d, qs: q8 }, a0, -128.0 * y32)?;
        exact(k, BlockQ4_0 { d, qs: z }, a0, -8.0 * y32)?;
        exact(k, BlockQ4_1 { d, m, qs: o }, a1, 15.0 * y32)?;
        exact(k, BlockQ5_0 { d, qh: h0, qs: z }, a0, -16.0 * y32)?;
        exact(k, BlockQ5_1 { d, m, qh, qs: o }, a1, 31.0 * y32)?;
        exact(k, BlockIq4Nl { d, qs: z }, a0, -127.0 * y32)?;
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
        exact(k, w, ak, 256.0 * -32.0 * -128.0 * y as f32)?;
    }
    Ok(())
}
