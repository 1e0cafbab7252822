//! Register-tiled AVX-512 VNNI kernels for Q4_K, Q5_K and Q6_K against Q8_K activations:
//! 16 weight rows (one per 32-bit lane) x several tokens per inner loop.
//!
//! Each super-block of a 16-row tile is unpacked once per call: its 256 quants as 64 k-step
//! vectors (elements `4k..4k+4` of every row as unsigned bytes, as in `tiled.rs`), its
//! sub-block scales as per-lane integers, and the i16 pairs that weight the activation's
//! 16-element sums (`bsums`): the mins of Q4_K / Q5_K, the scales of Q6_K (for its `-32`
//! offset). Per super-block and token the kernel then runs 64 `vpdpbusd` (4 bytes of the token
//! broadcast to all lanes), one integer multiply per sub-block by its scale, 8 `vpdpwssd` for
//! the bsum term, and one or two float FMAs; the integer part is exact, so results differ from
//! the scalar reference only by float rounding.

use super::avx512::KQuant;
use super::tiled::load_t16 as t16;
use super::tiled::{get, put, V64};
use crate::fp::Half;
use crate::kquants::{BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K};
use crate::QK_K;
use std::arch::x86_64::*;
use std::cell::RefCell;

/// Weight rows per tile.
const ROWS: usize = 16;
/// Tokens per group (3 vectors of state each).
const TOK: usize = 8;

/// Vectors per super-block in the tile: 64 k-steps, up to 16 scales, 8 bsum weights, d, dmin.
const SB_VECS: usize = 64 + 16 + 8 + 2;
const SC: usize = 64;
const BW: usize = SC + 16;
const D: usize = BW + 8;
const DMIN: usize = D + 1;

thread_local! {
    /// Per-thread tile scratch (only grows).
    static TILE: RefCell<Vec<V64>> = const { RefCell::new(Vec::new()) };
}

/// A K-quant block as the tiled kernel sees it.
pub(super) trait TiledK: KQuant {
    /// Elements per sub-block with its own scale (32 or 16).
    const SUB: usize;
    /// True for Q6_K: the bsum term is `-32 * sum(sc * bsum)` in integers; otherwise it is
    /// `-dmin * sum(m * bsum)` in floats.
    const OFFSET32: bool;
    /// The super-block scales `d` and `dmin` (0 for Q6_K).
    fn d(&self) -> (Half, Half);
    /// Per-lane sub-block scales (`out[SC + j]`) and bsum-pair weights (`out[BW + j]`, two
    /// i16 per lane) of 16 rows.
    ///
    /// # Safety
    /// The CPU must support the kernels' features.
    unsafe fn repack_scales(rows: &[&Self; ROWS], out: &mut [V64]);
    /// The 64 k-step vectors of one super-block of 16 rows.
    ///
    /// # Safety
    /// The CPU must support the kernels' features.
    unsafe fn repack_q(rows: &[&Self; ROWS], out: &mut [V64]);
}

/// Q4_K / Q5_K quants (4 low bits; `qh` adds bit 4 for Q5_K): for each 64-element chunk `c`,
/// bytes `32c..32c+32` of `qs` hold elements `64c..64c+32` (low nibbles) and `+32` (high).
///
/// # Safety
/// The CPU must support the kernels' features.
#[inline(always)]
unsafe fn repack_k4<W>(
    rows: &[&W; ROWS],
    qs: fn(&W) -> &[u8],
    qh: Option<fn(&W) -> &[u8]>,
    out: &mut [V64],
) {
    let m4 = _mm512_set1_epi8(0x0F);
    let bit4 = _mm512_set1_epi8(0x10);
    // SAFETY (all t16 calls): the caller's CPU guarantee; offsets stay inside the fields.
    let h = qh.map(|f| unsafe { [t16(rows, f, 0), t16(rows, f, 16)] });
    for c in 0..4 {
        for half in 0..2 {
            let v = unsafe { t16(rows, qs, 32 * c + 16 * half) };
            for k in 0..4 {
                let mut lo = _mm512_and_si512(v[k], m4);
                let mut hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v[k]), m4);
                if let Some(h) = &h {
                    // Element 32j + l has bit j of qh[l]; here l = 16 half + 4k + (0..4).
                    let hv = h[half][k];
                    let m = _mm512_test_epi8_mask(hv, _mm512_set1_epi8(1 << (2 * c)));
                    lo = _mm512_or_si512(lo, _mm512_maskz_mov_epi8(m, bit4));
                    let m = _mm512_test_epi8_mask(hv, _mm512_set1_epi8(1 << (2 * c + 1)));
                    hi = _mm512_or_si512(hi, _mm512_maskz_mov_epi8(m, bit4));
                }
                put(&mut out[16 * c + 4 * half + k], lo);
                put(&mut out[16 * c + 8 + 4 * half + k], hi);
            }
        }
    }
}

