//! Incremental detokenization with the default model's byte-level BPE: emoji and CJK are split
//! over several tokens, and no step may emit half a character.

use realizar_testkit::default_model;

use realizar_engine::{Detokenizer, Tokenizer};
use realizar_formats::GgufFile;

fn tokenizer() -> Tokenizer {
    let gguf = GgufFile::open(&default_model()).expect("open GGUF");
    Tokenizer::from_gguf(&gguf).expect("tokenizer")
}

/// Stream `text`'s tokens through a detokenizer; return the pieces.
fn stream(tok: &Tokenizer, text: &str) -> Vec<String> {
    let ids = tok.encode(text, false, false).unwrap();
    let mut d = Detokenizer::new();
    let mut pieces: Vec<String> = ids.iter().map(|&id| d.push(tok, id)).collect();
    pieces.push(d.flush());
    pieces
}

#[test]
fn emoji_and_cjk_split_across_tokens() {
    let tok = tokenizer();
    for text in [
        "🦀🚀✨",
        "👨\u{200d}👩\u{200d}👧\u{200d}👦",
        "你好，世界",
        "こんにちは",
        "안녕하세요",
        "naïve café — 🦀 in Rust, 世界!",
    ] {
        let ids = tok.encode(text, false, false).unwrap();
        // Some token must carry only part of a character, or this test tests nothing.
        assert!(
            ids.iter()
                .any(|&id| std::str::from_utf8(tok.token_bytes(id)).is_err()),
            "{text:?}: no token splits a character"
        );
        let pieces = stream(&tok, text);
        assert!(
            pieces.iter().all(|p| !p.contains('\u{fffd}')),
            "{text:?}: {pieces:?}"
        );
        assert!(
            pieces.iter().any(String::is_empty),
            "{text:?}: nothing was held back"
        );
        assert_eq!(pieces.concat(), text);
    }
    // The reference's crab: 10813, 116, 218 are the four bytes F0 9F A6 80.
    let mut d = Detokenizer::new();
    assert_eq!(d.push(&tok, 10813), "");
    assert_eq!(d.push(&tok, 116), "");
    assert_eq!(d.push(&tok, 218), "🦀");
}

#[test]
fn control_tokens_are_silent_unless_asked() {
    let tok = tokenizer();
    let ids = tok
        .encode("<|im_start|>user\nhi<|im_end|>", false, true)
        .unwrap();
    let mut quiet = Detokenizer::new();
    let mut loud = Detokenizer::with_special(true);
    let q: String = ids.iter().map(|&id| quiet.push(&tok, id)).collect();
    let l: String = ids.iter().map(|&id| loud.push(&tok, id)).collect();
    assert_eq!(q, "user\nhi");
    assert_eq!(l, "<|im_start|>user\nhi<|im_end|>");
}

#[test]
fn a_sequence_cut_short_is_flushed_as_replacement() {
    let tok = tokenizer();
    let mut d = Detokenizer::new();
    assert_eq!(d.push(&tok, 10813), ""); // first byte(s) of a 4-byte emoji
    assert_eq!(d.flush(), "\u{fffd}");
}
