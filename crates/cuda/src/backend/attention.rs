//! Attention over the paged KV cache: the kernel choice, split-K sizing and the launch.
//!
//! Three kernels: `attn_flash_f16_<hd>` (kernels/flash.cu) for prefill steps over an f16 cache
//! (head dims 64 and 128, sm_80+): a block per KV head and tile of consecutive tokens, on the
//! tensor cores; in kernels/attention.cu, `attn_gqa_<type>_<hd>_<ng>` for 8-bit and f16 caches
//! and head dims of 32, 64, 128 or 256, one block per token and group of `ng` query heads that
//! share a KV head, so each cached row is read once per group; and `attention_<type>` for
//! everything else (one block per token and query head). Long contexts of few tokens are cut
//! into splits whose partials `attention_merge` combines.

use cudarc::driver::DeviceRepr;
use realizar_model::backend::{AttnParams, AttnPlan};

use super::fused::ActSlot;
use super::{graphs, matmul, prefix, Arg, CudaBackend, CudaBuf, CudaKv, DevKv};
use crate::CudaError;

/// The attention kernel's parameters; layout matches `AttnArgs` in kernels/common.cuh.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct AttnArgs {
    q: u64,
    kc: u64,
    vc: u64,
    positions: u64,
    seq_of: u64,
    table_off: u64,
    tables: u64,
    out: u64,
    part: u64,
    block_size: i32,
    kv_dim: i32,
    n_head: i32,
    n_head_kv: i32,
    hd: i32,
    window: i32,
    scale: f32,
    sc_off: u64,
    xq: u64,
    xds: u64,
    xm: u64,
    n_tokens: i32,
}

// SAFETY: AttnArgs is #[repr(C)] plain data (device addresses, ints, a float) with the same
// field order and types as the CUDA struct it is passed as.
unsafe impl DeviceRepr for AttnArgs {}

/// Rows (token x query-head pairs) of one flash block: `FA_ROWS` in kernels/flash.cu.
const FLASH_ROWS: usize = 64;
/// The flash kernel takes steps of at least this many tokens...
const FLASH_MIN_TOKENS: usize = 32;
/// ...and this many a sequence on average: a decode token alone in its tile would leave most of
/// the block idle.
const FLASH_TOKENS_PER_SEQ: usize = 8;

/// The flash kernel of a cache type and head dim, where there is one.
fn flash_kernel(ty: DevKv, hd: usize) -> Option<&'static str> {
    match (ty, hd) {
        (DevKv::F16, 64) => Some("attn_flash_f16_64"),
        (DevKv::F16, 128) => Some("attn_flash_f16_128"),
        _ => None,
    }
}

/// Whether every sequence's tokens are one contiguous run of the step: the flash kernel cuts
/// its tiles into runs of one sequence.
fn runs_contiguous(seq_of: &[u32]) -> bool {
    let mut seen = std::collections::HashSet::new();
    let mut prev = None;
    for &s in seq_of {
        if prev != Some(s) {
            if !seen.insert(s) {
                return false;
            }
            prev = Some(s);
        }
    }
    true
}

/// Head dimensions above this are refused (the attention kernel keeps a head in registers).
const MAX_HEAD_DIM: usize = 256;
/// Split-K attention: about this many keys per split at least...
pub(super) const ATTN_SPLIT_KEYS: usize = 256;
/// ...and at most this many blocks (heads x tokens x splits) in all.
const ATTN_MAX_BLOCKS: usize = 1024;

/// How many ranges attention cuts each token's keys into, for `t` tokens of `blocks_per_token`
/// blocks (heads, or head groups) whose longest context is `max_len` keys: enough blocks to read a long context at bandwidth.
fn attn_splits(max_len: usize, t: usize, blocks_per_token: usize) -> usize {
    let by_len = max_len.div_ceil(ATTN_SPLIT_KEYS);
    let by_blocks = ATTN_MAX_BLOCKS / (t * blocks_per_token).max(1);
    by_len.min(by_blocks).max(1)
}

