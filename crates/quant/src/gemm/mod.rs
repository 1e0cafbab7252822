//! Matrix products of quantized weight rows with many activation rows (tokens) at once.
//!
//! The caller quantizes a batch of activation rows once ([`QActs::prepare`]: the bytes are
//! exactly what [`quantize_activations`](crate::quantize_activations) writes, so results keep
//! llama.cpp's activation rounding), then asks for `out[row][token]` over a range of weight rows
//! ([`gemm`]). The kernel is chosen once per call from the weight type and the CPU ([`Isa`]):
//!
//! - AVX-512 VNNI, two tokens or more (prefill, batched decode): register tiles of 16 weight
//!   rows x up to 8 tokens (`tiled.rs` for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0; `tiled_k.rs` for Q4_K,
//!   Q5_K, Q6_K). A tile's weights are repacked once per call so that each 512-bit vector holds
//!   4 consecutive elements of 16 rows; one `vpdpbusd` with a token's 4 activation bytes
//!   broadcast advances 16 dot products, and each weight vector is reused from a register for
//!   every token of the group.
//! - AVX-512 VNNI, one token (decode, `avx512.rs`): each weight row streamed once in memory
//!   order with a software prefetch (pairs of 32-blocks or 64 K-quant elements per step).
//! - Everything else (and every type on CPUs without VNNI, `REALIZAR_ISA=avx2`): the AVX2
//!   kernels of `x86/` (every type with a vec-dot), one weight row against groups of up to 4
//!   tokens, each block unpacked once per group (`typed.rs`); on aarch64 the NEON kernels of
//!   `aarch64/` the same way ([`Isa::NeonDotprod`] with `sdot`, [`Isa::Neon`] without:
//!   `REALIZAR_ISA=neon`); at [`Isa::Scalar`] the scalar reference vec-dots.
//!
//! A token's result can differ in the last bits between the one-token and the tiled kernels
//! (Q4_0, Q5_0, Q8_0 and the K-quants sum in another float order), so with [`Kernels::Fastest`]
//! a sequence decoding alone and the same sequence inside a batch may diverge.
//! [`Kernels::BatchInvariant`] gives every (row, token) one arithmetic whatever the token count:
//! the tiled kernels' (whose per-token arithmetic does not depend on the other tokens of the
//! group), for one token computed by row-streaming kernels in the same order (`invariant.rs`);
//! Q4_1 / Q5_1's one-token kernel already sums in that (llama.cpp's) order, and the AVX2, NEON
//! and scalar kernels compute each (row, token) alike in any group of tokens.
//!
//! Every SIMD kernel is tested against the scalar vec-dot on random data (`tests.rs`, and each
//! architecture's kernel tests).

#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod invariant;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod tiled;
#[cfg(target_arch = "x86_64")]
mod tiled_k;
mod typed;

use crate::legacy::{BlockQ8_0, BlockQ8_1};
use crate::{as_blocks, quantize_activations, vec_dot_type, GgmlType, QuantError};

/// From this many tokens on, the AVX-512 kernels are the register-tiled ones (`tiled.rs`,
/// `tiled_k.rs`); fewer tokens (decode) stream each weight row once.
pub const TILED_MIN_TOK: usize = 2;

/// How [`gemm`] chooses between the one-token and the multi-token kernels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kernels {
    /// The fastest kernel for the token count; a token's result may then depend, in the last
    /// bits, on how many tokens the call has.
    #[default]
    Fastest,
    /// One arithmetic per (row, token) for every token count: a token's result is bit for bit
    /// the same alone or inside any batch (`--deterministic`). Costs single-token decode speed
    /// on the types whose one-token kernel is not already batch-invariant.
    BatchInvariant,
}

/// The instruction-set level of the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Portable code: the scalar reference vec-dots.
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-512 F/BW/VL with VNNI (plus AVX2/FMA/F16C).
    Avx512Vnni,
    /// aarch64 NEON without the dot-product extension (every aarch64 CPU).
    Neon,
    /// aarch64 NEON with the dot-product extension (`sdot`).
    NeonDotprod,
}

/// Every level, best first.
const LEVELS: [Isa; 5] = [
    Isa::Avx512Vnni,
    Isa::Avx2,
    Isa::NeonDotprod,
    Isa::Neon,
    Isa::Scalar,
];

