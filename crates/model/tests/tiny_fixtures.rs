//! Every architecture against HF transformers: the tiny random models in
//! tests/fixtures/tiny/<arch> (made by scripts/make-tiny-fixtures.py) loaded both as the HF folder
//! (safetensors + config.json) and as llama.cpp's own GGUF conversion of it. Logits at all 24
//! positions must match transformers' within a relative error of 1e-3 (f32 weights, f32 KV cache),
//! and 16 greedy tokens decoded one at a time through the KV cache must equal transformers'.

use std::path::Path;

use realizar_model::{load_cpu, Arch, KvType, LoadOptions, LogitsWanted, SeqChunk};
use serde_json::Value;

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn check(path: &Path, reference: &Value, arch: Arch) {
    let opts = LoadOptions {
        kv_tokens: 256,
        block_size: 16,
        max_batch_tokens: 64,
        kv_type: KvType::F32,
        deterministic: false,
    };
    let (_file, mut model) =
        load_cpu(path, &opts).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(model.cfg.arch, arch);
    let input = ids(&reference["input_ids"]);
    let table: Vec<u32> = (0..model.n_blocks() as u32).collect();
    let ours = model
        .forward(&[SeqChunk {
            tokens: &input,
            start_pos: 0,
            block_table: &table,
            logits: LogitsWanted::All,
        }])
        .expect("forward");
    let expected = reference["logits"].as_array().expect("logits");
    assert_eq!(ours.len(), expected.len());
    let (mut max_err, mut max_ref) = (0.0f64, 0.0f64);
    for (row, exp) in ours.iter().zip(expected) {
        let exp = exp.as_array().expect("row");
        assert_eq!(row.len(), exp.len(), "vocab size");
        for (&a, b) in row.iter().zip(exp) {
            let b = b.as_f64().expect("logit");
            assert!(a.is_finite(), "non-finite logit");
            max_err = max_err.max((a as f64 - b).abs());
            max_ref = max_ref.max(b.abs());
        }
    }
    let rel = max_err / max_ref;
    eprintln!(
        "{}: max |logit error| {max_err:.2e}, relative {rel:.2e}",
        path.display()
    );
    assert!(
        rel < 1e-3,
        "{}: relative logit error {rel:.2e}",
        path.display()
    );

    // Greedy continuation, one token per step through the KV cache.
    let last = ours.last().expect("logits");
    let argmax = |l: &[f32]| {
        l.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|x| x.0 as u32)
            .expect("argmax")
    };
    let mut tok = argmax(last);
    let mut got = vec![tok];
    for pos in input.len()..input.len() + 15 {
        let l = model
            .forward(&[SeqChunk {
                tokens: &[tok],
                start_pos: pos,
                block_table: &table,
                logits: LogitsWanted::Last,
            }])
            .expect("decode");
        tok = argmax(&l[0]);
        got.push(tok);
    }
    assert_eq!(
        got,
        ids(&reference["greedy"]),
        "{}: greedy tokens",
        path.display()
    );
}

fn run(arch_dir: &str, arch: Arch) {
    let dir = realizar_testkit::tiny_fixture(arch_dir);
    let reference: Value =
        serde_json::from_slice(&std::fs::read(dir.join("reference.json")).expect("reference.json"))
            .expect("json");
    check(&dir, &reference, arch);
    check(&dir.join("model-f32.gguf"), &reference, arch);
}

#[test]
fn llama_matches_transformers() {
    run("llama", Arch::Llama);
}

#[test]
fn qwen2_matches_transformers() {
    run("qwen2", Arch::Qwen2);
}

#[test]
fn qwen3_matches_transformers() {
    run("qwen3", Arch::Qwen3);
}

#[test]
fn gemma3_matches_transformers() {
    run("gemma3", Arch::Gemma3);
}
