//! The `realizar` command line.

mod bench;
mod bench_batched;
mod chat;
mod convert;
mod inspect;
mod load;
mod model_path;
mod perplexity;
mod quantize;
mod run;
mod serve;
mod synth;
mod tokenize;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "realizar",
    version,
    about = "LLM inference engine and OpenAI-compatible model server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where and how wide a generating command runs.
#[derive(clap::Args)]
struct Placement {
    /// Worker threads (default: physical cores).
    #[arg(short, long)]
    threads: Option<usize>,
    /// Context size in tokens.
    #[arg(long, default_value_t = 4096)]
    ctx: usize,
    /// Where to run: cpu, cuda, or auto (cuda when a CUDA device is found).
    #[arg(long, default_value = "auto")]
    device: String,
    /// Keep the model file memory-mapped on the CPU instead of reading it into huge-page
    /// memory (less memory when several processes share the file; slower decode).
    #[arg(long)]
    mmap: bool,
    /// KV cache element type: f16, f32, q8_0 or fp8 (E4M3); q8_0 and fp8 take about half of
    /// f16's memory, on the CPU and on CUDA.
    #[arg(long, default_value = "f16", value_parser = load::parse_kv_type)]
    kv_type: realizar_model::KvType,
}

impl Placement {
    /// Sizes the thread pool and resolves the device.
    fn apply(&self) -> Result<load::Device> {
        load::set_threads(self.threads);
        load::set_mmap(self.mmap);
        load::set_kv_type(self.kv_type);
        load::device(&self.device)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Show what a model file holds: format, architecture, parameters, tensors.
    Inspect {
        /// A GGUF file, a .safetensors file or a Hugging Face model folder (default: the default model).
        file: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Generate text from a prompt.
    Run {
        /// Model file or folder (default: SmolLM2-135M-Instruct Q4_1, fetched on first use).
        #[arg(short, long)]
        model: Option<PathBuf>,
        /// The prompt (special tokens such as <|im_start|> are parsed).
        #[arg(short, long)]
        prompt: String,
        /// Tokens to generate at most.
        #[arg(short = 'n', long, default_value_t = 128)]
        n_predict: usize,
        #[command(flatten)]
        sampling: run::SamplingArgs,
        /// Report the K most likely tokens at each step (with --json).
        #[arg(long, default_value_t = 0)]
        top_logprobs: usize,
        /// Print JSON lines: prompt tokens, one object per token, then a summary.
        #[arg(long)]
        json: bool,
        /// Batch-invariant arithmetic: a sequence's tokens do not depend on what else is in
        /// the batch (bit-identical alone or batched; slower single-sequence decode).
        #[arg(long)]
        deterministic: bool,
        #[command(flatten)]
        place: Placement,
    },
    /// Chat with a model in the terminal.
    Chat {
        #[arg(short, long)]
        model: Option<PathBuf>,
        /// A system prompt.
        #[arg(long)]
        system: Option<String>,
        /// Tokens per reply at most.
        #[arg(short = 'n', long, default_value_t = 512)]
        n_predict: usize,
        #[command(flatten)]
        sampling: run::SamplingArgs,
        #[command(flatten)]
        place: Placement,
    },
    /// Print the token ids of a text as a JSON array (without BOS).
    Tokenize {
        #[arg(short, long)]
        model: Option<PathBuf>,
        /// Treat special-token text such as <|im_start|> as plain text.
        #[arg(long)]
        no_parse_special: bool,
        text: String,
    },
    /// Serve the model over an OpenAI-compatible HTTP API.
    Serve(serve::ServeArgs),
    /// Measure prompt processing (ppN) and generation (tgN) speed, as llama-bench does; with
    /// --parallel, batched serving throughput, as llama-batched-bench does.
    Bench {
        #[arg(short, long)]
        model: Option<PathBuf>,
        /// Prompt tokens of the pp test (0: skip it).
        #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
        n_prompt: usize,
        /// Generated tokens of the tg test (0: skip it).
        #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
        n_gen: usize,
        /// Repetitions of each test (--parallel runs each B once).
        #[arg(short = 'r', long, default_value_t = 3)]
        reps: usize,
        /// Context already in the cache before each test (llama-bench's -d): that many tokens
        /// are prefilled, untimed, and the test runs after them ("tg128 @ d4096").
        #[arg(short = 'd', long = "n-depth", default_value_t = 0)]
        depth: usize,
        /// Worker threads (default: physical cores).
        #[arg(short, long)]
        threads: Option<usize>,
        /// cpu or cuda.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Batch-invariant arithmetic: the kernels `serve --deterministic` and
        /// `run --deterministic` use.
        #[arg(long)]
        deterministic: bool,
        /// Keep the model file memory-mapped on the CPU (llama-bench's default) instead of
        /// reading it into huge-page memory.
        #[arg(long)]
        mmap: bool,
        /// KV cache element type: f16, f32, q8_0 or fp8 (E4M3).
        #[arg(long, default_value = "f16", value_parser = load::parse_kv_type)]
        kv_type: realizar_model::KvType,
        /// Batched mode, as llama-batched-bench: for each B in the comma-separated list, B
        /// sequences prefill -p tokens each, then decode -n tokens together (greedy, one
        /// forward pass per step); one run per B, so -r is not used.
        #[arg(long, value_delimiter = ',', value_name = "B,B,...")]
        parallel: Option<Vec<usize>>,
        /// CUDA: keep an f16 copy of each quantized matrix for steps of many tokens (batched
        /// decode, prefill); auto when it takes at most half the memory left for the KV cache.
        #[arg(long, value_enum, default_value_t = load::F16WeightsArg::Auto)]
        f16_weights: load::F16WeightsArg,
    },
    /// Write a GGUF model with quantized weights: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K,
    /// Q6_K, Q4_K_M, Q5_K_M (or F16, BF16, F32). Quantized inputs are dequantized first.
    Quantize {
        /// Input: a GGUF file (F32/F16/BF16 or quantized) or a Hugging Face model folder
        /// (config.json, tokenizer, *.safetensors).
        input: PathBuf,
        /// Output GGUF file.
        output: PathBuf,
        /// Target type or mix.
        #[arg(value_name = "TYPE")]
        ty: String,
    },
    /// Write a random-weight GGUF of a real model's shape, for speed tests.
    Synth {
        /// smollm2-135m, qwen2.5-0.5b, llama-3.2-1b or llama-3.1-8b.
        #[arg(long)]
        shape: String,
        /// Any type `quantize` takes (Q4_K_M, Q8_0, F16, ...).
        #[arg(long = "type", value_name = "TYPE")]
        ty: String,
        /// Output GGUF file.
        #[arg(short, long)]
        output: PathBuf,
        /// Fewer layers than the real model (every width and the vocabulary stay), for quick
        /// parity runs of large shapes.
        #[arg(long)]
        layers: Option<usize>,
        /// Quantize only 256 distinct rows a matrix and repeat them: the same
        /// types, bytes and speed, in seconds instead of minutes for 8B K-quants; for speed
        /// runs, not parity (repeated rows tie logits).
        #[arg(long)]
        fast: bool,
    },
    /// Perplexity of a text file, computed as llama-perplexity does.
    Perplexity {
        #[arg(short, long)]
        model: Option<PathBuf>,
        /// The text file.
        #[arg(short = 'f', long)]
        file: PathBuf,
        /// Window size in tokens.
        #[arg(long, default_value_t = 512)]
        ctx: usize,
        /// Score at most this many windows.
        #[arg(long)]
        chunks: Option<usize>,
        #[arg(short, long)]
        threads: Option<usize>,
        /// Where to run: cpu, cuda, or auto (cuda when a CUDA device is found).
        #[arg(long, default_value = "auto")]
        device: String,
        /// Keep the model file memory-mapped on the CPU instead of reading it into huge-page
        /// memory.
        #[arg(long)]
        mmap: bool,
        /// KV cache element type: f16, f32, q8_0 or fp8 (E4M3).
        #[arg(long, default_value = "f16", value_parser = load::parse_kv_type)]
        kv_type: realizar_model::KvType,
    },
}

fn dispatch(cmd: Command) -> Result<()> {
    match cmd {
        Command::Inspect { file, json } => {
            inspect::run(&model_path::resolve(file.as_deref())?, json)
        }
        Command::Run {
            model,
            prompt,
            n_predict,
            sampling,
            top_logprobs,
            json,
            deterministic,
            place,
        } => {
            let device = place.apply()?;
            let model = model_path::resolve(model.as_deref())?;
            run::run(run::RunArgs {
                model: &model,
                prompt: &prompt,
                n: n_predict,
                sampling: &sampling,
                top_logprobs,
                json,
                ctx: place.ctx,
                device,
                deterministic,
            })
        }
        Command::Chat {
            model,
            system,
            n_predict,
            sampling,
            place,
        } => {
            let device = place.apply()?;
            let model = model_path::resolve(model.as_deref())?;
            chat::run(
                &model,
                system.as_deref(),
                &sampling,
                n_predict,
                place.ctx,
                device,
            )
        }
        Command::Tokenize {
            model,
            no_parse_special,
            text,
        } => tokenize::run(
            &model_path::resolve(model.as_deref())?,
            &text,
            !no_parse_special,
        ),
        Command::Serve(args) => serve::run(args),
        Command::Bench {
            model,
            n_prompt,
            n_gen,
            reps,
            depth,
            threads,
            device,
            deterministic,
            mmap,
            kv_type,
            parallel,
            f16_weights,
        } => {
            let n_threads = threads.unwrap_or_else(load::physical_cores).max(1);
            load::set_threads(Some(n_threads));
            load::set_mmap(mmap);
            load::set_kv_type(kv_type);
            let model = model_path::resolve(model.as_deref())?;
            bench::run(bench::BenchArgs {
                model: &model,
                n_prompt,
                n_gen,
                reps,
                depth,
                threads: n_threads,
                device: &device,
                deterministic,
                parallel: parallel.as_deref(),
                f16_weights: f16_weights.to_cuda(),
            })
        }
        Command::Quantize { input, output, ty } => quantize::run(&input, &output, &ty),
        Command::Synth {
            shape,
            ty,
            output,
            layers,
            fast,
        } => synth::run(&shape, &ty, &output, layers, fast),
        Command::Perplexity {
            model,
            file,
            ctx,
            chunks,
            threads,
            device,
            mmap,
            kv_type,
        } => {
            load::set_threads(threads);
            load::set_mmap(mmap);
            load::set_kv_type(kv_type);
            let device = load::device(&device)?;
            perplexity::run(
                &model_path::resolve(model.as_deref())?,
                &file,
                ctx,
                chunks,
                device,
            )
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`realizar inspect | head`) is the reader's choice, not an error.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            // One clear line: the error and its causes.
            eprintln!("realizar: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
