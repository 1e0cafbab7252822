//! The `Backend` trait's ops on the GPU, and the kernel chosen for each weight type.
//!
//! Ops whose trait method returns `()` keep their first error as the backend's sticky error
//! (see `CudaBackend::keep`); the checks here turn bad shapes and index arrays into errors before
//! anything is launched.

use realizar_model::backend::{AttnParams, AttnPlan, Backend, KvType, RopeParams, TopK, WeightUse};
use realizar_model::config::{Activation, RopeLayout};
use realizar_model::draw::draw_rows;
use realizar_model::weights::TensorView;
use realizar_model::{Draw, ModelError};
use realizar_quant::GgmlType;

use super::{grid1, prefix, raw, Arg, CudaBackend, CudaBuf, CudaKv, CudaWeight, DevKv};
use crate::CudaError;

/// Most banned ids `sample_rows` takes (kernels/sample.cu, `SAMPLE_MAX_BANNED`).
const SAMPLE_MAX_BANNED: usize = 64;

/// 0 = f32, 1 = f16, 2 = bf16 for the float kernels; None for block types.
pub(super) fn float_kind(ty: GgmlType) -> Option<i32> {
    match ty {
        GgmlType::F32 => Some(0),
        GgmlType::F16 => Some(1),
        GgmlType::Bf16 => Some(2),
        _ => None,
    }
}

/// The matrix-vector kernel for a weight type, for `nt` (1 or 8) tokens per weight read.
pub(super) fn matvec_kernel(ty: GgmlType, nt: usize) -> Option<&'static str> {
    let (one, eight) = match ty {
        GgmlType::Q4_0 => ("matvec_q4_0_1", "matvec_q4_0_8"),
        GgmlType::Q4_1 => ("matvec_q4_1_1", "matvec_q4_1_8"),
        GgmlType::Q5_0 => ("matvec_q5_0_1", "matvec_q5_0_8"),
        GgmlType::Q5_1 => ("matvec_q5_1_1", "matvec_q5_1_8"),
        GgmlType::Q8_0 => ("matvec_q8_0_1", "matvec_q8_0_8"),
        GgmlType::Q4K => ("matvec_q4_k_1", "matvec_q4_k_8"),
        GgmlType::Q5K => ("matvec_q5_k_1", "matvec_q5_k_8"),
        GgmlType::Q6K => ("matvec_q6_k_1", "matvec_q6_k_8"),
        GgmlType::F32 => ("matvec_f32_1", "matvec_f32_8"),
        GgmlType::F16 => ("matvec_f16_1", "matvec_f16_8"),
        GgmlType::Bf16 => ("matvec_bf16_1", "matvec_bf16_8"),
        _ => return None,
    };
    Some(if nt == 1 { one } else { eight })
}

/// The embedding kernel of a block type.
pub(super) fn embed_kernel(ty: GgmlType) -> Option<&'static str> {
    Some(match ty {
        GgmlType::Q4_0 => "embed_q4_0",
        GgmlType::Q4_1 => "embed_q4_1",
        GgmlType::Q5_0 => "embed_q5_0",
        GgmlType::Q5_1 => "embed_q5_1",
        GgmlType::Q8_0 => "embed_q8_0",
        GgmlType::Q4K => "embed_q4_k",
        GgmlType::Q5K => "embed_q5_k",
        GgmlType::Q6K => "embed_q6_k",
        _ => return None,
    })
}

/// The weight types whose matrices the CUDA backend multiplies.
pub const SUPPORTED_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Bf16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

impl Backend for CudaBackend {
    type Weight = CudaWeight;
    type Buf = CudaBuf;
    type Kv = CudaKv;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn upload(&self, t: &TensorView<'_>, how: WeightUse) -> Result<CudaWeight, ModelError> {
        self.upload_weight(t, how)
    }

    fn alloc(&self, rows: usize, cols: usize) -> Result<CudaBuf, ModelError> {
        Ok(self.alloc_buf(rows, cols)?)
    }

