//! SentencePiece BPE (`tokenizer.ggml.model = llama`), as SentencePiece and llama.cpp run it.
//!
//! GGUF stores no merges for these vocabularies, only a score per token, so the algorithm is
//! score-driven: start from the UTF-8 characters of the text (spaces already replaced by `▁`),
//! repeatedly merge the adjacent pair whose concatenation is the vocabulary token with the
//! highest score (leftmost first on ties), and finally emit each symbol's token, or its bytes as
//! `<0xNN>` tokens when the character is not in the vocabulary.
//!
//! This is implemented here rather than through `tokenizers`' BPE or Unigram models: neither
//! reproduces the score-ordered merging exactly, and exactness against llama.cpp is the goal.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// The vocabulary an SPM session needs.
#[derive(Debug)]
pub struct SpmModel {
    token_to_id: HashMap<String, u32>,
    scores: Vec<f32>,
    /// `<0xNN>` token for each byte, if the vocabulary has one.
    byte_tokens: [Option<u32>; 256],
    unk: Option<u32>,
}

/// One symbol in the doubly linked list of the word being merged. `len == 0` marks a symbol
/// merged into its left neighbour.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge of symbols `left` and `right`.
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    /// Byte length of the merged text when the bigram was queued; a mismatch at pop time means
    /// one side has changed since, and the bigram is stale.
    len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// Max-heap order: higher score first, then the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl SpmModel {
    /// `tokens[i]` is the text of token `i` (with `▁` for spaces); `scores` one per token or
    /// empty.
    pub fn new(tokens: &[String], scores: &[f32], unk: Option<u32>) -> Self {
        let mut token_to_id = HashMap::with_capacity(tokens.len());
        let mut byte_tokens = [None; 256];
        for (id, text) in tokens.iter().enumerate() {
            let id = id as u32;
            token_to_id.insert(text.clone(), id);
            if let Some(b) = parse_byte_token(text) {
                byte_tokens[b as usize] = Some(id);
            }
        }
        // Later duplicates win in `token_to_id` (as in llama.cpp); make the byte table agree.
        for (b, slot) in byte_tokens.iter_mut().enumerate() {
            if let Some(&id) = token_to_id.get(&format!("<0x{b:02X}>")) {
                *slot = Some(id);
            }
        }
        let scores = if scores.len() == tokens.len() {
            scores.to_vec()
        } else {
            vec![0.0; tokens.len()]
        };
        SpmModel {
            token_to_id,
            scores,
            byte_tokens,
            unk,
        }
    }

    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    /// Tokenize `text`, whose spaces the caller has already replaced by `▁`.
    pub fn encode(&self, text: &str, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (i, (start, ch)) in text.char_indices().enumerate() {
            symbols.push(Symbol {
                start,
                len: ch.len_utf8(),
                prev: i.checked_sub(1),
                next: None,
            });
            if let Some(p) = i.checked_sub(1) {
                symbols[p].next = Some(i);
            }
        }
        let mut queue = BinaryHeap::new();
        for i in 1..symbols.len() {
            self.push_bigram(text, &symbols, i - 1, i, &mut queue);
        }
        while let Some(bigram) = queue.pop() {
            let (l, r) = (symbols[bigram.left], symbols[bigram.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != bigram.len {
                continue; // stale: one side was merged away or grew since
            }
            symbols[bigram.left].len += r.len;
            symbols[bigram.right].len = 0;
            symbols[bigram.left].next = r.next;
            if let Some(n) = r.next {
                symbols[n].prev = Some(bigram.left);
            }
            if let Some(p) = l.prev {
                self.push_bigram(text, &symbols, p, bigram.left, &mut queue);
            }
            if let Some(n) = r.next {
                self.push_bigram(text, &symbols, bigram.left, n, &mut queue);
            }
        }
        let mut cur = if symbols.is_empty() { None } else { Some(0) };
        while let Some(i) = cur {
            let s = symbols[i];
            self.emit(&text[s.start..s.start + s.len], out);
            cur = s.next;
        }
    }

    fn push_bigram(
        &self,
        text: &str,
        symbols: &[Symbol],
        left: usize,
        right: usize,
        queue: &mut BinaryHeap<Bigram>,
    ) {
        let (l, r) = (symbols[left], symbols[right]);
        let merged = &text[l.start..r.start + r.len];
        if let Some(&id) = self.token_to_id.get(merged) {
            queue.push(Bigram {
                score: self.scores.get(id as usize).copied().unwrap_or(0.0),
                left,
                right,
                len: merged.len(),
            });
        }
    }

    /// A final symbol: its token, or its bytes as `<0xNN>` tokens (the unknown token for a
    /// byte the vocabulary lacks).
    fn emit(&self, piece: &str, out: &mut Vec<u32>) {
        if let Some(&id) = self.token_to_id.get(piece) {
            out.push(id);
            return;
        }
        for &b in piece.as_bytes() {
            if let Some(id) = self.byte_tokens[b as usize].or(self.unk) {
                out.push(id);
            }
        }
    }
}

/// `<0xNN>` -> the byte.
pub fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(vocab: &[(&str, f32)]) -> SpmModel {
        let tokens: Vec<String> = vocab.iter().map(|(t, _)| t.to_string()).collect();
        let scores: Vec<f32> = vocab.iter().map(|(_, s)| *s).collect();
        SpmModel::new(&tokens, &scores, Some(0))
    }

    #[test]
    fn merges_highest_score_first() {
        // "abc": both "ab" and "bc" exist; "bc" scores higher, so we get a + bc.
        let m = model(&[
            ("<unk>", 0.0),
            ("a", -1.0),
            ("b", -1.0),
            ("c", -1.0),
            ("ab", -3.0),
            ("bc", -2.0),
        ]);
        let mut out = Vec::new();
        m.encode("abc", &mut out);
        assert_eq!(out, vec![1, 5]);
    }

    #[test]
    fn ties_merge_leftmost() {
        let m = model(&[("<unk>", 0.0), ("a", -1.0), ("aa", -2.0)]);
        let mut out = Vec::new();
        m.encode("aaa", &mut out);
        assert_eq!(out, vec![2, 1]);
    }

    #[test]
    fn unknown_characters_fall_back_to_bytes_or_unk() {
        let m = model(&[
            ("<unk>", 0.0),
            ("<0xC3>", 0.0),
            ("<0xA9>", 0.0),
            ("x", -1.0),
        ]);
        let mut out = Vec::new();
        m.encode("xé€", &mut out);
        // é = C3 A9 (both byte tokens present); € = E2 82 AC (absent: unk each)
        assert_eq!(out, vec![3, 1, 2, 0, 0, 0]);
    }
}
