//! CUDA graphs (backend/graphs.rs): steps replayed from a record give logits bit for bit equal to
//! the same steps run launch by launch, while positions, KV slots, block tables and the batch
//! change under the record: one sequence decoding across block boundaries, a second sequence
//! joining (a new shape), the two decoding together, top-k selection after replayed steps, and a
//! long prefill in between (which grows scratch buffers and so invalidates every record). Runs on
//! the tiny fixtures of every architecture (qwen2's biases, qwen3's QK-norm, gemma3's sliding
//! windows), with the 8-bit mmvq kernels forced onto their narrow rows and with the default
//! kernels. The recorded model launches with programmatic dependent launch where the device has
//! it (sm_90) and the other without. Also: a model after `Model::warm_up` against a fresh one.
//! Skips, saying so, without a CUDA device.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{argmax, gpu, requantize, rng};
use rand::Rng;
use realizar_cuda::{load_cuda_from, load_cuda_with, CudaBackend, F16Weights, GpuOptions};
use realizar_formats::{GgmlType, ModelFile};
use realizar_model::{LoadOptions, LogitsWanted, Model, SeqChunk};

const BLOCK: usize = 16;

/// One sequence of the script: its tokens so far and its block table.
struct Seq {
    tokens: Vec<u32>,
    table: Vec<u32>,
}

/// Runs `chunks` (sequence index, number of new tokens from the end of its tokens) as one batch
/// on both models and checks their logits are identical; returns the last rows of each chunk.
fn step_both(
    a: &mut Model<CudaBackend>,
    b: &mut Model<CudaBackend>,
    seqs: &[Seq],
    chunks: &[(usize, usize)],
    what: &str,
) -> Vec<Vec<f32>> {
    let batch: Vec<SeqChunk<'_>> = chunks
        .iter()
        .map(|&(s, n)| {
            let seq = &seqs[s];
            let start = seq.tokens.len() - n;
            SeqChunk {
                tokens: &seq.tokens[start..],
                start_pos: start,
                block_table: &seq.table,
                logits: LogitsWanted::Last,
            }
        })
        .collect();
    let la = a.forward(&batch).unwrap();
    let lb = b.forward(&batch).unwrap();
    assert_eq!(la.len(), lb.len());
    for (i, (x, y)) in la.iter().zip(&lb).enumerate() {
        let same = x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(
            same,
            "{what}: logits of chunk {i} differ between the two models"
        );
    }
    la
}

/// `steps` steps in which each sequence of `order` decodes its greedy token of the step before.
fn decode(
    a: &mut Model<CudaBackend>,
    b: &mut Model<CudaBackend>,
    seqs: &mut [Seq],
    order: &[usize],
    steps: usize,
    what: &str,
) {
    let chunks: Vec<(usize, usize)> = order.iter().map(|&s| (s, 1)).collect();
    for i in 0..steps {
        let l = step_both(a, b, seqs, &chunks, &format!("{what}, step {i}"));
        for (&s, row) in order.iter().zip(&l) {
            seqs[s].tokens.push(argmax(row));
        }
    }
}

/// Two CUDA models of the file at `path` (1024 KV tokens, steps of up to 128 tokens).
fn two_models(path: &Path) -> (Model<CudaBackend>, Model<CudaBackend>) {
    let file = Arc::new(ModelFile::open(path).unwrap());
    let opts = LoadOptions {
        kv_tokens: 1024,
        block_size: BLOCK,
        max_batch_tokens: 128,
        ..LoadOptions::default()
    };
    let a = load_cuda_from(file.clone(), &opts).unwrap();
    let b = load_cuda_from(file, &opts).unwrap();
    (a, b)
}