impl CudaBackend {
    pub(super) fn do_attention(
        &self,
        q: &CudaBuf,
        kv: &CudaKv,
        layer: usize,
        plan: &AttnPlan,
        p: AttnParams,
        out: &CudaBuf,
    ) -> Result<(), CudaError> {
        let t = q.rows;
        if t == 0 {
            return Ok(());
        }
        if p.head_dim > MAX_HEAD_DIM
            || p.n_head_kv == 0
            || !p.n_head.is_multiple_of(p.n_head_kv)
            || (kv.ty == DevKv::Q8_0 && !p.head_dim.is_multiple_of(32))
        {
            return Err(CudaError::Unsupported(format!(
                "attention with head_dim {} (max {MAX_HEAD_DIM}; a multiple of 32 for q8_0), {} \
                 heads, {} KV heads",
                p.head_dim, p.n_head, p.n_head_kv
            )));
        }
        // The kernel indexes the cache through these; check them here so that a bad plan is an
        // error rather than an out-of-bounds read on the GPU.
        let bs = plan.block_size;
        let n_blocks = kv.n_slots / bs.max(1);
        if bs == 0 || layer >= kv.kp.len() || q.cols != p.n_head * p.head_dim {
            return Err(CudaError::Unsupported(format!(
                "attention plan: block size {bs}, layer {layer} of {}, q width {}",
                kv.kp.len(),
                q.cols
            )));
        }
        if let Some(&b) = plan
            .seqs
            .iter()
            .flatten()
            .find(|&&b| b as usize >= n_blocks)
        {
            return Err(CudaError::Unsupported(format!(
                "KV block {b} outside the cache of {n_blocks} blocks"
            )));
        }
        for i in 0..t {
            let seq = plan.seq_of.get(i).and_then(|&s| plan.seqs.get(s as usize));
            let pos = plan.positions.get(i).copied().unwrap_or(u32::MAX) as usize;
            if seq.is_none_or(|s| pos >= s.len() * bs) {
                return Err(CudaError::Unsupported(format!(
                    "attention plan: token {i} at position {pos} has no KV block"
                )));
            }
        }
        let (offs, tables) = graphs::flat_tables(plan);
        let max_len = plan.positions[..t]
            .iter()
            .max()
            .map_or(1, |&p| p as usize + 1);
        let splits_of = |groups: usize| {
            if self.attn_split {
                attn_splits(max_len, t, groups)
            } else {
                1
            }
        };
        let group = p.n_head / p.n_head_kv;
        // The output's copy for the o projection, written by the kernel that writes the output
        // (whole warps on 32-element groups of one head: head dims that are multiples of 32).
        let slot = if p.head_dim.is_multiple_of(32) {
            self.act_slot(t, q.cols)?
        } else {
            ActSlot::default()
        };
        // Prefill: the flash kernel. Contiguous runs are for speed (a tile cut into many runs
        // repeats its key loop for each); the kernel is right for any order.
        let flash = flash_kernel(kv.ty, p.head_dim).filter(|_| {
            self.attn_flash
                && self.has_mmq()
                && group <= 16
                && t >= FLASH_MIN_TOKENS
                && t >= FLASH_TOKENS_PER_SEQ * plan.seqs.len()
                && runs_contiguous(&plan.seq_of[..t])
        });
        let mut gqa = gqa_kernel(kv.ty, p.head_dim, group, 8).filter(|_| self.attn_gqa);
        // Too few blocks to fill the GPU (one token at a short context: 8 blocks for 8B's 8 KV
        // heads): fewer query heads per block spread the work over more SMs. Each head's
        // arithmetic is the same whatever the number of heads in a block.
        while let Some((_, ng)) = gqa {
            let groups = p.n_head / ng;
            if ng == 1 || t * groups * splits_of(groups) >= self.sm_count {
                break;
            }
            gqa = gqa_kernel(kv.ty, p.head_dim, group, ng / 2);
        }
        let (name, groups, threads) = match (flash, gqa) {
            (Some(name), _) => (name, p.n_head_kv, 128),
            (None, Some((name, ng))) => (name, p.n_head / ng, 128),
            (None, None) => (cache_kernels(kv.ty).0, p.n_head, 256),
        };
        let splits = if flash.is_some() {
            1
        } else {
            splits_of(groups)
        };
        let part = if splits > 1 {
            let n = t * p.n_head * splits * (p.head_dim + 2);
            let mut s = self.scratch();
            matmul::ensure(self, &mut s.attn_part, n)?
        } else {
            0
        };
        let mut idx = self.indices();
        let g = &self.gen;
        let args = AttnArgs {
            q: q.ptr,
            kc: kv.kp[layer],
            vc: kv.vp[layer],
            positions: idx.positions.set(
                &self.stream,
                g,
                prefix(&plan.positions, t, "positions")?,
            )?,
            seq_of: idx
                .seq_of
                .set(&self.stream, g, prefix(&plan.seq_of, t, "seq_of")?)?,
            table_off: idx.table_off.set(&self.stream, g, &offs)?,
            tables: idx.tables.set(&self.stream, g, &tables)?,
            out: out.ptr,
            part,
            block_size: plan.block_size as i32,
            kv_dim: kv.kv_dim as i32,
            n_head: p.n_head as i32,
            n_head_kv: p.n_head_kv as i32,
            hd: p.head_dim as i32,
            window: p.window.map_or(0, |w| w.max(1) as i32),
            scale: p.scale,
            sc_off: kv.sc_off as u64,
            xq: slot.xq,
            xds: slot.xds,
            xm: slot.xm,
            n_tokens: t as i32,
        };
        drop(idx);
        // The flash kernel's y blocks are tiles of FLASH_ROWS / group tokens; the others', tokens.
        let ys = if flash.is_some() {
            self.flash_launches
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            t.div_ceil(FLASH_ROWS / group)
        } else {
            t
        };
        let smem = match (flash, gqa) {
            (None, Some((_, ng))) => gqa_smem(kv.ty, p.head_dim, ng, self.gqa_stages),
            _ => 0,
        };
        self.launch_smem(
            name,
            (groups as u32, ys as u32, splits as u32),
            threads,
            smem,
            &[Arg::Attn(args)],
        )?;
        if splits > 1 {
            self.launch(
                "attention_merge",
                (p.n_head as u32, t as u32, 1),
                32,
                &[
                    Arg::P(part),
                    Arg::P(out.ptr),
                    Arg::I(p.n_head as i32),
                    Arg::I(p.head_dim as i32),
                    Arg::I(splits as i32),
                    Arg::P(slot.xq),
                    Arg::P(slot.xds),
                    Arg::P(slot.xm),
                ],
            )?;
        }
        self.act_written(slot, out.ptr, t, q.cols);
        Ok(())
    }
}