/// `(v >> (8 * byte + shift)) & mask` in every 32-bit lane.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn bits(v: __m512i, byte: u32, shift: u32, mask: i32) -> __m512i {
    let n = _mm_cvtsi32_si128((8 * byte + shift) as i32);
    _mm512_and_si512(_mm512_srl_epi32(v, n), _mm512_set1_epi32(mask))
}

/// Q4_K / Q5_K: the 12 `scales` bytes of 16 rows decoded in lanes (as `scale_min_k4`): each
/// 6-bit min weights both 16-element bsums of its sub-block.
///
/// # Safety
/// The CPU must support the kernels' features.
#[inline(always)]
unsafe fn k4_scales<W>(rows: &[&W; ROWS], scales: fn(&W) -> &[u8], out: &mut [V64]) {
    // Bytes 0..4, 4..8, 8..12 of every row's scales (plus 4 bytes past them, unused).
    // SAFETY: the caller's CPU guarantee; `scales` returns at least 16 bytes.
    let [v0, v1, v2, _] = unsafe { t16(rows, scales, 0) };
    for j in 0..4u32 {
        let sc = bits(v0, j, 0, 63);
        let m = bits(v1, j, 0, 63);
        let sc_hi = _mm512_or_si512(
            bits(v2, j, 0, 0xF),
            _mm512_slli_epi32::<4>(bits(v0, j, 6, 3)),
        );
        let m_hi = _mm512_or_si512(
            bits(v2, j, 4, 0xF),
            _mm512_slli_epi32::<4>(bits(v1, j, 6, 3)),
        );
        for (k, sc, m) in [(j, sc, m), (j + 4, sc_hi, m_hi)] {
            put(&mut out[SC + k as usize], sc);
            put(
                &mut out[BW + k as usize],
                _mm512_or_si512(m, _mm512_slli_epi32::<16>(m)),
            );
        }
    }
}

/// Q4_K and Q5_K (`$qh`: the Q5_K high-bit field, if any).
macro_rules! tiled_k4 {
    ($ty:ty, $qh:expr) => {
        impl TiledK for $ty {
            const SUB: usize = 32;
            const OFFSET32: bool = false;
            fn d(&self) -> (Half, Half) {
                (self.d, self.dmin)
            }
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
            unsafe fn repack_scales(rows: &[&Self; ROWS], out: &mut [V64]) {
                // SAFETY: the caller's CPU guarantee; the 12 `scales` bytes start at byte 4,
                // and the block has 16 bytes from there.
                unsafe { k4_scales(rows, |b| &bytemuck::bytes_of(b)[4..20], out) }
            }
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
            unsafe fn repack_q(rows: &[&Self; ROWS], out: &mut [V64]) {
                // SAFETY: the caller's CPU guarantee.
                unsafe { repack_k4(rows, |b| &b.qs[..], $qh, out) }
            }
        }
    };
}
tiled_k4!(BlockQ4K, None);
tiled_k4!(BlockQ5K, Some(|b: &BlockQ5K| &b.qh[..]));

