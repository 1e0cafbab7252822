//! `realizar bench`: prompt-processing and generation speed, printed as llama-bench prints it.
//!
//! Each test is warmed up as llama-bench does (the whole prompt for pp, one token for tg), then
//! runs `reps` times from an empty context: `ppN` is one
//! forward pass over N prompt tokens (logits for the last one only), `tgN` is N single-token
//! forward passes. Tokens are random ids from the vocabulary (the speed does not depend on
//! them). Reported: tokens per second, mean ± sample standard deviation over the repetitions.
//!
//! With `--parallel` the batched mode of `bench_batched.rs` runs instead.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use realizar_formats::ModelFile;
use realizar_model::{load_cpu_from, Backend, LoadOptions, LogitsWanted, Model, SeqChunk};

use crate::bench_batched;
use crate::load::{self, Device};
use crate::quantize::ftype_name;

pub struct BenchArgs<'a> {
    pub model: &'a Path,
    pub n_prompt: usize,
    pub n_gen: usize,
    pub reps: usize,
    /// Tokens of context prefilled (untimed) before each test.
    pub depth: usize,
    pub threads: usize,
    pub device: &'a str,
    /// Batch-invariant arithmetic (`LoadOptions::deterministic`).
    pub deterministic: bool,
    /// `--parallel`: the batch sizes of the batched mode (`bench_batched.rs`).
    pub parallel: Option<&'a [usize]>,
    /// CUDA: f16 copies of the quantized weights (`realizar_cuda::F16Weights`).
    pub f16_weights: realizar_cuda::F16Weights,
}

pub fn run(a: BenchArgs<'_>) -> Result<()> {
    let device = load::device(a.device)?;
    if a.f16_weights == realizar_cuda::F16Weights::On && device == Device::Cpu {
        anyhow::bail!("--f16-weights on keeps copies on a GPU: it needs --device cuda");
    }
    let file = Arc::new(load::open_for(a.model, device)?);
    let desc = describe(&file);
    let (opts, what) = match a.parallel {
        Some(list) => {
            let sizing = bench_batched::Sizing::new(a.n_prompt, a.n_gen, list)?;
            if device == Device::Cpu {
                sizing.check_host_memory(&realizar_model::config_of(&file)?)?;
            }
            let what = format!("loading {} ({})", a.model.display(), sizing.kv_summary());
            (sizing.load_options(a.deterministic), what)
        }
        None => (
            LoadOptions {
                kv_tokens: a.depth + a.n_prompt.max(a.n_gen).max(1),
                // The context is prefilled in steps of up to 512 tokens even without a pp test.
                max_batch_tokens: a.n_prompt.max(if a.depth > 0 { 512 } else { 1 }),
                deterministic: a.deterministic,
                kv_type: load::kv_type(),
                ..LoadOptions::default()
            },
            format!("loading {}", a.model.display()),
        ),
    };
    match device {
        Device::Cpu => bench(load_cpu_from(file, &opts).context(what)?, &desc, &a, "CPU"),
        Device::Cuda => {
            let gpu = realizar_cuda::GpuOptions {
                f16_weights: a.f16_weights,
                ..Default::default()
            };
            let model = realizar_cuda::load_cuda_with(file, &opts, &gpu).context(what)?;
            let label = load::cuda_label(&model.backend);
            bench(model, &desc, &a, label)
        }
    }
}

/// xorshift64*: reproducible random token ids below `vocab` without a dependency.
pub(crate) fn random_tokens(vocab: usize) -> impl FnMut() -> u32 {
    let vocab = vocab.max(1) as u64;
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    move || {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        (seed.wrapping_mul(0x2545_F491_4F6C_DD1D) % vocab) as u32
    }
}

fn bench<B: Backend>(
    mut model: Model<B>,
    desc: &Desc,
    a: &BenchArgs<'_>,
    backend: &str,
) -> Result<()> {
    if let Some(list) = a.parallel {
        return bench_batched::bench(&mut model, desc, a, list, backend);
    }
    let mut next_token = random_tokens(model.cfg.vocab_size);

    println!(
        "| {:<30} | {:>10} | {:>10} | {:<10} | {:>7} | {:>15} | {:>20} |",
        "model", "size", "params", "backend", "threads", "test", "t/s"
    );
    println!(
        "| {:-<30} | {:->9}: | {:->9}: | {:-<10} | {:->6}: | {:->14}: | {:->19}: |",
        "", "", "", "", "", "", ""
    );
    let row = |test: String, speeds: &[f64]| {
        let (mean, sd) = mean_sd(speeds);
        println!(
            "| {:<30} | {:>10} | {:>10} | {:<10} | {:>7} | {:>15} | {:>20} |",
            desc.name,
            desc.size,
            desc.params,
            backend,
            a.threads,
            test,
            format!("{mean:.2} ± {sd:.2}")
        );
    };
    // As llama-bench: each repetition starts from a cache holding `depth` tokens of context.
    let context: Vec<u32> = (0..a.depth).map(|_| next_token()).collect();
    let d = context.len();
    let at = |test: String| {
        if d > 0 {
            format!("{test} @ d{d}")
        } else {
            test
        }
    };
    if a.n_prompt > 0 {
        let tokens: Vec<u32> = (0..a.n_prompt).map(|_| next_token()).collect();
        prefill(&mut model, &context, 0)?;
        prefill(&mut model, &tokens, d)?; // warm-up
        let speeds = measure(a.reps, &mut model, &context, |m| prefill(m, &tokens, d))?;
        row(at(format!("pp{}", a.n_prompt)), &speeds);
    }
    if a.n_gen > 0 {
        let tokens: Vec<u32> = (0..a.n_gen).map(|_| next_token()).collect();
        // llama-bench warms generation up with a single token.
        prefill(&mut model, &context, 0)?;
        generate(&mut model, &tokens[..1], d)?;
        let speeds = measure(a.reps, &mut model, &context, |m| generate(m, &tokens, d))?;
        row(at(format!("tg{}", a.n_gen)), &speeds);
    }
    Ok(())
}

