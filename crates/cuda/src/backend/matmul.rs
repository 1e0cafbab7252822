//! Matrix products on the GPU, three ways, chosen per call:
//!
//! - **mmvq** (decode and small batches, the default): activations quantized once per call to 8
//!   bits in blocks of 32 (`quantize_q8_1`), then integer dot products (dp4a) against the
//!   weights' own blocks, 1/2/4/8 tokens per weight read (kernels/mmvq.cu). This is the numerics
//!   of llama.cpp's CUDA decode path: the 8-bit activation rounding moves logits by ~1e-3.
//! - **mmq** (batches of `mmq_tokens` tokens, sm_80 and later): tensor cores (`mma.sync`), 64
//!   rows x up to 64 tokens per block, each weight read once per 64 tokens; the K range is split
//!   over several blocks when the grid would not fill the GPU, their partial sums added by a
//!   second kernel in a fixed order (kernels/mmq.cu). By default (`mmq_f16_tokens`) on f16
//!   activations (`half_mma_input`), each weight group dequantized once in registers to f16 and
//!   multiplied with every token tile (f32 accumulation); otherwise int8 products of the 8-bit
//!   activations, scaled in f32 per group and tile (llama.cpp's mmq numerics). Like the GEMM
//!   path's, f16 activations or weights beyond 65,504 become infinite.
//! - **GEMM** (prefill, `gemm_min_tokens` tokens or more where mmq does not take them, when
//!   cuBLAS loads; and from `F16_WEIGHT_MIN_TOKENS` tokens on weights with f16 copies): weight
//!   rows dequantized to f16 in tiles (or their f16 copy), activations rounded to f16 (bf16 for
//!   BF16 weights), and a cuBLAS GEMM on tensor cores with f32 accumulation (blas.rs,
//!   kernels/gemm.cu).
//! - **exact** (`set_exact(true)`, and float weights in decode): f32 activations and f32 math
//!   on the weights dequantized in registers (kernels/matvec.cu); matches the CPU's exact mode to
//!   ~1e-6.

use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};
use realizar_quant::GgmlType;

use super::ops::matvec_kernel;
use super::{raw, Arg, CudaBackend, CudaBuf};
use crate::CudaError;

/// Rows narrower than this use the f32 kernels in decode, by default.
pub const DEFAULT_MMVQ_MIN_COLS: usize = 2048;

/// Tokens from which a matmul goes through cuBLAS (when it is present), by default.
pub const DEFAULT_GEMM_MIN_TOKENS: usize = 32;

/// Token counts whose matmuls take the mmq kernels (on sm_80 and later), by default.
pub const DEFAULT_MMQ_TOKENS: (usize, usize) = (5, 64);

/// Token counts whose mmq matmuls use f16 activations, by default.
pub const DEFAULT_MMQ_F16_TOKENS: (usize, usize) = (5, 64);

/// Device scratch of the fast paths, grown on demand and reused.
#[derive(Default)]
pub(super) struct Scratch {
    pub(super) xq: Option<CudaSlice<u8>>,
    pub(super) xds: Option<CudaSlice<f32>>,
    pub(super) wh: Option<CudaSlice<u16>>,
    pub(super) xh: Option<CudaSlice<u16>>,
    /// Outputs of `top_k_rows`: ids, then values and log-sum-exps.
    pub(super) top_ids: Option<CudaSlice<u32>>,
    pub(super) top_vals: Option<CudaSlice<f32>>,
    /// `sample_rows`' drawn ids.
    pub(super) drawn: Option<CudaSlice<u32>>,
    /// Split-K attention's partial results.
    pub(super) attn_part: Option<CudaSlice<f32>>,
    /// The mmq kernels' partial sums when the K range is split.
    pub(super) mmq_part: Option<CudaSlice<f32>>,
    /// What `xq`/`xds` hold.
    pub(super) quantized: Option<InputRecord>,
    /// The f16 mmq kernels' activations (`half_mma_input`), and what they hold.
    pub(super) xm: Option<CudaSlice<u16>>,
    pub(super) halved: Option<InputRecord>,
    /// What `xh` (the GEMM path's f16 / bf16 activations) holds, and in which kind.
    pub(super) gemm_halved: Option<(InputRecord, i32)>,
    /// Batched cuBLAS calls' pointer arrays (blas.rs): the table, its entries in use, and
    /// where each set of pointers was written.
    pub(super) ptr_table: Option<CudaSlice<u64>>,
    pub(super) ptr_used: usize,
    pub(super) ptr_slots: std::collections::HashMap<Vec<u64>, u64>,
}

