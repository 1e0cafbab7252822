//! Fused kernels: fewer launches per layer for decode, where each launch costs more than its
//! work (docs/perf-notes.md, "Where the time goes").
//!
//! - `add_rms_norm`: the residual add and the next sub-block's input norm in one kernel.
//! - `rope_kv_store`: rope of q and k and the KV-cache write in one kernel.
//! - The 8-bit copy of a matmul input (what `quantize_q8_1` would write), or its f16 copy for
//!   the f16 mmq kernels (what `half_mma_input` would write) or for cuBLAS (what `to_half`
//!   would write: f16 weight copies, prefill tiles), produced by the kernel that writes
//!   the input, when the next matmul will use it: rms_norm, add_rms_norm, glu and attention
//!   (backend/attention.rs, in the attention kernel or its merge). The copy is
//!   recorded in the matmul scratch as if the conversion had just run, so the matmul skips its
//!   launch; the bytes are the same.
//!
//! `set_fused(false)` runs the unfused kernels instead (the tests compare both).

use realizar_model::backend::{AttnPlan, RopeParams};
use realizar_model::config::{Activation, RopeLayout};
use realizar_model::ModelError;
use realizar_quant::GgmlType;

use super::matmul::{ensure, GEMM_F16};
use super::{grid1, prefix, Arg, CudaBackend, CudaBuf, CudaKv, CudaWeight, DevKv};
use crate::CudaError;

/// The narrowest rows a norm runs as a cluster for (`norm_cluster`).
const NORM_CLUSTER_MIN_COLS: usize = 4096;

/// Blocks a row and threads a block of the cluster norms (kernels/norm.cu, `norm_cluster`):
/// the most blocks, up to 8 (the portable cluster size), that split a row into slices of whole
/// 32-element groups, each slice at most 8 elements a thread of 1024 (`NORM_REGS`); a thread an
/// element where the slice allows. None: one block a row (rows that are not 32-element groups,
/// or too long).
pub(crate) fn norm_cluster(cols: usize) -> Option<(usize, u32)> {
    if !cols.is_multiple_of(32) {
        return None;
    }
    let n = (2..=CLUSTER_MAX)
        .rev()
        .find(|&n| (cols / 32).is_multiple_of(n))?;
    let len = cols / n;
    (len <= NORM_REGS * 1024).then(|| (n, len.min(1024) as u32))
}

/// The glu kernels' `act` argument (`glu_act` in kernels/common.cuh).
fn act_code(act: Activation) -> i32 {
    match act {
        Activation::Silu => 0,
        Activation::GeluTanh => 1,
    }
}

/// The fused gate/up/glu kernel of a weight type (the f32 kernels').
fn glu_kernel(ty: GgmlType) -> Option<&'static str> {
    Some(match ty {
        GgmlType::Q4_0 => "matvec_glu_q4_0",
        GgmlType::Q4_1 => "matvec_glu_q4_1",
        GgmlType::Q5_0 => "matvec_glu_q5_0",
        GgmlType::Q5_1 => "matvec_glu_q5_1",
        GgmlType::Q8_0 => "matvec_glu_q8_0",
        GgmlType::Q4K => "matvec_glu_q4_k",
        GgmlType::Q5K => "matvec_glu_q5_k",
        GgmlType::Q6K => "matvec_glu_q6_k",
        _ => return None,
    })
}

/// The most blocks of a portable cluster.
const CLUSTER_MAX: usize = 8;

/// Elements a thread of a norm kernel keeps in registers (`NORM_REGS` in kernels/norm.cu).
const NORM_REGS: usize = 8;

/// Device addresses of a matmul input's copies that the kernel writing the input also writes
/// (0: not this one): the 8-bit values and scales, or the f16 copy (in the f16 mmq kernels'
/// order, or with the low bit of `xm` set, in plain row order for cuBLAS).
#[derive(Clone, Copy, Default)]
pub(super) struct ActSlot {
    pub(super) xq: u64,
    pub(super) xds: u64,
    pub(super) xm: u64,
}

