//! A hand-made SentencePiece (`llama`) vocabulary, checked against encodings derived by
//! following llama.cpp's SPM algorithm by hand: spaces become `▁`, a `▁` is prefixed to text
//! at the start and after each special token, adjacent symbols are merged highest score first
//! (leftmost on ties) when the merged text is a token, and characters outside the vocabulary
//! become `<0xNN>` byte tokens.

use realizar_engine::tokenizer::{TokenType, TokenizerSpec, VocabKind};
use realizar_engine::{Detokenizer, Tokenizer};

const NORMAL: &[(&str, f32)] = &[
    ("▁", -10.0),
    ("h", -10.0),
    ("e", -10.0),
    ("l", -10.0),
    ("o", -10.0),
    ("a", -10.0),
    ("b", -10.0),
    ("c", -10.0),
    ("he", -5.0),
    ("ll", -4.0),
    ("lo", -4.5),
    ("llo", -3.0),
    // Never produced for "hello": "ll" (-4) is merged before "he"+"l"+"l" could be.
    ("hell", -3.5),
    ("hello", -2.0),
    ("▁hello", -1.0),
    ("ab", -2.0),
    ("bc", -1.0),
    ("aa", -3.0),
    ("[U]", 0.0),
];

fn spec(add_space_prefix: bool) -> TokenizerSpec {
    let mut tokens = vec!["<unk>".to_string(), "<s>".to_string(), "</s>".to_string()];
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0, 0.0, 0.0];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    for (t, s) in NORMAL {
        tokens.push(t.to_string());
        types.push(if *t == "[U]" { 4 } else { 1 });
        scores.push(*s);
    }
    let mut spec = TokenizerSpec::new(VocabKind::Spm, tokens);
    spec.scores = scores;
    spec.token_types = types;
    spec.bos = Some(1);
    spec.eos = Some(2);
    spec.unk = Some(0);
    spec.add_space_prefix = Some(add_space_prefix);
    spec
}

fn tok() -> Tokenizer {
    Tokenizer::from_spec(spec(true)).expect("tokenizer")
}

fn id(t: &Tokenizer, text: &str) -> u32 {
    t.token_id(text)
        .unwrap_or_else(|| panic!("no token {text:?}"))
}

fn byte(b: u8) -> u32 {
    3 + u32::from(b)
}

#[test]
fn merges_by_score_with_space_prefix() {
    let t = tok();
    // ▁ h e l l o: "ll" (-4) first, then "llo" (-3), then "he" (-5), "hello", "▁hello".
    assert_eq!(
        t.encode("hello", false, false).unwrap(),
        vec![id(&t, "▁hello")]
    );
    assert_eq!(
        t.encode("hello hello", false, false).unwrap(),
        vec![id(&t, "▁hello"), id(&t, "▁hello")]
    );
    // add_bos defaults to true for SPM.
    assert!(t.adds_bos());
    assert_eq!(
        t.encode("hello", true, false).unwrap(),
        vec![1, id(&t, "▁hello")]
    );
    // "abc": "bc" (-1) beats "ab" (-2), leaving "a" alone. "aaa": equal scores, leftmost wins.
    assert_eq!(
        t.encode("abc", false, false).unwrap(),
        vec![id(&t, "▁"), id(&t, "a"), id(&t, "bc")]
    );
    assert_eq!(
        t.encode("aaa", false, false).unwrap(),
        vec![id(&t, "▁"), id(&t, "aa"), id(&t, "a")]
    );
}

#[test]
fn unknown_characters_fall_back_to_bytes() {
    let t = tok();
    // é = C3 A9, 🦀 = F0 9F A6 80: not in the vocabulary.
    assert_eq!(
        t.encode("hé🦀", false, false).unwrap(),
        vec![
            id(&t, "▁"),
            id(&t, "h"),
            byte(0xC3),
            byte(0xA9),
            byte(0xF0),
            byte(0x9F),
            byte(0xA6),
            byte(0x80)
        ]
    );
    let ids = t.encode("hé🦀", false, false).unwrap();
    assert_eq!(t.decode(&ids), " hé🦀");
    // Streaming the bytes one token at a time never yields half a character.
    let mut d = Detokenizer::new();
    let pieces: Vec<String> = ids.iter().map(|&i| d.push(&t, i)).collect();
    assert_eq!(pieces, vec![" ", "h", "", "é", "", "", "", "🦀"]);
}

#[test]
fn special_tokens_and_space_prefix_after_them() {
    let t = tok();
    let hello = id(&t, "▁hello");
    // Control tokens are parsed only on request; text after one gets a "▁" prefix again.
    assert_eq!(
        t.encode("<s>hello</s>hello", false, true).unwrap(),
        vec![1, hello, 2, hello]
    );
    let plain = t.encode("</s>", false, false).unwrap();
    assert_eq!(
        plain,
        vec![id(&t, "▁"), byte(b'<'), byte(b'/'), byte(b's'), byte(b'>')]
    );
    // User-defined tokens are always matched, and count as special for the space prefix.
    assert_eq!(
        t.encode("hello[U]hello", false, false).unwrap(),
        vec![hello, id(&t, "[U]"), hello]
    );
    assert_eq!(t.token_type(1), Some(TokenType::Control));
    assert_eq!(t.decode(&[1, hello, 2]), " hello");
    assert_eq!(t.decode_with(&[1, hello, 2], true), "<s> hello</s>");
    assert!(t.is_eog(2) && !t.is_eog(1));
    assert_eq!(t.encode("", true, true).unwrap(), vec![1]);
    assert_eq!(t.encode("", false, true).unwrap(), Vec::<u32>::new());
}

#[test]
fn without_space_prefix_and_with_eos() {
    let mut s = spec(false);
    s.add_eos = Some(true);
    s.add_bos = Some(false);
    let t = Tokenizer::from_spec(s).unwrap();
    assert_eq!(
        t.encode("hello", true, false).unwrap(),
        vec![id(&t, "hello"), 2]
    );
}
