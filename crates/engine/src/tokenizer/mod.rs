//! Text <-> token ids, matching llama.cpp's tokenization of GGUF vocabularies.
//!
//! Three back ends behind one `Tokenizer`:
//! - GGUF `gpt2` byte-level BPE: a `tokenizers` pipeline built in memory (`bpe.rs`);
//! - GGUF `llama` SentencePiece: the score-driven merge algorithm (`spm.rs`);
//! - a Hugging Face folder's `tokenizer.json`, loaded by `tokenizers` (`hf.rs`).
//!
//! Special tokens are split out of the text here, before any back end runs (`special.rs`),
//! and BOS/EOS are added here, so `encode`'s flags mean the same for every back end:
//! `add_special` adds the model's BOS/EOS as its metadata asks; `parse_special` recognises
//! control-token text such as `<|im_start|>` as that token instead of as plain text.
//!
//! Every token also has its bytes precomputed (`token_bytes`), which is all the incremental
//! detokenizer needs.

mod bpe;
mod hf;
mod spec;
mod special;
mod spm;

pub use bpe::{byte_to_char_table, PreTokenizerConfig};
pub use spec::{TokenType, TokenizerSpec, VocabKind};
pub use spm::parse_byte_token;

use std::collections::HashMap;
use std::path::Path;

use realizar_formats::GgufFile;

use special::{Fragment, SpecialMatcher};
use spm::SpmModel;

use crate::{EngineError, Result};

/// Token texts that end a generation when the vocabulary has them (llama.cpp's list).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<|return|>",
    "<|call|>",
];

/// Texts that make a token the end-of-turn token when the file names none, in preference order.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];

enum Backend {
    Bpe(Box<tokenizers::Tokenizer>),
    Spm(Box<SpmModel>),
    /// A tokenizer.json pipeline, with `encode_special_tokens` on: we split specials ourselves.
    Hf(Box<tokenizers::Tokenizer>),
}

/// A vocabulary and its tokenization algorithm. Cheap to share (`Arc<Tokenizer>`); all
/// methods take `&self`.
pub struct Tokenizer {
    backend: Backend,
    /// Vocabulary text of each token, as the file stores it.
    texts: Vec<String>,
    types: Vec<TokenType>,
    /// The bytes each token stands for: `piece_data[piece_off[i]..piece_off[i + 1]]`.
    piece_data: Vec<u8>,
    piece_off: Vec<usize>,
    specials: SpecialMatcher,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eog: Vec<u32>,
    /// Added before/after the text when `encode(.., add_special = true, ..)`.
    prefix: Vec<u32>,
    suffix: Vec<u32>,
    /// SPM: put a space before text that starts the input or follows a special token.
    add_space_prefix: bool,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.backend {
            Backend::Bpe(_) => "gguf-bpe",
            Backend::Spm(_) => "gguf-spm",
            Backend::Hf(_) => "tokenizer.json",
        };
        f.debug_struct("Tokenizer")
            .field("kind", &kind)
            .field("vocab_size", &self.texts.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eog", &self.eog)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// The tokenizer a GGUF file describes in its `tokenizer.*` metadata.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        Self::from_spec(TokenizerSpec::from_gguf(gguf)?)
    }

