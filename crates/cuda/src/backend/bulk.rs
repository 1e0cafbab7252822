//! The streamed one-token matmul kernels (`mmvq_bulk_<type>_w<W>`, kernels/bulk.cu; sm_90 and
//! later): weight rows copied into shared memory by the copy engine (`cp.async.bulk`) a
//! 2048-column slice of 2W rows at a time, up to 8 such chunks in flight a block, one producer
//! warp and W consumer warps (two rows each), a grid of a few blocks an SM walking the group's row
//! groups. The 2-row mmvq kernels hold one batch of loads a block in flight and ran the 8B's
//! gate/up at 2.67 TB/s of the H200's 4.8; the copies need no registers, so a block keeps far
//! more bytes in flight. Same 8-bit activations and dp4a dots as mmvq; another order of the
//! row's sum, so deterministic mode turns them off (a one-token row must add up as the
//! multi-token kernels add it). They take Q4_0, Q4_K and Q6_K weights by default
//! (`DEFAULT_TYPES`), and a group of Q4_K and Q6_K matrices in one launch (`MIX_KERNELS`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cudarc::driver::CudaContext;

use realizar_quant::GgmlType;

use super::matmul::{Group, Mat, GROUP_MAX};
use super::{Arg, CudaBackend};
use crate::CudaError;

/// Columns a chunk (kernels/bulk.cu `BULK_SLICE`): whole blocks of every type, and a multiple of
/// 16 bytes for each (Q6_K: 8 blocks, 1,680 bytes).
const SLICE: usize = 2048;

/// Most stages a block (kernels/bulk.cu `BULK_MAX_STAGES`).
const MAX_STAGES: usize = 8;

// The figures behind the defaults (H200, tg128, `bench -p 0 -n 128 -r 3`, sides of one
// binary alternating in one call). Every matrix of Q4_0, Q4_K and Q6_K on these kernels against
// the 2-row mmvq kernels: 8B Q4_K_M 384.76 / 384.16 against 377.02 / 366.31, 1B Q4_K_M 1,123.18
// against 983.03; 8B Q4_0 419.83 against 382.61, 1B Q4_0 1,234.78 against 1,052.86. Keeping
// the matrices that fill less than 80% of the block slots alone on mmvq (an 8B's k and v, a 1B's
// q, k, v, o and down; `REALIZAR_CUDA_BULK_FILL=80`) made 8B Q4_K_M 373.13 / 373.70 and 1B
// 1,145.20: the q/k/v group then takes two launches. So by default every matrix takes them
// (`fill` 0).
//
// Seventeenth session (same method, call 2): Q6_K in 64-element pieces (`MQ6K2`) and a group of
// Q4_K and Q6_K matrices in one launch (`MIX_KERNELS`) made 8B Q4_K_M 406.02 / 401.21 against
// 384.52 / 377.52 before; `MQ6K2` alone (`REALIZAR_CUDA_BULK_MIX=0`) 387.55 / 385.31. 1B
// Q4_K_M 1,192.64 against 1,196.64 +- 58.59 (mixing off: 1,160.10). 112 KiB of shared memory a
// block instead of 96: 8B Q4_K_M 404.00 / 402.79, 1B 1,144.16, 8B Q4_0 424.41 against 417.13.
// Then (call 5) each lane's swizzled input offsets made once, not a load, and the K-quant scale
// decode without a branch (lanes of a warp took both sides): 8B Q4_K_M 405.58 / 412.01 against
// 391.25 / 391.11, 1B 1,243.11 against 1,156.98; 3 blocks an SM (74,000 bytes) 396.20 / 399.00.
// Q4_0 in whole-block pieces (`MQ4_0W`, call 6): 8B Q4_0 454.99 / 453.44 against 413.29 /
// 431.27, 1B Q4_0 1,412.54 against 1,337.44.

