//! The `Backend` trait: coarse operations over device buffers.
//!
//! The forward pass (`forward.rs`) is written against this trait only. A backend owns its
//! weights (views over the mmap on the CPU, uploaded copies on a GPU), its activation buffers and
//! its KV cache. Buffers hold row-major f32 activations: one row per token of the batch.

use crate::config::{Activation, RopeLayout};
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
    /// x += y.
    fn add(&self, x: &mut Self::Buf, y: &Self::Buf);
    /// x = cap * tanh(x / cap).
    fn softcap(&self, x: &mut Self::Buf, cap: f32);
    /// out[i] = x[rows[i]].
    fn gather_rows(&self, x: &Self::Buf, rows: &[usize], out: &mut Self::Buf);
    /// Copies the first `rows` rows to the host.
    fn read(&self, x: &Self::Buf, rows: usize) -> Result<Vec<f32>, ModelError>;
}
