//! Splitting text at special tokens before the tokenization algorithm sees it.
//!
//! llama.cpp semantics: control (and unknown) tokens are recognised in the text only when the
//! caller asks to parse specials; user-defined tokens always are. Matching is leftmost-longest
//! in one pass (llama.cpp goes longest-token-first over the whole text; the two differ only
//! when two special token texts overlap in the input).

use std::collections::HashMap;

/// A piece of the input: plain text to tokenize, or a special token already recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fragment<'a> {
    Text(&'a str),
    Special(u32),
}

#[derive(Debug, Default)]
pub struct SpecialMatcher {
    /// text -> (id, matched even without `parse_special`)
    by_text: HashMap<String, (u32, bool)>,
    /// Distinct byte lengths of the texts, longest first.
    lengths: Vec<usize>,
    first_byte: Vec<bool>,
}

impl SpecialMatcher {
    /// `entries`: (text, id, always). Empty texts are ignored; for duplicate texts the first
    /// entry wins.
    pub fn new(entries: impl IntoIterator<Item = (String, u32, bool)>) -> Self {
        let mut m = SpecialMatcher {
            by_text: HashMap::new(),
            lengths: Vec::new(),
            first_byte: vec![false; 256],
        };
        for (text, id, always) in entries {
            let Some(&b0) = text.as_bytes().first() else {
                continue;
            };
            m.first_byte[b0 as usize] = true;
            if !m.lengths.contains(&text.len()) {
                m.lengths.push(text.len());
            }
            m.by_text.entry(text).or_insert((id, always));
        }
        m.lengths.sort_unstable_by(|a, b| b.cmp(a));
        m
    }

    pub fn is_empty(&self) -> bool {
        self.by_text.is_empty()
    }

    /// The longest special token starting at byte `pos` of `text`, with its byte length.
    fn match_at(&self, text: &str, pos: usize, parse_special: bool) -> Option<(u32, usize)> {
        for &len in &self.lengths {
            let Some(candidate) = text.get(pos..pos + len) else {
                continue;
            };
            if let Some(&(id, always)) = self.by_text.get(candidate) {
                if always || parse_special {
                    return Some((id, len));
                }
            }
        }
        None
    }

    /// Split `text` into plain-text fragments and special tokens.
    pub fn split<'a>(&self, text: &'a str, parse_special: bool) -> Vec<Fragment<'a>> {
        let mut out = Vec::new();
        if self.is_empty() {
            if !text.is_empty() {
                out.push(Fragment::Text(text));
            }
            return out;
        }
        let bytes = text.as_bytes();
        let (mut start, mut pos) = (0usize, 0usize);
        while pos < bytes.len() {
            if self.first_byte[bytes[pos] as usize] {
                if let Some((id, len)) = self.match_at(text, pos, parse_special) {
                    if start < pos {
                        out.push(Fragment::Text(&text[start..pos]));
                    }
                    out.push(Fragment::Special(id));
                    pos += len;
                    start = pos;
                    continue;
                }
            }
            pos += 1;
        }
        if start < bytes.len() {
            out.push(Fragment::Text(&text[start..]));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_longest_first_and_respects_parse_special() {
        let m = SpecialMatcher::new([
            ("<a>".to_string(), 1, false),
            ("<a><b>".to_string(), 2, false),
            ("[U]".to_string(), 3, true),
        ]);
        assert_eq!(
            m.split("x<a><b>y<a>[U]", true),
            vec![
                Fragment::Text("x"),
                Fragment::Special(2),
                Fragment::Text("y"),
                Fragment::Special(1),
                Fragment::Special(3)
            ]
        );
        assert_eq!(
            m.split("x<a>[U]é", false),
            vec![
                Fragment::Text("x<a>"),
                Fragment::Special(3),
                Fragment::Text("é")
            ]
        );
        assert_eq!(m.split("", true), vec![]);
    }
}
