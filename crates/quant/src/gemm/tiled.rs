//! Register-tiled AVX-512 VNNI kernels for the legacy types: 16 weight rows x several tokens
//! per inner loop, for prefill and batched decode.
//!
//! A tile of 16 weight rows is repacked once (per call) into "k-step" vectors: vector `k` of
//! block `b` holds elements `4k..4k+4` of that block for each of the 16 rows as unsigned bytes,
//! one row per 32-bit lane. One `vpdpbusd` of such a vector with a token's 4 activation bytes
//! broadcast to every lane then advances 16 row dot products at once, so the inner loop is a
//! weight load from L1 shared by all tokens of the group plus one instruction per token, and
//! the scales are applied per block to 16 rows with one multiply and one FMA.
//!
//! Two accumulation schemes:
//!
//! - Q4_0, Q5_0, Q8_0 (weights with an offset `2^k`, no min): the 8 k-steps of a block go into
//!   one integer accumulator started at `-2^k * sum(y)` (`QActs::ycorr`), so each block's
//!   integer dot is exact, then one float FMA per block. No golden test pins their float order.
//! - Q4_1, Q5_1: llama.cpp's x86 vec-dot order, bit for bit. Its 8 float lanes are exactly the
//!   k-steps here (lane `k` sums elements `4k..4k+4`), so each (row, token) keeps 8 float
//!   accumulators (8 vectors of 16 rows per token), fed block after block with
//!   `fma(dx * dy, float(k-step dot), acc_k)`, the `m * s` terms summed separately in block
//!   order, and the 8 accumulators added in `hsum_float_8`'s order at the end.

use super::avx512::{unroll4, Legacy};
use super::QActs;
use crate::fp::Half;
use crate::legacy::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, QK};
use std::arch::x86_64::*;
use std::cell::RefCell;

/// Weight rows per tile: one per 32-bit lane of a 512-bit vector.
pub(super) const ROWS: usize = 16;

/// Tokens per group in the integer-accumulating kernel (16 accumulators in registers).
const TOK_FUSED: usize = 8;
/// Tokens per group in llama.cpp's order (8 accumulators per token).
const TOK_ORDERED: usize = 2;

/// 64 bytes, aligned for full-vector loads.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct V64(pub(super) [u8; 64]);

impl V64 {
    const ZERO: V64 = V64([0; 64]);
}

/// One repacked tile: per block, 8 k-step vectors, the 16 rows' `d` and `m` as f32.
#[derive(Default)]
struct Tile {
    q: Vec<V64>,
    d: Vec<V64>,
    m: Vec<V64>,
}

thread_local! {
    /// Per-thread tile scratch (buffers only grow).
    static TILE: RefCell<Tile> = RefCell::new(Tile::default());
}

/// A legacy block as the tiled kernels see it (scales and offsets from [`Legacy`]).
pub(super) trait TiledLegacy: Legacy {
    /// The 8 k-step vectors of one block of 16 rows (`rows[i]` is row i's block).
    ///
    /// # Safety
    /// The CPU must support the kernels' features.
    unsafe fn repack(rows: &[&Self; ROWS], out: &mut [V64]);
}

/// Bytes `off..off + 16` of a field of 16 blocks, transposed: vector `k` holds bytes
/// `off + 4k..off + 4k + 4` of row `i` in lane `i`. The rows are loaded straight into 512-bit
/// registers (a 16-byte array on the stack read back as 64 bytes would stall store forwarding).
///
/// # Safety
/// The CPU must support the kernels' features.
#[inline(always)]
pub(super) unsafe fn load_t16<W>(
    rows: &[&W; ROWS],
    field: fn(&W) -> &[u8],
    off: usize,
) -> [__m512i; 4] {
    macro_rules! ld {
        ($i:expr) => {{
            let f = &field(rows[$i])[off..off + 16];
            // (Inside the unsafe block below: `f` is 16 bytes, read unaligned.)
            _mm_loadu_si128(f.as_ptr().cast())
        }};
    }
    // SAFETY: the caller's CPU guarantee (AVX-512 F); each load reads the 16 bytes of a
    // field slice, unaligned.
    unsafe {
        // a[j] lane l = row 4l + j.
        let a: [__m512i; 4] = unroll4!(|j| {
            let v = _mm512_castsi128_si512(ld!(j));
            let v = _mm512_inserti32x4::<1>(v, ld!(4 + j));
            let v = _mm512_inserti32x4::<2>(v, ld!(8 + j));
            _mm512_inserti32x4::<3>(v, ld!(12 + j))
        });
        // A 4x4 dword transpose inside every 128-bit lane: out[k] lane l dword j = a[j] lane
        // l dword k = dword k of row 4l + j.
        let t0 = _mm512_unpacklo_epi32(a[0], a[1]);
        let t1 = _mm512_unpackhi_epi32(a[0], a[1]);
        let t2 = _mm512_unpacklo_epi32(a[2], a[3]);
        let t3 = _mm512_unpackhi_epi32(a[2], a[3]);
        [
            _mm512_unpacklo_epi64(t0, t2),
            _mm512_unpackhi_epi64(t0, t2),
            _mm512_unpacklo_epi64(t1, t3),
            _mm512_unpackhi_epi64(t1, t3),
        ]
    }
}

