//! `realizar bench --parallel B,B,...`: serving throughput of B sequences decoded together,
//! measured and printed as llama.cpp's `llama-batched-bench -npp P -ntg N -npl B,B,...` does.
//!
//! For each B, from an empty cache: B independent sequences, each on its own KV blocks, get a
//! prompt of `p` random token ids. The prefill packs all B prompts into forward calls of at most
//! `STEP_TOKENS` tokens (several `SeqChunk`s per call; a prompt that straddles two calls is split
//! between them); then each of `n` decode steps is ONE forward call with B one-token chunks, every
//! sequence at its own position. Every next token is greedy and fed back, read as the engine
//! reads it: the top candidate (`Model::forward_top_k`, k = 1) where the backend selects on the
//! device (CUDA), else the argmax of the last token's logit row. T_PP is the prefill (with the
//! first token's choice), T_TG the `n` decode steps; S_PP = B*p/T_PP, S_TG = B*n/T_TG,
//! N_KV = B*(p+n), S = N_KV/T. One run per B after one warm-up, as llama-batched-bench runs.

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use realizar_engine::sampler::argmax;
use realizar_model::{Backend, LoadOptions, LogitsWanted, Model, ModelConfig, SeqChunk};

use crate::bench::{random_tokens, BenchArgs, Desc};

/// Most tokens in one forward call: llama.cpp's default physical batch (`n_ubatch`).
pub const STEP_TOKENS: usize = 512;

/// The cache and step sizes one `--parallel` list needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sizing {
    prompt: usize,
    gen: usize,
    max_b: usize,
    /// KV tokens: `max_b` sequences of `prompt + gen` tokens, each in whole blocks.
    kv_tokens: usize,
    block_size: usize,
}

impl Sizing {
    /// Checks the arguments and sizes the KV cache for the largest B.
    pub fn new(prompt: usize, gen: usize, list: &[usize]) -> Result<Sizing> {
        let Some(&max_b) = list.iter().max() else {
            bail!("--parallel needs at least one batch size (e.g. --parallel 1,4,16,64)");
        };
        if list.contains(&0) {
            bail!(
                "--parallel {}: every batch size must be at least 1",
                join(list)
            );
        }
        if prompt == 0 || gen == 0 {
            bail!("--parallel needs -p and -n of at least 1 (got -p {prompt} -n {gen})");
        }
        let block_size = LoadOptions::default().block_size;
        let blocks = prompt
            .checked_add(gen)
            .map(|t| t.div_ceil(block_size))
            .and_then(|per_seq| per_seq.checked_mul(max_b))
            .filter(|&b| u32::try_from(b).is_ok());
        let Some(kv_tokens) = blocks.and_then(|b| b.checked_mul(block_size)) else {
            bail!(
                "--parallel {max_b} with -p {prompt} -n {gen}: a KV cache of {max_b} x {} \
                 tokens is beyond what can be addressed",
                prompt.saturating_add(gen)
            );
        };
        Ok(Sizing {
            prompt,
            gen,
            max_b,
            kv_tokens,
            block_size,
        })
    }

    /// Tokens per forward call: `STEP_TOKENS`, or B when B is larger (a decode step is one call).
    pub fn step_tokens(&self) -> usize {
        STEP_TOKENS.max(self.max_b)
    }

    pub fn load_options(&self, deterministic: bool) -> LoadOptions {
        LoadOptions {
            kv_tokens: self.kv_tokens,
            block_size: self.block_size,
            max_batch_tokens: self.step_tokens(),
            deterministic,
            kv_type: crate::load::kv_type(),
        }
    }

    /// The KV cache in words, for errors and the header.
    pub fn kv_summary(&self) -> String {
        format!(
            "a KV cache of {} tokens: {} sequences x {} tokens in blocks of {}",
            self.kv_tokens,
            self.max_b,
            self.prompt + self.gen,
            self.block_size
        )
    }

