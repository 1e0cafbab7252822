//! `realizar serve`: the OpenAI-compatible server on one model.
//!
//! Opens the model file and tokenizer here (so a bad path fails at once), binds the socket,
//! starts the engine thread (which maps the weights; /health answers 503 until it is ready) and
//! serves until SIGTERM or Ctrl-C, then drains in-flight requests for the grace period.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use realizar_engine::{Engine, EngineConfig, EngineError, SchedConfig};
use realizar_model::{load_cpu_from, LoadOptions};
use realizar_server::{AppState, ServerConfig};

use crate::{load, model_path};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Device {
    Cpu,
    Cuda,
    Auto,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Model file or folder (default: SmolLM2-135M-Instruct Q4_1, fetched on first use).
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0 picks a free one; the log says which).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on every route but /health.
    #[arg(long, conflicts_with = "api_key_file")]
    pub api_key: Option<String>,
    /// Read the API key from the first line of a file.
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
    /// Context of one sequence in tokens (prompt + completion).
    #[arg(long, default_value_t = 4096)]
    pub ctx: usize,
    /// Sequences decoded together at most.
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    /// Requests waiting for a slot at most; beyond, 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// KV-cache size in tokens, shared by all sequences (default: max(ctx, 16384)).
    #[arg(long)]
    pub kv_tokens: Option<usize>,
    /// Prompt tokens of one sequence per step (longer prompts are prefilled in chunks).
    #[arg(long, default_value_t = 256)]
    pub prefill_chunk: usize,
    /// Tokens computed in one step, all sequences together (default: --prefill-chunk +
    /// --max-batch; on CUDA at least 2048, as llama-server's batch). More starts a burst of
    /// prompts in fewer steps, each one pass over the weights, and lengthens the steps that
    /// carry them for the sequences decoding meanwhile.
    #[arg(long)]
    pub max_step_tokens: Option<usize>,
    /// Compute every prompt in full instead of reusing the KV blocks of prefixes computed
    /// before (a shared system prompt, the earlier turns of a chat).
    #[arg(long)]
    pub no_prefix_cache: bool,
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// Keep the model file memory-mapped on the CPU instead of reading it into huge-page
    /// memory (less memory when several processes share the file; slower decode).
    #[arg(long)]
    pub mmap: bool,
    /// KV cache element type: f16, f32, q8_0 or fp8 (E4M3); q8_0 and fp8 take about half of
    /// f16's memory, on the CPU and on CUDA.
    #[arg(long, default_value = "f16", value_parser = crate::load::parse_kv_type)]
    pub kv_type: realizar_model::KvType,
    /// Worker threads (default: physical cores).
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// Batch-invariant arithmetic: a request's tokens (with a seed) do not depend on what else
    /// is in the batch (bit-identical alone or batched; slower single-sequence decode).
    #[arg(long)]
    pub deterministic: bool,
    /// CUDA only: size the KV cache to what is left of this fraction of the GPU's memory after
    /// the weights and what other processes hold (like vLLM's --gpu-memory-utilization);
    /// replaces --kv-tokens.
    #[arg(long)]
    pub gpu_memory: Option<f64>,
    /// CUDA only: keep an f16 copy of each quantized matrix, so batched decode and prefill
    /// steps run cuBLAS on it (about 2 bytes a weight more memory, taken from the KV cache);
    /// auto when the copies take at most half of the memory the KV cache could otherwise have.
    #[arg(long, value_enum, default_value_t = load::F16WeightsArg::Auto)]
    pub f16_weights: load::F16WeightsArg,
    /// Seconds in-flight requests may run on after SIGTERM / Ctrl-C.
    #[arg(long, default_value_t = 30)]
    pub grace: u64,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body: usize,
    /// The model id /v1/models reports (default: the file name without extension).
    #[arg(long)]
    pub alias: Option<String>,
}

