//! Incremental detokenization: token ids in, text out, never half a UTF-8 character.
//!
//! A token can stand for part of a character (byte-level BPE splits an emoji over several
//! tokens; SentencePiece emits `<0xF0>` `<0x9F>` ...). The detokenizer keeps the incomplete tail
//! of the byte stream until the rest arrives, and replaces bytes that can never form a valid
//! character with U+FFFD as soon as that is certain.

use crate::tokenizer::Tokenizer;

/// Per-sequence detokenizer state (at most 3 bytes held).
#[derive(Debug, Default, Clone)]
pub struct Detokenizer {
    pending: Vec<u8>,
    render_special: bool,
}

impl Detokenizer {
    /// Control tokens (`<|im_end|>`, `</s>`) produce no text.
    pub fn new() -> Self {
        Self::default()
    }

    /// `render_special`: control tokens produce their own text.
    pub fn with_special(render_special: bool) -> Self {
        Detokenizer {
            pending: Vec::new(),
            render_special,
        }
    }

    /// Feed one token; returns the text that is now complete (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> String {
        if !self.render_special && tokenizer.is_control(id) {
            return String::new();
        }
        self.push_bytes(tokenizer.token_bytes(id))
    }

    /// Feed raw bytes; returns the text that is now complete.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The first `valid_up_to` bytes are valid UTF-8 by definition.
                    out.push_str(std::str::from_utf8(&rest[..valid]).unwrap_or_default());
                    match e.error_len() {
                        // Bytes that can never start/continue a character: replace, go on.
                        Some(bad) => {
                            out.push('\u{fffd}');
                            rest = &rest[valid + bad..];
                        }
                        // An incomplete character at the end: keep it for the next token.
                        None => {
                            rest = &rest[valid..];
                            break;
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        let start = self.pending.len() - keep;
        self.pending.drain(..start);
        out
    }

    /// Bytes held back waiting for the rest of a character.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// End of stream: whatever is held back, as U+FFFD if it never completed.
    pub fn flush(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_split_characters() {
        let mut d = Detokenizer::new();
        let crab = "🦀".as_bytes(); // F0 9F A6 80
        assert_eq!(d.push_bytes(b"hi "), "hi ");
        assert_eq!(d.push_bytes(&crab[..1]), "");
        assert_eq!(d.push_bytes(&crab[1..3]), "");
        assert_eq!(d.pending().len(), 3);
        assert_eq!(d.push_bytes(&[crab[3], b'!']), "🦀!");
        assert_eq!(d.flush(), "");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut d = Detokenizer::new();
        assert_eq!(d.push_bytes(&[0xff, b'a']), "\u{fffd}a");
        // A lead byte followed by a non-continuation byte is invalid at once.
        assert_eq!(d.push_bytes(&[0xe4]), "");
        assert_eq!(d.push_bytes(b"x"), "\u{fffd}x");
        // An incomplete tail at the end of the stream.
        assert_eq!(d.push_bytes(&[0xe4, 0xbd]), "");
        assert_eq!(d.flush(), "\u{fffd}");
    }
}
