//! `CudaBackend`: the `Backend` trait on one GPU.
//!
//! Everything runs in order on one stream. Weights are uploaded once in their file format
//! (matrices and the embedding table stay in their GGML blocks; 1-D weights become f32, as on
//! the CPU). Activation buffers are f32 `cap x cols` allocations. The KV cache is one K and one V
//! allocation per layer, `n_slots x kv_dim` in f16 or f32. The small index arrays the ops take
//! from the host (token ids, positions, slots, block tables) are copied into reused device
//! buffers, and only when they change.
//!
//! The trait's element-wise ops return `()`, so a failure there is kept as a sticky error and
//! returned by the next op that returns a `Result` (matmul, embed, read). With
//! `REALIZAR_CUDA_SYNC=1` every launch is followed by a synchronize, so an asynchronous fault is
//! reported with the name of the kernel that caused it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr};
use realizar_model::ModelError;
use realizar_quant::GgmlType;

use crate::compile::Kernels;
use crate::CudaError;

mod attention;
mod blas;
mod bulk;
mod fused;
mod graphs;
mod launch;
mod matmul;
mod ops;
mod weights;

use attention::AttnArgs;
pub(crate) use attention::{
    stages_gqa, ENTRY_POINTS as ATTENTION_ENTRY_POINTS, FLASH_ENTRY_POINTS, GQA_SMEM_MAX,
};
pub(crate) use bulk::{bulk_smem_limit, BULK_ENTRY_POINTS};
pub use graphs::GraphStats;
pub(crate) use matmul::{dequant_kernel, MMQ_ENTRY_POINTS, MMQ_F16_SMEM_MAX};

pub use matmul::{DEFAULT_GEMM_MIN_TOKENS, DEFAULT_MMQ_F16_TOKENS, DEFAULT_MMQ_TOKENS};

use matmul::Mat;
pub use ops::SUPPORTED_TYPES;
use ops::{embed_kernel, float_kind};

/// A weight resident on the GPU.
pub enum CudaWeight {
    /// A matrix (or the embedding table) in its file format: `rows x cols`.
    Matrix {
        ty: GgmlType,
        rows: usize,
        cols: usize,
        mem: CudaSlice<u8>,
        ptr: u64,
        /// Its f16 copy (`set_f16_weights`), and that copy's address (0: none).
        half: Option<CudaSlice<u16>>,
        half_ptr: u64,
    },
    /// A vector in f32.
    Vector {
        len: usize,
        mem: CudaSlice<f32>,
        ptr: u64,
    },
}

impl CudaWeight {
    /// Whether the matrix has an f16 copy (`CudaBackend::set_f16_weights`).
    pub fn has_f16_copy(&self) -> bool {
        matches!(self, CudaWeight::Matrix { half_ptr, .. } if *half_ptr != 0)
    }

    fn ptr(&self) -> u64 {
        match self {
            CudaWeight::Matrix { ptr, .. } | CudaWeight::Vector { ptr, .. } => *ptr,
        }
    }
}

/// Activations on the GPU: up to `cap` rows of `cols` f32, `rows` of them in use.
pub struct CudaBuf {
    mem: CudaSlice<f32>,
    ptr: u64,
    rows: usize,
    cols: usize,
    cap: usize,
}

impl CudaBuf {
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    fn len(&self) -> usize {
        self.rows * self.cols
    }
}

/// The KV cache: per layer, K and V of `n_slots x kv_dim` elements.
pub struct CudaKv {
    _k: Vec<CudaSlice<u8>>,
    _v: Vec<CudaSlice<u8>>,
    kp: Vec<u64>,
    vp: Vec<u64>,
    kv_dim: usize,
    n_slots: usize,
    ty: DevKv,
    /// q8_0: where the scales start in each allocation (bytes; after the int8 values).
    sc_off: usize,
}

