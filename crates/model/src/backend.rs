//! The `Backend` trait: coarse operations over device buffers.
//!
//! The forward pass (`forward.rs`) is written against this trait only. A backend owns its
//! weights (views over the mmap on the CPU, uploaded copies on a GPU), its activation buffers and
//! its KV cache. Buffers hold row-major f32 activations: one row per token of the batch.

use crate::config::{Activation, RopeLayout};
use crate::draw::Draw;
use crate::weights::TensorView;
use crate::ModelError;

/// How a weight will be used, which decides how a backend stores it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WeightUse {
    /// A matrix multiplied with activations (kept in its native quantized format).
    Matrix,
    /// The embedding table (rows gathered by token id).
    Embedding,
    /// A 1-D vector (norm weight or bias), stored as f32 with `offset` added to every element.
    Vector { offset: f32 },
}

/// Element type of the KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvType {
    /// Half precision, as llama.cpp stores it by default.
    #[default]
    F16,
    /// Full precision, for exact comparisons.
    F32,
    /// FP8 E4M3 (vLLM's `fp8` KV cache): half the memory of f16. CPU only for now.
    Fp8,
    /// llama.cpp's `q8_0` blocks (32 int8 values and an f16 scale): 53% of f16's memory.
    /// Needs a head dimension divisible by 32. CPU only for now.
    Q8_0,
}

impl KvType {
    /// The names `--kv-type` takes: f16, f32, q8_0, fp8 (also fp8_e4m3).
    pub fn parse(s: &str) -> Option<KvType> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Some(KvType::F16),
            "f32" => Some(KvType::F32),
            "fp8" | "fp8_e4m3" | "e4m3" => Some(KvType::Fp8),
            "q8_0" => Some(KvType::Q8_0),
            _ => None,
        }
    }

    /// The canonical name.
    pub fn name(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::F32 => "f32",
            KvType::Fp8 => "fp8",
            KvType::Q8_0 => "q8_0",
        }
    }

    /// Bytes of `n` cached elements (q8_0: whole blocks of 32, so pass a row, not one value).
    pub fn bytes(self, n: usize) -> usize {
        match self {
            KvType::F16 => 2 * n,
            KvType::F32 => 4 * n,
            KvType::Fp8 => n,
            KvType::Q8_0 => n.div_ceil(32) * 34,
        }
    }
}

/// Rotary embedding parameters of one layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeParams {
    pub theta: f32,
    /// Positions are divided by this (linear scaling).
    pub scale: f32,
    pub rope_dim: usize,
    pub head_dim: usize,
    pub layout: RopeLayout,
}

/// Where each token of a batch reads and writes the KV cache.
#[derive(Debug, Clone, Default)]
pub struct AttnPlan {
    /// Per token: its position in its sequence.
    pub positions: Vec<u32>,
    /// Per token: the KV-cache slot (block * block_size + offset) it writes.
    pub slots: Vec<u32>,
    /// Per token: index into `seqs`.
    pub seq_of: Vec<u32>,
    /// Per sequence: its block table.
    pub seqs: Vec<Vec<u32>>,
    /// Tokens per KV block.
    pub block_size: usize,
}

/// Attention parameters of one layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnParams {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub scale: f32,
    /// A query at position p sees keys at positions > p - window.
    pub window: Option<usize>,
}

/// A compute backend. Methods take buffers holding `rows` tokens; a backend may assume the
/// forward pass passes consistent shapes (they are checked in debug builds).
pub trait Backend {
    /// A weight resident where this backend computes.
    type Weight: Send + Sync;
    /// An activation buffer: `rows x cols` f32, capacity fixed at allocation.
    type Buf;
    /// The KV cache of all layers.
    type Kv;