/// `to_half`'s kind for f16 (1; 2 is bf16).
pub(super) const GEMM_F16: i32 = 1;

impl Scratch {
    /// The GEMM path's f16 activations, `n` values, for a kernel that writes them in place of
    /// `to_half` (fused.rs): what they held before is gone.
    pub(super) fn gemm_input(&mut self, b: &CudaBackend, n: usize) -> Result<u64, CudaError> {
        self.gemm_halved = None;
        ensure(b, &mut self.xh, n)
    }
}

/// Which matmul input a converted copy holds: (input address, rows, cols, epoch just after the
/// conversion). It is current while the epoch has not moved.
pub(super) type InputRecord = (u64, usize, usize, u64);

/// The activations of an mmq launch: 8-bit (values, then (d, d * sum) pairs) or f16.
#[derive(Clone, Copy)]
enum MmqInput {
    Q8(u64, u64),
    F16(u64),
}

/// A device array of at least `n` elements in `slot` (reallocated when too small).
pub(super) fn ensure<T: DeviceRepr + ValidAsZeroBits>(
    b: &CudaBackend,
    slot: &mut Option<CudaSlice<T>>,
    n: usize,
) -> Result<u64, CudaError> {
    if slot.as_ref().is_none_or(|s| s.len() < n) {
        *slot = None;
        let mem = b
            .stream
            .alloc_zeros::<T>(n.max(1).next_power_of_two())
            .map_err(|e| CudaError::call("cuMemAlloc(matmul scratch)", e))?;
        *slot = Some(mem);
        // Recorded steps pointing at the old buffer are stale.
        b.gen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(slot.as_ref().map_or(0, |s| raw(s, &b.stream)))
}

macro_rules! mmvq_names {
    ($t:literal) => {
        [
            concat!("mmvq_", $t, "_1"),
            concat!("mmvq_", $t, "_2"),
            concat!("mmvq_", $t, "_4"),
            concat!("mmvq_", $t, "_8"),
            concat!("mmvq_", $t, "_1r2"),
            concat!("mmvq_", $t, "_1r4"),
        ]
    };
}

/// The mmvq kernels (1, 2, 4, 8 tokens per weight read; then one token on 2 and 4 rows per
/// block) and the f16 dequantizer of a block type.
fn fast_kernels(ty: GgmlType) -> Option<([&'static str; 6], &'static str)> {
    Some(match ty {
        GgmlType::Q4_0 => (mmvq_names!("q4_0"), "dequant_f16_q4_0"),
        GgmlType::Q4_1 => (mmvq_names!("q4_1"), "dequant_f16_q4_1"),
        GgmlType::Q5_0 => (mmvq_names!("q5_0"), "dequant_f16_q5_0"),
        GgmlType::Q5_1 => (mmvq_names!("q5_1"), "dequant_f16_q5_1"),
        GgmlType::Q8_0 => (mmvq_names!("q8_0"), "dequant_f16_q8_0"),
        GgmlType::Q4K => (mmvq_names!("q4_k"), "dequant_f16_q4_k"),
        GgmlType::Q5K => (mmvq_names!("q5_k"), "dequant_f16_q5_k"),
        GgmlType::Q6K => (mmvq_names!("q6_k"), "dequant_f16_q6_k"),
        _ => return None,
    })
}

macro_rules! mmq_names {
    ($p:literal, $t:literal) => {
        [
            concat!($p, $t, "_8"),
            concat!($p, $t, "_16"),
            concat!($p, $t, "_32"),
            concat!($p, $t, "_64"),
        ]
    };
}

/// The mmq kernels of one block type: 8-bit and f16 activations, 8, 16, 32, 64 tokens per
/// block.
#[derive(Clone, Copy)]
pub(super) struct MmqKernels {
    q8: [&'static str; 4],
    f16: [&'static str; 4],
    /// Elements per block of the type.
    qk: usize,
}

macro_rules! mmq_kernels_of {
    ($t:literal, $qk:expr) => {
        MmqKernels {
            q8: mmq_names!("mmq_", $t),
            f16: mmq_names!("mmq_f16_", $t),
            qk: $qk,
        }
    };
}

/// Every block type the mmq kernels take.
const MMQ_TYPES: [MmqKernels; 8] = [
    mmq_kernels_of!("q4_0", 32),
    mmq_kernels_of!("q4_1", 32),
    mmq_kernels_of!("q5_0", 32),
    mmq_kernels_of!("q5_1", 32),
    mmq_kernels_of!("q8_0", 32),
    mmq_kernels_of!("q4_k", 256),
    mmq_kernels_of!("q5_k", 256),
    mmq_kernels_of!("q6_k", 256),
];

/// The mmq kernels of a block type.
fn mmq_kernels(ty: GgmlType) -> Option<MmqKernels> {
    let i = match ty {
        GgmlType::Q4_0 => 0,
        GgmlType::Q4_1 => 1,
        GgmlType::Q5_0 => 2,
        GgmlType::Q5_1 => 3,
        GgmlType::Q8_0 => 4,
        GgmlType::Q4K => 5,
        GgmlType::Q5K => 6,
        GgmlType::Q6K => 7,
        _ => return None,
    };
    Some(MMQ_TYPES[i])
}

/// The entry points of kernels/mmq.cu: every type's kernels (`MMQ_TYPES`), then the two
/// helpers.
pub(crate) const MMQ_ENTRY_POINTS: [&str; 8 * MMQ_TYPES.len() + 2] = {
    let mut names = ["half_mma_input"; 8 * MMQ_TYPES.len() + 2];
    let mut i = 0;
    while i < MMQ_TYPES.len() {
        let mut j = 0;
        while j < 4 {
            names[8 * i + j] = MMQ_TYPES[i].q8[j];
            names[8 * i + 4 + j] = MMQ_TYPES[i].f16[j];
            j += 1;
        }
        i += 1;
    }
    names[8 * MMQ_TYPES.len() + 1] = "mmq_reduce";
    names
};

/// Dynamic shared memory of an f16 mmq kernel: two buffers of `tt` token rows of a K chunk
/// (kernels/mmq.cu, `mmq_f16`: STRIDE = 2 * CH + 64 bytes a row, CH = QK * BPC elements, BPC 4
/// for the 32-element types and 1 for the K-quants, as their structs there say).
pub(crate) const fn mmq_f16_smem(qk: usize, tt: usize) -> usize {
    let chunk = if qk == 32 { 4 * 32 } else { qk };
    2 * tt * (2 * chunk + 64)
}

/// The most dynamic shared memory an f16 mmq kernel asks for (64 tokens of a K-quant chunk).
pub(crate) const MMQ_F16_SMEM_MAX: usize = mmq_f16_smem(256, 64);

/// Rows per mmq block (kernels/mmq.cu, `MMQ_ROWS`).
const MMQ_ROWS: usize = 64;

/// The fewest elements of a row one mmq split takes.
const MMQ_MIN_SPLIT_COLS: usize = 512;

/// How an mmq launch splits its K range: (splits, type blocks per split), so that the grid has
/// about `blocks` blocks (`mmq_wave` per SM) where the rows and tokens alone give fewer. (H200,
/// 8B Q4_K_M, 16 tokens: with at most two blocks per SM a 4096 x 4096 product took 16.5 us at
/// 12% achieved occupancy, latency-bound.)
fn mmq_splits(cols: usize, qk: usize, tile_blocks: usize, blocks: usize) -> (usize, usize) {
    let nblk = cols / qk;
    let want = blocks.div_ceil(tile_blocks.max(1));
    let most = (cols / MMQ_MIN_SPLIT_COLS).max(1);
    let splits = want.min(most).max(1);
    let kps = nblk.div_ceil(splits);
    (nblk.div_ceil(kps), kps)
}

/// One matrix of a matmul launch: the weight's address, its f16 copy's (0: none), its rows,
/// and the output's address.
#[derive(Clone, Copy, Debug)]
pub(super) struct Mat {
    pub(super) w: u64,
    pub(super) wh: u64,
    pub(super) rows: usize,
    pub(super) out: u64,
}

/// The kernel that dequantizes rows of a weight type to f16 (the GEMM path's tiles, and the
/// f16 weight copies).
pub(crate) fn dequant_kernel(ty: GgmlType) -> Option<&'static str> {
    fast_kernels(ty).map(|(_, d)| d)
}

/// Tokens from which a matmul whose weight has an f16 copy (`set_f16_weights`) goes through
/// cuBLAS on that copy instead of the mmq kernels.
/// (H200, 8B Q4_K_M, batched decode at 512 context: at 32 tokens mmq 4,230 tok/s against the
/// copies' 3,965-4,117; at 48 tokens mmq 4,416, the copies 5,490-5,517.)
pub const F16_WEIGHT_MIN_TOKENS: usize = 40;

/// The matrices of one launch of the mmvq or f32 kernels; layout matches `Group` in
/// kernels/common.cuh. Up to three matrices that multiply the same input, `blocks[i]` blocks
/// each.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(super) struct Group {
    w: [u64; 3],
    out: [u64; 3],
    rows: [i32; 3],
    blocks: [i32; 3],
}

// SAFETY: Group is #[repr(C)] plain data (device addresses and ints) with the field order and
// types of the CUDA struct it is passed as.
unsafe impl DeviceRepr for Group {}

/// Most matrices one launch takes.
pub(super) const GROUP_MAX: usize = 3;

/// The K splits of an mmq launch's matrices, as the CUDA struct of the same name
/// (kernels/mmq.cu): each matrix's partial-sum buffer, type blocks a split and split count.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct MmqSplits {
    part: [u64; 3],
    kps: [i32; 3],
    n: [i32; 3],
}

// SAFETY: MmqSplits is #[repr(C)] plain data with the field order and types of the CUDA struct.
unsafe impl DeviceRepr for MmqSplits {}

impl Group {
    /// The group of `mats` (at most `GROUP_MAX`) at `per_block` rows per block, and the blocks
    /// of all of them (the grid's x).
    pub(super) fn new(mats: &[Mat], per_block: usize) -> (Group, usize) {
        let mut g = Group::default();
        let mut total = 0;
        for (i, m) in mats.iter().take(GROUP_MAX).enumerate() {
            let nb = m.rows.div_ceil(per_block);
            g.w[i] = m.w;
            g.out[i] = m.out;
            g.rows[i] = m.rows as i32;
            g.blocks[i] = nb as i32;
            total += nb;
        }
        (g, total)
    }
}

impl CudaBackend {
    /// out_i = x W_i^T for the matrices `mats` (at most `GROUP_MAX`, all of type `ty` and
    /// `cols` wide). The mmvq, mmq and f32 kernels take them in one launch; cuBLAS one by one
    /// (on the f16 copies, equal rows in one batched call).
    pub(super) fn matmul_mats(
        &self,
        ty: GgmlType,
        cols: usize,
        mats: &[Mat],
        x: &CudaBuf,
    ) -> Result<(), CudaError> {
        let ntok = x.rows;
        // Weights with f16 copies: cuBLAS on them from F16_WEIGHT_MIN_TOKENS tokens, with no
        // dequantization in the step.
        let half = self.f16_weights_take(ntok) && mats.iter().all(|m| m.wh != 0);
        let mmq = mmq_kernels(ty).filter(|_| !self.exact && !half && self.mmq_takes(ntok));
        let gemm = half || self.gemm_takes(ntok);
        if mats.len() > 1 && half {
            return self.gemm_copies(cols, mats, x);
        }
        if mats.len() > 1 && mmq.is_none() && gemm {
            for m in mats {
                self.matmul_mats(ty, cols, std::slice::from_ref(m), x)?;
            }
            return Ok(());
        }
        if mmq.is_none() && gemm {
            let m = mats[0];
            if self.gemm(ty, m, cols, x)? {
                return Ok(());
            }
        }
        let fast = fast_kernels(ty).filter(|_| !self.exact);
        // Narrow rows leave most of an mmvq block idle and add a quantize launch; the f32
        // kernels did better there (SmolLM2-135M, 576/1536 columns, H200: tg128 513 tok/s
        // with them, 339 with mmvq).
        let Some((names, _)) = fast.filter(|_| mmq.is_some() || cols >= self.mmvq_min_cols) else {
            return self.matvec(ty, cols, mats, x);
        };
        let (nt, name) = match ntok {
            1 if self.mmvq_rows == 2 => (1, names[4]),
            1 if self.mmvq_rows == 4 => (1, names[5]),
            1 => (1, names[0]),
            2 => (2, names[1]),
            3 | 4 => (4, names[2]),
            _ => (8, names[3]),
        };
        if let Some(k) = mmq {
            let input = if self.mmq_f16_takes(ntok) {
                MmqInput::F16(self.half_input(x, cols, mats)?)
            } else {
                let (xq, xds) = self.quantized_input(x, cols, mats)?;
                MmqInput::Q8(xq, xds)
            };
            return self.mmq(k, cols, mats, x, input);
        }
        let (xq, xds) = self.quantized_input(x, cols, mats)?;
        if nt == 1 {
            // The streamed kernels take the matrices they would take alone, the mmvq kernels
            // the rest.
            let takes = |m: &Mat| self.bulk_takes(ty, cols, std::slice::from_ref(m));
            let n = mats.iter().filter(|m| takes(m)).count();
            if n == mats.len() && self.matmul_bulk(ty, cols, mats, xq, xds)? {
                return Ok(());
            }
            if n > 0 && n < mats.len() {
                let (on, off): (Vec<Mat>, Vec<Mat>) = mats.iter().partition(|m| takes(m));
                if self.matmul_bulk(ty, cols, &on, xq, xds)? {
                    return self.mmvq(name, 1, cols, &off, (xq, xds), 1);
                }
            }
        }
        self.mmvq(name, nt, cols, mats, (xq, xds), ntok)
    }

    /// The mmvq launch of `matmul_mats`: kernel `name` (`nt` tokens a block) on the 8-bit input
    /// `xq` of `ntok` tokens.
    fn mmvq(
        &self,
        name: &'static str,
        nt: usize,
        cols: usize,
        mats: &[Mat],
        (xq, xds): (u64, u64),
        ntok: usize,
    ) -> Result<(), CudaError> {
        // Rows per block: REALIZAR_CUDA_MMVQ_ROWS (2 by default) for one token, 2 for more
        // (kernels/mmvq.cu).
        let per_block = match nt {
            1 if matches!(self.mmvq_rows, 2 | 4) => self.mmvq_rows,
            1 => 1,
            _ => 2,
        };
        let (group, blocks) = Group::new(mats, per_block);
        let grid = (blocks as u32, ntok.div_ceil(nt) as u32, 1);
        let args = [
            Arg::Group(group),
            Arg::P(xq),
            Arg::P(xds),
            Arg::I(cols as i32),
            Arg::I(ntok as i32),
        ];
        self.launch(name, grid, 128, &args)
    }

    /// The kernels `matmul_mats` gives one token's matmul of a quantized type on rows `cols`
    /// wide: the mmvq kernels (true) or the f32 ones (false); None where the f16 weight copies,
    /// mmq or cuBLAS would take it. The fused one-token kernels take the same cases.
    pub(super) fn one_token_mmvq(&self, cols: usize) -> Option<bool> {
        if self.f16_weights_take(1) || self.mmq_takes(1) || self.gemm_takes(1) {
            return None;
        }
        Some(!self.exact && cols >= self.mmvq_min_cols)
    }

    /// One launch for a one-token group of two weight types (`mmvq_mix_*`: the first matrices
    /// of one type, the rest of another, as an 8B Q4_K_M's q, k in Q4_K and v in Q6_K), where
    /// each type alone would take the 2-row mmvq kernel; the same bits as those launches. The
    /// matrices the streamed kernels would take alone go to them first (`bulk_takes`): one
    /// launch for both types where a mixed streamed kernel takes the pair (`matmul_bulk_mix`),
    /// else a launch a type. Ok(false) where it does not apply.
    pub(super) fn matmul_mixed(
        &self,
        mats: &[(GgmlType, Mat)],
        x: &CudaBuf,
    ) -> Result<bool, CudaError> {
        let cols = x.cols;
        let split = mats.iter().take_while(|(t, _)| *t == mats[0].0).count();
        let Some(&(second, _)) = mats.get(split) else {
            return Ok(false);
        };
        let name = match (mats[0].0, second) {
            (GgmlType::Q4K, GgmlType::Q6K) => "mmvq_mix_q4_k_q6_k_1r2",
            (GgmlType::Q5K, GgmlType::Q6K) => "mmvq_mix_q5_k_q6_k_1r2",
            (GgmlType::Q4K, GgmlType::Q5K) => "mmvq_mix_q4_k_q5_k_1r2",
            _ => return Ok(false),
        };
        let takes = x.rows == 1
            && mats.len() <= GROUP_MAX
            && mats[split..].iter().all(|(t, _)| *t == second)
            && self.mmvq_rows == 2
            && self.one_token_mmvq(cols) == Some(true);
        if !takes {
            return Ok(false);
        }
        // The streamed kernels take the matrices they would take alone (one launch for both
        // types where a mixed kernel takes the pair, else one a type), the mix kernel the rest,
        // or the rest's one type's kernel: a row has the bits of its own kernel whatever its
        // group.
        let streamed: Vec<bool> = mats
            .iter()
            .map(|(t, m)| self.bulk_takes(*t, cols, std::slice::from_ref(m)))
            .collect();
        let all: Vec<Mat> = mats.iter().map(|(_, m)| *m).collect();
        let (xq, xds) = self.quantized_input(x, cols, &all)?;
        if !streamed.contains(&true) {
            return self.mix(name, cols, &all, split, (xq, xds));
        }
        // The matrices of type `ty` that do (`on`) or do not stream, in their order.
        let pick = |ty: Option<GgmlType>, on: bool| -> Vec<(GgmlType, Mat)> {
            mats.iter()
                .zip(&streamed)
                .filter(|(p, &s)| s == on && ty.is_none_or(|t| p.0 == t))
                .map(|(p, _)| *p)
                .collect()
        };
        // The streamed matrices of both types in one launch where a kernel takes the pair, else
        // one launch a type.
        let on = pick(None, true);
        let on_split = on.iter().take_while(|p| p.0 == mats[0].0).count();
        let on_mats: Vec<Mat> = on.iter().map(|p| p.1).collect();
        let one = 0 < on_split
            && on_split < on.len()
            && self.matmul_bulk_mix((mats[0].0, second), cols, &on_mats, on_split, (xq, xds))?;
        for ty in [mats[0].0, second].into_iter().filter(|_| !one) {
            let on: Vec<Mat> = pick(Some(ty), true).iter().map(|p| p.1).collect();
            if !on.is_empty() && !self.matmul_bulk(ty, cols, &on, xq, xds)? {
                self.matmul_mats(ty, cols, &on, x)?;
            }
        }
        let left = pick(None, false);
        let rest: Vec<Mat> = left.iter().map(|p| p.1).collect();
        let split = left.iter().take_while(|p| p.0 == mats[0].0).count();
        if 0 < split && split < rest.len() {
            return self.mix(name, cols, &rest, split, (xq, xds));
        }
        if let Some(p) = left.first() {
            self.matmul_mats(p.0, cols, &rest, x)?;
        }
        Ok(true)
    }

    /// The launch of `matmul_mixed`: kernel `name` on `mats`, those from `split` on of the
    /// second type.
    fn mix(
        &self,
        name: &'static str,
        cols: usize,
        all: &[Mat],
        split: usize,
        (xq, xds): (u64, u64),
    ) -> Result<bool, CudaError> {
        let (group, blocks) = Group::new(all, 2);
        let args = [
            Arg::Group(group),
            Arg::P(xq),
            Arg::P(xds),
            Arg::I(cols as i32),
            Arg::I(1),
            Arg::I(split as i32),
        ];
        self.launch(name, (blocks as u32, 1, 1), 128, &args)?;
        Ok(true)
    }

    /// The 8-bit copy of `x` (int8 values, then a (d, d * sum) pair per 32), quantized now
    /// unless the copy made last is of the same input and nothing has written since: q, k and
    /// v (and gate and up) multiply the same input.
    fn quantized_input(
        &self,
        x: &CudaBuf,
        cols: usize,
        mats: &[Mat],
    ) -> Result<(u64, u64), CudaError> {
        let ntok = x.rows;
        let nblocks = ntok * cols / 32;
        let mut s = self.scratch();
        let xq = ensure(self, &mut s.xq, ntok * cols)?;
        let xds = ensure(self, &mut s.xds, 2 * nblocks)?;
        self.convert_once(&mut s.quantized, x, cols, mats, || {
            self.launch(
                "quantize_q8_1",
                (nblocks.div_ceil(8) as u32, 1, 1),
                256,
                &[
                    Arg::P(x.ptr),
                    Arg::P(xq),
                    Arg::P(xds),
                    Arg::I(nblocks as i32),
                ],
            )
        })?;
        Ok((xq, xds))
    }

    /// The record of `ptr`'s `rows x cols` as the activations are now.
    pub(super) fn input_record(&self, ptr: u64, rows: usize, cols: usize) -> InputRecord {
        let epoch = self.epoch.load(std::sync::atomic::Ordering::Relaxed);
        (ptr, rows, cols, epoch)
    }

    /// Runs `convert` (a launch writing a copy of `x` that the matmul of `mats` reads) unless
    /// `record` says the copy already holds `x` as it is now; then records it, or forgets it
    /// when one of the matrices writes over `x`.
    pub(super) fn convert_once(
        &self,
        record: &mut Option<InputRecord>,
        x: &CudaBuf,
        cols: usize,
        mats: &[Mat],
        convert: impl FnOnce() -> Result<(), CudaError>,
    ) -> Result<(), CudaError> {
        if *record != Some(self.input_record(x.ptr, x.rows, cols)) {
            *record = None;
            self.conversions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            convert()?;
            *record = Some(self.input_record(x.ptr, x.rows, cols));
        }
        if mats.iter().any(|m| m.out == x.ptr) {
            *record = None;
        }
        Ok(())
    }

    /// The f16 copy of `x` that the f16 mmq kernels read (each 32-element group in their
    /// order), converted now unless the copy made last is of the same input and nothing has
    /// written since (as `quantized_input`).
    fn half_input(&self, x: &CudaBuf, cols: usize, mats: &[Mat]) -> Result<u64, CudaError> {
        let n = x.rows * cols;
        let mut s = self.scratch();
        let xm = ensure(self, &mut s.xm, n)?;
        let slots = n / 8;
        self.convert_once(&mut s.halved, x, cols, mats, || {
            self.launch(
                "half_mma_input",
                (slots.div_ceil(256) as u32, 1, 1),
                256,
                &[Arg::P(x.ptr), Arg::P(xm), Arg::L(slots as i64)],
            )
        })?;
        Ok(xm)
    }

    /// Whether the f16 mmq kernels take matmuls of `ntok` tokens (when mmq takes them).
    pub(super) fn mmq_f16_takes(&self, ntok: usize) -> bool {
        self.mmq_f16_tokens.0 <= ntok && ntok <= self.mmq_f16_tokens.1
    }

    /// The matrices of a group (at most `GROUP_MAX`) on the tensor-core kernels in one launch,
    /// each matrix's K range split as it would be alone when its grid is small, and one
    /// reduction launch for those that were split.
    fn mmq(
        &self,
        k: MmqKernels,
        cols: usize,
        mats: &[Mat],
        x: &CudaBuf,
        input: MmqInput,
    ) -> Result<(), CudaError> {
        let (ntok, qk) = (x.rows, k.qk);
        let mats = &mats[..mats.len().min(GROUP_MAX)];
        let names = match input {
            MmqInput::Q8(..) => k.q8,
            MmqInput::F16(_) => k.f16,
        };
        let (tt, name) = match ntok {
            0..=8 => (8, names[0]),
            9..=16 => (16, names[1]),
            17..=32 => (32, names[2]),
            _ => (64, names[3]),
        };
        let mut sp = MmqSplits::default();
        // Each split matrix's partial sums get their own stretch of the scratch buffer.
        let mut offs = [0usize; GROUP_MAX];
        let mut need = 0;
        for (i, m) in mats.iter().enumerate() {
            let tiles = m.rows.div_ceil(MMQ_ROWS) * ntok.div_ceil(tt);
            let (splits, kps) = mmq_splits(cols, qk, tiles, self.mmq_wave * self.sm_count);
            sp.kps[i] = kps as i32;
            sp.n[i] = splits as i32;
            if splits > 1 {
                offs[i] = need;
                need += splits * ntok * m.rows;
            }
        }
        if need > 0 {
            let mut s = self.scratch();
            let part = ensure(self, &mut s.mmq_part, need)?;
            for (i, &n) in sp.n.iter().enumerate() {
                if n > 1 {
                    sp.part[i] = part + 4 * offs[i] as u64;
                }
            }
        }
        let most = sp.n.iter().copied().max().unwrap_or(1).max(1);
        let (group, blocks) = Group::new(mats, MMQ_ROWS);
        let grid = (blocks as u32, ntok.div_ceil(tt) as u32, most as u32);
        let (c, n) = (Arg::I(cols as i32), Arg::I(ntok as i32));
        match input {
            MmqInput::Q8(xq, xds) => {
                let args = [
                    Arg::Group(group),
                    Arg::Splits(sp),
                    Arg::P(xq),
                    Arg::P(xds),
                    c,
                    n,
                ];
                self.launch(name, grid, 128, &args)?;
            }
            MmqInput::F16(xm) => {
                let args = [Arg::Group(group), Arg::Splits(sp), Arg::P(xm), c, n];
                let smem = mmq_f16_smem(qk, tt) as u32;
                self.launch_smem(name, grid, 128, smem, &args)?;
            }
        }
        if most > 1 {
            // The reduction's group: each split matrix's ntok x rows sums, 256 a block.
            let mut g = Group::default();
            let mut blocks = 0;
            for (i, m) in mats.iter().enumerate() {
                let n = ntok * m.rows;
                g.w[i] = sp.part[i];
                g.out[i] = m.out;
                g.rows[i] = n as i32;
                g.blocks[i] = if sp.n[i] > 1 {
                    n.div_ceil(256) as i32
                } else {
                    0
                };
                blocks += g.blocks[i] as usize;
            }
            self.launch(
                "mmq_reduce",
                (blocks as u32, 1, 1),
                256,
                &[Arg::Group(g), Arg::Splits(sp)],
            )?;
        }
        Ok(())
    }

    /// The f32 kernels (kernels/matvec.cu): 4 rows per block, 1 or 8 tokens per weight read.
    fn matvec(
        &self,
        ty: GgmlType,
        cols: usize,
        mats: &[Mat],
        x: &CudaBuf,
    ) -> Result<(), CudaError> {
        let ntok = x.rows;
        let nt = if ntok == 1 { 1 } else { 8 };
        let name = matvec_kernel(ty, nt)
            .ok_or_else(|| CudaError::Unsupported(format!("matmul with weight type {ty}")))?;
        let (group, blocks) = Group::new(mats, 4);
        let grid = (blocks as u32, ntok.div_ceil(nt) as u32, 1);
        let args = [
            Arg::Group(group),
            Arg::P(x.ptr),
            Arg::I(cols as i32),
            Arg::I(ntok as i32),
        ];
        self.launch(name, grid, 128, &args)
    }

    /// Whether the cuBLAS path (f16 tiles dequantized in the step) takes matmuls of `ntok`
    /// tokens that mmq and the f16 weight copies do not.
    pub(super) fn gemm_takes(&self, ntok: usize) -> bool {
        !self.exact && ntok >= self.gemm_min_tokens && self.blas.is_some()
    }

    /// Whether the mmq kernels take matmuls of `ntok` tokens (of the types they cover).
    pub(super) fn mmq_takes(&self, ntok: usize) -> bool {
        self.sm_count > 0 && self.mmq_tokens.0 <= ntok && ntok <= self.mmq_tokens.1
    }

    pub(super) fn scratch(&self) -> std::sync::MutexGuard<'_, Scratch> {
        self.scratch.lock().unwrap_or_else(|p| p.into_inner())
    }
}