/// Whether this CPU can run the kernels of `isa`.
fn supported(isa: Isa) -> bool {
    match isa {
        Isa::Scalar => true,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => avx512::available(),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => crate::x86::has_avx2(),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => true,
        #[cfg(target_arch = "aarch64")]
        Isa::NeonDotprod => crate::aarch64::has_dotprod(),
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// The best level this CPU supports (detected once). `REALIZAR_ISA=scalar|avx2|neon` lowers
/// it (to compare paths or rule one out; `neon` is NEON without `sdot`).
pub fn detect_isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        let lower = match std::env::var("REALIZAR_ISA").as_deref() {
            Ok("scalar") => Some(Isa::Scalar),
            Ok("avx2") => Some(Isa::Avx2),
            Ok("neon") => Some(Isa::Neon),
            _ => None,
        };
        match lower {
            Some(isa) if supported(isa) => isa,
            _ => best_isa(),
        }
    })
}

fn best_isa() -> Isa {
    LEVELS
        .into_iter()
        .find(|&isa| supported(isa))
        .unwrap_or(Isa::Scalar)
}

/// A batch of activation rows quantized for one weight type. Reused across products (buffers
/// only grow), so the hot loop allocates nothing once sizes settle.
#[derive(Default)]
pub struct QActs {
    wty: Option<GgmlType>,
    cols: usize,
    n_tok: usize,
    row_bytes: usize,
    /// `n_tok` rows of `vec_dot_type(wty)` bytes, as `quantize_activations` writes them.
    raw: Vec<u8>,
    /// Expanded form for the AVX-512 legacy kernels (empty otherwise), per token:
    /// the quants contiguously (`cols` i8) ...
    qs: Vec<i8>,
    /// ... each block's scale repeated 8 times (one per 32-bit lane of its 256 bits) ...
    dexp: Vec<f32>,
    /// ... the block's stored `s` (Q8_1) ...
    s: Vec<f32>,
    /// ... and, for weights with an offset `o = 2^k` (x = d * (q - o)), `-o` times the sums of
    /// each 4 consecutive quants: the initial value of the VNNI accumulator, so the integer
    /// dot comes out exactly `sum((q - o) * y)`.
    yoff: Vec<i32>,
    /// Per block: the scale `d` once ...
    dy: Vec<f32>,
    /// ... and `-o` times the block's quant sum (the tiled kernels' initial accumulator).
    ycorr: Vec<i32>,
    expanded: bool,
    /// The f32 rows these buffers were made from (empty when they are not valid): a product
    /// with the same input and weight type as the last one (q, k and v of a layer; gate and
    /// up) reuses them instead of quantizing again.
    src: Vec<f32>,
}

impl QActs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Tokens in the batch.
    pub fn n_tok(&self) -> usize {
        self.n_tok
    }

    /// Quantize `x` (`n_tok` rows of `cols` f32) for products with weights of type `wty`.
    pub fn prepare(&mut self, wty: GgmlType, x: &[f32], cols: usize) -> Result<(), QuantError> {
        self.prepare_par(wty, x, cols, &|n, f| (0..n).for_each(f))
    }

    /// [`prepare`](Self::prepare) with the tokens spread by `par`: `par(n, f)` must call
    /// `f(i)` once for every `i < n` (from any threads) and return when all calls are done,
    /// as a thread pool's `run` does. The result does not depend on how the calls are spread.
    pub fn prepare_par(
        &mut self,
        wty: GgmlType,
        x: &[f32],
        cols: usize,
        par: Par<'_>,
    ) -> Result<(), QuantError> {
        if cols == 0 || !x.len().is_multiple_of(cols) {
            return Err(QuantError::Length {
                what: "activation rows",
                expected: x.len().next_multiple_of(cols.max(1)),
                got: x.len(),
            });
        }
        if self.wty == Some(wty) && self.cols == cols && same_bits(&self.src, x) {
            return Ok(());
        }
        self.src.clear();
        let n_tok = x.len() / cols;
        let act_ty = vec_dot_type(wty);
        let row_bytes = usize::try_from(act_ty.row_bytes(cols as u64)?)
            .map_err(|_| QuantError::SizeOverflow)?;
        let expanded = legacy_kernel(wty, detect_isa()).is_some();
        self.wty = Some(wty);
        self.cols = cols;
        self.n_tok = n_tok;
        self.row_bytes = row_bytes;
        self.expanded = expanded;
        self.raw.resize(n_tok * row_bytes, 0);
        let nb = cols / 32;
        // Per token: element counts of the expanded buffers (0 when not expanded); the
        // per-lane scales and offsets only for the one-token kernels.
        let ex = |n: usize| if expanded { n } else { 0 };
        let lanes = |n: usize| if n_tok < TILED_MIN_TOK { ex(n) } else { 0 };
        let per_tok = [
            ex(cols),
            lanes(nb * 8),
            ex(nb),
            lanes(nb * 8),
            ex(nb),
            ex(nb),
        ];
        self.qs.resize(n_tok * per_tok[0], 0);
        self.dexp.resize(n_tok * per_tok[1], 0.0);
        self.s.resize(n_tok * per_tok[2], 0.0);
        self.yoff.resize(n_tok * per_tok[3], 0);
        self.dy.resize(n_tok * per_tok[4], 0.0);
        self.ycorr.resize(n_tok * per_tok[5], 0);
        self.src.resize(x.len(), 0.0);
        let shift = offset_shift(wty);
        // Chunks of tokens with their own disjoint pieces of every buffer.
        let n_chunks = n_tok.div_ceil(PREP_CHUNK);
        let mut rest = TokenBufs {
            raw: &mut self.raw,
            qs: &mut self.qs,
            dexp: &mut self.dexp,
            s: &mut self.s,
            yoff: &mut self.yoff,
            dy: &mut self.dy,
            ycorr: &mut self.ycorr,
            src: &mut self.src,
        };
        let chunks: Vec<std::sync::Mutex<TokenBufs>> = (0..n_chunks)
            .map(|c| {
                let n = PREP_CHUNK.min(n_tok - c * PREP_CHUNK);
                std::sync::Mutex::new(rest.split_off(n, row_bytes, cols, &per_tok))
            })
            .collect();
        let failed: std::sync::Mutex<Option<QuantError>> = std::sync::Mutex::new(None);
        par(n_chunks, &|c| {
            let mut bufs = chunks[c].lock().unwrap_or_else(|p| p.into_inner());
            let t0 = c * PREP_CHUNK;
            let res = (0..PREP_CHUNK.min(n_tok - t0)).try_for_each(|i| {
                let mut tok = bufs.split_off(1, row_bytes, cols, &per_tok);
                let xr = &x[(t0 + i) * cols..(t0 + i + 1) * cols];
                quantize_activations(act_ty, xr, tok.raw)?;
                tok.src.copy_from_slice(xr);
                if expanded {
                    tok.expand(act_ty, shift)?;
                }
                Ok(())
            });
            if let Err(e) = res {
                *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            }
        });
        match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => {
                self.src.clear();
                Err(e)
            }
            None => Ok(()),
        }
    }
}