/// The step budget: `--max-step-tokens`, or a chunk of one prompt beside a full batch of
/// decodes, and on a GPU at least `GPU_STEP_TOKENS`. There a prefill step costs a pass over
/// the weights whatever its size (its GEMMs dequantize every weight to f16 first: ~8.5 ms of a
/// step of the 8B model on an H200), so a wave of short prompts is cheapest in one step.
fn step_tokens(a: &ServeArgs, device: load::Device) -> usize {
    a.max_step_tokens.unwrap_or_else(|| {
        let least = match device {
            load::Device::Cuda => GPU_STEP_TOKENS,
            load::Device::Cpu => 0,
        };
        (a.prefill_chunk + a.max_batch).max(least)
    })
}

/// The least default step budget on a GPU (llama-server's default batch).
const GPU_STEP_TOKENS: usize = 2048;

pub fn run(a: ServeArgs) -> Result<()> {
    init_logging();
    let device = load::device(match a.device {
        Device::Cpu => "cpu",
        Device::Cuda => "cuda",
        Device::Auto => "auto",
    })?;
    if a.gpu_memory.is_some() && !matches!(device, load::Device::Cuda) {
        anyhow::bail!(
            "--gpu-memory sizes a GPU's KV cache: it needs --device cuda (or auto with a GPU)"
        );
    }
    if a.f16_weights == load::F16WeightsArg::On && !matches!(device, load::Device::Cuda) {
        bail!(
            "--f16-weights on keeps copies on a GPU: it needs --device cuda (or auto with a GPU)"
        );
    }
    if a.ctx == 0 || a.max_batch == 0 || a.prefill_chunk == 0 || a.max_step_tokens == Some(0) {
        bail!("--ctx, --max-batch, --prefill-chunk and --max-step-tokens must be at least 1");
    }
    let api_key = match (&a.api_key, &a.api_key_file) {
        (Some(k), _) => Some(k.trim().to_string()),
        (None, Some(f)) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("reading the API key file {}", f.display()))?;
            let key = text.lines().next().unwrap_or_default().trim().to_string();
            if key.is_empty() {
                bail!("the API key file {} is empty", f.display());
            }
            Some(key)
        }
        (None, None) => None,
    };
    if api_key.as_deref() == Some("") {
        bail!("--api-key is empty");
    }
    load::set_threads(a.threads);
    let path = model_path::resolve(a.model.as_deref())?;
    load::set_mmap(a.mmap);
    let file = Arc::new(load::open_for(&path, device)?);
    let tokenizer = Arc::new(load::tokenizer(&file)?);
    let model_name = a.alias.clone().unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "realizar".into())
    });

    let sched = SchedConfig {
        max_seqs: a.max_batch,
        max_step_tokens: step_tokens(&a, device),
        prefill_chunk: a.prefill_chunk,
        prefix_cache: !a.no_prefix_cache,
    };
    let kv_tokens = a.kv_tokens.unwrap_or(16384).max(a.ctx);
    let opts = LoadOptions {
        kv_tokens,
        max_batch_tokens: sched.max_step_tokens,
        deterministic: a.deterministic,
        kv_type: a.kv_type,
        ..LoadOptions::default()
    };
    let cfg = EngineConfig {
        candidates: realizar_engine::Candidates::Auto,
        ctx: a.ctx,
        max_queue: a.max_queue,
        sched,
    };
    let load_path = path.clone();
    let gpu = realizar_cuda::GpuOptions {
        memory_fraction: a.gpu_memory,
        f16_weights: a.f16_weights.to_cuda(),
    };
    let ctx = a.ctx;
    let spawned = match device {
        load::Device::Cpu => Engine::spawn(cfg, tokenizer, move || {
            let t0 = std::time::Instant::now();
            let model = load_cpu_from(file, &opts).map_err(EngineError::from)?;
            log_loaded(&load_path, "cpu", t0, &model);
            Ok(model)
        }),
        load::Device::Cuda => Engine::spawn(cfg, tokenizer, move || {
            let t0 = std::time::Instant::now();
            let mut model =
                realizar_cuda::load_cuda_with(file, &opts, &gpu).map_err(EngineError::from)?;
            let kv = model.n_blocks() * model.block_size();
            if kv < ctx {
                return Err(EngineError::Request(format!(
                    "the GPU's KV cache holds {kv} tokens, fewer than --ctx {ctx}: raise \
                     --gpu-memory or lower --ctx"
                )));
            }
            let on = if model.backend.f16_weight_copies() > 0 {
                "cuda with f16 weight copies"
            } else {
                "cuda"
            };
            log_loaded(&load_path, on, t0, &model);
            // cuBLAS loads its kernels at their first launch, and buffers grow on first use:
            // run those costs now, not in the first requests' time to first token (measured on
            // an H200, 8B cut to 8 layers: a first prefill of 64 16-token prompts 111 ms,
            // later ones 18-21 ms).
            let t1 = std::time::Instant::now();
            let n = model.warm_up().map_err(EngineError::from)?;
            tracing::info!("warmed up in {} ms ({n} tokens)", t1.elapsed().as_millis());
            Ok(model)
        }),
    };
    let (engine, _join) = spawned.context("starting the engine thread")?;

    let server_cfg = ServerConfig {
        api_key,
        model_name,
        body_limit: a.max_body,
        grace: Duration::from_secs(a.grace),
    };
    let state = AppState::new(engine, server_cfg);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let addr = format!("{}:{}", a.host, a.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr()?;
        tracing::info!(
            "listening on http://{local} (model {}, ctx {}, max batch {}, max queue {})",
            path.display(),
            a.ctx,
            a.max_batch,
            a.max_queue
        );
        realizar_server::serve(listener, state, shutdown_signal()).await?;
        tracing::info!("stopped");
        anyhow::Ok(())
    })?;
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