fn script(path: &Path, mmvq_everywhere: bool, label: &str) {
    let (mut a, mut b) = two_models(path);
    a.backend.set_graphs(true);
    b.backend.set_graphs(false);
    // The replayed model also launches with programmatic dependent launch (sm_90), the other
    // one launch after the other's end: the same bits either way.
    let pdl = a.backend.set_pdl(true);
    b.backend.set_pdl(false);
    println!("{label}: programmatic dependent launch {pdl}");
    if mmvq_everywhere {
        a.backend.set_mmvq_min_cols(0);
        b.backend.set_mmvq_min_cols(0);
    }
    let vocab = a.cfg.vocab_size as u32;
    let mut r = rng(label);
    let n_blocks = a.n_blocks() as u32;
    // Block tables drawn from a shuffled pool, so consecutive blocks are far apart.
    let mut pool: Vec<u32> = (0..n_blocks).collect();
    for i in (1..pool.len()).rev() {
        pool.swap(i, r.gen_range(0..=i));
    }
    let mut seqs = vec![
        Seq {
            tokens: (0..7).map(|_| r.gen_range(0..vocab)).collect(),
            table: pool[..16].to_vec(),
        },
        Seq {
            tokens: (0..5).map(|_| r.gen_range(0..vocab)).collect(),
            table: pool[16..32].to_vec(),
        },
    ];
    let grow = |seqs: &mut Vec<Seq>, s: usize, last: &[f32]| seqs[s].tokens.push(argmax(last));

    // Sequence 0: prompt, then 40 single-token steps (crossing two block boundaries).
    let l = step_both(&mut a, &mut b, &seqs, &[(0, 7)], "prompt 0");
    grow(&mut seqs, 0, &l[0]);
    decode(&mut a, &mut b, &mut seqs, &[0], 40, "decode 0");
    let st = a.backend.graph_stats();
    assert!(
        st.recorded >= 1 && st.replayed >= 35,
        "{label}: single-sequence decode was not replayed: {st:?}"
    );
    // Sequence 1 joins: its prompt, then both decode together (a new shape: 2 tokens, 2 seqs).
    let l = step_both(&mut a, &mut b, &seqs, &[(1, 5)], "prompt 1");
    grow(&mut seqs, 1, &l[0]);
    decode(&mut a, &mut b, &mut seqs, &[0, 1], 20, "batch");
    // Top-k selection after replayed steps reads what the record computed.
    for i in 0..3 {
        let s = &seqs[0];
        let chunk = [SeqChunk {
            tokens: &s.tokens[s.tokens.len() - 1..],
            start_pos: s.tokens.len() - 1,
            block_table: &s.table,
            logits: LogitsWanted::Last,
        }];
        let ta = a.forward_top_k(&chunk, 8).unwrap();
        let tb = b.forward_top_k(&chunk, 8).unwrap();
        assert_eq!(ta, tb, "{label}: top-k {i} differs with graphs");
    }
    // A long prefill grows the scratch buffers: every record is dropped and made again.
    seqs[1]
        .tokens
        .extend((0..100).map(|_| r.gen_range(0..vocab)));
    // 101: with the last greedy token of the batch steps, which was not fed yet.
    let l = step_both(&mut a, &mut b, &seqs, &[(1, 101)], "long prefill");
    grow(&mut seqs, 1, &l[0]);
    decode(&mut a, &mut b, &mut seqs, &[1, 0], 10, "after the prefill");
    let st = a.backend.graph_stats();
    let off = b.backend.graph_stats();
    println!(
        "PASS graphs {label}: bit-identical over 80 steps; with graphs {st:?}, without {off:?}"
    );
    assert!(st.recorded >= 3 && st.replayed >= 60, "{label}: {st:?}");
    assert_eq!((off.recorded, off.replayed), (0, 0));
}

#[test]
fn replayed_steps_equal_direct_steps() {
    let Some(_g) = gpu() else { return };
    let root = common::repo_root().join("tests/fixtures/tiny");
    let dir = tempfile::tempdir().unwrap();
    for arch in ["llama", "qwen2", "qwen3", "gemma3"] {
        let p = root.join(arch).join("model-f32.gguf");
        script(&p, false, &format!("tiny-{arch} F32"));
        // Quantized matrices, through the f32 kernels and through quantize + mmvq.
        let q = dir.path().join(format!("{arch}-q4_1.gguf"));
        requantize(&p, GgmlType::Q4_1, &q);
        script(&q, false, &format!("tiny-{arch} Q4_1"));
        script(&q, true, &format!("tiny-{arch} Q4_1, mmvq"));
    }
}