impl TiledK for BlockQ6K {
    const SUB: usize = 16;
    const OFFSET32: bool = true;
    fn d(&self) -> (Half, Half) {
        (self.d, Half::ZERO)
    }
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn repack_scales(rows: &[&Self; ROWS], out: &mut [V64]) {
        // SAFETY: the caller's CPU guarantee; `scales` is 16 bytes.
        let v = unsafe { t16(rows, |b| bytemuck::cast_slice(&b.scales[..]), 0) };
        let mut sc = [_mm512_setzero_si512(); 16];
        for (j, s) in sc.iter_mut().enumerate() {
            // Byte j % 4 of dword j / 4, sign-extended.
            let shl = _mm_cvtsi32_si128(24 - 8 * (j % 4) as i32);
            *s = _mm512_srai_epi32::<24>(_mm512_sll_epi32(v[j / 4], shl));
            put(&mut out[SC + j], *s);
        }
        for i in 0..8 {
            let lo = _mm512_and_si512(sc[2 * i], _mm512_set1_epi32(0xFFFF));
            put(
                &mut out[BW + i],
                _mm512_or_si512(lo, _mm512_slli_epi32::<16>(sc[2 * i + 1])),
            );
        }
    }
    /// Per 128 elements (half `h`): `ql` bytes `64h + l` hold elements `l` (low nibble) and
    /// `l + 64` (high), bytes `64h + 32 + l` elements `l + 32` and `l + 96`; `qh` byte
    /// `32h + l` holds the two high bits of `l`, `l + 32`, `l + 64`, `l + 96` at shifts 0..6.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn repack_q(rows: &[&Self; ROWS], out: &mut [V64]) {
        let m4 = _mm512_set1_epi8(0x0F);
        let m30 = _mm512_set1_epi8(0x30);
        for h in 0..2 {
            for m in 0..2 {
                // SAFETY (t16): the caller's CPU guarantee; offsets inside `ql` / `qh`.
                let (a, b, hb) = unsafe {
                    (
                        t16(rows, |x| &x.ql[..], 64 * h + 16 * m),
                        t16(rows, |x| &x.ql[..], 64 * h + 32 + 16 * m),
                        t16(rows, |x| &x.qh[..], 32 * h + 16 * m),
                    )
                };
                for k in 0..4 {
                    // The two high bits of quarter q (shift 2q) moved to bits 4..6.
                    let hv = hb[k];
                    let h0 = _mm512_and_si512(_mm512_slli_epi16::<4>(hv), m30);
                    let h1 = _mm512_and_si512(_mm512_slli_epi16::<2>(hv), m30);
                    let h2 = _mm512_and_si512(hv, m30);
                    let h3 = _mm512_and_si512(_mm512_srli_epi16::<2>(hv), m30);
                    let lo_a = _mm512_and_si512(a[k], m4);
                    let lo_b = _mm512_and_si512(b[k], m4);
                    let hi_a = _mm512_and_si512(_mm512_srli_epi16::<4>(a[k]), m4);
                    let hi_b = _mm512_and_si512(_mm512_srli_epi16::<4>(b[k]), m4);
                    // Elements 128h + 32q + 16m + 4k: k-step 32h + 8q + 4m + k.
                    let s = 32 * h + 4 * m + k;
                    put(&mut out[s], _mm512_or_si512(lo_a, h0));
                    put(&mut out[s + 8], _mm512_or_si512(lo_b, h1));
                    put(&mut out[s + 16], _mm512_or_si512(hi_a, h2));
                    put(&mut out[s + 24], _mm512_or_si512(hi_b, h3));
                }
            }
        }
    }
}

/// Repacks super-block `i` of rows `r0..r0 + 16` (rows past `n_rows` repeat the last one).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn repack_sb<W: TiledK>(w: &[W], nbk: usize, n_rows: usize, r0: usize, i: usize, out: &mut [V64]) {
    let mut blocks: [&W; ROWS] = [&w[0]; ROWS];
    for (r, b) in blocks.iter_mut().enumerate() {
        *b = &w[(r0 + r).min(n_rows - 1) * nbk + i];
    }
    // SAFETY: CPU features as required by this function.
    unsafe {
        W::repack_q(&blocks, &mut out[..64]);
        W::repack_scales(&blocks, out);
    }
    let mut d = [[0u16; ROWS]; 2];
    for (r, blk) in blocks.iter().enumerate() {
        let (dd, dm) = blk.d();
        d[0][r] = dd.to_bits();
        d[1][r] = dm.to_bits();
    }
    for (slot, d) in [(D, d[0]), (DMIN, d[1])] {
        // SAFETY: 16 u16 = 32 bytes, read unaligned.
        let v = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(d.as_ptr().cast()) });
        put(&mut out[slot], _mm512_castps_si512(v));
    }
}

