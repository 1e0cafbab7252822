//! A backend that works until told otherwise and then fails like a GPU after a fault.
//!
//! `Faulty<B>` delegates every `Backend` method to `B`. Once its `Fault` is tripped, every op
//! that returns a `Result` during a step (embed, matmul, read, top_k, end_step) returns the same
//! error, as the CUDA backend returns its sticky error from the next fallible op after a kernel
//! faulted; ops returning `()` still run on the inner backend, as queued launches would.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use realizar_formats::ModelFile;
use realizar_model::backend::{AttnParams, AttnPlan, KvType, RopeParams, WeightUse};
use realizar_model::weights::TensorView;
use realizar_model::{
    config_of, Activation, Backend, CpuBackend, LoadOptions, Model, ModelError, TopK, Weights,
};

/// What the faulted backend reports: a CUDA kernel fault's text, marked as simulated.
pub const FAULT_TEXT: &str =
    "CUDA error: an illegal memory access was encountered (CUDA_ERROR_ILLEGAL_ADDRESS, simulated)";

/// The switch shared by a test and its `Faulty` backend.
#[derive(Clone, Default)]
pub struct Fault(Arc<FaultState>);

#[derive(Default)]
struct FaultState {
    tripped: AtomicBool,
    /// Steps begun while tripped.
    steps_after: AtomicUsize,
}

impl Fault {
    /// From now on the backend fails.
    pub fn trip(&self) {
        self.0.tripped.store(true, Ordering::SeqCst);
    }

    /// Forward steps the engine began after `trip` (at most the one that fails, if the engine
    /// stops using a failed backend; none if a step under way at `trip` failed instead).
    pub fn steps_after_trip(&self) -> usize {
        self.0.steps_after.load(Ordering::SeqCst)
    }

    fn check(&self) -> Result<(), ModelError> {
        if self.0.tripped.load(Ordering::SeqCst) {
            return Err(ModelError::Backend(FAULT_TEXT.into()));
        }
        Ok(())
    }
}

/// `B`, failing once its `Fault` trips.
pub struct Faulty<B> {
    inner: B,
    fault: Fault,
}

/// Loads an opened model file on `Faulty<CpuBackend>`, as `load_cpu_from` loads it on the CPU.
pub fn load_faulty_cpu(
    file: Arc<ModelFile>,
    opts: &LoadOptions,
    fault: Fault,
) -> Result<Model<Faulty<CpuBackend>>, ModelError> {
    let cfg = config_of(&file)?;
    let mut inner = CpuBackend::new(file.clone());
    inner.set_deterministic(opts.deterministic);
    let backend = Faulty { inner, fault };
    let weights = Weights::load(&file, &cfg, &backend)?;
    let block_size = opts.block_size.max(1);
    let n_blocks = opts.kv_tokens.div_ceil(block_size).max(1);
    let max_tokens = opts.max_batch_tokens;
    Model::new(
        cfg,
        backend,
        weights,
        max_tokens,
        block_size,
        n_blocks,
        opts.kv_type,
    )
}

impl<B: Backend> Backend for Faulty<B> {
    type Weight = B::Weight;
    type Buf = B::Buf;
    type Kv = B::Kv;

    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn upload(&self, t: &TensorView<'_>, how: WeightUse) -> Result<Self::Weight, ModelError> {
        self.inner.upload(t, how)
    }

    fn alloc(&self, rows: usize, cols: usize) -> Result<Self::Buf, ModelError> {
        self.inner.alloc(rows, cols)
    }

    fn set_rows(&self, buf: &mut Self::Buf, rows: usize) {
        self.inner.set_rows(buf, rows)
    }

    fn alloc_kv(
        &self,
        n_layers: usize,
        n_slots: usize,
        kv_dim: usize,
        ty: KvType,
    ) -> Result<Self::Kv, ModelError> {
        self.inner.alloc_kv(n_layers, n_slots, kv_dim, ty)
    }

    fn embed(
        &self,
        table: &Self::Weight,
        ids: &[u32],
        scale: f32,
        out: &mut Self::Buf,
    ) -> Result<(), ModelError> {
        self.fault.check()?;
        self.inner.embed(table, ids, scale, out)
    }

    fn rms_norm(&self, x: &Self::Buf, w: &Self::Weight, eps: f32, out: &mut Self::Buf) {
        self.inner.rms_norm(x, w, eps, out)
    }

    fn rms_norm_heads(&self, x: &mut Self::Buf, w: &Self::Weight, head_dim: usize, eps: f32) {
        self.inner.rms_norm_heads(x, w, head_dim, eps)
    }

    fn matmul(
        &self,
        w: &Self::Weight,
        x: &Self::Buf,
        out: &mut Self::Buf,
    ) -> Result<(), ModelError> {
        self.fault.check()?;
        self.inner.matmul(w, x, out)
    }

    fn add_bias(&self, x: &mut Self::Buf, b: &Self::Weight) {
        self.inner.add_bias(x, b)
    }

    fn rope(&self, x: &mut Self::Buf, positions: &[u32], p: RopeParams) {
        self.inner.rope(x, positions, p)
    }

    fn kv_store(
        &self,
        kv: &mut Self::Kv,
        layer: usize,
        k: &Self::Buf,
        v: &Self::Buf,
        slots: &[u32],
    ) {
        self.inner.kv_store(kv, layer, k, v, slots)
    }

    fn attention(
        &self,
        q: &Self::Buf,
        kv: &Self::Kv,
        layer: usize,
        plan: &AttnPlan,
        p: AttnParams,
        out: &mut Self::Buf,
    ) {
        self.inner.attention(q, kv, layer, plan, p, out)
    }

    fn glu(&self, gate: &mut Self::Buf, up: &Self::Buf, act: Activation) {
        self.inner.glu(gate, up, act)
    }

    fn add(&self, x: &mut Self::Buf, y: &Self::Buf) {
        self.inner.add(x, y)
    }

    fn softcap(&self, x: &mut Self::Buf, cap: f32) {
        self.inner.softcap(x, cap)
    }

    fn gather_rows(&self, x: &Self::Buf, rows: &[usize], out: &mut Self::Buf) {
        self.inner.gather_rows(x, rows, out)
    }

    fn read(&self, x: &Self::Buf, rows: usize) -> Result<Vec<f32>, ModelError> {
        self.fault.check()?;
        self.inner.read(x, rows)
    }

    fn begin_step(&self, ids: &[u32], plan: &AttnPlan, want_rows: &[usize]) {
        if self.fault.check().is_err() {
            self.fault.0.steps_after.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.begin_step(ids, plan, want_rows)
    }

    fn end_step(&self, ok: bool) -> Result<bool, ModelError> {
        let queued = self.inner.end_step(ok)?;
        self.fault.check()?;
        Ok(queued)
    }

    fn selects_top_k(&self) -> bool {
        self.inner.selects_top_k()
    }

    fn top_k(&self, x: &Self::Buf, rows: usize, k: usize) -> Result<Vec<TopK>, ModelError> {
        self.fault.check()?;
        self.inner.top_k(x, rows, k)
    }
}
