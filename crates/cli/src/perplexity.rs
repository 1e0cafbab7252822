//! `realizar perplexity`: perplexity of a text over windows, computed as llama-perplexity does:
//! the text is split into windows of `ctx` tokens (the first replaced by BOS when the model adds
//! one), each evaluated from scratch, and only the second half of each window is scored.

use std::path::Path;

use anyhow::{bail, Context, Result};
use realizar_engine::Generator;
use realizar_model::Backend;

use crate::load::{self, Device};

pub fn run(
    model: &Path,
    text_file: &Path,
    ctx: usize,
    max_chunks: Option<usize>,
    device: Device,
) -> Result<()> {
    let text = std::fs::read_to_string(text_file)
        .with_context(|| format!("reading {}", text_file.display()))?;
    match device {
        Device::Cpu => score(load::generator(model, ctx)?, &text, ctx, max_chunks),
        Device::Cuda => score(load::cuda_generator(model, ctx)?, &text, ctx, max_chunks),
    }
}

fn score<B: Backend>(
    mut gen: Generator<B>,
    text: &str,
    ctx: usize,
    max_chunks: Option<usize>,
) -> Result<()> {
    let add_bos = gen.tokenizer.adds_bos();
    let tokens = gen.tokenizer.encode(text, add_bos, false)?;
    if ctx < 2 {
        bail!("--ctx must be at least 2");
    }
    let n_chunks = (tokens.len() / ctx).min(max_chunks.unwrap_or(usize::MAX));
    if n_chunks == 0 {
        bail!(
            "the text has {} tokens; at least --ctx {ctx} are needed",
            tokens.len()
        );
    }
    eprintln!(
        "perplexity: {} tokens, {n_chunks} windows of {ctx}",
        tokens.len()
    );
    let first = ctx / 2;
    let (mut nll, mut nll2, mut count) = (0.0f64, 0.0f64, 0usize);
    for c in 0..n_chunks {
        let mut window = tokens[c * ctx..(c + 1) * ctx].to_vec();
        if add_bos {
            if let Some(b) = gen.tokenizer.bos() {
                window[0] = b;
            }
        }
        let logits = gen.all_logits(&window)?;
        for j in first..ctx - 1 {
            let row = &logits[j];
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = row
                .iter()
                .map(|&x| (x as f64 - max).exp())
                .sum::<f64>()
                .ln()
                + max;
            let lp = row[window[j + 1] as usize] as f64 - lse;
            nll -= lp;
            nll2 += lp * lp;
            count += 1;
        }
        print!("[{}]{:.4},", c + 1, (nll / count as f64).exp());
        std::io::Write::flush(&mut std::io::stdout())?;
    }
    println!();
    let mean = nll / count as f64;
    let var = (nll2 / count as f64 - mean * mean).max(0.0);
    let ppl = mean.exp();
    // Uncertainty of exp(mean NLL) by the delta method, as llama-perplexity reports it.
    let err = ppl * (var / (count as f64 - 1.0).max(1.0)).sqrt();
    println!("Final estimate: PPL = {ppl:.4} +/- {err:.5}");
    Ok(())
}