/// Stores a vector into a tile slot.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn put(dst: &mut V64, v: __m512i) {
    // SAFETY: `dst` is 64 aligned bytes.
    unsafe { _mm512_store_si512(dst.0.as_mut_ptr().cast(), v) }
}

/// Loads a tile slot.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn get(src: &V64) -> __m512i {
    // SAFETY: `src` is 64 aligned bytes.
    unsafe { _mm512_load_si512(src.0.as_ptr().cast()) }
}

/// Low and high nibbles of 16 rows' 16 `qs` bytes: k-steps 0..4 and 4..8.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn nibble_steps(v: [__m512i; 4]) -> [__m512i; 8] {
    let m4 = _mm512_set1_epi8(0x0F);
    let mut q = [_mm512_setzero_si512(); 8];
    for k in 0..4 {
        q[k] = _mm512_and_si512(v[k], m4);
        q[k + 4] = _mm512_and_si512(_mm512_srli_epi16::<4>(v[k]), m4);
    }
    q
}

/// Adds bit 4 (`qh` bit `e` for element `e`, little-endian u32 per row) to the k-steps.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn add_high_bits(q: &mut [__m512i; 8], h: [u32; ROWS]) {
    // SAFETY: `h` is 16 u32 = 64 bytes, read unaligned.
    let hv = unsafe { _mm512_loadu_si512(h.as_ptr().cast()) };
    let bit4 = _mm512_set1_epi8(0x10);
    for (k, q) in q.iter_mut().enumerate() {
        // Bits 4k..4k+4 of each row's qh: byte k/2, nibble k%2, copied to the dword's 4 bytes.
        let sel = _mm512_add_epi8(
            _mm512_set1_epi8((k / 2) as i8),
            _mm512_set4_epi32(0x0C0C_0C0C, 0x0808_0808, 0x0404_0404, 0),
        );
        let s = (4 * (k % 2)) as u32;
        let pat = _mm512_set1_epi32(i32::from_le_bytes([1u8 << s, 2u8 << s, 4u8 << s, 8u8 << s]));
        let mask = _mm512_test_epi8_mask(_mm512_shuffle_epi8(hv, sel), pat);
        *q = _mm512_or_si512(*q, _mm512_maskz_mov_epi8(mask, bit4));
    }
}

/// Store 8 k-step vectors.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn put8(out: &mut [V64], q: [__m512i; 8]) {
    for (o, v) in out.iter_mut().zip(q) {
        put(o, v);
    }
}

/// Q4_0 / Q4_1: the nibbles; Q5_0 / Q5_1: plus bit 4 from `qh`.
macro_rules! tiled_nibbles {
    ($($ty:ty),*; $($ty5:ty),*) => {
        $(impl TiledLegacy for $ty {
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
            unsafe fn repack(rows: &[&Self; ROWS], out: &mut [V64]) {
                // SAFETY: the caller's CPU guarantee.
                put8(out, nibble_steps(unsafe { load_t16(rows, |b| &b.qs[..], 0) }));
            }
        })*
        $(impl TiledLegacy for $ty5 {
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
            unsafe fn repack(rows: &[&Self; ROWS], out: &mut [V64]) {
                // SAFETY: the caller's CPU guarantee.
                let mut q = nibble_steps(unsafe { load_t16(rows, |b| &b.qs[..], 0) });
                let mut qh = [0u32; ROWS];
                for (h, b) in qh.iter_mut().zip(rows) {
                    *h = u32::from_le_bytes(b.qh);
                }
                add_high_bits(&mut q, qh);
                put8(out, q);
            }
        })*
    };
}
tiled_nibbles!(BlockQ4_0, BlockQ4_1; BlockQ5_0, BlockQ5_1);

impl TiledLegacy for BlockQ8_0 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn repack(rows: &[&Self; ROWS], out: &mut [V64]) {
        let flip = _mm512_set1_epi8(-128);
        for h in 0..2 {
            // SAFETY: the caller's CPU guarantee.
            let x = unsafe { load_t16(rows, |b| bytemuck::cast_slice(&b.qs[..]), 16 * h) };
            for (k, v) in x.into_iter().enumerate() {
                // q + 128 as unsigned bytes.
                put(&mut out[4 * h + k], _mm512_xor_si512(v, flip));
            }
        }
    }
}