/// 16 rows x tokens `t0..t0 + T` over `nbk` super-blocks of the tile.
///
/// # Safety
/// CPU features; `tile` holds `nbk` repacked super-blocks; `a` holds tokens `t0..t0 + T`
/// of `nbk` blocks each.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn kernel<W: TiledK, const T: usize>(
    tile: &[V64],
    nbk: usize,
    a: &[BlockQ8K],
    t0: usize,
) -> [__m512; T] {
    debug_assert!(tile.len() >= nbk * SB_VECS && a.len() >= (t0 + T) * nbk);
    let steps = W::SUB / 4;
    let mut acc = [_mm512_setzero_ps(); T];
    for i in 0..nbk {
        let sb = &tile[i * SB_VECS..(i + 1) * SB_VECS];
        let mut ys: [&BlockQ8K; T] = [&a[0]; T];
        for (t, y) in ys.iter_mut().enumerate() {
            *y = &a[(t0 + t) * nbk + i];
        }
        let mut isum = [_mm512_setzero_si512(); T];
        for j in 0..QK_K / W::SUB {
            let mut p = [_mm512_setzero_si512(); T];
            for k in 0..steps {
                let w = get(&sb[j * steps + k]);
                for (p, y) in p.iter_mut().zip(&ys) {
                    // SAFETY: bytes W::SUB * j + 4k .. + 4 of the 256 quants.
                    let yv = unsafe {
                        y.qs.as_ptr()
                            .add(W::SUB * j + 4 * k)
                            .cast::<i32>()
                            .read_unaligned()
                    };
                    *p = _mm512_dpbusd_epi32(*p, w, _mm512_set1_epi32(yv));
                }
            }
            let sc = get(&sb[SC + j]);
            for (s, p) in isum.iter_mut().zip(p) {
                *s = _mm512_add_epi32(*s, _mm512_mullo_epi32(p, sc));
            }
        }
        let mut bsum = [_mm512_setzero_si512(); T];
        for j in 0..8 {
            let bw = get(&sb[BW + j]);
            for (b, y) in bsum.iter_mut().zip(&ys) {
                let pair = u32::from_le_bytes([
                    y.bsums[2 * j][0],
                    y.bsums[2 * j][1],
                    y.bsums[2 * j + 1][0],
                    y.bsums[2 * j + 1][1],
                ]);
                *b = _mm512_dpwssd_epi32(*b, bw, _mm512_set1_epi32(pair as i32));
            }
        }
        let d = _mm512_castsi512_ps(get(&sb[D]));
        let dmin = _mm512_castsi512_ps(get(&sb[DMIN]));
        for ((acc, (s, b)), y) in acc.iter_mut().zip(isum.into_iter().zip(bsum)).zip(&ys) {
            let yd = _mm512_set1_ps(y.d());
            if W::OFFSET32 {
                let s = _mm512_sub_epi32(s, _mm512_slli_epi32::<5>(b));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(d, yd), *acc);
            } else {
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(d, yd), *acc);
                *acc = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(b), _mm512_mul_ps(dmin, yd), *acc);
            }
        }
    }
    acc
}

/// K-quant rows x tokens, 16 rows at a time.
///
/// # Safety
/// The CPU must support the kernels' features; `w` holds `n_rows` rows of `nbk` blocks and
/// `a` holds `n_tok` rows of `nbk` Q8_K blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn rows_tiled_k<W: TiledK, F: FnMut(usize, usize, &[f32])>(
    w: &[W],
    n_rows: usize,
    a: &[BlockQ8K],
    n_tok: usize,
    sink: &mut F,
) {
    if n_rows == 0 {
        return;
    }
    let nbk = w.len() / n_rows;
    TILE.with(|tile| {
        let mut tile = tile.borrow_mut();
        tile.resize(nbk * SB_VECS, V64([0; 64]));
        for r0 in (0..n_rows).step_by(ROWS) {
            for i in 0..nbk {
                repack_sb(
                    w,
                    nbk,
                    n_rows,
                    r0,
                    i,
                    &mut tile[i * SB_VECS..(i + 1) * SB_VECS],
                );
            }
            let n = (n_rows - r0).min(ROWS);
            let mut emit = |v: &[__m512], t0: usize| {
                for (t, &v) in v.iter().enumerate() {
                    let mut o = [0.0f32; ROWS];
                    // SAFETY: `o` is 16 f32, written unaligned.
                    unsafe { _mm512_storeu_ps(o.as_mut_ptr(), v) };
                    sink(r0, t0 + t, &o[..n]);
                }
            };
            macro_rules! run {
                ($t:expr, $t0:expr) => {{
                    // SAFETY: tokens t0..t0 + T < n_tok; the rest as this function requires.
                    let v = unsafe { kernel::<W, $t>(&tile, nbk, a, $t0) };
                    emit(&v, $t0);
                }};
            }
            let mut t = 0;
            while t + TOK <= n_tok {
                run!(TOK, t);
                t += TOK;
            }
            match n_tok - t {
                0 => {}
                1 => run!(1, t),
                2 => run!(2, t),
                3 => run!(3, t),
                4 => run!(4, t),
                5 => run!(5, t),
                6 => run!(6, t),
                _ => run!(7, t),
            }
        }
    });
}
