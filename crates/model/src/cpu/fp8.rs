//! FP8 E4M3 ("e4m3fn": 4 exponent bits with bias 7, 3 mantissa bits, no infinities, largest
//! finite value 448, NaN = S.1111.111), the element of the `fp8` KV cache, as vLLM's
//! `--kv-cache-dtype fp8` stores keys and values (without per-tensor scales).
//!
//! Conversion from f32 rounds to nearest, ties to even, and saturates to +-448 (vLLM's cast
//! saturates too); attention reads the values back to f32 and keeps its query and accumulator in
//! f32, as llama.cpp's CPU flash attention does for quantized caches.

use super::kv::KvElem;

/// One FP8 E4M3 value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fp8E4M3(pub u8);

/// The largest finite E4M3 value.
const MAX: f32 = 448.0;

impl Fp8E4M3 {
    /// Nearest E4M3 value (ties to even), saturated to +-448; NaN stays NaN.
    pub fn from_f32(x: f32) -> Self {
        let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
        let a = x.abs();
        if a.is_nan() {
            return Fp8E4M3(sign | 0x7F);
        }
        if a >= MAX {
            return Fp8E4M3(sign | 0x7E);
        }
        let bits = a.to_bits();
        let exp = ((bits >> 23) & 0xFF) as i32 - 127;
        if exp < -6 {
            // Subnormal: multiples of 2^-9; 8 of them is the smallest normal (code 0x08).
            let q = (a * 512.0).round_ties_even() as u8;
            return Fp8E4M3(sign | q);
        }
        // Normal: keep 3 of the 23 mantissa bits, rounding to nearest even.
        let m = bits & 0x7F_FFFF;
        let mut mant = m >> 20;
        let rest = m & 0xF_FFFF;
        if rest > 0x8_0000 || (rest == 0x8_0000 && mant & 1 == 1) {
            mant += 1;
        }
        let mut e = (exp + 7) as u32;
        if mant == 8 {
            mant = 0;
            e += 1;
        }
        let code = ((e << 3) | mant).min(0x7E) as u8;
        Fp8E4M3(sign | code)
    }

    /// The value as f32 (exact).
    pub fn to_f32(self) -> f32 {
        let b = self.0;
        let sign = if b & 0x80 != 0 { -1.0f32 } else { 1.0 };
        let e = ((b >> 3) & 0xF) as i32;
        let m = (b & 7) as f32;
        if e == 0xF && b & 7 == 7 {
            return f32::NAN;
        }
        let mag = if e == 0 {
            m * (1.0 / 512.0)
        } else {
            (1.0 + m / 8.0) * 2f32.powi(e - 7)
        };
        sign * mag
    }
}

/// The f32 value of every code (attention reads the cache through it).
fn decode_table() -> &'static [f32; 256] {
    static TABLE: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| std::array::from_fn(|c| Fp8E4M3(c as u8).to_f32()))
}

impl KvElem for Fp8E4M3 {
    const ZERO: Self = Fp8E4M3(0);
    fn store(src: &[f32], dst: &mut [Self]) {
        dst.iter_mut()
            .zip(src)
            .for_each(|(d, &x)| *d = Fp8E4M3::from_f32(x));
    }
    fn load(src: &[Self], dst: &mut [f32]) {
        let table = decode_table();
        dst.iter_mut()
            .zip(src)
            .for_each(|(d, &x)| *d = table[x.0 as usize]);
    }
    /// Queries and the value accumulator stay f32 (no 8-bit accumulator).
    fn round_query(_x: &mut [f32]) {}
    fn round_acc(_x: &mut [f32]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every finite code, in increasing order of value (positive half).
    fn finite_positive() -> Vec<(u8, f32)> {
        (0u8..0x7F).map(|c| (c, Fp8E4M3(c).to_f32())).collect()
    }

    #[test]
    fn codes_decode_to_the_e4m3_values_and_encode_back() {
        let vals = finite_positive();
        assert_eq!(vals[0].1, 0.0);
        assert_eq!(vals[1].1, 1.0 / 512.0); // smallest subnormal
        assert_eq!(vals[8].1, 1.0 / 64.0); // smallest normal
        assert_eq!(vals[0x38].1, 1.0);
        assert_eq!(vals[0x7E].1, 448.0);
        assert!(Fp8E4M3(0x7F).to_f32().is_nan());
        for w in vals.windows(2) {
            assert!(
                w[0].1 < w[1].1,
                "codes {:#x} {:#x} not increasing",
                w[0].0,
                w[1].0
            );
        }
        for &(c, v) in &vals {
            assert_eq!(Fp8E4M3::from_f32(v).0, c, "{v}");
            assert_eq!(Fp8E4M3::from_f32(-v).0, c | 0x80, "{}", -v);
        }
    }

    #[test]
    fn conversion_rounds_to_the_nearest_value_ties_to_even_and_saturates() {
        let vals = finite_positive();
        // xorshift64: uniform in [0, 1), cubed to crowd the small values.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut uniform = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        let mut samples: Vec<f32> = (0..20_000).map(|_| uniform().powi(3) * 500.0).collect();
        // Midpoints between neighbours: ties go to the even code.
        samples.extend(vals.windows(2).map(|w| (w[0].1 + w[1].1) / 2.0));
        for x in samples {
            let got = Fp8E4M3::from_f32(x);
            let want = if x >= MAX {
                0x7E
            } else {
                // Brute force: the nearest value, the even code on a tie.
                let mut best = (f32::INFINITY, 0u8);
                for &(c, v) in &vals {
                    let d = (v - x).abs();
                    if d < best.0 || (d == best.0 && c & 1 == 0) {
                        best = (d, c);
                    }
                }
                best.1
            };
            assert_eq!(got.0, want, "{x}: got {:#x} want {:#x}", got.0, want);
            assert_eq!(Fp8E4M3::from_f32(-x).0, want | 0x80);
        }
        assert_eq!(Fp8E4M3::from_f32(1e9).0, 0x7E);
        assert_eq!(Fp8E4M3::from_f32(f32::NEG_INFINITY).0, 0xFE);
        assert!(Fp8E4M3::from_f32(f32::NAN).to_f32().is_nan());
    }
}