/// 16 f16 values widened to a tile slot.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn put_halves<W>(dst: &mut V64, rows: &[&W; ROWS], field: impl Fn(&W) -> Half) {
    let mut bits = [0u16; ROWS];
    for (b, r) in bits.iter_mut().zip(rows) {
        *b = field(r).to_bits();
    }
    // SAFETY: `bits` is 16 u16 = 32 bytes, read unaligned; `dst` is 64 aligned bytes.
    unsafe {
        let v = _mm512_cvtph_ps(_mm256_loadu_si256(bits.as_ptr().cast()));
        _mm512_store_ps(dst.0.as_mut_ptr().cast(), v);
    }
}

/// Repacks rows `r0..r0 + 16` (rows past `n_rows` repeat the last one) of `w` (`nb` blocks per
/// row) into `tile`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn repack_tile<W: TiledLegacy>(w: &[W], nb: usize, n_rows: usize, r0: usize, tile: &mut Tile) {
    tile.q.resize(8 * nb, V64::ZERO);
    tile.d.resize(nb, V64::ZERO);
    tile.m.resize(nb, V64::ZERO);
    let row = |i: usize| (r0 + i).min(n_rows - 1) * nb;
    let mut blocks: [&W; ROWS] = [&w[0]; ROWS];
    for b in 0..nb {
        for (i, blk) in blocks.iter_mut().enumerate() {
            *blk = &w[row(i) + b];
        }
        // SAFETY: CPU features as required by this function.
        unsafe { W::repack(&blocks, &mut tile.q[8 * b..8 * b + 8]) };
        put_halves(&mut tile.d[b], &blocks, W::d);
        if W::SHIFT == 0 {
            put_halves(&mut tile.m[b], &blocks, W::m);
        }
    }
}

/// Broadcasts activation bytes `4k..4k+4` of block `b` of a token whose quants start at `y`.
///
/// # Safety
/// `y + 32b + 4k + 4` must be inside the token's quants.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn y4(y: *const i8, b: usize, k: usize) -> __m512i {
    // SAFETY: the caller's guarantee.
    _mm512_set1_epi32(unsafe { y.add(QK * b + 4 * k).cast::<i32>().read_unaligned() })
}

/// Where the quants of tokens `t0..t0 + T` start.
#[inline(always)]
fn token_ptrs<const T: usize>(a: &QActs, t0: usize) -> [*const i8; T] {
    let mut ys = [std::ptr::null(); T];
    for (t, y) in ys.iter_mut().enumerate() {
        *y = a.qs[(t0 + t) * a.cols..].as_ptr();
    }
    ys
}

/// 16 rows x tokens `t0..t0 + T`, integer accumulation per block (types with an offset).
///
/// # Safety
/// CPU features; `tile` holds `nb` repacked blocks; `a` is expanded for the type with
/// `nb * 32` columns and holds tokens `t0..t0 + T`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn fused<const T: usize>(tile: &Tile, nb: usize, a: &QActs, t0: usize) -> [__m512; T] {
    debug_assert!(tile.q.len() >= 8 * nb && tile.d.len() >= nb && t0 + T <= a.n_tok);
    debug_assert!(a.qs.len() >= a.n_tok * a.cols && a.ycorr.len() >= a.n_tok * nb);
    let ys = token_ptrs::<T>(a, t0);
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..nb {
        let mut isum = [_mm512_setzero_si512(); T];
        for (t, s) in isum.iter_mut().enumerate() {
            *s = _mm512_set1_epi32(a.ycorr[(t0 + t) * nb + b]);
        }
        for k in 0..8 {
            let w = get(&tile.q[8 * b + k]);
            for (s, &y) in isum.iter_mut().zip(&ys) {
                // SAFETY: block b < nb of a token row of nb * 32 quants.
                *s = _mm512_dpbusd_epi32(*s, w, unsafe { y4(y, b, k) });
            }
        }
        let dv = _mm512_castsi512_ps(get(&tile.d[b]));
        for (t, (acc, s)) in acc.iter_mut().zip(isum).enumerate() {
            let dd = _mm512_mul_ps(dv, _mm512_set1_ps(a.dy[(t0 + t) * nb + b]));
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), dd, *acc);
        }
    }
    acc
}