    fn set_rows(&self, buf: &mut CudaBuf, rows: usize) {
        buf.rows = rows.min(buf.cap);
    }

    fn alloc_kv(
        &self,
        n_layers: usize,
        n_slots: usize,
        kv_dim: usize,
        ty: KvType,
    ) -> Result<CudaKv, ModelError> {
        let dev_ty = match ty {
            KvType::F16 => DevKv::F16,
            KvType::F32 => DevKv::F32,
            KvType::Fp8 => DevKv::Fp8,
            KvType::Q8_0 if kv_dim.is_multiple_of(32) => DevKv::Q8_0,
            KvType::Q8_0 => {
                return Err(CudaError::Unsupported(format!(
                    "a q8_0 KV cache needs K/V rows of a multiple of 32 values (this model's: \
                     {kv_dim})"
                ))
                .into())
            }
        };
        let bytes = ty.bytes(n_slots * kv_dim).max(1);
        self.check_fits("KV cache", 2 * n_layers * bytes)?;
        let mut kv = CudaKv {
            _k: Vec::new(),
            _v: Vec::new(),
            kp: Vec::new(),
            vp: Vec::new(),
            kv_dim,
            n_slots,
            ty: dev_ty,
            sc_off: n_slots * kv_dim,
        };
        for _ in 0..n_layers {
            let k = self
                .stream
                .alloc_zeros::<u8>(bytes)
                .map_err(|e| CudaError::call("cuMemAlloc(KV cache)", e))?;
            let v = self
                .stream
                .alloc_zeros::<u8>(bytes)
                .map_err(|e| CudaError::call("cuMemAlloc(KV cache)", e))?;
            kv.kp.push(raw(&k, &self.stream));
            kv.vp.push(raw(&v, &self.stream));
            kv._k.push(k);
            kv._v.push(v);
        }
        Ok(kv)
    }

    fn embed(
        &self,
        table: &CudaWeight,
        ids: &[u32],
        scale: f32,
        out: &mut CudaBuf,
    ) -> Result<(), ModelError> {
        self.check()?;
        self.do_embed(table, ids, scale, out)
    }

    fn rms_norm(&self, x: &CudaBuf, w: &CudaWeight, eps: f32, out: &mut CudaBuf) {
        self.keep(self.do_rms_norm(x, w, eps, out));
    }

    fn rms_norm_heads(&self, x: &mut CudaBuf, w: &CudaWeight, head_dim: usize, eps: f32) {
        let n = x.len() / head_dim.max(1);
        if n == 0 {
            return;
        }
        let args = [
            Arg::P(x.ptr),
            Arg::P(w.ptr()),
            Arg::I(n as i32),
            Arg::I(head_dim as i32),
            Arg::F(eps),
        ];
        self.keep(self.launch("rms_norm_heads", grid1(n, 8), 256, &args));
    }

    fn matmul(&self, w: &CudaWeight, x: &CudaBuf, out: &mut CudaBuf) -> Result<(), ModelError> {
        self.check()?;
        self.do_matmul_many(&[w], x, &[out])
    }

    fn matmul_many(
        &self,
        ws: &[&CudaWeight],
        x: &CudaBuf,
        outs: &mut [&mut CudaBuf],
    ) -> Result<(), ModelError> {
        self.check()?;
        let outs: Vec<&CudaBuf> = outs.iter().map(|o| &**o).collect();
        self.do_matmul_many(ws, x, &outs)
    }

    fn add_bias(&self, x: &mut CudaBuf, b: &CudaWeight) {
        let n = x.len();
        if n == 0 {
            return;
        }
        let args = [
            Arg::P(x.ptr),
            Arg::P(b.ptr()),
            Arg::L(n as i64),
            Arg::I(x.cols as i32),
        ];
        self.keep(self.launch("add_bias", grid1(n, 256), 256, &args));
    }