    /// Refuses, with the numbers, a CPU KV cache larger than the memory available now (the
    /// allocation would otherwise abort the process or swap).
    pub fn check_host_memory(&self, cfg: &ModelConfig) -> Result<()> {
        let kv_type = crate::load::kv_type();
        // K and V of every layer.
        let bytes =
            2.0 * (cfg.n_layers * kv_type.bytes(cfg.kv_dim())) as f64 * self.kv_tokens as f64;
        let Some(avail) = realizar_formats::available_memory() else {
            return Ok(());
        };
        if bytes > avail as f64 {
            bail!(
                "{} needs {:.2} GiB, more than the {:.2} GiB of memory available: use smaller \
                 --parallel, -p or -n",
                self.kv_summary(),
                bytes / GIB,
                avail as f64 / GIB
            );
        }
        Ok(())
    }
}

const GIB: f64 = (1u64 << 30) as f64;

fn join(list: &[usize]) -> String {
    list.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs every B of the list on a loaded model and prints llama-batched-bench's table.
pub fn bench<B: Backend>(
    model: &mut Model<B>,
    desc: &Desc,
    a: &BenchArgs<'_>,
    list: &[usize],
    backend: &str,
) -> Result<()> {
    let sizing = Sizing::new(a.n_prompt, a.n_gen, list)?;
    let (p, n, step) = (a.n_prompt, a.n_gen, sizing.step_tokens());
    println!(
        "model: {}, {}, {} params; backend = {backend}, n_threads = {}, deterministic = {}",
        desc.name, desc.size, desc.params, a.threads, a.deterministic
    );
    println!(
        "bench: n_kv_max = {}, n_ubatch = {step}, sampling = greedy ({})",
        sizing.kv_tokens,
        if model.backend.selects_top_k() {
            "top-1 candidate selected on the device"
        } else {
            "argmax of the logit row"
        }
    );
    println!();
    println!(
        "|{:>6} | {:>6} | {:>4} | {:>6} | {:>8} | {:>8} | {:>8} | {:>8} | {:>8} | {:>8} |",
        "PP", "TG", "B", "N_KV", "T_PP s", "S_PP t/s", "T_TG s", "S_TG t/s", "T s", "S t/s"
    );
    println!(
        "|{:-<6}-|-{:-<6}-|-{:-<4}-|-{:-<6}-|-{:-<8}-|-{:-<8}-|-{:-<8}-|-{:-<8}-|-{:-<8}-|-{:-<8}-|",
        "", "", "", "", "", "", "", "", "", ""
    );
    let mut next_token = random_tokens(model.cfg.vocab_size);
    let mut prompts = |b: usize| -> Vec<Vec<u32>> {
        (0..b)
            .map(|_| (0..p).map(|_| next_token()).collect())
            .collect()
    };
    // Warm-up: enough whole prompts to fill one prefill call (at most the largest B), and one
    // decode step: the timed runs' full prefill call shape, whose first use would otherwise be
    // timed (cuBLAS loads kernels at their first launch; an H200, 8B cut to 8 layers, 64
    // 16-token prompts: 111 ms for the first prefill, 18-21 ms after it).
    let most = list.iter().copied().max().unwrap_or(1);
    run_batch(
        model,
        &prompts(step.div_ceil(p.max(1)).clamp(1, most)),
        1,
        step,
    )?;
    for &b in list {
        let r = run_batch(model, &prompts(b), n, step)?;
        let n_kv = b * (p + n);
        let t = r.t_pp + r.t_tg;
        let per_sec = |tokens: usize, secs: f64| tokens as f64 / secs.max(1e-9);
        println!(
            "|{:>6} | {:>6} | {:>4} | {:>6} | {:>8.3} | {:>8.2} | {:>8.3} | {:>8.2} | {:>8.3} | {:>8.2} |",
            p,
            n,
            b,
            n_kv,
            r.t_pp,
            per_sec(b * p, r.t_pp),
            r.t_tg,
            per_sec(b * n, r.t_tg),
            t,
            per_sec(n_kv, t)
        );
        std::io::stdout().flush()?;
    }
    Ok(())
}

/// What one batched run measured, and the tokens it chose.
struct Run {
    t_pp: f64,
    t_tg: f64,
    /// Per sequence: the prefill's greedy token, then one per decode step (n + 1). The table
    /// does not print them; the tests compare them.
    #[cfg_attr(not(test), allow(dead_code))]
    tokens: Vec<Vec<u32>>,
}

/// One sequence's share of a prefill call: `len` prompt tokens from position `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    seq: usize,
    start: usize,
    len: usize,
}

