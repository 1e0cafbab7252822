//! The CPU backend: weights stay memory-mapped, activations are plain `Vec<f32>` rows, the KV
//! cache is f16. Work is split across a rayon pool by output rows (matmul) or by
//! (token, head) pairs (attention).

mod attention;
mod attention_tiled;
mod fp8;
mod kv;
mod matmul;
mod ops;
mod pool;

use std::sync::{Arc, Mutex};

use half::f16;
use realizar_quant::GgmlType;

use crate::backend::{AttnParams, AttnPlan, Backend, KvType, RopeParams, WeightUse};
use crate::config::Activation;
use crate::weights::TensorView;
use crate::ModelError;

/// A byte range of a memory-mapped file, kept alive by the file's owner.
#[derive(Clone)]
pub struct MappedBytes {
    _owner: Arc<dyn Send + Sync>,
    ptr: *const u8,
    len: usize,
}

// SAFETY: the bytes are an immutable view into memory owned by `_owner`, which is Send + Sync
// and kept alive as long as this value; nothing mutates mapped weights.
unsafe impl Send for MappedBytes {}
// SAFETY: as above; shared reads of immutable memory are safe from any thread.
unsafe impl Sync for MappedBytes {}

impl MappedBytes {
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr/len came from a live slice of memory owned by `_owner`, which cannot be
        // dropped or moved (mmaps and heap buffers do not move) while `self` holds the Arc.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// A weight resident for the CPU.
pub enum CpuWeight {
    /// A matrix in its file format: `rows x cols`.
    Matrix {
        ty: GgmlType,
        rows: usize,
        cols: usize,
        data: MappedBytes,
    },
    /// A vector in f32.
    Vector(Vec<f32>),
}

impl CpuWeight {
    fn vector(&self) -> &[f32] {
        match self {
            CpuWeight::Vector(v) => v,
            CpuWeight::Matrix { .. } => &[],
        }
    }
}

/// Activations: up to `cap` rows of `cols` f32, `rows` of them in use.
pub struct CpuBuf {
    data: Vec<f32>,
    rows: usize,
    cols: usize,
    cap: usize,
}

impl CpuBuf {
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The rows in use, flat.
    pub fn as_slice(&self) -> &[f32] {
        &self.data[..self.rows * self.cols]
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data[..self.rows * self.cols]
    }
}

/// The KV cache: per layer, `n_slots` rows of `kv_dim` elements for K and for V.
pub struct KvStore<T> {
    k: Vec<Vec<T>>,
    v: Vec<Vec<T>>,
    kv_dim: usize,
}

impl<T: attention::KvElem> KvStore<T> {
    fn new(n_layers: usize, n_slots: usize, kv_dim: usize) -> Self {
        let zeros = || vec![T::ZERO; n_slots * kv_dim / T::ELEMS];
        KvStore {
            k: (0..n_layers).map(|_| zeros()).collect(),
            v: (0..n_layers).map(|_| zeros()).collect(),
            kv_dim,
        }
    }
}

/// The KV cache in its element type.
pub enum CpuKv {
    F16(KvStore<f16>),
    F32(KvStore<f32>),
    Fp8(KvStore<fp8::Fp8E4M3>),
    Q8(KvStore<kv::Q8Cell>),
}

/// The CPU backend.
pub struct CpuBackend {
    /// Keeps the mapped model file alive while weights point into it.
    owner: Arc<dyn Send + Sync>,
    /// Quantized activations, reused across matmuls.
    scratch: Mutex<realizar_quant::QActs>,
    /// Threads of the matmuls (as many as rayon's pool, which the CLI sizes).
    pool: pool::Pool,
    /// Reference mode: f32 activations and f64 dot products instead of llama.cpp's 8-bit
    /// activation quantization. Slow; an oracle for tests against exact evaluations.
    exact: bool,
    /// Batch-invariant matmul kernels: a token's result does not depend on the other tokens of
    /// the step (`LoadOptions::deterministic`). Attention then keeps one arithmetic for every
    /// step size (llama.cpp's tiled arithmetic from 64 tokens is off); the other ops are per
    /// token already.
    deterministic: bool,
}

impl CpuBackend {
    /// A backend whose weights point into memory owned by `owner` (the opened model file).
    pub fn new(owner: Arc<dyn Send + Sync>) -> Self {
        CpuBackend {
            owner,
            scratch: Mutex::new(realizar_quant::QActs::new()),
            pool: pool::Pool::new(rayon::current_num_threads()),
            exact: false,
            deterministic: false,
        }
    }

    /// Switches the reference mode (see the field `exact`).
    pub fn set_exact(&mut self, exact: bool) {
        self.exact = exact;
    }

    /// The pool, and whether attention may switch to llama.cpp's tiled arithmetic.
    fn attn_mode(&self) -> (&pool::Pool, bool) {
        (&self.pool, !self.deterministic)
    }

    /// Switches batch-invariant matmuls (see the field `deterministic`).
    pub fn set_deterministic(&mut self, deterministic: bool) {
        self.deterministic = deterministic;
    }
}

impl Backend for CpuBackend {
    type Weight = CpuWeight;
    type Buf = CpuBuf;
    type Kv = CpuKv;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn upload(&self, t: &TensorView<'_>, how: WeightUse) -> Result<CpuWeight, ModelError> {
        match how {
            WeightUse::Matrix | WeightUse::Embedding => Ok(CpuWeight::Matrix {
                ty: t.ty,
                rows: t.rows,
                cols: t.cols,
                data: MappedBytes {
                    _owner: self.owner.clone(),
                    ptr: t.data.as_ptr(),
                    len: t.data.len(),
                },
            }),
            WeightUse::Vector { offset } => {
                let mut v = vec![0.0f32; t.rows * t.cols];
                realizar_quant::dequantize_row(t.ty, t.data, &mut v).map_err(|e| {
                    ModelError::Quant {
                        tensor: t.name.to_string(),
                        source: e,
                    }
                })?;
                v.iter_mut().for_each(|x| *x += offset);
                Ok(CpuWeight::Vector(v))
            }
        }
    }

