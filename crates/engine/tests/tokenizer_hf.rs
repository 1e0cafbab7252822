//! The Hugging Face folder path (`tokenizer.json` + configs), checked against the same
//! llama.cpp reference as the GGUF path. The folder is rebuilt from the default model's GGUF
//! vocabulary the way SmolLM2's own `tokenizer.json` is laid out (BPE, individual digits, then
//! GPT-2 byte-level pre-tokenization; special added tokens; `<|im_start|>`/`<|im_end|>` as
//! BOS/EOS in tokenizer_config.json).

use realizar_testkit::{default_model, shared_dir};
use std::path::Path;

use realizar_engine::{ChatMessage, ChatTemplate, Tokenizer};
use realizar_formats::GgufFile;
use serde_json::{json, Value};

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// Write a SmolLM2-style HF tokenizer folder from the GGUF vocabulary.
fn write_hf_folder(dir: &Path) {
    let gguf = GgufFile::open(&default_model()).expect("GGUF");
    let tokens = gguf.get_str_array("tokenizer.ggml.tokens").unwrap();
    let types = gguf.get_i32_array("tokenizer.ggml.token_type").unwrap();
    let merges = gguf.get_str_array("tokenizer.ggml.merges").unwrap();
    let template = gguf.get_str("tokenizer.chat_template").unwrap();
    let vocab: serde_json::Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect();
    let added: Vec<Value> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, &ty))| ty == 3)
        .map(|(i, (t, _))| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
        ]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "vocab": vocab, "merges": merges}
    });
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let config = json!({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                        "pad_token": "<|im_end|>", "chat_template": template});
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    let model_config = json!({"bos_token_id": 1, "eos_token_id": 2});
    std::fs::write(dir.join("config.json"), model_config.to_string()).unwrap();
}

#[test]
fn hf_folder_matches_llama_cpp_reference() {
    let dir = std::env::temp_dir().join(format!("realizar-tokenizer-hf-{}", std::process::id()));
    write_hf_folder(&dir);
    let tok = Tokenizer::from_hf_dir(&dir).expect("tokenizer from folder");
    let path = shared_dir().join("reference/smollm2-135m-instruct-q4_1.json");
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();

    let mut failures = Vec::new();
    for case in reference["tokenizer"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let plain = tok.encode(text, false, false).unwrap();
        let special = tok.encode(text, false, true).unwrap();
        if plain != ids(&case["ids"]) {
            failures.push(format!(
                "{text:?} plain: {plain:?} vs {:?}",
                ids(&case["ids"])
            ));
        }
        if special != ids(&case["ids_parse_special"]) {
            failures.push(format!(
                "{text:?} special: {special:?} vs {:?}",
                ids(&case["ids_parse_special"])
            ));
        }
        if tok.decode(&plain) != text {
            failures.push(format!("{text:?} decodes to {:?}", tok.decode(&plain)));
        }
    }
    for case in reference["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let got = tok.encode(prompt, true, true).unwrap();
        if got != ids(&case["prompt_tokens"]) {
            failures.push(format!("prompt {prompt:?}: {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Special ids from the configs, end of generation by name, the template from the config.
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.bos(), Some(1));
    assert_eq!(tok.eos(), Some(2));
    assert!(!tok.adds_bos());
    assert!(tok.is_eog(2) && tok.is_eog(0) && !tok.is_eog(1));
    assert_eq!(tok.token_bytes(216), b" ");
    let tmpl = ChatTemplate::for_tokenizer(&tok).unwrap();
    let prompt = tmpl
        .render(&[ChatMessage::new("user", "hi")], true)
        .unwrap();
    assert!(prompt.ends_with("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_folder_is_an_error() {
    let err = Tokenizer::from_hf_dir(Path::new("/nonexistent/realizar")).unwrap_err();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

#[test]
fn shared_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Tokenizer>();
    check::<ChatTemplate>();
}