    fn rope(&self, x: &mut CudaBuf, positions: &[u32], p: RopeParams) {
        let r = (|| {
            if p.head_dim == 0 || p.rope_dim > p.head_dim || !x.cols.is_multiple_of(p.head_dim) {
                return Err(CudaError::Unsupported(format!(
                    "rope: head_dim {}, rope_dim {}, width {}",
                    p.head_dim, p.rope_dim, x.cols
                )));
            }
            let heads = x.cols / p.head_dim;
            let total = x.rows * heads * (p.rope_dim / 2);
            if total == 0 {
                return Ok(());
            }
            let pos = self.indices().positions.set(
                &self.stream,
                &self.gen,
                prefix(positions, x.rows, "positions")?,
            )?;
            let layout = match p.layout {
                RopeLayout::Normal => 0,
                RopeLayout::Neox => 1,
            };
            let args = [
                Arg::P(x.ptr),
                Arg::P(pos),
                Arg::I(x.rows as i32),
                Arg::I(x.cols as i32),
                Arg::I(p.head_dim as i32),
                Arg::I(p.rope_dim as i32),
                Arg::F(p.theta),
                Arg::F(p.scale),
                Arg::I(layout),
            ];
            self.launch("rope", grid1(total, 256), 256, &args)
        })();
        self.keep(r);
    }

    fn kv_store(&self, kv: &mut CudaKv, layer: usize, k: &CudaBuf, v: &CudaBuf, slots: &[u32]) {
        let r = (|| {
            let t = k.rows;
            if t == 0 {
                return Ok(());
            }
            let slots = prefix(slots, t, "slots")?;
            if let Some(&bad) = slots.iter().find(|&&s| s as usize >= kv.n_slots) {
                return Err(CudaError::Unsupported(format!(
                    "KV slot {bad} outside the cache of {} slots",
                    kv.n_slots
                )));
            }
            if layer >= kv.kp.len() || k.cols != kv.kv_dim || v.cols != kv.kv_dim {
                return Err(CudaError::Unsupported(format!(
                    "kv_store: layer {layer} of {}, widths {}/{} for kv_dim {}",
                    kv.kp.len(),
                    k.cols,
                    v.cols,
                    kv.kv_dim
                )));
            }
            let s = self.indices().slots.set(&self.stream, &self.gen, slots)?;
            let name = super::attention::cache_kernels(kv.ty).1;
            let args = [
                Arg::P(kv.kp[layer]),
                Arg::P(kv.vp[layer]),
                Arg::P(k.ptr),
                Arg::P(v.ptr),
                Arg::P(s),
                Arg::I(kv.kv_dim as i32),
                Arg::L(kv.sc_off as i64),
            ];
            self.launch(name, (t as u32, 1, 1), 256, &args)
        })();
        self.keep(r);
    }

    fn attention(
        &self,
        q: &CudaBuf,
        kv: &CudaKv,
        layer: usize,
        plan: &AttnPlan,
        p: AttnParams,
        out: &mut CudaBuf,
    ) {
        self.keep(self.do_attention(q, kv, layer, plan, p, out));
    }

    fn glu(&self, gate: &mut CudaBuf, up: &CudaBuf, act: Activation) {
        self.keep(self.do_glu(gate, up, act));
    }

    fn gate_up_glu(
        &self,
        w_gate: &CudaWeight,
        w_up: &CudaWeight,
        x: &CudaBuf,
        gate: &mut CudaBuf,
        up: &mut CudaBuf,
        act: Activation,
    ) -> Result<(), ModelError> {
        self.check()?;
        if self.do_gate_up_glu(w_gate, w_up, x, gate, up, act)? {
            return Ok(());
        }
        self.matmul_many(&[w_gate, w_up], x, &mut [&mut *gate, &mut *up])?;
        self.glu(gate, up, act);
        Ok(())
    }

    fn add(&self, x: &mut CudaBuf, y: &CudaBuf) {
        let n = x.len();
        if n == 0 {
            return;
        }
        let args = [Arg::P(x.ptr), Arg::P(y.ptr), Arg::L(n as i64)];
        self.keep(self.launch("add", grid1(n, 256), 256, &args));
    }