/// The KV-cache element types the CUDA kernels store (kernels/attention.cu).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DevKv {
    F16,
    F32,
    Fp8,
    Q8_0,
}

/// A reused device array of u32 that remembers what it holds.
#[derive(Default)]
struct DevIdx {
    host: Vec<u32>,
    mem: Option<CudaSlice<u32>>,
    ptr: u64,
}

impl DevIdx {
    /// Makes the device array hold `data`; `gen` is bumped when the array moves (a recorded
    /// step that points at it is stale then).
    fn set(
        &mut self,
        stream: &Arc<CudaStream>,
        gen: &AtomicU64,
        data: &[u32],
    ) -> Result<u64, CudaError> {
        if self.mem.is_some() && self.host == data {
            return Ok(self.ptr);
        }
        let fits = self.mem.as_ref().is_some_and(|m| m.len() >= data.len());
        if !fits {
            let cap = data.len().max(64).next_power_of_two();
            let mem = stream
                .alloc_zeros::<u32>(cap)
                .map_err(|e| CudaError::call("cuMemAlloc(indices)", e))?;
            self.ptr = raw(&mem, stream);
            self.mem = Some(mem);
            gen.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(mem) = self.mem.as_mut() {
            if !data.is_empty() {
                stream
                    .memcpy_htod(data, &mut mem.slice_mut(0..data.len()))
                    .map_err(|e| CudaError::call("cuMemcpyHtoD(indices)", e))?;
            }
        }
        self.host.clear();
        self.host.extend_from_slice(data);
        Ok(self.ptr)
    }
}

/// The index arrays of one step, each in its own reused device buffer.
#[derive(Default)]
struct Indices {
    ids: DevIdx,
    positions: DevIdx,
    slots: DevIdx,
    seq_of: DevIdx,
    table_off: DevIdx,
    tables: DevIdx,
    gather: DevIdx,
    /// `sample_rows`' draws (four words a row) and banned ids.
    draws: DevIdx,
    banned: DevIdx,
}

/// One kernel argument.
enum Arg {
    P(u64),
    I(i32),
    L(i64),
    F(f32),
    Attn(AttnArgs),
    Group(matmul::Group),
    Splits(matmul::MmqSplits),
}

/// The first `n` entries of an index array the forward pass passed.
fn prefix<'a>(s: &'a [u32], n: usize, what: &str) -> Result<&'a [u32], CudaError> {
    s.get(..n)
        .ok_or_else(|| CudaError::Unsupported(format!("{what}: {} entries for {n} rows", s.len())))
}

/// The device address of an allocation.
fn raw<T>(s: &CudaSlice<T>, stream: &Arc<CudaStream>) -> u64 {
    // Event tracking is off (see `CudaBackend::new`), so the guard does nothing on drop.
    let (p, _guard) = s.device_ptr(stream);
    p
}

fn grid1(n: usize, per_block: usize) -> (u32, u32, u32) {
    (n.div_ceil(per_block).max(1) as u32, 1, 1)
}

/// The multiprocessor count of a device that runs the mmq kernels (int8 `mma.sync`, sm_80
/// and later), else 0.
fn mmq_sm_count(ctx: &Arc<CudaContext>) -> usize {
    use cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT;
    match ctx.compute_capability() {
        Ok((major, _)) if major >= 8 => ctx
            .attribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_or(0, |n| n.max(0) as usize),
        _ => 0,
    }
}

/// The most tokens one mmq launch takes (its reduce kernel counts outputs in 32 bits).
const MMQ_MAX_TOKENS: usize = 4096;

/// The token range of the mmq kernels: off (an empty range) when `min` is 0.
fn mmq_range(min: usize, max: usize) -> (usize, usize) {
    if min == 0 {
        (usize::MAX, 0)
    } else {
        (min, max.min(MMQ_MAX_TOKENS))
    }
}

