//! Little-endian 16-bit float storage with alignment 1, and the rounding helpers of the
//! reference quantizers.
//!
//! Block structs store their scales as [`Half`] (IEEE binary16) rather than `half::f16` so that
//! every block struct has alignment 1: GGUF tensor data is only 32-byte aligned from the start of
//! the file and blocks are 18, 20, 22 ... bytes long, so a slice of blocks inside a mapped file
//! (or any `&[u8]`) can always be viewed as `&[Block]` without copying.

use bytemuck::{Pod, Zeroable};

/// An IEEE binary16 value stored as two little-endian bytes (alignment 1).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
#[repr(transparent)]
pub struct Half(pub [u8; 2]);

impl Half {
    /// Positive zero.
    pub const ZERO: Half = Half([0, 0]);

    /// The value for raw binary16 bits.
    #[inline]
    pub const fn from_bits(bits: u16) -> Self {
        Half(bits.to_le_bytes())
    }

    /// The raw binary16 bits.
    #[inline]
    pub const fn to_bits(self) -> u16 {
        u16::from_le_bytes(self.0)
    }

    /// Widen to f32 (exact, NaN payloads kept). Branch-free so loops over it vectorize: the
    /// exponent/mantissa bits moved into f32 position and scaled by 2^112 give every finite
    /// value (subnormals included, assuming the default non-flushing FP mode); results at or
    /// above 2^16 were infinities/NaNs and get the all-ones exponent (NaNs made quiet).
    #[inline]
    pub fn to_f32(self) -> f32 {
        let h = self.to_bits() as u32;
        let scaled = f32::from_bits((h & 0x7fff) << 13) * f32::from_bits((254 - 15) << 23);
        let mut bits = scaled.to_bits();
        if scaled >= f32::from_bits((127 + 16) << 23) {
            bits |= 0xff << 23;
        }
        // NaNs come out quiet, as F16C's conversion makes them.
        let quiet = (((h & 0x7fff) > 0x7c00) as u32) << 22;
        f32::from_bits(bits | quiet | ((h & 0x8000) << 16))
    }

    /// Round an f32 to the nearest binary16, ties to even (as GGML_FP32_TO_FP16).
    #[inline]
    pub fn from_f32(x: f32) -> Self {
        Self::from_bits(half::f16::from_f32(x).to_bits())
    }
}

impl std::fmt::Debug for Half {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_f32())
    }
}

/// A bfloat16 value stored as two little-endian bytes (alignment 1).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
#[repr(transparent)]
pub struct Bf16(pub [u8; 2]);

impl Bf16 {
    /// The value for raw bfloat16 bits.
    #[inline]
    pub const fn from_bits(bits: u16) -> Self {
        Bf16(bits.to_le_bytes())
    }

    /// The raw bfloat16 bits.
    #[inline]
    pub const fn to_bits(self) -> u16 {
        u16::from_le_bytes(self.0)
    }

    /// Widen to f32 (exact).
    #[inline]
    pub fn to_f32(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }

    /// Round an f32 to bfloat16 as GGML does: NaNs are kept and made quiet, everything else
    /// rounds to nearest, ties to even.
    #[inline]
    pub fn from_f32(x: f32) -> Self {
        let u = x.to_bits();
        let bits = if (u & 0x7fff_ffff) > 0x7f80_0000 {
            (u >> 16) | 64
        } else {
            // Cannot overflow: the largest finite/inf pattern plus 0x8000 stays below 2^32.
            (u.wrapping_add(0x7fff + ((u >> 16) & 1))) >> 16
        };
        Self::from_bits(bits as u16)
    }
}

impl std::fmt::Debug for Bf16 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_f32())
    }
}

/// Round to the nearest integer, ties to even (llama.cpp's `nearest_int`). Saturates; NaN -> 0.
#[inline]
pub(crate) fn nearest_int(x: f32) -> i32 {
    x.round_ties_even() as i32
}

/// The element of largest magnitude, with its sign, and that magnitude (first one wins on ties).
/// NaNs are skipped; an all-zero (or empty) input gives `(0.0, 0.0)`.
#[inline]
pub(crate) fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        let a = v.abs();
        if a > amax {
            amax = a;
            max = v;
        }
    }
    (max, amax)
}

/// Magnitudes below this make a group count as all zeros (llama.cpp's `GROUP_MAX_EPS`).
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_to_f32_is_exact_for_every_bit_pattern() {
        for bits in 0..=u16::MAX {
            let ours = Half::from_bits(bits).to_f32();
            let theirs = half::f16::from_bits(bits).to_f32();
            if theirs.is_nan() {
                assert!(ours.is_nan(), "{bits:#06x}");
                assert_eq!(ours.to_bits(), theirs.to_bits(), "{bits:#06x} payload");
            } else {
                assert_eq!(ours.to_bits(), theirs.to_bits(), "{bits:#06x}");
            }
        }
    }

    #[test]
    fn half_round_trips() {
        for x in [0.0f32, 1.0, -2.5, 65504.0, 1e-7, 0.1] {
            let h = Half::from_f32(x);
            assert_eq!(h.to_f32(), half::f16::from_f32(x).to_f32());
        }
        assert_eq!(Half::from_bits(0x3c00).to_f32(), 1.0);
        assert_eq!(Half::from_f32(1.0).0, [0x00, 0x3c]);
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(Bf16::from_f32(1.0).to_bits(), 0x3f80);
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
        assert_eq!(Bf16::from_f32(1.0 + 1.0 / 256.0).to_bits(), 0x3f80);
        assert_eq!(Bf16::from_f32(1.0 + 3.0 / 256.0).to_bits(), 0x3f82);
        assert!(Bf16::from_f32(f32::NAN).to_f32().is_nan());
        assert_eq!(Bf16::from_f32(f32::INFINITY).to_f32(), f32::INFINITY);
        assert_eq!(Bf16::from_bits(0xc040).to_f32(), -3.0);
    }

    #[test]
    fn nearest_int_ties_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(-2.5), -2);
        assert_eq!(nearest_int(f32::NAN), 0);
    }
}
