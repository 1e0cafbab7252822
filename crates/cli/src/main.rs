//! The `realizar` command line.

mod chat;
mod inspect;
mod load;
mod model_path;
mod perplexity;
mod run;
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
        /// Worker threads (default: physical cores).
        #[arg(short, long)]
        threads: Option<usize>,
        /// Context size in tokens.
        #[arg(long, default_value_t = 4096)]
        ctx: usize,
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
        #[arg(short, long)]
        threads: Option<usize>,
        #[arg(long, default_value_t = 4096)]
        ctx: usize,
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
            threads,
            ctx,
        } => {
            load::set_threads(threads);
            let model = model_path::resolve(model.as_deref())?;
            run::run(run::RunArgs {
                model: &model,
                prompt: &prompt,
                n: n_predict,
                sampling: &sampling,
                top_logprobs,
                json,
                ctx,
            })
        }
        Command::Chat {
            model,
            system,
            n_predict,
            sampling,
            threads,
            ctx,
        } => {
            load::set_threads(threads);
            let model = model_path::resolve(model.as_deref())?;
            chat::run(&model, system.as_deref(), &sampling, n_predict, ctx)
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
        Command::Perplexity {
            model,
            file,
            ctx,
            chunks,
            threads,
        } => {
            load::set_threads(threads);
            perplexity::run(&model_path::resolve(model.as_deref())?, &file, ctx, chunks)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One clear line: the error and its causes.
            eprintln!("realizar: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