fn log_loaded<B: realizar_model::Backend>(
    path: &std::path::Path,
    device: &str,
    t0: std::time::Instant,
    model: &realizar_model::Model<B>,
) {
    tracing::info!(
        "loaded {} on {device} in {} ms: KV cache {} blocks of {} tokens",
        path.display(),
        t0.elapsed().as_millis(),
        model.n_blocks(),
        model.block_size()
    );
}

/// One line per event on stderr; `RUST_LOG` overrides the level.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn args(extra: &[&str]) -> ServeArgs {
        let mut v = vec!["serve", "--max-batch", "64"];
        v.extend_from_slice(extra);
        match Cli::try_parse_from(v) {
            Ok(cli) => cli.serve,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn step_budget_defaults_by_device_and_takes_the_flag() {
        // A prompt chunk beside a full batch on the CPU; at least 2048 on a GPU.
        assert_eq!(step_tokens(&args(&[]), load::Device::Cpu), 256 + 64);
        assert_eq!(step_tokens(&args(&[]), load::Device::Cuda), GPU_STEP_TOKENS);
        let big = args(&["--prefill-chunk", "4096"]);
        assert_eq!(step_tokens(&big, load::Device::Cuda), 4096 + 64);
        let set = args(&["--max-step-tokens", "100"]);
        assert_eq!(step_tokens(&set, load::Device::Cpu), 100);
        assert_eq!(step_tokens(&set, load::Device::Cuda), 100);
    }

    #[test]
    fn f16_weight_copies_parse_and_need_a_gpu() {
        assert_eq!(args(&[]).f16_weights, load::F16WeightsArg::Auto);
        assert_eq!(
            args(&["--f16-weights", "off"]).f16_weights,
            load::F16WeightsArg::Off
        );
        let msg = match run(args(&["--device", "cpu", "--f16-weights", "on"])) {
            Ok(()) => String::from("served"),
            Err(e) => e.to_string(),
        };
        assert!(msg.contains("--f16-weights on"), "{msg}");
    }
}
