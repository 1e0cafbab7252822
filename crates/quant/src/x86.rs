//! AVX2 versions of the hottest vec-dots (Q4_1 x Q8_1 for the default model, Q8_0 x Q8_0),
//! chosen at run time by the typed entry points in `legacy.rs` when the CPU has AVX2, FMA and
//! F16C. Each is tested against its scalar reference (`*_scalar`) on random data.
//!
//! Integer work is exact (same sums as the scalar code); only the float accumulation order
//! differs (8 lanes, FMA), so results agree with the scalar reference within float rounding.

#![cfg(target_arch = "x86_64")]

use crate::legacy::{BlockQ4_1, BlockQ8_0, BlockQ8_1, QK};
use std::arch::x86_64::*;

/// True when the AVX2 kernels may run on this CPU (cached by std after the first call).
#[inline]
pub(crate) fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// Widen four f16 values (little-endian bit patterns) to f32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16x4(a: [u8; 2], b: [u8; 2], c: [u8; 2], d: [u8; 2]) -> __m128 {
    let bits = _mm_setr_epi16(
        i16::from_le_bytes(a),
        i16::from_le_bytes(b),
        i16::from_le_bytes(c),
        i16::from_le_bytes(d),
        0,
        0,
        0,
        0,
    );
    _mm_cvtph_ps(bits)
}

/// Sum of the 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Q4_1 x Q8_1 over `nb` blocks.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C ([`has_avx2`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn vec_dot_q4_1_q8_1_avx2(nb: usize, w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    let low_mask = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    let mut summs = _mm_setzero_ps();
    for (x, y) in w.iter().zip(a).take(nb) {
        // Lanes: d_x, m_x, d_y, s_y.
        let scales = f16x4(x.d.0, x.m.0, y.d.0, y.s.0);
        let dxdy = _mm_mul_ss(scales, _mm_movehl_ps(scales, scales));
        let ms = _mm_mul_ss(
            _mm_shuffle_ps::<0b01>(scales, scales),
            _mm_shuffle_ps::<0b11>(scales, scales),
        );
        summs = _mm_add_ss(summs, ms);

        // SAFETY: `x.qs` is 16 bytes and `y.qs` 32 bytes; both loads are unaligned loads of
        // exactly those arrays.
        let (nibbles, qy) = unsafe {
            (
                _mm_loadu_si128(x.qs.as_ptr().cast()),
                _mm256_loadu_si256(y.qs.as_ptr().cast()),
            )
        };
        // Bytes 0..16: low nibbles (elements 0..16); bytes 16..32: high nibbles (16..32).
        let qx = _mm256_and_si256(
            _mm256_set_m128i(_mm_srli_epi16(nibbles, 4), nibbles),
            low_mask,
        );
        // u8 x i8 products summed in pairs (|sum| <= 2 * 15 * 128, no saturation), then quads.
        let sums = _mm256_madd_epi16(_mm256_maddubs_epi16(qx, qy), ones);
        acc = _mm256_fmadd_ps(
            _mm256_set1_ps(_mm_cvtss_f32(dxdy)),
            _mm256_cvtepi32_ps(sums),
            acc,
        );
    }
    hsum_ps(acc) + _mm_cvtss_f32(summs)
}

/// Q8_0 x Q8_0 over `nb` blocks. Widens to i16 before multiplying, so every i8 value (-128
/// included) gives the exact product.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C ([`has_avx2`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn vec_dot_q8_0_q8_0_avx2(nb: usize, w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (x, y) in w.iter().zip(a).take(nb) {
        let scales = f16x4(x.d.0, y.d.0, [0, 0], [0, 0]);
        let dxdy = _mm_mul_ss(scales, _mm_shuffle_ps::<0b01>(scales, scales));
        // SAFETY: each `qs` is 32 bytes; the loads read exactly those arrays, unaligned.
        let (qx, qy) = unsafe {
            (
                _mm256_loadu_si256(x.qs.as_ptr().cast()),
                _mm256_loadu_si256(y.qs.as_ptr().cast()),
            )
        };
        let x_lo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(qx));
        let x_hi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(qx));
        let y_lo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(qy));
        let y_hi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(qy));
        let sums = _mm256_add_epi32(_mm256_madd_epi16(x_lo, y_lo), _mm256_madd_epi16(x_hi, y_hi));
        acc = _mm256_fmadd_ps(
            _mm256_set1_ps(_mm_cvtss_f32(dxdy)),
            _mm256_cvtepi32_ps(sums),
            acc,
        );
    }
    hsum_ps(acc)
}