/// The grouped kernel for head dim `hd` and `group` query heads per KV head, with how many of
/// them one block takes: the largest power of two up to `most` (at most 8) that divides the
/// group and keeps the block's accumulators (heads x hd) within 1024 floats.
pub(super) fn gqa_kernel(
    ty: DevKv,
    hd: usize,
    group: usize,
    most: usize,
) -> Option<(&'static str, usize)> {
    let kind = match ty {
        DevKv::F16 => 0,
        DevKv::Fp8 => 1,
        DevKv::Q8_0 => 2,
        DevKv::F32 => return None,
    };
    let row = match hd {
        32 => 0,
        64 => 1,
        128 => 2,
        256 => 3,
        _ => return None,
    };
    let ng = [8usize, 4, 2, 1]
        .into_iter()
        .find(|&ng| ng <= most && group.is_multiple_of(ng) && ng * hd <= 1024)?;
    // ENTRY_POINTS lists them by cache type (f16, fp8, q8_0), head dim, then 1, 2, 4, 8 heads
    // (256 stops at 4): 15 per type.
    let i = GQA_FIRST + 15 * kind + 4 * row + ng.trailing_zeros() as usize;
    Some((ENTRY_POINTS[i], ng))
}

/// Warps in a grouped kernel's block: `GQA_WARPS` in kernels/attention.cu.
const GQA_WARPS: usize = 4;

/// Whether the grouped kernels stage their rows in shared memory on a device of compute
/// capability `major.minor`: the parts whose SMs hold two staged blocks or more
/// (`GQA_CAN_STAGE` in kernels/attention.cu, which this must match).
pub(crate) fn stages_gqa(major: i32, minor: i32) -> bool {
    matches!((major, minor), (8, 0) | (8, 7) | (9, 0) | (10, 0) | (10, 3))
}

