//! `realizar run`: generate from a prompt, streaming text (or JSON lines) to stdout.

use std::io::Write;
use std::time::Instant;

use anyhow::Result;
use realizar_engine::{GenRequest, Generator, SamplingParams};
use realizar_model::Backend;
use serde_json::json;

use crate::load::{self, Device};

/// Sampling flags shared by `run` and `chat`, with llama.cpp's defaults.
#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Keep the K most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely one.
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Repetition penalty (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Random seed (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
}

impl SamplingArgs {
    pub fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repeat_penalty,
            seed: self.seed,
            ..SamplingParams::default()
        }
    }
}

pub struct RunArgs<'a> {
    pub model: &'a std::path::Path,
    pub prompt: &'a str,
    pub n: usize,
    pub sampling: &'a SamplingArgs,
    pub top_logprobs: usize,
    pub json: bool,
    pub ctx: usize,
    pub device: Device,
    /// Batch-invariant arithmetic (`LoadOptions::deterministic`).
    pub deterministic: bool,
}

pub fn run(a: RunArgs<'_>) -> Result<()> {
    let t_load = Instant::now();
    let opts = load::options(a.ctx, a.deterministic);
    match a.device {
        Device::Cpu => generate(load::generator_with(a.model, &opts)?, t_load, &a),
        Device::Cuda => generate(load::cuda_generator_with(a.model, &opts)?, t_load, &a),
    }
}

fn generate<B: Backend>(mut gen: Generator<B>, t_load: Instant, a: &RunArgs<'_>) -> Result<()> {
    let load_ms = t_load.elapsed().as_secs_f64() * 1e3;
    let prompt = gen.tokenizer.encode(a.prompt, true, true)?;
    let req = GenRequest {
        prompt: prompt.clone(),
        params: a.sampling.params(),
        max_tokens: a.n.min(gen.context_size().saturating_sub(prompt.len())),
        stop: Vec::new(),
        top_logprobs: a.top_logprobs,
        ignore_eos: false,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if a.json {
        writeln!(out, "{}", json!({ "prompt_tokens": prompt }))?;
    }
    let mut io_err = None;
    let summary = gen.generate(&req, |ev| {
        let r = if a.json {
            let top: Vec<_> = ev
                .top_logprobs
                .iter()
                .map(|&(id, lp)| json!([id, lp]))
                .collect();
            writeln!(
                out,
                "{}",
                json!({"id": ev.id, "text": ev.text, "logprob": ev.logprob, "top_logprobs": top})
            )
        } else {
            write!(out, "{}", ev.text).and_then(|_| out.flush())
        };
        match r {
            Ok(()) => true,
            Err(e) => {
                io_err = Some(e);
                false
            }
        }
    })?;
    if let Some(e) = io_err {
        return Err(e.into());
    }
    let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    if a.json {
        writeln!(
            out,
            "{}",
            json!({"summary": {
                "prompt_tokens": summary.prompt_tokens,
                "generated": summary.generated,
                "load_ms": load_ms,
                "prefill_tok_s": rate(summary.prefilled, summary.prefill_secs),
                "decode_tok_s": rate(summary.generated.saturating_sub(1), summary.decode_secs),
            }})
        )?;
    } else {
        writeln!(out, "{}", summary.tail)?;
        eprintln!(
            "\n[{} prompt tokens, {:.1} t/s prefill; {} generated, {:.1} t/s decode; load {:.0} ms]",
            summary.prompt_tokens,
            rate(summary.prefilled, summary.prefill_secs),
            summary.generated,
            rate(summary.generated.saturating_sub(1), summary.decode_secs),
            load_ms
        );
    }
    Ok(())
}