/// 16 rows x tokens `t0..t0 + T` in llama.cpp's float order (types with a min).
///
/// # Safety
/// As [`fused`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn ordered<const T: usize>(tile: &Tile, nb: usize, a: &QActs, t0: usize) -> [__m512; T] {
    debug_assert!(tile.q.len() >= 8 * nb && tile.m.len() >= nb && t0 + T <= a.n_tok);
    debug_assert!(a.qs.len() >= a.n_tok * a.cols && a.s.len() >= a.n_tok * nb);
    let ys = token_ptrs::<T>(a, t0);
    let mut acc = [[_mm512_setzero_ps(); 8]; T];
    let mut ms = [_mm512_setzero_ps(); T];
    for b in 0..nb {
        let dv = _mm512_castsi512_ps(get(&tile.d[b]));
        let mut dd = [_mm512_setzero_ps(); T];
        for (t, dd) in dd.iter_mut().enumerate() {
            *dd = _mm512_mul_ps(dv, _mm512_set1_ps(a.dy[(t0 + t) * nb + b]));
        }
        for k in 0..8 {
            let w = get(&tile.q[8 * b + k]);
            for ((acc, &y), &dd) in acc.iter_mut().zip(&ys).zip(&dd) {
                // SAFETY: block b < nb of a token row of nb * 32 quants.
                let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, unsafe { y4(y, b, k) });
                acc[k] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(p), acc[k]);
            }
        }
        let mv = _mm512_castsi512_ps(get(&tile.m[b]));
        for (t, ms) in ms.iter_mut().enumerate() {
            let s = _mm512_set1_ps(a.s[(t0 + t) * nb + b]);
            *ms = _mm512_add_ps(*ms, _mm512_mul_ps(mv, s));
        }
    }
    let mut out = [_mm512_setzero_ps(); T];
    for ((o, a), ms) in out.iter_mut().zip(&acc).zip(ms) {
        // hsum_float_8: ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)), then + summs.
        let lo = _mm512_add_ps(_mm512_add_ps(a[0], a[4]), _mm512_add_ps(a[2], a[6]));
        let hi = _mm512_add_ps(_mm512_add_ps(a[1], a[5]), _mm512_add_ps(a[3], a[7]));
        *o = _mm512_add_ps(_mm512_add_ps(lo, hi), ms);
    }
    out
}

/// Sends lanes `0..n` of each token's result vector.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn emit<const T: usize, F: FnMut(usize, usize, &[f32])>(
    v: [__m512; T],
    r0: usize,
    n: usize,
    t0: usize,
    sink: &mut F,
) {
    for (t, v) in v.into_iter().enumerate() {
        let mut o = [0.0f32; ROWS];
        // SAFETY: `o` is 16 f32, written unaligned.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), v) };
        sink(r0, t0 + t, &o[..n]);
    }
}

/// One tile (16 rows from `r0`, `n` of them real) against every token of `a`.
///
/// # Safety
/// As [`fused`], for all tokens.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile_tokens<W: TiledLegacy, F: FnMut(usize, usize, &[f32])>(
    tile: &Tile,
    nb: usize,
    a: &QActs,
    r0: usize,
    n: usize,
    sink: &mut F,
) {
    macro_rules! run {
        ($kernel:ident, $t:expr, $t0:expr) => {{
            // SAFETY: tokens t0..t0 + T < n_tok; the rest as this function requires.
            let v = unsafe { $kernel::<$t>(tile, nb, a, $t0) };
            emit(v, r0, n, $t0, sink);
        }};
    }
    let n_tok = a.n_tok;
    let mut t = 0;
    if W::SHIFT != 0 {
        while t + TOK_FUSED <= n_tok {
            run!(fused, TOK_FUSED, t);
            t += TOK_FUSED;
        }
        match n_tok - t {
            0 => {}
            1 => run!(fused, 1, t),
            2 => run!(fused, 2, t),
            3 => run!(fused, 3, t),
            4 => run!(fused, 4, t),
            5 => run!(fused, 5, t),
            6 => run!(fused, 6, t),
            _ => run!(fused, 7, t),
        }
    } else {
        while t + TOK_ORDERED <= n_tok {
            run!(ordered, TOK_ORDERED, t);
            t += TOK_ORDERED;
        }
        if t < n_tok {
            run!(ordered, 1, t);
        }
    }
}

/// Legacy-type rows x tokens, 16 rows at a time.
///
/// # Safety
/// The CPU must support the kernels' features; `w` holds `n_rows` rows of `a.cols`
/// elements of `W`, and `a` was prepared and expanded for `W`'s type.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn rows_tiled<W: TiledLegacy, F: FnMut(usize, usize, &[f32])>(
    w: &[W],
    n_rows: usize,
    a: &QActs,
    sink: &mut F,
) {
    let nb = a.cols / QK;
    if n_rows == 0 {
        return;
    }
    TILE.with(|tile| {
        let mut tile = tile.borrow_mut();
        for r0 in (0..n_rows).step_by(ROWS) {
            repack_tile(w, nb, n_rows, r0, &mut tile);
            let n = (n_rows - r0).min(ROWS);
            // SAFETY: the caller's guarantees; the tile holds nb blocks.
            unsafe { tile_tokens::<W, F>(&tile, nb, a, r0, n, sink) };
        }
    });
}