/// A token range from the environment variable `var`: `0` is none, `MIN-MAX` a range;
/// anything else keeps `default`, with a warning. (`REALIZAR_CUDA_MMQ`: the mmq kernels, as
/// `set_mmq_tokens`; `REALIZAR_CUDA_MMQ_F16`: those of them on f16 activations, as
/// `set_mmq_f16_tokens`.)
fn tokens_from_env(var: &str, default: (usize, usize)) -> (usize, usize) {
    let (lo, hi) = default;
    let Ok(v) = std::env::var(var) else {
        return mmq_range(lo, hi);
    };
    if v.trim() == "0" {
        return mmq_range(0, 0);
    }
    match v
        .split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)))
    {
        Some((a, b)) => mmq_range(a, b),
        None => {
            eprintln!("{var}={v:?}: expected 0 or MIN-MAX; using {lo}-{hi}");
            mmq_range(lo, hi)
        }
    }
}

/// `REALIZAR_CUDA_MMQ_WAVE`: blocks per SM the mmq K split aims at (1-32; 4 by default, with a
/// warning for anything else).
fn mmq_wave_from_env() -> usize {
    let Ok(v) = std::env::var("REALIZAR_CUDA_MMQ_WAVE") else {
        return 4;
    };
    match v.trim().parse() {
        Ok(n) if (1..=32).contains(&n) => n,
        _ => {
            eprintln!("REALIZAR_CUDA_MMQ_WAVE={v:?}: expected 1 to 32; using 4");
            4
        }
    }
}

/// The CUDA backend on one device.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    device_name: String,
    /// The first error of an op that cannot return one; reported by the next fallible op.
    sticky: Mutex<Option<String>>,
    idx: Mutex<Indices>,
    sync_each: bool,
    /// Matmuls in f32 on f32 activations (`set_exact`), for comparisons with the CPU reference.
    exact: bool,
    /// Matmuls of at least this many tokens go through cuBLAS (those mmq does not take).
    gemm_min_tokens: usize,
    /// Matmuls on rows at least this wide use the 8-bit mmvq kernels in decode.
    mmvq_min_cols: usize,
    /// Fused kernels (fused.rs).
    fused: bool,
    /// Rows per block of the one-token mmvq kernels (1, 2 or 4; `REALIZAR_CUDA_MMVQ_ROWS`; 2 by
    /// default: H200, 8B Q4_K_M tg128 300.87 t/s against 271.86 with 1 row, same run).
    mmvq_rows: usize,
    /// The streamed one-token kernels (bulk.rs).
    bulk: bulk::Bulk,
    /// Matmuls of this many tokens (inclusive range) use the tensor-core mmq kernels.
    mmq_tokens: (usize, usize),
    /// Those of them with this many tokens use the f16 mmq kernels (f16 activations) instead
    /// of the 8-bit ones.
    mmq_f16_tokens: (usize, usize),
    /// The device's multiprocessors; 0 where the mmq kernels cannot run (before sm_80).
    sm_count: usize,
    /// mmq launches split their K range until the grid has this many blocks per SM
    /// (`REALIZAR_CUDA_MMQ_WAVE`, 4 by default).
    mmq_wave: usize,
    /// The device has programmatic dependent launch (sm_90 and later).
    has_pdl: bool,
    /// One-row norms run as a cluster of blocks (sm_90 and later; fused.rs `norm_cluster`;
    /// off in deterministic mode, where a token's norm must not depend on the batch).
    cluster_norms: bool,
    /// Whether the grouped attention kernels stage their K/V rows in shared memory (the
    /// device's arch is one `attention::stages_gqa` lists).
    gqa_stages: bool,
    /// Kernels are launched with programmatic dependent launch (`pdl_entry` in common.cuh;
    /// `REALIZAR_CUDA_PDL=0` turns it off; needs `has_pdl`).
    pdl: bool,
    blas: Option<cudarc::cublas::CudaBlas>,
    scratch: Mutex<matmul::Scratch>,
    /// Counts launches that may write activations (all but the mmvq and mmq paths' own, which
    /// write only the matmul's output: the 8-bit and f16 records name the matmul's input, and an
    /// output that is its input clears them), so that a matmul can reuse the 8-bit or f16 copy
    /// of an input that nothing has written since. Allocations count too.
    epoch: AtomicU64,
    /// How many times a matmul converted its input to the 8-bit or f16 copy itself
    /// (`input_conversions`).
    conversions: AtomicU64,
    /// Bumped whenever an index array or scratch buffer moves (graphs.rs).
    gen: AtomicU64,
    /// Recorded steps (graphs.rs).
    graphs: Mutex<graphs::Graphs>,
    /// A recorded step is being replayed: the ops skip their launches.
    replaying: AtomicBool,
    /// A step is being recorded, and whether the recording reached a call that must not be in
    /// a record (cuBLAS).
    capturing: AtomicBool,
    capture_spoiled: AtomicBool,
    /// Split-K attention for long contexts (off in deterministic mode: the split count depends
    /// on the batch).
    attn_split: bool,
    /// The grouped-query attention kernel where it applies (`REALIZAR_CUDA_ATTN_GQA=0` keeps
    /// the one-block-per-head kernel everywhere).
    attn_gqa: bool,
    /// The flash kernel for prefill steps (`REALIZAR_CUDA_ATTN_FLASH=0` turns it off; off in
    /// deterministic mode, since whether a step takes it depends on the batch).
    attn_flash: bool,
    /// cuBLAS calls are recorded into CUDA graphs (CUDA 12.2+ allocates cuBLAS's workspace
    /// with stream-ordered allocation while capturing), so batched decode steps on the f16
    /// weight copies are recorded too.
    graph_blas: bool,
    /// Launches of the flash kernel, for tests.
    flash_launches: AtomicU64,
    /// Matmuls of one input in one launch where the kernel takes several matrices
    /// (`REALIZAR_CUDA_GROUP=0` launches each alone).
    group: bool,
    /// f16 copies of quantized matrices at upload (`set_f16_weights`), how many were made,
    /// and from how many tokens matmuls use them.
    f16_weights: bool,
    f16_copies: AtomicU64,
    f16_min_tokens: usize,
    /// Weight tiles the GEMM path dequantized in steps, for tests.
    tile_dequants: AtomicU64,
    /// Batched cuBLAS calls made (`gemm_copies`).
    batched_gemms: AtomicU64,
}

