//! Prefix caching on the default model: a request that shares a prompt prefix with an earlier
//! one (a system prompt, the earlier turns of a chat) computes only its new tail, and its
//! greedy output is the output of an engine with the cache off, token for token.

use std::sync::Arc;

use realizar_engine::{
    Engine, EngineConfig, EngineError, EngineHandle, EngineRequest, EngineState, EngineStats,
    Event, SamplingParams, SchedConfig, Tokenizer,
};
use realizar_formats::ModelFile;
use realizar_model::{load_cpu_from, LoadOptions};

/// The model's KV block size (`LoadOptions::default()`).
const BS: usize = 16;

const SYSTEM: &str = "You are a helpful assistant who answers questions about geography. \
    Keep every answer short: one sentence, no lists, and name the country as well as the city. \
    If you do not know the answer, say so plainly instead of guessing.";

struct Setup {
    file: Arc<ModelFile>,
    tok: Arc<Tokenizer>,
}

fn setup() -> Setup {
    let file = Arc::new(ModelFile::open(&realizar_testkit::default_model()).expect("open"));
    let tok = Arc::new(Tokenizer::from_gguf(file.gguf().expect("gguf")).expect("tokenizer"));
    Setup { file, tok }
}

fn engine(s: &Setup, prefix_cache: bool, kv_tokens: usize) -> EngineHandle {
    let sched = SchedConfig {
        max_seqs: 4,
        max_step_tokens: 32 + 4,
        prefill_chunk: 32,
        prefix_cache,
    };
    let cfg = EngineConfig {
        candidates: realizar_engine::Candidates::Auto,
        ctx: kv_tokens,
        max_queue: 8,
        sched,
    };
    let f = s.file.clone();
    let (engine, _join) = Engine::spawn(cfg, s.tok.clone(), move || {
        let opts = LoadOptions {
            kv_tokens,
            max_batch_tokens: sched.max_step_tokens,
            ..LoadOptions::default()
        };
        assert_eq!(opts.block_size, BS);
        load_cpu_from(f, &opts).map_err(EngineError::from)
    })
    .expect("spawn");
    while engine.state() != EngineState::Ready {
        assert_ne!(engine.state(), EngineState::Failed);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    engine
}

fn request(prompt: Vec<u32>, max_tokens: usize) -> EngineRequest {
    EngineRequest {
        prompt,
        params: SamplingParams::greedy(),
        max_tokens,
        stop: Vec::new(),
        logprobs: None,
        ignore_eos: true,
    }
}

/// The generated ids of one request, once it is done.
fn collect(mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>) -> Vec<u32> {
    let mut ids = Vec::new();
    loop {
        match rx.blocking_recv() {
            Some(Event::Token(t)) => ids.push(t.id),
            Some(Event::Done(_)) => return ids,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Runs `prompt` alone and returns its output and what the engine's counters moved by.
fn generate(e: &EngineHandle, prompt: &[u32], n: usize) -> (Vec<u32>, EngineStats) {
    let before = e.stats();
    let out = collect(e.submit(request(prompt.to_vec(), n)).expect("submit"));
    let after = e.stats();
    let delta = EngineStats {
        prefill_tokens: after.prefill_tokens - before.prefill_tokens,
        prefix_cache_queried_tokens: after.prefix_cache_queried_tokens
            - before.prefix_cache_queried_tokens,
        prefix_cache_hit_tokens: after.prefix_cache_hit_tokens - before.prefix_cache_hit_tokens,
        ..after
    };
    (out, delta)
}

fn encode(s: &Setup, text: &str, bos: bool) -> Vec<u32> {
    s.tok.encode(text, bos, true).expect("encode")
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[test]
fn a_shared_system_prompt_is_prefilled_once() {
    let s = setup();
    let a = encode(
        &s,
        &format!("{SYSTEM}\nQuestion: What is the capital of France?"),
        true,
    );
    let b = encode(&s, &format!("{SYSTEM}\nQuestion: Where is Timbuktu?"), true);
    let common = common_prefix(&a, &b);
    assert!(
        common >= 3 * BS,
        "the shared prefix is only {common} tokens"
    );
    let n = 8;

    let on = engine(&s, true, 1024);
    let (_, first) = generate(&on, &a, n);
    assert_eq!(first.prefix_cache_hit_tokens, 0);
    assert_eq!(first.prefix_cache_queried_tokens, a.len() as u64);
    assert_eq!(first.prefill_tokens, a.len() as u64);
    let (out_b, second) = generate(&on, &b, n);
    // Every full block of the common prefix comes from the cache; only the rest is computed.
    let hit = common / BS * BS;
    assert_eq!(second.prefix_cache_hit_tokens, hit as u64);
    assert_eq!(second.prefix_cache_queried_tokens, b.len() as u64);
    assert_eq!(second.prefill_tokens, (b.len() - hit) as u64);
    eprintln!(
        "prompt of {} tokens: {} from the cache, {} computed",
        b.len(),
        hit,
        b.len() - hit
    );
    // The same prompt again: all of it but the block of its last token.
    let (out_b2, third) = generate(&on, &b, n);
    assert_eq!(
        third.prefix_cache_hit_tokens,
        ((b.len() - 1) / BS * BS) as u64
    );
    assert_eq!(out_b2, out_b);
    assert_eq!(on.stats().kv_blocks_used, 0);

    let off = engine(&s, false, 1024);
    generate(&off, &a, n);
    let (expected_b, cold) = generate(&off, &b, n);
    assert_eq!(cold.prefix_cache_hit_tokens, 0);
    assert_eq!(cold.prefix_cache_queried_tokens, 0);
    assert_eq!(cold.prefill_tokens, b.len() as u64);
    assert_eq!(out_b, expected_b, "greedy output with the prefix cache");
}

#[test]
fn the_next_turn_of_a_chat_reuses_the_previous_turn() {
    let s = setup();
    let turn1 = encode(
        &s,
        &format!("{SYSTEM}\nUser: What is the capital of France?\nAssistant:"),
        true,
    );
    let n = 12;
    let on = engine(&s, true, 1024);
    let (answer, _) = generate(&on, &turn1, n);
    // The next request: the whole conversation so far, then a new question.
    let mut turn2 = turn1.clone();
    turn2.extend(&answer);
    turn2.extend(encode(&s, "\nUser: And of Germany?\nAssistant:", false));
    let (out2, second) = generate(&on, &turn2, n);
    // Turn 1 computed its prompt and all its output but the last token, in full blocks up to
    // the last full one.
    let hit = (turn1.len() + n - 1) / BS * BS;
    assert!(
        hit > turn1.len() - BS,
        "some generated tokens' blocks are reused"
    );
    assert_eq!(second.prefix_cache_hit_tokens, hit as u64);
    assert_eq!(second.prefill_tokens, (turn2.len() - hit) as u64);
    eprintln!(
        "turn 2 of {} tokens: {} from the cache, {} computed",
        turn2.len(),
        hit,
        turn2.len() - hit
    );

    let off = engine(&s, false, 1024);
    let (answer_off, _) = generate(&off, &turn1, n);
    assert_eq!(answer_off, answer);
    let (expected, _) = generate(&off, &turn2, n);
    assert_eq!(
        out2, expected,
        "turn 2's greedy output with the prefix cache"
    );
}

/// Concurrent requests on one system prompt in a KV cache too small for all of them: shared
/// blocks, preemption and recomputation together still give every request its own output.
#[test]
fn concurrent_requests_on_a_shared_prefix_under_preemption() {
    let s = setup();
    let questions = [
        "What is the capital of France?",
        "Where is Timbuktu?",
        "Which river flows through Cairo?",
        "How high is Mount Everest?",
    ];
    let prompts: Vec<Vec<u32>> = questions
        .iter()
        .map(|q| encode(&s, &format!("{SYSTEM}\nQuestion: {q}"), true))
        .collect();
    let n = 10;
    let run = |e: &EngineHandle| -> Vec<Vec<u32>> {
        let rxs: Vec<_> = prompts
            .iter()
            .map(|p| e.submit(request(p.clone(), n)).expect("submit"))
            .collect();
        let outs = rxs.into_iter().map(collect).collect();
        let t0 = std::time::Instant::now();
        while e.stats().kv_blocks_used != 0 {
            assert!(t0.elapsed().as_secs() < 10, "{:?}", e.stats());
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        outs
    };
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let expected = run(&engine(&s, false, 1024));
    // Room for one whole request and a bit.
    let kv_tokens = (longest + n).div_ceil(BS) * BS + 2 * BS;
    let small = engine(&s, true, kv_tokens);
    let got = run(&small);
    let st = small.stats();
    eprintln!("{st:?}");
    assert!(st.preemptions > 0, "the small cache never preempted");
    assert!(st.prefix_cache_hit_tokens > 0, "nothing was shared");
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, e, "request {i}");
    }
}
