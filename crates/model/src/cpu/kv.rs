//! The CPU KV cache's element types and its write: how values are stored and read back, and
//! how attention rounds its query and value accumulator for each type.
//!
//! - `f16` (default) and `f32`: one value per cell; llama.cpp's CPU flash attention rounds the
//!   query to the key type and keeps the value accumulator in the value type, and so do we.
//! - `Fp8E4M3` (`fp8.rs`): one byte per value; query and accumulator stay f32.
//! - [`Q8Cell`]: llama.cpp's `q8_0` block (32 values as int8 with one f16 scale, 34 bytes);
//!   as in llama.cpp, every step takes the one-chunk kernel, the query is rounded through the
//!   same 8-bit blocks (llama.cpp converts it to the key type's dot-product partner, q8_0), and
//!   the accumulator stays f32 (llama.cpp's path for quantized V).

use half::f16;
use realizar_quant::{dequantize_q8_0, quantize_act_q8_0, BlockQ8_0};

use super::{CpuBuf, KvStore};

/// A cell of the KV cache: `ELEMS` consecutive values of a row (1, or a block of 32).
pub trait KvElem: Copy + Send + Sync + 'static {
    const ZERO: Self;
    /// Values per cell; rows and heads must be multiples of it.
    const ELEMS: usize = 1;
    /// Whether steps of 64+ tokens may take llama.cpp's tiled arithmetic (f32 queries).
    const TILED: bool = true;
    /// Stores `src` (`dst.len() * ELEMS` values) into cells.
    fn store(src: &[f32], dst: &mut [Self]);
    /// Reads cells back as `src.len() * ELEMS` values.
    fn load(src: &[Self], dst: &mut [f32]);
    /// What the query rows become before the scores.
    fn round_query(x: &mut [f32]);
    /// What the value accumulator becomes after each update.
    fn round_acc(x: &mut [f32]);
    /// The cells holding values `base..base + n` of a layer.
    #[inline]
    fn cells(layer: &[Self], base: usize, n: usize) -> &[Self] {
        debug_assert!(base.is_multiple_of(Self::ELEMS) && n.is_multiple_of(Self::ELEMS));
        &layer[base / Self::ELEMS..(base + n) / Self::ELEMS]
    }
}

impl KvElem for f16 {
    const ZERO: Self = f16::ZERO;
    fn store(src: &[f32], dst: &mut [Self]) {
        use half::slice::HalfFloatSliceExt;
        let n = src.len().min(dst.len());
        dst[..n].convert_from_f32_slice(&src[..n]);
    }
    fn load(src: &[Self], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        let n = src.len().min(dst.len());
        src[..n].convert_to_f32_slice(&mut dst[..n]);
    }
    #[inline(always)]
    fn round_query(x: &mut [f32]) {
        round_f16(x);
    }
    #[inline(always)]
    fn round_acc(x: &mut [f32]) {
        round_f16(x);
    }
}

/// Rounds every value to f16 (round to nearest even) and back.
#[inline(always)]
fn round_f16(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::attention::has_avx2() {
        // SAFETY: the CPU has AVX2 and F16C (checked).
        unsafe { round_f16_f16c(x) };
        return;
    }
    x.iter_mut().for_each(|v| *v = f16::from_f32(*v).to_f32());
}

/// Rounds every value to f16 (round to nearest even, as `f16::from_f32`) and back.
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn round_f16_f16c(x: &mut [f32]) {
    use std::arch::x86_64::*;
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        // SAFETY: `c` is 8 f32, read and written unaligned.
        unsafe {
            let v = _mm256_loadu_ps(c.as_ptr());
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            _mm256_storeu_ps(c.as_mut_ptr(), _mm256_cvtph_ps(h));
        }
    }
    for v in chunks.into_remainder() {
        *v = f16::from_f32(*v).to_f32();
    }
}

impl KvElem for f32 {
    const ZERO: Self = 0.0;
    fn store(src: &[f32], dst: &mut [Self]) {
        let n = src.len().min(dst.len());
        dst[..n].copy_from_slice(&src[..n]);
    }
    fn load(src: &[Self], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        dst[..n].copy_from_slice(&src[..n]);
    }
    fn round_query(_x: &mut [f32]) {}
    fn round_acc(_x: &mut [f32]) {}
}

/// llama.cpp's `q8_0` block (`realizar_quant::BlockQ8_0`: 32 int8 values and an f16 scale),
/// written by llama.cpp's x86 run-time quantizer (`127 / amax`, ties to even), which is also what
/// it stores in a q8_0 cache and turns the query into.
pub type Q8Cell = BlockQ8_0;

impl KvElem for BlockQ8_0 {
    const ZERO: Self = BlockQ8_0 {
        d: realizar_quant::Half::ZERO,
        qs: [0; 32],
    };
    const ELEMS: usize = 32;
    /// llama.cpp runs a quantized K cache through its one-chunk kernel only.
    const TILED: bool = false;
    fn store(src: &[f32], dst: &mut [Self]) {
        quantize_act_q8_0(src, dst);
    }
    fn load(src: &[Self], dst: &mut [f32]) {
        dequantize_q8_0(src, dst);
    }
    fn round_query(x: &mut [f32]) {
        let mut b = [Self::ZERO];
        for c in x.chunks_exact_mut(32) {
            quantize_act_q8_0(c, &mut b);
            dequantize_q8_0(&b, c);
        }
    }
    fn round_acc(_x: &mut [f32]) {}
}

/// Writes the K and V rows of a step into their slots of `layer`.
pub fn kv_store<T: KvElem>(
    kv: &mut KvStore<T>,
    layer: usize,
    k: &CpuBuf,
    v: &CpuBuf,
    slots: &[u32],
) {
    let d = kv.kv_dim;
    for (t, &slot) in slots.iter().enumerate() {
        let s = slot as usize * d;
        let (c0, c1) = (s / T::ELEMS, (s + d) / T::ELEMS);
        T::store(&k.data[t * d..(t + 1) * d], &mut kv.k[layer][c0..c1]);
        T::store(&v.data[t * d..(t + 1) * d], &mut kv.v[layer][c0..c1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_cells_are_the_quant_crates_q8_0_blocks() {
        // 64 values: two blocks, one all zero.
        let x: Vec<f32> = (0..64)
            .map(|i| {
                if i < 32 {
                    (i as f32 - 15.3) * 0.37
                } else {
                    0.0
                }
            })
            .collect();
        let mut cells = [Q8Cell::ZERO; 2];
        Q8Cell::store(&x, &mut cells);
        let mut want = [Q8Cell::ZERO; 2];
        quantize_act_q8_0(&x, &mut want);
        assert_eq!(cells, want);
        let mut back = vec![f32::NAN; 64];
        Q8Cell::load(&cells, &mut back);
        let amax = x[..32].iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for i in 0..32 {
            assert!((back[i] - x[i]).abs() <= amax / 254.0 * 1.01, "value {i}");
        }
        assert!(back[32..].iter().all(|&v| v == 0.0));
        let mut q = x.clone();
        Q8Cell::round_query(&mut q);
        assert_eq!(q, back);
        assert_eq!(std::mem::size_of::<Q8Cell>(), 34);
    }
}
