//! realizar-cuda: the CUDA backend.
//!
//! The CUDA driver and NVRTC are loaded at run time (`libcuda.so.1`, `libnvrtc.so.13`), so the
//! workspace builds and its tests run on machines without CUDA. [`probe`] answers "is there a
//! usable GPU?" for `--device auto`; [`CudaBackend`] implements `realizar_model::Backend` with
//! kernels from `kernels/*.cu`, compiled by NVRTC for the device's own architecture
//! (`compile.rs`); [`load_cuda_from`] loads a model onto it.

mod backend;
mod compile;
mod sizing;

use std::sync::Arc;

use realizar_formats::ModelFile;
use realizar_model::{config_of, LoadOptions, Model, ModelError, Weights};

pub use backend::{
    CudaBackend, CudaBuf, CudaKv, CudaWeight, GraphStats, DEFAULT_GEMM_MIN_TOKENS,
    DEFAULT_MMQ_F16_TOKENS, DEFAULT_MMQ_TOKENS, SUPPORTED_TYPES,
};
pub use compile::precompile as precompile_kernels;
pub use sizing::{f16_copies_fit, kv_tokens_for_budget, Needs};

use std::ffi::c_int;

/// Errors of the CUDA backend.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("no CUDA driver: cannot load libcuda.so.1 ({0})")]
    NoDriver(String),
    #[error("CUDA driver call {call} failed with error {code}")]
    Driver { call: &'static str, code: c_int },
    #[error("no CUDA device found")]
    NoDevice,
    #[error("no NVRTC: cannot load libnvrtc (install the CUDA runtime compiler, or add its folder to LD_LIBRARY_PATH)")]
    NoNvrtc,
    #[error("NVRTC call {call} failed for {file}: {e:?}")]
    Nvrtc {
        call: &'static str,
        file: &'static str,
        e: cudarc::nvrtc::result::NvrtcError,
    },
    #[error("NVRTC could not compile {file}:\n{log}")]
    Compile { file: &'static str, log: String },
    #[error("kernel {0} is not loaded")]
    MissingKernel(&'static str),
    #[error("CUDA kernel {kernel} failed: {e}")]
    Kernel {
        kernel: &'static str,
        e: cudarc::driver::DriverError,
    },
    #[error("CUDA call {call} failed: {e}")]
    Call {
        call: &'static str,
        e: cudarc::driver::DriverError,
    },
    #[error("cuBLAS call {call} failed: {e:?}")]
    Blas {
        call: &'static str,
        e: cudarc::cublas::result::CublasError,
    },
    #[error("not supported on the CUDA backend: {0}")]
    Unsupported(String),
    #[error("out of GPU memory: {what} needs {need} bytes, {free} free")]
    OutOfMemory {
        what: String,
        need: usize,
        free: usize,
    },
}

impl CudaError {
    pub(crate) fn call(call: &'static str, e: cudarc::driver::DriverError) -> Self {
        CudaError::Call { call, e }
    }

    pub(crate) fn kernel(kernel: &'static str, e: cudarc::driver::DriverError) -> Self {
        CudaError::Kernel { kernel, e }
    }
}

impl From<CudaError> for ModelError {
    fn from(e: CudaError) -> Self {
        ModelError::Backend(e.to_string())
    }
}

/// What the CUDA driver reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Number of CUDA devices.
    pub count: usize,
    /// Driver version as CUDA encodes it (e.g. 13000 for 13.0).
    pub driver_version: i32,
}

type CuInit = unsafe extern "C" fn(flags: u32) -> c_int;
type CuDeviceGetCount = unsafe extern "C" fn(count: *mut c_int) -> c_int;
type CuDriverGetVersion = unsafe extern "C" fn(version: *mut c_int) -> c_int;

/// Loads the CUDA driver and counts devices. `Err(NoDriver)` on machines without CUDA.
pub fn probe() -> Result<DeviceInfo, CudaError> {
    // SAFETY: loading the system's CUDA driver library runs its initialisers, which is what every
    // CUDA program does; we call only documented driver entry points with their C signatures.
    let lib = unsafe { libloading::Library::new("libcuda.so.1") }
        .map_err(|e| CudaError::NoDriver(e.to_string()))?;
    let call = |name: &'static str, code: c_int| {
        if code == 0 {
            Ok(())
        } else {
            Err(CudaError::Driver { call: name, code })
        }
    };
    // SAFETY: the symbols are looked up by their documented names and typed with the driver
    // API's signatures; out-pointers point to live locals.
    unsafe {
        let init: libloading::Symbol<CuInit> = lib
            .get(b"cuInit\0")
            .map_err(|e| CudaError::NoDriver(e.to_string()))?;
        let count_fn: libloading::Symbol<CuDeviceGetCount> = lib
            .get(b"cuDeviceGetCount\0")
            .map_err(|e| CudaError::NoDriver(e.to_string()))?;
        let version_fn: libloading::Symbol<CuDriverGetVersion> =
            lib.get(b"cuDriverGetVersion\0")
                .map_err(|e| CudaError::NoDriver(e.to_string()))?;
        call("cuInit", init(0))?;
        let mut count: c_int = 0;
        call("cuDeviceGetCount", count_fn(&mut count))?;
        let mut version: c_int = 0;
        call("cuDriverGetVersion", version_fn(&mut version))?;
        if count <= 0 {
            return Err(CudaError::NoDevice);
        }
        Ok(DeviceInfo {
            count: count as usize,
            driver_version: version,
        })
    }
}