/// Prompts of lengths `lens` packed in sequence order into calls of at most `step` tokens.
fn prefill_calls(lens: &[usize], step: usize) -> Vec<Vec<Piece>> {
    let step = step.max(1);
    let (mut calls, mut call, mut used) = (Vec::new(), Vec::new(), 0);
    for (seq, &len) in lens.iter().enumerate() {
        let mut start = 0;
        while start < len {
            let take = (len - start).min(step - used);
            call.push(Piece {
                seq,
                start,
                len: take,
            });
            start += take;
            used += take;
            if used == step {
                calls.push(std::mem::take(&mut call));
                used = 0;
            }
        }
    }
    if !call.is_empty() {
        calls.push(call);
    }
    calls
}

/// Prefills `prompts` (one sequence each, on disjoint KV blocks) in calls of at most `step`
/// tokens, then decodes `n` greedy tokens for all of them, one forward call per step.
fn run_batch<B: Backend>(
    model: &mut Model<B>,
    prompts: &[Vec<u32>],
    n: usize,
    step: usize,
) -> Result<Run> {
    let b = prompts.len();
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let bs = model.block_size();
    let per_seq = (longest + n).div_ceil(bs);
    if b * per_seq > model.n_blocks() {
        bail!(
            "{b} sequences of {} tokens need {} KV blocks of {bs} tokens; the cache has {}",
            longest + n,
            b * per_seq,
            model.n_blocks()
        );
    }
    let tables: Vec<Vec<u32>> = (0..b)
        .map(|s| (s * per_seq..(s + 1) * per_seq).map(|i| i as u32).collect())
        .collect();

    let t0 = Instant::now();
    let mut last = vec![0u32; b];
    for call in prefill_calls(&prompts.iter().map(Vec::len).collect::<Vec<_>>(), step) {
        let ends = |pc: &&Piece| pc.start + pc.len == prompts[pc.seq].len();
        let chunks: Vec<SeqChunk<'_>> = call
            .iter()
            .map(|pc| SeqChunk {
                tokens: &prompts[pc.seq][pc.start..pc.start + pc.len],
                start_pos: pc.start,
                block_table: &tables[pc.seq],
                logits: if ends(&pc) {
                    LogitsWanted::Last
                } else {
                    LogitsWanted::None
                },
            })
            .collect();
        let next = greedy(model, &chunks)?;
        for (pc, t) in call.iter().filter(ends).zip(next) {
            last[pc.seq] = t;
        }
    }
    let t_pp = t0.elapsed().as_secs_f64();

    let mut tokens: Vec<Vec<u32>> = last.iter().map(|&t| vec![t]).collect();
    let t1 = Instant::now();
    for i in 0..n {
        let chunks: Vec<SeqChunk<'_>> = (0..b)
            .map(|s| SeqChunk {
                tokens: std::slice::from_ref(&last[s]),
                start_pos: prompts[s].len() + i,
                block_table: &tables[s],
                logits: LogitsWanted::Last,
            })
            .collect();
        let next = greedy(model, &chunks)?;
        if next.len() != b {
            bail!(
                "a decode step of {b} sequences returned {} tokens",
                next.len()
            );
        }
        last = next;
        for (seq, &t) in tokens.iter_mut().zip(&last) {
            seq.push(t);
        }
    }
    let t_tg = t1.elapsed().as_secs_f64();
    Ok(Run { t_pp, t_tg, tokens })
}

