//! One-token AVX-512 VNNI kernels with the register-tiled kernels' per-token arithmetic, for
//! [`Kernels::BatchInvariant`](super::Kernels::BatchInvariant): a decode step computes every
//! (row, token) product bit for bit as `tiled.rs` / `tiled_k.rs` compute it inside a batch,
//! while still streaming each weight row once in memory order as the fast decode kernels do
//! (the tiled kernels themselves repack every 16-row tile, which costs 3x on one token).
//!
//! The tiled kernels give each row one float accumulator (a lane) and add one block's exact
//! integer dot per FMA, block after block: `acc = fma(float(isum_b), d_w * d_y, acc)` for the
//! legacy types without a min (Q4_0, Q5_0, Q8_0), and per super-block for the K-quants
//! `fma(float(isum), d * d_y, acc)` then `acc - float(bsum) * (dmin * d_y)` in one rounding
//! (Q4_K, Q5_K), or `fma(float(isum - 32 * bsum), d * d_y, acc)` (Q6_K). Integer sums are exact
//! in any order, so here each block's integer lanes are reduced horizontally and the float steps
//! run as the same scalar FMAs in the same block order. (Q4_1 / Q5_1 need nothing: the fast
//! decode kernel already sums in the tiled kernels' order, llama.cpp's.)

use super::avx512::{stream_step, Legacy};
use super::tiled_k::TiledK;
use super::QActs;
use crate::kquants::BlockQ8K;
use std::arch::x86_64::*;

/// Per 256-bit half of `v`: the sum of its 8 lanes (exact, wrapping), in lanes 0 and 8.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn hsum8x2(v: __m512i) -> (i32, i32) {
    // 128-bit lanes [a, b, c, d] + [b, a, d, c].
    let v = _mm512_add_epi32(v, _mm512_shuffle_i64x2::<0b10_11_00_01>(v, v));
    let v = _mm512_add_epi32(v, _mm512_shuffle_epi32::<0b01_00_11_10>(v));
    let v = _mm512_add_epi32(v, _mm512_shuffle_epi32::<0b10_11_00_01>(v));
    (
        _mm512_cvtsi512_si32(v),
        _mm_cvtsi128_si32(_mm512_extracti32x4_epi32::<2>(v)),
    )
}

/// One legacy weight row (a type without a min) with token `t`, as the tiled `fused` kernel
/// computes it.
///
/// # Safety
/// The CPU must support the kernels' features; `a` must be expanded for this weight type with
/// `w.len() * 32` columns and hold token `t`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn legacy_row<W: Legacy>(w: &[W], a: &QActs, t: usize) -> f32 {
    debug_assert!(!W::HAS_MIN);
    let mut acc = 0.0f32;
    for p in (0..w.len()).step_by(2) {
        // SAFETY: the caller's guarantees; p < nb.
        let (dot, dd, pair) = unsafe { stream_step(w, a, t, p) };
        // Block p's exact integer dot, then block p + 1's, each with its d_w * d_y.
        let (i0, i1) = hsum8x2(dot);
        acc = (i0 as f32).mul_add(_mm512_cvtss_f32(dd), acc);
        if pair {
            let dd1 = _mm_cvtss_f32(_mm512_extractf32x4_ps::<2>(dd));
            acc = (i1 as f32).mul_add(dd1, acc);
        }
    }
    acc
}

/// One K-quant weight row (`w`) with token `t` of `a` (`w.len()` super-blocks per token), as
/// the tiled K-quant kernel computes it.
///
/// # Safety
/// The CPU must support the kernels' features; `a` holds at least `(t + 1) * w.len()` blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn kquant_row<W: TiledK>(w: &[W], a: &[BlockQ8K], t: usize) -> f32 {
    let nbk = w.len();
    debug_assert!(a.len() >= (t + 1) * nbk);
    let mut acc = 0.0f32;
    for (x, y) in w.iter().zip(&a[t * nbk..]) {
        // A hint only, as in `legacy_row`.
        _mm_prefetch::<_MM_HINT_T0>((x as *const W).cast::<u8>().wrapping_add(1024).cast());
        // SAFETY: CPU features as required by this function.
        let u = unsafe { x.unpack() };
        let mut isum = _mm512_setzero_si512();
        for k in 0..4 {
            // SAFETY: reads 64 of the 256 quants of `y`.
            let yq = unsafe { _mm512_loadu_si512(y.qs.as_ptr().add(64 * k).cast()) };
            let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u.q[k], yq);
            isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(dot, u.sc[k]));
        }
        let isum = _mm512_reduce_add_epi32(isum);
        // SAFETY: `bsums` is 16 i16 = 32 bytes.
        let bs = unsafe { _mm256_loadu_si256(y.bsums.as_ptr().cast()) };
        let bsum = _mm512_reduce_add_epi32(_mm512_zextsi256_si512(_mm256_madd_epi16(bs, u.bw)));
        let yd = y.d();
        if W::OFFSET32 {
            let s = isum.wrapping_sub(bsum.wrapping_shl(5));
            acc = (s as f32).mul_add(u.d * yd, acc);
        } else {
            // `u.c` is -dmin.
            acc = (isum as f32).mul_add(u.d * yd, acc);
            acc = (-(bsum as f32)).mul_add(-u.c * yd, acc);
        }
    }
    acc
}
