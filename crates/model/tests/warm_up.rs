//! `Model::warm_up`: it runs the step sizes it says (the step size, halves down to 64, one
//! decode step), and a sequence computed afterwards on the very KV blocks it wrote gets the
//! logits of a fresh model: nothing of the warm-up is read.

use realizar_model::{load_cpu, CpuBackend, LoadOptions, LogitsWanted, Model, SeqChunk};
use realizar_testkit::tiny_fixture;

/// The tiny llama fixture on the CPU with a cache of `kv_tokens` and steps of `max_tokens`.
fn tiny(kv_tokens: usize, max_tokens: usize) -> Model<CpuBackend> {
    let path = tiny_fixture("llama").join("model-f32.gguf");
    let opts = LoadOptions {
        kv_tokens,
        max_batch_tokens: max_tokens,
        ..LoadOptions::default()
    };
    load_cpu(&path, &opts).unwrap().1
}

#[test]
fn warm_up_leaves_nothing_a_sequence_reads() {
    let mut fresh = tiny(512, 200);
    let mut warmed = tiny(512, 200);
    // 200, 100 and 64 prompt tokens, then one decode token.
    assert_eq!(warmed.warm_up().unwrap(), 200 + 100 + 64 + 1);

    let vocab = fresh.cfg.vocab_size as u32;
    let table: Vec<u32> = (0..fresh.n_blocks() as u32).collect();
    let prompt: Vec<u32> = (0..40u32).map(|i| (i * 11 + 5) % vocab).collect();
    let run = |m: &mut Model<CpuBackend>| {
        let mut rows = m
            .forward(&[SeqChunk {
                tokens: &prompt,
                start_pos: 0,
                block_table: &table,
                logits: LogitsWanted::Last,
            }])
            .unwrap();
        rows.extend(
            m.forward(&[SeqChunk {
                tokens: &[7],
                start_pos: prompt.len(),
                block_table: &table,
                logits: LogitsWanted::Last,
            }])
            .unwrap(),
        );
        rows
    };
    let want = run(&mut fresh);
    let got = run(&mut warmed);
    assert_eq!(want.len(), 2);
    for (w, g) in want.iter().zip(&got) {
        assert!(w.iter().all(|v| v.is_finite()));
        assert!(
            w.iter().zip(g).all(|(a, b)| a.to_bits() == b.to_bits()),
            "logits after the warm-up differ from a fresh model's"
        );
    }
}

#[test]
fn warm_up_fits_a_small_cache() {
    let mut m = tiny(48, 512);
    let cap = m.n_blocks() * m.block_size();
    // As many prompt tokens as the cache holds but one, then the decode token.
    assert_eq!(m.warm_up().unwrap(), cap);
}