    /// A short name ("cpu", "cuda") for logs and bench tables.
    fn name(&self) -> &'static str;
    fn upload(&self, t: &TensorView<'_>, how: WeightUse) -> Result<Self::Weight, ModelError>;
    /// A buffer of up to `rows` rows of `cols` columns.
    fn alloc(&self, rows: usize, cols: usize) -> Result<Self::Buf, ModelError>;
    /// Sets how many rows a buffer currently holds (at most its capacity).
    fn set_rows(&self, buf: &mut Self::Buf, rows: usize);
    /// A KV cache of `n_slots` token slots per layer, each `kv_dim` wide for K and for V.
    fn alloc_kv(
        &self,
        n_layers: usize,
        n_slots: usize,
        kv_dim: usize,
        ty: KvType,
    ) -> Result<Self::Kv, ModelError>;

    /// out[t] = table[ids[t]] * scale.
    fn embed(
        &self,
        table: &Self::Weight,
        ids: &[u32],
        scale: f32,
        out: &mut Self::Buf,
    ) -> Result<(), ModelError>;
    /// out[t] = x[t] / rms(x[t]) * w.
    fn rms_norm(&self, x: &Self::Buf, w: &Self::Weight, eps: f32, out: &mut Self::Buf);
    /// In place, each `head_dim` slice of every row normalized with the shared weight `w`.
    fn rms_norm_heads(&self, x: &mut Self::Buf, w: &Self::Weight, head_dim: usize, eps: f32);
    /// out[t] = W x[t] for every row t (W is `out_cols x in_cols`).
    fn matmul(
        &self,
        w: &Self::Weight,
        x: &Self::Buf,
        out: &mut Self::Buf,
    ) -> Result<(), ModelError>;
    /// outs[i][t] = W_i x[t] for several weights of one input (q, k and v; gate and up). A
    /// backend may run them together; each output is what `matmul` would give.
    fn matmul_many(
        &self,
        ws: &[&Self::Weight],
        x: &Self::Buf,
        outs: &mut [&mut Self::Buf],
    ) -> Result<(), ModelError> {
        same_count(ws.len(), outs.len())?;
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            self.matmul(w, x, out)?;
        }
        Ok(())
    }
    /// x[t] += b.
    fn add_bias(&self, x: &mut Self::Buf, b: &Self::Weight);
    /// Rotates every head of every row of x at that row's position.
    fn rope(&self, x: &mut Self::Buf, positions: &[u32], p: RopeParams);
    /// Writes K and V rows into their slots of `layer`.
    fn kv_store(
        &self,
        kv: &mut Self::Kv,
        layer: usize,
        k: &Self::Buf,
        v: &Self::Buf,
        slots: &[u32],
    );
    /// Causal attention of every query row over its sequence's cached keys and values.
    fn attention(
        &self,
        q: &Self::Buf,
        kv: &Self::Kv,
        layer: usize,
        plan: &AttnPlan,
        p: AttnParams,
        out: &mut Self::Buf,
    );
    /// gate = act(gate) * up.
    fn glu(&self, gate: &mut Self::Buf, up: &Self::Buf, act: Activation);
    /// The gated MLP's input: gate = act(W_gate x) * (W_up x), with `up` free to hold W_up x
    /// (one kernel where the backend fuses them).
    fn gate_up_glu(
        &self,
        w_gate: &Self::Weight,
        w_up: &Self::Weight,
        x: &Self::Buf,
        gate: &mut Self::Buf,
        up: &mut Self::Buf,
        act: Activation,
    ) -> Result<(), ModelError> {
        self.matmul_many(&[w_gate, w_up], x, &mut [&mut *gate, &mut *up])?;
        self.glu(gate, up, act);
        Ok(())
    }
    /// x += y.
    fn add(&self, x: &mut Self::Buf, y: &Self::Buf);
    /// x += y, then out = rms_norm(x) (one kernel where the backend fuses them).
    fn add_rms_norm(
        &self,
        x: &mut Self::Buf,
        y: &Self::Buf,
        w: &Self::Weight,
        eps: f32,
        out: &mut Self::Buf,
    ) {
        self.add(x, y);
        self.rms_norm(x, w, eps, out);
    }
    /// rope of q and k, then k and v written to their KV slots of `layer` (one kernel where the
    /// backend fuses them).
    #[allow(clippy::too_many_arguments)]
    fn rope_kv_store(
        &self,
        q: &mut Self::Buf,
        k: &mut Self::Buf,
        v: &Self::Buf,
        kv: &mut Self::Kv,
        layer: usize,
        plan: &AttnPlan,
        p: RopeParams,
    ) {
        self.rope(q, &plan.positions, p);
        self.rope(k, &plan.positions, p);
        self.kv_store(kv, layer, k, v, &plan.slots);
    }
    /// x = cap * tanh(x / cap).
    fn softcap(&self, x: &mut Self::Buf, cap: f32);
    /// out[i] = x[rows[i]].
    fn gather_rows(&self, x: &Self::Buf, rows: &[usize], out: &mut Self::Buf);
    /// Copies the first `rows` rows to the host.
    fn read(&self, x: &Self::Buf, rows: usize) -> Result<Vec<f32>, ModelError>;
    /// Called once per forward step before its first op, with every index array its ops will
    /// pass (token ids, the attention plan, the rows whose logits are wanted). A backend may send
    /// them to the device together here, and record the step's launches so that a later step of
    /// the same shape replays them (CUDA graphs). The default does nothing.
    fn begin_step(&self, _ids: &[u32], _plan: &AttnPlan, _want_rows: &[usize]) {}
    /// Called after the step's last op, before its logits are read; `ok` says whether every op
    /// succeeded. `Ok(true)`: the step's work is queued. `Ok(false)`: the backend recorded the
    /// ops without running them and could not replay the record, so the caller must issue them
    /// again (the backend then runs them directly).
    fn end_step(&self, _ok: bool) -> Result<bool, ModelError> {
        Ok(true)
    }
    /// Whether `sample_rows` runs on the device, so that only token ids cross to the host.
    fn samples_on_device(&self) -> bool {
        false
    }
    /// One token drawn from each of the first `draws.len()` rows of `x` as `draws` say
    /// (crate::draw; `u32::MAX` for a row with nothing to draw), the ids in `banned` removed
    /// from rows whose draw asks. This default reads the rows and draws on the host.
    fn sample_rows(
        &self,
        x: &Self::Buf,
        draws: &[Draw],
        banned: &[u32],
    ) -> Result<Vec<u32>, ModelError> {
        if draws.is_empty() {
            return Ok(Vec::new());
        }
        let flat = self.read(x, draws.len())?;
        Ok(crate::draw::draw_rows(&flat, draws, banned))
    }
    /// Whether `top_k` selects where the logits live, so that fetching candidates instead of
    /// whole rows saves a transfer. The default host selection does not: there a whole row is
    /// as cheap to use as its candidates.
    fn selects_top_k(&self) -> bool {
        false
    }
    /// The `k` largest values of each of the first `rows` rows, with each row's log-sum-exp, so
    /// that sampling needs only these numbers on the host. A GPU computes them where the logits
    /// are; this default reads the rows and selects on the host (the reference).
    fn top_k(&self, x: &Self::Buf, rows: usize, k: usize) -> Result<Vec<TopK>, ModelError> {
        let flat = self.read(x, rows)?;
        if rows == 0 {
            return Ok(Vec::new());
        }
        Ok(flat
            .chunks_exact(flat.len() / rows)
            .map(|row| TopK::of_row(row, k))
            .collect())
    }
}