    fn add_rms_norm(
        &self,
        x: &mut CudaBuf,
        y: &CudaBuf,
        w: &CudaWeight,
        eps: f32,
        out: &mut CudaBuf,
    ) {
        if self.fused {
            self.keep(self.do_add_rms_norm(x, y, w, eps, out));
        } else {
            self.add(x, y);
            self.rms_norm(x, w, eps, out);
        }
    }

    fn rope_kv_store(
        &self,
        q: &mut CudaBuf,
        k: &mut CudaBuf,
        v: &CudaBuf,
        kv: &mut CudaKv,
        layer: usize,
        plan: &AttnPlan,
        p: RopeParams,
    ) {
        if self.fused {
            self.keep(self.do_rope_kv_store(q, k, v, kv, layer, plan, p));
        } else {
            self.rope(q, &plan.positions, p);
            self.rope(k, &plan.positions, p);
            self.kv_store(kv, layer, k, v, &plan.slots);
        }
    }

    fn softcap(&self, x: &mut CudaBuf, cap: f32) {
        let n = x.len();
        if n == 0 {
            return;
        }
        let args = [Arg::P(x.ptr), Arg::L(n as i64), Arg::F(cap)];
        self.keep(self.launch("softcap", grid1(n, 256), 256, &args));
    }

    fn gather_rows(&self, x: &CudaBuf, rows: &[usize], out: &mut CudaBuf) {
        let r = (|| {
            if rows.is_empty() {
                return Ok(());
            }
            if let Some(&bad) = rows.iter().find(|&&r| r >= x.rows) {
                return Err(CudaError::Unsupported(format!(
                    "gather_rows: row {bad} of {}",
                    x.rows
                )));
            }
            if out.cap < rows.len() || out.cols != x.cols {
                return Err(CudaError::Unsupported(format!(
                    "gather_rows: {} rows into {}x{}",
                    rows.len(),
                    out.cap,
                    out.cols
                )));
            }
            let r32: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
            let p = self.indices().gather.set(&self.stream, &self.gen, &r32)?;
            let args = [
                Arg::P(x.ptr),
                Arg::P(p),
                Arg::I(x.cols as i32),
                Arg::P(out.ptr),
            ];
            self.launch("gather_rows", (rows.len() as u32, 1, 1), 256, &args)
        })();
        self.keep(r);
    }

    fn read(&self, x: &CudaBuf, rows: usize) -> Result<Vec<f32>, ModelError> {
        self.check()?;
        let n = rows.min(x.rows) * x.cols;
        let mut host = vec![0.0f32; n];
        if n > 0 {
            self.stream
                .memcpy_dtoh(&x.mem.slice(0..n), &mut host)
                .map_err(|e| CudaError::call("cuMemcpyDtoH", e))?;
        }
        self.stream
            .synchronize()
            .map_err(|e| CudaError::call("cuStreamSynchronize", e))?;
        Ok(host)
    }

    fn selects_top_k(&self) -> bool {
        true
    }

    fn samples_on_device(&self) -> bool {
        true
    }