    /// The tokenizer of a Hugging Face model folder (`tokenizer.json`, `tokenizer_config.json`,
    /// `config.json`, `generation_config.json`).
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        hf::load(dir)
    }

    /// Build from plain vocabulary data, applying llama.cpp's defaults for what is missing.
    pub fn from_spec(spec: TokenizerSpec) -> Result<Self> {
        let n = spec.tokens.len();
        if n == 0 {
            return Err(EngineError::Tokenizer("empty vocabulary".into()));
        }
        if u32::try_from(n).is_err() {
            return Err(EngineError::Tokenizer(format!("vocabulary of {n} tokens")));
        }
        // llama.cpp renames empty tokens so that every token has a distinct, non-empty text.
        let texts: Vec<String> = spec
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if t.is_empty() {
                    format!("[EMPTY_{i}]")
                } else {
                    t.clone()
                }
            })
            .collect();
        let mut types: Vec<TokenType> = (0..n).map(|i| spec.token_type(i)).collect();
        if spec.token_types.is_empty() && spec.kind == VocabKind::Spm {
            for (ty, text) in types.iter_mut().zip(&texts) {
                if parse_byte_token(text).is_some() {
                    *ty = TokenType::Byte;
                }
            }
        }
        let valid = |id: Option<u32>| id.filter(|&i| (i as usize) < n);

        let (backend, add_bos_default, space_prefix_default, bos, eos, unk) = match spec.kind {
            VocabKind::Bpe => {
                let pre = PreTokenizerConfig::for_name(spec.pre.as_deref());
                let tok = bpe::build(&spec, &texts, &pre)?;
                let (bos, eos) = (valid(spec.bos), valid(spec.eos));
                (
                    Backend::Bpe(Box::new(tok)),
                    pre.default_add_bos,
                    false,
                    bos,
                    eos,
                    valid(spec.unk),
                )
            }
            VocabKind::Spm => {
                // llama.cpp's SPM defaults: <unk>=0, <s>=1, </s>=2.
                let def = |id: Option<u32>, d: u32| valid(id).or(valid(Some(d)));
                let unk = def(spec.unk, 0);
                let model = SpmModel::new(&texts, &spec.scores, unk);
                (
                    Backend::Spm(Box::new(model)),
                    true,
                    true,
                    def(spec.bos, 1),
                    def(spec.eos, 2),
                    unk,
                )
            }
        };
        let index: HashMap<&str, u32> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i as u32))
            .collect();
        let mut eot = valid(spec.eot);
        if eot.is_none() {
            eot = EOT_TEXTS.iter().find_map(|t| index.get(t).copied());
        }
        let mut eog: Vec<u32> = EOG_TEXTS
            .iter()
            .filter_map(|t| index.get(t).copied())
            .collect();
        eog.extend([eos, eot, valid(spec.eom)].into_iter().flatten());
        eog.sort_unstable();
        eog.dedup();
        // Like llama.cpp: an end-of-generation token is a control token whatever the file says.
        for &id in &eog {
            types[id as usize] = TokenType::Control;
        }
        if let Some(b) = bos {
            if types[b as usize] == TokenType::Normal {
                types[b as usize] = TokenType::Control;
            }
        }
        let add_bos = spec.add_bos.unwrap_or(add_bos_default);
        let add_eos = spec.add_eos.unwrap_or(false);
        let prefix = match (add_bos, bos) {
            (true, Some(b)) => vec![b],
            (true, None) => {
                tracing::warn!("vocabulary asks for a BOS token but names none");
                vec![]
            }
            _ => vec![],
        };
        let suffix = match (add_eos, eos) {
            (true, Some(e)) => vec![e],
            _ => vec![],
        };
        if unk.is_none() && spec.kind == VocabKind::Spm {
            tracing::debug!("SPM vocabulary without <unk>");
        }

        let (piece_data, piece_off) = match spec.kind {
            VocabKind::Bpe => gguf_bpe_pieces(&texts, &types),
            VocabKind::Spm => gguf_spm_pieces(&texts, &types),
        };
        let specials = SpecialMatcher::new(texts.iter().zip(&types).enumerate().filter_map(
            |(id, (text, ty))| match ty {
                TokenType::Control | TokenType::Unknown => Some((text.clone(), id as u32, false)),
                TokenType::UserDefined => Some((text.clone(), id as u32, true)),
                _ => None,
            },
        ));
        Ok(Tokenizer {
            backend,
            texts,
            types,
            piece_data,
            piece_off,
            specials,
            bos,
            eos,
            eot,
            eog,
            prefix,
            suffix,
            add_space_prefix: spec.add_space_prefix.unwrap_or(space_prefix_default),
            chat_template: spec.chat_template,
        })
    }

    /// Token ids for `text`. `add_special`: add BOS/EOS as the model's metadata asks.
    /// `parse_special`: recognise control-token text (`<|im_start|>`) as those tokens.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3 + 4);
        if add_special {
            out.extend_from_slice(&self.prefix);
        }
        let mut prev_special = true;
        for fragment in self.specials.split(text, parse_special) {
            match fragment {
                Fragment::Special(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Fragment::Text(s) => {
                    self.encode_text(s, prev_special, &mut out)?;
                    prev_special = false;
                }
            }
        }
        if add_special {
            out.extend_from_slice(&self.suffix);
        }
        Ok(out)
    }

    fn encode_text(&self, text: &str, prev_special: bool, out: &mut Vec<u32>) -> Result<()> {
        match &self.backend {
            Backend::Bpe(tok) => bpe::encode_fragment(tok, text, out),
            Backend::Hf(tok) => bpe::encode_fragment(tok, text, out),
            Backend::Spm(model) => {
                let mut s = String::with_capacity(text.len() + 3);
                if self.add_space_prefix && prev_special {
                    s.push('▁');
                }
                for ch in text.chars() {
                    s.push(if ch == ' ' { '▁' } else { ch });
                }
                model.encode(&s, out);
                Ok(())
            }
        }
    }

    /// The text of `ids`, control tokens left out (as in generated output). Invalid UTF-8
    /// (a sequence cut short) becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.decode_with(ids, false)
    }

    /// The text of `ids`; `render_special` includes control tokens' own text.
    pub fn decode_with(&self, ids: &[u32], render_special: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            if render_special || !self.is_control(id) {
                bytes.extend_from_slice(self.token_bytes(id));
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The bytes token `id` stands for (possibly part of a UTF-8 character). A control token
    /// gives its text; an unused or out-of-range id gives nothing.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        let i = id as usize;
        match (self.piece_off.get(i), self.piece_off.get(i + 1)) {
            (Some(&a), Some(&b)) => self.piece_data.get(a..b).unwrap_or(&[]),
            _ => &[],
        }
    }

    /// The token's text as the vocabulary stores it (`Ġhello`, `▁hello`, `<0x0A>`, `<s>`).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.texts.get(id as usize).map(String::as_str)
    }

    /// The id of a token given its vocabulary text.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        match &self.backend {
            Backend::Spm(m) => m.token_id(text),
            Backend::Bpe(t) => t.token_to_id(text),
            Backend::Hf(t) => t.token_to_id(text),
        }
    }

    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    /// Control and unknown tokens: not part of the output text unless asked for.
    pub fn is_control(&self, id: u32) -> bool {
        matches!(
            self.types.get(id as usize),
            Some(TokenType::Control | TokenType::Unknown)
        )
    }

    /// Number of tokens in the vocabulary (the model's output may be padded beyond it).
    pub fn vocab_size(&self) -> usize {
        self.texts.len()
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// End of turn (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`), from metadata or by name.
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }

    /// Whether `id` ends a generation: EOS, EOT, or a token named like one.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// All end-of-generation ids, sorted.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    /// Whether `encode(.., add_special = true, ..)` adds a BOS token.
    pub fn adds_bos(&self) -> bool {
        !self.prefix.is_empty()
    }

    /// The model's own chat template (Jinja source), if it has one.
    pub fn chat_template(&self) -> Option<String> {
        self.chat_template.clone()
    }

    /// Text of BOS/EOS for chat templates (empty when the model has none).
    pub fn bos_text(&self) -> &str {
        self.bos.and_then(|b| self.token_text(b)).unwrap_or("")
    }

    pub fn eos_text(&self) -> &str {
        self.eos.and_then(|e| self.token_text(e)).unwrap_or("")
    }
}