const _: () = assert!(QK == 32);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fp::Half;
    use crate::legacy::{vec_dot_q4_1_q8_1_scalar, vec_dot_q8_0_q8_0_scalar};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn finite_half(rng: &mut StdRng) -> Half {
        Half::from_f32(rng.gen_range(-2.0f32..2.0))
    }

    /// Random blocks: every byte random (all nibbles, all i8 values including -128), finite
    /// scales.
    fn random<T: bytemuck::Pod>(
        rng: &mut StdRng,
        nb: usize,
        set: impl Fn(&mut T, &mut StdRng),
    ) -> Vec<T> {
        let mut v: Vec<T> = vec![T::zeroed(); nb];
        rng.fill(bytemuck::cast_slice_mut::<T, u8>(&mut v));
        for b in &mut v {
            set(b, rng);
        }
        v
    }

    fn check(name: &str, got: f32, want: f32, mag: f32, seed: u64) {
        let tol = 1e-5 * mag + 1e-30;
        assert!(
            (got - want).abs() <= tol,
            "{name}: avx2 {got} vs scalar {want} (tol {tol}, seed {seed})"
        );
    }

    #[test]
    fn avx2_matches_scalar() {
        if !has_avx2() {
            eprintln!("SKIPPED: this CPU has no AVX2/FMA/F16C");
            return;
        }
        let seed: u64 = rand::random();
        let mut rng = StdRng::seed_from_u64(seed);
        for nb in [0usize, 1, 2, 3, 7, 18, 48, 129] {
            let n = nb * QK;
            let w: Vec<BlockQ4_1> = random(&mut rng, nb, |b: &mut BlockQ4_1, r| {
                b.d = finite_half(r);
                b.m = finite_half(r);
            });
            let a: Vec<BlockQ8_1> = random(&mut rng, nb, |b: &mut BlockQ8_1, r| {
                b.d = finite_half(r);
                b.s = finite_half(r);
            });
            // SAFETY: AVX2, FMA and F16C are present (checked above).
            let got = unsafe { vec_dot_q4_1_q8_1_avx2(nb, &w, &a) };
            let want = vec_dot_q4_1_q8_1_scalar(n, &w, &a);
            let mag: f32 = w
                .iter()
                .zip(&a)
                .map(|(x, y)| {
                    (x.d.to_f32() * y.d.to_f32()).abs() * 15.0 * 128.0 * 32.0
                        + (x.m.to_f32() * y.s.to_f32()).abs()
                })
                .sum();
            check("q4_1 x q8_1", got, want, mag, seed);

            let x: Vec<BlockQ8_0> =
                random(&mut rng, nb, |b: &mut BlockQ8_0, r| b.d = finite_half(r));
            let y: Vec<BlockQ8_0> =
                random(&mut rng, nb, |b: &mut BlockQ8_0, r| b.d = finite_half(r));
            // SAFETY: as above.
            let got = unsafe { vec_dot_q8_0_q8_0_avx2(nb, &x, &y) };
            let want = vec_dot_q8_0_q8_0_scalar(n, &x, &y);
            let mag: f32 = x
                .iter()
                .zip(&y)
                .map(|(p, q)| (p.d.to_f32() * q.d.to_f32()).abs() * 128.0 * 128.0 * 32.0)
                .sum();
            check("q8_0 x q8_0", got, want, mag, seed);
        }
    }

    /// Extreme quants: every Q8 value -128 (the case a sign trick would get wrong) and every
    /// nibble 15.
    #[test]
    fn avx2_extreme_values_exact() {
        if !has_avx2() {
            eprintln!("SKIPPED: this CPU has no AVX2/FMA/F16C");
            return;
        }
        let one = Half::from_f32(1.0);
        let x = vec![
            BlockQ8_0 {
                d: one,
                qs: [-128; 32]
            };
            4
        ];
        // SAFETY: AVX2, FMA and F16C are present (checked above).
        let got = unsafe { vec_dot_q8_0_q8_0_avx2(4, &x, &x) };
        assert_eq!(got, 4.0 * 32.0 * 16384.0);
        let w = vec![
            BlockQ4_1 {
                d: one,
                m: Half::ZERO,
                qs: [0xFF; 16]
            };
            2
        ];
        let a = vec![
            BlockQ8_1 {
                d: one,
                s: Half::ZERO,
                qs: [-128; 32]
            };
            2
        ];
        // SAFETY: as above.
        let got = unsafe { vec_dot_q4_1_q8_1_avx2(2, &w, &a) };
        assert_eq!(got, 2.0 * 32.0 * 15.0 * -128.0);
    }
}
