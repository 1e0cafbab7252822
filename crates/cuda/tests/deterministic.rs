//! `LoadOptions::deterministic` at the Model level: one sequence's logits are bit for bit the
//! same run alone (its prompt in one chunk, then one token per step: the one-token kernels) and
//! run inside batches of 63 other sequences (its prompt in two other chunks, other sequences
//! prefilling chunks and decoding around it: 100 to 400 tokens a step, so without
//! `deterministic` the GPU would take its cuBLAS f16 GEMM path from 32 tokens).
//!
//! The model is the tiny llama fixture requantized to Q8_0, Q4_1 and F16. On the GPU each runs
//! twice: with the 8-bit mmvq kernels forced onto its narrow rows, and with the default choice
//! (the f32 kernels there); the GPU part skips, saying so, without a CUDA device. The same
//! harness runs on the CPU backend everywhere (its one-token and tiled kernels differ without
//! `deterministic`), so it is exercised on machines without a GPU too. Whether the default
//! (non-deterministic) mode differs is printed, not asserted.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{argmax, gpu, requantize, rng};
use rand::rngs::StdRng;
use rand::Rng;
use realizar_cuda::load_cuda_from;
use realizar_formats::{GgmlType, ModelFile};
use realizar_model::{load_cpu_from, Backend, LoadOptions, LogitsWanted, Model, SeqChunk};

/// Sequences beside the observed one.
const OTHERS: usize = 63;
/// The observed sequence's prompt (prefilled as 9 + 15 tokens in the crowd) and decode steps.
const PROMPT: usize = 24;
const FIRST_CHUNK: usize = 9;
const STEPS: usize = 12;
/// KV blocks of 16 tokens per sequence (the longest sequence has 60 + 13 + 12 tokens).
const BLOCKS_PER_SEQ: usize = 6;
const BLOCK: usize = 16;

fn fixture() -> PathBuf {
    common::repo_root().join("tests/fixtures/tiny/llama/model-f32.gguf")
}

fn options(deterministic: bool) -> LoadOptions {
    LoadOptions {
        kv_tokens: (OTHERS + 2) * BLOCKS_PER_SEQ * BLOCK,
        block_size: BLOCK,
        max_batch_tokens: 1024,
        deterministic,
        ..LoadOptions::default()
    }
}

/// One of the other sequences: its tokens, how many it prefills per step, the step it joins.
struct Other {
    tokens: Vec<u32>,
    chunk: usize,
    start: usize,
    done: usize,
    table: Vec<u32>,
}

/// The observed sequence's logits after its prompt and after each of STEPS greedy tokens:
/// alone, then inside the crowd (the tokens it is fed are the alone run's).
fn alone_and_batched<B: Backend>(
    m: &mut Model<B>,
    r: &mut StdRng,
) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let vocab = m.cfg.vocab_size as u32;
    let table = |seq: usize| -> Vec<u32> {
        (0..BLOCKS_PER_SEQ as u32)
            .map(|b| (seq * BLOCKS_PER_SEQ) as u32 + b)
            .collect()
    };
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    let prompt: Vec<u32> = (0..PROMPT).map(|_| r.gen_range(0..vocab)).collect();

    // Alone: blocks of sequence 0.
    let t0 = table(0);
    let mut tokens = prompt.clone();
    let mut alone = Vec::new();
    let mut last = m
        .forward(&[SeqChunk {
            tokens: &prompt,
            start_pos: 0,
            block_table: &t0,
            logits: LogitsWanted::Last,
        }])
        .unwrap()
        .remove(0);
    for _ in 0..STEPS {
        alone.push(bits(&last));
        let next = argmax(&last);
        let pos = tokens.len();
        tokens.push(next);
        last = m
            .forward(&[SeqChunk {
                tokens: &tokens[pos..],
                start_pos: pos,
                block_table: &t0,
                logits: LogitsWanted::Last,
            }])
            .unwrap()
            .remove(0);
    }
    alone.push(bits(&last));

    // In the crowd: the observed sequence in the last blocks, at a different place in the
    // batch each step; the others (8 of them join in steps 1 to 3) prefill 4, 8 or 16 tokens a
    // step of prompts of 1 to 60 tokens, then decode random tokens.
    let obs_table = table(OTHERS + 1);
    let mut others: Vec<Other> = (0..OTHERS)
        .map(|j| Other {
            tokens: (0..1 + (j * 7 + 3) % 60 + STEPS + 2)
                .map(|_| r.gen_range(0..vocab))
                .collect(),
            chunk: [4, 8, 16][j % 3],
            start: if j % 8 == 7 { 1 + j % 3 } else { 0 },
            done: 0,
            table: table(j + 1),
        })
        .collect();
    let prompt_len = |o: &Other| o.tokens.len() - STEPS - 2;
    let mut batched = Vec::new();
    let mut done = 0; // observed tokens in the cache
    let mut step = 0;
    while batched.len() < STEPS + 1 {
        let n_obs = match done {
            0 => FIRST_CHUNK,
            d if d < PROMPT => PROMPT - d,
            _ => 1,
        };
        let mut batch = Vec::new();
        let mut advance = Vec::new();
        for (j, o) in others.iter().enumerate() {
            if step < o.start || o.done >= o.tokens.len() {
                continue;
            }
            let n = if o.done < prompt_len(o) {
                o.chunk.min(prompt_len(o) - o.done)
            } else {
                1
            };
            batch.push(SeqChunk {
                tokens: &o.tokens[o.done..o.done + n],
                start_pos: o.done,
                block_table: &o.table,
                logits: LogitsWanted::Last,
            });
            advance.push((j, n));
        }
        let at = (step * 17) % (batch.len() + 1);
        batch.insert(
            at,
            SeqChunk {
                tokens: &tokens[done..done + n_obs],
                start_pos: done,
                block_table: &obs_table,
                logits: LogitsWanted::Last,
            },
        );
        assert!(
            batch.len() > OTHERS / 2,
            "step {step}: only {} sequences",
            batch.len()
        );
        let mut rows = m.forward(&batch).unwrap();
        drop(batch);
        for (j, n) in advance {
            others[j].done += n;
        }
        done += n_obs;
        if done >= PROMPT {
            batched.push(bits(&rows.swap_remove(at)));
        }
        step += 1;
    }
    (alone, batched)
}