/// `reps` timed runs of `f` (after the caller's warm-up), each after the untimed prefill of
/// `context`, as tokens per second.
fn measure<B: Backend>(
    reps: usize,
    model: &mut Model<B>,
    context: &[u32],
    mut f: impl FnMut(&mut Model<B>) -> Result<usize>,
) -> Result<Vec<f64>> {
    (0..reps.max(1))
        .map(|_| {
            prefill(model, context, 0)?;
            let t = Instant::now();
            let n = f(model)?;
            Ok(n as f64 / t.elapsed().as_secs_f64().max(1e-9))
        })
        .collect()
}

fn block_table<B: Backend>(model: &Model<B>) -> Vec<u32> {
    (0..model.n_blocks() as u32).collect()
}

/// One forward pass over `tokens` at positions from `start` (nothing to do for none).
fn prefill<B: Backend>(model: &mut Model<B>, tokens: &[u32], start: usize) -> Result<usize> {
    if tokens.is_empty() {
        return Ok(0);
    }
    let table = block_table(model);
    model.forward(&[SeqChunk {
        tokens,
        start_pos: start,
        block_table: &table,
        logits: LogitsWanted::Last,
    }])?;
    Ok(tokens.len())
}

/// One forward pass per token, at positions from `start`.
fn generate<B: Backend>(model: &mut Model<B>, tokens: &[u32], start: usize) -> Result<usize> {
    let table = block_table(model);
    for (i, t) in tokens.iter().enumerate() {
        model.forward(&[SeqChunk {
            tokens: std::slice::from_ref(t),
            start_pos: start + i,
            block_table: &table,
            logits: LogitsWanted::Last,
        }])?;
    }
    Ok(tokens.len())
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// The model columns of the table.
pub(crate) struct Desc {
    pub name: String,
    pub size: String,
    pub params: String,
}

pub(crate) fn describe(file: &ModelFile) -> Desc {
    let tensors = file.tensors();
    let bytes: u64 = tensors.iter().map(|t| t.n_bytes).sum();
    let params: u64 = tensors.iter().map(|t| t.n_elements()).sum();
    let gguf = file.gguf();
    let arch = gguf
        .and_then(|g| g.get("general.architecture"))
        .and_then(|v| v.as_str())
        .unwrap_or("model")
        .to_string();
    let ftype = gguf
        .and_then(|g| g.get("general.file_type"))
        .and_then(|v| v.as_u64())
        .and_then(ftype_name)
        .map(str::to_string)
        .unwrap_or_else(|| dominant_type(file));
    let label = if params >= 1_000_000_000 {
        format!("{:.1}B", params as f64 / 1e9)
    } else {
        format!("{}M", (params as f64 / 1e6).round())
    };
    let size = if bytes >= 1 << 30 {
        format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.2} MiB", bytes as f64 / (1u64 << 20) as f64)
    };
    let params = if params >= 1_000_000_000 {
        format!("{:.2} B", params as f64 / 1e9)
    } else {
        format!("{:.2} M", params as f64 / 1e6)
    };
    Desc {
        name: format!("{arch} {label} {ftype}"),
        size,
        params,
    }
}

/// The type holding most weight elements (for files without `general.file_type`).
fn dominant_type(file: &ModelFile) -> String {
    let mut counts: Vec<(realizar_quant::GgmlType, u64)> = Vec::new();
    for t in file.tensors() {
        match counts.iter_mut().find(|(ty, _)| *ty == t.ty) {
            Some((_, n)) => *n += t.n_elements(),
            None => counts.push((t.ty, t.n_elements())),
        }
    }
    counts
        .into_iter()
        .max_by_key(|&(_, n)| n)
        .map_or_else(|| "?".to_string(), |(ty, _)| ty.name().to_string())
}