    fn alloc(&self, rows: usize, cols: usize) -> Result<CpuBuf, ModelError> {
        Ok(CpuBuf {
            data: vec![0.0; rows * cols],
            rows,
            cols,
            cap: rows,
        })
    }

    fn set_rows(&self, buf: &mut CpuBuf, rows: usize) {
        buf.rows = rows.min(buf.cap);
    }

    fn alloc_kv(
        &self,
        n_layers: usize,
        n_slots: usize,
        kv_dim: usize,
        ty: KvType,
    ) -> Result<CpuKv, ModelError> {
        Ok(match ty {
            KvType::F16 => CpuKv::F16(KvStore::new(n_layers, n_slots, kv_dim)),
            KvType::F32 => CpuKv::F32(KvStore::new(n_layers, n_slots, kv_dim)),
            KvType::Fp8 => CpuKv::Fp8(KvStore::new(n_layers, n_slots, kv_dim)),
            KvType::Q8_0 if !kv_dim.is_multiple_of(32) => {
                return Err(ModelError::Backend(format!(
                    "a q8_0 KV cache needs K/V rows of a multiple of 32 values (this model's: \
                     {kv_dim}); use --kv-type f16 or fp8"
                )))
            }
            KvType::Q8_0 => CpuKv::Q8(KvStore::new(n_layers, n_slots, kv_dim)),
        })
    }

    fn embed(
        &self,
        table: &CpuWeight,
        ids: &[u32],
        scale: f32,
        out: &mut CpuBuf,
    ) -> Result<(), ModelError> {
        ops::embed(table, ids, scale, out)
    }

    fn rms_norm(&self, x: &CpuBuf, w: &CpuWeight, eps: f32, out: &mut CpuBuf) {
        ops::rms_norm(x, w.vector(), eps, out);
    }

    fn rms_norm_heads(&self, x: &mut CpuBuf, w: &CpuWeight, head_dim: usize, eps: f32) {
        ops::rms_norm_heads(x, w.vector(), head_dim, eps);
    }

    fn matmul(&self, w: &CpuWeight, x: &CpuBuf, out: &mut CpuBuf) -> Result<(), ModelError> {
        let mut scratch = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let kernels = if self.deterministic {
            realizar_quant::Kernels::BatchInvariant
        } else {
            realizar_quant::Kernels::Fastest
        };
        matmul::matmul(w, x, out, &mut scratch, &self.pool, self.exact, kernels)
    }

    fn add_bias(&self, x: &mut CpuBuf, b: &CpuWeight) {
        ops::add_bias(x, b.vector());
    }

    fn rope(&self, x: &mut CpuBuf, positions: &[u32], p: RopeParams) {
        ops::rope(x, positions, p);
    }

    fn kv_store(&self, kv: &mut CpuKv, layer: usize, k: &CpuBuf, v: &CpuBuf, slots: &[u32]) {
        match kv {
            CpuKv::F16(s) => attention::kv_store(s, layer, k, v, slots),
            CpuKv::F32(s) => attention::kv_store(s, layer, k, v, slots),
            CpuKv::Fp8(s) => attention::kv_store(s, layer, k, v, slots),
            CpuKv::Q8(s) => attention::kv_store(s, layer, k, v, slots),
        }
    }

    fn attention(
        &self,
        q: &CpuBuf,
        kv: &CpuKv,
        layer: usize,
        plan: &AttnPlan,
        p: AttnParams,
        out: &mut CpuBuf,
    ) {
        match kv {
            CpuKv::F16(s) => attention::attention(q, s, layer, plan, p, out, self.attn_mode()),
            CpuKv::F32(s) => attention::attention(q, s, layer, plan, p, out, self.attn_mode()),
            CpuKv::Fp8(s) => attention::attention(q, s, layer, plan, p, out, self.attn_mode()),
            CpuKv::Q8(s) => attention::attention(q, s, layer, plan, p, out, self.attn_mode()),
        }
    }

    fn glu(&self, gate: &mut CpuBuf, up: &CpuBuf, act: Activation) {
        ops::glu(gate, up, act, &self.pool);
    }

    fn add(&self, x: &mut CpuBuf, y: &CpuBuf) {
        x.as_mut_slice()
            .iter_mut()
            .zip(y.as_slice())
            .for_each(|(a, b)| *a += b);
    }

    fn softcap(&self, x: &mut CpuBuf, cap: f32) {
        x.as_mut_slice()
            .iter_mut()
            .for_each(|v| *v = cap * (*v / cap).tanh());
    }

    fn gather_rows(&self, x: &CpuBuf, rows: &[usize], out: &mut CpuBuf) {
        let c = x.cols;
        for (i, &r) in rows.iter().enumerate() {
            out.data[i * c..(i + 1) * c].copy_from_slice(&x.data[r * c..(r + 1) * c]);
        }
    }

    fn read(&self, x: &CpuBuf, rows: usize) -> Result<Vec<f32>, ModelError> {
        Ok(x.data[..rows.min(x.rows) * x.cols].to_vec())
    }
}