/// Whether the two runs agree bit for bit; prints the first difference.
fn same(label: &str, alone: &[Vec<u32>], batched: &[Vec<u32>]) -> bool {
    for (s, (a, b)) in alone.iter().zip(batched).enumerate() {
        let diff = a.iter().zip(b).filter(|(x, y)| x != y).count();
        if diff > 0 || a.len() != b.len() {
            let worst = a
                .iter()
                .zip(b)
                .map(|(&x, &y)| (f32::from_bits(x) - f32::from_bits(y)).abs())
                .fold(0.0f32, f32::max);
            eprintln!(
                "{label}: step {s}: {diff} of {} logits differ (largest by {worst:e})",
                a.len()
            );
            return false;
        }
    }
    eprintln!("{label}: {} logit rows bit-identical", alone.len());
    alone.len() == STEPS + 1 && batched.len() == STEPS + 1
}

const TYPES: [GgmlType; 3] = [GgmlType::Q8_0, GgmlType::Q4_1, GgmlType::F16];

fn models(dir: &Path) -> Vec<(GgmlType, Arc<ModelFile>)> {
    TYPES
        .iter()
        .map(|&ty| {
            let p = dir.join(format!("tiny-llama-{ty}.gguf"));
            requantize(&fixture(), ty, &p);
            (ty, Arc::new(ModelFile::open(&p).unwrap()))
        })
        .collect()
}

#[test]
fn gpu_sequence_logits_are_bit_identical_alone_and_in_a_batch_of_64() {
    let Some(_g) = gpu() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut ok = true;
    for (ty, file) in models(dir.path()) {
        for mmvq_everywhere in [true, false] {
            for deterministic in [true, false] {
                let mut m = load_cuda_from(file.clone(), &options(deterministic)).unwrap();
                if mmvq_everywhere {
                    m.backend.set_mmvq_min_cols(0);
                }
                let kernels = if mmvq_everywhere { "mmvq" } else { "default" };
                let label = format!("cuda {ty} {kernels} deterministic={deterministic}");
                let (alone, batched) = alone_and_batched(&mut m, &mut rng(&label));
                let agree = same(&label, &alone, &batched);
                ok &= agree || !deterministic;
            }
        }
    }
    assert!(ok, "with deterministic on, some logits depend on the batch");
}

/// The same harness on the CPU backend (no GPU needed).
#[test]
fn cpu_sequence_logits_are_bit_identical_alone_and_in_a_batch_of_64() {
    let dir = tempfile::tempdir().unwrap();
    let mut ok = true;
    for (ty, file) in models(dir.path()) {
        for deterministic in [true, false] {
            let mut m = load_cpu_from(file.clone(), &options(deterministic)).unwrap();
            let label = format!("cpu {ty} deterministic={deterministic}");
            let (alone, batched) = alone_and_batched(&mut m, &mut rng(&label));
            let agree = same(&label, &alone, &batched);
            ok &= agree || !deterministic;
        }
    }
    assert!(ok, "with deterministic on, some logits depend on the batch");
}