/// Checks that `matmul_many`'s weights and outputs pair up.
pub fn same_count(weights: usize, outputs: usize) -> Result<(), ModelError> {
    if weights == outputs {
        return Ok(());
    }
    Err(ModelError::Batch(format!(
        "matmul of {weights} weights into {outputs} outputs"
    )))
}

/// The largest logits of a row, for sampling without the whole row.
#[derive(Debug, Clone, PartialEq)]
pub struct TopK {
    /// Token ids, by logit descending (ties: lower id first). NaN logits are never chosen, so
    /// there may be fewer than `k`.
    pub ids: Vec<u32>,
    /// Their logits.
    pub logits: Vec<f32>,
    /// ln(sum(exp(logit))) over the whole row (NaN entries skipped): a candidate's
    /// log-probability under the unmodified distribution is `logit - lse`.
    pub lse: f32,
}

impl TopK {
    /// Selects on the host (the reference for backends that select elsewhere).
    pub fn of_row(row: &[f32], k: usize) -> TopK {
        let mut cand: Vec<(u32, f32)> = row
            .iter()
            .enumerate()
            .filter(|(_, v)| !v.is_nan())
            .map(|(i, &v)| (i as u32, v))
            .collect();
        let by = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let k = k.min(cand.len());
        if k > 0 && k < cand.len() {
            cand.select_nth_unstable_by(k - 1, by);
        }
        cand.truncate(k);
        cand.sort_unstable_by(by);
        let max = row
            .iter()
            .filter(|v| !v.is_nan())
            .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let lse = if max == f32::NEG_INFINITY || max.is_infinite() {
            max
        } else {
            let sum: f64 = row
                .iter()
                .filter(|v| !v.is_nan())
                .map(|&v| ((v - max) as f64).exp())
                .sum();
            max + sum.ln() as f32
        };
        TopK {
            ids: cand.iter().map(|c| c.0).collect(),
            logits: cand.iter().map(|c| c.1).collect(),
            lse,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TopK;

    #[test]
    fn top_k_orders_ties_by_id_and_skips_nan() {
        let row = [1.0, f32::NAN, 3.0, 3.0, f32::NEG_INFINITY, 2.0];
        let t = TopK::of_row(&row, 4);
        assert_eq!(t.ids, vec![2, 3, 5, 0]);
        assert_eq!(t.logits, vec![3.0, 3.0, 2.0, 1.0]);
        let want = (1f64.exp() + 2.0 * 3f64.exp() + 2f64.exp()).ln() as f32;
        assert!((t.lse - want).abs() < 1e-6, "{} vs {want}", t.lse);
        // More than there are non-NaN entries: all of them, -inf last.
        let t = TopK::of_row(&row, 10);
        assert_eq!(t.ids, vec![2, 3, 5, 0, 4]);
        // Nothing but NaN and -inf.
        let t = TopK::of_row(&[f32::NAN, f32::NEG_INFINITY], 3);
        assert_eq!(t.ids, vec![1]);
        assert_eq!(t.lse, f32::NEG_INFINITY);
    }
}
