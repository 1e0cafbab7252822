//! Golden test: llama.cpp's tokenization of the default model (SmolLM2-135M-Instruct, GGUF
//! byte-level BPE, `smollm` pre-tokenizer), from `../shared/reference/*.json`.
//!
//! The model is fetched by `shared/scripts/get-default-model.sh` when missing; if it still
//! cannot be had, the test fails (it never passes silently).

use realizar_testkit::{default_model, shared_dir};

use realizar_engine::Tokenizer;
use realizar_formats::GgufFile;
use serde_json::Value;

fn reference() -> Value {
    let path = shared_dir().join("reference/smollm2-135m-instruct-q4_1.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("reference JSON")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn tokenizer() -> Tokenizer {
    let gguf = GgufFile::open(&default_model()).expect("open GGUF");
    Tokenizer::from_gguf(&gguf).expect("tokenizer from GGUF")
}

#[test]
fn matches_llama_cpp_tokenization() {
    let tok = tokenizer();
    let reference = reference();
    let cases = reference["tokenizer"].as_array().expect("tokenizer cases");
    assert_eq!(cases.len(), 40);
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let plain = tok.encode(text, false, false).expect("encode");
        let special = tok.encode(text, false, true).expect("encode");
        let with_bos = tok.encode(text, true, true).expect("encode");
        if plain != ids(&case["ids"]) {
            failures.push(format!(
                "{text:?} (plain): got {plain:?}, want {:?}",
                ids(&case["ids"])
            ));
        }
        if special != ids(&case["ids_parse_special"]) {
            failures.push(format!(
                "{text:?} (parse_special): got {special:?}, want {:?}",
                ids(&case["ids_parse_special"])
            ));
        }
        // This model has add_bos_token = false: add_special changes nothing.
        if with_bos != special {
            failures.push(format!("{text:?}: add_special added {with_bos:?}"));
        }
        // Byte-level BPE is lossless.
        if tok.decode(&plain) != text {
            failures.push(format!("{text:?}: decodes to {:?}", tok.decode(&plain)));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn matches_llama_cpp_prompt_tokens() {
    let tok = tokenizer();
    let reference = reference();
    let cases = reference["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 6);
    for case in cases {
        let prompt = case["prompt"].as_str().expect("prompt");
        let got = tok.encode(prompt, true, true).expect("encode");
        assert_eq!(got, ids(&case["prompt_tokens"]), "prompt {prompt:?}");
    }
}

#[test]
fn special_tokens_of_the_default_model() {
    let tok = tokenizer();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.bos(), Some(1));
    assert_eq!(tok.eos(), Some(2));
    assert!(!tok.adds_bos());
    let im_end = tok.token_id("<|im_end|>").expect("<|im_end|>");
    let eot_text = tok.token_id("<|endoftext|>").expect("<|endoftext|>");
    assert_eq!(tok.eot(), Some(im_end));
    assert!(tok.is_eog(im_end) && tok.is_eog(eot_text) && tok.is_eog(2));
    assert!(!tok.is_eog(tok.token_id("<|im_start|>").expect("<|im_start|>")));
    assert!(!tok.is_eog(19556));
    assert_eq!(tok.token_bytes(216), b" ");
    assert_eq!(tok.token_bytes(1), b"<|im_start|>");
    assert_eq!(tok.decode(&[1, 19556, 2]), "Hello");
    assert_eq!(
        tok.decode_with(&[1, 19556, 2], true),
        "<|im_start|>Hello<|im_end|>"
    );
    assert!(tok
        .chat_template()
        .is_some_and(|t| t.contains("<|im_start|>")));
}
