//! The batching Engine on the default model gives every request the tokens it would get alone:
//! several sequences decoding in one forward pass, prompts prefilled in small chunks, and a KV
//! cache so small that requests are preempted and recomputed. Greedy decoding makes the
//! comparison exact, up to a near-tie between the two best tokens.

use std::sync::Arc;

use realizar_engine::{
    Engine, EngineConfig, EngineError, EngineRequest, Event, GenRequest, Generator, SamplingParams,
    SchedConfig, Tokenizer,
};
use realizar_formats::ModelFile;
use realizar_model::{load_cpu_from, LoadOptions};

fn model_file() -> Arc<ModelFile> {
    Arc::new(ModelFile::open(&realizar_testkit::default_model()).expect("open"))
}

const PROMPTS: [&str; 3] = [
    "The capital of France is",
    "Once upon a time",
    "Here is a list of the planets of the solar system, in order from the sun, with one \
     interesting fact about each of them:",
];
const N: usize = 20;

/// Each prompt alone, through the single-sequence Generator: ids and their top-2 logit gap.
fn tokenizer(file: &ModelFile) -> Tokenizer {
    Tokenizer::from_gguf(file.gguf().expect("gguf")).expect("tokenizer")
}

fn alone(file: &Arc<ModelFile>) -> Vec<Vec<(u32, f32)>> {
    let model = load_cpu_from(file.clone(), &LoadOptions::default()).expect("load");
    let mut gen = Generator::new(model, tokenizer(file));
    PROMPTS
        .iter()
        .map(|p| {
            gen.reset();
            let req = GenRequest {
                prompt: gen.tokenizer.encode(p, true, true).expect("encode"),
                params: SamplingParams::greedy(),
                max_tokens: N,
                stop: Vec::new(),
                top_logprobs: 2,
                ignore_eos: true,
            };
            let mut out = Vec::new();
            gen.generate(&req, |ev| {
                let gap = match ev.top_logprobs.as_slice() {
                    [a, b, ..] => a.1 - b.1,
                    _ => f32::INFINITY,
                };
                out.push((ev.id, gap));
                true
            })
            .expect("generate");
            out
        })
        .collect()
}

fn batched(file: &Arc<ModelFile>, tok: &Arc<Tokenizer>, kv_tokens: usize) -> (Vec<Vec<u32>>, u64) {
    let sched = SchedConfig {
        max_seqs: 4,
        max_step_tokens: 8 + 4,
        prefill_chunk: 8,
        prefix_cache: true,
    };
    let cfg = EngineConfig {
        candidates: realizar_engine::Candidates::Auto,
        ctx: kv_tokens,
        max_queue: 8,
        sched,
    };
    let f = file.clone();
    let (engine, _join) = Engine::spawn(cfg, tok.clone(), move || {
        let opts = LoadOptions {
            kv_tokens,
            max_batch_tokens: sched.max_step_tokens,
            ..LoadOptions::default()
        };
        load_cpu_from(f, &opts).map_err(EngineError::from)
    })
    .expect("spawn");
    while engine.state() != realizar_engine::EngineState::Ready {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let rxs: Vec<_> = PROMPTS
        .iter()
        .map(|p| {
            engine
                .submit(EngineRequest {
                    prompt: tok.encode(p, true, true).expect("encode"),
                    params: SamplingParams::greedy(),
                    max_tokens: N,
                    stop: Vec::new(),
                    logprobs: None,
                    ignore_eos: true,
                })
                .expect("submit")
        })
        .collect();
    let mut all = Vec::new();
    for mut rx in rxs {
        let mut ids = Vec::new();
        loop {
            match rx.blocking_recv() {
                Some(Event::Token(t)) => ids.push(t.id),
                Some(Event::Done(f)) => {
                    assert_eq!(f.completion_tokens, N);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        all.push(ids);
    }
    // Every block is free again once the requests are done.
    let t0 = std::time::Instant::now();
    while engine.stats().kv_blocks_used != 0 {
        assert!(t0.elapsed().as_secs() < 10, "{:?}", engine.stats());
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // The step-time counters moved, and a step's forward pass is part of the step.
    let st = engine.stats();
    assert!(st.steps > 0 && st.forward_ns > 0, "{st:?}");
    assert!(st.step_ns >= st.forward_ns, "{st:?}");
    (all, st.preemptions)
}

fn same(expected: &[Vec<(u32, f32)>], got: &[Vec<u32>], what: &str) {
    for (i, (e, g)) in expected.iter().zip(got).enumerate() {
        for (k, (&(id, gap), &gid)) in e.iter().zip(g).enumerate() {
            if id != gid {
                // Only a near-tie may flip under a different summation order; then the rest of
                // the sequence legitimately differs.
                assert!(
                    gap < 0.05,
                    "{what}: prompt {i} token {k}: {gid} != {id} (gap {gap})"
                );
                break;
            }
        }
    }
}

#[test]
fn batched_chunked_and_preempted_requests_match_single_sequence_generation() {
    let file = model_file();
    let tok = Arc::new(tokenizer(&file));
    let expected = alone(&file);
    // Room for everyone: three sequences decode together, prompts prefilled 8 tokens a step.
    let (got, _) = batched(&file, &tok, 1024);
    same(&expected, &got, "batched");
    // Four blocks of 16 tokens for three sequences of 25, 24 and 47 tokens: the two short ones
    // need their second block while the long one holds two (they are submitted together, so
    // they overlap by many steps): someone is preempted.
    let (got, preemptions) = batched(&file, &tok, 64);
    same(&expected, &got, "preempted");
    assert!(preemptions > 0, "the small cache never preempted");
}