/// `Model::warm_up` (run by `serve --device cuda`) leaves nothing that changes a request's
/// logits: a warmed model and a fresh one give the same bits over a prompt, decode steps that
/// are recorded and replayed, and a longer prefill, on the KV blocks the warm-up wrote.
#[test]
fn warmed_up_model_equals_a_fresh_one() {
    let Some(_g) = gpu() else { return };
    let root = common::repo_root().join("tests/fixtures/tiny");
    let dir = tempfile::tempdir().unwrap();
    let p = root.join("llama").join("model-f32.gguf");
    let q = dir.path().join("llama-q4_1.gguf");
    requantize(&p, GgmlType::Q4_1, &q);
    let (mut a, mut b) = two_models(&q);
    // 128, 64 prompt tokens and one decode step.
    assert_eq!(a.warm_up().unwrap(), 128 + 64 + 1);
    let vocab = a.cfg.vocab_size as u32;
    let mut r = rng("warm-up");
    // The blocks the warm-up wrote (0, 1, ...) come first in the table.
    let mut seqs = vec![Seq {
        tokens: (0..9).map(|_| r.gen_range(0..vocab)).collect(),
        table: (0..32).collect(),
    }];
    let l = step_both(&mut a, &mut b, &seqs, &[(0, 9)], "prompt after the warm-up");
    seqs[0].tokens.push(argmax(&l[0]));
    decode(
        &mut a,
        &mut b,
        &mut seqs,
        &[0],
        20,
        "decode after the warm-up",
    );
    seqs[0]
        .tokens
        .extend((0..90).map(|_| r.gen_range(0..vocab)));
    // 91: the last greedy token of the decode steps was not fed yet.
    step_both(
        &mut a,
        &mut b,
        &seqs,
        &[(0, 91)],
        "prefill after the warm-up",
    );
    println!("PASS warm-up: bit-identical to a fresh model over 22 steps");
}

/// Batched decode on the f16 weight copies (48 sequences: cuBLAS from 40 tokens) is recorded and
/// replayed like the mmq steps, cuBLAS calls included, with the bits of the direct steps.
#[test]
fn batched_decode_on_weight_copies_replays() {
    let Some(g) = common::gpu_with_cublas() else {
        return;
    };
    drop(g);
    let root = common::repo_root().join("tests/fixtures/tiny");
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("llama-q4_1.gguf");
    requantize(
        &root.join("llama").join("model-f32.gguf"),
        GgmlType::Q4_1,
        &q,
    );
    let file = Arc::new(ModelFile::open(&q).unwrap());
    let n = 48;
    let opts = LoadOptions {
        kv_tokens: n * 4 * BLOCK,
        block_size: BLOCK,
        max_batch_tokens: 256,
        ..LoadOptions::default()
    };
    let on = GpuOptions {
        f16_weights: F16Weights::On,
        ..GpuOptions::default()
    };
    let mut a = load_cuda_with(file.clone(), &opts, &on).unwrap();
    let mut b = load_cuda_with(file, &opts, &on).unwrap();
    a.backend.set_graphs(true);
    b.backend.set_graphs(false);
    let vocab = a.cfg.vocab_size as u32;
    let mut r = rng("graphs-f16-copies");
    let mut seqs: Vec<Seq> = (0..n)
        .map(|i| Seq {
            tokens: (0..3).map(|_| r.gen_range(0..vocab)).collect(),
            table: (4 * i as u32..4 * i as u32 + 4).collect(),
        })
        .collect();
    let chunks: Vec<(usize, usize)> = (0..n).map(|s| (s, 3)).collect();
    let l = step_both(&mut a, &mut b, &seqs, &chunks, "48 prompts");
    for (s, row) in l.iter().enumerate() {
        seqs[s].tokens.push(argmax(row));
    }
    let order: Vec<usize> = (0..n).collect();
    let batched = a.backend.batched_gemms();
    decode(
        &mut a,
        &mut b,
        &mut seqs,
        &order,
        12,
        "48 sequences on the copies",
    );
    let st = a.backend.graph_stats();
    println!(
        "graphs on the f16 copies: {st:?}, {} copies, {} batched calls",
        a.backend.f16_weight_copies(),
        a.backend.batched_gemms() - batched
    );
    assert!(a.backend.f16_weight_copies() > 0, "no f16 weight copies");
    assert!(
        st.recorded >= 1 && st.replayed >= 8,
        "batched decode on the copies was not replayed: {st:?}"
    );
    println!("PASS graphs on the f16 copies: bit-identical over 12 steps of 48 sequences");
}
