//! Sampling from the top candidates (`Model::forward_top_k`, what a GPU sends per token) gives
//! the tokens and log-probabilities of sampling from whole logit rows, on the default model:
//! greedy with log-probabilities, and seeded top-k sampling at a temperature.

use std::sync::Arc;

use realizar_engine::{Candidates, GenRequest, Generator, SamplingParams, Tokenizer};
use realizar_formats::ModelFile;
use realizar_model::{load_cpu_from, LoadOptions};

/// (id, logprob, top log-probabilities) per generated token.
type Trace = Vec<(u32, f32, Vec<(u32, f32)>)>;

fn run(gen: &mut Generator<realizar_model::CpuBackend>, req: &GenRequest, cands: bool) -> Trace {
    gen.reset();
    gen.candidates = if cands {
        Candidates::Always
    } else {
        Candidates::Never
    };
    let mut out = Vec::new();
    gen.generate(req, |ev| {
        out.push((ev.id, ev.logprob, ev.top_logprobs.clone()));
        true
    })
    .expect("generate");
    out
}

#[test]
fn candidates_match_full_rows() {
    let file = Arc::new(ModelFile::open(&realizar_testkit::default_model()).expect("open"));
    let model = load_cpu_from(file.clone(), &LoadOptions::default()).expect("load");
    let tok = Tokenizer::from_gguf(file.gguf().expect("gguf")).expect("tokenizer");
    let mut gen = Generator::new(model, tok);
    let prompt = gen
        .tokenizer
        .encode("The three primary colors are", true, true)
        .expect("encode");
    let seeded = SamplingParams {
        temperature: 0.9,
        top_k: 40,
        top_p: 0.95,
        min_p: 0.02,
        seed: Some(7),
        ..SamplingParams::default()
    };
    for (what, params, top) in [
        ("greedy", SamplingParams::greedy(), 5),
        ("top-k 40, seed 7", seeded, 3),
    ] {
        let req = GenRequest {
            prompt: prompt.clone(),
            params,
            max_tokens: 16,
            stop: Vec::new(),
            top_logprobs: top,
            ignore_eos: false,
        };
        let full = run(&mut gen, &req, false);
        let cand = run(&mut gen, &req, true);
        assert!(!full.is_empty(), "{what}: nothing generated");
        assert_eq!(
            full.iter().map(|t| t.0).collect::<Vec<_>>(),
            cand.iter().map(|t| t.0).collect::<Vec<_>>(),
            "{what}: token ids differ"
        );
        for (i, (f, c)) in full.iter().zip(&cand).enumerate() {
            assert!(
                (f.1 - c.1).abs() < 1e-4,
                "{what} step {i}: logprob {} vs {}",
                f.1,
                c.1
            );
            assert_eq!(f.2.len(), c.2.len(), "{what} step {i}: top-logprob counts");
            for (a, b) in f.2.iter().zip(&c.2) {
                assert_eq!(a.0, b.0, "{what} step {i}: top ids {:?} vs {:?}", f.2, c.2);
                assert!(
                    (a.1 - b.1).abs() < 1e-4,
                    "{what} step {i}: {:?} vs {:?}",
                    f.2,
                    c.2
                );
            }
        }
        println!(
            "{what}: {} tokens, identical ids and log-probabilities",
            full.len()
        );
    }
}

/// The batching engine with candidates on and off gives the same tokens and log-probabilities
/// for requests that can use them and for ones that cannot (top-p without top-k, penalties),
/// all decoding together. Deterministic arithmetic keeps the two engines' steps comparable
/// even if their batches form differently.
#[test]
fn engine_candidates_match_full_rows() {
    let file = Arc::new(ModelFile::open(&realizar_testkit::default_model()).expect("open"));
    let tok = Arc::new(Tokenizer::from_gguf(file.gguf().expect("gguf")).expect("tokenizer"));
    let sampled = |seed, top_k, top_p| SamplingParams {
        temperature: 0.8,
        top_k,
        top_p,
        seed: Some(seed),
        ..SamplingParams::default()
    };
    let penalized = SamplingParams {
        repetition_penalty: 1.3,
        penalty_last_n: 64,
        ..SamplingParams::greedy()
    };
    let reqs = [
        ("Name three rivers:", SamplingParams::greedy(), Some(3)),
        ("Write a haiku about rain.", sampled(5, 20, 1.0), Some(2)),
        ("The best way to learn is", sampled(9, 0, 0.9), None),
        ("List the days of the week:", penalized, Some(1)),
    ];
    // The first two alone (every step uses candidates), then all four (steps with the last
    // two read whole rows).
    for reqs in [&reqs[..2], &reqs[..]] {
        let full = run_engine(&file, &tok, false, reqs);
        let cand = run_engine(&file, &tok, true, reqs);
        compare(&full, &cand);
        println!(
            "engine: {} requests, same ids and log-probabilities",
            full.len()
        );
    }
}

/// A prompt, its sampling, and how many log-probabilities it asks for.
type Req<'a> = (&'a str, SamplingParams, Option<usize>);