/// Whether a model keeps an f16 copy of each quantized matrix beside it
/// (`CudaBackend::set_f16_weights`): batched decode and prefill steps then run cuBLAS on the
/// copies, with no dequantization or mmq in the step, for about 2 bytes a weight more memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum F16Weights {
    /// When the copies take at most half of the memory the KV cache could otherwise have
    /// (`sizing::f16_copies_fit`).
    #[default]
    Auto,
    On,
    Off,
}

impl F16Weights {
    /// `REALIZAR_CUDA_F16_WEIGHTS=1` or `=0`, where set, overrides the choice (A/B runs).
    fn or_env(self) -> F16Weights {
        match std::env::var("REALIZAR_CUDA_F16_WEIGHTS").as_deref() {
            Ok("1") => F16Weights::On,
            Ok("0") => F16Weights::Off,
            _ => self,
        }
    }
}

/// How a model is placed on the GPU, beyond `LoadOptions`.
#[derive(Debug, Clone, Copy, Default)]
pub struct GpuOptions {
    /// Size the KV cache to what is left of this fraction of the GPU's memory after the
    /// weights, the scratch and what other processes hold (`LoadOptions::kv_tokens` is then
    /// ignored); `None`: `kv_tokens` as given.
    pub memory_fraction: Option<f64>,
    pub f16_weights: F16Weights,
}

/// Loads an already opened model file onto GPU 0 (weights uploaded once in their file format,
/// KV cache on the GPU), with f16 weight copies where they fit (`F16Weights::Auto`).
pub fn load_cuda_from(
    file: Arc<ModelFile>,
    opts: &LoadOptions,
) -> Result<Model<CudaBackend>, ModelError> {
    load_cuda_with(file, opts, &GpuOptions::default())
}

/// As `load_cuda_from`, with the KV cache sized to what is left of `fraction` of the GPU's
/// memory after the weights, the scratch and what other processes hold (`opts.kv_tokens` is
/// ignored).
pub fn load_cuda_sized(
    file: Arc<ModelFile>,
    opts: &LoadOptions,
    fraction: f64,
) -> Result<Model<CudaBackend>, ModelError> {
    let gpu = GpuOptions {
        memory_fraction: Some(fraction),
        ..GpuOptions::default()
    };
    load_cuda_with(file, opts, &gpu)
}