    fn sample_rows(
        &self,
        x: &CudaBuf,
        draws: &[Draw],
        banned: &[u32],
    ) -> Result<Vec<u32>, ModelError> {
        self.check()?;
        let rows = draws.len();
        if rows == 0 {
            return Ok(Vec::new());
        }
        if rows > x.rows {
            return Err(CudaError::Unsupported(format!(
                "sample_rows: {rows} draws of {} rows",
                x.rows
            ))
            .into());
        }
        if banned.len() > SAMPLE_MAX_BANNED && draws.iter().any(|d| d.ban) {
            // More banned ids than the kernel holds: the rows go to the host reference.
            return Ok(draw_rows(&self.read(x, rows)?, draws, banned));
        }
        let banned = &banned[..banned.len().min(SAMPLE_MAX_BANNED)];
        // Four words per row (kernels/sample.cu): inv_temp, ban, u low, u high.
        let words: Vec<u32> = draws
            .iter()
            .flat_map(|d| {
                let u = d.u.to_bits();
                [
                    d.inv_temp.to_bits(),
                    u32::from(d.ban),
                    u as u32,
                    (u >> 32) as u32,
                ]
            })
            .collect();
        let (dw, bn) = {
            let mut idx = self.indices();
            let dw = idx.draws.set(&self.stream, &self.gen, &words)?;
            let bn = idx.banned.set(
                &self.stream,
                &self.gen,
                if banned.is_empty() { &[0] } else { banned },
            )?;
            (dw, bn)
        };
        let mut s = self.scratch();
        let ids = super::matmul::ensure(self, &mut s.drawn, rows)?;
        let args = [
            Arg::P(x.ptr),
            Arg::I(x.cols as i32),
            Arg::P(dw),
            Arg::P(bn),
            Arg::I(banned.len() as i32),
            Arg::P(ids),
        ];
        self.launch("sample_rows", (rows as u32, 1, 1), 1024, &args)?;
        let Some(mem) = s.drawn.as_ref() else {
            return Err(CudaError::Unsupported("sample_rows scratch missing".into()).into());
        };
        let mut out = vec![0u32; rows];
        self.stream
            .memcpy_dtoh(&mem.slice(0..rows), &mut out)
            .map_err(|e| CudaError::call("cuMemcpyDtoH(sample_rows)", e))?;
        drop(s);
        self.stream
            .synchronize()
            .map_err(|e| CudaError::call("cuStreamSynchronize", e))?;
        Ok(out)
    }

    fn begin_step(&self, ids: &[u32], plan: &AttnPlan, want_rows: &[usize]) {
        self.graph_begin(ids, plan, want_rows);
    }

    fn end_step(&self, ok: bool) -> Result<bool, ModelError> {
        self.graph_end(ok)
    }

    fn top_k(&self, x: &CudaBuf, rows: usize, k: usize) -> Result<Vec<TopK>, ModelError> {
        self.check()?;
        let rows = rows.min(x.rows);
        if rows == 0 {
            return Ok(Vec::new());
        }
        let k = k.clamp(1, x.cols.max(1));
        let (ids, vals) = {
            let mut s = self.scratch();
            let ip = super::matmul::ensure(self, &mut s.top_ids, rows * k)?;
            let vp = super::matmul::ensure(self, &mut s.top_vals, rows * (k + 1))?;
            let args = [
                Arg::P(x.ptr),
                Arg::I(x.cols as i32),
                Arg::I(k as i32),
                Arg::P(ip),
                Arg::P(vp),
                Arg::P(vp + 4 * (rows * k) as u64),
            ];
            self.launch("top_k_rows", (rows as u32, 1, 1), 1024, &args)?;
            let mut ids = vec![0u32; rows * k];
            let mut vals = vec![0.0f32; rows * (k + 1)];
            let (Some(im), Some(vm)) = (s.top_ids.as_ref(), s.top_vals.as_ref()) else {
                return Err(CudaError::Unsupported("top-k scratch missing".into()).into());
            };
            self.stream
                .memcpy_dtoh(&im.slice(0..rows * k), &mut ids)
                .map_err(|e| CudaError::call("cuMemcpyDtoH(top-k ids)", e))?;
            self.stream
                .memcpy_dtoh(&vm.slice(0..rows * (k + 1)), &mut vals)
                .map_err(|e| CudaError::call("cuMemcpyDtoH(top-k values)", e))?;
            (ids, vals)
        };
        self.stream
            .synchronize()
            .map_err(|e| CudaError::call("cuStreamSynchronize", e))?;
        Ok((0..rows)
            .map(|r| {
                let n = ids[r * k..(r + 1) * k]
                    .iter()
                    .position(|&i| i == u32::MAX)
                    .unwrap_or(k);
                TopK {
                    ids: ids[r * k..r * k + n].to_vec(),
                    logits: vals[r * k..r * k + n].to_vec(),
                    lse: vals[rows * k + r],
                }
            })
            .collect())
    }
}