/// Runs `reqs` together through a deterministic CPU engine, candidates (and drawing where the
/// logits are) on or off; each request's (id, log-probability) per token.
fn run_engine(
    file: &Arc<ModelFile>,
    tok: &Arc<Tokenizer>,
    candidates: bool,
    reqs: &[Req<'_>],
) -> Vec<Vec<(u32, Option<f32>)>> {
    use realizar_engine::{Engine, EngineConfig, EngineError, EngineRequest, Event, SchedConfig};

    let sched = SchedConfig {
        max_seqs: 4,
        max_step_tokens: 64,
        prefill_chunk: 32,
        prefix_cache: false,
    };
    let cfg = EngineConfig {
        candidates: if candidates {
            Candidates::Always
        } else {
            Candidates::Never
        },
        ctx: 1024,
        max_queue: 8,
        sched,
    };
    let f = file.clone();
    let (engine, _join) = Engine::spawn(cfg, tok.clone(), move || {
        let opts = LoadOptions {
            kv_tokens: 1024,
            max_batch_tokens: 64,
            deterministic: true,
            ..LoadOptions::default()
        };
        load_cpu_from(f, &opts).map_err(EngineError::from)
    })
    .expect("spawn");
    while engine.state() != realizar_engine::EngineState::Ready {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let rxs: Vec<_> = reqs
        .iter()
        .map(|(p, params, lp)| {
            engine
                .submit(EngineRequest {
                    prompt: tok.encode(p, true, true).expect("encode"),
                    params: params.clone(),
                    max_tokens: 12,
                    stop: Vec::new(),
                    logprobs: *lp,
                    ignore_eos: true,
                })
                .expect("submit")
        })
        .collect();
    rxs.into_iter()
        .map(|mut rx| {
            let mut out = Vec::new();
            loop {
                match rx.blocking_recv() {
                    Some(Event::Token(t)) => {
                        out.push((t.id, t.logprobs.map(|l| l.logprob)));
                    }
                    Some(Event::Done(_)) => break,
                    other => panic!("unexpected {other:?}"),
                }
            }
            out
        })
        .collect()
}

fn compare(full: &[Vec<(u32, Option<f32>)>], cand: &[Vec<(u32, Option<f32>)>]) {
    for (i, (f, c)) in full.iter().zip(cand).enumerate() {
        assert_eq!(f.len(), 12, "request {i}");
        let ids = |v: &[(u32, Option<f32>)]| v.iter().map(|t| t.0).collect::<Vec<_>>();
        assert_eq!(ids(f), ids(c), "request {i}: token ids differ");
        for (a, b) in f.iter().zip(c) {
            match (a.1, b.1) {
                (Some(x), Some(y)) => assert!((x - y).abs() < 1e-4, "request {i}: {x} vs {y}"),
                (None, None) => {}
                other => panic!("request {i}: logprobs {other:?}"),
            }
        }
    }
}

/// Greedy and plain temperature sampling without log-probabilities draw their tokens where the
/// logits are (`Model::forward_drawn`; here the host reference the GPU kernel is tested
/// against): the same tokens as the host sampler over whole rows, with and without ignore_eos.
#[test]
fn engine_device_draws_match_full_rows() {
    let file = Arc::new(ModelFile::open(&realizar_testkit::default_model()).expect("open"));
    let tok = Arc::new(Tokenizer::from_gguf(file.gguf().expect("gguf")).expect("tokenizer"));
    let plain = |seed, temperature| SamplingParams {
        temperature,
        seed: Some(seed),
        ..SamplingParams::default()
    };
    let reqs = [
        ("Once upon a time", plain(3, 0.8), None),
        ("Name three rivers:", SamplingParams::greedy(), None),
        ("Write a haiku about rain.", plain(11, 1.0), None),
        ("The best way to learn is", plain(17, 1.5), None),
    ];
    let full = run_engine(&file, &tok, false, &reqs);
    let drawn = run_engine(&file, &tok, true, &reqs);
    compare(&full, &drawn);
    // A drawn request keeps being drawn in steps whose other requests need whole rows
    // (penalties, log-probabilities), so its tokens do not depend on what shares its steps.
    let penalized = SamplingParams {
        repetition_penalty: 1.3,
        penalty_last_n: 64,
        ..plain(23, 0.9)
    };
    let mixed = [
        reqs[0].clone(),
        ("List the days of the week:", penalized, None),
        ("Name three rivers:", SamplingParams::greedy(), Some(2)),
    ];
    let alone = run_engine(&file, &tok, true, &reqs[..1]);
    let among = run_engine(&file, &tok, true, &mixed);
    assert_eq!(
        alone[0], among[0],
        "a drawn request's tokens changed with its batch"
    );
    assert!(
        full.iter().any(|r| r != &full[1]),
        "sampled requests should differ from the greedy one"
    );
    println!(
        "engine: {} requests drawn where the logits are, same ids",
        full.len()
    );
}