/// Loads an opened model file onto GPU 0 as `gpu` says.
pub fn load_cuda_with(
    file: Arc<ModelFile>,
    opts: &LoadOptions,
    gpu: &GpuOptions,
) -> Result<Model<CudaBackend>, ModelError> {
    let mut backend = CudaBackend::new(0)?;
    let cfg = config_of(&file)?;
    if opts.deterministic {
        // The mmvq and f32 kernels give a token the same arithmetic for any token count; the
        // cuBLAS GEMMs (from `gemm_min_tokens` tokens) and the mmq kernels (their K splits
        // depend on the batch) do not, nor does split-K attention (its split count depends on
        // the batch), nor the flash kernel (taken by steps of many tokens a sequence), nor the
        // cluster norms and the streamed matmuls (one-token steps); the f16 weight copies are
        // not made (below).
        backend.set_gemm_min_tokens(usize::MAX);
        backend.set_mmq_tokens(0, 0);
        backend.set_attention_split(false);
        backend.set_attention_flash(false);
        backend.set_cluster_norms(false);
        backend.set_mmvq_bulk(false, false);
    }
    let (free, total) = backend.memory_info()?;
    let file_needs = Needs::of(&file, &cfg, opts);
    let copies = sizing::f16_copy_bytes(&file);
    let block_size = opts.block_size.max(1);
    let kv_fixed = match gpu.memory_fraction {
        Some(_) => 0,
        None => opts.kv_tokens.div_ceil(block_size) * block_size,
    } * file_needs.kv_per_token;
    let on = !opts.deterministic
        && backend.has_cublas()
        && copies > 0
        && match gpu.f16_weights.or_env() {
            F16Weights::On => true,
            F16Weights::Off => false,
            F16Weights::Auto => f16_copies_fit(
                total,
                free,
                gpu.memory_fraction,
                &file_needs,
                kv_fixed,
                copies,
            ),
        };
    backend.set_f16_weights(on);
    // The copies count as weights.
    let needs = Needs {
        weights: file_needs.weights + if on { copies } else { 0 },
        ..file_needs
    };
    let kv_tokens = match gpu.memory_fraction {
        Some(fraction) => kv_tokens_for_budget(total, free, fraction, &needs, block_size)?,
        None => opts.kv_tokens,
    };
    let n_blocks = kv_tokens.div_ceil(block_size).max(1);
    backend.check_fits(
        "weights, KV cache and matmul scratch",
        needs.weights + n_blocks * block_size * needs.kv_per_token + needs.scratch,
    )?;
    // Upload progress of the file's bytes on stderr (indicatif draws nothing when stderr is not
    // a terminal).
    let bar = indicatif::ProgressBar::new(file_needs.weights as u64).with_style(
        indicatif::ProgressStyle::with_template("uploading weights {bar:30} {bytes}/{total_bytes}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let weights = Weights::load_observed(&file, &cfg, &backend, &|t| bar.inc(t.data.len() as u64));
    bar.finish_and_clear();
    let weights = weights?;
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

/// Opens a model file and loads it onto GPU 0.
pub fn load_cuda(
    path: &std::path::Path,
    opts: &LoadOptions,
) -> Result<(Arc<ModelFile>, Model<CudaBackend>), ModelError> {
    let file = Arc::new(ModelFile::open(path)?);
    let model = load_cuda_from(file.clone(), opts)?;
    Ok((file, model))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_on_the_gpu_can_move_to_an_engine_thread() {
        fn send<T: Send>() {}
        send::<CudaBackend>();
        send::<Model<CudaBackend>>();
    }

    #[test]
    fn loading_without_a_gpu_is_an_error_not_a_panic() {
        if probe().is_ok() {
            return;
        }
        assert!(CudaBackend::new(0).is_err());
    }

    #[test]
    fn probe_answers_without_panicking() {
        match probe() {
            Ok(info) => {
                assert!(info.count > 0);
                eprintln!(
                    "CUDA: {} device(s), driver {}",
                    info.count, info.driver_version
                );
            }
            Err(e) => eprintln!("skipping GPU checks: {e}"),
        }
    }
}
