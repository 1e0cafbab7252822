//! Sampling from the top candidates (`Model::forward_top_k`, what a GPU sends per token) gives
//! the tokens and log-probabilities of sampling from whole logit rows, on the default model:
//! greedy with log-probabilities, and seeded top-k sampling at a temperature.

use std::sync::Arc;

use realizar_engine::{GenRequest, Generator, SamplingParams, Tokenizer};
use realizar_formats::ModelFile;
use realizar_model::{load_cpu_from, LoadOptions};

/// (id, logprob, top log-probabilities) per generated token.
type Trace = Vec<(u32, f32, Vec<(u32, f32)>)>;

fn run(gen: &mut Generator<realizar_model::CpuBackend>, req: &GenRequest, cands: bool) -> Trace {
    gen.reset();
    gen.use_candidates = cands;
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