/// Bit for bit equality (so 0.0 and -0.0 differ, and a NaN equals itself).
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    bytemuck::cast_slice::<f32, u32>(a) == bytemuck::cast_slice::<f32, u32>(b)
}

/// A parallel runner: `par(n, f)` calls `f(i)` for every `i < n`, possibly from several
/// threads, and returns when all calls are done.
pub type Par<'a> = &'a dyn Fn(usize, &(dyn Fn(usize) + Sync));

/// Tokens per parallel chunk of [`QActs::prepare_par`].
const PREP_CHUNK: usize = 4;

/// Mutable views of some tokens' parts of the [`QActs`] buffers.
struct TokenBufs<'a> {
    raw: &'a mut [u8],
    qs: &'a mut [i8],
    dexp: &'a mut [f32],
    s: &'a mut [f32],
    yoff: &'a mut [i32],
    dy: &'a mut [f32],
    ycorr: &'a mut [i32],
    src: &'a mut [f32],
}

/// Splits the first `n` elements off `*s`.
fn take<'a, T>(s: &mut &'a mut [T], n: usize) -> &'a mut [T] {
    let n = n.min(s.len());
    let (head, tail) = std::mem::take(s).split_at_mut(n);
    *s = tail;
    head
}

impl<'a> TokenBufs<'a> {
    /// The first `n` tokens' views (`per_tok`: expanded elements per token, as `prepare_par`).
    fn split_off(
        &mut self,
        n: usize,
        row_bytes: usize,
        cols: usize,
        per_tok: &[usize; 6],
    ) -> TokenBufs<'a> {
        TokenBufs {
            raw: take(&mut self.raw, n * row_bytes),
            qs: take(&mut self.qs, n * per_tok[0]),
            dexp: take(&mut self.dexp, n * per_tok[1]),
            s: take(&mut self.s, n * per_tok[2]),
            yoff: take(&mut self.yoff, n * per_tok[3]),
            dy: take(&mut self.dy, n * per_tok[4]),
            ycorr: take(&mut self.ycorr, n * per_tok[5]),
            src: take(&mut self.src, n * cols),
        }
    }

    /// Fills one token's expanded form from its Q8_0 / Q8_1 blocks in `raw`.
    fn expand(&mut self, act_ty: GgmlType, shift: u32) -> Result<(), QuantError> {
        let TokenBufs {
            raw,
            qs,
            dexp,
            s,
            yoff,
            dy,
            ycorr,
            ..
        } = self;
        // The per-lane forms (`dexp`, `yoff`) are empty for batches (tiled kernels only).
        let lanes = !dexp.is_empty();
        let mut put = |b: usize, d: f32, sv: f32, q: &[i8; 32]| {
            qs[32 * b..32 * b + 32].copy_from_slice(q);
            dy[b] = d;
            s[b] = sv;
            let mut total = 0;
            for (k, quad) in q.chunks_exact(4).enumerate() {
                let sum: i32 = quad.iter().map(|&v| v as i32).sum();
                total += sum;
                if lanes {
                    yoff[8 * b + k] = if shift == 0 { 0 } else { -(sum << shift) };
                }
            }
            if lanes {
                dexp[8 * b..8 * b + 8].fill(d);
            }
            ycorr[b] = if shift == 0 { 0 } else { -(total << shift) };
        };
        if act_ty == GgmlType::Q8_1 {
            for (b, blk) in as_blocks::<BlockQ8_1>(raw)?.iter().enumerate() {
                put(b, blk.d.to_f32(), blk.s.to_f32(), &blk.qs);
            }
        } else {
            for (b, blk) in as_blocks::<BlockQ8_0>(raw)?.iter().enumerate() {
                put(b, blk.d.to_f32(), 0.0, &blk.qs);
            }
        }
        Ok(())
    }
}