/// Flatten per-token byte strings into one buffer plus offsets.
fn flatten(pieces: impl Iterator<Item = Vec<u8>>) -> (Vec<u8>, Vec<usize>) {
    let mut data = Vec::new();
    let mut off = vec![0];
    for p in pieces {
        data.extend_from_slice(&p);
        off.push(data.len());
    }
    (data, off)
}

fn gguf_bpe_pieces(texts: &[String], types: &[TokenType]) -> (Vec<u8>, Vec<usize>) {
    let c2b = bpe::char_to_byte_map();
    flatten(texts.iter().zip(types).map(|(text, ty)| match ty {
        TokenType::Unused => Vec::new(),
        TokenType::Control | TokenType::UserDefined | TokenType::Unknown => {
            text.as_bytes().to_vec()
        }
        _ => bpe::byte_level_decode(text, &c2b).unwrap_or_else(|| text.as_bytes().to_vec()),
    }))
}

fn gguf_spm_pieces(texts: &[String], types: &[TokenType]) -> (Vec<u8>, Vec<usize>) {
    flatten(texts.iter().zip(types).map(|(text, ty)| match ty {
        TokenType::Unused => Vec::new(),
        TokenType::Byte => match parse_byte_token(text) {
            Some(b) => vec![b],
            None => text.as_bytes().to_vec(),
        },
        TokenType::Control | TokenType::UserDefined | TokenType::Unknown => {
            text.as_bytes().to_vec()
        }
        _ => text.replace('▁', " ").into_bytes(),
    }))
}