/// Rows a consumer warp (kernels/bulk.cu `BULK_RW`): a lane reads its pieces of the input once
/// for both rows (H200, 8B Q4_0 tg128: 404.05 -> 426.08 against one row a warp).
const RW: usize = 2;

/// Dynamic shared memory the kernels may ask for at most: the sm_90 opt-in limit (227 KiB) less
/// their static shared memory (the barriers) and a margin.
pub(crate) const BULK_SMEM_MAX: usize = 226 * 1024;

/// Whether a device of compute capability `major` runs the streamed kernels: the bulk copies
/// need sm_90, and the stages 227 KiB of shared memory a block, which sm_90 and sm_100/103
/// have (sm_120 has 99 KiB).
pub(crate) fn bulk_arch(major: i32) -> bool {
    matches!(major, 9 | 10)
}

/// The dynamic shared memory a streamed kernel's block may have on `ctx`'s device: its opt-in
/// limit less the kernels' static shared memory and a margin, at most `BULK_SMEM_MAX`; 0 where
/// the device does not run them (`bulk_arch`) or its limit cannot be read.
pub(crate) fn bulk_smem_limit(ctx: &Arc<CudaContext>) -> usize {
    use cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN;
    match ctx.compute_capability() {
        Ok((major, _)) if bulk_arch(major) => ctx
            .attribute(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_or(0, |n| {
                (n.max(0) as usize).saturating_sub(1024).min(BULK_SMEM_MAX)
            }),
        _ => 0,
    }
}

/// Registers a thread (the kernels' `__maxnreg__`) and a multiprocessor (sm_90, sm_100).
const REGS: usize = 64;
const SM_REGS: usize = 65536;

/// The most blocks of `warps` consumer warps (and the producer) an SM holds by registers: 3 of
/// 8 warps, 1 of 16.
fn max_blocks(warps: usize) -> usize {
    (SM_REGS / (REGS * 32 * (warps + 1))).max(1)
}

/// Every type's kernels: 8 and 16 consumer warps a block (kernels/bulk.cu `W`), each warp
/// `RW` rows of a chunk; one more warp copies.
const KERNELS: [(GgmlType, [&str; 2]); 8] = [
    (GgmlType::Q4_0, ["mmvq_bulk_q4_0_w8", "mmvq_bulk_q4_0_w16"]),
    (GgmlType::Q4_1, ["mmvq_bulk_q4_1_w8", "mmvq_bulk_q4_1_w16"]),
    (GgmlType::Q5_0, ["mmvq_bulk_q5_0_w8", "mmvq_bulk_q5_0_w16"]),
    (GgmlType::Q5_1, ["mmvq_bulk_q5_1_w8", "mmvq_bulk_q5_1_w16"]),
    (GgmlType::Q8_0, ["mmvq_bulk_q8_0_w8", "mmvq_bulk_q8_0_w16"]),
    (GgmlType::Q4K, ["mmvq_bulk_q4_k_w8", "mmvq_bulk_q4_k_w16"]),
    (GgmlType::Q5K, ["mmvq_bulk_q5_k_w8", "mmvq_bulk_q5_k_w16"]),
    (GgmlType::Q6K, ["mmvq_bulk_q6_k_w8", "mmvq_bulk_q6_k_w16"]),
];

/// The kernels for a one-token group of two types in one launch (kernels/bulk.cu
/// `MMVQ_BULK_MIX`): the matrices of the first type, then those of the second (an 8B Q4_K_M's q
/// and k, then its v in Q6_K).
const MIX_KERNELS: [((GgmlType, GgmlType), [&str; 2]); 1] = [(
    (GgmlType::Q4K, GgmlType::Q6K),
    ["mmvq_bulk_mix_q4_k_q6_k_w8", "mmvq_bulk_mix_q4_k_q6_k_w16"],
)];

/// The entry points, for compile.rs.
pub(crate) const BULK_ENTRY_POINTS: [&str; 2 * (KERNELS.len() + MIX_KERNELS.len())] = {
    let mut names = [""; 2 * (KERNELS.len() + MIX_KERNELS.len())];
    let mut i = 0;
    while i < KERNELS.len() {
        names[2 * i] = KERNELS[i].1[0];
        names[2 * i + 1] = KERNELS[i].1[1];
        i += 1;
    }
    let mut j = 0;
    while j < MIX_KERNELS.len() {
        names[2 * (i + j)] = MIX_KERNELS[j].1[0];
        names[2 * (i + j) + 1] = MIX_KERNELS[j].1[1];
        j += 1;
    }
    names
};

/// The types whose one-token matmuls take the streamed kernels by default: those measured
/// faster than the 2-row mmvq kernels (H200, see the figures above; two rows a consumer warp
/// and Q4_K's pieces of 64 elements made the K-quants win). Q4_1, Q5_0, Q5_1, Q8_0 and Q5_K have
/// kernels too, not measured against mmvq (`REALIZAR_CUDA_MMVQ_BULK=all` takes every type, `0`
/// none).
const DEFAULT_TYPES: [GgmlType; 3] = [GgmlType::Q4_0, GgmlType::Q4K, GgmlType::Q6K];

/// How the streamed kernels run: whether at all and for which types, consumer warps a block,
/// blocks an SM and a block's shared memory (the input's copy and the stages). The environment
/// sets them (`REALIZAR_CUDA_MMVQ_BULK=0` turns the kernels off, `=all` takes every type, a
/// list such as `=q4_k,q6_k` those types; `REALIZAR_CUDA_BULK_WARPS`, `_BPS`, `_SMEM` and `_MIX`
/// are for measuring).
#[derive(Debug)]
pub(super) struct Bulk {
    /// A block's dynamic shared memory on this device (`bulk_smem_limit`; 0: not run here).
    limit: usize,
    on: bool,
    /// The types that take them (by default `DEFAULT_TYPES`).
    types: Vec<GgmlType>,
    /// Consumer warps a block: 8 or 16.
    warps: usize,
    blocks_per_sm: usize,
    smem: usize,
    /// The least share of the grid's block slots (SMs x blocks an SM) that a matrix's row groups
    /// must fill alone, in percent, for these kernels to take it (`REALIZAR_CUDA_BULK_FILL`, for
    /// measuring; 0 by default).
    fill: usize,
    /// Whether a group of two types whose matrices all stream takes one launch (`MIX_KERNELS`)
    /// rather than one a type (`REALIZAR_CUDA_BULK_MIX=0`: one a type, for measuring).
    mix: bool,
    /// Launches made, for tests.
    launches: AtomicU64,
}

/// The shared-memory copy of a one-token input `cols` wide: int8 values, a (d, d * sum) pair a
/// 32.
fn x_bytes(cols: usize) -> usize {
    cols + cols / 4
}

/// The types `REALIZAR_CUDA_MMVQ_BULK` names: every type with a kernel for `all`, those of a
/// comma-separated list (names as `GgmlType::name`, any case; others are ignored, with a
/// warning), the default types for anything else, and for a list that names none.
fn types_from(mode: &str) -> Vec<GgmlType> {
    let all = KERNELS.iter().map(|(t, _)| *t);
    let named: Vec<GgmlType> = match mode.trim() {
        m if m.eq_ignore_ascii_case("all") => all.collect(),
        m if m.contains(|c: char| c.is_ascii_alphabetic()) => m
            .split(',')
            .filter_map(|n| {
                let t = GgmlType::from_name(n.trim()).filter(|t| all.clone().any(|k| k == *t));
                if t.is_none() {
                    eprintln!("REALIZAR_CUDA_MMVQ_BULK: no streamed kernel for {n:?}");
                }
                t
            })
            .collect(),
        _ => Vec::new(),
    };
    if named.is_empty() {
        DEFAULT_TYPES.to_vec()
    } else {
        named
    }
}

/// A streamed launch: kernel, stages, blocks and a block's dynamic shared memory.
#[derive(Debug, PartialEq)]
struct Plan {
    name: &'static str,
    stages: usize,
    grid: usize,
    smem: usize,
    /// A mixed kernel's first matrix of the second type (its last argument); None for one type.
    split: Option<usize>,
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

impl Bulk {
    /// The configuration for a device whose blocks may have `limit` bytes of dynamic shared
    /// memory (`bulk_smem_limit`; 0 where it does not run the kernels).
    pub(super) fn from_env(limit: usize) -> Bulk {
        let mode = std::env::var("REALIZAR_CUDA_MMVQ_BULK").unwrap_or_default();
        let mut b = Bulk {
            limit,
            on: limit > 0 && mode != "0",
            types: types_from(&mode),
            warps: 8,
            blocks_per_sm: 2,
            smem: 96 * 1024,
            fill: env_usize("REALIZAR_CUDA_BULK_FILL").unwrap_or(0),
            mix: std::env::var("REALIZAR_CUDA_BULK_MIX").map_or(true, |v| v.trim() != "0"),
            launches: AtomicU64::new(0),
        };
        b.shape(
            env_usize("REALIZAR_CUDA_BULK_WARPS").unwrap_or(8),
            env_usize("REALIZAR_CUDA_BULK_BPS").unwrap_or(2),
            env_usize("REALIZAR_CUDA_BULK_SMEM").unwrap_or(96 * 1024),
        );
        b
    }

    /// Consumer warps a block (16, or else 8), blocks an SM (at least 1, at most what the SM's
    /// registers hold) and a block's shared memory (at most its share of the SM's).
    fn shape(&mut self, warps: usize, blocks_per_sm: usize, smem: usize) {
        self.warps = if warps == 16 { 16 } else { 8 };
        self.blocks_per_sm = blocks_per_sm.clamp(1, max_blocks(self.warps));
        self.smem = smem.min((self.limit / self.blocks_per_sm).saturating_sub(1024));
    }

    /// The launch of a one-token group on a device of `sms` SMs, or None where the kernels do
    /// not take it: rows not a whole number of chunk slices, a weight not 16-byte aligned, fewer
    /// than two stages, or a matrix whose row groups alone fill less of the block slots than
    /// `fill` when each block takes the same number of them.
    fn plan(&self, ty: GgmlType, cols: usize, mats: &[Mat], sms: usize) -> Option<Plan> {
        let names = KERNELS.iter().find(|(t, _)| *t == ty)?.1;
        self.plan_for(names, &[ty], cols, mats, sms)
    }

    /// As `plan`, for a group whose matrices from `split` on are of type `second`, the others
    /// of `first`, in one launch (`MIX_KERNELS`; `mix` on): a stage holds the larger type's
    /// chunk.
    fn plan_mix(
        &self,
        (first, second): (GgmlType, GgmlType),
        cols: usize,
        mats: &[Mat],
        split: usize,
        sms: usize,
    ) -> Option<Plan> {
        if !self.mix || split == 0 || split >= mats.len() {
            return None;
        }
        let names = MIX_KERNELS.iter().find(|(p, _)| *p == (first, second))?.1;
        let plan = self.plan_for(names, &[first, second], cols, mats, sms)?;
        Some(Plan {
            split: Some(split),
            ..plan
        })
    }

    fn plan_for(
        &self,
        names: [&'static str; 2],
        types: &[GgmlType],
        cols: usize,
        mats: &[Mat],
        sms: usize,
    ) -> Option<Plan> {
        if !self.on
            || mats.is_empty()
            || mats.len() > GROUP_MAX
            || cols == 0
            || !cols.is_multiple_of(SLICE)
            || mats.iter().any(|m| !m.w.is_multiple_of(16))
            || !types.iter().all(|t| self.types.contains(t))
        {
            return None;
        }
        let name = names[usize::from(self.warps == 16)];
        let stage = types.iter().map(|&t| self.stage_bytes(t)).max()?;
        let stages = (self.smem.saturating_sub(x_bytes(cols)) / stage).min(MAX_STAGES);
        // Whole shares: each block gets the same number of row groups, or one fewer. Each
        // matrix must fill the slots alone, so that whether a matrix takes these kernels does
        // not depend on its group (a row's bits do not).
        let slots = (sms * self.blocks_per_sm).max(1);
        let fills = |groups: usize| 100 * groups >= self.fill * groups.div_ceil(slots) * slots;
        let groups: usize = mats.iter().map(|m| m.rows.div_ceil(self.rows())).sum();
        let filled = mats.iter().all(|m| fills(m.rows.div_ceil(self.rows())));
        let each = groups.div_ceil(slots).max(1);
        (stages >= 2 && filled).then_some(Plan {
            name,
            stages,
            grid: groups.div_ceil(each),
            smem: x_bytes(cols) + stages * stage,
            split: None,
        })
    }

    /// Rows a chunk: `RW` a consumer warp.
    fn rows(&self) -> usize {
        self.warps * RW
    }

    /// A stage's bytes for `ty`.
    fn stage_bytes(&self, ty: GgmlType) -> usize {
        self.rows() * SLICE / ty.block_size() * ty.type_size()
    }
}

impl CudaBackend {
    /// Whether one-token matmuls take the streamed kernels where they apply (on by default where
    /// the device runs them), and for every type or only `DEFAULT_TYPES` (the default): another
    /// order of a row's sum than the multi-token kernels, so deterministic mode turns them off.
    pub fn set_mmvq_bulk(&mut self, on: bool, all_types: bool) {
        self.bulk.on = on && self.bulk.limit > 0;
        self.bulk.types = types_from(if all_types { "all" } else { "" });
        self.gen.fetch_add(1, Ordering::Relaxed);
    }

    /// The streamed kernels' shape: consumer warps a block (16, or else 8), blocks an SM (at
    /// most what the SM's registers hold: 3 of 8 warps, 1 of 16) and a block's shared memory
    /// (bytes: the input's copy and the stages; at most its share of the SM's). Set from the
    /// environment at start; tests try others.
    pub fn set_mmvq_bulk_shape(&mut self, warps: usize, blocks_per_sm: usize, smem: usize) {
        self.bulk.shape(warps, blocks_per_sm, smem);
        self.gen.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the streamed kernels are on (the device runs them: `bulk_smem_limit`).
    pub fn mmvq_bulk(&self) -> bool {
        self.bulk.on
    }

    /// The least share of the block slots (percent) a matrix's row groups must fill alone for
    /// the streamed kernels to take it (`REALIZAR_CUDA_BULK_FILL`; 0, every matrix, by default).
    pub fn set_mmvq_bulk_fill(&mut self, percent: usize) {
        self.bulk.fill = percent;
        self.gen.fetch_add(1, Ordering::Relaxed);
    }

    /// Rows a chunk of the streamed kernels (a stage holds a slice of 2,048 columns of them): two
    /// a consumer warp.
    pub fn mmvq_bulk_rows(&self) -> usize {
        self.bulk.rows()
    }

    /// Launches of the streamed kernels so far (not counting replays of recorded steps).
    pub fn mmvq_bulk_launches(&self) -> u64 {
        self.bulk.launches.load(Ordering::Relaxed)
    }

    /// Whether the streamed kernels take one token's product with `mats` (of type `ty`, rows
    /// `cols` wide) where the mmvq kernels would.
    pub(super) fn bulk_takes(&self, ty: GgmlType, cols: usize, mats: &[Mat]) -> bool {
        self.bulk.plan(ty, cols, mats, self.sm_count).is_some()
    }

    /// One token's product with the group `mats` on the streamed kernels, from the 8-bit copy
    /// (`xq`, `xds`) of its input. Ok(false) where they do not take it.
    pub(super) fn matmul_bulk(
        &self,
        ty: GgmlType,
        cols: usize,
        mats: &[Mat],
        xq: u64,
        xds: u64,
    ) -> Result<bool, CudaError> {
        let plan = self.bulk.plan(ty, cols, mats, self.sm_count);
        self.launch_bulk(plan, cols, mats, (xq, xds))
    }

    /// As `matmul_bulk` in one launch for a group of two types: `mats[..split]` of `first`, the
    /// rest of `second`. Ok(false) where no kernel takes the pair (or `REALIZAR_CUDA_BULK_MIX=0`).
    pub(super) fn matmul_bulk_mix(
        &self,
        types: (GgmlType, GgmlType),
        cols: usize,
        mats: &[Mat],
        split: usize,
        (xq, xds): (u64, u64),
    ) -> Result<bool, CudaError> {
        let plan = self.bulk.plan_mix(types, cols, mats, split, self.sm_count);
        self.launch_bulk(plan, cols, mats, (xq, xds))
    }

    fn launch_bulk(
        &self,
        plan: Option<Plan>,
        cols: usize,
        mats: &[Mat],
        (xq, xds): (u64, u64),
    ) -> Result<bool, CudaError> {
        let Some(plan) = plan else {
            return Ok(false);
        };
        let (group, _) = Group::new(mats, self.bulk.rows());
        // The mixed kernels take `split` after the stages.
        let args = [
            Arg::Group(group),
            Arg::P(xq),
            Arg::P(xds),
            Arg::I(cols as i32),
            Arg::I(plan.stages as i32),
            Arg::I(plan.split.unwrap_or(0) as i32),
        ];
        self.launch_smem(
            plan.name,
            (plan.grid as u32, 1, 1),
            32 * (self.bulk.warps as u32 + 1),
            plan.smem as u32,
            &args[..5 + usize::from(plan.split.is_some())],
        )?;
        if !self.replaying.load(Ordering::Relaxed) {
            self.bulk.launches.fetch_add(1, Ordering::Relaxed);
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mat(rows: usize) -> Mat {
        Mat {
            w: 1 << 20,
            wh: 0,
            rows,
            out: 0,
        }
    }

    fn config(on: bool) -> Bulk {
        Bulk {
            limit: BULK_SMEM_MAX,
            on,
            types: types_from("all"),
            warps: 8,
            blocks_per_sm: 2,
            smem: 96 * 1024,
            fill: 0,
            mix: true,
            launches: AtomicU64::new(0),
        }
    }

    #[test]
    fn types_from_the_environment() {
        assert_eq!(types_from(""), DEFAULT_TYPES.to_vec());
        assert_eq!(types_from("1"), DEFAULT_TYPES.to_vec());
        assert_eq!(types_from("all").len(), KERNELS.len());
        assert_eq!(types_from("ALL").len(), KERNELS.len());
        assert_eq!(types_from("on"), DEFAULT_TYPES.to_vec());
        assert_eq!(
            types_from("q4_k, Q6_K,f16,bogus"),
            vec![GgmlType::Q4K, GgmlType::Q6K]
        );
    }

    #[test]
    fn archs_with_room_for_the_stages() {
        assert!(bulk_arch(9) && bulk_arch(10));
        assert!(!bulk_arch(8) && !bulk_arch(12));
    }

    /// The host's constants are the kernels' (kernels/bulk.cu).
    #[test]
    fn constants_match_the_kernels() {
        let src = include_str!("../../kernels/bulk.cu");
        assert!(src.contains(&format!("#define BULK_SLICE {SLICE}\n")));
        assert!(src.contains(&format!("#define BULK_MAX_STAGES {MAX_STAGES}\n")));
        assert!(src.contains(&format!("#define BULK_RW {RW}\n")));
        assert!(src.contains(&format!("__maxnreg__({REGS})")));
        assert!(src.contains("MMVQ_BULK(NAME, T, 8) MMVQ_BULK(NAME, T, 16)"));
        for (_, names) in MIX_KERNELS {
            for (name, w) in names.iter().zip(["8", "16"]) {
                let base = name.trim_start_matches("mmvq_bulk_mix_");
                let base = base.strip_suffix(&format!("_w{w}")).unwrap();
                assert!(src.contains(&format!("MMVQ_BULK_MIX({base}, ")), "{name}");
            }
        }
    }

    #[test]
    fn shapes_fit_the_sm() {
        let mut b = config(true);
        b.shape(8, 6, 200 * 1024);
        assert_eq!((b.warps, b.blocks_per_sm), (8, 3));
        assert_eq!(b.smem, BULK_SMEM_MAX / 3 - 1024);
        b.shape(16, 2, 50 * 1024);
        assert_eq!((b.warps, b.blocks_per_sm, b.smem), (16, 1, 50 * 1024));
        b.shape(12, 0, 1 << 30);
        assert_eq!((b.warps, b.blocks_per_sm), (8, 1));
        assert_eq!(b.smem, BULK_SMEM_MAX - 1024);
        let mut none = Bulk {
            limit: 0,
            ..config(true)
        };
        none.shape(8, 2, 96 * 1024);
        assert_eq!(none.smem, 0);
    }

    #[test]
    fn plans_follow_widths_and_stages() {
        let c = config(true);
        // 8B gate/up (Q4_K, 1,152 bytes a row slice, 16 rows a chunk): 5 stages of 18 KiB after
        // the input's 5 KiB.
        let gate = [mat(14336), mat(14336)];
        assert_eq!(
            c.plan(GgmlType::Q4K, 4096, &gate, 132)
                .map(|p| (p.name, p.stages)),
            Some(("mmvq_bulk_q4_k_w8", 5))
        );
        // 8B down in Q6_K: 26,880-byte stages, 2 in 96 KiB after the input's 17.5 KiB; Q8_0's
        // 34,816: 2.
        assert_eq!(
            c.plan(GgmlType::Q6K, 14336, &[mat(4096)], 132)
                .map(|p| (p.name, p.stages)),
            Some(("mmvq_bulk_q6_k_w8", 2))
        );
        assert_eq!(
            c.plan(GgmlType::Q8_0, 2048, &[mat(33)], 132)
                .map(|p| (p.name, p.stages)),
            Some(("mmvq_bulk_q8_0_w8", 2))
        );
        // Any rows: a matrix's last row group may be short.
        let qkv = [mat(4096), mat(1023), mat(1)];
        assert!(c.plan(GgmlType::Q4_0, 4096, &qkv, 132).is_some());
        // Widths that are not whole slices (SmolLM2's 576), a weight that is not 16-byte
        // aligned, a type without a kernel, the switch off.
        assert_eq!(c.plan(GgmlType::Q4_1, 576, &[mat(64)], 132), None);
        assert_eq!(c.plan(GgmlType::Q4K, 3072, &[mat(64)], 132), None);
        let odd = [Mat { w: 8, ..mat(64) }];
        assert_eq!(c.plan(GgmlType::Q4K, 4096, &odd, 132), None);
        assert_eq!(c.plan(GgmlType::Q2K, 4096, &[mat(64)], 132), None);
        assert_eq!(
            config(false).plan(GgmlType::Q4K, 4096, &[mat(64)], 132),
            None
        );
        // By default Q4_0, Q4_K and Q6_K.
        let default = Bulk {
            types: types_from(""),
            ..config(true)
        };
        assert_eq!(default.plan(GgmlType::Q8_0, 4096, &gate, 132), None);
        assert!(default.plan(GgmlType::Q4K, 4096, &gate, 132).is_some());
        assert!(default.plan(GgmlType::Q4_0, 4096, &gate, 132).is_some());
        // Room for fewer than two stages.
        let small = Bulk {
            smem: 40 * 1024,
            ..config(true)
        };
        assert_eq!(small.plan(GgmlType::Q8_0, 2048, &[mat(8)], 132), None);
        assert!(small.plan(GgmlType::Q4K, 2048, &[mat(8)], 132).is_some());
    }

    #[test]
    fn mixed_plans_hold_the_larger_chunk() {
        let c = config(true);
        // 8B q/k/v with v in Q6_K: a stage holds 16 rows of Q6_K's 1,680-byte slices (26,880
        // bytes), 3 stages after the input's 5 KiB; 384 row groups of 16 rows, two a block.
        let qkv = [mat(4096), mat(1024), mat(1024)];
        let types = (GgmlType::Q4K, GgmlType::Q6K);
        let want = Plan {
            name: "mmvq_bulk_mix_q4_k_q6_k_w8",
            stages: 3,
            grid: 192,
            smem: 5120 + 3 * 26880,
            split: Some(2),
        };
        assert_eq!(c.plan_mix(types, 4096, &qkv, 2, 132), Some(want));
        // A split with no matrix of one type.
        assert_eq!(c.plan_mix(types, 4096, &qkv, 0, 132), None);
        assert_eq!(c.plan_mix(types, 4096, &qkv, 3, 132), None);
        // No kernel for the pair, the pair's order reversed, a type not taken, mixing off.
        assert_eq!(
            c.plan_mix((GgmlType::Q4_0, GgmlType::Q6K), 4096, &qkv, 2, 132),
            None
        );
        assert_eq!(
            c.plan_mix((GgmlType::Q6K, GgmlType::Q4K), 4096, &qkv, 2, 132),
            None
        );
        let q4k_only = Bulk {
            types: vec![GgmlType::Q4K],
            ..config(true)
        };
        assert_eq!(q4k_only.plan_mix(types, 4096, &qkv, 2, 132), None);
        let off = Bulk {
            mix: false,
            ..config(true)
        };
        assert_eq!(off.plan_mix(types, 4096, &qkv, 2, 132), None);
        assert!(off.plan(GgmlType::Q4K, 4096, &qkv, 132).is_some());
    }

    #[test]
    fn plans_fill_the_slots() {
        // REALIZAR_CUDA_BULK_FILL=80.
        let c = Bulk {
            fill: 80,
            ..config(true)
        };
        // 8B gate/up on 132 SMs, 2 blocks an SM: 1,792 row groups of 16, 7 a block, 256 blocks;
        // each matrix alone 896, 4 a block (85% of the slots); 96 KiB of shared memory.
        let gate = [mat(14336), mat(14336)];
        let want = Plan {
            name: "mmvq_bulk_q4_k_w8",
            stages: 5,
            grid: 256,
            smem: 5120 + 5 * 18432,
            split: None,
        };
        assert_eq!(c.plan(GgmlType::Q4K, 4096, &gate, 132), Some(want));
        // At a fill of 80: o (256 row groups, one a block: 97%) but not k (64: 24%), alone or
        // with q; a 1B's o (128: 48%).
        let o = c.plan(GgmlType::Q4K, 4096, &[mat(4096)], 132);
        assert_eq!(o.map(|p| p.grid), Some(256));
        assert_eq!(c.plan(GgmlType::Q4K, 4096, &[mat(1024)], 132), None);
        let qk = [mat(4096), mat(1024)];
        assert_eq!(c.plan(GgmlType::Q4K, 4096, &qk, 132), None);
        assert_eq!(c.plan(GgmlType::Q4K, 2048, &[mat(2048)], 132), None);
        // Every matrix at the default fill (0).
        assert!(config(true)
            .plan(GgmlType::Q4K, 2048, &[mat(2048)], 132)
            .is_some());
        assert_eq!(
            config(true)
                .plan(GgmlType::Q4K, 4096, &qk, 132)
                .map(|p| p.grid),
            Some(160)
        );
    }
}