/// The dynamic shared memory of a grouped kernel, in bytes: its warps' sums at the end
/// (`GQA_WARPS` x `ng` x `hd` floats), and where the kernel stages its rows (an f16 cache of head
/// dim 64 or 128 on a device where `stages_gqa`: `ST` in kernels/attention.cu), each warp's 32 K
/// rows (padded by 8 halves) and 32 V rows before that.
pub(super) fn gqa_smem(ty: DevKv, hd: usize, ng: usize, stages: bool) -> u32 {
    let sums = GQA_WARPS * ng * hd * 4;
    let staged = if stages && ty == DevKv::F16 && matches!(hd, 64 | 128) {
        GQA_WARPS * 32 * (2 * hd + 8) * 2
    } else {
        0
    };
    sums.max(staged) as u32
}

/// The most any grouped kernel asks for (staged, head dim 128).
pub(crate) const GQA_SMEM_MAX: u32 = (GQA_WARPS * 32 * (2 * 128 + 8) * 2) as u32;

/// Where the grouped kernels start in `ENTRY_POINTS`.
const GQA_FIRST: usize = 13;

/// The per-head kernel, KV store and rope + KV store of a cache type.
pub(super) fn cache_kernels(ty: DevKv) -> (&'static str, &'static str, &'static str) {
    let i = 3 * match ty {
        DevKv::F32 => 0,
        DevKv::F16 => 1,
        DevKv::Fp8 => 2,
        DevKv::Q8_0 => 3,
    };
    (ENTRY_POINTS[i + 2], ENTRY_POINTS[i], ENTRY_POINTS[i + 1])
}

/// The entry points of kernels/flash.cu.
pub(crate) const FLASH_ENTRY_POINTS: &[&str] = &["attn_flash_f16_64", "attn_flash_f16_128"];