impl CudaBackend {
    /// Fused kernels on or off (on by default; `REALIZAR_CUDA_FUSE=0` turns them off).
    pub fn set_fused(&mut self, on: bool) {
        self.fused = on;
        // Recorded steps ran the old kernels.
        self.gen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Where a kernel writing `rows x cols` matmul input may also write the copy the next
    /// matmul will read: 8-bit (mmvq and the 8-bit mmq kernels) or f16 (the f16 mmq kernels);
    /// none in exact mode, for the f32 kernels of narrow rows, the cuBLAS path, or with fusion
    /// off.
    pub(super) fn act_slot(&self, rows: usize, cols: usize) -> Result<ActSlot, CudaError> {
        let none = ActSlot::default();
        if !self.fused || self.exact || rows == 0 || !cols.is_multiple_of(32) {
            return Ok(none);
        }
        let mut s = self.scratch();
        if self.f16_weights_take(rows) || (!self.mmq_takes(rows) && self.gemm_takes(rows)) {
            // cuBLAS next (on f16 weight copies or f16 tiles): the plain f16 copy `to_half`
            // would write, the address tagged with its low bit (`put_half` in common.cuh).
            let xh = s.gemm_input(self, rows * cols)?;
            return Ok(ActSlot { xm: xh | 1, ..none });
        }
        if self.mmq_takes(rows) && self.mmq_f16_takes(rows) {
            let xm = ensure(self, &mut s.xm, rows * cols)?;
            s.halved = None;
            return Ok(ActSlot { xm, ..none });
        }
        let quantized_path =
            self.mmq_takes(rows) || !self.gemm_takes(rows) && cols >= self.mmvq_min_cols;
        if !quantized_path {
            return Ok(none);
        }
        let xq = ensure(self, &mut s.xq, rows * cols)?;
        let xds = ensure(self, &mut s.xds, 2 * rows * cols / 32)?;
        s.quantized = None;
        Ok(ActSlot { xq, xds, xm: 0 })
    }

    /// Records that the launch just made wrote the copies in `slot` of `ptr`'s `rows x cols`.
    pub(super) fn act_written(&self, slot: ActSlot, ptr: u64, rows: usize, cols: usize) {
        let record = self.input_record(ptr, rows, cols);
        let mut s = self.scratch();
        if slot.xq != 0 {
            s.quantized = Some(record);
        }
        if slot.xm & 1 != 0 {
            s.gemm_halved = Some((record, GEMM_F16));
        } else if slot.xm != 0 {
            s.halved = Some(record);
        }
    }

    /// Threads of a one-block-per-row norm kernel: about 4 elements each.
    fn norm_threads(cols: usize) -> u32 {
        (cols / 4).div_ceil(32).clamp(1, 32) as u32 * 32
    }

    /// Launches a one-block-per-row norm kernel `name(prefix.., out, cols, eps, xq, xds, xm)`,
    /// with the output's 8-bit or f16 copy where the next matmul will use it.
    fn launch_norm(
        &self,
        name: &'static str,
        mut args: Vec<Arg>,
        out: &CudaBuf,
        eps: f32,
    ) -> Result<(), CudaError> {
        let (rows, cols) = (out.rows, out.cols);
        if rows == 0 {
            return Ok(());
        }
        let slot = self.act_slot(rows, cols)?;
        args.extend([
            Arg::P(out.ptr),
            Arg::I(cols as i32),
            Arg::F(eps),
            Arg::P(slot.xq),
            Arg::P(slot.xds),
            Arg::P(slot.xm),
        ]);
        // One row on sm_90 and later: a cluster of blocks. (H200, 8B Q4_K_M: add_rms_norm 6.10
        // -> 5.25 us, tg128 +2.4-2.9%. Not for more rows: prefill (16 x 512 tokens) -16%, batched
        // decode -2 to -6%; nor for narrower rows: SmolLM2, 576 columns, tg128 -6 to -7%.)
        let cluster_kernel = match name {
            "rms_norm" => Some("rms_norm_cl"),
            "add_rms_norm" => Some("add_rms_norm_cl"),
            _ => None,
        };
        let cluster = norm_cluster(cols)
            .filter(|_| self.cluster_norms && rows == 1 && cols >= NORM_CLUSTER_MIN_COLS)
            .zip(cluster_kernel);
        match cluster {
            Some(((n, threads), name)) => {
                self.launch_cluster(name, ((rows * n) as u32, 1, 1), threads, n as u32, &args)?
            }
            None => self.launch(name, (rows as u32, 1, 1), Self::norm_threads(cols), &args)?,
        }
        self.act_written(slot, out.ptr, rows, cols);
        Ok(())
    }

    pub(super) fn do_rms_norm(
        &self,
        x: &CudaBuf,
        w: &CudaWeight,
        eps: f32,
        out: &mut CudaBuf,
    ) -> Result<(), CudaError> {
        if out.rows != x.rows || out.cols != x.cols {
            return Err(CudaError::Unsupported(format!(
                "rms_norm: {}x{} into {}x{}",
                x.rows, x.cols, out.rows, out.cols
            )));
        }
        self.launch_norm("rms_norm", vec![Arg::P(x.ptr), Arg::P(w.ptr())], out, eps)
    }

    pub(super) fn do_add_rms_norm(
        &self,
        x: &CudaBuf,
        y: &CudaBuf,
        w: &CudaWeight,
        eps: f32,
        out: &mut CudaBuf,
    ) -> Result<(), CudaError> {
        if y.rows != x.rows || y.cols != x.cols || out.rows != x.rows || out.cols != x.cols {
            return Err(CudaError::Unsupported(format!(
                "add_rms_norm: {}x{} + {}x{} into {}x{}",
                x.rows, x.cols, y.rows, y.cols, out.rows, out.cols
            )));
        }
        let args = vec![Arg::P(x.ptr), Arg::P(y.ptr), Arg::P(w.ptr())];
        self.launch_norm("add_rms_norm", args, out, eps)
    }

    pub(super) fn do_glu(
        &self,
        gate: &CudaBuf,
        up: &CudaBuf,
        act: Activation,
    ) -> Result<(), CudaError> {
        let n = gate.len();
        if n == 0 {
            return Ok(());
        }
        let slot = self.act_slot(gate.rows, gate.cols)?;
        let mut args = vec![
            Arg::P(gate.ptr),
            Arg::P(up.ptr),
            Arg::L(n as i64),
            Arg::I(act_code(act)),
        ];
        let name = if slot.xq != 0 || slot.xm != 0 {
            args.extend([Arg::P(slot.xq), Arg::P(slot.xds), Arg::P(slot.xm)]);
            "glu_q8"
        } else {
            "glu"
        };
        self.launch(name, grid1(n, 256), 256, &args)?;
        self.act_written(slot, gate.ptr, gate.rows, gate.cols);
        Ok(())
    }

    /// gate = act(W_gate x) * (W_up x) for one token in one kernel (kernels/matvec.cu
    /// `matvec_glu_*`), in place of the f32 kernels' grouped matmul and `glu`: narrow rows (or
    /// exact mode) whose down projection also reads f32 activations, as SmolLM2's. Each row's
    /// sum is the same bits; `up` is left as it was. Ok(false) where it does not apply (fusion
    /// off, more tokens, other matmul paths, weight types or a down projection that reads an
    /// 8-bit copy, which `glu` writes): the caller runs the matmuls and `glu`.
    pub(super) fn do_gate_up_glu(
        &self,
        wg: &CudaWeight,
        wu: &CudaWeight,
        x: &CudaBuf,
        gate: &CudaBuf,
        up: &CudaBuf,
        act: Activation,
    ) -> Result<bool, ModelError> {
        if !self.fused || x.rows != 1 {
            return Ok(false);
        }
        let ((tg, g), (tu, u)) = (self.mat(wg, x, gate)?, self.mat(wu, x, up)?);
        let (rows, cols) = (g.rows, x.cols);
        // The f32 kernels for gate and up, and f32 activations for the down projection (the
        // f32 kernels there too, so act_slot gives no 8-bit copy).
        let takes = tg == tu
            && u.rows == rows
            && self.one_token_mmvq(cols) == Some(false)
            && self.one_token_mmvq(rows) == Some(false);
        let Some(name) = glu_kernel(tg).filter(|_| takes) else {
            return Ok(false);
        };
        let args = [
            Arg::P(g.w),
            Arg::P(u.w),
            Arg::P(x.ptr),
            Arg::P(gate.ptr),
            Arg::I(rows as i32),
            Arg::I(cols as i32),
            Arg::I(act_code(act)),
        ];
        self.launch(name, (rows.div_ceil(4) as u32, 1, 1), 128, &args)?;
        Ok(true)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn do_rope_kv_store(
        &self,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        kv: &CudaKv,
        layer: usize,
        plan: &AttnPlan,
        p: RopeParams,
    ) -> Result<(), CudaError> {
        let t = q.rows;
        if t == 0 {
            return Ok(());
        }
        let hd = p.head_dim;
        if hd == 0
            || p.rope_dim > hd
            || !q.cols.is_multiple_of(hd)
            || k.rows != t
            || v.rows != t
            || k.cols != kv.kv_dim
            || v.cols != kv.kv_dim
            || !k.cols.is_multiple_of(hd)
            || layer >= kv.kp.len()
            || (kv.ty == DevKv::Q8_0 && !hd.is_multiple_of(32))
        {
            return Err(CudaError::Unsupported(format!(
                "rope_kv_store: head_dim {hd} (a multiple of 32 for q8_0), rope_dim {}, q {}x{}, k {}x{}, v {}x{}, kv_dim {}, \
                 layer {layer} of {}",
                p.rope_dim,
                q.rows,
                q.cols,
                k.rows,
                k.cols,
                v.rows,
                v.cols,
                kv.kv_dim,
                kv.kp.len()
            )));
        }
        let slots = prefix(&plan.slots, t, "slots")?;
        if let Some(&bad) = slots.iter().find(|&&s| s as usize >= kv.n_slots) {
            return Err(CudaError::Unsupported(format!(
                "KV slot {bad} outside the cache of {} slots",
                kv.n_slots
            )));
        }
        let pos = {
            let mut idx = self.indices();
            let pos = idx.positions.set(
                &self.stream,
                &self.gen,
                prefix(&plan.positions, t, "positions")?,
            )?;
            let s = idx.slots.set(&self.stream, &self.gen, slots)?;
            (pos, s)
        };
        let name = super::attention::cache_kernels(kv.ty).2;
        let layout = match p.layout {
            RopeLayout::Normal => 0,
            RopeLayout::Neox => 1,
        };
        let args = [
            Arg::P(q.ptr),
            Arg::P(k.ptr),
            Arg::P(v.ptr),
            Arg::P(pos.0),
            Arg::P(pos.1),
            Arg::P(kv.kp[layer]),
            Arg::P(kv.vp[layer]),
            Arg::I(q.cols as i32),
            Arg::I(kv.kv_dim as i32),
            Arg::I(hd as i32),
            Arg::I(p.rope_dim as i32),
            Arg::F(p.theta),
            Arg::F(p.scale),
            Arg::I(layout),
            Arg::L(kv.sc_off as i64),
        ];
        let heads = q.cols / hd + k.cols / hd;
        self.launch(name, (t as u32, heads as u32, 1), 64, &args)
    }
}

#[cfg(test)]
mod tests {
    use super::norm_cluster;

    #[test]
    fn cluster_norms_split_rows_into_whole_groups() {
        // 8B, 1B, SmolLM2, Qwen2-0.5B: 8 blocks of 512 and 256 threads, 6 of 96, 7 of 128.
        assert_eq!(norm_cluster(4096), Some((8, 512)));
        assert_eq!(norm_cluster(2048), Some((8, 256)));
        assert_eq!(norm_cluster(576), Some((6, 96)));
        assert_eq!(norm_cluster(896), Some((7, 128)));
        // Longer slices than a block's threads: several elements a thread.
        assert_eq!(norm_cluster(16384), Some((8, 1024)));
        for cols in (32..20_000).step_by(32) {
            if let Some((n, threads)) = norm_cluster(cols) {
                let len = cols / n;
                assert!(
                    (2..=8).contains(&n) && cols % n == 0 && len % 32 == 0,
                    "{cols}"
                );
                assert!(threads % 32 == 0 && len <= 8 * threads as usize, "{cols}");
            }
        }
        // One 32-element group, or not whole groups: one block a row.
        assert_eq!(norm_cluster(32), None);
        assert_eq!(norm_cluster(100), None);
        // Beyond 8 x 8 x 1024 elements.
        assert_eq!(norm_cluster(8 * 8 * 1024 + 8 * 32), None);
    }
}
