//! Opening a model for the commands: the file, the CPU model, the tokenizer.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use realizar_cuda::CudaBackend;
use realizar_engine::{Generator, Tokenizer};
use realizar_formats::{ModelFile, Residency};
use realizar_model::{load_cpu_from, CpuBackend, KvType, LoadOptions};

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda,
}

/// `--kv-type`: the KV cache's element type.
static KV_TYPE: Mutex<KvType> = Mutex::new(KvType::F16);

/// `--kv-type f16|f32|q8_0|fp8`: the element type of the KV caches the commands allocate.
pub fn set_kv_type(ty: KvType) {
    *KV_TYPE.lock().unwrap_or_else(|p| p.into_inner()) = ty;
}

/// The KV cache type `--kv-type` chose (f16 by default).
pub fn kv_type() -> KvType {
    *KV_TYPE.lock().unwrap_or_else(|p| p.into_inner())
}

/// clap's parser of `--kv-type`.
pub fn parse_kv_type(s: &str) -> std::result::Result<KvType, String> {
    KvType::parse(s)
        .ok_or_else(|| format!("unknown KV cache type {s:?}: use f16, f32, q8_0 or fp8"))
}

/// `--mmap`: keep model files memory-mapped on the CPU too.
static MMAP: AtomicBool = AtomicBool::new(false);

/// `--mmap`: the CPU reads a model into huge-page memory unless this is set (see
/// `open_for`).
pub fn set_mmap(on: bool) {
    MMAP.store(on, Ordering::Relaxed);
}

/// Opens a model file for `device`: for the CPU, read into huge-page memory when it fits (its
/// matrix products stream every weight per token; decode of a Q8_0 file +20-26% over a file mapping,
/// docs/perf-notes.md) unless `--mmap`; for CUDA, mapped (the weights are uploaded once).
pub fn open_for(path: &Path, device: Device) -> Result<ModelFile> {
    let residency = if device == Device::Cpu && !MMAP.load(Ordering::Relaxed) {
        Residency::HugePages
    } else {
        Residency::Mapped
    };
    ModelFile::open_with(path, residency).with_context(|| format!("opening {}", path.display()))
}

/// `--device cpu|cuda|auto`: auto is cuda when a CUDA device is found, else cpu; cuda without a
/// device is an error naming why.
pub fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => match realizar_cuda::probe() {
            Ok(_) => Ok(Device::Cuda),
            Err(e) => bail!("--device cuda: {e}"),
        },
        "auto" => Ok(if realizar_cuda::probe().is_ok() {
            Device::Cuda
        } else {
            Device::Cpu
        }),
        other => bail!("unknown device {other:?}: use cpu, cuda or auto"),
    }
}

/// Sizes the rayon pool (once per process). `None` uses the physical core count.
pub fn set_threads(threads: Option<usize>) {
    let n = threads.unwrap_or_else(physical_cores).max(1);
    // A second call keeps the first pool; that is fine for a CLI.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
}

/// Physical cores (logical CPUs without SMT siblings), as llama.cpp counts its default threads.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return logical;
    };
    let mut cores = std::collections::HashSet::new();
    let (mut phys, mut core) = (None, None);
    for line in info.lines() {
        let val = || line.split(':').nth(1).map(|v| v.trim().to_string());
        if line.starts_with("physical id") {
            phys = val();
        } else if line.starts_with("core id") {
            core = val();
        } else if line.trim().is_empty() {
            if let (Some(p), Some(c)) = (phys.take(), core.take()) {
                cores.insert((p, c));
            }
        }
    }
    if cores.is_empty() {
        logical
    } else {
        cores.len().min(logical)
    }
}

/// The tokenizer of an opened model: GGUF metadata, or tokenizer.json beside safetensors.
pub fn tokenizer(file: &ModelFile) -> Result<Tokenizer> {
    let tok = match file.gguf() {
        Some(g) => Tokenizer::from_gguf(g),
        None => Tokenizer::from_hf_dir(file.dir()),
    };
    tok.context("loading the tokenizer")
}

fn open(path: &Path, device: Device) -> Result<(Arc<ModelFile>, Tokenizer)> {
    let file = Arc::new(open_for(path, device)?);
    let tok = tokenizer(&file)?;
    Ok((file, tok))
}

/// The load options of `run`, `chat` and `perplexity`: a KV cache of `ctx` tokens.
pub fn options(ctx: usize, deterministic: bool) -> LoadOptions {
    LoadOptions {
        kv_tokens: ctx,
        deterministic,
        kv_type: kv_type(),
        ..LoadOptions::default()
    }
}

/// Opens a model and its tokenizer on the CPU with a KV cache of `ctx` tokens.
pub fn generator(path: &Path, ctx: usize) -> Result<Generator<CpuBackend>> {
    generator_with(path, &options(ctx, false))
}

/// Opens a model and its tokenizer on the CPU.
pub fn generator_with(path: &Path, opts: &LoadOptions) -> Result<Generator<CpuBackend>> {
    let (file, tok) = open(path, Device::Cpu)?;
    let model = load_cpu_from(file, opts).with_context(|| format!("loading {}", path.display()))?;
    Ok(Generator::new(model, tok))
}

/// Opens a model and its tokenizer on the first CUDA device with a KV cache of `ctx` tokens.
pub fn cuda_generator(path: &Path, ctx: usize) -> Result<Generator<CudaBackend>> {
    cuda_generator_with(path, &options(ctx, false))
}

/// Opens a model and its tokenizer on the first CUDA device.
pub fn cuda_generator_with(path: &Path, opts: &LoadOptions) -> Result<Generator<CudaBackend>> {
    let (file, tok) = open(path, Device::Cuda)?;
    let model = realizar_cuda::load_cuda_from(file, opts)
        .with_context(|| format!("loading {} on CUDA", path.display()))?;
    Ok(Generator::new(model, tok))
}

/// `--f16-weights auto|on|off` (CUDA): keep an f16 copy of each quantized matrix, so batched
/// decode and prefill steps run cuBLAS on it (about 2 bytes a weight more GPU memory). Auto:
/// when the copies take at most half of the memory the KV cache could otherwise have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum F16WeightsArg {
    #[default]
    Auto,
    On,
    Off,
}

impl F16WeightsArg {
    pub fn to_cuda(self) -> realizar_cuda::F16Weights {
        match self {
            F16WeightsArg::Auto => realizar_cuda::F16Weights::Auto,
            F16WeightsArg::On => realizar_cuda::F16Weights::On,
            F16WeightsArg::Off => realizar_cuda::F16Weights::Off,
        }
    }
}

/// What a CUDA model was loaded with, for logs and bench tables: "CUDA", or "CUDA+f16w" when
/// its quantized matrices have f16 copies.
pub fn cuda_label(backend: &CudaBackend) -> &'static str {
    if backend.f16_weight_copies() > 0 {
        "CUDA+f16w"
    } else {
        "CUDA"
    }
}
