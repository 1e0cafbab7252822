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
use super::tiled::{get, put, V64};
use crate::kquants::{scale_min_k4, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K};
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
    /// Per row: the sub-block scales, the 8 bsum-pair weights (two i16 in a u32), d, dmin.
    fn scales(&self) -> ([i32; 16], [u32; 8], f32, f32);
}

fn pair(a: i16, b: i16) -> u32 {
    (a as u16 as u32) | ((b as u16 as u32) << 16)
}

/// Scales and mins of Q4_K / Q5_K: mins weight both 16-element bsums of their sub-block.
fn k4_scales(scales: &[u8; 12], d: f32, dmin: f32) -> ([i32; 16], [u32; 8], f32, f32) {
    let mut sc = [0i32; 16];
    let mut bw = [0u32; 8];
    for j in 0..8 {
        let (s, m) = scale_min_k4(j, scales);
        sc[j] = s as i32;
        bw[j] = pair(m as i16, m as i16);
    }
    (sc, bw, d, dmin)
}

impl TiledK for BlockQ4K {
    const SUB: usize = 32;
    const OFFSET32: bool = false;
    fn scales(&self) -> ([i32; 16], [u32; 8], f32, f32) {
        k4_scales(&self.scales, self.d.to_f32(), self.dmin.to_f32())
    }
}

impl TiledK for BlockQ5K {
    const SUB: usize = 32;
    const OFFSET32: bool = false;
    fn scales(&self) -> ([i32; 16], [u32; 8], f32, f32) {
        k4_scales(&self.scales, self.d.to_f32(), self.dmin.to_f32())
    }
}

impl TiledK for BlockQ6K {
    const SUB: usize = 16;
    const OFFSET32: bool = true;
    fn scales(&self) -> ([i32; 16], [u32; 8], f32, f32) {
        let sc = self.scales.map(|s| s as i32);
        let bw =
            std::array::from_fn(|i| pair(self.scales[2 * i] as i16, self.scales[2 * i + 1] as i16));
        (sc, bw, self.d.to_f32(), 0.0)
    }
}

/// Transposes 16 rows of 16 bytes (4 dwords each): vector `k` holds dword `k` of row `i` in
/// lane `i` (as `tiled::transpose16x4`, from a row-major staging buffer).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn transpose_staged(stage: &[V64; ROWS * 4], off: usize) -> [__m512i; 4] {
    let x: [__m128i; ROWS] = std::array::from_fn(|i| {
        // SAFETY: bytes off..off + 16 (off <= 240) of row i's 256 staged bytes.
        unsafe { _mm_loadu_si128(stage[4 * i].0.as_ptr().add(off).cast()) }
    });
    super::tiled::transpose16x4(x)
}

/// Repacks super-block `i` of rows `r0..r0 + 16` (rows past `n_rows` repeat the last one).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn repack_sb<W: TiledK>(w: &[W], nbk: usize, n_rows: usize, r0: usize, i: usize, out: &mut [V64]) {
    let mut stage = [V64([0; 64]); ROWS * 4];
    let mut sc = [[0i32; ROWS]; 16];
    let mut bw = [[0u32; ROWS]; 8];
    let mut d = [[0f32; ROWS]; 2];
    for r in 0..ROWS {
        let blk = &w[(r0 + r).min(n_rows - 1) * nbk + i];
        // SAFETY: CPU features as required by this function.
        let u = unsafe { blk.unpack() };
        for (k, q) in u.q.into_iter().enumerate() {
            put(&mut stage[4 * r + k], q);
        }
        let (s, b, dd, dm) = blk.scales();
        for j in 0..16 {
            sc[j][r] = s[j];
        }
        for j in 0..8 {
            bw[j][r] = b[j];
        }
        d[0][r] = dd;
        d[1][r] = dm;
    }
    for g in 0..16 {
        for (k, v) in transpose_staged(&stage, 16 * g).into_iter().enumerate() {
            put(&mut out[4 * g + k], v);
        }
    }
    let lanes = |dst: &mut V64, v: [u32; ROWS]| {
        // SAFETY: 16 u32 = 64 bytes, read unaligned.
        put(dst, unsafe { _mm512_loadu_si512(v.as_ptr().cast()) })
    };
    for (j, s) in sc.iter().enumerate().take(QK_K / W::SUB) {
        lanes(&mut out[SC + j], s.map(|v| v as u32));
    }
    for (j, b) in bw.iter().enumerate() {
        lanes(&mut out[BW + j], *b);
    }
    lanes(&mut out[D], d[0].map(f32::to_bits));
    lanes(&mut out[DMIN], d[1].map(f32::to_bits));
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
        let ys: [&BlockQ8K; T] = std::array::from_fn(|t| &a[(t0 + t) * nbk + i]);
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
