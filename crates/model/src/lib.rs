//! realizar-model: the architecture as data (`ModelConfig`), weights by role (`Weights`), the one
//! forward pass (`Model::forward`) written against the `Backend` trait, and the CPU backend.

pub mod backend;
pub mod config;
pub mod cpu;
pub mod draw;
pub mod forward;
pub mod names;
pub mod weights;

use std::path::Path;
use std::sync::Arc;

use realizar_formats::{FormatError, ModelFile};

pub use backend::{Backend, KvType, TopK};
pub use config::{Activation, Arch, ModelConfig, RopeLayout};
pub use cpu::CpuBackend;
pub use draw::Draw;
pub use forward::{LogitsWanted, Model, RowOrToken, SeqChunk};
pub use weights::Weights;

/// Errors of model loading and the forward pass.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("unsupported architecture '{0}' (supported: llama, mistral, qwen2, qwen3, gemma3)")]
    UnsupportedArch(String),
    #[error("bad model config: {0}")]
    BadConfig(String),
    #[error("missing tensor '{0}'")]
    MissingTensor(String),
    #[error("tensor '{tensor}' has shape {found}, expected {expected}")]
    BadShape {
        tensor: String,
        expected: String,
        found: String,
    },
    #[error("tensor '{tensor}': {source}")]
    Quant {
        tensor: String,
        source: realizar_quant::QuantError,
    },
    #[error("invalid batch: {0}")]
    Batch(String),
    #[error("backend error: {0}")]
    Backend(String),
}

/// Options for loading a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Total token capacity of the KV cache (rounded up to whole blocks).
    pub kv_tokens: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Most tokens processed in one internal step.
    pub max_batch_tokens: usize,
    /// Element type of the KV cache.
    pub kv_type: KvType,
    /// Batch-invariant arithmetic: a sequence's logits are bit for bit the same whatever else
    /// is in the batch (on the CPU the matmuls use one kernel arithmetic for every token
    /// count; on CUDA the f16 GEMM path is off). Costs single-sequence decode speed.
    pub deterministic: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            kv_tokens: 4096,
            block_size: 16,
            max_batch_tokens: 512,
            kv_type: KvType::F16,
            deterministic: false,
        }
    }
}

/// Reads the architecture config of an opened model file.
pub fn config_of(file: &ModelFile) -> Result<ModelConfig, ModelError> {
    match (file.gguf(), file.hf_config()) {
        (Some(g), _) => ModelConfig::from_gguf(g),
        (None, Some(c)) => ModelConfig::from_hf(c),
        (None, None) => Err(ModelError::BadConfig(
            "model file has neither GGUF metadata nor config.json".into(),
        )),
    }
}

/// Opens a model file and loads it on the CPU backend (the file read into huge-page memory
/// where it fits, `Residency::HugePages`).
pub fn load_cpu(
    path: &Path,
    opts: &LoadOptions,
) -> Result<(Arc<ModelFile>, Model<CpuBackend>), ModelError> {
    let file = Arc::new(ModelFile::open_with(
        path,
        realizar_formats::Residency::HugePages,
    )?);
    let model = load_cpu_from(file.clone(), opts)?;
    Ok((file, model))
}

/// Loads an already opened model file on the CPU backend.
pub fn load_cpu_from(
    file: Arc<ModelFile>,
    opts: &LoadOptions,
) -> Result<Model<CpuBackend>, ModelError> {
    let cfg = config_of(&file)?;
    let mut backend = CpuBackend::new(file.clone());
    backend.set_deterministic(opts.deterministic);
    let weights = Weights::load(&file, &cfg, &backend)?;
    let block_size = opts.block_size.max(1);
    let n_blocks = opts.kv_tokens.div_ceil(block_size).max(1);
    Model::new(
        cfg,
        backend,
        weights,
        opts.max_batch_tokens,
        block_size,
        n_blocks,
        opts.kv_type,
    )
}