/// The greedy next token of each chunk that wants logits, in batch order.
fn greedy<B: Backend>(model: &mut Model<B>, chunks: &[SeqChunk<'_>]) -> Result<Vec<u32>> {
    let picks: Vec<Option<u32>> = if model.backend.selects_top_k() {
        model
            .forward_top_k(chunks, 1)?
            .iter()
            .map(|t| t.ids.first().copied())
            .collect()
    } else {
        model
            .forward(chunks)?
            .iter()
            .map(|row| argmax(row))
            .collect()
    };
    picks
        .into_iter()
        .map(|t| t.context("a logit row without a finite value (all NaN or -inf)"))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use anyhow::{ensure, Result};
    use realizar_formats::ModelFile;
    use realizar_model::load_cpu_from;

    use super::*;

    #[test]
    fn prefill_calls_pack_prompts_in_order_without_passing_the_step() {
        let calls = prefill_calls(&[10, 10, 10], 8);
        let piece = |seq, start, len| Piece { seq, start, len };
        assert_eq!(
            calls,
            vec![
                vec![piece(0, 0, 8)],
                vec![piece(0, 8, 2), piece(1, 0, 6)],
                vec![piece(1, 6, 4), piece(2, 0, 4)],
                vec![piece(2, 4, 6)],
            ]
        );
        assert_eq!(
            prefill_calls(&[3, 4], 512),
            vec![vec![piece(0, 0, 3), piece(1, 0, 4)]]
        );
        assert_eq!(prefill_calls(&[4, 4], 4).len(), 2);
        assert!(prefill_calls(&[], 4).is_empty());
    }

    #[test]
    fn sizing_covers_the_largest_batch_and_refuses_bad_lists() -> Result<()> {
        let s = Sizing::new(512, 128, &[1, 4, 16, 64])?;
        assert_eq!(s.load_options(false).kv_tokens, 64 * 640);
        assert_eq!(s.step_tokens(), 512);
        // 20 tokens a sequence take 2 blocks of 16.
        assert_eq!(Sizing::new(8, 12, &[3])?.kv_tokens, 3 * 32);
        assert_eq!(Sizing::new(1, 1, &[1000])?.step_tokens(), 1000);
        for (p, n, list) in [
            (8, 4, vec![]),
            (8, 4, vec![1, 0]),
            (0, 4, vec![1]),
            (8, 0, vec![1]),
        ] {
            ensure!(
                Sizing::new(p, n, &list).is_err(),
                "{p} {n} {list:?} accepted"
            );
        }
        let err = Sizing::new(usize::MAX / 2, 1, &[4])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        ensure!(err.contains("beyond"), "{err}");
        Ok(())
    }

    /// With batch-invariant arithmetic, a sequence decoded among others (its prompt split over
    /// prefill calls, its own blocks) chooses the tokens it chooses alone: positions and block
    /// tables are right.
    #[test]
    fn a_sequence_decodes_the_same_alone_and_in_a_batch() -> Result<()> {
        let path = realizar_testkit::tiny_fixture("llama").join("model-f32.gguf");
        let file = Arc::new(ModelFile::open(&path)?);
        let sizing = Sizing::new(10, 6, &[3])?;
        let mut model = load_cpu_from(file, &sizing.load_options(true))?;
        let mut next = random_tokens(model.cfg.vocab_size);
        let prompts: Vec<Vec<u32>> = (0..3).map(|_| (0..10).map(|_| next()).collect()).collect();
        let batch = run_batch(&mut model, &prompts, 6, 8)?;
        ensure!(batch.tokens.iter().all(|t| t.len() == 7));
        for (s, prompt) in prompts.iter().enumerate() {
            let alone = run_batch(&mut model, std::slice::from_ref(prompt), 6, 512)?;
            ensure!(
                alone.tokens.first() == batch.tokens.get(s),
                "sequence {s}: alone {:?}, in the batch {:?}",
                alone.tokens,
                batch.tokens.get(s)
            );
        }
        // Too few blocks for the batch: an error with the numbers, not a panic.
        let err = run_batch(&mut model, &vec![prompts[0].clone(); 4], 6, 8)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        ensure!(
            err.contains("need 4 KV blocks of 16 tokens; the cache has 3"),
            "{err}"
        );
        Ok(())
    }
}