impl CudaBackend {
    /// A backend on device `ordinal`: creates its context and stream and loads the kernels
    /// (compiling them on first use).
    pub fn new(ordinal: usize) -> Result<CudaBackend, CudaError> {
        let info = crate::probe()?;
        if ordinal >= info.count {
            return Err(CudaError::NoDevice);
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| CudaError::call("cuCtxCreate", e))?;
        // SAFETY: called before anything is allocated or launched in this context; all work of
        // this backend goes to one stream, so cross-stream event tracking is not needed.
        unsafe { ctx.disable_event_tracking() };
        // A stream of its own: the legacy default stream cannot be captured into a graph.
        let stream = ctx
            .new_stream()
            .map_err(|e| CudaError::call("cuStreamCreate", e))?;
        let kernels = Kernels::load(&ctx)?;
        let bulk = bulk::Bulk::from_env(kernels.bulk_smem);
        let sm_count = mmq_sm_count(&ctx);
        let cc = ctx.compute_capability().ok();
        let has_pdl = matches!(cc, Some((major, _)) if major >= 9);
        let gqa_stages = matches!(cc, Some((major, minor)) if attention::stages_gqa(major, minor));
        let device_name = ctx.name().unwrap_or_else(|_| "CUDA device".into());
        Ok(CudaBackend {
            ctx,
            kernels,
            device_name,
            sticky: Mutex::new(None),
            idx: Mutex::new(Indices::default()),
            sync_each: std::env::var_os("REALIZAR_CUDA_SYNC").is_some_and(|v| v != "0"),
            exact: std::env::var_os("REALIZAR_CUDA_EXACT").is_some_and(|v| v != "0"),
            gemm_min_tokens: DEFAULT_GEMM_MIN_TOKENS,
            mmvq_min_cols: matmul::DEFAULT_MMVQ_MIN_COLS,
            mmq_tokens: tokens_from_env("REALIZAR_CUDA_MMQ", matmul::DEFAULT_MMQ_TOKENS),
            mmq_f16_tokens: tokens_from_env(
                "REALIZAR_CUDA_MMQ_F16",
                matmul::DEFAULT_MMQ_F16_TOKENS,
            ),
            fused: std::env::var_os("REALIZAR_CUDA_FUSE").is_none_or(|v| v != "0"),
            mmvq_rows: std::env::var("REALIZAR_CUDA_MMVQ_ROWS")
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .filter(|n| matches!(n, 1 | 2 | 4))
                .unwrap_or(2),
            bulk,
            sm_count,
            mmq_wave: mmq_wave_from_env(),
            has_pdl,
            cluster_norms: has_pdl,
            gqa_stages,
            pdl: has_pdl && std::env::var_os("REALIZAR_CUDA_PDL").is_none_or(|v| v != "0"),
            blas: blas::open_blas(&stream),
            scratch: Mutex::new(matmul::Scratch::default()),
            epoch: AtomicU64::new(0),
            conversions: AtomicU64::new(0),
            gen: AtomicU64::new(0),
            graphs: Mutex::new(graphs::Graphs::new(
                std::env::var_os("REALIZAR_CUDA_GRAPHS").is_none_or(|v| v != "0"),
            )),
            replaying: AtomicBool::new(false),
            capturing: AtomicBool::new(false),
            capture_spoiled: AtomicBool::new(false),
            attn_split: std::env::var_os("REALIZAR_CUDA_ATTN_SPLIT").is_none_or(|v| v != "0"),
            attn_gqa: std::env::var_os("REALIZAR_CUDA_ATTN_GQA").is_none_or(|v| v != "0"),
            attn_flash: std::env::var_os("REALIZAR_CUDA_ATTN_FLASH").is_none_or(|v| v != "0"),
            graph_blas: std::env::var_os("REALIZAR_CUDA_GRAPH_BLAS").is_none_or(|v| v != "0"),
            flash_launches: AtomicU64::new(0),
            group: std::env::var_os("REALIZAR_CUDA_GROUP").is_none_or(|v| v != "0"),
            f16_weights: false,
            f16_copies: AtomicU64::new(0),
            f16_min_tokens: std::env::var("REALIZAR_CUDA_F16_WEIGHT_TOKENS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(matmul::F16_WEIGHT_MIN_TOKENS)
                .max(1),
            tile_dequants: AtomicU64::new(0),
            batched_gemms: AtomicU64::new(0),
            stream,
        })
    }

    /// Exact mode: matmuls on f32 activations in f32 (as the CPU's exact mode), instead of the
    /// fast paths (8-bit activations for decode, f16 tensor-core GEMMs for prefill).
    pub fn set_exact(&mut self, exact: bool) {
        self.exact = exact;
    }

    /// Matmuls of at least `n` tokens use the cuBLAS GEMM path (when cuBLAS is present).
    pub fn set_gemm_min_tokens(&mut self, n: usize) {
        self.gemm_min_tokens = n.max(1);
    }

    /// Matmuls of `min..=max` tokens use the tensor-core mmq kernels (where the device has
    /// them, sm_80 and later); `set_mmq_tokens(0, 0)` turns them off.
    pub fn set_mmq_tokens(&mut self, min: usize, max: usize) {
        self.mmq_tokens = mmq_range(min, max);
        // Recorded steps ran the old choice of kernels.
        self.gen.fetch_add(1, Ordering::Relaxed);
    }

    /// Matmuls that the mmq kernels take with `min..=max` tokens use their f16 variants (f16
    /// activations, dequantization once per weight group); the others the 8-bit ones.
    /// `set_mmq_f16_tokens(0, 0)` keeps every mmq matmul on 8 bits.
    pub fn set_mmq_f16_tokens(&mut self, min: usize, max: usize) {
        self.mmq_f16_tokens = mmq_range(min, max);
        self.gen.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether kernels are launched with programmatic dependent launch: each kernel's launch
    /// overlaps the run of the one before it, which it waits for before touching memory (on by
    /// default where the device has it, sm_90 and later; the results are the same bits).
    /// Returns whether it is on.
    pub fn set_pdl(&mut self, on: bool) -> bool {
        self.pdl = on && self.has_pdl;
        // Recorded steps hold the old launches.
        self.gen.fetch_add(1, Ordering::Relaxed);
        self.pdl
    }

    /// Whether a one-row norm of 4,096 columns or more runs as a cluster of blocks where the
    /// device has clusters (on by default): another order of the sum of squares than a norm of
    /// several rows, so deterministic mode turns it off.
    pub fn set_cluster_norms(&mut self, on: bool) {
        self.cluster_norms = on && self.has_pdl;
        self.gen.fetch_add(1, Ordering::Relaxed);
    }

    /// Decode matmuls on rows at least `n` wide use the 8-bit mmvq kernels (narrower ones the
    /// f32 kernels, which are faster there).
    pub fn set_mmvq_min_cols(&mut self, n: usize) {
        self.mmvq_min_cols = n;
        // Recorded steps ran the old kernels.
        self.gen.fetch_add(1, Ordering::Relaxed);
    }

    /// Split-K attention for long contexts (on by default; `REALIZAR_CUDA_ATTN_SPLIT=0` turns it
    /// off). Its split count depends on the batch, so deterministic mode turns it off.
    pub fn set_attention_split(&mut self, on: bool) {
        self.attn_split = on;
        self.gen.fetch_add(1, Ordering::Relaxed);
    }

    /// The grouped-query attention kernel for f16 caches (on by default; off, every head is its
    /// own block, the first version's kernel).
    pub fn set_attention_gqa(&mut self, on: bool) {
        self.attn_gqa = on;
        self.gen.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether cuBLAS calls may be recorded into CUDA graphs (on by default;
    /// `REALIZAR_CUDA_GRAPH_BLAS=0` keeps them out, and steps that reach cuBLAS run directly).
    pub fn set_graph_blas(&mut self, on: bool) {
        self.graph_blas = on;
        self.gen.fetch_add(1, Ordering::Relaxed);
    }

    /// The flash-attention kernel for prefill steps (on by default; off, they take the grouped
    /// or per-head kernels a token at a time).
    pub fn set_attention_flash(&mut self, on: bool) {
        self.attn_flash = on;
        self.gen.fetch_add(1, Ordering::Relaxed);
    }

    /// How many attention launches took the flash kernel.
    pub fn flash_attention_launches(&self) -> u64 {
        self.flash_launches.load(Ordering::Relaxed)
    }

    /// How many times a matmul has converted its input to 8 bits or f16 itself, with a launch of
    /// its own: the fused kernels that write the input write the copy too, and then the matmul
    /// finds it (the tests check that it does).
    pub fn input_conversions(&self) -> u64 {
        self.conversions.load(Ordering::Relaxed)
    }

    /// Whether the device runs the tensor-core mmq kernels (sm_80 and later).
    pub fn has_mmq(&self) -> bool {
        self.sm_count > 0
    }

    /// Whether cuBLAS loaded (the prefill GEMM path).
    pub fn has_cublas(&self) -> bool {
        self.blas.is_some()
    }

    /// The device's name as the driver reports it.
    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// How many kernel modules were compiled now (0 when all came from the disk cache).
    pub fn modules_compiled(&self) -> usize {
        self.kernels.compiled
    }

    /// A buffer of `rows x cols` holding `data` (for tests and callers that bring their own
    /// activations).
    pub fn buf_from_host(
        &self,
        rows: usize,
        cols: usize,
        data: &[f32],
    ) -> Result<CudaBuf, ModelError> {
        if data.len() != rows * cols {
            return Err(ModelError::Batch(format!(
                "{} values for a {rows}x{cols} buffer",
                data.len()
            )));
        }
        let mut buf = self.alloc_buf(rows, cols)?;
        if !data.is_empty() {
            self.stream
                .memcpy_htod(data, &mut buf.mem.slice_mut(0..data.len()))
                .map_err(|e| CudaError::call("cuMemcpyHtoD(activations)", e))?;
        }
        buf.rows = rows;
        Ok(buf)
    }

    /// Seconds the kernels took to compile (or to load from the cache) and load.
    pub fn kernel_load_secs(&self) -> f64 {
        self.kernels.load_secs
    }

    /// Where the compiled kernels are cached, if anywhere.
    pub fn kernel_cache_dir(&self) -> Option<&std::path::Path> {
        self.kernels.cache_dir.as_deref()
    }

    /// (free, total) device memory in bytes.
    pub fn memory_info(&self) -> Result<(usize, usize), CudaError> {
        self.ctx
            .mem_get_info()
            .map_err(|e| CudaError::call("cuMemGetInfo", e))
    }

    /// Refuses, with the numbers, when `need` bytes would not fit in free GPU memory.
    pub fn check_fits(&self, what: &str, need: usize) -> Result<(), CudaError> {
        let (free, _total) = self
            .ctx
            .mem_get_info()
            .map_err(|e| CudaError::call("cuMemGetInfo", e))?;
        if need > free {
            return Err(CudaError::OutOfMemory {
                what: what.into(),
                need,
                free,
            });
        }
        Ok(())
    }

    /// Waits for all queued work and reports any error it raised.
    pub fn synchronize(&self) -> Result<(), ModelError> {
        self.check()?;
        self.stream
            .synchronize()
            .map_err(|e| CudaError::call("cuStreamSynchronize", e).into())
    }

    /// The sticky error, if an earlier op failed.
    fn check(&self) -> Result<(), ModelError> {
        let s = self.sticky.lock().unwrap_or_else(|p| p.into_inner());
        match &*s {
            Some(msg) => Err(ModelError::Backend(msg.clone())),
            None => Ok(()),
        }
    }

    /// Keeps the first error of an op that cannot return one.
    fn keep(&self, r: Result<(), CudaError>) {
        if let Err(e) = r {
            let mut s = self.sticky.lock().unwrap_or_else(|p| p.into_inner());
            if s.is_none() {
                *s = Some(e.to_string());
            }
        }
    }

    fn indices(&self) -> std::sync::MutexGuard<'_, Indices> {
        self.idx.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn alloc_buf(&self, rows: usize, cols: usize) -> Result<CudaBuf, CudaError> {
        // A new buffer may reuse a freed one's address: no cached quantization survives it.
        self.epoch.fetch_add(1, Ordering::Relaxed);
        let mem = self
            .stream
            .alloc_zeros::<f32>((rows * cols).max(1))
            .map_err(|e| CudaError::call("cuMemAlloc(activations)", e))?;
        let ptr = raw(&mem, &self.stream);
        Ok(CudaBuf {
            mem,
            ptr,
            rows,
            cols,
            cap: rows,
        })
    }

    fn do_embed(
        &self,
        table: &CudaWeight,
        ids: &[u32],
        scale: f32,
        out: &CudaBuf,
    ) -> Result<(), ModelError> {
        let CudaWeight::Matrix { ty, rows, cols, .. } = table else {
            return Err(ModelError::Batch("embedding table is not a matrix".into()));
        };
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= *rows) {
            return Err(ModelError::Batch(format!(
                "token id {id} outside the vocabulary of {rows}"
            )));
        }
        if out.cols != *cols || out.cap < ids.len() {
            return Err(ModelError::Batch(format!(
                "embed: table width {cols}, output {}x{}",
                out.cap, out.cols
            )));
        }
        if ids.is_empty() {
            return Ok(());
        }
        let ids_ptr = self.indices().ids.set(&self.stream, &self.gen, ids)?;
        let grid = (ids.len() as u32, 1, 1);
        let common = [
            Arg::P(table.ptr()),
            Arg::P(ids_ptr),
            Arg::I(*cols as i32),
            Arg::F(scale),
            Arg::P(out.ptr),
        ];
        let r = match float_kind(*ty) {
            Some(kind) => {
                let mut a = common.into_iter().collect::<Vec<_>>();
                a.push(Arg::I(kind));
                self.launch("embed_float", grid, 256, &a)
            }
            None => {
                let name = embed_kernel(*ty)
                    .ok_or_else(|| CudaError::Unsupported(format!("embedding of type {ty}")))?;
                self.launch(name, grid, 256, &common)
            }
        };
        Ok(r?)
    }

    /// The matrix behind a matmul weight, its shape checked against the input and output.
    fn mat(
        &self,
        w: &CudaWeight,
        x: &CudaBuf,
        out: &CudaBuf,
    ) -> Result<(GgmlType, Mat), ModelError> {
        let CudaWeight::Matrix {
            ty,
            rows,
            cols,
            half_ptr,
            ..
        } = w
        else {
            return Err(ModelError::Batch("matmul with a vector weight".into()));
        };
        let (ty, rows, cols) = (*ty, *rows, *cols);
        if x.cols != cols || out.cols != rows || out.cap < x.rows {
            return Err(ModelError::Batch(format!(
                "matmul shapes: weight {rows}x{cols}, input {}x{}, output {}x{}",
                x.rows, x.cols, out.rows, out.cols
            )));
        }
        Ok((
            ty,
            Mat {
                w: w.ptr(),
                wh: *half_ptr,
                rows,
                out: out.ptr,
            },
        ))
    }

    /// outs[i] = x W_i^T: runs of consecutive weights of one type go to one launch where the
    /// kernel for this many tokens takes several matrices (matmul.rs).
    fn do_matmul_many(
        &self,
        ws: &[&CudaWeight],
        x: &CudaBuf,
        outs: &[&CudaBuf],
    ) -> Result<(), ModelError> {
        realizar_model::backend::same_count(ws.len(), outs.len())?;
        let mats = ws
            .iter()
            .zip(outs)
            .map(|(w, o)| self.mat(w, x, o))
            .collect::<Result<Vec<_>, _>>()?;
        if x.rows == 0 {
            return Ok(());
        }
        if self.group && self.f16_weights_take(x.rows) && mats.iter().all(|(_, m)| m.wh != 0) {
            // All f16 copies, whatever the file's types (an 8B Q4_K_M's k is Q4_K, its v Q6_K):
            // equal rows batch together.
            let all: Vec<Mat> = mats.iter().map(|(_, m)| *m).collect();
            return Ok(self.gemm_copies(x.cols, &all, x)?);
        }
        if self.group && self.matmul_mixed(&mats, x)? {
            return Ok(());
        }
        let mut i = 0;
        while i < mats.len() {
            let ty = mats[i].0;
            let run: Vec<Mat> = mats[i..]
                .iter()
                .take(if self.group { matmul::GROUP_MAX } else { 1 })
                .take_while(|(t, _)| *t == ty)
                .map(|(_, m)| *m)
                .collect();
            self.matmul_mats(ty, x.cols, &run, x)?;
            i += run.len();
        }
        Ok(())
    }
}