/// log2 of the offset subtracted from a legacy weight's unsigned quants (0: none).
fn offset_shift(wty: GgmlType) -> u32 {
    match wty {
        GgmlType::Q4_0 => 3,
        GgmlType::Q5_0 => 4,
        GgmlType::Q8_0 => 7, // i8 weights are biased by 128 to be unsigned for VNNI
        _ => 0,
    }
}

/// The AVX-512 legacy kernel family for a weight type, if it has one on this CPU.
fn legacy_kernel(wty: GgmlType, isa: Isa) -> Option<GgmlType> {
    let legacy = matches!(
        wty,
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0
    );
    (isa == Isa::Avx512Vnni && legacy).then_some(wty)
}

/// `sink(r0, t, v)` with `v[i] = dot(weight row r0 + i, activation row t)`, covering every row
/// of `w` (`n_rows` rows of `acts`' weight type and width, back to back) and every token of
/// `acts` once (runs of up to 16 rows). `kernels`: see [`Kernels`].
pub fn gemm(
    wty: GgmlType,
    w: &[u8],
    n_rows: usize,
    acts: &QActs,
    kernels: Kernels,
    sink: impl FnMut(usize, usize, &[f32]),
) -> Result<(), QuantError> {
    gemm_isa(detect_isa(), wty, w, n_rows, acts, kernels, sink)
}

/// [`gemm`] at a given level (tests compare levels; a level this CPU lacks is replaced by its
/// best).
pub fn gemm_isa(
    isa: Isa,
    wty: GgmlType,
    w: &[u8],
    n_rows: usize,
    acts: &QActs,
    kernels: Kernels,
    mut sink: impl FnMut(usize, usize, &[f32]),
) -> Result<(), QuantError> {
    // Only the AVX-512 kernels have a batch-invariant variant of their own.
    #[cfg(not(target_arch = "x86_64"))]
    let _ = kernels;
    if acts.wty != Some(wty) {
        return Err(QuantError::Unsupported {
            op: "gemm with activations prepared for another weight type",
            ty: wty.name(),
        });
    }
    let cols = acts.cols;
    let w_row =
        usize::try_from(wty.row_bytes(cols as u64)?).map_err(|_| QuantError::SizeOverflow)?;
    if w.len() != n_rows * w_row {
        return Err(QuantError::Length {
            what: "weight rows",
            expected: n_rows * w_row,
            got: w.len(),
        });
    }
    let isa = if supported(isa) { isa } else { best_isa() };
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        if legacy_kernel(wty, isa).is_some() && acts.expanded {
            // SAFETY: `detect_isa` found AVX-512 F/BW/VL/VNNI, FMA and F16C; `w` holds
            // `n_rows` rows of `cols` elements of `wty` and `acts` was prepared (expanded) for
            // `wty` and `cols` (both checked above).
            unsafe { avx512::gemm_legacy(wty, w, n_rows, acts, kernels, &mut sink) }?;
            return Ok(());
        }
        if matches!(wty, GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K) {
            // SAFETY: as above; K-quant activations are the raw Q8_K rows.
            unsafe { avx512::gemm_kquant(wty, w, n_rows, acts, kernels, &mut sink) }?;
            return Ok(());
        }
    }
    // Per (row, token) whatever the token count: batch-invariant as it is.
    typed::gemm_typed(isa, wty, w, n_rows, acts, &mut sink)
}
