//! `LoadOptions::deterministic` on the CPU: a sampled request (temperature 0.8, fixed seed) gets
//! the same tokens, and bit for bit the same log-probabilities, run alone and run among 63
//! other concurrent requests, some with prompts long enough to be prefilled in chunks while it
//! decodes. Alone, its steps have one token (the one-token kernels); in the crowd they have up
//! to 96 (the tiled kernels). Whether the default mode differs is printed, not asserted.

use std::sync::Arc;

use realizar_engine::{
    Engine, EngineConfig, EngineError, EngineHandle, EngineRequest, EngineState, Event,
    SamplingParams, SchedConfig, Tokenizer,
};
use realizar_formats::ModelFile;
use realizar_model::{load_cpu_from, LoadOptions};

/// Tokens the observed request generates.
const N: usize = 32;
const PREFILL_CHUNK: usize = 32;
const MAX_SEQS: usize = 64;

/// The observed request: about 40 prompt tokens, so alone it is prefilled in two chunks too.
const PROMPT: &str = "Write a short story about a lighthouse keeper who finds a message in a \
                      bottle. The story should be gentle, a little sad, and end with a \
                      surprise that makes the reader smile.";

const TOPICS: [&str; 8] = [
    "the history of the printing press",
    "how bees communicate",
    "a recipe for tomato soup",
    "why the sky is blue",
    "the rules of chess",
    "a trip to the mountains",
    "how to learn a new language",
    "the life cycle of a star",
];

/// What the observed request got: per token, the id and its log-probability's bits.
type Trace = Vec<(u32, u32)>;

fn sampling(seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        min_p: 0.05,
        seed: Some(seed),
        ..SamplingParams::default()
    }
}

/// The 63 other requests: prompts of 10 to 200 tokens (every 8th long: 4 to 6 chunks), 16 to
/// 32 tokens each.
fn others(tok: &Tokenizer) -> Vec<EngineRequest> {
    (0..MAX_SEQS - 1)
        .map(|i| {
            let topic = TOPICS[(i + i / 8) % TOPICS.len()];
            let text = if i % 8 == 3 {
                format!("Here are some notes on {topic}. ").repeat(14 + i / 8)
                    + "Summarize the notes above."
            } else {
                format!("Request {i}: tell me about {topic}.")
            };
            EngineRequest {
                prompt: tok.encode(&text, true, true).expect("encode"),
                params: sampling(1000 + i as u64),
                max_tokens: 16 + i % 17,
                stop: Vec::new(),
                logprobs: None,
                ignore_eos: true,
            }
        })
        .collect()
}

fn spawn(file: &Arc<ModelFile>, tok: &Arc<Tokenizer>, deterministic: bool) -> EngineHandle {
    let sched = SchedConfig {
        max_seqs: MAX_SEQS,
        max_step_tokens: PREFILL_CHUNK + MAX_SEQS,
        prefill_chunk: PREFILL_CHUNK,
        ..SchedConfig::default()
    };
    let cfg = EngineConfig {
        candidates: realizar_engine::Candidates::Auto,
        ctx: 1024,
        max_queue: 2 * MAX_SEQS,
        sched,
    };
    let f = file.clone();
    let (engine, _join) = Engine::spawn(cfg, tok.clone(), move || {
        let opts = LoadOptions {
            kv_tokens: 16384,
            max_batch_tokens: sched.max_step_tokens,
            deterministic,
            ..LoadOptions::default()
        };
        load_cpu_from(f, &opts).map_err(EngineError::from)
    })
    .expect("spawn");
    while engine.state() != EngineState::Ready {
        assert_ne!(engine.state(), EngineState::Failed, "loading failed");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    engine
}

/// Every event of a request until it is done.
fn collect(mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>, max_tokens: usize) -> Trace {
    let mut trace = Vec::new();
    loop {
        match rx.blocking_recv() {
            Some(Event::Token(t)) => {
                let lp = t.logprobs.map_or(f32::NAN, |l| l.logprob);
                trace.push((t.id, lp.to_bits()));
            }
            Some(Event::Done(f)) => {
                assert_eq!(f.completion_tokens, max_tokens);
                return trace;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The observed request alone, then among the others (it is submitted fifth, the long prompts
/// around it).
fn run(file: &Arc<ModelFile>, tok: &Arc<Tokenizer>, deterministic: bool) -> (Trace, Trace) {
    let observed = EngineRequest {
        prompt: tok.encode(PROMPT, true, true).expect("encode"),
        params: sampling(42),
        max_tokens: N,
        stop: Vec::new(),
        logprobs: Some(1),
        ignore_eos: true,
    };
    assert!(observed.prompt.len() > PREFILL_CHUNK);
    let engine = spawn(file, tok, deterministic);
    let alone = collect(engine.submit(observed.clone()).expect("submit"), N);

    let engine = spawn(file, tok, deterministic);
    let mut rest = others(tok);
    let long = rest
        .iter()
        .filter(|r| r.prompt.len() > 3 * PREFILL_CHUNK)
        .count();
    assert!(long >= 6, "only {long} prompts need several chunks");
    let later = rest.split_off(4);
    let mut rxs: Vec<_> = rest
        .into_iter()
        .map(|r| {
            let n = r.max_tokens;
            (engine.submit(r).expect("submit"), n)
        })
        .collect();
    let observed_rx = engine.submit(observed).expect("submit");
    rxs.extend(later.into_iter().map(|r| {
        let n = r.max_tokens;
        (engine.submit(r).expect("submit"), n)
    }));
    let batched = collect(observed_rx, N);
    for (rx, n) in rxs {
        collect(rx, n);
    }
    let stats = engine.stats();
    eprintln!(
        "deterministic={deterministic}: {} steps, {} prompt and {} generated tokens in the crowd",
        stats.steps, stats.prefill_tokens, stats.generated_tokens
    );
    (alone, batched)
}

/// Index of the first token whose id or log-probability differs, if any.
fn first_difference(a: &Trace, b: &Trace) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

#[test]
fn deterministic_request_is_bit_identical_alone_and_among_63_others() {
    let file = Arc::new(ModelFile::open(&realizar_testkit::default_model()).expect("open"));
    let tok = Arc::new(Tokenizer::from_gguf(file.gguf().expect("gguf")).expect("tokenizer"));

    let (alone, batched) = run(&file, &tok, true);
    assert_eq!(alone.len(), N);
    assert!(alone.iter().all(|&(_, lp)| f32::from_bits(lp).is_finite()));
    let ids = |t: &Trace| t.iter().map(|&(id, _)| id).collect::<Vec<_>>();
    assert_eq!(ids(&alone), ids(&batched), "token ids alone vs batched");
    assert_eq!(
        first_difference(&alone, &batched),
        None,
        "log-probabilities alone vs batched"
    );

    let (alone_fast, batched_fast) = run(&file, &tok, false);
    match first_difference(&alone_fast, &batched_fast) {
        None => eprintln!("deterministic off: alone and batched agreed on all {N} tokens"),
        Some(i) => {
            let (a, b) = (alone_fast[i], batched_fast[i]);
            eprintln!(
                "deterministic off: first difference at token {i}: id {} (logprob {}) alone, \
                 {} ({}) batched; ids differ at {} of {N} positions",
                a.0,
                f32::from_bits(a.1),
                b.0,
                f32::from_bits(b.1),
                alone_fast
                    .iter()
                    .zip(&batched_fast)
                    .filter(|(x, y)| x.0 != y.0)
                    .count()
            );
        }
    }
}
