//! A hand-made byte-level BPE (`gpt2`) vocabulary: the pre-tokenizer named by
//! `tokenizer.ggml.pre` decides how text is split before merging, `llama-bpe` looks whole
//! pieces up first (ignore_merges) and adds BOS by default, control tokens end generation.

use realizar_engine::tokenizer::{TokenizerSpec, VocabKind};
use realizar_engine::Tokenizer;

/// GPT-2's printable character for each byte.
fn byte_char(b: u8) -> char {
    let printable = (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
    if printable {
        char::from(b)
    } else {
        let rank = (0..b)
            .filter(|&x| !((0x21..=0x7e).contains(&x) || (0xa1..=0xac).contains(&x) || x >= 0xae))
            .count() as u32;
        char::from_u32(256 + rank).unwrap()
    }
}

fn spec(pre: &str) -> TokenizerSpec {
    // ids 0..=255: the byte alphabet, in byte order.
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
    let mut types = vec![1; 256];
    for t in [
        "he",
        "ll",
        "hell",
        "hello",
        "12",
        "123",
        "34",
        "Ġw",
        "<|begin_of_text|>",
        "<|eot_id|>",
    ] {
        tokens.push(t.to_string());
        types.push(if t.starts_with("<|") { 3 } else { 1 });
    }
    let mut s = TokenizerSpec::new(VocabKind::Bpe, tokens);
    s.token_types = types;
    s.merges = ["3 4", "1 2", "12 3", "h e", "l l", "he ll", "Ġ w"]
        .iter()
        .map(|m| m.to_string())
        .collect();
    s.pre = Some(pre.to_string());
    s.bos = Some(264);
    s.eos = Some(265);
    s
}

fn tok(pre: &str) -> Tokenizer {
    Tokenizer::from_spec(spec(pre)).unwrap()
}

fn ids(t: &Tokenizer, pieces: &[&str]) -> Vec<u32> {
    pieces
        .iter()
        .map(|p| t.token_id(p).unwrap_or_else(|| panic!("{p}")))
        .collect()
}

#[test]
fn pre_tokenizer_decides_the_splits() {
    // gpt-2: "123456" is one piece; merge rank order: 3+4 first, then 1+2; "12"+"34" is no token.
    let t = tok("gpt-2");
    assert_eq!(
        t.encode("123456", false, false).unwrap(),
        ids(&t, &["12", "34", "5", "6"])
    );
    // llama3: digits in groups of three, so "3" and "4" never meet.
    let t = tok("llama-bpe");
    assert_eq!(
        t.encode("123456", false, false).unwrap(),
        ids(&t, &["123", "4", "5", "6"])
    );
    // qwen2: single digits.
    let t = tok("qwen2");
    assert_eq!(
        t.encode("123456", false, false).unwrap(),
        ids(&t, &["1", "2", "3", "4", "5", "6"])
    );
}

#[test]
fn ignore_merges_looks_whole_pieces_up() {
    // "hello" is a token but no merge sequence reaches it: only llama3-style lookup finds it.
    let gpt2 = tok("gpt-2");
    assert_eq!(
        gpt2.encode("hello", false, false).unwrap(),
        ids(&gpt2, &["hell", "o"])
    );
    let llama3 = tok("llama-bpe");
    assert_eq!(
        llama3.encode("hello", false, false).unwrap(),
        ids(&llama3, &["hello"])
    );
    assert_eq!(
        gpt2.encode("hello world", false, false).unwrap(),
        ids(&gpt2, &["hell", "o", "Ġw", "o", "r", "l", "d"])
    );
    assert_eq!(
        gpt2.decode(&gpt2.encode("hello world", false, false).unwrap()),
        "hello world"
    );
}

#[test]
fn bos_defaults_and_specials() {
    let llama3 = tok("llama-bpe");
    assert!(llama3.adds_bos());
    assert_eq!(
        llama3.encode("hello<|eot_id|>", true, true).unwrap(),
        vec![264, llama3.token_id("hello").unwrap(), 265]
    );
    assert!(llama3.is_eog(265));
    assert_eq!(llama3.eot(), Some(265));
    let gpt2 = tok("gpt-2");
    assert!(!gpt2.adds_bos());
    let mut s = spec("gpt-2");
    s.add_bos = Some(true);
    assert!(Tokenizer::from_spec(s).unwrap().adds_bos());
    // Unknown pre-tokenizer names fall back to llama.cpp's default regexes.
    let t = tok("something-new");
    assert_eq!(
        t.decode(&t.encode("hello 123", false, false).unwrap()),
        "hello 123"
    );
}

#[test]
fn bad_specs_are_errors() {
    let mut s = spec("gpt-2");
    s.tokens.clear();
    s.token_types.clear();
    assert!(Tokenizer::from_spec(s).is_err());
}