/// The entry points of kernels/attention.cu.
pub(crate) const ENTRY_POINTS: &[&str] = &[
    "kv_store_f32",
    "rope_store_f32",
    "attention_f32",
    "kv_store_f16",
    "rope_store_f16",
    "attention_f16",
    "kv_store_fp8",
    "rope_store_fp8",
    "attention_fp8",
    "kv_store_q8_0",
    "rope_store_q8_0",
    "attention_q8_0",
    "attention_merge",
    "attn_gqa_f16_32_1",
    "attn_gqa_f16_32_2",
    "attn_gqa_f16_32_4",
    "attn_gqa_f16_32_8",
    "attn_gqa_f16_64_1",
    "attn_gqa_f16_64_2",
    "attn_gqa_f16_64_4",
    "attn_gqa_f16_64_8",
    "attn_gqa_f16_128_1",
    "attn_gqa_f16_128_2",
    "attn_gqa_f16_128_4",
    "attn_gqa_f16_128_8",
    "attn_gqa_f16_256_1",
    "attn_gqa_f16_256_2",
    "attn_gqa_f16_256_4",
    "attn_gqa_fp8_32_1",
    "attn_gqa_fp8_32_2",
    "attn_gqa_fp8_32_4",
    "attn_gqa_fp8_32_8",
    "attn_gqa_fp8_64_1",
    "attn_gqa_fp8_64_2",
    "attn_gqa_fp8_64_4",
    "attn_gqa_fp8_64_8",
    "attn_gqa_fp8_128_1",
    "attn_gqa_fp8_128_2",
    "attn_gqa_fp8_128_4",
    "attn_gqa_fp8_128_8",
    "attn_gqa_fp8_256_1",
    "attn_gqa_fp8_256_2",
    "attn_gqa_fp8_256_4",
    "attn_gqa_q8_0_32_1",
    "attn_gqa_q8_0_32_2",
    "attn_gqa_q8_0_32_4",
    "attn_gqa_q8_0_32_8",
    "attn_gqa_q8_0_64_1",
    "attn_gqa_q8_0_64_2",
    "attn_gqa_q8_0_64_4",
    "attn_gqa_q8_0_64_8",
    "attn_gqa_q8_0_128_1",
    "attn_gqa_q8_0_128_2",
    "attn_gqa_q8_0_128_4",
    "attn_gqa_q8_0_128_8",
    "attn_gqa_q8_0_256_1",
    "attn_gqa_q8_0_256_2",
    "attn_gqa_q8_0_256_4",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gqa_shared_memory_holds_the_staged_rows_or_the_sums() {
        // Staged: 4 warps x 32 rows of K (hd + 8 halves) and V (hd halves).
        assert_eq!(gqa_smem(DevKv::F16, 128, 4, true), 4 * 32 * 264 * 2);
        assert_eq!(gqa_smem(DevKv::F16, 64, 8, true), 4 * 32 * 136 * 2);
        assert_eq!(GQA_SMEM_MAX, gqa_smem(DevKv::F16, 128, 8, true));
        // Not staged (before sm_80, other head dims and cache types): the sums alone.
        assert_eq!(gqa_smem(DevKv::F16, 128, 4, false), 4 * 4 * 128 * 4);
        assert_eq!(gqa_smem(DevKv::F16, 256, 4, true), 4 * 4 * 256 * 4);
        assert_eq!(gqa_smem(DevKv::Fp8, 128, 8, true), 4 * 8 * 128 * 4);
        assert_eq!(gqa_smem(DevKv::Q8_0, 32, 1, true), 4 * 32 * 4);
        // The staged rows outweigh the sums of any group that fits (heads x hd <= 1024).
        assert!(gqa_smem(DevKv::F16, 64, 8, true) >= 4 * 1024 * 4);
        // Staged where an SM holds two blocks or more: A100, Orin, H100/H200, B200/B300.
        for (major, minor) in [(8, 0), (8, 7), (9, 0), (10, 0), (10, 3)] {
            assert!(stages_gqa(major, minor), "sm_{major}{minor}");
        }
        // Not on the ~100 KiB parts (RTX 30/40/50, sm_86/89/120), nor before sm_80.
        for (major, minor) in [(8, 6), (8, 9), (12, 0), (7, 5), (7, 0)] {
            assert!(!stages_gqa(major, minor), "sm_{major}{minor}");
        }
    }

    #[test]
    fn gqa_kernel_takes_the_largest_group_that_fits() {
        let f16 = DevKv::F16;
        assert_eq!(gqa_kernel(f16, 128, 4, 8), Some(("attn_gqa_f16_128_4", 4)));
        assert_eq!(gqa_kernel(f16, 128, 16, 8), Some(("attn_gqa_f16_128_8", 8)));
        assert_eq!(gqa_kernel(f16, 64, 3, 8), Some(("attn_gqa_f16_64_1", 1)));
        assert_eq!(gqa_kernel(f16, 64, 6, 8), Some(("attn_gqa_f16_64_2", 2)));
        assert_eq!(gqa_kernel(f16, 256, 8, 8), Some(("attn_gqa_f16_256_4", 4)));
        assert_eq!(gqa_kernel(f16, 32, 1, 8), Some(("attn_gqa_f16_32_1", 1)));
        assert_eq!(gqa_kernel(f16, 128, 4, 2), Some(("attn_gqa_f16_128_2", 2)));
        assert_eq!(gqa_kernel(f16, 128, 8, 1), Some(("attn_gqa_f16_128_1", 1)));
        assert_eq!(gqa_kernel(f16, 96, 4, 8), None);
        assert_eq!(gqa_kernel(f16, 16, 2, 8), None);
        assert_eq!(
            gqa_kernel(DevKv::Fp8, 32, 8, 8),
            Some(("attn_gqa_fp8_32_8", 8))
        );
        assert_eq!(
            gqa_kernel(DevKv::Fp8, 256, 4, 8),
            Some(("attn_gqa_fp8_256_4", 4))
        );
        assert_eq!(
            gqa_kernel(DevKv::Q8_0, 32, 1, 8),
            Some(("attn_gqa_q8_0_32_1", 1))
        );
        assert_eq!(
            gqa_kernel(DevKv::Q8_0, 256, 4, 8),
            Some(("attn_gqa_q8_0_256_4", 4))
        );
        assert_eq!(gqa_kernel(DevKv::F32, 128, 4, 8), None);
        assert_eq!(
            cache_kernels(DevKv::F32),
            ("attention_f32", "kv_store_f32", "rope_store_f32")
        );
        assert_eq!(
            cache_kernels(DevKv::Q8_0),
            ("attention_q8_0", "kv_store_q8_0", "rope_store_q8_0")
        );
    }

    #[test]
    fn splits_fill_the_block_budget_for_long_contexts() {
        assert_eq!(attn_splits(1, 1, 8), 1);
        assert_eq!(attn_splits(16384, 1, 8), 64);
        assert_eq!(attn_splits(16384, 1, 32), 32);
        assert_eq!(attn_splits(600, 64, 8), 2);
        assert_eq!(attn_splits(600, 64, 32), 1);
    }
}
